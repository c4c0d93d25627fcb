//! Referrals arriving as a single resource: `POST /fhir/ServiceRequest`
//! (related resources contained; `resource::create` hands them here once
//! validated) and the GP's amendments and withdrawals by
//! `PUT /fhir/ServiceRequest/{id}`, naming the version they change
//! (`If-Match`, or `meta.versionId` per `fhir.update_requires`).
//!
//! The steps after validation: map (the inbound mapping, `mapping::intake`
//! finds its inputs) → one write transaction (the ServiceRequest version,
//! the referral record, the Task, the outbox, the submission kept verbatim)
//! → answer. A referral whose identifier Sprig already holds is answered
//! with the stored one (200), never stored twice.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

use super::AppState;
use super::authenticate::{acts_for, declared_organisation, require_practice, require_scope};
use super::capability::{Interaction, supported};
use super::error::ApiError;
use super::extract::{FhirBody, parse_id};
use super::middleware::RequestContext;
use super::pipeline::{self, CheckedBody, existing_match};
use super::response::{Answer, Written, already_received, received, written};
use crate::config::UpdateRequires;
use crate::fhir::{FhirId, Issue, IssueType, ResourceType, VersionId};
use crate::identity::{Access, Interaction as Scope};
use crate::mapping::intake::{Declared, SubmittedReferral};
use crate::referral::record::{MappedReferral, ReceivedAs, Referral, ReferralFields};
use crate::search::SearchQuery;
use crate::store::referrals::Submission;
use crate::store::{
    ReadOutcome, ResourceWrite, StoreError, StoredResource, Updated, Visibility, WriteTx,
};
use crate::validation::REFERRAL_PROFILE;
use crate::workflow::{Arrival, Workflow, WorkflowError};

/// `POST /fhir/ServiceRequest` of a social prescribing referral, `checked`
/// by `resource::create`.
pub(super) async fn create(
    state: &AppState,
    access: &Access,
    checked: CheckedBody,
    context: &RequestContext,
    answer: Answer,
    if_none_exist: Option<SearchQuery>,
) -> Result<Response, ApiError> {
    let mapped = map_single(state, access, &checked.resource)?;
    require_practice(access, mapped.fields.practice_ods_code.as_deref())?;
    let owner = mapped.fields.practice_ods_code.clone();
    let visibility = access.visibility();
    if if_none_exist.is_none()
        && let Some(existing) = state
            .store
            .committed_referral_by_identifier(owner.as_deref(), &mapped.identifier)
            .await?
    {
        // A resubmission of a referral already committed: answered from a reader,
        // without taking the writer (the check inside the write transaction below
        // still catches one committed since).
        return resubmitted(
            state,
            &existing,
            &mapped.fields,
            &visibility,
            answer,
            checked.issues,
        )
        .await;
    }
    let id = FhirId::generate();
    let identifier = mapped.identifier.clone();
    // The record and its Task are built and checked before the writer is taken: the
    // single SQLite writer is held only for the statements.
    let opening = state.workflow.prepare_open(
        mapped,
        &Arrival {
            service_request_id: &id,
            patient_id: None,
            received_as: ReceivedAs::Resource,
            request_id: &context.request_id,
        },
    )?;
    let mut tx = state.store.begin_deferred_write().await?;
    if let Some(existing) = existing_match(&mut tx, if_none_exist.as_ref(), &visibility).await? {
        // What it found may be another request's write in the same SQLite batch,
        // not yet durable: the empty commit returns once that batch has committed.
        tx.commit().await?;
        let what = Written::matched_existing(&existing);
        return written(&existing, what, answer, checked.issues);
    }
    let CheckedBody {
        resource,
        received: body,
        issues,
        ..
    } = checked;
    // Kept to judge a resubmission by, should another request hold the identifier.
    let fields = opening.referral().fields.clone();
    // The identifier is claimed, not looked up: on SQLite the check runs on the
    // writer just before the statements, so the rows below are built while other
    // requests hold it (building them was half a create's hold).
    let created = async {
        tx.claim_identifier(owner.as_deref(), &identifier).await?;
        let stored = tx
            .create(ResourceWrite {
                resource_type: ResourceType::SERVICE_REQUEST,
                id: &id,
                resource,
                // The body is kept once, in the referral's submission below (same
                // request id), as a Bundle's is: a second copy here was a 4 KB overflow
                // chain and an index entry per referral that no read used (issue 20 §3).
                received: None,
                request_id: &context.request_id,
                owner: owner.as_deref(),
            })
            .await?;
        let referral = state
            .workflow
            .write_opened(&mut tx, opening, &context.request_id)
            .await?;
        tx.add_submission(&Submission {
            referral_id: &referral.id,
            received_at: &referral.received_at,
            received_as: ReceivedAs::Resource.as_str(),
            request_id: &context.request_id,
            correlation_id: context.correlation_id.as_deref(),
            body: &body,
            response: None,
        })
        .await?;
        context.audit.commit_opened(tx, 201, &referral).await?;
        Ok::<_, WorkflowError>((stored, referral))
    }
    .await;
    let (stored, referral) = match created {
        Ok(created) => created,
        // Another request's referral holds the identifier (one received at the same
        // moment, which the read above could not see yet): a resubmission. Its commit
        // is durable by now, so a reader finds it.
        Err(WorkflowError::Store(StoreError::IdentifierHeld(holder))) => {
            let existing = state
                .store
                .committed_referral_by_identifier(owner.as_deref(), &identifier)
                .await?
                // Erased in the moment since: nothing holds it now, and a retry creates it.
                .ok_or(ApiError::Unavailable(StoreError::IdentifierHeld(holder)))?;
            return resubmitted(state, &existing, &fields, &visibility, answer, issues).await;
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(referral_id = %referral.id, task_id = %referral.task_id, "referral received");
    let what = Written {
        status: StatusCode::CREATED,
        message_id: "referral-received",
        message: received(&referral),
    };
    written(&stored, what, answer, issues)
}

/// The answer to a referral whose identifier Sprig already holds (`existing`): the
/// stored ServiceRequest (200) when it is the same referral, a conflict when not.
async fn resubmitted(
    state: &AppState,
    existing: &Referral,
    received: &ReferralFields,
    visibility: &Visibility,
    answer: Answer,
    issues: Vec<Issue>,
) -> Result<Response, ApiError> {
    Workflow::check_resubmission(existing, received)?;
    tracing::info!(referral_id = %existing.id, "referral resubmitted; answering with the stored one");
    let stored = current(
        state,
        ResourceType::SERVICE_REQUEST,
        &existing.id,
        visibility,
    )
    .await?;
    let what = Written {
        status: StatusCode::OK,
        message_id: "referral-already-received",
        message: already_received(existing),
    };
    written(&stored, what, answer, issues)
}

/// `PUT /fhir/ServiceRequest/{id}`: the GP amends or withdraws (status
/// `revoked`) a referral. The update must name the version it changes, so an
/// amendment made on a stale copy cannot overwrite a newer one: `If-Match`,
/// or (`fhir.update_requires = "if-match-or-version-id"`, the default) the
/// body's `meta.versionId` as read; neither is 428, a stale one 412.
pub async fn update(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<(String, String)>, PathRejection>,
    context: RequestContext,
    answer: Answer,
    headers: HeaderMap,
    body: Result<FhirBody, ApiError>,
) -> Result<Response, ApiError> {
    let Path((type_name, raw_id)) = path?;
    let resource_type = supported(&type_name, Interaction::Update)?;
    require_scope(&access, Scope::Update, resource_type.as_str())?;
    let id = parse_id(&raw_id)?;
    let rule = state.settings.fhir.update_requires;
    let header_version = if_match(&headers)?;
    if header_version.is_none() && rule == UpdateRequires::IfMatch {
        return Err(version_required(rule));
    }
    let body = body?;
    if header_version.is_none() && !names_a_version(&body) {
        // Refused before validation: whatever else is wrong, this is what to fix first.
        return Err(version_required(rule));
    }
    let checked = pipeline::check(&state, &body, Some(resource_type), None).await?;
    let expected = match header_version {
        Some(version) => ExpectedVersion::IfMatch(version),
        None => ExpectedVersion::MetaVersionId(body_version(&checked.resource, rule)?),
    };
    match checked.resource.get("id").and_then(|v| v.as_str()) {
        Some(body_id) if body_id == id.as_str() => {}
        other => {
            return Err(ApiError::BadRequest(vec![Issue::error(
                IssueType::Invalid,
                "update-id-mismatch",
                format!(
                    "The resource's id ({}) must be the id in the URL ({id})",
                    other.unwrap_or("missing")
                ),
            )]));
        }
    }
    if !checked.has_profile(REFERRAL_PROFILE) {
        return Err(ApiError::Unprocessable(vec![Issue::error(
            IssueType::NotSupported,
            "update-not-referral",
            format!("Only social prescribing referrals ({REFERRAL_PROFILE}) can be updated"),
        )]));
    }
    let mapped = map_single(&state, &access, &checked.resource)?;
    let mut tx = state.store.begin_write().await?;
    // Another practice's referral is not there, as far as this caller can tell.
    let referral = tx.referral(id.as_str()).await?.filter(|r| acts_for(&access, r.fields.practice_ods_code.as_deref())).ok_or_else(|| {
        ApiError::NotFound(Issue::error(
            IssueType::NotFound,
            "referral-not-found",
            format!(
                "ServiceRequest/{id} is not a referral Sprig holds; send new referrals with POST"
            ),
        ))
    })?;
    let updated = tx
        .update(
            ResourceWrite {
                resource_type,
                id: &id,
                resource: checked.resource,
                // Kept once, in the amendment's submission below.
                received: None,
                request_id: &context.request_id,
                owner: referral.fields.practice_ods_code.as_deref(),
            },
            Some(expected.version()),
        )
        .await
        .map_err(|error| expected.conflict(error))?;
    let stored = match updated {
        Updated::Written(stored) => stored,
        Updated::Unchanged(current) => {
            return unchanged(tx, current, &referral, &context, answer, checked.issues).await;
        }
    };
    let referral = state
        .workflow
        .amend(&mut tx, referral, mapped, &context.request_id)
        .await?;
    tx.add_submission(&Submission {
        referral_id: &referral.id,
        received_at: &referral.updated_at,
        received_as: "update",
        request_id: &context.request_id,
        correlation_id: context.correlation_id.as_deref(),
        body: &checked.received,
        response: None,
    })
    .await?;
    context.audit.note_referral_record(&referral);
    context.audit.commit(tx, 200).await?;
    tracing::info!(referral_id = %referral.id, stage = referral.stage.as_str(), "referral amended");
    let what = Written {
        status: StatusCode::OK,
        message_id: "referral-updated",
        message: format!(
            "ServiceRequest/{id} is now version {}; the referral is {}",
            stored.version_id,
            referral.stage.as_str()
        ),
    };
    written(&stored, what, answer, checked.issues)
}

/// The answer to an update that says what the current version says (a "no-op update",
/// as HAPI calls it): nothing is stored (no version, no amendment, no Task, nothing
/// queued for the practice, no submission kept: like a resubmitted referral), and the
/// answer is 200 with the current version, its ETag and Last-Modified. Often a GP
/// system's retry of an amendment or withdrawal whose answer it did not get.
async fn unchanged(
    tx: WriteTx,
    current: StoredResource,
    referral: &Referral,
    context: &RequestContext,
    answer: Answer,
    issues: Vec<Issue>,
) -> Result<Response, ApiError> {
    context.audit.note_referral_record(referral);
    // Committed, not dropped: the audit row goes with it, and the version read may be
    // another request's write in the same SQLite batch, not yet durable.
    context.audit.commit(tx, 200).await?;
    tracing::info!(referral_id = %referral.id, version = %current.version_id, "referral update changes nothing; nothing stored");
    let what = Written {
        status: StatusCode::OK,
        message_id: "referral-update-unchanged",
        message: format!(
            "ServiceRequest/{} is unchanged: the update says what version {} says, so nothing was stored",
            current.id, current.version_id
        ),
    };
    written(&current, what, answer, issues)
}

/// Maps a referral sent on its own (related resources contained).
fn map_single(
    state: &AppState,
    access: &Access,
    resource: &serde_json::Value,
) -> Result<MappedReferral, ApiError> {
    let declared = declared_organisation(access);
    let inputs = SubmittedReferral {
        referral: resource,
        bundle: None,
    }
    .inputs_with(Declared {
        end_user_organisation: declared.as_ref(),
    });
    Ok(state.workflow.map_inbound(&inputs)?)
}

/// The version an update says it changes, and where it said so.
#[derive(Debug, Clone, Copy)]
enum ExpectedVersion {
    /// The `If-Match` header.
    IfMatch(VersionId),
    /// The body's `meta.versionId` (`fhir.update_requires = "if-match-or-version-id"`).
    MetaVersionId(VersionId),
}

impl ExpectedVersion {
    fn version(self) -> VersionId {
        match self {
            ExpectedVersion::IfMatch(v) | ExpectedVersion::MetaVersionId(v) => v,
        }
    }

    /// A version conflict said in terms of what the client sent.
    fn conflict(self, error: StoreError) -> ApiError {
        match (self, error) {
            (
                ExpectedVersion::MetaVersionId(_),
                StoreError::VersionConflict {
                    resource_type,
                    id,
                    expected,
                    current,
                },
            ) => ApiError::PreconditionFailed(Issue::error(
                IssueType::Conflict,
                "version-conflict",
                format!(
                    "{resource_type}/{id} has changed: meta.versionId names version {expected} but the current version is {current}; read it again and reapply the change"
                ),
            )),
            (_, error) => error.into(),
        }
    }
}

/// The version `If-Match` names (`W/"3"` or `"3"`), if it is sent.
fn if_match(headers: &HeaderMap) -> Result<Option<VersionId>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    let tag = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    VersionId::parse(tag).map(Some).map_err(|_| {
        ApiError::BadRequest(vec![Issue::error(
            IssueType::Value,
            "if-match-invalid",
            "If-Match must be an ETag Sprig gave, such as W/\"2\"",
        )])
    })
}

/// Whether the body, read loosely, has a `meta.versionId` (a body that is not
/// JSON at all is left for `pipeline::check` to explain).
fn names_a_version(body: &FhirBody) -> bool {
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(rename = "versionId")]
        version_id: Option<serde::de::IgnoredAny>,
    }
    #[derive(serde::Deserialize)]
    struct Resource {
        meta: Option<Meta>,
    }
    match serde_json::from_slice::<Resource>(&body.0) {
        Ok(resource) => resource.meta.is_some_and(|m| m.version_id.is_some()),
        Err(_) => true,
    }
}

/// Without `If-Match`, the version the body's `meta.versionId` names (the
/// version the client read), where the setting allows it; 428 without one.
fn body_version(resource: &serde_json::Value, rule: UpdateRequires) -> Result<VersionId, ApiError> {
    let Some(text) = resource.pointer("/meta/versionId").and_then(|v| v.as_str()) else {
        return Err(version_required(rule));
    };
    VersionId::parse(text).map_err(|_| {
        let mut issue = Issue::error(
            IssueType::Value,
            "version-id-invalid",
            format!(
                "meta.versionId '{}' is not a version Sprig gave; send the resource as you read it, or If-Match with its ETag",
                crate::fhir::outcome::shorten(text, 40)
            ),
        );
        issue.expression = Some("ServiceRequest.meta.versionId".into());
        ApiError::BadRequest(vec![issue])
    })
}

/// 428: the update named no version, in the words of the rule in force.
fn version_required(rule: UpdateRequires) -> ApiError {
    let message = match rule {
        UpdateRequires::IfMatch => {
            "An update must say which version it changes: send If-Match with the ETag of the version you read (e.g. If-Match: W/\"1\")"
        }
        UpdateRequires::IfMatchOrVersionId => {
            "An update must say which version it changes: send If-Match with the ETag of the version you read (e.g. If-Match: W/\"1\"), or keep meta.versionId of the version you read in the body"
        }
    };
    ApiError::PreconditionRequired(Issue::error(
        IssueType::Required,
        "if-match-required",
        message,
    ))
}

/// The current version of a resource that must exist.
async fn current(
    state: &AppState,
    resource_type: ResourceType,
    id: &str,
    visibility: &Visibility,
) -> Result<StoredResource, ApiError> {
    let id =
        FhirId::parse(id).map_err(|e| ApiError::internal("reading a stored referral's id", e))?;
    match state.store.read(resource_type, &id, visibility).await? {
        ReadOutcome::Found(stored) => Ok(stored),
        _ => Err(ApiError::internal(
            "reading a referral's current resource",
            format!("{resource_type}/{id} is missing although its referral exists"),
        )),
    }
}
