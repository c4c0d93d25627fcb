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
        bearer_token: None,
    })
    .expect("runner")
}

#[tokio::test]
async fn the_runner_sends_its_token_on_every_request() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&server)
        .await;
    let runner = Runner::new(RunnerOptions {
        target: reqwest::Url::parse(&format!("{}/fhir", server.uri())).expect("URL"),
        variables: HashMap::new(),
        timeout: Duration::from_secs(10),
        bearer_token: Some("a-test-token".into()),
    })
    .expect("runner");
    run_suite(
        &runner,
        &root("conformance/gateway/01-capability-statement.json"),
    )
    .await;
    let received = server.received_requests().await.expect("recorded");
    assert!(!received.is_empty(), "the script made requests");
    for request in &received {
        assert_eq!(
            request.headers.get("authorization").map(|v| v.as_bytes()),
            Some(&b"Bearer a-test-token"[..]),
            "{}",
            request.url
        );
    }
}

/// Loads and runs every script of `suite` (a folder or a file).
async fn run_suite(runner: &Runner, suite: &Path) -> Vec<ScriptRun> {
    let mut runs = Vec::new();
    for file in suite_files(suite).expect("suite files") {
        runs.push(runner.run_file(&file).await);
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
        let run = runner.run_file(&path).await;
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

/// A stand-in GP endpoint: accepts a Task or Observation that is valid FHIR (Sprig's
/// validator, base definitions), refuses anything else with 422. A conditional create
/// (`If-None-Exist`) whose condition an earlier create met answers 200, as FHIR says.
async fn gp_endpoint() -> MockServer {
    let server = MockServer::start().await;
    let validator = std::sync::Arc::new(sprig::conformance::load_validator().expect("validator"));
    let valid = {
        let validator = validator.clone();
        move |request: &wiremock::Request| {
            serde_json::from_slice::<Value>(&request.body).is_ok_and(|body| {
                !validator
                    .validate_resource(&body, None, None)
                    .iter()
                    .any(|i| i.severity.is_error())
            })
        }
    };
    // PUT Task/{id} and POST Observation, as Sprig's delivery sends them.
    let conditions_met = std::sync::Mutex::new(std::collections::HashSet::new());
    let accept = move |request: &wiremock::Request| {
        let condition = request
            .headers
            .get("if-none-exist")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let seen = match condition {
            Some(condition) => !conditions_met.lock().expect("lock").insert(condition),
            None => false,
        };
        ResponseTemplate::new(if seen { 200 } else { 201 })
            .insert_header("Location", "Task/1/_history/1")
    };
    Mock::given(header("content-type", "application/fhir+json"))
        .and(valid)
        .respond_with(accept)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(wiremock::matchers::any())
        .respond_with(
            ResponseTemplate::new(422)
                .set_body_json(json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid"}]}))
                .insert_header("content-type", "application/fhir+json"),
        )
        .with_priority(2)
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn the_gp_receiver_suite_passes_against_a_receiver_that_checks_what_it_gets() {
    let server = gp_endpoint().await;
    let runner = runner(&format!("{}/fhir", server.uri()), &[]);
    let runs = run_suite(&runner, &root("conformance/gp-receiver")).await;
    assert_eq!(runs.len(), 2);
    assert!(
        runs.iter().all(|r| r.status() == Status::Passed),
        "{}",
        failures(&runs)
    );
    let requests = server.received_requests().await.expect("recorded");
    assert_eq!(
        requests.len(),
        9,
        "three Tasks and a retry, two Observations and a repeat, two malformed"
    );
    for request in &requests {
        let path = request.url.path();
        if request.method.as_str() == "PUT" {
            assert!(path.starts_with("/fhir/Task/"), "{path}");
        } else {
            assert_eq!(
                (request.method.as_str(), path),
                ("POST", "/fhir/Observation")
            );
            assert!(
                request.headers.contains_key("if-none-exist"),
                "Observations are conditional creates"
            );
        }
    }
}

#[tokio::test]
async fn the_gp_receiver_suite_fails_against_a_receiver_that_takes_anything() {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(201))
        .mount(&server)
        .await;
    let runner = runner(&server.uri(), &[]);
    let runs = run_suite(&runner, &root("conformance/gp-receiver")).await;
    for run in &runs {
        assert_eq!(
            run.status(),
            Status::Failed,
            "{}",
            failures(std::slice::from_ref(run))
        );
        let summary = failures(std::slice::from_ref(run));
        assert!(
            summary.contains("Malformed › refused (400 or 422)"),
            "{summary}"
        );
    }
}

/// A script written for the edge cases: variables from headers and expressions, `--var`
/// overrides, request headers, every operation addressing form, `warningOnly`, skips for
/// what is unsupported, and a test stopping at its first failure.
#[tokio::test]
async fn the_runner_handles_variables_operations_and_edge_cases() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/fhir/Patient"))
        .and(body_partial_json(json!({"identifier": [{"value": "from-cli"}]})))
        .respond_with(
            ResponseTemplate::new(201)
                .insert_header("Location", "http://x/fhir/Patient/p1/_history/3")
                .insert_header("ETag", "W/\"3\"")
                .insert_header("content-type", "application/fhir+json")
                .set_body_json(json!({"resourceType": "Patient", "id": "p1", "meta": {"versionId": "3"}, "identifier": [{"value": "from-cli"}], "active": true})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/fhir/Patient/p1/_history/3"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"resourceType": "Patient", "id": "p1", "meta": {"versionId": "3"}, "active": true})))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path("/fhir/Patient/p1"))
        .and(header("if-match", "W/\"3\""))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"resourceType": "Patient", "id": "p1"})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/fhir/Patient"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"resourceType": "Bundle", "type": "searchset", "total": 2})),
        )
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(405))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("patient.json"),
        json!({"resourceType": "Patient", "identifier": [{"value": "${mrn}"}], "active": true})
            .to_string(),
    )
    .expect("fixture");
    let op = |code: &str, extra: Value| {
        let mut operation = json!({"type": {"code": code}});
        for (k, v) in extra.as_object().expect("object") {
            operation[k] = v.clone();
        }
        json!({"operation": operation})
    };
    let assert = |extra: Value| json!({"assert": extra});
    let script = json!({
        "resourceType": "TestScript", "url": "http://example.org/TestScript/edge", "name": "Edge", "status": "draft",
        "fixture": [{"id": "patient", "autocreate": false, "autodelete": false, "resource": {"reference": "patient.json"}}],
        "variable": [
            {"name": "mrn", "defaultValue": "from-default"},
            {"name": "etag", "headerField": "ETag", "sourceId": "created"},
            {"name": "patientId", "expression": "id", "sourceId": "created"},
            {"name": "total", "expression": "total"},
            {"name": "xpath", "path": "fhir:Patient/fhir:id/@value", "sourceId": "created"},
            {"name": "unset"}
        ],
        "test": [
            {"name": "Create", "action": [
                op("create", json!({"resource": "Patient", "sourceId": "patient", "responseId": "created"})),
                assert(json!({"response": "created"})),
                assert(json!({"headerField": "Location", "operator": "contains", "value": "/Patient/${patientId}/"})),
                assert(json!({"expression": "identifier.value", "value": "${mrn}"})),
                assert(json!({"expression": "identifier.value", "value": "${mrn}", "direction": "request"})),
                assert(json!({"minimumId": "patient"})),
                assert(json!({"response": "okay", "warningOnly": true})),
                assert(json!({"path": "fhir:Patient", "value": "x"})),
                assert(json!({"navigationLinks": true}))
            ]},
            {"name": "VersionAndUpdate", "action": [
                op("vread", json!({"resource": "Patient", "targetId": "created"})),
                assert(json!({"response": "okay"})),
                assert(json!({"requestURL": "/_history/3", "operator": "contains"})),
                op("update", json!({"targetId": "created", "sourceId": "created", "requestHeader": [{"field": "If-Match", "value": "${etag}"}]})),
                assert(json!({"response": "okay"})),
                assert(json!({"requestMethod": "put"}))
            ]},
            {"name": "Search", "action": [
                op("search", json!({"resource": "Patient", "params": "?identifier=${mrn}"})),
                assert(json!({"expression": "total", "operator": "greaterThan", "value": "1"})),
                assert(json!({"requestURL": "identifier=from-cli", "operator": "contains"})),
                op("read", json!({"resource": "Patient", "params": "/${total}"})),
                assert(json!({"response": "notFound"}))
            ]},
            {"name": "StopsAtFirstFailure", "action": [
                op("search", json!({"resource": "Patient"})),
                assert(json!({"response": "bad"})),
                assert(json!({"response": "okay"}))
            ]},
            {"name": "Unsupported", "action": [
                op("read", json!({"resource": "Patient", "params": "/${xpath}"})),
                assert(json!({"response": "okay"})),
                op("everything", json!({"resource": "Patient", "params": "/p1"})),
                op("read", json!({"resource": "Patient", "params": "/${unset}"}))
            ]}
        ],
        "teardown": {"action": [op("delete", json!({"targetId": "created"}))]}
    });
    let file = dir.path().join("edge.json");
    std::fs::write(&file, script.to_string()).expect("script");
    let loaded = script::load(&file).expect("a well-formed script");
    let runner = runner(&format!("{}/fhir", server.uri()), &[("mrn", "from-cli")]);
    let run = runner.run(&loaded).await;
    let tests = &run.outcome.as_ref().expect("ran").tests;
    let codes = |i: usize| {
        tests[i]
            .actions
            .iter()
            .map(|a| a.verdict.code())
            .collect::<Vec<_>>()
    };
    let summary = failures(std::slice::from_ref(&run));
    assert_eq!(
        codes(0),
        [
            "pass", "pass", "pass", "pass", "pass", "pass", "warning", "skip", "skip"
        ],
        "{summary}"
    );
    assert_eq!(
        codes(1),
        ["pass", "pass", "pass", "pass", "pass", "pass"],
        "{summary}"
    );
    // `total` is read from the last response (the search Bundle): 2; there is no Patient/2.
    assert_eq!(
        codes(2),
        ["pass", "pass", "pass", "pass", "pass"],
        "{summary}"
    );
    let requests = server.received_requests().await.expect("recorded");
    assert!(requests.iter().any(|r| r.url.path() == "/fhir/Patient/2"));
    assert_eq!(codes(3), ["pass", "fail", "skip"], "{summary}");
    assert_eq!(codes(4), ["skip", "skip", "skip", "error"], "{summary}");
    assert!(summary.contains("variable unset has no value"), "{summary}");
    assert!(summary.contains("XPath/JSONPath"), "{summary}");
    assert!(
        summary.contains("operation type \"everything\" is not supported"),
        "{summary}"
    );
    assert_eq!(run.status(), Status::Failed);
    // An operation passes when it is answered; what the answer says is for asserts.
    let teardown = &run.outcome.as_ref().expect("ran").teardown;
    assert_eq!(teardown[0].verdict.code(), "pass");
    assert!(teardown[0].verdict.message().contains("HTTP 405"));

    // The JUnit XML is well formed, escapes what it quotes, and counts the cases.
    let xml = junit(std::slice::from_ref(&run));
    let mut reader = quick_xml::Reader::from_str(&xml);
    let (mut cases, mut failures_seen, mut errors_seen) = (0, 0, 0);
    loop {
        match reader.read_event().expect("well-formed XML") {
            quick_xml::events::Event::Eof => break,
            quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e) => {
                match e.name().as_ref() {
                    b"testcase" => cases += 1,
                    b"failure" => failures_seen += 1,
                    b"error" => errors_seen += 1,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    assert_eq!(cases, 6, "five tests and the teardown");
    assert_eq!((failures_seen, errors_seen), (1, 1), "{xml}");
}

/// An autocreated fixture is autodeleted at `[type]/[id]`, even when its create answered
/// with a versioned `Location` (`DELETE …/_history/1` is another interaction).
#[tokio::test]
async fn autodelete_deletes_the_resource_not_the_version_created() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/fhir/Patient"))
        .respond_with(ResponseTemplate::new(201).insert_header("Location", "Patient/p1/_history/1"))
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/fhir/Patient/p1"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let script = json!({
        "resourceType": "TestScript", "url": "http://example.org/TestScript/autodelete",
        "name": "Autodelete", "status": "draft",
        "contained": [{"resourceType": "Patient", "id": "p", "active": true}],
        "fixture": [{"id": "patient", "autocreate": true, "autodelete": true, "resource": {"reference": "#p"}}],
        "test": [{"action": [{"assert": {"resource": "Patient", "sourceId": "patient"}}]}]
    });
    let loaded = script::parse(&script, Path::new(".")).expect("a well-formed script");
    let run = runner(&format!("{}/fhir", server.uri()), &[])
        .run(&loaded)
        .await;
    let teardown = &run.outcome.as_ref().expect("ran").teardown;
    assert_eq!(teardown.len(), 1);
    assert_eq!(
        teardown[0].verdict.code(),
        "pass",
        "{}",
        teardown[0].verdict.message()
    );
}

/// `sprig conformance run ARGS` as a child process, off the async threads (the server
/// under test runs on them).
async fn conformance_run(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sprig"))
            .arg("conformance")
            .arg("run")
            .args(args)
            .output()
            .expect("the binary runs")
    })
    .await
    .expect("joined")
}

#[tokio::test]
async fn sprig_conformance_run_exits_by_the_results_and_writes_its_files() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let target = app.url("/fhir");
    let reports = dir.path().join("reports");
    let junit_file = dir.path().join("junit.xml");
    let suite = root("conformance/gateway").display().to_string();
    let output = conformance_run(vec![
        "--target".into(),
        target.clone(),
        "--suite".into(),
        suite,
        "--report".into(),
        reports.display().to_string(),
        "--junit".into(),
        junit_file.display().to_string(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("8 script(s): 8 passed"), "{stdout}");
    let written = std::fs::read_dir(&reports).expect("report folder").count();
    assert_eq!(written, 8, "a TestReport per script");
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(reports.join("TestReport-sprig-gateway-capability.json"))
            .expect("report"),
    )
    .expect("JSON");
    assert_eq!(report["resourceType"], "TestReport");
    assert_eq!(report["result"], "pass");
    assert!(
        std::fs::read_to_string(&junit_file)
            .expect("junit")
            .contains("<testsuites")
    );

    // A failing and a malformed script: exit 1, one report file holding both as a Bundle.
    let failing =
        root("tests/data/testscripts/hl7-r4-spec/TestScript-testscript-example-readtest.json");
    let malformed = root("tests/data/testscripts/fhir-crucible/spec/examples/invalid_json.json");
    let bundle = dir.path().join("out.json");
    let output = conformance_run(vec![
        "--target".into(),
        target.clone(),
        "--suite".into(),
        failing.display().to_string(),
        "--suite".into(),
        malformed.display().to_string(),
        "--report".into(),
        bundle.display().to_string(),
    ])
    .await;
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("REJECTED") && stdout.contains("not JSON"),
        "{stdout}"
    );
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&bundle).expect("bundle")).expect("JSON");
    assert_eq!(written["resourceType"], "Bundle");
    assert_eq!(written["entry"].as_array().map(Vec::len), Some(2));

    // Bad usage: exit 2.
    for args in [
        vec![
            "--target".to_owned(),
            target.clone(),
            "--suite".into(),
            "/no/such/suite".into(),
        ],
        vec![
            "--target".to_owned(),
            "not a url".into(),
            "--suite".into(),
            root("conformance/gateway").display().to_string(),
        ],
        vec![
            "--target".to_owned(),
            target.clone(),
            "--suite".into(),
            root("conformance/gateway").display().to_string(),
            "--var".into(),
            "novalue".into(),
        ],
    ] {
        let output = conformance_run(args).await;
        assert_eq!(
            output.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[tokio::test]
async fn the_gp_sender_examples_are_valid_and_invalid_as_labelled() {
    let validator = sprig::conformance::load_validator().expect("validator");
    for (folder, valid) in [("valid", true), ("invalid", false)] {
        let dir = root(&format!("conformance/gp-sender/{folder}"));
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("folder")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        assert!(files.len() >= 3, "{folder}");
        for file in files {
            let body: Value =
                serde_json::from_str(&std::fs::read_to_string(&file).expect("file")).expect("JSON");
            let errors: Vec<String> = validator
                .validate_resource(&body, None, None)
                .into_iter()
                .filter(|i| i.severity.is_error())
                .map(|i| i.message)
                .collect();
            assert_eq!(errors.is_empty(), valid, "{}: {errors:?}", file.display());
        }
    }
    let app = spawn_app().await;
    let runner = runner(&app.url("/fhir"), &[]);
    let runs = run_suite(&runner, &root("conformance/gp-sender")).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status(), Status::Passed, "{}", failures(&runs));
}
