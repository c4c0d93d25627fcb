//! The real `sprig` binary: `serve --listen 127.0.0.1:0` reports its port,
//! SIGTERM stops it cleanly, and a restart on the same file finds the data.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::{json_body, sample_referral_text};

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) address: String,
}

pub(crate) fn start(db: &std::path::Path, extra_env: &[(&str, &str)]) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sprig"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--database"])
        .arg(db)
        .env("SPRIG_LOG__FORMAT", "json")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in extra_env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("sprig starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let address = loop {
        let line = lines
            .next()
            .expect("sprig logged before exiting")
            .expect("utf-8 log line");
        let entry: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("JSON log line: {line}"));
        if let Some(address) = entry["fields"]["address"].as_str() {
            break address.to_owned();
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server {
        child,
        address: format!("http://{address}"),
    }
}

pub(crate) fn terminate(mut server: Server) -> std::process::ExitStatus {
    let pid = i32::try_from(server.child.id()).expect("pid");
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    for _ in 0..100 {
        if let Some(status) = server.child.try_wait().expect("wait") {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = server.child.kill();
    panic!("sprig did not stop within 5 s of SIGTERM");
}

#[tokio::test]
async fn the_binary_serves_stops_on_sigterm_and_keeps_data() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let db = dir.path().join("binary.db");
    let client = reqwest::Client::new();

    let server = start(&db, &[]);
    assert!(
        !server.address.ends_with(":0"),
        "the log names the real port: {}",
        server.address
    );
    let response = client
        .post(format!("{}/fhir/ServiceRequest", server.address))
        .header("content-type", "application/fhir+json")
        .body(sample_referral_text())
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 201);
    let id = json_body(response).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let status = terminate(server);
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");

    let server = start(&db, &[]);
    let read = client
        .get(format!("{}/fhir/ServiceRequest/{id}", server.address))
        .send()
        .await
        .expect("sent");
    assert_eq!(read.status(), 200);
    assert!(terminate(server).success());
}

#[test]
fn bad_configuration_stops_start_up_with_a_clear_message() {
    let output = Command::new(env!("CARGO_BIN_EXE_sprig"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database",
            "/nonexistent/x.db",
        ])
        .env("SPRIG_LIMITS__MAX_JSON_DEPTH", "1000")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("limits.max_json_depth"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_sprig"))
        .args(["serve", "--config", "/nonexistent/sprig.toml"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not exist"));
}

fn sprig_validate(args: &[&str], dir: &std::path::Path) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sprig"))
        .arg("validate")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn sprig_validate_checks_files_and_folders() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let (code, stdout, _) = sprig_validate(&[examples], dir.path());
    assert_eq!(code, Some(0), "{stdout}");
    let count = std::fs::read_dir(examples).expect("examples").count();
    assert!(
        stdout.contains(&format!("{count} file(s): {count} valid, 0 with errors")),
        "{stdout}"
    );

    std::fs::create_dir(dir.path().join("batch")).expect("folder");
    std::fs::write(
        dir.path().join("batch/missing-status.json"),
        r#"{"resourceType":"ServiceRequest","intent":"order","subject":{"reference":"Patient/1"}}"#,
    )
    .expect("written");
    std::fs::write(
        dir.path().join("batch/broken.json"),
        "{\"resourceType\": \"Patient\",\n \"gender\": }",
    )
    .expect("written");
    std::fs::write(
        dir.path().join("batch/notes.txt"),
        "not JSON, not looked at",
    )
    .expect("written");
    let (code, stdout, _) = sprig_validate(&["batch", examples], dir.path());
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("batch/missing-status.json: 1 error(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ServiceRequest.status: ServiceRequest.status is required"),
        "{stdout}"
    );
    assert!(stdout.contains("line 2, column 12"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "{} file(s): {count} valid, 2 with errors",
            count + 2
        )),
        "{stdout}"
    );

    let (code, stdout, stderr) = sprig_validate(&["--format", "json", "batch"], dir.path());
    assert_eq!(code, Some(1));
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["file"], "batch/broken.json");
    assert_eq!(
        lines[1]["outcome"]["issue"][0]["expression"][0],
        "ServiceRequest.status"
    );
    assert!(
        stderr.contains("2 file(s)"),
        "the summary goes to stderr: {stderr}"
    );

    // Several files at once, reported in the same order with the same findings.
    let (_, one_at_a_time, _) = sprig_validate(
        &["--jobs", "1", "--format", "json", "batch", examples],
        dir.path(),
    );
    let (code, three_at_a_time, _) = sprig_validate(
        &["-j", "3", "--format", "json", "batch", examples],
        dir.path(),
    );
    assert_eq!(code, Some(1));
    assert_eq!(one_at_a_time.lines().count(), count + 2);
    assert_eq!(three_at_a_time, one_at_a_time);
    let (code, _, stderr) = sprig_validate(&["--jobs", "0", "batch"], dir.path());
    assert_eq!(code, Some(2), "{stderr}");

    // A symbolic link back up the tree is not followed (it would never end).
    std::os::unix::fs::symlink(dir.path(), dir.path().join("batch/loop")).expect("symlink");
    let (code, stdout, _) = sprig_validate(&["batch"], dir.path());
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("2 file(s)"), "{stdout}");

    let (code, _, _) = sprig_validate(
        &[
            "--profile",
            "http://example.org/StructureDefinition/x",
            examples,
        ],
        dir.path(),
    );
    assert_eq!(code, Some(1), "an unknown profile is an error");
    let (code, _, stderr) = sprig_validate(&["no-such-file.json"], dir.path());
    assert_eq!(code, Some(2), "{stderr}");
    let (code, _, _) = sprig_validate(&[], dir.path());
    assert_eq!(code, Some(2));
}

fn sprig(args: &[&str], db: &std::path::Path, stdin: &str) -> (Option<i32>, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sprig"))
        .args(args)
        .arg("--database")
        .arg(db)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sprig runs");
    // A command that reads no input (`staff list`) may have exited before this
    // write: a broken pipe then is not a failure of the test.
    match child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("write stdin: {e}"),
        _ => {}
    }
    let output = child.wait_with_output().expect("sprig finishes");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn staff_accounts_are_managed_and_the_audit_log_exported_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("sprig.db");
    let password = "a long enough password";
    let add = [
        "staff",
        "add",
        "--username",
        "amara",
        "--name",
        "Amara Okafor",
        "--role",
        "link_worker",
    ];
    let (code, out, err) = sprig(&add, &db, &format!("{password}\n"));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("added amara"), "{out}");
    assert!(!out.contains(password) && !err.contains(password));
    // Taken, too short, an unknown role.
    let (code, _, err) = sprig(&add, &db, &format!("{password}\n"));
    assert_eq!(code, Some(1));
    assert!(err.contains("already exists"), "{err}");
    let short = [
        "staff",
        "add",
        "--username",
        "bo",
        "--name",
        "Bo",
        "--role",
        "administrator",
    ];
    let (code, _, err) = sprig(&short, &db, "short\n");
    assert_eq!(code, Some(1));
    assert!(err.contains("at least 12"), "{err}");
    let (code, _, _) = sprig(
        &[
            "staff",
            "add",
            "--username",
            "cy",
            "--name",
            "Cy",
            "--role",
            "root",
        ],
        &db,
        &format!("{password}\n"),
    );
    assert_eq!(code, Some(2));

    let (code, out, _) = sprig(&["staff", "list"], &db, "");
    assert_eq!(code, Some(0));
    assert_eq!(out, "amara\tlink_worker\tenabled\tAmara Okafor\n");
    let (code, _, _) = sprig(&["staff", "disable", "amara"], &db, "");
    assert_eq!(code, Some(0));
    let (_, out, _) = sprig(&["staff", "list"], &db, "");
    assert!(out.contains("disabled"), "{out}");
    let (code, _, _) = sprig(&["staff", "disable", "nobody"], &db, "");
    assert_eq!(code, Some(1));

    // The audit log, one JSON object per line.
    let options = sprig::store::StoreOptions {
        database: db.display().to_string(),
        busy_timeout: Duration::from_secs(5),
        max_read_connections: 1,
        durable_commits: false,
        sqlite_caches: sprig::store::SqliteCaches::default(),
    };
    let store = sprig::store::Store::open(&options).await.expect("store");
    for status in [200, 404] {
        let record = sprig::store::AuditRecord {
            client_id: Some("gp-a".into()),
            search_params: vec!["patient".into()],
            ..sprig::store::AuditRecord::new("search-type", status)
        };
        store.record_audit(&record).await.expect("audit");
    }
    store.close().await;
    let (code, out, err) = sprig(
        &[
            "audit",
            "export",
            "--since",
            "2020-01-01",
            "--format",
            "ndjson",
        ],
        &db,
        "",
    );
    assert_eq!(code, Some(0), "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["client_id"], "gp-a");
    assert_eq!(rows[1]["outcome"], "4");
    let (_, out, _) = sprig(&["audit", "export", "--since", "2999-01-01"], &db, "");
    assert!(out.is_empty());
}
