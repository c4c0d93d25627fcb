//! Whether a request may still commit: the line between "nothing of it is
//! stored" and "it is stored, answer with its result".
//!
//! The request-timeout layer runs each request inside a [`CommitGate`]. A
//! [`super::WriteTx::commit`] first passes the gate (from then on the
//! request's changes are, or are about to be, durable); the timeout, when it
//! fires, first tries to close the gate. Exactly one of them wins: a request
//! that timed out before committing is dropped, and its transaction rolled
//! back, before its 503 is sent; a request whose commit had begun is waited
//! for and answered with its result. Without this, a timeout that dropped a
//! request mid-commit answered "503, may be retried" for a referral that was
//! stored and queued to the practice.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use super::StoreError;

const OPEN: u8 = 0;
const COMMITTING: u8 = 1;
const CLOSED: u8 = 2;

tokio::task_local! {
    static GATE: Arc<CommitGate>;
}

/// One request's gate (see the module documentation).
#[derive(Debug, Default)]
pub struct CommitGate {
    state: AtomicU8,
}

impl CommitGate {
    /// An open gate.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Runs `request` with this gate in force for every commit it makes on
    /// its own task (work it spawns elsewhere is not gated).
    pub async fn guard<F: Future>(self: Arc<Self>, request: F) -> F::Output {
        GATE.scope(self, request).await
    }

    /// Closes the gate if no commit has begun: true when nothing the request
    /// did can commit any more (drop it and say so), false when a commit has
    /// begun (wait for it and answer with its result).
    pub fn close(&self) -> bool {
        match self
            .state
            .compare_exchange(OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(state) => state == CLOSED,
        }
    }

    /// Marks a commit begun, unless the gate is closed.
    fn pass(&self) -> Result<(), StoreError> {
        match self
            .state
            .compare_exchange(OPEN, COMMITTING, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ok(()),
            Err(COMMITTING) => Ok(()),
            Err(_) => Err(StoreError::TimedOut),
        }
    }
}

/// Called by a commit before it starts: refused when the current request's
/// gate has closed (it timed out). Outside any request (delivery, start-up
/// work), there is no gate and every commit passes.
pub(super) fn pass() -> Result<(), StoreError> {
    GATE.try_with(|gate| gate.pass()).unwrap_or(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_gate_refuses_a_commit_and_a_passed_one_cannot_close() {
        let gate = CommitGate::new();
        assert!(Arc::clone(&gate).guard(async { pass() }).await.is_ok());
        assert!(
            !gate.close(),
            "a commit began: the timeout must wait for it"
        );

        let gate = CommitGate::new();
        assert!(gate.close());
        let refused = Arc::clone(&gate).guard(async { pass() }).await;
        assert!(matches!(refused, Err(StoreError::TimedOut)));
        assert!(pass().is_ok(), "no gate outside a request");
    }
}
