-- PostgreSQL twin of migrations/sqlite/0017_fewer_index_entries.sql: the same indexes
-- go, for the same reasons (each was written by every create and is read by no query
-- another index does not serve as well); every entry is WAL and a page dirtied on
-- PostgreSQL too.
--
-- `outbox_by_state`: `outbox_due (state, destination_ods, seq)` leads with the state.
DROP INDEX IF EXISTS outbox_by_state;
-- `referral_reasons_by_code`: no query filters reasons by system.
DROP INDEX IF EXISTS referral_reasons_by_code;
-- `search_references_by_target`: erasure probes `search_references_by_target_id`.
DROP INDEX IF EXISTS search_references_by_target;
-- `search_tokens_by_system` keeps only tokens with a system: `system|` is the only
-- search that reads it, and never matches a token without one.
DROP INDEX IF EXISTS search_tokens_by_system;
CREATE INDEX search_tokens_by_system ON search_tokens (resource_type, param, system)
    WHERE system IS NOT NULL;
-- `referrals_by_identifier_value`: the unique index now leads with the value.
DROP INDEX IF EXISTS referrals_by_identifier_value;
DROP INDEX IF EXISTS referrals_by_identifier;
CREATE UNIQUE INDEX referrals_by_identifier
    ON referrals (identifier_value, identifier_system, COALESCE(practice_ods_code, ''));
-- The audit agent indexes keep only the rows that name that kind of agent.
DROP INDEX IF EXISTS audit_events_by_client;
CREATE INDEX audit_events_by_client ON audit_events (client_id, recorded_at)
    WHERE client_id IS NOT NULL;
DROP INDEX IF EXISTS audit_events_by_staff;
CREATE INDEX audit_events_by_staff ON audit_events (staff_username, recorded_at)
    WHERE staff_username IS NOT NULL;
DROP INDEX IF EXISTS audit_events_by_proxy;
CREATE INDEX audit_events_by_proxy ON audit_events (proxy_id, recorded_at)
    WHERE proxy_id IS NOT NULL;
