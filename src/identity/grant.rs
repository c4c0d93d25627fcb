//! The token endpoint's decision (`POST /auth/token`, SMART Backend Services): a
//! `client_credentials` grant with a JWT client assertion, answered with one of Sprig's
//! access tokens carrying the requested scopes cut down to what the client may have.
//!
//! Invariants:
//! - nothing is granted unless the assertion passed every check of `assertion` (replay
//!   included) and the client is enabled;
//! - the granted scopes are never more than the registry allows, and an empty grant is
//!   `invalid_scope`, not a token that can do nothing;
//! - refusals name the client id at most; the assertion is never echoed.

use super::scopes::Scopes;
use super::token::IssuedToken;
use super::{Authenticator, JWT_BEARER_ASSERTION_TYPE, OAuthError};

/// The form fields of a token request.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenRequest<'a> {
    /// `grant_type`: must be `client_credentials`.
    pub grant_type: Option<&'a str>,
    /// `client_assertion_type`: must be the JWT bearer type.
    pub client_assertion_type: Option<&'a str>,
    /// `client_assertion`: the signed JWT.
    pub client_assertion: Option<&'a str>,
    /// `scope`: the scopes asked for (space-separated).
    pub scope: Option<&'a str>,
}

/// A token granted.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    /// The client it was granted to.
    pub client_id: String,
    /// The token, its lifetime and granted scope.
    pub token: IssuedToken,
}

/// A token request refused: the OAuth error, a description safe to send, and the client
/// when one was identified (for the log and audit).
#[derive(Debug, Clone)]
pub struct TokenRefusal {
    /// The `error` member.
    pub error: OAuthError,
    /// The `error_description` member.
    pub description: String,
    /// The client, when the assertion named a registered one.
    pub client_id: Option<String>,
}

impl TokenRefusal {
    fn new(error: OAuthError, description: impl Into<String>) -> Self {
        TokenRefusal {
            error,
            description: description.into(),
            client_id: None,
        }
    }
}

impl Authenticator {
    /// Decides a token request. `now` is Unix seconds.
    pub async fn grant_client_token(
        &self,
        request: &TokenRequest<'_>,
        now: i64,
    ) -> Result<TokenGrant, TokenRefusal> {
        let Some(verifier) = &self.assertions else {
            return Err(TokenRefusal::new(
                OAuthError::ServerError,
                "this server does not know its token endpoint's URL (auth.token_url or \
                 public_base_url), so no assertion can name it",
            ));
        };
        match request.grant_type {
            Some("client_credentials") => {}
            Some(_) => {
                return Err(TokenRefusal::new(
                    OAuthError::UnsupportedGrantType,
                    "only grant_type=client_credentials is supported",
                ));
            }
            None => {
                return Err(TokenRefusal::new(
                    OAuthError::InvalidRequest,
                    "grant_type is missing",
                ));
            }
        }
        if request.client_assertion_type != Some(JWT_BEARER_ASSERTION_TYPE) {
            return Err(TokenRefusal::new(
                OAuthError::InvalidRequest,
                format!("client_assertion_type must be {JWT_BEARER_ASSERTION_TYPE}"),
            ));
        }
        let Some(assertion) = request.client_assertion else {
            return Err(TokenRefusal::new(
                OAuthError::InvalidRequest,
                "client_assertion is missing",
            ));
        };
        let registry = self.clients().current();
        let verified = verifier
            .verify(assertion, &registry, &self.store, now)
            .await
            .map_err(|error| TokenRefusal {
                error: error.oauth_error(),
                description: error.to_string(),
                client_id: error.client_id().map(str::to_owned),
            })?;
        let refused = |error, description: &str| TokenRefusal {
            error,
            description: description.to_owned(),
            client_id: Some(verified.client_id.clone()),
        };
        let client = registry
            .get(&verified.client_id)
            .filter(|c| c.enabled)
            .ok_or_else(|| refused(OAuthError::InvalidClient, "the client is disabled"))?;
        let requested = match request.scope {
            Some(scope) if !scope.trim().is_empty() => Scopes::parse_requested(scope),
            _ => {
                return Err(refused(
                    OAuthError::InvalidScope,
                    "scope is missing: ask for the system/ scopes needed",
                ));
            }
        };
        let granted = client.scopes.intersect(&requested);
        if granted.is_empty() {
            return Err(refused(
                OAuthError::InvalidScope,
                "none of the requested scopes is allowed for this client",
            ));
        }
        let ods = client
            .ods_codes
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect();
        let token = self
            .tokens()
            .issue_client(&client.client_id, ods, &granted.to_string(), now)
            .map_err(|e| refused(OAuthError::ServerError, &e.to_string()))?;
        tracing::info!(
            client_id = %client.client_id,
            token_id = %token.jti,
            scope = %token.scope,
            "access token granted"
        );
        Ok(TokenGrant {
            client_id: client.client_id.clone(),
            token,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::config::SecurityMode;
    use crate::identity::keys::test_keys::ec384;
    use crate::identity::{
        AssertionVerifier, Clients, Credentials, Interaction, TokenSecret, TokenService,
    };
    use crate::store::test_support::open_store;

    const TOKEN_URL: &str = "http://127.0.0.1:8080/auth/token";

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64
    }

    #[tokio::test]
    async fn a_valid_request_gets_a_down_scoped_token_that_authenticates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = ec384("k1");
        std::fs::write(dir.path().join("k.json"), key.jwks().to_string()).expect("write");
        let path = dir.path().join("clients.toml");
        std::fs::write(
            &path,
            "[[client]]\nclient_id = \"gp-a\"\nods_codes = [\"A81001\"]\nscopes = \"system/ServiceRequest.cr system/Task.rs\"\njwks_file = \"k.json\"\n",
        )
        .expect("write");
        let store = open_store(dir.path()).await;
        let authenticator = Authenticator::new(
            SecurityMode::Enforced,
            Clients::load(Some(&path)).expect("registry"),
            Arc::new(TokenService::new(
                &TokenSecret::from_bytes(&[5; 32]).expect("secret"),
                "sprig",
                "sprig",
                Duration::from_secs(300),
            )),
            None,
            store.clone(),
            false,
        )
        .with_token_endpoint(AssertionVerifier::new(TOKEN_URL));
        let assertion = |jti: &str| {
            key.sign(
                Some("k1"),
                &json!({ "iss": "gp-a", "sub": "gp-a", "aud": TOKEN_URL, "exp": now() + 60, "jti": jti }),
            )
        };
        let first = assertion("one");
        let request = TokenRequest {
            grant_type: Some("client_credentials"),
            client_assertion_type: Some(JWT_BEARER_ASSERTION_TYPE),
            client_assertion: Some(&first),
            scope: Some("system/*.rs system/Observation.r"),
        };
        let grant = authenticator
            .grant_client_token(&request, now())
            .await
            .expect("granted");
        assert_eq!(grant.token.scope, "system/ServiceRequest.r system/Task.rs");
        let header = format!("Bearer {}", grant.token.access_token);
        let access = authenticator
            .authenticate(
                &Credentials {
                    authorization: Some(&header),
                    ..Credentials::default()
                },
                now(),
            )
            .await
            .expect("the token works");
        assert!(access.may(Interaction::Search, "Task"));
        assert!(!access.may(Interaction::Create, "ServiceRequest"));

        // The same assertion again: a replay.
        let refusal = authenticator
            .grant_client_token(&request, now())
            .await
            .expect_err("replay");
        assert_eq!(refusal.error, OAuthError::InvalidClient);
        assert_eq!(refusal.client_id.as_deref(), Some("gp-a"));

        let (second, third) = (assertion("two"), assertion("three"));
        let cases: &[(TokenRequest<'_>, OAuthError)] = &[
            (
                TokenRequest {
                    scope: Some("system/Observation.rs"),
                    client_assertion: Some(&second),
                    ..request
                },
                OAuthError::InvalidScope,
            ),
            (
                TokenRequest {
                    scope: None,
                    client_assertion: Some(&third),
                    ..request
                },
                OAuthError::InvalidScope,
            ),
            (
                TokenRequest {
                    grant_type: Some("authorization_code"),
                    ..request
                },
                OAuthError::UnsupportedGrantType,
            ),
            (
                TokenRequest {
                    client_assertion_type: Some("urn:other"),
                    ..request
                },
                OAuthError::InvalidRequest,
            ),
            (
                TokenRequest {
                    client_assertion: None,
                    ..request
                },
                OAuthError::InvalidRequest,
            ),
        ];
        for (request, expected) in cases {
            let refusal = authenticator
                .grant_client_token(request, now())
                .await
                .expect_err("refused");
            assert_eq!(refusal.error, *expected, "{}", refusal.description);
            assert!(!refusal.description.contains(&second));
        }
        store.close().await;
    }
}
