//! Two Sprig instances on one PostgreSQL database (run in the PostgreSQL
//! half of the suite; SQLite is one process's file, so there these tests
//! have nothing to share and return at once): each guarantee the single
//! SQLite writer gave for free, checked with two real gateways racing.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sprig::fhir::{FhirId, ResourceType, VersionId};
use sprig::referral::stage::Stage;
use sprig::store::{ResourceWrite, StoreError};
use tempfile::TempDir;

use crate::helpers::{TestApp, json_body, on_postgres, spawn_app_in};
use crate::workflow::{Shape, post_fhir, referral_bundle};

/// The practice the sample referral comes from.
const PRACTICE: &str = "K83999";

/// Two gateways on one (fresh) PostgreSQL database.
async fn two_instances() -> (TestApp, TestApp) {
    let dir = Arc::new(TempDir::new().expect("temporary directory"));
    let a = spawn_app_in(Arc::clone(&dir), |_| {}).await;
    let b = spawn_app_in(dir, |_| {}).await;
    (a, b)
}

#[tokio::test]
async fn the_same_referral_at_two_instances_at_once_is_one_referral() {
    if !on_postgres() {
        return;
    }
    let (a, b) = two_instances().await;
    for shape in Shape::ALL {
        let body = shape.example();
        let (first, second) = tokio::join!(
            post_fhir(&a, shape.path(), &body, &[]),
            post_fhir(&b, shape.path(), &body, &[])
        );
        let mut statuses = vec![first.status().as_u16(), second.status().as_u16()];
        statuses.sort_unstable();
        assert!(
            matches!(statuses.as_slice(), [200, 200] | [200, 201]),
            "{shape:?}: one creates, the other is answered as a resubmission: {statuses:?}"
        );
    }
    // One referral per example (each shape's has its own identifier).
    let list = json_body(a.get("/api/referrals").await).await;
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(Shape::ALL.len()),
        "{list}"
    );
}

/// A BaRS sender that times out and resends, through a load balancer, can have many
/// copies of one message (one `X-Request-ID`) in flight at two instances at once: each
/// copy gets the one answer, never a 500 from the replay table's unique key.
#[tokio::test]
async fn the_same_message_id_at_two_instances_at_once_gets_one_answer() {
    if !on_postgres() {
        return;
    }
    let (a, b) = two_instances().await;
    let body = Shape::Message.example();
    let headers = [("x-request-id", "5b0f6c1e-2d3a-4e5f-8a6b-7c8d9e0f1a2b")];
    let sends = (0..16).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        post_fhir(app, "/fhir/$process-message", &body, &headers)
    });
    let answers = futures::future::join_all(sends).await;
    let mut replies = Vec::new();
    for answer in answers {
        assert_eq!(answer.status(), 200);
        replies.push(json_body(answer).await);
    }
    assert!(
        replies.windows(2).all(|pair| pair[0] == pair[1]),
        "every copy gets the same reply: {replies:?}"
    );
    let list = json_body(b.get("/api/referrals").await).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
}

#[tokio::test]
async fn the_same_identifier_from_two_practices_at_two_instances_at_once_is_two_referrals() {
    if !on_postgres() {
        return;
    }
    let (a, b) = two_instances().await;
    for shape in Shape::ALL {
        let practice = |ods: &str| -> serde_json::Value {
            let text = shape
                .example()
                .to_string()
                .replace("K83999", ods)
                .replace("Y12345", ods);
            serde_json::from_str(&text).expect("JSON")
        };
        let (from_a, from_b) = (practice("A81001"), practice("B82002"));
        let (first, second) = tokio::join!(
            post_fhir(&a, shape.path(), &from_a, &[]),
            post_fhir(&b, shape.path(), &from_b, &[])
        );
        let statuses = [first.status().as_u16(), second.status().as_u16()];
        let bodies = [
            first.text().await.unwrap_or_default(),
            second.text().await.unwrap_or_default(),
        ];
        assert!(
            statuses.iter().all(|s| matches!(s, 200 | 201)),
            "{shape:?}: each practice's referral is accepted: {statuses:?} {bodies:?}"
        );
        let (again_a, again_b) = tokio::join!(
            post_fhir(&b, shape.path(), &from_a, &[]),
            post_fhir(&a, shape.path(), &from_b, &[])
        );
        assert_eq!(
            [again_a.status().as_u16(), again_b.status().as_u16()],
            [200, 200],
            "{shape:?}: each practice's resubmission, at the other instance"
        );
    }
    // Two referrals per example: one per practice.
    let list = json_body(a.get("/api/referrals?limit=50").await).await;
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(2 * Shape::ALL.len()),
        "{list}"
    );
}

#[tokio::test]
async fn of_two_if_match_updates_on_two_instances_one_gets_a_conflict() {
    if !on_postgres() {
        return;
    }
    let (a, b) = two_instances().await;
    let id = FhirId::generate();
    let task = json!({"resourceType": "Task", "status": "requested", "intent": "order"});
    let write = |resource| ResourceWrite {
        resource_type: ResourceType::TASK,
        id: &id,
        resource,
        received: None,
        request_id: "test",
        owner: None,
    };
    let mut tx = a.store.begin_write().await.expect("begin");
    tx.create(write(task)).await.expect("create");
    tx.commit().await.expect("commit");

    // A updates from version 1 and holds its transaction open; B's update
    // from version 1 must wait for it, then see version 2 and refuse. (A changes
    // something: an update that changes nothing stores no version 2.)
    let mut first = a.store.begin_write().await.expect("begin");
    first
        .update(
            write(json!({"resourceType": "Task", "status": "in-progress", "intent": "order"})),
            Some(VersionId::FIRST),
        )
        .await
        .expect("the first update");
    let store_b = b.store.clone();
    let id_b = id.clone();
    let second = tokio::spawn(async move {
        let mut tx = store_b.begin_write().await.expect("begin");
        let result = tx
            .update(
                ResourceWrite {
                    resource_type: ResourceType::TASK,
                    id: &id_b,
                    resource: json!({"resourceType": "Task", "status": "accepted", "intent": "order"}),
                    received: None,
                    request_id: "test",
                    owner: None,
                },
                Some(VersionId::FIRST),
            )
            .await
            .map(|updated| updated.stored().version_id);
        if result.is_ok() {
            tx.commit().await.expect("commit");
        }
        result
    });
    still_waiting(&second, "the second update waits for the first").await;
    first.commit().await.expect("commit");
    let second = second.await.expect("task");
    assert!(
        matches!(second, Err(StoreError::VersionConflict { .. })),
        "the loser is told the version moved: {second:?}"
    );
}

/// Asserts that `task` is still blocked (on the other instance's lock) after long
/// enough for it to have finished had it not waited.
async fn still_waiting<T>(task: &tokio::task::JoinHandle<T>, what: &str) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!task.is_finished(), "{what}");
}

/// A new Task (version 1) on `app`'s database.
async fn a_task(app: &TestApp) -> FhirId {
    let id = FhirId::generate();
    let mut tx = app.store.begin_write().await.expect("begin");
    tx.create(task_write(&id, "requested"))
        .await
        .expect("create");
    tx.commit().await.expect("commit");
    id
}

fn task_write<'a>(id: &'a FhirId, status: &str) -> ResourceWrite<'a> {
    ResourceWrite {
        resource_type: ResourceType::TASK,
        id,
        resource: json!({"resourceType": "Task", "status": status, "intent": "order"}),
        received: None,
        request_id: "test",
        owner: None,
    }
}

/// A write transaction reads a referral to change it (a transition judges the move
/// from its stage): that read waits for another transaction changing the referral and
/// then sees its change, so no move is judged from a stage the referral has left.
#[tokio::test]
async fn a_referral_read_to_change_it_waits_for_a_change_in_flight_and_sees_it() {
    if !on_postgres() {
        return;
    }
    let (a, b) = two_instances().await;
    let (id, status, _) =
        crate::workflow::submit(&a, Shape::Resource, &crate::helpers::sample_referral()).await;
    assert_eq!(status, 201);

    let mut first = a.store.begin_write().await.expect("begin");
    let read = first
        .referral(&id)
        .await
        .expect("read")
        .expect("the referral");
    assert_eq!(read.stage, Stage::Received);
    first
        .set_stage(&id, Stage::Accepted, "2026-12-05T12:00:00Z")
        .await
        .expect("the move");
    let store_b = b.store.clone();
    let id_b = id.clone();
    let second = tokio::spawn(async move {
        let mut tx = store_b.begin_write().await.expect("begin");
        let read = tx
            .referral(&id_b)
            .await
            .expect("read")
            .expect("the referral");
        read.stage
    });
    still_waiting(&second, "the read waits for the change in flight").await;
    first.commit().await.expect("commit");
    assert_eq!(second.await.expect("task"), Stage::Accepted);
}

#[tokio::test]
async fn an_update_that_waited_for_the_same_change_stores_nothing() {
    if !on_postgres() {
        return;
    }
    let (a, b) = two_instances().await;
    let id = a_task(&a).await;

    // A writes version 2 and holds its transaction open; B's update to the same
    // content (no If-Match) waits for A's row lock. The row B then reads is version 2,
    // the version its statement joined to it still version 1: B must compare with
    // version 2, which says what it says, and store nothing.
    let mut first = a.store.begin_write().await.expect("begin");
    first
        .update(task_write(&id, "in-progress"), None)
        .await
        .expect("the first update");
    let store_b = b.store.clone();
    let id_b = id.clone();
    let second = tokio::spawn(async move {
        let mut tx = store_b.begin_write().await.expect("begin");
        let updated = tx
            .update(task_write(&id_b, "in-progress"), None)
            .await
            .expect("the second update");
        tx.commit().await.expect("commit");
        (updated.changed(), updated.stored().version_id)
    });
    still_waiting(&second, "the second update waits for the first").await;
    first.commit().await.expect("commit");
    let (changed, version) = second.await.expect("task");
    assert!(!changed, "the same content is not stored again");
    assert_eq!(version, VersionId::FIRST.next(), "answered with version 2");
    assert_eq!(a.stored_version_count().await, 2, "no version 3");
}

#[tokio::test]
async fn of_two_updates_from_one_read_on_two_instances_one_gets_a_conflict() {
    if !on_postgres() {
        return;
    }
    let (a, b) = two_instances().await;
    let id = a_task(&a).await;

    // Both read version 1 in their transactions (no lock); A updates from it and holds
    // its transaction open; B's update from its read must wait for A, then refuse: the
    // version it read is no longer current.
    let mut first = a.store.begin_write().await.expect("begin");
    let read = first
        .read_current(ResourceType::TASK, &id, &sprig::store::Visibility::All)
        .await
        .expect("read")
        .expect("the Task");
    let store_b = b.store.clone();
    let id_b = id.clone();
    let (read_b, reads) = tokio::sync::oneshot::channel();
    let (go, gone) = tokio::sync::oneshot::channel::<()>();
    let second = tokio::spawn(async move {
        let mut tx = store_b.begin_write().await.expect("begin");
        let current = tx
            .read_current(ResourceType::TASK, &id_b, &sprig::store::Visibility::All)
            .await
            .expect("read")
            .expect("the Task");
        let _ = read_b.send(());
        gone.await.expect("A updated");
        let result = tx
            .update_current(task_write(&id_b, "accepted"), current)
            .await
            .map(|updated| updated.stored().version_id);
        if result.is_ok() {
            tx.commit().await.expect("commit");
        }
        result
    });
    reads.await.expect("B read version 1");
    first
        .update_current(task_write(&id, "in-progress"), read)
        .await
        .expect("the first update");
    go.send(()).expect("B waits");
    still_waiting(&second, "the second update waits for the first").await;
    first.commit().await.expect("commit");
    let second = second.await.expect("task");
    assert!(
        matches!(second, Err(StoreError::VersionConflict { .. })),
        "the loser is told the version moved: {second:?}"
    );
}

#[tokio::test]
async fn a_commit_on_one_instance_wakes_delivery_on_the_other() {
    if !on_postgres() {
        return;
    }
    // B's own delivery worker would take the wake-up first: this test
    // listens in its place.
    let dir = Arc::new(TempDir::new().expect("temporary directory"));
    let a = spawn_app_in(Arc::clone(&dir), |_| {}).await;
    let b = spawn_app_in(dir, |s| s.delivery.enabled = false).await;
    let signal = b.store.outbox_signal();
    let woken = tokio::spawn(async move { signal.notified().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = post_fhir(&a, Shape::Resource.path(), &Shape::Resource.example(), &[]).await;
    assert_eq!(answer.status(), 201);
    tokio::time::timeout(Duration::from_secs(5), woken)
        .await
        .expect("B is woken by A's commit (LISTEN/NOTIFY), not its poll")
        .expect("task");
}

#[tokio::test]
async fn two_instances_never_claim_the_same_outbox_row() {
    if !on_postgres() {
        return;
    }
    let (a, b) = two_instances().await;
    // Several referrals, each with an update queued for its practice.
    for _ in 0..6 {
        let body = crate::helpers::sample_referral();
        let answer = post_fhir(&a, "/fhir/ServiceRequest", &body, &[]).await;
        assert_eq!(answer.status(), 201);
    }
    let now = i64::MAX / 4;
    let destinations = a
        .store
        .due_destinations(now, &[PRACTICE.to_owned()])
        .await
        .expect("due");
    assert_eq!(destinations, [PRACTICE], "the practice has updates due");
    for destination in destinations {
        let (from_a, from_b) = tokio::join!(
            a.store
                .claim_due(&destination, "instance-a", now, now + 60_000, 100),
            b.store
                .claim_due(&destination, "instance-b", now, now + 60_000, 100)
        );
        let (from_a, from_b) = (from_a.expect("claim a"), from_b.expect("claim b"));
        for claimed in &from_a {
            assert!(
                from_b.iter().all(|other| other.seq != claimed.seq),
                "row {} claimed by both instances",
                claimed.seq
            );
        }
    }
}

/// The Task ids and the newest `meta.lastUpdated` of a `GET /fhir/Task?_lastUpdated=gt…`
/// pull, following every `next` link.
async fn pull_tasks(app: &TestApp, after: &str) -> (Vec<String>, Option<String>) {
    let mut url = app.url(&format!("/fhir/Task?_lastUpdated=gt{after}&_count=2"));
    let (mut ids, mut newest) = (Vec::new(), None::<String>);
    loop {
        let page = json_body(app.client.get(&url).send().await.expect("pull")).await;
        for entry in page["entry"].as_array().into_iter().flatten() {
            ids.push(entry["resource"]["id"].as_str().expect("id").to_owned());
            let stamp = entry["resource"]["meta"]["lastUpdated"]
                .as_str()
                .expect("stamp");
            if newest.as_deref().is_none_or(|n| n < stamp) {
                newest = Some(stamp.to_owned());
            }
        }
        let next = page["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|link| {
                (link["relation"] == "next").then(|| link["url"].as_str().map(str::to_owned))?
            });
        match next {
            Some(next) => url = next,
            None => return (ids, newest),
        }
    }
}

#[tokio::test]
async fn a_pull_never_skips_a_version_that_commits_late_with_an_earlier_stamp() {
    if !on_postgres() {
        return;
    }
    let (a, b) = two_instances().await;
    let task = |status: &str| json!({"resourceType": "Task", "status": status, "intent": "order"});
    let (early, late) = (FhirId::generate(), FhirId::generate());
    let write = |id, resource| ResourceWrite {
        resource_type: ResourceType::TASK,
        id,
        resource,
        received: None,
        request_id: "test",
        owner: None,
    };
    // Instance A stamps its version first and holds its transaction open ...
    let mut held = a.store.begin_write().await.expect("begin");
    held.create(write(&early, task("requested")))
        .await
        .expect("the early version");
    tokio::time::sleep(Duration::from_millis(20)).await;
    // ... while instance B stamps a later version and commits it.
    let mut quick = b.store.begin_write().await.expect("begin");
    quick
        .create(write(&late, task("accepted")))
        .await
        .expect("the later version");
    quick.commit().await.expect("commit");

    // The GP pulls meanwhile, then again from the newest lastUpdated it was given.
    let epoch = "2000-01-01T00:00:00.000Z";
    let (first, newest) = pull_tasks(&b, epoch).await;
    held.commit().await.expect("the early version commits last");
    let (second, _) = pull_tasks(&a, newest.as_deref().unwrap_or(epoch)).await;
    let seen: Vec<&String> = first.iter().chain(&second).collect();
    for id in [&early, &late] {
        assert!(
            seen.iter().any(|s| s.as_str() == id.as_str()),
            "{id} was skipped: first pull {first:?} (newest {newest:?}), second {second:?}"
        );
    }
}

/// Sends every Bundle to `POST /fhir` at once, alternately at each instance, and asserts
/// each is answered 200.
async fn all_at_once_at_both(a: &TestApp, b: &TestApp, bodies: &[serde_json::Value]) {
    let answers = futures::future::join_all(bodies.iter().enumerate().map(|(i, body)| {
        let app = if i % 2 == 0 { a } else { b };
        post_fhir(app, "/fhir", body, &[])
    }))
    .await;
    for answer in answers {
        let status = answer.status().as_u16();
        assert_eq!(status, 200, "{}", answer.text().await.unwrap_or_default());
    }
}

#[tokio::test]
async fn referrals_for_one_patient_at_two_instances_at_once_share_one_patient_and_practice() {
    if !on_postgres() {
        return;
    }
    // Eight referral Bundles for one patient from one practice, each its own referral,
    // half to each instance at once. Each conditionally updates the Patient (by NHS
    // number) and the practice's Organization (by ODS code): without a lock on the
    // condition, several found no match and each created one, and from then on every
    // referral for that patient was refused with 412 (several matches).
    let (a, b) = two_instances().await;
    let bodies: Vec<serde_json::Value> = (0..8)
        .map(|i| referral_bundle(&format!("SAME-PT-{i}")))
        .collect();
    all_at_once_at_both(&a, &b, &bodies).await;
    for (search, what) in [
        (
            "/fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9912003888&_total=accurate",
            "Patient",
        ),
        (
            "/fhir/Organization?identifier=https://fhir.nhs.uk/Id/ods-organization-code|Y12345&_total=accurate",
            "Organization",
        ),
    ] {
        let found = json_body(a.get(search).await).await;
        assert_eq!(
            found["total"],
            json!(1),
            "one {what}, not {}",
            found["total"]
        );
    }
}

#[tokio::test]
async fn changes_to_one_patient_in_bundles_at_two_instances_at_once_are_each_a_version() {
    if !on_postgres() {
        return;
    }
    // A Bundle's conditional update reads its match without waiting for the row, and
    // when the Patient says what that version says, answers with it. A change waits for
    // the row and applies to whichever version is current then. Six changes at once,
    // half at each instance: each is a version of the one Patient, none lost or refused.
    let (a, b) = two_instances().await;
    let body = |i: usize| {
        let mut body = referral_bundle(&format!("CHANGE-PT-{i}"));
        body["entry"][1]["resource"]["telecom"][0]["value"] = json!(format!("07700 90010{i}"));
        body
    };
    let first = post_fhir(&a, "/fhir", &body(0), &[]).await;
    assert_eq!(first.status(), 200);
    let bodies: Vec<serde_json::Value> = (1..=6).map(body).collect();
    all_at_once_at_both(&a, &b, &bodies).await;
    let found = json_body(
        b.get(
            "/fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9912003888&_total=accurate",
        )
        .await,
    )
    .await;
    assert_eq!(found["total"], json!(1), "{found}");
    let patient = &found["entry"][0]["resource"];
    assert_eq!(
        patient["meta"]["versionId"], "7",
        "six changes after the first: {patient}"
    );
    let phone = patient["telecom"][0]["value"].as_str().unwrap_or_default();
    assert!(
        (1..=6).any(|i| phone == format!("07700 90010{i}")),
        "the last change's number, not {phone}"
    );
}

/// A head one instance claimed but could not send within its queue allowance is handed
/// back unsent, and then sent by the other instance or by the first, later: every update
/// reaches the practice exactly once, each referral's in order. Instance A's endpoint is
/// slow (one send at a time, 2.5 s each) and its one claim takes five referrals' heads, so
/// the third to fifth wait past the 5 s allowance and are released; instance B, whose
/// endpoint is quick, is given it once A has claimed. Which instance sends a released head
/// is a race (both may claim it once it is back), so the test asks only that it is sent,
/// once, in order, its release not counted as an attempt. Fails where a release leaves the
/// head leased (it waits out the lease: not delivered within the minute), or where a head is
/// sent by both instances or before the update ahead of it.
#[tokio::test]
async fn a_head_claimed_but_not_sent_by_one_instance_is_sent_once_and_in_order() {
    use std::sync::Mutex;
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, Request, ResponseTemplate};

    use crate::delivery::{all_delivered, deliveries, endpoint_toml, fast, refer, transition};

    if !on_postgres() {
        return;
    }
    // Every Task PUT either GP endpoint receives, in the order they arrive.
    let received: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let receiver = |delay: Duration| {
        let received = Arc::clone(&received);
        move |request: &Request| {
            let body: serde_json::Value = serde_json::from_slice(&request.body).expect("a Task");
            received.lock().expect("lock").push((
                body["id"].as_str().unwrap_or_default().to_owned(),
                body["meta"]["versionId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ));
            ResponseTemplate::new(200).set_delay(delay)
        }
    };
    let slow = MockServer::start().await;
    Mock::given(method("PUT"))
        .respond_with(receiver(Duration::from_millis(2500)))
        .mount(&slow)
        .await;
    let quick = MockServer::start().await;
    Mock::given(method("PUT"))
        .respond_with(receiver(Duration::ZERO))
        .mount(&quick)
        .await;

    // Each instance its own registry, empty until the updates are queued.
    let dir = Arc::new(TempDir::new().expect("temporary directory"));
    let registry = |name: &str| dir.path().join(name);
    for name in ["a.toml", "b.toml"] {
        std::fs::write(registry(name), "").expect("registry written");
    }
    let a = spawn_app_in(Arc::clone(&dir), |s| {
        fast(&mut s.delivery);
        s.delivery.endpoints = Some(registry("a.toml"));
    })
    .await;
    let b = spawn_app_in(Arc::clone(&dir), |s| {
        fast(&mut s.delivery);
        s.delivery.endpoints = Some(registry("b.toml"));
    })
    .await;
    // Five referrals, each with two updates for its practice: received, then accepted.
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (id, task) = refer(&a, PRACTICE).await;
        transition(&b, &id, "accepted").await;
        tasks.push(task);
    }
    // A's endpoint first: one claim takes the five heads. Its timeout makes their lease
    // (5 s and 4 × 30 s + 5 s) outlast the test, so only a release frees them in time.
    std::fs::write(
        registry("a.toml"),
        endpoint_toml(
            PRACTICE,
            &slow.uri(),
            "max_in_flight = 1\ntimeout_secs = 30",
        ),
    )
    .expect("registry written");
    let waiting = std::time::Instant::now();
    while slow
        .received_requests()
        .await
        .unwrap_or_default()
        .is_empty()
    {
        assert!(
            waiting.elapsed() < Duration::from_secs(10),
            "A sends nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(
        registry("b.toml"),
        endpoint_toml(PRACTICE, &quick.uri(), ""),
    )
    .expect("registry written");

    let delivering = std::time::Instant::now();
    while !all_delivered(&a).await || deliveries(&a, "").await.len() < 10 {
        assert!(
            delivering.elapsed() < Duration::from_secs(60),
            "not all delivered within a minute: {:?}",
            deliveries(&a, "").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Anything sent twice would arrive meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = received.lock().expect("lock").clone();
    for task in &tasks {
        let versions: Vec<&str> = received
            .iter()
            .filter(|(id, _)| id == task)
            .map(|(_, version)| version.as_str())
            .collect();
        assert_eq!(
            versions,
            ["1", "2"],
            "Task/{task}: each version once, in order: {received:?}"
        );
    }
    for delivery in deliveries(&b, "").await {
        assert_eq!(
            delivery["attempts"], 1,
            "a release is no attempt: {delivery}"
        );
    }
    a.stop().await;
    b.stop().await;
}
