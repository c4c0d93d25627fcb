//! Operating Sprig (issue 20 §5): `sprig migrate [--check]`, `sprig backup` while a
//! server takes referrals and `sprig restore` into a fresh place, erasure of one
//! referral (`POST /api/referrals/{id}/erasure`), and retention (`sprig purge
//! --dry-run`, and the server's own purge at start-up), on both backends where the
//! feature has both.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::{
    TestApp, database_for, json_body, on_postgres, sample_referral_text, spawn_app, spawn_app_in,
};

/// Runs the `sprig` binary with `args` and `--database database`; (exit code, stdout,
/// stderr).
fn sprig(args: &[&str], database: &str, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sprig"));
    command
        .args(args)
        .arg("--database")
        .arg(database)
        .env_remove("RUST_LOG")
        .env_remove("SPRIG_CONFIG")
        .stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("sprig runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn migrate_check_reports_pending_migrations_and_migrate_applies_them() {
    let dir = TempDir::new().expect("dir");
    let database = database_for(dir.path()).await;
    let (code, out, err) = sprig(&["migrate", "--check"], &database, &[]);
    assert_eq!(code, Some(1), "pending migrations exit 1: {out} {err}");
    assert!(
        out.contains("pending") && out.contains("0001 (resources)"),
        "{out}"
    );
    if !on_postgres() {
        assert!(
            !dir.path().join("sprig.db").exists(),
            "a check makes no database"
        );
    }
    let (code, out, err) = sprig(&["migrate"], &database, &[]);
    assert_eq!(code, Some(0), "{out} {err}");
    assert!(out.contains("applied"), "{out}");
    let (code, out, err) = sprig(&["migrate", "--check"], &database, &[]);
    assert_eq!(code, Some(0), "{out} {err}");
    assert!(out.contains("up to date"), "{out}");
    // A server starts on the migrated database and takes a referral.
    let app = spawn_app_in(Arc::new(dir), |_| {}).await;
    assert_eq!(
        app.post_referral(sample_referral_text()).await.status(),
        201
    );
    app.stop().await;
}

#[tokio::test]
async fn a_backup_taken_while_serving_restores_everything_acknowledged_before_it() {
    if on_postgres() {
        // PostgreSQL is backed up with pg_dump; `sprig backup` says so.
        let dir = TempDir::new().expect("dir");
        let database = database_for(dir.path()).await;
        let (code, _, err) = sprig(&["backup", "/tmp/never"], &database, &[]);
        assert_eq!(code, Some(1));
        assert!(err.contains("pg_dump"), "{err}");
        return;
    }
    let app = spawn_app().await;
    let db = app.db_path.display().to_string();
    // Referrals keep arriving while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, url, stop) = (
            app.client.clone(),
            app.url("/fhir/ServiceRequest"),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let response = client
                    .post(&url)
                    .header("content-type", "application/fhir+json")
                    .body(sample_referral_text())
                    .send()
                    .await
                    .expect("post");
                assert_eq!(response.status(), 201);
                let id = json_body(response).await["id"]
                    .as_str()
                    .expect("id")
                    .to_owned();
                acknowledged.push((std::time::Instant::now(), id));
            }
            acknowledged
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let backups = TempDir::new().expect("dir");
    let backup = backups.path().join("sprig-backup.db");
    let started = std::time::Instant::now();
    let (code, out, err) = {
        let (backup, db) = (backup.display().to_string(), db.clone());
        tokio::task::spawn_blocking(move || sprig(&["backup", &backup], &db, &[]))
            .await
            .expect("backup ran")
    };
    assert_eq!(code, Some(0), "{out} {err}");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let acknowledged = writer.await.expect("writer");
    let before: Vec<&String> = acknowledged
        .iter()
        .filter(|(at, _)| *at < started)
        .map(|(_, id)| id)
        .collect();
    assert!(before.len() >= 2, "referrals arrived before the backup");
    assert!(
        acknowledged.len() > before.len(),
        "and went on arriving while it ran"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&backup)
            .expect("backup")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "a backup holds patient data");
    }
    // A backup never overwrites, and a restore never replaces a database in use.
    let (code, _, err) = sprig(&["backup", &backup.display().to_string()], &db, &[]);
    assert_eq!(code, Some(1), "{err}");
    let (code, _, err) = sprig(&["restore", &backup.display().to_string()], &db, &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--force"), "{err}");
    let (code, _, err) = sprig(
        &["restore", &backup.display().to_string(), "--force"],
        &db,
        &[],
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("in use"), "{err}");
    // Something that is not a backup is refused.
    let junk = backups.path().join("junk.db");
    std::fs::write(&junk, b"not a database at all").expect("junk");
    let fresh = TempDir::new().expect("dir");
    let target = fresh.path().join("sprig.db").display().to_string();
    let (code, _, err) = sprig(&["restore", &junk.display().to_string()], &target, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(!fresh.path().join("sprig.db").exists());
    app.stop().await;

    let (code, out, err) = sprig(&["restore", &backup.display().to_string()], &target, &[]);
    assert_eq!(code, Some(0), "{out} {err}");
    let restored = spawn_app_in(Arc::new(fresh), |_| {}).await;
    for id in &before {
        let response = restored.get(&format!("/fhir/ServiceRequest/{id}")).await;
        assert_eq!(
            response.status(),
            200,
            "referral {id} acknowledged before the backup"
        );
        let task = json_body(
            restored
                .get(&format!("/fhir/Task?based-on=ServiceRequest/{id}"))
                .await,
        )
        .await;
        assert_eq!(task["total"], 1, "its Task too");
    }
    // The restored database takes new referrals.
    assert_eq!(
        restored
            .post_referral(sample_referral_text())
            .await
            .status(),
        201
    );
    restored.stop().await;
}

/// A transaction Bundle referral with its own identifier, for the same Patient and
/// practice as every other one: (ServiceRequest id, Patient id).
async fn bundle_referral(app: &TestApp, identifier: &str) -> (String, String) {
    let bundle = crate::workflow::referral_bundle(identifier);
    let response = app
        .client
        .post(app.url("/fhir"))
        .header("content-type", "application/fhir+json")
        .body(bundle.to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 200);
    let answer = json_body(response).await;
    let location = |i: usize| {
        answer["entry"][i]["response"]["location"]
            .as_str()
            .expect("location")
            .split('/')
            .nth_back(2)
            .expect("id")
            .to_owned()
    };
    (location(0), location(1))
}

async fn count(app: &TestApp, sql: &str, id: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(id.to_owned())
        .fetch_one(&app.db_pool().await)
        .await
        .expect("count");
    n
}

#[tokio::test]
async fn an_erased_referral_is_gone_with_everything_that_belongs_to_it_and_audited() {
    let app = spawn_app().await;
    let (first, patient) = bundle_referral(&app, "ERASE-1").await;
    let (second, same_patient) = bundle_referral(&app, "ERASE-2").await;
    assert_eq!(patient, same_patient, "one Patient, shared");
    for (path, body) in [
        ("transitions", json!({"to": "accepted"})),
        ("transitions", json!({"to": "contacted"})),
        ("notes", json!({"text": "Rang, left a message"})),
        (
            "outcomes",
            json!({"measure": "swemwbs", "answers": [3,3,2,3,4,3,3], "recorded_at": "2026-11-25T10:00:00Z"}),
        ),
    ] {
        let response = app
            .client
            .post(app.url(&format!("/api/referrals/{first}/{path}")))
            .json(&body)
            .send()
            .await
            .expect("post");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
    }
    let detail = json_body(app.get(&format!("/api/referrals/{first}")).await).await;
    let task = detail["fhir"]["task"]
        .as_str()
        .and_then(|t| t.rsplit('/').next())
        .expect("the referral's Task")
        .to_owned();
    assert_eq!(app.get(&format!("/fhir/Task/{task}")).await.status(), 200);

    // Bad requests erase nothing.
    let erase = |id: &str, body: Value| {
        app.client
            .post(app.url(&format!("/api/referrals/{id}/erasure")))
            .json(&body)
            .send()
    };
    assert_eq!(
        erase(&first, json!({"reason": "because"}))
            .await
            .expect("post")
            .status(),
        400
    );
    assert_eq!(
        erase(
            &first,
            json!({"reason": "sent-in-error", "reference": "Mrs Jane Smith asked"})
        )
        .await
        .expect("post")
        .status(),
        400
    );
    assert_eq!(
        app.get(&format!("/fhir/ServiceRequest/{first}"))
            .await
            .status(),
        200
    );

    let response = erase(
        &first,
        json!({"reason": "sent-in-error", "reference": "DPO-2026-14"}),
    )
    .await
    .expect("post");
    assert_eq!(response.status(), 200);
    let erased = json_body(response).await;
    assert_eq!(erased["erased"]["referrals"], 1);
    assert!(
        erased["erased"]["versions"].as_u64().expect("versions") >= 4,
        "{erased}"
    );
    assert_eq!(erased["erased"]["outcomes"], 1);

    // Every read says 404, as if it had never come; the GP's pull no longer has it.
    assert_eq!(
        app.get(&format!("/fhir/ServiceRequest/{first}"))
            .await
            .status(),
        404
    );
    assert_eq!(
        app.get(&format!("/fhir/ServiceRequest/{first}/_history/1"))
            .await
            .status(),
        404
    );
    assert_eq!(
        app.get(&format!("/api/referrals/{first}")).await.status(),
        404
    );
    assert_eq!(app.get(&format!("/fhir/Task/{task}")).await.status(), 404);
    let pull = json_body(
        app.get(&format!("/fhir/Task?based-on=ServiceRequest/{first}"))
            .await,
    )
    .await;
    assert_eq!(pull["total"], 0);
    let pull = json_body(app.get("/fhir/Task?_lastUpdated=gt2000-01-01").await).await;
    assert_eq!(pull["total"], 1, "only the other referral's Task: {pull}");
    let observations = json_body(app.get("/fhir/Observation").await).await;
    assert_eq!(observations["total"], 0);
    for (table, column) in [
        ("referrals", "id"),
        ("referral_stage_history", "referral_id"),
        ("referral_notes", "referral_id"),
        ("referral_submissions", "referral_id"),
        ("referral_patients", "referral_id"),
        ("outcome_measures", "referral_id"),
        ("outbox", "referral_id"),
        ("search_references", "id"),
        ("resource_versions", "id"),
    ] {
        let left = count(
            &app,
            &format!("SELECT COUNT(*) FROM {table} WHERE {column} = $1"),
            &first,
        )
        .await;
        assert_eq!(left, 0, "{table} still holds the erased referral");
    }
    // Its Provenance (who changed the erased versions) goes with it.
    // The Task's later versions came from staff, not the submission: theirs too.
    for target in [&first, &task] {
        let provenance_left = count(
            &app,
            "SELECT COUNT(*) FROM search_references \
             WHERE resource_type = 'Provenance' AND param = 'target' AND target_id = $1",
            target,
        )
        .await;
        assert_eq!(provenance_left, 0, "Provenance of erased {target}");
    }
    // The shared Patient and the other referral stay.
    assert_eq!(
        app.get(&format!("/fhir/Patient/{patient}")).await.status(),
        200
    );
    // So does the practice's Organization, which the other referral's resources name.
    let practice =
        "/fhir/Organization?identifier=https://fhir.nhs.uk/Id/ods-organization-code|Y12345";
    assert_eq!(json_body(app.get(practice).await).await["total"], 1);
    assert_eq!(
        app.get(&format!("/fhir/ServiceRequest/{second}"))
            .await
            .status(),
        200
    );
    assert_eq!(
        app.get(&format!("/api/referrals/{second}")).await.status(),
        200
    );

    // The audit says who, which referral, why and how much: no content.
    let (interaction, detail, referral_ids): (String, Option<String>, String) = sqlx::query_as(
        "SELECT interaction, detail, referral_ids FROM audit_events \
         WHERE interaction = 'api:erase' AND status = 200",
    )
    .fetch_one(&app.db_pool().await)
    .await
    .expect("the erasure's audit row");
    assert_eq!(interaction, "api:erase");
    let detail = detail.expect("detail");
    assert!(
        detail.contains("reason=sent-in-error") && detail.contains("reference=DPO-2026-14"),
        "{detail}"
    );
    assert!(detail.contains("referrals=1"), "{detail}");
    assert!(referral_ids.contains(&first));
    assert!(
        !detail.contains("9912003888") && !detail.contains("message"),
        "{detail}"
    );

    // Erasing the other referral takes the Patient it no longer shares; again is a 404.
    assert_eq!(
        erase(&second, json!({"reason": "wrong-patient"}))
            .await
            .expect("post")
            .status(),
        200
    );
    assert_eq!(
        app.get(&format!("/fhir/Patient/{patient}")).await.status(),
        404
    );
    assert_eq!(
        erase(&second, json!({"reason": "wrong-patient"}))
            .await
            .expect("post")
            .status(),
        404
    );
    // The practice's Organization, which the first referral created and the second
    // rewrote, stays only while something names it: nothing does now.
    assert_eq!(json_body(app.get(practice).await).await["total"], 0);
    // Nothing either referral brought is left, however it is reached: the Practitioner
    // is named only by its PractitionerRole (`PractitionerRole.practitioner`), and its
    // versions carried the erased submissions' request ids.
    let left: Vec<(String, String)> =
        sqlx::query_as("SELECT resource_type, id FROM resource_versions ORDER BY 1, 2")
            .fetch_all(&app.db_pool().await)
            .await
            .expect("the versions left");
    assert!(left.is_empty(), "left after both erasures: {left:?}");
    app.stop().await;
}

/// Referral B only names the practice Organization that referral A's submission wrote
/// (B comes from the trusted proxy, which declares the practice, so B's Bundle may name
/// an Organization Sprig holds instead of bringing one). Erasing A keeps it, as B names
/// it, and leaves no trace of A's requests on it; erasing B, the last referral naming
/// it, takes it too: nothing is left that brought it.
#[tokio::test]
async fn erasing_the_last_referral_naming_a_shared_organization_removes_it() {
    use crate::access::{Who, secured};
    let secured = secured().await;
    // The example's practice made the one the proxy acts for.
    let example: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/referral-transaction-bundle.json"
        ))
        .expect("example")
        .replace("Y12345", "K83999"),
    )
    .expect("json");
    let with_identifier = |identifier: &str| {
        let mut bundle = example.clone();
        bundle["entry"][0]["resource"]["identifier"][0]["value"] = json!(identifier);
        bundle["entry"][0]["request"]["ifNoneExist"] = json!(format!(
            "identifier=https://gp-system.example.org/Id/referral|{identifier}"
        ));
        bundle
    };
    let send = |bundle: Value| {
        secured
            .request(Who::ProxyForK, "POST", "/fhir")
            .header("content-type", "application/fhir+json")
            .body(bundle.to_string())
            .send()
    };
    let located = |answer: &Value, type_name: &str| {
        answer["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .filter_map(|e| e["response"]["location"].as_str())
            .find(|l| l.starts_with(type_name))
            .and_then(|l| l.split('/').nth(1))
            .unwrap_or_else(|| panic!("no {type_name} in {answer}"))
            .to_owned()
    };
    let response = send(with_identifier("SHARED-ORG-A")).await.expect("post A");
    let a_request = response.headers()["x-request-id"]
        .to_str()
        .expect("request id")
        .to_owned();
    let status = response.status();
    let answer = json_body(response).await;
    assert_eq!(status, 200, "{answer}");
    let (a, organization) = (
        located(&answer, "ServiceRequest"),
        located(&answer, "Organization"),
    );

    // B: the same referral shape without an Organization entry, naming A's.
    let mut b = with_identifier("SHARED-ORG-B");
    let entries = b["entry"].as_array_mut().expect("entries");
    entries.retain(|e| e["resource"]["resourceType"] != "Organization");
    for entry in entries.iter_mut() {
        let resource = &mut entry["resource"];
        match resource["resourceType"].as_str() {
            Some("PractitionerRole") => {
                resource["organization"] =
                    json!({"reference": format!("Organization/{organization}")})
            }
            Some("Consent") => {
                resource["organization"] =
                    json!([{"reference": format!("Organization/{organization}")}])
            }
            _ => {}
        }
    }
    let response = send(b).await.expect("post B");
    let status = response.status();
    let answer = json_body(response).await;
    assert_eq!(status, 200, "{answer}");
    let b = located(&answer, "ServiceRequest");

    let pool = secured.app.db_pool().await;
    let count = |sql: &'static str, bind: String| {
        let pool = pool.clone();
        async move {
            let (n,): (i64,) = sqlx::query_as(sql)
                .bind(bind)
                .fetch_one(&pool)
                .await
                .expect("count");
            n
        }
    };
    let organizations =
        "SELECT COUNT(*) FROM resources WHERE resource_type = 'Organization' AND id = $1";
    let versions =
        "SELECT COUNT(*) FROM resource_versions WHERE resource_type = 'Organization' AND id = $1";
    assert_eq!(
        count(versions, organization.clone()).await,
        1,
        "B did not write the Organization"
    );
    let erase = |id: &str| {
        secured
            .request(
                Who::Administrator,
                "POST",
                &format!("/api/referrals/{id}/erasure"),
            )
            .json(&json!({"reason": "sent-in-error"}))
            .send()
    };

    assert_eq!(erase(&a).await.expect("erase A").status(), 200);
    assert_eq!(
        count(organizations, organization.clone()).await,
        1,
        "B names it: kept"
    );
    let carried: Vec<(Option<String>,)> = sqlx::query_as(
        "SELECT request_id FROM resource_versions WHERE resource_type = 'Organization' AND id = $1",
    )
    .bind(&organization)
    .fetch_all(&pool)
    .await
    .expect("its versions");
    assert!(
        carried
            .iter()
            .all(|(r,)| r.as_deref() != Some(a_request.as_str())),
        "its versions no longer carry the erased referral's request: {carried:?}"
    );

    assert_eq!(erase(&b).await.expect("erase B").status(), 200);
    assert_eq!(
        count(organizations, organization.clone()).await,
        0,
        "the last referral naming it is erased: no orphan"
    );
    assert_eq!(count(versions, organization.clone()).await, 0);
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM search_references WHERE target_type = 'Organization' AND target_id = $1",
            organization.clone()
        )
        .await,
        0,
        "nothing names it"
    );

    // Each erasure is audited with what went, in counts: not what it was.
    let details: Vec<(Option<String>,)> = sqlx::query_as(
        "SELECT detail FROM audit_events WHERE interaction = 'api:erase' AND status = 200 ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .expect("the erasures' audit rows");
    assert_eq!(details.len(), 2, "{details:?}");
    for (detail,) in &details {
        let detail = detail.as_deref().expect("detail");
        assert!(detail.contains("referrals=1"), "{detail}");
        for content in ["9912003888", "Y12345", "K83999", &organization] {
            assert!(!detail.contains(content), "{content} in {detail}");
        }
    }
    pool.close().await;
    secured.app.stop().await;
}

#[tokio::test]
async fn sprig_erase_removes_a_referral_from_the_command_line() {
    let app = spawn_app().await;
    let response = app.post_referral(sample_referral_text()).await;
    let id = json_body(response).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let database = database_for(app.dir().path()).await;
    let (code, _, err) = sprig(&["erase", &id, "--reason", "because"], &database, &[]);
    assert_eq!(
        code,
        Some(2),
        "a reason that is not one is bad usage: {err}"
    );
    let (code, out, err) = sprig(
        &[
            "erase",
            &id,
            "--reason",
            "legal-order",
            "--reference",
            "CO/2026/7",
        ],
        &database,
        &[],
    );
    assert_eq!(code, Some(0), "{out} {err}");
    assert!(out.contains("referrals=1"), "{out}");
    assert_eq!(
        app.get(&format!("/fhir/ServiceRequest/{id}"))
            .await
            .status(),
        404
    );
    let (client, detail): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT client_id, detail FROM audit_events WHERE interaction = 'erase'")
            .fetch_one(&app.db_pool().await)
            .await
            .expect("audit row");
    assert_eq!(client.as_deref(), Some("sprig erase"));
    assert!(
        detail
            .expect("detail")
            .contains("reason=legal-order reference=CO/2026/7")
    );
    let (code, _, _) = sprig(&["erase", &id, "--reason", "legal-order"], &database, &[]);
    assert_eq!(code, Some(1), "no such referral any more");
    app.stop().await;
}

/// Moves everything of referral `id` `years` into the past: received, closed, and its
/// outbox rows delivered (or not).
async fn age(app: &TestApp, id: &str, delivered: bool) {
    let pool = app.db_pool().await;
    let old = "2001-01-01T00:00:00.000Z";
    for sql in [
        "UPDATE referral_stage_history SET at = $1 WHERE referral_id = $2",
        "UPDATE referrals SET updated_at = $1, received_at = $1 WHERE id = $2",
        "UPDATE referral_submissions SET received_at = $1 WHERE referral_id = $2",
    ] {
        sqlx::query(sql)
            .bind(old)
            .bind(id.to_owned())
            .execute(&pool)
            .await
            .expect("age");
    }
    if delivered {
        sqlx::query(
            "UPDATE outbox SET state = 'delivered', delivered_at = $1 WHERE referral_id = $2",
        )
        .bind(old)
        .bind(id.to_owned())
        .execute(&pool)
        .await
        .expect("deliver");
    }
}

async fn withdrawn_referral(app: &TestApp) -> String {
    let response = app.post_referral(sample_referral_text()).await;
    let id = json_body(response).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let response = app
        .client
        .post(app.url(&format!("/api/referrals/{id}/transitions")))
        .json(&json!({"to": "declined", "reason": "Needs are clinical"}))
        .send()
        .await
        .expect("decline");
    assert_eq!(
        response.status(),
        200,
        "{}",
        response.text().await.unwrap_or_default()
    );
    id
}

#[tokio::test]
async fn retention_purges_closed_referrals_and_old_bodies_but_never_open_or_undelivered_ones() {
    let app = spawn_app().await;
    let purged = withdrawn_referral(&app).await;
    let held = withdrawn_referral(&app).await;
    let recent = withdrawn_referral(&app).await;
    let open = json_body(app.post_referral(sample_referral_text()).await).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    age(&app, &purged, true).await;
    age(&app, &held, false).await;
    age(&app, &open, true).await;
    let database = database_for(app.dir().path()).await;
    let retention = [
        ("SPRIG_RETENTION__CLOSED_REFERRALS_YEARS", "8"),
        ("SPRIG_RETENTION__RAW_BODIES_DAYS", "30"),
        ("SPRIG_RETENTION__DELIVERED_OUTBOX_DAYS", "30"),
    ];

    let (code, out, err) = sprig(&["purge", "--dry-run"], &database, &retention);
    assert_eq!(code, Some(0), "{out} {err}");
    assert!(
        out.contains("closed-referrals: closed-referrals: 1 "),
        "{out}"
    );
    assert!(
        out.contains("closed-referrals-held-by-undelivered-updates: 1 "),
        "{out}"
    );
    assert!(out.contains("submission-bodies: 3 "), "{out}");
    assert!(out.contains("delivered-outbox-rows: 3 "), "{out}");
    let (code, out, _) = sprig(&["purge", "--dry-run"], &database, &[]);
    assert_eq!(code, Some(0));
    assert!(out.contains("keeps everything"), "{out}");
    assert_eq!(
        app.get(&format!("/fhir/ServiceRequest/{purged}"))
            .await
            .status(),
        200,
        "a dry run removes nothing"
    );

    let (code, out, err) = sprig(&["purge"], &database, &retention);
    assert_eq!(code, Some(0), "{out} {err}");
    assert!(
        out.contains("closed-referrals: ") && out.contains("referrals=1"),
        "{out}"
    );
    assert_eq!(
        app.get(&format!("/fhir/ServiceRequest/{purged}"))
            .await
            .status(),
        404
    );
    assert_eq!(
        app.get(&format!("/api/referrals/{purged}")).await.status(),
        404
    );
    for (id, why) in [
        (&held, "an update not yet delivered holds it"),
        (&recent, "closed too recently"),
        (&open, "open"),
    ] {
        assert_eq!(
            app.get(&format!("/fhir/ServiceRequest/{id}"))
                .await
                .status(),
            200,
            "{why}"
        );
        assert_eq!(
            app.get(&format!("/api/referrals/{id}")).await.status(),
            200,
            "{why}"
        );
    }
    let emptied = count(
        &app,
        "SELECT COUNT(*) FROM referral_submissions WHERE referral_id = $1 AND length(body) = 0",
        &open,
    )
    .await;
    assert_eq!(
        emptied, 1,
        "the open referral's old body went, the referral stayed"
    );
    let delivered = count(
        &app,
        "SELECT COUNT(*) FROM outbox WHERE referral_id = $1",
        &open,
    )
    .await;
    assert_eq!(delivered, 0, "its delivered outbox rows went");
    let undelivered = count(
        &app,
        "SELECT COUNT(*) FROM outbox WHERE referral_id = $1",
        &held,
    )
    .await;
    assert!(undelivered > 0, "undelivered outbox rows are never purged");
    let rows: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT client_id, detail FROM audit_events WHERE interaction = 'purge' ORDER BY seq",
    )
    .fetch_all(&app.db_pool().await)
    .await
    .expect("audit rows");
    let details: Vec<String> = rows.iter().filter_map(|(_, d)| d.clone()).collect();
    assert!(
        rows.iter()
            .all(|(c, _)| c.as_deref() == Some("sprig purge"))
    );
    for kind in [
        "purge raw-bodies: ",
        "purge closed-referrals: ",
        "purge delivered-outbox: ",
    ] {
        assert!(
            details.iter().any(|d| d.starts_with(kind)),
            "{kind} in {details:?}"
        );
    }
    let (code, out, _) = sprig(&["purge", "--dry-run"], &database, &retention);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("closed-referrals: closed-referrals: 0 "),
        "{out}"
    );
    assert!(out.contains("submission-bodies: 0 "), "{out}");

    // The server applies [retention] itself, at start-up and hourly.
    age(&app, &recent, true).await;
    let dir = app.dir();
    app.stop().await;
    let app = spawn_app_in(dir, |settings| {
        settings.retention.closed_referrals_years = 8;
    })
    .await;
    let mut gone = false;
    for _ in 0..100 {
        if app
            .get(&format!("/fhir/ServiceRequest/{recent}"))
            .await
            .status()
            == 404
        {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        gone,
        "the server's own purge erased the referral closed long ago"
    );
    assert_eq!(
        app.get(&format!("/fhir/ServiceRequest/{held}"))
            .await
            .status(),
        200
    );
    let (client,): (Option<String>,) = sqlx::query_as(
        "SELECT client_id FROM audit_events WHERE interaction = 'purge' ORDER BY seq DESC LIMIT 1",
    )
    .fetch_one(&app.db_pool().await)
    .await
    .expect("audit row");
    assert_eq!(client.as_deref(), Some("sprig:retention"));
    app.stop().await;
}

#[tokio::test]
async fn a_postgresql_failover_is_answered_503_with_retry_after_never_500() {
    if !on_postgres() {
        // Only PostgreSQL fails over; SQLite's busy answers are tested elsewhere.
        return;
    }
    let app = spawn_app().await;
    assert_eq!(
        app.post_referral(sample_referral_text()).await.status(),
        201
    );
    let database = database_for(app.dir().path()).await;
    let name = database.rsplit('/').next().expect("name").to_owned();
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&format!(
        "{}/postgres",
        crate::helpers::postgres_server()
    ))
    .await
    .expect("admin connection");
    // What a client meets after a failover: its connections are cut, and the server it
    // reaches again is a read-only standby (SQLSTATE 25006 on a write).
    let read_only = |on: bool| {
        sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {name} SET default_transaction_read_only = {}",
            if on { "on" } else { "off" }
        ))
    };
    let cut = || {
        sqlx::AssertSqlSafe(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        ))
    };
    sqlx::query(read_only(true))
        .execute(&mut admin)
        .await
        .expect("read-only");
    sqlx::query(cut()).execute(&mut admin).await.expect("cut");
    for _ in 0..3 {
        let response = app.post_referral(sample_referral_text()).await;
        assert_eq!(
            response.status(),
            503,
            "{}",
            response.text().await.unwrap_or_default()
        );
        assert_eq!(response.headers()["retry-after"], "1");
        let outcome = json_body(response).await;
        assert_eq!(outcome["issue"][0]["code"], "transient", "{outcome}");
    }
    let response = app
        .client
        .post(app.url("/api/referrals/nope/notes"))
        .json(&json!({"text": "a note"}))
        .send()
        .await
        .expect("post");
    assert_ne!(response.status(), 500);
    // The new primary takes writes again: so does Sprig, without a restart.
    sqlx::query(read_only(false))
        .execute(&mut admin)
        .await
        .expect("writable");
    sqlx::query(cut()).execute(&mut admin).await.expect("cut");
    let mut status = 0;
    for _ in 0..50 {
        status = app
            .post_referral(sample_referral_text())
            .await
            .status()
            .as_u16();
        if status == 201 {
            break;
        }
        assert_eq!(status, 503);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, 201);
    app.stop().await;
}
