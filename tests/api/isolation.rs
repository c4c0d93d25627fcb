//! One practice's referral never reaches another: the holes found by probing, each with a
//! test that failed before its fix (issue 17, "Holes that let one practice's data reach
//! another").

use serde_json::{Value, json};

use sprig::fhir::ResourceType;
use sprig::store::NewResource;

use crate::access::{Secured, Who, referral_of_k, secured};
use crate::helpers::{json_body, sample_referral_text, spawn_app};
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

/// The referral's Task, as its own practice finds it.
async fn task_of(secured: &Secured, sr: &str) -> String {
    let bundle = get_as(
        secured,
        Who::PracticeK,
        &format!("/fhir/Task?based-on=ServiceRequest/{sr}"),
    )
    .await;
    bundle["entry"][0]["resource"]["id"]
        .as_str()
        .expect("K finds its referral's Task")
        .to_owned()
}

/// GET `path` as `who`, expecting 200, as JSON.
async fn get_as(secured: &Secured, who: Who, path: &str) -> Value {
    let response = secured
        .request(who, "GET", path)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200, "GET {path} as {who:?}");
    json_body(response).await
}

/// The ids of a searchset's entries.
fn entry_ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A submission of `shape` made K83999's (the transaction and message examples are
/// Y12345's), with a business identifier of its own.
fn as_practice(shape: Shape, ods: &str) -> Value {
    let text = shape
        .example()
        .to_string()
        .replace("Y12345", ods)
        .replace("REF-2026-", &format!("REF-{}-", uuid::Uuid::new_v4()));
    serde_json::from_str(&text).expect("JSON")
}

#[tokio::test]
async fn another_practice_cannot_read_vread_history_or_search_a_referral() {
    let secured = secured().await;
    let sr = referral_of_k(&secured).await;
    let task = task_of(&secured, &sr).await;
    for who in [Who::PracticeY, Who::UntrustedHeader, Who::ProxyAlone] {
        for path in [
            format!("/fhir/ServiceRequest/{sr}"),
            format!("/fhir/ServiceRequest/{sr}/_history/1"),
            format!("/fhir/ServiceRequest/{sr}/_history"),
            format!("/fhir/Task/{task}"),
            format!("/fhir/Task/{task}/_history/1"),
            format!("/fhir/Task/{task}/_history"),
        ] {
            let response = secured
                .request(who, "GET", &path)
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), 404, "GET {path} as {who:?}");
            let text = response.text().await.expect("body");
            assert!(!text.contains("K83999"), "{path} {who:?}: {text}");
        }
        for path in [
            format!("/fhir/ServiceRequest?_id={sr}"),
            "/fhir/ServiceRequest".to_owned(),
            format!("/fhir/Task?based-on=ServiceRequest/{sr}"),
            "/fhir/Task".to_owned(),
        ] {
            let bundle = get_as(&secured, who, &path).await;
            assert_eq!(bundle["total"], 0, "{path} as {who:?}: {bundle}");
            assert!(entry_ids(&bundle).is_empty(), "{path} as {who:?}");
        }
    }
    // Its own practice, and the proxy acting for it, see it all.
    for who in [Who::PracticeK, Who::ProxyForK] {
        let bundle = get_as(&secured, who, &format!("/fhir/ServiceRequest?_id={sr}")).await;
        assert_eq!(bundle["total"], 1, "{who:?}");
        get_as(&secured, who, &format!("/fhir/Task/{task}/_history")).await;
    }
    secured.app.stop().await;
}

#[tokio::test]
async fn a_paging_cursor_made_for_one_practice_shows_another_nothing() {
    let secured = secured().await;
    let first = referral_of_k(&secured).await;
    let second = referral_of_k(&secured).await;
    let page = get_as(&secured, Who::PracticeK, "/fhir/ServiceRequest?_count=1").await;
    let next = page["link"]
        .as_array()
        .expect("links")
        .iter()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .expect("a next page")
        .to_owned();
    let path = next
        .strip_prefix(&secured.app.address)
        .expect("an absolute URL on the gateway")
        .to_owned();
    let theirs = get_as(&secured, Who::PracticeY, &path).await;
    assert!(entry_ids(&theirs).is_empty(), "{theirs}");
    // A later page has no total unless `_total` asks (counting costs a
    // read of every match); asked, it counts none of another's.
    assert!(theirs.get("total").is_none(), "{theirs}");
    let counted = get_as(&secured, Who::PracticeY, &format!("{path}&_total=accurate")).await;
    assert_eq!(counted["total"], 0, "{counted}");
    let text = theirs.to_string();
    assert!(!text.contains(&first) || !text.contains(&second));
    let own = get_as(&secured, Who::PracticeK, &path).await;
    assert_eq!(entry_ids(&own).len(), 1, "{own}");
    secured.app.stop().await;
}

#[tokio::test]
async fn if_none_exist_never_matches_another_practices_referral() {
    let secured = secured().await;
    let sr = referral_of_k(&secured).await;
    let held = get_as(
        &secured,
        Who::PracticeK,
        &format!("/fhir/ServiceRequest/{sr}"),
    )
    .await;
    let identifier = &held["identifier"][0];
    let condition = format!(
        "identifier={}|{}",
        identifier["system"].as_str().expect("system"),
        identifier["value"].as_str().expect("value")
    );
    // Practice Y's own referral, sent on condition that K's does not exist.
    let body = sample_referral_text().replace("K83999", "Y12345");
    let response = secured
        .request(Who::PracticeY, "POST", "/fhir/ServiceRequest")
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", condition)
        .body(body)
        .send()
        .await
        .expect("create");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    assert_eq!(status, 201, "{text}");
    assert!(!text.contains(&sr), "the answer names K's referral: {text}");
    secured.app.stop().await;
}

#[tokio::test]
async fn a_transaction_condition_never_matches_another_practices_patient() {
    let secured = secured().await;
    let send = |who: Who, body: Value| {
        secured
            .request(who, "POST", "/fhir")
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
    };
    let k = send(Who::PracticeK, as_practice(Shape::Transaction, "K83999"))
        .await
        .expect("K's transaction");
    assert_eq!(k.status(), 200);
    let k_patients = get_as(&secured, Who::PracticeK, "/fhir/Patient").await;
    let k_patient = entry_ids(&k_patients);
    assert_eq!(k_patient.len(), 1, "{k_patients}");

    // Y's referral for the same person, its Patient created unless one is held.
    let mut body = as_practice(Shape::Transaction, "Y12345");
    let nhs_number = k_patients["entry"][0]["resource"]["identifier"][0]["value"]
        .as_str()
        .expect("NHS number")
        .to_owned();
    for entry in body["entry"].as_array_mut().expect("entries") {
        if entry["resource"]["resourceType"] == "Patient" {
            entry["request"]["ifNoneExist"] = json!(format!(
                "identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs_number}"
            ));
        }
    }
    let y = send(Who::PracticeY, body).await.expect("Y's transaction");
    let status = y.status().as_u16();
    let text = y.text().await.expect("body");
    assert_eq!(status, 200, "{text}");
    assert!(
        !text.contains(&k_patient[0]),
        "Y's referral was given K's Patient: {text}"
    );
    let y_patients = get_as(&secured, Who::PracticeY, "/fhir/Patient").await;
    let y_patient = entry_ids(&y_patients);
    assert_eq!(y_patient.len(), 1, "{y_patients}");
    assert_ne!(y_patient, k_patient);
    secured.app.stop().await;
}

#[tokio::test]
async fn a_message_request_id_is_its_senders_own() {
    let secured = secured().await;
    let send = |who: Who, body: String| {
        secured
            .request(who, "POST", "/fhir/$process-message")
            .header("content-type", "application/fhir+json")
            .header("x-request-id", "6f1c2a34-0000-4000-8000-000000000001")
            .body(body)
            .send()
    };
    let k_message = as_practice(Shape::Message, "K83999").to_string();
    let k = send(Who::PracticeK, k_message.clone())
        .await
        .expect("K's message");
    assert_eq!(k.status(), 200);
    let k_reply = k.text().await.expect("reply");

    // The same bytes and id from Y: not K's reply replayed.
    let replayed = send(Who::PracticeY, k_message).await.expect("sent");
    let status = replayed.status().as_u16();
    let text = replayed.text().await.expect("body");
    assert_ne!(text, k_reply, "Y was given K's reply");
    assert_eq!(status, 403, "{text}");

    // Y's own message with the same id is a new request, not a conflict.
    let own = send(
        Who::PracticeY,
        as_practice(Shape::Message, "Y12345").to_string(),
    )
    .await
    .expect("sent");
    let status = own.status().as_u16();
    assert_eq!(status, 200, "{}", own.text().await.unwrap_or_default());
    secured.app.stop().await;
}

#[tokio::test]
async fn include_and_revinclude_add_nothing_of_another_practice() {
    let secured = secured().await;
    let sr = referral_of_k(&secured).await;
    let y_sr = {
        let response = secured
            .request(Who::PracticeY, "POST", "/fhir/ServiceRequest")
            .header("content-type", "application/fhir+json")
            .body(sample_referral_text().replace("K83999", "Y12345"))
            .send()
            .await
            .expect("create");
        assert_eq!(response.status(), 201);
        json_body(response).await["id"]
            .as_str()
            .expect("id")
            .to_owned()
    };
    // Y's Task pointing at K's referral, and K's Task pointing at Y's: what a careless or
    // hostile reference could make of them.
    let task = |based_on: &str| {
        json!({
            "resourceType": "Task", "status": "requested", "intent": "order",
            "basedOn": [{"reference": based_on}],
        })
    };
    let mut arranged = Vec::new();
    for (owner, target) in [("Y12345", &sr), ("K83999", &y_sr)] {
        let stored = secured
            .app
            .store
            .create(NewResource {
                resource_type: ResourceType::TASK,
                resource: task(&format!("ServiceRequest/{target}")),
                received: b"{}",
                request_id: "test",
                owner: Some(owner),
            })
            .await
            .expect("stored");
        arranged.push(stored.id.to_string());
    }
    let included = get_as(
        &secured,
        Who::PracticeY,
        &format!("/fhir/Task?based-on=ServiceRequest/{sr}&_include=Task:based-on"),
    )
    .await;
    let ids = entry_ids(&included);
    assert_eq!(ids.len(), 1, "Y's own Task only: {included}");
    assert!(!ids.contains(&sr), "K's referral was included: {included}");

    let revincluded = get_as(
        &secured,
        Who::PracticeY,
        &format!("/fhir/ServiceRequest?_id={y_sr}&_revinclude=Task:based-on"),
    )
    .await;
    assert!(
        !entry_ids(&revincluded).contains(&arranged[1]),
        "K's Task was added: {revincluded}"
    );
    // Y's own referral's Task is there; K's Task (about Y's referral) is not.
    assert_eq!(entry_ids(&revincluded).len(), 2, "{revincluded}");
    secured.app.stop().await;
}

/// `shape`'s example as practice `ods`'s, with the business identifier value `value`.
fn from_practice_with_identifier(shape: Shape, ods: &str, value: &str) -> Value {
    let text = shape
        .example()
        .to_string()
        .replace("K83999", ods)
        .replace("Y12345", ods)
        .replace(crate::helpers::SAMPLE_IDENTIFIER, value)
        .replace("REF-2026-", &format!("{value}-"));
    serde_json::from_str(&text).expect("JSON")
}

/// How many referrals hold the identifier value `value`.
async fn referrals_with_identifier(app: &crate::helpers::TestApp, value: &str) -> i64 {
    use sqlx::Row;
    // The value is the test's own uuid-based text, never input from outside.
    let sql = format!("SELECT COUNT(*) AS n FROM referrals WHERE identifier_value LIKE '{value}%'");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_one(&app.db_pool().await)
        .await
        .expect("count")
        .try_get::<i64, _>("n")
        .expect("n")
}

#[tokio::test]
async fn two_practices_may_send_the_same_identifier_and_get_two_referrals() {
    let secured = secured().await;
    for shape in Shape::ALL {
        let value = format!("SHARED-{}", uuid::Uuid::new_v4());
        let mut ids = Vec::new();
        for (who, ods) in [(Who::PracticeK, "K83999"), (Who::PracticeY, "Y12345")] {
            let body = from_practice_with_identifier(shape, ods, &value);
            let response = secured
                .request(who, "POST", shape.path())
                .header("content-type", "application/fhir+json")
                .body(body.to_string())
                .send()
                .await
                .expect("sent");
            let status = response.status().as_u16();
            let text = response.text().await.expect("body");
            assert!(
                matches!(status, 200 | 201),
                "{shape:?} {ods}: {status} {text}"
            );
            ids.push(text);
        }
        assert_eq!(
            referrals_with_identifier(&secured.app, &value).await,
            2,
            "{shape:?}: one referral per practice"
        );
        // Neither answer names the other's referral or patient.
        assert!(!ids[1].contains("K83999"), "{shape:?}: {}", ids[1]);

        // The same practice again with the same identifier and patient: the resubmission
        // answer, no third referral.
        let again = from_practice_with_identifier(shape, "Y12345", &value);
        let response = secured
            .request(Who::PracticeY, "POST", shape.path())
            .header("content-type", "application/fhir+json")
            .body(again.to_string())
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200, "{shape:?}: the resubmission answer");
        // The same practice with another patient: a conflict, still two referrals.
        let other = about_another_patient(from_practice_with_identifier(shape, "Y12345", &value));
        let response = secured
            .request(Who::PracticeY, "POST", shape.path())
            .header("content-type", "application/fhir+json")
            .body(other.to_string())
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 409, "{shape:?}");
        assert_eq!(referrals_with_identifier(&secured.app, &value).await, 2);
    }
    secured.app.stop().await;
}
