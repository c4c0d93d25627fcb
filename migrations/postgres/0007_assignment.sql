-- Assignment (issue 21): the link worker a referral is assigned to (a staff username),
-- or NULL while it is unassigned. The twin of migrations/sqlite/0007_assignment.sql.
ALTER TABLE referrals ADD COLUMN assigned_to TEXT;

-- The console's worklist: "mine" and "unassigned" by stage, oldest first.
CREATE INDEX referrals_by_assignee ON referrals (assigned_to, stage, received_at, id);

-- Console sessions (issue 21): only the SHA-256 (hex) of the cookie's token is stored.
-- Times are Unix seconds.
CREATE TABLE console_sessions (
    token_hash   TEXT    NOT NULL PRIMARY KEY,
    username     TEXT    NOT NULL,
    csrf_token   TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    last_seen_at BIGINT  NOT NULL,
    expires_at   BIGINT  NOT NULL
);
CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_at);
