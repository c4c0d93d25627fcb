//! `POST /api/referrals/{id}/erasure` (administrators only): erases one referral and
//! everything that belongs to it where the law requires it (`store::retention`), in one
//! transaction with its audit row, which records the reason code, the case reference
//! and the counts of what went, never the content.
//!
//! A `POST` of an erasure request, not a `DELETE`: the erasure needs a reason, and a
//! body on `DELETE` has no defined meaning (RFC 9110 §9.3.5) that proxies and clients
//! can be trusted to carry. Afterwards every read of the referral's resources is a
//! `404`, as if it had never been received: a `410 Gone` would need a tombstone saying
//! the resource existed, which is what erasure removes (FHIR lets a server that does not
//! track deletions answer `404`).

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::authenticate::require_staff;
use super::middleware::RequestContext;
use super::problem::Problem;
use crate::identity::{Access, StaffAction};
use crate::store::retention::{ErasureReason, erasure_detail, is_case_reference};

/// An erasure request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureBody {
    /// `right-to-erasure`, `sent-in-error`, `wrong-patient` or `legal-order`.
    reason: String,
    /// The case's reference (the data protection officer's or a court's number).
    reference: Option<String>,
}

/// `POST /api/referrals/{id}/erasure`: `200` with the counts of what went, `404` for no
/// such referral, `400` for a reason or reference that is not one.
pub async fn erase(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
    context: RequestContext,
    body: Result<Json<ErasureBody>, JsonRejection>,
) -> Result<Response, Problem> {
    require_staff(&access, StaffAction::Erase)?;
    let Path(id) = path?;
    let Json(body) = body?;
    let Some(reason) = ErasureReason::parse(&body.reason) else {
        return Err(Problem::bad_request(format!(
            "reason must be one of {}",
            ErasureReason::codes()
        )));
    };
    if let Some(reference) = body.reference.as_deref()
        && !is_case_reference(reference)
    {
        return Err(Problem::bad_request(
            "reference must be 1 to 64 letters, digits and -_./: (a case number, never a name)",
        ));
    }
    let mut tx = state.store.begin_write().await?;
    let Some(removed) = tx.erase_referral(&id).await? else {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "Referral not found",
            format!("referral {id} does not exist"),
        ));
    };
    context
        .audit
        .note_detail(&erasure_detail(reason, body.reference.as_deref(), &removed));
    context.audit.commit(tx, 200).await?;
    tracing::info!(referral_id = %id, reason = reason.as_str(), "referral erased");
    Ok(Json(json!({
        "referral_id": id,
        "reason": reason.as_str(),
        "erased": removed.counts(),
    }))
    .into_response())
}
