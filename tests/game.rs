//! Connect four over the real server and Postgres: a game played to a win
//! watched by spectators (current state first, then every version once, in
//! order); illegal moves refused without a trace; racing moves for one turn
//! (exactly one is played); sign-in required to play, not to watch.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{GqlClient, TestServer};
use serde_json::{json, Value};

const SECRET: &str = "game-secret-game-secret-game-secret-01";

fn token(sub: &str) -> String {
    common::token(SECRET, sub, "user", 600)
}

async fn server() -> TestServer {
    TestServer::start_with(|config| {
        config.jwt_secret = Some(SECRET.into());
        // The tests fire more moves per second than the default allows.
        config.mutations_per_second = 1000;
    })
    .await
}

macro_rules! fields {
    () => {
        "id playerOne playerTwo board turn status winner version updatedAt cursor"
    };
}

const CREATE: &str = concat!("mutation { createGame { ", fields!(), " } }");
const JOIN: &str = concat!(
    "mutation($g: ID!) { joinGame(gameId: $g) { ",
    fields!(),
    " } }"
);
const PLAY: &str = concat!(
    "mutation($g: ID!, $c: Int!) { playMove(gameId: $g, column: $c) { ",
    fields!(),
    " } }"
);
const GAME: &str = concat!("query($g: ID!) { game(id: $g) { ", fields!(), " } }");
const WATCH: &str = concat!("subscription($g: ID!) { game(id: $g) { ", fields!(), " } }");

/// POSTs a GraphQL request to the server at `addr`, as `user` or anonymously.
async fn request(addr: SocketAddr, user: Option<&str>, query: &str, variables: Value) -> Value {
    let mut request = reqwest::Client::new().post(format!("http://{addr}/graphql"));
    if let Some(user) = user {
        request = request.header("authorization", format!("Bearer {}", token(user)));
    }
    request
        .json(&json!({"query": query, "variables": variables}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A mutation's or query's `field`; fails on errors.
fn data(response: Value, field: &str) -> Value {
    assert!(response.get("errors").is_none(), "errors: {response}");
    let value = response["data"][field].clone();
    assert!(value.is_object(), "{response}");
    value
}

/// The code of the response's (only) error, after checking `field` is null.
fn refusal(response: &Value, field: &str) -> String {
    assert!(response["data"][field].is_null(), "{response}");
    assert_eq!(
        response["errors"].as_array().map(Vec::len),
        Some(1),
        "{response}"
    );
    response["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code: {response}"))
        .to_owned()
}

fn message(response: &Value) -> String {
    response["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn create(addr: SocketAddr, user: &str) -> Value {
    data(
        request(addr, Some(user), CREATE, json!({})).await,
        "createGame",
    )
}

async fn join(addr: SocketAddr, user: &str, game: &Value) -> Value {
    data(
        request(addr, Some(user), JOIN, json!({"g": game["id"]})).await,
        "joinGame",
    )
}

async fn play_raw(addr: SocketAddr, user: &str, game: &Value, column: i64) -> Value {
    request(
        addr,
        Some(user),
        PLAY,
        json!({"g": game["id"], "c": column}),
    )
    .await
}

async fn play(addr: SocketAddr, user: &str, game: &Value, column: i64) -> Value {
    data(play_raw(addr, user, game, column).await, "playMove")
}

/// The game's current state, read by an anonymous query.
async fn current(addr: SocketAddr, game: &Value) -> Value {
    data(
        request(addr, None, GAME, json!({"g": game["id"]})).await,
        "game",
    )
}

/// `game` without its cursor: states compare equal whether they came from a
/// mutation (no cursor) or a subscription (a cursor).
fn state(game: &Value) -> Value {
    let mut game = game.clone();
    game.as_object_mut().unwrap().remove("cursor");
    game
}

fn version(game: &Value) -> i64 {
    game["version"].as_i64().unwrap()
}

/// Subscribes `client` to the game as `id`; returns the first item.
async fn watch(client: &mut GqlClient, id: &str, game: &Value) -> Value {
    client.subscribe(id, WATCH, json!({"g": game["id"]})).await;
    client.next_item(id, "game").await
}

/// Items of subscription `id` up to and including the first that is over,
/// then the `complete` that must follow.
async fn until_over(client: &mut GqlClient, id: &str) -> Vec<Value> {
    let mut items = Vec::new();
    loop {
        let item = client.next_item(id, "game").await;
        let over = item["status"] == "WON" || item["status"] == "DRAW";
        items.push(item);
        if over {
            break;
        }
    }
    let complete = client.next_message().await;
    assert_eq!(complete, json!({"id": id, "type": "complete"}));
    items
}

#[tokio::test]
async fn spectators_see_the_current_state_then_every_version_once_in_order_to_the_win() {
    let server = server().await;
    let addr = server.addr;
    let game = create(addr, "ann").await;
    assert_eq!(game["status"], "WAITING");
    assert_eq!(game["playerOne"], "ann");
    assert_eq!(game["playerTwo"], Value::Null);
    assert_eq!(game["turn"], Value::Null);
    assert_eq!(game["board"], json!(vec!["......."; 6]));
    assert_eq!(version(&game), 1);
    assert_eq!(game["cursor"], Value::Null);

    // An anonymous spectator: the current state first, with a cursor.
    let mut spectator = server.ws().await;
    let first = watch(&mut spectator, "g", &game).await;
    assert!(first["cursor"].is_string(), "{first}");
    assert_eq!(state(&first), state(&game));

    // Another game played alongside: none of its states may reach
    // spectators of the first.
    let other = create(addr, "carl").await;
    join(addr, "dora", &other).await;

    let mut states = vec![game.clone()];
    let joined = join(addr, "ben", &game).await;
    assert_eq!(joined["status"], "PLAYING");
    assert_eq!(joined["playerTwo"], "ben");
    assert_eq!(joined["turn"], "ann");
    states.push(joined);

    // Ann makes four in a row at the bottom; Ben stacks on her pieces.
    let moves = [
        ("ann", 0),
        ("ben", 0),
        ("ann", 1),
        ("ben", 1),
        ("ann", 2),
        ("ben", 2),
        ("ann", 3),
    ];
    let side = [("carl", 6), ("dora", 5), ("carl", 6)];
    for (i, &(user, column)) in moves[..3].iter().enumerate() {
        let after = play(addr, user, &game, column).await;
        assert_eq!(after["turn"], if user == "ann" { "ben" } else { "ann" });
        states.push(after);
        play(addr, side[i].0, &other, side[i].1).await;
    }

    // More spectators join, one every few milliseconds, while the rest is
    // being played: some of them come in just as a move commits.
    let rest = moves[3..].to_vec();
    let (game_id, other_id) = (game.clone(), other.clone());
    let players = tokio::spawn(async move {
        let mut after = Vec::new();
        for (user, column) in rest {
            after.push(play(addr, user, &game_id, column).await);
            // Dora, then Carl, in the other game.
            let (side_user, side_column) = if after.len() % 2 == 1 {
                ("dora", 4)
            } else {
                ("carl", 0)
            };
            play(addr, side_user, &other_id, side_column).await;
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        after
    });
    // Each on its own socket (a socket's `complete` is read in turn).
    let mut late = Vec::new();
    loop {
        let mut client = server.ws().await;
        client
            .subscribe("late", WATCH, json!({"g": game["id"]}))
            .await;
        late.push(client);
        if players.is_finished() || late.len() == 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    states.extend(players.await.unwrap());

    let last = states.last().unwrap().clone();
    assert_eq!(last["status"], "WON");
    assert_eq!(last["winner"], "ann");
    assert_eq!(last["turn"], Value::Null);
    assert_eq!(
        last["board"],
        json!([".......", ".......", ".......", ".......", "222....", "1111..."])
    );
    let versions: Vec<i64> = states.iter().map(version).collect();
    assert_eq!(versions, (1..=9).collect::<Vec<_>>());

    // The first spectator: versions 1…9, each once, each as the players saw
    // it, then the stream completes.
    let mut seen = vec![first];
    seen.extend(until_over(&mut spectator, "g").await);
    assert_eq!(seen.iter().map(version).collect::<Vec<_>>(), versions);
    for (seen, played) in seen.iter().zip(&states) {
        assert!(seen["cursor"].is_string(), "{seen}");
        assert_eq!(state(seen), state(played));
    }
    let cursors: Vec<&Value> = seen.iter().map(|s| &s["cursor"]).collect();
    for (i, cursor) in cursors.iter().enumerate() {
        assert!(!cursors[..i].contains(cursor), "repeated cursor {cursor}");
    }

    // The late ones: whatever was current when each came (at least the
    // state after the first three moves), then every later version once.
    for (i, client) in late.iter_mut().enumerate() {
        let late_seen = until_over(client, "late").await;
        let from = version(&late_seen[0]);
        assert!(from >= 5, "late spectator {i}: {from}");
        assert_eq!(
            late_seen.iter().map(version).collect::<Vec<_>>(),
            (from..=9).collect::<Vec<_>>(),
            "late spectator {i}"
        );
        for seen in &late_seen {
            assert_eq!(state(seen), state(&states[version(seen) as usize - 1]));
        }
    }

    // Watching a game that is over: its final state, then complete.
    let mut after_the_end = server.ws().await;
    let final_state = watch(&mut after_the_end, "end", &game).await;
    assert_eq!(state(&final_state), state(&last));
    assert_eq!(
        after_the_end.next_message().await,
        json!({"id": "end", "type": "complete"})
    );

    // The query reads the same, without a cursor.
    let queried = current(addr, &game).await;
    assert_eq!(queried["cursor"], Value::Null);
    assert_eq!(state(&queried), state(&last));
}

/// Asserts `response` is `BAD_USER_INPUT` whose message contains `says`,
/// and that the game is still at `version`.
async fn refused(
    addr: SocketAddr,
    response: Value,
    field: &str,
    says: &str,
    game: &Value,
    at: i64,
) {
    assert_eq!(refusal(&response, field), "BAD_USER_INPUT", "{response}");
    let text = message(&response);
    assert!(text.contains(says), "{says:?} not in {text:?}");
    assert_eq!(version(&current(addr, game).await), at, "after {says:?}");
}

#[tokio::test]
async fn illegal_moves_are_bad_user_input_and_change_nothing() {
    let server = server().await;
    let addr = server.addr;
    let game = create(addr, "ann").await;
    let mut spectator = server.ws().await;
    assert_eq!(version(&watch(&mut spectator, "g", &game).await), 1);

    let early = play_raw(addr, "ann", &game, 0).await;
    refused(addr, early, "playMove", "has not started", &game, 1).await;
    let own = request(addr, Some("ann"), JOIN, json!({"g": game["id"]})).await;
    refused(addr, own, "joinGame", "already a player", &game, 1).await;

    join(addr, "ben", &game).await;
    let full = request(addr, Some("carl"), JOIN, json!({"g": game["id"]})).await;
    refused(addr, full, "joinGame", "full", &game, 2).await;
    let out_of_turn = play_raw(addr, "ben", &game, 0).await;
    refused(addr, out_of_turn, "playMove", "not your turn", &game, 2).await;
    let stranger = play_raw(addr, "carl", &game, 0).await;
    refused(addr, stranger, "playMove", "not a player", &game, 2).await;
    for column in [7, -1, 1_000_000] {
        let outside = play_raw(addr, "ann", &game, column).await;
        refused(addr, outside, "playMove", "0–6", &game, 2).await;
    }

    // Column 3 filled, alternately (no four).
    for (i, user) in ["ann", "ben", "ann", "ben", "ann", "ben"]
        .iter()
        .enumerate()
    {
        assert_eq!(version(&play(addr, user, &game, 3).await), 3 + i as i64);
    }
    let into_full = play_raw(addr, "ann", &game, 3).await;
    refused(addr, into_full, "playMove", "column 3 is full", &game, 8).await;

    // Ann stacks four in column 0.
    for user in ["ann", "ben", "ann", "ben", "ann", "ben"] {
        play(addr, user, &game, if user == "ann" { 0 } else { 1 }).await;
    }
    let won = play(addr, "ann", &game, 0).await;
    assert_eq!((won["status"].clone(), version(&won)), (json!("WON"), 15));
    for user in ["ben", "ann"] {
        let late = play_raw(addr, user, &game, 4).await;
        refused(addr, late, "playMove", "over", &game, 15).await;
    }
    let join_over = request(addr, Some("carl"), JOIN, json!({"g": game["id"]})).await;
    refused(addr, join_over, "joinGame", "over", &game, 15).await;

    // The spectator saw versions 2…15 and nothing of the refused attempts.
    let seen = until_over(&mut spectator, "g").await;
    assert_eq!(
        seen.iter().map(version).collect::<Vec<_>>(),
        (2..=15).collect::<Vec<_>>()
    );

    // A game that does not exist, or an id that is not one.
    for id in ["999999", "not-a-game"] {
        let none = request(addr, Some("ann"), PLAY, json!({"g": id, "c": 0})).await;
        assert_eq!(refusal(&none, "playMove"), "NOT_FOUND", "{none}");
        let none = request(addr, Some("ann"), JOIN, json!({"g": id})).await;
        assert_eq!(refusal(&none, "joinGame"), "NOT_FOUND", "{none}");
        let none = request(addr, None, GAME, json!({"g": id})).await;
        assert_eq!(refusal(&none, "game"), "NOT_FOUND", "{none}");
        let mut client = server.ws().await;
        client.subscribe("x", WATCH, json!({"g": id})).await;
        let payload = client.next_payload("x").await;
        assert_eq!(
            payload["errors"][0]["extensions"]["code"], "NOT_FOUND",
            "{payload}"
        );
    }
}

/// `playMove` with `expectedVersion`.
const PLAY_AT: &str = concat!(
    "mutation($g: ID!, $c: Int!, $v: Int) { playMove(gameId: $g, column: $c, expectedVersion: $v) { ",
    fields!(),
    " } }"
);

async fn play_at(addr: SocketAddr, user: &str, game: &Value, column: i64, at: i64) -> Value {
    request(
        addr,
        Some(user),
        PLAY_AT,
        json!({"g": game["id"], "c": column, "v": at}),
    )
    .await
}

fn pieces(game: &Value) -> usize {
    game["board"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row.as_str().unwrap().matches(['1', '2']).count())
        .sum()
}

/// Of `responses` (to `playMove`), the one that played; the others must be
/// refused as `BAD_USER_INPUT` saying why.
fn the_one_played(responses: &[Value]) -> Value {
    let played: Vec<&Value> = responses
        .iter()
        .filter(|r| r["data"]["playMove"].is_object())
        .collect();
    assert_eq!(played.len(), 1, "{responses:#?}");
    for response in responses {
        if !response["data"]["playMove"].is_object() {
            assert_eq!(refusal(response, "playMove"), "BAD_USER_INPUT");
            let text = message(response);
            assert!(
                text.contains("not your turn") || text.contains("moved on"),
                "{text}"
            );
        }
    }
    played[0]["data"]["playMove"].clone()
}

#[tokio::test]
async fn of_moves_racing_for_one_turn_exactly_one_is_played() {
    let server = server().await;
    let addr = server.addr;
    let game = create(addr, "ann").await;
    join(addr, "ben", &game).await;
    let mut spectator = server.ws().await;
    assert_eq!(version(&watch(&mut spectator, "g", &game).await), 2);

    // Both players fire at once on the turn they see, the one whose turn it
    // is twice (different columns): exactly one move is played, the
    // mover's, whatever order the server takes them in.
    for (mover, waiter) in [("ann", "ben"), ("ben", "ann"), ("ann", "ben")] {
        let before = current(addr, &game).await;
        assert_eq!(before["turn"], mover);
        let at = version(&before);
        let (a, b, c) = tokio::join!(
            play_at(addr, mover, &game, 1, at),
            play_at(addr, mover, &game, 5, at),
            play_at(addr, waiter, &game, 3, at),
        );
        let played = the_one_played(&[a, b, c]);
        assert_eq!(played["turn"], waiter, "the waiter played: {played}");
        // One piece more, one version more, the other player's turn.
        let after = current(addr, &game).await;
        assert_eq!(version(&after), at + 1);
        assert_eq!(state(&after), state(&played));
        assert_eq!(pieces(&after), pieces(&before) + 1);
        assert_eq!(version(&spectator.next_item("g", "game").await), at + 1);
    }

    // Without `expectedVersion`, a double submit still plays once: the
    // second finds it is no longer the sender's turn.
    let before = current(addr, &game).await;
    let mover = before["turn"].as_str().unwrap().to_owned();
    let (a, b) = tokio::join!(
        play_raw(addr, &mover, &game, 1),
        play_raw(addr, &mover, &game, 5),
    );
    let played = the_one_played(&[a, b]);
    assert_eq!(version(&played), version(&before) + 1);
    assert_eq!(version(&current(addr, &game).await), version(&before) + 1);
    assert_eq!(
        version(&spectator.next_item("g", "game").await),
        version(&before) + 1
    );
    spectator.assert_quiet(Duration::from_millis(300)).await;

    // A stale `expectedVersion` alone is refused too, changing nothing.
    let now = current(addr, &game).await;
    let waiter = if now["turn"] == "ann" { "ann" } else { "ben" };
    let stale = play_at(addr, waiter, &game, 0, version(&now) - 1).await;
    refused(addr, stale, "playMove", "moved on", &game, version(&now)).await;
}

#[tokio::test]
async fn playing_needs_a_signed_in_user_and_open_games_are_capped() {
    let server = server().await;
    let addr = server.addr;
    let anonymous = request(addr, None, CREATE, json!({})).await;
    assert_eq!(refusal(&anonymous, "createGame"), "UNAUTHENTICATED");

    let game = create(addr, "ann").await;
    let anonymous = request(addr, None, JOIN, json!({"g": game["id"]})).await;
    assert_eq!(refusal(&anonymous, "joinGame"), "UNAUTHENTICATED");
    join(addr, "ben", &game).await;
    let anonymous = request(addr, None, PLAY, json!({"g": game["id"], "c": 0})).await;
    assert_eq!(refusal(&anonymous, "playMove"), "UNAUTHENTICATED");
    assert_eq!(version(&current(addr, &game).await), 2);

    // Ann has one game in play: 19 more, then no more.
    for _ in 0..19 {
        create(addr, "ann").await;
    }
    let over_cap = request(addr, Some("ann"), CREATE, json!({})).await;
    assert_eq!(refusal(&over_cap, "createGame"), "BAD_USER_INPUT");
    assert!(message(&over_cap).contains("20 games"), "{over_cap}");
    // Nor may she join one.
    let carls = create(addr, "carl").await;
    let join_over_cap = request(addr, Some("ann"), JOIN, json!({"g": carls["id"]})).await;
    assert_eq!(refusal(&join_over_cap, "joinGame"), "BAD_USER_INPUT");
    assert_eq!(version(&current(addr, &carls).await), 1);

    // Games nobody moved in for an hour (an opponent who joined and went
    // quiet) no longer count: ann may play again.
    server
        .sql("UPDATE tidewire.games SET updated_at = now() - interval '2 hours' WHERE player_one = 'ann'")
        .await;
    let again = request(addr, Some("ann"), CREATE, json!({})).await;
    assert!(again["errors"].is_null(), "{again}");
}

#[tokio::test]
async fn an_undecodable_game_change_is_an_error_on_that_item_only() {
    let server = server().await;
    let addr = server.addr;
    let game = create(addr, "ann").await;
    let mut spectator = server.ws().await;
    watch(&mut spectator, "g", &game).await;
    // A change of this game whose row lacks the game's fields.
    server
        .sql(&format!(
            "INSERT INTO tidewire.changes (topic, table_name, op, new_row)
             VALUES ('games', 'tidewire.games', 'UPDATE', '{{\"id\": {}}}')",
            game["id"].as_str().unwrap()
        ))
        .await;
    let payload = spectator.next_payload("g").await;
    assert_eq!(
        payload["errors"][0]["extensions"]["code"], "INTERNAL",
        "{payload}"
    );
    // The stream goes on.
    join(addr, "ben", &game).await;
    assert_eq!(version(&spectator.next_item("g", "game").await), 2);
}
