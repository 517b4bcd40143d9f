-- The live dashboard: orders (today's revenue) and which signed-in users each
-- node has connected now (active users across nodes).

CREATE TABLE tidewire.orders (
    id bigserial PRIMARY KEY,
    user_id text NOT NULL,
    amount double precision NOT NULL CHECK (amount > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_created ON tidewire.orders (created_at);

-- One row per running node, refreshed every second; a row whose heartbeat
-- is stale belongs to a node that is gone.
CREATE TABLE tidewire.presence (
    node uuid PRIMARY KEY,
    users text[] NOT NULL,
    heartbeat timestamptz NOT NULL
);
