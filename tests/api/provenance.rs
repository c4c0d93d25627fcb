//! Provenance over real HTTP (issue 17): every version of a ServiceRequest, Task and
//! Observation has one, naming who caused it and for whom, readable by whoever may read
//! the target and by no other practice; and the audit of what the authentication layer
//! refuses or ignores (401, 429, an untrusted `NHSD-End-User-Organisation`).

use serde_json::{Value, json};

use crate::access::{Secured, Who, referral_of_k, secured, secured_with};
use crate::helpers::json_body;

async fn get(secured: &Secured, who: Who, path: &str) -> (u16, Value) {
    let response = secured
        .request(who, "GET", path)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, json_body(response).await)
}

fn resources(bundle: &Value) -> Vec<Value> {
    bundle["entry"]
        .as_array()
        .map(|entries| entries.iter().map(|e| e["resource"].clone()).collect())
        .unwrap_or_default()
}

/// The Provenance of `target` (`Type/id`) as `who` sees them, oldest version first.
async fn provenance_of(secured: &Secured, who: Who, target: &str) -> Vec<Value> {
    let (status, bundle) = get(
        secured,
        who,
        &format!("/fhir/Provenance?target={target}&_count=50"),
    )
    .await;
    assert_eq!(status, 200, "{bundle}");
    let mut found = resources(&bundle);
    found.sort_by_key(|p| {
        p["target"][0]["reference"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    });
    found
}

async fn post(secured: &Secured, who: Who, path: &str, body: Value) -> u16 {
    secured
        .request(who, "POST", path)
        .json(&body)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

#[tokio::test]
async fn every_version_names_who_caused_it_and_only_its_practice_reads_it() {
    let secured = secured().await;
    let referral = referral_of_k(&secured).await;
    let (_, tasks) = get(
        &secured,
        Who::PracticeK,
        &format!("/fhir/Task?based-on=ServiceRequest/{referral}"),
    )
    .await;
    let task = resources(&tasks)[0]["id"]
        .as_str()
        .expect("task")
        .to_owned();
    let by_manager = |path: &str, body: Value| {
        let path = format!("/api/referrals/{referral}/{path}");
        let secured = &secured;
        async move { post(secured, Who::Manager, &path, body).await }
    };
    for stage in ["accepted", "contacted"] {
        assert_eq!(by_manager("transitions", json!({"to": stage})).await, 200);
    }
    let swemwbs = json!({"measure": "swemwbs", "answers": [3, 3, 3, 3, 3, 3, 3], "recorded_at": "2026-11-25T10:00:00Z"});
    assert_eq!(by_manager("outcomes", swemwbs).await, 201);

    // The referral: created by K's client, for K.
    let of_referral = provenance_of(
        &secured,
        Who::PracticeK,
        &format!("ServiceRequest/{referral}"),
    )
    .await;
    assert_eq!(of_referral.len(), 1, "{of_referral:#?}");
    let created = &of_referral[0];
    assert_eq!(
        created["target"][0]["reference"],
        format!("ServiceRequest/{referral}/_history/1")
    );
    assert_eq!(created["activity"]["coding"][0]["code"], "CREATE");
    let agent = &created["agent"][0];
    assert_eq!(agent["type"]["coding"][0]["code"], "author");
    assert_eq!(agent["who"]["type"], "Device");
    assert_eq!(agent["who"]["identifier"]["value"], "gp-k");
    assert_eq!(agent["onBehalfOf"]["identifier"]["value"], "K83999");
    assert!(created["recorded"].is_string());

    // The Task: version 1 with the referral; 2, 3 (stages) and 4 (the outcome) by the
    // manager.
    let of_task = provenance_of(&secured, Who::PracticeK, &format!("Task/{task}")).await;
    let targets: Vec<&str> = of_task
        .iter()
        .map(|p| p["target"][0]["reference"].as_str().expect("target"))
        .collect();
    assert_eq!(
        targets,
        [1, 2, 3, 4].map(|v| format!("Task/{task}/_history/{v}")),
        "{of_task:#?}"
    );
    assert_eq!(of_task[0]["agent"][0]["who"]["identifier"]["value"], "gp-k");
    let revised = &of_task[2];
    assert_eq!(revised["activity"]["coding"][0]["code"], "UPDATE");
    assert_eq!(revised["agent"][0]["who"]["type"], "Practitioner");
    assert_eq!(revised["agent"][0]["who"]["identifier"]["value"], "mgr");
    assert_eq!(
        revised["entity"][0]["what"]["reference"],
        format!("Task/{task}/_history/2")
    );

    // The outcome Observation, by the manager.
    let (_, observations) = get(
        &secured,
        Who::PracticeK,
        &format!("/fhir/Observation?based-on=ServiceRequest/{referral}"),
    )
    .await;
    let observation = resources(&observations)[0]["id"]
        .as_str()
        .expect("observation")
        .to_owned();
    let of_observation = provenance_of(
        &secured,
        Who::PracticeK,
        &format!("Observation/{observation}"),
    )
    .await;
    assert_eq!(of_observation.len(), 1);
    assert_eq!(
        of_observation[0]["agent"][0]["who"]["identifier"]["value"],
        "mgr"
    );

    // Read by id and version like any resource; valid by Sprig's own $validate.
    let id = created["id"].as_str().expect("id");
    let (status, read) = get(&secured, Who::PracticeK, &format!("/fhir/Provenance/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(read["target"], created["target"]);
    for provenance in [created, revised, &of_observation[0]] {
        let validated = secured
            .request(Who::PracticeK, "POST", "/fhir/$validate")
            .header("content-type", "application/fhir+json")
            .body(provenance.to_string())
            .send()
            .await
            .expect("validate");
        assert_eq!(validated.status(), 200);
        let outcome = json_body(validated).await;
        let problems: Vec<&Value> = outcome["issue"]
            .as_array()
            .expect("issues")
            .iter()
            .filter(|i| matches!(i["severity"].as_str(), Some("error" | "fatal" | "warning")))
            .collect();
        assert!(problems.is_empty(), "{provenance}\n{outcome}");
    }

    // Whoever may read the target: a client with Task scopes only reads the Task's.
    let narrow = provenance_of(&secured, Who::NarrowScope, &format!("Task/{task}")).await;
    assert_eq!(narrow.len(), 4);
    // Another practice: not there at all (404, an empty search), not forbidden.
    let (status, _) = get(&secured, Who::PracticeY, &format!("/fhir/Provenance/{id}")).await;
    assert_eq!(status, 404);
    let (status, _) = get(
        &secured,
        Who::PracticeY,
        &format!("/fhir/Provenance/{id}/_history/1"),
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        provenance_of(&secured, Who::PracticeY, &format!("Task/{task}"))
            .await
            .is_empty()
    );
    let (_, everything) = get(&secured, Who::PracticeY, "/fhir/Provenance?_total=accurate").await;
    assert_eq!(everything["total"], 0, "{everything}");

    // _revinclude brings a referral's Provenance with it.
    let (status, bundle) = get(
        &secured,
        Who::PracticeK,
        &format!("/fhir/ServiceRequest?_id={referral}&_revinclude=Provenance:target"),
    )
    .await;
    assert_eq!(status, 200, "{bundle}");
    let included: Vec<Value> = resources(&bundle)
        .into_iter()
        .filter(|r| r["resourceType"] == "Provenance")
        .collect();
    assert_eq!(included.len(), 1, "{bundle}");
    assert_eq!(included[0]["id"], created["id"]);

    // Sprig alone writes Provenance.
    let written = secured
        .request(Who::PracticeK, "POST", "/fhir/Provenance")
        .header("content-type", "application/fhir+json")
        .body(created.to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(written.status(), 405);
    // Referral, Task (4 versions), Observation: one Provenance each, no more.
    assert_eq!(
        secured.app.assert_every_version_has_its_provenance().await,
        6
    );
    secured.app.stop().await;
}

/// The audit rows' status, client id and ignored-header flag, oldest first.
async fn audit_rows(secured: &Secured) -> Vec<(i64, Option<String>, i64)> {
    sqlx::query_as(
        "SELECT status, client_id, ignored_end_user_header FROM audit_events ORDER BY seq",
    )
    .fetch_all(&secured.app.db_pool().await)
    .await
    .expect("audit rows")
}

#[tokio::test]
async fn an_ignored_end_user_organisation_is_on_record() {
    let secured = secured().await;
    let before = audit_rows(&secured).await.len();
    for who in [Who::UntrustedHeader, Who::PracticeY, Who::ProxyForK] {
        let (status, _) = get(&secured, who, "/fhir/Task").await;
        assert_eq!(status, 200, "{who:?}");
    }
    let rows = audit_rows(&secured).await;
    let flags: Vec<(Option<&str>, i64)> = rows[before..]
        .iter()
        .map(|(_, client, ignored)| (client.as_deref(), *ignored))
        .collect();
    assert_eq!(
        flags,
        [(Some("gp-y"), 1), (Some("gp-y"), 0), (Some("proxy"), 0)]
    );
    // The AuditEvent says so too.
    let (_, events) = get(&secured, Who::Administrator, "/fhir/AuditEvent?agent=gp-y").await;
    let said: Vec<bool> = resources(&events)
        .iter()
        .map(|event| event.to_string().contains("NHSD-End-User-Organisation"))
        .collect();
    assert_eq!(said, [true, false], "{events}");
    secured.app.stop().await;
}

#[tokio::test]
async fn every_401_and_429_the_authentication_layer_answers_has_its_audit_row() {
    let secured = secured_with(|settings| {
        settings.auth.rate_limit_per_minute = 6;
        settings.auth.rate_limit_burst = 3;
    })
    .await;
    let before = audit_rows(&secured).await.len();
    let mut sent = Vec::new();
    for who in [
        Who::Nobody,
        Who::Expired,
        Who::OtherAudience,
        Who::Forged,
        Who::AlgNone,
        Who::Disabled,
    ] {
        for path in ["/fhir/Task", "/api/referrals"] {
            let status = secured
                .request(who, "GET", path)
                .send()
                .await
                .expect("request")
                .status()
                .as_u16();
            assert_eq!(status, 401, "{who:?} {path}");
            sent.push(status);
        }
    }
    for _ in 0..5 {
        let status = secured
            .request(Who::PracticeK, "GET", "/fhir/Task")
            .send()
            .await
            .expect("request")
            .status()
            .as_u16();
        sent.push(status);
    }
    assert_eq!(sent.iter().filter(|s| **s == 429).count(), 2, "{sent:?}");

    let rows = &audit_rows(&secured).await[before..];
    let statuses: Vec<u16> = rows.iter().map(|(s, _, _)| *s as u16).collect();
    assert_eq!(statuses, sent, "one row per refusal, in order");
    for (status, client, _) in rows {
        match status {
            401 => assert_eq!(client.as_deref(), Some("unauthenticated")),
            // Over the limit, the caller is known: the row names it.
            _ => assert_eq!(client.as_deref(), Some("gp-k"), "{status}"),
        }
    }
    secured.app.stop().await;
}
