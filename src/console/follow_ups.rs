//! Follow-up outcome measurements in the console: the worklist's "follow-up due or
//! overdue" filter and the page "Follow-ups due this week" (`/console/follow-ups`).
//!
//! Invariants: what is due is computed exactly as `GET /api/follow-ups` computes it
//! (`api::outcomes::referral_follow_ups` over `Store::each_measured_referral_facts`, the schedule in
//! `outcomes::schedule`, the week's rule `api::outcomes::due_in_week_of`): there is no
//! second copy of the schedule here; a link worker sees only the referrals assigned to
//! them, a service manager everyone's, grouped per link worker.

use std::collections::{BTreeMap, HashMap};

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use time::Date;

use super::measures::Offered;
use super::pages::{layout, person_name, stage_tag};
use super::time::date;
use super::{ConsoleError, Result, assignable_people, html as page, require};
use crate::api::AppState;
use crate::api::outcomes::{due_in_week_of, referral_follow_ups, uk_today};
use crate::identity::{Access, ConsoleSession, StaffAction, StaffRole};
use crate::outcomes::schedule::{self, FollowUp, State as FollowUpState};
use crate::referral::record::Referral;
use crate::store::referrals::{Assignee, ReferralFilter};

/// The most follow-ups one page shows (the earliest targets first); the rest are on the
/// next pages. Every follow-up due is found and counted: the page bounds what is drawn,
/// not what is considered.
const PAGE: usize = 200;

/// One follow-up to do: which referral, which measure, and the follow-up.
#[derive(Debug, Clone)]
pub struct Due {
    /// The referral's id.
    pub referral_id: String,
    /// The measure's code.
    pub measure: String,
    /// The follow-up, its dates and state on the day asked about.
    pub follow_up: FollowUp,
}

/// Every follow-up `wanted` keeps on `today`, earliest target first, as `/api/follow-ups`
/// computes them.
pub(super) async fn due(
    state: &AppState,
    today: Date,
    wanted: impl Fn(&FollowUp) -> bool + Send + Sync,
) -> Result<Vec<Due>> {
    // Only a referral with a measurement has follow-ups; the others' rows are not read.
    let mut out = Vec::new();
    state
        .store
        .each_measured_referral_facts(|referral| {
            for (measure, list) in referral_follow_ups(state, referral, today) {
                for follow_up in list.into_iter().filter(|f| wanted(f)) {
                    out.push(Due {
                        referral_id: referral.id.clone(),
                        measure: measure.clone(),
                        follow_up,
                    });
                }
            }
        })
        .await?;
    out.sort_by(|a, b| {
        a.follow_up
            .target
            .cmp(&b.follow_up.target)
            .then_with(|| a.referral_id.cmp(&b.referral_id))
    });
    Ok(out)
}

/// The referrals with a follow-up measurement due or overdue today (the worklist's
/// filter), every one, earliest target first.
pub(super) async fn due_or_overdue_ids(state: &AppState) -> Result<Vec<String>> {
    let today = uk_today();
    let items = due(state, today, |f| {
        matches!(f.state, FollowUpState::Due | FollowUpState::Overdue)
    })
    .await?;
    Ok(distinct_ids(&items))
}

/// The referrals of `items`, each once, in the order first met.
fn distinct_ids(items: &[Due]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    items
        .iter()
        .filter(|item| seen.insert(item.referral_id.as_str()))
        .map(|item| item.referral_id.clone())
        .collect()
}

/// The follow-ups page's query: which page (counted from 1).
#[derive(Debug, Default, serde::Deserialize)]
pub struct FollowUpsQuery {
    page: Option<String>,
}

/// `GET /console/follow-ups`: the follow-ups due this week (Monday to Sunday, UK),
/// each linked to its questionnaire. Link workers: their own; managers: everyone's,
/// per link worker.
pub(super) async fn follow_ups(
    State(state): State<AppState>,
    access: Access,
    Extension(session): Extension<ConsoleSession>,
    query: std::result::Result<Query<FollowUpsQuery>, QueryRejection>,
) -> Result<Response> {
    require(&access, StaffAction::ViewWorklist)?;
    let page_number = match query.ok().and_then(|Query(q)| q.page) {
        None => 1,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| ConsoleError::BadRequest("That is not a page number".into()))?,
    };
    let today = uk_today();
    let items = due(&state, today, |f| due_in_week_of(f, today)).await?;
    let ids = distinct_ids(&items);
    let assignee = if session.role == StaffRole::LinkWorker {
        Assignee::Only(session.username.clone())
    } else {
        Assignee::Any
    };
    let referrals = if ids.is_empty() {
        Vec::new()
    } else {
        let limit = u32::try_from(ids.len()).unwrap_or(u32::MAX);
        state
            .store
            .list_referrals(&ReferralFilter {
                ids: Some(ids),
                assignee,
                limit,
                ..ReferralFilter::default()
            })
            .await?
    };
    // Per link worker (by username; the unassigned last), each row a follow-up; then
    // the asked page of that order.
    let by_id: HashMap<&str, &Referral> = referrals.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut rows: Vec<((bool, String), &Referral, &Due)> = items
        .iter()
        .filter_map(|item| {
            let r = *by_id.get(item.referral_id.as_str())?;
            let key = match &r.assigned_to {
                Some(who) => (false, who.clone()),
                None => (true, String::new()),
            };
            Some((key, r, item))
        })
        .collect();
    // Stable: within a link worker, still the earliest target first.
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let total = rows.len();
    let pages = total.div_ceil(PAGE).max(1);
    if page_number > pages {
        return Err(ConsoleError::NotFound(format!(
            "There are {pages} pages of follow-ups this week"
        )));
    }
    let mut groups: Groups<'_> = BTreeMap::new();
    for (key, r, item) in rows.into_iter().skip((page_number - 1) * PAGE).take(PAGE) {
        groups.entry(key).or_default().push((r, item));
    }
    let people = if session.role == StaffRole::LinkWorker {
        vec![(session.username.clone(), session.display_name.clone())]
    } else {
        assignable_people(&state).await?
    };
    let measures = super::measures::offered(&state.outcomes.catalogue);
    tracing::info!(
        count = total,
        page = page_number,
        "console: follow-ups shown"
    );
    let paging = Paging {
        page: page_number,
        pages,
        total,
    };
    Ok(page(
        StatusCode::OK,
        markup(&session, today, &groups, &people, &measures, paging),
    ))
}

fn state_tag(state: FollowUpState) -> Markup {
    let (colour, words) = match state {
        FollowUpState::Done => ("nhsuk-tag--green", "Done"),
        FollowUpState::Upcoming => ("nhsuk-tag--grey", "Upcoming"),
        FollowUpState::DueSoon => ("nhsuk-tag--blue", "Due soon"),
        FollowUpState::Due => ("nhsuk-tag--yellow", "Due"),
        FollowUpState::Overdue => ("nhsuk-tag--red", "Overdue"),
        FollowUpState::Missed => ("nhsuk-tag--orange", "Missed"),
    };
    html! { strong class={"nhsuk-tag " (colour)} { (words) } }
}

type Groups<'a> = BTreeMap<(bool, String), Vec<(&'a Referral, &'a Due)>>;

/// Which page of how many, of how many follow-ups in all.
#[derive(Debug, Clone, Copy)]
struct Paging {
    page: usize,
    pages: usize,
    total: usize,
}

fn markup(
    session: &ConsoleSession,
    today: Date,
    groups: &Groups<'_>,
    people: &[(String, String)],
    measures: &[Offered],
    paging: Paging,
) -> Markup {
    let (monday, sunday) = schedule::week_of(today);
    let measure_name = |code: &str| {
        measures
            .iter()
            .find(|m| m.code == code)
            .map_or_else(|| code.to_owned(), |m| m.name.clone())
    };
    let holder = |(unassigned, who): &(bool, String)| {
        if *unassigned {
            "Unassigned".to_owned()
        } else {
            people
                .iter()
                .find(|(u, _)| u == who)
                .map_or_else(|| who.clone(), |(u, n)| format!("{n} ({u})"))
        }
    };
    layout(
        "Follow-ups due this week",
        Some(session),
        html! {
            h1 { "Follow-ups due this week" }
            p {
                "Outcome measurements whose window is open in the week of "
                (date(&monday.to_string())) " to " (date(&sunday.to_string()))
                " and not yet recorded"
                @if session.role == StaffRole::LinkWorker { ", for the referrals assigned to you" }
                "."
            }
            @if groups.is_empty() {
                p { "None this week." }
            } @else {
                p {
                    (paging.total) " in all"
                    @if paging.pages > 1 { "; page " (paging.page) " of " (paging.pages) }
                    "."
                }
            }
            @for (key, rows) in groups {
                @let name = holder(key);
                h2 { (name) " (" (rows.len()) ")" }
                table class="nhsuk-table" {
                    caption class="nhsuk-table__caption nhsuk-u-visually-hidden" { "Follow-ups for " (name) ", earliest first" }
                    thead { tr {
                        th scope="col" { "Person" }
                        th scope="col" { "Measure" }
                        th scope="col" { "Target date" }
                        th scope="col" { "State" }
                        th scope="col" { "Record" }
                    } }
                    tbody {
                        @for (r, item) in rows {
                            @let f = &item.follow_up;
                            @let measure = measure_name(&item.measure);
                            tr {
                                td {
                                    a href={"/console/referrals/" (r.id)} { (person_name(r)) }
                                    " " (stage_tag(r.stage))
                                }
                                td { (measure) ", " (f.label) }
                                td { (date(&f.target.to_string())) }
                                td { (state_tag(f.state)) }
                                td {
                                    a href={"/console/referrals/" (r.id) "/outcomes?measure=" (item.measure)} {
                                        "Record " (measure)
                                        span class="nhsuk-u-visually-hidden" { " for " (person_name(r)) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if paging.pages > 1 {
                nav class="nhsuk-pagination" role="navigation" aria-label="Pagination" {
                    ul class="nhsuk-list nhsuk-pagination__list" {
                        @if paging.page > 1 {
                            li class="nhsuk-pagination-item--previous" {
                                a class="nhsuk-pagination__link nhsuk-pagination__link--prev" href={"/console/follow-ups?page=" (paging.page - 1)} {
                                    span class="nhsuk-pagination__title" { "Previous page" }
                                }
                            }
                        }
                        @if paging.page < paging.pages {
                            li class="nhsuk-pagination-item--next" {
                                a class="nhsuk-pagination__link nhsuk-pagination__link--next" href={"/console/follow-ups?page=" (paging.page + 1)} {
                                    span class="nhsuk-pagination__title" { "Next page" }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}
