//! The outbox as the delivery worker and the service API see it: claiming
//! due messages under a lease, recording what each attempt came to, dead
//! letters and their retry, and the figures `/metrics` reports.
//!
//! Invariants:
//! - only the *head* of a referral's queue is ever claimed: a message is due
//!   only when no earlier message of the same referral is still pending or
//!   dead, so updates reach the practice in the order they were made, and a
//!   dead letter holds back the updates after it until an operator acts;
//! - a claim is a lease (owner, expiry); an attempt's result is recorded only
//!   by the lease's owner, and a lapsed lease makes the message claimable
//!   again, so a crashed worker delays delivery but never loses it;
//! - delivery writes go through the single writer connection, like every
//!   other write, so they never race the transaction that enqueued the row;
//! - a head whose result is not yet recorded is still pending under its
//!   lease, so its referral's next update cannot be claimed before it: the
//!   worker may record results late and in batches without breaking order.
use std::sync::Arc;

use tokio::sync::Notify;

use super::{Store, StoreError, dispatch};

/// The state of an outbox message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting to be sent (or being sent, under a lease).
    Pending,
    /// Accepted by the receiver.
    Delivered,
    /// Given up on: a permanent failure, or retries past the maximum age.
    Dead,
}

impl DeliveryState {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }

    /// Parses the stored name.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "pending" => Some(DeliveryState::Pending),
            "delivered" => Some(DeliveryState::Delivered),
            "dead" => Some(DeliveryState::Dead),
            _ => None,
        }
    }
}

/// A message a worker has claimed and must now send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedMessage {
    /// Outbox order.
    pub seq: i64,
    /// The referral it reports on.
    pub referral_id: String,
    /// What to send: the resource type,
    pub resource_type: String,
    /// its id,
    pub resource_id: String,
    /// and the version.
    pub version_id: i64,
    /// The referring practice.
    pub destination_ods: String,
    /// The reply address from the referral message, if any.
    pub reply_to: Option<String>,
    /// When the change was made (FHIR instant).
    pub created_at: String,
    /// Attempts so far, this one included.
    pub attempts: i64,
    /// Where the maximum age counts from (Unix ms): the first recorded attempt,
    /// or the first after an operator's retry; this claim's time when there is
    /// none yet (stored with this attempt's result). Not the change itself: an
    /// update held back behind a dead letter, or kept until its practice had an
    /// endpoint, has not been failing all that time.
    pub age_from_ms: i64,
}

/// One outbox message with its delivery history, for the service API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryEntry {
    /// Outbox order.
    pub seq: i64,
    /// The referral.
    pub referral_id: String,
    /// Resource type, id and version sent.
    pub resource_type: String,
    /// Resource id.
    pub resource_id: String,
    /// Resource version.
    pub version_id: i64,
    /// The referring practice.
    pub destination_ods: Option<String>,
    /// Delivery state.
    pub state: DeliveryState,
    /// Attempts so far.
    pub attempts: i64,
    /// When the change was made.
    pub created_at: String,
    /// When the next attempt may start (Unix ms), for pending messages.
    pub next_attempt_ms: i64,
    /// When the last attempt started.
    pub last_attempt_at: Option<String>,
    /// The receiver's last HTTP status, if it answered.
    pub last_status: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// The receiver's answer to a permanent failure.
    pub receiver_response: Option<String>,
    /// When it was delivered.
    pub delivered_at: Option<String>,
    /// When it was dead-lettered.
    pub dead_at: Option<String>,
    /// The dead letter that holds this pending message back, if any.
    pub blocked_by: Option<i64>,
}

/// Which outbox messages to list.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// Only this state.
    pub state: Option<DeliveryState>,
    /// Only this destination.
    pub destination_ods: Option<String>,
    /// Only this referral.
    pub referral_id: Option<String>,
    /// Only messages after this `seq` (keyset paging).
    pub after: Option<i64>,
    /// At most this many.
    pub limit: u32,
}

/// Per-destination figures, for the endpoint view and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationStats {
    /// The referring practice (`None`: a referral with no practice ODS code).
    pub destination_ods: Option<String>,
    /// Messages waiting.
    pub pending: i64,
    /// Dead letters.
    pub dead: i64,
    /// When the oldest waiting message was made (FHIR instant).
    pub oldest_pending: Option<String>,
}

/// What came of a claimed message, as [`Store::record_attempts`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// Accepted by the receiver.
    Delivered,
    /// A transient failure: try again at `next_attempt_ms` (Unix ms).
    Retry {
        /// Why it failed.
        error: String,
        /// When the next attempt may start.
        next_attempt_ms: i64,
    },
    /// Given up on, keeping the receiver's answer.
    Dead {
        /// Why.
        error: String,
        /// The receiver's answer to a permanent failure.
        receiver_response: Option<String>,
    },
    /// Never sent: the claim is handed back (the worker is stopping, or the
    /// message waited in its queue past its allowance), due again at once and
    /// its attempt uncounted.
    Released,
}

/// One claimed message's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// The message.
    pub seq: i64,
    /// What came of it.
    pub result: AttemptResult,
    /// The receiver's status, if it answered.
    pub status: Option<u16>,
    /// When the attempt finished (FHIR instant).
    pub at: String,
    /// When the attempt started (FHIR instant): the message's `last_attempt_at`
    /// once recorded. Not recorded for a release.
    pub started_at: String,
    /// The claim's [`ClaimedMessage::age_from_ms`], kept as where the message's
    /// maximum age counts from if nothing earlier is. Not recorded for a release.
    pub age_from_ms: i64,
}

/// Why an operator's retry could not be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryRefusal {
    /// No such message.
    NotFound,
    /// The message is not a dead letter (its state is given).
    NotDead(DeliveryState),
}

impl Store {
    /// Woken after every commit that adds outbox rows.
    pub fn outbox_signal(&self) -> Arc<Notify> {
        dispatch!(self, b => b.outbox_signal())
    }

    /// Which of the destinations `among` (those with an endpoint) have at least one
    /// message due at `now_ms` (not leased, or its lease lapsed). A cheap read, so an
    /// idle worker costs the writer nothing; its time grows with the destinations
    /// asked about, not with the rows waiting for pull.
    pub async fn due_destinations(
        &self,
        now_ms: i64,
        among: &[String],
    ) -> Result<Vec<String>, StoreError> {
        dispatch!(self, b => b.due_destinations(now_ms, among).await)
    }

    /// Claims up to `limit` due messages for `destination`, each the head of
    /// its referral's queue, oldest first, leasing them to `owner` until
    /// `lease_until_ms`. The attempt is counted now, so a crash mid-send still
    /// counts as an attempt; nothing else is marked (when it was attempted, where
    /// its maximum age counts from) until its result is recorded, so a claim
    /// handed back unsent (`AttemptResult::Released`) leaves the row as it found it.
    pub async fn claim_due(
        &self,
        destination: &str,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
    ) -> Result<Vec<ClaimedMessage>, StoreError> {
        dispatch!(self, b => b.claim_due(destination, owner, now_ms, lease_until_ms, limit).await)
    }

    /// Records the results of `owner`'s attempts, all in one write (the
    /// delivery worker's recorder gathers them while the previous write
    /// commits). Says for each whether it was recorded: a delivery always is
    /// (whoever holds the lease, a delivered message is delivered); a
    /// failure or a release only while the lease is still `owner`'s, as
    /// otherwise another worker has the message and its attempt counts.
    pub async fn record_attempts(
        &self,
        owner: &str,
        attempts: &[AttemptRecord],
    ) -> Result<Vec<bool>, StoreError> {
        dispatch!(self, b => b.record_attempts(owner, attempts).await)
    }

    /// Puts a dead letter back in the queue, due at once, its maximum age
    /// counting afresh from its next attempt.
    pub async fn retry_dead(
        &self,
        seq: i64,
    ) -> Result<Result<DeliveryEntry, RetryRefusal>, StoreError> {
        dispatch!(self, b => b.retry_dead(seq).await)
    }

    /// Puts every dead letter for `destination` back in the queue. Returns
    /// how many.
    pub async fn retry_dead_for(&self, destination: &str) -> Result<u64, StoreError> {
        dispatch!(self, b => b.retry_dead_for(destination).await)
    }

    /// Makes every waiting message for `destination` due at `now_ms`,
    /// cutting short the backoffs of the heads that failed while the endpoint
    /// was down: the delivery worker does it at the first success from an
    /// endpoint, an operator by "send now". Messages in flight keep their
    /// leases. Returns how many were waiting out a backoff.
    pub async fn make_due_now(&self, destination: &str, now_ms: i64) -> Result<u64, StoreError> {
        dispatch!(self, b => b.make_due_now(destination, now_ms).await)
    }

    /// One outbox message with its delivery history.
    pub async fn delivery(&self, seq: i64) -> Result<Option<DeliveryEntry>, StoreError> {
        dispatch!(self, b => b.delivery(seq).await)
    }

    /// Outbox messages matching `filter`, in outbox order.
    pub async fn deliveries(
        &self,
        filter: &DeliveryFilter,
    ) -> Result<Vec<DeliveryEntry>, StoreError> {
        dispatch!(self, b => b.deliveries(filter).await)
    }

    /// Waiting and dead messages per destination.
    pub async fn destination_stats(&self) -> Result<Vec<DestinationStats>, StoreError> {
        dispatch!(self, b => b.destination_stats().await)
    }

    /// The `Bundle.id` of the message that brought the referral, which a
    /// `servicerequest-response` names in `response.identifier`.
    pub async fn original_message_id(
        &self,
        referral_id: &str,
    ) -> Result<Option<String>, StoreError> {
        dispatch!(self, b => b.original_message_id(referral_id).await)
    }

    /// Releases the leases a previous run of this process left (after a
    /// crash they would hold messages back until they lapse): every lease on
    /// SQLite, whose file one process uses; none on PostgreSQL, where the
    /// others belong to other instances and are left to lapse.
    pub async fn release_leases(&self) -> Result<u64, StoreError> {
        dispatch!(self, b => b.release_leases().await)
    }
}
