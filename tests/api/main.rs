//! Integration tests: the real gateway over real HTTP, with a real SQLite
//! file. One test binary (see `helpers::spawn_app`).

// Tests and benches may unwrap: a failed assumption there is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod audit;
mod auth;
mod backends;
mod bad_requests;
mod bars;
mod binary;
mod capability;
mod concurrency;
mod conformance;
mod connections;
mod console;
mod console_admin;
mod console_browser;
mod console_oidc;
mod console_reports;
mod console_views;
mod create_read;
mod delivery;
mod durability;
mod fhir_conventions;
mod fhirpath_suite;
mod helpers;
mod hostile;
mod instances;
mod isolation;
mod link_workers;
mod mappings;
mod milestones;
mod negotiation;
mod openapi;
mod operations;
mod outcomes;
mod pcns;
mod processes;
mod profile_negatives;
mod provenance;
mod query_plans;
mod r4_examples;
mod real_clients;
mod search;
mod tidy;
mod tls;
mod upgrade;
mod validate;
mod workflow;
mod write_path;
