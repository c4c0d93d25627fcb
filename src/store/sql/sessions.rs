//! Console sessions in SQL, shared by both backends: compiled into `store::sqlite` and
//! `store::postgres` alike (`#[path]`), each time with that backend's types, so the SQL
//! text exists once.

use super::Backend;
use crate::store::StoreError;
use crate::store::sessions::{KeptForm, ProviderPerson, SessionRow, SignInRow};

impl Backend {
    /// Stores a new session, first pruning every session already past its absolute
    /// limit.
    pub(in crate::store) async fn insert_session(
        &self,
        session: &SessionRow,
    ) -> Result<(), StoreError> {
        let s = self;
        let mut tx = s.writer.begin().await?;
        sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
            .bind(session.created_at)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO console_sessions \
               (token_hash, username, csrf_token, created_at, last_seen_at, expires_at, \
                role, display_name, resume_path, resume_form) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&session.token_hash)
        .bind(&session.username)
        .bind(&session.csrf_token)
        .bind(session.created_at)
        .bind(session.last_seen_at)
        .bind(session.expires_at)
        .bind(&session.role)
        .bind(&session.display_name)
        .bind(session.kept.as_ref().map(|k| &k.path))
        .bind(session.kept.as_ref().map(|k| &k.form))
        .execute(&mut *tx)
        .await?;
        // A provider's person is remembered beyond the session (the last sign-in's
        // name and role), in the same transaction: no session without its person.
        if let (Some(role), Some(name)) = (&session.role, &session.display_name) {
            sqlx::query(
                "INSERT INTO console_people \
                   (username, display_name, role, first_signed_in, last_signed_in) \
                 VALUES ($1, $2, $3, $4, $4) \
                 ON CONFLICT (username) DO UPDATE SET display_name = excluded.display_name, \
                   role = excluded.role, last_signed_in = excluded.last_signed_in",
            )
            .bind(&session.username)
            .bind(name)
            .bind(role)
            .bind(session.created_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Everyone who has signed in through the identity provider, by username.
    pub(in crate::store) async fn provider_people(
        &self,
    ) -> Result<Vec<ProviderPerson>, StoreError> {
        let rows: Vec<ProviderPersonRow> = sqlx::query_as(
            "SELECT username, display_name, role, last_signed_in, inactive_since, inactive_by \
             FROM console_people ORDER BY username",
        )
        .fetch_all(&self.readers)
        .await?;
        Ok(rows
            .into_iter()
            .map(ProviderPersonRow::into_domain)
            .collect())
    }

    /// Sets or clears `console_people.inactive_since` and `inactive_by` for one person.
    pub(in crate::store) async fn set_provider_person_inactive(
        &self,
        username: &str,
        inactive: Option<(i64, &str)>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE console_people SET inactive_since = $1, inactive_by = $2 WHERE username = $3",
        )
        .bind(inactive.map(|(since, _)| since))
        .bind(inactive.map(|(_, by)| by))
        .bind(username)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The live session with this token hash at `now`, its last use moved to `now`
    /// (when it was last moved more than a minute ago: most requests write nothing).
    /// A session unused for `idle_secs`, or past its absolute limit, is deleted and
    /// `None` returned.
    pub(in crate::store) async fn live_session(
        &self,
        token_hash: &str,
        now: i64,
        idle_secs: i64,
    ) -> Result<Option<SessionRow>, StoreError> {
        let s = self;
        let row: Option<ConsoleSessionRow> = sqlx::query_as(
            "SELECT token_hash, username, csrf_token, created_at, last_seen_at, expires_at, \
                    role, display_name \
             FROM console_sessions WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&s.readers)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let session = row.into_domain();
        if now >= session.expires_at || now - session.last_seen_at >= idle_secs {
            self.delete_session(token_hash).await?;
            return Ok(None);
        }
        if now - session.last_seen_at >= 60 {
            sqlx::query("UPDATE console_sessions SET last_seen_at = $1 WHERE token_hash = $2")
                .bind(now)
                .bind(token_hash)
                .execute(&s.writer)
                .await?;
        }
        Ok(Some(session))
    }

    /// Ends a session (sign-out). Nothing happens when there is none.
    pub(in crate::store) async fn delete_session(
        &self,
        token_hash: &str,
    ) -> Result<(), StoreError> {
        let s = self;
        sqlx::query("DELETE FROM console_sessions WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&s.writer)
            .await?;
        Ok(())
    }

    /// The form kept for this session, if any, and forgets it (it is shown once).
    pub(in crate::store) async fn take_kept_form(
        &self,
        token_hash: &str,
    ) -> Result<Option<KeptForm>, StoreError> {
        let s = self;
        let mut tx = s.writer.begin().await?;
        let row: Option<KeptFormRow> = sqlx::query_as(
            "SELECT resume_path, resume_form FROM console_sessions \
             WHERE token_hash = $1 AND resume_path IS NOT NULL",
        )
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        sqlx::query(
            "UPDATE console_sessions SET resume_path = NULL, resume_form = NULL \
             WHERE token_hash = $1",
        )
        .bind(token_hash)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(KeptForm {
            path: row.resume_path,
            form: row.resume_form.unwrap_or_default(),
        }))
    }

    /// Stores a sign-in through the identity provider under way, first pruning those
    /// already past their time.
    pub(in crate::store) async fn insert_sign_in(
        &self,
        sign_in: &SignInRow,
        now: i64,
    ) -> Result<(), StoreError> {
        let s = self;
        let mut tx = s.writer.begin().await?;
        sqlx::query("DELETE FROM console_sign_ins WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO console_sign_ins \
               (token_hash, state, nonce, code_verifier, redirect_uri, resume_path, \
                resume_form, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&sign_in.token_hash)
        .bind(&sign_in.state)
        .bind(&sign_in.nonce)
        .bind(&sign_in.code_verifier)
        .bind(&sign_in.redirect_uri)
        .bind(sign_in.kept.as_ref().map(|k| &k.path))
        .bind(sign_in.kept.as_ref().map(|k| &k.form))
        .bind(sign_in.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The sign-in under way with this token hash, if not past its time at `now`; it is
    /// deleted either way (a provider's answer is used once).
    pub(in crate::store) async fn take_sign_in(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<SignInRow>, StoreError> {
        let s = self;
        let mut tx = s.writer.begin().await?;
        let row: Option<ConsoleSignInRow> = sqlx::query_as(
            "SELECT token_hash, state, nonce, code_verifier, redirect_uri, resume_path, \
                    resume_form, expires_at \
             FROM console_sign_ins WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        sqlx::query("DELETE FROM console_sign_ins WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if now >= row.expires_at {
            return Ok(None);
        }
        Ok(Some(row.into_domain()))
    }
}

/// One person who has signed in through the identity provider (`console_people`).
#[derive(sqlx::FromRow)]
struct ProviderPersonRow {
    username: String,
    display_name: String,
    role: String,
    last_signed_in: i64,
    inactive_since: Option<i64>,
    inactive_by: Option<String>,
}

impl ProviderPersonRow {
    fn into_domain(self) -> ProviderPerson {
        let by = self.inactive_by;
        ProviderPerson {
            username: self.username,
            display_name: self.display_name,
            role: self.role,
            last_signed_in: self.last_signed_in,
            inactive: self
                .inactive_since
                .map(|since| (since, by.unwrap_or_default())),
        }
    }
}

/// A console session (`console_sessions`), without the form it may keep.
#[derive(sqlx::FromRow)]
struct ConsoleSessionRow {
    token_hash: String,
    username: String,
    csrf_token: String,
    created_at: i64,
    last_seen_at: i64,
    expires_at: i64,
    role: Option<String>,
    display_name: Option<String>,
}

impl ConsoleSessionRow {
    fn into_domain(self) -> SessionRow {
        SessionRow {
            token_hash: self.token_hash,
            username: self.username,
            csrf_token: self.csrf_token,
            created_at: self.created_at,
            last_seen_at: self.last_seen_at,
            expires_at: self.expires_at,
            role: self.role,
            display_name: self.display_name,
            kept: None,
        }
    }
}

/// The form a session keeps to show again.
#[derive(sqlx::FromRow)]
struct KeptFormRow {
    resume_path: String,
    resume_form: Option<String>,
}

/// A sign-in through the identity provider under way (`console_sign_ins`).
#[derive(sqlx::FromRow)]
struct ConsoleSignInRow {
    token_hash: String,
    state: String,
    nonce: String,
    code_verifier: String,
    redirect_uri: String,
    resume_path: Option<String>,
    resume_form: Option<String>,
    expires_at: i64,
}

impl ConsoleSignInRow {
    fn into_domain(self) -> SignInRow {
        let form = self.resume_form;
        SignInRow {
            token_hash: self.token_hash,
            state: self.state,
            nonce: self.nonce,
            code_verifier: self.code_verifier,
            redirect_uri: self.redirect_uri,
            kept: self.resume_path.map(|path| KeptForm {
                path,
                form: form.unwrap_or_default(),
            }),
            expires_at: self.expires_at,
        }
    }
}
