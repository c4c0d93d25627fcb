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
//!   included: the next update becomes claimable only once its head's result
//!   is recorded.
//! - No slot waits for the writer. On SQLite every write joins a group
//!   commit that under intake takes tens of milliseconds; a slot that waited
//!   for its claim and then for its result cycled at two batches a send. So
//!   claims run beside the slots, each taking several heads of a destination
//!   (enough to keep its slots busy until the next claim lands) into a local
//!   queue, and a finished send hands its result to the recorder, which
//!   writes every result that arrived while its previous write committed in
//!   one write, and the slot takes the next queued head at once.
//! - **What a lease means with a queue.** A claim leases its heads for
//!   [`QUEUE_ALLOWANCE`] plus the send's own lease (the configured lease, at
//!   least four times the endpoint's timeout plus 5 s). A head starts its send
//!   only while its lease still has the whole send's lease left, that is
//!   within the allowance of its claim; one that waited longer is handed back
//!   (released, not sent), because its lease could lapse mid-send and another
//!   instance take it. So a send always ends before the lease it started
//!   under could lapse, as before queueing. The claim-ahead is also bounded
//!   by the destination's recent send time, so that its queue drains within
//!   half the allowance and a slow practice is not claimed ahead in vain.
//! - At shutdown nothing new is sent: queued heads are released, sends in
//!   flight finish (within the grace), and the recorder writes every result
//!   before the worker returns, so nothing the receiver acknowledged is sent
//!   again for want of its result.
//! - Logs carry the outbox sequence, referral id, destination ODS code and
//!   resource reference: never resource content or receiver bodies.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant as StdInstant};

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::endpoints::{DeliveryMode, Endpoint, Endpoints};
use super::metrics::{AttemptOutcome, DeliveryMetrics};
use super::outbound::{self, MessageContext};
use super::policy::{RetryPolicy, Verdict, classify_response, classify_transport};
use super::transport::OutboundRequest;
use crate::fhir::{FhirId, Instant, ResourceType, VersionId};
use crate::store::outbox::{AttemptRecord, AttemptResult, ClaimedMessage};
use crate::store::{ReadOutcome, Store, StoreError, Visibility};

/// The largest receiver answer kept with a dead letter.
const MAX_KEPT_RESPONSE: usize = 64 * 1024;

/// How long a claimed head may wait in the worker's queue for a slot. Its
/// lease covers this wait as well as the send; a head that waited longer is
/// released, not sent. Also what a crashed instance adds to the time before
/// another takes over its claims: a few seconds, against claims that land
/// within tens of milliseconds under load.
pub const QUEUE_ALLOWANCE: Duration = Duration::from_secs(5);

/// At most this many heads per slot are claimed ahead of the slots: at 1 ms
/// a send, 4 slots and a claim every 30 to 60 ms (a SQLite group-commit batch
/// under intake), 64 queued heads keep the slots busy until the next claim.
const CLAIM_AHEAD_PER_SLOT: usize = 16;

/// The most results the recorder writes at once.
const MAX_RESULTS_PER_WRITE: usize = 512;

/// How long the recorder waits before writing results again after a failed
/// write (it keeps them: a result dropped would have its message sent again).
const RECORD_RETRY: Duration = Duration::from_millis(250);

/// How the worker runs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// How often to look for due messages when nothing wakes the worker.
    pub poll_interval: Duration,
    /// The least a send's lease lasts (longer for an endpoint whose timeout
    /// needs it); a claim adds [`QUEUE_ALLOWANCE`].
    pub lease: Duration,
    /// Retries and giving up.
    pub policy: RetryPolicy,
    /// Sprig's absolute FHIR base URL (for message-mode references).
    pub fhir_base: String,
    /// The service's name (message `source.name`).
    pub service_name: String,
    /// How long to let sends in flight finish at shutdown (and, again, to
    /// write their results).
    pub shutdown_grace: Duration,
}

impl WorkerSettings {
    /// The lease a send needs on `endpoint`: it must outlast the send, or the
    /// row could be claimed again while it is still in flight. A send is at
    /// most a token request and a request, twice after a 401, each within
    /// the endpoint's timeout.
    fn send_lease(&self, endpoint: &Endpoint) -> Duration {
        self.lease
            .max(endpoint.timeout.saturating_mul(4) + Duration::from_secs(5))
    }
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

/// A claimed head waiting in the worker's queue for a slot.
struct Queued {
    message: ClaimedMessage,
    /// Its lease's end (Unix ms, this process's clock).
    lease_until_ms: i64,
}

/// One destination as the worker sees it.
#[derive(Default)]
struct Destination {
    /// Claimed heads, oldest first.
    queue: VecDeque<Queued>,
    /// Sends in flight.
    in_flight: usize,
    /// A claim is being written.
    claiming: bool,
    /// The last claim came back short: nothing more was due when it read the
    /// outbox. Cleared by anything that may make more due (a listing after a
    /// wake or the poll, a recorded result).
    exhausted: bool,
    /// Something may have become due since the claim being written read the
    /// outbox, so a short answer does not mean nothing is due.
    stirred: bool,
    /// Recent send time in seconds (exponentially weighted), which bounds
    /// the claim-ahead; `None` until a send has finished.
    send_secs: Option<f64>,
}

impl Destination {
    /// How many heads to keep queued for `slots` slots: enough to keep them
    /// busy until the next claim lands, and no more than they send within
    /// half the queue allowance at the recent send time.
    fn ahead(&self, slots: usize) -> usize {
        let most = slots.saturating_mul(CLAIM_AHEAD_PER_SLOT);
        match self.send_secs {
            None => most,
            Some(secs) => {
                let fit = slots as f64 * QUEUE_ALLOWANCE.as_secs_f64() / 2.0 / secs.max(1e-4);
                // Saturating float-to-int conversion; `fit` is finite and positive.
                (fit as usize).clamp(1, most.max(1))
            }
        }
    }

    fn sent(&mut self, took: Duration) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let took = took.as_secs_f64();
        self.send_secs = Some(match self.send_secs {
            None => took,
            Some(recent) => 0.8 * recent + 0.2 * took,
        });
    }

    /// Something may have become due.
    fn stir(&mut self) {
        self.exhausted = false;
        self.stirred = true;
    }
}

/// What a claim or a listing came to (background work of the loop).
enum Landed {
    Claimed {
        destination: String,
        asked: usize,
        lease_until_ms: i64,
        claimed: Result<Vec<ClaimedMessage>, StoreError>,
    },
    Listed(Result<Vec<String>, StoreError>),
}

/// A finished attempt, on its way to the recorder.
struct Finished {
    message: ClaimedMessage,
    result: AttemptResult,
    status: Option<u16>,
    /// When the attempt started (for a release, when it was handed back).
    started: Instant,
    at: Instant,
    /// How long the send took (`None`: nothing was sent).
    took: Option<Duration>,
    /// The first delivery to its destination since start-up or a transient
    /// failure: the destination's waiting messages are made due now.
    first_answer: bool,
}

impl Finished {
    fn released(message: ClaimedMessage) -> Self {
        let now = Instant::now();
        Self {
            message,
            result: AttemptResult::Released,
            status: None,
            started: now,
            at: now,
            took: None,
            first_answer: false,
        }
    }
}

/// The loop's own state.
#[derive(Default)]
struct Running {
    destinations: HashMap<String, Destination>,
    /// Sends in flight; each yields how long it took. Keyed by task id to
    /// its destination, so a send that panics still frees its slot.
    sends: JoinSet<Duration>,
    send_destinations: HashMap<tokio::task::Id, String>,
    /// Claims and the listing being read.
    landing: JoinSet<Landed>,
    listing: bool,
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

    /// Runs until `stop` turns true, then releases the heads it had queued,
    /// lets sends in flight finish (up to the grace period; an unfinished one
    /// keeps its lease, which lapses) and writes every result.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let (results, to_record) = mpsc::unbounded_channel();
        let (recorded, mut stirred) = mpsc::unbounded_channel();
        let recorder = tokio::spawn(record_results(
            Arc::clone(&self.shared),
            to_record,
            recorded,
        ));
        let mut running = Running::default();
        let mut poll = tokio::time::interval(self.shared.settings.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(owner = %self.shared.owner, "delivery worker started");
        // Look for every destination with due messages (at start-up, on a
        // wake and at each poll). Between looks, a destination is claimed
        // for again when its queue runs low, as long as its last claim found
        // as many as it asked for or something has happened since.
        let mut look = true;
        loop {
            if *stop.borrow() {
                break;
            }
            if look && !running.listing {
                look = false;
                running.listing = true;
                let store = self.shared.store.clone();
                // Only organisations with an endpoint: the others' updates wait for
                // pull, and may be most of the outbox.
                let with_endpoint: Vec<String> = self
                    .endpoints
                    .current()
                    .iter()
                    .map(|endpoint| endpoint.ods_code.clone())
                    .collect();
                running.landing.spawn(async move {
                    let now_ms = Instant::now().unix_millis();
                    Landed::Listed(store.due_destinations(now_ms, &with_endpoint).await)
                });
            }
            self.dispatch(&mut running, &results);
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                Some(done) = running.sends.join_next_with_id(), if !running.sends.is_empty() => {
                    running.send_finished(done);
                    while let Some(done) = running.sends.try_join_next_with_id() {
                        running.send_finished(done);
                    }
                }
                Some(landed) = running.landing.join_next(), if !running.landing.is_empty() => {
                    match landed {
                        Ok(landed) => running.landed(landed),
                        Err(error) => tracing::error!(%error, "a claim task failed"),
                    }
                }
                Some(destinations) = stirred.recv() => {
                    let destinations: Vec<String> = destinations;
                    for destination in destinations {
                        running.destinations.entry(destination).or_default().stir();
                    }
                }
                () = self.wake.notified() => look = true,
                // Retries coming due, lapsed leases and claims that failed
                // are found by the listing, which stirs only the destinations
                // with something due: an idle worker writes nothing.
                _ = poll.tick() => look = true,
            }
        }
        self.stop(running, results, recorder).await;
        tracing::info!("delivery worker stopped");
    }

    /// Starts a send for each queued head with a free slot, and a claim for
    /// each destination whose queue runs low.
    fn dispatch(&self, running: &mut Running, results: &mpsc::UnboundedSender<Finished>) {
        let registry = self.endpoints.current();
        let now_ms = Instant::now().unix_millis();
        let Running {
            destinations,
            sends,
            send_destinations,
            landing,
            ..
        } = running;
        for (name, destination) in destinations.iter_mut() {
            // No endpoint (any more): the updates stay for pull (and show
            // as such); heads claimed before a reload go back.
            let Some(endpoint) = registry.get(name) else {
                for queued in destination.queue.drain(..) {
                    let _ = results.send(Finished::released(queued.message));
                }
                continue;
            };
            let send_lease = self.shared.settings.send_lease(&endpoint);
            let send_lease_ms = i64::try_from(send_lease.as_millis()).unwrap_or(i64::MAX);
            while destination.in_flight < endpoint.max_in_flight {
                let Some(queued) = destination.queue.pop_front() else {
                    break;
                };
                if now_ms.saturating_add(send_lease_ms) > queued.lease_until_ms {
                    // Waited past its allowance: its lease might lapse
                    // mid-send, and another instance take it.
                    tracing::debug!(
                        seq = queued.message.seq,
                        "a claimed update waited too long for a slot; released"
                    );
                    let _ = results.send(Finished::released(queued.message));
                    continue;
                }
                let task = sends.spawn(send(
                    Arc::clone(&self.shared),
                    Arc::clone(&endpoint),
                    queued.message,
                    results.clone(),
                ));
                send_destinations.insert(task.id(), name.clone());
                destination.in_flight += 1;
            }
            let ahead = destination.ahead(endpoint.max_in_flight);
            if destination.claiming
                || destination.exhausted
                || destination.queue.len().saturating_mul(2) >= ahead
            {
                continue;
            }
            let asked = (ahead + endpoint.max_in_flight)
                .saturating_sub(destination.queue.len() + destination.in_flight);
            if asked == 0 {
                continue;
            }
            destination.claiming = true;
            destination.stirred = false;
            let lease = send_lease + QUEUE_ALLOWANCE;
            let lease_until_ms =
                now_ms.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
            let (store, owner, name) = (
                self.shared.store.clone(),
                self.shared.owner.clone(),
                name.clone(),
            );
            landing.spawn(async move {
                let claimed = store
                    .claim_due(
                        &name,
                        &owner,
                        Instant::now().unix_millis(),
                        lease_until_ms,
                        u32::try_from(asked).unwrap_or(u32::MAX),
                    )
                    .await;
                Landed::Claimed {
                    destination: name,
                    asked,
                    lease_until_ms,
                    claimed,
                }
            });
        }
    }

    /// Stops: releases queued heads (and those of claims still landing),
    /// lets sends in flight finish within the grace, then waits for the
    /// recorder to write every result.
    async fn stop(
        &self,
        mut running: Running,
        results: mpsc::UnboundedSender<Finished>,
        recorder: tokio::task::JoinHandle<()>,
    ) {
        let grace = self.shared.settings.shutdown_grace;
        for destination in running.destinations.values_mut() {
            for queued in destination.queue.drain(..) {
                let _ = results.send(Finished::released(queued.message));
            }
        }
        let landed = tokio::time::timeout(grace, async {
            while let Some(landed) = running.landing.join_next().await {
                if let Ok(Landed::Claimed {
                    claimed: Ok(claimed),
                    ..
                }) = landed
                {
                    for message in claimed {
                        let _ = results.send(Finished::released(message));
                    }
                }
            }
        })
        .await;
        if landed.is_err() {
            // A claim still being written: its heads' leases lapse.
            running.landing.abort_all();
        }
        let drained = tokio::time::timeout(grace, async {
            while running.sends.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                still_sending = running.sends.len(),
                "delivery stopped with sends in flight; their leases lapse and they are sent again"
            );
            running.sends.abort_all();
        }
        // The recorder ends once every result sent to it is written.
        drop(results);
        let mut recorder = recorder;
        if tokio::time::timeout(grace, &mut recorder).await.is_err() {
            tracing::warn!(
                "delivery stopped before every result was written; those messages' leases lapse and they are sent again"
            );
            recorder.abort();
        }
    }
}

impl Running {
    /// Frees the slot of a finished send.
    fn send_finished(&mut self, done: Result<(tokio::task::Id, Duration), tokio::task::JoinError>) {
        let (task, took) = match done {
            Ok((task, took)) => (task, Some(took)),
            Err(error) => {
                // The message's lease lapses and it is sent again.
                tracing::error!(%error, "a delivery task failed");
                (error.id(), None)
            }
        };
        let Some(name) = self.send_destinations.remove(&task) else {
            return;
        };
        if let Some(destination) = self.destinations.get_mut(&name) {
            match took {
                Some(took) => destination.sent(took),
                None => destination.in_flight = destination.in_flight.saturating_sub(1),
            }
        }
    }

    /// Takes in what a claim or a listing found.
    fn landed(&mut self, landed: Landed) {
        match landed {
            Landed::Listed(listed) => {
                self.listing = false;
                match listed {
                    Ok(names) => {
                        for name in names {
                            self.destinations.entry(name).or_default().stir();
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the outbox; trying again at the next poll");
                    }
                }
            }
            Landed::Claimed {
                destination: name,
                asked,
                lease_until_ms,
                claimed,
            } => {
                let destination = self.destinations.entry(name).or_default();
                destination.claiming = false;
                match claimed {
                    Ok(claimed) => {
                        if claimed.len() < asked && !destination.stirred {
                            destination.exhausted = true;
                        }
                        destination
                            .queue
                            .extend(claimed.into_iter().map(|message| Queued {
                                message,
                                lease_until_ms,
                            }));
                    }
                    Err(error) => {
                        // Tried again at the next poll.
                        destination.exhausted = true;
                        tracing::warn!(%error, "cannot claim outbox messages");
                    }
                }
            }
        }
    }
}

/// Sends one claimed message and hands what came of it to the recorder;
/// returns how long it took.
async fn send(
    shared: Arc<Shared>,
    endpoint: Arc<Endpoint>,
    message: ClaimedMessage,
    results: mpsc::UnboundedSender<Finished>,
) -> Duration {
    let span = tracing::info_span!(
        "deliver",
        seq = message.seq,
        referral = %message.referral_id,
        destination = %message.destination_ods,
        resource = %format!("{}/{}/_history/{}", message.resource_type, message.resource_id, message.version_id),
        attempt = message.attempts,
    );
    let started = StdInstant::now();
    match deliver(&shared, &endpoint, message).instrument(span).await {
        Ok(finished) => {
            // The receiver closes only when the worker has stopped and
            // dropped its recorder: the lease then lapses.
            let _ = results.send(finished);
        }
        Err(error) => {
            // The lease lapses and the message is tried again.
            tracing::warn!(%error, "could not prepare a delivery");
        }
    }
    started.elapsed()
}

/// Sends one message and says what came of it.
async fn deliver(
    shared: &Shared,
    endpoint: &Endpoint,
    message: ClaimedMessage,
) -> Result<Finished, StoreError> {
    let attempt_started = Instant::now();
    let request = match prepare(shared, endpoint, &message).await? {
        Ok(request) => request,
        Err(problem) => {
            return Ok(judge(
                shared,
                Attempt {
                    message,
                    started: attempt_started,
                    took: None,
                },
                Verdict::Permanent(problem),
                None,
                None,
                None,
            ));
        }
    };
    let started = StdInstant::now();
    let answer = endpoint.send(request).await;
    let attempt = Attempt {
        message,
        started: attempt_started,
        took: Some(started.elapsed()),
    };
    Ok(match answer {
        Ok(response) => {
            let verdict = classify_response(&response);
            // The receiver's answer to a refusal (its OperationOutcome) is
            // what an operator needs to fix the cause: keep it.
            let kept = matches!(verdict, Verdict::Permanent(_)).then(|| {
                let end = response.body.len().min(MAX_KEPT_RESPONSE);
                String::from_utf8_lossy(&response.body[..end]).into_owned()
            });
            judge(
                shared,
                attempt,
                verdict,
                Some(response.status),
                response.retry_after,
                kept,
            )
        }
        Err(error) => judge(
            shared,
            attempt,
            classify_transport(&error),
            None,
            None,
            None,
        ),
    })
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

/// One attempt at a claimed message, judged once it is over.
struct Attempt {
    message: ClaimedMessage,
    /// When it started (before its request was built).
    started: Instant,
    /// How long the send took (`None`: nothing was sent).
    took: Option<Duration>,
}

/// What `verdict` means for the attempt's message now: a transient failure
/// past the maximum age is a dead letter.
fn judge(
    shared: &Shared,
    attempt: Attempt,
    verdict: Verdict,
    status: Option<u16>,
    retry_after: Option<Duration>,
    receiver_response: Option<String>,
) -> Finished {
    let Attempt {
        message,
        started,
        took,
    } = attempt;
    let now = Instant::now();
    let mut first_answer = false;
    let result = match verdict {
        Verdict::Delivered => {
            first_answer = shared.answered(&message.destination_ods);
            AttemptResult::Delivered
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
                AttemptResult::Dead {
                    error: format!(
                        "gave up after {} attempts over {} s (maximum age {} s); last failure: {reason}",
                        message.attempts,
                        (now.unix_millis() - age_from).max(0) / 1000,
                        policy.max_age.as_secs()
                    ),
                    receiver_response: None,
                }
            } else {
                AttemptResult::Retry {
                    error: reason,
                    next_attempt_ms: next,
                }
            }
        }
        Verdict::Permanent(reason) => AttemptResult::Dead {
            error: reason,
            receiver_response,
        },
    };
    Finished {
        message,
        result,
        status,
        started,
        at: now,
        took,
        first_answer,
    }
}

/// The recorder: writes the results sent to it, all those that arrived
/// while its previous write committed in one write, and tells the loop which
/// destinations may have more due (a delivered or released head). A write
/// that fails is tried again with the same results, so none is dropped;
/// ends once `results` is closed and every result is written.
async fn record_results(
    shared: Arc<Shared>,
    mut results: mpsc::UnboundedReceiver<Finished>,
    stirred: mpsc::UnboundedSender<Vec<String>>,
) {
    let mut batch: Vec<Finished> = Vec::new();
    loop {
        if batch.is_empty() {
            if results.recv_many(&mut batch, MAX_RESULTS_PER_WRITE).await == 0 {
                return;
            }
        } else {
            while batch.len() < MAX_RESULTS_PER_WRITE {
                match results.try_recv() {
                    Ok(finished) => batch.push(finished),
                    Err(_) => break,
                }
            }
        }
        let records: Vec<AttemptRecord> = batch
            .iter()
            .map(|finished| AttemptRecord {
                seq: finished.message.seq,
                result: finished.result.clone(),
                status: finished.status,
                at: finished.at.to_fhir(),
                started_at: finished.started.to_fhir(),
                age_from_ms: finished.message.age_from_ms,
            })
            .collect();
        let recorded = match shared.store.record_attempts(&shared.owner, &records).await {
            Ok(recorded) => recorded,
            Err(error) => {
                tracing::warn!(%error, results = batch.len(), "cannot record delivery results; trying again");
                tokio::time::sleep(RECORD_RETRY).await;
                continue;
            }
        };
        let mut more_due = HashSet::new();
        let mut answering_again = HashSet::new();
        for (finished, recorded) in batch.drain(..).zip(recorded) {
            if matches!(
                finished.result,
                AttemptResult::Delivered | AttemptResult::Released
            ) {
                more_due.insert(finished.message.destination_ods.clone());
            }
            if finished.first_answer {
                answering_again.insert(finished.message.destination_ods.clone());
            }
            observe(&shared, &finished, recorded);
        }
        for destination in answering_again {
            // The endpoint is back (or this process just started): what
            // failed while it was away is sent now, not after each head's own
            // backoff.
            match shared
                .store
                .make_due_now(&destination, Instant::now().unix_millis())
                .await
            {
                Ok(0) => {}
                Ok(made_due) => tracing::info!(
                    destination = %destination,
                    made_due,
                    "the endpoint answers again; its waiting updates are due now"
                ),
                Err(error) => {
                    tracing::warn!(%error, destination = %destination, "cannot make waiting updates due now")
                }
            }
        }
        let _ = stirred.send(more_due.into_iter().collect());
    }
}

/// Logs and counts one recorded result.
fn observe(shared: &Shared, finished: &Finished, recorded: bool) {
    let message = &finished.message;
    let _span = tracing::info_span!(
        "deliver",
        seq = message.seq,
        referral = %message.referral_id,
        destination = %message.destination_ods,
        attempt = message.attempts,
    )
    .entered();
    let status = finished.status;
    let outcome = match &finished.result {
        AttemptResult::Released => return,
        _ if !recorded => {
            tracing::warn!(
                "the lease lapsed during the attempt; another worker owns the message now"
            );
            return;
        }
        AttemptResult::Delivered => {
            if let Ok(created) = Instant::parse(&message.created_at) {
                let ms = finished
                    .at
                    .unix_millis()
                    .saturating_sub(created.unix_millis())
                    .max(0);
                shared
                    .metrics
                    .delivered_after(Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
            }
            tracing::info!(status, "delivered");
            AttemptOutcome::Delivered
        }
        AttemptResult::Retry {
            error,
            next_attempt_ms,
        } => {
            let retry_in_ms = next_attempt_ms.saturating_sub(finished.at.unix_millis());
            tracing::info!(status, reason = %error, retry_in_ms, "will retry");
            AttemptOutcome::Retry
        }
        AttemptResult::Dead { error, .. } => {
            tracing::warn!(status, reason = %error, "dead-lettered");
            AttemptOutcome::Dead
        }
    };
    shared
        .metrics
        .attempt(&message.destination_ods, outcome, finished.took);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after_sends_of(secs: f64) -> Destination {
        Destination {
            send_secs: Some(secs),
            ..Destination::default()
        }
    }

    #[test]
    fn claims_ahead_only_what_the_slots_send_within_half_the_queue_allowance() {
        // Nothing measured yet, or fast sends: the most per slot.
        assert_eq!(Destination::default().ahead(4), 64);
        assert_eq!(after_sends_of(0.001).ahead(4), 64);
        // 4 slots at 2 s a send send 5 within 2.5 s.
        assert_eq!(after_sends_of(2.0).ahead(4), 5);
        // However slow, one head waits for a slot, so a freed slot need not
        // wait for a claim.
        assert_eq!(after_sends_of(60.0).ahead(1), 1);
    }

    #[test]
    fn a_send_s_time_moves_the_estimate_a_fifth_of_the_way() {
        let mut destination = Destination {
            in_flight: 1,
            ..after_sends_of(1.0)
        };
        destination.sent(Duration::from_secs(2));
        assert_eq!(destination.in_flight, 0);
        assert!((destination.send_secs.unwrap_or_default() - 1.2).abs() < 1e-9);
    }
}
