//! FHIRPath compile and evaluate: the input's first line is an expression,
//! evaluated on the example referral (or on the rest of the input, when
//! that is JSON). Errors are fine; a panic or a hang is not.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sprig::fhirpath::FhirPath;

static ENGINE: LazyLock<FhirPath> = LazyLock::new(|| FhirPath::new().expect("engine"));
static REFERRAL: LazyLock<Value> = LazyLock::new(|| {
    serde_json::from_slice(include_bytes!("../../examples/referral-servicerequest.json"))
        .expect("valid JSON")
});

// The engine's type model loads before the first input (not counted
// against the 1 s per-input limit).
fuzz_target!(
    init: {
        LazyLock::force(&ENGINE);
        LazyLock::force(&REFERRAL);
    },
    |data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (expression, rest) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(compiled) = ENGINE.compile(expression) else {
        return;
    };
    let own: Option<Value> = serde_json::from_str(rest).ok();
    let resource = own.as_ref().unwrap_or(&REFERRAL);
    let _ = compiled.evaluate(resource, resource);
    }
);
