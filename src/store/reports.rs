//! What the outcomes and service reports read: every referral's dates, stages,
//! measurements and milestones as [`ReferralFacts`], a page of referrals at a time (four
//! index range scans per page, not queries per referral), so a report over 100,000
//! referrals holds one page of facts, not all of them.

use super::{Store, StoreError, dispatch};
use crate::referral::record::ReferralFacts;

impl Store {
    /// Calls `each` with the facts of every referral, in id order, reading a page of
    /// referrals at a time: what a report counts is kept, the facts are not (reports over
    /// a whole service stay within a bounded memory).
    pub async fn each_referral_facts<F>(&self, each: F) -> Result<(), StoreError>
    where
        F: FnMut(&ReferralFacts) + Send,
    {
        dispatch!(self, b => b.each_referral_facts(Which::All, each).await)
    }

    /// As [`Store::each_referral_facts`], for the referrals with at least one outcome
    /// measurement only: the only ones with follow-ups (a measure's first measurement is
    /// its baseline), so the follow-up views read those, not every referral's rows.
    pub async fn each_measured_referral_facts<F>(&self, each: F) -> Result<(), StoreError>
    where
        F: FnMut(&ReferralFacts) + Send,
    {
        dispatch!(self, b => b.each_referral_facts(Which::Measured, each).await)
    }
}

/// Which referrals a read of facts yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::store) enum Which {
    /// Every referral.
    All,
    /// Those with at least one outcome measurement.
    Measured,
}
