//! The console (`/console`) over real HTTP, as a browser would use it (cookies, forms,
//! redirects), without a browser: sign-in and its cookie, CSRF and origin checks, the
//! worklist, one referral's actions through the workflow, roles enforced on the server,
//! sign-out. `console_browser` drives the same flows in Chromium.

use serde_json::Value;
use sprig::identity::{StaffRole, staff};

use crate::helpers::{TestApp, json_body, sample_referral_text, spawn_app};

const PASSWORD: &str = "correct horse battery staple";

/// A signed-in browser: its cookie header.
pub(crate) struct Browser {
    cookie: String,
}

pub(crate) async fn add_staff(app: &TestApp) {
    for (username, name, role) in [
        ("amara", "Amara Okafor", StaffRole::LinkWorker),
        ("ben", "Ben Price", StaffRole::LinkWorker),
        ("mina", "Mina Shah", StaffRole::ServiceManager),
    ] {
        staff::add_account(&app.store, username, name, role, PASSWORD.to_owned())
            .await
            .expect("account");
    }
}

pub(crate) async fn sign_in(app: &TestApp, username: &str) -> Browser {
    let response = app
        .client
        .post(app.url("/console/sign-in"))
        .header("origin", &app.address)
        .form(&[("username", username), ("password", PASSWORD)])
        .send()
        .await
        .expect("sign in");
    assert_eq!(response.status(), 303, "{username} signs in");
    assert_eq!(response.headers()["location"], "/console/referrals");
    let set_cookie = response.headers()["set-cookie"].to_str().expect("ascii");
    let cookie = set_cookie.split(';').next().expect("name=value").to_owned();
    Browser { cookie }
}

impl Browser {
    pub(crate) async fn get(&self, app: &TestApp, path: &str) -> (u16, String) {
        let response = app
            .client
            .get(app.url(path))
            .header("cookie", &self.cookie)
            .send()
            .await
            .expect("get");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    pub(crate) async fn post(
        &self,
        app: &TestApp,
        path: &str,
        form: &[(&str, &str)],
    ) -> reqwest::Response {
        app.client
            .post(app.url(path))
            .header("cookie", &self.cookie)
            .header("origin", &app.address)
            .form(form)
            .send()
            .await
            .expect("post")
    }
}

/// The CSRF token in a page's forms.
pub(crate) fn csrf(page: &str) -> String {
    let start = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + "name=\"csrf\" value=\"".len();
    page[start..].split('"').next().expect("token").to_owned()
}

pub(crate) async fn send_referral(app: &TestApp) -> String {
    let response = app
        .client
        .post(app.url("/fhir/ServiceRequest"))
        .header("content-type", "application/fhir+json")
        .body(sample_referral_text())
        .send()
        .await
        .expect("create");
    assert_eq!(response.status(), 201);
    json_body(response).await["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

async fn record(app: &TestApp, id: &str) -> Value {
    let response = app
        .client
        .get(app.url(&format!("/api/referrals/{id}")))
        .send()
        .await
        .expect("detail");
    assert_eq!(response.status(), 200);
    json_body(response).await
}

#[tokio::test]
async fn without_staff_accounts_the_sign_in_page_says_how_to_create_one() {
    let app = spawn_app().await;
    // Open on loopback for the APIs, but never for the console: it needs a person.
    let response = app
        .client
        .get(app.url("/console/referrals"))
        .send()
        .await
        .expect("worklist");
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/console/sign-in");
    let (status, page) = Browser {
        cookie: String::new(),
    }
    .get(&app, "/console/sign-in")
    .await;
    assert_eq!(status, 200);
    assert!(page.contains("sprig staff add"), "{page}");
    // Only the sign-in page and its stylesheet are served without a session.
    let css = app
        .client
        .get(app.url("/console/style/nhsuk-frontend-10.6.1.min.css"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("css");
    assert_eq!(css.status(), 200);
    assert_eq!(css.headers()["content-encoding"], "gzip");
    assert!(
        css.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    let icon = app
        .client
        .get(app.url("/console/assets/images/favicon.svg"))
        .send()
        .await
        .expect("icon");
    assert_eq!(icon.status(), 303);
    app.stop().await;
}

#[tokio::test]
async fn sign_in_sets_a_strict_http_only_cookie_and_sign_out_ends_the_session() {
    let app = spawn_app().await;
    add_staff(&app).await;
    let wrong = app
        .client
        .post(app.url("/console/sign-in"))
        .form(&[("username", "amara"), ("password", "not the password")])
        .send()
        .await
        .expect("sign in");
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let response = app
        .client
        .post(app.url("/console/sign-in"))
        .form(&[("username", "amara"), ("password", PASSWORD)])
        .send()
        .await
        .expect("sign in");
    assert_eq!(response.status(), 303);
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set_cookie.contains(flag), "{set_cookie}");
    }
    // Plain HTTP on loopback: `Secure` would lose the cookie.
    assert!(!set_cookie.contains("Secure"), "{set_cookie}");
    let browser = Browser {
        cookie: set_cookie.split(';').next().unwrap().to_owned(),
    };
    let (status, page) = browser.get(&app, "/console/referrals").await;
    assert_eq!(status, 200);
    assert!(page.contains("Amara Okafor"));
    // Sign-out needs the CSRF token too.
    let refused = browser.post(&app, "/console/sign-out", &[]).await;
    assert_eq!(refused.status(), 403);
    let out = browser
        .post(&app, "/console/sign-out", &[("csrf", &csrf(&page))])
        .await;
    assert_eq!(out.status(), 303);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let (status, _) = browser.get(&app, "/console/referrals").await;
    assert_eq!(status, 303, "the old cookie signs no one in");
    app.stop().await;
}

#[tokio::test]
async fn a_link_worker_works_a_referral_through_the_console() {
    let app = spawn_app().await;
    add_staff(&app).await;
    let id = send_referral(&app).await;
    let amara = sign_in(&app, "amara").await;
    let (status, page) = amara.get(&app, "/console/referrals?q=9000000009").await;
    assert_eq!(status, 200);
    assert!(
        page.contains(&format!("/console/referrals/{id}")),
        "found by NHS number"
    );
    let (_, by_name) = amara.get(&app, "/console/referrals?q=llywelyn").await;
    assert!(
        by_name.contains(&format!("/console/referrals/{id}")),
        "found by name"
    );
    let (status, page) = amara.get(&app, &format!("/console/referrals/{id}")).await;
    assert_eq!(status, 200);
    let token = csrf(&page);
    let path = format!("/console/referrals/{id}/transition");

    // Declining without a reason: the error summary, and nothing changes.
    let response = amara
        .post(&app, &path, &[("csrf", &token), ("to", "declined")])
        .await;
    assert_eq!(response.status(), 400);
    let body = response.text().await.unwrap();
    assert!(
        body.contains("There is a problem") && body.contains("href=\"#reason\""),
        "{body}"
    );
    assert_eq!(record(&app, &id).await["stage"], "received");

    // A post without the token, or from another site, is refused before anything.
    let forged = amara.post(&app, &path, &[("to", "accepted")]).await;
    assert_eq!(forged.status(), 403);
    let cross_site = app
        .client
        .post(app.url(&path))
        .header("cookie", &amara.cookie)
        .header("origin", "http://evil.example")
        .form(&[("csrf", token.as_str()), ("to", "accepted")])
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403);
    assert_eq!(record(&app, &id).await["stage"], "received");

    for stage in ["accepted", "contacted", "assessment-done", "plan-agreed"] {
        let response = amara
            .post(&app, &path, &[("csrf", &token), ("to", stage)])
            .await;
        assert_eq!(response.status(), 303, "{stage}");
        assert_eq!(record(&app, &id).await["stage"], stage);
    }
    let mut answers: Vec<(String, String)> = vec![
        ("csrf".into(), token.clone()),
        ("measure".into(), "swemwbs".into()),
    ];
    answers.extend((1..=7).map(|n| (format!("item{n}"), "3".to_owned())));
    let form: Vec<(&str, &str)> = answers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let response = amara
        .post(
            &app,
            &format!("/console/referrals/{id}/outcomes"),
            &form[..7],
        )
        .await;
    assert_eq!(response.status(), 400, "unanswered items are an error");
    let response = amara
        .post(&app, &format!("/console/referrals/{id}/outcomes"), &form)
        .await;
    assert_eq!(response.status(), 303);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let (_, page) = amara.get(&app, &location).await;
    assert!(page.contains("Score: <strong>21</strong>"), "{page}");
    let detail = record(&app, &id).await;
    assert_eq!(detail["outcomes"][0]["total"], 21);
    assert_eq!(detail["timeline"][1]["actor"], "amara");
    app.stop().await;
}

#[tokio::test]
async fn roles_and_assignment_are_enforced_on_the_server() {
    let app = spawn_app().await;
    add_staff(&app).await;
    let id = send_referral(&app).await;
    let amara = sign_in(&app, "amara").await;
    let (_, page) = amara.get(&app, &format!("/console/referrals/{id}")).await;
    assert!(
        !page.contains("/assignment"),
        "a link worker is not offered assignment"
    );
    // A forged manager's form is refused.
    let forged = amara
        .post(
            &app,
            &format!("/console/referrals/{id}/assignment"),
            &[("csrf", &csrf(&page)), ("assigned_to", "amara")],
        )
        .await;
    assert_eq!(forged.status(), 403);
    assert_eq!(record(&app, &id).await["assigned_to"], Value::Null);

    let mina = sign_in(&app, "mina").await;
    let (_, page) = mina.get(&app, &format!("/console/referrals/{id}")).await;
    let assigned = mina
        .post(
            &app,
            &format!("/console/referrals/{id}/assignment"),
            &[("csrf", &csrf(&page)), ("assigned_to", "ben")],
        )
        .await;
    assert_eq!(assigned.status(), 303);
    assert_eq!(record(&app, &id).await["assigned_to"], "ben");
    // Someone who cannot hold a caseload: the page again with the error, nothing changed.
    let (_, page) = mina.get(&app, &format!("/console/referrals/{id}")).await;
    let refused = mina
        .post(
            &app,
            &format!("/console/referrals/{id}/assignment"),
            &[("csrf", &csrf(&page)), ("assigned_to", "nobody-here")],
        )
        .await;
    assert_eq!(refused.status(), 400);
    let body = refused.text().await.expect("body");
    assert!(body.contains("nhsuk-error-summary"), "{body}");
    assert!(
        body.contains("href=\"#assigned_to\""),
        "the summary links to the field"
    );
    assert_eq!(record(&app, &id).await["assigned_to"], "ben");
    // Another link worker's referral: neither shown nor changeable by Amara.
    let (status, _) = amara.get(&app, &format!("/console/referrals/{id}")).await;
    assert_eq!(status, 404);
    let (_, worklist) = amara.get(&app, "/console/referrals").await;
    assert!(!worklist.contains(&id), "not in Amara's worklist");
    let refused = amara
        .post(
            &app,
            &format!("/console/referrals/{id}/transition"),
            &[("csrf", &csrf(&worklist)), ("to", "accepted")],
        )
        .await;
    assert_eq!(refused.status(), 403);
    let ben = sign_in(&app, "ben").await;
    let (status, _) = ben.get(&app, &format!("/console/referrals/{id}")).await;
    assert_eq!(status, 200);
    let (status, _) = ben.get(&app, "/console/caseloads").await;
    assert_eq!(status, 403, "caseloads are for managers");
    let (status, page) = mina.get(&app, "/console/caseloads").await;
    assert_eq!(status, 200);
    assert!(page.contains("ben"));
    assert!(
        page.contains("By practice") && page.contains("K83999"),
        "{page}"
    );
    // The page views were audited as the people.
    let (views,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM audit_events WHERE interaction = 'console:referral' AND staff_username = 'amara'",
    )
    .fetch_one(&app.db_pool().await)
    .await
    .unwrap();
    assert!(views >= 2, "{views}");
    app.stop().await;
}

/// The hidden `kept.` fields a sign-in page carries, as a form to post back.
fn hidden_fields(page: &str) -> Vec<(String, String)> {
    page.split("<input type=\"hidden\" name=\"")
        .skip(1)
        .filter_map(|rest| {
            let (name, rest) = rest.split_once('"')?;
            let value = rest.split_once("value=\"")?.1.split_once('"')?.0;
            Some((
                name.to_owned(),
                value.replace("&amp;", "&").replace("&quot;", "\""),
            ))
        })
        .collect()
}

#[tokio::test]
async fn what_was_typed_as_the_session_ended_comes_back_after_sign_in() {
    let app = spawn_app().await;
    add_staff(&app).await;
    let id = send_referral(&app).await;
    let amara = sign_in(&app, "amara").await;
    let (_, page) = amara.get(&app, &format!("/console/referrals/{id}")).await;
    let pool = app.db_pool().await;
    let notes_before: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM referral_notes")
        .fetch_one(&pool)
        .await
        .expect("count");
    // Her session ends while she types (here: unused past the idle limit).
    sqlx::query("UPDATE console_sessions SET last_seen_at = last_seen_at - 7200")
        .execute(&pool)
        .await
        .expect("age the session");
    let typed = "Rang twice & left a voicemail";
    let posted = amara
        .post(
            &app,
            &format!("/console/referrals/{id}/notes"),
            &[("csrf", &csrf(&page)), ("text", typed)],
        )
        .await;
    assert_eq!(
        posted.status(),
        307,
        "the browser posts the form to sign-in"
    );
    let location = posted.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(
        location,
        format!("/console/sign-in?return_to=/console/referrals/{id}/notes")
    );
    // What the browser does with a 307: the same form, to the sign-in page.
    let sign_in_page = app
        .client
        .post(app.url(&location))
        .header("origin", &app.address)
        .form(&[("csrf", csrf(&page).as_str()), ("text", typed)])
        .send()
        .await
        .expect("re-post");
    assert_eq!(sign_in_page.status(), 401);
    let sign_in_page = sign_in_page.text().await.expect("body");
    assert!(
        sign_in_page.contains("Your session had ended"),
        "{sign_in_page}"
    );
    let mut form = hidden_fields(&sign_in_page);
    assert!(
        form.iter().all(|(k, _)| k != "kept.csrf"),
        "the dead CSRF token is not kept"
    );
    assert!(
        form.contains(&("kept.text".to_owned(), typed.to_owned())),
        "{form:?}"
    );
    form.push(("username".into(), "amara".into()));
    form.push(("password".into(), PASSWORD.into()));
    let signed_in = app
        .client
        .post(app.url("/console/sign-in"))
        .header("origin", &app.address)
        .form(&form)
        .send()
        .await
        .expect("sign in");
    assert_eq!(signed_in.status(), 303);
    assert_eq!(
        signed_in.headers()["location"],
        format!("/console/referrals/{id}?resumed=1").as_str()
    );
    let set_cookie = signed_in.headers()["set-cookie"].to_str().expect("ascii");
    let again = Browser {
        cookie: set_cookie.split(';').next().expect("pair").to_owned(),
    };
    let (status, page) = again
        .get(&app, &format!("/console/referrals/{id}?resumed=1"))
        .await;
    assert_eq!(status, 200);
    assert!(page.contains("Check it and send it again"), "{page}");
    assert!(
        page.contains("Rang twice &amp; left a voicemail</textarea>"),
        "the note is back in its box: {page}"
    );
    // Not saved for her (she sends it herself), and given back once only.
    let notes: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM referral_notes")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(notes, notes_before);
    let (_, page) = again
        .get(&app, &format!("/console/referrals/{id}?resumed=1"))
        .await;
    assert!(!page.contains("Rang twice"), "shown once");
}

#[tokio::test]
async fn the_worklist_filters_by_practice_reason_date_and_overdue_in_working_days() {
    let app = spawn_app().await;
    add_staff(&app).await;
    let old = send_referral(&app).await;
    let new = send_referral(&app).await;
    let bens = send_referral(&app).await;
    let pool = app.db_pool().await;
    // One received long ago (overdue for first contact on any target), one just now.
    sqlx::query("UPDATE referrals SET received_at = '2026-10-01T09:00:00.000Z' WHERE id = $1")
        .bind(&old)
        .execute(&pool)
        .await
        .expect("age");
    sqlx::query("UPDATE referrals SET assigned_to = 'ben' WHERE id = $1")
        .bind(&bens)
        .execute(&pool)
        .await
        .expect("assign");
    let practice: String =
        sqlx::query_scalar("SELECT practice_ods_code FROM referrals WHERE id = $1")
            .bind(&old)
            .fetch_one(&pool)
            .await
            .expect("practice");
    let amara = sign_in(&app, "amara").await;

    // Mine and unassigned (the union of two index scans): not Ben's.
    let (status, page) = amara.get(&app, "/console/referrals").await;
    assert_eq!(status, 200);
    assert!(page.contains(&old) && page.contains(&new), "{page}");
    assert!(
        !page.contains(&bens),
        "Ben's referral is not in Amara's default view"
    );
    assert_eq!(page.matches("Overdue</strong>").count(), 1, "{page}");

    let (_, page) = amara.get(&app, "/console/referrals?overdue=1").await;
    assert!(page.contains(&old) && !page.contains(&new), "{page}");
    assert!(page.contains("within 5 working days"), "{page}");

    let (_, page) = amara
        .get(
            &app,
            &format!(
                "/console/referrals?view=all&practice={}",
                practice.to_lowercase()
            ),
        )
        .await;
    assert!(page.contains(&old) && page.contains(&new) && page.contains(&bens));
    let (_, page) = amara
        .get(&app, "/console/referrals?view=all&practice=Z99999")
        .await;
    assert!(page.contains("No referrals match"), "{page}");

    let (_, page) = amara
        .get(&app, "/console/referrals?view=all&reason=loneliness")
        .await;
    assert!(page.contains(&new), "{page}");
    let (_, page) = amara
        .get(&app, "/console/referrals?view=all&reason=no-such-reason")
        .await;
    assert!(page.contains("No referrals match"), "{page}");

    let (_, page) = amara
        .get(
            &app,
            "/console/referrals?view=all&from=2026-09-30&to=2026-10-01",
        )
        .await;
    assert!(page.contains(&old) && !page.contains(&new), "{page}");

    let (status, page) = amara.get(&app, "/console/referrals?from=last+week").await;
    assert_eq!(status, 400);
    assert!(
        page.contains("href=\"#from\""),
        "the summary links to the field: {page}"
    );
}
