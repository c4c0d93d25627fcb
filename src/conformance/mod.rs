//! The conformance runner: FHIR R4 `TestScript`s (JSON) run against any FHIR server,
//! with a `TestReport` per script, a JUnit XML file and a readable summary
//! (`sprig conformance run`, `cli::conformance`).
//!
//! - [`script`]: the TestScript model, read and checked before anything is sent (a
//!   malformed script is a [`ScriptError`] naming the file and the problem);
//! - [`assert`]: assertion evaluation, pure (operators, every assert kind, `minimumId`,
//!   `validateProfileId` through a [`assert::ProfileCheck`]);
//! - [`execute`]: the HTTP side (reqwest): fixtures, variables, operations, the order of
//!   setup, tests and teardown;
//! - [`report`]: TestReport JSON, JUnit XML, the summary.
//!
//! Invariant: whatever the runner does not support (XPath `path`, `navigationLinks`,
//! subtests, a second destination, an operation type it cannot address) is reported as
//! `skip` with the reason, never as `pass`.
//!
//! A run's verdict is made by setup and tests; teardown and autodelete failures are
//! warnings. Logs carry the request method and errors stripped of their URL, never URLs or
//! bodies (a search URL can hold an NHS number).

pub mod assert;
pub mod execute;
pub mod report;
pub mod script;

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

pub use self::assert::Verdict;
pub use self::execute::{Runner, RunnerError, RunnerOptions};
pub use self::script::{ScriptError, TestScript};
use crate::validation::Validator;
use crate::validation::profile::ProfilePass;
use crate::validation::schema::SchemaPass;

/// One script's run (or its rejection).
#[derive(Debug, Clone)]
pub struct ScriptRun {
    /// The script's file.
    pub file: PathBuf,
    /// `TestScript.name` (the file name when it was rejected).
    pub name: String,
    /// `TestScript.title`.
    pub title: Option<String>,
    /// `TestScript.url`.
    pub url: Option<String>,
    /// `TestScript.id`.
    pub id: Option<String>,
    /// When it started.
    pub started: OffsetDateTime,
    /// What happened, or why the script was refused.
    pub outcome: Result<Sections, String>,
}

/// The results of a run, section by section.
#[derive(Debug, Clone, Default)]
pub struct Sections {
    /// Autocreated fixtures, then `setup`.
    pub setup: Vec<ActionRun>,
    /// Each `test`.
    pub tests: Vec<TestRun>,
    /// `teardown`, then autodeleted fixtures.
    pub teardown: Vec<ActionRun>,
}

impl Sections {
    /// The actions that make the verdict: setup and tests (teardown's failures are only
    /// warnings).
    pub fn counted(&self) -> impl Iterator<Item = &ActionRun> {
        self.setup
            .iter()
            .chain(self.tests.iter().flat_map(|t| t.actions.iter()))
    }
}

/// One test's results.
#[derive(Debug, Clone)]
pub struct TestRun {
    /// `test.name`, or `test N`.
    pub name: String,
    /// `test.description`.
    pub description: Option<String>,
    /// Each action's result.
    pub actions: Vec<ActionRun>,
}

/// One action's result.
#[derive(Debug, Clone)]
pub struct ActionRun {
    /// An assert (else an operation).
    pub is_assert: bool,
    /// Its label, description, or what it does.
    pub title: String,
    /// The result and its message.
    pub verdict: Verdict,
}

/// A script's overall result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Every action passed (warnings allowed).
    Passed,
    /// Nothing failed, but some actions were skipped (unsupported, or nothing to check).
    Skipped,
    /// An action failed or could not be run.
    Failed,
    /// The script is malformed and was not run.
    Rejected,
}

impl ScriptRun {
    /// A script that could not be loaded.
    pub fn rejected(error: &ScriptError) -> ScriptRun {
        ScriptRun {
            file: error.file.clone(),
            name: error
                .file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            title: None,
            url: None,
            id: None,
            started: OffsetDateTime::now_utc(),
            outcome: Err(error.problem.clone()),
        }
    }

    /// The overall result: teardown does not count (its failures are warnings).
    pub fn status(&self) -> Status {
        let Ok(sections) = &self.outcome else {
            return Status::Rejected;
        };
        let mut skipped = false;
        for action in sections.counted() {
            match action.verdict {
                Verdict::Fail(_) | Verdict::Error(_) => return Status::Failed,
                Verdict::Skip(_) => skipped = true,
                Verdict::Pass(_) | Verdict::Warning(_) => {}
            }
        }
        if skipped {
            Status::Skipped
        } else {
            Status::Passed
        }
    }

    /// Every action's result, in order.
    pub fn actions(&self) -> impl Iterator<Item = &ActionRun> {
        self.outcome
            .iter()
            .flat_map(|s| s.counted().chain(s.teardown.iter()))
    }
}

/// The script files of a `--suite` argument: the file itself, or every `.json` file in
/// the folder that holds a TestScript, in name order (fixtures in the same folder or
/// below are not scripts). Subfolders are not searched: they hold fixtures.
pub fn suite_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    let metadata = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if metadata.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "json"))
        .filter(|p| looks_like_test_script(p))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!(
            "{}: no TestScript JSON in this folder",
            path.display()
        ));
    }
    Ok(files)
}

/// Whether a file in a suite folder is meant as a TestScript: it says so, or it is no
/// FHIR resource at all (so the runner reports it rather than passing over it). A file
/// that is another FHIR resource (a fixture kept beside the scripts) is not one.
fn looks_like_test_script(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return true;
    };
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(json) => match json.get("resourceType").and_then(serde_json::Value::as_str) {
            Some(resource_type) => resource_type == "TestScript",
            None => true,
        },
        Err(_) => true,
    }
}

/// Sprig's validator (the structural and profile passes), as `sprig validate` builds it.
pub fn load_validator() -> Result<Validator, String> {
    let schema = SchemaPass::load(&[]).map_err(|e| e.to_string())?;
    let profiles = ProfilePass::load().map_err(|e| e.to_string())?;
    Ok(Validator::new(vec![Box::new(schema), Box::new(profiles)]))
}
