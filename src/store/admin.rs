//! The operator's commands on a database, without serving: which migrations are
//! pending (`sprig migrate --check`), applying them (`sprig migrate`), and a SQLite
//! file's online backup and its restore (`sprig backup`, `sprig restore`).
//!
//! None of these opens the database through [`Store::open`] except `migrate` (which
//! is what it does): a check or a backup must not change the database it looks at.
//!
//! Invariants:
//! - a backup is one consistent snapshot, taken while a server keeps writing (SQLite's
//!   `VACUUM INTO` runs in one read transaction, which WAL lets run alongside the
//!   writer), written to a temporary file made `0600` and renamed into place only when
//!   complete and on disk;
//! - a restore never replaces a database another process has open, replaces an existing
//!   one only when told to (`force`), and accepts only a backup whose migrations this
//!   Sprig knows (same checksums) and which passes SQLite's `quick_check`.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteLockingMode};
use sqlx::{ConnectOptions, Connection, Row};
use thiserror::Error;

use super::{Store, StoreError, StoreOptions};

/// The migrations this Sprig carries, per backend.
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// What an operator's command could not do.
#[derive(Debug, Error)]
pub enum AdminError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The command applies to the other backend.
    #[error("{0}")]
    WrongBackend(&'static str),
    /// The restore was refused; the reason says why and what to do.
    #[error("{0}")]
    Refused(String),
}

impl AdminError {
    fn file(path: &Path) -> impl FnOnce(std::io::Error) -> AdminError + '_ {
        move |source| AdminError::File {
            path: path.to_owned(),
            source,
        }
    }
}

fn db(error: sqlx::Error) -> AdminError {
    AdminError::Store(StoreError::Database(error))
}

/// A migration, by version and description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationName {
    /// Its number (`0009` is 9).
    pub version: i64,
    /// Its file name's description (`retention`).
    pub description: String,
}

/// Where a database stands against the migrations this Sprig carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationState {
    /// Applied, and known to this Sprig.
    pub applied: Vec<MigrationName>,
    /// Known to this Sprig, not yet applied.
    pub pending: Vec<MigrationName>,
    /// Applied, but this Sprig does not carry them: the database was migrated by a
    /// newer Sprig.
    pub unknown: Vec<i64>,
    /// Applied with other text than this Sprig's (a changed migration), or failed
    /// half-way.
    pub mismatched: Vec<i64>,
}

impl MigrationState {
    /// Whether this Sprig can use the database after applying `pending`.
    pub fn is_compatible(&self) -> bool {
        self.unknown.is_empty() && self.mismatched.is_empty()
    }

    fn compare(migrator: &Migrator, applied: &[(i64, Vec<u8>, bool)]) -> Self {
        let mut state = MigrationState::default();
        for migration in migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
        {
            let name = MigrationName {
                version: migration.version,
                description: migration.description.to_string(),
            };
            match applied.iter().find(|(v, _, _)| *v == migration.version) {
                None => state.pending.push(name),
                Some((_, checksum, success)) => {
                    if *success && checksum.as_slice() == &*migration.checksum {
                        state.applied.push(name);
                    } else {
                        state.mismatched.push(migration.version);
                    }
                }
            }
        }
        for (version, _, _) in applied {
            if !migrator.iter().any(|m| m.version == *version) {
                state.unknown.push(*version);
            }
        }
        state
    }
}

/// A database location, as `database =` names it.
enum Location {
    Sqlite(SqliteConnectOptions),
    Postgres(PgConnectOptions),
}

fn locate(database: &str) -> Result<Location, StoreError> {
    let database = database.trim();
    if database.starts_with("postgres:") || database.starts_with("postgresql:") {
        Ok(Location::Postgres(PgConnectOptions::from_str(database)?))
    } else if database.contains("://") && !database.starts_with("sqlite:") {
        Err(StoreError::UnsupportedDatabase(database.to_owned()))
    } else if database.starts_with("sqlite:") {
        Ok(Location::Sqlite(SqliteConnectOptions::from_str(database)?))
    } else {
        Ok(Location::Sqlite(
            SqliteConnectOptions::new().filename(database),
        ))
    }
}

/// Reads the applied migrations (version, checksum, success) from sqlx's table on
/// `$conn`, none when the table (named by `$exists`, a query answering its name or NULL)
/// does not exist. A macro: the same two queries on each backend's connection type.
macro_rules! applied_migrations {
    ($conn:expr, $exists:expr) => {
        async {
            let exists: Option<(Option<String>,)> =
                sqlx::query_as($exists).fetch_optional(&mut *$conn).await?;
            if !exists.is_some_and(|(name,)| name.is_some()) {
                return Ok::<Vec<(i64, Vec<u8>, bool)>, sqlx::Error>(Vec::new());
            }
            sqlx::query_as(
                "SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version",
            )
            .fetch_all(&mut *$conn)
            .await
        }
    };
}

const SQLITE_TABLE_EXISTS: &str =
    "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'";
const POSTGRES_TABLE_EXISTS: &str = "SELECT to_regclass('_sqlx_migrations')::text";

/// Where `database` stands against this Sprig's migrations, changing nothing (a SQLite
/// file that does not exist has every migration pending, and is not made).
pub async fn migration_state(database: &str) -> Result<MigrationState, AdminError> {
    match locate(database)? {
        Location::Sqlite(options) => {
            if !options.get_filename().exists() {
                return Ok(MigrationState::compare(&SQLITE_MIGRATIONS, &[]));
            }
            sqlite_migration_state(options.get_filename()).await
        }
        Location::Postgres(options) => {
            let mut conn = options.connect().await.map_err(db)?;
            let applied = applied_migrations!(&mut conn, POSTGRES_TABLE_EXISTS)
                .await
                .map_err(db)?;
            conn.close().await.map_err(db)?;
            Ok(MigrationState::compare(&POSTGRES_MIGRATIONS, &applied))
        }
    }
}

async fn sqlite_migration_state(path: &Path) -> Result<MigrationState, AdminError> {
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await
        .map_err(db)?;
    let applied = applied_migrations!(&mut conn, SQLITE_TABLE_EXISTS)
        .await
        .map_err(db)?;
    conn.close().await.map_err(db)?;
    Ok(MigrationState::compare(&SQLITE_MIGRATIONS, &applied))
}

/// Applies the pending migrations (under PostgreSQL's advisory lock, as at start-up)
/// and brings the search index up to date, as `sprig serve` would at start-up, then
/// closes. Returns the state before.
pub async fn migrate(options: &StoreOptions) -> Result<MigrationState, AdminError> {
    let before = migration_state(&options.database).await?;
    if !before.is_compatible() {
        return Err(AdminError::Refused(incompatible(&before)));
    }
    let store = Store::open(options).await?;
    store.close().await;
    Ok(before)
}

/// Why a database cannot be used by this Sprig.
pub fn incompatible(state: &MigrationState) -> String {
    let mut reasons = Vec::new();
    if !state.unknown.is_empty() {
        reasons.push(format!(
            "it has migrations this Sprig does not carry ({}): it was migrated by a newer Sprig",
            list(&state.unknown)
        ));
    }
    if !state.mismatched.is_empty() {
        reasons.push(format!(
            "migrations {} were applied with other text, or failed half-way",
            list(&state.mismatched)
        ));
    }
    reasons.join("; ")
}

fn list(versions: &[i64]) -> String {
    versions
        .iter()
        .map(|v| format!("{v:04}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a backup wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    /// The backup file's size in bytes.
    pub bytes: u64,
    /// The migrations it holds.
    pub migrations: MigrationState,
}

/// Writes a consistent copy of the SQLite database `database` to `to` (which must not
/// exist), while a server may be writing to it: `VACUUM INTO` on a read-only
/// connection, into a `0600` temporary file beside `to`, made durable, then renamed.
pub async fn backup(database: &str, to: &Path) -> Result<BackupReport, AdminError> {
    let Location::Sqlite(options) = locate(database)? else {
        return Err(AdminError::WrongBackend(
            "sprig backup copies a SQLite database; for PostgreSQL use pg_dump (see the README, Operating Sprig)",
        ));
    };
    let source = options.get_filename().to_owned();
    if !source.exists() {
        return Err(AdminError::Refused(format!(
            "{}: no such database",
            source.display()
        )));
    }
    if to.exists() {
        return Err(AdminError::Refused(format!(
            "{} exists: a backup never overwrites a file; name a new one",
            to.display()
        )));
    }
    let temporary = sibling(to, ".partial");
    let _ = std::fs::remove_file(&temporary);
    create_private(&temporary)?;
    let copied = async {
        let mut conn = SqliteConnectOptions::new()
            .filename(&source)
            .read_only(true)
            .busy_timeout(std::time::Duration::from_secs(30))
            .connect()
            .await
            .map_err(db)?;
        sqlx::query("VACUUM INTO $1")
            .bind(temporary.display().to_string())
            .execute(&mut conn)
            .await
            .map_err(db)?;
        conn.close().await.map_err(db)
    }
    .await;
    if let Err(error) = copied {
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    sync_file(&temporary)?;
    std::fs::rename(&temporary, to).map_err(AdminError::file(to))?;
    sync_parent(to)?;
    let bytes = std::fs::metadata(to).map_err(AdminError::file(to))?.len();
    let migrations = sqlite_migration_state(to).await?;
    Ok(BackupReport { bytes, migrations })
}

/// Checks a SQLite backup before a restore: SQLite's `quick_check` passes, and every
/// migration it holds is one this Sprig carries, with the same text. Returns its
/// migration state (pending ones are applied at the next start, or by `sprig migrate`).
pub async fn check_backup(backup: &Path) -> Result<MigrationState, AdminError> {
    if !backup.is_file() {
        return Err(AdminError::Refused(format!(
            "{}: no such backup file",
            backup.display()
        )));
    }
    let mut conn = SqliteConnectOptions::new()
        .filename(backup)
        .read_only(true)
        .connect()
        .await
        .map_err(|e| {
            AdminError::Refused(format!("{}: not a SQLite database ({e})", backup.display()))
        })?;
    let check: Result<Vec<(String,)>, _> = sqlx::query_as("PRAGMA quick_check")
        .fetch_all(&mut conn)
        .await;
    let healthy = matches!(check.as_deref(), Ok([(ok,)]) if ok == "ok");
    let applied = applied_migrations!(&mut conn, SQLITE_TABLE_EXISTS).await;
    let _ = conn.close().await;
    if !healthy {
        return Err(AdminError::Refused(format!(
            "{}: not a sound SQLite database (quick_check failed)",
            backup.display()
        )));
    }
    let applied = applied.map_err(db)?;
    if applied.is_empty() {
        return Err(AdminError::Refused(format!(
            "{}: not a Sprig database (no migrations recorded)",
            backup.display()
        )));
    }
    let state = MigrationState::compare(&SQLITE_MIGRATIONS, &applied);
    if !state.is_compatible() {
        return Err(AdminError::Refused(format!(
            "{}: this Sprig cannot use it: {}",
            backup.display(),
            incompatible(&state)
        )));
    }
    Ok(state)
}

/// Restores the SQLite backup `backup` as the database `database`: checked first
/// ([`check_backup`]); an existing database is replaced only with `force`, and never
/// while another process has it open (a running `sprig serve`: stop it first).
pub async fn restore(
    backup: &Path,
    database: &str,
    force: bool,
) -> Result<MigrationState, AdminError> {
    let Location::Sqlite(options) = locate(database)? else {
        return Err(AdminError::WrongBackend(
            "sprig restore restores a SQLite backup; for PostgreSQL use pg_restore (see the README, Operating Sprig)",
        ));
    };
    let state = check_backup(backup).await?;
    let target = options.get_filename().to_owned();
    if target.exists() {
        if !force {
            return Err(AdminError::Refused(format!(
                "{} exists: restoring replaces it and everything in it; give --force to do so",
                target.display()
            )));
        }
        ensure_not_in_use(&target).await?;
    }
    let temporary = sibling(&target, ".restoring");
    let _ = std::fs::remove_file(&temporary);
    create_private(&temporary)?;
    let copied = std::fs::copy(backup, &temporary)
        .map_err(AdminError::file(backup))
        .and_then(|_| sync_file(&temporary));
    if let Err(error) = copied {
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    // The old database's WAL and shared memory must not be applied to the new file.
    for suffix in ["-wal", "-shm"] {
        let companion = sibling(&target, suffix);
        match std::fs::remove_file(&companion) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(AdminError::file(&companion)(e)),
        }
    }
    std::fs::rename(&temporary, &target).map_err(AdminError::file(&target))?;
    sync_parent(&target)?;
    Ok(state)
}

/// Refuses when another connection has the database open: in WAL mode every open
/// connection holds a shared lock on the file, so an exclusive-mode read cannot start.
/// The check's own connection checkpoints and removes the WAL as it closes.
async fn ensure_not_in_use(path: &Path) -> Result<(), AdminError> {
    let in_use = || {
        AdminError::Refused(format!(
            "{} is in use by another process (a running sprig serve?): stop it, then restore",
            path.display()
        ))
    };
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .locking_mode(SqliteLockingMode::Exclusive)
        .busy_timeout(std::time::Duration::from_millis(200))
        .connect()
        .await
        .map_err(|_| in_use())?;
    let read = sqlx::query("SELECT count(*) FROM sqlite_master")
        .fetch_one(&mut conn)
        .await;
    let _ = conn.close().await;
    match read {
        Ok(row) => {
            let _: i64 = row.try_get(0).map_err(db)?;
            Ok(())
        }
        Err(_) => Err(in_use()),
    }
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Creates an empty file readable and writable by its owner only (it will hold
/// patient data).
fn create_private(path: &Path) -> Result<(), AdminError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(AdminError::file(path))?;
    Ok(())
}

fn sync_file(path: &Path) -> Result<(), AdminError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .and_then(|file| file.sync_all())
        .map_err(AdminError::file(path))
}

/// Makes a rename in `path`'s folder durable.
fn sync_parent(path: &Path) -> Result<(), AdminError> {
    #[cfg(unix)]
    {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(AdminError::file(parent))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
