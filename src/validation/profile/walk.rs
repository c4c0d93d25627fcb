//! One walk of a resource against compiled definitions, collecting issues.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::{Compiled, Node, ProfilePass};
use crate::fhir::outcome::shorten;
use crate::fhir::{ElementPath, Issue, IssueSeverity, IssueType};

/// Ids and types of the resources contained in the resource being walked,
/// for resolving `#id` references.
type ContainedIndex = HashMap<String, String>;

pub(super) struct Walk<'p> {
    pass: &'p ProfilePass,
    root: &'p str,
    issues: Vec<Issue>,
}

impl<'p> Walk<'p> {
    pub(super) fn new(pass: &'p ProfilePass, root: &'p str) -> Self {
        Self {
            pass,
            root,
            issues: Vec::new(),
        }
    }

    pub(super) fn finish(self) -> Vec<Issue> {
        self.issues
    }

    fn expression(&self, path: &ElementPath) -> String {
        path.to_expression(self.root)
    }

    fn report(&mut self, issue: Issue, path: &ElementPath, sd: &Compiled, node: &Node) {
        let issue = issue
            .at(self.expression(path))
            .from_definition(format!("{}#{}", sd.url, node.def.id));
        self.issues.push(issue);
    }

    /// Validates a resource of `type_name` found at `path`. `container` is
    /// the contained-resource index of the enclosing resource, if any.
    pub(super) fn resource(
        &mut self,
        type_name: &str,
        resource: &Map<String, Value>,
        path: &ElementPath,
        container: Option<&ContainedIndex>,
    ) {
        let pass = self.pass;
        let Some(sd) = pass.types.get(type_name) else {
            self.issues.push(
                Issue::error(
                    IssueType::NotSupported,
                    "profile-unknown-type",
                    format!("There is no definition of the resource type '{type_name}'"),
                )
                .at(self.expression(path)),
            );
            return;
        };
        if sd.kind != "resource" {
            self.issues.push(
                Issue::error(
                    IssueType::Invalid,
                    "profile-not-a-resource",
                    format!("'{type_name}' is a datatype, not a resource type"),
                )
                .at(self.expression(&path.key("resourceType"))),
            );
            return;
        }
        let own_index;
        let contained = match container {
            Some(index) => index,
            None => {
                own_index = contained_index(resource);
                &own_index
            }
        };
        self.children(sd, 0, resource, path, contained);
    }

    /// Validates the properties of `object` against the children of element
    /// `node` of `sd`.
    fn children(
        &mut self,
        sd: &Compiled,
        node: usize,
        object: &Map<String, Value>,
        path: &ElementPath,
        contained: &ContainedIndex,
    ) {
        for &child in &sd.nodes[node].children {
            if sd.nodes[child].choice {
                self.choice_element(sd, child, object, path, contained);
            } else {
                self.plain_element(sd, child, object, path, contained);
            }
        }
    }

    fn plain_element(
        &mut self,
        sd: &Compiled,
        node: usize,
        object: &Map<String, Value>,
        path: &ElementPath,
        contained: &ContainedIndex,
    ) {
        let element = &sd.nodes[node];
        let value = object.get(&element.name);
        let count = occurrences(value).max(occurrences(object.get(&element.extension_name)));
        self.cardinality(sd, element, count, path);
        let Some(value) = value else {
            // Absent (or only `_name`): nothing more to check, and no path to build.
            return;
        };
        let type_code = element
            .def
            .types
            .first()
            .map(|t| t.code.as_str())
            .unwrap_or("");
        let element_path = path.key(element.name.clone());
        match value {
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    if !item.is_null() {
                        let item_path = element_path.index(index);
                        self.value(sd, node, type_code, item, &item_path, contained);
                    }
                }
            }
            item => self.value(sd, node, type_code, item, &element_path, contained),
        }
    }

    fn choice_element(
        &mut self,
        sd: &Compiled,
        node: usize,
        object: &Map<String, Value>,
        path: &ElementPath,
        contained: &ContainedIndex,
    ) {
        let element = &sd.nodes[node];
        // (key, type code, value: None when only `_key` is given)
        let present: Vec<(&str, &str, Option<&Value>)> = element
            .choice_keys
            .iter()
            .zip(&element.def.types)
            .filter_map(|((key, extension_key), type_ref)| {
                match (object.get(key), object.contains_key(extension_key)) {
                    (Some(value), _) => Some((key.as_str(), type_ref.code.as_str(), Some(value))),
                    (None, true) => Some((key.as_str(), type_ref.code.as_str(), None)),
                    (None, false) => None,
                }
            })
            .collect();
        if present.len() > 1 || (present.is_empty() && element.def.min > 0) {
            let choice_path = path.key(format!("{}[x]", element.name));
            let issue = if present.is_empty() {
                let keys: Vec<&str> = element
                    .choice_keys
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect();
                Issue::error(
                    IssueType::Required,
                    "profile-cardinality-min",
                    format!(
                        "{} is required: give one of {}",
                        self.expression(&choice_path),
                        shorten(&keys.join(", "), 200)
                    ),
                )
            } else {
                let keys: Vec<&str> = present.iter().map(|(k, _, _)| *k).collect();
                Issue::error(
                    IssueType::Structure,
                    "profile-choice-repeated",
                    format!(
                        "{} has several values ({}); only one type may be used",
                        self.expression(&choice_path),
                        keys.join(", ")
                    ),
                )
            };
            self.report(issue, &choice_path, sd, element);
        }
        for (key, code, value) in present {
            if let Some(value) = value.filter(|v| !v.is_null()) {
                self.value(sd, node, code, value, &path.key(key), contained);
            }
        }
    }

    /// Checks `count` occurrences of `element` under `parent` against its
    /// cardinality; the element's path is only built for a violation.
    fn cardinality(&mut self, sd: &Compiled, element: &Node, count: usize, parent: &ElementPath) {
        let min = element.def.min as usize;
        let max = element.def.max.map(|m| m as usize);
        let (code, id, message) = if count < min {
            let requirement = if min == 1 {
                "is required (minimum cardinality 1) but is missing".to_owned()
            } else {
                format!("must appear at least {min} times but appears {count} times")
            };
            (IssueType::Required, "profile-cardinality-min", requirement)
        } else if let Some(max) = max.filter(|&max| count > max) {
            let requirement = if max == 0 {
                "is not allowed here (maximum cardinality 0)".to_owned()
            } else {
                format!("may appear at most {max} times but appears {count} times")
            };
            (IssueType::Structure, "profile-cardinality-max", requirement)
        } else {
            return;
        };
        let path = parent.key(element.name.clone());
        let message = format!("{} {message}", self.expression(&path));
        self.report(Issue::error(code, id, message), &path, sd, element);
    }

    /// Validates one value of element `node` (of type `type_code`).
    fn value(
        &mut self,
        sd: &Compiled,
        node: usize,
        type_code: &str,
        value: &Value,
        path: &ElementPath,
        contained: &ContainedIndex,
    ) {
        let element = &sd.nodes[node];
        self.fixed_and_pattern(sd, element, value, path);
        self.binding(sd, element, type_code, value, path);
        if let (Some(max), Some(text)) = (element.def.max_length, value.as_str())
            && text.chars().count() as u64 > max
        {
            let issue = Issue::error(
                IssueType::TooLong,
                "profile-max-length",
                format!("{} is longer than {max} characters", self.expression(path)),
            );
            self.report(issue, path, sd, element);
        }
        let Value::Object(object) = value else {
            // Primitives: the JSON schema pass has checked their format.
            return;
        };
        if !element.children.is_empty() {
            // Backbone elements: children are defined inline.
            self.children(sd, node, object, path, contained);
            return;
        }
        if let Some(reference) = &element.def.content_reference {
            let target = reference.trim_start_matches('#');
            if let Some(&index) = sd.by_path.get(target) {
                self.children(sd, index, object, path, contained);
            }
            return;
        }
        // The pass outlives this walk, so the definition can be held while
        // the walk records issues.
        let pass = self.pass;
        let datatype = pass.types.get(type_code);
        if type_code == "Resource" || datatype.is_some_and(|t| t.kind == "resource") {
            // A resource without a resourceType is reported by the schema pass.
            if let Some(nested) = object.get("resourceType").and_then(Value::as_str) {
                // A contained resource resolves `#` references against its container.
                let container = (element.name == "contained").then_some(contained);
                self.resource(nested, object, path, container);
            }
            return;
        }
        let Some(datatype) = datatype else {
            return;
        };
        if type_code == "Reference" {
            self.reference_target(sd, element, object, path, contained);
        }
        self.children(datatype, 0, object, path, contained);
    }

    fn fixed_and_pattern(
        &mut self,
        sd: &Compiled,
        element: &Node,
        value: &Value,
        path: &ElementPath,
    ) {
        for (key, expected) in &element.def.other {
            if key.starts_with("fixed") && value != expected {
                let issue = Issue::error(
                    IssueType::Value,
                    "profile-fixed-value",
                    format!(
                        "{} must be exactly {}",
                        self.expression(path),
                        shorten(&expected.to_string(), 200)
                    ),
                );
                self.report(issue, path, sd, element);
            } else if key.starts_with("pattern") && !matches_pattern(value, expected) {
                let issue = Issue::error(
                    IssueType::Value,
                    "profile-pattern",
                    format!(
                        "{} must contain {}",
                        self.expression(path),
                        shorten(&expected.to_string(), 200)
                    ),
                );
                self.report(issue, path, sd, element);
            }
        }
    }

    fn binding(
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
            ("CodeableConcept", Value::Object(concept)) => concept
                .get("coding")
                .and_then(Value::as_array)
                .map(|codings| {
                    codings
                        .iter()
                        .filter_map(Value::as_object)
                        .filter_map(coding_pair)
                        .collect()
                })
                .unwrap_or_default(),
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
                let issue = Issue::error(
                    IssueType::Informational,
                    "profile-binding-not-checked",
                    format!(
                        "{}: the codes of {value_set_url} are not held by Sprig (not checked)",
                        self.expression(path)
                    ),
                )
                .with_severity(IssueSeverity::Information);
                self.report(issue, path, sd, element);
            }
            return;
        };
        if codings.is_empty() {
            if required && type_code == "CodeableConcept" {
                let issue = Issue::error(
                    IssueType::CodeInvalid,
                    "profile-binding-required",
                    format!(
                        "{} needs a coding from {value_set_url} (text alone is not enough for a required binding)",
                        self.expression(path)
                    ),
                );
                self.report(issue, path, sd, element);
            }
            return;
        }
        let in_set = |system: Option<&str>, code: &str| match system {
            Some(system) => value_set
                .systems
                .get(system)
                .is_some_and(|codes| codes.contains_key(code)),
            None => value_set
                .systems
                .values()
                .any(|codes| codes.contains_key(code)),
        };
        if codings.iter().any(|(system, code)| in_set(*system, code)) {
            return;
        }
        let shown: Vec<String> = codings
            .iter()
            .map(|(system, code)| match system {
                Some(system) => format!("{system}|{code}"),
                None => format!("'{code}'"),
            })
            .collect();
        let mut allowed: Vec<&str> = value_set
            .systems
            .values()
            .flat_map(|codes| codes.keys().map(String::as_str))
            .collect();
        allowed.sort_unstable();
        let allowed_text = if allowed.len() <= 12 {
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

    fn reference_target(
        &mut self,
        sd: &Compiled,
        element: &Node,
        reference: &Map<String, Value>,
        path: &ElementPath,
        contained: &ContainedIndex,
    ) {
        let Some(type_ref) = element.def.types.iter().find(|t| t.code == "Reference") else {
            return;
        };
        let allowed: Vec<&str> = type_ref
            .target_profile
            .iter()
            .filter_map(|url| url.strip_prefix("http://hl7.org/fhir/StructureDefinition/"))
            .collect();
        // Any type may be referenced when no (or a non-core) target is named.
        let unrestricted = allowed.is_empty()
            || allowed.contains(&"Resource")
            || allowed.len() != type_ref.target_profile.len();
        let Some(text) = reference.get("reference").and_then(Value::as_str) else {
            return;
        };
        let target_path = path.key("reference");
        let target_type = if let Some(id) = text.strip_prefix('#') {
            match contained.get(id) {
                Some(found) => Some(found.clone()),
                None if id.is_empty() => return, // "#": the container itself
                None => {
                    let issue = Issue::error(
                        IssueType::NotFound,
                        "profile-contained-not-found",
                        format!(
                            "{} refers to #{id}, but no contained resource has that id",
                            self.expression(&target_path)
                        ),
                    );
                    self.report(issue, &target_path, sd, element);
                    return;
                }
            }
        } else {
            literal_reference_type(text).map(str::to_owned)
        };
        if let Some(found) = target_type
            && !unrestricted
            && !allowed.contains(&found.as_str())
        {
            let issue = Issue::error(
                IssueType::Structure,
                "profile-reference-target",
                format!(
                    "{} refers to a {found}, but may only refer to {}",
                    self.expression(&target_path),
                    allowed.join(" or ")
                ),
            );
            self.report(issue, &target_path, sd, element);
        }
    }
}

fn occurrences(value: Option<&Value>) -> usize {
    match value {
        None => 0,
        Some(Value::Array(items)) => items.len(),
        Some(_) => 1,
    }
}

pub(super) fn capitalise(code: &str) -> String {
    let mut chars = code.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn coding_pair(coding: &Map<String, Value>) -> Option<(Option<&str>, &str)> {
    let code = coding.get("code")?.as_str()?;
    Some((coding.get("system").and_then(Value::as_str), code))
}

/// `pattern[x]` semantics: every property of the pattern is present in the
/// value with a matching value; arrays match if every pattern item matches
/// some value item.
fn matches_pattern(value: &Value, pattern: &Value) -> bool {
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

fn contained_index(resource: &Map<String, Value>) -> ContainedIndex {
    resource
        .get("contained")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|item| {
                    let id = item.get("id")?.as_str()?;
                    let resource_type = item.get("resourceType")?.as_str()?;
                    Some((id.to_owned(), resource_type.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The resource type named by a literal reference (`Patient/1`,
/// `https://x/fhir/Patient/1/_history/2`), or `None` for forms that name no
/// type (`urn:uuid:…`).
fn literal_reference_type(reference: &str) -> Option<&str> {
    if reference.starts_with("urn:") {
        return None;
    }
    let reference = reference.split(['?', '#']).next().unwrap_or(reference);
    let segments: Vec<&str> = reference.split('/').collect();
    let n = segments.len();
    let candidate = if n >= 4 && segments[n - 2] == "_history" {
        segments[n - 4]
    } else if n >= 2 {
        segments[n - 2]
    } else {
        return None;
    };
    crate::fhir::ResourceType::parse(candidate)
        .ok()
        .map(|_| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_references_name_their_type() {
        assert_eq!(literal_reference_type("Patient/1"), Some("Patient"));
        assert_eq!(
            literal_reference_type("https://x.org/fhir/Patient/1/_history/2"),
            Some("Patient")
        );
        assert_eq!(literal_reference_type("urn:uuid:0b0b"), None);
        assert_eq!(literal_reference_type("Nonsense/1"), None);
        assert_eq!(literal_reference_type("1"), None);
    }

    #[test]
    fn patterns_match_subsets() {
        let value = serde_json::json!({"coding": [{"system": "s", "code": "a", "display": "A"}, {"system": "t", "code": "b"}]});
        assert!(matches_pattern(
            &value,
            &serde_json::json!({"coding": [{"system": "t", "code": "b"}]})
        ));
        assert!(!matches_pattern(
            &value,
            &serde_json::json!({"coding": [{"system": "t", "code": "a"}]})
        ));
    }
}
