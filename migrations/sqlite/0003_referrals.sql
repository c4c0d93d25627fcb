-- The social prescribing service's referral record: real tables that staff
-- tools and reports can query, beside the FHIR resources they came from.
--
-- A referral's id is the id of its stored ServiceRequest. Rows are written
-- by `store::referrals` inside the same transaction as the FHIR resources
-- they describe (and the outbox message that reports the change), so the
-- record, the FHIR versions and what must be sent back never disagree.
-- Timestamps are FHIR instants in UTC, fixed width: text order is time order.

CREATE TABLE referrals (
    id                  TEXT    NOT NULL PRIMARY KEY,
    -- the GP system's business identifier: what makes resubmission idempotent
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
    UNIQUE (identifier_system, identifier_value)
);

CREATE INDEX referrals_by_stage ON referrals (stage, received_at, id);
CREATE INDEX referrals_by_practice ON referrals (practice_ods_code, received_at, id);
CREATE INDEX referrals_by_received ON referrals (received_at, id);

-- Who the referral is for and how a Link Worker can reach them.
CREATE TABLE referral_patients (
    referral_id TEXT NOT NULL PRIMARY KEY REFERENCES referrals (id),
    nhs_number  TEXT,
    given_name  TEXT,
    family_name TEXT,
    birth_date  TEXT,
    phone       TEXT,
    email       TEXT,
    address     TEXT,
    postcode    TEXT
);

CREATE INDEX referral_patients_by_nhs_number ON referral_patients (nhs_number);

-- Why the patient was referred, in the GP's order.
CREATE TABLE referral_reasons (
    referral_id TEXT    NOT NULL REFERENCES referrals (id),
    position    INTEGER NOT NULL,
    system      TEXT,
    code        TEXT,
    display     TEXT,
    text        TEXT,
    PRIMARY KEY (referral_id, position)
);

CREATE INDEX referral_reasons_by_code ON referral_reasons (system, code);

-- Every stage the referral has been in: who moved it, when and why.
CREATE TABLE referral_stage_history (
    referral_id  TEXT    NOT NULL REFERENCES referrals (id),
    seq          INTEGER NOT NULL,
    stage        TEXT    NOT NULL,
    at           TEXT    NOT NULL,
    actor        TEXT    NOT NULL,
    reason       TEXT,
    note         TEXT,
    -- the Task version that reported this stage
    task_version INTEGER NOT NULL,
    PRIMARY KEY (referral_id, seq)
);

-- Free-text notes: the GP's (from ServiceRequest.note) and the service's.
CREATE TABLE referral_notes (
    referral_id TEXT    NOT NULL REFERENCES referrals (id),
    seq         INTEGER NOT NULL,
    at          TEXT    NOT NULL,
    -- 'gp' or 'service'
    source      TEXT    NOT NULL,
    author      TEXT,
    text        TEXT    NOT NULL,
    PRIMARY KEY (referral_id, seq)
);

-- Wellbeing outcome measures; each is also an Observation (same id).
CREATE TABLE outcome_measures (
    id           TEXT    NOT NULL PRIMARY KEY,
    referral_id  TEXT    NOT NULL REFERENCES referrals (id),
    -- 'swemwbs', 'wemwbs', 'ons4' or 'ucla3'
    measure      TEXT    NOT NULL,
    recorded_at  TEXT    NOT NULL,
    entered_at   TEXT    NOT NULL,
    actor        TEXT    NOT NULL,
    -- raw total, when the measure has one (ONS4 has none)
    total        INTEGER,
    -- the SWEMWBS metric score, as exact decimal text
    metric       TEXT
);

CREATE INDEX outcome_measures_by_referral ON outcome_measures (referral_id, recorded_at);

CREATE TABLE outcome_answers (
    outcome_id TEXT    NOT NULL REFERENCES outcome_measures (id),
    item       INTEGER NOT NULL,
    value      INTEGER NOT NULL,
    PRIMARY KEY (outcome_id, item)
);

-- Every submission that created or changed a referral, kept verbatim for audit.
CREATE TABLE referral_submissions (
    referral_id    TEXT    NOT NULL REFERENCES referrals (id),
    seq            INTEGER NOT NULL,
    received_at    TEXT    NOT NULL,
    -- 'resource', 'transaction', 'message' or 'update'
    received_as    TEXT    NOT NULL,
    request_id     TEXT    NOT NULL,
    correlation_id TEXT,
    body           BLOB    NOT NULL,
    -- what Sprig answered (a transaction-response or message Bundle), so a
    -- resubmission can be answered the same way
    response       TEXT,
    PRIMARY KEY (referral_id, seq)
);

-- BaRS X-Request-ID: the same id again with the same body is a retry (the
-- first answer is repeated); with a different body it is a conflict (409).
CREATE TABLE message_requests (
    request_id  TEXT    NOT NULL PRIMARY KEY,
    body        BLOB    NOT NULL,
    status      INTEGER NOT NULL,
    response    TEXT    NOT NULL,
    received_at TEXT    NOT NULL
);

-- What must be sent back, and to whom: one row per change that travels,
-- written in the change's own transaction. The delivery worker consumes it.
CREATE TABLE outbox (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    referral_id       TEXT    NOT NULL REFERENCES referrals (id),
    resource_type     TEXT    NOT NULL,
    resource_id       TEXT    NOT NULL,
    version_id        INTEGER NOT NULL,
    -- the referring practice (endpoint registry key) and reply address
    destination_ods   TEXT,
    reply_to          TEXT,
    created_at        TEXT    NOT NULL,
    -- 'pending', then whatever delivery makes of it
    state             TEXT    NOT NULL DEFAULT 'pending'
);

CREATE INDEX outbox_by_state ON outbox (state, seq);
CREATE INDEX outbox_by_referral ON outbox (referral_id, seq);
