//! The WebSocket protocol layer against bad input: each mistake gets its
//! close code or error, and nothing already accepted is lost.

mod common;

use std::time::Duration;

use common::{
    wait_for_metric, wait_for_shared_subscribers, wait_for_subscribers, GqlClient, TestServer,
    CHANGES,
};
use serde_json::json;

async fn server_with_items() -> TestServer {
    let server = TestServer::start_with(|config| {
        config.init_timeout = Duration::from_millis(300);
        config.max_message_bytes = 1024;
    })
    .await;
    server
        .sql("CREATE TABLE items (id int PRIMARY KEY); SELECT tidewire.track('items', public => true);")
        .await;
    server
}

async fn raw_text(client: &mut GqlClient, text: &str) {
    client.send_text(text).await;
}

#[tokio::test]
async fn malformed_and_unknown_messages_close_with_4400() {
    let server = server_with_items().await;
    for bad in [
        "{not json",
        r#"{"type":"launch_missiles"}"#,
        r#"{"type":"subscribe","payload":{"query":"subscription { x }"}}"#,
        r#"{"type":"subscribe","id":"1","payload":{"q":1}}"#,
    ] {
        let mut client = server.ws().await;
        raw_text(&mut client, bad).await;
        let (code, reason) = client.closed().await;
        assert_eq!(code, 4400, "{bad}: {reason}");
        assert!(reason.starts_with("invalid message"), "{reason}");
    }
}

#[tokio::test]
async fn subscribe_before_init_closes_with_4401_and_silence_with_4408() {
    let server = server_with_items().await;
    let mut early = GqlClient::open(server.addr, "graphql-transport-ws").await;
    early
        .subscribe("1", CHANGES, json!({"table": "items"}))
        .await;
    assert_eq!(early.closed().await.0, 4401);

    // An initialized connection outlives the init timeout.
    let mut ok = server.ws().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    ok.send(json!({"type": "ping"})).await;
    assert_eq!(ok.next_message().await["type"], "pong");

    let mut silent = GqlClient::open(server.addr, "graphql-transport-ws").await;
    let (code, reason) = silent.closed().await;
    assert_eq!(
        (code, reason.as_str()),
        (4408, "Connection initialisation timeout")
    );
}

#[tokio::test]
async fn a_duplicate_id_closes_with_4409_and_a_second_init_with_4429() {
    let server = server_with_items().await;
    let mut client = server.ws().await;
    client
        .subscribe("same", CHANGES, json!({"table": "items"}))
        .await;
    wait_for_subscribers(&server, 1).await;
    client
        .subscribe("same", CHANGES, json!({"table": "items"}))
        .await;
    let (code, reason) = client.closed().await;
    assert_eq!(
        (code, reason.as_str()),
        (4409, "Subscriber for same already exists")
    );
    wait_for_subscribers(&server, 0).await;

    let mut client = server.ws().await;
    client.send(json!({"type": "connection_init"})).await;
    assert_eq!(client.closed().await.0, 4429);
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009() {
    let server = server_with_items().await;
    let mut client = server.ws().await;
    let huge = format!(
        r#"{{"type":"ping","payload":{{"pad":"{}"}}}}"#,
        "x".repeat(4096)
    );
    raw_text(&mut client, &huge).await;
    assert_eq!(client.closed().await.0, 1009);
}

#[tokio::test]
async fn bad_graphql_gets_an_error_and_the_other_subscription_goes_on() {
    let server = server_with_items().await;
    let mut client = server.ws().await;
    client
        .subscribe("good", CHANGES, json!({"table": "items"}))
        .await;
    wait_for_subscribers(&server, 1).await;

    client
        .subscribe("syntax", "subscription { changes(table: ", json!({}))
        .await;
    let payload = client.next_payload("syntax").await;
    assert_eq!(
        payload["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{payload}"
    );
    assert!(
        payload["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("expected"),
        "{payload}"
    );
    client
        .subscribe("field", "subscription { nope }", json!({}))
        .await;
    let payload = client.next_payload("field").await;
    assert!(
        payload["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nope"),
        "{payload}"
    );
    client.subscribe("var", CHANGES, json!({"table": 42})).await;
    let payload = client.next_payload("var").await;
    assert_eq!(
        payload["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "a variable of the wrong type is the client's mistake: {payload}"
    );

    client
        .send(json!({"type": "ping", "payload": {"n": 1}}))
        .await;
    let pong = client.next_message().await;
    assert_eq!(pong, json!({"type": "pong", "payload": {"n": 1}}));

    server.sql("INSERT INTO items VALUES (1)").await;
    assert_eq!(client.next_item("good", "changes").await["row"]["id"], 1);
}

#[tokio::test]
async fn identical_subscriptions_on_one_socket_each_get_their_own_frames() {
    let server = server_with_items().await;
    let mut client = server.ws().await;
    client
        .subscribe("a", CHANGES, json!({"table": "items"}))
        .await;
    client
        .subscribe("b", CHANGES, json!({"table": "items"}))
        .await;
    wait_for_shared_subscribers(&server, 2, 1).await;
    assert_eq!(server.metric("tidewire_shared_executions").await, 1.0);
    server.sql("INSERT INTO items VALUES (7)").await;
    assert_eq!(client.next_item("a", "changes").await["row"]["id"], 7);
    assert_eq!(client.next_item("b", "changes").await["row"]["id"], 7);
    client.complete("a").await;
    wait_for_shared_subscribers(&server, 1, 1).await;
    server.sql("INSERT INTO items VALUES (8)").await;
    assert_eq!(client.next_item("b", "changes").await["row"]["id"], 8);
    client.assert_quiet(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn queries_past_the_depth_and_complexity_limits_are_refused() {
    let server = TestServer::start_with(|config| {
        config.max_depth = 5;
        config.max_complexity = 50;
    })
    .await;
    let deep = "{ __schema { types { fields { type { ofType { ofType { name } } } } } } }";
    let response = server.post(deep, json!({})).await;
    let message = response["errors"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("nested too deep"), "{response}");
    assert_eq!(
        response["errors"][0]["extensions"]["code"],
        "BAD_USER_INPUT"
    );

    let wide: String = (0..60).map(|i| format!("a{i}: trackedTables ")).collect();
    let response = server.post(&format!("{{ {wide} }}"), json!({})).await;
    let message = response["errors"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("too complex"), "{response}");

    let response = server.post("{ trackedTables }", json!({})).await;
    assert!(response["data"]["trackedTables"].is_array(), "{response}");
}

#[tokio::test]
async fn too_many_subscriptions_on_one_connection_get_rate_limited() {
    let server = TestServer::start_with(|config| config.max_subscriptions = 2).await;
    server
        .sql(
            "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY); CREATE TABLE c (id int PRIMARY KEY);
              SELECT tidewire.track('a', public => true); SELECT tidewire.track('b', public => true); SELECT tidewire.track('c', public => true);",
        )
        .await;
    let mut client = server.ws().await;
    client.subscribe("a", CHANGES, json!({"table": "a"})).await;
    client.subscribe("b", CHANGES, json!({"table": "b"})).await;
    wait_for_subscribers(&server, 2).await;
    client.subscribe("c", CHANGES, json!({"table": "c"})).await;
    let payload = client.next_payload("c").await;
    assert_eq!(
        payload["errors"][0]["extensions"]["code"], "RATE_LIMITED",
        "{payload}"
    );
    // The accepted ones go on; completing one makes room.
    server.sql("INSERT INTO a VALUES (1)").await;
    assert_eq!(client.next_item("a", "changes").await["row"]["id"], 1);
    client.complete("b").await;
    wait_for_subscribers(&server, 1).await;
    client.subscribe("c", CHANGES, json!({"table": "c"})).await;
    wait_for_subscribers(&server, 2).await;
    server.sql("INSERT INTO c VALUES (3)").await;
    assert_eq!(client.next_item("c", "changes").await["row"]["id"], 3);
}

#[tokio::test]
async fn websockets_from_other_origins_are_refused() {
    let server = TestServer::start_with(|config| {
        config.allowed_origins = vec!["https://app.example.com".into()];
    })
    .await;
    let own = format!("http://{}", server.addr);
    assert_eq!(
        GqlClient::try_open(server.addr, &[("origin", "https://evil.example")])
            .await
            .err(),
        Some(403)
    );
    assert!(
        GqlClient::try_open(server.addr, &[("origin", "https://app.example.com")])
            .await
            .is_ok()
    );
    assert!(GqlClient::try_open(server.addr, &[("origin", &own)])
        .await
        .is_ok());
    assert!(
        GqlClient::try_open(server.addr, &[]).await.is_ok(),
        "non-browser clients send no Origin"
    );
}

#[tokio::test]
async fn connections_per_address_are_capped() {
    let server = TestServer::start_with(|config| config.max_connections_per_address = 2).await;
    let first = server.ws().await;
    let _second = server.ws().await;
    assert_eq!(GqlClient::try_open(server.addr, &[]).await.err(), Some(429));
    drop(first);
    // The slot is given back once the first connection has closed (every
    // connection counts, so no metrics request in between).
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while GqlClient::try_open(server.addr, &[]).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn random_frames_never_take_the_server_down() {
    let server = server_with_items().await;
    let mut rng = common::Rng::seeded();
    let pieces = [
        "{",
        "}",
        "\"type\"",
        ":",
        "\"subscribe\"",
        "\"connection_init\"",
        "\"id\"",
        "\"1\"",
        ",",
        "\"payload\"",
        "{\"query\":\"subscription { changes(table: \\\"items\\\") { op } }\"}",
        "null",
        "[",
        "]",
        "\"complete\"",
        "\"ping\"",
        "9999999999999999999999",
        "\"\\u0000\"",
        "\u{fffd}",
    ];
    let mut client = server.ws().await;
    for _ in 0..300 {
        let text: String = (0..1 + rng.below(12))
            .map(|_| pieces[rng.below(pieces.len() as u64) as usize])
            .collect();
        client.send_text(&text).await;
        // Whatever it answered (or whether it closed), carry on with a
        // fresh socket when this one is gone.
        if client
            .try_next_message_or_close(Duration::from_millis(20))
            .await
        {
            client = server.ws().await;
        }
    }
    let health = reqwest::get(server.url("/healthz")).await.unwrap();
    assert!(health.status().is_success());
    let mut fresh = server.ws().await;
    fresh
        .subscribe("ok", CHANGES, json!({"table": "items"}))
        .await;
    wait_for_metric(&server, "tidewire_hub_subscribers", |v| v >= 1.0).await;
    server.sql("INSERT INTO items VALUES (99)").await;
    assert_eq!(fresh.next_item("ok", "changes").await["row"]["id"], 99);
}
