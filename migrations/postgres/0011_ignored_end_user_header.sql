-- Issue 17: `NHSD-End-User-Organisation` is honoured only from a trusted proxy. From
-- anyone else it is ignored, and the audit row says it was sent (1) so a caller trying
-- to act for another organisation leaves a trace. Rows from before say 0. (An integer,
-- as the other flags, so the same SQL reads it on both backends.)
ALTER TABLE audit_events ADD COLUMN ignored_end_user_header BIGINT NOT NULL DEFAULT 0;
