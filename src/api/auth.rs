//! The SMART Backend Services endpoints: `POST /auth/token` (a `client_credentials` grant
//! with a JWT client assertion, answered with one of Sprig's access tokens) and
//! `GET /.well-known/smart-configuration` (where the token endpoint is and what it
//! accepts). The decisions are `identity`'s; this file only speaks OAuth's HTTP.
//!
//! Invariants: every answer of the token endpoint is OAuth JSON (`error`,
//! `error_description`) or a token, with `Cache-Control: no-store`; the assertion and the
//! token are never logged.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use crate::identity::assertion::ASSERTION_ALGORITHMS;
use crate::identity::staff::{self, SignInError};
use crate::identity::{Authenticator, OAuthError, TokenRequest};

fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn oauth_error(error: OAuthError, description: &str) -> Response {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST);
    no_store(
        (
            status,
            Json(json!({ "error": error.as_str(), "error_description": description })),
        )
            .into_response(),
    )
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `POST /auth/token`.
pub async fn token(
    authenticator: Option<Extension<Arc<Authenticator>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(Extension(authenticator)) = authenticator else {
        return oauth_error(
            OAuthError::ServerError,
            "the token endpoint is not available",
        );
    };
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if !form_type.is_some_and(|t| t.eq_ignore_ascii_case("application/x-www-form-urlencoded")) {
        return oauth_error(
            OAuthError::InvalidRequest,
            "send the request as application/x-www-form-urlencoded",
        );
    }
    let mut form: HashMap<String, String> = HashMap::new();
    for (name, value) in form_urlencoded::parse(&body) {
        // RFC 6749 §3.2: a parameter must not appear twice.
        if form
            .insert(name.clone().into_owned(), value.into_owned())
            .is_some()
        {
            return oauth_error(
                OAuthError::InvalidRequest,
                &format!("{name} is given more than once"),
            );
        }
    }
    let field = |name: &str| form.get(name).map(String::as_str);
    let request = TokenRequest {
        grant_type: field("grant_type"),
        client_assertion_type: field("client_assertion_type"),
        client_assertion: field("client_assertion"),
        scope: field("scope"),
    };
    match authenticator.grant_client_token(&request, unix_now()).await {
        Ok(grant) => no_store(
            Json(json!({
                "access_token": grant.token.access_token,
                "token_type": "bearer",
                "expires_in": grant.token.expires_in,
                "scope": grant.token.scope,
            }))
            .into_response(),
        ),
        Err(refusal) => {
            tracing::info!(
                client_id = refusal.client_id.as_deref().unwrap_or("unknown"),
                error = refusal.error.as_str(),
                reason = %refusal.description,
                "access token refused"
            );
            oauth_error(refusal.error, &refusal.description)
        }
    }
}

/// `GET /.well-known/smart-configuration`.
pub async fn smart_configuration(authenticator: Option<Extension<Arc<Authenticator>>>) -> Response {
    let token_endpoint = authenticator
        .as_ref()
        .and_then(|Extension(a)| a.token_endpoint().map(str::to_owned));
    let algorithms: Vec<String> = ASSERTION_ALGORITHMS
        .iter()
        .map(|alg| format!("{alg:?}"))
        .collect();
    Json(json!({
        "token_endpoint": token_endpoint,
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": algorithms,
        "scopes_supported": ["system/*.cruds", "system/*.rs"],
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
    }))
    .into_response()
}

/// `POST /auth/staff/token`: a person signs in with `username` and `password` (a form or
/// JSON) and gets a staff token. A refusal is a 401 that does not say which part was
/// wrong; the password is never logged.
pub async fn staff_token(
    authenticator: Option<Extension<Arc<Authenticator>>>,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(Extension(authenticator)) = authenticator else {
        return oauth_error(OAuthError::ServerError, "sign-in is not available");
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let (username, password) = if content_type == "application/json" {
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(value) => (
                value["username"].as_str().map(str::to_owned),
                value["password"].as_str().map(str::to_owned),
            ),
            Err(_) => (None, None),
        }
    } else if content_type == "application/x-www-form-urlencoded" {
        let mut username = None;
        let mut password = None;
        for (name, value) in form_urlencoded::parse(&body) {
            match name.as_ref() {
                "username" => username = Some(value.into_owned()),
                "password" => password = Some(value.into_owned()),
                _ => {}
            }
        }
        (username, password)
    } else {
        return oauth_error(
            OAuthError::InvalidRequest,
            "send username and password as application/x-www-form-urlencoded or JSON",
        );
    };
    let (Some(username), Some(password)) = (username, password) else {
        return oauth_error(
            OAuthError::InvalidRequest,
            "username and password are required",
        );
    };
    match staff::sign_in(
        &state.store,
        authenticator.tokens(),
        &username,
        password,
        unix_now(),
    )
    .await
    {
        Ok((_, token)) => no_store(
            Json(json!({
                "access_token": token.access_token,
                "token_type": "bearer",
                "expires_in": token.expires_in,
            }))
            .into_response(),
        ),
        Err(SignInError::WrongCredentials) => {
            let mut response = oauth_error(
                OAuthError::InvalidClient,
                "the username or password is wrong, or the account is disabled",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sprig\""),
            );
            response
        }
        Err(error) => {
            tracing::error!(%error, "staff sign-in failed");
            oauth_error(OAuthError::ServerError, "sign-in failed; retry shortly")
        }
    }
}
