//! The endpoint registry: where and how each referring organisation (by ODS code) takes
//! its updates, read from a TOML file (`endpoints.example.toml` documents every key),
//! checked whole before use, and reloadable while Sprig runs.
//!
//! An organisation with no entry is not an error: its updates wait for it to pull them.
//!
//! This file holds an endpoint and how it is built and sends; `registry` the endpoints by
//! ODS code, `file` the reading and checking of the file, `reload` the live registry.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;
use reqwest::header::HeaderValue;
use serde::Deserialize;

use super::auth::{Authenticator, ClientCredentials};
use super::transport::{self, TlsSettings, build_client};
// Defined in `transport`; here too, beside `Endpoint::send`, which takes and gives them.
pub use super::transport::{OutboundRequest, ReceiverResponse, TransportError};
use crate::located::LocatedError;
mod file;
mod registry;
mod reload;
#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;

pub use self::registry::EndpointRegistry;
pub use self::reload::Endpoints;

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
    /// A mistake in the file, at a line and column: `file:line:column: message`, the file
    /// as named to the registry and the message naming the endpoint and key.
    #[error(transparent)]
    Invalid(#[from] LocatedError),
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
