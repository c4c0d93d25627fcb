//! The audit log (`audit_events`, migration `0005_identity.sql`): one row per request
//! that reached a FHIR or `/api` route, written in the request's own write transaction
//! ([`WriteTx::record_audit`]) or, for a read, committed on its own before the answer
//! ([`Store::record_audit`]); and the reads behind AuditEvent search and
//! `sprig audit export`.
//!
//! Invariants:
//! - rows are only ever inserted: nothing here updates one (a trigger refuses it too);
//! - a row holds ids and names, never patient data: search parameters by name only;
//! - a failed audit write is an error to the caller, which must then fail the request.

use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::write::WriteTx;
use super::{Store, StoreError};
use crate::fhir::{FhirId, Instant};

/// AuditEvent.outcome (R4's `audit-event-outcome` codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditOutcome {
    /// `0`: the action succeeded.
    Success,
    /// `4`: the action was refused or failed for the caller's reasons (a 4xx).
    MinorFailure,
    /// `8`: the action failed on Sprig's side (a 5xx).
    SeriousFailure,
    /// `12`: a failure that made Sprig unavailable.
    MajorFailure,
}

impl AuditOutcome {
    /// The code (`0`, `4`, `8`, `12`), as stored and as AuditEvent.outcome.
    pub fn code(self) -> &'static str {
        match self {
            AuditOutcome::Success => "0",
            AuditOutcome::MinorFailure => "4",
            AuditOutcome::SeriousFailure => "8",
            AuditOutcome::MajorFailure => "12",
        }
    }

    /// Parses a code.
    pub fn parse(code: &str) -> Option<Self> {
        match code {
            "0" => Some(AuditOutcome::Success),
            "4" => Some(AuditOutcome::MinorFailure),
            "8" => Some(AuditOutcome::SeriousFailure),
            "12" => Some(AuditOutcome::MajorFailure),
            _ => None,
        }
    }

    /// The outcome an HTTP status means: 2xx and 3xx succeed, 4xx are minor, 5xx serious.
    pub fn of_status(status: u16) -> Self {
        match status {
            0..=399 => AuditOutcome::Success,
            400..=499 => AuditOutcome::MinorFailure,
            _ => AuditOutcome::SeriousFailure,
        }
    }
}

/// One audit row, as the request layer fills it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// When the request was answered.
    pub recorded_at: Instant,
    /// The client that called, if a client did.
    pub client_id: Option<String>,
    /// The ODS code the caller acted as.
    pub ods_code: Option<String>,
    /// The staff person, if a person did.
    pub staff_username: Option<String>,
    /// The person's role.
    pub staff_role: Option<String>,
    /// A trusted proxy's client id, when the request came through one.
    pub proxy_id: Option<String>,
    /// The end-user organisation the proxy passed (ODS code).
    pub end_user_ods: Option<String>,
    /// The peer's address.
    pub peer_address: Option<String>,
    /// `create`, `read`, `vread`, `search-type`, `history-instance`, `update`,
    /// `operation:process-message`, `api:transition`…
    pub interaction: String,
    /// The resource type acted on.
    pub resource_type: Option<String>,
    /// The resource id acted on.
    pub resource_id: Option<String>,
    /// Names of the search parameters (never their values).
    pub search_params: Vec<String>,
    /// Patient ids whose data the answer held.
    pub patient_ids: Vec<String>,
    /// Referral ids the answer held.
    pub referral_ids: Vec<String>,
    /// The HTTP status answered.
    pub status: u16,
    /// What it came to.
    pub outcome: AuditOutcome,
    /// `X-Request-ID`.
    pub request_id: Option<String>,
    /// `X-Correlation-ID`.
    pub correlation_id: Option<String>,
    /// A message's `MessageHeader.id`.
    pub message_id: Option<String>,
}

impl AuditRecord {
    /// A record of `interaction` answered with `status` now, everything else empty.
    pub fn new(interaction: impl Into<String>, status: u16) -> Self {
        AuditRecord {
            recorded_at: Instant::now(),
            client_id: None,
            ods_code: None,
            staff_username: None,
            staff_role: None,
            proxy_id: None,
            end_user_ods: None,
            peer_address: None,
            interaction: interaction.into(),
            resource_type: None,
            resource_id: None,
            search_params: Vec::new(),
            patient_ids: Vec::new(),
            referral_ids: Vec::new(),
            status,
            outcome: AuditOutcome::of_status(status),
            request_id: None,
            correlation_id: None,
            message_id: None,
        }
    }
}

/// A stored audit row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEventRow {
    /// Its place in the log (increasing).
    pub seq: i64,
    /// What was recorded.
    pub record: AuditRecord,
}

/// Which audit rows to read. Every filter given must hold.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Recorded at or after this instant.
    pub since: Option<Instant>,
    /// Recorded before this instant.
    pub before: Option<Instant>,
    /// The agent: a client id, a staff username or a proxy id.
    pub agent: Option<String>,
    /// The resource type acted on.
    pub entity_type: Option<String>,
    /// The resource id acted on (with or without `entity_type`).
    pub entity_id: Option<String>,
    /// Rows whose answer held this Patient id, or acted on this Patient.
    pub patient: Option<FhirId>,
    /// The outcome.
    pub outcome: Option<AuditOutcome>,
}

/// A page of audit rows, oldest first, by keyset on `seq`.
#[derive(Debug, Clone, Copy)]
pub struct AuditPage {
    /// Only rows after this `seq` (from the previous page's last row).
    pub after: Option<i64>,
    /// At most this many rows.
    pub limit: u32,
}

const AUDIT_COLUMNS: &str = "recorded_at, client_id, ods_code, staff_username, staff_role, \
     proxy_id, end_user_ods, peer_address, interaction, resource_type, resource_id, \
     search_params, patient_ids, referral_ids, status, outcome, request_id, correlation_id, \
     message_id";

fn json_list(values: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(values).map_err(|e| StoreError::Corrupt {
        resource_type: "AuditEvent".into(),
        id: "new".into(),
        reason: e.to_string(),
    })
}

async fn insert(conn: &mut SqliteConnection, record: &AuditRecord) -> Result<i64, StoreError> {
    let seq = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO audit_events ({AUDIT_COLUMNS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19) \
         RETURNING seq"
    )))
    .bind(record.recorded_at.to_fhir())
    .bind(&record.client_id)
    .bind(&record.ods_code)
    .bind(&record.staff_username)
    .bind(&record.staff_role)
    .bind(&record.proxy_id)
    .bind(&record.end_user_ods)
    .bind(&record.peer_address)
    .bind(&record.interaction)
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
    .fetch_one(conn)
    .await?
    .try_get("seq")?;
    Ok(seq)
}

fn row_to_event(row: &SqliteRow) -> Result<AuditEventRow, StoreError> {
    let seq: i64 = row.try_get("seq")?;
    let corrupt = |reason: String| StoreError::Corrupt {
        resource_type: "AuditEvent".into(),
        id: seq.to_string(),
        reason,
    };
    let list = |column: &str| -> Result<Vec<String>, StoreError> {
        let text: String = row.try_get(column)?;
        serde_json::from_str(&text).map_err(|e| corrupt(format!("{column}: {e}")))
    };
    let recorded_at: String = row.try_get("recorded_at")?;
    let outcome: String = row.try_get("outcome")?;
    let status: i64 = row.try_get("status")?;
    Ok(AuditEventRow {
        seq,
        record: AuditRecord {
            recorded_at: Instant::parse(&recorded_at).map_err(|e| corrupt(e.to_string()))?,
            client_id: row.try_get("client_id")?,
            ods_code: row.try_get("ods_code")?,
            staff_username: row.try_get("staff_username")?,
            staff_role: row.try_get("staff_role")?,
            proxy_id: row.try_get("proxy_id")?,
            end_user_ods: row.try_get("end_user_ods")?,
            peer_address: row.try_get("peer_address")?,
            interaction: row.try_get("interaction")?,
            resource_type: row.try_get("resource_type")?,
            resource_id: row.try_get("resource_id")?,
            search_params: list("search_params")?,
            patient_ids: list("patient_ids")?,
            referral_ids: list("referral_ids")?,
            status: u16::try_from(status).map_err(|_| corrupt(format!("status {status}")))?,
            outcome: AuditOutcome::parse(&outcome)
                .ok_or_else(|| corrupt(format!("outcome {outcome:?}")))?,
            request_id: row.try_get("request_id")?,
            correlation_id: row.try_get("correlation_id")?,
            message_id: row.try_get("message_id")?,
        },
    })
}

impl WriteTx {
    /// Adds an audit row to this transaction: it commits with the change it records, or
    /// not at all. Returns the row's `seq`.
    pub async fn record_audit(&mut self, record: &AuditRecord) -> Result<i64, StoreError> {
        insert(self.conn(), record).await
    }
}

impl Store {
    /// Adds an audit row for a request that wrote nothing (a read, a refusal) and
    /// commits it: durable when this returns. Returns the row's `seq`.
    pub async fn record_audit(&self, record: &AuditRecord) -> Result<i64, StoreError> {
        let Store::Sqlite(s) = self;
        let mut conn = s.writer.acquire().await?;
        insert(&mut conn, record).await
    }

    /// The retention setting (`auth.audit_retention_days`): drops the rows of every whole
    /// UTC day before `keep_from`, and nothing of `keep_from` or later, so a day is either
    /// kept whole or gone whole. Returns how many rows went. The only deletion of audit
    /// rows Sprig makes.
    pub async fn drop_audit_before(&self, keep_from: time::Date) -> Result<u64, StoreError> {
        let Store::Sqlite(s) = self;
        // Midnight UTC in the stored fixed-width form: text order is time order.
        let cutoff = format!("{keep_from}T00:00:00.000Z");
        let done = sqlx::query("DELETE FROM audit_events WHERE recorded_at < $1")
            .bind(cutoff)
            .execute(&s.writer)
            .await?;
        Ok(done.rows_affected())
    }

    /// A page of audit rows matching `filter`, oldest first.
    pub async fn audit_events(
        &self,
        filter: &AuditFilter,
        page: AuditPage,
    ) -> Result<Vec<AuditEventRow>, StoreError> {
        let Store::Sqlite(s) = self;
        let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
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
        if let Some(outcome) = filter.outcome {
            query.push(" AND outcome = ").push_bind(outcome.code());
        }
        query
            .push(" ORDER BY seq LIMIT ")
            .push_bind(i64::from(page.limit));
        query
            .build()
            .fetch_all(&s.readers)
            .await?
            .iter()
            .map(row_to_event)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::open_store;

    #[tokio::test]
    async fn retention_drops_whole_days_before_the_first_kept_and_nothing_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path()).await;
        for at in [
            "2026-11-01T23:59:59.999Z",
            "2026-11-02T00:00:00.000Z",
            "2026-11-02T12:00:00.000Z",
            "2026-11-03T08:00:00.000Z",
        ] {
            let mut record = AuditRecord::new("read", 200);
            record.recorded_at = Instant::parse(at).expect("instant");
            store.record_audit(&record).await.expect("recorded");
        }
        let day =
            |d: u8| time::Date::from_calendar_date(2026, time::Month::November, d).expect("date");
        assert_eq!(store.drop_audit_before(day(2)).await.expect("dropped"), 1);
        assert_eq!(store.drop_audit_before(day(2)).await.expect("dropped"), 0);
        assert_eq!(store.drop_audit_before(day(3)).await.expect("dropped"), 2);
        let left = store
            .audit_events(
                &AuditFilter::default(),
                AuditPage {
                    after: None,
                    limit: 10,
                },
            )
            .await
            .expect("rows");
        assert_eq!(left.len(), 1);
    }

    fn read_of(patient: &str, client: &str) -> AuditRecord {
        AuditRecord {
            client_id: Some(client.into()),
            ods_code: Some("A81001".into()),
            resource_type: Some("Patient".into()),
            resource_id: Some(patient.into()),
            patient_ids: vec![patient.into()],
            request_id: Some("req-1".into()),
            ..AuditRecord::new("read", 200)
        }
    }

    #[tokio::test]
    async fn audit_rows_are_kept_and_filtered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path()).await;
        let first = read_of("p1", "gp-a");
        store.record_audit(&first).await.expect("audit");
        let search = AuditRecord {
            client_id: Some("gp-b".into()),
            resource_type: Some("ServiceRequest".into()),
            search_params: vec!["patient".into(), "_count".into()],
            patient_ids: vec!["p2".into(), "p10".into()],
            referral_ids: vec!["r2".into()],
            ..AuditRecord::new("search-type", 200)
        };
        let mut tx = store.begin_write().await.expect("tx");
        tx.record_audit(&search).await.expect("audit");
        tx.commit().await.expect("commit");
        let refused = AuditRecord::new("read", 401);
        store.record_audit(&refused).await.expect("audit");
        // A rolled-back write leaves no audit row.
        let mut tx = store.begin_write().await.expect("tx");
        tx.record_audit(&read_of("p9", "gp-c"))
            .await
            .expect("audit");
        drop(tx);

        let all = AuditPage {
            after: None,
            limit: 100,
        };
        let rows = store
            .audit_events(&AuditFilter::default(), all)
            .await
            .expect("read");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].record, first);
        assert_eq!(rows[1].record, search);
        assert_eq!(rows[2].record.outcome, AuditOutcome::MinorFailure);

        let by = |filter: AuditFilter| {
            let store = store.clone();
            async move {
                store
                    .audit_events(&filter, all)
                    .await
                    .expect("read")
                    .iter()
                    .map(|r| r.seq)
                    .collect::<Vec<_>>()
            }
        };
        let patient = |id: &str| Some(FhirId::parse(id).expect("id"));
        assert_eq!(
            by(AuditFilter {
                patient: patient("p1"),
                ..Default::default()
            })
            .await,
            [rows[0].seq]
        );
        // p1 must not match p10.
        assert_eq!(
            by(AuditFilter {
                patient: patient("p10"),
                ..Default::default()
            })
            .await,
            [rows[1].seq]
        );
        assert_eq!(
            by(AuditFilter {
                agent: Some("gp-b".into()),
                ..Default::default()
            })
            .await,
            [rows[1].seq]
        );
        assert_eq!(
            by(AuditFilter {
                outcome: Some(AuditOutcome::MinorFailure),
                ..Default::default()
            })
            .await,
            [rows[2].seq]
        );
        assert_eq!(
            by(AuditFilter {
                entity_type: Some("Patient".into()),
                entity_id: Some("p1".into()),
                ..Default::default()
            })
            .await,
            [rows[0].seq]
        );
        assert!(
            by(AuditFilter {
                since: Some(Instant::now()),
                before: Some(Instant::now()),
                ..Default::default()
            })
            .await
            .is_empty()
        );
        let second_page = store
            .audit_events(
                &AuditFilter::default(),
                AuditPage {
                    after: Some(rows[0].seq),
                    limit: 1,
                },
            )
            .await
            .expect("read");
        assert_eq!(second_page.len(), 1);
        assert_eq!(second_page[0].seq, rows[1].seq);
        store.close().await;
    }

    #[tokio::test]
    async fn audit_rows_cannot_be_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path()).await;
        store
            .record_audit(&AuditRecord::new("read", 200))
            .await
            .expect("audit");
        let Store::Sqlite(s) = &store;
        let changed = sqlx::query("UPDATE audit_events SET status = 500")
            .execute(&s.writer)
            .await;
        assert!(changed.is_err(), "the trigger refuses updates");
        store.close().await;
    }
}
