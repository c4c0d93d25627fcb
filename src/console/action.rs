//! The prologue every console action on a referral shares, done once, as an extractor:
//! `ReferralAction<K>` is a post on `/console/referrals/{id}/…` that has passed the
//! checks, in this order, before the handler sees it:
//! 1. the person's `Access` and `ConsoleSession` (put there by `api::authenticate`);
//! 2. the form is this console's (same origin, the session's CSRF token: `checked_form`),
//!    before anything else is read or done;
//! 3. the person's role allows action `K` at all (403), the referral exists (404), and
//!    the role allows it on this referral's assignee (403: `check_work`).
//!
//! Invariant: an action handler taking a `ReferralAction` cannot skip or reorder these;
//! a handler for a new action names its `StaffAction` in a new `ActionKind`.

use std::marker::PhantomData;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::response::{IntoResponse, Response};

use super::{Fields, OnReferral, check_work, checked_form};
use crate::api::AppState;
use crate::api::middleware::RequestContext;
use crate::identity::{Access, ConsoleSession, StaffAction};

/// Which `StaffAction` a console action on a referral is.
pub(super) trait ActionKind: Send + Sync + 'static {
    /// The action on a referral assigned to `assigned_to`.
    fn action(assigned_to: Option<&str>) -> StaffAction<'_>;
}

/// Moving a referral to another stage.
pub(super) struct Transition;
/// Adding a note or a contact attempt.
pub(super) struct Note;
/// Recording an outcome measure.
pub(super) struct Outcome;
/// Assigning the referral (managers; whoever it is assigned to now).
pub(super) struct Assign;

impl ActionKind for Transition {
    fn action(assigned_to: Option<&str>) -> StaffAction<'_> {
        StaffAction::Transition { assigned_to }
    }
}

impl ActionKind for Note {
    fn action(assigned_to: Option<&str>) -> StaffAction<'_> {
        StaffAction::AddNote { assigned_to }
    }
}

impl ActionKind for Outcome {
    fn action(assigned_to: Option<&str>) -> StaffAction<'_> {
        StaffAction::RecordOutcome { assigned_to }
    }
}

impl ActionKind for Assign {
    fn action(_assigned_to: Option<&str>) -> StaffAction<'_> {
        StaffAction::Assign
    }
}

/// A checked console post of action `K` on referral `id` (see the module's steps).
pub(super) struct ReferralAction<K> {
    /// The application.
    pub state: AppState,
    /// What the person may do.
    pub access: Access,
    /// Who is signed in.
    pub session: ConsoleSession,
    /// The request's audit row and ids.
    pub context: RequestContext,
    /// The referral's id.
    pub id: String,
    /// The posted form's fields.
    pub fields: Fields,
    kind: PhantomData<K>,
}

impl<K> ReferralAction<K> {
    /// Who is acting on which referral, for a refusal (`refuse`).
    pub fn on(&self) -> OnReferral<'_> {
        OnReferral {
            state: &self.state,
            access: &self.access,
            session: &self.session,
            context: &self.context,
            id: &self.id,
        }
    }
}

impl<K: ActionKind> FromRequest<AppState> for ReferralAction<K> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let access = Access::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let Extension(session) = Extension::<ConsoleSession>::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let context = RequestContext::from_request_parts(&mut parts, state)
            .await
            .unwrap_or_else(|never| match never {});
        let Path(id) = Path::<String>::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let headers = parts.headers.clone();
        let body = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        let fields =
            checked_form(&session, &headers, &body).map_err(IntoResponse::into_response)?;
        check_work(state, &access, &id, K::action)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(ReferralAction {
            state: state.clone(),
            access,
            session,
            context,
            id,
            fields,
            kind: PhantomData,
        })
    }
}
