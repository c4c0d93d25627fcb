//! Real senders (issue 18): a BaRS-shaped referral message of our own
//! (`tests/fixtures/bars/`), with BaRS and UK Core profile claims, UK Core
//! extensions, a Practitioner requester whose practice is known only as
//! `MessageHeader.sender`, and a Consent referenced by `urn:uuid` without
//! `type`, is accepted with warnings and routed to the sender's practice;
//! what the sender did not have to send is not demanded; what Sprig needs
//! (a practice's ODS code, a way to contact the person) is.

use serde_json::{Value, json};

use crate::helpers::{json_body, spawn_app};
use crate::workflow::{Shape, detail, post_fhir, read, submit};

const MESSAGE_PROFILE: &str =
    "https://sprig-gateway.org/fhir/StructureDefinition/sprig-referral-message";

/// A fixture from `tests/fixtures/bars/`.
fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/bars/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture exists"))
        .expect("fixture is JSON")
}

/// The issues of an answer: a bare OperationOutcome, or the one in a reply
/// message.
fn issues_of(answer: &Value) -> Vec<Value> {
    let outcome = if answer["resourceType"] == "OperationOutcome" {
        answer
    } else {
        answer["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|entry| &entry["resource"])
            .find(|r| r["resourceType"] == "OperationOutcome")
            .unwrap_or_else(|| panic!("no OperationOutcome in {answer}"))
    };
    outcome["issue"].as_array().cloned().unwrap_or_default()
}

fn severity_is(issue: &Value, severities: &[&str]) -> bool {
    severities.contains(&issue["severity"].as_str().unwrap_or(""))
}

/// Every `meta.profile` claim in a Bundle and its entries, as the expression
/// Sprig reports it at.
fn claims(bundle: &Value) -> Vec<String> {
    let mut claims = Vec::new();
    let mut add = |resource: &Value, at: String| {
        for (index, _) in resource["meta"]["profile"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            claims.push(format!("{at}.meta.profile[{index}]"));
        }
    };
    add(bundle, "Bundle".into());
    for (index, entry) in bundle["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .enumerate()
    {
        add(
            &entry["resource"],
            format!("Bundle.entry[{index}].resource"),
        );
    }
    claims
}

#[tokio::test]
async fn a_bars_referral_is_checked_with_warnings_for_what_sprig_cannot_check() {
    let app = spawn_app().await;
    let message = fixture("referral-request.json");
    let parameters = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": message},
        {"name": "profile", "valueUri": MESSAGE_PROFILE}]});
    let response = post_fhir(&app, "/fhir/Bundle/$validate", &parameters, &[]).await;
    assert_eq!(response.status(), 200);
    let outcome = json_body(response).await;
    let issues = issues_of(&outcome);
    let errors: Vec<&Value> = issues
        .iter()
        .filter(|i| severity_is(i, &["error", "fatal"]))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // One warning per profile claim Sprig does not hold (ten: the Bundle and
    // each entry), and one per UK Core extension: nothing twice.
    let mut unknown_profiles: Vec<String> = issues
        .iter()
        .filter(|i| i["details"]["coding"][0]["code"] == "profile-unknown")
        .inspect(|i| assert_eq!(i["severity"], "warning", "{i}"))
        .map(|i| i["expression"][0].as_str().unwrap_or("").to_owned())
        .collect();
    unknown_profiles.sort();
    let mut expected = claims(&message);
    expected.sort();
    assert_eq!(expected.len(), 10);
    assert_eq!(unknown_profiles, expected);
    let unknown_extensions: Vec<&str> = issues
        .iter()
        .filter(|i| i["details"]["coding"][0]["code"] == "profile-extension-unknown")
        .map(|i| i["expression"][0].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        unknown_extensions,
        vec![
            "Bundle.entry[2].resource.extension[0]",
            "Bundle.entry[2].resource.identifier[0].extension[0]"
        ]
    );
}

#[tokio::test]
async fn a_bars_referral_is_accepted_and_routed_to_the_senders_practice() {
    let app = spawn_app().await;
    let message = fixture("referral-request.json");
    let (id, status, answer) = submit(&app, Shape::Message, &message).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["entry"][0]["resource"]["response"]["code"], "ok");
    let record = detail(&app, &id).await;
    // No PractitionerRole of the Practitioner requester names an organization:
    // the practice is the message's sender.
    assert_eq!(record["practice_ods_code"], "B82005", "{record}");
    assert_eq!(record["practice_name"], "Riverside Medical Practice");
    assert_eq!(record["identifier"]["value"], "BARS-2026-000456");
    assert_eq!(record["referrer_name"], "Dr Jordan Example");
    assert_eq!(record["consent_status"], "active", "{record}");
    let task = read(
        &app,
        &format!(
            "/fhir/Task/{}",
            record["task_id"].as_str().expect("task id")
        ),
    )
    .await;
    assert_eq!(task["requester"]["identifier"]["value"], "B82005", "{task}");
}

#[tokio::test]
async fn a_referral_with_no_practice_to_be_found_is_refused_saying_where_sprig_looked() {
    let app = spawn_app().await;
    let mut message = fixture("referral-request.json");
    message["entry"][0]["resource"]
        .as_object_mut()
        .map(|header| header.shift_remove("sender"));
    let response = post_fhir(&app, "/fhir/$process-message", &message, &[]).await;
    assert_eq!(response.status(), 422);
    let answer = json_body(response).await;
    let errors: Vec<Value> = issues_of(&answer)
        .into_iter()
        .filter(|i| severity_is(i, &["error", "fatal"]))
        .collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let text = errors[0]["details"]["text"].as_str().unwrap_or("");
    for place in [
        "the requester when it is an Organization",
        "PractitionerRole",
        "MessageHeader.sender",
    ] {
        assert!(text.contains(place), "{place}: {text}");
    }
    let referrals = json_body(app.get("/api/referrals").await).await;
    assert_eq!(
        referrals["items"].as_array().map(Vec::len),
        Some(0),
        "{referrals}"
    );
}

/// Referenced resources in the submission meet the reference's target
/// profile: the referral's Patient must be reachable, its practice routable,
/// even when they name no Sprig profile themselves.
#[tokio::test]
async fn a_referenced_patient_or_practice_that_sprig_cannot_use_is_refused_where_it_is() {
    let app = spawn_app().await;
    let referral = Shape::Resource.example();
    let mut unreachable = referral.clone();
    let patient = &mut unreachable["contained"][0];
    for key in ["meta", "telecom", "address"] {
        patient.as_object_mut().map(|p| p.shift_remove(key));
    }
    let mut unroutable = referral.clone();
    let practice = &mut unroutable["contained"][1];
    for key in ["meta", "identifier"] {
        practice.as_object_mut().map(|p| p.shift_remove(key));
    }
    for (body, expression, text) in [
        (unreachable, "ServiceRequest.contained[0]", "sprig-pat-1"),
        (
            unroutable,
            "ServiceRequest.contained[1].identifier",
            "ServiceRequest.contained[1].identifier",
        ),
    ] {
        let response = post_fhir(&app, "/fhir/ServiceRequest", &body, &[]).await;
        assert_eq!(response.status(), 422, "{expression}");
        let outcome = json_body(response).await;
        let found = issues_of(&outcome).into_iter().any(|i| {
            i["expression"][0] == expression
                && i["details"]["text"]
                    .as_str()
                    .is_some_and(|t| t.contains(text))
                && i["extension"].as_array().is_some_and(|e| {
                    e.iter().any(|x| {
                        x["url"]
                            == "http://hl7.org/fhir/StructureDefinition/operationoutcome-issue-line"
                    })
                })
        });
        assert!(found, "{expression}: {outcome:#}");
    }
}

/// A BaRS validation request asks the receiver to check a referral, not to
/// make one: it must not become a referral, and gets one clear issue.
#[tokio::test]
async fn a_bars_validation_request_gets_one_clear_issue() {
    let app = spawn_app().await;
    let message = fixture("validation-request.json");
    let response = post_fhir(&app, "/fhir/$process-message", &message, &[]).await;
    let status = response.status().as_u16();
    let answer = json_body(response).await;
    assert!((400..500).contains(&status), "{status}: {answer}");
    let errors: Vec<Value> = issues_of(&answer)
        .into_iter()
        .filter(|i| severity_is(i, &["error", "fatal"]))
        .collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0]["code"], "not-supported", "{errors:#?}");
    let referrals = json_body(app.get("/api/referrals").await).await;
    assert_eq!(
        referrals["items"].as_array().map(Vec::len),
        Some(0),
        "{referrals}"
    );
}

/// A message for an event Sprig does not handle gets one issue naming the
/// one it does, not the profile errors of a message it was never meant to be.
#[tokio::test]
async fn a_bars_booking_request_gets_one_clear_issue() {
    let app = spawn_app().await;
    let message = fixture("booking-request.json");
    let response = post_fhir(&app, "/fhir/$process-message", &message, &[]).await;
    let status = response.status().as_u16();
    let answer = json_body(response).await;
    assert!((400..500).contains(&status), "{status}: {answer}");
    let errors: Vec<Value> = issues_of(&answer)
        .into_iter()
        .filter(|i| severity_is(i, &["error", "fatal"]))
        .collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0]["code"], "not-supported", "{errors:#?}");
    let text = errors[0]["details"]["text"].as_str().unwrap_or("");
    assert!(text.contains("servicerequest-request"), "{text}");
}

/// A 404 and a 405 carry the BaRS codes for them, as every refusal does.
#[tokio::test]
async fn not_found_and_method_not_allowed_carry_bars_codes() {
    let app = spawn_app().await;
    let code = |outcome: &Value| outcome["issue"][0]["details"]["coding"][1]["code"].clone();
    let missing = app.get("/fhir/Patient/nobody").await;
    assert_eq!(missing.status(), 404);
    assert_eq!(code(&json_body(missing).await), "REC_NOT_FOUND");
    let delete = app
        .client
        .delete(app.url("/fhir/metadata"))
        .send()
        .await
        .expect("sent");
    assert_eq!(delete.status(), 405);
    assert_eq!(code(&json_body(delete).await), "REC_METHOD_NOT_ALLOWED");
}

/// A BaRS sender learns what Sprig needs from its MessageDefinition: read by
/// id, found by event and by url, not found by another event.
#[tokio::test]
async fn sprigs_message_definition_is_read_and_searched() {
    let app = spawn_app().await;
    let url = "https://sprig-gateway.org/fhir/MessageDefinition/sprig-servicerequest-request";
    let read = app
        .get("/fhir/MessageDefinition/sprig-servicerequest-request")
        .await;
    assert_eq!(read.status(), 200);
    let definition = json_body(read).await;
    assert_eq!(definition["resourceType"], "MessageDefinition");
    assert_eq!(definition["url"], url);
    assert_eq!(definition["eventCoding"]["code"], "servicerequest-request");
    assert_eq!(
        definition["focus"][0],
        json!({"code": "ServiceRequest", "profile": "https://sprig-gateway.org/fhir/StructureDefinition/sprig-referral", "min": 1, "max": "1"})
    );
    let focus: Vec<&str> = definition["focus"]
        .as_array()
        .expect("focus")
        .iter()
        .filter_map(|f| f["code"].as_str())
        .collect();
    assert!(
        focus.contains(&"Patient") && focus.contains(&"Consent"),
        "{focus:?}"
    );
    let description = definition["description"].as_str().unwrap_or("");
    assert!(description.contains("validation"), "{description}");

    for query in [
        "event=servicerequest-request",
        "event=https://fhir.nhs.uk/CodeSystem/message-events-bars|servicerequest-request",
        &format!("url={url}"),
        "",
    ] {
        let found = json_body(app.get(&format!("/fhir/MessageDefinition?{query}")).await).await;
        assert_eq!(found["total"], 1, "{query}: {found}");
        assert_eq!(found["entry"][0]["resource"], definition, "{query}");
    }
    let none = json_body(
        app.get("/fhir/MessageDefinition?event=booking-request")
            .await,
    )
    .await;
    assert_eq!(none["total"], 0, "{none}");
    let missing = app.get("/fhir/MessageDefinition/bars-booking").await;
    assert_eq!(missing.status(), 404);
}

/// Type-level history is refused with a 405 that says why and what to use,
/// not read as a resource whose id is `_history`; the CapabilityStatement
/// lists no `history-type`.
#[tokio::test]
async fn type_level_history_is_refused_saying_what_to_use() {
    let app = spawn_app().await;
    for path in ["/fhir/ServiceRequest/_history", "/fhir/Task/_history/"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 405, "{path}");
        let outcome = json_body(response).await;
        assert_eq!(
            outcome["issue"][0]["details"]["coding"][0]["code"], "history-type-not-supported",
            "{outcome}"
        );
        assert_eq!(
            outcome["issue"][0]["details"]["coding"][1]["code"],
            "REC_METHOD_NOT_ALLOWED"
        );
        assert!(
            outcome["issue"][0]["diagnostics"]
                .as_str()
                .is_some_and(|d| d.contains("_lastUpdated")),
            "{outcome}"
        );
    }
    let statement = json_body(app.get("/fhir/metadata").await).await;
    assert!(
        !statement.to_string().contains("\"history-type\""),
        "{statement}"
    );
}
