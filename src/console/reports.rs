//! `/console/reports` (service managers and administrators): the outcomes report a
//! contract pays on, per metric and period (month or quarter), per practice and per PCN
//! (achieved, eligible, due but missing), the distribution of changes per measure, and the
//! service summary, with charts drawn here as SVG (no script) and the table behind every
//! chart; exports to download (the same functions as `/api/reports/outcomes`, which needs a
//! bearer token a browser session does not carry); and, for managers, a drill-down from a
//! count to the referrals behind it (`/console/reports/referrals`).
//!
//! Accessibility: every chart has a text alternative and its numbers in a table; counts are
//! written as numbers beside the bars, so nothing is told by colour alone.

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;
use time::Date;

use super::{ConsoleError, Result, html, require};
use crate::api::AppState;
use crate::api::middleware::RequestContext;
use crate::api::outcomes::{RangeQuery, ReportRange, Wanted, build_report};
use crate::identity::{Access, ConsoleSession, StaffAction};
use crate::outcomes::report::{self, Period, Report, ServiceSummary, Status};

/// The reports routes (each is in `api::authenticate::ROUTES`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/reports", get(page))
        .route("/console/reports/export", get(export))
        .route("/console/reports/referrals", get(referrals))
}

/// The page's query: the range and grouping; for the drill-down and the export, what to
/// show.
#[derive(Debug, Default, Deserialize)]
pub struct ReportsQuery {
    from: Option<String>,
    to: Option<String>,
    period: Option<String>,
    format: Option<String>,
    metric: Option<String>,
    cell: Option<String>,
    practice: Option<String>,
    pcn: Option<String>,
    status: Option<String>,
}

/// The range, grouping and the report over it.
struct Built {
    from: Date,
    to: Date,
    period: Period,
    report: Report,
    summary: Option<ServiceSummary>,
}

/// The query, or a 400 saying it cannot be read (a repeated or malformed parameter).
fn read_query(
    query: std::result::Result<Query<ReportsQuery>, QueryRejection>,
) -> Result<ReportsQuery> {
    query
        .map(|Query(q)| q)
        .map_err(|rejection| ConsoleError::BadRequest(rejection.body_text()))
}

/// The report the query asks for (by default the twelve months to today, per quarter),
/// parsed and built by the API's own `ReportRange::parse` and `build_report`: `wanted`
/// says what of it the page, export or drill-down shows.
async fn build(state: &AppState, query: &ReportsQuery, wanted: Wanted<'_>) -> Result<Built> {
    let range = ReportRange::parse(&RangeQuery {
        from: query.from.as_deref(),
        to: query.to.as_deref(),
        period: query.period.as_deref(),
        as_of: None,
    })
    .map_err(|message| ConsoleError::BadRequest(sentence(&message)))?;
    let (report, summary) = build_report(state, &range, wanted).await?;
    Ok(Built {
        from: range.from,
        to: range.to,
        period: range.period,
        report,
        summary,
    })
}

/// A message as a sentence (capital first).
fn sentence(message: &str) -> String {
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn period_code(period: Period) -> &'static str {
    match period {
        Period::Month => "month",
        Period::Quarter => "quarter",
    }
}

fn link(base: &str, pairs: &[(&str, &str)]) -> String {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    format!("{base}?{query}")
}

/// `GET /console/reports`.
async fn page(
    State(state): State<AppState>,
    access: Access,
    Extension(session): Extension<ConsoleSession>,
    query: std::result::Result<Query<ReportsQuery>, QueryRejection>,
) -> Result<Response> {
    require(&access, StaffAction::Reports)?;
    let query = read_query(query)?;
    let wanted = Wanted {
        metric: None,
        summary: true,
    };
    let built = build(&state, &query, wanted).await?;
    let drill = access.staff_may(StaffAction::ReportDetail);
    Ok(html(
        StatusCode::OK,
        super::pages::layout("Reports", Some(&session), body(&built, drill)),
    ))
}

/// `GET /console/reports/export?format=csv|fhir|detail-csv`: the report as the API gives it;
/// the detail (NHS numbers) for managers only.
async fn export(
    State(state): State<AppState>,
    access: Access,
    context: RequestContext,
    query: std::result::Result<Query<ReportsQuery>, QueryRejection>,
) -> Result<Response> {
    require(&access, StaffAction::Reports)?;
    let query = read_query(query)?;
    let built = build(&state, &query, Wanted::default()).await?;
    let name = format!("outcomes-{}-{}", built.from, built.to);
    let (content_type, extension, body) = match query.format.as_deref() {
        Some("fhir") => (
            "application/fhir+json",
            "json",
            built.report.to_fhir(&state.fhir_base()).to_string(),
        ),
        Some("detail-csv") => {
            require(&access, StaffAction::ReportDetail)?;
            for d in &built.report.detail {
                context.audit.note_referral(&d.referral_id);
            }
            ("text/csv; charset=utf-8", "csv", built.report.detail_csv())
        }
        None | Some("" | "csv") => ("text/csv; charset=utf-8", "csv", built.report.to_csv()),
        Some(_) => {
            return Err(ConsoleError::BadRequest(
                "format must be csv, fhir or detail-csv".into(),
            ));
        }
    };
    let disposition = format!("attachment; filename=\"{name}.{extension}\"");
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// `GET /console/reports/referrals` (service managers): the referrals behind one count
/// (metric, period, practice or PCN, status), each linked to its page.
async fn referrals(
    State(state): State<AppState>,
    access: Access,
    Extension(session): Extension<ConsoleSession>,
    context: RequestContext,
    query: std::result::Result<Query<ReportsQuery>, QueryRejection>,
) -> Result<Response> {
    require(&access, StaffAction::ReportDetail)?;
    let query = read_query(query)?;
    let metric = query.metric.as_deref().unwrap_or_default();
    let wanted = Wanted {
        metric: Some(metric),
        summary: false,
    };
    let built = build(&state, &query, wanted).await?;
    let cell = query.cell.as_deref().unwrap_or_default();
    let status = query.status.as_deref().unwrap_or("eligible");
    let rows: Vec<&report::DetailRow> = built
        .report
        .detail
        .iter()
        .filter(|d| d.metric == metric && d.period == cell)
        .filter(|d| match query.practice.as_deref() {
            None | Some("all") => true,
            Some(p) => d.practice == p,
        })
        .filter(|d| query.pcn.as_deref().is_none_or(|p| d.pcn == p))
        .filter(|d| match status {
            "achieved" => d.status == Status::Achieved,
            "missing" => d.status == Status::Missing,
            _ => true,
        })
        .collect();
    for d in &rows {
        context.audit.note_referral(&d.referral_id);
    }
    let title = built
        .report
        .metrics
        .iter()
        .find(|m| m.id == metric)
        .map_or(metric, |m| m.title.as_str());
    let (from, to) = (built.from.to_string(), built.to.to_string());
    let back = link(
        "/console/reports",
        &[
            ("from", from.as_str()),
            ("to", to.as_str()),
            ("period", period_code(built.period)),
        ],
    );
    let where_ = match (query.practice.as_deref(), query.pcn.as_deref()) {
        (Some(p), _) if p != "all" => format!("practice {p}"),
        (_, Some(p)) => format!("PCN {p}"),
        _ => "all practices".to_owned(),
    };
    let complexity = rows.iter().any(|d| d.complex_needs.is_some());
    let body = html! {
        a class="nhsuk-back-link" href=(back) { "Back to reports" }
        h1 { "Referrals behind a count" }
        p class="nhsuk-body" { (title) ", " (cell) ", " (where_) ": " (status) " (" (rows.len()) ")" }
        table class="nhsuk-table" {
            caption class="nhsuk-table__caption" { "Referrals counted" }
            thead { tr {
                th scope="col" { "Referral" } th scope="col" { "Practice" } th scope="col" { "Status" }
                th scope="col" { "Date" } th scope="col" { "Baseline Observation" }
                th scope="col" { "Follow-up Observation" } th scope="col" { "Change" }
                @if complexity { th scope="col" { "Complex needs because" } }
            } }
            tbody {
                @for d in &rows {
                    tr {
                        td { a href={"/console/referrals/" (d.referral_id)} { (d.referral_id) } }
                        td { (d.practice) }
                        td { (status_label(d.status)) }
                        td { (d.on) }
                        td { (d.baseline_observation.as_deref().unwrap_or("\u{2013}")) }
                        td { (d.follow_up_observation.as_deref().unwrap_or("\u{2013}")) }
                        td { (d.change.map(|c| c.to_string()).unwrap_or_else(|| "\u{2013}".into())) }
                        @if complexity { td { (d.complex_needs.as_deref().unwrap_or("\u{2013}")) } }
                    }
                }
            }
        }
    };
    Ok(html(
        StatusCode::OK,
        super::pages::layout("Referrals behind a count", Some(&session), body),
    ))
}

fn status_label(status: Status) -> &'static str {
    match status {
        Status::Achieved => "Achieved",
        Status::NotAchieved => "Measured, not achieved",
        Status::Missing => "Due but missing",
        Status::Pending => "Not yet due",
    }
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "\u{2013}".into()
    } else {
        format!("{:.0}%", part as f64 * 100.0 / whole as f64)
    }
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A horizontal bar chart: per label, a light bar (the whole) and a dark bar inside it
/// (the part), with "part of whole" written beside it, so the numbers are read as text;
/// `single`: one quantity per label (the part), written alone.
fn bars(title: &str, items: &[(String, u64, u64)], single: bool) -> Markup {
    let bar = 18usize;
    let height = 16 + items.len() * (bar + 10);
    let most = items.iter().map(|i| i.2.max(i.1)).max().unwrap_or(1).max(1);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 640 {height}\" width=\"100%\" role=\"img\" aria-label=\"{}\" font-family=\"sans-serif\" font-size=\"13\">",
        xml(title)
    );
    for (i, (label, part, whole)) in items.iter().enumerate() {
        let y = 8 + i * (bar + 10);
        let w_whole = 300 * (*whole).max(*part) as usize / most as usize;
        let w_part = 300 * *part as usize / most as usize;
        let text = if single {
            part.to_string()
        } else {
            format!("{part} of {whole}")
        };
        svg.push_str(&format!(
            "<text x=\"0\" y=\"{}\" fill=\"#212b32\">{}</text><rect x=\"200\" y=\"{y}\" width=\"{w_whole}\" height=\"{bar}\" fill=\"#aeb7bd\"/><rect x=\"200\" y=\"{y}\" width=\"{w_part}\" height=\"{bar}\" fill=\"#005eb8\"/><text x=\"{}\" y=\"{}\" fill=\"#212b32\">{text}</text>",
            y + 13,
            xml(label),
            206 + w_whole,
            y + 13,
        ));
    }
    svg.push_str("</svg>");
    html! { (PreEscaped(svg)) }
}

fn body(built: &Built, drill: bool) -> Markup {
    let r = &built.report;
    let from_text = built.from.to_string();
    let to_text = built.to.to_string();
    let (from, to) = (from_text.as_str(), to_text.as_str());
    let period = period_code(built.period);
    let export = |format: &str| {
        link(
            "/console/reports/export",
            &[
                ("from", from),
                ("to", to),
                ("period", period),
                ("format", format),
            ],
        )
    };
    let drill_link = |metric: &str, cell: &str, scope: (&str, &str), status: &str| {
        link(
            "/console/reports/referrals",
            &[
                ("from", from),
                ("to", to),
                ("period", period),
                ("metric", metric),
                ("cell", cell),
                scope,
                ("status", status),
            ],
        )
    };
    let count = |n: u64, metric: &str, cell: &str, scope: (&str, &str), status: &str| {
        html! {
            @if drill && n > 0 {
                a href=(drill_link(metric, cell, scope, status)) { (n) span class="nhsuk-u-visually-hidden" { " " (status) " referrals" } }
            } @else { (n) }
        }
    };
    // The page always asks for the summary; an empty one stands in should it not.
    let empty;
    let s = match &built.summary {
        Some(s) => s,
        None => {
            empty = report::SummaryBuilder::new(built.from, built.to).finish();
            &empty
        }
    };
    html! {
        h1 { "Reports" }
        form method="get" action="/console/reports" novalidate {
            div class="nhsuk-form-group" {
                label class="nhsuk-label" for="from" { "From" }
                input class="nhsuk-input nhsuk-input--width-10" id="from" name="from" type="date" value=(from);
            }
            div class="nhsuk-form-group" {
                label class="nhsuk-label" for="to" { "To" }
                input class="nhsuk-input nhsuk-input--width-10" id="to" name="to" type="date" value=(to);
            }
            div class="nhsuk-form-group" {
                label class="nhsuk-label" for="period" { "Group by" }
                select class="nhsuk-select" id="period" name="period" {
                    option value="quarter" selected[built.period == Period::Quarter] { "Quarter" }
                    option value="month" selected[built.period == Period::Month] { "Month" }
                }
            }
            button class="nhsuk-button nhsuk-button--secondary" type="submit" { "Show" }
        }
        h2 { "Download" }
        ul class="nhsuk-list" {
            li { a href=(export("csv")) { "Counts (CSV)" } }
            li { a href=(export("fhir")) { "FHIR Measure and MeasureReport (JSON)" } }
            @if drill { li { a href=(export("detail-csv")) { "Every person behind every count (CSV, personal data)" } } }
        }
        p class="nhsuk-body" { "API clients: the same exports at " code { "/api/reports/outcomes" } " and " code { "/api/reports/outcomes/detail" } "." }

        h2 id="outcomes" { "Outcome metrics" }
        @for m in &r.metrics {
            @let rows: Vec<&report::Row> = r.rows.iter().filter(|x| x.metric == m.id && x.practice == "all").collect();
            h3 { (m.title) }
            @if rows.is_empty() {
                p class="nhsuk-body" { "Nobody eligible in this range." }
            } @else {
                (bars(&format!("{}: achieved of eligible per period", m.title),
                    &rows.iter().map(|x| (x.period.clone(), x.achieved, x.eligible)).collect::<Vec<_>>(), false))
                table class="nhsuk-table" {
                    caption class="nhsuk-table__caption" { (m.title) ", all practices" }
                    thead { tr {
                        th scope="col" { "Period" } th scope="col" { "Eligible" } th scope="col" { "Achieved" }
                        th scope="col" { "Share" } th scope="col" { "Due but missing" }
                        @if rows.iter().any(|x| x.mean_change.is_some()) { th scope="col" { "Mean change" } th scope="col" { "Share payable" } }
                    } }
                    tbody {
                        @for x in &rows {
                            tr {
                                th scope="row" { (x.period) }
                                td { (count(x.eligible, &m.id, &x.period, ("practice", "all"), "eligible")) }
                                td { (count(x.achieved, &m.id, &x.period, ("practice", "all"), "achieved")) }
                                td { (percent(x.achieved, x.eligible)) }
                                td { (count(x.missing, &m.id, &x.period, ("practice", "all"), "missing")) }
                                @if rows.iter().any(|x| x.mean_change.is_some()) {
                                    td { (x.mean_change.map(|c| c.to_string()).unwrap_or_default()) }
                                    td { (x.payable_fraction.map(|c| format!("{:.0}%", c * rust_decimal::Decimal::from(100))).unwrap_or_default()) }
                                }
                            }
                        }
                    }
                }
                @let practices: Vec<&report::Row> = r.rows.iter().filter(|x| x.metric == m.id && x.practice != "all").collect();
                details class="nhsuk-details" {
                    summary class="nhsuk-details__summary" { span class="nhsuk-details__summary-text" { "Per practice and per PCN" } }
                    div class="nhsuk-details__text" {
                        table class="nhsuk-table" {
                            caption class="nhsuk-table__caption" { (m.title) ", per practice" }
                            thead { tr { th scope="col" { "Period" } th scope="col" { "Practice" } th scope="col" { "Eligible" } th scope="col" { "Achieved" } th scope="col" { "Due but missing" } } }
                            tbody {
                                @for x in &practices {
                                    tr {
                                        td { (x.period) } th scope="row" { (x.practice) }
                                        td { (count(x.eligible, &m.id, &x.period, ("practice", &x.practice), "eligible")) }
                                        td { (count(x.achieved, &m.id, &x.period, ("practice", &x.practice), "achieved")) }
                                        td { (count(x.missing, &m.id, &x.period, ("practice", &x.practice), "missing")) }
                                    }
                                }
                            }
                        }
                        table class="nhsuk-table" {
                            caption class="nhsuk-table__caption" { (m.title) ", per Primary Care Network" }
                            thead { tr { th scope="col" { "Period" } th scope="col" { "PCN" } th scope="col" { "Eligible" } th scope="col" { "Achieved" } th scope="col" { "Due but missing" } } }
                            tbody {
                                @for x in r.pcn_rows.iter().filter(|x| x.metric == m.id) {
                                    tr {
                                        td { (x.period) }
                                        th scope="row" { (x.pcn_name.as_deref().unwrap_or(&x.pcn)) }
                                        td { (count(x.eligible, &m.id, &x.period, ("pcn", &x.pcn), "eligible")) }
                                        td { (count(x.achieved, &m.id, &x.period, ("pcn", &x.pcn), "achieved")) }
                                        td { (count(x.missing, &m.id, &x.period, ("pcn", &x.pcn), "missing")) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }

        h2 id="changes" { "Changes per measure" }
        table class="nhsuk-table" {
            caption class="nhsuk-table__caption" { "Change from baseline to each follow-up dated in the range (raw score; people measured at both)" }
            thead { tr {
                th scope="col" { "Measure" } th scope="col" { "Follow-up" } th scope="col" { "People" }
                th scope="col" { "Lowest" } th scope="col" { "Lower quartile" } th scope="col" { "Median" }
                th scope="col" { "Upper quartile" } th scope="col" { "Highest" } th scope="col" { "Mean" }
            } }
            tbody {
                @for d in &r.distributions {
                    @let show = |v: Option<rust_decimal::Decimal>| v.map(|v| v.to_string()).unwrap_or_else(|| "\u{2013}".into());
                    tr {
                        th scope="row" { (d.measure) } td { (d.follow_up) } td { (d.n) }
                        td { (show(d.min)) } td { (show(d.q1)) } td { (show(d.median)) }
                        td { (show(d.q3)) } td { (show(d.max)) } td { (show(d.mean)) }
                    }
                }
            }
        }

        h2 id="service" { "Service summary" }
        dl class="nhsuk-summary-list" {
            div class="nhsuk-summary-list__row" { dt class="nhsuk-summary-list__key" { "Referrals received" } dd class="nhsuk-summary-list__value" { (s.received) } }
            div class="nhsuk-summary-list__row" { dt class="nhsuk-summary-list__key" { "Accepted" } dd class="nhsuk-summary-list__value" { (s.accepted) " (" (percent(s.accepted, s.received)) ")" } }
            div class="nhsuk-summary-list__row" { dt class="nhsuk-summary-list__key" { "Declined" } dd class="nhsuk-summary-list__value" { (s.declined) " (" (percent(s.declined, s.received)) ")" } }
            div class="nhsuk-summary-list__row" { dt class="nhsuk-summary-list__key" { "Completed" } dd class="nhsuk-summary-list__value" { (s.completed) " (" (percent(s.completed, s.received)) ")" } }
            div class="nhsuk-summary-list__row" { dt class="nhsuk-summary-list__key" { "Median days to first contact" } dd class="nhsuk-summary-list__value" { (s.median_days_to_first_contact.map(|d| d.to_string()).unwrap_or_else(|| "\u{2013}".into())) } }
        }
        @let months: Vec<(String, u64, u64)> = s.received_per_month.iter().map(|(m, n)| (m.clone(), *n, *n)).collect();
        @if !months.is_empty() {
            (bars("Referrals received per month", &months, true))
        }
        table class="nhsuk-table" {
            caption class="nhsuk-table__caption" { "Referrals received per month" }
            thead { tr { th scope="col" { "Month" } th scope="col" { "Received" } } }
            tbody { @for (m, n) in &s.received_per_month { tr { th scope="row" { (m) } td { (n) } } } }
        }
        table class="nhsuk-table" {
            caption class="nhsuk-table__caption" { "By reason" }
            thead { tr { th scope="col" { "Reason" } th scope="col" { "Received" } } }
            tbody { @for (m, n) in &s.by_reason { tr { th scope="row" { (m) } td { (n) } } } }
        }
        table class="nhsuk-table" {
            caption class="nhsuk-table__caption" { "By practice" }
            thead { tr { th scope="col" { "Practice" } th scope="col" { "Received" } } }
            tbody { @for (m, n) in &s.by_practice { tr { th scope="row" { (m) } td { (n) } } } }
        }
    }
}
