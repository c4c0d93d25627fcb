//! The OpenAPI description of the service API (`src/api/openapi.json`,
//! served at `/api/openapi.json`) stays true:
//!
//! - it is OpenAPI 3.1 whose every `$ref` resolves and whose every schema compiles;
//! - it documents exactly the `/api` routes `src/api/mod.rs` registers;
//! - real values of the Rust types, serialised by serde, match its component
//!   schemas, and wrong ones do not (the schemas are closed, so drift fails);
//! - its request bodies accept and refuse what the handlers' serde structs do;
//! - its enums, transition table and examples agree with the code.
//!
//! No server: these run on the document and the types alone.
//! [`assert_matches_schema`] lets HTTP tests check live answers too.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sprig::api::service::{ListQuery, NoteBody, OPENAPI, OutcomeBody, TransitionBody};
use sprig::referral::record::{
    BusinessIdentifier, Note, NoteSource, Outcome, PatientContact, Reason, ReceivedAs, Referral,
    ReferralDetail, ReferralFields, StageChange,
};
use sprig::referral::stage::Stage;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

static DOCUMENT: LazyLock<Value> =
    LazyLock::new(|| serde_json::from_str(OPENAPI).expect("src/api/openapi.json is JSON"));

/// The OpenAPI document, parsed.
pub fn document() -> &'static Value {
    &DOCUMENT
}

/// A validator for `schema`, a schema object of the document (usually a
/// `$ref` into `components`), with the document's components reachable and
/// formats (`date-time`, `uri-reference`…) checked.
fn validator(schema: &Value) -> jsonschema::Validator {
    let mut root = match schema {
        Value::Object(map) => map.clone(),
        Value::Bool(_) => panic!("boolean schemas are not used here"),
        other => panic!("not a schema: {other}"),
    };
    root.insert(
        "$schema".into(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    root.insert("components".into(), document()["components"].clone());
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&Value::Object(root))
        .unwrap_or_else(|e| panic!("schema {schema} does not compile: {e}"))
}

/// Why `value` does not match `schema` (empty when it does).
fn errors_for(schema: &Value, value: &Value) -> Vec<String> {
    validator(schema)
        .iter_errors(value)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn component(schema_name: &str) -> Value {
    assert!(
        document()["components"]["schemas"]
            .get(schema_name)
            .is_some(),
        "openapi.json has no components.schemas.{schema_name}"
    );
    json!({ "$ref": format!("#/components/schemas/{schema_name}") })
}

/// Why `value` does not match `components.schemas.{schema_name}`.
pub fn schema_errors(schema_name: &str, value: &Value) -> Vec<String> {
    errors_for(&component(schema_name), value)
}

/// Panics, listing every difference, unless `value` matches the component
/// schema `schema_name` of `src/api/openapi.json` (e.g. `"ReferralDetail"`,
/// `"ReferralList"`, `"Outcome"`, `"Problem"`).
pub fn assert_matches_schema(schema_name: &str, value: &serde_json::Value) {
    let errors = schema_errors(schema_name, value);
    assert!(
        errors.is_empty(),
        "this {schema_name} does not match openapi.json:\n  {}\nvalue: {value:#}",
        errors.join("\n  ")
    );
}

/// Panics unless `value` fails `schema_name`.
fn assert_fails_schema(schema_name: &str, value: &Value, why: &str) {
    assert!(
        !schema_errors(schema_name, value).is_empty(),
        "{schema_name} should refuse a value with {why}, but accepted {value:#}"
    );
}

/// Follows a local `$ref` (once, then again if the target is a `$ref`).
fn resolve(value: &Value) -> &Value {
    let mut value = value;
    while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
        value = reference
            .strip_prefix('#')
            .and_then(|pointer| document().pointer(pointer))
            .unwrap_or_else(|| panic!("$ref {reference} does not resolve"));
    }
    value
}

/// Every operation: (METHOD, path, operation).
fn operations() -> Vec<(String, String, &'static Value)> {
    let mut out = Vec::new();
    for (path, item) in document()["paths"].as_object().expect("paths") {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                out.push((method.to_uppercase(), path.clone(), operation));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The document itself

#[test]
fn the_document_is_openapi_3_1_describing_this_version() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "Sprig service API");
    assert_eq!(
        doc["info"]["version"],
        env!("CARGO_PKG_VERSION"),
        "info.version must follow Cargo.toml"
    );
    assert!(
        doc["info"]["description"]
            .as_str()
            .is_some_and(|d| d.len() > 500),
        "info.description explains the workflow"
    );
    let mut operation_ids = BTreeSet::new();
    for (method, path, operation) in operations() {
        let id = operation["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
        assert!(operation_ids.insert(id), "operationId {id} is used twice");
        let responses = operation["responses"]
            .as_object()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| panic!("{method} {path} has no responses"));
        for (code, response) in responses {
            assert!(
                code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()),
                "{method} {path}: response code {code}"
            );
            let response = resolve(response);
            assert!(
                response["description"].is_string(),
                "{method} {path} {code}: no description"
            );
            let content = response["content"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path} {code}: no content"));
            if code.starts_with('4') || code.starts_with('5') {
                assert_eq!(
                    content["application/problem+json"]["schema"],
                    json!({"$ref": "#/components/schemas/Problem"}),
                    "{method} {path} {code}: errors are problem details"
                );
            } else {
                assert!(
                    content["application/json"]["schema"].is_object(),
                    "{method} {path} {code}: a JSON schema"
                );
            }
        }
        // Path parameters: exactly the template's names, all required.
        let in_template: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_owned)
            .collect();
        let mut declared = BTreeSet::new();
        for parameter in operation["parameters"].as_array().into_iter().flatten() {
            let parameter = resolve(parameter);
            let name = parameter["name"].as_str().expect("parameter name");
            assert!(
                parameter["schema"].is_object(),
                "{method} {path}: parameter {name} has a schema"
            );
            if parameter["in"] == "path" {
                assert_eq!(parameter["required"], true, "{path}: {name} is required");
                declared.insert(name.to_owned());
            }
        }
        assert_eq!(declared, in_template, "{method} {path}: path parameters");
        // A POST either takes a documented, required body or is an action
        // on the resource its path names (a retry, a send-now), which takes none.
        if method == "POST" && !path.ends_with("/retry") && !path.ends_with("/send-now") {
            assert_eq!(
                operation["requestBody"]["required"], true,
                "{method} {path} takes a body"
            );
        }
    }
}

#[test]
fn every_ref_resolves() {
    fn walk(value: &Value, at: &str, refs: &mut Vec<(String, String)>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    if key == "$ref" {
                        let target = child.as_str().expect("$ref is a string");
                        refs.push((at.to_owned(), target.to_owned()));
                    } else {
                        walk(child, &format!("{at}/{key}"), refs);
                    }
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, &format!("{at}/{i}"), refs);
                }
            }
            _ => {}
        }
    }
    let mut refs = Vec::new();
    walk(document(), "", &mut refs);
    assert!(refs.len() > 20, "the document uses its components");
    for (at, target) in &refs {
        let found = target
            .strip_prefix('#')
            .and_then(|pointer| document().pointer(pointer));
        assert!(found.is_some(), "$ref {target} at {at} does not resolve");
    }
    // And every component is used or is a schema (schemas are the contract).
    let used: BTreeSet<&str> = refs.iter().map(|(_, t)| t.as_str()).collect();
    for kind in ["responses", "parameters", "headers", "examples"] {
        for name in document()["components"][kind]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(n, _)| n)
        {
            let target = format!("#/components/{kind}/{name}");
            assert!(used.contains(target.as_str()), "{target} is never used");
        }
    }
}

#[test]
fn every_component_schema_compiles() {
    let schemas = document()["components"]["schemas"]
        .as_object()
        .expect("components.schemas");
    for name in [
        "Referral",
        "ReferralDetail",
        "StageChange",
        "Note",
        "Outcome",
        "PatientContact",
        "Reason",
        "BusinessIdentifier",
        "ReferralList",
        "Problem",
        "TransitionRequest",
        "OutcomeRequest",
        "NoteRequest",
        "Stage",
        "Measure",
    ] {
        assert!(schemas.contains_key(name), "components.schemas.{name}");
    }
    for name in schemas.keys() {
        validator(&component(name));
    }
}

// ---------------------------------------------------------------------------
// Routes

/// `(METHOD, path)` of every `.route(...)` in `src/api/mod.rs`.
fn registered_routes() -> BTreeSet<(String, String)> {
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/mod.rs"))
        .expect("src/api/mod.rs");
    let code: String = source
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
        // The console's routes (`api::router_with`), none under /api, are merged in.
        .replace(".merge(extra)", "");
    for other in [
        ".nest(",
        ".nest_service(",
        ".merge(",
        ".route_service(",
        "any(",
        "on(",
    ] {
        assert!(
            !code.contains(other),
            "src/api/mod.rs now uses {other}: teach registered_routes() to read it"
        );
    }
    let method_call = regex::Regex::new(
        r"(?:^|[^A-Za-z0-9_:])(get|post|put|delete|patch|head|options|trace)\s*\(",
    )
    .expect("regex");
    let mut routes = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(start) = rest.find(".route(") {
        let args_start = start + ".route(".len();
        let mut depth = 1;
        let mut end = args_start;
        for (i, c) in rest[args_start..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = args_start + i;
                break;
            }
        }
        assert!(depth == 0, "unbalanced .route( in src/api/mod.rs");
        let args = &rest[args_start..end];
        let mut quoted = args.splitn(3, '"');
        let (_, path, handlers) = (quoted.next(), quoted.next(), quoted.next());
        let path = path.expect("a route's path is a string literal");
        let handlers = handlers.expect("a route has handlers");
        // axum 0.8 writes parameters as `{id}` (and wildcards `{*rest}`), as OpenAPI does.
        let path = path.replace("{*", "{");
        let methods: Vec<String> = method_call
            .captures_iter(handlers)
            .map(|c| c[1].to_uppercase())
            .collect();
        assert!(!methods.is_empty(), "route {path} has no method");
        for method in methods {
            routes.insert((method, path.clone()));
        }
        rest = &rest[end..];
    }
    routes
}

#[test]
fn the_documented_operations_are_exactly_the_api_routes() {
    let all = registered_routes();
    assert!(
        all.iter().any(|(_, p)| p.starts_with("/fhir")),
        "the route reader found the FHIR routes too: {all:?}"
    );
    let registered: BTreeSet<(String, String)> = all
        .into_iter()
        .filter(|(_, path)| path == "/api" || path.starts_with("/api/"))
        .collect();
    assert!(
        registered.len() >= 6,
        "the route reader found the /api routes: {registered:?}"
    );
    let documented: BTreeSet<(String, String)> = operations()
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect();
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    let not_served: Vec<_> = documented.difference(&registered).collect();
    assert!(
        undocumented.is_empty(),
        "routes in src/api/mod.rs missing from openapi.json: {undocumented:?}"
    );
    assert!(
        not_served.is_empty(),
        "operations in openapi.json that src/api/mod.rs does not route: {not_served:?}"
    );
}

// ---------------------------------------------------------------------------
// Real values of the Rust types

fn full_referral() -> Referral {
    Referral {
        id: "019a4c1e-7d3b-7c8e-9a51-2f0e3d6b8c41".into(),
        identifier: BusinessIdentifier {
            system: "https://fhir.example-gp-system.co.uk/referral-id".into(),
            value: "REF-2026-000123".into(),
        },
        stage: Stage::Contacted,
        received_as: ReceivedAs::Message,
        received_at: "2026-11-21T09:14:03.120Z".into(),
        updated_at: "2026-11-23T15:00:00.000Z".into(),
        patient_id: Some("019a4c1e-7d3c-7000-8000-000000000001".into()),
        task_id: "019a4c1e-7d40-7a11-b3e2-55c1a9d0f7e2".into(),
        version: 4,
        assigned_to: None,
        fields: ReferralFields {
            fhir_status: "active".into(),
            intent: Some("order".into()),
            priority: Some("routine".into()),
            authored_on: Some("2026-11-20T16:45:00+00:00".into()),
            practice_ods_code: Some("K83999".into()),
            practice_name: Some("The Beeches Medical Practice".into()),
            referrer_name: Some("Dr A Patel".into()),
            referrer_identifier: Some("555123456789".into()),
            consent_status: Some("active".into()),
            consent_date: Some("2026-11-20".into()),
            reply_to: Some("https://gp.example.org/bars".into()),
            patient: PatientContact {
                nhs_number: Some("9000000009".into()),
                given_name: Some("Jane".into()),
                family_name: Some("Smith".into()),
                birth_date: Some("1957-03-12".into()),
                phone: Some("01632 960123".into()),
                email: Some("jane@example.org".into()),
                address: Some("1 Trevelyan Square, Leeds".into()),
                postcode: Some("LS1 6AE".into()),
            },
            reasons: vec![
                Reason {
                    system: Some("http://snomed.info/sct".into()),
                    code: Some("1144779008".into()),
                    display: Some("Socially isolated".into()),
                    text: Some("Lives alone".into()),
                },
                Reason::default(),
            ],
            // Not served on the record (`skip_serializing`): the detail's `notes` has them.
            notes: vec!["Recently bereaved".into()],
        },
    }
}

/// Every `Option` `None`, every list empty.
fn sparse_referral() -> Referral {
    Referral {
        id: "019a4c1e-7d3b-7c8e-9a51-2f0e3d6b8c42".into(),
        identifier: BusinessIdentifier {
            system: "https://fhir.example-gp-system.co.uk/referral-id".into(),
            value: "REF-2026-000124".into(),
        },
        stage: Stage::Received,
        received_as: ReceivedAs::Resource,
        received_at: "2026-11-21T09:14:03.120Z".into(),
        updated_at: "2026-11-21T09:14:03.120Z".into(),
        patient_id: None,
        task_id: "019a4c1e-7d40-7a11-b3e2-55c1a9d0f7e3".into(),
        version: 1,
        assigned_to: None,
        fields: ReferralFields {
            fhir_status: "active".into(),
            ..ReferralFields::default()
        },
    }
}

fn outcome(measure: &str, answers: &[i64], total: Option<i64>, metric: Option<&str>) -> Outcome {
    Outcome {
        id: format!("019a5e02-3b1c-7f4d-8e6a-0c9b2d4f6a1{}", answers.len() % 10),
        measure: measure.to_owned(),
        recorded_at: "2026-12-01T10:30:00+01:00".into(),
        entered_at: "2026-12-01T10:41:12.305Z".into(),
        actor: "j.okafor".into(),
        answers: answers.to_vec(),
        total,
        metric: metric.map(str::to_owned),
    }
}

fn outcomes() -> Vec<Outcome> {
    vec![
        outcome("swemwbs", &[3, 3, 2, 3, 4, 3, 3], Some(21), Some("19.25")),
        outcome("wemwbs", &[3; 14], Some(42), None),
        outcome("ons4", &[6, 7, 5, 3], None, None),
        outcome("ucla3", &[2, 1, 3], Some(6), None),
    ]
}

fn full_detail() -> ReferralDetail {
    ReferralDetail {
        referral: full_referral(),
        timeline: vec![
            StageChange {
                stage: Stage::Received,
                at: "2026-11-21T09:14:03.120Z".into(),
                actor: "gp".into(),
                reason: None,
                note: None,
                task_version: 1,
            },
            StageChange {
                stage: Stage::Accepted,
                at: "2026-11-21T11:02:45.007Z".into(),
                actor: "j.okafor".into(),
                reason: Some("Meets criteria".into()),
                note: Some("Link worker: Sam".into()),
                task_version: 2,
            },
        ],
        notes: vec![
            Note {
                source: NoteSource::Gp,
                at: "2026-11-21T09:14:03.120Z".into(),
                author: None,
                text: "Recently bereaved".into(),
            },
            Note {
                source: NoteSource::Service,
                at: "2026-11-22T10:00:00.000Z".into(),
                author: Some("j.okafor".into()),
                text: "Prefers a phone call after 2pm".into(),
            },
        ],
        outcomes: outcomes(),
    }
}

fn sparse_detail() -> ReferralDetail {
    ReferralDetail {
        referral: sparse_referral(),
        timeline: vec![StageChange {
            stage: Stage::Received,
            at: "2026-11-21T09:14:03.120Z".into(),
            actor: "gp".into(),
            reason: None,
            note: None,
            task_version: 1,
        }],
        notes: vec![],
        outcomes: vec![],
    }
}

/// `GET /api/referrals/{id}`'s body for `detail`, made as the handler makes it.
fn served(detail: &ReferralDetail, base: &str) -> Value {
    sprig::api::service::referral_json(detail, base, json!([])).expect("serialises")
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("serialises")
}

#[test]
fn serialised_records_match_their_schemas() {
    for referral in [full_referral(), sparse_referral()] {
        assert_matches_schema("Referral", &to_json(&referral));
        assert_matches_schema("BusinessIdentifier", &to_json(&referral.identifier));
        assert_matches_schema("PatientContact", &to_json(&referral.fields.patient));
    }
    for reason in &full_referral().fields.reasons {
        assert_matches_schema("Reason", &to_json(reason));
    }
    for detail in [full_detail(), sparse_detail()] {
        for base in ["/fhir", "https://sprig.example.org/fhir"] {
            assert_matches_schema("ReferralDetail", &served(&detail, base));
        }
        for change in &detail.timeline {
            assert_matches_schema("StageChange", &to_json(change));
        }
        for note in &detail.notes {
            assert_matches_schema("Note", &to_json(note));
        }
    }
    for outcome in outcomes() {
        assert_matches_schema("Outcome", &to_json(&outcome));
    }
    // The worklist, as `service::list` builds it.
    let referrals = vec![full_referral(), sparse_referral()];
    for next_cursor in [
        None,
        Some(format!("{}~{}", referrals[1].received_at, referrals[1].id)),
    ] {
        assert_matches_schema(
            "ReferralList",
            &json!({ "items": referrals, "next_cursor": next_cursor }),
        );
    }
    // A closed referral has nowhere to go.
    let mut closed = sparse_detail();
    closed.referral.stage = Stage::Withdrawn;
    assert_matches_schema("ReferralDetail", &served(&closed, "/fhir"));
}

#[test]
fn every_stage_serialises_into_every_schema_naming_stages() {
    for stage in Stage::ALL {
        let mut referral = sparse_referral();
        referral.stage = stage;
        assert_matches_schema("Referral", &to_json(&referral));
        assert_matches_schema("Stage", &to_json(&stage));
    }
    for source in [NoteSource::Gp, NoteSource::Service] {
        assert_matches_schema("NoteSource", &to_json(&source));
    }
    for received_as in all_received_as() {
        assert_matches_schema("ReceivedAs", &to_json(&received_as));
    }
}

#[test]
fn wrong_values_fail_the_schemas() {
    let referral = to_json(&full_referral());
    // `value` with `new` at `pointer` (replaced, or added to an object).
    let with = |mut value: Value, pointer: &str, new: Value| {
        if let Some(slot) = value.pointer_mut(pointer) {
            *slot = new;
        } else {
            let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
            value.pointer_mut(parent).expect("parent")[key] = new;
        }
        value
    };
    let mut extra = referral.clone();
    extra["colour"] = json!("red");
    assert_fails_schema("Referral", &extra, "an undocumented member");
    let mut gp_notes = referral.clone();
    gp_notes["notes"] = json!(["Recently bereaved"]);
    assert_fails_schema(
        "Referral",
        &gp_notes,
        "the GP's notes (ReferralFields::notes is skip_serializing)",
    );
    for (pointer, wrong, why) in [
        ("/stage", json!("done"), "an unknown stage"),
        (
            "/stage",
            json!("UnableToContact"),
            "a stage not in kebab-case",
        ),
        ("/task_id", Value::Null, "a null task_id"),
        ("/version", json!("4"), "a version as text"),
        (
            "/received_at",
            json!("yesterday"),
            "a received_at that is not a date-time",
        ),
        (
            "/patient/phone_number",
            json!("0"),
            "an undocumented patient member",
        ),
    ] {
        assert_fails_schema("Referral", &with(referral.clone(), pointer, wrong), why);
    }
    let mut missing = referral.clone();
    missing.as_object_mut().expect("object").remove("reply_to");
    assert_fails_schema("Referral", &missing, "a member left out");

    let detail = served(&full_detail(), "/fhir");
    let mut bare = detail.clone();
    bare.as_object_mut()
        .expect("object")
        .remove("allowed_transitions");
    assert_fails_schema("ReferralDetail", &bare, "no allowed_transitions");
    assert_fails_schema(
        "ReferralDetail",
        &with(detail.clone(), "/notes/0/source", json!("GP")),
        "a note source not in lowercase",
    );
    assert_fails_schema(
        "ReferralDetail",
        &with(detail.clone(), "/fhir/extra", json!(1)),
        "an undocumented fhir member",
    );

    let ons4 = to_json(&outcome("ons4", &[6, 7, 5, 3], Some(21), None));
    assert_fails_schema("Outcome", &ons4, "a total for ONS4");
    let short = to_json(&outcome("swemwbs", &[3; 6], Some(18), Some("16.88")));
    assert_fails_schema("Outcome", &short, "six SWEMWBS answers");
    let no_metric = to_json(&outcome("swemwbs", &[3; 7], Some(21), None));
    assert_fails_schema("Outcome", &no_metric, "SWEMWBS without its metric");
    let out_of_range = to_json(&outcome("ucla3", &[1, 2, 4], Some(7), None));
    assert_fails_schema("Outcome", &out_of_range, "a UCLA-3 answer of 4");
    assert_fails_schema(
        "Outcome",
        &with(to_json(&outcomes()[0]), "/measure", json!("SWEMWBS")),
        "an unknown measure",
    );

    assert_fails_schema(
        "Problem",
        &json!({"type": "about:blank", "title": "Bad request", "status": 400}),
        "no detail",
    );
    assert_fails_schema(
        "ReferralList",
        &json!({"items": [], "next_cursor": null, "total": 0}),
        "an undocumented member",
    );
}

#[test]
fn problem_details_match() {
    // The shapes `service::Problem` writes (its fields are private, so by hand).
    assert_matches_schema(
        "Problem",
        &json!({"type": "about:blank", "title": "Bad request", "status": 400, "detail": "limit must be between 1 and 200"}),
    );
    for stage in Stage::ALL {
        assert_matches_schema(
            "Problem",
            &json!({
                "type": "about:blank",
                "title": "Transition not allowed",
                "status": 409,
                "detail": "…",
                "allowed": stage.allowed_next().iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            }),
        );
    }
}

#[test]
fn detail_documents_every_member_of_the_record_alike() {
    let schemas = &document()["components"]["schemas"];
    let referral = schemas["Referral"]["properties"]
        .as_object()
        .expect("properties");
    let detail = schemas["ReferralDetail"]["properties"]
        .as_object()
        .expect("properties");
    for (name, schema) in referral {
        assert_eq!(
            detail.get(name),
            Some(schema),
            "ReferralDetail.{name} must be documented as Referral.{name} is (the record is flattened into it)"
        );
    }
    let required = |name: &str| -> BTreeSet<String> {
        schemas[name]["required"]
            .as_array()
            .expect("required")
            .iter()
            .map(|v| v.as_str().expect("name").to_owned())
            .collect()
    };
    assert!(required("ReferralDetail").is_superset(&required("Referral")));
    // serde writes every member (no `skip_serializing_if`), so all are required.
    for (name, schema) in schemas.as_object().expect("schemas") {
        if let (Some(properties), false) =
            (schema["properties"].as_object(), name.ends_with("Request"))
        {
            let all: BTreeSet<String> = properties.keys().cloned().collect();
            let optional: Vec<_> = all.difference(&required(name)).cloned().collect();
            let optional_ok = name == "Problem" && optional == ["allowed"];
            assert!(
                optional.is_empty() || optional_ok,
                "{name}: {optional:?} are not required, but serde always writes them"
            );
            if name != "OperationOutcome" {
                assert_eq!(
                    schema["additionalProperties"], false,
                    "{name} is closed, so drift shows"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Requests: the documented bodies and parameters are what serde takes

/// The field names a `deny_unknown_fields` struct takes, read from serde's
/// refusal of an unknown one.
fn serde_fields<T: DeserializeOwned>() -> BTreeSet<String> {
    let error = serde_json::from_value::<T>(json!({"zz_not_a_field": 0}))
        .err()
        .expect("an unknown field is refused")
        .to_string();
    let expected = error
        .split_once("expected")
        .unwrap_or_else(|| panic!("serde's message changed: {error}"))
        .1;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn accepts<T: DeserializeOwned>(value: &Value) -> bool {
    serde_json::from_value::<T>(value.clone()).is_ok()
}

/// Probes a request schema and the handler's body struct with the same
/// bodies: they must agree on every one.
fn check_request<T: DeserializeOwned>(schema_name: &str) {
    let schema = &document()["components"]["schemas"][schema_name];
    let properties: BTreeSet<String> = schema["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        properties,
        serde_fields::<T>(),
        "{schema_name}'s properties are the body struct's fields"
    );
    assert_eq!(
        schema["additionalProperties"], false,
        "{schema_name} is closed (deny_unknown_fields)"
    );
    let required: BTreeSet<String> = schema["required"]
        .as_array()
        .expect("required")
        .iter()
        .map(|v| v.as_str().expect("name").to_owned())
        .collect();
    let example = schema["examples"][0].clone();
    let example_keys: BTreeSet<String> = example
        .as_object()
        .expect("an example")
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        example_keys, properties,
        "{schema_name}'s example sets every member"
    );

    let mut probes: Vec<(String, Value)> = vec![("the example".into(), example.clone())];
    let mut minimal = example.clone();
    minimal
        .as_object_mut()
        .expect("object")
        .retain(|k, _| required.contains(k));
    probes.push(("only the required members".into(), minimal));
    for name in &properties {
        let mut without = example.clone();
        without.as_object_mut().expect("object").remove(name);
        probes.push((format!("no {name}"), without));
        let mut null = example.clone();
        null[name] = Value::Null;
        probes.push((format!("{name} null"), null));
        let mut wrong = example.clone();
        wrong[name] = json!({"a": 1});
        probes.push((format!("{name} an object"), wrong));
    }
    let mut extra = example.clone();
    extra["zz_extra"] = json!("x");
    probes.push(("an unknown member".into(), extra));
    for (what, body) in probes {
        let schema_ok = schema_errors(schema_name, &body).is_empty();
        assert_eq!(
            schema_ok,
            accepts::<T>(&body),
            "{schema_name} with {what}: openapi.json {} it, the handler's serde {}: {body}",
            if schema_ok { "accepts" } else { "refuses" },
            if schema_ok { "refuses" } else { "accepts" },
        );
    }
}

#[test]
fn request_bodies_are_what_the_handlers_take() {
    check_request::<TransitionBody>("TransitionRequest");
    check_request::<OutcomeBody>("OutcomeRequest");
    check_request::<NoteBody>("NoteRequest");
    check_request::<sprig::api::milestones::MilestoneBody>("MilestoneRequest");
    let body_of = |path: &str| {
        document()["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
            ["$ref"]
            .clone()
    };
    assert_eq!(
        body_of("/api/referrals/{id}/transitions"),
        "#/components/schemas/TransitionRequest"
    );
    assert_eq!(
        body_of("/api/referrals/{id}/outcomes"),
        "#/components/schemas/OutcomeRequest"
    );
    assert_eq!(
        body_of("/api/referrals/{id}/notes"),
        "#/components/schemas/NoteRequest"
    );
}

#[test]
fn the_worklist_parameters_are_what_the_handler_takes() {
    let parameters = document()["paths"]["/api/referrals"]["get"]["parameters"]
        .as_array()
        .expect("parameters");
    let query: BTreeMap<String, &Value> = parameters
        .iter()
        .map(resolve)
        .filter(|p| p["in"] == "query")
        .map(|p| (p["name"].as_str().expect("name").to_owned(), p))
        .collect();
    assert_eq!(
        query.keys().cloned().collect::<BTreeSet<_>>(),
        serde_fields::<ListQuery>(),
        "the query parameters are ListQuery's fields"
    );
    assert_eq!(
        query["limit"]["schema"],
        json!({"type": "integer", "minimum": 1, "maximum": 200, "default": 50})
    );
    assert_eq!(
        query["stage"]["schema"],
        json!({"$ref": "#/components/schemas/Stage"})
    );
}

// ---------------------------------------------------------------------------
// Enums, the transition table, examples

fn enum_of(schema_name: &str) -> Vec<String> {
    document()["components"]["schemas"][schema_name]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("{schema_name} is an enum"))
        .iter()
        .map(|v| v.as_str().expect("a code").to_owned())
        .collect()
}

/// Every `ReceivedAs`; the match fails to compile when one is added.
fn all_received_as() -> Vec<ReceivedAs> {
    let all = vec![
        ReceivedAs::Resource,
        ReceivedAs::Transaction,
        ReceivedAs::Message,
    ];
    for r in &all {
        match r {
            ReceivedAs::Resource | ReceivedAs::Transaction | ReceivedAs::Message => {}
        }
    }
    all
}

fn codes<T: serde::Serialize>(values: &[T]) -> Vec<String> {
    values
        .iter()
        .map(|v| to_json(v).as_str().expect("a code").to_owned())
        .collect()
}

#[test]
fn enums_are_the_codes_serde_writes() {
    assert_eq!(
        enum_of("Stage"),
        codes(&Stage::ALL),
        "Stage, in workflow order"
    );
    for stage in Stage::ALL {
        assert_eq!(to_json(&stage), stage.as_str());
    }
    // Measures are data: the schema takes every code a definition may have, and so every
    // shipped measure's.
    let measure = validator(&component("Measure"));
    for definition in sprig::outcomes::Catalogue::shipped()
        .expect("shipped measures")
        .iter()
    {
        assert!(
            measure.is_valid(&json!(definition.code)),
            "{}",
            definition.code
        );
    }
    assert!(!measure.is_valid(&json!("SWEMWBS")));
    assert_eq!(enum_of("ReceivedAs"), codes(&all_received_as()));
    assert_eq!(
        enum_of("NoteSource"),
        codes(&[NoteSource::Gp, NoteSource::Service])
    );
}

#[test]
fn the_described_transitions_are_the_workflows() {
    let description = document()["info"]["description"]
        .as_str()
        .expect("a description");
    let table: Vec<&str> = description
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter(|l| {
            Stage::ALL
                .iter()
                .any(|s| l.starts_with(&format!("| `{}` |", s.as_str())))
        })
        .collect();
    let expected: Vec<String> = Stage::ALL
        .iter()
        .filter(|s| !s.allowed_next().is_empty())
        .map(|s| {
            format!(
                "| `{}` | {} |",
                s.as_str(),
                s.allowed_next()
                    .iter()
                    .map(|n| format!("`{}`", n.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    assert_eq!(table, expected, "info.description's transition table");
    for closed in Stage::ALL.iter().filter(|s| s.allowed_next().is_empty()) {
        assert!(
            description.contains(&format!("`{}`", closed.as_str())),
            "the description names the closed stage {}",
            closed.as_str()
        );
    }
}

#[test]
fn every_example_matches_its_schema() {
    let mut checked = 0;
    for (name, schema) in document()["components"]["schemas"]
        .as_object()
        .expect("schemas")
    {
        for example in schema["examples"].as_array().into_iter().flatten() {
            assert_matches_schema(name, example);
            checked += 1;
        }
    }
    for (method, path, operation) in operations() {
        let mut media = Vec::new();
        if let Some(content) = operation["requestBody"]["content"].as_object() {
            media.extend(content.iter().map(|(t, m)| (format!("request {t}"), m)));
        }
        for (code, response) in operation["responses"].as_object().expect("responses") {
            if let Some(content) = resolve(response)["content"].as_object() {
                media.extend(content.iter().map(|(t, m)| (format!("{code} {t}"), m)));
            }
        }
        for (what, media_type) in media {
            let examples = media_type["examples"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(_, e)| &resolve(e)["value"])
                .chain(media_type.get("example"));
            for example in examples {
                let errors = errors_for(&media_type["schema"], example);
                assert!(
                    errors.is_empty(),
                    "{method} {path} {what}: example does not match: {errors:?}"
                );
                checked += 1;
            }
        }
        for parameter in operation["parameters"].as_array().into_iter().flatten() {
            let parameter = resolve(parameter);
            if let Some(example) = parameter.get("example") {
                let errors = errors_for(&parameter["schema"], example);
                assert!(
                    errors.is_empty(),
                    "{method} {path} {}: {errors:?}",
                    parameter["name"]
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 30, "only {checked} examples checked");
}
