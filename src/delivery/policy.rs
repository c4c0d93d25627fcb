//! What an attempt's result means (delivered, try again, give up) and when to
//! try again. Pure: the worker supplies the clock and the randomness.

use std::time::Duration;

use super::transport::{ReceiverResponse, TransportError};

/// How long and how often to keep trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait after the first failure; it doubles after each further one.
    pub initial_backoff: Duration,
    /// The longest wait between attempts (a `Retry-After` may ask for more).
    pub max_backoff: Duration,
    /// How long after the change (or an operator's retry) delivery gives up
    /// and dead-letters the message.
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(15 * 60),
            // A practice system down for a day, or over a weekend, still
            // receives everything.
            max_age: Duration::from_secs(72 * 3600),
        }
    }
}

impl RetryPolicy {
    /// The wait before the next attempt after `attempts` failed ones.
    /// `jitter` in [0, 1) spreads retries of many messages apart ("equal
    /// jitter": between half and all of the exponential step, so a burst of
    /// failures does not come back as a burst). A receiver's `Retry-After` is
    /// honoured as given: it knows when it will be ready.
    pub fn backoff(&self, attempts: i64, retry_after: Option<Duration>, jitter: f64) -> Duration {
        if let Some(asked) = retry_after {
            return asked;
        }
        let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        let step = self
            .initial_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff);
        let jitter = jitter.clamp(0.0, 1.0);
        step / 2 + step.mul_f64(jitter / 2.0)
    }
}

/// What a receiver's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted.
    Delivered,
    /// Failed in a way that may pass: try again later.
    Transient(String),
    /// Failed in a way that retrying will not fix: dead-letter it.
    Permanent(String),
}

/// Classifies an HTTP answer: 2xx delivered; 408, 429 and 5xx transient; any
/// other status (4xx, and 1xx/3xx, which a receiver of a PUT or POST should
/// not send and Sprig does not follow) permanent.
pub fn classify_response(response: &ReceiverResponse) -> Verdict {
    let status = response.status;
    match status {
        200..=299 => Verdict::Delivered,
        408 | 429 | 500..=599 => Verdict::Transient(format!("HTTP {status}")),
        300..=399 => Verdict::Permanent(format!(
            "HTTP {status}: the endpoint redirects; Sprig does not follow redirects with patient data, so correct base_url"
        )),
        _ => Verdict::Permanent(format!("HTTP {status}: the receiver refused the update")),
    }
}

/// Classifies a failure to get any answer.
pub fn classify_transport(error: &TransportError) -> Verdict {
    if error.is_transient() {
        Verdict::Transient(error.to_string())
    } else {
        Verdict::Permanent(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn answer(status: u16) -> ReceiverResponse {
        ReceiverResponse {
            status,
            retry_after: None,
            content_type: None,
            body: Bytes::new(),
            body_truncated: false,
        }
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify_response(&answer(200)), Verdict::Delivered);
        assert_eq!(classify_response(&answer(201)), Verdict::Delivered);
        for transient in [408, 429, 500, 502, 503, 504] {
            assert!(
                matches!(classify_response(&answer(transient)), Verdict::Transient(_)),
                "{transient}"
            );
        }
        for permanent in [301, 400, 401, 403, 404, 409, 412, 422] {
            assert!(
                matches!(classify_response(&answer(permanent)), Verdict::Permanent(_)),
                "{permanent}"
            );
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_stops_at_the_maximum() {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_age: Duration::from_secs(3600),
        };
        assert_eq!(policy.backoff(1, None, 0.0), Duration::from_millis(500));
        let most = policy.backoff(1, None, 0.999_999);
        assert!(
            most > Duration::from_millis(999) && most < Duration::from_secs(1),
            "{most:?}"
        );
        assert_eq!(policy.backoff(2, None, 0.0), Duration::from_secs(1));
        assert_eq!(policy.backoff(4, None, 0.0), Duration::from_secs(4));
        assert_eq!(policy.backoff(30, None, 0.0), Duration::from_secs(30));
        assert_eq!(policy.backoff(1_000, None, 0.0), Duration::from_secs(30));
        // A zero or negative count (never stored, but cheap to make safe).
        assert_eq!(policy.backoff(0, None, 0.0), Duration::from_millis(500));
    }

    #[test]
    fn retry_after_wins() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.backoff(5, Some(Duration::from_secs(7)), 0.5),
            Duration::from_secs(7)
        );
    }
}
