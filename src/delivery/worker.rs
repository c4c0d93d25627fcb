//! The delivery worker inside `sprig serve`: claims due outbox messages per
//! destination, sends each to the referrer's endpoint and records the result.
//!
//! - Woken by every commit that adds to the outbox, and polls besides (for
//!   retries coming due, lapsed leases, a reloaded registry).
//! - Each destination has its own in-flight limit (`max_in_flight`), and the
//!   worker never waits on one send to start another, so a slow practice
//!   fills only its own slots and never holds up the others.
//! - Only the head of each referral's queue is claimed (see
//!   `store::outbox`), so one referral's updates arrive in order, retries
//!   included.
//! - Logs carry the outbox sequence, referral id, destination ODS code and
//!   resource reference: never resource content or receiver bodies.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant as StdInstant};

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::endpoints::{DeliveryMode, Endpoint, Endpoints};
use super::metrics::{AttemptOutcome, DeliveryMetrics};
use super::outbound::{self, MessageContext};
use super::policy::{RetryPolicy, Verdict, classify_response, classify_transport};
use super::transport::OutboundRequest;
use crate::fhir::{FhirId, Instant, ResourceType, VersionId};
use crate::store::outbox::{AttemptRecord, ClaimedMessage};
use crate::store::{ReadOutcome, Store, StoreError, Visibility};

/// The largest receiver answer kept with a dead letter.
const MAX_KEPT_RESPONSE: usize = 64 * 1024;

/// How the worker runs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// How often to look for due messages when nothing wakes the worker.
    pub poll_interval: Duration,
    /// The least a claim lasts (longer for an endpoint whose timeout needs it).
    pub lease: Duration,
    /// Retries and giving up.
    pub policy: RetryPolicy,
    /// Sprig's absolute FHIR base URL (for message-mode references).
    pub fhir_base: String,
    /// The service's name (message `source.name`).
    pub service_name: String,
    /// How long to let sends in flight finish at shutdown.
    pub shutdown_grace: Duration,
}

/// Everything a send needs, shared by the worker's tasks.
struct Shared {
    store: Store,
    metrics: Arc<DeliveryMetrics>,
    settings: WorkerSettings,
    owner: String,
    /// The destinations whose last answer was a delivery. The first delivery
    /// to one that is not in it (since start-up, or since a transient
    /// failure) makes its waiting messages due now: each head that failed
    /// while the endpoint was down would otherwise wait out its own backoff.
    answering: Mutex<HashSet<String>>,
}

impl Shared {
    /// Records a delivery to `destination`; true when it is the first since
    /// start-up or since a transient failure.
    fn answered(&self, destination: &str) -> bool {
        let mut answering = self
            .answering
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        answering.insert(destination.to_owned())
    }

    /// Records a transient failure of `destination`.
    fn failed(&self, destination: &str) {
        let mut answering = self
            .answering
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        answering.remove(destination);
    }
}

/// The delivery worker.
pub struct Worker {
    shared: Arc<Shared>,
    endpoints: Arc<Endpoints>,
    wake: Arc<Notify>,
}

impl Worker {
    /// A worker over `store`'s outbox, delivering to `endpoints`.
    pub fn new(
        store: Store,
        endpoints: Arc<Endpoints>,
        metrics: Arc<DeliveryMetrics>,
        settings: WorkerSettings,
    ) -> Self {
        let wake = store.outbox_signal();
        Self {
            shared: Arc::new(Shared {
                store,
                metrics,
                settings,
                // Unique per run, so a restarted process never mistakes an
                // earlier run's lease for its own.
                owner: format!("sprig-{}", uuid::Uuid::now_v7()),
                answering: Mutex::new(HashSet::new()),
            }),
            endpoints,
            wake,
        }
    }

    /// Runs until `stop` turns true, then lets sends in flight finish (up to
    /// the grace period; an unfinished one keeps its lease, which lapses).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut in_flight = InFlight::default();
        let mut sends: JoinSet<()> = JoinSet::new();
        tracing::info!(owner = %self.shared.owner, "delivery worker started");
        // `None`: look for every destination with due messages; otherwise
        // claim only for these, whose sends just finished.
        let mut freed: Option<HashSet<String>> = None;
        loop {
            if *stop.borrow() {
                break;
            }
            self.claim_and_send(&mut in_flight, &mut sends, freed.take())
                .await;
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                Some(done) = sends.join_next_with_id(), if !sends.is_empty() => {
                    // A finished send frees a slot of its destination and may
                    // have made the next update of its referral the head:
                    // claim for that destination straight away. Asking the
                    // store which destinations are due reads the whole
                    // backlog, which made each send cost more the longer the
                    // queue was; that look waits for a wake or the poll.
                    let mut destinations = HashSet::new();
                    destinations.extend(in_flight.finished(done));
                    while let Some(done) = sends.try_join_next_with_id() {
                        destinations.extend(in_flight.finished(done));
                    }
                    freed = Some(destinations);
                }
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.shared.settings.poll_interval) => {}
            }
        }
        let grace = self.shared.settings.shutdown_grace;
        let drained =
            tokio::time::timeout(grace, async { while sends.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                still_sending = sends.len(),
                "delivery stopped with sends in flight; their leases lapse and they are sent again"
            );
            sends.abort_all();
        }
        tracing::info!("delivery worker stopped");
    }

    /// One round: for each destination with due messages (or each of
    /// `freed`, whose sends just finished) and free slots, claim as many as it
    /// has slots and start sending them.
    async fn claim_and_send(
        &self,
        in_flight: &mut InFlight,
        sends: &mut JoinSet<()>,
        freed: Option<HashSet<String>>,
    ) {
        let now = Instant::now();
        let now_ms = now.unix_millis();
        let destinations = match freed {
            Some(freed) => freed.into_iter().collect(),
            None => match self.shared.store.due_destinations(now_ms).await {
                Ok(destinations) => destinations,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the outbox; trying again at the next poll");
                    return;
                }
            },
        };
        let registry = self.endpoints.current();
        for destination in destinations {
            // No endpoint: the updates stay for pull (and show as such).
            let Some(endpoint) = registry.get(&destination) else {
                continue;
            };
            let free = endpoint
                .max_in_flight
                .saturating_sub(in_flight.count(&destination));
            if free == 0 {
                continue;
            }
            // The lease must outlast the send, or the row could be claimed
            // again while it is still in flight: a send is at most a token
            // request and a request, twice after a 401, each within the
            // endpoint's timeout.
            let lease = self
                .shared
                .settings
                .lease
                .max(endpoint.timeout.saturating_mul(4) + Duration::from_secs(5));
            let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
            let claimed = self
                .shared
                .store
                .claim_due(
                    &destination,
                    &self.shared.owner,
                    now_ms,
                    now_ms.saturating_add(lease_ms),
                    &now.to_fhir(),
                    u32::try_from(free).unwrap_or(u32::MAX),
                )
                .await;
            let claimed = match claimed {
                Ok(claimed) => claimed,
                Err(error) => {
                    tracing::warn!(%error, destination = %destination, "cannot claim outbox messages");
                    continue;
                }
            };
            for message in claimed {
                let shared = Arc::clone(&self.shared);
                let endpoint = Arc::clone(&endpoint);
                let span = tracing::info_span!(
                    "deliver",
                    seq = message.seq,
                    referral = %message.referral_id,
                    destination = %message.destination_ods,
                    resource = %format!("{}/{}/_history/{}", message.resource_type, message.resource_id, message.version_id),
                    attempt = message.attempts,
                );
                let task = sends.spawn(
                    async move {
                        if let Err(error) = deliver(&shared, &endpoint, message).await {
                            // The lease lapses and the message is tried again.
                            tracing::warn!(%error, "could not record a delivery attempt");
                        }
                    }
                    .instrument(span),
                );
                in_flight.started(task.id(), &destination);
            }
        }
    }
}

/// Sends in flight, by destination: the slots `max_in_flight` limits.
/// Keyed by task id, so a send that panics still frees its slot.
#[derive(Default)]
struct InFlight {
    tasks: HashMap<tokio::task::Id, String>,
    per_destination: HashMap<String, usize>,
}

impl InFlight {
    fn count(&self, destination: &str) -> usize {
        self.per_destination.get(destination).copied().unwrap_or(0)
    }

    fn started(&mut self, task: tokio::task::Id, destination: &str) {
        self.tasks.insert(task, destination.to_owned());
        *self
            .per_destination
            .entry(destination.to_owned())
            .or_insert(0) += 1;
    }

    /// Frees the slot of a finished send; returns its destination.
    fn finished(
        &mut self,
        done: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
    ) -> Option<String> {
        let task = match done {
            Ok((task, ())) => task,
            Err(error) => {
                // The message's lease lapses and it is sent again.
                tracing::error!(%error, "a delivery task failed");
                error.id()
            }
        };
        let destination = self.tasks.remove(&task)?;
        if let Some(count) = self.per_destination.get_mut(&destination) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_destination.remove(&destination);
            }
        }
        Some(destination)
    }
}

/// Sends one message and records what came of it.
async fn deliver(
    shared: &Shared,
    endpoint: &Endpoint,
    message: ClaimedMessage,
) -> Result<(), StoreError> {
    let request = match prepare(shared, endpoint, &message).await? {
        Ok(request) => request,
        Err(problem) => {
            let outcome = record(
                shared,
                &message,
                Verdict::Permanent(problem),
                None,
                None,
                None,
            )
            .await?;
            if let Some(outcome) = outcome {
                shared
                    .metrics
                    .attempt(&message.destination_ods, outcome, None);
            }
            return Ok(());
        }
    };
    let started = StdInstant::now();
    let answer = endpoint.send(request).await;
    let took = started.elapsed();
    let outcome = match answer {
        Ok(response) => {
            let verdict = classify_response(&response);
            // The receiver's answer to a refusal (its OperationOutcome) is
            // what an operator needs to fix the cause: keep it.
            let kept = matches!(verdict, Verdict::Permanent(_)).then(|| {
                let end = response.body.len().min(MAX_KEPT_RESPONSE);
                String::from_utf8_lossy(&response.body[..end]).into_owned()
            });
            record(
                shared,
                &message,
                verdict,
                Some(response.status),
                response.retry_after,
                kept.as_deref(),
            )
            .await?
        }
        Err(error) => {
            record(
                shared,
                &message,
                classify_transport(&error),
                None,
                None,
                None,
            )
            .await?
        }
    };
    if let Some(outcome) = outcome {
        shared
            .metrics
            .attempt(&message.destination_ods, outcome, Some(took));
    }
    Ok(())
}

/// The request that delivers `message`, or why none can be made (a
/// permanent failure: retrying will not make it possible).
async fn prepare(
    shared: &Shared,
    endpoint: &Endpoint,
    message: &ClaimedMessage,
) -> Result<Result<OutboundRequest, String>, StoreError> {
    let (Ok(resource_type), Ok(id)) = (
        ResourceType::parse(&message.resource_type),
        FhirId::parse(&message.resource_id),
    ) else {
        return Ok(Err(format!(
            "the outbox names {}/{}, which is not a resource Sprig can send",
            message.resource_type, message.resource_id
        )));
    };
    let version = VersionId::from_i64(message.version_id);
    let ReadOutcome::Found(stored) = shared
        .store
        .vread(resource_type, &id, version, &Visibility::All)
        .await?
    else {
        return Ok(Err(format!(
            "{}/{}/_history/{} is not in the store",
            message.resource_type, message.resource_id, message.version_id
        )));
    };
    let built = match endpoint.mode {
        DeliveryMode::Rest => outbound::rest_request(message, &stored.json),
        DeliveryMode::Message => {
            let original = shared
                .store
                .original_message_id(&message.referral_id)
                .await?;
            let fallback = format!("{}$process-message", endpoint.base_url);
            // The change's own time, not the send's: every retry must carry
            // the same body under the same X-Request-ID (a receiver that
            // remembers ids answers a different body with 409).
            let Ok(changed_at) = Instant::parse(&message.created_at) else {
                return Ok(Err(format!(
                    "the outbox row's created_at {:?} is not an instant",
                    message.created_at
                )));
            };
            outbound::message_request(
                message,
                &stored.json,
                &MessageContext {
                    fhir_base: &shared.settings.fhir_base,
                    service_name: &shared.settings.service_name,
                    original_message_id: original.as_deref(),
                    fallback_destination: &fallback,
                },
                changed_at,
            )
        }
    };
    Ok(built.map_err(|e| e.to_string()))
}

/// Records `verdict` for `message` and says what the attempt came to (a
/// transient failure past the maximum age is dead-lettered); `None` when the
/// lease had lapsed and another worker owns the message, whose attempt is
/// the one that counts.
async fn record(
    shared: &Shared,
    message: &ClaimedMessage,
    verdict: Verdict,
    status: Option<u16>,
    retry_after: Option<Duration>,
    receiver_response: Option<&str>,
) -> Result<Option<AttemptOutcome>, StoreError> {
    let now = Instant::now();
    let at = now.to_fhir();
    let attempt = AttemptRecord {
        seq: message.seq,
        owner: &shared.owner,
        status,
        at: &at,
    };
    match verdict {
        Verdict::Delivered => {
            shared.store.mark_delivered(attempt).await?;
            if let Ok(created) = Instant::parse(&message.created_at) {
                let ms = now
                    .unix_millis()
                    .saturating_sub(created.unix_millis())
                    .max(0);
                shared
                    .metrics
                    .delivered_after(Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
            }
            tracing::info!(status, "delivered");
            if shared.answered(&message.destination_ods) {
                // The endpoint is back (or this process just started): what
                // failed while it was away is sent now, not after each
                // head's own backoff.
                let made_due = shared
                    .store
                    .make_due_now(&message.destination_ods, now.unix_millis())
                    .await?;
                if made_due > 0 {
                    tracing::info!(
                        made_due,
                        "the endpoint answers again; its waiting updates are due now"
                    );
                }
            }
            Ok(Some(AttemptOutcome::Delivered))
        }
        Verdict::Transient(reason) => {
            shared.failed(&message.destination_ods);
            let policy = shared.settings.policy;
            let wait = policy.backoff(message.attempts, retry_after, fastrand::f64());
            let age_from = message.age_from_ms;
            let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
            let next = now.unix_millis().saturating_add(wait_ms);
            let max_age_ms = i64::try_from(policy.max_age.as_millis()).unwrap_or(i64::MAX);
            if next > age_from.saturating_add(max_age_ms) {
                let why = format!(
                    "gave up after {} attempts over {} s (maximum age {} s); last failure: {reason}",
                    message.attempts,
                    (now.unix_millis() - age_from).max(0) / 1000,
                    policy.max_age.as_secs()
                );
                if !shared.store.mark_dead(attempt, &why, None).await? {
                    return Ok(lease_lost());
                }
                tracing::warn!(status, reason = %reason, "dead-lettered: retries ran past the maximum age");
                return Ok(Some(AttemptOutcome::Dead));
            }
            if !shared.store.schedule_retry(attempt, &reason, next).await? {
                return Ok(lease_lost());
            }
            tracing::info!(status, reason = %reason, retry_in_ms = wait_ms, "will retry");
            Ok(Some(AttemptOutcome::Retry))
        }
        Verdict::Permanent(reason) => {
            if !shared
                .store
                .mark_dead(attempt, &reason, receiver_response)
                .await?
            {
                return Ok(lease_lost());
            }
            tracing::warn!(status, reason = %reason, "dead-lettered: permanent failure");
            Ok(Some(AttemptOutcome::Dead))
        }
    }
}

/// An attempt whose result was not recorded: the lease had lapsed.
fn lease_lost() -> Option<AttemptOutcome> {
    tracing::warn!("the lease lapsed during the attempt; another worker owns the message now");
    None
}
