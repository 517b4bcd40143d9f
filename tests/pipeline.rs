//! The change pipeline end to end: a write in Postgres arrives at a real
//! WebSocket subscriber.

mod common;

use std::time::Duration;

use common::{wait_for_subscribers, TestServer, CHANGES, WAIT};
use serde_json::{json, Value};

async fn server_with_items() -> TestServer {
    let server = TestServer::start().await;
    server
        .sql(
            "CREATE TABLE items (id int PRIMARY KEY, name text, status text);
             SELECT tidewire.track('items', public => true);",
        )
        .await;
    server
}

#[tokio::test]
async fn insert_update_delete_arrive_in_commit_order_with_their_rows() {
    let server = server_with_items().await;
    let mut client = server.ws().await;
    client
        .subscribe("1", CHANGES, json!({"table": "items"}))
        .await;
    // The subscription is registered once the server has resolved it; a
    // write before that would be "before the subscription".
    wait_for_subscribers(&server, 1).await;

    server
        .sql(
            "INSERT INTO items VALUES (1, 'one', 'new'), (2, 'two', 'new');
             UPDATE items SET status = 'done' WHERE id = 1;
             DELETE FROM items WHERE id = 2;",
        )
        .await;

    let first = client.next_item("1", "changes").await;
    assert_eq!(first["table"], "public.items");
    assert_eq!(first["op"], "INSERT");
    assert_eq!(
        first["row"],
        json!({"id": 1, "name": "one", "status": "new"})
    );
    assert_eq!(first["oldRow"], Value::Null);
    let committed: chrono::DateTime<chrono::Utc> = first["committedAt"]
        .as_str()
        .unwrap()
        .parse()
        .expect("committedAt is an RFC 3339 timestamp");
    let age = chrono::Utc::now() - committed;
    assert!(
        age.num_seconds().abs() < 60,
        "committedAt is the commit's time: {committed}"
    );

    let second = client.next_item("1", "changes").await;
    assert_eq!(
        (second["op"].as_str(), second["row"]["id"].as_i64()),
        (Some("INSERT"), Some(2))
    );

    let update = client.next_item("1", "changes").await;
    assert_eq!(update["op"], "UPDATE");
    assert_eq!(
        update["row"],
        json!({"id": 1, "name": "one", "status": "done"})
    );
    assert_eq!(
        update["oldRow"],
        json!({"id": 1, "name": "one", "status": "new"})
    );

    let delete = client.next_item("1", "changes").await;
    assert_eq!(delete["op"], "DELETE");
    assert_eq!(delete["row"], Value::Null);
    assert_eq!(
        delete["oldRow"],
        json!({"id": 2, "name": "two", "status": "new"})
    );

    let cursors: Vec<&str> = [&first, &second, &update, &delete]
        .iter()
        .map(|c| c["cursor"].as_str().unwrap())
        .collect();
    // Commit order: each cursor is after the one before it.
    let positions: Vec<tidewire::db::Cursor> = cursors
        .iter()
        .map(|c| c.parse().expect("a cursor"))
        .collect();
    assert!(
        positions.windows(2).all(|pair| pair[0] < pair[1]),
        "cursors must increase: {cursors:?}"
    );
}

#[tokio::test]
async fn transactions_arrive_in_commit_order_not_start_order() {
    let server = server_with_items().await;
    let mut client = server.ws().await;
    client
        .subscribe("1", CHANGES, json!({"table": "items"}))
        .await;
    wait_for_subscribers(&server, 1).await;

    // `early` writes first but commits last.
    let early = server.db().await;
    let late = server.db().await;
    early
        .batch_execute("BEGIN; INSERT INTO items VALUES (1, 'early', 'x')")
        .await
        .unwrap();
    late.batch_execute("BEGIN; INSERT INTO items VALUES (2, 'late', 'x'); COMMIT")
        .await
        .unwrap();
    early.batch_execute("COMMIT").await.unwrap();
    // A rolled-back write never appears.
    late.batch_execute("BEGIN; INSERT INTO items VALUES (3, 'gone', 'x'); ROLLBACK")
        .await
        .unwrap();
    late.batch_execute("INSERT INTO items VALUES (4, 'last', 'x')")
        .await
        .unwrap();

    let names: Vec<Value> = [
        client.next_item("1", "changes").await,
        client.next_item("1", "changes").await,
        client.next_item("1", "changes").await,
    ]
    .iter()
    .map(|c| c["row"]["name"].clone())
    .collect();
    assert_eq!(names, [json!("late"), json!("early"), json!("last")]);
}

#[tokio::test]
async fn where_keeps_only_matching_rows() {
    let server = server_with_items().await;
    let mut client = server.ws().await;
    client
        .subscribe(
            "1",
            CHANGES,
            json!({"table": "items", "where": {"status": "open"}}),
        )
        .await;
    client
        .subscribe(
            "2",
            CHANGES,
            json!({"table": "items", "where": {"id": {"_gte": 3}}}),
        )
        .await;
    wait_for_subscribers(&server, 2).await;

    server
        .sql(
            "INSERT INTO items VALUES (1, 'a', 'closed'), (2, 'b', 'open'), (3, 'c', 'closed');
             INSERT INTO items VALUES (4, 'd', 'open');",
        )
        .await;
    assert_eq!(client.next_item("1", "changes").await["row"]["id"], 2);
    assert_eq!(client.next_item("1", "changes").await["row"]["id"], 4);

    let mut others = Vec::new();
    for _ in 0..2 {
        others.push(client.next_item("2", "changes").await["row"]["id"].clone());
    }
    assert_eq!(others, [json!(3), json!(4)]);
    client.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_bad_where_is_rejected_with_bad_user_input() {
    let server = server_with_items().await;
    let mut client = server.ws().await;
    client
        .subscribe(
            "1",
            CHANGES,
            json!({"table": "items", "where": {"nope; DROP TABLE items": 1}}),
        )
        .await;
    let payload = client.next_payload("1").await;
    assert_eq!(
        payload["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{payload}"
    );
    assert!(payload["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("does not have"));
}

#[tokio::test]
async fn two_subscriptions_share_one_socket() {
    let server = TestServer::start().await;
    server
        .sql(
            "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);
             SELECT tidewire.track('a', public => true); SELECT tidewire.track('public.b', public => true);",
        )
        .await;
    let mut client = server.ws().await;
    client.subscribe("a", CHANGES, json!({"table": "a"})).await;
    client
        .subscribe("b", CHANGES, json!({"table": "public.b"}))
        .await;
    wait_for_subscribers(&server, 2).await;

    server
        .sql("INSERT INTO b VALUES (20); INSERT INTO a VALUES (10);")
        .await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let message = client.next_message().await;
        assert_eq!(message["type"], "next");
        seen.push((
            message["id"].as_str().unwrap().to_owned(),
            message["payload"]["data"]["changes"]["row"]["id"].clone(),
        ));
    }
    seen.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(seen, [("a".into(), json!(10)), ("b".into(), json!(20))]);

    // Completing one leaves the other running.
    client.complete("a").await;
    wait_for_subscribers(&server, 1).await;
    server
        .sql("INSERT INTO a VALUES (11); INSERT INTO b VALUES (21);")
        .await;
    assert_eq!(client.next_item("b", "changes").await["row"]["id"], 21);
}

#[tokio::test]
async fn legacy_graphql_ws_protocol_works() {
    let server = server_with_items().await;
    let mut client = server.ws_legacy().await;
    client
        .subscribe("7", CHANGES, json!({"table": "items"}))
        .await;
    wait_for_subscribers(&server, 1).await;
    server
        .sql("INSERT INTO items VALUES (1, 'legacy', 'x')")
        .await;
    let message = client.next_message().await;
    assert_eq!(message["type"], "data", "{message}");
    assert_eq!(message["id"], "7");
    assert_eq!(
        message["payload"]["data"]["changes"]["row"]["name"],
        "legacy"
    );
}

#[tokio::test]
async fn an_untracked_table_gets_bad_user_input() {
    let server = TestServer::start().await;
    server.sql("CREATE TABLE secret (id int)").await;
    let mut client = server.ws().await;
    for table in ["secret", "missing", "x'; DROP TABLE secret; --"] {
        client
            .subscribe(table, CHANGES, json!({"table": table}))
            .await;
        let payload = client.next_payload(table).await;
        assert_eq!(
            payload["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{payload}"
        );
        assert!(payload["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not tracked"));
    }
    // Nothing was dropped.
    server.sql("SELECT * FROM secret").await;
}

#[tokio::test]
async fn a_malformed_cursor_gets_bad_user_input() {
    let server = server_with_items().await;
    let mut client = server.ws().await;
    client
        .subscribe(
            "1",
            CHANGES,
            json!({"table": "items", "after": "not-a-cursor"}),
        )
        .await;
    let payload = client.next_payload("1").await;
    assert_eq!(
        payload["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{payload}"
    );
}

#[tokio::test]
async fn after_replays_what_was_missed_then_goes_live() {
    let server = server_with_items().await;
    let mut client = server.ws().await;
    client
        .subscribe("1", CHANGES, json!({"table": "items"}))
        .await;
    wait_for_subscribers(&server, 1).await;
    server
        .sql("INSERT INTO items VALUES (1, 'seen', 'x')")
        .await;
    let seen = client.next_item("1", "changes").await;
    drop(client);

    // Written while nobody listens.
    server
        .sql("INSERT INTO items VALUES (2, 'missed', 'x'); UPDATE items SET name = 'missed too' WHERE id = 1;")
        .await;

    let mut client = server.ws().await;
    client
        .subscribe(
            "1",
            CHANGES,
            json!({"table": "items", "after": seen["cursor"]}),
        )
        .await;
    assert_eq!(
        client.next_item("1", "changes").await["row"]["name"],
        "missed"
    );
    assert_eq!(
        client.next_item("1", "changes").await["row"]["name"],
        "missed too"
    );
    server
        .sql("INSERT INTO items VALUES (3, 'live', 'x')")
        .await;
    assert_eq!(
        client.next_item("1", "changes").await["row"]["name"],
        "live"
    );
    client.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn readyz_follows_the_listener_and_no_event_is_lost_while_it_is_down() {
    let server = TestServer::start_with(|config| {
        // Slow enough that the test sees the listener down.
        config.listener_backoff = Duration::from_millis(700);
    })
    .await;
    server
        .sql("CREATE TABLE items (id int PRIMARY KEY); SELECT tidewire.track('items', public => true);")
        .await;
    let mut client = server.ws().await;
    client
        .subscribe("1", CHANGES, json!({"table": "items"}))
        .await;
    wait_for_subscribers(&server, 1).await;
    server.sql("INSERT INTO items VALUES (1)").await;
    assert_eq!(client.next_item("1", "changes").await["row"]["id"], 1);

    let db = server.db().await;
    let killed: bool = db
        .query_one(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE application_name = 'tidewire-listener' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    // Written while the listener is gone.
    db.batch_execute("INSERT INTO items VALUES (2); INSERT INTO items VALUES (3);")
        .await
        .unwrap();

    let deadline = tokio::time::Instant::now() + WAIT;
    while server.ready().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never turned false"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.wait_ready().await;
    db.batch_execute("INSERT INTO items VALUES (4)")
        .await
        .unwrap();
    for id in 2..=4 {
        assert_eq!(client.next_item("1", "changes").await["row"]["id"], id);
    }
    client.assert_quiet(Duration::from_millis(300)).await;
    assert_eq!(
        server.metric("tidewire_listener_reconnects_total").await,
        1.0
    );
}

#[tokio::test]
async fn graphiql_playground_and_health_are_served() {
    let server = TestServer::start().await;
    let graphiql = reqwest::get(server.url("/graphql")).await.unwrap();
    assert!(graphiql.status().is_success());
    let page = graphiql.text().await.unwrap();
    assert!(page.to_lowercase().contains("graphiql"));
    assert!(
        page.contains("/graphql"),
        "subscriptions endpoint configured"
    );

    let playground = reqwest::get(server.url("/playground"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(playground.contains("GraphQL Playground"));

    let health = reqwest::get(server.url("/healthz")).await.unwrap();
    assert!(health.status().is_success());
    assert!(server.ready().await);
}

#[tokio::test]
async fn queries_over_http_post() {
    let server = server_with_items().await;
    let response = server.post("{ trackedTables }", json!({})).await;
    let tables = response["data"]["trackedTables"]
        .as_array()
        .unwrap()
        .clone();
    assert!(tables.contains(&json!("public.items")), "{tables:?}");
    // The built-in public domain table is tracked too; owner-scoped
    // notifications are listed only to signed-in users.
    assert!(
        tables.contains(&json!("tidewire.stock_prices")),
        "{tables:?}"
    );
    assert!(
        !tables.contains(&json!("tidewire.notifications")),
        "{tables:?}"
    );
    let response = server.post("{ nope }", json!({})).await;
    assert!(response["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("nope"));
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001_and_releases_subscriptions() {
    let server = server_with_items().await;
    let mut client = server.ws().await;
    client
        .subscribe("1", CHANGES, json!({"table": "items"}))
        .await;
    wait_for_subscribers(&server, 1).await;
    assert_eq!(server.metric("tidewire_websocket_connections").await, 1.0);
    let closing = tokio::spawn(async move { client.closed().await });
    server.shutdown().await;
    let (code, reason) = tokio::time::timeout(WAIT, closing).await.unwrap().unwrap();
    assert_eq!(code, 1001);
    assert_eq!(reason, "server shutting down");
}
