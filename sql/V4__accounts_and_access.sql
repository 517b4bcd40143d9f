-- Accounts, sessions, and who may read a tracked table.

CREATE TABLE tidewire.users (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email text NOT NULL UNIQUE,
    -- argon2id PHC string.
    password_hash text NOT NULL,
    role text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per signed-in token family; revoking it ends its streams on
-- every node (tidewire_revoked notification).
CREATE TABLE tidewire.sessions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid NOT NULL REFERENCES tidewire.users ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE INDEX sessions_user ON tidewire.sessions (user_id);

-- changes(table) is for admins unless the table is public, or has an owner
-- column whose value is the reading user's id.
ALTER TABLE tidewire.tracked
    ADD COLUMN public boolean NOT NULL DEFAULT false,
    ADD COLUMN owner_column text;

DROP FUNCTION tidewire.track(regclass, text);

CREATE FUNCTION tidewire.track(
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
    IF owner_column IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_attribute
         WHERE attrelid = tbl AND attname = owner_column AND attnum > 0 AND NOT attisdropped
    ) THEN
        RAISE EXCEPTION 'table % has no column %', tbl, owner_column;
    END IF;
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
    INSERT INTO tidewire.tracked (rel, name, schema_name, table_name, topic, public, owner_column)
    VALUES (tbl, qname, sch, rel, t, public, owner_column);
    RETURN qname;
END
$$;
