//! Hostile load and bad input (issue 19): the memory budget for request
//! bodies with real sockets and many large bodies at once, per-field limits,
//! and the strict reading of what a client sends.

use std::time::Duration;

use crate::helpers::{issues, json_body, sample_referral, spawn_app_with, streamed_body};

/// The sample referral, identified by `n` (each a new referral), padded with
/// whitespace to `size` bytes: large, still valid.
fn large_referral(size: usize, n: usize) -> Vec<u8> {
    let mut referral = sample_referral();
    referral["identifier"][0]["value"] = format!("REF-BUDGET-{n}").into();
    let mut body = serde_json::to_vec(&referral).unwrap();
    body.resize(size.max(body.len()), b' ');
    body
}

#[tokio::test]
async fn a_storm_of_large_bodies_queues_within_the_budget_and_the_rest_get_503() {
    const BODY: usize = 200 * 1024;
    let app = spawn_app_with(|s| {
        s.limits.max_body_bytes = 256 * 1024;
        // Room for three bodies of unknown length (each weighs the limit).
        s.limits.body_budget_bytes = 3 * 256 * 1024;
        s.limits.body_budget_wait_ms = 500;
    })
    .await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    // Eight chunked uploads at once, each holding its first 1 KiB back.
    let mut senders = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..8 {
        let (tx, body) = streamed_body();
        let request = client
            .post(app.url("/fhir/ServiceRequest"))
            .header("content-type", "application/fhir+json")
            .body(body)
            .send();
        answers.push(tokio::spawn(request));
        senders.push(tx);
    }
    let bodies: Vec<_> = (0..8).map(|n| large_referral(BODY, n)).collect();
    for (tx, body) in senders.iter().zip(&bodies) {
        tx.send(body[..1024].to_vec()).await.unwrap();
    }
    // Five find no room within the wait: 503 with Retry-After, before their
    // bodies are finished. The probe still answers while the budget is full.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let probe = app.get("/healthz").await;
    assert_eq!(probe.status(), 200);
    let mut refused = Vec::new();
    for (i, answer) in answers.iter().enumerate() {
        if answer.is_finished() {
            refused.push(i);
        }
    }
    assert_eq!(refused.len(), 5, "refused: {refused:?}");
    for (tx, body) in senders.into_iter().zip(&bodies) {
        // Finished even for the refused ones (their answers are in already).
        let _ = tx.send(body[1024..].to_vec()).await;
    }
    let mut created = 0;
    for (i, answer) in answers.into_iter().enumerate() {
        let response = answer.await.unwrap().expect("answered");
        if refused.contains(&i) {
            assert_eq!(response.status(), 503);
            assert_eq!(response.headers()["retry-after"], "1");
            let outcome = json_body(response).await;
            assert_eq!(issues(&outcome)[0]["code"], "transient");
        } else {
            assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
            created += 1;
        }
    }
    assert_eq!(created, 3);
    // Every acknowledged create is stored, and only those.
    let stored = json_body(app.get("/fhir/ServiceRequest?_summary=count").await).await;
    assert_eq!(stored["total"], 3, "{stored}");

    // Once the storm is over the budget is whole again: a declared-length
    // body is admitted at once, and several run side by side.
    let mut creates = Vec::new();
    for n in 10..13 {
        let client = client.clone();
        let url = app.url("/fhir/ServiceRequest");
        let body = large_referral(BODY, n);
        creates.push(tokio::spawn(async move {
            client
                .post(url)
                .header("content-type", "application/fhir+json")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for create in creates {
        assert_eq!(create.await.unwrap(), 201);
    }
    app.stop().await;
}

#[tokio::test]
async fn the_service_api_answers_a_full_budget_with_a_problem_and_retry_after() {
    let app = spawn_app_with(|s| {
        s.limits.max_body_bytes = 64 * 1024;
        s.limits.body_budget_bytes = 64 * 1024;
        s.limits.body_budget_wait_ms = 200;
    })
    .await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    // A chunked body holds the whole budget.
    let (tx, body) = streamed_body();
    let held = tokio::spawn(
        client
            .post(app.url("/fhir/ServiceRequest"))
            .header("content-type", "application/fhir+json")
            .body(body)
            .send(),
    );
    tx.send(b"{".to_vec()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = client
        .post(app.url("/api/referrals/x/notes"))
        .header("content-type", "application/json")
        .body("{\"text\":\"a note\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    // A request without a body is not held by the budget.
    assert_eq!(app.get("/fhir/metadata").await.status(), 200);
    drop(tx);
    let answer = held.await.unwrap().unwrap();
    assert_eq!(answer.status(), 400);
    app.stop().await;
}
