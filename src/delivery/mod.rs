//! Delivery of Task and Observation updates to GP systems.
//!
//! - `endpoints`: the endpoint registry (one entry per referring organisation's ODS code,
//!   read from a TOML file, reloadable) and [`endpoints::Endpoint::send`], which sends one
//!   request to a GP system with its authentication and TLS settings
//! - `auth`: how an endpoint authenticates (none, bearer token, OAuth2 client credentials
//!   with a signed JWT assertion, TLS client certificate)
//! - `transport`: the HTTP side: clients with their TLS settings, requests, responses,
//!   `Retry-After`, and the transient/permanent split of failures

pub mod auth;
pub mod endpoints;
pub mod transport;
