//! Sprig's validator on the inputs `benches/peer/validate.mjs` gives
//! `@medplum/core`, printing the same JSON lines, so that `benches/peer.sh`
//! can put both side by side from one run.
//!
//! Run: `cargo bench --bench validate_peer` (the R4 examples case needs
//! `R4_EXAMPLES_DIR`, the unpacked `hl7.fhir.r4.examples@4.0.1` package's
//! `package/` folder; `benches/peer.sh` fetches it).
//!
//! Everything runs on this one thread, in a plain loop: no rayon, no
//! harness. Environment: `N` (timed validations of the Bundle, default
//! 1000), `WARMUP` (untimed ones first, default 200), `EXAMPLE_PASSES`
//! (timed passes over the examples, default 1, after one untimed pass), `SLOWEST`
//! (after the examples' timed passes, list that many of the slowest resources on standard
//! error, default 0).
//!
//! Lines on standard output (progress goes to standard error):
//! - `startup`: loading the schema and the 212 core definitions, then the
//!   first validation of a ServiceRequest (which compiles its schema): the
//!   validator's caches (`OnceLock`s) are empty only once per process, so
//!   this is measured first;
//! - `bundle-20`: parse + validate of `benches/data/referral-bundle-20.json`,
//!   in wall time (`p50_us`…) and in CPU time of the process (`cpu_p50_us`…);
//! - `r4-examples`, `r4-clinical-examples`: resources per second over every
//!   resource in the package, and over the clinical examples only (what
//!   `tests/api/r4_examples.rs` checks: no definition Bundles, no
//!   StructureDefinitions, ValueSets…);
//! - `memory`: resident set after start-up and at its peak (`/proc/self/status`);
//! - `schema-all-types`: compiling the schema of all 146 resource types at
//!   once, which Sprig never does (it compiles a type on first use). Its
//!   memory is not reported: freed memory of the examples is reused.

// Tests and benches may unwrap: a failed assumption there is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sprig::fhir::json::{JsonLimits, parse_resource};
use sprig::fhir::resource_types::R4_RESOURCE_TYPES;
use sprig::fhir::{Issue, IssueSeverity, ResourceType};
use sprig::validation::profile::ProfilePass;
use sprig::validation::schema::SchemaPass;
use sprig::validation::{CORE_PROFILE_PREFIX, Validator};

const BUNDLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/benches/data/referral-bundle-20.json"
);

/// Deep enough for every R4 example (as in `tests/api/r4_examples.rs`).
const EXAMPLE_LIMITS: JsonLimits = JsonLimits { max_depth: 127 };

#[path = "common/r4_examples.rs"]
mod selection;
use selection::{DEFINITION_BUNDLES, DEFINITION_TYPES};

/// The allocator the `sprig` binary uses (`sprig::allocator`), so that the
/// figures are the binary's.
#[global_allocator]
static GLOBAL: sprig::allocator::Allocator = sprig::allocator::Allocator {};

fn main() {
    let n = env_usize("N", 1000);
    let warmup = env_usize("WARMUP", 200);
    let example_passes = env_usize("EXAMPLE_PASSES", 1).max(1);

    let bundle = std::fs::read(BUNDLE).expect("benches/data/referral-bundle-20.json is readable");
    let service_request = first_entry_bytes(&bundle);

    // Start-up, first thing in the process: nothing is compiled yet.
    let started = Instant::now();
    let validator = Validator::new(vec![
        Box::new(SchemaPass::load(&[]).expect("the embedded R4 schema loads")),
        Box::new(ProfilePass::load().expect("the embedded R4 core definitions load")),
    ]);
    let definitions = started.elapsed();
    let first = parse_resource(&service_request, JsonLimits::default())
        .expect("the Bundle's ServiceRequest parses");
    let first_issues = validator.validate_resource(&Value::Object(first), None, None);
    let startup = started.elapsed();
    let rss_after_startup = proc_status_kib("VmRSS");
    emit(json!({
        "validator": "sprig",
        "case": "startup",
        "ms": ms(startup),
        "definitions_ms": ms(definitions),
        "first_validation_ms": ms(startup - definitions),
        "first_validation_errors": count(&first_issues, |s| s.is_error()),
    }));

    // The 20-entry referral Bundle.
    let base = format!("{CORE_PROFILE_PREFIX}Bundle");
    let validate_bundle = || {
        let resource = parse_resource(black_box(&bundle), JsonLimits::default())
            .expect("the referral Bundle is valid FHIR JSON");
        validator.validate_resource(&Value::Object(resource), None, Some(&base))
    };
    let issues = validate_bundle();
    for issue in issues.iter().filter(|i| i.severity.is_error()) {
        eprintln!(
            "sprig: bundle-20 error: {} {}",
            issue.expression.as_deref().unwrap_or("-"),
            issue.message
        );
    }
    for _ in 0..warmup {
        black_box(validate_bundle());
    }
    let mut samples = Vec::with_capacity(n);
    let mut cpu_samples = Vec::with_capacity(n);
    for _ in 0..n {
        let cpu = cpu_time();
        let t = Instant::now();
        black_box(validate_bundle());
        samples.push(t.elapsed());
        cpu_samples.push(cpu_time().saturating_sub(cpu));
    }
    let stats = Stats::of(&mut samples);
    let cpu = Stats::of(&mut cpu_samples);
    emit(json!({
        "validator": "sprig",
        "case": "bundle-20",
        "p50_us": stats.p50_us,
        "p99_us": stats.p99_us,
        "mean_us": stats.mean_us,
        "max_us": stats.max_us,
        "cpu_p50_us": cpu.p50_us,
        "cpu_p99_us": cpu.p99_us,
        "cpu_mean_us": cpu.mean_us,
        "n": n,
        "warmup": warmup,
        "errors": count(&issues, |s| s.is_error()),
        "warnings": count(&issues, |s| s == IssueSeverity::Warning),
        "information": count(&issues, |s| s == IssueSeverity::Information),
    }));

    // The R4 examples: read into memory first, then time parse + validate only.
    match std::env::var_os("R4_EXAMPLES_DIR") {
        Some(dir) => {
            let examples = load_examples(Path::new(&dir));
            eprintln!(
                "sprig: {} resources from {} (one untimed pass, then {example_passes} timed)",
                examples.len(),
                Path::new(&dir).display()
            );
            run_examples(&validator, &examples, "r4-examples", example_passes, |_| {
                true
            });
            run_examples(
                &validator,
                &examples,
                "r4-clinical-examples",
                example_passes,
                |e| e.clinical,
            );
        }
        None => eprintln!("sprig: R4_EXAMPLES_DIR is not set: skipping the R4 examples"),
    }

    emit(json!({
        "validator": "sprig",
        "case": "memory",
        "rss_after_startup_mib": mib(rss_after_startup),
        "peak_rss_mib": mib(proc_status_kib("VmHWM")),
        "rss_end_mib": mib(proc_status_kib("VmRSS")),
    }));

    // Last, so it cannot touch the figures above: what eager compilation of
    // every type's schema would cost.
    let all: Vec<ResourceType> = R4_RESOURCE_TYPES
        .iter()
        .map(|name| ResourceType::parse(name).expect("an R4 resource type"))
        .collect();
    let t = Instant::now();
    let eager = SchemaPass::load(&all).expect("every type's schema compiles");
    let elapsed = t.elapsed();
    drop(eager);
    emit(json!({
        "validator": "sprig",
        "case": "schema-all-types",
        "types": all.len(),
        "ms": ms(elapsed),
    }));
}

/// One resource of the examples package, read into memory.
struct Example {
    name: String,
    bytes: Vec<u8>,
    clinical: bool,
}

/// Every JSON file of `dir` that is a resource, sorted by name.
fn load_examples(dir: &Path) -> Vec<Example> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("R4_EXAMPLES_DIR {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.ends_with(".json") && name != "package.json" && name != ".index.json")
        .collect();
    names.sort();
    let mut examples = Vec::new();
    for name in names {
        let bytes = std::fs::read(dir.join(&name))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join(&name).display()));
        // Not timed: only to skip files that are not resources.
        let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        let Some(resource_type) = object.get("resourceType").and_then(Value::as_str) else {
            continue;
        };
        let clinical = !DEFINITION_TYPES.contains(&resource_type)
            && !DEFINITION_BUNDLES.contains(&name.as_str());
        examples.push(Example {
            name,
            bytes,
            clinical,
        });
    }
    assert!(
        !examples.is_empty(),
        "no resources in R4_EXAMPLES_DIR {}",
        dir.display()
    );
    examples
}

/// Validates the selected examples once untimed (compiling the schema of
/// every type met), then `passes` times timed, and prints one line.
fn run_examples(
    validator: &Validator,
    examples: &[Example],
    case: &str,
    passes: usize,
    select: impl Fn(&Example) -> bool,
) {
    let selected: Vec<&Example> = examples.iter().filter(|e| select(e)).collect();
    let bytes: usize = selected.iter().map(|e| e.bytes.len()).sum();
    let validate = |example: &Example| -> (usize, usize) {
        match parse_resource(black_box(&example.bytes), EXAMPLE_LIMITS) {
            Err(error) => (1, error.to_issues("Resource").len()),
            Ok(resource) => {
                let issues = validator.validate_resource(&Value::Object(resource), None, None);
                let errors = count(&issues, |s| s.is_error());
                (usize::from(errors > 0), errors)
            }
        }
    };
    let warm = Instant::now();
    let mut files_with_errors = 0;
    let mut errors = 0;
    let mut with_errors = Vec::new();
    for example in &selected {
        let (file, issues) = validate(example);
        files_with_errors += file;
        errors += issues;
        if file > 0 {
            with_errors.push(example.name.as_str());
        }
    }
    let warmup_seconds = warm.elapsed().as_secs_f64();
    if !with_errors.is_empty() {
        eprintln!(
            "sprig: {case}: {} with errors: {}",
            with_errors.len(),
            with_errors.join(", ")
        );
    }
    let timed = Instant::now();
    for _ in 0..passes {
        for example in &selected {
            black_box(validate(example));
        }
    }
    let seconds = timed.elapsed().as_secs_f64();
    let resources = selected.len() * passes;
    // After the timed passes, so it cannot touch them: where the time goes.
    let slowest = env_usize("SLOWEST", 0);
    if slowest > 0 {
        let mut each: Vec<(Duration, &str, usize)> = selected
            .iter()
            .map(|example| {
                let t = Instant::now();
                black_box(validate(example));
                (t.elapsed(), example.name.as_str(), example.bytes.len())
            })
            .collect();
        each.sort_unstable_by_key(|(time, ..)| std::cmp::Reverse(*time));
        let total: Duration = each.iter().map(|(d, ..)| *d).sum();
        for (time, name, bytes) in each.iter().take(slowest) {
            eprintln!(
                "sprig: {case}: {:>9.1} µs {:>5.1} % {:>9} bytes  {name}",
                time.as_secs_f64() * 1e6,
                100.0 * time.as_secs_f64() / total.as_secs_f64(),
                bytes
            );
        }
    }
    emit(json!({
        "validator": "sprig",
        "case": case,
        "resources": selected.len(),
        "passes": passes,
        "mib": round(bytes as f64 / 1_048_576.0, 1),
        "seconds": round(seconds, 3),
        "per_second": round(resources as f64 / seconds, 1),
        "mib_per_second": round((bytes * passes) as f64 / 1_048_576.0 / seconds, 2),
        "first_pass_seconds": round(warmup_seconds, 3),
        "files_with_errors": files_with_errors,
        "errors": errors,
    }));
}

/// The first entry's resource (the ServiceRequest) on its own, as bytes.
fn first_entry_bytes(bundle: &[u8]) -> Vec<u8> {
    let bundle: Value = serde_json::from_slice(bundle).expect("the referral Bundle is JSON");
    let resource = &bundle["entry"][0]["resource"];
    assert_eq!(
        resource["resourceType"], "ServiceRequest",
        "the Bundle's first entry is the referral"
    );
    serde_json::to_vec(resource).expect("a Value serialises")
}

struct Stats {
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
    max_us: f64,
}

impl Stats {
    /// Nearest-rank percentiles (the same rule as `benches/peer/validate.mjs`).
    fn of(samples: &mut [Duration]) -> Self {
        assert!(!samples.is_empty(), "N must be at least 1");
        samples.sort_unstable();
        let rank = |q: f64| {
            let index = (q * samples.len() as f64).ceil() as usize;
            samples[index.clamp(1, samples.len()) - 1]
        };
        let us = |d: Duration| round(d.as_secs_f64() * 1e6, 1);
        let total: Duration = samples.iter().sum();
        Self {
            p50_us: us(rank(0.50)),
            p99_us: us(rank(0.99)),
            mean_us: us(total / samples.len() as u32),
            max_us: us(samples[samples.len() - 1]),
        }
    }
}

/// CPU time this process has used (`CLOCK_PROCESS_CPUTIME_ID`): unlike wall
/// time, it leaves out the time the process waited while other processes ran,
/// which on a shared machine is most of the tail. The Node side reads the
/// same with `process.cpuUsage()`.
fn cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec, which outlives the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    Duration::new(
        u64::try_from(now.tv_sec).expect("CPU seconds are not negative"),
        u32::try_from(now.tv_nsec).expect("nanoseconds are below 1e9"),
    )
}

fn count(issues: &[Issue], which: impl Fn(IssueSeverity) -> bool) -> usize {
    issues.iter().filter(|i| which(i.severity)).count()
}

fn emit(line: Value) {
    println!("{line}");
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
        Err(_) => default,
    }
}

/// A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`); 0 if unreadable.
fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    round(kib as f64 / 1024.0, 1)
}

fn ms(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1e3, 2)
}

fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}
