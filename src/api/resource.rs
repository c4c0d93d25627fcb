//! The FHIR RESTful interactions on resources: create, read, vread.
//!
//! A create runs the gateway's pipeline in order: negotiate → read body
//! (`extract::FhirBody`) → parse, check `resourceType`, validate
//! (`pipeline::check`) → store → answer (`response::written`). Each step
//! either hands a stronger value to the next or returns an `ApiError`;
//! nothing is stored unless every step before it passed. A social
//! prescribing referral is handed to `referrals` once validated.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::authenticate::require_scope;
use super::capability::{Interaction, supported};
use super::error::ApiError;
use super::extract::{FhirBody, parse_id};
use super::middleware::RequestContext;
use super::negotiate::ResponseFormat;
use super::pipeline::{self, existing_match};
use super::referrals;
use super::response::{Answer, Written, resource_body, set_version_headers, written};
use crate::fhir::{FhirId, Issue, IssueType, ResourceType, VersionId};
use crate::identity::{Access, Interaction as Scope};
use crate::search::SearchQuery;
use crate::store::{ReadOutcome, ResourceWrite};

/// `POST /fhir/{type}`: create a resource.
// An axum handler: each argument is an extractor, one per thing the request carries.
#[allow(clippy::too_many_arguments)]
pub async fn create(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
    context: RequestContext,
    answer: Answer,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Result<FhirBody, ApiError>,
) -> Result<Response, ApiError> {
    let Path(type_name) = path?;
    let resource_type = supported(&type_name, Interaction::Create)?;
    require_scope(&access, Scope::Create, resource_type.as_str())?;
    let body = body?;
    let if_none_exist = if_none_exist(&headers, query.as_deref(), resource_type)?;
    let checked = pipeline::check(&state, &body, Some(resource_type), None).await?;
    if checked.is_referral() {
        return referrals::create(&state, &access, checked, &context, answer, if_none_exist).await;
    }

    let mut tx = state.store.begin_write().await?;
    let visibility = access.visibility();
    if let Some(existing) = existing_match(&mut tx, if_none_exist.as_ref(), &visibility).await? {
        // What it found may be another request's write in the same SQLite batch,
        // not yet durable: the empty commit returns once that batch has committed.
        tx.commit().await?;
        let what = Written::matched_existing(&existing);
        return written(&existing, what, answer, checked.issues);
    }
    let id = FhirId::generate();
    let stored = tx
        .create(ResourceWrite {
            resource_type: checked.resource_type,
            id: &id,
            resource: checked.resource,
            received: Some(&checked.received),
            request_id: &context.request_id,
            owner: access.owner_of_new(),
        })
        .await?;
    context.audit.note_stored(&stored);
    context.audit.commit(tx, 201).await?;
    tracing::info!(
        resource_type = %stored.resource_type,
        id = %stored.id,
        version = %stored.version_id,
        "resource created"
    );
    written(&stored, Written::created(&stored), answer, checked.issues)
}

/// `If-None-Exist`: the search that, if it matches, means "already there".
/// Search parameters on the POST URL (`POST ServiceRequest?identifier=…`,
/// fhirpy's `get_or_create`) are the same condition, never ignored; both at
/// once is a 400, as Sprig cannot tell which was meant.
fn if_none_exist(
    headers: &HeaderMap,
    url_query: Option<&str>,
    resource_type: ResourceType,
) -> Result<Option<SearchQuery>, ApiError> {
    let url_condition: Vec<(String, String)> =
        form_urlencoded::parse(url_query.unwrap_or("").as_bytes())
            .filter(|(key, _)| key != "_format" && key != "_pretty")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let Some(value) = headers.get("if-none-exist") else {
        if url_condition.is_empty() {
            return Ok(None);
        }
        let text = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&url_condition)
            .finish();
        return SearchQuery::parse_condition(resource_type, &text)
            .map(Some)
            .map_err(ApiError::BadRequest);
    };
    if !url_condition.is_empty() {
        return Err(ApiError::BadRequest(vec![Issue::error(
            IssueType::Invalid,
            "conditional-create-ambiguous",
            "The create has both If-None-Exist and search parameters on its URL; give the condition once, in either",
        )]));
    }
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

/// `GET /fhir/{type}/{id}`: the current version.
pub async fn read(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<(String, String)>, PathRejection>,
    format: ResponseFormat,
    headers: HeaderMap,
    context: RequestContext,
) -> Result<Response, ApiError> {
    let Path((type_name, raw_id)) = path?;
    let resource_type = supported(&type_name, Interaction::Read)?;
    require_scope(&access, Scope::Read, resource_type.as_str())?;
    let id = parse_id(&raw_id)?;
    let outcome = state
        .store
        .read(resource_type, &id, &access.visibility())
        .await?;
    if let ReadOutcome::Found(stored) = &outcome {
        context.audit.note_stored(stored);
    }
    found_or_error(outcome, &format!("{resource_type}/{id}"), format, &headers)
}

/// `GET /fhir/{type}/{id}/_history/{vid}`: one version.
pub async fn vread(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<(String, String, String)>, PathRejection>,
    format: ResponseFormat,
    headers: HeaderMap,
    context: RequestContext,
) -> Result<Response, ApiError> {
    let Path((type_name, raw_id, raw_version)) = path?;
    let resource_type = supported(&type_name, Interaction::Vread)?;
    require_scope(&access, Scope::Vread, resource_type.as_str())?;
    let id = parse_id(&raw_id)?;
    let version = VersionId::parse(&raw_version).map_err(|e| {
        ApiError::BadRequest(vec![Issue::error(
            IssueType::Value,
            "invalid-version-id",
            e.to_string(),
        )])
    })?;
    let outcome = state
        .store
        .vread(resource_type, &id, version, &access.visibility())
        .await?;
    if let ReadOutcome::Found(stored) = &outcome {
        context.audit.note_stored(stored);
    }
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
