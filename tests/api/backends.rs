//! Both backends: the whole suite runs a second time against PostgreSQL, in
//! a child run of this same test binary with `TEST_BACKEND=postgres`
//! (every `spawn_app` then gets a fresh PostgreSQL database), so
//! `cargo test` covers SQLite and PostgreSQL alike.

use std::process::Command;

use crate::helpers::{on_postgres, postgres_server};

/// Test databases older than this are from finished runs: dropped.
const STALE_AFTER_SECS: u64 = 3 * 3600;

#[tokio::test]
async fn the_whole_suite_passes_on_postgresql() {
    assert!(
        !on_postgres(),
        "the child run skips this test; it must not recurse"
    );
    drop_stale_databases().await;
    let exe = std::env::current_exe().expect("this test binary");
    let child = Command::new(exe)
        .env("TEST_BACKEND", "postgres")
        // Tests that only SQLite has (file modes, its own pool) skip themselves.
        .args(["--skip", "backends::", "--test-threads", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the test binary runs");
    let child_pid = child.id();
    let output = child.wait_with_output().expect("the test binary ends");
    // The child's databases (`sprig_t_<seconds>_<its pid>_<n>`, one per test app) are
    // dropped now, not 3 hours later: a few hundred per run filled a shared machine's
    // disk (11 GB) within one afternoon of runs.
    drop_databases(|name| name.split('_').nth(3) == Some(&child_pid.to_string())).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let failures: Vec<&str> = stdout
        .lines()
        .filter(|l| l.ends_with("... FAILED") || l.starts_with("test result"))
        .collect();
    assert!(
        output.status.success(),
        "the suite fails on PostgreSQL:\n{}\n---\n{}",
        failures.join("\n"),
        // The end of the output holds each failure's message.
        stdout
            .get(stdout.len().saturating_sub(20_000)..)
            .unwrap_or(&stdout)
    );
}

/// Drops the `sprig_t_<unix seconds>_…` databases earlier runs left behind.
async fn drop_stale_databases() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    drop_databases(|name| {
        let stamp = name
            .split('_')
            .nth(2)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(now);
        now.saturating_sub(stamp) > STALE_AFTER_SECS
    })
    .await;
}

/// Drops the `sprig_t_…` test databases whose names `doomed` picks.
async fn drop_databases(doomed: impl Fn(&str) -> bool) {
    let Ok(mut admin) = <sqlx::PgConnection as sqlx::Connection>::connect(&format!(
        "{}/postgres",
        postgres_server()
    ))
    .await
    else {
        // The child run reports the missing server in every test.
        return;
    };
    let names: Vec<(String,)> =
        sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE 'sprig\\_t\\_%'")
            .fetch_all(&mut admin)
            .await
            .expect("list databases");
    for (name,) in names {
        if doomed(&name) {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await;
        }
    }
}

/// A PostgreSQL database that is not UTF8 would store names and notes mangled (or
/// refuse them): Sprig stops at start-up, naming the setting, before it migrates
/// anything. Run once (not in the PostgreSQL child run: it makes its own database).
#[tokio::test]
async fn a_postgresql_database_not_in_utf8_stops_start_up_naming_the_setting() {
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&format!(
        "{}/postgres",
        postgres_server()
    ))
    .await
    .expect("PostgreSQL at TEST_POSTGRES");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    // The `sprig_t_<seconds>_` prefix lets a later run drop it if this one dies.
    let name = format!("sprig_t_{stamp}_ascii_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {name} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
    )))
    .execute(&mut admin)
    .await
    .expect("create the SQL_ASCII database");
    let database = format!("{}/{name}", postgres_server());
    let opened = sprig::store::Store::open(&sprig::store::StoreOptions {
        database: database.clone(),
        busy_timeout: std::time::Duration::from_secs(5),
        max_read_connections: 2,
        durable_commits: true,
        sqlite_caches: sprig::store::SqliteCaches::default(),
    })
    .await;
    let message = match opened {
        Ok(_) => panic!("Sprig started on a SQL_ASCII database"),
        Err(error) => error.to_string(),
    };
    assert!(
        message.contains("ENCODING 'SQL_ASCII'") && message.contains("needs ENCODING 'UTF8'"),
        "{message}"
    );
    // Nothing was migrated into it.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&database)
        .await
        .expect("connect");
    let (tables,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&mut conn)
    .await
    .expect("tables");
    assert_eq!(tables, 0);
    drop(conn);
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await;
}

/// On a PostgreSQL database whose default collation is linguistic (ICU `en-US`, where
/// `a` sorts before `B` and `a-c` before `ab` as in `en_US.UTF-8`), Sprig starts, and ids
/// order byte by byte, as on SQLite: the text columns are `COLLATE "C"` (migration 0016).
/// Paging by the keyset cursor visits each resource once, in that order, and the
/// lookups still use their indexes. Run once (not in the PostgreSQL child run: it makes
/// its own database).
#[tokio::test]
async fn text_orders_byte_by_byte_on_a_postgresql_database_with_a_linguistic_collation() {
    use sprig::fhir::ResourceType;
    use sprig::search::SearchQuery;
    use sprig::store::Visibility;

    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&format!(
        "{}/postgres",
        postgres_server()
    ))
    .await
    .expect("PostgreSQL at TEST_POSTGRES");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let name = format!("sprig_t_{stamp}_icu_{}", std::process::id());
    // This machine has no en_US locale of its own; ICU's en-US collates the same way.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' \
         LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
    )))
    .execute(&mut admin)
    .await
    .expect("create the en-US database");
    let database = format!("{}/{name}", postgres_server());
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&database)
        .await
        .expect("connect");
    let (linguistic,): (bool,) = sqlx::query_as("SELECT 'a' < 'B' AND 'a-c' < 'ab'")
        .fetch_one(&mut conn)
        .await
        .expect("the default collation");
    assert!(linguistic, "the database's own collation is not byte order");
    let store = sprig::store::Store::open(&sprig::store::StoreOptions {
        database: database.clone(),
        busy_timeout: std::time::Duration::from_secs(5),
        max_read_connections: 2,
        durable_commits: true,
        sqlite_caches: sprig::store::SqliteCaches::default(),
    })
    .await
    .expect("Sprig starts on it");
    // Every text column, including those of migrations after 0016, compares in byte
    // order: a later migration that adds a column without `COLLATE "C"` would take this
    // database's en-US default, and PostgreSQL refuses to compare it with a `C` column.
    let linguistic_columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.table_name::text, c.column_name::text \
         FROM information_schema.columns c \
         JOIN information_schema.tables t \
           ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
         WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' \
           AND c.data_type = 'text' AND c.table_name <> '_sqlx_migrations' \
           AND c.collation_name IS DISTINCT FROM 'C' \
         ORDER BY 1, 2",
    )
    .fetch_all(&mut conn)
    .await
    .expect("the columns' collations");
    assert!(
        linguistic_columns.is_empty(),
        "text columns not in byte order (declare them COLLATE \"C\"): {linguistic_columns:?}"
    );
    // Four Patients stamped in one millisecond: the ids alone order them.
    let ids = ["ab", "a", "B", "a-c"];
    for id in ids {
        sqlx::query(
            "INSERT INTO resources (resource_type, id, current_version, deleted, last_updated) \
             VALUES ('Patient', $1, 1, 0, '2026-11-20T10:00:00.000Z')",
        )
        .bind(id)
        .execute(&mut conn)
        .await
        .expect("resource");
        sqlx::query(
            "INSERT INTO resource_versions (resource_type, id, version_id, last_updated, operation, resource) \
             VALUES ('Patient', $1, 1, '2026-11-20T10:00:00.000Z', 'create', '{}')",
        )
        .bind(id)
        .execute(&mut conn)
        .await
        .expect("version");
    }
    let mut byte_order: Vec<&str> = ids.to_vec();
    byte_order.sort_unstable();
    assert_eq!(byte_order, ["B", "a", "a-c", "ab"]);
    let (ordered,): (String,) =
        sqlx::query_as("SELECT string_agg(id, ' ' ORDER BY id) FROM resources")
            .fetch_one(&mut conn)
            .await
            .expect("ordered");
    assert_eq!(ordered, byte_order.join(" "));
    // Page by page, oldest first, one a page: each once, in byte order.
    let mut seen = Vec::new();
    let mut raw = "_sort=_lastUpdated&_count=1".to_owned();
    loop {
        let query =
            SearchQuery::parse(ResourceType::parse("Patient").expect("type"), &raw).expect("query");
        let page = store.search(&query, &Visibility::All).await.expect("page");
        seen.extend(page.resources.iter().map(|r| r.id.as_str().to_owned()));
        let Some(next) = page.next else { break };
        assert!(seen.len() <= ids.len(), "paging does not end: {seen:?}");
        raw = query.next_query(&next);
    }
    assert_eq!(seen, byte_order);
    // The primary key still answers a range on the id.
    let plan: Vec<(String,)> = sqlx::query_as(
        "EXPLAIN SELECT id FROM resources WHERE resource_type = 'Patient' AND id > 'B' \
         ORDER BY resource_type, id LIMIT 2",
    )
    .fetch_all(&mut conn)
    .await
    .expect("EXPLAIN");
    let plan: Vec<String> = plan.into_iter().map(|(line,)| line).collect();
    assert!(
        plan.iter()
            .any(|l| l.contains("Index") && l.contains("resources_pkey")),
        "{plan:#?}"
    );
    store.close().await;
    drop(conn);
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await;
}
