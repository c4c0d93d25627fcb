//! The HTTP side of delivery: one `reqwest` client per endpoint with its TLS settings,
//! the request Sprig sends and the response it keeps, `Retry-After`, and which failures
//! are worth retrying.

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, Method, Url};

/// The most of a receiver's response body kept; the rest is dropped unread. An
/// OperationOutcome explaining a refusal is far smaller, and a misbehaving receiver must
/// not make Sprig buffer an unbounded answer.
pub const MAX_RESPONSE_BODY: usize = 1024 * 1024;

/// The `User-Agent` of every outbound request.
pub const USER_AGENT: &str = concat!("sprig/", env!("CARGO_PKG_VERSION"));

/// Installs the aws-lc rustls crypto provider as the process default, once. reqwest would
/// pick aws-lc itself, but tests' TLS servers and anything else using rustls need the
/// process default to be set, and two providers compiled in would make rustls refuse to
/// choose. Installing again is harmless (the error says one is already installed).
pub fn install_crypto_provider() {
    let _already_installed = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// One request to a receiver.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    /// HTTP method.
    pub method: Method,
    /// Path relative to the endpoint's base URL, like `Task/abc`, `Observation` or
    /// `$process-message`; it may carry a query. It must stay under the base URL.
    pub path: String,
    /// Extra headers (`Content-Type`, `If-None-Exist`, `If-Match`…). An `Authorization`
    /// header here is replaced by the endpoint's own.
    pub headers: Vec<(String, String)>,
    /// The body, possibly empty.
    pub body: Bytes,
}

impl OutboundRequest {
    /// A request with no headers and an empty body.
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        OutboundRequest {
            method,
            path: path.into(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }
}

/// What a receiver answered, whatever the status: deciding what a status means (success,
/// retry, dead letter) is the caller's business.
#[derive(Debug, Clone)]
pub struct ReceiverResponse {
    /// HTTP status code.
    pub status: u16,
    /// The `Retry-After` header as a delay from now (an HTTP-date in the past is zero);
    /// `None` when absent or unreadable.
    pub retry_after: Option<Duration>,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The body, at most [`MAX_RESPONSE_BODY`] bytes of it.
    pub body: Bytes,
    /// Whether the body was longer than [`MAX_RESPONSE_BODY`] and was cut.
    pub body_truncated: bool,
}

/// Why a request got no HTTP response (an HTTP error status is a response, not an error).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The connection could not be made (refused, unreachable, DNS).
    #[error("cannot connect: {0}")]
    Connect(#[source] reqwest::Error),
    /// No complete answer within the endpoint's timeout.
    #[error("timed out: {0}")]
    Timeout(#[source] reqwest::Error),
    /// The TLS handshake failed: the server's certificate is not trusted, or the server
    /// refused Sprig's client certificate (or its absence).
    #[error("TLS failure: {0}")]
    Tls(#[source] reqwest::Error),
    /// The connection broke while sending or receiving.
    #[error("connection failure: {0}")]
    Connection(#[source] reqwest::Error),
    /// Getting an access token failed. `transient` when the token endpoint was unreachable,
    /// timed out or answered 408, 429 or 5xx; a 4xx (bad credentials, unknown client) is
    /// permanent until someone fixes the configuration.
    #[error("access token request failed: {message}")]
    Auth {
        /// What went wrong, with the token endpoint's OAuth2 `error` and
        /// `error_description` when it gave them (never the assertion or a token).
        message: String,
        /// Whether retrying later may succeed.
        transient: bool,
    },
    /// The request cannot be built (bad header, a path leaving the base URL): sending it
    /// again will not help.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl TransportError {
    /// Whether the same request may succeed later: every network failure is transient;
    /// an unbuildable request and a token endpoint's 4xx are permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            TransportError::Connect(_)
            | TransportError::Timeout(_)
            | TransportError::Tls(_)
            | TransportError::Connection(_) => true,
            TransportError::Auth { transient, .. } => *transient,
            TransportError::InvalidRequest(_) => false,
        }
    }

    /// A reqwest failure sorted by cause.
    pub(crate) fn from_reqwest(error: reqwest::Error) -> Self {
        if error.is_builder() {
            TransportError::InvalidRequest(error.to_string())
        } else if error.is_timeout() {
            TransportError::Timeout(error)
        } else if error.url().is_some_and(|url| url.scheme() == "https") && caused_by_tls(&error) {
            TransportError::Tls(error)
        } else if error.is_connect() {
            TransportError::Connect(error)
        } else {
            TransportError::Connection(error)
        }
    }
}

/// Whether TLS failed somewhere in `error`'s cause chain: a rustls error, or an
/// `InvalidData` I/O error, which is how the TLS stream reports an alert from the peer
/// (rustls's error reduced to its message, as when a server refuses the client's
/// certificate after a TLS 1.3 handshake); only asked of https requests, whose bytes
/// all pass through rustls. `io::Error::source` skips the error it wraps, so that is
/// looked at too.
fn caused_by_tls(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = current {
        if cause.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::InvalidData {
                return true;
            }
            if let Some(inner) = io.get_ref()
                && caused_by_tls(inner)
            {
                return true;
            }
        }
        current = cause.source();
    }
    false
}

/// The TLS settings of one endpoint, as PEM read from the files the registry names.
#[derive(Clone, PartialEq, Eq, Default)]
pub(crate) struct TlsSettings {
    /// Trust only these CA certificates (PEM bundle) instead of the platform's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// The client certificate chain and its private key, PEM, concatenated.
    pub identity_pem: Option<Vec<u8>>,
}

/// A client for one endpoint: redirects never followed (a redirected PUT could land an
/// update somewhere the registry does not name), the endpoint's timeout on each whole
/// request, Sprig's user agent, and the endpoint's TLS trust and client certificate.
pub(crate) fn build_client(timeout: Duration, tls: &TlsSettings) -> Result<Client, String> {
    install_crypto_provider();
    let mut builder = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(USER_AGENT);
    if let Some(ca_pem) = &tls.ca_pem {
        let roots = reqwest::Certificate::from_pem_bundle(ca_pem)
            .map_err(|e| format!("the CA certificates cannot be used: {e}"))?;
        builder = builder.tls_certs_only(roots);
    }
    if let Some(identity_pem) = &tls.identity_pem {
        let identity = reqwest::Identity::from_pem(identity_pem)
            .map_err(|e| format!("the client certificate cannot be used: {e}"))?;
        builder = builder.identity(identity);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Sends `request` to `url` with `authorization` (when given) replacing any
/// `Authorization` header of the request, and reads the response.
pub(crate) async fn execute(
    client: &Client,
    url: Url,
    request: &OutboundRequest,
    authorization: Option<&HeaderValue>,
) -> Result<ReceiverResponse, TransportError> {
    let mut headers = HeaderMap::with_capacity(request.headers.len() + 1);
    for (name, value) in &request.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| TransportError::InvalidRequest(format!("bad header name {name:?}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| TransportError::InvalidRequest(format!("bad value for header {name}")))?;
        headers.append(name, value);
    }
    if let Some(authorization) = authorization {
        headers.insert(reqwest::header::AUTHORIZATION, authorization.clone());
    }
    let response = client
        .request(request.method.clone(), url)
        .headers(headers)
        .body(request.body.clone())
        .send()
        .await
        .map_err(TransportError::from_reqwest)?;
    read_response(response).await
}

/// The status, `Retry-After`, `Content-Type` and at most [`MAX_RESPONSE_BODY`] bytes of
/// the body.
pub(crate) async fn read_response(
    mut response: reqwest::Response,
) -> Result<ReceiverResponse, TransportError> {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = BytesMut::new();
    let mut body_truncated = false;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(TransportError::from_reqwest)?
    {
        let room = MAX_RESPONSE_BODY - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            body_truncated = true;
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(ReceiverResponse {
        status,
        retry_after,
        content_type,
        body: body.freeze(),
        body_truncated,
    })
}

/// A `Retry-After` value (RFC 9110 §10.2.3) as a delay from `now`: delta-seconds, or an
/// HTTP-date (a date already past is a zero delay). `None` when it is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long digit strings saturate rather than being ignored.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::Arc;

    use rustls::RootCertStore;
    use rustls::server::WebPkiClientVerifier;

    use super::*;
    use crate::delivery::endpoints::Endpoint;
    use crate::delivery::endpoints::test_support::{
        Issued, TestCa, registry, registry_with_env, write,
    };

    /// An HTTPS server presenting `server` and requiring a client certificate issued by
    /// `client_ca`; it answers 200 "ok" to everything.
    async fn mtls_server(server: &Issued, client_ca: &TestCa) -> SocketAddr {
        install_crypto_provider();
        let mut roots = RootCertStore::empty();
        roots
            .add(client_ca.cert.cert_der.clone())
            .expect("client CA");
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .expect("client verifier");
        let mut config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![server.cert_der.clone()], server.key_der.clone_key())
            .expect("server config");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        // axum-server takes a std listener into tokio, which needs it non-blocking.
        listener.set_nonblocking(true).expect("non-blocking");
        let address = listener.local_addr().expect("address");
        let tls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config));
        let app = axum::Router::new().fallback(|| async { "ok" });
        let server = axum_server::from_tcp_rustls(listener, tls).expect("server");
        tokio::spawn(async move {
            let _ = server.serve(app.into_make_service()).await;
        });
        address
    }

    /// Test PKI files in `dir`: the server's CA, another CA, a client certificate.
    struct Pki {
        ca: TestCa,
        server: Issued,
    }

    fn pki(dir: &Path) -> Pki {
        let ca = TestCa::new("Sprig test CA");
        let other = TestCa::new("Some other CA");
        let server = ca.server_certificate();
        let client = ca.client_certificate();
        write(dir, "ca.pem", &ca.cert.cert_pem);
        write(dir, "other-ca.pem", &other.cert.cert_pem);
        write(dir, "client.pem", &client.cert_pem);
        write(dir, "client.key", &client.key_pem);
        Pki { ca, server }
    }

    fn endpoint(dir: &Path, address: SocketAddr, auth: &str, extra: &str) -> Arc<Endpoint> {
        let text = format!(
            "[[endpoint]]\nods_code = \"A81001\"\nbase_url = \"https://{address}/fhir\"\nmode = \"rest\"\nauth = {auth}\n{extra}\n"
        );
        registry_with_env(&text, dir, &[("GP_TOKEN", "t")])
            .unwrap_or_else(|e| panic!("{e}"))
            .get("A81001")
            .expect("endpoint")
    }

    const MTLS: &str = r#"{ type = "mtls", cert_file = "client.pem", key_file = "client.key" }"#;

    fn put() -> OutboundRequest {
        OutboundRequest::new(Method::PUT, "Task/abc")
    }

    #[tokio::test]
    async fn mtls_with_the_private_ca_succeeds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = pki(dir.path());
        let address = mtls_server(&pki.server, &pki.ca).await;
        let mtls = endpoint(dir.path(), address, MTLS, "ca_file = \"ca.pem\"");
        assert_eq!(mtls.auth_kind(), "mtls");
        let response = mtls.send(put()).await.expect("mTLS request");
        assert_eq!(response.status, 200);
        assert_eq!(&response.body[..], b"ok");

        // A client certificate beside a bearer token.
        let bearer = endpoint(
            dir.path(),
            address,
            r#"{ type = "bearer", token_env = "GP_TOKEN" }"#,
            "ca_file = \"ca.pem\"\ntls = { cert_file = \"client.pem\", key_file = \"client.key\" }",
        );
        assert_eq!(bearer.auth_kind(), "bearer+mtls");
        assert_eq!(bearer.send(put()).await.expect("request").status, 200);
    }

    #[tokio::test]
    async fn the_server_refuses_a_client_without_a_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = pki(dir.path());
        let address = mtls_server(&pki.server, &pki.ca).await;
        let anonymous = endpoint(
            dir.path(),
            address,
            r#"{ type = "none" }"#,
            "ca_file = \"ca.pem\"",
        );
        let error = anonymous.send(put()).await.expect_err("refused");
        assert!(error.is_transient(), "{error:?}");
        assert!(matches!(error, TransportError::Tls(_)), "{error:?}");
    }

    #[tokio::test]
    async fn a_server_certificate_from_another_ca_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = pki(dir.path());
        let address = mtls_server(&pki.server, &pki.ca).await;
        let wrong_ca = endpoint(dir.path(), address, MTLS, "ca_file = \"other-ca.pem\"");
        let error = wrong_ca.send(put()).await.expect_err("untrusted server");
        assert!(matches!(error, TransportError::Tls(_)), "{error:?}");
        assert!(error.is_transient());

        // Without ca_file the platform roots are used, and they do not know the test CA.
        let platform = registry(
            &format!(
                "[[endpoint]]\nods_code = \"A81001\"\nbase_url = \"https://{address}/fhir\"\nmode = \"rest\"\nauth = {MTLS}\n"
            ),
            dir.path(),
        )
        .get("A81001")
        .expect("endpoint");
        let error = platform.send(put()).await.expect_err("untrusted server");
        assert!(matches!(error, TransportError::Tls(_)), "{error:?}");
    }

    #[test]
    fn retry_after_delta_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn retry_after_http_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").expect("date");
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        // A date in the past means "now".
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_nonsense_is_ignored() {
        let now = SystemTime::now();
        for bad in ["", "-5", "1.5", "soon", "Sun, 06 Nov 1994"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }
}
