//! A link worker and another link worker's referral (issue 17): the worklist lists
//! it, its detail (under `/api` and in the console) is a 404 unless the service allows
//! it (`auth.link_workers_see_all_referrals`).

use serde_json::json;

use crate::console::{add_staff, sign_in};
use crate::helpers::{TestApp, json_body, sample_referral_text, spawn_app_with};

/// `add_staff`'s password.
const PASSWORD: &str = "correct horse battery staple";

async fn bens_referral(app: &TestApp) -> String {
    let response = app
        .client
        .post(app.url("/fhir/ServiceRequest"))
        .header("content-type", "application/fhir+json")
        .body(sample_referral_text())
        .send()
        .await
        .expect("create");
    assert_eq!(response.status(), 201);
    let id = json_body(response).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    sqlx::query("UPDATE referrals SET assigned_to = 'ben' WHERE id = $1")
        .bind(&id)
        .execute(&app.db_pool().await)
        .await
        .expect("assign");
    id
}

async fn staff_token(app: &TestApp, username: &str) -> String {
    let response = app
        .client
        .post(app.url("/auth/staff/token"))
        .json(&json!({"username": username, "password": PASSWORD}))
        .send()
        .await
        .expect("sign in");
    assert_eq!(response.status(), 200);
    json_body(response).await["access_token"]
        .as_str()
        .expect("token")
        .to_owned()
}

async fn api_get(app: &TestApp, token: &str, path: &str) -> (u16, String) {
    let response = app
        .client
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("answered");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

#[tokio::test]
async fn another_link_workers_referral_is_listed_but_opened_only_when_the_service_allows_it() {
    for allowed in [false, true] {
        let app = spawn_app_with(|s| s.auth.link_workers_see_all_referrals = allowed).await;
        add_staff(&app).await;
        let id = bens_referral(&app).await;
        let detail = format!("/api/referrals/{id}");
        let page = format!("/console/referrals/{id}");

        let amara = staff_token(&app, "amara").await;
        let (status, worklist) = api_get(&app, &amara, "/api/referrals").await;
        assert_eq!(status, 200);
        assert!(worklist.contains(&id), "listed ({allowed}): {worklist}");
        let (status, body) = api_get(&app, &amara, &detail).await;
        let (expected, missing) = if allowed { (200, 404) } else { (404, 404) };
        assert_eq!(status, expected, "allowed = {allowed}: {body}");
        if !allowed {
            // The same answer as a referral that does not exist.
            let (status, nothing) = api_get(&app, &amara, "/api/referrals/no-such-referral").await;
            assert_eq!(status, missing);
            assert_eq!(
                body.replace(&id, "X"),
                nothing.replace("no-such-referral", "X")
            );
        }
        let browser = sign_in(&app, "amara").await;
        let (status, _) = browser.get(&app, &page).await;
        assert_eq!(status, expected, "console, allowed = {allowed}");

        // Ben, whose referral it is, opens it either way.
        let ben = staff_token(&app, "ben").await;
        assert_eq!(api_get(&app, &ben, &detail).await.0, 200);
        assert_eq!(sign_in(&app, "ben").await.get(&app, &page).await.0, 200);
        app.stop().await;
    }
}
