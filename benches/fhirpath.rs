//! FHIRPath on the sample referral: compiling an invariant, evaluating cached ones.
//!
//! Run: `cargo bench --bench fhirpath`

// Tests and benches may unwrap: a failed assumption there is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::LazyLock;

use serde_json::Value;
use sprig::fhirpath::{Expression, FhirPath, Scope};

/// The allocator the `sprig` binary uses (`sprig::allocator`), so that the
/// figures are the binary's.
#[global_allocator]
static GLOBAL: sprig::allocator::Allocator = sprig::allocator::Allocator {};

fn main() {
    divan::main();
}

static REFERRAL: LazyLock<Value> = LazyLock::new(|| {
    serde_json::from_slice(include_bytes!("../examples/referral-servicerequest.json"))
        .expect("valid JSON")
});
static ENGINE: LazyLock<FhirPath> = LazyLock::new(|| FhirPath::new().expect("engine"));

const ELE_1: &str = "hasValue() or (children().count() > id.count())";
const DOM_3: &str = "contained.where((('#'+id in (%resource.descendants().reference | %resource.descendants().as(canonical) | %resource.descendants().as(uri) | %resource.descendants().as(url))) or descendants().where(reference = '#').exists() or descendants().where(as(canonical) = '#').exists() or descendants().where(as(canonical) = '#').exists()).not()).trace('unmatched', id).empty()";

fn compiled(text: &str) -> Expression {
    ENGINE.compile(text).expect("compiles")
}

/// Parsing ele-1 (done once per invariant at start-up).
#[divan::bench]
fn compile_ele_1() -> Expression {
    ENGINE.compile(divan::black_box(ELE_1)).expect("compiles")
}

/// ele-1 on the whole ServiceRequest.
#[divan::bench]
fn ele_1_on_service_request(bencher: divan::Bencher) {
    let e = compiled(ELE_1);
    let r = &*REFERRAL;
    bencher.bench(|| {
        e.evaluate(r, divan::black_box(r))
            .expect("evaluates")
            .as_boolean()
    });
}

/// ele-1 on one element (`ServiceRequest.subject`), typed: what the validator does per element.
#[divan::bench]
fn ele_1_on_an_element(bencher: divan::Bencher) {
    on_the_subject(bencher, ELE_1);
}

/// dom-3, the heaviest R4 resource invariant (descendants of the whole resource, four times).
#[divan::bench]
fn dom_3_on_service_request(bencher: divan::Bencher) {
    let e = compiled(DOM_3);
    let r = &*REFERRAL;
    bencher.bench(|| {
        e.evaluate(r, divan::black_box(r))
            .expect("evaluates")
            .as_boolean()
    });
}

/// A one-line invariant on a small element (`vsd-6`'s shape): what most of the
/// R4 definitions' invariants are, so this is the evaluator's fixed cost per
/// evaluation more than any work.
#[divan::bench]
fn small_invariant_on_an_element(bencher: divan::Bencher) {
    on_the_subject(bencher, "reference.exists() or display.exists()");
}

/// `text` as an invariant on `ServiceRequest.subject`, typed `Reference`, read as the
/// validator reads one (`evaluate_boolean_in`).
fn on_the_subject(bencher: divan::Bencher, text: &str) {
    let e = compiled(text);
    let r = &*REFERRAL;
    let focus = &r["subject"];
    bencher.bench(|| {
        e.evaluate_boolean_in(Scope {
            resource: r,
            root_resource: None,
            bundle: None,
            focus: divan::black_box(focus),
            focus_type: Some("Reference"),
            environment: None,
        })
        .expect("evaluates")
    });
}
