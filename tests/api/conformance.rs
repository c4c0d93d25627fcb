//! The conformance runner (`sprig::conformance`) end to end: the gateway suite against a
//! freshly started Sprig (how CI proves the gateway's contract), the runner against
//! wiremock for the GP receiver suite and the edge cases a real server will not produce,
//! the public sample TestScripts with their expected results, and `sprig conformance
//! run` as a binary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use sprig::conformance::report::{junit, test_report};
use sprig::conformance::{Runner, RunnerOptions, ScriptRun, Status, Verdict, script, suite_files};
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::spawn_app;

fn root(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn runner(target: &str, variables: &[(&str, &str)]) -> Runner {
    Runner::new(RunnerOptions {
        target: reqwest::Url::parse(target).expect("target URL"),
        variables: variables
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>(),
        timeout: Duration::from_secs(30),
    })
    .expect("runner")
}

/// Loads and runs every script of `suite` (a folder or a file).
async fn run_suite(runner: &Runner, suite: &Path) -> Vec<ScriptRun> {
    let mut runs = Vec::new();
    for file in suite_files(suite).expect("suite files") {
        runs.push(match script::load(&file) {
            Ok(script) => runner.run(&script).await,
            Err(error) => ScriptRun::rejected(&error),
        });
    }
    runs
}

fn failures(runs: &[ScriptRun]) -> String {
    sprig::conformance::report::summary(runs)
}

#[tokio::test]
async fn the_gateway_suite_passes_against_a_fresh_sprig_and_again_on_the_same_data() {
    let app = spawn_app().await;
    let runner = runner(&app.url("/fhir"), &[]);
    for round in ["first run", "second run, same database"] {
        let runs = run_suite(&runner, &root("conformance/gateway")).await;
        assert_eq!(runs.len(), 8, "every gateway script runs");
        assert!(
            runs.iter().all(|r| r.status() == Status::Passed),
            "{round}:\n{}",
            failures(&runs)
        );
        let asserts = runs
            .iter()
            .flat_map(|r| r.actions())
            .filter(|a| a.is_assert)
            .count();
        assert!(
            asserts > 100,
            "{round}: the suite checks things ({asserts} asserts)"
        );
    }
    // The reports are valid FHIR TestReports.
    let validator = sprig::conformance::load_validator().expect("validator");
    let runs = run_suite(
        &runner,
        &root("conformance/gateway/01-capability-statement.json"),
    )
    .await;
    let report = test_report(&runs[0], &app.url("/fhir"));
    let issues = validator.validate_resource(&report, None, None);
    assert!(
        !issues.iter().any(|i| i.severity.is_error()),
        "{report:#}\n{issues:#?}"
    );
    assert_eq!(report["result"], "pass");
}

#[tokio::test]
async fn the_gateway_suite_fails_against_a_server_that_does_not_keep_the_contract() {
    // Everything answers 200 with an empty OperationOutcome: the suite must notice.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"resourceType": "OperationOutcome"})),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"resourceType": "OperationOutcome"})),
        )
        .mount(&server)
        .await;
    let runner = runner(&format!("{}/fhir", server.uri()), &[]);
    let runs = run_suite(&runner, &root("conformance/gateway")).await;
    for run in &runs {
        assert_eq!(
            run.status(),
            Status::Failed,
            "{}",
            failures(std::slice::from_ref(run))
        );
    }
}
