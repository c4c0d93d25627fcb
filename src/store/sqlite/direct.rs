//! Runs a write transaction's queued statements ([`Statement`]) in one call on
//! the writer connection, through SQLite's C API on the connection sqlx opened.
//!
//! Each statement sent through sqlx is a hand-off to the connection's worker
//! thread and back; with the single writer held, those hand-offs (about 20 per
//! new referral, each waiting for a thread to be scheduled on a machine whose
//! cores are busy validating other requests) were most of a create's writer
//! time. Here the caller takes the connection from its worker once
//! ([`sqlx::SqliteConnection::lock_handle`]) and runs every statement itself.
//! The group-commit session keeps the handle from one run to the next, and the
//! one read nearly every write makes first (is this referral's identifier held
//! already?) runs on it too ([`Locked::first_text`]): a new referral's whole
//! turn at the writer then wakes sqlx's worker not at all, where it woke it twice
//! (the lookup, then taking the handle), each a wait for a busy core.
//!
//! Statements stay prepared in a [`Cache`] for the rest of the group-commit
//! session (the batch), so each is compiled once per batch, not once per request.
//!
//! [`Readers`] do the same for the short reads a new referral makes before its
//! write, on read-only connections taken from their workers for good.
//!
//! Safety: the handle is used only while the lock is held, so sqlx's worker
//! never runs on it meanwhile; the lock is given back before anything goes through
//! sqlx on the connection, and before the connection leaves the session; a cached statement is finalized when its cache is
//! cleared or dropped, which the session does before the connection goes back to
//! the pool (sqlx's `sqlite3_close` refuses, and panics, while one is left).

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int};
use std::ptr::{self, NonNull};

use libsqlite3_sys as ffi;
use sqlx::SqliteConnection;
use sqlx::error::{DatabaseError, ErrorKind};

use crate::store::StoreError;
use crate::store::deferred::{Arg, Statement};

/// Most statements a session keeps prepared (a Bundle's multi-row INSERTs differ
/// in their row counts); past it, a statement is finalized after its one use.
const CACHED_STATEMENTS: usize = 128;

/// The writer connection's handle, taken from sqlx's worker thread
/// ([`sqlx::SqliteConnection::lock_handle`]) until dropped: statements run on it here,
/// on the caller's thread, one after another with no await between them. A session
/// keeps it from one run to the next (`group::Held`), so only a statement through sqlx
/// gives it back.
pub(super) struct Locked {
    /// Borrows the mutex in the connection's shared state, which lives on the heap
    /// (an `Arc` the connection and its worker thread share), not the connection
    /// itself: see [`Locked::take`] for why `'static` holds.
    handle: sqlx::sqlite::LockedSqliteHandle<'static>,
    /// Statements run since [`Locked::take_count`] last asked.
    ran: usize,
}

impl std::fmt::Debug for Locked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locked").finish_non_exhaustive()
    }
}

impl Locked {
    /// Takes `conn`'s handle from its worker (one hand-off to that thread and back).
    ///
    /// # Safety
    /// The caller drops the `Locked` before `conn` is used through sqlx (the worker
    /// would wait for the handle for ever), returned to its pool, or closed: the
    /// handle must not outlive the connection whose state it borrows.
    pub(super) async unsafe fn take(conn: &mut SqliteConnection) -> Result<Locked, StoreError> {
        let handle = conn.lock_handle().await?;
        // SAFETY: only the lifetime changes. The guard points into the connection's
        // shared state (`Arc<WorkerSharedState>`), whose address stays put when the
        // connection moves, and per this function's contract it is dropped while the
        // connection (and so that state) is alive.
        let handle = unsafe {
            std::mem::transmute::<
                sqlx::sqlite::LockedSqliteHandle<'_>,
                sqlx::sqlite::LockedSqliteHandle<'static>,
            >(handle)
        };
        Ok(Locked { handle, ran: 0 })
    }

    /// Runs one statement to its end; its rows, if any, are ignored. `cache` must
    /// belong to this connection (the session's).
    pub(super) fn run(
        &mut self,
        cache: &mut Cache,
        statement: &Statement,
    ) -> Result<(), StoreError> {
        self.ran += 1;
        let db = self.handle.as_raw_handle();
        // SAFETY: `db` is the open connection, held from its worker by `handle` for as
        // long as `self` lives; `cache` holds statements of this connection only.
        unsafe { with_statement(db, cache, statement, |stmt| step_to_end(db.as_ptr(), stmt)) }
    }

    /// How many statements ran since the last call (for the writer's timings).
    pub(super) fn take_count(&mut self) -> usize {
        std::mem::take(&mut self.ran)
    }

    /// Runs one query and returns its first row's first column as text (`None`: no
    /// row, or a NULL). `cache` must belong to this connection.
    pub(super) fn first_text(
        &mut self,
        cache: &mut Cache,
        statement: &Statement,
    ) -> Result<Option<String>, StoreError> {
        self.ran += 1;
        let db = self.handle.as_raw_handle();
        // SAFETY: as in `run`.
        unsafe { with_statement(db, cache, statement, |stmt| first_text(db.as_ptr(), stmt)) }
    }
}

/// The statements a session has prepared on the writer connection, by SQL text.
/// Cleared (finalized) before the connection returns to the pool.
#[derive(Default)]
pub(super) struct Cache {
    statements: HashMap<String, Prepared>,
}

impl Cache {
    /// Finalizes every statement.
    pub(super) fn clear(&mut self) {
        self.statements.clear();
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("statements", &self.statements.len())
            .finish()
    }
}

/// A prepared statement, finalized when dropped.
struct Prepared(NonNull<ffi::sqlite3_stmt>);

// SAFETY: a statement is used only by the holder of the writer connection (one task
// at a time, under `lock_handle`), and finalized by it; moving it between threads
// with the connection is what SQLite's multi-thread mode allows.
unsafe impl Send for Prepared {}

impl Drop for Prepared {
    fn drop(&mut self) {
        // SAFETY: prepared on a connection still open (caches are cleared before it
        // closes) and not in use; finalized once.
        unsafe {
            ffi::sqlite3_finalize(self.0.as_ptr());
        }
    }
}

/// Prepares `statement` (from `cache`, or into it), binds its values, and hands it to
/// `step`; then resets it and clears its values, whatever `step` did.
///
/// # Safety
/// `db` must be an open connection no other thread uses during the call, and
/// `cache` hold statements of `db` only.
unsafe fn with_statement<T: Default>(
    db: NonNull<ffi::sqlite3>,
    cache: &mut Cache,
    statement: &Statement,
    step: impl FnOnce(*mut ffi::sqlite3_stmt) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let db = db.as_ptr();
    // A statement the cache has no room for, finalized when this returns.
    let mut once = None;
    let stmt = match cache.statements.get(statement.sql.as_ref()) {
        Some(prepared) => prepared.0.as_ptr(),
        None => {
            // SAFETY: per this function's contract.
            let Some(prepared) = (unsafe { prepare(db, &statement.sql) })? else {
                // Only whitespace or a comment: nothing to run.
                return Ok(T::default());
            };
            let stmt = prepared.0.as_ptr();
            if cache.statements.len() < CACHED_STATEMENTS {
                cache
                    .statements
                    .insert(statement.sql.clone().into_owned(), prepared);
            } else {
                once = Some(prepared);
            }
            stmt
        }
    };
    // SAFETY: `stmt` is a live statement of `db` (cached, or held by `once`).
    let ran = unsafe { bind_values(db, stmt, statement) }.and_then(|()| step(stmt));
    // Ready for its next use, its values released: a statement left mid-step, or
    // holding a failed step's error, would keep the transaction from committing.
    // SAFETY: `stmt` is live.
    unsafe {
        ffi::sqlite3_reset(stmt);
        ffi::sqlite3_clear_bindings(stmt);
    }
    drop(once);
    ran
}

/// Compiles `sql`; `None` when it holds no statement.
///
/// # Safety
/// `db` must be an open connection no other thread uses during the call.
unsafe fn prepare(db: *mut ffi::sqlite3, sql: &str) -> Result<Option<Prepared>, StoreError> {
    let sql = numbered_placeholders(sql);
    let text = sql.as_bytes();
    let length = c_int::try_from(text.len())
        .map_err(|_| direct_error(ffi::SQLITE_TOOBIG, "statement text too long".into()))?;
    let mut raw = ptr::null_mut();
    // SAFETY: `text` is valid for `length` bytes; `raw` receives the statement.
    let rc = unsafe {
        ffi::sqlite3_prepare_v3(
            db,
            text.as_ptr().cast::<c_char>(),
            length,
            ffi::SQLITE_PREPARE_PERSISTENT,
            &mut raw,
            ptr::null_mut(),
        )
    };
    if rc != ffi::SQLITE_OK {
        // SAFETY: `db` is open; its last error is this one.
        return Err(unsafe { last_error(db) });
    }
    Ok(NonNull::new(raw).map(Prepared))
}

/// Binds `statement`'s values to `stmt`.
///
/// # Safety
/// `stmt` must be a live, reset statement of `db`, which no other thread uses.
unsafe fn bind_values(
    db: *mut ffi::sqlite3,
    stmt: *mut ffi::sqlite3_stmt,
    statement: &Statement,
) -> Result<(), StoreError> {
    // SAFETY: `stmt` is live.
    let parameters = unsafe { ffi::sqlite3_bind_parameter_count(stmt) };
    // Prepared with `?n` placeholders (`numbered_placeholders`): parameter n is the
    // n-th value, and their numbers run to the last value bound.
    if usize::try_from(parameters).ok() != Some(statement.args.len()) {
        return Err(direct_error(
            ffi::SQLITE_RANGE,
            format!(
                "a queued statement has {parameters} placeholders and {} values",
                statement.args.len()
            ),
        ));
    }
    for (index, value) in (1..=parameters).zip(&statement.args) {
        // SAFETY: `stmt` is prepared, `index` in range; `value` outlives the
        // binding, which `with_statement` clears before it returns.
        let rc = unsafe { bind(stmt, index, value) };
        if rc != ffi::SQLITE_OK {
            // SAFETY: `db` is open.
            return Err(unsafe { last_error(db) });
        }
    }
    Ok(())
}

/// Steps a bound statement to its end; the rows it returns are ignored (a queued
/// statement's results are never read). `db` and `stmt` as for [`bind_values`].
fn step_to_end(db: *mut ffi::sqlite3, stmt: *mut ffi::sqlite3_stmt) -> Result<(), StoreError> {
    loop {
        // SAFETY: `stmt` is prepared and bound (`with_statement`).
        match unsafe { ffi::sqlite3_step(stmt) } {
            ffi::SQLITE_DONE => return Ok(()),
            ffi::SQLITE_ROW => {}
            // SAFETY: `db` is open; the step's error is its last.
            _ => return Err(unsafe { last_error(db) }),
        }
    }
}

/// Steps a bound query once: its first row's first column, as text. `db` and `stmt`
/// as for [`bind_values`].
fn first_text(
    db: *mut ffi::sqlite3,
    stmt: *mut ffi::sqlite3_stmt,
) -> Result<Option<String>, StoreError> {
    // SAFETY: `stmt` is prepared and bound (`with_statement`).
    match unsafe { ffi::sqlite3_step(stmt) } {
        ffi::SQLITE_DONE => Ok(None),
        ffi::SQLITE_ROW => {
            // SAFETY: a row is current; the text (UTF-8, SQLite's own copy, valid until
            // the next step or reset) is read with its length and copied at once.
            let text = unsafe {
                let data = ffi::sqlite3_column_text(stmt, 0);
                if data.is_null() {
                    return Ok(None);
                }
                let length = usize::try_from(ffi::sqlite3_column_bytes(stmt, 0)).unwrap_or(0);
                std::slice::from_raw_parts(data, length).to_vec()
            };
            String::from_utf8(text).map(Some).map_err(|_| {
                direct_error(ffi::SQLITE_MISMATCH, "a text column is not UTF-8".into())
            })
        }
        // SAFETY: `db` is open; the step's error is its last.
        _ => Err(unsafe { last_error(db) }),
    }
}

/// `sql` with each `$n` placeholder (PostgreSQL's, which the shared SQL uses) written
/// `?n`, outside quotes. SQLite numbers a `?n` parameter n; a `$n` is a *named*
/// parameter, whose number SQLite finds only by walking the statement's list of
/// names, once per value bound: a 500-row INSERT of 4,000 values took 16 million
/// steps to bind, and made a 5,000-entry Bundle 2.3× slower.
fn numbered_placeholders(sql: &str) -> Cow<'_, str> {
    if !sql.contains('$') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut quote = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            // A doubled quote inside a quoted run escapes itself: closing then
            // reopening has the same effect on the state.
            (Some(q), c) if c == q => quote = None,
            (None, '\'' | '"') => quote = Some(c),
            (None, '$') if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push('?');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    Cow::Owned(out)
}

/// Binds `value` to parameter `index`, without a copy (`SQLITE_STATIC`).
///
/// # Safety
/// `stmt` must be a live prepared statement and `index` one of its parameters, and
/// `value` must outlive the binding (cleared, or the statement finalized, first).
unsafe fn bind(stmt: *mut ffi::sqlite3_stmt, index: c_int, value: &Arg) -> c_int {
    // SAFETY: per this function's contract; lengths checked below.
    unsafe {
        match value {
            Arg::Int(n) => ffi::sqlite3_bind_int64(stmt, index, *n),
            Arg::Text(text) => match c_int::try_from(text.len()) {
                Ok(length) => ffi::sqlite3_bind_text(
                    stmt,
                    index,
                    text.as_ptr().cast::<c_char>(),
                    length,
                    ffi::SQLITE_STATIC(),
                ),
                Err(_) => ffi::SQLITE_TOOBIG,
            },
            Arg::Blob(bytes) => match c_int::try_from(bytes.len()) {
                Ok(length) => ffi::sqlite3_bind_blob(
                    stmt,
                    index,
                    bytes.as_ptr().cast(),
                    length,
                    ffi::SQLITE_STATIC(),
                ),
                Err(_) => ffi::SQLITE_TOOBIG,
            },
            Arg::NullInt | Arg::NullText | Arg::NullBlob => ffi::sqlite3_bind_null(stmt, index),
        }
    }
}

/// The connection's last error, as sqlx would have reported it.
///
/// # Safety
/// `db` must be an open connection.
unsafe fn last_error(db: *mut ffi::sqlite3) -> StoreError {
    // SAFETY: `db` is open; the message is NUL-terminated and copied at once.
    let (code, message) = unsafe {
        let code = ffi::sqlite3_extended_errcode(db);
        let message = ffi::sqlite3_errmsg(db);
        let message = if message.is_null() {
            String::from("(no message)")
        } else {
            CStr::from_ptr(message).to_string_lossy().into_owned()
        };
        (code, message)
    };
    direct_error(code, message)
}

fn direct_error(code: c_int, message: String) -> StoreError {
    StoreError::Database(sqlx::Error::Database(Box::new(DirectError {
        code,
        message,
    })))
}

/// A SQLite error met running a queued statement: reported as sqlx reports
/// SQLite's own (the extended result code as `code()`), so it is classified the
/// same way (`StoreError::is_transient`, constraint kinds).
#[derive(Debug, thiserror::Error)]
#[error("(code: {code}) {message}")]
struct DirectError {
    code: c_int,
    message: String,
}

impl DatabaseError for DirectError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(self.code.to_string().into())
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        match self.code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                ErrorKind::UniqueViolation
            }
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => ErrorKind::ForeignKeyViolation,
            ffi::SQLITE_CONSTRAINT_NOTNULL => ErrorKind::NotNullViolation,
            ffi::SQLITE_CONSTRAINT_CHECK => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    use super::*;
    use crate::store::deferred::IntoArg;

    /// A row of the test table: id, name, note, body.
    type StoredRow = (i64, String, Option<String>, Option<Vec<u8>>);

    async fn connection(dir: &tempfile::TempDir) -> SqliteConnection {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("direct.db"))
            .create_if_missing(true);
        let mut conn = SqliteConnection::connect_with(&options)
            .await
            .expect("connect");
        sqlx::raw_sql(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, note TEXT, body BLOB)",
        )
        .execute(&mut conn)
        .await
        .expect("table");
        conn
    }

    /// Runs `statements` in order under one lock, stopping at the first that fails.
    async fn run(
        conn: &mut SqliteConnection,
        cache: &mut Cache,
        statements: &[Statement],
    ) -> Result<(), StoreError> {
        // SAFETY: dropped at the end of this function, before `conn` is used again.
        let mut locked = unsafe { Locked::take(conn) }.await?;
        for statement in statements {
            locked.run(cache, statement)?;
        }
        Ok(())
    }

    /// Statements open on the connection (sqlx's own cache and ours).
    async fn open_statements(conn: &mut SqliteConnection) -> usize {
        let mut locked = conn.lock_handle().await.expect("lock");
        let db = locked.as_raw_handle().as_ptr();
        let mut count = 0;
        // SAFETY: the connection is held; statements are only counted.
        let mut stmt = unsafe { ffi::sqlite3_next_stmt(db, ptr::null_mut()) };
        while !stmt.is_null() {
            count += 1;
            // SAFETY: as above.
            stmt = unsafe { ffi::sqlite3_next_stmt(db, stmt) };
        }
        count
    }

    fn insert(id: i64, name: &str, note: Option<&str>, body: Option<&[u8]>) -> Statement {
        Statement::new("INSERT INTO t (id, name, note, body) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(name)
            .bind(note)
            .bind(body)
    }

    #[tokio::test]
    async fn queued_statements_store_every_kind_of_value_and_share_one_prepared_statement() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = connection(&dir).await;
        let before = open_statements(&mut conn).await;
        let mut cache = Cache::default();
        let rows = Statement::insert_rows(
            "INSERT INTO t (id, name, note, body)",
            [
                [
                    3_i64.into_arg(),
                    "c".into_arg(),
                    Arg::NullText,
                    Arg::NullBlob,
                ],
                [
                    4_i64.into_arg(),
                    "d".into_arg(),
                    Arg::NullText,
                    Arg::NullBlob,
                ],
            ],
        )
        .expect("a row");
        run(
            &mut conn,
            &mut cache,
            &[
                insert(1, "a", Some("it's \"quoted\""), Some(b"\x00\x01")),
                insert(2, "b", None, None),
                rows,
            ],
        )
        .await
        .expect("run");
        // The single-row INSERT was prepared once for both rows; the multi-row one too.
        assert_eq!(open_statements(&mut conn).await, before + 2);
        let stored: Vec<StoredRow> =
            sqlx::query_as("SELECT id, name, note, body FROM t ORDER BY id")
                .fetch_all(&mut conn)
                .await
                .expect("read");
        assert_eq!(
            stored,
            vec![
                (
                    1,
                    "a".into(),
                    Some("it's \"quoted\"".into()),
                    Some(vec![0, 1])
                ),
                (2, "b".into(), None, None),
                (3, "c".into(), None, None),
                (4, "d".into(), None, None),
            ]
        );
        // Cleared, nothing of ours is left open (sqlx keeps its SELECT): sqlx can
        // close the connection.
        let with_ours = open_statements(&mut conn).await;
        cache.clear();
        assert_eq!(open_statements(&mut conn).await, with_ours - 2);
        conn.close().await.expect("close");
    }

    #[tokio::test]
    async fn a_failing_statement_stops_the_run_with_sqlites_error_and_leaves_the_rest_unrun() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = connection(&dir).await;
        let mut cache = Cache::default();
        let error = run(
            &mut conn,
            &mut cache,
            &[
                insert(1, "a", None, None),
                insert(1, "again", None, None),
                insert(2, "b", None, None),
            ],
        )
        .await
        .expect_err("a duplicate key");
        let StoreError::Database(sqlx::Error::Database(error)) = error else {
            panic!("not a database error: {error:?}");
        };
        assert_eq!(error.kind(), ErrorKind::UniqueViolation, "{error}");
        assert_eq!(error.code().as_deref(), Some("1555"), "{error}");
        let ids: Vec<(i64,)> = sqlx::query_as("SELECT id FROM t ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .expect("read");
        assert_eq!(ids, vec![(1,)]);
        // The statement that failed was reset: it runs again.
        run(&mut conn, &mut cache, &[insert(3, "c", None, None)])
            .await
            .expect("run again");
        cache.clear();
        conn.close().await.expect("close");
    }

    #[test]
    fn placeholders_are_numbered_outside_quotes_only() {
        assert_eq!(
            numbered_placeholders("INSERT INTO t (a, \"b$1\") VALUES ($1, '$2 it''s', $12)"),
            "INSERT INTO t (a, \"b$1\") VALUES (?1, '$2 it''s', ?12)"
        );
        assert!(matches!(
            numbered_placeholders("SELECT 1"),
            Cow::Borrowed("SELECT 1")
        ));
        assert_eq!(
            numbered_placeholders("SELECT json_extract(x, '$.id'), $1"),
            "SELECT json_extract(x, '$.id'), ?1"
        );
    }

    /// A read on the handle answers its first row's first column, `None` for no row or
    /// a NULL, and a handle kept across reads leaves the connection usable through sqlx
    /// once it is dropped.
    #[tokio::test]
    async fn a_read_on_the_handle_answers_the_first_rows_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = connection(&dir).await;
        let mut cache = Cache::default();
        let insert = |id: i64, name: &str, note: Option<&str>| {
            Statement::new("INSERT INTO t (id, name, note) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(name)
                .bind(note)
        };
        run(
            &mut conn,
            &mut cache,
            &[insert(1, "Ann", Some("ä note")), insert(2, "Bob", None)],
        )
        .await
        .expect("rows");
        let note_of = |name: &str| {
            Statement::new("SELECT note FROM t WHERE name = $1 ORDER BY id").bind(name)
        };
        {
            // SAFETY: dropped at the end of this block, before `conn` is used again.
            let mut locked = unsafe { Locked::take(&mut conn) }.await.expect("lock");
            let mut read = |name: &str| locked.first_text(&mut cache, &note_of(name));
            assert_eq!(read("Ann").expect("read"), Some("ä note".to_owned()));
            assert_eq!(read("Bob").expect("read"), None, "a NULL");
            assert_eq!(read("Cy").expect("read"), None, "no row");
            let error = locked
                .first_text(&mut cache, &Statement::new("SELECT note FROM missing"))
                .expect_err("no such table");
            assert!(error.to_string().contains("no such table"), "{error}");
        }
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM t")
            .fetch_one(&mut conn)
            .await
            .expect("sqlx after the handle");
        assert_eq!(count, 2);
        cache.clear();
    }

    #[tokio::test]
    async fn a_statement_using_a_value_twice_binds_it_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = connection(&dir).await;
        let mut cache = Cache::default();
        let twice = Statement::new("INSERT INTO t (id, name, note) VALUES ($1, $2, $2)")
            .bind(7_i64)
            .bind("same");
        run(&mut conn, &mut cache, &[twice]).await.expect("run");
        let row: (i64, String, Option<String>) = sqlx::query_as("SELECT id, name, note FROM t")
            .fetch_one(&mut conn)
            .await
            .expect("read");
        assert_eq!(row, (7, "same".into(), Some("same".into())));
        cache.clear();
    }

    #[tokio::test]
    async fn a_placeholder_without_a_value_is_an_error_not_a_null() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = connection(&dir).await;
        let mut cache = Cache::default();
        let short = Statement::new("INSERT INTO t (id, name) VALUES ($1, $2)").bind(1_i64);
        let error = run(&mut conn, &mut cache, &[short])
            .await
            .expect_err("no value for $2");
        assert!(
            error.to_string().contains("2 placeholders and 1 values"),
            "{error}"
        );
        cache.clear();
    }
}

/// SQLite calls a [`Readers`] connection's progress handler after this many
/// virtual-machine steps.
const PROGRESS_EVERY: c_int = 10_000;

/// Progress calls one [`Readers`] read may take before SQLite interrupts it: 100,000
/// virtual-machine steps in all (about a millisecond of work). A read on the caller's
/// thread must stay short; a longer one is done the usual way instead ([`Read::TooLong`]).
const PROGRESS_CALLS_PER_READ: u32 = 10;

/// Reader connections kept for [`Readers`] between reads.
const IDLE_READERS: usize = 4;

/// What a [`Readers`] read came to.
#[derive(Debug)]
pub(super) enum Read<T> {
    Done(T),
    /// More work than a read on the caller's thread may do (more rows than it allows,
    /// or more steps than [`PROGRESS_CALLS_PER_READ`] allows): do it through sqlx's
    /// reader pool instead.
    TooLong,
}

impl<T> Read<T> {
    /// The read's result, `None` if it was too long.
    pub(super) fn done(self) -> Option<T> {
        match self {
            Read::Done(value) => Some(value),
            Read::TooLong => None,
        }
    }
}

/// Read-only connections whose statements run on the caller's thread, through SQLite's
/// C API, for the short reads a new referral makes before its write (is its identifier
/// held; what do its conditions match). Through sqlx's reader pool each such read was
/// a pool checkout and two hand-offs to and from a connection's worker thread, more
/// CPU than the read itself (BENCHMARKS.md, "SQLite's memory; a new referral's reads on
/// the caller's thread").
///
/// Each connection is opened by sqlx with the pool's readers' options, then taken from
/// its worker for good ([`Locked`]); its statements stay prepared while it lives. Work
/// is bounded: SQLite interrupts a read past its budget ([`PROGRESS_CALLS_PER_READ`]),
/// and the caller says how many rows it accepts.
pub(super) struct Readers {
    options: sqlx::sqlite::SqliteConnectOptions,
    idle: std::sync::Mutex<Vec<Reader>>,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers").finish_non_exhaustive()
    }
}

/// One connection of [`Readers`]. Dropped, it first removes its progress handler (which
/// points at `budget`); then its fields drop in order: its statements are finalized, its
/// handle given back to its worker, the connection closed, `budget` freed.
struct Reader {
    cache: Cache,
    locked: Locked,
    // Only ever dropped: while `locked` lives, nothing goes through sqlx on it.
    _conn: SqliteConnection,
    /// Progress calls left to the read running (`spend`); on the heap, where the
    /// handler's pointer to it stays valid when the `Reader` moves.
    budget: Box<std::cell::Cell<u32>>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        let db = self.locked.handle.as_raw_handle();
        // SAFETY: the connection is open and held by `locked` (dropped after this);
        // the handler goes before `budget`, which it points at, is freed.
        unsafe { ffi::sqlite3_progress_handler(db.as_ptr(), 0, None, ptr::null_mut()) };
    }
}

/// A [`Readers`] connection's progress handler: one call of the read's budget spent;
/// once none is left, the statement stops (`SQLITE_INTERRUPT`).
unsafe extern "C" fn spend(budget: *mut std::ffi::c_void) -> c_int {
    // SAFETY: the pointer is the `Reader`'s `budget`, which outlives its connection's
    // handler; SQLite calls it on the thread stepping the statement, the only one
    // using the `Reader` meanwhile.
    let left = unsafe { &*budget.cast_const().cast::<std::cell::Cell<u32>>() };
    match left.get() {
        0 => 1,
        n => {
            left.set(n - 1);
            0
        }
    }
}

impl Readers {
    /// Connections opened as `options` say (a reader's: read-only, its cache size).
    pub(super) fn new(options: sqlx::sqlite::SqliteConnectOptions) -> Self {
        Self {
            options,
            idle: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Runs `read` on an idle connection (opened if there is none), on this thread.
    pub(super) async fn read<T>(
        &self,
        read: impl FnOnce(&mut Locked, &mut Cache) -> Result<Read<T>, StoreError>,
    ) -> Result<Read<T>, StoreError> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut reader = match idle {
            Some(reader) => reader,
            None => self.open().await?,
        };
        reader.budget.set(PROGRESS_CALLS_PER_READ);
        let outcome = read(&mut reader.locked, &mut reader.cache);
        // A connection whose read failed is closed, not kept.
        if outcome.is_ok()
            && let Ok(mut idle) = self.idle.lock()
            && idle.len() < IDLE_READERS
        {
            idle.push(reader);
        }
        outcome
    }

    async fn open(&self) -> Result<Reader, StoreError> {
        use sqlx::Connection;
        let mut conn = SqliteConnection::connect_with(&self.options).await?;
        // SAFETY: the `Locked` lives in the `Reader` beside the connection and drops
        // before it (field order); nothing uses the connection through sqlx meanwhile.
        let mut locked = unsafe { Locked::take(&mut conn) }.await?;
        let budget = Box::new(std::cell::Cell::new(0));
        let db = locked.handle.as_raw_handle();
        // SAFETY: `db` is open and held by `locked`; `budget` lives on the heap for as
        // long as the connection (both in the `Reader`; the handle is given back first).
        unsafe {
            ffi::sqlite3_progress_handler(
                db.as_ptr(),
                PROGRESS_EVERY,
                Some(spend),
                ptr::from_ref(budget.as_ref()).cast_mut().cast(),
            );
        }
        Ok(Reader {
            cache: Cache::default(),
            locked,
            _conn: conn,
            budget,
        })
    }

    /// Closes the idle connections (the store is closing).
    pub(super) fn close(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}

/// Steps a bound query to its end, decoding each row; `None` past `max_rows` rows or
/// when SQLite interrupted a step. `db` and `stmt` as for [`bind_values`].
fn step_rows<T>(
    db: *mut ffi::sqlite3,
    stmt: *mut ffi::sqlite3_stmt,
    max_rows: usize,
    decode: &mut impl FnMut(&Row) -> Result<T, StoreError>,
) -> Result<Option<Vec<T>>, StoreError> {
    let mut rows = Vec::new();
    loop {
        // SAFETY: `stmt` is prepared and bound (`with_statement`).
        match unsafe { ffi::sqlite3_step(stmt) } {
            ffi::SQLITE_DONE => return Ok(Some(rows)),
            ffi::SQLITE_ROW if rows.len() < max_rows => rows.push(decode(&Row(stmt))?),
            ffi::SQLITE_ROW | ffi::SQLITE_INTERRUPT => return Ok(None),
            // SAFETY: `db` is open; the step's error is its last.
            _ => return Err(unsafe { last_error(db) }),
        }
    }
}

/// One row of a query run by [`Locked::rows`], read by column position.
pub(super) struct Row(*mut ffi::sqlite3_stmt);

impl Row {
    /// Column `i` as an integer (0 for NULL).
    pub(super) fn int(&self, i: c_int) -> i64 {
        // SAFETY: a row is current on the statement (`Locked::rows`), `i` a column of it.
        unsafe { ffi::sqlite3_column_int64(self.0, i) }
    }

    /// Column `i` as text (`None` for NULL).
    pub(super) fn text(&self, i: c_int) -> Result<Option<String>, StoreError> {
        // SAFETY: as in `int`; the text (UTF-8, SQLite's own copy, valid until the next
        // step) is read with its length and copied at once.
        let bytes = unsafe {
            let data = ffi::sqlite3_column_text(self.0, i);
            if data.is_null() {
                return Ok(None);
            }
            let length = usize::try_from(ffi::sqlite3_column_bytes(self.0, i)).unwrap_or(0);
            std::slice::from_raw_parts(data, length).to_vec()
        };
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| direct_error(ffi::SQLITE_MISMATCH, "a text column is not UTF-8".into()))
    }
}

impl Locked {
    /// Runs one query and decodes its rows, at most `max_rows` of them: with more, or
    /// a step SQLite interrupted ([`Readers`]' budget), [`Read::TooLong`].
    pub(super) fn rows<T>(
        &mut self,
        cache: &mut Cache,
        statement: &Statement,
        max_rows: usize,
        mut decode: impl FnMut(&Row) -> Result<T, StoreError>,
    ) -> Result<Read<Vec<T>>, StoreError> {
        self.ran += 1;
        let db = self.handle.as_raw_handle();
        // SAFETY: as in `run`.
        let rows = unsafe {
            with_statement(db, cache, statement, |stmt| {
                step_rows(db.as_ptr(), stmt, max_rows, &mut decode)
            })
        }?;
        Ok(rows.map_or(Read::TooLong, Read::Done))
    }

    /// [`Locked::first_text`], for a [`Readers`] read.
    pub(super) fn first_text_read(
        &mut self,
        cache: &mut Cache,
        statement: &Statement,
    ) -> Result<Read<Option<String>>, StoreError> {
        match self.first_text(cache, statement) {
            Ok(text) => Ok(Read::Done(text)),
            Err(StoreError::Database(sqlx::Error::Database(e)))
                if e.code().as_deref() == Some("9") =>
            {
                Ok(Read::TooLong)
            }
            Err(e) => Err(e),
        }
    }
}
