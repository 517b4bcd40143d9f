-- The durable change log: every change to a tracked table, in commit order.
--
-- Positions come from a deferred constraint trigger that runs at commit time
-- under a transaction-level advisory lock, so a transaction draws its position
-- only after every earlier-positioned transaction is visible. Sequence values
-- drawn at insert time would not follow commit order.

CREATE SCHEMA IF NOT EXISTS tidewire;

-- Tables whose changes are captured; filled by tidewire.track().
CREATE TABLE tidewire.tracked (
    rel regclass PRIMARY KEY,
    -- Qualified name as clients see it, e.g. public.items.
    name text NOT NULL UNIQUE,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    -- Hub topic the changes are published on.
    topic text NOT NULL,
    tracked_at timestamptz NOT NULL DEFAULT now()
);

CREATE SEQUENCE tidewire.commit_position;

-- One row per transaction that changed a tracked table. The row is inserted
-- with a NULL position by the first captured statement; the commit trigger
-- fills position and committed_at.
CREATE TABLE tidewire.commits (
    xid xid8 PRIMARY KEY,
    position bigint UNIQUE,
    committed_at timestamptz
);

-- One row per changed row. Within a transaction, id gives statement order.
CREATE TABLE tidewire.changes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    topic text NOT NULL,
    table_name text NOT NULL,
    op text NOT NULL CHECK (op IN ('INSERT', 'UPDATE', 'DELETE')),
    new_row jsonb,
    old_row jsonb
);
CREATE INDEX changes_xid ON tidewire.changes (xid, id);

-- Runs once per transaction, at commit: draw the position under a lock held
-- until the commit is visible, then wake the listeners. The payload is the
-- position alone, so no row size can make the NOTIFY (and the write) fail.
CREATE FUNCTION tidewire.on_commit() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    pos bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(7355608, 1);
    pos := nextval('tidewire.commit_position');
    UPDATE tidewire.commits
       SET position = pos, committed_at = clock_timestamp()
     WHERE xid = NEW.xid;
    PERFORM pg_notify('tidewire', pos::text);
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER commit_position
    AFTER INSERT ON tidewire.commits
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION tidewire.on_commit();

-- Statement-level capture: one INSERT into the log per statement, whatever
-- the number of rows. Arguments: topic, qualified table name.
CREATE FUNCTION tidewire.capture() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO tidewire.changes (topic, table_name, op, new_row)
        SELECT TG_ARGV[0], TG_ARGV[1], 'INSERT', to_jsonb(r) FROM new_rows r;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO tidewire.changes (topic, table_name, op, old_row)
        SELECT TG_ARGV[0], TG_ARGV[1], 'DELETE', to_jsonb(r) FROM old_rows r;
    ELSE
        -- Both transition tables hold the rows in the order they were
        -- updated, so their ordinals pair each new row with its old row.
        INSERT INTO tidewire.changes (topic, table_name, op, new_row, old_row)
        SELECT TG_ARGV[0], TG_ARGV[1], 'UPDATE', n.r, o.r
          FROM (SELECT row_number() OVER () AS i, to_jsonb(r) AS r FROM new_rows r) n
          JOIN (SELECT row_number() OVER () AS i, to_jsonb(r) AS r FROM old_rows r) o USING (i)
         ORDER BY i;
    END IF;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        INSERT INTO tidewire.commits (xid) VALUES (pg_current_xact_id())
        ON CONFLICT (xid) DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;

-- Start capturing changes of a table. Returns the name clients use in
-- changes(table:). Calling it again re-installs the triggers.
CREATE FUNCTION tidewire.track(tbl regclass, topic text DEFAULT NULL) RETURNS text
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
    INSERT INTO tidewire.tracked (rel, name, schema_name, table_name, topic)
    VALUES (tbl, qname, sch, rel, t);
    RETURN qname;
END
$$;

-- Stop capturing changes of a table. Returns whether it was tracked.
CREATE FUNCTION tidewire.untrack(tbl regclass) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    trigger_name name;
BEGIN
    FOR trigger_name IN
        SELECT tgname FROM pg_trigger
         WHERE tgrelid = tbl AND tgname LIKE 'tidewire\_capture\_%'
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', trigger_name, tbl);
    END LOOP;
    DELETE FROM tidewire.tracked WHERE rel = tbl;
    RETURN FOUND;
END
$$;
