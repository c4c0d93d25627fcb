//! The console's reports page (`/console/reports`): the outcomes report per metric and
//! period with its charts and the tables behind them, the service summary, the exports,
//! and a drill-down from a count to the referrals behind it (managers only); link workers
//! are refused.

use serde_json::json;

use crate::console::{add_staff, sign_in};
use crate::helpers::spawn_app;
use crate::workflow::{Shape, api_post, submit};

#[tokio::test]
async fn a_manager_reads_the_reports_and_drills_down_to_the_referrals() {
    let app = spawn_app().await;
    add_staff(&app).await;
    let (id, status, _) = submit(&app, Shape::Resource, &Shape::Resource.example()).await;
    assert_eq!(status, 201);
    let response = api_post(
        &app,
        &format!("/api/referrals/{id}/transitions"),
        json!({"to": "accepted"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let today = time::OffsetDateTime::now_utc().date().to_string();
    for kind in ["initial-assessment", "action-plan"] {
        let response = api_post(
            &app,
            &format!("/api/referrals/{id}/milestones"),
            json!({"kind": kind, "on": today}),
        )
        .await;
        assert_eq!(response.status(), 201);
    }
    let mina = sign_in(&app, "mina").await;
    let (status, page) = mina.get(&app, "/console/reports?period=month").await;
    assert_eq!(status, 200, "{page}");
    for expected in [
        "Initial assessment with action plan completed",
        "<svg",
        "role=\"img\"",
        "1 of 1",
        "Service summary",
        "Referrals received per month",
        "/console/reports/export?",
    ] {
        assert!(page.contains(expected), "{expected}: {page}");
    }
    // The achieved count links to the referrals behind it.
    let start = page
        .find("href=\"/console/reports/referrals?")
        .expect("a drill-down link")
        + "href=\"".len();
    let href = page[start..]
        .split('"')
        .next()
        .expect("href")
        .replace("&amp;", "&");
    let (status, behind) = mina.get(&app, &href).await;
    assert_eq!(status, 200, "{href}");
    assert!(
        behind.contains(&format!("href=\"/console/referrals/{id}\"")),
        "{behind}"
    );
    let (status, csv) = mina.get(&app, "/console/reports/export?format=csv").await;
    assert_eq!(status, 200);
    assert!(csv.starts_with("metric,period,practice,eligible"), "{csv}");
    let (status, detail) = mina
        .get(&app, "/console/reports/export?format=detail-csv")
        .await;
    assert_eq!(status, 200);
    assert!(detail.contains(&id), "{detail}");
    let (status, _) = mina
        .get(&app, "/console/reports?from=2026-12-01&to=2020-01-01")
        .await;
    assert_eq!(status, 400);
    // A date, period or format that cannot be read is said to be so, not replaced by the
    // default (a commissioner would read the wrong year's figures as the ones asked for).
    for bad in [
        "/console/reports?from=2026-13-01",
        "/console/reports?to=yesterday",
        "/console/reports?period=week",
        "/console/reports/export?format=xlsx",
    ] {
        let (status, _) = mina.get(&app, bad).await;
        assert_eq!(status, 400, "{bad}");
    }

    let amara = sign_in(&app, "amara").await;
    let (status, _) = amara.get(&app, "/console/reports").await;
    assert_eq!(status, 403);
    app.stop().await;
}
