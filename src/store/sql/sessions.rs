//! Console sessions in SQL, shared by both backends: compiled into `store::sqlite` and
//! `store::postgres` alike (`#[path]`), each time with that backend's types, so the SQL
//! text exists once.

use sqlx::Row;

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
        let rows = sqlx::query(
            "SELECT username, display_name, role, last_signed_in, inactive_since, inactive_by \
             FROM console_people ORDER BY username",
        )
        .fetch_all(&self.readers)
        .await?;
        rows.iter()
            .map(|row| {
                let since: Option<i64> = row.try_get("inactive_since")?;
                let by: Option<String> = row.try_get("inactive_by")?;
                Ok(ProviderPerson {
                    username: row.try_get("username")?,
                    display_name: row.try_get("display_name")?,
                    role: row.try_get("role")?,
                    last_signed_in: row.try_get("last_signed_in")?,
                    inactive: since.map(|since| (since, by.unwrap_or_default())),
                })
            })
            .collect()
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
        let row = sqlx::query(
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
        let session = SessionRow {
            token_hash: row.try_get("token_hash")?,
            username: row.try_get("username")?,
            csrf_token: row.try_get("csrf_token")?,
            created_at: row.try_get("created_at")?,
            last_seen_at: row.try_get("last_seen_at")?,
            expires_at: row.try_get("expires_at")?,
            role: row.try_get("role")?,
            display_name: row.try_get("display_name")?,
            kept: None,
        };
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
        let row = sqlx::query(
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
            path: row.try_get("resume_path")?,
            form: row
                .try_get::<Option<String>, _>("resume_form")?
                .unwrap_or_default(),
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
        let row = sqlx::query(
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
        let expires_at: i64 = row.try_get("expires_at")?;
        if now >= expires_at {
            return Ok(None);
        }
        let path: Option<String> = row.try_get("resume_path")?;
        let form: Option<String> = row.try_get("resume_form")?;
        Ok(Some(SignInRow {
            token_hash: row.try_get("token_hash")?,
            state: row.try_get("state")?,
            nonce: row.try_get("nonce")?,
            code_verifier: row.try_get("code_verifier")?,
            redirect_uri: row.try_get("redirect_uri")?,
            kept: path.map(|path| KeptForm {
                path,
                form: form.unwrap_or_default(),
            }),
            expires_at,
        }))
    }
}
