-- Identity, access and audit (issue 17): the secret Sprig signs its own access tokens
-- with, the client assertions already used (replay protection that survives a restart),
-- staff accounts, and the audit log.

-- Secrets Sprig makes once and every instance on this database shares. `value` is
-- lowercase hex (portable: no BLOB/BYTEA difference between dialects).
CREATE TABLE identity_secrets (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- Every client assertion accepted, until it expires: a `jti` seen again within its
-- assertion's lifetime is a replay. `expires_at` is Unix seconds.
CREATE TABLE seen_assertions (
    client_id  TEXT NOT NULL,
    jti        TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX seen_assertions_by_expiry ON seen_assertions (expires_at);

-- Service staff who sign in with a password. `password_hash` is an Argon2id PHC string;
-- there is no default account.
CREATE TABLE staff_accounts (
    username      TEXT PRIMARY KEY,
    display_name  TEXT NOT NULL,
    role          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    enabled       INTEGER NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);

-- The audit log: one row per request that reached a FHIR or /api route, allowed or
-- refused. Append-only: Sprig never updates a row (the trigger below refuses it), and
-- deletes only whole days past the retention period. No patient data but ids: search
-- parameters by name only, never their values.
CREATE TABLE audit_events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    -- FHIR instant, fixed width (text order is time order)
    recorded_at    TEXT NOT NULL,
    -- who: a client (with the ODS code it acted as) or a staff person
    client_id      TEXT,
    ods_code       TEXT,
    staff_username TEXT,
    staff_role     TEXT,
    -- a trusted proxy's client id and the end-user organisation it passed
    proxy_id       TEXT,
    end_user_ods   TEXT,
    peer_address   TEXT,
    -- what: the interaction (create, read, search-type, operation:process-message,
    -- api:transition…), the resource type and id
    interaction    TEXT NOT NULL,
    resource_type  TEXT,
    resource_id    TEXT,
    -- JSON arrays of text: search parameter names, Patient ids and referral ids returned
    search_params  TEXT NOT NULL,
    patient_ids    TEXT NOT NULL,
    referral_ids   TEXT NOT NULL,
    -- the answer: HTTP status and the AuditEvent outcome code (0, 4, 8, 12)
    status         INTEGER NOT NULL,
    outcome        TEXT NOT NULL,
    request_id     TEXT,
    correlation_id TEXT,
    message_id     TEXT
);
CREATE INDEX audit_events_by_time ON audit_events (recorded_at, seq);
CREATE INDEX audit_events_by_client ON audit_events (client_id, recorded_at);
CREATE INDEX audit_events_by_staff ON audit_events (staff_username, recorded_at);
CREATE INDEX audit_events_by_resource ON audit_events (resource_type, resource_id);

CREATE TRIGGER audit_events_append_only BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are never changed');
END;
