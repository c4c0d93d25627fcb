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

/// The public sample scripts (copied into `tests/data/testscripts/`, see its README) run
/// against a fresh Sprig, with what each gives. Sprig is not the server they were written
/// for (they read Patients in XML), so most fail; the malformed ones are rejected, each
/// for the reason named.
#[tokio::test]
async fn the_public_sample_scripts_give_their_recorded_results() {
    use Status::{Failed, Rejected, Skipped};
    let expected: &[(&str, Status, &str)] = &[
        (
            "hl7-r4-spec/TestScript-testscript-example-history.json",
            Rejected,
            "references Patient/example, which is not a readable file",
        ),
        (
            "hl7-r4-spec/TestScript-testscript-example-multisystem.json",
            Failed,
            "406",
        ),
        (
            "hl7-r4-spec/TestScript-testscript-example-readtest.json",
            Failed,
            "406",
        ),
        (
            "hl7-r4-spec/TestScript-testscript-example-search.json",
            Rejected,
            "Patient/example",
        ),
        (
            "hl7-r4-spec/TestScript-testscript-example-update.json",
            Rejected,
            "Patient/example",
        ),
        (
            "hl7-r4-spec/TestScript-testscript-example.json",
            Rejected,
            "Patient/example",
        ),
        (
            "fhir-crucible/TestScripts/TestScript-us-mcode-profile-search-from-patient-subtest.json",
            Failed,
            "subtest",
        ),
        (
            "fhir-crucible/TestScripts/general_testscript.json",
            Failed,
            "XPath/JSONPath path",
        ),
        (
            "fhir-crucible/TestScripts/history_testscript.json",
            Failed,
            "XPath/JSONPath path",
        ),
        (
            "fhir-crucible/TestScripts/read_testscript.json",
            Failed,
            "406",
        ),
        (
            "fhir-crucible/TestScripts/search_testscript.json",
            Failed,
            "406",
        ),
        (
            "fhir-crucible/TestScripts/update_testscript.json",
            Skipped,
            "XPath/JSONPath path",
        ),
        (
            "fhir-crucible/spec/examples/TestScript-us-mcode-identify-cancer-patients-by-group.json",
            Failed,
            "404",
        ),
        (
            "fhir-crucible/spec/examples/TestScript-us-mcode-profile-search-comorbidities.json",
            Rejected,
            "not both (tst-1)",
        ),
        (
            "fhir-crucible/spec/examples/basic_testreport.json",
            Rejected,
            "its resourceType is \"TestReport\"",
        ),
        (
            "fhir-crucible/spec/examples/basic_testscript.json",
            Rejected,
            "fixtures/Patient/example.json, which is not a readable file",
        ),
        (
            "fhir-crucible/spec/examples/basic_testscript_profile.json",
            Rejected,
            "fixtures/Patient/example.json, which is not a readable file",
        ),
        (
            "fhir-crucible/spec/examples/invalid_json.json",
            Rejected,
            "not JSON",
        ),
        (
            "fhir-crucible/spec/examples/non_resource.json",
            Rejected,
            "not a TestScript",
        ),
        (
            "fhir-crucible/spec/examples/fixtures/basic_fixture_testscript.json",
            Rejected,
            "fixtures/Patient/example.json",
        ),
        (
            "fhir-crucible/spec/examples/testscript/TestScript-XA9eSGbRZR7Nrz2Gd.json",
            Rejected,
            "references Location/lyW5mPW2nf3DHC7h6",
        ),
        (
            "fhir-crucible/spec/examples/testscript/TestScript-fquA2atodHs6n3cYs.json",
            Rejected,
            "fixture[0].id is required",
        ),
        (
            "fhir-crucible/spec/examples/testscript/TestScript-sample-minimumId-reflexive.json",
            Rejected,
            "fixtures/Patient/example.json",
        ),
        (
            "fhir-crucible/spec/examples/testscript/TestScript-sample-minimumId-symmetric-expectFailure.json",
            Rejected,
            "fixtures/Patient/example_min.json",
        ),
        (
            "fhir-crucible/spec/examples/testscript/general_testscript_obs.json",
            Rejected,
            "fixtures/Observation/example.json",
        ),
        (
            "fhir-crucible/spec/examples/testscript/history_testscript_obs.json",
            Rejected,
            "fixtures/Observation/example.json",
        ),
        (
            "fhir-crucible/spec/examples/testscript/profile_validate_testscript.json",
            Rejected,
            "Patient/patient_example_uscore.json",
        ),
        (
            "fhir-crucible/spec/examples/testscript/read_testscript_obs.json",
            Failed,
            "406",
        ),
        (
            "fhir-crucible/spec/examples/testscript/search_testscript_autocreate.json",
            Rejected,
            "fixtures/Patient/example.json",
        ),
        (
            "fhir-crucible/spec/examples/testscript/search_testscript_obs.json",
            Rejected,
            "fixtures/Observation/example.json",
        ),
        (
            "fhir-crucible/spec/examples/testscript/testscript_dynamic_variable.json",
            Failed,
            "406",
        ),
        (
            "fhir-crucible/spec/examples/testscript/testscript_fhirpath_test.json",
            Failed,
            "entry.count(): expected greaterThan 5, found \"1\"",
        ),
        (
            "fhir-crucible/spec/examples/testscript/testscript_fixture_test.json",
            Rejected,
            "only files next to the script and #contained",
        ),
        (
            "fhir-crucible/spec/examples/testscript/update_testscript_autocreate.json",
            Rejected,
            "fixtures/Patient/example.json",
        ),
        (
            "fhir-crucible/spec/examples/testscript/update_testscript_obs.json",
            Rejected,
            "fixtures/Observation/example.json",
        ),
    ];
    let app = spawn_app().await;
    let runner = runner(&app.url("/fhir"), &[]);
    let data = root("tests/data/testscripts");
    let mut mismatches = Vec::new();
    for (file, status, evidence) in expected {
        let path = data.join(file);
        let run = match script::load(&path) {
            Ok(script) => runner.run(&script).await,
            Err(error) => ScriptRun::rejected(&error),
        };
        let summary = failures(std::slice::from_ref(&run));
        if run.status() != *status || !summary.contains(evidence) {
            mismatches.push(format!(
                "{file}: expected {status:?} with {evidence:?}, got:\n{summary}"
            ));
        }
        // Nothing unsupported passes silently: every skip says why.
        for action in run.actions() {
            if let Verdict::Skip(reason) = &action.verdict {
                assert!(!reason.is_empty(), "{file}: a skip without a reason");
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    // Every script copied is in the table.
    let mut listed = 0;
    for dir in [
        "hl7-r4-spec",
        "fhir-crucible/TestScripts",
        "fhir-crucible/spec/examples",
        "fhir-crucible/spec/examples/testscript",
    ] {
        listed += suite_files(&data.join(dir)).expect("folder").len();
    }
    // Two more are listed than a folder run finds: the TestReport (a folder run passes over
    // other FHIR resources) and the script in the fixtures folder.
    assert_eq!(listed + 2, expected.len());
}
