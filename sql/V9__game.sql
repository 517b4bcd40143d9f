-- Connect four (src/domains/game.rs): one row per game, its whole state.
-- The server validates every move under a row lock (SELECT … FOR UPDATE)
-- and bumps `version` with every state change; the table is tracked, so
-- each new state reaches `game(id)` subscribers through the change log.

CREATE TABLE tidewire.games (
    id bigserial PRIMARY KEY,
    -- User ids (a token's `sub`). Player one created the game and moves
    -- first; player two is NULL while the game waits for an opponent.
    player_one text NOT NULL,
    player_two text CONSTRAINT games_two_players CHECK (player_two <> player_one),
    -- 6 rows × 7 columns, top row first, each row left to right:
    -- '.' empty, '1' player one's piece, '2' player two's.
    board text NOT NULL DEFAULT repeat('.', 42) CHECK (board ~ '^[.12]{42}$'),
    status text NOT NULL DEFAULT 'WAITING'
        CHECK (status IN ('WAITING', 'PLAYING', 'WON', 'DRAW')),
    -- Whose move it is (1 or 2) while PLAYING, else NULL.
    turn smallint CHECK (turn IN (1, 2)),
    -- Who won (1 or 2) once WON, else NULL.
    winner smallint CHECK (winner IN (1, 2)),
    -- 1 when created; +1 on every state change (join, each move).
    version integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT games_waiting_has_one_player CHECK ((status = 'WAITING') = (player_two IS NULL)),
    CONSTRAINT games_playing_has_a_turn CHECK ((status = 'PLAYING') = (turn IS NOT NULL)),
    CONSTRAINT games_won_has_a_winner CHECK ((status = 'WON') = (winner IS NOT NULL))
);
-- A user's unfinished games, counted against the cap on creating and
-- joining games.
CREATE INDEX games_open_player_one ON tidewire.games (player_one)
    WHERE status IN ('WAITING', 'PLAYING');
CREATE INDEX games_open_player_two ON tidewire.games (player_two)
    WHERE status IN ('WAITING', 'PLAYING');
-- Anyone may watch a game, so anyone may read its changes.
SELECT tidewire.track('tidewire.games', topic => 'games', public => true);
