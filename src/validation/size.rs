//! Per-field size limits (`[limits]`): what no real referral needs, refused
//! before the schema and profile passes run and long before mapping or
//! storing, so that their work (and what is stored) stays in proportion to
//! a plausible resource whatever the body size allows.
//!
//! A pure walk of the parsed JSON: an identifier's `value` over
//! `max_identifier_chars`, any other string over `max_string_chars` (a note's
//! text, a name; `Attachment.data`, base64 bounded only by the body limit, is
//! the one exception), and any array over `max_repeats` items (notes,
//! reasons, contained resources, Bundle entries) are each an error naming
//! the element and the limit. The walk stops after `MAX_REPORTED` findings:
//! a body of 100,000 over-long strings gets a short answer.

use serde_json::Value;

use crate::fhir::{Issue, IssueType};

/// The limits the walk applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldLimits {
    /// Longest `identifier.value`, in characters.
    pub max_identifier_chars: usize,
    /// Longest other string, in characters.
    pub max_string_chars: usize,
    /// Most items in one array.
    pub max_repeats: usize,
}

impl Default for FieldLimits {
    fn default() -> Self {
        Self {
            max_identifier_chars: 256,
            max_string_chars: 64 * 1024,
            max_repeats: 256,
        }
    }
}

/// Findings after which the walk stops.
const MAX_REPORTED: usize = 20;

/// Every element of `resource` (of type `root`) over `limits`, as errors
/// located by FHIRPath-style expressions (`ServiceRequest.note[3].text`).
pub fn check_sizes(root: &str, resource: &Value, limits: &FieldLimits) -> Vec<Issue> {
    let mut issues = Vec::new();
    let mut path = root.to_owned();
    walk(resource, &mut path, None, limits, &mut issues);
    issues
}

/// Walks `value` at `path`, whose last property name was `key`.
fn walk(
    value: &Value,
    path: &mut String,
    key: Option<&str>,
    limits: &FieldLimits,
    issues: &mut Vec<Issue>,
) {
    if issues.len() >= MAX_REPORTED {
        return;
    }
    match value {
        Value::String(text) => {
            let (max, what) = if key == Some("value") && path_is_identifier_value(path) {
                (limits.max_identifier_chars, "an identifier value")
            } else if key == Some("data") {
                return;
            } else {
                (limits.max_string_chars, "a string")
            };
            // Bytes first: a string can have no more characters than bytes.
            if text.len() > max && text.chars().count() > max {
                issues.push(
                    Issue::error(
                        IssueType::TooLong,
                        "element-too-long",
                        format!(
                            "{path} is longer than Sprig accepts for {what} ({max} characters); no real referral needs one this long"
                        ),
                    )
                    .at(path.clone()),
                );
            }
        }
        Value::Array(items) => {
            if items.len() > limits.max_repeats {
                issues.push(
                    Issue::error(
                        IssueType::TooCostly,
                        "element-too-many",
                        format!(
                            "{path} has {} items, more than the {} Sprig accepts",
                            items.len(),
                            limits.max_repeats
                        ),
                    )
                    .at(path.clone()),
                );
                return;
            }
            let base = path.len();
            for (i, item) in items.iter().enumerate() {
                path.push_str(&format!("[{i}]"));
                walk(item, path, key, limits, issues);
                path.truncate(base);
            }
        }
        Value::Object(map) => {
            let base = path.len();
            for (name, item) in map {
                path.push('.');
                path.push_str(name);
                walk(item, path, Some(name), limits, issues);
                path.truncate(base);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Whether `path` (ending `.value`) is an `identifier`'s value:
/// `….identifier.value` or `….identifier[n].value`.
fn path_is_identifier_value(path: &str) -> bool {
    let Some(parent) = path.strip_suffix(".value") else {
        return false;
    };
    let parent = match parent.strip_suffix(']') {
        Some(indexed) => indexed.rsplit_once('[').map_or(parent, |(name, _)| name),
        None => parent,
    };
    parent.ends_with(".identifier")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn limits() -> FieldLimits {
        FieldLimits {
            max_identifier_chars: 5,
            max_string_chars: 10,
            max_repeats: 3,
        }
    }

    #[test]
    fn names_the_element_and_the_limit() {
        let resource = json!({
            "identifier": [{"system": "s", "value": "123456"}],
            "note": [{"text": "ééééééééééé"}],
            "reasonCode": [{}, {}, {}, {}],
            "content": [{"attachment": {"data": "QUJDREVGR0hJSktMTU5PUA=="}}],
            "subject": {"identifier": {"value": "12345"}}
        });
        let issues = check_sizes("ServiceRequest", &resource, &limits());
        let found: Vec<_> = issues
            .iter()
            .map(|i| (i.expression.clone().unwrap(), i.message_id))
            .collect();
        assert_eq!(
            found,
            [
                (
                    "ServiceRequest.identifier[0].value".to_owned(),
                    "element-too-long"
                ),
                ("ServiceRequest.note[0].text".to_owned(), "element-too-long"),
                ("ServiceRequest.reasonCode".to_owned(), "element-too-many"),
            ]
        );
        assert!(
            issues[0].message.contains("(5 characters)"),
            "{}",
            issues[0].message
        );
        assert!(issues[2].message.contains("4 items"));
    }

    #[test]
    fn characters_not_bytes_and_a_bounded_report() {
        // Ten two-byte characters are within a ten-character limit.
        let ok = json!({"name": "éééééééééé"});
        assert!(check_sizes("Patient", &ok, &limits()).is_empty());
        let many: Vec<_> = (0..3).map(|_| json!({"text": "x".repeat(11)})).collect();
        let deep = json!({"a": many.clone(), "b": many.clone(), "c": many.clone(), "d": many.clone(), "e": many.clone(), "f": many.clone(), "g": many.clone(), "h": many});
        assert_eq!(check_sizes("Basic", &deep, &limits()).len(), MAX_REPORTED);
    }
}
