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

mod action;
mod admin;
pub mod assets;
mod first_contact;
mod follow_ups;
mod measures;
mod milestones;
mod pages;
mod people;
mod reports;
mod time;
mod working_days;

use std::sync::Arc;

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
use crate::identity::oidc::{self, ConsoleOidc, OidcError};
use crate::identity::session::{self, SignedIn, csrf_matches};
use crate::identity::{Access, Authenticator, ConsoleSession, StaffAction, StaffRole, staff};
use crate::referral::milestone::{self, StageMilestone};
use crate::referral::stage::Stage;
use crate::store::StoreError;
use crate::store::outbox::{DeliveryFilter, DeliveryState};
use crate::store::referrals::{Assignee, PersonSearch, ReferralFilter};
use crate::store::sessions::{KeptForm, SignInRow};
use crate::workflow::{OutcomeRequest, TransitionRequest, WorkflowError};
use action::ReferralAction;

pub use pages::Flash;

/// The console's routes (each is in `api::authenticate::ROUTES`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console", get(home))
        .route("/console/sign-in", get(sign_in_page).post(sign_in))
        .route("/console/sign-in/idp", get(sign_in_idp).post(sign_in_idp))
        .route("/console/sign-in/idp/callback", get(sign_in_idp_callback))
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
        .route("/console/follow-ups", get(follow_ups::follow_ups))
        .route("/console/registries", get(admin::registries))
        .route("/console/referrals/{id}/audit", get(admin::audit_trail))
        .route(
            "/console/deliveries/practices/{ods}/retry",
            post(admin::retry_practice),
        )
        .route("/console/audit", get(admin::audit_search))
        .route(
            "/console/people",
            get(people::people).post(people::set_assignable),
        )
        .merge(milestones::routes())
        .merge(reports::routes())
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
async fn sign_in_page(
    State(state): State<AppState>,
    Extension(authenticator): Extension<Arc<Authenticator>>,
) -> Result<Response> {
    let has_staff = state.store.has_enabled_staff().await?;
    let page = pages::SignInPage {
        has_staff,
        provider: authenticator.console_oidc().map(|o| o.display_name()),
        ..pages::SignInPage::default()
    };
    Ok(html(StatusCode::OK, pages::sign_in(&page)))
}

/// The sign-in page's query: where a form posted as the session ended was going
/// (`api::authenticate` sends the browser here with a 307, which posts the form again).
#[derive(Debug, Default, Deserialize)]
pub struct SignInQuery {
    return_to: Option<String>,
}

/// The referral page a kept form belongs to: `/console/referrals/{id}/{action}` with a
/// plain id and a known action, else `None` (nothing else is ever given back).
fn resumable(path: &str) -> Option<(&str, &str)> {
    let (id, action) = path.strip_prefix("/console/referrals/")?.split_once('/')?;
    let plain = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
    (plain
        && matches!(
            action,
            "transition" | "notes" | "assignment" | "outcomes" | "milestones"
        ))
    .then_some((id, action))
}

/// Where a person goes once signed in: the page of the form they had posted as their
/// session ended (to find it filled in), else the worklist.
fn after_sign_in(kept: Option<&KeptForm>) -> String {
    match kept.and_then(|k| resumable(&k.path)) {
        Some((id, "outcomes")) => format!("/console/referrals/{id}/outcomes?resumed=1"),
        Some((id, _)) => format!("/console/referrals/{id}?resumed=1"),
        None => "/console/referrals".to_owned(),
    }
}

/// What a sign-in post keeps of a form posted as the session ended: the `return_to`
/// path and the `kept.`-prefixed hidden fields the sign-in page carried.
fn kept_through_sign_in(fields: &Fields) -> Option<KeptForm> {
    let path = fields.get("return_to").filter(|p| resumable(p).is_some())?;
    let form = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            fields
                .0
                .iter()
                .filter_map(|(k, v)| k.strip_prefix("kept.").map(|k| (k, v))),
        )
        .finish();
    Some(KeptForm {
        path: path.to_owned(),
        form,
    })
}

/// `POST /console/sign-in`: checks the username and password (Argon2id) and starts a
/// session. A refusal does not say which part was wrong. A form re-posted here by
/// `api::authenticate`'s 307 (its session had ended) is not a sign-in: the page is
/// shown with the form's fields kept in it.
async fn sign_in(
    State(state): State<AppState>,
    Extension(authenticator): Extension<Arc<Authenticator>>,
    query: std::result::Result<Query<SignInQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    if !same_origin(&headers) {
        return Err(ConsoleError::CrossSite);
    }
    let fields = Fields::parse(&body);
    let has_staff = state.store.has_enabled_staff().await?;
    let provider = authenticator.console_oidc().map(|o| o.display_name());
    let returned = query
        .ok()
        .and_then(|Query(q)| q.return_to)
        .filter(|p| resumable(p).is_some());
    if let Some(path) = returned.as_deref()
        && !fields
            .0
            .iter()
            .any(|(k, _)| k == "username" || k == "password")
    {
        let kept = kept(&fields);
        let page = pages::SignInPage {
            has_staff,
            provider,
            resume: Some((path, &kept)),
            ..pages::SignInPage::default()
        };
        tracing::info!("console: a form posted after its session ended is kept through sign-in");
        return Ok(html(StatusCode::UNAUTHORIZED, pages::sign_in(&page)));
    }
    let resume = kept_through_sign_in(&fields);
    let resume_fields: Vec<(String, String)> = resume
        .as_ref()
        .map(|k| {
            form_urlencoded::parse(k.form.as_bytes())
                .map(|(a, b)| (a.into_owned(), b.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    let refused = |error: &'static str, username: &str, status| {
        let page = pages::SignInPage {
            has_staff,
            error: Some(error),
            username: Some(username),
            provider,
            resume: resume
                .as_ref()
                .map(|k| (k.path.as_str(), resume_fields.as_slice())),
        };
        html(status, pages::sign_in(&page))
    };
    let username = fields.get("username").unwrap_or("").to_owned();
    let password = fields
        .0
        .iter()
        .find(|(k, _)| k == "password")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    if username.is_empty() || password.is_empty() {
        let error = "Enter your username and password";
        return Ok(refused(error, &username, StatusCode::BAD_REQUEST));
    }
    match staff::check_credentials(&state.store, &username, password).await {
        Ok(account) => {
            let location = after_sign_in(resume.as_ref());
            let (token, _) =
                session::start_for(&state.store, SignedIn::Account(account), resume, unix_now())
                    .await
                    .map_err(|e| ConsoleError::Internal(e.to_string()))?;
            let mut response = see_other(&location);
            response.headers_mut().insert(
                header::SET_COOKIE,
                session_cookie(&state, &token, session::ABSOLUTE_SECS),
            );
            Ok(response)
        }
        Err(staff::SignInError::WrongCredentials) => Ok(refused(
            "The username or password is not right, or the account is disabled",
            &username,
            StatusCode::UNAUTHORIZED,
        )),
        Err(error) => Err(ConsoleError::Internal(error.to_string())),
    }
}

// ---- signing in through the service's identity provider ----------------------------

/// The browser's cookie for a sign-in through the identity provider under way: sent
/// back on the provider's redirect, a top-level cross-site navigation, so `Lax` (a
/// `Strict` cookie would not come back).
const SIGN_IN_COOKIE: &str = "sprig_sign_in";

/// How long a person has at the identity provider.
const SIGN_IN_SECS: i64 = 10 * 60;

fn sign_in_cookie(state: &AppState, value: &str, max_age: i64) -> HeaderValue {
    let secure = if over_https(state) { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SIGN_IN_COOKIE}={value}; Path=/console/sign-in/idp; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("sprig_sign_in=; Path=/console/sign-in/idp; Max-Age=0"))
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// Where the provider sends the browser back: as configured, else this server's
/// callback at the address the browser used.
fn redirect_uri(state: &AppState, oidc: &ConsoleOidc, headers: &HeaderMap) -> Result<String> {
    if let Some(url) = oidc.redirect_url() {
        return Ok(url.to_owned());
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                })
        })
        .ok_or_else(|| ConsoleError::BadRequest("The request names no usable host".into()))?;
    let scheme = if over_https(state) { "https" } else { "http" };
    Ok(format!("{scheme}://{host}/console/sign-in/idp/callback"))
}

/// A sign-in through the provider that did not work: the sign-in page's failure, with
/// a way to start again; the cause is logged (no token or claim values in it).
fn provider_refusal(status: StatusCode, detail: &str) -> Response {
    html(status, pages::error("You could not be signed in", detail))
}

/// `GET|POST /console/sign-in/idp`: starts a sign-in through the identity provider
/// (authorization code with PKCE): its secrets kept in the store under a short-lived
/// cookie, the browser sent to the provider. A post may carry a form kept through
/// sign-in (`kept_through_sign_in`).
async fn sign_in_idp(
    State(state): State<AppState>,
    Extension(authenticator): Extension<Arc<Authenticator>>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let Some(oidc) = authenticator.console_oidc() else {
        return Err(ConsoleError::NotFound(
            "This service signs people in with Sprig staff accounts only".into(),
        ));
    };
    let kept = if method == axum::http::Method::POST {
        if !same_origin(&headers) {
            return Err(ConsoleError::CrossSite);
        }
        kept_through_sign_in(&Fields::parse(&body))
    } else {
        None
    };
    let redirect_uri = redirect_uri(&state, oidc, &headers)?;
    let (pending, location) = match oidc.begin(&redirect_uri).await {
        Ok(begun) => begun,
        Err(error) => {
            tracing::warn!(%error, "console: the identity provider cannot be used");
            return Ok(provider_refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "The identity provider cannot be reached. Try again in a few moments, or sign in with a Sprig staff account.",
            ));
        }
    };
    let token = session::new_random_token().map_err(|e| ConsoleError::Internal(e.to_string()))?;
    let now = unix_now();
    state
        .store
        .insert_sign_in(
            &SignInRow {
                token_hash: session::hash_token(&token),
                state: pending.state,
                nonce: pending.nonce,
                code_verifier: pending.code_verifier,
                redirect_uri,
                kept,
                expires_at: now + SIGN_IN_SECS,
            },
            now,
        )
        .await?;
    let mut response = see_other(&location);
    response.headers_mut().insert(
        header::SET_COOKIE,
        sign_in_cookie(&state, &token, SIGN_IN_SECS),
    );
    Ok(response)
}

/// The provider's answer (OpenID Connect Core 3.1.2.5 and 3.1.2.6).
#[derive(Debug, Default, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /console/sign-in/idp/callback`: the provider sends the browser back. The
/// sign-in under way is read once (by the browser's cookie); `state` must be its own,
/// the code is exchanged with PKCE's verifier, and the ID token checked (`oidc`) before
/// a session starts.
async fn sign_in_idp_callback(
    State(state): State<AppState>,
    Extension(authenticator): Extension<Arc<Authenticator>>,
    query: std::result::Result<Query<CallbackQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response> {
    let Some(oidc) = authenticator.console_oidc() else {
        return Err(ConsoleError::NotFound(
            "This service signs people in with Sprig staff accounts only".into(),
        ));
    };
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let now = unix_now();
    let pending = match cookie_value(&headers, SIGN_IN_COOKIE) {
        Some(token) => {
            state
                .store
                .take_sign_in(&session::hash_token(&token), now)
                .await?
        }
        None => None,
    };
    let refused = |status, reason: &str, detail: &str| {
        tracing::warn!(
            reason,
            "console: sign-in through the identity provider refused"
        );
        let mut response = provider_refusal(status, detail);
        response
            .headers_mut()
            .insert(header::SET_COOKIE, sign_in_cookie(&state, "", 0));
        response
    };
    let start_again = "Go back to the sign-in page and start again.";
    let Some(pending) = pending else {
        return Ok(refused(
            StatusCode::BAD_REQUEST,
            "no sign-in under way for this browser",
            "This sign-in has expired or was started in another browser. Go back to the sign-in page and start again.",
        ));
    };
    let state_matches = query
        .state
        .as_deref()
        .is_some_and(|s| oidc::constant_time_eq(s.as_bytes(), pending.state.as_bytes()));
    if !state_matches {
        return Ok(refused(
            StatusCode::BAD_REQUEST,
            "state mismatch",
            start_again,
        ));
    }
    if query.error.is_some() {
        return Ok(refused(
            StatusCode::UNAUTHORIZED,
            "the provider answered an error",
            "The identity provider did not sign you in. Go back to the sign-in page and start again.",
        ));
    }
    let Some(code) = query.code.as_deref().filter(|c| !c.is_empty()) else {
        return Ok(refused(StatusCode::BAD_REQUEST, "no code", start_again));
    };
    let secrets = oidc::Pending {
        state: pending.state,
        nonce: pending.nonce,
        code_verifier: pending.code_verifier,
    };
    let person = match oidc
        .finish(&secrets, &pending.redirect_uri, code, now)
        .await
    {
        Ok(person) => person,
        Err(OidcError::Provider(cause)) => {
            tracing::warn!(%cause, "console: the identity provider cannot be used");
            return Ok(refused(
                StatusCode::BAD_GATEWAY,
                "provider unavailable",
                "The identity provider could not be reached. Try again in a few moments.",
            ));
        }
        Err(error) => {
            let reason = error.to_string();
            return Ok(refused(StatusCode::UNAUTHORIZED, &reason, start_again));
        }
    };
    let location = after_sign_in(pending.kept.as_ref());
    let (token, _) = session::start_for(
        &state.store,
        SignedIn::Provider {
            username: person.username,
            display_name: person.display_name,
            role: person.role,
        },
        pending.kept,
        now,
    )
    .await
    .map_err(|e| ConsoleError::Internal(e.to_string()))?;
    let mut response = see_other(&location);
    let cookies = response.headers_mut();
    cookies.append(header::SET_COOKIE, sign_in_cookie(&state, "", 0));
    cookies.append(
        header::SET_COOKIE,
        session_cookie(&state, &token, session::ABSOLUTE_SECS),
    );
    Ok(response)
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
    /// A practice's ODS code.
    practice: Option<String>,
    /// A reason's code.
    reason: Option<String>,
    /// Received on or after this UK date (`2026-12-01`).
    from: Option<String>,
    /// Received on or before this UK date.
    to: Option<String>,
    /// Only those overdue for first contact (any value).
    overdue: Option<String>,
    /// Only those with a follow-up measurement due or overdue (any value).
    follow_up: Option<String>,
    /// Only those assigned to this username (with `view=all`): a manager reassigning
    /// the referrals of someone no longer assignable.
    assignee: Option<String>,
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
    /// The practice filter (ODS code).
    pub practice: Option<String>,
    /// The reason filter (a code).
    pub reason: Option<String>,
    /// The received-from date, as typed.
    pub from: Option<String>,
    /// The received-to date, as typed.
    pub to: Option<String>,
    /// A date that could not be understood: its field and the message.
    pub date_error: Option<(&'static str, &'static str)>,
    /// Only the overdue ones.
    pub overdue_only: bool,
    /// Only those with a follow-up measurement due or overdue.
    pub follow_up_only: bool,
    /// Not contacted and received before this instant: overdue.
    pub overdue_before: String,
    /// The target, in working days.
    pub target_days: u32,
    /// The assignees on this page who can no longer be given referrals (flagged).
    pub inactive: Vec<String>,
    /// Only one person's referrals (`view=all&assignee=…`).
    pub assignee: Option<String>,
}

impl WorklistView {
    /// The filters as a query string (`&name=value…`), for links that keep them.
    pub fn filter_query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (name, value) in [
            ("q", &self.q),
            ("practice", &self.practice),
            ("reason", &self.reason),
            ("from", &self.from),
            ("to", &self.to),
            ("assignee", &self.assignee),
        ] {
            if let Some(value) = value {
                query.append_pair(name, value);
            }
        }
        if self.overdue_only {
            query.append_pair("overdue", "1");
        }
        if self.follow_up_only {
            query.append_pair("follow_up", "1");
        }
        let query = query.finish();
        if query.is_empty() {
            query
        } else {
            format!("&{query}")
        }
    }
}

/// A filter's text: trimmed, `None` when blank or longer than any code.
fn filter_text(value: Option<&str>) -> Option<String> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 64)
        .map(str::to_owned)
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
    let one_person = filter_text(query.assignee.as_deref());
    let (view, assignee) = match query.view.as_deref() {
        Some("all") if one_person.is_some() => (
            "all",
            Assignee::Only(one_person.clone().unwrap_or_default()),
        ),
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
    let target_days = state.settings.console.first_contact_target_working_days;
    let overdue_before = working_days::first_contact_cutoff(working_days::now(), target_days);
    let practice = filter_text(query.practice.as_deref()).map(|p| p.to_ascii_uppercase());
    let reason = filter_text(query.reason.as_deref());
    let from = filter_text(query.from.as_deref());
    let to = filter_text(query.to.as_deref());
    let mut date_error = None;
    let mut date_bound = |field: &'static str, text: &Option<String>, upper: bool| {
        let text = text.as_deref()?;
        match working_days::parse_date(text) {
            Some(date) => {
                let (start, end) = working_days::day_bounds(date);
                Some(if upper { end } else { start })
            }
            None => {
                date_error = Some((field, "Enter a date as year-month-day, like 2026-12-01"));
                None
            }
        }
    };
    let received_from = date_bound("from", &from, false);
    let received_to = date_bound("to", &to, true);
    let overdue_only = query.overdue.is_some();
    let follow_up_only = query.follow_up.is_some();
    let ids = if follow_up_only {
        Some(follow_ups::due_or_overdue_ids(&state).await?)
    } else {
        None
    };
    let filter = ReferralFilter {
        stage,
        assignee: assignee.clone(),
        person,
        after,
        practice: practice.clone(),
        reason: reason.clone(),
        received_from,
        received_to,
        not_contacted_before: overdue_only.then(|| overdue_before.clone()),
        ids,
        limit: PAGE + 1,
    };
    let q_error = q_error.or(date_error.map(|(_, message)| message));
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
    // Who on this page can no longer be given referrals: flagged, for managers to
    // reassign (only read when the page names someone).
    let inactive = if referrals.iter().any(|r| r.assigned_to.is_some()) {
        let assignable = assignable_people(&state).await?;
        let mut inactive: Vec<String> = referrals
            .iter()
            .filter_map(|r| r.assigned_to.clone())
            .filter(|who| !assignable.iter().any(|(u, _)| u == who))
            .collect();
        inactive.sort();
        inactive.dedup();
        inactive
    } else {
        Vec::new()
    };
    tracing::info!(count = referrals.len(), "console: worklist shown");
    let view = WorklistView {
        view,
        stage,
        q: q.map(str::to_owned),
        q_error: if date_error.is_some() { None } else { q_error },
        practice,
        reason,
        from,
        to,
        date_error,
        overdue_only,
        follow_up_only,
        overdue_before,
        target_days,
        inactive,
        assignee: one_person.filter(|_| view == "all"),
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
    /// The person just signed in again; a form they had posted may be kept.
    resumed: Option<String>,
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
    let error = if query.resumed.is_some() {
        given_back(&state, &session, &id).await?
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
        error,
        StatusCode::OK,
    )
    .await
}

/// The form this session holds from before sign-in, if it was posted on referral `id`'s
/// page: its fields, to fill the form in again with a message to check and send it
/// (it is never sent for the person: the page they see is what they confirm).
async fn given_back(
    state: &AppState,
    session: &ConsoleSession,
    id: &str,
) -> Result<Option<FieldError>> {
    let Some(form) = state.store.take_kept_form(&session.token_hash).await? else {
        return Ok(None);
    };
    let Some((kept_id, action)) = resumable(&form.path) else {
        return Ok(None);
    };
    if kept_id != id {
        return Ok(None);
    }
    let field = match action {
        "transition" => "to",
        "notes" => "note-text",
        "assignment" => "assigned_to",
        "milestones" => "milestone-kind",
        _ => "outcome",
    };
    let fields = Fields::parse(form.form.as_bytes());
    Ok(Some(FieldError {
        field,
        message: "Your session had ended, so this was not saved. Check it and send it again."
            .into(),
        kept: kept(&fields),
    }))
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
    // Another link worker's referral, when the service keeps those to their link
    // worker (`auth.link_workers_see_all_referrals`): the same page as no referral.
    if !access.staff_may(StaffAction::ViewReferral {
        assigned_to: detail.referral.assigned_to.as_deref(),
    }) {
        return Err(ConsoleError::NotFound("There is no such referral".into()));
    }
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
        assignable_people(state).await?
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
        audit: access.staff_may(StaffAction::Audit),
    };
    let milestones = state.store.milestones(id).await?;
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
            measures: &measures::offered(&state.outcomes.catalogue),
            milestones: &milestones,
        }),
    ))
}

fn staff_error(error: staff::StaffError) -> ConsoleError {
    match error {
        staff::StaffError::Store(store) => store.into(),
        other => ConsoleError::Internal(other.to_string()),
    }
}

/// Who referrals can be assigned to (username, name): staff accounts and people signed
/// in through the identity provider (`staff::assignable`, the API's rule too).
async fn assignable_people(state: &AppState) -> Result<Vec<(String, String)>> {
    Ok(staff::assignable(&state.store)
        .await
        .map_err(staff_error)?
        .into_iter()
        .map(|a| (a.username, a.display_name))
        .collect())
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
async fn transition(action: ReferralAction<action::Transition>) -> Result<Response> {
    let on = action.on();
    let (state, session, context, id, fields) = (
        &action.state,
        &action.session,
        &action.context,
        action.id.as_str(),
        &action.fields,
    );
    let to = match fields.get("to").map(Stage::parse) {
        Some(Ok(stage)) => stage,
        _ => {
            let message = "Select what has happened";
            return refuse(&on, fields, "to", message).await;
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
        return refuse(&on, fields, "reason", message).await;
    }
    let milestone = match stage_form_milestone(fields, to) {
        Ok(m) => m,
        Err((field, message)) => return refuse(&on, fields, field, &message).await,
    };
    let mut tx = state.store.begin_write().await?;
    let moved = state
        .workflow
        .transition(
            &mut tx,
            id,
            &TransitionRequest {
                to,
                reason,
                note: fields.get("note"),
                actor: &session.username,
                request_id: &context.request_id,
                milestone,
            },
        )
        .await;
    match moved {
        Ok(_) => {}
        // What is left to refuse here is the milestone's day against the referral's.
        Err(WorkflowError::Invalid(message)) if milestone.is_some() => {
            drop(tx);
            let message = milestones::sentence(&message);
            return refuse(&on, fields, "transition-on", &message).await;
        }
        Err(e) => return Err(e.into()),
    }
    context.audit.commit(tx, 303).await?;
    tracing::info!(referral_id = %id, stage = to.as_str(), "console: referral moved");
    Ok(see_other(&format!(
        "/console/referrals/{id}?moved={}",
        to.as_str()
    )))
}

/// The milestone the stage form records with a move to `to` (the form shows every
/// stage's fields at once: only `to`'s are read), or the field (its id) and what is wrong.
/// `assessment-done`, `plan-agreed` and `completed` always record theirs (the day is
/// today when left blank; `completed` needs the discharge reason); `in-support` records a
/// complexity assessment and `withdrawn` a discharge only when one is given.
fn stage_form_milestone(
    fields: &Fields,
    to: Stage,
) -> std::result::Result<Option<StageMilestone<'_>>, (&'static str, String)> {
    let takes = milestone::stage_milestones(to);
    if !takes.any() {
        return Ok(None);
    }
    let complex = if takes.takes_complexity {
        match fields.get("stage_complex") {
            Some("yes") => Some(true),
            Some("no") => Some(false),
            _ => None,
        }
    } else {
        None
    };
    let discharge_reason = fields
        .get("discharge_reason")
        .filter(|_| takes.discharges());
    let optional = match to {
        Stage::InSupport => complex.is_none(),
        Stage::Withdrawn => discharge_reason.is_none(),
        _ => false,
    };
    if optional {
        return Ok(None);
    }
    let today = crate::outcomes::schedule::uk_date(::time::OffsetDateTime::now_utc());
    // Left blank, the day is today (what the form fills in); one that is not a date is
    // refused rather than guessed.
    let on = match fields
        .get("stage_on")
        .map(crate::api::milestones::parse_day)
    {
        None => today,
        Some(Some(day)) => day,
        Some(None) => {
            return Err((
                "transition-on",
                "Enter the day it happened, for example 2026-04-02".into(),
            ));
        }
    };
    if takes.discharges() && discharge_reason.is_none() {
        return Err((
            "transition-discharge-reason",
            "Select the reason for discharge".into(),
        ));
    }
    let given = StageMilestone {
        on: Some(on),
        complex,
        basis: fields.get("stage_basis").filter(|_| takes.takes_complexity),
        discharge_reason,
    };
    // Every check but the referral's own day, here, to say which field is wrong.
    let checked = milestone::for_stage(to, &given).and_then(|inputs| {
        inputs
            .iter()
            .try_for_each(|input| milestone::check(input, ::time::Date::MIN, today).map(|_| ()))
    });
    match checked {
        Ok(()) => Ok(Some(given)),
        Err(e) => {
            let field = match e.field() {
                "complex" => "transition-complex",
                "basis" => "transition-basis",
                "discharge_reason" | "reason" => "transition-discharge-reason",
                _ => "transition-on",
            };
            Err((field, milestones::sentence(&e.to_string())))
        }
    }
}

/// `POST /console/referrals/{id}/notes`: a note, or (`kind=contact-attempt`) a contact
/// attempt that did not reach the person.
async fn note(action: ReferralAction<action::Note>) -> Result<Response> {
    let on = action.on();
    let (state, session, context, id, fields) = (
        &action.state,
        &action.session,
        &action.context,
        action.id.as_str(),
        &action.fields,
    );
    let attempt = fields.get("kind") == Some("contact-attempt");
    let text = match (attempt, fields.get("text")) {
        (true, Some(text)) => format!("Contact attempt: {text}"),
        (true, None) => "Contact attempt".to_owned(),
        (false, Some(text)) => text.to_owned(),
        (false, None) => {
            let message = "Enter the note";
            return refuse(&on, fields, "note-text", message).await;
        }
    };
    let mut tx = state.store.begin_write().await?;
    state
        .workflow
        .add_note(&mut tx, id, &session.username, &text)
        .await?;
    context.audit.commit(tx, 303).await?;
    tracing::info!(referral_id = %id, "console: note added");
    Ok(see_other(&format!("/console/referrals/{id}?noted=1")))
}

/// `POST /console/referrals/{id}/assignment` (service managers): `assigned_to`, a
/// username, or empty to unassign.
async fn assign(action: ReferralAction<action::Assign>) -> Result<Response> {
    let (state, session, context, id, fields) = (
        &action.state,
        &action.session,
        &action.context,
        action.id.as_str(),
        &action.fields,
    );
    let who = fields.get("assigned_to");
    let assignable = match who {
        None => true,
        Some(who) => staff::assignable_one(&state.store, who)
            .await
            .map_err(staff_error)?
            .is_some(),
    };
    if let (false, Some(who)) = (assignable, who) {
        let message = format!("{who} is not an enabled link worker or service manager");
        return refuse(&action.on(), fields, "assigned_to", &message).await;
    }
    let mut tx = state.store.begin_write().await?;
    state
        .workflow
        .assign(&mut tx, id, who, &session.username)
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
    /// The person just signed in again; answers they had posted may be kept.
    resumed: Option<String>,
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
    let given = if query.resumed.is_some() {
        given_back(&state, &session, &id)
            .await?
            .filter(|g| g.field == "outcome")
            .map(|g| g.kept)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let catalogue = &state.outcomes.catalogue;
    let form = query
        .measure
        .as_deref()
        .or_else(|| {
            given
                .iter()
                .find(|(k, _)| k == "measure")
                .map(|(_, v)| v.as_str())
        })
        .and_then(|m| measures::questionnaire(catalogue, m))
        .or_else(|| measures::questionnaire(catalogue, "swemwbs"))
        .ok_or_else(|| ConsoleError::BadRequest("No outcome measure is defined".into()))?;
    Ok(html(
        StatusCode::OK,
        pages::questionnaire(&session, &id, &form, &[], &given),
    ))
}

/// `POST /console/referrals/{id}/outcomes`: `measure` and `item1`…`itemN`; scored by
/// `workflow` (the same scoring and Observation as `/api`).
async fn outcome(action: ReferralAction<action::Outcome>) -> Result<Response> {
    let (state, session, context, id, fields) = (
        &action.state,
        &action.session,
        &action.context,
        action.id.as_str(),
        &action.fields,
    );
    let measure = fields
        .get("measure")
        .and_then(|m| state.outcomes.catalogue.get(m))
        .ok_or_else(|| ConsoleError::BadRequest("The form names no outcome measure".into()))?;
    let form = measures::form(measure);
    let mut answers = Vec::with_capacity(form.items.len());
    let mut missing = Vec::new();
    for n in 1..=form.items.len() {
        match fields
            .get(&format!("item{n}"))
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|v| {
                form.options
                    .get(n - 1)
                    .is_some_and(|options| options.iter().any(|(score, _)| score == v))
            }) {
            Some(value) => answers.push(value),
            None => missing.push(n),
        }
    }
    if !missing.is_empty() {
        return Ok(html(
            StatusCode::BAD_REQUEST,
            pages::questionnaire(session, id, &form, &missing, &kept(fields)),
        ));
    }
    let recorded_at = Instant::now().to_fhir();
    let mut tx = state.store.begin_write().await?;
    let outcome = state
        .workflow
        .record_outcome(
            &mut tx,
            id,
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
    let (loads, practices, contacts) = tokio::try_join!(
        state.store.caseloads(),
        state.store.practice_figures(),
        state.store.first_contacts()
    )?;
    let people = assignable_people(&state).await?;
    let (by_worker, by_practice) = first_contact::figures(&contacts);
    Ok(html(
        StatusCode::OK,
        pages::caseloads(
            &session,
            &loads,
            &people,
            &practices,
            &pages::ContactFigures {
                by_worker: &by_worker,
                by_practice: &by_practice,
            },
            &state.pcns.current(),
        ),
    ))
}

/// The deliveries page's query: how many dead letters were just put back.
#[derive(Debug, Default, Deserialize)]
pub struct DeliveriesQuery {
    retried: Option<u64>,
}

/// `GET /console/deliveries` (administrators): dead letters, with retry.
async fn deliveries(
    State(state): State<AppState>,
    access: Access,
    Extension(session): Extension<ConsoleSession>,
    query: std::result::Result<Query<DeliveriesQuery>, QueryRejection>,
) -> Result<Response> {
    let retried = query.ok().and_then(|Query(q)| q.retried);
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
        pages::deliveries(&session, &dead, &stats, retried),
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
