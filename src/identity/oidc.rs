//! Console sign-in through the service's identity provider (`[console.oidc]`): OpenID
//! Connect, authorization code flow with PKCE (S256), `state` and `nonce`. The provider's
//! discovery document is read on first use; its ID tokens are checked by an
//! [`ExternalVerifier`] built from it (signature from the provider's JWK Set, issuer,
//! audience = Sprig's client id, expiry), then for the `nonce` this sign-in sent and
//! `azp`, and their claims mapped to a person and role as `[auth.external]` maps access
//! tokens. `console` keeps the sign-in under way (`store::sessions::SignInRow`) and
//! starts the session.
//!
//! Why not the `openidconnect` crate: it brings its own HTTP client stack (a second
//! `reqwest` major version) and crypto backend beside Sprig's `reqwest` 0.13,
//! `jsonwebtoken` and aws-lc; the checks it would add over `ExternalVerifier` (which
//! already fetches, rotates and pins JWKS keys and algorithms) are the nonce and `azp`,
//! a few lines here.
//!
//! Invariants:
//! - the algorithms come from the settings, never the token; the discovery document's
//!   `issuer` must be the configured one exactly (OpenID Connect Discovery 1.0, 4.3);
//! - `state`, `nonce` and the code verifier are 256 random bits each, used once;
//! - a token without a known role signs no one in;
//! - tokens, codes, secrets and claim values other than the username are never logged.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use super::external::{ExternalError, ExternalVerifier};
use super::session::new_random_token;
use super::staff::StaffRole;
use crate::config::{ConsoleOidcSettings, ExternalAuthSettings};

/// How long a call to the provider may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest discovery document or token response read.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// The longest username taken from a claim.
const MAX_USERNAME_CHARS: usize = 200;

/// Why a sign-in through the identity provider failed.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The provider cannot be reached, or answered what is not OpenID Connect.
    #[error("the identity provider: {0}")]
    Provider(String),
    /// The provider refused the code (its token endpoint answered an error).
    #[error("the identity provider refused the sign-in: {0}")]
    Refused(String),
    /// The ID token is not acceptable.
    #[error("the ID token is not acceptable: {0}")]
    Token(String),
    /// The settings cannot be used (the client secret file).
    #[error("console.oidc: {0}")]
    Settings(String),
    /// No random bytes.
    #[error("no random bytes: {0}")]
    Random(String),
}

/// What the provider's discovery document says, and the verifier built from it.
struct Provider {
    authorization_endpoint: reqwest::Url,
    token_endpoint: reqwest::Url,
    verifier: ExternalVerifier,
}

/// The secrets of one sign-in under way: sent (state, the verifier's challenge, nonce)
/// and checked when the browser comes back.
#[derive(Clone, PartialEq, Eq)]
pub struct Pending {
    /// The `state` parameter.
    pub state: String,
    /// The `nonce` the ID token must carry.
    pub nonce: String,
    /// PKCE's code verifier (its S256 challenge is sent).
    pub code_verifier: String,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

/// The person an ID token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcPerson {
    /// Their stable id (the username claim).
    pub username: String,
    /// Their name as shown (the name claim, else the username).
    pub display_name: String,
    /// Their role (the role claim).
    pub role: StaffRole,
}

/// Signs console users in through one identity provider.
pub struct ConsoleOidc {
    settings: ConsoleOidcSettings,
    client_secret: Option<String>,
    http: reqwest::Client,
    /// Read on first use, then kept (its verifier refreshes the keys itself).
    provider: Mutex<Option<Arc<Provider>>>,
}

impl std::fmt::Debug for ConsoleOidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleOidc")
            .field("issuer", &self.settings.issuer)
            .field("client_id", &self.settings.client_id)
            .finish_non_exhaustive()
    }
}

impl ConsoleOidc {
    /// Reads the settings (and the client secret's file); the provider is asked nothing
    /// until the first sign-in, so a provider down at start-up does not stop Sprig or
    /// its staff accounts.
    pub fn new(settings: &ConsoleOidcSettings) -> Result<Self, OidcError> {
        let client_secret = match &settings.client_secret_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        OidcError::Settings(format!("client_secret_file {}: {e}", path.display()))
                    })?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let _already_installed = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(CALL_TIMEOUT)
            .connect_timeout(CALL_TIMEOUT)
            .build()
            .map_err(|e| OidcError::Settings(format!("HTTP client: {e}")))?;
        Ok(ConsoleOidc {
            settings: settings.clone(),
            client_secret,
            http,
            provider: Mutex::new(None),
        })
    }

    /// The name on the sign-in button.
    pub fn display_name(&self) -> &str {
        &self.settings.display_name
    }

    /// The configured redirect URL, if any (else the console derives it).
    pub fn redirect_url(&self) -> Option<&str> {
        self.settings.redirect_url.as_deref()
    }

    async fn get_json(&self, url: &reqwest::Url) -> Result<Value, OidcError> {
        let response = self
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| OidcError::Provider(format!("{url}: {}", e.without_url())))?;
        let status = response.status();
        if !status.is_success() {
            return Err(OidcError::Provider(format!("{url}: HTTP {status}")));
        }
        read_json(response).await.map_err(OidcError::Provider)
    }

    async fn provider(&self) -> Result<Arc<Provider>, OidcError> {
        let mut held = self.provider.lock().await;
        if let Some(provider) = held.as_ref() {
            return Ok(Arc::clone(provider));
        }
        let url = reqwest::Url::parse(&format!(
            "{}/.well-known/openid-configuration",
            self.settings.issuer.trim_end_matches('/')
        ))
        .map_err(|e| OidcError::Provider(format!("issuer: {e}")))?;
        let document = self.get_json(&url).await?;
        let field = |name: &str| -> Result<String, OidcError> {
            document
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| OidcError::Provider(format!("the discovery document has no {name}")))
        };
        if field("issuer")? != self.settings.issuer {
            return Err(OidcError::Provider(
                "the discovery document names another issuer".into(),
            ));
        }
        let endpoint = |name: &str| -> Result<reqwest::Url, OidcError> {
            reqwest::Url::parse(&field(name)?)
                .map_err(|e| OidcError::Provider(format!("{name}: {e}")))
        };
        let authorization_endpoint = endpoint("authorization_endpoint")?;
        let token_endpoint = endpoint("token_endpoint")?;
        let jwks_uri = field("jwks_uri")?;
        let verifier = ExternalVerifier::new(&ExternalAuthSettings {
            issuer: self.settings.issuer.clone(),
            audience: self.settings.client_id.clone(),
            jwks_file: None,
            jwks_url: Some(jwks_uri),
            jwks_refresh_secs: 3600,
            algorithms: self.settings.algorithms.clone(),
            client_id_claim: "azp".into(),
            username_claim: self.settings.username_claim.clone(),
            ods_claim: "ods".into(),
            scope_claim: "scope".into(),
            role_claim: self.settings.role_claim.clone(),
        })
        .await
        .map_err(|e| OidcError::Provider(e.to_string()))?;
        let provider = Arc::new(Provider {
            authorization_endpoint,
            token_endpoint,
            verifier,
        });
        *held = Some(Arc::clone(&provider));
        tracing::info!("console: identity provider discovered");
        Ok(provider)
    }

    /// A new sign-in: its secrets (to keep until the browser comes back) and the
    /// provider's authorization URL to send the browser to.
    pub async fn begin(&self, redirect_uri: &str) -> Result<(Pending, String), OidcError> {
        let provider = self.provider().await?;
        let random = || new_random_token().map_err(|e| OidcError::Random(e.to_string()));
        let pending = Pending {
            state: random()?,
            nonce: random()?,
            code_verifier: random()?,
        };
        let mut url = provider.authorization_endpoint.clone();
        let mut scopes: Vec<&str> = vec!["openid"];
        scopes.extend(
            self.settings
                .scopes
                .iter()
                .map(String::as_str)
                .filter(|s| *s != "openid"),
        );
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.settings.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &scopes.join(" "))
            .append_pair("state", &pending.state)
            .append_pair("nonce", &pending.nonce)
            .append_pair("code_challenge", &code_challenge(&pending.code_verifier))
            .append_pair("code_challenge_method", "S256");
        Ok((pending, url.into()))
    }

    /// Exchanges the provider's `code` for an ID token (with the verifier), checks the
    /// token against `pending`, and maps it to a person. `now` is Unix seconds.
    pub async fn finish(
        &self,
        pending: &Pending,
        redirect_uri: &str,
        code: &str,
        now: i64,
    ) -> Result<OidcPerson, OidcError> {
        let provider = self.provider().await?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("client_id", self.settings.client_id.as_str()),
            ("code_verifier", pending.code_verifier.as_str()),
        ];
        if let Some(secret) = &self.client_secret {
            form.push(("client_secret", secret.as_str()));
        }
        let url = &provider.token_endpoint;
        let response = self
            .http
            .post(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| OidcError::Provider(format!("{url}: {}", e.without_url())))?;
        let status = response.status();
        let body = read_json(response).await.map_err(OidcError::Provider)?;
        if !status.is_success() {
            // The error code only: a provider's description may echo what was sent.
            let code = body
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("unknown");
            return Err(OidcError::Refused(format!("HTTP {status}, {code}")));
        }
        let id_token = body
            .get("id_token")
            .and_then(Value::as_str)
            .ok_or_else(|| OidcError::Provider("the token response has no id_token".into()))?;
        let claims = provider
            .verifier
            .verified_claims(id_token, now)
            .await
            .map_err(|e| match e {
                ExternalError::Keys(keys) => OidcError::Provider(keys),
                other => OidcError::Token(other.to_string()),
            })?;
        self.person(&claims, pending)
    }

    fn person(
        &self,
        claims: &serde_json::Map<String, Value>,
        pending: &Pending,
    ) -> Result<OidcPerson, OidcError> {
        let nonce = claims.get("nonce").and_then(Value::as_str).unwrap_or("");
        if !constant_time_eq(nonce.as_bytes(), pending.nonce.as_bytes()) {
            return Err(OidcError::Token("its nonce is not this sign-in's".into()));
        }
        // OpenID Connect Core 3.1.3.7: with several audiences, `azp` must be this client.
        let audiences = match claims.get("aud") {
            Some(Value::Array(list)) => list.len(),
            _ => 1,
        };
        match claims.get("azp").and_then(Value::as_str) {
            Some(azp) if azp != self.settings.client_id => {
                return Err(OidcError::Token("azp is another client".into()));
            }
            None if audiences > 1 => {
                return Err(OidcError::Token("several audiences and no azp".into()));
            }
            _ => {}
        }
        let username = claims
            .get(&self.settings.username_claim)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|u| !u.is_empty() && u.chars().count() <= MAX_USERNAME_CHARS)
            .ok_or_else(|| {
                OidcError::Token(format!(
                    "the {} claim is missing or not usable",
                    self.settings.username_claim
                ))
            })?
            .to_owned();
        let roles: Vec<&str> = match claims.get(&self.settings.role_claim) {
            Some(Value::String(role)) => vec![role.as_str()],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let role = roles
            .into_iter()
            .find_map(StaffRole::parse)
            .ok_or_else(|| {
                OidcError::Token(format!(
                    "the {} claim names no console role",
                    self.settings.role_claim
                ))
            })?;
        let display_name = claims
            .get(&self.settings.name_claim)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .unwrap_or(&username)
            .to_owned();
        Ok(OidcPerson {
            username,
            display_name,
            role,
        })
    }
}

/// PKCE's S256 challenge of `verifier` (RFC 7636, 4.2).
pub fn code_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Whether two byte strings are equal, in time that depends on their length only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn read_json(response: reqwest::Response) -> Result<Value, String> {
    let body = response
        .bytes()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if body.len() > MAX_RESPONSE_BYTES {
        return Err("the answer is too large".into());
    }
    serde_json::from_slice(&body).map_err(|_| "the answer is not JSON".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_s256_challenge_is_rfc_7636s() {
        // RFC 7636, appendix B.
        assert_eq!(
            code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn equal_means_equal() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
