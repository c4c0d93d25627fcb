-- PostgreSQL twin of migrations/sqlite/0006_practice_ownership.sql: which
-- practice owns each resource (`owner_ods`, set at its first write, never
-- changed), and X-Request-IDs kept per sender.

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

CREATE INDEX resources_by_owner ON resources (resource_type, owner_ods, last_updated, id);

-- An X-Request-ID belongs to the sender that used it.
ALTER TABLE message_requests ADD COLUMN sender TEXT NOT NULL DEFAULT '';
ALTER TABLE message_requests DROP CONSTRAINT message_requests_pkey;
ALTER TABLE message_requests ADD PRIMARY KEY (sender, request_id);
ALTER TABLE message_requests ALTER COLUMN sender DROP DEFAULT;
