//! Console sessions (`migrations/sqlite/0007_assignment.sql`, `console_sessions`): a
//! signed-in person's browser, found by the SHA-256 of its cookie's token.
//!
//! Invariants:
//! - the token itself is never stored (a copy of the database signs no one in);
//! - a session past its idle or absolute limit is never returned, and is deleted when
//!   it is seen; expired rows are pruned as new sessions are made;
//! - every write is on the writer and committed before the call returns.

use sqlx::Row;

use super::{Store, StoreError};

/// A session as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// The SHA-256 of the cookie's token, lowercase hex.
    pub token_hash: String,
    /// The person's username.
    pub username: String,
    /// The token every form of this session carries.
    pub csrf_token: String,
    /// When it began (Unix seconds).
    pub created_at: i64,
    /// When it was last used (Unix seconds).
    pub last_seen_at: i64,
    /// When it ends whatever happens (Unix seconds).
    pub expires_at: i64,
}

impl std::fmt::Debug for SessionRow {
    // By hand: the CSRF token stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRow")
            .field("username", &self.username)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Stores a new session, first pruning every session already past its absolute
    /// limit.
    pub async fn insert_session(&self, session: &SessionRow) -> Result<(), StoreError> {
        let Store::Sqlite(s) = self;
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
    pub async fn live_session(
        &self,
        token_hash: &str,
        now: i64,
        idle_secs: i64,
    ) -> Result<Option<SessionRow>, StoreError> {
        let Store::Sqlite(s) = self;
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
    pub async fn delete_session(&self, token_hash: &str) -> Result<(), StoreError> {
        let Store::Sqlite(s) = self;
        sqlx::query("DELETE FROM console_sessions WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&s.writer)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::open_store;

    fn session(hash: &str, now: i64) -> SessionRow {
        SessionRow {
            token_hash: hash.to_owned(),
            username: "amara".to_owned(),
            csrf_token: "csrf".to_owned(),
            created_at: now,
            last_seen_at: now,
            expires_at: now + 3600,
        }
    }

    #[tokio::test]
    async fn sessions_end_when_idle_past_their_limit_or_deleted() {
        let dir = tempfile::tempdir().expect("dir");
        let store = open_store(dir.path()).await;
        let now = 1_800_000_000;
        store
            .insert_session(&session("a", now))
            .await
            .expect("insert");
        store
            .insert_session(&session("b", now))
            .await
            .expect("insert");
        store
            .insert_session(&session("c", now))
            .await
            .expect("insert");
        // Used within the idle limit: alive, and its last use moves on.
        let live = store.live_session("a", now + 500, 600).await.expect("read");
        assert_eq!(live.map(|s| s.username).as_deref(), Some("amara"));
        assert!(
            store
                .live_session("a", now + 1000, 600)
                .await
                .expect("read")
                .is_some()
        );
        // Unused for the idle limit: gone, for good.
        assert!(
            store
                .live_session("b", now + 600, 600)
                .await
                .expect("read")
                .is_none()
        );
        assert!(
            store
                .live_session("b", now, 600)
                .await
                .expect("read")
                .is_none()
        );
        // Past the absolute limit, however recently used.
        assert!(
            store
                .live_session("a", now + 3600, 10_000)
                .await
                .expect("read")
                .is_none()
        );
        // Signed out.
        store.delete_session("c").await.expect("delete");
        assert!(
            store
                .live_session("c", now, 600)
                .await
                .expect("read")
                .is_none()
        );
        assert!(
            store
                .live_session("unknown", now, 600)
                .await
                .expect("read")
                .is_none()
        );
    }
}
