//! Connect four, server-authoritative: `createGame`, `joinGame` and
//! `playMove` change a game's row (`tidewire.games`) in one transaction
//! each, under a row lock, bumping its `version`; `game(id)` streams the
//! current state first, then every new state from the change log.
//!
//! The rules ([`Board`], [`play`]) are plain functions with no database.
//! Bounds: a user has at most [`MAX_OPEN_GAMES`] games waiting or in play
//! at once (creating or joining one more is `BAD_USER_INPUT`), and every
//! mutation carries the `MutationLimit` guard.

use std::sync::Arc;

use async_graphql::{Context, Enum, Object, Result, SimpleObject, Subscription, ID};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use futures_util::{stream, Stream, StreamExt};
use serde_json::Value;

use crate::{
    db::{Change, Cursor, Op},
    error::{cursor_expired, database, internal, ErrorCode},
    hub::Hub,
    services::MutationLimit,
};

const TOPIC: &str = "games";
const TABLE: &str = "tidewire.games";

/// Games one user may have waiting for an opponent or in play at once.
pub const MAX_OPEN_GAMES: i64 = 20;

/// First key of the transaction advisory lock that serializes one user's
/// `createGame` and `joinGame` (the second is a hash of the user id), so two
/// at once cannot both pass the [`MAX_OPEN_GAMES`] count. ("game" in ASCII;
/// the commit-order lock uses another, `tidewire.commit_lock_key()`.)
const USER_LOCK_CLASS: i32 = 0x6761_6d65;

// ---------------------------------------------------------------- rules

pub const ROWS: usize = 6;
pub const COLUMNS: usize = 7;

/// A seat at the board. Player one created the game and moves first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Player {
    One,
    Two,
}

impl Player {
    pub fn other(self) -> Player {
        match self {
            Player::One => Player::Two,
            Player::Two => Player::One,
        }
    }

    /// As stored (`turn`, `winner`) and drawn on the board: 1 or 2.
    pub fn number(self) -> i16 {
        match self {
            Player::One => 1,
            Player::Two => 2,
        }
    }

    pub fn from_number(number: i16) -> Option<Player> {
        match number {
            1 => Some(Player::One),
            2 => Some(Player::Two),
            _ => None,
        }
    }

    fn piece(self) -> char {
        match self {
            Player::One => '1',
            Player::Two => '2',
        }
    }
}

/// 6 rows × 7 columns; row 0 is the top, column 0 the left. Pieces fall to
/// the lowest empty row of their column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Board {
    cells: [[Option<Player>; COLUMNS]; ROWS],
}

impl Default for Board {
    fn default() -> Self {
        Board {
            cells: [[None; COLUMNS]; ROWS],
        }
    }
}

impl Board {
    /// From its stored form: 42 characters, the rows top first, each left to
    /// right, `.` empty, `1` / `2` a player's piece. `None` for anything
    /// else.
    pub fn parse(text: &str) -> Option<Board> {
        if text.len() != ROWS * COLUMNS {
            return None;
        }
        let mut board = Board::default();
        for (i, byte) in text.bytes().enumerate() {
            board.cells[i / COLUMNS][i % COLUMNS] = match byte {
                b'.' => None,
                b'1' => Some(Player::One),
                b'2' => Some(Player::Two),
                _ => return None,
            };
        }
        Some(board)
    }

    /// The stored form (see [`Board::parse`]).
    pub fn encode(&self) -> String {
        self.rows().concat()
    }

    /// Six strings of seven characters, top row first.
    pub fn rows(&self) -> Vec<String> {
        self.cells
            .iter()
            .map(|row| {
                row.iter()
                    .map(|cell| cell.map_or('.', Player::piece))
                    .collect()
            })
            .collect()
    }

    pub fn get(&self, row: usize, column: usize) -> Option<Player> {
        *self.cells.get(row)?.get(column)?
    }

    /// Drops `player`'s piece into `column`; the row it lands in, or `None`
    /// if the column is full or does not exist.
    pub fn drop_piece(&mut self, column: usize, player: Player) -> Option<usize> {
        if column >= COLUMNS {
            return None;
        }
        let row = (0..ROWS).rev().find(|&r| self.cells[r][column].is_none())?;
        self.cells[row][column] = Some(player);
        Some(row)
    }

    /// Whether the piece at (`row`, `column`) is part of four or more in a
    /// row of its player: horizontally, vertically or on either diagonal.
    pub fn four_through(&self, row: usize, column: usize) -> bool {
        let Some(player) = self.get(row, column) else {
            return false;
        };
        [(0, 1), (1, 0), (1, 1), (1, -1)].iter().any(|&(dr, dc)| {
            1 + self.run(row, column, dr, dc, player) + self.run(row, column, -dr, -dc, player) >= 4
        })
    }

    /// How many of `player`'s pieces follow (`row`, `column`), not counting
    /// it, stepping by (`dr`, `dc`).
    fn run(&self, row: usize, column: usize, dr: isize, dc: isize, player: Player) -> usize {
        let mut count = 0;
        let (mut r, mut c) = (row as isize + dr, column as isize + dc);
        while r >= 0 && c >= 0 && self.get(r as usize, c as usize) == Some(player) {
            count += 1;
            r += dr;
            c += dc;
        }
        count
    }

    pub fn is_full(&self) -> bool {
        self.cells[0].iter().all(Option::is_some)
    }
}

/// What a legal move leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The other player moves next.
    Continues,
    /// The mover made four in a row.
    Won,
    /// The board is full and nobody has four.
    Draw,
}

/// Why a move is not legal on this board.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoveError {
    #[error("`column` must be 0–6 (left to right)")]
    NoSuchColumn,
    #[error("column {0} is full")]
    ColumnFull(usize),
}

/// `player` drops a piece into `column` of `board`: the new board and what
/// it means. Whose turn it is, is the caller's business.
pub fn play(board: &Board, column: i32, player: Player) -> Result<(Board, Outcome), MoveError> {
    let column = usize::try_from(column)
        .ok()
        .filter(|&c| c < COLUMNS)
        .ok_or(MoveError::NoSuchColumn)?;
    let mut next = board.clone();
    let row = next
        .drop_piece(column, player)
        .ok_or(MoveError::ColumnFull(column))?;
    let outcome = if next.four_through(row, column) {
        Outcome::Won
    } else if next.is_full() {
        Outcome::Draw
    } else {
        Outcome::Continues
    };
    Ok((next, outcome))
}

// ---------------------------------------------------------------- GraphQL

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GameStatus {
    /// Created; waits for a second player to join.
    Waiting,
    /// Two players; `turn` says who moves.
    Playing,
    /// Over: `winner` made four in a row.
    Won,
    /// Over: the board is full and nobody made four in a row.
    Draw,
}

impl GameStatus {
    fn as_str(self) -> &'static str {
        match self {
            GameStatus::Waiting => "WAITING",
            GameStatus::Playing => "PLAYING",
            GameStatus::Won => "WON",
            GameStatus::Draw => "DRAW",
        }
    }

    fn parse(text: &str) -> Option<GameStatus> {
        [
            GameStatus::Waiting,
            GameStatus::Playing,
            GameStatus::Won,
            GameStatus::Draw,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    pub fn is_over(self) -> bool {
        matches!(self, GameStatus::Won | GameStatus::Draw)
    }
}

/// A game of connect four.
#[derive(SimpleObject, Clone, Debug, PartialEq)]
pub struct Game {
    pub id: ID,
    /// The user who created the game; moves first, plays `1`.
    pub player_one: ID,
    /// The user who joined; plays `2`. Null while the game is `WAITING`.
    pub player_two: Option<ID>,
    /// Six strings of seven characters: the rows, top row first, each from
    /// column 0 (left) to 6. `.` is empty, `1` a piece of player one, `2` of
    /// player two. Pieces fall to the lowest empty row of their column.
    pub board: Vec<String>,
    /// The user whose move it is; null unless `PLAYING`.
    pub turn: Option<ID>,
    pub status: GameStatus,
    /// The user who won; null unless `WON`.
    pub winner: Option<ID>,
    /// 1 when created, one more with every state change (join, each move).
    pub version: i32,
    pub updated_at: DateTime<Utc>,
    /// Position in the change log (subscriptions only; null for a query or
    /// mutation result). The first item's is the position its state was
    /// read at.
    pub cursor: Option<String>,
}

/// A game as stored, checked for consistency.
#[derive(Clone, Debug, PartialEq)]
struct State {
    id: i64,
    player_one: String,
    player_two: Option<String>,
    board: Board,
    status: GameStatus,
    turn: Option<Player>,
    winner: Option<Player>,
    version: i32,
    updated_at: DateTime<Utc>,
}

/// The columns of `tidewire.games` a [`State`] is read from, in
/// [`State::from_row`]'s order.
macro_rules! state_columns {
    () => {
        "id, player_one, player_two, board, status, turn, winner, version, updated_at"
    };
}

impl State {
    /// From stored values; `None` if they do not make a consistent game.
    #[allow(clippy::too_many_arguments)]
    fn new(
        id: i64,
        player_one: String,
        player_two: Option<String>,
        board: &str,
        status: &str,
        turn: Option<i16>,
        winner: Option<i16>,
        version: i32,
        updated_at: DateTime<Utc>,
    ) -> Option<State> {
        let seat = |n: Option<i16>| match n {
            None => Some(None),
            Some(n) => Player::from_number(n).map(Some),
        };
        let state = State {
            id,
            player_one,
            player_two,
            board: Board::parse(board)?,
            status: GameStatus::parse(status)?,
            turn: seat(turn)?,
            winner: seat(winner)?,
            version,
            updated_at,
        };
        let consistent = state.version >= 1
            && (state.status == GameStatus::Waiting) == state.player_two.is_none()
            && (state.status == GameStatus::Playing) == state.turn.is_some()
            && (state.status == GameStatus::Won) == state.winner.is_some();
        consistent.then_some(state)
    }

    /// From a row selecting [`state_columns!`] from column `first` on.
    fn from_row(row: &tokio_postgres::Row, first: usize) -> Result<State> {
        let read = || -> Result<Option<State>, tokio_postgres::Error> {
            Ok(State::new(
                row.try_get(first)?,
                row.try_get(first + 1)?,
                row.try_get(first + 2)?,
                row.try_get(first + 3)?,
                row.try_get(first + 4)?,
                row.try_get(first + 5)?,
                row.try_get(first + 6)?,
                row.try_get(first + 7)?,
                row.try_get(first + 8)?,
            ))
        };
        read()
            .map_err(internal)?
            .ok_or_else(|| internal("a tidewire.games row is not a consistent game"))
    }

    /// From a captured row (`to_jsonb` of the table's row); `None` if it does
    /// not have the expected shape.
    fn from_json(row: &Value) -> Option<State> {
        let text = |key: &str| row.get(key)?.as_str();
        let optional_text = |key: &str| match row.get(key)? {
            Value::Null => Some(None),
            Value::String(text) => Some(Some(text.clone())),
            _ => None,
        };
        let small = |key: &str| match row.get(key)? {
            Value::Null => Some(None),
            value => value.as_i64().and_then(|n| i16::try_from(n).ok()).map(Some),
        };
        State::new(
            row.get("id")?.as_i64()?,
            text("player_one")?.to_owned(),
            optional_text("player_two")?,
            text("board")?,
            text("status")?,
            small("turn")?,
            small("winner")?,
            i32::try_from(row.get("version")?.as_i64()?).ok()?,
            DateTime::parse_from_rfc3339(text("updated_at")?)
                .ok()?
                .with_timezone(&Utc),
        )
    }

    /// The user in `player`'s seat.
    fn user(&self, player: Player) -> Option<&str> {
        match player {
            Player::One => Some(&self.player_one),
            Player::Two => self.player_two.as_deref(),
        }
    }

    /// `user`'s seat, if they play in this game.
    fn seat_of(&self, user: &str) -> Option<Player> {
        [Player::One, Player::Two]
            .into_iter()
            .find(|&p| self.user(p) == Some(user))
    }

    fn into_game(self, cursor: Option<String>) -> Game {
        let user = |player: Option<Player>| player.and_then(|p| self.user(p)).map(ID::from);
        Game {
            id: ID(self.id.to_string()),
            player_one: ID(self.player_one.clone()),
            player_two: self.player_two.clone().map(ID),
            board: self.board.rows(),
            turn: user(self.turn),
            status: self.status,
            winner: user(self.winner),
            version: self.version,
            updated_at: self.updated_at,
            cursor,
        }
    }
}

/// The game's state from a change of `tidewire.games`; `None` if its row
/// cannot be read.
fn decode(change: &Change) -> Option<Game> {
    let state = State::from_json(change.row.as_ref()?)?;
    Some(state.into_game(Some(change.cursor.to_string())))
}

/// The id of the game a change of `tidewire.games` is about.
fn changed_id(change: &Change) -> Option<i64> {
    change
        .row
        .as_ref()
        .or(change.old_row.as_ref())?
        .get("id")?
        .as_i64()
}

/// The signed-in caller's user id; `UNAUTHENTICATED` otherwise.
fn caller<'a>(ctx: &Context<'a>, doing: &str) -> Result<&'a str> {
    super::viewer(ctx, doing).map(|viewer| viewer.user_id.as_str())
}

fn not_found() -> async_graphql::Error {
    ErrorCode::NotFound.error("no game has this id")
}

fn refused(message: &str) -> async_graphql::Error {
    ErrorCode::BadUserInput.error(message)
}

fn parse_id(id: &ID) -> Result<i64> {
    id.parse().map_err(|_| not_found())
}

fn pool<'a>(ctx: &Context<'a>) -> &'a Pool {
    ctx.data_unchecked::<Pool>()
}

const SELECT: &str = concat!(
    "SELECT ",
    state_columns!(),
    " FROM tidewire.games WHERE id = $1"
);

const LOCK: &str = concat!(
    "SELECT ",
    state_columns!(),
    " FROM tidewire.games WHERE id = $1 FOR UPDATE"
);

/// The game and the log position, in one statement (one snapshot): every
/// change committed after that position is newer than the state read.
const SNAPSHOT: &str = concat!(
    "SELECT (SELECT coalesce(max(position), 0) FROM tidewire.commits), ",
    state_columns!(),
    " FROM tidewire.games WHERE id = $1"
);

/// Takes `user`'s create/join lock and says whether they may open one more
/// game.
async fn below_cap(tx: &deadpool_postgres::Transaction<'_>, user: &str) -> Result<()> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&USER_LOCK_CLASS, &user],
    )
    .await
    .map_err(database)?;
    let open: i64 = tx
        .query_one(
            "SELECT count(*) FROM tidewire.games
              WHERE (player_one = $1 OR player_two = $1) AND status IN ('WAITING', 'PLAYING')
                -- A game nobody moved in for an hour no longer counts: an
                -- opponent who joins and never moves cannot lock a player out.
                AND updated_at > now() - interval '1 hour'",
            &[&user],
        )
        .await
        .map_err(database)?
        .get(0);
    if open >= MAX_OPEN_GAMES {
        return Err(refused(&format!(
            "you have {MAX_OPEN_GAMES} games waiting or in play, the most one may have at once"
        )));
    }
    Ok(())
}

#[derive(Default)]
pub struct GameQuery;

#[Object]
impl GameQuery {
    /// A game's current state; `NOT_FOUND` if there is none with this id.
    /// Anyone may look.
    async fn game(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Game>> {
        let id = parse_id(&id)?;
        let client = pool(ctx).get().await.map_err(database)?;
        let row = client
            .query_opt(SELECT, &[&id])
            .await
            .map_err(database)?
            .ok_or_else(not_found)?;
        Ok(Some(State::from_row(&row, 0)?.into_game(None)))
    }
}

#[derive(Default)]
pub struct GameMutation;

#[Object]
impl GameMutation {
    /// Starts a game with the caller as player one (who moves first),
    /// `WAITING` for an opponent to `joinGame`. At most 20 games waiting or
    /// in play per user (`BAD_USER_INPUT` beyond).
    #[graphql(guard = "MutationLimit")]
    async fn create_game(&self, ctx: &Context<'_>) -> Result<Option<Game>> {
        let user = caller(ctx, "create a game")?;
        let mut client = pool(ctx).get().await.map_err(database)?;
        let tx = client.transaction().await.map_err(database)?;
        below_cap(&tx, user).await?;
        let row = tx
            .query_one(
                concat!(
                    "INSERT INTO tidewire.games (player_one) VALUES ($1) RETURNING ",
                    state_columns!()
                ),
                &[&user],
            )
            .await
            .map_err(database)?;
        let state = State::from_row(&row, 0)?;
        tx.commit().await.map_err(database)?;
        Ok(Some(state.into_game(None)))
    }

    /// Joins a `WAITING` game as player two; the game starts (`PLAYING`,
    /// player one's turn). `BAD_USER_INPUT` for one's own game, a game that
    /// already has two players or is over, or beyond 20 open games.
    #[graphql(guard = "MutationLimit")]
    async fn join_game(&self, ctx: &Context<'_>, game_id: ID) -> Result<Option<Game>> {
        let user = caller(ctx, "join a game")?;
        let id = parse_id(&game_id)?;
        let mut client = pool(ctx).get().await.map_err(database)?;
        let tx = client.transaction().await.map_err(database)?;
        let row = tx
            .query_opt(LOCK, &[&id])
            .await
            .map_err(database)?
            .ok_or_else(not_found)?;
        let game = State::from_row(&row, 0)?;
        if game.seat_of(user).is_some() {
            return Err(refused("you are already a player in this game"));
        }
        match game.status {
            GameStatus::Waiting => {}
            GameStatus::Playing => return Err(refused("the game is full: it has two players")),
            GameStatus::Won | GameStatus::Draw => return Err(refused("the game is over")),
        }
        below_cap(&tx, user).await?;
        let row = tx
            .query_opt(
                concat!(
                    "UPDATE tidewire.games
                        SET player_two = $2, status = 'PLAYING', turn = 1,
                            version = version + 1, updated_at = now()
                      WHERE id = $1 AND version = $3 RETURNING ",
                    state_columns!()
                ),
                &[&id, &user, &game.version],
            )
            .await
            .map_err(database)?
            .ok_or_else(|| refused("the game moved on; reload it"))?;
        let state = State::from_row(&row, 0)?;
        tx.commit().await.map_err(database)?;
        Ok(Some(state.into_game(None)))
    }

    /// Drops the caller's piece into `column` (0–6, left to right). Legal
    /// only in a `PLAYING` game, on the caller's turn, into a column that is
    /// not full; anything else is `BAD_USER_INPUT` and changes nothing.
    /// `expectedVersion` (optional): the `version` the move was chosen on;
    /// if the game has moved on since, the move is refused rather than
    /// played on a board the player has not seen. Moves on one game take
    /// turns (a row lock): of moves racing for one turn exactly one is
    /// played.
    #[graphql(guard = "MutationLimit")]
    async fn play_move(
        &self,
        ctx: &Context<'_>,
        game_id: ID,
        column: i32,
        expected_version: Option<i32>,
    ) -> Result<Option<Game>> {
        let user = caller(ctx, "play")?;
        let id = parse_id(&game_id)?;
        if !(0..COLUMNS as i32).contains(&column) {
            return Err(refused(&MoveError::NoSuchColumn.to_string()));
        }
        let mut client = pool(ctx).get().await.map_err(database)?;
        let tx = client.transaction().await.map_err(database)?;
        // The row lock makes moves on one game take turns: a racing move
        // reads the state its rival left, after that one committed.
        let row = tx
            .query_opt(LOCK, &[&id])
            .await
            .map_err(database)?
            .ok_or_else(not_found)?;
        let game = State::from_row(&row, 0)?;
        let Some(seat) = game.seat_of(user) else {
            return Err(refused("you are not a player in this game"));
        };
        match game.status {
            GameStatus::Playing => {}
            GameStatus::Waiting => {
                return Err(refused(
                    "the game has not started: it waits for a second player",
                ))
            }
            GameStatus::Won | GameStatus::Draw => return Err(refused("the game is over")),
        }
        if expected_version.is_some_and(|v| v != game.version) {
            return Err(refused(&format!(
                "the game moved on: it is at version {} now; reload it",
                game.version
            )));
        }
        if game.turn != Some(seat) {
            return Err(refused("not your turn: the other player moves next"));
        }
        let (board, outcome) =
            play(&game.board, column, seat).map_err(|e| refused(&e.to_string()))?;
        let (status, turn, winner) = match outcome {
            Outcome::Continues => (GameStatus::Playing, Some(seat.other()), None),
            Outcome::Won => (GameStatus::Won, None, Some(seat)),
            Outcome::Draw => (GameStatus::Draw, None, None),
        };
        let row = tx
            .query_opt(
                concat!(
                    "UPDATE tidewire.games
                        SET board = $3, status = $4, turn = $5, winner = $6,
                            version = version + 1, updated_at = now()
                      WHERE id = $1 AND version = $2 RETURNING ",
                    state_columns!()
                ),
                &[
                    &id,
                    &game.version,
                    &board.encode(),
                    &status.as_str(),
                    &turn.map(Player::number),
                    &winner.map(Player::number),
                ],
            )
            .await
            .map_err(database)?
            // Not expected under the lock; a guard should it ever be lifted.
            .ok_or_else(|| refused("the game moved on; reload it"))?;
        let state = State::from_row(&row, 0)?;
        tx.commit().await.map_err(database)?;
        Ok(Some(state.into_game(None)))
    }
}

#[derive(Default)]
pub struct GameSubscription;

#[Subscription]
impl GameSubscription {
    /// The game's current state at once, then every new state in order
    /// (each `version` exactly once); the stream completes after a state
    /// that is over (`WON`, `DRAW`). Anyone may watch, signed in or not.
    /// `NOT_FOUND` if there is no such game.
    async fn game(&self, ctx: &Context<'_>, id: ID) -> Result<impl Stream<Item = Result<Game>>> {
        let id = parse_id(&id)?;
        // Join the hub before the snapshot: nothing after it is missed.
        let subscription = ctx.data_unchecked::<Arc<Hub>>().subscribe(TOPIC);
        let client = pool(ctx).get().await.map_err(database)?;
        let row = client
            .query_opt(SNAPSHOT, &[&id])
            .await
            .map_err(database)?
            .ok_or_else(not_found)?;
        drop(client);
        let position: i64 = row.try_get(0).map_err(internal)?;
        // Everything committed after the snapshot's position.
        let after = Cursor::new(position, i64::MAX);
        let first = State::from_row(&row, 1)?.into_game(Some(after.to_string()));
        let feed = super::feed(ctx, subscription, Some(after));
        let keep = move |change: &Change| change.table == TABLE && changed_id(change) == Some(id);
        // Each item with whether it is the last.
        let updates = feed.into_stream(keep).map(|item| match item {
            Err(expired) => (Err(cursor_expired(expired)), true),
            Ok(change) if change.op == Op::Delete => {
                (Err(ErrorCode::NotFound.error("the game was deleted")), true)
            }
            Ok(change) => match decode(&change) {
                Some(game) => {
                    let over = game.status.is_over();
                    (Ok(game), over)
                }
                None => {
                    tracing::warn!(cursor = %change.cursor, "a game row could not be decoded");
                    (
                        Err(ErrorCode::Internal.error("this game state could not be read")),
                        false,
                    )
                }
            },
        });
        let over = first.status.is_over();
        let items = stream::iter([(Ok(first), over)]).chain(updates);
        Ok(stream::unfold(
            (Box::pin(items), false),
            |(mut items, ended)| async move {
                if ended {
                    return None;
                }
                let (item, last) = items.next().await?;
                Some((item, (items, last)))
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The board after dropping pieces into `columns`, players alternating
    /// from one; panics on an illegal drop (test input only).
    fn board_after(columns: &[usize]) -> Board {
        let mut board = Board::default();
        let mut player = Player::One;
        for &column in columns {
            board.drop_piece(column, player).expect("a legal drop");
            player = player.other();
        }
        board
    }

    /// Who has four in a row anywhere: every line of four cells checked,
    /// independently of [`Board::four_through`].
    fn winner_anywhere(board: &Board) -> Option<Player> {
        let cell =
            |r: isize, c: isize| board.get(usize::try_from(r).ok()?, usize::try_from(c).ok()?);
        for r in 0..ROWS as isize {
            for c in 0..COLUMNS as isize {
                for (dr, dc) in [(0, 1), (1, 0), (1, 1), (-1, 1)] {
                    let first = cell(r, c);
                    if first.is_some() && (1..4).all(|k| cell(r + k * dr, c + k * dc) == first) {
                        return first;
                    }
                }
            }
        }
        None
    }

    #[test]
    fn an_empty_board_is_six_rows_of_seven_dots() {
        let board = Board::default();
        assert_eq!(board.rows(), vec![".......".to_owned(); 6]);
        assert_eq!(board.encode(), ".".repeat(42));
        assert_eq!(Board::parse(&board.encode()), Some(board));
    }

    #[test]
    fn pieces_fall_to_the_lowest_empty_row_and_rows_read_top_first() {
        let board = board_after(&[3, 3, 0]);
        assert_eq!(
            board.rows(),
            vec![".......", ".......", ".......", ".......", "...2...", "1..1..."]
        );
        assert_eq!(Board::parse(&board.encode()), Some(board));
    }

    #[test]
    fn parse_refuses_anything_but_42_of_dot_one_two() {
        for text in [
            String::new(),
            ".".repeat(41),
            ".".repeat(43),
            format!("{}3", ".".repeat(41)),
            format!("{}é", ".".repeat(40)),
        ] {
            assert_eq!(Board::parse(&text), None, "{text:?}");
        }
    }

    #[test]
    fn a_full_column_takes_no_more_and_columns_outside_0_to_6_do_not_exist() {
        let board = board_after(&[2, 2, 2, 2, 2, 2]);
        assert_eq!(play(&board, 2, Player::One), Err(MoveError::ColumnFull(2)));
        for column in [-1, 7, i32::MAX, i32::MIN] {
            assert_eq!(
                play(&board, column, Player::One),
                Err(MoveError::NoSuchColumn)
            );
        }
        assert_eq!(board.clone().drop_piece(7, Player::One), None);
    }

    #[test]
    fn four_in_a_row_wins_horizontally() {
        // One: 0 1 2 then 3; two stacks on top of them.
        let board = board_after(&[0, 0, 1, 1, 2, 2]);
        assert_eq!(
            play(&board, 3, Player::One).map(|(_, o)| o),
            Ok(Outcome::Won)
        );
        // Three are not enough, nor four with a gap.
        assert_eq!(
            play(&board, 4, Player::One).map(|(_, o)| o),
            Ok(Outcome::Continues)
        );
    }

    #[test]
    fn four_in_a_row_wins_vertically() {
        let board = board_after(&[6, 5, 6, 5, 6, 5]);
        let (won, outcome) = play(&board, 6, Player::One).unwrap();
        assert_eq!(outcome, Outcome::Won);
        assert_eq!(winner_anywhere(&won), Some(Player::One));
        // Two's three in column 5 are not four.
        assert_eq!(winner_anywhere(&board), None);
    }

    #[test]
    fn four_in_a_row_wins_on_the_rising_diagonal() {
        // One's pieces at (5,0) (4,1) (3,2), then (2,3) wins.
        let board = board_after(&[0, 1, 1, 2, 2, 3, 2, 3, 3, 6]);
        assert_eq!(winner_anywhere(&board), None);
        let (won, outcome) = play(&board, 3, Player::One).unwrap();
        assert_eq!(outcome, Outcome::Won);
        assert_eq!(won.get(2, 3), Some(Player::One));
        assert_eq!(winner_anywhere(&won), Some(Player::One));
    }

    #[test]
    fn four_in_a_row_wins_on_the_falling_diagonal() {
        // Mirror of the rising one: One at (5,6) (4,5) (3,4), then (2,3).
        let board = board_after(&[6, 5, 5, 4, 4, 3, 4, 3, 3, 0]);
        assert_eq!(winner_anywhere(&board), None);
        let (won, outcome) = play(&board, 3, Player::One).unwrap();
        assert_eq!(outcome, Outcome::Won);
        assert_eq!(winner_anywhere(&won), Some(Player::One));
    }

    #[test]
    fn the_winning_piece_may_land_in_the_middle_of_its_line() {
        // One at columns 0, 1 and 3 of the bottom row; 2 fills the gap.
        let board = board_after(&[0, 0, 1, 1, 3, 3]);
        assert_eq!(
            play(&board, 2, Player::One).map(|(_, o)| o),
            Ok(Outcome::Won)
        );
    }

    /// Columns that fill the board with nobody making four: pairs of
    /// columns filled alternately, shifted every other pair.
    const DRAWN_GAME: [usize; 42] = [
        0, 1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, //
        2, 3, 2, 3, 2, 3, 3, 2, 3, 2, 3, 2, //
        4, 5, 4, 5, 4, 5, 5, 4, 5, 4, 5, 4, //
        6, 6, 6, 6, 6, 6,
    ];

    #[test]
    fn a_full_board_without_four_is_a_draw() {
        let (last, moves) = DRAWN_GAME.split_last().unwrap();
        let mut board = Board::default();
        let mut player = Player::One;
        for &column in moves {
            let (next, outcome) = play(&board, column as i32, player).unwrap();
            assert_eq!(outcome, Outcome::Continues, "{:?}", next.rows());
            board = next;
            player = player.other();
        }
        let (full, outcome) = play(&board, *last as i32, player).unwrap();
        assert_eq!(outcome, Outcome::Draw, "{:?}", full.rows());
        assert!(full.is_full());
        assert_eq!(winner_anywhere(&full), None);
        for column in 0..7 {
            assert_eq!(
                play(&full, column, Player::One),
                Err(MoveError::ColumnFull(column as usize))
            );
        }
    }

    #[test]
    fn the_move_check_agrees_with_a_scan_of_the_whole_board() {
        // Many pseudo-random games: a move wins exactly when the board
        // after it has four in a row and the board before it had none.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut board = Board::default();
            let mut player = Player::One;
            loop {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let column = (seed % 7) as i32;
                let Ok((next, outcome)) = play(&board, column, player) else {
                    continue;
                };
                assert_eq!(
                    outcome == Outcome::Won,
                    winner_anywhere(&next) == Some(player),
                    "{:?}",
                    next.rows()
                );
                if outcome != Outcome::Continues {
                    break;
                }
                board = next;
                player = player.other();
            }
        }
    }

    fn change(row: Value) -> Change {
        Change {
            cursor: Cursor::new(5, 1),
            topic: Arc::from(TOPIC),
            table: TABLE.to_owned(),
            op: Op::Update,
            row: Some(row),
            old_row: None,
            committed_at: Utc::now(),
        }
    }

    fn stored_row() -> Value {
        serde_json::json!({
            "id": 7, "player_one": "ann", "player_two": "ben",
            "board": format!("{}1......", ".".repeat(35)),
            "status": "PLAYING", "turn": 2, "winner": null, "version": 3,
            "created_at": "2025-01-02T03:04:05.123456+00:00",
            "updated_at": "2025-01-02T03:04:06.5+00:00",
        })
    }

    #[test]
    fn a_captured_row_decodes_to_the_game() {
        let game = decode(&change(stored_row())).unwrap();
        assert_eq!(game.id, ID("7".into()));
        assert_eq!(game.player_two, Some(ID("ben".into())));
        assert_eq!(game.turn, Some(ID("ben".into())));
        assert_eq!(game.status, GameStatus::Playing);
        assert_eq!(game.winner, None);
        assert_eq!(game.version, 3);
        assert_eq!(game.board[5], "1......");
        assert_eq!(game.cursor, Some(Cursor::new(5, 1).to_string()));
    }

    #[test]
    fn a_row_that_is_not_a_consistent_game_does_not_decode() {
        let broken: [(&str, Value); 10] = [
            ("id", "7".into()),
            ("board", "short".into()),
            ("status", "PAUSED".into()),
            ("turn", 3.into()),
            ("turn", Value::Null),
            ("winner", 1.into()),
            ("player_two", Value::Null),
            ("player_one", 1.into()),
            ("version", (i64::from(i32::MAX) + 1).into()),
            ("updated_at", "yesterday".into()),
        ];
        for (key, value) in broken {
            let mut row = stored_row();
            row[key] = value;
            assert_eq!(decode(&change(row)), None, "{key}");
        }
        let mut row = stored_row();
        row.as_object_mut().unwrap().remove("version");
        assert_eq!(decode(&change(row)), None);
        assert_eq!(decode(&change(Value::String("no".into()))), None);
        let mut deleted = change(stored_row());
        deleted.row = None;
        assert_eq!(decode(&deleted), None);
    }
}
