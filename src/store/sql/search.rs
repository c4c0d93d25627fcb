//! Search and history on SQLite, and the search index they read.
//!
//! The index (`migrations/sqlite/0002_search_index.sql`) holds, per current
//! resource, the values `search::index_entries` selects; `reindex` rewrites a
//! resource's rows inside the transaction that writes the resource, so the
//! index is never behind what a reader can see. Queries are built as plain
//! SQL with `$n` placeholders numbered in the order they appear (SQLite
//! numbers a named parameter by its first appearance), one `EXISTS` per
//! criterion, so the PostgreSQL backend can share them.

use serde_json::Value;
use sqlx::Connection;

use super::{Backend, Conn, Db, DbRow, INDEX_STATE_LOCK, Interruptible, LOOKUP_ID};
use crate::fhir::{FhirId, Instant, ResourceType, VersionId};
use crate::search::{
    Criterion, Cursor, DateCriterion, DatePrefix, IndexValue, ReferenceCriterion, SearchQuery,
    SortOrder, TokenCriterion, TotalMode, index_entries,
};
use crate::store::deferred::{IntoArg, Statement};
use crate::store::search::{BoundValue, INDEX_VERSION, SearchStatement};
use crate::store::{
    HistoryEntry, HistoryOperation, HistoryPage, SearchPage, StoreError, StoredResource, Visibility,
};

/// The statements that remove a resource's index rows.
pub(crate) fn clear_statements(resource_type: ResourceType, id: &FhirId) -> [Statement; 3] {
    [
        "DELETE FROM search_tokens WHERE resource_type = $1 AND id = $2",
        "DELETE FROM search_references WHERE resource_type = $1 AND id = $2",
        "DELETE FROM search_dates WHERE resource_type = $1 AND id = $2",
    ]
    .map(|delete| {
        Statement::new(delete)
            .bind(resource_type.as_str())
            .bind(id.as_str())
    })
}

/// Most rows in one multi-row INSERT: 500 rows of at most 6 values stay well under
/// SQLite's 32,766 bound parameters and PostgreSQL's 65,535, however large a Bundle.
pub(crate) const ROWS_PER_INSERT: usize = 500;

/// Index rows a write transaction has computed but not yet written: kept until the
/// transaction next reads the index (a conditional match), or commits, then written
/// with one multi-row INSERT per table for every resource written since. Every
/// statement is a round trip to SQLite's worker thread while the single writer is held
/// (or to the PostgreSQL server), so a new referral's four resources (ServiceRequest,
/// Task and their Provenance) cost three INSERTs instead of nine.
#[derive(Debug, Default)]
pub(crate) struct PendingIndex {
    tokens: Vec<TokenRow>,
    references: Vec<ReferenceRow>,
    dates: Vec<DateRow>,
}

/// A `search_tokens` row: `(resource_type, id, param, system, code)`.
type TokenRow = (&'static str, String, &'static str, Option<String>, String);
/// A `search_references` row: `(resource_type, id, param, reference, target_type,
/// target_id)`.
type ReferenceRow = (
    &'static str,
    String,
    &'static str,
    String,
    Option<&'static str>,
    Option<String>,
);
/// A `search_dates` row: `(resource_type, id, param, low, high)`.
type DateRow = (&'static str, String, &'static str, String, String);

impl PendingIndex {
    /// Adds the index rows of `resource`, which has none stored (or none pending).
    pub(crate) fn add(
        &mut self,
        resource_type: ResourceType,
        id: &FhirId,
        resource: &Value,
    ) -> Result<(), StoreError> {
        if let Err(error) = crate::search::params::compiled() {
            // Storing a resource the index cannot see would hide it from
            // conditional creates: refuse the write instead.
            return Err(StoreError::SearchIndex(error.to_string()));
        }
        let type_name = resource_type.as_str();
        for entry in index_entries(resource_type, resource) {
            let id = id.as_str().to_owned();
            match entry.value {
                IndexValue::Token { system, code } => {
                    self.tokens.push((type_name, id, entry.param, system, code));
                }
                IndexValue::Reference(reference) => self.references.push((
                    type_name,
                    id,
                    entry.param,
                    reference.reference,
                    reference.target_type.map(ResourceType::as_str),
                    reference.target_id,
                )),
                IndexValue::Date(range) => {
                    self.dates
                        .push((type_name, id, entry.param, range.low, range.high));
                }
            }
        }
        Ok(())
    }

    /// Forgets the pending rows of one resource (it is being rewritten or deleted).
    pub(crate) fn forget(&mut self, resource_type: ResourceType, id: &FhirId) {
        let (type_name, id) = (resource_type.as_str(), id.as_str());
        self.tokens
            .retain(|row| !(row.0 == type_name && row.1 == id));
        self.references
            .retain(|row| !(row.0 == type_name && row.1 == id));
        self.dates
            .retain(|row| !(row.0 == type_name && row.1 == id));
    }

    /// Writes every pending row, after the resource rows they refer to.
    pub(crate) fn take_statements(&mut self) -> Vec<Statement> {
        let mut statements = Vec::new();
        for chunk in std::mem::take(&mut self.tokens).chunks(ROWS_PER_INSERT) {
            statements.extend(Statement::insert_rows(
                "INSERT INTO search_tokens (resource_type, id, param, system, code)",
                chunk.iter().map(|(type_name, id, param, system, code)| {
                    [
                        (*type_name).into_arg(),
                        id.into_arg(),
                        (*param).into_arg(),
                        system.into_arg(),
                        code.into_arg(),
                    ]
                }),
            ));
        }
        for chunk in std::mem::take(&mut self.references).chunks(ROWS_PER_INSERT) {
            statements.extend(Statement::insert_rows(
                "INSERT INTO search_references \
                 (resource_type, id, param, reference, target_type, target_id)",
                chunk.iter().map(
                    |(type_name, id, param, reference, target_type, target_id)| {
                        [
                            (*type_name).into_arg(),
                            id.into_arg(),
                            (*param).into_arg(),
                            reference.into_arg(),
                            (*target_type).into_arg(),
                            target_id.into_arg(),
                        ]
                    },
                ),
            ));
        }
        for chunk in std::mem::take(&mut self.dates).chunks(ROWS_PER_INSERT) {
            statements.extend(Statement::insert_rows(
                "INSERT INTO search_dates (resource_type, id, param, low, high)",
                chunk.iter().map(|(type_name, id, param, low, high)| {
                    [
                        (*type_name).into_arg(),
                        id.into_arg(),
                        (*param).into_arg(),
                        low.into_arg(),
                        high.into_arg(),
                    ]
                }),
            ));
        }
        statements
    }
}

/// The current resources matching each of several conditions (a conditional create or
/// update, paging, sort and count ignored), as few statements as SQLite allows (one round
/// trip each, where each condition would be one with the writer held): for each
/// condition, in the order given, the matching resources in id order, each with its
/// current version and owner.
pub(crate) async fn matching_current(
    conn: &mut Conn,
    queries: &[&SearchQuery],
    visibility: &Visibility,
) -> Result<Vec<Vec<MatchedRow>>, StoreError> {
    let mut matches: Vec<Vec<MatchedRow>> = Vec::with_capacity(queries.len());
    // SQLite allows at most 500 terms in one compound SELECT, and `limits.max_repeats`
    // lets a Bundle carry more conditional entries than that.
    for (chunk, queries) in queries.chunks(CONDITIONS_PER_STATEMENT).enumerate() {
        let rows = matching_current_sql(queries, visibility)
            .query_as()
            .fetch_all(&mut *conn)
            .await?;
        matches.extend(by_condition(queries.len(), rows, chunk)?);
    }
    Ok(matches)
}

/// The rows of one [`matching_current_statement`] of `conditions` conditions, by
/// condition (the `chunk`-th of its request's, for the error should a row name none).
pub(super) fn by_condition(
    conditions: usize,
    rows: Vec<MatchedRow>,
    chunk: usize,
) -> Result<Vec<Vec<MatchedRow>>, StoreError> {
    let mut slots: Vec<Vec<MatchedRow>> = (0..conditions).map(|_| Vec::new()).collect();
    for row in rows {
        let slot = usize::try_from(row.k)
            .ok()
            .and_then(|at| slots.get_mut(at))
            .ok_or_else(|| StoreError::Corrupt {
                resource_type: String::new(),
                id: row.id.clone(),
                reason: format!("a match names condition {} of chunk {chunk}", row.k),
            })?;
        slot.push(row);
    }
    Ok(slots)
}

/// Most conditions matched in one statement ([`matching_current`], [`matches_changed`]).
pub(super) const CONDITIONS_PER_STATEMENT: usize = 64;

/// Guard reads (`Tx::fail_if_found`) that find a row when any of `queries` matches
/// otherwise than `seen` says (as a reader matched them: `Backend::committed_matching_current`):
/// a condition seen matching nothing matches something, or one seen matching one
/// resource matches another too, or that resource is no longer at the version seen
/// (changed or deleted since; at that version it still matches). Each row found is its
/// condition's position. One statement per [`CONDITIONS_PER_STATEMENT`] conditions;
/// `seen` must hold at most one match each, with its current version.
pub(crate) fn matches_changed(
    queries: &[&SearchQuery],
    visibility: &Visibility,
    seen: &[crate::store::Matched],
) -> Vec<Statement> {
    let mut guards = Vec::new();
    for (queries, seen) in queries
        .chunks(CONDITIONS_PER_STATEMENT)
        .zip(seen.chunks(CONDITIONS_PER_STATEMENT))
    {
        let mut sql = Sql::default();
        for (k, (query, matched)) in queries.iter().zip(seen).enumerate() {
            if k > 0 {
                sql.push(" UNION ALL ");
            }
            sql.push(&format!("SELECT CAST({k} AS TEXT)"));
            let driver = sql.push_from(query);
            sql.push_where(query, visibility, None, None, driver);
            let Some(current) = &matched.current else {
                // Seen matching nothing: any match now is a change.
                continue;
            };
            let stored = current.stored();
            // A match other than the version seen ...
            sql.push(" AND NOT (r.id = ");
            sql.push_text(stored.id.as_str());
            sql.push(" AND r.current_version = ");
            let version = sql.bind(Bind::Int(stored.version_id.get()));
            sql.push(&version);
            // ... or the version seen current no longer: changed or deleted since.
            sql.push(&format!(
                ") UNION ALL SELECT CAST({k} AS TEXT) WHERE NOT EXISTS (SELECT 1 FROM resources g \
                 WHERE g.resource_type = "
            ));
            sql.push_text(stored.resource_type.as_str());
            sql.push(" AND g.id = ");
            sql.push_text(stored.id.as_str());
            sql.push(" AND g.current_version = ");
            let version = sql.bind(Bind::Int(stored.version_id.get()));
            sql.push(&version);
            sql.push(" AND g.deleted = 0)");
        }
        sql.push(" LIMIT 1");
        guards.push(sql.into_statement());
    }
    guards
}

/// [`matching_current`] of at most [`CONDITIONS_PER_STATEMENT`] conditions: a `UNION
/// ALL` of one `SELECT` per condition, each row's `k` its condition's position here,
/// its columns those of [`MatchedRow`] in order.
fn matching_current_sql(queries: &[&SearchQuery], visibility: &Visibility) -> Sql {
    let mut sql = Sql::default();
    for (k, query) in queries.iter().enumerate() {
        if k > 0 {
            sql.push(" UNION ALL ");
        }
        sql.push(&format!(
            "SELECT CAST({k} AS BIGINT) AS k, r.id AS id, v.version_id AS version_id, \
             v.last_updated AS last_updated, v.resource AS resource, r.owner_ods AS owner_ods"
        ));
        let driver = sql.push_from(query);
        // `r.deleted = 0` (`push_where`): the current version is a resource, not a deletion.
        sql.push(
            " JOIN resource_versions v ON v.resource_type = r.resource_type AND v.id = r.id \
             AND v.version_id = r.current_version",
        );
        sql.push_where(query, visibility, None, None, driver);
    }
    sql.push(" ORDER BY k, id");
    sql
}

/// [`matching_current_sql`] as a [`Statement`], for a reader that runs statements
/// itself (SQLite's `direct::Readers`).
#[allow(dead_code, reason = "used by the SQLite backend only")]
pub(super) fn matching_current_statement(
    queries: &[&SearchQuery],
    visibility: &Visibility,
) -> Statement {
    matching_current_sql(queries, visibility).into_statement()
}

/// How long a search waits for write transactions that began before it to end, so that
/// what was committed before the search is in its answer; after that it answers without
/// their versions and any written after them (a later pull gets them).
const HORIZON_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Backend {
    /// The fixed-width instant a search serves versions before: the backend's commit
    /// horizon (SQLite: `CommitHorizon`, PostgreSQL: `HORIZON_SQL`), once it has passed
    /// the millisecond the search began in, or after [`HORIZON_WAIT`]. Every version
    /// stamped before it is committed or never will be, so a GP paging with the cursor
    /// or asking `_lastUpdated=gt` the newest `lastUpdated` it was given never skips a
    /// version that committed late with an earlier stamp: that version is not served
    /// until every version stamped after it can be.
    async fn settled_horizon(&self, conn: &mut Conn) -> Result<String, StoreError> {
        let (mut horizon, began) = self.commit_horizon(conn).await?;
        let deadline = tokio::time::Instant::now() + HORIZON_WAIT;
        // Backing off from 1 ms to 32 ms: on PostgreSQL each look is a query of
        // `pg_stat_activity`, and under write load every search may wait here; a fixed
        // 1 ms poll cost up to a thousand queries per search.
        let mut pause = std::time::Duration::from_millis(1);
        while horizon <= began && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(32));
            horizon = self.commit_horizon(conn).await?.0;
        }
        let horizon = Instant::from_unix_millis(horizon).ok_or_else(|| {
            StoreError::Database(sqlx::Error::Decode(
                format!("the commit horizon is {horizon} ms").into(),
            ))
        })?;
        Ok(horizon.to_fhir())
    }

    /// The statements `search` runs for `query` (the count, then the page).
    pub(in crate::store) fn search_statements(
        &self,
        query: &SearchQuery,
        visibility: &Visibility,
    ) -> Vec<SearchStatement> {
        statements(query, visibility, &Instant::now().to_fhir())
    }

    pub(in crate::store) async fn search(
        &self,
        query: &SearchQuery,
        visibility: &Visibility,
    ) -> Result<SearchPage, StoreError> {
        let counting = Counting::of(query, visibility);
        // A count that reads many index rows waits its turn before it takes a
        // connection, so the other requests keep theirs (see `CountGate`).
        let turn = match counting {
            Some(counting) if counting.gated => Some(self.counts.enter().await?),
            _ => None,
        };
        // Interrupted if the request ends before the answer is read.
        let mut reader = Interruptible::acquire(&self.readers).await?;
        // Before the read transaction (PostgreSQL keeps one snapshot of
        // `pg_stat_activity` per transaction).
        let horizon = self.settled_horizon(reader.conn()).await?;
        // One read transaction: the total and the page see the same snapshot.
        let mut tx = reader.conn().begin().await?;
        let total = match counting {
            Some(counting) => {
                let row: CountRow = counting
                    .sql(query, visibility, &horizon)
                    .query_as()
                    .fetch_one(&mut *tx)
                    .await?;
                Some(u64::try_from(row.n).unwrap_or(0))
            }
            None => None,
        };
        drop(turn);
        let total_estimated = counting.is_some_and(|c| c.kind == CountKind::Estimate);
        if query.count == 0 {
            tx.commit().await?;
            reader.release().await?;
            return Ok(SearchPage {
                resources: Vec::new(),
                total,
                total_estimated,
                next: None,
            });
        }

        let rows: Vec<SearchMatchRow> = page_sql(query, visibility, &horizon)
            .query_as()
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        reader.release().await?;

        let more = rows.len() > query.count as usize;
        let resources = rows
            .into_iter()
            .take(query.count as usize)
            .map(|row| row.into_domain(query.resource_type))
            .collect::<Result<Vec<_>, _>>()?;
        let next = if more {
            resources
                .last()
                .map(|last| Cursor::after(last.last_updated, last.id.clone()))
        } else {
            None
        };
        // A first page that holds every match has counted them already.
        let total = match total {
            None if query.total == TotalMode::WhenFree && query.cursor.is_none() && !more => {
                Some(resources.len() as u64)
            }
            total => total,
        };
        Ok(SearchPage {
            resources,
            total,
            total_estimated,
            next,
        })
    }

    pub(in crate::store) async fn history(
        &self,
        resource_type: ResourceType,
        id: &FhirId,
        count: u32,
        before: Option<VersionId>,
        visibility: &Visibility,
    ) -> Result<HistoryPage, StoreError> {
        let mut tx = self.readers.begin().await?;
        let owner: Option<(Option<String>,)> =
            sqlx::query_as("SELECT owner_ods FROM resources WHERE resource_type = $1 AND id = $2")
                .bind(resource_type.as_str())
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if !owner.is_some_and(|(owner,)| visibility.sees(owner.as_deref())) {
            // No such resource, or another practice's: no versions either way.
            tx.commit().await?;
            return Ok(HistoryPage {
                entries: Vec::new(),
                total: 0,
                next: None,
            });
        }
        let (total,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM resource_versions WHERE resource_type = $1 AND id = $2",
        )
        .bind(resource_type.as_str())
        .bind(id.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let rows = if count == 0 {
            Vec::new()
        } else {
            sqlx::query_as::<_, HistoryVersionRow>(
                "SELECT version_id, last_updated, operation, resource FROM resource_versions \
                 WHERE resource_type = $1 AND id = $2 AND version_id < $3 \
                 ORDER BY version_id DESC LIMIT $4",
            )
            .bind(resource_type.as_str())
            .bind(id.as_str())
            .bind(before.map_or(i64::MAX, VersionId::get))
            .bind(i64::from(count) + 1)
            .fetch_all(&mut *tx)
            .await?
        };
        tx.commit().await?;

        let more = rows.len() > count as usize;
        let entries = rows
            .into_iter()
            .take(count as usize)
            .map(|row| row.into_domain(resource_type, id))
            .collect::<Result<Vec<_>, _>>()?;
        let next = if more {
            entries.last().map(|e| e.version_id)
        } else {
            None
        };
        Ok(HistoryPage {
            entries,
            total: u64::try_from(total).unwrap_or(0),
            next,
        })
    }

    /// Rebuilds the whole index when it was built for another
    /// `INDEX_VERSION` (or never: resources stored before the index existed),
    /// in one write transaction. Returns how many resources were indexed.
    pub(in crate::store) async fn rebuild_index_if_stale(&self) -> Result<Option<u64>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let (built,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT index_version FROM search_index_state WHERE singleton = 1{INDEX_STATE_LOCK}"
        )))
        .fetch_one(&mut *tx)
        .await?;
        if built == INDEX_VERSION {
            return Ok(None);
        }
        for delete in [
            "DELETE FROM search_tokens",
            "DELETE FROM search_references",
            "DELETE FROM search_dates",
        ] {
            sqlx::query(delete).execute(&mut *tx).await?;
        }
        let mut indexed = 0u64;
        let mut after = (String::new(), String::new());
        loop {
            // In batches, so a large database is not read into memory at once.
            let rows: Vec<CurrentResourceRow> = sqlx::query_as(
                "SELECT r.resource_type, r.id, v.resource \
                 FROM resources r JOIN resource_versions v \
                   ON v.resource_type = r.resource_type AND v.id = r.id \
                  AND v.version_id = r.current_version \
                 WHERE r.deleted = 0 \
                   AND (r.resource_type > $1 OR (r.resource_type = $2 AND r.id > $3)) \
                 ORDER BY r.resource_type, r.id LIMIT 500",
            )
            .bind(&after.0)
            .bind(&after.0)
            .bind(&after.1)
            .fetch_all(&mut *tx)
            .await?;
            let Some(last) = rows.last() else { break };
            after = (last.resource_type.clone(), last.id.clone());
            // One multi-row INSERT per table for the whole batch of resources.
            let mut pending = PendingIndex::default();
            for row in rows {
                let bad = |reason: String| StoreError::Corrupt {
                    resource_type: row.resource_type.clone(),
                    id: row.id.clone(),
                    reason,
                };
                let resource_type =
                    ResourceType::parse(&row.resource_type).map_err(|e| bad(e.to_string()))?;
                let id = FhirId::parse(&row.id).map_err(|e| bad(e.to_string()))?;
                let json = row
                    .resource
                    .as_deref()
                    .ok_or_else(|| bad("current version has no resource".into()))?;
                let value: Value =
                    serde_json::from_str(json).map_err(|e| bad(format!("stored JSON: {e}")))?;
                // Every index row was deleted above: nothing to clear per resource.
                pending.add(resource_type, &id, &value)?;
                indexed += 1;
            }
            for statement in pending.take_statements() {
                super::statement::run_now(&mut tx, statement).await?;
            }
        }
        sqlx::query("UPDATE search_index_state SET index_version = $1 WHERE singleton = 1")
            .bind(INDEX_VERSION)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(indexed))
    }
}

/// How a search's total is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CountKind {
    /// Every match once, through the resources (`count_sql`).
    Exact,
    /// Every match once, from the index alone (`index_count_sql`).
    ExactFromIndex,
    /// The matching index rows, from the index alone (`estimate_sql`).
    Estimate,
}

/// The count a search runs, if any, and whether it waits its turn (`CountGate`).
#[derive(Debug, Clone, Copy)]
struct Counting {
    kind: CountKind,
    /// Not a lookup by a selective parameter: it may read very many rows.
    gated: bool,
}

impl Counting {
    /// The count `query` asks for: `_total=accurate` and `estimate` on every page,
    /// and without `_total`, `_count=0` (which asks for nothing but the total) an
    /// exact one. `None`: no count (a first page that holds every match is counted
    /// from the page).
    fn of(query: &SearchQuery, visibility: &Visibility) -> Option<Self> {
        let estimate = match query.total {
            TotalMode::Accurate => false,
            TotalMode::Estimate => true,
            TotalMode::WhenFree if query.count == 0 => false,
            TotalMode::WhenFree | TotalMode::None => return None,
        };
        let from_index = index_only_criterion(query, visibility).is_some();
        let kind = match (estimate, from_index) {
            (true, true) => CountKind::Estimate,
            (false, true) => CountKind::ExactFromIndex,
            // No cheaper way: an estimate is the exact count.
            (_, false) => CountKind::Exact,
        };
        Some(Self {
            kind,
            // An estimate reads only the index's rows for the value, a narrow range
            // of one index; a lookup by a selective parameter reads a few rows.
            gated: kind != CountKind::Estimate && driving_criterion(query).is_none(),
        })
    }

    /// The counting statement, its result named `n`.
    fn sql(self, query: &SearchQuery, visibility: &Visibility, horizon: &str) -> Sql {
        match (self.kind, index_only_criterion(query, visibility)) {
            (CountKind::ExactFromIndex, Some(criterion)) => index_count_sql(query, criterion),
            (CountKind::Estimate, Some(criterion)) => estimate_sql(query, criterion),
            _ => count_sql(query, visibility, horizon),
        }
    }
}

/// The one criterion of a search that can be counted from its index alone: a token
/// or reference parameter that is not a lookup (whose count through the resources
/// reads a few rows anyway), the search's only criterion, for a caller who sees every
/// practice (the index rows carry no owner). The index holds rows only for current,
/// non-deleted resources, so nothing else of `resources` is needed; such a count does
/// not apply the page's commit horizon (it counts what is committed, and a version
/// committing in the last millisecond may be counted before a page shows it).
fn index_only_criterion<'q>(
    query: &'q SearchQuery,
    visibility: &Visibility,
) -> Option<&'q Criterion> {
    match (visibility, query.criteria.as_slice()) {
        (Visibility::All, [criterion @ (Criterion::Token(..) | Criterion::Reference(..))])
            if driving_criterion(query).is_none() =>
        {
            Some(criterion)
        }
        _ => None,
    }
}

/// The exact count of a search on one parameter, from that parameter's index alone:
/// the distinct ids its rows name (`push_matching_ids`), never a resource row.
fn index_count_sql(query: &SearchQuery, criterion: &Criterion) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT COUNT(*) AS n FROM ");
    match criterion {
        Criterion::Token(param, tokens) => sql.push_matching_ids(
            "search_tokens",
            query,
            param,
            &token_forms(tokens),
            Sql::push_token_form,
        ),
        Criterion::Reference(param, references) => sql.push_matching_ids(
            "search_references",
            query,
            param,
            &reference_forms(references),
            Sql::push_reference_form,
        ),
        _ => sql.push("(SELECT NULL AS id WHERE 1 = 0)"),
    }
    sql.push(" m");
    sql
}

/// `_total=estimate` for a search on one parameter: the index rows that match, each
/// form of value counted on its own (`SELECT COUNT(*)` over one range of one index,
/// which both databases answer from the index alone), added up. Never fewer than the
/// matches: a resource counts once per matching value of the parameter (a `status`
/// or an `intent` has one, so those estimates are exact).
fn estimate_sql(query: &SearchQuery, criterion: &Criterion) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT 0");
    let each = |sql: &mut Sql, table: &str, param: &str, form: &dyn Fn(&mut Sql)| {
        sql.push(" + (SELECT COUNT(*) FROM ");
        sql.push_index_rows(table, query, param);
        form(sql);
        sql.push("))");
    };
    match criterion {
        Criterion::Token(param, tokens) => {
            for form in token_forms(tokens) {
                each(&mut sql, "search_tokens", param, &|sql: &mut Sql| {
                    sql.push_token_form(&form)
                });
            }
        }
        Criterion::Reference(param, references) => {
            for form in reference_forms(references) {
                each(&mut sql, "search_references", param, &|sql: &mut Sql| {
                    sql.push_reference_form(&form)
                });
            }
        }
        _ => {}
    }
    sql.push(" AS n");
    sql
}

/// The statement that counts `query`'s matches.
fn count_sql(query: &SearchQuery, visibility: &Visibility, horizon: &str) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT COUNT(*) AS n");
    let driver = sql.push_from(query);
    sql.push_where(query, visibility, Some(horizon), None, driver);
    sql
}

/// The statement that reads one page of `query`'s matches (one more than a
/// page: whether it comes back says if there is a next page).
fn page_sql(query: &SearchQuery, visibility: &Visibility, horizon: &str) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT r.id, r.last_updated, v.version_id, v.resource");
    let driver = sql.push_from(query);
    sql.push(
        " JOIN resource_versions v \
           ON v.resource_type = r.resource_type AND v.id = r.id \
          AND v.version_id = r.current_version",
    );
    sql.push_where(
        query,
        visibility,
        Some(horizon),
        query.cursor.as_ref(),
        driver,
    );
    let direction = match query.sort {
        SortOrder::NewestFirst => "DESC",
        SortOrder::OldestFirst => "ASC",
    };
    sql.push(&format!(
        " ORDER BY r.last_updated {direction}, r.id {direction} LIMIT "
    ));
    let limit = sql.bind(Bind::Int(i64::from(query.count) + 1));
    sql.push(&limit);
    sql
}

/// The statements a search runs (the count, then the page), with their
/// bound values, for the tests that check their query plans.
fn statements(query: &SearchQuery, visibility: &Visibility, horizon: &str) -> Vec<SearchStatement> {
    let count = Counting::of(query, visibility).map_or_else(
        || count_sql(query, visibility, horizon),
        |counting| counting.sql(query, visibility, horizon),
    );
    [count, page_sql(query, visibility, horizon)]
        .into_iter()
        .map(|sql| SearchStatement {
            sql: sql.text,
            binds: sql
                .binds
                .into_iter()
                .map(|bind| match bind {
                    Bind::Text(text) => BoundValue::Text(text),
                    Bind::Int(n) => BoundValue::Int(n),
                })
                .collect(),
        })
        .collect()
}

/// The parameters whose values pick out a few resources each (a business
/// identifier, a referral, a patient): a search on one of them starts from
/// the parameter's index and reads only the matching resources. Any other
/// criterion is checked, through its index, on the resources read in page
/// order, which stops at a page when matches are common (`status=active`).
const SELECTIVE_PARAMS: &[&str] = &[
    "identifier",
    "based-on",
    "focus",
    "subject",
    "patient",
    "derived-from",
];

/// The criterion a search starts from, if one is selective: `_id` first,
/// then the first selective token or reference parameter.
fn driving_criterion(query: &SearchQuery) -> Option<usize> {
    let selective = |criterion: &Criterion| match criterion {
        Criterion::Token(param, _) | Criterion::Reference(param, _) => {
            SELECTIVE_PARAMS.contains(param)
        }
        _ => false,
    };
    query
        .criteria
        .iter()
        .position(|criterion| matches!(criterion, Criterion::Id(_)))
        .or_else(|| query.criteria.iter().position(selective))
}

/// A token parameter's alternatives grouped by the index that finds them: each
/// form is one `IN` list (or one `system|code` pair), so the expression's depth
/// does not grow with the number of values.
enum TokenForm<'q> {
    /// `code`: any system (`search_tokens_by_code`).
    Codes(Vec<&'q str>),
    /// `|code`: no system (`search_tokens_by_code`).
    CodesWithoutSystem(Vec<&'q str>),
    /// `system|`: any code of the system (`search_tokens_by_system`).
    Systems(Vec<&'q str>),
    /// One `system|code` (`search_tokens_by_code`).
    Pair(&'q str, &'q str),
    /// Several `system|code` (`search_tokens_by_code`).
    Pairs(Vec<(&'q str, &'q str)>),
}

fn token_forms(tokens: &[TokenCriterion]) -> Vec<TokenForm<'_>> {
    let mut codes = Vec::new();
    let mut without_system = Vec::new();
    let mut systems = Vec::new();
    let mut pairs = Vec::new();
    for token in tokens {
        match token {
            TokenCriterion::Code(code) => codes.push(code.as_str()),
            TokenCriterion::CodeWithoutSystem(code) => without_system.push(code.as_str()),
            TokenCriterion::System(system) => systems.push(system.as_str()),
            TokenCriterion::SystemCode(system, code) => {
                pairs.push((system.as_str(), code.as_str()))
            }
        }
    }
    let mut forms = Vec::new();
    if !codes.is_empty() {
        forms.push(TokenForm::Codes(codes));
    }
    if !without_system.is_empty() {
        forms.push(TokenForm::CodesWithoutSystem(without_system));
    }
    if !systems.is_empty() {
        forms.push(TokenForm::Systems(systems));
    }
    match pairs.as_slice() {
        [] => {}
        [(system, code)] => forms.push(TokenForm::Pair(system, code)),
        _ => forms.push(TokenForm::Pairs(pairs)),
    }
    forms
}

/// A reference parameter's alternatives grouped by the index that finds them.
enum ReferenceForm {
    /// `Type/id` and absolute URLs (`search_references_by_reference`).
    Exact(Vec<String>),
    /// A plain `id`, of any type (`search_references_by_target_id`).
    TargetIds(Vec<String>),
}

fn reference_forms(references: &[ReferenceCriterion]) -> Vec<ReferenceForm> {
    let mut exact = Vec::new();
    let mut ids = Vec::new();
    for reference in references {
        match reference {
            ReferenceCriterion::Typed(resource_type, id) => {
                exact.push(format!("{resource_type}/{id}"))
            }
            ReferenceCriterion::Url(url) => exact.push(url.clone()),
            ReferenceCriterion::Id(id) => ids.push(id.as_str().to_owned()),
        }
    }
    let mut forms = Vec::new();
    if !exact.is_empty() {
        forms.push(ReferenceForm::Exact(exact));
    }
    if !ids.is_empty() {
        forms.push(ReferenceForm::TargetIds(ids));
    }
    forms
}

/// A bound value.
enum Bind {
    Text(String),
    Int(i64),
}

/// SQL text and its binds, numbered in order of appearance.
#[derive(Default)]
struct Sql {
    text: String,
    binds: Vec<Bind>,
}

impl Sql {
    fn push(&mut self, text: &str) {
        self.text.push_str(text);
    }

    /// Adds a bind and returns its placeholder; append the placeholder
    /// before binding the next value.
    fn bind(&mut self, value: Bind) -> String {
        self.binds.push(value);
        format!("${}", self.binds.len())
    }

    fn push_text(&mut self, value: &str) {
        let placeholder = self.bind(Bind::Text(value.to_owned()));
        self.push(&placeholder);
    }

    /// The statement as data, to run later (a guard read: `Tx::fail_if_found`).
    fn into_statement(self) -> Statement {
        self.binds
            .into_iter()
            .fold(Statement::new(self.text), |statement, bind| match bind {
                Bind::Text(text) => statement.bind(text),
                Bind::Int(n) => statement.bind(n),
            })
    }

    /// The statement, its rows decoded as `O`.
    fn query_as<O>(&self) -> sqlx::query::QueryAs<'_, Db, O, <Db as sqlx::Database>::Arguments>
    where
        O: for<'r> sqlx::FromRow<'r, DbRow>,
    {
        // Audited: the text is built only from constants; every value is bound.
        let mut query = sqlx::query_as(sqlx::AssertSqlSafe(self.text.clone()));
        for bind in &self.binds {
            query = match bind {
                Bind::Text(text) => query.bind(text.as_str()),
                Bind::Int(n) => query.bind(*n),
            };
        }
        query
    }

    /// ` FROM …` ending in `resources r`: when a criterion is selective
    /// (`driving_criterion`), its matching ids first (`m`), from its index,
    /// and each resource then read by its key. `CROSS JOIN` keeps that order
    /// on SQLite, whose planner otherwise walks the whole type in page order
    /// and tests each resource (a full scan for a lookup by identifier);
    /// PostgreSQL plans it as any inner join. Returns the criterion it
    /// started from, which `push_where` then leaves out.
    fn push_from(&mut self, query: &SearchQuery) -> Option<usize> {
        let driver = driving_criterion(query);
        self.push(" FROM ");
        match driver.and_then(|at| query.criteria.get(at)) {
            Some(Criterion::Id(ids)) => {
                self.push("(SELECT DISTINCT t.id FROM resources t WHERE t.resource_type = ");
                self.push_text(query.resource_type.as_str());
                self.push(" AND t.id IN (");
                for (i, id) in ids.iter().enumerate() {
                    if i > 0 {
                        self.push(", ");
                    }
                    self.push_text(id.as_str());
                }
                self.push(")) m CROSS JOIN ");
            }
            Some(Criterion::Token(param, tokens)) => {
                let forms = token_forms(tokens);
                self.push_matching_ids(
                    "search_tokens",
                    query,
                    param,
                    &forms,
                    Self::push_token_form,
                );
                self.push(" m CROSS JOIN ");
            }
            Some(Criterion::Reference(param, references)) => {
                let forms = reference_forms(references);
                self.push_matching_ids(
                    "search_references",
                    query,
                    param,
                    &forms,
                    Self::push_reference_form,
                );
                self.push(" m CROSS JOIN ");
            }
            _ => {}
        }
        self.push("resources r");
        driver
    }

    /// `{table} x WHERE x.resource_type = … AND x.param = … AND (`: one parameter's
    /// rows of an index table, the caller adds the value's condition and closes it.
    fn push_index_rows(&mut self, table: &str, query: &SearchQuery, param: &str) {
        self.push(&format!("{table} x WHERE x.resource_type = "));
        self.push_text(query.resource_type.as_str());
        self.push(" AND x.param = ");
        self.push_text(param);
        self.push(" AND (");
    }

    /// `(SELECT … id FROM {table} x WHERE … AND (form))`: the ids whose index rows
    /// match one of `forms`, each id once, the caller names the result. One form is
    /// one `SELECT DISTINCT`; several are one `SELECT` each joined by `UNION` (which
    /// drops duplicates), so each probes its own index. In one `SELECT` joined by
    /// `OR`, SQLite without statistics walks every row of the parameter instead.
    /// The id is selected as [`LOOKUP_ID`] so that SQLite does not walk
    /// `search_*_by_resource` to produce the ids in order for the `DISTINCT`.
    fn push_matching_ids<F>(
        &mut self,
        table: &str,
        query: &SearchQuery,
        param: &str,
        forms: &[F],
        mut each: impl FnMut(&mut Self, &F),
    ) {
        let distinct = if forms.len() == 1 { "DISTINCT " } else { "" };
        self.push("(");
        for (i, form) in forms.iter().enumerate() {
            if i > 0 {
                self.push(" UNION ");
            }
            self.push(&format!("SELECT {distinct}{LOOKUP_ID} AS id FROM "));
            self.push_index_rows(table, query, param);
            each(self, form);
            self.push(")");
        }
        self.push(")");
    }

    /// ` WHERE …` for `query` over `resources r`, among the resources
    /// `visibility` sees, stamped before `horizon` (see `Backend::settled_horizon`),
    /// starting after `cursor`. The one place every search, count and conditional
    /// match gets its practice filter. `driver`: the criterion `push_from` started
    /// from, met by joining on its ids.
    fn push_where(
        &mut self,
        query: &SearchQuery,
        visibility: &Visibility,
        horizon: Option<&str>,
        cursor: Option<&Cursor>,
        driver: Option<usize>,
    ) {
        self.push(" WHERE r.resource_type = ");
        self.push_text(query.resource_type.as_str());
        if driver.is_some() {
            self.push(" AND r.id = m.id");
        }
        self.push(" AND r.deleted = 0");
        if let Some(horizon) = horizon {
            self.push(" AND r.last_updated < ");
            self.push_text(horizon);
        }
        match visibility {
            Visibility::All => {}
            // `1 = 0`, not `0`: PostgreSQL wants a boolean.
            Visibility::Practices(codes) if codes.is_empty() => self.push(" AND 1 = 0"),
            Visibility::Practices(codes) => {
                self.push(" AND r.owner_ods IN (");
                for (i, code) in codes.iter().enumerate() {
                    if i > 0 {
                        self.push(", ");
                    }
                    self.push_text(code);
                }
                self.push(")");
            }
        }
        for (at, criterion) in query.criteria.iter().enumerate() {
            if Some(at) == driver {
                continue;
            }
            self.push(" AND ");
            self.push_criterion(criterion);
        }
        if let Some(cursor) = cursor {
            let before_or_after = match query.sort {
                SortOrder::NewestFirst => "<",
                SortOrder::OldestFirst => ">",
            };
            // The bound on `last_updated` alone first, so that the range read of
            // `resources_by_type_updated_id` (or `resources_by_owner`) starts at
            // the cursor and a page costs a page however deep it is: PostgreSQL
            // takes no index range from the `OR` below (SQLite 3.50 does, so it
            // changes nothing there: BENCHMARKS.md, the deep page).
            self.push(&format!(" AND r.last_updated {before_or_after}= "));
            self.push_text(&cursor.last_updated);
            self.push(&format!(" AND (r.last_updated {before_or_after} "));
            self.push_text(&cursor.last_updated);
            self.push(" OR (r.last_updated = ");
            self.push_text(&cursor.last_updated);
            self.push(&format!(" AND r.id {before_or_after} "));
            self.push_text(cursor.id.as_str());
            self.push("))");
        }
    }

    fn push_criterion(&mut self, criterion: &Criterion) {
        match criterion {
            Criterion::Id(ids) => {
                self.push("r.id IN (");
                for (i, id) in ids.iter().enumerate() {
                    if i > 0 {
                        self.push(", ");
                    }
                    self.push_text(id.as_str());
                }
                self.push(")");
            }
            Criterion::LastUpdated(dates) => {
                self.push("(");
                self.push_alternatives(dates, |sql, date| {
                    sql.push_date(date, "r.last_updated", "r.last_updated")
                });
                self.push(")");
            }
            Criterion::Token(param, tokens) => {
                self.push_exists("search_tokens", param);
                self.push_alternatives(&token_forms(tokens), Self::push_token_form);
                self.push("))");
            }
            Criterion::Reference(param, references) => {
                self.push_exists("search_references", param);
                self.push_alternatives(&reference_forms(references), Self::push_reference_form);
                self.push("))");
            }
            Criterion::Date(param, dates) => {
                self.push_exists("search_dates", param);
                self.push_alternatives(dates, |sql, date| sql.push_date(date, "x.low", "x.high"));
                self.push("))");
            }
        }
    }

    /// `EXISTS (SELECT 1 FROM {table} x WHERE … AND (`; the caller closes both.
    fn push_exists(&mut self, table: &str, param: &str) {
        self.push(&format!(
            "EXISTS (SELECT 1 FROM {table} x WHERE x.resource_type = r.resource_type \
             AND x.id = r.id AND x.param = "
        ));
        self.push_text(param);
        self.push(" AND (");
    }

    fn push_alternatives<T>(&mut self, items: &[T], mut each: impl FnMut(&mut Self, &T)) {
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.push(" OR ");
            }
            self.push("(");
            each(self, item);
            self.push(")");
        }
    }

    /// `column IN (…)` with a placeholder per value (never empty: the forms
    /// that call it are only made with values).
    fn push_in(&mut self, column: &str, values: &[&str]) {
        self.push(column);
        self.push(" IN (");
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.push_text(value);
        }
        self.push(")");
    }

    /// One form of a token parameter's alternatives (see [`token_forms`]).
    fn push_token_form(&mut self, form: &TokenForm<'_>) {
        match form {
            TokenForm::Codes(codes) => self.push_in("x.code", codes),
            TokenForm::CodesWithoutSystem(codes) => {
                self.push("x.system IS NULL AND ");
                self.push_in("x.code", codes);
            }
            TokenForm::Systems(systems) => self.push_in("x.system", systems),
            TokenForm::Pair(system, code) => {
                self.push("x.system = ");
                self.push_text(system);
                self.push(" AND x.code = ");
                self.push_text(code);
            }
            TokenForm::Pairs(pairs) => {
                // The codes alone first: SQLite reads a row-value `IN (VALUES …)`
                // through no index, so without them every token of the type
                // would be read; the pairs then pick the right systems.
                let codes: Vec<&str> = pairs.iter().map(|(_, code)| *code).collect();
                self.push_in("x.code", &codes);
                self.push(" AND (x.system, x.code) IN (VALUES ");
                for (i, (system, code)) in pairs.iter().enumerate() {
                    if i > 0 {
                        self.push(", ");
                    }
                    self.push("(");
                    self.push_text(system);
                    self.push(", ");
                    self.push_text(code);
                    self.push(")");
                }
                self.push(")");
            }
        }
    }

    /// One form of a reference parameter's alternatives (see [`reference_forms`]).
    fn push_reference_form(&mut self, form: &ReferenceForm) {
        match form {
            ReferenceForm::Exact(references) => {
                let references: Vec<&str> = references.iter().map(String::as_str).collect();
                self.push_in("x.reference", &references);
            }
            ReferenceForm::TargetIds(ids) => {
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                self.push_in("x.target_id", &ids);
            }
        }
    }

    /// FHIR's date comparisons between the indexed range `[low, high]` and
    /// the searched range `[from, to]` (R4 search, "date"): `eq` when the
    /// searched range contains the value's, `gt` when the value's extends
    /// after it, `sa` when it starts after it, and so on.
    fn push_date(&mut self, date: &DateCriterion, low: &str, high: &str) {
        let from = date.range.low.as_str();
        let to = date.range.high.as_str();
        let contained = |sql: &mut Self| {
            sql.push(&format!("({low} >= "));
            sql.push_text(from);
            sql.push(&format!(" AND {high} <= "));
            sql.push_text(to);
            sql.push(")");
        };
        match date.prefix {
            DatePrefix::Eq => contained(self),
            DatePrefix::Ne => {
                self.push("NOT ");
                contained(self);
            }
            DatePrefix::Gt | DatePrefix::Ge => {
                self.push(&format!("{high} > "));
                self.push_text(to);
                if date.prefix == DatePrefix::Ge {
                    self.push(" OR ");
                    contained(self);
                }
            }
            DatePrefix::Lt | DatePrefix::Le => {
                self.push(&format!("{low} < "));
                self.push_text(from);
                if date.prefix == DatePrefix::Le {
                    self.push(" OR ");
                    contained(self);
                }
            }
            DatePrefix::Sa => {
                self.push(&format!("{low} > "));
                self.push_text(to);
            }
            DatePrefix::Eb => {
                self.push(&format!("{high} < "));
                self.push_text(from);
            }
        }
    }
}

fn corrupt(resource_type: ResourceType, id: &str, reason: String) -> StoreError {
    StoreError::Corrupt {
        resource_type: resource_type.to_string(),
        id: id.to_owned(),
        reason,
    }
}

/// One match of one condition ([`matching_current`]): the condition's position in its
/// statement, the resource's id, and its current version as a read decodes it.
#[derive(sqlx::FromRow)]
pub(super) struct MatchedRow {
    k: i64,
    pub(super) id: String,
    #[sqlx(flatten)]
    pub(super) version: super::resources::VisibleVersionRow,
}

impl MatchedRow {
    /// A row read other than through sqlx (SQLite's `direct::Readers`).
    #[allow(dead_code, reason = "used by the SQLite backend only")]
    pub(super) fn new(k: i64, id: String, version: super::resources::VisibleVersionRow) -> Self {
        Self { k, id, version }
    }
}

/// A search's total (`count_sql`, `index_count_sql`, `estimate_sql`).
#[derive(sqlx::FromRow)]
struct CountRow {
    n: i64,
}

/// A current resource, for the start-up index rebuild.
#[derive(sqlx::FromRow)]
struct CurrentResourceRow {
    resource_type: String,
    id: String,
    resource: Option<String>,
}

/// One resource on a page of search results (`page_sql`).
#[derive(sqlx::FromRow)]
struct SearchMatchRow {
    id: String,
    last_updated: String,
    version_id: i64,
    resource: Option<String>,
}

impl SearchMatchRow {
    fn into_domain(self, resource_type: ResourceType) -> Result<StoredResource, StoreError> {
        let id =
            FhirId::parse(&self.id).map_err(|e| corrupt(resource_type, &self.id, e.to_string()))?;
        let last_updated = Instant::parse(&self.last_updated)
            .map_err(|e| corrupt(resource_type, &self.id, e.to_string()))?;
        let json = self.resource.ok_or_else(|| {
            corrupt(
                resource_type,
                &self.id,
                "current version has no resource".into(),
            )
        })?;
        Ok(StoredResource {
            resource_type,
            id,
            version_id: VersionId::from_i64(self.version_id),
            last_updated,
            json,
        })
    }
}

/// One version in a resource's history.
#[derive(sqlx::FromRow)]
struct HistoryVersionRow {
    version_id: i64,
    last_updated: String,
    operation: String,
    resource: Option<String>,
}

impl HistoryVersionRow {
    fn into_domain(
        self,
        resource_type: ResourceType,
        id: &FhirId,
    ) -> Result<HistoryEntry, StoreError> {
        let last_updated = Instant::parse(&self.last_updated)
            .map_err(|e| corrupt(resource_type, id.as_str(), e.to_string()))?;
        let operation = match self.operation.as_str() {
            "create" => HistoryOperation::Create,
            "update" => HistoryOperation::Update,
            "delete" => HistoryOperation::Delete,
            other => {
                return Err(corrupt(
                    resource_type,
                    id.as_str(),
                    format!("unknown operation '{other}'"),
                ));
            }
        };
        Ok(HistoryEntry {
            version_id: VersionId::from_i64(self.version_id),
            last_updated,
            operation,
            json: self.resource,
        })
    }
}
