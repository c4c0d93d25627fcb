//! A 201 means the resource is on disk: a restart finds it.

use crate::helpers::{
    json_body, sample_referral_text, spawn_app, spawn_app_in, spawn_app_with, streamed_body,
};

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

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish() {
    let mut app = spawn_app().await;
    let body = sample_referral_text().into_bytes();
    let (first, rest) = body.split_at(body.len() / 2);
    let (tx, body) = streamed_body();
    tx.send(first.to_vec()).await.expect("queued");
    let request = app
        .client
        .post(app.url("/fhir/ServiceRequest"))
        .header("content-type", "application/fhir+json")
        .body(body)
        .send();
    let in_flight = tokio::spawn(request);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    // Shut down while the body is half sent, then send the rest.
    app.begin_shutdown();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let newcomer = reqwest::Client::new().get(app.url("/healthz")).send().await;
    assert!(
        newcomer.is_err(),
        "no new connections once shutdown began: {newcomer:?}"
    );
    tx.send(rest.to_vec()).await.expect("queued");
    drop(tx);
    let response = in_flight.await.expect("task").expect("response");
    assert_eq!(response.status(), 201, "the request in flight completed");
    let id = json_body(response).await["id"]
        .as_str()
        .expect("id")
        .to_owned();

    let dir = app.dir();
    app.stop().await;
    let restarted = spawn_app_in(dir, |_| {}).await;
    assert_eq!(
        restarted
            .get(&format!("/fhir/ServiceRequest/{id}"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_body_still_arriving_at_the_time_limit_gets_408_and_stores_nothing() {
    let app = spawn_app_with(|s| {
        s.limits.request_timeout_secs = 1;
        // The minimum rate would cut it first.
        s.server.min_body_bytes_per_sec = 0;
    })
    .await;
    let (tx, body) = streamed_body();
    tx.send(b"{\"resourceType\":".to_vec())
        .await
        .expect("queued");
    let response = app
        .client
        .post(app.url("/fhir/ServiceRequest"))
        .header("content-type", "application/fhir+json")
        .body(body)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 408);
    assert!(
        !response.headers().contains_key("retry-after"),
        "a 408 is the client's to resend, not a 503 to retry"
    );
    let outcome = json_body(response).await;
    assert_eq!(outcome["issue"][0]["code"], "timeout");
    assert_eq!(
        outcome["issue"][0]["details"]["coding"][0]["code"],
        "body-timeout"
    );
    drop(tx);
    assert_eq!(app.stored_version_count().await, 0);
}

#[tokio::test]
async fn a_request_whose_work_outlasts_the_time_limit_gets_503_and_stores_nothing() {
    let app = spawn_app_with(|s| {
        s.limits.request_timeout_secs = 1;
        s.sqlite.busy_timeout_ms = 10_000;
    })
    .await;
    // The one writer (SQLite) or the resources table (PostgreSQL, where
    // writers run side by side) is held elsewhere: the create, its body
    // read, waits past the limit, and its transaction must roll back.
    let held = hold_writes(&app).await;
    let response = app.post_referral(sample_referral_text()).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let outcome = json_body(response).await;
    assert_eq!(outcome["issue"][0]["code"], "timeout");
    drop(held);
    assert_eq!(app.stored_version_count().await, 0);
}

/// Something that keeps every write of `app` waiting while it lives.
pub(crate) enum Held {
    Sqlite(#[allow(dead_code)] Box<sprig::store::WriteTx>),
    Postgres(#[allow(dead_code)] sqlx::PgConnection),
}

pub(crate) async fn hold_writes(app: &crate::helpers::TestApp) -> Held {
    if !crate::helpers::on_postgres() {
        return Held::Sqlite(Box::new(app.store.begin_write().await.expect("the writer")));
    }
    let url = crate::helpers::database_for(app.dir().path()).await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut conn)
        .await
        .expect("begin");
    sqlx::query("LOCK TABLE resources IN ACCESS EXCLUSIVE MODE")
        .execute(&mut conn)
        .await
        .expect("lock");
    Held::Postgres(conn)
}
