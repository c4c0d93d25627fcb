//! `mappings/inbound.toml`: a FHIR referral → the internal referral record.
//!
//! Each field's expression is evaluated with `%referral`, `%patient`, `%requester`,
//! `%practice`, `%consent`, `%message`, `%bundle`, `%sender` and `%end_user_organisation`
//! (found by `intake`), plus the file's own `[variables]`. A required field may say in
//! `missing` where it looked; the shipped file refuses a referral with no practice ODS code
//! from the requester's practice, the message's sender or the declared organisation. The
//! result is the record's own type (`referral::record::MappedReferral`), so the workflow
//! stores what the mapping returns without a copy.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use super::expression::{ENGINE_VARIABLES, compile_expression};
use crate::fhir::reference::BundleIndex;
use crate::fhir::{Issue, IssueType};
use crate::fhirpath::{Collection, Environment, Expression, FhirPath, Item, Scope};
use crate::located::{LocatedError, TomlText};
use crate::referral::record::{
    BusinessIdentifier, MappedReferral, PatientContact, Reason, ReferralFields,
};

/// The variables the gateway supplies, in the order of [`InboundResources`].
const GATEWAY_VARIABLES: [&str; 9] = [
    "referral",
    "patient",
    "requester",
    "practice",
    "consent",
    "message",
    "bundle",
    "sender",
    "end_user_organisation",
];

/// The resources a referral is mapped from, found by the gateway before mapping (contained
/// resources, Bundle entries or stored resources). Each becomes a `%variable` of the same
/// name; `None` is an empty collection.
#[derive(Debug, Clone, Copy)]
pub struct InboundResources<'a> {
    /// The ServiceRequest: `%referral`, `%resource` and the focus.
    pub referral: &'a Value,
    /// `%patient`: the Patient.
    pub patient: Option<&'a Value>,
    /// `%requester`: what `ServiceRequest.requester` points at (PractitionerRole,
    /// Practitioner or Organization).
    pub requester: Option<&'a Value>,
    /// `%practice`: the GP practice Organization the requester gives: the requester
    /// itself, a PractitionerRole's organization, or the organization of a Practitioner's
    /// PractitionerRole in the submission.
    pub practice: Option<&'a Value>,
    /// `%consent`: the Consent in `supportingInfo`.
    pub consent: Option<&'a Value>,
    /// `%message`: the MessageHeader, for a referral that came as a message.
    pub message: Option<&'a Value>,
    /// `%bundle`: the Bundle the referral came in; also the evaluation's `Scope::bundle`,
    /// so `resolve()` finds its entries.
    pub bundle: Option<&'a Value>,
    /// `%sender`: the Organization `MessageHeader.sender` names, for a message.
    pub sender: Option<&'a Value>,
    /// `%end_user_organisation`: the Organization the HTTP request declared (BaRS's
    /// `NHSD-End-User-Organisation` header), when the HTTP layer passes one.
    pub end_user_organisation: Option<&'a Value>,
}

// ── The file ───────────────────────────────────────────────────────────────────────────────

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InboundFile {
    #[serde(default)]
    variables: BTreeMap<Spanned<String>, Spanned<String>>,
    referral_identifier_system: Spanned<ScalarSpec>,
    referral_identifier_value: Spanned<ScalarSpec>,
    status: Spanned<ScalarSpec>,
    intent: Spanned<ScalarSpec>,
    priority: Spanned<ScalarSpec>,
    authored_on: Spanned<ScalarSpec>,
    nhs_number: Spanned<ScalarSpec>,
    given_name: Spanned<ScalarSpec>,
    family_name: Spanned<ScalarSpec>,
    birth_date: Spanned<ScalarSpec>,
    phone: Spanned<ScalarSpec>,
    email: Spanned<ScalarSpec>,
    address: Spanned<ScalarSpec>,
    postcode: Spanned<ScalarSpec>,
    practice_ods_code: Spanned<ScalarSpec>,
    practice_name: Spanned<ScalarSpec>,
    referrer_name: Spanned<ScalarSpec>,
    referrer_identifier: Spanned<ScalarSpec>,
    reasons: Spanned<ReasonsSpec>,
    consent_status: Spanned<ScalarSpec>,
    consent_date: Spanned<ScalarSpec>,
    notes: Spanned<ListSpec>,
    reply_to: Spanned<ScalarSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScalarSpec {
    expression: Spanned<String>,
    required: Option<Spanned<bool>>,
    missing: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListSpec {
    select: Spanned<String>,
    required: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonsSpec {
    select: Spanned<String>,
    required: Option<Spanned<bool>>,
    system: Spanned<String>,
    code: Spanned<String>,
    display: Spanned<String>,
    text: Spanned<String>,
}

// ── Compiled ───────────────────────────────────────────────────────────────────────────────

/// One compiled expression, with what messages need to name it.
#[derive(Debug, Clone)]
struct Mapped {
    /// `status`, `reasons.code`.
    field: &'static str,
    expression: Expression,
    required: bool,
    /// For a required field: what the refusal adds when the field finds nothing (where
    /// the mapping looked).
    missing: Option<String>,
}

/// The compiled inbound mapping. See `mappings/inbound.toml`.
#[derive(Debug, Clone)]
pub struct Inbound {
    file: String,
    /// Which of [`GATEWAY_VARIABLES`] some expression reads: only those are copied into the
    /// environment (a large Bundle is copied only if a mapping reads `%bundle`; `resolve()`
    /// reads it in place, as `Scope::bundle`).
    used: [bool; GATEWAY_VARIABLES.len()],
    variables: Vec<(String, Expression)>,
    referral_identifier_system: Mapped,
    referral_identifier_value: Mapped,
    status: Mapped,
    intent: Mapped,
    priority: Mapped,
    authored_on: Mapped,
    nhs_number: Mapped,
    given_name: Mapped,
    family_name: Mapped,
    birth_date: Mapped,
    phone: Mapped,
    email: Mapped,
    address: Mapped,
    postcode: Mapped,
    practice_ods_code: Mapped,
    practice_name: Mapped,
    referrer_name: Mapped,
    referrer_identifier: Mapped,
    reasons: Mapped,
    reason_system: Mapped,
    reason_code: Mapped,
    reason_display: Mapped,
    reason_text: Mapped,
    consent_status: Mapped,
    consent_date: Mapped,
    notes: Mapped,
    reply_to: Mapped,
}

/// Fields the record cannot hold without: `required` is implied and cannot be false.
const ALWAYS_REQUIRED: [&str; 3] = [
    "referral_identifier_system",
    "referral_identifier_value",
    "status",
];

impl Inbound {
    pub(super) fn load(source: &TomlText<'_>, engine: &FhirPath) -> Result<Inbound, LocatedError> {
        let file: InboundFile = source.parse()?;

        // Variables, in the order written, each seeing the gateway's and the earlier ones.
        let mut in_order: Vec<_> = file.variables.iter().collect();
        in_order.sort_by_key(|(name, _)| name.span().start);
        let mut known: Vec<&str> = GATEWAY_VARIABLES.to_vec();
        let mut variables = Vec::new();
        for (name, expression) in in_order {
            let text = name.get_ref().as_str();
            let valid = text.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(source.error_at(
                    &name.span(),
                    format!(
                        "variable name '{text}': use letters, digits and '_', starting with a letter"
                    ),
                ));
            }
            if known.contains(&text) || ENGINE_VARIABLES.contains(&text) {
                return Err(source.error_at(
                    &name.span(),
                    format!(
                        "variable %{text} is already defined (by the gateway, FHIRPath or above); choose another name"
                    ),
                ));
            }
            let compiled = compile_expression(
                source,
                engine,
                expression,
                &format!("variables.{text}"),
                &known,
            )?;
            variables.push((text.to_string(), compiled));
            known.push(text);
        }

        let scalar = |field: &'static str, spec: &Spanned<ScalarSpec>| {
            let spec = spec.get_ref();
            let required = required(source, field, spec.required.as_ref())?;
            if let Some(missing) = &spec.missing
                && !required
            {
                return Err(source.error_at(
                    &missing.span(),
                    format!(
                        "{field}: `missing` explains a refusal, which only a required field makes; add `required = true` or remove `missing`"
                    ),
                ));
            }
            Ok::<_, LocatedError>(Mapped {
                field,
                expression: compile_expression(source, engine, &spec.expression, field, &known)?,
                required,
                missing: spec.missing.as_ref().map(|m| m.get_ref().clone()),
            })
        };
        let part = |field: &'static str, expression: &Spanned<String>| {
            Ok::<_, LocatedError>(Mapped {
                field,
                expression: compile_expression(source, engine, expression, field, &known)?,
                required: false,
                missing: None,
            })
        };
        let reasons = file.reasons.get_ref();
        let notes = file.notes.get_ref();
        let mut inbound = Inbound {
            file: source.file.to_string(),
            used: [false; GATEWAY_VARIABLES.len()],
            referral_identifier_system: scalar(
                "referral_identifier_system",
                &file.referral_identifier_system,
            )?,
            referral_identifier_value: scalar(
                "referral_identifier_value",
                &file.referral_identifier_value,
            )?,
            status: scalar("status", &file.status)?,
            intent: scalar("intent", &file.intent)?,
            priority: scalar("priority", &file.priority)?,
            authored_on: scalar("authored_on", &file.authored_on)?,
            nhs_number: scalar("nhs_number", &file.nhs_number)?,
            given_name: scalar("given_name", &file.given_name)?,
            family_name: scalar("family_name", &file.family_name)?,
            birth_date: scalar("birth_date", &file.birth_date)?,
            phone: scalar("phone", &file.phone)?,
            email: scalar("email", &file.email)?,
            address: scalar("address", &file.address)?,
            postcode: scalar("postcode", &file.postcode)?,
            practice_ods_code: scalar("practice_ods_code", &file.practice_ods_code)?,
            practice_name: scalar("practice_name", &file.practice_name)?,
            referrer_name: scalar("referrer_name", &file.referrer_name)?,
            referrer_identifier: scalar("referrer_identifier", &file.referrer_identifier)?,
            reasons: Mapped {
                field: "reasons",
                expression: compile_expression(
                    source,
                    engine,
                    &reasons.select,
                    "reasons.select",
                    &known,
                )?,
                required: required(source, "reasons", reasons.required.as_ref())?,
                missing: None,
            },
            reason_system: part("reasons.system", &reasons.system)?,
            reason_code: part("reasons.code", &reasons.code)?,
            reason_display: part("reasons.display", &reasons.display)?,
            reason_text: part("reasons.text", &reasons.text)?,
            consent_status: scalar("consent_status", &file.consent_status)?,
            consent_date: scalar("consent_date", &file.consent_date)?,
            notes: Mapped {
                field: "notes",
                expression: compile_expression(
                    source,
                    engine,
                    &notes.select,
                    "notes.select",
                    &known,
                )?,
                required: required(source, "notes", notes.required.as_ref())?,
                missing: None,
            },
            reply_to: scalar("reply_to", &file.reply_to)?,
            variables,
        };
        let read: Vec<String> = inbound
            .expressions()
            .flat_map(|expression| expression.variables())
            .collect();
        for (used, name) in inbound.used.iter_mut().zip(GATEWAY_VARIABLES) {
            *used = read.iter().any(|r| r == name);
        }
        Ok(inbound)
    }

    /// Every compiled expression.
    fn expressions(&self) -> impl Iterator<Item = &Expression> {
        let fields = [
            &self.referral_identifier_system,
            &self.referral_identifier_value,
            &self.status,
            &self.intent,
            &self.priority,
            &self.authored_on,
            &self.nhs_number,
            &self.given_name,
            &self.family_name,
            &self.birth_date,
            &self.phone,
            &self.email,
            &self.address,
            &self.postcode,
            &self.practice_ods_code,
            &self.practice_name,
            &self.referrer_name,
            &self.referrer_identifier,
            &self.reasons,
            &self.reason_system,
            &self.reason_code,
            &self.reason_display,
            &self.reason_text,
            &self.consent_status,
            &self.consent_date,
            &self.notes,
            &self.reply_to,
        ];
        self.variables
            .iter()
            .map(|(_, expression)| expression)
            .chain(fields.into_iter().map(|mapped| &mapped.expression))
    }

    /// Maps a referral to the internal record. Every problem is an [`Issue`] (the caller
    /// answers 422 with them): a required field that maps to nothing (`required`,
    /// `mapping-required-field`), a single-value field that maps to several values or to an
    /// element rather than a primitive (`structure`, `mapping-multiple-values`,
    /// `mapping-not-primitive`), an expression that cannot be evaluated on this input
    /// (`invalid`, `mapping-evaluation-failed`). Each names the field and the mapping
    /// expression, which is also the issue's `expression`.
    pub fn apply(&self, input: &InboundResources<'_>) -> Result<MappedReferral, Vec<Issue>> {
        let mut environment = Environment::new();
        let given = [
            Some(input.referral),
            input.patient,
            input.requester,
            input.practice,
            input.consent,
            input.message,
            input.bundle,
            input.sender,
            input.end_user_organisation,
        ];
        for ((name, value), used) in GATEWAY_VARIABLES.iter().zip(given).zip(self.used) {
            environment.set(*name, collection_of(value.filter(|_| used)));
        }
        let mut run = Run {
            inbound: self,
            input,
            bundle: input.bundle.map(BundleIndex::new),
            issues: Vec::new(),
        };
        for (name, expression) in &self.variables {
            // A variable that fails is empty; the failure is reported once, here.
            let value = run
                .evaluate_named(&format!("variables.{name}"), expression, None, &environment)
                .unwrap_or_default();
            environment.set(name.clone(), value);
        }
        let env = &environment;

        let mut reasons = Vec::new();
        for item in run.list(&self.reasons, env) {
            let (focus, focus_type) = focus_of(&item);
            let reason = Reason {
                system: run.scalar_on(&self.reason_system, &focus, focus_type.as_deref(), env),
                code: run.scalar_on(&self.reason_code, &focus, focus_type.as_deref(), env),
                display: run.scalar_on(&self.reason_display, &focus, focus_type.as_deref(), env),
                text: run.scalar_on(&self.reason_text, &focus, focus_type.as_deref(), env),
            };
            if reason != Reason::default() {
                reasons.push(reason);
            }
        }
        let mut notes = Vec::new();
        for item in run.list(&self.notes, env) {
            match text_of(&item) {
                Ok(Some(text)) => notes.push(text),
                Ok(None) => {}
                Err(what) => run.not_primitive(&self.notes, &what),
            }
        }
        let mapped = MappedReferral {
            identifier: BusinessIdentifier {
                system: run
                    .scalar(&self.referral_identifier_system, env)
                    .unwrap_or_default(),
                value: run
                    .scalar(&self.referral_identifier_value, env)
                    .unwrap_or_default(),
            },
            fields: ReferralFields {
                fhir_status: run.scalar(&self.status, env).unwrap_or_default(),
                intent: run.scalar(&self.intent, env),
                priority: run.scalar(&self.priority, env),
                authored_on: run.scalar(&self.authored_on, env),
                practice_ods_code: run.scalar(&self.practice_ods_code, env),
                practice_name: run.scalar(&self.practice_name, env),
                referrer_name: run.scalar(&self.referrer_name, env),
                referrer_identifier: run.scalar(&self.referrer_identifier, env),
                consent_status: run.scalar(&self.consent_status, env),
                consent_date: run.scalar(&self.consent_date, env),
                reply_to: run.scalar(&self.reply_to, env),
                patient: PatientContact {
                    nhs_number: run.scalar(&self.nhs_number, env),
                    given_name: run.scalar(&self.given_name, env),
                    family_name: run.scalar(&self.family_name, env),
                    birth_date: run.scalar(&self.birth_date, env),
                    phone: run.scalar(&self.phone, env),
                    email: run.scalar(&self.email, env),
                    address: run.scalar(&self.address, env),
                    postcode: run.scalar(&self.postcode, env),
                },
                reasons,
                notes,
            },
        };
        if run.issues.is_empty() {
            Ok(mapped)
        } else {
            Err(run.issues)
        }
    }
}

/// `required`, checked: the always-required fields cannot be made optional.
fn required(
    source: &TomlText<'_>,
    field: &str,
    given: Option<&Spanned<bool>>,
) -> Result<bool, LocatedError> {
    let always = ALWAYS_REQUIRED.contains(&field);
    match given {
        Some(flag) if always && !flag.get_ref() => Err(source.error_at(
            &flag.span(),
            format!(
                "{field} is always required (the referral record cannot be kept without it); remove `required = false`"
            ),
        )),
        Some(flag) => Ok(*flag.get_ref()),
        None => Ok(always),
    }
}

/// One resource as a one-item collection (empty for `None`).
fn collection_of(value: Option<&Value>) -> Collection {
    Collection::new(
        value
            .filter(|v| !v.is_null())
            .map(|v| Item::Element {
                value: v.clone(),
                type_name: None,
            })
            .into_iter()
            .collect(),
    )
}

/// The JSON and FHIR type of a list item, to evaluate an item's parts on.
fn focus_of(item: &Item) -> (Value, Option<String>) {
    match item {
        Item::Element { value, type_name } => (value.clone(), type_name.clone()),
        other => (other.to_json(), None),
    }
}

/// A primitive item as text; `Ok(None)` for nothing (an empty string, a primitive with only
/// extensions); `Err` describing an item that is not a primitive.
fn text_of(item: &Item) -> Result<Option<String>, String> {
    let text = match item {
        Item::Boolean(b) => b.to_string(),
        Item::Integer(i) | Item::Long(i) => i.to_string(),
        Item::Decimal(s) | Item::String(s) | Item::Date(s) | Item::DateTime(s) | Item::Time(s) => {
            s.clone()
        }
        Item::Quantity { value, unit } => format!("{value} '{unit}'"),
        Item::Element { value, type_name } => match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => return Ok(None),
            Value::Object(_) | Value::Array(_) => {
                return Err(format!(
                    "a {} element",
                    type_name.as_deref().unwrap_or("complex")
                ));
            }
        },
        Item::Type { name, .. } => return Err(format!("the type {name}")),
    };
    Ok((!text.trim().is_empty()).then_some(text))
}

/// One application of the mapping: the input and the issues found so far.
struct Run<'m, 'i> {
    inbound: &'m Inbound,
    input: &'i InboundResources<'i>,
    /// `input.bundle`'s entries, indexed once for every `resolve()` of the run.
    bundle: Option<BundleIndex<'i>>,
    issues: Vec<Issue>,
}

impl Run<'_, '_> {
    fn issue(&self, mapped: &Mapped, code: IssueType, id: &'static str, message: String) -> Issue {
        Issue::error(code, id, message)
            .at(mapped.expression.text())
            .from_definition(format!("{}#{}", self.inbound.file, mapped.field))
    }

    /// Evaluates with the ServiceRequest as focus, or `focus` (a list item) when given.
    fn evaluate(
        &mut self,
        mapped: &Mapped,
        focus: Option<(&Value, Option<&str>)>,
        environment: &Environment,
    ) -> Option<Collection> {
        self.evaluate_named(mapped.field, &mapped.expression, focus, environment)
            .ok()
    }

    fn evaluate_named(
        &mut self,
        field: &str,
        expression: &Expression,
        focus: Option<(&Value, Option<&str>)>,
        environment: &Environment,
    ) -> Result<Collection, ()> {
        let (focus, focus_type) = focus.unwrap_or((self.input.referral, None));
        let scope = Scope {
            resource: self.input.referral,
            root_resource: None,
            bundle: self.bundle.as_ref(),
            focus,
            focus_type,
            environment: Some(environment),
        };
        expression.evaluate_in(scope).map_err(|e| {
            self.issues.push(
                Issue::error(
                    IssueType::Invalid,
                    "mapping-evaluation-failed",
                    format!(
                        "The referral could not be mapped: {field} (mapped by {} in {}) failed: {e}",
                        expression.text(),
                        self.inbound.file
                    ),
                )
                .at(expression.text())
                .from_definition(format!("{}#{field}", self.inbound.file)),
            );
        })
    }

    fn scalar(&mut self, mapped: &Mapped, environment: &Environment) -> Option<String> {
        let result = self.evaluate(mapped, None, environment)?;
        self.one(mapped, result)
    }

    fn scalar_on(
        &mut self,
        mapped: &Mapped,
        focus: &Value,
        focus_type: Option<&str>,
        environment: &Environment,
    ) -> Option<String> {
        let result = self.evaluate(mapped, Some((focus, focus_type)), environment)?;
        self.one(mapped, result)
    }

    /// At most one primitive value; nothing is an issue when the field is required.
    fn one(&mut self, mapped: &Mapped, result: Collection) -> Option<String> {
        let mut values = Vec::new();
        for item in result.items() {
            match text_of(item) {
                Ok(Some(text)) => values.push(text),
                Ok(None) => {}
                Err(what) => {
                    self.not_primitive(mapped, &what);
                    return None;
                }
            }
        }
        match values.len() {
            0 => {
                if mapped.required {
                    self.required_missing(mapped);
                }
                None
            }
            1 => values.pop(),
            n => {
                let issue = self.issue(
                    mapped,
                    IssueType::Structure,
                    "mapping-multiple-values",
                    format!(
                        "The referral has {n} values for {} (mapped by {} in {}), where Sprig keeps one",
                        mapped.field,
                        mapped.expression.text(),
                        self.inbound.file
                    ),
                );
                self.issues.push(issue);
                None
            }
        }
    }

    fn list(&mut self, mapped: &Mapped, environment: &Environment) -> Vec<Item> {
        let Some(result) = self.evaluate(mapped, None, environment) else {
            return Vec::new();
        };
        if result.is_empty() && mapped.required {
            self.required_missing(mapped);
        }
        result.into_items()
    }

    fn required_missing(&mut self, mapped: &Mapped) {
        let issue = self.issue(
            mapped,
            IssueType::Required,
            "mapping-required-field",
            format!(
                "The referral has no {} (required; mapped by {} in {}){}",
                mapped.field,
                mapped.expression.text(),
                self.inbound.file,
                mapped
                    .missing
                    .as_deref()
                    .map(|why| format!(": {why}"))
                    .unwrap_or_default()
            ),
        );
        self.issues.push(issue);
    }

    fn not_primitive(&mut self, mapped: &Mapped, what: &str) {
        let issue = self.issue(
            mapped,
            IssueType::Structure,
            "mapping-not-primitive",
            format!(
                "{} (mapped by {} in {}) found {what}, not a primitive value: the mapping should select one of its primitive elements (such as .value, .code or .text)",
                mapped.field,
                mapped.expression.text(),
                self.inbound.file
            ),
        );
        self.issues.push(issue);
    }
}
