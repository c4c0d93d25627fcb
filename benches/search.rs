//! Search time against the size of the data (issue 20 §4): a real Sprig (in
//! this process, real HTTP) over a SQLite file seeded with N referrals
//! (`SEARCH_REFERRALS`, default 1,000,000): a `ServiceRequest` each, with a
//! business identifier, a status (one in ten `completed`, the rest
//! `active`) and a subject, and its index rows, written straight into the
//! tables (creating a million referrals over HTTP would take hours).
//!
//! Measured, idle server, one request at a time:
//! - `identifier=system|value` (a random referral each time): p50, p99;
//! - `status=completed` (a page of 50), `status=active&_count=0` (only the
//!   total), `status=active&_total=accurate` (a page and an exact total);
//! - the same identifier lookup with the statement Sprig ran before issue 20
//!   (`EXISTS` per resource, walking the type in page order), on the same
//!   file in the same run, as the baseline.
//!
//! `cargo bench --bench search` (`SEARCH_REFERRALS=N` to change the size).

// Tests and benches may unwrap: a failed assumption there is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::Value;
use sprig::app::Application;
use sprig::config::Settings;
use sqlx::{Connection, SqliteConnection};
use tempfile::TempDir;

const SYSTEM: &str = "https://fhir.example.org/referral-id";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Writes `count` referrals and their index rows, in batches of one
/// transaction each.
async fn seed(conn: &mut SqliteConnection, count: usize) {
    const BATCH: usize = 10_000;
    let mut n = 0;
    while n < count {
        let end = (n + BATCH).min(count);
        let mut tx = conn.begin().await.expect("begin");
        for i in n..end {
            let id = format!("sr-{i:08}");
            let status = if i % 10 == 0 { "completed" } else { "active" };
            let at = format!(
                "2026-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                1 + (i / 100_000) % 12,
                1 + (i / 4_000) % 28,
                (i / 3600) % 24,
                (i / 60) % 60,
                i % 60,
                i % 1000
            );
            let json = format!(
                r#"{{"resourceType":"ServiceRequest","id":"{id}","meta":{{"versionId":"1","lastUpdated":"{at}"}},"identifier":[{{"system":"{SYSTEM}","value":"REF-{i}"}}],"status":"{status}","intent":"order","subject":{{"reference":"Patient/p-{i}"}}}}"#
            );
            sqlx::query(
                "INSERT INTO resources (resource_type, id, current_version, deleted, last_updated, owner_ods) \
                 VALUES ('ServiceRequest', $1, 1, 0, $2, 'K83999')",
            )
            .bind(&id)
            .bind(&at)
            .execute(&mut *tx)
            .await
            .expect("resource");
            sqlx::query(
                "INSERT INTO resource_versions (resource_type, id, version_id, last_updated, operation, resource, received, request_id) \
                 VALUES ('ServiceRequest', $1, 1, $2, 'create', $3, NULL, 'seed')",
            )
            .bind(&id)
            .bind(&at)
            .bind(&json)
            .execute(&mut *tx)
            .await
            .expect("version");
            sqlx::query(
                "INSERT INTO search_tokens (resource_type, id, param, system, code) VALUES \
                 ('ServiceRequest', $1, 'identifier', $2, $3), \
                 ('ServiceRequest', $1, 'status', 'http://hl7.org/fhir/request-status', $4), \
                 ('ServiceRequest', $1, 'intent', 'http://hl7.org/fhir/request-intent', 'order')",
            )
            .bind(&id)
            .bind(SYSTEM)
            .bind(format!("REF-{i}"))
            .bind(status)
            .execute(&mut *tx)
            .await
            .expect("tokens");
            sqlx::query(
                "INSERT INTO search_references (resource_type, id, param, reference, target_type, target_id) VALUES \
                 ('ServiceRequest', $1, 'subject', $2, 'Patient', $3), \
                 ('ServiceRequest', $1, 'patient', $2, 'Patient', $3)",
            )
            .bind(&id)
            .bind(format!("Patient/p-{i}"))
            .bind(format!("p-{i}"))
            .execute(&mut *tx)
            .await
            .expect("references");
        }
        tx.commit().await.expect("commit");
        n = end;
    }
    sqlx::query("ANALYZE")
        .execute(&mut *conn)
        .await
        .expect("ANALYZE");
}

/// Times `runs` GETs of `path(run)`; returns the sorted durations and the last body.
async fn time_gets(
    client: &reqwest::Client,
    base: &str,
    runs: usize,
    path: impl Fn(usize) -> String,
) -> (Vec<Duration>, Value) {
    let mut took = Vec::with_capacity(runs);
    let mut last = Value::Null;
    for run in 0..runs {
        let url = format!("{base}{}", path(run));
        let started = Instant::now();
        let response = client.get(&url).send().await.expect("search");
        assert_eq!(response.status(), 200, "{url}");
        last = response.json().await.expect("JSON");
        took.push(started.elapsed());
    }
    took.sort();
    (took, last)
}

fn report(what: &str, took: &[Duration]) {
    println!(
        "{what}: p50 {:.3} ms, p99 {:.3} ms ({} requests)",
        ms(percentile(took, 50.0)),
        ms(percentile(took, 99.0)),
        took.len()
    );
}

/// The allocator the `sprig` binary uses.
#[global_allocator]
static GLOBAL: sprig::allocator::Allocator = sprig::allocator::Allocator {};

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let count: usize = std::env::var("SEARCH_REFERRALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    runtime.block_on(async {
        let dir = TempDir::new_in(std::env::var("SEARCH_DIR").unwrap_or_else(|_| ".".into()))
            .expect("temporary directory");
        let database = dir.path().join("sprig.db");
        let mut settings = Settings {
            listen: "127.0.0.1:0".parse().expect("address"),
            database: database.display().to_string(),
            ..Settings::default()
        };
        settings.log.level = "warn".into();
        // Migrations (and the index's version) first, by a server that then stops.
        let app = Application::build(settings.clone()).await.expect("Sprig starts");
        drop(app);
        let mut conn = SqliteConnection::connect(&format!("sqlite:{}", database.display()))
            .await
            .expect("open");
        sqlx::query("PRAGMA journal_mode = WAL").execute(&mut conn).await.expect("WAL");
        sqlx::query("PRAGMA synchronous = OFF").execute(&mut conn).await.expect("sync");
        let seeding = Instant::now();
        seed(&mut conn, count).await;
        println!(
            "seeded {count} referrals in {:.1} s ({:.0} MiB file)",
            seeding.elapsed().as_secs_f64(),
            std::fs::metadata(&database).map_or(0, |m| m.len()) as f64 / 1_048_576.0
        );

        let app = Application::build(settings).await.expect("Sprig starts");
        let base = format!("http://{}", app.local_addr());
        tokio::spawn(app.run_until_stopped(std::future::pending()));
        let client = reqwest::Client::new();
        // Warm the page cache and the connections.
        let _ = time_gets(&client, &base, 20, |run| {
            format!("/fhir/ServiceRequest?identifier={SYSTEM}|REF-{}", run * 7919 % count)
        })
        .await;

        let (took, last) = time_gets(&client, &base, 500, |run| {
            format!(
                "/fhir/ServiceRequest?identifier={SYSTEM}|REF-{}",
                (run * 104_729 + 13) % count
            )
        })
        .await;
        assert_eq!(last["total"], 1, "{last}");
        report("identifier=system|value (HTTP, whole request)", &took);
        let (took, _) = time_gets(&client, &base, 200, |run| {
            format!("/fhir/ServiceRequest?identifier=REF-{}", (run * 7_919 + 5) % count)
        })
        .await;
        report("identifier=value (HTTP)", &took);
        let (took, _) = time_gets(&client, &base, 200, |run| {
            format!("/fhir/ServiceRequest?patient=p-{}", (run * 7_919 + 5) % count)
        })
        .await;
        report("patient=id (HTTP)", &took);
        let (took, last) = time_gets(&client, &base, 50, |_| {
            "/fhir/ServiceRequest?status=completed".into()
        })
        .await;
        assert!(last.get("total").is_none(), "no total unless asked");
        report("status=completed, a page of 50, no total (HTTP)", &took);
        let (took, _) = time_gets(&client, &base, 50, |_| {
            "/fhir/ServiceRequest?status=active&_count=10".into()
        })
        .await;
        report("status=active&_count=10, no total (HTTP)", &took);
        let (took, last) = time_gets(&client, &base, 5, |_| {
            "/fhir/ServiceRequest?status=active&_count=0".into()
        })
        .await;
        report(
            &format!("status=active&_count=0 (only the total: {}) (HTTP)", last["total"]),
            &took,
        );
        let (took, _) = time_gets(&client, &base, 5, |_| {
            "/fhir/ServiceRequest?status=active&_count=10&_total=accurate".into()
        })
        .await;
        report("status=active&_count=10&_total=accurate (HTTP)", &took);

        // The baseline: the statement Sprig ran before, on the same file.
        let before = "SELECT r.id, r.last_updated, v.version_id, v.resource \
             FROM resources r JOIN resource_versions v \
               ON v.resource_type = r.resource_type AND v.id = r.id \
              AND v.version_id = r.current_version \
             WHERE r.resource_type = $1 AND r.deleted = 0 \
               AND EXISTS (SELECT 1 FROM search_tokens x WHERE x.resource_type = r.resource_type \
                 AND x.id = r.id AND x.param = $2 AND ((x.system = $3 AND x.code = $4))) \
             ORDER BY r.last_updated DESC, r.id DESC LIMIT 51";
        let count_before = "SELECT COUNT(*) FROM resources r WHERE r.resource_type = $1 AND r.deleted = 0 \
               AND EXISTS (SELECT 1 FROM search_tokens x WHERE x.resource_type = r.resource_type \
                 AND x.id = r.id AND x.param = $2 AND ((x.system = $3 AND x.code = $4)))";
        let mut took = Vec::new();
        for run in 0..5 {
            let code = format!("REF-{}", (run * 104_729 + 13) % count);
            let started = Instant::now();
            let (n,): (i64,) = sqlx::query_as(count_before)
                .bind("ServiceRequest")
                .bind("identifier")
                .bind(SYSTEM)
                .bind(&code)
                .fetch_one(&mut conn)
                .await
                .expect("count before");
            let rows = sqlx::query(before)
                .bind("ServiceRequest")
                .bind("identifier")
                .bind(SYSTEM)
                .bind(&code)
                .fetch_all(&mut conn)
                .await
                .expect("page before");
            took.push(started.elapsed());
            assert_eq!((n, rows.len()), (1, 1));
        }
        took.sort();
        report(
            "BEFORE (baseline): identifier=system|value, the count and page statements alone (SQL, no HTTP)",
            &took,
        );
    });
}
