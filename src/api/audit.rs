//! The audit layer: every request that reaches a `/fhir`, `/api` or `/auth` route leaves
//! exactly one row in the audit log (`store::audit`), allowed or refused.
//!
//! [`audit`] (a middleware inside `request_context`, outside the timeout, the panic
//! catcher and authentication) opens an [`AuditHandle`] for the request and puts it in
//! [`RequestContext`]; [`capture_access`] (innermost) copies the caller's
//! `identity::Access` into it once authentication established one; handlers add what
//! they returned ([`AuditHandle::note_resource`]). A handler that writes commits through
//! [`AuditHandle::commit`], so its row is in the same transaction as the change; for
//! everything else the layer writes the row ([`crate::store::Store::record_audit`])
//! before the answer leaves, and a failed audit write turns the answer into a 500.
//!
//! Invariants:
//! - a row holds ids and names only: search parameter names, never values; the resource
//!   id from the path, Patient and referral ids, never content;
//! - one row per request: a write's handler marks the handle once its transaction (and
//!   row) committed, and the layer then writes none;
//! - `/healthz`, `/readyz`, `/metrics` and `/.well-known/…` are not audited (no data).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::AppState;
use super::error::ApiError;
use super::middleware::RequestContext;
use super::problem::Problem;
use crate::identity::Access;
use crate::referral::record::Referral;
use crate::store::{AuditRecord, StoreError, WriteTx};

/// What the layer knows of a request, shared with its handler.
#[derive(Debug, Default)]
struct AuditState {
    /// The row so far (who is filled in when it is written).
    record: Option<AuditRecord>,
    /// The caller, once authentication established one.
    access: Option<Access>,
    /// The handler wrote the row in its committed transaction.
    written: bool,
}

/// One request's audit row in the making. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct AuditHandle(Arc<Mutex<AuditState>>);

impl AuditHandle {
    fn lock(&self) -> MutexGuard<'_, AuditState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the layer audits this request (it opened the row).
    fn active(&self) -> bool {
        self.lock().record.is_some()
    }

    /// Records who called, for a request refused after authentication established it
    /// (over the rate limit, or `/metrics` for a non-administrator): the row names the
    /// caller, not "unauthenticated".
    pub fn note_access(&self, access: &Access) {
        let mut state = self.lock();
        if state.record.is_some() {
            state.access = Some(access.clone());
        }
    }

    /// Records that the answer holds this Patient's data.
    pub fn note_patient(&self, id: &str) {
        let mut state = self.lock();
        if let Some(record) = state.record.as_mut()
            && !record.patient_ids.iter().any(|p| p == id)
        {
            record.patient_ids.push(id.to_owned());
        }
    }

    /// Records that the answer holds this referral.
    pub fn note_referral(&self, id: &str) {
        let mut state = self.lock();
        if let Some(record) = state.record.as_mut()
            && !record.referral_ids.iter().any(|r| r == id)
        {
            record.referral_ids.push(id.to_owned());
        }
    }

    /// Records that the answer holds this referral and its Patient (if it has one).
    pub fn note_referral_record(&self, referral: &Referral) {
        if let Some(record) = self.lock().record.as_mut() {
            add_referral(record, referral);
        }
    }

    /// Records the names of a search's parameters (from the query and a `_search` form
    /// body alike), never their values.
    pub fn note_search_parameters(&self, raw_query: &str) {
        if let Some(record) = self.lock().record.as_mut() {
            for name in parameter_names(Some(raw_query)) {
                if !record.search_params.contains(&name) {
                    record.search_params.push(name);
                }
            }
        }
    }

    /// Records the message id of a FHIR message.
    pub fn note_message(&self, id: &str) {
        if let Some(record) = self.lock().record.as_mut() {
            record.message_id = Some(id.to_owned());
        }
    }

    /// Records what a purge or an erasure removed (kinds, counts, a reason code; never
    /// content).
    pub fn note_detail(&self, detail: &str) {
        if let Some(record) = self.lock().record.as_mut() {
            record.detail = Some(detail.to_owned());
        }
    }

    /// Records whose data a returned resource holds: a Patient's own id, or the Patient
    /// its `subject`, `patient`, `for` or `beneficiary` refers to; the referral its
    /// `focus` or `basedOn` names.
    pub fn note_resource(&self, resource: &Value) {
        for id in patients_of(resource) {
            self.note_patient(&id);
        }
        for id in referrals_of(resource) {
            self.note_referral(&id);
        }
    }

    /// Records whose data a stored resource holds (see [`AuditHandle::note_resource`]).
    pub fn note_stored(&self, stored: &crate::store::StoredResource) {
        if !self.active() {
            return;
        }
        if stored.resource_type.as_str() == "Patient" {
            self.note_patient(stored.id.as_str());
            return;
        }
        // A referral's id is its ServiceRequest's.
        if stored.resource_type.as_str() == "ServiceRequest" {
            self.note_referral(stored.id.as_str());
        }
        if let Ok(resource) = serde_json::from_str::<Value>(&stored.json) {
            self.note_resource(&resource);
        }
    }

    /// Commits `tx` with this request's audit row in it (answered with `status`), and the
    /// Provenance of every referral resource version it wrote (`api::provenance`): they
    /// commit with the change or not at all, and the layer writes no second row.
    /// Where the layer is not running (a handler driven on its own), just commits.
    pub async fn commit(&self, tx: WriteTx, status: u16) -> Result<(), StoreError> {
        self.commit_with(tx, status, None).await
    }

    /// [`AuditHandle::commit`] for a write that opens `referral`: the row names it (and
    /// its Patient) only if the commit succeeds. A write that may fail at its commit
    /// because another referral holds its identifier (`WriteTx::claim_identifier`)
    /// answers about that other referral, and its row must not name this one.
    pub async fn commit_opened(
        &self,
        tx: WriteTx,
        status: u16,
        referral: &Referral,
    ) -> Result<(), StoreError> {
        self.commit_with(tx, status, Some(referral)).await
    }

    async fn commit_with(
        &self,
        mut tx: WriteTx,
        status: u16,
        referral: Option<&Referral>,
    ) -> Result<(), StoreError> {
        let mut record = self.finished(status);
        if let (Some(record), Some(referral)) = (record.as_mut(), referral) {
            add_referral(record, referral);
        }
        if let Some(record) = &record {
            super::provenance::record(&mut tx, record).await?;
            tx.record_audit(record).await?;
        }
        tx.commit().await?;
        if let Some(referral) = referral {
            self.note_referral_record(referral);
        }
        if record.is_some() {
            self.lock().written = true;
        }
        Ok(())
    }

    /// The row as it stands, answered with `status`, with the caller filled in.
    fn finished(&self, status: u16) -> Option<AuditRecord> {
        let state = self.lock();
        let mut record = state.record.clone()?;
        record.recorded_at = crate::fhir::Instant::now();
        record.status = status;
        record.outcome = crate::store::AuditOutcome::of_status(status);
        match &state.access {
            Some(access) => access.fill_audit(&mut record),
            None => record.client_id = Some("unauthenticated".into()),
        }
        Some(record)
    }
}

/// Adds a referral and its Patient (if it has one) to `record`'s ids, once each.
fn add_referral(record: &mut AuditRecord, referral: &Referral) {
    if !record.referral_ids.contains(&referral.id) {
        record.referral_ids.push(referral.id.clone());
    }
    if let Some(patient) = &referral.patient_id
        && !record.patient_ids.iter().any(|p| p == patient)
    {
        record.patient_ids.push(patient.clone());
    }
}

/// Patient ids a resource's data belongs to.
pub fn patients_of(resource: &Value) -> Vec<String> {
    let mut ids = Vec::new();
    if resource.get("resourceType").and_then(Value::as_str) == Some("Patient") {
        if let Some(id) = resource.get("id").and_then(Value::as_str) {
            ids.push(id.to_owned());
        }
        return ids;
    }
    for field in ["subject", "patient", "for", "beneficiary"] {
        let reference = resource
            .get(field)
            .and_then(|r| r.get("reference"))
            .and_then(Value::as_str);
        if let Some(id) = reference.and_then(|r| r.strip_prefix("Patient/")) {
            let id = id.split('/').next().unwrap_or(id);
            if !ids.iter().any(|known| known == id) {
                ids.push(id.to_owned());
            }
        }
    }
    ids
}

/// Referral (ServiceRequest) ids a resource's `focus` or `basedOn` names.
fn referrals_of(resource: &Value) -> Vec<String> {
    let mut references: Vec<&Value> = resource.get("focus").into_iter().collect();
    if let Some(based_on) = resource.get("basedOn").and_then(Value::as_array) {
        references.extend(based_on);
    }
    references
        .into_iter()
        .filter_map(|r| r.get("reference").and_then(Value::as_str))
        .filter_map(|r| r.strip_prefix("ServiceRequest/"))
        .map(|id| id.split('/').next().unwrap_or(id).to_owned())
        .collect()
}

/// Whether a path is audited.
fn audited(path: &str) -> bool {
    let under = |prefix: &str| {
        path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    // The console's pages and actions, not its stylesheet and icons (no data).
    let console_asset = path.starts_with("/console/style/") || path.starts_with("/console/assets/");
    under("/fhir") || under("/api") || under("/auth") || (under("/console") && !console_asset)
}

/// What the request asks: (interaction, resource type, resource id, referral id).
fn classify(method: &Method, path: &str) -> (String, Option<String>, Option<String>) {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let get = method == Method::GET;
    let post = method == Method::POST;
    let put = method == Method::PUT;
    let owned = |s: &str| Some(s.to_owned());
    let (interaction, resource_type, resource_id) = match segments.as_slice() {
        ["fhir"] if post => ("transaction", None, None),
        ["fhir", "metadata"] if get => ("capabilities", None, None),
        ["fhir", "$process-message"] if post => ("operation:process-message", None, None),
        ["fhir", "$validate"] if post => ("operation:validate", None, None),
        ["fhir", t, "$validate"] if post => ("operation:validate", owned(t), None),
        ["fhir", t] if get => ("search-type", owned(t), None),
        ["fhir", t] if post => ("create", owned(t), None),
        ["fhir", t, "_search"] if post => ("search-type", owned(t), None),
        ["fhir", t, id] if get => ("read", owned(t), owned(id)),
        ["fhir", t, id] if put => ("update", owned(t), owned(id)),
        ["fhir", t, id, "_history"] if get => ("history-instance", owned(t), owned(id)),
        ["fhir", t, id, "_history", _] if get => ("vread", owned(t), owned(id)),
        ["api", "referrals"] if get => ("api:worklist", None, None),
        ["api", "referrals", _] if get => ("api:referral", None, None),
        ["api", "referrals", _, "transitions"] if post => ("api:transition", None, None),
        ["api", "referrals", _, "outcomes"] if post => ("api:outcome", None, None),
        ["api", "referrals", _, "notes"] if post => ("api:note", None, None),
        ["api", "referrals", _, "milestones"] if get => ("api:milestones", None, None),
        ["api", "referrals", _, "milestones"] if post => ("api:milestone", None, None),
        ["api", "referrals", _, "assignment"] if post => ("api:assign", None, None),
        ["api", "referrals", _, "erasure"] if post => ("api:erase", None, None),
        ["api", "deliveries"] if get => ("api:deliveries", None, None),
        ["api", "deliveries", _] if get => ("api:delivery", None, None),
        ["api", "deliveries", _, "retry"] if post => ("api:retry-delivery", None, None),
        ["api", "endpoints"] if get => ("api:endpoints", None, None),
        ["api", "endpoints", _, "retry"] if post => ("api:retry-endpoint", None, None),
        ["api", "openapi.json"] if get => ("api:openapi", None, None),
        ["auth", "token"] if post => ("auth:token", None, None),
        ["console", "referrals"] if get => ("console:worklist", None, None),
        ["console", "referrals", _] if get => ("console:referral", None, None),
        ["console", "referrals", _, "transition"] if post => ("console:transition", None, None),
        ["console", "referrals", _, "notes"] if post => ("console:note", None, None),
        ["console", "referrals", _, "milestones"] if post => ("console:milestone", None, None),
        ["console", "referrals", _, "outcomes"] if get => ("console:outcome-form", None, None),
        ["console", "referrals", _, "outcomes"] if post => ("console:outcome", None, None),
        ["console", "referrals", _, "assignment"] if post => ("console:assign", None, None),
        ["console", "sign-in"] if post => ("console:sign-in", None, None),
        ["console", "sign-out"] if post => ("console:sign-out", None, None),
        ["console", "follow-ups"] if get => ("console:follow-ups", None, None),
        ["console", "registries"] if get => ("console:registries", None, None),
        ["console", "referrals", _, "audit"] if get => ("console:audit-trail", None, None),
        ["console", "audit"] if get => ("console:audit-search", None, None),
        ["console", "people"] if get => ("console:people", None, None),
        ["console", "people"] if post => ("console:person-assignable", None, None),
        ["console", "deliveries", _, "retry"] if post => ("console:retry-delivery", None, None),
        ["console", "deliveries", "practices", _, "retry"] if post => {
            ("console:retry-practice", None, None)
        }
        [first, ..] => {
            return (
                format!("{first}:{}", method.as_str().to_ascii_lowercase()),
                None,
                None,
            );
        }
        [] => ("unknown", None, None),
    };
    (interaction.to_owned(), resource_type, resource_id)
}

/// The names of the query's parameters, in order, once each: never their values.
fn parameter_names(query: Option<&str>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (name, _) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let name = name.into_owned();
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// The referral id in an `/api/referrals/{id}…` path.
fn referral_in_path(path: &str) -> Option<String> {
    let rest = path
        .strip_prefix("/api/referrals/")
        .or_else(|| path.strip_prefix("/console/referrals/"))?;
    let id = rest.split('/').next().filter(|id| !id.is_empty())?;
    Some(id.to_owned())
}

/// The audit middleware: opens the row, runs the request, writes the row unless the
/// handler already committed it with its write, and fails the request if it cannot.
pub async fn audit(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    if !audited(&path) {
        return next.run(request).await;
    }
    let (interaction, resource_type, resource_id) = classify(request.method(), &path);
    let mut record = AuditRecord {
        peer_address: request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| peer.ip().to_string()),
        resource_type,
        resource_id,
        search_params: parameter_names(request.uri().query()),
        referral_ids: referral_in_path(&path).into_iter().collect(),
        ..AuditRecord::new(interaction, 0)
    };
    let handle = AuditHandle::default();
    match request.extensions_mut().get_mut::<RequestContext>() {
        Some(context) => {
            record.request_id = Some(context.request_id.clone());
            record.correlation_id = context.correlation_id.clone();
            context.audit = handle.clone();
        }
        None => {
            request.extensions_mut().insert(RequestContext {
                audit: handle.clone(),
                ..RequestContext::unknown()
            });
        }
    }
    handle.lock().record = Some(record);
    let response = next.run(request).await;
    if handle.lock().written {
        return response;
    }
    let Some(record) = handle.finished(response.status().as_u16()) else {
        return response;
    };
    match state.store.record_audit(&record).await {
        Ok(_) => response,
        // Already a failure on Sprig's side (a timeout, storage unavailable): it carries
        // no data, and its own status says more than a 500 would.
        Err(e) if response.status().is_server_error() => {
            tracing::error!(error = %e, "the audit row of a failed request could not be written");
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "the audit row could not be written; the request fails");
            let api = path.starts_with("/api") || path.starts_with("/auth");
            if e.is_transient() {
                // Storage busy or failing over: 503 with Retry-After, not a defect.
                if api {
                    Problem::from(e).into_response()
                } else {
                    ApiError::from(e).into_response()
                }
            } else if api {
                Problem::internal().into_response()
            } else {
                ApiError::internal("writing the audit log", e.to_string()).into_response()
            }
        }
    }
}

/// Copies the caller `identity` established into the request's audit row. Innermost
/// layer: it runs after authentication, only for requests authentication let through.
pub async fn capture_access(request: Request, next: Next) -> Response {
    if let (Some(context), Some(access)) = (
        request.extensions().get::<RequestContext>(),
        request.extensions().get::<Access>(),
    ) && context.audit.active()
    {
        context.audit.lock().access = Some(access.clone());
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_are_classified_without_their_values() {
        let (interaction, t, id) = classify(&Method::GET, "/fhir/Patient/p1/_history/2");
        assert_eq!(interaction, "vread");
        assert_eq!(t.as_deref(), Some("Patient"));
        assert_eq!(id.as_deref(), Some("p1"));
        assert_eq!(
            classify(&Method::POST, "/api/referrals/r1/notes").0,
            "api:note"
        );
        assert_eq!(
            parameter_names(Some("identifier=x%7C943&identifier=y&_count=2")),
            ["identifier", "_count"]
        );
        assert_eq!(
            referral_in_path("/api/referrals/r1/notes").as_deref(),
            Some("r1")
        );
        assert!(audited("/fhir") && audited("/api/referrals") && audited("/auth/token"));
        assert!(!audited("/healthz") && !audited("/metrics") && !audited("/fhirx"));
    }

    #[test]
    fn patients_are_found_in_resources() {
        assert_eq!(
            patients_of(&json!({"resourceType": "Patient", "id": "p1"})),
            ["p1"]
        );
        assert_eq!(
            patients_of(&json!({"resourceType": "Task", "for": {"reference": "Patient/p2"}})),
            ["p2"]
        );
    }
}
