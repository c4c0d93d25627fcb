//! Console sign-in through the service's identity provider, over real HTTP: a wiremock
//! provider (discovery document, JWK Set with a key made here, token endpoint that
//! checks PKCE) and the real redirect flow, as a browser follows it. Then each refusal:
//! a state not this browser's, a reused answer, a wrong nonce, a wrong audience, an
//! expired token, a token naming no role, a provider's error.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sprig::config::ConsoleOidcSettings;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::{TestApp, spawn_app_with};

const CLIENT_ID: &str = "sprig-console";
const CODE: &str = "the-provider's-code";

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// What the provider's token endpoint puts in the ID token, given the nonce it was sent.
type Claims = dyn Fn(&str, &str) -> Value + Send + Sync;

/// The provider's token endpoint: checks the code, the client and PKCE (the verifier's
/// S256 is the challenge the authorization request carried), then answers an ID token
/// made by `claims` and signed with the provider's key.
struct TokenEndpoint {
    key: EncodingKey,
    challenge: String,
    nonce: String,
    claims: Box<Claims>,
}

impl Respond for TokenEndpoint {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let form: Vec<(String, String)> = form_urlencoded::parse(&request.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let get = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let verifier = get("code_verifier");
        let s256 = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        if get("grant_type") != "authorization_code"
            || get("code") != CODE
            || get("client_id") != CLIENT_ID
            || s256 != self.challenge
        {
            return ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"}));
        }
        let mut header = Header::new(Algorithm::ES384);
        header.kid = Some("idp-key".into());
        let token =
            jsonwebtoken::encode(&header, &(self.claims)(&self.nonce, CLIENT_ID), &self.key)
                .expect("sign");
        ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "opaque",
            "token_type": "Bearer",
            "expires_in": 300,
            "id_token": token,
        }))
    }
}

struct Provider {
    server: MockServer,
    key: EncodingKey,
}

async fn provider() -> Provider {
    let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
        .expect("EC key")
        .serialize_pem();
    let key = EncodingKey::from_ec_pem(pem.as_bytes()).expect("private key");
    let mut jwk =
        serde_json::to_value(Jwk::from_encoding_key(&key, Algorithm::ES384).expect("JWK"))
            .expect("JSON");
    jwk["kid"] = json!("idp-key");
    let server = MockServer::start().await;
    let issuer = server.uri();
    Mock::given(method("GET"))
        .and(path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/token"),
            "jwks_uri": format!("{issuer}/jwks"),
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/jwks"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "keys": [jwk] })))
        .mount(&server)
        .await;
    Provider { server, key }
}

async fn app_with(provider: &Provider) -> TestApp {
    let issuer = provider.server.uri();
    spawn_app_with(move |settings| {
        settings.console.oidc = Some(ConsoleOidcSettings {
            issuer,
            client_id: CLIENT_ID.into(),
            client_secret_file: None,
            redirect_url: None,
            display_name: "Test IdP".into(),
            scopes: vec!["openid".into(), "profile".into()],
            algorithms: vec!["ES384".into()],
            username_claim: "preferred_username".into(),
            name_claim: "name".into(),
            role_claim: "sprig_role".into(),
        });
    })
    .await
}

/// A good ID token's claims for `nonce`.
fn good(nonce: &str, issuer: &str, audience: &str) -> Value {
    json!({
        "iss": issuer,
        "aud": audience,
        "sub": "f3a9c1",
        "preferred_username": "amara.okafor",
        "name": "Amara Okafor",
        "sprig_role": ["offline_access", "link_worker"],
        "nonce": nonce,
        "iat": unix_now(),
        "exp": unix_now() + 300,
    })
}

/// A browser's sign-in begun: its sign-in cookie, and what the authorization request
/// carried.
struct Begun {
    cookie: String,
    state: String,
    nonce: String,
    challenge: String,
}

async fn begin(app: &TestApp, provider: &Provider) -> Begun {
    let response = app
        .client
        .get(app.url("/console/sign-in/idp"))
        .send()
        .await
        .expect("begin");
    assert_eq!(response.status(), 303);
    let location = response.headers()["location"].to_str().expect("ascii");
    assert!(
        location.starts_with(&format!("{}/authorize?", provider.server.uri())),
        "{location}"
    );
    let url = reqwest::Url::parse(location).expect("url");
    let param = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    assert_eq!(param("response_type"), "code");
    assert_eq!(param("client_id"), CLIENT_ID);
    assert_eq!(param("code_challenge_method"), "S256");
    assert_eq!(
        param("redirect_uri"),
        app.url("/console/sign-in/idp/callback")
    );
    assert!(param("scope").split(' ').any(|s| s == "openid"));
    let set_cookie = response.headers()["set-cookie"].to_str().expect("ascii");
    assert!(set_cookie.starts_with("sprig_sign_in="), "{set_cookie}");
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Lax"), "{set_cookie}");
    let begun = Begun {
        cookie: set_cookie.split(';').next().expect("pair").to_owned(),
        state: param("state"),
        nonce: param("nonce"),
        challenge: param("code_challenge"),
    };
    assert!(begun.state.len() >= 43 && begun.nonce.len() >= 43);
    assert_ne!(begun.state, begun.nonce);
    begun
}

/// The provider's token endpoint for this sign-in, answering `claims`.
async fn token_endpoint(
    provider: &Provider,
    begun: &Begun,
    claims: impl Fn(&str, &str) -> Value + Send + Sync + 'static,
) {
    provider.server.reset().await;
    // `reset` forgot the discovery and keys mocks too; Sprig already holds both.
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(TokenEndpoint {
            key: provider.key.clone(),
            challenge: begun.challenge.clone(),
            nonce: begun.nonce.clone(),
            claims: Box::new(claims),
        })
        .mount(&provider.server)
        .await;
}

async fn come_back(app: &TestApp, cookie: &str, query: &str) -> reqwest::Response {
    app.client
        .get(app.url(&format!("/console/sign-in/idp/callback?{query}")))
        .header("cookie", cookie)
        .send()
        .await
        .expect("callback")
}

fn session_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("sprig_console=") && !c.starts_with("sprig_console=;"))
        .map(|c| c.split(';').next().expect("pair").to_owned())
}

#[tokio::test]
async fn a_person_signs_in_through_the_identity_provider() {
    let provider = provider().await;
    let app = app_with(&provider).await;
    let (_, page) = {
        let response = app
            .client
            .get(app.url("/console/sign-in"))
            .send()
            .await
            .expect("page");
        (response.status(), response.text().await.expect("body"))
    };
    assert!(page.contains("Sign in with Test IdP"), "{page}");

    let begun = begin(&app, &provider).await;
    let issuer = provider.server.uri();
    token_endpoint(&provider, &begun, move |nonce, aud| {
        good(nonce, &issuer, aud)
    })
    .await;
    let query = format!("code={}&state={}", urlencode(CODE), begun.state);
    let response = come_back(&app, &begun.cookie, &query).await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/console/referrals");
    let cookie = session_cookie(&response).expect("a session cookie");
    let worklist = app
        .client
        .get(app.url("/console/referrals"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("worklist");
    assert_eq!(worklist.status(), 200);
    let body = worklist.text().await.expect("body");
    assert!(body.contains("Amara Okafor (Link worker)"), "{body}");

    // The provider's answer is used once: the same callback again signs no one in.
    let again = come_back(&app, &begun.cookie, &query).await;
    assert_eq!(again.status(), 400);
    assert!(session_cookie(&again).is_none());

    // The session is the person's as the ID token named them (audited as them).
    let pool = app.db_pool().await;
    let sessions: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM console_sessions WHERE username = 'amara.okafor' AND role = 'link_worker'",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(sessions, 1);
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test]
async fn the_identity_providers_answers_are_refused_when_not_right() {
    let provider = provider().await;
    let app = app_with(&provider).await;
    let issuer = provider.server.uri();
    type Change = fn(&mut Value);
    let cases: Vec<(&str, Change)> = vec![
        ("wrong nonce", |c| c["nonce"] = json!("another sign-in's")),
        ("wrong audience", |c| c["aud"] = json!("another-client")),
        ("expired", |c| c["exp"] = json!(unix_now() - 3600)),
        ("no role", |c| c["sprig_role"] = json!(["offline_access"])),
        ("another issuer", |c| {
            c["iss"] = json!("https://evil.example")
        }),
        ("azp another client", |c| c["azp"] = json!("another-client")),
    ];
    for (name, change) in cases {
        let begun = begin(&app, &provider).await;
        let issuer = issuer.clone();
        token_endpoint(&provider, &begun, move |nonce, aud| {
            let mut claims = good(nonce, &issuer, aud);
            change(&mut claims);
            claims
        })
        .await;
        let query = format!("code={}&state={}", urlencode(CODE), begun.state);
        let response = come_back(&app, &begun.cookie, &query).await;
        assert_eq!(response.status(), 401, "{name}");
        assert!(session_cookie(&response).is_none(), "{name}");
    }

    // A state that is not this browser's sign-in's: refused before the provider is asked.
    let begun = begin(&app, &provider).await;
    let issuer_now = issuer.clone();
    token_endpoint(&provider, &begun, move |nonce, aud| {
        good(nonce, &issuer_now, aud)
    })
    .await;
    let forged = come_back(
        &app,
        &begun.cookie,
        &format!("code={}&state=forged", urlencode(CODE)),
    )
    .await;
    assert_eq!(forged.status(), 400);
    assert!(session_cookie(&forged).is_none());
    let asked = provider.server.received_requests().await.expect("recorded");
    assert!(
        asked.iter().all(|r| r.url.path() != "/token"),
        "the code is not exchanged on a bad state"
    );
    // The good state afterwards does not work either: the sign-in was used up.
    let late = come_back(
        &app,
        &begun.cookie,
        &format!("code={}&state={}", urlencode(CODE), begun.state),
    )
    .await;
    assert_eq!(late.status(), 400);

    // Another browser (no sign-in cookie) with a good state and code.
    let begun = begin(&app, &provider).await;
    let no_cookie = come_back(
        &app,
        "",
        &format!("code={}&state={}", urlencode(CODE), begun.state),
    )
    .await;
    assert_eq!(no_cookie.status(), 400);

    // The provider says no.
    let begun = begin(&app, &provider).await;
    let denied = come_back(
        &app,
        &begun.cookie,
        &format!("error=access_denied&state={}", begun.state),
    )
    .await;
    assert_eq!(denied.status(), 401);
    assert!(session_cookie(&denied).is_none());

    let pool = app.db_pool().await;
    let sessions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM console_sessions")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(sessions, 0, "no refused answer started a session");
}

#[tokio::test]
async fn without_a_configured_provider_there_is_no_such_sign_in() {
    let app = crate::helpers::spawn_app().await;
    let response = app
        .client
        .get(app.url("/console/sign-in/idp"))
        .send()
        .await
        .expect("begin");
    assert_eq!(response.status(), 404);
    let page = app
        .client
        .get(app.url("/console/sign-in"))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("body");
    assert!(!page.contains("/console/sign-in/idp"));
}

/// A person the identity provider signed in (no staff account) holds a caseload: a
/// manager is offered them by name, assigns them a referral (console and API alike),
/// and their caseload is on the caseloads page under their name; they see it as theirs.
/// Someone the provider named an administrator, or no one has seen, is refused.
#[tokio::test]
async fn a_person_signed_in_through_the_provider_can_be_assigned_referrals() {
    use crate::console::{add_staff, csrf, send_referral, sign_in};
    let provider = provider().await;
    let app = app_with(&provider).await;
    add_staff(&app).await;
    let id = send_referral(&app).await;
    let mina = sign_in(&app, "mina").await;
    let (_, page) = mina.get(&app, &format!("/console/referrals/{id}")).await;
    assert!(
        !page.contains("amara.okafor"),
        "not offered before they have signed in"
    );
    let refused = mina
        .post(
            &app,
            &format!("/console/referrals/{id}/assignment"),
            &[("csrf", &csrf(&page)), ("assigned_to", "amara.okafor")],
        )
        .await;
    assert_eq!(refused.status(), 400);

    // Amara signs in through the provider; her session is not needed after that.
    let begun = begin(&app, &provider).await;
    let issuer = provider.server.uri();
    token_endpoint(&provider, &begun, move |nonce, aud| {
        good(nonce, &issuer, aud)
    })
    .await;
    let query = format!("code={}&state={}", urlencode(CODE), begun.state);
    let response = come_back(&app, &begun.cookie, &query).await;
    assert_eq!(response.status(), 303);
    let amara = session_cookie(&response).expect("a session cookie");

    let (_, page) = mina.get(&app, &format!("/console/referrals/{id}")).await;
    assert!(
        page.contains("<option value=\"amara.okafor\">Amara Okafor (amara.okafor)</option>"),
        "{page}"
    );
    let assigned = mina
        .post(
            &app,
            &format!("/console/referrals/{id}/assignment"),
            &[("csrf", &csrf(&page)), ("assigned_to", "amara.okafor")],
        )
        .await;
    assert_eq!(assigned.status(), 303);
    let (status, caseloads) = mina.get(&app, "/console/caseloads").await;
    assert_eq!(status, 200);
    assert!(
        caseloads.contains("<td>Amara Okafor (amara.okafor)</td><td>1</td>"),
        "{caseloads}"
    );
    let mine = app
        .client
        .get(app.url("/console/referrals?view=mine"))
        .header("cookie", &amara)
        .send()
        .await
        .expect("worklist")
        .text()
        .await
        .expect("body");
    assert!(mine.contains(&id), "{mine}");

    // The API's assignment has the same rule (developer mode: the loopback caller).
    let second = send_referral(&app).await;
    let api = app
        .client
        .post(app.url(&format!("/api/referrals/{second}/assignment")))
        .json(&json!({ "assigned_to": "amara.okafor" }))
        .send()
        .await
        .expect("assign");
    assert_eq!(api.status(), 200, "{:?}", api.text().await);
    let api = app
        .client
        .post(app.url(&format!("/api/referrals/{second}/assignment")))
        .json(&json!({ "assigned_to": "no.one" }))
        .send()
        .await
        .expect("assign");
    assert_eq!(api.status(), 400);
}
