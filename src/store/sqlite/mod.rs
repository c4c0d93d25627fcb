//! The SQLite backend: WAL mode, one writer connection (SQLite allows one
//! writer at a time; queueing writers in the pool rather than in SQLite's
//! lock avoids `SQLITE_BUSY` under load) and a pool of read-only readers,
//! which WAL lets run alongside the writer.
//!
//! The SQL shared with PostgreSQL is compiled in here from `store/sql/`
//! with this backend's types; what only SQLite does (its pragmas, file
//! modes, the interruptible reader, the single writer's guarantees) is here.

#[allow(
    clippy::duplicate_mod,
    reason = "compiled once per backend, with its types"
)]
#[path = "../sql/audit.rs"]
mod audit;
#[allow(
    clippy::duplicate_mod,
    reason = "compiled once per backend, with its types"
)]
#[path = "../sql/identity.rs"]
mod identity;
#[allow(
    clippy::duplicate_mod,
    reason = "compiled once per backend, with its types"
)]
#[path = "../sql/milestones.rs"]
mod milestones;
#[allow(
    clippy::duplicate_mod,
    reason = "compiled once per backend, with its types"
)]
#[path = "../sql/outbox.rs"]
mod outbox;
#[allow(
    clippy::duplicate_mod,
    reason = "compiled once per backend, with its types"
)]
#[path = "../sql/referrals.rs"]
mod referrals;
#[allow(
    clippy::duplicate_mod,
    reason = "compiled once per backend, with its types"
)]
#[path = "../sql/reports.rs"]
mod reports;
#[allow(
    clippy::duplicate_mod,
    reason = "compiled once per backend, with its types"
)]
#[path = "../sql/resources.rs"]
mod resources;
#[allow(
    clippy::duplicate_mod,
    reason = "compiled once per backend, with its types"
)]
#[path = "../sql/retention.rs"]
mod retention;
#[allow(
    clippy::duplicate_mod,
    reason = "compiled once per backend, with its types"
)]
#[path = "../sql/search.rs"]
mod search;
#[allow(
    clippy::duplicate_mod,
    reason = "compiled once per backend, with its types"
)]
#[path = "../sql/sessions.rs"]
mod sessions;
#[allow(
    clippy::duplicate_mod,
    reason = "compiled once per backend, with its types"
)]
#[path = "../sql/statement.rs"]
mod statement;

mod direct;
mod group;

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Sqlite, SqliteConnection};

use super::deferred::{Guard, Statement};
use super::{StoreError, StoreOptions, WrittenVersion};
use crate::fhir::Instant;

/// This backend's database, for the shared SQL.
type Db = Sqlite;
/// One connection.
type Conn = SqliteConnection;
/// One result row.
type DbRow = SqliteRow;
/// The store the shared SQL's `impl Backend` blocks extend.
type Backend = SqliteStore;

/// A claim's sub-select takes no row locks: the single writer already keeps
/// two claims from interleaving.
const CLAIM_LOCK: &str = "";
/// The start-up index rebuild needs no lock beyond the single writer.
const INDEX_STATE_LOCK: &str = "";
/// The id a lookup's `SELECT DISTINCT` selects from an index table: `+x.id` is not a
/// column SQLite can read in order from `search_*_by_resource`, so it probes the
/// parameter's index and sorts the few ids it finds, where without planner
/// statistics it walked every index row of the type to get `x.id` in order.
const LOOKUP_ID: &str = "+x.id";
/// The `Bundle.id` of a stored message body.
const BODY_JSON_ID: &str = "json_extract(CAST(body AS TEXT), '$.id')";

/// The members of a JSON array of strings bound as one parameter (`{}`): a list of any
/// length in one bound value, where one parameter per member would meet SQLite's limit.
const JSON_TEXT_MEMBERS: &str = "SELECT value FROM json_each({})";

/// An audit row with nothing else to write (a read's, a refusal's) joins the group
/// commit: durable before the answer is sent, sharing its batch's fsync.
const AUDIT_IN_GROUP_COMMIT: bool = true;

/// A resource row read to be changed needs no lock: the single writer
/// already serialises writes.
const ROW_LOCK: &str = "";

/// A version a write transaction read stays current until it ends: no other
/// transaction writes while it holds the single writer.
const READS_STAY_CURRENT: bool = true;

/// The single writer already runs conditional writes one after another.
const CONDITION_LOCK: Option<&str> = None;

/// SQL for the days (fractional) from the timestamp column `earlier` to `later`
/// (both RFC 3339 text); the arguments are fixed column names, never input.
fn days_between(later: &str, earlier: &str) -> String {
    format!("(julianday({later}) - julianday({earlier}))")
}

/// Prepared statements kept on the writer connection.
const WRITER_STATEMENT_CACHE: usize = 512;

/// Dirty pages the writer holds in memory within a transaction before it spills any to
/// the WAL (`cache_spill`, in pages of 4 KiB: 15.6 MiB, where a 16 MiB cache spilled
/// before). A batch of new referrals dirties many pages (each index insert lands on its
/// own leaf); spilled mid-batch, a page changed again was written again. Beyond its
/// `cache_size` (the clean pages it keeps between batches) SQLite allocates these as
/// needed and frees them after the commit. Not a multiple of 256: SQLite also reads the
/// number as the on/off switch, by its low byte (4096 turns spilling off altogether).
const WRITER_SPILL_PAGES: &str = "4000";

/// SQLite's `cache_size` for `kib` KiB (a negative number is KiB, a positive one pages).
fn cache_size(kib: u32) -> String {
    format!("-{kib}")
}

/// WAL pages after which the writer checkpoints itself (SQLite's default is 1,000).
/// Under sustained writes it does, every few seconds: only a checkpoint that reaches
/// the WAL's end lets the WAL start again from its beginning, and the checkpointer's
/// passes never reach it while batches keep committing. Its checkpoint then copies
/// what the last pass left and syncs it.
const WRITER_AUTOCHECKPOINT_PAGES: i64 = 20_000;

/// How often the checkpointer copies committed WAL pages into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// WAL pages from which the checkpointer's passes come every [`CATCH_UP_EVERY`]: near
/// the writer's bound, so that the writer's checkpoint finds a few milliseconds of
/// commits to copy and sync rather than up to [`CHECKPOINT_EVERY`] of them (about 10 MB
/// under sustained new referrals: a 35-45 ms stall of every request). Not from the
/// start: each pass copies again the pages every batch changes, and syncs.
const CATCH_UP_FROM_PAGES: i64 = WRITER_AUTOCHECKPOINT_PAGES / 4 * 3;

/// The checkpointer's pause between passes near the writer's bound.
const CATCH_UP_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// The checkpointer's pause before its next pass, given the WAL's size at its last.
fn next_pass_in(wal_pages: i64) -> std::time::Duration {
    if wal_pages >= CATCH_UP_FROM_PAGES {
        CATCH_UP_EVERY
    } else {
        CHECKPOINT_EVERY
    }
}

/// Copies committed pages from the WAL into the database file on a connection of its
/// own (`PRAGMA wal_checkpoint(PASSIVE)`, which takes no lock a writer or reader
/// waits for), every [`CHECKPOINT_EVERY`] (more often near the writer's bound:
/// [`next_pass_in`]), until the writer's pool is closed. The checkpoint's page writes and
/// fsyncs then no longer run inside a COMMIT, holding the single writer; committed
/// data is durable in the WAL either way (`synchronous = FULL` syncs it at COMMIT).
///
/// After a pass that copied pages it also syncs the database file (`fdatasync`, off
/// the writer). SQLite syncs it only when a checkpoint reaches the end of the WAL,
/// which a pass never does while batches keep committing: the WAL then grows to the
/// writer's own bound ([`WRITER_AUTOCHECKPOINT_PAGES`]), and the writer's checkpoint,
/// inside a COMMIT, synced every page the passes had copied since the last sync (tens
/// of MB; under sustained new referrals a 40-50 ms stall of every request every two
/// seconds, the writes' p99). Synced here, that checkpoint syncs only its remainder.
fn spawn_checkpointer(checkpointer: SqlitePool, writer: SqlitePool, database: DatabaseSync) {
    tokio::spawn(async move {
        // The WAL's size and the frames copied at the last pass: a pass that moved
        // neither copied nothing to sync.
        let mut last = (0, 0);
        loop {
            tokio::time::sleep(next_pass_in(last.0)).await;
            if writer.is_closed() {
                break;
            }
            let pass: Result<(i64, i64, i64), _> = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&checkpointer)
                .await;
            match pass {
                Ok((_busy, wal_frames, copied)) => {
                    if copied > 0 && (wal_frames, copied) != last {
                        database.sync().await;
                    }
                    last = (wal_frames, copied);
                }
                Err(error) => {
                    if writer.is_closed() {
                        break;
                    }
                    tracing::warn!(%error, "a WAL checkpoint failed; the writer checkpoints itself past its bound");
                }
            }
        }
        checkpointer.close().await;
    });
}

/// Makes a file durable (`fdatasync`; a test's own in tests).
type SyncFile = dyn Fn(&Path) -> std::io::Result<()> + Send + Sync;

/// Syncs the database file (`fdatasync`; a test's own in tests).
type SyncNow = dyn Fn() -> std::io::Result<()> + Send + Sync;

/// The database file, synced after a checkpoint pass, through a descriptor opened once
/// and kept while the store is open: never one opened for a sync and closed after it.
/// Closing any descriptor of a file drops every POSIX lock the process holds on it,
/// SQLite's included, and another process (`sprig restore`, `sprig backup`) would then
/// find the database free while Sprig writes to it.
#[derive(Clone)]
struct DatabaseSync {
    sync: Arc<SyncNow>,
}

impl std::fmt::Debug for DatabaseSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSync").finish_non_exhaustive()
    }
}

impl DatabaseSync {
    fn of(database: &Path) -> std::io::Result<Self> {
        let file = std::fs::File::open(database)?;
        Ok(Self {
            sync: Arc::new(move || file.sync_data()),
        })
    }

    /// Syncs on the blocking pool. A failure is logged and otherwise harmless: SQLite
    /// syncs the file itself before the WAL it was copied from is reused.
    async fn sync(&self) {
        let sync = Arc::clone(&self.sync);
        match tokio::task::spawn_blocking(move || sync()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "syncing the database file after a checkpoint failed");
            }
            Err(error) => {
                tracing::warn!(%error, "syncing the database file after a checkpoint did not finish");
            }
        }
    }
}

/// How many SQLite virtual-machine steps pass between two looks at whether
/// the reader's request has ended (a few microseconds of work).
const PROGRESS_STEPS: i32 = 10_000;

/// A reader connection whose statements stop when the request that holds it
/// ends: dropped before [`Interruptible::release`] (the client went away, or
/// the request timed out and its future was dropped), it interrupts the
/// statement running on it (SQLite's progress handler) and closes the
/// connection rather than return it to the pool, so the handler can never
/// interrupt another request's statement and no query keeps a core busy for
/// a request that has been answered.
pub(super) struct Interruptible {
    conn: PoolConnection<Sqlite>,
    ended: Arc<AtomicBool>,
    released: bool,
}

impl Interruptible {
    /// A connection from `pool` with the handler installed.
    pub(super) async fn acquire(pool: &SqlitePool) -> Result<Self, StoreError> {
        let mut conn = pool.acquire().await?;
        let ended = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ended);
        conn.lock_handle()
            .await?
            .set_progress_handler(PROGRESS_STEPS, move || !flag.load(Ordering::Acquire));
        Ok(Self {
            conn,
            ended,
            released: false,
        })
    }

    /// The connection, for queries.
    pub(super) fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }

    /// Removes the handler and returns the connection to the pool.
    pub(super) async fn release(mut self) -> Result<(), StoreError> {
        self.conn.lock_handle().await?.remove_progress_handler();
        self.released = true;
        Ok(())
    }
}

impl Drop for Interruptible {
    fn drop(&mut self) {
        if !self.released {
            self.ended.store(true, Ordering::Release);
            self.conn.close_on_drop();
        }
    }
}

/// A SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub(in crate::store) writer: SqlitePool,
    pub(in crate::store) readers: SqlitePool,
    /// Short reads on the caller's thread (`direct_first_text`, `direct_matching_rows`).
    direct_readers: Arc<direct::Readers>,
    /// Write transactions, committed in groups on the writer connection.
    group: Arc<group::Group>,
    /// Woken when a commit adds outbox rows, so delivery starts at once
    /// rather than at its next poll.
    pub(super) outbox_signal: Arc<Notify>,
    /// Keeps the `_lastUpdated` pull complete (see [`CommitHorizon`]).
    horizon: Arc<CommitHorizon>,
    /// Turns to count exactly, so counts leave readers for everything else.
    pub(in crate::store) counts: Arc<crate::store::search::CountGate>,
    /// Held, with its descriptor of the database file, until the store is dropped
    /// (after its connections have closed): see [`DatabaseSync`].
    #[expect(
        dead_code,
        reason = "held only so that its descriptor outlives the connections"
    )]
    database_sync: DatabaseSync,
}

/// What keeps a GP's pull (`_lastUpdated=gt…`, and paging on `(last_updated, id)`)
/// from skipping a version: a search serves only versions stamped before the
/// *horizon*, the first millisecond in which a version can still appear. Both sides
/// take one lock, so they are totally ordered:
/// - a write transaction, once it holds the writer, registers itself with the
///   millisecond it started and stamps its versions no earlier than that, and later
///   than any millisecond a search has already served ([`CommitHorizon::begin`]);
/// - a search takes the horizon as the next millisecond, or the oldest in-flight
///   writer's start if that is earlier (group commit keeps several in flight until
///   their batch is durable), and records that it served up to now
///   ([`CommitHorizon::horizon`]).
///
/// So a version committed after a search was answered is stamped at or after that
/// search's horizon, and a client asking `gt` the newest `lastUpdated` it was given
/// sees it. One process owns a SQLite file, so this is in memory.
#[derive(Debug, Default)]
struct CommitHorizon {
    state: Mutex<HorizonState>,
    next_token: AtomicU64,
}

#[derive(Debug, Default)]
struct HorizonState {
    /// The write transactions in flight, by token, with the Unix millisecond each
    /// started. Several, when group commit holds finished ones until their batch's
    /// COMMIT is durable (`group`); each registers only once it holds the writer.
    in_flight: std::collections::BTreeMap<u64, i64>,
    /// The latest Unix millisecond any search has served versions up to (inclusive).
    served: i64,
}

impl CommitHorizon {
    /// Registers a write transaction; returns its token and the instant its versions
    /// are stamped with.
    fn begin(&self) -> (u64, Instant) {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let started = now.unix_millis();
        state.in_flight.insert(token, started);
        let stamp_ms = started.max(state.served.saturating_add(1));
        let stamp = if stamp_ms == started {
            now
        } else {
            Instant::from_unix_millis(stamp_ms).unwrap_or(now)
        };
        (token, stamp)
    }

    /// Ends the write transaction `token` (committed or rolled back).
    fn end(&self, token: u64) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.in_flight.remove(&token);
    }

    /// `(horizon, now)` in Unix milliseconds: versions stamped before `horizon` are
    /// all committed (or never will be).
    fn horizon(&self) -> (i64, i64) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now().unix_millis();
        let horizon = match state.in_flight.values().min() {
            Some(&started) => started.min(now.saturating_add(1)),
            None => now.saturating_add(1),
        };
        state.served = state.served.max(horizon.saturating_sub(1));
        (horizon, now)
    }
}

/// A write transaction's registration with the [`CommitHorizon`], ended when dropped.
struct Writing {
    horizon: Arc<CommitHorizon>,
    token: u64,
}

impl Drop for Writing {
    fn drop(&mut self) {
        self.horizon.end(self.token);
    }
}

impl Backend {
    /// `(horizon, now)` in Unix milliseconds (see [`CommitHorizon`]).
    async fn commit_horizon(&self, _conn: &mut Conn) -> Result<(i64, i64), StoreError> {
        Ok(self.horizon.horizon())
    }
}

/// Most rows a new referral's conditions may match for their read to run on the caller's
/// thread (`SqliteStore::direct_matching_rows`); a condition that matches more than one
/// resource is an error in a transaction, so a Bundle that reaches this is rare.
const DIRECT_MATCH_ROWS: usize = 256;

impl SqliteStore {
    /// The first column of `statement`'s first row as text, among committed rows, read
    /// on this thread (`direct::Readers`); `None` when that would take too long (the
    /// caller reads through the reader pool).
    async fn direct_first_text(
        &self,
        statement: &Statement,
    ) -> Result<Option<Option<String>>, StoreError> {
        let read = self
            .direct_readers
            .read(|locked, cache| locked.first_text_read(cache, statement))
            .await?;
        Ok(read.done())
    }

    /// What each of `queries` matches among committed resources, with its current
    /// version (`search::matching_current`), read on this thread (`direct::Readers`);
    /// `None` when the conditions take more than one statement or match many rows (the
    /// caller reads through the reader pool: `Backend::committed_matching_current`).
    async fn direct_matching_rows(
        &self,
        queries: &[&crate::search::SearchQuery],
        visibility: &super::Visibility,
    ) -> Result<Option<Vec<Vec<search::MatchedRow>>>, StoreError> {
        if queries.len() > search::CONDITIONS_PER_STATEMENT {
            return Ok(None);
        }
        let statement = search::matching_current_statement(queries, visibility);
        let read = self
            .direct_readers
            .read(|locked, cache| {
                locked.rows(cache, &statement, DIRECT_MATCH_ROWS, |row| {
                    let version = resources::VisibleVersionRow::new(
                        row.int(2),
                        text(row, 3)?,
                        row.text(4)?,
                        row.text(5)?,
                    );
                    Ok(search::MatchedRow::new(row.int(0), text(row, 1)?, version))
                })
            })
            .await?;
        read.done()
            .map(|rows| search::by_condition(queries.len(), rows, 0))
            .transpose()
    }

    /// Closes the connections `direct_first_text` and `direct_matching_rows` keep.
    fn close_direct_readers(&self) {
        self.direct_readers.close();
    }
}

/// Column `i` of `row`, which the query never leaves NULL.
fn text(row: &direct::Row, i: std::ffi::c_int) -> Result<String, StoreError> {
    row.text(i)?.ok_or_else(|| StoreError::Corrupt {
        resource_type: String::new(),
        id: String::new(),
        reason: format!("column {i} of a match is NULL"),
    })
}

impl SqliteStore {
    /// Opens the file (creating it if missing), switches it to WAL and runs
    /// the migrations in `migrations/sqlite`.
    pub async fn open(options: &StoreOptions) -> Result<Self, StoreError> {
        let database = options.database.trim();
        let base = if database.starts_with("sqlite:") {
            if database.contains(":memory:") || database.contains("mode=memory") {
                return Err(StoreError::UnsupportedDatabase(format!(
                    "{database} (an in-memory database would lose every referral on restart; use a file)"
                )));
            }
            SqliteConnectOptions::from_str(database)?
        } else {
            SqliteConnectOptions::new().filename(database)
        };
        let synchronous = if options.durable_commits {
            SqliteSynchronous::Full
        } else {
            SqliteSynchronous::Normal
        };
        // The file holds patient data: made readable by its owner only, before SQLite
        // makes it (SQLite gives the -wal and -shm files the database file's mode).
        restrict_file_mode(base.get_filename())?;
        let base = base
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(options.busy_timeout)
            .foreign_keys(true);

        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(options.busy_timeout)
            // A local file: a ping before each use is a round trip for nothing.
            .test_before_acquire(false)
            .connect_with(
                base.clone()
                    .create_if_missing(true)
                    // Every statement the writes run stays prepared (sqlx's
                    // default of 100 is fewer than the distinct statements).
                    .statement_cache_capacity(WRITER_STATEMENT_CACHE)
                    .pragma("cache_size", cache_size(options.sqlite_caches.writer_kib))
                    .pragma("cache_spill", WRITER_SPILL_PAGES)
                    // A request that writes between reads is a savepoint in its batch's
                    // transaction (`group`): before it changes a page, SQLite copies the page
                    // to the savepoint's journal, so `ROLLBACK TO` can restore it. That journal
                    // was a temporary file, written with a system call per page while the
                    // writer was held (a fifth of Sprig's CPU under new referrals); in memory it
                    // costs a request's changed pages until its `RELEASE`. (A statement that
                    // may fail after changing rows journals the same way.)
                    .pragma("temp_store", "memory")
                    // The checkpoint runs on its own connection ([`spawn_checkpointer`]),
                    // not inside the COMMIT that crosses SQLite's 1,000-page mark while
                    // the writer (and every request waiting for it) waits; the writer's
                    // own, past this bound, only finishes what that connection began.
                    .pragma(
                        "wal_autocheckpoint",
                        WRITER_AUTOCHECKPOINT_PAGES.to_string(),
                    ),
            )
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        // Fresh planner statistics where they are missing or stale (bounded work,
        // SQLite's advice for long-lived connections): without them SQLite may walk
        // a whole index where a lookup by identifier should probe it.
        sqlx::query("PRAGMA optimize=0x10002")
            .execute(&writer)
            .await?;
        restrict_companion_modes(base.get_filename())?;
        // A batch's fsync runs after the writer is handed on (`group`).
        let durability = options
            .durable_commits
            .then(|| group::Durability::of_database(base.get_filename()));
        let reader_options = base
            .clone()
            .read_only(true)
            .pragma("cache_size", cache_size(options.sqlite_caches.reader_kib));
        let readers = SqlitePoolOptions::new()
            .max_connections(options.max_read_connections.max(1))
            .acquire_timeout(options.busy_timeout)
            .connect_with(reader_options.clone())
            .await?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(options.busy_timeout)
            .connect_with(base.clone())
            .await?;
        let database_sync = DatabaseSync::of(base.get_filename())
            .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
        spawn_checkpointer(checkpointer, writer.clone(), database_sync.clone());
        Ok(Self {
            group: group::Group::new(writer.clone(), options.busy_timeout, durability),
            writer,
            readers,
            direct_readers: Arc::new(direct::Readers::new(reader_options)),
            outbox_signal: Arc::new(Notify::new()),
            horizon: Arc::new(CommitHorizon::default()),
            counts: Arc::new(crate::store::search::CountGate::new(
                options.max_read_connections.max(1),
                options.busy_timeout,
            )),
            database_sync,
        })
    }

    /// Releases every lease: this process is the only one using the file
    /// (SQLite's single writer makes that the deployment), so any lease was
    /// its own previous run's, killed mid-send.
    pub(super) async fn release_leases(&self) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE outbox SET lease_owner = NULL, lease_until_ms = NULL \
             WHERE state = 'pending' AND lease_owner IS NOT NULL",
        )
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    /// A write transaction for an audit row alone: in the group commit, but not
    /// registered with the [`CommitHorizon`], as it writes no resource version a
    /// search must wait for. It takes the writer at its commit.
    async fn begin_audit_write(&self) -> Result<Tx, StoreError> {
        Ok(self.transaction(Instant::now(), None))
    }

    /// Opens a write transaction on the writer connection: a member of the
    /// current batch, undone alone should it fail (see `group`).
    pub(super) async fn begin_write(&self) -> Result<Tx, StoreError> {
        let entered = self.group.enter().await?;
        // Registered once it holds the writer: the registration is the writer's.
        let (token, stamp) = self.horizon.begin();
        let mut tx = self.transaction(stamp, Some(token));
        tx.entered = Some(Box::new(entered));
        Ok(tx)
    }

    /// [`SqliteStore::begin_write`] for a write that queues its statements first: it
    /// takes the writer at its first statement that must reach the database (a read,
    /// a guard, or the commit), so what it only queues (a new referral's rows, their
    /// index, its Provenance) is built while other requests hold the writer.
    pub(super) fn begin_deferred_write(&self) -> Tx {
        // Registered now, as its versions are stamped now: a search's horizon waits
        // for it from here (while it queues and waits for the writer too), so no
        // version it commits is stamped before what a search has served.
        let (token, stamp) = self.horizon.begin();
        self.transaction(stamp, Some(token))
    }

    /// A transaction not yet on the writer, its versions stamped `stamp`, `token` its
    /// place in the [`CommitHorizon`] (`None`: an audit row alone).
    fn transaction(&self, stamp: Instant, token: Option<u64>) -> Tx {
        Tx {
            entered: None,
            group: Arc::clone(&self.group),
            outbox_signal: Arc::clone(&self.outbox_signal),
            enqueued: false,
            written: Vec::new(),
            pending_index: Box::default(),
            queued: Vec::new(),
            failed: false,
            ran: false,
            guards: Vec::new(),
            found: None,
            stamp,
            _writing: token.map(|token| Writing {
                horizon: Arc::clone(&self.horizon),
                token,
            }),
        }
    }
}

/// An open write transaction on the single writer connection.
pub struct Tx {
    /// Its place in the group commit: from the start, or (`begin_deferred_write`, an
    /// audit row alone) from its first statement that must reach the database
    /// (`Tx::held`).
    entered: Option<Box<group::Held>>,
    /// The group it enters.
    group: Arc<group::Group>,
    /// Told after a commit that added outbox rows.
    outbox_signal: Arc<Notify>,
    /// Whether this transaction added outbox rows.
    enqueued: bool,
    /// The resource versions it wrote, for their Provenance (`WriteTx::take_written`).
    written: Vec<WrittenVersion>,
    /// The `lastUpdated` of every version this transaction writes.
    stamp: Instant,
    /// Its place in the [`CommitHorizon`], given up when the transaction ends (after
    /// the commit, or the rollback, completes); `None` for an audit row alone.
    _writing: Option<Writing>,
    /// Index rows deferred to the next index read or the commit (`PendingIndex`);
    /// boxed, so a transaction stays small to move.
    pending_index: Box<search::PendingIndex>,
    /// Statements whose results it never reads, run together in one call on the
    /// writer (`direct`) before its next statement through sqlx or its commit.
    queued: Vec<Statement>,
    /// A queued statement failed: the ones after it never ran, so nothing of this
    /// transaction may commit, whatever its caller does with the error.
    failed: bool,
    /// Whether any of its statements has run on the writer (or its savepoint opened): a
    /// guard must come before (`Tx::fail_if_found`), as a guard that finds a row keeps
    /// nothing of the write only if nothing of it has run.
    ran: bool,
    /// Reads that fail the transaction if they find a row (`Tx::fail_if_found`), run
    /// on the writer before the statements queued.
    guards: Vec<(Guard, Statement)>,
    /// What a guard found: the transaction keeps nothing, and its commit answers the
    /// guard's failure ([`Guard::failure`]) once the batch that may hold the finding is
    /// durable.
    found: Option<(Guard, String)>,
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("sqlite::Tx").finish_non_exhaustive()
    }
}

impl Tx {
    /// The connection, for the shared SQL, once every queued statement has run and
    /// the request's savepoint is open: a statement through it sees all this
    /// transaction has written, and may write.
    async fn conn(&mut self) -> Result<&mut SqliteConnection, StoreError> {
        self.run_queued(Queued::Write).await?;
        Ok(self.held().await?.conn())
    }

    /// The connection for a statement that only reads, once every queued statement
    /// has run. Unlike [`Tx::conn`] it opens no savepoint for a transaction that has
    /// written nothing yet (reads change nothing to roll back), so its writes may
    /// still run in one call without one (`group`). A read through sqlx gives the
    /// session's handle back to sqlx's worker; [`Tx::read_text`] does not.
    async fn read_conn(&mut self) -> Result<&mut SqliteConnection, StoreError> {
        self.run_queued(Queued::Read).await?;
        Ok(self.held().await?.conn())
    }

    /// Its place in the group commit: the writer, taken (waiting for it, as long as
    /// `sqlite.busy_timeout_ms` allows) at the first call.
    async fn held(&mut self) -> Result<&mut group::Held, StoreError> {
        if self.entered.is_none() {
            let held = self.group.enter().await?;
            return Ok(self.entered.insert(Box::new(held)));
        }
        self.entered.as_deref_mut().ok_or_else(|| {
            StoreError::WriteAbandoned("the write transaction lost its place on the writer".into())
        })
    }

    /// Queues a statement whose result the transaction never reads: it runs with the
    /// others queued, in order, in one call on the writer, before the next statement
    /// through [`Tx::conn`] or the commit.
    async fn execute(&mut self, statement: Statement) -> Result<(), StoreError> {
        self.queued.push(statement);
        Ok(())
    }

    /// Reads one text value (the first row's first column) in the transaction, once
    /// every queued statement has run, on the writer's handle itself: with the handle
    /// kept from the session's last run, no hand-off to sqlx's worker (as a read
    /// through [`Tx::read_conn`] is), and none for the run of writes that follows.
    async fn read_text(&mut self, statement: Statement) -> Result<Option<String>, StoreError> {
        self.run_queued(Queued::Read).await?;
        self.held().await?.read_text(&statement).await
    }

    /// Fails the transaction with `guard`'s failure (given the first column's text) if
    /// `statement` finds a row when it runs: at the transaction's next run on the writer
    /// (its commit, for a write that only queues), before every statement still queued.
    /// With the writer held from there to the commit, no other write can come between
    /// the check and the statements it guards.
    async fn fail_if_found(
        &mut self,
        guard: Guard,
        statement: Statement,
    ) -> Result<(), StoreError> {
        if self.ran {
            // Its statements that ran would commit with the empty member a finding
            // leaves (`Tx::commit`): a defect of the caller's, refused before it can.
            self.failed = true;
            return Err(StoreError::WriteAbandoned(
                "a guard must come before the write's first statement on the writer".into(),
            ));
        }
        self.guards.push((guard, statement));
        Ok(())
    }

    /// Whether a guard read (`Tx::fail_if_found`) would run later, on the writer, just
    /// before the statements it guards: for a write not on the writer yet
    /// (`begin_deferred_write`), so what a reader saw can be confirmed there.
    fn guards_run_on_the_writer(&self) -> bool {
        self.entered.is_none()
    }

    /// Serialises transactions receiving the same business identifier: already so
    /// on SQLite's single writer (and no statement, so the queue stays queued).
    async fn lock_identifier(&mut self, _system: &str, _value: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Serialises transactions adding to one referral: already so on SQLite's
    /// single writer.
    async fn lock_referral(&mut self, _referral_id: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Nothing to remember: no referral is locked on SQLite's single writer.
    fn inserted_referral(&mut self, _referral_id: &str) {}

    /// Runs the queued statements, and for `Queued::Write` opens the savepoint even
    /// when none is queued; `Queued::Release` releases it after them.
    async fn run_queued(&mut self, then: Queued) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::WriteAbandoned(
                "a statement of this write failed or was abandoned; nothing of it is kept".into(),
            ));
        }
        if !self.guards.is_empty() {
            self.run_guards().await?;
        }
        if self.queued.is_empty() && then == Queued::Read {
            return Ok(());
        }
        let queued = std::mem::take(&mut self.queued);
        self.ran = true;
        // Failed until the run ends well: a run abandoned at its await (the caller's
        // future dropped, the transaction kept) leaves the write refusing to commit.
        self.failed = true;
        let ran = match (self.held().await, then) {
            (Ok(held), Queued::Release) => held.finish(queued).await,
            (Ok(held), Queued::Read | Queued::Write) => held.write(queued).await,
            (Err(e), _) => Err(e),
        };
        self.failed = ran.is_err();
        ran
    }

    /// Runs the guards (`Tx::fail_if_found`) on the writer's handle. One that finds a
    /// row fails the transaction: its queued statements are dropped unrun.
    async fn run_guards(&mut self) -> Result<(), StoreError> {
        let guards = std::mem::take(&mut self.guards);
        // Failed until every guard has passed: a run abandoned at its await leaves
        // the write refusing to commit, as `run_queued` does.
        self.failed = true;
        for (guard, statement) in &guards {
            let held = self.held().await?;
            if let Some(found) = held.read_text(statement).await? {
                self.queued.clear();
                self.found = Some((*guard, found.clone()));
                return Err(guard.failure(found));
            }
        }
        self.failed = false;
        Ok(())
    }

    /// The versions written so far that no one has taken yet, oldest first.
    pub(super) fn take_written(&mut self) -> Vec<WrittenVersion> {
        std::mem::take(&mut self.written)
    }

    /// The `lastUpdated` of the versions this transaction writes: taken under the
    /// [`CommitHorizon`] when it began.
    async fn timestamp(&mut self) -> Result<Instant, StoreError> {
        Ok(self.stamp)
    }

    /// Takes the writer for the commit, waiting for it if another request holds it:
    /// done before the commit begins (`gate`), as waiting commits nothing, so a
    /// request that times out while it waits is dropped with nothing stored. A
    /// transaction with nothing to run (no read, no write, no guard) takes none.
    pub(in crate::store) async fn take_writer(&mut self) -> Result<(), StoreError> {
        self.flush_index().await?;
        if self.entered.is_none() && !(self.queued.is_empty() && self.guards.is_empty()) {
            self.held().await?;
        }
        Ok(())
    }

    /// Commits every change. Returns after the commit (the batch's that
    /// holds it) is durable.
    pub(super) async fn commit(mut self) -> Result<(), StoreError> {
        self.take_writer().await?;
        if self.entered.is_none() {
            // It read nothing and wrote nothing: nothing to commit, nothing to wait for.
            return Ok(());
        }
        let ran = match self.found {
            Some(_) => Ok(()),
            None => self.run_queued(Queued::Release).await,
        };
        let held = self.entered.take();
        if let Some((guard, found)) = self.found.take() {
            // A guard found another's write, perhaps in this batch and not yet durable:
            // this member, which wrote nothing, commits with the batch, and the answer
            // waits for that.
            if let Some(held) = held {
                (*held).commit().await?;
            }
            return Err(guard.failure(found));
        }
        ran?;
        if let Some(held) = held {
            (*held).commit().await?;
        }
        if self.enqueued {
            // notify_one keeps a permit when the worker is busy, so a change
            // committed mid-round is not missed.
            self.outbox_signal.notify_one();
        }
        Ok(())
    }
}

/// What [`Tx::run_queued`] does besides running the queued statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queued {
    /// A read follows: what is queued runs (in the savepoint, opened for it); with
    /// nothing queued nothing runs, and no savepoint opens.
    Read,
    /// Opens the savepoint: a statement that may write follows.
    Write,
    /// Releases the savepoint: the transaction commits.
    Release,
}

/// Creates the database file with mode 0600 if it does not exist; an existing file
/// readable or writable by others loses those permissions (with a warning), its
/// group's are left as the operator set them.
#[cfg(unix)]
fn restrict_file_mode(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |e: std::io::Error| StoreError::Database(sqlx::Error::Io(e));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
            if mode & 0o007 != 0 {
                tracing::warn!(
                    mode = format!("{:o}", mode & 0o777),
                    "the database file was readable by other users; removing their access"
                );
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o770))
                    .map_err(io)?;
            }
            Ok(())
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(not(unix))]
fn restrict_file_mode(_path: &std::path::Path) -> Result<(), StoreError> {
    Ok(())
}

/// The file SQLite keeps beside the database `path` with `suffix` (`-wal`, `-shm`).
fn companion_file(path: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut companion = path.as_os_str().to_owned();
    companion.push(suffix);
    std::path::PathBuf::from(companion)
}

/// Gives the -wal and -shm files, once SQLite has made them, no more access than the
/// database file has (SQLite does so itself; this holds it whatever the umask was when
/// an older Sprig made them).
#[cfg(unix)]
fn restrict_companion_modes(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |e: std::io::Error| StoreError::Database(sqlx::Error::Io(e));
    let database_mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    for suffix in ["-wal", "-shm"] {
        let companion = companion_file(path, suffix);
        match std::fs::metadata(&companion) {
            Ok(meta) if meta.permissions().mode() & 0o777 & !database_mode != 0 => {
                let mode = meta.permissions().mode() & database_mode;
                std::fs::set_permissions(&companion, std::fs::Permissions::from_mode(mode))
                    .map_err(io)?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn restrict_companion_modes(_path: &std::path::Path) -> Result<(), StoreError> {
    Ok(())
}

#[cfg(test)]
mod search_tests;

#[cfg(test)]
mod horizon_tests {
    use super::CommitHorizon;

    #[test]
    fn a_search_serves_only_what_no_writer_can_still_stamp() {
        let horizon = CommitHorizon::default();
        // Nothing in flight: everything up to now is served.
        let (served_to, now) = horizon.horizon();
        assert_eq!(served_to, now + 1);
        // A writer that starts after that search stamps after what it served ...
        let (token, stamp) = horizon.begin();
        assert!(stamp.unix_millis() >= served_to, "{stamp:?} < {served_to}");
        // ... and while it is in flight, no search serves its millisecond.
        let (during, _) = horizon.horizon();
        assert!(during <= stamp.unix_millis());
        // Another writer's end does not end its registration.
        horizon.end(token + 1);
        assert!(horizon.horizon().0 <= stamp.unix_millis());
        horizon.end(token);
        assert!(horizon.horizon().0 > stamp.unix_millis() - 1);
    }
}

#[cfg(test)]
mod build_tests {
    /// The SQLite built for Sprig (`.cargo/config.toml`) keeps a page cache per connection,
    /// not one for the whole process behind a mutex every connection takes per page.
    #[test]
    fn sqlite_keeps_a_page_cache_per_connection() {
        // SAFETY: a static, NUL-terminated option name; the call only reads it.
        let used = unsafe {
            libsqlite3_sys::sqlite3_compileoption_used(c"ENABLE_MEMORY_MANAGEMENT".as_ptr())
        };
        assert_eq!(used, 0, "SQLITE_ENABLE_MEMORY_MANAGEMENT is off");
        // SAFETY: as above.
        let threadsafe = unsafe { libsqlite3_sys::sqlite3_threadsafe() };
        assert_ne!(threadsafe, 0, "SQLite is built for threads");
    }
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use crate::store::test_support::open_store;

    fn mode(path: &std::path::Path) -> u32 {
        std::fs::metadata(path)
            .expect("exists")
            .permissions()
            .mode()
            & 0o777
    }

    #[tokio::test]
    async fn the_database_and_its_wal_are_readable_by_their_owner_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path()).await;
        // A write, so the WAL and shared-memory files exist.
        store.ping().await.expect("ping");
        store
            .record_audit(&crate::store::AuditRecord::new("read", 200))
            .await
            .expect("write");
        for name in ["sprig.db", "sprig.db-wal", "sprig.db-shm"] {
            assert_eq!(mode(&dir.path().join(name)), 0o600, "{name}");
        }
        store.close().await;

        // A file an older version made world-readable loses that at the next start.
        let path = dir.path().join("sprig.db");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let store = open_store(dir.path()).await;
        assert_eq!(mode(&path), 0o640);
        store.close().await;
    }
}

#[cfg(test)]
mod group_commit_tests {
    use std::time::Duration;

    use crate::store::AuditRecord;
    use crate::store::test_support::open_store;

    /// Writes whose callers are dropped at any point (clients that hang up) leave the
    /// writer working: before `BEGIN`, `SAVEPOINT` and `RELEASE` ran in tasks of their
    /// own, a caller dropped during `BEGIN` left the transaction open with the batch
    /// marked as not begun, and every later write failed until restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_dropped_at_any_point_leave_the_writer_working() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path()).await;
        let mut dropped = 0;
        for round in 0..40u64 {
            let writes = (0..32u64).map(|i| {
                let store = store.clone();
                // Deadlines from 0 to about 2 ms: some before the turn, some during
                // BEGIN, SAVEPOINT, the INSERT, RELEASE or the wait for COMMIT.
                let deadline = Duration::from_micros((round * 37 + i * 61) % 2_000);
                tokio::spawn(async move {
                    tokio::time::timeout(
                        deadline,
                        store.record_audit(&AuditRecord::new("read", 200)),
                    )
                    .await
                })
            });
            for write in futures::future::join_all(writes).await {
                match write.expect("task") {
                    Ok(done) => {
                        done.expect("a write that was not dropped succeeds");
                    }
                    Err(_) => dropped += 1,
                }
            }
        }
        assert!(dropped > 0, "some writes must have been dropped mid-way");
        for _ in 0..20 {
            tokio::time::timeout(
                Duration::from_secs(10),
                store.record_audit(&AuditRecord::new("read", 200)),
            )
            .await
            .expect("the writer answers")
            .expect("and writes");
        }
        store.close().await;
    }
}

#[cfg(test)]
mod checkpoint_tests {
    use std::time::Duration;

    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::{ConnectOptions, Connection};

    use crate::store::AuditRecord;
    use crate::store::test_support::open_store;

    /// The background checkpointer copies committed pages from the WAL into the database
    /// file within a few of its 250 ms ticks, while the store stays open: read with
    /// `immutable=1`, which ignores the WAL, the file holds the rows. Without it, the
    /// writer checkpoints only past 20,000 WAL pages (or at close), so the file would hold
    /// neither these rows nor, here, the schema.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_writes_reach_the_database_file_while_the_store_is_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path()).await;
        for _ in 0..20 {
            store
                .record_audit(&AuditRecord::new("read", 200))
                .await
                .expect("write");
        }
        let file_only = SqliteConnectOptions::new()
            .filename(dir.path().join("sprig.db"))
            .read_only(true)
            .immutable(true);
        let mut in_file = None;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut conn = file_only.connect().await.expect("the file alone");
            let rows: Result<(i64,), _> =
                sqlx::query_as("SELECT COUNT(*) FROM audit_events WHERE interaction = 'read'")
                    .fetch_one(&mut conn)
                    .await;
            conn.close().await.expect("close");
            in_file = Some(rows.map(|(n,)| n).map_err(|e| e.to_string()));
            if in_file == Some(Ok(20)) {
                break;
            }
        }
        assert_eq!(
            in_file,
            Some(Ok(20)),
            "the rows reach the database file within 2 s"
        );
        store.close().await;
    }
}

#[cfg(test)]
mod checkpoint_sync_tests {
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::Duration;

    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

    use super::{
        CATCH_UP_EVERY, CHECKPOINT_EVERY, DatabaseSync, WRITER_AUTOCHECKPOINT_PAGES, next_pass_in,
        spawn_checkpointer,
    };

    /// Passes come every 250 ms, and every 20 ms from three quarters of the writer's
    /// bound, up to and past it (should the writer's checkpoint fail to restart the WAL).
    #[test]
    fn passes_come_more_often_near_the_writers_bound() {
        assert_eq!(next_pass_in(0), CHECKPOINT_EVERY);
        assert_eq!(next_pass_in(14_999), CHECKPOINT_EVERY);
        assert_eq!(next_pass_in(15_000), CATCH_UP_EVERY);
        assert_eq!(next_pass_in(WRITER_AUTOCHECKPOINT_PAGES), CATCH_UP_EVERY);
        assert_eq!(
            next_pass_in(5 * WRITER_AUTOCHECKPOINT_PAGES),
            CATCH_UP_EVERY
        );
    }

    /// After a checkpoint pass that copied pages, the checkpointer syncs the database
    /// file itself, so the writer's own checkpoint (inside a COMMIT, every request
    /// waiting) has only its remainder to sync; a pass that copied nothing syncs nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pass_that_copied_pages_syncs_the_database_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = dir.path().join("checkpoint.db");
        let options = SqliteConnectOptions::new()
            .filename(&database)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone().pragma("wal_autocheckpoint", "0"))
            .await
            .expect("writer");
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&writer)
            .await
            .expect("schema");
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .expect("checkpointer");
        let synced: Arc<Mutex<usize>> = Arc::default();
        let record = Arc::clone(&synced);
        let sync = DatabaseSync {
            sync: Arc::new(move || {
                *record.lock().unwrap_or_else(PoisonError::into_inner) += 1;
                Ok(())
            }),
        };
        let count = || *synced.lock().unwrap_or_else(PoisonError::into_inner);
        spawn_checkpointer(checkpointer, writer.clone(), sync);

        // The schema's pages are copied and synced at the first pass; then nothing.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let idle = count();
        assert!(idle >= 1, "the schema's pass synced the file");
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(count(), idle, "passes that copied nothing synced nothing");

        for x in 0..200 {
            sqlx::query("INSERT INTO t (x) VALUES (?)")
                .bind(x)
                .execute(&writer)
                .await
                .expect("insert");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while count() == idle {
            assert!(
                std::time::Instant::now() < deadline,
                "no sync after a pass that copied the new rows"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        writer.close().await;
    }
}

#[cfg(test)]
mod queued_statement_tests {
    use serde_json::json;

    use crate::fhir::{FhirId, ResourceType};
    use crate::store::test_support::{PATIENT, open_store, patient};
    use crate::store::{ReadOutcome, ResourceWrite, StoreError, Visibility};

    const BASIC: ResourceType = ResourceType::named("Basic");

    /// A create's INSERTs are queued and run together before the next read or the
    /// commit: one that fails there (the same id twice) fails the whole write, even
    /// for a caller that carries on after the error, and nothing of it is kept.
    #[tokio::test]
    async fn a_queued_statement_that_fails_at_the_commit_fails_the_whole_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path()).await;
        let (first, second) = (FhirId::generate(), FhirId::generate());
        let mut tx = store.begin_write().await.expect("begin");
        tx.create(patient(&first, "Kept-Not"))
            .await
            .expect("queued");
        tx.create(patient(&second, "Twice")).await.expect("queued");
        tx.create(patient(&second, "Twice")).await.expect("queued");
        // The read runs the queue first, which fails ...
        let error = tx
            .read(PATIENT, &first, &Visibility::All)
            .await
            .expect_err("the same id twice");
        assert!(
            matches!(&error, StoreError::Database(sqlx::Error::Database(e)) if e.is_unique_violation()),
            "{error:?}"
        );
        // ... and a caller that carries on cannot commit what ran before the failure.
        let third = FhirId::generate();
        tx.create(patient(&third, "After")).await.expect("queued");
        let error = tx.commit().await.expect_err("the write failed");
        assert!(matches!(error, StoreError::WriteAbandoned(_)), "{error:?}");
        for id in [&first, &second, &third] {
            let read = store.read(PATIENT, id, &Visibility::All).await;
            assert!(matches!(read, Ok(ReadOutcome::NotFound)), "{read:?}");
        }
        // The writer goes on: the next write commits, and reads back.
        let mut tx = store.begin_write().await.expect("begin");
        tx.create(patient(&first, "Later")).await.expect("queued");
        tx.commit().await.expect("commit");
        let read = store
            .read(PATIENT, &first, &Visibility::All)
            .await
            .expect("read");
        assert!(matches!(read, ReadOutcome::Found(_)));
        store.close().await;
    }

    /// A deferred write (a new referral's) holds no writer while it queues: another
    /// write begins and commits meanwhile. It takes the writer at its commit.
    #[tokio::test]
    async fn a_deferred_write_takes_the_writer_only_at_its_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path()).await;
        let (queued, meanwhile) = (FhirId::generate(), FhirId::generate());
        let mut deferred = store.begin_deferred_write().await.expect("begin");
        deferred
            .create(patient(&queued, "Queued"))
            .await
            .expect("queued");
        // Would wait for the writer (5 s, then fail) if the deferred write held it.
        let mut other =
            tokio::time::timeout(std::time::Duration::from_secs(2), store.begin_write())
                .await
                .expect("the writer is free while the deferred write queues")
                .expect("begin");
        other
            .create(patient(&meanwhile, "Meanwhile"))
            .await
            .expect("queued");
        other.commit().await.expect("commit");
        deferred.commit().await.expect("commit");
        for id in [&queued, &meanwhile] {
            let read = store.read(PATIENT, id, &Visibility::All).await;
            assert!(matches!(read, Ok(ReadOutcome::Found(_))), "{read:?}");
        }
        store.close().await;
    }

    /// A guard (`Tx::fail_if_found`, what a claim of an identifier runs) runs on the
    /// writer before the statements queued before and after it: one that finds a row
    /// fails the commit with the row's text and keeps nothing; one that finds none
    /// lets the write commit.
    #[tokio::test]
    async fn a_guard_that_finds_a_row_keeps_nothing_of_its_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path()).await;
        let crate::store::Store::Sqlite(sqlite) = &store else {
            panic!("a SQLite store");
        };
        let holder = FhirId::generate();
        let mut tx = store.begin_write().await.expect("begin");
        tx.create(patient(&holder, "Holder")).await.expect("queued");
        tx.commit().await.expect("commit");
        let guard = |id: &FhirId| {
            crate::store::deferred::Statement::new(
                "SELECT id FROM resources WHERE resource_type = 'Patient' AND id = ?",
            )
            .bind(id.as_str())
        };
        // Finds the holder: nothing of the write is kept, the commit says whose it is.
        let (before, after) = (FhirId::generate(), FhirId::generate());
        let mut tx = crate::store::WriteTx::from(sqlite.begin_deferred_write());
        tx.create(patient(&before, "Before")).await.expect("queued");
        let crate::store::WriteTx::Sqlite(inner) = &mut tx else {
            panic!("a SQLite transaction");
        };
        inner
            .fail_if_found(crate::store::deferred::Guard::Identifier, guard(&holder))
            .await
            .expect("queued");
        tx.create(patient(&after, "After")).await.expect("queued");
        let error = tx.commit().await.expect_err("the guard found the holder");
        assert!(
            matches!(&error, StoreError::IdentifierHeld(found) if *found == holder.as_str()),
            "{error:?}"
        );
        for id in [&before, &after] {
            let read = store.read(PATIENT, id, &Visibility::All).await;
            assert!(matches!(read, Ok(ReadOutcome::NotFound)), "{read:?}");
        }
        // Finds nothing: the write commits.
        let (absent, kept) = (FhirId::generate(), FhirId::generate());
        let mut tx = crate::store::WriteTx::from(sqlite.begin_deferred_write());
        let crate::store::WriteTx::Sqlite(inner) = &mut tx else {
            panic!("a SQLite transaction");
        };
        inner
            .fail_if_found(crate::store::deferred::Guard::Identifier, guard(&absent))
            .await
            .expect("queued");
        tx.create(patient(&kept, "Kept")).await.expect("queued");
        tx.commit().await.expect("commit");
        let read = store.read(PATIENT, &kept, &Visibility::All).await;
        assert!(matches!(read, Ok(ReadOutcome::Found(_))), "{read:?}");
        store.close().await;
    }

    /// A guard after the write's statements have run on the writer (a read ran the
    /// queue) is refused, and the write with it: a finding would otherwise commit what
    /// ran with the empty member it leaves.
    #[tokio::test]
    async fn a_guard_after_the_writes_statements_ran_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path()).await;
        let crate::store::Store::Sqlite(sqlite) = &store else {
            panic!("a SQLite store");
        };
        let ran = FhirId::generate();
        let mut tx = crate::store::WriteTx::from(sqlite.begin_deferred_write());
        tx.create(patient(&ran, "Ran")).await.expect("queued");
        tx.read(PATIENT, &ran, &Visibility::All)
            .await
            .expect("the read runs the queue");
        let crate::store::WriteTx::Sqlite(inner) = &mut tx else {
            panic!("a SQLite transaction");
        };
        let guard = crate::store::deferred::Statement::new("SELECT 'found'");
        let refused = inner
            .fail_if_found(crate::store::deferred::Guard::Identifier, guard)
            .await;
        assert!(
            matches!(refused, Err(StoreError::WriteAbandoned(_))),
            "{refused:?}"
        );
        let committed = tx.commit().await;
        assert!(
            matches!(committed, Err(StoreError::WriteAbandoned(_))),
            "{committed:?}"
        );
        let read = store.read(PATIENT, &ran, &Visibility::All).await;
        assert!(matches!(read, Ok(ReadOutcome::NotFound)), "{read:?}");
        store.close().await;
    }

    /// A deferred write that expects its conditions to match what a reader saw
    /// (`WriteTx::expect_matching`) commits if they still do when it reaches the writer,
    /// and keeps nothing, failing with `Overtaken`, if another write came between:
    /// a first match created, the match seen changed or deleted, or a second match
    /// created.
    #[tokio::test]
    async fn a_write_expecting_what_a_reader_matched_keeps_nothing_if_that_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path()).await;
        let query =
            crate::search::SearchQuery::parse(PATIENT, "identifier=https://example.org/t|One")
                .expect("query");
        let queries = [&query];
        let seen = || store.committed_matching_current(&queries, &Visibility::All);
        let query = &query;
        // Writes a Patient expecting `seen`, while `meanwhile` commits before it.
        let write_expecting =
            |seen: Vec<crate::store::Matched>, meanwhile: Option<ResourceWrite<'static>>| {
                let store = &store;
                async move {
                    let kept = FhirId::generate();
                    let mut tx = store.begin_deferred_write().await.expect("begin");
                    let expected = tx
                        .expect_matching(&[query], &Visibility::All, seen.clone())
                        .await
                        .expect("queued");
                    assert_eq!(expected.len(), 1);
                    assert_eq!(
                        expected[0].ids, seen[0].ids,
                        "the reader's matches are the answer"
                    );
                    tx.create(patient(&kept, "Kept")).await.expect("queued");
                    if let Some(write) = meanwhile {
                        let mut other = store.begin_write().await.expect("begin");
                        if seen[0].ids.contains(write.id) {
                            other.update(write, None).await.expect("update");
                        } else {
                            other.create(write).await.expect("queued");
                        }
                        other.commit().await.expect("commit");
                    }
                    let committed = tx.commit().await;
                    let read = store
                        .read(PATIENT, &kept, &Visibility::All)
                        .await
                        .expect("read");
                    (committed, matches!(read, ReadOutcome::Found(_)))
                }
            };
        let one: &'static FhirId = Box::leak(Box::new(FhirId::generate()));
        let two: &'static FhirId = Box::leak(Box::new(FhirId::generate()));

        // Seen matching nothing, and still so: commits.
        let (committed, kept) = write_expecting(seen().await.expect("seen"), None).await;
        assert!(committed.is_ok() && kept, "{committed:?}");
        // Seen matching nothing; a match created meanwhile.
        let (committed, kept) =
            write_expecting(seen().await.expect("seen"), Some(identified(one, "One"))).await;
        assert!(
            matches!(committed, Err(StoreError::Overtaken(_))),
            "{committed:?}"
        );
        assert!(!kept, "nothing of the write is kept");
        // Seen matching one, unchanged: commits.
        let matched = seen().await.expect("seen");
        assert_eq!(matched[0].ids, std::slice::from_ref(one));
        let (committed, kept) = write_expecting(matched, None).await;
        assert!(committed.is_ok() && kept, "{committed:?}");
        // Seen matching one; that one changed meanwhile (a new version).
        let mut changed = identified(one, "One");
        changed.resource["active"] = serde_json::json!(true);
        let (committed, kept) = write_expecting(seen().await.expect("seen"), Some(changed)).await;
        assert!(
            matches!(committed, Err(StoreError::Overtaken(_))),
            "{committed:?}"
        );
        assert!(!kept, "nothing of the write is kept");
        // Seen matching one; a second match created meanwhile.
        let (committed, kept) =
            write_expecting(seen().await.expect("seen"), Some(identified(two, "One"))).await;
        assert!(
            matches!(committed, Err(StoreError::Overtaken(_))),
            "{committed:?}"
        );
        assert!(!kept, "nothing of the write is kept");
        // Seen matching one (the second deleted first); that one deleted meanwhile.
        let delete = |id: &'static FhirId| {
            let store = &store;
            async move {
                let mut tx = store.begin_write().await.expect("begin");
                tx.delete(PATIENT, id, "test").await.expect("delete");
                tx.commit().await.expect("commit");
            }
        };
        delete(two).await;
        let matched = seen().await.expect("seen");
        assert_eq!(matched[0].ids, std::slice::from_ref(one));
        let kept = FhirId::generate();
        let mut tx = store.begin_deferred_write().await.expect("begin");
        tx.expect_matching(&[query], &Visibility::All, matched)
            .await
            .expect("queued");
        tx.create(patient(&kept, "Kept")).await.expect("queued");
        delete(one).await;
        let committed = tx.commit().await;
        assert!(
            matches!(committed, Err(StoreError::Overtaken(_))),
            "{committed:?}"
        );
        let read = store.read(PATIENT, &kept, &Visibility::All).await;
        assert!(matches!(read, Ok(ReadOutcome::NotFound)), "{read:?}");
        store.close().await;
    }

    /// Reads on the caller's thread (`direct::Readers`) answer as the reader pool does; a
    /// read that would match too many rows, or run too long, is handed to the pool.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_on_the_callers_thread_answer_as_the_pool_does() {
        use super::direct::Read;
        use super::search;

        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path()).await;
        let crate::store::Store::Sqlite(sqlite) = &store else {
            panic!("a SQLite store");
        };
        let many = super::DIRECT_MATCH_ROWS + 44;
        let ids: Vec<FhirId> = (0..=many).map(|_| FhirId::generate()).collect();
        let mut tx = store.begin_write().await.expect("begin");
        tx.create(identified(&ids[0], "One")).await.expect("create");
        for id in &ids[1..] {
            tx.create(identified(id, "Many")).await.expect("create");
        }
        tx.commit().await.expect("commit");
        let query = |value: &str| {
            crate::search::SearchQuery::parse(
                PATIENT,
                &format!("identifier=https://example.org/t|{value}"),
            )
            .expect("query")
        };
        let (none, one, lots) = (query("None"), query("One"), query("Many"));
        let ids_of = |rows: Vec<Vec<search::MatchedRow>>| -> Vec<Vec<String>> {
            rows.into_iter()
                .map(|rows| rows.into_iter().map(|row| row.id).collect())
                .collect()
        };

        // Few rows: read on this thread, as the pool reads them.
        let few = [&none, &one, &none];
        let statement = search::matching_current_statement(&few, &Visibility::All);
        let direct = sqlite
            .direct_readers
            .read(|locked, cache| {
                locked.rows(cache, &statement, super::DIRECT_MATCH_ROWS, |row| {
                    super::text(row, 1)
                })
            })
            .await
            .expect("a direct read");
        assert!(
            matches!(&direct, Read::Done(found) if found == &[ids[0].to_string()]),
            "{direct:?}"
        );
        let pooled = search::matching_current(
            &mut sqlite.readers.acquire().await.expect("reader"),
            &few,
            &Visibility::All,
        )
        .await
        .expect("pool");
        let read = sqlite
            .direct_matching_rows(&few, &Visibility::All)
            .await
            .expect("read")
            .expect("read on this thread");
        assert_eq!(ids_of(read), ids_of(pooled));

        // More rows than a read on this thread takes: the pool reads them, all of them.
        let statement = search::matching_current_statement(&[&lots], &Visibility::All);
        let direct = sqlite
            .direct_readers
            .read(|locked, cache| {
                locked.rows(cache, &statement, super::DIRECT_MATCH_ROWS, |_| Ok(()))
            })
            .await
            .expect("a direct read");
        assert!(matches!(direct, Read::TooLong), "{direct:?}");
        let matched = store
            .committed_matching_current(&[&one, &lots, &none], &Visibility::All)
            .await
            .expect("matched");
        assert_eq!(matched[0].ids, std::slice::from_ref(&ids[0]));
        assert!(
            matched[0].current.is_some(),
            "one match, with its current version"
        );
        assert_eq!(matched[1].ids.len(), many);
        assert!(matched[2].ids.is_empty());

        // A statement past the step budget: interrupted here, answered by the pool.
        let counting = || {
            super::Statement::new(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000) \
                 SELECT CAST(count(*) AS TEXT) FROM n",
            )
        };
        let statement = counting();
        let direct = sqlite
            .direct_readers
            .read(|locked, cache| locked.first_text_read(cache, &statement))
            .await
            .expect("a direct read");
        assert!(matches!(direct, Read::TooLong), "{direct:?}");
        let counted = super::statement::first_text(
            &mut sqlite.readers.acquire().await.expect("reader"),
            counting(),
        )
        .await
        .expect("counted");
        assert_eq!(counted.as_deref(), Some("1000000"));
        // The connection interrupted is kept and reads again.
        let statement = super::Statement::new("SELECT 'again'");
        let again = sqlite
            .direct_readers
            .read(|locked, cache| locked.first_text_read(cache, &statement))
            .await
            .expect("read again");
        assert!(
            matches!(again, Read::Done(Some(ref text)) if text == "again"),
            "{again:?}"
        );
        store.close().await;
    }

    /// A Patient with an identifier (which the search index holds) whose value is `name`.
    fn identified<'a>(id: &'a FhirId, name: &str) -> ResourceWrite<'a> {
        ResourceWrite {
            resource: json!({
                "resourceType": "Patient",
                "identifier": [{"system": "https://example.org/t", "value": name}],
            }),
            ..patient(id, name)
        }
    }

    /// Three creates batched together, the second failing at its commit (an id already
    /// written): it runs without a savepoint, so the batch is rolled back and the first
    /// one's rows written again. The first and third are kept, whole; nothing of the
    /// second is, not even the Patient it wrote before the one refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_create_failing_at_its_commit_leaves_the_creates_batched_with_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path()).await;
        let crate::store::Store::Sqlite(sqlite) = &store else {
            panic!("a SQLite store");
        };
        let group = std::sync::Arc::clone(&sqlite.group);
        let lined_up = |n: usize| {
            let group = std::sync::Arc::clone(&group);
            async move {
                for _ in 0..500 {
                    if group.waiting_requests() >= n {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                panic!("{n} writes never waited for the writer");
            }
        };
        let [first_id, second_id, third_id] = [(); 3].map(|()| FhirId::generate());

        let mut first = store.begin_write().await.expect("begin");
        first
            .create(identified(&first_id, "First"))
            .await
            .expect("queued");
        let second = tokio::spawn({
            let (store, second_id, first_id) = (store.clone(), second_id.clone(), first_id.clone());
            async move {
                let mut tx = store.begin_write().await?;
                tx.create(identified(&second_id, "Second")).await?;
                tx.create(identified(&first_id, "Again")).await?;
                tx.commit().await
            }
        });
        lined_up(1).await;
        let third = tokio::spawn({
            let (store, third_id) = (store.clone(), third_id.clone());
            async move {
                let mut tx = store.begin_write().await?;
                tx.create(identified(&third_id, "Third")).await?;
                tx.commit().await
            }
        });
        lined_up(2).await;
        first.commit().await.expect("the first create");

        let error = second
            .await
            .expect("task")
            .expect_err("an id already written");
        assert!(
            matches!(&error, StoreError::Database(sqlx::Error::Database(e)) if e.is_unique_violation()),
            "{error:?}"
        );
        third.await.expect("task").expect("the third create");
        for (id, name) in [
            (&first_id, Some("First")),
            (&second_id, None),
            (&third_id, Some("Third")),
        ] {
            let read = store
                .read(PATIENT, id, &Visibility::All)
                .await
                .expect("read");
            match (read, name) {
                (ReadOutcome::Found(found), Some(name)) => {
                    assert!(found.json.contains(name), "{}", found.json);
                }
                (ReadOutcome::NotFound, None) => {}
                (read, name) => panic!("{id}: expected {name:?}, read {read:?}"),
            }
        }
        // The first one's index rows were written again with it: it is found by them.
        let query =
            crate::search::SearchQuery::parse(PATIENT, "identifier=https://example.org/t|First")
                .expect("query");
        let found = store
            .committed_matching_current(&[&query], &Visibility::All)
            .await
            .expect("search");
        assert_eq!(
            found.first().map(|matched| matched.ids.as_slice()),
            Some(&[first_id][..])
        );
        store.close().await;
    }

    /// A read abandoned while the queue waits for the writer connection (its future
    /// dropped, the transaction kept) loses the queued statements: the write must then
    /// refuse to commit, never commit without them.
    #[tokio::test]
    async fn a_queue_run_abandoned_midway_leaves_the_write_unable_to_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path()).await;
        let id = FhirId::generate();
        let mut tx = store.begin_write().await.expect("begin");
        // A type no search parameter indexes: its two rows are all the queue holds,
        // so nothing queued later (index rows naming it) would fail in their place.
        tx.create(ResourceWrite {
            resource_type: BASIC,
            id: &id,
            resource: json!({"resourceType": "Basic", "code": {"text": "abandoned"}}),
            received: None,
            request_id: "test",
            owner: None,
        })
        .await
        .expect("queued");
        // Polled once, then dropped: the hand-off to take the connection is still
        // pending, the queue already taken from the transaction.
        let abandoned = {
            let read = std::pin::pin!(tx.read(BASIC, &id, &Visibility::All));
            let mut context = std::task::Context::from_waker(std::task::Waker::noop());
            std::future::Future::poll(read, &mut context).is_pending()
        };
        let committed = tx.commit().await;
        let read = store
            .read(BASIC, &id, &Visibility::All)
            .await
            .expect("read");
        // Committed if and only if its statements ran.
        assert_eq!(
            committed.is_ok(),
            matches!(read, ReadOutcome::Found(_)),
            "abandoned: {abandoned}, commit: {committed:?}, read: {read:?}"
        );
        store.close().await;
    }

    /// A read inside the transaction sees what it queued: the queue runs first.
    #[tokio::test]
    async fn a_read_in_the_transaction_sees_its_queued_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path()).await;
        let id = FhirId::generate();
        let mut tx = store.begin_write().await.expect("begin");
        tx.create(patient(&id, "Queued")).await.expect("queued");
        let read = tx.read(PATIENT, &id, &Visibility::All).await.expect("read");
        let ReadOutcome::Found(found) = read else {
            panic!("not found: {read:?}");
        };
        assert!(found.json.contains("Queued"));
        tx.commit().await.expect("commit");
        store.close().await;
    }
}

#[cfg(test)]
mod writer_settings_tests {
    use crate::store::test_support::open_store_with;
    use crate::store::{AuditRecord, Store};

    /// With durable commits the writer keeps its savepoint journals in memory and, once a
    /// batch has handed it back, syncs its own commits again (`synchronous = FULL`): a
    /// session runs with `NORMAL` and syncs the WAL itself (`group::Durability`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_journals_savepoints_in_memory_and_syncs_outside_a_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store_with(dir.path(), true).await;
        let record = AuditRecord::new("read", 200);
        let writes = (0..8).map(|_| store.record_audit(&record));
        for written in futures::future::join_all(writes).await {
            written.expect("a write");
        }
        let Store::Sqlite(sqlite) = &store else {
            panic!("a file path opens SQLite");
        };
        let (temp_store,): (i64,) = sqlx::query_as("PRAGMA temp_store")
            .fetch_one(&sqlite.writer)
            .await
            .expect("temp_store");
        assert_eq!(temp_store, 2, "MEMORY");
        let (synchronous,): (i64,) = sqlx::query_as("PRAGMA synchronous")
            .fetch_one(&sqlite.writer)
            .await
            .expect("synchronous");
        assert_eq!(synchronous, 2, "FULL");
        // The page caches are the settings' (KiB, so negative), and the writer spills
        // changed pages mid-transaction only past 4,000 pages (15.6 MiB): spilling is on.
        let caches = crate::store::SqliteCaches::default();
        let (writer_cache,): (i64,) = sqlx::query_as("PRAGMA cache_size")
            .fetch_one(&sqlite.writer)
            .await
            .expect("cache_size");
        assert_eq!(writer_cache, -i64::from(caches.writer_kib));
        let (spill,): (i64,) = sqlx::query_as("PRAGMA cache_spill")
            .fetch_one(&sqlite.writer)
            .await
            .expect("cache_spill");
        assert_eq!(spill, 4000);
        let (reader_cache,): (i64,) = sqlx::query_as("PRAGMA cache_size")
            .fetch_one(&sqlite.readers)
            .await
            .expect("cache_size");
        assert_eq!(reader_cache, -i64::from(caches.reader_kib));
        store.close().await;
    }
}
