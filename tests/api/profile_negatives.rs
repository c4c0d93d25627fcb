//! Sprig's own profiles, one constraint at a time: every case in
//! `tests/fixtures/profile-negatives.json` takes a valid example from
//! `examples/`, alters it in exactly one place, and names the issue Sprig
//! must report (severity and FHIRPath expression; for an invariant, its key).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;
use sprig::config::Settings;
use sprig::fhir::ResourceType;
use sprig::validation::Validator;
use sprig::validation::profile::ProfilePass;
use sprig::validation::schema::SchemaPass;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    example: String,
    #[serde(default)]
    profile: Option<String>,
    patch: json_patch::Patch,
    expect: Expected,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    severity: String,
    expression: String,
    #[serde(default)]
    constraint: Option<String>,
}

/// The validator as `sprig serve` builds it, default profiles included.
fn validator() -> Validator {
    let defaults = Settings::default()
        .validation
        .default_profiles()
        .expect("default profiles");
    Validator::new(vec![
        Box::new(SchemaPass::load(&[]).expect("schema")),
        Box::new(ProfilePass::load().expect("definitions")),
    ])
    .with_default_profiles(defaults)
    .expect("default profiles are held")
}

fn example(root: &Path, file: &str) -> Value {
    let text = std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Every example meets its Sprig profile: the one it names, or the default
/// profile of its type.
#[test]
fn every_example_meets_its_profile() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let validator = validator();
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("examples")).expect("examples folder") {
        let path = entry.expect("entry").path();
        let name = path.to_string_lossy().into_owned();
        let resource = example(root, &name);
        let named = resource["meta"]["profile"][0].as_str().map(str::to_owned);
        let resource_type = ResourceType::parse(resource["resourceType"].as_str().expect("type"))
            .expect("an R4 type");
        let profile = named.or(validator.default_profile(resource_type).map(str::to_owned));
        assert!(
            profile.is_some_and(|p| p.starts_with("https://sprig-gateway.org/fhir/")),
            "{name} is held to no Sprig profile"
        );
        let issues = validator.validate_resource(&resource, None, None);
        let errors: Vec<String> = issues
            .iter()
            .filter(|i| i.severity.is_error() || i.severity.code() == "warning")
            .map(|i| format!("{} {:?}: {}", i.severity.code(), i.expression, i.message))
            .collect();
        assert!(errors.is_empty(), "{name}:\n{}", errors.join("\n"));
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} examples");
}

#[test]
fn each_constraint_of_each_profile_is_enforced() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cases: Vec<Case> = serde_json::from_str(
        &std::fs::read_to_string(root.join("tests/fixtures/profile-negatives.json"))
            .expect("negative cases"),
    )
    .expect("negative cases parse");
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    let validator = validator();
    let mut failures = Vec::new();
    for case in &cases {
        let mut resource = example(root, &case.example);
        json_patch::patch(&mut resource, &case.patch)
            .unwrap_or_else(|e| panic!("{}: the patch does not apply: {e}", case.name));
        let issues = validator.validate_resource(&resource, None, case.profile.as_deref());
        let found = issues.iter().any(|issue| {
            issue.severity.code() == case.expect.severity
                && issue.expression.as_deref() == Some(case.expect.expression.as_str())
                && case.expect.constraint.as_ref().is_none_or(|key| {
                    issue.message_id == "invariant"
                        && issue.message.starts_with(&format!("{key}: "))
                })
        });
        if !found {
            let got: Vec<String> = issues
                .iter()
                .map(|i| {
                    format!(
                        "{} {} {} [{}]",
                        i.severity.code(),
                        i.expression.as_deref().unwrap_or("-"),
                        i.message_id,
                        i.source.as_deref().unwrap_or("")
                    )
                })
                .collect();
            failures.push(format!(
                "{}: expected {} at {}{}, got {got:?}",
                case.name,
                case.expect.severity,
                case.expect.expression,
                case.expect
                    .constraint
                    .as_ref()
                    .map(|k| format!(" ({k})"))
                    .unwrap_or_default()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases not reported as expected:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
