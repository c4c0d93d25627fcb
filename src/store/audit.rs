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

use super::write::WriteTx;
use super::{Store, StoreError, dispatch, dispatch_write};
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
    /// The caller sent `NHSD-End-User-Organisation` without being a trusted proxy: the
    /// header was ignored (migration 0011).
    pub ignored_end_user_header: bool,
    /// What a purge or an erasure removed: kinds and counts, a reason code (never the
    /// content removed, never free text); `None` for every other request.
    pub detail: Option<String>,
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
            ignored_end_user_header: false,
            detail: None,
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
    /// Rows whose answer held this referral, or acted on its ServiceRequest (the
    /// console's audit trail of one referral).
    pub referral: Option<FhirId>,
    /// Rows of the request with this `X-Request-ID` (`audit_events_by_request`).
    pub request_id: Option<String>,
}

/// A page of audit rows, oldest first, by keyset on `seq`.
#[derive(Debug, Clone, Copy)]
pub struct AuditPage {
    /// Only rows after this `seq` (from the previous page's last row).
    pub after: Option<i64>,
    /// At most this many rows.
    pub limit: u32,
}

impl WriteTx {
    /// Adds an audit row to this transaction: it commits with the change it records, or
    /// not at all.
    pub async fn record_audit(&mut self, record: &AuditRecord) -> Result<(), StoreError> {
        dispatch_write!(self, b => b.record_audit(record).await)
    }
}

impl Store {
    /// Adds an audit row for a request that wrote nothing (a read, a refusal) and
    /// commits it: durable when this returns.
    pub async fn record_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        dispatch!(self, b => b.record_audit(record).await)
    }

    /// The retention setting (`auth.audit_retention_days`): drops the rows of every whole
    /// UTC day before `keep_from`, and nothing of `keep_from` or later, so a day is either
    /// kept whole or gone whole. Returns how many rows went. The only deletion of audit
    /// rows Sprig makes.
    pub async fn drop_audit_before(&self, keep_from: time::Date) -> Result<u64, StoreError> {
        dispatch!(self, b => b.drop_audit_before(keep_from).await)
    }

    /// A page of audit rows matching `filter`, oldest first.
    pub async fn audit_events(
        &self,
        filter: &AuditFilter,
        page: AuditPage,
    ) -> Result<Vec<AuditEventRow>, StoreError> {
        dispatch!(self, b => b.audit_events(filter, page).await)
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
        let Store::Sqlite(s) = &store else {
            unreachable!("a file path opens SQLite")
        };
        let changed = sqlx::query("UPDATE audit_events SET status = 500")
            .execute(&s.writer)
            .await;
        assert!(changed.is_err(), "the trigger refuses updates");
        store.close().await;
    }
}
