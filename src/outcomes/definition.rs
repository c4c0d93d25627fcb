//! Outcome measures as data: one TOML file per measure (`outcomes/measures/*.toml`, compiled
//! in; a service's own folder through `outcomes_dir`). A definition says what the measure is
//! (its code, SNOMED CT where one exists), its items with their answer ranges and, where the
//! licence allows, their wording, how it is scored (sum, mean, none; a conversion table such
//! as SWEMWBS's metric score), what change is meaningful, and when it is measured again
//! (its follow-up schedule).
//!
//! Every mistake stops loading with a [`LocatedError`] (file, line, column, what is wrong).
//! The definition is the only scorer: recording (API and console), the Observation sent to
//! the GP (its code, components and value, built in `mapping::outbound` from
//! [`MeasureDefinition`]), the Observation's validation ([`MeasureDefinition::observation_issues`],
//! the definition's own rules on top of its profile) and the reports all read it. A service's
//! own measure is therefore handled exactly as the shipped ones are.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::located::{LocatedError, TomlText};

/// The measures every folder of definitions must define: stored outcomes and the shipped
/// metrics name them, and the console offers them first.
pub const REQUIRED: [&str; 4] = ["swemwbs", "wemwbs", "ons4", "ucla3"];

/// The profile an outcome Observation claims when its definition names none: the survey
/// Observation every measure meets (`profiles/sprig/StructureDefinition-sprig-outcome.json`);
/// the definition's own rules ([`MeasureDefinition::observation_issues`]) do the rest.
pub const GENERIC_PROFILE: &str =
    "https://sprig-gateway.org/fhir/StructureDefinition/sprig-outcome";

/// The measures Sprig ships, `(file name, text)`.
const SHIPPED: [(&str, &str); 4] = [
    (
        "outcomes/measures/swemwbs.toml",
        include_str!("../../outcomes/measures/swemwbs.toml"),
    ),
    (
        "outcomes/measures/wemwbs.toml",
        include_str!("../../outcomes/measures/wemwbs.toml"),
    ),
    (
        "outcomes/measures/ons4.toml",
        include_str!("../../outcomes/measures/ons4.toml"),
    ),
    (
        "outcomes/measures/ucla3.toml",
        include_str!("../../outcomes/measures/ucla3.toml"),
    ),
];

/// The shipped measure files, `(file name, text)`.
pub fn shipped_texts() -> &'static [(&'static str, &'static str)] {
    &SHIPPED
}

/// A coding: system, code, optional display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodingDef {
    /// The code system (`http://snomed.info/sct`, or the service's own).
    pub system: String,
    /// The code.
    pub code: String,
    /// The display, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

/// One answer a form offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerOption {
    /// The score the answer gives.
    pub value: i64,
    /// What the form shows, where the licence allows (else the value is shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// One question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    /// The item's code (the Observation component's code).
    pub code: String,
    /// Its wording, where the licence allows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The component code's display in the Observation (`SWEMWBS item 1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    /// Lowest score.
    pub min: i64,
    /// Highest score.
    pub max: i64,
    /// A high score is worse (ONS4's anxiety).
    pub reversed: bool,
    /// The options a form offers for it: the measure's `answers` within this item's range,
    /// or each whole number from `min` to `max`.
    pub answers: Vec<AnswerOption>,
}

/// How answers become a score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The sum of the items.
    Sum,
    /// The mean of the items (exact decimal).
    Mean,
    /// No total (the items are reported separately).
    None,
}

/// A published table converting a whole total to another score (SWEMWBS raw → metric).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conversion {
    /// The total the first value is for.
    pub from: i64,
    /// The converted scores, for `from`, `from + 1`, … in order.
    pub values: Vec<String>,
    #[serde(skip)]
    decimals: Vec<Decimal>,
}

impl Conversion {
    /// The converted score of `total`; `None` outside the table.
    pub fn convert(&self, total: i64) -> Option<Decimal> {
        let index = usize::try_from(total.checked_sub(self.from)?).ok()?;
        self.decimals.get(index).copied()
    }
}

/// A follow-up measurement after the baseline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowUpDef {
    /// Its key (`6m`), as metrics name it.
    pub key: String,
    /// What people call it (`6 months`).
    pub label: String,
    /// Months after the baseline.
    pub months: u32,
}

/// When a measure is taken: the baseline at assessment, then the follow-ups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// The follow-ups, in order of `months`.
    pub follow_ups: Vec<FollowUpDef>,
    /// Each measurement may be recorded this many weeks either side of its date.
    pub window_weeks: u32,
    /// A measurement is "due soon" this many days before its window opens.
    pub due_soon_days: u32,
}

/// How the measure becomes a FHIR Observation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservationDef {
    /// The profile the Observation claims (default [`GENERIC_PROFILE`]).
    #[serde(default = "generic_profile")]
    pub profile: String,
    /// `Observation.code.text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The code system of the item codes (`Observation.component.code`).
    pub item_system: String,
    /// The heading of the note carrying the converted score (`SWEMWBS metric score`); the
    /// note is added only when the measure has a conversion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversion_note: Option<String>,
}

fn generic_profile() -> String {
    GENERIC_PROFILE.to_string()
}

/// A measure, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeasureDefinition {
    /// Sprig's code (`swemwbs`): in the API and the record.
    pub code: String,
    /// Short name (`SWEMWBS`).
    pub name: String,
    /// Full name.
    pub title: String,
    /// What the questionnaire form says above the items (how to ask them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The Observation's code.
    pub coding: CodingDef,
    /// A higher total is better.
    pub higher_is_better: bool,
    /// The questions, in form order.
    pub items: Vec<Item>,
    /// How it is scored.
    pub method: Method,
    /// A conversion of the total, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversion: Option<Conversion>,
    /// The smallest change of the total counted as meaningful, as decimal text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meaningful_change: Option<String>,
    /// When it is measured.
    pub schedule: Schedule,
    /// The Observation it becomes.
    pub observation: ObservationDef,
    /// The file it came from.
    pub file: String,
    /// Where its `code` is in that file (line, column), for errors found after loading.
    #[serde(skip)]
    pub at: (usize, usize),
}

/// Answers that cannot be scored by a definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinedScoreError {
    /// Not one answer per item.
    #[error("{measure} has {expected} items, but {found} answers were given")]
    WrongCount {
        /// The measure's name.
        measure: String,
        /// Its items.
        expected: usize,
        /// Answers given.
        found: usize,
    },
    /// An answer outside its item's range.
    #[error("{measure} item {item} is {value}, but it is scored {min} to {max}")]
    OutOfRange {
        /// The measure's name.
        measure: String,
        /// The item, from 1.
        item: usize,
        /// The answer.
        value: i64,
        /// Lowest.
        min: i64,
        /// Highest.
        max: i64,
    },
}

/// A definition's score of some answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinedScore {
    /// The total (sum, or exact mean); `None` with [`Method::None`].
    pub total: Option<Decimal>,
    /// The converted total, when the measure has a conversion and the total is in it.
    pub converted: Option<Decimal>,
}

impl MeasureDefinition {
    /// Checks one answer per item, each in range, and scores them.
    pub fn score(&self, answers: &[i64]) -> Result<DefinedScore, DefinedScoreError> {
        if answers.len() != self.items.len() {
            return Err(DefinedScoreError::WrongCount {
                measure: self.name.clone(),
                expected: self.items.len(),
                found: answers.len(),
            });
        }
        for (i, (item, value)) in self.items.iter().zip(answers).enumerate() {
            if !(item.min..=item.max).contains(value) {
                return Err(DefinedScoreError::OutOfRange {
                    measure: self.name.clone(),
                    item: i + 1,
                    value: *value,
                    min: item.min,
                    max: item.max,
                });
            }
        }
        // In range: each item is bounded by the definition, so the sum cannot overflow for
        // any definition that loaded (ranges are checked to stay within ±1,000,000).
        let sum: i64 = answers.iter().sum();
        let total = match self.method {
            Method::Sum => Some(Decimal::from(sum)),
            Method::Mean => Decimal::from(sum).checked_div(Decimal::from(answers.len() as i64)),
            Method::None => None,
        };
        let converted = match (&self.conversion, self.method) {
            (Some(table), Method::Sum) => table.convert(sum),
            _ => None,
        };
        Ok(DefinedScore { total, converted })
    }

    /// The meaningful change, as a number.
    pub fn meaningful(&self) -> Option<Decimal> {
        self.meaningful_change
            .as_deref()
            .and_then(|t| t.parse().ok())
    }

    /// The follow-up with this key.
    pub fn follow_up(&self, key: &str) -> Option<&FollowUpDef> {
        self.schedule.follow_ups.iter().find(|f| f.key == key)
    }

    /// The lowest and highest sum of the items; `None` with [`Method::None`].
    pub fn sum_range(&self) -> Option<(i64, i64)> {
        (self.method != Method::None).then(|| {
            (
                self.items.iter().map(|i| i.min).sum(),
                self.items.iter().map(|i| i.max).sum(),
            )
        })
    }

    /// The score of answers whose items add up to `sum` (what the record keeps as the
    /// total): the sum itself, or the mean; `None` with [`Method::None`].
    pub fn score_of_sum(&self, sum: i64) -> Option<Decimal> {
        match self.method {
            Method::Sum => Some(Decimal::from(sum)),
            Method::Mean => Decimal::from(sum).checked_div(Decimal::from(self.items.len() as i64)),
            Method::None => None,
        }
    }

    /// What is wrong with `observation` by this definition's rules, beyond what its profile
    /// checks: `Observation.code` carries the definition's coding; one component per item,
    /// in order, coded in `observation.item_system` with the item's code, an integer within
    /// the item's range; the value is the definition's score of those items (`valueInteger`
    /// for a sum, `valueQuantity` for a mean, none without a total). Each problem names the
    /// element; nothing quotes the answers' meaning.
    pub fn observation_issues(&self, observation: &serde_json::Value) -> Vec<String> {
        let mut issues = Vec::new();
        let codings = observation["code"]["coding"].as_array();
        let coded = codings.is_some_and(|all| {
            all.iter().any(|c| {
                c["system"].as_str() == Some(self.coding.system.as_str())
                    && c["code"].as_str() == Some(self.coding.code.as_str())
            })
        });
        if !coded {
            issues.push(format!(
                "Observation.code: needs the coding {}|{} of measure '{}'",
                self.coding.system, self.coding.code, self.code
            ));
        }
        let components = observation["component"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if components.len() != self.items.len() {
            issues.push(format!(
                "Observation.component: measure '{}' has {} items, one component each; found {}",
                self.code,
                self.items.len(),
                components.len()
            ));
            return issues;
        }
        let mut answers = Vec::with_capacity(components.len());
        for (i, (item, component)) in self.items.iter().zip(components).enumerate() {
            let coding = &component["code"]["coding"][0];
            if coding["system"].as_str() != Some(self.observation.item_system.as_str())
                || coding["code"].as_str() != Some(item.code.as_str())
            {
                issues.push(format!(
                    "Observation.component[{i}].code: needs {}|{} (item {} of measure '{}')",
                    self.observation.item_system,
                    item.code,
                    i + 1,
                    self.code
                ));
            }
            match component["valueInteger"].as_i64() {
                Some(value) if (item.min..=item.max).contains(&value) => answers.push(value),
                _ => issues.push(format!(
                    "Observation.component[{i}].valueInteger: needs an integer from {} to {}",
                    item.min, item.max
                )),
            }
        }
        if !issues.is_empty() {
            return issues;
        }
        let sum: i64 = answers.iter().sum();
        let value_keys: Vec<&String> = observation
            .as_object()
            .map(|o| o.keys().filter(|k| k.starts_with("value")).collect())
            .unwrap_or_default();
        let expected = self.score_of_sum(sum);
        match (self.method, expected) {
            (Method::None, _) | (_, None) => {
                if !value_keys.is_empty() {
                    issues.push(format!(
                        "Observation.value[x]: measure '{}' has no total, so no value",
                        self.code
                    ));
                }
            }
            (Method::Sum, Some(total)) => {
                if observation["valueInteger"].as_i64().map(Decimal::from) != Some(total)
                    || value_keys.len() != 1
                {
                    issues.push(format!(
                        "Observation.valueInteger: needs the sum of the items, {total}"
                    ));
                }
            }
            (Method::Mean, Some(mean)) => {
                let rounded = mean.round_dp(MEAN_PLACES);
                let given = observation["valueQuantity"]["value"].as_f64();
                let agrees = given
                    .zip(rounded.to_f64())
                    .is_some_and(|(given, expected)| (given - expected).abs() < 1e-9);
                if !agrees || value_keys.len() != 1 {
                    issues.push(format!(
                        "Observation.valueQuantity.value: needs the mean of the items, {}",
                        mean.round_dp(MEAN_PLACES)
                    ));
                }
            }
        }
        issues
    }
}

/// Decimal places of a mean score in an Observation (`valueQuantity.value`).
pub const MEAN_PLACES: u32 = 2;

// ── The file ───────────────────────────────────────────────────────────────────────────────

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MeasureFile {
    code: Spanned<String>,
    name: String,
    title: String,
    hint: Option<String>,
    coding: CodingDef,
    higher_is_better: bool,
    #[serde(default)]
    answers: Vec<Spanned<AnswerOption>>,
    items: Spanned<Vec<Spanned<ItemSpec>>>,
    scoring: ScoringSpec,
    change: Option<ChangeSpec>,
    schedule: Spanned<ScheduleSpec>,
    observation: ObservationDef,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemSpec {
    code: String,
    min: i64,
    max: i64,
    text: Option<String>,
    display: Option<String>,
    #[serde(default)]
    reversed: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoringSpec {
    method: Spanned<Method>,
    conversion: Option<Spanned<ConversionSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConversionSpec {
    from: i64,
    values: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeSpec {
    meaningful: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleSpec {
    follow_ups: Vec<Spanned<FollowUpDef>>,
    window_weeks: Spanned<u32>,
    due_soon_days: u32,
}

/// Item scores must stay within this, so totals of any definition fit easily.
const SCORE_LIMIT: i64 = 1_000_000;

fn decimal(
    source: &TomlText<'_>,
    text: &Spanned<String>,
    what: &str,
) -> Result<Decimal, LocatedError> {
    text.get_ref().trim().parse::<Decimal>().map_err(|_| {
        source.error_at(
            &text.span(),
            format!(
                "{what} '{}' is not a decimal number (write it as text: \"1.5\")",
                text.get_ref()
            ),
        )
    })
}

/// Loads and checks one measure file.
pub fn load(source: &TomlText<'_>) -> Result<MeasureDefinition, LocatedError> {
    let file: MeasureFile = source.parse()?;
    let code = file.code.get_ref().clone();
    let code_ok = !code.is_empty()
        && code.len() <= 64
        && code
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !code_ok {
        return Err(source.error_at(
            &file.code.span(),
            format!("code '{code}' must be 1 to 64 lower-case letters, digits and '-'"),
        ));
    }
    let mut options: Vec<AnswerOption> = Vec::new();
    for answer in &file.answers {
        if options.iter().any(|o| o.value == answer.get_ref().value) {
            return Err(source.error_at(
                &answer.span(),
                format!(
                    "measure '{code}': answer value {} is listed twice",
                    answer.get_ref().value
                ),
            ));
        }
        options.push(answer.get_ref().clone());
    }
    let specs = file.items.get_ref();
    if specs.is_empty() {
        return Err(source.error_at(&file.items.span(), format!("measure '{code}' has no items")));
    }
    let mut items: Vec<Item> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let item = spec.get_ref();
        if item.min > item.max {
            return Err(source.error_at(
                &spec.span(),
                format!(
                    "measure '{code}' item {}: min {} is above max {}",
                    i + 1,
                    item.min,
                    item.max
                ),
            ));
        }
        if item.min < -SCORE_LIMIT || item.max > SCORE_LIMIT {
            return Err(source.error_at(
                &spec.span(),
                format!(
                    "measure '{code}' item {}: scores must be within ±{SCORE_LIMIT}",
                    i + 1
                ),
            ));
        }
        if items.iter().any(|m| m.code == item.code) {
            return Err(source.error_at(
                &spec.span(),
                format!(
                    "measure '{code}' item {}: code '{}' is used twice",
                    i + 1,
                    item.code
                ),
            ));
        }
        let answers: Vec<AnswerOption> = if options.is_empty() {
            (item.min..=item.max.min(item.min + 100))
                .map(|value| AnswerOption { value, label: None })
                .collect()
        } else {
            let within: Vec<AnswerOption> = options
                .iter()
                .filter(|o| (item.min..=item.max).contains(&o.value))
                .cloned()
                .collect();
            if within.len() as i64 != item.max - item.min + 1 {
                return Err(source.error_at(
                    &spec.span(),
                    format!(
                        "measure '{code}' item {}: the answers list does not offer every score from {} to {}",
                        i + 1,
                        item.min,
                        item.max
                    ),
                ));
            }
            within
        };
        items.push(Item {
            code: item.code.clone(),
            text: item.text.clone(),
            display: item.display.clone(),
            min: item.min,
            max: item.max,
            reversed: item.reversed,
            answers,
        });
    }
    let method = *file.scoring.method.get_ref();
    let conversion = match &file.scoring.conversion {
        None => None,
        Some(spec) => {
            if method != Method::Sum {
                return Err(source.error_at(
                    &spec.span(),
                    format!("measure '{code}': a conversion table converts a sum; the method is not \"sum\""),
                ));
            }
            let table = spec.get_ref();
            let low: i64 = items.iter().map(|i| i.min).sum();
            let high: i64 = items.iter().map(|i| i.max).sum();
            let count = (high - low + 1) as usize;
            if table.from != low || table.values.len() != count {
                return Err(source.error_at(
                    &spec.span(),
                    format!(
                        "measure '{code}': the conversion must list one value for each total from {low} to {high} ({count} values, from = {low}); it has {} from {}",
                        table.values.len(),
                        table.from
                    ),
                ));
            }
            let decimals = table
                .values
                .iter()
                .map(|v| decimal(source, v, "conversion value"))
                .collect::<Result<Vec<_>, _>>()?;
            Some(Conversion {
                from: table.from,
                values: table
                    .values
                    .iter()
                    .map(|v| v.get_ref().trim().to_string())
                    .collect(),
                decimals,
            })
        }
    };
    let meaningful_change = match &file.change {
        None => None,
        Some(change) => {
            let value = decimal(source, &change.meaningful, "meaningful change")?;
            if value <= Decimal::ZERO {
                return Err(source.error_at(
                    &change.meaningful.span(),
                    format!("measure '{code}': the meaningful change must be above 0 (the direction is higher_is_better)"),
                ));
            }
            if method == Method::None {
                return Err(source.error_at(
                    &change.meaningful.span(),
                    format!("measure '{code}': a meaningful change needs a total; the method is \"none\""),
                ));
            }
            Some(value.to_string())
        }
    };
    let schedule = file.schedule.get_ref();
    let mut follow_ups: Vec<FollowUpDef> = Vec::new();
    for f in &schedule.follow_ups {
        let def = f.get_ref();
        if def.months == 0 || def.months > 120 {
            return Err(source.error_at(
                &f.span(),
                format!("measure '{code}' follow-up '{}': months must be 1 to 120 (the baseline is month 0)", def.key),
            ));
        }
        if follow_ups.iter().any(|o| o.key == def.key) {
            return Err(source.error_at(
                &f.span(),
                format!(
                    "measure '{code}': follow-up key '{}' is used twice",
                    def.key
                ),
            ));
        }
        if follow_ups.last().is_some_and(|o| o.months >= def.months) {
            return Err(source.error_at(
                &f.span(),
                format!(
                    "measure '{code}' follow-up '{}': follow-ups must be in increasing months",
                    def.key
                ),
            ));
        }
        follow_ups.push(def.clone());
    }
    let window_weeks = *schedule.window_weeks.get_ref();
    // Windows must not overlap, or one measurement would count for two follow-ups.
    let shortest_gap = std::iter::once(0)
        .chain(follow_ups.iter().map(|f| f.months))
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1] - w[0])
        .min();
    if window_weeks == 0 || shortest_gap.is_some_and(|months| window_weeks * 2 * 7 >= months * 28) {
        return Err(source.error_at(
            &schedule.window_weeks.span(),
            format!("measure '{code}': window_weeks {window_weeks} must be at least 1 and leave the follow-ups' windows apart"),
        ));
    }
    let definition = MeasureDefinition {
        code,
        name: file.name,
        title: file.title,
        hint: file.hint,
        coding: file.coding,
        higher_is_better: file.higher_is_better,
        items,
        method,
        conversion,
        meaningful_change,
        schedule: Schedule {
            follow_ups,
            window_weeks,
            due_soon_days: schedule.due_soon_days,
        },
        observation: file.observation,
        file: source.file.to_string(),
        at: {
            let here = source.error_at(&file.code.span(), String::new());
            (here.line, here.column)
        },
    };
    Ok(definition)
}

/// The measures in force, by code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalogue {
    measures: BTreeMap<String, MeasureDefinition>,
}

impl Catalogue {
    /// The measures shipped in `outcomes/measures/`.
    pub fn shipped() -> Result<Catalogue, LocatedError> {
        Catalogue::from_texts(&SHIPPED.map(|(f, t)| (f.to_string(), t.to_string())))
    }

    /// Measures from `(file name, text)` pairs. Every shipped measure must be defined (the
    /// record and the Observation mapping know them); a code defined twice is a mistake.
    pub fn from_texts(files: &[(String, String)]) -> Result<Catalogue, LocatedError> {
        let mut measures: BTreeMap<String, MeasureDefinition> = BTreeMap::new();
        for (name, text) in files {
            let source = TomlText::new(name, text);
            let definition = load(&source)?;
            if let Some(earlier) = measures.get(&definition.code) {
                return Err(source.error(
                    0,
                    format!(
                        "measure '{}' is already defined in {}",
                        definition.code, earlier.file
                    ),
                ));
            }
            measures.insert(definition.code.clone(), definition);
        }
        if let Some(missing) = REQUIRED.iter().find(|m| !measures.contains_key(**m)) {
            let file = files
                .first()
                .map_or("outcomes/measures", |(n, _)| n.as_str());
            return Err(TomlText::new(file, "").error(
                0,
                format!(
                    "measure '{missing}' is not defined: every folder of measures must define swemwbs, wemwbs, ons4 and ucla3 (copy them from outcomes/measures/)",
                ),
            ));
        }
        Ok(Catalogue { measures })
    }

    /// The measure with this code.
    pub fn get(&self, code: &str) -> Option<&MeasureDefinition> {
        self.measures.get(code)
    }

    /// Every measure, by code.
    pub fn iter(&self) -> impl Iterator<Item = &MeasureDefinition> {
        self.measures.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<MeasureDefinition, LocatedError> {
        load(&TomlText::new("custom.toml", text))
    }

    const CUSTOM: &str = r#"
code = "mood-5"
name = "MOOD-5"
title = "A five-item mood scale of the service's own"
coding = { system = "https://example.org/measures", code = "mood-5" }
higher_is_better = true
items = [
  { code = "a", min = 0, max = 4, text = "How are you?" },
  { code = "b", min = 0, max = 4 },
]
[scoring]
method = "mean"
[change]
meaningful = "0.5"
[schedule]
follow_ups = [{ key = "3m", label = "3 months", months = 3 }]
window_weeks = 2
due_soon_days = 7
[observation]
item_system = "https://example.org/measures/mood-5-item"
"#;

    /// The published SWEMWBS raw-to-metric conversion, raw 7 to 35.
    const SWEMWBS_PUBLISHED: [&str; 29] = [
        "7.00", "9.51", "11.25", "12.40", "13.33", "14.08", "14.75", "15.32", "15.84", "16.36",
        "16.88", "17.43", "17.98", "18.59", "19.25", "19.98", "20.73", "21.54", "22.35", "23.21",
        "24.11", "25.03", "26.02", "27.03", "28.13", "29.31", "30.70", "32.55", "35.00",
    ];

    #[test]
    fn the_shipped_measures_score_as_published() {
        let catalogue = Catalogue::shipped().expect("the shipped measures load");
        // Items, ranges, totals and direction, as the instruments publish them.
        for (code, items, min, max, total, higher_is_better) in [
            ("swemwbs", 7, 1, 5, Some((7, 35)), true),
            ("wemwbs", 14, 1, 5, Some((14, 70)), true),
            ("ons4", 4, 0, 10, None, true),
            ("ucla3", 3, 1, 3, Some((3, 9)), false),
        ] {
            let def = catalogue.get(code).expect("defined");
            assert_eq!(def.items.len(), items, "{code}");
            assert!(
                def.items.iter().all(|i| (i.min, i.max) == (min, max)),
                "{code}"
            );
            assert_eq!(def.sum_range(), total, "{code}");
            assert_eq!(def.higher_is_better, higher_is_better, "{code}");
            let low = def.score(&vec![min; items]).expect("lowest");
            assert_eq!(low.total, total.map(|(l, _)| Decimal::from(l)), "{code}");
        }
        // ONS4's anxiety item alone is reversed: why ONS4 has no total.
        let ons4 = catalogue.get("ons4").expect("ons4");
        let reversed: Vec<&str> = ons4
            .items
            .iter()
            .filter(|i| i.reversed)
            .map(|i| i.code.as_str())
            .collect();
        assert_eq!(reversed, ["anxious-yesterday"]);
        // Every entry of the published SWEMWBS table, reached by scoring answers.
        let swemwbs = catalogue.get("swemwbs").expect("swemwbs");
        for (i, published) in SWEMWBS_PUBLISHED.iter().enumerate() {
            let raw = 7 + i as i64;
            let mut answers = [1i64; 7];
            let mut left = raw - 7;
            for a in &mut answers {
                let add = left.min(4);
                *a += add;
                left -= add;
            }
            let score = swemwbs.score(&answers).expect("valid");
            assert_eq!(score.total, Some(Decimal::from(raw)));
            let converted = score.converted.expect("in the table");
            // Exact to the hundredth, as published (`7.00`, not `7`).
            assert_eq!(converted.to_string(), *published, "raw {raw}");
        }
        let swemwbs = catalogue.get("swemwbs").expect("swemwbs");
        assert_eq!(swemwbs.coding.code, "718466001");
        assert_eq!(
            swemwbs.score(&[2; 7]).expect("valid").converted,
            Some(Decimal::new(1532, 2))
        );
        let ons4 = catalogue.get("ons4").expect("ons4");
        assert!(ons4.items[3].reversed);
        assert_eq!(ons4.items[0].answers.len(), 11);
        assert!(
            ons4.items[0]
                .text
                .as_deref()
                .is_some_and(|t| t.contains("satisfied"))
        );
        // Licensed wording is not shipped.
        assert!(swemwbs.items.iter().all(|i| i.text.is_none()));
    }

    #[test]
    fn a_custom_measure_scores_by_its_definition() {
        let def = one(CUSTOM).expect("loads");
        let score = def.score(&[1, 2]).expect("valid");
        assert_eq!(score.total, Some(Decimal::new(15, 1)));
        assert_eq!(def.meaningful(), Some(Decimal::new(5, 1)));
        assert_eq!(def.items[1].answers.len(), 5);
        assert_eq!(
            def.score(&[1, 5]).expect_err("5 > 4").to_string(),
            "MOOD-5 item 2 is 5, but it is scored 0 to 4"
        );
        assert!(matches!(
            def.score(&[1]),
            Err(DefinedScoreError::WrongCount { .. })
        ));
    }

    #[test]
    fn mistakes_say_where_and_what() {
        let cases = [
            (
                CUSTOM.replace("max = 4, text", "max = -1, text"),
                "custom.toml:8:3:",
                "min 0 is above max -1",
            ),
            (
                CUSTOM.replace("\"0.5\"", "\"half\""),
                "custom.toml:14:14:",
                "not a decimal",
            ),
            (
                CUSTOM.replace("months = 3", "months = 0"),
                "custom.toml:16:15:",
                "months must be 1 to 120",
            ),
            (
                CUSTOM.replace("window_weeks = 2", "window_weeks = 7"),
                "custom.toml:17:16:",
                "apart",
            ),
            (
                CUSTOM.replace("code = \"b\"", "code = \"a\""),
                "custom.toml:9:3:",
                "used twice",
            ),
            (
                CUSTOM.replace("method = \"mean\"", "method = \"median\""),
                "custom.toml:12:10:",
                "unknown variant",
            ),
            (
                CUSTOM.replace("higher_is_better", "better"),
                "custom.toml:6:1:",
                "unknown field",
            ),
            (
                CUSTOM.replace("code = \"mood-5\"\n", "code = \"Mood 5\"\n"),
                "custom.toml:2:8:",
                "lower-case",
            ),
        ];
        for (text, at, what) in cases {
            let err = one(&text).expect_err(what).to_string();
            assert!(
                err.starts_with(at) && err.contains(what),
                "{at} {what}: {err}"
            );
        }
        // A conversion table must cover every total.
        let table = Catalogue::shipped_text("swemwbs").replace("\"9.51\", ", "");
        let err = one(&table).expect_err("a value short").to_string();
        assert!(
            err.contains("one value for each total from 7 to 35"),
            "{err}"
        );
    }

    #[test]
    fn every_shipped_measure_must_be_defined() {
        let files = vec![("a.toml".to_string(), CUSTOM.to_string())];
        let err = Catalogue::from_texts(&files)
            .expect_err("no swemwbs")
            .to_string();
        assert!(err.contains("'swemwbs' is not defined"), "{err}");
        let mut files: Vec<(String, String)> = SHIPPED
            .iter()
            .map(|(f, t)| (f.to_string(), t.to_string()))
            .collect();
        files.push(("custom.toml".into(), CUSTOM.into()));
        let catalogue = Catalogue::from_texts(&files).expect("custom added");
        assert!(catalogue.get("mood-5").is_some());
        files.push(("again.toml".into(), CUSTOM.into()));
        let err = Catalogue::from_texts(&files)
            .expect_err("twice")
            .to_string();
        assert!(
            err.starts_with("again.toml:1:1:") && err.contains("already defined in custom.toml"),
            "{err}"
        );
    }

    impl Catalogue {
        fn shipped_text(code: &str) -> String {
            SHIPPED
                .iter()
                .find(|(f, _)| f.ends_with(&format!("/{code}.toml")))
                .map(|(_, t)| t.to_string())
                .expect("shipped")
        }
    }
}
