-- Which practice owns each resource, so a GP client sees only its own practice's
-- data (issue 17: "a practice sees only its own patients").
--
-- `owner_ods` is the ODS code of the practice whose referral the resource belongs
-- to: set when the resource is first written (from the referral, or from the
-- creating client's one practice) and never changed by a later version, so every
-- read filters on one column of `resources`. NULL means no practice owns it: only
-- callers who see every practice (staff, the open modes, Sprig itself) read it.

ALTER TABLE resources ADD COLUMN owner_ods TEXT;

-- Resources written before this migration: the referral each belongs to.
UPDATE resources SET owner_ods =
    (SELECT f.practice_ods_code FROM referrals f WHERE f.id = resources.id)
WHERE resource_type = 'ServiceRequest';
UPDATE resources SET owner_ods =
    (SELECT f.practice_ods_code FROM referrals f WHERE f.task_id = resources.id)
WHERE resource_type = 'Task';
UPDATE resources SET owner_ods =
    (SELECT f.practice_ods_code FROM outcome_measures o JOIN referrals f ON f.id = o.referral_id
     WHERE o.id = resources.id)
WHERE resource_type = 'Observation';
-- Anything else arrived with a referral (a transaction's or message's Patient and
-- other entries): the practice of the referral first written by the same request.
CREATE INDEX tmp_versions_by_request ON resource_versions (request_id);
UPDATE resources SET owner_ods =
    (SELECT f.practice_ods_code
     FROM resource_versions v
     JOIN resource_versions sv
       ON sv.resource_type = 'ServiceRequest' AND sv.version_id = 1 AND sv.request_id = v.request_id
     JOIN referrals f ON f.id = sv.id
     WHERE v.resource_type = resources.resource_type AND v.id = resources.id AND v.version_id = 1
     LIMIT 1)
WHERE owner_ods IS NULL;
DROP INDEX tmp_versions_by_request;

-- Search and paging within one practice's resources of a type.
CREATE INDEX resources_by_owner ON resources (resource_type, owner_ods, last_updated, id);

-- An X-Request-ID belongs to the sender that used it: the same id from two senders
-- is two requests, and a replayed answer goes only to the sender that earned it.
-- Rows from before have no sender and are never replayed again.
CREATE TABLE message_requests_by_sender (
    sender      TEXT    NOT NULL,
    request_id  TEXT    NOT NULL,
    body        BLOB    NOT NULL,
    status      INTEGER NOT NULL,
    response    TEXT    NOT NULL,
    received_at TEXT    NOT NULL,
    PRIMARY KEY (sender, request_id)
);
INSERT INTO message_requests_by_sender (sender, request_id, body, status, response, received_at)
    SELECT '', request_id, body, status, response, received_at FROM message_requests;
DROP TABLE message_requests;
ALTER TABLE message_requests_by_sender RENAME TO message_requests;
