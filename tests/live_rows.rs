//! `liveRows` over real WebSockets against the embedded Postgres: a
//! materialized set equals `SELECT … WHERE …` after concurrent writers,
//! for subscribers that started at random moments and one that resumed
//! with `after`; rows entering and leaving the filter; visibility; paging
//! and the size limit.

mod common;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use common::*;
use serde_json::{json, Value};

const SECRET: &str = "a-live-rows-test-secret-long-enough-0123";

const LIVE: &str = "subscription($table: String!, $where: JSON, $after: String) {
  liveRows(table: $table, where: $where, after: $after) { kind rows cursor }
}";

/// Rows of `items` with `n` below this are in the set.
const IN_SET: i64 = 40;
/// Written last; the set holds it, so seeing it means a subscriber is up
/// to date.
const SENTINEL: i64 = 1_000_000;

async fn items_table(server: &TestServer, rows: i64) {
    server
        .sql(&format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, n int NOT NULL, note text NOT NULL DEFAULT '');
             INSERT INTO items (id, n) SELECT g, g % 100 FROM generate_series(1, {rows}) g;
             SELECT tidewire.track('items', public => true);"
        ))
        .await;
}

/// A subscriber's view: rows by id, built from its items. Panics on an
/// item that would show a row twice or remove one it does not hold.
#[derive(Default)]
struct Materialized {
    rows: HashMap<i64, Value>,
    ready: bool,
    /// Cursor of `READY` or the latest change.
    resume: Option<String>,
}

impl Materialized {
    fn apply(&mut self, item: &Value) -> (String, Vec<i64>) {
        let kind = item["kind"].as_str().unwrap().to_owned();
        let rows = item["rows"].as_array().unwrap();
        let mut ids = Vec::new();
        for row in rows {
            let id = row["id"].as_i64().unwrap();
            ids.push(id);
            match kind.as_str() {
                "SNAPSHOT" => {
                    assert!(!self.ready, "SNAPSHOT after READY");
                    assert!(
                        self.rows.insert(id, row.clone()).is_none(),
                        "row {id} twice"
                    );
                }
                "INSERT" => {
                    assert!(self.ready);
                    assert!(
                        self.rows.insert(id, row.clone()).is_none(),
                        "row {id} inserted twice"
                    );
                }
                "UPDATE" => {
                    assert!(
                        self.rows.insert(id, row.clone()).is_some(),
                        "update of absent {id}"
                    );
                }
                "DELETE" => assert!(self.rows.remove(&id).is_some(), "delete of absent {id}"),
                other => panic!("unexpected {other} with rows"),
            }
        }
        match kind.as_str() {
            "READY" => {
                assert!(rows.is_empty());
                self.ready = true;
                self.resume = Some(item["cursor"].as_str().unwrap().to_owned());
            }
            "SNAPSHOT" => {}
            _ => self.resume = Some(item["cursor"].as_str().unwrap().to_owned()),
        }
        (kind, ids)
    }
}

async fn expected(server: &TestServer) -> HashMap<i64, Value> {
    let db = server.db().await;
    db.query(
        "SELECT id, to_jsonb(i) FROM items i WHERE n < $1",
        &[&(IN_SET as i32)],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

/// Reads `id`'s items into `set` until it holds the sentinel row.
async fn until_sentinel(client: &mut GqlClient, id: &str, set: &mut Materialized) {
    loop {
        let item = client.next_item(id, "liveRows").await;
        let (kind, ids) = set.apply(&item);
        let _ = (kind, ids);
        if set.ready && set.rows.contains_key(&SENTINEL) {
            return;
        }
    }
}

/// One writer: random updates (moving rows in and out of the set),
/// inserts and deletes, until `until`.
async fn write_randomly(url: String, writer: i64, until: Instant) {
    let db = tidewire::db::connect_once(&url).await.unwrap();
    let mut rng = Rng::seeded();
    for _ in 0..writer {
        rng.below(2);
    }
    let mut next_id = 100_000 + writer * 10_000;
    while Instant::now() < until {
        match rng.below(10) {
            0 => {
                next_id += 1;
                db.execute(
                    "INSERT INTO items (id, n) VALUES ($1, $2)",
                    &[&next_id, &(rng.below(100) as i32)],
                )
                .await
                .unwrap();
            }
            1 => {
                let id = 1 + rng.below(10_000) as i64;
                db.execute("DELETE FROM items WHERE id = $1", &[&id])
                    .await
                    .unwrap();
            }
            _ => {
                // Several rows per statement, some crossing the filter.
                let from = 1 + rng.below(10_000) as i64;
                db.execute(
                    "UPDATE items SET n = (n + $2) % 100, note = $3 WHERE id BETWEEN $1 AND $1 + 3",
                    &[&from, &(rng.below(100) as i32), &format!("w{writer}")],
                )
                .await
                .unwrap();
            }
        }
    }
}

#[tokio::test]
async fn twenty_subscribers_starting_at_random_moments_end_equal_to_the_table() {
    let server = TestServer::start().await;
    items_table(&server, 10_000).await;
    let filter = json!({"n": {"_lt": IN_SET}});
    let until = Instant::now() + Duration::from_secs(3);
    let writers: Vec<_> = (0..8)
        .map(|w| tokio::spawn(write_randomly(server.database_url.clone(), w, until)))
        .collect();

    let mut rng = Rng::seeded();
    let mut subscribers = Vec::new();
    for i in 0..20 {
        let resumes = i == 7;
        // The one that resumes starts early, so changes follow its READY
        // while the writers still write.
        let start = Duration::from_millis(if resumes { 100 } else { rng.below(2500) });
        let (addr, filter) = (server.addr, filter.clone());
        subscribers.push(tokio::spawn(async move {
            tokio::time::sleep(start).await;
            let mut client = GqlClient::connect(addr, "graphql-transport-ws").await;
            client
                .subscribe("live", LIVE, json!({"table": "items", "where": filter}))
                .await;
            let mut set = Materialized::default();
            if resumes {
                // Until READY and a few changes, then the socket drops.
                let mut changes = 0;
                while !set.ready || changes < 5 {
                    let (kind, _) = set.apply(&client.next_item("live", "liveRows").await);
                    changes += usize::from(set.ready && kind != "READY");
                }
                drop(client);
                tokio::time::sleep(Duration::from_millis(300)).await;
                client = GqlClient::connect(addr, "graphql-transport-ws").await;
                client
                    .subscribe(
                        "live",
                        LIVE,
                        json!({"table": "items", "where": filter, "after": set.resume}),
                    )
                    .await;
            }
            until_sentinel(&mut client, "live", &mut set).await;
            (set, resumes)
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    // Every subscriber has started by now; the sentinel comes after all writes.
    server
        .sql(&format!("INSERT INTO items (id, n) VALUES ({SENTINEL}, 0)"))
        .await;
    let expected = expected(&server).await;
    assert!(expected.len() > 3000, "the set is {} rows", expected.len());
    for subscriber in subscribers {
        let (set, resumed) = subscriber.await.unwrap();
        assert!(set.ready);
        assert_eq!(set.rows.len(), expected.len(), "resumed: {resumed}");
        assert!(
            set.rows == expected,
            "a subscriber's set differs (resumed: {resumed})"
        );
    }
}

/// The next item must be `kind` of row `id` with `n`.
async fn expect(client: &mut GqlClient, kind: &str, id: i64, n: i64) -> Value {
    let item = client.next_item("live", "liveRows").await;
    assert_eq!(item["kind"], kind, "{item}");
    assert_eq!(
        item["rows"],
        json!([{"id": id, "n": n, "note": ""}]),
        "{item}"
    );
    item
}

#[tokio::test]
async fn rows_entering_and_leaving_the_filter_are_inserted_and_deleted() {
    let server = TestServer::start().await;
    items_table(&server, 5).await;
    // n = id % 100: rows 1..5 have n 1..5; the set is n < 3.
    let mut client = GqlClient::connect(server.addr, "graphql-transport-ws").await;
    client
        .subscribe(
            "live",
            LIVE,
            json!({"table": "items", "where": {"n": {"_lt": 3}}}),
        )
        .await;
    let snapshot = client.next_item("live", "liveRows").await;
    assert_eq!(snapshot["kind"], "SNAPSHOT");
    let mut ids: Vec<i64> = snapshot["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, [1, 2]);
    let ready = client.next_item("live", "liveRows").await;
    assert_eq!(
        (ready["kind"].as_str(), &ready["rows"]),
        (Some("READY"), &json!([]))
    );
    assert_eq!(ready["cursor"], snapshot["cursor"]);

    server.sql("UPDATE items SET n = 0 WHERE id = 4").await; // enters
    expect(&mut client, "INSERT", 4, 0).await;
    server.sql("UPDATE items SET n = 2 WHERE id = 4").await; // stays
    expect(&mut client, "UPDATE", 4, 2).await;
    server.sql("UPDATE items SET n = 50 WHERE id = 1").await; // leaves: its old row
    expect(&mut client, "DELETE", 1, 1).await;
    server.sql("UPDATE items SET n = 60 WHERE id = 5").await; // never in
    server.sql("DELETE FROM items WHERE id = 2").await;
    expect(&mut client, "DELETE", 2, 2).await;
    server
        .sql("INSERT INTO items (id, n) VALUES (9, 1), (10, 90)")
        .await;
    let last = expect(&mut client, "INSERT", 9, 1).await;
    client.assert_quiet(Duration::from_millis(300)).await;

    // Resumed after the last item: only what came since, no snapshot.
    server.sql("UPDATE items SET n = 0 WHERE id = 10").await;
    let mut again = GqlClient::connect(server.addr, "graphql-transport-ws").await;
    again
        .subscribe(
            "live",
            LIVE,
            json!({"table": "items", "where": {"n": {"_lt": 3}}, "after": last["cursor"]}),
        )
        .await;
    expect(&mut again, "INSERT", 10, 0).await;
    again.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn snapshots_come_in_pages_and_a_set_over_the_limit_is_refused() {
    // No snapshot kept: each is streamed from its own read as it goes.
    let server = TestServer::start_with(|config| {
        config.max_live_rows = 1500;
        config.live_snapshot_cache_bytes = 0;
    })
    .await;
    items_table(&server, 2000).await;
    let mut client = GqlClient::connect(server.addr, "graphql-transport-ws").await;
    // 1,200 rows match (n < 60).
    client
        .subscribe(
            "live",
            LIVE,
            json!({"table": "items", "where": {"n": {"_lt": 60}}}),
        )
        .await;
    let mut sizes = Vec::new();
    loop {
        let item = client.next_item("live", "liveRows").await;
        if item["kind"] == "READY" {
            break;
        }
        sizes.push(item["rows"].as_array().unwrap().len());
    }
    assert_eq!(sizes, [500, 500, 200]);

    // All 2,000 rows: over the limit, refused with the limit named.
    client
        .subscribe("all", LIVE, json!({"table": "items"}))
        .await;
    let refused = loop {
        let payload = client.next_payload("all").await;
        if payload.get("errors").is_some() {
            break payload;
        }
    };
    assert_eq!(refused["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    let message = refused["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("1500") && message.contains("max-live-rows"),
        "{message}"
    );
    // Found mid-stream: the error item ends it.
    assert_eq!(client.next_for("all").await["type"], "complete");
    // The snapshot's connection went back (or was closed): the server works on.
    client
        .subscribe("again", LIVE, json!({"table": "items", "where": {"id": 7}}))
        .await;
    assert_eq!(
        client.next_item("again", "liveRows").await["rows"][0]["id"],
        7
    );
}

#[tokio::test]
async fn live_rows_follow_the_read_rules_of_changes() {
    let server = TestServer::start_with(|config| config.jwt_secret = Some(SECRET.into())).await;
    server
        .sql(
            "CREATE TABLE notes (id int PRIMARY KEY, owner text NOT NULL, body text NOT NULL);
             INSERT INTO notes VALUES (1, 'ann', 'a1'), (2, 'bob', 'b1'), (3, 'ann', 'a2');
             SELECT tidewire.track('notes', owner_column => 'owner');
             CREATE TABLE secrets (id int PRIMARY KEY);
             SELECT tidewire.track('secrets');",
        )
        .await;
    let mut ann = client_with_token(server.addr, &token(SECRET, "ann", "user", 600)).await;
    ann.subscribe("notes", LIVE, json!({"table": "notes"}))
        .await;
    let snapshot = ann.next_item("notes", "liveRows").await;
    let mut bodies: Vec<&str> = snapshot["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["body"].as_str().unwrap())
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["a1", "a2"], "only ann's rows");
    assert_eq!(ann.next_item("notes", "liveRows").await["kind"], "READY");
    // Bob's row given to ann enters her set; hers given to bob leaves it.
    server
        .sql("UPDATE notes SET owner = 'ann' WHERE id = 2")
        .await;
    let entered = ann.next_item("notes", "liveRows").await;
    assert_eq!(
        (entered["kind"].as_str(), &entered["rows"][0]["id"]),
        (Some("INSERT"), &json!(2))
    );
    server
        .sql("UPDATE notes SET owner = 'bob' WHERE id = 1")
        .await;
    let left = ann.next_item("notes", "liveRows").await;
    assert_eq!(
        (left["kind"].as_str(), &left["rows"][0]["id"]),
        (Some("DELETE"), &json!(1))
    );
    server
        .sql("INSERT INTO notes VALUES (4, 'bob', 'b2')")
        .await;
    ann.assert_quiet(Duration::from_millis(300)).await;

    ann.subscribe("secrets", LIVE, json!({"table": "secrets"}))
        .await;
    let refused = ann.next_payload("secrets").await;
    assert_eq!(refused["errors"][0]["extensions"]["code"], "FORBIDDEN");
    let mut anonymous = GqlClient::connect(server.addr, "graphql-transport-ws").await;
    anonymous
        .subscribe("notes", LIVE, json!({"table": "notes"}))
        .await;
    let refused = anonymous.next_payload("notes").await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"],
        "UNAUTHENTICATED"
    );
    ann.subscribe("bad", LIVE, json!({"table": "notes", "where": {"nope": 1}}))
        .await;
    let refused = ann.next_payload("bad").await;
    assert_eq!(refused["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
}

#[tokio::test]
async fn identical_live_sets_share_one_execution_after_their_own_snapshots() {
    let server = TestServer::start().await;
    items_table(&server, 1000).await;
    let filter = json!({"n": {"_lt": IN_SET}});
    let mut clients = Vec::new();
    let mut sets = Vec::new();
    for _ in 0..3 {
        let mut client = GqlClient::connect(server.addr, "graphql-transport-ws").await;
        client
            .subscribe("live", LIVE, json!({"table": "items", "where": filter}))
            .await;
        let mut set = Materialized::default();
        while !set.ready {
            set.apply(&client.next_item("live", "liveRows").await);
        }
        // A change between two members' snapshots: the later one has it in
        // its snapshot, the earlier ones as a change.
        server
            .sql(&format!(
                "UPDATE items SET n = 0 WHERE id = {}",
                50 + clients.len()
            ))
            .await;
        clients.push(client);
        sets.push(set);
    }
    // One execution follows the changes for all three; their own feeds
    // ended with their snapshots.
    wait_for_metric(&server, "tidewire_shared_executions", |v| v == 1.0).await;
    wait_for_metric(&server, "tidewire_hub_subscribers", |v| v == 1.0).await;
    let executions = server
        .metric("tidewire_subscription_executions_total")
        .await;
    server
        .sql("UPDATE items SET n = n + 30 WHERE id BETWEEN 1 AND 60")
        .await;
    server.sql("DELETE FROM items WHERE id % 7 = 0").await;
    server
        .sql(&format!("INSERT INTO items (id, n) VALUES ({SENTINEL}, 0)"))
        .await;
    let expected = expected(&server).await;
    for (client, set) in clients.iter_mut().zip(&mut sets) {
        until_sentinel(client, "live", set).await;
        assert!(
            set.rows == expected,
            "a member's set differs from the table"
        );
    }
    assert_eq!(
        server
            .metric("tidewire_subscription_executions_total")
            .await,
        executions,
        "changes ran no execution per member"
    );
}

#[tokio::test]
async fn a_crowd_asking_for_one_set_reads_one_snapshot() {
    let server = TestServer::start().await;
    items_table(&server, 2000).await;
    let filter = json!({"n": {"_lt": IN_SET}});
    let reads = server.metric("tidewire_live_snapshot_reads_total").await;
    let mut crowd = Vec::new();
    for _ in 0..10 {
        let mut client = GqlClient::connect(server.addr, "graphql-transport-ws").await;
        client
            .subscribe("live", LIVE, json!({"table": "items", "where": filter}))
            .await;
        crowd.push(client);
    }
    let mut sets: Vec<Materialized> = Vec::new();
    for client in &mut crowd {
        let mut set = Materialized::default();
        while !set.ready {
            set.apply(&client.next_item("live", "liveRows").await);
        }
        sets.push(set);
    }
    assert_eq!(
        server.metric("tidewire_live_snapshot_reads_total").await,
        reads + 1.0,
        "ten subscribers of one set, one read"
    );
    // A change after the kept snapshot: a late member gets the kept
    // snapshot and the change from the log, not a second read.
    server.sql("UPDATE items SET n = 0 WHERE id = 99").await;
    let mut late = GqlClient::connect(server.addr, "graphql-transport-ws").await;
    late.subscribe("live", LIVE, json!({"table": "items", "where": filter}))
        .await;
    crowd.push(late);
    let mut set = Materialized::default();
    while !set.ready {
        set.apply(&crowd[10].next_item("live", "liveRows").await);
    }
    sets.push(set);
    assert_eq!(
        server.metric("tidewire_live_snapshot_reads_total").await,
        reads + 1.0
    );
    server
        .sql(&format!("INSERT INTO items (id, n) VALUES ({SENTINEL}, 0)"))
        .await;
    let expected = expected(&server).await;
    for (client, set) in crowd.iter_mut().zip(&mut sets) {
        until_sentinel(client, "live", set).await;
        assert!(set.rows == expected);
    }
    // Another filter is another set: its own read.
    let mut other = GqlClient::connect(server.addr, "graphql-transport-ws").await;
    other
        .subscribe("live", LIVE, json!({"table": "items", "where": {"n": 5}}))
        .await;
    let first = other.next_item("live", "liveRows").await;
    assert_eq!(first["kind"], "SNAPSHOT");
    assert_eq!(
        server.metric("tidewire_live_snapshot_reads_total").await,
        reads + 2.0
    );
}

#[tokio::test]
async fn a_kept_snapshot_older_than_a_new_group_loses_nothing() {
    let server = TestServer::start().await;
    items_table(&server, 200).await;
    let filter = json!({"n": {"_lt": IN_SET}});
    // The first subscriber's snapshot is kept; it leaves, and its group
    // ends with it.
    let mut first = GqlClient::connect(server.addr, "graphql-transport-ws").await;
    first
        .subscribe("live", LIVE, json!({"table": "items", "where": filter}))
        .await;
    let mut set = Materialized::default();
    while !set.ready {
        set.apply(&first.next_item("live", "liveRows").await);
    }
    drop(first);
    wait_for_metric(&server, "tidewire_shared_executions", |v| v == 0.0).await;
    // A change after the kept snapshot, then a subscriber served that
    // snapshot: its new group starts after the change.
    server.sql("UPDATE items SET n = 0 WHERE id = 99").await;
    wait_for_metric(&server, "tidewire_changes_published_total", |v| v >= 1.0).await;
    let mut late = GqlClient::connect(server.addr, "graphql-transport-ws").await;
    late.subscribe("live", LIVE, json!({"table": "items", "where": filter}))
        .await;
    let mut set = Materialized::default();
    while !set.ready {
        set.apply(&late.next_item("live", "liveRows").await);
    }
    server
        .sql(&format!("INSERT INTO items (id, n) VALUES ({SENTINEL}, 0)"))
        .await;
    until_sentinel(&mut late, "live", &mut set).await;
    assert!(
        set.rows.contains_key(&99),
        "the change between the kept snapshot and the group was lost"
    );
    assert!(set.rows == expected(&server).await);
}
