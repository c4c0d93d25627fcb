//! `POST /fhir/$process-message`: a BaRS-style referral message. The first
//! entry is a MessageHeader with event `servicerequest-request`, reason
//! `new` or `update`, and `focus` the ServiceRequest. The answer is
//! synchronous: a `servicerequest-response` message Bundle whose
//! `response.identifier` is the request Bundle's id and whose
//! `response.code` is `ok`, `transient-error` or `fatal-error` (with an
//! OperationOutcome when not ok).
//!
//! `X-Request-ID`, as BaRS uses it: the same id with the same body is a
//! retry and gets the first answer again; with a different body it is 409.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::AppState;
use super::authenticate::{require_practice, require_scope};
use super::capability::arrives_with_referral;
use super::error::{ApiError, nhs_http_error_code, with_status};
use super::extract::{FhirBase, FhirBody};
use super::middleware::RequestContext;
use super::negotiate::ResponseFormat;
use super::pipeline;
use super::response::already_received;
use super::transaction::{
    Action, EntryOutcome, PlannedEntry, WriteAs, conditions_visibility, execute, map_referral,
    open_referral, presettle, referral_entry, write_as_seen,
};
use crate::config::MessageRefusal;
use crate::fhir::identifiers::{NHS_NUMBER_SYSTEM, ODS_ORGANIZATION_SYSTEM};
use crate::fhir::{FhirId, Instant, Issue, IssueType, OperationOutcome, ResourceType};
use crate::identity::{Access, Interaction as Scope};
use crate::referral::record::{ReceivedAs, Referral};
use crate::search::SearchQuery;
use crate::store::WriteTx;
use crate::store::referrals::{MessageRequest, Submission};
use crate::validation::REFERRAL_MESSAGE_PROFILE;
use crate::workflow::Workflow;
/// The BaRS message events code system.
pub const MESSAGE_EVENTS: &str = "https://fhir.nhs.uk/CodeSystem/message-events-bars";

/// The one BaRS event Sprig handles.
pub const SUPPORTED_EVENT: &str = "servicerequest-request";

/// The canonical URL of Sprig's MessageDefinition for that event.
pub const MESSAGE_DEFINITION_URL: &str =
    "https://sprig-gateway.org/fhir/MessageDefinition/sprig-servicerequest-request";

/// `response.code` of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseCode {
    Ok,
    TransientError,
    FatalError,
}

impl ResponseCode {
    /// The code for an answer with this HTTP status: 503 may succeed when retried.
    fn for_status(status: StatusCode) -> Self {
        if status.is_success() {
            ResponseCode::Ok
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            ResponseCode::TransientError
        } else {
            ResponseCode::FatalError
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ResponseCode::Ok => "ok",
            ResponseCode::TransientError => "transient-error",
            ResponseCode::FatalError => "fatal-error",
        }
    }
}

/// `POST /fhir/$process-message`.
pub async fn process_message(
    State(state): State<AppState>,
    access: Access,
    context: RequestContext,
    format: ResponseFormat,
    base: FhirBase,
    body: FhirBody,
) -> Result<Response, ApiError> {
    require_scope(
        &access,
        Scope::ProcessMessage,
        ResourceType::SERVICE_REQUEST.as_str(),
    )?;
    let bytes = &body.0;
    // A resubmission is answered at once, from a reader; `handle` asks again
    // inside its write, for a copy sent while this one was being validated.
    // Request ids are the sender's own: another sender's id is a new request.
    let sender = access.sender_key();
    if let Some(id) = context.caller_request_id()
        && let Some(earlier) = state.store.message_request(&sender, id).await?
    {
        return replay(earlier, bytes, format);
    }

    // A message for an event Sprig does not handle, or a BaRS validation
    // request, is refused before it is validated as a referral message: its
    // sender needs one clear answer, not the profile errors of a message it
    // was never meant to be.
    if let Ok(request) = serde_json::from_slice::<Value>(bytes)
        && let Some(issue) = unsupported(&request)
    {
        tracing::info!("message refused: not a social prescribing referral");
        let status = StatusCode::UNPROCESSABLE_ENTITY;
        return refuse(&state, &base, format, &request, status, vec![issue]);
    }

    let bundle = match pipeline::check(
        &state,
        &body,
        Some(ResourceType::BUNDLE),
        Some(REFERRAL_MESSAGE_PROFILE),
    )
    .await
    {
        Ok(checked) => checked.resource,
        Err(ApiError::Unprocessable(issues)) => {
            let request: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
            let status = StatusCode::UNPROCESSABLE_ENTITY;
            return refuse(&state, &base, format, &request, status, issues);
        }
        Err(other) => return Err(other),
    };

    let answer = handle(&state, &access, format, &base, &bundle, bytes, &context).await;
    match answer {
        Ok(response) => Ok(response),
        Err(error @ ApiError::Internal { .. }) => Err(error),
        Err(error) => {
            let status = error.status();
            refuse(&state, &base, format, &bundle, status, error.into_issues())
        }
    }
}

/// The answer to a refused message that could be read, in the shape
/// `fhir.message_refusal` names: by default a bare OperationOutcome whose
/// errors carry the BaRS `http-error-codes` code for `status`, as the BaRS
/// API specifies for every 4xx and 5xx; or a `servicerequest-response`
/// message carrying it, as FHIR messaging has it.
fn refuse(
    state: &AppState,
    base: &FhirBase,
    format: ResponseFormat,
    request: &Value,
    status: StatusCode,
    issues: Vec<Issue>,
) -> Result<Response, ApiError> {
    let body = match state.settings.fhir.message_refusal {
        MessageRefusal::Outcome => {
            OperationOutcome::new(issues).to_json(nhs_http_error_code(status))
        }
        MessageRefusal::Message => reply(base, request, status, None, issues),
    };
    Ok(with_status(format.render(&body)?, status))
}

/// Why a message is not one Sprig handles, if it is not: an event other
/// than `servicerequest-request`, or a BaRS *validation* request (a
/// `servicerequest-request` whose `MessageHeader.definition` names a
/// validation MessageDefinition, or whose ServiceRequest has category
/// `validation`), which asks whether a referral would be accepted rather
/// than making one. Sprig refuses those rather than half-answer them: a
/// sender checks a message with `POST /fhir/Bundle/$validate`. A message
/// whose header cannot be read is left to validation to explain.
fn unsupported(request: &Value) -> Option<Issue> {
    let header = request
        .pointer("/entry/0/resource")
        .filter(|h| h.get("resourceType").and_then(Value::as_str) == Some("MessageHeader"))?;
    let event = header
        .pointer("/eventCoding/code")
        .and_then(Value::as_str)?;
    if event != SUPPORTED_EVENT {
        return Some(
            Issue::error(
                IssueType::NotSupported,
                "message-event-not-supported",
                format!(
                    "Sprig does not handle '{event}' messages: the one event it supports is '{SUPPORTED_EVENT}' (a social prescribing referral, MessageDefinition {MESSAGE_DEFINITION_URL})"
                ),
            )
            .at("Bundle.entry[0].resource.event"),
        );
    }
    let definition = header
        .get("definition")
        .and_then(Value::as_str)
        .unwrap_or("");
    let validation_category = request
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.get("resource"))
        .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("ServiceRequest"))
        .flat_map(|r| {
            r.get("category")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .flat_map(|c| {
            c.get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .any(|coding| coding.get("code").and_then(Value::as_str) == Some("validation"));
    if definition.ends_with("-validation") || validation_category {
        return Some(Issue::error(
            IssueType::NotSupported,
            "message-validation-not-supported",
            format!(
                "Sprig does not take BaRS validation requests (MessageHeader.definition ending '-validation', or a ServiceRequest with category 'validation'): send the referral itself ({MESSAGE_DEFINITION_URL}), or check a message with POST /fhir/Bundle/$validate"
            ),
        ));
    }
    None
}

async fn handle(
    state: &AppState,
    access: &Access,
    format: ResponseFormat,
    base: &FhirBase,
    bundle: &Value,
    bytes: &[u8],
    context: &RequestContext,
) -> Result<Response, ApiError> {
    let request_id = context.request_id.as_str();
    let caller_request_id = context.caller_request_id();
    let header = bundle.pointer("/entry/0/resource").ok_or_else(|| {
        ApiError::internal(
            "reading a validated message",
            "it has no MessageHeader entry, which its profile requires",
        )
    })?;
    let reason = header
        .pointer("/reason/coding/0/code")
        .and_then(Value::as_str)
        .unwrap_or("");
    let referral_index = referral_entry(bundle)?;
    check_focus(bundle, header, referral_index)?;
    let mapped = map_referral(state, access, bundle, referral_index)?;
    require_practice(access, mapped.fields.practice_ods_code.as_deref())?;

    let visibility = access.visibility();
    let owner = mapped.fields.practice_ods_code.clone();
    let sender = access.sender_key();
    let answering = Answering {
        base,
        bundle,
        bytes,
        context,
        sender: &sender,
    };
    // A new referral's entries, record and Task are built from what a reader sees, and
    // confirmed on the writer (`write_as_seen`), as a transaction Bundle's are; one that
    // meets another write there, or is held already, is written as below.
    if reason == "new"
        && state
            .store
            .committed_referral_by_identifier(owner.as_deref(), &mapped.identifier)
            .await?
            .is_none()
    {
        let (mut plan, referral_at) = plan_message(bundle, referral_index, None)?;
        let presettled = presettle(
            state,
            &plan,
            &conditions_visibility(&visibility, owner.as_deref()),
            referral_at,
            &mapped,
            request_id,
            ReceivedAs::Message,
        )
        .await?;
        let request = caller_request_id.map(|id| (sender.as_str(), id));
        if let WriteAs::Seen(new) = presettled.into_seen(
            &mut plan,
            referral_at,
            &visibility,
            owner.as_deref(),
            request,
        ) {
            let written = write_as_seen(state, context, new, async |tx, _, referral| {
                answering
                    .store_reply(tx, referral, ReceivedAs::Message.as_str(), None)
                    .await
            })
            .await?;
            if let Some(reply_text) = written {
                return Ok(format.render_text(reply_text));
            }
            tracing::info!(
                "referral message met another write on the writer; writing it again from there"
            );
        }
    }

    let mut tx = state.store.begin_write().await?;
    // Again inside the write transaction: the same message may have been sent
    // twice at once, and the other copy committed while this one was being
    // validated. Writes are serialised, so this answer is the last word.
    if let Some(id) = caller_request_id
        && let Some(earlier) = tx.message_request(&sender, id).await?
    {
        // What it found may be another request's write in the same SQLite batch,
        // not yet durable: the empty commit returns once that batch has committed.
        tx.commit().await?;
        return replay(earlier, bytes, format);
    }
    let existing = tx
        .referral_by_identifier(
            mapped.fields.practice_ods_code.as_deref(),
            &mapped.identifier,
        )
        .await?;
    // The message's entries written: a new referral's, or (`existing`) a new version of
    // the stored one's.
    let write_entries =
        async |tx: &mut WriteTx, existing: Option<FhirId>| -> Result<Vec<EntryOutcome>, ApiError> {
            let (mut plan, _) = plan_message(bundle, referral_index, existing)?;
            execute(tx, &mut plan, request_id, &visibility, owner.as_deref()).await
        };
    let (referral, note) = match (reason, existing) {
        ("new", Some(existing)) => {
            Workflow::check_resubmission(&existing, &mapped.fields)?;
            let note = already_received(&existing);
            (existing, Some(("referral-already-received", note)))
        }
        ("new", None) => {
            let outcomes = write_entries(&mut tx, None).await?;
            let referral = open_referral(
                state,
                &mut tx,
                mapped,
                &outcomes,
                ReceivedAs::Message,
                request_id,
                None,
            )
            .await?;
            (referral, None)
        }
        ("update", Some(existing)) => {
            let id = FhirId::parse(&existing.id)
                .map_err(|e| ApiError::internal("reading a stored referral's id", e))?;
            let outcomes = write_entries(&mut tx, Some(id)).await?;
            if outcomes.iter().any(|o| o.written) {
                let referral = state
                    .workflow
                    .amend(&mut tx, existing, mapped, request_id)
                    .await?;
                (referral, None)
            } else {
                // A no-op update (often a retry whose reply was lost): every entry says what
                // Sprig holds, so no version was stored and the referral is not amended (no
                // Task, nothing queued for the practice), whatever its stage. The message
                // itself is kept below with its reply, as every message is. (An entry with
                // no business identifier, such as a Consent, is stored anew by every
                // message, so only a message without one can be a no-op.)
                let note = format!(
                    "The update changes nothing Sprig holds for referral {}; no new version was stored",
                    existing.id
                );
                (existing, Some(("referral-update-unchanged", note)))
            }
        }
        ("update", None) => {
            return Err(ApiError::Unprocessable(vec![Issue::error(
                IssueType::NotFound,
                "referral-not-found",
                "The message updates a referral Sprig has not received (no referral has this identifier); send it with reason 'new'",
            )]));
        }
        (other, _) => {
            return Err(ApiError::Unprocessable(vec![Issue::error(
                IssueType::NotSupported,
                "message-reason-not-supported",
                format!(
                    "MessageHeader.reason '{other}' is not supported: use 'new' for a referral, 'update' to amend it or (with status 'revoked') withdraw it"
                ),
            )]));
        }
    };
    // A note on an `ok` reply informs; severity `error` would contradict the code.
    let info = note.map(|(message_id, n)| Issue::information(message_id, n));
    let received_as = if reason == "update" {
        "update"
    } else {
        ReceivedAs::Message.as_str()
    };
    let reply_text = answering
        .store_reply(&mut tx, &referral, received_as, info)
        .await?;
    context.audit.note_referral_record(&referral);
    context.audit.commit(tx, 200).await?;
    tracing::info!(referral_id = %referral.id, reason, "referral message processed");
    // The text just remembered, so a retry gets these very bytes again.
    Ok(format.render_text(reply_text))
}

/// What a message answered `ok` is replied with, and what keeps it.
struct Answering<'a> {
    base: &'a FhirBase,
    /// The message, validated.
    bundle: &'a Value,
    /// The message as received.
    bytes: &'a [u8],
    context: &'a RequestContext,
    /// Whose `X-Request-ID` it came with (`Access::sender_key`).
    sender: &'a str,
}

impl Answering<'_> {
    /// The `ok` reply about `referral` (with `note`), kept with the message's submission
    /// and, for a caller's `X-Request-ID`, remembered so that a retry gets these very
    /// bytes again. Returns the reply's text.
    async fn store_reply(
        &self,
        tx: &mut WriteTx,
        referral: &Referral,
        received_as: &str,
        note: Option<Issue>,
    ) -> Result<String, ApiError> {
        let reply = reply(
            self.base,
            self.bundle,
            StatusCode::OK,
            Some(referral),
            note.into_iter().collect(),
        );
        let reply_text = reply.to_string();
        tx.add_submission(&Submission {
            referral_id: &referral.id,
            received_at: &Instant::now().to_fhir(),
            received_as,
            request_id: &self.context.request_id,
            correlation_id: self.context.correlation_id.as_deref(),
            body: self.bytes,
            response: Some(&reply_text),
        })
        .await?;
        if let Some(id) = self.context.caller_request_id() {
            tx.remember_message_request(
                self.sender,
                id,
                self.bytes,
                200,
                &reply_text,
                &Instant::now().to_fhir(),
            )
            .await?;
        }
        Ok(reply_text)
    }
}

/// The answer to a message whose `X-Request-ID` was seen before: the same
/// answer for the same body, a conflict for a different one.
fn replay(
    earlier: MessageRequest,
    bytes: &[u8],
    format: ResponseFormat,
) -> Result<Response, ApiError> {
    if earlier.body != bytes {
        return Err(ApiError::Conflict(vec![Issue::error(
            IssueType::Duplicate,
            "request-id-reused",
            "This X-Request-ID was already used for a different message; give each new message a new X-Request-ID",
        )]));
    }
    tracing::info!("message resubmitted with the same X-Request-ID; answering as before");
    let status = StatusCode::from_u16(earlier.status).map_err(|_| {
        ApiError::internal(
            "reading a stored message answer",
            format!("its status {} is not an HTTP status", earlier.status),
        )
    })?;
    // As the first answer was sent: the stored text, in the format this request asked for.
    Ok(with_status(format.render_text(earlier.response), status))
}

/// `MessageHeader.focus` must name the ServiceRequest entry.
fn check_focus(bundle: &Value, header: &Value, referral_index: usize) -> Result<(), ApiError> {
    let focus = header
        .pointer("/focus/0/reference")
        .and_then(Value::as_str)
        .unwrap_or("");
    let entry = bundle.pointer(&format!("/entry/{referral_index}"));
    let full_url = entry.and_then(|e| e.get("fullUrl")).and_then(Value::as_str);
    let id = entry
        .and_then(|e| e.pointer("/resource/id"))
        .and_then(Value::as_str);
    let names_it = Some(focus) == full_url
        || id.is_some_and(|id| focus.ends_with(&format!("ServiceRequest/{id}")));
    if names_it {
        Ok(())
    } else {
        let mut issue = Issue::error(
            IssueType::Invalid,
            "message-focus",
            "MessageHeader.focus must reference the message's ServiceRequest entry (by its fullUrl)",
        );
        issue.expression = Some("Bundle.entry[0].resource.focus[0]".into());
        Err(ApiError::Unprocessable(vec![issue]))
    }
}

/// A message's entries as writes: the header is not stored, nor are types
/// that do not arrive with referrals (`capability::arrives_with_referral`);
/// a Patient or Organization with an NHS number or ODS code updates the one
/// Sprig holds (so repeated messages do not multiply them); the
/// ServiceRequest is new, or (reason `update`) a new version of the stored one.
/// With the referral's position in the plan (not the message's: the header is not in
/// it).
fn plan_message(
    bundle: &Value,
    referral_index: usize,
    existing_referral: Option<FhirId>,
) -> Result<(Vec<PlannedEntry>, usize), ApiError> {
    let empty = Vec::new();
    let entries = bundle
        .get("entry")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let mut plan = Vec::new();
    let mut referral_at = None;
    let mut existing_referral = existing_referral;
    for (index, entry) in entries.iter().enumerate().skip(1) {
        let resource = entry.get("resource").cloned().unwrap_or(Value::Null);
        let type_name = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("");
        let resource_type = ResourceType::parse(type_name).map_err(|e| {
            ApiError::Unprocessable(vec![Issue::error(
                IssueType::Invalid,
                "message-entry-type",
                e.to_string(),
            )])
        })?;
        // A BaRS message may carry more (Encounter, CarePlan, Flag…, or a
        // Task of the sender's): those stay in the message, kept verbatim
        // with the submission, and are not stored as Sprig's resources.
        if !arrives_with_referral(resource_type) {
            continue;
        }
        let action = if index == referral_index {
            referral_at = Some(plan.len());
            match existing_referral.take() {
                Some(id) => Action::Update(id),
                None => Action::Create,
            }
        } else {
            match business_identifier(&resource) {
                Some((system, value)) => {
                    let query = format!("identifier={system}|{value}");
                    Action::UpdateMatching(
                        SearchQuery::parse(resource_type, &query)
                            .map_err(ApiError::Unprocessable)?,
                    )
                }
                None => Action::Create,
            }
        };
        plan.push(PlannedEntry::new(entry, resource_type, resource, action));
    }
    let referral_at = referral_at.ok_or_else(|| {
        ApiError::internal(
            "planning a validated message",
            "its referral is not among the entries Sprig stores",
        )
    })?;
    Ok((plan, referral_at))
}

/// The NHS number of a Patient, or the ODS code of an Organization.
fn business_identifier(resource: &Value) -> Option<(&'static str, String)> {
    let system = match resource.get("resourceType").and_then(Value::as_str)? {
        "Patient" => NHS_NUMBER_SYSTEM,
        "Organization" => ODS_ORGANIZATION_SYSTEM,
        _ => return None,
    };
    resource
        .get("identifier")?
        .as_array()?
        .iter()
        .find(|i| i.get("system").and_then(Value::as_str) == Some(system))
        .and_then(|i| i.get("value"))
        .and_then(Value::as_str)
        .filter(|v| !v.contains(['|', ',', '&', '$']))
        .map(|v| (system, v.to_owned()))
}

/// The `servicerequest-response` message for an answer sent with `status`.
fn reply(
    base: &FhirBase,
    request: &Value,
    status: StatusCode,
    referral: Option<&Referral>,
    issues: Vec<Issue>,
) -> Value {
    let code = ResponseCode::for_status(status);
    let header = request.pointer("/entry/0/resource");
    let outcome_id = FhirId::generate();
    let header_id = FhirId::generate();
    let base = base.as_str();
    let mut message_header = json!({
        "resourceType": "MessageHeader",
        "id": header_id.as_str(),
        "eventCoding": {"system": MESSAGE_EVENTS, "code": "servicerequest-response"},
        "destination": [{
            "endpoint": header
                .and_then(|h| h.pointer("/source/endpoint"))
                .cloned()
                .unwrap_or_else(|| json!("unknown")),
        }],
        "source": {
            "name": "Sprig",
            "software": "Sprig",
            "version": env!("CARGO_PKG_VERSION"),
            "endpoint": header
                .and_then(|h| h.pointer("/destination/0/endpoint"))
                .cloned()
                .unwrap_or_else(|| json!(base)),
        },
        "response": {
            "identifier": request.get("id").and_then(Value::as_str).unwrap_or("unknown"),
            "code": code.as_str(),
        },
    });
    if let Some(referral) = referral {
        message_header["focus"] = json!([
            {"reference": format!("{base}/ServiceRequest/{}", referral.id)},
            {"reference": format!("{base}/Task/{}", referral.task_id)},
        ]);
    }
    let mut entries = vec![json!({
        "fullUrl": format!("urn:uuid:{header_id}"),
        "resource": message_header,
    })];
    if !issues.is_empty() {
        // The NHS error code names the HTTP status actually sent (a 503 is
        // REC_UNAVAILABLE, a 409 REC_CONFLICT), as it does under /fhir.
        let mut outcome = OperationOutcome::new(issues).to_json(nhs_http_error_code(status));
        outcome["id"] = json!(outcome_id.as_str());
        entries[0]["resource"]["response"]["details"] =
            json!({"reference": format!("urn:uuid:{outcome_id}")});
        entries.push(json!({
            "fullUrl": format!("urn:uuid:{outcome_id}"),
            "resource": outcome,
        }));
    }
    json!({
        "resourceType": "Bundle",
        "id": FhirId::generate().as_str(),
        "meta": {"lastUpdated": Instant::now().to_fhir()},
        "type": "message",
        "timestamp": Instant::now().to_fhir(),
        "entry": entries,
    })
}
