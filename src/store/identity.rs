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

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::{Store, StoreError};
use crate::fhir::Instant;

/// A remembered assertion is kept this long past its `exp`, so that one the verifier
/// still accepts under its clock-skew allowance is still remembered.
const ASSERTION_KEEP_AFTER_EXPIRY_SECS: i64 = 5 * 60;

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

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn staff_from_row(row: &SqliteRow) -> Result<StaffAccountRow, StoreError> {
    Ok(StaffAccountRow {
        username: row.try_get("username")?,
        display_name: row.try_get("display_name")?,
        role: row.try_get("role")?,
        password_hash: row.try_get("password_hash")?,
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

const STAFF_COLUMNS: &str =
    "username, display_name, role, password_hash, enabled, created_at, updated_at";

impl Store {
    /// The secret stored under `name`; if there is none yet, `candidate` is stored and
    /// returned. Two instances racing both get the one stored first.
    pub async fn secret_or_insert(
        &self,
        name: &str,
        candidate: &str,
    ) -> Result<String, StoreError> {
        let Store::Sqlite(s) = self;
        sqlx::query(
            "INSERT INTO identity_secrets (name, value, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .bind(Instant::now().to_fhir())
        .execute(&s.writer)
        .await?;
        let (value,): (String,) =
            sqlx::query_as("SELECT value FROM identity_secrets WHERE name = $1")
                .bind(name)
                .fetch_one(&s.writer)
                .await?;
        Ok(value)
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
        let Store::Sqlite(s) = self;
        let mut tx = s.writer.begin().await?;
        sqlx::query("DELETE FROM seen_assertions WHERE expires_at < $1")
            .bind(unix_now().saturating_sub(ASSERTION_KEEP_AFTER_EXPIRY_SECS))
            .execute(&mut *tx)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO seen_assertions (client_id, jti, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (client_id, jti) DO NOTHING",
        )
        .bind(client_id)
        .bind(jti)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(inserted == 1)
    }

    /// Adds a staff account. False (and nothing written) when the username is taken.
    pub async fn insert_staff_account(
        &self,
        account: &StaffAccountRow,
    ) -> Result<bool, StoreError> {
        let Store::Sqlite(s) = self;
        let inserted = sqlx::query(
            "INSERT INTO staff_accounts \
               (username, display_name, role, password_hash, enabled, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (username) DO NOTHING",
        )
        .bind(&account.username)
        .bind(&account.display_name)
        .bind(&account.role)
        .bind(&account.password_hash)
        .bind(i64::from(account.enabled))
        .bind(&account.created_at)
        .bind(&account.updated_at)
        .execute(&s.writer)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// One staff account.
    pub async fn staff_account(
        &self,
        username: &str,
    ) -> Result<Option<StaffAccountRow>, StoreError> {
        let Store::Sqlite(s) = self;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {STAFF_COLUMNS} FROM staff_accounts WHERE username = $1"
        )))
        .bind(username)
        .fetch_optional(&s.readers)
        .await?;
        row.as_ref().map(staff_from_row).transpose()
    }

    /// Every staff account, by username.
    pub async fn staff_accounts(&self) -> Result<Vec<StaffAccountRow>, StoreError> {
        let Store::Sqlite(s) = self;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {STAFF_COLUMNS} FROM staff_accounts ORDER BY username"
        )))
        .fetch_all(&s.readers)
        .await?
        .iter()
        .map(staff_from_row)
        .collect()
    }

    /// Enables or disables a staff account. False when there is no such account.
    pub async fn set_staff_enabled(
        &self,
        username: &str,
        enabled: bool,
    ) -> Result<bool, StoreError> {
        let Store::Sqlite(s) = self;
        let changed = sqlx::query(
            "UPDATE staff_accounts SET enabled = $1, updated_at = $2 WHERE username = $3",
        )
        .bind(i64::from(enabled))
        .bind(Instant::now().to_fhir())
        .bind(username)
        .execute(&s.writer)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    /// Whether any staff account can sign in.
    pub async fn has_enabled_staff(&self) -> Result<bool, StoreError> {
        let Store::Sqlite(s) = self;
        let (count,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM staff_accounts WHERE enabled = 1")
                .fetch_one(&s.readers)
                .await?;
        Ok(count > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
