//! Audit rows in SQL, shared by both backends (compiled into each of
//! `store::sqlite` and `store::postgres` with that backend's types).

use sqlx::QueryBuilder;

use super::{Backend, Db, Tx};
use crate::fhir::Instant;
use crate::store::StoreError;
use crate::store::audit::{AuditEventRow, AuditFilter, AuditOutcome, AuditPage, AuditRecord};
use crate::store::deferred::Statement;

const AUDIT_COLUMNS: &str = "recorded_at, client_id, ods_code, staff_username, staff_role, \
     proxy_id, end_user_ods, peer_address, interaction, resource_type, resource_id, \
     search_params, patient_ids, referral_ids, status, outcome, request_id, correlation_id, \
     message_id, ignored_end_user_header, detail";

fn json_list(values: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(values).map_err(|e| StoreError::Corrupt {
        resource_type: "AuditEvent".into(),
        id: "new".into(),
        reason: e.to_string(),
    })
}

/// The statement that adds `record`'s row.
fn insert(record: &AuditRecord) -> Result<Statement, StoreError> {
    Ok(Statement::new(format!(
        "INSERT INTO audit_events ({AUDIT_COLUMNS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)"
    ))
        .bind(record.recorded_at.to_fhir())
        .bind(&record.client_id)
        .bind(&record.ods_code)
        .bind(&record.staff_username)
        .bind(&record.staff_role)
        .bind(&record.proxy_id)
        .bind(&record.end_user_ods)
        .bind(&record.peer_address)
        .bind(record.interaction.as_str())
        .bind(&record.resource_type)
        .bind(&record.resource_id)
        .bind(json_list(&record.search_params)?)
        .bind(json_list(&record.patient_ids)?)
        .bind(json_list(&record.referral_ids)?)
        .bind(i64::from(record.status))
        .bind(record.outcome.code())
        .bind(&record.request_id)
        .bind(&record.correlation_id)
        .bind(&record.message_id)
        .bind(i64::from(record.ignored_end_user_header))
        .bind(&record.detail))
}

/// One audit row as stored: `seq` and the columns of `AUDIT_COLUMNS`, the lists as JSON
/// text, the flag as an integer (SQLite has no boolean).
#[derive(sqlx::FromRow)]
struct AuditLogRow {
    seq: i64,
    recorded_at: String,
    client_id: Option<String>,
    ods_code: Option<String>,
    staff_username: Option<String>,
    staff_role: Option<String>,
    proxy_id: Option<String>,
    end_user_ods: Option<String>,
    peer_address: Option<String>,
    interaction: String,
    resource_type: Option<String>,
    resource_id: Option<String>,
    search_params: String,
    patient_ids: String,
    referral_ids: String,
    status: i64,
    outcome: String,
    request_id: Option<String>,
    correlation_id: Option<String>,
    message_id: Option<String>,
    ignored_end_user_header: i64,
    detail: Option<String>,
}

impl AuditLogRow {
    fn into_domain(self) -> Result<AuditEventRow, StoreError> {
        let seq = self.seq;
        let corrupt = |reason: String| StoreError::Corrupt {
            resource_type: "AuditEvent".into(),
            id: seq.to_string(),
            reason,
        };
        let list = |column: &str, text: &str| -> Result<Vec<String>, StoreError> {
            serde_json::from_str(text).map_err(|e| corrupt(format!("{column}: {e}")))
        };
        let status = self.status;
        let outcome = self.outcome;
        Ok(AuditEventRow {
            seq,
            record: AuditRecord {
                recorded_at: Instant::parse(&self.recorded_at)
                    .map_err(|e| corrupt(e.to_string()))?,
                client_id: self.client_id,
                ods_code: self.ods_code,
                staff_username: self.staff_username,
                staff_role: self.staff_role,
                proxy_id: self.proxy_id,
                end_user_ods: self.end_user_ods,
                peer_address: self.peer_address,
                interaction: self.interaction,
                resource_type: self.resource_type,
                resource_id: self.resource_id,
                search_params: list("search_params", &self.search_params)?,
                patient_ids: list("patient_ids", &self.patient_ids)?,
                referral_ids: list("referral_ids", &self.referral_ids)?,
                status: u16::try_from(status).map_err(|_| corrupt(format!("status {status}")))?,
                outcome: AuditOutcome::parse(&outcome)
                    .ok_or_else(|| corrupt(format!("outcome {outcome:?}")))?,
                request_id: self.request_id,
                correlation_id: self.correlation_id,
                message_id: self.message_id,
                ignored_end_user_header: self.ignored_end_user_header != 0,
                detail: self.detail,
            },
        })
    }
}

impl Tx {
    /// Adds an audit row to this transaction: it commits with the change it records, or
    /// not at all.
    pub(in crate::store) async fn record_audit(
        &mut self,
        record: &AuditRecord,
    ) -> Result<(), StoreError> {
        self.execute(insert(record)?).await
    }
}

impl Backend {
    pub(in crate::store) async fn drop_audit_before(
        &self,
        keep_from: time::Date,
    ) -> Result<u64, StoreError> {
        let s = self;
        // Midnight UTC in the stored fixed-width form: text order is time order.
        let cutoff = format!("{keep_from}T00:00:00.000Z");
        let done = sqlx::query("DELETE FROM audit_events WHERE recorded_at < $1")
            .bind(cutoff)
            .execute(&s.writer)
            .await?;
        Ok(done.rows_affected())
    }

    /// Adds an audit row for a request that wrote nothing (a read, a refusal) and
    /// commits it: durable when this returns.
    pub(in crate::store) async fn record_audit(
        &self,
        record: &AuditRecord,
    ) -> Result<(), StoreError> {
        let s = self;
        if super::AUDIT_IN_GROUP_COMMIT {
            // SQLite: in the next group commit, sharing its fsync with the other
            // requests' writes, rather than a commit (and an fsync) of its own.
            let mut tx = s.begin_audit_write().await?;
            tx.record_audit(record).await?;
            return tx.commit().await;
        }
        let mut conn = s.writer.acquire().await?;
        super::statement::run_now(&mut conn, insert(record)?).await
    }

    /// A page of audit rows matching `filter`, oldest first.
    pub(in crate::store) async fn audit_events(
        &self,
        filter: &AuditFilter,
        page: AuditPage,
    ) -> Result<Vec<AuditEventRow>, StoreError> {
        let s = self;
        audit_page_query(filter, page)
            .build_query_as::<AuditLogRow>()
            .fetch_all(&s.readers)
            .await?
            .into_iter()
            .map(AuditLogRow::into_domain)
            .collect()
    }
}

/// The query of a page of audit rows matching `filter`, oldest first. An agent is
/// one of three columns, each read through its own index (`audit_events_by_client`,
/// `_by_staff`, `_by_proxy`), which holds only the rows that name one (migration
/// 0017: most rows name a client and neither of the others).
pub(in crate::store) fn audit_page_query(
    filter: &AuditFilter,
    page: AuditPage,
) -> QueryBuilder<Db> {
    let mut query: QueryBuilder<Db> = QueryBuilder::new(format!(
        "SELECT seq, {AUDIT_COLUMNS} FROM audit_events WHERE 1 = 1"
    ));
    if let Some(after) = page.after {
        query.push(" AND seq > ").push_bind(after);
    }
    if let Some(since) = filter.since {
        query
            .push(" AND recorded_at >= ")
            .push_bind(since.to_fhir());
    }
    if let Some(before) = filter.before {
        query
            .push(" AND recorded_at < ")
            .push_bind(before.to_fhir());
    }
    if let Some(agent) = &filter.agent {
        query
            .push(" AND (client_id = ")
            .push_bind(agent.clone())
            .push(" OR staff_username = ")
            .push_bind(agent.clone())
            .push(" OR proxy_id = ")
            .push_bind(agent.clone())
            .push(")");
    }
    if let Some(entity_type) = &filter.entity_type {
        query
            .push(" AND resource_type = ")
            .push_bind(entity_type.clone());
    }
    if let Some(entity_id) = &filter.entity_id {
        query
            .push(" AND resource_id = ")
            .push_bind(entity_id.clone());
    }
    if let Some(patient) = &filter.patient {
        // A FHIR id holds only letters, digits, '-' and '.', so it cannot carry a LIKE
        // wildcard; quoted, it matches one whole element of the JSON array.
        query
            .push(" AND ((resource_type = 'Patient' AND resource_id = ")
            .push_bind(patient.as_str().to_owned())
            .push(") OR patient_ids LIKE ")
            .push_bind(format!("%\"{}\"%", patient.as_str()))
            .push(")");
    }
    if let Some(referral) = &filter.referral {
        // As for a patient: a FHIR id cannot carry a LIKE wildcard.
        query
            .push(" AND ((resource_type = 'ServiceRequest' AND resource_id = ")
            .push_bind(referral.as_str().to_owned())
            .push(") OR referral_ids LIKE ")
            .push_bind(format!("%\"{}\"%", referral.as_str()))
            .push(")");
    }
    if let Some(request_id) = &filter.request_id {
        query
            .push(" AND request_id = ")
            .push_bind(request_id.clone());
    }
    if let Some(outcome) = filter.outcome {
        query.push(" AND outcome = ").push_bind(outcome.code());
    }
    query
        .push(" ORDER BY seq LIMIT ")
        .push_bind(i64::from(page.limit));
    query
}
