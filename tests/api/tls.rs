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
