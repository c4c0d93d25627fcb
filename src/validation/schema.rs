//! The structural pass: HL7's official R4 JSON schema (`fhir.schema.json`)
//! checked with the `jsonschema` crate.
//!
//! The schema ships unmodified in `profiles/schema/` with an RFC 6902 patch
//! beside it (see that folder's README for what is patched and why); both
//! are compiled into the binary, so the gateway needs no files at run time.
//!
//! Compiling the whole schema's `oneOf` root is slow and reports one useless
//! error, and compiling all 146 resource types costs seconds and gigabytes,
//! so the types Sprig accepts are compiled at start-up into one validator
//! ([`SchemaPass::load`]'s `eager` types: one branch per type, `if`
//! `resourceType` is that type `then` its definition), and any other type
//! on first use into a validator of its own (a `$ref` to that type's
//! definition); all are shared by every request. One compilation shares the
//! datatypes every type uses (Extension alone reaches most of them): eleven
//! validators of their own held 11 MiB, one for the same types 2.3 MiB.
//! The schema's `description`s (1.8 MB of its 3.4 MB) are dropped before it
//! is registered: validation never reads them.
//!
//! Nested resources (`contained`, `Bundle.entry.resource`…) are opaque to a
//! type's schema (patch 4) and validated one by one as their own types, so a
//! type's validator compiles only that type and its datatypes, and a
//! contained resource is reported as its own type instead of as the schema's
//! useless `oneOf` failure. Errors are translated into FHIR terms (element
//! names, FHIR primitive types, allowed codes) with FHIRPath-style
//! expressions, sorted in document order.
//!
//! The pass asks `jsonschema`'s `is_valid` first and collects errors only for
//! a resource that fails it: most resources are valid, and collecting errors
//! costs several times more.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{Draft, PatternOptions, Registry, ValidationError};
use serde_json::Value;
use thiserror::Error;

use super::{Target, ValidationPass};
use crate::fhir::json::json_type_name;
use crate::fhir::outcome::shorten;
use crate::fhir::path::{PathLink, Segment};
use crate::fhir::resource_types::R4_RESOURCE_TYPES;
use crate::fhir::{ElementPath, Issue, IssueSeverity, IssueType, ResourceType};

/// HL7's R4 schema, exactly as published.
const PRISTINE_SCHEMA: &str = include_str!("../../profiles/schema/fhir.schema.json");
/// Sprig's corrections to it, as an RFC 6902 JSON Patch.
const SCHEMA_PATCH: &str = include_str!("../../profiles/schema/fhir.schema.patch.json");
/// The schema's own `id`, which its internal `$ref`s resolve against.
const SCHEMA_URI: &str = "http://hl7.org/fhir/json-schema/4.0";
/// Enumerated values listed in a message before it says "…".
const MAX_LISTED_CODES: usize = 12;

/// The schema could not be loaded or compiled: a build defect, not bad input.
#[derive(Debug, Error)]
pub enum SchemaError {
    /// The embedded schema or patch is not JSON.
    #[error("embedded FHIR schema is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The patch does not apply (the schema is not the pristine one).
    #[error("the schema patch does not apply to the embedded FHIR schema: {0}")]
    Patch(#[from] json_patch::PatchError),
    /// jsonschema refused the schema or a per-type wrapper.
    #[error("cannot compile the FHIR schema for {resource_type}: {message}")]
    Compile {
        /// The type whose validator failed.
        resource_type: String,
        /// jsonschema's explanation.
        message: String,
    },
}

type CompiledValidator = Result<Arc<jsonschema::Validator>, String>;

/// The validator a resource is checked with.
enum Checker<'s> {
    /// The eager types' one.
    Together(&'s jsonschema::Validator),
    /// Its type's own.
    Own(Arc<jsonschema::Validator>),
}

impl std::ops::Deref for Checker<'_> {
    type Target = jsonschema::Validator;

    fn deref(&self) -> &jsonschema::Validator {
        match self {
            Checker::Together(validator) => validator,
            Checker::Own(validator) => validator,
        }
    }
}

/// Removes every `description` member of the schema's objects whose value is
/// a string (its prose; validation never reads it). A property named
/// `description` (`properties.description`, a schema: an object) stays.
fn drop_descriptions(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("description").is_some_and(Value::is_string) {
                map.shift_remove("description");
            }
            for child in map.values_mut() {
                drop_descriptions(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(drop_descriptions),
        _ => {}
    }
}

/// Validates resources against the patched R4 JSON schema.
pub struct SchemaPass {
    registry: Registry<'static>,
    /// The eager types' one validator, and which types it holds: used for a
    /// resource whose `resourceType` is the type it is validated as (its
    /// branch is then the only one that applies, and reports what that
    /// type's own validator would).
    together: Option<(jsonschema::Validator, HashSet<&'static str>)>,
    validators: HashMap<&'static str, OnceLock<CompiledValidator>>,
    /// Which FHIR primitive types use a given regex, to name the type in
    /// pattern errors ("not a valid FHIR dateTime").
    pattern_types: HashMap<String, Vec<String>>,
    /// Property names the schema types as `ResourceList` (`contained`,
    /// `resource`, `outcome`…): where resources nest inside resources.
    nested_resource_properties: HashSet<String>,
}

impl SchemaPass {
    /// Loads and patches the embedded schema and compiles validators for
    /// `eager` types now; the others compile on first use.
    pub fn load(eager: &[ResourceType]) -> Result<Self, SchemaError> {
        let mut schema: Value = serde_json::from_str(PRISTINE_SCHEMA)?;
        let patch: json_patch::Patch = serde_json::from_str(SCHEMA_PATCH)?;
        json_patch::patch(&mut schema, &patch)?;
        drop_descriptions(&mut schema);

        let mut pattern_types: HashMap<String, Vec<String>> = HashMap::new();
        let mut nested_resource_properties = HashSet::new();
        if let Some(definitions) = schema.get("definitions").and_then(Value::as_object) {
            for definition in definitions.values() {
                let properties = definition.get("properties").and_then(Value::as_object);
                for (property, spec) in properties.into_iter().flatten() {
                    let target = spec
                        .get("items")
                        .unwrap_or(spec)
                        .get("$ref")
                        .and_then(Value::as_str);
                    if target == Some("#/definitions/ResourceList") {
                        nested_resource_properties.insert(property.clone());
                    }
                }
            }
            for (name, definition) in definitions {
                if let Some(pattern) = definition.get("pattern").and_then(Value::as_str) {
                    pattern_types
                        .entry(pattern.to_owned())
                        .or_default()
                        .push(name.clone());
                }
            }
        }

        let registry = Registry::new()
            .add(SCHEMA_URI, schema)
            .and_then(|builder| builder.prepare())
            .map_err(|e| SchemaError::Compile {
                resource_type: "(registry)".into(),
                message: e.to_string(),
            })?;
        let validators = R4_RESOURCE_TYPES
            .iter()
            .map(|name| (*name, OnceLock::new()))
            .collect();
        let mut pass = Self {
            registry,
            together: None,
            validators,
            pattern_types,
            nested_resource_properties,
        };
        if !eager.is_empty() {
            pass.together = Some(pass.compile_together(eager)?);
        }
        Ok(pass)
    }

    /// One validator for `types`: `allOf` one branch per type, `if` the
    /// instance's `resourceType` is that type `then` its definition. Draft 7
    /// for `if`/`then` in this wrapper only; the definitions it refers to
    /// are compiled as the schema's own draft 6.
    fn compile_together(
        &self,
        types: &[ResourceType],
    ) -> Result<(jsonschema::Validator, HashSet<&'static str>), SchemaError> {
        let mut names = HashSet::new();
        let mut branches = Vec::new();
        for resource_type in types {
            let Some((&name, _)) = self.validators.get_key_value(resource_type.as_str()) else {
                return Err(SchemaError::Compile {
                    resource_type: resource_type.to_string(),
                    message: "not an R4 resource type".into(),
                });
            };
            if names.insert(name) {
                branches.push(serde_json::json!({
                    "if": {
                        "properties": {"resourceType": {"const": name}},
                        "required": ["resourceType"]
                    },
                    "then": {"$ref": format!("{SCHEMA_URI}#/definitions/{name}")}
                }));
            }
        }
        let validator = jsonschema::options()
            .with_draft(Draft::Draft7)
            .with_registry(&self.registry)
            .with_pattern_options(PatternOptions::regex())
            .build(&serde_json::json!({ "allOf": branches }))
            .map_err(|e| SchemaError::Compile {
                resource_type: types
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                message: e.to_string(),
            })?;
        Ok((validator, names))
    }

    /// `resource`'s validator as a `resource_type`: the eager types' one where
    /// it holds that type and the resource says it is one, else the type's own.
    fn checker<'s>(&'s self, resource_type: &str, resource: &Value) -> Result<Checker<'s>, String> {
        if let Some((validator, types)) = &self.together
            && types.contains(resource_type)
            && resource.get("resourceType").and_then(Value::as_str) == Some(resource_type)
        {
            return Ok(Checker::Together(validator));
        }
        self.validator_for(resource_type).map(Checker::Own)
    }

    fn validator_for(&self, resource_type: &str) -> CompiledValidator {
        let Some(cell) = self.validators.get(resource_type) else {
            return Err(format!("'{resource_type}' is not an R4 resource type"));
        };
        cell.get_or_init(|| {
            let wrapper = serde_json::json!({
                "$ref": format!("{SCHEMA_URI}#/definitions/{resource_type}")
            });
            jsonschema::options()
                .with_draft(Draft::Draft6)
                .with_registry(&self.registry)
                .with_pattern_options(PatternOptions::regex())
                .build(&wrapper)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        })
        .clone()
    }

    /// Validates `resource` as a `resource_type`, reporting locations under
    /// `base` (non-empty for contained resources).
    fn validate_at(
        &self,
        resource_type: &str,
        resource: &Value,
        base: &ElementPath,
        root: &str,
        out: &mut Vec<(ElementPath, Issue)>,
    ) {
        let validator = match self.checker(resource_type, resource) {
            Ok(validator) => validator,
            Err(message) => {
                let issue = Issue::error(
                    IssueType::Exception,
                    "schema-unavailable",
                    format!("The R4 schema for {resource_type} could not be compiled: {message}"),
                )
                .with_severity(IssueSeverity::Fatal);
                out.push((base.clone(), issue));
                return;
            }
        };
        // Most resources are valid: `is_valid` stops at nothing and builds
        // no errors, and costs far less than collecting them. Only a
        // resource that fails it is walked again for its errors.
        if !validator.is_valid(resource) {
            for error in validator.iter_errors(resource) {
                self.translate(&error, base, root, out);
            }
        }
        // Nested resources are opaque to the per-type schema (patch 4):
        // validate each one as its own type, under its own path.
        let mut nested = Vec::new();
        self.find_nested_resources(resource, &PathLink::Root, &mut nested);
        for (path, value) in nested {
            let path = base.join(&path);
            let Some(nested_type) = value.get("resourceType").and_then(Value::as_str) else {
                continue;
            };
            if ResourceType::parse(nested_type).is_ok() {
                self.validate_at(nested_type, value, &path, root, out);
            } else {
                let issue = Issue::error(
                    IssueType::Value,
                    "schema-unknown-resource-type",
                    format!(
                        "{} has resourceType '{nested_type}', which is not a FHIR R4 resource type",
                        path.to_expression(root)
                    ),
                );
                out.push(located(path.key("resourceType"), root, issue));
            }
        }
    }

    /// Every resource nested inside `value` (under a `ResourceList`
    /// property), without descending into them: each is validated on its
    /// own and finds its own nested resources. The path is a linked list on
    /// the stack, made into an [`ElementPath`] only for a resource found.
    fn find_nested_resources<'v>(
        &self,
        value: &'v Value,
        path: &PathLink<'_>,
        out: &mut Vec<(ElementPath, &'v Value)>,
    ) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    // Most properties are primitives: no resource inside, and
                    // no need to hash the name.
                    if !(child.is_object() || child.is_array()) {
                        continue;
                    }
                    let child_path = PathLink::Key(path, key);
                    if !self.nested_resource_properties.contains(key) {
                        self.find_nested_resources(child, &child_path, out);
                        continue;
                    }
                    match child {
                        Value::Array(items) => {
                            for (index, item) in items.iter().enumerate() {
                                if item.is_object() {
                                    out.push((child_path.to_path().index(index), item));
                                }
                            }
                        }
                        Value::Object(_) => out.push((child_path.to_path(), child)),
                        _ => {}
                    }
                }
            }
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    if item.is_object() || item.is_array() {
                        self.find_nested_resources(item, &PathLink::Index(path, index), out);
                    }
                }
            }
            _ => {}
        }
    }

    fn translate(
        &self,
        error: &ValidationError<'_>,
        base: &ElementPath,
        root: &str,
        out: &mut Vec<(ElementPath, Issue)>,
    ) {
        let local = ElementPath::from_json_pointer(error.instance_path().as_str());
        let path = base.join(&local);
        let expression = path.to_expression(root);
        let instance = error.instance();
        let issue = match error.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                for name in unexpected {
                    let hint = if let Some(primitive) = name.strip_prefix('_') {
                        format!(
                            "'{name}' would carry the id and extensions of a primitive element '{primitive}', but there is no such primitive element here"
                        )
                    } else {
                        "check the spelling and case against the FHIR R4 definition; unknown elements are rejected, not dropped".to_owned()
                    };
                    let issue = Issue::error(
                        IssueType::Structure,
                        "schema-unknown-element",
                        format!("Unknown element '{name}' in {expression}: {hint}"),
                    );
                    out.push(located(path.key(name.clone()), root, issue));
                }
                return;
            }
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or_default().to_owned();
                let issue = Issue::error(
                    IssueType::Required,
                    "schema-required",
                    format!("{expression} is missing the required element '{name}'"),
                );
                out.push(located(path.key(name), root, issue));
                return;
            }
            ValidationErrorKind::Type { kind } => {
                let expected = match kind {
                    TypeKind::Single(t) => t.to_string(),
                    TypeKind::Multiple(set) => set
                        .iter()
                        .map(|t| t.to_string())
                        .collect::<Vec<_>>()
                        .join(" or "),
                };
                let hint = match expected.as_str() {
                    "array" => {
                        " (an element that can repeat is always a JSON array in FHIR, even with one item)"
                    }
                    "object" => {
                        " (this element has a complex datatype, so its value is a JSON object, e.g. a Reference is {\"reference\": \"Patient/123\"})"
                    }
                    "string" => " (FHIR JSON writes this primitive as a JSON string)",
                    "boolean" => " (true or false, without quotes)",
                    "number" => " (a JSON number, without quotes)",
                    _ => "",
                };
                Issue::error(
                    IssueType::Structure,
                    "schema-wrong-json-type",
                    format!(
                        "{expression} must be a JSON {expected} but is a JSON {}{hint}",
                        json_type_name(instance)
                    ),
                )
            }
            ValidationErrorKind::Enum { options } => {
                let allowed: Vec<String> = options
                    .as_array()
                    .map(|codes| {
                        codes
                            .iter()
                            .map(|c| {
                                c.as_str()
                                    .map(str::to_owned)
                                    .unwrap_or_else(|| c.to_string())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let listed = if allowed.len() > MAX_LISTED_CODES {
                    format!("{}, …", allowed[..MAX_LISTED_CODES].join(", "))
                } else {
                    allowed.join(", ")
                };
                Issue::error(
                    IssueType::CodeInvalid,
                    "schema-code-invalid",
                    format!(
                        "{} is not a valid code for {expression}; the allowed codes are: {listed}",
                        display_value(instance)
                    ),
                )
            }
            ValidationErrorKind::Pattern { pattern } => {
                let type_name = self
                    .pattern_types
                    .get(pattern)
                    .and_then(|names| names.first())
                    .map(String::as_str)
                    .unwrap_or("value");
                Issue::error(
                    IssueType::Value,
                    "schema-invalid-primitive",
                    format!(
                        "{} is not a valid FHIR {type_name} for {expression}{}",
                        display_value(instance),
                        primitive_hint(type_name)
                    ),
                )
            }
            ValidationErrorKind::Constant { expected_value } => Issue::error(
                IssueType::Value,
                "schema-fixed-value",
                format!(
                    "{expression} must be {expected_value}, not {}",
                    display_value(instance)
                ),
            ),
            _ => Issue::error(
                IssueType::Invalid,
                "schema-invalid",
                // jsonschema's own message, which starts with the instance itself.
                format!(
                    "{expression} is not valid: {}",
                    shorten(&error.to_string(), 200)
                ),
            ),
        };
        out.push(located(path, root, issue));
    }
}

/// A short rendering of an offending value for a message.
fn display_value(value: &Value) -> String {
    let text = match value {
        Value::String(s) => format!("'{s}'"),
        other => other.to_string(),
    };
    shorten(&text, 80)
}

fn primitive_hint(type_name: &str) -> &'static str {
    match type_name {
        "date" => " (expected YYYY, YYYY-MM or YYYY-MM-DD)",
        "dateTime" => {
            " (expected YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss with a time zone, e.g. 2026-11-21T09:30:00+00:00)"
        }
        "instant" => {
            " (expected YYYY-MM-DDThh:mm:ss with a time zone, e.g. 2026-11-21T09:30:00.000Z)"
        }
        "time" => " (expected hh:mm:ss)",
        "id" => " (1 to 64 characters from A-Z, a-z, 0-9, '-' and '.')",
        "code" => " (no leading, trailing or repeated whitespace)",
        "uri" | "url" | "canonical" => " (no whitespace)",
        "oid" => " (expected urn:oid: followed by dotted numbers)",
        "uuid" => " (expected urn:uuid: followed by a lower-case UUID)",
        "positiveInt" => " (an integer of 1 or more)",
        "unsignedInt" => " (an integer of 0 or more)",
        "integer" => " (a whole number)",
        "decimal" => " (a decimal number)",
        _ => "",
    }
}

impl ValidationPass for SchemaPass {
    fn name(&self) -> &'static str {
        "r4-json-schema"
    }

    fn check(&self, target: &Target<'_>, resource: &Value) -> Vec<Issue> {
        let mut located = Vec::new();
        let root = target.resource_type.as_str();
        self.validate_at(root, resource, &ElementPath::root(), root, &mut located);
        sort_in_document_order(&mut located, resource);
        let mut issues: Vec<Issue> = located.into_iter().map(|(_, issue)| issue).collect();
        issues.dedup();
        issues
    }
}

/// `issue` located at `path`: the path is kept for ordering, the
/// expression goes into the issue.
fn located(path: ElementPath, root: &str, issue: Issue) -> (ElementPath, Issue) {
    let expression = path.to_expression(root);
    (path, issue.at(expression))
}

/// Orders issues as their elements appear in the document (the order the
/// sender wrote them in), which is how a developer reads the message.
/// An element the document lacks (a missing required one) sorts after its
/// present siblings.
fn sort_in_document_order(issues: &mut [(ElementPath, Issue)], document: &Value) {
    let position = |path: &ElementPath| -> Vec<usize> {
        let mut node = Some(document);
        path.segments()
            .iter()
            .map(|segment| match (segment, node) {
                (Segment::Key(k), Some(Value::Object(map))) => {
                    node = map.get(&**k);
                    map.keys()
                        .position(|key| key.as_str() == &**k)
                        .unwrap_or(usize::MAX)
                }
                (Segment::Index(i), Some(Value::Array(items))) => {
                    node = items.get(*i);
                    *i
                }
                _ => {
                    node = None;
                    usize::MAX
                }
            })
            .collect()
    };
    issues.sort_by_cached_key(|(path, _)| position(path));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::LazyLock;

    static PASS: LazyLock<SchemaPass> =
        LazyLock::new(|| SchemaPass::load(&[ResourceType::SERVICE_REQUEST]).expect("schema loads"));

    fn check(resource: Value) -> Vec<(String, String, &'static str)> {
        let rt =
            ResourceType::parse(resource["resourceType"].as_str().expect("type")).expect("known");
        let target = Target {
            resource_type: rt,
            profiles: &[],
        };
        PASS.check(&target, &resource)
            .into_iter()
            .map(|i| (i.expression.unwrap_or_default(), i.message, i.message_id))
            .collect()
    }

    fn minimal() -> Value {
        json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
               "subject": {"reference": "Patient/1"}})
    }

    #[test]
    fn a_minimal_service_request_is_structurally_valid() {
        assert!(check(minimal()).is_empty());
    }

    #[test]
    fn unknown_elements_are_named() {
        let mut sr = minimal();
        sr["priorty"] = json!("routine");
        let issues = check(sr);
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].0, "ServiceRequest.priorty");
        assert_eq!(issues[0].2, "schema-unknown-element");
    }

    #[test]
    fn patches_are_applied() {
        // Patch 3: a complex element given as a string is refused.
        let mut sr = minimal();
        sr["subject"] = json!("Patient/1");
        let issues = check(sr);
        assert_eq!(issues[0].0, "ServiceRequest.subject");
        assert!(issues[0].1.contains("JSON object"), "{issues:?}");
        // Patch 2: a no-break space in a string is fine.
        let mut sr = minimal();
        sr["requester"] = json!({"display": "Dr A\u{a0}Smith"});
        assert!(check(sr).is_empty());
    }

    #[test]
    fn bad_primitives_name_their_type_and_place() {
        let mut sr = minimal();
        sr["authoredOn"] = json!("21/11/2026");
        sr["note"] = json!([{"text": "ok"}, {"text": "x", "time": "yesterday"}]);
        let issues = check(sr);
        assert_eq!(issues.len(), 2, "{issues:?}");
        assert_eq!(issues[0].0, "ServiceRequest.authoredOn");
        assert!(issues[0].1.contains("dateTime"));
        assert_eq!(issues[1].0, "ServiceRequest.note[1].time");
    }

    #[test]
    fn codes_and_arrays_are_checked() {
        let mut sr = minimal();
        // R4's schema types ServiceRequest.status as a plain code (its
        // required binding is the profile validator's job), so only the code
        // syntax is checked here; Patient.gender is an enum in the schema.
        sr["status"] = json!("on  hold");
        sr["note"] = json!({"text": "one note"});
        sr["contained"] = json!([{"resourceType": "Patient", "gender": "bloke"}]);
        let issues = check(sr);
        assert_eq!(issues.len(), 3, "{issues:?}");
        assert_eq!(issues[0].0, "ServiceRequest.status");
        assert!(issues[0].1.contains("FHIR code"), "{issues:?}");
        assert_eq!(issues[2].0, "ServiceRequest.contained[0].gender");
        assert!(issues[2].1.contains("female"), "{issues:?}");
        assert_eq!(issues[2].2, "schema-code-invalid");
        assert_eq!(issues[1].0, "ServiceRequest.note");
        assert!(issues[1].1.contains("array"));
    }

    #[test]
    fn contained_resources_are_validated_as_their_own_type() {
        let mut sr = minimal();
        sr["contained"] = json!([
            {"resourceType": "Patient", "id": "p", "birthDate": "1970-01-01"},
            {"resourceType": "Patient", "id": "q", "gender": "bloke", "nmae": []}
        ]);
        let issues = check(sr);
        let places: Vec<&str> = issues.iter().map(|i| i.0.as_str()).collect();
        assert_eq!(
            places,
            vec![
                "ServiceRequest.contained[1].gender",
                "ServiceRequest.contained[1].nmae"
            ]
        );
    }

    #[test]
    fn the_resource_type_list_matches_the_schema() {
        let schema: Value = serde_json::from_str(PRISTINE_SCHEMA).expect("schema");
        let mut from_schema: Vec<&str> = schema["discriminator"]["mapping"]
            .as_object()
            .expect("mapping")
            .keys()
            .map(String::as_str)
            .collect();
        from_schema.sort_unstable();
        assert_eq!(from_schema, R4_RESOURCE_TYPES);
    }

    /// The eager types' one validator reports exactly what each type's own
    /// validator does, valid or not, nested resources included; and a
    /// resource whose `resourceType` is not the type it is checked as is
    /// still checked as that type.
    #[test]
    fn the_eager_types_validator_reports_what_each_types_own_does() {
        let types = [
            ResourceType::SERVICE_REQUEST,
            ResourceType::BUNDLE,
            ResourceType::named("Patient"),
            ResourceType::named("Task"),
            ResourceType::named("Observation"),
            ResourceType::named("Organization"),
            ResourceType::named("MessageHeader"),
        ];
        let together = SchemaPass::load(&types).expect("schema loads");
        assert!(together.together.is_some());
        let own = SchemaPass::load(&[]).expect("schema loads");
        let examples = [
            include_str!("../../examples/referral-servicerequest.json"),
            include_str!("../../examples/referral-transaction-bundle.json"),
            include_str!("../../examples/referral-message-bundle.json"),
            include_str!("../../examples/patient.json"),
            include_str!("../../examples/task-accepted.json"),
            include_str!("../../examples/observation-swemwbs.json"),
            include_str!("../../examples/gp-practice.json"),
        ];
        let mut resources = Vec::new();
        for text in examples {
            let valid: Value = serde_json::from_str(text).expect("example");
            resources.push(valid.clone());
            // Unknown elements, wrong JSON types, bad primitives and codes, at the
            // top and inside every object one level down (a Bundle's entries).
            let mut broken = valid.clone();
            broken["unknownElement"] = json!(1);
            broken["meta"] = json!({"lastUpdated": "yesterday", "tag": {"code": 1}});
            broken["id"] = json!("an id with spaces");
            resources.push(broken);
            let mut nested = valid;
            if let Some(entries) = nested.get_mut("entry").and_then(Value::as_array_mut) {
                for entry in entries {
                    entry["resource"]["text"] = json!({"status": "bogus", "div": 3});
                    entry["resource"]["identifier"] = json!("not an array");
                }
            }
            nested["extension"] = json!([{"url": 5, "valueBoolean": "yes"}]);
            resources.push(nested);
        }
        let mut invalid = 0;
        for resource in &resources {
            let name = resource["resourceType"].as_str().expect("type");
            let rt = ResourceType::parse(name).expect("known");
            assert!(
                together
                    .together
                    .as_ref()
                    .is_some_and(|(_, t)| t.contains(name))
            );
            let target = Target {
                resource_type: rt,
                profiles: &[],
            };
            let expected = own.check(&target, resource);
            invalid += usize::from(!expected.is_empty());
            assert_eq!(together.check(&target, resource), expected, "{resource}");
        }
        assert!(invalid >= 14, "the broken resources are refused: {invalid}");
        // Checked as a Patient, a resource saying it is a Task is refused as
        // the Patient validator refuses it.
        let task = json!({"resourceType": "Task", "status": "requested", "intent": "order"});
        let target = Target {
            resource_type: ResourceType::named("Patient"),
            profiles: &[],
        };
        let expected = own.check(&target, &task);
        assert!(!expected.is_empty());
        assert_eq!(together.check(&target, &task), expected);
    }

    #[test]
    fn descriptions_are_dropped_but_not_properties_so_named() {
        let mut schema = json!({"description": "prose", "properties": {
            "description": {"description": "more prose", "type": "string"}}});
        drop_descriptions(&mut schema);
        assert_eq!(
            schema,
            json!({"properties": {"description": {"type": "string"}}})
        );
    }

    #[test]
    fn other_types_compile_on_first_use() {
        let issues =
            check(json!({"resourceType": "Task", "status": "requested", "intent": "order"}));
        assert!(issues.is_empty(), "{issues:?}");
    }
}
