-- Client-to-server streams: metrics ingested with COPY, and uploads stored
-- chunk by chunk. Each request is one transaction: all of it or none of it.

-- One row per ingested request, written last: one change in the log per
-- request, never one per metric.
CREATE TABLE tidewire.metric_batches (
    id bigserial PRIMARY KEY,
    user_id text NOT NULL,
    rows bigint NOT NULL,
    names int NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
-- The dashboard sums the last minute's batches.
CREATE INDEX metric_batches_received ON tidewire.metric_batches USING brin (received_at);
SELECT tidewire.track('tidewire.metric_batches', topic => 'metrics', owner_column => 'user_id');

-- `batch_id` names its row in metric_batches, written in the same
-- transaction. No foreign key: its check would queue one trigger event per
-- metric until commit.
CREATE TABLE tidewire.metrics (
    batch_id bigint NOT NULL,
    name text NOT NULL,
    value double precision NOT NULL,
    recorded_at timestamptz NOT NULL
);
-- The only index: each request's statistics read its batch. Batches only
-- grow, so a BRIN index finds one in a few pages and costs next to nothing
-- to maintain. (B-tree indexes on (batch_id, name) and (name, time) cost
-- over a third of the ingest rate; add what your own queries need.)
CREATE INDEX metrics_batch ON tidewire.metrics USING brin (batch_id);

-- An upload is `receiving` until its request ends: `complete` in the same
-- transaction as its chunks, or `failed` (its chunks rolled back).
CREATE TABLE tidewire.uploads (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id text NOT NULL,
    status text NOT NULL DEFAULT 'receiving' CHECK (status IN ('receiving', 'complete', 'failed')),
    bytes bigint NOT NULL DEFAULT 0,
    chunks bigint NOT NULL DEFAULT 0,
    sha256 text,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX uploads_owner ON tidewire.uploads (owner_id, created_at DESC);

CREATE TABLE tidewire.upload_chunks (
    upload_id uuid NOT NULL REFERENCES tidewire.uploads ON DELETE CASCADE,
    sequence bigint NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (upload_id, sequence)
);

-- Progress of uploads, committed as they go (outside the upload's own
-- transaction), for `uploadProgress`.
CREATE TABLE tidewire.upload_progress (
    id bigserial PRIMARY KEY,
    upload_id uuid NOT NULL REFERENCES tidewire.uploads ON DELETE CASCADE,
    owner_id text NOT NULL,
    chunks bigint NOT NULL,
    bytes bigint NOT NULL,
    status text NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
SELECT tidewire.track('tidewire.upload_progress', topic => 'uploads', owner_column => 'owner_id');
