//! Sprig, the Social Prescribing Referral Interoperability Gateway.
//!
//! # Layout
//!
//! Data flows one way: HTTP in (`api`) → parse (`fhir::json`) →
//! validate (`validation`) → store (`store`). See `ARCHITECTURE.md` for the
//! map and each module's invariants.
//!
//! - `cli`: the `sprig` command line; `app`: assembling and running the server
//! - `config`: settings from file, environment and flags
//! - `telemetry`: logging
//! - `api`: HTTP routes, content negotiation, the error-to-OperationOutcome mapping
//! - `fhir`: FHIR model helpers: strict JSON, newtypes, OperationOutcome
//! - `validation`: pure validation passes (R4 JSON schema today)
//! - `store`: durable, versioned storage (SQLite)

#![warn(missing_docs)]

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod fhir;
pub mod fhirpath;
pub mod store;
pub mod telemetry;
pub mod validation;
