//! How Sprig authenticates to a GP system: nothing, a bearer token from the environment,
//! or OAuth2 client credentials with a signed JWT client assertion (RS512, as NHS API
//! Management uses). A TLS client certificate (the `mtls` type, or `tls` beside another
//! type) is part of the endpoint's HTTP client, not of this module's headers.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::HeaderValue;
use reqwest::{Client, Url};
use serde::{Deserialize, Serialize};

use super::policy::{Verdict, classify_response};
use super::transport::{TransportError, read_response};

/// The `auth` table of a registry entry, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum AuthConfig {
    /// No authentication (a braced variant so that `deny_unknown_fields` refuses stray
    /// keys here too).
    None {},
    /// `Authorization: Bearer` with the token read from an environment variable at load.
    Bearer {
        /// The environment variable holding the token.
        token_env: String,
    },
    /// OAuth2 client credentials with a signed JWT assertion.
    PrivateKeyJwt {
        /// The token endpoint.
        token_url: String,
        /// The client id, the assertion's `iss` and `sub`.
        client_id: String,
        /// PEM file of the RSA private key signing the assertion.
        key_file: PathBuf,
        /// The key's id, the assertion header's `kid`.
        kid: String,
    },
    /// A TLS client certificate and nothing else.
    Mtls {
        /// PEM file of the client certificate (and its chain).
        cert_file: PathBuf,
        /// PEM file of the certificate's private key.
        key_file: PathBuf,
    },
}

/// How long a client assertion is valid: NHS API Management refuses more than 5 minutes.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// A cached access token is dropped this long before it expires, so a request never
/// reaches the receiver with a token that expires on the way.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

/// The `client_assertion_type` of a JWT client assertion (RFC 7523).
const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// OAuth2 client credentials with a signed JWT client assertion (RFC 7523 §2.2), with the
/// access token cached until shortly before it expires. One refresh at a time: callers
/// needing a token while one is being fetched wait for it rather than fetching their own.
pub(crate) struct ClientCredentials {
    token_url: Url,
    client_id: String,
    kid: String,
    key: EncodingKey,
    cached: tokio::sync::Mutex<Option<CachedToken>>,
}

struct CachedToken {
    /// `Bearer <access_token>`, marked sensitive.
    authorization: HeaderValue,
    refresh_after: Instant,
}

impl fmt::Debug for ClientCredentials {
    // By hand: the key and the token stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: String,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    /// Seconds; NHS API Management sends it as a string ("599"), RFC 6749 as a number.
    expires_in: Option<NumberOrString>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    Number(u64),
    String(String),
}

/// An OAuth2 error response (RFC 6749 §5.2).
#[derive(Deserialize)]
struct TokenErrorResponse {
    error: String,
    error_description: Option<String>,
}

impl ClientCredentials {
    /// Checks the key (an RSA private key, PEM) and keeps what the exchange needs.
    pub(crate) fn new(
        token_url: Url,
        client_id: String,
        kid: String,
        key_pem: &[u8],
    ) -> Result<Self, String> {
        let key = EncodingKey::from_rsa_pem(key_pem)
            .map_err(|e| format!("not an RSA private key in PEM: {e}"))?;
        Ok(ClientCredentials {
            token_url,
            client_id,
            kid,
            key,
            cached: tokio::sync::Mutex::new(None),
        })
    }

    /// The `Authorization` header value to send: the cached token, or a new one fetched
    /// with `client`.
    pub(crate) async fn authorization(
        &self,
        client: &Client,
        ods_code: &str,
    ) -> Result<HeaderValue, TransportError> {
        let mut cached = self.cached.lock().await;
        if let Some(token) = cached.as_ref()
            && Instant::now() < token.refresh_after
        {
            return Ok(token.authorization.clone());
        }
        let token = self.fetch(client, ods_code).await?;
        let authorization = token.authorization.clone();
        *cached = Some(token);
        Ok(authorization)
    }

    /// Drops the cached token if it is still `rejected` (the receiver answered 401 to
    /// it); a token another request has already replaced stays.
    pub(crate) async fn reject(&self, rejected: &HeaderValue) {
        let mut cached = self.cached.lock().await;
        if cached
            .as_ref()
            .is_some_and(|token| token.authorization == rejected)
        {
            *cached = None;
        }
    }

    /// A signed client assertion: `iss` = `sub` = client id, `aud` = the token endpoint,
    /// a fresh `jti`, `exp` five minutes ahead, `kid` in the header, RS512.
    fn assertion(&self) -> Result<String, TransportError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let claims = AssertionClaims {
            iss: &self.client_id,
            sub: &self.client_id,
            aud: self.token_url.as_str(),
            jti: uuid::Uuid::new_v4().to_string(),
            exp: (now + ASSERTION_LIFETIME).as_secs(),
        };
        let mut header = Header::new(Algorithm::RS512);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| TransportError::Auth {
            message: format!("cannot sign the client assertion: {e}"),
            transient: false,
        })
    }

    async fn fetch(&self, client: &Client, ods_code: &str) -> Result<CachedToken, TransportError> {
        let assertion = self.assertion()?;
        let form = [
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER_ASSERTION),
            ("client_assertion", assertion.as_str()),
        ];
        let requested_at = Instant::now();
        let response = client
            .post(self.token_url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| {
                let error = TransportError::from_reqwest(e);
                TransportError::Auth {
                    message: format!("token endpoint {}: {error}", self.token_url),
                    transient: error.is_transient(),
                }
            })?;
        // Read as a receiver's answer is: capped, and classified by the same rule.
        let answer = read_response(response)
            .await
            .map_err(|e| TransportError::Auth {
                message: format!("token endpoint {}: reading the answer: {e}", self.token_url),
                transient: e.is_transient(),
            })?;
        let (status, body) = (answer.status, &answer.body);
        let verdict = classify_response(&answer);
        if !matches!(verdict, Verdict::Delivered) {
            let transient = matches!(verdict, Verdict::Transient(_));
            let detail = serde_json::from_slice::<TokenErrorResponse>(body)
                .map(|e| match e.error_description {
                    Some(description) => format!(": {}: {description}", e.error),
                    None => format!(": {}", e.error),
                })
                .unwrap_or_default();
            tracing::warn!(ods_code, token_url = %self.token_url, status, "access token refused");
            return Err(TransportError::Auth {
                message: format!(
                    "token endpoint {} answered HTTP {status}{detail}",
                    self.token_url
                ),
                transient,
            });
        }
        // A 2xx that is not a token is the token endpoint misbehaving, as a 5xx would be.
        let token: TokenResponse =
            serde_json::from_slice(body).map_err(|e| TransportError::Auth {
                message: format!(
                    "token endpoint {} answered HTTP {status} without an access token: {e}",
                    self.token_url
                ),
                transient: true,
            })?;
        let authorization =
            bearer_header(&token.access_token).map_err(|why| TransportError::Auth {
                message: format!(
                    "token endpoint {} gave an access token that cannot be sent: {why}",
                    self.token_url
                ),
                transient: true,
            })?;
        let lifetime = match token.expires_in {
            Some(NumberOrString::Number(seconds)) => Some(seconds),
            Some(NumberOrString::String(text)) => text.trim().parse().ok(),
            None => None,
        }
        // No lifetime given: RFC 6749 leaves it to the server's documentation; a minute
        // keeps a token that never expires from being fetched for every request.
        .map_or(Duration::from_secs(60), Duration::from_secs);
        // Counted from the request, not the answer: the token's clock started then.
        let refresh_after = requested_at + lifetime.saturating_sub(EXPIRY_MARGIN.min(lifetime / 2));
        tracing::info!(ods_code, token_url = %self.token_url, expires_in_secs = lifetime.as_secs(), "access token obtained");
        Ok(CachedToken {
            authorization,
            refresh_after,
        })
    }
}

/// How an endpoint authenticates each request.
#[derive(Debug)]
pub(crate) enum Authenticator {
    /// No `Authorization` header (possibly a TLS client certificate).
    None,
    /// A fixed `Authorization: Bearer` header (marked sensitive).
    Bearer(HeaderValue),
    /// A token from OAuth2 client credentials.
    ClientCredentials(Box<ClientCredentials>),
}

/// `Bearer <token>` as a sensitive header value.
pub(crate) fn bearer_header(token: &str) -> Result<HeaderValue, String> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| "the token holds characters not allowed in an HTTP header".to_string())?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    use reqwest::Method;
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use crate::delivery::endpoints::Endpoint;
    use crate::delivery::endpoints::test_support::{registry, rsa_key, write};
    use crate::delivery::transport::{OutboundRequest, TransportError};

    const CLIENT_ID: &str = "sprig-test-client";

    fn token_url(server: &MockServer) -> String {
        format!("{}/oauth2/token", server.uri())
    }

    fn jwt_endpoint(server: &MockServer) -> (Arc<Endpoint>, tempfile::TempDir) {
        jwt_endpoint_at(&server.uri(), &token_url(server))
    }

    fn jwt_endpoint_at(base: &str, token_url: &str) -> (Arc<Endpoint>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "jwt.pem", &rsa_key().0);
        let text = format!(
            "[[endpoint]]\nods_code = \"A81001\"\nbase_url = \"{base}/fhir\"\nmode = \"rest\"\n\
             auth = {{ type = \"private_key_jwt\", token_url = \"{token_url}\", client_id = \"{CLIENT_ID}\", key_file = \"jwt.pem\", kid = \"test-1\" }}\n\
             allow_insecure_http = true\n",
        );
        let endpoint = registry(&text, dir.path()).get("A81001").expect("endpoint");
        (endpoint, dir)
    }

    fn token(access_token: &str) -> ResponseTemplate {
        // NHS API Management gives expires_in as a string.
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": access_token,
            "expires_in": "599",
            "token_type": "Bearer",
            "issued_at": "1700000000000",
        }))
    }

    fn put_task() -> OutboundRequest {
        OutboundRequest::new(Method::PUT, "Task/abc")
    }

    #[tokio::test]
    async fn the_client_assertion_is_right_and_the_token_is_cached() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/oauth2/token"))
            .and(header("content-type", "application/x-www-form-urlencoded"))
            .respond_with(token("access-1"))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("PUT"))
            .and(path("/fhir/Task/abc"))
            .and(header("authorization", "Bearer access-1"))
            .respond_with(ResponseTemplate::new(200))
            .expect(2)
            .mount(&server)
            .await;
        let (endpoint, _dir) = jwt_endpoint(&server);
        for _ in 0..2 {
            assert_eq!(endpoint.send(put_task()).await.expect("send").status, 200);
        }

        let requests = server.received_requests().await.expect("recorded");
        let token_request = requests
            .iter()
            .find(|r| r.url.path() == "/oauth2/token")
            .expect("token request");
        let form: std::collections::HashMap<String, String> =
            form_urlencoded::parse(&token_request.body)
                .into_owned()
                .collect();
        assert_eq!(form["grant_type"], "client_credentials");
        assert_eq!(
            form["client_assertion_type"],
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        );
        assert_eq!(form.len(), 3, "{form:?}");

        let assertion = &form["client_assertion"];
        let header = jsonwebtoken::decode_header(assertion).expect("JWT header");
        assert_eq!(header.alg, Algorithm::RS512);
        assert_eq!(header.kid.as_deref(), Some("test-1"));
        let key = DecodingKey::from_rsa_pem(rsa_key().1.as_bytes()).expect("public key");
        let mut validation = Validation::new(Algorithm::RS512);
        validation.set_audience(&[token_url(&server)]);
        validation.set_issuer(&[CLIENT_ID]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        let claims = jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &validation)
            .expect("assertion verifies with the public key")
            .claims;
        assert_eq!(claims["sub"], CLIENT_ID);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let exp = claims["exp"].as_u64().expect("exp");
        assert!(
            (now + 290..=now + 300).contains(&exp),
            "exp {exp}, now {now}"
        );
        let jti = claims["jti"].as_str().expect("jti");
        assert!(uuid::Uuid::parse_str(jti).is_ok(), "{jti}");
    }

    #[tokio::test]
    async fn concurrent_sends_share_one_token_request() {
        let server = MockServer::start().await;
        Mock::given(path("/oauth2/token"))
            .respond_with(token("access-1").set_delay(Duration::from_millis(200)))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path("/fhir/Task/abc"))
            .respond_with(ResponseTemplate::new(200))
            .expect(5)
            .mount(&server)
            .await;
        let (endpoint, _dir) = jwt_endpoint(&server);
        let sends = (0..5).map(|_| endpoint.send(put_task()));
        for result in futures::future::join_all(sends).await {
            assert_eq!(result.expect("send").status, 200);
        }
    }

    #[tokio::test]
    async fn a_401_from_the_receiver_refreshes_the_token_and_retries_once() {
        let server = MockServer::start().await;
        Mock::given(path("/oauth2/token"))
            .respond_with(token("revoked"))
            .up_to_n_times(1)
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path("/oauth2/token"))
            .respond_with(token("fresh"))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path("/fhir/Task/abc"))
            .and(header("authorization", "Bearer revoked"))
            .respond_with(ResponseTemplate::new(401))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path("/fhir/Task/abc"))
            .and(header("authorization", "Bearer fresh"))
            .respond_with(ResponseTemplate::new(200))
            .expect(2)
            .mount(&server)
            .await;
        let (endpoint, _dir) = jwt_endpoint(&server);
        assert_eq!(endpoint.send(put_task()).await.expect("send").status, 200);
        // The fresh token is kept.
        assert_eq!(endpoint.send(put_task()).await.expect("send").status, 200);
    }

    #[tokio::test]
    async fn a_receiver_refusing_every_token_gets_one_retry_then_its_401() {
        let server = MockServer::start().await;
        Mock::given(path("/oauth2/token"))
            .respond_with(token("refused"))
            .expect(2)
            .mount(&server)
            .await;
        Mock::given(path("/fhir/Task/abc"))
            .respond_with(ResponseTemplate::new(401))
            .expect(2)
            .mount(&server)
            .await;
        let (endpoint, _dir) = jwt_endpoint(&server);
        assert_eq!(endpoint.send(put_task()).await.expect("send").status, 401);
    }

    #[tokio::test]
    async fn a_token_endpoint_4xx_is_permanent() {
        let server = MockServer::start().await;
        Mock::given(path("/oauth2/token"))
            .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({
                "error": "invalid_request",
                "error_description": "Invalid 'kid' header in client_assertion JWT - no matching public key",
            })))
            .mount(&server)
            .await;
        Mock::given(path("/fhir/Task/abc"))
            .respond_with(ResponseTemplate::new(200))
            .expect(0)
            .mount(&server)
            .await;
        let (endpoint, _dir) = jwt_endpoint(&server);
        let error = endpoint.send(put_task()).await.expect_err("refused");
        assert!(matches!(error, TransportError::Auth { .. }), "{error:?}");
        assert!(!error.is_transient());
        let shown = error.to_string();
        assert!(shown.contains("invalid_request"), "{shown}");
        assert!(shown.contains("no matching public key"), "{shown}");
    }

    #[tokio::test]
    async fn a_token_endpoint_5xx_or_absence_is_transient() {
        let server = MockServer::start().await;
        Mock::given(path("/oauth2/token"))
            .respond_with(ResponseTemplate::new(503))
            .mount(&server)
            .await;
        let (endpoint, _dir) = jwt_endpoint(&server);
        let error = endpoint.send(put_task()).await.expect_err("unavailable");
        assert!(matches!(error, TransportError::Auth { .. }), "{error:?}");
        assert!(error.is_transient());

        // Not by dropping the mock server: wiremock pools its servers, so another test
        // would answer. A port just released is closed.
        let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        let (endpoint, _dir) = jwt_endpoint_at(
            &server.uri(),
            &format!("http://127.0.0.1:{closed_port}/oauth2/token"),
        );
        let error = endpoint.send(put_task()).await.expect_err("unreachable");
        assert!(matches!(error, TransportError::Auth { .. }), "{error:?}");
        assert!(error.is_transient(), "{error}");
    }
}
