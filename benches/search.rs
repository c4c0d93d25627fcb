//! Search time against the size of the data (issue 20 §4): a real Sprig (in
//! this process, real HTTP) over a SQLite file seeded with N referrals
//! (`SEARCH_REFERRALS`, default 1,000,000): a `ServiceRequest` each, with a
//! business identifier, a status (one in ten `completed`, the rest
//! `active`) and a subject, and its index rows, written straight into the
//! tables (creating a million referrals over HTTP would take hours).
//!
//! Measured:
//! - one request at a time (p50, p99): `identifier=system|value` (a random
//!   referral each time), `identifier=value`, `patient=id`, `status=completed`
//!   (a page of 50), `status=active&_count=10`, a page of `status=active` a
//!   thousand from the end (its `_cursor` built from the data), `status=active&_count=0`
//!   (only the total), `status=active&_total=accurate`;
//! - 16 clients at once for `SEARCH_SECONDS` (default 10) each: identifier,
//!   patient, `status=active&_count=0`, `status=completed`, `status=active`;
//! - the baselines, each statement alone on a connection of its own, on the same
//!   file in the same run, with the statistics Sprig gathers at start-up and then
//!   with none: the statements Sprig runs now, the lookup before the `+x.id`
//!   change (`SELECT DISTINCT x.id`), and the one before issue 20 (`EXISTS` per
//!   resource, walking the type in page order), with the plan of the second.
//!
//! Totals, before and after in one run (`SEARCH_BASELINE=path/to/sprig`, another build's
//! release binary, e.g. main's): that binary makes the schema, serves the seeded file while
//! the totals are measured (`status=active&_count=0` alone, `_total=estimate`, and 16
//! clients of which 8 ask for that count and 8 look up identifiers), and stops; then this
//! build serves the same file and the same is measured. `SEARCH_ONLY_TOTALS=1` stops there.
//!
//! `cargo bench --bench search` (`SEARCH_REFERRALS=N` to change the size).

// Tests and benches may unwrap: a failed assumption there is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::Value;
use sprig::app::Application;
use sprig::config::Settings;
use sprig::fhir::ResourceType;
use sprig::search::SearchQuery;
use sprig::store::{BoundValue, Visibility};
use sqlx::{Connection, Row, SqliteConnection};
use tempfile::TempDir;

const SYSTEM: &str = "https://fhir.example.org/referral-id";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Writes `count` referrals and their index rows, 100,000 to a transaction, each
/// table filled by one `INSERT … SELECT` over a counter: SQLite builds the rows
/// itself (a statement per row through sqlx's worker took hours for a million).
async fn seed(conn: &mut SqliteConnection, count: usize) {
    const BATCH: usize = 100_000;
    // The referral number `i` of each row, from `$1` to `$2` - 1.
    let numbers =
        "WITH RECURSIVE n(i) AS (SELECT $1 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < $2)";
    let id = "printf('sr-%08d', i)";
    let at = "printf('2026-%02d-%02dT%02d:%02d:%02d.%03dZ', 1 + (i / 100000) % 12, \
              1 + (i / 4000) % 28, (i / 3600) % 24, (i / 60) % 60, i % 60, i % 1000)";
    let status = "CASE WHEN i % 10 = 0 THEN 'completed' ELSE 'active' END";
    let statements = [
        format!(
            "{numbers} INSERT INTO resources (resource_type, id, current_version, deleted, last_updated, owner_ods) \
             SELECT 'ServiceRequest', {id}, 1, 0, {at}, 'K83999' FROM n"
        ),
        format!(
            "{numbers} INSERT INTO resource_versions (resource_type, id, version_id, last_updated, operation, resource, received, request_id) \
             SELECT 'ServiceRequest', {id}, 1, {at}, 'create', \
               printf('{{\"resourceType\":\"ServiceRequest\",\"id\":\"%s\",\"meta\":{{\"versionId\":\"1\",\"lastUpdated\":\"%s\"}},\"identifier\":[{{\"system\":\"{SYSTEM}\",\"value\":\"REF-%d\"}}],\"status\":\"%s\",\"intent\":\"order\",\"subject\":{{\"reference\":\"Patient/p-%d\"}}}}', \
                 {id}, {at}, i, {status}, i), \
               NULL, 'seed' FROM n"
        ),
        format!(
            "{numbers} INSERT INTO search_tokens (resource_type, id, param, system, code) \
             SELECT 'ServiceRequest', {id}, 'identifier', '{SYSTEM}', 'REF-' || i FROM n \
             UNION ALL SELECT 'ServiceRequest', {id}, 'status', 'http://hl7.org/fhir/request-status', {status} FROM n \
             UNION ALL SELECT 'ServiceRequest', {id}, 'intent', 'http://hl7.org/fhir/request-intent', 'order' FROM n"
        ),
        format!(
            "{numbers} INSERT INTO search_references (resource_type, id, param, reference, target_type, target_id) \
             SELECT 'ServiceRequest', {id}, 'subject', 'Patient/p-' || i, 'Patient', 'p-' || i FROM n \
             UNION ALL SELECT 'ServiceRequest', {id}, 'patient', 'Patient/p-' || i, 'Patient', 'p-' || i FROM n"
        ),
    ];
    let mut n = 0;
    while n < count {
        let end = (n + BATCH).min(count);
        let mut tx = conn.begin().await.expect("begin");
        for statement in &statements {
            sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
                .bind(n as i64)
                .bind(end as i64)
                .execute(&mut *tx)
                .await
                .expect("seed");
        }
        tx.commit().await.expect("commit");
        n = end;
    }
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
        let baseline = std::env::var("SEARCH_BASELINE").ok();
        // Migrations (and the index's version) first, by a server that then stops: the
        // baseline's when there is one (an older build refuses a file migrated further).
        if let Some(binary) = &baseline {
            let server = BaselineServer::start(binary, &database).await;
            server.stop();
        } else {
            let app = Application::build(settings.clone()).await.expect("Sprig starts");
            drop(app);
        }
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

        let client = reqwest::Client::new();
        let seconds: u64 = std::env::var("SEARCH_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10);
        if let Some(binary) = &baseline {
            let server = BaselineServer::start(binary, &database).await;
            totals(&client, &server.base, count, seconds, "baseline").await;
            server.stop();
        }

        // Sprig gathers planner statistics at start-up (`PRAGMA optimize`), as it
        // would after a restart on a grown database.
        let app = Application::build(settings).await.expect("Sprig starts");
        let store = app.store();
        let base = format!("http://{}", app.local_addr());
        tokio::spawn(app.run_until_stopped(std::future::pending()));
        totals(&client, &base, count, seconds, "this build").await;
        if std::env::var("SEARCH_ONLY_TOTALS").is_ok() {
            return;
        }
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
        let (took, last) = time_gets(&client, &base, 200, |run| {
            format!("/fhir/ServiceRequest?patient=p-{}", (run * 7_919 + 5) % count)
        })
        .await;
        assert_eq!(last["total"], 1, "{last}");
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
        // A page deep in the results: the cursor of the oldest referrals but a
        // thousand (newest first, so the last pages of all).
        let mut reader = SqliteConnection::connect(&format!("sqlite:{}?mode=ro", database.display()))
            .await
            .expect("open");
        let (deep_at, deep_id): (String, String) = sqlx::query_as(
            "SELECT last_updated, id FROM resources WHERE resource_type = 'ServiceRequest' \
             ORDER BY last_updated, id LIMIT 1 OFFSET 1000",
        )
        .fetch_one(&mut reader)
        .await
        .expect("a deep cursor");
        let deep = format!("{deep_at}_{deep_id}");
        let (took, last) = time_gets(&client, &base, 50, |_| {
            format!("/fhir/ServiceRequest?status=active&_cursor={deep}")
        })
        .await;
        assert_eq!(last["entry"].as_array().map(Vec::len), Some(50), "a full page");
        report("status=active, a page of 50 a thousand from the end (HTTP)", &took);
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

        // 16 clients at once, each asking again as soon as answered.
        for (what, path) in [
            ("identifier=system|value", Path::Identifier),
            ("patient=id", Path::Patient),
            ("status=active&_count=0", Path::Fixed("/fhir/ServiceRequest?status=active&_count=0")),
            ("status=completed (a page of 50)", Path::Fixed("/fhir/ServiceRequest?status=completed")),
            ("status=active (a page of 50)", Path::Fixed("/fhir/ServiceRequest?status=active")),
        ] {
            concurrent(&client, &base, what, path, count, Duration::from_secs(seconds)).await;
        }

        // The baselines, on the same file in the same run: each statement alone
        // (SQL, no HTTP), on a connection of its own, first with the statistics
        // Sprig gathered at start-up, then with none (a database grown since
        // Sprig started).
        let lookup = |code: &str| {
            SearchQuery::parse(
                ResourceType::SERVICE_REQUEST,
                &format!("identifier={SYSTEM}|{code}&_total=accurate"),
            )
            .expect("query")
        };
        let patient = |id: &str| {
            SearchQuery::parse(ResourceType::SERVICE_REQUEST, &format!("patient={id}&_total=accurate"))
                .expect("query")
        };
        for statistics in ["with statistics", "without statistics"] {
            if statistics == "without statistics" {
                drop(reader);
                sqlx::query("DELETE FROM sqlite_stat1").execute(&mut conn).await.expect("no stats");
                reader = SqliteConnection::connect(&format!("sqlite:{}?mode=ro", database.display()))
                    .await
                    .expect("open");
            }
            let (stats,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM sqlite_stat1")
                .fetch_one(&mut reader)
                .await
                .unwrap_or((-1,));
            let plan: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
                "EXPLAIN QUERY PLAN {}",
                DISTINCT_BEFORE[1]
            )))
            .bind("ServiceRequest")
            .bind("identifier")
            .bind(SYSTEM)
            .bind("REF-1")
            .fetch_all(&mut reader)
            .await
            .expect("EXPLAIN")
            .iter()
            .map(|row| row.get::<String, _>("detail"))
            .collect();
            println!("{statistics} ({stats} rows of sqlite_stat1): the page before this change is planned {plan:?}");
            let statements = [
                ("identifier=system|value, now", Baseline::Sprig(&lookup)),
                ("identifier=system|value, before this change (SELECT DISTINCT x.id)", Baseline::Sql(DISTINCT_BEFORE)),
                ("identifier=system|value, before issue 20 (EXISTS per resource)", Baseline::Sql(EXISTS_BEFORE)),
                ("patient=id, now", Baseline::Sprig(&patient)),
            ];
            for (what, baseline) in statements {
                let mut took = Vec::new();
                let runs = if what.contains("issue 20") { 3 } else { 50 };
                for run in 0..runs {
                    let i = (run * 104_729 + 13) % count;
                    let started = Instant::now();
                    let rows = match &baseline {
                        Baseline::Sprig(query) => {
                            let query = if what.starts_with("patient") {
                                query(&format!("p-{i}"))
                            } else {
                                query(&format!("REF-{i}"))
                            };
                            let mut rows = 0;
                            for statement in store.search_statements(&query, &Visibility::All) {
                                rows = run_statement(&mut reader, &statement.sql, &statement.binds).await;
                            }
                            rows
                        }
                        Baseline::Sql(pair) => {
                            let mut rows = 0;
                            for sql in pair {
                                rows = sqlx::query(*sql)
                                    .bind("ServiceRequest")
                                    .bind("identifier")
                                    .bind(SYSTEM)
                                    .bind(format!("REF-{i}"))
                                    .fetch_all(&mut reader)
                                    .await
                                    .expect("baseline")
                                    .len();
                            }
                            rows
                        }
                    };
                    took.push(started.elapsed());
                    assert_eq!(rows, 1, "{what}");
                }
                took.sort();
                report(&format!("SQL {statistics}: {what}, the count and the page"), &took);
            }
            // The deep page of `status=active`: now, and without the bound on
            // `last_updated` alone that starts the index range at the cursor.
            let deep_query = SearchQuery::parse(
                ResourceType::SERVICE_REQUEST,
                &format!("status=active&_cursor={deep}"),
            )
            .expect("query");
            let statements = store.search_statements(&deep_query, &Visibility::All);
            let page = statements.last().expect("the page statement");
            let horizon = "9999-12-31T23:59:59.999Z";
            for (what, bounded) in [("now", true), ("before this change (no bound alone)", false)] {
                let mut took = Vec::new();
                for _ in 0..10 {
                    let started = Instant::now();
                    let rows = if bounded {
                        run_statement(&mut reader, &page.sql, &page.binds).await
                    } else {
                        sqlx::query(DEEP_PAGE_BEFORE)
                            .bind("ServiceRequest")
                            .bind(horizon)
                            .bind(&deep_at)
                            .bind(&deep_id)
                            .fetch_all(&mut reader)
                            .await
                            .expect("deep page before")
                            .len()
                    };
                    took.push(started.elapsed());
                    assert_eq!(rows, 51, "{what}");
                }
                took.sort();
                report(
                    &format!("SQL {statistics}: status=active, a page a thousand from the end, {what}"),
                    &took,
                );
            }
        }
    });
}

/// The identifier statements Sprig ran before this change: the ids from a
/// `SELECT DISTINCT x.id` (which SQLite without statistics read by walking
/// `search_tokens_by_resource`), the count then the page.
const DISTINCT_BEFORE: [&str; 2] = [
    "SELECT COUNT(*) AS n FROM (SELECT DISTINCT x.id FROM search_tokens x WHERE x.resource_type = $1 \
       AND x.param = $2 AND ((x.system = $3 AND x.code = $4))) m CROSS JOIN resources r \
     WHERE r.resource_type = $1 AND r.id = m.id AND r.deleted = 0",
    "SELECT r.id, r.last_updated, v.version_id, v.resource FROM (SELECT DISTINCT x.id FROM search_tokens x \
       WHERE x.resource_type = $1 AND x.param = $2 AND ((x.system = $3 AND x.code = $4))) m \
     CROSS JOIN resources r JOIN resource_versions v ON v.resource_type = r.resource_type AND v.id = r.id \
       AND v.version_id = r.current_version \
     WHERE r.resource_type = $1 AND r.id = m.id AND r.deleted = 0 \
     ORDER BY r.last_updated DESC, r.id DESC LIMIT 51",
];

/// The statements Sprig ran before issue 20: `EXISTS` per resource, walking the
/// type in page order.
const EXISTS_BEFORE: [&str; 2] = [
    "SELECT COUNT(*) FROM resources r WHERE r.resource_type = $1 AND r.deleted = 0 \
       AND EXISTS (SELECT 1 FROM search_tokens x WHERE x.resource_type = r.resource_type \
         AND x.id = r.id AND x.param = $2 AND ((x.system = $3 AND x.code = $4)))",
    "SELECT r.id, r.last_updated, v.version_id, v.resource \
     FROM resources r JOIN resource_versions v \
       ON v.resource_type = r.resource_type AND v.id = r.id \
      AND v.version_id = r.current_version \
     WHERE r.resource_type = $1 AND r.deleted = 0 \
       AND EXISTS (SELECT 1 FROM search_tokens x WHERE x.resource_type = r.resource_type \
         AND x.id = r.id AND x.param = $2 AND ((x.system = $3 AND x.code = $4))) \
     ORDER BY r.last_updated DESC, r.id DESC LIMIT 51",
];

/// A page of `status=active` after a cursor as Sprig read it before this change.
const DEEP_PAGE_BEFORE: &str = "SELECT r.id, r.last_updated, v.version_id, v.resource FROM resources r \
     JOIN resource_versions v ON v.resource_type = r.resource_type AND v.id = r.id \
       AND v.version_id = r.current_version \
     WHERE r.resource_type = $1 AND r.deleted = 0 AND r.last_updated < $2 \
       AND EXISTS (SELECT 1 FROM search_tokens x WHERE x.resource_type = r.resource_type \
         AND x.id = r.id AND x.param = 'status' AND (x.code IN ('active'))) \
       AND (r.last_updated < $3 OR (r.last_updated = $3 AND r.id < $4)) \
     ORDER BY r.last_updated DESC, r.id DESC LIMIT 51";

enum Baseline<'a> {
    /// The statements Sprig runs now for the query.
    Sprig(&'a dyn Fn(&str) -> SearchQuery),
    /// A count and a page statement, bound to the type, `identifier`, the system and the code.
    Sql([&'static str; 2]),
}

/// Runs one statement; the number of rows of a page, or the count.
async fn run_statement(conn: &mut SqliteConnection, sql: &str, binds: &[BoundValue]) -> usize {
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
    for bind in binds {
        query = match bind {
            BoundValue::Text(text) => query.bind(text.clone()),
            BoundValue::Int(n) => query.bind(*n),
        };
    }
    let rows = query.fetch_all(&mut *conn).await.expect("statement");
    if sql.starts_with("SELECT COUNT(*)") {
        let n: i64 = rows[0].get(0);
        n as usize
    } else {
        rows.len()
    }
}

#[derive(Clone, Copy)]
enum Path {
    Identifier,
    Patient,
    Fixed(&'static str),
}

/// 16 clients asking `path` for `how_long`: requests per second, p50, p99.
async fn concurrent(
    client: &reqwest::Client,
    base: &str,
    what: &str,
    path: Path,
    count: usize,
    how_long: Duration,
) {
    const CLIENTS: usize = 16;
    let until = Instant::now() + how_long;
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (client, base) = (client.clone(), base.to_owned());
        clients.push(tokio::spawn(async move {
            let mut took = Vec::new();
            let mut refused = 0usize;
            let mut run = c;
            while Instant::now() < until {
                let i = (run * 104_729 + 13) % count;
                let url = match path {
                    Path::Identifier => {
                        format!("{base}/fhir/ServiceRequest?identifier={SYSTEM}|REF-{i}")
                    }
                    Path::Patient => format!("{base}/fhir/ServiceRequest?patient=p-{i}"),
                    Path::Fixed(path) => format!("{base}{path}"),
                };
                let started = Instant::now();
                let response = client.get(&url).send().await.expect("search");
                let ok = response.status() == 200;
                let _ = response.bytes().await.expect("body");
                if ok {
                    took.push(started.elapsed());
                } else {
                    refused += 1;
                }
                run += CLIENTS;
            }
            (took, refused)
        }));
    }
    let started = Instant::now();
    let mut took = Vec::new();
    let mut refused = 0;
    for client in clients {
        let (answered, not_200) = client.await.expect("client");
        took.extend(answered);
        refused += not_200;
    }
    let elapsed = started.elapsed().max(how_long);
    took.sort();
    println!(
        "16 clients, {what}: {:.1}/s answered 200, p50 {:.3} ms, p99 {:.3} ms ({} requests; {refused} not 200)",
        took.len() as f64 / elapsed.as_secs_f64(),
        ms(percentile(&took, 50.0)),
        ms(percentile(&took, 99.0)),
        took.len()
    );
}

/// Another build's `sprig serve` on the bench's file (the same-run baseline).
struct BaselineServer {
    child: std::process::Child,
    base: String,
}

impl BaselineServer {
    /// Starts `binary` on `database` at a free port and waits until it answers.
    async fn start(binary: &str, database: &std::path::Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new(binary)
            .arg("serve")
            // No `sprig.toml` there: the built-in defaults, as `Settings::default()` here.
            .current_dir(database.parent().expect("the file's directory"))
            .env("SPRIG_DATABASE", database)
            .env("SPRIG_LISTEN", format!("127.0.0.1:{port}"))
            .env("SPRIG_LOG__LEVEL", "warn")
            .spawn()
            .expect("the baseline starts");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        for _ in 0..600 {
            if client
                .get(format!("{base}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return Self { child, base };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { child, base }.stop();
        panic!("the baseline {binary} did not answer /healthz within a minute");
    }

    fn stop(mut self) {
        self.child.kill().expect("stop the baseline");
        self.child.wait().expect("the baseline stopped");
    }
}

/// The totals, as measured for both builds: the count of 900,000 alone, the estimate,
/// then 16 clients for `seconds`, 8 asking for that count and 8 looking up identifiers.
async fn totals(client: &reqwest::Client, base: &str, count: usize, seconds: u64, build: &str) {
    let (took, last) = time_gets(client, base, 5, |_| {
        "/fhir/ServiceRequest?status=active&_count=0".into()
    })
    .await;
    report(
        &format!(
            "{build}: status=active&_count=0 alone (total {})",
            last["total"]
        ),
        &took,
    );
    let (took, last) = time_gets(client, base, 5, |_| {
        "/fhir/ServiceRequest?status=active&_count=0&_total=estimate".into()
    })
    .await;
    report(
        &format!(
            "{build}: status=active&_count=0&_total=estimate alone (total {})",
            last["total"]
        ),
        &took,
    );
    let (took, _) = time_gets(client, base, 200, |run| {
        format!(
            "/fhir/ServiceRequest?identifier={SYSTEM}|REF-{}",
            (run * 104_729 + 13) % count
        )
    })
    .await;
    report(&format!("{build}: identifier lookup alone"), &took);
    const CLIENTS: usize = 16;
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (client, base) = (client.clone(), base.to_owned());
        clients.push(tokio::spawn(async move {
            let counts = c % 2 == 0;
            let (mut took, mut refused, mut run) = (Vec::new(), 0usize, c);
            while Instant::now() < until {
                let url = if counts {
                    format!("{base}/fhir/ServiceRequest?status=active&_count=0")
                } else {
                    let i = (run * 104_729 + 13) % count;
                    format!("{base}/fhir/ServiceRequest?identifier={SYSTEM}|REF-{i}")
                };
                let started = Instant::now();
                let response = client.get(&url).send().await.expect("search");
                let ok = response.status() == 200;
                let _ = response.bytes().await.expect("body");
                if ok {
                    took.push(started.elapsed());
                } else {
                    refused += 1;
                }
                run += CLIENTS;
            }
            (counts, took, refused)
        }));
    }
    let started = Instant::now();
    let mut by_kind = [(Vec::new(), 0usize), (Vec::new(), 0usize)];
    for client in clients {
        let (counts, took, refused) = client.await.expect("client");
        let kind = &mut by_kind[usize::from(counts)];
        kind.0.extend(took);
        kind.1 += refused;
    }
    let elapsed = started.elapsed().max(Duration::from_secs(seconds));
    for (what, (mut took, refused)) in ["identifier lookups", "status=active&_count=0"]
        .into_iter()
        .zip(by_kind)
    {
        took.sort();
        let (p50, p99) = if took.is_empty() {
            (f64::NAN, f64::NAN)
        } else {
            (ms(percentile(&took, 50.0)), ms(percentile(&took, 99.0)))
        };
        println!(
            "{build}: 16 clients (8 counting, 8 looking up), {what}: {:.1}/s answered 200, p50 {p50:.3} ms, p99 {p99:.3} ms ({} answered; {refused} not 200)",
            took.len() as f64 / elapsed.as_secs_f64(),
            took.len()
        );
    }
}
