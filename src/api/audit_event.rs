//! The audit log served as FHIR R4 `AuditEvent` (`GET /fhir/AuditEvent`,
//! `GET /fhir/AuditEvent/{id}`), following the IHE Basic Audit Log Patterns as far as
//! they fit: type `rest`, subtype the FHIR interaction, action C/R/U/E, outcome
//! 0/4/8/12, the caller (and a relaying proxy) as agents, Sprig as the observer, the
//! resource acted on, the patients and referrals returned, and the request id as
//! entities. Administrators only (and the open developer/unauthenticated modes).
//!
//! [`audit_event`] is the one rendering of a row: `sprig audit export` writes the same.

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::negotiate::ResponseFormat;
use crate::fhir::{FhirId, Instant, Issue, IssueType};
use crate::identity::{Access, StaffAction};
use crate::store::{AuditEventRow, AuditFilter, AuditOutcome, AuditPage};

const EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const RESTFUL: &str = "http://hl7.org/fhir/restful-interaction";
const SPRIG_ACTIONS: &str = "https://sprig-gateway.org/fhir/CodeSystem/sprig-audit-action";
pub(super) const CLIENT_IDS: &str = "https://sprig-gateway.org/fhir/Id/client-id";
pub(super) const STAFF_IDS: &str = "https://sprig-gateway.org/fhir/Id/staff-username";
const ODS: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const BALP_ENTITY: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType";
const PARTICIPATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";

/// The search parameters `GET /fhir/AuditEvent` takes.
pub const SEARCH_PARAMS: &[(&str, &str, &str)] = &[
    (
        "date",
        "date",
        "When it was recorded: ge, gt, le, lt, or a day or instant",
    ),
    (
        "agent",
        "token",
        "A client id, staff username or proxy client id",
    ),
    (
        "entity",
        "reference",
        "The resource acted on: Type/id, or an id",
    ),
    (
        "patient",
        "reference",
        "A Patient acted on or whose data was returned",
    ),
    ("type", "token", "Always rest"),
    (
        "subtype",
        "token",
        "The interaction: read, vread, search-type, create, update, transaction, operation, or a Sprig API action",
    ),
    ("outcome", "token", "0, 4, 8 or 12"),
];

/// The FHIR restful-interaction code of an interaction, if it is one.
fn restful_code(interaction: &str) -> Option<&'static str> {
    Some(match interaction {
        "read" => "read",
        "vread" => "vread",
        "update" => "update",
        "create" => "create",
        "search-type" => "search-type",
        "history-instance" => "history-instance",
        "transaction" => "transaction",
        "capabilities" => "capabilities",
        i if i.starts_with("operation:") => "operation",
        _ => return None,
    })
}

/// AuditEvent.action: C, R, U or E.
fn action(interaction: &str) -> &'static str {
    match interaction {
        "create" | "transaction" | "operation:process-message" | "api:outcome" | "api:note" => "C",
        "update" | "api:transition" => "U",
        "read" | "vread" | "history-instance" | "api:referral" | "api:delivery" => "R",
        _ => "E",
    }
}

fn reference(resource_type: &str, id: &str) -> Value {
    json!({"reference": format!("{resource_type}/{id}")})
}

/// One audit row as a FHIR R4 AuditEvent.
pub fn audit_event(row: &AuditEventRow) -> Value {
    let r = &row.record;
    let subtype = match restful_code(&r.interaction) {
        Some(code) => json!({"system": RESTFUL, "code": code}),
        None => json!({"system": SPRIG_ACTIONS, "code": r.interaction}),
    };
    let mut who = match (&r.staff_username, &r.client_id) {
        (Some(username), _) => json!({"identifier": {"system": STAFF_IDS, "value": username}}),
        (None, Some(client)) => json!({"identifier": {"system": CLIENT_IDS, "value": client}}),
        (None, None) => json!({"display": "unknown"}),
    };
    if let Some(role) = &r.staff_role {
        who["display"] = json!(role);
    }
    let mut requestor = json!({
        "type": {"coding": [{"system": PARTICIPATION, "code": "IRCP", "display": "information recipient"}]},
        "who": who,
        "requestor": true,
    });
    if let Some(ods) = r.end_user_ods.as_ref().or(r.ods_code.as_ref()) {
        requestor["altId"] = json!(ods);
        requestor["location"] = json!({"identifier": {"system": ODS, "value": ods}});
    }
    if let Some(peer) = &r.peer_address {
        requestor["network"] = json!({"address": peer, "type": "2"});
    }
    let mut agents = vec![requestor];
    if let Some(proxy) = &r.proxy_id {
        agents.push(json!({
            "type": {"coding": [{"system": PARTICIPATION, "code": "AUT", "display": "author (originator)"}]},
            "who": {"identifier": {"system": CLIENT_IDS, "value": proxy}},
            "requestor": false,
        }));
    }
    let mut entities = Vec::new();
    if let Some(request_id) = &r.request_id {
        entities.push(json!({
            "what": {"identifier": {"value": request_id}},
            "type": {"system": BALP_ENTITY, "code": "XrequestId"},
        }));
    }
    if let (Some(resource_type), Some(id)) = (&r.resource_type, &r.resource_id) {
        entities.push(json!({
            "what": reference(resource_type, id),
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
        }));
    }
    if !r.search_params.is_empty() {
        let mut query = json!({
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
            "description": "search parameter names (values are not recorded)",
            "detail": [{"type": "parameter-names", "valueString": r.search_params.join(",")}],
        });
        if let Some(resource_type) = &r.resource_type {
            query["name"] = json!(resource_type);
        }
        entities.push(query);
    }
    for patient in &r.patient_ids {
        entities.push(json!({
            "what": reference("Patient", patient),
            "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
            "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
        }));
    }
    for referral in &r.referral_ids {
        let acted_on = r.resource_type.as_deref() == Some("ServiceRequest")
            && r.resource_id.as_deref() == Some(referral.as_str());
        if acted_on {
            continue;
        }
        entities.push(json!({
            "what": reference("ServiceRequest", referral),
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
        }));
    }
    if let Some(message_id) = &r.message_id {
        entities.push(json!({
            "what": {"identifier": {"value": message_id}},
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "description": "MessageHeader.id",
        }));
    }
    if r.ignored_end_user_header {
        entities.push(json!({
            "type": {"system": ENTITY_TYPE, "code": "4", "display": "Other"},
            "name": "NHSD-End-User-Organisation",
            "description": "sent by a caller that is not a trusted proxy, and ignored",
        }));
    }
    if let Some(detail) = &r.detail {
        // What a purge or an erasure removed (kinds, counts, a reason code): no content.
        entities.push(json!({
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "description": "removed",
            "detail": [{"type": "removed", "valueString": detail}],
        }));
    }
    if let Some(correlation_id) = &r.correlation_id {
        entities.push(json!({
            "what": {"identifier": {"value": correlation_id}},
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "description": "X-Correlation-ID",
        }));
    }
    json!({
        "resourceType": "AuditEvent",
        "id": row.seq.to_string(),
        "type": {"system": EVENT_TYPE, "code": "rest", "display": "RESTful Operation"},
        "subtype": [subtype],
        "action": action(&r.interaction),
        "recorded": r.recorded_at.to_fhir(),
        "outcome": r.outcome.code(),
        "outcomeDesc": format!("HTTP {}", r.status),
        "agent": agents,
        "source": {
            "observer": {"display": "Sprig"},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}],
        },
        "entity": entities,
    })
}

/// Administrators, and the open modes (`Developer`/`Unauthenticated`, whose
/// `Access` allows every staff action). The `Access` is required: both routes
/// are gated (`api::authenticate::ROUTES`), so the layer has always put one in
/// the request, and a handler reached without it answers 500 (a defect)
/// rather than treating the caller as the developer.
fn may_read_audit(access: &Access) -> bool {
    access.staff_may(StaffAction::Audit)
}

fn forbidden() -> Response {
    // The one error-to-answer mapping: an OperationOutcome with the BaRS `REC_FORBIDDEN` code.
    ApiError::Forbidden(Issue::error(
        IssueType::Forbidden,
        "audit-administrators-only",
        "The audit log is for administrators only",
    ))
    .into_response()
}

fn bad(message: String) -> ApiError {
    ApiError::BadRequest(vec![Issue::error(
        IssueType::Value,
        "audit-search-invalid",
        message,
    )])
}

/// A day (`2026-12-01`, as its midnight UTC) or an instant; `true` when a day.
fn moment(text: &str) -> Result<(Instant, bool), ApiError> {
    if text.len() == 10 {
        let instant = Instant::parse(&format!("{text}T00:00:00Z"))
            .map_err(|_| bad(format!("date {text:?} is not a day or an instant")))?;
        return Ok((instant, true));
    }
    Instant::parse(text)
        .map(|i| (i, false))
        .map_err(|_| bad(format!("date {text:?} is not a day or an instant")))
}

fn next_day(day: Instant) -> Instant {
    let later = day.as_offset_date_time() + time::Duration::days(1);
    Instant::parse(&format!("{}T00:00:00Z", later.date())).unwrap_or(day)
}

fn latest(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| {
        if a.unix_millis() > b.unix_millis() {
            a
        } else {
            b
        }
    }))
}

fn earliest(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| {
        if a.unix_millis() < b.unix_millis() {
            a
        } else {
            b
        }
    }))
}

/// A parsed AuditEvent search.
struct AuditSearch {
    filter: AuditFilter,
    page: AuditPage,
    /// The query without `_after`, for the next link.
    base_query: String,
    /// Nothing can match (a `type` other than `rest`).
    none: bool,
    subtype: Option<String>,
}

fn parse_search(query: &str) -> Result<AuditSearch, ApiError> {
    let mut search = AuditSearch {
        filter: AuditFilter::default(),
        page: AuditPage {
            after: None,
            limit: 50,
        },
        base_query: String::new(),
        none: false,
        subtype: None,
    };
    let mut kept = form_urlencoded::Serializer::new(String::new());
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let value = value.as_ref();
        if name != "_after" {
            kept.append_pair(&name, value);
        }
        match name.as_ref() {
            "date" => {
                let (prefix, rest) = match value.get(..2) {
                    Some(p @ ("ge" | "gt" | "le" | "lt" | "eq")) => (p, &value[2..]),
                    _ => ("eq", value),
                };
                let (at, day) = moment(rest)?;
                let f = &mut search.filter;
                match (prefix, day) {
                    ("ge", _) | ("gt", false) => f.since = latest(f.since, at),
                    ("gt", true) => f.since = latest(f.since, next_day(at)),
                    ("lt", _) => f.before = earliest(f.before, at),
                    ("le", true) => f.before = earliest(f.before, next_day(at)),
                    ("le", false) => {
                        let after = Instant::parse(
                            &(at.as_offset_date_time() + time::Duration::milliseconds(1))
                                .format(&time::format_description::well_known::Rfc3339)
                                .unwrap_or_default(),
                        )
                        .unwrap_or(at);
                        f.before = earliest(f.before, after);
                    }
                    (_, true) => {
                        f.since = latest(f.since, at);
                        f.before = earliest(f.before, next_day(at));
                    }
                    (_, false) => {
                        f.since = latest(f.since, at);
                        f.before = earliest(
                            f.before,
                            Instant::parse(
                                &(at.as_offset_date_time() + time::Duration::milliseconds(1))
                                    .format(&time::format_description::well_known::Rfc3339)
                                    .unwrap_or_default(),
                            )
                            .unwrap_or(at),
                        );
                    }
                }
            }
            "agent" => search.filter.agent = Some(value.to_owned()),
            "entity" => match value.split_once('/') {
                Some((t, id)) => {
                    search.filter.entity_type = Some(t.to_owned());
                    search.filter.entity_id = Some(id.to_owned());
                }
                None => search.filter.entity_id = Some(value.to_owned()),
            },
            "patient" => {
                let id = value.strip_prefix("Patient/").unwrap_or(value);
                search.filter.patient = Some(
                    FhirId::parse(id).map_err(|_| bad(format!("patient {id:?} is not an id")))?,
                );
            }
            "type" => {
                let code = value.rsplit('|').next().unwrap_or(value);
                if code != "rest" {
                    search.none = true;
                }
            }
            "subtype" => {
                search.subtype = Some(value.rsplit('|').next().unwrap_or(value).to_owned());
            }
            "outcome" => {
                search.filter.outcome = Some(
                    AuditOutcome::parse(value)
                        .ok_or_else(|| bad(format!("outcome {value:?} is not 0, 4, 8 or 12")))?,
                );
            }
            "_count" => {
                let count: u32 = value
                    .parse()
                    .map_err(|_| bad(format!("_count {value:?} is not a number")))?;
                search.page.limit = count.clamp(1, 1000);
            }
            "_after" => {
                search.page.after = Some(
                    value
                        .parse()
                        .map_err(|_| bad(format!("_after {value:?} is not a position")))?,
                );
            }
            other => {
                return Err(bad(format!(
                    "AuditEvent cannot be searched by {other}; the parameters are date, agent, entity, patient, type, subtype, outcome and _count"
                )));
            }
        }
    }
    search.base_query = kept.finish();
    Ok(search)
}

/// `GET /fhir/AuditEvent?…`.
pub async fn search(
    State(state): State<AppState>,
    access: Access,
    format: ResponseFormat,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    if !may_read_audit(&access) {
        return Ok(forbidden());
    }
    let search = parse_search(query.as_deref().unwrap_or(""))?;
    let mut events = Vec::new();
    let mut next = None;
    if !search.none {
        // A subtype filter is applied here; keep reading pages until one is filled.
        let mut page = search.page;
        loop {
            let rows = state.store.audit_events(&search.filter, page).await?;
            let full = rows.len() as u32 == page.limit;
            for row in &rows {
                let event = audit_event(row);
                let matches = search.subtype.as_deref().is_none_or(|wanted| {
                    event["subtype"][0]["code"].as_str() == Some(wanted)
                        || row.record.interaction == wanted
                });
                if matches && events.len() < search.page.limit as usize {
                    events.push(event);
                    next = Some(row.seq);
                }
            }
            if !full || events.len() >= search.page.limit as usize {
                if !full && events.len() < search.page.limit as usize {
                    next = None;
                }
                break;
            }
            page.after = rows.last().map(|r| r.seq);
        }
    }
    let base = format!("{}/AuditEvent", state.fhir_base());
    let mut links =
        vec![json!({"relation": "self", "url": format!("{base}?{}", search.base_query)})];
    if let Some(after) = next.filter(|_| events.len() >= search.page.limit as usize) {
        let join = if search.base_query.is_empty() {
            ""
        } else {
            "&"
        };
        links.push(json!({
            "relation": "next",
            "url": format!("{base}?{}{join}_after={after}", search.base_query),
        }));
    }
    let entries: Vec<Value> = events
        .into_iter()
        .map(|event| {
            json!({
                "fullUrl": format!("{base}/{}", event["id"].as_str().unwrap_or("")),
                "resource": event,
                "search": {"mode": "match"},
            })
        })
        .collect();
    let mut bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
    });
    if !entries.is_empty() {
        bundle["entry"] = Value::Array(entries);
    }
    format.render(&bundle)
}

/// `GET /fhir/AuditEvent/{id}`.
pub async fn read(
    State(state): State<AppState>,
    access: Access,
    format: ResponseFormat,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if !may_read_audit(&access) {
        return Ok(forbidden());
    }
    let not_found = || {
        ApiError::NotFound(Issue::error(
            IssueType::NotFound,
            "resource-not-found",
            format!("AuditEvent/{id} is not in the audit log"),
        ))
    };
    let seq: i64 = id.parse().map_err(|_| not_found())?;
    let rows = state
        .store
        .audit_events(
            &AuditFilter::default(),
            AuditPage {
                after: Some(seq - 1),
                limit: 1,
            },
        )
        .await?;
    match rows.first() {
        Some(row) if row.seq == seq => format.render(&audit_event(row)),
        _ => Err(not_found()),
    }
}
