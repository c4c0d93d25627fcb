//! The managers' time from receipt to first contact, in working days (England and
//! Wales, `working_days`), per link worker and per practice: the median and the 90th
//! percentile of the contacted referrals.
//!
//! Invariants: a referral counts once, from its receipt to its first `contacted` stage,
//! both on UK dates; percentiles are nearest-rank (a value some referral really had).

use std::collections::BTreeMap;

use super::time::london_date;
use super::working_days::working_days_between;
use crate::fhir::Instant;
use crate::store::referrals::FirstContact;

/// One group's figures: how many were contacted, the median and 90th percentile of
/// working days to first contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactTimes {
    /// The link worker's username or the practice's ODS code; `None`: unassigned, or no
    /// practice code.
    pub key: Option<String>,
    /// Referrals contacted.
    pub contacted: usize,
    /// Median working days.
    pub median: u32,
    /// 90th percentile, working days.
    pub p90: u32,
}

/// The nearest-rank `p`th percentile of sorted `values` (not empty).
fn percentile(sorted: &[u32], p: usize) -> u32 {
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// Per link worker and per practice (each by key, `None` last), from the store's rows.
/// A row whose instants do not parse is left out.
pub fn figures(rows: &[FirstContact]) -> (Vec<ContactTimes>, Vec<ContactTimes>) {
    let mut by_worker: BTreeMap<Option<String>, Vec<u32>> = BTreeMap::new();
    let mut by_practice: BTreeMap<Option<String>, Vec<u32>> = BTreeMap::new();
    for (worker, practice, received, contacted) in rows {
        let (Ok(received), Ok(contacted)) = (Instant::parse(received), Instant::parse(contacted))
        else {
            continue;
        };
        let days = working_days_between(
            london_date(received.as_offset_date_time()),
            london_date(contacted.as_offset_date_time()),
        );
        by_worker.entry(worker.clone()).or_default().push(days);
        by_practice.entry(practice.clone()).or_default().push(days);
    }
    let summarise = |groups: BTreeMap<Option<String>, Vec<u32>>| {
        let mut out: Vec<ContactTimes> = groups
            .into_iter()
            .map(|(key, mut days)| {
                days.sort_unstable();
                ContactTimes {
                    key,
                    contacted: days.len(),
                    median: percentile(&days, 50),
                    p90: percentile(&days, 90),
                }
            })
            .collect();
        // Named groups first (BTreeMap puts `None` first).
        out.sort_by_key(|c| c.key.is_none());
        out
    };
    (summarise(by_worker), summarise(by_practice))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(worker: Option<&str>, practice: &str, received: &str, contacted: &str) -> FirstContact {
        (
            worker.map(str::to_owned),
            Some(practice.to_owned()),
            received.to_owned(),
            contacted.to_owned(),
        )
    }

    #[test]
    fn median_and_90th_percentile_in_working_days() {
        assert_eq!(percentile(&[1], 90), 1);
        assert_eq!(percentile(&[1, 2, 3, 4], 50), 2);
        assert_eq!(percentile(&(1..=10).collect::<Vec<_>>(), 90), 9);
        assert_eq!(percentile(&(1..=10).collect::<Vec<_>>(), 50), 5);
        let rows = [
            // Friday 4 December to Monday 7: one working day.
            row(
                Some("amara"),
                "K83999",
                "2026-12-04T10:00:00Z",
                "2026-12-07T09:00:00Z",
            ),
            // Thursday 24 December to Thursday 31: three (25 and 28 are holidays).
            row(
                Some("amara"),
                "K83999",
                "2026-12-24T10:00:00Z",
                "2026-12-31T09:00:00Z",
            ),
            row(
                Some("amara"),
                "A81001",
                "2026-12-01T10:00:00Z",
                "2026-12-01T11:00:00Z",
            ),
            row(
                None,
                "A81001",
                "2026-12-01T10:00:00Z",
                "2026-12-03T11:00:00Z",
            ),
            row(None, "A81001", "not an instant", "2026-12-03T11:00:00Z"),
        ];
        let (workers, practices) = figures(&rows);
        assert_eq!(
            workers,
            [
                ContactTimes {
                    key: Some("amara".into()),
                    contacted: 3,
                    median: 1,
                    p90: 3
                },
                ContactTimes {
                    key: None,
                    contacted: 1,
                    median: 2,
                    p90: 2
                },
            ]
        );
        assert_eq!(
            practices,
            [
                ContactTimes {
                    key: Some("A81001".into()),
                    contacted: 2,
                    median: 0,
                    p90: 2
                },
                ContactTimes {
                    key: Some("K83999".into()),
                    contacted: 2,
                    median: 1,
                    p90: 3
                },
            ]
        );
    }
}
