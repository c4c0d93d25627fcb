//! The console's pages, as maud templates (checked when Sprig compiles; every
//! interpolation is HTML-escaped). Markup follows the NHS.UK frontend's components
//! (header, error summary, summary list, tables, radios, tags) so the vendored
//! stylesheet styles it and the patterns are the ones staff know.
//!
//! Invariants: every form posting to the console carries the session's CSRF token
//! (`csrf_field`); every error names its field and the summary links to it; status is
//! never shown by colour alone (tags carry words).

use maud::{DOCTYPE, Markup, html};

use super::assets::{CONSOLE_CSS_PATH, CSS_PATH, FAVICON_PATH};
use super::first_contact::ContactTimes;
use super::measures::{Offered, Questionnaire};
use super::time::{age, date, date_time};
use super::{FieldError, WorklistView};
use crate::identity::{ConsoleSession, StaffRole};
use crate::referral::record::{NoteSource, Referral, ReferralDetail};
use crate::referral::stage::Stage;
use crate::store::outbox::{DeliveryEntry, DestinationStats};

/// What was just done, shown at the top of the referral page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flash {
    /// Moved to this stage.
    Moved(Stage),
    /// This outcome was recorded.
    Outcome(String),
    /// A note was added.
    Noted,
    /// Assigned.
    Assigned,
}

/// What the person may do on a referral page.
#[derive(Debug, Clone, Copy)]
pub struct Permissions {
    /// Move it on, add notes, record outcomes.
    pub work: bool,
    /// Assign it.
    pub assign: bool,
    /// Read its audit trail (administrators).
    pub audit: bool,
}

/// Everything the referral page shows.
pub struct ReferralPage<'a> {
    /// Who is signed in.
    pub session: &'a ConsoleSession,
    /// The referral.
    pub detail: &'a ReferralDetail,
    /// What the GP practice has been sent.
    pub sent: &'a [DeliveryEntry],
    /// Who it can be assigned to (username, name), for managers.
    pub assignable: &'a [(String, String)],
    /// Stages whose change needs a reason.
    pub reason_required: &'a [Stage],
    /// What the person may do.
    pub may: Permissions,
    /// What was just done.
    pub flash: Option<Flash>,
    /// A form's error.
    pub error: Option<FieldError>,
    /// The outcome measures in force, in the order offered (`measures::offered`).
    pub measures: &'a [Offered],
    /// The milestones recorded (`super::milestones`).
    pub milestones: &'a [crate::referral::milestone::Milestone],
}

/// The flag on an assignee who can no longer be given referrals (made inactive, a
/// disabled account): their referrals wait for a manager to reassign them.
pub(super) fn inactive_tag() -> Markup {
    html! { strong class="nhsuk-tag nhsuk-tag--grey" { "Inactive" } }
}

/// A stage as people say it.
pub fn stage_label(stage: Stage) -> &'static str {
    match stage {
        Stage::Received => "Received",
        Stage::Accepted => "Accepted",
        Stage::Declined => "Declined",
        Stage::Contacted => "Contact made",
        Stage::UnableToContact => "Unable to contact",
        Stage::AssessmentDone => "Assessed",
        Stage::PlanAgreed => "Plan agreed",
        Stage::InSupport => "In support",
        Stage::Completed => "Completed",
        Stage::Withdrawn => "Withdrawn",
    }
}

pub(super) fn stage_tag(stage: Stage) -> Markup {
    let colour = match stage {
        Stage::Received => "nhsuk-tag--blue",
        Stage::Accepted | Stage::Contacted => "nhsuk-tag--aqua-green",
        Stage::AssessmentDone | Stage::PlanAgreed | Stage::InSupport => "nhsuk-tag--green",
        Stage::Completed => "nhsuk-tag--grey",
        Stage::Declined | Stage::UnableToContact | Stage::Withdrawn => "nhsuk-tag--orange",
    };
    html! { strong class={"nhsuk-tag " (colour)} { (stage_label(stage)) } }
}

pub(super) fn role_label(role: StaffRole) -> &'static str {
    match role {
        StaffRole::LinkWorker => "Link worker",
        StaffRole::ServiceManager => "Service manager",
        StaffRole::Administrator => "Administrator",
    }
}

/// `943 476 5919`.
fn nhs_number(number: &str) -> String {
    if number.len() == 10 && number.is_ascii() {
        format!("{} {} {}", &number[..3], &number[3..6], &number[6..])
    } else {
        number.to_owned()
    }
}

pub(super) fn person_name(referral: &Referral) -> String {
    let p = &referral.fields.patient;
    match (p.given_name.as_deref(), p.family_name.as_deref()) {
        (Some(g), Some(f)) => format!("{}, {g}", f.to_uppercase()),
        (None, Some(f)) => f.to_uppercase(),
        (Some(g), None) => g.to_owned(),
        (None, None) => "Name not given".to_owned(),
    }
}

pub(super) fn csrf_field(session: &ConsoleSession) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf_token); }
}

pub(super) fn layout(title: &str, session: Option<&ConsoleSession>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en-GB" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " \u{2013} Sprig console" }
                link rel="stylesheet" href=(CSS_PATH);
                link rel="stylesheet" href=(CONSOLE_CSS_PATH);
                @if session.is_some() { link rel="icon" href=(FAVICON_PATH) type="image/svg+xml"; }
            }
            body {
                a class="nhsuk-skip-link" href="#maincontent" { "Skip to main content" }
                header class="nhsuk-header" role="banner" {
                    div class="nhsuk-header__container nhsuk-width-container" {
                        div class="nhsuk-header__service" {
                            a class="nhsuk-header__service-logo" href="/console/referrals" {
                                span class="nhsuk-header__service-name" { "Sprig console" }
                            }
                        }
                        @if let Some(s) = session {
                            nav class="nhsuk-header__account" aria-label="Account" {
                                ul class="nhsuk-header__account-list" {
                                    li class="nhsuk-header__account-item" {
                                        (s.display_name) " (" (role_label(s.role)) ")"
                                    }
                                    li class="nhsuk-header__account-item" {
                                        form method="post" action="/console/sign-out" class="nhsuk-header__account-form" {
                                            (csrf_field(s))
                                            button class="nhsuk-header__account-button" type="submit" { "Sign out" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    @if let Some(s) = session {
                        nav class="nhsuk-header__navigation" aria-label="Menu" {
                            div class="nhsuk-header__navigation-container nhsuk-width-container" {
                                ul class="nhsuk-header__navigation-list" {
                                    li class="nhsuk-header__navigation-item" {
                                        a class="nhsuk-header__navigation-link" href="/console/referrals" { "Worklist" }
                                    }
                                    @if s.role != StaffRole::Administrator {
                                        li class="nhsuk-header__navigation-item" {
                                            a class="nhsuk-header__navigation-link" href="/console/follow-ups" { "Follow-ups" }
                                        }
                                    }
                                    @if s.role == StaffRole::ServiceManager {
                                        li class="nhsuk-header__navigation-item" {
                                            a class="nhsuk-header__navigation-link" href="/console/caseloads" { "Caseloads" }
                                        }
                                    }
                                    @if s.role == StaffRole::Administrator {
                                        li class="nhsuk-header__navigation-item" {
                                            a class="nhsuk-header__navigation-link" href="/console/deliveries" { "Deliveries" }
                                        }
                                        li class="nhsuk-header__navigation-item" {
                                            a class="nhsuk-header__navigation-link" href="/console/registries" { "Registries" }
                                        }
                                        li class="nhsuk-header__navigation-item" {
                                            a class="nhsuk-header__navigation-link" href="/console/people" { "People" }
                                        }
                                        li class="nhsuk-header__navigation-item" {
                                            a class="nhsuk-header__navigation-link" href="/console/audit" { "Audit" }
                                        }
                                    }
                                    @if matches!(s.role, StaffRole::ServiceManager | StaffRole::Administrator) {
                                        li class="nhsuk-header__navigation-item" {
                                            a class="nhsuk-header__navigation-link" href="/console/reports" { "Reports" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                div class="nhsuk-width-container" {
                    main class="nhsuk-main-wrapper" id="maincontent" role="main" {
                        (body)
                    }
                }
                footer role="contentinfo" {
                    div class="nhsuk-footer" {
                        div class="nhsuk-width-container" {
                            p class="nhsuk-body-s" { "Sprig: social prescribing referrals. Times are UK time." }
                        }
                    }
                }
            }
        }
    }
}

pub(super) fn error_summary(errors: &[(String, String)]) -> Markup {
    html! {
        @if !errors.is_empty() {
            div class="nhsuk-error-summary" aria-labelledby="error-summary-title" role="alert" tabindex="-1" {
                h2 class="nhsuk-error-summary__title" id="error-summary-title" { "There is a problem" }
                div class="nhsuk-error-summary__body" {
                    ul class="nhsuk-list nhsuk-error-summary__list" {
                        @for (field, message) in errors {
                            li { a href={"#" (field)} { (message) } }
                        }
                    }
                }
            }
        }
    }
}

/// A page saying what went wrong.
pub fn error(title: &str, detail: &str) -> Markup {
    layout(
        title,
        None,
        html! {
            h1 { (title) }
            p { (detail) }
            p { a href="/console/referrals" { "Go to the worklist" } }
        },
    )
}

/// What the sign-in page offers and keeps.
#[derive(Debug, Default)]
pub struct SignInPage<'a> {
    /// Whether any staff account exists (else: how to create one).
    pub has_staff: bool,
    /// Why the last attempt failed.
    pub error: Option<&'a str>,
    /// The username typed.
    pub username: Option<&'a str>,
    /// The identity provider's button label, when one is configured.
    pub provider: Option<&'a str>,
    /// A form posted as the session ended: where to, and its fields (kept as hidden
    /// fields through sign-in, then given back on its page).
    pub resume: Option<(&'a str, &'a [(String, String)])>,
}

fn resume_fields(resume: Option<(&str, &[(String, String)])>) -> Markup {
    html! {
        @if let Some((path, fields)) = resume {
            input type="hidden" name="return_to" value=(path);
            @for (name, value) in fields {
                input type="hidden" name={"kept." (name)} value=(value);
            }
        }
    }
}

/// The sign-in page. Without any staff account (or identity provider) it says how to
/// create one.
pub fn sign_in(page: &SignInPage<'_>) -> Markup {
    let (has_staff, error, username) = (page.has_staff, page.error, page.username);
    let errors: Vec<(String, String)> = error
        .map(|e| vec![("username".to_owned(), e.to_owned())])
        .unwrap_or_default();
    layout(
        "Sign in",
        None,
        html! {
            div class="nhsuk-grid-row" {
                div class="nhsuk-grid-column-two-thirds" {
                    (error_summary(&errors))
                    h1 { "Sign in" }
                    @if page.resume.is_some() {
                        div class="nhsuk-inset-text" {
                            span class="nhsuk-u-visually-hidden" { "Information: " }
                            p { "Your session had ended, so what you sent was not saved. Sign in and it will be shown again, filled in, for you to check and send." }
                        }
                    }
                    @if !has_staff && page.provider.is_none() {
                        div class="nhsuk-inset-text" {
                            span class="nhsuk-u-visually-hidden" { "Information: " }
                            p { "No staff account exists yet, so no one can sign in. An administrator creates one on the server:" }
                            pre { code { "sprig staff add --username amara --name \"Amara Okafor\" --role link_worker" } }
                            p { "Roles are link_worker, service_manager and administrator. The command asks for the password." }
                        }
                    }
                    @if let Some(provider) = page.provider {
                        form method="post" action="/console/sign-in/idp" {
                            (resume_fields(page.resume))
                            button class="nhsuk-button" type="submit" { "Sign in with " (provider) }
                        }
                        @if has_staff {
                            p { "Or sign in with a Sprig staff account:" }
                        }
                    }
                    form method="post" action="/console/sign-in" novalidate {
                        (resume_fields(page.resume))
                        div class={"nhsuk-form-group" @if error.is_some() { " nhsuk-form-group--error" }} {
                            label class="nhsuk-label" for="username" { "Username" }
                            @if let Some(e) = error {
                                span class="nhsuk-error-message" id="username-error" {
                                    span class="nhsuk-u-visually-hidden" { "Error:" } " " (e)
                                }
                            }
                            input class="nhsuk-input nhsuk-u-width-two-thirds" id="username" name="username" type="text"
                                autocomplete="username" spellcheck="false" value=(username.unwrap_or(""));
                        }
                        div class="nhsuk-form-group" {
                            label class="nhsuk-label" for="password" { "Password" }
                            input class="nhsuk-input nhsuk-u-width-two-thirds" id="password" name="password" type="password"
                                autocomplete="current-password";
                        }
                        button class="nhsuk-button" type="submit" data-module="nhsuk-button" { "Sign in" }
                    }
                }
            }
        },
    )
}

fn worklist_link(view: &WorklistView, stage: Option<Stage>) -> String {
    let mut link = format!("/console/referrals?view={}", view.view);
    if let Some(stage) = stage {
        link.push_str("&stage=");
        link.push_str(stage.as_str());
    }
    link
}

/// The worklist.
pub fn worklist(
    session: &ConsoleSession,
    view: &WorklistView,
    referrals: &[Referral],
    counts: &[(Stage, i64)],
    next: Option<&str>,
) -> Markup {
    let views: [(&str, &str); 4] = [
        ("open", "Mine and unassigned"),
        ("mine", "Assigned to me"),
        ("unassigned", "Unassigned"),
        ("all", "All referrals"),
    ];
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    let mut errors: Vec<(String, String)> = view
        .q_error
        .map(|e| vec![("q".to_owned(), e.to_owned())])
        .unwrap_or_default();
    if let Some((field, message)) = view.date_error {
        errors.push((field.to_owned(), message.to_owned()));
    }
    let date_field = |id: &'static str, label: &str, value: &Option<String>| {
        let error = view.date_error.filter(|(f, _)| *f == id).map(|(_, m)| m);
        html! {
            div class={"nhsuk-form-group" @if error.is_some() { " nhsuk-form-group--error" }} {
                label class="nhsuk-label" for=(id) { (label) }
                @if let Some(m) = error {
                    span class="nhsuk-error-message" id={(id) "-error"} { span class="nhsuk-u-visually-hidden" { "Error:" } " " (m) }
                }
                input class="nhsuk-input" id=(id) name=(id) type="date" value=(value.as_deref().unwrap_or(""));
            }
        }
    };
    layout(
        "Worklist",
        Some(session),
        html! {
            (error_summary(&errors))
            h1 { "Referrals" }
            nav aria-label="Whose referrals" {
                ul class="nhsuk-list nhsuk-u-margin-bottom-3 sprig-inline-list" {
                    @for (code, label) in views {
                        li {
                            @if code == view.view {
                                strong aria-current="page" { (label) }
                            } @else {
                                a href={"/console/referrals?view=" (code)} { (label) }
                            }
                        }
                    }
                }
            }
            @if let Some(who) = &view.assignee {
                p {
                    "Referrals assigned to " strong { (who) }
                    @if view.inactive.contains(who) { " " (inactive_tag()) }
                    ". " a href="/console/referrals?view=all" { "Show everyone's" }
                }
            }
            form method="get" action="/console/referrals" role="search" {
                input type="hidden" name="view" value=(view.view);
                @if let Some(who) = &view.assignee {
                    input type="hidden" name="assignee" value=(who);
                }
                div class="nhsuk-grid-row" {
                    div class="nhsuk-grid-column-one-half" {
                        div class={"nhsuk-form-group" @if view.q_error.is_some() { " nhsuk-form-group--error" }} {
                            label class="nhsuk-label" for="q" { "NHS number or family name" }
                            @if let Some(e) = view.q_error {
                                span class="nhsuk-error-message" id="q-error" { span class="nhsuk-u-visually-hidden" { "Error:" } " " (e) }
                            }
                            input class="nhsuk-input" id="q" name="q" type="search" value=(view.q.as_deref().unwrap_or(""));
                        }
                    }
                    div class="nhsuk-grid-column-one-quarter" {
                        div class="nhsuk-form-group" {
                            label class="nhsuk-label" for="stage" { "Stage" }
                            select class="nhsuk-select" id="stage" name="stage" {
                                option value="" { "Any stage" }
                                @for stage in Stage::ALL {
                                    option value=(stage.as_str()) selected[view.stage == Some(stage)] { (stage_label(stage)) }
                                }
                            }
                        }
                    }
                }
                div class="nhsuk-grid-row" {
                    div class="nhsuk-grid-column-one-quarter" {
                        div class="nhsuk-form-group" {
                            label class="nhsuk-label" for="practice" { "Practice (ODS code)" }
                            input class="nhsuk-input" id="practice" name="practice" type="text" spellcheck="false" value=(view.practice.as_deref().unwrap_or(""));
                        }
                    }
                    div class="nhsuk-grid-column-one-quarter" {
                        div class="nhsuk-form-group" {
                            label class="nhsuk-label" for="reason" { "Reason (code)" }
                            input class="nhsuk-input" id="reason" name="reason" type="text" spellcheck="false" value=(view.reason.as_deref().unwrap_or(""));
                        }
                    }
                    div class="nhsuk-grid-column-one-quarter" { (date_field("from", "Received from", &view.from)) }
                    div class="nhsuk-grid-column-one-quarter" { (date_field("to", "Received to", &view.to)) }
                }
                div class="nhsuk-grid-row" {
                    div class="nhsuk-grid-column-full" {
                        div class="nhsuk-form-group" {
                            div class="nhsuk-checkboxes nhsuk-checkboxes--small" {
                                div class="nhsuk-checkboxes__item" {
                                    input class="nhsuk-checkboxes__input" id="overdue" name="overdue" type="checkbox" value="1" checked[view.overdue_only];
                                    label class="nhsuk-label nhsuk-checkboxes__label" for="overdue" {
                                        "Only those not contacted within " (view.target_days) " working days"
                                    }
                                }
                                div class="nhsuk-checkboxes__item" {
                                    input class="nhsuk-checkboxes__input" id="follow_up" name="follow_up" type="checkbox" value="1" checked[view.follow_up_only];
                                    label class="nhsuk-label nhsuk-checkboxes__label" for="follow_up" {
                                        "Only those with a follow-up measurement due or overdue"
                                    }
                                }
                            }
                        }
                        button class="nhsuk-button nhsuk-button--secondary" type="submit" { "Search" }
                    }
                }
            }
            h2 class="nhsuk-heading-s" { "By stage (" (total) " in all)" }
            ul class="nhsuk-list sprig-inline-list" {
                @for (stage, n) in counts {
                    li {
                        a href={(worklist_link(view, Some(*stage))) (view.filter_query())} { (stage_label(*stage)) ": " (n) }
                    }
                }
            }
            @if referrals.is_empty() {
                p { "No referrals match." }
            } @else {
                table class="nhsuk-table" {
                    caption class="nhsuk-table__caption nhsuk-u-visually-hidden" { "Referrals, oldest first" }
                    thead class="nhsuk-table__head" {
                        tr {
                            th scope="col" { "Person" }
                            th scope="col" { "NHS number" }
                            th scope="col" { "Practice" }
                            th scope="col" { "Received" }
                            th scope="col" { "Stage" }
                            th scope="col" { "Assigned to" }
                        }
                    }
                    tbody class="nhsuk-table__body" {
                        @for r in referrals {
                            tr class="nhsuk-table__row" {
                                td class="nhsuk-table__cell" {
                                    a href={"/console/referrals/" (r.id)} { (person_name(r)) }
                                }
                                td class="nhsuk-table__cell" { (r.fields.patient.nhs_number.as_deref().map(nhs_number).unwrap_or_default()) }
                                td class="nhsuk-table__cell" { (r.fields.practice_name.as_deref().or(r.fields.practice_ods_code.as_deref()).unwrap_or("")) }
                                td class="nhsuk-table__cell" {
                                    (date_time(&r.received_at))
                                    @if overdue(r, &view.overdue_before) { " " strong class="nhsuk-tag nhsuk-tag--red" { "Overdue" } }
                                }
                                td class="nhsuk-table__cell" { (stage_tag(r.stage)) }
                                td class="nhsuk-table__cell" {
                                    (r.assigned_to.as_deref().unwrap_or("Unassigned"))
                                    @if r.assigned_to.as_ref().is_some_and(|who| view.inactive.contains(who)) { " " (inactive_tag()) }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(next) = next {
                nav class="nhsuk-pagination" role="navigation" aria-label="Pagination" {
                    ul class="nhsuk-list nhsuk-pagination__list" {
                        li class="nhsuk-pagination-item--next" {
                            a class="nhsuk-pagination__link nhsuk-pagination__link--next" href={
                                (worklist_link(view, view.stage))
                                (view.filter_query())
                                "&after=" (form_encode(next))
                            } {
                                span class="nhsuk-pagination__title" { "Next page" }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn form_encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Not yet contacted, and received before the first-contact target's cut-off (the
/// same test the worklist's overdue filter makes in the store).
fn overdue(r: &Referral, before: &str) -> bool {
    matches!(r.stage, Stage::Received | Stage::Accepted) && r.received_at.as_str() < before
}

fn row(key: &str, value: Markup) -> Markup {
    html! {
        div class="nhsuk-summary-list__row" {
            dt class="nhsuk-summary-list__key" { (key) }
            dd class="nhsuk-summary-list__value" { (value) }
        }
    }
}

fn opt(value: Option<&str>) -> Markup {
    html! { (value.unwrap_or("Not given")) }
}

/// A small line chart of a measure's totals over time (inline SVG, with a text
/// alternative: the table beside it holds the same figures).
fn chart(points: &[i64], range: Option<std::ops::RangeInclusive<i64>>, label: &str) -> Markup {
    let (lo, hi) = range.map_or((0, 10), |r| (*r.start(), *r.end()));
    let span = (hi - lo).max(1) as f64;
    let (w, h, pad) = (240.0_f64, 80.0_f64, 8.0_f64);
    let step = if points.len() > 1 {
        (w - 2.0 * pad) / (points.len() - 1) as f64
    } else {
        0.0
    };
    let coords: Vec<(f64, f64)> = points
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let x = pad + step * i as f64;
            let y = h - pad - ((*v - lo) as f64 / span) * (h - 2.0 * pad);
            (x, y)
        })
        .collect();
    let line: String = coords
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect::<Vec<_>>()
        .join(" ");
    html! {
        svg width="240" height="80" viewBox="0 0 240 80" role="img" aria-label=(label) {
            rect x="0" y="0" width="240" height="80" fill="#f0f4f5" {}
            polyline points=(line) fill="none" stroke="#005eb8" stroke-width="2" {}
            @for (x, y) in &coords {
                circle cx=(format!("{x:.1}")) cy=(format!("{y:.1}")) r="3" fill="#005eb8" {}
            }
        }
    }
}

fn kept_value<'a>(error: Option<&'a FieldError>, name: &str) -> Option<&'a str> {
    error.and_then(|e| {
        e.kept
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    })
}

/// One referral.
pub fn referral(page: &ReferralPage<'_>) -> Markup {
    let d = page.detail;
    let r = &d.referral;
    let p = &r.fields.patient;
    let error = page.error.as_ref();
    let errors: Vec<(String, String)> = error
        .map(|e| vec![(e.field.to_owned(), e.message.clone())])
        .unwrap_or_default();
    let error_for = |field: &str| {
        error
            .filter(|e| e.field == field)
            .map(|e| e.message.clone())
    };
    let next = r.stage.allowed_next();
    let measures = page.measures;
    layout(
        &person_name(r),
        Some(page.session),
        html! {
            (error_summary(&errors))
            @if let Some(flash) = &page.flash {
                div class="nhsuk-inset-text" role="status" {
                    span class="nhsuk-u-visually-hidden" { "Information: " }
                    @match flash {
                        Flash::Moved(stage) => p { "Stage changed to " strong { (stage_label(*stage)) } ". The GP practice will be told." },
                        Flash::Noted => p { "Note added." },
                        Flash::Assigned => p { "Assignment saved." },
                        Flash::Outcome(id) => {
                            @if let Some(o) = d.outcomes.iter().find(|o| &o.id == id) {
                                p id="outcome-score" {
                                    (o.measure.as_str().to_uppercase()) " recorded. "
                                    @if let Some(total) = o.total { "Score: " strong { (total) } }
                                    @if let Some(metric) = &o.metric { " (metric score " strong { (metric) } ")" }
                                    @if o.total.is_none() { "Answers: " (o.answers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")) }
                                }
                            } @else {
                                p { "Outcome recorded." }
                            }
                        },
                    }
                }
            }
            span class="nhsuk-caption-l" { "Referral received " (date_time(&r.received_at)) }
            h1 { (person_name(r)) }
            // Managers (who hold the assignable list) see an assignee who can no longer
            // be given referrals flagged, to reassign.
            @let inactive_assignee = page.may.assign
                && r.assigned_to.as_deref().is_some_and(|who| !page.assignable.iter().any(|(u, _)| u == who));
            p {
                "Stage: " (stage_tag(r.stage)) " Assigned to: " strong { (r.assigned_to.as_deref().unwrap_or("no one")) }
                @if inactive_assignee { " " (inactive_tag()) }
            }

            h2 { "The person" }
            dl class="nhsuk-summary-list" {
                (row("NHS number", html! { (p.nhs_number.as_deref().map(nhs_number).unwrap_or_else(|| "Not given".into())) }))
                (row("Date of birth", html! {
                    @if let Some(b) = &p.birth_date { (date(b)) @if let Some(a) = age(b) { " (" (a) " years)" } } @else { "Not given" }
                }))
                (row("Phone", opt(p.phone.as_deref())))
                (row("Email", opt(p.email.as_deref())))
                (row("Address", html! { (p.address.as_deref().unwrap_or("Not given")) @if let Some(pc) = &p.postcode { ", " (pc) } }))
                (row("Consent", html! { (r.fields.consent_status.as_deref().unwrap_or("Not given")) @if let Some(cd) = &r.fields.consent_date { " (" (date(cd)) ")" } }))
            }

            h2 { "The referral" }
            dl class="nhsuk-summary-list" {
                (row("Practice", html! { (r.fields.practice_name.as_deref().unwrap_or("Not given")) @if let Some(ods) = &r.fields.practice_ods_code { " (" (ods) ")" } }))
                (row("Referrer", opt(r.fields.referrer_name.as_deref())))
                (row("Reasons", html! {
                    @if r.fields.reasons.is_empty() { "Not given" }
                    ul class="nhsuk-list" {
                        @for reason in &r.fields.reasons {
                            li { (reason.display.as_deref().or(reason.text.as_deref()).or(reason.code.as_deref()).unwrap_or("")) }
                        }
                    }
                }))
                (row("Priority", opt(r.fields.priority.as_deref())))
            }
            @let gp_notes: Vec<_> = d.notes.iter().filter(|n| n.source == NoteSource::Gp).collect();
            @if !gp_notes.is_empty() {
                h3 { "The GP's note" }
                @for n in gp_notes { div class="nhsuk-inset-text" { p { (n.text) } } }
            }

            @if page.may.work && r.stage.is_open() {
                h2 id="actions" { "What has happened?" }
                form method="post" action={"/console/referrals/" (r.id) "/transition"} novalidate {
                    (csrf_field(page.session))
                    div class={"nhsuk-form-group" @if error_for("to").is_some() { " nhsuk-form-group--error" }} {
                        fieldset class="nhsuk-fieldset" aria-describedby="to-hint" {
                            legend class="nhsuk-fieldset__legend nhsuk-fieldset__legend--s" { "Move the referral on" }
                            div class="nhsuk-hint" id="to-hint" { "The GP practice is sent the new stage." }
                            @if let Some(m) = error_for("to") {
                                span class="nhsuk-error-message" { span class="nhsuk-u-visually-hidden" { "Error:" } " " (m) }
                            }
                            div class="nhsuk-radios" id="to" {
                                @for stage in next {
                                    div class="nhsuk-radios__item" {
                                        input class="nhsuk-radios__input" id={"to-" (stage.as_str())} name="to" type="radio"
                                            value=(stage.as_str()) checked[kept_value(error, "to") == Some(stage.as_str())];
                                        label class="nhsuk-label nhsuk-radios__label" for={"to-" (stage.as_str())} {
                                            (stage_label(*stage))
                                            @if page.reason_required.contains(stage) { " (give a reason)" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    div class={"nhsuk-form-group" @if error_for("reason").is_some() { " nhsuk-form-group--error" }} {
                        label class="nhsuk-label" for="reason" { "Reason (needed to decline, for unable to contact, and to withdraw)" }
                        @if let Some(m) = error_for("reason") {
                            span class="nhsuk-error-message" id="reason-error" { span class="nhsuk-u-visually-hidden" { "Error:" } " " (m) }
                        }
                        input class="nhsuk-input" id="reason" name="reason" type="text" value=(kept_value(error, "reason").unwrap_or(""));
                    }
                    (super::milestones::stage_fields(next, error))
                    div class="nhsuk-form-group" {
                        label class="nhsuk-label" for="transition-note" { "Note (optional, kept by the service)" }
                        textarea class="nhsuk-textarea" id="transition-note" name="note" rows="2" { (kept_value(error, "note").unwrap_or("")) }
                    }
                    button class="nhsuk-button" type="submit" { "Save stage" }
                }

                h2 { "Notes and contact attempts" }
                form method="post" action={"/console/referrals/" (r.id) "/notes"} novalidate {
                    (csrf_field(page.session))
                    div class={"nhsuk-form-group" @if error_for("note-text").is_some() { " nhsuk-form-group--error" }} {
                        label class="nhsuk-label" for="note-text" { "Note" }
                        @if let Some(m) = error_for("note-text") {
                            span class="nhsuk-error-message" { span class="nhsuk-u-visually-hidden" { "Error:" } " " (m) }
                        }
                        textarea class="nhsuk-textarea" id="note-text" name="text" rows="3" { (kept_value(error, "text").unwrap_or("")) }
                    }
                    div class="nhsuk-button-group" {
                        button class="nhsuk-button nhsuk-button--secondary" type="submit" name="kind" value="note" { "Add note" }
                        " "
                        button class="nhsuk-button nhsuk-button--secondary" type="submit" name="kind" value="contact-attempt" { "Record a contact attempt" }
                    }
                }

                h2 { "Record an outcome measure" }
                ul class="nhsuk-list" {
                    @for m in measures {
                        li { a href={"/console/referrals/" (r.id) "/outcomes?measure=" (m.code)} { "Record " (m.name) } }
                    }
                }
            }

            @if page.may.assign && r.stage.is_open() {
                h2 { "Assign" }
                form method="post" action={"/console/referrals/" (r.id) "/assignment"} {
                    (csrf_field(page.session))
                    div class={"nhsuk-form-group" @if error_for("assigned_to").is_some() { " nhsuk-form-group--error" }} {
                        label class="nhsuk-label" for="assigned_to" { "Link worker" }
                        @if let Some(m) = error_for("assigned_to") {
                            span class="nhsuk-error-message" id="assigned_to-error" { span class="nhsuk-u-visually-hidden" { "Error:" } " " (m) }
                        }
                        select class="nhsuk-select" id="assigned_to" name="assigned_to" {
                            @if inactive_assignee {
                                // Not assignable any more: shown, so saving the form
                                // unchanged is refused rather than silently unassigning.
                                @if let Some(who) = &r.assigned_to {
                                    option value=(who) selected { (who) " (inactive)" }
                                }
                            }
                            option value="" { "No one (unassigned)" }
                            @for (username, name) in page.assignable {
                                option value=(username) selected[r.assigned_to.as_deref() == Some(username.as_str())] { (name) " (" (username) ")" }
                            }
                        }
                    }
                    button class="nhsuk-button nhsuk-button--secondary" type="submit" { "Save assignment" }
                }
            }

            @if page.may.audit {
                p { a href={"/console/referrals/" (r.id) "/audit"} { "Audit trail of this referral" } }
            }
            (super::milestones::section(page.session, &r.id, page.milestones, page.may.work, error))

            h2 { "Timeline" }
            table class="nhsuk-table" {
                caption class="nhsuk-table__caption nhsuk-u-visually-hidden" { "Stages, oldest first" }
                thead { tr { th scope="col" { "When" } th scope="col" { "Stage" } th scope="col" { "Who" } th scope="col" { "Reason or note" } } }
                tbody {
                    @for c in &d.timeline {
                        tr {
                            td { (date_time(&c.at)) }
                            td { (stage_label(c.stage)) }
                            td { (c.actor) }
                            td { (c.reason.as_deref().unwrap_or("")) @if let Some(n) = &c.note { " " (n) } }
                        }
                    }
                }
            }

            @let service_notes: Vec<_> = d.notes.iter().filter(|n| n.source == NoteSource::Service).collect();
            @if !service_notes.is_empty() {
                h2 { "Notes" }
                ul class="nhsuk-list" {
                    @for n in service_notes {
                        li { strong { (date_time(&n.at)) ", " (n.author.as_deref().unwrap_or("service")) ": " } (n.text) }
                    }
                }
            }

            @if !d.outcomes.is_empty() {
                h2 { "Outcomes" }
                @for m in measures {
                    @let of: Vec<_> = d.outcomes.iter().filter(|o| o.measure == m.code).collect();
                    @if !of.is_empty() {
                        h3 { (m.name) }
                        @let totals: Vec<i64> = of.iter().filter_map(|o| o.total).collect();
                        @if !totals.is_empty() {
                            (chart(&totals, m.sum_range.clone(), &format!("{} totals over time: {}", m.name, totals.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))))
                        }
                        table class="nhsuk-table" {
                            thead { tr { th scope="col" { "Recorded" } th scope="col" { "Score" } th scope="col" { "Answers" } th scope="col" { "By" } } }
                            tbody {
                                @for o in &of {
                                    tr {
                                        td { (date_time(&o.recorded_at)) }
                                        td { @if let Some(t) = o.total { (t) } @if let Some(mt) = &o.metric { " (metric " (mt) ")" } }
                                        td { (o.answers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")) }
                                        td { (o.actor) }
                                    }
                                }
                            }
                        }
                    }
                }
            }

            h2 { "Sent to the GP practice" }
            @if page.sent.is_empty() {
                p { "Nothing yet." }
            } @else {
                table class="nhsuk-table" {
                    caption class="nhsuk-table__caption nhsuk-u-visually-hidden" { "Updates sent to the GP practice, oldest first" }
                    thead { tr { th scope="col" { "Made" } th scope="col" { "Update" } th scope="col" { "Delivery" } th scope="col" { "Attempts" } } }
                    tbody {
                        @for e in page.sent {
                            tr {
                                td { (date_time(&e.created_at)) }
                                td { (e.resource_type) " version " (e.version_id) }
                                td {
                                    @match e.state.as_str() {
                                        "delivered" => strong class="nhsuk-tag nhsuk-tag--green" { "Delivered" },
                                        "dead" => strong class="nhsuk-tag nhsuk-tag--red" { "Failed" },
                                        _ => strong class="nhsuk-tag nhsuk-tag--yellow" { "Waiting" },
                                    }
                                    @if let Some(status) = e.last_status { " (answer " (status) ")" }
                                }
                                td { (e.attempts) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// An outcome measure's questionnaire. `missing` lists unanswered items (counted
/// from 1); `kept` what had been entered.
pub fn questionnaire(
    session: &ConsoleSession,
    referral_id: &str,
    form: &Questionnaire,
    missing: &[usize],
    kept: &[(String, String)],
) -> Markup {
    let errors: Vec<(String, String)> = missing
        .iter()
        .map(|n| {
            (
                format!("item{n}-fieldset"),
                format!("Select an answer for item {n}"),
            )
        })
        .collect();
    layout(
        &form.title,
        Some(session),
        html! {
            (error_summary(&errors))
            h1 class="nhsuk-heading-l" { (form.title) }
            p class="nhsuk-hint" { (form.hint) }
            form method="post" action={"/console/referrals/" (referral_id) "/outcomes"} novalidate {
                (csrf_field(session))
                input type="hidden" name="measure" value=(form.measure);
                @for (i, item) in form.items.iter().enumerate() {
                    @let n = i + 1;
                    @let name = format!("item{n}");
                    @let chosen = kept.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str());
                    div class={"nhsuk-form-group" @if missing.contains(&n) { " nhsuk-form-group--error" }} {
                        fieldset class="nhsuk-fieldset" id={(name) "-fieldset"} {
                            legend class="nhsuk-fieldset__legend nhsuk-fieldset__legend--s" { (item) }
                            @if missing.contains(&n) {
                                span class="nhsuk-error-message" { span class="nhsuk-u-visually-hidden" { "Error:" } " Select an answer for item " (n) }
                            }
                            div class="nhsuk-radios nhsuk-radios--inline" {
                                @for (score, label) in form.options.get(i).map(Vec::as_slice).unwrap_or_default() {
                                    @let id = format!("{name}-{score}");
                                    div class="nhsuk-radios__item" {
                                        input class="nhsuk-radios__input" id=(id) name=(name) type="radio" value=(score)
                                            checked[chosen == Some(score.to_string().as_str())];
                                        label class="nhsuk-label nhsuk-radios__label" for=(id) { (label) }
                                    }
                                }
                            }
                        }
                    }
                }
                button class="nhsuk-button" type="submit" { "Save and score" }
            }
            p { a href={"/console/referrals/" (referral_id)} { "Back to the referral" } }
        },
    )
}

/// Time from receipt to first contact in working days, per link worker and per practice
/// (`first_contact::figures`).
pub struct ContactFigures<'a> {
    /// Per link worker (`None`: unassigned).
    pub by_worker: &'a [ContactTimes],
    /// Per practice (`None`: no practice code).
    pub by_practice: &'a [ContactTimes],
}

fn contact_table(
    caption: &str,
    first: &str,
    rows: &[ContactTimes],
    label: &dyn Fn(Option<&str>) -> String,
) -> Markup {
    html! {
        table class="nhsuk-table" {
            caption class="nhsuk-table__caption" { (caption) }
            thead { tr {
                th scope="col" { (first) } th scope="col" { "Contacted" }
                th scope="col" { "Median (working days)" } th scope="col" { "90th percentile (working days)" }
            } }
            tbody {
                @for c in rows {
                    tr { td { (label(c.key.as_deref())) } td { (c.contacted) } td { (c.median) } td { (c.p90) } }
                }
            }
        }
    }
}

/// Service managers: open referrals per link worker; per practice, referrals and the
/// time to first contact.
pub fn caseloads(
    session: &ConsoleSession,
    loads: &[(Option<String>, i64)],
    people: &[(String, String)],
    practices: &[(Option<String>, i64, i64, Option<f64>)],
    contact: &ContactFigures<'_>,
    pcns: &crate::outcomes::pcn::PcnDirectory,
) -> Markup {
    // Each caseload under its holder's name (a staff account's or the identity
    // provider's); a username no longer assignable is shown as it is stored.
    let name_of = |username: &str| {
        people
            .iter()
            .find(|(u, _)| u == username)
            .map_or_else(|| username.to_owned(), |(u, n)| format!("{n} ({u})"))
    };
    layout(
        "Caseloads",
        Some(session),
        html! {
            h1 { "Caseloads" }
            p { "Open referrals (not completed, declined, unable to contact or withdrawn) per link worker." }
            table class="nhsuk-table" {
                thead { tr { th scope="col" { "Link worker" } th scope="col" { "Open referrals" } } }
                tbody {
                    @for (who, n) in loads {
                        tr {
                            td {
                                (who.as_deref().map_or_else(|| "Unassigned".to_owned(), name_of))
                                // Not assignable any more: these referrals are to reassign.
                                @if who.as_deref().is_some_and(|w| !people.iter().any(|(u, _)| u == w)) {
                                    " " (inactive_tag())
                                    " " a href={"/console/referrals?view=all&assignee=" (form_encode(who.as_deref().unwrap_or_default()))} {
                                        "Reassign"
                                        span class="nhsuk-u-visually-hidden" { " the referrals of " (who.as_deref().unwrap_or_default()) }
                                    }
                                }
                            }
                            td { (n) }
                        }
                    }
                }
            }
            h2 { "Time from receipt to first contact" }
            p { "Working days (Monday to Friday, England and Wales bank holidays excepted) from the day a referral was received to the day of its first contact, of the referrals contacted." }
            @if contact.by_worker.is_empty() {
                p { "No referral has been contacted yet." }
            } @else {
                (contact_table("Per link worker", "Link worker", contact.by_worker, &|k| k.map_or_else(|| "Unassigned".to_owned(), name_of)))
                (contact_table("Per practice", "Practice", contact.by_practice, &|k| k.unwrap_or("No practice code").to_owned()))
            }
            h2 { "By practice" }
            table class="nhsuk-table" {
                thead { tr { th scope="col" { "Practice" } th scope="col" { "Primary Care Network" } th scope="col" { "Referrals" } th scope="col" { "Contacted" } th scope="col" { "Mean days to first contact" } } }
                tbody {
                    @for (ods, referrals, contacted, days) in practices {
                        tr {
                            td { (ods.as_deref().unwrap_or("No practice code")) }
                            td { (ods.as_deref().and_then(|o| pcns.pcn_of(o)).map_or("No PCN", |p| p.name.as_str())) }
                            td { (referrals) }
                            td { (contacted) }
                            td { @if let Some(d) = days { (format!("{d:.1}")) } @else { "\u{2013}" } }
                        }
                    }
                }
            }
        },
    )
}

/// The receiver's last answer as shown: an OperationOutcome's issue texts (its
/// `details.text`, else `diagnostics`), else the body itself, cut to `MAX_ANSWER`
/// characters (maud escapes what is shown).
pub(super) fn receiver_answer(body: &str) -> String {
    const MAX_ANSWER: usize = 200;
    let text = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .filter(|v| v["resourceType"] == "OperationOutcome")
        .map(|v| {
            v["issue"]
                .as_array()
                .map(|issues| {
                    issues
                        .iter()
                        .filter_map(|i| {
                            i["details"]["text"]
                                .as_str()
                                .or_else(|| i["diagnostics"].as_str())
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default()
        })
        .unwrap_or_else(|| body.trim().to_owned());
    if text.chars().count() > MAX_ANSWER {
        let cut: String = text.chars().take(MAX_ANSWER).collect();
        format!("{cut}\u{2026}")
    } else {
        text
    }
}

/// Administrators: per practice, what waits and what failed (retry all of a practice's
/// failures); each dead letter with the receiver's last answer (retry one, the
/// referral's audit trail).
pub fn deliveries(
    session: &ConsoleSession,
    dead: &[DeliveryEntry],
    stats: &[DestinationStats],
    retried: Option<u64>,
) -> Markup {
    layout(
        "Deliveries",
        Some(session),
        html! {
            @if let Some(n) = retried {
                div class="nhsuk-inset-text" role="status" {
                    span class="nhsuk-u-visually-hidden" { "Information: " }
                    p { (n) " failed " @if n == 1 { "update" } @else { "updates" } " put back in the queue." }
                }
            }
            h1 { "Deliveries to GP practices" }
            table class="nhsuk-table" {
                caption class="nhsuk-table__caption" { "Per practice" }
                thead { tr { th scope="col" { "Practice" } th scope="col" { "Waiting" } th scope="col" { "Failed" } th scope="col" { "Oldest waiting" } th scope="col" { "Retry" } } }
                tbody {
                    @for s in stats {
                        tr {
                            td { (s.destination_ods.as_deref().unwrap_or("No practice code")) }
                            td { (s.pending) } td { (s.dead) }
                            td { (s.oldest_pending.as_deref().map(date_time).unwrap_or_default()) }
                            td {
                                @if let (Some(ods), true) = (s.destination_ods.as_deref(), s.dead > 0) {
                                    form method="post" action={"/console/deliveries/practices/" (ods) "/retry"} {
                                        (csrf_field(session))
                                        button class="nhsuk-button nhsuk-button--secondary nhsuk-u-margin-bottom-0" type="submit" {
                                            "Retry all " span class="nhsuk-u-visually-hidden" { "failed updates for " (ods) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Failed deliveries (dead letters)" }
            @if dead.is_empty() { p { "None." } } @else {
                table class="nhsuk-table" {
                    thead { tr { th scope="col" { "Message" } th scope="col" { "Practice" } th scope="col" { "Update" } th scope="col" { "Receiver's last answer" } th scope="col" { "Retry" } } }
                    tbody {
                        @for e in dead {
                            tr {
                                td { (e.seq) br; a href={"/console/referrals/" (e.referral_id) "/audit"} { "Audit trail" span class="nhsuk-u-visually-hidden" { " of message " (e.seq) "'s referral" } } }
                                td { (e.destination_ods.as_deref().unwrap_or("")) }
                                td { (e.resource_type) " version " (e.version_id) }
                                td {
                                    @if let Some(s) = e.last_status { strong { (s) } " " }
                                    @match e.receiver_response.as_deref().map(receiver_answer).filter(|a| !a.is_empty()) {
                                        Some(answer) => (answer),
                                        None => (e.last_error.as_deref().unwrap_or("")),
                                    }
                                }
                                td {
                                    form method="post" action={"/console/deliveries/" (e.seq) "/retry"} {
                                        (csrf_field(session))
                                        button class="nhsuk-button nhsuk-button--secondary nhsuk-u-margin-bottom-0" type="submit" { "Retry " span class="nhsuk-u-visually-hidden" { "message " (e.seq) } }
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
