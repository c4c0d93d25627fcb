//! The CapabilityStatement tells the truth: everything it lists works, and
//! nothing it leaves out is served.

use serde_json::Value;
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
    assert_eq!(listed, vec!["ServiceRequest"]);
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
    assert_eq!(interactions, vec!["create", "read", "vread"]);

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

    // ...and what is not listed is refused with an OperationOutcome.
    let refused = [
        ("GET", "/fhir/ServiceRequest".to_owned(), 405), // search-type
        ("PUT", format!("/fhir/ServiceRequest/{id}"), 405), // update
        ("DELETE", format!("/fhir/ServiceRequest/{id}"), 405), // delete
        ("GET", format!("/fhir/ServiceRequest/{id}/_history"), 404), // history-instance
        ("GET", format!("/fhir/Patient/{id}"), 404),     // another type
        ("POST", "/fhir".to_owned(), 404),               // transaction (later issue)
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
