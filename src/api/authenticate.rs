//! Where identity is established: one layer, before any handler, that reads the
//! request's credentials (`Authorization`, `NHSD-End-User-Organisation`, the verified
//! TLS client certificate), asks the
//! [`Authenticator`] who is calling and puts the [`Access`] into the request's
//! extensions; and the [`Access`] extractor handlers take it from.
//!
//! [`ROUTES`] lists every route of `api::router` with who may reach it. The layer looks
//! a request's matched route up there: a route the table does not list is refused (a
//! defect, 500), so no route can be added without deciding who may call it.
//!
//! Invariants: no handler reads data without an `Access` in hand; a refusal here is an
//! OperationOutcome under `/fhir` and `/auth`, a problem under `/api` and `/metrics`,
//! a 401 always with `WWW-Authenticate`; credentials are never logged.

use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::middleware::RequestContext;
use super::problem::Problem;
use super::rate_limit::RateLimits;
use crate::fhir::identifiers::{ODS_ORGANIZATION_SYSTEM, OdsCode};
use crate::fhir::{Issue, IssueType};
use crate::identity::{
    Access, AuthError, Authenticator, Caller, CertificateNames, Credentials, Interaction,
    PracticeScope, StaffAction,
};
use crate::server::PeerCertificate;

/// `NHSD-End-User-Organisation`: the organisation a trusted proxy relays for.
pub const END_USER_ORGANISATION: HeaderName = HeaderName::from_static("nhsd-end-user-organisation");

/// Who may reach a route at all (a handler then checks what the caller may do there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Anyone, without credentials (and none are asked for).
    Open,
    /// A caller with an `Access`; the FHIR handler checks its scopes and practices.
    Fhir,
    /// A caller with an `Access`; the `/api` handler checks the staff role.
    Staff,
    /// Administrators only (`StaffAction::Metrics`), checked here.
    Metrics,
    /// The console: a live console session (its cookie), else a redirect to sign-in;
    /// the handler checks the person's role. Bearer tokens are not read here.
    Console,
}

/// A route of `api::router`: its path as declared, its methods, its gate.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The path pattern, exactly as given to `Router::route`.
    pub path: &'static str,
    /// The methods served there.
    pub methods: &'static [&'static str],
    /// Who may reach it.
    pub gate: Gate,
}

const fn route(path: &'static str, methods: &'static [&'static str], gate: Gate) -> Route {
    Route {
        path,
        methods,
        gate,
    }
}

/// Every route of `api::router`. A route missing here answers 500 (and
/// `tests/api/access.rs::every_route_is_in_the_matrix` fails).
pub const ROUTES: &[Route] = &[
    route("/fhir/metadata", &["GET"], Gate::Open),
    route("/fhir", &["POST"], Gate::Fhir),
    route("/fhir/$process-message", &["POST"], Gate::Fhir),
    route("/fhir/$validate", &["POST"], Gate::Fhir),
    route("/fhir/{type}/$validate", &["POST"], Gate::Fhir),
    // What a BaRS sender must send: no one's data, so open like the metadata.
    route("/fhir/MessageDefinition", &["GET"], Gate::Open),
    route("/fhir/MessageDefinition/{id}", &["GET"], Gate::Open),
    // Administrators only: `api::audit_event` checks `StaffAction::Audit`.
    route("/fhir/AuditEvent", &["GET"], Gate::Fhir),
    route("/fhir/AuditEvent/{id}", &["GET"], Gate::Fhir),
    route("/fhir/{type}", &["GET", "POST"], Gate::Fhir),
    route("/fhir/{type}/_search", &["POST"], Gate::Fhir),
    route("/fhir/{type}/{id}", &["GET", "PUT"], Gate::Fhir),
    // Refused (405) after the scope check: `api::search::history_type` says why.
    route("/fhir/{type}/_history", &["GET"], Gate::Fhir),
    route("/fhir/{type}/{id}/_history", &["GET"], Gate::Fhir),
    route("/fhir/{type}/{id}/_history/{vid}", &["GET"], Gate::Fhir),
    route("/api/openapi.json", &["GET"], Gate::Open),
    route("/api/referrals", &["GET"], Gate::Staff),
    route("/api/referrals/{id}", &["GET"], Gate::Staff),
    route("/api/referrals/{id}/transitions", &["POST"], Gate::Staff),
    route("/api/referrals/{id}/outcomes", &["POST"], Gate::Staff),
    route("/api/referrals/{id}/notes", &["POST"], Gate::Staff),
    route(
        "/api/referrals/{id}/milestones",
        &["GET", "POST"],
        Gate::Staff,
    ),
    route("/api/referrals/{id}/assignment", &["POST"], Gate::Staff),
    // Administrators only: `api::erasure` checks `StaffAction::Erase`.
    route("/api/referrals/{id}/erasure", &["POST"], Gate::Staff),
    route("/api/measures", &["GET"], Gate::Staff),
    route("/api/follow-ups", &["GET"], Gate::Staff),
    route("/api/reports/outcomes", &["GET"], Gate::Staff),
    route("/api/reports/outcomes/detail", &["GET"], Gate::Staff),
    route("/api/reports/service", &["GET"], Gate::Staff),
    route("/api/deliveries", &["GET"], Gate::Staff),
    route("/api/deliveries/{seq}", &["GET"], Gate::Staff),
    route("/api/deliveries/{seq}/retry", &["POST"], Gate::Staff),
    route("/api/endpoints", &["GET"], Gate::Staff),
    route("/api/endpoints/{ods}/retry", &["POST"], Gate::Staff),
    route("/api/endpoints/{ods}/send-now", &["POST"], Gate::Staff),
    route("/metrics", &["GET"], Gate::Metrics),
    route("/auth/token", &["POST"], Gate::Open),
    route("/auth/staff/token", &["POST"], Gate::Open),
    route("/.well-known/smart-configuration", &["GET"], Gate::Open),
    route("/healthz", &["GET"], Gate::Open),
    route("/readyz", &["GET"], Gate::Open),
    // The console (`console::routes`): only signing in and its stylesheet are open.
    route("/console", &["GET"], Gate::Console),
    route("/console/sign-in", &["GET", "POST"], Gate::Open),
    route("/console/sign-in/idp", &["GET", "POST"], Gate::Open),
    route("/console/sign-in/idp/callback", &["GET"], Gate::Open),
    route("/console/sign-out", &["POST"], Gate::Console),
    route("/console/style/{file}", &["GET"], Gate::Open),
    route("/console/assets/images/{file}", &["GET"], Gate::Console),
    route("/console/referrals", &["GET"], Gate::Console),
    route("/console/referrals/{id}", &["GET"], Gate::Console),
    route(
        "/console/referrals/{id}/transition",
        &["POST"],
        Gate::Console,
    ),
    route("/console/referrals/{id}/notes", &["POST"], Gate::Console),
    route(
        "/console/referrals/{id}/milestones",
        &["POST"],
        Gate::Console,
    ),
    route("/console/reports", &["GET"], Gate::Console),
    route("/console/reports/export", &["GET"], Gate::Console),
    route("/console/reports/referrals", &["GET"], Gate::Console),
    route(
        "/console/referrals/{id}/outcomes",
        &["GET", "POST"],
        Gate::Console,
    ),
    route(
        "/console/referrals/{id}/assignment",
        &["POST"],
        Gate::Console,
    ),
    route("/console/caseloads", &["GET"], Gate::Console),
    route("/console/deliveries", &["GET"], Gate::Console),
    route("/console/deliveries/{seq}/retry", &["POST"], Gate::Console),
    route("/console/follow-ups", &["GET"], Gate::Console),
    route("/console/registries", &["GET"], Gate::Console),
    route("/console/referrals/{id}/audit", &["GET"], Gate::Console),
    route("/console/audit", &["GET"], Gate::Console),
    route("/console/people", &["GET", "POST"], Gate::Console),
    route(
        "/console/deliveries/practices/{ods}/retry",
        &["POST"],
        Gate::Console,
    ),
];

/// The console's session cookie.
pub const CONSOLE_COOKIE: &str = "sprig_console";

/// The value of the console cookie in a `Cookie` header, if any.
pub fn console_cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == CONSOLE_COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// Where a console request without a live session goes: the sign-in page. A page
/// (GET) is a 303; a form post on a referral is a 307 to `/console/sign-in?return_to=…`,
/// which the browser posts the same form to, so the sign-in page can keep what the
/// person typed (`console::sign_in`) instead of losing it.
fn to_sign_in(method: &Method, path: &str) -> Response {
    let resumable = method == Method::POST
        && path.starts_with("/console/referrals/")
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'));
    let (status, location) = if resumable {
        (
            StatusCode::TEMPORARY_REDIRECT,
            HeaderValue::from_str(&format!("/console/sign-in?return_to={path}"))
                .unwrap_or_else(|_| HeaderValue::from_static("/console/sign-in")),
        )
    } else {
        (
            StatusCode::SEE_OTHER,
            HeaderValue::from_static("/console/sign-in"),
        )
    };
    (
        status,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
    )
        .into_response()
}

/// The gate of a declared route path, if the table lists it.
pub fn gate_of(path: &str) -> Option<Gate> {
    // Every FHIR route is also declared with a trailing slash: the same route, the same gate.
    let path = match path.strip_suffix('/') {
        Some(trimmed) if !trimmed.is_empty() => trimmed,
        _ => path,
    };
    ROUTES.iter().find(|r| r.path == path).map(|r| r.gate)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Whether refusals on `path` are problem details (`/api`, `/metrics`) rather than
/// OperationOutcomes.
fn speaks_problem(path: &str) -> bool {
    path.starts_with("/api/") || path == "/api" || path == "/metrics"
}

/// The answer to a request that gets no `Access`.
fn refusal(path: &str, error: &AuthError) -> Response {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    // Only the kind of failure is told; the reason is logged (it names no secret).
    let (detail, message_id) = match error {
        AuthError::MissingCredentials => (
            "Authentication is required: send an access token as Authorization: Bearer",
            "auth-required",
        ),
        AuthError::MalformedHeader => (
            "The Authorization header is not a bearer token",
            "auth-malformed",
        ),
        AuthError::InvalidToken(_) => (
            "The access token is not valid (expired, altered, for another audience, or of a disabled client or person)",
            "auth-invalid-token",
        ),
        AuthError::Forbidden(_) => (
            "The caller may not act for the organisation it names",
            "auth-forbidden",
        ),
        AuthError::Unavailable(_) => (
            "Identity could not be checked; retry shortly",
            "auth-unavailable",
        ),
    };
    match error {
        AuthError::Unavailable(reason) => {
            tracing::warn!(reason = %reason, "authentication unavailable")
        }
        other => {
            tracing::info!(status = status.as_u16(), reason = %other, "request not authenticated")
        }
    }
    let challenge = error.www_authenticate();
    let mut response = if speaks_problem(path) {
        let title = match status.as_u16() {
            401 => "Unauthorized",
            403 => "Forbidden",
            _ => "Unavailable",
        };
        Problem::new(status, title, detail).into_response()
    } else {
        match (status.as_u16(), &challenge) {
            (401, Some(challenge)) => ApiError::Unauthorized(Box::new((
                Issue::error(IssueType::Login, message_id, detail),
                challenge.clone(),
            )))
            .into_response(),
            (403, _) => ApiError::Forbidden(Issue::error(IssueType::Forbidden, message_id, detail))
                .into_response(),
            _ => ApiError::IdentityUnavailable(Issue::error(
                IssueType::Transient,
                message_id,
                detail,
            ))
            .into_response(),
        }
    };
    if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// The layer: every route but the open ones gets an `Access` or a refusal.
pub async fn authenticate(mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let Some(gate) = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|m| gate_of(m.as_str()))
    else {
        tracing::error!("a route is missing from api::authenticate::ROUTES");
        return defect(&path);
    };
    if gate == Gate::Open {
        return next.run(request).await;
    }
    let Some(authenticator) = request.extensions().get::<Arc<Authenticator>>().cloned() else {
        tracing::error!("no Authenticator in the request: the application did not add it");
        return defect(&path);
    };
    if gate == Gate::Console {
        let Some(token) = console_cookie(request.headers()) else {
            return to_sign_in(request.method(), &path);
        };
        return match authenticator.console_session(&token, unix_now()).await {
            Ok(Some((access, session))) => {
                request.extensions_mut().insert(access);
                request.extensions_mut().insert(session);
                next.run(request).await
            }
            Ok(None) => to_sign_in(request.method(), &path),
            Err(error) => {
                tracing::warn!(reason = %error, "console session could not be checked");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, HeaderValue::from_static("5"))],
                    "The console could not check your session; try again shortly.",
                )
                    .into_response()
            }
        };
    }
    let headers = request.headers();
    // Put there by the connection layer after the handshake verified it.
    let certificate = request.extensions().get::<PeerCertificate>();
    let credentials = Credentials {
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        end_user_organisation: headers
            .get(&END_USER_ORGANISATION)
            .and_then(|v| v.to_str().ok()),
        certificate: certificate.map(|c| CertificateNames {
            subject: &c.subject,
            dns_names: &c.dns_names,
        }),
    };
    let access = match authenticator.authenticate(&credentials, unix_now()).await {
        Ok(access) => access,
        Err(error) => return refusal(&path, &error),
    };
    // A refusal from here on knows the caller: its audit row says who.
    let note_caller = |request: &Request| {
        if let Some(context) = request.extensions().get::<RequestContext>() {
            context.audit.note_access(&access);
        }
    };
    if let Some(limits) = request.extensions().get::<Arc<RateLimits>>()
        && let Some(wait) = limits.check(&access)
    {
        note_caller(&request);
        // Whole seconds, rounded up: a client that waits as told is let in.
        let retry_after_secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        tracing::info!(retry_after_secs, "request over the caller's rate limit");
        return too_many(&path, retry_after_secs.max(1));
    }
    if gate == Gate::Metrics && !access.staff_may(StaffAction::Metrics) {
        note_caller(&request);
        return Problem::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "/metrics is for administrators",
        )
        .into_response();
    }
    request.extensions_mut().insert(access);
    next.run(request).await
}

/// 429 with `Retry-After`: an OperationOutcome under `/fhir`, a problem under `/api`.
fn too_many(path: &str, retry_after_secs: u64) -> Response {
    if speaks_problem(path) {
        let mut response = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too Many Requests",
            format!("Over the rate limit; retry after {retry_after_secs} s"),
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        response
    } else {
        ApiError::TooManyRequests { retry_after_secs }.into_response()
    }
}

fn defect(path: &str) -> Response {
    if speaks_problem(path) {
        Problem::internal().into_response()
    } else {
        ApiError::internal(
            "authenticating a request",
            "no access decision for the route",
        )
        .into_response()
    }
}

/// A handler's `Access`: the layer put it there; without it (the layer did not run) the
/// request fails as a defect, never as an open door.
#[derive(Debug)]
pub struct MissingAccess {
    problem: bool,
}

impl IntoResponse for MissingAccess {
    fn into_response(self) -> Response {
        tracing::error!("a handler ran without an Access: the authentication layer did not run");
        if self.problem {
            Problem::internal().into_response()
        } else {
            ApiError::internal(
                "reading the caller's access",
                "the authentication layer did not run",
            )
            .into_response()
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Access {
    type Rejection = MissingAccess;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, MissingAccess> {
        parts
            .extensions
            .get::<Access>()
            .cloned()
            .ok_or(MissingAccess {
                problem: speaks_problem(parts.uri.path()),
            })
    }
}

/// 403 under `/fhir` unless the caller's scopes allow `interaction` on `resource_type`.
pub fn require_scope(
    access: &Access,
    interaction: Interaction,
    resource_type: &str,
) -> Result<(), ApiError> {
    if access.may(interaction, resource_type) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(Issue::error(
            IssueType::Forbidden,
            "scope-missing",
            format!("The access token does not grant this interaction on {resource_type}"),
        )))
    }
}

/// 403 under `/api` unless the caller's role allows `action`.
pub fn require_staff(access: &Access, action: StaffAction<'_>) -> Result<(), Problem> {
    if access.staff_may(action) {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Your role does not allow this",
        ))
    }
}

/// Whether the caller may act for the practice `practice_ods` (a referral's requester
/// practice; `None` when the referral names none). Open callers may act for any.
pub fn acts_for(access: &Access, practice_ods: Option<&str>) -> bool {
    match access.practices() {
        PracticeScope::All => true,
        PracticeScope::Only(_) => practice_ods
            .and_then(|code| OdsCode::parse(code).ok())
            .is_some_and(|code| access.may_act_for(&code)),
    }
}

/// The organisation the request declared outside its FHIR content, for the
/// mapping's last place to find the practice (`%end_user_organisation`):
/// only from a trusted proxy, whose `NHSD-End-User-Organisation` the identity
/// layer checked. It is the Organization reduced to the ODS code checked, so
/// nothing unchecked in the header reaches the referral. From any other
/// caller the header was ignored (`Access::ignored_end_user_header`).
pub fn declared_organisation(access: &Access) -> Option<serde_json::Value> {
    match access.caller() {
        Caller::Client {
            proxy: Some(proxy), ..
        } => Some(serde_json::json!({
            "resourceType": "Organization",
            "identifier": [{
                "system": ODS_ORGANIZATION_SYSTEM,
                "value": proxy.end_user_ods.as_str(),
            }],
        })),
        _ => None,
    }
}

/// 403 unless the caller may send referrals for `practice_ods`.
pub fn require_practice(access: &Access, practice_ods: Option<&str>) -> Result<(), ApiError> {
    if acts_for(access, practice_ods) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(Issue::error(
            IssueType::Forbidden,
            "practice-not-yours",
            "The referral's requesting practice is not one this client may act for",
        )))
    }
}
