//! The console (`/console`): the social prescribing service's Link Workers and managers
//! work their referrals in a browser. Server-rendered HTML (maud, checked at compile
//! time), the NHS.UK frontend's styles (`assets`), every action a plain form post.
//!
//! A request reaches a handler here only through `api`'s layers: `api::authenticate`
//! (gate `Console`: a live session from the `sprig_console` cookie, else a redirect to
//! sign-in) put the person's `identity::Access` and `identity::ConsoleSession` in it, and
//! `api::audit` writes its audit row as them. Handlers change referrals only through
//! `workflow`, in a `store::WriteTx` committed with the audit row
//! (`AuditHandle::commit`): the same Task versions and deliveries as `/api`.
//!
//! Invariants:
//! - every form carries the session's CSRF token and every post is checked for it and
//!   for a same-origin `Origin` (and `Sec-Fetch-Site`) before anything is read or done;
//! - what a person may do is decided by `Access::staff_may` on the server, whatever the
//!   page showed; forms for actions of another role are not shown, and refused if forged;
//! - pages are `no-store`, framed by no one, and script-free (`Content-Security-Policy`);
//! - the session cookie is `HttpOnly`, `SameSite=Strict`, `Path=/console`, and `Secure`
//!   whenever Sprig is reached over HTTPS (its own TLS or an `https` public URL).

pub mod assets;
mod measures;
mod pages;
mod time;

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::api::AppState;
use crate::api::authenticate::CONSOLE_COOKIE;
use crate::api::middleware::RequestContext;
use crate::fhir::Instant;
use crate::identity::session::{self, csrf_matches};
use crate::identity::{Access, ConsoleSession, StaffAction, StaffRole, staff};
use crate::referral::measure::Measure;
use crate::referral::stage::Stage;
use crate::store::StoreError;
use crate::store::outbox::{DeliveryFilter, DeliveryState};
use crate::store::referrals::{Assignee, PersonSearch, ReferralFilter};
use crate::workflow::{OutcomeRequest, TransitionRequest, WorkflowError};

pub use pages::Flash;

/// The console's routes (each is in `api::authenticate::ROUTES`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console", get(home))
        .route("/console/sign-in", get(sign_in_page).post(sign_in))
        .route("/console/sign-out", post(sign_out))
        .route("/console/style/{file}", get(assets::style))
        .route("/console/assets/images/{file}", get(assets::image))
        .route("/console/referrals", get(worklist))
        .route("/console/referrals/{id}", get(referral))
        .route("/console/referrals/{id}/transition", post(transition))
        .route("/console/referrals/{id}/notes", post(note))
        .route(
            "/console/referrals/{id}/outcomes",
            get(outcome_form).post(outcome),
        )
        .route("/console/referrals/{id}/assignment", post(assign))
        .route("/console/caseloads", get(caseloads))
        .route("/console/deliveries", get(deliveries))
        .route("/console/deliveries/{seq}/retry", post(retry_delivery))
}

/// Why a console request failed: a page saying so.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No such referral or page (404).
    #[error("{0}")]
    NotFound(String),
    /// The person's role does not allow it (403).
    #[error("{0}")]
    Forbidden(String),
    /// A post without the session's CSRF token, or from another site (403).
    #[error("the form is not one this console gave you")]
    CrossSite,
    /// The request cannot be acted on (400).
    #[error("{0}")]
    BadRequest(String),
    /// The referral's state does not allow it (409).
    #[error("{0}")]
    Conflict(String),
    /// Storage is unavailable (503).
    #[error("storage is unavailable")]
    Unavailable,
    /// A defect (500); the cause is logged, not shown.
    #[error("defect: {0}")]
    Internal(String),
}

impl From<StoreError> for ConsoleError {
    fn from(error: StoreError) -> Self {
        if error.is_transient() {
            tracing::warn!(error = %error, "console: storage unavailable");
            ConsoleError::Unavailable
        } else {
            ConsoleError::Internal(error.to_string())
        }
    }
}

impl From<WorkflowError> for ConsoleError {
    fn from(error: WorkflowError) -> Self {
        match error {
            WorkflowError::NotFound(_) => {
                ConsoleError::NotFound("There is no such referral".into())
            }
            WorkflowError::IllegalTransition { .. } | WorkflowError::Conflict(_) => {
                ConsoleError::Conflict(error.to_string())
            }
            WorkflowError::Invalid(message) => ConsoleError::BadRequest(message),
            WorkflowError::Score(score) => ConsoleError::BadRequest(score.to_string()),
            WorkflowError::Unmappable(_) => ConsoleError::BadRequest(error.to_string()),
            WorkflowError::Store(store) => store.into(),
            WorkflowError::Defect(defect) => ConsoleError::Internal(defect),
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, title, detail) = match &self {
            ConsoleError::NotFound(m) => (StatusCode::NOT_FOUND, "Page not found", m.clone()),
            ConsoleError::Forbidden(m) => (StatusCode::FORBIDDEN, "You cannot do this", m.clone()),
            ConsoleError::CrossSite => (
                StatusCode::FORBIDDEN,
                "The form could not be accepted",
                "Go back to the page, reload it and try again.".to_owned(),
            ),
            ConsoleError::BadRequest(m) => {
                (StatusCode::BAD_REQUEST, "There is a problem", m.clone())
            }
            ConsoleError::Conflict(m) => {
                (StatusCode::CONFLICT, "This could not be done", m.clone())
            }
            ConsoleError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Sorry, there is a problem with the service",
                "Try again in a few moments.".to_owned(),
            ),
            ConsoleError::Internal(cause) => {
                tracing::error!(cause = %cause, "console: defect");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Sorry, there is a problem with the service",
                    "Try again later. The problem has been logged.".to_owned(),
                )
            }
        };
        html(status, pages::error(title, &detail))
    }
}

type Result<T, E = ConsoleError> = std::result::Result<T, E>;

/// A page: HTML, never stored, never framed, no script.
fn html(status: StatusCode, markup: maud::Markup) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
                ),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            // Not `no-referrer`: under it Chromium sends `Origin: null` with its own forms.
            (header::REFERRER_POLICY, HeaderValue::from_static("same-origin")),
        ],
        markup.into_string(),
    )
        .into_response()
}

fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A posted form's fields, in order.
#[derive(Debug, Default)]
struct Fields(Vec<(String, String)>);

impl Fields {
    fn parse(body: &[u8]) -> Self {
        Fields(
            form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The field's value, trimmed, if given and not blank.
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }
}

/// Whether a post comes from this console's own pages: `Sec-Fetch-Site`, when sent, is
/// not `cross-site`/`same-site`, and `Origin`, when sent, is this server's.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .is_some_and(|(scheme, rest)| matches!(scheme, "http" | "https") && rest == host)
}

/// Parses a post of `session` and checks it is not forged: same origin, the session's
/// CSRF token. Nothing else is read before this passes.
fn checked_form(session: &ConsoleSession, headers: &HeaderMap, body: &[u8]) -> Result<Fields> {
    if !same_origin(headers) {
        tracing::warn!(username = %session.username, "console: cross-site post refused");
        return Err(ConsoleError::CrossSite);
    }
    let fields = Fields::parse(body);
    if !fields
        .get("csrf")
        .is_some_and(|given| csrf_matches(session, given))
    {
        tracing::warn!(username = %session.username, "console: post without the session's CSRF token refused");
        return Err(ConsoleError::CrossSite);
    }
    Ok(fields)
}

fn require(access: &Access, action: StaffAction<'_>) -> Result<()> {
    if access.staff_may(action) {
        Ok(())
    } else {
        Err(ConsoleError::Forbidden(
            "Your role does not allow this.".into(),
        ))
    }
}

/// Whether the console is reached over HTTPS (the cookie is then `Secure`).
fn over_https(state: &AppState) -> bool {
    state.settings.tls.enabled()
        || state
            .settings
            .public_base_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
}

fn session_cookie(state: &AppState, value: &str, max_age: i64) -> HeaderValue {
    let secure = if over_https(state) { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{CONSOLE_COOKIE}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("sprig_console=; Path=/console; Max-Age=0"))
}

// ---- signing in and out -------------------------------------------------------------

/// `GET /console`: the worklist.
async fn home() -> Response {
    see_other("/console/referrals")
}

/// `GET /console/sign-in`.
async fn sign_in_page(State(state): State<AppState>) -> Result<Response> {
    let has_staff = state.store.has_enabled_staff().await?;
    Ok(html(StatusCode::OK, pages::sign_in(has_staff, None, None)))
}

/// `POST /console/sign-in`: checks the username and password (Argon2id) and starts a
/// session. A refusal does not say which part was wrong.
async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    if !same_origin(&headers) {
        return Err(ConsoleError::CrossSite);
    }
    let fields = Fields::parse(&body);
    let has_staff = state.store.has_enabled_staff().await?;
    let username = fields.get("username").unwrap_or("").to_owned();
    let password = fields
        .0
        .iter()
        .find(|(k, _)| k == "password")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    if username.is_empty() || password.is_empty() {
        let error = "Enter your username and password";
        return Ok(html(
            StatusCode::BAD_REQUEST,
            pages::sign_in(has_staff, Some(error), Some(&username)),
        ));
    }
    match staff::check_credentials(&state.store, &username, password).await {
        Ok(account) => {
            let now = unix_now();
            let (token, _) = session::start(&state.store, &account, now)
                .await
                .map_err(|e| ConsoleError::Internal(e.to_string()))?;
            let mut response = see_other("/console/referrals");
            response.headers_mut().insert(
                header::SET_COOKIE,
                session_cookie(&state, &token, session::ABSOLUTE_SECS),
            );
            Ok(response)
        }
        Err(staff::SignInError::WrongCredentials) => Ok(html(
            StatusCode::UNAUTHORIZED,
            pages::sign_in(
                has_staff,
                Some("The username or password is not right, or the account is disabled"),
                Some(&username),
            ),
        )),
        Err(error) => Err(ConsoleError::Internal(error.to_string())),
    }
}

/// `POST /console/sign-out`: ends the session and clears the cookie.
async fn sign_out(
    State(state): State<AppState>,
    Extension(session): Extension<ConsoleSession>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    checked_form(&session, &headers, &body)?;
    state.store.delete_session(&session.token_hash).await?;
    tracing::info!(username = %session.username, "console session ended");
    let mut response = see_other("/console/sign-in");
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&state, "", 0));
    Ok(response)
}

// ---- the worklist -------------------------------------------------------------------

/// The worklist's query.
#[derive(Debug, Default, Deserialize)]
pub struct WorklistQuery {
    /// `mine`, `unassigned`, `all`, or (default) mine and unassigned.
    view: Option<String>,
    /// A stage code.
    stage: Option<String>,
    /// An NHS number, or the start of a family name.
    q: Option<String>,
    /// The previous page's last row (`received_at~id`).
    after: Option<String>,
}

/// Referrals per page.
const PAGE: u32 = 25;

/// How the worklist is narrowed, as the page shows it.
#[derive(Debug, Clone)]
pub struct WorklistView {
    /// `mine`, `unassigned`, `all` or `open` (mine and unassigned).
    pub view: &'static str,
    /// The stage filter.
    pub stage: Option<Stage>,
    /// The search text.
    pub q: Option<String>,
    /// The search could not be understood.
    pub q_error: Option<&'static str>,
}

async fn worklist(
    State(state): State<AppState>,
    access: Access,
    Extension(session): Extension<ConsoleSession>,
    query: std::result::Result<Query<WorklistQuery>, QueryRejection>,
) -> Result<Response> {
    require(&access, StaffAction::ViewWorklist)?;
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let me = session.username.clone();
    let (view, assignee) = match query.view.as_deref() {
        Some("mine") => ("mine", Assignee::Only(me)),
        Some("unassigned") => ("unassigned", Assignee::Nobody),
        Some("all") => ("all", Assignee::Any),
        _ if session.role == StaffRole::LinkWorker => ("open", Assignee::MineOrNobody(me)),
        _ => ("all", Assignee::Any),
    };
    let stage = query
        .stage
        .as_deref()
        .filter(|s| !s.is_empty())
        .and_then(|s| Stage::parse(s).ok());
    let q = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    let (person, q_error) = match q {
        None => (None, None),
        Some(text) => {
            let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
            if digits.len() == 10 && digits.chars().all(|c| c.is_ascii_digit()) {
                (Some(PersonSearch::NhsNumber(digits)), None)
            } else if text.chars().count() >= 2 && !text.chars().any(|c| c.is_ascii_digit()) {
                (Some(PersonSearch::FamilyName(text.to_owned())), None)
            } else {
                (
                    None,
                    Some("Enter a 10-digit NHS number or at least 2 letters of a family name"),
                )
            }
        }
    };
    let after = query
        .after
        .as_deref()
        .and_then(|a| a.split_once('~'))
        .map(|(at, id)| (at.to_owned(), id.to_owned()));
    let filter = ReferralFilter {
        stage,
        assignee: assignee.clone(),
        person,
        after,
        limit: PAGE + 1,
        ..ReferralFilter::default()
    };
    let (mut referrals, counts) = if q_error.is_some() {
        (Vec::new(), state.store.stage_counts(&assignee).await?)
    } else {
        tokio::try_join!(
            state.store.list_referrals(&filter),
            state.store.stage_counts(&assignee)
        )?
    };
    let next = if referrals.len() > PAGE as usize {
        referrals.truncate(PAGE as usize);
        referrals
            .last()
            .map(|r| format!("{}~{}", r.received_at, r.id))
    } else {
        None
    };
    tracing::info!(count = referrals.len(), "console: worklist shown");
    let view = WorklistView {
        view,
        stage,
        q: q.map(str::to_owned),
        q_error,
    };
    Ok(html(
        if q_error.is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        },
        pages::worklist(&session, &view, &referrals, &counts, next.as_deref()),
    ))
}

// ---- one referral -------------------------------------------------------------------

/// The referral page's query: what was just done.
#[derive(Debug, Default, Deserialize)]
pub struct ReferralQuery {
    /// The stage it was just moved to.
    moved: Option<String>,
    /// The outcome just recorded.
    outcome: Option<String>,
    /// A note was just added.
    noted: Option<String>,
    /// It was just assigned.
    assigned: Option<String>,
}

async fn referral(
    State(state): State<AppState>,
    access: Access,
    Extension(session): Extension<ConsoleSession>,
    context: RequestContext,
    Path(id): Path<String>,
    query: std::result::Result<Query<ReferralQuery>, QueryRejection>,
) -> Result<Response> {
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let flash = if let Some(stage) = query.moved.as_deref().and_then(|s| Stage::parse(s).ok()) {
        Some(Flash::Moved(stage))
    } else if let Some(outcome) = query.outcome {
        Some(Flash::Outcome(outcome))
    } else if query.noted.is_some() {
        Some(Flash::Noted)
    } else if query.assigned.is_some() {
        Some(Flash::Assigned)
    } else {
        None
    };
    render_referral(
        &state,
        &access,
        &session,
        &context,
        &id,
        flash,
        None,
        StatusCode::OK,
    )
    .await
}

/// A form's error, shown in the error summary and beside its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's id (the summary links to it).
    pub field: &'static str,
    /// What to do.
    pub message: String,
    /// What the person had entered, kept.
    pub kept: Vec<(String, String)>,
}

#[allow(clippy::too_many_arguments)]
async fn render_referral(
    state: &AppState,
    access: &Access,
    session: &ConsoleSession,
    context: &RequestContext,
    id: &str,
    flash: Option<Flash>,
    error: Option<FieldError>,
    status: StatusCode,
) -> Result<Response> {
    require(access, StaffAction::ViewReferral { assigned_to: None })?;
    let detail = state
        .store
        .referral_detail(id)
        .await?
        .ok_or_else(|| ConsoleError::NotFound("There is no such referral".into()))?;
    require(
        access,
        StaffAction::ViewReferral {
            assigned_to: detail.referral.assigned_to.as_deref(),
        },
    )?;
    context.audit.note_referral(id);
    if let Some(patient) = &detail.referral.patient_id {
        context.audit.note_patient(patient);
    }
    let sent = state
        .store
        .deliveries(&DeliveryFilter {
            referral_id: Some(id.to_owned()),
            limit: 200,
            ..DeliveryFilter::default()
        })
        .await?;
    let assignable = if access.staff_may(StaffAction::Assign) {
        staff::list_accounts(&state.store)
            .await
            .map_err(|e| ConsoleError::Internal(e.to_string()))?
            .into_iter()
            .filter(|a| {
                a.enabled && matches!(a.role, StaffRole::LinkWorker | StaffRole::ServiceManager)
            })
            .map(|a| (a.username, a.display_name))
            .collect()
    } else {
        Vec::new()
    };
    let reason_required: Vec<Stage> = Stage::ALL
        .into_iter()
        .filter(|s| {
            state
                .workflow
                .mappings()
                .outbound
                .stage(*s)
                .status_reason_required
        })
        .collect();
    let may = pages::Permissions {
        work: access.staff_may(StaffAction::Transition {
            assigned_to: detail.referral.assigned_to.as_deref(),
        }),
        assign: access.staff_may(StaffAction::Assign),
    };
    Ok(html(
        status,
        pages::referral(&pages::ReferralPage {
            session,
            detail: &detail,
            sent: &sent,
            assignable: &assignable,
            reason_required: &reason_required,
            may,
            flash,
            error,
        }),
    ))
}

/// The referral's assignee, checked against `action` for the person (404 first).
async fn check_work(
    state: &AppState,
    access: &Access,
    id: &str,
    action: fn(Option<&str>) -> StaffAction<'_>,
) -> Result<()> {
    require(access, action(None))?;
    let assignee = state
        .store
        .referral_assignee(id)
        .await?
        .ok_or_else(|| ConsoleError::NotFound("There is no such referral".into()))?;
    require(access, action(assignee.as_deref()))
}

fn kept(fields: &Fields) -> Vec<(String, String)> {
    fields
        .0
        .iter()
        .filter(|(k, _)| k != "csrf")
        .cloned()
        .collect()
}

/// A refused form: the referral page again, 400, with `message` in the error summary and
/// beside `field`, and what the person had entered kept in the form. Every action's
/// validation ends here, so each refusal looks and behaves the same.
async fn refuse(
    on: &OnReferral<'_>,
    fields: &Fields,
    field: &'static str,
    message: &str,
) -> Result<Response> {
    let error = FieldError {
        field,
        message: message.to_owned(),
        kept: kept(fields),
    };
    render_referral(
        on.state,
        on.access,
        on.session,
        on.context,
        on.id,
        None,
        Some(error),
        StatusCode::BAD_REQUEST,
    )
    .await
}

/// Who is acting on which referral: what a refusal needs to show the page again.
struct OnReferral<'a> {
    state: &'a AppState,
    access: &'a Access,
    session: &'a ConsoleSession,
    context: &'a RequestContext,
    id: &'a str,
}

/// `POST /console/referrals/{id}/transition`: `to`, and `reason` where the GP must be
/// told why, and an optional `note`.
async fn transition(
    State(state): State<AppState>,
    access: Access,
    Extension(session): Extension<ConsoleSession>,
    context: RequestContext,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let fields = checked_form(&session, &headers, &body)?;
    check_work(&state, &access, &id, |a| StaffAction::Transition {
        assigned_to: a,
    })
    .await?;
    let on = OnReferral {
        state: &state,
        access: &access,
        session: &session,
        context: &context,
        id: &id,
    };
    let to = match fields.get("to").map(Stage::parse) {
        Some(Ok(stage)) => stage,
        _ => {
            let message = "Select what has happened";
            return refuse(&on, &fields, "to", message).await;
        }
    };
    let reason = fields.get("reason");
    if reason.is_none()
        && state
            .workflow
            .mappings()
            .outbound
            .stage(to)
            .status_reason_required
    {
        let message = "Enter a reason: the GP practice is told why";
        return refuse(&on, &fields, "reason", message).await;
    }
    let mut tx = state.store.begin_write().await?;
    state
        .workflow
        .transition(
            &mut tx,
            &id,
            &TransitionRequest {
                to,
                reason,
                note: fields.get("note"),
                actor: &session.username,
                request_id: &context.request_id,
            },
        )
        .await?;
    context.audit.commit(tx, 303).await?;
    tracing::info!(referral_id = %id, stage = to.as_str(), "console: referral moved");
    Ok(see_other(&format!(
        "/console/referrals/{id}?moved={}",
        to.as_str()
    )))
}

/// `POST /console/referrals/{id}/notes`: a note, or (`kind=contact-attempt`) a contact
/// attempt that did not reach the person.
async fn note(
    State(state): State<AppState>,
    access: Access,
    Extension(session): Extension<ConsoleSession>,
    context: RequestContext,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let fields = checked_form(&session, &headers, &body)?;
    check_work(&state, &access, &id, |a| StaffAction::AddNote {
        assigned_to: a,
    })
    .await?;
    let on = OnReferral {
        state: &state,
        access: &access,
        session: &session,
        context: &context,
        id: &id,
    };
    let attempt = fields.get("kind") == Some("contact-attempt");
    let text = match (attempt, fields.get("text")) {
        (true, Some(text)) => format!("Contact attempt: {text}"),
        (true, None) => "Contact attempt".to_owned(),
        (false, Some(text)) => text.to_owned(),
        (false, None) => {
            let message = "Enter the note";
            return refuse(&on, &fields, "note-text", message).await;
        }
    };
    let mut tx = state.store.begin_write().await?;
    state
        .workflow
        .add_note(&mut tx, &id, &session.username, &text)
        .await?;
    context.audit.commit(tx, 303).await?;
    tracing::info!(referral_id = %id, "console: note added");
    Ok(see_other(&format!("/console/referrals/{id}?noted=1")))
}

/// `POST /console/referrals/{id}/assignment` (service managers): `assigned_to`, a
/// username, or empty to unassign.
async fn assign(
    State(state): State<AppState>,
    access: Access,
    Extension(session): Extension<ConsoleSession>,
    context: RequestContext,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let fields = checked_form(&session, &headers, &body)?;
    require(&access, StaffAction::Assign)?;
    let who = fields.get("assigned_to");
    let assignable = match who {
        None => true,
        Some(who) => staff::account(&state.store, who)
            .await
            .map_err(|e| ConsoleError::Internal(e.to_string()))?
            .is_some_and(|a| {
                a.enabled && matches!(a.role, StaffRole::LinkWorker | StaffRole::ServiceManager)
            }),
    };
    if let (false, Some(who)) = (assignable, who) {
        let on = OnReferral {
            state: &state,
            access: &access,
            session: &session,
            context: &context,
            id: &id,
        };
        let message = format!("{who} is not an enabled link worker or service manager");
        return refuse(&on, &fields, "assigned_to", &message).await;
    }
    let mut tx = state.store.begin_write().await?;
    state
        .workflow
        .assign(&mut tx, &id, who, &session.username)
        .await?;
    context.audit.commit(tx, 303).await?;
    tracing::info!(referral_id = %id, "console: referral assigned");
    Ok(see_other(&format!("/console/referrals/{id}?assigned=1")))
}

// ---- outcome measures ---------------------------------------------------------------

/// The questionnaire's query.
#[derive(Debug, Default, Deserialize)]
pub struct MeasureQuery {
    /// The measure's code.
    measure: Option<String>,
}

/// `GET /console/referrals/{id}/outcomes?measure=…`: the questionnaire.
async fn outcome_form(
    State(state): State<AppState>,
    access: Access,
    Extension(session): Extension<ConsoleSession>,
    context: RequestContext,
    Path(id): Path<String>,
    query: std::result::Result<Query<MeasureQuery>, QueryRejection>,
) -> Result<Response> {
    check_work(&state, &access, &id, |a| StaffAction::RecordOutcome {
        assigned_to: a,
    })
    .await?;
    context.audit.note_referral(&id);
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let measure = query
        .measure
        .as_deref()
        .and_then(|m| Measure::parse(m).ok())
        .unwrap_or(Measure::Swemwbs);
    let form = measures::questionnaire(&state.outcomes.catalogue, measure);
    Ok(html(
        StatusCode::OK,
        pages::questionnaire(&session, &id, &form, &[], &[]),
    ))
}

/// `POST /console/referrals/{id}/outcomes`: `measure` and `item1`…`itemN`; scored by
/// `workflow` (the same scoring and Observation as `/api`).
async fn outcome(
    State(state): State<AppState>,
    access: Access,
    Extension(session): Extension<ConsoleSession>,
    context: RequestContext,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let fields = checked_form(&session, &headers, &body)?;
    check_work(&state, &access, &id, |a| StaffAction::RecordOutcome {
        assigned_to: a,
    })
    .await?;
    let measure = fields
        .get("measure")
        .and_then(|m| Measure::parse(m).ok())
        .ok_or_else(|| ConsoleError::BadRequest("The form names no outcome measure".into()))?;
    let form = measures::questionnaire(&state.outcomes.catalogue, measure);
    let mut answers = Vec::with_capacity(form.items.len());
    let mut missing = Vec::new();
    for n in 1..=form.items.len() {
        match fields
            .get(&format!("item{n}"))
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|v| form.options.iter().any(|(score, _)| score == v))
        {
            Some(value) => answers.push(value),
            None => missing.push(n),
        }
    }
    if !missing.is_empty() {
        return Ok(html(
            StatusCode::BAD_REQUEST,
            pages::questionnaire(&session, &id, &form, &missing, &kept(&fields)),
        ));
    }
    let recorded_at = Instant::now().to_fhir();
    let mut tx = state.store.begin_write().await?;
    let outcome = state
        .workflow
        .record_outcome(
            &mut tx,
            &id,
            &OutcomeRequest {
                measure,
                answers: &answers,
                recorded_at: &recorded_at,
                actor: &session.username,
                request_id: &context.request_id,
            },
        )
        .await?;
    context.audit.commit(tx, 303).await?;
    tracing::info!(referral_id = %id, outcome_id = %outcome.id, "console: outcome recorded");
    Ok(see_other(&format!(
        "/console/referrals/{id}?outcome={}",
        outcome.id
    )))
}

// ---- managers and administrators ----------------------------------------------------

/// `GET /console/caseloads` (service managers): open referrals per link worker; per
/// practice, referrals and the time from receipt to first contact.
async fn caseloads(
    State(state): State<AppState>,
    access: Access,
    Extension(session): Extension<ConsoleSession>,
) -> Result<Response> {
    require(&access, StaffAction::Reports)?;
    let (loads, practices) =
        tokio::try_join!(state.store.caseloads(), state.store.practice_figures())?;
    Ok(html(
        StatusCode::OK,
        pages::caseloads(&session, &loads, &practices),
    ))
}

/// `GET /console/deliveries` (administrators): dead letters, with retry.
async fn deliveries(
    State(state): State<AppState>,
    access: Access,
    Extension(session): Extension<ConsoleSession>,
) -> Result<Response> {
    require(&access, StaffAction::Deliveries)?;
    let dead = state
        .store
        .deliveries(&DeliveryFilter {
            state: Some(DeliveryState::Dead),
            limit: 100,
            ..DeliveryFilter::default()
        })
        .await?;
    let stats = state.store.destination_stats().await?;
    Ok(html(
        StatusCode::OK,
        pages::deliveries(&session, &dead, &stats),
    ))
}

/// `POST /console/deliveries/{seq}/retry` (administrators): a dead letter back in the queue.
async fn retry_delivery(
    State(state): State<AppState>,
    access: Access,
    Extension(session): Extension<ConsoleSession>,
    Path(seq): Path<i64>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    checked_form(&session, &headers, &body)?;
    require(&access, StaffAction::RetryDelivery)?;
    match state.store.retry_dead(seq).await? {
        Ok(_) => {
            tracing::info!(seq, "console: dead letter retried");
            Ok(see_other("/console/deliveries"))
        }
        Err(_) => Err(ConsoleError::Conflict(format!(
            "Message {seq} is not a dead letter"
        ))),
    }
}
