//! FHIR search (`GET /fhir/{type}`, `POST /fhir/{type}/_search`) and
//! instance history (`GET /fhir/{type}/{id}/_history`), answered as Bundles.
//!
//! The query is read by `search::SearchQuery` (pure), run by `Store::search`,
//! and the page turned into a `searchset` Bundle here. Parameter values can
//! hold NHS numbers: they are never logged, only counts and ids.

use std::collections::HashSet;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::AppState;
use super::audit::AuditHandle;
use super::authenticate::require_scope;
use super::capability::{Interaction, supported};
use super::error::{ApiError, Concerning};
use super::extract::{FhirBase, FormBody, parse_id};
use super::middleware::RequestContext;
use super::negotiate::{ResponseFormat, lenient_handling, strict_handling};
use super::pipeline::cpu_bound;
use crate::fhir::{FhirId, Instant, Issue, IssueType, OperationOutcome, ResourceType};
use crate::identity::{Access, Interaction as Scope};
use crate::search::{HistoryQuery, IndexValue, ParseOptions, SearchQuery, index_entries};
use crate::store::{
    HistoryOperation, HistoryPage, ReadOutcome, SearchPage, StoredResource, Visibility,
};

/// `GET /fhir/{type}?…`: search one type.
// An axum handler: each argument is an extractor, one per thing the request carries.
#[allow(clippy::too_many_arguments)]
pub async fn search_get(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
    format: ResponseFormat,
    base: FhirBase,
    headers: HeaderMap,
    context: RequestContext,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let Path(type_name) = path?;
    let resource_type = supported(&type_name, Interaction::SearchType)?;
    require_scope(&access, Scope::Search, resource_type.as_str())?;
    run_search(
        &state,
        &access,
        resource_type,
        query.as_deref().unwrap_or(""),
        format,
        &base,
        &headers,
        &context.audit,
    )
    .await
}

/// `POST /fhir/{type}/_search`: the same search with the parameters in a
/// form body (and any in the URL), for queries too long or too private for
/// a URL.
// An axum handler: each argument is an extractor, one per thing the request carries.
#[allow(clippy::too_many_arguments)]
pub async fn search_post(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
    format: ResponseFormat,
    base: FhirBase,
    headers: HeaderMap,
    context: RequestContext,
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
    run_search(
        &state,
        &access,
        resource_type,
        &combined,
        format,
        &base,
        &headers,
        &context.audit,
    )
    .await
}

// Each argument is something the search needs; grouping them would only rename them.
#[allow(clippy::too_many_arguments)]
async fn run_search(
    state: &AppState,
    access: &Access,
    resource_type: ResourceType,
    raw_query: &str,
    format: ResponseFormat,
    base: &FhirBase,
    headers: &HeaderMap,
    audit: &AuditHandle,
) -> Result<Response, ApiError> {
    audit.note_search_parameters(raw_query);
    let lenient = lenient_handling(headers);
    let strict = strict_handling(headers);
    let options = ParseOptions {
        lenient,
        strict,
        base: Some(base.as_str()),
    };
    let query = SearchQuery::parse_with(resource_type, raw_query, options).map_err(|issues| {
        tracing::info!(
            resource_type = %resource_type,
            issues = issues.len(),
            "search refused"
        );
        ApiError::BadRequest(issues)
    })?;
    // Matches, their total, the cursor's page and what `_include`/`_revinclude`
    // add: all within what the caller may see.
    let visibility = access.visibility();
    let page = state.store.search(&query, &visibility).await?;
    let included = included(state, &query, &page, &visibility).await?;
    tracing::info!(
        resource_type = %resource_type,
        criteria = query.criteria.len(),
        ignored = query.warnings.len(),
        returned = page.resources.len(),
        total = page.total,
        more = page.next.is_some(),
        "search"
    );
    for resource in page.resources.iter().chain(&included) {
        audit.note_stored(resource);
    }
    let base = base.as_str().to_owned();
    let size: usize = page
        .resources
        .iter()
        .chain(&included)
        .map(|r| r.json.len())
        .sum();
    // Building and writing the page both scale with its size: both go off
    // the runtime for a large page.
    let mut response = cpu_bound(size, move || {
        searchset(&base, &query, page, &included).and_then(|bundle| format.render(&bundle))
    })
    .await??;
    let applied = if lenient {
        Some("handling=lenient")
    } else if strict {
        Some("handling=strict")
    } else {
        None
    };
    if let Some(applied) = applied {
        response
            .headers_mut()
            .insert("preference-applied", HeaderValue::from_static(applied));
    }
    Ok(response)
}

/// The `searchset` Bundle for one page.
fn searchset(
    base: &str,
    query: &SearchQuery,
    page: SearchPage,
    included: &[StoredResource],
) -> Result<Value, ApiError> {
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
        let mut resource = stored_json(stored)?;
        if let Some(elements) = &query.elements {
            subset(&mut resource, query.resource_type, elements);
        }
        entries.push(json!({
            "fullUrl": format!("{type_url}/{}", stored.id),
            "resource": resource,
            "search": {"mode": "match"},
        }));
    }
    for stored in included {
        entries.push(json!({
            "fullUrl": format!("{base}/{}/{}", stored.resource_type, stored.id),
            "resource": stored_json(stored)?,
            "search": {"mode": "include"},
        }));
    }
    let mut notes = query.warnings.clone();
    if page.total_estimated {
        // FHIR's Bundle.total has no flag of its own for an estimate: say so here.
        notes.push(Issue::information(
            "search-total-estimated",
            "Bundle.total is an estimate (_total=estimate): the index rows matching the search parameter's values, never fewer than the matches; a resource with several matching values counts once for each. Ask _total=accurate for the exact count",
        ));
    }
    if !notes.is_empty() {
        entries.push(json!({
            "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            "resource": OperationOutcome::new(notes).to_json(None),
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

/// `_elements`: only the named top-level elements, with `resourceType`, `id`,
/// `meta` and the type's mandatory elements, and `meta.tag` SUBSETTED, as
/// FHIR requires of a resource that is not whole.
fn subset(resource: &mut Value, resource_type: ResourceType, elements: &[String]) {
    let Some(object) = resource.as_object_mut() else {
        return;
    };
    let mandatory = crate::search::params::mandatory_elements(resource_type);
    object.retain(|name, _| {
        matches!(name.as_str(), "resourceType" | "id" | "meta")
            || mandatory.contains(&name.as_str())
            || elements.iter().any(|e| e == name)
    });
    let meta = object
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(meta) = meta.as_object_mut() {
        let tags = meta
            .entry("tag")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(tags) = tags.as_array_mut() {
            tags.push(json!({
                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                "code": "SUBSETTED",
                "display": "subsetted",
            }));
        }
    }
}

/// The resources `_include` and `_revinclude` add to a page: each once, and
/// none that is already a match.
async fn included(
    state: &AppState,
    query: &SearchQuery,
    page: &SearchPage,
    visibility: &Visibility,
) -> Result<Vec<StoredResource>, ApiError> {
    let mut out: Vec<StoredResource> = Vec::new();
    if page.resources.is_empty() {
        return Ok(out);
    }
    let mut seen: HashSet<String> = page
        .resources
        .iter()
        .map(|r| format!("{}/{}", r.resource_type, r.id))
        .collect();
    for include in &query.includes {
        let mut targets = Vec::new();
        for stored in &page.resources {
            let resource = stored_json(stored)?;
            for entry in index_entries(query.resource_type, &resource) {
                let IndexValue::Reference(reference) = entry.value else {
                    continue;
                };
                if entry.param != include.param {
                    continue;
                }
                let (Some(target_type), Some(id)) = (reference.target_type, reference.target_id)
                else {
                    continue;
                };
                if include.targets.contains(&target_type.as_str())
                    && let Ok(id) = FhirId::parse(&id)
                    && seen.insert(format!("{target_type}/{id}"))
                {
                    targets.push((target_type, id));
                }
            }
        }
        for (target_type, id) in targets {
            if let ReadOutcome::Found(stored) =
                state.store.read(target_type, &id, visibility).await?
            {
                out.push(stored);
            }
        }
    }
    for revinclude in &query.revincludes {
        let source = ResourceType::parse(revinclude.source)
            .map_err(|e| ApiError::internal("reading the _revinclude table", e))?;
        let references: Vec<String> = page
            .resources
            .iter()
            .map(|r| format!("{}/{}", r.resource_type, r.id))
            .collect();
        // One search per chunk of matches, within the limit on a parameter's values.
        for chunk in references.chunks(crate::search::MAX_VALUES) {
            let raw = form_urlencoded::Serializer::new(String::new())
                .append_pair(revinclude.param, &chunk.join(","))
                .append_pair("_count", &crate::search::MAX_COUNT.to_string())
                .append_pair("_total", "none")
                .finish();
            let found = SearchQuery::parse(source, &raw)
                .map_err(|_| ApiError::internal("building a _revinclude search", "refused"))?;
            let referring = state.store.search(&found, visibility).await?;
            for stored in referring.resources {
                if seen.insert(format!("{}/{}", stored.resource_type, stored.id)) {
                    out.push(stored);
                }
            }
        }
    }
    Ok(out)
}

/// `GET /fhir/{type}/_history`: type-level history is not served (405), and
/// says what to use instead. Every version of every resource of a type is
/// every practice's data, and until reads are scoped to the caller's
/// practices it cannot be answered safely; a client that wants what changed
/// searches with `_lastUpdated`, or reads one resource's history.
pub async fn history_type(
    access: Access,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(type_name) = path?;
    let resource_type = supported(&type_name, Interaction::HistoryInstance)?;
    require_scope(&access, Scope::History, resource_type.as_str())?;
    Err(ApiError::MethodNotAllowed(Issue::error(
        IssueType::NotSupported,
        "history-type-not-supported",
        format!(
            "Type-level history (GET /fhir/{resource_type}/_history) is not supported: it would hold every practice's data. Read one resource's versions with GET /fhir/{resource_type}/{{id}}/_history, or find what changed with GET /fhir/{resource_type}?_lastUpdated=gt{{instant}}"
        ),
    )))
}

/// `GET /fhir/{type}/{id}/_history`: every version, newest first.
pub async fn history_instance(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<(String, String)>, PathRejection>,
    format: ResponseFormat,
    base: FhirBase,
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
        .history(
            resource_type,
            &id,
            history.count,
            history.before,
            &access.visibility(),
        )
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

    let resource_url = format!("{}/{resource_type}/{id}", base.as_str());
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
