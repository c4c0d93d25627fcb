//! The SMART Backend Services token endpoint over real HTTP, with a client registry and
//! keys made in the test; and start-up's security decision.

use std::sync::Arc;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sprig::app::{Application, StartupError};
use sprig::config::Settings;
use tempfile::TempDir;

use crate::helpers::{json_body, spawn_app, spawn_app_in};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

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

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn assertion(key: &EncodingKey, kid: &str, client_id: &str, aud: &str) -> String {
    let mut header = Header::new(Algorithm::ES384);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(
        &header,
        &json!({
            "iss": client_id,
            "sub": client_id,
            "aud": aud,
            "exp": unix_now() + 120,
            "jti": uuid::Uuid::new_v4().to_string(),
        }),
        key,
    )
    .expect("sign")
}

fn form(assertion: &str, scope: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_assertion_type", ASSERTION_TYPE)
        .append_pair("client_assertion", assertion)
        .append_pair("scope", scope)
        .finish()
}

#[tokio::test]
async fn a_registered_client_gets_a_token_and_a_replay_does_not() {
    let dir = Arc::new(TempDir::new().expect("tempdir"));
    let (signing, jwk) = key("gp-key-1");
    std::fs::write(
        dir.path().join("gp.json"),
        json!({ "keys": [jwk] }).to_string(),
    )
    .expect("write JWKS");
    let registry = dir.path().join("clients.toml");
    std::fs::write(
        &registry,
        "[[client]]\nclient_id = \"gp-a\"\nods_codes = [\"A81001\"]\n\
         scopes = \"system/ServiceRequest.cr system/Task.rs\"\njwks_file = \"gp.json\"\n",
    )
    .expect("write registry");
    let app = spawn_app_in(Arc::clone(&dir), |settings| {
        settings.auth.clients = Some(registry.clone());
    })
    .await;

    let configuration = json_body(app.get("/.well-known/smart-configuration").await).await;
    let token_url = app.url("/auth/token");
    assert_eq!(configuration["token_endpoint"], json!(token_url));
    assert_eq!(
        configuration["token_endpoint_auth_methods_supported"],
        json!(["private_key_jwt"])
    );

    let signed = assertion(&signing, "gp-key-1", "gp-a", &token_url);
    let post = |body: String| {
        app.client
            .post(&token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let response = post(form(&signed, "system/*.rs system/Observation.rs"))
        .await
        .expect("token request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let token = json_body(response).await;
    assert_eq!(token["token_type"], "bearer");
    assert_eq!(token["expires_in"], 300);
    assert_eq!(token["scope"], "system/ServiceRequest.r system/Task.rs");
    assert!(token["access_token"].as_str().is_some_and(|t| t.len() > 20));

    // The same assertion again is a replay.
    let replay = post(form(&signed, "system/Task.rs"))
        .await
        .expect("request");
    assert_eq!(replay.status(), 401);
    let body = json_body(replay).await;
    assert_eq!(body["error"], "invalid_client");
    assert!(!body.to_string().contains(&signed));

    // Nothing allowed asked for.
    let fresh = assertion(&signing, "gp-key-1", "gp-a", &token_url);
    let refused = post(form(&fresh, "system/Patient.rs"))
        .await
        .expect("request");
    assert_eq!(refused.status(), 400);
    assert_eq!(json_body(refused).await["error"], "invalid_scope");

    // Another audience.
    let elsewhere = assertion(&signing, "gp-key-1", "gp-a", "https://elsewhere/token");
    let refused = post(form(&elsewhere, "system/Task.rs"))
        .await
        .expect("request");
    assert_eq!(refused.status(), 401);

    // Not a form.
    let refused = app
        .client
        .post(&token_url)
        .json(&json!({ "grant_type": "client_credentials" }))
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 400);
    assert_eq!(json_body(refused).await["error"], "invalid_request");
    app.stop().await;
}

#[tokio::test]
async fn without_a_registry_the_token_endpoint_grants_nothing() {
    let app = spawn_app().await;
    let (signing, _) = key("k");
    let token_url = app.url("/auth/token");
    let response = app
        .client
        .post(&token_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(
            &assertion(&signing, "k", "gp-a", &token_url),
            "system/Task.rs",
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 401);
    assert_eq!(json_body(response).await["error"], "invalid_client");
    app.stop().await;
}

#[tokio::test]
async fn an_open_gateway_on_a_public_address_does_not_start() {
    let dir = TempDir::new().expect("tempdir");
    let settings = Settings {
        listen: "0.0.0.0:0".parse().expect("address"),
        database: dir.path().join("sprig.db").display().to_string(),
        ..Settings::default()
    };
    match Application::build(settings).await {
        Err(StartupError::Security(error)) => {
            let message = error.to_string();
            assert!(message.contains("auth.mode = \"none\""), "{message}");
            assert!(message.contains("auth.clients"), "{message}");
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("an open gateway started on 0.0.0.0"),
    }
    // Refused before the database was made.
    assert!(!dir.path().join("sprig.db").exists());
}
