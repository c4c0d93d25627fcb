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
//!   (`Authenticator::console_session` reads the account on every request).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use super::staff::{StaffAccount, StaffRole};
use crate::store::sessions::SessionRow;
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

/// Starts a session for `account` (whose password was just checked) at `now` (Unix
/// seconds): the cookie's token, and the session.
pub async fn start(
    store: &Store,
    account: &StaffAccount,
    now: i64,
) -> Result<(String, ConsoleSession), SessionError> {
    let token = random_token()?;
    let csrf_token = random_token()?;
    let token_hash = hash_token(&token);
    store
        .insert_session(&SessionRow {
            token_hash: token_hash.clone(),
            username: account.username.clone(),
            csrf_token: csrf_token.clone(),
            created_at: now,
            last_seen_at: now,
            expires_at: now + ABSOLUTE_SECS,
        })
        .await?;
    tracing::info!(username = %account.username, "console session started");
    Ok((
        token,
        ConsoleSession {
            username: account.username.clone(),
            display_name: account.display_name.clone(),
            role: account.role,
            csrf_token,
            token_hash,
        },
    ))
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
