-- PostgreSQL twin of migrations/sqlite/0003_referrals.sql.
CREATE TABLE referrals (
    id                  TEXT    NOT NULL PRIMARY KEY,
    identifier_system   TEXT    NOT NULL,
    identifier_value    TEXT    NOT NULL,
    stage               TEXT    NOT NULL,
    fhir_status         TEXT    NOT NULL,
    intent              TEXT,
    priority            TEXT,
    authored_on         TEXT,
    received_at         TEXT    NOT NULL,
    updated_at          TEXT    NOT NULL,
    received_as         TEXT    NOT NULL,
    practice_ods_code   TEXT,
    practice_name       TEXT,
    referrer_name       TEXT,
    referrer_identifier TEXT,
    consent_status      TEXT,
    consent_date        TEXT,
    reply_to            TEXT,
    patient_id          TEXT,
    task_id             TEXT    NOT NULL,
    version             BIGINT  NOT NULL,
    UNIQUE (identifier_system, identifier_value)
);
CREATE INDEX referrals_by_stage ON referrals (stage, received_at, id);
CREATE INDEX referrals_by_practice ON referrals (practice_ods_code, received_at, id);
CREATE INDEX referrals_by_received ON referrals (received_at, id);
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
CREATE TABLE referral_reasons (
    referral_id TEXT    NOT NULL REFERENCES referrals (id),
    position    BIGINT  NOT NULL,
    system      TEXT,
    code        TEXT,
    display     TEXT,
    text        TEXT,
    PRIMARY KEY (referral_id, position)
);
CREATE INDEX referral_reasons_by_code ON referral_reasons (system, code);
CREATE TABLE referral_stage_history (
    referral_id  TEXT    NOT NULL REFERENCES referrals (id),
    seq          BIGINT  NOT NULL,
    stage        TEXT    NOT NULL,
    at           TEXT    NOT NULL,
    actor        TEXT    NOT NULL,
    reason       TEXT,
    note         TEXT,
    task_version BIGINT  NOT NULL,
    PRIMARY KEY (referral_id, seq)
);
CREATE TABLE referral_notes (
    referral_id TEXT    NOT NULL REFERENCES referrals (id),
    seq         BIGINT  NOT NULL,
    at          TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    author      TEXT,
    text        TEXT    NOT NULL,
    PRIMARY KEY (referral_id, seq)
);
CREATE TABLE outcome_measures (
    id           TEXT    NOT NULL PRIMARY KEY,
    referral_id  TEXT    NOT NULL REFERENCES referrals (id),
    measure      TEXT    NOT NULL,
    recorded_at  TEXT    NOT NULL,
    entered_at   TEXT    NOT NULL,
    actor        TEXT    NOT NULL,
    total        BIGINT,
    metric       TEXT
);
CREATE INDEX outcome_measures_by_referral ON outcome_measures (referral_id, recorded_at);
CREATE TABLE outcome_answers (
    outcome_id TEXT    NOT NULL REFERENCES outcome_measures (id),
    item       BIGINT  NOT NULL,
    value      BIGINT  NOT NULL,
    PRIMARY KEY (outcome_id, item)
);
CREATE TABLE referral_submissions (
    referral_id    TEXT    NOT NULL REFERENCES referrals (id),
    seq            BIGINT  NOT NULL,
    received_at    TEXT    NOT NULL,
    received_as    TEXT    NOT NULL,
    request_id     TEXT    NOT NULL,
    correlation_id TEXT,
    body           BYTEA   NOT NULL,
    response       TEXT,
    PRIMARY KEY (referral_id, seq)
);
CREATE TABLE message_requests (
    request_id  TEXT    NOT NULL PRIMARY KEY,
    body        BYTEA   NOT NULL,
    status      BIGINT  NOT NULL,
    response    TEXT    NOT NULL,
    received_at TEXT    NOT NULL
);
