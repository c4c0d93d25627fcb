//! The outbox in SQL, shared by both backends: compiled into `store::sqlite` and
//! `store::postgres` alike (`#[path]`), each time with that backend's `Db`,
//! `Conn` and `DbRow`, so the SQL text exists once.

use std::sync::Arc;

use tokio::sync::Notify;

use super::{BODY_JSON_ID, Backend, CLAIM_LOCK, Tx};
use crate::fhir::Instant;
use crate::store::StoreError;
use crate::store::outbox::{
    AttemptRecord, AttemptResult, ClaimedMessage, DeliveryEntry, DeliveryFilter, DeliveryState,
    DestinationStats, RetryRefusal,
};

const ENTRY_COLUMNS: &str = "o.seq, o.referral_id, o.resource_type, o.resource_id, o.version_id, \
     o.destination_ods, o.state, o.attempts, o.created_at, o.next_attempt_ms, o.last_attempt_at, \
     o.last_status, o.last_error, o.receiver_response, o.delivered_at, o.dead_at, \
     CASE WHEN o.state = 'pending' THEN (SELECT MIN(e.seq) FROM outbox e \
        WHERE e.referral_id = o.referral_id AND e.seq < o.seq AND e.state = 'dead') END AS blocked_by";

/// Puts dead letters back in the queue, due from now (`$1`, so the service
/// API shows when they were retried), their maximum age counting afresh
/// from their next attempt; the caller appends which ones (`$2`).
const REQUEUE_DEAD: &str = "UPDATE outbox SET state = 'pending', next_attempt_ms = $1, \
     age_from_ms = NULL, dead_at = NULL WHERE state = 'dead' AND";

/// A pending row (`o`) that is the head of its referral's queue: no earlier
/// row of the referral is pending or dead. Only a head may be sent, which
/// keeps each referral's updates in order and holds them behind a dead letter.
const HEAD_OF_REFERRAL: &str = "NOT EXISTS (SELECT 1 FROM outbox e \
     WHERE e.referral_id = o.referral_id AND e.seq < o.seq AND e.state IN ('pending', 'dead'))";
impl Backend {
    /// A write of outbox rows alone, for the delivery worker's claims and results: on
    /// SQLite a member of the group commit, sharing a batch's fsync with the requests'
    /// writes, where a statement of its own on the writer connection took the writer
    /// between two batches and paid an fsync of its own (under intake, delivery then
    /// got one write per batch: 34 updates out a second against 324 referrals in);
    /// on PostgreSQL a transaction. Like an audit row, it writes no resource version,
    /// so no search waits for it.
    async fn begin_outbox_write(&self) -> Result<Tx, StoreError> {
        self.begin_audit_write().await
    }

    /// Woken after every commit that adds outbox rows.
    pub(in crate::store) fn outbox_signal(&self) -> Arc<Notify> {
        let s = self;
        Arc::clone(&s.outbox_signal)
    }

    /// Which of `among` have at least one message due at `now_ms` (not leased, or its
    /// lease lapsed). A cheap read, so an idle worker costs the writer nothing.
    pub(in crate::store) async fn due_destinations(
        &self,
        now_ms: i64,
        among: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let s = self;
        if among.is_empty() {
            return Ok(Vec::new());
        }
        // The claim's own conditions, so that a destination whose rows all
        // wait (behind a dead letter, a send in flight or a backoff) is not
        // reported due and costs the writer no empty claim. One probe per
        // destination asked about, each stopping at its first due head
        // (`outbox_due` leads with the destination): the rows of practices
        // with no endpoint, which wait for pull and so pile up for ever, are
        // never read (listing every pending row took 9.8 ms at 9,107 of them,
        // and ran after every commit under intake).
        let destinations = serde_json::Value::from(among.to_vec()).to_string();
        let members = super::JSON_TEXT_MEMBERS.replace("{}", "$2");
        let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH d (ods) AS ({members}) \
             SELECT d.ods FROM d WHERE EXISTS (SELECT 1 FROM outbox o \
             WHERE o.state = 'pending' AND o.destination_ods = d.ods \
               AND o.next_attempt_ms <= $1 \
               AND (o.lease_until_ms IS NULL OR o.lease_until_ms < $1) AND {HEAD_OF_REFERRAL})"
        )))
        .bind(now_ms)
        .bind(destinations)
        .fetch_all(&s.readers)
        .await?;
        Ok(rows.into_iter().map(|(ods,)| ods).collect())
    }

    /// Claims up to `limit` due messages for `destination`, each the head of
    /// its referral's queue, oldest first, leasing them to `owner` until
    /// `lease_until_ms`. The attempt is counted now, so a crash mid-send still
    /// counts as an attempt. `last_attempt_at` and `age_from_ms` wait for the
    /// result (`record_attempts`): a head handed back unsent is released by
    /// clearing its lease and uncounting its attempt, and so is as it was.
    pub(in crate::store) async fn claim_due(
        &self,
        destination: &str,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
    ) -> Result<Vec<ClaimedMessage>, StoreError> {
        let mut tx = self.begin_outbox_write().await?;
        // The backend's CLAIM_LOCK keeps two claims from taking the same row:
        // nothing on SQLite (one writer: the sub-select and the update cannot
        // interleave), `FOR UPDATE SKIP LOCKED` on PostgreSQL (another
        // instance's claim in flight is skipped, not waited for).
        let rows: Vec<ClaimedRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE outbox SET lease_owner = $1, lease_until_ms = $2, attempts = attempts + 1 \
             WHERE seq IN ( \
               SELECT o.seq FROM outbox o \
               WHERE o.state = 'pending' AND o.destination_ods = $3 AND o.next_attempt_ms <= $4 \
                 AND (o.lease_until_ms IS NULL OR o.lease_until_ms < $4) AND {HEAD_OF_REFERRAL} \
               ORDER BY o.seq LIMIT $5 {CLAIM_LOCK}) \
             RETURNING seq, referral_id, resource_type, resource_id, version_id, destination_ods, \
                       reply_to, created_at, attempts, COALESCE(age_from_ms, $4) AS age_from_ms"
        )))
        .bind(owner)
        .bind(lease_until_ms)
        .bind(destination)
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(tx.conn().await?)
        .await?;
        tx.commit().await?;
        let mut claimed: Vec<ClaimedMessage> =
            rows.into_iter().map(ClaimedRow::into_domain).collect();
        // RETURNING does not promise an order.
        claimed.sort_by_key(|m| m.seq);
        Ok(claimed)
    }

    /// Records the results of `owner`'s attempts in one write; says for each
    /// whether it was recorded (a failure or release only under `owner`'s
    /// lease; a delivery always).
    pub(in crate::store) async fn record_attempts(
        &self,
        owner: &str,
        attempts: &[AttemptRecord],
    ) -> Result<Vec<bool>, StoreError> {
        let mut tx = self.begin_outbox_write().await?;
        let mut recorded = Vec::with_capacity(attempts.len());
        for attempt in attempts {
            let status = attempt.status.map(i64::from);
            let done = match &attempt.result {
                AttemptResult::Delivered => {
                    sqlx::query(
                        "UPDATE outbox SET state = 'delivered', delivered_at = $1, last_status = $2, \
                                last_error = NULL, lease_owner = NULL, lease_until_ms = NULL, \
                                last_attempt_at = $3, age_from_ms = COALESCE(age_from_ms, $4) \
                         WHERE seq = $5 AND state = 'pending'",
                    )
                    .bind(&attempt.at)
                    .bind(status)
                    .bind(&attempt.started_at)
                    .bind(attempt.age_from_ms)
                    .bind(attempt.seq)
                    .execute(tx.conn().await?)
                    .await?;
                    recorded.push(true);
                    continue;
                }
                AttemptResult::Retry {
                    error,
                    next_attempt_ms,
                } => sqlx::query(
                    "UPDATE outbox SET next_attempt_ms = $1, last_status = $2, last_error = $3, \
                                lease_owner = NULL, lease_until_ms = NULL, \
                                last_attempt_at = $4, age_from_ms = COALESCE(age_from_ms, $5) \
                         WHERE seq = $6 AND state = 'pending' AND lease_owner = $7",
                )
                .bind(next_attempt_ms)
                .bind(status)
                .bind(error)
                .bind(&attempt.started_at)
                .bind(attempt.age_from_ms)
                .bind(attempt.seq)
                .bind(owner)
                .execute(tx.conn().await?)
                .await?,
                AttemptResult::Dead {
                    error,
                    receiver_response,
                } => {
                    sqlx::query(
                        "UPDATE outbox SET state = 'dead', dead_at = $1, last_status = $2, \
                                last_error = $3, receiver_response = $4, lease_owner = NULL, \
                                lease_until_ms = NULL, \
                                last_attempt_at = $5, age_from_ms = COALESCE(age_from_ms, $6) \
                         WHERE seq = $7 AND state = 'pending' AND lease_owner = $8",
                    )
                    .bind(&attempt.at)
                    .bind(status)
                    .bind(error)
                    .bind(receiver_response.as_deref())
                    .bind(&attempt.started_at)
                    .bind(attempt.age_from_ms)
                    .bind(attempt.seq)
                    .bind(owner)
                    .execute(tx.conn().await?)
                    .await?
                }
                // Not an attempt after all: uncounted, so a worker that
                // stops often does not age its queue towards a dead letter.
                // The claim changed nothing else (`claim_due`), so the row is
                // as it was before it: no attempt time, no age started.
                AttemptResult::Released => {
                    sqlx::query(
                        "UPDATE outbox SET lease_owner = NULL, lease_until_ms = NULL, \
                                attempts = attempts - 1 \
                         WHERE seq = $1 AND state = 'pending' AND lease_owner = $2",
                    )
                    .bind(attempt.seq)
                    .bind(owner)
                    .execute(tx.conn().await?)
                    .await?
                }
            };
            recorded.push(done.rows_affected() == 1);
        }
        tx.commit().await?;
        Ok(recorded)
    }

    /// Puts a dead letter back in the queue, due at once, its maximum age
    /// counting afresh from its next attempt.
    pub(in crate::store) async fn retry_dead(
        &self,
        seq: i64,
    ) -> Result<Result<DeliveryEntry, RetryRefusal>, StoreError> {
        let s = self;
        let requeued = sqlx::query(sqlx::AssertSqlSafe(format!("{REQUEUE_DEAD} seq = $2")))
            .bind(Instant::now().unix_millis())
            .bind(seq)
            .execute(&s.writer)
            .await?;
        if requeued.rows_affected() == 1 {
            s.outbox_signal.notify_one();
        }
        // Read back on the writer: it saw the update (or the state that
        // refused it) whatever the readers have caught up with.
        let sql = format!("SELECT {ENTRY_COLUMNS} FROM outbox o WHERE o.seq = $1");
        let row: Option<DeliveryEntryRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(seq)
            .fetch_optional(&s.writer)
            .await?;
        let Some(entry) = row.map(DeliveryEntryRow::into_domain).transpose()? else {
            return Ok(Err(RetryRefusal::NotFound));
        };
        if requeued.rows_affected() == 1 {
            Ok(Ok(entry))
        } else {
            Ok(Err(RetryRefusal::NotDead(entry.state)))
        }
    }

    /// Puts every dead letter for `destination` back in the queue. Returns
    /// how many.
    pub(in crate::store) async fn retry_dead_for(
        &self,
        destination: &str,
    ) -> Result<u64, StoreError> {
        let s = self;
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{REQUEUE_DEAD} destination_ods = $2"
        )))
        .bind(Instant::now().unix_millis())
        .bind(destination)
        .execute(&s.writer)
        .await?;
        if done.rows_affected() > 0 {
            s.outbox_signal.notify_one();
        }
        Ok(done.rows_affected())
    }

    /// Makes every waiting message for `destination` due at `now_ms`: its
    /// backoff is over (the endpoint answered again, or an operator asked).
    /// Leases are left alone: a message in flight stays with its sender.
    /// Returns how many were waiting out a backoff.
    pub(in crate::store) async fn make_due_now(
        &self,
        destination: &str,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin_outbox_write().await?;
        let done = sqlx::query(
            "UPDATE outbox SET next_attempt_ms = $1 \
             WHERE state = 'pending' AND destination_ods = $2 AND next_attempt_ms > $1",
        )
        .bind(now_ms)
        .bind(destination)
        .execute(tx.conn().await?)
        .await?;
        tx.commit().await?;
        if done.rows_affected() > 0 {
            self.outbox_signal.notify_one();
        }
        Ok(done.rows_affected())
    }

    /// One outbox message with its delivery history.
    pub(in crate::store) async fn delivery(
        &self,
        seq: i64,
    ) -> Result<Option<DeliveryEntry>, StoreError> {
        let s = self;
        let sql = format!("SELECT {ENTRY_COLUMNS} FROM outbox o WHERE o.seq = $1");
        let row: Option<DeliveryEntryRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(seq)
            .fetch_optional(&s.readers)
            .await?;
        row.map(DeliveryEntryRow::into_domain).transpose()
    }

    /// Outbox messages matching `filter`, in outbox order.
    pub(in crate::store) async fn deliveries(
        &self,
        filter: &DeliveryFilter,
    ) -> Result<Vec<DeliveryEntry>, StoreError> {
        let s = self;
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM outbox o \
             WHERE ($1 IS NULL OR o.state = $1) AND ($2 IS NULL OR o.destination_ods = $2) \
               AND ($3 IS NULL OR o.referral_id = $3) AND o.seq > $4 \
             ORDER BY o.seq LIMIT $5"
        );
        let rows: Vec<DeliveryEntryRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(filter.state.map(DeliveryState::as_str))
            .bind(filter.destination_ods.as_deref())
            .bind(filter.referral_id.as_deref())
            .bind(filter.after.unwrap_or(0))
            .bind(i64::from(filter.limit))
            .fetch_all(&s.readers)
            .await?;
        rows.into_iter()
            .map(DeliveryEntryRow::into_domain)
            .collect()
    }

    /// Waiting and dead messages per destination.
    pub(in crate::store) async fn destination_stats(
        &self,
    ) -> Result<Vec<DestinationStats>, StoreError> {
        let s = self;
        let rows: Vec<DestinationStatsRow> = sqlx::query_as(
            "SELECT destination_ods, \
                    COUNT(CASE WHEN state = 'pending' THEN 1 END) AS pending, \
                    COUNT(CASE WHEN state = 'dead' THEN 1 END) AS dead, \
                    MIN(CASE WHEN state = 'pending' THEN created_at END) AS oldest_pending \
             FROM outbox WHERE state IN ('pending', 'dead') \
             GROUP BY destination_ods ORDER BY destination_ods",
        )
        .fetch_all(&s.readers)
        .await?;
        Ok(rows
            .into_iter()
            .map(DestinationStatsRow::into_domain)
            .collect())
    }

    /// The `Bundle.id` of the message that brought the referral, which a
    /// `servicerequest-response` names in `response.identifier`.
    pub(in crate::store) async fn original_message_id(
        &self,
        referral_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let s = self;
        let row: Option<(Option<String>,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            // A body emptied by the retention purge has no id to read (and is not JSON).
            "SELECT CASE WHEN length(body) > 0 THEN {BODY_JSON_ID} END FROM referral_submissions \
             WHERE referral_id = $1 AND received_as = 'message' ORDER BY seq LIMIT 1"
        )))
        .bind(referral_id)
        .fetch_optional(&s.readers)
        .await?;
        Ok(row.and_then(|(id,)| id))
    }
}

/// A message claimed for sending: what `claim_due`'s `RETURNING` selects.
#[derive(sqlx::FromRow)]
struct ClaimedRow {
    seq: i64,
    referral_id: String,
    resource_type: String,
    resource_id: String,
    version_id: i64,
    destination_ods: String,
    reply_to: Option<String>,
    created_at: String,
    attempts: i64,
    age_from_ms: i64,
}

impl ClaimedRow {
    fn into_domain(self) -> ClaimedMessage {
        ClaimedMessage {
            seq: self.seq,
            referral_id: self.referral_id,
            resource_type: self.resource_type,
            resource_id: self.resource_id,
            version_id: self.version_id,
            destination_ods: self.destination_ods,
            reply_to: self.reply_to,
            created_at: self.created_at,
            attempts: self.attempts,
            age_from_ms: self.age_from_ms,
        }
    }
}

/// One outbox message with its delivery history: the columns of `ENTRY_COLUMNS`.
#[derive(sqlx::FromRow)]
struct DeliveryEntryRow {
    seq: i64,
    referral_id: String,
    resource_type: String,
    resource_id: String,
    version_id: i64,
    destination_ods: Option<String>,
    state: String,
    attempts: i64,
    created_at: String,
    next_attempt_ms: i64,
    last_attempt_at: Option<String>,
    last_status: Option<i64>,
    last_error: Option<String>,
    receiver_response: Option<String>,
    delivered_at: Option<String>,
    dead_at: Option<String>,
    blocked_by: Option<i64>,
}

impl DeliveryEntryRow {
    fn into_domain(self) -> Result<DeliveryEntry, StoreError> {
        let state = DeliveryState::parse(&self.state).ok_or_else(|| StoreError::Corrupt {
            resource_type: "outbox".into(),
            id: self.seq.to_string(),
            reason: format!("unknown delivery state {:?}", self.state),
        })?;
        Ok(DeliveryEntry {
            seq: self.seq,
            referral_id: self.referral_id,
            resource_type: self.resource_type,
            resource_id: self.resource_id,
            version_id: self.version_id,
            destination_ods: self.destination_ods,
            state,
            attempts: self.attempts,
            created_at: self.created_at,
            next_attempt_ms: self.next_attempt_ms,
            last_attempt_at: self.last_attempt_at,
            // A status outside HTTP's range is none the receiver sent.
            last_status: self.last_status.and_then(|s| u16::try_from(s).ok()),
            last_error: self.last_error,
            receiver_response: self.receiver_response,
            delivered_at: self.delivered_at,
            dead_at: self.dead_at,
            blocked_by: self.blocked_by,
        })
    }
}

/// Waiting and dead messages for one destination.
#[derive(sqlx::FromRow)]
struct DestinationStatsRow {
    destination_ods: Option<String>,
    pending: Option<i64>,
    dead: Option<i64>,
    oldest_pending: Option<String>,
}

impl DestinationStatsRow {
    fn into_domain(self) -> DestinationStats {
        DestinationStats {
            destination_ods: self.destination_ods,
            pending: self.pending.unwrap_or(0),
            dead: self.dead.unwrap_or(0),
            oldest_pending: self.oldest_pending,
        }
    }
}
