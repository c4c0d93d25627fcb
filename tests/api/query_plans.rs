//! Search time must not grow with the data (issue 20 §4): for every search
//! parameter of every type, the statements Sprig runs (the count and the
//! page) are planned by the database itself, `EXPLAIN QUERY PLAN` on SQLite
//! and `EXPLAIN` on PostgreSQL, and must read through the parameter's index:
//! never a full scan of a table, and a lookup by a selective parameter (an
//! identifier, a referral, a patient) reaches each resource by its key
//! instead of walking every resource of the type.

use sprig::fhir::ResourceType;
use sprig::search::{ParamType, SearchQuery, all_params};
use sprig::store::{BoundValue, Visibility};
use sqlx::{Connection, Row};

use crate::helpers::{on_postgres, spawn_app};

/// The values a search parameter is checked with: each form the query
/// builder writes differently.
fn example_queries(name: &str, kind: ParamType) -> Vec<String> {
    match (name, kind) {
        ("_id", _) => vec!["_id=abc".into(), "_id=abc,def".into()],
        (_, ParamType::Token) => vec![
            format!("{name}=https://example.org/id|V-1"),
            format!("{name}=V-1"),
            format!("{name}=|V-1"),
            format!("{name}=https://example.org/id|"),
            format!("{name}=https://example.org/id|V-1,https://example.org/id|V-2"),
        ],
        (_, ParamType::Reference) => vec![format!("{name}=Patient/p1"), format!("{name}=p1")],
        (_, ParamType::Date) => vec![
            format!("{name}=ge2026-11-01"),
            format!("{name}=lt2026-11-01"),
            format!("{name}=2026-11-20"),
        ],
    }
}

/// The parameters whose lookups must start from their index and reach each
/// resource by its key (`SELECTIVE_PARAMS` in `store/sql/search.rs`).
fn is_selective(name: &str) -> bool {
    matches!(
        name,
        "_id" | "identifier" | "based-on" | "focus" | "subject" | "patient" | "derived-from"
    )
}

/// The table whose index a parameter is read through.
fn index_table(name: &str, kind: ParamType) -> &'static str {
    match (name, kind) {
        ("_id" | "_lastUpdated", _) => "resources",
        (_, ParamType::Token) => "search_tokens",
        (_, ParamType::Reference) => "search_references",
        (_, ParamType::Date) => "search_dates",
    }
}

async fn plan(conn: &mut sqlx::AnyConnection, sql: &str, binds: &[BoundValue]) -> Vec<String> {
    let explain = if on_postgres() {
        format!("EXPLAIN {sql}")
    } else {
        format!("EXPLAIN QUERY PLAN {sql}")
    };
    let mut query = sqlx::query(sqlx::AssertSqlSafe(explain));
    for bind in binds {
        query = match bind {
            BoundValue::Text(text) => query.bind(text.clone()),
            BoundValue::Int(n) => query.bind(*n),
        };
    }
    let rows = query.fetch_all(&mut *conn).await.expect("EXPLAIN");
    rows.iter()
        .map(|row| {
            if on_postgres() {
                row.try_get::<String, _>(0).expect("plan line")
            } else {
                row.try_get::<String, _>("detail").expect("plan line")
            }
        })
        .collect()
}

/// The types checked.
const TYPES: &[&str] = &[
    "ServiceRequest",
    "Task",
    "Observation",
    "Patient",
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "Consent",
    "Condition",
];

/// How many resources of each type the database is given, with index rows
/// for every parameter: enough that each database's statistics (`ANALYZE`)
/// tell a lookup from a walk, as a real database's would.
const SEEDED: usize = 2_000;

/// Seeds `SEEDED` resources of each type with distinct values of each
/// parameter, straight into the tables (the same SQL on both backends).
async fn seed(conn: &mut sqlx::AnyConnection) {
    for type_name in TYPES {
        let numbers = format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {SEEDED})"
        );
        let statements = [
            format!(
                "{numbers} INSERT INTO resources (resource_type, id, current_version, deleted, last_updated, owner_ods) \
                 SELECT '{type_name}', 'r' || i, 1, 0, '2026-11-20T10:00:00.000Z', 'A' || (i % 50) FROM n"
            ),
            format!(
                "{numbers} INSERT INTO resource_versions (resource_type, id, version_id, last_updated, operation, resource) \
                 SELECT '{type_name}', 'r' || i, 1, '2026-11-20T10:00:00.000Z', 'create', '{{}}' FROM n"
            ),
        ];
        for statement in statements {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut *conn)
                .await
                .expect("seed resources");
        }
        let resource_type = ResourceType::parse(type_name).expect("type");
        for param in all_params(resource_type) {
            let name = param.name;
            let insert = match param.kind {
                _ if name.starts_with('_') => continue,
                ParamType::Token => format!(
                    "INSERT INTO search_tokens (resource_type, id, param, system, code) \
                     SELECT '{type_name}', 'r' || i, '{name}', 'https://example.org/id', 'V-' || i FROM n"
                ),
                ParamType::Reference => format!(
                    "INSERT INTO search_references (resource_type, id, param, reference, target_type, target_id) \
                     SELECT '{type_name}', 'r' || i, '{name}', 'Patient/p' || i, 'Patient', 'p' || i FROM n"
                ),
                ParamType::Date => format!(
                    "INSERT INTO search_dates (resource_type, id, param, low, high) \
                     SELECT '{type_name}', 'r' || i, '{name}', '2026-11-20T00:00:00.000Z', '2026-11-20T23:59:59.999Z' FROM n"
                ),
            };
            let numbers = format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {SEEDED})"
            );
            sqlx::query(sqlx::AssertSqlSafe(format!("{numbers} {insert}")))
                .execute(&mut *conn)
                .await
                .expect("seed index rows");
        }
    }
}

#[tokio::test]
async fn every_search_parameter_is_read_through_its_index() {
    let app = spawn_app().await;
    let pool = app.db_pool().await;
    let mut conn = pool.acquire().await.expect("a connection").detach();
    seed(&mut conn).await;
    if on_postgres() {
        // The test's tables are nearly empty, where a sequential scan is
        // cheapest: forbid it, so that a plan with no usable index shows as
        // one (PostgreSQL still scans when nothing else can answer).
        sqlx::query("SET enable_seqscan = off")
            .execute(&mut conn)
            .await
            .expect("SET");
    } else {
        // No statistics, as in a database that grew since Sprig started (it
        // gathers them only at start-up): SQLite then plans by its default
        // guesses, where a lookup once walked a whole index of the type.
        sqlx::query("DELETE FROM sqlite_stat1")
            .execute(&mut conn)
            .await
            .ok();
        sqlx::query("ANALYZE sqlite_schema")
            .execute(&mut conn)
            .await
            .expect("reload statistics");
    }
    // PostgreSQL's autovacuum gathers statistics as a table grows, and Sprig gives a
    // table with rows its first ones within seconds (`first_statistics`), so only
    // SQLite's planner is ever left without them for long.
    let mut failures = if on_postgres() {
        Vec::new()
    } else {
        check_plans(&app, &mut conn, "without statistics").await
    };
    sqlx::query("ANALYZE")
        .execute(&mut conn)
        .await
        .expect("ANALYZE");
    failures.extend(check_plans(&app, &mut conn, "with statistics").await);
    conn.close().await.expect("close");
    assert!(
        failures.is_empty(),
        "{} plans read the wrong way:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every statement of every example query of every type, planned once; the
/// problems found.
async fn check_plans(
    app: &crate::helpers::TestApp,
    conn: &mut sqlx::AnyConnection,
    when: &str,
) -> Vec<String> {
    let mut failures = Vec::new();
    let mut checked = 0;
    for type_name in TYPES {
        let resource_type = ResourceType::parse(type_name).expect("type");
        for param in all_params(resource_type) {
            for raw in example_queries(param.name, param.kind) {
                let query = SearchQuery::parse(resource_type, &format!("{raw}&_total=accurate"))
                    .unwrap_or_else(|e| panic!("{type_name}?{raw}: {e:?}"));
                for visibility in [Visibility::All, Visibility::Practices(vec!["A7".into()])] {
                    for statement in app.store.search_statements(&query, &visibility) {
                        let lines = plan(&mut *conn, &statement.sql, &statement.binds).await;
                        checked += 1;
                        // `system|` matches every resource with an identifier
                        // from that system: not a lookup, so any good plan will do.
                        let lookup = is_selective(param.name) && !raw.ends_with('|');
                        let probe = lookup.then(|| probing_index(param.name, &raw));
                        if let Some(problem) = judge(param.name, param.kind, probe, &lines) {
                            failures.push(format!(
                                "{when}: {type_name}?{raw} ({visibility:?}): {problem}\n  {}\n  plan: {lines:#?}",
                                statement.sql
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 300, "only {checked} statements checked");
    failures
}

/// The indexes a lookup may probe for its matches: the parameter's own index
/// for the form of value asked (never `search_*_by_resource`, which holds
/// every row of the type in id order). `|code` (no system) is a probe of
/// either token index: both lead with the system or the code.
fn probing_index(name: &str, raw: &str) -> &'static [&'static str] {
    let value = raw.split_once('=').map_or("", |(_, value)| value);
    match name {
        "_id" => &[],
        "identifier" if value.starts_with('|') => {
            &["search_tokens_by_code", "search_tokens_by_system"]
        }
        // PostgreSQL's `search_tokens_by_system` holds the code too (migration 0018): a
        // probe of `system|code` either way.
        "identifier" if on_postgres() && value.contains('|') && !value.ends_with('|') => {
            &["search_tokens_by_code", "search_tokens_by_system"]
        }
        "identifier" => &["search_tokens_by_code"],
        _ if value.contains('/') => &["search_references_by_reference"],
        _ => &["search_references_by_target_id"],
    }
}

/// What is wrong with a plan, if anything.
fn judge(name: &str, kind: ParamType, probe: Option<&[&str]>, lines: &[String]) -> Option<String> {
    let table = index_table(name, kind);
    if on_postgres() {
        if let Some(scan) = lines.iter().find(|l| l.contains("Seq Scan")) {
            return Some(format!("a full scan: {scan}"));
        }
        let through_index = lines.iter().any(|l| {
            l.contains("Index")
                && (l.contains(&format!(" on {table}")) || l.contains(&format!(" {table}_")))
        });
        if !through_index {
            return Some(format!("{table} is not read through an index"));
        }
        if let Some(indexes) = probe {
            if !lines.iter().any(|l| l.contains("resources_pkey")) {
                return Some("the matching resources are not reached by their key".into());
            }
            let probes = |index: &&str| lines.iter().any(|l| l.contains(&format!(" {index} ")));
            if !indexes.is_empty() && !indexes.iter().any(probes) {
                return Some(format!(
                    "the lookup does not probe {}",
                    indexes.join(" or ")
                ));
            }
        }
        return None;
    }
    // SQLite: `SCAN t` is a full scan (of a table or a whole index); only
    // the selective lookup's own small result (`m`) may be scanned.
    if let Some(scan) = lines.iter().find(|l| {
        l.starts_with("SCAN ")
            && !l.starts_with("SCAN m")
            && !l.starts_with("SCAN CONSTANT")
            && !l.ends_with("-ROW VALUES CLAUSE")
    }) {
        return Some(format!("a full scan: {scan}"));
    }
    let through_index = lines.iter().any(|l| {
        l.starts_with("SEARCH")
            && (l.contains(&format!("INDEX {table}_"))
                || (table == "resources" && l.contains(" r ")))
    });
    if !through_index {
        return Some(format!("{table} is not read through an index"));
    }
    let indexes = probe?;
    if !lines.iter().any(|l| {
        l.starts_with("SEARCH r USING")
            && (l.contains("sqlite_autoindex_resources_1") || l.contains("PRIMARY KEY"))
            && l.contains("id=?")
    }) {
        return Some("the matching resources are not reached by their key".into());
    }
    let probes = |index: &&str| {
        lines
            .iter()
            .any(|l| l.starts_with("SEARCH x USING") && l.contains(&format!("INDEX {index} (")))
    };
    if !indexes.is_empty() && !indexes.iter().any(probes) {
        return Some(format!(
            "the lookup does not probe {}",
            indexes.join(" or ")
        ));
    }
    if let Some(walk) = lines
        .iter()
        .find(|l| l.contains("_by_resource (resource_type=?)"))
    {
        return Some(format!("the lookup walks the type's index rows: {walk}"));
    }
    None
}

/// A total that is not a lookup's (`status=…`, a search on one reference
/// parameter) reads only that parameter's index: an estimate counts the index
/// rows (SQLite: a covering index), an exact count their distinct ids; neither
/// reads a resource row (at a million referrals, reading them made a count of
/// `status=active` take 1.9 s and hold a reader meanwhile).
#[tokio::test]
async fn totals_of_a_search_on_one_parameter_read_only_its_index() {
    let app = spawn_app().await;
    let pool = app.db_pool().await;
    let mut conn = pool.acquire().await.expect("a connection").detach();
    seed(&mut conn).await;
    let analyze = if on_postgres() {
        "VACUUM ANALYZE"
    } else {
        "ANALYZE"
    };
    sqlx::query(analyze)
        .execute(&mut conn)
        .await
        .expect("statistics");
    if on_postgres() {
        sqlx::query("SET enable_seqscan = off")
            .execute(&mut conn)
            .await
            .expect("SET");
    }
    let mut failures = Vec::new();
    for (raw, index) in [
        ("status=V-1", "search_tokens_by_code"),
        ("status=https://example.org/id|V-1", "search_tokens_by_code"),
        ("status=V-1,V-2", "search_tokens_by_code"),
        ("code=https://example.org/id|", "search_tokens_by_system"),
        ("requester=Patient/p1", "search_references_by_reference"),
    ] {
        // On PostgreSQL either token index is a probe of `system|code` (migration 0018).
        let also = (on_postgres() && raw.contains("id|V-")).then_some("search_tokens_by_system");
        for total in ["accurate", "estimate"] {
            let query = SearchQuery::parse(
                ResourceType::SERVICE_REQUEST,
                &format!("{raw}&_count=0&_total={total}"),
            )
            .expect("query");
            let statements = app.store.search_statements(&query, &Visibility::All);
            let count = &statements[0];
            let lines = plan(&mut conn, &count.sql, &count.binds).await;
            let reads_resources = lines.iter().any(|l| {
                l.contains("resources") || l.starts_with("SEARCH r ") || l.starts_with("SCAN r")
            });
            let through = |l: &String| {
                if on_postgres() {
                    l.contains("Index")
                        && (l.contains(&format!("{index} "))
                            || also.is_some_and(|also| l.contains(&format!("{also} "))))
                } else if total == "estimate" {
                    l.contains(&format!("COVERING INDEX {index} "))
                } else {
                    l.contains(&format!("INDEX {index} "))
                }
            };
            if reads_resources
                || !lines.iter().any(through)
                || lines.iter().any(|l| l.contains("Seq Scan"))
            {
                failures.push(format!(
                    "{raw}&_total={total}: {}\n  plan: {lines:#?}",
                    count.sql
                ));
            }
        }
    }
    conn.close().await.expect("close");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The lookups outside search whose indexes migration 0017 changed read through
/// the index meant for them (`Store::lookup_statements`): a referral by its
/// identifier and the console's lookup by identifier value through the unique
/// `referrals_by_identifier`, which leads with the value (not the dropped
/// `referrals_by_identifier_value`); erasure's "who names this resource" through
/// `search_references_by_target_id`, one probe per type and reference parameter
/// (not the dropped `search_references_by_target`); the audit log's agent filter
/// through the three agent indexes that now hold only the rows naming one.
#[tokio::test]
async fn lookups_outside_search_read_their_index() {
    let app = spawn_app().await;
    let pool = app.db_pool().await;
    let mut conn = pool.acquire().await.expect("a connection").detach();
    seed(&mut conn).await;
    let numbers = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {SEEDED})"
    );
    for statement in [
        format!(
            "{numbers} INSERT INTO referrals (id, identifier_system, identifier_value, stage, \
             fhir_status, received_at, updated_at, received_as, practice_ods_code, task_id, version) \
             SELECT 'r' || i, 'https://example.org/id', 'V-' || i, 'received', 'active', \
             '2026-11-20T10:00:00.000Z', '2026-11-20T10:00:00.000Z', 'rest', 'A' || (i % 50), \
             't' || i, 1 FROM n"
        ),
        format!(
            "{numbers} INSERT INTO audit_events (recorded_at, client_id, staff_username, proxy_id, \
             interaction, search_params, patient_ids, referral_ids, status, outcome, request_id) \
             SELECT '2026-11-20T10:00:00.000Z', CASE WHEN i % 3 = 0 THEN 'client' || (i % 7) END, \
             CASE WHEN i % 3 = 1 THEN 'staff' || (i % 7) END, \
             CASE WHEN i % 30 = 2 THEN 'proxy' || (i % 7) END, 'create', '', '[]', '[]', 201, '0', \
             'req' || i FROM n"
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut conn)
            .await
            .expect("seed");
    }
    let analyze = if on_postgres() {
        "VACUUM ANALYZE"
    } else {
        "ANALYZE"
    };
    sqlx::query(analyze)
        .execute(&mut conn)
        .await
        .expect("statistics");
    if on_postgres() {
        sqlx::query("SET enable_seqscan = off")
            .execute(&mut conn)
            .await
            .expect("SET");
    }
    let mut failures = Vec::new();
    let lookups = app.store.lookup_statements();
    assert!(lookups.len() >= 4, "only {} lookups", lookups.len());
    for (indexes, statement) in lookups {
        let lines = plan(&mut conn, &statement.sql, &statement.binds).await;
        let scan = lines.iter().find(|l| {
            if on_postgres() {
                l.contains("Seq Scan")
            } else {
                l.starts_with("SCAN ") && !l.starts_with("SCAN CONSTANT")
            }
        });
        if let Some(scan) = scan {
            failures.push(format!(
                "{}: a full scan: {scan}\n  plan: {lines:#?}",
                statement.sql
            ));
            continue;
        }
        for index in indexes {
            let reads = |l: &String| {
                if on_postgres() {
                    l.contains(&format!(" {index} "))
                } else {
                    l.starts_with("SEARCH") && l.contains(&format!("INDEX {index} ("))
                }
            };
            if !lines.iter().any(reads) {
                failures.push(format!(
                    "{}: does not read {index}\n  plan: {lines:#?}",
                    statement.sql
                ));
            }
        }
    }
    conn.close().await.expect("close");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
