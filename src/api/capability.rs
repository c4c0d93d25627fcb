//! What Sprig implements, in one table, and the CapabilityStatement made
//! from it. Handlers consult the same table before serving a request, so the
//! statement cannot claim more (or less) than the server does.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::negotiate::ResponseFormat;
use crate::config::Settings;
use crate::fhir::{FHIR_VERSION, Instant, Issue, IssueType, ResourceType};

/// A FHIR RESTful interaction Sprig may support on a resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    /// `POST /{type}`.
    Create,
    /// `GET /{type}/{id}`.
    Read,
    /// `GET /{type}/{id}/_history/{vid}`.
    Vread,
}

impl Interaction {
    fn code(self) -> &'static str {
        match self {
            Interaction::Create => "create",
            Interaction::Read => "read",
            Interaction::Vread => "vread",
        }
    }
}

/// The interactions supported on one resource type.
#[derive(Debug)]
pub struct ResourceCapability {
    /// The type.
    pub resource_type: ResourceType,
    /// What can be done with it.
    pub interactions: &'static [Interaction],
    /// Why a GP system developer would use it.
    pub documentation: &'static str,
}

/// Everything the REST API supports. Keep in step with `api::router`:
/// a test checks each entry is served and nothing else is.
pub const SUPPORTED: &[ResourceCapability] = &[ResourceCapability {
    resource_type: ResourceType::SERVICE_REQUEST,
    interactions: &[Interaction::Create, Interaction::Read, Interaction::Vread],
    documentation: "A referral to the social prescribing service. Created referrals are validated against the FHIR R4 JSON schema and the R4 core ServiceRequest definition (cardinality, choice types, reference targets, bindings), and stored durably with full version history.",
}];

/// Checks `type_name` names a resource type on which `interaction` is
/// supported, and returns it; otherwise the error to answer with.
pub fn supported(type_name: &str, interaction: Interaction) -> Result<ResourceType, ApiError> {
    let resource_type = ResourceType::parse(type_name).map_err(|e| {
        ApiError::NotFound(Issue::error(
            IssueType::NotFound,
            "unknown-resource-type",
            format!("{e}; resource types are case-sensitive, e.g. ServiceRequest"),
        ))
    })?;
    let Some(capability) = SUPPORTED.iter().find(|c| c.resource_type == resource_type) else {
        return Err(ApiError::NotFound(Issue::error(
            IssueType::NotSupported,
            "resource-type-not-served",
            format!(
                "Sprig does not serve {resource_type} resources; GET /fhir/metadata lists what it serves"
            ),
        )));
    };
    if capability.interactions.contains(&interaction) {
        Ok(resource_type)
    } else {
        Err(ApiError::MethodNotAllowed(Issue::error(
            IssueType::NotSupported,
            "interaction-not-supported",
            format!(
                "The {} interaction is not supported on {resource_type}; GET /fhir/metadata lists what is",
                interaction.code()
            ),
        )))
    }
}

/// The CapabilityStatement for this server, built once at start-up.
pub fn capability_statement(settings: &Settings, started: Instant) -> Value {
    let resources: Vec<Value> = SUPPORTED
        .iter()
        .map(|c| {
            let interactions: Vec<Value> = c
                .interactions
                .iter()
                .map(|i| json!({"code": i.code()}))
                .collect();
            let mut resource = json!({
                "type": c.resource_type.as_str(),
                "documentation": c.documentation,
                "interaction": interactions,
                "versioning": "versioned",
                "readHistory": c.interactions.contains(&Interaction::Vread),
                "updateCreate": false,
                "conditionalCreate": false,
                "conditionalRead": "not-match",
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
            });
            // What a resource of this type is held to when it names no
            // profile: the truth a sender needs before sending.
            if let Some(profile) = settings
                .validation
                .default_profiles
                .get(c.resource_type.as_str())
            {
                resource["profile"] = json!(profile);
            }
            resource
        })
        .collect();
    let mut implementation = json!({
        "description": "Sprig: social prescribing referral gateway",
    });
    if let Some(url) = &settings.public_base_url {
        implementation["url"] = json!(url);
    }
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": started.to_fhir(),
        "publisher": "Sprig",
        "kind": "instance",
        "software": {"name": "Sprig", "version": env!("CARGO_PKG_VERSION")},
        "implementation": implementation,
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": "FHIR R4 JSON only. Errors are OperationOutcomes; every response carries X-Request-ID.",
            "resource": resources,
            "operation": [{
                "name": "validate",
                "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
                "documentation": "POST /fhir/$validate or /fhir/{type}/$validate with a resource or a Parameters (resource, profile, mode); any R4 resource type; 200 with an OperationOutcome holding the issues a create would meet.",
            }],
        }],
    })
}

/// `GET /fhir/metadata`.
pub async fn metadata(State(state): State<AppState>, format: ResponseFormat) -> Response {
    format
        .render(&state.capability_statement)
        .unwrap_or_else(IntoResponse::into_response)
}
