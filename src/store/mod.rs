//! Durable storage of FHIR resources and their history.
//!
//! Two backends behind one interface: SQLite (`sqlite`: WAL mode, one
//! writer connection and a pool of readers) for one instance on one machine,
//! and PostgreSQL (`postgres`) for several instances on one database. The
//! SQL both run is written once, in `store/sql/`, and compiled into each
//! backend with its own types; each backend adds what only it does (locks,
//! pragmas, notifications). Callers see `Store` and `WriteTx`, never a
//! backend. Migrations live in per-dialect folders under `migrations/`.
//!
//! Architecture invariants:
//! - a write returns only after its transaction has committed (with
//!   `synchronous = FULL` by default, after it is on disk), so a 201 means
//!   the resource survives a crash or restart;
//! - versions are never overwritten: an update or deletion adds a version;
//! - this module stores what it is given: parsing and validation happen
//!   before, in `fhir` and `validation`;
//! - every resource has an owning practice (`resources.owner_ods`, set at its
//!   first write, never changed), and every read of resources takes a
//!   [`Visibility`]: a practice's caller is served its own practice's
//!   resources only, and anything else is "not found", on every path (read,
//!   vread, history, search and its total, conditional matches).

pub mod admin;
pub mod audit;
mod deferred;
mod gate;
pub mod identity;
pub mod milestones;
pub mod outbox;
mod postgres;
pub mod referrals;
pub mod reports;
pub mod retention;
mod search;
pub mod sessions;
mod sqlite;
mod write;

use std::time::Duration;

use serde_json::Value;
use thiserror::Error;

use crate::fhir::{FhirId, Instant, ResourceType, VersionId};
use crate::search::{Cursor, SearchQuery};

pub use audit::{AuditEventRow, AuditFilter, AuditOutcome, AuditPage, AuditRecord};
pub use gate::CommitGate;
pub use identity::StaffAccountRow;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Runs `$body` with `$b` bound to the backend of `$on` (a `Store` or a
/// `WriteTx`): the one place a caller's request meets a backend.
macro_rules! dispatch {
    ($on:expr, $b:ident => $body:expr) => {
        match $on {
            Self::Sqlite($b) => $body,
            Self::Postgres($b) => $body,
        }
    };
}
pub(crate) use dispatch;

/// [`dispatch!`] for a call on a `WriteTx` that may run statements. On PostgreSQL a
/// statement that fails aborts the whole transaction on the server, whose `COMMIT`
/// then answers `ROLLBACK` (which sqlx reports as success): so a call that fails, or
/// is dropped midway, leaves the transaction refusing to commit
/// ([`postgres::Tx::call_begins`]), as SQLite's does for its queued statements.
macro_rules! dispatch_write {
    ($on:expr, $b:ident => $body:expr) => {
        match $on {
            Self::Sqlite($b) => $body,
            Self::Postgres($b) => {
                let before = $b.call_begins();
                let result = $body;
                $b.call_ended(before, &result);
                result
            }
        }
    };
}
pub(crate) use dispatch_write;
pub use search::{BoundValue, SearchStatement};
pub use write::{CurrentVersion, Matched, ResourceWrite, Updated, WriteTx, WrittenVersion};

/// Why the store could not do what was asked.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database location names a backend this build cannot use.
    #[error(
        "unsupported database '{0}': use a SQLite file path, a sqlite: URL or a postgres:// URL"
    )]
    UnsupportedDatabase(String),
    /// The database's settings would corrupt or misorder what Sprig stores (its
    /// encoding, its collation): the message names the setting and what it must be.
    #[error("unsuitable database: {0}")]
    UnsuitableDatabase(String),
    /// The database answered with an error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Schema migrations failed.
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// An update names a resource that does not exist.
    #[error("{resource_type}/{id} does not exist")]
    NotFound {
        /// Type of the resource.
        resource_type: String,
        /// Its id.
        id: String,
    },
    /// An update expected another current version (`If-Match`).
    #[error("{resource_type}/{id} is at version {current}, not {expected}")]
    VersionConflict {
        /// Type of the resource.
        resource_type: String,
        /// Its id.
        id: String,
        /// The version the writer expected.
        expected: VersionId,
        /// The current version.
        current: VersionId,
    },
    /// The search index cannot be written (its expressions failed to
    /// compile: a defect), so the write was refused rather than stored unindexed.
    #[error("search index unavailable: {0}")]
    SearchIndex(String),
    /// The write batch holding this request's changes did not commit (SQLite
    /// group commit): none of them is stored.
    #[error("the write batch did not commit: {0}")]
    GroupCommit(String),
    /// Every turn to count exactly was taken for longer than the store waits
    /// (`search::CountGate`): many clients are asking for totals at once.
    #[error("too many exact counts are running; nothing was counted")]
    CountsBusy,
    /// The request ran out of time before its commit began: nothing of it is
    /// stored.
    #[error("the request timed out before it committed")]
    TimedOut,
    /// An earlier call of this write transaction failed or was abandoned midway
    /// (its caller went on): nothing of it is kept. A defect of the caller's.
    #[error("the write cannot commit: {0}")]
    WriteAbandoned(String),
    /// The business identifier a new referral's write claimed
    /// (`WriteTx::claim_identifier`) is another referral's already, committed or in the
    /// same SQLite batch: nothing of the write is kept. The holder's id. From the
    /// commit, the holder's commit is durable; met by an earlier call (a read after
    /// the claim, on SQLite), the transaction's commit waits for that and answers this
    /// again.
    #[error("referral {0} holds this business identifier already")]
    IdentifierHeld(String),
    /// Another write reached SQLite's writer first and changed what this one was built
    /// from, as a reader had seen it (its guard, `Guard`, says what): a condition it
    /// expected to match as seen now matches otherwise (`WriteTx::expect_matching`), or
    /// a copy of its message's request id has been answered
    /// (`WriteTx::claim_message_request`). Nothing of the write is kept. From the
    /// commit, the batch that may hold that other write is durable. The caller writes
    /// again, reading under the writer.
    #[error("another write came first: {0}; nothing of this one was stored")]
    Overtaken(&'static str),
    /// A row holds something the store never writes.
    #[error("corrupt row for {resource_type}/{id}: {reason}")]
    Corrupt {
        /// Type of the resource.
        resource_type: String,
        /// Its id.
        id: String,
        /// What is wrong.
        reason: String,
    },
}

impl StoreError {
    /// True when retrying later may succeed (the database is busy or every
    /// connection is in use), as opposed to a defect.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::PoolTimedOut) => true,
            // Nothing of the request is stored; the next batch may well commit.
            StoreError::GroupCommit(_) | StoreError::TimedOut => true,
            // Counts queue behind others: a later request gets its turn.
            StoreError::CountsBusy => true,
            // Another write got there first and this one kept nothing: its caller writes
            // again (or answers as to a resubmission), and if one ever reached a client, a
            // retry is answered from what the other write stored.
            StoreError::IdentifierHeld(_) | StoreError::Overtaken(_) => true,
            // A dropped connection (a PostgreSQL failover or restart, a network cut) or a
            // pool closing at shutdown: the request may succeed on another connection or
            // instance. A write whose COMMIT was cut off may or may not have committed;
            // retrying it is safe, as a resubmission is recognised by its identifier.
            StoreError::Database(
                sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed,
            ) => true,
            StoreError::Database(sqlx::Error::Database(db)) => {
                let Some(code) = db.code() else {
                    return false;
                };
                // PostgreSQL: serialization failure, deadlock, too many connections,
                // the server shutting down or restarting (57P01, 57P02), cannot connect
                // now (a starting or failing-over server), a connection exception
                // (class 08), and a write reaching a server that is now a read-only
                // standby (25006: the old primary after a failover).
                if matches!(
                    code.as_ref(),
                    "40001" | "40P01" | "53300" | "57P01" | "57P02" | "57P03" | "25006"
                ) || code.starts_with("08")
                {
                    return true;
                }
                // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with extended codes.
                code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
            }
            _ => false,
        }
    }
}

/// Settings for opening the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// A SQLite file path, a `sqlite:` URL, or a `postgres://` URL.
    pub database: String,
    /// Wait this long for a lock before reporting the database busy.
    pub busy_timeout: Duration,
    /// Connections used for reads (writes use one connection of their own).
    pub max_read_connections: u32,
    /// `synchronous = FULL` (every commit reaches the disk before it is
    /// acknowledged) when true; `NORMAL` (a power cut may lose the last
    /// commits, a process crash may not) when false.
    pub durable_commits: bool,
    /// SQLite's page caches (PostgreSQL ignores them).
    pub sqlite_caches: SqliteCaches,
}

/// The page cache of each SQLite connection, in KiB: memory held for as long as the
/// connection is open, against file reads (from the OS's cache) and, for the writer,
/// dirty pages spilled to the WAL in the middle of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteCaches {
    /// The single writer's.
    pub writer_kib: u32,
    /// Each reader connection's.
    pub reader_kib: u32,
}

impl Default for SqliteCaches {
    fn default() -> Self {
        Self {
            writer_kib: SqliteCaches::WRITER_KIB,
            reader_kib: SqliteCaches::READER_KIB,
        }
    }
}

impl SqliteCaches {
    /// The writer's default (BENCHMARKS.md, "Resident memory under load"): its
    /// dirty pages may exceed it within a transaction, up to its spill threshold
    /// (`sqlite::WRITER_SPILL_PAGES`), so it bounds the clean pages it keeps.
    pub const WRITER_KIB: u32 = 4_096;
    /// A reader's default.
    pub const READER_KIB: u32 = 1_024;
}

/// Whose resources a read may see. Every read of FHIR resources takes one, so no
/// read can forget the practice filter: `Access::visibility` makes it for a caller,
/// and Sprig's own work (delivery, the workflow) names [`Visibility::All`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visibility {
    /// Every resource: staff, the open modes, Sprig itself.
    All,
    /// Only resources owned by these practices (ODS codes); none when empty.
    Practices(Vec<String>),
}

impl Visibility {
    /// A stable text for what this visibility may match, for keys such as the
    /// condition lock's: written out, not `Debug` (whose format is no contract), and
    /// the same for the same practices in any order.
    pub(crate) fn lock_key(&self) -> String {
        match self {
            Visibility::All => "all".to_owned(),
            Visibility::Practices(codes) => {
                let mut codes: Vec<&str> = codes.iter().map(String::as_str).collect();
                codes.sort_unstable();
                codes.dedup();
                format!("practices:{}", codes.join(","))
            }
        }
    }

    /// Whether a resource owned by `owner` (`None`: by no practice) is visible.
    pub fn sees(&self, owner: Option<&str>) -> bool {
        match self {
            Visibility::All => true,
            Visibility::Practices(codes) => owner.is_some_and(|o| codes.iter().any(|c| c == o)),
        }
    }

    /// Only `practice`'s resources, and only if this sees them: never wider than `self`.
    pub fn within(&self, practice: &str) -> Visibility {
        if self.sees(Some(practice)) {
            Visibility::Practices(vec![practice.to_owned()])
        } else {
            Visibility::Practices(Vec::new())
        }
    }
}

/// One version of a resource, as stored.
#[derive(Debug, Clone)]
pub struct StoredResource {
    /// The resource type.
    pub resource_type: ResourceType,
    /// The logical id.
    pub id: FhirId,
    /// The version.
    pub version_id: VersionId,
    /// When this version was written.
    pub last_updated: Instant,
    /// The resource JSON, with `id` and `meta` as stored.
    pub json: String,
}

/// The answer to a read.
#[derive(Debug, Clone)]
pub enum ReadOutcome {
    /// The resource (or version) exists.
    Found(StoredResource),
    /// The resource existed and was deleted (FHIR: 410 Gone).
    Deleted {
        /// The deletion's version.
        version_id: VersionId,
        /// When it was deleted.
        last_updated: Instant,
    },
    /// No such resource or version.
    NotFound,
}

/// A resource to create, already parsed and validated.
#[derive(Debug)]
pub struct NewResource<'a> {
    /// Its type.
    pub resource_type: ResourceType,
    /// The resource (a JSON object); `id` and `meta` are replaced by the store's.
    pub resource: Value,
    /// The request body exactly as received, kept for audit.
    pub received: &'a [u8],
    /// The request that brought it, for audit.
    pub request_id: &'a str,
    /// The practice that owns it (see [`Visibility`]).
    pub owner: Option<&'a str>,
}

/// One page of search results.
#[derive(Debug, Clone)]
pub struct SearchPage {
    /// The current versions of the matching resources on this page, in the
    /// query's order.
    pub resources: Vec<StoredResource>,
    /// How many resources match in all (`None` when `_total=none`).
    pub total: Option<u64>,
    /// `total` is an estimate (`_total=estimate`), not an exact count.
    pub total_estimated: bool,
    /// Where the next page starts, if there is one.
    pub next: Option<Cursor>,
}

/// What a version in a resource's history records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryOperation {
    /// The resource was created (`POST`).
    Create,
    /// The resource was replaced (`PUT`).
    Update,
    /// The resource was deleted (`DELETE`); the version has no content.
    Delete,
}

/// One version in a resource's history.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    /// The version.
    pub version_id: VersionId,
    /// When it was written.
    pub last_updated: Instant,
    /// What wrote it.
    pub operation: HistoryOperation,
    /// The resource JSON (`None` for a deletion).
    pub json: Option<String>,
}

/// One page of a resource's history, newest version first.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The versions on this page.
    pub entries: Vec<HistoryEntry>,
    /// How many versions the resource has in all; 0 when there is no such
    /// resource.
    pub total: u64,
    /// The next page holds the versions before this one.
    pub next: Option<VersionId>,
}

/// The storage the gateway runs on.
#[derive(Debug, Clone)]
pub enum Store {
    /// An embedded SQLite file.
    Sqlite(SqliteStore),
    /// A PostgreSQL database, which several instances may share.
    Postgres(PgStore),
}

impl Store {
    /// Opens (creating if needed) and migrates the database.
    pub async fn open(options: &StoreOptions) -> Result<Self, StoreError> {
        let database = options.database.trim();
        let store = if database.starts_with("postgres:") || database.starts_with("postgresql:") {
            Store::Postgres(PgStore::open(options).await?)
        } else if database.contains("://") && !database.starts_with("sqlite:") {
            return Err(StoreError::UnsupportedDatabase(database.to_owned()));
        } else {
            Store::Sqlite(SqliteStore::open(options).await?)
        };
        if let Some(indexed) = dispatch!(&store, b => b.rebuild_index_if_stale().await)? {
            tracing::info!(resources = indexed, "search index rebuilt");
        }
        Ok(store)
    }

    /// Opens a write transaction: every change made through it commits
    /// together, or (dropped without commit) none does.
    pub async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        Ok(dispatch!(self, b => WriteTx::from(b.begin_write().await?)))
    }

    /// [`Store::begin_write`] for a write that builds its rows before it reads
    /// (a new referral, whose identifier it claims: `WriteTx::claim_identifier`): on
    /// SQLite it takes the single writer only when a statement must reach the
    /// database, usually its commit, so that what it builds is built while other
    /// requests hold the writer. On PostgreSQL, where writers run side by side, the
    /// same as `begin_write`.
    pub async fn begin_deferred_write(&self) -> Result<WriteTx, StoreError> {
        match self {
            Store::Sqlite(b) => Ok(WriteTx::from(b.begin_deferred_write())),
            Store::Postgres(b) => Ok(WriteTx::from(b.begin_write().await?)),
        }
    }

    /// Stores a new resource under a new server-assigned id, as version 1.
    pub async fn create(&self, new: NewResource<'_>) -> Result<StoredResource, StoreError> {
        dispatch!(self, b => b.create(new).await)
    }

    /// The current version of a resource; `NotFound` when `visibility` does
    /// not see it (even when it is deleted).
    pub async fn read(
        &self,
        resource_type: ResourceType,
        id: &FhirId,
        visibility: &Visibility,
    ) -> Result<ReadOutcome, StoreError> {
        dispatch!(self, b => b.read(resource_type, id, visibility).await)
    }

    /// One version of a resource; `NotFound` when `visibility` does not see it.
    pub async fn vread(
        &self,
        resource_type: ResourceType,
        id: &FhirId,
        version: VersionId,
        visibility: &Visibility,
    ) -> Result<ReadOutcome, StoreError> {
        dispatch!(self, b => b.vread(resource_type, id, version, visibility).await)
    }

    /// Marks a resource deleted by adding a deletion version; earlier
    /// versions stay readable. Returns the deletion's version, or `None` if
    /// there was no such (undeleted) resource.
    pub async fn delete(
        &self,
        resource_type: ResourceType,
        id: &FhirId,
        request_id: &str,
    ) -> Result<Option<VersionId>, StoreError> {
        dispatch!(self, b => b.delete(resource_type, id, request_id).await)
    }

    /// One page of the current, non-deleted resources matching `query`, with
    /// the total and where the next page starts. Paging is by keyset on
    /// (last updated, id), so a resource written while a client pages is
    /// never served twice, and pages do not shift under it. Only resources
    /// `visibility` sees match, counted in the total too; a cursor only
    /// positions within them.
    pub async fn search(
        &self,
        query: &SearchQuery,
        visibility: &Visibility,
    ) -> Result<SearchPage, StoreError> {
        dispatch!(self, b => b.search(query, visibility).await)
    }

    /// [`WriteTx::matching_current`] among committed resources, on a reader, without
    /// taking the writer: what a transaction Bundle's conditions match before its write,
    /// which the write then expects ([`WriteTx::expect_matching`]).
    pub async fn committed_matching_current(
        &self,
        queries: &[&SearchQuery],
        visibility: &Visibility,
    ) -> Result<Vec<Matched>, StoreError> {
        dispatch!(self, b => b.committed_matching_current(queries, visibility).await)
    }

    /// The SQL statements `search` runs for `query` (the count, then the
    /// page), with their bound values: for the tests that check each search
    /// parameter's query plan on each backend.
    pub fn search_statements(
        &self,
        query: &SearchQuery,
        visibility: &Visibility,
    ) -> Vec<SearchStatement> {
        dispatch!(self, b => b.search_statements(query, visibility))
    }

    /// The SQL of the lookups outside search whose indexes migration 0017 changed (a
    /// referral by its identifier, the console's lookup by identifier value, erasure's
    /// referrers of a resource, the audit log by agent), each with its bound values and
    /// the indexes its plan must read: for the tests that check their plans.
    pub fn lookup_statements(&self) -> Vec<(&'static [&'static str], SearchStatement)> {
        dispatch!(self, b => b.lookup_statements())
    }

    /// Up to `count` versions of a resource, newest first, deletions
    /// included, starting before version `before` (from a `next` link); no
    /// versions (total 0) when `visibility` does not see the resource.
    pub async fn history(
        &self,
        resource_type: ResourceType,
        id: &FhirId,
        count: u32,
        before: Option<VersionId>,
        visibility: &Visibility,
    ) -> Result<HistoryPage, StoreError> {
        dispatch!(self, b => b.history(resource_type, id, count, before, visibility).await)
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, b => b.ping().await)
    }

    /// Closes every connection, after the ones in use are returned.
    pub async fn close(&self) {
        dispatch!(self, b => b.close().await)
    }
}

#[cfg(test)]
mod transient_tests {
    use super::StoreError;

    #[test]
    fn a_dropped_connection_or_a_closed_pool_is_transient_not_a_defect() {
        // What a PostgreSQL failover looks like from a request: the connection is cut.
        let cut = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        assert!(StoreError::Database(sqlx::Error::Io(cut)).is_transient());
        assert!(StoreError::Database(sqlx::Error::PoolClosed).is_transient());
        assert!(StoreError::Database(sqlx::Error::PoolTimedOut).is_transient());
        assert!(!StoreError::Database(sqlx::Error::RowNotFound).is_transient());
        assert!(
            !StoreError::SearchIndex("defect".into()).is_transient(),
            "a defect stays a 500"
        );
    }
}

#[cfg(test)]
mod visibility_tests {
    use super::Visibility;

    #[test]
    fn the_lock_key_names_the_same_practices_alike_in_any_order() {
        let ab = Visibility::Practices(vec!["B82001".into(), "A81001".into()]);
        let ba = Visibility::Practices(vec!["A81001".into(), "B82001".into(), "A81001".into()]);
        assert_eq!(ab.lock_key(), ba.lock_key());
        assert_eq!(ab.lock_key(), "practices:A81001,B82001");
        assert_ne!(
            Visibility::Practices(vec!["A81001".into()]).lock_key(),
            Visibility::Practices(vec!["B82001".into()]).lock_key()
        );
        assert_eq!(Visibility::All.lock_key(), "all");
        assert_ne!(
            Visibility::Practices(vec![]).lock_key(),
            Visibility::All.lock_key()
        );
    }
}

/// Opening a store in tests.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::Path;
    use std::time::Duration;

    use serde_json::json;

    use super::{ResourceWrite, Store, StoreOptions};
    use crate::fhir::{FhirId, ResourceType};

    /// The type the store tests write most.
    pub const PATIENT: ResourceType = ResourceType::named("Patient");

    /// A new Patient named `family`, owned by no practice.
    pub fn patient<'a>(id: &'a FhirId, family: &str) -> ResourceWrite<'a> {
        ResourceWrite {
            resource_type: PATIENT,
            id,
            resource: json!({"resourceType": "Patient", "name": [{"family": family}]}),
            received: None,
            request_id: "test",
            owner: None,
        }
    }

    /// A store on `dir/sprig.db` (made if missing).
    pub async fn open_store(dir: &Path) -> Store {
        open_store_with(dir, false).await
    }

    /// [`open_store`], its commits synced (`synchronous = FULL`) with `durable_commits`.
    pub async fn open_store_with(dir: &Path, durable_commits: bool) -> Store {
        Store::open(&StoreOptions {
            database: dir.join("sprig.db").display().to_string(),
            busy_timeout: Duration::from_secs(5),
            max_read_connections: 2,
            durable_commits,
            sqlite_caches: super::SqliteCaches::default(),
        })
        .await
        .expect("store opens")
    }
}
