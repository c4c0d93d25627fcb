//! Sprig's own access tokens: compact JWTs, HS256 with a secret only Sprig holds (the
//! tokens are only ever verified by Sprig, so a shared-secret MAC is enough), issued to
//! clients at `POST /auth/token` and to staff at sign-in.
//!
//! Invariants:
//! - the secret is at least 32 bytes: from `auth.token_secret_file` (refused if its
//!   group or others may read it), or made once from the operating system's random source
//!   and kept in the store, so every instance on one database and every restart share it;
//! - `verify` checks the signature (HS256 only: a token naming any other algorithm is
//!   refused), `iss`, `aud`, `exp` (with [`TOKEN_LEEWAY_SECS`]) and the `kind`; it does
//!   not check that the client or person is still enabled: the authenticator does, on
//!   every request;
//! - tokens, the secret and claims other than ids never reach a log or an error message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::AuthSettings;
use crate::store::{Store, StoreError};

/// The name the generated secret is kept under in the store.
pub const TOKEN_SECRET_NAME: &str = "access-token-hs256";

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// Clock difference allowed between instances sharing a database.
pub const TOKEN_LEEWAY_SECS: u64 = 5;

/// Whose token it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// A machine client's (client credentials).
    Client,
    /// A staff person's (sign-in).
    Staff,
}

/// The claims of one of Sprig's access tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// Sprig (its configured issuer name).
    pub iss: String,
    /// Sprig's FHIR base (its configured audience).
    pub aud: String,
    /// The client id or the staff username.
    pub sub: String,
    /// Client or staff.
    pub kind: TokenKind,
    /// Granted SMART scopes, space-separated (clients).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// The ODS codes the client acts for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ods: Vec<String>,
    /// The person's role (staff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// The token's id (logs and audit may carry it).
    pub jti: String,
}

/// A token as the token endpoint or sign-in hands it out.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The compact JWT.
    pub access_token: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// The scopes granted (empty for staff).
    pub scope: String,
    /// The token's id.
    pub jti: String,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("jti", &self.jti)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Why a token cannot be issued or is not valid, or the secret cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a token Sprig issued, or altered, or signed with another secret.
    #[error("the access token is not valid")]
    Invalid,
    /// It has expired.
    #[error("the access token has expired")]
    Expired,
    /// Issued for another audience or by another issuer.
    #[error("the access token is not for this server")]
    WrongAudience,
    /// The token secret file is unusable.
    #[error("auth.token_secret_file {}: {reason}", path.display())]
    SecretFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The operating system gave no random bytes.
    #[error("no random bytes for the token secret: {0}")]
    Random(String),
    /// The stored secret cannot be read or written.
    #[error("token secret: {0}")]
    Store(#[from] StoreError),
    /// The token could not be signed (a defect).
    #[error("cannot sign an access token: {0}")]
    Signing(String),
}

/// The secret Sprig's tokens are signed with.
#[derive(Clone)]
pub struct TokenSecret(Vec<u8>);

impl std::fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSecret(…)")
    }
}

impl TokenSecret {
    /// The secret from `auth.token_secret_file` if set, else the one kept in the store
    /// (made now if there is none).
    pub async fn load(settings: &AuthSettings, store: &Store) -> Result<Self, TokenError> {
        match &settings.token_secret_file {
            Some(path) => Self::from_file(path),
            None => Self::from_store(store).await,
        }
    }

    /// Reads a secret file: at least 32 bytes, and not readable by group or others.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let refused = |reason: String| TokenError::SecretFile {
            path: path.to_owned(),
            reason,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| refused(e.to_string()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(refused(format!(
                    "mode {:o} lets others read it; chmod 600 it",
                    mode & 0o777
                )));
            }
        }
        let bytes = std::fs::read(path).map_err(|e| refused(e.to_string()))?;
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(refused(format!(
                "{} bytes; it needs at least {MIN_SECRET_BYTES} random bytes \
                 (head -c 32 /dev/urandom > FILE)",
                bytes.len()
            )));
        }
        Ok(TokenSecret(bytes))
    }

    /// The secret kept in the store, made from 32 random bytes if there is none yet.
    pub async fn from_store(store: &Store) -> Result<Self, TokenError> {
        let mut fresh = [0u8; MIN_SECRET_BYTES];
        getrandom::fill(&mut fresh).map_err(|e| TokenError::Random(e.to_string()))?;
        let candidate: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
        let stored = store
            .secret_or_insert(TOKEN_SECRET_NAME, &candidate)
            .await?;
        let bytes = decode_hex(&stored).ok_or_else(|| {
            TokenError::Store(StoreError::Corrupt {
                resource_type: "identity_secrets".into(),
                id: TOKEN_SECRET_NAME.into(),
                reason: "not hex".into(),
            })
        })?;
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(TokenError::Store(StoreError::Corrupt {
                resource_type: "identity_secrets".into(),
                id: TOKEN_SECRET_NAME.into(),
                reason: "too short".into(),
            }));
        }
        Ok(TokenSecret(bytes))
    }

    /// A secret from bytes (tests; at least 32).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        (bytes.len() >= MIN_SECRET_BYTES).then(|| TokenSecret(bytes.to_vec()))
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}

/// Issues and verifies Sprig's access tokens.
pub struct TokenService {
    issuer: String,
    audience: String,
    lifetime: Duration,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl TokenService {
    /// Tokens signed with `secret`, naming `issuer` and `audience` (Sprig's FHIR base, or
    /// `"sprig"`), lasting `lifetime`.
    pub fn new(secret: &TokenSecret, issuer: &str, audience: &str, lifetime: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.leeway = TOKEN_LEEWAY_SECS;
        TokenService {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            lifetime,
            encoding: EncodingKey::from_secret(&secret.0),
            decoding: DecodingKey::from_secret(&secret.0),
            validation,
        }
    }

    /// How long a token lasts.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// A client's token: `scope` granted, acting for `ods` codes. `now` is Unix seconds.
    pub fn issue_client(
        &self,
        client_id: &str,
        ods: Vec<String>,
        scope: &str,
        now: i64,
    ) -> Result<IssuedToken, TokenError> {
        self.issue(
            client_id,
            TokenKind::Client,
            scope.to_owned(),
            ods,
            None,
            now,
        )
    }

    /// A staff person's token with their `role` code. `now` is Unix seconds.
    pub fn issue_staff(
        &self,
        username: &str,
        role: &str,
        now: i64,
    ) -> Result<IssuedToken, TokenError> {
        self.issue(
            username,
            TokenKind::Staff,
            String::new(),
            Vec::new(),
            Some(role.to_owned()),
            now,
        )
    }

    fn issue(
        &self,
        sub: &str,
        kind: TokenKind,
        scope: String,
        ods: Vec<String>,
        role: Option<String>,
        now: i64,
    ) -> Result<IssuedToken, TokenError> {
        let lifetime = i64::try_from(self.lifetime.as_secs()).unwrap_or(i64::MAX);
        let claims = TokenClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: sub.to_owned(),
            kind,
            scope,
            ods,
            role,
            exp: now.saturating_add(lifetime),
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let access_token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
                .map_err(|e| TokenError::Signing(e.to_string()))?;
        Ok(IssuedToken {
            access_token,
            expires_in: self.lifetime.as_secs(),
            scope: claims.scope,
            jti: claims.jti,
        })
    }

    /// Whether `token` looks like one of Sprig's (HS256): cheap, unverified, to choose
    /// between this service and an external identity provider.
    pub fn is_own_format(token: &str) -> bool {
        jsonwebtoken::decode_header(token).is_ok_and(|h| h.alg == Algorithm::HS256)
    }

    /// Checks a token Sprig issued and returns its claims. `now` is Unix seconds.
    pub fn verify(&self, token: &str, now: i64) -> Result<TokenClaims, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let claims = jsonwebtoken::decode::<TokenClaims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => TokenError::WrongAudience,
                _ => TokenError::Invalid,
            })?
            .claims;
        // jsonwebtoken reads its own clock; hold the given one too (tests, and one clock
        // per request).
        let leeway = i64::try_from(TOKEN_LEEWAY_SECS).unwrap_or(0);
        if claims.exp.saturating_add(leeway) < now {
            return Err(TokenError::Expired);
        }
        match (claims.kind, &claims.role) {
            (TokenKind::Staff, None) => Err(TokenError::Invalid),
            _ => Ok(claims),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::open_store;

    const NOW: i64 = 1_800_000_000;

    fn service(secret: &[u8]) -> TokenService {
        TokenService::new(
            &TokenSecret::from_bytes(secret).expect("secret"),
            "sprig",
            "https://sprig.example.org/fhir",
            Duration::from_secs(300),
        )
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64
    }

    #[test]
    fn a_client_token_round_trips_and_carries_its_grant() {
        let tokens = service(&[7; 32]);
        let now = now();
        let issued = tokens
            .issue_client("gp-a", vec!["A81001".into()], "system/Task.rs", now)
            .expect("issue");
        assert_eq!(issued.expires_in, 300);
        assert!(TokenService::is_own_format(&issued.access_token));
        let claims = tokens.verify(&issued.access_token, now).expect("valid");
        assert_eq!(claims.sub, "gp-a");
        assert_eq!(claims.kind, TokenKind::Client);
        assert_eq!(claims.scope, "system/Task.rs");
        assert_eq!(claims.ods, ["A81001"]);
        assert_eq!(claims.exp, now + 300);
        assert_eq!(claims.jti, issued.jti);
        assert!(!format!("{issued:?}").contains(&issued.access_token));

        let staff = tokens
            .issue_staff("amara", "link_worker", now)
            .expect("issue");
        let claims = tokens.verify(&staff.access_token, now).expect("valid");
        assert_eq!(claims.kind, TokenKind::Staff);
        assert_eq!(claims.role.as_deref(), Some("link_worker"));
    }

    #[test]
    fn altered_expired_and_foreign_tokens_are_refused() {
        let tokens = service(&[7; 32]);
        let now = now();
        let issued = tokens
            .issue_client("gp-a", vec!["A81001".into()], "system/Task.rs", now)
            .expect("issue")
            .access_token;
        // Another secret.
        assert!(matches!(
            service(&[8; 32]).verify(&issued, now),
            Err(TokenError::Invalid)
        ));
        // Another audience.
        let elsewhere = TokenService::new(
            &TokenSecret::from_bytes(&[7; 32]).expect("secret"),
            "sprig",
            "https://other.example.org/fhir",
            Duration::from_secs(300),
        );
        assert!(matches!(
            elsewhere.verify(&issued, now),
            Err(TokenError::WrongAudience)
        ));
        // Expired.
        let old = tokens
            .issue_client("gp-a", Vec::new(), "system/Task.rs", now - 1000)
            .expect("issue")
            .access_token;
        assert!(matches!(tokens.verify(&old, now), Err(TokenError::Expired)));
        // A claim changed without re-signing.
        let mut parts: Vec<String> = issued.split('.').map(str::to_owned).collect();
        parts[1] = parts[1].chars().rev().collect();
        assert!(matches!(
            tokens.verify(&parts.join("."), now),
            Err(TokenError::Invalid)
        ));
        // alg: none.
        let unsigned = format!(
            "eyJhbGciOiJub25lIn0.{}.",
            issued.split('.').nth(1).expect("claims")
        );
        assert!(matches!(
            tokens.verify(&unsigned, now),
            Err(TokenError::Invalid)
        ));
        assert!(!TokenService::is_own_format(&unsigned));
        assert!(matches!(
            tokens.verify("garbage", now),
            Err(TokenError::Invalid)
        ));
        // The verifier's clock is the given one too.
        assert!(matches!(
            tokens.verify(&issued, NOW * 2),
            Err(TokenError::Expired)
        ));
    }

    #[tokio::test]
    async fn the_stored_secret_is_made_once_and_shared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path()).await;
        let settings = AuthSettings::default();
        let first = TokenSecret::load(&settings, &store).await.expect("secret");
        let second = TokenSecret::load(&settings, &store).await.expect("secret");
        assert_eq!(first.0, second.0);
        assert_eq!(first.0.len(), 32);
        store.close().await;
        let store = open_store(dir.path()).await;
        let after_restart = TokenSecret::load(&settings, &store).await.expect("secret");
        assert_eq!(first.0, after_restart.0);
        assert_eq!(format!("{first:?}"), "TokenSecret(…)");
        store.close().await;
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_file_must_be_private_and_long_enough() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token.key");
        std::fs::write(&path, [1u8; 32]).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let error = TokenSecret::from_file(&path).expect_err("readable by others");
        assert!(error.to_string().contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        TokenSecret::from_file(&path).expect("private");
        std::fs::write(&path, [1u8; 16]).expect("write");
        let error = TokenSecret::from_file(&path).expect_err("short");
        assert!(error.to_string().contains("at least 32"), "{error}");
        assert!(TokenSecret::from_file(&dir.path().join("missing")).is_err());
    }
}
