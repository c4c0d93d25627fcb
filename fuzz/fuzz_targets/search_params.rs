//! Search parameter parsing: an arbitrary query string against a
//! ServiceRequest search, and as `_history` parameters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sprig::fhir::ResourceType;
use sprig::search::{HistoryQuery, SearchQuery};

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let _ = SearchQuery::parse(ResourceType::SERVICE_REQUEST, query);
    let _ = SearchQuery::parse(ResourceType::TASK, query);
    let _ = HistoryQuery::parse(query, true);
    let _ = HistoryQuery::parse(query, false);
});
