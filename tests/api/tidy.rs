//! Keeps the documentation and the layout honest.

use std::path::Path;

fn source(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).expect("readable")
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir)
        .expect("readable dir")
        .filter_map(Result::ok)
    {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn architecture_md_maps_every_top_level_module() {
    let architecture = source("ARCHITECTURE.md");
    let lib = source("src/lib.rs");
    for line in lib.lines() {
        if let Some(module) = line
            .strip_prefix("pub mod ")
            .and_then(|m| m.strip_suffix(';'))
        {
            assert!(
                architecture.contains(&format!("`{module}`")),
                "ARCHITECTURE.md does not mention the `{module}` module"
            );
        }
    }
}

#[test]
fn pure_modules_stay_pure() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in [
        "src/validation",
        "src/fhir",
        "src/fhirpath",
        "src/search",
        "src/mapping",
        "src/referral",
    ] {
        let mut files = Vec::new();
        rust_files(&root.join(dir), &mut files);
        // The workflow is the one part of `referral` that writes: it runs
        // inside a store transaction.
        files.retain(|f| !f.ends_with("src/referral/workflow.rs"));
        for file in files {
            let text = std::fs::read_to_string(&file).expect("readable");
            for forbidden in [
                "crate::api",
                "crate::store",
                "crate::app",
                "sqlx",
                "axum",
                "tokio",
            ] {
                assert!(
                    !text.contains(forbidden),
                    "{} uses {forbidden}",
                    file.display()
                );
            }
        }
    }
}

#[test]
fn the_readme_test_command_is_what_ci_runs() {
    let readme = source("README.md");
    let ci = source(".ci/run");
    assert!(
        readme.contains("cargo test "),
        "README gives the test command"
    );
    assert!(
        ci.lines().any(|l| l.trim() == "cargo test --locked"),
        ".ci/run runs it"
    );
    assert!(readme.contains("cargo run --release -- serve"));
}
