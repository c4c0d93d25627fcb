//! Search (`GET /fhir/{type}`, `POST /fhir/{type}/_search`) and instance
//! history (`GET /fhir/{type}/{id}/_history`), over real HTTP.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use sprig::fhir::{FhirId, ResourceType};
use sprig::store::NewResource;

use crate::helpers::{
    TestApp, issues, json_body, message_ids, sample_referral, spawn_app, spawn_app_with,
};

const REFERRAL_SYSTEM: &str = "https://gp-system.example.org/Id/referral";

/// Creates the sample referral with identifier `value` (and `status`),
/// returning its id and `meta.lastUpdated`.
async fn create_referral(app: &TestApp, value: &str, status: &str) -> (String, String) {
    let mut referral = sample_referral();
    referral["identifier"][0]["value"] = json!(value);
    referral["status"] = json!(status);
    let response = app.post_referral(referral.to_string()).await;
    assert_eq!(response.status(), 201);
    let created = json_body(response).await;
    // Distinct lastUpdated values (millisecond precision) keep orders exact.
    tokio::time::sleep(Duration::from_millis(3)).await;
    (
        created["id"].as_str().expect("id").to_owned(),
        created["meta"]["lastUpdated"]
            .as_str()
            .expect("lastUpdated")
            .to_owned(),
    )
}

/// `GET path`, asserting 200 and a Bundle.
async fn bundle(app: &TestApp, path: &str) -> Value {
    let response = app.get(path).await;
    let status = response.status();
    let body = json_body(response).await;
    assert_eq!(status, 200, "{path}: {body}");
    assert_eq!(body["resourceType"], "Bundle", "{path}");
    body
}

/// The ids of a Bundle's matches, in order.
fn ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| e["resource"]["id"].as_str().expect("id").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

/// GETs `path` with `Prefer: handling=strict` (unknown parameters refused).
async fn get_strict(app: &crate::helpers::TestApp, path: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .header("prefer", "handling=strict")
        .send()
        .await
        .expect("sent")
}

/// A link's URL; one on the test server (absolute, from the request's `Host`)
/// as a path, to request and compare as the paths the tests write.
fn link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)
        .and_then(|l| l["url"].as_str())
        .map(on_test_server)
}

fn on_test_server(url: &str) -> String {
    url.strip_prefix("http://127.0.0.1:")
        .and_then(|rest| rest.find('/').map(|slash| rest[slash..].to_owned()))
        .unwrap_or_else(|| url.to_owned())
}

fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[tokio::test]
async fn identifier_search_in_every_token_form() {
    let app = spawn_app().await;
    let (a, _) = create_referral(&app, "REF-A", "active").await;
    let (b, _) = create_referral(&app, "REF-B", "active").await;
    let (c, _) = create_referral(&app, "REF-C", "active").await;

    let found = bundle(
        &app,
        &format!(
            "/fhir/ServiceRequest?identifier={}",
            encode(&format!("{REFERRAL_SYSTEM}|REF-A"))
        ),
    )
    .await;
    assert_eq!(found["type"], "searchset");
    assert_eq!(found["total"], 1);
    assert_eq!(ids(&found), vec![a.clone()]);
    let entry = &found["entry"][0];
    assert_eq!(
        entry["fullUrl"],
        app.url(&format!("/fhir/ServiceRequest/{a}"))
    );
    assert_eq!(entry["search"]["mode"], "match");
    assert_eq!(entry["resource"]["identifier"][0]["value"], "REF-A");
    assert_eq!(
        link(&found, "self").as_deref(),
        Some(
            format!(
                "/fhir/ServiceRequest?identifier={}&_count=50",
                encode(&format!("{REFERRAL_SYSTEM}|REF-A"))
            )
            .as_str()
        )
    );
    assert_eq!(link(&found, "next"), None);

    let search = |query: &str| {
        let app = &app;
        let path = format!("/fhir/ServiceRequest?{query}");
        async move { sorted(ids(&bundle(app, &path).await)) }
    };
    // The code alone, in any system.
    assert_eq!(search("identifier=REF-B").await, vec![b.clone()]);
    // `|code`: no system, and these identifiers have one.
    assert!(search("identifier=%7CREF-B").await.is_empty());
    // `system|`: every identifier of that system.
    assert_eq!(
        search(&format!(
            "identifier={}",
            encode(&format!("{REFERRAL_SYSTEM}|"))
        ))
        .await,
        sorted(vec![a.clone(), b.clone(), c.clone()])
    );
    assert!(
        search("identifier=https://other.example/Id%7CREF-A")
            .await
            .is_empty()
    );
    // Commas are OR, repeats are AND.
    assert_eq!(
        search("identifier=REF-A,REF-C").await,
        sorted(vec![a.clone(), c.clone()])
    );
    assert!(search("identifier=REF-A&identifier=REF-C").await.is_empty());
    assert_eq!(search(&format!("_id={b}")).await, vec![b.clone()]);
    assert_eq!(search(&format!("_id={b}&identifier=REF-B")).await, vec![b]);
    assert_eq!(
        search("code=http://snomed.info/sct%7C871731000000106")
            .await
            .len(),
        3
    );
}

#[tokio::test]
async fn status_search_and_paging_defaults() {
    let app = spawn_app().await;
    let (active, _) = create_referral(&app, "REF-1", "active").await;
    let (on_hold, _) = create_referral(&app, "REF-2", "on-hold").await;

    let search = |query: &str| {
        let app = &app;
        let path = format!("/fhir/ServiceRequest?{query}");
        async move { ids(&bundle(app, &path).await) }
    };
    assert_eq!(search("status=active").await, vec![active.clone()]);
    assert_eq!(search("status=on-hold").await, vec![on_hold.clone()]);
    assert!(search("status=revoked").await.is_empty());
    // No criteria: everything, newest first.
    assert_eq!(search("").await, vec![on_hold.clone(), active.clone()]);
    assert_eq!(
        search("_sort=_lastUpdated").await,
        vec![active.clone(), on_hold.clone()]
    );

    // A deleted referral is no longer found.
    app.store
        .delete(
            ResourceType::SERVICE_REQUEST,
            &FhirId::parse(&active).expect("id"),
            "test",
        )
        .await
        .expect("deleted");
    assert!(search("status=active").await.is_empty());
    assert!(search(&format!("_id={active}")).await.is_empty());
    assert_eq!(search("").await, vec![on_hold]);
}

#[tokio::test]
async fn last_updated_with_every_prefix() {
    let app = spawn_app().await;
    let (first, t1) = create_referral(&app, "REF-1", "active").await;
    let (second, t2) = create_referral(&app, "REF-2", "active").await;
    let (third, t3) = create_referral(&app, "REF-3", "active").await;
    assert!(t1 < t2 && t2 < t3, "{t1} {t2} {t3}");

    let search = |query: String| {
        let app = &app;
        async move {
            sorted(ids(
                &bundle(app, &format!("/fhir/ServiceRequest?{query}")).await
            ))
        }
    };
    let all = sorted(vec![first.clone(), second.clone(), third.clone()]);
    let at = |prefix: &str, t: &str| format!("_lastUpdated={prefix}{}", encode(t));
    assert_eq!(search(at("", &t2)).await, vec![second.clone()]);
    assert_eq!(search(at("eq", &t2)).await, vec![second.clone()]);
    assert_eq!(
        search(at("ne", &t2)).await,
        sorted(vec![first.clone(), third.clone()])
    );
    assert_eq!(search(at("gt", &t2)).await, vec![third.clone()]);
    assert_eq!(
        search(at("ge", &t2)).await,
        sorted(vec![second.clone(), third.clone()])
    );
    assert_eq!(search(at("lt", &t2)).await, vec![first.clone()]);
    assert_eq!(
        search(at("le", &t2)).await,
        sorted(vec![first.clone(), second.clone()])
    );
    assert_eq!(search(at("sa", &t2)).await, vec![third.clone()]);
    assert_eq!(search(at("eb", &t2)).await, vec![first.clone()]);
    // A range by repeating the parameter (AND).
    assert_eq!(
        search(format!("{}&{}", at("gt", &t1), at("lt", &t3))).await,
        vec![second.clone()]
    );
    // Day precision covers the whole day; the server writes UTC.
    let today = &t1[..10];
    assert_eq!(search(format!("_lastUpdated={today}")).await, all);
    assert_eq!(
        search(format!("_lastUpdated=gt{today}")).await,
        Vec::<String>::new()
    );
    assert_eq!(search(format!("_lastUpdated=ge{today}")).await, all);
    assert_eq!(
        search(format!("_lastUpdated=lt{}", &t1[..4])).await,
        Vec::<String>::new()
    );
    // A zone offset is honoured (an unencoded `+` arrives as a space).
    let in_paris = sprig::fhir::Instant::parse(&t2)
        .expect("instant")
        .as_offset_date_time()
        .to_offset(time::macros::offset!(+1));
    let in_paris = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}+01:00",
        in_paris.year(),
        u8::from(in_paris.month()),
        in_paris.day(),
        in_paris.hour(),
        in_paris.minute(),
        in_paris.second(),
        in_paris.millisecond()
    );
    assert_eq!(
        search(format!("_lastUpdated={}", in_paris.replace('+', "%2B"))).await,
        vec![second.clone()]
    );
    assert_eq!(
        search(format!("_lastUpdated={in_paris}")).await,
        vec![second]
    );
}

/// Follows `next` links from `first` to the end, returning every page.
async fn all_pages(app: &TestApp, first: &str) -> Vec<Value> {
    let mut pages = vec![bundle(app, first).await];
    while let Some(next) = pages.last().and_then(|p| link(p, "next")) {
        assert!(pages.len() < 20, "paging does not end");
        pages.push(bundle(app, &next).await);
    }
    pages
}

#[tokio::test]
async fn count_pages_through_every_match_once_in_order() {
    let app = spawn_app().await;
    let mut created = Vec::new();
    for n in 0..7 {
        created.push(create_referral(&app, &format!("REF-{n}"), "active").await.0);
    }

    // Without `_total`, a total only when the first page holds every match
    // (counting costs a read of every match): here it does not.
    let first = bundle(&app, "/fhir/ServiceRequest?status=active&_count=3").await;
    assert!(first.get("total").is_none(), "{first}");
    let whole = bundle(&app, "/fhir/ServiceRequest?status=active&_count=7").await;
    assert_eq!(
        whole["total"], 7,
        "the first page holds every match: {whole}"
    );
    let estimated = bundle(
        &app,
        "/fhir/ServiceRequest?status=active&_count=3&_total=estimate",
    )
    .await;
    assert_eq!(estimated["total"], 7, "{estimated}");

    let pages = all_pages(
        &app,
        "/fhir/ServiceRequest?status=active&_count=3&_total=accurate",
    )
    .await;
    let sizes: Vec<usize> = pages.iter().map(|p| ids(p).len()).collect();
    assert_eq!(sizes, vec![3, 3, 1]);
    for page in &pages {
        assert_eq!(page["total"], 7);
        let next = link(page, "next").unwrap_or_default();
        if !next.is_empty() {
            assert!(
                next.starts_with(
                    "/fhir/ServiceRequest?status=active&_total=accurate&_count=3&_cursor="
                ),
                "{next}"
            );
        }
    }
    let served: Vec<String> = pages.iter().flat_map(ids).collect();
    let mut newest_first = created.clone();
    newest_first.reverse();
    assert_eq!(served, newest_first, "newest first, each once");

    // Oldest first, and a referral created while paging is served once, at the end.
    let first = bundle(&app, "/fhir/ServiceRequest?_sort=_lastUpdated&_count=3").await;
    assert_eq!(ids(&first), created[..3].to_vec());
    let (late, _) = create_referral(&app, "REF-late", "active").await;
    let mut served = ids(&first);
    let mut next = link(&first, "next");
    while let Some(url) = next {
        let page = bundle(&app, &url).await;
        served.extend(ids(&page));
        next = link(&page, "next");
    }
    let mut expected = created.clone();
    expected.push(late.clone());
    assert_eq!(served, expected);
    let unique: HashSet<&String> = served.iter().collect();
    assert_eq!(unique.len(), served.len(), "no duplicates");

    // Newest first, the late one is before the cursor: never served.
    let pages = all_pages(&app, "/fhir/ServiceRequest?_count=4").await;
    let first_page = ids(&pages[0]);
    let (later, _) = create_referral(&app, "REF-later", "active").await;
    let rest: Vec<String> = all_pages(&app, &link(&pages[0], "next").expect("next"))
        .await
        .iter()
        .flat_map(ids)
        .collect();
    assert!(!rest.contains(&later));
    assert_eq!(first_page.len() + rest.len(), 8);
    assert!(first_page.iter().all(|id| !rest.contains(id)));

    // A _count above the maximum is reduced, and the links say so.
    let page = bundle(&app, "/fhir/ServiceRequest?_count=5000").await;
    assert!(
        link(&page, "self")
            .unwrap_or_default()
            .ends_with("_count=1000")
    );
}

#[tokio::test]
async fn total_none_and_count_zero() {
    let app = spawn_app().await;
    create_referral(&app, "REF-1", "active").await;
    create_referral(&app, "REF-2", "active").await;

    let page = bundle(&app, "/fhir/ServiceRequest?_total=none&_count=1").await;
    assert!(page.get("total").is_none(), "{page}");
    assert_eq!(ids(&page).len(), 1);
    assert!(link(&page, "next").is_some());

    let page = bundle(&app, "/fhir/ServiceRequest?_count=0").await;
    assert_eq!(page["total"], 2);
    assert!(page.get("entry").is_none(), "{page}");
    assert_eq!(link(&page, "next"), None);
}

#[tokio::test]
async fn bad_parameters_are_400_unless_lenient() {
    let app = spawn_app().await;
    let (id, _) = create_referral(&app, "REF-1", "active").await;

    let response = get_strict(&app, "/fhir/ServiceRequest?colour=red&identifier=REF-1").await;
    assert_eq!(response.status(), 400);
    let outcome = json_body(response).await;
    assert_eq!(message_ids(&outcome), vec!["search-param-unknown"]);
    let message = issues(&outcome)[0]["diagnostics"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("'colour'") && message.contains("identifier"),
        "{message}"
    );

    for (query, message_id) in [
        ("_lastUpdated=yesterday", "search-value-invalid"),
        ("status:not=active", "search-modifier-unsupported"),
        ("_count=many", "search-result-param-invalid"),
        ("_cursor=made-up", "search-cursor-invalid"),
        ("status=", "search-value-empty"),
    ] {
        let response = app.get(&format!("/fhir/ServiceRequest?{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
        assert_eq!(
            message_ids(&json_body(response).await),
            vec![message_id],
            "{query}"
        );
    }

    let response = app
        .client
        .get(app.url("/fhir/ServiceRequest?colour=red&identifier=REF-1"))
        .header("prefer", "handling=lenient")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["preference-applied"], "handling=lenient");
    let page = json_body(response).await;
    assert_eq!(ids(&page), vec![id]);
    assert_eq!(page["total"], 1);
    let outcomes: Vec<&Value> = page["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["search"]["mode"] == "outcome")
        .collect();
    assert_eq!(outcomes.len(), 1);
    let warning = &outcomes[0]["resource"];
    assert_eq!(warning["resourceType"], "OperationOutcome");
    assert_eq!(warning["issue"][0]["severity"], "warning");
    assert_eq!(message_ids(warning), vec!["search-param-unknown"]);
    // The ignored parameter is not repeated in the links.
    assert!(!link(&page, "self").unwrap_or_default().contains("colour"));

    // Types Sprig does not serve, and interactions it does not offer.
    assert_eq!(app.get("/fhir/Medication?code=1").await.status(), 404);
    assert_eq!(app.get("/fhir/Nonsense?x=1").await.status(), 404);
}

#[tokio::test]
async fn post_search_takes_a_form() {
    let app = spawn_app().await;
    let (a, _) = create_referral(&app, "REF-A", "active").await;
    create_referral(&app, "REF-B", "active").await;

    let response = app
        .client
        .post(app.url("/fhir/ServiceRequest/_search?_count=10"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "identifier={}",
            encode(&format!("{REFERRAL_SYSTEM}|REF-A"))
        ))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let page = json_body(response).await;
    assert_eq!(ids(&page), vec![a]);
    // The self link is the equivalent GET.
    let self_link = link(&page, "self").expect("self");
    assert!(
        self_link.starts_with("/fhir/ServiceRequest?identifier="),
        "{self_link}"
    );
    assert!(self_link.ends_with("&_count=10"), "{self_link}");
    assert_eq!(ids(&bundle(&app, &self_link).await), ids(&page));

    let response = app
        .client
        .post(app.url("/fhir/ServiceRequest/_search"))
        .header("content-type", "application/fhir+json")
        .body("{}")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 415);

    let response = app
        .client
        .post(app.url("/fhir/ServiceRequest/_search"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("prefer", "handling=strict")
        .body("colour=red")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn search_formats_and_absolute_links() {
    let app = spawn_app_with(|s| {
        s.public_base_url = Some("https://sprig.example.org/fhir".into());
    })
    .await;
    let (id, _) = create_referral(&app, "REF-1", "active").await;

    let response = app
        .get("/fhir/ServiceRequest?identifier=REF-1&_format=application/json&_count=1")
        .await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("application/json")
    );
    let page = json_body(response).await;
    assert_eq!(
        page["entry"][0]["fullUrl"],
        format!("https://sprig.example.org/fhir/ServiceRequest/{id}")
    );
    let self_link = link(&page, "self").expect("self");
    assert!(
        self_link
            .starts_with("https://sprig.example.org/fhir/ServiceRequest?identifier=REF-1&_format="),
        "{self_link}"
    );

    let refused = app
        .client
        .get(app.url("/fhir/ServiceRequest"))
        .header("accept", "application/fhir+xml")
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status(), 406);
}

#[tokio::test]
async fn history_lists_every_version_newest_first() {
    let app = spawn_app().await;
    let (id, created_at) = create_referral(&app, "REF-1", "active").await;

    let history = bundle(&app, &format!("/fhir/ServiceRequest/{id}/_history")).await;
    assert_eq!(history["type"], "history");
    assert_eq!(history["total"], 1);
    let entry = &history["entry"][0];
    assert_eq!(
        entry["fullUrl"],
        app.url(&format!("/fhir/ServiceRequest/{id}"))
    );
    assert_eq!(entry["resource"]["id"], id.as_str());
    assert_eq!(entry["resource"]["meta"]["versionId"], "1");
    assert_eq!(
        entry["request"],
        json!({"method": "POST", "url": "ServiceRequest"})
    );
    assert_eq!(entry["response"]["status"], "201 Created");
    assert_eq!(entry["response"]["etag"], "W/\"1\"");
    assert_eq!(entry["response"]["lastModified"], created_at.as_str());

    app.store
        .delete(
            ResourceType::SERVICE_REQUEST,
            &FhirId::parse(&id).expect("id"),
            "test",
        )
        .await
        .expect("deleted");
    let history = bundle(&app, &format!("/fhir/ServiceRequest/{id}/_history")).await;
    assert_eq!(history["total"], 2);
    let deletion = &history["entry"][0];
    assert!(deletion.get("resource").is_none(), "{deletion}");
    assert_eq!(
        deletion["request"],
        json!({"method": "DELETE", "url": format!("ServiceRequest/{id}")})
    );
    assert_eq!(deletion["response"]["etag"], "W/\"2\"");
    assert_eq!(history["entry"][1]["response"]["etag"], "W/\"1\"");

    // One version a page, following next.
    let pages = all_pages(
        &app,
        &format!("/fhir/ServiceRequest/{id}/_history?_count=1"),
    )
    .await;
    let etags: Vec<&str> = pages
        .iter()
        .map(|p| {
            p["entry"][0]["response"]["etag"]
                .as_str()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(etags, vec!["W/\"2\"", "W/\"1\""]);

    let unknown = app
        .get("/fhir/ServiceRequest/no-such-referral/_history")
        .await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        message_ids(&json_body(unknown).await),
        vec!["resource-not-found"]
    );
    let bad = app
        .get(&format!(
            "/fhir/ServiceRequest/{id}/_history?_since=2026-01-01"
        ))
        .await;
    assert_eq!(bad.status(), 400);
}

/// Stores `resource` as the store's callers do (Sprig writes Tasks and
/// Observations itself; there is no HTTP create for them).
async fn store(app: &TestApp, resource: Value) -> String {
    let resource_type =
        ResourceType::parse(resource["resourceType"].as_str().expect("type")).expect("type");
    let stored = app
        .store
        .create(NewResource {
            resource_type,
            resource,
            received: b"{}",
            request_id: "test",
            owner: None,
        })
        .await
        .expect("stored");
    tokio::time::sleep(Duration::from_millis(3)).await;
    stored.id.to_string()
}

fn example(name: &str) -> Value {
    let path = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("example")).expect("JSON")
}

#[tokio::test]
async fn tasks_by_referral_patient_status_and_modified() {
    let app = spawn_app().await;
    let mut accepted = example("task-accepted.json");
    accepted["basedOn"][0]["reference"] = json!("ServiceRequest/sr-1");
    let accepted = store(&app, accepted).await;
    let mut completed = example("task-completed.json");
    completed["basedOn"] = json!([{"reference": "ServiceRequest/sr-2"}]);
    completed["lastModified"] = json!("2027-03-01T09:00:00+00:00");
    let completed = store(&app, completed).await;

    let search = |query: &str| {
        let app = &app;
        let path = format!("/fhir/Task?{query}");
        async move { sorted(ids(&bundle(app, &path).await)) }
    };
    assert_eq!(
        search("based-on=ServiceRequest/sr-1").await,
        vec![accepted.clone()]
    );
    assert_eq!(search("based-on=sr-2").await, vec![completed.clone()]);
    assert_eq!(
        search("based-on:ServiceRequest=sr-2").await,
        vec![completed.clone()]
    );
    assert!(search("based-on=Task/sr-2").await.is_empty());
    assert_eq!(search("status=accepted").await, vec![accepted.clone()]);
    assert_eq!(
        search("business-status=https://sprig-gateway.org/fhir/CodeSystem/sprig-referral-stage%7Caccepted").await,
        vec![accepted.clone()]
    );
    let both = sorted(vec![accepted.clone(), completed.clone()]);
    let patient = example("task-accepted.json")["for"]["reference"]
        .as_str()
        .expect("for")
        .to_owned();
    assert_eq!(search(&format!("patient={patient}")).await, both);
    assert_eq!(search(&format!("subject={patient}")).await, both);
    assert_eq!(search("modified=2026-11-21").await, vec![accepted.clone()]);
    assert_eq!(search("modified=gt2026-12").await, vec![completed.clone()]);
    assert_eq!(search("modified=ge2026-11-21T11:15:00Z").await, both);
    assert_eq!(search("_lastUpdated=gt2000").await, both);
    // Task is searched with its own parameters.
    assert_eq!(
        get_strict(&app, "/fhir/Task?authored=2026").await.status(),
        400
    );
    // ...and Sprig writes Tasks itself: no HTTP create.
    assert_eq!(
        app.client
            .post(app.url("/fhir/Task"))
            .header("content-type", "application/fhir+json")
            .body(example("task-accepted.json").to_string())
            .send()
            .await
            .expect("sent")
            .status(),
        405
    );
    let history = bundle(&app, &format!("/fhir/Task/{accepted}/_history")).await;
    assert_eq!(history["total"], 1);
}

#[tokio::test]
async fn observations_by_code_and_date() {
    let app = spawn_app().await;
    let ucla = store(&app, example("observation-ucla3.json")).await;
    let wemwbs = store(&app, example("observation-wemwbs.json")).await;

    let search = |query: &str| {
        let app = &app;
        let path = format!("/fhir/Observation?{query}");
        async move { sorted(ids(&bundle(app, &path).await)) }
    };
    assert_eq!(
        search("code=https://sprig-gateway.org/fhir/CodeSystem/sprig-outcome-measure%7Cucla3")
            .await,
        vec![ucla.clone()]
    );
    assert_eq!(search("code=ucla3").await, vec![ucla.clone()]);
    let both = sorted(vec![ucla.clone(), wemwbs.clone()]);
    assert_eq!(
        search("based-on=ServiceRequest/019a4b2c-7d8e-7f90-a1b2-c3d4e5f6a7b8").await,
        both
    );
    assert_eq!(search("status=final").await, both);
    let ucla_date = &example("observation-ucla3.json")["effectiveDateTime"];
    let day = &ucla_date.as_str().expect("date")[..10];
    assert!(search(&format!("date={day}")).await.contains(&ucla));
    assert!(search("date=lt1990").await.is_empty());
}

#[tokio::test]
async fn metadata_lists_the_search_parameters_that_work() {
    let app = spawn_app().await;
    let statement = metadata(&app).await;
    for resource in statement["rest"][0]["resource"]
        .as_array()
        .expect("resources")
    {
        let type_name = resource["type"].as_str().expect("type");
        // The audit log and the MessageDefinition have searches of their own
        // (tests/api/audit.rs, tests/api/bars.rs).
        if type_name == "AuditEvent" {
            continue;
        }
        if type_name == "MessageDefinition" {
            assert_eq!(
                get_strict(&app, "/fhir/MessageDefinition?not-listed=1")
                    .await
                    .status(),
                400
            );
            continue;
        }
        let params: Vec<&str> = resource["searchParam"]
            .as_array()
            .expect("searchParam")
            .iter()
            .map(|p| p["name"].as_str().expect("name"))
            .collect();
        assert!(params.starts_with(&["_id", "_lastUpdated"]), "{type_name}");
        // Every listed parameter is accepted by the search, and nothing else is.
        for param in &params {
            let value = match *param {
                "_lastUpdated" | "authored" | "modified" | "date" | "recorded" => "2026",
                "identifier" | "status" | "code" | "business-status" | "_id" => "x",
                // Every reference parameter, `patient` included.
                _ => "Patient/x",
            };
            let response = app.get(&format!("/fhir/{type_name}?{param}={value}")).await;
            assert_eq!(response.status(), 200, "{type_name}?{param}");
        }
        assert_eq!(
            get_strict(&app, &format!("/fhir/{type_name}?not-listed=1"))
                .await
                .status(),
            400
        );
    }
}

async fn metadata(app: &TestApp) -> Value {
    let response = app.get("/fhir/metadata").await;
    assert_eq!(response.status(), 200);
    json_body(response).await
}

#[tokio::test]
async fn searches_over_the_limits_are_400s_that_name_the_limit() {
    let app = spawn_app().await;
    create_referral(&app, "REF-LIMITS-1", "active").await;

    // 200 repeats of one parameter: refused at once, never a long query.
    let repeated = vec!["status=active"; 200].join("&");
    let started = std::time::Instant::now();
    let response = app.get(&format!("/fhir/ServiceRequest?{repeated}")).await;
    assert_eq!(response.status(), 400);
    assert!(started.elapsed() < Duration::from_secs(2));
    let outcome = json_body(response).await;
    assert_eq!(message_ids(&outcome), vec!["search-param-too-many-repeats"]);
    let text = issues(&outcome)[0]["diagnostics"].to_string();
    assert!(text.contains("at most 10"), "{text}");

    // 1,000 comma-separated values, in a GET and in a _search body.
    let values = (0..1000)
        .map(|n| format!("v{n}"))
        .collect::<Vec<_>>()
        .join(",");
    let response = app
        .get(&format!("/fhir/ServiceRequest?status={values}"))
        .await;
    assert_eq!(response.status(), 400);
    let outcome = json_body(response).await;
    assert_eq!(message_ids(&outcome), vec!["search-too-many-values"]);
    assert!(
        issues(&outcome)[0]["diagnostics"]
            .to_string()
            .contains("at most 100")
    );
    let response = app
        .client
        .post(app.url("/fhir/ServiceRequest/_search"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("prefer", "handling=lenient")
        .body(format!("status={values}"))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 400, "a limit is not waived by leniency");

    // Within the limits, repeats and values are answered (and asked once).
    let ten = ["status=active,active"; 10].join("&");
    let bundle = bundle(&app, &format!("/fhir/ServiceRequest?{ten}")).await;
    assert_eq!(bundle["total"], 1);
}

/// The outcome entry's issue codes of a searchset.
fn outcome_codes(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "outcome")
        .flat_map(|e| message_ids(&e["resource"]))
        .collect()
}

#[tokio::test]
async fn totals_are_exact_estimated_within_their_bound_or_not_counted() {
    let app = spawn_app().await;
    let mut created = Vec::new();
    for n in 0..5 {
        created.push(create_referral(&app, &format!("TOT-{n}"), "active").await.0);
    }

    // `_count=0` asks for nothing but the total: exact by default.
    let only = bundle(&app, "/fhir/ServiceRequest?status=active&_count=0").await;
    assert_eq!(only["total"], 5, "{only}");
    assert!(outcome_codes(&only).is_empty(), "{only}");
    let accurate = bundle(
        &app,
        "/fhir/ServiceRequest?status=active&_count=2&_total=accurate",
    )
    .await;
    assert_eq!(
        (accurate["total"].clone(), ids(&accurate).len()),
        (json!(5), 2)
    );
    // A status has one value per referral: its estimate is exact, and said to be an estimate.
    let estimate = bundle(
        &app,
        "/fhir/ServiceRequest?status=active&_count=2&_total=estimate",
    )
    .await;
    assert_eq!(estimate["total"], 5, "{estimate}");
    assert_eq!(
        outcome_codes(&estimate),
        ["search-total-estimated"],
        "{estimate}"
    );
    let none = bundle(
        &app,
        "/fhir/ServiceRequest?status=active&_count=2&_total=none",
    )
    .await;
    assert!(none.get("total").is_none(), "{none}");
    // A lookup, and a search on two parameters, are counted exactly even when an
    // estimate is asked for (nothing cheaper is true).
    let lookup = bundle(
        &app,
        &format!("/fhir/ServiceRequest?identifier={REFERRAL_SYSTEM}|TOT-3&_total=estimate"),
    )
    .await;
    assert_eq!(lookup["total"], 1, "{lookup}");
    assert!(outcome_codes(&lookup).is_empty(), "{lookup}");
    let two = bundle(
        &app,
        "/fhir/ServiceRequest?status=active&code=871731000000106&_count=1&_total=estimate",
    )
    .await;
    assert_eq!(two["total"], 5, "{two}");
    assert!(outcome_codes(&two).is_empty(), "{two}");

    // One referral holds the code twice (under a second system, as a coding of a local
    // code system could): the exact count counts it once, the estimate once per value,
    // which is its stated bound (never fewer; more by the extra values only).
    let pool = app.db_pool().await;
    sqlx::query(
        "INSERT INTO search_tokens (resource_type, id, param, system, code) \
         VALUES ('ServiceRequest', $1, 'code', 'https://example.org/local', '871731000000106')",
    )
    .bind(&created[0])
    .execute(&pool)
    .await
    .expect("a second value");
    let code = "/fhir/ServiceRequest?code=871731000000106&_count=1";
    let exact = bundle(&app, &format!("{code}&_total=accurate")).await;
    assert_eq!(exact["total"], 5, "{exact}");
    let only = bundle(&app, "/fhir/ServiceRequest?code=871731000000106&_count=0").await;
    assert_eq!(only["total"], 5, "{only}");
    let estimate = bundle(&app, &format!("{code}&_total=estimate")).await;
    assert_eq!(estimate["total"], 6, "{estimate}");
    pool.close().await;

    // A `_total` FHIR does not define: 400, saying what it may be.
    for bad in ["all", "exact", ""] {
        let response = app
            .get(&format!("/fhir/ServiceRequest?status=active&_total={bad}"))
            .await;
        assert_eq!(response.status(), 400, "_total={bad}");
        let outcome = json_body(response).await;
        let text = issues(&outcome)[0]["diagnostics"].to_string();
        assert!(
            text.contains("none, estimate or accurate"),
            "_total={bad}: {outcome}"
        );
    }
}
