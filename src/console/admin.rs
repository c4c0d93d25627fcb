//! The administrators' console views beyond deliveries: the endpoint and client
//! registries as loaded (`/console/registries`), the audit (`/console/audit`: find a
//! referral's trail by its id, its business identifier or a request id; search by who
//! acted over a time window, a page at a time), one referral's audit trail
//! (`/console/referrals/{id}/audit`, paged), and "retry all for this practice"
//! (`POST /console/deliveries/practices/{ods}/retry`).
//!
//! Invariants: each is refused on the server to every role but an administrator's
//! (`Access::staff_may`), whatever the page showed; the registries page shows what
//! the registries say about each entry, never a secret, key material or a file path
//! (a base URL without user information, query or fragment); the audit pages show audit
//! rows (when, who, what, ids, outcome, request id) and a referral's ids, sender and
//! date received, never the person or their care (an administrator may not open a
//! referral); each audit page is itself audited (`api::audit` writes the row), naming
//! the referrals it showed (`note_referral`), so a view of the audit is in the trail.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use super::pages::layout;
use super::time::date_time;
use super::working_days;
use super::{ConsoleError, Result, checked_form, html as page, require, see_other};
use crate::api::AppState;
use crate::api::middleware::RequestContext;
use crate::fhir::identifiers::OdsCode;
use crate::fhir::{FhirId, Instant};
use crate::identity::{Access, Authenticator, ConsoleSession, StaffAction};
use crate::store::referrals::ReferralHandle;
use crate::store::{AuditEventRow, AuditFilter, AuditOutcome, AuditPage};

/// The most audit rows one trail page shows (the oldest first; the next page resumes
/// after the last).
const TRAIL: u32 = 500;

/// A base URL as shown: scheme, host, port and path only (user information, a query
/// or a fragment could carry a credential).
fn shown_url(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// `GET /console/registries` (administrators): the GP endpoints Sprig delivers to and
/// the clients that may call it, as loaded now.
pub(super) async fn registries(
    State(state): State<AppState>,
    access: Access,
    Extension(session): Extension<ConsoleSession>,
    Extension(authenticator): Extension<Arc<Authenticator>>,
) -> Result<Response> {
    require(&access, StaffAction::Registries)?;
    let endpoints = state.endpoints.current();
    let mut endpoint_rows: Vec<[String; 4]> = endpoints
        .iter()
        .map(|e| {
            [
                e.ods_code.clone(),
                shown_url(&e.base_url),
                e.mode.as_str().to_owned(),
                e.auth_kind().to_owned(),
            ]
        })
        .collect();
    endpoint_rows.sort();
    let clients = authenticator.clients().current();
    let client_rows: Vec<ClientRow> = clients
        .iter()
        .map(|c| ClientRow {
            client_id: c.client_id.clone(),
            ods_codes: c
                .ods_codes
                .iter()
                .map(|o| o.as_str().to_owned())
                .collect::<Vec<_>>()
                .join(", "),
            scopes: c.scopes.to_string(),
            enabled: c.enabled,
            trusted_proxy: c.trusted_proxy,
            auth: match (
                c.has_keys(),
                c.certificate_subject.is_some() || c.certificate_san.is_some(),
            ) {
                (true, true) => "signed assertions (public keys) and a TLS certificate",
                (true, false) => "signed assertions (public keys)",
                (false, true) => "a TLS certificate",
                (false, false) => "none configured",
            },
        })
        .collect();
    Ok(page(
        StatusCode::OK,
        registries_page(&session, &endpoint_rows, &client_rows),
    ))
}

/// One client as the registries page shows it.
struct ClientRow {
    client_id: String,
    ods_codes: String,
    scopes: String,
    enabled: bool,
    trusted_proxy: bool,
    auth: &'static str,
}

fn yes_no(value: bool) -> &'static str {
    if value { "Yes" } else { "No" }
}

fn registries_page(
    session: &ConsoleSession,
    endpoints: &[[String; 4]],
    clients: &[ClientRow],
) -> Markup {
    layout(
        "Registries",
        Some(session),
        html! {
            h1 { "Registries" }
            p { "As loaded now. Secrets, keys and file locations are not shown." }
            h2 { "GP practice endpoints (" (endpoints.len()) ")" }
            @if endpoints.is_empty() {
                p { "No endpoint is registered: updates wait for the practices to fetch them." }
            } @else {
                table class="nhsuk-table" {
                    caption class="nhsuk-table__caption nhsuk-u-visually-hidden" { "Endpoints by ODS code" }
                    thead { tr {
                        th scope="col" { "ODS code" } th scope="col" { "Base URL" }
                        th scope="col" { "Mode" } th scope="col" { "Authentication" }
                    } }
                    tbody {
                        @for [ods, url, mode, auth] in endpoints {
                            tr { td { (ods) } td { (url) } td { (mode) } td { (auth) } }
                        }
                    }
                }
            }
            h2 { "Clients (" (clients.len()) ")" }
            @if clients.is_empty() {
                p { "No client is registered." }
            } @else {
                table class="nhsuk-table" {
                    caption class="nhsuk-table__caption nhsuk-u-visually-hidden" { "Clients by id" }
                    thead { tr {
                        th scope="col" { "Client" } th scope="col" { "ODS codes" }
                        th scope="col" { "Scopes" } th scope="col" { "Enabled" }
                        th scope="col" { "Trusted proxy" } th scope="col" { "Authenticates with" }
                    } }
                    tbody {
                        @for c in clients {
                            tr {
                                td { (c.client_id) } td { (c.ods_codes) } td { (c.scopes) }
                                td { (yes_no(c.enabled)) } td { (yes_no(c.trusted_proxy)) } td { (c.auth) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The trail page's query: resume after this audit row (`seq`).
#[derive(Debug, Default, Deserialize)]
pub struct TrailQuery {
    after: Option<i64>,
}

/// `GET /console/referrals/{id}/audit` (administrators): who did what to the referral,
/// when, and what came of it, from the audit store, oldest first, `TRAIL` rows a page.
pub(super) async fn audit_trail(
    State(state): State<AppState>,
    access: Access,
    Extension(session): Extension<ConsoleSession>,
    context: RequestContext,
    Path(id): Path<String>,
    query: std::result::Result<Query<TrailQuery>, QueryRejection>,
) -> Result<Response> {
    require(&access, StaffAction::Audit)?;
    let after = query
        .map_err(|_| ConsoleError::BadRequest("That is not a page of this trail".into()))?
        .0
        .after;
    let not_found = || ConsoleError::NotFound("There is no such referral".into());
    let fhir_id = FhirId::parse(&id).map_err(|_| not_found())?;
    state
        .store
        .referral_assignee(&id)
        .await?
        .ok_or_else(not_found)?;
    context.audit.note_referral(&id);
    let mut rows = state
        .store
        .audit_events(
            &AuditFilter {
                referral: Some(fhir_id),
                ..AuditFilter::default()
            },
            AuditPage {
                after,
                limit: TRAIL + 1,
            },
        )
        .await?;
    let next = more_after(&mut rows, TRAIL);
    tracing::info!(referral_id = %id, count = rows.len(), "console: audit trail shown");
    Ok(page(
        StatusCode::OK,
        audit_page(&session, &id, &rows, after.is_some(), next),
    ))
}

/// Cuts `rows` (read with one more than a page) to `limit`: the `seq` to resume after
/// when there was more.
fn more_after(rows: &mut Vec<AuditEventRow>, limit: u32) -> Option<i64> {
    if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.seq)
    } else {
        None
    }
}

fn outcome_words(outcome: AuditOutcome) -> &'static str {
    match outcome {
        AuditOutcome::Success => "Succeeded",
        AuditOutcome::MinorFailure => "Refused",
        AuditOutcome::SeriousFailure => "Failed",
        AuditOutcome::MajorFailure => "Failed (service unavailable)",
    }
}

/// The referrals an audit row is about: those its answer held, and the
/// ServiceRequest it acted on.
fn referrals_of(record: &crate::store::AuditRecord) -> Vec<&str> {
    let mut ids: Vec<&str> = record.referral_ids.iter().map(String::as_str).collect();
    if record.resource_type.as_deref() == Some("ServiceRequest")
        && let Some(id) = record.resource_id.as_deref()
        && !ids.contains(&id)
    {
        ids.push(id);
    }
    ids
}

/// Audit rows as a table: when, who, what, (the referrals, linked to their trails,) the
/// outcome and the request id. Ids and names of callers only: an audit row holds no
/// patient data, and nothing here reads any.
fn audit_table(caption: &str, rows: &[AuditEventRow], with_referrals: bool) -> Markup {
    html! {
        table class="nhsuk-table" {
            caption class="nhsuk-table__caption nhsuk-u-visually-hidden" { (caption) }
            thead { tr {
                th scope="col" { "When" } th scope="col" { "Who" }
                th scope="col" { "What" }
                @if with_referrals { th scope="col" { "Referrals" } }
                th scope="col" { "Outcome" } th scope="col" { "Request id" }
            } }
            tbody {
                @for row in rows {
                    @let r = &row.record;
                    tr {
                        td { (date_time(&r.recorded_at.to_fhir())) }
                        td {
                            @if let Some(who) = &r.staff_username {
                                (who) @if let Some(role) = &r.staff_role { " (" (role) ")" }
                            } @else if let Some(client) = &r.client_id {
                                "Client " (client)
                                @if let Some(ods) = &r.ods_code { " for " (ods) }
                            } @else {
                                "Unauthenticated"
                            }
                            @if let Some(proxy) = &r.proxy_id { " via " (proxy) }
                        }
                        td {
                            (r.interaction)
                            @if let Some(t) = &r.resource_type { " " (t) @if let Some(rid) = &r.resource_id { "/" (rid) } }
                        }
                        @if with_referrals {
                            td {
                                @for (n, id) in referrals_of(r).into_iter().enumerate() {
                                    @if n > 0 { ", " }
                                    a href={"/console/referrals/" (id) "/audit"} { (id) }
                                }
                            }
                        }
                        td { (outcome_words(r.outcome)) " (" (r.status) ")" }
                        td { (r.request_id.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    }
}

fn next_page_link(href: &str) -> Markup {
    html! {
        nav class="nhsuk-pagination" role="navigation" aria-label="Pagination" {
            ul class="nhsuk-list nhsuk-pagination__list" {
                li class="nhsuk-pagination-item--next" {
                    a class="nhsuk-pagination__link nhsuk-pagination__link--next" href=(href) {
                        span class="nhsuk-pagination__title" { "Next page" }
                    }
                }
            }
        }
    }
}

fn audit_page(
    session: &ConsoleSession,
    id: &str,
    rows: &[AuditEventRow],
    resumed: bool,
    next: Option<i64>,
) -> Markup {
    layout(
        "Audit trail",
        Some(session),
        html! {
            span class="nhsuk-caption-l" { "Referral " (id) }
            h1 { "Audit trail" }
            p { "Every request that read or changed this referral, oldest first"
                @if resumed { " (continued)" }
                @if next.is_some() { "; " (TRAIL) " a page" } "." }
            (audit_table("Audit events, oldest first", rows, false))
            @if let Some(after) = next {
                (next_page_link(&format!("/console/referrals/{id}/audit?after={after}")))
            }
            p { a href="/console/audit" { "Search the audit" } }
        },
    )
}

/// The most audit rows one page of a search shows.
const SEARCH_PAGE: u32 = 100;

/// The most referrals a look-up by id or business identifier lists.
const FOUND: u32 = 50;

/// The audit page's query: a look-up (`find`: a referral id, a business identifier's
/// value or a request id), or a search by who over a time window (`who`, `from`, `to`
/// as UK dates, inclusive) resumed after a row (`after`).
#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    find: Option<String>,
    who: Option<String>,
    from: Option<String>,
    to: Option<String>,
    after: Option<i64>,
}

/// What the audit page shows under its forms.
#[derive(Debug, Default)]
struct AuditSearch {
    /// The look-up's text, and what it found: referrals, and a request's rows.
    find: Option<(String, Vec<ReferralHandle>, Vec<AuditEventRow>)>,
    /// The search by who: its rows, and the row to resume after for the next page.
    by_who: Option<(Vec<AuditEventRow>, Option<i64>)>,
    /// The fields as given, for the forms.
    who: String,
    from: String,
    to: String,
    /// (field, message) of each refused field.
    errors: Vec<(String, String)>,
}

fn given(text: Option<&str>) -> Option<&str> {
    text.map(str::trim).filter(|t| !t.is_empty())
}

/// `GET /console/audit` (administrators): find a referral's audit trail by its id, its
/// business identifier or a request id, or search the audit by who acted over a time
/// window, a page at a time. Ids, callers and outcomes only, never the person or their
/// care; each look-up and search is itself audited, with the referrals it showed.
pub(super) async fn audit_search(
    State(state): State<AppState>,
    access: Access,
    Extension(session): Extension<ConsoleSession>,
    context: RequestContext,
    query: std::result::Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response> {
    require(&access, StaffAction::Audit)?;
    let query = query
        .map_err(|_| ConsoleError::BadRequest("The search could not be read".into()))?
        .0;
    let mut search = AuditSearch {
        who: query.who.clone().unwrap_or_default(),
        from: query.from.clone().unwrap_or_default(),
        to: query.to.clone().unwrap_or_default(),
        ..AuditSearch::default()
    };
    if let Some(text) = given(query.find.as_deref()) {
        if text.chars().count() > 200 {
            search.errors.push((
                "find".into(),
                "Enter a referral id, business identifier or request id of at most 200 characters"
                    .into(),
            ));
        } else {
            let (handles, request_rows) = look_up(&state, text).await?;
            for handle in &handles {
                context.audit.note_referral(&handle.id);
            }
            tracing::info!(
                found = handles.len(),
                requests = request_rows.len(),
                "console: audit look-up"
            );
            search.find = Some((text.to_owned(), handles, request_rows));
        }
    }
    let window = given(query.from.as_deref()).is_some() || given(query.to.as_deref()).is_some();
    match given(query.who.as_deref()) {
        None if window => search.errors.push((
            "who".into(),
            "Enter who to search for: a staff username or a client id".into(),
        )),
        None => {}
        Some(who) => {
            let bound = |field: &str,
                         text: Option<&str>,
                         upper: bool,
                         errors: &mut Vec<(String, String)>| {
                let text = given(text)?;
                match working_days::parse_date(text) {
                    Some(date) => {
                        let (start, end) = working_days::day_bounds(date);
                        Instant::parse(if upper { &end } else { &start }).ok()
                    }
                    None => {
                        errors.push((
                            field.to_owned(),
                            "Enter a date as year-month-day, like 2026-12-01".into(),
                        ));
                        None
                    }
                }
            };
            let since = bound("from", query.from.as_deref(), false, &mut search.errors);
            let before = bound("to", query.to.as_deref(), true, &mut search.errors);
            if let (Some(since), Some(before)) = (since, before)
                && since.to_fhir() >= before.to_fhir()
            {
                search.errors.push((
                    "to".into(),
                    "The end date must be the same as or after the start date".into(),
                ));
            }
            if search.errors.is_empty() {
                let mut rows = state
                    .store
                    .audit_events(
                        &AuditFilter {
                            agent: Some(who.to_owned()),
                            since,
                            before,
                            ..AuditFilter::default()
                        },
                        AuditPage {
                            after: query.after,
                            limit: SEARCH_PAGE + 1,
                        },
                    )
                    .await?;
                let next = more_after(&mut rows, SEARCH_PAGE);
                for row in &rows {
                    for id in referrals_of(&row.record) {
                        context.audit.note_referral(id);
                    }
                }
                tracing::info!(count = rows.len(), "console: audit searched by who");
                search.by_who = Some((rows, next));
            }
        }
    }
    let status = if search.errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    Ok(page(status, audit_search_page(&session, &search)))
}

/// The referrals `text` names (as a referral id or a business identifier's value), and
/// the audit rows of the request with that id with the referrals they were about.
async fn look_up(
    state: &AppState,
    text: &str,
) -> Result<(Vec<ReferralHandle>, Vec<AuditEventRow>)> {
    let mut handles = state.store.referral_handles(text, FOUND).await?;
    let request_rows = state
        .store
        .audit_events(
            &AuditFilter {
                request_id: Some(text.to_owned()),
                ..AuditFilter::default()
            },
            AuditPage {
                after: None,
                limit: SEARCH_PAGE,
            },
        )
        .await?;
    let mut named: Vec<String> = Vec::new();
    for row in &request_rows {
        for id in referrals_of(&row.record) {
            if !named.iter().any(|n| n == id) {
                named.push(id.to_owned());
            }
        }
    }
    for id in named {
        if handles.len() >= FOUND as usize {
            break;
        }
        if handles.iter().any(|h| h.id == id) {
            continue;
        }
        // Its id only (an erased referral is named by the rows but held no more).
        if let Some(handle) = state
            .store
            .referral_handles(&id, FOUND)
            .await?
            .into_iter()
            .find(|h| h.id == id)
        {
            handles.push(handle);
        }
    }
    Ok((handles, request_rows))
}

fn text_field(
    id: &str,
    label: &str,
    hint: &str,
    value: &str,
    kind: &str,
    errors: &[(String, String)],
) -> Markup {
    let error = errors.iter().find(|(f, _)| f == id).map(|(_, m)| m);
    let described = if error.is_some() {
        format!("{id}-hint {id}-error")
    } else {
        format!("{id}-hint")
    };
    html! {
        div class={"nhsuk-form-group" @if error.is_some() { " nhsuk-form-group--error" }} {
            label class="nhsuk-label" for=(id) { (label) }
            div class="nhsuk-hint" id={(id) "-hint"} { (hint) }
            @if let Some(m) = error {
                span class="nhsuk-error-message" id={(id) "-error"} { span class="nhsuk-u-visually-hidden" { "Error:" } " " (m) }
            }
            input class={"nhsuk-input" @if error.is_some() { " nhsuk-input--error" }} id=(id) name=(id) type=(kind) spellcheck="false" aria-describedby=(described) value=(value);
        }
    }
}

fn audit_search_page(session: &ConsoleSession, search: &AuditSearch) -> Markup {
    let find_text = search.find.as_ref().map_or("", |(t, _, _)| t.as_str());
    layout(
        "Audit",
        Some(session),
        html! {
            (super::pages::error_summary(&search.errors))
            h1 { "Audit" }
            p { "Who read or changed what, and when: ids, callers and outcomes, not the people referred or their care." }
            h2 { "Find a referral's audit trail" }
            form method="get" action="/console/audit" role="search" {
                (text_field("find", "Referral id, business identifier or request id",
                    "The referral's id in Sprig, the identifier the GP system gave it, or the X-Request-ID of a request",
                    find_text, "search", &search.errors))
                button class="nhsuk-button nhsuk-button--secondary" type="submit" { "Find" }
            }
            @if let Some((text, handles, request_rows)) = &search.find {
                h3 { "Referrals for \u{201c}" (text) "\u{201d}" }
                @if handles.is_empty() {
                    p { "No referral has that id or business identifier, and no request with that id was about one." }
                } @else {
                    table class="nhsuk-table" {
                        caption class="nhsuk-table__caption nhsuk-u-visually-hidden" { "Referrals found, oldest first" }
                        thead { tr {
                            th scope="col" { "Referral" } th scope="col" { "Business identifier" }
                            th scope="col" { "Practice" } th scope="col" { "Received" }
                        } }
                        tbody {
                            @for h in handles {
                                tr {
                                    td { a href={"/console/referrals/" (h.id) "/audit"} { "Audit trail of " (h.id) } }
                                    td { (h.identifier_value) " (" (h.identifier_system) ")" }
                                    td { (h.practice_ods_code.as_deref().unwrap_or("None")) }
                                    td { (date_time(&h.received_at)) }
                                }
                            }
                        }
                    }
                }
                @if !request_rows.is_empty() {
                    h3 { "Request " (text) }
                    (audit_table("The request's audit rows", request_rows, true))
                }
            }
            h2 { "Search by who" }
            form method="get" action="/console/audit" role="search" {
                (text_field("who", "Who", "A staff person's username or a client's id, exactly", &search.who, "text", &search.errors))
                div class="nhsuk-grid-row" {
                    div class="nhsuk-grid-column-one-half" {
                        (text_field("from", "From (UK date)", "For example, 2026-12-01", &search.from, "date", &search.errors))
                    }
                    div class="nhsuk-grid-column-one-half" {
                        (text_field("to", "To (UK date, inclusive)", "For example, 2026-12-05", &search.to, "date", &search.errors))
                    }
                }
                button class="nhsuk-button nhsuk-button--secondary" type="submit" { "Search" }
            }
            @if let Some((rows, next)) = &search.by_who {
                h3 { "What " (search.who.trim()) " did" }
                @if rows.is_empty() {
                    p { "Nothing in that window." }
                } @else {
                    (audit_table("Audit events, oldest first", rows, true))
                }
                @if let Some(after) = next {
                    (next_page_link(&format!(
                        "/console/audit?who={}&from={}&to={}&after={after}",
                        form_encode(search.who.trim()),
                        form_encode(search.from.trim()),
                        form_encode(search.to.trim())
                    )))
                }
            }
        },
    )
}

fn form_encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// `POST /console/deliveries/practices/{ods}/retry` (administrators): every dead letter
/// for the practice back in the queue, as `POST /api/endpoints/{ods}/retry` does
/// (`Store::retry_dead_for`).
pub(super) async fn retry_practice(
    State(state): State<AppState>,
    access: Access,
    Extension(session): Extension<ConsoleSession>,
    Path(ods): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    checked_form(&session, &headers, &body)?;
    require(&access, StaffAction::RetryDelivery)?;
    let ods = OdsCode::parse(&ods)
        .map_err(|_| ConsoleError::BadRequest("That is not a practice's ODS code".into()))?;
    let retried = state.store.retry_dead_for(ods.as_str()).await?;
    tracing::info!(destination = %ods.as_str(), retried, "console: dead letters put back in the queue");
    Ok(see_other(&format!("/console/deliveries?retried={retried}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::StaffRole;

    #[test]
    fn registries_show_no_credentials_and_escape_what_they_show() {
        let url =
            reqwest::Url::parse("https://sprig:s3cret@gp.example/fhir/?token=abc#x").expect("url");
        assert_eq!(shown_url(&url), "https://gp.example/fhir/");
        let session = ConsoleSession {
            username: "ada".into(),
            display_name: "Ada".into(),
            role: StaffRole::Administrator,
            csrf_token: "t".into(),
            token_hash: "h".into(),
        };
        let page = registries_page(
            &session,
            &[[
                "K83999".into(),
                shown_url(&url),
                "rest".into(),
                "bearer".into(),
            ]],
            &[ClientRow {
                client_id: "gp-<a>".into(),
                ods_codes: "A81001, A81002".into(),
                scopes: "system/Task.rs".into(),
                enabled: false,
                trusted_proxy: true,
                auth: "signed assertions (public keys)",
            }],
        )
        .into_string();
        assert!(
            !page.contains("s3cret") && !page.contains("token=abc"),
            "{page}"
        );
        assert!(page.contains("<td>gp-&lt;a&gt;</td><td>A81001, A81002</td><td>system/Task.rs</td><td>No</td><td>Yes</td>"), "{page}");
    }
}
