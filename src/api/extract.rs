//! What a FHIR handler takes from its request before its own first step:
//! the body ([`FhirBody`]: FHIR JSON, [`FormBody`]: a search form), the
//! request's ids ([`RequestContext`]), and the path's id (`parse_id`; a path
//! that does not read at all is `ApiError::from(PathRejection)`).
//!
//! Invariant: a request body is read here and nowhere else, only once its
//! `Content-Type` was accepted, and never beyond `limits.max_body_bytes` (a
//! larger declared `Content-Length` is refused before a byte is read); every
//! refusal is an `ApiError`, so it leaves as an OperationOutcome. A handler
//! whose earlier steps must answer first (the type, the id, `If-Match`)
//! takes `Result<FhirBody, ApiError>` and asks for the body after them.

use std::convert::Infallible;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use http_body_util::BodyExt;

use super::AppState;
use super::error::ApiError;
use super::middleware::RequestContext;
use super::negotiate::{require_form_body, require_json_body};
use crate::fhir::{FhirId, Issue, IssueType};

/// A request body in FHIR JSON (by its `Content-Type`), read whole under the
/// size limit; not yet parsed.
#[derive(Debug, Clone)]
pub struct FhirBody(pub Bytes);

impl FromRequest<AppState> for FhirBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        require_json_body(request.headers())?;
        read_limited(request, state.settings.limits.max_body_bytes)
            .await
            .map(FhirBody)
    }
}

/// A `application/x-www-form-urlencoded` body (`POST _search`), read whole
/// under the size limit, as text.
#[derive(Debug, Clone)]
pub struct FormBody(pub String);

impl FromRequest<AppState> for FormBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        require_form_body(request.headers())?;
        let bytes = read_limited(request, state.settings.limits.max_body_bytes).await?;
        String::from_utf8(bytes.into()).map(FormBody).map_err(|_| {
            ApiError::BadRequest(vec![Issue::error(
                IssueType::Structure,
                "body-not-utf8",
                "The _search form body is not UTF-8 text",
            )])
        })
    }
}

/// The ids `middleware::request_context` gave the request; where it did not
/// run (a handler driven on its own), the request id is `unknown`.
impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(parts
            .extensions
            .get::<RequestContext>()
            .cloned()
            .unwrap_or_else(RequestContext::unknown))
    }
}

/// Reads the whole body, refusing more than `limit` bytes (413) before
/// reading them when `Content-Length` already says so.
async fn read_limited(request: Request, limit: u64) -> Result<Bytes, ApiError> {
    if declared_length(request.headers()).is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    match http_body_util::Limited::new(request.into_body(), limit_usize)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::PayloadTooLarge { limit })
        }
        Err(error) => Err(ApiError::BadRequest(vec![Issue::error(
            IssueType::Structure,
            "body-unreadable",
            format!("The request body could not be read: {error}"),
        )])),
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// A resource id from the path: 400 when it is not a FHIR id.
pub(super) fn parse_id(raw: &str) -> Result<FhirId, ApiError> {
    FhirId::parse(raw).map_err(|e| {
        ApiError::BadRequest(vec![Issue::error(
            IssueType::Value,
            "invalid-id",
            e.to_string(),
        )])
    })
}

/// The FHIR base URL as this request's client reaches Sprig, for every URL an
/// answer carries (`Location`, `Bundle.link`, `Bundle.entry.fullUrl`,
/// `MessageHeader.focus`): absolute, as R4 defines `fullUrl` and as clients
/// follow links. `public_base_url` when set; otherwise made from the request:
/// [`request_scheme`] and the `Host` (or, over HTTP/2, the `:authority`), then
/// `/fhir`. A request without a usable host gets a 400 before anything is
/// done, since its answer could not name what it made.
#[derive(Debug, Clone)]
pub struct FhirBase(pub String);

impl FhirBase {
    /// The base as text, no trailing slash (`http://127.0.0.1:8080/fhir`).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromRequestParts<AppState> for FhirBase {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(url) = &state.settings.public_base_url {
            return Ok(FhirBase(url.trim_end_matches('/').to_owned()));
        }
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                parts
                    .headers
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
            .filter(|h| is_host(h))
            .ok_or_else(|| {
                ApiError::BadRequest(vec![Issue::error(
                    IssueType::Required,
                    "host-required",
                    "The request has no valid Host header, so Sprig cannot give the URLs its answer must carry; send Host (or set public_base_url)",
                )])
            })?;
        Ok(FhirBase(format!("{}://{host}/fhir", request_scheme(parts))))
    }
}

/// The scheme the client used: `https` when Sprig itself served the request
/// over TLS (`server` marks such a request with `Scheme::HTTPS`), else `http`.
/// `X-Forwarded-Proto` and `Forwarded` are
/// deliberately not read: any client can send them, and a forged one would
/// rewrite the links Sprig hands out. This is the seam for a trusted-proxy
/// setting (believe those headers only from configured proxy addresses);
/// until then, a deployment behind a TLS proxy sets `public_base_url`.
fn request_scheme(parts: &Parts) -> &'static str {
    let tls = parts.extensions.get::<axum::http::uri::Scheme>()
        == Some(&axum::http::uri::Scheme::HTTPS)
        || parts.uri.scheme_str() == Some("https");
    if tls { "https" } else { "http" }
}

/// A `Host` value safe to put in a URL: a name, IPv4 or bracketed IPv6
/// address, and an optional port; nothing that could end the authority.
fn is_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}
