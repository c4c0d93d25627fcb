//! The console's views beyond the worklist and one referral, over real HTTP: pages
//! carry no inline style (CSP `style-src 'self'` would block it), people signed in
//! through the identity provider can be given referrals, follow-ups due, and the
//! administrators' pages (each refused to other roles, on the server).

use serde_json::json;
use sprig::identity::{StaffRole, staff};

use crate::console::{add_staff, send_referral, sign_in};
use crate::helpers::spawn_app;

/// The console's pages, each as the role that may see it: none carries a `style`
/// attribute, and each links the console's own stylesheet, which is served.
#[tokio::test]
async fn no_console_page_carries_an_inline_style() {
    let app = spawn_app().await;
    add_staff(&app).await;
    staff::add_account(
        &app.store,
        "ada",
        "Ada Admin",
        StaffRole::Administrator,
        "correct horse battery staple".to_owned(),
    )
    .await
    .expect("account");
    let id = send_referral(&app).await;
    let amara = sign_in(&app, "amara").await;
    let mina = sign_in(&app, "mina").await;
    let ada = sign_in(&app, "ada").await;
    let (_, sign_in_page) = {
        let response = app
            .client
            .get(app.url("/console/sign-in"))
            .send()
            .await
            .expect("page");
        (response.status(), response.text().await.expect("body"))
    };
    let mut pages = vec![("/console/sign-in".to_owned(), sign_in_page)];
    for (who, path) in [
        (&amara, "/console/referrals".to_owned()),
        (&amara, "/console/referrals?view=all&overdue=1".to_owned()),
        (&amara, format!("/console/referrals/{id}")),
        (
            &amara,
            format!("/console/referrals/{id}/outcomes?measure=swemwbs"),
        ),
        (&mina, "/console/caseloads".to_owned()),
        (&ada, "/console/deliveries".to_owned()),
        (&amara, "/console/follow-ups".to_owned()),
        (&mina, "/console/follow-ups".to_owned()),
        (&ada, "/console/registries".to_owned()),
        (&ada, format!("/console/referrals/{id}/audit")),
    ] {
        let (status, page) = who.get(&app, &path).await;
        assert_eq!(status, 200, "{path}");
        pages.push((path, page));
    }
    for (path, page) in &pages {
        assert!(
            !page.to_ascii_lowercase().contains(" style="),
            "{path} carries an inline style: {page}"
        );
        assert!(
            page.contains("/console/style/sprig-console-1.css"),
            "{path} links the console's stylesheet"
        );
    }
    let css = app
        .client
        .get(app.url("/console/style/sprig-console-1.css"))
        .send()
        .await
        .expect("css");
    assert_eq!(css.status(), 200);
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    assert!(
        css.text()
            .await
            .expect("body")
            .contains(".sprig-inline-list")
    );
    app.stop().await;
}

/// Moves `id` to assessment done and records a WEMWBS baseline six months before today
/// (UTC), so its 6-month follow-up is due around today: in this week's window.
pub(crate) async fn baseline_six_months_ago(app: &crate::helpers::TestApp, id: &str) {
    for to in ["accepted", "contacted", "assessment-done"] {
        let response = app
            .client
            .post(app.url(&format!("/api/referrals/{id}/transitions")))
            .json(&json!({ "to": to }))
            .send()
            .await
            .expect("transition");
        assert_eq!(response.status(), 200, "{to}");
    }
    let today = time::OffsetDateTime::now_utc().date();
    let months = i32::from(u8::from(today.month())) - 1 + today.year() * 12 - 6;
    let at = format!(
        "{:04}-{:02}-{:02}T12:00:00Z",
        months.div_euclid(12),
        months.rem_euclid(12) + 1,
        today.day().min(28)
    );
    let response = app
        .client
        .post(app.url(&format!("/api/referrals/{id}/outcomes")))
        .json(&json!({ "measure": "wemwbs", "answers": vec![3; 14], "recorded_at": at }))
        .send()
        .await
        .expect("outcome");
    assert_eq!(response.status(), 201, "{at}");
}

/// The follow-ups page lists what `/api/follow-ups` computes for this week: a link
/// worker their own, a manager everyone's per link worker, an administrator nothing
/// (403); the worklist's filter keeps only referrals with one due or overdue. The
/// caseloads page gives the time to first contact per link worker and practice.
#[tokio::test]
async fn follow_ups_due_this_week_per_link_worker() {
    let app = spawn_app().await;
    add_staff(&app).await;
    staff::add_account(
        &app.store,
        "ada",
        "Ada Admin",
        StaffRole::Administrator,
        "correct horse battery staple".to_owned(),
    )
    .await
    .expect("account");
    let amaras = send_referral(&app).await;
    let bens = send_referral(&app).await;
    let none_due = send_referral(&app).await;
    baseline_six_months_ago(&app, &amaras).await;
    baseline_six_months_ago(&app, &bens).await;
    let pool = app.db_pool().await;
    for (id, who) in [(&amaras, "amara"), (&bens, "ben")] {
        sqlx::query("UPDATE referrals SET assigned_to = $1 WHERE id = $2")
            .bind(who)
            .bind(id)
            .execute(&pool)
            .await
            .expect("assign");
    }
    // The API's own answer for this week holds both.
    let api: serde_json::Value = app
        .client
        .get(app.url("/api/follow-ups"))
        .send()
        .await
        .expect("follow-ups")
        .json()
        .await
        .expect("json");
    let listed: Vec<&str> = api["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["referral_id"].as_str())
        .collect();
    assert!(
        listed.contains(&amaras.as_str()) && listed.contains(&bens.as_str()),
        "{api}"
    );

    let amara = sign_in(&app, "amara").await;
    let (status, page) = amara.get(&app, "/console/follow-ups").await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(&format!(
            "href=\"/console/referrals/{amaras}/outcomes?measure=wemwbs\""
        )),
        "{page}"
    );
    assert!(!page.contains(&bens), "only Amara's own: {page}");

    let mina = sign_in(&app, "mina").await;
    let (status, page) = mina.get(&app, "/console/follow-ups").await;
    assert_eq!(status, 200);
    assert!(page.contains(&amaras) && page.contains(&bens), "{page}");
    assert!(
        page.contains("<h2>Amara Okafor (amara) (1)</h2>")
            && page.contains("<h2>Ben Price (ben) (1)</h2>"),
        "grouped per link worker: {page}"
    );
    assert!(page.contains("WEMWBS, "), "{page}");

    let (_, worklist) = mina
        .get(&app, "/console/referrals?view=all&follow_up=1")
        .await;
    assert!(
        worklist.contains(&amaras) && worklist.contains(&bens) && !worklist.contains(&none_due),
        "{worklist}"
    );
    let (_, worklist) = mina.get(&app, "/console/referrals?view=all").await;
    assert!(worklist.contains(&none_due));

    // Both were contacted the day they arrived: 0 working days, per link worker and
    // per practice (the uncontacted one does not count).
    let (_, caseloads) = mina.get(&app, "/console/caseloads").await;
    for row in [
        "<td>Amara Okafor (amara)</td><td>1</td><td>0</td><td>0</td>",
        "<td>Ben Price (ben)</td><td>1</td><td>0</td><td>0</td>",
        "<td>K83999</td><td>2</td><td>0</td><td>0</td>",
    ] {
        assert!(caseloads.contains(row), "{row}: {caseloads}");
    }

    let ada = sign_in(&app, "ada").await;
    let (status, _) = ada.get(&app, "/console/follow-ups").await;
    assert_eq!(status, 403);
    app.stop().await;
}

/// Administrators' views: the deliveries page shows the receiver's answer (its
/// OperationOutcome's text, escaped) and retries all of a practice's failures; the
/// registries as loaded, without file paths (clients: `console::admin`'s unit test,
/// since a client registry closes the open mode this test sends with); one referral's audit
/// trail, itself audited. Each is refused to a link worker and a manager, on the
/// server, a forged form too.
#[tokio::test]
async fn administrators_see_answers_registries_and_a_referral_s_audit_trail() {
    use std::sync::Arc;
    use wiremock::matchers::any;
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let gp = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(422).set_body_json(json!({
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": "error",
                "code": "invalid",
                "diagnostics": "Task.owner <script>alert(1)</script> is not known here"
            }]
        })))
        .mount(&gp)
        .await;
    let dir = Arc::new(tempfile::TempDir::new().expect("temporary directory"));
    let endpoints = dir.path().join("endpoints.toml");
    std::fs::write(
        &endpoints,
        format!(
            "[[endpoint]]\nods_code = \"K83999\"\nbase_url = \"{}/fhir\"\nmode = \"rest\"\nauth = {{ type = \"none\" }}\n",
            gp.uri()
        ),
    )
    .expect("endpoints");
    let app = crate::helpers::spawn_app_in(Arc::clone(&dir), |settings| {
        settings.delivery.endpoints = Some(endpoints.clone());
        settings.delivery.poll_interval_ms = 50;
    })
    .await;
    add_staff(&app).await;
    staff::add_account(
        &app.store,
        "ada",
        "Ada Admin",
        StaffRole::Administrator,
        "correct horse battery staple".to_owned(),
    )
    .await
    .expect("account");
    let id = send_referral(&app).await;
    let pool = app.db_pool().await;
    // The Task's first version is refused by the practice: a dead letter.
    let started = std::time::Instant::now();
    loop {
        let dead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE state = 'dead'")
            .fetch_one(&pool)
            .await
            .expect("count");
        if dead > 0 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "no dead letter"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let ada = sign_in(&app, "ada").await;
    let (status, page) = ada.get(&app, "/console/deliveries").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("Task.owner &lt;script&gt;alert(1)&lt;/script&gt; is not known here"),
        "the receiver's answer, escaped: {page}"
    );
    assert!(!page.contains("<script>"), "{page}");
    assert!(page.contains("<strong>422</strong>"), "{page}");
    assert!(
        page.contains("action=\"/console/deliveries/practices/K83999/retry\""),
        "{page}"
    );

    let amara = sign_in(&app, "amara").await;
    let mina = sign_in(&app, "mina").await;
    let (status, amaras_page) = amara.get(&app, &format!("/console/referrals/{id}")).await;
    assert_eq!(status, 200);
    assert!(
        !amaras_page.contains("/audit\""),
        "no audit trail link for a link worker"
    );
    let forged = amara
        .post(
            &app,
            "/console/deliveries/practices/K83999/retry",
            &[("csrf", &crate::console::csrf(&amaras_page))],
        )
        .await;
    assert_eq!(forged.status(), 403, "a link worker's forged retry");
    for who in [&amara, &mina] {
        for path in [
            "/console/registries".to_owned(),
            format!("/console/referrals/{id}/audit"),
            "/console/deliveries".to_owned(),
        ] {
            let (status, _) = who.get(&app, &path).await;
            assert_eq!(status, 403, "{path}");
        }
    }
    // No retry without the session's token either.
    let no_token = ada
        .post(&app, "/console/deliveries/practices/K83999/retry", &[])
        .await;
    assert_eq!(no_token.status(), 403);

    let retried = ada
        .post(
            &app,
            "/console/deliveries/practices/K83999/retry",
            &[("csrf", &crate::console::csrf(&page))],
        )
        .await;
    assert_eq!(retried.status(), 303);
    let location = retried.headers()["location"].to_str().expect("ascii");
    assert!(
        location.starts_with("/console/deliveries?retried=")
            && location != "/console/deliveries?retried=0",
        "{location}"
    );

    let (status, registries) = ada.get(&app, "/console/registries").await;
    assert_eq!(status, 200);
    assert!(
        registries.contains("<td>K83999</td>")
            && registries.contains(&format!("{}/fhir", gp.uri())),
        "{registries}"
    );
    assert!(
        registries.contains("No client is registered")
            && !registries.contains("endpoints.toml")
            && !registries.contains(dir.path().to_str().expect("utf-8")),
        "no file paths: {registries}"
    );

    let (status, trail) = ada
        .get(&app, &format!("/console/referrals/{id}/audit"))
        .await;
    assert_eq!(status, 200);
    assert!(
        trail.contains("amara (link_worker)") && trail.contains("console:referral"),
        "Amara's view of the referral: {trail}"
    );
    let (_, trail) = ada
        .get(&app, &format!("/console/referrals/{id}/audit"))
        .await;
    assert!(
        trail.contains("console:audit-trail"),
        "the first view is in the trail: {trail}"
    );
    let (views,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM audit_events WHERE interaction = 'console:audit-trail' AND staff_username = 'ada'",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(views, 2);
    let (status, _) = ada.get(&app, "/console/referrals/no-such-one/audit").await;
    assert_eq!(status, 404);
    app.stop().await;
}
