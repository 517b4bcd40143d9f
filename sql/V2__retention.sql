-- Retention: how far the change log has been pruned. A cursor at or after
-- `floor` can still resume; one before it gets CURSOR_EXPIRED. The pruner
-- moves the floor and deletes in one transaction, so a reader that sees the
-- floor in the same statement as its rows never misses a silent gap.
CREATE TABLE tidewire.retention (
    single boolean PRIMARY KEY DEFAULT true CHECK (single),
    -- Last pruned commit position and its newest change id; 0/0 = nothing pruned.
    floor_position bigint NOT NULL DEFAULT 0,
    floor_change bigint NOT NULL DEFAULT 0,
    pruned_at timestamptz
);
INSERT INTO tidewire.retention DEFAULT VALUES;

CREATE INDEX commits_committed_at ON tidewire.commits (committed_at);

-- Deletes up to `max_commits` of the oldest commits that are older than
-- `keep_seconds` or beyond the newest `keep_commits`, with their changes.
-- Returns the number of commits deleted; call again while it returns
-- max_commits.
CREATE FUNCTION tidewire.prune(keep_seconds double precision, keep_commits bigint, max_commits int)
RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    newest bigint;
    cutoff bigint;
    last_change bigint;
    deleted int;
BEGIN
    SELECT max(position) INTO newest FROM tidewire.commits;
    IF newest IS NULL THEN
        RETURN 0;
    END IF;
    -- The newest commit that may go: past the count or the age limit.
    SELECT max(position) INTO cutoff
      FROM (SELECT position FROM tidewire.commits
             WHERE position IS NOT NULL
               AND (position <= newest - keep_commits OR committed_at < now() - make_interval(secs => keep_seconds))
             ORDER BY position
             LIMIT max_commits) oldest;
    IF cutoff IS NULL THEN
        RETURN 0;
    END IF;
    SELECT coalesce(max(ch.id), 0) INTO last_change
      FROM tidewire.commits c JOIN tidewire.changes ch ON ch.xid = c.xid
     WHERE c.position = cutoff;
    UPDATE tidewire.retention
       SET floor_position = cutoff, floor_change = last_change, pruned_at = now();
    DELETE FROM tidewire.changes ch USING tidewire.commits c
     WHERE ch.xid = c.xid AND c.position <= cutoff;
    DELETE FROM tidewire.commits WHERE position <= cutoff;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;
