-- no-transaction
-- A referral's business identifier is unique per sending practice (issue 17: "the
-- identifier is scoped to its sender's practice"), not across all practices: two
-- practices may use the same identifier system and value for two referrals, and
-- neither learns of the other's. Before, `UNIQUE (identifier_system, identifier_value)`
-- made the second practice's referral a 409 conflict.
--
-- SQLite cannot drop a table constraint, so the table is rebuilt (the documented
-- twelve-step procedure: https://www.sqlite.org/lang_altertable.html#otheralter).
-- Seven tables refer to `referrals (id)`; dropping it with foreign keys on would
-- fail, and `PRAGMA foreign_keys` is ignored inside a transaction, hence
-- `no-transaction` and the explicit BEGIN/COMMIT below. Every row and column is kept
-- (`id`s unchanged, so the references stay valid), and every index is made again.
-- If it stops part way, nothing is committed and running it again starts over.
PRAGMA foreign_keys = OFF;
BEGIN;

DROP TABLE IF EXISTS referrals_rebuilt;
CREATE TABLE referrals_rebuilt (
    id                  TEXT    NOT NULL PRIMARY KEY,
    -- the GP system's business identifier: what makes resubmission idempotent,
    -- unique within the sending practice (referrals_by_identifier)
    identifier_system   TEXT    NOT NULL,
    identifier_value    TEXT    NOT NULL,
    -- the workflow stage (CodeSystem sprig-referral-stage)
    stage               TEXT    NOT NULL,
    -- ServiceRequest.status as the GP system last sent it
    fhir_status         TEXT    NOT NULL,
    intent              TEXT,
    priority            TEXT,
    authored_on         TEXT,
    received_at         TEXT    NOT NULL,
    updated_at          TEXT    NOT NULL,
    -- 'resource', 'transaction' or 'message': how the referral arrived
    received_as         TEXT    NOT NULL,
    practice_ods_code   TEXT,
    practice_name       TEXT,
    referrer_name       TEXT,
    referrer_identifier TEXT,
    consent_status      TEXT,
    consent_date        TEXT,
    -- where replies go (a BaRS message's source.endpoint), if the GP said
    reply_to            TEXT,
    -- the Patient resource, when it was stored as its own resource
    patient_id          TEXT,
    -- the Task that reports this referral's progress
    task_id             TEXT    NOT NULL,
    -- bumped on every change to the record (optimistic concurrency)
    version             INTEGER NOT NULL,
    -- the link worker it is assigned to (0007), NULL while unassigned
    assigned_to         TEXT
);
INSERT INTO referrals_rebuilt (id, identifier_system, identifier_value, stage, fhir_status,
    intent, priority, authored_on, received_at, updated_at, received_as, practice_ods_code,
    practice_name, referrer_name, referrer_identifier, consent_status, consent_date, reply_to,
    patient_id, task_id, version, assigned_to)
SELECT id, identifier_system, identifier_value, stage, fhir_status,
    intent, priority, authored_on, received_at, updated_at, received_as, practice_ods_code,
    practice_name, referrer_name, referrer_identifier, consent_status, consent_date, reply_to,
    patient_id, task_id, version, assigned_to
FROM referrals;
DROP TABLE referrals;
ALTER TABLE referrals_rebuilt RENAME TO referrals;

-- One referral per identifier per practice; a referral with no practice is keyed
-- under '' (NULLs would all be distinct). `store::sql::referrals` looks up by
-- exactly this expression, so the lookup is this index's probe.
CREATE UNIQUE INDEX referrals_by_identifier
    ON referrals (COALESCE(practice_ods_code, ''), identifier_system, identifier_value);
-- The indexes of 0003 and 0007, as they were.
CREATE INDEX referrals_by_stage ON referrals (stage, received_at, id);
CREATE INDEX referrals_by_practice ON referrals (practice_ods_code, received_at, id);
CREATE INDEX referrals_by_received ON referrals (received_at, id);
CREATE INDEX referrals_by_assignee ON referrals (assigned_to, stage, received_at, id);

COMMIT;
PRAGMA foreign_keys = ON;
