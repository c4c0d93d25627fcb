//! A 201 means the resource is on disk: a restart finds it.

use crate::helpers::{json_body, sample_referral_text, spawn_app, spawn_app_in};

#[tokio::test]
async fn a_created_referral_survives_a_restart() {
    let app = spawn_app().await;
    let created = json_body(app.post_referral(sample_referral_text()).await).await;
    let id = created["id"].as_str().expect("id").to_owned();
    let dir = app.dir();
    app.stop().await;

    let restarted = spawn_app_in(dir, |_| {}).await;
    let read = restarted.get(&format!("/fhir/ServiceRequest/{id}")).await;
    assert_eq!(read.status(), 200);
    assert_eq!(json_body(read).await, created);
    let ready = restarted.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    restarted.stop().await;
}
