//! Who can be given referrals (`/console/people`, administrators): every staff account
//! and every person who signed in through the identity provider, whether each can be
//! assigned referrals now, and how many open referrals each holds; a form to stop a
//! provider's person being assignable, or to make them assignable again
//! (`identity::staff::set_assignable`, as `sprig staff inactive|active` does).
//!
//! Invariants: refused on the server to every role but an administrator's
//! (`StaffAction::People`); nobody is deleted, so the audit's and the timelines'
//! usernames keep their names; a person made inactive keeps the referrals already
//! assigned to them, which managers see flagged on the worklist, the referral and the
//! caseloads, to reassign.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use super::pages::{csrf_field, layout, role_label};
use super::time::date_time;
use super::{ConsoleError, Result, checked_form, html as page, require, see_other, unix_now};
use crate::api::AppState;
use crate::fhir::Instant;
use crate::identity::staff::{self, AssignableError, Person, PersonSource};
use crate::identity::{Access, ConsoleSession, StaffAction};

/// The people page's query: whose assignability was just changed, and to what.
#[derive(Debug, Default, Deserialize)]
pub struct PeopleQuery {
    changed: Option<String>,
    assignable: Option<String>,
}

/// `GET /console/people` (administrators).
pub(super) async fn people(
    State(state): State<AppState>,
    access: Access,
    Extension(session): Extension<ConsoleSession>,
    query: std::result::Result<Query<PeopleQuery>, QueryRejection>,
) -> Result<Response> {
    require(&access, StaffAction::People)?;
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let (everyone, loads) = tokio::try_join!(
        async {
            staff::people(&state.store)
                .await
                .map_err(super::staff_error)
        },
        async { state.store.caseloads().await.map_err(ConsoleError::from) }
    )?;
    let open_of = |username: &str| {
        loads
            .iter()
            .find(|(who, _)| who.as_deref() == Some(username))
            .map_or(0, |(_, n)| *n)
    };
    let rows: Vec<(&Person, i64)> = everyone.iter().map(|p| (p, open_of(&p.username))).collect();
    // Referrals held by someone the console does not know at all (a username from an
    // import, or a provider's person from before migration 0012): also to reassign.
    let unknown: i64 = loads
        .iter()
        .filter(|(who, _)| {
            who.as_deref()
                .is_some_and(|w| !everyone.iter().any(|p| p.username == w))
        })
        .map(|(_, n)| n)
        .sum();
    let flash = query
        .changed
        .filter(|who| everyone.iter().any(|p| &p.username == who))
        .map(|who| (who, query.assignable.as_deref() == Some("yes")));
    tracing::info!(count = everyone.len(), "console: people shown");
    Ok(page(
        StatusCode::OK,
        markup(&session, &rows, unknown, flash.as_ref()),
    ))
}

/// `POST /console/people` (administrators): `username`, and `assignable` (`yes` or
/// `no`).
pub(super) async fn set_assignable(
    State(state): State<AppState>,
    access: Access,
    Extension(session): Extension<ConsoleSession>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let fields = checked_form(&session, &headers, &body)?;
    require(&access, StaffAction::People)?;
    let username = fields
        .get("username")
        .ok_or_else(|| ConsoleError::BadRequest("The form names no person".into()))?;
    let assignable = match fields.get("assignable") {
        Some("yes") => true,
        Some("no") => false,
        _ => {
            return Err(ConsoleError::BadRequest(
                "The form says neither to stop nor to restart assigning".into(),
            ));
        }
    };
    match staff::set_assignable(
        &state.store,
        username,
        assignable,
        &session.username,
        unix_now(),
    )
    .await
    {
        Ok(()) => {}
        Err(AssignableError::NotFound(_)) => {
            return Err(ConsoleError::NotFound(
                "No one of that username has signed in through the identity provider".into(),
            ));
        }
        Err(error @ AssignableError::HasAccount(_)) => {
            return Err(ConsoleError::Conflict(format!(
                "{error}. A staff account that should hold no referrals is disabled on the command line."
            )));
        }
        Err(AssignableError::Store(error)) => return Err(super::staff_error(error)),
    }
    let location = format!(
        "/console/people?changed={}&assignable={}",
        form_urlencoded::byte_serialize(username.as_bytes()).collect::<String>(),
        if assignable { "yes" } else { "no" }
    );
    Ok(see_other(&location))
}

fn unix_date_time(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .map(|t| date_time(&Instant::from_offset(t).to_fhir()))
        .unwrap_or_default()
}

/// Why a person cannot be assigned referrals, in words.
fn why_not(person: &Person) -> String {
    match (&person.source, person.role) {
        (PersonSource::Account { enabled: false }, _) => "No: the account is disabled".into(),
        (
            PersonSource::Provider {
                inactive: Some((since, by)),
                ..
            },
            _,
        ) => {
            format!("No: made inactive by {by}, {}", unix_date_time(*since))
        }
        _ => "No: the role holds no caseload".into(),
    }
}

fn markup(
    session: &ConsoleSession,
    rows: &[(&Person, i64)],
    unknown: i64,
    flash: Option<&(String, bool)>,
) -> Markup {
    layout(
        "People",
        Some(session),
        html! {
            @if let Some((who, assignable)) = flash {
                div class="nhsuk-inset-text" role="status" {
                    span class="nhsuk-u-visually-hidden" { "Information: " }
                    p {
                        @if *assignable { (who) " can be assigned referrals again." }
                        @else { (who) " can no longer be assigned referrals. Referrals already assigned to them stay so until a service manager reassigns them." }
                    }
                }
            }
            h1 { "People" }
            p {
                "Everyone who can sign in to the console or has done so, and whether service managers can assign referrals to them. "
                "Stopping a person being assignable keeps them in the audit and on the referrals they hold; service managers see those referrals marked "
                strong { "inactive" } " to reassign."
            }
            @if unknown > 0 {
                p { (unknown) " open referrals are assigned to usernames the console does not know." }
            }
            table class="nhsuk-table" {
                caption class="nhsuk-table__caption nhsuk-u-visually-hidden" { "People, by username" }
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "Username" } th scope="col" { "Role" }
                    th scope="col" { "Signs in with" } th scope="col" { "Assignable" }
                    th scope="col" { "Open referrals" } th scope="col" { "Change" }
                } }
                tbody {
                    @for (p, open) in rows {
                        tr {
                            td { (p.display_name) }
                            td { (p.username) }
                            td { (p.role.map_or("Unknown role", role_label)) }
                            td {
                                @match &p.source {
                                    PersonSource::Account { enabled: true } => "A Sprig staff account",
                                    PersonSource::Account { enabled: false } => "A Sprig staff account (disabled)",
                                    PersonSource::Provider { last_signed_in, .. } => {
                                        "The identity provider, last " (unix_date_time(*last_signed_in))
                                    }
                                }
                            }
                            td {
                                @if p.assignable { "Yes" } @else { (why_not(p)) }
                            }
                            td { (open) }
                            td {
                                @match &p.source {
                                    PersonSource::Provider { inactive, .. } => {
                                        form method="post" action="/console/people" {
                                            (csrf_field(session))
                                            input type="hidden" name="username" value=(p.username);
                                            @if inactive.is_some() {
                                                input type="hidden" name="assignable" value="yes";
                                                button class="nhsuk-button nhsuk-button--secondary nhsuk-u-margin-bottom-0" type="submit" {
                                                    "Make assignable"
                                                    span class="nhsuk-u-visually-hidden" { " " (p.username) " again" }
                                                }
                                            } @else {
                                                input type="hidden" name="assignable" value="no";
                                                button class="nhsuk-button nhsuk-button--warning nhsuk-u-margin-bottom-0" type="submit" {
                                                    "Stop assigning"
                                                    span class="nhsuk-u-visually-hidden" { " to " (p.username) }
                                                }
                                            }
                                        }
                                    }
                                    PersonSource::Account { enabled: true } => {
                                        "On the command line: "
                                        code { "sprig staff disable " (p.username) }
                                    }
                                    PersonSource::Account { enabled: false } => {}
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}
