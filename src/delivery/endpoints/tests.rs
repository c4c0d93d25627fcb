//! Tests of the registry: parsing, located mistakes, sending, reload and the watcher.

use std::path::Path;
use std::sync::Arc;
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
            &format!("{base}auth = {{ type = \"none\" }}\n\n{base}auth = {{ type = \"none\" }}\n"),
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
        .respond_with(ResponseTemplate::new(400).set_body_bytes(vec![b'x'; MAX_RESPONSE_BODY + 10]))
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
    let text = one(
        &format!("{}/fhir", server.uri()),
        "allow_insecure_http = true\n",
    )
    .replace(
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

#[test]
fn credentials_over_plain_http_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let entry = "[[endpoint]]\nods_code = \"A81001\"\nbase_url = \"http://gp.example/fhir\"\nmode = \"rest\"\nauth = { type = \"bearer\", token_env = \"GP_TOKEN\" }\n";
    let error = match registry_with_env(entry, dir.path(), &[("GP_TOKEN", "t0ken")]) {
        Ok(_) => panic!("credentials over http were accepted"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains(":3:"), "{error}");
    assert!(error.contains("allow_insecure_http"), "{error}");
    let allowed = format!("{entry}allow_insecure_http = true\n");
    let registry = registry_with_env(&allowed, dir.path(), &[("GP_TOKEN", "t0ken")])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(registry.len(), 1);
}
