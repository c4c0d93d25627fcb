//! FHIR search (`GET /fhir/{type}`, `POST /fhir/{type}/_search`) and
//! instance history (`GET /fhir/{type}/{id}/_history`), answered as Bundles.
//!
//! The query is read by `search::SearchQuery` (pure), run by `Store::search`,
//! and the page turned into a `searchset` Bundle here. Parameter values can
//! hold NHS numbers: they are never logged, only counts and ids.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::AppState;
use super::authenticate::require_scope;
use super::capability::{Interaction, supported};
use super::error::{ApiError, Concerning};
use super::extract::{FormBody, parse_id};
use super::negotiate::{ResponseFormat, lenient_handling};
use super::pipeline::cpu_bound;
use crate::fhir::{FhirId, Instant, Issue, IssueType, OperationOutcome, ResourceType};
use crate::identity::{Access, Interaction as Scope};
use crate::search::{HistoryQuery, ParseOptions, SearchQuery};
use crate::store::{HistoryOperation, HistoryPage, SearchPage, StoredResource};

/// `GET /fhir/{type}?…`: search one type.
pub async fn search_get(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
    format: ResponseFormat,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let Path(type_name) = path?;
    let resource_type = supported(&type_name, Interaction::SearchType)?;
    require_scope(&access, Scope::Search, resource_type.as_str())?;
    run_search(
        &state,
        resource_type,
        query.as_deref().unwrap_or(""),
        format,
        &headers,
    )
    .await
}

/// `POST /fhir/{type}/_search`: the same search with the parameters in a
/// form body (and any in the URL), for queries too long or too private for
/// a URL.
pub async fn search_post(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
    format: ResponseFormat,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    form: Result<FormBody, ApiError>,
) -> Result<Response, ApiError> {
    let Path(type_name) = path?;
    let resource_type = supported(&type_name, Interaction::SearchType)?;
    require_scope(&access, Scope::Search, resource_type.as_str())?;
    let FormBody(form) = form?;
    let combined = match query.as_deref() {
        Some(q) if !q.is_empty() && !form.is_empty() => format!("{q}&{form}"),
        Some(q) if !q.is_empty() => q.to_owned(),
        _ => form,
    };
    run_search(&state, resource_type, &combined, format, &headers).await
}

async fn run_search(
    state: &AppState,
    resource_type: ResourceType,
    raw_query: &str,
    format: ResponseFormat,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let lenient = lenient_handling(headers);
    let options = ParseOptions {
        lenient,
        base: state.settings.public_base_url.as_deref(),
    };
    let query = SearchQuery::parse_with(resource_type, raw_query, options).map_err(|issues| {
        tracing::info!(
            resource_type = %resource_type,
            issues = issues.len(),
            "search refused"
        );
        ApiError::BadRequest(issues)
    })?;
    let page = state.store.search(&query).await?;
    tracing::info!(
        resource_type = %resource_type,
        criteria = query.criteria.len(),
        ignored = query.warnings.len(),
        returned = page.resources.len(),
        total = page.total,
        more = page.next.is_some(),
        "search"
    );
    let base = state.fhir_base();
    let size: usize = page.resources.iter().map(|r| r.json.len()).sum();
    // Building and writing the page both scale with its size: both go off
    // the runtime for a large page.
    let mut response = cpu_bound(size, move || {
        searchset(&base, &query, page).and_then(|bundle| format.render(&bundle))
    })
    .await??;
    if lenient {
        response.headers_mut().insert(
            "preference-applied",
            HeaderValue::from_static("handling=lenient"),
        );
    }
    Ok(response)
}

/// The `searchset` Bundle for one page.
fn searchset(base: &str, query: &SearchQuery, page: SearchPage) -> Result<Value, ApiError> {
    let type_url = format!("{base}/{}", query.resource_type);
    let mut links = vec![json!({
        "relation": "self",
        "url": format!("{type_url}?{}", query.self_query()),
    })];
    if let Some(cursor) = &page.next {
        links.push(json!({
            "relation": "next",
            "url": format!("{type_url}?{}", query.next_query(cursor)),
        }));
    }
    let mut entries = Vec::with_capacity(page.resources.len() + 1);
    for stored in &page.resources {
        entries.push(json!({
            "fullUrl": format!("{type_url}/{}", stored.id),
            "resource": stored_json(stored)?,
            "search": {"mode": "match"},
        }));
    }
    if !query.warnings.is_empty() {
        entries.push(json!({
            "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            "resource": OperationOutcome::new(query.warnings.clone()).to_json(None),
            "search": {"mode": "outcome"},
        }));
    }
    let mut bundle = bundle_head("searchset");
    if let Some(total) = page.total {
        bundle.insert("total".into(), json!(total));
    }
    bundle.insert("link".into(), Value::Array(links));
    if !entries.is_empty() {
        bundle.insert("entry".into(), Value::Array(entries));
    }
    Ok(Value::Object(bundle))
}

/// `GET /fhir/{type}/{id}/_history`: every version, newest first.
pub async fn history_instance(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<(String, String)>, PathRejection>,
    format: ResponseFormat,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let Path((type_name, raw_id)) = path?;
    let resource_type = supported(&type_name, Interaction::HistoryInstance)?;
    require_scope(&access, Scope::History, resource_type.as_str())?;
    let id = parse_id(&raw_id)?;
    let lenient = lenient_handling(&headers);
    let (history, warnings) = HistoryQuery::parse(query.as_deref().unwrap_or(""), lenient)
        .map_err(ApiError::BadRequest)?;
    let page = state
        .store
        .history(resource_type, &id, history.count, history.before)
        .await?;
    if page.total == 0 {
        return Err(ApiError::NotFound(Issue::error(
            IssueType::NotFound,
            "resource-not-found",
            format!("{resource_type}/{id} does not exist"),
        )));
    }
    tracing::info!(
        resource_type = %resource_type,
        id = %id,
        returned = page.entries.len(),
        total = page.total,
        ignored = warnings.len(),
        "history"
    );

    let resource_url = format!("{}/{resource_type}/{id}", state.fhir_base());
    // Every version's JSON is parsed to build the Bundle: off the runtime
    // when the page is large, as for a search page.
    let size: usize = page
        .entries
        .iter()
        .filter_map(|e| e.json.as_ref())
        .map(String::len)
        .sum();
    let mut response = cpu_bound(size, move || {
        history_bundle(&resource_url, resource_type, &id, history, page)
            .and_then(|bundle| format.render(&bundle))
    })
    .await??;
    if !warnings.is_empty() {
        // A history Bundle has no place for an outcome entry (every entry is
        // a version, search.mode is for searchsets): the ignored parameters
        // are only acknowledged by the header.
        response.headers_mut().insert(
            "preference-applied",
            HeaderValue::from_static("handling=lenient"),
        );
    }
    Ok(response)
}

/// The `history` Bundle for one page of a resource's versions.
fn history_bundle(
    resource_url: &str,
    resource_type: ResourceType,
    id: &FhirId,
    history: HistoryQuery,
    page: HistoryPage,
) -> Result<Value, ApiError> {
    let page_url = |before: Option<crate::fhir::VersionId>| {
        let mut out = form_urlencoded::Serializer::new(String::new());
        out.append_pair("_count", &history.count.to_string());
        if let Some(version) = before {
            out.append_pair(crate::search::CURSOR_PARAM, &version.to_string());
        }
        format!("{resource_url}/_history?{}", out.finish())
    };
    let mut links = vec![json!({"relation": "self", "url": page_url(history.before)})];
    if let Some(next) = page.next {
        links.push(json!({"relation": "next", "url": page_url(Some(next))}));
    }
    let mut entries = Vec::with_capacity(page.entries.len() + 1);
    for entry in &page.entries {
        let (method, url, status) = match entry.operation {
            HistoryOperation::Create => ("POST", resource_type.to_string(), "201 Created"),
            HistoryOperation::Update => ("PUT", format!("{resource_type}/{id}"), "200 OK"),
            HistoryOperation::Delete => {
                ("DELETE", format!("{resource_type}/{id}"), "204 No Content")
            }
        };
        let mut item = Map::new();
        item.insert("fullUrl".into(), json!(resource_url));
        if let Some(text) = &entry.json {
            let resource: Value = serde_json::from_str(text)
                .map_err(|e| ApiError::internal("reading a stored version's JSON", e))?;
            item.insert("resource".into(), resource);
        }
        item.insert("request".into(), json!({"method": method, "url": url}));
        item.insert(
            "response".into(),
            json!({
                "status": status,
                "etag": format!("W/\"{}\"", entry.version_id),
                "lastModified": entry.last_updated.to_fhir(),
            }),
        );
        entries.push(Value::Object(item));
    }
    let mut bundle = bundle_head("history");
    bundle.insert("total".into(), json!(page.total));
    bundle.insert("link".into(), Value::Array(links));
    if !entries.is_empty() {
        bundle.insert("entry".into(), Value::Array(entries));
    }
    Ok(Value::Object(bundle))
}

fn bundle_head(kind: &str) -> Map<String, Value> {
    let mut bundle = Map::new();
    bundle.insert("resourceType".into(), json!("Bundle"));
    bundle.insert("id".into(), json!(uuid::Uuid::new_v4().to_string()));
    bundle.insert(
        "meta".into(),
        json!({"lastUpdated": Instant::now().to_fhir()}),
    );
    bundle.insert("type".into(), json!(kind));
    bundle
}

fn stored_json(stored: &StoredResource) -> Result<Value, ApiError> {
    serde_json::from_str(&stored.json).map_err(|e| {
        ApiError::internal(
            "reading a stored resource's JSON",
            Concerning {
                resource: format!("{}/{}", stored.resource_type, stored.id),
                source: e.into(),
            },
        )
    })
}
