//! The social prescribing service's own API (`/api/...`, plain JSON): the
//! referral worklist, one referral's record and timeline, stage changes,
//! outcome measures and notes. Described by `openapi.json` (served at
//! `/api/openapi.json`; a test checks it names every route and that
//! answers match its schemas).
//!
//! Errors are RFC 9457 problem details (`application/problem+json`), made
//! only by `problem::Problem`; FHIR's OperationOutcome stays under `/fhir`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::authenticate::require_staff;
use super::middleware::RequestContext;
use super::problem::Problem;
use crate::fhir::Instant;
use crate::identity::staff;
use crate::identity::{Access, Caller, StaffAction};
use crate::referral::milestone::StageMilestone;
use crate::referral::record::ReferralDetail;
use crate::referral::stage::Stage;
use crate::store::referrals::{Assignee, ReferralFilter};
use crate::workflow::{GP_ACTOR, OutcomeRequest, TransitionRequest};

/// The OpenAPI description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Who acted, when the request does not say.
const DEFAULT_ACTOR: &str = "service";

/// `by`: who acted. `gp` is reserved for the referrer's own changes.
/// Who acted: the authenticated person (`Access::actor_label`), whatever `by` says (a
/// `by` field is accepted for compatibility and ignored). Only the open modes, where
/// nobody is authenticated, take `by` (default `service`).
pub(super) fn actor(access: &Access, by: Option<&str>) -> Result<String, Problem> {
    if !matches!(access.caller(), Caller::Developer | Caller::Unauthenticated) {
        return Ok(access.actor_label());
    }
    open_actor(by).map(str::to_owned)
}

fn open_actor(by: Option<&str>) -> Result<&str, Problem> {
    match by.map(str::trim) {
        None => Ok(DEFAULT_ACTOR),
        Some("") => Err(Problem::bad_request("by, when given, names who acted")),
        Some(GP_ACTOR) => Err(Problem::bad_request(
            "by 'gp' is reserved for the referrer's own changes (withdrawals); name the member of staff",
        )),
        Some(name) if name.chars().count() > 100 => {
            Err(Problem::bad_request("by is at most 100 characters"))
        }
        Some(name) => Ok(name),
    }
}

/// `GET /api/openapi.json`.
pub async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

/// The worklist's query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    stage: Option<String>,
    practice: Option<String>,
    received_from: Option<String>,
    received_to: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// Most referrals on one page.
const MAX_LIMIT: u32 = 200;
const DEFAULT_LIMIT: u32 = 50;

/// `GET /api/referrals`: referrals, oldest received first, filtered and paged.
pub async fn list(
    State(state): State<AppState>,
    access: Access,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    require_staff(&access, StaffAction::ViewWorklist)?;
    let Query(query) = query.map_err(|e| {
        Problem::bad_request(format!(
            "{}; the parameters are stage, practice, received_from, received_to, cursor and limit",
            e.body_text()
        ))
    })?;
    let stage = query.stage.as_deref().map(parse_stage).transpose()?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Problem::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let after = query.cursor.as_deref().map(parse_cursor).transpose()?;
    let filter = ReferralFilter {
        stage,
        practice: query.practice.clone(),
        received_from: query
            .received_from
            .as_deref()
            .map(|d| bound("received_from", d))
            .transpose()?,
        received_to: query
            .received_to
            .as_deref()
            .map(|d| bound("received_to", d))
            .transpose()?,
        assignee: Assignee::Any,
        person: None,
        reason: None,
        not_contacted_before: None,
        ids: None,
        after,
        // One more than asked, to know whether there is a next page.
        limit: limit + 1,
    };
    let mut referrals = state.store.list_referrals(&filter).await?;
    let next_cursor = if referrals.len() > limit as usize {
        referrals.truncate(limit as usize);
        referrals
            .last()
            .map(|r| format!("{}~{}", r.received_at, r.id))
    } else {
        None
    };
    tracing::info!(count = referrals.len(), "referrals listed");
    Ok(Json(json!({ "items": referrals, "next_cursor": next_cursor })).into_response())
}

/// A `received_from`/`received_to` bound: a FHIR instant, or a date
/// (meaning its first moment, UTC).
fn bound(name: &str, value: &str) -> Result<String, Problem> {
    let instant = if value.len() == 10 {
        format!("{value}T00:00:00Z")
    } else {
        value.to_owned()
    };
    Instant::parse(&instant).map(Instant::to_fhir).map_err(|_| {
        Problem::bad_request(format!(
            "{name} must be a date (2026-11-21) or a date and time with a zone (2026-11-21T09:00:00Z)"
        ))
    })
}

/// A stage code from a request; the refusal lists every stage (`UnknownStage` says so).
fn parse_stage(code: &str) -> Result<Stage, Problem> {
    Stage::parse(code).map_err(|e| Problem::bad_request(e.to_string()))
}

fn parse_cursor(cursor: &str) -> Result<(String, String), Problem> {
    cursor
        .split_once('~')
        .filter(|(at, id)| Instant::parse(at).is_ok() && !id.is_empty())
        .map(|(at, id)| (at.to_owned(), id.to_owned()))
        .ok_or_else(|| {
            Problem::bad_request("cursor is not one this API gave; start again without it")
        })
}

/// `GET /api/referrals/{id}`: the record with its timeline, notes and outcomes.
pub async fn detail(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    require_staff(&access, StaffAction::ViewReferral { assigned_to: None })?;
    let Path(id) = path?;
    let detail = load(&state, &id).await?;
    // A link worker who may not open a colleague's referral
    // (`auth.link_workers_see_all_referrals = false`) gets the answer for a referral
    // that does not exist, as the console does: the worklist shows it is there, the
    // detail (the patient's data) is not theirs to read.
    if !access.staff_may(StaffAction::ViewReferral {
        assigned_to: detail.referral.assigned_to.as_deref(),
    }) {
        return Err(not_found(&id));
    }
    Ok(Json(detail_json(&state, &detail)?).into_response())
}

/// The referral id in the path, once `access` may do `action` on that referral: the
/// role first (403 before anything is read), then 404 when there is no such referral,
/// then the assignee's rule (a link worker acts on their own or unassigned referrals).
/// Every `/api/referrals/{id}/…` handler starts here.
pub(super) async fn referral_for(
    state: &AppState,
    access: &Access,
    path: Result<Path<String>, PathRejection>,
    action: fn(Option<&str>) -> StaffAction<'_>,
) -> Result<String, Problem> {
    require_staff(access, action(None))?;
    let Path(id) = path?;
    let assignee = assignee_of(state, &id).await?;
    require_staff(access, action(assignee.as_deref()))?;
    Ok(id)
}

/// Who referral `id` is assigned to (404 when there is no such referral): what a link
/// worker's permission depends on.
pub(super) async fn assignee_of(state: &AppState, id: &str) -> Result<Option<String>, Problem> {
    state.store.referral_assignee(id).await?.ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "Referral not found",
            format!("referral {id} does not exist"),
        )
    })
}

/// Checks that `username` may hold a caseload: an enabled link worker or service
/// manager, with a staff account or signed in through the identity provider
/// (`staff::assignable`, the console's rule too). The problem says what is wrong (400).
pub async fn check_assignee(state: &AppState, username: &str) -> Result<(), Problem> {
    let found = staff::assignable_one(&state.store, username)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "reading the assignable people failed");
            Problem::internal()
        })?;
    match found {
        Some(_) => Ok(()),
        None => Err(Problem::bad_request(format!(
            "{username} is not an enabled link worker or service manager"
        ))),
    }
}

/// An assignment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentBody {
    assigned_to: Option<String>,
}

/// `POST /api/referrals/{id}/assignment` (service managers): assigns the referral to a
/// link worker, or unassigns it (`null`).
pub async fn assignment(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
    context: RequestContext,
    body: Result<Json<AssignmentBody>, JsonRejection>,
) -> Result<Response, Problem> {
    require_staff(&access, StaffAction::Assign)?;
    let Path(id) = path?;
    let Json(body) = body?;
    if let Some(who) = body.assigned_to.as_deref() {
        check_assignee(&state, who).await?;
    }
    let actor = actor(&access, None)?;
    let mut tx = state.store.begin_write().await?;
    state
        .workflow
        .assign(&mut tx, &id, body.assigned_to.as_deref(), &actor)
        .await?;
    context.audit.commit(tx, 200).await?;
    tracing::info!(referral_id = %id, "referral assigned");
    let detail = load(&state, &id).await?;
    Ok(Json(detail_json(&state, &detail)?).into_response())
}

async fn load(state: &AppState, id: &str) -> Result<ReferralDetail, Problem> {
    state
        .store
        .referral_detail(id)
        .await?
        .ok_or_else(|| not_found(id))
}

fn not_found(id: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "Referral not found",
        format!("referral {id} does not exist"),
    )
}

fn detail_json(state: &AppState, detail: &ReferralDetail) -> Result<Value, Problem> {
    let follow_ups = super::outcomes::detail_follow_ups(state, detail);
    referral_json(detail, &state.fhir_base(), follow_ups).map_err(|e| {
        tracing::error!(error = %e, "service API: a referral could not be serialised");
        Problem::internal()
    })
}

/// `GET /api/referrals/{id}`'s body: the record, the stages it may move to
/// next, where its FHIR resources are (`fhir_base` as in `Location`), and its follow-ups
/// (`api::outcomes::detail_follow_ups`).
pub fn referral_json(
    detail: &ReferralDetail,
    fhir_base: &str,
    follow_ups: Value,
) -> Result<Value, serde_json::Error> {
    let mut value = serde_json::to_value(detail)?;
    value["allowed_transitions"] = json!(
        detail
            .referral
            .stage
            .allowed_next()
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
    );
    value["follow_ups"] = follow_ups;
    value["fhir"] = json!({
        "service_request": format!("{fhir_base}/ServiceRequest/{}", detail.referral.id),
        "task": format!("{fhir_base}/Task/{}", detail.referral.task_id),
        "observations": detail
            .outcomes
            .iter()
            .map(|o| format!("{fhir_base}/Observation/{}", o.id))
            .collect::<Vec<_>>(),
    });
    Ok(value)
}

/// A stage change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransitionBody {
    to: String,
    reason: Option<String>,
    note: Option<String>,
    by: Option<String>,
    milestone: Option<TransitionMilestone>,
}

/// The milestone a stage change records with it (`referral::milestone::for_stage`):
/// `assessment-done` the initial assessment, `plan-agreed` the action plan agreed on `on`,
/// `completed` and `withdrawn` a discharge with `discharge_reason`; `complex` and `basis`
/// a complexity assessment made at the same time.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransitionMilestone {
    on: String,
    complex: Option<bool>,
    basis: Option<String>,
    discharge_reason: Option<String>,
}

/// `POST /api/referrals/{id}/transitions`.
pub async fn transition(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
    context: RequestContext,
    body: Result<Json<TransitionBody>, JsonRejection>,
) -> Result<Response, Problem> {
    let id = referral_for(&state, &access, path, |assigned_to| {
        StaffAction::Transition { assigned_to }
    })
    .await?;
    let Json(body) = body?;
    let to = parse_stage(&body.to)?;
    let milestone = match &body.milestone {
        Some(m) => Some(StageMilestone {
            on: Some(super::milestones::parse_day(&m.on).ok_or_else(|| {
                Problem::bad_request("milestone.on must be a date such as 2026-04-01")
            })?),
            complex: m.complex,
            basis: m.basis.as_deref(),
            discharge_reason: m.discharge_reason.as_deref(),
        }),
        None => None,
    };
    let actor = actor(&access, body.by.as_deref())?;
    let actor = actor.as_str();
    let request_id = context.request_id.as_str();
    let mut tx = state.store.begin_write().await?;
    let referral = state
        .workflow
        .transition(
            &mut tx,
            &id,
            &TransitionRequest {
                to,
                reason: body.reason.as_deref(),
                note: body.note.as_deref(),
                actor,
                request_id,
                milestone,
            },
        )
        .await?;
    context.audit.commit(tx, 200).await?;
    tracing::info!(referral_id = %referral.id, stage = to.as_str(), "referral moved");
    let detail = load(&state, &id).await?;
    Ok(Json(detail_json(&state, &detail)?).into_response())
}

/// An outcome measure.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeBody {
    measure: String,
    answers: Vec<i64>,
    recorded_at: String,
    by: Option<String>,
}

/// `POST /api/referrals/{id}/outcomes`.
pub async fn outcome(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
    context: RequestContext,
    body: Result<Json<OutcomeBody>, JsonRejection>,
) -> Result<Response, Problem> {
    let id = referral_for(&state, &access, path, |assigned_to| {
        StaffAction::RecordOutcome { assigned_to }
    })
    .await?;
    let Json(body) = body?;
    let catalogue = &state.outcomes.catalogue;
    let measure = catalogue.get(&body.measure).ok_or_else(|| {
        Problem::bad_request(format!(
            "'{}' is not an outcome measure; the measures are {}",
            body.measure,
            catalogue
                .iter()
                .map(|m| m.code.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let Ok(recorded_at) = Instant::parse(&body.recorded_at) else {
        return Err(Problem::bad_request(
            "recorded_at must be a date and time with a zone, e.g. 2026-11-21T10:30:00Z",
        ));
    };
    check_recorded_at(recorded_at, Instant::now())?;
    let max_repeats = state.settings.limits.max_repeats;
    if body.answers.len() > max_repeats {
        return Err(unprocessable(format!(
            "answers has {} items, more than the {max_repeats} Sprig accepts",
            body.answers.len()
        )));
    }
    let actor = actor(&access, body.by.as_deref())?;
    let actor = actor.as_str();
    let request_id = context.request_id.as_str();
    let mut tx = state.store.begin_write().await?;
    let outcome = state
        .workflow
        .record_outcome(
            &mut tx,
            &id,
            &OutcomeRequest {
                measure,
                answers: &body.answers,
                recorded_at: &body.recorded_at,
                actor,
                request_id,
            },
        )
        .await?;
    context.audit.commit(tx, 201).await?;
    tracing::info!(referral_id = %id, outcome_id = %outcome.id, measure = %measure.code, "outcome recorded");
    let location = format!("{}/Observation/{}", state.fhir_base(), outcome.id);
    let mut response = (StatusCode::CREATED, Json(&outcome)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// How far ahead of Sprig's clock an outcome's `recorded_at` may be: the
/// recording device's clock may run a little fast, no more.
const CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

/// The earliest `recorded_at` accepted: before it, a date is a typing or
/// defaulting mistake (`0001-01-01`), not when an outcome was measured.
const EARLIEST_RECORDED_AT: time::OffsetDateTime = time::macros::datetime!(2000-01-01 0:00 UTC);

/// 422 for a `recorded_at` in the future (beyond [`CLOCK_SKEW`]) or before
/// [`EARLIEST_RECORDED_AT`].
fn check_recorded_at(recorded_at: Instant, now: Instant) -> Result<(), Problem> {
    let at = recorded_at.as_offset_date_time();
    if at > now.as_offset_date_time() + CLOCK_SKEW {
        return Err(unprocessable(
            "recorded_at is in the future; an outcome is recorded when it was measured",
        ));
    }
    if at < EARLIEST_RECORDED_AT {
        return Err(unprocessable(
            "recorded_at is before 2000-01-01, earlier than any outcome Sprig can have recorded",
        ));
    }
    Ok(())
}

/// 422 for a body that reads but that Sprig does not accept.
fn unprocessable(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid request", detail)
}

/// A note.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoteBody {
    text: String,
    by: Option<String>,
}

/// `POST /api/referrals/{id}/notes`.
pub async fn note(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
    context: RequestContext,
    body: Result<Json<NoteBody>, JsonRejection>,
) -> Result<Response, Problem> {
    let id = referral_for(&state, &access, path, |assigned_to| StaffAction::AddNote {
        assigned_to,
    })
    .await?;
    let Json(body) = body?;
    let max_chars = state.settings.limits.max_string_chars;
    if body.text.len() > max_chars && body.text.chars().count() > max_chars {
        return Err(unprocessable(format!(
            "text is longer than Sprig accepts for a note ({max_chars} characters)"
        )));
    }
    let actor = actor(&access, body.by.as_deref())?;
    let actor = actor.as_str();
    let mut tx = state.store.begin_write().await?;
    state
        .workflow
        .add_note(&mut tx, &id, actor, &body.text)
        .await?;
    context.audit.commit(tx, 201).await?;
    tracing::info!(referral_id = %id, "note added");
    let detail = load(&state, &id).await?;
    Ok((StatusCode::CREATED, Json(detail_json(&state, &detail)?)).into_response())
}
