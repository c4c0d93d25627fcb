//! `$validate` (FHIR `Resource-validate`): `POST /fhir/$validate` and
//! `POST /fhir/{type}/$validate`, with a resource or a `Parameters`
//! (`resource`, `profile`, `mode`) as the body.
//!
//! The answer is always 200 with an OperationOutcome, whatever the resource's
//! problems, carrying exactly the issues a create of the same resource would
//! have been refused with. Only problems with the request itself (format,
//! size, a `Parameters` without a resource) get an error status.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{Map, Value};

use super::AppState;
use super::authenticate::require_scope;
use super::error::ApiError;
use super::extract::FhirBody;
use super::negotiate::ResponseFormat;
use super::pipeline::cpu_bound;
use crate::fhir::json::{JsonLimits, parse_resource};
use crate::fhir::locate::locate_issues;
use crate::fhir::resource::resource_type_of;
use crate::fhir::{Issue, IssueType, OperationOutcome, ResourceType};
use crate::identity::{Access, Interaction as Scope};

/// `POST /fhir/$validate`.
pub async fn validate_any(
    State(state): State<AppState>,
    access: Access,
    format: ResponseFormat,
    body: FhirBody,
) -> Result<Response, ApiError> {
    require_scope(&access, Scope::Validate, "Resource")?;
    run(state, None, format, body).await
}

/// `POST /fhir/{type}/$validate`.
pub async fn validate_type(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
    format: ResponseFormat,
    body: Result<FhirBody, ApiError>,
) -> Result<Response, ApiError> {
    let Path(type_name) = path?;
    let resource_type = ResourceType::parse(&type_name).map_err(|e| {
        ApiError::NotFound(Issue::error(
            IssueType::NotFound,
            "unknown-resource-type",
            e.to_string(),
        ))
    })?;
    require_scope(&access, Scope::Validate, resource_type.as_str())?;
    run(state, Some(resource_type), format, body?).await
}

async fn run(
    state: AppState,
    url_type: Option<ResourceType>,
    format: ResponseFormat,
    FhirBody(bytes): FhirBody,
) -> Result<Response, ApiError> {
    let limits = &state.settings.limits;
    let json_limits = JsonLimits {
        max_depth: limits.max_json_depth,
    };
    let validator = Arc::clone(&state.validator);
    let issues = cpu_bound(bytes.len(), move || {
        let root = url_type.map(ResourceType::as_str).unwrap_or("Resource");
        match parse_resource(&bytes, json_limits) {
            Err(error) => Ok::<_, ApiError>(error.to_issues(root)),
            Ok(body) => {
                let (resource, profile, wrapped) = unwrap_parameters(body, url_type)?;
                let mut issues =
                    validator.validate_resource(&resource, url_type, profile.as_deref());
                // Positions only make sense when the resource is the body.
                if !wrapped && let Some(root) = resource.as_object().and_then(resource_type_of) {
                    locate_issues(&bytes, root, &mut issues);
                }
                Ok(issues)
            }
        }
    })
    .await??;
    tracing::info!(
        issues = issues.len(),
        errors = issues.iter().filter(|i| i.severity.is_error()).count(),
        "validated"
    );
    let outcome = OperationOutcome::new(issues).capped(limits.max_issues);
    format.render(&outcome.to_json(None))
}

/// The resource to validate and the profile asked for: the body itself, or
/// the `resource` and `profile` parameters of a `Parameters` body (unless a
/// `Parameters` resource is itself what is being validated).
fn unwrap_parameters(
    mut body: Map<String, Value>,
    url_type: Option<ResourceType>,
) -> Result<(Value, Option<String>, bool), ApiError> {
    let is_parameters = resource_type_of(&body) == Some("Parameters")
        && url_type.is_none_or(|t| t.as_str() != "Parameters");
    if !is_parameters {
        return Ok((Value::Object(body), None, false));
    }
    // Taken out of the body, not copied: a Parameters may hold megabytes.
    let mut resource = None;
    let mut profile = None;
    if let Some(Value::Array(parameters)) = body.shift_remove("parameter") {
        for mut parameter in parameters {
            match parameter.get("name").and_then(Value::as_str) {
                Some("resource") if resource.is_none() => {
                    resource = parameter
                        .as_object_mut()
                        .and_then(|p| p.shift_remove("resource"))
                        .filter(Value::is_object);
                }
                Some("profile") if profile.is_none() => {
                    profile = ["valueUri", "valueCanonical", "valueUrl"]
                        .iter()
                        .find_map(|key| parameter.get(*key).and_then(Value::as_str))
                        .map(str::to_owned);
                }
                _ => {}
            }
        }
    }
    let resource = resource.ok_or_else(|| {
        ApiError::BadRequest(vec![
            Issue::error(
                IssueType::Required,
                "validate-no-resource",
                "The Parameters has no 'resource' parameter holding the resource to validate",
            )
            .at("Parameters.parameter"),
        ])
    })?;
    Ok((resource, profile, true))
}
