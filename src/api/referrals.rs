//! Referrals arriving as a single resource: `POST /fhir/ServiceRequest`
//! (related resources contained) and the GP's amendments and withdrawals by
//! `PUT /fhir/ServiceRequest/{id}` with `If-Match`.
//!
//! The pipeline after validation: map (the inbound mapping, `mapping::intake`
//! finds its inputs) → one write transaction (the ServiceRequest version,
//! the referral record, the Task, the outbox, the submission kept verbatim)
//! → answer. A referral whose identifier Sprig already holds is answered
//! with the stored one (200), never stored twice.

use axum::Extension;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

use super::AppState;
use super::capability::{Interaction, supported};
use super::error::ApiError;
use super::middleware::RequestContext;
use super::negotiate::{ResponseFormat, ReturnPreference, require_json_body};
use super::resource::{
    Checked, Written, bad_path, check_body, existing_match, matched_existing, parse_id, read_body,
    written,
};
use crate::fhir::{FhirId, Issue, IssueType, ResourceType, VersionId};
use crate::mapping::intake::Submitted;
use crate::referral::record::{ReceivedAs, Referral};
use crate::search::SearchQuery;
use crate::store::referrals::Submission;
use crate::store::{ReadOutcome, ResourceWrite, StoredResource};
use crate::validation::REFERRAL_PROFILE;
use crate::workflow::{Arrival, Workflow};

/// A validated request body and what came with it.
pub(super) struct Arrived<'a> {
    /// The body as received.
    pub body: &'a [u8],
    /// Request ids.
    pub context: Option<&'a RequestContext>,
    /// The response format.
    pub format: ResponseFormat,
    /// `Prefer: return=`.
    pub preference: ReturnPreference,
    /// Validation warnings.
    pub warnings: Vec<Issue>,
}

impl Arrived<'_> {
    pub(super) fn request_id(&self) -> &str {
        self.context.map_or("unknown", |c| c.request_id.as_str())
    }

    pub(super) fn correlation_id(&self) -> Option<&str> {
        self.context.and_then(|c| c.correlation_id.as_deref())
    }
}

/// `POST /fhir/ServiceRequest` of a social prescribing referral.
pub(super) async fn create_referral(
    state: &AppState,
    resource: serde_json::Value,
    arrived: Arrived<'_>,
    if_none_exist: Option<SearchQuery>,
) -> Result<Response, ApiError> {
    let mapped = map_single(state, &resource)?;
    let mut tx = state.store.begin_write().await?;
    if let Some(query) = &if_none_exist
        && let Some(existing) = existing_match(&mut tx, query).await?
    {
        drop(tx);
        let how = matched_existing(
            &existing,
            arrived.preference,
            arrived.format,
            arrived.warnings,
        );
        return written(state, &existing, how);
    }
    if let Some(existing) = tx.referral_by_identifier(&mapped.identifier).await? {
        drop(tx);
        Workflow::check_resubmission(&existing, &mapped)?;
        tracing::info!(referral_id = %existing.id, "referral resubmitted; answering with the stored one");
        let stored = current(state, ResourceType::SERVICE_REQUEST, &existing.id).await?;
        return written(
            state,
            &stored,
            Written {
                status: StatusCode::OK,
                message_id: "referral-already-received",
                message: already_received(&existing),
                preference: arrived.preference,
                format: arrived.format,
                issues: arrived.warnings,
            },
        );
    }
    let id = FhirId::generate();
    let stored = tx
        .create(ResourceWrite {
            resource_type: ResourceType::SERVICE_REQUEST,
            id: &id,
            resource,
            received: Some(arrived.body),
            request_id: arrived.request_id(),
        })
        .await?;
    let referral = state
        .workflow
        .open(
            &mut tx,
            mapped,
            &Arrival {
                service_request_id: &id,
                patient_id: None,
                received_as: ReceivedAs::Resource,
                request_id: arrived.request_id(),
            },
        )
        .await?;
    tx.add_submission(&Submission {
        referral_id: &referral.id,
        received_at: &referral.received_at,
        received_as: ReceivedAs::Resource.as_str(),
        request_id: arrived.request_id(),
        correlation_id: arrived.correlation_id(),
        body: arrived.body,
        response: None,
    })
    .await?;
    tx.commit().await?;
    tracing::info!(referral_id = %referral.id, task_id = %referral.task_id, "referral received");
    written(
        state,
        &stored,
        Written {
            status: StatusCode::CREATED,
            message_id: "referral-received",
            message: received(&referral),
            preference: arrived.preference,
            format: arrived.format,
            issues: arrived.warnings,
        },
    )
}

/// `PUT /fhir/ServiceRequest/{id}`: the GP amends or withdraws (status
/// `revoked`) a referral. `If-Match` is required, so an amendment made on a
/// stale copy cannot overwrite a newer one.
pub async fn update(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    context: Option<Extension<RequestContext>>,
    format: ResponseFormat,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path((type_name, raw_id)) = path.map_err(bad_path)?;
    let resource_type = supported(&type_name, Interaction::Update)?;
    let id = parse_id(&raw_id)?;
    let expected = if_match(&headers)?;
    require_json_body(&headers)?;
    let preference = ReturnPreference::from_headers(&headers);
    let bytes = read_body(body, &headers, state.settings.limits.max_body_bytes).await?;
    let Checked {
        profiles,
        resource,
        issues,
        ..
    } = check_body(&state, bytes.clone(), Some(resource_type), None).await?;
    match resource.get("id").and_then(|v| v.as_str()) {
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
    let context = context.map(|Extension(c)| c);
    let arrived = Arrived {
        body: &bytes,
        context: context.as_ref(),
        format,
        preference,
        warnings: issues,
    };
    if !profiles.iter().any(|p| p == REFERRAL_PROFILE) {
        return Err(ApiError::Unprocessable(vec![Issue::error(
            IssueType::NotSupported,
            "update-not-referral",
            format!("Only social prescribing referrals ({REFERRAL_PROFILE}) can be updated"),
        )]));
    }
    let mapped = map_single(&state, &resource)?;
    let mut tx = state.store.begin_write().await?;
    let referral = tx.referral(id.as_str()).await?.ok_or_else(|| {
        ApiError::NotFound(Issue::error(
            IssueType::NotFound,
            "referral-not-found",
            format!(
                "ServiceRequest/{id} is not a referral Sprig holds; send new referrals with POST"
            ),
        ))
    })?;
    let stored = tx
        .update(
            ResourceWrite {
                resource_type,
                id: &id,
                resource,
                received: Some(arrived.body),
                request_id: arrived.request_id(),
            },
            Some(expected),
        )
        .await?;
    let referral = state
        .workflow
        .amend(&mut tx, referral, mapped, arrived.request_id())
        .await?;
    tx.add_submission(&Submission {
        referral_id: &referral.id,
        received_at: &referral.updated_at,
        received_as: "update",
        request_id: arrived.request_id(),
        correlation_id: arrived.correlation_id(),
        body: arrived.body,
        response: None,
    })
    .await?;
    tx.commit().await?;
    tracing::info!(referral_id = %referral.id, stage = referral.stage.as_str(), "referral amended");
    written(
        &state,
        &stored,
        Written {
            status: StatusCode::OK,
            message_id: "referral-updated",
            message: format!(
                "ServiceRequest/{id} is now version {}; the referral is {}",
                stored.version_id,
                referral.stage.as_str()
            ),
            preference: arrived.preference,
            format: arrived.format,
            issues: arrived.warnings,
        },
    )
}

/// What every inbound shape tells the sender of a new referral.
pub(super) fn received(referral: &Referral) -> String {
    format!(
        "Referral received: ServiceRequest/{} (its progress is reported in Task/{})",
        referral.id, referral.task_id
    )
}

/// What every inbound shape tells the sender of a referral Sprig already holds.
pub(super) fn already_received(existing: &Referral) -> String {
    format!(
        "This referral (same identifier) was already received, on {}: it is ServiceRequest/{}; nothing new was stored",
        existing.received_at, existing.id
    )
}

/// Maps a referral sent on its own (related resources contained).
fn map_single(
    state: &AppState,
    resource: &serde_json::Value,
) -> Result<crate::referral::record::MappedReferral, ApiError> {
    let inputs = Submitted {
        referral: resource,
        bundle: None,
    }
    .inputs();
    Ok(state.workflow.map_inbound(&inputs)?)
}

/// The version `If-Match` names (`W/"3"` or `"3"`); 428 without one.
fn if_match(headers: &HeaderMap) -> Result<VersionId, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Err(ApiError::PreconditionRequired(Issue::error(
            IssueType::Required,
            "if-match-required",
            "An update must say which version it changes: send If-Match with the ETag of the version you read (e.g. If-Match: W/\"1\")",
        )));
    };
    let text = value.to_str().unwrap_or("").trim();
    let tag = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    VersionId::parse(tag).map_err(|_| {
        ApiError::BadRequest(vec![Issue::error(
            IssueType::Value,
            "if-match-invalid",
            "If-Match must be an ETag Sprig gave, such as W/\"2\"",
        )])
    })
}

/// The current version of a resource that must exist.
pub(super) async fn current(
    state: &AppState,
    resource_type: ResourceType,
    id: &str,
) -> Result<StoredResource, ApiError> {
    let id = FhirId::parse(id).map_err(|e| ApiError::Internal(format!("stored id: {e}")))?;
    match state.store.read(resource_type, &id).await? {
        ReadOutcome::Found(stored) => Ok(stored),
        _ => Err(ApiError::Internal(format!(
            "{resource_type}/{id} is missing although its referral exists"
        ))),
    }
}
