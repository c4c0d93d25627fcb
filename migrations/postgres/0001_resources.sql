-- PostgreSQL twin of migrations/sqlite/0001_resources.sql: the same tables,
-- columns and types the shared SQL in src/store/sql/ reads (integers are
-- BIGINT, so both backends decode them as i64; instants stay ISO-8601 TEXT).
CREATE TABLE resources (
    resource_type   TEXT    NOT NULL,
    id              TEXT    NOT NULL,
    current_version BIGINT  NOT NULL,
    deleted         BIGINT  NOT NULL DEFAULT 0,
    last_updated    TEXT    NOT NULL,
    PRIMARY KEY (resource_type, id)
);
CREATE TABLE resource_versions (
    resource_type TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    version_id    BIGINT  NOT NULL,
    last_updated  TEXT    NOT NULL,
    operation     TEXT    NOT NULL,
    resource      TEXT,
    received      BYTEA,
    request_id    TEXT,
    PRIMARY KEY (resource_type, id, version_id),
    FOREIGN KEY (resource_type, id) REFERENCES resources (resource_type, id)
);
CREATE INDEX resources_by_last_updated ON resources (resource_type, last_updated);
