-- Delivery of the outbox (issue 5). A row is 'pending' until the referrer's
-- endpoint accepts it ('delivered') or delivery gives up ('dead', a dead
-- letter an operator can retry). A pending row is claimed with a lease: the
-- claimer's id and an expiry, so a crashed worker's claim lapses and another
-- worker takes the row over. Scheduling columns are Unix milliseconds, so the
-- claim compares numbers; the instants shown to people stay FHIR text.

ALTER TABLE outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
-- not before this moment (0: due at once)
ALTER TABLE outbox ADD COLUMN next_attempt_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN lease_owner TEXT;
ALTER TABLE outbox ADD COLUMN lease_until_ms INTEGER;
-- the maximum age counts from here: creation, or an operator's retry
ALTER TABLE outbox ADD COLUMN age_from_ms INTEGER;
ALTER TABLE outbox ADD COLUMN last_attempt_at TEXT;
ALTER TABLE outbox ADD COLUMN last_status INTEGER;
-- why the last attempt failed (no patient data: statuses and transport errors)
ALTER TABLE outbox ADD COLUMN last_error TEXT;
-- the receiver's answer to a permanent failure (its OperationOutcome), kept
ALTER TABLE outbox ADD COLUMN receiver_response TEXT;
ALTER TABLE outbox ADD COLUMN delivered_at TEXT;
ALTER TABLE outbox ADD COLUMN dead_at TEXT;

-- The claim looks for due rows per destination in order.
CREATE INDEX outbox_due ON outbox (state, destination_ods, seq);
