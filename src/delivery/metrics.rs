//! Delivery figures for `/metrics`, in the OpenMetrics text format that
//! Prometheus scrapes. Counters and histograms are kept as deliveries happen;
//! the queue's gauges (depth, dead letters, age of the oldest message) are
//! read from the outbox at scrape time, so they are true after a restart and
//! across several workers. One registry per application, not a global one,
//! so two gateways in one process (the tests) keep their own figures.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::endpoints::EndpointRegistry;
use crate::fhir::Instant;
use crate::store::outbox::DestinationStats;

/// The media type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What an attempt came to.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Accepted by the receiver.
    Delivered,
    /// Failed; another attempt is scheduled.
    Retry,
    /// Failed for good; dead-lettered.
    Dead,
}

impl AttemptOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::Dead => "dead",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    destination: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    destination: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    destination: String,
    /// "registered", or "none": kept for pull, not an error.
    endpoint: String,
}

type HistogramFamily = Family<DestinationLabels, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    // 5 ms to ~40 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// The delivery metrics of one application.
#[derive(Debug)]
pub struct DeliveryMetrics {
    registry: Registry,
    attempts: Family<AttemptLabels, Counter>,
    request_seconds: HistogramFamily,
    change_to_delivery_seconds: Histogram,
    pending: Family<QueueLabels, Gauge>,
    dead: Family<DestinationLabels, Gauge>,
    oldest_pending_seconds: Family<DestinationLabels, Gauge<f64, AtomicU64>>,
    endpoints: Gauge,
}

impl Default for DeliveryMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl DeliveryMetrics {
    /// A registry with every delivery metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sprig");
        let attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "delivery_attempts",
            "Delivery attempts by destination ODS code and outcome",
            attempts.clone(),
        );
        let request_seconds: HistogramFamily = Family::new_with_constructor(request_histogram);
        registry.register(
            "delivery_request_duration_seconds",
            "Time for a receiver to answer one delivery request",
            request_seconds.clone(),
        );
        // 10 ms to ~3 days: a change delivered at once, or after an outage.
        let change_to_delivery_seconds = Histogram::new(exponential_buckets(0.01, 3.0, 20));
        registry.register(
            "delivery_latency_seconds",
            "Time from a change (stage, outcome) to its delivery to the referrer",
            change_to_delivery_seconds.clone(),
        );
        let pending = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "outbox_pending",
            "Updates waiting to be delivered, by destination; endpoint=none are kept for pull",
            pending.clone(),
        );
        let dead = Family::<DestinationLabels, Gauge>::default();
        registry.register(
            "outbox_dead_letters",
            "Updates delivery gave up on, waiting for an operator",
            dead.clone(),
        );
        let oldest_pending_seconds = Family::<DestinationLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "outbox_oldest_pending_age_seconds",
            "Age of the oldest waiting update, by destination",
            oldest_pending_seconds.clone(),
        );
        let endpoints = Gauge::default();
        registry.register(
            "delivery_endpoints",
            "Endpoints in the registry",
            endpoints.clone(),
        );
        Self {
            registry,
            attempts,
            request_seconds,
            change_to_delivery_seconds,
            pending,
            dead,
            oldest_pending_seconds,
            endpoints,
        }
    }

    /// Counts an attempt and how long the receiver took.
    pub fn attempt(&self, destination: &str, outcome: AttemptOutcome, took: Option<Duration>) {
        self.attempts
            .get_or_create(&AttemptLabels {
                destination: destination.to_owned(),
                outcome: outcome.as_str(),
            })
            .inc();
        if let Some(took) = took {
            self.request_seconds
                .get_or_create(&DestinationLabels {
                    destination: destination.to_owned(),
                })
                .observe(took.as_secs_f64());
        }
    }

    /// Records the time from a change to its delivery.
    pub fn delivered_after(&self, latency: Duration) {
        self.change_to_delivery_seconds
            .observe(latency.as_secs_f64());
    }

    /// The exposition, with the queue gauges set from `stats`.
    pub fn render(
        &self,
        stats: &[DestinationStats],
        registry: &EndpointRegistry,
        now: Instant,
    ) -> Result<String, std::fmt::Error> {
        // Destinations that emptied since the last scrape must not linger.
        self.pending.clear();
        self.dead.clear();
        self.oldest_pending_seconds.clear();
        self.endpoints
            .set(i64::try_from(registry.len()).unwrap_or(i64::MAX));
        for row in stats {
            let destination = row.destination_ods.clone().unwrap_or_else(|| "none".into());
            let registered = row
                .destination_ods
                .as_deref()
                .is_some_and(|ods| registry.get(ods).is_some());
            self.pending
                .get_or_create(&QueueLabels {
                    destination: destination.clone(),
                    endpoint: if registered { "registered" } else { "none" }.into(),
                })
                .set(row.pending);
            self.dead
                .get_or_create(&DestinationLabels {
                    destination: destination.clone(),
                })
                .set(row.dead);
            if let Some(oldest) = row
                .oldest_pending
                .as_deref()
                .and_then(|t| Instant::parse(t).ok())
            {
                let age_ms = now
                    .unix_millis()
                    .saturating_sub(oldest.unix_millis())
                    .max(0);
                self.oldest_pending_seconds
                    .get_or_create(&DestinationLabels { destination })
                    .set(age_ms as f64 / 1000.0);
            }
        }
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}
