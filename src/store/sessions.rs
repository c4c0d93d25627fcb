//! Console sessions (`migrations/*/0007_assignment.sql`, `console_sessions`): a
//! signed-in person's browser, found by the SHA-256 of its cookie's token.
//!
//! Invariants:
//! - the token itself is never stored (a copy of the database signs no one in);
//! - a session past its idle or absolute limit is never returned, and is deleted when
//!   it is seen; expired rows are pruned as new sessions are made;
//! - every write is on the writer and committed before the call returns.

use super::{Store, StoreError, dispatch};

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
        dispatch!(self, b => b.insert_session(session).await)
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
        dispatch!(self, b => b.live_session(token_hash, now, idle_secs).await)
    }

    /// Ends a session (sign-out). Nothing happens when there is none.
    pub async fn delete_session(&self, token_hash: &str) -> Result<(), StoreError> {
        dispatch!(self, b => b.delete_session(token_hash).await)
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
