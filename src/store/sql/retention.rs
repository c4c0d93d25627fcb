//! Retention, purge and erasure in SQL, shared by both backends (compiled into each of
//! `store::sqlite` and `store::postgres` with that backend's types): erasing one
//! referral and everything that belongs to it, and the three purges of
//! `[retention]` (raw request bodies, closed referrals, delivered outbox rows), each
//! counted first for `sprig purge --dry-run`.
//!
//! Every statement names the rows it removes by key or by a bound cut-off; nothing here
//! reads or returns the content it removes.

use std::collections::BTreeSet;

use super::{Backend, Conn, Tx};
use crate::referral::stage::Stage;
use crate::search::ParamType;
use crate::search::params::TABLE;
use crate::store::StoreError;
use crate::store::audit::AuditRecord;
use crate::store::retention::{PurgeKind, Removed};

/// The stage codes that close a referral, as SQL text (fixed codes, never input).
fn closed_stage_list() -> String {
    Stage::ALL
        .into_iter()
        .filter(|stage| !stage.is_open())
        .map(|stage| format!("'{}'", stage.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The resources whose references name a resource: `$1` its type, `$2` its id.
///
/// Read through `search_references_by_target_id (resource_type, param, target_id)`,
/// one probe per (type, reference parameter) of `search::params::TABLE`, the only
/// pairs the index holds: erasure is rare, and a probe per pair (a few dozen) spares
/// every reference row of every write an index entry of its own (migration 0017
/// dropped `search_references_by_target (target_id, target_type)`, which only this
/// read used).
pub(in crate::store) fn referrers_sql() -> String {
    let quoted = |names: &mut Vec<&str>| {
        names.sort_unstable();
        names.dedup();
        names
            .iter()
            .map(|name| format!("'{name}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut types = Vec::new();
    let mut params = Vec::new();
    for (resource_type, type_params) in TABLE {
        for param in type_params
            .iter()
            .filter(|p| p.kind == ParamType::Reference)
        {
            types.push(*resource_type);
            params.push(param.name);
        }
    }
    // Fixed names from the parameter table, never input.
    format!(
        "SELECT resource_type, id FROM search_references \
         WHERE resource_type IN ({}) AND param IN ({}) AND target_id = $2 AND target_type = $1",
        quoted(&mut types),
        quoted(&mut params)
    )
}

/// Rows changed per statement of a purge: a large first purge runs as many short
/// transactions, so the single SQLite writer is never held for long.
const PURGE_BATCH: i64 = 500;

/// Closed referrals erased per transaction of the closed-referral purge.
const REFERRAL_BATCH: i64 = 20;

/// SQL selecting the ids of closed referrals whose closure (the last stage change) is
/// before `$1`, with no outbox row still to deliver, oldest id first.
fn closed_referrals_sql(select: &str, limit: bool) -> String {
    format!(
        "SELECT {select} FROM referrals r \
         WHERE r.stage IN ({closed}) \
           AND COALESCE((SELECT MAX(h.at) FROM referral_stage_history h WHERE h.referral_id = r.id), \
                        r.updated_at) < $1 \
           AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.referral_id = r.id AND o.state <> 'delivered'){tail}",
        closed = closed_stage_list(),
        tail = if limit { " ORDER BY r.id LIMIT $2" } else { "" },
    )
}

/// SQL counting closed referrals past `$1` held back by outbox rows not yet delivered.
fn held_referrals_sql() -> String {
    format!(
        "SELECT COUNT(*) FROM referrals r \
         WHERE r.stage IN ({closed}) \
           AND COALESCE((SELECT MAX(h.at) FROM referral_stage_history h WHERE h.referral_id = r.id), \
                        r.updated_at) < $1 \
           AND EXISTS (SELECT 1 FROM outbox o WHERE o.referral_id = r.id AND o.state <> 'delivered')",
        closed = closed_stage_list(),
    )
}

const RAW_VERSION_COUNT: &str =
    "SELECT COUNT(*) FROM resource_versions WHERE received IS NOT NULL AND last_updated < $1";
const RAW_SUBMISSION_COUNT: &str =
    "SELECT COUNT(*) FROM referral_submissions WHERE length(body) > 0 AND received_at < $1";
const RAW_MESSAGE_COUNT: &str = "SELECT COUNT(*) FROM message_requests WHERE received_at < $1";
const DELIVERED_COUNT: &str =
    "SELECT COUNT(*) FROM outbox WHERE state = 'delivered' AND delivered_at < $1";

async fn count(conn: &mut Conn, sql: &str, cutoff: &str) -> Result<u64, StoreError> {
    let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(cutoff)
        .fetch_one(conn)
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// One batch of a purge kind (not the closed referrals): how many rows it changed.
async fn purge_batch(conn: &mut Conn, kind: PurgeKind, cutoff: &str) -> Result<u64, StoreError> {
    let statements: &[&str] = match kind {
        PurgeKind::RawBodies => &[
            // The body received is dropped; the version it made stays.
            "UPDATE resource_versions SET received = NULL \
             WHERE (resource_type, id, version_id) IN \
               (SELECT resource_type, id, version_id FROM resource_versions \
                WHERE received IS NOT NULL AND last_updated < $1 LIMIT $2)",
            // The submission row stays (its answer repeats a resubmission's), emptied.
            "UPDATE referral_submissions SET body = $3 \
             WHERE (referral_id, seq) IN \
               (SELECT referral_id, seq FROM referral_submissions \
                WHERE length(body) > 0 AND received_at < $1 LIMIT $2)",
            // A message's replay record is its body: an X-Request-ID older than this is
            // no longer recognised (a resubmission is still, by the referral's identifier).
            "DELETE FROM message_requests WHERE (sender, request_id) IN \
               (SELECT sender, request_id FROM message_requests WHERE received_at < $1 LIMIT $2)",
        ],
        PurgeKind::DeliveredOutbox => &["DELETE FROM outbox WHERE seq IN \
               (SELECT seq FROM outbox WHERE state = 'delivered' AND delivered_at < $1 LIMIT $2)"],
        PurgeKind::ClosedReferrals => &[],
    };
    let mut changed = 0;
    for statement in statements {
        let mut query = sqlx::query(*statement).bind(cutoff).bind(PURGE_BATCH);
        if statement.contains("$3") {
            query = query.bind(Vec::<u8>::new());
        }
        changed += query.execute(&mut *conn).await?.rows_affected();
    }
    Ok(changed)
}

impl Backend {
    /// How many rows each purge would remove now, for the cut-offs given; the closed
    /// referrals held back by undelivered outbox rows are counted apart.
    pub(in crate::store) async fn purge_counts(
        &self,
        kind: PurgeKind,
        cutoff: &str,
    ) -> Result<Vec<(&'static str, u64)>, StoreError> {
        let s = self;
        let mut conn = s.readers.acquire().await?;
        Ok(match kind {
            PurgeKind::RawBodies => vec![
                (
                    "resource-version-bodies",
                    count(&mut conn, RAW_VERSION_COUNT, cutoff).await?,
                ),
                (
                    "submission-bodies",
                    count(&mut conn, RAW_SUBMISSION_COUNT, cutoff).await?,
                ),
                (
                    "message-replay-records",
                    count(&mut conn, RAW_MESSAGE_COUNT, cutoff).await?,
                ),
            ],
            PurgeKind::ClosedReferrals => vec![
                (
                    "closed-referrals",
                    count(&mut conn, &closed_referrals_sql("COUNT(*)", false), cutoff).await?,
                ),
                (
                    "closed-referrals-held-by-undelivered-updates",
                    count(&mut conn, &held_referrals_sql(), cutoff).await?,
                ),
            ],
            PurgeKind::DeliveredOutbox => vec![(
                "delivered-outbox-rows",
                count(&mut conn, DELIVERED_COUNT, cutoff).await?,
            )],
        })
    }

    /// Runs one transaction of the purge of `kind` before `cutoff`, with an audit row
    /// (`audit`, its `detail` filled in) saying what went when anything did. Returns
    /// what went; nothing (empty) when the purge is done.
    pub(in crate::store) async fn purge_step(
        &self,
        kind: PurgeKind,
        cutoff: &str,
        audit: &AuditRecord,
    ) -> Result<Removed, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut removed = Removed::default();
        match kind {
            PurgeKind::ClosedReferrals => {
                let ids: Vec<(String,)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(closed_referrals_sql("r.id", true)))
                        .bind(cutoff)
                        .bind(REFERRAL_BATCH)
                        .fetch_all(tx.conn().await?)
                        .await?;
                for (id,) in ids {
                    if let Some(erased) = tx.erase_referral(&id).await? {
                        removed.add("closed-referrals", 1);
                        removed.merge(&erased);
                    }
                }
            }
            other => {
                let changed = purge_batch(tx.conn().await?, other, cutoff).await?;
                if changed > 0 {
                    removed.add(other.name(), changed);
                }
            }
        }
        if removed.is_empty() {
            return Ok(removed);
        }
        let mut record = audit.clone();
        record.detail = Some(format!("purge {}: {}", kind.name(), removed.summary()));
        tx.record_audit(&record).await?;
        tx.commit().await?;
        Ok(removed)
    }
}

/// The request id a kept resource's versions carry once the referral whose submission
/// wrote them is erased: no request's id (those are UUIDs), and no trace of the erased
/// referral's requests. A resource written only by erased referrals belongs to whichever
/// referral naming it is erased last.
const ERASED_REFERRAL_REQUEST: &str = "erased-referral";

/// What erasing a referral starts from: its Task and its Patient.
#[derive(sqlx::FromRow)]
struct ErasedReferralRow {
    task_id: String,
    patient_id: Option<String>,
}

impl Tx {
    /// Removes the referral `id` and everything that belongs to it: its ServiceRequest,
    /// Task and Observations (every version, and their search index), the resources its
    /// submissions created that nothing else refers to (its Patient unless another
    /// referral's resources name it), its record, timeline, notes, outcomes,
    /// submissions, message replay records and outbox rows. `None` when there is no
    /// such referral. Reads nothing of the content it removes.
    pub(in crate::store) async fn erase_referral(
        &mut self,
        id: &str,
    ) -> Result<Option<Removed>, StoreError> {
        // What it reads of the index includes anything this transaction wrote.
        self.flush_index().await?;
        self.lock_referral(id).await?;
        let row: Option<ErasedReferralRow> =
            sqlx::query_as("SELECT task_id, patient_id FROM referrals WHERE id = $1")
                .bind(id)
                .fetch_optional(self.conn().await?)
                .await?;
        let Some(ErasedReferralRow {
            task_id,
            patient_id,
        }) = row
        else {
            return Ok(None);
        };
        let requests: Vec<(String,)> =
            sqlx::query_as("SELECT request_id FROM referral_submissions WHERE referral_id = $1")
                .bind(id)
                .fetch_all(self.conn().await?)
                .await?;
        let requests: BTreeSet<String> = requests.into_iter().map(|(r,)| r).collect();
        let observations: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM outcome_measures WHERE referral_id = $1")
                .bind(id)
                .fetch_all(self.conn().await?)
                .await?;

        let mut erased: BTreeSet<(String, String)> = BTreeSet::new();
        erased.insert(("ServiceRequest".into(), id.to_owned()));
        erased.insert(("Task".into(), task_id));
        for (observation,) in &observations {
            erased.insert(("Observation".into(), observation.clone()));
        }
        // What this referral's submissions created (its Patient, Consent, the
        // practitioner...), reached through references from what is erased.
        let owned = self
            .created_by_submissions(&erased, &requests, patient_id.as_deref())
            .await?;
        // Shared ones stay: anything a resource not erased refers to (another
        // referral's ServiceRequest naming the same Patient or practice), and what only
        // such a kept one refers to, until nothing changes.
        let mut inside: BTreeSet<(String, String)> = erased.union(&owned).cloned().collect();
        loop {
            let mut kept = Vec::new();
            for candidate in &owned {
                if inside.contains(candidate)
                    && self.referred_to_from_outside(candidate, &inside).await?
                {
                    kept.push(candidate.clone());
                }
            }
            if kept.is_empty() {
                break;
            }
            for candidate in kept {
                inside.remove(&candidate);
            }
        }
        // A shared one kept here may have come with this referral alone (the practice's
        // Organization, which a later referral relayed by a trusted proxy only names).
        // Its versions no longer name this referral's requests, and say instead that
        // their writer's referral is erased: so erasing the last referral naming it
        // takes it (`created_by_submissions`), as nothing else brought it.
        for kept in owned.difference(&inside) {
            for request in &requests {
                sqlx::query(
                    "UPDATE resource_versions SET request_id = $1 \
                     WHERE resource_type = $2 AND id = $3 AND request_id = $4",
                )
                .bind(ERASED_REFERRAL_REQUEST)
                .bind(&kept.0)
                .bind(&kept.1)
                .bind(request)
                .execute(self.conn().await?)
                .await?;
            }
        }
        let mut erased = inside;
        // The Provenance of every erased version goes with it: it says who changed
        // that patient's referral, and its target would point at nothing.
        let targets: Vec<(String, String)> = erased.iter().cloned().collect();
        for (resource_type, resource_id) in &targets {
            let provenances: Vec<(String,)> = sqlx::query_as(
                "SELECT id FROM search_references \
                 WHERE resource_type = 'Provenance' AND param = 'target' \
                   AND target_type = $1 AND target_id = $2",
            )
            .bind(resource_type)
            .bind(resource_id)
            .fetch_all(self.conn().await?)
            .await?;
            for (provenance,) in provenances {
                erased.insert(("Provenance".into(), provenance));
            }
        }

        let mut removed = Removed::default();
        for (resource_type, resource_id) in &erased {
            for table in ["search_tokens", "search_references", "search_dates"] {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {table} WHERE resource_type = $1 AND id = $2"
                )))
                .bind(resource_type)
                .bind(resource_id)
                .execute(self.conn().await?)
                .await?;
            }
            let versions =
                sqlx::query("DELETE FROM resource_versions WHERE resource_type = $1 AND id = $2")
                    .bind(resource_type)
                    .bind(resource_id)
                    .execute(self.conn().await?)
                    .await?
                    .rows_affected();
            let resources =
                sqlx::query("DELETE FROM resources WHERE resource_type = $1 AND id = $2")
                    .bind(resource_type)
                    .bind(resource_id)
                    .execute(self.conn().await?)
                    .await?
                    .rows_affected();
            removed.add("resources", resources);
            removed.add("versions", versions);
        }
        for request in &requests {
            let gone = sqlx::query("DELETE FROM message_requests WHERE request_id = $1")
                .bind(request)
                .execute(self.conn().await?)
                .await?
                .rows_affected();
            removed.add("message-replay-records", gone);
        }
        let per_referral: [(&'static str, &str); 10] = [
            (
                "outcome-answers",
                "DELETE FROM outcome_answers WHERE outcome_id IN \
                 (SELECT id FROM outcome_measures WHERE referral_id = $1)",
            ),
            (
                "outcomes",
                "DELETE FROM outcome_measures WHERE referral_id = $1",
            ),
            (
                "timeline-entries",
                "DELETE FROM referral_stage_history WHERE referral_id = $1",
            ),
            ("notes", "DELETE FROM referral_notes WHERE referral_id = $1"),
            (
                "milestones",
                "DELETE FROM referral_milestones WHERE referral_id = $1",
            ),
            (
                "reasons",
                "DELETE FROM referral_reasons WHERE referral_id = $1",
            ),
            (
                "patient-details",
                "DELETE FROM referral_patients WHERE referral_id = $1",
            ),
            (
                "submissions",
                "DELETE FROM referral_submissions WHERE referral_id = $1",
            ),
            ("outbox-rows", "DELETE FROM outbox WHERE referral_id = $1"),
            ("referrals", "DELETE FROM referrals WHERE id = $1"),
        ];
        for (kind, statement) in per_referral {
            let gone = sqlx::query(statement)
                .bind(id)
                .execute(self.conn().await?)
                .await?
                .rows_affected();
            removed.add(kind, gone);
        }
        Ok(Some(removed))
    }

    /// The resources reached from `roots` by references either way (any depth) of which
    /// a version came with one of `requests` (the referral's submissions) or with an
    /// erased referral's ([`ERASED_REFERRAL_REQUEST`]), and the referral's Patient: what
    /// the referral brought, or what nothing left brought, not what it merely names.
    async fn created_by_submissions(
        &mut self,
        roots: &BTreeSet<(String, String)>,
        requests: &BTreeSet<String>,
        patient_id: Option<&str>,
    ) -> Result<BTreeSet<(String, String)>, StoreError> {
        let mut found: BTreeSet<(String, String)> = BTreeSet::new();
        if let Some(patient) = patient_id {
            found.insert(("Patient".into(), patient.to_owned()));
        }
        let mut frontier: Vec<(String, String)> = roots.iter().cloned().collect();
        frontier.extend(found.iter().cloned());
        while let Some((resource_type, id)) = frontier.pop() {
            // Both ways: what it names (the ServiceRequest's Patient, requester), and
            // what names it (the Consent and Condition naming the Patient).
            let neighbours: Vec<(Option<String>, Option<String>)> =
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT target_type, target_id FROM search_references \
                     WHERE resource_type = $1 AND id = $2 UNION {}",
                    referrers_sql()
                )))
                .bind(&resource_type)
                .bind(&id)
                .fetch_all(self.conn().await?)
                .await?;
            for (target_type, target_id) in neighbours {
                let (Some(target_type), Some(target_id)) = (target_type, target_id) else {
                    continue;
                };
                let key = (target_type, target_id);
                if roots.contains(&key) || found.contains(&key) {
                    continue;
                }
                // Any version, not only the first: a practice's Organization (or the
                // Patient) the first referral created and the next one rewrote (a
                // conditional update) belongs to both, so erasing the last referral
                // naming it takes it, as nothing else is left to keep it.
                let writers: Vec<(Option<String>,)> = sqlx::query_as(
                    "SELECT DISTINCT request_id FROM resource_versions \
                     WHERE resource_type = $1 AND id = $2",
                )
                .bind(&key.0)
                .bind(&key.1)
                .fetch_all(self.conn().await?)
                .await?;
                if writers
                    .into_iter()
                    .filter_map(|(request,)| request)
                    .any(|request| {
                        requests.contains(&request) || request == ERASED_REFERRAL_REQUEST
                    })
                {
                    found.insert(key.clone());
                    frontier.push(key);
                }
            }
        }
        Ok(found)
    }

    /// Whether a resource outside `erased` refers to `target`.
    async fn referred_to_from_outside(
        &mut self,
        target: &(String, String),
        erased: &BTreeSet<(String, String)>,
    ) -> Result<bool, StoreError> {
        let referrers: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(referrers_sql()))
            .bind(&target.0)
            .bind(&target.1)
            .fetch_all(self.conn().await?)
            .await?;
        Ok(referrers.iter().any(|referrer| !erased.contains(referrer)))
    }
}
