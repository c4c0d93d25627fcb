//! Delivery of Task and Observation updates to GP systems: the outbox's
//! consumer.
//!
//! - `endpoints`: the endpoint registry (one entry per referring
//!   organisation's ODS code, read from a TOML file, reloadable) and
//!   [`endpoints::Endpoint::send`], which sends one request to a GP system
//!   with its authentication and TLS settings
//! - `auth`: how an endpoint authenticates (none, bearer token, OAuth2 client
//!   credentials with a signed JWT assertion, TLS client certificate)
//! - `transport`: the HTTP side: clients with their TLS settings, requests,
//!   responses, `Retry-After`, and the transient/permanent split of failures
//! - `outbound`: an outbox message as the receiver gets it (REST or message)
//! - `policy`: what an answer means (delivered, retry, dead letter) and when
//!   to try again
//! - `worker`: claims due messages under a lease and sends them, per
//!   destination, in each referral's order
//! - `metrics`: the figures `/metrics` shows

pub mod auth;
pub mod endpoints;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod transport;
pub mod worker;
