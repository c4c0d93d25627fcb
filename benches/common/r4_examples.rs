//! Which files of `hl7.fhir.r4.examples@4.0.1` are clinical examples, as
//! opposed to the specification's own definitions. Shared by
//! `tests/api/r4_examples.rs` and `benches/validate_peer.rs` (each includes
//! this file with `#[path]`), so the test and the benchmark check the same set.

/// Conformance resources are definitions, not examples.
pub const DEFINITION_TYPES: &[&str] = &[
    "StructureDefinition",
    "ValueSet",
    "CodeSystem",
    "SearchParameter",
    "ConceptMap",
    "OperationDefinition",
    "CompartmentDefinition",
];

/// Bundles that package the specification's definitions.
pub const DEFINITION_BUNDLES: &[&str] = &[
    "Bundle-conceptmaps.json",
    "Bundle-dataelements.json",
    "Bundle-extensions.json",
    "Bundle-externals.json",
    "Bundle-profiles-others.json",
    "Bundle-registry.json",
    "Bundle-resources.json",
    "Bundle-searchParams.json",
    "Bundle-terminologies.json",
    "Bundle-types.json",
    "Bundle-v2-valuesets.json",
    "Bundle-v3-valuesets.json",
    "Bundle-valueset-expansions.json",
    "Bundle-valuesets.json",
];
