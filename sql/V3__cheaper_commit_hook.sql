-- A cheaper commit hook: one INSERT per transaction instead of a marker
-- INSERT ... ON CONFLICT per statement plus an UPDATE at commit.
--
-- The deferred constraint trigger now sits on tidewire.changes; its WHEN
-- condition (evaluated at once, not deferred) lets only the first change of
-- a transaction queue it. The claim is a transaction-local setting, which a
-- rolled-back subtransaction reverts together with the queued event.

-- True the first time it is called in a transaction.
CREATE FUNCTION tidewire.claim_commit_hook() RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    xid text := pg_current_xact_id()::text;
BEGIN
    IF current_setting('tidewire.hooked_xid', true) IS NOT DISTINCT FROM xid THEN
        RETURN false;
    END IF;
    PERFORM set_config('tidewire.hooked_xid', xid, true);
    RETURN true;
END
$$;

-- At commit: draw the position under a lock held until the commit is
-- visible, record the commit, wake the listeners (position only).
CREATE OR REPLACE FUNCTION tidewire.on_commit() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    pos bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(7355608, 1);
    pos := nextval('tidewire.commit_position');
    INSERT INTO tidewire.commits (xid, position, committed_at)
    VALUES (pg_current_xact_id(), pos, clock_timestamp());
    PERFORM pg_notify('tidewire', pos::text);
    RETURN NULL;
END
$$;

DROP TRIGGER commit_position ON tidewire.commits;

CREATE CONSTRAINT TRIGGER commit_position
    AFTER INSERT ON tidewire.changes
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (tidewire.claim_commit_hook())
    EXECUTE FUNCTION tidewire.on_commit();

CREATE OR REPLACE FUNCTION tidewire.capture() RETURNS trigger
LANGUAGE plpgsql AS $$
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
    RETURN NULL;
END
$$;
