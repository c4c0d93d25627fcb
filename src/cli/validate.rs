//! `sprig validate [--profile URL] [--format text|json] PATH...`: validates
//! FHIR JSON files (and every `.json` file under a folder) with the same
//! passes the gateway runs on a create, loading the definitions once.
//!
//! Files are validated on `--jobs` threads (one per core by default) and
//! reported in the order they were listed, whatever order they finish in.
//!
//! Exit status: 0 no errors, 1 errors found, 2 usage (bad arguments or a
//! path that does not exist).

use std::collections::BTreeMap;
use std::io::Write;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::fhir::json::{JsonLimits, parse_resource};
use crate::fhir::{Issue, IssueSeverity, IssueType, OperationOutcome};
use crate::validation::Validator;
use crate::validation::profile::ProfilePass;
use crate::validation::schema::SchemaPass;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Readable lines: each file with problems, its issues, then a summary.
    Text,
    /// One JSON object per file on standard output: `{"file": …, "outcome": …}`.
    Json,
}

/// Arguments of `sprig validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Validate against this profile as well as the resource's base definition.
    #[arg(long, value_name = "URL")]
    profile: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
    /// Files validated at once (default: one per core).
    #[arg(long, short = 'j', value_name = "N")]
    jobs: Option<NonZeroUsize>,
    /// Files, or folders searched for `.json` files.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
}

/// Runs `sprig validate`.
pub fn run(args: ValidateArgs) -> ExitCode {
    let mut files = Vec::new();
    for path in &args.paths {
        if let Err(message) = collect(path, &mut files) {
            eprintln!("sprig validate: {message}");
            return ExitCode::from(2);
        }
    }
    let validator = match (SchemaPass::load(&[]), ProfilePass::load()) {
        (Ok(schema), Ok(profiles)) => Validator::new(vec![Box::new(schema), Box::new(profiles)]),
        (Err(e), _) => return internal(&e.to_string()),
        (_, Err(e)) => return internal(&e.to_string()),
    };

    let progress = if files.len() > 1 {
        ProgressBar::new(files.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} files {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut totals = Totals::default();
    let jobs = args
        .jobs
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get)
        .min(files.len().max(1));
    let profile = args.profile.as_deref();
    each_in_order(
        &files,
        jobs,
        |file| validate_file(&validator, file, profile),
        |file, issues| {
            totals.add(&issues);
            let written = match args.format {
                OutputFormat::Json => {
                    let line = json!({"file": file.display().to_string(), "outcome": OperationOutcome::new(issues).to_json(None)});
                    writeln!(out, "{line}")
                }
                OutputFormat::Text => progress.suspend(|| write_text(&mut out, file, &issues)),
            };
            progress.inc(1);
            // Standard output closed (e.g. piped into `head`): stop quietly.
            written.is_ok()
        },
    );
    progress.finish_and_clear();
    let summary = totals.summary();
    match args.format {
        OutputFormat::Text => {
            let _ = writeln!(out, "{summary}");
        }
        OutputFormat::Json => eprintln!("{summary}"),
    }
    if totals.files_with_errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs `work` on every file on `jobs` threads and hands each result to
/// `report` in the files' order, as soon as every earlier one has been
/// reported. `report` returning `false` stops the run: each worker finishes
/// the file in hand, fails to hand it over and starts no other.
fn each_in_order<T: Send>(
    files: &[PathBuf],
    jobs: usize,
    work: impl Fn(&Path) -> T + Sync,
    mut report: impl FnMut(&Path, T) -> bool,
) {
    if jobs <= 1 {
        for file in files {
            if !report(file, work(file)) {
                return;
            }
        }
        return;
    }
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let (done, results) = mpsc::channel::<(usize, T)>();
        for _ in 0..jobs {
            let done = done.clone();
            let (next, work) = (&next, &work);
            scope.spawn(move || {
                // Ends when the files run out or the receiver is gone.
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(file) = files.get(index) else {
                        return;
                    };
                    if done.send((index, work(file))).is_err() {
                        return;
                    }
                }
            });
        }
        // Only the workers hold senders now: the loop ends when they are done.
        drop(done);
        // Results that finished before an earlier file's did wait here.
        let mut waiting = BTreeMap::new();
        let mut reported = 0;
        for (index, result) in results {
            waiting.insert(index, result);
            while let Some(result) = waiting.remove(&reported) {
                if !report(&files[reported], result) {
                    // Dropping the receiver stops the workers.
                    return;
                }
                reported += 1;
            }
        }
    });
}

fn internal(message: &str) -> ExitCode {
    eprintln!("sprig validate: cannot load the bundled definitions: {message}");
    ExitCode::from(1)
}

/// Adds `path` (a file, or every `.json` file under a folder, sorted).
/// Inside a folder, symbolic links to folders are not followed (a link
/// loop would never end); links to files are.
fn collect(path: &Path, files: &mut Vec<PathBuf>) -> Result<(), String> {
    let metadata = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if metadata.is_file() {
        files.push(path.to_owned());
        return Ok(());
    }
    let mut entries: Vec<(PathBuf, bool)> = std::fs::read_dir(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .filter_map(Result::ok)
        .map(|entry| {
            let real_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            (entry.path(), real_dir)
        })
        .collect();
    entries.sort();
    for (entry, real_dir) in entries {
        if real_dir {
            collect(&entry, files)?;
        } else if entry.extension().is_some_and(|e| e == "json") && entry.is_file() {
            files.push(entry);
        }
    }
    Ok(())
}

fn validate_file(validator: &Validator, file: &Path, profile: Option<&str>) -> Vec<Issue> {
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) => {
            return vec![
                Issue::error(
                    IssueType::Exception,
                    "file-unreadable",
                    format!("cannot read the file: {e}"),
                )
                .with_severity(IssueSeverity::Fatal),
            ];
        }
    };
    match parse_resource(&bytes, JsonLimits::default()) {
        Err(error) => error.to_issues("Resource"),
        Ok(resource) => validator.validate_resource(&Value::Object(resource), None, profile),
    }
}

fn write_text(out: &mut impl Write, file: &Path, issues: &[Issue]) -> std::io::Result<()> {
    let shown: Vec<&Issue> = issues
        .iter()
        .filter(|i| i.severity != IssueSeverity::Information)
        .collect();
    if shown.is_empty() {
        return Ok(());
    }
    let errors = shown.iter().filter(|i| i.severity.is_error()).count();
    writeln!(
        out,
        "{}: {errors} error(s), {} warning(s)",
        file.display(),
        shown.len() - errors
    )?;
    for issue in shown {
        let place = match (&issue.expression, issue.position) {
            (Some(expression), Some((line, column))) => {
                format!("{expression} (line {line}, column {column})")
            }
            (Some(expression), None) => expression.clone(),
            (None, Some((line, column))) => format!("line {line}, column {column}"),
            (None, None) => String::new(),
        };
        writeln!(
            out,
            "  {:<8} {place}: {} [{}]",
            issue.severity.code(),
            issue.message,
            issue.message_id
        )?;
    }
    Ok(())
}

#[derive(Default)]
struct Totals {
    files: usize,
    files_with_errors: usize,
    errors: usize,
    warnings: usize,
}

impl Totals {
    fn add(&mut self, issues: &[Issue]) {
        self.files += 1;
        let errors = issues.iter().filter(|i| i.severity.is_error()).count();
        self.errors += errors;
        self.warnings += issues
            .iter()
            .filter(|i| i.severity == IssueSeverity::Warning)
            .count();
        if errors > 0 {
            self.files_with_errors += 1;
        }
    }

    fn summary(&self) -> String {
        format!(
            "{} file(s): {} valid, {} with errors ({} error(s), {} warning(s))",
            self.files,
            self.files - self.files_with_errors,
            self.files_with_errors,
            self.errors,
            self.warnings
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn files(n: usize) -> Vec<PathBuf> {
        (0..n).map(|i| PathBuf::from(format!("{i}.json"))).collect()
    }

    #[test]
    fn results_are_reported_in_the_files_order_whatever_order_they_finish_in() {
        let files = files(12);
        for jobs in [1, 2, 5] {
            let mut seen = Vec::new();
            each_in_order(
                &files,
                jobs,
                |file| {
                    let n: u64 = file
                        .to_string_lossy()
                        .trim_end_matches(".json")
                        .parse()
                        .unwrap_or(0);
                    // Earlier files take longer, so they finish last.
                    std::thread::sleep(Duration::from_millis(12 - n));
                    n
                },
                |file, n| {
                    assert_eq!(file, Path::new(&format!("{n}.json")));
                    seen.push(n);
                    true
                },
            );
            assert_eq!(seen, (0..12).collect::<Vec<u64>>(), "jobs {jobs}");
        }
    }

    #[test]
    fn a_report_that_fails_stops_the_run() {
        let files = files(200);
        for jobs in [1, 3] {
            let started = AtomicUsize::new(0);
            let mut reported = 0;
            each_in_order(
                &files,
                jobs,
                |_| {
                    started.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                },
                |_, ()| {
                    reported += 1;
                    reported < 3
                },
            );
            assert_eq!(reported, 3, "jobs {jobs}");
            assert!(started.load(Ordering::Relaxed) < 200, "jobs {jobs}");
        }
    }
}
