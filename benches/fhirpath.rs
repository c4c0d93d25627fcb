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

/// A Bundle of `references` Observations, a Consent and a referral whose supportingInfo
/// points at each of them by `urn:uuid:`.
fn referral_bundle(references: usize) -> Value {
    let uuid = |i: usize| format!("urn:uuid:00000000-0000-4000-8000-{i:012}");
    let mut referral = REFERRAL.clone();
    referral["supportingInfo"] = (0..=references)
        .map(|i| serde_json::json!({"reference": uuid(i)}))
        .collect();
    let mut entries = vec![
        serde_json::json!({"fullUrl": uuid(references + 1), "resource": referral}),
        serde_json::json!({"fullUrl": uuid(0), "resource": {"resourceType": "Consent", "status": "active"}}),
    ];
    entries.extend((1..=references).map(|i| {
        serde_json::json!({"fullUrl": uuid(i), "resource": {"resourceType": "Observation", "status": "final"}})
    }));
    serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// `resolve()` on each supportingInfo of a referral in a Bundle of `references` + 2 entries
/// (sprig-ref-1's `resolve() is Consent`, once per reference, as the profile walk evaluates
/// it). "per call": the Bundle indexed for every `resolve()`, as before `Scope::bundle`
/// carried an index; "once": one index for the Bundle, handed to every evaluation.
#[divan::bench(args = [("per call", 100), ("once", 100), ("per call", 1_000), ("once", 1_000)], sample_count = 10)]
fn resolve_in_a_bundle(bencher: divan::Bencher, (indexed, references): (&str, usize)) {
    use sprig::fhir::reference::BundleIndex;
    let bundle = referral_bundle(references);
    let referral = &bundle["entry"][0]["resource"];
    let focuses: Vec<&Value> = referral["supportingInfo"]
        .as_array()
        .expect("references")
        .iter()
        .collect();
    let e = compiled("$this.resolve() is Consent");
    let once = BundleIndex::new(&bundle);
    bencher.bench(|| {
        let mut consents = 0;
        for focus in &focuses {
            let per_call;
            let index = if indexed == "once" {
                &once
            } else {
                per_call = BundleIndex::new(&bundle);
                &per_call
            };
            let scope = Scope {
                resource: referral,
                root_resource: None,
                bundle: Some(index),
                focus,
                focus_type: Some("Reference"),
                environment: None,
            };
            if e.evaluate_in(scope).expect("evaluates").as_boolean() == Some(true) {
                consents += 1;
            }
        }
        assert_eq!(consents, 1);
        consents
    });
}
