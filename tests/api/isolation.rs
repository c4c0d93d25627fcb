//! One practice's referral never reaches another: the holes found by probing, each with a
//! test that failed before its fix (issue 17, "Holes that let one practice's data reach
//! another").

use serde_json::{Value, json};

use crate::helpers::{json_body, spawn_app};
use crate::workflow::{Shape, detail, read, submit};

/// Every Patient in a submission (contained or a Bundle entry), mutably.
fn patients(body: &mut Value) -> Vec<&mut Value> {
    fn walk<'a>(value: &'a mut Value, found: &mut Vec<&'a mut Value>) {
        if value["resourceType"] == "Patient" {
            found.push(value);
            return;
        }
        match value {
            Value::Object(map) => map.values_mut().for_each(|v| walk(v, found)),
            Value::Array(items) => items.iter_mut().for_each(|v| walk(v, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(body, &mut found);
    found
}

/// The same submission about another person.
fn about_another_patient(mut body: Value) -> Value {
    for patient in patients(&mut body) {
        patient["identifier"] = json!([{
            "system": "https://fhir.nhs.uk/Id/nhs-number",
            "value": "9434765919"
        }]);
        patient["name"] = json!([{"use": "official", "family": "Otherperson", "given": ["Robin"]}]);
    }
    body
}

#[tokio::test]
async fn a_held_identifier_with_another_patient_is_a_conflict_that_reveals_nothing() {
    for shape in Shape::ALL {
        let app = spawn_app().await;
        let (first, status, _) = submit(&app, shape, &shape.example()).await;
        assert!(matches!(status, 200 | 201), "{shape:?}");
        let held = read(&app, &format!("/fhir/ServiceRequest/{first}")).await;
        let versions = app.stored_version_count().await;

        let other = about_another_patient(shape.example());
        let response = app
            .client
            .post(app.url(shape.path()))
            .header("content-type", "application/fhir+json")
            .body(other.to_string())
            .send()
            .await
            .expect("sent");
        let status = response.status().as_u16();
        let answer = json_body(response).await;
        let text = answer.to_string();
        if matches!(shape, Shape::Message) {
            // A message's refusal may come as a reply message carrying the outcome.
            assert!(matches!(status, 409), "{shape:?}: {status} {answer}");
        } else {
            assert_eq!(status, 409, "{shape:?}: {answer}");
        }
        for secret in ["9000000009", "9912003888", "Llywelyn", first.as_str()] {
            assert!(
                !text.contains(secret),
                "{shape:?}: the answer reveals {secret}: {text}"
            );
        }
        assert!(
            !text.contains(held["subject"]["reference"].as_str().unwrap_or("\u{0}")),
            "{shape:?}: the answer reveals the held patient: {text}"
        );
        assert_eq!(
            app.stored_version_count().await,
            versions,
            "{shape:?}: nothing stored"
        );
    }
}

#[tokio::test]
async fn an_amendment_cannot_move_a_referral_to_another_practice() {
    let app = spawn_app().await;
    let (id, _, _) = submit(&app, Shape::Resource, &Shape::Resource.example()).await;
    let mut service_request = read(&app, &format!("/fhir/ServiceRequest/{id}")).await;
    let before = detail(&app, &id).await;
    for contained in service_request["contained"]
        .as_array_mut()
        .expect("contained resources")
    {
        if contained["resourceType"] == "Organization" {
            contained["identifier"][0]["value"] = json!("A81001");
        }
    }
    let response = app
        .client
        .put(app.url(&format!("/fhir/ServiceRequest/{id}")))
        .header("content-type", "application/fhir+json")
        .header("if-match", "W/\"1\"")
        .body(service_request.to_string())
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 422);
    let answer = json_body(response).await;
    assert!(
        answer
            .to_string()
            .contains("referring practice cannot change"),
        "{answer}"
    );
    let after = detail(&app, &id).await;
    assert_eq!(
        after["practice"], before["practice"],
        "the practice is unchanged"
    );
    let current = read(&app, &format!("/fhir/ServiceRequest/{id}")).await;
    assert_eq!(current["meta"]["versionId"], "1", "no new version");
}
