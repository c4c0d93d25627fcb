//! HTTPS: the rustls server configuration from `[tls]` (aws-lc, TLS 1.2 and
//! 1.3, ALPN `h2` and `http/1.1`), reloaded when the certificate, key or
//! client CA file changes (polled every `tls.reload_poll_secs`) or on SIGHUP, and the verified client
//! certificate's names as a [`PeerCertificate`].
//!
//! A reload that fails keeps the configuration in use (and says why in the
//! log); connections already open keep the one they started with.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::Phase;
use crate::config::{ClientAuth, TlsSettings};

/// The TLS files could not be used.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{setting}: cannot read {path}: {source}")]
    Read {
        /// The setting naming the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file's content is not what the setting needs.
    #[error("{setting}: {path}: {reason}")]
    Content {
        /// The setting naming the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the combination (a key that does not match the certificate, say).
    #[error("tls: {0}")]
    Config(String),
    /// A defect.
    #[error("tls: internal error: {0}")]
    Internal(String),
}

/// The verified client certificate of a connection: its subject and SAN DNS
/// names, as the request's extension (one per request on that connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The subject's distinguished name, as RFC 4514 writes it
    /// (`CN=gp.example, O=Practice`).
    pub subject: String,
    /// The `subjectAltName` DNS names, in the certificate's order.
    pub dns_names: Vec<String>,
}

impl PeerCertificate {
    /// Reads the names of a DER certificate (one rustls has verified);
    /// `None` if it cannot be parsed.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = certificate.subject().to_string();
        let dns_names = match certificate.subject_alternative_name() {
            Ok(Some(names)) => names
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Some(Self { subject, dns_names })
    }
}

/// The current server configuration, and where it came from.
pub(super) struct Tls {
    settings: TlsSettings,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Reads the files and builds the configuration (blocking: file reads).
    pub(super) fn load(settings: TlsSettings) -> Result<Self, TlsError> {
        let config = build(&settings)?;
        Ok(Self {
            settings,
            current: RwLock::new(config),
        })
    }

    /// An acceptor with the configuration in force now.
    pub(super) fn acceptor(&self) -> TlsAcceptor {
        let config = match self.current.read() {
            Ok(current) => Arc::clone(&current),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        TlsAcceptor::from(config)
    }

    fn files(&self) -> Vec<&Path> {
        [
            self.settings.cert_file.as_deref(),
            self.settings.key_file.as_deref(),
            self.settings.client_ca_file.as_deref(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// A hash of the files' content (or the error reading each).
    fn fingerprint(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        for path in self.files() {
            path.hash(&mut hasher);
            match std::fs::read(path) {
                Ok(bytes) => bytes.hash(&mut hasher),
                Err(error) => error.kind().hash(&mut hasher),
            }
        }
        hasher.finish()
    }

    fn reload(&self) -> Result<(), TlsError> {
        let config = build(&self.settings)?;
        match self.current.write() {
            Ok(mut current) => *current = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
        Ok(())
    }

    /// Watches the files (and SIGHUP) until the server stops.
    pub(super) fn spawn_watcher(
        self: Arc<Self>,
        mut phase: watch::Receiver<Phase>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut hangups = hangup_signals();
            let reading = Arc::clone(&self);
            let mut seen = tokio::task::spawn_blocking(move || reading.fingerprint())
                .await
                .ok();
            let poll = Duration::from_secs(self.settings.reload_poll_secs.max(1));
            let mut ticks = tokio::time::interval(poll);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                let reason = tokio::select! {
                    changed = phase.changed() => {
                        if changed.is_err() || *phase.borrow_and_update() != Phase::Serving {
                            break;
                        }
                        continue;
                    }
                    _ = ticks.tick() => "file change",
                    Some(()) = next_hangup(&mut hangups) => "SIGHUP",
                };
                let reading = Arc::clone(&self);
                let now = tokio::task::spawn_blocking(move || reading.fingerprint())
                    .await
                    .ok();
                if reason == "file change" && now == seen {
                    continue;
                }
                seen = now;
                let reloading = Arc::clone(&self);
                match tokio::task::spawn_blocking(move || reloading.reload()).await {
                    Ok(Ok(())) => tracing::info!(reason, "TLS certificate reloaded"),
                    Ok(Err(error)) => tracing::error!(
                        reason,
                        %error,
                        "TLS certificate not reloaded; the previous one stays in use"
                    ),
                    Err(error) => tracing::error!(reason, %error, "TLS reload failed"),
                }
            }
        })
    }
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

#[cfg(unix)]
fn hangup_signals() -> Hangups {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangup_signals() -> Hangups {}

#[cfg(unix)]
async fn next_hangup(hangups: &mut Hangups) -> Option<()> {
    match hangups {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangups) -> Option<()> {
    std::future::pending().await
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        setting,
        path: path.to_owned(),
        source,
    })
}

fn certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(setting, path)?;
    let content = |reason: String| TlsError::Content {
        setting,
        path: path.to_owned(),
        reason,
    };
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| content(format!("not PEM certificates: {e}")))?;
    if certificates.is_empty() {
        return Err(content("holds no PEM certificate".into()));
    }
    Ok(certificates)
}

/// The server configuration `settings` describe.
fn build(settings: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let (Some(cert_file), Some(key_file)) = (&settings.cert_file, &settings.key_file) else {
        return Err(TlsError::Config(
            "tls.cert_file and tls.key_file are both needed".into(),
        ));
    };
    let chain = certificates("tls.cert_file", cert_file)?;
    let key_pem = read("tls.key_file", key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Content {
        setting: "tls.key_file",
        path: key_file.clone(),
        reason: format!("no PEM private key: {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match (&settings.client_ca_file, settings.client_auth) {
        (Some(ca_file), Some(mode)) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates("tls.client_ca_file", ca_file)? {
                roots.add(certificate).map_err(|e| TlsError::Content {
                    setting: "tls.client_ca_file",
                    path: ca_file.clone(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let verifier = match mode {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                ClientAuth::Required => verifier,
            }
            .build()
            .map_err(|e| TlsError::Config(format!("client certificate verifier: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
