-- `search_tokens_by_system` gains the code as its last column, so that a search by
-- `system|code` probes exactly whichever token index the planner takes.
--
-- Found under load on a new database: before PostgreSQL's first ANALYZE of
-- search_tokens (autovacuum's, up to a minute and 10 % of the rows away, and again
-- after a restore, which brings no statistics), the planner estimates one row for
-- either index and takes the narrower, this one, for a `system|code` search, reading
-- every token of the system and filtering on the code: each referral's identifier
-- lookup in a transaction Bundle read all the referrals' identifier tokens before it
-- (8.2 million index entries read for 2,750 Bundles). With the code in it, the same
-- choice is a probe. A `system|` search reads it by its first three columns as before.
-- SQLite's planner prefers the index that uses more of the search's equalities, so
-- its twin is unchanged.
DROP INDEX IF EXISTS search_tokens_by_system;
CREATE INDEX search_tokens_by_system ON search_tokens (resource_type, param, system, code)
    WHERE system IS NOT NULL;
