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
use super::transport::{self, TlsSettings, build_client};
// Defined in `transport`; here too, beside `Endpoint::send`, which takes and gives them.
pub use super::transport::{OutboundRequest, ReceiverResponse, TransportError};
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
    /// A message-mode endpoint on an instance that has no public address to give it.
    #[error(
        "endpoint {ods_code} has mode = \"message\", which needs public_base_url in Sprig's \
         settings: a message names Sprig's resources and its $process-message by absolute \
         URLs, which the practice's system must be able to reach"
    )]
    MessageModeWithoutPublicBaseUrl {
        /// The endpoint's ODS code.
        ods_code: String,
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
        Self::load_reusing(path, None, &process_env)
    }

    /// Checks registry text. `base_dir` resolves relative file paths; `origin` names the
    /// text in errors (`origin:line:column: problem`).
    pub fn from_toml(text: &str, base_dir: &Path, origin: &str) -> Result<Self, EndpointError> {
        Self::from_toml_reusing(text, base_dir, origin, None, &process_env)
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
        env: EnvLookup<'_>,
    ) -> Result<Self, EndpointError> {
        let text = std::fs::read_to_string(path).map_err(|source| EndpointError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base_dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        Self::from_toml_reusing(&text, base_dir, &path.display().to_string(), previous, env)
    }

    /// Checks registry text; an entry whose settings (including the files and environment
    /// variable it reads) are unchanged from `previous` keeps its endpoint, with its
    /// cached token and open connections.
    fn from_toml_reusing(
        text: &str,
        base_dir: &Path,
        origin: &str,
        previous: Option<&EndpointRegistry>,
        env: EnvLookup<'_>,
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
            let (settings, files) = resolve(&source, entry, base_dir, env)?;
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

/// Reads an environment variable; the process environment outside tests, which swap it
/// for a map rather than change the process's (not thread-safe).
type EnvLookup<'a> = &'a dyn Fn(&str) -> Result<String, std::env::VarError>;

fn process_env(name: &str) -> Result<String, std::env::VarError> {
    std::env::var(name)
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
        let (line, column) = crate::fhir::locate::line_column(self.text, offset);
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
    env: EnvLookup<'_>,
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
                Authenticator::ClientCredentials(Box::new(credentials)),
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

/// The rules a registry must meet on this instance, beyond those of its own file.
fn check_instance_rules(
    registry: &EndpointRegistry,
    message_mode_allowed: bool,
) -> Result<(), EndpointError> {
    if message_mode_allowed {
        return Ok(());
    }
    match registry.iter().find(|e| e.mode == DeliveryMode::Message) {
        Some(endpoint) => Err(EndpointError::MessageModeWithoutPublicBaseUrl {
            ods_code: endpoint.ods_code.clone(),
        }),
        None => Ok(()),
    }
}

/// The live registry the delivery worker and the API share; replaced whole on reload, so
/// a request in flight finishes with the endpoint it started with.
pub struct Endpoints {
    current: RwLock<Arc<EndpointRegistry>>,
    source: Option<PathBuf>,
    /// False when Sprig has no `public_base_url`: a registry (at start-up or on reload)
    /// with a message-mode endpoint is then refused rather than sent messages whose
    /// URLs the practice cannot reach.
    message_mode_allowed: bool,
    /// One reload at a time, so that a slower reload of an older file cannot replace
    /// the registry a later one made.
    reloading: std::sync::Mutex<()>,
}

impl Endpoints {
    /// Shares `registry`, loaded from `source` (reloads read it again; `None`: nothing to
    /// reload). With `message_mode_allowed` false, a registry holding a message-mode
    /// endpoint is refused, now and on every reload.
    pub fn new(
        registry: EndpointRegistry,
        source: Option<PathBuf>,
        message_mode_allowed: bool,
    ) -> Result<Arc<Self>, EndpointError> {
        check_instance_rules(&registry, message_mode_allowed)?;
        Ok(Arc::new(Endpoints {
            current: RwLock::new(Arc::new(registry)),
            source,
            message_mode_allowed,
            reloading: std::sync::Mutex::new(()),
        }))
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
        // A poisoned lock guards nothing broken: the registry is only replaced whole.
        let _one_at_a_time = match self.reloading.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let previous = self.current();
        let registry = EndpointRegistry::load_reusing(source, Some(&previous), &process_env)?;
        check_instance_rules(&registry, self.message_mode_allowed)?;
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
                // File reads, off the async threads.
                let reading = Arc::clone(&endpoints);
                let now = tokio::task::spawn_blocking(move || reading.fingerprint())
                    .await
                    .ok()
                    .flatten();
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

    /// A hash of the registry file's and its referenced files' content (or the error
    /// reading each), so that a change of any is noticed; a file touched but unchanged
    /// is not a change. The files are small.
    fn fingerprint(&self) -> Option<u64> {
        let source = self.source.as_ref()?;
        let registry = self.current();
        let mut hasher = DefaultHasher::new();
        for path in std::iter::once(source).chain(registry.referenced_files.iter()) {
            path.hash(&mut hasher);
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

/// Fixtures shared by the delivery tests: registries from text, RSA keys, a test PKI.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    use super::{EndpointError, EndpointRegistry};

    /// A registry from `text`, with environment variables taken from `env` only.
    pub fn registry_with_env(
        text: &str,
        dir: &Path,
        env: &[(&str, &str)],
    ) -> Result<EndpointRegistry, EndpointError> {
        let lookup = |name: &str| {
            env.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_string())
                .ok_or(std::env::VarError::NotPresent)
        };
        EndpointRegistry::from_toml_reusing(text, dir, "endpoints.toml", None, &lookup)
    }

    /// A registry from `text` that must be valid.
    pub fn registry(text: &str, dir: &Path) -> EndpointRegistry {
        registry_with_env(text, dir, &[]).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// Writes `contents` to `dir/name`.
    pub fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).expect("write fixture");
        path
    }

    /// A 2048-bit RSA key pair (private PKCS#8 PEM, public SPKI PEM), made once per test
    /// run: RSA generation is the slow part.
    pub fn rsa_key() -> &'static (String, String) {
        static KEY: OnceLock<(String, String)> = OnceLock::new();
        KEY.get_or_init(|| {
            let key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .expect("RSA key generation (rcgen with aws-lc-rs)");
            (key.serialize_pem(), key.public_key_pem())
        })
    }

    /// A certificate and its key, PEM.
    pub struct Issued {
        pub cert_pem: String,
        pub key_pem: String,
        pub cert_der: rustls_pki_types::CertificateDer<'static>,
        pub key_der: rustls_pki_types::PrivateKeyDer<'static>,
    }

    /// A test CA that issues server certificates for 127.0.0.1 and localhost, and client
    /// certificates.
    pub struct TestCa {
        pub cert: Issued,
        issuer: Issuer<'static, KeyPair>,
    }

    impl TestCa {
        pub fn new(name: &str) -> Self {
            let key = KeyPair::generate().expect("CA key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.self_signed(&key).expect("CA certificate");
            let issued = issued(cert, &key);
            TestCa {
                cert: issued,
                issuer: Issuer::new(params, key),
            }
        }

        pub fn server_certificate(&self) -> Issued {
            self.issue(
                vec!["127.0.0.1".into(), "localhost".into()],
                ExtendedKeyUsagePurpose::ServerAuth,
            )
        }

        pub fn client_certificate(&self) -> Issued {
            self.issue(Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
        }

        fn issue(&self, names: Vec<String>, usage: ExtendedKeyUsagePurpose) -> Issued {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(names).expect("params");
            params
                .distinguished_name
                .push(DnType::CommonName, "sprig test");
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &self.issuer).expect("certificate");
            issued(cert, &key)
        }
    }

    fn issued(cert: rcgen::Certificate, key: &KeyPair) -> Issued {
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use reqwest::Method;
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::test_support::{TestCa, registry, registry_with_env, rsa_key, write};
    use super::*;
    use crate::delivery::transport::{MAX_RESPONSE_BODY, USER_AGENT};

    fn one(base_url: &str, extra: &str) -> String {
        format!(
            "[[endpoint]]\nods_code = \"A81001\"\nbase_url = \"{base_url}\"\nmode = \"rest\"\nauth = {{ type = \"none\" }}\n{extra}"
        )
    }

    fn endpoint_at(server: &MockServer, extra: &str) -> Arc<Endpoint> {
        let dir = tempfile::tempdir().expect("tempdir");
        registry(&one(&format!("{}/fhir", server.uri()), extra), dir.path())
            .get("A81001")
            .expect("endpoint")
    }

    #[test]
    fn every_auth_type_parses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new("registry CA");
        let client = ca.client_certificate();
        write(dir.path(), "jwt.pem", &rsa_key().0);
        write(dir.path(), "ca.pem", &ca.cert.cert_pem);
        std::fs::create_dir(dir.path().join("tls")).expect("mkdir");
        write(dir.path(), "tls/client.pem", &client.cert_pem);
        write(dir.path(), "tls/client.key", &client.key_pem);
        let text = r#"
[[endpoint]]
ods_code = "A81001"
base_url = "http://gp.example/fhir"
mode = "rest"
auth = { type = "none" }

[[endpoint]]
ods_code = "B82002"
base_url = "https://gp.example/fhir/"
mode = "message"
auth = { type = "bearer", token_env = "GP_TOKEN" }
timeout_secs = 3
max_in_flight = 1

[[endpoint]]
ods_code = "C83003"
base_url = "https://api.example/gp"
mode = "rest"
auth = { type = "private_key_jwt", token_url = "https://api.example/oauth2/token", client_id = "sprig", key_file = "jwt.pem", kid = "key-1" }

[[endpoint]]
ods_code = "D84004"
base_url = "https://gp.example/fhir"
mode = "rest"
auth = { type = "mtls", cert_file = "tls/client.pem", key_file = "tls/client.key" }
ca_file = "ca.pem"

[[endpoint]]
ods_code = "E85005"
base_url = "https://gp.example/fhir"
mode = "rest"
ca_file = "ca.pem"
tls = { cert_file = "tls/client.pem", key_file = "tls/client.key" }

[endpoint.auth]
type = "bearer"
token_env = "GP_TOKEN"
"#;
        let registry = registry_with_env(text, dir.path(), &[("GP_TOKEN", "t0ken")])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(registry.len(), 5);
        let kinds: Vec<_> = registry
            .iter()
            .map(|e| (e.ods_code.as_str(), e.auth_kind()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("A81001", "none"),
                ("B82002", "bearer"),
                ("C83003", "private_key_jwt"),
                ("D84004", "mtls"),
                ("E85005", "bearer+mtls"),
            ]
        );
        let a = registry.get("A81001").expect("A81001");
        assert_eq!(a.mode, DeliveryMode::Rest);
        assert_eq!(a.timeout, DEFAULT_TIMEOUT);
        assert_eq!(a.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
        assert_eq!(a.base_url.as_str(), "http://gp.example/fhir/");
        let b = registry.get("B82002").expect("B82002");
        assert_eq!(b.mode, DeliveryMode::Message);
        assert_eq!(b.timeout, Duration::from_secs(3));
        assert_eq!(b.max_in_flight, 1);
        assert_eq!(b.base_url.as_str(), "https://gp.example/fhir/");
        assert!(registry.get("Z99999").is_none());
        assert!(EndpointRegistry::empty().is_empty());
        // The key and certificate files are watched for renewal.
        assert_eq!(registry.referenced_files.len(), 7);
    }

    /// `text` must fail at `line` with a message containing `problem`.
    fn assert_refused(text: &str, dir: &Path, line: usize, problem: &str) {
        let error = match registry_with_env(text, dir, &[("EMPTY_TOKEN", " ")]) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e,
        };
        let shown = error.to_string();
        assert!(
            shown.starts_with(&format!("endpoints.toml:{line}:")),
            "wrong place: {shown}\n{text}"
        );
        assert!(shown.contains(problem), "wrong problem: {shown}\n{text}");
    }

    #[test]
    fn every_mistake_names_its_line_and_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = "[[endpoint]]\nods_code = \"A81001\"\nbase_url = \"https://gp.example/fhir\"\nmode = \"rest\"\n";
        let cases: &[(&str, usize, &str)] = &[
            // Unknown keys: in the entry, in auth, at the top.
            (
                &format!("{base}auth = {{ type = \"none\" }}\ncolour = \"blue\"\n"),
                6,
                "unknown field `colour`",
            ),
            (
                &format!(
                    "{base}auth = {{ type = \"bearer\", token_env = \"X\", token = \"secret\" }}\n"
                ),
                5,
                "unknown field `token`",
            ),
            (
                &format!("{base}auth = {{ type = \"none\", token_env = \"X\" }}\n"),
                5,
                "unknown field `token_env`",
            ),
            (
                &format!("{base}auth = {{ type = \"basic\" }}\n"),
                5,
                "unknown variant `basic`",
            ),
            ("endpoints = []\n", 1, "unknown field `endpoints`"),
            (
                "[[endpoint]]\nods_code = \"a81001\"\nbase_url = \"https://gp.example\"\nmode = \"rest\"\nauth = { type = \"none\" }\n",
                2,
                "ods_code \"a81001\"",
            ),
            (
                "[[endpoint]]\nods_code = \"A81001\"\nbase_url = \"gp.example/fhir\"\nmode = \"rest\"\nauth = { type = \"none\" }\n",
                3,
                "endpoint A81001: base_url: \"gp.example/fhir\" is not a URL",
            ),
            (
                "[[endpoint]]\nods_code = \"A81001\"\nbase_url = \"ftp://gp.example/fhir\"\nmode = \"rest\"\nauth = { type = \"none\" }\n",
                3,
                "not an http or https URL",
            ),
            (
                "[[endpoint]]\nods_code = \"A81001\"\nbase_url = \"https://user:pw@gp.example/fhir\"\nmode = \"rest\"\nauth = { type = \"none\" }\n",
                3,
                "holds credentials",
            ),
            (
                &format!(
                    "{base}auth = {{ type = \"none\" }}\n\n{base}auth = {{ type = \"none\" }}\n"
                ),
                8,
                "endpoint A81001: ods_code: a second entry",
            ),
            (
                &format!(
                    "{base}auth = {{ type = \"bearer\", token_env = \"SPRIG_TEST_SURELY_UNSET\" }}\n"
                ),
                5,
                "endpoint A81001: auth.token_env: environment variable SPRIG_TEST_SURELY_UNSET",
            ),
            (
                &format!("{base}auth = {{ type = \"bearer\", token_env = \"EMPTY_TOKEN\" }}\n"),
                5,
                "EMPTY_TOKEN is empty",
            ),
            (
                &format!(
                    "{base}auth = {{ type = \"private_key_jwt\", token_url = \"https://t.example/token\", client_id = \"c\", key_file = \"missing.pem\", kid = \"k\" }}\n"
                ),
                5,
                "endpoint A81001: auth.key_file: cannot read",
            ),
            (
                &format!(
                    "{base}auth = {{ type = \"mtls\", cert_file = \"missing.pem\", key_file = \"missing.key\" }}\n"
                ),
                5,
                "auth.cert_file: cannot read",
            ),
            (
                &format!("{base}auth = {{ type = \"none\" }}\nca_file = \"missing-ca.pem\"\n"),
                6,
                "ca_file: cannot read",
            ),
            (
                &format!("{base}auth = {{ type = \"none\" }}\ntimeout_secs = 0\n"),
                6,
                "timeout_secs: must be at least 1",
            ),
            (
                &format!("{base}auth = {{ type = \"none\" }}\nmax_in_flight = -1\n"),
                6,
                "invalid value: integer `-1`, expected usize",
            ),
            (
                "[[endpoint]]\nods_code = \"A81001\"\nbase_url = \"https://gp.example\"\nmode = \"soap\"\nauth = { type = \"none\" }\n",
                4,
                "unknown variant `soap`",
            ),
            (
                "[[endpoint]]\nods_code = \"A81001\"\nbase_url = \"https://gp.example\"\nauth = { type = \"none\" }\n",
                1,
                "missing field `mode`",
            ),
            ("[[endpoint]\n", 1, ""),
        ];
        for (text, line, problem) in cases {
            assert_refused(text, dir.path(), *line, problem);
        }
    }

    #[test]
    fn bad_key_and_certificate_files_are_load_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new("CA");
        let one_client = ca.client_certificate();
        let other_client = ca.client_certificate();
        write(dir.path(), "not-a-key.pem", "hello");
        write(dir.path(), "client.pem", &one_client.cert_pem);
        write(dir.path(), "other.key", &other_client.key_pem);
        let base = "[[endpoint]]\nods_code = \"A81001\"\nbase_url = \"https://gp.example/fhir\"\nmode = \"rest\"\n";
        assert_refused(
            &format!(
                "{base}auth = {{ type = \"private_key_jwt\", token_url = \"https://t.example/token\", client_id = \"c\", key_file = \"not-a-key.pem\", kid = \"k\" }}\n"
            ),
            dir.path(),
            5,
            "endpoint A81001: auth.key_file: not an RSA private key",
        );
        assert_refused(
            &format!(
                "{base}auth = {{ type = \"mtls\", cert_file = \"client.pem\", key_file = \"other.key\" }}\n"
            ),
            dir.path(),
            5,
            "key_file: the key does not fit the certificate",
        );
        assert_refused(
            &format!("{base}auth = {{ type = \"none\" }}\nca_file = \"not-a-key.pem\"\n"),
            dir.path(),
            6,
            "ca_file: no certificate",
        );
    }

    #[test]
    fn paths_join_under_the_base_url_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        for base in ["http://gp.example/fhir", "http://gp.example/fhir/"] {
            let endpoint = registry(&one(base, ""), dir.path())
                .get("A81001")
                .expect("endpoint");
            let joined = |p: &str| endpoint.url_for(p).map(|u| u.to_string());
            assert_eq!(
                joined("Task/abc").expect("Task"),
                "http://gp.example/fhir/Task/abc"
            );
            assert_eq!(
                joined("$process-message").expect("message"),
                "http://gp.example/fhir/$process-message"
            );
            for escape in [
                "/Task/abc",
                "../Task",
                "http://other.example/x",
                "//other.example/x",
            ] {
                let error = joined(escape).expect_err(escape);
                assert!(!error.is_transient(), "{escape}");
            }
        }
    }

    #[tokio::test]
    async fn send_returns_status_headers_and_body() {
        let server = MockServer::start().await;
        Mock::given(method("PUT"))
            .and(path("/fhir/Task/abc"))
            .and(header("content-type", "application/fhir+json"))
            .and(header("user-agent", USER_AGENT))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_raw("{\"resourceType\":\"Task\"}", "application/fhir+json"),
            )
            .expect(1)
            .mount(&server)
            .await;
        let endpoint = endpoint_at(&server, "");
        let response = endpoint
            .send(
                OutboundRequest::new(Method::PUT, "Task/abc")
                    .with_header("Content-Type", "application/fhir+json")
                    .with_body("{\"resourceType\":\"Task\",\"id\":\"abc\"}"),
            )
            .await
            .expect("response");
        assert_eq!(response.status, 200);
        assert_eq!(response.retry_after, None);
        assert_eq!(
            response.content_type.as_deref(),
            Some("application/fhir+json")
        );
        assert_eq!(&response.body[..], b"{\"resourceType\":\"Task\"}");
        assert!(!response.body_truncated);
        let received = server.received_requests().await.expect("recorded");
        assert_eq!(
            &received[0].body[..],
            b"{\"resourceType\":\"Task\",\"id\":\"abc\"}"
        );
        assert!(!received[0].headers.contains_key("authorization"));
    }

    #[tokio::test]
    async fn retry_after_in_seconds_and_as_a_date() {
        let server = MockServer::start().await;
        Mock::given(path("/fhir/Task/busy"))
            .respond_with(ResponseTemplate::new(503).insert_header("retry-after", "7"))
            .mount(&server)
            .await;
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        Mock::given(path("/fhir/Task/later"))
            .respond_with(ResponseTemplate::new(429).insert_header("retry-after", later.as_str()))
            .mount(&server)
            .await;
        let endpoint = endpoint_at(&server, "");
        let busy = endpoint
            .send(OutboundRequest::new(Method::PUT, "Task/busy"))
            .await
            .expect("response");
        assert_eq!(busy.status, 503);
        assert_eq!(busy.retry_after, Some(Duration::from_secs(7)));
        let later = endpoint
            .send(OutboundRequest::new(Method::PUT, "Task/later"))
            .await
            .expect("response");
        assert_eq!(later.status, 429);
        let delay = later.retry_after.expect("Retry-After date");
        assert!(
            (Duration::from_secs(115)..=Duration::from_secs(120)).contains(&delay),
            "{delay:?}"
        );
    }

    #[tokio::test]
    async fn a_timeout_is_transient() {
        let server = MockServer::start().await;
        Mock::given(method("PUT"))
            .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
            .mount(&server)
            .await;
        let endpoint = endpoint_at(&server, "timeout_secs = 1");
        let started = std::time::Instant::now();
        let error = endpoint
            .send(OutboundRequest::new(Method::PUT, "Task/slow"))
            .await
            .expect_err("timeout");
        assert!(matches!(error, TransportError::Timeout(_)), "{error:?}");
        assert!(error.is_transient());
        assert!(started.elapsed() < Duration::from_secs(4));
    }

    #[tokio::test]
    async fn connection_refused_is_transient() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let endpoint = registry(
            &one(&format!("http://127.0.0.1:{port}/fhir"), ""),
            dir.path(),
        )
        .get("A81001")
        .expect("endpoint");
        let error = endpoint
            .send(OutboundRequest::new(Method::PUT, "Task/abc"))
            .await
            .expect_err("refused");
        assert!(matches!(error, TransportError::Connect(_)), "{error:?}");
        assert!(error.is_transient());
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let server = MockServer::start().await;
        Mock::given(path("/fhir/Task/abc"))
            .respond_with(
                ResponseTemplate::new(307)
                    .insert_header("location", format!("{}/elsewhere", server.uri())),
            )
            .mount(&server)
            .await;
        Mock::given(path("/elsewhere"))
            .respond_with(ResponseTemplate::new(200))
            .expect(0)
            .mount(&server)
            .await;
        let response = endpoint_at(&server, "")
            .send(OutboundRequest::new(Method::PUT, "Task/abc"))
            .await
            .expect("response");
        assert_eq!(response.status, 307);
    }

    #[tokio::test]
    async fn a_long_body_is_capped() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(400).set_body_bytes(vec![b'x'; MAX_RESPONSE_BODY + 10]),
            )
            .mount(&server)
            .await;
        let response = endpoint_at(&server, "")
            .send(OutboundRequest::new(Method::POST, "Observation"))
            .await
            .expect("response");
        assert_eq!(response.body.len(), MAX_RESPONSE_BODY);
        assert!(response.body_truncated);
    }

    #[tokio::test]
    async fn an_unbuildable_request_is_permanent() {
        let server = MockServer::start().await;
        let error = endpoint_at(&server, "")
            .send(OutboundRequest::new(Method::PUT, "Task/abc").with_header("bad header", "x"))
            .await
            .expect_err("bad header");
        assert!(matches!(error, TransportError::InvalidRequest(_)));
        assert!(!error.is_transient());
    }

    #[tokio::test]
    async fn the_bearer_token_is_sent() {
        let server = MockServer::start().await;
        Mock::given(method("PUT"))
            .and(header("authorization", "Bearer s3cret-token"))
            .respond_with(ResponseTemplate::new(200))
            .expect(1)
            .mount(&server)
            .await;
        let dir = tempfile::tempdir().expect("tempdir");
        let text = one(&format!("{}/fhir", server.uri()), "").replace(
            "{ type = \"none\" }",
            "{ type = \"bearer\", token_env = \"GP_TOKEN\" }",
        );
        let endpoint = registry_with_env(&text, dir.path(), &[("GP_TOKEN", "s3cret-token")])
            .expect("registry")
            .get("A81001")
            .expect("endpoint");
        // The caller's Authorization header cannot replace the endpoint's.
        let response = endpoint
            .send(
                OutboundRequest::new(Method::PUT, "Task/abc")
                    .with_header("Authorization", "Bearer forged"),
            )
            .await
            .expect("response");
        assert_eq!(response.status, 200);
        assert!(!format!("{endpoint:?}").contains("s3cret"));
    }

    fn registry_file(dir: &Path, codes: &[&str]) -> PathBuf {
        let text: String = codes
            .iter()
            .map(|code| {
                format!(
                    "[[endpoint]]\nods_code = \"{code}\"\nbase_url = \"http://{code}.example/fhir\"\nmode = \"rest\"\nauth = {{ type = \"none\" }}\n\n"
                )
            })
            .collect();
        write(dir, "endpoints.toml", text)
    }

    #[test]
    fn reload_takes_a_changed_file_and_keeps_the_old_registry_on_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = registry_file(dir.path(), &["A81001"]);
        let endpoints = Endpoints::new(
            EndpointRegistry::load(&file).expect("load"),
            Some(file.clone()),
            true,
        )
        .expect("no rule broken");
        let before = endpoints.current().get("A81001").expect("A81001");

        registry_file(dir.path(), &["A81001", "B82002"]);
        endpoints.reload().expect("reload");
        let current = endpoints.current();
        assert_eq!(current.len(), 2);
        // The unchanged endpoint is the same one, with its connections and token.
        assert!(Arc::ptr_eq(
            &before,
            &current.get("A81001").expect("A81001")
        ));

        write(
            dir.path(),
            "endpoints.toml",
            "[[endpoint]]\nods_code = \"nope\"\n",
        );
        let error = endpoints.reload().expect_err("invalid file");
        assert!(error.to_string().contains("endpoints.toml:"), "{error}");
        assert_eq!(endpoints.current().len(), 2);

        std::fs::remove_file(&file).expect("remove");
        assert!(matches!(
            endpoints.reload(),
            Err(EndpointError::Read { .. })
        ));
        assert_eq!(endpoints.current().len(), 2);
    }

    #[test]
    fn a_message_mode_endpoint_is_refused_without_a_public_address() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rest = registry_file(dir.path(), &["A81001"]);
        let message = "[[endpoint]]\nods_code = \"B82002\"\nbase_url = \"http://b.example/fhir\"\nmode = \"message\"\nauth = { type = \"none\" }\n";
        let registry = |text: &str| {
            write(dir.path(), "endpoints.toml", text);
            EndpointRegistry::load(&rest).expect("load")
        };

        // At start-up: refused, naming the endpoint; allowed with a public address.
        let error = Endpoints::new(registry(message), Some(rest.clone()), false)
            .err()
            .expect("refused");
        assert!(
            matches!(&error, EndpointError::MessageModeWithoutPublicBaseUrl { ods_code } if ods_code == "B82002"),
            "{error}"
        );
        assert!(error.to_string().contains("public_base_url"), "{error}");
        assert!(Endpoints::new(registry(message), Some(rest.clone()), true).is_ok());

        // On reload: refused, and the registry in use stays.
        registry_file(dir.path(), &["A81001"]);
        let endpoints = Endpoints::new(
            EndpointRegistry::load(&rest).expect("load"),
            Some(rest),
            false,
        )
        .expect("a REST-only registry is allowed");
        write(dir.path(), "endpoints.toml", message);
        assert!(matches!(
            endpoints.reload(),
            Err(EndpointError::MessageModeWithoutPublicBaseUrl { .. })
        ));
        assert!(endpoints.current().get("A81001").is_some());
        assert!(endpoints.current().get("B82002").is_none());
    }

    /// Waits up to five seconds for the registry to hold `count` endpoints.
    async fn wait_for_len(endpoints: &Endpoints, count: usize) -> bool {
        for _ in 0..100 {
            if endpoints.current().len() == count {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    #[tokio::test]
    async fn the_watcher_reloads_when_the_file_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = registry_file(dir.path(), &["A81001"]);
        let endpoints = Endpoints::new(
            EndpointRegistry::load(&file).expect("load"),
            Some(file),
            true,
        )
        .expect("no rule broken");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let watcher = endpoints.spawn_watcher(Duration::from_millis(50), async {
            let _ = stopped.await;
        });
        registry_file(dir.path(), &["A81001", "B82002"]);
        assert!(wait_for_len(&endpoints, 2).await, "change not picked up");
        // A broken file is logged and ignored; mending it is picked up.
        write(dir.path(), "endpoints.toml", "not toml [");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(endpoints.current().len(), 2);
        registry_file(dir.path(), &["A81001", "B82002", "C83003"]);
        assert!(
            wait_for_len(&endpoints, 3).await,
            "mended file not picked up"
        );
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .expect("watcher stops on shutdown")
            .expect("watcher task");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_watcher_reloads_on_sighup() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = registry_file(dir.path(), &["A81001"]);
        let endpoints = Endpoints::new(
            EndpointRegistry::load(&file).expect("load"),
            Some(file),
            true,
        )
        .expect("no rule broken");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // An hour between polls: only the signal can cause this reload.
        let watcher = endpoints.spawn_watcher(Duration::from_secs(3600), async {
            let _ = stopped.await;
        });
        registry_file(dir.path(), &["A81001", "B82002"]);
        // SAFETY: kill(2) on our own process id. spawn_watcher has installed tokio's
        // SIGHUP handler before returning, so the signal cannot end the test process
        // (other watchers in this process merely reload).
        let sent = unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
        assert_eq!(sent, 0);
        assert!(wait_for_len(&endpoints, 2).await, "SIGHUP did not reload");
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .expect("watcher stops on shutdown")
            .expect("watcher task");
    }
}
