//! What the outcomes and service reports read: every referral's dates, stages and
//! measurements as [`ReferralFacts`], in three queries on one reader connection (not one per
//! referral), so a quarterly report over 100,000 referrals is three table scans.

use super::{Store, StoreError, dispatch};
use crate::referral::record::ReferralFacts;

impl Store {
    /// The facts of every referral received before `received_before` (a FHIR instant; all
    /// when `None`), ordered by id.
    pub async fn referral_facts(
        &self,
        received_before: Option<&str>,
    ) -> Result<Vec<ReferralFacts>, StoreError> {
        dispatch!(self, b => b.referral_facts(received_before).await)
    }
}
