//! The referral page's milestones (`referral::milestone`): what has been recorded, and a
//! small form to record one (`POST /console/referrals/{id}/milestones`), for whoever may
//! work on the referral. Kept apart from `pages.rs`, which renders it through one hook.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use maud::{Markup, html};
use time::{Date, OffsetDateTime};

use super::{
    ConsoleError, FieldError, OnReferral, Result, check_work, checked_form, refuse, see_other,
};
use crate::api::AppState;
use crate::api::middleware::RequestContext;
use crate::identity::{Access, ConsoleSession, StaffAction};
use crate::outcomes::schedule::uk_date;
use crate::referral::milestone::{
    self, DISCHARGE_REASONS, Milestone, MilestoneInput, MilestoneKind, stage_milestones,
};
use crate::referral::stage::Stage;
use crate::workflow::WorkflowError;

/// The milestone routes (each is in `api::authenticate::ROUTES`).
pub fn routes() -> Router<AppState> {
    Router::new().route("/console/referrals/{id}/milestones", post(record))
}

/// The form's field ids, by the input they carry.
fn field_id(input: &str) -> &'static str {
    match input {
        "on" => "milestone-on",
        "complex" => "milestone-complex",
        "basis" => "milestone-basis",
        "reason" => "milestone-reason",
        _ => "milestone-kind",
    }
}

/// `POST /console/referrals/{id}/milestones`: `kind`, `on` and the kind's own fields.
async fn record(
    State(state): State<AppState>,
    access: Access,
    Extension(session): Extension<ConsoleSession>,
    context: RequestContext,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let fields = checked_form(&session, &headers, &body)?;
    check_work(&state, &access, &id, |a| StaffAction::RecordOutcome {
        assigned_to: a,
    })
    .await?;
    let on_referral = OnReferral {
        state: &state,
        access: &access,
        session: &session,
        context: &context,
        id: &id,
    };
    let Some(kind) = fields.get("kind") else {
        let message = "Select what happened";
        return refuse(&on_referral, &fields, "milestone-kind", message).await;
    };
    let on = match fields.get("on").map(crate::api::milestones::parse_day) {
        Some(Some(day)) => day,
        _ => {
            let message = "Enter the day it happened, for example 2026-04-02";
            return refuse(&on_referral, &fields, "milestone-on", message).await;
        }
    };
    let is = |k: MilestoneKind| kind == k.as_str();
    // The form shows every kind's fields at once: keep only the chosen kind's.
    let input = MilestoneInput {
        kind,
        on: Some(on),
        complex: if is(MilestoneKind::Complexity) {
            match fields.get("complex") {
                Some("yes") => Some(true),
                Some("no") => Some(false),
                _ => None,
            }
        } else {
            None
        },
        basis: fields
            .get("basis")
            .filter(|_| is(MilestoneKind::Complexity)),
        reason: fields
            .get("reason")
            .filter(|_| is(MilestoneKind::Discharge)),
    };
    let today = uk_date(OffsetDateTime::now_utc());
    // Every check but the referral's own day, here, to say which field is wrong.
    if let Err(e) = milestone::check(&input, Date::MIN, today) {
        let message = sentence(&e.to_string());
        return refuse(&on_referral, &fields, field_id(e.field()), &message).await;
    }
    let mut tx = state.store.begin_write().await?;
    let recorded = state
        .workflow
        .record_milestone(&mut tx, &id, &session.username, &input, today)
        .await;
    let recorded = match recorded {
        Ok(m) => m,
        // What is left to refuse is a day before the referral arrived.
        Err(WorkflowError::Invalid(message)) => {
            drop(tx);
            return refuse(&on_referral, &fields, "milestone-on", &sentence(&message)).await;
        }
        Err(e) => return Err(ConsoleError::from(e)),
    };
    context.audit.commit(tx, 303).await?;
    tracing::info!(referral_id = %id, milestone_id = %recorded.id, "console: milestone recorded");
    Ok(see_other(&format!("/console/referrals/{id}#milestones")))
}

/// A message as a sentence: capital first, code quotes dropped.
pub(super) fn sentence(message: &str) -> String {
    let plain = message.replace('`', "");
    let mut chars = plain.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => plain,
    }
}

/// The stage form's milestone fields, for the stages the referral may move to next
/// (`next`): the day (filled in with today), a complexity assessment where a next stage
/// takes one, the discharge reason where one discharges. The move records them with it
/// (`console::stage_form_milestone`), so the report does not show a referral moved on as
/// due-but-missing its evidence.
pub fn stage_fields(next: &[Stage], error: Option<&FieldError>) -> Markup {
    let takes: Vec<_> = next.iter().map(|s| (*s, stage_milestones(*s))).collect();
    if !takes.iter().any(|(_, t)| t.any()) {
        return html! {};
    }
    let complexity = takes.iter().any(|(_, t)| t.takes_complexity);
    let discharges: Vec<Stage> = takes
        .iter()
        .filter(|(_, t)| t.discharges())
        .map(|(s, _)| *s)
        .collect();
    let errors = FormErrors(error);
    let group = |field: &str| errors.group(field);
    let message = |field: &str| errors.message(field);
    let today = uk_date(OffsetDateTime::now_utc()).to_string();
    let kept_on = kept(error, "stage_on").unwrap_or(&today);
    let kept_reason = kept(error, "discharge_reason");
    let records: Vec<&str> = takes
        .iter()
        .filter(|(_, t)| !t.records.is_empty())
        .map(|(s, _)| super::pages::stage_label(*s))
        .collect();
    html! {
        fieldset class="nhsuk-fieldset" id="transition-milestone" {
            legend class="nhsuk-fieldset__legend nhsuk-fieldset__legend--s" { "Milestone recorded with the move" }
            div class="nhsuk-hint" {
                "The outcomes report counts these. Recorded with "
                (records.join(", ").to_lowercase())
                "; the other moves leave them out."
            }
            div class=(group("transition-on")) {
                label class="nhsuk-label" for="transition-on" { "Day it happened (for a plan, the day it was agreed)" }
                (message("transition-on"))
                input class="nhsuk-input nhsuk-input--width-10" id="transition-on" name="stage_on" type="date" value=(kept_on);
            }
            @if complexity {
                (complexity_fields(errors, &ComplexityFields {
                    prefix: "transition",
                    complex_name: "stage_complex",
                    basis_name: "stage_basis",
                    hint: "Optional: leave unanswered if not assessed yet.",
                }))
            }
            @if !discharges.is_empty() {
                div class=(group("transition-discharge-reason")) {
                    label class="nhsuk-label" for="transition-discharge-reason" {
                        @if discharges.contains(&Stage::Completed) { "Reason for discharge (needed to complete; optional to withdraw)" }
                        @else { "Reason for discharge (optional)" }
                    }
                    (message("transition-discharge-reason"))
                    select class="nhsuk-select" id="transition-discharge-reason" name="discharge_reason" {
                        option value="" { "Choose a reason" }
                        @for (code, label) in DISCHARGE_REASONS {
                            option value=(code) selected[kept_reason == Some(code)] { (label) }
                        }
                    }
                }
            }
        }
    }
}

/// A form's refused field, as the NHS design system marks it: the group's error class
/// and the message above the input.
#[derive(Clone, Copy)]
struct FormErrors<'a>(Option<&'a FieldError>);

impl<'a> FormErrors<'a> {
    fn for_field(self, field: &str) -> Option<&'a str> {
        self.0
            .filter(|e| e.field == field)
            .map(|e| e.message.as_str())
    }

    fn group(self, field: &str) -> &'static str {
        if self.for_field(field).is_some() {
            "nhsuk-form-group nhsuk-form-group--error"
        } else {
            "nhsuk-form-group"
        }
    }

    fn message(self, field: &str) -> Markup {
        html! {
            @if let Some(m) = self.for_field(field) {
                span class="nhsuk-error-message" id={(field) "-error"} {
                    span class="nhsuk-u-visually-hidden" { "Error:" } " " (m)
                }
            }
        }
    }

    /// What the refused form held in `name`, to show it again.
    fn kept(self, name: &str) -> Option<&'a str> {
        kept(self.0, name)
    }
}

/// Where a form's complexity assessment fields go: the stage form and the milestone
/// form ask the same question under their own ids, names and hint.
struct ComplexityFields {
    /// The ids' prefix (`{prefix}-complex`, `{prefix}-basis`).
    prefix: &'static str,
    /// The form names of the yes/no answer and of the basis.
    complex_name: &'static str,
    basis_name: &'static str,
    hint: &'static str,
}

/// "Are the person's needs complex?" (yes/no) and the basis of the assessment.
fn complexity_fields(errors: FormErrors<'_>, fields: &ComplexityFields) -> Markup {
    let complex_id = format!("{}-complex", fields.prefix);
    let basis_id = format!("{}-basis", fields.prefix);
    let kept_complex = errors.kept(fields.complex_name);
    html! {
        div class=(errors.group(&complex_id)) {
            fieldset class="nhsuk-fieldset" aria-describedby={(complex_id) "-hint"} {
                legend class="nhsuk-fieldset__legend nhsuk-fieldset__legend--s" { "Complexity assessed: are the person's needs complex?" }
                div class="nhsuk-hint" id={(complex_id) "-hint"} { (fields.hint) }
                (errors.message(&complex_id))
                div class="nhsuk-radios nhsuk-radios--inline" id=(complex_id) {
                    @for (value, label) in [("yes", "Yes"), ("no", "No")] {
                        div class="nhsuk-radios__item" {
                            input class="nhsuk-radios__input" id={(complex_id) "-" (value)} name=(fields.complex_name) type="radio"
                                value=(value) checked[kept_complex == Some(value)];
                            label class="nhsuk-label nhsuk-radios__label" for={(complex_id) "-" (value)} { (label) }
                        }
                    }
                }
            }
        }
        div class=(errors.group(&basis_id)) {
            label class="nhsuk-label" for=(basis_id) { "Basis of the complexity assessment (what was found)" }
            (errors.message(&basis_id))
            textarea class="nhsuk-textarea" id=(basis_id) name=(fields.basis_name) rows="2" { (errors.kept(fields.basis_name).unwrap_or("")) }
        }
    }
}

fn kept<'a>(error: Option<&'a FieldError>, name: &str) -> Option<&'a str> {
    error.and_then(|e| {
        e.kept
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    })
}

fn reason_label(code: &str) -> &str {
    DISCHARGE_REASONS
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, label)| *label)
        .unwrap_or(code)
}

/// The referral page's milestones section: the recorded ones in a table and, for whoever
/// may work on the referral (`may_record`), the form.
pub fn section(
    session: &ConsoleSession,
    referral_id: &str,
    recorded: &[Milestone],
    may_record: bool,
    error: Option<&FieldError>,
) -> Markup {
    let errors = FormErrors(error);
    let group = |field: &str| errors.group(field);
    let message = |field: &str| errors.message(field);
    let kept_kind = kept(error, "kind");
    let kept_reason = kept(error, "reason");
    html! {
        h2 id="milestones" { "Milestones" }
        p class="nhsuk-body" { "What the outcomes report counts: record each when it happens, with the day it happened." }
        @if recorded.is_empty() {
            p class="nhsuk-body" { "None recorded yet." }
        } @else {
            table class="nhsuk-table" {
                caption class="nhsuk-table__caption nhsuk-u-visually-hidden" { "Milestones, by day" }
                thead { tr { th scope="col" { "Day" } th scope="col" { "Milestone" } th scope="col" { "Details" } th scope="col" { "Recorded by" } } }
                tbody {
                    @for m in recorded {
                        tr {
                            td { (super::time::date(&m.on.to_string())) }
                            td { (m.kind.label()) }
                            td {
                                @match m.complex {
                                    Some(true) => { "Complex needs" }
                                    Some(false) => { "Not complex" }
                                    None => {}
                                }
                                @if let Some(b) = &m.basis { ": " (b) }
                                @if let Some(r) = &m.reason { (reason_label(r)) }
                            }
                            td { (m.recorded_by) }
                        }
                    }
                }
            }
        }
        @if may_record {
            form method="post" action={"/console/referrals/" (referral_id) "/milestones"} novalidate {
                input type="hidden" name="csrf" value=(session.csrf_token);
                div class=(group("milestone-kind")) {
                    fieldset class="nhsuk-fieldset" {
                        legend class="nhsuk-fieldset__legend nhsuk-fieldset__legend--s" { "Record a milestone" }
                        (message("milestone-kind"))
                        div class="nhsuk-radios" id="milestone-kind" {
                            @for k in MilestoneKind::ALL {
                                div class="nhsuk-radios__item" {
                                    input class="nhsuk-radios__input" id={"milestone-kind-" (k.as_str())} name="kind" type="radio"
                                        value=(k.as_str()) checked[kept_kind == Some(k.as_str())];
                                    label class="nhsuk-label nhsuk-radios__label" for={"milestone-kind-" (k.as_str())} { (k.label()) }
                                }
                            }
                        }
                    }
                }
                div class=(group("milestone-on")) {
                    label class="nhsuk-label" for="milestone-on" { "Day it happened (for an action plan, the day it was agreed)" }
                    (message("milestone-on"))
                    input class="nhsuk-input nhsuk-input--width-10" id="milestone-on" name="on" type="date"
                        value=(kept(error, "on").unwrap_or(""));
                }
                (complexity_fields(errors, &ComplexityFields {
                    prefix: "milestone",
                    complex_name: "complex",
                    basis_name: "basis",
                    hint: "Only for a complexity assessment.",
                }))
                div class=(group("milestone-reason")) {
                    label class="nhsuk-label" for="milestone-reason" { "Reason for discharge (only for a discharge)" }
                    (message("milestone-reason"))
                    select class="nhsuk-select" id="milestone-reason" name="reason" {
                        option value="" { "Choose a reason" }
                        @for (code, label) in DISCHARGE_REASONS {
                            option value=(code) selected[kept_reason == Some(code)] { (label) }
                        }
                    }
                }
                button class="nhsuk-button nhsuk-button--secondary" type="submit" { "Record milestone" }
            }
        }
    }
}
