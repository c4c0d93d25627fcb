//! The steps every inbound write shares between reading its body and
//! storing it: parse (strict FHIR JSON) → check the type → validate against
//! the per-field size limits, then its profiles ([`check`], giving a
//! [`CheckedBody`]), and, for a
//! conditional create, find the resource that is already there
//! ([`existing_match`]). CPU-bound work runs through [`cpu_bound`].
//!
//! Invariant: a [`CheckedBody`] exists only for a body that parsed and has
//! no error-level issue; a body that is not FHIR JSON of the expected type
//! is 400, one invalid against its profiles 422 (issues located by line and
//! column, capped at `limits.max_issues`).

use std::sync::Arc;

use serde_json::Value;

use super::AppState;
use super::error::ApiError;
use super::extract::FhirBody;
use crate::fhir::json::{JsonLimits, parse_resource};
use crate::fhir::locate::locate_issues;
use crate::fhir::{Issue, IssueType, OperationOutcome, ResourceType};
use crate::search::SearchQuery;
use crate::store::{CurrentVersion, StoredResource, Visibility, WriteTx};
use crate::validation::size::check_sizes;
use crate::validation::{REFERRAL_PROFILE, Target};

/// A body that parsed and passed validation.
#[derive(Debug)]
pub(super) struct CheckedBody {
    /// Its type.
    pub resource_type: ResourceType,
    /// The profiles it was held to.
    pub profiles: Vec<String>,
    /// The resource.
    pub resource: Value,
    /// Warnings and information from validation (no errors).
    pub issues: Vec<Issue>,
    /// The body as received, to be kept verbatim.
    pub received: bytes::Bytes,
}

impl CheckedBody {
    /// Whether it was held to `profile`.
    pub(super) fn has_profile(&self, profile: &str) -> bool {
        self.profiles.iter().any(|p| p == profile)
    }

    /// Whether it is a social prescribing referral (a ServiceRequest held to
    /// Sprig's referral profile).
    pub(super) fn is_referral(&self) -> bool {
        self.resource_type == ResourceType::SERVICE_REQUEST && self.has_profile(REFERRAL_PROFILE)
    }
}

/// Parses and validates a request body: 400 when it is not FHIR JSON of
/// the `expected` type, 422 (issues located by line and column) when it is
/// not valid against its profiles; `profile` is a profile the endpoint
/// requires on top of those the resource names.
pub(super) async fn check(
    state: &AppState,
    body: &FhirBody,
    expected: Option<ResourceType>,
    profile: Option<&'static str>,
) -> Result<CheckedBody, ApiError> {
    let limits = &state.settings.limits;
    let json_limits = JsonLimits {
        max_depth: limits.max_json_depth,
    };
    let max_issues = limits.max_issues;
    let field_limits = limits.field_limits();
    let validator = Arc::clone(&state.validator);
    let expected_name = expected.map_or("Resource", ResourceType::as_str);
    let received = body.0.clone();
    let checked = cpu_bound(received.len(), move || {
        let resource = parse_resource(&received, json_limits)
            .map_err(|e| ApiError::BadRequest(capped(e.to_issues(expected_name), max_issues)))?;
        // A body of the wrong type is a bad request (400), not an invalid
        // resource (422).
        let (resource_type, profiles) = validator
            .target_of(&resource, expected, profile)
            .map_err(|issue| ApiError::BadRequest(vec![issue]))?;
        // Moved, not copied: the same value is validated and then stored.
        let resource = Value::Object(resource);
        // Sizes first: the passes after it, mapping and storing then work
        // on a resource of plausible proportions.
        let oversize = check_sizes(resource_type.as_str(), &resource, &field_limits);
        if !oversize.is_empty() {
            return Err(ApiError::Unprocessable(capped(oversize, max_issues)));
        }
        let target = Target {
            resource_type,
            profiles: &profiles,
        };
        let mut issues = validator.validate(&target, &resource);
        if issues.iter().any(|i| i.severity.is_error()) {
            locate_issues(&received, resource_type.as_str(), &mut issues);
        }
        Ok::<_, ApiError>(CheckedBody {
            resource_type,
            profiles,
            resource,
            issues,
            received,
        })
    })
    .await??;
    if checked.issues.iter().any(|i| i.severity.is_error()) {
        tracing::info!(
            resource_type = %checked.resource_type,
            issues = checked.issues.len(),
            "resource rejected by validation"
        );
        return Err(ApiError::Unprocessable(capped(checked.issues, max_issues)));
    }
    Ok(checked)
}

/// The one current resource matching a conditional create's `query`
/// (`If-None-Exist`), if there is a query and a match; 412 when several match.
/// Only resources `visibility` sees can match: another practice's match is no
/// match, so the answer never tells that another practice holds one.
pub(super) async fn existing_match(
    tx: &mut WriteTx,
    query: Option<&SearchQuery>,
    visibility: &Visibility,
) -> Result<Option<StoredResource>, ApiError> {
    let Some(query) = query else {
        return Ok(None);
    };
    let matched = tx
        .matching_current(&[query], visibility)
        .await?
        .pop()
        .unwrap_or_default();
    match matched.ids.as_slice() {
        [] => Ok(None),
        // Read with the match, in the same statement.
        [_] => Ok(matched.current.map(CurrentVersion::into_stored)),
        many => Err(ApiError::PreconditionFailed(Issue::error(
            IssueType::MultipleMatches,
            "conditional-multiple-matches",
            format!(
                "If-None-Exist matches {} resources, so Sprig cannot tell which one is meant; make it more specific",
                many.len()
            ),
        ))),
    }
}

/// The first `max` issues (errors first), with a note of how many more there were.
pub(super) fn capped(issues: Vec<Issue>, max: usize) -> Vec<Issue> {
    OperationOutcome::new(issues).capped(max).issues
}

/// Bodies above this size are parsed and validated on the blocking pool.
const OFFLOAD_ABOVE_BYTES: usize = 64 * 1024;

/// How many large bodies are parsed or validated at once: one fewer than the
/// cores (at least one). The rest wait their turn (within the request's
/// deadline), so a storm of large bodies leaves a core to the async workers
/// that answer probes and ordinary referrals: with every core validating
/// megabytes, `/healthz` waited for a time slice (174 ms p99, issue 19).
static OFFLOADED_AT_ONCE: std::sync::LazyLock<Arc<tokio::sync::Semaphore>> =
    std::sync::LazyLock::new(|| {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Arc::new(tokio::sync::Semaphore::new(cores.saturating_sub(1).max(1)))
    });

/// Runs CPU-bound work (parsing, validation) for a body of `body_len`
/// bytes. A body at the 5 MiB limit takes about 0.1 s to validate, which
/// would stall every request sharing the runtime worker, so large bodies go
/// to the blocking pool, at most [`OFFLOADED_AT_ONCE`] of them at a time; a
/// typical referral (3 KB, ~70 µs) stays inline, because under load the
/// thread hop costs more than it saves.
pub(super) async fn cpu_bound<T: Send + 'static>(
    body_len: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    if body_len <= OFFLOAD_ABOVE_BYTES {
        return Ok(work());
    }
    let turn = Arc::clone(&OFFLOADED_AT_ONCE)
        .acquire_owned()
        .await
        .map_err(|e| ApiError::internal("waiting for a turn on the blocking pool", e))?;
    tokio::task::spawn_blocking(move || {
        // Held until the work is done, even if the request is abandoned.
        let _turn = turn;
        work()
    })
    .await
    .map_err(|e| ApiError::internal("running parsing or validation on the blocking pool", e))
}
