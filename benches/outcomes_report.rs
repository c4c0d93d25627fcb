//! The quarterly outcomes report over a large service: 100,000 referrals and 500,000
//! outcome Observations written straight into a real SQLite store (not through HTTP, which
//! would take hours), then `Store::referral_facts` (what the report reads) and
//! `outcomes::report::outcomes` (what it computes), timed over a few runs, with the peak
//! resident memory the report added. The baseline, measured in the same run, is one
//! aggregate scan of the outcome table: the least any report over it must read.
//!
//! `cargo bench --bench outcomes_report` (prints a Markdown table for BENCHMARKS.md).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use sprig::outcomes::Outcomes;
use sprig::outcomes::report::{self, Period};
use sprig::store::{Store, StoreOptions};
use sqlx::sqlite::SqlitePoolOptions;
use time::{Date, Month};

/// The allocator the `sprig` binary uses (`sprig::allocator`), so the figures are the binary's.
#[global_allocator]
static GLOBAL: sprig::allocator::Allocator = sprig::allocator::Allocator {};

const REFERRALS: usize = 100_000;
const RUNS: usize = 5;

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn instant(day: Date) -> String {
    format!("{day}T10:00:00.000Z")
}

async fn generate(path: &str) {
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&format!("sqlite:{path}"))
        .await
        .expect("pool");
    let mut tx = pool.begin().await.expect("begin");
    let mut rng = fastrand::Rng::with_seed(22);
    let start = Date::from_calendar_date(2025, Month::January, 1).expect("date");
    let mut outcomes = 0usize;
    for i in 0..REFERRALS {
        let id = format!("r{i:06}");
        let received = start + time::Duration::days(rng.i64(0..540));
        sqlx::query(
            "INSERT INTO referrals (id, identifier_system, identifier_value, stage, fhir_status, \
             received_at, updated_at, received_as, practice_ods_code, task_id, version) \
             VALUES ($1, 'urn:bench', $1, 'in-support', 'active', $2, $2, 'resource', $3, $1, 1)",
        )
        .bind(&id)
        .bind(instant(received))
        .bind(format!("P{:02}", rng.u32(0..40)))
        .execute(&mut *tx)
        .await
        .expect("referral");
        sqlx::query("INSERT INTO referral_patients (referral_id, nhs_number) VALUES ($1, $2)")
            .bind(&id)
            .bind(format!("9{i:09}"))
            .execute(&mut *tx)
            .await
            .expect("patient");
        for (seq, (stage, days)) in [
            ("received", 0),
            ("accepted", 2),
            ("contacted", 5),
            ("plan-agreed", 20),
        ]
        .iter()
        .enumerate()
        {
            sqlx::query(
                "INSERT INTO referral_stage_history (referral_id, seq, stage, at, actor, task_version) \
                 VALUES ($1, $2, $3, $4, 'bench', $2)",
            )
            .bind(&id)
            .bind(seq as i64 + 1)
            .bind(*stage)
            .bind(instant(received + time::Duration::days(*days)))
            .execute(&mut *tx)
            .await
            .expect("stage");
        }
        // Five measurements each: WEMWBS at 0, 6 and 12 months; SWEMWBS at 0 and 6.
        let base = received + time::Duration::days(20);
        for (k, (measure, days)) in [
            ("wemwbs", 0),
            ("wemwbs", 183),
            ("wemwbs", 365),
            ("swemwbs", 0),
            ("swemwbs", 183),
        ]
        .iter()
        .enumerate()
        {
            sqlx::query(
                "INSERT INTO outcome_measures (id, referral_id, measure, recorded_at, entered_at, actor, total) \
                 VALUES ($1, $2, $3, $4, $4, 'bench', $5)",
            )
            .bind(format!("{id}-{k}"))
            .bind(&id)
            .bind(*measure)
            .bind(instant(base + time::Duration::days(*days + rng.i64(-10..=10))))
            .bind(if *measure == "wemwbs" { rng.i64(14..=70) } else { rng.i64(7..=35) })
            .execute(&mut *tx)
            .await
            .expect("outcome");
            outcomes += 1;
        }
    }
    tx.commit().await.expect("commit");
    pool.close().await;
    assert_eq!(outcomes, REFERRALS * 5);
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::TempDir::new().expect("dir");
    let path = dir.path().join("bench.db").display().to_string();
    runtime.block_on(async {
        let options = StoreOptions {
            database: path.clone(),
            busy_timeout: Duration::from_secs(5),
            max_read_connections: 2,
            durable_commits: false,
        };
        let store = Store::open(&options).await.expect("store");
        let generating = Instant::now();
        generate(&path).await;
        eprintln!("generated {REFERRALS} referrals, {} outcomes in {:.1?}", REFERRALS * 5, generating.elapsed());
        let outcomes = Outcomes::shipped().expect("definitions");
        let pool = SqlitePoolOptions::new().max_connections(1).connect(&format!("sqlite:{path}")).await.expect("pool");
        let from = Date::from_calendar_date(2026, Month::April, 1).expect("date");
        let to = Date::from_calendar_date(2026, Month::June, 30).expect("date");
        let today = Date::from_calendar_date(2026, Month::December, 4).expect("date");
        let (mut scan, mut read, mut compute) = (Vec::new(), Vec::new(), Vec::new());
        let mut peak_extra_kib = 0u64;
        for _ in 0..RUNS {
            let t = Instant::now();
            let row: (i64, Option<i64>) = sqlx::query_as("SELECT count(*), sum(total) FROM outcome_measures").fetch_one(&pool).await.expect("scan");
            scan.push(t.elapsed());
            assert_eq!(row.0 as usize, REFERRALS * 5);
            // Reset the peak (Linux: writing 5 to clear_refs resets VmHWM) to see what the
            // report adds to what the process already holds.
            let _ = std::fs::write("/proc/self/clear_refs", "5");
            let before = status_kib("VmRSS:");
            let t = Instant::now();
            let facts = store.referral_facts(None).await.expect("facts");
            read.push(t.elapsed());
            let t = Instant::now();
            let report = report::outcomes(&outcomes.metrics, &outcomes.catalogue, &facts, Period::Quarter, from, to, today);
            compute.push(t.elapsed());
            assert!(!report.rows.is_empty());
            std::hint::black_box(report.to_csv());
            peak_extra_kib = peak_extra_kib.max(status_kib("VmHWM:").saturating_sub(before));
            drop(facts);
        }
        let (scan, read, compute) = (median(scan), median(read), median(compute));
        let ratio = |d: Duration| d.as_secs_f64() / scan.as_secs_f64();
        println!("| step | median of {RUNS} | vs baseline |");
        println!("|---|---|---|");
        println!("| baseline: `SELECT count(*), sum(total) FROM outcome_measures` | {scan:.1?} | 1.0× |");
        println!("| `Store::referral_facts` (three queries, 100,000 referrals, 400,000 stages, 500,000 outcomes) | {read:.1?} | {:.1}× |", ratio(read));
        println!("| `report::outcomes` (5 metrics, quarterly, 40 practices) | {compute:.1?} | {:.1}× |", ratio(compute));
        println!("| the whole report | {:.1?} | {:.1}× |", read + compute, ratio(read + compute));
        println!("\npeak resident memory added by one report: {:.1} MiB", peak_extra_kib as f64 / 1024.0);
        store.close().await;
    });
}
