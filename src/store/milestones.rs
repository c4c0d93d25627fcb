//! The milestones a contract pays on (`referral::milestone`): written inside a
//! [`WriteTx`] with the audit row, read on the reader pool.

use super::write::WriteTx;
use super::{Store, StoreError, dispatch, dispatch_write};
use crate::referral::milestone::Milestone;

impl WriteTx {
    /// Records a milestone.
    pub async fn add_milestone(
        &mut self,
        referral_id: &str,
        milestone: &Milestone,
    ) -> Result<(), StoreError> {
        dispatch_write!(self, b => b.add_milestone(referral_id, milestone).await)
    }
}

impl Store {
    /// A referral's milestones, by day then as recorded.
    pub async fn milestones(&self, referral_id: &str) -> Result<Vec<Milestone>, StoreError> {
        dispatch!(self, b => b.milestones(referral_id).await)
    }
}
