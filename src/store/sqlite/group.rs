//! Group commit on SQLite's single writer connection: many requests'
//! transactions share one SQLite transaction and one fsync.
//!
//! A *session* holds the writer connection with one SQLite transaction open
//! (`BEGIN IMMEDIATE`). Each request's [`super::Tx`] is a `SAVEPOINT` in it:
//! its commit is `RELEASE`, after which it hands the connection straight to
//! the next request waiting to write (not back to the pool), and then waits
//! for the `COMMIT` that holds its changes; it answers only after that.
//!
//! The savepoint (and the batch's `BEGIN`, with its first writer) opens with
//! the request's first write, in the same hand-off of the connection's handle
//! as its queued statements ([`Held::write`]), and its `RELEASE` runs after the
//! last of them ([`Held::finish`]). Every statement through sqlx is a hand-off
//! to the connection's worker thread and back, and with the writer held each
//! waits for a busy core. So the session keeps the connection's handle from
//! one run to the next ([`Held::lock`]) and gives it back only for a statement
//! through sqlx ([`Held::conn`]) or at its end; a new referral's identifier
//! lookup reads on it ([`Held::read_text`]), so its whole turn is no hand-off
//! at all (the session's first takes the handle once), where it was two, and
//! before that four. Reads before the first write need no savepoint (they
//! change nothing to roll back).
//!
//! When no request is waiting, or the batch is full, the request in hand commits
//! the batch, returns the connection to the pool (where the few writes that
//! use it directly, operator re-queues, take their turn before the next
//! session opens) and tells every member the result once it is durable.
//!
//! With durable commits (`synchronous = FULL`, the default) the batch's fsync
//! runs *after* the writer is handed on: a session runs its transaction with
//! `synchronous = NORMAL` (the `COMMIT` writes the WAL frames, no fsync), and
//! once the connection is back in the pool, [`Durability::sync`] syncs the WAL
//! file on a blocking thread while the next batch already writes. Members are
//! told their result only after that sync, so a 2xx still means on disk; the
//! disk's sync time no longer holds the only writer. Writes that use the
//! writer connection outside a session (operator re-queues) run with
//! `synchronous = FULL`, restored before the connection leaves a session.
//! Readers may see a batch in the milliseconds between its `COMMIT` and its
//! sync; a power cut there loses what they saw, as it loses what no one was
//! told was stored. The `_lastUpdated` pull never serves it (its
//! horizon waits for the commit's answer), and delivery's claim is itself a
//! batch member, answered after a sync that covers every earlier frame, so
//! nothing is sent from an unsynced commit.
//!
//! A request whose whole write is one run of statements (a new referral, a
//! transaction Bundle, an audit row: every read first, then every write with
//! no await between them) needs no savepoint, and has none while every change
//! in the batch's transaction came from such runs: the batch keeps their
//! statements ([`Replay`]), and should one of them fail midway, the batch's
//! transaction is rolled back and the others' statements run again, in order,
//! on the state they first ran on, with the same values. A savepoint copies
//! every page a request changes into its journal before changing it, so that
//! its `ROLLBACK TO` can restore it: about a tenth of a new referral's CPU,
//! spent for a failure that, for these runs, a full disk or a defect causes.
//! A member that writes under a savepoint (its writes and reads interleave)
//! ends the batch's replay, and the members after it take savepoints too.
//!
//! A request that fails or is abandoned (its `Tx` dropped without commit)
//! is rolled back to its savepoint, or (run without one) undone by the replay;
//! the others in the batch are untouched.
//! Should SQLite have rolled back the whole transaction (an I/O error, a full
//! disk), every member of the batch is told it failed: none of them has been
//! answered yet, so nothing acknowledged is lost.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::Sqlite;
use sqlx::SqlitePool;
use sqlx::pool::PoolConnection;
use tokio::sync::{oneshot, watch};

use super::direct::Locked;
use crate::store::StoreError;
use crate::store::deferred::Statement;

/// Most requests committed together: bounds how long the first of a batch
/// waits for the last (each holds the writer for its own statements).
const MAX_BATCH: usize = 64;

/// The savepoint of the request in hand (one at a time on the connection).
const SAVEPOINT: &str = "SAVEPOINT sprig_request";
const RELEASE: &str = "RELEASE sprig_request";
const ROLLBACK_TO: &str = "ROLLBACK TO sprig_request; RELEASE sprig_request";
/// The batch's transaction, opened by its first member that writes.
const BEGIN: &str = "BEGIN IMMEDIATE";
/// Undoes the batch's transaction, for a run without a savepoint that failed midway
/// (or a `COMMIT` that failed).
const ROLLBACK: &str = "ROLLBACK";
/// Makes the batch's transaction durable (its WAL frames written; synced after).
const COMMIT: &str = "COMMIT";

/// Most bytes of statements (SQL text and values) a batch keeps to replay: past it a
/// member takes a savepoint, so a large transaction Bundle's rows are not held twice.
const MAX_REPLAY_BYTES: usize = 4 * 1024 * 1024;

/// A session's own commits write the WAL without syncing it ([`Durability`]).
const RELAX: &str = "PRAGMA synchronous = NORMAL";
/// The writer's setting outside a session: every commit synced.
const RESTORE: &str = "PRAGMA synchronous = FULL";

/// How a batch's commit is made durable when the writer no longer waits for it:
/// the WAL file synced (`fdatasync`) after the `COMMIT` wrote its frames.
#[derive(Clone)]
pub(super) struct Durability {
    wal: PathBuf,
    sync: Arc<super::SyncFile>,
}

impl std::fmt::Debug for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durability")
            .field("wal", &self.wal)
            .finish()
    }
}

impl Durability {
    /// Syncs the write-ahead log of the database file `database` (its `-wal` file),
    /// opened for each sync, unlike the database file's descriptor (`DatabaseSync`):
    /// SQLite removes the `-wal` file when its last connection closes and makes it anew,
    /// so a descriptor held across that would sync a file no longer there. Closing it
    /// drops no lock: SQLite takes none on the `-wal` file.
    pub(super) fn of_database(database: &Path) -> Self {
        Self {
            wal: super::companion_file(database, "-wal"),
            sync: Arc::new(|wal| std::fs::File::open(wal)?.sync_data()),
        }
    }

    /// A sync of the caller's own, for tests that hold a batch between its
    /// `COMMIT` and its sync.
    #[cfg(test)]
    pub(super) fn with_sync(
        database: &Path,
        sync: impl Fn(&Path) -> std::io::Result<()> + Send + Sync + 'static,
    ) -> Self {
        Self {
            sync: Arc::new(sync),
            ..Self::of_database(database)
        }
    }

    /// Every frame written to the WAL before the call is on disk when it returns
    /// `Ok` (an fsync covers the file, whichever descriptor asks).
    async fn sync(&self) -> Result<(), String> {
        let (wal, sync) = (self.wal.clone(), Arc::clone(&self.sync));
        match tokio::task::spawn_blocking(move || sync(&wal)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(format!(
                "the batch committed but syncing the write-ahead log failed ({error}); \
                 whether it survives a power cut is unknown"
            )),
            Err(join) => Err(format!(
                "syncing the write-ahead log did not finish: {join}"
            )),
        }
    }
}

/// The writer connection's sessions and the requests waiting for it.
#[derive(Debug)]
pub(super) struct Group {
    pool: SqlitePool,
    /// How long a request waits for its turn before it is answered busy.
    busy_timeout: Duration,
    /// `Some` with durable commits: the batch's fsync, run off the writer.
    durability: Option<Durability>,
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
    /// `conn`'s handle, taken from sqlx's worker by a run and kept for the session's
    /// next (`Held::lock`): given back before anything uses `conn` through sqlx.
    kept: Option<Locked>,
    group: Arc<Group>,
    /// The batch its open transaction belongs to.
    batch: Arc<Batch>,
    /// Whether `BEGIN` has run (false: the next holder opens the transaction).
    began: bool,
    /// Whether the holder's savepoint is open.
    in_savepoint: bool,
    /// `Some` while every change in the batch's transaction came from a run without
    /// a savepoint: those runs' statements, to run again should one fail midway.
    replay: Option<Replay>,
    /// Already handed to a rescue task: dropped again, that task never ran
    /// (the runtime is shutting down), so it must not spawn another.
    rescued: bool,
    /// When the request in hand got the connection, and how long it waited for
    /// it: the writer's timings, logged at debug (`sprig::store::sqlite::group`).
    since: std::time::Instant,
    waited: Duration,
}

impl Group {
    pub(super) fn new(
        pool: SqlitePool,
        busy_timeout: Duration,
        durability: Option<Durability>,
    ) -> Arc<Self> {
        Arc::new(Self {
            pool,
            busy_timeout,
            durability,
            waiting: Mutex::new(Waiting::default()),
        })
    }

    /// How many requests wait for the writer (a test's way to line up a batch).
    #[cfg(test)]
    pub(super) fn waiting_requests(&self) -> usize {
        self.waiting().queue.len()
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
                        kept: None,
                        group: Arc::clone(self),
                        batch: Batch::new(),
                        began: false,
                        in_savepoint: false,
                        replay: Some(Replay::default()),
                        rescued: false,
                        since: asked,
                        waited: Duration::ZERO,
                    };
                }
            }
        };
        held.since = std::time::Instant::now();
        held.waited = held.since.saturating_duration_since(asked);
        held.batch.join();
        // Nothing runs yet: the savepoint (and the batch's `BEGIN`) open with the
        // request's first write, in the same hand-off as its statements (`Held::write`).
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
        let committing = std::time::Instant::now();
        let (result, restored) = held.end_transaction(self.durability.is_some()).await;
        let committed_us = committing.elapsed().as_micros();
        // Finalized while the handle is held, then the handle given back, before the
        // connection goes back to the pool.
        held.cache.clear();
        held.kept = None;
        let Some(mut conn) = held.conn.take() else {
            return;
        };
        if !restored {
            // Never back in the pool unsynced (or with a transaction open): the writes
            // outside a session rely on it.
            conn.close_on_drop();
        }
        drop(conn);
        // The next batch may write from here, while this one's sync runs.
        self.end_session();
        let syncing = std::time::Instant::now();
        let result = match (result, &self.durability) {
            (Ok(()), Some(durability)) if held.began => durability.sync().await,
            (result, _) => result,
        };
        tracing::debug!(
            batch = held.batch.size(),
            commit_us = committed_us,
            sync_us = syncing.elapsed().as_micros(),
            "write batch committed"
        );
        held.batch.finish(result);
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
                held.replay = Some(Replay::default());
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
    /// The connection, for reads: the savepoint may not be open yet, so a statement
    /// that writes must go through [`Held::write`] first.
    pub(super) fn conn(&mut self) -> &mut sqlx::SqliteConnection {
        // sqlx's worker runs what comes next, and needs the handle for it.
        self.kept = None;
        match self.conn.as_mut() {
            Some(conn) => conn,
            // Taken only when the connection goes back to the pool, by
            // `Group::hand_on`, which owns (and then drops) this `Held`.
            None => unreachable!("a held connection is held until it is handed back"),
        }
    }

    /// Runs `statements` (the request's queued writes) in its savepoint, opening the
    /// savepoint first if it is not open: a write of its own through sqlx follows on
    /// [`Held::conn`], a read on [`Held::read_text`] keeps the session's handle.
    pub(super) async fn write(&mut self, statements: Vec<Statement>) -> Result<(), StoreError> {
        self.run(statements, Open::Always, Then::Keep).await
    }

    /// Runs the last of the request's statements and releases its savepoint (its
    /// changes are the batch's from here): one hand-off for both. Nothing to run
    /// and nothing written, nothing happens.
    pub(super) async fn finish(&mut self, statements: Vec<Statement>) -> Result<(), StoreError> {
        self.run(statements, Open::IfWriting, Then::Release).await
    }

    /// Runs, with one hand-off of the connection's handle from sqlx's worker: the
    /// batch's `BEGIN` and the request's `SAVEPOINT` where needed, `statements`, and
    /// with `Then::Release` the `RELEASE`. Each flag (`began`, `in_savepoint`) is set
    /// right after its statement succeeds, with no await between (the only await is
    /// taking the handle, before anything runs), so a caller dropped at any point
    /// leaves them saying what the connection holds, and the rescue (`Drop`) rolls
    /// back exactly this request.
    ///
    /// A run that would open the savepoint and release it again (the request's whole
    /// write) runs without one while the batch can replay ([`Held::run_alone`]).
    async fn run(
        &mut self,
        statements: Vec<Statement>,
        open: Open,
        then: Then,
    ) -> Result<(), StoreError> {
        let opens = !self.in_savepoint && (open == Open::Always || !statements.is_empty());
        let releases = then == Then::Release && (self.in_savepoint || opens);
        if !opens && !releases && statements.is_empty() {
            return Ok(());
        }
        let alone = opens
            && releases
            && self
                .replay
                .as_ref()
                .is_some_and(|replay| replay.has_room_for(&statements));
        let asked = std::time::Instant::now();
        let mut locked = self.lock().await?;
        let had = std::time::Instant::now();
        let ran = self.run_locked(&mut locked, statements, opens, releases, alone);
        tracing::debug!(
            statements = locked.take_count(),
            lock_us = had.saturating_duration_since(asked).as_micros(),
            run_us = had.elapsed().as_micros(),
            "queued statements ran"
        );
        // Kept for the session's next run (usually the next request's): sqlx's worker
        // would only be woken to hand it back.
        self.kept = Some(locked);
        ran
    }

    /// The connection's handle: the one the session kept from its last run, or taken
    /// from sqlx's worker (a hand-off to that thread and back).
    async fn lock(&mut self) -> Result<Locked, StoreError> {
        if let Some(kept) = self.kept.take() {
            return Ok(kept);
        }
        let Some(conn) = self.conn.as_mut() else {
            unreachable!("a held connection is held until it is handed back");
        };
        // SAFETY: the handle lives only in `self.kept` (or this call's caller, until it
        // puts it there), which is emptied before `conn` is used through sqlx
        // (`Held::conn`), goes back to the pool (`Group::hand_on`) or is closed (`Drop`).
        unsafe { Locked::take(conn) }.await
    }

    /// Ends the session's transaction on its handle (no hand-off to sqlx's worker, which
    /// on a busy machine may wait milliseconds for a core while every writer waits):
    /// `COMMIT` if it began, `ROLLBACK` should that fail, then `synchronous = FULL`
    /// again where sessions relax it (harmless where a session failed before). Returns
    /// the commit's result, and whether the connection is as the pool expects it.
    async fn end_transaction(&mut self, relaxed: bool) -> (Result<(), String>, bool) {
        let mut locked = match self.lock().await {
            Ok(locked) => locked,
            Err(error) => return (Err(error.to_string()), false),
        };
        let result = if self.began {
            locked
                .run(&mut self.cache, &Statement::new(COMMIT))
                .map_err(|e| e.to_string())
        } else {
            Ok(())
        };
        let mut restored = true;
        if result.is_err()
            && locked
                .run(&mut self.cache, &Statement::new(ROLLBACK))
                .is_err()
        {
            restored = false;
        }
        if relaxed
            && locked
                .run(&mut self.cache, &Statement::new(RESTORE))
                .is_err()
        {
            restored = false;
        }
        self.kept = Some(locked);
        (result, restored)
    }

    /// Reads one text value inside the request's transaction (the queued statements
    /// have run: `Tx::read_text`), on the session's handle, without a hand-off to
    /// sqlx's worker when the handle is already held.
    pub(super) async fn read_text(
        &mut self,
        statement: &Statement,
    ) -> Result<Option<String>, StoreError> {
        let mut locked = self.lock().await?;
        let read = locked.first_text(&mut self.cache, statement);
        locked.take_count();
        self.kept = Some(locked);
        read
    }

    /// [`Held::run`]'s statements, on the handle in hand.
    fn run_locked(
        &mut self,
        locked: &mut Locked,
        statements: Vec<Statement>,
        opens: bool,
        releases: bool,
        alone: bool,
    ) -> Result<(), StoreError> {
        let relax = self.group.durability.is_some();
        if opens && !self.began {
            // Outside a transaction: SQLite refuses to change it inside one. (Set
            // again after a batch SQLite rolled back whole: harmless, and rare.)
            if relax {
                locked.run(&mut self.cache, &Statement::new(RELAX))?;
            }
            locked.run(&mut self.cache, &Statement::new(BEGIN))?;
            self.began = true;
        }
        if alone {
            return self.run_alone(locked, statements);
        }
        if opens {
            locked.run(&mut self.cache, &Statement::new(SAVEPOINT))?;
            self.in_savepoint = true;
            // Its changes are undone only by its savepoint: a later failure without
            // one could no longer be undone by replaying the others.
            self.replay = None;
        }
        for statement in &statements {
            locked.run(&mut self.cache, statement)?;
        }
        if releases {
            locked.run(&mut self.cache, &Statement::new(RELEASE))?;
            self.in_savepoint = false;
        }
        Ok(())
    }

    /// Runs a request's whole write in the batch's open transaction without a
    /// savepoint, and keeps its statements for the batch's replay. Should one fail,
    /// the transaction is rolled back and the batch's earlier runs replayed, so the
    /// batch holds what it held before this request, and the request's error is
    /// returned. Should the replay itself fail (a full disk), the batch's members
    /// are told their batch failed and the next request opens a new batch.
    fn run_alone(
        &mut self,
        locked: &mut Locked,
        statements: Vec<Statement>,
    ) -> Result<(), StoreError> {
        let Self {
            cache,
            replay,
            began,
            batch,
            ..
        } = self;
        let failed = match statements
            .iter()
            .try_for_each(|statement| locked.run(cache, statement))
        {
            Ok(()) => {
                if let Some(replay) = replay.as_mut() {
                    replay.keep(statements);
                }
                return Ok(());
            }
            Err(failed) => failed,
        };
        // SQLite may have ended the transaction itself (an I/O error, a full disk):
        // the `ROLLBACK` then fails, with nothing left to undo.
        let _ = locked.run(cache, &Statement::new(ROLLBACK));
        *began = false;
        let earlier = replay.take().unwrap_or_default();
        if earlier.statements.is_empty() {
            *replay = Some(earlier);
            return Err(failed);
        }
        let replayed = locked.run(cache, &Statement::new(BEGIN)).and_then(|()| {
            earlier
                .statements
                .iter()
                .try_for_each(|statement| locked.run(cache, statement))
        });
        match replayed {
            Ok(()) => {
                tracing::debug!(
                    statements = earlier.statements.len(),
                    "a write failed midway; the batch's earlier writes were replayed"
                );
                *began = true;
                *replay = Some(earlier);
                Err(failed)
            }
            Err(again) => {
                let _ = locked.run(cache, &Statement::new(ROLLBACK));
                tracing::warn!(error = %again, "a write batch was rolled back");
                batch.finish(Err(format!(
                    "a write in the same batch failed, and replaying this one after it \
                     failed too: {again}"
                )));
                *batch = Batch::new();
                *replay = Some(Replay::default());
                Err(failed)
            }
        }
    }

    /// Keeps the request's changes in the batch and returns once the batch
    /// has committed (durable), or with the error that stopped it. Dropped
    /// or failed before its `RELEASE`, the request is rolled back alone.
    pub(super) async fn commit(mut self) -> Result<(), StoreError> {
        let mut done = self.batch.done.subscribe();
        let releasing = std::time::Instant::now();
        // Usually released already, with the request's last statements (`finish`).
        self.finish(Vec::new()).await?;
        let (waited, held_for) = (self.waited, self.since.elapsed());
        // The hand-on runs to its end in a task of its own, whatever happens to this
        // future: dropped mid-`COMMIT`, the batch's members would never be told.
        let group = Arc::clone(&self.group);
        if let Err(join) = tokio::spawn(async move { group.hand_on(self).await }).await {
            return Err(StoreError::GroupCommit(format!(
                "handing on the writer failed: {join}"
            )));
        }
        let released_after = releasing.elapsed();
        let result = match done.wait_for(Option::is_some).await {
            Ok(result) => result.clone(),
            Err(_) => None,
        };
        tracing::debug!(
            waited_us = waited.as_micros(),
            held_us = held_for.as_micros(),
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

/// The statements of a batch's runs without a savepoint, in the order they ran.
#[derive(Debug, Default)]
struct Replay {
    statements: Vec<Statement>,
    bytes: usize,
}

impl Replay {
    fn has_room_for(&self, statements: &[Statement]) -> bool {
        self.bytes.saturating_add(size(statements)) <= MAX_REPLAY_BYTES
    }

    fn keep(&mut self, statements: Vec<Statement>) {
        self.bytes = self.bytes.saturating_add(size(&statements));
        self.statements.extend(statements);
    }
}

fn size(statements: &[Statement]) -> usize {
    statements.iter().map(Statement::size).sum()
}

/// Whether [`Held::run`] opens the savepoint when it has no statement to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    /// Yes: the caller writes through the connection next.
    Always,
    /// Only to run statements.
    IfWriting,
}

/// What [`Held::run`] does with the savepoint after the statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Leaves it open: more of the request follows.
    Keep,
    /// Releases it: the request is done.
    Release,
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
                    // The handle points into the connection's shared state, not into
                    // this `Held`: it moves with the connection.
                    kept: self.kept.take(),
                    group: Arc::clone(&self.group),
                    batch: Arc::clone(&self.batch),
                    began: self.began,
                    in_savepoint: self.in_savepoint,
                    replay: self.replay.take(),
                    rescued: true,
                    since: self.since,
                    waited: self.waited,
                };
                let group = Arc::clone(&self.group);
                runtime.spawn(async move { group.abandon(rescued).await });
            }
            // No runtime, or one shutting down (it dropped the rescue task
            // unrun): the connection closes with its transaction uncommitted,
            // which SQLite rolls back, and the session ends.
            _ => {
                // Finalized first: SQLite will not close a connection with statements.
                // Then the handle given back, before the connection closes.
                self.cache.clear();
                self.kept = None;
                conn.close_on_drop();
                self.group.end_session();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;

    use sqlx::SqlitePool;
    use sqlx::sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
    };

    use super::{Durability, Group};
    use crate::store::StoreError;
    use crate::store::deferred::Statement;

    /// A sync that blocks until the test opens its gate, counting its calls.
    #[derive(Default)]
    struct Gate {
        open: Mutex<bool>,
        opened: Condvar,
        calls: AtomicUsize,
        fail: std::sync::atomic::AtomicBool,
    }

    impl Gate {
        fn sync(&self) -> std::io::Result<()> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            while !*open {
                open = self.opened.wait(open).unwrap_or_else(|e| e.into_inner());
            }
            if self.fail.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("the disk went away"));
            }
            Ok(())
        }

        fn release(&self) {
            *self.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
            self.opened.notify_all();
        }

        async fn called(&self, times: usize) {
            for _ in 0..500 {
                if self.calls.load(Ordering::SeqCst) >= times {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the sync was not called {times} times");
        }
    }

    /// Opens the gate when the test ends, passed or panicked: the runtime's shutdown
    /// waits for the blocking sync, which would otherwise wait for ever.
    struct OpenAtTheEnd(Arc<Gate>);

    impl Drop for OpenAtTheEnd {
        fn drop(&mut self) {
            self.0.release();
        }
    }

    async fn writer(dir: &std::path::Path) -> (SqlitePool, SqlitePool) {
        let options = SqliteConnectOptions::new()
            .filename(dir.join("group.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .expect("writer");
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&writer)
            .await
            .expect("table");
        let reader = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.read_only(true))
            .await
            .expect("reader");
        (writer, reader)
    }

    fn gated(dir: &std::path::Path, gate: &Arc<Gate>) -> Durability {
        let gate = Arc::clone(gate);
        Durability::with_sync(&dir.join("group.db"), move |_| gate.sync())
    }

    async fn insert(group: &Arc<Group>, x: i64) -> Result<(), StoreError> {
        let mut held = group.enter().await?;
        sqlx::query("INSERT INTO t (x) VALUES ($1)")
            .bind(x)
            .execute({
                held.write(Vec::new()).await?;
                held.conn()
            })
            .await?;
        held.commit().await
    }

    async fn rows(reader: &SqlitePool) -> i64 {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM t")
            .fetch_one(reader)
            .await
            .expect("count");
        n
    }

    /// A batch is answered only after its WAL sync, and the writer is not held for
    /// that sync: the next batch writes and commits meanwhile. Synced before the
    /// session ends (as SQLite's own `synchronous = FULL` does inside `COMMIT`),
    /// the second write could not begin until the first sync finished.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_is_answered_after_its_sync_while_the_next_batch_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (pool, reader) = writer(dir.path()).await;
        let gate = Arc::new(Gate::default());
        let _open_at_the_end = OpenAtTheEnd(Arc::clone(&gate));
        let group = Group::new(
            pool.clone(),
            Duration::from_secs(5),
            Some(gated(dir.path(), &gate)),
        );

        let first = tokio::spawn({
            let group = Arc::clone(&group);
            async move { insert(&group, 1).await }
        });
        gate.called(1).await;
        assert_eq!(rows(&reader).await, 1, "committed, visible to readers");
        let second = tokio::spawn({
            let group = Arc::clone(&group);
            async move { insert(&group, 2).await }
        });
        // The second batch began, wrote and committed while the first one's sync waits.
        gate.called(2).await;
        assert_eq!(rows(&reader).await, 2);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!first.is_finished(), "answered before its sync");
        assert!(!second.is_finished(), "answered before its sync");

        gate.release();
        first.await.expect("task").expect("first write");
        second.await.expect("task").expect("second write");

        // Outside a session the writer syncs its own commits again.
        let (level,): (i64,) = sqlx::query_as("PRAGMA synchronous")
            .fetch_one(&pool)
            .await
            .expect("pragma");
        assert_eq!(level, 2, "synchronous = FULL restored");
    }

    /// A sync that fails fails its batch's members (their answer would otherwise
    /// claim a durability nobody saw), and the writer goes on working.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_sync_fails_the_batch_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (pool, reader) = writer(dir.path()).await;
        let gate = Arc::new(Gate::default());
        gate.fail.store(true, Ordering::SeqCst);
        gate.release();
        let group = Group::new(pool, Duration::from_secs(5), Some(gated(dir.path(), &gate)));
        match insert(&group, 1).await {
            Err(StoreError::GroupCommit(reason)) => {
                assert!(
                    reason.contains("syncing the write-ahead log failed"),
                    "{reason}"
                );
            }
            other => panic!("expected the batch to fail, got {other:?}"),
        }
        gate.fail.store(false, Ordering::SeqCst);
        insert(&group, 2).await.expect("the next write");
        assert_eq!(rows(&reader).await, 2);
    }

    fn insert_into(table: &str, x: i64) -> Statement {
        Statement::new(format!("INSERT INTO {table} (x) VALUES ($1)")).bind(x)
    }

    async fn column(reader: &SqlitePool, table: &'static str) -> Vec<i64> {
        let sql = match table {
            "t" => "SELECT x FROM t ORDER BY x",
            _ => "SELECT x FROM u ORDER BY x",
        };
        sqlx::query_scalar(sql)
            .fetch_all(reader)
            .await
            .expect("rows")
    }

    /// Waits until `n` requests wait for the writer.
    async fn waiters(group: &Arc<Group>, n: usize) {
        for _ in 0..500 {
            if group.waiting().queue.len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{n} requests never waited for the writer");
    }

    /// A request's whole write runs without a savepoint; one that fails midway (its
    /// first row in, its second refused) leaves its batch as it was: the member
    /// before it, whose changes the rollback undid and the replay redid, and the
    /// member after it commit, and nothing of the failed one does. Also when the
    /// member before it wrote under a savepoint (reads between its writes), which
    /// the batch cannot replay, so the failed one took a savepoint of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_fails_midway_leaves_the_rest_of_its_batch_to_commit() {
        for first_under_savepoint in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let (pool, reader) = writer(dir.path()).await;
            sqlx::query("CREATE TABLE u (x INTEGER PRIMARY KEY)")
                .execute(&pool)
                .await
                .expect("table");
            let group = Group::new(pool, Duration::from_secs(5), None);

            let mut first = group.enter().await.expect("first");
            let second = tokio::spawn({
                let group = Arc::clone(&group);
                async move {
                    let mut held = group.enter().await?;
                    // `u` holds 1 already: the second row is refused after the first went in.
                    held.finish(vec![insert_into("t", 2), insert_into("u", 1)])
                        .await
                }
            });
            waiters(&group, 1).await;
            let third = tokio::spawn({
                let group = Arc::clone(&group);
                async move {
                    let mut held = group.enter().await?;
                    held.finish(vec![insert_into("t", 3), insert_into("u", 3)])
                        .await?;
                    held.commit().await
                }
            });
            waiters(&group, 2).await;

            if first_under_savepoint {
                first.write(vec![insert_into("t", 1)]).await.expect("write");
                sqlx::query("INSERT INTO u (x) VALUES (1)")
                    .execute(first.conn())
                    .await
                    .expect("insert");
            } else {
                first
                    .finish(vec![insert_into("t", 1), insert_into("u", 1)])
                    .await
                    .expect("first's write");
            }
            let first = tokio::spawn(first.commit());

            match second.await.expect("task") {
                Err(StoreError::Database(sqlx::Error::Database(error))) => {
                    assert!(error.message().contains("UNIQUE"), "{error}");
                }
                other => panic!("expected the second write to fail, got {other:?}"),
            }
            third.await.expect("task").expect("the third write");
            first.await.expect("task").expect("the first write");
            assert_eq!(
                column(&reader, "t").await,
                [1, 3],
                "{first_under_savepoint}"
            );
            assert_eq!(
                column(&reader, "u").await,
                [1, 3],
                "{first_under_savepoint}"
            );
        }
    }

    /// The real sync finds the database's WAL: a wrong path would fail every write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_real_sync_finds_the_write_ahead_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (pool, reader) = writer(dir.path()).await;
        let durability = Durability::of_database(&dir.path().join("group.db"));
        let group = Group::new(pool, Duration::from_secs(5), Some(durability));
        for x in 0..3 {
            insert(&group, x).await.expect("write");
        }
        assert_eq!(rows(&reader).await, 3);
    }
}
