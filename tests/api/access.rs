//! The access matrix: every route of `api::router` × every kind of caller → what it gets,
//! kept as data ([`MATRIX`]), over real HTTP with a client registry, a token secret and
//! keys made in the test. A route the router serves that the matrix does not list fails
//! `every_route_is_in_the_matrix`.

use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sprig::api::authenticate::ROUTES;
use sprig::config::Settings;
use sprig::identity::{StaffRole, staff};
use tempfile::TempDir;

use crate::helpers::{TestApp, json_body, sample_referral_text, spawn_app_in};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const SECRET: &[u8] = b"an access-token secret of the test, 32 bytes or more";
pub(crate) const PASSWORD: &str = "correct horse battery staple";

/// Who calls, in the matrix's column order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Who {
    /// No credentials.
    Nobody,
    /// A token past its expiry.
    Expired,
    /// A token for another audience.
    OtherAudience,
    /// A token signed with another secret.
    Forged,
    /// An unsigned token (`alg: none`).
    AlgNone,
    /// A token of a client the registry disables.
    Disabled,
    /// Practice K83999's client with `system/Task.rs` only.
    NarrowScope,
    /// Practice K83999's client (whose referral the data is).
    PracticeK,
    /// Practice Y12345's client (another practice).
    PracticeY,
    LinkWorker,
    Manager,
    Administrator,
    /// The trusted proxy, passing K83999 as the end-user organisation.
    ProxyForK,
    /// The trusted proxy without `NHSD-End-User-Organisation`.
    ProxyAlone,
    /// Practice Y12345's client sending `NHSD-End-User-Organisation: K83999` (ignored).
    UntrustedHeader,
}

const CALLERS: [Who; 15] = [
    Who::Nobody,
    Who::Expired,
    Who::OtherAudience,
    Who::Forged,
    Who::AlgNone,
    Who::Disabled,
    Who::NarrowScope,
    Who::PracticeK,
    Who::PracticeY,
    Who::LinkWorker,
    Who::Manager,
    Who::Administrator,
    Who::ProxyForK,
    Who::ProxyAlone,
    Who::UntrustedHeader,
];

/// What a caller gets: an exact status, or past the gate (neither 401 nor 403; what the
/// handler then answers depends on the body, which the matrix does not vary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum E {
    Pass,
    S(u16),
}
use E::{Pass, S};

/// The body a row sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    None,
    /// `{"resourceType": "Bundle"}` as FHIR JSON.
    Fhir,
    /// A new copy of the sample referral (practice K83999).
    Referral,
}

type Row = (&'static str, &'static str, &'static str, Body, [E; 15]);

//                     nobody  expired  aud    forged  none   disabled narrow  K     Y     LW    Mgr   Admin proxyK proxy untrusted
#[rustfmt::skip]
const OPEN: [E; 15] = [
    Pass, Pass, Pass, Pass, Pass, Pass, Pass, Pass, Pass, Pass, Pass, Pass, Pass, Pass, Pass,
];
/// A FHIR interaction the narrow scope (`Task.rs`) does not grant.
#[rustfmt::skip]
const FHIR: [E; 15] = [
    S(401),
    S(401),
    S(401),
    S(401),
    S(401),
    S(401),
    S(403),
    Pass,
    Pass,
    S(403),
    S(403),
    S(403),
    Pass,
    Pass,
    Pass,
];
/// A FHIR interaction the narrow scope grants (`$validate`, Task search).
#[rustfmt::skip]
const FHIR_ANY: [E; 15] = [
    S(401),
    S(401),
    S(401),
    S(401),
    S(401),
    S(401),
    Pass,
    Pass,
    Pass,
    S(403),
    S(403),
    S(403),
    Pass,
    Pass,
    Pass,
];
/// Creating K83999's referral: K and the proxy for K only.
#[rustfmt::skip]
const CREATE_K: [E; 15] = [
    S(401),
    S(401),
    S(401),
    S(401),
    S(401),
    S(401),
    S(403),
    S(201),
    S(403),
    S(403),
    S(403),
    S(403),
    S(201),
    S(403),
    S(403),
];
/// Reading K83999's referral: K and the proxy for K; any other practice (and the
/// proxy acting for none) is told it does not exist, never that it is forbidden.
#[rustfmt::skip]
const READ_K: [E; 15] = [
    S(401),
    S(401),
    S(401),
    S(401),
    S(401),
    S(401),
    S(403),
    S(200),
    S(404),
    S(403),
    S(403),
    S(403),
    S(200),
    S(404),
    S(404),
];
/// Referral work under /api: link workers and managers.
#[rustfmt::skip]
const WORK: [E; 15] = [
    S(401),
    S(401),
    S(401),
    S(401),
    S(401),
    S(401),
    S(403),
    S(403),
    S(403),
    Pass,
    Pass,
    S(403),
    S(403),
    S(403),
    S(403),
];
/// Assigning referrals: service managers.
#[rustfmt::skip]
const MANAGE: [E; 15] = [
    S(401), S(401), S(401), S(401), S(401), S(401), S(403), S(403), S(403),
    S(403), Pass, S(403), S(403), S(403), S(403),
];
/// The console: a session cookie or a redirect to sign-in, whatever bearer token is sent.
#[rustfmt::skip]
const CONSOLE: [E; 15] = [
    S(303), S(303), S(303), S(303), S(303), S(303), S(303), S(303), S(303),
    S(303), S(303), S(303), S(303), S(303), S(303),
];
/// A console form on a referral: without a session, a 307 to sign-in (the browser posts
/// the form there, and what was typed is kept through sign-in).
#[rustfmt::skip]
const CONSOLE_FORM: [E; 15] = [
    S(307), S(307), S(307), S(307), S(307), S(307), S(307), S(307), S(307),
    S(307), S(307), S(307), S(307), S(307), S(307),
];
/// Deliveries, registries, metrics: administrators.
#[rustfmt::skip]
const ADMIN: [E; 15] = [
    S(401),
    S(401),
    S(401),
    S(401),
    S(401),
    S(401),
    S(403),
    S(403),
    S(403),
    S(403),
    S(403),
    Pass,
    S(403),
    S(403),
    S(403),
];

/// Outcome report counts (no personal data): service managers and administrators.
#[rustfmt::skip]
const REPORTS: [E; 15] = [
    S(401),
    S(401),
    S(401),
    S(401),
    S(401),
    S(401),
    S(403),
    S(403),
    S(403),
    S(403),
    Pass,
    Pass,
    S(403),
    S(403),
    S(403),
];
/// A report's detail (ids and NHS numbers): service managers only.
#[rustfmt::skip]
const MANAGER: [E; 15] = [
    S(401),
    S(401),
    S(401),
    S(401),
    S(401),
    S(401),
    S(403),
    S(403),
    S(403),
    S(403),
    Pass,
    S(403),
    S(403),
    S(403),
    S(403),
];

/// Every route × every caller. `{sr}` is K83999's referral (its ServiceRequest id and
/// referral id), `{task}` its Task.
#[rustfmt::skip]
const MATRIX: &[Row] = &[
    ("GET", "/fhir/metadata", "/fhir/metadata", Body::None, OPEN),
    (
        "GET",
        "/fhir/MessageDefinition",
        "/fhir/MessageDefinition?event=servicerequest-request",
        Body::None,
        OPEN,
    ),
    (
        "GET",
        "/fhir/MessageDefinition/{id}",
        "/fhir/MessageDefinition/sprig-servicerequest-request",
        Body::None,
        OPEN,
    ),
    ("POST", "/fhir", "/fhir", Body::Fhir, FHIR),
    (
        "POST",
        "/fhir/$process-message",
        "/fhir/$process-message",
        Body::Fhir,
        FHIR,
    ),
    (
        "POST",
        "/fhir/$validate",
        "/fhir/$validate",
        Body::Fhir,
        FHIR_ANY,
    ),
    (
        "POST",
        "/fhir/{type}/$validate",
        "/fhir/Task/$validate",
        Body::Fhir,
        FHIR_ANY,
    ),
    (
        "GET",
        "/fhir/{type}",
        "/fhir/ServiceRequest",
        Body::None,
        FHIR,
    ),
    ("GET", "/fhir/{type}", "/fhir/Task", Body::None, FHIR_ANY),
    (
        "POST",
        "/fhir/{type}",
        "/fhir/ServiceRequest",
        Body::Referral,
        CREATE_K,
    ),
    (
        "POST",
        "/fhir/{type}/_search",
        "/fhir/ServiceRequest/_search",
        Body::None,
        FHIR,
    ),
    (
        "GET",
        "/fhir/{type}/{id}",
        "/fhir/ServiceRequest/{sr}",
        Body::None,
        READ_K,
    ),
    (
        "PUT",
        "/fhir/{type}/{id}",
        "/fhir/ServiceRequest/{sr}",
        Body::Fhir,
        FHIR,
    ),
    (
        "GET",
        "/fhir/{type}/{id}/_history",
        "/fhir/ServiceRequest/{sr}/_history",
        Body::None,
        READ_K,
    ),
    (
        "GET",
        "/fhir/{type}/_history",
        "/fhir/ServiceRequest/_history",
        Body::None,
        FHIR,
    ),
    (
        "GET",
        "/fhir/{type}/{id}/_history/{vid}",
        "/fhir/ServiceRequest/{sr}/_history/1",
        Body::None,
        READ_K,
    ),
    (
        "GET",
        "/api/openapi.json",
        "/api/openapi.json",
        Body::None,
        OPEN,
    ),
    ("GET", "/api/referrals", "/api/referrals", Body::None, WORK),
    ("GET", "/api/measures", "/api/measures", Body::None, WORK),
    ("GET", "/api/follow-ups", "/api/follow-ups", Body::None, WORK),
    (
        "GET",
        "/api/reports/outcomes",
        "/api/reports/outcomes?from=2026-01-01&to=2026-12-31",
        Body::None,
        REPORTS,
    ),
    (
        "GET",
        "/api/reports/outcomes/detail",
        "/api/reports/outcomes/detail?from=2026-01-01&to=2026-12-31",
        Body::None,
        MANAGER,
    ),
    (
        "GET",
        "/api/reports/service",
        "/api/reports/service?from=2026-01-01&to=2026-12-31",
        Body::None,
        REPORTS,
    ),
    (
        "GET",
        "/api/referrals/{id}",
        "/api/referrals/{sr}",
        Body::None,
        WORK,
    ),
    (
        "POST",
        "/api/referrals/{id}/transitions",
        "/api/referrals/{sr}/transitions",
        Body::None,
        WORK,
    ),
    (
        "POST",
        "/api/referrals/{id}/outcomes",
        "/api/referrals/{sr}/outcomes",
        Body::None,
        WORK,
    ),
    (
        "POST",
        "/api/referrals/{id}/notes",
        "/api/referrals/{sr}/notes",
        Body::None,
        WORK,
    ),
    (
        "GET",
        "/api/referrals/{id}/milestones",
        "/api/referrals/{sr}/milestones",
        Body::None,
        WORK,
    ),
    (
        "POST",
        "/api/referrals/{id}/milestones",
        "/api/referrals/{sr}/milestones",
        Body::None,
        WORK,
    ),
    (
        "GET",
        "/api/deliveries",
        "/api/deliveries",
        Body::None,
        ADMIN,
    ),
    (
        "GET",
        "/api/deliveries/{seq}",
        "/api/deliveries/1",
        Body::None,
        ADMIN,
    ),
    (
        "POST",
        "/api/deliveries/{seq}/retry",
        "/api/deliveries/1/retry",
        Body::None,
        ADMIN,
    ),
    ("GET", "/api/endpoints", "/api/endpoints", Body::None, ADMIN),
    ("GET", "/fhir/AuditEvent", "/fhir/AuditEvent", Body::None, ADMIN),
    ("GET", "/fhir/AuditEvent/{id}", "/fhir/AuditEvent/1", Body::None, ADMIN),
    (
        "POST",
        "/api/endpoints/{ods}/retry",
        "/api/endpoints/K83999/retry",
        Body::None,
        ADMIN,
    ),
    (
        "POST",
        "/api/endpoints/{ods}/send-now",
        "/api/endpoints/K83999/send-now",
        Body::None,
        ADMIN,
    ),
    ("GET", "/metrics", "/metrics", Body::None, ADMIN),
    ("POST", "/auth/token", "/auth/token", Body::None, OPEN),
    (
        "POST",
        "/auth/staff/token",
        "/auth/staff/token",
        Body::None,
        OPEN,
    ),
    (
        "GET",
        "/.well-known/smart-configuration",
        "/.well-known/smart-configuration",
        Body::None,
        OPEN,
    ),
    (
        "POST",
        "/api/referrals/{id}/assignment",
        "/api/referrals/{sr}/assignment",
        Body::None,
        MANAGE,
    ),
    // Without a body: administrators get as far as the 400 for it, and nothing is erased.
    (
        "POST",
        "/api/referrals/{id}/erasure",
        "/api/referrals/{sr}/erasure",
        Body::None,
        ADMIN,
    ),
    ("GET", "/console", "/console", Body::None, CONSOLE),
    ("GET", "/console/sign-in", "/console/sign-in", Body::None, OPEN),
    ("POST", "/console/sign-in", "/console/sign-in", Body::None, OPEN),
    ("GET", "/console/sign-in/idp", "/console/sign-in/idp", Body::None, OPEN),
    ("POST", "/console/sign-in/idp", "/console/sign-in/idp", Body::None, OPEN),
    (
        "GET",
        "/console/sign-in/idp/callback",
        "/console/sign-in/idp/callback",
        Body::None,
        OPEN,
    ),
    ("POST", "/console/sign-out", "/console/sign-out", Body::None, CONSOLE),
    (
        "GET",
        "/console/style/{file}",
        "/console/style/nhsuk-frontend-10.6.1.min.css",
        Body::None,
        OPEN,
    ),
    (
        "GET",
        "/console/assets/images/{file}",
        "/console/assets/images/favicon.svg",
        Body::None,
        CONSOLE,
    ),
    ("GET", "/console/referrals", "/console/referrals", Body::None, CONSOLE),
    (
        "GET",
        "/console/referrals/{id}",
        "/console/referrals/{sr}",
        Body::None,
        CONSOLE,
    ),
    (
        "POST",
        "/console/referrals/{id}/transition",
        "/console/referrals/{sr}/transition",
        Body::None,
        CONSOLE_FORM,
    ),
    (
        "POST",
        "/console/referrals/{id}/notes",
        "/console/referrals/{sr}/notes",
        Body::None,
        CONSOLE_FORM,
    ),
    (
        "POST",
        "/console/referrals/{id}/milestones",
        "/console/referrals/{sr}/milestones",
        Body::None,
        CONSOLE_FORM,
    ),
    ("GET", "/console/reports", "/console/reports", Body::None, CONSOLE),
    (
        "GET",
        "/console/reports/export",
        "/console/reports/export",
        Body::None,
        CONSOLE,
    ),
    (
        "GET",
        "/console/reports/referrals",
        "/console/reports/referrals",
        Body::None,
        CONSOLE,
    ),
    (
        "GET",
        "/console/referrals/{id}/outcomes",
        "/console/referrals/{sr}/outcomes",
        Body::None,
        CONSOLE,
    ),
    (
        "POST",
        "/console/referrals/{id}/outcomes",
        "/console/referrals/{sr}/outcomes",
        Body::None,
        CONSOLE_FORM,
    ),
    (
        "POST",
        "/console/referrals/{id}/assignment",
        "/console/referrals/{sr}/assignment",
        Body::None,
        CONSOLE_FORM,
    ),
    ("GET", "/console/caseloads", "/console/caseloads", Body::None, CONSOLE),
    ("GET", "/console/deliveries", "/console/deliveries", Body::None, CONSOLE),
    (
        "POST",
        "/console/deliveries/{seq}/retry",
        "/console/deliveries/1/retry",
        Body::None,
        CONSOLE,
    ),
    ("GET", "/console/follow-ups", "/console/follow-ups", Body::None, CONSOLE),
    ("GET", "/console/registries", "/console/registries", Body::None, CONSOLE),
    (
        "GET",
        "/console/referrals/{id}/audit",
        "/console/referrals/{sr}/audit",
        Body::None,
        CONSOLE,
    ),
    ("GET", "/console/audit", "/console/audit", Body::None, CONSOLE),
    ("GET", "/console/people", "/console/people", Body::None, CONSOLE),
    ("POST", "/console/people", "/console/people", Body::None, CONSOLE),
    (
        "POST",
        "/console/deliveries/practices/{ods}/retry",
        "/console/deliveries/practices/K83999/retry",
        Body::None,
        CONSOLE,
    ),
    ("GET", "/healthz", "/healthz", Body::None, OPEN),
    ("GET", "/readyz", "/readyz", Body::None, OPEN),
];

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// An EC P-384 key: its signing key and its public JWK with `kid`.
fn key(kid: &str) -> (EncodingKey, Value) {
    let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
        .expect("EC key")
        .serialize_pem();
    let encoding = EncodingKey::from_ec_pem(pem.as_bytes()).expect("private key");
    let mut jwk =
        serde_json::to_value(Jwk::from_encoding_key(&encoding, Algorithm::ES384).expect("JWK"))
            .expect("JSON");
    jwk["kid"] = json!(kid);
    (encoding, jwk)
}

/// A gateway with security enforced, and a token for each kind of caller.
pub(crate) struct Secured {
    pub(crate) app: TestApp,
    tokens: Vec<(Who, Option<String>)>,
    /// `iss` and `aud` of the gateway's own tokens.
    issuer: String,
    audience: String,
}

impl Secured {
    pub(crate) fn token(&self, who: Who) -> Option<&str> {
        self.tokens
            .iter()
            .find(|(w, _)| *w == who)
            .and_then(|(_, t)| t.as_deref())
    }

    fn mint(
        &self,
        secret: &[u8],
        sub: &str,
        ods: &[&str],
        scope: &str,
        exp: i64,
        aud: &str,
    ) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({
                "iss": self.issuer, "aud": aud, "sub": sub, "kind": "client",
                "scope": scope, "ods": ods, "exp": exp, "iat": unix_now(),
                "jti": uuid::Uuid::new_v4().to_string(),
            }),
            &EncodingKey::from_secret(secret),
        )
        .expect("sign")
    }

    pub(crate) fn request(&self, who: Who, method: &str, path: &str) -> reqwest::RequestBuilder {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.app.client.request(method, self.app.url(path));
        if let Some(token) = self.token(who) {
            request = request.bearer_auth(token);
        }
        let organisation = |ods: &str| {
            base64::engine::general_purpose::STANDARD.encode(
                json!({
                    "resourceType": "Organization",
                    "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": ods}]
                })
                .to_string(),
            )
        };
        if matches!(who, Who::ProxyForK | Who::UntrustedHeader) {
            request = request.header("NHSD-End-User-Organisation", organisation("K83999"));
        }
        request
    }
}

pub(crate) async fn secured() -> Secured {
    secured_with(|_| {}).await
}

/// [`secured`], with settings adjusted by `configure`.
pub(crate) async fn secured_with(configure: impl FnOnce(&mut Settings)) -> Secured {
    let dir = Arc::new(TempDir::new().expect("tempdir"));
    let (signing, jwk) = key("k1");
    std::fs::write(
        dir.path().join("keys.json"),
        json!({ "keys": [jwk] }).to_string(),
    )
    .expect("JWKS");
    let registry = dir.path().join("clients.toml");
    let all = "system/*.cruds";
    std::fs::write(
        &registry,
        format!(
            "[[client]]\nclient_id = \"gp-k\"\nods_codes = [\"K83999\"]\nscopes = \"{all}\"\njwks_file = \"keys.json\"\n\
             [[client]]\nclient_id = \"gp-k-narrow\"\nods_codes = [\"K83999\"]\nscopes = \"system/Task.rs\"\njwks_file = \"keys.json\"\n\
             [[client]]\nclient_id = \"gp-y\"\nods_codes = [\"Y12345\"]\nscopes = \"{all}\"\njwks_file = \"keys.json\"\n\
             [[client]]\nclient_id = \"gp-off\"\nods_codes = [\"K83999\"]\nscopes = \"{all}\"\njwks_file = \"keys.json\"\nenabled = false\n\
             [[client]]\nclient_id = \"proxy\"\nscopes = \"{all}\"\ntrusted_proxy = true\njwks_file = \"keys.json\"\n"
        ),
    )
    .expect("registry");
    let secret = dir.path().join("token.secret");
    std::fs::write(&secret, SECRET).expect("secret");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let app = spawn_app_in(Arc::clone(&dir), |settings| {
        settings.auth.clients = Some(registry.clone());
        settings.auth.token_secret_file = Some(secret.clone());
        configure(settings);
    })
    .await;

    // The one real client-credentials grant: it tells the tokens' `iss` and `aud`.
    let token_url = app.url("/auth/token");
    let mut header = Header::new(Algorithm::ES384);
    header.kid = Some("k1".into());
    let assertion = jsonwebtoken::encode(
        &header,
        &json!({"iss": "gp-k", "sub": "gp-k", "aud": token_url, "exp": unix_now() + 120,
                "jti": uuid::Uuid::new_v4().to_string()}),
        &signing,
    )
    .expect("sign");
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_assertion_type", ASSERTION_TYPE)
        .append_pair("client_assertion", &assertion)
        .append_pair("scope", all)
        .finish();
    let granted = app
        .client
        .post(&token_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .expect("token request");
    assert_eq!(granted.status(), 200);
    let practice_k = json_body(granted).await["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let payload = practice_k.split('.').nth(1).expect("JWT");
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64"),
    )
    .expect("claims");
    let mut secured = Secured {
        app,
        tokens: Vec::new(),
        issuer: claims["iss"].as_str().expect("iss").to_owned(),
        audience: claims["aud"].as_str().expect("aud").to_owned(),
    };
    let now = unix_now();
    let aud = secured.audience.clone();
    let none_header =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let mut tokens = vec![
        (Who::Nobody, None),
        (
            Who::Expired,
            Some(secured.mint(SECRET, "gp-k", &["K83999"], all, now - 3600, &aud)),
        ),
        (
            Who::OtherAudience,
            Some(secured.mint(
                SECRET,
                "gp-k",
                &["K83999"],
                all,
                now + 300,
                "https://elsewhere.example",
            )),
        ),
        (
            Who::Forged,
            Some(secured.mint(
                b"another secret that is 32 bytes long, or more",
                "gp-k",
                &["K83999"],
                all,
                now + 300,
                &aud,
            )),
        ),
        (Who::AlgNone, Some(format!("{none_header}.{payload}."))),
        (
            Who::Disabled,
            Some(secured.mint(SECRET, "gp-off", &["K83999"], all, now + 300, &aud)),
        ),
        (
            Who::NarrowScope,
            Some(secured.mint(
                SECRET,
                "gp-k-narrow",
                &["K83999"],
                "system/Task.rs",
                now + 300,
                &aud,
            )),
        ),
        (Who::PracticeK, Some(practice_k)),
        (
            Who::PracticeY,
            Some(secured.mint(SECRET, "gp-y", &["Y12345"], all, now + 300, &aud)),
        ),
        (
            Who::ProxyForK,
            Some(secured.mint(SECRET, "proxy", &[], all, now + 300, &aud)),
        ),
        (
            Who::ProxyAlone,
            Some(secured.mint(SECRET, "proxy", &[], all, now + 300, &aud)),
        ),
        (
            Who::UntrustedHeader,
            Some(secured.mint(SECRET, "gp-y", &["Y12345"], all, now + 300, &aud)),
        ),
    ];
    for (who, username, role) in [
        (Who::LinkWorker, "lw", StaffRole::LinkWorker),
        (Who::Manager, "mgr", StaffRole::ServiceManager),
        (Who::Administrator, "admin", StaffRole::Administrator),
    ] {
        staff::add_account(
            &secured.app.store,
            username,
            "A person",
            role,
            PASSWORD.into(),
        )
        .await
        .expect("account");
        let signed_in = secured
            .app
            .client
            .post(secured.app.url("/auth/staff/token"))
            .json(&json!({"username": username, "password": PASSWORD}))
            .send()
            .await
            .expect("sign in");
        assert_eq!(signed_in.status(), 200);
        let token = json_body(signed_in).await["access_token"]
            .as_str()
            .expect("token")
            .to_owned();
        tokens.push((who, Some(token)));
    }
    secured.tokens = tokens;
    secured
}

/// K83999's referral, created by its own client.
pub(crate) async fn referral_of_k(secured: &Secured) -> String {
    let response = secured
        .request(Who::PracticeK, "POST", "/fhir/ServiceRequest")
        .header("content-type", "application/fhir+json")
        .body(sample_referral_text())
        .send()
        .await
        .expect("create");
    assert_eq!(response.status(), 201);
    json_body(response).await["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

#[tokio::test]
async fn every_route_and_caller_gets_what_the_matrix_says() {
    let secured = secured().await;
    let sr = referral_of_k(&secured).await;
    let mut wrong = Vec::new();
    for (method, _, path, body, expected) in MATRIX {
        let path = path.replace("{sr}", &sr);
        for (who, expect) in CALLERS.iter().zip(expected) {
            let mut request = secured.request(*who, method, &path);
            request = match body {
                Body::None => request,
                Body::Fhir => request
                    .header("content-type", "application/fhir+json")
                    .body(json!({"resourceType": "Bundle"}).to_string()),
                Body::Referral => request
                    .header("content-type", "application/fhir+json")
                    .body(sample_referral_text()),
            };
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let ok = match expect {
                Pass => status != 401 && status != 403,
                S(code) => status == *code,
            };
            if !ok {
                let text = response.text().await.unwrap_or_default();
                wrong.push(format!(
                    "{method} {path} as {who:?}: {status}, expected {expect:?}: {text}"
                ));
                continue;
            }
            assert_eq!(
                headers["x-content-type-options"], "nosniff",
                "{method} {path}"
            );
            if status == 401 {
                assert!(
                    headers.contains_key("www-authenticate"),
                    "{method} {path} {who:?}"
                );
            }
            if (path.starts_with("/fhir/") || path == "/fhir") && (status == 401 || status == 403) {
                let outcome: Value = response.json().await.expect("an OperationOutcome");
                assert_eq!(outcome["resourceType"], "OperationOutcome");
                let code = if status == 401 {
                    "REC_UNAUTHORIZED"
                } else {
                    "REC_FORBIDDEN"
                };
                assert!(
                    outcome.to_string().contains(code),
                    "{method} {path} {who:?}: {outcome}"
                );
            }
            if path.starts_with("/api/")
                && path != "/api/openapi.json"
                && (status == 401 || status == 403)
            {
                assert_eq!(headers["content-type"], "application/problem+json");
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    secured.app.stop().await;
}

#[test]
fn every_route_is_in_the_matrix() {
    // The router is `api`'s routes and the console's (`api::router_with`).
    let source = [
        concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/mod.rs"),
        concat!(env!("CARGO_MANIFEST_DIR"), "/src/console/mod.rs"),
        concat!(env!("CARGO_MANIFEST_DIR"), "/src/console/milestones.rs"),
        concat!(env!("CARGO_MANIFEST_DIR"), "/src/console/reports.rs"),
    ]
    .map(|file| std::fs::read_to_string(file).expect(file))
    .join("\n");
    // Every `.route("PATH", …)` of the router is in the access table…
    let routed: Vec<&str> = source
        .split(".route(")
        .skip(1)
        .filter_map(|rest| rest.trim_start().strip_prefix('"'))
        .filter_map(|rest| rest.split('"').next())
        // A trailing-slash twin is the same route (`authenticate::gate_of`).
        .map(|path| match path.strip_suffix('/') {
            Some(trimmed) if !trimmed.is_empty() => trimmed,
            _ => path,
        })
        .collect();
    assert!(
        routed.len() >= ROUTES.len(),
        "routes not found in src/api/mod.rs"
    );
    for path in &routed {
        assert!(
            ROUTES.iter().any(|r| r.path == *path),
            "{path} is routed but not in api::authenticate::ROUTES"
        );
    }
    // …and every method of every route has a row here.
    for route in ROUTES {
        assert!(
            routed.contains(&route.path),
            "{} is in ROUTES but not routed",
            route.path
        );
        for method in route.methods {
            assert!(
                MATRIX
                    .iter()
                    .any(|(m, p, ..)| m == method && *p == route.path),
                "{method} {} has no row in the access matrix",
                route.path
            );
        }
    }
}

#[tokio::test]
async fn staff_sign_in_does_not_say_which_part_was_wrong() {
    let secured = secured().await;
    let attempt = |username: &str, password: &str| {
        secured
            .app
            .client
            .post(secured.app.url("/auth/staff/token"))
            .form(&[("username", username), ("password", password)])
            .send()
    };
    let wrong_password = attempt("lw", "not the password at all")
        .await
        .expect("request");
    let unknown_user = attempt("nobody", PASSWORD).await.expect("request");
    assert_eq!(wrong_password.status(), 401);
    assert_eq!(unknown_user.status(), 401);
    assert_eq!(
        json_body(wrong_password).await,
        json_body(unknown_user).await
    );
    let right = attempt("lw", PASSWORD).await.expect("request");
    assert_eq!(right.status(), 200);
    secured.app.stop().await;
}

#[tokio::test]
async fn the_by_of_a_stage_change_is_the_signed_in_person() {
    let secured = secured().await;
    let sr = referral_of_k(&secured).await;
    let moved = secured
        .request(
            Who::LinkWorker,
            "POST",
            &format!("/api/referrals/{sr}/notes"),
        )
        .json(&json!({"text": "Called the patient", "by": "someone.else"}))
        .send()
        .await
        .expect("note");
    assert_eq!(moved.status(), 201);
    let detail = json_body(moved).await;
    assert!(detail.to_string().contains("\"lw\""), "{detail}");
    assert!(!detail.to_string().contains("someone.else"), "{detail}");
    secured.app.stop().await;
}

#[tokio::test]
async fn another_practice_cannot_amend_a_referral_and_learns_nothing() {
    let secured = secured().await;
    let sr = referral_of_k(&secured).await;
    let current = json_body(
        secured
            .request(Who::PracticeK, "GET", &format!("/fhir/ServiceRequest/{sr}"))
            .send()
            .await
            .expect("read"),
    )
    .await;
    let mut withdrawn = current.clone();
    withdrawn["status"] = json!("revoked");
    let put = |who| {
        secured
            .request(who, "PUT", &format!("/fhir/ServiceRequest/{sr}"))
            .header("content-type", "application/fhir+json")
            .header("if-match", "W/\"1\"")
            .body(withdrawn.to_string())
            .send()
    };
    let refused = put(Who::PracticeY).await.expect("put");
    assert_eq!(refused.status(), 404);
    let missing = secured
        .request(
            Who::PracticeY,
            "PUT",
            "/fhir/ServiceRequest/no-such-referral",
        )
        .header("content-type", "application/fhir+json")
        .header("if-match", "W/\"1\"")
        .body({
            let mut other = withdrawn.clone();
            other["id"] = json!("no-such-referral");
            other.to_string()
        })
        .send()
        .await
        .expect("put");
    assert_eq!(missing.status(), 404);
    let accepted = put(Who::PracticeK).await.expect("put");
    assert_eq!(accepted.status(), 200);
    secured.app.stop().await;
}

#[tokio::test]
async fn the_capability_statement_says_how_to_get_a_token() {
    let secured = secured().await;
    let statement = json_body(secured.app.get("/fhir/metadata").await).await;
    let security = &statement["rest"][0]["security"];
    assert_eq!(security["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    assert_eq!(
        security["extension"][0]["url"],
        "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    );
    assert_eq!(
        security["extension"][0]["extension"][0]["valueUri"],
        json!(secured.app.url("/auth/token"))
    );
    secured.app.stop().await;
}

#[tokio::test]
async fn a_client_over_its_rate_limit_is_told_when_to_retry_and_others_go_on() {
    let secured = secured_with(|settings| {
        settings.auth.rate_limit_per_minute = 6;
        settings.auth.rate_limit_burst = 3;
    })
    .await;
    let get = |who| secured.request(who, "GET", "/fhir/Task").send();
    for _ in 0..3 {
        assert_eq!(get(Who::PracticeK).await.expect("request").status(), 200);
    }
    let refused = get(Who::PracticeK).await.expect("request");
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .expect("text")
        .parse()
        .expect("seconds");
    assert!((1..=10).contains(&retry_after), "{retry_after}");
    let outcome = json_body(refused).await;
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["code"], "throttled");
    // Another practice's client has a bucket of its own.
    assert_eq!(get(Who::PracticeY).await.expect("request").status(), 200);

    // A staff session too, answered as problem details under /api.
    let mut last = None;
    for _ in 0..4 {
        last = Some(
            secured
                .request(Who::Manager, "GET", "/api/referrals")
                .send()
                .await
                .expect("request"),
        );
    }
    let refused = last.expect("answered");
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    secured.app.stop().await;
}

/// A BaRS message whose practice is nowhere in its content: from the trusted proxy,
/// `NHSD-End-User-Organisation` is the last place Sprig looks and the referral is routed
/// to it; from another client the header is ignored and the message refused, saying where
/// Sprig looked.
#[tokio::test]
async fn only_a_trusted_proxy_declares_the_practice_of_a_message_that_names_none() {
    let secured = secured().await;
    let path = format!(
        "{}/tests/fixtures/bars/referral-request.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut message: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("JSON");
    message["entry"][0]["resource"]
        .as_object_mut()
        .expect("MessageHeader")
        .shift_remove("sender");
    let send = |who| {
        secured
            .request(who, "POST", "/fhir/$process-message")
            .header("content-type", "application/fhir+json")
            .body(message.to_string())
            .send()
    };
    let refused = send(Who::UntrustedHeader).await.expect("sent");
    assert_eq!(refused.status(), 422);
    let outcome = json_body(refused).await;
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{outcome}");
    let text = outcome.to_string();
    assert!(text.contains("MessageHeader.sender"), "{text}");
    assert!(text.contains("NHSD-End-User-Organisation"), "{text}");

    let accepted = send(Who::ProxyForK).await.expect("sent");
    let status = accepted.status();
    let reply = json_body(accepted).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["entry"][0]["resource"]["response"]["code"], "ok");
    let task = reply["entry"][0]["resource"]["focus"][1]["reference"]
        .as_str()
        .expect("Task reference")
        .rsplit('/')
        .next()
        .expect("id")
        .to_owned();
    let task = json_body(
        secured
            .request(Who::ProxyForK, "GET", &format!("/fhir/Task/{task}"))
            .send()
            .await
            .expect("read"),
    )
    .await;
    assert_eq!(task["requester"]["identifier"]["value"], "K83999", "{task}");
    secured.app.stop().await;
}
