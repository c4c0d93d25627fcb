//! Bindings: codes checked against the value sets Sprig holds, and the
//! displays of held codes.

use serde_json::{Map, Value};

use super::{Compiled, Node, Walk};
use crate::fhir::json::field;
use crate::fhir::outcome::shorten;
use crate::fhir::{ElementPath, Issue, IssueSeverity, IssueType};

impl<'p, 'v> Walk<'p, 'v> {
    pub(super) fn binding(
        &mut self,
        sd: &Compiled,
        element: &Node,
        type_code: &str,
        value: &Value,
        path: &ElementPath,
    ) {
        let Some(binding) = &element.def.binding else {
            return;
        };
        let required = match binding.strength.as_str() {
            "required" => true,
            "extensible" => false,
            _ => return,
        };
        let codings: Vec<(Option<&str>, &str)> = match (type_code, value) {
            ("code" | "string" | "uri", Value::String(code)) => vec![(None, code.as_str())],
            ("Coding", Value::Object(coding)) => coding_pair(coding).into_iter().collect(),
            ("CodeableConcept", Value::Object(concept)) => concept_codes(concept),
            _ => return,
        };
        let value_set_url = binding.value_set.as_str();
        let Some(value_set) = self
            .pass
            .value_sets
            .get(value_set_url)
            .filter(|vs| vs.complete)
        else {
            if required && !codings.is_empty() {
                let issue = Issue::information(
                    "profile-binding-not-checked",
                    format!(
                        "{}: the codes of {value_set_url} are not held by Sprig (not checked)",
                        self.expression(path)
                    ),
                );
                self.report(issue, path, sd, element);
            }
            return;
        };
        if codings.is_empty() {
            if required && type_code == "CodeableConcept" {
                self.fail(sd, element, path, IssueType::CodeInvalid, "profile-binding-required", format!(
                        "{} needs a coding from {value_set_url} (text alone is not enough for a required binding)",
                        self.expression(path)
                    ));
            }
            return;
        }
        self.displays(sd, element, type_code, value, path, value_set);
        if codings
            .iter()
            .any(|(system, code)| value_set.contains(*system, code))
        {
            return;
        }
        let shown: Vec<String> = codings
            .iter()
            .map(|(system, code)| match system {
                Some(system) => format!("{system}|{code}"),
                None => format!("'{code}'"),
            })
            .collect();
        // Listed only when short: counted first, as an extensible binding misses often
        // (a warning) and some value sets hold thousands of codes.
        let allowed_count: usize = value_set.systems.values().map(|codes| codes.len()).sum();
        let allowed_text = if allowed_count <= 12 {
            let mut allowed: Vec<&str> = value_set
                .systems
                .values()
                .flat_map(|codes| codes.keys().map(String::as_str))
                .collect();
            allowed.sort_unstable();
            format!("; allowed: {}", allowed.join(", "))
        } else {
            String::new()
        };
        let (severity, id, strength) = if required {
            (IssueSeverity::Error, "profile-binding-required", "required")
        } else {
            (
                IssueSeverity::Warning,
                "profile-binding-extensible",
                "extensible",
            )
        };
        let issue = Issue::error(
            IssueType::CodeInvalid,
            id,
            format!(
                "{} {} not in the value set {value_set_url} ({strength} binding){allowed_text}",
                shorten(&shown.join(", "), 200),
                if shown.len() == 1 { "is" } else { "are" }
            ),
        )
        .with_severity(severity);
        self.report(issue, path, sd, element);
    }

    /// A Coding's `display` must be the display Sprig holds for its code
    /// (ignoring case and surrounding spaces): a mismatch usually means the
    /// code was mistyped. A warning, as in the HL7 validator, since systems
    /// may use other designations.
    fn displays(
        &mut self,
        sd: &Compiled,
        element: &Node,
        type_code: &str,
        value: &Value,
        path: &ElementPath,
        value_set: &crate::fhir::definitions::ExpandedValueSet,
    ) {
        // (index in CodeableConcept.coding, coding): the path is built only
        // for a mismatch.
        let codings: Vec<(Option<usize>, &Map<String, Value>)> = match (type_code, value) {
            ("Coding", Value::Object(coding)) => vec![(None, coding)],
            ("CodeableConcept", Value::Object(concept)) => field(concept, "coding")
                .and_then(Value::as_array)
                .map(|codings| {
                    codings
                        .iter()
                        .enumerate()
                        .filter_map(|(i, c)| Some((Some(i), c.as_object()?)))
                        .collect()
                })
                .unwrap_or_default(),
            _ => return,
        };
        for (index, coding) in codings {
            let text = |name: &str| field(coding, name).and_then(Value::as_str);
            let (Some(system), Some(code), Some(display)) =
                (text("system"), text("code"), text("display"))
            else {
                continue;
            };
            let Some(Some(held)) = value_set
                .systems
                .get(system)
                .and_then(|codes| codes.get(code))
            else {
                continue;
            };
            if !held.trim().eq_ignore_ascii_case(display.trim()) {
                let at = match index {
                    Some(i) => path.key("coding").index(i),
                    None => path.clone(),
                }
                .key("display");
                self.warn(
                    sd,
                    element,
                    &at,
                    "profile-display-mismatch",
                    format!(
                        "{} is '{}', but the display of {system}|{code} is '{held}'",
                        self.expression(&at),
                        shorten(display, 120)
                    ),
                );
            }
        }
    }
}

fn coding_pair(coding: &Map<String, Value>) -> Option<(Option<&str>, &str)> {
    let code = field(coding, "code")?.as_str()?;
    Some((field(coding, "system").and_then(Value::as_str), code))
}

/// (system, code) pairs of a CodeableConcept's codings.
fn concept_codes(concept: &Map<String, Value>) -> Vec<(Option<&str>, &str)> {
    field(concept, "coding")
        .and_then(Value::as_array)
        .map(|codings| {
            codings
                .iter()
                .filter_map(Value::as_object)
                .filter_map(coding_pair)
                .collect()
        })
        .unwrap_or_default()
}

/// (system, code) pairs of a code, Coding or CodeableConcept value.
pub(super) fn codes_of(value: &Value) -> Vec<(Option<&str>, &str)> {
    match value {
        Value::String(code) => vec![(None, code.as_str())],
        Value::Object(object) if object.contains_key("coding") => concept_codes(object),
        Value::Object(object) => coding_pair(object).into_iter().collect(),
        _ => Vec::new(),
    }
}
