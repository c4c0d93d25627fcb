//! The write path (issue 20 §2–§4): SQLite's group commit (many requests'
//! transactions in one SQLite transaction, each a savepoint), a request
//! timeout that never answers 503 for something stored, and transaction
//! Bundles whose cost grows with their size, not its square.

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{Value, json};
use sprig::fhir::{FhirId, ResourceType};
use sprig::store::{ReadOutcome, ResourceWrite, Visibility};

use crate::binary;
use crate::helpers::{TestApp, json_body, on_postgres, sample_referral, spawn_app_with};
use crate::workflow::Shape;

fn patient_write<'a>(id: &'a FhirId, family: &str) -> ResourceWrite<'a> {
    ResourceWrite {
        resource_type: ResourceType::parse("Patient").expect("type"),
        id,
        resource: json!({"resourceType": "Patient", "name": [{"family": family}]}),
        received: None,
        request_id: "write-path-test",
        owner: None,
    }
}

async fn stored(app: &TestApp, id: &FhirId) -> bool {
    matches!(
        app.store
            .read(
                ResourceType::parse("Patient").expect("type"),
                id,
                &Visibility::All
            )
            .await
            .expect("read"),
        ReadOutcome::Found(_)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_transaction_in_a_batch_leaves_the_others_committed() {
    let app = spawn_app_with(|_| {}).await;
    let first = FhirId::generate();
    let last = FhirId::generate();
    let failing_own = FhirId::generate();

    // The first transaction holds the writer while two more queue behind it:
    // on SQLite all three share one batch (one SQLite transaction).
    let mut holder = app.store.begin_write().await.expect("begin");
    holder
        .create(patient_write(&first, "First"))
        .await
        .expect("create");
    if on_postgres() {
        // PostgreSQL sends a write's INSERTs at its next other statement or its
        // commit: a read sends them, so the clash below meets this row.
        holder
            .read(
                ResourceType::parse("Patient").expect("type"),
                &first,
                &Visibility::All,
            )
            .await
            .expect("read");
    }
    let store = app.store.clone();
    let (failing_id, clash) = (failing_own.clone(), first.clone());
    let failing = tokio::spawn(async move {
        let mut tx = store.begin_write().await.expect("begin");
        tx.create(patient_write(&failing_id, "Failing"))
            .await
            .expect("create");
        // The same id as the first's: a constraint error, then abandoned. Both
        // backends queue the INSERT and meet it when the transaction next runs a
        // statement (here a read; otherwise its commit).
        let clashed = match tx.create(patient_write(&clash, "Clash")).await {
            Ok(_) => tx
                .read(
                    ResourceType::parse("Patient").expect("type"),
                    &failing_id,
                    &Visibility::All,
                )
                .await
                .map(|_| ()),
            Err(error) => Err(error),
        };
        assert!(clashed.is_err(), "an id already held cannot be created");
        drop(tx);
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let store = app.store.clone();
    let last_id = last.clone();
    let succeeding = tokio::spawn(async move {
        let mut tx = store.begin_write().await.expect("begin");
        tx.create(patient_write(&last_id, "Last"))
            .await
            .expect("create");
        tx.commit().await.expect("commit");
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    holder.commit().await.expect("the first commits");
    failing.await.expect("failing task");
    succeeding.await.expect("succeeding task");

    assert!(stored(&app, &first).await, "the first is committed");
    assert!(
        stored(&app, &last).await,
        "the one after the failure is committed"
    );
    assert!(
        !stored(&app, &failing_own).await,
        "the failing one's own write is rolled back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_are_all_answered_after_they_are_readable() {
    let app = spawn_app_with(|_| {}).await;
    let posts = (0..64).map(|n| {
        let mut referral = sample_referral();
        referral["identifier"][0]["value"] = json!(format!("GROUP-{n}"));
        let app = &app;
        async move {
            let response = app.post_referral(referral.to_string()).await;
            assert_eq!(response.status(), 201);
            let id = json_body(response).await["id"]
                .as_str()
                .expect("id")
                .to_owned();
            // Readers see committed data only: a 201 sent before its batch
            // committed would be a 404 here.
            let read = app.get(&format!("/fhir/ServiceRequest/{id}")).await;
            assert_eq!(read.status(), 200, "readable as soon as acknowledged");
            id
        }
    });
    let ids = join_all(posts).await;
    assert_eq!(app.row_count("referrals").await, 64);
    assert_eq!(ids.len(), 64);
}

/// Group commit is SQLite's: a real `sprig serve` killed with SIGKILL in the
/// middle of concurrent creates keeps every create it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_server_keeps_every_acknowledged_create() {
    if on_postgres() {
        return;
    }
    let dir = tempfile::TempDir::new().expect("temp dir");
    let db = dir.path().join("killed.db");
    let mut server = binary::start(&db, &[]);
    let address = server.address.clone();
    let client = reqwest::Client::new();
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let senders = (0..16).map(|sender| {
        let (client, address, acknowledged) = (
            client.clone(),
            address.clone(),
            std::sync::Arc::clone(&acknowledged),
        );
        tokio::spawn(async move {
            for n in 0.. {
                let mut referral = sample_referral();
                referral["identifier"][0]["value"] = json!(format!("KILL-{sender}-{n}"));
                let Ok(response) = client
                    .post(format!("{address}/fhir/ServiceRequest"))
                    .header("content-type", "application/fhir+json")
                    .body(referral.to_string())
                    .send()
                    .await
                else {
                    return;
                };
                if response.status() != 201 {
                    continue;
                }
                let Ok(body) = response.json::<Value>().await else {
                    return;
                };
                if let Some(id) = body["id"].as_str() {
                    acknowledged.lock().expect("lock").push(id.to_owned());
                }
            }
        })
    });
    let senders: Vec<_> = senders.collect();
    // Let batches form, then kill mid-stream.
    let started = Instant::now();
    while acknowledged.lock().expect("lock").len() < 100
        && started.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();
    for sender in senders {
        let _ = sender.await;
    }
    let acknowledged = acknowledged.lock().expect("lock").clone();
    assert!(
        acknowledged.len() >= 100,
        "creates were acknowledged before the kill"
    );

    let server = binary::start(&db, &[]);
    for id in &acknowledged {
        let read = client
            .get(format!("{}/fhir/ServiceRequest/{id}", server.address))
            .send()
            .await
            .expect("sent");
        assert_eq!(
            read.status(),
            200,
            "acknowledged ServiceRequest/{id} survived"
        );
    }
    assert!(binary::terminate(server).success());
}

/// A referral transaction Bundle of `entries` entries (the example, grown
/// with Conditions), with identifier `value`.
fn large_bundle(entries: usize, value: &str) -> Value {
    let text = std::fs::read_to_string("examples/referral-transaction-bundle.json")
        .expect("example")
        .replace("REF-2026-000456", value);
    let mut bundle: Value = serde_json::from_str(&text).expect("JSON");
    let condition = bundle["entry"][6].clone();
    let list = bundle["entry"].as_array_mut().expect("entries");
    while list.len() < entries {
        let mut entry = condition.clone();
        entry["fullUrl"] = json!(format!("urn:uuid:{}", uuid::Uuid::new_v4()));
        list.push(entry);
    }
    bundle
}

async fn referrals_with(app: &TestApp, value: &str) -> i64 {
    let (count,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM referrals WHERE identifier_value = $1")
            .bind(value)
            .fetch_one(&app.db_pool().await)
            .await
            .expect("count");
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_that_outlasts_the_time_limit_is_rolled_back_before_its_503() {
    let app = spawn_app_with(|s| {
        s.limits.request_timeout_secs = 1;
        s.limits.max_repeats = 20_000;
        s.limits.max_body_bytes = 32 * 1024 * 1024;
    })
    .await;
    let before = app.stored_version_count().await;
    // Far more work than a second holds in a test build (3,000 entries did, once the
    // index rows of a transaction went in one INSERT per table).
    let bundle = large_bundle(15_000, "TIMEOUT-1");
    let response = app
        .client
        .post(app.url("/fhir"))
        .header("content-type", "application/fhir+json")
        .body(bundle.to_string())
        .send()
        .await
        .expect("sent");
    let status = response.status();
    let outcome = json_body(response).await;
    assert_eq!(status, 503, "{outcome}");
    assert_eq!(outcome["issue"][0]["code"], "timeout");
    assert!(
        outcome["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or_default()
            .contains("nothing of it was stored"),
        "{outcome}"
    );
    // Whatever the rollback still had to do is done by the time a later
    // write commits.
    let mut settle = sample_referral();
    settle["identifier"][0]["value"] = json!("AFTER-TIMEOUT");
    assert_eq!(app.post_referral(settle.to_string()).await.status(), 201);
    assert_eq!(referrals_with(&app, "TIMEOUT-1").await, 0);
    let (conditions,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM resources WHERE resource_type = 'Condition'")
            .fetch_one(&app.db_pool().await)
            .await
            .expect("count");
    assert_eq!(conditions, 0, "none of the Bundle's entries is stored");
    assert!(app.stored_version_count().await > before);
}

/// Every answer tells the truth under a time limit that keeps firing: a 2xx
/// was stored, a 503 was not. Writes are held up at random moments so that
/// some requests run out of time while queued, some while writing and some
/// while their commit is under way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_a_time_limit_a_503_is_never_sent_for_a_stored_referral() {
    let app = spawn_app_with(|s| {
        s.limits.request_timeout_secs = 1;
        s.sqlite.busy_timeout_ms = 10_000;
    })
    .await;
    let store = app.store.clone();
    let stalling = tokio::spawn(async move {
        for round in 0..6u64 {
            tokio::time::sleep(Duration::from_millis(150 + 70 * round)).await;
            if let Ok(tx) = store.begin_write().await {
                // Holds the writer (and, on SQLite, the batch behind it).
                tokio::time::sleep(Duration::from_millis(1_100)).await;
                let _ = tx.commit().await;
            }
        }
    });
    let posts = (0..48).map(|n| {
        let mut referral = sample_referral();
        let value = format!("LIMIT-{n}");
        referral["identifier"][0]["value"] = json!(value);
        let app = &app;
        async move {
            tokio::time::sleep(Duration::from_millis(60 * n)).await;
            let status = app.post_referral(referral.to_string()).await.status();
            (value, status)
        }
    });
    let answers = join_all(posts).await;
    stalling.await.expect("stalling task");
    let mut settle = sample_referral();
    settle["identifier"][0]["value"] = json!("SETTLE");
    assert_eq!(app.post_referral(settle.to_string()).await.status(), 201);
    for (value, status) in answers {
        let stored = referrals_with(&app, &value).await;
        match status.as_u16() {
            201 => assert_eq!(stored, 1, "{value} answered 201"),
            503 => assert_eq!(stored, 0, "{value} answered 503 but is stored"),
            other => panic!("{value}: unexpected {other}"),
        }
    }
}

// A timing ratio: it failed once beside other tests on a machine at load 20 with the fix
// in place, and passed alone. Run it alone: `cargo test --test api -- --ignored write_path::`.
#[ignore = "timing ratio, flaky on a loaded machine: run alone"]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bundle_four_times_larger_costs_about_four_times_more() {
    let app = spawn_app_with(|s| {
        s.limits.max_repeats = 10_000;
        s.limits.request_timeout_secs = 300;
    })
    .await;
    let mut took = Vec::new();
    for (entries, value) in [(200, "LINEAR-SMALL"), (800, "LINEAR-LARGE")] {
        let body = large_bundle(entries, value).to_string();
        let started = Instant::now();
        let response = app
            .client
            .post(app.url("/fhir"))
            .header("content-type", "application/fhir+json")
            .body(body)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200);
        took.push(started.elapsed().as_secs_f64());
    }
    // Linear: 4×; the square of the size was 16×. Generous for a shared machine.
    assert!(
        took[1] < took[0] * 9.0,
        "200 entries {:.2} s, 800 entries {:.2} s",
        took[0],
        took[1]
    );
}

/// A referral whose identifier Sprig already holds is recognised from what is committed,
/// before a write transaction begins (issue 20 §3: resubmissions no longer take the
/// writer for their check): the same referral again is answered with the stored one
/// (200, the same id), another patient's under that identifier is refused (409, naming
/// neither), and neither stores anything.
#[tokio::test]
async fn a_held_identifier_is_answered_before_the_write_and_stores_nothing() {
    let app = spawn_app_with(|_| {}).await;
    let body = serde_json::to_string(&sample_referral()).expect("JSON");
    let first = app.post_referral(body.clone()).await;
    assert_eq!(first.status(), 201);
    let first = json_body(first).await;
    let versions = app.stored_version_count().await;

    let again = app.post_referral(body.clone()).await;
    assert_eq!(again.status(), 200);
    let again = json_body(again).await;
    assert_eq!(again["id"], first["id"], "the stored referral: {again}");

    // Another patient (a valid NHS number) under the same identifier.
    assert!(body.contains("9000000009"), "the sample's NHS number moved");
    let other = app
        .post_referral(body.replace("9000000009", "9000000017"))
        .await;
    assert_eq!(other.status(), 409);
    let outcome = json_body(other).await.to_string();
    assert!(outcome.contains("its own identifier"), "{outcome}");
    assert!(
        !outcome.contains("9000000009") && !outcome.contains(first["id"].as_str().expect("id")),
        "the refusal names nothing held: {outcome}"
    );
    assert_eq!(
        app.stored_version_count().await,
        versions,
        "neither answer stored anything"
    );
}

/// Copies of one new referral sent at the same moment are one referral: none of them
/// finds it committed before its write, so each claims the identifier inside its
/// write transaction (on SQLite, in the write batch they share, where the first copy's
/// referral is not yet durable). One is stored (201); every other is answered with it
/// (200, its id) and keeps nothing, and no audit row names a referral that was not kept.
#[tokio::test]
async fn copies_of_a_new_referral_sent_at_once_are_one_referral() {
    let app = spawn_app_with(|_| {}).await;
    let body = serde_json::to_string(&sample_referral()).expect("JSON");
    let answers = join_all((0..12).map(|_| app.post_referral(body.clone()))).await;
    assert_one_referral(&app, answers).await;
}

/// As above, with the copies made to meet inside their writes: the writer (SQLite)
/// or the resources table (PostgreSQL) is held elsewhere while they arrive, so none
/// can commit, and none can find another's referral, before its own write. On SQLite
/// each builds its rows, then waits for the writer; once it is free they run in one
/// batch, and every copy after the first finds the first's referral (not yet durable)
/// where it claims the identifier, just before its statements.
#[tokio::test]
async fn copies_of_a_new_referral_queued_behind_a_held_writer_are_one_referral() {
    let app = spawn_app_with(|s| s.sqlite.busy_timeout_ms = 30_000).await;
    let body = serde_json::to_string(&sample_referral()).expect("JSON");
    let held = crate::durability::hold_writes(&app).await;
    let (answers, ()) = futures::join!(
        join_all((0..8).map(|_| app.post_referral(body.clone()))),
        async move {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            drop(held);
        }
    );
    assert_one_referral(&app, answers).await;
}

/// Referral Bundles for one new patient (each its own referral) made to meet inside
/// their writes, as above: every one read the store before any was written, so each
/// saw no Patient and no Organization for its conditional updates. On SQLite each is
/// built from what it saw and confirmed on the writer; the first creates the Patient
/// and the Organization, and every later one finds its conditions now match, keeps
/// nothing, and is written again, matching under the writer. One Patient and one
/// Organization, every referral naming them.
#[tokio::test]
async fn referrals_for_one_new_patient_queued_behind_a_held_writer_share_one_patient() {
    for shape in [Shape::Transaction, Shape::Message] {
        let app = spawn_app_with(|s| s.sqlite.busy_timeout_ms = 30_000).await;
        let bodies: Vec<Value> = (0..6)
            .map(|i| new_referral(shape, &format!("QUEUED-PT-{i}")))
            .collect();
        let sends = bodies
            .iter()
            .map(|body| crate::workflow::post_fhir(&app, shape.path(), body, &[]));
        for answer in queued_behind_a_held_writer(&app, sends).await {
            let status = answer.status().as_u16();
            let json = json_body(answer).await;
            assert_eq!(status, 200, "{shape:?}: {json}");
        }
        let nhs_number = match shape {
            Shape::Message => "9000000009",
            _ => "9912003888",
        };
        assert_one_patient_for_six_referrals(&app, nhs_number).await;
    }
}

/// Copies of one referral message, with one `X-Request-ID`, made to meet inside their
/// writes: every copy gets the one reply, and one referral is stored. Then two messages
/// with one `X-Request-ID` but different referrals: one is answered, the other refused
/// as a reuse of the id (409), and only the first's referral is stored; on SQLite the
/// second finds the first's answer where it claims the id, on the writer.
#[tokio::test]
async fn copies_of_a_message_queued_behind_a_held_writer_get_one_answer() {
    let app = spawn_app_with(|s| s.sqlite.busy_timeout_ms = 30_000).await;
    let body = new_referral(Shape::Message, "QUEUED-MSG-1");
    let headers = [("x-request-id", "5e0c7f3a-1b2d-4c6e-8f90-a1b2c3d4e5f6")];
    let sends =
        (0..8).map(|_| crate::workflow::post_fhir(&app, Shape::Message.path(), &body, &headers));
    let mut replies = Vec::new();
    for answer in queued_behind_a_held_writer(&app, sends).await {
        let status = answer.status().as_u16();
        let json = json_body(answer).await;
        assert_eq!(status, 200, "{json}");
        replies.push(json);
    }
    assert!(
        replies.windows(2).all(|pair| pair[0] == pair[1]),
        "every copy gets the same reply: {replies:?}"
    );
    assert_eq!(app.row_count("referrals").await, 1);

    let headers = [("x-request-id", "5e0c7f3a-1b2d-4c6e-8f90-a1b2c3d4e5f7")];
    let bodies = [
        new_referral(Shape::Message, "QUEUED-MSG-2"),
        new_referral(Shape::Message, "QUEUED-MSG-3"),
    ];
    let sends = bodies
        .iter()
        .map(|body| crate::workflow::post_fhir(&app, Shape::Message.path(), body, &headers));
    let mut statuses = Vec::new();
    for answer in queued_behind_a_held_writer(&app, sends).await {
        statuses.push(answer.status().as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 409],
        "one answered, one refused as a reused id"
    );
    assert_eq!(
        app.row_count("referrals").await,
        2,
        "only the answered one is stored"
    );
}

/// A new referral in `shape` (a transaction Bundle or a message), its identifier
/// `identifier`: the example's patient and practice.
fn new_referral(shape: Shape, identifier: &str) -> Value {
    match shape {
        Shape::Message => {
            let text = Shape::Message.example().to_string();
            assert!(
                text.contains("REF-2026-000789"),
                "the example's identifier moved"
            );
            serde_json::from_str(&text.replace("REF-2026-000789", identifier)).expect("JSON")
        }
        _ => crate::workflow::referral_bundle(identifier),
    }
}

/// Sends `sends` while `app`'s writes are held (the writer on SQLite, the resources
/// table on PostgreSQL), so none can commit, or read another's commit, before the hold
/// ends 1.5 s later; their answers.
async fn queued_behind_a_held_writer<F>(
    app: &TestApp,
    sends: impl Iterator<Item = F>,
) -> Vec<reqwest::Response>
where
    F: std::future::Future<Output = reqwest::Response>,
{
    let held = crate::durability::hold_writes(app).await;
    let (answers, ()) = futures::join!(join_all(sends), async move {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        drop(held);
    });
    answers
}

/// One Patient (by its NHS number) and one Organization, and six referrals each naming
/// that Patient.
async fn assert_one_patient_for_six_referrals(app: &TestApp, nhs_number: &str) {
    let patients = one_match(
        app,
        &format!(
            "/fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs_number}&_total=accurate"
        ),
    )
    .await;
    one_match(
        app,
        "/fhir/Organization?identifier=https://fhir.nhs.uk/Id/ods-organization-code|Y12345&_total=accurate",
    )
    .await;
    assert_eq!(app.row_count("referrals").await, 6);
    let referrals = json_body(app.get("/fhir/ServiceRequest?_count=50").await).await;
    let subjects: Vec<&str> = referrals["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|entry| {
            entry["resource"]["subject"]["reference"]
                .as_str()
                .expect("a subject")
        })
        .collect();
    assert_eq!(subjects.len(), 6, "{referrals}");
    let patient = format!("Patient/{}", patients["id"].as_str().expect("id"));
    assert!(
        subjects.iter().all(|subject| *subject == patient),
        "every referral names {patient}: {subjects:?}"
    );
}

/// Changes to one Patient in referral Bundles made to meet inside their writes: each
/// read the Patient at the same version before any was written. Each change is a
/// version of its own, none lost or refused: on SQLite a Bundle that finds the version
/// it read replaced when it reaches the writer keeps nothing and is written again from
/// the version then current.
#[tokio::test]
async fn changes_to_one_patient_queued_behind_a_held_writer_are_each_a_version() {
    let app = spawn_app_with(|s| s.sqlite.busy_timeout_ms = 30_000).await;
    let body = |i: usize| {
        let mut body = crate::workflow::referral_bundle(&format!("QUEUED-CHANGE-{i}"));
        body["entry"][1]["resource"]["telecom"][0]["value"] = json!(format!("07700 90020{i}"));
        body
    };
    let first = crate::workflow::post_fhir(&app, "/fhir", &body(0), &[]).await;
    assert_eq!(first.status(), 200);
    let bodies: Vec<Value> = (1..=5).map(body).collect();
    let held = crate::durability::hold_writes(&app).await;
    let (answers, ()) = futures::join!(
        join_all(
            bodies
                .iter()
                .map(|body| crate::workflow::post_fhir(&app, "/fhir", body, &[]))
        ),
        async move {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            drop(held);
        }
    );
    for answer in answers {
        let status = answer.status().as_u16();
        let json = json_body(answer).await;
        assert_eq!(status, 200, "{json}");
    }
    let patient = one_match(
        &app,
        "/fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9912003888&_total=accurate",
    )
    .await;
    assert_eq!(
        patient["meta"]["versionId"], "6",
        "five changes after the first: {patient}"
    );
    let phone = patient["telecom"][0]["value"].as_str().unwrap_or_default();
    assert!(
        (1..=5).any(|i| phone == format!("07700 90020{i}")),
        "one of the changes' numbers, not {phone}"
    );
}

/// The one resource a search finds.
async fn one_match(app: &TestApp, search: &str) -> Value {
    let found = json_body(app.get(search).await).await;
    assert_eq!(found["total"], json!(1), "{search}: {found}");
    found["entry"][0]["resource"].clone()
}

/// One of `answers` stored the referral (201) and every other was answered with it
/// (200), keeping nothing of its own; no audit row names a referral that was not kept.
async fn assert_one_referral(app: &TestApp, answers: Vec<reqwest::Response>) {
    let mut created = Vec::new();
    let mut answered = Vec::new();
    for answer in answers {
        let status = answer.status().as_u16();
        let json = json_body(answer).await;
        match status {
            201 => created.push(json["id"].as_str().expect("id").to_owned()),
            200 => answered.push(json["id"].as_str().expect("id").to_owned()),
            other => panic!("copy answered {other}: {json}"),
        }
    }
    assert_eq!(
        created.len(),
        1,
        "one copy is stored: {created:?} {answered:?}"
    );
    assert!(
        answered.iter().all(|id| *id == created[0]),
        "every other copy is answered with the stored one: {created:?} {answered:?}"
    );
    assert_eq!(app.row_count("referrals").await, 1);
    assert_eq!(
        app.row_count("referral_submissions").await,
        1,
        "only the stored copy's submission is kept"
    );
    assert_eq!(
        app.row_count("resources").await,
        4,
        "the stored copy's ServiceRequest and Task and their Provenances, no other copy's"
    );
    let pool = app.db_pool().await;
    // The audit rows of the copies name the referral kept, or none: never another id.
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT referral_ids FROM audit_events WHERE referral_ids <> '[]'")
            .fetch_all(&pool)
            .await
            .expect("audit rows");
    assert!(!rows.is_empty(), "the stored copy is audited");
    for (ids,) in rows {
        let ids: Vec<String> = serde_json::from_str(&ids).expect("a JSON array");
        assert_eq!(ids, [created[0].clone()], "an audit row names {ids:?}");
    }
}
