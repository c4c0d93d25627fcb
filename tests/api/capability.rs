//! The CapabilityStatement tells the truth: everything it lists works, and
//! nothing it leaves out is served.

use serde_json::{Value, json};
use sprig::fhir::ResourceType;
use sprig::validation::schema::SchemaPass;
use sprig::validation::{Target, ValidationPass};

use crate::helpers::{json_body, sample_referral_text, spawn_app};

#[tokio::test]
async fn metadata_lists_exactly_what_is_served() {
    let app = spawn_app().await;
    let response = app.get("/fhir/metadata").await;
    assert_eq!(response.status(), 200);
    let statement = json_body(response).await;
    assert_eq!(statement["resourceType"], "CapabilityStatement");
    assert_eq!(statement["fhirVersion"], "4.0.1");
    assert_eq!(statement["kind"], "instance");
    assert_eq!(statement["software"]["version"], env!("CARGO_PKG_VERSION"));

    // The statement itself is valid R4.
    let schema = SchemaPass::load(&[]).expect("schema");
    let target = Target {
        resource_type: ResourceType::parse("CapabilityStatement").expect("type"),
        profiles: &[],
    };
    let problems = schema.check(&target, &statement);
    assert!(problems.is_empty(), "{problems:?}");

    let resources = statement["rest"][0]["resource"]
        .as_array()
        .expect("resources");
    let listed: Vec<&str> = resources
        .iter()
        .filter_map(|r| r["type"].as_str())
        .collect();
    assert_eq!(
        listed,
        vec![
            "ServiceRequest",
            "Task",
            "Observation",
            "Patient",
            "Organization",
            "Practitioner",
            "PractitionerRole",
            "Consent",
            "Condition",
            "QuestionnaireResponse",
            "Provenance",
            "AuditEvent",
            "MessageDefinition"
        ]
    );
    // Sprig's one MessageDefinition, read and searched; and the messaging
    // entry naming it.
    let definition = resources.last().expect("MessageDefinition");
    assert_eq!(
        definition["interaction"],
        json!([{"code": "read"}, {"code": "search-type"}])
    );
    assert_eq!(
        statement["messaging"][0]["supportedMessage"],
        json!([{"mode": "receiver", "definition": "https://sprig-gateway.org/fhir/MessageDefinition/sprig-servicerequest-request"}])
    );
    // The audit log: read and searched, by administrators, never written.
    let audit = &resources[resources.len() - 2];
    assert_eq!(
        audit["interaction"],
        json!([{"code": "read"}, {"code": "search-type"}])
    );
    let audit_params: Vec<&str> = audit["searchParam"]
        .as_array()
        .expect("searchParam")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(
        audit_params,
        [
            "date", "agent", "entity", "patient", "type", "subtype", "outcome"
        ]
    );
    let audit_index = resources.len() - 2;
    let resources = &resources[..audit_index];
    // The profile a ServiceRequest without meta.profile is held to.
    assert_eq!(
        resources[0]["profile"],
        "https://sprig-gateway.org/fhir/StructureDefinition/sprig-referral"
    );
    let interactions: Vec<&str> = resources[0]["interaction"]
        .as_array()
        .expect("interactions")
        .iter()
        .filter_map(|i| i["code"].as_str())
        .collect();
    assert_eq!(
        interactions,
        vec![
            "create",
            "read",
            "vread",
            "search-type",
            "history-instance",
            "update"
        ]
    );
    assert_eq!(resources[0]["conditionalCreate"], true);
    assert_eq!(
        statement["rest"][0]["interaction"][0]["code"], "transaction",
        "POST /fhir takes referral transactions"
    );
    let operations: Vec<&str> = statement["rest"][0]["operation"]
        .as_array()
        .expect("operations")
        .iter()
        .filter_map(|o| o["name"].as_str())
        .collect();
    assert_eq!(operations, vec!["process-message", "validate"]);
    // Sprig writes Tasks, Observations and Provenance itself, and stores the resources
    // that come with a referral: clients read and search them.
    for resource in &resources[1..] {
        let interactions: Vec<&str> = resource["interaction"]
            .as_array()
            .expect("interactions")
            .iter()
            .filter_map(|i| i["code"].as_str())
            .collect();
        assert_eq!(
            interactions,
            vec!["read", "vread", "search-type", "history-instance"]
        );
    }
    // Conditional writes as a transaction takes them: `request.ifNoneExist`
    // and `PUT Type?identifier=…` for what comes with a referral; nothing
    // conditional for what Sprig writes itself.
    for resource in resources {
        let (create, update) = match resource["type"].as_str() {
            Some("ServiceRequest") => (true, false),
            Some("Task" | "Observation" | "Provenance") => (false, false),
            _ => (true, true),
        };
        assert_eq!(
            resource["conditionalCreate"], create,
            "{}",
            resource["type"]
        );
        assert_eq!(
            resource["conditionalUpdate"], update,
            "{}",
            resource["type"]
        );
    }
    // The search parameters, from the same table the search reads.
    let params = |i: usize| -> Vec<(String, String)> {
        resources[i]["searchParam"]
            .as_array()
            .expect("searchParam")
            .iter()
            .map(|p| {
                assert!(p["documentation"].as_str().is_some_and(|d| !d.is_empty()));
                (
                    p["name"].as_str().expect("name").to_owned(),
                    p["type"].as_str().expect("type").to_owned(),
                )
            })
            .collect()
    };
    let named = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect()
    };
    assert_eq!(
        params(0),
        named(&[
            ("_id", "token"),
            ("_lastUpdated", "date"),
            ("identifier", "token"),
            ("status", "token"),
            ("subject", "reference"),
            ("patient", "reference"),
            ("requester", "reference"),
            ("authored", "date"),
            ("code", "token"),
        ])
    );
    let task_params: Vec<String> = params(1).into_iter().map(|(n, _)| n).collect();
    assert!(task_params.contains(&"based-on".to_owned()));
    assert!(task_params.contains(&"business-status".to_owned()));
    let observation_params: Vec<String> = params(2).into_iter().map(|(n, _)| n).collect();
    assert!(observation_params.contains(&"date".to_owned()));

    // Each listed interaction works...
    let created = app.post_referral(sample_referral_text()).await;
    assert_eq!(created.status(), 201);
    let id = json_body(created).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(
        app.get(&format!("/fhir/ServiceRequest/{id}"))
            .await
            .status(),
        200
    );
    assert_eq!(
        app.get(&format!("/fhir/ServiceRequest/{id}/_history/1"))
            .await
            .status(),
        200
    );
    assert_eq!(
        statement["rest"][0]["resource"][0]["conditionalRead"],
        "not-match"
    );
    let search = app.get("/fhir/ServiceRequest").await;
    assert_eq!(search.status(), 200);
    assert_eq!(json_body(search).await["total"], 1);
    let history = app
        .get(&format!("/fhir/ServiceRequest/{id}/_history"))
        .await;
    assert_eq!(history.status(), 200);
    assert_eq!(json_body(history).await["type"], "history");
    // The referral's Task exists from the start; no outcome yet.
    for (type_name, total) in [("Task", 1), ("Observation", 0)] {
        let search = app.get(&format!("/fhir/{type_name}")).await;
        assert_eq!(search.status(), 200, "{type_name}");
        assert_eq!(json_body(search).await["total"], total, "{type_name}");
        assert_eq!(
            app.get(&format!("/fhir/{type_name}/{id}")).await.status(),
            404
        );
    }

    // ...and what is not listed is refused with an OperationOutcome.
    let refused = [
        ("PUT", format!("/fhir/ServiceRequest/{id}"), 428), // update needs If-Match
        ("PUT", format!("/fhir/Task/{id}"), 405),           // Sprig writes Tasks
        ("PUT", format!("/fhir/Patient/{id}"), 405),        // related: read-only
        ("DELETE", format!("/fhir/ServiceRequest/{id}"), 405), // delete
        ("GET", format!("/fhir/Medication/{id}"), 404),     // another type
        ("GET", "/fhir/Medication".to_owned(), 404),        // search on another type
        ("GET", format!("/fhir/Medication/{id}/_history"), 404), // history of another type
        ("POST", "/fhir/Task".to_owned(), 405),             // create where Sprig creates
        ("POST", "/fhir/Observation".to_owned(), 405),      // likewise
        ("POST", "/fhir/Patient".to_owned(), 405),          // only with a referral
        ("POST", "/fhir".to_owned(), 400),                  // a transaction, but not a Bundle
    ];
    for (method, path, status) in refused {
        let response = app
            .client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
                app.url(&path),
            )
            .header("content-type", "application/fhir+json")
            .body("{}")
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        let outcome: Value = json_body(response).await;
        assert_eq!(
            outcome["resourceType"], "OperationOutcome",
            "{method} {path}"
        );
    }
}

/// README's search table (`### Search`: one row per type, its parameters in backticks,
/// anything in parentheses a note) as type → parameter names.
fn readme_search_table() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let backticked = |text: &str| -> Vec<String> {
        text.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    // Notes in parentheses (`Task.for`, an element path) are not parameters.
    let without_notes = |text: &str| -> String {
        let mut kept = String::new();
        let mut depth = 0usize;
        for c in text.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                _ if depth == 0 => kept.push(c),
                _ => {}
            }
        }
        kept
    };
    readme
        .lines()
        .skip_while(|line| line.trim() != "### Search")
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .skip(2) // the header and its rule
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let (Some(kind), Some(params)) = (cells.get(1), cells.get(2)) else {
                panic!("README search table row without two cells: {row}");
            };
            // A row naming no type in backticks ("every type") is kept as written, to
            // show up in the comparison.
            let kind = backticked(kind)
                .into_iter()
                .next()
                .unwrap_or_else(|| (*kind).to_owned());
            (
                kind,
                backticked(&without_notes(params)).into_iter().collect(),
            )
        })
        .collect()
}

/// README's search table and the CapabilityStatement's `searchParam`s name the same types
/// and, for each, the same parameters, so neither can drift from the other (the statement
/// is made from the parameter table the search reads). Fails on a type or parameter either
/// lists and the other does not, as README's table did when it listed three types.
#[tokio::test]
async fn readme_search_table_is_the_capability_statements() {
    let app = spawn_app().await;
    let statement = json_body(app.get("/fhir/metadata").await).await;
    let served: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = statement
        ["rest"][0]["resource"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|resource| {
            let params = resource["searchParam"].as_array()?;
            Some((
                resource["type"].as_str().expect("type").to_owned(),
                params
                    .iter()
                    .map(|p| p["name"].as_str().expect("name").to_owned())
                    .collect(),
            ))
        })
        .collect();
    assert!(served.len() > 3, "{served:?}");
    let documented = readme_search_table();
    assert_eq!(
        documented, served,
        "README.md's search table (left) against GET /fhir/metadata (right)"
    );
}
