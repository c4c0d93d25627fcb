//! `mappings/outbound.toml`: referral stages → Tasks, and the builders of Tasks and of outcome
//! Observations. An Observation is built from its measure's definition
//! ([`MeasureDefinition`]: code, items, scoring, profile), the only description of a measure.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use toml::Spanned;

use crate::fhir::identifiers::{NHS_NUMBER_SYSTEM, ODS_ORGANIZATION_SYSTEM};
use crate::fhirpath::{Expression, FhirPath};
use crate::located::{LocatedError, TomlText};
use crate::outcomes::definition::{
    CodingDef, DefinedScoreError, MEAN_PLACES, MeasureDefinition, Method,
};
use crate::referral::Stage;
use crate::referral::stage::STAGE_SYSTEM;

/// SNOMED CT's code system URI.
const SNOMED_SYSTEM: &str = "http://snomed.info/sct";

/// The codes of FHIR R4's required `task-status` value set.
const TASK_STATUSES: [&str; 12] = [
    "draft",
    "requested",
    "received",
    "accepted",
    "rejected",
    "ready",
    "cancelled",
    "in-progress",
    "on-hold",
    "failed",
    "completed",
    "entered-in-error",
];

/// The Task profile whose invariants (`sprig-task-*`) each stage mapping must keep. The
/// authored differential: its constraints are what the compiled profile checks.
const TASK_PROFILE: &str =
    include_str!("../../profiles/sprig/StructureDefinition-sprig-referral-task.json");

/// A coding: system, code and, optionally, display.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coding {
    /// The code system.
    pub system: String,
    /// The code.
    pub code: String,
    /// The display, when the code system's display is known.
    pub display: Option<String>,
}

impl Coding {
    fn to_json(&self) -> Value {
        let mut coding = Map::new();
        coding.insert("system".into(), json!(self.system));
        coding.insert("code".into(), json!(self.code));
        if let Some(display) = &self.display {
            coding.insert("display".into(), json!(display));
        }
        Value::Object(coding)
    }
}

/// How one stage is reported as a Task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageMapping {
    /// The stage.
    pub stage: Stage,
    /// `Task.status` (a FHIR `task-status` code).
    pub task_status: String,
    /// `Task.businessStatus`'s coding (a `sprig-referral-stage` code).
    pub business_status: Coding,
    /// Whether a Task at this stage needs a reason (`Task.statusReason`).
    pub status_reason_required: bool,
    /// The code GP systems file for the referral at this stage (SNOMED CT, from the Social
    /// Prescribing Information Standard), a second coding of `Task.businessStatus`.
    pub record_code: Option<Coding>,
}

/// The compiled outbound mapping. See `mappings/outbound.toml`.
#[derive(Debug, Clone)]
pub struct Outbound {
    task_profile: String,
    task_identifier_system: String,
    observation_identifier_system: String,
    /// In the order of [`Stage::ALL`].
    stages: Vec<StageMapping>,
}

/// Who a Task or Observation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatientRef<'a> {
    /// A Patient Sprig holds: `Patient/{id}`.
    Id(&'a str),
    /// A Patient only contained in the referral: a logical reference by NHS number.
    NhsNumber(&'a str),
}

impl PatientRef<'_> {
    fn to_json(self) -> Value {
        match self {
            PatientRef::Id(id) => json!({"reference": format!("Patient/{id}"), "type": "Patient"}),
            PatientRef::NhsNumber(number) => json!({
                "type": "Patient",
                "identifier": {"system": NHS_NUMBER_SYSTEM, "value": number},
            }),
        }
    }
}

/// The social prescribing service: Task.owner, Observation.performer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceRef<'a> {
    /// Its name (the reference's display).
    pub name: &'a str,
    /// Its ODS code, when it has one (the reference's identifier).
    pub ods_code: Option<&'a str>,
}

impl ServiceRef<'_> {
    fn to_json(self) -> Value {
        let mut reference = Map::new();
        reference.insert("type".into(), json!("Organization"));
        if let Some(code) = self.ods_code {
            reference.insert(
                "identifier".into(),
                json!({"system": ODS_ORGANIZATION_SYSTEM, "value": code}),
            );
        }
        reference.insert("display".into(), json!(self.name));
        Value::Object(reference)
    }
}

/// An outcome Observation a Task lists in `Task.output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskOutput<'a> {
    /// What it measures: its coding is `Task.output.type`, its Observation text the type's
    /// text.
    pub measure: &'a MeasureDefinition,
    /// The Observation's id: `Observation/{id}`.
    pub observation_id: &'a str,
}

/// What a Task is built from.
#[derive(Debug, Clone, Copy)]
pub struct TaskInput<'a> {
    /// Sprig's id for the Task: `Task.id` and the identifier's value, stable across updates.
    pub task_id: &'a str,
    /// Where the referral is.
    pub stage: Stage,
    /// Why (`Task.statusReason.text`); required at stages whose mapping says so.
    pub reason: Option<&'a str>,
    /// The stored ServiceRequest's id: `basedOn` and `focus`.
    pub referral_id: &'a str,
    /// The person: `Task.for`.
    pub patient: PatientRef<'a>,
    /// The referring practice's ODS code: `Task.requester` (left out when unknown).
    pub practice_ods_code: Option<&'a str>,
    /// The service: `Task.owner`.
    pub service: ServiceRef<'a>,
    /// When the referral was received as a Task (`Task.authoredOn`), a FHIR dateTime.
    pub authored_on: &'a str,
    /// When this stage was reached (`Task.lastModified`), a FHIR dateTime.
    pub last_modified: &'a str,
    /// A note for the referrer (`Task.note`).
    pub note: Option<&'a str>,
    /// The outcome Observations (`Task.output`).
    pub outputs: &'a [TaskOutput<'a>],
}

/// What an outcome Observation is built from.
#[derive(Debug, Clone, Copy)]
pub struct ObservationInput<'a> {
    /// Sprig's id for the Observation: `Observation.id` and the identifier's value.
    pub observation_id: &'a str,
    /// The measure, by its definition.
    pub measure: &'a MeasureDefinition,
    /// The answers, one per item in form order; scored by the definition when built.
    pub answers: &'a [i64],
    /// The stored ServiceRequest's id: `basedOn`.
    pub referral_id: &'a str,
    /// The person: `subject`.
    pub patient: PatientRef<'a>,
    /// When the answers were given (`effectiveDateTime`), a FHIR dateTime.
    pub effective: &'a str,
    /// The service: `performer`.
    pub service: ServiceRef<'a>,
}

/// A Task or Observation that cannot be built from the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceBuildError {
    /// The stage's mapping requires a reason and none was given.
    #[error(
        "a Task at stage '{stage}' needs a reason (Task.statusReason): the outbound mapping requires one"
    )]
    ReasonRequired {
        /// The stage.
        stage: Stage,
    },
    /// The answers cannot be scored.
    #[error(transparent)]
    Score(#[from] DefinedScoreError),
}

// ── The file ───────────────────────────────────────────────────────────────────────────────

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutboundFile {
    task: TaskSection,
    // Plain `String` keys and no `Spanned` around the maps: toml 0.8 cannot deserialise
    // either for tables made by dotted headers (`[stages.received]`). The span of each entry
    // starts at its header, which is where errors about the key point.
    stages: BTreeMap<String, Spanned<StageSpec>>,
    observation: ObservationSection,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskSection {
    profile: String,
    identifier_system: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ObservationSection {
    identifier_system: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StageSpec {
    task_status: Spanned<String>,
    business_status: Spanned<BusinessStatusSpec>,
    status_reason_required: Spanned<bool>,
    record_code: Option<Spanned<Coding>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BusinessStatusSpec {
    code: Spanned<String>,
    display: Option<String>,
}

// ── Loading ────────────────────────────────────────────────────────────────────────────────

/// The Task profile's invariants, compiled: (key, human text, expression).
fn task_invariants(engine: &FhirPath) -> Result<Vec<(String, String, Expression)>, String> {
    let profile: Value = serde_json::from_str(TASK_PROFILE).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let elements = profile["differential"]["element"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for element in elements.iter().filter(|e| e["path"] == "Task") {
        for constraint in element["constraint"].as_array().into_iter().flatten() {
            let (Some(key), Some(human), Some(expression)) = (
                constraint["key"].as_str(),
                constraint["human"].as_str(),
                constraint["expression"].as_str(),
            ) else {
                continue;
            };
            let compiled = engine
                .compile(expression)
                .map_err(|e| format!("{key}: {e}"))?;
            out.push((key.to_string(), human.to_string(), compiled));
        }
    }
    Ok(out)
}

impl Outbound {
    pub(super) fn load(source: &TomlText<'_>, engine: &FhirPath) -> Result<Outbound, LocatedError> {
        let file: OutboundFile = source.parse()?;
        let invariants = task_invariants(engine).map_err(|e| {
            source.error(
                0,
                format!("the Task profile's invariants cannot be read (a build defect): {e}"),
            )
        })?;

        let mut stages: BTreeMap<Stage, StageMapping> = BTreeMap::new();
        for (key, spec) in &file.stages {
            let stage = Stage::parse(key)
                .map_err(|e| source.error_at(&spec.span(), format!("[stages.{key}]: {e}")))?;
            let mapping = stage_mapping(source, stage, spec.get_ref(), &invariants)?;
            stages.insert(stage, mapping);
        }
        let stages = Stage::ALL
            .into_iter()
            .map(|stage| {
                stages.remove(&stage).ok_or_else(|| {
                    source.error_at(
                        &table_span(source, "stages"),
                        format!(
                            "stage '{stage}' has no Task mapping: add a [stages.{stage}] table"
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        Ok(Outbound {
            task_profile: file.task.profile,
            task_identifier_system: file.task.identifier_system,
            observation_identifier_system: file.observation.identifier_system,
            stages,
        })
    }
}

/// Where to point for a missing entry of a table: its first `[name.…]` header, else the
/// start of the file.
fn table_span(source: &TomlText<'_>, name: &str) -> Range<usize> {
    let header = format!("[{name}.");
    let mut offset = 0;
    for line in source.text.split_inclusive('\n') {
        if line.trim_start().starts_with(&header) || line.trim() == format!("[{name}]") {
            let start = offset + (line.len() - line.trim_start().len());
            return start..start + line.trim_end().len();
        }
        offset += line.len();
    }
    0..0
}

fn stage_mapping(
    source: &TomlText<'_>,
    stage: Stage,
    spec: &StageSpec,
    invariants: &[(String, String, Expression)],
) -> Result<StageMapping, LocatedError> {
    let status = spec.task_status.get_ref();
    if !TASK_STATUSES.contains(&status.as_str()) {
        return Err(source.error_at(
            &spec.task_status.span(),
            format!(
                "stage '{stage}': task_status '{status}' is not a FHIR task-status code; the codes are {}",
                TASK_STATUSES.join(", ")
            ),
        ));
    }
    let business = spec.business_status.get_ref();
    let code = business.code.get_ref();
    if Stage::parse(code).is_err() {
        return Err(source.error_at(
            &business.code.span(),
            format!(
                "stage '{stage}': business_status code '{code}' is not a sprig-referral-stage code; the codes are {}",
                Stage::codes()
            ),
        ));
    }
    let mapping = StageMapping {
        stage,
        task_status: status.clone(),
        business_status: Coding {
            system: STAGE_SYSTEM.to_string(),
            code: code.clone(),
            display: business.display.clone(),
        },
        status_reason_required: *spec.status_reason_required.get_ref(),
        record_code: match &spec.record_code {
            None => None,
            Some(coding) => {
                let c = coding.get_ref();
                let snomed_ok = c.system != SNOMED_SYSTEM
                    || (!c.code.is_empty()
                        && c.code.len() <= 18
                        && c.code.bytes().all(|b| b.is_ascii_digit()));
                if c.system.trim().is_empty() || !snomed_ok {
                    return Err(source.error_at(
                        &coding.span(),
                        format!(
                            "stage '{stage}': record_code needs a system and, in SNOMED CT, a code of digits only"
                        ),
                    ));
                }
                Some(c.clone())
            }
        },
    };
    // The profile's invariants decide, evaluated on the Task this mapping makes: without a
    // reason when none is required (so a `false` that sprig-task-1 contradicts is caught),
    // with one otherwise.
    let task = json!({
        "resourceType": "Task",
        "status": mapping.task_status,
        "businessStatus": {"coding": [mapping.business_status.to_json()]},
        "statusReason": if mapping.status_reason_required { json!({"text": "reason"}) } else { Value::Null },
    });
    let task = strip_nulls(task);
    for (key, human, invariant) in invariants {
        let holds = invariant
            .evaluate(&task, &task)
            .ok()
            .and_then(|r| r.as_boolean());
        if holds == Some(false) {
            let (span, setting) =
                if !mapping.status_reason_required && invariant.text().contains("statusReason") {
                    (
                        spec.status_reason_required.span(),
                        "status_reason_required = false".to_string(),
                    )
                } else {
                    (
                        spec.task_status.span(),
                        format!("task_status '{}'", mapping.task_status),
                    )
                };
            return Err(source.error_at(
                &span,
                format!(
                    "stage '{stage}': {setting} contradicts the Task profile's invariant {key}: {human}"
                ),
            ));
        }
    }
    Ok(mapping)
}

fn strip_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        other => other,
    }
}

/// The position of `stage` in [`Stage::ALL`] (a test checks the two agree).
fn stage_index(stage: Stage) -> usize {
    match stage {
        Stage::Received => 0,
        Stage::Accepted => 1,
        Stage::Contacted => 2,
        Stage::AssessmentDone => 3,
        Stage::PlanAgreed => 4,
        Stage::InSupport => 5,
        Stage::Completed => 6,
        Stage::Declined => 7,
        Stage::UnableToContact => 8,
        Stage::Withdrawn => 9,
    }
}

// ── Building ───────────────────────────────────────────────────────────────────────────────

fn reference(resource_type: &str, id: &str) -> Value {
    json!({"reference": format!("{resource_type}/{id}"), "type": resource_type})
}

impl Outbound {
    /// How `stage` is reported (every stage is mapped: load checks it).
    pub fn stage(&self, stage: Stage) -> &StageMapping {
        &self.stages[stage_index(stage)]
    }

    /// A Task meeting `sprig-referral-task` that reports the referral at `input.stage`. The
    /// same input gives the same Task, byte for byte. Fails only when the stage needs a
    /// reason and none is given.
    pub fn task(&self, input: &TaskInput<'_>) -> Result<Value, ResourceBuildError> {
        let mapping = self.stage(input.stage);
        let reason = input.reason.filter(|r| !r.trim().is_empty());
        if mapping.status_reason_required && reason.is_none() {
            return Err(ResourceBuildError::ReasonRequired { stage: input.stage });
        }
        let mut task = Map::new();
        task.insert("resourceType".into(), json!("Task"));
        task.insert("id".into(), json!(input.task_id));
        task.insert("meta".into(), json!({"profile": [self.task_profile]}));
        task.insert(
            "identifier".into(),
            json!([{"system": self.task_identifier_system, "value": input.task_id}]),
        );
        task.insert(
            "basedOn".into(),
            json!([reference("ServiceRequest", input.referral_id)]),
        );
        task.insert("status".into(), json!(mapping.task_status));
        if let Some(reason) = reason {
            task.insert("statusReason".into(), json!({"text": reason}));
        }
        let mut business = vec![mapping.business_status.to_json()];
        if let Some(code) = &mapping.record_code {
            business.push(code.to_json());
        }
        task.insert("businessStatus".into(), json!({ "coding": business }));
        task.insert("intent".into(), json!("order"));
        task.insert(
            "code".into(),
            json!({"coding": [{
                "system": "http://hl7.org/fhir/CodeSystem/task-code",
                "code": "fulfill",
                "display": "Fulfill the focal request",
            }]}),
        );
        task.insert(
            "focus".into(),
            reference("ServiceRequest", input.referral_id),
        );
        task.insert("for".into(), input.patient.to_json());
        task.insert("authoredOn".into(), json!(input.authored_on));
        task.insert("lastModified".into(), json!(input.last_modified));
        if let Some(code) = input.practice_ods_code {
            task.insert(
                "requester".into(),
                json!({"type": "Organization", "identifier": {"system": ODS_ORGANIZATION_SYSTEM, "value": code}}),
            );
        }
        task.insert("owner".into(), input.service.to_json());
        if let Some(note) = input.note.filter(|n| !n.trim().is_empty()) {
            task.insert("note".into(), json!([{"text": note}]));
        }
        if !input.outputs.is_empty() {
            let outputs: Vec<Value> = input
                .outputs
                .iter()
                .map(|output| {
                    let measure = output.measure;
                    let mut kind = Map::new();
                    kind.insert("coding".into(), json!([coding_json(&measure.coding)]));
                    if let Some(text) = &measure.observation.text {
                        kind.insert("text".into(), json!(text));
                    }
                    json!({
                        "type": Value::Object(kind),
                        "valueReference": reference("Observation", output.observation_id),
                    })
                })
                .collect();
            task.insert("output".into(), Value::Array(outputs));
        }
        Ok(Value::Object(task))
    }

    /// An Observation of `input.measure`, built from its definition: `meta.profile` its
    /// profile, `code` its coding, one component per item (the definition's item codes in
    /// its `item_system`), the score as the value (`valueInteger` for a sum, `valueQuantity`
    /// for a mean, none without a total) and, with a conversion, the converted score in a
    /// note. The answers are scored first; answers that cannot be scored are an error.
    pub fn observation(&self, input: &ObservationInput<'_>) -> Result<Value, ResourceBuildError> {
        let definition = input.measure;
        let score = definition.score(input.answers)?;
        let mut observation = Map::new();
        observation.insert("resourceType".into(), json!("Observation"));
        observation.insert("id".into(), json!(input.observation_id));
        observation.insert(
            "meta".into(),
            json!({"profile": [definition.observation.profile]}),
        );
        observation.insert(
            "identifier".into(),
            json!([{"system": self.observation_identifier_system, "value": input.observation_id}]),
        );
        observation.insert(
            "basedOn".into(),
            json!([reference("ServiceRequest", input.referral_id)]),
        );
        observation.insert("status".into(), json!("final"));
        observation.insert(
            "category".into(),
            json!([{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "survey",
                "display": "Survey",
            }]}]),
        );
        let mut code = Map::new();
        code.insert("coding".into(), json!([coding_json(&definition.coding)]));
        if let Some(text) = &definition.observation.text {
            code.insert("text".into(), json!(text));
        }
        observation.insert("code".into(), Value::Object(code));
        observation.insert("subject".into(), input.patient.to_json());
        observation.insert("effectiveDateTime".into(), json!(input.effective));
        observation.insert("performer".into(), json!([input.service.to_json()]));
        let sum: i64 = input.answers.iter().sum();
        match (definition.method, score.total) {
            (Method::Sum, Some(_)) => {
                observation.insert("valueInteger".into(), json!(sum));
            }
            (Method::Mean, Some(mean)) => {
                let value = mean
                    .round_dp(MEAN_PLACES)
                    .to_string()
                    .parse::<serde_json::Number>()
                    .map_or(Value::Null, Value::Number);
                observation.insert("valueQuantity".into(), json!({ "value": value }));
            }
            _ => {}
        }
        if let (Some(heading), Some(converted)) =
            (&definition.observation.conversion_note, score.converted)
        {
            observation.insert(
                "note".into(),
                json!([{"text": format!(
                    "{heading} {converted} (total {sum}, converted with the table in the {} definition)",
                    definition.name
                )}]),
            );
        }
        let components: Vec<Value> = definition
            .items
            .iter()
            .zip(input.answers)
            .map(|(item, value)| {
                let coding = CodingDef {
                    system: definition.observation.item_system.clone(),
                    code: item.code.clone(),
                    display: item.display.clone(),
                };
                json!({"code": {"coding": [coding_json(&coding)]}, "valueInteger": value})
            })
            .collect();
        observation.insert("component".into(), Value::Array(components));
        Ok(Value::Object(observation))
    }
}

/// A definition's coding as FHIR JSON (`display` only when given).
fn coding_json(coding: &CodingDef) -> Value {
    Coding {
        system: coding.system.clone(),
        code: coding.code.clone(),
        display: coding.display.clone(),
    }
    .to_json()
}
