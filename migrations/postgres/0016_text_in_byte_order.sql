-- Every text column compares and sorts byte by byte (COLLATE "C"), whatever the
-- database's default collation: ids, identifier values, tokens and references, the
-- fixed-width instants, and the keyset cursors built from them then order the same on
-- PostgreSQL as on SQLite (which compares text as bytes), and a database created with
-- a linguistic default (managed PostgreSQL's en_US.UTF-8, which ignores hyphens and
-- puts `a` before `B`) can neither skip nor repeat a resource in a GP's pull.
--
-- All of them, not only the keys: PostgreSQL refuses to compare two columns of
-- different collations (`referrals.id = resources.id`), so one collation throughout.
-- Changing a column's collation rebuilds the indexes on it; the rows are not rewritten.
DO $$
DECLARE
    col record;
BEGIN
    FOR col IN
        SELECT c.table_name, c.column_name
        FROM information_schema.columns c
        JOIN information_schema.tables t
          ON t.table_schema = c.table_schema AND t.table_name = c.table_name
        WHERE c.table_schema = current_schema()
          AND t.table_type = 'BASE TABLE'
          AND c.data_type = 'text'
          AND c.table_name <> '_sqlx_migrations'
          AND c.collation_name IS DISTINCT FROM 'C'
        ORDER BY c.table_name, c.ordinal_position
    LOOP
        EXECUTE format('ALTER TABLE %I ALTER COLUMN %I TYPE text COLLATE "C"',
                       col.table_name, col.column_name);
    END LOOP;
END
$$;
