//! The inbound mapping step of referral ingestion (issue 4), for each shape a
//! referral arrives in: finding the mapping's inputs (`SubmittedReferral::inputs`)
//! and mapping them to the record (`Workflow::map_inbound`, the shipped
//! `mappings/inbound.toml`), against the strict parse + validation of the
//! same body measured in the same run as the baseline.
//!
//! Run: `cargo bench --bench mapping`

// Tests and benches may unwrap: a failed assumption there is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, LazyLock};

use serde_json::Value;
use sprig::fhir::ResourceType;
use sprig::fhirpath::FhirPath;
use sprig::mapping::Mappings;
use sprig::mapping::intake::{SubmittedReferral, entries};
use sprig::validation::{
    REFERRAL_BUNDLE_PROFILE, REFERRAL_MESSAGE_PROFILE, REFERRAL_PROFILE, Validator,
};
use sprig::workflow::{ServiceIdentity, Workflow};

mod common;

/// The allocator the `sprig` binary uses (`sprig::allocator`), so that the
/// figures are the binary's.
#[global_allocator]
static GLOBAL: sprig::allocator::Allocator = sprig::allocator::Allocator {};

fn main() {
    divan::main();
}

/// The shipped examples, one per shape (the bench argument).
const SHAPES: [&str; 3] = ["contained", "transaction", "message"];

/// A referral as posted: its body, and what the endpoint validates it as.
struct Example {
    body: &'static [u8],
    resource_type: ResourceType,
    profile: &'static str,
}

fn example(shape: &str) -> Example {
    match shape {
        // POST /fhir/ServiceRequest
        "contained" => Example {
            body: include_bytes!("../examples/referral-servicerequest.json"),
            resource_type: ResourceType::SERVICE_REQUEST,
            profile: REFERRAL_PROFILE,
        },
        // POST /fhir
        "transaction" => Example {
            body: include_bytes!("../examples/referral-transaction-bundle.json"),
            resource_type: ResourceType::BUNDLE,
            profile: REFERRAL_BUNDLE_PROFILE,
        },
        // POST /fhir/$process-message
        "message" => Example {
            body: include_bytes!("../examples/referral-message-bundle.json"),
            resource_type: ResourceType::BUNDLE,
            profile: REFERRAL_MESSAGE_PROFILE,
        },
        other => unreachable!("no example for shape {other}"),
    }
}

impl Example {
    /// The body parsed and validated, as the endpoint hands it on.
    fn checked(&self) -> Value {
        common::parse_and_validate(
            &VALIDATOR,
            self.body,
            self.resource_type,
            Some(self.profile),
        )
    }
}

/// What the mapping reads: the ServiceRequest, with its Bundle if it came in one.
fn submitted_referral(resource: &Value) -> SubmittedReferral<'_> {
    if resource.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
        let referral = entries(resource)
            .find(|r| r.get("resourceType").and_then(Value::as_str) == Some("ServiceRequest"))
            .expect("the Bundle carries a ServiceRequest");
        SubmittedReferral {
            referral,
            bundle: Some(resource),
        }
    } else {
        SubmittedReferral {
            referral: resource,
            bundle: None,
        }
    }
}

static VALIDATOR: LazyLock<Arc<Validator>> = LazyLock::new(|| {
    Arc::new(common::validator(&[
        ResourceType::SERVICE_REQUEST,
        ResourceType::BUNDLE,
    ]))
});

/// The workflow with the shipped mappings, as `sprig serve` builds it.
static WORKFLOW: LazyLock<Workflow> = LazyLock::new(|| {
    let engine = FhirPath::new().expect("FHIRPath engine");
    let mappings = Mappings::shipped(&engine).expect("the shipped mappings load");
    Workflow::new(
        Arc::new(mappings),
        Arc::new(sprig::outcomes::Catalogue::shipped().expect("the shipped measures load")),
        Arc::clone(&VALIDATOR),
        ServiceIdentity {
            name: "Sprig bench".into(),
            ods_code: None,
        },
    )
});

/// Baseline: strict parse + validation (schema pass, profile pass against the
/// endpoint's Sprig profile), what every referral costs before mapping.
#[divan::bench(args = SHAPES)]
fn parse_and_validate(bencher: divan::Bencher, shape: &str) {
    let example = example(shape);
    LazyLock::force(&VALIDATOR);
    bencher.bench(|| {
        common::parse_and_validate(
            &VALIDATOR,
            divan::black_box(example.body),
            example.resource_type,
            Some(example.profile),
        )
    });
}

/// Finding the mapping's inputs alone: references followed through
/// `contained` or the Bundle's entries.
#[divan::bench(args = SHAPES)]
fn intake(bencher: divan::Bencher, shape: &str) {
    let resource = example(shape).checked();
    bencher.bench(|| submitted_referral(divan::black_box(&resource)).inputs());
}

/// The inbound mapping alone, on inputs already found: every FHIRPath
/// expression of `mappings/inbound.toml` evaluated into the record's fields.
#[divan::bench(args = SHAPES)]
fn map_inbound(bencher: divan::Bencher, shape: &str) {
    let resource = example(shape).checked();
    let inputs = submitted_referral(&resource).inputs();
    LazyLock::force(&WORKFLOW);
    bencher.bench(|| {
        WORKFLOW
            .map_inbound(divan::black_box(&inputs))
            .expect("the example maps")
    });
}

/// The whole mapping step as the endpoints run it: intake, then the mapping.
#[divan::bench(args = SHAPES)]
fn intake_and_map(bencher: divan::Bencher, shape: &str) {
    let resource = example(shape).checked();
    LazyLock::force(&WORKFLOW);
    bencher.bench(|| {
        WORKFLOW
            .map_inbound(&submitted_referral(divan::black_box(&resource)).inputs())
            .expect("the example maps")
    });
}
