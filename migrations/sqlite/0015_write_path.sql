-- The write path (issue 20 §3): every index is a page a new resource's insert dirties.
-- `resources_by_last_updated (resource_type, last_updated)` is a prefix of
-- `resources_by_type_updated_id (resource_type, last_updated, id)` (migration 0002),
-- which serves every query the shorter one did, so it was written on every create and
-- update for nothing.
DROP INDEX IF EXISTS resources_by_last_updated;
