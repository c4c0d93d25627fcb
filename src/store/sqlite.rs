//! The SQLite backend: WAL mode, one writer connection (SQLite allows one
//! writer at a time; queueing writers in the pool rather than in SQLite's
//! lock avoids `SQLITE_BUSY` under load) and a pool of read-only readers,
//! which WAL lets run alongside the writer.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqliteConnection};

use super::write::{ResourceWrite, WriteTx};
use super::{NewResource, ReadOutcome, StoreError, StoreOptions, StoredResource, Visibility};
use crate::fhir::{FhirId, Instant, ResourceType, VersionId};

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
    pub(super) writer: SqlitePool,
    pub(super) readers: SqlitePool,
    /// Woken when a commit adds outbox rows, so delivery starts at once
    /// rather than at its next poll.
    pub(super) outbox_signal: Arc<Notify>,
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
            .connect_with(base.clone().create_if_missing(true))
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        restrict_companion_modes(base.get_filename())?;
        let readers = SqlitePoolOptions::new()
            .max_connections(options.max_read_connections.max(1))
            .acquire_timeout(options.busy_timeout)
            .connect_with(base.read_only(true))
            .await?;
        Ok(Self {
            writer,
            readers,
            outbox_signal: Arc::new(Notify::new()),
        })
    }

    /// Opens a write transaction on the writer connection.
    pub(super) async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        Ok(WriteTx {
            tx: self.writer.begin().await?,
            outbox_signal: Arc::clone(&self.outbox_signal),
            enqueued: false,
        })
    }

    pub(super) async fn create(&self, new: NewResource<'_>) -> Result<StoredResource, StoreError> {
        let id = FhirId::generate();
        let mut tx = self.begin_write().await?;
        let stored = tx
            .create(ResourceWrite {
                resource_type: new.resource_type,
                id: &id,
                resource: new.resource,
                received: Some(new.received),
                request_id: new.request_id,
                owner: new.owner,
            })
            .await?;
        tx.commit().await?;
        Ok(stored)
    }

    pub(super) async fn read(
        &self,
        resource_type: ResourceType,
        id: &FhirId,
        visibility: &Visibility,
    ) -> Result<ReadOutcome, StoreError> {
        let mut conn = self.readers.acquire().await?;
        read_current(&mut conn, resource_type, id, visibility).await
    }

    pub(super) async fn vread(
        &self,
        resource_type: ResourceType,
        id: &FhirId,
        version: VersionId,
        visibility: &Visibility,
    ) -> Result<ReadOutcome, StoreError> {
        let row = sqlx::query(
            "SELECT v.version_id, v.last_updated, v.resource, r.owner_ods \
             FROM resource_versions v JOIN resources r \
               ON r.resource_type = v.resource_type AND r.id = v.id \
             WHERE v.resource_type = $1 AND v.id = $2 AND v.version_id = $3",
        )
        .bind(resource_type.as_str())
        .bind(id.as_str())
        .bind(version.get())
        .fetch_optional(&self.readers)
        .await?;
        visible_outcome(resource_type, id, row, visibility)
    }

    pub(super) async fn delete(
        &self,
        resource_type: ResourceType,
        id: &FhirId,
        request_id: &str,
    ) -> Result<Option<VersionId>, StoreError> {
        let mut tx = self.begin_write().await?;
        let deleted = tx.delete(resource_type, id, request_id).await?;
        tx.commit().await?;
        Ok(deleted)
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }

    pub(super) async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }
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

/// Gives the -wal and -shm files, once SQLite has made them, no more access than the
/// database file has (SQLite does so itself; this holds it whatever the umask was when
/// an older Sprig made them).
#[cfg(unix)]
fn restrict_companion_modes(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |e: std::io::Error| StoreError::Database(sqlx::Error::Io(e));
    let database_mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    for suffix in ["-wal", "-shm"] {
        let mut companion = path.as_os_str().to_owned();
        companion.push(suffix);
        let companion = std::path::PathBuf::from(companion);
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

/// The current version of a resource, on any connection (a reader, or a
/// writer inside its transaction).
pub(super) async fn read_current(
    conn: &mut sqlx::SqliteConnection,
    resource_type: ResourceType,
    id: &FhirId,
    visibility: &Visibility,
) -> Result<ReadOutcome, StoreError> {
    let row = sqlx::query(
        "SELECT v.version_id, v.last_updated, v.resource, r.owner_ods \
         FROM resources r JOIN resource_versions v \
           ON v.resource_type = r.resource_type AND v.id = r.id AND v.version_id = r.current_version \
         WHERE r.resource_type = $1 AND r.id = $2",
    )
    .bind(resource_type.as_str())
    .bind(id.as_str())
    .fetch_optional(conn)
    .await?;
    visible_outcome(resource_type, id, row, visibility)
}

/// A row read with its resource's `owner_ods`: the outcome when `visibility`
/// sees it, `NotFound` otherwise (another practice's resource is not there, as
/// far as the caller can tell: not even deleted).
fn visible_outcome(
    resource_type: ResourceType,
    id: &FhirId,
    row: Option<sqlx::sqlite::SqliteRow>,
    visibility: &Visibility,
) -> Result<ReadOutcome, StoreError> {
    let Some(row) = row else {
        return Ok(ReadOutcome::NotFound);
    };
    let owner: Option<String> = row.try_get("owner_ods")?;
    if !visibility.sees(owner.as_deref()) {
        return Ok(ReadOutcome::NotFound);
    }
    outcome_from_row(resource_type, id, &row)
}

pub(super) fn outcome_from_row(
    resource_type: ResourceType,
    id: &FhirId,
    row: &sqlx::sqlite::SqliteRow,
) -> Result<ReadOutcome, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        resource_type: resource_type.to_string(),
        id: id.to_string(),
        reason,
    };
    let version_id = VersionId::from_i64(row.try_get("version_id")?);
    let last_updated_text: String = row.try_get("last_updated")?;
    let last_updated = Instant::parse(&last_updated_text).map_err(|e| corrupt(e.to_string()))?;
    let resource: Option<String> = row.try_get("resource")?;
    Ok(match resource {
        Some(json) => ReadOutcome::Found(StoredResource {
            resource_type,
            id: id.clone(),
            version_id,
            last_updated,
            json,
        }),
        None => ReadOutcome::Deleted {
            version_id,
            last_updated,
        },
    })
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
