//! Outcome evidence over HTTP: the measures a form renders from, follow-ups computed from
//! the schedule, and the outcomes report, whose counts must equal what a seeded synthetic
//! service of a few thousand referrals (written straight into the real SQLite store) says
//! they are, per metric, quarter and practice. Custom definitions (`outcomes_dir`) load, and
//! a mistake in one stops start-up with file, line and column.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use sprig::app::Application;
use sprig::config::Settings;
use tempfile::TempDir;
use time::{Date, Duration, Month};

use crate::helpers::{TestApp, json_body, spawn_app, spawn_app_with};
use crate::workflow::{Shape, api_post, submit};

async fn get_json(app: &TestApp, path: &str) -> Value {
    let response = app.get(path).await;
    assert_eq!(response.status(), 200, "GET {path}");
    json_body(response).await
}

#[tokio::test]
async fn measures_are_served_for_forms() {
    let app = spawn_app().await;
    let measures = get_json(&app, "/api/measures").await;
    let items = measures["items"].as_array().expect("items");
    let codes: Vec<&str> = items.iter().filter_map(|m| m["code"].as_str()).collect();
    assert_eq!(codes, ["ons4", "swemwbs", "ucla3", "wemwbs"]);
    let swemwbs = &items[1];
    assert_eq!(swemwbs["coding"]["code"], "718466001");
    assert_eq!(swemwbs["items"].as_array().map(Vec::len), Some(7));
    assert_eq!(swemwbs["conversion"]["values"][1], "9.51");
    assert!(
        swemwbs["items"][0].get("text").is_none(),
        "licensed wording is not shipped"
    );
    let ons4 = &items[0];
    assert_eq!(ons4["items"][3]["reversed"], true);
    assert_eq!(
        ons4["items"][0]["answers"].as_array().map(Vec::len),
        Some(11)
    );
    assert_eq!(items[3]["schedule"]["follow_ups"][0]["months"], 6);
    app.stop().await;
}

#[tokio::test]
async fn a_referral_s_follow_ups_and_its_count_in_the_report() {
    let app = spawn_app().await;
    let (id, status, _) = submit(&app, Shape::Resource, &Shape::Resource.example()).await;
    assert_eq!(status, 201);
    for to in ["accepted", "contacted", "assessment-done", "plan-agreed"] {
        let response = api_post(
            &app,
            &format!("/api/referrals/{id}/transitions"),
            json!({"to": to}),
        )
        .await;
        assert_eq!(response.status(), 200, "{to}");
    }
    // Baseline 10 January, 6-month follow-up 12 July (+4, above the threshold of 3).
    let mut observations = Vec::new();
    for (answers, at) in [
        ([3i64; 14].to_vec(), "2026-01-10T10:00:00Z"),
        (
            [3, 3, 3, 3, 4, 4, 4, 4, 3, 3, 3, 3, 3, 3].to_vec(),
            "2026-07-12T10:00:00Z",
        ),
    ] {
        let response = api_post(
            &app,
            &format!("/api/referrals/{id}/outcomes"),
            json!({"measure": "wemwbs", "answers": answers, "recorded_at": at}),
        )
        .await;
        assert_eq!(response.status(), 201);
        observations.push(
            json_body(response).await["id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    let detail = get_json(&app, &format!("/api/referrals/{id}")).await;
    let six = detail["follow_ups"]
        .as_array()
        .and_then(|f| {
            f.iter()
                .find(|f| f["measure"] == "wemwbs" && f["follow_up"] == "6m")
        })
        .expect("the 6-month WEMWBS follow-up");
    assert_eq!(
        (six["state"].as_str(), six["date"].as_str()),
        (Some("done"), Some("2026-07-10"))
    );

    let due = get_json(&app, "/api/follow-ups?due=all&as_of=2027-01-05").await;
    let twelve: Vec<&Value> = due["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|f| f["referral_id"] == id.as_str())
        .collect();
    assert_eq!(twelve.len(), 1, "{due}");
    assert_eq!(
        (twelve[0]["follow_up"].as_str(), twelve[0]["state"].as_str()),
        (Some("12m"), Some("due"))
    );
    let this_week = get_json(&app, "/api/follow-ups?as_of=2027-01-13").await;
    assert_eq!(this_week["items"][0]["state"], "overdue", "{this_week}");
    let later = get_json(&app, "/api/follow-ups?due=missed&as_of=2027-03-01").await;
    assert_eq!(later["items"][0]["follow_up"], "12m");

    let report = get_json(
        &app,
        "/api/reports/outcomes?from=2026-07-01&to=2026-09-30&as_of=2026-12-31",
    )
    .await;
    let row = report["rows"]
        .as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["metric"] == "wemwbs-improvement-6m" && r["practice"] == "all")
        })
        .expect("a WEMWBS row");
    assert_eq!(
        (
            row["eligible"].as_u64(),
            row["achieved"].as_u64(),
            row["missing"].as_u64()
        ),
        (Some(1), Some(1), Some(0))
    );
    assert_eq!(row["period"], "2026-Q3");
    let wemwbs_6m = report["distributions"]
        .as_array()
        .and_then(|d| {
            d.iter()
                .find(|d| d["measure"] == "wemwbs" && d["follow_up"] == "6m")
        })
        .expect("distribution");
    assert_eq!(
        (wemwbs_6m["n"].as_u64(), wemwbs_6m["median"].as_str()),
        (Some(1), Some("4"))
    );

    // Every number is traceable: the detail names the referral and both Observations.
    let response = app
        .get("/api/reports/outcomes/detail?from=2026-07-01&to=2026-09-30&as_of=2026-12-31")
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
    let csv = response.text().await.expect("csv");
    let line = csv
        .lines()
        .find(|l| l.starts_with("wemwbs-improvement-6m,"))
        .expect("a detail line");
    assert!(
        line.contains(&id)
            && line.contains(&observations[0])
            && line.contains(&observations[1])
            // The change, then complex_needs (empty: not a complexity metric).
            && line.ends_with(",4,"),
        "{line}"
    );
    // The counts carry no ids.
    let counts = app
        .get("/api/reports/outcomes?from=2026-07-01&to=2026-09-30&format=csv")
        .await
        .text()
        .await
        .expect("csv");
    assert!(
        counts.starts_with("metric,period,practice,eligible,achieved,missing")
            && !counts.contains(&id),
        "{counts}"
    );
    let fhir = get_json(
        &app,
        "/api/reports/outcomes?from=2026-07-01&to=2026-09-30&as_of=2026-12-31&format=fhir",
    )
    .await;
    let reports: Vec<&Value> = fhir["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == "MeasureReport")
        .collect();
    let m = reports
        .iter()
        .find(|r| {
            r["measure"]
                .as_str()
                .is_some_and(|u| u.ends_with("/wemwbs-improvement-6m"))
        })
        .expect("a MeasureReport");
    assert_eq!(m["group"][0]["population"][1]["count"], 1);
    assert_eq!(
        m["period"],
        json!({"start": "2026-07-01", "end": "2026-09-30"})
    );
    let svg = app
        .get("/api/reports/outcomes?from=2026-07-01&to=2026-09-30&format=svg")
        .await;
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    let service = get_json(&app, "/api/reports/service?from=2026-01-01&to=2027-12-31").await;
    assert_eq!(
        (service["received"].as_u64(), service["accepted"].as_u64()),
        (Some(1), Some(1)),
        "{service}"
    );

    for bad in [
        "/api/reports/outcomes?from=2026-07-01",
        "/api/reports/outcomes?from=2026-07-01&to=2026-06-30",
        "/api/reports/outcomes?from=2026-07-01&to=2026-09-30&format=xls",
        "/api/reports/outcomes?from=July&to=2026-09-30",
        "/api/follow-ups?due=someday",
        "/api/follow-ups?measure=nope",
    ] {
        let response = app.get(bad).await;
        assert_eq!(response.status(), 400, "{bad}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{bad}"
        );
    }
    app.stop().await;
}

// ── The synthetic service ───────────────────────────────────────────────────────────────

/// The calendar's `date + months` with the day clamped, written again here so the expected
/// counts do not come from the code under test.
fn plus_months(date: Date, months: i32) -> Date {
    let total = date.year() * 12 + date.month() as i32 - 1 + months;
    let (year, month) = (
        total / 12,
        Month::try_from((total % 12 + 1) as u8).expect("month"),
    );
    let day = date.day().min(month.length(year));
    Date::from_calendar_date(year, month, day).expect("date")
}

fn quarter(date: Date) -> String {
    format!("{}-Q{}", date.year(), (date.month() as u8 - 1) / 3 + 1)
}

fn instant(date: Date) -> String {
    format!("{date}T10:00:00.000Z")
}

/// (metric, quarter, practice) → (eligible, achieved, missing).
type Expected = BTreeMap<(String, String, String), (u64, u64, u64)>;

fn count(
    expected: &mut Expected,
    metric: &str,
    quarter: &str,
    practice: &str,
    achieved: bool,
    missing: bool,
) {
    for p in [practice, "all"] {
        let cell = expected
            .entry((metric.into(), quarter.into(), p.into()))
            .or_default();
        cell.0 += 1;
        cell.1 += u64::from(achieved);
        cell.2 += u64::from(missing);
    }
}

/// Writes `n` referrals with known stages and WEMWBS scores into the store, and returns the
/// counts the report must give for the plan milestone and WEMWBS at 6 months.
async fn generate(app: &TestApp, n: usize, seed: u64) -> Expected {
    let mut rng = fastrand::Rng::with_seed(seed);
    let pool = app.db_pool().await;
    let mut tx = pool.begin().await.expect("begin");
    let start = Date::from_calendar_date(2026, Month::January, 1).expect("date");
    // Per person: the plan (date, referral id, practice) that counts: the earliest.
    let mut plans: BTreeMap<String, (Date, String, String)> = BTreeMap::new();
    let mut missing_plans: Vec<(Date, String)> = Vec::new();
    let mut expected = Expected::new();
    let mut people: Vec<(String, String)> = Vec::new();
    for i in 0..n {
        let id = format!("syn-{i:05}");
        let repeat = i > 10 && rng.u32(0..100) < 3;
        let (nhs, practice) = if repeat {
            // A second referral of someone already referred (same practice).
            people[rng.usize(0..people.len())].clone()
        } else {
            let person = (format!("900{i:07}"), format!("P{}", rng.u32(0..5)));
            people.push(person.clone());
            person
        };
        let received = start + Duration::days(rng.i64(0..365));
        let mut stages: Vec<(&str, Date)> = vec![("received", received)];
        let accepted = rng.u32(0..100) < 80;
        let mut plan = None;
        let mut withdrawn = false;
        if accepted {
            stages.push(("accepted", received + Duration::days(2)));
            if rng.u32(0..100) < 70 {
                let on = received + Duration::days(20);
                stages.push(("plan-agreed", on));
                plan = Some(on);
            } else if rng.u32(0..100) < 40 {
                stages.push(("withdrawn", received + Duration::days(10)));
                withdrawn = true;
            }
        }
        sqlx::query(
            "INSERT INTO referrals (id, identifier_system, identifier_value, stage, fhir_status, \
             received_at, updated_at, received_as, practice_ods_code, task_id, version) \
             VALUES ($1, 'urn:syn', $1, $2, 'active', $3, $3, 'resource', $4, $1, 1)",
        )
        .bind(&id)
        .bind(stages.last().map(|s| s.0).unwrap_or("received"))
        .bind(instant(received))
        .bind(&practice)
        .execute(&mut *tx)
        .await
        .expect("referral");
        sqlx::query("INSERT INTO referral_patients (referral_id, nhs_number) VALUES ($1, $2)")
            .bind(&id)
            .bind(&nhs)
            .execute(&mut *tx)
            .await
            .expect("patient");
        for (seq, (stage, on)) in stages.iter().enumerate() {
            sqlx::query(
                "INSERT INTO referral_stage_history (referral_id, seq, stage, at, actor, task_version) \
                 VALUES ($1, $2, $3, $4, 'syn', $5)",
            )
            .bind(&id)
            .bind(seq as i64 + 1)
            .bind(*stage)
            .bind(instant(*on))
            .bind(seq as i64 + 1)
            .execute(&mut *tx)
            .await
            .expect("stage");
        }
        // The plan metric counts on milestones: the assessment, then the plan, both
        // recorded (the stage alone is no evidence).
        if let Some(on) = plan {
            for (k, (kind, day)) in [
                ("initial-assessment", on - Duration::days(5)),
                ("action-plan", on),
            ]
            .into_iter()
            .enumerate()
            {
                sqlx::query(
                    "INSERT INTO referral_milestones (id, referral_id, kind, occurred_on, \
                     recorded_at, recorded_by) VALUES ($1, $2, $3, $4, $5, 'syn')",
                )
                .bind(format!("{id}-m{k}"))
                .bind(&id)
                .bind(kind)
                .bind(day.to_string())
                .bind(instant(day))
                .execute(&mut *tx)
                .await
                .expect("milestone");
            }
        }
        match plan {
            Some(on) => {
                let kept = plans
                    .entry(nhs.clone())
                    .or_insert((on, id.clone(), practice.clone()));
                if (on, &id) < (kept.0, &kept.1) {
                    *kept = (on, id.clone(), practice.clone());
                }
            }
            None if accepted && !withdrawn => {
                missing_plans.push((received + Duration::days(2), nhs.clone()))
            }
            None => {}
        }
        // WEMWBS: a baseline at the plan for most first referrals, a 6-month follow-up
        // inside the ±4-week window for most of those.
        let Some(base_day) = plan.filter(|_| !repeat && rng.u32(0..100) < 60) else {
            continue;
        };
        let base: i64 = rng.i64(20..50);
        let mut outcomes = vec![(base_day, base)];
        let target = plus_months(base_day, 6);
        let followed = rng.u32(0..100) < 70;
        let mut delta = 0;
        if followed {
            delta = rng.i64(-5..=8);
            outcomes.push((target + Duration::days(rng.i64(-20..=20)), base + delta));
        }
        for (k, (on, total)) in outcomes.iter().enumerate() {
            sqlx::query(
                "INSERT INTO outcome_measures (id, referral_id, measure, recorded_at, entered_at, actor, total) \
                 VALUES ($1, $2, 'wemwbs', $3, $3, 'syn', $4)",
            )
            .bind(format!("{id}-w{k}"))
            .bind(&id)
            .bind(instant(*on))
            .bind(total)
            .execute(&mut *tx)
            .await
            .expect("outcome");
        }
        count(
            &mut expected,
            "wemwbs-improvement-6m",
            &quarter(target),
            &practice,
            followed && delta >= 3,
            !followed,
        );
    }
    for (on, _, practice) in plans.values() {
        count(
            &mut expected,
            "initial-assessment-with-plan",
            &quarter(*on),
            practice,
            true,
            false,
        );
    }
    // Accepted and still open without a plan: due but missing, unless the person has a plan
    // (through another referral), which is what counts for them.
    let mut seen = std::collections::BTreeSet::new();
    let mut open: Vec<(Date, String)> = missing_plans
        .into_iter()
        .filter(|(_, nhs)| !plans.contains_key(nhs))
        .collect();
    open.sort();
    for (on, nhs) in open {
        if seen.insert(nhs.clone()) {
            let practice = people
                .iter()
                .find(|p| p.0 == nhs)
                .map(|p| p.1.clone())
                .expect("person");
            count(
                &mut expected,
                "initial-assessment-with-plan",
                &quarter(on),
                &practice,
                false,
                true,
            );
        }
    }
    tx.commit().await.expect("commit");
    expected
}

#[tokio::test]
async fn a_synthetic_service_s_counts_match_the_generator() {
    let app = spawn_app().await;
    let expected = generate(&app, 3000, 20261204).await;
    let report = get_json(
        &app,
        "/api/reports/outcomes?from=2026-01-01&to=2027-12-31&as_of=2028-06-30",
    )
    .await;
    let mut got = Expected::new();
    for row in report["rows"].as_array().expect("rows") {
        let metric = row["metric"].as_str().expect("metric");
        if metric != "initial-assessment-with-plan" && metric != "wemwbs-improvement-6m" {
            continue;
        }
        got.insert(
            (
                metric.into(),
                row["period"].as_str().expect("period").into(),
                row["practice"].as_str().expect("practice").into(),
            ),
            (
                row["eligible"].as_u64().expect("n"),
                row["achieved"].as_u64().expect("n"),
                row["missing"].as_u64().expect("n"),
            ),
        );
    }
    assert!(
        expected.len() > 40,
        "the generator made a service: {}",
        expected.len()
    );
    let differences: Vec<String> = expected
        .keys()
        .chain(got.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| expected.get(*k) != got.get(*k))
        .map(|k| {
            format!(
                "{k:?}: expected {:?}, got {:?}",
                expected.get(k),
                got.get(k)
            )
        })
        .collect();
    assert!(
        differences.is_empty(),
        "{} cells differ:\n{}",
        differences.len(),
        differences.join("\n")
    );
    app.stop().await;
}

// ── Custom definitions ─────────────────────────────────────────────────────────────────

const CUSTOM: &str = r#"code = "mood-5"
name = "MOOD-5"
title = "A mood scale of the service's own"
coding = { system = "https://example.org/measures", code = "mood-5" }
higher_is_better = true
items = [
  { code = "a", min = 0, max = 4, text = "How are you?" },
  { code = "b", min = 0, max = 4 },
]
[scoring]
method = "mean"
[change]
meaningful = "0.5"
[schedule]
follow_ups = [{ key = "3m", label = "3 months", months = 3 }]
window_weeks = 2
due_soon_days = 7
[observation]
item_system = "https://example.org/measures/mood-5-item"
"#;

fn outcomes_dir(custom: &str, metrics_extra: &str) -> TempDir {
    let dir = TempDir::new().expect("dir");
    let measures = dir.path().join("measures");
    std::fs::create_dir(&measures).expect("measures dir");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/outcomes");
    for entry in std::fs::read_dir(format!("{root}/measures")).expect("shipped") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, measures.join(path.file_name().expect("name"))).expect("copy");
    }
    std::fs::write(measures.join("mood-5.toml"), custom).expect("custom");
    let metrics = std::fs::read_to_string(format!("{root}/metrics.toml")).expect("metrics");
    std::fs::write(dir.path().join("metrics.toml"), metrics + metrics_extra).expect("metrics");
    dir
}

const MOOD_METRIC: &str = "\n[[metric]]\nid = \"mood-3m\"\ntitle = \"Mood at 3 months\"\nkind = \"improvement\"\nmeasure = \"mood-5\"\nfollow_up = \"3m\"\nmin_change = \"0.5\"\n";

#[tokio::test]
async fn a_service_s_own_measure_and_metric_load_from_its_folder() {
    let dir = outcomes_dir(CUSTOM, MOOD_METRIC);
    let path = dir.path().to_path_buf();
    let app = spawn_app_with(|settings| settings.outcomes_dir = Some(path)).await;
    let measures = get_json(&app, "/api/measures").await;
    let mood = measures["items"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["code"] == "mood-5"))
        .expect("mood-5");
    assert_eq!(mood["method"], "mean");
    assert_eq!(mood["items"][0]["text"], "How are you?");
    let report = get_json(&app, "/api/reports/outcomes?from=2026-01-01&to=2026-12-31").await;
    assert!(
        report["metrics"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["id"] == "mood-3m")),
        "{report}"
    );
    app.stop().await;
}

/// A service's own complexity rule: the shipped complex-needs metric counts people with
/// a reason the service names, says so in the detail, and a recorded assessment overrides.
#[tokio::test]
async fn a_service_s_complexity_rule_finds_complex_needs_and_a_recorded_assessment_overrides_it() {
    let rule = "\n[complexity]\nmin_reasons = 5\nreason_codes = [\"bereavement\"]\n";
    let dir = outcomes_dir(CUSTOM, rule);
    let path = dir.path().to_path_buf();
    let app = spawn_app_with(|settings| settings.outcomes_dir = Some(path)).await;
    let (id, status, _) = submit(&app, Shape::Resource, &Shape::Resource.example()).await;
    assert_eq!(status, 201);
    let day = time::OffsetDateTime::now_utc().date().to_string();
    for body in [
        json!({"to": "accepted"}),
        json!({"to": "contacted"}),
        json!({"to": "plan-agreed", "milestone": {"on": day}}),
    ] {
        let response = api_post(
            &app,
            &format!("/api/referrals/{id}/transitions"),
            body.clone(),
        )
        .await;
        assert_eq!(response.status(), 200, "{body}");
    }
    let now = time::OffsetDateTime::now_utc().date();
    let range = format!(
        "from={}&to={}",
        now - time::Duration::days(365),
        now + time::Duration::days(365)
    );
    let complex = |detail: &Value| -> Vec<String> {
        detail["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|d| d["metric"] == "complex-needs-engaged")
            .map(|d| {
                format!(
                    "{} {} {}",
                    d["referral_id"].as_str().unwrap_or(""),
                    d["status"].as_str().unwrap_or(""),
                    d["complex_needs"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    let detail = get_json(
        &app,
        &format!("/api/reports/outcomes/detail?{range}&format=json"),
    )
    .await;
    assert_eq!(
        complex(&detail),
        vec![format!(
            "{id} achieved reason bereavement (rule: reason_codes)"
        )],
        "{detail}"
    );
    // The link worker's assessment overrides the rule.
    let response = api_post(
        &app,
        &format!("/api/referrals/{id}/milestones"),
        json!({"kind": "complexity", "on": day, "complex": false, "basis": "Bereavement support in place; no other needs"}),
    )
    .await;
    assert_eq!(response.status(), 201);
    let detail = get_json(
        &app,
        &format!("/api/reports/outcomes/detail?{range}&format=json"),
    )
    .await;
    assert!(complex(&detail).is_empty(), "{detail}");
    app.stop().await;
}

#[tokio::test]
async fn a_mistake_in_a_definition_stops_start_up_with_file_line_and_column() {
    for (custom, extra, at, what) in [
        (
            CUSTOM.replace("max = 4 }", "max = -4 }"),
            "",
            "mood-5.toml:8:3:",
            "min 0 is above max -4",
        ),
        (
            CUSTOM.to_string(),
            &*MOOD_METRIC.replace("\"3m\"", "\"6m\""),
            "metrics.toml:",
            "no follow-up '6m'",
        ),
        // The Observation is checked against the profile the definition names: one Sprig
        // does not hold, or a shipped measure's profile that the service's items break.
        (
            CUSTOM.replace(
                "[observation]\n",
                "[observation]\nprofile = \"https://example.org/StructureDefinition/mood\"\n",
            ),
            "",
            "mood-5.toml:1:8:",
            "not an Observation profile Sprig holds",
        ),
        (
            CUSTOM.replace(
                "[observation]\n",
                "[observation]\nprofile = \"https://sprig-gateway.org/fhir/StructureDefinition/sprig-outcome-ucla3\"\n",
            ),
            "",
            "mood-5.toml:1:8: measure 'mood-5':",
            "sprig-outcome-ucla3",
        ),
        // The service's complexity rule is checked like its metrics.
        (
            CUSTOM.to_string(),
            "\n[complexity]\n[[complexity.baseline]]\nmeasure = \"wellbeing-star\"\nat_most = \"3\"\n",
            "metrics.toml:",
            "complexity: measure 'wellbeing-star' is not defined",
        ),
    ] {
        let dir = outcomes_dir(&custom, extra);
        let db = Arc::new(TempDir::new().expect("db"));
        let settings = Settings {
            listen: "127.0.0.1:0".parse().expect("address"),
            database: db.path().join("sprig.db").display().to_string(),
            outcomes_dir: Some(dir.path().to_path_buf()),
            ..Settings::default()
        };
        let error = match Application::build(settings).await {
            Ok(_) => panic!("{what}: started"),
            Err(error) => error.to_string(),
        };
        assert!(
            error.contains(at) && error.contains(what),
            "{at} {what}: {error}"
        );
    }
}

/// A service's own measure, defined only in the test's TOML (items scored 0 to 4, the mean
/// as its score, a meaningful change of 0.5, a code in the service's own code system),
/// goes everywhere a shipped one goes: recorded through the API and through the console's
/// form (rendered from the definition), built and validated as an Observation (the generic
/// outcome profile and the definition's rules), delivered to the practice with the Task
/// that lists it, and counted by the report's metric on it.
#[tokio::test]
async fn a_service_s_own_measure_is_recorded_sent_and_reported_like_a_shipped_one() {
    use wiremock::matchers::{method, path, path_regex};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use crate::console::{add_staff, csrf, sign_in};
    use crate::delivery::{deliveries, endpoint_toml, fast, refer, transition};

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
    let definitions = outcomes_dir(CUSTOM, MOOD_METRIC);
    let folder = Arc::new(TempDir::new().expect("dir"));
    let registry = folder.path().join("endpoints.toml");
    std::fs::write(&registry, endpoint_toml("K83999", &gp.uri(), "")).expect("registry");
    let outcomes = definitions.path().to_path_buf();
    let app = crate::helpers::spawn_app_in(folder, |settings| {
        settings.outcomes_dir = Some(outcomes);
        settings.delivery.endpoints = Some(registry);
        fast(&mut settings.delivery);
    })
    .await;
    let (id, _) = refer(&app, "K83999").await;
    transition(&app, &id, "accepted").await;
    transition(&app, &id, "contacted").await;

    // Recorded through the API, scored by the definition (the mean of 1 and 2).
    let path_outcomes = format!("/api/referrals/{id}/outcomes");
    let baseline = api_post(
        &app,
        &path_outcomes,
        json!({"measure": "mood-5", "answers": [1, 2], "recorded_at": "2026-01-10T10:00:00Z"}),
    )
    .await;
    assert_eq!(baseline.status(), 201);
    let baseline = json_body(baseline).await;
    assert_eq!(baseline["measure"], "mood-5");
    assert_eq!(baseline["total"], 3, "the record keeps the sum");
    // Out of the definition's range: refused as the shipped measures are.
    let refused = api_post(
        &app,
        &path_outcomes,
        json!({"measure": "mood-5", "answers": [1, 5], "recorded_at": "2026-01-10T10:00:00Z"}),
    )
    .await;
    assert_eq!(refused.status(), 422);
    let body = json_body(refused).await;
    assert!(
        body.to_string()
            .contains("MOOD-5 item 2 is 5, but it is scored 0 to 4"),
        "{body}"
    );

    // The 3-month follow-up, in its window (the 10th of April, two weeks either side).
    let follow_up = api_post(
        &app,
        &path_outcomes,
        json!({"measure": "mood-5", "answers": [3, 4], "recorded_at": "2026-04-12T10:00:00Z"}),
    )
    .await;
    assert_eq!(follow_up.status(), 201);
    let follow_up_id = json_body(follow_up).await["id"]
        .as_str()
        .expect("id")
        .to_owned();

    // Through the console: the form comes from the definition, and posting it records.
    add_staff(&app).await;
    let manager = sign_in(&app, "mina").await;
    let (status, page) = manager
        .get(
            &app,
            &format!("/console/referrals/{id}/outcomes?measure=mood-5"),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        page.contains("How are you?") && page.contains("Item 2"),
        "{page}"
    );
    let token = csrf(&page);
    let response = manager
        .post(
            &app,
            &format!("/console/referrals/{id}/outcomes"),
            &[
                ("csrf", &token),
                ("measure", "mood-5"),
                ("item1", "2"),
                ("item2", "2"),
            ],
        )
        .await;
    assert_eq!(response.status(), 303);

    // The Observations: the service's code, one component per item, the mean as the value,
    // the generic outcome profile; validated when made (a failure would have been a 500).
    let detail = get_json(&app, &format!("/api/referrals/{id}")).await;
    let recorded = detail["outcomes"].as_array().expect("outcomes");
    assert_eq!(
        recorded.len(),
        3,
        "two through the API, one through the console"
    );
    let observation = get_json(&app, &format!("/fhir/Observation/{follow_up_id}")).await;
    assert_eq!(
        observation["meta"]["profile"][0],
        "https://sprig-gateway.org/fhir/StructureDefinition/sprig-outcome"
    );
    assert_eq!(
        observation["code"]["coding"][0],
        json!({"system": "https://example.org/measures", "code": "mood-5"})
    );
    // The mean of 3 and 4, to two decimal places (FHIR decimals keep their precision).
    assert_eq!(observation["valueQuantity"]["value"].to_string(), "3.50");
    assert_eq!(
        observation["component"][1]["code"]["coding"][0]["system"],
        "https://example.org/measures/mood-5-item"
    );
    assert_eq!(observation["component"][1]["valueInteger"], 4);

    // Delivered: every Observation posted, and the last Task lists them by the service's code.
    let started = std::time::Instant::now();
    loop {
        let all = deliveries(&app, "").await;
        if !all.is_empty() && all.iter().all(|d| d["state"] == "delivered") {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "not delivered: {all:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let received = gp.received_requests().await.unwrap_or_default();
    let bodies: Vec<Value> = received
        .iter()
        .map(|r| serde_json::from_slice(&r.body).expect("JSON"))
        .collect();
    let posted: Vec<&Value> = bodies
        .iter()
        .filter(|b| b["resourceType"] == "Observation")
        .collect();
    assert_eq!(posted.len(), 3);
    assert!(
        posted
            .iter()
            .all(|o| o["code"]["coding"][0]["code"] == "mood-5")
    );
    let last_task = bodies
        .iter()
        .rev()
        .find(|b| b["resourceType"] == "Task")
        .expect("a Task");
    assert_eq!(last_task["output"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        last_task["output"][1]["type"]["coding"][0]["code"],
        "mood-5"
    );

    // The report: a change of the mean from 1.5 to 3.5 is at least 0.5, so the person
    // counts for the metric on this measure (the 3-month follow-up is on 2026-04-10).
    let report = get_json(
        &app,
        "/api/reports/outcomes/detail?from=2026-01-01&to=2026-12-31&format=json&as_of=2026-12-31",
    )
    .await;
    let mood: Vec<&Value> = report["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|d| d["metric"] == "mood-3m")
        .collect();
    assert_eq!(mood.len(), 1, "{report}");
    assert_eq!(mood[0]["status"], "achieved", "{:?}", mood[0]);
    app.stop().await;
}
