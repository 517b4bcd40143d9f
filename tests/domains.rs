//! Built-in domain streams over the real WebSocket: notifications (only
//! your own; throttled; batched) and stock prices (current first, then
//! updates; throttled to the newest).

mod common;

use std::time::Duration;

use common::{wait_for_subscribers, GqlClient, TestServer};
use serde_json::{json, Value};

const SECRET: &str = "domains-secret-domains-secret-000001";

fn token(sub: &str, role: &str) -> String {
    common::token(SECRET, sub, role, 600)
}

async fn server() -> TestServer {
    TestServer::start_with(|config| config.jwt_secret = Some(SECRET.into())).await
}

async fn client_as(server: &TestServer, sub: &str, role: &str) -> GqlClient {
    common::client_with_token(server.addr, &token(sub, role)).await
}

async fn as_admin(server: &TestServer, query: &str, variables: Value) -> Value {
    server
        .graphql(Some(&token("root", "admin")), query, variables)
        .await
}

/// An account in `server`'s database: its id, for a token's `sub` and
/// `sendNotification(userId:)`.
async fn account(server: &TestServer, name: &str) -> String {
    server
        .db()
        .await
        .query_one(
            "INSERT INTO tidewire.users (email, password_hash) VALUES ($1, 'unused')
             RETURNING id::text",
            &[&format!("{name}@example.com")],
        )
        .await
        .unwrap()
        .get(0)
}

const SEND: &str = "mutation($u: ID!, $t: String!) { sendNotification(userId: $u, title: $t, message: \"m\") { id } }";
const PUBLISH: &str =
    "mutation($s: String!, $v: Float!) { publishStockPrice(symbol: $s, value: $v) }";

#[tokio::test]
async fn users_receive_only_their_own_notifications() {
    let server = server().await;
    let (ann_id, ben_id) = (account(&server, "ann").await, account(&server, "ben").await);
    let mut ann = client_as(&server, &ann_id, "user").await;
    let mut ben = client_as(&server, &ben_id, "user").await;
    let sub = "subscription { notifications { title userId cursor } }";
    ann.subscribe("n", sub, json!({})).await;
    ben.subscribe("n", sub, json!({})).await;
    wait_for_subscribers(&server, 2).await;
    for (user, title) in [(&ann_id, "a1"), (&ben_id, "b1"), (&ann_id, "a2")] {
        let sent = as_admin(&server, SEND, json!({"u": user, "t": title})).await;
        assert!(sent["data"]["sendNotification"]["id"].is_string(), "{sent}");
    }
    assert_eq!(ann.next_item("n", "notifications").await["title"], "a1");
    assert_eq!(ann.next_item("n", "notifications").await["title"], "a2");
    let b = ben.next_item("n", "notifications").await;
    assert_eq!(
        (b["title"].as_str(), b["userId"].as_str()),
        (Some("b1"), Some(ben_id.as_str()))
    );
    ben.assert_quiet(Duration::from_millis(300)).await;

    // Not an admin: no reading others', no sending.
    ben.subscribe(
        "x",
        "subscription($u: ID) { notifications(userId: $u) { title } }",
        json!({"u": ann_id}),
    )
    .await;
    assert_eq!(
        ben.next_payload("x").await["errors"][0]["extensions"]["code"],
        "FORBIDDEN"
    );
    ben.subscribe("s", SEND, json!({"u": ann_id, "t": "spam"}))
        .await;
    assert_eq!(
        ben.next_payload("s").await["errors"][0]["extensions"]["code"],
        "FORBIDDEN"
    );

    // The query pages through one's own, and marking read is for the owner.
    ann.subscribe(
        "q",
        "{ notifications(first: 1) { id title read } }",
        json!({}),
    )
    .await;
    let newest = ann.next_item("q", "notifications").await;
    assert_eq!(newest[0]["title"], "a2");
    let id = newest[0]["id"].clone();
    ben.subscribe(
        "m",
        "mutation($i: ID!) { markNotificationRead(id: $i) { read } }",
        json!({"i": id}),
    )
    .await;
    assert_eq!(
        ben.next_payload("m").await["errors"][0]["extensions"]["code"],
        "NOT_FOUND"
    );
    ann.subscribe(
        "m",
        "mutation($i: ID!) { markNotificationRead(id: $i) { read } }",
        json!({"i": id}),
    )
    .await;
    assert_eq!(
        ann.next_item("m", "markNotificationRead").await["read"],
        true
    );
}

#[tokio::test]
async fn notification_batches_go_out_full_or_after_the_wait() {
    let server = server().await;
    let ann_id = account(&server, "ann").await;
    let mut ann = client_as(&server, &ann_id, "user").await;
    ann.subscribe(
        "b",
        "subscription { notificationBatches(maxSize: 3, maxWaitMs: 400) { title } }",
        json!({}),
    )
    .await;
    wait_for_subscribers(&server, 1).await;
    for title in ["1", "2", "3", "4"] {
        as_admin(&server, SEND, json!({"u": ann_id, "t": title})).await;
    }
    let titles = |batch: Value| -> Vec<String> {
        batch
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["title"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        titles(ann.next_item("b", "notificationBatches").await),
        ["1", "2", "3"]
    );
    // The fourth waits for maxWaitMs, alone.
    let started = std::time::Instant::now();
    assert_eq!(
        titles(ann.next_item("b", "notificationBatches").await),
        ["4"]
    );
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn stock_sends_the_current_price_first_then_updates() {
    let server = server().await;
    assert_eq!(
        as_admin(&server, PUBLISH, json!({"s": "ACME", "v": 10.0})).await["data"]
            ["publishStockPrice"],
        true
    );
    as_admin(&server, PUBLISH, json!({"s": "ACME", "v": 12.5})).await;
    as_admin(&server, PUBLISH, json!({"s": "OTHER", "v": 1.0})).await;
    let mut client = server.ws().await;
    client
        .subscribe(
            "s",
            "subscription { stock(symbol: \"acme\") { symbol value change } }",
            json!({}),
        )
        .await;
    assert_eq!(
        client.next_item("s", "stock").await,
        json!({"symbol": "ACME", "value": 12.5, "change": 2.5})
    );
    wait_for_subscribers(&server, 1).await;
    as_admin(&server, PUBLISH, json!({"s": "OTHER", "v": 2.0})).await;
    as_admin(&server, PUBLISH, json!({"s": "ACME", "v": 11.0})).await;
    assert_eq!(
        client.next_item("s", "stock").await,
        json!({"symbol": "ACME", "value": 11.0, "change": -1.5})
    );
    client.assert_quiet(Duration::from_millis(300)).await;

    let denied = reqwest::Client::new()
        .post(server.url("/graphql"))
        .header("authorization", format!("Bearer {}", token("ann", "user")))
        .json(&json!({"query": PUBLISH, "variables": {"s": "ACME", "v": 1.0}}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(denied["errors"][0]["extensions"]["code"], "FORBIDDEN");
}

#[tokio::test]
async fn a_throttled_stock_stream_ends_each_interval_on_the_newest_price() {
    let server = server().await;
    as_admin(&server, PUBLISH, json!({"s": "TICK", "v": 1.0})).await;
    let mut client = server.ws().await;
    client
        .subscribe(
            "s",
            "subscription { stock(symbol: \"TICK\", throttleMs: 500) { value } }",
            json!({}),
        )
        .await;
    assert_eq!(client.next_item("s", "stock").await["value"], 1.0);
    wait_for_subscribers(&server, 1).await;
    for value in 2..=6 {
        as_admin(&server, PUBLISH, json!({"s": "TICK", "v": value as f64})).await;
    }
    // Within the first interval after the snapshot at most one more item
    // goes out; by the end the newest (6) has arrived and nothing after it.
    let mut values = Vec::new();
    while values.last() != Some(&6.0) {
        values.push(
            client.next_item("s", "stock").await["value"]
                .as_f64()
                .unwrap(),
        );
    }
    assert!(
        values.len() <= 3,
        "throttled to at most one per interval: {values:?}"
    );
    client.assert_quiet(Duration::from_millis(700)).await;
}

/// Reads dashboard items until `ok` holds for one; returns it.
async fn dashboard_until(client: &mut GqlClient, ok: impl Fn(&Value) -> bool) -> Value {
    loop {
        let item = client.next_item("d", "dashboard").await;
        if ok(&item) {
            return item;
        }
    }
}

#[tokio::test]
async fn the_dashboard_counts_users_on_every_node_and_todays_revenue() {
    let one = server().await;
    let two = TestServer::start_on(one.database_url.clone(), |config| {
        config.jwt_secret = Some(SECRET.into())
    })
    .await;
    let mut ann = client_as(&one, "ann", "user").await;
    ann.subscribe("d", "subscription { dashboard(intervalMs: 200) { activeUsers revenueToday requestsPerSecond } }", json!({}))
        .await;
    let first = ann.next_item("d", "dashboard").await;
    assert_eq!(first["revenueToday"], 0.0, "{first}");
    dashboard_until(&mut ann, |d| d["activeUsers"] == 1).await;

    // A user connected to the other node counts too.
    let _ben = client_as(&two, "ben", "user").await;
    dashboard_until(&mut ann, |d| d["activeUsers"] == 2).await;

    ann.subscribe("o", "mutation { recordOrder(amount: 12.5) }", json!({}))
        .await;
    dashboard_until(&mut ann, |d| d["revenueToday"] == 12.5).await;

    // Requests are counted: a burst of 30 shows in the rate.
    for _ in 0..30 {
        one.post("{ trackedTables }", json!({})).await;
    }
    dashboard_until(&mut ann, |d| {
        d["requestsPerSecond"].as_f64().unwrap_or(0.0) >= 10.0
    })
    .await;

    let mut anonymous = one.ws().await;
    anonymous
        .subscribe("d", "subscription { dashboard { activeUsers } }", json!({}))
        .await;
    assert_eq!(
        anonymous.next_payload("d").await["errors"][0]["extensions"]["code"],
        "UNAUTHENTICATED"
    );
}

#[tokio::test]
async fn a_debounced_stock_stream_waits_for_quiet() {
    let server = server().await;
    let mut client = server.ws().await;
    client
        .subscribe(
            "s",
            "subscription { stock(symbol: \"CALM\", debounceMs: 400) { value } }",
            json!({}),
        )
        .await;
    wait_for_subscribers(&server, 1).await;
    for value in [1.0, 2.0, 3.0] {
        as_admin(&server, PUBLISH, json!({"s": "CALM", "v": value})).await;
    }
    // One item, the last, once the burst is over.
    assert_eq!(client.next_item("s", "stock").await["value"], 3.0);
    client.assert_quiet(Duration::from_millis(700)).await;
}

#[tokio::test]
async fn an_undecodable_notification_is_an_error_on_that_item_only() {
    let server = server().await;
    let ann_id = account(&server, "ann").await;
    let mut ann = client_as(&server, &ann_id, "user").await;
    ann.subscribe("n", "subscription { notifications { title } }", json!({}))
        .await;
    wait_for_subscribers(&server, 1).await;
    // A change whose row lacks the notification's fields.
    server
        .sql(&format!(
            "INSERT INTO tidewire.changes (topic, table_name, op, new_row)
             VALUES ('notifications', 'tidewire.notifications', 'INSERT', '{{\"user_id\": \"{ann_id}\"}}')",
        ))
        .await;
    let payload = ann.next_payload("n").await;
    assert_eq!(
        payload["errors"][0]["extensions"]["code"], "INTERNAL",
        "{payload}"
    );
    // The stream goes on.
    as_admin(&server, SEND, json!({"u": ann_id, "t": "fine"})).await;
    assert_eq!(ann.next_item("n", "notifications").await["title"], "fine");
}

#[tokio::test]
async fn batch_sizes_are_bounded() {
    let server = server().await;
    let mut ann = client_as(&server, "ann", "user").await;
    ann.subscribe(
        "b",
        "subscription { notificationBatches(maxSize: 1000000) { title } }",
        json!({}),
    )
    .await;
    assert_eq!(
        ann.next_payload("b").await["errors"][0]["extensions"]["code"],
        "BAD_USER_INPUT"
    );
}

#[tokio::test]
async fn send_notification_names_what_was_refused_and_needs_an_account() {
    let server = server().await;
    let code = |body: &Value| body["errors"][0]["extensions"]["code"].clone();
    let anonymous = server
        .graphql(None, SEND, json!({"u": "someone", "t": "t"}))
        .await;
    assert_eq!(code(&anonymous), "UNAUTHENTICATED", "{anonymous}");
    assert_eq!(
        anonymous["errors"][0]["message"], "sign in to send notifications",
        "{anonymous}"
    );

    // An id no account has, and something that is no id at all.
    let unknown = json!({"u": "0b6f2a2e-9a41-4a7e-8f5e-1d2c3b4a5f60", "t": "t"});
    let unknown = as_admin(&server, SEND, unknown).await;
    assert_eq!(code(&unknown), "NOT_FOUND", "{unknown}");
    let malformed = as_admin(&server, SEND, json!({"u": "ann", "t": "t"})).await;
    assert_eq!(code(&malformed), "BAD_USER_INPUT", "{malformed}");
    let stored: i64 = server
        .db()
        .await
        .query_one("SELECT count(*) FROM tidewire.notifications", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0);

    let ann_id = account(&server, "ann").await;
    let sent = as_admin(&server, SEND, json!({"u": ann_id, "t": "t"})).await;
    assert!(sent["data"]["sendNotification"]["id"].is_string(), "{sent}");
}

#[tokio::test]
async fn a_dashboard_interval_below_the_minimum_is_refused() {
    let server = server().await;
    let mut ann = client_as(&server, "ann", "user").await;
    let query = "subscription($i: Int!) { dashboard(intervalMs: $i) { activeUsers } }";
    ann.subscribe("d", query, json!({"i": 50})).await;
    let payload = ann.next_payload("d").await;
    assert_eq!(
        payload["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{payload}"
    );
    let message = payload["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("at least 200"), "{payload}");

    ann.subscribe("e", query, json!({"i": 200})).await;
    assert!(ann.next_item("e", "dashboard").await["activeUsers"].is_number());
}
