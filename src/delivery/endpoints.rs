//! The endpoint registry: where and how each referring organisation (by ODS code) takes
//! its updates, read from a TOML file (`endpoints.example.toml` documents every key),
//! checked whole before use, and reloadable while Sprig runs.
//!
//! An organisation with no entry is not an error: its updates wait for it to pull them.

use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use reqwest::Url;
use reqwest::header::HeaderValue;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use toml::Spanned;

use super::auth::{AuthConfig, Authenticator, ClientCredentials, bearer_header};
use super::transport::{
    self, OutboundRequest, ReceiverResponse, TlsSettings, TransportError, build_client,
};
use crate::fhir::identifiers::OdsCode;

/// The timeout of a whole request when the entry sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Concurrent requests to one endpoint when the entry sets no `max_in_flight`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;

/// How a GP system takes updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// FHIR RESTful: `PUT Task/{id}`, conditional `POST Observation`.
    Rest,
    /// FHIR messaging: a message Bundle to `$process-message`.
    Message,
}

impl DeliveryMode {
    /// The mode as written in the registry (`rest`, `message`).
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryMode::Rest => "rest",
            DeliveryMode::Message => "message",
        }
    }
}

/// A registry file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The file cannot be read.
    #[error("cannot read the endpoint registry {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A mistake in the file, at a line and column (1-based).
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        /// The file as named to the registry.
        file: String,
        /// Line of the mistake.
        line: usize,
        /// Column (in characters) of the mistake.
        column: usize,
        /// What is wrong, naming the endpoint and key.
        message: String,
    },
}

/// One GP system Sprig delivers to. Cheap to share (`Arc`); the HTTP client inside pools
/// connections.
pub struct Endpoint {
    /// The organisation's ODS code.
    pub ods_code: String,
    /// The FHIR base URL, always ending in `/` so request paths join under it.
    pub base_url: Url,
    /// REST or messaging.
    pub mode: DeliveryMode,
    /// Timeout of each whole request (connect, send, answer).
    pub timeout: Duration,
    /// How many requests the delivery worker may have in flight to this endpoint at once.
    /// `send` itself does not enforce it.
    pub max_in_flight: usize,
    client: reqwest::Client,
    authenticator: Authenticator,
    auth_kind: &'static str,
    /// What the endpoint was built from, to keep it (its token, its connections) across a
    /// reload that does not change it.
    settings: EndpointSettings,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("ods_code", &self.ods_code)
            .field("base_url", &self.base_url.as_str())
            .field("mode", &self.mode)
            .field("timeout", &self.timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("auth", &self.auth_kind)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Sends one request relative to `base_url` (a path like `Task/abc`, `Observation`,
    /// `$process-message`), with the endpoint's authentication, never following a
    /// redirect. Any HTTP status is a response; an error means no response.
    ///
    /// With OAuth2 client credentials, a 401 from the receiver drops the cached token and
    /// the request is sent once more with a fresh one.
    pub async fn send(&self, request: OutboundRequest) -> Result<ReceiverResponse, TransportError> {
        let url = self.url_for(&request.path)?;
        let result = match &self.authenticator {
            Authenticator::None => transport::execute(&self.client, url, &request, None).await,
            Authenticator::Bearer(authorization) => {
                transport::execute(&self.client, url, &request, Some(authorization)).await
            }
            Authenticator::ClientCredentials(credentials) => {
                let authorization = credentials
                    .authorization(&self.client, &self.ods_code)
                    .await?;
                let response =
                    transport::execute(&self.client, url.clone(), &request, Some(&authorization))
                        .await?;
                if response.status == 401 {
                    tracing::info!(ods_code = %self.ods_code, "receiver refused the access token; fetching a new one");
                    credentials.reject(&authorization).await;
                    let authorization = credentials
                        .authorization(&self.client, &self.ods_code)
                        .await?;
                    transport::execute(&self.client, url, &request, Some(&authorization)).await
                } else {
                    Ok(response)
                }
            }
        };
        match &result {
            Ok(response) => tracing::debug!(
                ods_code = %self.ods_code,
                method = %request.method,
                status = response.status,
                "delivered"
            ),
            Err(error) => tracing::debug!(
                ods_code = %self.ods_code,
                method = %request.method,
                transient = error.is_transient(),
                %error,
                "not delivered"
            ),
        }
        result
    }

    /// How the endpoint authenticates: `none`, `bearer`, `private_key_jwt`, `mtls`, or
    /// `bearer+mtls` / `private_key_jwt+mtls` / `none+mtls` when a `tls` client
    /// certificate accompanies the other type.
    pub fn auth_kind(&self) -> &'static str {
        self.auth_kind
    }

    /// `path` under the base URL; a path that would leave it (`/other`, `../`, an
    /// absolute URL) is refused rather than sent somewhere the registry does not name.
    pub fn url_for(&self, path: &str) -> Result<Url, TransportError> {
        let url = self
            .base_url
            .join(path)
            .map_err(|e| TransportError::InvalidRequest(format!("bad path {path:?}: {e}")))?;
        if url.as_str().starts_with(self.base_url.as_str()) {
            Ok(url)
        } else {
            Err(TransportError::InvalidRequest(format!(
                "path {path:?} leaves the endpoint's base URL"
            )))
        }
    }
}

/// The endpoints by ODS code, as loaded from one registry file.
#[derive(Debug, Default)]
pub struct EndpointRegistry {
    endpoints: BTreeMap<String, Arc<Endpoint>>,
    /// Key, certificate and CA files the entries read, for the watcher to notice a
    /// certificate renewed in place.
    referenced_files: Vec<PathBuf>,
}

impl EndpointRegistry {
    /// No endpoints: every organisation pulls its updates.
    pub fn empty() -> Self {
        EndpointRegistry::default()
    }

    /// Reads and checks the registry file at `path`; relative paths in it are relative
    /// to its folder.
    pub fn load(path: &Path) -> Result<Self, EndpointError> {
        Self::load_reusing(path, None)
    }

    /// Checks registry text. `base_dir` resolves relative file paths; `origin` names the
    /// text in errors (`origin:line:column: problem`).
    pub fn from_toml(text: &str, base_dir: &Path, origin: &str) -> Result<Self, EndpointError> {
        Self::from_toml_reusing(text, base_dir, origin, None)
    }

    /// The endpoint of the organisation `ods_code`, if it has one.
    pub fn get(&self, ods_code: &str) -> Option<Arc<Endpoint>> {
        self.endpoints.get(ods_code).cloned()
    }

    /// Every endpoint, by ODS code.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.endpoints.values()
    }

    /// How many endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    fn load_reusing(
        path: &Path,
        previous: Option<&EndpointRegistry>,
    ) -> Result<Self, EndpointError> {
        let text = std::fs::read_to_string(path).map_err(|source| EndpointError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base_dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        Self::from_toml_reusing(&text, base_dir, &path.display().to_string(), previous)
    }

    /// Checks registry text; an entry whose settings (including the files and environment
    /// variable it reads) are unchanged from `previous` keeps its endpoint, with its
    /// cached token and open connections.
    fn from_toml_reusing(
        text: &str,
        base_dir: &Path,
        origin: &str,
        previous: Option<&EndpointRegistry>,
    ) -> Result<Self, EndpointError> {
        let source = Source { origin, text };
        let file: RegistryFile = toml::from_str(text).map_err(|e| {
            // The parser's message is its first line; the rest renders the offending
            // line, which the position already gives.
            let message = e.message().trim().to_string();
            source.error(e.span().map_or(0, |s| s.start), message)
        })?;
        let mut registry = EndpointRegistry::empty();
        for entry in &file.endpoint {
            let (settings, files) = resolve(&source, entry, base_dir)?;
            if registry.endpoints.contains_key(&settings.ods_code) {
                return Err(source.error_at(
                    &entry.get_ref().ods_code.span(),
                    format!(
                        "endpoint {}: ods_code: a second entry for this organisation",
                        settings.ods_code
                    ),
                ));
            }
            let reused = previous
                .and_then(|p| p.endpoints.get(&settings.ods_code))
                .filter(|old| old.settings == settings)
                .cloned();
            let endpoint = match reused {
                Some(endpoint) => endpoint,
                None => Arc::new(build(settings).map_err(|(key, message)| {
                    let span = match key {
                        BuildKey::Entry => entry.span(),
                        BuildKey::Auth => entry.get_ref().auth.span(),
                    };
                    let ods = entry.get_ref().ods_code.get_ref();
                    source.error_at(&span, format!("endpoint {ods}: {message}"))
                })?),
            };
            registry.referenced_files.extend(files);
            registry
                .endpoints
                .insert(endpoint.ods_code.clone(), endpoint);
        }
        Ok(registry)
    }
}

/// The registry file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    endpoint: Vec<Spanned<EntryConfig>>,
}

/// One `[[endpoint]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryConfig {
    ods_code: Spanned<String>,
    base_url: Spanned<String>,
    mode: DeliveryMode,
    auth: Spanned<AuthConfig>,
    tls: Option<Spanned<TlsConfig>>,
    ca_file: Option<Spanned<PathBuf>>,
    timeout_secs: Option<Spanned<u64>>,
    max_in_flight: Option<Spanned<usize>>,
}

/// A client certificate beside another auth type.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsConfig {
    cert_file: PathBuf,
    key_file: PathBuf,
}

/// An entry checked and with its files and environment variable read: everything an
/// `Endpoint` is built from, so two loads can be compared.
#[derive(PartialEq)]
struct EndpointSettings {
    ods_code: String,
    base_url: Url,
    mode: DeliveryMode,
    timeout: Duration,
    max_in_flight: usize,
    auth: ResolvedAuth,
    tls: TlsSettings,
}

#[derive(PartialEq)]
enum ResolvedAuth {
    None,
    Bearer {
        authorization: HeaderValue,
    },
    PrivateKeyJwt {
        token_url: Url,
        client_id: String,
        kid: String,
        key_pem: Vec<u8>,
    },
    Mtls,
}

/// Which span a build failure is reported at.
enum BuildKey {
    Entry,
    Auth,
}

/// The registry text, for locating errors.
struct Source<'a> {
    origin: &'a str,
    text: &'a str,
}

impl Source<'_> {
    fn error(&self, offset: usize, message: impl Into<String>) -> EndpointError {
        let before = self.text.get(..offset.min(self.text.len())).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        EndpointError::Invalid {
            file: self.origin.to_string(),
            line,
            column,
            message: message.into(),
        }
    }

    fn error_at(&self, span: &Range<usize>, message: impl Into<String>) -> EndpointError {
        self.error(span.start, message)
    }
}

/// Checks one entry and reads what it names; returns the settings and the files read.
fn resolve(
    source: &Source<'_>,
    entry: &Spanned<EntryConfig>,
    base_dir: &Path,
) -> Result<(EndpointSettings, Vec<PathBuf>), EndpointError> {
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
        Ok::<_, EndpointError>(bytes)
    };

    let auth_span = config.auth.span();
    let mut identity_pem = None;
    let auth = match config.auth.get_ref() {
        AuthConfig::None {} => ResolvedAuth::None,
        AuthConfig::Bearer { token_env } => {
            let token = match std::env::var(token_env) {
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

/// The endpoint for checked settings: its HTTP client and authenticator.
fn build(settings: EndpointSettings) -> Result<Endpoint, (BuildKey, String)> {
    let client = build_client(settings.timeout, &settings.tls).map_err(|m| (BuildKey::Entry, m))?;
    let (authenticator, kind) = match &settings.auth {
        ResolvedAuth::None => (Authenticator::None, "none"),
        ResolvedAuth::Bearer { authorization } => {
            (Authenticator::Bearer(authorization.clone()), "bearer")
        }
        ResolvedAuth::PrivateKeyJwt {
            token_url,
            client_id,
            kid,
            key_pem,
        } => {
            let credentials =
                ClientCredentials::new(token_url.clone(), client_id.clone(), kid.clone(), key_pem)
                    .map_err(|m| (BuildKey::Auth, format!("auth.key_file: {m}")))?;
            (
                Authenticator::ClientCredentials(credentials),
                "private_key_jwt",
            )
        }
        ResolvedAuth::Mtls => (Authenticator::None, "mtls"),
    };
    let with_certificate = settings.tls.identity_pem.is_some();
    let auth_kind = match (kind, with_certificate) {
        ("none", true) => "none+mtls",
        ("bearer", true) => "bearer+mtls",
        ("private_key_jwt", true) => "private_key_jwt+mtls",
        (kind, _) => kind,
    };
    Ok(Endpoint {
        ods_code: settings.ods_code.clone(),
        base_url: settings.base_url.clone(),
        mode: settings.mode,
        timeout: settings.timeout,
        max_in_flight: settings.max_in_flight,
        client,
        authenticator,
        auth_kind,
        settings,
    })
}

/// The live registry the delivery worker and the API share; replaced whole on reload, so
/// a request in flight finishes with the endpoint it started with.
pub struct Endpoints {
    current: RwLock<Arc<EndpointRegistry>>,
    source: Option<PathBuf>,
}

impl Endpoints {
    /// Shares `registry`, loaded from `source` (reloads read it again; `None`: nothing to
    /// reload).
    pub fn new(registry: EndpointRegistry, source: Option<PathBuf>) -> Arc<Self> {
        Arc::new(Endpoints {
            current: RwLock::new(Arc::new(registry)),
            source,
        })
    }

    /// The registry now.
    pub fn current(&self) -> Arc<EndpointRegistry> {
        // A poisoned lock only means a writer panicked between two whole-Arc states;
        // the Arc inside is still a complete registry.
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The registry file, if there is one.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Reads the file again and, if it is valid, replaces the registry; if not, the old
    /// registry stays and the error says why. Unchanged entries keep their endpoint (and
    /// its token and connections). With no file, nothing happens.
    pub fn reload(&self) -> Result<(), EndpointError> {
        let Some(source) = &self.source else {
            return Ok(());
        };
        let previous = self.current();
        let registry = EndpointRegistry::load_reusing(source, Some(&previous))?;
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(registry);
        Ok(())
    }

    /// Reloads on SIGHUP and whenever the registry file or a key, certificate or CA file
    /// it names changes (checked every `poll`), logging each success or failure; a
    /// failed reload keeps the old registry. Stops when `shutdown` resolves.
    ///
    /// The SIGHUP handler is installed before this returns, so a SIGHUP sent afterwards
    /// cannot kill the process.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        poll: Duration,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let endpoints = Arc::clone(self);
        let mut hangups = hangup_signals();
        let mut seen = endpoints.fingerprint();
        tokio::spawn(async move {
            tokio::pin!(shutdown);
            let mut ticks = tokio::time::interval(poll.max(Duration::from_millis(10)));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate; the state it would see is `seen` already.
            ticks.tick().await;
            loop {
                let reason = tokio::select! {
                    () = &mut shutdown => break,
                    _ = ticks.tick() => "file change",
                    Some(()) = next_hangup(&mut hangups) => "SIGHUP",
                };
                let now = endpoints.fingerprint();
                if reason == "file change" && now == seen {
                    continue;
                }
                seen = now;
                let reloading = Arc::clone(&endpoints);
                match tokio::task::spawn_blocking(move || reloading.reload()).await {
                    Ok(Ok(())) => tracing::info!(
                        reason,
                        endpoints = endpoints.current().len(),
                        "endpoint registry reloaded"
                    ),
                    Ok(Err(error)) => tracing::error!(
                        reason,
                        %error,
                        "endpoint registry not reloaded; the previous one stays in use"
                    ),
                    Err(error) => {
                        tracing::error!(reason, %error, "endpoint registry reload failed")
                    }
                }
            }
        })
    }

    /// A hash of the registry file's and its referenced files' metadata and content (or
    /// the error reading each), so that a change of any is noticed. The files are small.
    fn fingerprint(&self) -> Option<u64> {
        let source = self.source.as_ref()?;
        let registry = self.current();
        let mut hasher = DefaultHasher::new();
        for path in std::iter::once(source).chain(registry.referenced_files.iter()) {
            path.hash(&mut hasher);
            match std::fs::metadata(path) {
                Ok(meta) => {
                    meta.len().hash(&mut hasher);
                    meta.modified().ok().hash(&mut hasher);
                }
                Err(e) => e.kind().hash(&mut hasher),
            }
            match std::fs::read(path) {
                Ok(bytes) => bytes.hash(&mut hasher),
                Err(e) => e.kind().hash(&mut hasher),
            }
        }
        Some(hasher.finish())
    }
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

#[cfg(unix)]
fn hangup_signals() -> Hangups {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; the endpoint registry reloads on file changes only");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signals() -> Hangups {
    None
}

/// The next SIGHUP; never, without a handler.
async fn next_hangup(hangups: &mut Hangups) -> Option<()> {
    #[cfg(unix)]
    if let Some(signal) = hangups {
        return signal.recv().await;
    }
    let _ = hangups;
    std::future::pending().await
}
