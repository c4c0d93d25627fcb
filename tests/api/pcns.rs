//! The practice directory (`pcns_file`): the outcomes report breaks down per Primary Care
//! Network (JSON, CSV, MeasureReport strata), the caseloads page shows each practice's PCN,
//! the file is reloaded when it changes (a bad one keeps the previous directory), and a
//! mistake stops start-up with file, line and column.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sprig::app::Application;
use sprig::config::Settings;
use tempfile::TempDir;

use crate::console::{add_staff, sign_in};
use crate::helpers::{TestApp, json_body, spawn_app_with};
use crate::workflow::{Shape, api_post, submit};

const RIVERSIDE: &str =
    "[[pcn]]\ncode = \"U12345\"\nname = \"Riverside PCN\"\npractices = [\"K83999\"]\n";

fn range() -> String {
    let now = time::OffsetDateTime::now_utc().date();
    let (from, to) = (
        now - time::Duration::days(365),
        now + time::Duration::days(365),
    );
    format!("from={from}&to={to}")
}

/// The plan metric's PCN rows: (pcn, name, eligible, missing).
async fn plan_by_pcn(app: &TestApp) -> Vec<(String, Value, u64, u64)> {
    let report = json_body(app.get(&format!("/api/reports/outcomes?{}", range())).await).await;
    report["pcn_rows"]
        .as_array()
        .expect("pcn_rows")
        .iter()
        .filter(|r| r["metric"] == "initial-assessment-with-plan")
        .map(|r| {
            (
                r["pcn"].as_str().expect("pcn").to_owned(),
                r["pcn_name"].clone(),
                r["eligible"].as_u64().expect("n"),
                r["missing"].as_u64().expect("n"),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_report_breaks_down_per_pcn_and_the_directory_reloads() {
    let dir = TempDir::new().expect("dir");
    let file = dir.path().join("pcns.toml");
    std::fs::write(&file, RIVERSIDE).expect("pcns");
    let path = file.clone();
    let app = spawn_app_with(move |s| {
        s.pcns_file = Some(path);
        s.auth.reload_poll_secs = 1;
    })
    .await;
    let (id, status, _) = submit(&app, Shape::Resource, &Shape::Resource.example()).await;
    assert_eq!(status, 201);
    let response = api_post(
        &app,
        &format!("/api/referrals/{id}/transitions"),
        json!({"to": "accepted"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        plan_by_pcn(&app).await,
        vec![("U12345".to_owned(), json!("Riverside PCN"), 1, 1)]
    );
    let csv = app
        .get(&format!("/api/reports/outcomes?{}&format=csv", range()))
        .await
        .text()
        .await
        .expect("csv");
    assert!(
        csv.lines()
            .any(|l| l.starts_with("initial-assessment-with-plan,")
                && l.ends_with(",,1,0,1,,,U12345")),
        "{csv}"
    );
    let fhir = json_body(
        app.get(&format!("/api/reports/outcomes?{}&format=fhir", range()))
            .await,
    )
    .await;
    let stratum = fhir["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| &e["resource"])
        .find(|r| {
            r["resourceType"] == "MeasureReport"
                && r["measure"]
                    .as_str()
                    .is_some_and(|m| m.ends_with("/initial-assessment-with-plan"))
        })
        .map(|r| r["group"][0]["stratifier"][0]["stratum"][0].clone())
        .expect("a stratum");
    assert_eq!(stratum["value"]["coding"][0]["code"], "U12345", "{stratum}");

    add_staff(&app).await;
    let mina = sign_in(&app, "mina").await;
    let (status, page) = mina.get(&app, "/console/caseloads").await;
    assert_eq!(status, 200);
    assert!(page.contains("Riverside PCN"), "{page}");

    // A bad file is refused and the directory in force stays; a good one replaces it.
    std::fs::write(&file, "[[pcn]]\ncode = \"nope\"\n").expect("bad");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(plan_by_pcn(&app).await[0].0, "U12345");
    std::fs::write(&file, "").expect("empty");
    let mut moved = Vec::new();
    for _ in 0..50 {
        moved = plan_by_pcn(&app).await;
        if moved.first().is_some_and(|r| r.0 == "no PCN") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(moved, vec![("no PCN".to_owned(), Value::Null, 1, 1)]);
    app.stop().await;
}

#[tokio::test]
async fn a_mistake_in_the_pcn_directory_stops_start_up_with_file_line_and_column() {
    let dir = Arc::new(TempDir::new().expect("dir"));
    let file = dir.path().join("pcns.toml");
    std::fs::write(
        &file,
        format!(
            "{RIVERSIDE}\n[[pcn]]\ncode = \"U67890\"\nname = \"Hill\"\npractices = [\"K83999\"]\n"
        ),
    )
    .expect("pcns");
    let settings = Settings {
        listen: "127.0.0.1:0".parse().expect("address"),
        database: dir.path().join("sprig.db").display().to_string(),
        pcns_file: Some(file),
        ..Settings::default()
    };
    let error = match Application::build(settings).await {
        Ok(_) => panic!("started with a practice in two PCNs"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("pcns.toml:9:14:") && error.contains("in PCN U12345 already"),
        "{error}"
    );
}
