//! The one mapping from errors to HTTP responses: every error leaves Sprig
//! as an `OperationOutcome` with the right status. Internal details are
//! logged with the request id and never sent to the client.

use axum::extract::rejection::PathRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use thiserror::Error;

use crate::fhir::{Issue, IssueSeverity, IssueType, OperationOutcome};
use crate::store::StoreError;
use crate::workflow::WorkflowError;

/// The content type of every FHIR response body.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// Everything a request can fail with.
#[derive(Debug, Error)]
pub enum ApiError {
    /// 400: the body could not be read as FHIR JSON, or the request is malformed.
    #[error("bad request")]
    BadRequest(Vec<Issue>),
    /// 422: FHIR JSON, but not a valid resource.
    #[error("unprocessable resource")]
    Unprocessable(Vec<Issue>),
    /// 401: no valid credentials; the `WWW-Authenticate` challenge goes with it.
    #[error("unauthorized")]
    /// What is wrong, and the `WWW-Authenticate` header (RFC 6750 §3).
    Unauthorized(Box<(Issue, String)>),
    /// 403: the caller is known but may not do this (a scope it lacks). Never for
    /// another practice's resource: that is a 404, as for a missing one.
    #[error("forbidden")]
    Forbidden(Issue),
    /// 503: who is calling could not be checked (the store or identity provider).
    #[error("identity unavailable")]
    IdentityUnavailable(Issue),
    /// 404: no such resource, version or endpoint.
    #[error("not found")]
    NotFound(Issue),
    /// 405: the endpoint exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed(Issue),
    /// 406: the client accepts no format Sprig can produce.
    #[error("not acceptable")]
    NotAcceptable(Issue),
    /// 409: the request conflicts with the current state (a repeated
    /// `X-Request-ID` with another body, an illegal stage change).
    #[error("conflict")]
    Conflict(Vec<Issue>),
    /// 412: `If-Match` names a version that is no longer current, or a
    /// conditional request matched more than one resource.
    #[error("precondition failed")]
    PreconditionFailed(Issue),
    /// 428: an update must say which version it changes (`If-Match`).
    #[error("precondition required")]
    PreconditionRequired(Issue),
    /// 410: the resource was deleted.
    #[error("gone")]
    Gone(Issue),
    /// 413: the body is over the size limit.
    #[error("payload too large")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// 415: the body is not in a format Sprig reads.
    #[error("unsupported media type")]
    UnsupportedMediaType(Issue),
    /// 408: the request body was still arriving when the time limit passed.
    #[error("request body timed out")]
    BodyTimeout {
        /// The limit in seconds.
        seconds: u64,
    },
    /// 429: the caller is over its rate limit (`auth.rate_limit_per_minute`).
    #[error("too many requests")]
    TooManyRequests {
        /// Seconds until a request will be accepted again (`Retry-After`).
        retry_after_secs: u64,
    },
    /// 503: the request did not finish within the time limit.
    #[error("request timed out")]
    Timeout {
        /// The limit in seconds.
        seconds: u64,
    },
    /// 503: the memory budget for request bodies (`limits.body_budget_bytes`)
    /// had no room for this one within `limits.body_budget_wait_ms`.
    #[error("body budget full")]
    Busy,
    /// 503: storage is temporarily unable to serve.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] StoreError),
    /// 500: a defect. Logged with its cause chain; the client sees only the
    /// request id.
    #[error("internal error: {context}")]
    Internal {
        /// What Sprig was doing, in fixed words (no content).
        context: &'static str,
        /// Why it failed: the error met, or for a broken invariant the words
        /// saying which.
        #[source]
        source: Cause,
    },
}

/// The cause an `ApiError::Internal` keeps.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// A cause with the resource it concerns (`Type/id`, never content), so the
/// log says which.
#[derive(Debug, Error)]
#[error("{resource}")]
pub struct Concerning {
    /// `Type/id`.
    pub resource: String,
    /// What went wrong with it.
    #[source]
    pub source: Cause,
}

impl ApiError {
    /// 500 while doing `context` (fixed words), because of `source`.
    pub fn internal(context: &'static str, source: impl Into<Cause>) -> Self {
        ApiError::Internal {
            context,
            source: source.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::VersionConflict {
                resource_type,
                id,
                expected,
                current,
            } => ApiError::PreconditionFailed(Issue::error(
                IssueType::Conflict,
                "version-conflict",
                format!(
                    "{resource_type}/{id} has changed: If-Match named version {expected} but the current version is {current}; read it again and reapply the change"
                ),
            )),
            StoreError::NotFound { resource_type, id } => ApiError::NotFound(Issue::error(
                IssueType::NotFound,
                "resource-not-found",
                format!("{resource_type}/{id} does not exist"),
            )),
            error if error.is_transient() => ApiError::Unavailable(error),
            error => ApiError::internal("storage failed", error),
        }
    }
}

/// A path that does not read as the route's parameters: 400.
impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest(vec![Issue::error(
            IssueType::Invalid,
            "invalid-path",
            format!("The request path could not be read: {rejection}"),
        )])
    }
}

impl From<WorkflowError> for ApiError {
    fn from(error: WorkflowError) -> Self {
        let message = error.to_string();
        match error {
            WorkflowError::Unmappable(issues) => ApiError::Unprocessable(issues),
            WorkflowError::Invalid(_) | WorkflowError::Score(_) => {
                ApiError::Unprocessable(vec![Issue::error(
                    IssueType::BusinessRule,
                    "referral-rule",
                    message,
                )])
            }
            WorkflowError::NotFound(_) => ApiError::NotFound(Issue::error(
                IssueType::NotFound,
                "referral-not-found",
                message,
            )),
            WorkflowError::IllegalTransition { .. } => ApiError::Conflict(vec![Issue::error(
                IssueType::BusinessRule,
                "illegal-transition",
                message,
            )]),
            WorkflowError::Conflict(_) => ApiError::Conflict(vec![Issue::error(
                IssueType::BusinessRule,
                "referral-state",
                message,
            )]),
            WorkflowError::Defect(_) => ApiError::internal("the referral workflow failed", error),
            WorkflowError::Store(error) => error.into(),
        }
    }
}

impl ApiError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::IdentityUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::PreconditionRequired(_) => StatusCode::PRECONDITION_REQUIRED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Timeout { .. } | ApiError::Unavailable(_) | ApiError::Busy => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The issues to report, before capping.
    pub(crate) fn into_issues(self) -> Vec<Issue> {
        match self {
            ApiError::BadRequest(issues)
            | ApiError::Unprocessable(issues)
            | ApiError::Conflict(issues) => issues,
            ApiError::Unauthorized(refusal) => vec![refusal.0],
            ApiError::NotFound(issue)
            | ApiError::Forbidden(issue)
            | ApiError::IdentityUnavailable(issue)
            | ApiError::MethodNotAllowed(issue)
            | ApiError::NotAcceptable(issue)
            | ApiError::Gone(issue)
            | ApiError::PreconditionFailed(issue)
            | ApiError::PreconditionRequired(issue)
            | ApiError::UnsupportedMediaType(issue) => vec![issue],
            ApiError::PayloadTooLarge { limit } => vec![Issue::error(
                IssueType::TooCostly,
                "request-too-large",
                format!("The request body is larger than the limit of {limit} bytes"),
            )],
            ApiError::BodyTimeout { seconds } => vec![Issue::error(
                IssueType::Timeout,
                "body-timeout",
                format!(
                    "The request body did not arrive within {seconds} s; nothing was stored. Send the request again with the whole body"
                ),
            )],
            ApiError::TooManyRequests { retry_after_secs } => vec![Issue::error(
                IssueType::Throttled,
                "rate-limited",
                format!(
                    "This client has sent more requests than its rate limit allows; nothing was done. Retry after {retry_after_secs} s"
                ),
            )],
            ApiError::Timeout { seconds } => vec![Issue::error(
                IssueType::Timeout,
                "request-timeout",
                format!(
                    "The request did not complete within {seconds} s; nothing of it was stored, so it may be retried"
                ),
            )],
            ApiError::Busy => vec![Issue::error(
                IssueType::Transient,
                "server-busy",
                "Sprig is handling as many request bodies as its memory budget allows; nothing was read or stored. Retry shortly",
            )],
            ApiError::Unavailable(_) => vec![Issue::error(
                IssueType::Transient,
                "store-unavailable",
                "Storage is busy or unavailable; retry shortly",
            )],
            ApiError::Internal { .. } => vec![
                Issue::error(
                    IssueType::Exception,
                    "internal-error",
                    "Sprig hit an internal error; nothing was stored. Quote the X-Request-ID response header when reporting it",
                )
                .with_severity(IssueSeverity::Fatal),
            ],
        }
    }

    /// Renders the error as a response. Long issue lists are capped where
    /// they are made (`api::pipeline`, `api::validate`), with the configured
    /// `limits.max_issues`.
    fn render(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Internal { context, source } => {
                tracing::error!(%status, context, cause = %chain(source.as_ref()), "request failed")
            }
            ApiError::Unavailable(error) => {
                tracing::warn!(%status, error = %error, "request failed")
            }
            _ => {}
        }
        let challenge = match &self {
            ApiError::Unauthorized(refusal) => HeaderValue::from_str(&refusal.1).ok(),
            _ => None,
        };
        let retry_after = match &self {
            ApiError::TooManyRequests { retry_after_secs } => {
                Some(HeaderValue::from(*retry_after_secs))
            }
            _ => None,
        };
        let nhs_code = nhs_http_error_code(status);
        let outcome = OperationOutcome::new(self.into_issues());
        let body = outcome.to_json(nhs_code).to_string();
        let mut response = body.into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        if let Some(challenge) = challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        if let Some(retry_after) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after);
        }
        with_status(response, status)
    }
}

/// An error and its sources, outermost first, as `a: b: c`; a source whose
/// words the error before it already ends with is not repeated.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(source) = next {
        let words = source.to_string();
        if !text.ends_with(&words) {
            text.push_str(": ");
            text.push_str(&words);
        }
        next = source.source();
    }
    text
}

/// `response` with the status of a failure: a 503 also says when to try again, wherever
/// the answer was built (here, or as a BaRS reply message).
pub(super) fn with_status(mut response: Response, status: StatusCode) -> Response {
    *response.status_mut() = status;
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.render()
    }
}

/// The BaRS `http-error-codes` code for a status, for the codes BaRS defines.
pub(super) fn nhs_http_error_code(status: StatusCode) -> Option<&'static str> {
    match status.as_u16() {
        400 => Some("REC_BAD_REQUEST"),
        401 => Some("REC_UNAUTHORIZED"),
        403 => Some("REC_FORBIDDEN"),
        404 => Some("REC_NOT_FOUND"),
        405 => Some("REC_METHOD_NOT_ALLOWED"),
        406 => Some("REC_NOT_ACCEPTABLE"),
        409 => Some("REC_CONFLICT"),
        422 => Some("REC_UNPROCESSABLE_ENTITY"),
        500 => Some("REC_SERVER_ERROR"),
        503 => Some("REC_UNAVAILABLE"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Error)]
    #[error("database error: {0}")]
    struct Outer(#[source] Inner);

    #[derive(Debug, Error)]
    #[error("no such table: referral_secrets")]
    struct Inner;

    #[tokio::test]
    async fn an_internal_error_keeps_its_cause_out_of_the_answer() {
        let error = ApiError::internal(
            "reading /var/lib/sprig/sprig.db",
            Concerning {
                resource: "ServiceRequest/abc".into(),
                source: Box::new(Outer(Inner)),
            },
        );
        let cause = match &error {
            ApiError::Internal { source, .. } => chain(source.as_ref()),
            other => panic!("not internal: {other:?}"),
        };
        // The log's cause: every level once, outermost first.
        assert_eq!(
            cause,
            "ServiceRequest/abc: database error: no such table: referral_secrets"
        );
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.contains("internal-error"), "{text}");
        for internal in [
            "referral_secrets",
            "/var/lib",
            "ServiceRequest/abc",
            "database",
        ] {
            assert!(!text.contains(internal), "{internal} in {text}");
        }
    }
}
