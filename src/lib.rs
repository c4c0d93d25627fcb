//! Sprig, the Social Prescribing Referral Interoperability Gateway.
//!
//! # Layout
//!
//! Data flows one way: HTTP in (`api`) → parse (`fhir::json`) →
//! validate (`validation`) → map (`mapping`, `referral`) → store (`store`) →
//! outbox → `delivery`. See `ARCHITECTURE.md` for the
//! map and each module's invariants.
//!
//! - `cli`: the `sprig` command line; `app`: assembling and running the server
//! - `server`: the connection layer: accept loop, connection limits and timeouts, HTTPS
//!   and client certificates
//! - `config`: settings from file, environment and flags
//! - `conformance`: the TestScript runner (`sprig conformance run`)
//! - `telemetry`: logging
//! - `api`: HTTP routes, content negotiation, the error-to-OperationOutcome mapping
//! - `fhir`: FHIR model helpers: strict JSON, newtypes, OperationOutcome
//! - `validation`: pure validation passes (the R4 JSON schema, then the bundled profiles)
//! - `search`: FHIR search parameters, query parsing and index extraction (pure)
//! - `store`: durable, versioned storage (SQLite)
//! - `delivery`: the outbox's consumer: sends Task and Observation updates to GP systems
//!   (endpoint registry, authentication, TLS, retries, dead letters, metrics)
//! - `located`: mistakes located in a TOML configuration file (`file:line:column`)
//! - `identity`: who is calling (client registry, assertions, Sprig's tokens, external
//!   tokens, staff accounts) and the `Access` every handler holds
//! - `fhirpath`: Sprig's FHIRPath engine (invariants, slicing, mappings)
//! - `mapping`: the declarative FHIR ↔ referral record mappings (`mappings/*.toml`) and the
//!   Task and Observation builders
//! - `referral`: referral stages and their workflow, outcome measures and their scoring

#![warn(missing_docs)]

pub mod allocator;
pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod conformance;
pub mod console;
pub mod delivery;
pub mod fhir;
pub mod fhirpath;
pub mod identity;
pub mod located;
pub mod mapping;
pub mod outcomes;
pub mod referral;
pub mod reload;
pub mod search;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod validation;
pub mod workflow;
