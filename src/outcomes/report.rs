//! The outcomes report: metrics a contract pays on, defined as data (`outcomes/metrics.toml`),
//! counted over the referral record ([`ReferralFacts`]) per metric, period (month or quarter)
//! and practice, with every count traceable to the referrals and Observations behind it
//! ([`Report::detail`]). Also the service summary (referrals received, by reason and practice,
//! accepted and declined, time to first contact, completion).
//!
//! Counting rules, for every metric: a person (NHS number, else the referral) counts once per
//! metric, by their first achievement, else their first eligible referral; a referral closed
//! (declined, unable to contact, withdrawn) before its milestone, or before its follow-up's
//! window opened, is not eligible. Pure: the caller gives the facts and today's date.

use std::collections::{BTreeMap, HashMap};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};
use toml::Spanned;

use super::definition::{Catalogue, MeasureDefinition, Method};
use super::pcn::{NO_PCN, PcnDirectory};
use super::schedule::{add_months, uk_date};
use crate::located::{LocatedError, TomlText};
use crate::referral::milestone::MilestoneKind;
use crate::referral::record::ReferralFacts;
use crate::referral::stage::Stage;

/// The shipped metrics file.
pub const SHIPPED_METRICS: (&str, &str) = (
    "outcomes/metrics.toml",
    include_str!("../../outcomes/metrics.toml"),
);

/// What a metric counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum MetricKind {
    /// A stage reached.
    Milestone {
        /// The stage.
        stage: Stage,
    },
    /// Recorded milestones (`referral::milestone`), all of them: counted in the period the
    /// last of them happened.
    Milestones {
        /// What must be recorded.
        milestones: Vec<Requirement>,
    },
    /// A follow-up better than the baseline by at least `min_change`.
    Improvement {
        /// The measure's code.
        measure: String,
        /// The follow-up's key.
        follow_up: String,
        /// The least change that counts, in the better direction.
        min_change: Decimal,
    },
    /// The group's mean change, paid on a sliding scale.
    MeanChange {
        /// The measure's code.
        measure: String,
        /// The follow-up's key.
        follow_up: String,
        /// Nothing is paid below this mean.
        none_below: Decimal,
        /// Everything is paid from this mean.
        full_at: Decimal,
    },
}

/// One milestone a `milestones` metric needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// A milestone of this kind recorded (the first one's day counts).
    Recorded(MilestoneKind),
    /// `complex-needs`: the latest complexity assessment says complex. Without it the
    /// person is not eligible (the metric pays only for people with complex needs).
    ComplexNeeds,
}

impl Serialize for Requirement {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl Requirement {
    /// The code in `metrics.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Requirement::Recorded(kind) => kind.as_str(),
            Requirement::ComplexNeeds => "complex-needs",
        }
    }

    fn parse(code: &str) -> Option<Requirement> {
        match code {
            "complex-needs" => Some(Requirement::ComplexNeeds),
            other => MilestoneKind::parse(other).map(Requirement::Recorded),
        }
    }
}

/// A metric, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Metric {
    /// Its id.
    pub id: String,
    /// Its title.
    pub title: String,
    /// What it counts.
    #[serde(flatten)]
    pub kind: MetricKind,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsFile {
    metric: Vec<Spanned<MetricSpec>>,
    complexity: Option<Spanned<ComplexitySpec>>,
}

/// How a person is found to have complex needs (the `complex-needs` requirement of a
/// `milestones` metric): the latest recorded complexity assessment decides when there is one
/// (so a link worker's "not complex" overrides every rule); otherwise the person has complex
/// needs when any rule of the service's `[complexity]` (in `metrics.toml`) holds. With no
/// rules, only a recorded assessment counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ComplexityRule {
    /// At least this many reasons for referral.
    pub min_reasons: Option<u32>,
    /// Any of these reason codes.
    pub reason_codes: Vec<String>,
    /// A baseline score beyond a threshold.
    pub baselines: Vec<BaselineRule>,
}

/// A rule on a measure's baseline score (the first measurement, scored as the metrics
/// score it): at most or at least a threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaselineRule {
    /// The measure's code.
    pub measure: String,
    /// Complex when the baseline score is at most this (e.g. low wellbeing).
    pub at_most: Option<Decimal>,
    /// Complex when the baseline score is at least this (e.g. high loneliness).
    pub at_least: Option<Decimal>,
}

/// Only a recorded assessment counts (no `[complexity]` rules).
pub static RECORDED_ONLY: ComplexityRule = ComplexityRule {
    min_reasons: None,
    reason_codes: Vec::new(),
    baselines: Vec::new(),
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ComplexitySpec {
    min_reasons: Option<Spanned<i64>>,
    reason_codes: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    baseline: Vec<Spanned<BaselineSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BaselineSpec {
    measure: Spanned<String>,
    at_most: Option<Spanned<String>>,
    at_least: Option<Spanned<String>>,
}

impl ComplexityRule {
    /// Whether any rule is set (beyond a recorded assessment).
    pub fn has_rules(&self) -> bool {
        self.min_reasons.is_some() || !self.reason_codes.is_empty() || !self.baselines.is_empty()
    }
}

/// Loads `metrics.toml`'s `[complexity]` rules, checked against the measures in force
/// (each mistake with its file, line and column); none when the file has no such table.
pub fn load_complexity(
    source: &TomlText<'_>,
    catalogue: &Catalogue,
) -> Result<ComplexityRule, LocatedError> {
    let file: MetricsFile = source.parse()?;
    let Some(spec) = file.complexity else {
        return Ok(ComplexityRule::default());
    };
    let spec = spec.into_inner();
    let min_reasons = match spec.min_reasons {
        None => None,
        Some(n) => Some(
            u32::try_from(*n.get_ref())
                .ok()
                .filter(|n| (1..=50).contains(n))
                .ok_or_else(|| {
                    source.error_at(
                        &n.span(),
                        format!(
                            "complexity: min_reasons {} must be a whole number from 1 to 50",
                            n.get_ref()
                        ),
                    )
                })?,
        ),
    };
    let (codes_span, reason_codes) = spec
        .reason_codes
        .map(|c| (c.span(), c.into_inner()))
        .unwrap_or_default();
    if let Some(bad) = reason_codes
        .iter()
        .find(|c| c.trim().is_empty() || c.trim() != *c)
    {
        return Err(source.error_at(
            &codes_span,
            format!("complexity: reason code '{bad}' is blank or has spaces around it"),
        ));
    }
    let mut baselines = Vec::new();
    for rule in spec.baseline {
        let at = rule.span();
        let rule = rule.into_inner();
        let code = rule.measure.get_ref();
        let definition = catalogue.get(code).ok_or_else(|| {
            source.error_at(
                &rule.measure.span(),
                format!("complexity: measure '{code}' is not defined"),
            )
        })?;
        if definition.method == Method::None {
            return Err(source.error_at(
                &rule.measure.span(),
                format!("complexity: measure '{code}' has no total to compare"),
            ));
        }
        let number = |field: &Option<Spanned<String>>, name: &str| {
            field
                .as_ref()
                .map(|value| {
                    value.get_ref().trim().parse::<Decimal>().map_err(|_| {
                        source.error_at(
                            &value.span(),
                            format!(
                                "complexity: {name} '{}' is not a decimal number",
                                value.get_ref()
                            ),
                        )
                    })
                })
                .transpose()
        };
        let at_most = number(&rule.at_most, "at_most")?;
        let at_least = number(&rule.at_least, "at_least")?;
        if at_most.is_some() == at_least.is_some() {
            return Err(source.error_at(
                &at,
                format!(
                    "complexity: the baseline rule on '{code}' needs one of at_most or at_least"
                ),
            ));
        }
        baselines.push(BaselineRule {
            measure: code.clone(),
            at_most,
            at_least,
        });
    }
    Ok(ComplexityRule {
        min_reasons,
        reason_codes,
        baselines,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricSpec {
    id: String,
    title: String,
    kind: Spanned<String>,
    stage: Option<Spanned<String>>,
    milestones: Option<Spanned<Vec<String>>>,
    measure: Option<Spanned<String>>,
    follow_up: Option<Spanned<String>>,
    min_change: Option<Spanned<String>>,
    none_below: Option<Spanned<String>>,
    full_at: Option<Spanned<String>>,
}

/// Loads and checks the metrics against the measures in force.
pub fn load_metrics(
    source: &TomlText<'_>,
    catalogue: &Catalogue,
) -> Result<Vec<Metric>, LocatedError> {
    let file: MetricsFile = source.parse()?;
    let mut metrics: Vec<Metric> = Vec::new();
    for spanned in &file.metric {
        let spec = spanned.get_ref();
        let at = spanned.span();
        let id = spec.id.clone();
        if id.is_empty()
            || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            || id.len() > 64
        {
            return Err(source.error_at(
                &at,
                format!("metric id '{id}' must be 1 to 64 letters, digits and '-'"),
            ));
        }
        if metrics.iter().any(|m| m.id == id) {
            return Err(source.error_at(&at, format!("metric '{id}' is defined twice")));
        }
        let need = |field: &Option<Spanned<String>>, name: &str| {
            field.clone().ok_or_else(|| {
                source.error_at(
                    &spec.kind.span(),
                    format!(
                        "metric '{id}': kind \"{}\" needs `{name}`",
                        spec.kind.get_ref()
                    ),
                )
            })
        };
        let number = |field: Spanned<String>, name: &str| {
            field.get_ref().trim().parse::<Decimal>().map_err(|_| {
                source.error_at(
                    &field.span(),
                    format!(
                        "metric '{id}': {name} '{}' is not a decimal number",
                        field.get_ref()
                    ),
                )
            })
        };
        let measure_and_follow_up = || -> Result<(String, String), LocatedError> {
            let measure = need(&spec.measure, "measure")?;
            let definition: &MeasureDefinition =
                catalogue.get(measure.get_ref()).ok_or_else(|| {
                    source.error_at(
                        &measure.span(),
                        format!(
                            "metric '{id}': measure '{}' is not defined",
                            measure.get_ref()
                        ),
                    )
                })?;
            if definition.method == Method::None {
                return Err(source.error_at(
                    &measure.span(),
                    format!(
                        "metric '{id}': measure '{}' has no total to compare",
                        measure.get_ref()
                    ),
                ));
            }
            let follow_up = need(&spec.follow_up, "follow_up")?;
            if definition.follow_up(follow_up.get_ref()).is_none() {
                return Err(source.error_at(
                    &follow_up.span(),
                    format!(
                        "metric '{id}': measure '{}' has no follow-up '{}'; its follow-ups are {}",
                        measure.get_ref(),
                        follow_up.get_ref(),
                        definition
                            .schedule
                            .follow_ups
                            .iter()
                            .map(|f| f.key.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            Ok((measure.get_ref().clone(), follow_up.get_ref().clone()))
        };
        let kind = match spec.kind.get_ref().as_str() {
            "milestone" => match (&spec.stage, &spec.milestones) {
                (Some(stage), None) => {
                    let parsed = Stage::parse(stage.get_ref()).map_err(|e| {
                        source.error_at(&stage.span(), format!("metric '{id}': {e}"))
                    })?;
                    MetricKind::Milestone { stage: parsed }
                }
                (None, Some(list)) => {
                    let mut milestones = Vec::new();
                    for code in list.get_ref() {
                        let requirement = Requirement::parse(code).ok_or_else(|| {
                            source.error_at(
                                &list.span(),
                                format!(
                                    "metric '{id}': '{code}' is not a milestone; the milestones are \
                                     initial-assessment, action-plan, complexity, discharge, complex-needs"
                                ),
                            )
                        })?;
                        milestones.push(requirement);
                    }
                    if milestones.is_empty() {
                        return Err(source.error_at(
                            &list.span(),
                            format!("metric '{id}': milestones is empty"),
                        ));
                    }
                    MetricKind::Milestones { milestones }
                }
                _ => {
                    return Err(source.error_at(
                        &spec.kind.span(),
                        format!(
                            "metric '{id}': kind \"milestone\" needs one of `stage` or `milestones`"
                        ),
                    ));
                }
            },
            "improvement" => {
                let (measure, follow_up) = measure_and_follow_up()?;
                let min_change = number(need(&spec.min_change, "min_change")?, "min_change")?;
                MetricKind::Improvement {
                    measure,
                    follow_up,
                    min_change,
                }
            }
            "mean-change" => {
                let (measure, follow_up) = measure_and_follow_up()?;
                let none_below = number(need(&spec.none_below, "none_below")?, "none_below")?;
                let full = need(&spec.full_at, "full_at")?;
                let full_at = number(full.clone(), "full_at")?;
                if full_at <= none_below {
                    return Err(source.error_at(
                        &full.span(),
                        format!("metric '{id}': full_at must be above none_below"),
                    ));
                }
                MetricKind::MeanChange {
                    measure,
                    follow_up,
                    none_below,
                    full_at,
                }
            }
            other => {
                return Err(source.error_at(
                    &spec.kind.span(),
                    format!("metric '{id}': kind '{other}' is not one of milestone, improvement, mean-change"),
                ));
            }
        };
        metrics.push(Metric {
            id,
            title: spec.title.clone(),
            kind,
        });
    }
    Ok(metrics)
}

/// How counts are grouped in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// Calendar months (`2026-04`).
    Month,
    /// Calendar quarters (`2026-Q2`: April to June).
    Quarter,
}

impl Period {
    /// The label of the period holding `day`.
    pub fn label(self, day: Date) -> String {
        match self {
            Period::Month => format!("{:04}-{:02}", day.year(), day.month() as u8),
            Period::Quarter => format!("{:04}-Q{}", day.year(), (day.month() as u8 - 1) / 3 + 1),
        }
    }
}

/// What became of one person for one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Achieved.
    Achieved,
    /// Measured (or reached) but not enough.
    NotAchieved,
    /// Due (the window opened or the milestone is expected) and no measurement.
    Missing,
    /// Not yet due.
    Pending,
}

/// One person's line behind a count: the ids that prove it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DetailRow {
    /// The metric.
    pub metric: String,
    /// The period.
    pub period: String,
    /// The practice (`unknown` when the referral did not say).
    pub practice: String,
    /// The practice's PCN code, or [`NO_PCN`] (empty until [`Report::with_pcns`]).
    pub pcn: String,
    /// The referral.
    pub referral_id: String,
    /// The person (personal data: only in the detail export).
    pub nhs_number: Option<String>,
    /// What became of them.
    pub status: Status,
    /// The day that placed them in the period (milestone reached, or follow-up date).
    pub on: Date,
    /// The baseline Observation.
    pub baseline_observation: Option<String>,
    /// The follow-up Observation.
    pub follow_up_observation: Option<String>,
    /// The change, in the better direction.
    pub change: Option<Decimal>,
    /// For a metric counting people with complex needs: what found them complex (a
    /// recorded assessment, or which of the service's `[complexity]` rules).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub complex_needs: Option<String>,
}

/// One cell of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// The metric.
    pub metric: String,
    /// The period.
    pub period: String,
    /// The practice.
    pub practice: String,
    /// People eligible.
    pub eligible: u64,
    /// People who achieved it.
    pub achieved: u64,
    /// People due but without the measurement (or milestone).
    pub missing: u64,
    /// Mean change (mean-change metrics), to two places.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_change: Option<Decimal>,
    /// The sliding scale's share paid, 0 to 1 (mean-change metrics), to four places.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payable_fraction: Option<Decimal>,
}

/// One PCN's cell of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PcnRow {
    /// The metric.
    pub metric: String,
    /// The period.
    pub period: String,
    /// The PCN's code, or [`NO_PCN`].
    pub pcn: String,
    /// The PCN's name.
    pub pcn_name: Option<String>,
    /// People eligible.
    pub eligible: u64,
    /// People who achieved it.
    pub achieved: u64,
    /// People due but without the measurement (or milestone).
    pub missing: u64,
    /// Mean change (mean-change metrics), to two places.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_change: Option<Decimal>,
    /// The sliding scale's share paid (mean-change metrics), to four places.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payable_fraction: Option<Decimal>,
}

/// The spread of changes from the baseline to one follow-up of one measure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Distribution {
    /// The measure.
    pub measure: String,
    /// The follow-up.
    pub follow_up: String,
    /// People measured at both.
    pub n: u64,
    /// Lowest, quartiles, highest and mean of the change (raw, not direction-adjusted).
    pub min: Option<Decimal>,
    /// First quartile (nearest rank).
    pub q1: Option<Decimal>,
    /// Median (nearest rank).
    pub median: Option<Decimal>,
    /// Third quartile (nearest rank).
    pub q3: Option<Decimal>,
    /// Highest.
    pub max: Option<Decimal>,
    /// Mean, to two places.
    pub mean: Option<Decimal>,
}

/// The report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// First day counted.
    pub from: Date,
    /// Last day counted.
    pub to: Date,
    /// How periods are grouped.
    pub period: Period,
    /// The metrics counted.
    pub metrics: Vec<Metric>,
    /// Per metric, period and practice (sorted), and `all` practices per metric and period.
    pub rows: Vec<Row>,
    /// Per metric, period and PCN (sorted; empty until [`Report::with_pcns`]).
    pub pcn_rows: Vec<PcnRow>,
    /// Changes per measure and follow-up, over everyone in the range.
    pub distributions: Vec<Distribution>,
    /// Every person behind every count.
    #[serde(skip)]
    pub detail: Vec<DetailRow>,
}

/// An instant's UK date.
fn day_of(instant: &OffsetDateTime) -> Date {
    uk_date(*instant)
}

const CLOSED: [Stage; 3] = [Stage::Declined, Stage::UnableToContact, Stage::Withdrawn];

/// When the referral closed without finishing (declined, unable to contact, withdrawn).
fn closed_on(facts: &ReferralFacts) -> Option<Date> {
    facts
        .stages
        .iter()
        .filter(|(s, _)| CLOSED.contains(s))
        .map(|(_, at)| day_of(at))
        .min()
}

fn reached(facts: &ReferralFacts, stage: Stage) -> Option<Date> {
    facts
        .stages
        .iter()
        .filter(|(s, _)| *s == stage)
        .map(|(_, at)| day_of(at))
        .min()
}

/// The day a milestone of `kind` was first recorded.
fn first_recorded(facts: &ReferralFacts, kind: MilestoneKind) -> Option<Date> {
    facts
        .milestones
        .iter()
        .filter(|m| m.kind == kind)
        .map(|m| m.on)
        .min()
}

/// Whether the person has complex needs under `rule`, with the day it was found and why:
/// the latest recorded assessment decides when there is one; otherwise the first of the
/// rules that holds (reasons on the day the referral was received, a baseline on its day).
fn complex_needs(
    facts: &ReferralFacts,
    rule: &ComplexityRule,
    catalogue: &Catalogue,
) -> Option<(Date, String)> {
    let latest = facts
        .milestones
        .iter()
        .filter(|m| m.kind == MilestoneKind::Complexity)
        // The latest assessment decides; recorded order breaks a tie of days.
        .enumerate()
        .max_by_key(|(i, m)| (m.on, *i))
        .map(|(_, m)| m);
    if let Some(assessed) = latest {
        return (assessed.complex == Some(true))
            .then(|| (assessed.on, "recorded assessment".to_owned()));
    }
    let received = day_of(&facts.received_at);
    if let Some(least) = rule.min_reasons
        && facts.reason_count >= least
    {
        return Some((
            received,
            format!(
                "reasons for referral: {} (rule: at least {least})",
                facts.reason_count
            ),
        ));
    }
    if let Some(code) = facts
        .reason_codes
        .iter()
        .find(|c| rule.reason_codes.contains(c))
    {
        return Some((received, format!("reason {code} (rule: reason_codes)")));
    }
    for b in &rule.baselines {
        let Some(definition) = catalogue.get(&b.measure) else {
            continue;
        };
        let Some((_, day, total)) = baseline(facts, &b.measure) else {
            continue;
        };
        let Some(score) = definition.score_of_sum(total) else {
            continue;
        };
        let found = match (b.at_most, b.at_least) {
            (Some(most), _) if score <= most => Some(format!("at most {most}")),
            (_, Some(least)) if score >= least => Some(format!("at least {least}")),
            _ => None,
        };
        if let Some(threshold) = found {
            return Some((
                day,
                format!("{} baseline {score} (rule: {threshold})", b.measure),
            ));
        }
    }
    None
}

/// A person's baseline and follow-up for a measure: (baseline index, day, total).
fn baseline(facts: &ReferralFacts, measure: &str) -> Option<(usize, Date, i64)> {
    facts
        .outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| o.measure == measure)
        .filter_map(|(i, o)| Some((i, day_of(&o.recorded_at), o.total?)))
        .min_by_key(|(_, d, _)| *d)
}

struct Candidate {
    row: DetailRow,
}

/// What every metric is evaluated against: the measures, the complexity rule, the
/// grouping, the range and the day the report stands on.
#[derive(Clone, Copy)]
struct Scope<'a> {
    catalogue: &'a Catalogue,
    complexity: &'a ComplexityRule,
    period: Period,
    from: Date,
    to: Date,
    today: Date,
}

/// Evaluates one metric for one referral: `None` when not eligible in the range.
fn evaluate(metric: &Metric, scope: &Scope<'_>, facts: &ReferralFacts) -> Option<Candidate> {
    let Scope {
        catalogue,
        complexity,
        period,
        from,
        to,
        today,
    } = *scope;
    let practice = facts.practice.clone().unwrap_or_else(|| "unknown".into());
    let closed = closed_on(facts);
    let row = |status, on: Date, base: Option<String>, follow: Option<String>, change| DetailRow {
        metric: metric.id.clone(),
        period: period.label(on),
        practice: practice.clone(),
        pcn: String::new(),
        referral_id: facts.id.clone(),
        nhs_number: facts.nhs_number.clone(),
        status,
        on,
        baseline_observation: base,
        follow_up_observation: follow,
        change,
        complex_needs: None,
    };
    match &metric.kind {
        MetricKind::Milestone { stage } => {
            let accepted = reached(facts, Stage::Accepted)?;
            match reached(facts, *stage) {
                Some(on) if (from..=to).contains(&on) => Some(Candidate {
                    row: row(Status::Achieved, on, None, None, None),
                }),
                Some(_) => None,
                None => {
                    // Closed before the milestone: not eligible.
                    if closed.is_some() || !(from..=to).contains(&accepted) {
                        return None;
                    }
                    Some(Candidate {
                        row: row(Status::Missing, accepted, None, None, None),
                    })
                }
            }
        }
        MetricKind::Milestones { milestones } => {
            // Complex needs decide eligibility: someone assessed as not complex, or found
            // complex by no rule, is not in this metric's group.
            let complex = if milestones.contains(&Requirement::ComplexNeeds) {
                Some(complex_needs(facts, complexity, catalogue)?)
            } else {
                None
            };
            let days: Option<Vec<Date>> = milestones
                .iter()
                .map(|r| match r {
                    Requirement::Recorded(kind) => first_recorded(facts, *kind),
                    Requirement::ComplexNeeds => complex.as_ref().map(|(day, _)| *day),
                })
                .collect();
            let because = complex.map(|(_, why)| why);
            let mut line = match days.and_then(|d| d.into_iter().max()) {
                Some(on) if (from..=to).contains(&on) => {
                    row(Status::Achieved, on, None, None, None)
                }
                Some(_) => return None,
                None => {
                    // Due from acceptance; closed before the milestones: not eligible.
                    let accepted = reached(facts, Stage::Accepted)?;
                    if closed.is_some() || !(from..=to).contains(&accepted) {
                        return None;
                    }
                    row(Status::Missing, accepted, None, None, None)
                }
            };
            line.complex_needs = because;
            Some(Candidate { row: line })
        }
        MetricKind::Improvement {
            measure, follow_up, ..
        }
        | MetricKind::MeanChange {
            measure, follow_up, ..
        } => {
            let definition = catalogue.get(measure)?;
            let months = definition.follow_up(follow_up)?.months;
            let (base_index, base_day, base_total) = baseline(facts, measure)?;
            let target = add_months(base_day, months);
            if !(from..=to).contains(&target) {
                return None;
            }
            let window = time::Duration::weeks(i64::from(definition.schedule.window_weeks));
            let opens = target.checked_sub(window)?;
            let closes = target.checked_add(window)?;
            if closed.is_some_and(|c| c < opens) {
                return None;
            }
            let base_id = facts.outcomes.get(base_index).map(|o| o.id.clone());
            let follow = facts
                .outcomes
                .iter()
                .filter(|o| o.measure == *measure)
                .filter_map(|o| Some((o, day_of(&o.recorded_at), o.total?)))
                .filter(|(_, d, _)| (opens..=closes).contains(d) && *d <= today)
                .min_by_key(|(_, d, _)| *d);
            match follow {
                Some((o, _, total)) => {
                    // The definition scores the sums the record keeps (a mean divides them).
                    let raw =
                        definition.score_of_sum(total)? - definition.score_of_sum(base_total)?;
                    let change = if definition.higher_is_better {
                        raw
                    } else {
                        -raw
                    };
                    let status = match &metric.kind {
                        MetricKind::Improvement { min_change, .. } if change >= *min_change => {
                            Status::Achieved
                        }
                        MetricKind::Improvement { .. } => Status::NotAchieved,
                        _ => Status::Achieved,
                    };
                    Some(Candidate {
                        row: row(status, target, base_id, Some(o.id.clone()), Some(change)),
                    })
                }
                None => {
                    let status = if today >= opens {
                        Status::Missing
                    } else {
                        Status::Pending
                    };
                    Some(Candidate {
                        row: row(status, target, base_id, None, None),
                    })
                }
            }
        }
    }
}

fn rank(status: Status) -> u8 {
    match status {
        Status::Achieved => 0,
        Status::NotAchieved => 1,
        Status::Missing => 2,
        Status::Pending => 3,
    }
}

fn round(value: Decimal, places: u32) -> Decimal {
    value.round_dp_with_strategy(places, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
}

/// A cell's key: metric index, period, practice.
type CellKey = (usize, String, String);
/// A cell's eligible, achieved, missing and the changes measured.
type Cell = (u64, u64, u64, Vec<Decimal>);

/// The report over `facts` for `from..=to` (UK dates), as it stands on `today`
/// ([`OutcomesBuilder`] over a slice).
pub fn outcomes(
    metrics: &[Metric],
    catalogue: &Catalogue,
    facts: &[ReferralFacts],
    period: Period,
    from: Date,
    to: Date,
    today: Date,
) -> Report {
    let mut builder = OutcomesBuilder::new(metrics, catalogue, period, from, to, today);
    for referral in facts {
        builder.add(referral);
    }
    builder.finish()
}

/// The outcomes report built one referral at a time, so a caller can stream the record
/// (`Store::each_referral_facts`) instead of holding every referral's facts: what it keeps
/// is one line per person counted in the range (and the changes for the distributions),
/// which follows the range, not the number of referrals ever received.
pub struct OutcomesBuilder<'a> {
    metrics: &'a [Metric],
    scope: Scope<'a>,
    /// Per metric (`None`: not asked for), each person's line so far: the first
    /// achievement, else the first eligible referral.
    best: Vec<Option<HashMap<String, DetailRow>>>,
    /// Per measure with a total and follow-up: the changes measured (`None`: not asked for).
    changes: Option<Vec<(String, String, Vec<Decimal>)>>,
}

impl<'a> OutcomesBuilder<'a> {
    /// A report over `from..=to` as it stands on `today`, every metric and distribution.
    pub fn new(
        metrics: &'a [Metric],
        catalogue: &'a Catalogue,
        period: Period,
        from: Date,
        to: Date,
        today: Date,
    ) -> Self {
        let changes = catalogue
            .iter()
            .filter(|d| d.method != Method::None)
            .flat_map(|d| {
                d.schedule
                    .follow_ups
                    .iter()
                    .map(|f| (d.code.clone(), f.key.clone(), Vec::new()))
            })
            .collect();
        OutcomesBuilder {
            metrics,
            scope: Scope {
                catalogue,
                complexity: &RECORDED_ONLY,
                period,
                from,
                to,
                today,
            },
            best: metrics.iter().map(|_| Some(HashMap::new())).collect(),
            changes: Some(changes),
        }
    }

    /// Finds complex needs by the service's `rule` (else only a recorded assessment).
    pub fn with_complexity(mut self, rule: &'a ComplexityRule) -> Self {
        self.scope.complexity = rule;
        self
    }

    /// Only the metric `id` (a drill-down): the others and the distributions are not
    /// computed, and the report's other metrics have no rows.
    pub fn only_metric(mut self, id: &str) -> Self {
        for (metric, best) in self.metrics.iter().zip(self.best.iter_mut()) {
            if metric.id != id {
                *best = None;
            }
        }
        self.changes = None;
        self
    }

    /// Counts one referral.
    pub fn add(&mut self, referral: &ReferralFacts) {
        let scope = self.scope;
        for (metric, best) in self.metrics.iter().zip(self.best.iter_mut()) {
            let Some(best) = best else {
                continue;
            };
            let Some(candidate) = evaluate(metric, &scope, referral) else {
                continue;
            };
            let person = referral
                .nhs_number
                .as_deref()
                .unwrap_or(referral.id.as_str());
            let row = candidate.row;
            match best.get_mut(person) {
                Some(kept)
                    if (rank(kept.status), kept.on, &kept.referral_id)
                        <= (rank(row.status), row.on, &row.referral_id) => {}
                Some(kept) => *kept = row,
                None => {
                    best.insert(person.to_owned(), row);
                }
            }
        }
        if let Some(changes) = &mut self.changes {
            add_changes(scope.catalogue, referral, scope.from, scope.to, changes);
        }
    }

    /// The report.
    pub fn finish(self) -> Report {
        let mut detail: Vec<DetailRow> = Vec::new();
        for best in self.best.into_iter().flatten() {
            let mut rows: Vec<DetailRow> = best.into_values().collect();
            rows.sort_by(|a, b| {
                (&a.period, &a.practice, &a.referral_id).cmp(&(
                    &b.period,
                    &b.practice,
                    &b.referral_id,
                ))
            });
            detail.extend(rows);
        }
        let metrics = self.metrics;
        let mut cells: BTreeMap<CellKey, Cell> = BTreeMap::new();
        for d in &detail {
            let index = metrics.iter().position(|m| m.id == d.metric).unwrap_or(0);
            for practice in [d.practice.clone(), "all".to_string()] {
                tally(
                    cells
                        .entry((index, d.period.clone(), practice))
                        .or_default(),
                    d,
                );
            }
        }
        let rows = cells
            .into_iter()
            .map(|(key, cell)| finish(metrics, key, cell))
            .collect();
        Report {
            from: self.scope.from,
            to: self.scope.to,
            period: self.scope.period,
            metrics: metrics.to_vec(),
            rows,
            pcn_rows: Vec::new(),
            distributions: self
                .changes
                .map(|c| c.into_iter().map(distribution).collect())
                .unwrap_or_default(),
            detail,
        }
    }
}

/// Adds one person's line to a cell.
fn tally(cell: &mut Cell, d: &DetailRow) {
    cell.0 += 1;
    if d.status == Status::Achieved {
        cell.1 += 1;
    }
    if d.status == Status::Missing {
        cell.2 += 1;
    }
    if let Some(change) = d.change {
        cell.3.push(change);
    }
}

/// A cell's row: its counts, and for a mean-change metric the mean and the share payable.
fn finish(metrics: &[Metric], key: CellKey, cell: Cell) -> Row {
    let ((index, period, practice), (eligible, achieved, missing, changes)) = (key, cell);
    let (mean_change, payable_fraction) = match metrics.get(index).map(|m| &m.kind) {
        Some(MetricKind::MeanChange {
            none_below,
            full_at,
            ..
        }) if !changes.is_empty() => {
            let mean = changes.iter().sum::<Decimal>() / Decimal::from(changes.len() as u64);
            let share =
                ((mean - none_below) / (full_at - none_below)).clamp(Decimal::ZERO, Decimal::ONE);
            let share = if mean < *none_below {
                Decimal::ZERO
            } else {
                share
            };
            (Some(round(mean, 2)), Some(round(share, 4)))
        }
        _ => (None, None),
    };
    Row {
        metric: metrics.get(index).map(|m| m.id.clone()).unwrap_or_default(),
        period,
        practice,
        eligible,
        achieved,
        missing,
        mean_change,
        payable_fraction,
    }
}

impl Report {
    /// The report broken down per Primary Care Network too: each person's line placed in
    /// their practice's PCN ([`NO_PCN`] when the directory names none), counted per metric,
    /// period and PCN into `pcn_rows`, as `rows` are per practice.
    pub fn with_pcns(mut self, pcns: &PcnDirectory) -> Report {
        let mut cells: BTreeMap<CellKey, Cell> = BTreeMap::new();
        for d in &mut self.detail {
            d.pcn = pcns
                .pcn_of(&d.practice)
                .map_or_else(|| NO_PCN.to_owned(), |p| p.code.clone());
            let index = self
                .metrics
                .iter()
                .position(|m| m.id == d.metric)
                .unwrap_or(0);
            tally(
                cells
                    .entry((index, d.period.clone(), d.pcn.clone()))
                    .or_default(),
                d,
            );
        }
        self.pcn_rows = cells
            .into_iter()
            .map(|(key, cell)| {
                let row = finish(&self.metrics, key, cell);
                let pcn_name = pcns
                    .pcns()
                    .iter()
                    .find(|p| p.code == row.practice)
                    .map(|p| p.name.clone());
                PcnRow {
                    metric: row.metric,
                    period: row.period,
                    pcn: row.practice,
                    pcn_name,
                    eligible: row.eligible,
                    achieved: row.achieved,
                    missing: row.missing,
                    mean_change: row.mean_change,
                    payable_fraction: row.payable_fraction,
                }
            })
            .collect();
        self
    }
}

/// Adds a referral's change from baseline to each follow-up of each measure (the slots
/// of [`OutcomesBuilder::new`]), for follow-ups dated in range.
fn add_changes(
    catalogue: &Catalogue,
    referral: &ReferralFacts,
    from: Date,
    to: Date,
    slots: &mut [(String, String, Vec<Decimal>)],
) {
    for (code, key, changes) in slots {
        let Some(definition) = catalogue.get(code) else {
            continue;
        };
        let Some(f) = definition.follow_up(key) else {
            continue;
        };
        let window = time::Duration::weeks(i64::from(definition.schedule.window_weeks));
        let Some((_, base_day, base_total)) = baseline(referral, &definition.code) else {
            continue;
        };
        let target = add_months(base_day, f.months);
        if !(from..=to).contains(&target) {
            continue;
        }
        let hit = referral
            .outcomes
            .iter()
            .filter(|o| o.measure == definition.code)
            .filter_map(|o| Some((day_of(&o.recorded_at), o.total?)))
            .filter(|(d, _)| *d >= target - window && *d <= target + window)
            .min_by_key(|(d, _)| *d);
        if let Some(change) = hit.and_then(|(_, total)| {
            Some(definition.score_of_sum(total)? - definition.score_of_sum(base_total)?)
        }) {
            changes.push(change);
        }
    }
}

/// The spread of one measure's and follow-up's changes.
fn distribution((measure, follow_up, mut changes): (String, String, Vec<Decimal>)) -> Distribution {
    changes.sort();
    let at = |q: usize| -> Option<Decimal> {
        if changes.is_empty() {
            return None;
        }
        // Nearest rank: ceil(q/4 · n), from 1.
        let rank = (q * changes.len()).div_ceil(4).max(1);
        changes.get(rank - 1).copied()
    };
    let mean = (!changes.is_empty()).then(|| {
        round(
            changes.iter().sum::<Decimal>() / Decimal::from(changes.len() as u64),
            2,
        )
    });
    Distribution {
        measure,
        follow_up,
        n: changes.len() as u64,
        min: changes.first().copied(),
        q1: at(1),
        median: at(2),
        q3: at(3),
        max: changes.last().copied(),
        mean,
    }
}

/// A CSV field: quoted when it must be (RFC 4180), and a leading `=`, `+`, `-`, `@` made
/// inert so a spreadsheet does not run it as a formula.
fn field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '@'])
        || (text.starts_with('-') && text.parse::<f64>().is_err())
    {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

fn line(fields: &[String]) -> String {
    let mut out = fields
        .iter()
        .map(|f| field(f))
        .collect::<Vec<_>>()
        .join(",");
    out.push_str("\r\n");
    out
}

fn opt<T: ToString>(value: &Option<T>) -> String {
    value.as_ref().map(ToString::to_string).unwrap_or_default()
}

impl Report {
    /// The counts as CSV (no personal data, no ids): per practice (and `all`), then per
    /// PCN (the `pcn` column set, `practice` empty) after [`Report::with_pcns`].
    pub fn to_csv(&self) -> String {
        let mut out = line(
            &[
                "metric",
                "period",
                "practice",
                "eligible",
                "achieved",
                "missing",
                "mean_change",
                "payable_fraction",
                "pcn",
            ]
            .map(String::from),
        );
        for r in &self.rows {
            out.push_str(&line(&[
                r.metric.clone(),
                r.period.clone(),
                r.practice.clone(),
                r.eligible.to_string(),
                r.achieved.to_string(),
                r.missing.to_string(),
                opt(&r.mean_change),
                opt(&r.payable_fraction),
                String::new(),
            ]));
        }
        for r in &self.pcn_rows {
            out.push_str(&line(&[
                r.metric.clone(),
                r.period.clone(),
                String::new(),
                r.eligible.to_string(),
                r.achieved.to_string(),
                r.missing.to_string(),
                opt(&r.mean_change),
                opt(&r.payable_fraction),
                r.pcn.clone(),
            ]));
        }
        out
    }

    /// Every person behind every count, with the referral and Observation ids and the NHS
    /// number: personal data, for the roles allowed to see it.
    pub fn detail_csv(&self) -> String {
        let mut out = line(
            &[
                "metric",
                "period",
                "practice",
                "pcn",
                "referral_id",
                "nhs_number",
                "status",
                "date",
                "baseline_observation",
                "follow_up_observation",
                "change",
                "complex_needs",
            ]
            .map(String::from),
        );
        for d in &self.detail {
            out.push_str(&line(&[
                d.metric.clone(),
                d.period.clone(),
                d.practice.clone(),
                d.pcn.clone(),
                d.referral_id.clone(),
                opt(&d.nhs_number),
                serde_json::to_value(d.status)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                d.on.to_string(),
                opt(&d.baseline_observation),
                opt(&d.follow_up_observation),
                opt(&d.change),
                opt(&d.complex_needs),
            ]));
        }
        out
    }

    /// The report as FHIR R4: a `collection` Bundle of one `Measure` per metric and one
    /// summary `MeasureReport` per metric and period (all practices), with the numerator
    /// (achieved), denominator (eligible) and a `missing` population.
    pub fn to_fhir(&self, base: &str) -> serde_json::Value {
        use serde_json::json;
        let population = |code: &str, display: &str| json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/measure-population", "code": code, "display": display}]});
        let missing_code = json!({"coding": [{"system": "https://sprig-gateway.org/fhir/CodeSystem/sprig-report-population", "code": "missing", "display": "Due but missing"}]});
        let mut entries = Vec::new();
        for metric in &self.metrics {
            let url = format!("https://sprig-gateway.org/fhir/Measure/{}", metric.id);
            entries.push(json!({
                "fullUrl": url,
                "resource": {
                    "resourceType": "Measure",
                    "id": metric.id,
                    "url": url,
                    "name": metric.id.replace('-', "_"),
                    "title": metric.title,
                    "status": "active",
                    "scoring": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/measure-scoring", "code": "proportion"}]},
                    "group": [{"population": [
                        {"code": population("denominator", "Denominator"), "criteria": {"language": "text/plain", "expression": "eligible"}},
                        {"code": population("numerator", "Numerator"), "criteria": {"language": "text/plain", "expression": "achieved"}},
                    ]}],
                },
            }));
        }
        for r in self.rows.iter().filter(|r| r.practice == "all") {
            let id = format!("{}-{}", r.metric, r.period).to_ascii_lowercase();
            let (start, end) = period_bounds(&r.period, self.from, self.to);
            let mut report = json!({
                "resourceType": "MeasureReport",
                "id": id,
                "status": "complete",
                "type": "summary",
                "measure": format!("https://sprig-gateway.org/fhir/Measure/{}", r.metric),
                "date": self.to.to_string(),
                "period": {"start": start.to_string(), "end": end.to_string()},
                "group": [{"population": [
                    {"code": population("denominator", "Denominator"), "count": r.eligible},
                    {"code": population("numerator", "Numerator"), "count": r.achieved},
                    {"code": missing_code, "count": r.missing},
                ]}],
            });
            if r.eligible > 0 {
                report["group"][0]["measureScore"] = json!({"value": round(Decimal::from(r.achieved) / Decimal::from(r.eligible), 4)});
            }
            // Per PCN, as strata (after `with_pcns`).
            let strata: Vec<serde_json::Value> = self
                .pcn_rows
                .iter()
                .filter(|p| p.metric == r.metric && p.period == r.period)
                .map(|p| {
                    let mut value = json!({"text": p.pcn});
                    if p.pcn != NO_PCN {
                        value["coding"] = json!([{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "code": p.pcn, "display": p.pcn_name}]);
                    }
                    json!({"value": value, "population": [
                        {"code": population("denominator", "Denominator"), "count": p.eligible},
                        {"code": population("numerator", "Numerator"), "count": p.achieved},
                        {"code": missing_code, "count": p.missing},
                    ]})
                })
                .collect();
            if !strata.is_empty() {
                report["group"][0]["stratifier"] =
                    json!([{"code": [{"text": "Primary Care Network"}], "stratum": strata}]);
            }
            entries
                .push(json!({"fullUrl": format!("{base}/MeasureReport/{id}"), "resource": report}));
        }
        json!({"resourceType": "Bundle", "type": "collection", "entry": entries})
    }

    /// A bar chart (SVG) of achieved against eligible per metric and period, all practices:
    /// plain shapes and text a commissioner can read, no script.
    pub fn to_svg(&self) -> String {
        let rows: Vec<&Row> = self.rows.iter().filter(|r| r.practice == "all").collect();
        let bar = 18;
        let height = 40 + rows.len() * (bar + 8);
        let most = rows.iter().map(|r| r.eligible).max().unwrap_or(1).max(1);
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"760\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\" role=\"img\" aria-label=\"Outcome metrics {} to {}\">\n<title>Outcome metrics {} to {}: achieved (dark) of eligible (light)</title>\n",
            self.from, self.to, self.from, self.to
        );
        for (i, r) in rows.iter().enumerate() {
            let y = 30 + i * (bar + 8);
            let eligible = 400 * r.eligible / most;
            let achieved = 400 * r.achieved / most;
            let label = xml(&format!("{} {}", r.metric, r.period));
            svg.push_str(&format!(
                "<text x=\"4\" y=\"{}\">{label}</text>\n<rect x=\"300\" y=\"{y}\" width=\"{eligible}\" height=\"{bar}\" fill=\"#c6dbef\"/>\n<rect x=\"300\" y=\"{y}\" width=\"{achieved}\" height=\"{bar}\" fill=\"#08519c\"/>\n<text x=\"{}\" y=\"{}\">{} of {}</text>\n",
                y + 13,
                304 + eligible,
                y + 13,
                r.achieved,
                r.eligible
            ));
        }
        svg.push_str("</svg>\n");
        svg
    }
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A period label's first and last day, within the report's range.
fn period_bounds(label: &str, from: Date, to: Date) -> (Date, Date) {
    let parse = || -> Option<(Date, Date)> {
        let (year, rest) = label.split_once('-')?;
        let year: i32 = year.parse().ok()?;
        let (first, months) = match rest.strip_prefix('Q') {
            Some(q) => ((q.parse::<u8>().ok()? - 1) * 3 + 1, 3),
            None => (rest.parse::<u8>().ok()?, 1),
        };
        let start = Date::from_calendar_date(year, time::Month::try_from(first).ok()?, 1).ok()?;
        let end = add_months(start, months).previous_day()?;
        Some((start.max(from), end.min(to)))
    };
    parse().unwrap_or((from, to))
}

/// The service summary: what came in and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceSummary {
    /// Referrals received per month.
    pub received_per_month: BTreeMap<String, u64>,
    /// Received, by first reason.
    pub by_reason: BTreeMap<String, u64>,
    /// Received, by practice.
    pub by_practice: BTreeMap<String, u64>,
    /// Received in range.
    pub received: u64,
    /// Of those, accepted.
    pub accepted: u64,
    /// Of those, declined.
    pub declined: u64,
    /// Of those, completed.
    pub completed: u64,
    /// Median days from receipt to first contact (nearest rank), of those contacted.
    pub median_days_to_first_contact: Option<i64>,
}

/// The service summary over referrals received `from..=to`.
pub fn service_summary(facts: &[ReferralFacts], from: Date, to: Date) -> ServiceSummary {
    let mut builder = SummaryBuilder::new(from, to);
    for f in facts {
        builder.add(f);
    }
    builder.finish()
}

/// The service summary built one referral at a time (see [`OutcomesBuilder`]).
pub struct SummaryBuilder {
    from: Date,
    to: Date,
    summary: ServiceSummary,
    waits: Vec<i64>,
}

impl SummaryBuilder {
    /// A summary of the referrals received `from..=to`.
    pub fn new(from: Date, to: Date) -> Self {
        SummaryBuilder {
            from,
            to,
            summary: ServiceSummary {
                received_per_month: BTreeMap::new(),
                by_reason: BTreeMap::new(),
                by_practice: BTreeMap::new(),
                received: 0,
                accepted: 0,
                declined: 0,
                completed: 0,
                median_days_to_first_contact: None,
            },
            waits: Vec::new(),
        }
    }

    /// Counts one referral.
    pub fn add(&mut self, f: &ReferralFacts) {
        let day = day_of(&f.received_at);
        if !(self.from..=self.to).contains(&day) {
            return;
        }
        let summary = &mut self.summary;
        summary.received += 1;
        *summary
            .received_per_month
            .entry(Period::Month.label(day))
            .or_default() += 1;
        let reason = f.reason.as_deref().unwrap_or("none given");
        match summary.by_reason.get_mut(reason) {
            Some(n) => *n += 1,
            None => {
                summary.by_reason.insert(reason.to_owned(), 1);
            }
        }
        let practice = f.practice.as_deref().unwrap_or("unknown");
        match summary.by_practice.get_mut(practice) {
            Some(n) => *n += 1,
            None => {
                summary.by_practice.insert(practice.to_owned(), 1);
            }
        }
        summary.accepted += u64::from(reached(f, Stage::Accepted).is_some());
        summary.declined += u64::from(reached(f, Stage::Declined).is_some());
        summary.completed += u64::from(reached(f, Stage::Completed).is_some());
        if let Some(contact) = reached(f, Stage::Contacted) {
            self.waits.push((contact - day).whole_days());
        }
    }

    /// The summary.
    pub fn finish(mut self) -> ServiceSummary {
        let waits = &mut self.waits;
        waits.sort_unstable();
        self.summary.median_days_to_first_contact =
            (!waits.is_empty()).then(|| waits[waits.len().div_ceil(2) - 1]);
        self.summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::referral::record::{MilestoneFact, OutcomeFact};
    use time::macros::date;

    fn catalogue() -> Catalogue {
        Catalogue::shipped().expect("shipped")
    }

    fn instant(day: &str) -> OffsetDateTime {
        OffsetDateTime::parse(
            &format!("{day}T10:00:00Z"),
            &time::format_description::well_known::Rfc3339,
        )
        .expect("an instant")
    }

    fn facts(
        id: &str,
        nhs: &str,
        practice: &str,
        stages: &[(Stage, &str)],
        outcomes: &[(&str, &str, i64)],
    ) -> ReferralFacts {
        ReferralFacts {
            id: id.into(),
            nhs_number: Some(nhs.into()),
            practice: Some(practice.into()),
            received_at: instant("2026-01-05"),
            reason: None,
            reason_count: 0,
            reason_codes: Vec::new(),
            stages: stages.iter().map(|(s, at)| (*s, instant(at))).collect(),
            outcomes: outcomes
                .iter()
                .enumerate()
                .map(|(i, (m, at, total))| OutcomeFact {
                    id: format!("{id}-o{i}"),
                    measure: (*m).into(),
                    recorded_at: instant(at),
                    total: Some(*total),
                })
                .collect(),
            milestones: Vec::new(),
        }
    }

    fn milestone(kind: MilestoneKind, on: &str, complex: Option<bool>) -> MilestoneFact {
        MilestoneFact {
            kind,
            on: uk_date(instant(on)),
            complex,
        }
    }

    #[test]
    fn complex_needs_are_found_by_the_service_s_rules_and_a_recorded_assessment_overrides() {
        let catalogue = catalogue();
        let text = format!(
            "{}\n[complexity]\nmin_reasons = 3\nreason_codes = [\"housing\"]\n\
             [[complexity.baseline]]\nmeasure = \"wemwbs\"\nat_most = \"35\"\n",
            SHIPPED_METRICS.1
        );
        let source = TomlText::new("metrics.toml", &text);
        let metrics = load_metrics(&source, &catalogue).expect("metrics");
        let rule = load_complexity(&source, &catalogue).expect("rule");
        assert!(rule.has_rules());
        let (from, to, today) = (
            date!(2026 - 01 - 01),
            date!(2026 - 12 - 31),
            date!(2026 - 12 - 31),
        );
        let plan = |mut f: ReferralFacts| {
            f.milestones
                .push(milestone(MilestoneKind::ActionPlan, "2026-02-01", None));
            f
        };
        let stages = [(Stage::Accepted, "2026-01-06")];
        let by_reasons = ReferralFacts {
            reason_count: 3,
            ..plan(facts("r1", "9000000001", "A1", &stages, &[]))
        };
        let by_code = ReferralFacts {
            reason_count: 1,
            reason_codes: vec!["housing".into()],
            ..plan(facts("r2", "9000000002", "A1", &stages, &[]))
        };
        let by_baseline = plan(facts(
            "r3",
            "9000000003",
            "A1",
            &stages,
            &[("wemwbs", "2026-01-10", 30)],
        ));
        let not_complex = plan(facts(
            "r4",
            "9000000004",
            "A1",
            &stages,
            &[("wemwbs", "2026-01-10", 50)],
        ));
        // Every rule holds, but the link worker assessed the person as not complex.
        let mut overridden = ReferralFacts {
            reason_count: 4,
            ..plan(facts(
                "r5",
                "9000000005",
                "A1",
                &stages,
                &[("wemwbs", "2026-01-10", 20)],
            ))
        };
        overridden.milestones.push(milestone(
            MilestoneKind::Complexity,
            "2026-01-20",
            Some(false),
        ));
        let mut recorded = plan(facts("r6", "9000000006", "A1", &stages, &[]));
        recorded.milestones.push(milestone(
            MilestoneKind::Complexity,
            "2026-01-20",
            Some(true),
        ));
        let all = [
            by_reasons,
            by_code,
            by_baseline,
            not_complex,
            overridden,
            recorded,
        ];
        let mut builder =
            OutcomesBuilder::new(&metrics, &catalogue, Period::Quarter, from, to, today)
                .with_complexity(&rule)
                .only_metric("complex-needs-engaged");
        for f in &all {
            builder.add(f);
        }
        let report = builder.finish();
        let because: Vec<(&str, Option<&str>)> = report
            .detail
            .iter()
            .map(|d| (d.referral_id.as_str(), d.complex_needs.as_deref()))
            .collect();
        assert_eq!(
            because,
            vec![
                ("r1", Some("reasons for referral: 3 (rule: at least 3)")),
                ("r2", Some("reason housing (rule: reason_codes)")),
                ("r3", Some("wemwbs baseline 30 (rule: at most 35)")),
                ("r6", Some("recorded assessment")),
            ]
        );
        assert!(report.detail.iter().all(|d| d.status == Status::Achieved));
        assert!(
            report
                .detail_csv()
                .contains("reason housing (rule: reason_codes)")
        );
        // Without rules, only the recorded assessment counts.
        let only_recorded = outcomes(&metrics, &catalogue, &all, Period::Quarter, from, to, today);
        let counted: Vec<&str> = only_recorded
            .detail
            .iter()
            .filter(|d| d.metric == "complex-needs-engaged")
            .map(|d| d.referral_id.as_str())
            .collect();
        assert_eq!(counted, vec!["r6"]);
    }

    #[test]
    fn complexity_rule_mistakes_say_where() {
        let catalogue = catalogue();
        for (rule, at, what) in [
            ("min_reasons = 0", "metrics.toml:", "min_reasons 0"),
            (
                "reason_codes = [\" housing\"]",
                "metrics.toml:",
                "spaces around it",
            ),
            (
                "[[complexity.baseline]]\nmeasure = \"nope\"\nat_most = \"1\"",
                "metrics.toml:",
                "measure 'nope' is not defined",
            ),
            (
                "[[complexity.baseline]]\nmeasure = \"ons4\"\nat_most = \"1\"",
                "metrics.toml:",
                "no total",
            ),
            (
                "[[complexity.baseline]]\nmeasure = \"wemwbs\"\nat_most = \"low\"",
                "metrics.toml:",
                "'low' is not a decimal",
            ),
            (
                "[[complexity.baseline]]\nmeasure = \"wemwbs\"",
                "metrics.toml:",
                "needs one of at_most or at_least",
            ),
            ("colour = \"green\"", "metrics.toml:", "colour"),
        ] {
            let text = format!("{}\n[complexity]\n{rule}\n", SHIPPED_METRICS.1);
            let error = load_complexity(&TomlText::new("metrics.toml", &text), &catalogue)
                .expect_err(rule)
                .to_string();
            assert!(
                error.contains(at) && error.contains(what),
                "{rule}: {error}"
            );
            // file:line:col
            let line_col = error.split(':').nth(1).and_then(|l| l.parse::<u32>().ok());
            assert!(line_col.is_some_and(|l| l > 1), "{rule}: {error}");
        }
    }

    #[test]
    fn the_shipped_metrics_load() {
        let (name, text) = SHIPPED_METRICS;
        let metrics = load_metrics(&TomlText::new(name, text), &catalogue()).expect("load");
        let plan = metrics
            .iter()
            .find(|m| m.id == "initial-assessment-with-plan")
            .map(|m| m.kind.clone());
        assert_eq!(
            plan,
            Some(MetricKind::Milestones {
                milestones: vec![
                    Requirement::Recorded(MilestoneKind::InitialAssessment),
                    Requirement::Recorded(MilestoneKind::ActionPlan)
                ]
            })
        );
        let both = "[[metric]]\nid = \"x\"\ntitle = \"X\"\nkind = \"milestone\"\nstage = \"plan-agreed\"\nmilestones = [\"action-plan\"]\n";
        let err = load_metrics(&TomlText::new("m.toml", both), &catalogue())
            .expect_err("one of them")
            .to_string();
        assert!(err.contains("one of `stage` or `milestones`"), "{err}");
        let unknown = both
            .replace("stage = \"plan-agreed\"\n", "")
            .replace("action-plan", "plan");
        let err = load_metrics(&TomlText::new("m.toml", &unknown), &catalogue())
            .expect_err("no such milestone")
            .to_string();
        assert!(
            err.starts_with("m.toml:5:14:") && err.contains("'plan' is not a milestone"),
            "{err}"
        );
    }

    /// The plan and complex-needs metrics count on recorded milestones, not on the stage: a
    /// referral moved to plan-agreed without the evidence is due but missing (counted as
    /// achieved when metrics counted stages).
    #[test]
    fn milestone_metrics_count_on_recorded_milestones_not_stages() {
        let (name, text) = SHIPPED_METRICS;
        let metrics = load_metrics(&TomlText::new(name, text), &catalogue()).expect("load");
        let metrics: Vec<Metric> = metrics
            .into_iter()
            .filter(|m| matches!(m.kind, MetricKind::Milestones { .. }))
            .collect();
        let staged = [
            (Stage::Accepted, "2026-01-06"),
            (Stage::AssessmentDone, "2026-01-10"),
            (Stage::PlanAgreed, "2026-01-20"),
        ];
        let with = |id: &str, nhs: &str, milestones: Vec<MilestoneFact>| {
            let mut f = facts(id, nhs, "K1", &staged, &[]);
            f.milestones = milestones;
            f
        };
        let all = vec![
            // The stage alone: missing for the plan metric, not eligible for complex needs.
            with("r1", "1", vec![]),
            // Assessment and plan (the plan dated in April): achieved in Q2.
            with(
                "r2",
                "2",
                vec![
                    milestone(MilestoneKind::InitialAssessment, "2026-01-10", None),
                    milestone(MilestoneKind::ActionPlan, "2026-04-02", None),
                ],
            ),
            // Complex, then reassessed as not complex: not eligible for complex needs.
            with(
                "r3",
                "3",
                vec![
                    milestone(MilestoneKind::Complexity, "2026-01-08", Some(true)),
                    milestone(MilestoneKind::Complexity, "2026-01-09", Some(false)),
                    milestone(MilestoneKind::ActionPlan, "2026-01-20", None),
                ],
            ),
            // Complex with a plan: achieved; complex without a plan: missing.
            with(
                "r4",
                "4",
                vec![
                    milestone(MilestoneKind::Complexity, "2026-01-08", Some(true)),
                    milestone(MilestoneKind::ActionPlan, "2026-01-21", None),
                ],
            ),
            with(
                "r5",
                "5",
                vec![milestone(
                    MilestoneKind::Complexity,
                    "2026-01-08",
                    Some(true),
                )],
            ),
        ];
        let report = outcomes(
            &metrics,
            &catalogue(),
            &all,
            Period::Quarter,
            date!(2026 - 01 - 01),
            date!(2026 - 12 - 31),
            date!(2026 - 12 - 01),
        );
        let cell = |metric: &str, period: &str| {
            report
                .rows
                .iter()
                .find(|r| r.metric == metric && r.period == period && r.practice == "all")
                .map(|r| (r.eligible, r.achieved, r.missing))
        };
        // r1, r3, r4, r5 are due in Q1 without both milestones; r2 achieved in Q2.
        assert_eq!(
            cell("initial-assessment-with-plan", "2026-Q1"),
            Some((4, 0, 4))
        );
        assert_eq!(
            cell("initial-assessment-with-plan", "2026-Q2"),
            Some((1, 1, 0))
        );
        assert_eq!(cell("complex-needs-engaged", "2026-Q1"), Some((2, 1, 1)));
        let detail = report.detail_csv();
        assert!(
            detail.contains("complex-needs-engaged,2026-Q1,K1,,r4,4,achieved,2026-01-21"),
            "{detail}"
        );
    }

    #[test]
    fn metric_mistakes_say_where() {
        let bad = "[[metric]]\nid = \"x\"\ntitle = \"X\"\nkind = \"improvement\"\nmeasure = \"wemwbs\"\nfollow_up = \"9m\"\nmin_change = \"3\"\n";
        let err = load_metrics(&TomlText::new("m.toml", bad), &catalogue())
            .expect_err("no 9m")
            .to_string();
        assert!(
            err.starts_with("m.toml:6:13:") && err.contains("no follow-up '9m'"),
            "{err}"
        );
        let ons = bad.replace("wemwbs", "ons4").replace("9m", "6m");
        let err = load_metrics(&TomlText::new("m.toml", &ons), &catalogue())
            .expect_err("no total")
            .to_string();
        assert!(err.contains("no total"), "{err}");
    }

    #[test]
    fn counts_follow_the_rules() {
        let cat = catalogue();
        let metrics = vec![
            Metric {
                id: "plan".into(),
                title: "Plan".into(),
                kind: MetricKind::Milestone {
                    stage: Stage::PlanAgreed,
                },
            },
            Metric {
                id: "wemwbs-6m".into(),
                title: "WEMWBS".into(),
                kind: MetricKind::Improvement {
                    measure: "wemwbs".into(),
                    follow_up: "6m".into(),
                    min_change: Decimal::from(3),
                },
            },
        ];
        let a = [
            (Stage::Accepted, "2026-01-06"),
            (Stage::PlanAgreed, "2026-01-20"),
        ];
        let all = vec![
            // Achieves both: +4 at 6 months.
            facts(
                "r1",
                "1",
                "K11111",
                &a,
                &[("wemwbs", "2026-01-20", 40), ("wemwbs", "2026-07-25", 44)],
            ),
            // The same person again: counted once.
            facts(
                "r1b",
                "1",
                "K11111",
                &a,
                &[("wemwbs", "2026-01-21", 40), ("wemwbs", "2026-07-21", 50)],
            ),
            // +2 only; missing follow-up for another.
            facts(
                "r2",
                "2",
                "K22222",
                &a,
                &[("wemwbs", "2026-01-20", 40), ("wemwbs", "2026-07-20", 42)],
            ),
            facts("r3", "3", "K22222", &a, &[("wemwbs", "2026-01-20", 40)]),
            // Withdrawn before the window opened: not eligible; before its plan: not eligible.
            facts(
                "r4",
                "4",
                "K22222",
                &[
                    (Stage::Accepted, "2026-01-06"),
                    (Stage::Withdrawn, "2026-01-10"),
                ],
                &[("wemwbs", "2026-01-08", 40)],
            ),
        ];
        let report = outcomes(
            &metrics,
            &cat,
            &all,
            Period::Quarter,
            date!(2026 - 01 - 01),
            date!(2026 - 12 - 31),
            date!(2026 - 12 - 01),
        );
        let cell = |metric: &str, period: &str, practice: &str| {
            report
                .rows
                .iter()
                .find(|r| r.metric == metric && r.period == period && r.practice == practice)
                .map(|r| (r.eligible, r.achieved, r.missing))
        };
        assert_eq!(cell("plan", "2026-Q1", "all"), Some((3, 3, 0)));
        assert_eq!(cell("wemwbs-6m", "2026-Q3", "all"), Some((3, 1, 1)));
        assert_eq!(cell("wemwbs-6m", "2026-Q3", "K22222"), Some((2, 0, 1)));
        let detail = report.detail_csv();
        assert!(
            detail.contains("wemwbs-6m,2026-Q3,K11111,,r1,1,achieved,2026-07-20,r1-o0,r1-o1,4"),
            "{detail}"
        );
        assert!(!detail.contains(",r1b,"), "a person counts once");
        assert!(!report.to_csv().contains("r1"), "no ids in the counts");
        let fhir = report.to_fhir("https://x/fhir");
        assert_eq!(fhir["entry"][0]["resource"]["resourceType"], "Measure");
        assert!(report.to_svg().starts_with("<svg"));

        // Per PCN: K11111 is in U11111 and K22222 in none.
        let pcns = PcnDirectory::parse(&TomlText::new(
            "pcns.toml",
            "[[pcn]]\ncode = \"U11111\"\nname = \"North PCN\"\npractices = [\"K11111\"]\n",
        ))
        .expect("pcns");
        let report = report.with_pcns(&pcns);
        let pcn_cell = |pcn: &str| {
            report
                .pcn_rows
                .iter()
                .find(|r| r.metric == "wemwbs-6m" && r.period == "2026-Q3" && r.pcn == pcn)
                .map(|r| (r.eligible, r.achieved, r.missing, r.pcn_name.clone()))
        };
        assert_eq!(
            pcn_cell("U11111"),
            Some((1, 1, 0, Some("North PCN".into())))
        );
        assert_eq!(pcn_cell(NO_PCN), Some((2, 0, 1, None)));
        assert!(
            report
                .to_csv()
                .contains("wemwbs-6m,2026-Q3,,2,0,1,,,no PCN\r\n")
        );
        assert!(
            report
                .detail_csv()
                .contains("wemwbs-6m,2026-Q3,K11111,U11111,r1,")
        );
        let fhir = report.to_fhir("https://x/fhir");
        let strata = fhir["entry"]
            .as_array()
            .and_then(|e| {
                e.iter()
                    .find(|e| e["resource"]["id"] == "wemwbs-6m-2026-q3")
            })
            .map(|e| e["resource"]["group"][0]["stratifier"][0]["stratum"].clone());
        assert_eq!(strata.and_then(|s| s.as_array().map(Vec::len)), Some(2));
    }

    #[test]
    fn csv_fields_are_quoted_and_inert() {
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("=cmd()"), "'=cmd()");
        assert_eq!(field("-3"), "-3");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
