//! Validation of parsed resources: pure functions from a resource to a list
//! of [`Issue`]s.
//!
//! Validation runs as a sequence of passes behind one interface
//! ([`ValidationPass`]), in order, stopping after a pass that found errors:
//! the structural pass against HL7's R4 JSON schema ([`schema::SchemaPass`]),
//! then the profile pass against StructureDefinition snapshots
//! ([`profile::ProfilePass`]: cardinality, slicing, bindings, invariants).
//! A pass never does I/O and never fails: whatever goes wrong, even a schema
//! that fails to compile, becomes an issue.
//!
//! Architecture invariant: nothing here knows about HTTP, storage or
//! delivery.

pub mod profile;
pub mod schema;
pub mod size;

use std::collections::HashMap;

use serde_json::Value;

use crate::fhir::resource::check_resource_type;
use crate::fhir::{Issue, IssueType, ResourceType};

/// The base definition of every core type.
pub const CORE_PROFILE_PREFIX: &str = "http://hl7.org/fhir/StructureDefinition/";

/// The profiles resources sent to Sprig are held to when they name none:
/// (resource type, canonical URL). Configurable (`validation.default_profiles`).
pub const DEFAULT_PROFILES: &[(&str, &str)] = &[("ServiceRequest", REFERRAL_PROFILE)];

/// A social prescribing referral (ServiceRequest): what starts the workflow.
pub const REFERRAL_PROFILE: &str =
    "https://sprig-gateway.org/fhir/StructureDefinition/sprig-referral";
/// A referral transaction Bundle: what `POST /fhir` takes.
pub const REFERRAL_BUNDLE_PROFILE: &str =
    "https://sprig-gateway.org/fhir/StructureDefinition/sprig-referral-bundle";
/// A BaRS-style referral message: what `$process-message` takes.
pub const REFERRAL_MESSAGE_PROFILE: &str =
    "https://sprig-gateway.org/fhir/StructureDefinition/sprig-referral-message";
/// The Task that reports a referral's progress.
pub const TASK_PROFILE: &str =
    "https://sprig-gateway.org/fhir/StructureDefinition/sprig-referral-task";

/// What a resource is validated as.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Its type, already checked against `resourceType`.
    pub resource_type: ResourceType,
    /// Profiles it must meet besides those it names in `meta.profile`
    /// (an explicitly requested one, or the configured default); all held.
    pub profiles: &'a [String],
}

/// One stage of validation.
pub trait ValidationPass: Send + Sync {
    /// A short name for logs and benchmarks.
    fn name(&self) -> &'static str;

    /// Every problem this pass finds in `resource` (a JSON object of type
    /// `target.resource_type`). A `Value` rather than a map because that is
    /// what the JSON schema crate validates: no pass has to copy the resource.
    fn check(&self, target: &Target<'_>, resource: &Value) -> Vec<Issue>;

    /// The resource type of a profile this pass holds, by canonical URL.
    fn profile_type(&self, _url: &str) -> Option<&str> {
        None
    }
}

/// The validation passes, run in order, and which profile applies when a
/// resource names none.
pub struct Validator {
    passes: Vec<Box<dyn ValidationPass>>,
    default_profiles: HashMap<ResourceType, String>,
}

impl Validator {
    /// A validator running `passes` in order; a resource is checked against
    /// the base definition of its type and the profiles it names.
    pub fn new(passes: Vec<Box<dyn ValidationPass>>) -> Self {
        Self {
            passes,
            default_profiles: HashMap::new(),
        }
    }

    /// Sets the profile each resource type is held to when it names none in
    /// `meta.profile` (the gateway's write path: a ServiceRequest is a
    /// social prescribing referral unless it says otherwise). Fails with the
    /// first URL that is not a held profile of that type.
    pub fn with_default_profiles(
        mut self,
        defaults: HashMap<ResourceType, String>,
    ) -> Result<Self, UnknownProfile> {
        for (resource_type, url) in &defaults {
            if self.profile_type(url) != Some(resource_type.as_str()) {
                return Err(UnknownProfile {
                    url: url.clone(),
                    resource_type: *resource_type,
                });
            }
        }
        self.default_profiles = defaults;
        Ok(self)
    }

    /// The default profile of a resource type, if one is configured.
    pub fn default_profile(&self, resource_type: ResourceType) -> Option<&str> {
        self.default_profiles
            .get(&resource_type)
            .map(String::as_str)
    }

    /// The resource type of a profile Sprig holds (canonical URL), `None` when it holds none.
    pub fn profile_type(&self, url: &str) -> Option<&str> {
        self.passes.iter().find_map(|pass| pass.profile_type(url))
    }

    /// Whether a resource names, in `meta.profile`, a profile Sprig holds
    /// for its type.
    fn names_a_held_profile(
        &self,
        resource: &serde_json::Map<String, Value>,
        resource_type: ResourceType,
    ) -> bool {
        resource
            .get("meta")
            .and_then(|meta| meta.get("profile"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .any(|url| self.profile_type(profile::canonical(url)) == Some(resource_type.as_str()))
    }

    /// Validates a parsed resource whose type is not yet known: checks its
    /// `resourceType` (against `expected`, when the caller named a type) and
    /// the requested `profile`, then runs the passes. `$validate`, `sprig
    /// validate` and every write use this, so they all report the same.
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
        match self.target_of(map, expected, profile) {
            Ok((resource_type, profiles)) => self.validate(
                &Target {
                    resource_type,
                    profiles: &profiles,
                },
                resource,
            ),
            Err(issue) => vec![issue],
        }
    }

    /// What a resource is validated as: its type (checked against
    /// `expected`) and the profiles it must meet besides those it names:
    /// the requested `profile` (which must be held and of its type), or,
    /// when it names no profile Sprig holds for its type (none at all, or
    /// only ones Sprig does not hold, such as BaRS's or UK Core's, which are
    /// reported as not checked), the configured default for its type. The
    /// error is the one issue that makes validating pointless.
    pub fn target_of(
        &self,
        resource: &serde_json::Map<String, Value>,
        expected: Option<ResourceType>,
        profile: Option<&str>,
    ) -> Result<(ResourceType, Vec<String>), Issue> {
        let resource_type = check_resource_type(resource, expected)?;
        let Some(profile) = profile else {
            let default = (!self.names_a_held_profile(resource, resource_type))
                .then(|| self.default_profiles.get(&resource_type).cloned())
                .flatten();
            return Ok((resource_type, default.into_iter().collect()));
        };
        let url = profile::canonical(profile);
        match self.profile_type(url) {
            Some(of) if of == resource_type.as_str() => Ok((resource_type, vec![url.to_owned()])),
            Some(of) => Err(Issue::error(
                IssueType::Invalid,
                "validate-profile-wrong-type",
                format!("Profile {url} constrains {of}, not {resource_type}"),
            )),
            None => Err(Issue::error(
                IssueType::NotSupported,
                "validate-unknown-profile",
                format!(
                    "Profile {profile} is not one Sprig holds; the base definition is {CORE_PROFILE_PREFIX}{resource_type}"
                ),
            )),
        }
    }

    /// Runs the passes in order. A later pass only runs when the earlier ones
    /// found no errors: a profile check of structurally broken content would
    /// bury the real problem under consequences of it.
    pub fn validate(&self, target: &Target<'_>, resource: &Value) -> Vec<Issue> {
        let mut issues = Vec::new();
        for pass in &self.passes {
            issues.extend(pass.check(target, resource));
            if issues.iter().any(|issue| issue.severity.is_error()) {
                break;
            }
        }
        issues
    }
}

/// A configured default profile that is not held, or not of its type.
#[derive(Debug, thiserror::Error)]
#[error(
    "the default profile for {resource_type}, {url}, is not a {resource_type} profile Sprig holds"
)]
pub struct UnknownProfile {
    /// The configured URL.
    pub url: String,
    /// The type it was configured for.
    pub resource_type: ResourceType,
}
