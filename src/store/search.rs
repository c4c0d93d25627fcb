//! The search index's version. The SQL itself is in `store/sql/search.rs`,
//! shared by both backends.

/// The version of the parameter table the index is built for. Change it
/// whenever `search::params` changes what is indexed: the store then
/// rebuilds the index at start-up (`rebuild_index_if_stale`).
pub(crate) const INDEX_VERSION: i64 = 3;

/// A value bound to a search statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundValue {
    /// Text.
    Text(String),
    /// A whole number.
    Int(i64),
}

/// One statement a search runs, as the backend receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchStatement {
    /// The SQL text, with `$n` placeholders.
    pub sql: String,
    /// The values of the placeholders, in order.
    pub binds: Vec<BoundValue>,
}

/// The exact counts that may run at once, and how long one waits for its turn.
///
/// An exact count that is not a lookup reads every match's index row (900,000 for
/// `ServiceRequest?status=active` at a million referrals), holding a reader connection
/// meanwhile. Unbounded, sixteen clients asking for totals took every reader, and the
/// identifier lookups and pages waiting behind them were answered 503. Counts now queue
/// here (first come, first served) before they take a connection, so at most
/// `permits` connections count while the others serve everything else; a count that
/// cannot start within `wait` is answered 503 with `Retry-After`
/// ([`super::StoreError::CountsBusy`]).
#[derive(Debug)]
pub(crate) struct CountGate {
    permits: tokio::sync::Semaphore,
    wait: std::time::Duration,
}

impl CountGate {
    /// A gate for a store with `readers` reader connections: a quarter of them (at
    /// least one) may count at once; a count waits at most `wait` for its turn.
    pub(crate) fn new(readers: u32, wait: std::time::Duration) -> Self {
        let permits = usize::try_from((readers / 4).max(1)).unwrap_or(1);
        Self {
            permits: tokio::sync::Semaphore::new(permits),
            wait,
        }
    }

    /// Waits for a turn to count; the turn ends when the permit is dropped.
    pub(crate) async fn enter(
        &self,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, super::StoreError> {
        match tokio::time::timeout(self.wait, self.permits.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a closed one cannot count either.
            Ok(Err(_)) | Err(_) => Err(super::StoreError::CountsBusy),
        }
    }
}

#[cfg(test)]
mod count_gate_tests {
    use std::time::Duration;

    use super::CountGate;
    use crate::store::StoreError;

    #[tokio::test]
    async fn counts_queue_for_their_turn_and_are_refused_only_past_the_wait() {
        let gate = CountGate::new(8, Duration::from_millis(200));
        let first = gate.enter().await.expect("a turn");
        let second = gate
            .enter()
            .await
            .expect("a second turn (8 readers: 2 count)");
        // Both turns taken: the third waits, and past the wait is refused.
        let refused = gate.enter().await;
        assert!(
            matches!(refused, Err(StoreError::CountsBusy)),
            "{refused:?}"
        );
        assert!(
            StoreError::CountsBusy.is_transient(),
            "answered 503, not 500"
        );
        // A turn given back within the wait goes to the one waiting.
        let waiting = gate.enter();
        let release = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(first);
        };
        let (turn, ()) = tokio::join!(waiting, release);
        assert!(turn.is_ok(), "{turn:?}");
        drop(second);
    }
}
