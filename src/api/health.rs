//! Liveness and readiness probes for orchestrators and load balancers.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;

/// `GET /healthz`: the process is up and serving HTTP.
pub async fn alive() -> Response {
    Json(json!({"status": "pass"})).into_response()
}

/// `GET /readyz`: the database answers, so requests can be served.
pub async fn ready(State(state): State<AppState>) -> Response {
    let check = tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ping()).await;
    match check {
        Ok(Ok(())) => {
            Json(json!({"status": "pass", "checks": {"database": "pass"}})).into_response()
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "fail", "checks": {"database": "fail"}})),
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "fail", "checks": {"database": "timeout"}})),
        )
            .into_response(),
    }
}
