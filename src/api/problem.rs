//! Problem details (RFC 9457, `application/problem+json`): the one error
//! shape of the service API under `/api`, as `error::ApiError`'s
//! OperationOutcome is under `/fhir`.
//!
//! Invariant: every `/api` failure leaves as a [`Problem`] made here; a 5xx
//! says only that Sprig failed (the cause is logged, never sent).

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::store::StoreError;
use crate::workflow::WorkflowError;

/// An RFC 9457 problem: the one error shape of `/api`.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    title: &'static str,
    detail: String,
    extra: Option<Box<(&'static str, Value)>>,
}

impl Problem {
    pub(super) fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            title,
            detail: detail.into(),
            extra: None,
        }
    }

    /// 405.
    pub fn method_not_allowed(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed", detail)
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not found", detail)
    }

    /// 413: a declared body over `limits.max_body_bytes`.
    pub(super) fn payload_too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request too large",
            format!("The request body is larger than the limit of {limit} bytes"),
        )
    }

    /// 503: the body memory budget is full (the caller adds `Retry-After`).
    pub(super) fn busy() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Busy",
            "Sprig is handling as many request bodies as its memory budget allows; nothing was read or changed. Retry shortly",
        )
    }

    /// 415: body headers Sprig cannot honour.
    pub(super) fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported media type",
            detail,
        )
    }

    pub(super) fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad request", detail)
    }

    /// 500: a defect, already logged by whoever found it.
    pub(super) fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal error",
            "Sprig hit an internal error; nothing was changed. Quote the X-Request-ID response header when reporting it",
        )
    }

    fn with(mut self, key: &'static str, value: Value) -> Self {
        self.extra = Some(Box::new((key, value)));
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": "about:blank",
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(extra) = self.extra {
            let (key, value) = *extra;
            body[key] = value;
        }
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        // Every 503 says when to try again (storage busy or failing over, the body
        // budget full), as under /fhir.
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            && !response.headers().contains_key(header::RETRY_AFTER)
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<StoreError> for Problem {
    fn from(error: StoreError) -> Self {
        if error.is_transient() {
            tracing::warn!(error = %error, "service API: store busy");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "Storage is busy; retry shortly",
            )
        } else {
            tracing::error!(error = %error, "service API: store failed");
            Problem::internal()
        }
    }
}

impl From<WorkflowError> for Problem {
    fn from(error: WorkflowError) -> Self {
        let detail = error.to_string();
        match error {
            WorkflowError::NotFound(_) => {
                Problem::new(StatusCode::NOT_FOUND, "Referral not found", detail)
            }
            WorkflowError::IllegalTransition { from, .. } => {
                Problem::new(StatusCode::CONFLICT, "Transition not allowed", detail).with(
                    "allowed",
                    json!(
                        from.allowed_next()
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                    ),
                )
            }
            WorkflowError::Conflict(_) => {
                Problem::new(StatusCode::CONFLICT, "Not allowed in this stage", detail)
            }
            WorkflowError::Invalid(_) | WorkflowError::Score(_) => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid request", detail)
            }
            WorkflowError::Unmappable(issues) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid request",
                issues
                    .iter()
                    .map(|i| i.message.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            WorkflowError::Defect(_) => {
                tracing::error!(detail = %detail, "service API: defect");
                Problem::internal()
            }
            WorkflowError::Store(error) => error.into(),
        }
    }
}

/// A JSON body that is not what the endpoint takes.
impl From<JsonRejection> for Problem {
    fn from(rejection: JsonRejection) -> Self {
        // 413 over the size limit, 415 without a JSON content type; any other
        // body that is not the JSON asked for (syntax, unknown or missing
        // fields, wrong types) is a 400, as the OpenAPI description says.
        let status = match rejection.status() {
            status @ (StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE) => status,
            _ => StatusCode::BAD_REQUEST,
        };
        let title = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "Request too large"
        } else {
            "Bad request"
        };
        Problem::new(
            status,
            title,
            format!(
                "The request body is not what this endpoint takes: {}",
                rejection.body_text()
            ),
        )
    }
}

/// A path that does not read as the route's parameters.
impl From<PathRejection> for Problem {
    fn from(rejection: PathRejection) -> Self {
        Problem::bad_request(format!(
            "The request path could not be read: {}",
            rejection.body_text()
        ))
    }
}
