//! Invariants 1–7 of ARCHITECTURE.md: no loss, no duplicates, commit order,
//! resume, retention, slow consumers, large rows, cleanup.

mod common;

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use common::{
    wait_for_metric, wait_for_shared_subscribers, wait_for_subscribers, write_mebibyte_rows,
    GqlClient, Rng, TestServer, CHANGES, WAIT,
};
use serde_json::{json, Value};
use tidewire::db::Cursor;

/// Reads `n` items of subscription `id`, returning each row's `id` column
/// and the last cursor.
async fn read_ids(client: &mut GqlClient, id: &str, n: usize) -> (Vec<i64>, Option<String>) {
    let mut ids = Vec::with_capacity(n);
    let mut cursor = None;
    for _ in 0..n {
        let item = client.next_item(id, "changes").await;
        ids.push(item["row"]["id"].as_i64().expect("row id"));
        cursor = item["cursor"].as_str().map(String::from);
    }
    (ids, cursor)
}

struct Txn {
    ids: Vec<i64>,
    began: Instant,
    committed: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_arrive_exactly_once_in_commit_order() {
    const WRITERS: i64 = 8;
    const TXNS: i64 = 80;
    let server = TestServer::start().await;
    server
        .sql("CREATE TABLE events (id bigint PRIMARY KEY, writer int); SELECT tidewire.track('events', public => true);")
        .await;
    let mut subscribers = Vec::new();
    for _ in 0..2 {
        let mut client = server.ws().await;
        client
            .subscribe("e", CHANGES, json!({"table": "events"}))
            .await;
        subscribers.push(client);
    }
    // Identical subscriptions: one shared execution.
    wait_for_shared_subscribers(&server, 2, 1).await;
    assert_eq!(server.metric("tidewire_shared_executions").await, 1.0);

    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let db = server.db().await;
        writers.push(tokio::spawn(async move {
            let mut rng = Rng::seeded();
            let mut committed = Vec::new();
            for txn in 0..TXNS {
                let began = Instant::now();
                db.batch_execute("BEGIN").await.unwrap();
                let rows = 1 + rng.below(4) as i64;
                let ids: Vec<i64> = (0..rows)
                    .map(|step| writer * 100_000 + txn * 10 + step)
                    .collect();
                for id in &ids {
                    db.execute(
                        "INSERT INTO events VALUES ($1, $2)",
                        &[id, &(writer as i32)],
                    )
                    .await
                    .unwrap();
                    tokio::time::sleep(Duration::from_micros(rng.below(1000))).await;
                }
                if rng.below(5) == 0 {
                    db.batch_execute("ROLLBACK").await.unwrap();
                } else {
                    db.batch_execute("COMMIT").await.unwrap();
                    committed.push(Txn {
                        ids,
                        began,
                        committed: Instant::now(),
                    });
                }
            }
            committed
        }));
    }
    let mut txns = Vec::new();
    for writer in writers {
        txns.extend(writer.await.unwrap());
    }
    let in_db: HashSet<i64> = server
        .db()
        .await
        .query("SELECT id FROM events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let written: HashSet<i64> = txns.iter().flat_map(|t| t.ids.iter().copied()).collect();
    assert_eq!(
        in_db, written,
        "the database holds exactly the committed rows"
    );

    for client in &mut subscribers {
        let (received, _) = read_ids(client, "e", in_db.len()).await;
        client.assert_quiet(Duration::from_millis(300)).await;
        let unique: HashSet<i64> = received.iter().copied().collect();
        assert_eq!(unique.len(), received.len(), "no duplicates");
        assert_eq!(
            unique, in_db,
            "exactly the committed rows, none rolled back"
        );

        let index: HashMap<i64, usize> = received
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, i))
            .collect();
        for txn in &txns {
            // A transaction's rows arrive together, in statement order.
            let at: Vec<usize> = txn.ids.iter().map(|id| index[id]).collect();
            let expected: Vec<usize> = (at[0]..at[0] + at.len()).collect();
            assert_eq!(
                at, expected,
                "transaction {:?} arrived split or reordered",
                txn.ids
            );
        }
        // Commit order: a transaction that began after another had
        // committed arrives after it.
        let mut by_commit: Vec<&Txn> = txns.iter().collect();
        by_commit.sort_by_key(|t| t.committed);
        let mut latest_index_so_far = Vec::with_capacity(by_commit.len());
        let mut latest = 0;
        for t in &by_commit {
            latest = latest.max(index[&t.ids[0]]);
            latest_index_so_far.push(latest);
        }
        let mut checked = 0;
        for b in &txns {
            let before = by_commit.partition_point(|a| a.committed < b.began);
            if before > 0 {
                checked += 1;
                assert!(
                    latest_index_so_far[before - 1] < index[&b.ids[0]],
                    "transaction {:?} began after an earlier commit but arrived before it",
                    b.ids
                );
            }
        }
        assert!(
            checked > txns.len() / 2,
            "the order check covered {checked} transactions"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_after_fifty_random_drops_loses_and_repeats_nothing() {
    const ROWS: i64 = 400;
    let server = TestServer::start().await;
    server.track_events().await;
    // The first subscription is live before the first write.
    let mut client = server.subscribe_events().await;
    let writer = server.write_events(ROWS, 4, Duration::from_millis(2)).await;

    let mut rng = Rng::seeded();
    let mut received = Vec::new();
    let mut cursor: Option<String> = None;
    let mut drops = 0;
    loop {
        let remaining = ROWS as usize - received.len();
        // Until the first item there is no cursor to resume from, so the
        // first connection reads at least one.
        let least = usize::from(cursor.is_none());
        let take = if drops < 50 {
            (least + rng.below(12) as usize).min(remaining)
        } else {
            remaining
        };
        let (ids, last) = read_ids(&mut client, "e", take).await;
        received.extend(ids);
        cursor = last.or(cursor);
        // Dropped mid-stream: items in flight are simply lost on the wire.
        drop(client);
        drops += 1;
        if received.len() == ROWS as usize {
            break;
        }
        client = server.ws().await;
        client
            .subscribe("e", CHANGES, json!({"table": "events", "after": cursor}))
            .await;
    }
    writer.await.unwrap();
    assert!(drops >= 50, "only {drops} reconnects");
    let expected: Vec<i64> = (1..=ROWS).collect();
    assert_eq!(received, expected, "every row exactly once, in order");
}

#[tokio::test]
async fn a_cursor_older_than_retention_gets_cursor_expired() {
    let server = TestServer::start_with(|config| {
        config.prune_interval = Duration::from_millis(100);
        config.retention_commits = 5;
    })
    .await;
    server.track_events().await;
    let mut client = server.ws().await;
    client
        .subscribe("e", CHANGES, json!({"table": "events"}))
        .await;
    wait_for_subscribers(&server, 1).await;
    let db = server.db().await;
    for id in 1..=20i64 {
        db.execute("INSERT INTO events VALUES ($1)", &[&id])
            .await
            .unwrap();
    }
    // Each row arrives once, in commit order, while retention prunes the
    // log; the first row's cursor is the one that expires.
    let mut ids = Vec::new();
    let mut oldest = None;
    for _ in 1..=20 {
        let item = client.next_item("e", "changes").await;
        ids.push(item["row"]["id"].as_i64().expect("row id"));
        oldest = oldest.or_else(|| item["cursor"].as_str().map(String::from));
    }
    assert_eq!(ids, (1..=20).collect::<Vec<i64>>());
    client.assert_quiet(Duration::from_millis(300)).await;
    let oldest = oldest.unwrap();
    let oldest_position = oldest.parse::<Cursor>().unwrap().position;
    let mut cursors = Vec::new();
    drop(client);
    // Wait until the pruner has deleted a commit after the first row's, so
    // that cursor has lost something (a cursor at the floor still resumes).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let floor: i64 = db
            .query_one("SELECT floor_position FROM tidewire.retention", &[])
            .await
            .unwrap()
            .get(0);
        if floor > oldest_position {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pruner never ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = server.ws().await;
    client
        .subscribe("old", CHANGES, json!({"table": "events", "after": oldest}))
        .await;
    let payload = client.next_payload("old").await;
    assert_eq!(
        payload["errors"][0]["extensions"]["code"], "CURSOR_EXPIRED",
        "{payload}"
    );
    assert!(payload["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("refetch"));

    // A cursor inside retention still resumes.
    client
        .subscribe("live", CHANGES, json!({"table": "events"}))
        .await;
    wait_for_subscribers(&server, 1).await;
    db.execute("INSERT INTO events VALUES (21)", &[])
        .await
        .unwrap();
    let item = client.next_item("live", "changes").await;
    cursors.push(item["cursor"].clone());
    db.execute("INSERT INTO events VALUES (22)", &[])
        .await
        .unwrap();
    client
        .subscribe(
            "recent",
            CHANGES,
            json!({"table": "events", "after": cursors[0]}),
        )
        .await;
    assert_eq!(client.next_item("recent", "changes").await["row"]["id"], 22);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_bounded_and_others_keep_receiving() {
    const ROWS: i64 = 1500;
    const BUDGET: f64 = 256.0 * 1024.0;
    let server = TestServer::start_with(|config| config.topic_buffer = 16).await;
    server
        .sql("CREATE TABLE blobs (id bigint PRIMARY KEY, body text); SELECT tidewire.track('blobs', public => true);")
        .await;
    let mut stalled = GqlClient::connect_small_buffer(server.addr).await;
    stalled
        .subscribe("s", CHANGES, json!({"table": "blobs"}))
        .await;
    let mut fast = server.ws().await;
    fast.subscribe("f", CHANGES, json!({"table": "blobs"}))
        .await;
    wait_for_shared_subscribers(&server, 2, 1).await;

    // ~12 MiB of changes: far more than socket buffers and the budget.
    let db = server.db().await;
    for batch in 0..ROWS / 50 {
        db.execute(
            "INSERT INTO blobs SELECT g, repeat(md5(g::text), 256) FROM generate_series($1::bigint, $2::bigint) g",
            &[&(batch * 50 + 1), &(batch * 50 + 50)],
        )
        .await
        .unwrap();
    }
    let started = Instant::now();
    let (fast_ids, _) = read_ids(&mut fast, "f", ROWS as usize).await;
    assert_eq!(fast_ids, (1..=ROWS).collect::<Vec<_>>());
    eprintln!(
        "fast client read {ROWS} changes in {:?} while the other stalled",
        started.elapsed()
    );

    let queued = server.metric("tidewire_websocket_queued_bytes").await;
    assert!(
        queued <= 2.0 * BUDGET,
        "queued {queued} bytes over two connections"
    );
    wait_for_metric(&server, "tidewire_feed_catchups_total", |v| v >= 1.0).await;

    // The stalled client wakes up and gets everything, in order, from the log.
    let (stalled_ids, _) = read_ids(&mut stalled, "s", ROWS as usize).await;
    assert_eq!(stalled_ids, (1..=ROWS).collect::<Vec<_>>());
    stalled.assert_quiet(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_one_mebibyte_row_arrives_intact() {
    let server = TestServer::start().await;
    server
        .sql("CREATE TABLE docs (id int PRIMARY KEY, body text); SELECT tidewire.track('docs', public => true);")
        .await;
    let mut client = server.ws().await;
    client
        .subscribe("d", CHANGES, json!({"table": "docs"}))
        .await;
    wait_for_subscribers(&server, 1).await;
    let body: String = (0..1024 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    server
        .db()
        .await
        .execute("INSERT INTO docs VALUES (1, $1)", &[&body])
        .await
        .unwrap();
    let item = client.next_item("d", "changes").await;
    assert_eq!(item["row"]["body"].as_str().map(str::len), Some(body.len()));
    assert_eq!(item["row"]["body"], Value::String(body));
}

#[tokio::test]
async fn notification_queue_usage_is_exported() {
    let server = TestServer::start_with(|config| {
        config.watchdog_interval = Duration::from_millis(100);
    })
    .await;
    server.track_events().await;
    // A session that listens and then sits in a transaction holds the queue
    // back, as a stuck listener would.
    let stuck = server.db().await;
    // Separate statements: a LISTEN only takes effect once committed.
    stuck.batch_execute("LISTEN tidewire").await.unwrap();
    stuck.batch_execute("BEGIN").await.unwrap();
    let db = server.db().await;
    for id in 0..600i64 {
        db.execute("INSERT INTO events VALUES ($1)", &[&id])
            .await
            .unwrap();
    }
    // (The queue is shared by the whole cluster, so other tests may add to
    // it; the held-back session alone makes it non-zero.)
    let usage = wait_for_metric(&server, "tidewire_notify_queue_usage", |v| v > 0.0).await;
    assert!(usage < 0.01, "usage {usage}");
    let direct: f64 = db
        .query_one("SELECT pg_notification_queue_usage()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(direct > 0.0);
    stuck.batch_execute("COMMIT; UNLISTEN *;").await.unwrap();
}

#[tokio::test]
async fn completed_and_dropped_subscriptions_release_everything() {
    let server = TestServer::start().await;
    server
        .sql("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY); SELECT tidewire.track('a', public => true); SELECT tidewire.track('b', public => true);")
        .await;
    let mut one = server.ws().await;
    one.subscribe("1", CHANGES, json!({"table": "a"})).await;
    one.subscribe("2", CHANGES, json!({"table": "b"})).await;
    let mut two = server.ws().await;
    two.subscribe("3", CHANGES, json!({"table": "a"})).await;
    wait_for_shared_subscribers(&server, 3, 2).await;
    assert_eq!(server.metric("tidewire_hub_topics").await, 2.0);
    assert_eq!(server.metric("tidewire_websocket_connections").await, 2.0);

    one.complete("2").await;
    wait_for_shared_subscribers(&server, 2, 1).await;
    wait_for_metric(&server, "tidewire_hub_topics", |v| v == 1.0).await;
    drop(one);
    drop(two);
    wait_for_subscribers(&server, 0).await;
    wait_for_metric(&server, "tidewire_shared_executions", |v| v == 0.0).await;
    wait_for_metric(&server, "tidewire_hub_topics", |v| v == 0.0).await;
    wait_for_metric(&server, "tidewire_websocket_connections", |v| v == 0.0).await;
    assert_eq!(server.metric("tidewire_websocket_queued_bytes").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_survive_a_graceful_restart_under_write_load() {
    const ROWS: i64 = 600;
    let server = TestServer::start().await;
    server.track_events().await;
    let database_url = server.database_url.clone();
    let mut client = server.subscribe_events().await;
    let writer = server
        .write_events(ROWS, 1, Duration::from_micros(500))
        .await;
    // Read some, then shut the server down in the middle of the stream.
    let (mut received, mut cursor) = read_ids(&mut client, "e", 100).await;
    server.shutdown().await;
    // Whatever the server sent before closing still counts.
    for message in client.until_closed().await {
        if message["type"] == "next" {
            let item = &message["payload"]["data"]["changes"];
            received.push(item["row"]["id"].as_i64().unwrap());
            cursor = item["cursor"].as_str().map(String::from);
        }
    }
    drop(client);

    let server = TestServer::start_on(database_url, |_| {}).await;
    let mut client = server.ws().await;
    client
        .subscribe("e", CHANGES, json!({"table": "events", "after": cursor}))
        .await;
    writer.await.unwrap();
    let (rest, _) = read_ids(&mut client, "e", ROWS as usize - received.len()).await;
    received.extend(rest);
    assert_eq!(received, (1..=ROWS).collect::<Vec<_>>());
    client.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_pins_at_most_the_topic_byte_budget() {
    const BUDGET: usize = 3 << 20;
    let server = TestServer::start_with(|config| {
        config.topic_buffer_bytes = BUDGET;
        config.max_queued_bytes = 256 * 1024;
    })
    .await;
    server
        .sql("CREATE TABLE blobs (id bigint PRIMARY KEY, body text); SELECT tidewire.track('blobs', public => true);")
        .await;
    server.sql("INSERT INTO blobs VALUES (0, 'start')").await;
    // With `after`, a subscription runs alone on its own hub registration.
    let mut fast = server.ws().await;
    fast.subscribe("f", CHANGES, json!({"table": "blobs"}))
        .await;
    let mut probe = server.ws().await;
    probe
        .subscribe("p", CHANGES, json!({"table": "blobs"}))
        .await;
    wait_for_shared_subscribers(&server, 2, 1).await;
    let cursor = {
        server.sql("INSERT INTO blobs VALUES (1, 'probe')").await;
        // Row 0 may still reach them: the listener can publish it after
        // they subscribed.
        let first_after_start = |item: &Value| item["row"]["id"] != 0;
        let mut item = probe.next_item("p", "changes").await;
        if !first_after_start(&item) {
            item = probe.next_item("p", "changes").await;
        }
        let mut seen = fast.next_item("f", "changes").await;
        if !first_after_start(&seen) {
            seen = fast.next_item("f", "changes").await;
        }
        assert_eq!(
            (&item["row"]["id"], &seen["row"]["id"]),
            (&json!(1), &json!(1))
        );
        item["cursor"].as_str().unwrap().to_owned()
    };
    let mut stalled = GqlClient::connect_small_buffer(server.addr).await;
    stalled
        .subscribe("s", CHANGES, json!({"table": "blobs", "after": cursor}))
        .await;
    wait_for_shared_subscribers(&server, 3, 2).await;

    // 1 MiB rows: a topic buffer of 1,024 changes would hold all of them.
    let most = write_mebibyte_rows(
        &server,
        "blobs",
        2..=25,
        &mut fast,
        "f",
        "tidewire_hub_buffered_bytes",
    )
    .await;
    println!("most buffered in the hub for the stalled subscriber: {most} bytes");
    assert!(
        most <= (BUDGET + (1 << 20) + 64 * 1024) as f64,
        "a stalled subscriber pinned {most} bytes of hub buffer, over the {BUDGET} budget"
    );
    assert!(
        most >= (1 << 20) as f64,
        "the hub held changes for the stalled subscriber"
    );
    // It still gets everything, from the log, in order.
    for id in 2..=25 {
        assert_eq!(stalled.next_item("s", "changes").await["row"]["id"], id);
    }
}
