-- The tidewire schema as the migrations in sql/ leave it: tables, indexes,
-- functions and triggers, no rows. Generated: do not edit, add a migration.
-- A test fails when this file is stale; regenerate it with
--   TIDEWIRE_BLESS=1 cargo test --test sql_schema
-- The key of the commit-order advisory lock is tidewire.commit_lock_key().
-- refinery's own history table (refinery_schema_history) lives in the
-- public schema and is not part of this dump.
-- Dumped by pg_dump major version 15

--
-- Name: tidewire; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA tidewire;


--
-- Name: capture(); Type: FUNCTION; Schema: tidewire; Owner: -
--

CREATE FUNCTION tidewire.capture() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
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


--
-- Name: claim_commit_hook(); Type: FUNCTION; Schema: tidewire; Owner: -
--

CREATE FUNCTION tidewire.claim_commit_hook() RETURNS boolean
    LANGUAGE plpgsql
    AS $$
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


--
-- Name: commit_lock_key(); Type: FUNCTION; Schema: tidewire; Owner: -
--

CREATE FUNCTION tidewire.commit_lock_key(OUT classid integer, OUT objid integer) RETURNS record
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT 7355608, 1 $$;


--
-- Name: on_commit(); Type: FUNCTION; Schema: tidewire; Owner: -
--

CREATE FUNCTION tidewire.on_commit() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
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


--
-- Name: prune(double precision, bigint, integer); Type: FUNCTION; Schema: tidewire; Owner: -
--

CREATE FUNCTION tidewire.prune(keep_seconds double precision, keep_commits bigint, max_commits integer) RETURNS integer
    LANGUAGE plpgsql
    AS $$
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


--
-- Name: track(regclass, text, boolean, text); Type: FUNCTION; Schema: tidewire; Owner: -
--

CREATE FUNCTION tidewire.track(tbl regclass, topic text DEFAULT NULL::text, public boolean DEFAULT false, owner_column text DEFAULT NULL::text) RETURNS text
    LANGUAGE plpgsql
    AS $$
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


--
-- Name: untrack(regclass); Type: FUNCTION; Schema: tidewire; Owner: -
--

CREATE FUNCTION tidewire.untrack(tbl regclass) RETURNS boolean
    LANGUAGE plpgsql
    AS $$
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


SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: changes; Type: TABLE; Schema: tidewire; Owner: -
--

CREATE TABLE tidewire.changes (
    id bigint NOT NULL,
    xid xid8 DEFAULT pg_current_xact_id() NOT NULL,
    topic text NOT NULL,
    table_name text NOT NULL,
    op text NOT NULL,
    new_row jsonb,
    old_row jsonb,
    CONSTRAINT changes_op_check CHECK ((op = ANY (ARRAY['INSERT'::text, 'UPDATE'::text, 'DELETE'::text])))
);


--
-- Name: changes_id_seq; Type: SEQUENCE; Schema: tidewire; Owner: -
--

ALTER TABLE tidewire.changes ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME tidewire.changes_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: commit_position; Type: SEQUENCE; Schema: tidewire; Owner: -
--

CREATE SEQUENCE tidewire.commit_position
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: commits; Type: TABLE; Schema: tidewire; Owner: -
--

CREATE TABLE tidewire.commits (
    xid xid8 NOT NULL,
    "position" bigint,
    committed_at timestamp with time zone
);


--
-- Name: games; Type: TABLE; Schema: tidewire; Owner: -
--

CREATE TABLE tidewire.games (
    id bigint NOT NULL,
    player_one text NOT NULL,
    player_two text,
    board text DEFAULT repeat('.'::text, 42) NOT NULL,
    status text DEFAULT 'WAITING'::text NOT NULL,
    turn smallint,
    winner smallint,
    version integer DEFAULT 1 NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT games_board_check CHECK ((board ~ '^[.12]{42}$'::text)),
    CONSTRAINT games_playing_has_a_turn CHECK (((status = 'PLAYING'::text) = (turn IS NOT NULL))),
    CONSTRAINT games_status_check CHECK ((status = ANY (ARRAY['WAITING'::text, 'PLAYING'::text, 'WON'::text, 'DRAW'::text]))),
    CONSTRAINT games_turn_check CHECK ((turn = ANY (ARRAY[1, 2]))),
    CONSTRAINT games_two_players CHECK ((player_two <> player_one)),
    CONSTRAINT games_version_check CHECK ((version >= 1)),
    CONSTRAINT games_waiting_has_one_player CHECK (((status = 'WAITING'::text) = (player_two IS NULL))),
    CONSTRAINT games_winner_check CHECK ((winner = ANY (ARRAY[1, 2]))),
    CONSTRAINT games_won_has_a_winner CHECK (((status = 'WON'::text) = (winner IS NOT NULL)))
);


--
-- Name: games_id_seq; Type: SEQUENCE; Schema: tidewire; Owner: -
--

CREATE SEQUENCE tidewire.games_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: games_id_seq; Type: SEQUENCE OWNED BY; Schema: tidewire; Owner: -
--

ALTER SEQUENCE tidewire.games_id_seq OWNED BY tidewire.games.id;


--
-- Name: messages; Type: TABLE; Schema: tidewire; Owner: -
--

CREATE TABLE tidewire.messages (
    id bigint NOT NULL,
    room_id bigint NOT NULL,
    author_id text NOT NULL,
    body text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: messages_id_seq; Type: SEQUENCE; Schema: tidewire; Owner: -
--

CREATE SEQUENCE tidewire.messages_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: messages_id_seq; Type: SEQUENCE OWNED BY; Schema: tidewire; Owner: -
--

ALTER SEQUENCE tidewire.messages_id_seq OWNED BY tidewire.messages.id;


--
-- Name: metric_batches; Type: TABLE; Schema: tidewire; Owner: -
--

CREATE TABLE tidewire.metric_batches (
    id bigint NOT NULL,
    user_id text NOT NULL,
    rows bigint NOT NULL,
    names integer NOT NULL,
    received_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: metric_batches_id_seq; Type: SEQUENCE; Schema: tidewire; Owner: -
--

CREATE SEQUENCE tidewire.metric_batches_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: metric_batches_id_seq; Type: SEQUENCE OWNED BY; Schema: tidewire; Owner: -
--

ALTER SEQUENCE tidewire.metric_batches_id_seq OWNED BY tidewire.metric_batches.id;


--
-- Name: metrics; Type: TABLE; Schema: tidewire; Owner: -
--

CREATE TABLE tidewire.metrics (
    batch_id bigint NOT NULL,
    name text NOT NULL,
    value double precision NOT NULL,
    recorded_at timestamp with time zone NOT NULL
);


--
-- Name: notifications; Type: TABLE; Schema: tidewire; Owner: -
--

CREATE TABLE tidewire.notifications (
    id bigint NOT NULL,
    user_id text NOT NULL,
    title text NOT NULL,
    message text NOT NULL,
    read boolean DEFAULT false NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: notifications_id_seq; Type: SEQUENCE; Schema: tidewire; Owner: -
--

CREATE SEQUENCE tidewire.notifications_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: notifications_id_seq; Type: SEQUENCE OWNED BY; Schema: tidewire; Owner: -
--

ALTER SEQUENCE tidewire.notifications_id_seq OWNED BY tidewire.notifications.id;


--
-- Name: orders; Type: TABLE; Schema: tidewire; Owner: -
--

CREATE TABLE tidewire.orders (
    id bigint NOT NULL,
    user_id text NOT NULL,
    amount double precision NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT orders_amount_check CHECK ((amount > (0)::double precision))
);


--
-- Name: orders_id_seq; Type: SEQUENCE; Schema: tidewire; Owner: -
--

CREATE SEQUENCE tidewire.orders_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: orders_id_seq; Type: SEQUENCE OWNED BY; Schema: tidewire; Owner: -
--

ALTER SEQUENCE tidewire.orders_id_seq OWNED BY tidewire.orders.id;


--
-- Name: presence; Type: TABLE; Schema: tidewire; Owner: -
--

CREATE TABLE tidewire.presence (
    node uuid NOT NULL,
    users text[] NOT NULL,
    heartbeat timestamp with time zone NOT NULL
);


--
-- Name: retention; Type: TABLE; Schema: tidewire; Owner: -
--

CREATE TABLE tidewire.retention (
    single boolean DEFAULT true NOT NULL,
    floor_position bigint DEFAULT 0 NOT NULL,
    floor_change bigint DEFAULT 0 NOT NULL,
    pruned_at timestamp with time zone,
    CONSTRAINT retention_single_check CHECK (single)
);


--
-- Name: room_invites; Type: TABLE; Schema: tidewire; Owner: -
--

CREATE TABLE tidewire.room_invites (
    room_id bigint NOT NULL,
    user_id text NOT NULL,
    invited_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: room_members; Type: TABLE; Schema: tidewire; Owner: -
--

CREATE TABLE tidewire.room_members (
    room_id bigint NOT NULL,
    user_id text NOT NULL,
    joined_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: rooms; Type: TABLE; Schema: tidewire; Owner: -
--

CREATE TABLE tidewire.rooms (
    id bigint NOT NULL,
    name text NOT NULL,
    private boolean DEFAULT false NOT NULL,
    owner_id text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT rooms_name_check CHECK (((char_length(name) >= 1) AND (char_length(name) <= 100)))
);


--
-- Name: rooms_id_seq; Type: SEQUENCE; Schema: tidewire; Owner: -
--

CREATE SEQUENCE tidewire.rooms_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: rooms_id_seq; Type: SEQUENCE OWNED BY; Schema: tidewire; Owner: -
--

ALTER SEQUENCE tidewire.rooms_id_seq OWNED BY tidewire.rooms.id;


--
-- Name: sessions; Type: TABLE; Schema: tidewire; Owner: -
--

CREATE TABLE tidewire.sessions (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    user_id uuid NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    revoked_at timestamp with time zone
);


--
-- Name: stock_prices; Type: TABLE; Schema: tidewire; Owner: -
--

CREATE TABLE tidewire.stock_prices (
    id bigint NOT NULL,
    symbol text NOT NULL,
    value double precision NOT NULL,
    recorded_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: stock_prices_id_seq; Type: SEQUENCE; Schema: tidewire; Owner: -
--

CREATE SEQUENCE tidewire.stock_prices_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: stock_prices_id_seq; Type: SEQUENCE OWNED BY; Schema: tidewire; Owner: -
--

ALTER SEQUENCE tidewire.stock_prices_id_seq OWNED BY tidewire.stock_prices.id;


--
-- Name: tracked; Type: TABLE; Schema: tidewire; Owner: -
--

CREATE TABLE tidewire.tracked (
    rel regclass NOT NULL,
    name text NOT NULL,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    topic text NOT NULL,
    tracked_at timestamp with time zone DEFAULT now() NOT NULL,
    public boolean DEFAULT false NOT NULL,
    owner_column text
);


--
-- Name: upload_chunks; Type: TABLE; Schema: tidewire; Owner: -
--

CREATE TABLE tidewire.upload_chunks (
    upload_id uuid NOT NULL,
    sequence bigint NOT NULL,
    data bytea NOT NULL
);


--
-- Name: upload_progress; Type: TABLE; Schema: tidewire; Owner: -
--

CREATE TABLE tidewire.upload_progress (
    id bigint NOT NULL,
    upload_id uuid NOT NULL,
    owner_id text NOT NULL,
    chunks bigint NOT NULL,
    bytes bigint NOT NULL,
    status text NOT NULL,
    at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: upload_progress_id_seq; Type: SEQUENCE; Schema: tidewire; Owner: -
--

CREATE SEQUENCE tidewire.upload_progress_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: upload_progress_id_seq; Type: SEQUENCE OWNED BY; Schema: tidewire; Owner: -
--

ALTER SEQUENCE tidewire.upload_progress_id_seq OWNED BY tidewire.upload_progress.id;


--
-- Name: uploads; Type: TABLE; Schema: tidewire; Owner: -
--

CREATE TABLE tidewire.uploads (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    owner_id text NOT NULL,
    status text DEFAULT 'receiving'::text NOT NULL,
    bytes bigint DEFAULT 0 NOT NULL,
    chunks bigint DEFAULT 0 NOT NULL,
    sha256 text,
    error text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    finished_at timestamp with time zone,
    CONSTRAINT uploads_status_check CHECK ((status = ANY (ARRAY['receiving'::text, 'complete'::text, 'failed'::text])))
);


--
-- Name: users; Type: TABLE; Schema: tidewire; Owner: -
--

CREATE TABLE tidewire.users (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    email text NOT NULL,
    password_hash text NOT NULL,
    role text DEFAULT 'user'::text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT users_role_check CHECK ((role = ANY (ARRAY['user'::text, 'admin'::text])))
);


--
-- Name: games id; Type: DEFAULT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.games ALTER COLUMN id SET DEFAULT nextval('tidewire.games_id_seq'::regclass);


--
-- Name: messages id; Type: DEFAULT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.messages ALTER COLUMN id SET DEFAULT nextval('tidewire.messages_id_seq'::regclass);


--
-- Name: metric_batches id; Type: DEFAULT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.metric_batches ALTER COLUMN id SET DEFAULT nextval('tidewire.metric_batches_id_seq'::regclass);


--
-- Name: notifications id; Type: DEFAULT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.notifications ALTER COLUMN id SET DEFAULT nextval('tidewire.notifications_id_seq'::regclass);


--
-- Name: orders id; Type: DEFAULT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.orders ALTER COLUMN id SET DEFAULT nextval('tidewire.orders_id_seq'::regclass);


--
-- Name: rooms id; Type: DEFAULT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.rooms ALTER COLUMN id SET DEFAULT nextval('tidewire.rooms_id_seq'::regclass);


--
-- Name: stock_prices id; Type: DEFAULT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.stock_prices ALTER COLUMN id SET DEFAULT nextval('tidewire.stock_prices_id_seq'::regclass);


--
-- Name: upload_progress id; Type: DEFAULT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.upload_progress ALTER COLUMN id SET DEFAULT nextval('tidewire.upload_progress_id_seq'::regclass);


--
-- Name: changes changes_pkey; Type: CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.changes
    ADD CONSTRAINT changes_pkey PRIMARY KEY (id);


--
-- Name: commits commits_pkey; Type: CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.commits
    ADD CONSTRAINT commits_pkey PRIMARY KEY (xid);


--
-- Name: commits commits_position_key; Type: CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.commits
    ADD CONSTRAINT commits_position_key UNIQUE ("position");


--
-- Name: games games_pkey; Type: CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.games
    ADD CONSTRAINT games_pkey PRIMARY KEY (id);


--
-- Name: messages messages_pkey; Type: CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.messages
    ADD CONSTRAINT messages_pkey PRIMARY KEY (id);


--
-- Name: metric_batches metric_batches_pkey; Type: CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.metric_batches
    ADD CONSTRAINT metric_batches_pkey PRIMARY KEY (id);


--
-- Name: notifications notifications_pkey; Type: CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.notifications
    ADD CONSTRAINT notifications_pkey PRIMARY KEY (id);


--
-- Name: orders orders_pkey; Type: CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.orders
    ADD CONSTRAINT orders_pkey PRIMARY KEY (id);


--
-- Name: presence presence_pkey; Type: CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.presence
    ADD CONSTRAINT presence_pkey PRIMARY KEY (node);


--
-- Name: retention retention_pkey; Type: CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.retention
    ADD CONSTRAINT retention_pkey PRIMARY KEY (single);


--
-- Name: room_invites room_invites_pkey; Type: CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.room_invites
    ADD CONSTRAINT room_invites_pkey PRIMARY KEY (room_id, user_id);


--
-- Name: room_members room_members_pkey; Type: CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.room_members
    ADD CONSTRAINT room_members_pkey PRIMARY KEY (room_id, user_id);


--
-- Name: rooms rooms_pkey; Type: CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.rooms
    ADD CONSTRAINT rooms_pkey PRIMARY KEY (id);


--
-- Name: sessions sessions_pkey; Type: CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.sessions
    ADD CONSTRAINT sessions_pkey PRIMARY KEY (id);


--
-- Name: stock_prices stock_prices_pkey; Type: CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.stock_prices
    ADD CONSTRAINT stock_prices_pkey PRIMARY KEY (id);


--
-- Name: tracked tracked_name_key; Type: CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.tracked
    ADD CONSTRAINT tracked_name_key UNIQUE (name);


--
-- Name: tracked tracked_pkey; Type: CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.tracked
    ADD CONSTRAINT tracked_pkey PRIMARY KEY (rel);


--
-- Name: upload_chunks upload_chunks_pkey; Type: CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.upload_chunks
    ADD CONSTRAINT upload_chunks_pkey PRIMARY KEY (upload_id, sequence);


--
-- Name: upload_progress upload_progress_pkey; Type: CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.upload_progress
    ADD CONSTRAINT upload_progress_pkey PRIMARY KEY (id);


--
-- Name: uploads uploads_pkey; Type: CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.uploads
    ADD CONSTRAINT uploads_pkey PRIMARY KEY (id);


--
-- Name: users users_email_key; Type: CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.users
    ADD CONSTRAINT users_email_key UNIQUE (email);


--
-- Name: users users_pkey; Type: CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.users
    ADD CONSTRAINT users_pkey PRIMARY KEY (id);


--
-- Name: changes_xid; Type: INDEX; Schema: tidewire; Owner: -
--

CREATE INDEX changes_xid ON tidewire.changes USING btree (xid, id);


--
-- Name: commits_committed_at; Type: INDEX; Schema: tidewire; Owner: -
--

CREATE INDEX commits_committed_at ON tidewire.commits USING btree (committed_at);


--
-- Name: games_open_player_one; Type: INDEX; Schema: tidewire; Owner: -
--

CREATE INDEX games_open_player_one ON tidewire.games USING btree (player_one) WHERE (status = ANY (ARRAY['WAITING'::text, 'PLAYING'::text]));


--
-- Name: games_open_player_two; Type: INDEX; Schema: tidewire; Owner: -
--

CREATE INDEX games_open_player_two ON tidewire.games USING btree (player_two) WHERE (status = ANY (ARRAY['WAITING'::text, 'PLAYING'::text]));


--
-- Name: messages_room; Type: INDEX; Schema: tidewire; Owner: -
--

CREATE INDEX messages_room ON tidewire.messages USING btree (room_id, id DESC);


--
-- Name: metric_batches_received; Type: INDEX; Schema: tidewire; Owner: -
--

CREATE INDEX metric_batches_received ON tidewire.metric_batches USING brin (received_at);


--
-- Name: metrics_batch; Type: INDEX; Schema: tidewire; Owner: -
--

CREATE INDEX metrics_batch ON tidewire.metrics USING brin (batch_id);


--
-- Name: notifications_user; Type: INDEX; Schema: tidewire; Owner: -
--

CREATE INDEX notifications_user ON tidewire.notifications USING btree (user_id, id DESC);


--
-- Name: orders_created; Type: INDEX; Schema: tidewire; Owner: -
--

CREATE INDEX orders_created ON tidewire.orders USING btree (created_at);


--
-- Name: room_invites_user; Type: INDEX; Schema: tidewire; Owner: -
--

CREATE INDEX room_invites_user ON tidewire.room_invites USING btree (user_id);


--
-- Name: room_members_user; Type: INDEX; Schema: tidewire; Owner: -
--

CREATE INDEX room_members_user ON tidewire.room_members USING btree (user_id);


--
-- Name: rooms_owner; Type: INDEX; Schema: tidewire; Owner: -
--

CREATE INDEX rooms_owner ON tidewire.rooms USING btree (owner_id);


--
-- Name: sessions_user; Type: INDEX; Schema: tidewire; Owner: -
--

CREATE INDEX sessions_user ON tidewire.sessions USING btree (user_id);


--
-- Name: stock_prices_symbol; Type: INDEX; Schema: tidewire; Owner: -
--

CREATE INDEX stock_prices_symbol ON tidewire.stock_prices USING btree (symbol, id DESC);


--
-- Name: uploads_owner; Type: INDEX; Schema: tidewire; Owner: -
--

CREATE INDEX uploads_owner ON tidewire.uploads USING btree (owner_id, created_at DESC);


--
-- Name: changes commit_position; Type: TRIGGER; Schema: tidewire; Owner: -
--

CREATE CONSTRAINT TRIGGER commit_position AFTER INSERT ON tidewire.changes DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (tidewire.claim_commit_hook()) EXECUTE FUNCTION tidewire.on_commit();


--
-- Name: games tidewire_capture_delete; Type: TRIGGER; Schema: tidewire; Owner: -
--

CREATE TRIGGER tidewire_capture_delete AFTER DELETE ON tidewire.games REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION tidewire.capture('games', 'tidewire.games');


--
-- Name: messages tidewire_capture_delete; Type: TRIGGER; Schema: tidewire; Owner: -
--

CREATE TRIGGER tidewire_capture_delete AFTER DELETE ON tidewire.messages REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION tidewire.capture('chat', 'tidewire.messages');


--
-- Name: metric_batches tidewire_capture_delete; Type: TRIGGER; Schema: tidewire; Owner: -
--

CREATE TRIGGER tidewire_capture_delete AFTER DELETE ON tidewire.metric_batches REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION tidewire.capture('metrics', 'tidewire.metric_batches');


--
-- Name: notifications tidewire_capture_delete; Type: TRIGGER; Schema: tidewire; Owner: -
--

CREATE TRIGGER tidewire_capture_delete AFTER DELETE ON tidewire.notifications REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION tidewire.capture('notifications', 'tidewire.notifications');


--
-- Name: room_members tidewire_capture_delete; Type: TRIGGER; Schema: tidewire; Owner: -
--

CREATE TRIGGER tidewire_capture_delete AFTER DELETE ON tidewire.room_members REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION tidewire.capture('chat_members', 'tidewire.room_members');


--
-- Name: stock_prices tidewire_capture_delete; Type: TRIGGER; Schema: tidewire; Owner: -
--

CREATE TRIGGER tidewire_capture_delete AFTER DELETE ON tidewire.stock_prices REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION tidewire.capture('stocks', 'tidewire.stock_prices');


--
-- Name: upload_progress tidewire_capture_delete; Type: TRIGGER; Schema: tidewire; Owner: -
--

CREATE TRIGGER tidewire_capture_delete AFTER DELETE ON tidewire.upload_progress REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION tidewire.capture('uploads', 'tidewire.upload_progress');


--
-- Name: games tidewire_capture_insert; Type: TRIGGER; Schema: tidewire; Owner: -
--

CREATE TRIGGER tidewire_capture_insert AFTER INSERT ON tidewire.games REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tidewire.capture('games', 'tidewire.games');


--
-- Name: messages tidewire_capture_insert; Type: TRIGGER; Schema: tidewire; Owner: -
--

CREATE TRIGGER tidewire_capture_insert AFTER INSERT ON tidewire.messages REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tidewire.capture('chat', 'tidewire.messages');


--
-- Name: metric_batches tidewire_capture_insert; Type: TRIGGER; Schema: tidewire; Owner: -
--

CREATE TRIGGER tidewire_capture_insert AFTER INSERT ON tidewire.metric_batches REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tidewire.capture('metrics', 'tidewire.metric_batches');


--
-- Name: notifications tidewire_capture_insert; Type: TRIGGER; Schema: tidewire; Owner: -
--

CREATE TRIGGER tidewire_capture_insert AFTER INSERT ON tidewire.notifications REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tidewire.capture('notifications', 'tidewire.notifications');


--
-- Name: room_members tidewire_capture_insert; Type: TRIGGER; Schema: tidewire; Owner: -
--

CREATE TRIGGER tidewire_capture_insert AFTER INSERT ON tidewire.room_members REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tidewire.capture('chat_members', 'tidewire.room_members');


--
-- Name: stock_prices tidewire_capture_insert; Type: TRIGGER; Schema: tidewire; Owner: -
--

CREATE TRIGGER tidewire_capture_insert AFTER INSERT ON tidewire.stock_prices REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tidewire.capture('stocks', 'tidewire.stock_prices');


--
-- Name: upload_progress tidewire_capture_insert; Type: TRIGGER; Schema: tidewire; Owner: -
--

CREATE TRIGGER tidewire_capture_insert AFTER INSERT ON tidewire.upload_progress REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tidewire.capture('uploads', 'tidewire.upload_progress');


--
-- Name: games tidewire_capture_update; Type: TRIGGER; Schema: tidewire; Owner: -
--

CREATE TRIGGER tidewire_capture_update AFTER UPDATE ON tidewire.games REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tidewire.capture('games', 'tidewire.games');


--
-- Name: messages tidewire_capture_update; Type: TRIGGER; Schema: tidewire; Owner: -
--

CREATE TRIGGER tidewire_capture_update AFTER UPDATE ON tidewire.messages REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tidewire.capture('chat', 'tidewire.messages');


--
-- Name: metric_batches tidewire_capture_update; Type: TRIGGER; Schema: tidewire; Owner: -
--

CREATE TRIGGER tidewire_capture_update AFTER UPDATE ON tidewire.metric_batches REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tidewire.capture('metrics', 'tidewire.metric_batches');


--
-- Name: notifications tidewire_capture_update; Type: TRIGGER; Schema: tidewire; Owner: -
--

CREATE TRIGGER tidewire_capture_update AFTER UPDATE ON tidewire.notifications REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tidewire.capture('notifications', 'tidewire.notifications');


--
-- Name: room_members tidewire_capture_update; Type: TRIGGER; Schema: tidewire; Owner: -
--

CREATE TRIGGER tidewire_capture_update AFTER UPDATE ON tidewire.room_members REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tidewire.capture('chat_members', 'tidewire.room_members');


--
-- Name: stock_prices tidewire_capture_update; Type: TRIGGER; Schema: tidewire; Owner: -
--

CREATE TRIGGER tidewire_capture_update AFTER UPDATE ON tidewire.stock_prices REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tidewire.capture('stocks', 'tidewire.stock_prices');


--
-- Name: upload_progress tidewire_capture_update; Type: TRIGGER; Schema: tidewire; Owner: -
--

CREATE TRIGGER tidewire_capture_update AFTER UPDATE ON tidewire.upload_progress REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tidewire.capture('uploads', 'tidewire.upload_progress');


--
-- Name: messages messages_room_id_fkey; Type: FK CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.messages
    ADD CONSTRAINT messages_room_id_fkey FOREIGN KEY (room_id) REFERENCES tidewire.rooms(id) ON DELETE CASCADE;


--
-- Name: room_invites room_invites_room_id_fkey; Type: FK CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.room_invites
    ADD CONSTRAINT room_invites_room_id_fkey FOREIGN KEY (room_id) REFERENCES tidewire.rooms(id) ON DELETE CASCADE;


--
-- Name: room_members room_members_room_id_fkey; Type: FK CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.room_members
    ADD CONSTRAINT room_members_room_id_fkey FOREIGN KEY (room_id) REFERENCES tidewire.rooms(id) ON DELETE CASCADE;


--
-- Name: sessions sessions_user_id_fkey; Type: FK CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.sessions
    ADD CONSTRAINT sessions_user_id_fkey FOREIGN KEY (user_id) REFERENCES tidewire.users(id) ON DELETE CASCADE;


--
-- Name: upload_chunks upload_chunks_upload_id_fkey; Type: FK CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.upload_chunks
    ADD CONSTRAINT upload_chunks_upload_id_fkey FOREIGN KEY (upload_id) REFERENCES tidewire.uploads(id) ON DELETE CASCADE;


--
-- Name: upload_progress upload_progress_upload_id_fkey; Type: FK CONSTRAINT; Schema: tidewire; Owner: -
--

ALTER TABLE ONLY tidewire.upload_progress
    ADD CONSTRAINT upload_progress_upload_id_fkey FOREIGN KEY (upload_id) REFERENCES tidewire.uploads(id) ON DELETE CASCADE;


--
-- PostgreSQL database dump complete
--
