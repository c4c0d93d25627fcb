-- The columns that hold whole resources and request bodies (each larger than the 2 kB
-- at which PostgreSQL compresses a value) compress with LZ4 instead of the built-in
-- pglz: `pglz_compress` was 2.4 % of all CPU (PostgreSQL's and Sprig's) under new
-- referrals from two instances, for a compression ratio LZ4 nearly matches at a
-- fraction of the cost. Only values written from now on; older ones stay readable as
-- they are.
--
-- A server built without LZ4 (or older than PostgreSQL 14, which has no per-column
-- compression) keeps pglz: the change is skipped, not the migration failed.
DO $$
BEGIN
    ALTER TABLE resource_versions ALTER COLUMN resource SET COMPRESSION lz4;
    ALTER TABLE resource_versions ALTER COLUMN received SET COMPRESSION lz4;
    ALTER TABLE referral_submissions ALTER COLUMN body SET COMPRESSION lz4;
    ALTER TABLE referral_submissions ALTER COLUMN response SET COMPRESSION lz4;
    ALTER TABLE message_requests ALTER COLUMN body SET COMPRESSION lz4;
    ALTER TABLE message_requests ALTER COLUMN response SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR syntax_error THEN
    RAISE NOTICE 'LZ4 compression is not available on this server: pglz is kept (%)', SQLERRM;
END
$$;
