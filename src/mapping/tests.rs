//! Tests of loading, the inbound mapping on the three example shapes, and the builders
//! against the real validator.

use std::sync::LazyLock;

use serde_json::Value;

use super::*;
use crate::fhir::IssueType;
use crate::fhirpath::FhirPath;
use crate::outcomes::{Catalogue, MeasureDefinition};
use crate::referral::Stage;
use crate::referral::record::{
    BusinessIdentifier, MappedReferral, PatientContact, Reason, ReferralFields,
};
use crate::validation::Validator;
use crate::validation::profile::ProfilePass;
use crate::validation::schema::SchemaPass;

static CATALOGUE: LazyLock<Catalogue> =
    LazyLock::new(|| Catalogue::shipped().expect("the shipped measures load"));

fn measure(code: &str) -> &'static MeasureDefinition {
    CATALOGUE.get(code).expect("a shipped measure")
}

static ENGINE: LazyLock<FhirPath> = LazyLock::new(|| FhirPath::new().expect("engine"));
static SHIPPED: LazyLock<Mappings> =
    LazyLock::new(|| Mappings::shipped(&ENGINE).expect("the shipped mappings load"));
/// Built as `app.rs` builds it: the schema pass, then the profile pass.
static VALIDATOR: LazyLock<Validator> = LazyLock::new(|| {
    Validator::new(vec![
        Box::new(SchemaPass::load(&[]).expect("schema")),
        Box::new(ProfilePass::load().expect("profiles")),
    ])
});

fn example(name: &str) -> Value {
    let path = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).expect("JSON")
}

/// Every error the validator reports, as `expression: message`.
fn errors(resource: &Value) -> Vec<String> {
    VALIDATOR
        .validate_resource(resource, None, None)
        .into_iter()
        .filter(|i| i.severity.is_error())
        .map(|i| format!("{}: {}", i.expression.unwrap_or_default(), i.message))
        .collect()
}

// ── Loading ────────────────────────────────────────────────────────────────────────────────

#[test]
fn the_shipped_mappings_load_and_map_every_stage() {
    let outbound = &SHIPPED.outbound;
    for stage in Stage::ALL {
        assert_eq!(outbound.stage(stage).stage, stage);
        assert_eq!(outbound.stage(stage).business_status.code, stage.as_str());
    }
    let required: Vec<Stage> = Stage::ALL
        .into_iter()
        .filter(|s| outbound.stage(*s).status_reason_required)
        .collect();
    assert_eq!(
        required,
        [Stage::Declined, Stage::UnableToContact, Stage::Withdrawn]
    );
    assert_eq!(outbound.stage(Stage::Received).task_status, "received");
    assert_eq!(outbound.stage(Stage::Withdrawn).task_status, "cancelled");
}

/// Writes the shipped files to a temporary folder with `edit` applied to one of them, and
/// returns the load error.
fn load_error(file: &str, edit: impl FnOnce(String) -> String) -> String {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let mut edit = Some(edit);
    for (name, text) in [
        ("inbound.toml", SHIPPED_INBOUND),
        ("outbound.toml", SHIPPED_OUTBOUND),
    ] {
        let text = match edit.take_if(|_| name == file) {
            Some(edit) => edit(text.to_string()),
            None => text.to_string(),
        };
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    let err = Mappings::load_dir(dir.path(), &ENGINE).expect_err("the altered file is refused");
    let path = dir.path().join(file).display().to_string();
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("{path}:")),
        "{message} should name {path}"
    );
    message[path.len()..].to_string()
}

/// 1-based line and column of the first occurrence of `needle` in `text`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} not found"));
    let before = &text[..at];
    (
        before.matches('\n').count() + 1,
        before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1,
    )
}

fn replace_once(text: String, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from} not in the shipped file");
    text.replacen(from, to, 1)
}

#[test]
fn the_shipped_files_load_from_a_folder_too() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    std::fs::write(dir.path().join("inbound.toml"), SHIPPED_INBOUND).expect("write");
    std::fs::write(dir.path().join("outbound.toml"), SHIPPED_OUTBOUND).expect("write");
    assert!(Mappings::load_dir(dir.path(), &ENGINE).is_ok());
    std::fs::remove_file(dir.path().join("outbound.toml")).expect("remove");
    let err = Mappings::load_dir(dir.path(), &ENGINE).expect_err("missing file");
    assert!(matches!(err, MappingError::Read { .. }), "{err}");
    assert!(err.to_string().contains("outbound.toml"), "{err}");
}

#[test]
fn an_unknown_key_names_the_place_and_the_allowed_keys() {
    let message = load_error("inbound.toml", |t| {
        replace_once(t, "[phone]\nexpression", "[phone]\nexpresion")
    });
    let (line, _) = position(SHIPPED_INBOUND, "[phone]\nexpression");
    assert!(
        message.starts_with(&format!(":{}:1: unknown field `expresion`", line + 1)),
        "{message}"
    );
    assert!(
        message.ends_with("expected one of `expression`, `required`, `missing`"),
        "{message}"
    );

    let message = load_error("inbound.toml", |t| {
        replace_once(t, "[reply_to]", "[reply_too]")
    });
    assert!(message.contains("unknown field `reply_too`"), "{message}");
    assert!(
        message.contains("`referral_identifier_system`"),
        "{message}"
    );

    let message = load_error("outbound.toml", |t| {
        replace_once(t, "status_reason_required = true", "reason_required = true")
    });
    assert!(
        message.contains("unknown field `reason_required`"),
        "{message}"
    );
}

#[test]
fn toml_syntax_errors_say_where() {
    let message = load_error("outbound.toml", |t| {
        replace_once(t, "[stages.accepted]", "[stages.accepted")
    });
    let (line, _) = position(SHIPPED_OUTBOUND, "[stages.accepted]");
    assert!(message.starts_with(&format!(":{line}:")), "{message}");
}

#[test]
fn a_bad_expression_is_located_inside_the_string() {
    let message = load_error("inbound.toml", |t| {
        replace_once(t, "\"%patient.birthDate\"", "\"%patient.birthDate.\"")
    });
    let (line, column) = position(SHIPPED_INBOUND, "\"%patient.birthDate\"");
    // The error is after the trailing dot: column of the opening quote + 1 + 19.
    assert!(
        message.starts_with(&format!(
            ":{line}:{}: birth_date: FHIRPath syntax error",
            column + 20
        )),
        "{message}"
    );
}

#[test]
fn an_unknown_function_or_wrong_arity_is_refused_at_load() {
    let message = load_error("inbound.toml", |t| {
        replace_once(
            t,
            "%home_address.postalCode",
            "%home_address.postalCode.upperCase()",
        )
    });
    let (line, column) = position(SHIPPED_INBOUND, "%home_address.postalCode");
    assert_eq!(
        message,
        format!(
            ":{line}:{}: postcode: FHIRPath unknown function upperCase(), in \"%home_address.postalCode.upperCase()\"",
            column + 25
        )
    );

    let message = load_error("inbound.toml", |t| {
        replace_once(
            t,
            "%patient_name.given.join(' ')",
            "%patient_name.given.join(' ', ',')",
        )
    });
    let (line, column) = position(SHIPPED_INBOUND, "%patient_name.given.join(' ')");
    assert_eq!(
        message,
        format!(
            ":{line}:{}: given_name: FHIRPath join() takes 0 or 1 arguments, not 2, in \"%patient_name.given.join(' ', ',')\"",
            column + 20
        )
    );
}

#[test]
fn an_unknown_variable_is_refused_at_load() {
    let message = load_error("inbound.toml", |t| {
        replace_once(t, "\"%consent.status\"", "\"%consnet.status\"")
    });
    let (line, column) = position(SHIPPED_INBOUND, "\"%consent.status\"");
    assert!(
        message.starts_with(&format!(
            ":{line}:{}: consent_status: unknown variable %consnet",
            column + 1
        )),
        "{message}"
    );
    assert!(message.contains("%referral, %patient"), "{message}");

    // A variable sees only the variables above it.
    let message = load_error("inbound.toml", |t| {
        replace_once(
            t,
            "placer = \"%referral.identifier",
            "placer = \"%patient_name | %referral.identifier",
        )
    });
    assert!(
        message.contains("variables.placer: unknown variable %patient_name"),
        "{message}"
    );
    let message = load_error("inbound.toml", |t| {
        replace_once(t, "placer = ", "patient = ")
    });
    assert!(message.contains("%patient is already defined"), "{message}");
}

#[test]
fn always_required_fields_cannot_be_made_optional() {
    let message = load_error("inbound.toml", |t| {
        replace_once(
            t,
            "expression = \"%referral.status\"\nrequired = true",
            "expression = \"%referral.status\"\nrequired = false",
        )
    });
    assert!(message.contains("status is always required"), "{message}");
}

#[test]
fn an_explanation_of_a_refusal_needs_a_required_field() {
    let message = load_error("inbound.toml", |t| {
        replace_once(
            t,
            "expression = \"%referral.priority\"",
            "expression = \"%referral.priority\"\nmissing = \"no priority\"",
        )
    });
    assert!(
        message.contains("priority: `missing` explains a refusal"),
        "{message}"
    );
}

#[test]
fn a_missing_stage_mapping_is_refused() {
    let message = load_error("outbound.toml", |t| {
        let start = t.find("[stages.withdrawn]").expect("withdrawn");
        let end = start + t[start..].find("\n\n").expect("end of table");
        format!("{}{}", &t[..start], &t[end..])
    });
    let (line, column) = position(SHIPPED_OUTBOUND, "[stages.received]");
    assert_eq!(
        message,
        format!(
            ":{line}:{column}: stage 'withdrawn' has no Task mapping: add a [stages.withdrawn] table"
        )
    );

    let message = load_error("outbound.toml", |t| {
        replace_once(t, "[stages.in-support]", "[stages.supporting]")
    });
    assert!(
        message.contains("[stages.supporting]: 'supporting' is not a referral stage"),
        "{message}"
    );
}

#[test]
fn stage_mappings_that_break_the_task_profile_are_refused() {
    // sprig-task-1: a declined Task needs a reason.
    let message = load_error("outbound.toml", |t| {
        replace_once(
            t,
            "business_status = { code = \"declined\", display = \"Declined\" }\nstatus_reason_required = true",
            "business_status = { code = \"declined\", display = \"Declined\" }\nstatus_reason_required = false",
        )
    });
    assert!(
        message.contains(
            "stage 'declined': status_reason_required = false contradicts the Task profile's invariant sprig-task-1"
        ),
        "{message}"
    );
    // sprig-task-2: the stage and the Task status must agree.
    let message = load_error("outbound.toml", |t| {
        replace_once(
            t,
            "task_status = \"received\"",
            "task_status = \"requested\"",
        )
    });
    let (line, column) = position(SHIPPED_OUTBOUND, "\"received\"\nbusiness_status");
    assert!(
        message.starts_with(&format!(
            ":{line}:{column}: stage 'received': task_status 'requested' contradicts the Task profile's invariant sprig-task-2"
        )),
        "{message}"
    );
    let message = load_error("outbound.toml", |t| {
        replace_once(
            t,
            "task_status = \"received\"",
            "task_status = \"recieved\"",
        )
    });
    assert!(
        message.contains("is not a FHIR task-status code"),
        "{message}"
    );
    let message = load_error("outbound.toml", |t| {
        replace_once(t, "code = \"plan-agreed\"", "code = \"planned\"")
    });
    assert!(
        message.contains(
            "stage 'plan-agreed': business_status code 'planned' is not a sprig-referral-stage code"
        ),
        "{message}"
    );
}

#[test]
fn stage_index_follows_stage_all() {
    for (i, stage) in Stage::ALL.into_iter().enumerate() {
        assert_eq!(SHIPPED.outbound.stage(stage).stage, stage, "{i}");
    }
}

// ── Inbound ────────────────────────────────────────────────────────────────────────────────

/// A reference resolved by hand, as the gateway will: `#id` in `contained`, or a Bundle
/// entry's `fullUrl`.
fn resolve<'a>(reference: &Value, container: &'a Value) -> Option<&'a Value> {
    let reference = reference["reference"].as_str()?;
    if let Some(id) = reference.strip_prefix('#') {
        return container["contained"]
            .as_array()?
            .iter()
            .find(|c| c["id"] == id);
    }
    container["entry"]
        .as_array()?
        .iter()
        .find(|e| e["fullUrl"] == reference)
        .map(|e| &e["resource"])
}

fn entry<'a>(bundle: &'a Value, resource_type: &str) -> &'a Value {
    bundle["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| &e["resource"])
        .find(|r| r["resourceType"] == resource_type)
        .unwrap_or_else(|| panic!("no {resource_type}"))
}

#[test]
fn maps_the_referral_with_contained_resources() {
    let referral = example("referral-servicerequest.json");
    let practice = resolve(&referral["requester"], &referral);
    let mapped = SHIPPED
        .inbound
        .apply(&InboundResources {
            referral: &referral,
            patient: resolve(&referral["subject"], &referral),
            requester: practice,
            practice,
            consent: resolve(&referral["supportingInfo"][0], &referral),
            message: None,
            bundle: None,
            sender: None,
            end_user_organisation: None,
        })
        .expect("maps");
    let some = |s: &str| Some(s.to_string());
    assert_eq!(
        mapped,
        MappedReferral {
            identifier: BusinessIdentifier {
                system: "https://gp-system.example.org/Id/referral".into(),
                value: "REF-2026-000123".into(),
            },
            fields: ReferralFields {
                fhir_status: "active".into(),
                intent: some("order"),
                priority: some("routine"),
                authored_on: some("2026-11-20T09:30:00+00:00"),
                practice_ods_code: some("K83999"),
                practice_name: some("Example Medical Centre"),
                referrer_name: some("Example Medical Centre"),
                referrer_identifier: None,
                consent_status: some("active"),
                consent_date: some("2026-11-20T09:25:00+00:00"),
                reply_to: None,
                patient: PatientContact {
                    nhs_number: some("9000000009"),
                    given_name: some("Siân"),
                    family_name: some("Llywelyn-Łukasz"),
                    birth_date: some("1951-03-14"),
                    phone: some("07700 900123"),
                    email: None,
                    address: some("12 Example Street, Northampton"),
                    postcode: some("NN1 1AA"),
                },
                reasons: vec![
                    Reason {
                        system: some(
                            "https://sprig-gateway.org/fhir/CodeSystem/sprig-referral-reason"
                        ),
                        code: some("loneliness"),
                        display: some("Loneliness or social isolation"),
                        text: some("Loneliness and social isolation since bereavement"),
                    },
                    Reason {
                        system: some(
                            "https://sprig-gateway.org/fhir/CodeSystem/sprig-referral-reason"
                        ),
                        code: some("bereavement"),
                        display: some("Bereavement"),
                        text: None,
                    },
                ],
                notes: vec![
                    "Prefers a call after 2pm. Speaks Welsh (Cymraeg) – happy in English too."
                        .into()
                ],
            },
        }
    );
}

/// The resources of a Bundle example, resolved as the gateway will.
fn bundle_input(bundle: &Value) -> InboundResources<'_> {
    let referral = entry(bundle, "ServiceRequest");
    let requester = resolve(&referral["requester"], bundle);
    let practice = requester.and_then(|r| resolve(&r["organization"], bundle));
    let message = (bundle["type"] == "message").then(|| entry(bundle, "MessageHeader"));
    InboundResources {
        referral,
        patient: resolve(&referral["subject"], bundle),
        requester,
        practice,
        consent: resolve(&referral["supportingInfo"][0], bundle),
        message,
        bundle: Some(bundle),
        sender: None,
        end_user_organisation: None,
    }
}

#[test]
fn maps_the_transaction_bundle() {
    let bundle = example("referral-transaction-bundle.json");
    let mapped = SHIPPED.inbound.apply(&bundle_input(&bundle)).expect("maps");
    assert_eq!(mapped.identifier.value, "REF-2026-000456");
    assert_eq!(mapped.fields.fhir_status, "active");
    assert_eq!(mapped.fields.practice_ods_code.as_deref(), Some("Y12345"));
    assert_eq!(
        mapped.fields.practice_name.as_deref(),
        Some("Example Street Surgery")
    );
    // The practitioner is found through the PractitionerRole, by resolve() in the Bundle.
    assert_eq!(
        mapped.fields.referrer_name.as_deref(),
        Some("Dr Jordan Example")
    );
    assert_eq!(
        mapped.fields.referrer_identifier.as_deref(),
        Some("555000000101")
    );
    assert_eq!(mapped.fields.reasons.len(), 2);
    assert_eq!(mapped.fields.reasons[1].code.as_deref(), Some("financial"));
    assert_eq!(mapped.fields.consent_status.as_deref(), Some("active"));
    assert_eq!(mapped.fields.reply_to, None);
    assert!(mapped.fields.patient.nhs_number.is_some());
}

#[test]
fn maps_the_message_bundle() {
    let bundle = example("referral-message-bundle.json");
    let mapped = SHIPPED.inbound.apply(&bundle_input(&bundle)).expect("maps");
    assert_eq!(mapped.identifier.value, "REF-2026-000789");
    assert_eq!(mapped.fields.intent.as_deref(), Some("plan"));
    assert_eq!(mapped.fields.patient.given_name.as_deref(), Some("Rowan"));
    assert_eq!(
        mapped.fields.patient.family_name.as_deref(),
        Some("Ellis-Banerjee")
    );
    assert_eq!(mapped.fields.patient.phone.as_deref(), Some("07700 900456"));
    assert_eq!(
        mapped.fields.patient.email.as_deref(),
        Some("adaeze.example@example.org")
    );
    assert_eq!(
        mapped.fields.patient.address.as_deref(),
        Some("4 Sample Row, Kettering")
    );
    assert_eq!(mapped.fields.patient.postcode.as_deref(), Some("NN16 0AA"));
    assert_eq!(mapped.fields.practice_ods_code.as_deref(), Some("Y12345"));
    assert_eq!(
        mapped.fields.referrer_name.as_deref(),
        Some("Dr Jordan Example")
    );
    assert_eq!(
        mapped.fields.reasons[1].text.as_deref(),
        Some("Worried about debts since reduced working hours")
    );
    assert_eq!(
        mapped.fields.notes,
        ["Happy to be phoned on weekday mornings."]
    );
    assert_eq!(
        mapped.fields.reply_to.as_deref(),
        Some("https://fhir.nhs.uk/Id/ods-organization-code|Y12345")
    );
}

/// The message example, its requester made the Practitioner (no practice through it), its
/// Consent referenced without `type`, its identifier without PLAC: as a BaRS sender sends.
fn practitioner_requested_message() -> Value {
    let mut message = example("referral-message-bundle.json");
    let referral = &mut message["entry"][1]["resource"];
    referral["requester"] =
        serde_json::json!({"reference": "urn:uuid:9e0f1a2b-3c4d-4e5f-8a6b-7c8d9e0f1a2b"});
    referral["supportingInfo"][0]
        .as_object_mut()
        .map(|m| m.shift_remove("type"));
    referral["identifier"][0]
        .as_object_mut()
        .map(|m| m.shift_remove("type"));
    message
}

#[test]
fn the_practice_is_found_through_the_requester_or_the_message_sender() {
    use super::intake::{Declared, SubmittedReferral};
    let map = |message: &Value, declared: Option<&Value>| {
        let inputs = SubmittedReferral {
            referral: &message["entry"][1]["resource"],
            bundle: Some(message),
        }
        .inputs_with(Declared {
            end_user_organisation: declared,
        });
        SHIPPED.inbound.apply(&inputs)
    };
    // Through the Practitioner's PractitionerRole in the message.
    let message = practitioner_requested_message();
    let mapped = map(&message, None).expect("maps");
    assert_eq!(mapped.identifier.value, "REF-2026-000789");
    assert_eq!(mapped.fields.practice_ods_code.as_deref(), Some("Y12345"));
    assert_eq!(mapped.fields.consent_status.as_deref(), Some("active"));
    assert_eq!(
        mapped.fields.referrer_name.as_deref(),
        Some("Dr Jordan Example")
    );
    // Without the role: from MessageHeader.sender.
    let mut without_role = message.clone();
    without_role["entry"]
        .as_array_mut()
        .map(|entries| entries.remove(4));
    let mapped = map(&without_role, None).expect("maps");
    assert_eq!(mapped.fields.practice_ods_code.as_deref(), Some("Y12345"));
    assert_eq!(
        mapped.fields.practice_name.as_deref(),
        Some("Example Street Surgery")
    );
    // The practice the requester gives wins over the sender; one without an ODS code does
    // not.
    let mut other_sender = message.clone();
    other_sender["entry"][0]["resource"]["sender"] =
        serde_json::json!({"reference": "urn:uuid:8d9e0f1a-2b3c-4d4e-8f5a-6b7c8d9e0f1a"});
    let mapped = map(&other_sender, None).expect("maps");
    assert_eq!(mapped.fields.practice_ods_code.as_deref(), Some("Y12345"));
    other_sender["entry"][6]["resource"]["identifier"] = serde_json::json!([]);
    let mapped = map(&other_sender, None).expect("maps");
    assert_eq!(mapped.fields.practice_ods_code.as_deref(), Some("Y99999"));
    // Nowhere: refused, saying where Sprig looked; the declared organisation is the last
    // resort.
    let mut nowhere = without_role.clone();
    nowhere["entry"][0]["resource"]
        .as_object_mut()
        .map(|m| m.shift_remove("sender"));
    let issues = map(&nowhere, None).expect_err("refused");
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].message_id, "mapping-required-field");
    assert!(
        issues[0].message.contains("MessageHeader.sender"),
        "{}",
        issues[0].message
    );
    let declared = serde_json::json!({"resourceType": "Organization", "identifier": [
        {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "A81001"}]});
    let mapped = map(&nowhere, Some(&declared)).expect("maps");
    assert_eq!(mapped.fields.practice_ods_code.as_deref(), Some("A81001"));
}

#[test]
fn a_missing_required_field_or_several_values_are_issues() {
    let mut referral = example("referral-servicerequest.json");
    // No identifier with a system and a value, two NHS numbers, and no practice.
    if let Some(identifier) = referral["identifier"][0].as_object_mut() {
        identifier.retain(|key, _| key == "type");
    }
    let mut patient = referral["contained"][0].clone();
    let second = patient["identifier"][0].clone();
    patient["identifier"]
        .as_array_mut()
        .expect("identifiers")
        .push(second);
    let issues = SHIPPED
        .inbound
        .apply(&InboundResources {
            referral: &referral,
            patient: Some(&patient),
            requester: None,
            practice: None,
            consent: None,
            message: None,
            bundle: None,
            sender: None,
            end_user_organisation: None,
        })
        .expect_err("refused");
    let summary: Vec<(&str, IssueType, &str)> = issues
        .iter()
        .map(|i| (i.message_id, i.code, i.expression.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        summary,
        [
            (
                "mapping-required-field",
                IssueType::Required,
                "%placer.system"
            ),
            (
                "mapping-required-field",
                IssueType::Required,
                "%placer.value"
            ),
            (
                "mapping-required-field",
                IssueType::Required,
                "%referring_practice.identifier.where(system = 'https://fhir.nhs.uk/Id/ods-organization-code').value"
            ),
            (
                "mapping-multiple-values",
                IssueType::Structure,
                "%patient.identifier.where(system = 'https://fhir.nhs.uk/Id/nhs-number').value"
            ),
        ]
    );
    // A refusal for want of a practice says where Sprig looked.
    assert!(
        issues[2]
            .message
            .contains("Sprig looked at the requester when it is an Organization"),
        "{}",
        issues[2].message
    );
    assert_eq!(
        issues[0].message,
        "The referral has no referral_identifier_system (required; mapped by %placer.system in mappings/inbound.toml)"
    );
    assert!(
        issues[3].message.contains("has 2 values for nhs_number"),
        "{}",
        issues[3].message
    );
    assert_eq!(
        issues[0].source.as_deref(),
        Some("mappings/inbound.toml#referral_identifier_system")
    );
}

#[test]
fn evaluation_errors_and_elements_are_issues_not_panics() {
    let inbound = SHIPPED_INBOUND
        .replacen(
            "expression = \"%referral.priority\"",
            "expression = \"%referral.priority + 1\"",
            1,
        )
        .replacen(
            "expression = \"%consent.dateTime\"",
            "expression = \"%consent.patient\"",
            1,
        );
    let mappings = Mappings::from_texts(
        &ENGINE,
        ("inbound.toml", &inbound),
        ("outbound.toml", SHIPPED_OUTBOUND),
    )
    .expect("loads");
    let referral = example("referral-servicerequest.json");
    let practice = resolve(&referral["requester"], &referral);
    let issues = mappings
        .inbound
        .apply(&InboundResources {
            referral: &referral,
            patient: None,
            requester: practice,
            practice,
            consent: resolve(&referral["supportingInfo"][0], &referral),
            message: None,
            bundle: None,
            sender: None,
            end_user_organisation: None,
        })
        .expect_err("refused");
    let ids: Vec<&str> = issues.iter().map(|i| i.message_id).collect();
    assert_eq!(ids, ["mapping-evaluation-failed", "mapping-not-primitive"]);
    assert!(
        issues[0].message.contains("priority"),
        "{}",
        issues[0].message
    );
    assert!(
        issues[1].message.contains("a Reference element"),
        "{}",
        issues[1].message
    );
}

// ── Outbound builders ──────────────────────────────────────────────────────────────────────

const REFERRAL_ID: &str = "019a4b2c-7d8e-7f90-a1b2-c3d4e5f6a7b8";
const SERVICE: ServiceRef<'static> = ServiceRef {
    name: "Example Social Prescribing Service",
    ods_code: Some("Y99999"),
};

fn task_input(stage: Stage, outputs: &[TaskOutput<'_>]) -> Value {
    let reason = SHIPPED
        .outbound
        .stage(stage)
        .status_reason_required
        .then_some("The person asked for the referral to be closed.");
    SHIPPED
        .outbound
        .task(&TaskInput {
            task_id: "3b4c5d6e-7f8a-4b9c-8d0e-1f2a3b4c5d6e",
            stage,
            reason,
            referral_id: REFERRAL_ID,
            patient: PatientRef::Id("b7e8c2f4-3d5a-4e61-9a0b-5c7d8e9f1a23"),
            practice_ods_code: Some("K83999"),
            service: SERVICE,
            authored_on: "2026-11-20T10:02:00+00:00",
            last_modified: "2026-11-23T14:40:00+00:00",
            note: Some("Left a voicemail."),
            outputs,
        })
        .expect("builds")
}

#[test]
fn a_task_for_every_stage_meets_the_profile() {
    let outputs = [
        TaskOutput {
            measure: measure("swemwbs"),
            observation_id: "4c5d6e7f-8a9b-4c0d-9e1f-2a3b4c5d6e7f",
        },
        TaskOutput {
            measure: measure("ucla3"),
            observation_id: "5d6e7f8a-9b0c-4d1e-8f2a-3b4c5d6e7f8a",
        },
    ];
    for stage in Stage::ALL {
        let outputs: &[TaskOutput<'_>] = if stage == Stage::Completed {
            &outputs
        } else {
            &[]
        };
        let task = task_input(stage, outputs);
        assert_eq!(errors(&task), Vec::<String>::new(), "{stage}: {task:#}");
        assert_eq!(task["businessStatus"]["coding"][0]["code"], stage.as_str());
        assert_eq!(
            task["focus"]["reference"],
            format!("ServiceRequest/{REFERRAL_ID}")
        );
        assert_eq!(
            task["identifier"][0]["system"],
            "https://sprig-gateway.org/fhir/Id/task"
        );
        // Stable: the same input gives the same Task.
        assert_eq!(task, task_input(stage, outputs));
    }
    // The validator is live: a Task that breaks sprig-task-2 is refused.
    let mut broken = task_input(Stage::Contacted, &[]);
    broken["status"] = "accepted".into();
    assert!(
        errors(&broken).iter().any(|e| e.contains("sprig-task-2")),
        "{:?}",
        errors(&broken)
    );
    let completed = task_input(Stage::Completed, &outputs);
    assert_eq!(
        completed["output"][0]["type"]["coding"][0]["code"],
        "718466001"
    );
    assert_eq!(
        completed["output"][1]["valueReference"]["reference"],
        "Observation/5d6e7f8a-9b0c-4d1e-8f2a-3b4c5d6e7f8a"
    );
}

#[test]
fn tasks_carry_the_social_prescribing_snomed_codes_gp_systems_file() {
    // The Social Prescribing Information Standard's codes, as a second coding of
    // businessStatus beside Sprig's stage: the referral accepted, and declined.
    let snomed = |stage| {
        let task = task_input(stage, &[]);
        assert_eq!(errors(&task), Vec::<String>::new(), "{stage}");
        let codings = task["businessStatus"]["coding"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        codings
            .iter()
            .find(|c| c["system"] == "http://snomed.info/sct")
            .map(|c| c["code"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(snomed(Stage::Accepted).as_deref(), Some("871731000000106"));
    assert_eq!(snomed(Stage::Declined).as_deref(), Some("871711000000103"));
    for stage in [
        Stage::Received,
        Stage::Contacted,
        Stage::Completed,
        Stage::Withdrawn,
    ] {
        assert_eq!(snomed(stage), None, "{stage}");
    }
    // Sprig's own stage coding stays first (sprig-task-2 reads it).
    assert_eq!(
        task_input(Stage::Declined, &[])["businessStatus"]["coding"][0]["code"],
        "declined"
    );
    let message = load_error("outbound.toml", |t| {
        replace_once(
            t,
            "code = \"871711000000103\"",
            "code = \"87171100000010X\"",
        )
    });
    assert!(
        message.contains(
            "stage 'declined': record_code needs a system and, in SNOMED CT, a code of digits only"
        ),
        "{message}"
    );
}

#[test]
fn a_task_for_a_contained_patient_refers_to_the_nhs_number_and_is_valid() {
    let task = SHIPPED
        .outbound
        .task(&TaskInput {
            task_id: "t1",
            stage: Stage::Accepted,
            reason: None,
            referral_id: REFERRAL_ID,
            patient: PatientRef::NhsNumber("9000000009"),
            practice_ods_code: None,
            service: ServiceRef {
                name: "A service without an ODS code",
                ods_code: None,
            },
            authored_on: "2026-11-20T10:02:00+00:00",
            last_modified: "2026-11-20T10:02:00+00:00",
            note: None,
            outputs: &[],
        })
        .expect("builds");
    assert_eq!(errors(&task), Vec::<String>::new(), "{task:#}");
    assert_eq!(task["for"]["identifier"]["value"], "9000000009");
    assert!(task.get("requester").is_none());
}

#[test]
fn a_stage_that_needs_a_reason_refuses_to_build_without_one() {
    for stage in [Stage::Declined, Stage::UnableToContact, Stage::Withdrawn] {
        let err = SHIPPED
            .outbound
            .task(&TaskInput {
                task_id: "t1",
                stage,
                reason: Some("  "),
                referral_id: REFERRAL_ID,
                patient: PatientRef::Id("p1"),
                practice_ods_code: None,
                service: SERVICE,
                authored_on: "2026-11-20T10:02:00+00:00",
                last_modified: "2026-11-20T10:02:00+00:00",
                note: None,
                outputs: &[],
            })
            .expect_err("needs a reason");
        assert_eq!(err, ResourceBuildError::ReasonRequired { stage });
    }
}

fn observation(definition: &MeasureDefinition, answers: &[i64], patient: PatientRef<'_>) -> Value {
    SHIPPED
        .outbound
        .observation(&ObservationInput {
            observation_id: "4c5d6e7f-8a9b-4c0d-9e1f-2a3b4c5d6e7f",
            measure: definition,
            answers,
            referral_id: REFERRAL_ID,
            patient,
            effective: "2027-02-26T10:30:00+00:00",
            service: SERVICE,
        })
        .expect("builds")
}

#[test]
fn an_observation_for_every_measure_meets_its_profile_and_definition() {
    for definition in CATALOGUE.iter() {
        let items = &definition.items;
        // Lowest, highest and a mix of answers.
        let mixed: Vec<i64> = items
            .iter()
            .enumerate()
            .map(|(i, item)| item.min + (i as i64 % (item.max - item.min + 1)))
            .collect();
        for answers in [
            items.iter().map(|i| i.min).collect::<Vec<_>>(),
            items.iter().map(|i| i.max).collect(),
            mixed,
        ] {
            for patient in [PatientRef::Id("p1"), PatientRef::NhsNumber("9000000009")] {
                let obs = observation(definition, &answers, patient);
                let code = &definition.code;
                assert_eq!(errors(&obs), Vec::<String>::new(), "{code}: {obs:#}");
                assert_eq!(
                    definition.observation_issues(&obs),
                    Vec::<String>::new(),
                    "{code}"
                );
                assert_eq!(obs["component"].as_array().map(Vec::len), Some(items.len()));
                assert_eq!(obs["meta"]["profile"][0], definition.observation.profile);
                match definition.sum_range() {
                    Some(_) => assert_eq!(obs["valueInteger"], answers.iter().sum::<i64>()),
                    None => assert!(obs.get("valueInteger").is_none()),
                }
            }
        }
    }
    let swemwbs = measure("swemwbs");
    let obs = observation(swemwbs, &[3, 4, 3, 3, 4, 3, 4], PatientRef::Id("p1"));
    assert_eq!(obs["valueInteger"], 24);
    // The validator is live: a total that is not the sum of the items is refused, by the
    // profile and by the definition.
    let mut broken = obs.clone();
    broken["valueInteger"] = 25.into();
    assert!(!errors(&broken).is_empty());
    assert_eq!(
        swemwbs.observation_issues(&broken),
        ["Observation.valueInteger: needs the sum of the items, 24"]
    );
    assert_eq!(
        obs["note"][0]["text"],
        "SWEMWBS metric score 21.54 (total 24, converted with the table in the SWEMWBS definition)"
    );
}

#[test]
fn an_observation_is_scored_before_it_is_built() {
    let err = SHIPPED
        .outbound
        .observation(&ObservationInput {
            observation_id: "o1",
            measure: measure("ucla3"),
            answers: &[1, 2, 7],
            referral_id: REFERRAL_ID,
            patient: PatientRef::Id("p1"),
            effective: "2027-02-26",
            service: SERVICE,
        })
        .expect_err("item 3 is out of range");
    assert!(matches!(err, ResourceBuildError::Score(_)), "{err}");
}

#[test]
fn the_examples_still_validate() {
    // The builders are modelled on these; if they stop validating, so would the builders.
    for name in [
        "task-accepted.json",
        "task-declined.json",
        "task-completed.json",
        "observation-swemwbs.json",
        "observation-ons4.json",
    ] {
        assert_eq!(errors(&example(name)), Vec::<String>::new(), "{name}");
    }
}
