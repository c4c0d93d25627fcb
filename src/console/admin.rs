//! The administrators' console views beyond deliveries: the endpoint and client
//! registries as loaded (`/console/registries`), one referral's audit trail
//! (`/console/referrals/{id}/audit`), and "retry all for this practice"
//! (`POST /console/deliveries/practices/{ods}/retry`).
//!
//! Invariants: each is refused on the server to every role but an administrator's
//! (`Access::staff_may`), whatever the page showed; the registries page shows what
//! the registries say about each entry, never a secret, key material or a file path
//! (a base URL without user information, query or fragment); the audit page is itself
//! audited as a view of the referral (`api::audit` writes the row, `note_referral`).

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{Markup, html};

use super::pages::layout;
use super::time::date_time;
use super::{ConsoleError, Result, checked_form, html as page, require, see_other};
use crate::api::AppState;
use crate::api::middleware::RequestContext;
use crate::fhir::FhirId;
use crate::fhir::identifiers::OdsCode;
use crate::identity::{Access, Authenticator, ConsoleSession, StaffAction};
use crate::store::{AuditEventRow, AuditFilter, AuditOutcome, AuditPage};

/// The most audit rows one trail page shows (the oldest first).
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

/// `GET /console/referrals/{id}/audit` (administrators): who did what to the referral,
/// when, and what came of it, from the audit store, oldest first.
pub(super) async fn audit_trail(
    State(state): State<AppState>,
    access: Access,
    Extension(session): Extension<ConsoleSession>,
    context: RequestContext,
    Path(id): Path<String>,
) -> Result<Response> {
    require(&access, StaffAction::Audit)?;
    let not_found = || ConsoleError::NotFound("There is no such referral".into());
    let fhir_id = FhirId::parse(&id).map_err(|_| not_found())?;
    state
        .store
        .referral_assignee(&id)
        .await?
        .ok_or_else(not_found)?;
    context.audit.note_referral(&id);
    let rows = state
        .store
        .audit_events(
            &AuditFilter {
                referral: Some(fhir_id),
                ..AuditFilter::default()
            },
            AuditPage {
                after: None,
                limit: TRAIL,
            },
        )
        .await?;
    tracing::info!(referral_id = %id, count = rows.len(), "console: audit trail shown");
    Ok(page(StatusCode::OK, audit_page(&session, &id, &rows)))
}

fn outcome_words(outcome: AuditOutcome) -> &'static str {
    match outcome {
        AuditOutcome::Success => "Succeeded",
        AuditOutcome::MinorFailure => "Refused",
        AuditOutcome::SeriousFailure => "Failed",
        AuditOutcome::MajorFailure => "Failed (service unavailable)",
    }
}

fn audit_page(session: &ConsoleSession, id: &str, rows: &[AuditEventRow]) -> Markup {
    layout(
        "Audit trail",
        Some(session),
        html! {
            span class="nhsuk-caption-l" { "Referral " (id) }
            h1 { "Audit trail" }
            p { "Every request that read or changed this referral, oldest first"
                @if rows.len() == TRAIL as usize { " (the first " (TRAIL) " only)" } "." }
            table class="nhsuk-table" {
                caption class="nhsuk-table__caption nhsuk-u-visually-hidden" { "Audit events, oldest first" }
                thead { tr {
                    th scope="col" { "When" } th scope="col" { "Who" }
                    th scope="col" { "What" } th scope="col" { "Outcome" }
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
                            td { (outcome_words(r.outcome)) " (" (r.status) ")" }
                        }
                    }
                }
            }
            p { a href="/console/deliveries" { "Back to deliveries" } }
        },
    )
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
