//! The delivery side of the service API: the outbox queue and its dead
//! letters (`/api/deliveries`), the endpoint registry as Sprig sees it with
//! the practices that have no endpoint (`/api/endpoints`), retries, and
//! `/metrics`. Errors are problem details, as in the rest of `/api`.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::authenticate::require_staff;
use super::problem::Problem;
use crate::delivery::endpoints::EndpointRegistry;
use crate::delivery::metrics::CONTENT_TYPE as METRICS_CONTENT_TYPE;
use crate::fhir::Instant;
use crate::fhir::identifiers::OdsCode;
use crate::identity::{Access, StaffAction};
use crate::store::outbox::{DeliveryEntry, DeliveryFilter, DeliveryState, RetryRefusal};

const MAX_LIMIT: u32 = 500;
const DEFAULT_LIMIT: u32 = 100;

/// The queue's query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    destination: Option<String>,
    referral: Option<String>,
    cursor: Option<i64>,
    limit: Option<u32>,
}

/// `GET /api/deliveries`: outbox messages in order, filtered and paged.
pub async fn list(
    State(state): State<AppState>,
    access: Access,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    require_staff(&access, StaffAction::Deliveries)?;
    let Query(query) = query.map_err(|e| {
        Problem::bad_request(format!(
            "{}; the parameters are state, destination, referral, cursor and limit",
            e.body_text()
        ))
    })?;
    let wanted = query
        .state
        .as_deref()
        .map(|s| {
            DeliveryState::parse(s).ok_or_else(|| {
                Problem::bad_request(format!(
                    "'{s}' is not a delivery state; the states are pending, delivered and dead"
                ))
            })
        })
        .transpose()?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Problem::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let mut entries = state
        .store
        .deliveries(&DeliveryFilter {
            state: wanted,
            destination_ods: query.destination,
            referral_id: query.referral,
            after: query.cursor,
            limit: limit + 1,
        })
        .await?;
    let next_cursor = if entries.len() > limit as usize {
        entries.truncate(limit as usize);
        entries.last().map(|e| e.seq)
    } else {
        None
    };
    let registry = state.endpoints.current();
    let items: Vec<Value> = entries
        .iter()
        .map(|entry| entry_json(entry, &registry))
        .collect();
    Ok(Json(json!({ "items": items, "next_cursor": next_cursor })).into_response())
}

/// `GET /api/deliveries/{seq}`.
pub async fn detail(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<i64>, PathRejection>,
) -> Result<Response, Problem> {
    require_staff(&access, StaffAction::Deliveries)?;
    let Path(seq) = path?;
    let entry = state
        .store
        .delivery(seq)
        .await?
        .ok_or_else(|| Problem::not_found(format!("There is no outbox message {seq}")))?;
    Ok(Json(entry_json(&entry, &state.endpoints.current())).into_response())
}

/// `POST /api/deliveries/{seq}/retry`: a dead letter back in the queue.
pub async fn retry(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<i64>, PathRejection>,
) -> Result<Response, Problem> {
    require_staff(&access, StaffAction::RetryDelivery)?;
    let Path(seq) = path?;
    match state.store.retry_dead(seq).await? {
        Ok(entry) => {
            tracing::info!(seq, "dead letter put back in the queue");
            Ok(Json(entry_json(&entry, &state.endpoints.current())).into_response())
        }
        Err(RetryRefusal::NotFound) => Err(Problem::not_found(format!(
            "There is no outbox message {seq}"
        ))),
        Err(RetryRefusal::NotDead(current)) => Err(Problem::new(
            StatusCode::CONFLICT,
            "Not a dead letter",
            format!(
                "Outbox message {seq} is {}; only dead letters are retried",
                current.as_str()
            ),
        )),
    }
}

/// `POST /api/endpoints/{ods}/retry`: every dead letter for a practice back
/// in the queue (after the practice fixed its system, say).
pub async fn retry_endpoint(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    require_staff(&access, StaffAction::RetryDelivery)?;
    let Path(ods) = path?;
    // A malformed code cannot name a practice: say so rather than retry none.
    OdsCode::parse(&ods).map_err(|e| Problem::bad_request(format!("{ods:?}: {e}")))?;
    let retried = state.store.retry_dead_for(&ods).await?;
    tracing::info!(destination = %ods, retried, "dead letters put back in the queue");
    Ok(Json(json!({ "destination": ods, "retried": retried })).into_response())
}

/// `POST /api/endpoints/{ods}/send-now`: every update waiting for a practice
/// made due at once, its backoff cut short (after the practice says its
/// system is back, say). Dead letters stay dead: `…/retry` puts them back.
pub async fn send_now(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    require_staff(&access, StaffAction::RetryDelivery)?;
    let Path(ods) = path?;
    OdsCode::parse(&ods).map_err(|e| Problem::bad_request(format!("{ods:?}: {e}")))?;
    let made_due = state
        .store
        .make_due_now(&ods, crate::fhir::Instant::now().unix_millis())
        .await?;
    tracing::info!(destination = %ods, made_due, "waiting updates made due now");
    Ok(Json(json!({ "destination": ods, "made_due": made_due })).into_response())
}

/// `GET /api/endpoints`: the registry in force, each endpoint with its queue,
/// and the practices with updates but no endpoint (kept for pull).
pub async fn endpoints(State(state): State<AppState>, access: Access) -> Result<Response, Problem> {
    require_staff(&access, StaffAction::Registries)?;
    let registry = state.endpoints.current();
    let stats = state.store.destination_stats().await?;
    let stats_for = |ods: &str| {
        stats
            .iter()
            .find(|s| s.destination_ods.as_deref() == Some(ods))
    };
    let mut endpoints: Vec<Value> = registry
        .iter()
        .map(|endpoint| {
            let queue = stats_for(&endpoint.ods_code);
            json!({
                "ods_code": endpoint.ods_code,
                "base_url": endpoint.base_url.as_str(),
                "mode": endpoint.mode.as_str(),
                "auth": endpoint.auth_kind(),
                "timeout_secs": endpoint.timeout.as_secs_f64(),
                "max_in_flight": endpoint.max_in_flight,
                "pending": queue.map_or(0, |q| q.pending),
                "dead": queue.map_or(0, |q| q.dead),
                "oldest_pending": queue.and_then(|q| q.oldest_pending.clone()),
            })
        })
        .collect();
    endpoints.sort_by(|a, b| a["ods_code"].as_str().cmp(&b["ods_code"].as_str()));
    let without: Vec<Value> = stats
        .iter()
        .filter(|s| {
            s.destination_ods
                .as_deref()
                .is_none_or(|ods| registry.get(ods).is_none())
        })
        .map(|s| {
            json!({
                "ods_code": s.destination_ods,
                "pending": s.pending,
                "dead": s.dead,
                "oldest_pending": s.oldest_pending,
            })
        })
        .collect();
    Ok(Json(json!({
        // The file's name only: its absolute path says too much about the host.
        "source": state.endpoints.source().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()),
        "endpoints": endpoints,
        "without_endpoint": without,
    }))
    .into_response())
}

/// `GET /metrics`: Prometheus (OpenMetrics text).
pub async fn metrics(State(state): State<AppState>) -> Result<Response, Problem> {
    let stats = state.store.destination_stats().await?;
    let text = state
        .delivery_metrics
        .render(&stats, &state.endpoints.current(), Instant::now())
        .map_err(|_| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error",
                "The metrics could not be written",
            )
        })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(METRICS_CONTENT_TYPE),
        )],
        text,
    )
        .into_response())
}

fn entry_json(entry: &DeliveryEntry, registry: &EndpointRegistry) -> Value {
    let has_endpoint = entry
        .destination_ods
        .as_deref()
        .is_some_and(|ods| registry.get(ods).is_some());
    let pending = entry.state == DeliveryState::Pending;
    // A receiver's OperationOutcome is shown as JSON; anything else as text.
    let receiver_response = entry.receiver_response.as_deref().map(|body| {
        serde_json::from_str::<Value>(body).unwrap_or_else(|_| Value::String(body.to_owned()))
    });
    json!({
        "seq": entry.seq,
        "referral_id": entry.referral_id,
        "resource": format!("{}/{}/_history/{}", entry.resource_type, entry.resource_id, entry.version_id),
        "destination": entry.destination_ods,
        "state": entry.state.as_str(),
        "awaiting_endpoint": pending && !has_endpoint,
        "attempts": entry.attempts,
        "created_at": entry.created_at,
        // 0 is a new row, due at once: due since it was made, not since
        // 1970. An operator's retry stores its own time.
        "next_attempt_at": pending.then(|| match entry.next_attempt_ms {
            0 => Some(entry.created_at.clone()),
            ms => Instant::from_unix_millis(ms).map(Instant::to_fhir),
        }).flatten(),
        "last_attempt_at": entry.last_attempt_at,
        "last_status": entry.last_status,
        "last_error": entry.last_error,
        "receiver_response": receiver_response,
        "delivered_at": entry.delivered_at,
        "dead_at": entry.dead_at,
        "blocked_by": entry.blocked_by,
    })
}
