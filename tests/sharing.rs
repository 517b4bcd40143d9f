//! Shared executions: who shares one (the visibility class, never the
//! session), a member that falls behind and comes back, and what a stalled
//! member may pin.

mod common;

use std::time::Duration;

use common::{
    client_with_token, token, wait_for_metric, wait_for_shared_subscribers, write_mebibyte_rows,
    GqlClient, TestServer, CHANGES,
};
use serde_json::json;

const SECRET: &str = "a-sharing-test-secret-long-enough-1234";

async fn server_with(adjust: impl FnOnce(&mut tidewire::config::Config)) -> TestServer {
    let server = TestServer::start_with(|config| {
        config.jwt_secret = Some(SECRET.into());
        adjust(config);
    })
    .await;
    server
        .sql(
            "CREATE TABLE items (id bigint PRIMARY KEY, body text);
             SELECT tidewire.track('items', public => true);
             CREATE TABLE notes (id bigint PRIMARY KEY, owner_id text, body text);
             SELECT tidewire.track('notes', owner_column => 'owner_id');",
        )
        .await;
    server
}

/// Two members of one shared execution on `items`: one whose socket
/// barely buffers and that the test does not read yet, one it reads.
async fn stalled_and_fast(server: &TestServer) -> (GqlClient, GqlClient) {
    let mut stalled = GqlClient::connect_small_buffer(server.addr).await;
    stalled
        .subscribe("s", CHANGES, json!({"table": "items"}))
        .await;
    let mut fast = server.ws().await;
    fast.subscribe("f", CHANGES, json!({"table": "items"}))
        .await;
    wait_for_shared_subscribers(server, 2, 1).await;
    (stalled, fast)
}

async fn user(server: &TestServer, name: &str) -> GqlClient {
    client_with_token(server.addr, &token(SECRET, name, "user", 600)).await
}

#[tokio::test]
async fn signed_in_users_share_one_execution_per_visibility_class() {
    let server = server_with(|_| {}).await;
    let mut ann = user(&server, "ann").await;
    let mut ben = user(&server, "ben").await;
    let mut anonymous = server.ws().await;
    let mut admin = client_with_token(server.addr, &token(SECRET, "root", "admin", 600)).await;
    for client in [&mut ann, &mut ben, &mut anonymous, &mut admin] {
        client
            .subscribe("i", CHANGES, json!({"table": "items"}))
            .await;
    }
    // Four viewers of a public table: one execution, one feed.
    wait_for_shared_subscribers(&server, 4, 1).await;
    assert_eq!(server.metric("tidewire_shared_executions").await, 1.0);

    // An owner table: one execution per owner, shared by that owner's
    // sockets; admins share theirs.
    let mut ann_again = user(&server, "ann").await;
    for client in [&mut ann, &mut ann_again, &mut ben, &mut admin] {
        client
            .subscribe("n", CHANGES, json!({"table": "notes"}))
            .await;
    }
    wait_for_shared_subscribers(&server, 8, 4).await;
    assert_eq!(server.metric("tidewire_shared_executions").await, 4.0);

    server
        .sql(
            "INSERT INTO items VALUES (1, 'for all');
             INSERT INTO notes VALUES (1, 'ann', 'ann only'), (2, 'ben', 'ben only');",
        )
        .await;
    for client in [&mut ann, &mut ben, &mut anonymous, &mut admin] {
        assert_eq!(
            client.next_item("i", "changes").await["row"]["body"],
            "for all"
        );
    }
    for client in [&mut ann, &mut ann_again] {
        let item = client.next_item("n", "changes").await;
        assert_eq!(item["row"]["body"], "ann only");
    }
    assert_eq!(
        ben.next_item("n", "changes").await["row"]["body"],
        "ben only"
    );
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(admin.next_item("n", "changes").await["row"]["id"].clone());
    }
    assert_eq!(seen, vec![json!(1), json!(2)]);
    for client in [&mut ann, &mut ann_again, &mut ben] {
        client.assert_quiet(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_users_notifications_share_one_execution_per_user() {
    let server = server_with(|_| {}).await;
    let query = "subscription { notifications { cursor title } }";
    let mut first = user(&server, "ann").await;
    let mut second = user(&server, "ann").await;
    let mut other = user(&server, "ben").await;
    for client in [&mut first, &mut second, &mut other] {
        client.subscribe("n", query, json!({})).await;
    }
    wait_for_shared_subscribers(&server, 3, 2).await;
    assert_eq!(server.metric("tidewire_shared_executions").await, 2.0);
    server
        .sql(
            "INSERT INTO tidewire.notifications (user_id, title, message)
             VALUES ('ann', 'for ann', 'm'), ('ben', 'for ben', 'm')",
        )
        .await;
    for client in [&mut first, &mut second] {
        assert_eq!(
            client.next_item("n", "notifications").await["title"],
            "for ann"
        );
    }
    assert_eq!(
        other.next_item("n", "notifications").await["title"],
        "for ben"
    );
    first.assert_quiet(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_fell_behind_catches_up_and_rejoins_its_group() {
    const ROWS: i64 = 400;
    let server = server_with(|config| {
        config.group_buffer = 8;
        config.topic_buffer = 16;
    })
    .await;
    let (mut stalled, mut fast) = stalled_and_fast(&server).await;

    let db = server.db().await;
    for batch in 0..ROWS / 50 {
        db.execute(
            "INSERT INTO items SELECT g, repeat('x', 2000) FROM generate_series($1::bigint, $2::bigint) g",
            &[&(batch * 50 + 1), &(batch * 50 + 50)],
        )
        .await
        .unwrap();
    }
    for id in 1..=ROWS {
        assert_eq!(fast.next_item("f", "changes").await["row"]["id"], id);
    }
    wait_for_metric(&server, "tidewire_feed_catchups_total", |v| v >= 1.0).await;
    for id in 1..=ROWS {
        assert_eq!(stalled.next_item("s", "changes").await["row"]["id"], id);
    }
    // Caught up: the next change brings it back into the group, whose one
    // feed then serves both again.
    server.sql("INSERT INTO items VALUES (1000, 'after')").await;
    assert_eq!(stalled.next_item("s", "changes").await["row"]["id"], 1000);
    assert_eq!(fast.next_item("f", "changes").await["row"]["id"], 1000);
    wait_for_shared_subscribers(&server, 2, 1).await;
    server
        .sql("INSERT INTO items VALUES (1001, 'shared again')")
        .await;
    assert_eq!(stalled.next_item("s", "changes").await["row"]["id"], 1001);
    assert_eq!(fast.next_item("f", "changes").await["row"]["id"], 1001);
    stalled.assert_quiet(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_member_pins_at_most_the_group_byte_budget() {
    const BUDGET: usize = 3 << 20;
    let server = server_with(|config| {
        config.group_buffer_bytes = BUDGET;
        config.topic_buffer = 4;
        config.max_queued_bytes = 256 * 1024;
    })
    .await;
    let (mut stalled, mut fast) = stalled_and_fast(&server).await;

    // 1 MiB rows: the default group buffer of 4,096 results would hold all.
    let most = write_mebibyte_rows(
        &server,
        "items",
        1..=24,
        &mut fast,
        "f",
        "tidewire_shared_buffered_bytes",
    )
    .await;
    println!("most buffered for the stalled member: {most} bytes");
    assert!(
        most <= (BUDGET + (1 << 20) + 4096) as f64,
        "a stalled member pinned {most} bytes, over the {BUDGET} budget"
    );
    assert!(
        most >= (1 << 20) as f64,
        "the ring held results for the stalled member"
    );
    // It still gets everything, from the log, in order.
    for id in 1..=24 {
        assert_eq!(stalled.next_item("s", "changes").await["row"]["id"], id);
    }
}

#[tokio::test]
async fn a_variables_default_counts_when_deciding_to_share() {
    let server = server_with(|_| {}).await;
    let mut watcher = server.ws().await;
    watcher
        .subscribe("w", CHANGES, json!({"table": "items"}))
        .await;
    wait_for_shared_subscribers(&server, 1, 1).await;
    server
        .sql("INSERT INTO items VALUES (1, 'one'); INSERT INTO items VALUES (2, 'two');")
        .await;
    let first = watcher.next_item("w", "changes").await;
    assert_eq!(watcher.next_item("w", "changes").await["row"]["id"], 2);
    // `after` comes from the variable's default: a replay, not a live
    // stream to share.
    let query = format!(
        "subscription($after: String = \"{}\") {{ changes(table: \"items\", after: $after) {{ cursor row }} }}",
        first["cursor"].as_str().unwrap()
    );
    let mut late = server.ws().await;
    late.subscribe("r", &query, json!({})).await;
    assert_eq!(late.next_item("r", "changes").await["row"]["id"], 2);
}
