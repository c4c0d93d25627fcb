//! Validation of parsed resources: pure functions from a resource to a list
//! of [`Issue`]s.
//!
//! Validation runs as a sequence of passes behind one interface
//! ([`ValidationPass`]): today the structural pass against HL7's R4 JSON
//! schema ([`schema::SchemaPass`]); the profile validator (StructureDefinitions,
//! slicing, bindings, invariants) plugs in after it. A pass never does I/O
//! and never fails: whatever goes wrong becomes an issue.
//!
//! Architecture invariant: nothing here knows about HTTP, storage or
//! delivery.

pub mod profile;
pub mod schema;

use serde_json::Value;

use crate::fhir::resource::check_resource_type;
use crate::fhir::{Issue, IssueType, ResourceType};

/// The base definition of every core type; the only profiles Sprig holds yet.
pub const CORE_PROFILE_PREFIX: &str = "http://hl7.org/fhir/StructureDefinition/";

/// One stage of validation.
pub trait ValidationPass: Send + Sync {
    /// A short name for logs and benchmarks.
    fn name(&self) -> &'static str;

    /// Every problem this pass finds in `resource` (a JSON object of type
    /// `resource_type`). A `Value` rather than a map because that is what
    /// the JSON schema crate validates: no pass has to copy the resource.
    fn check(&self, resource_type: ResourceType, resource: &Value) -> Vec<Issue>;
}

/// The validation passes, run in order.
pub struct Validator {
    passes: Vec<Box<dyn ValidationPass>>,
}

impl Validator {
    /// A validator running `passes` in order.
    pub fn new(passes: Vec<Box<dyn ValidationPass>>) -> Self {
        Self { passes }
    }

    /// Validates a parsed resource whose type is not yet known: checks its
    /// `resourceType` (against `expected`, when the caller named a type) and
    /// the requested `profile`, then runs the passes. `$validate` and
    /// `sprig validate` use this, so they report what a create would.
    pub fn validate_resource(
        &self,
        resource: &Value,
        expected: Option<ResourceType>,
        profile: Option<&str>,
    ) -> Vec<Issue> {
        let Value::Object(map) = resource else {
            return vec![Issue::error(
                IssueType::Structure,
                "json-not-object",
                "A FHIR resource must be a JSON object with a resourceType",
            )];
        };
        let resource_type = match check_resource_type(map, expected) {
            Ok(resource_type) => resource_type,
            Err(issue) => return vec![issue],
        };
        if let Some(profile) = profile {
            let base = format!("{CORE_PROFILE_PREFIX}{resource_type}");
            if profile.split('|').next() != Some(base.as_str()) {
                return vec![
                    Issue::error(
                        IssueType::NotSupported,
                        "validate-unknown-profile",
                        format!(
                            "Profile {profile} is not one Sprig holds; a {resource_type} can be validated against {base}"
                        ),
                    )
                    .at(format!("{resource_type}.meta.profile")),
                ];
            }
        }
        self.validate(resource_type, resource)
    }

    /// Runs the passes in order. A later pass only runs when the earlier ones
    /// found no errors: a profile check of structurally broken content would
    /// bury the real problem under consequences of it.
    pub fn validate(&self, resource_type: ResourceType, resource: &Value) -> Vec<Issue> {
        let mut issues = Vec::new();
        for pass in &self.passes {
            issues.extend(pass.check(resource_type, resource));
            if issues.iter().any(|issue| issue.severity.is_error()) {
                break;
            }
        }
        issues
    }
}
