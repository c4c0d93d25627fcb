//! The mappings are data: a copy of `mappings/` named by `mappings_dir` is
//! what Sprig maps with, and a mistake in it stops start-up with the file,
//! the line and the problem.

use std::path::{Path, PathBuf};

use serde_json::json;
use sprig::app::Application;
use sprig::config::Settings;

use crate::helpers::spawn_app_with;
use crate::workflow::{Shape, detail, submit};

/// A copy of the shipped `mappings/` with `edit` applied to one file.
fn altered_copy(file: &str, edit: impl FnOnce(String) -> String) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::TempDir::new().expect("temporary directory");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let mut edit = Some(edit);
    for name in ["inbound.toml", "outbound.toml"] {
        let text = std::fs::read_to_string(shipped.join(name)).expect("shipped mapping");
        let text = match (name == file, edit.take()) {
            (true, Some(edit)) => edit(text),
            (_, other) => {
                edit = other;
                text
            }
        };
        std::fs::write(dir.path().join(name), text).expect("write copy");
    }
    let path = dir.path().to_path_buf();
    (dir, path)
}

#[tokio::test]
async fn an_altered_copy_of_the_mappings_is_what_sprig_maps_with() {
    let (_dir, path) = altered_copy("inbound.toml", |text| {
        let shipped = "expression = \"%referring_practice.name\"";
        assert!(
            text.contains(shipped),
            "the shipped practice_name mapping moved"
        );
        text.replace(shipped, "expression = \"%referring_practice.name.upper()\"")
    });
    let app = spawn_app_with(|settings| settings.mappings_dir = Some(path)).await;
    let (id, status, _) = submit(&app, Shape::Resource, &Shape::Resource.example()).await;
    assert_eq!(status, 201);
    assert_eq!(
        detail(&app, &id).await["practice_name"],
        "EXAMPLE MEDICAL CENTRE"
    );

    // The shipped mappings, for comparison.
    let shipped = crate::helpers::spawn_app().await;
    let (id, _, _) = submit(&shipped, Shape::Resource, &Shape::Resource.example()).await;
    assert_eq!(
        detail(&shipped, &id).await["practice_name"],
        "Example Medical Centre"
    );
}

#[tokio::test]
async fn an_altered_stage_mapping_changes_the_task() {
    let (_dir, path) = altered_copy("outbound.toml", |text| {
        let shipped = "business_status = { code = \"accepted\", display = \"Accepted\" }";
        assert!(text.contains(shipped), "the shipped accepted mapping moved");
        text.replace(
            shipped,
            "business_status = { code = \"accepted\", display = \"Taken on by Spring\" }",
        )
    });
    let app = spawn_app_with(|settings| settings.mappings_dir = Some(path)).await;
    let (id, _, _) = submit(&app, Shape::Resource, &Shape::Resource.example()).await;
    let response = crate::workflow::api_post(
        &app,
        &format!("/api/referrals/{id}/transitions"),
        json!({"to": "accepted"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let record = detail(&app, &id).await;
    let task = crate::workflow::read(
        &app,
        &format!("/fhir/Task/{}", record["task_id"].as_str().expect("task")),
    )
    .await;
    assert_eq!(
        task["businessStatus"]["coding"][0]["display"],
        "Taken on by Spring"
    );
}

/// Start-up with `mappings_dir` = `path` fails; returns the message.
async fn start_up_error(path: PathBuf) -> String {
    let dir = tempfile::TempDir::new().expect("temporary directory");
    let settings = Settings {
        listen: "127.0.0.1:0".parse().expect("address"),
        database: dir.path().join("sprig.db").display().to_string(),
        mappings_dir: Some(path),
        ..Settings::default()
    };
    match Application::build(settings).await {
        Ok(_) => panic!("start-up should fail"),
        Err(error) => error.to_string(),
    }
}

/// A change made to a copy of a mapping file.
type Edit = Box<dyn FnOnce(String) -> String>;

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle} not in the mapping"))
}

#[tokio::test]
async fn a_mistake_in_the_mappings_stops_start_up_naming_file_and_line() {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/inbound.toml"),
    )
    .expect("shipped");
    let practice_line = line_of(&shipped, "expression = \"%referring_practice.name\"");
    let cases: Vec<(&str, Edit, String, &str)> = vec![
        (
            "inbound.toml",
            Box::new(|t: String| {
                t.replace(
                    "expression = \"%referring_practice.name\"",
                    "expression = \"%referring_practice.name.(\"",
                )
            }),
            format!("inbound.toml:{practice_line}:"),
            "a FHIRPath syntax error",
        ),
        (
            "inbound.toml",
            Box::new(|t: String| {
                t.replace(
                    "expression = \"%referring_practice.name\"",
                    "expression = \"%referring_practice.name.shout()\"",
                )
            }),
            format!("inbound.toml:{practice_line}:"),
            "an unknown function",
        ),
        (
            "inbound.toml",
            Box::new(|t: String| {
                t.replace(
                    "expression = \"%referring_practice.name\"",
                    "expression = \"%referring_practice.name\"\ncolour = \"red\"",
                )
            }),
            "inbound.toml:".to_owned(),
            "an unknown key",
        ),
        (
            "outbound.toml",
            Box::new(|t: String| {
                let start = t.find("[stages.withdrawn]").expect("withdrawn stage");
                let end = t[start + 1..]
                    .find("\n[")
                    .map_or(t.len(), |i| start + 1 + i);
                format!("{}{}", &t[..start], &t[end..])
            }),
            "outbound.toml:".to_owned(),
            "a stage without a Task mapping",
        ),
    ];
    for (file, edit, expected, why) in cases {
        let (_dir, path) = altered_copy(file, edit);
        let message = start_up_error(path).await;
        assert!(message.contains(&expected), "{why}: {message}");
        assert!(message.starts_with("mappings: "), "{why}: {message}");
    }
}

/// A service whose mapping reports two stages alike (here `contacted` as `accepted`: it
/// does not tell GPs when the person was first spoken to) moves the referral on without a
/// Task version the GP would see as a change: the Task would differ only in
/// `lastModified`, so none is stored and nothing is queued for the practice, while the
/// record and its timeline move on. Fails where every stage change stores a Task version
/// and queues it (Task version 3, a third outbox row).
#[tokio::test]
async fn a_stage_change_the_task_does_not_show_stores_and_queues_no_task_version() {
    let (_dir, path) = altered_copy("outbound.toml", |text| {
        let shipped = "[stages.contacted]\ntask_status = \"in-progress\"\nbusiness_status = { code = \"contacted\", display = \"Contacted\" }\n";
        assert!(
            text.contains(shipped),
            "the shipped contacted mapping moved"
        );
        text.replace(
            shipped,
            "[stages.contacted]\ntask_status = \"accepted\"\nbusiness_status = { code = \"accepted\", display = \"Accepted\" }\nrecord_code = { system = \"http://snomed.info/sct\", code = \"871731000000106\" }\n",
        )
    });
    let app = spawn_app_with(|settings| settings.mappings_dir = Some(path)).await;
    let (id, _, _) = submit(&app, Shape::Resource, &Shape::Resource.example()).await;
    for stage in ["accepted", "contacted"] {
        let response = crate::workflow::api_post(
            &app,
            &format!("/api/referrals/{id}/transitions"),
            json!({"to": stage}),
        )
        .await;
        assert_eq!(response.status(), 200, "{stage}");
    }
    let record = detail(&app, &id).await;
    assert_eq!(record["stage"], "contacted");
    let task_id = record["task_id"].as_str().expect("task");
    let task = crate::workflow::read(&app, &format!("/fhir/Task/{task_id}")).await;
    assert_eq!(task["meta"]["versionId"], "2", "{task}");
    let queued = crate::delivery::deliveries(&app, "").await;
    assert_eq!(queued.len(), 2, "received and accepted only: {queued:?}");
    app.assert_every_version_has_its_provenance().await;
}
