//! Identity and access: who is calling Sprig, proved how, and what they may do. Machine
//! clients (SMART Backend Services: a client registry, signed JWT assertions, Sprig's
//! own short-lived access tokens), tokens from an external identity provider, staff
//! accounts, and the [`Access`] value the request layer hands every handler.
//!
//! Identity is established in one place, [`Authenticator::authenticate`], before any
//! handler runs; a handler that reads or changes data needs an [`Access`], which only
//! this module can make.
//!
//! Invariants:
//! - with security enforced, a request without valid credentials gets no `Access`;
//! - the registry and the staff accounts are read on every request, so a client or person
//!   disabled (or a scope withdrawn) stops working at once, whatever tokens they hold;
//! - logs carry client ids, usernames and token ids, never tokens, assertions, passwords
//!   or key material.

pub mod access;
pub mod assertion;
pub mod clients;
pub mod external;
pub mod grant;
mod keys;
pub mod oidc;
pub mod scopes;
pub mod session;
pub mod staff;
pub mod token;

use std::sync::Arc;

use base64::Engine;
use serde_json::Value;

pub use access::{Access, AuditAgent, Caller, PracticeScope, ProxyOrigin, StaffAction};
pub use assertion::{AssertionError, AssertionVerifier, VerifiedAssertion};
pub use clients::{Client, ClientRegistry, ClientRegistryError, Clients};
pub use external::{ExternalError, ExternalIdentity, ExternalVerifier};
pub use grant::{TokenGrant, TokenRefusal, TokenRequest};
pub use keys::KeyChoiceError;
pub use oidc::{ConsoleOidc, OidcError};
pub use scopes::{Interaction, ScopeError, Scopes};
pub use session::ConsoleSession;
pub use staff::{StaffAccount, StaffRole};
pub use token::{IssuedToken, TokenClaims, TokenError, TokenKind, TokenSecret, TokenService};

use crate::config::SecurityMode;
use crate::fhir::identifiers::{ODS_ORGANIZATION_SYSTEM, OdsCode};
use crate::store::{Store, StoreError};

/// An OAuth 2.0 error code (RFC 6749 §5.2), as the token endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthError {
    /// The request is missing a parameter or malformed.
    InvalidRequest,
    /// Client authentication failed (401).
    InvalidClient,
    /// The grant is not valid.
    InvalidGrant,
    /// The client may not use this grant type.
    UnauthorizedClient,
    /// The grant type is not supported.
    UnsupportedGrantType,
    /// The requested scope is invalid or more than the client may have.
    InvalidScope,
    /// Sprig failed (500, or 503 when the store is unavailable).
    ServerError,
}

impl OAuthError {
    /// The code, as the `error` member.
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthError::InvalidRequest => "invalid_request",
            OAuthError::InvalidClient => "invalid_client",
            OAuthError::InvalidGrant => "invalid_grant",
            OAuthError::UnauthorizedClient => "unauthorized_client",
            OAuthError::UnsupportedGrantType => "unsupported_grant_type",
            OAuthError::InvalidScope => "invalid_scope",
            OAuthError::ServerError => "server_error",
        }
    }

    /// The HTTP status: 401 for `invalid_client`, 500 for `server_error`, else 400.
    pub fn status(self) -> u16 {
        match self {
            OAuthError::InvalidClient => 401,
            OAuthError::ServerError => 500,
            _ => 400,
        }
    }
}

/// The token request's `client_assertion_type` (RFC 7523).
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Why a request gets no [`Access`]: what the answer's status, `WWW-Authenticate` and
/// BaRS code are.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credentials, and security is enforced.
    #[error("authentication is required")]
    MissingCredentials,
    /// An `Authorization` header that is not `Bearer <token>`.
    #[error("the Authorization header is not a bearer token")]
    MalformedHeader,
    /// The token is not valid (forged, altered, expired, for another audience, of a
    /// disabled client or person).
    #[error("the access token is not valid: {0}")]
    InvalidToken(String),
    /// The caller is known but may not act as the organisation it asked for (a trusted
    /// proxy passing an organisation it may not relay for).
    #[error("{0}")]
    Forbidden(String),
    /// The store or the identity provider could not be asked.
    #[error("identity could not be checked: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// The HTTP status: 401, 403, or 503.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::MissingCredentials
            | AuthError::MalformedHeader
            | AuthError::InvalidToken(_) => 401,
            AuthError::Forbidden(_) => 403,
            AuthError::Unavailable(_) => 503,
        }
    }

    /// The `WWW-Authenticate` header of a 401 (RFC 6750 §3).
    pub fn www_authenticate(&self) -> Option<String> {
        match self {
            AuthError::MissingCredentials => Some("Bearer realm=\"sprig\"".into()),
            AuthError::MalformedHeader => {
                Some("Bearer realm=\"sprig\", error=\"invalid_request\"".into())
            }
            AuthError::InvalidToken(_) => Some(
                "Bearer realm=\"sprig\", error=\"invalid_token\", error_description=\"the access token is not valid\""
                    .into(),
            ),
            AuthError::Forbidden(_) | AuthError::Unavailable(_) => None,
        }
    }

    /// The BaRS `http-error-codes` code.
    pub fn bars_code(&self) -> &'static str {
        match self.status() {
            401 => "REC_UNAUTHORIZED",
            403 => "REC_FORBIDDEN",
            _ => "REC_UNAVAILABLE",
        }
    }
}

impl From<StoreError> for AuthError {
    fn from(error: StoreError) -> Self {
        AuthError::Unavailable(error.to_string())
    }
}

/// What a request brings to prove who sent it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The `Authorization` header, as received.
    pub authorization: Option<&'a str>,
    /// The `NHSD-End-User-Organisation` header, as received (honoured from a trusted
    /// proxy only).
    pub end_user_organisation: Option<&'a str>,
    /// The connection's TLS client certificate, verified against `tls.client_ca_file`
    /// during the handshake (never a header: a certificate cannot be claimed in one).
    pub certificate: Option<CertificateNames<'a>>,
}

/// The names of a verified TLS client certificate: what the client registry's
/// `certificate_subject` and `certificate_san` are matched against.
#[derive(Debug, Clone, Copy)]
pub struct CertificateNames<'a> {
    /// The subject's distinguished name, RFC 4514 (`CN=bars-proxy.nhs.uk, O=NHS`).
    pub subject: &'a str,
    /// The `subjectAltName` DNS names.
    pub dns_names: &'a [String],
}

/// Establishes who is calling, once per request. Cheap to share.
pub struct Authenticator {
    mode: SecurityMode,
    clients: Arc<Clients>,
    tokens: Arc<TokenService>,
    external: Option<Arc<ExternalVerifier>>,
    store: Store,
    link_workers_see_all: bool,
    /// Client assertions at the token endpoint, when Sprig knows its URL.
    assertions: Option<AssertionVerifier>,
    /// Console sign-in through the service's identity provider (`[console.oidc]`).
    console_oidc: Option<Arc<ConsoleOidc>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("external", &self.external.is_some())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator for `mode` (from `Settings::security_decision`).
    pub fn new(
        mode: SecurityMode,
        clients: Arc<Clients>,
        tokens: Arc<TokenService>,
        external: Option<Arc<ExternalVerifier>>,
        store: Store,
        link_workers_see_all: bool,
    ) -> Self {
        Authenticator {
            mode,
            clients,
            tokens,
            external,
            store,
            link_workers_see_all,
            assertions: None,
            console_oidc: None,
        }
    }

    /// Signs console users in through the service's identity provider too.
    pub fn with_console_oidc(mut self, oidc: ConsoleOidc) -> Self {
        self.console_oidc = Some(Arc::new(oidc));
        self
    }

    /// The service's identity provider for console sign-in, if configured.
    pub fn console_oidc(&self) -> Option<&Arc<ConsoleOidc>> {
        self.console_oidc.as_ref()
    }

    /// Serves the token endpoint with assertions checked by `verifier` (whose URL they
    /// must name).
    pub fn with_token_endpoint(mut self, verifier: AssertionVerifier) -> Self {
        self.assertions = Some(verifier);
        self
    }

    /// The token endpoint's URL, if Sprig serves one.
    pub fn token_endpoint(&self) -> Option<&str> {
        self.assertions.as_ref().map(AssertionVerifier::token_url)
    }

    /// The security mode.
    pub fn mode(&self) -> SecurityMode {
        self.mode
    }

    /// The client registry.
    pub fn clients(&self) -> &Arc<Clients> {
        &self.clients
    }

    /// Sprig's token service.
    pub fn tokens(&self) -> &Arc<TokenService> {
        &self.tokens
    }

    /// Who is calling. Without credentials: the developer on loopback, everyone under
    /// `auth.mode = "none"`, or a 401 when security is enforced. With a bearer token (on
    /// loopback too): the client or person it names, if it is valid and they are still
    /// enabled. `now` is Unix seconds.
    pub async fn authenticate(
        &self,
        credentials: &Credentials<'_>,
        now: i64,
    ) -> Result<Access, AuthError> {
        let open = |caller| Ok(Access::new(caller, None, self.link_workers_see_all));
        if self.mode != SecurityMode::Disabled
            && credentials.authorization.is_none()
            && let Some(certificate) = credentials.certificate
            && let Some(access) = self.certificate_client(credentials, certificate)?
        {
            return Ok(access);
        }
        let token = match (self.mode, credentials.authorization) {
            (SecurityMode::Disabled, _) => return open(Caller::Unauthenticated),
            (SecurityMode::OpenOnLoopback, None) => return open(Caller::Developer),
            (SecurityMode::Enforced, None) => return Err(AuthError::MissingCredentials),
            (_, Some(header)) => bearer_token(header).ok_or(AuthError::MalformedHeader)?,
        };
        if TokenService::is_own_format(token) {
            let claims = self
                .tokens
                .verify(token, now)
                .map_err(|e| AuthError::InvalidToken(e.to_string()))?;
            match claims.kind {
                TokenKind::Client => self.own_client(credentials, &claims),
                TokenKind::Staff => self.own_staff(&claims).await,
            }
        } else if let Some(external) = &self.external {
            match external.verify(token, now).await {
                Ok(identity) => self.external_caller(credentials, identity).await,
                Err(ExternalError::Keys(reason)) => Err(AuthError::Unavailable(reason)),
                Err(error) => Err(AuthError::InvalidToken(error.to_string())),
            }
        } else {
            Err(AuthError::InvalidToken(
                "not an access token of this server".into(),
            ))
        }
    }

    fn own_client(
        &self,
        credentials: &Credentials<'_>,
        claims: &TokenClaims,
    ) -> Result<Access, AuthError> {
        let registry = self.clients.current();
        let client = registry
            .get(&claims.sub)
            .filter(|c| c.enabled)
            .ok_or_else(|| AuthError::InvalidToken("the client is unknown or disabled".into()))?;
        // What the registry allows now bounds what the token granted then.
        let scopes = client
            .scopes
            .intersect(&Scopes::parse_requested(&claims.scope));
        let ods_codes: Vec<OdsCode> = client
            .ods_codes
            .iter()
            .filter(|code| claims.ods.iter().any(|c| c == code.as_str()))
            .cloned()
            .collect();
        self.client_access(
            credentials,
            &client.client_id,
            client.trusted_proxy,
            ods_codes,
            scopes,
            Some(claims.jti.clone()),
        )
    }

    /// The client a verified TLS client certificate identifies, authenticating the
    /// request without a bearer token (mutual TLS as the BaRS proxy connects: the
    /// handshake is the proof, as a signed assertion is at the token endpoint). The
    /// client gets every scope and ODS code its registry entry has, and as a trusted
    /// proxy relays for the organisation in `NHSD-End-User-Organisation`. `None` when
    /// the registry maps no client to the certificate: the request is then treated as
    /// one without credentials (401 when security is enforced).
    fn certificate_client(
        &self,
        credentials: &Credentials<'_>,
        certificate: CertificateNames<'_>,
    ) -> Result<Option<Access>, AuthError> {
        let registry = self.clients.current();
        let Some(client) = registry.by_certificate(certificate.subject, certificate.dns_names)
        else {
            tracing::info!("a verified client certificate that no registered client has");
            return Ok(None);
        };
        if !client.enabled {
            return Err(AuthError::InvalidToken(format!(
                "client {} (by its certificate) is disabled",
                client.client_id
            )));
        }
        self.client_access(
            credentials,
            &client.client_id,
            client.trusted_proxy,
            client.ods_codes.clone(),
            client.scopes.clone(),
            None,
        )
        .map(Some)
    }

    /// A client's access, with the end-user organisation of a trusted proxy.
    fn client_access(
        &self,
        credentials: &Credentials<'_>,
        client_id: &str,
        trusted_proxy: bool,
        ods_codes: Vec<OdsCode>,
        scopes: Scopes,
        token_id: Option<String>,
    ) -> Result<Access, AuthError> {
        let header = credentials.end_user_organisation;
        let (ods_codes, proxy, ignored) = match (trusted_proxy, header) {
            (true, Some(header)) => {
                let end_user = end_user_organisation(header).ok_or_else(|| {
                    AuthError::Forbidden(
                        "NHSD-End-User-Organisation is not a base64 FHIR Organization with an ODS code"
                            .into(),
                    )
                })?;
                // A proxy registered with ODS codes relays for those only.
                if !ods_codes.is_empty() && !ods_codes.contains(&end_user) {
                    return Err(AuthError::Forbidden(format!(
                        "client {client_id} may not act for {}",
                        end_user.as_str()
                    )));
                }
                let proxy = ProxyOrigin {
                    proxy_client_id: client_id.to_owned(),
                    end_user_ods: end_user.clone(),
                };
                (vec![end_user], Some(proxy), false)
            }
            (false, Some(_)) => (ods_codes, None, true),
            (_, None) => (ods_codes, None, false),
        };
        let access = Access::new(
            Caller::Client {
                client_id: client_id.to_owned(),
                ods_codes,
                scopes,
                proxy,
            },
            token_id,
            self.link_workers_see_all,
        );
        if ignored {
            tracing::warn!(
                client_id,
                "NHSD-End-User-Organisation from a client that is not a trusted proxy: ignored"
            );
            Ok(access.with_ignored_end_user_header())
        } else {
            Ok(access)
        }
    }

    /// The person a console session cookie's `token` signs in, if the session is live
    /// at `now` (Unix seconds) and their account is still enabled: their `Access`
    /// (with their role now) and the session. `None` means "sign in".
    pub async fn console_session(
        &self,
        token: &str,
        now: i64,
    ) -> Result<Option<(Access, ConsoleSession)>, AuthError> {
        let hash = session::hash_token(token);
        let Some(row) = self
            .store
            .live_session(&hash, now, session::IDLE_SECS)
            .await?
        else {
            return Ok(None);
        };
        if let Some(role) = row.role.as_deref() {
            // Signed in through the identity provider: no account to read.
            let Some(role) = StaffRole::parse(role) else {
                self.store.delete_session(&hash).await?;
                return Ok(None);
            };
            let access = Access::new(
                Caller::Staff {
                    username: row.username.clone(),
                    role,
                },
                None,
                self.link_workers_see_all,
            );
            return Ok(Some((
                access,
                ConsoleSession {
                    display_name: row.display_name.unwrap_or_else(|| row.username.clone()),
                    username: row.username,
                    role,
                    csrf_token: row.csrf_token,
                    token_hash: hash,
                },
            )));
        }
        let account = staff::account(&self.store, &row.username)
            .await
            .map_err(|e| match e {
                staff::StaffError::Store(store) => AuthError::from(store),
                other => AuthError::InvalidToken(other.to_string()),
            })?
            .filter(|a| a.enabled);
        let Some(account) = account else {
            // A disabled person's sessions end at once.
            self.store.delete_session(&hash).await?;
            return Ok(None);
        };
        let access = Access::new(
            Caller::Staff {
                username: account.username.clone(),
                role: account.role,
            },
            None,
            self.link_workers_see_all,
        );
        Ok(Some((
            access,
            ConsoleSession {
                username: account.username,
                display_name: account.display_name,
                role: account.role,
                csrf_token: row.csrf_token,
                token_hash: hash,
            },
        )))
    }

    /// The store this authenticator reads accounts and sessions from.
    pub fn store(&self) -> &Store {
        &self.store
    }

    async fn own_staff(&self, claims: &TokenClaims) -> Result<Access, AuthError> {
        let account = staff::account(&self.store, &claims.sub)
            .await
            .map_err(|e| match e {
                staff::StaffError::Store(store) => AuthError::from(store),
                other => AuthError::InvalidToken(other.to_string()),
            })?
            .filter(|a| a.enabled)
            .ok_or_else(|| AuthError::InvalidToken("the account is unknown or disabled".into()))?;
        Ok(Access::new(
            Caller::Staff {
                username: account.username,
                // The role now, not the one the token was issued with.
                role: account.role,
            },
            Some(claims.jti.clone()),
            self.link_workers_see_all,
        ))
    }

    async fn external_caller(
        &self,
        credentials: &Credentials<'_>,
        identity: ExternalIdentity,
    ) -> Result<Access, AuthError> {
        match identity {
            ExternalIdentity::Client {
                client_id,
                ods_codes,
                scopes,
            } => {
                // A client the registry also names is held to its entry.
                let registered = self.clients.current().get(&client_id);
                let (trusted_proxy, scopes, ods_codes) = match registered {
                    Some(client) if !client.enabled => {
                        return Err(AuthError::InvalidToken("the client is disabled".into()));
                    }
                    Some(client) => (
                        client.trusted_proxy,
                        client.scopes.intersect(&scopes),
                        ods_codes
                            .into_iter()
                            .filter(|c| client.ods_codes.contains(c) || client.trusted_proxy)
                            .collect(),
                    ),
                    None => (false, scopes, ods_codes),
                };
                self.client_access(
                    credentials,
                    &client_id,
                    trusted_proxy,
                    ods_codes,
                    scopes,
                    None,
                )
            }
            ExternalIdentity::Staff { username, role } => {
                // A local account of the same name that is disabled bars the person.
                if let Some(local) = staff::account(&self.store, &username)
                    .await
                    .map_err(|e| AuthError::Unavailable(e.to_string()))?
                    && !local.enabled
                {
                    return Err(AuthError::InvalidToken("the account is disabled".into()));
                }
                Ok(Access::new(
                    Caller::Staff { username, role },
                    None,
                    self.link_workers_see_all,
                ))
            }
        }
    }
}

/// The token of `Bearer <token>` (the scheme case-insensitive).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

/// The ODS code of the base64 FHIR Organization BaRS sends in
/// `NHSD-End-User-Organisation`.
fn end_user_organisation(header: &str) -> Option<OdsCode> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(header.trim())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header.trim()))
        .ok()?;
    let organization: Value = serde_json::from_slice(&bytes).ok()?;
    if organization.get("resourceType").and_then(Value::as_str) != Some("Organization") {
        return None;
    }
    organization
        .get("identifier")?
        .as_array()?
        .iter()
        .find(|i| i.get("system").and_then(Value::as_str) == Some(ODS_ORGANIZATION_SYSTEM))
        .and_then(|i| i.get("value").and_then(Value::as_str))
        .and_then(|value| OdsCode::parse(value).ok())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::identity::keys::test_keys::ec384;
    use crate::store::test_support::open_store;

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        registry_path: std::path::PathBuf,
        store: Store,
        authenticator: Authenticator,
    }

    const REGISTRY: &str = "[[client]]\nclient_id = \"gp-a\"\nods_codes = [\"A81001\"]\nscopes = \"system/ServiceRequest.cr system/Task.rs\"\njwks_file = \"k.json\"\n\
        [[client]]\nclient_id = \"proxy\"\nscopes = \"system/ServiceRequest.c\"\ntrusted_proxy = true\njwks_file = \"k.json\"\n";

    async fn fixture(mode: SecurityMode) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("k.json"), ec384("k").jwks().to_string()).expect("write");
        let registry_path = dir.path().join("clients.toml");
        std::fs::write(&registry_path, REGISTRY).expect("write");
        let clients = Clients::load(Some(&registry_path)).expect("registry");
        let store = open_store(dir.path()).await;
        let tokens = Arc::new(TokenService::new(
            &TokenSecret::from_bytes(&[9; 32]).expect("secret"),
            "sprig",
            "sprig",
            Duration::from_secs(300),
        ));
        let authenticator = Authenticator::new(mode, clients, tokens, None, store.clone(), false);
        Fixture {
            _dir: dir,
            registry_path,
            store,
            authenticator,
        }
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    fn organisation(ods: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(
            json!({
                "resourceType": "Organization",
                "identifier": [{ "system": ODS_ORGANIZATION_SYSTEM, "value": ods }],
            })
            .to_string(),
        )
    }

    #[tokio::test]
    async fn the_open_modes_need_no_credentials_and_enforced_does() {
        let f = fixture(SecurityMode::OpenOnLoopback).await;
        let access = f
            .authenticator
            .authenticate(&Credentials::default(), now())
            .await
            .expect("open");
        assert_eq!(access.caller(), &Caller::Developer);
        // A token on loopback is still checked.
        let error = f
            .authenticator
            .authenticate(
                &Credentials {
                    authorization: Some("Bearer forged.token.here"),
                    ..Credentials::default()
                },
                now(),
            )
            .await
            .expect_err("checked");
        assert_eq!(error.status(), 401);

        let f = fixture(SecurityMode::Disabled).await;
        let access = f
            .authenticator
            .authenticate(&Credentials::default(), now())
            .await
            .expect("open");
        assert_eq!(access.caller(), &Caller::Unauthenticated);

        let f = fixture(SecurityMode::Enforced).await;
        let error = f
            .authenticator
            .authenticate(&Credentials::default(), now())
            .await
            .expect_err("required");
        assert_eq!(error.status(), 401);
        assert_eq!(error.bars_code(), "REC_UNAUTHORIZED");
        assert_eq!(
            error.www_authenticate().as_deref(),
            Some("Bearer realm=\"sprig\"")
        );
        for header in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "token"] {
            let error = f
                .authenticator
                .authenticate(
                    &Credentials {
                        authorization: Some(header),
                        ..Credentials::default()
                    },
                    now(),
                )
                .await
                .expect_err(header);
            assert!(matches!(error, AuthError::MalformedHeader), "{header}");
        }
        f.store.close().await;
    }

    #[tokio::test]
    async fn a_client_token_gives_its_access_until_the_client_is_disabled() {
        let f = fixture(SecurityMode::Enforced).await;
        let tokens = f.authenticator.tokens();
        let token = tokens
            .issue_client(
                "gp-a",
                vec!["A81001".into()],
                "system/ServiceRequest.cr system/Task.rs",
                now(),
            )
            .expect("token")
            .access_token;
        let header = bearer(&token);
        let credentials = Credentials {
            authorization: Some(&header),
            ..Credentials::default()
        };
        let access = f
            .authenticator
            .authenticate(&credentials, now())
            .await
            .expect("valid");
        assert!(access.may(Interaction::Create, "ServiceRequest"));
        assert!(!access.may(Interaction::Search, "ServiceRequest"));
        assert!(access.may_act_for(&OdsCode::parse("A81001").expect("ods")));
        assert!(access.token_id().is_some());

        // The registry withdraws a scope: the token loses it at once.
        std::fs::write(
            &f.registry_path,
            REGISTRY.replace("system/ServiceRequest.cr system/Task.rs", "system/Task.rs"),
        )
        .expect("write");
        f.authenticator.clients().reload().expect("reload");
        let access = f
            .authenticator
            .authenticate(&credentials, now())
            .await
            .expect("valid");
        assert!(!access.may(Interaction::Create, "ServiceRequest"));
        assert!(access.may(Interaction::Search, "Task"));

        // Disabled: refused at once.
        std::fs::write(
            &f.registry_path,
            REGISTRY.replacen(
                "jwks_file = \"k.json\"\n",
                "jwks_file = \"k.json\"\nenabled = false\n",
                1,
            ),
        )
        .expect("write");
        f.authenticator.clients().reload().expect("reload");
        let error = f
            .authenticator
            .authenticate(&credentials, now())
            .await
            .expect_err("disabled");
        assert!(matches!(error, AuthError::InvalidToken(_)), "{error:?}");
        assert!(
            error
                .www_authenticate()
                .is_some_and(|h| h.contains("invalid_token"))
        );
        assert!(!error.to_string().contains(&token));
        f.store.close().await;
    }

    #[tokio::test]
    async fn only_a_trusted_proxy_may_pass_the_end_user_organisation() {
        let f = fixture(SecurityMode::Enforced).await;
        let tokens = f.authenticator.tokens();
        let proxy = bearer(
            &tokens
                .issue_client("proxy", Vec::new(), "system/ServiceRequest.c", now())
                .expect("token")
                .access_token,
        );
        let b82001 = organisation("B82001");
        let access = f
            .authenticator
            .authenticate(
                &Credentials {
                    authorization: Some(&proxy),
                    end_user_organisation: Some(&b82001),
                    certificate: None,
                },
                now(),
            )
            .await
            .expect("relayed");
        assert_eq!(
            access.practices(),
            PracticeScope::Only(vec![OdsCode::parse("B82001").expect("ods")])
        );
        assert_eq!(access.audit_agent().proxy_id.as_deref(), Some("proxy"));
        // Without the header, the proxy acts for nobody.
        let access = f
            .authenticator
            .authenticate(
                &Credentials {
                    authorization: Some(&proxy),
                    ..Credentials::default()
                },
                now(),
            )
            .await
            .expect("valid");
        assert_eq!(access.practices(), PracticeScope::Only(Vec::new()));
        // A header that is not an Organization is refused.
        let error = f
            .authenticator
            .authenticate(
                &Credentials {
                    authorization: Some(&proxy),
                    end_user_organisation: Some("bm90IGpzb24="),
                    certificate: None,
                },
                now(),
            )
            .await
            .expect_err("bad header");
        assert_eq!(error.status(), 403);
        assert_eq!(error.bars_code(), "REC_FORBIDDEN");

        // From an ordinary client, the header is ignored (and flagged for the audit).
        let gp = bearer(
            &tokens
                .issue_client("gp-a", vec!["A81001".into()], "system/Task.rs", now())
                .expect("token")
                .access_token,
        );
        let access = f
            .authenticator
            .authenticate(
                &Credentials {
                    authorization: Some(&gp),
                    end_user_organisation: Some(&b82001),
                    certificate: None,
                },
                now(),
            )
            .await
            .expect("valid");
        assert!(access.ignored_end_user_header());
        assert!(!access.may_act_for(&OdsCode::parse("B82001").expect("ods")));
        assert!(access.may_act_for(&OdsCode::parse("A81001").expect("ods")));
        f.store.close().await;
    }

    #[tokio::test]
    async fn a_staff_token_stops_when_the_account_is_disabled() {
        let f = fixture(SecurityMode::Enforced).await;
        staff::add_account(
            &f.store,
            "amara",
            "Amara",
            StaffRole::LinkWorker,
            "a long enough password".into(),
        )
        .await
        .expect("added");
        let (_, token) = staff::sign_in(
            &f.store,
            f.authenticator.tokens(),
            "amara",
            "a long enough password".into(),
            now(),
        )
        .await
        .expect("signed in");
        let header = bearer(&token.access_token);
        let credentials = Credentials {
            authorization: Some(&header),
            ..Credentials::default()
        };
        let access = f
            .authenticator
            .authenticate(&credentials, now())
            .await
            .expect("valid");
        assert_eq!(access.actor_label(), "amara");
        assert!(access.staff_may(StaffAction::ViewWorklist));
        staff::disable_account(&f.store, "amara")
            .await
            .expect("disabled");
        assert!(
            f.authenticator
                .authenticate(&credentials, now())
                .await
                .is_err()
        );
        f.store.close().await;
    }

    #[test]
    fn bearer_headers_and_organisations_parse() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(
            end_user_organisation(&organisation("B82001")).map(|o| o.as_str().to_owned()),
            Some("B82001".into())
        );
        let patient = base64::engine::general_purpose::STANDARD
            .encode(json!({ "resourceType": "Patient" }).to_string());
        assert_eq!(end_user_organisation(&patient), None);
        assert_eq!(end_user_organisation("%%%"), None);
        assert_eq!(OAuthError::InvalidClient.status(), 401);
        assert_eq!(OAuthError::InvalidScope.as_str(), "invalid_scope");
    }

    #[tokio::test]
    async fn a_registered_certificate_is_its_client_unless_disabled_or_a_token_is_sent() {
        let f = fixture(SecurityMode::Enforced).await;
        std::fs::write(
            &f.registry_path,
            format!(
                "{REGISTRY}[[client]]\nclient_id = \"gp-cert\"\nods_codes = [\"B82001\"]\nscopes = \"system/Task.rs\"\ncertificate_subject = \"CN=gp-cert, O=Practice\"\n\
                 [[client]]\nclient_id = \"gp-off\"\nods_codes = [\"B82001\"]\nscopes = \"system/Task.rs\"\ncertificate_san = \"off.example\"\nenabled = false\n"
            ),
        )
        .expect("write");
        let authenticator = |mode| {
            Authenticator::new(
                mode,
                Clients::load(Some(&f.registry_path)).expect("registry"),
                Arc::clone(f.authenticator.tokens()),
                None,
                f.store.clone(),
                false,
            )
        };
        let enforced = authenticator(SecurityMode::Enforced);
        let sans = vec!["gp.example".to_owned()];
        let off = vec!["off.example".to_owned()];
        let presenting = |subject, dns_names| Credentials {
            certificate: Some(CertificateNames { subject, dns_names }),
            ..Credentials::default()
        };

        // By its exact subject: that client, with its registered scopes and practice.
        let access = enforced
            .authenticate(&presenting("CN=gp-cert, O=Practice", &sans), now())
            .await
            .expect("the certificate's client");
        assert_eq!(access.audit_agent().client_id.as_deref(), Some("gp-cert"));
        assert_eq!(access.audit_agent().ods_code.as_deref(), Some("B82001"));
        assert!(access.may(Interaction::Search, "Task"));
        assert!(!access.may(Interaction::Create, "ServiceRequest"));
        // A disabled client's certificate (matched by SAN) is refused.
        let error = enforced
            .authenticate(&presenting("CN=someone", &off), now())
            .await
            .expect_err("disabled");
        assert_eq!(error.status(), 401);
        // A certificate no client has is no credential at all.
        let error = enforced
            .authenticate(&presenting("CN=gp-cert", &sans), now())
            .await
            .expect_err("unregistered");
        assert!(matches!(error, AuthError::MissingCredentials), "{error}");
        // With a bearer token the token decides, certificate or not.
        let error = enforced
            .authenticate(
                &Credentials {
                    authorization: Some("Bearer forged.token.here"),
                    ..presenting("CN=gp-cert, O=Practice", &sans)
                },
                now(),
            )
            .await
            .expect_err("the token is checked");
        assert_eq!(error.status(), 401);
        // Under auth.mode = "none" nothing is authenticated here.
        let access = authenticator(SecurityMode::Disabled)
            .authenticate(&presenting("CN=gp-cert, O=Practice", &sans), now())
            .await
            .expect("open");
        assert_eq!(access.caller(), &Caller::Unauthenticated);
    }
}
