-- Assignment (issue 21): the link worker a referral is assigned to (a staff username),
-- or NULL while it is unassigned. Managers assign; a link worker works their own and
-- the unassigned ones (`identity::Access::staff_may`).
ALTER TABLE referrals ADD COLUMN assigned_to TEXT;

-- The console's worklist: "mine" and "unassigned" by stage, oldest first.
CREATE INDEX referrals_by_assignee ON referrals (assigned_to, stage, received_at, id);

-- Console sessions (issue 21): a signed-in person's browser. The cookie carries a random
-- token; only its SHA-256 (hex) is stored, so a copy of the database signs no one in.
-- Times are Unix seconds. A session ends at sign-out, after `idle` seconds unused, or
-- at `expires_at` (the absolute limit), whichever is first.
CREATE TABLE console_sessions (
    token_hash   TEXT    NOT NULL PRIMARY KEY,
    username     TEXT    NOT NULL,
    csrf_token   TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);
CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_at);
