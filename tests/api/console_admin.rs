//! The administrators' audit look-up and search (`/console/audit`), who can be assigned
//! referrals (`/console/people`, `sprig staff people|inactive|active`), and the
//! follow-ups page without its old cap of 1,000 referrals, over real HTTP.

use sprig::identity::{StaffRole, staff};
use sprig::store::sessions::SessionRow;

use crate::console::{add_staff, csrf, send_referral, sign_in};
use crate::helpers::{TestApp, spawn_app};

async fn add_admin(app: &TestApp) {
    staff::add_account(
        &app.store,
        "ada",
        "Ada Admin",
        StaffRole::Administrator,
        "correct horse battery staple".to_owned(),
    )
    .await
    .expect("account");
}

/// Today and tomorrow as UK dates (`YYYY-MM-DD`), wide enough for "today" in any zone.
fn window() -> (String, String) {
    let today = time::OffsetDateTime::now_utc().date();
    let from = today.previous_day().expect("yesterday");
    let to = today.next_day().expect("tomorrow");
    (from.to_string(), to.to_string())
}

async fn scalar(app: &TestApp, sql: &'static str) -> i64 {
    let pool = app.db_pool().await;
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&pool).await.expect(sql);
    n
}

/// An administrator finds a referral's audit trail by its id, its business identifier
/// and a request id; searches what one person did over a window, a page at a time;
/// sees ids and callers, never the person referred; and each look-up is in the trail of
/// the referrals it showed. Refused to link workers and managers.
#[tokio::test]
async fn administrators_find_audit_trails_and_search_by_who() {
    let app = spawn_app().await;
    add_staff(&app).await;
    add_admin(&app).await;
    let response = app
        .client
        .post(app.url("/fhir/ServiceRequest"))
        .header("content-type", "application/fhir+json")
        .header("x-request-id", "req-find-me-1")
        .body(crate::helpers::sample_referral_text())
        .send()
        .await
        .expect("create");
    assert_eq!(response.status(), 201);
    let body: serde_json::Value = response.json().await.expect("json");
    let id = body["id"].as_str().expect("id").to_owned();
    let pool = app.db_pool().await;
    let (identifier,): (String,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT identifier_value FROM referrals WHERE id = '{id}'"
    )))
    .fetch_one(&pool)
    .await
    .expect("identifier");

    let amara = sign_in(&app, "amara").await;
    // 105 views: more than one page (100) of Amara's rows.
    for _ in 0..105 {
        let (status, _) = amara.get(&app, &format!("/console/referrals/{id}")).await;
        assert_eq!(status, 200);
    }
    let mina = sign_in(&app, "mina").await;
    let ada = sign_in(&app, "ada").await;

    for who in [&amara, &mina] {
        for path in [
            "/console/audit".to_owned(),
            format!("/console/audit?find={id}"),
            "/console/audit?who=amara".to_owned(),
            "/console/people".to_owned(),
        ] {
            let (status, page) = who.get(&app, &path).await;
            assert_eq!(status, 403, "{path}");
            assert!(!page.contains(&identifier), "{path}");
        }
    }

    let (status, page) = ada.get(&app, "/console/audit").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("href=\"/console/audit\"") && page.contains("id=\"find\""),
        "{page}"
    );
    let trail_link = format!("href=\"/console/referrals/{id}/audit\"");
    for find in [id.as_str(), identifier.as_str(), "req-find-me-1"] {
        let (status, page) = ada.get(&app, &format!("/console/audit?find={find}")).await;
        assert_eq!(status, 200, "{find}");
        assert!(page.contains(&trail_link), "{find} finds the trail: {page}");
        assert!(
            !page.contains("Llywelyn") && !page.contains("9000000009"),
            "no name or NHS number: {page}"
        );
    }
    let (_, page) = ada.get(&app, "/console/audit?find=req-find-me-1").await;
    assert!(
        page.contains("Request req-find-me-1") && page.contains("create ServiceRequest"),
        "the request's own rows: {page}"
    );
    let (status, page) = ada.get(&app, "/console/audit?find=no-such-thing").await;
    assert_eq!(status, 200);
    assert!(page.contains("No referral has that id"), "{page}");

    let (from, to) = window();
    let (status, first) = ada
        .get(
            &app,
            &format!("/console/audit?who=amara&from={from}&to={to}"),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(first.matches("console:referral<").count(), 100, "{first}");
    assert!(first.contains(&trail_link), "{first}");
    assert!(!first.contains("Llywelyn"), "{first}");
    let next = first
        .split("href=\"")
        .filter_map(|s| s.split('"').next())
        .find(|href| href.contains("after="))
        .expect("a next page")
        .replace("&amp;", "&");
    let (status, second) = ada.get(&app, &next).await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(second.matches("console:referral<").count(), 5, "{second}");
    assert!(!second.contains("after="), "the last page: {second}");
    // Another window, another person: nothing of Amara's.
    let (_, page) = ada
        .get(
            &app,
            "/console/audit?who=amara&from=2020-01-01&to=2020-01-31",
        )
        .await;
    assert!(page.contains("Nothing in that window"), "{page}");
    let (_, page) = ada
        .get(&app, &format!("/console/audit?who=ben&from={from}"))
        .await;
    assert!(page.contains("Nothing in that window"), "{page}");

    // Bad input: a clear 400 with the error summary, nothing searched.
    for (query, message) in [
        (
            "who=amara&from=2026-13-01",
            "Enter a date as year-month-day",
        ),
        ("from=2026-12-01", "Enter who to search for"),
        (
            "who=amara&from=2026-12-05&to=2026-12-01",
            "The end date must be",
        ),
    ] {
        let (status, page) = ada.get(&app, &format!("/console/audit?{query}")).await;
        assert_eq!(status, 400, "{query}");
        assert!(
            page.contains("nhsuk-error-summary") && page.contains(message),
            "{query}: {page}"
        );
    }
    let (status, _) = ada.get(&app, "/console/audit?after=x").await;
    assert_eq!(status, 400);

    // The look-ups are audited as Ada's, and are in the referral's trail.
    let searches = scalar(
        &app,
        "SELECT COUNT(*) FROM audit_events WHERE interaction = 'console:audit-search' AND staff_username = 'ada'",
    )
    .await;
    assert!(searches >= 9, "{searches}");
    let (status, trail) = ada
        .get(&app, &format!("/console/referrals/{id}/audit"))
        .await;
    assert_eq!(status, 200);
    assert!(
        trail.contains("console:audit-search") && trail.contains("req-find-me-1"),
        "{trail}"
    );
    // The trail pages too: over 100 rows, so a small page is not needed to see it work;
    // its first page holds every row up to 500.
    assert!(!trail.contains("after="), "{trail}");
    app.stop().await;
}

/// A row in `console_people`, as a sign-in through the identity provider writes it.
async fn provider_sign_in(app: &TestApp, username: &str, token: &str) {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    app.store
        .insert_session(&SessionRow {
            token_hash: format!("{token:0>64}"),
            username: username.to_owned(),
            csrf_token: "csrf".to_owned(),
            created_at: now,
            last_seen_at: now,
            expires_at: now + 3600,
            role: Some("link_worker".to_owned()),
            display_name: Some("Lee Provider".to_owned()),
            kept: None,
        })
        .await
        .expect("session");
}

/// An administrator stops a person who signed in through the identity provider being
/// assignable: they are no longer offered or accepted as an assignee, a later sign-in
/// does not undo it, the referral they hold stays theirs and is flagged "Inactive" for
/// managers (worklist, referral, caseloads, a worklist of their referrals), and they can
/// be made assignable again. A staff account is refused (it decides), an unknown name is
/// a 404, a forged or token-less post a 403.
#[tokio::test]
async fn an_administrator_stops_a_provider_s_person_being_assignable() {
    let app = spawn_app().await;
    add_staff(&app).await;
    add_admin(&app).await;
    provider_sign_in(&app, "lee", "1").await;
    let id = send_referral(&app).await;
    let mina = sign_in(&app, "mina").await;
    let ada = sign_in(&app, "ada").await;
    let (_, referral_page) = mina.get(&app, &format!("/console/referrals/{id}")).await;
    let assigned = mina
        .post(
            &app,
            &format!("/console/referrals/{id}/assignment"),
            &[("csrf", &csrf(&referral_page)), ("assigned_to", "lee")],
        )
        .await;
    assert_eq!(assigned.status(), 303);

    let (status, people) = ada.get(&app, "/console/people").await;
    assert_eq!(status, 200);
    assert!(
        people.contains("Lee Provider") && people.contains("Stop assigning"),
        "{people}"
    );
    assert!(
        people.contains("sprig staff disable amara"),
        "an account is disabled on the command line: {people}"
    );
    // A manager cannot, even with a forged form; nor Ada without her token.
    let forged = mina
        .post(
            &app,
            "/console/people",
            &[
                ("csrf", &csrf(&referral_page)),
                ("username", "lee"),
                ("assignable", "no"),
            ],
        )
        .await;
    assert_eq!(forged.status(), 403);
    let no_token = ada
        .post(
            &app,
            "/console/people",
            &[("username", "lee"), ("assignable", "no")],
        )
        .await;
    assert_eq!(no_token.status(), 403);
    assert!(
        staff::assignable_one(&app.store, "lee")
            .await
            .expect("read")
            .is_some()
    );

    let stopped = ada
        .post(
            &app,
            "/console/people",
            &[
                ("csrf", &csrf(&people)),
                ("username", "lee"),
                ("assignable", "no"),
            ],
        )
        .await;
    assert_eq!(stopped.status(), 303);
    assert_eq!(
        stopped.headers()["location"],
        "/console/people?changed=lee&assignable=no"
    );
    let (_, people) = ada
        .get(&app, "/console/people?changed=lee&assignable=no")
        .await;
    assert!(
        people.contains("lee can no longer be assigned referrals")
            && people.contains("No: made inactive by ada")
            && people.contains("Make assignable"),
        "{people}"
    );
    assert!(
        staff::assignable_one(&app.store, "lee")
            .await
            .expect("read")
            .is_none()
    );
    // Signing in again through the provider does not make Lee assignable again.
    provider_sign_in(&app, "lee", "2").await;
    assert!(
        staff::assignable_one(&app.store, "lee")
            .await
            .expect("read")
            .is_none(),
        "a sign-in does not undo an administrator's decision"
    );

    // The referral stays Lee's, flagged for the manager to reassign.
    let (_, worklist) = mina.get(&app, "/console/referrals?view=all").await;
    assert!(
        worklist.contains("lee <strong class=\"nhsuk-tag nhsuk-tag--grey\">Inactive</strong>"),
        "{worklist}"
    );
    let (_, theirs) = mina
        .get(&app, "/console/referrals?view=all&assignee=lee")
        .await;
    assert!(
        theirs.contains(&format!("/console/referrals/{id}\"")),
        "{theirs}"
    );
    let (_, caseloads) = mina.get(&app, "/console/caseloads").await;
    assert!(
        caseloads.contains("Inactive") && caseloads.contains("assignee=lee"),
        "{caseloads}"
    );
    let (_, referral_page) = mina.get(&app, &format!("/console/referrals/{id}")).await;
    assert!(
        referral_page.contains("Inactive")
            && referral_page.contains("<option value=\"lee\" selected>lee (inactive)</option>"),
        "{referral_page}"
    );
    let again = mina
        .post(
            &app,
            &format!("/console/referrals/{id}/assignment"),
            &[("csrf", &csrf(&referral_page)), ("assigned_to", "lee")],
        )
        .await;
    assert_eq!(
        again.status(),
        400,
        "no new assignment to an inactive person"
    );
    let reassigned = mina
        .post(
            &app,
            &format!("/console/referrals/{id}/assignment"),
            &[("csrf", &csrf(&referral_page)), ("assigned_to", "amara")],
        )
        .await;
    assert_eq!(reassigned.status(), 303);

    // A staff account decides over this; nobody of that name is a 404.
    let (_, people) = ada.get(&app, "/console/people").await;
    for (username, status) in [("amara", 409), ("nobody", 404)] {
        let response = ada
            .post(
                &app,
                "/console/people",
                &[
                    ("csrf", &csrf(&people)),
                    ("username", username),
                    ("assignable", "no"),
                ],
            )
            .await;
        assert_eq!(response.status(), status, "{username}");
    }
    let bad = ada
        .post(
            &app,
            "/console/people",
            &[
                ("csrf", &csrf(&people)),
                ("username", "lee"),
                ("assignable", "maybe"),
            ],
        )
        .await;
    assert_eq!(bad.status(), 400);

    let restarted = ada
        .post(
            &app,
            "/console/people",
            &[
                ("csrf", &csrf(&people)),
                ("username", "lee"),
                ("assignable", "yes"),
            ],
        )
        .await;
    assert_eq!(restarted.status(), 303);
    assert!(
        staff::assignable_one(&app.store, "lee")
            .await
            .expect("read")
            .is_some()
    );
    let changes = scalar(
        &app,
        "SELECT COUNT(*) FROM audit_events WHERE interaction = 'console:person-assignable' AND staff_username = 'ada' AND status = 303",
    )
    .await;
    assert_eq!(changes, 2);
    app.stop().await;
}

/// More referrals with a follow-up due than the old cap (1,000): the follow-ups page
/// counts and pages every one, and the worklist's follow-up filter finds the referral
/// whose id sorts last (the old cap kept the first 1,000 ids of equal targets).
#[tokio::test]
async fn follow_ups_consider_every_referral_not_the_first_thousand() {
    let app = spawn_app().await;
    add_staff(&app).await;
    let id = send_referral(&app).await;
    crate::console_views::baseline_six_months_ago(&app, &id).await;
    let pool = app.db_pool().await;
    // 1,100 copies of that referral, straight into the record's tables.
    let copies = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1100)";
    for sql in [
        format!(
            "{copies} INSERT INTO referrals (id, identifier_system, identifier_value, stage, \
             fhir_status, received_at, updated_at, received_as, practice_ods_code, practice_name, \
             task_id, version) \
             SELECT 'copy-' || CAST(1000 + n.i AS TEXT), r.identifier_system, \
               r.identifier_value || '-' || CAST(n.i AS TEXT), r.stage, r.fhir_status, \
               r.received_at, r.updated_at, r.received_as, r.practice_ods_code, r.practice_name, \
               'task-copy-' || CAST(n.i AS TEXT), r.version FROM referrals r, n WHERE r.id = '{id}'"
        ),
        format!(
            "{copies} INSERT INTO referral_stage_history (referral_id, seq, stage, at, actor, task_version) \
             SELECT 'copy-' || CAST(1000 + n.i AS TEXT), h.seq, h.stage, h.at, h.actor, h.task_version \
             FROM referral_stage_history h, n WHERE h.referral_id = '{id}'"
        ),
        format!(
            "{copies} INSERT INTO outcome_measures (id, referral_id, measure, recorded_at, entered_at, actor, total, metric) \
             SELECT o.id || '-' || CAST(n.i AS TEXT), 'copy-' || CAST(1000 + n.i AS TEXT), o.measure, \
               o.recorded_at, o.entered_at, o.actor, o.total, o.metric \
             FROM outcome_measures o, n WHERE o.referral_id = '{id}'"
        ),
        // The last copy (by id) from a practice of its own: the worklist below narrows to it.
        "UPDATE referrals SET practice_ods_code = 'Y99999' WHERE id = 'copy-2100'".to_owned(),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&pool)
            .await
            .expect(&sql);
    }
    let mina = sign_in(&app, "mina").await;
    let (status, page) = mina.get(&app, "/console/follow-ups").await;
    assert_eq!(status, 200);
    assert!(page.contains("1101 in all; page 1 of 6"), "{page}");
    assert!(page.contains("/console/follow-ups?page=2"), "{page}");
    let (status, last) = mina.get(&app, "/console/follow-ups?page=6").await;
    assert_eq!(status, 200);
    assert_eq!(
        last.matches("/outcomes?measure=wemwbs").count(),
        101,
        "{last}"
    );
    assert!(!last.contains("page=7"));
    let (status, _) = mina.get(&app, "/console/follow-ups?page=7").await;
    assert_eq!(status, 404);
    let (status, _) = mina.get(&app, "/console/follow-ups?page=0").await;
    assert_eq!(status, 400);

    let (status, worklist) = mina
        .get(
            &app,
            "/console/referrals?view=all&follow_up=1&practice=Y99999",
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        worklist.contains("/console/referrals/copy-2100\""),
        "the 1,101st referral with a follow-up due: {worklist}"
    );
    app.stop().await;
}
