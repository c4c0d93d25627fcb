//! Group commit on SQLite's single writer connection: many requests'
//! transactions share one SQLite transaction and one fsync.
//!
//! A *session* holds the writer connection with one SQLite transaction open
//! (`BEGIN IMMEDIATE`). Each request's [`super::Tx`] is a `SAVEPOINT` in it:
//! its commit is `RELEASE`, after which it hands the connection straight to
//! the next request waiting to write (not back to the pool), and then waits
//! for the `COMMIT` that holds its changes; it answers only after that. When
//! no request is waiting, or the batch is full, the request in hand commits
//! the batch (one fsync with `synchronous = FULL`), tells every member the
//! result, and returns the connection to the pool, where the writes that use
//! it directly (outbox claims, audit rows of reads) take their turn before
//! the next session opens.
//!
//! A request that fails or is abandoned (its `Tx` dropped without commit)
//! is rolled back to its savepoint; the others in the batch are untouched.
//! Should SQLite have rolled back the whole transaction (an I/O error, a full
//! disk), every member of the batch is told it failed: none of them has been
//! answered yet, so nothing acknowledged is lost.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::Sqlite;
use sqlx::SqlitePool;
use sqlx::pool::PoolConnection;
use tokio::sync::{oneshot, watch};

use crate::store::StoreError;

/// Most requests committed together: bounds how long the first of a batch
/// waits for the last (each holds the writer for its own statements).
const MAX_BATCH: usize = 64;

/// The savepoint of the request in hand (one at a time on the connection).
const SAVEPOINT: &str = "SAVEPOINT sprig_request";
const RELEASE: &str = "RELEASE sprig_request";
const ROLLBACK_TO: &str = "ROLLBACK TO sprig_request; RELEASE sprig_request";

/// The writer connection's sessions and the requests waiting for it.
#[derive(Debug)]
pub(super) struct Group {
    pool: SqlitePool,
    /// How long a request waits for its turn before it is answered busy.
    busy_timeout: Duration,
    waiting: Mutex<Waiting>,
}

#[derive(Debug, Default)]
struct Waiting {
    /// A session holds (or is acquiring) the writer connection.
    active: bool,
    /// Requests waiting for the session's connection: sent `Some` (the
    /// connection, theirs now) or `None` (the session ended: start one).
    queue: VecDeque<oneshot::Sender<Option<Held>>>,
}

/// One batch: the requests whose changes one `COMMIT` makes durable.
#[derive(Debug)]
pub(super) struct Batch {
    members: std::sync::atomic::AtomicUsize,
    /// `None` until the batch ends; then whether it committed.
    done: watch::Sender<Option<Result<(), String>>>,
}

impl Batch {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            members: std::sync::atomic::AtomicUsize::new(0),
            done: watch::Sender::new(None),
        })
    }

    fn join(&self) -> usize {
        self.members
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .saturating_add(1)
    }

    fn size(&self) -> usize {
        self.members.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn finish(&self, result: Result<(), String>) {
        self.done.send_replace(Some(result));
    }
}

/// The writer connection while a session holds it: owned by one request at
/// a time, or in transit between two. Dropped while it still holds the
/// connection (its request ended, or a hand-over met a waiter that had just
/// gone), it rolls back to its savepoint and hands on, in a task of its own.
#[derive(Debug)]
pub(super) struct Held {
    /// `None` only once it has been handed back to the pool.
    conn: Option<PoolConnection<Sqlite>>,
    /// The statements the session's queued writes prepared on `conn`: cleared
    /// (finalized) before `conn` goes back to the pool or closes.
    cache: super::direct::Cache,
    group: Arc<Group>,
    /// The batch its open transaction belongs to.
    batch: Arc<Batch>,
    /// Whether `BEGIN` has run (false: the next holder opens the transaction).
    began: bool,
    /// Whether the holder's savepoint is open.
    in_savepoint: bool,
    /// Already handed to a rescue task: dropped again, that task never ran
    /// (the runtime is shutting down), so it must not spawn another.
    rescued: bool,
    /// When the request in hand got the connection, and how long it waited for
    /// it: the writer's timings, logged at debug (`sprig::store::sqlite::group`).
    since: std::time::Instant,
    waited: Duration,
    /// How long `BEGIN` (the batch's first) and `SAVEPOINT` took, of the holding time.
    open_took: Duration,
}

impl Group {
    pub(super) fn new(pool: SqlitePool, busy_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            pool,
            busy_timeout,
            waiting: Mutex::new(Waiting::default()),
        })
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The writer connection for one request, inside the current batch's
    /// transaction, with the request's savepoint open. Cancel-safe: a caller
    /// dropped at any point leaves the connection handed on.
    pub(super) async fn enter(self: &Arc<Self>) -> Result<Held, StoreError> {
        let asked = std::time::Instant::now();
        let mut held = loop {
            let waiter = {
                let mut waiting = self.waiting();
                if waiting.active {
                    let (send, receive) = oneshot::channel();
                    waiting.queue.push_back(send);
                    Some(receive)
                } else {
                    waiting.active = true;
                    None
                }
            };
            match waiter {
                Some(receive) => match tokio::time::timeout(self.busy_timeout, receive).await {
                    Ok(Ok(Some(held))) => break held,
                    // The session ended (or its holder vanished): start one.
                    Ok(Ok(None) | Err(_)) => continue,
                    // As long as the pool would have made it wait.
                    Err(_) => return Err(StoreError::Database(sqlx::Error::PoolTimedOut)),
                },
                None => {
                    let claim = Claim(Some(Arc::clone(self)));
                    let conn = self.pool.acquire().await?;
                    claim.disarm();
                    break Held {
                        conn: Some(conn),
                        cache: super::direct::Cache::default(),
                        group: Arc::clone(self),
                        batch: Batch::new(),
                        began: false,
                        in_savepoint: false,
                        rescued: false,
                        since: asked,
                        waited: Duration::ZERO,
                        open_took: Duration::ZERO,
                    };
                }
            }
        };
        held.since = std::time::Instant::now();
        held.waited = held.since.saturating_duration_since(asked);
        held.batch.join();
        // `BEGIN` and `SAVEPOINT` run to their end in a task of their own, so that
        // `began` and `in_savepoint` always say what the connection holds. Awaited
        // here directly, a caller dropped while either ran (its client gone: wrk
        // closing its connections at the end of a run did it) left `began` false
        // with the transaction open; every later `BEGIN` then failed ("cannot start
        // a transaction within a transaction") and the writer refused every write
        // until restart. Dropped now, the task finishes and its `Held`, dropped in
        // turn, rolls back to the savepoint and hands on.
        match tokio::spawn(Self::open(held)).await {
            Ok(Ok(mut opened)) => {
                opened.open_took = opened.since.elapsed();
                Ok(opened)
            }
            Ok(Err(error)) => Err(error),
            Err(join) => Err(StoreError::GroupCommit(format!(
                "opening a write on the writer failed: {join}"
            ))),
        }
    }

    /// Opens the batch's transaction if it is not yet open, and the request's savepoint.
    async fn open(mut held: Held) -> Result<Held, StoreError> {
        if !held.began {
            sqlx::query("BEGIN IMMEDIATE").execute(held.conn()).await?;
            held.began = true;
        }
        sqlx::query(SAVEPOINT).execute(held.conn()).await?;
        held.in_savepoint = true;
        Ok(held)
    }

    /// Passes the connection to the next waiting request, or (none waiting,
    /// or the batch full) commits the batch and ends the session.
    async fn hand_on(self: &Arc<Self>, mut held: Held) {
        if held.batch.size() < MAX_BATCH {
            loop {
                let Some(next) = self.waiting().queue.pop_front() else {
                    break;
                };
                match next.send(Some(held)) {
                    Ok(()) => return,
                    // That waiter has gone (its request ended): the next one.
                    Err(returned) => match returned {
                        Some(back) => held = back,
                        None => return,
                    },
                }
            }
        }
        let Some(mut conn) = held.conn.take() else {
            return;
        };
        held.cache.clear();
        let committing = std::time::Instant::now();
        let result = if held.began {
            sqlx::query("COMMIT")
                .execute(&mut *conn)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else {
            Ok(())
        };
        if result.is_err() {
            // Leave the connection as the pool expects it: no transaction.
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        }
        tracing::debug!(
            batch = held.batch.size(),
            commit_us = committing.elapsed().as_micros(),
            "write batch committed"
        );
        held.batch.finish(result);
        drop(conn);
        self.end_session();
    }

    /// Marks the session ended and wakes every waiter: the first to look
    /// starts the next session, the others queue for it again.
    fn end_session(&self) {
        let mut waiting = self.waiting();
        waiting.active = false;
        for next in waiting.queue.drain(..) {
            let _ = next.send(None);
        }
    }

    /// Rolls an abandoned request back to its savepoint, then hands on.
    async fn abandon(self: Arc<Self>, mut held: Held) {
        // This task runs: a later drop may rescue the connection again.
        held.rescued = false;
        if held.in_savepoint {
            let rolled_back = sqlx::query(ROLLBACK_TO).execute(held.conn()).await;
            held.in_savepoint = false;
            if let Err(error) = rolled_back {
                // SQLite ended the whole transaction (an I/O error, a full
                // disk): the batch's earlier members are not durable, and
                // are told so; the next request opens a new transaction.
                tracing::warn!(%error, "a write batch was rolled back");
                let _ = sqlx::query("ROLLBACK").execute(held.conn()).await;
                held.batch.finish(Err(error.to_string()));
                held.batch = Batch::new();
                held.began = false;
            }
        }
        self.hand_on(held).await;
    }
}

/// Ends the session if its opener is dropped before it has the connection.
struct Claim(Option<Arc<Group>>);

impl Claim {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(group) = self.0.take() {
            group.end_session();
        }
    }
}

impl Held {
    /// The connection, for the request's statements.
    pub(super) fn conn(&mut self) -> &mut sqlx::SqliteConnection {
        self.conn_and_cache().0
    }

    /// The connection and the statements the session prepared on it, for the
    /// request's queued statements (`direct::run`).
    pub(super) fn conn_and_cache(
        &mut self,
    ) -> (&mut sqlx::SqliteConnection, &mut super::direct::Cache) {
        match self.conn.as_mut() {
            Some(conn) => (conn, &mut self.cache),
            // Taken only when the connection goes back to the pool, by
            // `Group::hand_on`, which owns (and then drops) this `Held`.
            None => unreachable!("a held connection is held until it is handed back"),
        }
    }

    /// Keeps the request's changes in the batch and returns once the batch
    /// has committed (durable), or with the error that stopped it. Dropped
    /// or failed before its `RELEASE`, the request is rolled back alone.
    pub(super) async fn commit(self) -> Result<(), StoreError> {
        let mut done = self.batch.done.subscribe();
        let (waited, held_for, open_took) = (self.waited, self.since.elapsed(), self.open_took);
        let releasing = std::time::Instant::now();
        // `RELEASE` and the hand-on run to their end in a task of their own, whatever
        // happens to this future: dropped between `RELEASE` and `in_savepoint = false`,
        // the rescue's `ROLLBACK TO` found no savepoint and rolled the whole batch
        // back, failing every other request in it. On an error the `Held` is dropped
        // in the task, which rolls the request back alone.
        let group = Arc::clone(&self.group);
        let released = tokio::spawn(async move {
            let mut held = self;
            sqlx::query(RELEASE).execute(held.conn()).await?;
            held.in_savepoint = false;
            // From here the request's changes are the batch's.
            group.hand_on(held).await;
            Ok::<(), sqlx::Error>(())
        })
        .await;
        match released {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error.into()),
            Err(join) => {
                return Err(StoreError::GroupCommit(format!(
                    "releasing a write on the writer failed: {join}"
                )));
            }
        }
        let released_after = releasing.elapsed();
        let result = match done.wait_for(Option::is_some).await {
            Ok(result) => result.clone(),
            Err(_) => None,
        };
        tracing::debug!(
            waited_us = waited.as_micros(),
            held_us = held_for.as_micros(),
            open_us = open_took.as_micros(),
            release_us = released_after.as_micros(),
            durable_after_us = releasing.elapsed().as_micros(),
            "write committed"
        );
        match result {
            Some(Ok(())) => Ok(()),
            Some(Err(reason)) => Err(StoreError::GroupCommit(reason)),
            None => Err(StoreError::GroupCommit(
                "the batch ended without a result".into(),
            )),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if !self.rescued => {
                let rescued = Held {
                    conn: Some(conn),
                    cache: std::mem::take(&mut self.cache),
                    group: Arc::clone(&self.group),
                    batch: Arc::clone(&self.batch),
                    began: self.began,
                    in_savepoint: self.in_savepoint,
                    rescued: true,
                    since: self.since,
                    waited: self.waited,
                    open_took: self.open_took,
                };
                let group = Arc::clone(&self.group);
                runtime.spawn(async move { group.abandon(rescued).await });
            }
            // No runtime, or one shutting down (it dropped the rescue task
            // unrun): the connection closes with its transaction uncommitted,
            // which SQLite rolls back, and the session ends.
            _ => {
                // Finalized first: SQLite will not close a connection with statements.
                self.cache.clear();
                conn.close_on_drop();
                self.group.end_session();
            }
        }
    }
}
