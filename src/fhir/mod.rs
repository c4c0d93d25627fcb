//! FHIR R4 model helpers: the strict JSON reader, the types that parse
//! (`FhirId`, `ResourceType`, `Instant`), and the `OperationOutcome` builder.
//!
//! `json::parse_resource` is serde_json driven by a custom `DeserializeSeed`, with
//! `arbitrary_precision` and `preserve_order` (decimals keep their text, properties their
//! order). `path::ElementPath` is a persistent list, so extending one is one small
//! allocation. `types::fixed_width_utc` is the one instant formatter (`search::date` uses it
//! too). `locate` finds the line and column of issue expressions by re-scanning the body,
//! recording only the issues' paths, when a body has an error and for every issue of
//! `$validate`. `resource_types` (the 146 R4 types) is checked against the schema by a test.
//!
//! This module knows FHIR's rules but nothing about HTTP, storage or
//! validation profiles: everything here is pure and cannot do I/O.

pub mod definitions;
pub mod identifiers;
pub mod json;
pub mod locate;
pub mod outcome;
pub mod path;
pub mod reference;
pub mod resource;
pub mod resource_types;
pub mod types;

pub use outcome::{Issue, IssueSeverity, IssueType, OperationOutcome};
pub use path::ElementPath;
pub use types::{FhirId, Instant, ResourceType, VersionId};

/// The FHIR version this gateway speaks.
pub const FHIR_VERSION: &str = "4.0.1";

/// Canonical base for definitions and code systems that Sprig itself owns.
/// Deliberately not an NHS or HL7 address.
pub const SPRIG_CANONICAL_BASE: &str = "https://sprig-gateway.org/fhir";

/// A map keyed by short names looked up on every step of every path (types, elements,
/// codes): FxHash (`rustc-hash`) hashes a word at a time, where SipHash's flooding
/// resistance buys nothing for these fixed, trusted key sets and FNV-1a went a byte at a
/// time through names like `ValueSet.expansion.contains`.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, rustc_hash::FxBuildHasher>;
