//! Many writers at once: nothing lost, nothing duplicated.

use std::collections::HashSet;

use futures::future::join_all;
use serde_json::json;

use crate::helpers::{json_body, sample_referral, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_creates_are_all_stored_with_unique_ids() {
    let app = spawn_app().await;
    let posts = (0..200).map(|n| {
        let mut referral = sample_referral();
        referral["identifier"][0]["value"] = json!(format!("REF-{n}"));
        let app = &app;
        async move {
            let response = app.post_referral(referral.to_string()).await;
            assert_eq!(response.status(), 201);
            let created = json_body(response).await;
            (n, created["id"].as_str().expect("id").to_owned())
        }
    });
    let created = join_all(posts).await;
    let ids: HashSet<&str> = created.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids.len(), 200, "ids are unique");

    let reads = created.iter().map(|(n, id)| {
        let app = &app;
        async move {
            let response = app.get(&format!("/fhir/ServiceRequest/{id}")).await;
            assert_eq!(response.status(), 200);
            let body = json_body(response).await;
            assert_eq!(body["identifier"][0]["value"], format!("REF-{n}"));
        }
    });
    join_all(reads).await;
}
