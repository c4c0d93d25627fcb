//! Bad input gets a clear answer: the right status and an OperationOutcome
//! that names the place. Nothing is stored.

use serde_json::{Value, json};

use crate::helpers::{
    TestApp, expressions, issues, json_body, message_ids, sample_referral, spawn_app,
    spawn_app_with,
};

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    accept: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    message_id: &'static str,
    expression: Option<&'static str>,
}

fn case(
    name: &'static str,
    body: impl Into<Vec<u8>>,
    status: u16,
    message_id: &'static str,
    expression: Option<&'static str>,
) -> Case {
    Case {
        name,
        method: "POST",
        path: "/fhir/ServiceRequest",
        content_type: Some("application/fhir+json"),
        accept: None,
        body: body.into(),
        status,
        message_id,
        expression,
    }
}

/// The sample referral with `edit` applied, as text.
fn referral_with(edit: impl FnOnce(&mut Value)) -> String {
    let mut referral = sample_referral();
    edit(&mut referral);
    referral.to_string()
}

fn cases() -> Vec<Case> {
    let valid = referral_with(|_| {});
    let deep = format!(
        r#"{{"resourceType":"ServiceRequest","status":"active","intent":"order","subject":{{"reference":"Patient/1"}},"extension":{}{}}}"#,
        r#"[{"url":"http://example.org/x","extension":"#.repeat(40),
        r#"[{"url":"http://example.org/y","valueString":"z"}]}]"#.to_owned() + &"}]".repeat(40)
    );
    vec![
        case(
            "malformed JSON",
            "{\n  \"resourceType\": \"ServiceRequest\",\n  \"status\": \"active\"\n  \"intent\": \"order\"\n}",
            400,
            "json-syntax",
            None,
        ),
        case("empty body", "", 400, "json-empty-body", None),
        case("body is an array", "[]", 400, "json-not-object", None),
        case(
            "body is a string",
            "\"ServiceRequest\"",
            400,
            "json-not-object",
            None,
        ),
        case(
            "invalid UTF-8",
            b"{\"resourceType\":\"ServiceRequest\",\"note\":[{\"text\":\"\xff\"}]}".to_vec(),
            400,
            "json-syntax",
            None,
        ),
        case(
            "duplicate property",
            r#"{"resourceType":"ServiceRequest","status":"active","status":"draft","intent":"order","subject":{"reference":"Patient/1"}}"#,
            400,
            "json-duplicate-property",
            Some("ServiceRequest.status"),
        ),
        case(
            "nested duplicate property",
            r#"{"resourceType":"ServiceRequest","status":"active","intent":"order","subject":{"reference":"Patient/1","reference":"Patient/2"}}"#,
            400,
            "json-duplicate-property",
            Some("ServiceRequest.subject.reference"),
        ),
        case(
            "null value",
            referral_with(|r| r["priority"] = Value::Null),
            400,
            "json-null",
            Some("ServiceRequest.priority"),
        ),
        case(
            "empty object",
            referral_with(|r| r["requester"] = json!({})),
            400,
            "json-empty-object",
            Some("ServiceRequest.requester"),
        ),
        case(
            "empty array",
            referral_with(|r| r["note"] = json!([])),
            400,
            "json-empty-array",
            Some("ServiceRequest.note"),
        ),
        case(
            "empty string",
            referral_with(|r| r["note"][0]["text"] = json!("")),
            400,
            "json-empty-string",
            Some("ServiceRequest.note[0].text"),
        ),
        case("nesting too deep", deep, 400, "json-too-deep", None),
        case(
            "missing resourceType",
            referral_with(|r| {
                r.as_object_mut().map(|m| m.shift_remove("resourceType"));
            }),
            400,
            "resource-type-missing",
            Some("ServiceRequest.resourceType"),
        ),
        case(
            "resourceType not a string",
            referral_with(|r| r["resourceType"] = json!(7)),
            400,
            "resource-type-missing",
            Some("ServiceRequest.resourceType"),
        ),
        case(
            "resourceType does not match the URL",
            referral_with(|r| r["resourceType"] = json!("Patient")),
            400,
            "resource-type-mismatch",
            Some("ServiceRequest.resourceType"),
        ),
        case(
            "unknown property",
            referral_with(|r| r["priorty"] = json!("routine")),
            422,
            "schema-unknown-element",
            Some("ServiceRequest.priorty"),
        ),
        case(
            "unknown property, nested",
            referral_with(|r| r["subject"]["ref"] = json!("Patient/1")),
            422,
            "schema-unknown-element",
            Some("ServiceRequest.subject.ref"),
        ),
        case(
            "complex element sent as a string",
            referral_with(|r| r["subject"] = json!("Patient/1")),
            422,
            "schema-wrong-json-type",
            Some("ServiceRequest.subject"),
        ),
        case(
            "repeating element not an array",
            referral_with(|r| r["note"] = json!({"text": "x"})),
            422,
            "schema-wrong-json-type",
            Some("ServiceRequest.note"),
        ),
        case(
            "invalid dateTime",
            referral_with(|r| r["authoredOn"] = json!("20/11/2026")),
            422,
            "schema-invalid-primitive",
            Some("ServiceRequest.authoredOn"),
        ),
        case(
            "invalid primitive at depth 2",
            referral_with(|r| r["note"][0]["time"] = json!("yesterday")),
            422,
            "schema-invalid-primitive",
            Some("ServiceRequest.note[0].time"),
        ),
        case(
            "wrong type at depth 4, in a contained resource",
            referral_with(|r| r["contained"][0]["name"][0]["given"] = json!("Siân")),
            422,
            "schema-wrong-json-type",
            Some("ServiceRequest.contained[0].name[0].given"),
        ),
        case(
            "bad code in a contained resource",
            referral_with(|r| r["contained"][0]["gender"] = json!("F")),
            422,
            "schema-code-invalid",
            Some("ServiceRequest.contained[0].gender"),
        ),
        case(
            "boolean sent as a string",
            referral_with(|r| r["doNotPerform"] = json!("false")),
            422,
            "schema-wrong-json-type",
            Some("ServiceRequest.doNotPerform"),
        ),
        // The profile pass (R4 core definitions).
        case(
            "required element missing",
            referral_with(|r| {
                r.as_object_mut().map(|m| m.shift_remove("status"));
            }),
            422,
            "profile-cardinality-min",
            Some("ServiceRequest.status"),
        ),
        case(
            "code outside a required value set",
            referral_with(|r| r["status"] = json!("open")),
            422,
            "profile-binding-required",
            Some("ServiceRequest.status"),
        ),
        case(
            "reference to the wrong resource type",
            referral_with(|r| r["subject"] = json!({"reference": "Practitioner/1"})),
            422,
            "profile-reference-target",
            Some("ServiceRequest.subject.reference"),
        ),
        case(
            "reference to a missing contained resource",
            referral_with(|r| r["supportingInfo"][0]["reference"] = json!("#nothing")),
            422,
            "profile-contained-not-found",
            Some("ServiceRequest.supportingInfo[0].reference"),
        ),
        case(
            "two types for one choice element",
            referral_with(|r| {
                r["occurrenceDateTime"] = json!("2026-12-01");
                r["occurrencePeriod"] = json!({"start": "2026-12-01"});
            }),
            422,
            "profile-choice-repeated",
            Some("ServiceRequest.occurrence[x]"),
        ),
        case(
            "required element missing in a contained resource",
            referral_with(|r| {
                r["contained"][2]
                    .as_object_mut()
                    .map(|m| m.shift_remove("status"));
            }),
            422,
            "profile-cardinality-min",
            Some("ServiceRequest.contained[2].status"),
        ),
        Case {
            content_type: Some("text/plain"),
            ..case(
                "wrong content type",
                valid.clone(),
                415,
                "unsupported-media-type",
                None,
            )
        },
        Case {
            content_type: Some("application/fhir+xml"),
            ..case(
                "XML content type",
                "<ServiceRequest/>",
                415,
                "unsupported-media-type",
                None,
            )
        },
        Case {
            content_type: None,
            ..case(
                "no content type",
                valid.clone(),
                415,
                "unsupported-media-type",
                None,
            )
        },
        Case {
            content_type: Some("application/fhir+json; charset=iso-8859-1"),
            ..case(
                "non-UTF-8 charset",
                valid.clone(),
                415,
                "unsupported-media-type",
                None,
            )
        },
        Case {
            accept: Some("application/fhir+xml"),
            ..case(
                "XML accepted only",
                valid.clone(),
                406,
                "format-not-acceptable",
                None,
            )
        },
        Case {
            path: "/fhir/ServiceRequest?_format=xml",
            ..case(
                "_format=xml",
                valid.clone(),
                406,
                "format-not-acceptable",
                None,
            )
        },
        Case {
            path: "/fhir/Referral",
            ..case(
                "unknown resource type",
                valid.clone(),
                404,
                "unknown-resource-type",
                None,
            )
        },
        Case {
            path: "/fhir/Medication",
            ..case(
                "resource type not served",
                valid.clone(),
                404,
                "resource-type-not-served",
                None,
            )
        },
        Case {
            method: "DELETE",
            path: "/fhir/ServiceRequest/abc",
            ..case(
                "delete not offered",
                valid.clone(),
                405,
                "method-not-allowed",
                None,
            )
        },
        Case {
            method: "DELETE",
            path: "/fhir/ServiceRequest/abc",
            ..case(
                "delete not offered",
                Vec::new(),
                405,
                "method-not-allowed",
                None,
            )
        },
        case(
            "body over the size limit",
            vec![b' '; 5 * 1024 * 1024 + 1],
            413,
            "request-too-large",
            None,
        ),
    ]
}

async fn send(app: &TestApp, case: &Case) -> reqwest::Response {
    let method = reqwest::Method::from_bytes(case.method.as_bytes()).expect("method");
    let mut request = app
        .client
        .request(method, app.url(case.path))
        .body(case.body.clone());
    if let Some(content_type) = case.content_type {
        request = request.header("content-type", content_type);
    }
    if let Some(accept) = case.accept {
        request = request.header("accept", accept);
    }
    request.send().await.expect("request sent")
}

#[tokio::test]
async fn every_bad_request_gets_the_right_status_and_a_located_outcome() {
    let app = spawn_app().await;
    let cases = cases();
    assert!(cases.len() >= 15);
    for case in &cases {
        let response = send(&app, case).await;
        let status = response.status().as_u16();
        let content_type = response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .to_owned();
        let outcome = json_body(response).await;
        assert_eq!(status, case.status, "{}: {outcome}", case.name);
        assert!(
            content_type.starts_with("application/fhir+json"),
            "{}: {content_type}",
            case.name
        );
        let ids = message_ids(&outcome);
        assert!(
            ids.contains(&case.message_id.to_owned()),
            "{}: expected {} in {outcome}",
            case.name,
            case.message_id
        );
        if let Some(expression) = case.expression {
            assert!(
                expressions(&outcome).contains(&expression.to_owned()),
                "{}: expected expression {expression} in {outcome}",
                case.name
            );
        }
        for issue in issues(&outcome) {
            assert!(
                issue["severity"].is_string() && issue["code"].is_string(),
                "{}: {issue}",
                case.name
            );
            assert!(
                issue["diagnostics"].as_str().is_some_and(|d| d.len() > 10),
                "{}: {issue}",
                case.name
            );
        }
    }

    // Nothing from any of them was stored.
    assert_eq!(app.stored_version_count().await, 0);
}

#[tokio::test]
async fn syntax_errors_give_line_and_column() {
    let app = spawn_app().await;
    let response = app.post_referral("{\n  \"resourceType\": \"ServiceRequest\",\n  \"status\": \"active\"\n  \"intent\": \"order\"\n}").await;
    assert_eq!(response.status(), 400);
    let outcome = json_body(response).await;
    let issue = &issues(&outcome)[0];
    assert_eq!(issue["severity"], "fatal");
    assert_eq!(issue["location"][0], "Line[4] Col[3]");
    assert!(
        issue["diagnostics"]
            .as_str()
            .expect("text")
            .contains("line 4, column 3"),
        "{issue}"
    );
}

#[tokio::test]
async fn every_error_is_reported_in_document_order() {
    let app = spawn_app().await;
    let body = referral_with(|r| {
        r["authoredOn"] = json!("tomorrow");
        r["status"] = json!("act ive ");
        r["priorty"] = json!("routine");
        r["note"][0]["time"] = json!("noon");
    });
    let response = app.post_referral(body).await;
    assert_eq!(response.status(), 422);
    let outcome = json_body(response).await;
    assert_eq!(
        expressions(&outcome),
        vec![
            "ServiceRequest.status",
            "ServiceRequest.authoredOn",
            "ServiceRequest.note[0].time",
            "ServiceRequest.priorty",
        ]
    );
    let body = sample_referral().to_string();
    assert_eq!(
        app.post_referral(body).await.status(),
        201,
        "the same referral, corrected, is accepted"
    );
}

#[tokio::test]
async fn the_number_of_issues_is_capped() {
    let app = spawn_app_with(|s| s.limits.max_issues = 3).await;
    let body = referral_with(|r| {
        for i in 0..10 {
            r[format!("unknown{i}")] = json!(true);
        }
    });
    let response = app.post_referral(body).await;
    assert_eq!(response.status(), 422);
    let outcome = json_body(response).await;
    let found = issues(&outcome);
    assert_eq!(found.len(), 4);
    assert_eq!(found[3]["severity"], "information");
    assert!(
        found[3]["diagnostics"]
            .as_str()
            .expect("text")
            .starts_with("7 further issue(s)")
    );
}

#[tokio::test]
async fn limits_are_configurable() {
    let app = spawn_app_with(|s| {
        s.limits.max_body_bytes = 1024;
        s.limits.max_json_depth = 4;
    })
    .await;
    let big = referral_with(|r| r["note"][0]["text"] = json!("x".repeat(2000)));
    assert_eq!(app.post_referral(big).await.status(), 413);
    // Chunked, with no Content-Length to refuse it early.
    let stream = futures::stream::iter((0..40).map(|_| Ok::<_, std::io::Error>(vec![b' '; 100])));
    let response = app
        .client
        .post(app.url("/fhir/ServiceRequest"))
        .header("content-type", "application/fhir+json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 413);
    let deep = r#"{"resourceType":"ServiceRequest","status":"active","intent":"order","subject":{"reference":"Patient/1","identifier":{"type":{"coding":[{"code":"x"}]}}}}"#;
    let response = app.post_referral(deep).await;
    assert_eq!(response.status(), 400);
    let outcome = json_body(response).await;
    assert_eq!(
        expressions(&outcome),
        vec!["ServiceRequest.subject.identifier.type.coding"]
    );
}

/// Every truncation of the sample referral, and every single-byte deletion,
/// is answered with a 4xx OperationOutcome: never a 5xx, never a hang.
#[tokio::test]
async fn mangled_bodies_never_cause_a_server_error() {
    let app = spawn_app().await;
    let body = sample_referral().to_string().into_bytes();
    let mut variants: Vec<Vec<u8>> = (0..body.len())
        .step_by(7)
        .map(|n| body[..n].to_vec())
        .collect();
    variants.extend((0..body.len()).step_by(11).map(|n| {
        let mut v = body.clone();
        v.remove(n);
        v
    }));
    for chunk in variants.chunks(32) {
        let answers =
            futures::future::join_all(chunk.iter().map(|v| app.post_referral(v.clone()))).await;
        for (variant, response) in chunk.iter().zip(answers) {
            let status = response.status().as_u16();
            let text = response.text().await.expect("body");
            assert!(
                (200..500).contains(&status),
                "{status} for {:?}: {text}",
                String::from_utf8_lossy(variant)
            );
            if status >= 400 {
                let outcome: Value = serde_json::from_str(&text).expect("JSON");
                assert_eq!(outcome["resourceType"], "OperationOutcome");
            }
        }
    }
}
