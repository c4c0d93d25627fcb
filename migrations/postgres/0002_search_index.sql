-- PostgreSQL twin of migrations/sqlite/0002_search_index.sql.
CREATE TABLE search_tokens (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    system        TEXT,
    code          TEXT NOT NULL,
    FOREIGN KEY (resource_type, id) REFERENCES resources (resource_type, id)
);
CREATE INDEX search_tokens_by_code ON search_tokens (resource_type, param, code, system);
CREATE INDEX search_tokens_by_system ON search_tokens (resource_type, param, system);
CREATE INDEX search_tokens_by_resource ON search_tokens (resource_type, id);
CREATE TABLE search_references (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    reference     TEXT NOT NULL,
    target_type   TEXT,
    target_id     TEXT,
    FOREIGN KEY (resource_type, id) REFERENCES resources (resource_type, id)
);
CREATE INDEX search_references_by_reference ON search_references (resource_type, param, reference);
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
CREATE INDEX resources_by_type_updated_id ON resources (resource_type, last_updated, id);
CREATE TABLE search_index_state (
    singleton     BIGINT NOT NULL PRIMARY KEY CHECK (singleton = 1),
    index_version BIGINT NOT NULL
);
INSERT INTO search_index_state (singleton, index_version) VALUES (1, 0);
