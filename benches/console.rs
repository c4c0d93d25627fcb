//! Console figures (issue 21), end to end: a real Sprig (in this process, real HTTP, a
//! real SQLite file) holding `CONSOLE_REFERRALS` referrals (default 100,000) and ten
//! timeline rows each (1,000,000), inserted straight into the record's tables; one more
//! referral arrives over FHIR so its page has Tasks and deliveries. A signed-in link
//! worker's requests are timed (sequential, p50 and p99 of 200 each) against
//! `GET /healthz` in the same run (the baseline); the worklist's page weight (HTML plus
//! the gzip stylesheet, what a browser fetches) is reported.
//!
//! `cargo bench --bench console` (`CONSOLE_REFERRALS=N` to change the volume).

// Tests and benches may unwrap: a failed assumption there is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::Value;
use sprig::app::Application;
use sprig::config::Settings;
use sprig::identity::{StaffRole, staff};
use tempfile::TempDir;

/// mimalloc, not glibc's malloc: see `sprig::allocator`.
#[global_allocator]
static GLOBAL: sprig::allocator::Allocator = sprig::allocator::Allocator {};

const PASSWORD: &str = "correct horse battery staple";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

async fn time(
    client: &reqwest::Client,
    url: &str,
    cookie: &str,
    n: usize,
) -> (Duration, Duration, usize) {
    let mut times = Vec::with_capacity(n);
    let mut bytes = 0;
    for _ in 0..n {
        let started = Instant::now();
        let response = client
            .get(url)
            .header("cookie", cookie)
            .send()
            .await
            .expect("get");
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        bytes = response.bytes().await.expect("body").len();
        times.push(started.elapsed());
    }
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99), bytes)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let count: i64 = std::env::var("CONSOLE_REFERRALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = TempDir::new().expect("temporary directory");
        let db = dir.path().join("sprig.db");
        let mut settings = Settings {
            listen: "127.0.0.1:0".parse().expect("address"),
            database: db.display().to_string(),
            ..Settings::default()
        };
        settings.log.level = "warn".into();
        let app = Application::build(settings).await.expect("Sprig starts");
        let base = format!("http://{}", app.local_addr());
        let store = app.store();
        tokio::spawn(app.run_until_stopped(std::future::pending()));
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");

        // One referral over FHIR.
        let example = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/referral-servicerequest.json"
        ))
        .expect("example");
        let created: Value = client
            .post(format!("{base}/fhir/ServiceRequest"))
            .header("content-type", "application/fhir+json")
            .body(example)
            .send()
            .await
            .expect("create")
            .json()
            .await
            .expect("json");
        let fhir_referral = created["id"].as_str().expect("id").to_owned();

        // The volume, straight into the record's tables.
        let started = Instant::now();
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
            .await
            .expect("pool");
        let stages = "CASE n % 10 WHEN 0 THEN 'received' WHEN 1 THEN 'accepted' WHEN 2 THEN 'contacted' \
             WHEN 3 THEN 'assessment-done' WHEN 4 THEN 'plan-agreed' WHEN 5 THEN 'in-support' \
             WHEN 6 THEN 'completed' WHEN 7 THEN 'declined' WHEN 8 THEN 'unable-to-contact' ELSE 'withdrawn' END";
        let mut tx = pool.begin().await.expect("begin");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < $1) \
             INSERT INTO referrals (id, identifier_system, identifier_value, stage, fhir_status, received_at, \
               updated_at, received_as, practice_ods_code, practice_name, task_id, version, assigned_to) \
             SELECT 'bench-' || n, 'urn:bench', n, {stages}, 'active', \
               strftime('%Y-%m-%dT%H:%M:%fZ', 1700000000 + n * 60, 'unixepoch'), \
               strftime('%Y-%m-%dT%H:%M:%fZ', 1700000000 + n * 60, 'unixepoch'), 'resource', \
               'K8' || (n % 50), 'Practice ' || (n % 50), 'task-' || n, 1, \
               CASE n % 3 WHEN 0 THEN NULL WHEN 1 THEN 'amara' ELSE 'ben' END FROM seq"
        )))
        .bind(count)
        .execute(&mut *tx)
        .await
        .expect("referrals");
        sqlx::query(
            "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < $1) \
             INSERT INTO referral_patients (referral_id, nhs_number, given_name, family_name, birth_date) \
             SELECT 'bench-' || n, printf('8%09d', n), 'Given', 'Family' || n, '1970-01-01' FROM seq",
        )
        .bind(count)
        .execute(&mut *tx)
        .await
        .expect("patients");
        sqlx::query(
            "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < $1), \
               ten(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM ten WHERE k < 10) \
             INSERT INTO referral_stage_history (referral_id, seq, stage, at, actor, task_version) \
             SELECT 'bench-' || n, k, 'received', strftime('%Y-%m-%dT%H:%M:%fZ', 1700000000 + n * 60 + k, 'unixepoch'), \
               'amara', k FROM seq, ten",
        )
        .bind(count)
        .execute(&mut *tx)
        .await
        .expect("timeline");
        // A WEMWBS baseline six months ago on every tenth referral: their 6-month
        // follow-up is due this week (the follow-ups page and the worklist's filter hold
        // a tenth of everything, ten times the old cap of 1,000 at 100,000).
        let today = time::OffsetDateTime::now_utc().date();
        let months = i32::from(u8::from(today.month())) - 1 + today.year() * 12 - 6;
        let baseline = format!(
            "{:04}-{:02}-{:02}T12:00:00.000Z",
            months.div_euclid(12),
            months.rem_euclid(12) + 1,
            today.day().min(28)
        );
        sqlx::query(
            "WITH RECURSIVE seq(n) AS (SELECT 10 UNION ALL SELECT n + 10 FROM seq WHERE n + 10 <= $1) \
             INSERT INTO outcome_measures (id, referral_id, measure, recorded_at, entered_at, actor, total) \
             SELECT 'bench-om-' || n, 'bench-' || n, 'wemwbs', $2, $2, 'amara', 42 FROM seq",
        )
        .bind(count)
        .bind(&baseline)
        .execute(&mut *tx)
        .await
        .expect("baselines");
        tx.commit().await.expect("commit");
        sqlx::query("ANALYZE").execute(&pool).await.expect("analyze");
        println!(
            "held: {count} referrals, {} timeline rows, {} WEMWBS baselines of {baseline} (inserted in {:.1} s)",
            count * 10,
            count / 10,
            started.elapsed().as_secs_f64()
        );

        staff::add_account(&store, "amara", "Amara Okafor", StaffRole::LinkWorker, PASSWORD.to_owned())
            .await
            .expect("account");
        let signed_in = client
            .post(format!("{base}/console/sign-in"))
            .form(&[("username", "amara"), ("password", PASSWORD)])
            .send()
            .await
            .expect("sign in");
        assert_eq!(signed_in.status(), 303);
        let cookie = signed_in.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();

        let n = 200;
        let (base_p50, base_p99, _) = time(&client, &format!("{base}/healthz"), "", n).await;
        println!("| request | p50 | p99 | p50 vs /healthz | HTML |");
        println!("|---|---|---|---|---|");
        println!("| `GET /healthz` (baseline) | {} | {} | 1.0× | – |", ms(base_p50), ms(base_p99));
        // A cursor deep in the list: the row 10,000 referrals in.
        let (deep,): (String,) =
            sqlx::query_as("SELECT received_at FROM referrals WHERE id = 'bench-10000'")
                .fetch_one(&pool)
                .await
                .expect("cursor");
        let pages = [
            ("worklist: mine and unassigned, first page", "/console/referrals".to_owned()),
            ("worklist: all, stage in-support", "/console/referrals?view=all&stage=in-support".to_owned()),
            ("worklist: search by NHS number", "/console/referrals?view=all&q=8000054321".to_owned()),
            ("worklist: search by family name prefix (matches all)", "/console/referrals?view=all&q=Family".to_owned()),
            ("worklist: all, 10,000 rows in (keyset cursor)", format!("/console/referrals?view=all&after={deep}~bench-10000")),
            ("referral page: arrived over FHIR (Tasks, deliveries)", format!("/console/referrals/{fhir_referral}")),
            ("referral page: 10 timeline rows", "/console/referrals/bench-50001".to_owned()),
        ];
        let follow_ups = [
            ("follow-ups page: the link worker's, of a tenth of all due this week", "/console/follow-ups".to_owned()),
            ("worklist: all, follow-up due filter (a tenth of all, ids bound as one JSON array)", "/console/referrals?view=all&follow_up=1".to_owned()),
        ];
        let mut worklist_html = 0;
        // The follow-up views read every referral's facts: fewer samples.
        let runs = pages
            .into_iter()
            .map(|page| (page, n))
            .chain(follow_ups.into_iter().map(|page| (page, 20)));
        for ((label, path), n) in runs {
            let (p50, p99, bytes) = time(&client, &format!("{base}{path}"), &cookie, n).await;
            if path == "/console/referrals" {
                worklist_html = bytes;
            }
            println!(
                "| {label} | {} | {} | {:.1}× | {:.1} KB |",
                ms(p50),
                ms(p99),
                p50.as_secs_f64() / base_p50.as_secs_f64(),
                bytes as f64 / 1024.0
            );
        }
        let css = client
            .get(format!("{base}/console/style/nhsuk-frontend-10.6.1.min.css"))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .expect("css")
            .bytes()
            .await
            .expect("css body")
            .len();
        println!(
            "worklist page weight: {:.1} KB HTML + {:.1} KB CSS (gzip) + 0 KB JS = {:.1} KB",
            worklist_html as f64 / 1024.0,
            css as f64 / 1024.0,
            (worklist_html + css) as f64 / 1024.0
        );
    });
}
