//! A write transaction: every change one request makes (FHIR resource
//! versions, the referral record, the outbox) commits together or not at all.
//!
//! Dropping a `WriteTx` without [`WriteTx::commit`] rolls it back, so an
//! error anywhere in a request (`?`) leaves the database as it was.

use std::sync::Arc;

use serde_json::Value;
use sqlx::{Sqlite, SqliteConnection, Transaction};
use tokio::sync::Notify;

use super::sqlite::read_current;
use super::{ReadOutcome, StoreError, StoredResource, Visibility};
use crate::fhir::resource::stamp;
use crate::fhir::{FhirId, Instant, ResourceType, VersionId};

/// An open write transaction.
pub struct WriteTx {
    pub(super) tx: Transaction<'static, Sqlite>,
    /// Told after a commit that added outbox rows.
    pub(super) outbox_signal: Arc<Notify>,
    /// Whether this transaction added outbox rows.
    pub(super) enqueued: bool,
}

impl std::fmt::Debug for WriteTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTx").finish_non_exhaustive()
    }
}

/// A resource version to write.
#[derive(Debug)]
pub struct ResourceWrite<'a> {
    /// Its type.
    pub resource_type: ResourceType,
    /// Its id (new ids are chosen by the caller, so references to it can be
    /// written before it is stored, as in a transaction Bundle).
    pub id: &'a FhirId,
    /// The resource; `id` and `meta.versionId`/`lastUpdated` are replaced.
    pub resource: Value,
    /// The request body that carried it, kept for audit.
    pub received: Option<&'a [u8]>,
    /// The request that wrote it.
    pub request_id: &'a str,
    /// The practice that owns it (the referral's): set by its first write,
    /// never changed by a later one (an update with `None`, or another
    /// practice, leaves it as it was). `None`: owned by no practice, visible
    /// only to callers who see all (see [`Visibility`]).
    pub owner: Option<&'a str>,
}

impl WriteTx {
    /// The connection, for the store's own query modules.
    pub(super) fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }

    /// Commits every change. Returns after the commit is durable.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        if self.enqueued {
            // notify_one keeps a permit when the worker is busy, so a change
            // committed mid-round is not missed.
            self.outbox_signal.notify_one();
        }
        Ok(())
    }

    /// Stores a new resource as version 1.
    pub async fn create(&mut self, write: ResourceWrite<'_>) -> Result<StoredResource, StoreError> {
        let version_id = VersionId::FIRST;
        let last_updated = Instant::now();
        let owner = write.owner;
        let (stored, audit, stamped) = serialise(write, version_id, last_updated)?;
        let at = last_updated.to_fhir();
        sqlx::query(
            "INSERT INTO resources (resource_type, id, current_version, deleted, last_updated, owner_ods) \
             VALUES ($1, $2, $3, 0, $4, $5)",
        )
        .bind(stored.resource_type.as_str())
        .bind(stored.id.as_str())
        .bind(version_id.get())
        .bind(&at)
        .bind(owner)
        .execute(self.conn())
        .await?;
        self.insert_version(VersionRow::of(&stored, &at, "create", audit))
            .await?;
        // After the resource row: the index rows refer to it. The INSERT above
        // proved the id new (deleted resources keep their row), so it has no
        // index rows to clear: three DELETEs fewer while the writer is held.
        super::search::index_new(self.conn(), stored.resource_type, &stored.id, &stamped).await?;
        Ok(stored)
    }

    /// Stores a new version of an existing resource. With `expected`, the
    /// current version must be that one (`If-Match`), or nothing is written.
    pub async fn update(
        &mut self,
        write: ResourceWrite<'_>,
        expected: Option<VersionId>,
    ) -> Result<StoredResource, StoreError> {
        let current = self.current_version(write.resource_type, write.id).await?;
        let Some((current, deleted)) = current else {
            return Err(StoreError::NotFound {
                resource_type: write.resource_type.to_string(),
                id: write.id.to_string(),
            });
        };
        if let Some(expected) = expected
            && expected != current
        {
            return Err(StoreError::VersionConflict {
                resource_type: write.resource_type.to_string(),
                id: write.id.to_string(),
                expected,
                current,
            });
        }
        let version_id = current.next();
        let last_updated = Instant::now();
        let owner = write.owner;
        let (stored, audit, stamped) = serialise(write, version_id, last_updated)?;
        let at = last_updated.to_fhir();
        sqlx::query(
            "UPDATE resources SET current_version = $1, deleted = 0, last_updated = $2, \
             owner_ods = COALESCE(owner_ods, $3) \
             WHERE resource_type = $4 AND id = $5",
        )
        .bind(version_id.get())
        .bind(&at)
        .bind(owner)
        .bind(stored.resource_type.as_str())
        .bind(stored.id.as_str())
        .execute(self.conn())
        .await?;
        let operation = if deleted { "create" } else { "update" };
        self.insert_version(VersionRow::of(&stored, &at, operation, audit))
            .await?;
        super::search::reindex(
            self.conn(),
            stored.resource_type,
            &stored.id,
            Some(&stamped),
        )
        .await?;
        Ok(stored)
    }

    /// Marks a resource deleted by adding a deletion version. Returns the
    /// deletion's version, or `None` if there was no such (undeleted) resource.
    pub async fn delete(
        &mut self,
        resource_type: ResourceType,
        id: &FhirId,
        request_id: &str,
    ) -> Result<Option<VersionId>, StoreError> {
        let Some((current, false)) = self.current_version(resource_type, id).await? else {
            return Ok(None);
        };
        let version_id = current.next();
        let at = Instant::now().to_fhir();
        sqlx::query(
            "UPDATE resources SET current_version = $1, deleted = 1, last_updated = $2 \
             WHERE resource_type = $3 AND id = $4",
        )
        .bind(version_id.get())
        .bind(&at)
        .bind(resource_type.as_str())
        .bind(id.as_str())
        .execute(self.conn())
        .await?;
        self.insert_version(VersionRow {
            resource_type,
            id,
            version_id,
            at: &at,
            operation: "delete",
            resource: None,
            audit: Audit {
                received: None,
                request_id,
            },
        })
        .await?;
        super::search::reindex(self.conn(), resource_type, id, None).await?;
        Ok(Some(version_id))
    }

    /// The ids of current resources matching a search (conditional create
    /// and update inside a transaction), among those `visibility` sees: another
    /// practice's match is no match.
    pub async fn matching_ids(
        &mut self,
        query: &crate::search::SearchQuery,
        visibility: &Visibility,
    ) -> Result<Vec<FhirId>, StoreError> {
        super::search::matching_ids(self.conn(), query, visibility).await
    }

    /// Whether a resource exists that `visibility` does not see (an id the
    /// caller may not write, whatever it holds).
    pub async fn exists_unseen(
        &mut self,
        resource_type: ResourceType,
        id: &FhirId,
        visibility: &Visibility,
    ) -> Result<bool, StoreError> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT owner_ods FROM resources WHERE resource_type = $1 AND id = $2")
                .bind(resource_type.as_str())
                .bind(id.as_str())
                .fetch_optional(self.conn())
                .await?;
        Ok(row.is_some_and(|(owner,)| !visibility.sees(owner.as_deref())))
    }

    /// The current version number of a resource and whether it is deleted.
    async fn current_version(
        &mut self,
        resource_type: ResourceType,
        id: &FhirId,
    ) -> Result<Option<(VersionId, bool)>, StoreError> {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT current_version, deleted FROM resources WHERE resource_type = $1 AND id = $2",
        )
        .bind(resource_type.as_str())
        .bind(id.as_str())
        .fetch_optional(self.conn())
        .await?;
        Ok(row.map(|(version, deleted)| (VersionId::from_i64(version), deleted != 0)))
    }

    /// The current version, as this transaction sees it; `NotFound` when
    /// `visibility` does not see it.
    pub async fn read(
        &mut self,
        resource_type: ResourceType,
        id: &FhirId,
        visibility: &Visibility,
    ) -> Result<ReadOutcome, StoreError> {
        read_current(self.conn(), resource_type, id, visibility).await
    }

    async fn insert_version(&mut self, row: VersionRow<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO resource_versions \
             (resource_type, id, version_id, last_updated, operation, resource, received, request_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(row.resource_type.as_str())
        .bind(row.id.as_str())
        .bind(row.version_id.get())
        .bind(row.at)
        .bind(row.operation)
        .bind(row.resource)
        .bind(row.audit.received)
        .bind(row.audit.request_id)
        .execute(self.conn())
        .await?;
        Ok(())
    }
}

/// Where a version came from.
struct Audit<'a> {
    received: Option<&'a [u8]>,
    request_id: &'a str,
}

/// One row of `resource_versions`: every write (create, update, delete)
/// adds one through [`WriteTx::insert_version`].
struct VersionRow<'a> {
    resource_type: ResourceType,
    id: &'a FhirId,
    version_id: VersionId,
    at: &'a str,
    operation: &'static str,
    /// `None` for a deletion.
    resource: Option<&'a str>,
    audit: Audit<'a>,
}

impl<'a> VersionRow<'a> {
    fn of(
        stored: &'a StoredResource,
        at: &'a str,
        operation: &'static str,
        audit: Audit<'a>,
    ) -> Self {
        Self {
            resource_type: stored.resource_type,
            id: &stored.id,
            version_id: stored.version_id,
            at,
            operation,
            resource: Some(&stored.json),
            audit,
        }
    }
}

fn serialise(
    write: ResourceWrite<'_>,
    version_id: VersionId,
    last_updated: Instant,
) -> Result<(StoredResource, Audit<'_>, Value), StoreError> {
    let stamped = stamp(write.resource, write.id, version_id, last_updated);
    let json = serde_json::to_string(&stamped).map_err(|e| StoreError::Corrupt {
        resource_type: write.resource_type.to_string(),
        id: write.id.to_string(),
        reason: format!("cannot serialise: {e}"),
    })?;
    let stored = StoredResource {
        resource_type: write.resource_type,
        id: write.id.clone(),
        version_id,
        last_updated,
        json,
    };
    let audit = Audit {
        received: write.received,
        request_id: write.request_id,
    };
    Ok((stored, audit, stamped))
}
