//! A write transaction: every change one request makes (FHIR resource
//! versions, the referral record, the outbox) commits together or not at all.
//!
//! Dropping a `WriteTx` without [`WriteTx::commit`] rolls it back, so an
//! error anywhere in a request (`?`) leaves the database as it was.

use serde_json::Value;

use super::{
    HistoryOperation, ReadOutcome, StoreError, StoredResource, Visibility, dispatch, dispatch_write,
};
use crate::fhir::{FhirId, Instant, ResourceType, VersionId};

/// An open write transaction, on whichever backend the store uses.
#[derive(Debug)]
pub enum WriteTx {
    /// On SQLite's single writer connection.
    Sqlite(super::sqlite::Tx),
    /// On a PostgreSQL connection.
    Postgres(super::postgres::Tx),
}

impl From<super::sqlite::Tx> for WriteTx {
    fn from(tx: super::sqlite::Tx) -> Self {
        WriteTx::Sqlite(tx)
    }
}

impl From<super::postgres::Tx> for WriteTx {
    fn from(tx: super::postgres::Tx) -> Self {
        WriteTx::Postgres(tx)
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

/// A version a transaction wrote: what its Provenance records (`WriteTx::take_written`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenVersion {
    /// The resource's type.
    pub resource_type: ResourceType,
    /// Its id.
    pub id: FhirId,
    /// The version written.
    pub version_id: VersionId,
    /// When it was written (the version's `meta.lastUpdated`).
    pub recorded: Instant,
    /// Create (a first version, or one after a deletion), update or delete.
    pub operation: HistoryOperation,
    /// The practice that owns the resource after the write (see [`Visibility`]).
    pub owner: Option<String>,
}

/// What an update did.
#[derive(Debug)]
pub enum Updated {
    /// A new version was stored: the version now current.
    Written(StoredResource),
    /// The resource said what the current version says already (ignoring what the
    /// server stamps: `fhir::resource::same_content`), so nothing was stored: no
    /// version, no index change, no `lastUpdated` moved for a GP's pull to see; the
    /// current version, as a "no-op update" answers with it.
    Unchanged(StoredResource),
}

impl Updated {
    /// The version now current, written or not.
    pub fn stored(&self) -> &StoredResource {
        match self {
            Updated::Written(stored) | Updated::Unchanged(stored) => stored,
        }
    }

    /// [`Updated::stored`], taken.
    pub fn into_stored(self) -> StoredResource {
        match self {
            Updated::Written(stored) | Updated::Unchanged(stored) => stored,
        }
    }

    /// Whether a new version was stored.
    pub fn changed(&self) -> bool {
        matches!(self, Updated::Written(_))
    }
}

/// A resource's current version as a write transaction read it ([`WriteTx::read_current`]),
/// to update it from ([`WriteTx::update_current`]) without reading it again.
#[derive(Debug, Clone)]
pub struct CurrentVersion {
    pub(super) stored: StoredResource,
    /// Its practice (see [`ResourceWrite::owner`]): the owner after an update from it.
    pub(super) owner: Option<String>,
}

impl CurrentVersion {
    /// The version read.
    pub fn stored(&self) -> &StoredResource {
        &self.stored
    }

    /// [`CurrentVersion::stored`], taken.
    pub fn into_stored(self) -> StoredResource {
        self.stored
    }
}

/// What one condition of [`WriteTx::matching_current`] matched.
#[derive(Debug, Default, Clone)]
pub struct Matched {
    /// The matching resources' ids, in id order.
    pub ids: Vec<FhirId>,
    /// The one match's current version, when there is exactly one.
    pub current: Option<CurrentVersion>,
}

impl Matched {
    /// Whether a write can go on from this match as a reader saw it, a guard on the
    /// writer confirming it (`WriteTx::expect_matching`): it matched nothing, or one
    /// resource whose current version was read.
    pub fn is_confirmable(&self) -> bool {
        match self.ids.len() {
            0 => true,
            1 => self.current.is_some(),
            _ => false,
        }
    }
}

impl WriteTx {
    /// The versions this transaction wrote since the last call, oldest first, so the
    /// caller can record who caused them (their Provenance) in the same transaction.
    pub fn take_written(&mut self) -> Vec<WrittenVersion> {
        dispatch!(self, b => b.take_written())
    }

    /// Commits every change. Returns after the commit is durable. Refused
    /// (and rolled back) when the request has timed out (see `CommitGate`).
    pub async fn commit(mut self) -> Result<(), StoreError> {
        // A deferred write (`Store::begin_deferred_write`) waits for SQLite's writer
        // here, before its commit begins: a request that times out while it waits
        // has committed nothing and is dropped.
        dispatch!(&mut self, b => b.take_writer().await)?;
        super::gate::pass()?;
        dispatch!(self, b => b.commit().await)
    }

    /// Stores a new resource as version 1.
    pub async fn create(&mut self, write: ResourceWrite<'_>) -> Result<StoredResource, StoreError> {
        dispatch_write!(self, b => b.create(write).await)
    }

    /// Stores new resources, each as version 1, with one statement per table for all
    /// of them (the Provenance of a request's versions, a Bundle's new entries); returns
    /// them in the order given.
    pub async fn create_all(
        &mut self,
        writes: Vec<ResourceWrite<'_>>,
    ) -> Result<Vec<StoredResource>, StoreError> {
        dispatch_write!(self, b => b.create_all(writes).await)
    }

    /// Stores a new version of an existing resource. With `expected`, the
    /// current version must be that one (`If-Match`), or nothing is written
    /// (checked first: a stale `If-Match` is a conflict even when nothing would
    /// change). A resource that says what the current version says is not stored
    /// again ([`Updated::Unchanged`]).
    pub async fn update(
        &mut self,
        write: ResourceWrite<'_>,
        expected: Option<VersionId>,
    ) -> Result<Updated, StoreError> {
        dispatch_write!(self, b => b.update(write, expected).await)
    }

    /// [`WriteTx::update`] of the version this transaction read ([`WriteTx::read_current`]),
    /// with that version expected: a conflict if another transaction has replaced it since
    /// (as with `If-Match`; checked under the row lock where other transactions can write,
    /// without a statement on SQLite's single writer), and [`Updated::Unchanged`] when the
    /// resource says what it says. `current` must come from this transaction: a version
    /// this transaction itself replaced since is refused (its successor exists), never
    /// written over.
    pub async fn update_current(
        &mut self,
        write: ResourceWrite<'_>,
        current: CurrentVersion,
    ) -> Result<Updated, StoreError> {
        dispatch_write!(self, b => b.update_current(write, current).await)
    }

    /// Marks a resource deleted by adding a deletion version. Returns the
    /// deletion's version, or `None` if there was no such (undeleted) resource.
    pub async fn delete(
        &mut self,
        resource_type: ResourceType,
        id: &FhirId,
        request_id: &str,
    ) -> Result<Option<VersionId>, StoreError> {
        dispatch_write!(self, b => b.delete(resource_type, id, request_id).await)
    }

    /// The current resources matching each of several searches (a conditional create's
    /// `If-None-Exist`, a transaction Bundle's conditional entries), among those
    /// `visibility` sees (another practice's match is no match), in as few statements as
    /// the backend allows, where each condition and then each match's read would be one
    /// round trip with the writer held. For each condition, in the order given, its
    /// matches, and where there is exactly one, its current version to answer with or
    /// update from ([`WriteTx::update_from`]).
    pub async fn matching_current(
        &mut self,
        queries: &[&crate::search::SearchQuery],
        visibility: &Visibility,
    ) -> Result<Vec<Matched>, StoreError> {
        dispatch_write!(self, b => b.matching_current(queries, visibility).await)
    }

    /// [`WriteTx::matching_current`] for conditions a reader has matched already
    /// (`Store::committed_matching_current`), `seen` what it found for each, in the
    /// order given. On SQLite, for a write not yet on the writer (`begin_deferred_write`),
    /// `seen` is the answer, and a guard confirms it on the writer just before the
    /// write's statements run: if any condition then matches otherwise (another write
    /// came between), nothing of the write is kept and its commit fails with
    /// [`StoreError::Overtaken`] once that other write is durable. So a write
    /// whose conditions matched nothing, or one resource each, is built while others
    /// hold the writer. Otherwise (a condition the reader matched several times, a
    /// write on the writer already, PostgreSQL) it matches now, as
    /// [`WriteTx::matching_current`] does.
    pub async fn expect_matching(
        &mut self,
        queries: &[&crate::search::SearchQuery],
        visibility: &Visibility,
        seen: Vec<Matched>,
    ) -> Result<Vec<Matched>, StoreError> {
        dispatch_write!(self, b => b.expect_matching(queries, visibility, seen).await)
    }

    /// [`WriteTx::update`] with no version expected, from the current version this
    /// transaction read ([`WriteTx::matching_current`]): the update applies to whichever
    /// version is current when it runs (on SQLite's single writer, the one read, so it
    /// is not read again).
    pub async fn update_from(
        &mut self,
        write: ResourceWrite<'_>,
        current: CurrentVersion,
    ) -> Result<Updated, StoreError> {
        dispatch_write!(self, b => b.update_from(write, current).await)
    }

    /// Whether a resource exists that `visibility` does not see (an id the
    /// caller may not write, whatever it holds).
    pub async fn exists_unseen(
        &mut self,
        resource_type: ResourceType,
        id: &FhirId,
        visibility: &Visibility,
    ) -> Result<bool, StoreError> {
        dispatch_write!(self, b => b.exists_unseen(resource_type, id, visibility).await)
    }

    /// The current version, as this transaction sees it, to update with
    /// [`WriteTx::update_current`]; `None` when there is none (no such resource, or
    /// deleted) or `visibility` does not see it. It takes no lock: the update checks.
    pub async fn read_current(
        &mut self,
        resource_type: ResourceType,
        id: &FhirId,
        visibility: &Visibility,
    ) -> Result<Option<CurrentVersion>, StoreError> {
        dispatch_write!(self, b => b.read_current(resource_type, id, visibility).await)
    }

    /// The current version, as this transaction sees it; `NotFound` when
    /// `visibility` does not see it.
    pub async fn read(
        &mut self,
        resource_type: ResourceType,
        id: &FhirId,
        visibility: &Visibility,
    ) -> Result<ReadOutcome, StoreError> {
        dispatch_write!(self, b => b.read(resource_type, id, visibility).await)
    }
}
