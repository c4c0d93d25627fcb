//! Console sessions: a person signed in to `/console` in a browser. The session is a
//! row in the store (`store::sessions`); the browser holds a random token in an
//! `HttpOnly`, `SameSite=Strict` cookie (`Secure` over TLS, set by `console`), and
//! every form carries the session's CSRF token.
//!
//! Invariants:
//! - tokens are 256 random bits from the operating system; the store keeps only their
//!   SHA-256, and logs never carry either;
//! - a session ends at sign-out, after [`IDLE_SECS`] unused, or [`ABSOLUTE_SECS`] after
//!   sign-in, whichever is first; a disabled account's sessions end at once
//!   (`Authenticator::console_session` reads the account on every request); a session
//!   started through the identity provider (`oidc`) holds the role its ID token gave,
//!   and ends at sign-out or its limits (the provider is not asked again).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use super::staff::{StaffAccount, StaffRole};
use crate::store::sessions::{KeptForm, SessionRow};
use crate::store::{Store, StoreError};

/// A session unused this long ends (30 minutes: a shared-office screen left open).
pub const IDLE_SECS: i64 = 30 * 60;

/// A session ends this long after sign-in whatever happens (a working day).
pub const ABSOLUTE_SECS: i64 = 10 * 60 * 60;

/// The signed-in person of a console request.
#[derive(Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// Their username.
    pub username: String,
    /// The name shown.
    pub display_name: String,
    /// Their role now.
    pub role: StaffRole,
    /// The token every form must carry.
    pub csrf_token: String,
    /// The SHA-256 of the cookie's token (to end the session).
    pub token_hash: String,
}

impl std::fmt::Debug for ConsoleSession {
    // By hand: tokens stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSession")
            .field("username", &self.username)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Why a session could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The operating system gave no random bytes.
    #[error("no random bytes for a session token: {0}")]
    Random(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The SHA-256 of a session token, lowercase hex: what the store keeps.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_token() -> Result<String, SessionError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| SessionError::Random(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Who a new session is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignedIn {
    /// A Sprig staff account whose password was just checked (its role is read from the
    /// account on every request).
    Account(StaffAccount),
    /// A person the service's identity provider vouched for (`oidc`): no account, the
    /// role and name from the ID token, kept with the session.
    Provider {
        /// Their stable id.
        username: String,
        /// Their name as shown.
        display_name: String,
        /// Their role.
        role: StaffRole,
    },
}

/// Starts a session for `account` (whose password was just checked) at `now` (Unix
/// seconds): the cookie's token, and the session.
pub async fn start(
    store: &Store,
    account: &StaffAccount,
    now: i64,
) -> Result<(String, ConsoleSession), SessionError> {
    start_for(store, SignedIn::Account(account.clone()), None, now).await
}

/// Starts a session for `who` at `now` (Unix seconds), holding `kept` (a form posted
/// as their last session ended) to give back once: the cookie's token, and the session.
pub async fn start_for(
    store: &Store,
    who: SignedIn,
    kept: Option<KeptForm>,
    now: i64,
) -> Result<(String, ConsoleSession), SessionError> {
    let token = random_token()?;
    let csrf_token = random_token()?;
    let token_hash = hash_token(&token);
    let (username, display_name, role, from_provider) = match who {
        SignedIn::Account(a) => (a.username, a.display_name, a.role, false),
        SignedIn::Provider {
            username,
            display_name,
            role,
        } => (username, display_name, role, true),
    };
    store
        .insert_session(&SessionRow {
            token_hash: token_hash.clone(),
            username: username.clone(),
            csrf_token: csrf_token.clone(),
            created_at: now,
            last_seen_at: now,
            expires_at: now + ABSOLUTE_SECS,
            role: from_provider.then(|| role.as_str().to_owned()),
            display_name: from_provider.then(|| display_name.clone()),
            kept,
        })
        .await?;
    tracing::info!(username = %username, from_provider, "console session started");
    Ok((
        token,
        ConsoleSession {
            username,
            display_name,
            role,
            csrf_token,
            token_hash,
        },
    ))
}

/// A random token (256 bits, base64url): for `state`, `nonce` and PKCE's verifier too.
pub fn new_random_token() -> Result<String, SessionError> {
    random_token()
}

/// Whether `given` is the session's CSRF token, compared in constant time.
pub fn csrf_matches(session: &ConsoleSession, given: &str) -> bool {
    let expected = session.csrf_token.as_bytes();
    let given = given.as_bytes();
    if expected.len() != given.len() {
        return false;
    }
    expected
        .iter()
        .zip(given)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashes_are_hex() {
        let a = random_token().expect("random");
        let b = random_token().expect("random");
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        let hash = hash_token(&a);
        assert_eq!(hash.len(), 64);
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(hash, hash_token(&b));
    }
}
