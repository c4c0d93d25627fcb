//! Parse + structural validation of the sample referral, against plain
//! `serde_json` parsing as the baseline measured in the same run.
//!
//! Run: `cargo bench --bench parse_validate`

// Tests and benches may unwrap: a failed assumption there is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::LazyLock;

use serde_json::Value;
use sprig::fhir::ResourceType;
use sprig::fhir::json::{JsonLimits, parse_resource};
use sprig::validation::profile::ProfilePass;
use sprig::validation::schema::SchemaPass;
use sprig::validation::{REFERRAL_PROFILE, Target, ValidationPass};

mod common;

/// The allocator the `sprig` binary uses (`sprig::allocator`), so that the
/// figures are the binary's.
#[global_allocator]
static GLOBAL: sprig::allocator::Allocator = sprig::allocator::Allocator {};

fn main() {
    divan::main();
}

/// Validated as a ServiceRequest against the base definition.
const AS_SERVICE_REQUEST: Target<'static> = Target {
    resource_type: ResourceType::SERVICE_REQUEST,
    profiles: &[],
};
static REFERRAL: &[u8] = include_bytes!("../examples/referral-servicerequest.json");
static SCHEMA: LazyLock<SchemaPass> =
    LazyLock::new(|| SchemaPass::load(&[ResourceType::SERVICE_REQUEST]).expect("schema loads"));

/// Baseline: serde_json into a `Value`, no FHIR rules.
#[divan::bench]
fn baseline_serde_json_parse() -> Value {
    serde_json::from_slice(divan::black_box(REFERRAL)).expect("valid JSON")
}

/// Sprig's strict FHIR JSON reader alone.
#[divan::bench]
fn strict_fhir_parse() -> usize {
    parse_resource(divan::black_box(REFERRAL), JsonLimits::default())
        .expect("valid FHIR JSON")
        .len()
}

/// Strict parse plus the R4 JSON schema pass: what a create costs before storage.
#[divan::bench]
fn strict_parse_and_schema_validate(bencher: divan::Bencher) {
    LazyLock::force(&SCHEMA);
    bencher.bench(|| {
        let resource =
            parse_resource(divan::black_box(REFERRAL), JsonLimits::default()).expect("valid");
        let issues = SCHEMA.check(&AS_SERVICE_REQUEST, &Value::Object(resource));
        assert!(issues.is_empty());
        issues.len()
    });
}

static PROFILES: LazyLock<ProfilePass> =
    LazyLock::new(|| ProfilePass::load().expect("definitions load"));

/// The profile pass alone (R4 core ServiceRequest and the contained resources' definitions).
#[divan::bench]
fn profile_validate(bencher: divan::Bencher) {
    let resource = Value::Object(parse_resource(REFERRAL, JsonLimits::default()).expect("valid"));
    LazyLock::force(&PROFILES);
    bencher.bench(|| {
        PROFILES
            .check(&AS_SERVICE_REQUEST, divan::black_box(&resource))
            .len()
    });
}

/// What a create costs before storage: strict parse, schema pass, profile pass.
#[divan::bench]
fn strict_parse_schema_and_profile(bencher: divan::Bencher) {
    let validator = common::validator(&[ResourceType::SERVICE_REQUEST]);
    bencher.bench(|| {
        common::parse_and_validate(
            &validator,
            divan::black_box(REFERRAL),
            ResourceType::SERVICE_REQUEST,
            None,
        )
        .is_object()
    });
}

/// One-off cost: loading and compiling every bundled StructureDefinition
/// (R4 core and Sprig's) and invariant.
#[divan::bench(sample_count = 5, sample_size = 1)]
fn profile_definitions_load() -> usize {
    ProfilePass::load()
        .expect("definitions load")
        .definition_count()
}

/// Schema validation of an invalid referral (four errors): the error path.
#[divan::bench]
fn schema_validate_invalid(bencher: divan::Bencher) {
    let mut broken: Value = serde_json::from_slice(REFERRAL).expect("valid");
    broken["authoredOn"] = Value::String("tomorrow".into());
    broken["priorty"] = Value::String("routine".into());
    broken["subject"] = Value::String("Patient/1".into());
    broken["contained"][0]["gender"] = Value::String("F".into());
    LazyLock::force(&SCHEMA);
    bencher.bench(|| {
        SCHEMA
            .check(&AS_SERVICE_REQUEST, divan::black_box(&broken))
            .len()
    });
}

/// One-off cost: loading, patching and compiling the ServiceRequest validator.
#[divan::bench(sample_count = 5, sample_size = 1)]
fn schema_load_and_compile_service_request() -> SchemaPass {
    SchemaPass::load(&[ResourceType::SERVICE_REQUEST]).expect("schema loads")
}

/// What a create of the sample referral costs before storage, as the gateway
/// runs it: strict parse, schema pass, profile pass against sprig-referral
/// (slicing, bindings, invariants of the referral and its contained
/// resources).
#[divan::bench]
fn strict_parse_and_validate_as_referral(bencher: divan::Bencher) {
    let validator = common::validator(&[ResourceType::SERVICE_REQUEST]);
    bencher.bench(|| {
        common::parse_and_validate(
            &validator,
            divan::black_box(REFERRAL),
            ResourceType::SERVICE_REQUEST,
            Some(REFERRAL_PROFILE),
        )
        .is_object()
    });
}

/// A transaction Bundle of `entries` entries, half Patients and half
/// Observations referring to them by `urn:uuid:`: every reference resolves
/// against the Bundle, so a quadratic lookup would show as time per entry
/// growing with the size.
fn bundle_of(entries: usize) -> Value {
    let entry = |i: usize| {
        let full_url = format!("urn:uuid:00000000-0000-4000-8000-{i:012}");
        let resource = if i.is_multiple_of(2) {
            serde_json::json!({"resourceType": "Patient", "name": [{"family": format!("P{i}")}]})
        } else {
            serde_json::json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "subject": {"reference": format!("urn:uuid:00000000-0000-4000-8000-{:012}", i - 1)},
                "valueInteger": i})
        };
        let resource_type = resource["resourceType"].clone();
        serde_json::json!({"fullUrl": full_url, "resource": resource,
                           "request": {"method": "POST", "url": resource_type}})
    };
    serde_json::json!({"resourceType": "Bundle", "type": "transaction",
                       "entry": (0..entries).map(entry).collect::<Vec<_>>()})
}

/// Profile pass over Bundles of 1,000 and 10,000 entries: linear if the
/// second takes about ten times the first.
#[divan::bench(args = [1_000, 10_000], sample_count = 10)]
fn bundle_profile_validate(bencher: divan::Bencher, entries: usize) {
    let bundle = bundle_of(entries);
    LazyLock::force(&PROFILES);
    let target = Target {
        resource_type: ResourceType::parse("Bundle").expect("type"),
        profiles: &[],
    };
    bencher.bench(|| {
        let issues = PROFILES.check(&target, divan::black_box(&bundle));
        assert!(
            !issues.iter().any(|i| i.severity.is_error()),
            "{:?}",
            &issues[..1]
        );
        issues.len()
    });
}

static BUNDLE_20: &[u8] = include_bytes!("data/referral-bundle-20.json");

/// The 20-entry referral Bundle, stage by stage: plain serde_json parsing
/// (the baseline), Sprig's strict parse alone, the schema pass alone and the
/// profile pass (with invariants) alone.
#[divan::bench(args = ["serde_json", "parse", "schema", "profiles"])]
fn bundle_20_stage(bencher: divan::Bencher, stage: &str) {
    let bundle = Value::Object(parse_resource(BUNDLE_20, JsonLimits::default()).expect("valid"));
    let target = Target {
        resource_type: ResourceType::parse("Bundle").expect("type"),
        profiles: &[],
    };
    LazyLock::force(&SCHEMA);
    LazyLock::force(&PROFILES);
    match stage {
        "serde_json" => bencher.bench(|| {
            serde_json::from_slice::<Value>(divan::black_box(BUNDLE_20))
                .expect("valid")
                .is_object()
        }),
        "parse" => bencher.bench(|| {
            parse_resource(divan::black_box(BUNDLE_20), JsonLimits::default())
                .expect("valid")
                .len()
        }),
        "schema" => bencher.bench(|| SCHEMA.check(&target, divan::black_box(&bundle)).len()),
        _ => bencher.bench(|| PROFILES.check(&target, divan::black_box(&bundle)).len()),
    }
}

/// A transaction Bundle: the sample referral (claiming sprig-referral) whose supportingInfo
/// holds `references` `urn:uuid:` references to Observation entries and one to the Consent
/// entry. sprig-ref-1 calls `resolve()` once per supportingInfo, so the cost of a `resolve()`
/// that indexes the Bundle on every call grows with references × entries.
fn referral_bundle_with_supporting_info(references: usize) -> Value {
    let uuid = |i: usize| format!("urn:uuid:00000000-0000-4000-8000-{i:012}");
    let mut referral: Value = serde_json::from_slice(REFERRAL).expect("valid");
    referral["meta"] = serde_json::json!({"profile": [REFERRAL_PROFILE]});
    let mut supporting: Vec<Value> = (1..=references)
        .map(|i| serde_json::json!({"reference": uuid(i)}))
        .collect();
    supporting.push(serde_json::json!({"reference": uuid(0)}));
    referral["supportingInfo"] = Value::Array(supporting);
    let mut entries = vec![
        serde_json::json!({"fullUrl": uuid(references + 1), "resource": referral,
        "request": {"method": "POST", "url": "ServiceRequest"}}),
    ];
    entries.push(serde_json::json!({"fullUrl": uuid(0),
        "resource": {"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}]},
        "request": {"method": "POST", "url": "Consent"}}));
    for i in 1..=references {
        entries.push(serde_json::json!({"fullUrl": uuid(i),
            "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueInteger": i},
            "request": {"method": "POST", "url": "Observation"}}));
    }
    serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// Profile pass over a referral Bundle whose referral makes `references` `resolve()` calls
/// (sprig-ref-1) into a Bundle of `references` + 2 entries: linear if 1,000 takes about ten
/// times 100.
#[divan::bench(args = [100, 1_000], sample_count = 10)]
fn bundle_referral_resolve(bencher: divan::Bencher, references: usize) {
    let bundle = referral_bundle_with_supporting_info(references);
    LazyLock::force(&PROFILES);
    let target = Target {
        resource_type: ResourceType::parse("Bundle").expect("type"),
        profiles: &[],
    };
    bencher.bench(|| PROFILES.check(&target, divan::black_box(&bundle)).len());
}
