//! Resources and their versions in SQL, shared by both backends: compiled
//! into `store::sqlite` and `store::postgres` alike (`#[path]`), each time
//! with that backend's `Db`, `Conn` and `DbRow`, so the SQL text exists once.
//!
//! A write transaction ([`Tx`]) holds every change one request makes (FHIR
//! resource versions, the referral record, the outbox); dropped without
//! commit it rolls back.

use serde_json::Value;

use super::{Backend, CONDITION_LOCK, Conn, READS_STAY_CURRENT, ROW_LOCK, Tx};
use crate::fhir::resource::{same_content, stamp};
use crate::fhir::{FhirId, Instant, ResourceType, VersionId};
use crate::store::deferred::{Guard, IntoArg, Statement};
use crate::store::{
    CurrentVersion, HistoryOperation, Matched, NewResource, ReadOutcome, ResourceWrite, StoreError,
    StoredResource, Updated, Visibility, WrittenVersion,
};

impl Tx {
    /// Stores a new resource as version 1.
    pub(in crate::store) async fn create(
        &mut self,
        write: ResourceWrite<'_>,
    ) -> Result<StoredResource, StoreError> {
        let version_id = VersionId::FIRST;
        let last_updated = self.timestamp().await?;
        let owner = write.owner;
        let (stored, audit, stamped) = serialise(write, version_id, last_updated)?;
        let at = last_updated.to_fhir();
        self.execute(
            Statement::new(
                "INSERT INTO resources (resource_type, id, current_version, deleted, last_updated, owner_ods) \
                 VALUES ($1, $2, $3, 0, $4, $5)",
            )
            .bind(stored.resource_type.as_str())
            .bind(stored.id.as_str())
            .bind(version_id.get())
            .bind(at.as_str())
            .bind(owner),
        )
        .await?;
        self.insert_version(VersionRow::of(&stored, &at, "create", audit))
            .await?;
        self.written.push(WrittenVersion {
            resource_type: stored.resource_type,
            id: stored.id.clone(),
            version_id,
            recorded: last_updated,
            operation: HistoryOperation::Create,
            owner: owner.map(str::to_owned),
        });
        // Written at the next index read or the commit, after the resource row they
        // refer to. The INSERT above proved the id new (deleted resources keep their
        // row), so it has no index rows to clear: three DELETEs fewer while the
        // writer is held.
        self.pending_index
            .add(stored.resource_type, &stored.id, &stamped)?;
        Ok(stored)
    }

    /// Stores new resources, each as version 1: one INSERT per table for all of them
    /// (their Provenance, a Bundle's new entries), where [`Tx::create`] takes two per
    /// resource. Returns them in the order given.
    pub(in crate::store) async fn create_all(
        &mut self,
        writes: Vec<ResourceWrite<'_>>,
    ) -> Result<Vec<StoredResource>, StoreError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let version_id = VersionId::FIRST;
        let last_updated = self.timestamp().await?;
        let at = last_updated.to_fhir();
        let mut rows = Vec::with_capacity(writes.len());
        for write in writes {
            let owner = write.owner;
            let (stored, audit, stamped) = serialise(write, version_id, last_updated)?;
            rows.push((stored, audit, stamped, owner));
        }
        for chunk in rows.chunks(super::search::ROWS_PER_INSERT) {
            let resources = Statement::insert_rows(
                "INSERT INTO resources (resource_type, id, current_version, deleted, last_updated, owner_ods)",
                chunk.iter().map(|(stored, _, _, owner)| {
                    [
                        stored.resource_type.as_str().into_arg(),
                        stored.id.as_str().into_arg(),
                        version_id.get().into_arg(),
                        0_i64.into_arg(),
                        at.as_str().into_arg(),
                        (*owner).into_arg(),
                    ]
                }),
            );
            let versions = Statement::insert_rows(
                "INSERT INTO resource_versions \
                 (resource_type, id, version_id, last_updated, operation, resource, received, request_id)",
                chunk.iter().map(|(stored, audit, _, _)| {
                    [
                        stored.resource_type.as_str().into_arg(),
                        stored.id.as_str().into_arg(),
                        version_id.get().into_arg(),
                        at.as_str().into_arg(),
                        "create".into_arg(),
                        stored.json.as_str().into_arg(),
                        audit.received.into_arg(),
                        audit.request_id.into_arg(),
                    ]
                }),
            );
            for statement in [resources, versions].into_iter().flatten() {
                self.execute(statement).await?;
            }
        }
        let mut created = Vec::with_capacity(rows.len());
        for (stored, _, stamped, owner) in rows {
            self.written.push(WrittenVersion {
                resource_type: stored.resource_type,
                id: stored.id.clone(),
                version_id,
                recorded: last_updated,
                operation: HistoryOperation::Create,
                owner: owner.map(str::to_owned),
            });
            self.pending_index
                .add(stored.resource_type, &stored.id, &stamped)?;
            created.push(stored);
        }
        Ok(created)
    }

    /// Stores a new version of an existing resource. With `expected`, the
    /// current version must be that one (`If-Match`), or nothing is written. A
    /// resource saying what the current version says is not stored again.
    pub(in crate::store) async fn update(
        &mut self,
        write: ResourceWrite<'_>,
        expected: Option<VersionId>,
    ) -> Result<Updated, StoreError> {
        let Some(locked) = self
            .lock_current(write.resource_type, write.id, true)
            .await?
        else {
            return Err(not_found(write.resource_type, write.id));
        };
        let current = locked.version;
        if let Some(expected) = expected
            && expected != current
        {
            return Err(conflict(write.resource_type, write.id, expected, current));
        }
        // A no-op update (HAPI's term): the current version under the row lock taken
        // above, so no other writer can change it before this transaction ends.
        if !locked.deleted {
            let stored = match locked.stored {
                Some(stored) => Some(stored),
                // Replaced while the lock was awaited (PostgreSQL): the row is the new
                // one, the version joined to it still the old, so read it afresh.
                None => match read_current(
                    self.read_conn().await?,
                    write.resource_type,
                    write.id,
                    &Visibility::All,
                )
                .await?
                {
                    ReadOutcome::Found(stored) => Some(stored),
                    _ => None,
                },
            };
            if let Some(stored) = stored
                && same_content(&parse_stored(&stored)?, &write.resource)
            {
                return Ok(Updated::Unchanged(stored));
            }
        }
        let stored = self
            .write_version(write, current, locked.deleted, locked.owner)
            .await?;
        Ok(Updated::Written(stored))
    }

    /// [`Tx::update`] from the version this transaction read ([`Tx::read_current`]),
    /// that version expected. Where another transaction may have written since
    /// (`READS_STAY_CURRENT` false: PostgreSQL), the row is locked and its version
    /// checked first; on SQLite's single writer the read is still current, so nothing
    /// is read again.
    pub(in crate::store) async fn update_current(
        &mut self,
        write: ResourceWrite<'_>,
        current: CurrentVersion,
    ) -> Result<Updated, StoreError> {
        let CurrentVersion { stored, owner } = current;
        let expected = stored.version_id;
        if !READS_STAY_CURRENT {
            let Some(locked) = self
                .lock_current(write.resource_type, write.id, false)
                .await?
            else {
                return Err(not_found(write.resource_type, write.id));
            };
            if locked.version != expected {
                return Err(conflict(
                    write.resource_type,
                    write.id,
                    expected,
                    locked.version,
                ));
            }
        }
        if same_content(&parse_stored(&stored)?, &write.resource) {
            return Ok(Updated::Unchanged(stored));
        }
        let stored = self.write_version(write, expected, false, owner).await?;
        Ok(Updated::Written(stored))
    }

    /// Writes the version after `current` (`deleted`: a deletion, so this one is a
    /// create again), the resource's owner so far `owner`: one queued UPDATE of the
    /// resource row, its version row, its index rows.
    async fn write_version(
        &mut self,
        write: ResourceWrite<'_>,
        current: VersionId,
        deleted: bool,
        owner: Option<String>,
    ) -> Result<StoredResource, StoreError> {
        let version_id = current.next();
        let last_updated = self.timestamp().await?;
        // The owner after the write (set by the first, never changed), as the
        // COALESCE below leaves it: the Provenance's.
        let owner = owner.or_else(|| write.owner.map(str::to_owned));
        let (stored, audit, stamped) = serialise(write, version_id, last_updated)?;
        let at = last_updated.to_fhir();
        self.execute(
            Statement::new(
                "UPDATE resources SET current_version = $1, deleted = 0, last_updated = $2, \
                 owner_ods = COALESCE(owner_ods, $3) \
                 WHERE resource_type = $4 AND id = $5",
            )
            .bind(version_id.get())
            .bind(at.as_str())
            .bind(owner.as_deref())
            .bind(stored.resource_type.as_str())
            .bind(stored.id.as_str()),
        )
        .await?;
        let (operation, written) = if deleted {
            ("create", HistoryOperation::Create)
        } else {
            ("update", HistoryOperation::Update)
        };
        self.insert_version(VersionRow::of(&stored, &at, operation, audit))
            .await?;
        self.written.push(WrittenVersion {
            resource_type: stored.resource_type,
            id: stored.id.clone(),
            version_id,
            recorded: last_updated,
            operation: written,
            owner,
        });
        self.replace_index(stored.resource_type, &stored.id, Some(&stamped))
            .await?;
        Ok(stored)
    }

    /// Marks a resource deleted by adding a deletion version. Returns the
    /// deletion's version, or `None` if there was no such (undeleted) resource.
    pub(in crate::store) async fn delete(
        &mut self,
        resource_type: ResourceType,
        id: &FhirId,
        request_id: &str,
    ) -> Result<Option<VersionId>, StoreError> {
        let Some(Locked {
            version: current,
            deleted: false,
            owner,
            ..
        }) = self.lock_current(resource_type, id, false).await?
        else {
            return Ok(None);
        };
        let version_id = current.next();
        let recorded = self.timestamp().await?;
        let at = recorded.to_fhir();
        self.execute(
            Statement::new(
                "UPDATE resources SET current_version = $1, deleted = 1, last_updated = $2 \
                 WHERE resource_type = $3 AND id = $4",
            )
            .bind(version_id.get())
            .bind(at.as_str())
            .bind(resource_type.as_str())
            .bind(id.as_str()),
        )
        .await?;
        self.written.push(WrittenVersion {
            resource_type,
            id: id.clone(),
            version_id,
            recorded,
            operation: HistoryOperation::Delete,
            owner,
        });
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
        self.replace_index(resource_type, id, None).await?;
        Ok(Some(version_id))
    }

    /// The current resources matching each of several conditions (a conditional create's
    /// `If-None-Exist`, a transaction Bundle's conditional entries), among those
    /// `visibility` sees, in as few statements as the backend allows: for each, in the
    /// order given, its matches and, when it matches exactly one resource, that
    /// resource's current version, to answer with or update from ([`Tx::update_from`])
    /// without reading it again.
    pub(in crate::store) async fn matching_current(
        &mut self,
        queries: &[&crate::search::SearchQuery],
        visibility: &Visibility,
    ) -> Result<Vec<Matched>, StoreError> {
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        // The matches must see every resource this transaction wrote.
        self.flush_index().await?;
        let mut found =
            super::search::matching_current(self.read_conn().await?, queries, visibility).await?;
        if let Some(lock) = CONDITION_LOCK {
            // Where transactions write side by side (PostgreSQL), a condition that matched
            // nothing may be met by another transaction creating what it names: that
            // condition's lock, then its match again, so that of two such transactions the
            // second finds the first's resource instead of creating another. A condition
            // that matched is updated under its row's lock (`Tx::update`) and needs none,
            // so a practice's Bundles, which all name its Organization, do not wait for
            // each other's commits.
            let unmatched: Vec<usize> = (0..found.len())
                .filter(|&at| found.get(at).is_some_and(Vec::is_empty))
                .collect();
            if !unmatched.is_empty() {
                let again: Vec<&crate::search::SearchQuery> = unmatched
                    .iter()
                    .filter_map(|&at| queries.get(at).copied())
                    .collect();
                self.lock_conditions(lock, &again, visibility).await?;
                let refound =
                    super::search::matching_current(self.read_conn().await?, &again, visibility)
                        .await?;
                for (at, rows) in unmatched.into_iter().zip(refound) {
                    if let Some(slot) = found.get_mut(at) {
                        *slot = rows;
                    }
                }
            }
        }
        matched_each(queries, found, visibility)
    }

    /// See `WriteTx::expect_matching`: `seen` is the answer, confirmed by a guard on
    /// the writer, for a write whose guards run there (SQLite's, not on the writer yet)
    /// and whose conditions each matched nothing or one resource; otherwise the
    /// conditions are matched now.
    pub(in crate::store) async fn expect_matching(
        &mut self,
        queries: &[&crate::search::SearchQuery],
        visibility: &Visibility,
        seen: Vec<Matched>,
    ) -> Result<Vec<Matched>, StoreError> {
        let confirmable = self.guards_run_on_the_writer()
            && seen.len() == queries.len()
            && seen.iter().all(Matched::is_confirmable);
        if !confirmable {
            return self.matching_current(queries, visibility).await;
        }
        for guard in super::search::matches_changed(queries, visibility, &seen) {
            self.fail_if_found(Guard::Matches, guard).await?;
        }
        Ok(seen)
    }

    /// Takes each condition's advisory lock ([`condition_key`]), in one order whatever
    /// the caller's, so two transactions never wait on each other's.
    async fn lock_conditions(
        &mut self,
        lock: &'static str,
        queries: &[&crate::search::SearchQuery],
        visibility: &Visibility,
    ) -> Result<(), StoreError> {
        let mut conditions: Vec<String> = queries
            .iter()
            .map(|query| condition_key(query, visibility))
            .collect();
        conditions.sort_unstable();
        conditions.dedup();
        for condition in conditions {
            sqlx::query(lock)
                .bind(condition)
                .execute(self.conn().await?)
                .await?;
        }
        Ok(())
    }

    /// [`Tx::update`] with no version expected, from a current version this transaction
    /// read ([`Tx::matching_current`]). On SQLite's single writer that version is still
    /// current, so nothing is read again. Where another transaction may have written
    /// since (PostgreSQL), a change is [`Tx::update`]: the row locked, and the update
    /// applied to whichever version is current then, as a conditional update always was.
    pub(in crate::store) async fn update_from(
        &mut self,
        write: ResourceWrite<'_>,
        current: CurrentVersion,
    ) -> Result<Updated, StoreError> {
        if READS_STAY_CURRENT {
            return self.update_current(write, current).await;
        }
        // A resource saying what the version read says is answered with that version, as
        // a read in this transaction would be, without waiting for its row: every Bundle
        // from one practice names its Organization, and would otherwise wait for the
        // commit of the one before it.
        if same_content(&parse_stored(&current.stored)?, &write.resource) {
            return Ok(Updated::Unchanged(current.stored));
        }
        self.update(write, None).await
    }

    /// Writes the index rows this transaction has deferred (see `PendingIndex`):
    /// before it reads the index, and before it commits.
    pub(in crate::store) async fn flush_index(&mut self) -> Result<(), StoreError> {
        for statement in self.pending_index.take_statements() {
            self.execute(statement).await?;
        }
        Ok(())
    }

    /// Replaces the index rows of a resource with those of `resource` (`None`: it was
    /// deleted): its stored rows are deleted now, its new ones deferred.
    async fn replace_index(
        &mut self,
        resource_type: ResourceType,
        id: &FhirId,
        resource: Option<&Value>,
    ) -> Result<(), StoreError> {
        self.pending_index.forget(resource_type, id);
        for statement in super::search::clear_statements(resource_type, id) {
            self.execute(statement).await?;
        }
        if let Some(resource) = resource {
            self.pending_index.add(resource_type, id, resource)?;
        }
        Ok(())
    }

    /// Whether a resource exists that `visibility` does not see.
    pub(in crate::store) async fn exists_unseen(
        &mut self,
        resource_type: ResourceType,
        id: &FhirId,
        visibility: &Visibility,
    ) -> Result<bool, StoreError> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT owner_ods FROM resources WHERE resource_type = $1 AND id = $2")
                .bind(resource_type.as_str())
                .bind(id.as_str())
                .fetch_optional(self.read_conn().await?)
                .await?;
        Ok(row.is_some_and(|(owner,)| !visibility.sees(owner.as_deref())))
    }

    /// The resource row, read to be changed: its current version, whether it is
    /// deleted, its owner and (with `with_stored`) the current version's resource, in
    /// one statement. ROW_LOCK (PostgreSQL: `FOR UPDATE OF r`) holds a concurrent
    /// writer of the same resource until this transaction ends; it then reads the new
    /// version, so of two `If-Match` updates one gets 412, none is lost.
    async fn lock_current(
        &mut self,
        resource_type: ResourceType,
        id: &FhirId,
        with_stored: bool,
    ) -> Result<Option<Locked>, StoreError> {
        let row: Option<LockedRow> = if with_stored {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT r.current_version, r.deleted, r.owner_ods, \
                 v.version_id, v.last_updated, v.resource \
                 FROM resources r LEFT JOIN resource_versions v \
                   ON v.resource_type = r.resource_type AND v.id = r.id \
                  AND v.version_id = r.current_version \
                 WHERE r.resource_type = $1 AND r.id = $2{ROW_LOCK}"
            )))
        } else {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT r.current_version, r.deleted, r.owner_ods, \
                 CAST(NULL AS BIGINT) AS version_id, CAST(NULL AS TEXT) AS last_updated, \
                 CAST(NULL AS TEXT) AS resource \
                 FROM resources r WHERE r.resource_type = $1 AND r.id = $2{ROW_LOCK}"
            )))
        }
        .bind(resource_type.as_str())
        .bind(id.as_str())
        .fetch_optional(self.read_conn().await?)
        .await?;
        row.map(|row| row.into_locked(resource_type, id))
            .transpose()
    }

    /// The current version, as this transaction sees it, to update from
    /// ([`Tx::update_current`]); `None` when there is none or `visibility` does not
    /// see it.
    pub(in crate::store) async fn read_current(
        &mut self,
        resource_type: ResourceType,
        id: &FhirId,
        visibility: &Visibility,
    ) -> Result<Option<CurrentVersion>, StoreError> {
        let row = current_row(self.read_conn().await?, resource_type, id).await?;
        let owner = row.as_ref().and_then(|row| row.owner_ods.clone());
        Ok(match visible_outcome(resource_type, id, row, visibility)? {
            ReadOutcome::Found(stored) => Some(CurrentVersion { stored, owner }),
            _ => None,
        })
    }

    /// The current version, as this transaction sees it.
    pub(in crate::store) async fn read(
        &mut self,
        resource_type: ResourceType,
        id: &FhirId,
        visibility: &Visibility,
    ) -> Result<ReadOutcome, StoreError> {
        read_current(self.read_conn().await?, resource_type, id, visibility).await
    }

    async fn insert_version(&mut self, row: VersionRow<'_>) -> Result<(), StoreError> {
        self.execute(
            Statement::new(
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
            .bind(row.audit.request_id),
        )
        .await
    }
}

/// What one condition matched: its `rows` (from `search::matching_current`) as ids, and
/// the one match's current version when there is exactly one that `visibility` sees.
fn matched(
    resource_type: ResourceType,
    rows: Vec<super::search::MatchedRow>,
    visibility: &Visibility,
) -> Result<Matched, StoreError> {
    let ids = rows
        .iter()
        .map(|row| {
            FhirId::parse(&row.id).map_err(|e| StoreError::Corrupt {
                resource_type: resource_type.to_string(),
                id: row.id.clone(),
                reason: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut current = None;
    if let ([id], Some(row)) = (ids.as_slice(), rows.into_iter().next()) {
        let owner = row.version.owner_ods.clone();
        if let ReadOutcome::Found(stored) =
            visible_outcome(resource_type, id, Some(row.version), visibility)?
        {
            current = Some(CurrentVersion { stored, owner });
        }
    }
    Ok(Matched { ids, current })
}

impl Backend {
    /// See `Store::committed_matching_current`.
    pub(in crate::store) async fn committed_matching_current(
        &self,
        queries: &[&crate::search::SearchQuery],
        visibility: &Visibility,
    ) -> Result<Vec<Matched>, StoreError> {
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        // On a backend's own reader on this thread where it has one (SQLite), else a
        // pool reader.
        let found = match self.direct_matching_rows(queries, visibility).await? {
            Some(found) => found,
            None => {
                super::search::matching_current(
                    &mut *self.readers.acquire().await?,
                    queries,
                    visibility,
                )
                .await?
            }
        };
        matched_each(queries, found, visibility)
    }
}

/// [`matched`] for each of `queries`, from its rows in `found` (in the same order).
fn matched_each(
    queries: &[&crate::search::SearchQuery],
    found: Vec<Vec<super::search::MatchedRow>>,
    visibility: &Visibility,
) -> Result<Vec<Matched>, StoreError> {
    found
        .into_iter()
        .zip(queries)
        .map(|(rows, query)| matched(query.resource_type, rows, visibility))
        .collect()
}

/// A condition's advisory lock key (PostgreSQL): the condition as it is normalised (its
/// self link) and whose resources it may match, so the same condition from one practice
/// is one lock.
fn condition_key(query: &crate::search::SearchQuery, visibility: &Visibility) -> String {
    format!(
        "{} {} {}",
        query.resource_type,
        query.self_query(),
        visibility.lock_key()
    )
}

/// Where a version came from.
struct Audit<'a> {
    received: Option<&'a [u8]>,
    request_id: &'a str,
}

/// One row of `resource_versions`: every write (create, update, delete)
/// adds one through [`Tx::insert_version`].
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

/// A stored version's resource, as JSON to compare.
fn parse_stored(stored: &StoredResource) -> Result<Value, StoreError> {
    serde_json::from_str(&stored.json).map_err(|e| StoreError::Corrupt {
        resource_type: stored.resource_type.to_string(),
        id: stored.id.to_string(),
        reason: format!("the stored version is not JSON: {e}"),
    })
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

impl Backend {
    pub(in crate::store) async fn create(
        &self,
        new: NewResource<'_>,
    ) -> Result<StoredResource, StoreError> {
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

    pub(in crate::store) async fn read(
        &self,
        resource_type: ResourceType,
        id: &FhirId,
        visibility: &Visibility,
    ) -> Result<ReadOutcome, StoreError> {
        let mut conn = self.readers.acquire().await?;
        read_current(&mut conn, resource_type, id, visibility).await
    }

    pub(in crate::store) async fn vread(
        &self,
        resource_type: ResourceType,
        id: &FhirId,
        version: VersionId,
        visibility: &Visibility,
    ) -> Result<ReadOutcome, StoreError> {
        let row: Option<VisibleVersionRow> = sqlx::query_as(
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

    pub(in crate::store) async fn delete(
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

    pub(in crate::store) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }

    pub(in crate::store) async fn close(&self) {
        self.close_direct_readers();
        self.readers.close().await;
        self.writer.close().await;
    }
}

/// The current version of a resource, on any connection (a reader, or a
/// writer inside its transaction).
pub(super) async fn read_current(
    conn: &mut Conn,
    resource_type: ResourceType,
    id: &FhirId,
    visibility: &Visibility,
) -> Result<ReadOutcome, StoreError> {
    let row = current_row(conn, resource_type, id).await?;
    visible_outcome(resource_type, id, row, visibility)
}

/// The current version's row, with its resource's owner.
async fn current_row(
    conn: &mut Conn,
    resource_type: ResourceType,
    id: &FhirId,
) -> Result<Option<VisibleVersionRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT v.version_id, v.last_updated, v.resource, r.owner_ods \
         FROM resources r JOIN resource_versions v \
           ON v.resource_type = r.resource_type AND v.id = r.id AND v.version_id = r.current_version \
         WHERE r.resource_type = $1 AND r.id = $2",
    )
    .bind(resource_type.as_str())
    .bind(id.as_str())
    .fetch_optional(conn)
    .await?)
}

/// A resource row as [`Tx::lock_current`] reads it.
#[derive(sqlx::FromRow)]
struct LockedRow {
    current_version: i64,
    deleted: i64,
    owner_ods: Option<String>,
    /// The current version's row (`None` when not asked for).
    version_id: Option<i64>,
    last_updated: Option<String>,
    resource: Option<String>,
}

/// What [`Tx::lock_current`] found.
struct Locked {
    version: VersionId,
    deleted: bool,
    owner: Option<String>,
    /// The current version's resource, when asked for, not deleted, and read with the
    /// row: on PostgreSQL a row replaced while its lock was awaited comes back new,
    /// joined to the version it had when the statement began (the other transaction's
    /// version is not in the statement's snapshot), so none.
    stored: Option<StoredResource>,
}

impl LockedRow {
    fn into_locked(self, resource_type: ResourceType, id: &FhirId) -> Result<Locked, StoreError> {
        let version = VersionId::from_i64(self.current_version);
        let stored = match (self.version_id, self.last_updated, self.resource) {
            (Some(read), Some(last_updated), Some(json)) if read == self.current_version => {
                let last_updated =
                    Instant::parse(&last_updated).map_err(|e| StoreError::Corrupt {
                        resource_type: resource_type.to_string(),
                        id: id.to_string(),
                        reason: e.to_string(),
                    })?;
                Some(StoredResource {
                    resource_type,
                    id: id.clone(),
                    version_id: version,
                    last_updated,
                    json,
                })
            }
            _ => None,
        };
        Ok(Locked {
            version,
            deleted: self.deleted != 0,
            owner: self.owner_ods,
            stored,
        })
    }
}

fn not_found(resource_type: ResourceType, id: &FhirId) -> StoreError {
    StoreError::NotFound {
        resource_type: resource_type.to_string(),
        id: id.to_string(),
    }
}

fn conflict(
    resource_type: ResourceType,
    id: &FhirId,
    expected: VersionId,
    current: VersionId,
) -> StoreError {
    StoreError::VersionConflict {
        resource_type: resource_type.to_string(),
        id: id.to_string(),
        expected,
        current,
    }
}

/// One version of a resource (its JSON `None`: a deletion) with the resource's
/// `owner_ods`, which decides who sees it.
#[derive(sqlx::FromRow)]
pub(super) struct VisibleVersionRow {
    version_id: i64,
    last_updated: String,
    resource: Option<String>,
    owner_ods: Option<String>,
}

/// A row read with its resource's `owner_ods`: the outcome when `visibility`
/// sees it, `NotFound` otherwise (another practice's resource is not there, as
/// far as the caller can tell: not even deleted).
fn visible_outcome(
    resource_type: ResourceType,
    id: &FhirId,
    row: Option<VisibleVersionRow>,
    visibility: &Visibility,
) -> Result<ReadOutcome, StoreError> {
    let Some(row) = row else {
        return Ok(ReadOutcome::NotFound);
    };
    if !visibility.sees(row.owner_ods.as_deref()) {
        return Ok(ReadOutcome::NotFound);
    }
    row.into_domain(resource_type, id)
}

impl VisibleVersionRow {
    /// A row read other than through sqlx (SQLite's `direct::Readers`).
    #[allow(dead_code, reason = "used by the SQLite backend only")]
    pub(super) fn new(
        version_id: i64,
        last_updated: String,
        resource: Option<String>,
        owner_ods: Option<String>,
    ) -> Self {
        Self {
            version_id,
            last_updated,
            resource,
            owner_ods,
        }
    }

    fn into_domain(
        self,
        resource_type: ResourceType,
        id: &FhirId,
    ) -> Result<ReadOutcome, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
            reason,
        };
        let version_id = VersionId::from_i64(self.version_id);
        let last_updated =
            Instant::parse(&self.last_updated).map_err(|e| corrupt(e.to_string()))?;
        Ok(match self.resource {
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
}
