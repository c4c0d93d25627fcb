//! The identity tables in SQL, shared by both backends: compiled into `store::sqlite` and
//! `store::postgres` alike (`#[path]`), each time with that backend's `Db`,
//! `Conn` and `DbRow`, so the SQL text exists once.

use super::Backend;
use crate::fhir::Instant;
use crate::store::StoreError;
use crate::store::identity::{ASSERTION_KEEP_AFTER_EXPIRY_SECS, StaffAccountRow, unix_now};

/// A staff account as stored: the columns of `STAFF_COLUMNS`, the flag an integer
/// (SQLite has no boolean).
#[derive(sqlx::FromRow)]
struct StaffAccountTableRow {
    username: String,
    display_name: String,
    role: String,
    password_hash: String,
    enabled: i64,
    created_at: String,
    updated_at: String,
}

impl StaffAccountTableRow {
    fn into_domain(self) -> StaffAccountRow {
        StaffAccountRow {
            username: self.username,
            display_name: self.display_name,
            role: self.role,
            password_hash: self.password_hash,
            enabled: self.enabled != 0,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

const STAFF_COLUMNS: &str =
    "username, display_name, role, password_hash, enabled, created_at, updated_at";
impl Backend {
    /// The secret stored under `name`; if there is none yet, `candidate` is stored and
    /// returned. Two instances racing both get the one stored first.
    pub(in crate::store) async fn secret_or_insert(
        &self,
        name: &str,
        candidate: &str,
    ) -> Result<String, StoreError> {
        let s = self;
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
    pub(in crate::store) async fn remember_assertion(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        let s = self;
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
    pub(in crate::store) async fn insert_staff_account(
        &self,
        account: &StaffAccountRow,
    ) -> Result<bool, StoreError> {
        let s = self;
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
    pub(in crate::store) async fn staff_account(
        &self,
        username: &str,
    ) -> Result<Option<StaffAccountRow>, StoreError> {
        let s = self;
        let row: Option<StaffAccountTableRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {STAFF_COLUMNS} FROM staff_accounts WHERE username = $1"
        )))
        .bind(username)
        .fetch_optional(&s.readers)
        .await?;
        Ok(row.map(StaffAccountTableRow::into_domain))
    }

    /// Every staff account, by username.
    pub(in crate::store) async fn staff_accounts(
        &self,
    ) -> Result<Vec<StaffAccountRow>, StoreError> {
        let s = self;
        Ok(
            sqlx::query_as::<_, StaffAccountTableRow>(sqlx::AssertSqlSafe(format!(
                "SELECT {STAFF_COLUMNS} FROM staff_accounts ORDER BY username"
            )))
            .fetch_all(&s.readers)
            .await?
            .into_iter()
            .map(StaffAccountTableRow::into_domain)
            .collect(),
        )
    }

    /// Enables or disables a staff account. False when there is no such account.
    pub(in crate::store) async fn set_staff_enabled(
        &self,
        username: &str,
        enabled: bool,
    ) -> Result<bool, StoreError> {
        let s = self;
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
    pub(in crate::store) async fn has_enabled_staff(&self) -> Result<bool, StoreError> {
        let s = self;
        let (count,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM staff_accounts WHERE enabled = 1")
                .fetch_one(&s.readers)
                .await?;
        Ok(count > 0)
    }
}
