//! Console sessions (`migrations/*/0007_assignment.sql` and `0010_console.sql`,
//! `console_sessions`): a signed-in person's browser, found by the SHA-256 of its
//! cookie's token; and sign-ins through the identity provider under way
//! (`console_sign_ins`).
//!
//! Invariants:
//! - the token itself is never stored (a copy of the database signs no one in);
//! - a session past its idle or absolute limit is never returned, and is deleted when
//!   it is seen; expired rows are pruned as new sessions are made;
//! - every write is on the writer and committed before the call returns;
//! - a sign-in under way and a kept form are each read once: reading deletes them.

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
    /// For a person signed in through the identity provider (no staff account): the
    /// role its ID token gave; `None` for a Sprig account's session.
    pub role: Option<String>,
    /// Likewise, the name shown.
    pub display_name: Option<String>,
    /// A form the person had posted as their last session ended (written at insert,
    /// read with `take_kept_form`; never read back by `live_session`).
    pub kept: Option<KeptForm>,
}

/// A form posted after its session had ended: where it was posted, and its fields
/// (urlencoded, without the dead CSRF token). It may hold free text: never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct KeptForm {
    /// The path the form was posted to.
    pub path: String,
    /// Its fields, urlencoded.
    pub form: String,
}

impl std::fmt::Debug for KeptForm {
    // By hand: what a person typed stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptForm")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A person who has signed in through the identity provider (`console_people`, written
/// with each of their sessions): no staff account, the name and role of their last
/// sign-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderPerson {
    /// Their username (the provider's claim).
    pub username: String,
    /// Their name as last given.
    pub display_name: String,
    /// Their role as last given (`StaffRole` code).
    pub role: String,
    /// When they last signed in (Unix seconds).
    pub last_signed_in: i64,
    /// When an administrator stopped them being assignable (Unix seconds), and who did;
    /// `None` while they are assignable (migration 0014).
    pub inactive: Option<(i64, String)>,
}

/// A sign-in through the identity provider under way (OpenID Connect).
#[derive(Clone, PartialEq, Eq)]
pub struct SignInRow {
    /// The SHA-256 of the browser's sign-in cookie, lowercase hex.
    pub token_hash: String,
    /// The `state` sent to the provider.
    pub state: String,
    /// The `nonce` the ID token must carry.
    pub nonce: String,
    /// PKCE's code verifier.
    pub code_verifier: String,
    /// The `redirect_uri` sent (the token request repeats it).
    pub redirect_uri: String,
    /// A form to give back once signed in.
    pub kept: Option<KeptForm>,
    /// When it is no longer accepted (Unix seconds).
    pub expires_at: i64,
}

impl std::fmt::Debug for SignInRow {
    // By hand: the state, nonce and verifier stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInRow")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
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
    /// limit. A session from the identity provider (`role` given) also records its
    /// person in `console_people`.
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

    /// Everyone who has signed in through the identity provider, by username.
    pub async fn provider_people(&self) -> Result<Vec<ProviderPerson>, StoreError> {
        dispatch!(self, b => b.provider_people().await)
    }

    /// Marks a person who signed in through the identity provider as no longer
    /// assignable (`inactive` = `Some((since, by))`) or assignable again (`None`). The row
    /// is kept either way. Returns whether there is such a person.
    pub async fn set_provider_person_inactive(
        &self,
        username: &str,
        inactive: Option<(i64, &str)>,
    ) -> Result<bool, StoreError> {
        dispatch!(self, b => b.set_provider_person_inactive(username, inactive).await)
    }

    /// Ends a session (sign-out). Nothing happens when there is none.
    pub async fn delete_session(&self, token_hash: &str) -> Result<(), StoreError> {
        dispatch!(self, b => b.delete_session(token_hash).await)
    }

    /// The form kept for this session, if any, and forgets it (it is shown once).
    pub async fn take_kept_form(&self, token_hash: &str) -> Result<Option<KeptForm>, StoreError> {
        dispatch!(self, b => b.take_kept_form(token_hash).await)
    }

    /// Stores a sign-in through the identity provider under way, first pruning those
    /// already past their time at `now`.
    pub async fn insert_sign_in(&self, sign_in: &SignInRow, now: i64) -> Result<(), StoreError> {
        dispatch!(self, b => b.insert_sign_in(sign_in, now).await)
    }

    /// The sign-in under way with this token hash, if not past its time at `now`; it is
    /// deleted either way (a provider's answer is used once).
    pub async fn take_sign_in(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<SignInRow>, StoreError> {
        dispatch!(self, b => b.take_sign_in(token_hash, now).await)
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
            role: None,
            display_name: None,
            kept: None,
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

    #[tokio::test]
    async fn sign_ins_and_kept_forms_are_read_once() {
        let dir = tempfile::tempdir().expect("dir");
        let store = open_store(dir.path()).await;
        let now = 1_800_000_000;
        let kept = KeptForm {
            path: "/console/referrals/r1/notes".into(),
            form: "text=Rang+twice".into(),
        };
        let sign_in = |hash: &str, expires_at| SignInRow {
            token_hash: hash.into(),
            state: "s".into(),
            nonce: "n".into(),
            code_verifier: "v".into(),
            redirect_uri: "http://sprig/console/sign-in/idp/callback".into(),
            kept: Some(kept.clone()),
            expires_at,
        };
        store
            .insert_sign_in(&sign_in("x", now + 600), now)
            .await
            .expect("insert");
        store
            .insert_sign_in(&sign_in("old", now + 10), now)
            .await
            .expect("insert");
        let taken = store.take_sign_in("x", now).await.expect("read");
        assert_eq!(taken, Some(sign_in("x", now + 600)));
        assert_eq!(store.take_sign_in("x", now).await.expect("read"), None);
        assert_eq!(
            store.take_sign_in("old", now + 10).await.expect("read"),
            None
        );

        let mut with_form = session("k", now);
        with_form.kept = Some(kept.clone());
        store.insert_session(&with_form).await.expect("insert");
        assert_eq!(store.take_kept_form("k").await.expect("read"), Some(kept));
        assert_eq!(store.take_kept_form("k").await.expect("read"), None);
        assert!(
            store
                .live_session("k", now, 600)
                .await
                .expect("read")
                .is_some()
        );
    }
}
