//! Content negotiation and health probes.

use crate::helpers::{json_body, sample_referral_text, spawn_app};

#[tokio::test]
async fn json_formats_are_served_as_asked() {
    let app = spawn_app().await;
    let created = json_body(app.post_referral(sample_referral_text()).await).await;
    let path = format!(
        "/fhir/ServiceRequest/{}",
        created["id"].as_str().expect("id")
    );

    let get = |accept: &'static str, query: &'static str| {
        app.client
            .get(app.url(&format!("{path}{query}")))
            .header("accept", accept)
            .send()
    };
    let plain = get("application/json", "").await.expect("sent");
    assert_eq!(plain.status(), 200);
    assert_eq!(
        plain.headers()["content-type"],
        "application/json; charset=utf-8"
    );

    let fhir = get("application/fhir+json; fhirVersion=4.0", "")
        .await
        .expect("sent");
    assert_eq!(
        fhir.headers()["content-type"],
        "application/fhir+json; charset=utf-8"
    );

    let format_wins = get("application/fhir+xml", "?_format=json")
        .await
        .expect("sent");
    assert_eq!(format_wins.status(), 200);

    let wrong_version = get("application/fhir+json; fhirVersion=5.0", "")
        .await
        .expect("sent");
    assert_eq!(wrong_version.status(), 406);

    let pretty = get("*/*", "?_pretty=true").await.expect("sent");
    let text = pretty.text().await.expect("body");
    assert!(
        text.contains("\n  \"resourceType\": \"ServiceRequest\""),
        "{text}"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).expect("json"),
        created
    );

    let plain_json_post = app
        .client
        .post(app.url("/fhir/ServiceRequest"))
        .header("content-type", "application/json")
        .body(sample_referral_text())
        .send()
        .await
        .expect("sent");
    assert_eq!(plain_json_post.status(), 201);
}

#[tokio::test]
async fn health_and_readiness_probes_answer() {
    let app = spawn_app().await;
    let alive = app.get("/healthz").await;
    assert_eq!(alive.status(), 200);
    assert_eq!(json_body(alive).await["status"], "pass");
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    assert_eq!(json_body(ready).await["checks"]["database"], "pass");
}
