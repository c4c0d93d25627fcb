//! The referral workflow end to end over HTTP: each inbound shape (a
//! ServiceRequest with contained resources, a transaction Bundle, a BaRS
//! message), then the service's stage changes and outcome measures through
//! `/api`, checking after every step the internal record, the Task version
//! and status, the Observations, and that all of them meet Sprig's profiles.

use serde_json::{Value, json};

use crate::helpers::{TestApp, json_body, spawn_app, spawn_app_with};
use crate::openapi::assert_matches_schema;

const TASK_PROFILE: &str = "https://sprig-gateway.org/fhir/StructureDefinition/sprig-referral-task";

/// An example from `examples/`.
pub fn example(name: &str) -> Value {
    let path = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("example exists"))
        .expect("example is JSON")
}

/// The example referral Bundle as a new referral: its ServiceRequest's identifier, and
/// the `ifNoneExist` naming it, set to `identifier` (same patient, same practice).
pub fn referral_bundle(identifier: &str) -> Value {
    let mut bundle = Shape::Transaction.example();
    bundle["entry"][0]["resource"]["identifier"][0]["value"] = json!(identifier);
    bundle["entry"][0]["request"]["ifNoneExist"] = json!(format!(
        "identifier=https://gp-system.example.org/Id/referral|{identifier}"
    ));
    bundle
}

/// The three inbound shapes.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    Resource,
    Transaction,
    Message,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Resource, Shape::Transaction, Shape::Message];

    pub fn example(self) -> Value {
        example(match self {
            Shape::Resource => "referral-servicerequest.json",
            Shape::Transaction => "referral-transaction-bundle.json",
            Shape::Message => "referral-message-bundle.json",
        })
    }

    pub fn path(self) -> &'static str {
        match self {
            Shape::Resource => "/fhir/ServiceRequest",
            Shape::Transaction => "/fhir",
            Shape::Message => "/fhir/$process-message",
        }
    }
}

/// POSTs FHIR JSON with extra headers.
pub async fn post_fhir(
    app: &TestApp,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url(path))
        .header("content-type", "application/fhir+json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("request sent")
}

/// POSTs JSON to the service API.
pub async fn api_post(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .json(&body)
        .send()
        .await
        .expect("request sent")
}

/// Sends a referral in `shape` and returns the referral id (its
/// ServiceRequest's id) and the answer's status.
pub async fn submit(app: &TestApp, shape: Shape, body: &Value) -> (String, u16, Value) {
    let response = post_fhir(app, shape.path(), body, &[]).await;
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let answer = json_body(response).await;
    let reference = match shape {
        Shape::Resource => location.unwrap_or_default(),
        Shape::Transaction => answer["entry"]
            .as_array()
            .and_then(|entries| {
                entries.iter().find_map(|e| {
                    e["response"]["location"]
                        .as_str()
                        .filter(|l| l.starts_with("ServiceRequest/"))
                        .map(str::to_owned)
                })
            })
            .unwrap_or_default(),
        Shape::Message => answer["entry"][0]["resource"]["focus"][0]["reference"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    };
    let id = reference
        .split("ServiceRequest/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no ServiceRequest id in the answer ({status}): {answer}"))
        .to_owned();
    (id, status, answer)
}

/// `GET /api/referrals/{id}`.
pub async fn detail(app: &TestApp, id: &str) -> Value {
    let response = app.get(&format!("/api/referrals/{id}")).await;
    assert_eq!(response.status(), 200);
    let record = json_body(response).await;
    // Every answer is what the OpenAPI description says it is.
    assert_matches_schema("ReferralDetail", &record);
    record
}

/// The current version of a FHIR resource.
pub async fn read(app: &TestApp, path: &str) -> Value {
    let response = app.get(path).await;
    assert_eq!(response.status(), 200, "GET {path}");
    json_body(response).await
}

/// Asserts `resource` meets `profile`, asking Sprig's `$validate`.
pub async fn assert_meets(app: &TestApp, resource: &Value, profile: &str) {
    let resource_type = resource["resourceType"].as_str().expect("resourceType");
    let parameters = json!({
        "resourceType": "Parameters",
        "parameter": [
            {"name": "resource", "resource": resource},
            {"name": "profile", "valueUri": profile},
        ],
    });
    let response = post_fhir(
        app,
        &format!("/fhir/{resource_type}/$validate"),
        &parameters,
        &[],
    )
    .await;
    assert_eq!(response.status(), 200);
    let outcome = json_body(response).await;
    let errors: Vec<&Value> = outcome["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| matches!(i["severity"].as_str(), Some("error" | "fatal")))
        .collect();
    assert!(
        errors.is_empty(),
        "{resource_type} fails {profile}: {errors:?}\n{resource}"
    );
}

async fn transition(app: &TestApp, id: &str, body: Value) -> reqwest::Response {
    api_post(app, &format!("/api/referrals/{id}/transitions"), body).await
}

/// Checks the record's stage, the Task's version, status and business
/// status, and that the Task meets its profile.
async fn check_step(
    app: &TestApp,
    id: &str,
    stage: &str,
    task_version: u64,
    task_status: &str,
) -> (Value, Value) {
    let record = detail(app, id).await;
    assert_eq!(record["stage"], stage, "{record}");
    assert_eq!(
        record["timeline"]
            .as_array()
            .expect("timeline")
            .last()
            .expect("a step")["stage"],
        stage
    );
    let task_id = record["task_id"].as_str().expect("task id");
    let task = read(app, &format!("/fhir/Task/{task_id}")).await;
    assert_eq!(
        task["meta"]["versionId"],
        task_version.to_string(),
        "{task}"
    );
    assert_eq!(task["status"], task_status, "{task}");
    assert_eq!(task["businessStatus"]["coding"][0]["code"], stage, "{task}");
    assert_eq!(
        task["basedOn"][0]["reference"],
        format!("ServiceRequest/{id}")
    );
    assert_meets(app, &task, TASK_PROFILE).await;
    (record, task)
}

#[tokio::test]
async fn a_referral_goes_through_its_whole_life_in_every_inbound_shape() {
    for shape in Shape::ALL {
        let app = spawn_app().await;
        let (id, status, _) = submit(&app, shape, &shape.example()).await;
        assert!(matches!(status, 200 | 201), "{shape:?}: {status}");

        let (record, _) = check_step(&app, &id, "received", 1, "received").await;
        assert_eq!(
            record["received_as"],
            match shape {
                Shape::Resource => "resource",
                Shape::Transaction => "transaction",
                Shape::Message => "message",
            }
        );
        assert!(
            record["patient"]["nhs_number"]
                .as_str()
                .is_some_and(|n| n.len() == 10),
            "{record}"
        );
        assert!(record["practice_ods_code"].as_str().is_some(), "{record}");
        assert!(
            !record["reasons"].as_array().expect("reasons").is_empty(),
            "{record}"
        );
        assert!(record["identifier"]["value"].as_str().is_some(), "{record}");

        let steps = [("accepted", "accepted"), ("contacted", "in-progress")];
        let mut version = 1;
        for (stage, task_status) in steps {
            let response = transition(&app, &id, json!({"to": stage, "by": "link.worker"})).await;
            assert_eq!(response.status(), 200, "{shape:?} → {stage}");
            version += 1;
            check_step(&app, &id, stage, version, task_status).await;
        }

        // A baseline SWEMWBS: an Observation, listed in a new Task version.
        let response = api_post(
            &app,
            &format!("/api/referrals/{id}/outcomes"),
            json!({"measure": "swemwbs", "answers": [3, 3, 2, 3, 4, 3, 3], "recorded_at": "2026-11-25T10:00:00Z", "by": "link.worker"}),
        )
        .await;
        assert_eq!(response.status(), 201);
        let outcome = json_body(response).await;
        assert_matches_schema("Outcome", &outcome);
        assert_eq!(outcome["total"], 21);
        assert_eq!(outcome["metric"], "19.25");
        version += 1;
        let (_, task) = check_step(&app, &id, "contacted", version, "in-progress").await;
        let observation_id = outcome["id"].as_str().expect("outcome id");
        assert_eq!(task["output"].as_array().map(Vec::len), Some(1), "{task}");
        let observation = read(&app, &format!("/fhir/Observation/{observation_id}")).await;
        assert_eq!(observation["code"]["coding"][0]["code"], "718466001");
        assert_eq!(
            observation["basedOn"][0]["reference"],
            format!("ServiceRequest/{id}")
        );
        assert_meets(
            &app,
            &observation,
            "https://sprig-gateway.org/fhir/StructureDefinition/sprig-outcome-swemwbs",
        )
        .await;

        for (stage, task_status) in [
            ("plan-agreed", "in-progress"),
            ("in-support", "in-progress"),
        ] {
            let response = transition(&app, &id, json!({"to": stage})).await;
            assert_eq!(response.status(), 200, "{shape:?} → {stage}");
            version += 1;
            check_step(&app, &id, stage, version, task_status).await;
        }

        let response = api_post(
            &app,
            &format!("/api/referrals/{id}/outcomes"),
            json!({"measure": "ons4", "answers": [7, 8, 6, 3], "recorded_at": "2026-12-01T10:00:00Z"}),
        )
        .await;
        assert_eq!(response.status(), 201);
        let ons4 = json_body(response).await;
        assert!(ons4["total"].is_null(), "ONS4 has no total: {ons4}");
        version += 1;
        let observation = read(
            &app,
            &format!("/fhir/Observation/{}", ons4["id"].as_str().expect("id")),
        )
        .await;
        assert_meets(
            &app,
            &observation,
            "https://sprig-gateway.org/fhir/StructureDefinition/sprig-outcome-ons4",
        )
        .await;

        let response = transition(&app, &id, json!({"to": "completed", "note": "Goals met"})).await;
        assert_eq!(response.status(), 200);
        version += 1;
        let (record, task) = check_step(&app, &id, "completed", version, "completed").await;
        assert_eq!(task["output"].as_array().map(Vec::len), Some(2), "{task}");
        assert_eq!(record["outcomes"].as_array().map(Vec::len), Some(2));
        assert_eq!(record["timeline"].as_array().map(Vec::len), Some(6));
        assert_eq!(record["timeline"][1]["actor"], "link.worker");
        assert_eq!(record["allowed_transitions"], json!([]));

        // Every Task version is kept, and every change was queued for the GP
        // practice in order: 6 stages and 2 outcomes (each an Observation
        // and a Task version).
        let task_id = record["task_id"].as_str().expect("task id");
        let history = read(&app, &format!("/fhir/Task/{task_id}/_history")).await;
        assert_eq!(
            history["entry"].as_array().map(Vec::len),
            Some(version as usize)
        );
        let outbox = app
            .store
            .deliveries(&sprig::store::outbox::DeliveryFilter {
                referral_id: Some(id.clone()),
                limit: 100,
                ..Default::default()
            })
            .await
            .expect("outbox");
        assert_eq!(outbox.len(), 6 + 2 * 2, "{outbox:?}");
        assert!(outbox.windows(2).all(|w| w[0].seq < w[1].seq));
        let task_versions: Vec<i64> = outbox
            .iter()
            .filter(|m| m.resource_type == "Task")
            .map(|m| m.version_id)
            .collect();
        assert_eq!(task_versions, (1..=version as i64).collect::<Vec<_>>());
        assert!(outbox.iter().all(|m| m.destination_ods.is_some()));

        // What the GP system (or anyone pulling updates) searches for.
        let total = |path: String| {
            let app = &app;
            async move {
                let bundle = read(app, &path).await;
                assert_eq!(bundle["type"], "searchset", "{path}");
                bundle["total"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{path}: {bundle}"))
            }
        };
        let identifier = record["identifier"]["value"].as_str().expect("identifier");
        let system = record["identifier"]["system"].as_str().expect("system");
        for (path, expected) in [
            (format!("/fhir/Task?based-on=ServiceRequest/{id}"), 1),
            (
                format!("/fhir/Task?focus=ServiceRequest/{id}&status=completed"),
                1,
            ),
            (
                format!("/fhir/Task?based-on=ServiceRequest/{id}&status=cancelled"),
                0,
            ),
            ("/fhir/Task?_lastUpdated=gt2020-01-01".to_owned(), 1),
            ("/fhir/Task?_lastUpdated=gt2999-01-01".to_owned(), 0),
            (format!("/fhir/Observation?based-on=ServiceRequest/{id}"), 2),
            (
                format!(
                    "/fhir/Observation?based-on=ServiceRequest/{id}&code=http://snomed.info/sct|718466001"
                ),
                1,
            ),
            (
                format!("/fhir/ServiceRequest?identifier={system}|{identifier}&status=active"),
                1,
            ),
            (
                format!("/fhir/ServiceRequest?identifier={system}|{identifier}&status=revoked"),
                0,
            ),
        ] {
            assert_eq!(total(path.clone()).await, expected, "{shape:?}: {path}");
        }
    }
}

#[tokio::test]
async fn a_declined_referral_needs_a_reason_and_tells_the_gp_why() {
    let app = spawn_app().await;
    let (id, _, _) = submit(&app, Shape::Resource, &Shape::Resource.example()).await;
    let response = transition(&app, &id, json!({"to": "declined"})).await;
    assert_eq!(response.status(), 422);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    check_step(&app, &id, "received", 1, "received").await;

    let response = transition(
        &app,
        &id,
        json!({"to": "declined", "reason": "Needs are clinical: referred to the community mental health team"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let (_, task) = check_step(&app, &id, "declined", 2, "rejected").await;
    assert!(
        task["statusReason"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("community mental health")),
        "{task}"
    );

    // Closed: nothing more may happen.
    let response = transition(&app, &id, json!({"to": "accepted"})).await;
    assert_eq!(response.status(), 409);
    let problem = json_body(response).await;
    assert_eq!(problem["allowed"], json!([]));
}

#[tokio::test]
async fn an_illegal_transition_is_refused_with_the_allowed_ones() {
    let app = spawn_app().await;
    let (id, _, _) = submit(&app, Shape::Resource, &Shape::Resource.example()).await;
    let response = transition(&app, &id, json!({"to": "completed"})).await;
    assert_eq!(response.status(), 409);
    let problem = json_body(response).await;
    assert_matches_schema("Problem", &problem);
    assert_eq!(problem["status"], 409);
    assert_eq!(
        problem["allowed"],
        json!(["accepted", "declined", "withdrawn"])
    );
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("accepted, declined, withdrawn"))
    );

    let response = transition(&app, &id, json!({"to": "finished"})).await;
    assert_eq!(response.status(), 400);
    let response = transition(&app, &id, json!({"to": "accepted", "colour": "red"})).await;
    assert_eq!(response.status(), 400, "unknown fields are refused");
    let response = transition(&app, "no-such-referral", json!({"to": "accepted"})).await;
    assert_eq!(response.status(), 404);
    check_step(&app, &id, "received", 1, "received").await;
}

#[tokio::test]
async fn outcome_measures_are_checked_and_wait_for_contact() {
    let app = spawn_app().await;
    let (id, _, _) = submit(&app, Shape::Resource, &Shape::Resource.example()).await;
    let swemwbs = json!({"measure": "swemwbs", "answers": [3, 3, 3, 3, 3, 3, 3], "recorded_at": "2026-11-25T10:00:00Z"});
    let response = api_post(
        &app,
        &format!("/api/referrals/{id}/outcomes"),
        swemwbs.clone(),
    )
    .await;
    assert_eq!(response.status(), 409, "not before the person is contacted");
    for stage in ["accepted", "contacted"] {
        assert_eq!(
            transition(&app, &id, json!({"to": stage})).await.status(),
            200
        );
    }
    for (body, why) in [
        (
            json!({"measure": "swemwbs", "answers": [3, 3, 3], "recorded_at": "2026-11-25T10:00:00Z"}),
            "too few items",
        ),
        (
            json!({"measure": "swemwbs", "answers": [3, 3, 3, 3, 3, 3, 6], "recorded_at": "2026-11-25T10:00:00Z"}),
            "item out of range",
        ),
        (
            json!({"measure": "ucla3", "answers": [0, 1, 1], "recorded_at": "2026-11-25T10:00:00Z"}),
            "item out of range",
        ),
    ] {
        let response = api_post(&app, &format!("/api/referrals/{id}/outcomes"), body).await;
        assert_eq!(response.status(), 422, "{why}");
    }
    for (body, why) in [
        (
            json!({"measure": "phq9", "answers": [1], "recorded_at": "2026-11-25T10:00:00Z"}),
            "unknown measure",
        ),
        (
            json!({"measure": "ucla3", "answers": [1, 1, 1], "recorded_at": "yesterday"}),
            "bad time",
        ),
    ] {
        let response = api_post(&app, &format!("/api/referrals/{id}/outcomes"), body).await;
        assert_eq!(response.status(), 400, "{why}");
    }
    let record = detail(&app, &id).await;
    assert_eq!(record["outcomes"], json!([]));
    let response = api_post(&app, &format!("/api/referrals/{id}/outcomes"), swemwbs).await;
    assert_eq!(response.status(), 201);
    assert!(response.headers().get("location").is_some());
}

/// A referral first sent as a message and again as a transaction is answered as a
/// transaction (the message's reply was replayed, a `message` Bundle).
#[tokio::test]
async fn a_referral_sent_again_in_another_shape_gets_that_shape_of_answer() {
    let app = spawn_app().await;
    let message = Shape::Message.example();
    let (first, status, _) = submit(&app, Shape::Message, &message).await;
    assert_eq!(status, 200);
    let service_request = |bundle: &Value| {
        bundle["entry"]
            .as_array()
            .and_then(|entries| {
                entries
                    .iter()
                    .position(|e| e["resource"]["resourceType"] == "ServiceRequest")
            })
            .expect("a ServiceRequest entry")
    };
    // The same referral (same identifier, patient and practice) in another shape: the
    // examples' Patients differ, and another patient under a held identifier is a conflict.
    let mut transaction: Value = serde_json::from_str(
        &Shape::Transaction
            .example()
            .to_string()
            .replace("9912003888", "9000000009"),
    )
    .expect("JSON");
    let index = service_request(&transaction);
    transaction["entry"][index]["resource"]["identifier"] =
        message["entry"][service_request(&message)]["resource"]["identifier"].clone();
    let (second, status, answer) = submit(&app, Shape::Transaction, &transaction).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["type"], "transaction-response", "{answer}");
    assert_eq!(second, first, "{answer}");
}

#[tokio::test]
async fn the_same_referral_sent_twice_is_one_referral() {
    for shape in Shape::ALL {
        let app = spawn_app().await;
        let body = shape.example();
        let (first, status, _) = submit(&app, shape, &body).await;
        assert!(matches!(status, 200 | 201));
        let versions = app.stored_version_count().await;
        let (second, status, answer) = submit(&app, shape, &body).await;
        assert_eq!(first, second, "{shape:?}");
        assert_eq!(status, 200, "{shape:?}: {answer}");
        assert!(
            answer.to_string().contains("already received")
                || shape.path() == "/fhir/ServiceRequest",
            "{shape:?}: the answer says so: {answer}"
        );
        if matches!(shape, Shape::Message) {
            // The reply's code is `ok`: its note informs, it does not refuse.
            let issue = &answer["entry"][1]["resource"]["issue"][0];
            assert_eq!(issue["severity"], "information", "{answer}");
            assert_eq!(issue["code"], "informational", "{answer}");
        }
        assert_eq!(
            app.stored_version_count().await,
            versions,
            "{shape:?}: nothing new stored"
        );
        let list = json_body(app.get("/api/referrals").await).await;
        assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{shape:?}");
    }
}

#[tokio::test]
async fn a_repeated_request_id_is_a_retry_or_a_conflict() {
    let app = spawn_app().await;
    let body = Shape::Message.example();
    let headers = [
        ("x-request-id", "6f1e2d3c-4b5a-4968-8776-5a4b3c2d1e0f"),
        ("x-correlation-id", "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"),
    ];
    let first = post_fhir(&app, "/fhir/$process-message", &body, &headers).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-request-id"], headers[0].1);
    assert_eq!(first.headers()["x-correlation-id"], headers[1].1);
    let first = json_body(first).await;
    let header = &first["entry"][0]["resource"];
    assert_eq!(header["eventCoding"]["code"], "servicerequest-response");
    assert_eq!(header["response"]["code"], "ok");
    assert_eq!(header["response"]["identifier"], body["id"]);

    let again = post_fhir(&app, "/fhir/$process-message", &body, &headers).await;
    assert_eq!(again.status(), 200);
    assert_eq!(
        json_body(again).await,
        first,
        "a retry gets the same answer"
    );
    // In the format this retry asks for, as the first answer would have been.
    let plain = post_fhir(
        &app,
        "/fhir/$process-message",
        &body,
        &[headers[0], headers[1], ("accept", "application/json")],
    )
    .await;
    assert_eq!(plain.status(), 200);
    assert!(
        plain.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("application/json")),
        "{:?}",
        plain.headers()["content-type"]
    );
    assert_eq!(json_body(plain).await, first);

    let mut changed = body.clone();
    changed["timestamp"] = json!("2026-11-21T12:00:00+00:00");
    let conflict = post_fhir(&app, "/fhir/$process-message", &changed, &headers).await;
    assert_eq!(conflict.status(), 409);
    let outcome = json_body(conflict).await;
    assert_eq!(outcome["issue"][0]["code"], "duplicate", "{outcome}");
}

/// A sender that times out and resends at once can have both copies in
/// flight: each must get the one answer, never a 500.
#[tokio::test]
async fn the_same_message_sent_twice_at_once_gets_one_answer() {
    let app = spawn_app().await;
    let body = Shape::Message.example();
    let headers = [("x-request-id", "0d6a4c1e-8f1b-4c55-9d2e-3a7b6c5d4e3f")];
    let sends = (0..16).map(|_| post_fhir(&app, "/fhir/$process-message", &body, &headers));
    let answers = futures::future::join_all(sends).await;
    let mut bodies = Vec::new();
    for answer in answers {
        assert_eq!(answer.status(), 200);
        bodies.push(json_body(answer).await);
    }
    assert!(
        bodies.windows(2).all(|pair| pair[0] == pair[1]),
        "every copy gets the same reply: {bodies:?}"
    );
    let list = json_body(app.get("/api/referrals").await).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
}

/// By default a refused message gets what the BaRS API specifies for every
/// 4xx: a bare OperationOutcome whose errors carry the `http-error-codes`
/// code (and whose warnings do not).
#[tokio::test]
async fn an_invalid_message_gets_a_bare_outcome_with_the_bars_code() {
    let app = spawn_app().await;
    let mut body = Shape::Message.example();
    body["entry"][1]["resource"]
        .as_object_mut()
        .expect("ServiceRequest")
        .shift_remove("code");
    let response = post_fhir(&app, "/fhir/$process-message", &body, &[]).await;
    assert_eq!(response.status(), 422);
    let outcome = json_body(response).await;
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{outcome}");
    let issues = outcome["issue"].as_array().expect("issues");
    let bars_code = |issue: &Value| {
        issue["details"]["coding"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["system"] == "https://fhir.nhs.uk/Codesystem/http-error-codes")
            .map(|c| c["code"].clone())
    };
    assert_eq!(
        bars_code(&issues[0]),
        Some(json!("REC_UNPROCESSABLE_ENTITY")),
        "{outcome}"
    );
    for issue in issues {
        let is_error = issue["severity"] == "error" || issue["severity"] == "fatal";
        assert_eq!(bars_code(issue).is_some(), is_error, "{issue}");
    }
    let list = json_body(app.get("/api/referrals").await).await;
    assert_eq!(list["items"], json!([]));
}

/// `fhir.message_refusal = "message"`: the refusal as FHIR messaging has it.
#[tokio::test]
async fn an_invalid_message_gets_a_fatal_error_reply() {
    let app =
        spawn_app_with(|s| s.fhir.message_refusal = sprig::config::MessageRefusal::Message).await;
    let mut body = Shape::Message.example();
    // The ServiceRequest loses its code: the referral profile requires it.
    body["entry"][1]["resource"]
        .as_object_mut()
        .expect("ServiceRequest")
        .shift_remove("code");
    let response = post_fhir(&app, "/fhir/$process-message", &body, &[]).await;
    assert_eq!(response.status(), 422);
    let reply = json_body(response).await;
    assert_eq!(reply["type"], "message");
    let header = &reply["entry"][0]["resource"];
    assert_eq!(header["response"]["code"], "fatal-error");
    assert_eq!(header["response"]["identifier"], body["id"]);
    assert_eq!(
        reply["entry"][1]["resource"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(
        header["response"]["details"]["reference"],
        reply["entry"][1]["fullUrl"]
    );
    let list = json_body(app.get("/api/referrals").await).await;
    assert_eq!(list["items"], json!([]));
}

#[tokio::test]
async fn a_transaction_with_one_bad_entry_changes_nothing() {
    let app = spawn_app().await;
    let mut bundle = Shape::Transaction.example();
    // The Condition entry gets a subject that is not a Reference.
    let condition = bundle["entry"]
        .as_array_mut()
        .expect("entries")
        .iter_mut()
        .find(|e| e["resource"]["resourceType"] == "Condition")
        .expect("a Condition entry");
    condition["resource"]["subject"] = json!("Patient/123");
    let before = app.stored_version_count().await;
    let response = post_fhir(&app, "/fhir", &bundle, &[]).await;
    assert_eq!(response.status(), 422);
    let outcome = json_body(response).await;
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(app.stored_version_count().await, before);

    // A request Sprig cannot carry out (a DELETE) stops the whole Bundle too.
    let mut bundle = Shape::Transaction.example();
    bundle["entry"][2]["request"] = json!({"method": "DELETE", "url": "Consent/1"});
    let response = post_fhir(&app, "/fhir", &bundle, &[]).await;
    assert!(
        matches!(response.status().as_u16(), 400 | 422),
        "{}",
        response.status()
    );
    assert_eq!(app.stored_version_count().await, before);

    // A condition that names no search parameter would match anything held:
    // it is refused, not taken to mean "the first Patient".
    let mut bundle = Shape::Transaction.example();
    bundle["entry"][1]["request"]["url"] = json!("Patient?_count=1");
    let response = post_fhir(&app, "/fhir", &bundle, &[]).await;
    assert_eq!(response.status(), 400);
    let outcome = json_body(response).await;
    assert_eq!(
        outcome["issue"][0]["expression"][0],
        "Bundle.entry[1].request"
    );
    assert_eq!(app.stored_version_count().await, before);
    let list = json_body(app.get("/api/referrals").await).await;
    assert_eq!(list["items"], json!([]));
}

#[tokio::test]
async fn a_transaction_rewrites_references_and_answers_per_entry() {
    let app = spawn_app().await;
    let bundle = Shape::Transaction.example();
    let response = post_fhir(&app, "/fhir", &bundle, &[]).await;
    assert_eq!(response.status(), 200);
    let answer = json_body(response).await;
    assert_eq!(answer["type"], "transaction-response");
    let entries = answer["entry"].as_array().expect("entries");
    assert_eq!(
        entries.len(),
        bundle["entry"].as_array().map_or(0, Vec::len)
    );
    for entry in entries {
        assert_eq!(entry["response"]["status"], "201 Created", "{entry}");
    }
    let location = |index: usize| {
        entries[index]["response"]["location"]
            .as_str()
            .and_then(|l| l.split("/_history").next())
            .expect("location")
            .to_owned()
    };
    let service_request = read(&app, &format!("/fhir/{}", location(0))).await;
    let patient = location(1);
    assert_eq!(service_request["subject"]["reference"], patient);
    assert!(
        !service_request.to_string().contains("urn:uuid:"),
        "{service_request}"
    );
    let record = detail(&app, service_request["id"].as_str().expect("id")).await;
    assert_eq!(record["patient_id"], patient.trim_start_matches("Patient/"));

    // The Patient is found again by NHS number: a second referral for the
    // same person updates that Patient instead of adding another (and, as it says
    // what the one held says, stores no new version of it).
    let second = referral_bundle("REF-2026-000999");
    let answer = json_body(post_fhir(&app, "/fhir", &second, &[]).await).await;
    assert_eq!(answer["entry"][0]["response"]["status"], "201 Created");
    assert_eq!(answer["entry"][1]["response"]["status"], "200 OK");
    assert!(
        answer["entry"][1]["response"]["location"]
            .as_str()
            .is_some_and(|l| l.starts_with(&format!("{patient}/_history/1")))
    );

    // A referral whose own condition finds another referral is refused, not made into
    // that one (it was a 500), and nothing of it is kept.
    let mut third = bundle.clone();
    third["entry"][0]["resource"]["identifier"][0]["value"] = json!("REF-2026-000998");
    third["entry"][0]["request"]["ifNoneExist"] =
        json!("identifier=https://gp-system.example.org/Id/referral|REF-2026-000999");
    let response = post_fhir(&app, "/fhir", &third, &[]).await;
    assert_eq!(response.status(), 409);
    let outcome = json_body(response).await;
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(
        outcome["issue"][0]["details"]["coding"][0]["code"],
        "transaction-referral-matched"
    );
    let listed = json_body(app.get("/api/referrals").await).await;
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
}

/// A Bundle's conditions are matched together, with each single match's current version
/// read in the same statement (`WriteTx::matching_current`): what is answered and written
/// from that read must be what separate reads gave. A changed Patient is a new version from
/// the one held; a condition matching two resources is refused for its own entry, and the
/// Bundle leaves nothing behind.
#[tokio::test]
async fn a_transaction_updates_what_its_conditions_match_and_refuses_an_ambiguous_one() {
    let app = spawn_app().await;
    let location = |answer: &Value, index: usize| {
        answer["entry"][index]["response"]["location"]
            .as_str()
            .expect("location")
            .to_owned()
    };
    let first =
        json_body(post_fhir(&app, "/fhir", &referral_bundle("REF-MATCH-1"), &[]).await).await;
    assert_eq!(
        first["entry"][1]["response"]["status"], "201 Created",
        "{first}"
    );
    let patient = location(&first, 1);
    let patient = patient.split("/_history").next().expect("Patient/id");

    // The same patient with a new phone number: the match is updated, version 2.
    let mut moved = referral_bundle("REF-MATCH-2");
    moved["entry"][1]["resource"]["telecom"][0]["value"] = json!("07700 900999");
    let answer = json_body(post_fhir(&app, "/fhir", &moved, &[]).await).await;
    assert_eq!(
        answer["entry"][1]["response"]["status"], "200 OK",
        "{answer}"
    );
    assert_eq!(location(&answer, 1), format!("{patient}/_history/2"));
    // The practice's Organization says what it said: answered with the version held.
    assert_eq!(
        answer["entry"][5]["response"]["status"], "200 OK",
        "{answer}"
    );
    assert_eq!(
        location(&answer, 5),
        location(&first, 5),
        "the Organization is not stored again"
    );
    let held = read(&app, &format!("/fhir/{patient}")).await;
    assert_eq!(held["telecom"][0]["value"], "07700 900999", "{held}");
    assert_eq!(held["meta"]["versionId"], "2");

    // A second patient, then a condition naming every patient with an NHS number.
    let mut other = referral_bundle("REF-MATCH-3");
    other["entry"][1]["resource"]["identifier"][0]["value"] = json!("9912003896");
    other["entry"][1]["request"]["url"] =
        json!("Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9912003896");
    let answer = json_body(post_fhir(&app, "/fhir", &other, &[]).await).await;
    assert_eq!(
        answer["entry"][1]["response"]["status"], "201 Created",
        "{answer}"
    );
    assert_ne!(
        location(&answer, 1).split("/_history").next(),
        Some(patient)
    );

    let mut ambiguous = referral_bundle("REF-MATCH-4");
    ambiguous["entry"][1]["request"]["url"] =
        json!("Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|");
    let response = post_fhir(&app, "/fhir", &ambiguous, &[]).await;
    assert_eq!(response.status(), 412);
    let outcome = json_body(response).await;
    assert_eq!(
        outcome["issue"][0]["details"]["coding"][0]["code"], "conditional-multiple-matches",
        "{outcome}"
    );
    assert_eq!(
        outcome["issue"][0]["expression"][0],
        "Bundle.entry[1].request"
    );
    let listed = json_body(app.get("/api/referrals").await).await;
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(3),
        "{listed}"
    );
}

#[tokio::test]
async fn the_gp_withdraws_a_referral_with_put_and_if_match() {
    let app = spawn_app().await;
    let (id, _, _) = submit(&app, Shape::Resource, &Shape::Resource.example()).await;
    assert_eq!(
        transition(&app, &id, json!({"to": "accepted"}))
            .await
            .status(),
        200
    );
    let mut service_request = read(&app, &format!("/fhir/ServiceRequest/{id}")).await;
    let put = |body: Value, if_match: Option<&'static str>| {
        let mut request = app
            .client
            .put(app.url(&format!("/fhir/ServiceRequest/{id}")))
            .header("content-type", "application/fhir+json")
            .body(body.to_string());
        if let Some(tag) = if_match {
            request = request.header("if-match", tag);
        }
        request.send()
    };

    // An amendment: a new note and priority.
    service_request["priority"] = json!("urgent");
    let mut unversioned = service_request.clone();
    unversioned["meta"]
        .as_object_mut()
        .unwrap()
        .remove("versionId");
    let response = put(unversioned, None).await.expect("sent");
    assert_eq!(
        response.status(),
        428,
        "If-Match or meta.versionId is required"
    );
    let response = put(service_request.clone(), Some("W/\"1\""))
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "W/\"2\"");
    let record = detail(&app, &id).await;
    assert_eq!(record["priority"], "urgent");
    assert_eq!(record["stage"], "accepted");

    // A stale copy cannot overwrite the newer version.
    service_request["status"] = json!("revoked");
    let response = put(service_request.clone(), Some("W/\"1\""))
        .await
        .expect("sent");
    assert_eq!(response.status(), 412);
    assert_eq!(detail(&app, &id).await["stage"], "accepted");

    let response = put(service_request.clone(), Some("W/\"2\""))
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let (record, task) = check_step(&app, &id, "withdrawn", 3, "cancelled").await;
    assert_eq!(record["timeline"][2]["actor"], "gp");
    assert!(task["statusReason"].is_object(), "{task}");

    // The same withdrawal again (a retry) changes nothing: 200, version 3 still.
    let response = put(service_request.clone(), Some("W/\"3\""))
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "W/\"3\"");
    // Withdrawn is closed.
    service_request["priority"] = json!("routine");
    let response = put(service_request, Some("W/\"3\"")).await.expect("sent");
    assert_eq!(response.status(), 409);
}

#[tokio::test]
async fn the_gp_withdraws_a_referral_by_message() {
    let app =
        spawn_app_with(|s| s.fhir.message_refusal = sprig::config::MessageRefusal::Message).await;
    let body = Shape::Message.example();
    let (id, _, _) = submit(&app, Shape::Message, &body).await;
    let first = read(&app, &format!("/fhir/ServiceRequest/{id}")).await;
    assert_eq!(first["status"], "active", "{first}");
    let mut update = body.clone();
    update["id"] = json!("7d6c5b4a-3f2e-4d1c-9b0a-8f7e6d5c4b3a");
    update["entry"][0]["resource"]["reason"]["coding"][0]["code"] = json!("update");
    update["entry"][1]["resource"]["status"] = json!("revoked");
    let response = post_fhir(&app, "/fhir/$process-message", &update, &[]).await;
    let status = response.status();
    let reply = json_body(response).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["entry"][0]["resource"]["response"]["code"], "ok");
    check_step(&app, &id, "withdrawn", 2, "cancelled").await;
    let service_request = read(&app, &format!("/fhir/ServiceRequest/{id}")).await;
    assert_eq!(service_request["status"], "revoked");
    let history = read(&app, &format!("/fhir/ServiceRequest/{id}/_history")).await;
    assert_eq!(service_request["meta"]["versionId"], "2", "{history}");

    // A withdrawn referral is closed: a further update is a 409, and the
    // reply's NHS error code says so (not REC_UNPROCESSABLE_ENTITY).
    let mut again = update.clone();
    again["id"] = json!("1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d");
    let response = post_fhir(&app, "/fhir/$process-message", &again, &[]).await;
    let status = response.status();
    let reply = json_body(response).await;
    assert_eq!(status, 409, "{reply}");
    assert_eq!(
        reply["entry"][0]["resource"]["response"]["code"],
        "fatal-error"
    );
    let codings = &reply["entry"][1]["resource"]["issue"][0]["details"]["coding"];
    assert!(
        codings
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["code"] == "REC_CONFLICT")),
        "{reply}"
    );

    // An update of a referral Sprig never received is refused.
    let mut unknown = update.clone();
    unknown["id"] = json!("0f9e8d7c-6b5a-4e3d-8c1b-0a9f8e7d6c5b");
    unknown["entry"][1]["resource"]["identifier"][0]["value"] = json!("REF-NEVER-SENT");
    let response = post_fhir(&app, "/fhir/$process-message", &unknown, &[]).await;
    assert_eq!(response.status(), 422);
}

#[tokio::test]
async fn the_worklist_filters_pages_and_explains_bad_parameters() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let mut body = Shape::Resource.example();
        body["identifier"][0]["value"] = json!(format!("REF-LIST-{n}"));
        let (id, status, _) = submit(&app, Shape::Resource, &body).await;
        assert_eq!(status, 201);
        ids.push(id);
    }
    assert_eq!(
        transition(&app, &ids[1], json!({"to": "accepted"}))
            .await
            .status(),
        200
    );

    let accepted = json_body(app.get("/api/referrals?stage=accepted").await).await;
    assert_matches_schema("ReferralList", &accepted);
    assert_eq!(accepted["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(accepted["items"][0]["id"], ids[1].as_str());

    let mut seen = Vec::new();
    let mut path = "/api/referrals?limit=2".to_owned();
    loop {
        let page = json_body(app.get(&path).await).await;
        for item in page["items"].as_array().expect("items") {
            seen.push(item["id"].as_str().expect("id").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/referrals?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every referral once, oldest first");

    let practice = json_body(app.get("/api/referrals?practice=K83999").await).await;
    assert_eq!(practice["items"].as_array().map(Vec::len), Some(5));
    let none = json_body(app.get("/api/referrals?practice=Y00000").await).await;
    assert_eq!(none["items"], json!([]));
    let future = json_body(app.get("/api/referrals?received_from=2999-01-01").await).await;
    assert_eq!(future["items"], json!([]));

    for bad in [
        "/api/referrals?stage=finished",
        "/api/referrals?limit=0",
        "/api/referrals?received_from=yesterday",
        "/api/referrals?cursor=xyz",
        "/api/referrals?colour=red",
    ] {
        let response = app.get(bad).await;
        assert_eq!(response.status(), 400, "{bad}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem = json_body(response).await;
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{bad}"
        );
    }
    let response = app.get("/api/referrals/nope").await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
}

#[tokio::test]
async fn notes_join_the_timeline() {
    let app = spawn_app().await;
    let (id, _, _) = submit(&app, Shape::Resource, &Shape::Resource.example()).await;
    let response = api_post(
        &app,
        &format!("/api/referrals/{id}/notes"),
        json!({"text": "Left a voicemail", "by": "link.worker"}),
    )
    .await;
    assert_eq!(response.status(), 201);
    let record = json_body(response).await;
    let notes = record["notes"].as_array().expect("notes");
    assert_eq!(
        notes.first().map(|n| n["source"].clone()),
        Some(json!("gp")),
        "the GP's note first: {record}"
    );
    assert_eq!(
        notes.last().map(|n| n["text"].clone()),
        Some(json!("Left a voicemail"))
    );
    assert_eq!(
        notes.last().map(|n| n["author"].clone()),
        Some(json!("link.worker"))
    );
    let response = api_post(
        &app,
        &format!("/api/referrals/{id}/notes"),
        json!({"text": "   "}),
    )
    .await;
    assert_eq!(response.status(), 422);
}

#[tokio::test]
async fn if_none_exist_finds_the_referral_already_held() {
    let app = spawn_app().await;
    let body = Shape::Resource.example();
    let (id, _, _) = submit(&app, Shape::Resource, &body).await;
    let system = body["identifier"][0]["system"].as_str().expect("system");
    let value = body["identifier"][0]["value"].as_str().expect("value");

    // Another body (a new identifier) but a condition that matches the first.
    let mut other = body.clone();
    other["identifier"][0]["value"] = json!("REF-OTHER");
    let condition = format!("identifier={system}|{value}");
    let response = post_fhir(
        &app,
        "/fhir/ServiceRequest",
        &other,
        &[("if-none-exist", &condition)],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_body(response).await["id"], id.as_str());

    // No match: created.
    let response = post_fhir(
        &app,
        "/fhir/ServiceRequest",
        &other,
        &[("if-none-exist", &format!("identifier={system}|REF-OTHER"))],
    )
    .await;
    assert_eq!(response.status(), 201);

    // A condition Sprig cannot read is a 400, not a guess.
    let response = post_fhir(
        &app,
        "/fhir/ServiceRequest",
        &other,
        &[("if-none-exist", "colour=red")],
    )
    .await;
    assert_eq!(response.status(), 400);
    let list = json_body(app.get("/api/referrals").await).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn a_referral_whose_patient_sprig_cannot_see_is_refused_clearly() {
    let app = spawn_app().await;
    let mut body = Shape::Resource.example();
    // The Patient is neither contained nor sent with it: a reference to a
    // Patient somewhere else.
    body["subject"] = json!({"reference": "Patient/held-elsewhere"});
    let before = app.stored_version_count().await;
    let response = post_fhir(&app, "/fhir/ServiceRequest", &body, &[]).await;
    let status = response.status().as_u16();
    let outcome = json_body(response).await;
    assert!(matches!(status, 400 | 422), "{status}: {outcome}");
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(app.stored_version_count().await, before);
}

/// A change made to a copy of an example Bundle.
type BundleEdit = Box<dyn Fn(&mut Value)>;

#[tokio::test]
async fn a_transaction_cannot_overwrite_or_forge_what_sprig_holds() {
    let app = spawn_app().await;
    let (id, _, _) = submit(&app, Shape::Resource, &Shape::Resource.example()).await;
    let task_id = detail(&app, &id).await["task_id"]
        .as_str()
        .expect("task")
        .to_owned();
    let before = app.stored_version_count().await;
    let cases: Vec<(&str, BundleEdit)> = vec![
        // A Task of the sender's: Sprig writes the referral's Task itself.
        (
            "a Task entry",
            Box::new(|bundle: &mut Value| {
                bundle["entry"].as_array_mut().expect("entries").push(json!({
                "fullUrl": "urn:uuid:11111111-2222-4333-8444-555555555555",
                "resource": {"resourceType": "Task", "status": "completed", "intent": "order"},
                "request": {"method": "POST", "url": "Task"},
            }));
            }),
        ),
        // PUT by id, without If-Match, would overwrite whatever has that id.
        ("a PUT by id", {
            let task_id = task_id.clone();
            Box::new(move |bundle: &mut Value| {
                bundle["entry"][2]["request"] =
                    json!({"method": "PUT", "url": format!("Consent/{task_id}")});
            })
        }),
        // The referral itself is created with POST, amended with PUT + If-Match.
        (
            "a conditional PUT of the referral",
            Box::new(|bundle: &mut Value| {
                bundle["entry"][0]["request"] = json!({
                    "method": "PUT",
                    "url": "ServiceRequest?identifier=https://gp-system.example.org/Id/referral|REF-2026-000456",
                });
            }),
        ),
    ];
    for (why, edit) in cases {
        let mut bundle = Shape::Transaction.example();
        edit(&mut bundle);
        let response = post_fhir(&app, "/fhir", &bundle, &[]).await;
        let status = response.status().as_u16();
        let outcome = json_body(response).await;
        assert!(matches!(status, 400 | 422), "{why}: {status} {outcome}");
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{why}");
        assert!(
            outcome["issue"][0]["expression"][0]
                .as_str()
                .is_some_and(|e| e.starts_with("Bundle.entry[")),
            "{why}: {outcome}"
        );
        assert_eq!(
            app.stored_version_count().await,
            before,
            "{why}: nothing stored"
        );
    }
    let task = read(&app, &format!("/fhir/Task/{task_id}")).await;
    assert_eq!(task["meta"]["versionId"], "1");
}

#[tokio::test]
async fn a_message_keeps_what_is_not_a_referral_resource_to_itself() {
    let app = spawn_app().await;
    let mut body = Shape::Message.example();
    body["entry"].as_array_mut().expect("entries").push(json!({
        "fullUrl": "urn:uuid:11111111-2222-4333-8444-555555555555",
        "resource": {"resourceType": "Task", "status": "requested", "intent": "order"},
    }));
    let (id, status, _) = submit(&app, Shape::Message, &body).await;
    assert_eq!(status, 200);
    // Only Sprig's own Task for the referral exists.
    let tasks = read(&app, "/fhir/Task").await;
    assert_eq!(tasks["total"], 1, "{tasks}");
    assert_eq!(
        tasks["entry"][0]["resource"]["basedOn"][0]["reference"],
        format!("ServiceRequest/{id}")
    );
}
