//! How Sprig answers a write, and the headers that name a stored version:
//! [`Answer`] (the format and `Prefer: return=` a client asked for),
//! [`Written`] (what a write did, in words) and [`written`] (the resource,
//! nothing or an OperationOutcome, with `Location`, `ETag` and
//! `Last-Modified`); the words every inbound shape uses for a referral
//! received or already held.
//!
//! Invariant: every answer that carries or names a stored version has its
//! `ETag` and `Last-Modified` (made only by [`set_version_headers`]), and a
//! write's `Location` names the version written; the answer is built only
//! after the write committed (or found its resource already there).

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::Value;

use super::AppState;
use super::error::ApiError;
use super::extract::FhirBase;
use super::negotiate::{ResponseFormat, ReturnPreference, negotiate};
use crate::fhir::{Issue, OperationOutcome};
use crate::referral::record::Referral;
use crate::store::StoredResource;

/// How the client asked a write to be answered, and the base its URLs use.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The response format (`Accept`, `_format`, `_pretty`).
    pub format: ResponseFormat,
    /// `Prefer: return=`.
    pub preference: ReturnPreference,
    /// The FHIR base as the client reaches it, for `Location`.
    pub base: FhirBase,
}

impl FromRequestParts<AppState> for Answer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(Answer {
            format: negotiate(&parts.headers, parts.uri.query())?,
            preference: ReturnPreference::from_headers(&parts.headers),
            base: FhirBase::from_request_parts(parts, state).await?,
        })
    }
}

/// What a write did, as its answer says it.
#[derive(Debug)]
pub(super) struct Written {
    /// 201 for a create, 200 for an update or a resubmission.
    pub status: StatusCode,
    /// The informational issue's id, for `Prefer: return=OperationOutcome`.
    pub message_id: &'static str,
    /// What happened, in words.
    pub message: String,
}

impl Written {
    /// A new resource.
    pub(super) fn created(stored: &StoredResource) -> Self {
        Written {
            status: StatusCode::CREATED,
            message_id: "created",
            message: format!(
                "Created {}/{} (version {})",
                stored.resource_type, stored.id, stored.version_id
            ),
        }
    }

    /// Nothing new: a conditional create's `If-None-Exist` matched `existing`.
    pub(super) fn matched_existing(existing: &StoredResource) -> Self {
        Written {
            status: StatusCode::OK,
            message_id: "create-matched-existing",
            message: format!(
                "If-None-Exist matched {}/{}; nothing new was stored",
                existing.resource_type, existing.id
            ),
        }
    }
}

/// The answer to a write: the resource, nothing or an OperationOutcome
/// (`Prefer`) with `what` and the validation `warnings`, with `Location`,
/// `ETag` and `Last-Modified`.
pub(super) fn written(
    stored: &StoredResource,
    what: Written,
    answer: Answer,
    warnings: Vec<Issue>,
) -> Result<Response, ApiError> {
    let location = format!(
        "{}/{}/{}/_history/{}",
        answer.base.as_str(),
        stored.resource_type,
        stored.id,
        stored.version_id
    );
    let mut response = match answer.preference {
        ReturnPreference::Representation => resource_body(stored, answer.format)?,
        ReturnPreference::Minimal => Response::new(Body::empty()),
        ReturnPreference::OperationOutcome => {
            let mut all = vec![Issue::information(what.message_id, what.message)];
            all.extend(warnings);
            answer
                .format
                .render(&OperationOutcome::new(all).to_json(None))?
        }
    };
    *response.status_mut() = what.status;
    let headers = response.headers_mut();
    set_version_headers(headers, stored);
    insert_header(headers, header::LOCATION, &location);
    insert_header(headers, "preference-applied", answer.preference.applied());
    Ok(response)
}

/// The stored JSON is sent as it is, unless pretty printing was asked for.
pub(super) fn resource_body(
    stored: &StoredResource,
    format: ResponseFormat,
) -> Result<Response, ApiError> {
    if format.pretty {
        let value: Value = serde_json::from_str(&stored.json)
            .map_err(|e| ApiError::internal("reading a stored resource's JSON", e))?;
        format.render(&value)
    } else {
        Ok(format.render_text(stored.json.clone()))
    }
}

/// `ETag` (weak, the version id) and `Last-Modified` of a stored version.
pub(super) fn set_version_headers(headers: &mut HeaderMap, stored: &StoredResource) {
    insert_header(
        headers,
        header::ETAG,
        &format!("W/\"{}\"", stored.version_id),
    );
    insert_header(
        headers,
        header::LAST_MODIFIED,
        &stored.last_updated.to_http_date(),
    );
}

/// Sets a header whose value Sprig made (a value that is not a valid header is left out).
pub(super) fn insert_header<K: axum::http::header::IntoHeaderName>(
    headers: &mut HeaderMap,
    name: K,
    value: &str,
) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// What every inbound shape tells the sender of a new referral.
pub(super) fn received(referral: &Referral) -> String {
    format!(
        "Referral received: ServiceRequest/{} (its progress is reported in Task/{})",
        referral.id, referral.task_id
    )
}

/// What every inbound shape tells the sender of a referral Sprig already holds.
pub(super) fn already_received(existing: &Referral) -> String {
    format!(
        "This referral (same identifier) was already received, on {}: it is ServiceRequest/{}; nothing new was stored",
        existing.received_at, existing.id
    )
}
