//! The identity tables (`migrations/sqlite/0005_identity.sql`): the secrets Sprig makes
//! once and shares across instances and restarts, the client assertions already accepted
//! (replay protection), and staff accounts.
//!
//! Invariants:
//! - a secret, once stored, is never replaced: the first instance to store one wins and
//!   every other reads it;
//! - an assertion's `jti` is remembered (durably, on the writer, committed before the
//!   answer) until its assertion expires, so a restart never reopens the replay window;
//!   expired rows are pruned on the way;
//! - this module stores password hashes as given and never sees a password.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{Store, StoreError, dispatch};

/// A remembered assertion is kept this long past its `exp`, so that one the verifier
/// still accepts under its clock-skew allowance is still remembered.
pub(crate) const ASSERTION_KEEP_AFTER_EXPIRY_SECS: i64 = 5 * 60;

/// A staff account as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct StaffAccountRow {
    /// The sign-in name, the person's stable id.
    pub username: String,
    /// The name shown to people.
    pub display_name: String,
    /// The role's code (`link_worker`, `service_manager`, `administrator`).
    pub role: String,
    /// An Argon2id PHC string.
    pub password_hash: String,
    /// Whether the account may sign in.
    pub enabled: bool,
    /// When it was created (FHIR instant).
    pub created_at: String,
    /// When it last changed (FHIR instant).
    pub updated_at: String,
}

impl std::fmt::Debug for StaffAccountRow {
    // By hand: the hash stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaffAccountRow")
            .field("username", &self.username)
            .field("role", &self.role)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Store {
    /// The secret stored under `name`; if there is none yet, `candidate` is stored and
    /// returned. Two instances racing both get the one stored first.
    pub async fn secret_or_insert(
        &self,
        name: &str,
        candidate: &str,
    ) -> Result<String, StoreError> {
        dispatch!(self, b => b.secret_or_insert(name, candidate).await)
    }

    /// Remembers that `client_id` used the assertion `jti`, valid until `expires_at`
    /// (Unix seconds). True when it is fresh; false when it was seen before (a replay).
    /// Committed before it returns; expired rows are pruned in the same transaction.
    pub async fn remember_assertion(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        dispatch!(self, b => b.remember_assertion(client_id, jti, expires_at).await)
    }

    /// Adds a staff account. False (and nothing written) when the username is taken.
    pub async fn insert_staff_account(
        &self,
        account: &StaffAccountRow,
    ) -> Result<bool, StoreError> {
        dispatch!(self, b => b.insert_staff_account(account).await)
    }

    /// One staff account.
    pub async fn staff_account(
        &self,
        username: &str,
    ) -> Result<Option<StaffAccountRow>, StoreError> {
        dispatch!(self, b => b.staff_account(username).await)
    }

    /// Every staff account, by username.
    pub async fn staff_accounts(&self) -> Result<Vec<StaffAccountRow>, StoreError> {
        dispatch!(self, b => b.staff_accounts().await)
    }

    /// Enables or disables a staff account. False when there is no such account.
    pub async fn set_staff_enabled(
        &self,
        username: &str,
        enabled: bool,
    ) -> Result<bool, StoreError> {
        dispatch!(self, b => b.set_staff_enabled(username, enabled).await)
    }

    /// Whether any staff account can sign in.
    pub async fn has_enabled_staff(&self) -> Result<bool, StoreError> {
        dispatch!(self, b => b.has_enabled_staff().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::Instant;
    use crate::store::test_support::open_store;

    #[tokio::test]
    async fn a_jti_is_fresh_once_even_across_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let expires = unix_now() + 300;
        let store = open_store(dir.path()).await;
        assert!(
            store
                .remember_assertion("client-a", "jti-1", expires)
                .await
                .expect("remember")
        );
        assert!(
            !store
                .remember_assertion("client-a", "jti-1", expires)
                .await
                .expect("remember")
        );
        // Another client's jti is its own.
        assert!(
            store
                .remember_assertion("client-b", "jti-1", expires)
                .await
                .expect("remember")
        );
        store.close().await;

        let store = open_store(dir.path()).await;
        assert!(
            !store
                .remember_assertion("client-a", "jti-1", expires)
                .await
                .expect("remember"),
            "a restart must not reopen the replay window"
        );
        store.close().await;
    }

    #[tokio::test]
    async fn expired_assertions_are_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path()).await;
        let long_ago = unix_now() - 3600;
        assert!(
            store
                .remember_assertion("c", "old", long_ago)
                .await
                .expect("remember")
        );
        // The next remember prunes it: the same jti is fresh again (its assertion
        // would be refused as expired before it got here).
        assert!(
            store
                .remember_assertion("c", "old", long_ago)
                .await
                .expect("remember")
        );
        store.close().await;
    }

    #[tokio::test]
    async fn the_first_secret_stored_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path()).await;
        assert_eq!(
            store.secret_or_insert("token", "aa").await.expect("secret"),
            "aa"
        );
        assert_eq!(
            store.secret_or_insert("token", "bb").await.expect("secret"),
            "aa"
        );
        store.close().await;
    }

    #[tokio::test]
    async fn staff_accounts_are_added_listed_and_disabled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path()).await;
        assert!(!store.has_enabled_staff().await.expect("count"));
        let row = StaffAccountRow {
            username: "amara".into(),
            display_name: "Amara Okafor".into(),
            role: "link_worker".into(),
            password_hash: "$argon2id$…".into(),
            enabled: true,
            created_at: Instant::now().to_fhir(),
            updated_at: Instant::now().to_fhir(),
        };
        assert!(store.insert_staff_account(&row).await.expect("insert"));
        assert!(!store.insert_staff_account(&row).await.expect("taken"));
        assert!(store.has_enabled_staff().await.expect("count"));
        assert_eq!(
            store.staff_account("amara").await.expect("read"),
            Some(row.clone())
        );
        assert!(store.set_staff_enabled("amara", false).await.expect("set"));
        assert!(!store.set_staff_enabled("nobody", false).await.expect("set"));
        let listed = store.staff_accounts().await.expect("list");
        assert_eq!(listed.len(), 1);
        assert!(!listed[0].enabled);
        assert!(!format!("{row:?}").contains("argon2"));
        store.close().await;
    }
}
