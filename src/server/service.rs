//! Per request, between hyper and the router: puts what the connection knows
//! into the request (`ConnectInfo<SocketAddr>`, the [`PeerCertificate`]),
//! holds the body to the minimum rate, keeps the connection counted busy
//! until the answer is sent, and answers what the connection layer decides
//! itself: 503 for anything but a probe on a health-reserve connection, 408
//! for a body cut for slowness. `Strict-Transport-Security` goes on every
//! answer over TLS.
//!
//! Its answers are OperationOutcomes, or problem details under `/api/`, like
//! the router's own.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tower::ServiceExt;

use super::PeerCertificate;
use super::body::{Rate, RateLimited};
use super::io::{Activity, InFlight};
use crate::fhir::{Issue, IssueType, OperationOutcome};

/// `Strict-Transport-Security` when serving TLS: a year, this host only.
const HSTS: HeaderValue = HeaderValue::from_static("max-age=31536000");
const FHIR_JSON: HeaderValue = HeaderValue::from_static("application/fhir+json; charset=utf-8");
const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// What a connection knows about its client.
#[derive(Debug)]
pub(super) struct Facts {
    pub(super) peer: SocketAddr,
    pub(super) peer_certificate: Option<Arc<PeerCertificate>>,
    /// The connection holds a health-reserve slot.
    pub(super) health_only: bool,
    pub(super) tls: bool,
}

/// The hyper service of one connection.
#[derive(Clone)]
pub(super) struct RequestService {
    router: Router,
    facts: Arc<Facts>,
    activity: Arc<Activity>,
    body_rate: Option<Rate>,
}

impl RequestService {
    pub(super) fn new(
        router: Router,
        facts: Arc<Facts>,
        activity: Arc<Activity>,
        body_rate: Option<Rate>,
    ) -> Self {
        Self {
            router,
            facts,
            activity,
            body_rate,
        }
    }

    async fn handle(self, mut request: Request<Incoming>) -> Response<Body> {
        let in_flight = self.activity.begin();
        let version = request.version();
        let for_api = request.uri().path().starts_with("/api/");
        let mut response = if self.facts.health_only && !is_probe(&request) {
            tracing::debug!(peer = %self.facts.peer, "request on a health-reserve connection refused");
            over_capacity(for_api)
        } else {
            request
                .extensions_mut()
                .insert(ConnectInfo(self.facts.peer));
            if let Some(certificate) = &self.facts.peer_certificate {
                request
                    .extensions_mut()
                    .insert(PeerCertificate::clone(certificate));
            }
            let tripped = Arc::new(AtomicBool::new(false));
            let request = request.map(|body| match self.body_rate {
                Some(rate) => Body::new(RateLimited::new(body, rate, Arc::clone(&tripped))),
                None => Body::new(body),
            });
            let response = match self.router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            if tripped.load(Ordering::Acquire) {
                too_slow(response, for_api, version)
            } else {
                response
            }
        };
        if self.facts.tls {
            response
                .headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, HSTS);
        }
        response.map(|body| Body::new(Tracked { body, in_flight }))
    }
}

impl hyper::service::Service<Request<Incoming>> for RequestService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(request).await) })
    }
}

/// `GET` (or `HEAD`) of a probe path.
fn is_probe<B>(request: &Request<B>) -> bool {
    matches!(*request.method(), Method::GET | Method::HEAD)
        && matches!(request.uri().path(), "/healthz" | "/readyz")
}

/// 503: the connection came in over the connection limit.
fn over_capacity(for_api: bool) -> Response<Body> {
    let detail = "Sprig is serving as many connections as it allows; try again in a moment";
    let mut response = failure(
        StatusCode::SERVICE_UNAVAILABLE,
        for_api,
        Issue::error(IssueType::Transient, "connection-limit", detail),
        "Service unavailable",
        Some("REC_UNAVAILABLE"),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// 408 in place of whatever the handler answered to a body cut for slowness.
fn too_slow(handled: Response<Body>, for_api: bool, version: Version) -> Response<Body> {
    let request_id = handled.headers().get("x-request-id").cloned();
    tracing::warn!(
        request_id = request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-"),
        "request body arrived too slowly; answered 408"
    );
    let detail = "The request body arrived too slowly (below the server's minimum data rate) and was not read; send it again at a steady pace";
    let mut response = failure(
        StatusCode::REQUEST_TIMEOUT,
        for_api,
        Issue::error(IssueType::Timeout, "body-too-slow", detail),
        "Request timeout",
        None,
    );
    let headers = response.headers_mut();
    if let Some(id) = request_id {
        headers.insert("x-request-id", id);
    }
    if version < Version::HTTP_2 {
        // The rest of the body was never read: the connection cannot carry another request.
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn failure(
    status: StatusCode,
    for_api: bool,
    issue: Issue,
    title: &str,
    http_error_code: Option<&str>,
) -> Response<Body> {
    let (body, content_type) = if for_api {
        let problem = serde_json::json!({
            "type": "about:blank",
            "title": title,
            "status": status.as_u16(),
            "detail": issue.message,
        });
        (problem.to_string(), PROBLEM_JSON)
    } else {
        let outcome = OperationOutcome::single(issue).to_json(http_error_code);
        (outcome.to_string(), FHIR_JSON)
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    response
}

/// A response body that keeps its request counted in flight until it has
/// been sent (or abandoned).
struct Tracked {
    body: Body,
    #[allow(dead_code)]
    in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
