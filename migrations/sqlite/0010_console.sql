-- The console (issue 21): signing in through the service's identity provider, and
-- what a person typed when their session ended.
--
-- A session started through the identity provider has no staff account: the role and
-- name its ID token gave are kept with it (NULL for a Sprig account's session, whose
-- role is read from the account on every request).
ALTER TABLE console_sessions ADD COLUMN role TEXT;
ALTER TABLE console_sessions ADD COLUMN display_name TEXT;
-- A form posted after the session had ended, kept for the session the same browser
-- signed in with next, shown once on its page to check and send again (never replayed):
-- the page's path, and the form's fields (urlencoded, without the dead CSRF token).
ALTER TABLE console_sessions ADD COLUMN resume_path TEXT;
ALTER TABLE console_sessions ADD COLUMN resume_form TEXT;

-- A sign-in through the identity provider under way (OpenID Connect, authorization
-- code with PKCE): found by the SHA-256 of the browser's short-lived cookie, read and
-- deleted once when the provider sends the browser back. `state` and `nonce` are
-- compared with what comes back; `code_verifier` is PKCE's secret. Unix seconds.
CREATE TABLE console_sign_ins (
    token_hash    TEXT    NOT NULL PRIMARY KEY,
    state         TEXT    NOT NULL,
    nonce         TEXT    NOT NULL,
    code_verifier TEXT    NOT NULL,
    redirect_uri  TEXT    NOT NULL,
    resume_path   TEXT,
    resume_form   TEXT,
    expires_at    INTEGER NOT NULL
);
CREATE INDEX console_sign_ins_by_expiry ON console_sign_ins (expires_at);

-- A link worker's worklist (mine and the unassigned ones, oldest first): two ordered
-- range scans of this index, one per assignee value, each stopped at the page's size
-- (`store::sql::referrals::list_referrals`). The older (assigned_to, stage, …) index
-- serves a stage filter and the per-stage counts.
CREATE INDEX referrals_by_assignee_received ON referrals (assigned_to, received_at, id);
