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
//! - `worker`: claims due messages under a lease, several at a time, into a
//!   queue per destination, sends them within each destination's limit in
//!   each referral's order, and records results in batches
//! - `metrics`: the figures `/metrics` shows
//!
//! The registry (`delivery.endpoints` or `--endpoints`: `[[endpoint]]` per ODS
//! code with `base_url`, `mode`, `auth`, `tls`, `ca_file`, timeouts and
//! `max_in_flight`) is read and checked by `endpoints/file.rs`, with located
//! errors; `endpoints/reload.rs` swaps in a reloaded registry on file change or
//! SIGHUP and keeps the old one when the new file is wrong. Without
//! `public_base_url`, an instance that delivers refuses a registry with a
//! message-mode endpoint, at start-up and on reload, as a message's URLs must
//! be ones the practice can reach. `transport` keeps one reqwest client per
//! endpoint (rustls with aws-lc, no redirects). `outbound` makes a row into a
//! `PUT Task/{id}`, a conditional `POST Observation` or a
//! `servicerequest-response` message; `policy` adds backoff with jitter.
//!
//! What an answer means: 2xx is delivered; 408, 429, 5xx and network failures
//! retry (honouring `Retry-After`) until they have failed for
//! `delivery.max_age_secs`, counted from the first attempt (or the first after
//! an operator's retry), not from the change, so an update held back behind a
//! dead letter or kept for pull is not dead-lettered by its first failure; any
//! other answer is a dead letter at once, kept with the receiver's body. A
//! retry sends the same bytes: Tasks by `PUT` to their stable id, Observations
//! by `POST` with `If-None-Exist` on their identifier, messages with an id
//! derived from the resource version and stamped with the change's time.
//! Secrets come from environment variables and files, never the registry. A
//! practice with no endpoint is not an error: its rows wait (shown as
//! `awaiting_endpoint`), are read by pull (`GET /fhir/Task?_lastUpdated=gt…`)
//! and are sent if an endpoint for it appears.
//!
//! The worker asks the store for `due_destinations` first, naming the
//! organisations that have an endpoint (so the rows waiting for pull, which can
//! be most of the outbox, are never read): it applies the claim's own
//! conditions (the head-of-queue rule included), so a destination whose rows
//! all wait costs the writer no empty claim. `release_leases` at
//! start-up assumes one process per SQLite file, which SQLite's single writer
//! makes the deployment anyway.

pub mod auth;
pub mod endpoints;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod transport;
pub mod worker;
