//! What Sprig implements, in one table, and the CapabilityStatement made
//! from it. Handlers consult the same table before serving a request, so the
//! statement cannot claim more (or less) than the server does.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::negotiate::ResponseFormat;
use crate::config::{Settings, UpdateRequires};
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
    /// `GET /{type}?…` and `POST /{type}/_search`.
    SearchType,
    /// `GET /{type}/{id}/_history`.
    HistoryInstance,
    /// `PUT /{type}/{id}`.
    Update,
}

impl Interaction {
    fn code(self) -> &'static str {
        match self {
            Interaction::Create => "create",
            Interaction::Read => "read",
            Interaction::Vread => "vread",
            Interaction::SearchType => "search-type",
            Interaction::HistoryInstance => "history-instance",
            Interaction::Update => "update",
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
    /// Whether it may arrive in a referral Bundle (a transaction or a
    /// message) beside the ServiceRequest, and be stored from there.
    pub arrives_with_referral: bool,
}

/// Everything the REST API supports. Keep in step with `api::router`:
/// a test checks each entry is served and nothing else is.
pub const SUPPORTED: &[ResourceCapability] = &[
    ResourceCapability {
        resource_type: ResourceType::SERVICE_REQUEST,
        interactions: &[
            Interaction::Create,
            Interaction::Read,
            Interaction::Vread,
            Interaction::SearchType,
            Interaction::HistoryInstance,
            Interaction::Update,
        ],
        documentation: "A referral to the social prescribing service, held to the sprig-referral profile unless it names another (related resources contained, or sent together in a transaction Bundle to POST /fhir or a message to $process-message). Each referral starts the service's workflow and gets one Task reporting its progress. The same referral (identifier system and value) sent again is answered with the one already held (200), never stored twice; If-None-Exist (or the same query on the POST URL) is also honoured. PUT amends a referral or, with status revoked, withdraws it; how it names the version it changes is in the update interaction's documentation.",
        arrives_with_referral: true,
    },
    ResourceCapability {
        resource_type: ResourceType::TASK,
        interactions: READ_AND_SEARCH,
        documentation: "The referral's progress in the social prescribing service (accepted, declined, completed…), one Task per referral (Task.basedOn). Sprig writes these itself; clients read and search them, e.g. GET /fhir/Task?based-on=ServiceRequest/{id}.",
        arrives_with_referral: false,
    },
    ResourceCapability {
        resource_type: ResourceType::OBSERVATION,
        interactions: READ_AND_SEARCH,
        documentation: "Outcome measures (wellbeing and loneliness scores) recorded by the social prescribing service for a referral (Observation.basedOn). Sprig writes these itself; clients read and search them, e.g. GET /fhir/Observation?based-on=ServiceRequest/{id}.",
        arrives_with_referral: false,
    },
    related("Patient"),
    related("Organization"),
    related("Practitioner"),
    related("PractitionerRole"),
    related("Consent"),
    related("Condition"),
    related("QuestionnaireResponse"),
    ResourceCapability {
        resource_type: ResourceType::PROVENANCE,
        interactions: READ_AND_SEARCH,
        documentation: "Who caused each version of a ServiceRequest, Task and Observation Sprig stores: one Provenance per version, written in the same transaction (target the versioned reference Type/id/_history/n; agent the client (a Device, by client id) or the service's person (a Practitioner, by username), onBehalfOf the practice it acted for or the end-user organisation a trusted proxy relayed for; recorded; activity CREATE, UPDATE or DELETE from v3-DataOperation; entity the version revised). Sprig writes these itself; they are readable by whoever may read the target (the same practice, and a read scope on Provenance or on the target's type), e.g. GET /fhir/Provenance?target=ServiceRequest/{id}, or _revinclude=Provenance:target on a search.",
        arrives_with_referral: false,
    },
];

/// A resource type that arrives beside a referral, in a transaction or a
/// message: stored, readable and searchable, not created on its own.
const fn related(type_name: &'static str) -> ResourceCapability {
    ResourceCapability {
        resource_type: ResourceType::named(type_name),
        interactions: READ_AND_SEARCH,
        documentation: "Arrives with a referral (in a transaction Bundle or a message) and is stored as sent, with references rewritten to the ids Sprig assigned. In a message, a Patient with an NHS number or an Organization with an ODS code updates the one already held; in a transaction, a conditional PUT (Type?identifier=…) does. An update that changes nothing stores no new version.",
        arrives_with_referral: true,
    }
}

/// What clients may do with the resources Sprig produces itself.
const READ_AND_SEARCH: &[Interaction] = &[
    Interaction::Read,
    Interaction::Vread,
    Interaction::SearchType,
    Interaction::HistoryInstance,
];

/// Whether a referral Bundle may carry resources of this type (the
/// ServiceRequest and what the `SUPPORTED` table marks as arriving with it).
pub fn arrives_with_referral(resource_type: ResourceType) -> bool {
    SUPPORTED
        .iter()
        .any(|c| c.resource_type == resource_type && c.arrives_with_referral)
}

/// The types [`arrives_with_referral`] accepts, for messages.
pub fn referral_bundle_types() -> String {
    SUPPORTED
        .iter()
        .filter(|c| c.arrives_with_referral)
        .map(|c| c.resource_type.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

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
    let mut resources: Vec<Value> = SUPPORTED
        .iter()
        .map(|c| {
            let interactions: Vec<Value> = c
                .interactions
                .iter()
                .map(|i| match i {
                    Interaction::Update => json!({
                        "code": i.code(),
                        "documentation": update_rule(settings.fhir.update_requires),
                    }),
                    _ => json!({"code": i.code()}),
                })
                .collect();
            let mut resource = json!({
                "type": c.resource_type.as_str(),
                "documentation": c.documentation,
                "interaction": interactions,
                // Updates must name the version they change (`update_rule`).
                "versioning": if c.interactions.contains(&Interaction::Update) {
                    "versioned-update"
                } else {
                    "versioned"
                },
                "readHistory": c.interactions.contains(&Interaction::Vread),
                "updateCreate": false,
                // If-None-Exist on POST; `request.ifNoneExist` in a transaction,
                // for every type a referral Bundle may carry (the referral's own,
                // when it finds another referral, is a 409: `open_referral`).
                "conditionalCreate": c.interactions.contains(&Interaction::Create)
                    || c.arrives_with_referral,
                "conditionalRead": "not-match",
                // `PUT Type?identifier=…` in a transaction; a referral itself
                // is amended by id with If-Match (`api::transaction` refuses a
                // conditional PUT of a ServiceRequest).
                "conditionalUpdate": c.arrives_with_referral
                    && c.resource_type != ResourceType::SERVICE_REQUEST,
                "conditionalDelete": "not-supported",
            });
            if c.interactions.contains(&Interaction::SearchType) {
                resource["searchParam"] = Value::Array(search_params(c.resource_type));
                let includes: Vec<String> = crate::search::params::includes_from(c.resource_type)
                    .map(|i| format!("{}:{}", i.source, i.param))
                    .collect();
                if !includes.is_empty() {
                    resource["searchInclude"] = json!(includes);
                }
                let revincludes: Vec<String> =
                    crate::search::params::revincludes_to(c.resource_type)
                        .map(|i| format!("{}:{}", i.source, i.param))
                        .collect();
                if !revincludes.is_empty() {
                    resource["searchRevInclude"] = json!(revincludes);
                }
            }
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
    resources.push(audit_event_capability());
    resources.push(super::message_definition::capability());
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
        "messaging": super::message_definition::messaging(),
        "rest": [{
            "mode": "server",
            "documentation": "FHIR R4 JSON only. Errors are OperationOutcomes; every response carries X-Request-ID. Search: every listed parameter takes comma-separated alternatives (OR) and may be repeated (AND); results are newest first (_sort=_lastUpdated for oldest first), _count per page (default 50, at most 1000; 0 for only the total); Bundle.total is given when the first page holds every match or _count=0 asks (exact, the default for _count=0), otherwise only with _total: accurate is the exact count (a search on one token or reference parameter, for a caller who sees every practice, is counted from that parameter's index alone); estimate is cheap and never less than the total: the index rows matching one such parameter's values (a resource with several matching values counts once for each; exact for status and intent), said in an outcome entry, and exact for any other search; none never counts. Exact counts that are not lookups take turns, a few at a time, so other searches are not kept waiting; one that cannot start within the store's busy timeout (5 s by default) is a 503 with Retry-After; follow the next link to page; _summary=count for only the total; _elements for chosen top-level elements (tagged SUBSETTED); _include and _revinclude as listed per type. An unknown parameter is ignored and reported in an OperationOutcome entry (search.mode outcome) unless the request says Prefer: handling=strict (then 400); a bad value of a known parameter is a 400 unless the request says Prefer: handling=lenient. A trailing slash on any path is the same path; URLs in answers are absolute. Type-level history (GET /fhir/{type}/_history) and whole-system history are not supported (405: every version of a type is every practice's data); read one resource's history, or search with _lastUpdated.",
            "resource": resources,
            "interaction": [{
                "code": "transaction",
                "documentation": "POST /fhir with a referral transaction Bundle (sprig-referral-bundle): one ServiceRequest, its Patient and Consent, and the practitioner, practice, conditions and questionnaire responses that go with it. Entries are POST (the referral always) or conditional PUT (Type?identifier=…); a PUT by id, or a resource type that does not come with a referral, is refused. All or nothing; urn:uuid references are rewritten to the ids Sprig assigns; request.ifNoneExist and conditional PUT find resources already held; the answer is a transaction-response Bundle with each entry's status and location.",
            }],
            "operation": [{
                "name": "process-message",
                "definition": "http://hl7.org/fhir/OperationDefinition/MessageHeader-process-message",
                "documentation": "POST /fhir/$process-message with a BaRS-style referral message (sprig-referral-message: MessageHeader event servicerequest-request, reason new or update, focus the ServiceRequest). Synchronous: a servicerequest-response message whose response.code is ok; a refusal is a bare OperationOutcome with the BaRS http-error-codes code (or, with fhir.message_refusal = message, a fatal-error or transient-error reply carrying it). Other events, and BaRS validation requests, are refused as not-supported. X-Request-ID and X-Correlation-ID are echoed; the same X-Request-ID again with the same body gets the same answer, with another body a 409.",
            }, {
                "name": "validate",
                "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
                "documentation": "POST /fhir/$validate or /fhir/{type}/$validate with a resource or a Parameters (resource, profile, mode); any R4 resource type; 200 with an OperationOutcome holding the issues a create would meet.",
            }],
        }],
    })
}

/// AuditEvent: the audit log, read and searched (`api::audit_event`), never written by
/// a client.
fn audit_event_capability() -> Value {
    let params: Vec<Value> = super::audit_event::SEARCH_PARAMS
        .iter()
        .map(|(name, kind, documentation)| {
            json!({"name": name, "type": kind, "documentation": documentation})
        })
        .collect();
    json!({
        "type": "AuditEvent",
        "documentation": "The audit log: one AuditEvent per request to /fhir, /api and /auth, allowed or refused (IHE Basic Audit Log Patterns as far as they fit: who, from where, what, whose data, outcome). Search parameter names are recorded, never their values. Administrators only. Newest last; _count per page (default 50, at most 1000); follow the next link to page.",
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

/// What an update must carry, as enforced (`api::referrals::update`), and what one
/// that changes nothing does (`store::Updated::Unchanged`).
fn update_rule(rule: UpdateRequires) -> &'static str {
    match rule {
        UpdateRequires::IfMatch => {
            "The update must name the version it changes: If-Match with the ETag of the version read (428 without it, 412 when it is no longer current). An update whose resource is the current version's (meta.versionId and meta.lastUpdated aside) stores nothing (a no-op update): 200 with the current version, its ETag and Last-Modified, nothing sent to the practice."
        }
        UpdateRequires::IfMatchOrVersionId => {
            "The update must name the version it changes: If-Match with the ETag of the version read, or else meta.versionId in the body as read (428 with neither, 412 when the version named is no longer current). An update whose resource is the current version's (meta.versionId and meta.lastUpdated aside) stores nothing (a no-op update): 200 with the current version, its ETag and Last-Modified, nothing sent to the practice."
        }
    }
}

/// `searchParam` for a type, from the same table the search reads, so the
/// statement lists exactly the parameters a query may use.
fn search_params(resource_type: ResourceType) -> Vec<Value> {
    crate::search::all_params(resource_type)
        .map(|p| {
            json!({
                "name": p.name,
                "type": p.kind.code(),
                "documentation": p.documentation,
            })
        })
        .collect()
}

/// `GET /fhir/metadata`.
pub async fn metadata(State(state): State<AppState>, format: ResponseFormat) -> Response {
    format
        .render(&state.capability_statement)
        .unwrap_or_else(IntoResponse::into_response)
}

/// `rest[0].security`: SMART on FHIR, with the token endpoint (the `oauth-uris`
/// extension) when Sprig serves one.
pub fn with_security(mut statement: Value, token_url: Option<&str>) -> Value {
    let mut security = json!({
        "cors": false,
        "service": [{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR",
            }],
        }],
        "description": "SMART Backend Services: a client_credentials grant with a signed JWT client assertion at the token endpoint; every interaction but this CapabilityStatement needs a bearer token with its SMART system scope (when security is configured).",
    });
    if let Some(token) = token_url {
        security["extension"] = json!([{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [{"url": "token", "valueUri": token}],
        }]);
    }
    if let Some(rest) = statement
        .get_mut("rest")
        .and_then(|r| r.get_mut(0))
        .and_then(Value::as_object_mut)
    {
        rest.insert("security".into(), security);
    }
    statement
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_named_in_the_table_is_an_r4_type() {
        for capability in SUPPORTED {
            let name = capability.resource_type.as_str();
            assert_eq!(
                ResourceType::parse(name),
                Ok(capability.resource_type),
                "{name}"
            );
        }
    }
}
