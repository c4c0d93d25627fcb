//! Access tokens from an external identity provider (`[auth.external]`: NHS API
//! Management, Keycloak, Entra ID…): the provider's JWK Set from a file or a URL (fetched
//! at start-up, again every `jwks_refresh_secs`, and when a token names a key not held),
//! and the mapping from the token's claims to a client or a person.
//!
//! Invariants:
//! - the algorithms come from the settings (asymmetric only, checked by `config`), never
//!   from the token; `iss` and `aud` must be the configured ones, `exp` present and not
//!   past (with [`CLOCK_SKEW_SECS`]);
//! - an unknown `kid` triggers at most one fetch per [`MIN_REFETCH_INTERVAL`], so tokens
//!   with made-up kids cannot make Sprig hammer the provider; a failed fetch keeps the
//!   keys held;
//! - a token with the role claim is a person's, otherwise a client's; a claim of the wrong
//!   shape refuses the token rather than being guessed at;
//! - tokens and claim values other than ids are never logged.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;
use tokio::sync::RwLock;

use super::assertion::CLOCK_SKEW_SECS;
use super::keys::{KeyChoiceError, KeySet};
use super::scopes::Scopes;
use super::staff::StaffRole;
use crate::config::ExternalAuthSettings;
use crate::fhir::identifiers::OdsCode;

/// The shortest time between two fetches of the JWK Set on unknown kids.
pub const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// How long a JWK Set fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest JWK Set read.
const MAX_JWKS_BYTES: usize = 512 * 1024;

/// Who an external token says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExternalIdentity {
    /// A machine client.
    Client {
        /// Its id.
        client_id: String,
        /// The organisations it acts for.
        ods_codes: Vec<OdsCode>,
        /// Its SMART `system/` scopes (others in the token are ignored).
        scopes: Scopes,
    },
    /// A person of the service.
    Staff {
        /// Their stable id.
        username: String,
        /// Their role.
        role: StaffRole,
    },
}

/// Why an external token was refused, or the provider's keys cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum ExternalError {
    /// Not a readable JWT.
    #[error("the token is not a readable JWT")]
    Malformed,
    /// Its algorithm is not one configured.
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    /// No held key verifies it.
    #[error("no key of the identity provider verifies the token: {0}")]
    Key(KeyChoiceError),
    /// Bad signature, wrong issuer or audience, expired.
    #[error("the token is not valid: {0}")]
    Invalid(&'static str),
    /// A claim the mapping needs is missing or has the wrong shape.
    #[error("the token's {0} claim is missing or not usable")]
    Claim(String),
    /// The JWK Set cannot be read or fetched.
    #[error("the identity provider's keys: {0}")]
    Keys(String),
}

enum JwksSource {
    File(PathBuf),
    Url(reqwest::Url, reqwest::Client),
}

struct HeldKeys {
    keys: Arc<KeySet>,
    fetched: Instant,
}

/// Verifies the tokens of one external identity provider.
pub struct ExternalVerifier {
    issuer: String,
    audience: String,
    algorithms: Vec<Algorithm>,
    refresh: Duration,
    client_id_claim: String,
    username_claim: String,
    ods_claim: String,
    scope_claim: String,
    role_claim: String,
    source: JwksSource,
    held: RwLock<HeldKeys>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ExternalVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

impl ExternalVerifier {
    /// Reads the settings and the provider's keys (a failure stops start-up: a
    /// configured provider that cannot be used is a configuration error).
    pub async fn new(settings: &ExternalAuthSettings) -> Result<Self, ExternalError> {
        let algorithms = settings
            .algorithms
            .iter()
            .map(|name| {
                name.parse::<Algorithm>()
                    .ok()
                    .filter(|alg| super::assertion::ASSERTION_ALGORITHMS.contains(alg))
                    .ok_or_else(|| ExternalError::Keys(format!("algorithm {name:?} not accepted")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let source = match (&settings.jwks_file, &settings.jwks_url) {
            (Some(file), None) => JwksSource::File(file.clone()),
            (None, Some(url)) => {
                let url = reqwest::Url::parse(url)
                    .map_err(|e| ExternalError::Keys(format!("jwks_url: {e}")))?;
                let _already_installed =
                    rustls::crypto::aws_lc_rs::default_provider().install_default();
                let client = reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .timeout(FETCH_TIMEOUT)
                    .connect_timeout(FETCH_TIMEOUT)
                    .build()
                    .map_err(|e| ExternalError::Keys(format!("HTTP client: {e}")))?;
                JwksSource::Url(url, client)
            }
            _ => {
                return Err(ExternalError::Keys(
                    "give exactly one of jwks_file and jwks_url".into(),
                ));
            }
        };
        let verifier = ExternalVerifier {
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            algorithms,
            refresh: Duration::from_secs(settings.jwks_refresh_secs),
            client_id_claim: settings.client_id_claim.clone(),
            username_claim: settings.username_claim.clone(),
            ods_claim: settings.ods_claim.clone(),
            scope_claim: settings.scope_claim.clone(),
            role_claim: settings.role_claim.clone(),
            source,
            held: RwLock::new(HeldKeys {
                keys: Arc::new(KeySet::default()),
                fetched: Instant::now(),
            }),
            fetching: tokio::sync::Mutex::new(()),
        };
        let keys = verifier.read_keys().await?;
        *verifier.held.write().await = HeldKeys {
            keys: Arc::new(keys),
            fetched: Instant::now(),
        };
        Ok(verifier)
    }

    async fn read_keys(&self) -> Result<KeySet, ExternalError> {
        let value: Value = match &self.source {
            JwksSource::File(path) => {
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| ExternalError::Keys(format!("{}: {e}", path.display())))?;
                serde_json::from_str(&text).map_err(|e| {
                    ExternalError::Keys(format!("{}: not JSON: {e}", path.display()))
                })?
            }
            JwksSource::Url(url, client) => {
                let response = client
                    .get(url.clone())
                    .header(reqwest::header::ACCEPT, "application/json")
                    .send()
                    .await
                    .map_err(|e| ExternalError::Keys(format!("{url}: {}", e.without_url())))?;
                let status = response.status();
                if !status.is_success() {
                    return Err(ExternalError::Keys(format!("{url}: HTTP {status}")));
                }
                let body = response
                    .bytes()
                    .await
                    .map_err(|e| ExternalError::Keys(format!("{url}: {}", e.without_url())))?;
                if body.len() > MAX_JWKS_BYTES {
                    return Err(ExternalError::Keys(format!(
                        "{url}: the JWK Set is too large"
                    )));
                }
                serde_json::from_slice(&body)
                    .map_err(|e| ExternalError::Keys(format!("{url}: not JSON: {e}")))?
            }
        };
        KeySet::from_jwks(&value, false).map_err(ExternalError::Keys)
    }

    /// Fetches the keys again if the last fetch is older than `min_age`; keeps the held
    /// keys when the fetch fails.
    async fn refresh_if_older(&self, min_age: Duration) {
        let _one_at_a_time = self.fetching.lock().await;
        if self.held.read().await.fetched.elapsed() < min_age {
            return;
        }
        match self.read_keys().await {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "identity provider keys refreshed");
                *self.held.write().await = HeldKeys {
                    keys: Arc::new(keys),
                    fetched: Instant::now(),
                };
            }
            Err(error) => {
                tracing::warn!(%error, "identity provider keys not refreshed; the held ones stay");
                // Wait a whole interval before trying again.
                self.held.write().await.fetched = Instant::now();
            }
        }
    }

    async fn keys(&self) -> Arc<KeySet> {
        if self.held.read().await.fetched.elapsed() >= self.refresh {
            self.refresh_if_older(self.refresh).await;
        }
        Arc::clone(&self.held.read().await.keys)
    }

    /// Checks `token` and maps its claims. `now` is Unix seconds.
    pub async fn verify(&self, token: &str, now: i64) -> Result<ExternalIdentity, ExternalError> {
        let claims = self.verified_claims(token, now).await?;
        self.map_claims(&claims)
    }

    /// Checks `token` (algorithm, signature, issuer, audience, expiry) and returns its
    /// claims unmapped: the console's ID tokens (`oidc`) are mapped their own way.
    pub(crate) async fn verified_claims(
        &self,
        token: &str,
        now: i64,
    ) -> Result<serde_json::Map<String, Value>, ExternalError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| ExternalError::Malformed)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(ExternalError::Algorithm);
        }
        let mut keys = self.keys().await;
        let unknown = matches!(
            keys.select(header.kid.as_deref(), header.alg),
            Err(KeyChoiceError::UnknownKid)
        );
        if unknown {
            // The provider may have rotated its keys.
            self.refresh_if_older(MIN_REFETCH_INTERVAL).await;
            keys = Arc::clone(&self.held.read().await.keys);
        }
        let key = keys
            .select(header.kid.as_deref(), header.alg)
            .map_err(ExternalError::Key)?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = u64::try_from(CLOCK_SKEW_SECS).unwrap_or(60);
        let claims = jsonwebtoken::decode::<serde_json::Map<String, Value>>(
            token,
            &key.decoding,
            &validation,
        )
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            ExternalError::Invalid(match e.kind() {
                ErrorKind::ExpiredSignature => "expired",
                ErrorKind::InvalidIssuer => "wrong issuer",
                ErrorKind::InvalidAudience => "wrong audience",
                ErrorKind::ImmatureSignature => "not valid yet",
                ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
                _ => "bad signature or format",
            })
        })?
        .claims;
        match claims.get("exp").and_then(Value::as_i64) {
            Some(exp) if exp.saturating_add(CLOCK_SKEW_SECS) >= now => {}
            _ => return Err(ExternalError::Invalid("expired")),
        }
        Ok(claims)
    }

    fn map_claims(
        &self,
        claims: &serde_json::Map<String, Value>,
    ) -> Result<ExternalIdentity, ExternalError> {
        let claim_error = |name: &str| ExternalError::Claim(name.to_owned());
        let text = |name: &str| -> Result<String, ExternalError> {
            match claims.get(name) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                _ => Err(claim_error(name)),
            }
        };
        // A string, or a list of strings; absent is empty.
        let strings = |name: &str, split: bool| -> Result<Vec<String>, ExternalError> {
            match claims.get(name) {
                None => Ok(Vec::new()),
                Some(Value::String(s)) if split => {
                    Ok(s.split_whitespace().map(str::to_owned).collect())
                }
                Some(Value::String(s)) => Ok(vec![s.clone()]),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|i| {
                        i.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| claim_error(name))
                    })
                    .collect(),
                Some(_) => Err(claim_error(name)),
            }
        };
        if claims.contains_key(&self.role_claim) {
            let roles = strings(&self.role_claim, false)?;
            let role = roles
                .iter()
                .find_map(|r| StaffRole::parse(r))
                .ok_or_else(|| claim_error(&self.role_claim))?;
            let username = text(&self.username_claim)?;
            return Ok(ExternalIdentity::Staff { username, role });
        }
        let client_id = text(&self.client_id_claim)?;
        let ods_codes = strings(&self.ods_claim, false)?
            .iter()
            .map(|code| OdsCode::parse(code).map_err(|_| claim_error(&self.ods_claim)))
            .collect::<Result<Vec<_>, _>>()?;
        let scopes = Scopes::parse_requested(&strings(&self.scope_claim, true)?.join(" "));
        Ok(ExternalIdentity::Client {
            client_id,
            ods_codes,
            scopes,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::identity::keys::test_keys::{TestKey, ec384, rsa};

    const ISSUER: &str = "https://idp.example.org/realms/sprig";

    fn settings(jwks_url: Option<String>, jwks_file: Option<PathBuf>) -> ExternalAuthSettings {
        ExternalAuthSettings {
            issuer: ISSUER.into(),
            audience: "sprig".into(),
            jwks_file,
            jwks_url,
            jwks_refresh_secs: 3600,
            algorithms: vec!["RS256".into(), "ES384".into()],
            client_id_claim: "azp".into(),
            username_claim: "sub".into(),
            ods_claim: "ods".into(),
            scope_claim: "scope".into(),
            role_claim: "sprig_role".into(),
        }
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64
    }

    fn client_claims() -> Value {
        json!({
            "iss": ISSUER,
            "aud": ["sprig", "account"],
            "exp": now() + 300,
            "azp": "gp-system",
            "ods": ["A81001"],
            "scope": "openid system/Task.rs system/ServiceRequest.cr",
        })
    }

    async fn jwks_server(key: &TestKey) -> MockServer {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/certs"))
            .respond_with(ResponseTemplate::new(200).set_body_json(key.jwks()))
            .mount(&server)
            .await;
        server
    }

    #[tokio::test]
    async fn tokens_map_to_clients_and_staff() {
        let key = rsa("idp-1", Algorithm::RS256);
        let server = jwks_server(&key).await;
        let verifier =
            ExternalVerifier::new(&settings(Some(format!("{}/certs", server.uri())), None))
                .await
                .expect("keys fetched");
        let identity = verifier
            .verify(&key.sign(Some("idp-1"), &client_claims()), now())
            .await
            .expect("valid");
        let ExternalIdentity::Client {
            client_id,
            ods_codes,
            scopes,
        } = identity
        else {
            panic!("a client");
        };
        assert_eq!(client_id, "gp-system");
        assert_eq!(ods_codes, [OdsCode::parse("A81001").expect("ods")]);
        assert_eq!(
            scopes.to_string(),
            "system/ServiceRequest.cr system/Task.rs"
        );

        let mut person = client_claims();
        person["sub"] = json!("f3a9-amara");
        person["sprig_role"] = json!(["offline_access", "service_manager"]);
        assert_eq!(
            verifier
                .verify(&key.sign(Some("idp-1"), &person), now())
                .await
                .expect("valid"),
            ExternalIdentity::Staff {
                username: "f3a9-amara".into(),
                role: StaffRole::ServiceManager
            }
        );
    }

    #[tokio::test]
    async fn wrong_tokens_are_refused() {
        let key = rsa("idp-1", Algorithm::RS256);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("jwks.json");
        std::fs::write(&file, key.jwks().to_string()).expect("write");
        let verifier = ExternalVerifier::new(&settings(None, Some(file)))
            .await
            .expect("keys read");
        let sign = |change: &dyn Fn(&mut Value)| {
            let mut claims = client_claims();
            change(&mut claims);
            key.sign(Some("idp-1"), &claims)
        };
        let cases: Vec<(&str, String)> = vec![
            ("wrong issuer", sign(&|c| c["iss"] = json!("https://evil"))),
            ("wrong audience", sign(&|c| c["aud"] = json!("other"))),
            ("expired", sign(&|c| c["exp"] = json!(now() - 3600))),
            (
                "no exp",
                sign(&|c| {
                    c.as_object_mut().expect("object").remove("exp");
                }),
            ),
            ("bad ods", sign(&|c| c["ods"] = json!(["lowercase"]))),
            (
                "no client id",
                sign(&|c| {
                    c.as_object_mut().expect("object").remove("azp");
                }),
            ),
            (
                "unknown role",
                sign(&|c| c["sprig_role"] = json!("superuser")),
            ),
            // Allowed algorithm, key not the provider's.
            (
                "another key",
                ec384("idp-1").sign(Some("idp-1"), &client_claims()),
            ),
            // RS384 is not among the configured algorithms.
            (
                "algorithm not configured",
                rsa("idp-1", Algorithm::RS384).sign(Some("idp-1"), &client_claims()),
            ),
            ("garbage", "a.b.c".into()),
        ];
        for (name, token) in cases {
            assert!(verifier.verify(&token, now()).await.is_err(), "{name}");
        }
    }

    #[tokio::test]
    async fn an_unknown_kid_fetches_the_keys_again_once() {
        let old = ec384("old");
        let new = ec384("new");
        let server = MockServer::start().await;
        Mock::given(path("/certs"))
            .respond_with(ResponseTemplate::new(200).set_body_json(old.jwks()))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(path("/certs"))
            .respond_with(ResponseTemplate::new(200).set_body_json(new.jwks()))
            .mount(&server)
            .await;
        let verifier =
            ExternalVerifier::new(&settings(Some(format!("{}/certs", server.uri())), None))
                .await
                .expect("keys fetched");
        // Made to look old enough for a refetch.
        verifier.held.write().await.fetched = Instant::now() - MIN_REFETCH_INTERVAL;
        verifier
            .verify(&new.sign(Some("new"), &client_claims()), now())
            .await
            .expect("the rotated key was fetched");
        // A made-up kid right after does not fetch again.
        let before = server.received_requests().await.expect("recorded").len();
        assert!(
            verifier
                .verify(&new.sign(Some("made-up"), &client_claims()), now())
                .await
                .is_err()
        );
        let after = server.received_requests().await.expect("recorded").len();
        assert_eq!(before, after, "no second fetch within the interval");
    }

    #[tokio::test]
    async fn an_unreachable_provider_stops_start_up() {
        let server = MockServer::start().await;
        Mock::given(path("/certs"))
            .respond_with(ResponseTemplate::new(500))
            .mount(&server)
            .await;
        let error = ExternalVerifier::new(&settings(Some(format!("{}/certs", server.uri())), None))
            .await
            .expect_err("no keys");
        assert!(error.to_string().contains("HTTP 500"), "{error}");
    }
}
