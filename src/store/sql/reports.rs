//! The outcomes and service reports' reads in SQL, shared by both backends
//! (compiled into `store::sqlite` and `store::postgres` alike, `#[path]`).
//!
//! Memory, not time, is what a report over a whole service costs. So the facts are read a
//! page of referrals at a time (by id: the referrals, then their stages, measurements and
//! milestones in that id range, each an index range scan), and a report counts each page
//! and drops it (`each_referral_facts`); within a page rows are streamed (`fetch`, one row
//! at a time), instants are parsed once into `OffsetDateTime`s, and each referral's lists
//! are trimmed to their length.

use std::collections::HashMap;

use futures_util::TryStreamExt;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Backend;
use crate::referral::record::{MilestoneFact, OutcomeFact, ReferralFacts};
use crate::referral::stage::Stage;
use crate::store::StoreError;
use crate::store::reports::Which;

/// A referral's own facts for a report.
#[derive(sqlx::FromRow)]
struct ReportReferralRow {
    id: String,
    nhs_number: Option<String>,
    practice_ods_code: Option<String>,
    received_at: String,
    /// The code (or else display, or text) of its first reason.
    first_reason: Option<String>,
}

/// One stage a referral reached, and when.
#[derive(sqlx::FromRow)]
struct ReportStageRow {
    referral_id: String,
    stage: String,
    at: String,
}

/// One outcome measurement of a referral.
#[derive(sqlx::FromRow)]
struct ReportOutcomeRow {
    referral_id: String,
    id: String,
    measure: String,
    recorded_at: String,
    total: Option<i64>,
}

/// One milestone of a referral, `complex` a nullable integer (SQLite has no boolean).
#[derive(sqlx::FromRow)]
struct ReportMilestoneRow {
    referral_id: String,
    kind: String,
    occurred_on: String,
    complex: Option<i64>,
}

/// One reason's code of a referral.
#[derive(sqlx::FromRow)]
struct ReportReasonRow {
    referral_id: String,
    code: Option<String>,
}

fn corrupt(id: &str, reason: &str) -> StoreError {
    StoreError::Corrupt {
        resource_type: "referral".into(),
        id: id.to_owned(),
        reason: reason.into(),
    }
}

/// A stored instant (Sprig writes them, so one that does not parse is corruption).
fn instant(id: &str, text: &str, what: &str) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|_| corrupt(id, what))
}

/// Referrals read per page: enough that the four queries per page cost little, few enough
/// that a page's facts (about 1 KiB a referral) stay small.
const FACTS_PAGE: usize = 1000;

impl Backend {
    /// Calls `each` with the facts of every referral, in id order, a page at a time: the
    /// caller keeps what it counts, not the facts.
    pub(in crate::store) async fn each_referral_facts<F>(
        &self,
        only: Which,
        mut each: F,
    ) -> Result<(), StoreError>
    where
        F: FnMut(&ReferralFacts) + Send,
    {
        let mut after = String::new();
        loop {
            let page = self.referral_facts_after(&after, FACTS_PAGE, only).await?;
            let Some(last) = page.last() else {
                break;
            };
            after.clone_from(&last.id);
            page.iter().for_each(&mut each);
            if page.len() < FACTS_PAGE {
                break;
            }
        }
        Ok(())
    }

    /// The facts of the (at most) `limit` referrals after id `after` (`""`: from the first),
    /// ordered by id.
    async fn referral_facts_after(
        &self,
        after: &str,
        limit: usize,
        only: Which,
    ) -> Result<Vec<ReferralFacts>, StoreError> {
        let s = self;
        // Measured only: the referrals, and the rows of each page's id range, of referrals
        // with an outcome measurement; the others' rows in that range are not read.
        let (with_measure, measured_in_range) = match only {
            Which::All => ("", ""),
            Which::Measured => (
                " AND EXISTS (SELECT 1 FROM outcome_measures m WHERE m.referral_id = r.id)",
                " AND referral_id IN (SELECT m.referral_id FROM outcome_measures m \
                  WHERE m.referral_id >= $1 AND m.referral_id <= $2)",
            ),
        };
        let mut conn = s.readers.acquire().await?;
        let mut facts: Vec<ReferralFacts> = Vec::with_capacity(limit.min(FACTS_PAGE));
        {
            let mut rows = sqlx::query_as::<_, ReportReferralRow>(sqlx::AssertSqlSafe(format!(
                "SELECT r.id, p.nhs_number, r.practice_ods_code, r.received_at, \
                 (SELECT COALESCE(x.code, x.display, x.text) FROM referral_reasons x \
                  WHERE x.referral_id = r.id ORDER BY x.position LIMIT 1) AS first_reason \
                 FROM referrals r LEFT JOIN referral_patients p ON p.referral_id = r.id \
                 WHERE r.id > $1{with_measure} ORDER BY r.id LIMIT $2"
            )))
            .bind(after)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch(&mut *conn);
            while let Some(row) = rows.try_next().await? {
                let received_at =
                    instant(&row.id, &row.received_at, "received_at is not an instant")?;
                facts.push(ReferralFacts {
                    id: row.id,
                    nhs_number: row.nhs_number,
                    practice: row.practice_ods_code,
                    received_at,
                    reason: row.first_reason,
                    reason_count: 0,
                    reason_codes: Vec::new(),
                    stages: Vec::new(),
                    outcomes: Vec::new(),
                    milestones: Vec::new(),
                });
            }
        }
        let (Some(first), Some(last)) = (facts.first(), facts.last()) else {
            return Ok(facts);
        };
        let (first, last) = (first.id.clone(), last.id.clone());
        let index: HashMap<String, usize> = facts
            .iter()
            .enumerate()
            .map(|(i, f)| (f.id.clone(), i))
            .collect();
        {
            let mut rows = sqlx::query_as::<_, ReportStageRow>(sqlx::AssertSqlSafe(format!(
                "SELECT referral_id, stage, at FROM referral_stage_history \
                     WHERE referral_id >= $1 AND referral_id <= $2{measured_in_range} \
                     ORDER BY referral_id, seq"
            )))
            .bind(&first)
            .bind(&last)
            .fetch(&mut *conn);
            while let Some(ReportStageRow {
                referral_id,
                stage,
                at,
            }) = rows.try_next().await?
            {
                let Some(&i) = index.get(&referral_id) else {
                    continue;
                };
                let stage =
                    Stage::parse(&stage).map_err(|_| corrupt(&referral_id, "unknown stage"))?;
                let at = instant(&referral_id, &at, "a stage's instant is not an instant")?;
                facts[i].stages.push((stage, at));
            }
        }
        {
            let mut rows = sqlx::query_as::<_, ReportOutcomeRow>(
                "SELECT referral_id, id, measure, recorded_at, total FROM outcome_measures \
                 WHERE referral_id >= $1 AND referral_id <= $2 \
                 ORDER BY referral_id, recorded_at, id",
            )
            .bind(&first)
            .bind(&last)
            .fetch(&mut *conn);
            while let Some(ReportOutcomeRow {
                referral_id,
                id,
                measure,
                recorded_at,
                total,
            }) = rows.try_next().await?
            {
                let Some(&i) = index.get(&referral_id) else {
                    continue;
                };
                let recorded_at = instant(
                    &referral_id,
                    &recorded_at,
                    "an outcome's instant is not an instant",
                )?;
                facts[i].outcomes.push(OutcomeFact {
                    id,
                    measure,
                    recorded_at,
                    total,
                });
            }
        }
        {
            let mut rows = sqlx::query_as::<_, ReportMilestoneRow>(sqlx::AssertSqlSafe(format!(
                "SELECT referral_id, kind, occurred_on, complex FROM referral_milestones \
                     WHERE referral_id >= $1 AND referral_id <= $2{measured_in_range} \
                     ORDER BY referral_id, occurred_on, recorded_at, id"
            )))
            .bind(&first)
            .bind(&last)
            .fetch(&mut *conn);
            while let Some(ReportMilestoneRow {
                referral_id,
                kind,
                occurred_on: on,
                complex,
            }) = rows.try_next().await?
            {
                let Some(&i) = index.get(&referral_id) else {
                    continue;
                };
                facts[i].milestones.push(MilestoneFact {
                    kind: super::milestones::parse_kind(&referral_id, &kind)?,
                    on: super::milestones::parse_day(&referral_id, &on)?,
                    complex: complex.map(|c| c != 0),
                });
            }
        }
        {
            let mut rows = sqlx::query_as::<_, ReportReasonRow>(sqlx::AssertSqlSafe(format!(
                "SELECT referral_id, code FROM referral_reasons \
                     WHERE referral_id >= $1 AND referral_id <= $2{measured_in_range} \
                     ORDER BY referral_id, position"
            )))
            .bind(&first)
            .bind(&last)
            .fetch(&mut *conn);
            while let Some(ReportReasonRow { referral_id, code }) = rows.try_next().await? {
                let Some(&i) = index.get(&referral_id) else {
                    continue;
                };
                facts[i].reason_count += 1;
                if let Some(code) = code {
                    facts[i].reason_codes.push(code);
                }
            }
        }
        drop(index);
        for f in &mut facts {
            f.stages.shrink_to_fit();
            f.outcomes.shrink_to_fit();
            f.milestones.shrink_to_fit();
            f.reason_codes.shrink_to_fit();
        }
        Ok(facts)
    }
}
