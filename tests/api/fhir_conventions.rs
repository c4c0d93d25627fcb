//! The FHIR conventions real clients rely on (issue 18 §3), over real HTTP: a
//! trailing slash is the same route; every URL an answer carries is absolute;
//! an update may name its version in `meta.versionId`; unknown search
//! parameters are ignored unless the client asks for strict handling, and
//! `_summary`, `_elements`, `_include`/`_revinclude` work; query parameters on
//! a create are a condition; type-level history is served.

use serde_json::{Value, json};

use crate::helpers::{
    TestApp, json_body, message_ids, sample_referral_text, spawn_app, spawn_app_with,
};

async fn create_referral(app: &TestApp) -> Value {
    let response = app.post_referral(sample_referral_text()).await;
    assert_eq!(response.status(), 201);
    json_body(response).await
}

fn transaction_bundle(value: &str) -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/referral-transaction-bundle.json"
    ))
    .unwrap();
    let mut bundle: Value = serde_json::from_str(&text).unwrap();
    bundle["entry"][0]["resource"]["identifier"][0]["value"] = json!(value);
    bundle
}

// 1. A trailing slash.

#[tokio::test]
async fn a_trailing_slash_is_the_same_route() {
    let app = spawn_app().await;
    let metadata = app.get("/fhir/metadata/").await;
    assert_eq!(metadata.status(), 200);
    assert_eq!(
        json_body(metadata).await["resourceType"],
        "CapabilityStatement"
    );

    let transaction = app
        .client
        .post(app.url("/fhir/"))
        .header("content-type", "application/fhir+json")
        .body(transaction_bundle("SLASH-TX-1").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(transaction.status(), 200);
    assert_eq!(json_body(transaction).await["type"], "transaction-response");

    let created = app
        .client
        .post(app.url("/fhir/ServiceRequest/"))
        .header("content-type", "application/fhir+json")
        .body(sample_referral_text())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = json_body(created).await["id"].as_str().unwrap().to_owned();

    let read = app.get(&format!("/fhir/ServiceRequest/{id}/")).await;
    assert_eq!(read.status(), 200);
    let search = app.get("/fhir/ServiceRequest/?_count=1").await;
    assert_eq!(search.status(), 200);
    assert_eq!(json_body(search).await["type"], "searchset");
    let history = app
        .get(&format!("/fhir/ServiceRequest/{id}/_history/"))
        .await;
    assert_eq!(history.status(), 200);
}

// 2. Absolute URLs.

#[tokio::test]
async fn without_public_base_url_every_url_is_absolute_from_the_host() {
    let app = spawn_app().await;
    let base = app.url("/fhir");
    let response = app.post_referral(sample_referral_text()).await;
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let created = json_body(response).await;
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        location,
        format!("{base}/ServiceRequest/{id}/_history/1"),
        "Location is absolute"
    );

    let page = json_body(app.get("/fhir/ServiceRequest?_count=1").await).await;
    for link in page["link"].as_array().unwrap() {
        let url = link["url"].as_str().unwrap();
        assert!(url.starts_with(&format!("{base}/ServiceRequest?")), "{url}");
    }
    assert_eq!(
        page["entry"][0]["fullUrl"],
        format!("{base}/ServiceRequest/{id}")
    );

    let history = json_body(
        app.get(&format!("/fhir/ServiceRequest/{id}/_history"))
            .await,
    )
    .await;
    assert!(
        history["link"][0]["url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{base}/ServiceRequest/{id}/_history?"))
    );
    assert_eq!(
        history["entry"][0]["fullUrl"],
        format!("{base}/ServiceRequest/{id}")
    );

    let answer = json_body(
        app.client
            .post(app.url("/fhir"))
            .header("content-type", "application/fhir+json")
            .body(transaction_bundle("ABS-TX-1").to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    for entry in answer["entry"].as_array().unwrap() {
        let full_url = entry["fullUrl"].as_str().unwrap();
        assert!(full_url.starts_with(&format!("{base}/")), "{full_url}");
    }
}

#[tokio::test]
async fn the_host_header_names_the_base_and_forwarded_headers_are_not_trusted() {
    let app = spawn_app().await;
    let page = json_body(
        app.client
            .get(app.url("/fhir/ServiceRequest"))
            .header("host", "sprig.example:8443")
            .header("x-forwarded-proto", "https")
            .header("forwarded", "proto=https;host=evil.example")
            .header("x-forwarded-host", "evil.example")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let url = page["link"][0]["url"].as_str().unwrap();
    assert!(
        url.starts_with("http://sprig.example:8443/fhir/ServiceRequest?"),
        "{url}"
    );

    let refused = app
        .client
        .get(app.url("/fhir/ServiceRequest"))
        .header("host", "evil.example/x?")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    assert_eq!(message_ids(&json_body(refused).await), ["host-required"]);
}

#[tokio::test]
async fn public_base_url_names_every_url_when_set() {
    let app = spawn_app_with(|s| {
        s.public_base_url = Some("https://sprig.example.org/fhir/".into());
    })
    .await;
    let response = app.post_referral(sample_referral_text()).await;
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let id = json_body(response).await["id"].as_str().unwrap().to_owned();
    assert_eq!(
        location,
        format!("https://sprig.example.org/fhir/ServiceRequest/{id}/_history/1")
    );
    let page = json_body(app.get("/fhir/ServiceRequest").await).await;
    assert_eq!(
        page["entry"][0]["fullUrl"],
        format!("https://sprig.example.org/fhir/ServiceRequest/{id}")
    );
    // A search by the absolute URL Sprig gave is a search by `Type/id`.
    let task = json_body(
        app.get(&format!(
            "/fhir/Task?based-on=https://sprig.example.org/fhir/ServiceRequest/{id}"
        ))
        .await,
    )
    .await;
    assert_eq!(task["total"], 1, "{task}");
}

#[tokio::test]
async fn a_message_reply_names_the_referral_by_absolute_urls() {
    let app = spawn_app().await;
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/referral-message-bundle.json"
    ))
    .unwrap();
    let reply = json_body(
        app.client
            .post(app.url("/fhir/$process-message"))
            .header("content-type", "application/fhir+json")
            .body(text)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let focus = reply["entry"][0]["resource"]["focus"].as_array().unwrap();
    assert_eq!(focus.len(), 2, "{reply}");
    for reference in focus {
        let url = reference["reference"].as_str().unwrap();
        assert!(url.starts_with(&app.url("/fhir/")), "{url}");
    }
}

// 3. Updates without If-Match.

async fn put(app: &TestApp, id: &str, body: &Value, if_match: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .put(app.url(&format!("/fhir/ServiceRequest/{id}")))
        .header("content-type", "application/fhir+json")
        .body(body.to_string());
    if let Some(tag) = if_match {
        request = request.header("if-match", tag);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn an_update_may_name_its_version_in_meta_version_id() {
    let app = spawn_app().await;
    let created = create_referral(&app).await;
    let id = created["id"].as_str().unwrap();

    // As fhirpy's save() sends it: the resource as read, no If-Match.
    let mut read = json_body(app.get(&format!("/fhir/ServiceRequest/{id}")).await).await;
    read["note"] = json!([{"text": "Prefers a morning call."}]);
    let updated = put(&app, id, &read, None).await;
    assert_eq!(updated.status(), 200);
    assert_eq!(updated.headers()["etag"], "W/\"2\"");

    // The same stale copy again: never a silent lost update.
    read["priority"] = json!("urgent");
    let stale = put(&app, id, &read, None).await;
    assert_eq!(stale.status(), 412);
    let outcome = json_body(stale).await;
    assert_eq!(message_ids(&outcome), ["version-conflict"]);
    let text = outcome["issue"][0]["details"]["text"].as_str().unwrap();
    assert!(text.contains("meta.versionId names version 1"), "{text}");

    // Neither If-Match nor meta.versionId: 428, saying both ways.
    let mut unversioned = read.clone();
    unversioned.as_object_mut().unwrap().remove("meta");
    let refused = put(&app, id, &unversioned, None).await;
    assert_eq!(refused.status(), 428);
    let text = json_body(refused).await["issue"][0]["details"]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(text.contains("meta.versionId"), "{text}");

    // If-Match wins over the body's version.
    let updated = put(&app, id, &read, Some("W/\"2\"")).await;
    assert_eq!(updated.status(), 200);
    assert_eq!(updated.headers()["etag"], "W/\"3\"");

    // The CapabilityStatement says exactly this.
    let cs = json_body(app.get("/fhir/metadata").await).await;
    let sr = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "ServiceRequest")
        .unwrap()
        .clone();
    assert_eq!(sr["versioning"], "versioned-update");
    assert_eq!(sr["conditionalUpdate"], false);
    let update = sr["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["code"] == "update")
        .unwrap();
    assert!(
        update["documentation"]
            .as_str()
            .unwrap()
            .contains("or else meta.versionId"),
        "{update}"
    );
}

#[tokio::test]
async fn with_update_requires_if_match_the_body_version_is_not_enough() {
    let app = spawn_app_with(|s| {
        s.fhir.update_requires = sprig::config::UpdateRequires::IfMatch;
    })
    .await;
    let created = create_referral(&app).await;
    let id = created["id"].as_str().unwrap();
    let read = json_body(app.get(&format!("/fhir/ServiceRequest/{id}")).await).await;
    let refused = put(&app, id, &read, None).await;
    assert_eq!(refused.status(), 428);
    let outcome = json_body(refused).await;
    assert_eq!(message_ids(&outcome), ["if-match-required"]);
    assert!(
        !outcome["issue"][0]["details"]["text"]
            .as_str()
            .unwrap()
            .contains("meta.versionId")
    );
    assert_eq!(put(&app, id, &read, Some("W/\"1\"")).await.status(), 200);
    let cs = json_body(app.get("/fhir/metadata").await).await;
    let text = cs.to_string();
    assert!(!text.contains("or else meta.versionId"));
}

/// A conditional update in a referral transaction (`PUT Patient?identifier=…`) whose
/// resource says what the one held says stores nothing: the second referral for the same
/// patient and practice leaves their Patient and Organization at version 1, and its
/// answer gives that version (`200 OK`, its ETag). Fails where every conditional update
/// stores a version (the Patient is at version 2).
#[tokio::test]
async fn a_conditional_update_that_changes_nothing_stores_nothing() {
    use crate::workflow::{Shape, post_fhir};
    let app = spawn_app().await;
    let template = Shape::Transaction.example().to_string();
    let mut answers = Vec::new();
    for referral in ["NOOP-1", "NOOP-2"] {
        let body: Value =
            serde_json::from_str(&template.replace("REF-2026-000456", referral)).unwrap();
        let answer = post_fhir(&app, "/fhir", &body, &[]).await;
        assert_eq!(answer.status(), 200);
        answers.push(json_body(answer).await);
    }
    for (search, location) in [
        (
            "/fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9912003888",
            "Patient/",
        ),
        (
            "/fhir/Organization?identifier=https://fhir.nhs.uk/Id/ods-organization-code|Y12345",
            "Organization/",
        ),
    ] {
        let found = json_body(app.get(search).await).await;
        let held = &found["entry"][0]["resource"];
        assert_eq!(held["meta"]["versionId"], "1", "{found}");
        let history = json_body(
            app.get(&format!(
                "/fhir/{location}{}/_history",
                held["id"].as_str().unwrap()
            ))
            .await,
        )
        .await;
        assert_eq!(
            history["entry"].as_array().map(Vec::len),
            Some(1),
            "{history}"
        );
        let response = answers[1]["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["response"])
            .find(|r| r["location"].as_str().unwrap_or("").starts_with(location))
            .unwrap();
        assert_eq!(response["status"], "200 OK", "{response}");
        assert_eq!(response["etag"], "W/\"1\"", "{response}");
        assert_eq!(response["lastModified"], held["meta"]["lastUpdated"]);
    }
}

// 4. Search: unknown parameters, _summary, _elements, _include, _revinclude.

#[tokio::test]
async fn unknown_parameters_are_ignored_and_reported_by_default() {
    let app = spawn_app().await;
    let created = create_referral(&app).await;
    let id = created["id"].as_str().unwrap();
    let page = json_body(
        app.get(&format!("/fhir/ServiceRequest?_id={id}&colour=red"))
            .await,
    )
    .await;
    assert_eq!(page["total"], 1, "{page}");
    let entries = page["entry"].as_array().unwrap();
    let outcome = entries
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .expect("an outcome entry");
    assert_eq!(message_ids(&outcome["resource"]), ["search-param-unknown"]);
    assert_eq!(outcome["resource"]["issue"][0]["severity"], "warning");
    let self_link = page["link"][0]["url"].as_str().unwrap();
    assert!(!self_link.contains("colour"), "{self_link}");

    // A bad value of a known parameter is still refused.
    assert_eq!(
        app.get("/fhir/ServiceRequest?_lastUpdated=yesterday")
            .await
            .status(),
        400
    );
}

#[tokio::test]
async fn summary_count_elements_and_includes() {
    let app = spawn_app().await;
    let created = create_referral(&app).await;
    let id = created["id"].as_str().unwrap();

    let count = json_body(
        app.get(&format!(
            "/fhir/ServiceRequest?_id={id}&_summary=count&_totalMethod=count"
        ))
        .await,
    )
    .await;
    assert_eq!(count["total"], 1, "{count}");
    assert!(count.get("entry").is_none(), "{count}");

    let subset = json_body(
        app.get(&format!("/fhir/ServiceRequest?_id={id}&_elements=note"))
            .await,
    )
    .await;
    let resource = &subset["entry"][0]["resource"];
    let names: Vec<&str> = resource
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for name in names {
        assert!(
            [
                "resourceType",
                "id",
                "meta",
                "status",
                "intent",
                "subject",
                "note"
            ]
            .contains(&name),
            "{name} kept"
        );
    }
    assert!(
        resource["meta"]["tag"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["code"] == "SUBSETTED")
    );

    // The Task that reports on the referral, and the referral from the Task.
    let with_task = json_body(
        app.get(&format!(
            "/fhir/ServiceRequest?_id={id}&_revinclude=Task:based-on"
        ))
        .await,
    )
    .await;
    let included: Vec<&Value> = with_task["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .collect();
    assert_eq!(included.len(), 1, "{with_task}");
    assert_eq!(included[0]["resource"]["resourceType"], "Task");
    assert!(
        included[0]["fullUrl"]
            .as_str()
            .unwrap()
            .starts_with(&app.url("/fhir/Task/"))
    );
    let task_id = included[0]["resource"]["id"].as_str().unwrap();
    let from_task = json_body(
        app.get(&format!("/fhir/Task?_id={task_id}&_include=Task:based-on"))
            .await,
    )
    .await;
    let referral = from_task["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["search"]["mode"] == "include")
        .expect("the referral included");
    assert_eq!(referral["resource"]["id"], id);

    // An include Sprig does not follow is ignored and reported, or refused when strict.
    let strict = app
        .client
        .get(app.url("/fhir/ServiceRequest?_include=ServiceRequest:performer"))
        .header("prefer", "handling=strict")
        .send()
        .await
        .unwrap();
    assert_eq!(strict.status(), 400);
    let text = json_body(strict).await.to_string();
    assert!(text.contains("ServiceRequest:subject"), "{text}");
}

// 5. Query parameters on a create.

#[tokio::test]
async fn search_parameters_on_a_create_are_its_condition() {
    let app = spawn_app().await;
    let first = create_referral(&app).await;
    let id = first["id"].as_str().unwrap();
    let post = |path: String, if_none_exist: Option<String>| {
        let mut request = app
            .client
            .post(app.url(&path))
            .header("content-type", "application/fhir+json")
            .body(sample_referral_text());
        if let Some(condition) = if_none_exist {
            request = request.header("if-none-exist", condition);
        }
        request.send()
    };
    let matched = post(format!("/fhir/ServiceRequest?_id={id}"), None)
        .await
        .unwrap();
    assert_eq!(matched.status(), 200, "the condition matched");
    assert_eq!(json_body(matched).await["id"], id);

    let ambiguous = post(
        format!("/fhir/ServiceRequest?_id={id}"),
        Some(format!("_id={id}")),
    )
    .await
    .unwrap();
    assert_eq!(ambiguous.status(), 400);
    assert_eq!(
        message_ids(&json_body(ambiguous).await),
        ["conditional-create-ambiguous"]
    );
    // `_format` alone is not a condition.
    let created = post("/fhir/ServiceRequest?_format=json".into(), None)
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
}
