//! What the outcomes and service reports read: every referral's dates, stages and
//! measurements as [`ReferralFacts`], in three queries on one reader connection (not one per
//! referral), so a quarterly report over 100,000 referrals is three table scans.

use std::collections::HashMap;

use crate::referral::record::{OutcomeFact, ReferralFacts};

use super::{Store, StoreError};

/// id, NHS number, practice, received_at, first reason.
type ReferralRow = (
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
);

impl Store {
    /// The facts of every referral received before `received_before` (a FHIR instant; all
    /// when `None`), ordered by id.
    pub async fn referral_facts(
        &self,
        received_before: Option<&str>,
    ) -> Result<Vec<ReferralFacts>, StoreError> {
        let Store::Sqlite(s) = self;
        let mut conn = s.readers.acquire().await?;
        // '~' sorts after every digit, so no bound means every instant.
        let bound = received_before.unwrap_or("~");
        let rows: Vec<ReferralRow> = sqlx::query_as(
            "SELECT r.id, p.nhs_number, r.practice_ods_code, r.received_at, \
             (SELECT COALESCE(x.code, x.display, x.text) FROM referral_reasons x \
              WHERE x.referral_id = r.id ORDER BY x.position LIMIT 1) \
             FROM referrals r LEFT JOIN referral_patients p ON p.referral_id = r.id \
             WHERE r.received_at < $1 ORDER BY r.id",
        )
        .bind(bound)
        .fetch_all(&mut *conn)
        .await?;
        let mut facts: Vec<ReferralFacts> = rows
            .into_iter()
            .map(
                |(id, nhs_number, practice, received_at, reason)| ReferralFacts {
                    id,
                    nhs_number,
                    practice,
                    received_at,
                    reason,
                    stages: Vec::new(),
                    outcomes: Vec::new(),
                },
            )
            .collect();
        let index: HashMap<String, usize> = facts
            .iter()
            .enumerate()
            .map(|(i, f)| (f.id.clone(), i))
            .collect();
        let stages: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT referral_id, stage, at FROM referral_stage_history ORDER BY referral_id, seq",
        )
        .fetch_all(&mut *conn)
        .await?;
        for (referral_id, stage, at) in stages {
            let Some(&i) = index.get(&referral_id) else {
                continue;
            };
            let stage =
                crate::referral::stage::Stage::parse(&stage).map_err(|_| StoreError::Corrupt {
                    resource_type: "referral".into(),
                    id: referral_id.clone(),
                    reason: "unknown stage".into(),
                })?;
            facts[i].stages.push((stage, at));
        }
        let outcomes: Vec<(String, String, String, String, Option<i64>)> = sqlx::query_as(
            "SELECT referral_id, id, measure, recorded_at, total FROM outcome_measures \
             ORDER BY referral_id, recorded_at, id",
        )
        .fetch_all(&mut *conn)
        .await?;
        for (referral_id, id, measure, recorded_at, total) in outcomes {
            if let Some(&i) = index.get(&referral_id) {
                facts[i].outcomes.push(OutcomeFact {
                    id,
                    measure,
                    recorded_at,
                    total,
                });
            }
        }
        Ok(facts)
    }
}
