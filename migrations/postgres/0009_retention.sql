-- PostgreSQL twin of migrations/sqlite/0009_retention.sql: retention, purge and erasure.
-- An audit row may say what a purge or an erasure removed: kind and count, a reason code,
-- never the content removed (`AuditRecord::detail`).
ALTER TABLE audit_events ADD COLUMN detail TEXT;

-- The raw-body purge finds the bodies past retention without reading every version.
CREATE INDEX resource_versions_received_by_time
    ON resource_versions (last_updated) WHERE received IS NOT NULL;
CREATE INDEX referral_submissions_by_time ON referral_submissions (received_at);
CREATE INDEX message_requests_by_time ON message_requests (received_at);
-- The delivered-outbox purge.
CREATE INDEX outbox_delivered_by_time ON outbox (delivered_at) WHERE state = 'delivered';
-- Erasure keeps a resource another referral still refers to (a shared Patient or
-- practice): found by the reference's target.
CREATE INDEX search_references_by_target ON search_references (target_id, target_type);
