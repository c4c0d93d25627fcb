//! The TestScript loader on arbitrary JSON: a script Sprig cannot run is an
//! error message, never a panic. Fixtures resolve against the gateway suite's
//! folder (so the seed scripts find theirs).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sprig::conformance::script;

fuzz_target!(|data: &[u8]| {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let folder = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../conformance/gateway"));
    let _ = script::parse(&json, folder);
});
