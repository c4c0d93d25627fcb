//! Two real `sprig serve` processes on one PostgreSQL database, one killed with
//! `kill -9` in the middle of ingest and delivery (issue 20): every referral either
//! answered is readable from the survivor, and every committed update reaches the GP
//! endpoint, in order per referral, once the dead process's leases lapse. On SQLite
//! (one process per file) there is nothing to share, and the test returns at once.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Row;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::binary::{Server, start};
use crate::helpers::{database_for, on_postgres, sample_referral_text};

/// A referral for practice K83999 sent to `server`: its id when acknowledged.
async fn refer(client: &reqwest::Client, server: &str) -> Option<String> {
    let response = client
        .post(format!("{server}/fhir/ServiceRequest"))
        .header("content-type", "application/fhir+json")
        .body(sample_referral_text())
        .send()
        .await
        .ok()?;
    if response.status() != 201 {
        return None;
    }
    let location = response
        .headers()
        .get("location")?
        .to_str()
        .ok()?
        .to_owned();
    location
        .split("ServiceRequest/")
        .nth(1)?
        .split('/')
        .next()
        .map(str::to_owned)
}

/// Moves the referral on at `server`; whether the change was acknowledged.
async fn transition(client: &reqwest::Client, server: &str, id: &str, to: &str) -> bool {
    client
        .post(format!("{server}/api/referrals/{id}/transitions"))
        .json(&json!({"to": to}))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

fn kill_9(server: &mut Server) {
    let pid = i32::try_from(server.child.id()).expect("pid");
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    server.child.wait().expect("the killed process is reaped");
}

#[tokio::test]
async fn a_process_killed_mid_ingest_and_delivery_loses_nothing_acknowledged() {
    if !on_postgres() {
        return;
    }
    let dir = tempfile::TempDir::new().expect("temporary directory");
    let database = database_for(dir.path()).await;
    // The GP endpoint answers after a while, so sends are in flight when one dies.
    let gp = MockServer::start().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(150)))
        .mount(&gp)
        .await;
    let registry = dir.path().join("endpoints.toml");
    std::fs::write(
        &registry,
        format!(
            "[[endpoint]]\nods_code = \"K83999\"\nbase_url = \"{}/fhir\"\nmode = \"rest\"\n\
             auth = {{ type = \"none\" }}\ntimeout_secs = 1\n",
            gp.uri()
        ),
    )
    .expect("registry");
    let registry_path = registry.display().to_string();
    let env = [
        ("SPRIG_DELIVERY__ENDPOINTS", registry_path.as_str()),
        ("SPRIG_DELIVERY__POLL_INTERVAL_MS", "50"),
        ("SPRIG_DELIVERY__INITIAL_BACKOFF_MS", "100"),
        ("SPRIG_DELIVERY__MAX_BACKOFF_SECS", "1"),
        // The shortest lease a 1 s endpoint timeout allows: 4 × 1 s + 5 s.
        ("SPRIG_DELIVERY__LEASE_SECS", "1"),
    ];
    let database_path = std::path::Path::new(&database);
    let mut doomed = start(database_path, &env);
    let survivor = start(database_path, &env);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");

    // Ingest and updates at both, until the doomed one is killed part way.
    let mut acknowledged = Vec::new();
    let mut sends = tokio::task::JoinSet::new();
    for round in 0..24 {
        let target = if round % 2 == 0 {
            doomed.address.clone()
        } else {
            survivor.address.clone()
        };
        let client = client.clone();
        sends.spawn(async move {
            let id = refer(&client, &target).await?;
            // Each acknowledged change is an update the GP must get, in order.
            let mut moved = 0;
            for to in ["accepted", "contacted"] {
                if !transition(&client, &target, &id, to).await {
                    break;
                }
                moved += 1;
            }
            Some((id, moved))
        });
        if round == 12 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            kill_9(&mut doomed);
        }
    }
    while let Some(result) = sends.join_next().await {
        if let Some(done) = result.expect("the sender task ran") {
            acknowledged.push(done);
        }
    }
    assert!(acknowledged.len() >= 12, "{acknowledged:?}");

    // Every acknowledged referral, and every acknowledged change, is at the survivor.
    for (id, moved) in &acknowledged {
        let response = client
            .get(format!("{}/api/referrals/{id}", survivor.address))
            .send()
            .await
            .expect("read");
        assert_eq!(response.status(), 200, "{id} acknowledged but not held");
        let record: Value = response.json().await.expect("JSON");
        // At least as far as acknowledged (a change that committed as its process died
        // may be there too, unacknowledged).
        let stage = record["stage"].as_str().unwrap_or_default();
        let reached = ["received", "accepted", "contacted"]
            .iter()
            .position(|s| *s == stage);
        assert!(
            reached.is_some_and(|r| r >= *moved),
            "{id}: acknowledged {moved} changes, holds stage {stage}"
        );
    }

    // Every committed update reaches the GP: the dead process's leases lapse and the
    // survivor sends them, within the lease (9 s, plus 5 s for a claim's wait in the
    // worker's queue) and a few retries.
    let pool = sqlx::PgPool::connect(&database).await.expect("database");
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let (pending,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE state <> 'delivered'")
                .fetch_one(&pool)
                .await
                .expect("count");
        if pending == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{pending} committed updates never delivered"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // In order per referral: the versions of each Task as the GP first received them
    // are the outbox's order (a send in flight at the kill may arrive twice).
    let rows = sqlx::query("SELECT resource_id, version_id FROM outbox ORDER BY seq")
        .fetch_all(&pool)
        .await
        .expect("outbox");
    let mut committed: HashMap<String, Vec<i64>> = HashMap::new();
    for row in rows {
        committed
            .entry(row.get::<String, _>("resource_id"))
            .or_default()
            .push(row.get("version_id"));
    }
    let mut received: HashMap<String, Vec<i64>> = HashMap::new();
    for request in gp.received_requests().await.unwrap_or_default() {
        let task: Value = serde_json::from_slice(&request.body).expect("a Task");
        let id = task["id"].as_str().expect("id").to_owned();
        let version = task["meta"]["versionId"]
            .as_str()
            .and_then(|v| v.parse::<i64>().ok())
            .expect("versionId");
        let seen = received.entry(id).or_default();
        if !seen.contains(&version) {
            seen.push(version);
        }
    }
    for (task, versions) in &committed {
        assert_eq!(
            received.get(task),
            Some(versions),
            "Task {task}: committed {versions:?}"
        );
    }
    pool.close().await;
    crate::binary::terminate(survivor);
}
