//! The PostgreSQL backend, for several Sprig instances on one database: one
//! pool serves reads and writes (PostgreSQL runs many writers at once), the
//! migrations in `migrations/postgres` run under sqlx's advisory lock (two
//! instances starting together do not race), and a commit that enqueues
//! outbox rows sends a `NOTIFY` that wakes delivery on every instance.
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

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::Notify;

use super::{StoreError, StoreOptions, WrittenVersion};

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
/// The `Bundle.id` of a stored message body.
const BODY_JSON_ID: &str = "(convert_from(body, 'UTF8')::jsonb ->> 'id')";

/// A resource row read to be changed is locked until the transaction ends.
const ROW_LOCK: &str = " FOR UPDATE";

/// SQL for the days (fractional) from the timestamp column `earlier` to `later`
/// (both RFC 3339 text); the arguments are fixed column names, never input.
fn days_between(later: &str, earlier: &str) -> String {
    format!(
        "(EXTRACT(EPOCH FROM (({later})::timestamptz - ({earlier})::timestamptz)) / 86400.0)::float8"
    )
}

/// Serialises transactions receiving the same business identifier (or the
/// same `X-Request-ID`), on any instance, with a transaction-scoped advisory
/// lock on its hash, so the second one finds the first's row instead of
/// racing it to the unique constraint.
async fn lock_identifier(conn: &mut Conn, system: &str, value: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("{system}|{value}"))
        .execute(conn)
        .await?;
    Ok(())
}

/// Serialises transactions adding to one referral (its per-referral
/// sequence numbers) by locking its row until the transaction ends.
async fn lock_referral(conn: &mut Conn, referral_id: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT id FROM referrals WHERE id = $1 FOR UPDATE")
        .bind(referral_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The channel a commit that enqueued outbox rows notifies.
const OUTBOX_CHANNEL: &str = "sprig_outbox";

/// Connections beyond the readers' share, for writes running alongside.
const WRITE_CONNECTIONS: u32 = 16;

/// A connection held by one request; dropped before
/// [`Interruptible::release`] (the request ended first) it is closed rather
/// than pooled, which ends the statement running on it server-side.
pub(super) struct Interruptible {
    conn: PoolConnection<Postgres>,
    released: bool,
}

impl Interruptible {
    /// A connection from `pool`.
    pub(super) async fn acquire(pool: &PgPool) -> Result<Self, StoreError> {
        Ok(Self {
            conn: pool.acquire().await?,
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
        if !self.released {
            self.conn.close_on_drop();
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
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let outbox_signal = Arc::new(Notify::new());
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(OUTBOX_CHANNEL).await?;
        tokio::spawn(forward_notifications(
            listener,
            pool.clone(),
            Arc::clone(&outbox_signal),
        ));
        Ok(Self {
            writer: pool.clone(),
            readers: pool,
            outbox_signal,
        })
    }

    /// Releases nothing: the other leases on a shared database are other
    /// instances' sends in flight, and an owner's name is new each run, so a
    /// crashed instance's leases are left to lapse (the lease time), after
    /// which any instance claims those rows again.
    pub(super) async fn release_leases(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Opens a write transaction.
    pub(super) async fn begin_write(&self) -> Result<Tx, StoreError> {
        Ok(Tx {
            tx: self.writer.begin().await?,
            outbox_signal: Arc::clone(&self.outbox_signal),
            enqueued: false,
            written: Vec::new(),
        })
    }
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
    /// Whether this transaction added outbox rows.
    enqueued: bool,
    /// The resource versions it wrote, for their Provenance (`WriteTx::take_written`).
    written: Vec<WrittenVersion>,
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("postgres::Tx").finish_non_exhaustive()
    }
}

impl Tx {
    /// The connection, for the shared SQL.
    fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// The versions written so far that no one has taken yet, oldest first.
    pub(super) fn take_written(&mut self) -> Vec<WrittenVersion> {
        std::mem::take(&mut self.written)
    }

    /// Commits every change; when it enqueued outbox rows, every instance's
    /// listener is told (PostgreSQL delivers a `NOTIFY` only on commit).
    pub(super) async fn commit(mut self) -> Result<(), StoreError> {
        if self.enqueued {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(OUTBOX_CHANNEL)
                .execute(self.conn())
                .await?;
        }
        self.tx.commit().await?;
        if self.enqueued {
            self.outbox_signal.notify_one();
        }
        Ok(())
    }
}
