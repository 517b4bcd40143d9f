-- An UPDATE's old and new rows are paired by primary key, no longer by their
-- positions in the two transition tables. Positions are not a promise
-- PostgreSQL makes, and they do go wrong: when a BEFORE INSERT trigger on the
-- destination partition drops a row that an UPDATE moves between partitions,
-- the old-row table holds the row and the new-row table does not, so every
-- later pair was off by one and the last change was lost.
--
-- The advisory-lock key that orders commits is also named here, once.

-- The key of the transaction-level advisory lock under which a commit draws
-- its position (pg_advisory_xact_lock(int, int); pg_locks shows it as
-- classid / objid with objsubid 2). Everything that takes the commit-order
-- lock reads it from here.
CREATE OR REPLACE FUNCTION tidewire.commit_lock_key(OUT classid int, OUT objid int)
LANGUAGE sql IMMUTABLE AS $$ SELECT 7355608, 1 $$;

-- At commit: draw the position under a lock held until the commit is
-- visible, record the commit, wake the listeners (position only).
CREATE OR REPLACE FUNCTION tidewire.on_commit() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    pos bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(k.classid, k.objid) FROM tidewire.commit_lock_key() k;
    pos := nextval('tidewire.commit_position');
    INSERT INTO tidewire.commits (xid, position, committed_at)
    VALUES (pg_current_xact_id(), pos, clock_timestamp());
    PERFORM pg_notify('tidewire', pos::text);
    RETURN NULL;
END
$$;

-- Statement-level capture: one INSERT into the log per statement, whatever
-- the number of rows. Arguments: topic, qualified table name.
--
-- UPDATE pairing. A row's key is its to_jsonb() minus the non-key columns,
-- read from the catalog at each statement, so a renamed or re-keyed table
-- pairs by the key it has now (a join condition built by track() would break
-- the table's writes after ALTER TABLE ... RENAME COLUMN). The query is static,
-- so its plan is cached, and it joins on jsonb, which hashes and sorts.
-- jsonb equality is at least as strict as the key type's own `=` (for citext
-- or interval it is stricter): a key whose text changes arrives as DELETE +
-- INSERT, never as a wrong pair.
--
-- One command can update a row more than once (two cascading foreign keys to
-- rows the command changes), so a key may appear several times in each
-- table; its k-th old row pairs with its k-th new row. Old and new rows of
-- one key are captured together, update after update, so their order within
-- the key agrees. A key found only among the old rows is a DELETE, one only
-- among the new rows an INSERT (a key-changing update, or a row that moved
-- partitions and was dropped on the way). Output follows the order of the
-- updates, a DELETE just before the INSERT of the same update.
--
-- A table without a primary key (tracked before V7, or its key dropped
-- since) has nothing to pair by: each updated row is a DELETE + INSERT.
CREATE OR REPLACE FUNCTION tidewire.capture() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    key_attnums int2[];
    other_columns text[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO tidewire.changes (topic, table_name, op, new_row)
        SELECT TG_ARGV[0], TG_ARGV[1], 'INSERT', to_jsonb(r) FROM new_rows r;
        RETURN NULL;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO tidewire.changes (topic, table_name, op, old_row)
        SELECT TG_ARGV[0], TG_ARGV[1], 'DELETE', to_jsonb(r) FROM old_rows r;
        RETURN NULL;
    END IF;

    SELECT i.indkey::int2[] INTO key_attnums
      FROM pg_index i
     WHERE i.indrelid = TG_RELID AND i.indisprimary;
    IF key_attnums IS NULL THEN
        INSERT INTO tidewire.changes (topic, table_name, op, new_row, old_row)
        SELECT TG_ARGV[0], TG_ARGV[1], c.op, c.new_row, c.old_row
          FROM (SELECT row_number() OVER () AS i, 0 AS half, 'DELETE' AS op,
                       NULL::jsonb AS new_row, to_jsonb(r) AS old_row
                  FROM old_rows r
                UNION ALL
                SELECT row_number() OVER (), 1, 'INSERT', to_jsonb(r), NULL
                  FROM new_rows r) c
         ORDER BY c.i, c.half;
        RETURN NULL;
    END IF;
    SELECT coalesce(array_agg(a.attname::text), '{}') INTO other_columns
      FROM pg_attribute a
     WHERE a.attrelid = TG_RELID AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attnum <> ALL (key_attnums);

    -- The window in each innermost subquery keeps it from being flattened,
    -- so to_jsonb() runs once per row.
    INSERT INTO tidewire.changes (topic, table_name, op, new_row, old_row)
    SELECT TG_ARGV[0], TG_ARGV[1],
           CASE WHEN o.r IS NULL THEN 'INSERT' WHEN n.r IS NULL THEN 'DELETE' ELSE 'UPDATE' END,
           n.r, o.r
      FROM (SELECT s.r, s.i, s.k, row_number() OVER (PARTITION BY s.k ORDER BY s.i) AS nth
              FROM (SELECT t.r, t.i, t.r - other_columns AS k
                      FROM (SELECT to_jsonb(r) AS r, row_number() OVER () AS i FROM new_rows r) t) s) n
      FULL JOIN
           (SELECT s.r, s.i, s.k, row_number() OVER (PARTITION BY s.k ORDER BY s.i) AS nth
              FROM (SELECT t.r, t.i, t.r - other_columns AS k
                      FROM (SELECT to_jsonb(r) AS r, row_number() OVER () AS i FROM old_rows r) t) s) o
        ON n.k = o.k AND n.nth = o.nth
     ORDER BY coalesce(n.i, o.i), n.i NULLS FIRST;
    RETURN NULL;
END
$$;

-- Start capturing changes of a table. Returns the name clients use in
-- changes(table:). Calling it again re-installs the triggers. The table must
-- have a primary key: capture() pairs an UPDATE's old and new rows by it.
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
