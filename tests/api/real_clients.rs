//! Real FHIR client libraries against a running Sprig: fhir-kit-client (npm) and fhirpy
//! (PyPI) each run their script in `tests/clients/` through capability, create,
//! resubmission, read, vread, search with paging to the end, transaction,
//! `$process-message`, `$validate`, update and history. Every call must succeed.
//!
//! The packages are installed once, at the versions pinned in `tests/clients/`, into
//! Cargo's test temp dir (as the R4 examples test fetches its package).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::spawn_app;

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

pub fn run(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what} could not start: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

/// A folder holding the Node scripts beside their installed `node_modules` (shared with
/// `console_browser`). Installed again whenever `package-lock.json` changes.
pub fn node_client() -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("real-clients/node");
    std::fs::create_dir_all(&root).expect("cache folder");
    // Two tests in this process, and the PostgreSQL half of the suite in another,
    // may get here at once on a fresh machine: one installs, the others wait.
    let _installing = install_lock(&root);
    for file in [
        "package.json",
        "package-lock.json",
        "fhirkit.mjs",
        "console.mjs",
        "console_reports.mjs",
    ] {
        let wanted = std::fs::read(clients_dir().join(file)).expect("client file");
        // Rewritten only when it changed, so no script is truncated under a
        // test that is running it.
        if std::fs::read(root.join(file)).ok().as_deref() != Some(wanted.as_slice()) {
            std::fs::write(root.join(file), &wanted).expect("copy client file");
        }
    }
    let lock = std::fs::read(root.join("package-lock.json")).expect("lock");
    let installed = root.join("node_modules/.installed-lock.json");
    if std::fs::read(&installed).ok().as_deref() != Some(lock.as_slice()) {
        run(
            Command::new("npm")
                .args(["ci", "--silent", "--no-audit", "--no-fund"])
                .current_dir(&root),
            "npm ci",
        );
        std::fs::write(&installed, &lock).expect("install marker");
    }
    root
}

/// An exclusive lock on `folder`'s installation, held until dropped (across
/// processes: the suite runs once per backend, side by side).
fn install_lock(folder: &Path) -> std::fs::File {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(folder.join(".install.lock"))
        .expect("install lock file");
    file.lock().expect("install lock");
    file
}

/// A folder of installed Python packages, for `PYTHONPATH`.
fn python_packages() -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("real-clients/python");
    std::fs::create_dir_all(&root).expect("cache folder");
    let _installing = install_lock(&root);
    if !root.join("fhirpy").exists() {
        run(
            Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .arg("--target")
                .arg(&root)
                .arg("-r")
                .arg(clients_dir().join("requirements.txt")),
            "pip install",
        );
    }
    root
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

#[tokio::test]
async fn fhir_kit_client_does_everything_a_node_integration_does() {
    let folder = tokio::task::spawn_blocking(node_client)
        .await
        .expect("install");
    let app = spawn_app().await;
    let base = app.url("/fhir");
    let output = tokio::task::spawn_blocking(move || {
        run(
            Command::new("node")
                .arg(folder.join("fhirkit.mjs"))
                .arg(base)
                .arg(examples()),
            "fhir-kit-client",
        )
    })
    .await
    .expect("client ran");
    assert!(output.contains("ok history"), "{output}");
}

#[tokio::test]
async fn fhirpy_does_everything_a_python_integration_does() {
    let packages = tokio::task::spawn_blocking(python_packages)
        .await
        .expect("install");
    let app = spawn_app().await;
    let base = app.url("/fhir");
    let output = tokio::task::spawn_blocking(move || {
        run(
            Command::new("python3")
                .arg(clients_dir().join("fhirpy_client.py"))
                .arg(base)
                .arg(examples())
                .env("PYTHONPATH", packages),
            "fhirpy",
        )
    })
    .await
    .expect("client ran");
    assert!(output.contains("ok history"), "{output}");
}
