//! What a run produces: a FHIR `TestReport` per script, a JUnit XML file for CI systems,
//! and a readable summary. Pure functions of the [`ScriptRun`]s.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};
use time::format_description::well_known::Rfc3339;

use super::{ActionRun, ScriptRun, Status, Verdict};

/// Counts of assert results (operations are not counted: they only send).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Passed asserts.
    pub passed: usize,
    /// Failed asserts, or asserts that could not be evaluated.
    pub failed: usize,
    /// Asserts that failed but are `warningOnly`.
    pub warnings: usize,
    /// Skipped actions (asserts and operations).
    pub skipped: usize,
}

impl Tally {
    /// Counts the setup and test actions of a run (teardown does not count).
    pub fn of(run: &ScriptRun) -> Tally {
        let mut tally = Tally::default();
        let Ok(sections) = &run.outcome else {
            return tally;
        };
        for action in sections.counted() {
            match (&action.verdict, action.is_assert) {
                (Verdict::Skip(_), _) => tally.skipped += 1,
                (Verdict::Fail(_) | Verdict::Error(_), _) => tally.failed += 1,
                (Verdict::Warning(_), true) => tally.warnings += 1,
                (Verdict::Pass(_), true) => tally.passed += 1,
                (_, false) => {}
            }
        }
        tally
    }
}

/// The FHIR `TestReport` of a run. `target` is the server tested.
pub fn test_report(run: &ScriptRun, target: &str) -> Value {
    let status = run.status();
    let tally = Tally::of(run);
    let mut report = Map::new();
    report.insert("resourceType".into(), json!("TestReport"));
    report.insert("id".into(), json!(report_id(run)));
    report.insert(
        "name".into(),
        json!(run.title.clone().unwrap_or_else(|| run.name.clone())),
    );
    report.insert(
        "status".into(),
        json!(if status == Status::Rejected {
            "entered-in-error"
        } else {
            "completed"
        }),
    );
    let mut script = Map::new();
    if let Some(url) = run.url.as_ref().filter(|u| u.contains("://")) {
        script.insert("reference".into(), json!(url));
    }
    script.insert(
        "display".into(),
        json!(format!("{} ({})", run.name, run.file.display())),
    );
    report.insert("testScript".into(), Value::Object(script));
    report.insert(
        "result".into(),
        json!(match status {
            Status::Passed | Status::Skipped => "pass",
            Status::Failed | Status::Rejected => "fail",
        }),
    );
    let counted = tally.passed + tally.warnings + tally.failed;
    // Percent of asserts that held, to two places, as FHIR's exact decimal.
    if let Some(score) = ((tally.passed + tally.warnings) * 10_000).checked_div(counted) {
        let text = format!("{}.{:02}", score / 100, score % 100);
        let number: Value = serde_json::from_str(&text).unwrap_or(json!(0));
        report.insert("score".into(), number);
    }
    report.insert("tester".into(), json!("Sprig conformance runner"));
    if let Ok(issued) = run.started.format(&Rfc3339) {
        report.insert("issued".into(), json!(issued));
    }
    report.insert(
        "participant".into(),
        json!([
            {"type": "test-engine", "uri": "https://sprig-gateway.org/conformance", "display": concat!("sprig ", env!("CARGO_PKG_VERSION"))},
            {"type": "server", "uri": target},
        ]),
    );
    match &run.outcome {
        Err(reason) => {
            report.insert(
                "setup".into(),
                json!({"action": [{"operation": {"result": "error", "message": format!("The script was not run: {reason}")}}]}),
            );
        }
        Ok(sections) => {
            if !sections.setup.is_empty() {
                report.insert(
                    "setup".into(),
                    json!({"action": sections.setup.iter().map(action_json).collect::<Vec<_>>()}),
                );
            }
            let tests: Vec<Value> = sections
                .tests
                .iter()
                .filter(|t| !t.actions.is_empty())
                .map(|t| {
                    let mut test = Map::new();
                    test.insert("name".into(), json!(t.name));
                    if let Some(description) = &t.description {
                        test.insert("description".into(), json!(description));
                    }
                    test.insert(
                        "action".into(),
                        Value::Array(t.actions.iter().map(action_json).collect()),
                    );
                    Value::Object(test)
                })
                .collect();
            if !tests.is_empty() {
                report.insert("test".into(), Value::Array(tests));
            }
            if !sections.teardown.is_empty() {
                report.insert(
                    "teardown".into(),
                    json!({"action": sections.teardown.iter().map(|a| json!({"operation": result_json(a)})).collect::<Vec<_>>()}),
                );
            }
        }
    }
    Value::Object(report)
}

fn action_json(action: &ActionRun) -> Value {
    let key = if action.is_assert {
        "assert"
    } else {
        "operation"
    };
    json!({ key: result_json(action) })
}

fn result_json(action: &ActionRun) -> Value {
    let message = format!("{}: {}", action.title, action.verdict.message());
    json!({"result": action.verdict.code(), "message": message})
}

/// A FHIR id for the report: the script's id, else its name, made to fit `[A-Za-z0-9\-\.]{1,64}`.
pub fn report_id(run: &ScriptRun) -> String {
    let source = run.id.clone().unwrap_or_else(|| run.name.clone());
    let mut id: String = source
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if id.is_empty() {
        id.push_str("testreport");
    }
    id
}

/// A JUnit XML document: a `testsuite` per script, a `testcase` for its setup and for
/// each test. A rejected script is a suite with one errored case.
pub fn junit(runs: &[ScriptRun]) -> String {
    let mut suites = String::new();
    let (mut all_tests, mut all_failures, mut all_errors, mut all_skipped) = (0, 0, 0, 0);
    for run in runs {
        let mut cases = Vec::new();
        match &run.outcome {
            Err(reason) => cases.push(Case {
                name: "load".into(),
                state: CaseState::Error(format!("the script was not run: {reason}")),
                lines: Vec::new(),
            }),
            Ok(sections) => {
                if !sections.setup.is_empty() {
                    cases.push(Case::of("setup", &sections.setup));
                }
                for test in &sections.tests {
                    cases.push(Case::of(&test.name, &test.actions));
                }
                if !sections.teardown.is_empty() {
                    cases.push(Case::of("teardown", &sections.teardown));
                }
            }
        }
        let failures = cases
            .iter()
            .filter(|c| matches!(c.state, CaseState::Failure(_)))
            .count();
        let errors = cases
            .iter()
            .filter(|c| matches!(c.state, CaseState::Error(_)))
            .count();
        let skipped = cases
            .iter()
            .filter(|c| matches!(c.state, CaseState::Skipped(_)))
            .count();
        all_tests += cases.len();
        all_failures += failures;
        all_errors += errors;
        all_skipped += skipped;
        let timestamp = run.started.format(&Rfc3339).unwrap_or_default();
        let _ = writeln!(
            suites,
            r#"  <testsuite name="{}" file="{}" tests="{}" failures="{failures}" errors="{errors}" skipped="{skipped}" timestamp="{}">"#,
            xml_escape(&run.name),
            xml_escape(&run.file.display().to_string()),
            cases.len(),
            xml_escape(&timestamp),
        );
        for case in cases {
            let _ = write!(
                suites,
                r#"    <testcase classname="{}" name="{}">"#,
                xml_escape(&run.name),
                xml_escape(&case.name)
            );
            match &case.state {
                CaseState::Passed => {}
                CaseState::Failure(message) => {
                    let _ = write!(
                        suites,
                        r#"<failure message="{}" type="assert">{}</failure>"#,
                        xml_escape(message),
                        xml_escape(message)
                    );
                }
                CaseState::Error(message) => {
                    let _ = write!(
                        suites,
                        r#"<error message="{}" type="error">{}</error>"#,
                        xml_escape(message),
                        xml_escape(message)
                    );
                }
                CaseState::Skipped(message) => {
                    let _ = write!(suites, r#"<skipped message="{}"/>"#, xml_escape(message));
                }
            }
            if !case.lines.is_empty() {
                let _ = write!(
                    suites,
                    "<system-out>{}</system-out>",
                    xml_escape(&case.lines.join("\n"))
                );
            }
            suites.push_str("</testcase>\n");
        }
        suites.push_str("  </testsuite>\n");
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"sprig conformance\" tests=\"{all_tests}\" failures=\"{all_failures}\" errors=\"{all_errors}\" skipped=\"{all_skipped}\">\n{suites}</testsuites>\n"
    )
}

struct Case {
    name: String,
    state: CaseState,
    lines: Vec<String>,
}

enum CaseState {
    Passed,
    Failure(String),
    Error(String),
    Skipped(String),
}

impl Case {
    fn of(name: &str, actions: &[ActionRun]) -> Case {
        let lines: Vec<String> = actions.iter().map(action_line).collect();
        let first = |wanted: fn(&Verdict) -> bool| {
            actions
                .iter()
                .find(|a| wanted(&a.verdict))
                .map(|a| format!("{}: {}", a.title, a.verdict.message()))
        };
        let state = if let Some(message) = first(|v| matches!(v, Verdict::Fail(_))) {
            CaseState::Failure(message)
        } else if let Some(message) = first(|v| matches!(v, Verdict::Error(_))) {
            CaseState::Error(message)
        } else if let Some(message) = first(|v| matches!(v, Verdict::Skip(_))) {
            CaseState::Skipped(message)
        } else {
            CaseState::Passed
        };
        Case {
            name: name.to_owned(),
            state,
            lines,
        }
    }
}

fn action_line(action: &ActionRun) -> String {
    format!(
        "{:<7} {} {}: {}",
        action.verdict.code(),
        if action.is_assert {
            "assert"
        } else {
            "operation"
        },
        action.title,
        action.verdict.message()
    )
}

/// Escapes text for XML content and attribute values. Characters XML 1.0 cannot carry
/// at all (most control characters) become U+FFFD.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// The readable summary: one line per script, the actions that did not pass under it,
/// then the totals.
pub fn summary(runs: &[ScriptRun]) -> String {
    let mut out = String::new();
    let mut counts = [0usize; 4];
    for run in runs {
        let status = run.status();
        counts[match status {
            Status::Passed => 0,
            Status::Skipped => 1,
            Status::Failed => 2,
            Status::Rejected => 3,
        }] += 1;
        let label = match status {
            Status::Passed => "PASS",
            Status::Skipped => "PASS*",
            Status::Failed => "FAIL",
            Status::Rejected => "REJECTED",
        };
        let _ = write!(out, "{label:<9} {} ({})", run.name, run.file.display());
        match &run.outcome {
            Err(reason) => {
                let _ = writeln!(out);
                let _ = writeln!(out, "          {reason}");
            }
            Ok(sections) => {
                let tally = Tally::of(run);
                let _ = writeln!(
                    out,
                    ": {} assert(s) passed, {} failed, {} warning(s), {} skipped",
                    tally.passed, tally.failed, tally.warnings, tally.skipped
                );
                let groups = std::iter::once(("setup", &sections.setup))
                    .chain(sections.tests.iter().map(|t| (t.name.as_str(), &t.actions)))
                    .chain(std::iter::once(("teardown", &sections.teardown)));
                for (group, actions) in groups {
                    for action in actions.iter() {
                        if matches!(action.verdict, Verdict::Pass(_)) {
                            continue;
                        }
                        let _ = writeln!(
                            out,
                            "          {:<7} {group} › {}: {}",
                            action.verdict.code(),
                            action.title,
                            action.verdict.message()
                        );
                    }
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "{} script(s): {} passed, {} passed with skipped actions (PASS*), {} failed, {} rejected",
        runs.len(),
        counts[0],
        counts[1],
        counts[2],
        counts[3]
    );
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use time::OffsetDateTime;

    use super::*;
    use crate::conformance::{Sections, TestRun};

    fn run(verdicts: Vec<Verdict>) -> ScriptRun {
        ScriptRun {
            file: PathBuf::from("suite/a.json"),
            name: "A <script> & \"more\"".into(),
            title: None,
            url: Some("http://example.org/TestScript/a".into()),
            id: Some("a".into()),
            started: OffsetDateTime::UNIX_EPOCH,
            outcome: Ok(Sections {
                setup: Vec::new(),
                tests: vec![TestRun {
                    name: "t1".into(),
                    description: None,
                    actions: verdicts
                        .into_iter()
                        .map(|verdict| ActionRun {
                            is_assert: true,
                            title: "check".into(),
                            verdict,
                        })
                        .collect(),
                }],
                teardown: Vec::new(),
            }),
        }
    }

    #[test]
    fn the_status_and_the_report_follow_the_actions() {
        let passed = run(vec![
            Verdict::Pass("ok".into()),
            Verdict::Warning("meh".into()),
        ]);
        assert_eq!(passed.status(), Status::Passed);
        let report = test_report(&passed, "http://server/fhir");
        assert_eq!(report["result"], "pass");
        assert_eq!(report["score"].to_string(), "100.00");
        assert_eq!(
            report["test"][0]["action"][1]["assert"]["result"],
            "warning"
        );
        let skipped = run(vec![
            Verdict::Pass("ok".into()),
            Verdict::Skip("why".into()),
        ]);
        assert_eq!(skipped.status(), Status::Skipped);
        assert_eq!(
            test_report(&skipped, "x")["test"][0]["action"][1]["assert"]["message"],
            "check: why"
        );
        let failed = run(vec![
            Verdict::Pass("ok".into()),
            Verdict::Fail("no".into()),
            Verdict::Error("err".into()),
        ]);
        assert_eq!(failed.status(), Status::Failed);
        let report = test_report(&failed, "x");
        assert_eq!(report["result"], "fail");
        assert_eq!(report["score"].to_string(), "33.33");
        let rejected = ScriptRun::rejected(&crate::conformance::ScriptError {
            file: PathBuf::from("bad.json"),
            problem: "not JSON".into(),
        });
        assert_eq!(rejected.status(), Status::Rejected);
        let report = test_report(&rejected, "x");
        assert_eq!(report["status"], "entered-in-error");
        assert!(
            report["setup"]["action"][0]["operation"]["message"]
                .as_str()
                .unwrap()
                .contains("not JSON")
        );
    }

    #[test]
    fn junit_escapes_what_it_quotes() {
        let failed = run(vec![Verdict::Fail("expected <a> & \"b\"\u{1}".into())]);
        let xml = junit(std::slice::from_ref(&failed));
        assert!(
            xml.contains(r#"name="A &lt;script&gt; &amp; &quot;more&quot;""#),
            "{xml}"
        );
        assert!(
            xml.contains("expected &lt;a&gt; &amp; &quot;b&quot;\u{FFFD}"),
            "{xml}"
        );
        assert!(xml.contains(r#"failures="1""#));
        assert_eq!(xml_escape("it's\n"), "it&apos;s&#10;");
    }

    #[test]
    fn the_summary_lists_what_did_not_pass() {
        let text = summary(&[run(vec![
            Verdict::Pass("ok".into()),
            Verdict::Skip("unsupported thing".into()),
        ])]);
        assert!(text.contains("PASS*"), "{text}");
        assert!(
            text.contains("skip    t1 › check: unsupported thing"),
            "{text}"
        );
        assert!(
            text.contains("1 script(s): 0 passed, 1 passed with skipped actions"),
            "{text}"
        );
    }
}
