//! What a create does before storage, on arbitrary bytes: strict parse, the
//! per-field size limits, then the schema and profile passes against
//! Sprig's referral profile (validation must turn anything into issues).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sprig::fhir::ResourceType;
use sprig::fhir::json::{JsonLimits, parse_resource};
use sprig::validation::profile::ProfilePass;
use sprig::validation::schema::SchemaPass;
use sprig::validation::size::{FieldLimits, check_sizes};
use sprig::validation::{REFERRAL_PROFILE, Target, ValidationPass};

static SCHEMA: LazyLock<SchemaPass> =
    LazyLock::new(|| SchemaPass::load(&[ResourceType::SERVICE_REQUEST]).expect("schema loads"));
static PROFILES: LazyLock<ProfilePass> =
    LazyLock::new(|| ProfilePass::load().expect("definitions load"));
static REFERRAL: LazyLock<Vec<String>> = LazyLock::new(|| vec![REFERRAL_PROFILE.to_owned()]);

// Loading the definitions takes seconds: done before the first input, so
// it is not counted against the 1 s per-input limit.
fuzz_target!(
    init: {
        LazyLock::force(&SCHEMA);
        LazyLock::force(&PROFILES);
    },
    |data: &[u8]| {
    let Ok(resource) = parse_resource(data, JsonLimits::default()) else {
        return;
    };
    let resource = Value::Object(resource);
    if !check_sizes("ServiceRequest", &resource, &FieldLimits::default()).is_empty() {
        return;
    }
    let target = Target {
        resource_type: ResourceType::SERVICE_REQUEST,
        profiles: &REFERRAL,
    };
    if SCHEMA.check(&target, &resource).is_empty() {
        let _ = PROFILES.check(&target, &resource);
    }
    }
);
