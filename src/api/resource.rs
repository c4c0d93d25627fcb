//! The FHIR RESTful interactions on resources: create, read, vread.
//!
//! A create runs the gateway's pipeline in order: negotiate → read body →
//! parse (strict FHIR JSON) → check `resourceType` → validate → store →
//! answer. Each step either hands a stronger value to the next or returns
//! an `ApiError`; nothing is stored unless every step before it passed.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::Value;

use super::AppState;
use super::capability::{Interaction, supported};
use super::error::ApiError;
use super::middleware::RequestContext;
use super::negotiate::{ResponseFormat, ReturnPreference, require_json_body};
use super::referrals::{self, Arrived};
use crate::fhir::json::{JsonLimits, parse_resource};
use crate::fhir::locate::locate_issues;
use crate::fhir::{FhirId, Issue, IssueType, OperationOutcome, ResourceType, VersionId};
use crate::search::SearchQuery;
use crate::store::{ReadOutcome, ResourceWrite, StoredResource, WriteTx};
use crate::validation::REFERRAL_PROFILE;
use crate::validation::Target;

/// `POST /fhir/{type}`: create a resource.
pub async fn create(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    context: Option<Extension<RequestContext>>,
    format: ResponseFormat,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path(type_name) = path.map_err(bad_path)?;
    let resource_type = supported(&type_name, Interaction::Create)?;
    require_json_body(&headers)?;
    let preference = ReturnPreference::from_headers(&headers);
    let limits = &state.settings.limits;
    let bytes = read_body(body, &headers, limits.max_body_bytes).await?;
    let if_none_exist = if_none_exist(&headers, resource_type)?;

    let checked = check_body(&state, bytes.clone(), Some(resource_type), None).await?;
    let Checked {
        resource_type,
        profiles,
        resource,
        issues,
    } = checked;
    let context = context.map(|Extension(c)| c);
    if resource_type == ResourceType::SERVICE_REQUEST
        && profiles.iter().any(|p| p == REFERRAL_PROFILE)
    {
        let arrived = Arrived {
            body: &bytes,
            context: context.as_ref(),
            format,
            preference,
            warnings: issues,
        };
        return referrals::create_referral(&state, resource, arrived, if_none_exist).await;
    }

    let request_id = context
        .as_ref()
        .map(|c| c.request_id.as_str())
        .unwrap_or("unknown");
    let mut tx = state.store.begin_write().await?;
    if let Some(query) = &if_none_exist
        && let Some(existing) = existing_match(&mut tx, query).await?
    {
        drop(tx);
        return written(
            &state,
            &existing,
            matched_existing(&existing, preference, format, issues),
        );
    }
    let id = FhirId::generate();
    let stored = tx
        .create(ResourceWrite {
            resource_type,
            id: &id,
            resource,
            received: Some(&bytes),
            request_id,
        })
        .await?;
    tx.commit().await?;
    tracing::info!(
        resource_type = %stored.resource_type,
        id = %stored.id,
        version = %stored.version_id,
        "resource created"
    );

    written(
        &state,
        &stored,
        Written {
            status: StatusCode::CREATED,
            message_id: "created",
            message: format!(
                "Created {}/{} (version {})",
                stored.resource_type, stored.id, stored.version_id
            ),
            preference,
            format,
            issues,
        },
    )
}

/// `If-None-Exist`: the search that, if it matches, means "already there".
fn if_none_exist(
    headers: &HeaderMap,
    resource_type: ResourceType,
) -> Result<Option<SearchQuery>, ApiError> {
    let Some(value) = headers.get("if-none-exist") else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| {
        ApiError::BadRequest(vec![Issue::error(
            IssueType::Value,
            "if-none-exist-invalid",
            "If-None-Exist must be a search query such as identifier=system|value",
        )])
    })?;
    let query = text.trim().trim_start_matches('?');
    SearchQuery::parse_condition(resource_type, query)
        .map(Some)
        .map_err(ApiError::BadRequest)
}

/// The one current resource matching `query`; 412 when several do.
pub(super) async fn existing_match(
    tx: &mut WriteTx,
    query: &SearchQuery,
) -> Result<Option<StoredResource>, ApiError> {
    let ids = tx.matching_ids(query).await?;
    match ids.as_slice() {
        [] => Ok(None),
        [id] => match tx.read(query.resource_type, id).await? {
            ReadOutcome::Found(stored) => Ok(Some(stored)),
            _ => Ok(None),
        },
        many => Err(ApiError::PreconditionFailed(Issue::error(
            IssueType::MultipleMatches,
            "conditional-multiple-matches",
            format!(
                "If-None-Exist matches {} resources, so Sprig cannot tell which one is meant; make it more specific",
                many.len()
            ),
        ))),
    }
}

/// The answer to a create whose `If-None-Exist` matched `existing`.
pub(super) fn matched_existing(
    existing: &StoredResource,
    preference: ReturnPreference,
    format: ResponseFormat,
    issues: Vec<Issue>,
) -> Written {
    Written {
        status: StatusCode::OK,
        message_id: "create-matched-existing",
        message: format!(
            "If-None-Exist matched {}/{}; nothing new was stored",
            existing.resource_type, existing.id
        ),
        preference,
        format,
        issues,
    }
}

/// How to answer a write.
pub(super) struct Written {
    /// 201 for a create, 200 for an update or a resubmission.
    pub status: StatusCode,
    /// The informational issue's id, for `Prefer: return=OperationOutcome`.
    pub message_id: &'static str,
    /// What happened, in words.
    pub message: String,
    /// What the client asked to get back.
    pub preference: ReturnPreference,
    /// The response format.
    pub format: ResponseFormat,
    /// Validation warnings to pass on.
    pub issues: Vec<Issue>,
}

/// The answer to a write: the resource, nothing or an OperationOutcome
/// (`Prefer`), with `Location`, `ETag` and `Last-Modified`.
pub(super) fn written(
    state: &AppState,
    stored: &StoredResource,
    how: Written,
) -> Result<Response, ApiError> {
    let location = format!(
        "{}/{}/{}/_history/{}",
        state.fhir_base(),
        stored.resource_type,
        stored.id,
        stored.version_id
    );
    let mut response = match how.preference {
        ReturnPreference::Representation => resource_body(stored, how.format)?,
        ReturnPreference::Minimal => Response::new(Body::empty()),
        ReturnPreference::OperationOutcome => {
            let mut all = vec![Issue::information(how.message_id, how.message)];
            all.extend(how.issues);
            how.format
                .render(&OperationOutcome::new(all).to_json(None))?
        }
    };
    *response.status_mut() = how.status;
    let headers = response.headers_mut();
    set_version_headers(headers, stored);
    insert_header(headers, header::LOCATION, &location);
    insert_header(headers, "preference-applied", how.preference.applied());
    Ok(response)
}

/// A body that parsed and passed validation.
#[derive(Debug)]
pub(super) struct Checked {
    /// Its type.
    pub resource_type: ResourceType,
    /// The profiles it was held to.
    pub profiles: Vec<String>,
    /// The resource.
    pub resource: Value,
    /// Warnings and information from validation (no errors).
    pub issues: Vec<Issue>,
}

/// Parses and validates a request body: 400 when it is not FHIR JSON of
/// the `expected` type, 422 (issues located by line and column) when it is
/// not valid against its profiles; `profile` is a profile the endpoint
/// requires on top of those the resource names.
pub(super) async fn check_body(
    state: &AppState,
    body: bytes::Bytes,
    expected: Option<ResourceType>,
    profile: Option<&'static str>,
) -> Result<Checked, ApiError> {
    let limits = &state.settings.limits;
    let json_limits = JsonLimits {
        max_depth: limits.max_json_depth,
    };
    let max_issues = limits.max_issues;
    let validator = Arc::clone(&state.validator);
    let expected_name = expected.map_or("Resource", ResourceType::as_str);
    let checked = cpu_bound(body.len(), move || {
        let resource = parse_resource(&body, json_limits)
            .map_err(|e| ApiError::BadRequest(capped(e.to_issues(expected_name), max_issues)))?;
        // A body of the wrong type is a bad request (400), not an invalid
        // resource (422).
        let (resource_type, profiles) = validator
            .target_of(&resource, expected, profile)
            .map_err(|issue| ApiError::BadRequest(vec![issue]))?;
        // Moved, not copied: the same value is validated and then stored.
        let resource = Value::Object(resource);
        let target = Target {
            resource_type,
            profiles: &profiles,
        };
        let mut issues = validator.validate(&target, &resource);
        if issues.iter().any(|i| i.severity.is_error()) {
            locate_issues(&body, resource_type.as_str(), &mut issues);
        }
        Ok::<_, ApiError>(Checked {
            resource_type,
            profiles,
            resource,
            issues,
        })
    })
    .await??;
    if checked.issues.iter().any(|i| i.severity.is_error()) {
        tracing::info!(
            resource_type = %checked.resource_type,
            issues = checked.issues.len(),
            "resource rejected by validation"
        );
        return Err(ApiError::Unprocessable(capped(checked.issues, max_issues)));
    }
    Ok(checked)
}

/// `GET /fhir/{type}/{id}`: the current version.
pub async fn read(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    format: ResponseFormat,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((type_name, raw_id)) = path.map_err(bad_path)?;
    let resource_type = supported(&type_name, Interaction::Read)?;
    let id = parse_id(&raw_id)?;
    let outcome = state.store.read(resource_type, &id).await?;
    found_or_error(outcome, &format!("{resource_type}/{id}"), format, &headers)
}

/// `GET /fhir/{type}/{id}/_history/{vid}`: one version.
pub async fn vread(
    State(state): State<AppState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    format: ResponseFormat,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((type_name, raw_id, raw_version)) = path.map_err(bad_path)?;
    let resource_type = supported(&type_name, Interaction::Vread)?;
    let id = parse_id(&raw_id)?;
    let version = VersionId::parse(&raw_version).map_err(|e| {
        ApiError::BadRequest(vec![Issue::error(
            IssueType::Value,
            "invalid-version-id",
            e.to_string(),
        )])
    })?;
    let outcome = state.store.vread(resource_type, &id, version).await?;
    found_or_error(
        outcome,
        &format!("{resource_type}/{id}/_history/{version}"),
        format,
        &headers,
    )
}

fn found_or_error(
    outcome: ReadOutcome,
    what: &str,
    format: ResponseFormat,
    request_headers: &HeaderMap,
) -> Result<Response, ApiError> {
    match outcome {
        ReadOutcome::Found(stored) => {
            if etag_matches(request_headers, stored.version_id) {
                let mut response = StatusCode::NOT_MODIFIED.into_response();
                set_version_headers(response.headers_mut(), &stored);
                return Ok(response);
            }
            let mut response = resource_body(&stored, format)?;
            set_version_headers(response.headers_mut(), &stored);
            Ok(response)
        }
        ReadOutcome::Deleted {
            version_id,
            last_updated,
        } => Err(ApiError::Gone(Issue::error(
            IssueType::Deleted,
            "resource-deleted",
            format!(
                "{what} was deleted at {} (version {version_id}); earlier versions remain readable through _history",
                last_updated.to_fhir()
            ),
        ))),
        ReadOutcome::NotFound => Err(ApiError::NotFound(Issue::error(
            IssueType::NotFound,
            "resource-not-found",
            format!("{what} does not exist"),
        ))),
    }
}

/// `If-None-Match` with the current ETag (or `*`): the client's copy is current.
fn etag_matches(headers: &HeaderMap, version: VersionId) -> bool {
    let weak = format!("W/\"{version}\"");
    let strong = format!("\"{version}\"");
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag == weak || tag == strong)
}

pub(super) fn parse_id(raw: &str) -> Result<FhirId, ApiError> {
    FhirId::parse(raw).map_err(|e| {
        ApiError::BadRequest(vec![Issue::error(
            IssueType::Value,
            "invalid-id",
            e.to_string(),
        )])
    })
}

pub(super) fn bad_path(rejection: PathRejection) -> ApiError {
    ApiError::BadRequest(vec![Issue::error(
        IssueType::Invalid,
        "invalid-path",
        format!("The request path could not be read: {rejection}"),
    )])
}

pub(super) fn capped(issues: Vec<Issue>, max: usize) -> Vec<Issue> {
    OperationOutcome::new(issues).capped(max).issues
}

/// Bodies above this size are parsed and validated on the blocking pool.
const OFFLOAD_ABOVE_BYTES: usize = 64 * 1024;

/// Runs CPU-bound work (parsing, validation) for a body of `body_len`
/// bytes. A body at the 5 MiB limit takes about 0.1 s to validate, which
/// would stall every request sharing the runtime worker, so large bodies go
/// to the blocking pool; a typical referral (3 KB, ~70 µs) stays inline,
/// because under load the thread hop costs more than it saves.
pub(super) async fn cpu_bound<T: Send + 'static>(
    body_len: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    if body_len <= OFFLOAD_ABOVE_BYTES {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::Internal(format!("a validation task failed: {e}")))
}

/// Reads the whole body, refusing more than `limit` bytes (413) before
/// reading them when `Content-Length` already says so.
pub(super) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: u64,
) -> Result<bytes::Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    match http_body_util::Limited::new(body, limit_usize)
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

/// The stored JSON is sent as it is, unless pretty printing was asked for.
pub(super) fn resource_body(
    stored: &StoredResource,
    format: ResponseFormat,
) -> Result<Response, ApiError> {
    if format.pretty {
        let value: Value = serde_json::from_str(&stored.json)
            .map_err(|e| ApiError::Internal(format!("stored JSON unreadable: {e}")))?;
        format.render(&value)
    } else {
        Ok(format.render_text(stored.json.clone()))
    }
}

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

pub(super) fn insert_header<K: axum::http::header::IntoHeaderName>(
    headers: &mut HeaderMap,
    name: K,
    value: &str,
) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}
