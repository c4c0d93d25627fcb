//! Hostile load and bad input (issue 19): the memory budget for request
//! bodies with real sockets and many large bodies at once, per-field limits,
//! and the strict reading of what a client sends.

use std::time::Duration;

use crate::helpers::{issues, json_body, sample_referral, spawn_app_with, streamed_body};

/// The sample referral, identified by `n` (each a new referral), padded with
/// whitespace to `size` bytes: large, still valid.
fn large_referral(size: usize, n: usize) -> Vec<u8> {
    let mut referral = sample_referral();
    referral["identifier"][0]["value"] = format!("REF-BUDGET-{n}").into();
    let mut body = serde_json::to_vec(&referral).unwrap();
    body.resize(size.max(body.len()), b' ');
    body
}

#[tokio::test]
async fn a_storm_of_large_bodies_queues_within_the_budget_and_the_rest_get_503() {
    const BODY: usize = 200 * 1024;
    let app = spawn_app_with(|s| {
        s.limits.max_body_bytes = 256 * 1024;
        // Room for three bodies of unknown length (each weighs the limit).
        s.limits.body_budget_bytes = 3 * 256 * 1024;
        s.limits.body_budget_wait_ms = 500;
    })
    .await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    // Eight chunked uploads at once, each holding its first 1 KiB back.
    let mut senders = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..8 {
        let (tx, body) = streamed_body();
        let request = client
            .post(app.url("/fhir/ServiceRequest"))
            .header("content-type", "application/fhir+json")
            .body(body)
            .send();
        answers.push(tokio::spawn(request));
        senders.push(tx);
    }
    let bodies: Vec<_> = (0..8).map(|n| large_referral(BODY, n)).collect();
    for (tx, body) in senders.iter().zip(&bodies) {
        tx.send(body[..1024].to_vec()).await.unwrap();
    }
    // Five find no room within the wait: 503 with Retry-After, before their
    // bodies are finished. The probe still answers while the budget is full.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let probe = app.get("/healthz").await;
    assert_eq!(probe.status(), 200);
    let mut refused = Vec::new();
    for (i, answer) in answers.iter().enumerate() {
        if answer.is_finished() {
            refused.push(i);
        }
    }
    assert_eq!(refused.len(), 5, "refused: {refused:?}");
    for (tx, body) in senders.into_iter().zip(&bodies) {
        // Finished even for the refused ones (their answers are in already).
        let _ = tx.send(body[1024..].to_vec()).await;
    }
    let mut created = 0;
    for (i, answer) in answers.into_iter().enumerate() {
        let response = answer.await.unwrap().expect("answered");
        if refused.contains(&i) {
            assert_eq!(response.status(), 503);
            assert_eq!(response.headers()["retry-after"], "1");
            let outcome = json_body(response).await;
            assert_eq!(issues(&outcome)[0]["code"], "transient");
        } else {
            assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
            created += 1;
        }
    }
    assert_eq!(created, 3);
    // Every acknowledged create is stored, and only those.
    let stored = json_body(app.get("/fhir/ServiceRequest?_summary=count").await).await;
    assert_eq!(stored["total"], 3, "{stored}");

    // Once the storm is over the budget is whole again: a declared-length
    // body is admitted at once, and several run side by side.
    let mut creates = Vec::new();
    for n in 10..13 {
        let client = client.clone();
        let url = app.url("/fhir/ServiceRequest");
        let body = large_referral(BODY, n);
        creates.push(tokio::spawn(async move {
            client
                .post(url)
                .header("content-type", "application/fhir+json")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for create in creates {
        assert_eq!(create.await.unwrap(), 201);
    }
    app.stop().await;
}

#[tokio::test]
async fn the_service_api_answers_a_full_budget_with_a_problem_and_retry_after() {
    let app = spawn_app_with(|s| {
        s.limits.max_body_bytes = 64 * 1024;
        s.limits.body_budget_bytes = 64 * 1024;
        s.limits.body_budget_wait_ms = 200;
        // No room kept for small bodies: the note below finds none.
        s.limits.small_body_reserve_bytes = 0;
    })
    .await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    // A chunked body holds the whole budget.
    let (tx, body) = streamed_body();
    let held = tokio::spawn(
        client
            .post(app.url("/fhir/ServiceRequest"))
            .header("content-type", "application/fhir+json")
            .body(body)
            .send(),
    );
    tx.send(b"{".to_vec()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = client
        .post(app.url("/api/referrals/x/notes"))
        .header("content-type", "application/json")
        .body("{\"text\":\"a note\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    // A request without a body is not held by the budget.
    assert_eq!(app.get("/fhir/metadata").await.status(), 200);
    drop(tx);
    let answer = held.await.unwrap().unwrap();
    assert_eq!(answer.status(), 400);
    app.stop().await;
}

/// The small-body reserve: with the budget held by uploads that stall (issue
/// 19: 100 stalled 4 MiB uploads made 3 of 4 referral creates 503), an
/// ordinary referral is still admitted at once and stored; a body over
/// `small_body_max_bytes` is not, and waits and gets 503 as before.
#[tokio::test]
async fn an_ordinary_referral_is_admitted_while_stalled_uploads_hold_the_budget() {
    let app = spawn_app_with(|s| {
        s.limits.max_body_bytes = 256 * 1024;
        s.limits.body_budget_bytes = 256 * 1024;
        s.limits.body_budget_wait_ms = 300;
        s.limits.small_body_reserve_bytes = 64 * 1024;
        s.limits.small_body_max_bytes = 32 * 1024;
    })
    .await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    // A chunked upload (weighing max_body_bytes) holds the whole budget, stalled.
    let (stalled, body) = streamed_body();
    let held = tokio::spawn(
        client
            .post(app.url("/fhir/ServiceRequest"))
            .header("content-type", "application/fhir+json")
            .body(body)
            .send(),
    );
    stalled.send(b"{".to_vec()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let post = |body: Vec<u8>| {
        client
            .post(app.url("/fhir/ServiceRequest"))
            .header("content-type", "application/fhir+json")
            .body(body)
            .send()
    };
    let ordinary = large_referral(0, 1);
    assert!(ordinary.len() < 32 * 1024);
    let started = std::time::Instant::now();
    let created = post(ordinary).await.unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "waited {:?}",
        started.elapsed()
    );
    // Over small_body_max_bytes: the reserve is not for it.
    let refused = post(large_referral(40 * 1024, 2)).await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let stored = json_body(app.get("/fhir/ServiceRequest?_summary=count").await).await;
    assert_eq!(stored["total"], 1, "{stored}");
    drop(stalled);
    let _ = held.await;
    app.stop().await;
}

/// POSTs `resource` as FHIR JSON to `path`; the status and the answer.
async fn post_json(
    app: &crate::helpers::TestApp,
    path: &str,
    resource: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let response = app
        .client
        .post(app.url(path))
        .header("content-type", "application/fhir+json")
        .body(resource.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, json_body(response).await)
}

#[tokio::test]
async fn oversize_fields_are_refused_with_422_naming_the_element_and_the_limit() {
    let app = spawn_app_with(|_| {}).await;
    // A 100,000-character identifier.
    let mut referral = sample_referral();
    referral["identifier"][0]["value"] = "9".repeat(100_000).into();
    let (status, outcome) = post_json(&app, "/fhir/ServiceRequest", &referral).await;
    assert_eq!(status, 422, "{outcome}");
    let issue = &issues(&outcome)[0];
    assert_eq!(issue["code"], "too-long");
    assert_eq!(issue["expression"][0], "ServiceRequest.identifier[0].value");
    assert!(
        issue["diagnostics"]
            .as_str()
            .unwrap()
            .contains("256 characters"),
        "{issue}"
    );

    // A 1 MB family name, in a contained Patient.
    let mut referral = sample_referral();
    referral["contained"][0]["name"][0]["family"] = "x".repeat(1_000_000).into();
    let (status, outcome) = post_json(&app, "/fhir/ServiceRequest", &referral).await;
    assert_eq!(status, 422, "{outcome}");
    assert_eq!(
        issues(&outcome)[0]["expression"][0],
        "ServiceRequest.contained[0].name[0].family"
    );
    assert!(
        outcome.to_string().contains("65536 characters"),
        "{outcome}"
    );

    // 100,000 notes.
    let mut referral = sample_referral();
    referral["note"] = (0..100_000)
        .map(|_| serde_json::json!({"text": "n"}))
        .collect::<Vec<_>>()
        .into();
    let (status, outcome) = post_json(&app, "/fhir/ServiceRequest", &referral).await;
    assert_eq!(status, 422, "{outcome}");
    let issue = &issues(&outcome)[0];
    assert_eq!(issue["code"], "too-costly");
    assert_eq!(issue["expression"][0], "ServiceRequest.note");
    assert!(
        issue["diagnostics"].as_str().unwrap().contains("256"),
        "{issue}"
    );

    // A 64 KiB note is still accepted; nothing refused was stored.
    let mut referral = sample_referral();
    referral["note"][0]["text"] = "a".repeat(65_536).into();
    let (status, outcome) = post_json(&app, "/fhir/ServiceRequest", &referral).await;
    assert_eq!(status, 201, "{outcome}");
    let stored = json_body(app.get("/fhir/ServiceRequest?_summary=count").await).await;
    assert_eq!(stored["total"], 1, "{stored}");
    app.stop().await;
}

#[tokio::test]
async fn the_field_limits_are_configurable_and_apply_to_transactions() {
    let app = spawn_app_with(|s| {
        s.limits.max_identifier_chars = 8;
    })
    .await;
    let bundle = crate::workflow::example("referral-transaction-bundle.json");
    let (status, outcome) = post_json(&app, "/fhir", &bundle).await;
    assert_eq!(status, 422, "{outcome}");
    let issue = &issues(&outcome)[0];
    assert_eq!(issue["code"], "too-long");
    assert!(
        issue["expression"][0]
            .as_str()
            .unwrap()
            .starts_with("Bundle.entry["),
        "{issue}"
    );
    assert!(
        issue["diagnostics"]
            .as_str()
            .unwrap()
            .contains("(8 characters)"),
        "{issue}"
    );
    app.stop().await;
}

/// A Bundle's conditions are matched in as few statements as can hold them, never in one
/// SQLite refuses: it allows at most 500 terms in a compound SELECT, and with
/// `limits.max_repeats` raised a Bundle may carry more conditional entries than that.
#[tokio::test]
async fn a_transaction_with_more_conditions_than_one_statement_holds_is_stored() {
    const CONDITIONS: usize = 600;
    let app = spawn_app_with(|s| {
        s.limits.max_repeats = 1_000;
    })
    .await;
    let mut bundle = crate::workflow::example("referral-transaction-bundle.json");
    let condition = bundle["entry"][6].clone();
    let entries = bundle["entry"].as_array_mut().expect("entries");
    for i in 0..CONDITIONS {
        let mut entry = condition.clone();
        entry["fullUrl"] = serde_json::json!(format!("urn:uuid:00000000-0000-4000-8000-{i:012}"));
        entry["request"]["ifNoneExist"] = serde_json::json!(format!("_id=absent-{i}"));
        entries.push(entry);
    }
    let (status, answer) = post_json(&app, "/fhir", &bundle).await;
    assert_eq!(status, 200, "{answer}");
    let statuses = answer["entry"].as_array().expect("entries");
    assert_eq!(statuses.len(), 7 + CONDITIONS);
    assert!(
        statuses
            .iter()
            .skip(7)
            .all(|entry| entry["response"]["status"] == "201 Created"),
        "every conditional Condition is created"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_service_api_refuses_an_oversize_note_and_implausible_outcome_times() {
    use crate::workflow::{Shape, api_post, submit};
    let app = spawn_app_with(|_| {}).await;
    let (id, status, _) = submit(&app, Shape::Resource, &Shape::Resource.example()).await;
    assert_eq!(status, 201);
    let response = api_post(
        &app,
        &format!("/api/referrals/{id}/notes"),
        serde_json::json!({"text": "n".repeat(65_537), "by": "link.worker"}),
    )
    .await;
    assert_eq!(response.status(), 422);
    let problem = json_body(response).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("65536 characters"),
        "{problem}"
    );

    for (at, says) in [
        ("9999-12-31T00:00:00Z", "future"),
        ("0001-01-01T00:00:00Z", "before 2000"),
        ("2099-01-01T00:00:00+01:00", "future"),
    ] {
        let response = api_post(
            &app,
            &format!("/api/referrals/{id}/outcomes"),
            serde_json::json!({"measure": "ons4", "answers": [7, 8, 6, 3], "recorded_at": at, "by": "link.worker"}),
        )
        .await;
        assert_eq!(response.status(), 422, "{at}");
        let problem = json_body(response).await;
        assert!(
            problem["detail"].as_str().unwrap().contains(says),
            "{at}: {problem}"
        );
    }
    // A time a moment ahead of Sprig's clock is within the allowed skew.
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(60);
    let soon = soon
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let response = api_post(
        &app,
        &format!("/api/referrals/{id}/outcomes"),
        serde_json::json!({"measure": "ons4", "answers": [7, 8, 6, 3], "recorded_at": soon, "by": "link.worker"}),
    )
    .await;
    assert_ne!(response.status(), 422, "{}", response.text().await.unwrap());
    app.stop().await;
}

/// POSTs raw `body` to `path` with `headers`; the status and the answer's text.
async fn post_raw(
    app: &crate::helpers::TestApp,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, String) {
    let mut request = app.client.post(app.url(path)).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn a_byte_order_mark_is_a_400() {
    let app = spawn_app_with(|_| {}).await;
    let mut body = b"\xEF\xBB\xBF".to_vec();
    body.extend(serde_json::to_vec(&sample_referral()).unwrap());
    let (status, text) = post_raw(
        &app,
        "/fhir/ServiceRequest",
        &[("content-type", "application/fhir+json")],
        body,
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("json-byte-order-mark") && text.contains("byte order mark"),
        "{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_content_encoding_is_refused_with_415_not_ignored() {
    let app = spawn_app_with(|_| {}).await;
    for path in ["/fhir/ServiceRequest", "/api/referrals/x/notes"] {
        let (status, text) = post_raw(
            &app,
            path,
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            serde_json::to_vec(&sample_referral()).unwrap(),
        )
        .await;
        assert_eq!(status, 415, "{path}: {text}");
        assert!(text.contains("Content-Encoding gzip"), "{text}");
    }
    // `identity` is no encoding at all.
    let (status, text) = post_raw(
        &app,
        "/fhir/ServiceRequest",
        &[
            ("content-type", "application/fhir+json"),
            ("content-encoding", "identity"),
        ],
        serde_json::to_vec(&sample_referral()).unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    app.stop().await;
}

#[tokio::test]
async fn a_content_type_with_empty_parameters_is_a_415() {
    let app = spawn_app_with(|_| {}).await;
    let (status, text) = post_raw(
        &app,
        "/fhir/ServiceRequest",
        &[("content-type", "application/fhir+json;;;;")],
        serde_json::to_vec(&sample_referral()).unwrap(),
    )
    .await;
    assert_eq!(status, 415, "{text}");
    assert!(text.contains("malformed"), "{text}");
    app.stop().await;
}

#[tokio::test]
async fn the_service_api_refuses_other_charsets_and_fhir_versions() {
    let app = spawn_app_with(|_| {}).await;
    for (content_type, says) in [
        ("application/json; charset=iso-8859-1", "charset=iso-8859-1"),
        ("application/json; fhirVersion=3.0", "fhirVersion=3.0"),
    ] {
        let (status, text) = post_raw(
            &app,
            "/api/referrals/x/notes",
            &[("content-type", content_type)],
            br#"{"text": "a note"}"#.to_vec(),
        )
        .await;
        assert_eq!(status, 415, "{content_type}: {text}");
        assert!(text.contains(says), "{text}");
        assert!(text.contains("Unsupported media type"), "{text}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_transaction_entry_url_with_a_path_below_the_type_is_a_400() {
    let app = spawn_app_with(|_| {}).await;
    let mut bundle = crate::workflow::example("referral-transaction-bundle.json");
    let entry = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .position(|e| e["resource"]["resourceType"] == "ServiceRequest")
        .unwrap();
    bundle["entry"][entry]["request"]["url"] = "ServiceRequest/../../Patient".into();
    let (status, outcome) = post_json(&app, "/fhir", &bundle).await;
    assert_eq!(status, 400, "{outcome}");
    let issue = &issues(&outcome)[0];
    assert!(
        issue["diagnostics"]
            .as_str()
            .unwrap()
            .contains("must name only the resource type"),
        "{issue}"
    );
    let stored = json_body(app.get("/fhir/ServiceRequest?_summary=count").await).await;
    assert_eq!(stored["total"], 0, "{stored}");
    app.stop().await;
}
