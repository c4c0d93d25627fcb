-- The search index: the values each current, non-deleted resource has for
-- each search parameter of `src/search/params.rs`, one row per value,
-- rewritten with the resource in the same transaction (`store::search::reindex`).
-- `_id` and `_lastUpdated` need no rows: they are columns of `resources`.
--
-- Dates are inclusive ranges of instants in fixed-width UTC text
-- (2026-11-20T00:00:00.000Z), like resources.last_updated, so comparisons
-- are plain text comparisons in any dialect.

CREATE TABLE search_tokens (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    -- NULL for a code without a system (a `code` primitive)
    system        TEXT,
    code          TEXT NOT NULL,
    FOREIGN KEY (resource_type, id) REFERENCES resources (resource_type, id)
);
-- `code` and `system|code` searches
CREATE INDEX search_tokens_by_code ON search_tokens (resource_type, param, code, system);
-- `system|` searches
CREATE INDEX search_tokens_by_system ON search_tokens (resource_type, param, system);
-- reindexing, and joining back to a resource
CREATE INDEX search_tokens_by_resource ON search_tokens (resource_type, id);

CREATE TABLE search_references (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    -- `Patient/123` for a relative reference, the URL for an absolute one
    reference     TEXT NOT NULL,
    -- the target's type and id when the reference names them
    target_type   TEXT,
    target_id     TEXT,
    FOREIGN KEY (resource_type, id) REFERENCES resources (resource_type, id)
);
-- `Type/id` and URL searches
CREATE INDEX search_references_by_reference ON search_references (resource_type, param, reference);
-- plain `id` searches
CREATE INDEX search_references_by_target_id ON search_references (resource_type, param, target_id);
CREATE INDEX search_references_by_resource ON search_references (resource_type, id);

CREATE TABLE search_dates (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    low           TEXT NOT NULL,
    high          TEXT NOT NULL,
    FOREIGN KEY (resource_type, id) REFERENCES resources (resource_type, id)
);
CREATE INDEX search_dates_by_low ON search_dates (resource_type, param, low);
CREATE INDEX search_dates_by_high ON search_dates (resource_type, param, high);
CREATE INDEX search_dates_by_resource ON search_dates (resource_type, id);

-- Keyset paging on (last_updated, id) within a type, either direction.
CREATE INDEX resources_by_type_updated_id ON resources (resource_type, last_updated, id);

-- Which version of the parameter table the index was built with; when the
-- code's `store::search::INDEX_VERSION` differs, the store rebuilds the whole
-- index at start-up (resources written before this migration included).
CREATE TABLE search_index_state (
    singleton     INTEGER NOT NULL PRIMARY KEY CHECK (singleton = 1),
    index_version INTEGER NOT NULL
);
INSERT INTO search_index_state (singleton, index_version) VALUES (1, 0);
