-- A tracked table that is dropped no longer blocks tracking a new table of
-- the same name, and is no longer listed: track() forgets the entries of
-- dropped tables, and the server reads only entries whose table exists.

DELETE FROM tidewire.tracked tr
 WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = tr.rel);

CREATE OR REPLACE FUNCTION tidewire.track(
    tbl regclass,
    topic text DEFAULT NULL,
    public boolean DEFAULT false,
    owner_column text DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    sch text;
    rel text;
    qname text;
    t text;
BEGIN
    SELECT n.nspname, c.relname INTO sch, rel
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = tbl;
    qname := format('%I.%I', sch, rel);
    IF NOT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = tbl AND indisprimary) THEN
        RAISE EXCEPTION 'tidewire.track: table % has no primary key; changes are paired by it', qname
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('Add one, e.g. ALTER TABLE %s ADD PRIMARY KEY (id).', qname);
    END IF;
    IF owner_column IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_attribute
         WHERE attrelid = tbl AND attname = owner_column AND attnum > 0 AND NOT attisdropped
    ) THEN
        RAISE EXCEPTION 'table % has no column %', tbl, owner_column;
    END IF;
    t := coalesce(topic, qname);
    PERFORM tidewire.untrack(tbl);
    -- Tables dropped since they were tracked leave their entry behind
    -- (a regclass does not follow a DROP): forget them, or a table
    -- re-created under the same name could never be tracked again.
    DELETE FROM tidewire.tracked tr
     WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = tr.rel);
    EXECUTE format('CREATE TRIGGER tidewire_capture_insert AFTER INSERT ON %s '
                   'REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT '
                   'EXECUTE FUNCTION tidewire.capture(%L, %L)', tbl, t, qname);
    EXECUTE format('CREATE TRIGGER tidewire_capture_update AFTER UPDATE ON %s '
                   'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT '
                   'EXECUTE FUNCTION tidewire.capture(%L, %L)', tbl, t, qname);
    EXECUTE format('CREATE TRIGGER tidewire_capture_delete AFTER DELETE ON %s '
                   'REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT '
                   'EXECUTE FUNCTION tidewire.capture(%L, %L)', tbl, t, qname);
    INSERT INTO tidewire.tracked (rel, name, schema_name, table_name, topic, public, owner_column)
    VALUES (tbl, qname, sch, rel, t, public, owner_column);
    RETURN qname;
END
$$;
