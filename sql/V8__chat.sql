-- Chat: rooms, their members and invitations, and messages. These are
-- durable; presence and typing are ephemeral and never stored (they travel
-- between nodes on the bus).

CREATE TABLE tidewire.rooms (
    id bigserial PRIMARY KEY,
    name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    private boolean NOT NULL DEFAULT false,
    owner_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rooms_owner ON tidewire.rooms (owner_id);

CREATE TABLE tidewire.room_members (
    room_id bigint NOT NULL REFERENCES tidewire.rooms ON DELETE CASCADE,
    user_id text NOT NULL,
    joined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_members_user ON tidewire.room_members (user_id);

-- Who the owner of a private room invited (kept when they leave, dropped
-- when the owner removes them).
CREATE TABLE tidewire.room_invites (
    room_id bigint NOT NULL REFERENCES tidewire.rooms ON DELETE CASCADE,
    user_id text NOT NULL,
    invited_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_invites_user ON tidewire.room_invites (user_id);

-- Author and time are the server's (the token's user, now()).
CREATE TABLE tidewire.messages (
    id bigserial PRIMARY KEY,
    room_id bigint NOT NULL REFERENCES tidewire.rooms ON DELETE CASCADE,
    author_id text NOT NULL,
    body text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_room ON tidewire.messages (room_id, id DESC);

-- Messages stream to members through chatRoom only: through `changes`
-- the table is for admins (neither public nor owner-scoped).
SELECT tidewire.track('tidewire.messages', topic => 'chat');
-- A membership's end ends the member's streams at once, on every node;
-- each user may follow their own memberships through `changes`.
SELECT tidewire.track('tidewire.room_members', topic => 'chat_members', owner_column => 'user_id');
