//! Cross-cutting request handling: request ids, the per-request tracing
//! span, access logging, security headers (`X-Content-Type-Options` on
//! every answer, `Cache-Control: no-store` under `/fhir` and `/api`), the
//! request timeout (408 while the body is still arriving, else 503), a
//! declared body over the size limit refused up front (413), the memory
//! budget for request bodies (503 with `Retry-After` when it stays full), and
//! panic containment.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant as StdInstant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use tracing::Instrument;

use super::AppState;
use super::audit::AuditHandle;
use super::error::ApiError;
use super::problem::Problem;
use crate::store::CommitGate;

/// `X-Request-ID`: the caller's if it sent a usable one, else a new UUID.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `X-Correlation-ID`: echoed when sent (BaRS uses it to tie a conversation).
pub const CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");

/// Facts about the current request that handlers need.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// This request's id, as echoed in `X-Request-ID`.
    pub request_id: String,
    /// Whether the caller chose the id (so a repeat of it is a retry).
    pub request_id_from_caller: bool,
    /// `X-Correlation-ID`, when the caller sent a usable one.
    pub correlation_id: Option<String>,
    /// This request's audit row in the making (`api::audit`): a write commits it with
    /// the change ([`AuditHandle::commit`]), a read notes whose data it returned.
    pub audit: AuditHandle,
}

impl RequestContext {
    /// The context of a request `request_context` did not see (a handler driven on
    /// its own): request id `unknown`, not audited.
    pub fn unknown() -> Self {
        RequestContext {
            request_id: "unknown".to_owned(),
            request_id_from_caller: false,
            correlation_id: None,
            audit: AuditHandle::default(),
        }
    }

    /// The request id when the caller chose it: a repeat of it is a retry.
    pub fn caller_request_id(&self) -> Option<&str> {
        self.request_id_from_caller
            .then_some(self.request_id.as_str())
    }
}

/// A caller-supplied id is used only if it is short printable ASCII without
/// spaces, so it can go into logs and headers without escaping or injection.
fn usable_id(value: Option<&HeaderValue>) -> Option<String> {
    let text = value?.to_str().ok()?;
    let ok = (1..=200).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    ok.then(|| text.to_owned())
}

/// Opens the request span, assigns the request id and logs the outcome.
/// Outermost layer: everything else, including panics and timeouts, runs
/// inside its span and gets the id headers.
pub async fn request_context(mut request: Request, next: Next) -> Response {
    let caller_id = usable_id(request.headers().get(&REQUEST_ID));
    let request_id_from_caller = caller_id.is_some();
    // Time-ordered (UUIDv7): the audit rows' index on request id, and the stored
    // versions' and submissions' request ids, then take each new id near the last
    // rather than on a random page of the index.
    let request_id = caller_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let correlation_id = usable_id(request.headers().get(&CORRELATION_ID));
    request.extensions_mut().insert(RequestContext {
        request_id: request_id.clone(),
        request_id_from_caller,
        correlation_id: correlation_id.clone(),
        audit: AuditHandle::default(),
    });
    // The path only: query strings may one day carry search parameters
    // with patient details.
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %request.method(),
        path = %request.uri().path(),
    );
    let path = request.uri().path();
    let carries_data = path == "/fhir"
        || path.starts_with("/fhir/")
        || path.starts_with("/api/")
        || path == "/metrics";
    let started = StdInstant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request completed"
        );
    });
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Answers under /fhir and /api may carry patient data: no cache keeps them.
    if carries_data && !headers.contains_key(axum::http::header::CACHE_CONTROL) {
        headers.insert(
            axum::http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        headers.insert(REQUEST_ID, value);
    }
    if let Some(value) = correlation_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        headers.insert(CORRELATION_ID, value);
    }
    response
}

/// Answers with an OperationOutcome if the request runs past the limit: 408
/// when its body had not all arrived (the client was too slow; resending is
/// its part), else 503. Either way the request is dropped first, so its
/// transaction rolls back and nothing of it is stored; a request whose
/// commit had begun when the limit passed is instead waited for and
/// answered with its result (`CommitGate`).
pub async fn request_timeout(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let limit: Duration = state.settings.limits.request_timeout();
    let arrived = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        if body.is_end_stream() {
            arrived.store(true, Ordering::Release);
        }
        Body::new(Watched {
            body,
            arrived: Arc::clone(&arrived),
        })
    });
    let gate = CommitGate::new();
    let mut handling = std::pin::pin!(Arc::clone(&gate).guard(next.run(request)));
    match tokio::time::timeout(limit, handling.as_mut()).await {
        Ok(response) => response,
        // A commit has begun: what it stores is answered, never a 503 that
        // says nothing was stored.
        Err(_) if !gate.close() => {
            tracing::warn!(
                timeout_s = limit.as_secs(),
                "request ran past its time limit while committing; answering with its result"
            );
            handling.await
        }
        Err(_) if !arrived.load(Ordering::Acquire) => {
            tracing::warn!(
                timeout_s = limit.as_secs(),
                "request timed out waiting for its body"
            );
            ApiError::BodyTimeout {
                seconds: limit.as_secs(),
            }
            .into_response()
        }
        Err(_) => {
            tracing::warn!(timeout_s = limit.as_secs(), "request timed out");
            ApiError::Timeout {
                seconds: limit.as_secs(),
            }
            .into_response()
        }
    }
}

/// A request body that says when it has all arrived.
struct Watched {
    body: Body,
    arrived: Arc<AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || this.body.is_end_stream() {
            this.arrived.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Refuses a request whose `Content-Length` is over `limits.max_body_bytes`
/// before a byte of its body is read: 413, as an OperationOutcome (problem
/// details under `/api/`). Handlers still hold the bodies they read to the
/// limit, for bodies without a declared length.
pub async fn declared_body_limit(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let limit = state.settings.limits.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_none_or(|n| n <= limit) {
        return next.run(request).await;
    }
    if request.uri().path().starts_with("/api/") {
        return Problem::payload_too_large(limit).into_response();
    }
    ApiError::PayloadTooLarge { limit }.into_response()
}

/// Refuses, with 415, a request under `/fhir` or `/api` whose body headers
/// Sprig cannot honour (`negotiate::body_headers_refusal`): before the body
/// is read, whatever the route would have made of it.
pub async fn body_headers(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let checked = path == "/fhir" || path.starts_with("/fhir/") || path.starts_with("/api/");
    let Some(refusal) = checked
        .then(|| super::negotiate::body_headers_refusal(request.headers()))
        .flatten()
    else {
        return next.run(request).await;
    };
    if path.starts_with("/api/") {
        return Problem::unsupported_media_type(refusal).into_response();
    }
    ApiError::UnsupportedMediaType(crate::fhir::Issue::error(
        crate::fhir::IssueType::NotSupported,
        "unsupported-media-type",
        refusal,
    ))
    .into_response()
}

/// Turns a panic in a handler into a 500 OperationOutcome (the panic is a
/// defect, logged, and the server keeps running).
pub fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    // The panic's message is not logged here: it may quote the request.
    ApiError::internal("handling a request", "the handler panicked").into_response()
}

/// The memory budget for request bodies (`limits.body_budget_bytes`), in KiB
/// permits: a request with a body holds its weight from before its body is
/// read until its answer is made, so the bodies, and the working memory
/// validation and the transaction build from them, are bounded across all
/// requests together rather than growing with concurrency.
///
/// Beside it, a reserve for small bodies (`limits.small_body_reserve_bytes`):
/// a body of at most `limits.small_body_max_bytes` takes room in the budget
/// when there is some, else in the reserve. Large bodies never touch the
/// reserve, so a storm of them, or uploads that stall holding the budget
/// until the minimum-rate cut, cannot make an ordinary referral wait.
#[derive(Clone)]
pub struct BodyBudget {
    permits: Arc<tokio::sync::Semaphore>,
    /// `None` without a reserve.
    small_reserve: Option<Arc<tokio::sync::Semaphore>>,
    small_body_max_bytes: u64,
    max_body_bytes: u64,
    wait: Duration,
}

/// A semaphore of `bytes` in KiB permits (as many as a semaphore can hold).
fn kib_semaphore(bytes: u64) -> Arc<tokio::sync::Semaphore> {
    let permits = usize::try_from(kib(bytes)).unwrap_or(usize::MAX);
    Arc::new(tokio::sync::Semaphore::new(
        permits.min(tokio::sync::Semaphore::MAX_PERMITS),
    ))
}

impl BodyBudget {
    /// The budget the settings ask for.
    pub fn new(limits: &crate::config::Limits) -> Self {
        Self {
            permits: kib_semaphore(limits.body_budget_bytes),
            small_reserve: (limits.small_body_reserve_bytes > 0)
                .then(|| kib_semaphore(limits.small_body_reserve_bytes)),
            small_body_max_bytes: limits.small_body_max_bytes,
            max_body_bytes: limits.max_body_bytes,
            wait: Duration::from_millis(limits.body_budget_wait_ms),
        }
    }

    /// Room for `weight` bytes: from the budget, or for a small body from
    /// the reserve, whichever has room first, within `limits.body_budget_wait_ms`.
    async fn admit(&self, weight: u64) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permits = u32::try_from(kib(weight)).unwrap_or(u32::MAX);
        let budget = Arc::clone(&self.permits);
        let reserve = self
            .small_reserve
            .as_ref()
            .filter(|_| weight <= self.small_body_max_bytes)
            .map(Arc::clone);
        let Some(reserve) = reserve else {
            return tokio::time::timeout(self.wait, budget.acquire_many_owned(permits))
                .await
                .ok()?
                .ok();
        };
        // The budget first, so the reserve stays free until it is needed.
        if let Ok(permit) = Arc::clone(&budget).try_acquire_many_owned(permits) {
            return Some(permit);
        }
        let either = async move {
            tokio::select! {
                biased;
                permit = budget.acquire_many_owned(permits) => permit.ok(),
                permit = reserve.acquire_many_owned(permits) => permit.ok(),
            }
        };
        tokio::time::timeout(self.wait, either).await.ok().flatten()
    }

    /// What a request weighs: nothing without a body; its declared length
    /// (HTTP/1 `Content-Length`, HTTP/2 `content-length`); else, since a
    /// chunked body may grow to the limit, the limit. Reserving the whole
    /// weight up front, never piecemeal, is what keeps bodies that each hold
    /// part of the budget from waiting on one another forever.
    fn weight(&self, request: &Request) -> u64 {
        let body = request.body();
        if body.is_end_stream() {
            return 0;
        }
        // The body's own hint is exact only for some wrappers; the declared
        // `Content-Length` (which hyper enforces: a body cannot run past it) is
        // the next best, and only a body of unknown length weighs the limit.
        body.size_hint()
            .exact()
            .or_else(|| declared_length(request))
            .unwrap_or(self.max_body_bytes)
            .min(self.max_body_bytes)
    }
}

/// The request's `Content-Length`, when it is one well-formed number.
fn declared_length(request: &Request) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Bytes to KiB permits, rounded up.
fn kib(bytes: u64) -> u64 {
    bytes.div_ceil(1024)
}

/// Holds a request with a body until the body budget has room for it (at most
/// `limits.body_budget_wait_ms`), then keeps its share until the answer is
/// made. A request that finds no room in time is answered 503 with
/// `Retry-After`: the server really is full, and the sender should resend.
pub async fn body_budget(
    State(budget): State<BodyBudget>,
    request: Request,
    next: Next,
) -> Response {
    let weight = budget.weight(&request);
    if weight == 0 {
        return next.run(request).await;
    }
    match budget.admit(weight).await {
        Some(permit) => {
            let response = next.run(request).await;
            drop(permit);
            response
        }
        // Timed out, or (never: they are not closed) a semaphore was closed.
        None => {
            tracing::warn!(
                weight_bytes = weight,
                "request body refused: the body memory budget is full"
            );
            if request.uri().path().starts_with("/api/") {
                let mut response = Problem::busy().into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return response;
            }
            ApiError::Busy.into_response()
        }
    }
}
