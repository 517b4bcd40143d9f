//! Chat over real WebSockets against the embedded Postgres: rooms and
//! membership, messages both ways on one socket, resume, removal, presence
//! across two server processes, typing, and cleanup of everything a stream
//! held.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const SECRET: &str = "a-chat-test-secret-long-enough-0123456789";

/// Hub subscriptions of a room streamed by any number of members: the
/// room's shared execution, and the follower of membership deletions.
const FEEDS: usize = 2;

const CHAT_ROOM: &str = "subscription($room: ID!, $after: String) {
  chatRoom(roomId: $room, after: $after) { cursor id authorId text createdAt }
}";
const SEND: &str = "mutation($room: ID!, $text: String!) {
  sendMessage(roomId: $room, text: $text) { id authorId text createdAt }
}";
const PRESENCE: &str =
    "subscription($room: ID!) { roomPresence(roomId: $room) { roomId users cursor } }";
const TYPING: &str = "subscription($room: ID!) { roomTyping(roomId: $room) { users } }";

async fn server() -> TestServer {
    TestServer::start_with(|config| config.jwt_secret = Some(SECRET.into())).await
}

async fn user(server: &TestServer, name: &str) -> GqlClient {
    client_with_token(server.addr, &token(SECRET, name, "user", 600)).await
}

/// Creates a room as `owner` over its socket; its id.
async fn create_room(owner: &mut GqlClient, name: &str, private: bool) -> String {
    let created = owner
        .request(
            "create",
            "mutation($name: String!, $private: Boolean!) {
               createRoom(name: $name, private: $private) { id name private ownerId memberCount joined }
             }",
            json!({"name": name, "private": private}),
        )
        .await;
    let room = &created["data"]["createRoom"];
    assert_eq!(room["name"], name, "{created}");
    assert_eq!(room["joined"], true);
    assert_eq!(room["memberCount"], 1);
    room["id"].as_str().unwrap().to_owned()
}

async fn join(client: &mut GqlClient, room: &str) -> Value {
    client
        .request(
            "join",
            "mutation($room: ID!) { joinRoom(roomId: $room) { id joined memberCount } }",
            json!({"room": room}),
        )
        .await
}

async fn send(client: &mut GqlClient, id: &str, room: &str, text: &str) -> Value {
    client
        .request(id, SEND, json!({"room": room, "text": text}))
        .await
}

fn code(payload: &Value) -> &str {
    payload["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {payload}"))
}

#[tokio::test]
async fn two_users_on_one_socket_each_see_fifty_interleaved_messages_in_the_same_order() {
    let server = TestServer::start_with(|config| {
        config.jwt_secret = Some(SECRET.into());
        config.mutations_per_second = 1000;
    })
    .await;
    let mut ann = user(&server, "ann").await;
    let mut bob = user(&server, "bob").await;
    let room = create_room(&mut ann, "general", false).await;
    assert_eq!(
        join(&mut bob, &room).await["data"]["joinRoom"]["joined"],
        true
    );

    let executions = server
        .metric("tidewire_subscription_executions_total")
        .await;
    ann.subscribe("chat", CHAT_ROOM, json!({"room": room}))
        .await;
    bob.subscribe("chat", CHAT_ROOM, json!({"room": room}))
        .await;
    wait_for_shared_subscribers(&server, 2, FEEDS).await;
    // One execution for the room, whatever the number of members.
    assert_eq!(
        server
            .metric("tidewire_subscription_executions_total")
            .await,
        executions + 1.0
    );

    // Interleaved: each sends on the socket that carries its subscription,
    // without waiting for the other's messages.
    let mut sent = Vec::new();
    for i in 0..25 {
        for (client, name) in [(&mut ann, "ann"), (&mut bob, "bob")] {
            let text = format!("{name} {i}");
            let reply = send(client, &format!("send-{name}-{i}"), &room, &text).await;
            let message = &reply["data"]["sendMessage"];
            // Author and time are the server's.
            assert_eq!(message["authorId"], name, "{reply}");
            assert!(message["createdAt"].is_string());
            sent.push(text);
        }
    }
    let mut seen = Vec::new();
    for client in [&mut ann, &mut bob] {
        let mut texts = Vec::new();
        let mut cursors = Vec::new();
        for _ in 0..50 {
            let item = client.next_item("chat", "chatRoom").await;
            texts.push(item["text"].as_str().unwrap().to_owned());
            cursors.push(item["cursor"].as_str().unwrap().to_owned());
        }
        client.assert_quiet(Duration::from_millis(200)).await;
        seen.push((texts, cursors));
    }
    // Both saw every message, in one order: the order they were committed.
    assert_eq!(seen[0], seen[1]);
    let mut sorted = seen[0].0.clone();
    sorted.sort();
    let mut expected = sent.clone();
    expected.sort();
    assert_eq!(sorted, expected);
    assert_eq!(
        seen[0].0, sent,
        "sent one after the other, so committed in order"
    );
}

#[tokio::test]
async fn a_member_resumes_after_a_cursor_without_losing_or_repeating_a_message() {
    let server = server().await;
    let mut ann = user(&server, "ann").await;
    let room = create_room(&mut ann, "resume", false).await;
    ann.subscribe("chat", CHAT_ROOM, json!({"room": room}))
        .await;
    wait_for_shared_subscribers(&server, 1, FEEDS).await;
    send(&mut ann, "s1", &room, "one").await;
    let first = ann.next_item("chat", "chatRoom").await;
    assert_eq!(first["text"], "one");
    ann.complete("chat").await;
    wait_for_metric(&server, "tidewire_subscriptions", |v| v == 0.0).await;

    // Missed while away.
    send(&mut ann, "s2", &room, "two").await;
    send(&mut ann, "s3", &room, "three").await;
    ann.subscribe(
        "again",
        CHAT_ROOM,
        json!({"room": room, "after": first["cursor"]}),
    )
    .await;
    assert_eq!(ann.next_item("again", "chatRoom").await["text"], "two");
    assert_eq!(ann.next_item("again", "chatRoom").await["text"], "three");
    send(&mut ann, "s4", &room, "four").await;
    assert_eq!(ann.next_item("again", "chatRoom").await["text"], "four");
    ann.assert_quiet(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn private_rooms_are_for_invited_members_and_a_removed_member_stops_at_once() {
    let server = server().await;
    let mut owner = user(&server, "owner").await;
    let mut guest = user(&server, "guest").await;
    let mut stranger = user(&server, "stranger").await;
    let room = create_room(&mut owner, "secret", true).await;

    // Not invited: cannot join, read, stream, or even see the room.
    assert_eq!(code(&join(&mut guest, &room).await), "FORBIDDEN");
    let rooms = guest.request("rooms", "{ rooms { id } }", json!({})).await;
    assert_eq!(rooms["data"]["rooms"], json!([]));
    guest
        .subscribe("early", CHAT_ROOM, json!({"room": room}))
        .await;
    assert_eq!(code(&guest.next_payload("early").await), "FORBIDDEN");

    // Only the owner invites.
    let invite = "mutation($room: ID!, $user: ID!) { inviteToRoom(roomId: $room, userId: $user) }";
    let refused = stranger
        .request("inv", invite, json!({"room": room, "user": "guest"}))
        .await;
    assert_eq!(code(&refused), "FORBIDDEN");
    let invited = owner
        .request("inv", invite, json!({"room": room, "user": "guest"}))
        .await;
    assert_eq!(invited["data"]["inviteToRoom"], true, "{invited}");
    let rooms = guest
        .request("rooms", "{ rooms { id joined } }", json!({}))
        .await;
    assert_eq!(
        rooms["data"]["rooms"],
        json!([{"id": room, "joined": false}])
    );
    assert_eq!(
        join(&mut guest, &room).await["data"]["joinRoom"]["memberCount"],
        2
    );

    guest
        .subscribe("chat", CHAT_ROOM, json!({"room": room}))
        .await;
    owner
        .subscribe("chat", CHAT_ROOM, json!({"room": room}))
        .await;
    wait_for_shared_subscribers(&server, 2, FEEDS).await;
    send(&mut owner, "m1", &room, "welcome").await;
    assert_eq!(guest.next_item("chat", "chatRoom").await["text"], "welcome");
    assert_eq!(owner.next_item("chat", "chatRoom").await["text"], "welcome");

    // A stranger cannot post, and a non-owner cannot remove.
    assert_eq!(
        code(&send(&mut stranger, "x", &room, "hi").await),
        "FORBIDDEN"
    );
    let remove =
        "mutation($room: ID!, $user: ID!) { removeFromRoom(roomId: $room, userId: $user) }";
    let refused = guest
        .request("rm", remove, json!({"room": room, "user": "owner"}))
        .await;
    assert_eq!(code(&refused), "FORBIDDEN");

    let started = Instant::now();
    let removed = owner
        .request("rm", remove, json!({"room": room, "user": "guest"}))
        .await;
    assert_eq!(removed["data"]["removeFromRoom"], true, "{removed}");
    // The removed member's stream ends with FORBIDDEN, then completes.
    let ended = guest.next_payload("chat").await;
    assert_eq!(code(&ended), "FORBIDDEN", "{ended}");
    assert_eq!(guest.next_for("chat").await["type"], "complete");
    println!("removal ended the stream in {:?}", started.elapsed());

    // Nothing more reaches them; the owner's stream goes on.
    send(&mut owner, "m2", &room, "after").await;
    assert_eq!(owner.next_item("chat", "chatRoom").await["text"], "after");
    guest.assert_quiet(Duration::from_millis(300)).await;
    // The invitation went with the membership.
    assert_eq!(code(&join(&mut guest, &room).await), "FORBIDDEN");
    let history = guest
        .request(
            "h",
            "query($room: ID!) { messages(roomId: $room) { text } }",
            json!({"room": room}),
        )
        .await;
    assert_eq!(code(&history), "FORBIDDEN");
}

#[tokio::test]
async fn leaving_ends_a_stream_that_runs_alone_too() {
    let server = server().await;
    let mut ann = user(&server, "ann").await;
    let mut bob = user(&server, "bob").await;
    let room = create_room(&mut ann, "lobby", false).await;
    join(&mut bob, &room).await;
    bob.subscribe("first", CHAT_ROOM, json!({"room": room}))
        .await;
    wait_for_shared_subscribers(&server, 1, FEEDS).await;
    send(&mut ann, "m0", &room, "before").await;
    let first = bob.next_item("first", "chatRoom").await;
    bob.complete("first").await;
    send(&mut ann, "m1", &room, "missed").await;
    // With `after` the stream is bob's alone (not shared).
    bob.subscribe(
        "chat",
        CHAT_ROOM,
        json!({"room": room, "after": first["cursor"]}),
    )
    .await;
    assert_eq!(bob.next_item("chat", "chatRoom").await["text"], "missed");
    let left = bob
        .request(
            "leave",
            "mutation($room: ID!) { leaveRoom(roomId: $room) }",
            json!({"room": room}),
        )
        .await;
    assert_eq!(left["data"]["leaveRoom"], true);
    assert_eq!(code(&bob.next_payload("chat").await), "FORBIDDEN");
    assert_eq!(bob.next_for("chat").await["type"], "complete");
    send(&mut ann, "m2", &room, "gone").await;
    bob.assert_quiet(Duration::from_millis(300)).await;
    // Rejoining works, and a second leave says it was not a member.
    join(&mut bob, &room).await;
    let leave = "mutation($room: ID!) { leaveRoom(roomId: $room) }";
    let room_var = json!({"room": room});
    assert_eq!(
        bob.request("l1", leave, room_var.clone()).await["data"]["leaveRoom"],
        true
    );
    assert_eq!(
        bob.request("l2", leave, room_var).await["data"]["leaveRoom"],
        false
    );
}

#[tokio::test]
async fn history_pages_back_oldest_first() {
    let server = server().await;
    let mut ann = user(&server, "ann").await;
    let room = create_room(&mut ann, "history", false).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let sent = send(&mut ann, &format!("m{i}"), &room, &format!("m{i}")).await;
        ids.push(
            sent["data"]["sendMessage"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let page = "query($room: ID!, $before: ID) {
      messages(roomId: $room, before: $before, last: 2) { id text authorId }
    }";
    let newest = ann.request("p1", page, json!({"room": room})).await;
    assert_eq!(
        newest["data"]["messages"],
        json!([
            {"id": ids[3], "text": "m3", "authorId": "ann"},
            {"id": ids[4], "text": "m4", "authorId": "ann"},
        ])
    );
    let older = ann
        .request("p2", page, json!({"room": room, "before": ids[3]}))
        .await;
    let texts: Vec<&str> = older["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["m1", "m2"]);
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_loses_nothing_accepted() {
    let server = TestServer::start_with(|config| {
        config.jwt_secret = Some(SECRET.into());
        config.max_chat_message_chars = 10;
        config.mutations_per_second = 5;
    })
    .await;
    let mut ann = user(&server, "ann").await;
    let room = create_room(&mut ann, "rules", false).await;
    ann.subscribe("chat", CHAT_ROOM, json!({"room": room}))
        .await;
    wait_for_shared_subscribers(&server, 1, FEEDS).await;

    // Ten characters fit (multi-byte ones count once); eleven do not.
    let fits = "ééééééééé!";
    assert_eq!(
        send(&mut ann, "ok", &room, fits).await["data"]["sendMessage"]["text"],
        fits
    );
    let long = send(&mut ann, "long", &room, "01234567890").await;
    assert_eq!(code(&long), "BAD_USER_INPUT");
    assert!(long["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("1–10"));
    assert_eq!(
        code(&send(&mut ann, "blank", &room, "  ").await),
        "BAD_USER_INPUT"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        code(&send(&mut ann, "gone", "999999", "x").await),
        "NOT_FOUND"
    );
    assert_eq!(
        code(&send(&mut ann, "junk", "room-1", "x").await),
        "NOT_FOUND"
    );
    let long_name = ann
        .request(
            "name",
            "mutation($n: String!) { createRoom(name: $n) { id } }",
            json!({"n": "n".repeat(101)}),
        )
        .await;
    assert_eq!(code(&long_name), "BAD_USER_INPUT");

    // A flood is refused past the per-user limit; what was accepted arrives.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut accepted = Vec::new();
    for i in 0..12 {
        let reply = send(&mut ann, &format!("f{i}"), &room, &format!("f{i}")).await;
        if reply["data"]["sendMessage"].is_object() {
            accepted.push(format!("f{i}"));
        } else {
            assert_eq!(code(&reply), "RATE_LIMITED", "{reply}");
        }
    }
    assert!(!accepted.is_empty() && accepted.len() < 12, "{accepted:?}");
    assert_eq!(ann.next_item("chat", "chatRoom").await["text"], fits);
    for text in &accepted {
        assert_eq!(ann.next_item("chat", "chatRoom").await["text"], *text);
    }

    // Anonymous callers are told to sign in.
    let mut anonymous = GqlClient::connect(server.addr, "graphql-transport-ws").await;
    let reply = send(&mut anonymous, "anon", &room, "hi").await;
    assert_eq!(code(&reply), "UNAUTHENTICATED");
    anonymous
        .subscribe("chat", CHAT_ROOM, json!({"room": room}))
        .await;
    assert_eq!(
        code(&anonymous.next_payload("chat").await),
        "UNAUTHENTICATED"
    );
}

#[tokio::test]
async fn typing_reaches_the_room_expires_by_itself_and_never_touches_the_log() {
    let server = server().await;
    let mut ann = user(&server, "ann").await;
    let mut bob = user(&server, "bob").await;
    let room = create_room(&mut ann, "typing", false).await;
    join(&mut bob, &room).await;
    let db = server.db().await;
    let log_size = || async {
        db.query_one("SELECT count(*) FROM tidewire.changes", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let before = log_size().await;

    bob.subscribe("typing", TYPING, json!({"room": room})).await;
    assert_eq!(
        bob.next_item("typing", "roomTyping").await["users"],
        json!([])
    );
    let set = "mutation($room: ID!, $on: Boolean!) { setTyping(roomId: $room, typing: $on) }";
    ann.request("t1", set, json!({"room": room, "on": true}))
        .await;
    assert_eq!(
        bob.next_item("typing", "roomTyping").await["users"],
        json!(["ann"])
    );
    ann.request("t2", set, json!({"room": room, "on": false}))
        .await;
    assert_eq!(
        bob.next_item("typing", "roomTyping").await["users"],
        json!([])
    );

    // Set and forgotten: it clears itself after a few seconds.
    ann.request("t3", set, json!({"room": room, "on": true}))
        .await;
    assert_eq!(
        bob.next_item("typing", "roomTyping").await["users"],
        json!(["ann"])
    );
    let set_at = Instant::now();
    assert_eq!(
        bob.next_item("typing", "roomTyping").await["users"],
        json!([])
    );
    let lasted = set_at.elapsed();
    assert!(
        lasted >= Duration::from_secs(4) && lasted < Duration::from_secs(8),
        "typing lasted {lasted:?}"
    );
    assert_eq!(log_size().await, before, "typing wrote to the change log");

    // Outsiders may neither type nor watch.
    let mut eve = user(&server, "eve").await;
    let refused = eve
        .request("t", set, json!({"room": room, "on": true}))
        .await;
    assert_eq!(code(&refused), "FORBIDDEN");
    eve.subscribe("typing", TYPING, json!({"room": room})).await;
    assert_eq!(code(&eve.next_payload("typing").await), "FORBIDDEN");
}

/// Presence as `watcher` sees it: waits for the next view and returns it
/// with the time it took.
async fn next_presence(watcher: &mut GqlClient) -> (Value, Duration) {
    let started = Instant::now();
    let item = watcher.next_item("presence", "roomPresence").await;
    (item["users"].clone(), started.elapsed())
}

/// The `tidewire` binary as a second node on `database_url`; its address.
async fn second_node(database_url: &str) -> (tokio::process::Child, std::net::SocketAddr) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .env("DATABASE_URL", database_url)
        .env("TIDEWIRE_JWT_SECRET", SECRET)
        .env("TIDEWIRE_LISTEN", "127.0.0.1:0")
        .env("TIDEWIRE_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting a second tidewire");
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let line = lines.next_line().await.unwrap().expect("tidewire exited");
            if let Some(rest) = line.split("http://").nth(1) {
                return rest.trim_end_matches("/graphql").parse().unwrap();
            }
        }
    })
    .await
    .expect("the second node never came up");
    (child, addr)
}

#[tokio::test]
async fn presence_follows_sockets_across_two_server_processes() {
    let one = server().await;
    let (mut two, two_addr) = second_node(&one.database_url).await;
    let mut ann = user(&one, "ann").await;
    let room = create_room(&mut ann, "presence", false).await;
    let mut bob = client_with_token(two_addr, &token(SECRET, "bob", "user", 600)).await;
    join(&mut bob, &room).await;

    ann.subscribe("presence", PRESENCE, json!({"room": room}))
        .await;
    let first = ann.next_item("presence", "roomPresence").await;
    assert_eq!(first["users"], json!([]), "nobody streams the room yet");
    assert_eq!(first["roomId"], room);
    assert_eq!(first["cursor"], Value::Null);

    ann.subscribe("chat", CHAT_ROOM, json!({"room": room}))
        .await;
    let (users, took) = next_presence(&mut ann).await;
    assert_eq!(users, json!(["ann"]));
    println!("own join seen in {took:?}");

    // Bob streams the room from the other process.
    bob.subscribe("chat", CHAT_ROOM, json!({"room": room}))
        .await;
    let (users, took) = next_presence(&mut ann).await;
    assert_eq!(users, json!(["ann", "bob"]));
    assert!(took < Duration::from_secs(1), "a join took {took:?}");

    // A second socket of bob's changes nothing; dropping one of two keeps him.
    let mut bob_again = client_with_token(two_addr, &token(SECRET, "bob", "user", 600)).await;
    bob_again
        .subscribe("chat", CHAT_ROOM, json!({"room": room}))
        .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    drop(bob_again);
    ann.assert_quiet(Duration::from_millis(600)).await;

    // Bob's socket drops: gone within a second.
    let dropped = Instant::now();
    drop(bob);
    let (users, _) = next_presence(&mut ann).await;
    let took = dropped.elapsed();
    assert_eq!(users, json!(["ann"]));
    assert!(
        took < Duration::from_secs(1),
        "a dropped socket took {took:?}"
    );

    // Back again, then the whole process dies without a word: its users
    // stop counting once it has been silent for three seconds.
    let mut bob = client_with_token(two_addr, &token(SECRET, "bob", "user", 600)).await;
    bob.subscribe("chat", CHAT_ROOM, json!({"room": room}))
        .await;
    assert_eq!(next_presence(&mut ann).await.0, json!(["ann", "bob"]));
    two.start_kill().unwrap();
    let killed = Instant::now();
    let (users, _) = next_presence(&mut ann).await;
    assert_eq!(users, json!(["ann"]));
    println!("a killed node's users went after {:?}", killed.elapsed());
    assert!(killed.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_new_node_learns_who_is_present_already() {
    let one = server().await;
    let mut ann = user(&one, "ann").await;
    let room = create_room(&mut ann, "late", false).await;
    ann.subscribe("chat", CHAT_ROOM, json!({"room": room}))
        .await;
    wait_for_metric(&one, "tidewire_room_presence_entries", |v| v == 1.0).await;

    // A node started afterwards asks, and hears ann.
    let (_two, two_addr) = second_node(&one.database_url).await;
    let mut bob = client_with_token(two_addr, &token(SECRET, "bob", "user", 600)).await;
    join(&mut bob, &room).await;
    bob.subscribe("presence", PRESENCE, json!({"room": room}))
        .await;
    let mut users = bob.next_item("presence", "roomPresence").await["users"].clone();
    if users == json!([]) {
        // The answer may come a moment after the first view.
        users = bob.next_item("presence", "roomPresence").await["users"].clone();
    }
    assert_eq!(users, json!(["ann"]));
}

/// A room's chat, presence and typing streams, and a typing flag.
async fn subscribe_all(client: &mut GqlClient, room: &str) {
    client
        .subscribe("chat", CHAT_ROOM, json!({"room": room}))
        .await;
    client
        .subscribe("presence", PRESENCE, json!({"room": room}))
        .await;
    client
        .subscribe("typing", TYPING, json!({"room": room}))
        .await;
    client
        .request(
            "type",
            "mutation($room: ID!) { setTyping(roomId: $room, typing: true) }",
            json!({"room": room}),
        )
        .await;
}

#[tokio::test]
async fn leaving_completing_and_dropping_release_everything_a_stream_held() {
    let server = server().await;
    let mut ann = user(&server, "ann").await;
    let mut bob = user(&server, "bob").await;
    let room = create_room(&mut ann, "cleanup", false).await;
    join(&mut bob, &room).await;
    let held = [
        "tidewire_subscriptions",
        "tidewire_shared_executions",
        "tidewire_room_presence_entries",
        "tidewire_room_typing_entries",
        "tidewire_room_watches",
        "tidewire_membership_watches",
        "tidewire_hub_subscribers",
    ];
    subscribe_all(&mut ann, &room).await;
    subscribe_all(&mut bob, &room).await;
    wait_for_metric(&server, "tidewire_room_presence_entries", |v| v == 2.0).await;
    wait_for_metric(&server, "tidewire_room_typing_entries", |v| v == 2.0).await;
    wait_for_metric(&server, "tidewire_membership_watches", |v| v == 2.0).await;
    wait_for_metric(&server, "tidewire_room_watches", |v| v == 2.0).await;
    wait_for_metric(&server, "tidewire_subscriptions", |v| v == 6.0).await;

    // Bob leaves the room: his three streams end, his presence and typing
    // go; ann's stay.
    bob.request(
        "leave",
        "mutation($room: ID!) { leaveRoom(roomId: $room) }",
        json!({"room": room}),
    )
    .await;
    for id in ["chat", "presence", "typing"] {
        let ended = loop {
            let payload = bob.next_payload(id).await;
            if payload.get("errors").is_some() {
                break payload;
            }
        };
        assert_eq!(code(&ended), "FORBIDDEN", "{id}: {ended}");
    }
    wait_for_metric(&server, "tidewire_room_presence_entries", |v| v == 1.0).await;
    wait_for_metric(&server, "tidewire_room_typing_entries", |v| v == 1.0).await;
    wait_for_metric(&server, "tidewire_membership_watches", |v| v == 1.0).await;
    wait_for_metric(&server, "tidewire_subscriptions", |v| v == 3.0).await;

    // Ann completes her chat stream: her presence (and typing) go with it.
    ann.complete("chat").await;
    wait_for_metric(&server, "tidewire_room_presence_entries", |v| v == 0.0).await;
    wait_for_metric(&server, "tidewire_room_typing_entries", |v| v == 0.0).await;

    // Ann's socket drops: nothing is left.
    drop(ann);
    for name in held {
        wait_for_metric(&server, name, |v| v == 0.0).await;
    }
}
