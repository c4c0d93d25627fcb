//! The PostgreSQL backend, for several Sprig instances on one database: one
//! pool serves reads and writes (PostgreSQL runs many writers at once), the
//! migrations in `migrations/postgres` run under sqlx's advisory lock (two
//! instances starting together do not race), and a commit that enqueues
//! outbox rows is followed by a `NOTIFY` that wakes delivery on every instance
//! ([`announce_outbox_rows`]). A write's INSERTs are queued and sent together
//! ([`Tx::execute`], `combine`).
//!
//! The SQL shared with SQLite is compiled in here from `store/sql/` with
//! this backend's types; what the single SQLite writer guaranteed by being
//! single is made explicit here: a claim takes `FOR UPDATE SKIP LOCKED`, the
//! index rebuild locks its state row.

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

mod combine;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::Notify;

use super::deferred::{Guard, Statement};
use super::{StoreError, StoreOptions, WrittenVersion};
use crate::fhir::Instant;

/// This backend's database, for the shared SQL.
type Db = Postgres;
/// One connection.
type Conn = PgConnection;
/// One result row.
type DbRow = PgRow;
/// The store the shared SQL's `impl Backend` blocks extend.
type Backend = PgStore;

/// Another instance's claim in flight holds its rows locked until it
/// commits: skip them rather than wait, and never take the same row twice.
const CLAIM_LOCK: &str = "FOR UPDATE SKIP LOCKED";
/// Two instances starting together rebuild the index one after the other;
/// the second then finds it current.
const INDEX_STATE_LOCK: &str = " FOR UPDATE";
/// The id a lookup's `SELECT DISTINCT` selects from an index table (SQLite needs
/// it disguised; PostgreSQL plans the plain column by its statistics).
const LOOKUP_ID: &str = "x.id";
/// The `Bundle.id` of a stored message body.
const BODY_JSON_ID: &str = "(convert_from(body, 'UTF8')::jsonb ->> 'id')";

/// The members of a JSON array of strings bound as one parameter (`{}`): a list of any
/// length in one bound value, where one parameter per member would meet the protocol's
/// limit of 65,535.
const JSON_TEXT_MEMBERS: &str = "SELECT jsonb_array_elements_text(CAST({} AS jsonb))";

/// An audit row with nothing else to write is one INSERT on a pooled connection,
/// committed at once: PostgreSQL commits many connections' transactions side by side.
const AUDIT_IN_GROUP_COMMIT: bool = false;

/// A resource row read to be changed (`resources r`, the versions it is joined with
/// left alone) is locked until the transaction ends.
const ROW_LOCK: &str = " FOR UPDATE OF r";

/// A version a write transaction read without a lock may have been replaced by another
/// transaction since: an update from it locks the row and checks its version first.
const READS_STAY_CURRENT: bool = false;

/// A conditional create or update (`If-None-Exist`, `PUT Type?…`) whose condition matches
/// nothing holds this lock on its condition until its transaction ends, and matches again,
/// so that two transactions with one condition (two referrals for a new patient, at two
/// instances or on two connections) cannot both find no match and both create: the second
/// waits, then its search (a new snapshot under READ COMMITTED) finds the first's
/// resource. A condition that matched takes no lock (its update locks the row). Two-key
/// form, the first key Sprig's namespace: the two-key and one-key advisory lock spaces do
/// not overlap.
const CONDITION_LOCK: Option<&str> = Some("SELECT pg_advisory_xact_lock(1936748135, hashtext($1))");

/// SQL for the days (fractional) from the timestamp column `earlier` to `later`
/// (both RFC 3339 text); the arguments are fixed column names, never input.
fn days_between(later: &str, earlier: &str) -> String {
    format!(
        "(EXTRACT(EPOCH FROM (({later})::timestamptz - ({earlier})::timestamptz)) / 86400.0)::float8"
    )
}

/// The `(horizon, now)` a search serves under, in Unix milliseconds of the database's
/// clock: versions stamped before `horizon` are all committed (or never will be).
///
/// Every instance stamps versions with the database's clock, read (by
/// [`Tx::timestamp`], or [`Tx::lock_identifier`] with its lock: [`STAMP_SQL`]) only after
/// the transaction has its transaction id, so from then
/// on it shows in `pg_stat_activity` with a `backend_xid` and an `xact_start` no later
/// than its stamp. The horizon is the earliest `xact_start` of those transactions (the
/// ones that may still commit a version), or the statement's own start if there are
/// none: a transaction not yet shown reads its stamp later than that. So a version
/// that commits after a search was answered is stamped at or after that search's
/// horizon, and a GP asking `gt` the newest `lastUpdated` it was given sees it, with
/// any number of instances writing at once and no lock between them. (Every instance
/// must connect as the same role, or one with `pg_read_all_stats`, to see the others'
/// transactions.)
const HORIZON_SQL: &str = "SELECT \
       floor(EXTRACT(EPOCH FROM LEAST(statement_timestamp(), MIN(a.xact_start))) * 1000)::bigint, \
       floor(EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::bigint \
     FROM pg_stat_activity a \
     WHERE a.datname = current_database() AND a.backend_xid IS NOT NULL \
       AND a.pid <> pg_backend_pid()";

/// PostgreSQL reads every statement through its pool: no read on the caller's thread.
impl PgStore {
    #[expect(
        clippy::unused_async,
        reason = "the backends' hooks share one signature"
    )]
    async fn direct_first_text(
        &self,
        _statement: &super::deferred::Statement,
    ) -> Result<Option<Option<String>>, StoreError> {
        Ok(None)
    }

    #[expect(
        clippy::unused_async,
        reason = "the backends' hooks share one signature"
    )]
    async fn direct_matching_rows(
        &self,
        _queries: &[&crate::search::SearchQuery],
        _visibility: &super::Visibility,
    ) -> Result<Option<Vec<Vec<search::MatchedRow>>>, StoreError> {
        Ok(None)
    }

    fn close_direct_readers(&self) {}
}

impl PgStore {
    /// `(horizon, now)` in Unix milliseconds (see [`HORIZON_SQL`]).
    async fn commit_horizon(&self, conn: &mut Conn) -> Result<(i64, i64), StoreError> {
        let horizon: (i64, i64) = sqlx::query_as(HORIZON_SQL).fetch_one(conn).await?;
        Ok(horizon)
    }
}

/// The channel on which new outbox rows are announced to every instance.
const OUTBOX_CHANNEL: &str = "sprig_outbox";

/// Least time between two announcements of new outbox rows: the commits in between
/// share the next one. Another instance's delivery learns of a row at most this much
/// later (its own commits wake it at once).
const ANNOUNCE_EVERY: Duration = Duration::from_millis(5);

/// Connections beyond the readers' share, for writes running alongside.
const WRITE_CONNECTIONS: u32 = 16;

/// A connection held by one request. Dropped before [`Interruptible::release`] (the
/// client went away, or the request timed out and its future was dropped), it asks the
/// server to cancel the statement running on it (`pg_cancel_backend`, from another
/// pooled connection) and is closed rather than pooled. Closing alone is not enough:
/// PostgreSQL notices a closed client only when the statement next reads or writes the
/// socket, so a long query would run on for a request that has been answered.
pub(super) struct Interruptible {
    conn: PoolConnection<Postgres>,
    /// The pool, for the cancel's connection.
    pool: PgPool,
    /// The server process serving `conn`.
    backend_pid: i32,
    released: bool,
}

impl Interruptible {
    /// A connection from `pool`, and the server process behind it.
    pub(super) async fn acquire(pool: &PgPool) -> Result<Self, StoreError> {
        let mut conn = pool.acquire().await?;
        let (backend_pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
            .fetch_one(&mut *conn)
            .await?;
        Ok(Self {
            conn,
            pool: pool.clone(),
            backend_pid,
            released: false,
        })
    }

    /// The connection, for queries.
    pub(super) fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// Returns the connection to the pool.
    pub(super) async fn release(mut self) -> Result<(), StoreError> {
        self.released = true;
        Ok(())
    }
}

impl Drop for Interruptible {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // Never pooled again, so the cancel can reach no other request's statement.
        self.conn.close_on_drop();
        let (pool, pid) = (self.pool.clone(), self.backend_pid);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let cancelled = sqlx::query("SELECT pg_cancel_backend($1)")
                    .bind(pid)
                    .execute(&pool)
                    .await;
                if let Err(error) = cancelled {
                    tracing::warn!(%error, backend_pid = pid, "could not cancel an abandoned query");
                }
            });
        }
    }
}

/// A PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgStore {
    writer: PgPool,
    readers: PgPool,
    /// Woken when any instance commits outbox rows (via `LISTEN`), so
    /// delivery starts at once rather than at its next poll.
    outbox_signal: Arc<Notify>,
    /// Wakes [`announce_outbox_rows`] after a commit that enqueued outbox rows.
    announce: Arc<Notify>,
    /// Turns to count exactly, so counts leave connections for everything else
    /// (readers and writers share this pool).
    counts: Arc<crate::store::search::CountGate>,
}

impl PgStore {
    /// Connects and runs the migrations in `migrations/postgres` (under an
    /// advisory lock), then listens for other instances' outbox commits.
    pub async fn open(options: &StoreOptions) -> Result<Self, StoreError> {
        let connect = PgConnectOptions::from_str(options.database.trim())?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_read_connections.max(1) + WRITE_CONNECTIONS)
            // Writes run side by side here but each holds a connection for
            // its round trips: a burst waits for one longer than for
            // SQLite's lock before it is answered 503.
            .acquire_timeout(options.busy_timeout.max(Duration::from_secs(15)))
            .connect_with(connect)
            .await?;
        check_database_settings(&pool).await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let outbox_signal = Arc::new(Notify::new());
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(OUTBOX_CHANNEL).await?;
        tokio::spawn(forward_notifications(
            listener,
            pool.clone(),
            Arc::clone(&outbox_signal),
        ));
        let announce = Arc::new(Notify::new());
        tokio::spawn(announce_outbox_rows(pool.clone(), Arc::clone(&announce)));
        tokio::spawn(first_statistics(pool.clone()));
        Ok(Self {
            writer: pool.clone(),
            readers: pool,
            outbox_signal,
            announce,
            counts: Arc::new(crate::store::search::CountGate::new(
                options.max_read_connections.max(1),
                options.busy_timeout,
            )),
        })
    }

    /// Releases nothing: the other leases on a shared database are other
    /// instances' sends in flight, and an owner's name is new each run, so a
    /// crashed instance's leases are left to lapse (the lease time), after
    /// which any instance claims those rows again.
    pub(super) async fn release_leases(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// A write transaction for an audit row alone: unused here, as a row inserted on
    /// its own commits at once (see [`AUDIT_IN_GROUP_COMMIT`]).
    async fn begin_audit_write(&self) -> Result<Tx, StoreError> {
        self.begin_write().await
    }

    /// Opens a write transaction.
    pub(super) async fn begin_write(&self) -> Result<Tx, StoreError> {
        Ok(Tx {
            tx: self.writer.begin().await?,
            outbox_signal: Arc::clone(&self.outbox_signal),
            announce: Arc::clone(&self.announce),
            enqueued: false,
            written: Vec::new(),
            pending_index: Box::default(),
            stamp: None,
            locked_referrals: Vec::new(),
            queued: Vec::new(),
            failed: false,
        })
    }
}

/// Refuses a database whose encoding is not UTF8 (it could not hold every name and
/// note a referral carries, or would store them mangled). Checked before the
/// migrations, so a wrong database is left untouched. Its collation may be any:
/// every text column is declared `COLLATE "C"` (migration 0016), so ids, identifiers,
/// tokens, fixed-width instants and the keyset cursors compare byte by byte, as on
/// SQLite, whatever the database's default (a linguistic one ignores case first and
/// would order a GP's pull differently from the cursors Sprig hands out).
async fn check_database_settings(pool: &PgPool) -> Result<(), StoreError> {
    let (name, encoding): (String, String) = sqlx::query_as(
        "SELECT datname, pg_encoding_to_char(encoding) \
         FROM pg_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await?;
    if encoding != "UTF8" {
        return Err(StoreError::UnsuitableDatabase(format!(
            "PostgreSQL database '{name}' has ENCODING '{encoding}'; Sprig needs ENCODING 'UTF8' \
             (CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8')"
        )));
    }
    Ok(())
}

/// A write transaction's stamp (`Tx::timestamp`): the database clock in Unix
/// milliseconds, read after the transaction has its id, so that from then on a search's
/// horizon ([`HORIZON_SQL`]) counts it as possibly committing. The fenced subquery
/// (`OFFSET 0`) runs before the clock is read, and its id must be selected:
/// `pg_current_xact_id` is STABLE, and an unused column of it is planned away, leaving
/// the transaction without an id.
const STAMP_SQL: &str = "SELECT floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint, \
     assigned.xid::text FROM (SELECT pg_current_xact_id() AS xid OFFSET 0) AS assigned";

/// [`STAMP_SQL`] after an identifier's advisory lock (`Tx::lock_identifier`, `$1` the
/// identifier): both fenced subqueries run before the clock is read, so the stamp is read
/// with the lock held.
const LOCK_AND_STAMP_SQL: &str = "SELECT floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint, \
     assigned.xid::text FROM (SELECT pg_current_xact_id() AS xid OFFSET 0) AS assigned, \
     (SELECT pg_advisory_xact_lock(hashtextextended($1, 0)) AS held OFFSET 0) AS locked";

/// The database clock's reading `millis` (Unix milliseconds) as a version's stamp.
fn stamp_of(millis: i64) -> Result<Instant, StoreError> {
    Instant::from_unix_millis(millis).ok_or_else(|| {
        StoreError::Database(sqlx::Error::Decode(
            format!("the database clock read {millis} ms").into(),
        ))
    })
}

/// Tells every instance's listener (this one's too) that commits have enqueued outbox
/// rows: one `NOTIFY` after however many such commits since the last, at most one per
/// [`ANNOUNCE_EVERY`], until the pool closes.
///
/// Not in the write transactions themselves: PostgreSQL serialises every committing
/// transaction that has sent a `NOTIFY` on one lock held until its commit is on disk,
/// so that notifications queue in commit order; with a `NOTIFY` in each, new referrals
/// on every instance would commit one disk flush at a time, and each commit would wake
/// every listener. The announcement carries nothing, so it commits without waiting for
/// the disk: one lost in a crash costs the other instances no more than their poll.
async fn announce_outbox_rows(pool: PgPool, wanted: Arc<Notify>) {
    loop {
        // Woken at least once a second, to end once the pool has closed.
        let woken = tokio::time::timeout(Duration::from_secs(1), wanted.notified()).await;
        if pool.is_closed() {
            return;
        }
        if woken.is_err() {
            continue;
        }
        let announced =
            sqlx::query("SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, '')")
                .bind(OUTBOX_CHANNEL)
                .execute(&pool)
                .await;
        if let Err(error) = announced {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(%error, "could not announce new outbox rows to the other instances; they find them at their next poll");
        }
        tokio::time::sleep(ANNOUNCE_EVERY).await;
    }
}

/// How often [`first_statistics`] looks for tables that have rows but no statistics.
const FIRST_STATISTICS_EVERY: Duration = Duration::from_secs(10);

/// Rows changed in a table never analysed that make [`first_statistics`] analyse it.
const FIRST_STATISTICS_AFTER_ROWS: i64 = 1_000;

/// Gives each table its first statistics (`ANALYZE`) once it has
/// [`FIRST_STATISTICS_AFTER_ROWS`] changed rows and none yet, until the pool closes;
/// autovacuum keeps them current from then on.
///
/// Without statistics PostgreSQL's planner guesses one row for every index and may take
/// one that reads every row of a kind: on a new database a transaction Bundle's
/// conditional match is planned to walk every resource of its type the practice owns
/// (`resources_by_owner`, the id matched as a join filter) where the primary key is one
/// probe. Autovacuum's first `ANALYZE` comes a minute's nap and 10 % more rows later, and
/// a restored database (`pg_restore` brings no statistics) has none until then either;
/// this looks at once and every [`FIRST_STATISTICS_EVERY`].
async fn first_statistics(pool: PgPool) {
    loop {
        if let Err(error) = analyze_tables_without_statistics(&pool).await {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(%error, "could not give new tables their first statistics");
        }
        tokio::time::sleep(FIRST_STATISTICS_EVERY).await;
        if pool.is_closed() {
            return;
        }
    }
}

/// `ANALYZE`s every table of this schema never analysed (by anyone, autovacuum
/// included) that has [`FIRST_STATISTICS_AFTER_ROWS`] changed rows; returns their names.
async fn analyze_tables_without_statistics(pool: &PgPool) -> Result<Vec<String>, StoreError> {
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT relname::text FROM pg_stat_user_tables \
         WHERE schemaname = current_schema() AND last_analyze IS NULL \
         AND last_autoanalyze IS NULL AND n_mod_since_analyze >= $1 ORDER BY relname",
    )
    .bind(FIRST_STATISTICS_AFTER_ROWS)
    .fetch_all(pool)
    .await?;
    let mut analyzed = Vec::with_capacity(tables.len());
    for (table,) in tables {
        // A name PostgreSQL itself listed, quoted as an identifier.
        let quoted = format!("\"{}\"", table.replace('"', "\"\""));
        sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE {quoted}")))
            .execute(pool)
            .await?;
        tracing::info!(table = %table, "gave a table its first statistics");
        analyzed.push(table);
    }
    Ok(analyzed)
}

/// Wakes this instance's delivery whenever any instance's commit enqueued
/// outbox rows, until the pool closes. A lost listener connection (a
/// failover) is reconnected by `PgListener`; meanwhile the poll interval
/// still finds the work.
async fn forward_notifications(mut listener: PgListener, pool: PgPool, signal: Arc<Notify>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(_)) => signal.notify_one(),
            // The connection was lost: wake once, as a notification may have
            // been missed, and let the next call reconnect.
            Ok(None) => signal.notify_one(),
            Err(error) => {
                if pool.is_closed() {
                    return;
                }
                tracing::warn!(%error, "outbox notifications interrupted");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        if pool.is_closed() {
            return;
        }
    }
}

/// An open write transaction.
pub struct Tx {
    tx: Transaction<'static, Postgres>,
    /// Told after a commit that added outbox rows.
    outbox_signal: Arc<Notify>,
    /// Told after a commit that added outbox rows, to announce them to the other instances.
    announce: Arc<Notify>,
    /// Whether this transaction added outbox rows.
    enqueued: bool,
    /// The resource versions it wrote, for their Provenance (`WriteTx::take_written`).
    written: Vec<WrittenVersion>,
    /// The `lastUpdated` of every version this transaction writes, once read.
    stamp: Option<Instant>,
    /// Index rows deferred to the next index read or the commit (`PendingIndex`);
    /// boxed, so a transaction stays small to move.
    pending_index: Box<search::PendingIndex>,
    /// The referrals whose rows this transaction holds locked ([`Tx::lock_referral`]).
    locked_referrals: Vec<String>,
    /// Statements whose results it never reads, sent (combined: `combine`) before its
    /// next other statement or its commit.
    queued: Vec<Statement>,
    /// A call on it failed, or was dropped midway ([`Tx::call_begins`]): the server
    /// has aborted the transaction, or may have, so it must not report a commit.
    failed: bool,
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("postgres::Tx").finish_non_exhaustive()
    }
}

impl Tx {
    /// A call on the transaction begins (`store::dispatch_write!`): counted as failed
    /// until [`Tx::call_ended`] says otherwise, so a call dropped midway (its future
    /// abandoned, the transaction kept) leaves it unable to commit. Returns whether an
    /// earlier call had failed.
    pub(super) fn call_begins(&mut self) -> bool {
        std::mem::replace(&mut self.failed, true)
    }

    /// The call that [`Tx::call_begins`] began has ended with `result`. Any error from
    /// the database counts as failed: PostgreSQL aborts the whole transaction on a
    /// failed statement and its later `COMMIT` rolls back instead, yet sqlx reports it
    /// as success. An error decided by the store itself (a version conflict, a
    /// resource not found) runs no failed statement and leaves the transaction as it was.
    pub(super) fn call_ended<T>(&mut self, failed_before: bool, result: &Result<T, StoreError>) {
        self.failed = failed_before || matches!(result, Err(StoreError::Database(_)));
    }

    /// The connection, for the shared SQL, once every queued statement has run.
    async fn conn(&mut self) -> Result<&mut PgConnection, StoreError> {
        self.run_queued().await?;
        Ok(&mut self.tx)
    }

    /// The connection, for a statement that only reads (the same one: SQLite's
    /// writer distinguishes them, see its `Tx::read_conn`).
    async fn read_conn(&mut self) -> Result<&mut PgConnection, StoreError> {
        self.conn().await
    }

    /// Sends the queued statements, as few as `combine` makes them, in order.
    async fn run_queued(&mut self) -> Result<(), StoreError> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let queued = std::mem::take(&mut self.queued);
        for statement in combine::combine(queued) {
            statement::run_now(&mut self.tx, statement).await?;
        }
        Ok(())
    }

    /// Serialises transactions receiving the same business identifier (or the
    /// same `X-Request-ID`), on any instance, with a transaction-scoped advisory
    /// lock on its hash, so the second one finds the first's row instead of
    /// racing it to the unique constraint.
    ///
    /// A transaction that locks an identifier goes on to write (a new referral, a
    /// message), so the same statement also gives it its id and reads its stamp
    /// ([`Tx::timestamp`]), after the lock is held: one round trip where there were two.
    async fn lock_identifier(&mut self, system: &str, value: &str) -> Result<(), StoreError> {
        let key = format!("{system}|{value}");
        if self.stamp.is_some() {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(key)
                .execute(self.conn().await?)
                .await?;
            return Ok(());
        }
        let (millis, _xid): (i64, String) = sqlx::query_as(LOCK_AND_STAMP_SQL)
            .bind(key)
            .fetch_one(self.conn().await?)
            .await?;
        self.stamp = Some(stamp_of(millis)?);
        Ok(())
    }

    /// Serialises transactions adding to one referral (its per-referral
    /// sequence numbers) by locking its row until the transaction ends.
    /// Each referral is locked once per transaction: a transition's read of the record
    /// takes the lock, and the timeline and submission writes after it need no round
    /// trip of their own.
    async fn lock_referral(&mut self, referral_id: &str) -> Result<(), StoreError> {
        if self
            .locked_referrals
            .iter()
            .any(|locked| locked == referral_id)
        {
            return Ok(());
        }
        let row: Option<(String,)> =
            sqlx::query_as("SELECT id FROM referrals WHERE id = $1 FOR UPDATE")
                .bind(referral_id)
                .fetch_optional(self.conn().await?)
                .await?;
        // Remembered only when a row was locked: a referral not yet there holds no lock.
        if row.is_some() {
            self.locked_referrals.push(referral_id.to_owned());
        }
        Ok(())
    }

    /// A referral this transaction inserted counts as locked by it: no other transaction
    /// sees its row until this one commits, and one that references it (a foreign key
    /// check) waits for this one. Its notes, timeline and submission then need no
    /// `SELECT … FOR UPDATE` (a round trip per new referral).
    fn inserted_referral(&mut self, referral_id: &str) {
        self.locked_referrals.push(referral_id.to_owned());
    }

    /// Queues a statement whose result the transaction never reads, to run before the
    /// transaction's next other statement or its commit, combined with its neighbours
    /// where their meaning allows (`combine`): a round trip each was most of what a new
    /// referral cost here. Its failure is reported there, as on SQLite.
    async fn execute(&mut self, statement: Statement) -> Result<(), StoreError> {
        self.queued.push(statement);
        Ok(())
    }

    /// Reads one text value (the first row's first column) in the transaction.
    async fn read_text(&mut self, statement: Statement) -> Result<Option<String>, StoreError> {
        statement::first_text(self.conn().await?, statement).await
    }

    /// No single writer to wait for here (see the SQLite `Tx::take_writer`), but the
    /// queued statements and index rows are sent now, before the commit begins
    /// (`WriteTx::commit`): they may wait for another transaction's lock, and until the
    /// commit begins a request past its time limit is dropped and rolled back, where a
    /// commit begun is waited for.
    pub(in crate::store) async fn take_writer(&mut self) -> Result<(), StoreError> {
        self.flush_index().await?;
        self.run_queued().await
    }

    /// Fails with `guard`'s failure (given the first column's text) if `statement`
    /// finds a row: now, the caller holding the lock that keeps the answer true to the
    /// commit (`lock_identifier`).
    async fn fail_if_found(
        &mut self,
        guard: Guard,
        statement: Statement,
    ) -> Result<(), StoreError> {
        match self.read_text(statement).await? {
            Some(found) => Err(guard.failure(found)),
            None => Ok(()),
        }
    }

    /// A guard read (`Tx::fail_if_found`) runs at once: where transactions write side
    /// by side there is no writer to run it on later.
    fn guards_run_on_the_writer(&self) -> bool {
        false
    }

    /// The versions written so far that no one has taken yet, oldest first.
    pub(super) fn take_written(&mut self) -> Vec<WrittenVersion> {
        std::mem::take(&mut self.written)
    }

    /// The `lastUpdated` of the versions this transaction writes: the database's clock,
    /// read once the transaction has its id (the subquery runs first), so a search's
    /// horizon ([`HORIZON_SQL`]) accounts for it.
    async fn timestamp(&mut self) -> Result<Instant, StoreError> {
        if let Some(stamp) = self.stamp {
            return Ok(stamp);
        }
        let (millis, _xid): (i64, String) = sqlx::query_as(STAMP_SQL)
            .fetch_one(self.conn().await?)
            .await?;
        let stamp = stamp_of(millis)?;
        self.stamp = Some(stamp);
        Ok(stamp)
    }

    /// Commits every change; when it enqueued outbox rows, this instance's delivery is
    /// woken, and the other instances' once [`announce_outbox_rows`] has sent its next
    /// `NOTIFY`. Refused (rolled back) after a call that failed or was abandoned.
    pub(super) async fn commit(mut self) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::WriteAbandoned(
                "an earlier statement of this write failed or was abandoned; \
                 nothing of it is kept"
                    .into(),
            ));
        }
        self.flush_index().await?;
        self.run_queued().await?;
        self.tx.commit().await?;
        if self.enqueued {
            self.outbox_signal.notify_one();
            self.announce.notify_one();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::postgres::PgPoolOptions;

    use super::Interruptible;
    use crate::fhir::FhirId;
    use crate::store::test_support::{PATIENT, patient};
    use crate::store::{ReadOutcome, Store, StoreError, StoreOptions, Visibility};

    /// The test PostgreSQL server (as the integration tests' `TEST_POSTGRES`); these
    /// machines run one at 127.0.0.1:5432.
    fn base() -> String {
        std::env::var("TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
    }

    /// The test server's maintenance database.
    fn server() -> String {
        format!("{}/postgres", base())
    }

    /// A store on a database of its own, dropped by [`FreshStore::drop_database`].
    struct FreshStore {
        store: Store,
        name: String,
    }

    /// Runs one statement on the test server's maintenance database.
    async fn on_server(statement: String) {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&server())
            .await
            .expect("the test PostgreSQL server is running");
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&admin)
            .await
            .expect("the maintenance statement runs");
        admin.close().await;
    }

    impl FreshStore {
        async fn open() -> Self {
            let name = format!("sprig_unit_{}", uuid::Uuid::new_v4().simple());
            on_server(format!(
                "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8'"
            ))
            .await;
            let store = Store::open(&StoreOptions {
                database: format!("{}/{name}", base()),
                busy_timeout: Duration::from_secs(5),
                max_read_connections: 2,
                durable_commits: false,
                sqlite_caches: crate::store::SqliteCaches::default(),
            })
            .await
            .expect("store opens");
            Self { store, name }
        }

        /// A pool of one connection to the store's database, apart from the store's own.
        async fn own_pool(&self) -> sqlx::PgPool {
            PgPoolOptions::new()
                .max_connections(1)
                .connect(&format!("{}/{}", base(), self.name))
                .await
                .expect("the test database")
        }

        async fn drop_database(self) {
            self.store.close().await;
            on_server(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await;
        }
    }

    /// PostgreSQL aborts a transaction at its first failed statement, and its `COMMIT`
    /// then rolls back, which sqlx reports as success. A caller that carries on after
    /// the error must be told the write did not commit, never `Ok`.
    #[tokio::test]
    async fn a_write_whose_statement_failed_refuses_to_commit() {
        let fresh = FreshStore::open().await;
        let store = &fresh.store;
        let (first, second) = (FhirId::generate(), FhirId::generate());
        let mut tx = store.begin_write().await.expect("begin");
        tx.create(patient(&first, "Kept-Not"))
            .await
            .expect("create");
        tx.create(patient(&second, "Twice")).await.expect("create");
        let is_duplicate = |error: &StoreError| matches!(error, StoreError::Database(sqlx::Error::Database(e)) if e.is_unique_violation());
        // The INSERTs are queued (`Tx::execute`): the duplicate fails when they are
        // sent, at the next other statement or at the commit.
        match tx.create(patient(&second, "Twice")).await {
            Err(error) => {
                assert!(is_duplicate(&error), "{error:?}");
                // The caller carries on regardless.
                let error = tx.commit().await.expect_err("the write failed");
                assert!(matches!(error, StoreError::WriteAbandoned(_)), "{error:?}");
            }
            Ok(_) => {
                let error = tx.commit().await.expect_err("the write failed");
                assert!(is_duplicate(&error), "{error:?}");
            }
        }
        for id in [&first, &second] {
            let read = store.read(PATIENT, id, &Visibility::All).await;
            assert!(matches!(read, Ok(ReadOutcome::NotFound)), "{read:?}");
        }
        // The next write commits, and reads back.
        let mut tx = store.begin_write().await.expect("begin");
        tx.create(patient(&first, "Later")).await.expect("create");
        tx.commit().await.expect("commit");
        let read = store.read(PATIENT, &first, &Visibility::All).await;
        assert!(matches!(read, Ok(ReadOutcome::Found(_))), "{read:?}");
        fresh.drop_database().await;
    }

    /// A call dropped midway (its future abandoned, the transaction kept) may have run
    /// its statement or not, or failed: the write must refuse to commit.
    #[tokio::test]
    async fn a_write_with_a_call_abandoned_midway_refuses_to_commit() {
        let fresh = FreshStore::open().await;
        let store = &fresh.store;
        let id = FhirId::generate();
        let mut tx = store.begin_write().await.expect("begin");
        {
            let create = std::pin::pin!(tx.create(patient(&id, "Abandoned")));
            let mut context = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(
                std::future::Future::poll(create, &mut context).is_pending(),
                "the create waits for the server"
            );
        }
        let error = tx.commit().await.expect_err("a call was abandoned");
        assert!(matches!(error, StoreError::WriteAbandoned(_)), "{error:?}");
        let read = store.read(PATIENT, &id, &Visibility::All).await;
        assert!(matches!(read, Ok(ReadOutcome::NotFound)), "{read:?}");
        fresh.drop_database().await;
    }

    /// A write dropped while its `BEGIN` is on the wire (its client gone, its request
    /// timed out) must leave no transaction open on the pooled connection: the next
    /// borrower's statements would run inside it, uncommitted and holding their locks,
    /// and be lost when the connection closes. (sqlx 0.9.0 raised its transaction depth
    /// only after `BEGIN`'s round trip, so nothing rolled it back: sqlx#4393, fixed in
    /// 0.9.1.) Each round drops the write after one more poll than the last, so one
    /// round drops it just after the poll that sent its `BEGIN`.
    #[tokio::test]
    async fn a_write_dropped_while_it_begins_leaves_no_transaction_open() {
        let fresh = FreshStore::open().await;
        let watcher = PgPoolOptions::new()
            .max_connections(1)
            .connect(&server())
            .await
            .expect("the test PostgreSQL server is running");
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        for polls in 1..=30 {
            // Boxed, so that `drop` drops the future itself.
            let mut begin = Box::pin(fresh.store.begin_write());
            for poll in 1..=polls {
                if std::future::Future::poll(begin.as_mut(), &mut context).is_ready() {
                    break;
                }
                if poll < polls {
                    // Lets the server answer and tokio's reactor see it.
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
            drop(begin);
            // The dropped write's connection goes back to the pool in a task of its own.
            tokio::time::sleep(Duration::from_millis(60)).await;
            let open: Vec<(String,)> = sqlx::query_as(
                "SELECT query FROM pg_stat_activity \
                 WHERE datname = $1 AND state LIKE 'idle in transaction%'",
            )
            .bind(&fresh.name)
            .fetch_all(&watcher)
            .await
            .expect("pg_stat_activity");
            assert!(
                open.is_empty(),
                "a write dropped after {polls} polls left a pooled connection in a \
                 transaction (the statement each ran last: {open:?})"
            );
        }
        watcher.close().await;
        fresh.drop_database().await;
    }

    /// A transaction's stamp is read only once it has its transaction id, by whichever
    /// statement reads it (`Tx::timestamp`, or `Tx::lock_identifier` with its lock), so
    /// that a search's horizon (`HORIZON_SQL`) already counts it as possibly committing.
    #[tokio::test]
    async fn a_stamp_is_read_only_once_the_transaction_has_its_id() {
        let fresh = FreshStore::open().await;
        async fn assigned(tx: &mut super::Tx) -> Result<Option<String>, sqlx::Error> {
            sqlx::query_scalar("SELECT pg_current_xact_id_if_assigned()::text")
                .fetch_one(&mut *tx.tx)
                .await
        }
        let Store::Postgres(pg) = &fresh.store else {
            panic!("a PostgreSQL store");
        };
        let mut locked = pg.begin_write().await.expect("begin");
        locked
            .lock_identifier("https://example.org/id", "A-1")
            .await
            .expect("lock");
        assert!(locked.stamp.is_some(), "the lock read the stamp");
        let id = assigned(&mut locked).await.expect("xid");
        assert!(
            id.is_some(),
            "the stamp was read before the transaction had an id"
        );
        drop(locked);

        let mut stamped = pg.begin_write().await.expect("begin");
        stamped.timestamp().await.expect("stamp");
        let id = assigned(&mut stamped).await.expect("xid");
        assert!(
            id.is_some(),
            "the stamp was read before the transaction had an id"
        );
        drop(stamped);
        fresh.drop_database().await;
    }

    /// Before its first statistics, a lookup of `system|code` among many tokens of one
    /// system probes the code (migration 0018): planned without statistics, it once took
    /// `search_tokens_by_system` and filtered every token of the system on the code.
    #[tokio::test]
    async fn a_system_and_code_lookup_probes_the_code_without_statistics() {
        let fresh = FreshStore::open().await;
        let pool = fresh.own_pool().await;
        for sql in [
            "INSERT INTO resources (resource_type, id, current_version, deleted, last_updated) \
             SELECT 'ServiceRequest', 'sr' || g, 1, 0, '2026-12-06T00:00:00.000Z' \
             FROM generate_series(1, 5000) g",
            "INSERT INTO search_tokens (resource_type, id, param, system, code) \
             SELECT 'ServiceRequest', 'sr' || g, 'identifier', 'https://gp.example/Id/referral', \
             'REF-' || g FROM generate_series(1, 5000) g",
        ] {
            sqlx::query(sql).execute(&pool).await.expect("rows");
        }
        let plan: Vec<(String,)> = sqlx::query_as(
            "EXPLAIN SELECT DISTINCT x.id FROM search_tokens x WHERE x.resource_type = \
             'ServiceRequest' AND x.param = 'identifier' AND \
             (x.system = 'https://gp.example/Id/referral' AND x.code = 'REF-17')",
        )
        .fetch_all(&pool)
        .await
        .expect("plan");
        let plan: Vec<String> = plan.into_iter().map(|(line,)| line).collect();
        let probe = plan
            .iter()
            .find(|line| line.contains("Index Cond"))
            .unwrap_or_else(|| panic!("no index probe: {plan:#?}"));
        assert!(probe.contains("code ="), "{plan:#?}");
        assert!(
            !plan.iter().any(|line| line.contains("Filter")),
            "{plan:#?}"
        );
        pool.close().await;
        fresh.drop_database().await;
    }

    /// A table with rows and no statistics is analysed once, by `first_statistics`;
    /// after that autovacuum's (and a table with few rows is left alone).
    #[tokio::test]
    async fn a_table_with_rows_and_no_statistics_is_analysed_once() {
        let fresh = FreshStore::open().await;
        let pool = fresh.own_pool().await;
        let rows = super::FIRST_STATISTICS_AFTER_ROWS + 100;
        sqlx::query(
            "INSERT INTO seen_assertions (client_id, jti, expires_at) \
             SELECT 'c', g::text, g FROM generate_series(1, $1) g",
        )
        .bind(rows)
        .execute(&pool)
        .await
        .expect("rows");
        sqlx::query(
            "INSERT INTO identity_secrets (name, value, created_at) VALUES ('few', 'x', 'now')",
        )
        .execute(&pool)
        .await
        .expect("a row");
        // The server counts a table's changed rows in shared memory once the inserting
        // session reports them (at most a second after its transaction); wait for it.
        let mut analyzed = Vec::new();
        for _ in 0..50 {
            analyzed = super::analyze_tables_without_statistics(&pool)
                .await
                .expect("analyse");
            if !analyzed.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(analyzed, ["seen_assertions"]);
        let (estimate,): (f32,) =
            sqlx::query_as("SELECT reltuples FROM pg_class WHERE relname = 'seen_assertions'")
                .fetch_one(&pool)
                .await
                .expect("estimate");
        assert!((estimate - rows as f32).abs() < 1.0, "{estimate}");
        let again = super::analyze_tables_without_statistics(&pool)
            .await
            .expect("analyse");
        assert!(again.is_empty(), "{again:?}");
        pool.close().await;
        fresh.drop_database().await;
    }

    #[tokio::test]
    async fn a_reader_dropped_mid_query_cancels_it_on_the_server() {
        let pool = PgPoolOptions::new()
            .max_connections(3)
            .connect(&server())
            .await
            .expect("the test PostgreSQL server is running");
        // A marker only this test's statement carries, to find it in pg_stat_activity.
        let marker = format!("sprig_cancel_test_{}", uuid::Uuid::new_v4().simple());
        let mut reader = Interruptible::acquire(&pool).await.expect("reader");
        let pid = reader.backend_pid;
        let sleeper = format!("SELECT pg_sleep(60) AS {marker}");
        let running = tokio::time::timeout(
            Duration::from_millis(300),
            sqlx::query(sqlx::AssertSqlSafe(sleeper)).execute(reader.conn()),
        )
        .await;
        assert!(running.is_err(), "the query was still running");
        drop(reader);

        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (still,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM pg_stat_activity \
                 WHERE pid = $1 AND state = 'active' AND query LIKE '%' || $2 || '%'",
            )
            .bind(pid)
            .bind(&marker)
            .fetch_one(&pool)
            .await
            .expect("pg_stat_activity");
            if still == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the abandoned query is still running on the server"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pool.close().await;
    }
}
