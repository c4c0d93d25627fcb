//! The search parameters Sprig supports, in one table.
//!
//! Expressions are the R4 SearchParameter definitions' (`SearchParameter.expression`),
//! except that `.where(resolve() is Patient)` is written as a target-type filter
//! (`patient_only`): `resolve()` cannot look outside the resource, and the reference's own
//! `Type/id` already says what it points at.

use std::sync::LazyLock;

use crate::fhir::ResourceType;
use crate::fhirpath::{Expression, FhirPath, FhirPathError};

/// The kind of a search parameter, as FHIR names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// A code, identifier or coding: `[system|]code`.
    Token,
    /// A reference to another resource: `Type/id`, `id` or a URL.
    Reference,
    /// A date, dateTime, instant or Period, with a comparison prefix.
    Date,
}

impl ParamType {
    /// The FHIR `search-param-type` code.
    pub fn code(self) -> &'static str {
        match self {
            ParamType::Token => "token",
            ParamType::Reference => "reference",
            ParamType::Date => "date",
        }
    }

    /// The value forms accepted, for error messages and documentation.
    pub(crate) fn syntax(self) -> &'static str {
        match self {
            ParamType::Token => {
                "code, system|code, |code (no system) or system| (any code); commas separate alternatives"
            }
            ParamType::Reference => {
                "Type/id, a plain id, or an absolute URL; commas separate alternatives"
            }
            ParamType::Date => {
                "an optional prefix (eq, ne, gt, ge, lt, le, sa, eb) then YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss[.sss]][Z|±hh:mm] (no zone means UTC; a date covers its whole day)"
            }
        }
    }
}

/// One search parameter of one resource type.
#[derive(Debug)]
pub struct SearchParam {
    /// The parameter's name in a query (`based-on`).
    pub name: &'static str,
    /// Its type.
    pub kind: ParamType,
    /// The FHIRPath expression selecting what is indexed (empty for `_id` and
    /// `_lastUpdated`, which are read from the `resources` table).
    pub expression: &'static str,
    /// Only references to a Patient are indexed (R4's `where(resolve() is Patient)`).
    pub patient_only: bool,
    /// What it finds, for the CapabilityStatement.
    pub documentation: &'static str,
}

impl SearchParam {
    /// The value forms accepted, for error messages.
    pub(crate) fn syntax(&self) -> &'static str {
        if self.name == "_id" {
            "one or more logical ids (A-Z, a-z, 0-9, '-', '.'), separated by commas"
        } else {
            self.kind.syntax()
        }
    }
}

const fn param(
    name: &'static str,
    kind: ParamType,
    expression: &'static str,
    documentation: &'static str,
) -> SearchParam {
    SearchParam {
        name,
        kind,
        expression,
        patient_only: false,
        documentation,
    }
}

const fn patient(expression: &'static str, documentation: &'static str) -> SearchParam {
    SearchParam {
        name: "patient",
        kind: ParamType::Reference,
        expression,
        patient_only: true,
        documentation,
    }
}

use ParamType::{Date, Reference, Token};

/// `_id`: every type, matched on the logical id.
pub const ID: SearchParam = param(
    "_id",
    Token,
    "",
    "The logical id (Sprig's, assigned on create)",
);
/// `_lastUpdated`: every type, matched on when the current version was written.
pub const LAST_UPDATED: SearchParam = param(
    "_lastUpdated",
    Date,
    "",
    "When the current version was stored (meta.lastUpdated), with a prefix: eq, ne, gt, ge, lt, le, sa, eb",
);

/// The parameters of each type, beyond `_id` and `_lastUpdated`.
pub const TABLE: &[(&str, &[SearchParam])] = &[
    (
        "Condition",
        &[
            patient(
                "Condition.subject",
                "The Patient the condition is about (Patient/id or id)",
            ),
            param(
                "subject",
                Reference,
                "Condition.subject",
                "Who the condition is about",
            ),
        ],
    ),
    (
        "Consent",
        &[
            param(
                "patient",
                Reference,
                "Consent.patient",
                "The Patient who consented (Patient/id or id)",
            ),
            param(
                "status",
                Token,
                "Consent.status",
                "draft | proposed | active | rejected | inactive | entered-in-error",
            ),
        ],
    ),
    (
        "Observation",
        &[
            param(
                "identifier",
                Token,
                "Observation.identifier",
                "A business identifier of the observation",
            ),
            param(
                "based-on",
                Reference,
                "Observation.basedOn",
                "The referral (ServiceRequest/id) the outcome measure was recorded for",
            ),
            param(
                "code",
                Token,
                "Observation.code",
                "What was measured (system|code), e.g. a Sprig outcome measure such as ucla3",
            ),
            param(
                "status",
                Token,
                "Observation.status",
                "registered | preliminary | final | amended | corrected | cancelled | entered-in-error | unknown",
            ),
            patient(
                "Observation.subject",
                "The Patient the observation is about (Patient/id or id)",
            ),
            param(
                "subject",
                Reference,
                "Observation.subject",
                "Who or what the observation is about",
            ),
            param(
                "date",
                Date,
                "Observation.effective",
                "When the observation applies (effective[x]; a Period matches by its whole range)",
            ),
            param(
                "derived-from",
                Reference,
                "Observation.derivedFrom",
                "Observations or other resources the value was derived from",
            ),
        ],
    ),
    (
        "Organization",
        &[param(
            "identifier",
            Token,
            "Organization.identifier",
            "A business identifier, e.g. an ODS code (https://fhir.nhs.uk/Id/ods-organization-code|K83999)",
        )],
    ),
    (
        "Patient",
        &[param(
            "identifier",
            Token,
            "Patient.identifier",
            "A patient identifier, e.g. the NHS number (https://fhir.nhs.uk/Id/nhs-number|9000000009)",
        )],
    ),
    (
        "Practitioner",
        &[param(
            "identifier",
            Token,
            "Practitioner.identifier",
            "A practitioner identifier",
        )],
    ),
    (
        "PractitionerRole",
        &[
            param(
                "identifier",
                Token,
                "PractitionerRole.identifier",
                "A practitioner role identifier",
            ),
            param(
                "organization",
                Reference,
                "PractitionerRole.organization",
                "The Organization the role is at",
            ),
            // Also what lets erasure reach a referral's Practitioner: it follows the
            // reference index, and a Practitioner is named only by its PractitionerRole.
            param(
                "practitioner",
                Reference,
                "PractitionerRole.practitioner",
                "The Practitioner who holds the role",
            ),
        ],
    ),
    (
        "Provenance",
        &[
            param(
                "target",
                Reference,
                "Provenance.target",
                "The resource the Provenance is about (ServiceRequest/id, Task/id, Observation/id: every version; a versioned reference matches the same resource)",
            ),
            param(
                "recorded",
                Date,
                "Provenance.recorded",
                "When the version was stored, with a prefix",
            ),
        ],
    ),
    (
        "ServiceRequest",
        &[
            param(
                "identifier",
                Token,
                "ServiceRequest.identifier",
                "The referral's business identifier, e.g. the GP system's referral number (system|value)",
            ),
            param(
                "status",
                Token,
                "ServiceRequest.status",
                "draft | active | on-hold | revoked | completed | entered-in-error | unknown",
            ),
            param(
                "subject",
                Reference,
                "ServiceRequest.subject",
                "Who the referral is for (Patient/id; a patient contained in the referral is not indexed)",
            ),
            patient(
                "ServiceRequest.subject",
                "The Patient the referral is for (Patient/id or id)",
            ),
            param(
                "requester",
                Reference,
                "ServiceRequest.requester",
                "Who asked for the referral (Organization/id, Practitioner/id, PractitionerRole/id…)",
            ),
            param(
                "authored",
                Date,
                "ServiceRequest.authoredOn",
                "When the referral was signed (authoredOn), with a prefix",
            ),
            param(
                "code",
                Token,
                "ServiceRequest.code",
                "What is being requested (system|code)",
            ),
        ],
    ),
    (
        "Task",
        &[
            param(
                "identifier",
                Token,
                "Task.identifier",
                "A business identifier of the task",
            ),
            param(
                "based-on",
                Reference,
                "Task.basedOn",
                "The referral (ServiceRequest/id) the task fulfils",
            ),
            param(
                "focus",
                Reference,
                "Task.focus",
                "What the task acts on (ServiceRequest/id)",
            ),
            param(
                "status",
                Token,
                "Task.status",
                "The FHIR task status: requested | accepted | rejected | in-progress | completed | cancelled…",
            ),
            param(
                "business-status",
                Token,
                "Task.businessStatus",
                "The referral's stage in the social prescribing service (system|code)",
            ),
            patient("Task.for", "The Patient the task is for (Patient/id or id)"),
            param(
                "subject",
                Reference,
                "Task.for",
                "Who the task is for (Task.for)",
            ),
            param(
                "owner",
                Reference,
                "Task.owner",
                "Who is responsible for the task, e.g. the social prescribing service (Organization/id)",
            ),
            param(
                "modified",
                Date,
                "Task.lastModified",
                "When the task was last changed (Task.lastModified), with a prefix",
            ),
        ],
    ),
];

/// The parameters of `resource_type` beyond `_id` and `_lastUpdated` (none for
/// a type Sprig does not index).
pub fn params_for(resource_type: ResourceType) -> &'static [SearchParam] {
    TABLE
        .iter()
        .find(|(name, _)| *name == resource_type.as_str())
        .map(|(_, params)| *params)
        .unwrap_or(&[])
}

/// Every parameter of `resource_type` a query may use, `_id` and
/// `_lastUpdated` first.
pub fn all_params(resource_type: ResourceType) -> impl Iterator<Item = &'static SearchParam> {
    [&ID, &LAST_UPDATED]
        .into_iter()
        .chain(params_for(resource_type).iter())
}

/// The table's expressions, compiled once: `(type, param name) → expression`.
type CompiledTable = Vec<(&'static str, &'static SearchParam, Expression)>;

static COMPILED: LazyLock<Result<CompiledTable, FhirPathError>> = LazyLock::new(|| {
    let engine = FhirPath::new()?;
    let mut compiled = Vec::new();
    for (resource_type, params) in TABLE {
        for param in *params {
            compiled.push((*resource_type, param, engine.compile(param.expression)?));
        }
    }
    Ok(compiled)
});

/// The compiled expressions of every parameter, or why they could not be
/// compiled (a defect: the table's expressions are fixed).
pub(crate) fn compiled() -> Result<&'static CompiledTable, &'static FhirPathError> {
    COMPILED.as_ref()
}

/// A reference search parameter a search may follow (`_include`) or follow
/// back (`_revinclude`): `{source}:{param}` reaches a `target`.
#[derive(Debug, PartialEq, Eq)]
pub struct IncludeParam {
    /// The type holding the reference.
    pub source: &'static str,
    /// Its reference parameter, from [`TABLE`].
    pub param: &'static str,
    /// The types it may reach.
    pub targets: &'static [&'static str],
}

/// The references `_include` and `_revinclude` follow: from a referral to its
/// patient and requester, and from a Task or outcome Observation to its
/// referral. `_include` names one whose source is the type searched;
/// `_revinclude` one whose target is.
pub const INCLUDES: &[IncludeParam] = &[
    IncludeParam {
        source: "ServiceRequest",
        param: "subject",
        targets: &["Patient"],
    },
    IncludeParam {
        source: "ServiceRequest",
        param: "patient",
        targets: &["Patient"],
    },
    IncludeParam {
        source: "ServiceRequest",
        param: "requester",
        targets: &["Organization", "Practitioner", "PractitionerRole"],
    },
    IncludeParam {
        source: "Task",
        param: "based-on",
        targets: &["ServiceRequest"],
    },
    IncludeParam {
        source: "Observation",
        param: "based-on",
        targets: &["ServiceRequest"],
    },
    IncludeParam {
        source: "Provenance",
        param: "target",
        targets: &["ServiceRequest", "Task", "Observation"],
    },
];

/// `_include` values a search of `resource_type` accepts (`ServiceRequest:subject`).
pub fn includes_from(resource_type: ResourceType) -> impl Iterator<Item = &'static IncludeParam> {
    INCLUDES
        .iter()
        .filter(move |i| i.source == resource_type.as_str())
}

/// `_revinclude` values a search of `resource_type` accepts (`Task:based-on`).
pub fn revincludes_to(resource_type: ResourceType) -> impl Iterator<Item = &'static IncludeParam> {
    INCLUDES
        .iter()
        .filter(move |i| i.targets.contains(&resource_type.as_str()))
}

/// The top-level elements every resource of a served type must have (R4
/// minimum cardinality 1), kept by `_elements` as FHIR requires.
pub fn mandatory_elements(resource_type: ResourceType) -> &'static [&'static str] {
    match resource_type.as_str() {
        "ServiceRequest" => &["status", "intent", "subject"],
        "Task" => &["status", "intent"],
        "Observation" => &["status", "code"],
        "Consent" => &["status", "scope", "category"],
        "Condition" => &["subject"],
        "QuestionnaireResponse" => &["status"],
        _ => &[],
    }
}
