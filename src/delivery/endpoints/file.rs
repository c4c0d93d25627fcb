//! Reading the registry file: its TOML shape, each entry checked and the files and
//! environment variable it names read, every mistake located in the file.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use toml::Spanned;

use super::super::auth::{AuthConfig, bearer_header};
use super::super::transport::{self, TlsSettings};
use super::{DEFAULT_MAX_IN_FLIGHT, DEFAULT_TIMEOUT, DeliveryMode, EndpointSettings, ResolvedAuth};
use crate::fhir::identifiers::OdsCode;
use crate::located::{LocatedError, TomlText};

/// Reads an environment variable; the process environment outside tests, which swap it
/// for a map rather than change the process's (not thread-safe).
pub(super) type EnvLookup<'a> = &'a dyn Fn(&str) -> Result<String, std::env::VarError>;

pub(super) fn process_env(name: &str) -> Result<String, std::env::VarError> {
    std::env::var(name)
}

/// The registry file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RegistryFile {
    #[serde(default)]
    pub(super) endpoint: Vec<Spanned<EntryConfig>>,
}

/// One `[[endpoint]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EntryConfig {
    pub(super) ods_code: Spanned<String>,
    base_url: Spanned<String>,
    mode: DeliveryMode,
    pub(super) auth: Spanned<AuthConfig>,
    tls: Option<Spanned<TlsConfig>>,
    ca_file: Option<Spanned<PathBuf>>,
    timeout_secs: Option<Spanned<u64>>,
    max_in_flight: Option<Spanned<usize>>,
    /// Lets credentials (`auth` other than `none`) go over plain `http://`: for a test
    /// endpoint only, logged as a warning at every load.
    #[serde(default)]
    allow_insecure_http: bool,
}

/// A client certificate beside another auth type.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsConfig {
    cert_file: PathBuf,
    key_file: PathBuf,
}

/// Checks one entry and reads what it names; returns the settings and the files read.
pub(super) fn resolve(
    source: &TomlText<'_>,
    entry: &Spanned<EntryConfig>,
    base_dir: &Path,
    env: EnvLookup<'_>,
) -> Result<(EndpointSettings, Vec<PathBuf>), LocatedError> {
    let config = entry.get_ref();
    let ods_text = config.ods_code.get_ref();
    let ods_code = OdsCode::parse(ods_text)
        .map_err(|e| {
            source.error_at(
                &config.ods_code.span(),
                format!("ods_code {ods_text:?}: {e}"),
            )
        })?
        .as_str()
        .to_owned();
    let at = |span: Range<usize>, message: String| {
        source.error_at(&span, format!("endpoint {ods_code}: {message}"))
    };
    let base_url = parse_base_url(config.base_url.get_ref())
        .map_err(|message| at(config.base_url.span(), format!("base_url: {message}")))?;
    let timeout = match &config.timeout_secs {
        Some(secs) if *secs.get_ref() == 0 => {
            return Err(at(secs.span(), "timeout_secs: must be at least 1".into()));
        }
        Some(secs) => Duration::from_secs(*secs.get_ref()),
        None => DEFAULT_TIMEOUT,
    };
    let max_in_flight = match &config.max_in_flight {
        Some(n) if *n.get_ref() == 0 => {
            return Err(at(n.span(), "max_in_flight: must be at least 1".into()));
        }
        Some(n) => *n.get_ref(),
        None => DEFAULT_MAX_IN_FLIGHT,
    };

    let mut files = Vec::new();
    let mut read = |relative: &Path, key: &str, span: Range<usize>| {
        let path = base_dir.join(relative);
        let bytes = std::fs::read(&path)
            .map_err(|e| at(span, format!("{key}: cannot read {}: {e}", path.display())))?;
        files.push(path);
        Ok::<_, LocatedError>(bytes)
    };

    let auth_span = config.auth.span();
    let mut identity_pem = None;
    let auth = match config.auth.get_ref() {
        AuthConfig::None {} => ResolvedAuth::None,
        AuthConfig::Bearer { token_env } => {
            let token = match env(token_env) {
                Ok(token) if !token.trim().is_empty() => token,
                Ok(_) => {
                    return Err(at(
                        auth_span,
                        format!("auth.token_env: environment variable {token_env} is empty"),
                    ));
                }
                Err(e) => {
                    return Err(at(
                        auth_span,
                        format!("auth.token_env: environment variable {token_env}: {e}"),
                    ));
                }
            };
            let authorization = bearer_header(token.trim()).map_err(|e| {
                at(
                    auth_span.clone(),
                    format!("auth.token_env: {token_env}: {e}"),
                )
            })?;
            ResolvedAuth::Bearer { authorization }
        }
        AuthConfig::PrivateKeyJwt {
            token_url,
            client_id,
            key_file,
            kid,
        } => {
            let token_url = parse_http_url(token_url)
                .map_err(|m| at(auth_span.clone(), format!("auth.token_url: {m}")))?;
            if client_id.is_empty() {
                return Err(at(auth_span, "auth.client_id: empty".into()));
            }
            let key_pem = read(key_file, "auth.key_file", auth_span.clone())?;
            ResolvedAuth::PrivateKeyJwt {
                token_url,
                client_id: client_id.clone(),
                kid: kid.clone(),
                key_pem,
            }
        }
        AuthConfig::Mtls {
            cert_file,
            key_file,
        } => {
            let cert = read(cert_file, "auth.cert_file", auth_span.clone())?;
            let key = read(key_file, "auth.key_file", auth_span.clone())?;
            identity_pem = Some(
                client_identity(cert, key)
                    .map_err(|m| at(auth_span.clone(), format!("auth: {m}")))?,
            );
            ResolvedAuth::Mtls
        }
    };
    if let Some(tls) = &config.tls {
        if identity_pem.is_some() {
            return Err(at(
                tls.span(),
                "tls: the mtls auth type already gives the client certificate; give it once".into(),
            ));
        }
        let cert = read(&tls.get_ref().cert_file, "tls.cert_file", tls.span())?;
        let key = read(&tls.get_ref().key_file, "tls.key_file", tls.span())?;
        identity_pem =
            Some(client_identity(cert, key).map_err(|m| at(tls.span(), format!("tls: {m}")))?);
    }
    let ca_pem = match &config.ca_file {
        Some(ca_file) => {
            let pem = read(ca_file.get_ref(), "ca_file", ca_file.span())?;
            let count = CertificateDer::pem_slice_iter(&pem)
                .map(|c| c.map(|_| ()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    at(
                        ca_file.span(),
                        format!("ca_file: not PEM certificates: {e}"),
                    )
                })?
                .len();
            if count == 0 {
                return Err(at(
                    ca_file.span(),
                    "ca_file: no certificate in the file".into(),
                ));
            }
            Some(pem)
        }
        None => None,
    };
    if !matches!(auth, ResolvedAuth::None) && base_url.scheme() != "https" {
        if !config.allow_insecure_http {
            return Err(at(
                config.base_url.span(),
                "base_url: credentials (auth other than none) go only over https; set \
                 allow_insecure_http = true on a test endpoint to allow http"
                    .into(),
            ));
        }
        tracing::warn!(
            ods_code = %ods_code,
            "endpoint sends credentials over plain http (allow_insecure_http = true): for tests only"
        );
    }
    if (identity_pem.is_some() || ca_pem.is_some()) && base_url.scheme() != "https" {
        return Err(at(
            config.base_url.span(),
            "base_url: a client certificate or ca_file needs an https URL".into(),
        ));
    }
    let settings = EndpointSettings {
        ods_code,
        base_url,
        mode: config.mode,
        timeout,
        max_in_flight,
        auth,
        tls: TlsSettings {
            ca_pem,
            identity_pem,
        },
    };
    Ok((settings, files))
}

/// An http(s) URL without credentials or fragment.
fn parse_http_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{text:?} is not an http or https URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?} has no host"));
    }
    // Credentials belong in the environment or a file, never in the registry.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{text:?} holds credentials; use auth instead"));
    }
    if url.fragment().is_some() {
        return Err(format!("{text:?} has a fragment"));
    }
    Ok(url)
}

/// A FHIR base URL: http(s), no query, ending in `/` so that joining `Task/x` appends to
/// it rather than replacing its last segment.
fn parse_base_url(text: &str) -> Result<Url, String> {
    let mut url = parse_http_url(text)?;
    if url.query().is_some() {
        return Err(format!("{text:?} has a query"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// A client certificate chain and its key checked (PEM, at least one certificate, a key
/// that belongs to the first certificate) and joined for `reqwest::Identity`.
fn client_identity(cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Result<Vec<u8>, String> {
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cert_file: not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("cert_file: no certificate in the file".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("key_file: no private key in PEM: {e}"))?;
    transport::install_crypto_provider();
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    rustls::sign::CertifiedKey::from_der(certs, key, &provider)
        .map_err(|e| format!("key_file: the key does not fit the certificate: {e}"))?;
    let mut identity = cert_pem;
    if !identity.ends_with(b"\n") {
        identity.push(b'\n');
    }
    identity.extend_from_slice(&key_pem);
    Ok(identity)
}
