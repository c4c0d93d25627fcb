//! Delivery of Task and Observation updates to GP systems, end to end: a real
//! Sprig, a real SQLite file, and wiremock servers standing in for the
//! practices' FHIR endpoints. Success, retries (500, 429 with Retry-After,
//! timeout, connection refused), dead letters and their retry, per-referral
//! order while another practice's updates flow, message mode, pull for a
//! practice without an endpoint, registry reload, and `kill -9`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockBuilder, MockServer, Request, ResponseTemplate};

use crate::binary::start;
use crate::helpers::{TestApp, json_body, sample_referral_text, spawn_app_in};
use crate::openapi::assert_matches_schema;
use crate::workflow::{Shape, api_post, submit};

/// The practice in `examples/referral-servicerequest.json`.
const PRACTICE: &str = "K83999";
/// Another practice.
const OTHER_PRACTICE: &str = "Y67890";

/// One `[[endpoint]]` table.
pub(crate) fn endpoint_toml(ods: &str, server: &str, extra: &str) -> String {
    format!(
        "[[endpoint]]\nods_code = \"{ods}\"\nbase_url = \"{server}/fhir\"\nmode = \"rest\"\nauth = {{ type = \"none\" }}\n{extra}\n"
    )
}

/// A gateway delivering per `registry` (written to `endpoints.toml` in its
/// folder), with short waits so retries happen within a test.
async fn delivering_app(registry: &str) -> TestApp {
    delivering_app_with(registry, |_| {}).await
}

/// [`delivering_app`] with settings adjusted by `configure`.
async fn delivering_app_with(
    registry: &str,
    configure: impl FnOnce(&mut sprig::config::Settings),
) -> TestApp {
    let dir = Arc::new(TempDir::new().expect("temporary directory"));
    let file = dir.path().join("endpoints.toml");
    std::fs::write(&file, registry).expect("registry written");
    spawn_app_in(dir, |settings| {
        settings.delivery.endpoints = Some(file);
        fast(&mut settings.delivery);
        configure(settings);
    })
    .await
}

/// Where the messaging tests' gateway says it is (`public_base_url`, which message mode
/// needs).
const PUBLIC_BASE: &str = "https://sprig.example.org/fhir";

/// A delivering gateway with a public address, as message-mode endpoints need.
async fn messaging_app(registry: &str) -> TestApp {
    delivering_app_with(registry, |settings| {
        settings.public_base_url = Some(PUBLIC_BASE.into());
    })
    .await
}

/// Settings for a gateway in `dir` whose endpoint registry (written there) is `registry`.
fn registry_settings(dir: &TempDir, registry: &str) -> sprig::config::Settings {
    let file = dir.path().join("endpoints.toml");
    std::fs::write(&file, registry).expect("registry written");
    sprig::config::Settings {
        listen: "127.0.0.1:0".parse().expect("address"),
        database: dir.path().join("sprig.db").display().to_string(),
        delivery: sprig::config::DeliverySettings {
            endpoints: Some(file),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Why a gateway with `settings` does not start (it must not).
async fn start_up_error(settings: sprig::config::Settings) -> String {
    match sprig::app::Application::build(settings).await {
        Ok(_) => panic!("start-up should fail"),
        Err(error) => error.to_string(),
    }
}

pub(crate) fn fast(delivery: &mut sprig::config::DeliverySettings) {
    delivery.poll_interval_ms = 50;
    delivery.initial_backoff_ms = 100;
    delivery.max_backoff_secs = 1;
    delivery.lease_secs = 10;
    delivery.reload_poll_secs = 1;
}

/// Submits the sample referral for `practice`; returns (referral id, Task id).
pub(crate) async fn refer(app: &TestApp, practice: &str) -> (String, String) {
    let body: Value = serde_json::from_str(&sample_referral_text().replace(PRACTICE, practice))
        .expect("sample referral");
    let (id, status, answer) = submit(app, Shape::Resource, &body).await;
    assert_eq!(status, 201, "{answer}");
    let record = json_body(app.get(&format!("/api/referrals/{id}")).await).await;
    let task = record["task_id"]
        .as_str()
        .expect("the record names its Task")
        .to_owned();
    (id, task)
}

pub(crate) async fn transition(app: &TestApp, id: &str, to: &str) {
    let response = api_post(
        app,
        &format!("/api/referrals/{id}/transitions"),
        json!({"to": to}),
    )
    .await;
    assert_eq!(response.status(), 200, "{}", json_body(response).await);
}

/// `GET /api/deliveries?...` items, each checked against the OpenAPI schema.
pub(crate) async fn deliveries(app: &TestApp, query: &str) -> Vec<Value> {
    let response = app.get(&format!("/api/deliveries{query}")).await;
    assert_eq!(response.status(), 200);
    let page = json_body(response).await;
    assert_matches_schema("DeliveryPage", &page);
    page["items"].as_array().cloned().unwrap_or_default()
}

/// Waits up to `$limit` for `$done` (an expression, awaited inside),
/// checking every 50 ms.
macro_rules! eventually {
    ($what:expr, $limit:expr, $done:expr) => {{
        let started = Instant::now();
        loop {
            let done: bool = $done;
            if done {
                break;
            }
            assert!(
                started.elapsed() < $limit,
                "{}: not within {:?}",
                $what,
                $limit
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }};
}

pub(crate) async fn all_delivered(app: &TestApp) -> bool {
    let all = deliveries(app, "").await;
    !all.is_empty() && all.iter().all(|d| d["state"] == "delivered")
}

/// The Task PUTs a server received: (Task id, meta.versionId), in order.
async fn task_puts(server: &MockServer) -> Vec<(String, String)> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.method.as_str() == "PUT")
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).expect("a JSON Task");
            (
                body["id"].as_str().unwrap_or_default().to_owned(),
                body["meta"]["versionId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

fn versions_of(puts: &[(String, String)], task: &str) -> Vec<u32> {
    puts.iter()
        .filter(|(id, _)| id == task)
        .map(|(_, v)| v.parse().expect("numeric versionId"))
        .collect()
}

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn updates_reach_the_practice_in_order_as_puts_and_conditional_posts() {
    let gp = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path_regex(r"^/fhir/Task/[A-Za-z0-9.-]+$"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&gp)
        .await;
    Mock::given(method("POST"))
        .and(path("/fhir/Observation"))
        .respond_with(ResponseTemplate::new(201))
        .mount(&gp)
        .await;
    let app = delivering_app(&endpoint_toml(PRACTICE, &gp.uri(), "")).await;
    let (id, task) = refer(&app, PRACTICE).await;
    transition(&app, &id, "accepted").await;
    transition(&app, &id, "contacted").await;
    let outcome = api_post(
        &app,
        &format!("/api/referrals/{id}/outcomes"),
        json!({"measure": "swemwbs", "answers": [3, 3, 2, 3, 4, 3, 3], "recorded_at": "2026-11-25T10:00:00Z"}),
    )
    .await;
    assert_eq!(outcome.status(), 201);
    eventually!(
        "every update delivered",
        Duration::from_secs(10),
        all_delivered(&app).await
    );

    let received = gp.received_requests().await.unwrap_or_default();
    // In outbox order, each sent once.
    let sent: Vec<String> = deliveries(&app, "")
        .await
        .iter()
        .map(|d| d["resource"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(received.len(), sent.len(), "{sent:?}");
    assert_eq!(versions_of(&task_puts(&gp).await, &task), vec![1, 2, 3, 4]);
    for (request, resource) in received.iter().zip(&sent) {
        let body: Value = serde_json::from_slice(&request.body).expect("JSON body");
        let expected = format!(
            "{}/{}/_history/{}",
            body["resourceType"].as_str().unwrap_or_default(),
            body["id"].as_str().unwrap_or_default(),
            body["meta"]["versionId"].as_str().unwrap_or_default()
        );
        assert_eq!(&expected, resource);
        assert_eq!(
            header(request, "content-type"),
            Some("application/fhir+json")
        );
        assert_eq!(header(request, "x-correlation-id"), Some(id.as_str()));
        assert!(header(request, "x-request-id").is_some());
    }
    let observation = received
        .iter()
        .find(|r| r.method.as_str() == "POST")
        .expect("the outcome Observation was posted");
    let condition = header(observation, "if-none-exist").expect("If-None-Exist");
    assert!(
        condition.starts_with("identifier="),
        "conditional on the identifier: {condition}"
    );

    // The figures show it.
    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.expect("metrics text");
    assert!(
        text.contains(&format!(
            "sprig_delivery_attempts_total{{destination=\"{PRACTICE}\",outcome=\"delivered\"}} 5"
        )),
        "{text}"
    );
    assert!(
        text.contains("sprig_delivery_latency_seconds_count 5"),
        "{text}"
    );
    assert!(text.contains("sprig_delivery_endpoints 1"), "{text}");
    app.stop().await;
}

/// Answers in turn from `script`, then 200, recording when each came.
fn scripted(
    script: Vec<ResponseTemplate>,
    times: Arc<Mutex<Vec<Instant>>>,
) -> impl Fn(&Request) -> ResponseTemplate + Send + Sync + 'static {
    let calls = AtomicUsize::new(0);
    move |_request: &Request| {
        times.lock().expect("lock").push(Instant::now());
        let call = calls.fetch_add(1, Ordering::SeqCst);
        script
            .get(call)
            .cloned()
            .unwrap_or_else(|| ResponseTemplate::new(200))
    }
}

/// A GP system answering the requests `mock` matches with `script` (see
/// [`scripted`]), and when each came.
async fn scripted_gp(
    mock: MockBuilder,
    script: Vec<ResponseTemplate>,
) -> (MockServer, Arc<Mutex<Vec<Instant>>>) {
    let gp = MockServer::start().await;
    let times = Arc::new(Mutex::new(Vec::new()));
    mock.respond_with(scripted(script, Arc::clone(&times)))
        .mount(&gp)
        .await;
    (gp, times)
}

#[tokio::test]
async fn a_500_and_a_429_are_retried_and_retry_after_is_honoured() {
    let (gp, times) = scripted_gp(
        Mock::given(method("PUT")),
        vec![
            ResponseTemplate::new(500),
            ResponseTemplate::new(429).insert_header("Retry-After", "1"),
        ],
    )
    .await;
    let app = delivering_app(&endpoint_toml(PRACTICE, &gp.uri(), "")).await;
    let (_id, task) = refer(&app, PRACTICE).await;
    eventually!(
        "delivered after two failures",
        Duration::from_secs(10),
        all_delivered(&app).await
    );
    let entry = &deliveries(&app, "").await[0];
    assert_eq!(entry["attempts"], 3);
    assert_eq!(entry["last_status"], 200);
    let times = times.lock().expect("lock").clone();
    assert_eq!(times.len(), 3);
    assert!(
        times[2] - times[1] >= Duration::from_millis(950),
        "Retry-After: 1 was honoured ({:?})",
        times[2] - times[1]
    );
    assert_eq!(versions_of(&task_puts(&gp).await, &task), vec![1, 1, 1]);
    let text = app
        .get("/metrics")
        .await
        .text()
        .await
        .expect("metrics text");
    assert!(
        text.contains(&format!(
            "sprig_delivery_attempts_total{{destination=\"{PRACTICE}\",outcome=\"retry\"}} 2"
        )),
        "{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_timeout_is_retried() {
    let (gp, _) = scripted_gp(
        Mock::given(method("PUT")),
        vec![ResponseTemplate::new(200).set_delay(Duration::from_secs(3))],
    )
    .await;
    let app = delivering_app(&endpoint_toml(PRACTICE, &gp.uri(), "timeout_secs = 1")).await;
    refer(&app, PRACTICE).await;
    eventually!("a failed attempt is recorded", Duration::from_secs(5), {
        deliveries(&app, "").await[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("timed out"))
    });
    eventually!(
        "delivered on a later attempt",
        Duration::from_secs(10),
        all_delivered(&app).await
    );
    assert_eq!(deliveries(&app, "").await[0]["attempts"], 2);
    app.stop().await;
}

#[tokio::test]
async fn a_practice_that_is_down_receives_its_updates_when_it_comes_up() {
    // A port with nothing listening (yet).
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let address = reserved.local_addr().expect("address");
    drop(reserved);
    let app = delivering_app(&endpoint_toml(PRACTICE, &format!("http://{address}"), "")).await;
    let (id, task) = refer(&app, PRACTICE).await;
    transition(&app, &id, "accepted").await;
    eventually!("refused attempts are recorded", Duration::from_secs(5), {
        let first = &deliveries(&app, "").await[0];
        first["attempts"].as_i64().unwrap_or(0) >= 2
            && first["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("connect"))
    });
    // The accepted update waits behind the first.
    let waiting = deliveries(&app, "").await;
    assert_eq!(waiting[1]["attempts"], 0, "{waiting:?}");

    let listener = std::net::TcpListener::bind(address).expect("the port again");
    let gp = MockServer::builder().listener(listener).start().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&gp)
        .await;
    eventually!(
        "delivered once the practice is up",
        Duration::from_secs(10),
        all_delivered(&app).await
    );
    assert_eq!(versions_of(&task_puts(&gp).await, &task), vec![1, 2]);
    app.stop().await;
}

#[tokio::test]
async fn a_refusal_is_a_dead_letter_that_holds_back_later_updates_until_retried() {
    let gp = MockServer::start().await;
    let refusal = json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": "Task.owner not recognised"}]
    });
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(400).set_body_json(refusal.clone()))
        .mount(&gp)
        .await;
    let app = delivering_app(&endpoint_toml(PRACTICE, &gp.uri(), "")).await;
    let (id, task) = refer(&app, PRACTICE).await;
    eventually!("dead-lettered", Duration::from_secs(5), {
        deliveries(&app, "?state=dead").await.len() == 1
    });
    let dead = deliveries(&app, "?state=dead").await.remove(0);
    assert_eq!(dead["attempts"], 1, "a permanent failure is not retried");
    assert_eq!(dead["last_status"], 400);
    assert_eq!(
        dead["receiver_response"], refusal,
        "the receiver's answer is kept"
    );
    let seq = dead["seq"].as_i64().expect("seq");

    // A later update of the same referral waits behind the dead letter.
    transition(&app, &id, "accepted").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let held = deliveries(&app, "?state=pending").await;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["blocked_by"], seq);
    assert_eq!(held[0]["attempts"], 0);

    // Only dead letters are retried; unknown ones are 404.
    let not_dead = app
        .client
        .post(app.url(&format!("/api/deliveries/{}/retry", held[0]["seq"])))
        .send()
        .await
        .expect("request");
    assert_eq!(not_dead.status(), 409);
    let unknown = app
        .client
        .post(app.url("/api/deliveries/999999/retry"))
        .send()
        .await
        .expect("request");
    assert_eq!(unknown.status(), 404);

    // The practice fixes its system; the operator retries.
    gp.reset().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&gp)
        .await;
    let retried = app
        .client
        .post(app.url(&format!("/api/deliveries/{seq}/retry")))
        .send()
        .await
        .expect("request");
    assert_eq!(retried.status(), 200);
    let retried = json_body(retried).await;
    assert_matches_schema("Delivery", &retried);
    assert_eq!(retried["state"], "pending");
    // Due from the retry, not since the update was made.
    assert!(retried["next_attempt_at"].is_string(), "{retried}");
    assert_ne!(retried["next_attempt_at"], retried["created_at"]);
    eventually!(
        "both delivered",
        Duration::from_secs(10),
        all_delivered(&app).await
    );
    assert_eq!(versions_of(&task_puts(&gp).await, &task), vec![1, 2]);
    app.stop().await;
}

#[tokio::test]
async fn retry_all_for_an_endpoint() {
    let gp = MockServer::start().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(403))
        .mount(&gp)
        .await;
    let app = delivering_app(&endpoint_toml(PRACTICE, &gp.uri(), "")).await;
    refer(&app, PRACTICE).await;
    refer(&app, PRACTICE).await;
    eventually!("both dead-lettered", Duration::from_secs(5), {
        deliveries(&app, "?state=dead").await.len() == 2
    });
    gp.reset().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&gp)
        .await;
    let malformed = app
        .client
        .post(app.url("/api/endpoints/not-a-code/retry"))
        .send()
        .await
        .expect("request");
    assert_eq!(malformed.status(), 400, "a malformed ODS code is refused");
    assert_eq!(
        malformed.headers()["content-type"],
        "application/problem+json"
    );
    let response = app
        .client
        .post(app.url(&format!("/api/endpoints/{PRACTICE}/retry")))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let answer = json_body(response).await;
    assert_matches_schema("RetryAll", &answer);
    assert_eq!(answer["retried"], 2);
    eventually!(
        "both delivered",
        Duration::from_secs(10),
        all_delivered(&app).await
    );
    app.stop().await;
}

#[tokio::test]
async fn one_referral_keeps_its_order_under_retries_while_another_practice_flows() {
    let (slow, _) = scripted_gp(
        Mock::given(method("PUT")),
        vec![
            ResponseTemplate::new(503),
            ResponseTemplate::new(503),
            ResponseTemplate::new(200),
            ResponseTemplate::new(502),
            ResponseTemplate::new(200),
            ResponseTemplate::new(503),
        ],
    )
    .await;
    let fine = MockServer::start().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&fine)
        .await;
    let registry =
        endpoint_toml(PRACTICE, &slow.uri(), "") + &endpoint_toml(OTHER_PRACTICE, &fine.uri(), "");
    let app = delivering_app(&registry).await;
    let (slow_referral, slow_task) = refer(&app, PRACTICE).await;
    let (fine_referral, fine_task) = refer(&app, OTHER_PRACTICE).await;
    for stage in ["accepted", "contacted", "plan-agreed"] {
        transition(&app, &slow_referral, stage).await;
        transition(&app, &fine_referral, stage).await;
    }
    eventually!(
        "the other practice is up to date",
        Duration::from_secs(10),
        { versions_of(&task_puts(&fine).await, &fine_task) == vec![1, 2, 3, 4] }
    );
    eventually!(
        "the slow practice catches up",
        Duration::from_secs(15),
        all_delivered(&app).await
    );
    let versions = versions_of(&task_puts(&slow).await, &slow_task);
    // Every attempt, failures included, in version order: never a later
    // version before an earlier one.
    assert!(
        versions.windows(2).all(|w| w[0] <= w[1]),
        "out of order: {versions:?}"
    );
    let mut distinct = versions.clone();
    distinct.dedup();
    assert_eq!(distinct, vec![1, 2, 3, 4]);
    assert!(
        versions.len() >= 8,
        "the failures were retried: {versions:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn message_mode_answers_the_referral_message() {
    let gp = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/fhir/$process-message"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&gp)
        .await;
    let registry = format!(
        "[[endpoint]]\nods_code = \"Y12345\"\nbase_url = \"{}/fhir\"\nmode = \"message\"\nauth = {{ type = \"none\" }}\n",
        gp.uri()
    );
    let app = messaging_app(&registry).await;
    let message = Shape::Message.example();
    let (id, status, _) = submit(&app, Shape::Message, &message).await;
    assert_eq!(status, 200);
    transition(&app, &id, "accepted").await;
    eventually!(
        "both updates delivered",
        Duration::from_secs(10),
        all_delivered(&app).await
    );
    let received = gp.received_requests().await.unwrap_or_default();
    assert_eq!(received.len(), 2);
    let original_source = message["entry"][0]["resource"]["source"]["endpoint"].clone();
    for (request, version) in received.iter().zip(["1", "2"]) {
        let bundle: Value = serde_json::from_slice(&request.body).expect("a Bundle");
        assert_eq!(bundle["type"], "message");
        assert_eq!(header(request, "x-request-id"), bundle["id"].as_str());
        let header_resource = &bundle["entry"][0]["resource"];
        assert_eq!(
            header_resource["eventCoding"]["code"],
            "servicerequest-response"
        );
        assert_eq!(
            header_resource["destination"][0]["endpoint"],
            original_source
        );
        assert_eq!(header_resource["response"]["identifier"], message["id"]);
        // Sprig's own URLs are its public ones, never its listen address.
        assert_eq!(
            header_resource["source"]["endpoint"],
            format!("{PUBLIC_BASE}/$process-message")
        );
        let focus = header_resource["focus"][0]["reference"]
            .as_str()
            .unwrap_or("");
        assert!(
            focus.starts_with(&format!("{PUBLIC_BASE}/Task/")),
            "{focus}"
        );
        let task = &bundle["entry"][1]["resource"];
        assert_eq!(task["resourceType"], "Task");
        assert_eq!(task["meta"]["versionId"], version);
    }
    app.stop().await;
}

/// BaRS receivers answer a reused X-Request-ID with a different body by 409,
/// so a retry must send the very bytes the first attempt sent.
#[tokio::test]
async fn a_retried_message_is_sent_byte_for_byte_again() {
    let (gp, _) = scripted_gp(
        Mock::given(method("POST")).and(path("/fhir/$process-message")),
        vec![ResponseTemplate::new(503)],
    )
    .await;
    let registry = format!(
        "[[endpoint]]\nods_code = \"Y12345\"\nbase_url = \"{}/fhir\"\nmode = \"message\"\nauth = {{ type = \"none\" }}\n",
        gp.uri()
    );
    let app = messaging_app(&registry).await;
    let (_id, status, _) = submit(&app, Shape::Message, &Shape::Message.example()).await;
    assert_eq!(status, 200);
    eventually!(
        "delivered after a 503",
        Duration::from_secs(10),
        all_delivered(&app).await
    );
    let received = gp.received_requests().await.unwrap_or_default();
    assert_eq!(received.len(), 2, "one failure, one success");
    assert_eq!(
        header(&received[0], "x-request-id"),
        header(&received[1], "x-request-id")
    );
    assert!(
        received[0].body == received[1].body,
        "the retry's body differs:\n{}\n{}",
        String::from_utf8_lossy(&received[0].body),
        String::from_utf8_lossy(&received[1].body)
    );
    app.stop().await;
}

/// The maximum age counts from the first attempt: an update kept until its
/// practice had an endpoint has not been failing all that while.
#[tokio::test]
async fn an_update_kept_past_the_maximum_age_is_still_retried() {
    let (gp, times) =
        scripted_gp(Mock::given(method("PUT")), vec![ResponseTemplate::new(503)]).await;
    let dir = Arc::new(TempDir::new().expect("temporary directory"));
    let file = dir.path().join("endpoints.toml");
    std::fs::write(&file, "").expect("registry written");
    let app = spawn_app_in(dir, |settings| {
        settings.delivery.endpoints = Some(file.clone());
        fast(&mut settings.delivery);
        settings.delivery.max_age_secs = 1;
    })
    .await;
    refer(&app, PRACTICE).await;
    // Kept for pull for longer than the maximum age.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::write(
        app.dir().path().join("endpoints.toml"),
        endpoint_toml(PRACTICE, &gp.uri(), ""),
    )
    .expect("registry rewritten");
    eventually!(
        "delivered after one 503",
        Duration::from_secs(10),
        all_delivered(&app).await
    );
    assert_eq!(times.lock().expect("lock").len(), 2);
    assert_eq!(deliveries(&app, "").await[0]["attempts"], 2);
    app.stop().await;
}

#[tokio::test]
async fn a_practice_without_an_endpoint_keeps_its_updates_for_pull() {
    let app = delivering_app("").await;
    let before = sprig::fhir::Instant::now().to_fhir();
    let (_id, task) = refer(&app, PRACTICE).await;
    let pending = deliveries(&app, "").await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["awaiting_endpoint"], true);
    assert_eq!(
        pending[0]["next_attempt_at"], pending[0]["created_at"],
        "due since it was made"
    );
    let view = json_body(app.get("/api/endpoints").await).await;
    assert_matches_schema("EndpointsView", &view);
    assert_eq!(view["endpoints"], json!([]));
    assert_eq!(view["without_endpoint"][0]["ods_code"], PRACTICE);
    assert_eq!(view["without_endpoint"][0]["pending"], 1);
    // The practice pulls.
    let found = json_body(
        app.get(&format!(
            "/fhir/Task?_lastUpdated=gt{}",
            before.replace(':', "%3A")
        ))
        .await,
    )
    .await;
    assert_eq!(
        found["entry"][0]["resource"]["id"],
        task.as_str(),
        "{found}"
    );
    let text = app.get("/metrics").await.text().await.expect("metrics");
    assert!(
        text.contains(&format!(
            "sprig_outbox_pending{{destination=\"{PRACTICE}\",endpoint=\"none\"}} 1"
        )),
        "{text}"
    );
    app.stop().await;
}

/// The delivery worker's listing asks only about the practices it has an endpoint for:
/// the updates of practices that pull wait in the outbox for ever, and reading them all
/// at every commit made each listing cost time in proportion to them.
#[tokio::test]
async fn the_outbox_listing_names_only_the_practices_asked_about() {
    let app = delivering_app("").await;
    refer(&app, PRACTICE).await;
    refer(&app, OTHER_PRACTICE).await;
    let now = sprig::fhir::Instant::now().unix_millis() + 1_000;
    let due = |among: Vec<&str>| {
        let among: Vec<String> = among.into_iter().map(str::to_owned).collect();
        let store = app.store.clone();
        async move {
            let mut due = store.due_destinations(now, &among).await.expect("listing");
            due.sort();
            due
        }
    };
    let mut both = vec![PRACTICE.to_owned(), OTHER_PRACTICE.to_owned()];
    both.sort();
    assert_eq!(due(vec![PRACTICE, OTHER_PRACTICE]).await, both);
    assert_eq!(due(vec![OTHER_PRACTICE]).await, [OTHER_PRACTICE]);
    assert_eq!(due(vec!["Y99999", PRACTICE]).await, [PRACTICE]);
    assert!(due(vec![]).await.is_empty());
    // Claimed (leased until later): no longer due, as the claim itself would see it.
    let claimed = app
        .store
        .claim_due(PRACTICE, "test", now, now + 60_000, 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(due(vec![PRACTICE, OTHER_PRACTICE]).await, [OTHER_PRACTICE]);
    app.stop().await;
}

#[tokio::test]
async fn an_endpoint_added_to_the_file_is_used_without_a_restart() {
    let gp = MockServer::start().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&gp)
        .await;
    let app = delivering_app(&endpoint_toml(OTHER_PRACTICE, &gp.uri(), "")).await;
    refer(&app, PRACTICE).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(deliveries(&app, "").await[0]["awaiting_endpoint"], true);
    let file = app.dir().path().join("endpoints.toml");
    std::fs::write(
        &file,
        endpoint_toml(OTHER_PRACTICE, &gp.uri(), "") + &endpoint_toml(PRACTICE, &gp.uri(), ""),
    )
    .expect("registry rewritten");
    eventually!(
        "delivered after the reload",
        Duration::from_secs(10),
        all_delivered(&app).await
    );
    let view = json_body(app.get("/api/endpoints").await).await;
    assert_eq!(view["endpoints"].as_array().map(Vec::len), Some(2));
    app.stop().await;
}

#[tokio::test]
async fn a_mistake_in_the_endpoint_file_stops_start_up_naming_file_and_line() {
    let dir = TempDir::new().expect("temporary directory");
    let error = start_up_error(registry_settings(
        &dir,
        "[[endpoint]]\nods_code = \"K83999\"\nbase_url = \"ftp://gp.example\"\nmode = \"rest\"\nauth = { type = \"none\" }\n",
    ))
    .await;
    assert!(error.contains("endpoints.toml:3:"), "{error}");
    assert!(error.contains("base_url"), "{error}");
}

/// A message names Sprig's resources and its `$process-message` by absolute URLs; without
/// `public_base_url` there are none the practice could reach, so start-up says so.
#[tokio::test]
async fn a_message_mode_endpoint_without_a_public_address_stops_start_up() {
    let dir = TempDir::new().expect("temporary directory");
    let settings = registry_settings(
        &dir,
        "[[endpoint]]\nods_code = \"K83999\"\nbase_url = \"https://gp.example/fhir\"\nmode = \"message\"\nauth = { type = \"none\" }\n",
    );
    let error = start_up_error(settings.clone()).await;
    assert!(error.contains("K83999"), "{error}");
    assert!(error.contains("public_base_url"), "{error}");
    let app = sprig::app::Application::build(sprig::config::Settings {
        public_base_url: Some(PUBLIC_BASE.into()),
        ..settings
    })
    .await
    .expect("starts with a public address");
    drop(app);
}

/// `kill -9` at any moment loses nothing: after a restart every committed
/// change reaches the practice (at least once), in order per referral.
#[tokio::test]
async fn kill_9_mid_delivery_loses_nothing() {
    let gp = MockServer::start().await;
    // Slow answers, so the kill lands with sends in flight.
    Mock::given(method("PUT"))
        // (12 updates, 2 at a time, 1 s each: at least 6 s to deliver all, so
        // the kill lands mid-way even on a loaded machine.)
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(1)))
        .mount(&gp)
        .await;
    let dir = TempDir::new().expect("temporary directory");
    let db = dir.path().join("sprig.db");
    let registry = dir.path().join("endpoints.toml");
    std::fs::write(
        &registry,
        endpoint_toml(PRACTICE, &gp.uri(), "max_in_flight = 2"),
    )
    .expect("registry written");
    let registry = registry.display().to_string();
    let env = [
        ("SPRIG_ENDPOINTS", registry.as_str()),
        ("SPRIG_DELIVERY__POLL_INTERVAL_MS", "50"),
        ("SPRIG_DELIVERY__INITIAL_BACKOFF_MS", "100"),
    ];
    let mut server = start(&db, &env);
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let created = client
            .post(format!("{}/fhir/ServiceRequest", server.address))
            .header("content-type", "application/fhir+json")
            .body(sample_referral_text())
            .send()
            .await
            .expect("created");
        assert_eq!(created.status(), 201);
        let referral: Value = created.json().await.expect("JSON");
        let id = referral["id"].as_str().expect("id").to_owned();
        for stage in ["accepted", "contacted"] {
            let moved = client
                .post(format!("{}/api/referrals/{id}/transitions", server.address))
                .json(&json!({"to": stage}))
                .send()
                .await
                .expect("transition");
            assert_eq!(moved.status(), 200);
        }
        let record: Value = client
            .get(format!("{}/api/referrals/{id}", server.address))
            .send()
            .await
            .expect("record")
            .json()
            .await
            .expect("JSON");
        tasks.push(record["task_id"].as_str().expect("task").to_owned());
    }
    // Some delivered, some not: kill now.
    eventually!("a few deliveries", Duration::from_secs(10), {
        !task_puts(&gp).await.is_empty()
    });
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");
    let before_restart = task_puts(&gp).await.len();
    assert!(
        before_restart < 12,
        "the kill came too late to prove anything ({before_restart} delivered)"
    );

    let server = start(&db, &env);
    eventually!(
        "every update delivered after the restart",
        Duration::from_secs(30),
        {
            let puts = task_puts(&gp).await;
            tasks.iter().all(|task| {
                let mut versions = versions_of(&puts, task);
                versions.dedup();
                versions == vec![1, 2, 3]
            })
        }
    );
    let puts = task_puts(&gp).await;
    for task in &tasks {
        let versions = versions_of(&puts, task);
        assert!(
            versions.windows(2).all(|w| w[0] <= w[1]),
            "order kept across the crash: {versions:?}"
        );
    }
    eventually!("the queue is empty", Duration::from_secs(5), {
        let pending: Value = client
            .get(format!("{}/api/deliveries?state=pending", server.address))
            .send()
            .await
            .expect("queue")
            .json()
            .await
            .expect("JSON");
        pending["items"] == json!([])
    });
    crate::binary::terminate(server);
}

/// An operator's reload signal never stops the gateway, with or without a
/// registry file.
#[tokio::test]
async fn sighup_reloads_and_never_stops_the_gateway() {
    let dir = TempDir::new().expect("temporary directory");
    let server = start(&dir.path().join("sprig.db"), &[]);
    let pid = i32::try_from(server.child.id()).expect("pid");
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(pid, libc::SIGHUP);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let alive = reqwest::get(format!("{}/healthz", server.address))
        .await
        .expect("still serving");
    assert_eq!(alive.status(), 200);
    crate::binary::terminate(server);
}

/// A gateway whose retries back off for a minute, so that an update
/// delivered within seconds of the practice's return was not waiting out
/// its own backoff.
async fn slow_retrying_app(gp: &MockServer) -> TestApp {
    delivering_app_with(&endpoint_toml(PRACTICE, &gp.uri(), ""), |settings| {
        settings.delivery.initial_backoff_ms = 60_000;
        settings.delivery.max_backoff_secs = 120;
    })
    .await
}

/// Refers `count` patients while `gp` answers 503, and waits until each
/// update has failed once (each now backing off for a minute).
async fn updates_backing_off(app: &TestApp, gp: &MockServer, count: usize) {
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(503))
        .mount(gp)
        .await;
    for _ in 0..count {
        refer(app, PRACTICE).await;
    }
    eventually!("every update failed once", Duration::from_secs(10), {
        let all = deliveries(app, "").await;
        all.len() == count
            && all
                .iter()
                .all(|d| d["attempts"] == 1 && d["last_status"] == 503)
    });
    gp.reset().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(200))
        .mount(gp)
        .await;
}

#[tokio::test]
async fn the_first_success_from_an_endpoint_makes_its_waiting_updates_due_now() {
    let gp = MockServer::start().await;
    let app = slow_retrying_app(&gp).await;
    updates_backing_off(&app, &gp, 3).await;
    // A new referral's update is due at once; its delivery shows the
    // practice is back, and the three backing off follow it within seconds,
    // not a minute.
    refer(&app, PRACTICE).await;
    eventually!(
        "all four delivered",
        Duration::from_secs(10),
        all_delivered(&app).await
    );
    assert_eq!(deliveries(&app, "").await.len(), 4);
    app.stop().await;
}

#[tokio::test]
async fn send_now_for_an_endpoint_cuts_its_waiting_updates_backoff_short() {
    let gp = MockServer::start().await;
    let app = slow_retrying_app(&gp).await;
    updates_backing_off(&app, &gp, 2).await;
    let malformed = app
        .client
        .post(app.url("/api/endpoints/not-a-code/send-now"))
        .send()
        .await
        .expect("request");
    assert_eq!(malformed.status(), 400, "a malformed ODS code is refused");
    let response = app
        .client
        .post(app.url(&format!("/api/endpoints/{PRACTICE}/send-now")))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let answer = json_body(response).await;
    assert_matches_schema("SendNow", &answer);
    assert_eq!(answer, json!({"destination": PRACTICE, "made_due": 2}));
    eventually!(
        "both delivered",
        Duration::from_secs(10),
        all_delivered(&app).await
    );
    // Nothing waits now: a second send-now has nothing to do.
    let again = app
        .client
        .post(app.url(&format!("/api/endpoints/{PRACTICE}/send-now")))
        .send()
        .await
        .expect("request");
    assert_eq!(json_body(again).await["made_due"], 0);
    app.stop().await;
}

/// A gateway on `dir` delivering to `gp` with `extra` in its endpoint table.
async fn delivering_app_in(dir: &Arc<TempDir>, gp: &MockServer, extra: &str) -> TestApp {
    let file = dir.path().join("endpoints.toml");
    std::fs::write(&file, endpoint_toml(PRACTICE, &gp.uri(), extra)).expect("registry written");
    spawn_app_in(Arc::clone(dir), |settings| {
        settings.delivery.endpoints = Some(file);
        fast(&mut settings.delivery);
    })
    .await
}

/// Holds every write of the outbox (claims and results) until dropped: on SQLite a
/// write transaction, which holds the single writer; on PostgreSQL a transaction
/// holding the outbox table in `EXCLUSIVE` mode (reads go on).
enum HeldWriter {
    Sqlite { _tx: Box<sprig::store::WriteTx> },
    Postgres(sqlx::PgConnection),
}

impl HeldWriter {
    async fn hold(app: &TestApp, dir: &TempDir) -> Self {
        if crate::helpers::on_postgres() {
            use sqlx::Connection;
            let url = crate::helpers::database_for(dir.path()).await;
            let mut conn = sqlx::PgConnection::connect(&url).await.expect("database");
            sqlx::raw_sql("BEGIN; LOCK TABLE outbox IN EXCLUSIVE MODE")
                .execute(&mut conn)
                .await
                .expect("outbox locked");
            HeldWriter::Postgres(conn)
        } else {
            HeldWriter::Sqlite {
                _tx: Box::new(app.store.begin_write().await.expect("the writer")),
            }
        }
    }

    async fn release(self) {
        if let HeldWriter::Postgres(mut conn) = self {
            sqlx::raw_sql("ROLLBACK")
                .execute(&mut conn)
                .await
                .expect("outbox unlocked");
        }
    }
}

/// A slot does not wait for the writer: a destination's due heads are claimed
/// ahead of its slots in one write, and a finished send's result is recorded
/// apart, so the slot goes on to the next claimed head while the writer is busy
/// (as under intake, where each write waits a group-commit batch). Fails where each
/// slot claims its own head and records its own result before sending again: one
/// slot then has one head claimed at a time, and sends at most one more while the
/// writer is held.
#[tokio::test]
async fn claimed_heads_are_sent_while_results_wait_for_the_writer() {
    let gp = MockServer::start().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(300)))
        .mount(&gp)
        .await;
    let dir = Arc::new(TempDir::new().expect("temporary directory"));
    let registry = dir.path().join("endpoints.toml");
    // No endpoint until the eight are waiting, so all are due at once.
    std::fs::write(&registry, "").expect("registry written");
    let app = spawn_app_in(Arc::clone(&dir), |settings| {
        fast(&mut settings.delivery);
        settings.delivery.endpoints = Some(registry.clone());
    })
    .await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(refer(&app, PRACTICE).await.1);
    }
    std::fs::write(
        &registry,
        endpoint_toml(PRACTICE, &gp.uri(), "max_in_flight = 1"),
    )
    .expect("registry written");
    // Every head claimed (its attempt counted) though one slot sends them one by one.
    eventually!("all eight claimed", Duration::from_secs(10), {
        let all = deliveries(&app, "").await;
        all.len() == 8 && all.iter().all(|d| d["attempts"] == 1)
    });
    let held = HeldWriter::hold(&app, &dir).await;
    let before = task_puts(&gp).await.len();
    assert!(before <= 4, "{before} of 8 sent before the writer was held");
    // Well within SQLite's busy timeout (5 s): the claimed heads go out, their
    // results wait.
    eventually!(
        "all eight sent while the writer is held",
        Duration::from_secs(4),
        task_puts(&gp).await.len() == 8
    );
    held.release().await;
    eventually!(
        "every result recorded",
        Duration::from_secs(10),
        all_delivered(&app).await
    );
    let puts = task_puts(&gp).await;
    for task in &tasks {
        assert_eq!(versions_of(&puts, task), vec![1], "sent once: {puts:?}");
    }
    app.stop().await;
}

/// Many referrals, several sends in flight and heads claimed ahead: each
/// referral's updates still arrive in order, each once (a healthy endpoint),
/// and every result is recorded.
#[tokio::test]
async fn many_referrals_keep_their_order_with_heads_claimed_ahead() {
    let gp = MockServer::start().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(5)))
        .mount(&gp)
        .await;
    let app = delivering_app(&endpoint_toml(PRACTICE, &gp.uri(), "max_in_flight = 4")).await;
    let mut referrals = tokio::task::JoinSet::new();
    let app = Arc::new(app);
    for _ in 0..6 {
        let app = Arc::clone(&app);
        referrals.spawn(async move {
            let mut tasks = Vec::new();
            for _ in 0..4 {
                let (id, task) = refer(&app, PRACTICE).await;
                for stage in ["accepted", "contacted", "assessment-done"] {
                    transition(&app, &id, stage).await;
                }
                tasks.push(task);
            }
            tasks
        });
    }
    let mut tasks = Vec::new();
    while let Some(made) = referrals.join_next().await {
        tasks.extend(made.expect("a sender"));
    }
    eventually!(
        "all 96 updates delivered",
        Duration::from_secs(30),
        all_delivered(&app).await
    );
    let puts = task_puts(&gp).await;
    assert_eq!(puts.len(), 96, "each update sent once");
    for task in &tasks {
        assert_eq!(versions_of(&puts, task), vec![1, 2, 3, 4], "{task}");
    }
    assert!(deliveries(&app, "?state=pending").await.is_empty());
    let metrics = app
        .get("/metrics")
        .await
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains(&format!(
            "sprig_delivery_attempts_total{{destination=\"{PRACTICE}\",outcome=\"delivered\"}} 96"
        )),
        "{metrics}"
    );
    Arc::into_inner(app).expect("the only handle").stop().await;
}

/// A graceful stop lets the sends in flight finish and records their results
/// before the database closes; the heads claimed but not yet sent go back, their
/// attempt uncounted. After a restart nothing is sent twice.
#[tokio::test]
async fn a_graceful_stop_records_the_results_of_sends_in_flight() {
    let gp = MockServer::start().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(700)))
        .mount(&gp)
        .await;
    let dir = Arc::new(TempDir::new().expect("temporary directory"));
    let app = delivering_app_in(&dir, &gp, "max_in_flight = 2").await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        tasks.push(refer(&app, PRACTICE).await.1);
    }
    // Two in flight (the receiver has them), the rest claimed and queued.
    eventually!("two sends in flight", Duration::from_secs(10), {
        gp.received_requests().await.unwrap_or_default().len() >= 2
    });
    app.stop().await;
    let sent_before = task_puts(&gp).await.len();
    assert!(
        sent_before < 6,
        "the stop came too late ({sent_before} sent)"
    );

    let app = delivering_app_in(&dir, &gp, "max_in_flight = 2").await;
    eventually!(
        "the rest delivered after the restart",
        Duration::from_secs(15),
        all_delivered(&app).await
    );
    let puts = task_puts(&gp).await;
    for task in &tasks {
        assert_eq!(versions_of(&puts, task), vec![1], "sent once: {puts:?}");
    }
    for delivery in deliveries(&app, "").await {
        assert_eq!(delivery["attempts"], 1, "{delivery}");
    }
    app.stop().await;
}

/// A claimed head starts its send within `QUEUE_ALLOWANCE` (5 s) of its claim, or
/// goes back unsent and is claimed afresh: its lease covers the wait and then the
/// send's own lease, so a send that started later could outlive its lease while
/// another instance took the row. One slow slot (2.5 s a send) and five heads
/// claimed together: the fourth and fifth would start 7.5 and 10 s after their
/// claim; they are released and claimed again instead. Each is sent once, its
/// attempt counted once.
#[tokio::test]
async fn a_claimed_head_is_sent_within_its_queue_allowance_or_released() {
    let gp = MockServer::start().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(2500)))
        .mount(&gp)
        .await;
    let dir = Arc::new(TempDir::new().expect("temporary directory"));
    // No endpoint until the five are queued, so one claim takes them all.
    let app = spawn_app_in(Arc::clone(&dir), |settings| {
        fast(&mut settings.delivery);
        settings.delivery.endpoints = Some(dir.path().join("endpoints.toml"));
        std::fs::write(dir.path().join("endpoints.toml"), "").expect("registry written");
    })
    .await;
    let mut tasks = Vec::new();
    for _ in 0..5 {
        tasks.push(refer(&app, PRACTICE).await.1);
    }
    std::fs::write(
        dir.path().join("endpoints.toml"),
        endpoint_toml(PRACTICE, &gp.uri(), "max_in_flight = 1"),
    )
    .expect("registry written");
    eventually!(
        "all five delivered",
        Duration::from_secs(40),
        all_delivered(&app).await
    );
    let puts = task_puts(&gp).await;
    for task in &tasks {
        assert_eq!(versions_of(&puts, task), vec![1], "sent once: {puts:?}");
    }
    let at = |d: &Value, field: &str| {
        let text = d[field].as_str().expect("an instant");
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .expect("RFC 3339")
    };
    for delivery in deliveries(&app, "").await {
        assert_eq!(
            delivery["attempts"], 1,
            "a release is no attempt: {delivery}"
        );
        // Its send started (last_attempt_at: a released claim marks nothing), took
        // 2.5 s, and its result was recorded.
        let send_to_result = at(&delivery, "delivered_at") - at(&delivery, "last_attempt_at");
        assert!(
            send_to_result < time::Duration::milliseconds(5_000),
            "recorded {send_to_result} after its send started: {delivery}"
        );
    }
    app.stop().await;
}

/// `PUT /fhir/ServiceRequest/{id}` with `If-Match: {tag}`.
async fn put_referral(app: &TestApp, id: &str, body: &Value, tag: &str) -> reqwest::Response {
    app.client
        .put(app.url(&format!("/fhir/ServiceRequest/{id}")))
        .header("content-type", "application/fhir+json")
        .header("if-match", tag)
        .body(body.to_string())
        .send()
        .await
        .expect("request sent")
}

/// A no-op update (HAPI's term): a PUT whose ServiceRequest says what the current version
/// says (often a GP system's retry of an amendment or a withdrawal whose answer it lost)
/// stores nothing: `200` with the current version, its ETag and Last-Modified; no
/// `_history` entry, no Provenance, no phantom change in a `_lastUpdated` pull, nothing
/// queued for the practice or delivered. A stale `If-Match` is still a `412`. Fails where
/// every PUT stores a version (the first one answers `W/"2"`), or where a withdrawal sent
/// again meets the closed referral (`409`).
#[tokio::test]
async fn an_update_that_changes_nothing_stores_and_sends_nothing() {
    let gp = MockServer::start().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&gp)
        .await;
    let app = delivering_app(&endpoint_toml(PRACTICE, &gp.uri(), "")).await;
    let (id, task) = refer(&app, PRACTICE).await;
    let resource = format!("/fhir/ServiceRequest/{id}");
    let read = json_body(app.get(&resource).await).await;

    // Sent back as read: nothing new, the version held.
    let same = put_referral(&app, &id, &read, "W/\"1\"").await;
    assert_eq!(same.status(), 200);
    assert_eq!(same.headers()["etag"], "W/\"1\"");
    let first_read = app.get(&resource).await;
    assert_eq!(
        same.headers()["last-modified"],
        first_read.headers()["last-modified"]
    );
    assert_eq!(json_body(same).await["meta"], read["meta"]);

    // A change is a version; the same change again is not another one ...
    let mut amended = read.clone();
    amended["note"] = json!([{"text": "Prefers a morning call."}]);
    let changed = put_referral(&app, &id, &amended, "W/\"1\"").await;
    assert_eq!(changed.headers()["etag"], "W/\"2\"");
    let again = put_referral(&app, &id, &amended, "W/\"2\"").await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["etag"], "W/\"2\"");
    // ... and a stale If-Match is refused though nothing would change.
    let stale = put_referral(&app, &id, &amended, "W/\"1\"").await;
    assert_eq!(stale.status(), 412);

    // A withdrawal, then the same withdrawal again (a retry): nothing more.
    let mut withdrawal = amended.clone();
    withdrawal["status"] = json!("revoked");
    let withdrawn = put_referral(&app, &id, &withdrawal, "W/\"2\"").await;
    assert_eq!(withdrawn.headers()["etag"], "W/\"3\"");
    let retried = put_referral(&app, &id, &withdrawal, "W/\"3\"").await;
    let status = retried.status();
    let tag = retried.headers().get("etag").cloned();
    assert_eq!(status, 200, "{}", json_body(retried).await);
    assert_eq!(
        tag.as_ref().map(|t| t.to_str().unwrap_or("")),
        Some("W/\"3\"")
    );

    let history = json_body(app.get(&format!("{resource}/_history")).await).await;
    let versions: Vec<&str> = history["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["meta"]["versionId"].as_str())
        .collect();
    assert_eq!(versions, ["3", "2", "1"], "{history}");
    let current = json_body(app.get(&resource).await).await;
    let since = current["meta"]["lastUpdated"]
        .as_str()
        .expect("lastUpdated");
    let pulled = json_body(
        app.get(&format!("/fhir/ServiceRequest?_lastUpdated=gt{since}"))
            .await,
    )
    .await;
    assert!(
        pulled["entry"].as_array().is_none_or(Vec::is_empty),
        "{pulled}"
    );

    // The practice hears of the referral and its withdrawal: two Task versions.
    eventually!(
        "the Task versions delivered",
        Duration::from_secs(10),
        all_delivered(&app).await && deliveries(&app, "").await.len() >= 2
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(deliveries(&app, "").await.len(), 2);
    assert_eq!(versions_of(&task_puts(&gp).await, &task), vec![1, 2]);
    // Three ServiceRequest versions and two Task versions, each with its Provenance.
    assert_eq!(app.assert_every_version_has_its_provenance().await, 5);
    app.stop().await;
}

/// A claimed head handed back unsent (`AttemptResult::Released`: it waited past its
/// queue allowance, or the worker stopped) is left as the claim found it: no attempt
/// counted, no `last_attempt_at`, its maximum age not started, so neither the operator's
/// view nor the dead-letter clock sees an attempt that never happened. An attempt's result
/// records when it started and where its age counts from, which the next claim keeps.
/// Fails where the claim marks the row itself and the release only uncounts the attempt
/// (`last_attempt_at` stays set, and the age counts from the released claim).
#[tokio::test]
async fn a_released_head_keeps_no_mark_of_its_claim() {
    use sprig::fhir::Instant as FhirInstant;
    use sprig::store::outbox::{AttemptRecord, AttemptResult};
    let app = crate::helpers::spawn_app_with(|s| s.delivery.enabled = false).await;
    refer(&app, PRACTICE).await;
    let owner = "test-owner";
    let claim = |now_ms: i64| {
        let store = app.store.clone();
        async move {
            let claimed = store
                .claim_due(PRACTICE, owner, now_ms, now_ms + 60_000, 10)
                .await
                .expect("claim");
            assert_eq!(claimed.len(), 1, "{claimed:?}");
            claimed.into_iter().next().expect("one head")
        }
    };
    let record = |seq: i64, result: AttemptResult, started_at: &str, age_from_ms: i64| {
        let store = app.store.clone();
        let record = AttemptRecord {
            seq,
            result,
            status: None,
            at: FhirInstant::now().to_fhir(),
            started_at: started_at.to_owned(),
            age_from_ms,
        };
        async move {
            let recorded = store
                .record_attempts(owner, &[record])
                .await
                .expect("record");
            assert_eq!(recorded, [true]);
        }
    };
    let start = FhirInstant::now().unix_millis() + 1_000;

    let first = claim(start).await;
    assert_eq!((first.attempts, first.age_from_ms), (1, start));
    record(
        first.seq,
        AttemptResult::Released,
        "2000-01-01T00:00:00.000Z",
        start,
    )
    .await;
    let row = deliveries(&app, "").await.remove(0);
    assert_eq!(row["attempts"], 0, "{row}");
    assert_eq!(
        row["last_attempt_at"],
        Value::Null,
        "a release is no attempt: {row}"
    );

    // Claimed again later: its age counts from this claim, not the released one.
    let second = claim(start + 1_000).await;
    assert_eq!((second.attempts, second.age_from_ms), (1, start + 1_000));
    let started_at = FhirInstant::now().to_fhir();
    record(
        second.seq,
        AttemptResult::Retry {
            error: "test".into(),
            next_attempt_ms: start + 1_000,
        },
        &started_at,
        second.age_from_ms,
    )
    .await;
    let row = deliveries(&app, "").await.remove(0);
    assert_eq!(row["attempts"], 1, "{row}");
    assert_eq!(row["last_attempt_at"], json!(started_at), "{row}");
    // The next claim keeps the age the recorded attempt started.
    let third = claim(start + 2_000).await;
    assert_eq!((third.attempts, third.age_from_ms), (2, start + 1_000));
}
