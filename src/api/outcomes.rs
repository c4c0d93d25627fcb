//! Outcome evidence under `/api`: the measures in force (`GET /api/measures`, what a form
//! renders), the follow-ups due (`GET /api/follow-ups`), the outcomes report and its detail
//! (`GET /api/reports/outcomes`, `…/detail`) and the service summary
//! (`GET /api/reports/service`). The computations are `outcomes`' builders fed a page of
//! referrals at a time (`Store::each_referral_facts`); this module parses queries, checks
//! roles and chooses formats.
//!
//! The counts carry no personal data and no ids; the detail export (ids and NHS numbers, so
//! every count can be traced) is for the roles that may see referrals' detail.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use time::{Date, Duration, OffsetDateTime};

use super::AppState;
use super::authenticate::require_staff;
use super::problem::Problem;
use crate::identity::{Access, StaffAction};
use crate::outcomes::report::{self, Period};
use crate::outcomes::schedule::{self, FollowUp, State as FollowUpState};
use crate::referral::record::ReferralFacts;
use crate::referral::stage::Stage;

/// `GET /api/measures`: every measure in force with its items, answer options, scoring,
/// meaningful change and schedule (`outcomes::definition::MeasureDefinition`).
pub async fn measures(State(state): State<AppState>, access: Access) -> Result<Response, Problem> {
    require_staff(&access, StaffAction::ViewWorklist)?;
    let items: Vec<&crate::outcomes::MeasureDefinition> = state.outcomes.catalogue.iter().collect();
    Ok(Json(json!({ "items": items })).into_response())
}

/// A date parameter (`2026-04-01`).
fn date(name: &str, value: &str) -> Result<Date, Problem> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(value, &format)
        .map_err(|_| Problem::bad_request(format!("{name} must be a date such as 2026-04-01")))
}

/// Today, as people in the UK see it.
fn today() -> Date {
    schedule::uk_date(OffsetDateTime::now_utc())
}

/// A FHIR instant as the facts hold it (`None` when it does not parse).
fn parsed(instant: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(instant, &time::format_description::well_known::Rfc3339).ok()
}

/// The follow-ups of one referral on `today`, per measure with a baseline: the baseline is
/// the first measurement of the measure; nothing is due for a referral that closed.
pub fn referral_follow_ups(
    state: &AppState,
    facts: &ReferralFacts,
    today: Date,
) -> Vec<(String, Vec<FollowUp>)> {
    let closed = facts.stages.iter().any(|(s, _)| {
        matches!(
            s,
            Stage::Declined | Stage::UnableToContact | Stage::Withdrawn
        )
    });
    if closed {
        return Vec::new();
    }
    let mut out = Vec::new();
    for definition in state.outcomes.catalogue.iter() {
        let days: Vec<Date> = facts
            .outcomes
            .iter()
            .filter(|o| o.measure == definition.code)
            .map(|o| schedule::uk_date(o.recorded_at))
            .collect();
        let Some(baseline) = days.iter().min().copied() else {
            continue;
        };
        let later: Vec<Date> = days.into_iter().filter(|d| *d > baseline).collect();
        out.push((
            definition.code.clone(),
            schedule::follow_ups(&definition.schedule, baseline, &later, today),
        ));
    }
    out
}

/// A follow-up of `measure` as `/api` shows it (the list adds whose it is; a referral's
/// own list adds the day it was measured).
fn follow_up_json(measure: &str, f: &FollowUp) -> serde_json::Map<String, Value> {
    let mut item = serde_json::Map::new();
    item.insert("measure".into(), json!(measure));
    item.insert("follow_up".into(), json!(f.key));
    item.insert("label".into(), json!(f.label));
    item.insert("date".into(), json!(f.target));
    item.insert("opens".into(), json!(f.opens));
    item.insert("closes".into(), json!(f.closes));
    item.insert("state".into(), json!(f.state));
    item
}

/// Whether follow-up `f` is to do in the Monday-to-Sunday week holding `today`: not done,
/// and its window open at some point that week (`due=this-week`; the console's
/// follow-ups page too).
pub fn due_in_week_of(f: &FollowUp, today: Date) -> bool {
    let (monday, sunday) = schedule::week_of(today);
    f.state != FollowUpState::Done && f.opens <= sunday && f.closes >= monday
}

/// Today, as people in the UK see it (the day `/api/follow-ups` defaults to).
pub fn uk_today() -> Date {
    today()
}

/// `GET /api/follow-ups`'s query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowUpQuery {
    due: Option<String>,
    measure: Option<String>,
    practice: Option<String>,
    as_of: Option<String>,
}

/// `GET /api/follow-ups`: follow-ups by state. `due` is `this-week` (the window is open at
/// some point this Monday-to-Sunday week and it is not done), `due-soon`, `due`, `overdue`,
/// `missed` or `all` (every follow-up not done; the default `this-week`). `as_of` fixes the
/// day (default today, UK time).
pub async fn follow_ups(
    State(state): State<AppState>,
    access: Access,
    query: Result<Query<FollowUpQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    require_staff(&access, StaffAction::ViewWorklist)?;
    let Query(query) = query.map_err(|e| {
        Problem::bad_request(format!(
            "{}; the parameters are due, measure, practice and as_of",
            e.body_text()
        ))
    })?;
    let today = as_of(query.as_of.as_deref())?;
    let due = query.due.as_deref().unwrap_or("this-week");
    let wanted: Box<dyn Fn(&FollowUp) -> bool + Send + Sync> = match due {
        "this-week" => Box::new(move |f: &FollowUp| due_in_week_of(f, today)),
        "due-soon" => Box::new(|f: &FollowUp| f.state == FollowUpState::DueSoon),
        "due" => Box::new(|f: &FollowUp| f.state == FollowUpState::Due),
        "overdue" => Box::new(|f: &FollowUp| f.state == FollowUpState::Overdue),
        "missed" => Box::new(|f: &FollowUp| f.state == FollowUpState::Missed),
        "all" => Box::new(|f: &FollowUp| f.state != FollowUpState::Done),
        other => {
            return Err(Problem::bad_request(format!(
                "due '{other}' is not one of this-week, due-soon, due, overdue, missed, all"
            )));
        }
    };
    if let Some(code) = &query.measure
        && state.outcomes.catalogue.get(code).is_none()
    {
        return Err(Problem::bad_request(format!(
            "measure '{code}' is not defined"
        )));
    }
    // Only a referral with a measurement has follow-ups; the others' rows are not read.
    let mut items = Vec::new();
    state
        .store
        .each_measured_referral_facts(|referral| {
            if query
                .practice
                .as_deref()
                .is_some_and(|p| referral.practice.as_deref() != Some(p))
            {
                return;
            }
            for (measure, list) in referral_follow_ups(&state, referral, today) {
                if query.measure.as_deref().is_some_and(|m| m != measure) {
                    continue;
                }
                for f in list.iter().filter(|f| wanted(f)) {
                    let mut item = follow_up_json(&measure, f);
                    item.insert("referral_id".into(), json!(referral.id));
                    item.insert("practice".into(), json!(referral.practice));
                    items.push(Value::Object(item));
                }
            }
        })
        .await?;
    items.sort_by(|a, b| {
        a["date"]
            .as_str()
            .cmp(&b["date"].as_str())
            .then(a["referral_id"].as_str().cmp(&b["referral_id"].as_str()))
    });
    tracing::info!(count = items.len(), "follow-ups listed");
    Ok(Json(json!({ "as_of": today, "due": due, "items": items })).into_response())
}

/// The reports' query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    from: String,
    to: String,
    period: Option<String>,
    format: Option<String>,
    as_of: Option<String>,
}

/// What a report is over, parsed from a query by [`ReportRange::parse`]: the one parser of
/// `/api/reports/…` and `/console/reports…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportRange {
    /// First day counted.
    pub from: Date,
    /// Last day counted.
    pub to: Date,
    /// How counts are grouped.
    pub period: Period,
    /// The day the report stands on (`as_of`, else today, UK).
    pub today: Date,
}

/// The parts of a query a report's range is read from, as given (blank is absent).
#[derive(Debug, Clone, Copy, Default)]
pub struct RangeQuery<'a> {
    /// `from`, a date.
    pub from: Option<&'a str>,
    /// `to`, a date.
    pub to: Option<&'a str>,
    /// `period`: `month` or `quarter` (the default).
    pub period: Option<&'a str>,
    /// `as_of`, a date.
    pub as_of: Option<&'a str>,
}

impl ReportRange {
    /// Reads `query`: a date that is not one, an unknown period, `to` before `from` or a
    /// range over three years is refused with what is wrong (never a silent fall-back: a
    /// commissioner would read other figures than those asked for). Without `to`, today;
    /// without `from`, the year to `to`.
    pub fn parse(query: &RangeQuery<'_>) -> Result<ReportRange, String> {
        let day = |name: &str, value: Option<&str>| -> Result<Option<Date>, String> {
            match value.map(str::trim).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(text) => super::milestones::parse_day(text)
                    .map(Some)
                    .ok_or_else(|| format!("{name} must be a date such as 2026-04-01")),
            }
        };
        let today = day("as_of", query.as_of)?.unwrap_or_else(today);
        let to = day("to", query.to)?.unwrap_or(today);
        let from = day("from", query.from)?.unwrap_or(to - Duration::days(365));
        if to < from || (to - from) > Duration::days(3 * 366) {
            return Err("to must be on or after from, and the range at most three years".into());
        }
        let period = match query.period.map(str::trim) {
            Some("month") => Period::Month,
            None | Some("" | "quarter") => Period::Quarter,
            Some(other) => return Err(format!("period '{other}' is not one of month, quarter")),
        };
        Ok(ReportRange {
            from,
            to,
            period,
            today,
        })
    }
}

/// What of a report to compute.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wanted<'a> {
    /// Only this metric (a drill-down): no other metric, no distributions.
    pub metric: Option<&'a str>,
    /// The service summary too.
    pub summary: bool,
}

/// The one builder of the outcomes report (and, when `wanted`, the service summary) for
/// `/api/reports/…` and `/console/reports…`: the record is streamed a page of referrals at
/// a time through the builders (`Store::each_referral_facts`), so memory follows the
/// people counted in the range, not every referral ever received.
pub async fn build_report(
    state: &AppState,
    range: &ReportRange,
    wanted: Wanted<'_>,
) -> Result<(report::Report, Option<report::ServiceSummary>), crate::store::StoreError> {
    let mut builder = report::OutcomesBuilder::new(
        &state.outcomes.metrics,
        &state.outcomes.catalogue,
        range.period,
        range.from,
        range.to,
        range.today,
    )
    .with_complexity(&state.outcomes.complexity);
    if let Some(metric) = wanted.metric {
        builder = builder.only_metric(metric);
    }
    let mut summary = wanted
        .summary
        .then(|| report::SummaryBuilder::new(range.from, range.to));
    // Every referral, not only those received by `to`: a measurement's `recorded_at` is
    // when the person answered, which may be before Sprig received the referral (a paper
    // baseline entered later).
    state
        .store
        .each_referral_facts(|facts| {
            builder.add(facts);
            if let Some(summary) = &mut summary {
                summary.add(facts);
            }
        })
        .await?;
    let report = builder.finish().with_pcns(&state.pcns.current());
    Ok((report, summary.map(report::SummaryBuilder::finish)))
}

fn report_query(
    query: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<(ReportQuery, ReportRange), Problem> {
    let Query(query) = query.map_err(|e| {
        Problem::bad_request(format!(
            "{}; the parameters are from, to (dates), period (month or quarter), format and as_of",
            e.body_text()
        ))
    })?;
    for (name, value) in [("from", &query.from), ("to", &query.to)] {
        if value.trim().is_empty() {
            return Err(Problem::bad_request(format!(
                "{name} must be a date such as 2026-04-01"
            )));
        }
    }
    let range = ReportRange::parse(&RangeQuery {
        from: Some(&query.from),
        to: Some(&query.to),
        period: query.period.as_deref(),
        as_of: query.as_of.as_deref(),
    })
    .map_err(Problem::bad_request)?;
    Ok((query, range))
}

/// The day a report or list is as of: `as_of` when given, else today (UK).
fn as_of(given: Option<&str>) -> Result<Date, Problem> {
    given.map_or_else(|| Ok(today()), |d| date("as_of", d))
}

/// The outcomes report the query asks for, with the query (for its format).
async fn outcomes_for(
    state: &AppState,
    query: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<(ReportQuery, report::Report), Problem> {
    let (query, range) = report_query(query)?;
    let (report, _) = build_report(state, &range, Wanted::default()).await?;
    Ok((query, report))
}

fn text(content_type: &'static str, body: String) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

/// `GET /api/reports/outcomes?from=&to=&period=&format=`: the counts per metric, period and
/// practice with the change distributions; `format` is `json` (default), `csv`, `fhir` (a
/// Bundle of `Measure` and `MeasureReport`) or `svg` (a chart).
pub async fn outcomes_report(
    State(state): State<AppState>,
    access: Access,
    query: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    require_staff(&access, StaffAction::Reports)?;
    let (query, report) = outcomes_for(&state, query).await?;
    tracing::info!(rows = report.rows.len(), "outcomes report");
    match query.format.as_deref().unwrap_or("json") {
        "json" => Ok(
            Json(serde_json::to_value(&report).map_err(|_| Problem::internal())?).into_response(),
        ),
        "csv" => Ok(text("text/csv; charset=utf-8", report.to_csv())),
        "svg" => Ok(text("image/svg+xml", report.to_svg())),
        "fhir" => Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/fhir+json"),
            )],
            report.to_fhir(&state.fhir_base()).to_string(),
        )
            .into_response()),
        other => Err(Problem::bad_request(format!(
            "format '{other}' is not one of json, csv, fhir, svg"
        ))),
    }
}

/// `GET /api/reports/outcomes/detail?from=&to=`: every person behind every count, with the
/// referral and Observation ids and the NHS number (CSV; `format=json` for JSON).
pub async fn outcomes_detail(
    State(state): State<AppState>,
    access: Access,
    query: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    require_staff(&access, StaffAction::ReportDetail)?;
    let (query, report) = outcomes_for(&state, query).await?;
    tracing::info!(rows = report.detail.len(), "outcomes detail exported");
    match query.format.as_deref().unwrap_or("csv") {
        "csv" => Ok(text("text/csv; charset=utf-8", report.detail_csv())),
        "json" => Ok(Json(json!({ "items": report.detail })).into_response()),
        other => Err(Problem::bad_request(format!(
            "format '{other}' is not one of csv, json"
        ))),
    }
}

/// `GET /api/reports/service?from=&to=`: referrals received in the range, per month, by
/// reason and by practice; accepted, declined, completed; median days to first contact.
pub async fn service_report(
    State(state): State<AppState>,
    access: Access,
    query: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    require_staff(&access, StaffAction::Reports)?;
    let (_, range) = report_query(query)?;
    let mut summary = report::SummaryBuilder::new(range.from, range.to);
    state
        .store
        .each_referral_facts(|facts| summary.add(facts))
        .await?;
    let mut value: Value =
        serde_json::to_value(summary.finish()).map_err(|_| Problem::internal())?;
    value["from"] = json!(range.from);
    value["to"] = json!(range.to);
    Ok((StatusCode::OK, Json(value)).into_response())
}

impl crate::reload::ReloadableFile for crate::outcomes::pcn::PcnDirectory {
    fn referenced_files(&self) -> &[std::path::PathBuf] {
        crate::outcomes::pcn::PcnDirectory::referenced_files(self)
    }

    fn entries(&self) -> usize {
        self.practices()
    }
}

/// The follow-ups of one referral's detail, on today's UK date, as JSON: per measure with
/// a baseline, each follow-up's dates and state.
pub fn detail_follow_ups(
    state: &AppState,
    detail: &crate::referral::record::ReferralDetail,
) -> Value {
    let facts = ReferralFacts {
        id: detail.referral.id.clone(),
        nhs_number: None,
        practice: None,
        // Follow-ups do not read it.
        received_at: parsed(&detail.referral.received_at).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        reason: None,
        reason_count: 0,
        reason_codes: Vec::new(),
        stages: detail
            .timeline
            .iter()
            .filter_map(|c| Some((c.stage, parsed(&c.at)?)))
            .collect(),
        outcomes: detail
            .outcomes
            .iter()
            .filter_map(|o| {
                Some(crate::referral::record::OutcomeFact {
                    id: o.id.clone(),
                    measure: o.measure.clone(),
                    recorded_at: parsed(&o.recorded_at)?,
                    total: o.total,
                })
            })
            .collect(),
        // Follow-ups do not read them.
        milestones: Vec::new(),
    };
    let list: Vec<Value> = referral_follow_ups(state, &facts, today())
        .into_iter()
        .flat_map(|(measure, follow_ups)| {
            follow_ups.into_iter().map(move |f| {
                let mut item = follow_up_json(&measure, &f);
                item.insert("measured_on".into(), json!(f.measured_on));
                Value::Object(item)
            })
        })
        .collect();
    Value::Array(list)
}
