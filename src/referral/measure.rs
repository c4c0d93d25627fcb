//! Wellbeing outcome measures and their scoring.
//!
//! The scales are published instruments, so their shapes are code, not configuration: item
//! counts and ranges below are those of the scales and of Sprig's `sprig-outcome-*` profiles
//! (`mappings/outbound.toml` repeats them for the Observations and is checked against these
//! at load).
//!
//! | measure | items | each | total |
//! |---|---|---|---|
//! | SWEMWBS | 7 | 1–5 | raw 7–35, and the metric score from the published conversion table |
//! | WEMWBS | 14 | 1–5 | 14–70 |
//! | ONS4 | 4 | 0–10 | none: four separate scores |
//! | UCLA-3 | 3 | 1–3 | 3–9 (higher is lonelier) |
//!
//! For SWEMWBS and WEMWBS a higher score is better wellbeing; for UCLA-3 a higher total is
//! more loneliness. ONS4's first three items (life satisfaction, worthwhile, happy yesterday)
//! are better when high, but the fourth, **anxious yesterday, is reversed: a high score is
//! worse**. That is why ONS4 has no total: adding the items would mix directions.

use std::fmt;
use std::ops::RangeInclusive;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A wellbeing outcome measure Sprig reports as an Observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Measure {
    /// Short Warwick-Edinburgh Mental Wellbeing Scale (7 items, SNOMED CT 718466001).
    Swemwbs,
    /// Warwick-Edinburgh Mental Wellbeing Scale (14 items, SNOMED CT 718426000).
    Wemwbs,
    /// The four ONS personal wellbeing questions (no total; anxiety is reversed).
    Ons4,
    /// UCLA 3-item loneliness scale.
    Ucla3,
}

/// A code that is not a measure Sprig knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{code}' is not an outcome measure; the measures are swemwbs, wemwbs, ons4, ucla3")]
pub struct UnknownMeasure {
    /// The code given.
    pub code: String,
}

/// Answers that cannot be scored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScoreError {
    /// Not one answer per item.
    #[error("{measure} has {expected} items, but {found} answers were given")]
    WrongCount {
        /// The measure.
        measure: Measure,
        /// Its number of items.
        expected: usize,
        /// The number of answers given.
        found: usize,
    },
    /// An answer outside its item's range.
    #[error("{measure} item {item} is {value}, but each item is scored {min} to {max}")]
    OutOfRange {
        /// The measure.
        measure: Measure,
        /// The item, counted from 1 as on the form.
        item: usize,
        /// The answer given.
        value: i64,
        /// The item's lowest score.
        min: i64,
        /// The item's highest score.
        max: i64,
    },
}

/// Scored answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Score {
    /// What was scored.
    pub measure: Measure,
    /// The answers, one per item, in the order of the published form.
    pub items: Vec<i64>,
    /// The sum of the items (SWEMWBS: the raw score); `None` for ONS4, which has no total.
    pub total: Option<i64>,
    /// SWEMWBS only: the metric score for the raw total, from the published conversion
    /// table, exact to two decimal places (`9.51`).
    pub metric: Option<Decimal>,
}

/// The published SWEMWBS raw-to-metric conversion, in hundredths, for raw totals 7 to 35
/// (index 0 is raw 7). Kept as integers so the values are exact (`Decimal::new(951, 2)`).
const SWEMWBS_METRIC_HUNDREDTHS: [i64; 29] = [
    700, 951, 1125, 1240, 1333, 1408, 1475, 1532, 1584, 1636, 1688, 1743, 1798, 1859, 1925, 1998,
    2073, 2154, 2235, 2321, 2411, 2503, 2602, 2703, 2813, 2931, 3070, 3255, 3500,
];

/// The SWEMWBS metric score for a raw total (7 to 35), from the published conversion table;
/// `None` outside that range.
pub fn swemwbs_metric(raw: i64) -> Option<Decimal> {
    let index = usize::try_from(raw.checked_sub(7)?).ok()?;
    SWEMWBS_METRIC_HUNDREDTHS
        .get(index)
        .map(|hundredths| Decimal::new(*hundredths, 2))
}

impl Measure {
    /// Every measure.
    pub const ALL: [Measure; 4] = [
        Measure::Swemwbs,
        Measure::Wemwbs,
        Measure::Ons4,
        Measure::Ucla3,
    ];

    /// Sprig's code for the measure (`swemwbs`, `wemwbs`, `ons4`, `ucla3`), as used in
    /// `mappings/outbound.toml` and internal records. (The Observation code is a SNOMED CT
    /// or `sprig-outcome-measure` code: see the mapping.)
    pub fn as_str(self) -> &'static str {
        match self {
            Measure::Swemwbs => "swemwbs",
            Measure::Wemwbs => "wemwbs",
            Measure::Ons4 => "ons4",
            Measure::Ucla3 => "ucla3",
        }
    }

    /// The measure with this code.
    pub fn parse(code: &str) -> Result<Measure, UnknownMeasure> {
        Measure::ALL
            .into_iter()
            .find(|m| m.as_str() == code)
            .ok_or_else(|| UnknownMeasure {
                code: code.to_string(),
            })
    }

    /// How many items (questions) the measure has.
    pub fn item_count(self) -> usize {
        match self {
            Measure::Swemwbs => 7,
            Measure::Wemwbs => 14,
            Measure::Ons4 => 4,
            Measure::Ucla3 => 3,
        }
    }

    /// The scores one item can take.
    pub fn item_range(self) -> RangeInclusive<i64> {
        match self {
            Measure::Swemwbs | Measure::Wemwbs => 1..=5,
            Measure::Ons4 => 0..=10,
            Measure::Ucla3 => 1..=3,
        }
    }

    /// The range of the total, for measures that have one (not ONS4).
    pub fn total_range(self) -> Option<RangeInclusive<i64>> {
        match self {
            Measure::Ons4 => None,
            other => {
                let count = other.item_count() as i64;
                let items = other.item_range();
                Some(count * items.start()..=count * items.end())
            }
        }
    }

    /// Checks one answer per item, each in its range, and scores them: the total (not for
    /// ONS4) and, for SWEMWBS, the metric score.
    pub fn score(&self, answers: &[i64]) -> Result<Score, ScoreError> {
        let measure = *self;
        if answers.len() != measure.item_count() {
            return Err(ScoreError::WrongCount {
                measure,
                expected: measure.item_count(),
                found: answers.len(),
            });
        }
        let range = measure.item_range();
        if let Some((i, value)) = answers
            .iter()
            .enumerate()
            .find(|(_, value)| !range.contains(value))
        {
            return Err(ScoreError::OutOfRange {
                measure,
                item: i + 1,
                value: *value,
                min: *range.start(),
                max: *range.end(),
            });
        }
        // In range, so the sum is at most 70: no overflow.
        let total = measure.total_range().map(|_| answers.iter().sum::<i64>());
        let metric = match measure {
            Measure::Swemwbs => total.and_then(swemwbs_metric),
            _ => None,
        };
        Ok(Score {
            measure,
            items: answers.to_vec(),
            total,
            metric,
        })
    }
}

impl fmt::Display for Measure {
    /// The measure's usual name (`SWEMWBS`, `UCLA-3`), for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Measure::Swemwbs => "SWEMWBS",
            Measure::Wemwbs => "WEMWBS",
            Measure::Ons4 => "ONS4",
            Measure::Ucla3 => "UCLA-3",
        })
    }
}

impl std::str::FromStr for Measure {
    type Err = UnknownMeasure;

    fn from_str(code: &str) -> Result<Self, Self::Err> {
        Measure::parse(code)
    }
}

impl Serialize for Measure {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Measure {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Measure::parse(&code).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(text: &str) -> Decimal {
        text.parse().expect("decimal")
    }

    #[test]
    fn codes_round_trip() {
        for measure in Measure::ALL {
            assert_eq!(Measure::parse(measure.as_str()), Ok(measure));
            let json = serde_json::to_string(&measure).expect("serialises");
            assert_eq!(json, format!("\"{}\"", measure.as_str()));
            assert_eq!(serde_json::from_str::<Measure>(&json).ok(), Some(measure));
        }
        assert!(Measure::parse("SWEMWBS").is_err());
    }

    #[test]
    fn the_swemwbs_conversion_table() {
        let published = [
            (7, "7.00"),
            (8, "9.51"),
            (9, "11.25"),
            (10, "12.40"),
            (11, "13.33"),
            (12, "14.08"),
            (13, "14.75"),
            (14, "15.32"),
            (15, "15.84"),
            (16, "16.36"),
            (17, "16.88"),
            (18, "17.43"),
            (19, "17.98"),
            (20, "18.59"),
            (21, "19.25"),
            (22, "19.98"),
            (23, "20.73"),
            (24, "21.54"),
            (25, "22.35"),
            (26, "23.21"),
            (27, "24.11"),
            (28, "25.03"),
            (29, "26.02"),
            (30, "27.03"),
            (31, "28.13"),
            (32, "29.31"),
            (33, "30.70"),
            (34, "32.55"),
            (35, "35.00"),
        ];
        for (raw, metric) in published {
            let got = swemwbs_metric(raw).expect("in the table");
            assert_eq!(got, dec(metric), "raw {raw}");
            // Exact to the hundredth, as published (`7.00`, not `7`).
            assert_eq!(got.to_string(), metric, "raw {raw}");
        }
        for outside in [i64::MIN, -1, 0, 6, 36, i64::MAX] {
            assert_eq!(swemwbs_metric(outside), None, "raw {outside}");
        }
        // Scoring reaches every entry: raw totals from all-ones to all-fives.
        for (raw, metric) in published {
            let mut answers = [1i64; 7];
            let mut left = raw - 7;
            for a in &mut answers {
                let add = left.min(4);
                *a += add;
                left -= add;
            }
            let score = Measure::Swemwbs.score(&answers).expect("valid");
            assert_eq!(score.total, Some(raw));
            assert_eq!(score.metric, Some(dec(metric)));
        }
    }

    #[test]
    fn totals_at_the_ends_of_each_range() {
        for measure in Measure::ALL {
            let range = measure.item_range();
            let low = vec![*range.start(); measure.item_count()];
            let high = vec![*range.end(); measure.item_count()];
            let (low, high) = (
                measure.score(&low).expect("lowest answers"),
                measure.score(&high).expect("highest answers"),
            );
            match measure.total_range() {
                Some(total) => {
                    assert_eq!(low.total, Some(*total.start()), "{measure}");
                    assert_eq!(high.total, Some(*total.end()), "{measure}");
                }
                None => assert_eq!((low.total, high.total), (None, None)),
            }
            assert_eq!(low.metric.is_some(), measure == Measure::Swemwbs);
        }
        assert_eq!(Measure::Swemwbs.total_range(), Some(7..=35));
        assert_eq!(Measure::Wemwbs.total_range(), Some(14..=70));
        assert_eq!(Measure::Ucla3.total_range(), Some(3..=9));
        assert_eq!(Measure::Ons4.total_range(), None);
        let ons4 = Measure::Ons4.score(&[7, 8, 6, 3]).expect("valid");
        assert_eq!(ons4.items, [7, 8, 6, 3]);
        assert_eq!((ons4.total, ons4.metric), (None, None));
        let ucla = Measure::Ucla3.score(&[2, 3, 1]).expect("valid");
        assert_eq!(ucla.total, Some(6));
    }

    #[test]
    fn out_of_range_items_say_which_and_why() {
        let err = Measure::Swemwbs
            .score(&[3, 4, 3, 0, 4, 3, 4])
            .expect_err("0 is below 1");
        assert_eq!(
            err,
            ScoreError::OutOfRange {
                measure: Measure::Swemwbs,
                item: 4,
                value: 0,
                min: 1,
                max: 5
            }
        );
        assert_eq!(
            err.to_string(),
            "SWEMWBS item 4 is 0, but each item is scored 1 to 5"
        );
        for (measure, bad_low, bad_high) in [
            (Measure::Swemwbs, 0, 6),
            (Measure::Wemwbs, 0, 6),
            (Measure::Ons4, -1, 11),
            (Measure::Ucla3, 0, 4),
        ] {
            for bad in [bad_low, bad_high, i64::MIN, i64::MAX] {
                let mut answers = vec![*measure.item_range().start(); measure.item_count()];
                let last = answers.len() - 1;
                answers[last] = bad;
                assert!(
                    matches!(
                        measure.score(&answers),
                        Err(ScoreError::OutOfRange { item, value, .. }) if item == last + 1 && value == bad
                    ),
                    "{measure} {bad}"
                );
            }
        }
    }

    #[test]
    fn wrong_counts_are_refused() {
        for measure in Measure::ALL {
            let n = measure.item_count();
            for count in [0, n - 1, n + 1] {
                let answers = vec![*measure.item_range().start(); count];
                assert_eq!(
                    measure.score(&answers),
                    Err(ScoreError::WrongCount {
                        measure,
                        expected: n,
                        found: count
                    })
                );
            }
        }
        assert_eq!(
            Measure::Ucla3
                .score(&[1, 2])
                .expect_err("short")
                .to_string(),
            "UCLA-3 has 3 items, but 2 answers were given"
        );
    }
}
