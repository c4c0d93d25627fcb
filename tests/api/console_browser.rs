//! The console in a real browser (issue 21): `tests/clients/console.mjs` drives Debian's
//! Chromium through Playwright against a real Sprig delivering to a wiremock GP practice.
//! A referral sent over FHIR is worked to completion through the console's forms; then
//! the practice must have received every Task version, in order, and the SWEMWBS
//! Observation between the versions around it. Screenshots go to
//! `CONSOLE_SCREENSHOTS` (the README's `docs/console/` were made so), else to
//! Cargo's test temp dir.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sprig::identity::{StaffRole, staff};
use tempfile::TempDir;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{json_body, sample_referral_text, spawn_app_in};
use crate::real_clients::{node_client, run};

const PASSWORD: &str = "correct horse battery staple";

fn screenshots() -> PathBuf {
    match std::env::var_os("CONSOLE_SCREENSHOTS") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots"),
    }
}

#[tokio::test]
async fn a_link_worker_works_a_referral_in_chromium_and_the_gp_hears_each_step() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is needed (apt-get install -y chromium; .ci/run installs it)"
    );
    let folder = tokio::task::spawn_blocking(node_client)
        .await
        .expect("install");
    let gp = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path_regex(r"^/fhir/Task/[A-Za-z0-9.-]+$"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&gp)
        .await;
    Mock::given(method("POST"))
        .and(path("/fhir/Observation"))
        .respond_with(ResponseTemplate::new(201))
        .mount(&gp)
        .await;
    let dir = Arc::new(TempDir::new().expect("temporary directory"));
    let registry = dir.path().join("endpoints.toml");
    std::fs::write(
        &registry,
        format!(
            "[[endpoint]]\nods_code = \"K83999\"\nbase_url = \"{}/fhir\"\nmode = \"rest\"\nauth = {{ type = \"none\" }}\n",
            gp.uri()
        ),
    )
    .expect("registry");
    let app = spawn_app_in(dir, |settings| {
        settings.delivery.endpoints = Some(registry);
        settings.delivery.poll_interval_ms = 50;
    })
    .await;
    for (username, name, role) in [
        ("amara", "Amara Okafor", StaffRole::LinkWorker),
        ("mina", "Mina Shah", StaffRole::ServiceManager),
        ("ada", "Ada Lovelace", StaffRole::Administrator),
    ] {
        staff::add_account(&app.store, username, name, role, PASSWORD.to_owned())
            .await
            .expect("account");
    }
    // Someone who signed in through the identity provider, for the people page.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    app.store
        .insert_session(&sprig::store::sessions::SessionRow {
            token_hash: "0".repeat(64),
            username: "lee".to_owned(),
            csrf_token: "csrf".to_owned(),
            created_at: now,
            last_seen_at: now,
            expires_at: now + 3600,
            role: Some("link_worker".to_owned()),
            display_name: Some("Lee Provider".to_owned()),
            kept: None,
        })
        .await
        .expect("a provider's person");
    let created = app.post_referral(sample_referral_text()).await;
    assert_eq!(created.status(), 201);
    let id = json_body(created).await["id"]
        .as_str()
        .expect("id")
        .to_owned();

    let base = app.address.clone();
    let output = tokio::task::spawn_blocking(move || {
        run(
            Command::new("node")
                .arg(folder.join("console.mjs"))
                .arg(base)
                .arg(screenshots())
                .arg(PASSWORD),
            "the console in Chromium",
        )
    })
    .await
    .expect("browser ran");
    assert!(output.contains("ok all"), "{output}");

    // Every change reached the practice, in order.
    let detail = json_body(app.get(&format!("/api/referrals/{id}")).await).await;
    assert_eq!(detail["stage"], "completed");
    let task = detail["task_id"].as_str().expect("task").to_owned();
    let started = Instant::now();
    let received = loop {
        let received = gp.received_requests().await.unwrap_or_default();
        // Task versions 1 (received) to 8 (completed, after the outcome's version 6) and
        // the Observation.
        if received.len() >= 9 || started.elapsed() > Duration::from_secs(30) {
            break received;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let sent: Vec<(String, String)> = received
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).expect("JSON");
            (
                body["resourceType"].as_str().unwrap_or_default().to_owned(),
                body["meta"]["versionId"]
                    .as_str()
                    .or_else(|| body["id"].as_str())
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    let task_versions: Vec<u32> = received
        .iter()
        .filter(|r| r.method.as_str() == "PUT" && r.url.path().ends_with(&task))
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).expect("JSON");
            body["meta"]["versionId"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .expect("versionId")
        })
        .collect();
    assert_eq!(task_versions, (1..=8).collect::<Vec<_>>(), "{sent:?}");
    let observation = sent
        .iter()
        .position(|(t, _)| t == "Observation")
        .expect("the SWEMWBS Observation reached the practice");
    let version_of = |v: &str| {
        sent.iter()
            .position(|(t, version)| t == "Task" && version == v)
            .expect("task version")
    };
    assert!(
        version_of("5") < observation && observation < version_of("7"),
        "{sent:?}"
    );
    app.stop().await;
}

/// The milestone form and the reports page in Chromium (`tests/clients/console_reports.mjs`):
/// axe-core on each page and a screenshot; the drill-down reaches the referral.
#[tokio::test]
async fn milestones_and_the_reports_page_in_chromium() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is needed (apt-get install -y chromium; .ci/run installs it)"
    );
    let folder = tokio::task::spawn_blocking(node_client)
        .await
        .expect("install");
    let dir = Arc::new(TempDir::new().expect("temporary directory"));
    let app = spawn_app_in(dir, |_| {}).await;
    for (username, name, role) in [
        ("amara", "Amara Okafor", StaffRole::LinkWorker),
        ("mina", "Mina Shah", StaffRole::ServiceManager),
    ] {
        staff::add_account(&app.store, username, name, role, PASSWORD.to_owned())
            .await
            .expect("account");
    }
    let created = app.post_referral(sample_referral_text()).await;
    assert_eq!(created.status(), 201);
    let id = json_body(created).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let accepted = app
        .client
        .post(app.url(&format!("/api/referrals/{id}/transitions")))
        .json(&serde_json::json!({"to": "accepted"}))
        .send()
        .await
        .expect("accept");
    assert_eq!(accepted.status(), 200);
    let day = time::OffsetDateTime::now_utc().date().to_string();
    let base = app.address.clone();
    let output = tokio::task::spawn_blocking(move || {
        run(
            Command::new("node")
                .arg(folder.join("console_reports.mjs"))
                .arg(base)
                .arg(screenshots())
                .arg(PASSWORD)
                .arg(id)
                .arg(day),
            "the reports page in Chromium",
        )
    })
    .await
    .expect("browser ran");
    assert!(output.contains("ok all"), "{output}");
    app.stop().await;
}
