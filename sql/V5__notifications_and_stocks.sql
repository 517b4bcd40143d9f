-- Built-in domains: per-user notifications and stock prices.

CREATE TABLE tidewire.notifications (
    id bigserial PRIMARY KEY,
    user_id text NOT NULL,
    title text NOT NULL,
    message text NOT NULL,
    read boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notifications_user ON tidewire.notifications (user_id, id DESC);
-- Each user reads only their own (owner column), on the `notifications` topic.
SELECT tidewire.track('tidewire.notifications', topic => 'notifications', owner_column => 'user_id');

CREATE TABLE tidewire.stock_prices (
    id bigserial PRIMARY KEY,
    symbol text NOT NULL,
    value double precision NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stock_prices_symbol ON tidewire.stock_prices (symbol, id DESC);
SELECT tidewire.track('tidewire.stock_prices', topic => 'stocks', public => true);
