//! Milestones in SQL (`referral_milestones`, migration 0013), shared by both backends
//! (compiled into `store::sqlite` and `store::postgres` alike, `#[path]`).

use time::Date;
use time::macros::format_description;

use super::{Backend, Tx};
use crate::referral::milestone::{Milestone, MilestoneKind};
use crate::store::StoreError;
use crate::store::deferred::Statement;

/// One milestone of a referral (`referral_milestones`), `complex` a nullable integer
/// (SQLite has no boolean).
#[derive(sqlx::FromRow)]
struct MilestoneRow {
    id: String,
    kind: String,
    occurred_on: String,
    complex: Option<i64>,
    basis: Option<String>,
    reason: Option<String>,
    recorded_at: String,
    recorded_by: String,
}

impl MilestoneRow {
    fn into_domain(self, referral_id: &str) -> Result<Milestone, StoreError> {
        Ok(Milestone {
            id: self.id,
            kind: parse_kind(referral_id, &self.kind)?,
            on: parse_day(referral_id, &self.occurred_on)?,
            complex: self.complex.map(|c| c != 0),
            basis: self.basis,
            reason: self.reason,
            recorded_at: self.recorded_at,
            recorded_by: self.recorded_by,
        })
    }
}

/// A stored day (`YYYY-MM-DD`, as Sprig writes them).
pub(in crate::store) fn parse_day(referral_id: &str, text: &str) -> Result<Date, StoreError> {
    Date::parse(text, format_description!("[year]-[month]-[day]")).map_err(|_| {
        StoreError::Corrupt {
            resource_type: "referral".into(),
            id: referral_id.to_owned(),
            reason: "a milestone's day is not a date".into(),
        }
    })
}

/// A stored milestone kind.
pub(in crate::store) fn parse_kind(
    referral_id: &str,
    text: &str,
) -> Result<MilestoneKind, StoreError> {
    MilestoneKind::parse(text).ok_or_else(|| StoreError::Corrupt {
        resource_type: "referral".into(),
        id: referral_id.to_owned(),
        reason: "unknown milestone kind".into(),
    })
}

impl Tx {
    /// Records a milestone of `referral_id`.
    pub(in crate::store) async fn add_milestone(
        &mut self,
        referral_id: &str,
        milestone: &Milestone,
    ) -> Result<(), StoreError> {
        self.execute(Statement::new(
            "INSERT INTO referral_milestones (id, referral_id, kind, occurred_on, complex, basis, \
             reason, recorded_at, recorded_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&milestone.id)
        .bind(referral_id)
        .bind(milestone.kind.as_str())
        .bind(milestone.on.to_string())
        .bind(milestone.complex.map(i64::from))
        .bind(&milestone.basis)
        .bind(&milestone.reason)
        .bind(&milestone.recorded_at)
        .bind(&milestone.recorded_by)
        ).await?;
        Ok(())
    }
}

impl Backend {
    /// The milestones of `referral_id`, by day then as recorded.
    pub(in crate::store) async fn milestones(
        &self,
        referral_id: &str,
    ) -> Result<Vec<Milestone>, StoreError> {
        let rows: Vec<MilestoneRow> = sqlx::query_as(
            "SELECT id, kind, occurred_on, complex, basis, reason, recorded_at, recorded_by \
             FROM referral_milestones WHERE referral_id = $1 ORDER BY occurred_on, recorded_at, id",
        )
        .bind(referral_id)
        .fetch_all(&self.readers)
        .await?;
        rows.into_iter()
            .map(|row| row.into_domain(referral_id))
            .collect()
    }
}
