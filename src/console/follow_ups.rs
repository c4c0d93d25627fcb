//! Follow-up outcome measurements in the console: the worklist's "follow-up due or
//! overdue" filter and the page "Follow-ups due this week" (`/console/follow-ups`).
//!
//! Invariants: what is due is computed exactly as `GET /api/follow-ups` computes it
//! (`api::outcomes::referral_follow_ups` over `Store::referral_facts`, the schedule in
//! `outcomes::schedule`, the week's rule `api::outcomes::due_in_week_of`): there is no
//! second copy of the schedule here; a link worker sees only the referrals assigned to
//! them, a service manager everyone's, grouped per link worker.

use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use time::Date;

use super::measures::Offered;
use super::pages::{layout, person_name, stage_tag};
use super::time::date;
use super::{Result, assignable_people, html as page, require};
use crate::api::AppState;
use crate::api::outcomes::{due_in_week_of, referral_follow_ups, uk_today};
use crate::identity::{Access, ConsoleSession, StaffAction, StaffRole};
use crate::outcomes::schedule::{self, FollowUp, State as FollowUpState};
use crate::referral::record::Referral;
use crate::store::referrals::{Assignee, ReferralFilter};

/// The most referrals one follow-up list holds (the earliest targets first): a bound
/// on the ids a list query binds.
const MOST: usize = 1000;

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
    wanted: impl Fn(&FollowUp) -> bool,
) -> Result<Vec<Due>> {
    let facts = state.store.referral_facts(None).await?;
    let mut out = Vec::new();
    for referral in &facts {
        for (measure, list) in referral_follow_ups(state, referral, today) {
            for follow_up in list.into_iter().filter(|f| wanted(f)) {
                out.push(Due {
                    referral_id: referral.id.clone(),
                    measure: measure.clone(),
                    follow_up,
                });
            }
        }
    }
    out.sort_by(|a, b| {
        a.follow_up
            .target
            .cmp(&b.follow_up.target)
            .then_with(|| a.referral_id.cmp(&b.referral_id))
    });
    Ok(out)
}

/// The referrals with a follow-up measurement due or overdue today (the worklist's
/// filter), at most `MOST`, earliest target first.
pub(super) async fn due_or_overdue_ids(state: &AppState) -> Result<Vec<String>> {
    let today = uk_today();
    let items = due(state, today, |f| {
        matches!(f.state, FollowUpState::Due | FollowUpState::Overdue)
    })
    .await?;
    Ok(distinct_ids(&items))
}

fn distinct_ids(items: &[Due]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for item in items {
        if !ids.contains(&item.referral_id) {
            ids.push(item.referral_id.clone());
        }
        if ids.len() == MOST {
            break;
        }
    }
    ids
}

/// `GET /console/follow-ups`: the follow-ups due this week (Monday to Sunday, UK),
/// each linked to its questionnaire. Link workers: their own; managers: everyone's,
/// per link worker.
pub(super) async fn follow_ups(
    State(state): State<AppState>,
    access: Access,
    Extension(session): Extension<ConsoleSession>,
) -> Result<Response> {
    require(&access, StaffAction::ViewWorklist)?;
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
    // Per link worker (by username; the unassigned last), each row a follow-up.
    let mut groups: BTreeMap<(bool, String), Vec<(&Referral, &Due)>> = BTreeMap::new();
    for item in &items {
        if let Some(r) = referrals.iter().find(|r| r.id == item.referral_id) {
            let key = match &r.assigned_to {
                Some(who) => (false, who.clone()),
                None => (true, String::new()),
            };
            groups.entry(key).or_default().push((r, item));
        }
    }
    let people = if session.role == StaffRole::LinkWorker {
        vec![(session.username.clone(), session.display_name.clone())]
    } else {
        assignable_people(&state).await?
    };
    let measures = super::measures::offered(&state.outcomes.catalogue);
    tracing::info!(count = items.len(), "console: follow-ups shown");
    Ok(page(
        StatusCode::OK,
        markup(&session, today, &groups, &people, &measures),
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

fn markup(
    session: &ConsoleSession,
    today: Date,
    groups: &Groups<'_>,
    people: &[(String, String)],
    measures: &[Offered],
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
        },
    )
}
