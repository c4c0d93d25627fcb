//! Console sessions in SQL, shared by both backends: compiled into `store::sqlite` and
//! `store::postgres` alike (`#[path]`), each time with that backend's types, so the SQL
//! text exists once.

use sqlx::Row;

use super::Backend;
use crate::store::StoreError;
use crate::store::sessions::SessionRow;

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
               (token_hash, username, csrf_token, created_at, last_seen_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&session.token_hash)
        .bind(&session.username)
        .bind(&session.csrf_token)
        .bind(session.created_at)
        .bind(session.last_seen_at)
        .bind(session.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
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
            "SELECT token_hash, username, csrf_token, created_at, last_seen_at, expires_at \
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
}
