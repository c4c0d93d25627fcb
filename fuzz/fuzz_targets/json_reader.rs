//! The strict FHIR JSON reader on arbitrary bytes: it must answer (a map or
//! a `JsonError` with issues), never panic, for any body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sprig::fhir::json::{JsonLimits, parse_resource};

fuzz_target!(|data: &[u8]| {
    if let Err(error) = parse_resource(data, JsonLimits::default()) {
        let _ = error.to_issues("Resource");
    }
});
