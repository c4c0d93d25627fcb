-- The write path (issue 20 §3): a new referral held the single writer for its index
-- entries more than for its rows. Each index below was written by every create (or
-- every outbox or audit row) and is either read by no query, or covered by another
-- index every query that read it can use instead.
--
-- `outbox_by_state (state, seq)`: every query naming a state either names the
-- destination too or reads one row by `seq`; `outbox_due (state, destination_ods, seq)`
-- leads with the state, so it serves each (the delivered purge has its own partial
-- index). Each outbox row also moved in it on every change of state.
DROP INDEX IF EXISTS outbox_by_state;
-- `referral_reasons_by_code (system, code)`: no query filters reasons by system (the
-- console's reason filter is `referral_id = … AND code = …`, the primary key's probe).
DROP INDEX IF EXISTS referral_reasons_by_code;
-- `search_references_by_target (target_id, target_type)` served only erasure's "who
-- names this resource"; it now probes `search_references_by_target_id (resource_type,
-- param, target_id)` once per type and reference parameter
-- (`store/sql/retention.rs`, `referrers_sql`). Every reference row of every write paid
-- an entry in it.
DROP INDEX IF EXISTS search_references_by_target;
-- `search_tokens_by_system (resource_type, param, system)` serves only `system|`
-- (`x.system IN (…)`), which never matches a token without a system; `|code`
-- (`x.system IS NULL AND x.code IN (…)`) reads `search_tokens_by_code`. A `code`
-- element (every status) has no system, so its rows need no entry here.
DROP INDEX IF EXISTS search_tokens_by_system;
CREATE INDEX search_tokens_by_system ON search_tokens (resource_type, param, system)
    WHERE system IS NOT NULL;
-- `referrals_by_identifier_value (identifier_value)` (0014) served the console's lookup
-- by value; the unique index that keeps one referral per identifier per practice now
-- leads with the value, so one index serves both (uniqueness is the same set of
-- columns, whatever their order).
DROP INDEX IF EXISTS referrals_by_identifier_value;
DROP INDEX IF EXISTS referrals_by_identifier;
CREATE UNIQUE INDEX referrals_by_identifier
    ON referrals (identifier_value, identifier_system, COALESCE(practice_ods_code, ''));
-- The audit log's agent filter is `client_id = $1 OR staff_username = $1 OR
-- proxy_id = $1`, each term read through its own index; a row names a client, or a
-- member of staff, and rarely a proxy, so each index keeps only the rows that name one
-- (`col = $1` implies `col IS NOT NULL`, so the planner still uses them). An API
-- write's audit row then writes one agent entry, not three.
DROP INDEX IF EXISTS audit_events_by_client;
CREATE INDEX audit_events_by_client ON audit_events (client_id, recorded_at)
    WHERE client_id IS NOT NULL;
DROP INDEX IF EXISTS audit_events_by_staff;
CREATE INDEX audit_events_by_staff ON audit_events (staff_username, recorded_at)
    WHERE staff_username IS NOT NULL;
DROP INDEX IF EXISTS audit_events_by_proxy;
CREATE INDEX audit_events_by_proxy ON audit_events (proxy_id, recorded_at)
    WHERE proxy_id IS NOT NULL;
