//! `sprig validate [--profile URL] [--format text|json] PATH...`: validates
//! FHIR JSON files (and every `.json` file under a folder) with the same
//! passes the gateway runs on a create, loading the definitions once.
//!
//! Exit status: 0 no errors, 1 errors found, 2 usage (bad arguments or a
//! path that does not exist).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
    for file in &files {
        let issues = validate_file(&validator, file, args.profile.as_deref());
        totals.add(&issues);
        let written = match args.format {
            OutputFormat::Json => {
                let line = json!({"file": file.display().to_string(), "outcome": OperationOutcome::new(issues).to_json(None)});
                writeln!(out, "{line}")
            }
            OutputFormat::Text => progress.suspend(|| write_text(&mut out, file, &issues)),
        };
        if written.is_err() {
            // Standard output closed (e.g. piped into `head`): stop quietly.
            break;
        }
        progress.inc(1);
    }
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
