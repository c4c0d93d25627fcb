//! Search on the SQLite backend: the index rows, flat SQL, interrupted readers
//! and the start-up rebuild, checked against the tables themselves.

use std::time::Duration;

use serde_json::json;

use serde_json::Value;

use super::Interruptible;
use super::SqliteStore;
use super::search::{PendingIndex, clear_statements, matching_current};
use super::statement::run_now;
use crate::fhir::VersionId;
use crate::fhir::{FhirId, ResourceType};
use crate::search::SearchQuery;
use crate::store::{NewResource, ReadOutcome, Store, StoreError, StoreOptions, Visibility};

/// Replaces the index rows of `resource_type/id` with those of `resource` on `conn`,
/// as a write transaction does (its rows queued; here run at once).
async fn reindex(
    conn: &mut sqlx::SqliteConnection,
    resource_type: ResourceType,
    id: &FhirId,
    resource: Option<&Value>,
) -> Result<(), StoreError> {
    let mut statements = clear_statements(resource_type, id).to_vec();
    if let Some(resource) = resource {
        let mut pending = PendingIndex::default();
        pending.add(resource_type, id, resource)?;
        statements.extend(pending.take_statements());
    }
    for statement in statements {
        run_now(conn, statement).await?;
    }
    Ok(())
}

async fn open(dir: &tempfile::TempDir) -> SqliteStore {
    let options = StoreOptions {
        database: dir.path().join("sprig.db").display().to_string(),
        busy_timeout: Duration::from_secs(5),
        max_read_connections: 2,
        durable_commits: false,
        sqlite_caches: crate::store::SqliteCaches::default(),
    };
    match Store::open(&options).await.expect("store opens") {
        Store::Sqlite(store) => store,
        Store::Postgres(_) => unreachable!("a file path opens SQLite"),
    }
}

async fn create(store: &SqliteStore, resource: Value) -> FhirId {
    create_owned(store, resource, None).await
}

async fn create_owned(store: &SqliteStore, resource: Value, owner: Option<&str>) -> FhirId {
    let resource_type =
        ResourceType::parse(resource["resourceType"].as_str().expect("resourceType"))
            .expect("type");
    store
        .create(NewResource {
            resource_type,
            resource,
            received: b"{}",
            request_id: "test",
            owner,
        })
        .await
        .expect("created")
        .id
}

fn task(status: &str, based_on: &str) -> Value {
    json!({
        "resourceType": "Task",
        "status": status,
        "intent": "order",
        "basedOn": [{"reference": based_on}],
        "for": {"reference": "Patient/p1"},
        "lastModified": "2026-11-21T11:15:00+00:00",
    })
}

async fn matches(store: &SqliteStore, query: &str) -> Vec<FhirId> {
    let query = SearchQuery::parse(ResourceType::TASK, query).expect("valid query");
    let mut conn = store.writer.acquire().await.expect("connection");
    matching_ids(&mut conn, &query, &Visibility::All)
        .await
        .expect("query runs")
}

/// The ids `query` matches among what `visibility` sees, as a conditional entry
/// matches them (`matching_current`).
async fn matching_ids(
    conn: &mut sqlx::SqliteConnection,
    query: &SearchQuery,
    visibility: &Visibility,
) -> Result<Vec<FhirId>, crate::store::StoreError> {
    Ok(matching_current(conn, &[query], visibility)
        .await?
        .into_iter()
        .flatten()
        .map(|row| FhirId::parse(&row.id).expect("a stored id"))
        .collect())
}

async fn index_rows(store: &SqliteStore, id: &FhirId) -> i64 {
    let mut total = 0;
    for count in [
        "SELECT COUNT(*) FROM search_tokens WHERE id = $1",
        "SELECT COUNT(*) FROM search_references WHERE id = $1",
        "SELECT COUNT(*) FROM search_dates WHERE id = $1",
    ] {
        let (n,): (i64,) = sqlx::query_as(count)
            .bind(id.as_str())
            .fetch_one(&store.readers)
            .await
            .expect("count");
        total += n;
    }
    total
}

#[tokio::test]
async fn matching_ids_sees_current_resources_in_the_writers_transaction() {
    let dir = tempfile::TempDir::new().expect("dir");
    let store = open(&dir).await;
    let a = create(&store, task("accepted", "ServiceRequest/sr1")).await;
    let b = create(&store, task("completed", "ServiceRequest/sr1")).await;
    create(&store, task("accepted", "ServiceRequest/sr2")).await;

    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(matches(&store, "based-on=ServiceRequest/sr1").await, both);
    assert_eq!(
        matches(&store, "based-on=sr1&status=accepted").await,
        vec![a.clone()]
    );
    assert_eq!(matches(&store, "based-on=sr3").await, Vec::<FhirId>::new());
    // Paging and count do not limit a conditional match.
    assert_eq!(matches(&store, "based-on=sr1&_count=1").await, both);

    // Inside a transaction, an uncommitted write is seen, and rolled back with it.
    let mut tx = store.writer.begin().await.expect("tx");
    let query = SearchQuery::parse(ResourceType::TASK, "based-on=sr9").expect("query");
    let pending = FhirId::parse("pending").expect("id");
    sqlx::query(
        "INSERT INTO resources (resource_type, id, current_version, deleted, last_updated) \
         VALUES ('Task', 'pending', 1, 0, '2026-11-21T00:00:00.000Z')",
    )
    .execute(&mut *tx)
    .await
    .expect("insert");
    sqlx::query(
        "INSERT INTO resource_versions (resource_type, id, version_id, last_updated, operation, resource) \
         VALUES ('Task', 'pending', 1, '2026-11-21T00:00:00.000Z', 'create', '{\"resourceType\":\"Task\",\"id\":\"pending\"}')",
    )
    .execute(&mut *tx)
    .await
    .expect("insert its version");
    reindex(
        &mut tx,
        ResourceType::TASK,
        &pending,
        Some(&task("accepted", "ServiceRequest/sr9")),
    )
    .await
    .expect("reindex");
    assert_eq!(
        matching_ids(&mut tx, &query, &Visibility::All)
            .await
            .expect("runs"),
        vec![pending.clone()]
    );
    tx.rollback().await.expect("rollback");
    assert_eq!(index_rows(&store, &pending).await, 0);
}

#[tokio::test]
async fn many_values_make_flat_sql_that_finds_the_same() {
    let dir = tempfile::TempDir::new().expect("dir");
    let store = open(&dir).await;
    let a = create(&store, task("accepted", "ServiceRequest/sr1")).await;
    let b = create(&store, task("completed", "ServiceRequest/sr2")).await;
    // 100 codes, 100 system|code pairs, 100 references: one IN list each, no
    // expression SQLite finds too deep.
    let codes = (0..99)
        .map(|n| format!("s{n}"))
        .chain(["accepted".to_owned()])
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        matches(&store, &format!("status={codes}")).await,
        vec![a.clone()]
    );
    let mut identified = task("accepted", "ServiceRequest/sr3");
    identified["identifier"] = json!([{"system": "http://x", "value": "t1"}]);
    let c = create(&store, identified).await;
    let pairs = (0..98)
        .map(|n| format!("http://x|s{n}"))
        .chain(["http://x|t1".to_owned(), "|completed".to_owned()])
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        matches(&store, &format!("identifier={pairs}")).await,
        vec![c.clone()]
    );
    let mixed = format!("status={pairs}");
    assert_eq!(matches(&store, &mixed).await, vec![b.clone()]);
    let references = (0..98)
        .map(|n| format!("ServiceRequest/x{n}"))
        .chain(["ServiceRequest/sr1".to_owned(), "sr2".to_owned()])
        .collect::<Vec<_>>()
        .join(",");
    let query = format!("based-on={references}&status={codes}");
    assert_eq!(matches(&store, &query).await, vec![a.clone()]);
    let query =
        SearchQuery::parse(ResourceType::TASK, &format!("based-on={references}")).expect("query");
    let page = store
        .search(&query, &Visibility::All)
        .await
        .expect("search runs");
    assert_eq!(page.total, Some(2));
}

#[tokio::test]
async fn a_reader_dropped_mid_query_stops_it_and_frees_its_connection() {
    let dir = tempfile::TempDir::new().expect("dir");
    let options = StoreOptions {
        database: dir.path().join("sprig.db").display().to_string(),
        busy_timeout: Duration::from_secs(10),
        // One reader: a query still running would hold it.
        max_read_connections: 1,
        durable_commits: false,
        sqlite_caches: crate::store::SqliteCaches::default(),
    };
    let Store::Sqlite(store) = Store::open(&options).await.expect("store opens") else {
        unreachable!("a file path opens SQLite")
    };
    let mut reader = Interruptible::acquire(&store.readers)
        .await
        .expect("reader");
    // Minutes of work, if nothing stops it.
    let endless = sqlx::query(
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 4000000000) \
         SELECT COUNT(*) FROM n",
    );
    let running =
        tokio::time::timeout(Duration::from_millis(200), endless.fetch_one(reader.conn())).await;
    assert!(running.is_err(), "the query was still running");
    drop(reader);
    let started = std::time::Instant::now();
    let (one,): (i64,) = sqlx::query_as("SELECT 1")
        .fetch_one(&store.readers)
        .await
        .expect("a reader is free again");
    assert_eq!(one, 1);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Released normally, a reader goes back to the pool without its handler.
    let mut reader = Interruptible::acquire(&store.readers)
        .await
        .expect("reader");
    let (two,): (i64,) = sqlx::query_as("SELECT 2")
        .fetch_one(reader.conn())
        .await
        .expect("runs");
    assert_eq!(two, 2);
    reader.release().await.expect("released");
    let (three,): (i64,) = sqlx::query_as("SELECT 3")
        .fetch_one(&store.readers)
        .await
        .expect("runs");
    assert_eq!(three, 3);
}

#[tokio::test]
async fn deleting_removes_the_index_rows_and_the_match() {
    let dir = tempfile::TempDir::new().expect("dir");
    let store = open(&dir).await;
    let id = create(&store, task("accepted", "ServiceRequest/sr1")).await;
    // status, based-on, patient, subject and modified.
    assert_eq!(index_rows(&store, &id).await, 5);
    store
        .delete(ResourceType::TASK, &id, "test")
        .await
        .expect("deleted");
    assert_eq!(index_rows(&store, &id).await, 0);
    assert!(matches(&store, "status=accepted").await.is_empty());
    assert!(matches(&store, &format!("_id={id}")).await.is_empty());
}

#[tokio::test]
async fn a_stale_index_is_rebuilt_at_start_up() {
    let dir = tempfile::TempDir::new().expect("dir");
    let store = open(&dir).await;
    let id = create(&store, task("accepted", "ServiceRequest/sr1")).await;
    // As if the resource predated the index, or the table changed.
    for statement in [
        "DELETE FROM search_tokens",
        "DELETE FROM search_references",
        "DELETE FROM search_dates",
        "UPDATE search_index_state SET index_version = 0",
    ] {
        sqlx::query(statement)
            .execute(&store.writer)
            .await
            .expect("statement");
    }
    assert!(matches(&store, "status=accepted").await.is_empty());
    store.close().await;

    let store = open(&dir).await;
    assert_eq!(matches(&store, "status=accepted").await, vec![id.clone()]);
    assert_eq!(index_rows(&store, &id).await, 5);
    // Up to date now: opening again rebuilds nothing.
    assert_eq!(store.rebuild_index_if_stale().await.expect("runs"), None);
}

#[tokio::test]
async fn a_practice_sees_only_its_own_resources_on_every_read() {
    let dir = tempfile::TempDir::new().expect("dir");
    let store = open(&dir).await;
    let mine = create_owned(
        &store,
        task("accepted", "ServiceRequest/sr1"),
        Some("A81001"),
    )
    .await;
    let theirs = create_owned(
        &store,
        task("accepted", "ServiceRequest/sr1"),
        Some("B82001"),
    )
    .await;
    let nobodys = create(&store, task("accepted", "ServiceRequest/sr1")).await;
    let a = Visibility::Practices(vec!["A81001".into()]);
    let none = Visibility::Practices(Vec::new());

    let query = SearchQuery::parse(
        ResourceType::TASK,
        "based-on=ServiceRequest/sr1&_count=1&_total=accurate",
    )
    .expect("query");
    let page = store.search(&query, &a).await.expect("search");
    assert_eq!(page.total, Some(1), "the total counts only A's");
    assert_eq!(page.resources.len(), 1);
    assert_eq!(page.resources[0].id, mine);
    assert!(page.next.is_none(), "no next page of B's");
    let all = store
        .search(&query, &Visibility::All)
        .await
        .expect("search");
    assert_eq!(all.total, Some(3));
    let page = store.search(&query, &none).await.expect("search");
    assert_eq!(page.total, Some(0));

    let mut conn = store.writer.acquire().await.expect("connection");
    assert_eq!(
        matching_ids(&mut conn, &query, &a).await.expect("runs"),
        vec![mine.clone()]
    );
    drop(conn);

    for id in [&theirs, &nobodys] {
        let read = store.read(ResourceType::TASK, id, &a).await.expect("read");
        assert!(matches!(read, ReadOutcome::NotFound), "{id}");
        let vread = store
            .vread(ResourceType::TASK, id, VersionId::FIRST, &a)
            .await
            .expect("vread");
        assert!(matches!(vread, ReadOutcome::NotFound), "{id}");
        let history = store
            .history(ResourceType::TASK, id, 10, None, &a)
            .await
            .expect("history");
        assert_eq!(history.total, 0, "{id}");
        assert!(history.entries.is_empty(), "{id}");
    }
    let read = store
        .read(ResourceType::TASK, &mine, &a)
        .await
        .expect("read");
    assert!(matches!(read, ReadOutcome::Found(_)));
    let history = store
        .history(ResourceType::TASK, &mine, 10, None, &a)
        .await
        .expect("history");
    assert_eq!(history.total, 1);
}

/// A lookup starts from the ids its index rows give, one `SELECT` per form of value
/// joined by `UNION`: a resource with index rows for several of the values asked
/// (two identifiers, two references) is one match, counted once.
#[tokio::test]
async fn a_resource_matching_several_values_of_a_lookup_is_one_match() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open(&dir).await;
    let mut resource = task("accepted", "ServiceRequest/sr1");
    resource["basedOn"] = json!([
        {"reference": "ServiceRequest/sr1"},
        {"reference": "ServiceRequest/sr2"},
    ]);
    resource["identifier"] = json!([
        {"system": "https://example.org/task", "value": "A"},
        {"system": "https://example.org/task", "value": "B"},
    ]);
    let id = create(&store, resource).await;
    create(&store, task("accepted", "ServiceRequest/sr3")).await;
    for query in [
        "based-on=ServiceRequest/sr1,ServiceRequest/sr2",
        "based-on=ServiceRequest/sr1,sr2",
        "based-on=sr1,sr2",
        "identifier=https://example.org/task|A,https://example.org/task|B",
        "identifier=A,https://example.org/task|B",
        "identifier=A,B",
        "identifier=A,|B,https://example.org/task|",
    ] {
        assert_eq!(matches(&store, query).await, vec![id.clone()], "{query}");
        let parsed = SearchQuery::parse(ResourceType::TASK, &format!("{query}&_total=accurate"))
            .expect("query");
        let page = store
            .search(&parsed, &Visibility::All)
            .await
            .expect("search runs");
        assert_eq!((page.total, page.resources.len()), (Some(1), 1), "{query}");
    }
}

/// Exact counts that are not lookups take turns (`CountGate`): while every turn is
/// taken, such a count waits and past the store's wait is refused as busy (a 503),
/// while lookups, estimates and pages, which need no turn, are answered at once.
#[tokio::test]
async fn exact_counts_wait_their_turn_and_nothing_else_does() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let options = StoreOptions {
        database: dir.path().join("sprig.db").display().to_string(),
        busy_timeout: Duration::from_millis(300),
        // Two readers: one may count at a time.
        max_read_connections: 2,
        durable_commits: false,
        sqlite_caches: crate::store::SqliteCaches::default(),
    };
    let Store::Sqlite(store) = Store::open(&options).await.expect("store opens") else {
        unreachable!("a file path opens SQLite")
    };
    for n in 0..3 {
        create(&store, task("requested", &format!("ServiceRequest/sr{n}"))).await;
    }
    let search = |raw: &str| {
        let query = SearchQuery::parse(ResourceType::TASK, raw).expect("query");
        let store = store.clone();
        async move { store.search(&query, &Visibility::All).await }
    };
    let turn = store.counts.enter().await.expect("the only turn");
    let started = std::time::Instant::now();
    let refused = search("status=requested&_count=0").await;
    assert!(
        matches!(refused, Err(crate::store::StoreError::CountsBusy)),
        "{refused:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(250), "it waited");
    let accurate = search("status=requested&_total=accurate").await;
    assert!(accurate.is_err(), "{accurate:?}");
    // No turn needed: a lookup's count, an estimate, a page without a total.
    let lookup = search("based-on=ServiceRequest/sr1&_total=accurate").await;
    assert_eq!(lookup.expect("a lookup").total, Some(1));
    let estimate = search("status=requested&_total=estimate")
        .await
        .expect("estimate");
    assert_eq!((estimate.total, estimate.total_estimated), (Some(3), true));
    let page = search("status=requested&_count=2").await.expect("a page");
    assert_eq!((page.resources.len(), page.total), (2, None));
    drop(turn);
    let counted = search("status=requested&_count=0").await.expect("its turn");
    assert_eq!((counted.total, counted.total_estimated), (Some(3), false));
}
