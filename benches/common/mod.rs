//! Setup shared by the benches (`mod common;`): the validator as `sprig serve`
//! builds it and the strict parse + validation a write runs before storage.

use serde_json::Value;
use sprig::fhir::ResourceType;
use sprig::fhir::json::{JsonLimits, parse_resource};
use sprig::validation::profile::ProfilePass;
use sprig::validation::schema::SchemaPass;
use sprig::validation::{Target, Validator};

/// The schema pass (`eager` types compiled now) then the profile pass with
/// every definition and invariant, as the server runs them.
pub fn validator(eager: &[ResourceType]) -> Validator {
    Validator::new(vec![
        Box::new(SchemaPass::load(eager).expect("schema loads")),
        Box::new(ProfilePass::load().expect("definitions load")),
    ])
}

/// What a write does before storage (`api::pipeline::check`): Sprig's
/// strict parse of `body`, then validation as `expected` against `profile`
/// (the resource's base definition alone when `None`). Panics on an error
/// issue: the benches time the valid path.
pub fn parse_and_validate(
    validator: &Validator,
    body: &[u8],
    expected: ResourceType,
    profile: Option<&str>,
) -> Value {
    let resource = parse_resource(body, JsonLimits::default()).expect("valid FHIR JSON");
    let (resource_type, profiles) = validator
        .target_of(&resource, Some(expected), profile)
        .expect("a held profile of the expected type");
    let resource = Value::Object(resource);
    let issues = validator.validate(
        &Target {
            resource_type,
            profiles: &profiles,
        },
        &resource,
    );
    assert!(!issues.iter().any(|i| i.severity.is_error()), "{issues:?}");
    resource
}
