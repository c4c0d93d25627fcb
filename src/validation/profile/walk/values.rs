//! Checks of one value against its element: NHS identifiers,
//! `minValue[x]`/`maxValue[x]`, and `fixed[x]`/`pattern[x]`.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use super::{Compiled, Node, Walk};
use crate::fhir::identifiers::{NHS_NUMBER_SYSTEM, NhsNumber, ODS_ORGANIZATION_SYSTEM, OdsCode};
use crate::fhir::json::field;
use crate::fhir::outcome::shorten;
use crate::fhir::{ElementPath, IssueType};

impl<'p, 'v> Walk<'p, 'v> {
    /// NHS numbers must carry a valid check digit and ODS codes have a
    /// shape: mistakes in either send a referral to the wrong person or
    /// practice, so they are errors wherever they appear.
    pub(super) fn nhs_identifier(
        &mut self,
        sd: &Compiled,
        element: &Node,
        identifier: &Map<String, Value>,
        path: &ElementPath,
    ) {
        let (Some(system), Some(value)) = (
            field(identifier, "system").and_then(Value::as_str),
            field(identifier, "value").and_then(Value::as_str),
        ) else {
            return;
        };
        let problem = if system == NHS_NUMBER_SYSTEM {
            NhsNumber::parse(value)
                .err()
                .map(|e| ("nhs-number-invalid", e.to_string()))
        } else if system == ODS_ORGANIZATION_SYSTEM {
            OdsCode::parse(value)
                .err()
                .map(|e| ("ods-code-invalid", e.to_string()))
        } else if system.eq_ignore_ascii_case(NHS_NUMBER_SYSTEM)
            || system.eq_ignore_ascii_case(ODS_ORGANIZATION_SYSTEM)
        {
            // A known quirk of some senders (`…/id/ods-organization-code`).
            let at = path.key("system");
            let intended = if system.eq_ignore_ascii_case(NHS_NUMBER_SYSTEM) {
                NHS_NUMBER_SYSTEM
            } else {
                ODS_ORGANIZATION_SYSTEM
            };
            self.warn(
                sd,
                element,
                &at,
                "identifier-system-case",
                format!(
                    "{} differs from the NHS identifier system only in letter case; use {intended}",
                    self.expression(&at),
                ),
            );
            None
        } else {
            None
        };
        if let Some((id, message)) = problem {
            let at = path.key("value");
            let message = format!("{}: {message}", self.expression(&at));
            self.fail(sd, element, &at, IssueType::Value, id, message);
        }
    }

    /// `minValue[x]` and `maxValue[x]`.
    pub(super) fn bounds(
        &mut self,
        sd: &Compiled,
        element: &Node,
        value: &Value,
        path: &ElementPath,
    ) {
        for (key, bound) in &element.def.other {
            let (is_min, word) = if key.starts_with("minValue") {
                (true, "at least")
            } else if key.starts_with("maxValue") {
                (false, "at most")
            } else {
                continue;
            };
            let Some(ordering) = compare(value, bound) else {
                continue;
            };
            let out_of_range = if is_min {
                ordering == Ordering::Less
            } else {
                ordering == Ordering::Greater
            };
            if out_of_range {
                self.fail(
                    sd,
                    element,
                    path,
                    IssueType::Value,
                    if is_min {
                        "profile-min-value"
                    } else {
                        "profile-max-value"
                    },
                    format!(
                        "{} is {}, but must be {word} {}",
                        self.expression(path),
                        shorten(&display_scalar(value), 60),
                        // A Quantity bound shows its value.
                        display_scalar(bound)
                    ),
                );
            }
        }
    }

    pub(super) fn fixed_and_pattern(
        &mut self,
        sd: &Compiled,
        element: &Node,
        value: &Value,
        path: &ElementPath,
    ) {
        for (key, expected) in &element.def.other {
            if key.starts_with("fixed") && value != expected {
                self.fail(
                    sd,
                    element,
                    path,
                    IssueType::Value,
                    "profile-fixed-value",
                    format!(
                        "{} must be exactly {}",
                        self.expression(path),
                        shorten(&expected.to_string(), 200)
                    ),
                );
            } else if key.starts_with("pattern") && !matches_pattern(value, expected) {
                self.fail(
                    sd,
                    element,
                    path,
                    IssueType::Value,
                    "profile-pattern",
                    format!(
                        "{} must contain {}",
                        self.expression(path),
                        shorten(&expected.to_string(), 200)
                    ),
                );
            }
        }
    }
}

/// `pattern[x]` semantics: every property of the pattern is present in the
/// value with a matching value; arrays match if every pattern item matches
/// some value item.
pub(super) fn matches_pattern(value: &Value, pattern: &Value) -> bool {
    match (value, pattern) {
        (Value::Object(value), Value::Object(pattern)) => pattern.iter().all(|(key, expected)| {
            value
                .get(key)
                .is_some_and(|actual| matches_pattern(actual, expected))
        }),
        (Value::Array(values), Value::Array(patterns)) => patterns.iter().all(|expected| {
            values
                .iter()
                .any(|actual| matches_pattern(actual, expected))
        }),
        (value, pattern) => value == pattern,
    }
}

/// Orders a value against a `minValue[x]`/`maxValue[x]` bound: numbers
/// numerically and exactly (as FHIRPath does: `10.000000000000000001`
/// exceeds a maximum of 10, which f64 would not see), Quantities by value
/// (same unit code), dates and times as text when both have the same
/// precision. `None` when they do not compare.
pub(super) fn compare(value: &Value, bound: &Value) -> Option<Ordering> {
    match (value, bound) {
        (Value::Number(a), Value::Number(b)) => compare_numbers(a, b),
        (Value::String(a), Value::String(b)) if a.len() == b.len() => Some(a.cmp(b)),
        (Value::Object(a), Value::Object(b)) => {
            let same_unit = a.get("code") == b.get("code") && a.get("system") == b.get("system");
            match (a.get("value"), b.get("value")) {
                (Some(Value::Number(a)), Some(Value::Number(b))) if same_unit => {
                    compare_numbers(a, b)
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// Two JSON numbers in order: exactly as decimals, or, beyond their range
/// (`1e40`), as f64 so that a huge value still fails a maximum.
fn compare_numbers(a: &serde_json::Number, b: &serde_json::Number) -> Option<Ordering> {
    use crate::fhirpath::json_decimal;
    match (json_decimal(a), json_decimal(b)) {
        (Some(a), Some(b)) => Some(a.cmp(&b)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

fn display_scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Object(object) => object
            .get("value")
            .map(|v| v.to_string())
            .unwrap_or_else(|| value.to_string()),
        other => other.to_string(),
    }
}
