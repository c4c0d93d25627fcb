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

use serde_json::{Map, Value};

use crate::fhir::{Issue, ResourceType};

/// One stage of validation.
pub trait ValidationPass: Send + Sync {
    /// A short name for logs and benchmarks.
    fn name(&self) -> &'static str;

    /// Every problem this pass finds in `resource` (of type `resource_type`).
    fn check(&self, resource_type: ResourceType, resource: &Map<String, Value>) -> Vec<Issue>;
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

    /// Runs the passes in order. A later pass only runs when the earlier ones
    /// found no errors: a profile check of structurally broken content would
    /// bury the real problem under consequences of it.
    pub fn validate(
        &self,
        resource_type: ResourceType,
        resource: &Map<String, Value>,
    ) -> Vec<Issue> {
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
