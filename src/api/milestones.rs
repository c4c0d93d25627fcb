//! `/api/referrals/{id}/milestones`: the milestones an outcomes contract pays on
//! (`referral::milestone`), recorded (link workers on their own or unassigned referrals,
//! service managers on any) and read (whoever may open the referral). Audited like every
//! `/api` request; the report counts on them.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use time::{Date, OffsetDateTime};

use super::AppState;
use super::middleware::RequestContext;
use super::problem::Problem;
use super::service::{actor, referral_for};
use crate::identity::{Access, StaffAction};
use crate::outcomes::schedule::uk_date;
use crate::referral::milestone::MilestoneInput;

/// A milestone to record.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MilestoneBody {
    kind: String,
    on: String,
    complex: Option<bool>,
    basis: Option<String>,
    reason: Option<String>,
    by: Option<String>,
}

/// A day such as `2026-04-01`.
pub fn parse_day(value: &str) -> Option<Date> {
    Date::parse(
        value.trim(),
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .ok()
}

/// `POST /api/referrals/{id}/milestones`: 201 with the milestone recorded.
pub async fn record(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
    context: RequestContext,
    body: Result<Json<MilestoneBody>, JsonRejection>,
) -> Result<Response, Problem> {
    let id = referral_for(&state, &access, path, |assigned_to| {
        StaffAction::RecordOutcome { assigned_to }
    })
    .await?;
    let Json(body) = body?;
    let on = parse_day(&body.on)
        .ok_or_else(|| Problem::bad_request("on must be a date such as 2026-04-01"))?;
    let actor = actor(&access, body.by.as_deref())?;
    let input = MilestoneInput {
        kind: &body.kind,
        on: Some(on),
        complex: body.complex,
        basis: body.basis.as_deref(),
        reason: body.reason.as_deref(),
    };
    let mut tx = state.store.begin_write().await?;
    let milestone = state
        .workflow
        .record_milestone(
            &mut tx,
            &id,
            &actor,
            &input,
            uk_date(OffsetDateTime::now_utc()),
        )
        .await?;
    context.audit.commit(tx, 201).await?;
    tracing::info!(referral_id = %id, milestone_id = %milestone.id, kind = milestone.kind.as_str(), "milestone recorded");
    Ok((StatusCode::CREATED, Json(&milestone)).into_response())
}

/// `GET /api/referrals/{id}/milestones`: `{"items": [...]}`, by day.
pub async fn list(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let id = referral_for(&state, &access, path, |assigned_to| {
        StaffAction::ViewReferral { assigned_to }
    })
    .await?;
    let items = state.store.milestones(&id).await?;
    Ok(Json(json!({ "items": items })).into_response())
}
