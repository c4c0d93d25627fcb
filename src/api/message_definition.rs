//! `GET /fhir/MessageDefinition[/{id}]`: what Sprig needs in a BaRS
//! `servicerequest-request` message, as the MessageDefinition BaRS asks a
//! receiver to publish (senders read it, and cache it for at most a day).
//! Sprig holds exactly one, built from the same constants and capability
//! table `$process-message` uses, so it cannot promise what the handler
//! does not do. Open like the CapabilityStatement: it holds no one's data.

use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use super::AppState;
use super::capability::SUPPORTED;
use super::error::ApiError;
use super::extract::FhirBase;
use super::message::{MESSAGE_DEFINITION_URL, MESSAGE_EVENTS, SUPPORTED_EVENT};
use super::negotiate::{ResponseFormat, strict_handling};
use crate::fhir::{Issue, IssueType, OperationOutcome, ResourceType};
use crate::validation::{REFERRAL_MESSAGE_PROFILE, REFERRAL_PROFILE};

/// The id of Sprig's one MessageDefinition.
pub const ID: &str = "sprig-servicerequest-request";

/// The search parameters served, with what each matches.
pub const SEARCH_PARAMS: &[(&str, &str, &str)] = &[
    ("_id", "token", "The id (sprig-servicerequest-request)"),
    ("url", "uri", "The canonical URL, exactly"),
    (
        "event",
        "token",
        "The event: code, or system|code (https://fhir.nhs.uk/CodeSystem/message-events-bars|servicerequest-request)",
    ),
];

/// Sprig's MessageDefinition. `date` is the server's start (the definition
/// changes only with the software or its settings).
pub fn message_definition(date: &Value) -> Value {
    // The ServiceRequest is the focus; the other types are stored when they
    // arrive with it (`capability::arrives_with_referral`).
    let mut focus = vec![json!({
        "code": "ServiceRequest",
        "profile": REFERRAL_PROFILE,
        "min": 1,
        "max": "1",
    })];
    focus.extend(
        SUPPORTED
            .iter()
            .filter(|c| c.arrives_with_referral && c.resource_type != ResourceType::SERVICE_REQUEST)
            .map(|c| json!({"code": c.resource_type.as_str(), "min": 0, "max": "*"})),
    );
    json!({
        "resourceType": "MessageDefinition",
        "id": ID,
        "url": MESSAGE_DEFINITION_URL,
        "version": env!("CARGO_PKG_VERSION"),
        "name": "SprigServiceRequestRequest",
        "title": "Sprig: a social prescribing referral (BaRS servicerequest-request)",
        "status": "active",
        "date": date,
        "publisher": "Sprig",
        "description": format!(
            "A referral to the social prescribing service, sent to POST /fhir/$process-message: a Bundle of type message meeting {REFERRAL_MESSAGE_PROFILE}, its first entry a MessageHeader with event {SUPPORTED_EVENT}, reason new (a referral) or update (an amendment, or with ServiceRequest.status revoked a withdrawal), and focus the ServiceRequest, which must meet {REFERRAL_PROFILE}. The entry types listed as focus are stored as Sprig's resources; entries of any other type (an Encounter, a CarePlan…) are accepted and kept verbatim with the message, not stored. The referring practice's ODS code is found through ServiceRequest.requester (an Organization; a PractitionerRole's organization; a Practitioner's role in the message), else MessageHeader.sender, else the NHSD-End-User-Organisation header from a trusted proxy; a message with none is refused. BaRS and UK Core profiles named in meta.profile are reported as not checked (warnings), not refused. Only this event is handled: any other event, and a BaRS validation request (MessageHeader.definition ending -request-validation, or a ServiceRequest with category validation), is refused as not-supported and nothing is stored (check a message with POST /fhir/Bundle/$validate instead). The answer is synchronous: a servicerequest-response message with response.code ok, or an OperationOutcome carrying the BaRS http-error-codes code."
        ),
        "eventCoding": {"system": MESSAGE_EVENTS, "code": SUPPORTED_EVENT},
        "category": "consequence",
        "focus": focus,
        "responseRequired": "always",
    })
}

/// `GET /fhir/MessageDefinition/{id}`.
pub async fn read(
    State(state): State<AppState>,
    format: ResponseFormat,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if id != ID {
        return Err(ApiError::NotFound(Issue::error(
            IssueType::NotFound,
            "message-definition-not-found",
            format!("Sprig holds one MessageDefinition, {ID}; there is none with id '{id}'"),
        )));
    }
    format.render(&message_definition(&state.capability_statement["date"]))
}

/// `GET /fhir/MessageDefinition?url=…&event=…`: the one definition, if it
/// matches every parameter given. Other parameters are ignored (as FHIR
/// search is by default here) and reported in an `outcome` entry, or with
/// `Prefer: handling=strict` refused (400).
pub async fn search(
    State(state): State<AppState>,
    format: ResponseFormat,
    base: FhirBase,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = query.unwrap_or_default();
    let mut matches = true;
    let mut ignored = Vec::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        // Comma-separated values are alternatives (OR), as elsewhere.
        let any = |wanted: &dyn Fn(&str) -> bool| value.split(',').any(wanted);
        let matched = match name.as_ref() {
            "_id" => any(&|v| v == ID),
            "url" => any(&|v| v == MESSAGE_DEFINITION_URL),
            "event" => any(&|v| match v.split_once('|') {
                Some((system, code)) => {
                    (system.is_empty() || system == MESSAGE_EVENTS) && code == SUPPORTED_EVENT
                }
                None => v == SUPPORTED_EVENT,
            }),
            _ => {
                ignored.push(name.into_owned());
                true
            }
        };
        matches &= matched;
    }
    let base = base.as_str();
    let mut entries = Vec::new();
    if matches {
        entries.push(json!({
            "fullUrl": format!("{base}/MessageDefinition/{ID}"),
            "resource": message_definition(&state.capability_statement["date"]),
            "search": {"mode": "match"},
        }));
    }
    let total = entries.len();
    if !ignored.is_empty() && strict_handling(&headers) {
        return Err(ApiError::BadRequest(
            ignored
                .iter()
                .map(|name| {
                    Issue::error(
                        IssueType::NotSupported,
                        "search-parameter-unknown",
                        format!(
                            "The search parameter '{name}' is not supported on MessageDefinition (supported: _id, url, event)"
                        ),
                    )
                })
                .collect(),
        ));
    }
    if !ignored.is_empty() {
        let issues = ignored
            .iter()
            .map(|name| {
                Issue::information(
                    "search-parameter-ignored",
                    format!(
                        "The search parameter '{name}' is not supported on MessageDefinition and was ignored (supported: _id, url, event)"
                    ),
                )
                .with_severity(crate::fhir::IssueSeverity::Warning)
            })
            .collect();
        entries.push(json!({
            "resource": OperationOutcome::new(issues).to_json(None),
            "search": {"mode": "outcome"},
        }));
    }
    let self_link = if query.is_empty() {
        format!("{base}/MessageDefinition")
    } else {
        format!("{base}/MessageDefinition?{query}")
    };
    format.render(&json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": [{"relation": "self", "url": self_link}],
        "entry": entries,
    }))
}

/// The CapabilityStatement's `rest.resource` entry for MessageDefinition.
pub fn capability() -> Value {
    let params: Vec<Value> = SEARCH_PARAMS
        .iter()
        .map(|(name, kind, documentation)| {
            json!({"name": name, "type": kind, "documentation": documentation})
        })
        .collect();
    json!({
        "type": "MessageDefinition",
        "documentation": "Sprig's one MessageDefinition, sprig-servicerequest-request: what a BaRS servicerequest-request message sent to $process-message must hold, which entry types are stored, and what is refused. Readable without a token, like this CapabilityStatement.",
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "versioning": "no-version",
        "readHistory": false,
        "updateCreate": false,
        "conditionalCreate": false,
        "conditionalRead": "not-supported",
        "conditionalUpdate": false,
        "conditionalDelete": "not-supported",
        "searchParam": params,
    })
}

/// The CapabilityStatement's `messaging` entry.
pub fn messaging() -> Value {
    json!([{
        "documentation": "BaRS messaging: POST /fhir/$process-message, synchronously answered. Sprig receives servicerequest-request (MessageDefinition sprig-servicerequest-request); other events and BaRS validation requests are refused as not-supported.",
        "supportedMessage": [{"mode": "receiver", "definition": MESSAGE_DEFINITION_URL}],
    }])
}
