//! The audit log over real HTTP: one row per `/fhir`, `/api` and `/auth` request,
//! allowed or refused; ids and names only (no search values); a write's row commits
//! with it; an audit log that cannot be written fails the request; every version the
//! writes stored has its Provenance.

use serde_json::{Value, json};

use crate::helpers::{TestApp, json_body, spawn_app};
use crate::workflow::{Shape, api_post, submit};

/// Every stored audit row's fields, as JSON.
async fn audit_rows(app: &TestApp) -> Vec<Value> {
    // Plain columns, made JSON here: the same query runs on either backend.
    type Row = (
        String,
        Option<String>,
        Option<String>,
        String,
        String,
        String,
        i64,
        String,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT interaction, resource_type, resource_id, search_params, patient_ids, \
         referral_ids, status, outcome, request_id, peer_address FROM audit_events ORDER BY seq",
    )
    .fetch_all(&app.db_pool().await)
    .await
    .expect("audit rows");
    let list = |text: &str| -> Value { serde_json::from_str(text).expect("a JSON list") };
    rows.iter()
        .map(|row| {
            json!({
                "interaction": row.0,
                "resource_type": row.1,
                "resource_id": row.2,
                "search_params": list(&row.3),
                "patient_ids": list(&row.4),
                "referral_ids": list(&row.5),
                "status": row.6,
                "outcome": row.7,
                "request_id": row.8,
                "peer_address": row.9,
            })
        })
        .collect()
}

#[tokio::test]
async fn every_request_leaves_one_audit_row_with_ids_and_names_only() {
    let app = spawn_app().await;
    let mut requests = 0;

    let mut referral_ids = Vec::new();
    for shape in Shape::ALL {
        let (id, status, _) = submit(&app, shape, &shape.example()).await;
        requests += 1;
        assert!(status == 200 || status == 201, "{shape:?}: {status}");
        referral_ids.push(id);
    }
    let referral = referral_ids[0].clone();

    let read = app.get(&format!("/fhir/ServiceRequest/{referral}")).await;
    requests += 1;
    assert_eq!(read.status(), 200);
    let nhs_number = "9000000009";
    let search = app
        .get(&format!(
            "/fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs_number}&_count=5"
        ))
        .await;
    requests += 1;
    assert_eq!(search.status(), 200);
    let missing = app.get("/fhir/ServiceRequest/no-such-referral").await;
    requests += 1;
    assert_eq!(missing.status(), 404);
    let unsupported = app.get("/fhir/Banana").await;
    requests += 1;
    assert!(unsupported.status().is_client_error());
    let worklist = app.get("/api/referrals").await;
    requests += 1;
    assert_eq!(worklist.status(), 200);
    let note = api_post(
        &app,
        &format!("/api/referrals/{referral}/notes"),
        json!({"text": "Prefers mornings"}),
    )
    .await;
    requests += 1;
    assert_eq!(note.status(), 201);
    let refused = api_post(
        &app,
        &format!("/api/referrals/{referral}/transitions"),
        json!({"to": "no-such-stage"}),
    )
    .await;
    requests += 1;
    assert!(refused.status().is_client_error());
    // Not audited: probes carry no data.
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/readyz").await.status(), 200);

    let rows = audit_rows(&app).await;
    assert_eq!(rows.len(), requests, "one row per request: {rows:#?}");
    for row in &rows {
        assert!(row["request_id"].is_string(), "{row}");
        assert_eq!(row["peer_address"], "127.0.0.1", "{row}");
    }
    let interactions: Vec<&str> = rows
        .iter()
        .map(|r| r["interaction"].as_str().unwrap())
        .collect();
    assert_eq!(
        interactions,
        [
            "create",
            "transaction",
            "operation:process-message",
            "read",
            "search-type",
            "read",
            "search-type",
            "api:worklist",
            "api:note",
            "api:transition",
        ]
    );
    assert_eq!(rows[0]["referral_ids"], json!([referral]));
    assert_eq!(rows[0]["outcome"], "0");
    // The transaction stores its Patient on its own: that id is recorded.
    assert_eq!(rows[1]["patient_ids"].as_array().map(Vec::len), Some(1));
    assert_eq!(rows[3]["resource_id"], json!(referral));
    assert_eq!(rows[3]["referral_ids"], json!([referral]));
    assert_eq!(rows[4]["search_params"], json!(["identifier", "_count"]));
    assert!(
        !rows[4]["patient_ids"].as_array().unwrap().is_empty(),
        "{}",
        rows[4]
    );
    assert_eq!(rows[5]["status"], 404);
    assert_eq!(rows[5]["outcome"], "4");
    assert_eq!(rows[8]["referral_ids"], json!([referral]));
    assert_eq!(rows[8]["status"], 201);
    assert_eq!(rows[9]["outcome"], "4");

    // No search value anywhere in the audit table.
    let dump: Vec<(String,)> = sqlx::query_as(
        "SELECT search_params || patient_ids || referral_ids || \
         coalesce(resource_id, '') || interaction FROM audit_events",
    )
    .fetch_all(&app.db_pool().await)
    .await
    .expect("dump");
    let dump = dump
        .into_iter()
        .map(|(row,)| row)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(!dump.contains(nhs_number), "{dump}");
    assert!(!dump.contains("Prefers mornings"), "{dump}");

    // And every version those writes stored has its Provenance: three referrals, each
    // a ServiceRequest and a Task.
    assert_eq!(app.assert_every_version_has_its_provenance().await, 6);
    app.stop().await;
}

#[tokio::test]
async fn a_request_whose_audit_row_cannot_be_written_fails() {
    let app = spawn_app().await;
    let (referral, _, _) = submit(&app, Shape::Resource, &Shape::Resource.example()).await;
    sqlx::query("ALTER TABLE audit_events RENAME TO audit_events_gone")
        .execute(&app.db_pool().await)
        .await
        .expect("hide the audit table");
    let read = app.get(&format!("/fhir/ServiceRequest/{referral}")).await;
    assert_eq!(read.status(), 500);
    let body = read.text().await.expect("body");
    assert!(body.contains("OperationOutcome"), "{body}");
    assert!(!body.contains("9000000009"), "the data is not sent: {body}");
    // A write cannot commit without its row: nothing is stored.
    let before = app.stored_version_count().await;
    let response = crate::workflow::post_fhir(
        &app,
        Shape::Transaction.path(),
        &Shape::Transaction.example(),
        &[],
    )
    .await;
    assert_eq!(response.status(), 500);
    assert_eq!(app.stored_version_count().await, before);
    app.stop().await;
}

#[tokio::test]
async fn the_audit_log_is_served_as_valid_audit_events() {
    let app = spawn_app().await;
    let (referral, _, _) = submit(&app, Shape::Transaction, &Shape::Transaction.example()).await;
    assert_eq!(
        app.get(&format!("/fhir/ServiceRequest/{referral}"))
            .await
            .status(),
        200
    );
    assert_eq!(app.get("/fhir/Task?_count=1").await.status(), 200);
    assert_eq!(app.get("/fhir/Patient/nobody").await.status(), 404);

    let all = json_body(app.get("/fhir/AuditEvent?_count=1000").await).await;
    let events: Vec<Value> = all["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["resource"].clone())
        .collect();
    assert_eq!(events.len(), 4, "{all:#}");
    // Every AuditEvent is valid R4 by Sprig's own $validate.
    for event in &events {
        let outcome =
            json_body(crate::workflow::post_fhir(&app, "/fhir/$validate", event, &[]).await).await;
        let errors: Vec<&Value> = outcome["issue"]
            .as_array()
            .expect("issues")
            .iter()
            .filter(|i| matches!(i["severity"].as_str(), Some("error" | "fatal")))
            .collect();
        assert!(errors.is_empty(), "{event:#}\n{outcome:#}");
    }
    let create = &events[0];
    assert_eq!(create["type"]["code"], "rest");
    assert_eq!(create["subtype"][0]["code"], "transaction");
    assert_eq!(create["action"], "C");
    assert_eq!(create["outcome"], "0");
    assert_eq!(create["agent"][0]["requestor"], true);
    assert_eq!(create["source"]["observer"]["display"], "Sprig");
    let patient = create["entity"]
        .as_array()
        .expect("entities")
        .iter()
        .find(|e| e["role"]["code"] == "1")
        .and_then(|e| e["what"]["reference"].as_str())
        .expect("a patient entity")
        .to_owned();

    let count = |query: String| {
        let app = &app;
        async move {
            let bundle = json_body(app.get(&format!("/fhir/AuditEvent?{query}")).await).await;
            bundle["entry"].as_array().map_or(0, Vec::len)
        }
    };
    // The transaction, the read of its ServiceRequest and the Task search all held it.
    assert_eq!(count(format!("patient={patient}")).await, 3);
    assert_eq!(count(format!("entity=ServiceRequest/{referral}")).await, 1);
    assert_eq!(count("subtype=read".into()).await, 2);
    assert_eq!(count("outcome=4".into()).await, 1);
    // (Every request is audited, these searches too: narrow to the transaction.)
    let transaction = "subtype=http://hl7.org/fhir/restful-interaction|transaction";
    assert_eq!(
        count(format!("type=rest&agent=developer&{transaction}")).await,
        1
    );
    assert_eq!(count("type=other".into()).await, 0);
    assert_eq!(
        count(format!("date=ge2000-01-01&date=lt2999-01-01&{transaction}")).await,
        1
    );
    assert_eq!(count("date=lt2000-01-01".into()).await, 0);
    // Paged: one a page, following next.
    let first = json_body(app.get("/fhir/AuditEvent?_count=1").await).await;
    let next = first["link"]
        .as_array()
        .expect("links")
        .iter()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .expect("a next page")
        .to_owned();
    let path = next.trim_start_matches(app.address.as_str());
    let second = json_body(app.get(path).await).await;
    assert_eq!(second["entry"][0]["resource"]["id"], events[1]["id"]);
    let one = json_body(
        app.get(&format!(
            "/fhir/AuditEvent/{}",
            events[2]["id"].as_str().unwrap()
        ))
        .await,
    )
    .await;
    assert_eq!(one, events[2]);
    app.stop().await;
}

#[tokio::test]
async fn logs_carry_ids_never_names_numbers_notes_or_tokens() {
    use crate::access::{Who, secured};
    // `spawn_app` captures every line every app of the test process logs (`helpers::LOGS`):
    // the values below are this test's own, so any line holding one is a leak.
    let secured = secured().await;
    let (name, nhs_number, note, forged) = (
        "Quarrington",
        "9434765919",
        "Zanzibar lighthouse keeper",
        "tok-3f9a1c-secret",
    );
    let token = secured.token(Who::PracticeK).expect("K's token").to_owned();
    let body = crate::helpers::sample_referral_text()
        .replace("Llywelyn-Łukasz", name)
        .replace("9000000009", nhs_number)
        .replace("Prefers a call after 2pm", note);
    let response = secured
        .request(Who::PracticeK, "POST", "/fhir/ServiceRequest")
        .header("content-type", "application/fhir+json")
        .body(body)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 201);
    let id = json_body(response).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let search = secured
        .request(
            Who::PracticeK,
            "GET",
            &format!("/fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs_number}"),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(search.status(), 200);
    let refused = secured
        .app
        .client
        .get(secured.app.url("/fhir/ServiceRequest"))
        .bearer_auth(forged)
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status(), 401);
    let noted = secured
        .request(Who::Manager, "POST", &format!("/api/referrals/{id}/notes"))
        .json(&json!({"text": note}))
        .send()
        .await
        .expect("sent");
    assert!(noted.status().is_success(), "{}", noted.status());
    secured.app.stop().await;

    let logs = crate::helpers::LOGS.text();
    assert!(
        logs.contains("request completed") && logs.contains(&id),
        "the capture saw the server"
    );
    for secret in [
        name,
        nhs_number,
        note,
        forged,
        token.as_str(),
        crate::access::PASSWORD,
    ] {
        for line in logs.lines() {
            assert!(!line.contains(secret), "{secret:?} logged: {line}");
        }
    }
}
