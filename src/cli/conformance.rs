//! `sprig conformance run --target URL [--suite DIR|FILE]... [--report out.json|DIR]
//! [--junit out.xml] [--var name=value]...`: runs FHIR TestScripts against a server and
//! writes a TestReport per script, a JUnit XML file and a readable summary.
//!
//! Exit status: 0 every script passed (skipped actions are listed, not failures), 1 a
//! script failed or was rejected as malformed (or a report could not be written), 2 bad
//! usage (no such suite, a malformed `--var` or URL).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::conformance::report::{self, report_id};
use crate::conformance::{Runner, RunnerOptions, ScriptRun, Status, suite_files};

/// `sprig conformance …`
#[derive(Debug, Args)]
pub struct ConformanceArgs {
    #[command(subcommand)]
    command: ConformanceCommand,
}

#[derive(Debug, Subcommand)]
enum ConformanceCommand {
    /// Run TestScripts against a FHIR server.
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The FHIR base URL of the server under test (e.g. http://127.0.0.1:8080/fhir).
    #[arg(long, value_name = "URL")]
    target: String,
    /// A TestScript JSON file, or a folder (every TestScript JSON in it, in name order).
    #[arg(long = "suite", value_name = "DIR|FILE", required = true)]
    suites: Vec<PathBuf>,
    /// Where to write the TestReports: a `.json` file (one report, or a Bundle of them
    /// when several scripts ran) or a folder (one `TestReport-<id>.json` per script).
    #[arg(long, value_name = "FILE|DIR")]
    report: Option<PathBuf>,
    /// Where to write the JUnit XML.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// A variable's value, overriding the script's own (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
    vars: Vec<(String, String)>,
    /// Seconds to wait for each response.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    timeout: u64,
    /// An access token for a secured server, sent as `Authorization: Bearer` (prefer the
    /// environment variable: a command line is visible to other users of the machine).
    #[arg(
        long,
        env = "SPRIG_CONFORMANCE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
}

fn parse_var(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("expected NAME=VALUE, got {text:?}")),
    }
}

/// Runs `sprig conformance`.
pub fn run(args: ConformanceArgs) -> ExitCode {
    match args.command {
        ConformanceCommand::Run(args) => run_scripts(args),
    }
}

fn run_scripts(args: RunArgs) -> ExitCode {
    let target = match reqwest::Url::parse(&args.target) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => url,
        Ok(url) => {
            eprintln!("sprig conformance: --target must be an http or https URL, not {url}");
            return ExitCode::from(2);
        }
        Err(error) => {
            eprintln!("sprig conformance: --target {}: {error}", args.target);
            return ExitCode::from(2);
        }
    };
    let mut files = Vec::new();
    for suite in &args.suites {
        match suite_files(suite) {
            Ok(found) => files.extend(found),
            Err(message) => {
                eprintln!("sprig conformance: {message}");
                return ExitCode::from(2);
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sprig conformance: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let options = RunnerOptions {
        target: target.clone(),
        variables: args.vars.iter().cloned().collect::<HashMap<_, _>>(),
        timeout: Duration::from_secs(args.timeout),
        bearer_token: args.token.clone(),
    };
    let runs = match runtime.block_on(run_files(&files, options)) {
        Ok(runs) => runs,
        Err(error) => {
            eprintln!("sprig conformance: {error:#}");
            return ExitCode::from(1);
        }
    };
    print!("{}", report::summary(&runs));
    let mut status = if runs
        .iter()
        .all(|r| matches!(r.status(), Status::Passed | Status::Skipped))
    {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    };
    if let Some(path) = &args.report
        && let Err(error) = write_reports(path, &runs, target.as_str())
    {
        eprintln!("sprig conformance: {error:#}");
        status = ExitCode::from(1);
    }
    if let Some(path) = &args.junit
        && let Err(error) = std::fs::write(path, report::junit(&runs))
    {
        eprintln!(
            "sprig conformance: cannot write {}: {error}",
            path.display()
        );
        status = ExitCode::from(1);
    }
    status
}

/// Loads and runs each file in turn, with a progress bar on a terminal.
async fn run_files(files: &[PathBuf], options: RunnerOptions) -> anyhow::Result<Vec<ScriptRun>> {
    let runner = Runner::new(options).context("cannot start the runner")?;
    let progress = if files.len() > 1 {
        ProgressBar::new(files.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} scripts {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut runs = Vec::new();
    for file in files {
        progress.set_message(
            file.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        let run = runner.run_file(file).await;
        progress.inc(1);
        runs.push(run);
    }
    progress.finish_and_clear();
    Ok(runs)
}

/// Writes the TestReports: one per file in a folder, or one file (a Bundle when several
/// scripts ran).
fn write_reports(path: &Path, runs: &[ScriptRun], target: &str) -> anyhow::Result<()> {
    let reports: Vec<Value> = runs
        .iter()
        .map(|r| report::test_report(r, target))
        .collect();
    let is_file = path.extension().is_some_and(|e| e == "json") && !path.is_dir();
    if is_file {
        let document = match reports.as_slice() {
            [one] => one.clone(),
            many => json!({
                "resourceType": "Bundle",
                "type": "collection",
                "entry": many.iter().map(|r| json!({"resource": r})).collect::<Vec<_>>(),
            }),
        };
        return write_json(path, &document);
    }
    std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut used = HashMap::new();
    for (run, report) in runs.iter().zip(&reports) {
        let id = report_id(run);
        // Two scripts with one id (copies in two suites) must not overwrite each other.
        let count = used.entry(id.clone()).or_insert(0usize);
        *count += 1;
        let name = if *count == 1 {
            format!("TestReport-{id}.json")
        } else {
            format!("TestReport-{id}-{count}.json")
        };
        write_json(&path.join(name), report)?;
    }
    Ok(())
}

fn write_json(path: &Path, value: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot serialise the report")?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}
