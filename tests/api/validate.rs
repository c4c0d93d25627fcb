//! `$validate`: 200 with the same issues a create would meet; nothing stored.

use serde_json::{Value, json};

use crate::helpers::{
    TestApp, expressions, issues, json_body, message_ids, sample_referral, spawn_app,
};

async fn validate(app: &TestApp, path: &str, body: String) -> (u16, Value) {
    let response = app
        .client
        .post(app.url(path))
        .header("content-type", "application/fhir+json")
        .body(body)
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    (status, json_body(response).await)
}

fn parameters(resource: &Value, profile: Option<&str>) -> String {
    let mut parameter = vec![
        json!({"name": "resource", "resource": resource}),
        json!({"name": "mode", "valueCode": "create"}),
    ];
    if let Some(profile) = profile {
        parameter.push(json!({"name": "profile", "valueUri": profile}));
    }
    json!({"resourceType": "Parameters", "parameter": parameter}).to_string()
}

#[tokio::test]
async fn a_valid_referral_is_all_ok() {
    let app = spawn_app().await;
    for path in ["/fhir/ServiceRequest/$validate", "/fhir/$validate"] {
        let (status, outcome) = validate(&app, path, sample_referral().to_string()).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            issues(&outcome)
                .iter()
                .all(|i| i["severity"] != "error" && i["severity"] != "fatal"),
            "{path}: {outcome}"
        );
    }
    let (status, outcome) = validate(
        &app,
        "/fhir/$validate",
        parameters(
            &sample_referral(),
            Some("http://hl7.org/fhir/StructureDefinition/ServiceRequest"),
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        !issues(&outcome).iter().any(|i| i["severity"] == "error"),
        "{outcome}"
    );
}

#[tokio::test]
async fn an_invalid_referral_gets_the_same_issues_as_a_create() {
    let app = spawn_app().await;
    let mut referral = sample_referral();
    referral.as_object_mut().map(|m| m.shift_remove("status"));
    referral["subject"] = json!({"reference": "Practitioner/1"});
    referral["priorty"] = json!("routine");
    let broken = referral.to_string();

    let created = app.post_referral(broken.clone()).await;
    assert_eq!(created.status(), 422);
    let create_outcome = json_body(created).await;
    let (status, validate_outcome) = validate(&app, "/fhir/ServiceRequest/$validate", broken).await;
    assert_eq!(status, 200);
    assert_eq!(expressions(&validate_outcome), expressions(&create_outcome));
    assert_eq!(
        issues(&validate_outcome).len(),
        issues(&create_outcome).len()
    );

    // The schema pass stops the profile pass, as on create; fix it and the profile errors show.
    referral.as_object_mut().map(|m| m.shift_remove("priorty"));
    let (_, outcome) = validate(&app, "/fhir/$validate", parameters(&referral, None)).await;
    assert_eq!(
        expressions(&outcome),
        vec!["ServiceRequest.status", "ServiceRequest.subject.reference"]
    );

    assert_eq!(
        app.stored_version_count().await,
        0,
        "validation stores nothing"
    );
}

#[tokio::test]
async fn any_resource_type_can_be_validated() {
    let app = spawn_app().await;
    let patient = json!({"resourceType": "Patient", "gender": "bloke", "birthDate": "1951-02-30x"});
    let (status, outcome) = validate(&app, "/fhir/$validate", patient.to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(
        expressions(&outcome),
        vec!["Patient.gender", "Patient.birthDate"]
    );
}

#[tokio::test]
async fn content_problems_are_reported_and_request_problems_refused() {
    let app = spawn_app().await;
    let (status, outcome) = validate(&app, "/fhir/$validate", "{\"resourceType\": ".into()).await;
    assert_eq!(
        (status, message_ids(&outcome)),
        (200, vec!["json-syntax".to_owned()])
    );

    let (status, outcome) = validate(
        &app,
        "/fhir/Patient/$validate",
        sample_referral().to_string(),
    )
    .await;
    assert_eq!(
        (status, message_ids(&outcome)),
        (200, vec!["resource-type-mismatch".to_owned()])
    );

    let (status, outcome) = validate(
        &app,
        "/fhir/$validate",
        parameters(
            &sample_referral(),
            Some("https://fhir.hl7.org.uk/StructureDefinition/UKCore-ServiceRequest"),
        ),
    )
    .await;
    assert_eq!(
        (status, message_ids(&outcome)),
        (200, vec!["validate-unknown-profile".to_owned()])
    );

    let empty = json!({"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "create"}]});
    let (status, outcome) = validate(&app, "/fhir/$validate", empty.to_string()).await;
    assert_eq!(
        (status, message_ids(&outcome)),
        (400, vec!["validate-no-resource".to_owned()])
    );

    let xml = app
        .client
        .post(app.url("/fhir/$validate"))
        .header("content-type", "application/fhir+xml")
        .body("<Patient/>")
        .send()
        .await
        .expect("sent");
    assert_eq!(xml.status(), 415);
    let unknown = app
        .client
        .post(app.url("/fhir/Referral/$validate"))
        .header("content-type", "application/fhir+json")
        .body("{}")
        .send()
        .await
        .expect("sent");
    assert_eq!(unknown.status(), 404);
}
