-- Every version of every FHIR resource Sprig holds.
--
-- `resources` has one row per logical resource pointing at its current
-- version; `resource_versions` keeps every version (FHIR history) with the
-- stored JSON (the resource as received, plus the id and meta the server
-- assigned) and the request body exactly as it arrived, for audit.
-- Timestamps are FHIR instants in UTC, fixed width, so text order is time order.

CREATE TABLE resources (
    resource_type   TEXT    NOT NULL,
    id              TEXT    NOT NULL,
    current_version INTEGER NOT NULL,
    deleted         INTEGER NOT NULL DEFAULT 0,
    last_updated    TEXT    NOT NULL,
    PRIMARY KEY (resource_type, id)
);

CREATE TABLE resource_versions (
    resource_type TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    version_id    INTEGER NOT NULL,
    last_updated  TEXT    NOT NULL,
    -- 'create', 'update' or 'delete'
    operation     TEXT    NOT NULL,
    -- NULL for a deletion marker
    resource      TEXT,
    -- the HTTP request body as received, byte for byte (NULL for deletions)
    received      BLOB,
    request_id    TEXT,
    PRIMARY KEY (resource_type, id, version_id),
    FOREIGN KEY (resource_type, id) REFERENCES resources (resource_type, id)
);

CREATE INDEX resources_by_last_updated ON resources (resource_type, last_updated);
