//! The HTTP face of the gateway: FHIR REST under `/fhir`, the service API
//! under `/api`, health probes.
//!
//! `router(state)` builds the whole application as an axum `Router`, with no
//! socket, so it can be served by `app` or driven directly in tests. A FHIR
//! handler takes its request through `extract`, runs `pipeline`'s shared
//! steps and answers through `response`.
//!
//! Architecture invariants: every error response under `/fhir` is an
//! OperationOutcome made by `error::ApiError`, and under `/api` a problem
//! made by `problem::Problem` (no other error-to-HTTP mapping exists); every
//! response carries `X-Request-ID`; handlers log ids, never content.

pub mod audit;
pub mod audit_event;
pub mod auth;
pub mod authenticate;
pub mod capability;
pub mod deliveries;
pub mod erasure;
pub mod error;
pub mod extract;
pub mod health;
pub mod message;
pub mod message_definition;
pub mod middleware;
pub mod milestones;
pub mod negotiate;
pub mod outcomes;
pub mod pipeline;
pub mod problem;
pub mod provenance;
pub mod rate_limit;
pub mod referrals;
pub mod resource;
pub mod response;
pub mod search;
pub mod service;
pub mod transaction;
pub mod validate;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Uri;
use axum::routing::{get, post};
use serde_json::Value;
use tower_http::catch_panic::CatchPanicLayer;

use crate::config::Settings;
use crate::delivery::endpoints::Endpoints;
use crate::delivery::metrics::DeliveryMetrics;
use crate::fhir::{Issue, IssueType};
use crate::outcomes::Outcomes;
use crate::outcomes::pcn::PcnDirectory;
use crate::store::Store;
use crate::validation::Validator;
use crate::workflow::Workflow;
use error::ApiError;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Durable storage.
    pub store: Store,
    /// Validation passes.
    pub validator: Arc<Validator>,
    /// Settings in force.
    pub settings: Arc<Settings>,
    /// The CapabilityStatement, built once.
    pub capability_statement: Arc<Value>,
    /// The referral workflow (mappings, profiles, service identity).
    pub workflow: Workflow,
    /// Where updates are delivered (reloadable).
    pub endpoints: Arc<Endpoints>,
    /// Delivery figures for `/metrics`.
    pub delivery_metrics: Arc<DeliveryMetrics>,
    /// Outcome measures and report metrics (`outcomes/` or `outcomes_dir`).
    pub outcomes: Arc<Outcomes>,
    /// The practice directory (`pcns_file`; reloadable), for reports per PCN.
    pub pcns: Arc<crate::reload::Reloadable<PcnDirectory, crate::located::LocatedError>>,
}

impl AppState {
    /// The base of the FHIR API where no request says how it was reached (the
    /// delivery worker, the service API's links): `public_base_url`, else the
    /// path `/fhir`. FHIR answers use `extract::FhirBase`, which is always
    /// absolute.
    pub fn fhir_base(&self) -> String {
        match &self.settings.public_base_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => "/fhir".to_owned(),
        }
    }
}

/// The application's routes and middleware.
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// The application's routes, and `extra` (the console's, which uses `api`'s state,
/// audit and authentication and so cannot be named here), under the same middleware:
/// every route of `extra` must be in `authenticate::ROUTES` too.
pub fn router_with(state: AppState, extra: Router<AppState>) -> Router {
    Router::new()
        .merge(extra)
        // Every FHIR route twice: clients join the base and a path, so a
        // trailing slash (`POST /fhir/`, `GET /fhir/metadata/`) is common and
        // means nothing in FHIR.
        .route("/fhir/metadata", get(capability::metadata))
        .route("/fhir/metadata/", get(capability::metadata))
        .route("/fhir", post(transaction::transaction))
        .route("/fhir/", post(transaction::transaction))
        .route("/fhir/$process-message", post(message::process_message))
        .route("/fhir/$process-message/", post(message::process_message))
        .route("/fhir/$validate", post(validate::validate_any))
        .route("/fhir/$validate/", post(validate::validate_any))
        .route("/fhir/{type}/$validate", post(validate::validate_type))
        .route("/fhir/{type}/$validate/", post(validate::validate_type))
        .route("/fhir/MessageDefinition", get(message_definition::search))
        .route("/fhir/MessageDefinition/", get(message_definition::search))
        .route(
            "/fhir/MessageDefinition/{id}",
            get(message_definition::read),
        )
        .route(
            "/fhir/MessageDefinition/{id}/",
            get(message_definition::read),
        )
        .route("/fhir/AuditEvent", get(audit_event::search))
        .route("/fhir/AuditEvent/", get(audit_event::search))
        .route("/fhir/AuditEvent/{id}", get(audit_event::read))
        .route("/fhir/AuditEvent/{id}/", get(audit_event::read))
        .route(
            "/fhir/{type}",
            get(search::search_get).post(resource::create),
        )
        .route(
            "/fhir/{type}/",
            get(search::search_get).post(resource::create),
        )
        .route("/fhir/{type}/_search", post(search::search_post))
        .route("/fhir/{type}/_search/", post(search::search_post))
        .route(
            "/fhir/{type}/{id}",
            get(resource::read).put(referrals::update),
        )
        .route(
            "/fhir/{type}/{id}/",
            get(resource::read).put(referrals::update),
        )
        .route("/fhir/{type}/_history", get(search::history_type))
        .route("/fhir/{type}/_history/", get(search::history_type))
        .route("/fhir/{type}/{id}/_history", get(search::history_instance))
        .route("/fhir/{type}/{id}/_history/", get(search::history_instance))
        .route("/fhir/{type}/{id}/_history/{vid}", get(resource::vread))
        .route("/fhir/{type}/{id}/_history/{vid}/", get(resource::vread))
        .route("/api/openapi.json", get(service::openapi))
        .route("/api/referrals", get(service::list))
        .route("/api/referrals/{id}", get(service::detail))
        .route("/api/referrals/{id}/transitions", post(service::transition))
        .route("/api/referrals/{id}/outcomes", post(service::outcome))
        .route("/api/referrals/{id}/notes", post(service::note))
        .route(
            "/api/referrals/{id}/milestones",
            get(milestones::list).post(milestones::record),
        )
        .route("/api/referrals/{id}/assignment", post(service::assignment))
        .route("/api/referrals/{id}/erasure", post(erasure::erase))
        .route("/api/measures", get(outcomes::measures))
        .route("/api/follow-ups", get(outcomes::follow_ups))
        .route("/api/reports/outcomes", get(outcomes::outcomes_report))
        .route(
            "/api/reports/outcomes/detail",
            get(outcomes::outcomes_detail),
        )
        .route("/api/reports/service", get(outcomes::service_report))
        .route("/api/deliveries", get(deliveries::list))
        .route("/api/deliveries/{seq}", get(deliveries::detail))
        .route("/api/deliveries/{seq}/retry", post(deliveries::retry))
        .route("/api/endpoints", get(deliveries::endpoints))
        .route(
            "/api/endpoints/{ods}/retry",
            post(deliveries::retry_endpoint),
        )
        .route("/api/endpoints/{ods}/send-now", post(deliveries::send_now))
        .route("/metrics", get(deliveries::metrics))
        .route("/auth/token", post(auth::token))
        .route("/auth/staff/token", post(auth::staff_token))
        .route(
            "/.well-known/smart-configuration",
            get(auth::smart_configuration),
        )
        .route("/healthz", get(health::alive))
        .route("/readyz", get(health::ready))
        // Inside authentication (a route layer added before it): the caller it
        // established, for the audit row.
        .route_layer(axum::middleware::from_fn(audit::capture_access))
        // Identity, before any handler: every route above is in `authenticate::ROUTES`.
        .route_layer(axum::middleware::from_fn(authenticate::authenticate))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // FHIR bodies are read by the handlers, under `limits.max_body_bytes`
        // (with an OperationOutcome); the limit here bounds `/api`'s JSON.
        .layer(DefaultBodyLimit::max(
            usize::try_from(state.settings.limits.max_body_bytes).unwrap_or(usize::MAX),
        ))
        // Inside the 413 (a body over the limit is refused, not queued) and
        // the request timeout (waiting for room counts against it).
        .layer(axum::middleware::from_fn_with_state(
            middleware::BodyBudget::new(&state.settings.limits),
            middleware::body_budget,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::declared_body_limit,
        ))
        .layer(axum::middleware::from_fn(middleware::body_headers))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::request_timeout,
        ))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        // Every /fhir, /api and /auth request leaves one audit row, refused ones too.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::audit,
        ))
        .layer(axum::middleware::from_fn(middleware::request_context))
        .with_state(state)
}

async fn not_found(uri: Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    if uri.path().starts_with("/api/") {
        return problem::Problem::not_found(format!(
            "There is nothing at {}; GET /api/openapi.json describes this API",
            uri.path()
        ))
        .into_response();
    }
    ApiError::NotFound(Issue::error(
        IssueType::NotFound,
        "endpoint-not-found",
        format!(
            "There is nothing at {}; the FHIR API is under /fhir (GET /fhir/metadata lists what it supports)",
            uri.path()
        ),
    ))
    .into_response()
}

async fn method_not_allowed(method: axum::http::Method, uri: Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    if uri.path().starts_with("/api/") {
        return problem::Problem::method_not_allowed(format!(
            "{method} is not supported on {}; GET /api/openapi.json describes this API",
            uri.path()
        ))
        .into_response();
    }
    ApiError::MethodNotAllowed(Issue::error(
        IssueType::NotSupported,
        "method-not-allowed",
        format!(
            "{method} is not supported on {}; GET /fhir/metadata lists the supported interactions",
            uri.path()
        ),
    ))
    .into_response()
}
