//! The quarterly outcomes report over a large service: 100,000 referrals, 500,000 outcome
//! Observations and about 270,000 milestones written straight into a real SQLite store (not
//! through HTTP, which would take hours), then the report two ways, timed over a few runs
//! with the peak resident memory each added: loading every referral's facts
//! (`Store::referral_facts`) and counting them (`report::outcomes`), as the report did
//! before; and streaming them a page at a time (`Store::each_referral_facts`) through
//! `OutcomesBuilder` and `SummaryBuilder`, as the console, `/api` and `sprig report` do now.
//! The baseline, measured in the same run, is one aggregate scan of the outcome table: the
//! least any report over it must read.
//!
//! `cargo bench --bench outcomes_report` (prints a Markdown table for BENCHMARKS.md);
//! `OUTCOMES_BENCH_DB=path` keeps the generated database there (for measuring
//! `sprig report outcomes` or a server over it).

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
        // Milestones: the initial assessment and the plan at day 20; a third assessed for
        // complexity (half of those complex); a tenth discharged a year on.
        let mut milestones: Vec<(&str, i64, Option<i64>, Option<&str>)> = vec![
            ("initial-assessment", 20, None, None),
            ("action-plan", 20, None, None),
        ];
        if i % 3 == 0 {
            milestones.push(("complexity", 20, Some(i64::from(i % 2 == 0)), None));
        }
        if i % 10 == 0 {
            milestones.push(("discharge", 385, None, Some("goals-met")));
        }
        for (k, (kind, days, complex, reason)) in milestones.into_iter().enumerate() {
            sqlx::query(
                "INSERT INTO referral_milestones (id, referral_id, kind, occurred_on, complex, basis, \
                 reason, recorded_at, recorded_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'bench')",
            )
            .bind(format!("{id}-m{k}"))
            .bind(&id)
            .bind(kind)
            .bind((received + time::Duration::days(days)).to_string())
            .bind(complex)
            .bind(complex.map(|_| "bench"))
            .bind(reason)
            .bind(instant(received + time::Duration::days(days)))
            .execute(&mut *tx)
            .await
            .expect("milestone");
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
    let path = std::env::var("OUTCOMES_BENCH_DB")
        .unwrap_or_else(|_| dir.path().join("bench.db").display().to_string());
    runtime.block_on(async {
        let options = StoreOptions {
            database: path.clone(),
            busy_timeout: Duration::from_secs(5),
            max_read_connections: 2,
            durable_commits: false,
            sqlite_caches: sprig::store::SqliteCaches::default(),
        };
        let store = Store::open(&options).await.expect("store");
        let generating = Instant::now();
        let held: Result<(i64,), _> = sqlx::query_as("SELECT count(*) FROM referrals")
            .fetch_one(&SqlitePoolOptions::new().max_connections(1).connect(&format!("sqlite:{path}")).await.expect("pool"))
            .await;
        if held.map(|h| h.0 as usize).ok() != Some(REFERRALS) {
            generate(&path).await;
        }
        eprintln!("generated {REFERRALS} referrals, {} outcomes in {:.1?}", REFERRALS * 5, generating.elapsed());
        let outcomes = Outcomes::shipped().expect("definitions");
        let pool = SqlitePoolOptions::new().max_connections(1).connect(&format!("sqlite:{path}")).await.expect("pool");
        let from = Date::from_calendar_date(2026, Month::April, 1).expect("date");
        let to = Date::from_calendar_date(2026, Month::June, 30).expect("date");
        let today = Date::from_calendar_date(2026, Month::December, 4).expect("date");
        let (mut scan, mut read, mut compute, mut streamed) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut peak_loaded_kib, mut peak_streamed_kib) = (0u64, 0u64);
        // Resets the peak (Linux: writing 5 to clear_refs resets VmHWM) and gives the
        // resident size before, to see what a report adds to what the process holds.
        let reset = || {
            let _ = std::fs::write("/proc/self/clear_refs", "5");
            status_kib("VmRSS:")
        };
        for _ in 0..RUNS {
            let t = Instant::now();
            let row: (i64, Option<i64>) = sqlx::query_as("SELECT count(*), sum(total) FROM outcome_measures").fetch_one(&pool).await.expect("scan");
            scan.push(t.elapsed());
            assert_eq!(row.0 as usize, REFERRALS * 5);

            // Now: streamed a page at a time through the builders (first, so the loaded
            // report's freed memory is not what this one reuses).
            let before = reset();
            let t = Instant::now();
            let mut builder = report::OutcomesBuilder::new(&outcomes.metrics, &outcomes.catalogue, Period::Quarter, from, to, today);
            let mut summary = report::SummaryBuilder::new(from, to);
            store.each_referral_facts(|f| { builder.add(f); summary.add(f); }).await.expect("facts");
            let report = builder.finish();
            let summary = summary.finish();
            streamed.push(t.elapsed());
            std::hint::black_box(report.to_csv());
            peak_streamed_kib = peak_streamed_kib.max(status_kib("VmHWM:").saturating_sub(before));
            // Before: every referral's facts loaded, then counted.
            let before = reset();
            let t = Instant::now();
            let mut facts = Vec::new();
            store.each_referral_facts(|f| facts.push(f.clone())).await.expect("facts");
            read.push(t.elapsed());
            let t = Instant::now();
            let loaded = report::outcomes(&outcomes.metrics, &outcomes.catalogue, &facts, Period::Quarter, from, to, today);
            let loaded_summary = report::service_summary(&facts, from, to);
            compute.push(t.elapsed());
            std::hint::black_box(loaded.to_csv());
            peak_loaded_kib = peak_loaded_kib.max(status_kib("VmHWM:").saturating_sub(before));
            drop(facts);

            assert!(!report.rows.is_empty());
            assert_eq!(report, loaded, "the streamed report is the loaded one");
            assert_eq!(summary, loaded_summary);
        }
        let (scan, read, compute, streamed) = (median(scan), median(read), median(compute), median(streamed));
        let ratio = |d: Duration| d.as_secs_f64() / scan.as_secs_f64();
        let milestones: (i64,) = sqlx::query_as("SELECT count(*) FROM referral_milestones").fetch_one(&pool).await.expect("milestones");
        println!("| step | median of {RUNS} | vs baseline |");
        println!("|---|---|---|");
        println!("| baseline: `SELECT count(*), sum(total) FROM outcome_measures` | {scan:.1?} | 1.0× |");
        println!("| before: `Store::referral_facts` (100,000 referrals, 400,000 stages, 500,000 outcomes, {} milestones) | {read:.1?} | {:.1}× |", milestones.0, ratio(read));
        println!("| before: `report::outcomes` and `service_summary` over them (6 metrics, quarterly, 40 practices) | {compute:.1?} | {:.1}× |", ratio(compute));
        println!("| before: the whole report | {:.1?} | {:.1}× |", read + compute, ratio(read + compute));
        println!("| now: `Store::each_referral_facts` through `OutcomesBuilder` and `SummaryBuilder` | {streamed:.1?} | {:.1}× |", ratio(streamed));
        println!("\npeak resident memory added by one report: before {:.1} MiB, now {:.1} MiB ({:.2}×)",
            peak_loaded_kib as f64 / 1024.0, peak_streamed_kib as f64 / 1024.0,
            peak_streamed_kib as f64 / peak_loaded_kib.max(1) as f64);
        store.close().await;
    });
}
