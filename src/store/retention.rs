//! Retention, purge and erasure (issue 20 §5): what `[retention]` removes on its
//! schedule and `sprig purge` on demand, and the erasure of one referral by an
//! administrator (`POST /api/referrals/{id}/erasure`, `sprig erase`). The SQL is in
//! `store/sql/retention.rs`.
//!
//! Invariants:
//! - an open referral is never purged, nor a closed one with an outbox row not yet
//!   delivered (it is counted as held back); only erasure removes those;
//! - every purge transaction and every erasure commits with an audit row saying what
//!   kind and how many went (`AuditRecord::detail`), never what the content was;
//! - a purge runs in short transactions (a few hundred rows, or a few referrals, each),
//!   so the SQLite writer is never held for long.

use std::collections::BTreeMap;

use super::write::WriteTx;
use super::{Store, StoreError, dispatch, dispatch_write};
use crate::fhir::Instant;
use crate::store::audit::AuditRecord;

/// What a purge removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PurgeKind {
    /// Request bodies kept byte for byte (resource versions' `received`, the referral's
    /// submissions, message replay records) received before the cut-off.
    RawBodies,
    /// Closed referrals (completed, declined, unable to contact, withdrawn) closed
    /// before the cut-off, with everything that belongs to them.
    ClosedReferrals,
    /// Outbox rows delivered before the cut-off.
    DeliveredOutbox,
}

impl PurgeKind {
    /// Every kind, in the order a purge runs them.
    pub const ALL: [PurgeKind; 3] = [
        PurgeKind::RawBodies,
        PurgeKind::ClosedReferrals,
        PurgeKind::DeliveredOutbox,
    ];

    /// The kind's name, as in audit rows and `sprig purge`'s report.
    pub fn name(self) -> &'static str {
        match self {
            PurgeKind::RawBodies => "raw-bodies",
            PurgeKind::ClosedReferrals => "closed-referrals",
            PurgeKind::DeliveredOutbox => "delivered-outbox",
        }
    }
}

/// Counts of what went, by kind of row (`resources`, `versions`, `outbox-rows`...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed(BTreeMap<&'static str, u64>);

impl Removed {
    /// Adds `count` rows of `kind` (nothing when 0).
    pub fn add(&mut self, kind: &'static str, count: u64) {
        if count > 0 {
            *self.0.entry(kind).or_default() += count;
        }
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Removed) {
        for (kind, count) in &other.0 {
            self.add(kind, *count);
        }
    }

    /// Nothing went.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many rows of `kind` went.
    pub fn get(&self, kind: &str) -> u64 {
        self.0.get(kind).copied().unwrap_or(0)
    }

    /// The counts, by kind.
    pub fn counts(&self) -> &BTreeMap<&'static str, u64> {
        &self.0
    }

    /// `kind=count` pairs, space separated, in kind order: an audit row's detail.
    pub fn summary(&self) -> String {
        self.0
            .iter()
            .map(|(kind, count)| format!("{kind}={count}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl WriteTx {
    /// Erases the referral `id` and everything that belongs to it (see
    /// `store/sql/retention.rs`), in this transaction; `None` when there is no such
    /// referral. The caller commits it with its audit row.
    pub async fn erase_referral(&mut self, id: &str) -> Result<Option<Removed>, StoreError> {
        dispatch_write!(self, b => b.erase_referral(id).await)
    }
}

impl Store {
    /// How many rows the purge of `kind` would remove for everything before `cutoff`,
    /// by kind of row (`sprig purge --dry-run`).
    pub async fn purge_counts(
        &self,
        kind: PurgeKind,
        cutoff: Instant,
    ) -> Result<Vec<(&'static str, u64)>, StoreError> {
        let cutoff = cutoff.to_fhir();
        dispatch!(self, b => b.purge_counts(kind, &cutoff).await)
    }

    /// Purges everything of `kind` before `cutoff`, in short transactions, each
    /// committed with a copy of `audit` whose detail says what it removed. Returns the
    /// total removed.
    pub async fn purge(
        &self,
        kind: PurgeKind,
        cutoff: Instant,
        audit: &AuditRecord,
    ) -> Result<Removed, StoreError> {
        let cutoff = cutoff.to_fhir();
        let mut total = Removed::default();
        loop {
            let step = dispatch!(self, b => b.purge_step(kind, &cutoff, audit).await)?;
            if step.is_empty() {
                return Ok(total);
            }
            total.merge(&step);
        }
    }
}

/// Why an administrator erased a referral: a code, never free text, so the audit row
/// that records it can hold no personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErasureReason {
    /// The person exercised a right to erasure the law gives them.
    RightToErasure,
    /// The referral was sent to this service in error.
    SentInError,
    /// The referral holds another person's data.
    WrongPatient,
    /// A court or regulator ordered it.
    LegalOrder,
}

impl ErasureReason {
    /// Every reason.
    pub const ALL: [ErasureReason; 4] = [
        ErasureReason::RightToErasure,
        ErasureReason::SentInError,
        ErasureReason::WrongPatient,
        ErasureReason::LegalOrder,
    ];

    /// The reason's code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErasureReason::RightToErasure => "right-to-erasure",
            ErasureReason::SentInError => "sent-in-error",
            ErasureReason::WrongPatient => "wrong-patient",
            ErasureReason::LegalOrder => "legal-order",
        }
    }

    /// The reason with this code.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == code)
    }

    /// The codes, comma separated, for messages.
    pub fn codes() -> String {
        Self::ALL
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The longest case reference an erasure may carry.
pub const MAX_REFERENCE_CHARS: usize = 64;

/// Whether `reference` is a case reference an erasure may carry (the data protection
/// officer's or the court's number): 1 to 64 letters, digits and `-_./:`, so it cannot
/// be a name or a sentence.
pub fn is_case_reference(reference: &str) -> bool {
    !reference.is_empty()
        && reference.len() <= MAX_REFERENCE_CHARS
        && reference
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':'))
}

/// An erasure's audit detail: the reason code, the case reference, and the counts of
/// what went.
pub fn erasure_detail(reason: ErasureReason, reference: Option<&str>, removed: &Removed) -> String {
    let mut detail = format!("erasure reason={}", reason.as_str());
    if let Some(reference) = reference {
        detail.push_str(" reference=");
        detail.push_str(reference);
    }
    detail.push_str(": ");
    detail.push_str(&removed.summary());
    detail
}
