//! HTTPS served by Sprig, and mutual TLS, with certificates from test CAs
//! made here (rcgen): trusted by reqwest, reloaded when the files change,
//! client certificates from another CA refused during the handshake.

use std::path::Path;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use sprig::config::{ClientAuth, Settings};

use crate::helpers::{TestApp, spawn_app_with};

/// A certificate and its key, PEM.
struct Issued {
    cert_pem: String,
    key_pem: String,
}

struct TestCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> Self {
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
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn issue(&self, common_name: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Issued {
        let key = KeyPair::generate().expect("key");
        let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let mut params = CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn server(&self) -> Issued {
        self.issue(
            "sprig",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client(&self, common_name: &str) -> Issued {
        self.issue(
            common_name,
            &["gp-system.example"],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

fn write(dir: &Path, name: &str, content: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("written");
    path
}

/// A client trusting only `ca`, presenting `identity` when given.
fn client(ca: &TestCa, identity: Option<&Issued>) -> reqwest::Client {
    sprig::delivery::transport::install_crypto_provider();
    let roots = reqwest::Certificate::from_pem_bundle(ca.cert_pem.as_bytes()).expect("CA");
    let mut builder = reqwest::Client::builder()
        .tls_certs_only(roots)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5));
    if let Some(identity) = identity {
        let pem = format!("{}{}", identity.cert_pem, identity.key_pem);
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
    }
    builder.build().expect("client")
}

fn https(app: &TestApp, path: &str) -> String {
    format!("{}{path}", app.address.replacen("http://", "https://", 1))
}

/// TLS settings with the server certificate of `ca` written into `dir`.
fn with_tls(settings: &mut Settings, dir: &Path, ca: &TestCa) {
    let server = ca.server();
    settings.tls.cert_file = Some(write(dir, "server.crt", &server.cert_pem));
    settings.tls.key_file = Some(write(dir, "server.key", &server.key_pem));
    settings.tls.reload_poll_secs = 1;
}

#[tokio::test]
async fn sprig_serves_https_with_hsts_and_picks_up_a_new_certificate() {
    let dir = tempfile::TempDir::new().expect("dir");
    let ca = TestCa::new("Sprig test CA");
    let app = spawn_app_with(|s| with_tls(s, dir.path(), &ca)).await;

    let response = client(&ca, None)
        .get(https(&app, "/healthz"))
        .send()
        .await
        .expect("HTTPS answered");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    // ALPN chose HTTP/2.
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    // Errors over HTTPS carry it too.
    let missing = client(&ca, None)
        .get(https(&app, "/fhir/Nothing/here"))
        .send()
        .await
        .expect("answered");
    assert!(missing.status().is_client_error());
    assert!(missing.headers().contains_key("strict-transport-security"));
    // Plain HTTP is not served.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
        .get(app.url("/healthz"))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");

    // A certificate from another CA replaces the files: new connections get it.
    let next_ca = TestCa::new("Next CA");
    let next = next_ca.server();
    write(dir.path(), "server.key", &next.key_pem);
    write(dir.path(), "server.crt", &next.cert_pem);
    let started = Instant::now();
    loop {
        let attempt = client(&next_ca, None)
            .get(https(&app, "/healthz"))
            .send()
            .await;
        if attempt.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A broken file is not used: the last good certificate stays.
    write(dir.path(), "server.crt", "not a certificate");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let still = client(&next_ca, None)
        .get(https(&app, "/healthz"))
        .send()
        .await
        .expect("still served");
    assert_eq!(still.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_required_client_certificate_must_come_from_the_configured_ca() {
    let dir = tempfile::TempDir::new().expect("dir");
    let ca = TestCa::new("Sprig test CA");
    let clients_ca = TestCa::new("GP systems CA");
    let other_ca = TestCa::new("Some other CA");
    let app = spawn_app_with(|s| {
        with_tls(s, dir.path(), &ca);
        s.tls.client_ca_file = Some(write(dir.path(), "clients-ca.crt", &clients_ca.cert_pem));
        s.tls.client_auth = Some(ClientAuth::Required);
    })
    .await;

    let good = clients_ca.client("GP system A81001");
    let response = client(&ca, Some(&good))
        .get(https(&app, "/healthz"))
        .send()
        .await
        .expect("a good certificate is served");
    assert_eq!(response.status(), 200);

    let stranger = other_ca.client("GP system A81001");
    let refused = client(&ca, Some(&stranger))
        .get(https(&app, "/healthz"))
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let without = client(&ca, None).get(https(&app, "/healthz")).send().await;
    assert!(without.is_err(), "{without:?}");
    app.stop().await;
}

#[tokio::test]
async fn an_optional_client_certificate_may_be_left_out_but_not_forged() {
    let dir = tempfile::TempDir::new().expect("dir");
    let ca = TestCa::new("Sprig test CA");
    let clients_ca = TestCa::new("GP systems CA");
    let other_ca = TestCa::new("Some other CA");
    let app = spawn_app_with(|s| {
        with_tls(s, dir.path(), &ca);
        s.tls.client_ca_file = Some(write(dir.path(), "clients-ca.crt", &clients_ca.cert_pem));
        s.tls.client_auth = Some(ClientAuth::Optional);
    })
    .await;
    let without = client(&ca, None)
        .get(https(&app, "/healthz"))
        .send()
        .await
        .expect("served without a certificate");
    assert_eq!(without.status(), 200);
    let good = clients_ca.client("GP system A81001");
    let with = client(&ca, Some(&good))
        .get(https(&app, "/healthz"))
        .send()
        .await
        .expect("served with a good certificate");
    assert_eq!(with.status(), 200);
    let stranger = other_ca.client("GP system A81001");
    let refused = client(&ca, Some(&stranger))
        .get(https(&app, "/healthz"))
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
    app.stop().await;
}

#[tokio::test]
async fn tls_settings_that_cannot_work_stop_start_up() {
    let dir = tempfile::TempDir::new().expect("dir");
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().expect("address"),
        database: dir.path().join("sprig.db").display().to_string(),
        ..Settings::default()
    };
    settings.tls.cert_file = Some(write(dir.path(), "server.crt", "not PEM"));
    settings.tls.key_file = Some(write(dir.path(), "server.key", "not PEM"));
    let error = sprig::app::Application::build(settings)
        .await
        .err()
        .expect("refused");
    let message = error.to_string();
    assert!(message.contains("tls.cert_file"), "{message}");
}

/// A referral of practice K83999 (the example), with a fresh identifier.
fn k83999_referral() -> String {
    let mut referral: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("examples/referral-servicerequest.json").expect("example"),
    )
    .expect("JSON");
    referral["identifier"][0]["value"] = uuid::Uuid::new_v4().to_string().into();
    referral.to_string()
}

/// `NHSD-End-User-Organisation` as BaRS sends it: a base64 FHIR Organization.
fn end_user_organisation(ods: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(
        serde_json::json!({
            "resourceType": "Organization",
            "identifier": [{"system": sprig::fhir::identifiers::ODS_ORGANIZATION_SYSTEM, "value": ods}],
        })
        .to_string(),
    )
}

/// Who the audit rows say called, newest last: client id, ODS code, proxy, end-user
/// organisation, whether an `NHSD-End-User-Organisation` was ignored, status.
type AuditWho = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    i64,
);

async fn audit_rows(app: &TestApp) -> Vec<AuditWho> {
    sqlx::query_as(
        "SELECT client_id, ods_code, proxy_id, end_user_ods, ignored_end_user_header, status \
         FROM audit_events ORDER BY seq",
    )
    .fetch_all(&app.db_pool().await)
    .await
    .expect("audit rows")
}

async fn last_audit_row(app: &TestApp) -> AuditWho {
    audit_rows(app).await.pop().expect("an audit row")
}

/// The `total` of a search, and its status.
async fn total(client: &reqwest::Client, url: &str, header: Option<&str>) -> (u16, i64) {
    let mut request = client.get(url);
    if let Some(organisation) = header {
        request = request.header("NHSD-End-User-Organisation", organisation);
    }
    let response = request.send().await.expect("answered");
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    (status, body["total"].as_i64().unwrap_or(-1))
}

#[tokio::test]
async fn a_registered_client_certificate_is_that_client_without_a_token() {
    let dir = tempfile::TempDir::new().expect("dir");
    let ca = TestCa::new("Sprig test CA");
    let clients_ca = TestCa::new("GP systems CA");
    let other_ca = TestCa::new("Some other CA");
    let registry = write(
        dir.path(),
        "clients.toml",
        "[[client]]\nclient_id = \"gp-k\"\nods_codes = [\"K83999\"]\nscopes = \"system/*.cruds\"\n\
         certificate_subject = \"CN=GP system K83999\"\n\
         [[client]]\nclient_id = \"gp-y\"\nods_codes = [\"Y12345\"]\nscopes = \"system/*.cruds\"\n\
         certificate_san = \"gp-y.example\"\n\
         [[client]]\nclient_id = \"bars-proxy\"\nscopes = \"system/*.cruds\"\ntrusted_proxy = true\n\
         certificate_subject = \"CN=bars-proxy.nhs.uk\"\n",
    );
    let app = spawn_app_with(|s| {
        with_tls(s, dir.path(), &ca);
        s.tls.client_ca_file = Some(write(dir.path(), "clients-ca.crt", &clients_ca.cert_pem));
        s.tls.client_auth = Some(ClientAuth::Optional);
        s.auth.clients = Some(registry.clone());
    })
    .await;
    let searches = https(&app, "/fhir/ServiceRequest?_total=accurate");

    // The registered certificate (by subject) is gp-k: its practice, its scopes.
    let gp_k = client(&ca, Some(&clients_ca.client("GP system K83999")));
    let created = gp_k
        .post(https(&app, "/fhir/ServiceRequest"))
        .header("content-type", "application/fhir+json")
        .body(k83999_referral())
        .send()
        .await
        .expect("answered");
    assert_eq!(created.status(), 201, "{:?}", created.text().await);
    assert_eq!(
        last_audit_row(&app).await,
        (
            Some("gp-k".into()),
            Some("K83999".into()),
            None,
            None,
            0,
            201
        )
    );
    assert_eq!(total(&gp_k, &searches, None).await, (200, 1));

    // Another registered certificate (by SAN) is gp-y: it may not send for K83999 nor
    // see K83999's referral.
    let names = ["gp-y.example"];
    let gp_y_identity = clients_ca.issue(
        "GP system Y12345",
        &names,
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let gp_y = client(&ca, Some(&gp_y_identity));
    let refused = gp_y
        .post(https(&app, "/fhir/ServiceRequest"))
        .header("content-type", "application/fhir+json")
        .body(k83999_referral())
        .send()
        .await
        .expect("answered");
    assert_eq!(refused.status(), 403);
    assert_eq!(total(&gp_y, &searches, None).await, (200, 0));

    // A client that is not a trusted proxy sending NHSD-End-User-Organisation: the
    // header is ignored (it still sees only its own), and that is on record.
    let k83999 = end_user_organisation("K83999");
    assert_eq!(total(&gp_y, &searches, Some(&k83999)).await, (200, 0));
    assert_eq!(
        last_audit_row(&app).await,
        (
            Some("gp-y".into()),
            Some("Y12345".into()),
            None,
            None,
            1,
            200
        )
    );

    // The trusted proxy's certificate with the end-user organisation: it acts for
    // K83999, and the audit row names both.
    let proxy = client(&ca, Some(&clients_ca.client("bars-proxy.nhs.uk")));
    assert_eq!(total(&proxy, &searches, Some(&k83999)).await, (200, 1));
    assert_eq!(
        last_audit_row(&app).await,
        (
            Some("bars-proxy".into()),
            Some("K83999".into()),
            Some("bars-proxy".into()),
            Some("K83999".into()),
            0,
            200
        )
    );
    // Without the header the proxy acts for no one.
    assert_eq!(total(&proxy, &searches, None).await, (200, 0));

    // A certificate from the configured CA that no client is registered with: 401.
    let stranger = client(&ca, Some(&clients_ca.client("GP system Z99999")));
    let unknown = stranger.get(&searches).send().await.expect("answered");
    assert_eq!(unknown.status(), 401);
    assert!(unknown.headers().contains_key("www-authenticate"));
    // No certificate and no token: 401.
    let nothing = client(&ca, None)
        .get(&searches)
        .send()
        .await
        .expect("answered");
    assert_eq!(nothing.status(), 401);
    // A certificate of another CA naming a registered subject: refused at the handshake.
    let forged = client(&ca, Some(&other_ca.client("GP system K83999")))
        .get(&searches)
        .send()
        .await;
    assert!(forged.is_err(), "{forged:?}");
    app.stop().await;
}
