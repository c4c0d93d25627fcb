//! Milestones over HTTP (`/api/referrals/{id}/milestones`): recorded and read, checked,
//! audited, limited by role, and what the report's milestone metrics count on (a stage
//! moved without its milestone is due but missing).

use serde_json::{Value, json};

use crate::access::{Who, referral_of_k, secured};
use crate::console::{add_staff, csrf, sign_in};
use crate::helpers::{TestApp, json_body, spawn_app};
use crate::openapi::assert_matches_schema;
use crate::workflow::{Shape, api_post, submit};

async fn get_json(app: &TestApp, path: &str) -> Value {
    let response = app.get(path).await;
    assert_eq!(response.status(), 200, "GET {path}");
    json_body(response).await
}

/// Today, as the server sees it (the UK is on UTC in winter; tests near midnight in summer
/// could see the day before, which is still not in the future).
fn today() -> String {
    time::OffsetDateTime::now_utc().date().to_string()
}

/// (eligible, achieved, missing) of `metric` for all practices, over every period.
async fn counts(app: &TestApp, metric: &str) -> (u64, u64, u64) {
    // The range may be at most three years: a year either side of today.
    let now = time::OffsetDateTime::now_utc().date();
    let (from, to) = (
        now - time::Duration::days(365),
        now + time::Duration::days(365),
    );
    let report = get_json(
        app,
        &format!("/api/reports/outcomes?from={from}&to={to}&period=quarter"),
    )
    .await;
    report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["metric"] == metric && r["practice"] == "all")
        .fold((0, 0, 0), |(e, a, m), r| {
            (
                e + r["eligible"].as_u64().expect("n"),
                a + r["achieved"].as_u64().expect("n"),
                m + r["missing"].as_u64().expect("n"),
            )
        })
}

#[tokio::test]
async fn milestones_are_recorded_read_and_counted_by_the_report() {
    let app = spawn_app().await;
    let (id, status, _) = submit(&app, Shape::Resource, &Shape::Resource.example()).await;
    assert_eq!(status, 201);
    for to in ["accepted", "contacted", "assessment-done", "plan-agreed"] {
        let response = api_post(
            &app,
            &format!("/api/referrals/{id}/transitions"),
            json!({"to": to}),
        )
        .await;
        assert_eq!(response.status(), 200, "{to}");
    }
    // The stage alone is no evidence: the plan is due but missing (counting stages, it
    // was achieved), and without a complexity assessment the person is not in the
    // complex-needs group.
    assert_eq!(
        counts(&app, "initial-assessment-with-plan").await,
        (1, 0, 1)
    );
    assert_eq!(counts(&app, "complex-needs-engaged").await, (0, 0, 0));

    let path = format!("/api/referrals/{id}/milestones");
    let day = today();
    for body in [
        json!({"kind": "initial-assessment", "on": day}),
        json!({"kind": "action-plan", "on": day}),
        json!({"kind": "complexity", "on": day, "complex": true,
               "basis": "Three long-term conditions and insecure housing"}),
    ] {
        let response = api_post(&app, &path, body.clone()).await;
        assert_eq!(response.status(), 201, "{body}");
        let recorded = json_body(response).await;
        assert_matches_schema("Milestone", &recorded);
        assert_eq!(
            (&recorded["kind"], &recorded["on"]),
            (&body["kind"], &body["on"])
        );
    }
    assert_eq!(
        counts(&app, "initial-assessment-with-plan").await,
        (1, 1, 0)
    );
    assert_eq!(counts(&app, "complex-needs-engaged").await, (1, 1, 0));
    // Reassessed as not complex: out of the group.
    let response = api_post(
        &app,
        &path,
        json!({"kind": "complexity", "on": day, "complex": false, "basis": "Housing resolved"}),
    )
    .await;
    assert_eq!(response.status(), 201);
    assert_eq!(counts(&app, "complex-needs-engaged").await, (0, 0, 0));

    let listed = get_json(&app, &path).await;
    assert_matches_schema("MilestoneList", &listed);
    let kinds: Vec<&str> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|m| m["kind"].as_str())
        .collect();
    assert_eq!(kinds.len(), 4, "{listed}");
    assert!(kinds.contains(&"action-plan") && kinds.contains(&"complexity"));

    // Every record is audited with the referral it touched.
    let pool = app.db_pool().await;
    let audited: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_events WHERE interaction = 'api:milestone' AND status = 201 \
         AND referral_ids LIKE $1",
    )
    .bind(format!("%{id}%"))
    .fetch_one(&pool)
    .await
    .expect("audit rows");
    assert_eq!(audited, 4);

    let tomorrow = (time::OffsetDateTime::now_utc().date() + time::Duration::days(2)).to_string();
    for (body, expected) in [
        (json!({"kind": "plan", "on": day}), 422),
        (json!({"kind": "action-plan", "on": "next Tuesday"}), 400),
        (json!({"kind": "action-plan", "on": tomorrow}), 422),
        (json!({"kind": "action-plan", "on": "2001-01-01"}), 422),
        (
            json!({"kind": "complexity", "on": day, "complex": true}),
            422,
        ),
        (json!({"kind": "discharge", "on": day}), 422),
        (
            json!({"kind": "discharge", "on": day, "reason": "bored"}),
            422,
        ),
        (
            json!({"kind": "action-plan", "on": day, "reason": "goals-met"}),
            422,
        ),
        (
            json!({"kind": "action-plan", "on": day, "colour": "green"}),
            400,
        ),
    ] {
        let response = api_post(&app, &path, body.clone()).await;
        assert_eq!(response.status(), expected, "{body}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{body}"
        );
    }
    let response = api_post(
        &app,
        &path,
        json!({"kind": "discharge", "on": day, "reason": "goals-met"}),
    )
    .await;
    assert_eq!(response.status(), 201);
    let response = api_post(
        &app,
        "/api/referrals/no-such-referral/milestones",
        json!({"kind": "action-plan", "on": day}),
    )
    .await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        app.get("/api/referrals/no-such-referral/milestones")
            .await
            .status(),
        404
    );
    app.stop().await;
}

#[tokio::test]
async fn a_link_worker_records_milestones_only_on_their_own_or_unassigned_referrals() {
    let secured = secured().await;
    let sr = referral_of_k(&secured).await;
    let path = format!("/api/referrals/{sr}/milestones");
    let plan = json!({"kind": "initial-assessment", "on": today()});
    let post = |who: Who| secured.request(who, "POST", &path).json(&plan).send();
    // Unassigned: the link worker may.
    let response = post(Who::LinkWorker).await.expect("request");
    assert_eq!(response.status(), 201);
    assert_eq!(json_body(response).await["recorded_by"], "lw");
    // Assigned to the manager: the link worker may neither record nor read; the manager may.
    let assigned = secured
        .request(
            Who::Manager,
            "POST",
            &format!("/api/referrals/{sr}/assignment"),
        )
        .json(&json!({"assigned_to": "mgr"}))
        .send()
        .await
        .expect("request");
    assert_eq!(assigned.status(), 200);
    let refused = post(Who::LinkWorker).await.expect("request");
    assert_eq!(refused.status(), 403);
    let read = secured
        .request(Who::LinkWorker, "GET", &path)
        .send()
        .await
        .expect("request");
    assert_eq!(read.status(), 403);
    assert_eq!(post(Who::Manager).await.expect("request").status(), 201);
    let administrator = post(Who::Administrator).await.expect("request");
    assert_eq!(administrator.status(), 403);
    let listed = secured
        .request(Who::Manager, "GET", &path)
        .send()
        .await
        .expect("request");
    assert_eq!(listed.status(), 200);
    assert_eq!(
        json_body(listed).await["items"].as_array().map(Vec::len),
        Some(2)
    );
    secured.app.stop().await;
}

#[tokio::test]
async fn the_referral_page_lists_milestones_and_records_one_from_its_form() {
    let app = spawn_app().await;
    add_staff(&app).await;
    let (id, status, _) = submit(&app, Shape::Resource, &Shape::Resource.example()).await;
    assert_eq!(status, 201);
    let amara = sign_in(&app, "amara").await;
    let page_path = format!("/console/referrals/{id}");
    let (status, page) = amara.get(&app, &page_path).await;
    assert_eq!(status, 200);
    assert!(page.contains("id=\"milestones\"") && page.contains("None recorded yet"));
    let token = csrf(&page);
    let path = format!("/console/referrals/{id}/milestones");
    let day = today();

    // Each refusal points at its own field and keeps what was typed.
    for (form, field) in [
        (vec![("on", day.as_str())], "milestone-kind"),
        (
            vec![("kind", "action-plan"), ("on", "soon")],
            "milestone-on",
        ),
        (
            vec![
                ("kind", "complexity"),
                ("on", day.as_str()),
                ("complex", "yes"),
            ],
            "milestone-basis",
        ),
        (
            vec![("kind", "discharge"), ("on", day.as_str())],
            "milestone-reason",
        ),
    ] {
        let mut with_token = vec![("csrf", token.as_str())];
        with_token.extend(form.iter().copied());
        let response = amara.post(&app, &path, &with_token).await;
        assert_eq!(response.status(), 400, "{form:?}");
        let body = response.text().await.expect("page");
        assert!(
            body.contains("There is a problem") && body.contains(&format!("href=\"#{field}\"")),
            "{form:?}: {body}"
        );
    }
    let forged = amara
        .post(&app, &path, &[("kind", "action-plan"), ("on", &day)])
        .await;
    assert_eq!(forged.status(), 403, "no CSRF token");

    // Basis typed for another kind is not kept: only the chosen kind's fields count.
    let response = amara
        .post(
            &app,
            &path,
            &[
                ("csrf", &token),
                ("kind", "action-plan"),
                ("on", &day),
                ("basis", "typed before choosing the kind"),
            ],
        )
        .await;
    assert_eq!(response.status(), 303);
    assert_eq!(
        response.headers()["location"],
        format!("/console/referrals/{id}#milestones").as_str()
    );
    let (_, page) = amara.get(&app, &page_path).await;
    assert!(page.contains("Action plan agreed") && !page.contains("None recorded yet"));
    let listed = get_json(&app, &format!("/api/referrals/{id}/milestones")).await;
    assert_eq!(listed["items"][0]["recorded_by"], "amara", "{listed}");
    assert!(listed["items"][0]["basis"].is_null(), "{listed}");

    // Assigned to someone else, the form is gone and a post is refused.
    let mina = sign_in(&app, "mina").await;
    let response = mina
        .post(
            &app,
            &format!("/console/referrals/{id}/assignment"),
            &[
                ("csrf", &csrf(&mina.get(&app, &page_path).await.1)),
                ("assigned_to", "ben"),
            ],
        )
        .await;
    assert_eq!(response.status(), 303);
    let response = amara
        .post(
            &app,
            &path,
            &[
                ("csrf", &token),
                ("kind", "initial-assessment"),
                ("on", &day),
            ],
        )
        .await;
    assert_eq!(response.status(), 403);
    app.stop().await;
}

/// The stage of referral `id` and how many milestones it has.
async fn stage_and_milestones(app: &TestApp, id: &str) -> (String, usize) {
    let detail = get_json(app, &format!("/api/referrals/{id}")).await;
    let listed = get_json(app, &format!("/api/referrals/{id}/milestones")).await;
    (
        detail["stage"].as_str().unwrap_or_default().to_owned(),
        listed["items"].as_array().map_or(0, Vec::len),
    )
}

#[tokio::test]
async fn a_stage_change_records_its_milestone_in_the_same_transaction() {
    let app = spawn_app().await;
    let (id, status, _) = submit(&app, Shape::Resource, &Shape::Resource.example()).await;
    assert_eq!(status, 201);
    let path = format!("/api/referrals/{id}/transitions");
    let day = today();
    for to in ["accepted", "contacted"] {
        let response = api_post(&app, &path, json!({"to": to})).await;
        assert_eq!(response.status(), 200, "{to}");
    }
    // A move that takes no milestone, or a milestone that is wrong, refuses the move too:
    // the stage stays and nothing is recorded (both or neither).
    let tomorrow = (time::OffsetDateTime::now_utc().date() + time::Duration::days(2)).to_string();
    for (body, expected) in [
        (
            json!({"to": "plan-agreed", "milestone": {"on": tomorrow}}),
            422,
        ),
        (
            json!({"to": "plan-agreed", "milestone": {"on": "2001-01-01"}}),
            422,
        ),
        (
            json!({"to": "plan-agreed", "milestone": {"on": day, "discharge_reason": "goals-met"}}),
            422,
        ),
        (
            json!({"to": "plan-agreed", "milestone": {"on": day, "complex": true}}),
            422,
        ),
        (
            json!({"to": "plan-agreed", "milestone": {"on": day, "basis": "housing"}}),
            422,
        ),
        (
            json!({"to": "plan-agreed", "milestone": {"on": "soon"}}),
            400,
        ),
        (
            json!({"to": "plan-agreed", "milestone": {"on": day, "colour": "green"}}),
            400,
        ),
        (json!({"to": "plan-agreed", "milestone": {}}), 400),
    ] {
        let response = api_post(&app, &path, body.clone()).await;
        assert_eq!(response.status(), expected, "{body}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{body}"
        );
        assert_eq!(
            stage_and_milestones(&app, &id).await,
            ("contacted".to_owned(), 0),
            "{body}"
        );
    }
    // Straight from contacted to a plan: the first conversation was the initial assessment.
    let response = api_post(
        &app,
        &path,
        json!({"to": "plan-agreed", "milestone": {"on": day, "complex": true,
               "basis": "Three long-term conditions and insecure housing"}}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        stage_and_milestones(&app, &id).await,
        ("plan-agreed".to_owned(), 3)
    );
    assert_eq!(
        counts(&app, "initial-assessment-with-plan").await,
        (1, 1, 0)
    );
    assert_eq!(counts(&app, "complex-needs-engaged").await, (1, 1, 0));
    // in-support takes only a complexity assessment; completed needs its discharge reason.
    let response = api_post(
        &app,
        &path,
        json!({"to": "in-support", "milestone": {"on": day}}),
    )
    .await;
    assert_eq!(response.status(), 422);
    let response = api_post(&app, &path, json!({"to": "in-support"})).await;
    assert_eq!(response.status(), 200);
    let response = api_post(
        &app,
        &path,
        json!({"to": "completed", "milestone": {"on": day}}),
    )
    .await;
    assert_eq!(response.status(), 422);
    assert_eq!(
        stage_and_milestones(&app, &id).await,
        ("in-support".to_owned(), 3)
    );
    let response = api_post(
        &app,
        &path,
        json!({"to": "completed", "milestone": {"on": day, "discharge_reason": "goals-met"}}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let listed = get_json(&app, &format!("/api/referrals/{id}/milestones")).await;
    let discharge = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|m| m["kind"] == "discharge")
        .cloned()
        .expect("a discharge");
    assert_eq!(discharge["reason"], "goals-met", "{listed}");
    // Each move is one audited request, with the referral it touched.
    let pool = app.db_pool().await;
    let audited: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_events WHERE interaction = 'api:transition' AND status = 200 \
         AND referral_ids LIKE $1",
    )
    .bind(format!("%{id}%"))
    .fetch_one(&pool)
    .await
    .expect("audit rows");
    assert_eq!(audited, 5);
    app.stop().await;
}

#[tokio::test]
async fn the_stage_form_records_the_milestone_with_the_move() {
    let app = spawn_app().await;
    add_staff(&app).await;
    let (id, status, _) = submit(&app, Shape::Resource, &Shape::Resource.example()).await;
    assert_eq!(status, 201);
    let amara = sign_in(&app, "amara").await;
    let page_path = format!("/console/referrals/{id}");
    let path = format!("/console/referrals/{id}/transition");
    let day = today();
    let (_, page) = amara.get(&app, &page_path).await;
    let token = csrf(&page);
    // Accepting takes no milestone: the form's day is ignored (and a day left blank is
    // today, what the form fills in).
    for to in ["accepted", "contacted"] {
        let response = amara
            .post(
                &app,
                &path,
                &[("csrf", &token), ("to", to), ("stage_on", &day)],
            )
            .await;
        assert_eq!(response.status(), 303, "{to}");
    }
    let (_, page) = amara.get(&app, &page_path).await;
    assert!(
        page.contains("id=\"transition-on\"") && page.contains(&format!("value=\"{day}\"")),
        "the day is offered, filled in with today: {page}"
    );
    assert_eq!(
        stage_and_milestones(&app, &id).await,
        ("contacted".to_owned(), 0)
    );
    // Each refusal points at its own field, keeps what was typed, and moves nothing.
    for (form, field) in [
        (
            vec![("to", "assessment-done"), ("stage_on", "soon")],
            "transition-on",
        ),
        (
            vec![
                ("to", "assessment-done"),
                ("stage_on", day.as_str()),
                ("stage_complex", "yes"),
            ],
            "transition-basis",
        ),
        (
            vec![("to", "assessment-done"), ("stage_on", "2001-01-01")],
            "transition-on",
        ),
    ] {
        let mut with_token = vec![("csrf", token.as_str())];
        with_token.extend(form.iter().copied());
        let response = amara.post(&app, &path, &with_token).await;
        assert_eq!(response.status(), 400, "{form:?}");
        let body = response.text().await.expect("page");
        assert!(
            body.contains("There is a problem") && body.contains(&format!("href=\"#{field}\"")),
            "{form:?}: {body}"
        );
        assert_eq!(
            stage_and_milestones(&app, &id).await,
            ("contacted".to_owned(), 0),
            "{form:?}"
        );
    }
    let response = amara
        .post(
            &app,
            &path,
            &[
                ("csrf", &token),
                ("to", "assessment-done"),
                ("stage_on", &day),
                ("stage_complex", "no"),
                (
                    "stage_basis",
                    "One long-term condition, well supported at home",
                ),
                // Another stage's field: not read.
                ("discharge_reason", "goals-met"),
            ],
        )
        .await;
    assert_eq!(response.status(), 303);
    let listed = get_json(&app, &format!("/api/referrals/{id}/milestones")).await;
    let kinds: Vec<&str> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|m| m["kind"].as_str())
        .collect();
    assert_eq!(kinds.len(), 2, "{listed}");
    assert!(
        kinds.contains(&"initial-assessment") && kinds.contains(&"complexity"),
        "{listed}"
    );
    assert!(
        listed["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|m| m["recorded_by"] == "amara" && m["reason"].is_null())
    );
    for to in ["plan-agreed", "in-support"] {
        let response = amara
            .post(
                &app,
                &path,
                &[("csrf", &token), ("to", to), ("stage_on", &day)],
            )
            .await;
        assert_eq!(response.status(), 303, "{to}");
    }
    assert_eq!(
        counts(&app, "initial-assessment-with-plan").await,
        (1, 1, 0)
    );
    // Completing needs the discharge reason.
    let response = amara
        .post(
            &app,
            &path,
            &[("csrf", &token), ("to", "completed"), ("stage_on", &day)],
        )
        .await;
    assert_eq!(response.status(), 400);
    let body = response.text().await.expect("page");
    assert!(
        body.contains("href=\"#transition-discharge-reason\""),
        "{body}"
    );
    assert_eq!(
        stage_and_milestones(&app, &id).await,
        ("in-support".to_owned(), 3)
    );
    let response = amara
        .post(
            &app,
            &path,
            &[
                ("csrf", &token),
                ("to", "completed"),
                ("stage_on", &day),
                ("discharge_reason", "goals-met"),
            ],
        )
        .await;
    assert_eq!(response.status(), 303);
    assert_eq!(
        stage_and_milestones(&app, &id).await,
        ("completed".to_owned(), 4)
    );
    let pool = app.db_pool().await;
    let audited: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_events WHERE interaction = 'console:transition' \
         AND referral_ids LIKE $1",
    )
    .bind(format!("%{id}%"))
    .fetch_one(&pool)
    .await
    .expect("audit rows");
    assert!(audited >= 6, "every post is audited: {audited}");
    app.stop().await;
}
