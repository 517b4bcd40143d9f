//! The capture trigger: how an UPDATE's old and new rows are paired (by
//! primary key), and that only tables with one can be tracked.

mod common;

use std::time::Duration;

use common::{wait_for_subscribers, GqlClient, TestServer, CHANGES, WAIT};
use serde_json::{json, Value};

/// Tracks `table` (created by `setup`), subscribes to it and returns the
/// server and a client whose subscription `c` is registered.
async fn subscribed(setup: &str, table: &str) -> (TestServer, GqlClient) {
    let server = TestServer::start().await;
    server.sql(setup).await;
    let mut client = server.ws().await;
    client
        .subscribe("c", CHANGES, json!({"table": table}))
        .await;
    wait_for_subscribers(&server, 1).await;
    (server, client)
}

/// Every item of subscription `c` until it has been quiet for a moment
/// (a transaction's changes arrive together).
async fn items(client: &mut GqlClient) -> Vec<Value> {
    let mut items = vec![client.next_item("c", "changes").await];
    while let Some(message) = client.try_next_message(Duration::from_millis(500)).await {
        assert_eq!(message["type"], "next", "{message}");
        items.push(message["payload"]["data"]["changes"].clone());
    }
    items
}

fn ops(items: &[Value]) -> Vec<&str> {
    items.iter().map(|i| i["op"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn update_pairs_rows_by_key_when_the_transition_tables_disagree() {
    // A row that an UPDATE moves to another partition is deleted from its
    // own and inserted into the new one; a BEFORE INSERT trigger there that
    // drops it leaves it in the old-row table but not in the new-row table.
    // Pairing by position then matched row 2's old values with row 3's new
    // ones, and so on, and lost the last change.
    let (server, mut client) = subscribed(
        "CREATE TABLE moves (id int, part int, v int, PRIMARY KEY (id, part)) PARTITION BY LIST (part);
         CREATE TABLE moves_kept PARTITION OF moves FOR VALUES IN (1);
         CREATE TABLE moves_refused PARTITION OF moves FOR VALUES IN (2);
         CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON moves_refused FOR EACH ROW EXECUTE FUNCTION refuse();
         INSERT INTO moves SELECT g, 1, 10 * g FROM generate_series(1, 6) g;
         SELECT tidewire.track('moves', public => true);",
        "moves",
    )
    .await;

    server
        .sql("UPDATE moves SET v = v + 1, part = CASE WHEN id % 3 = 2 THEN 2 ELSE 1 END")
        .await;

    let items = items(&mut client).await;
    let mut updated = Vec::new();
    let mut deleted = Vec::new();
    for item in &items {
        let (old, new) = (&item["oldRow"], &item["row"]);
        match item["op"].as_str() {
            Some("UPDATE") => {
                let id = new["id"].as_i64().unwrap();
                assert_eq!(
                    (&old["id"], &old["part"]),
                    (&new["id"], &new["part"]),
                    "{item}"
                );
                assert_eq!(
                    (old["v"].as_i64(), new["v"].as_i64()),
                    (Some(10 * id), Some(10 * id + 1)),
                    "{item}"
                );
                updated.push(id);
            }
            Some("DELETE") => {
                let id = old["id"].as_i64().unwrap();
                assert_eq!(*old, json!({"id": id, "part": 1, "v": 10 * id}), "{item}");
                assert_eq!(*new, Value::Null, "{item}");
                deleted.push(id);
            }
            _ => panic!("unexpected change {item}"),
        }
    }
    updated.sort_unstable();
    deleted.sort_unstable();
    assert_eq!(
        (updated, deleted),
        (vec![1, 3, 4, 6], vec![2, 5]),
        "{items:?}"
    );
}

#[tokio::test]
async fn an_update_that_changes_the_key_arrives_as_delete_and_insert() {
    let (server, mut client) = subscribed(
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         INSERT INTO items VALUES (1, 'a'), (2, 'b');
         SELECT tidewire.track('items', public => true);",
        "items",
    )
    .await;

    server
        .sql("UPDATE items SET name = name || '!', id = CASE WHEN id = 2 THEN 12 ELSE id END")
        .await;

    let items = items(&mut client).await;
    assert_eq!(ops(&items), ["UPDATE", "DELETE", "INSERT"], "{items:?}");
    assert_eq!(items[0]["oldRow"], json!({"id": 1, "name": "a"}));
    assert_eq!(items[0]["row"], json!({"id": 1, "name": "a!"}));
    assert_eq!(items[1]["oldRow"], json!({"id": 2, "name": "b"}));
    assert_eq!(items[1]["row"], Value::Null);
    assert_eq!(items[2]["oldRow"], Value::Null);
    assert_eq!(items[2]["row"], json!({"id": 12, "name": "b!"}));
}

#[tokio::test]
async fn a_row_updated_twice_by_one_command_arrives_as_two_updates_in_order() {
    // Each child references both parents through cascading keys, so
    // renumbering the parents updates every child twice in one command:
    // each key appears twice in both transition tables.
    let (server, mut client) = subscribed(
        "CREATE TABLE parents (id int PRIMARY KEY);
         CREATE TABLE children (id int PRIMARY KEY,
                                a int REFERENCES parents ON UPDATE CASCADE,
                                b int REFERENCES parents ON UPDATE CASCADE);
         INSERT INTO parents VALUES (1), (2);
         INSERT INTO children VALUES (10, 1, 2), (11, 2, 1);
         SELECT tidewire.track('children', public => true);",
        "children",
    )
    .await;

    server.sql("UPDATE parents SET id = id + 100").await;

    let items = items(&mut client).await;
    assert_eq!(ops(&items), ["UPDATE"; 4], "{items:?}");
    for (id, before, after) in [
        (
            10,
            json!({"id": 10, "a": 1, "b": 2}),
            json!({"id": 10, "a": 101, "b": 102}),
        ),
        (
            11,
            json!({"id": 11, "a": 2, "b": 1}),
            json!({"id": 11, "a": 102, "b": 101}),
        ),
    ] {
        let mine: Vec<&Value> = items.iter().filter(|i| i["row"]["id"] == id).collect();
        assert_eq!(mine.len(), 2, "{items:?}");
        assert_eq!(mine[0]["oldRow"], before, "{items:?}");
        assert_eq!(mine[0]["row"], mine[1]["oldRow"], "{items:?}");
        assert_ne!(mine[0]["row"], before, "{items:?}");
        assert_eq!(mine[1]["row"], after, "{items:?}");
    }
}

#[tokio::test]
async fn a_table_that_lost_its_key_reports_updates_as_delete_and_insert() {
    let (server, mut client) = subscribed(
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         INSERT INTO items VALUES (1, 'a');
         SELECT tidewire.track('items', public => true);
         ALTER TABLE items DROP CONSTRAINT items_pkey;",
        "items",
    )
    .await;

    server.sql("UPDATE items SET name = 'b'").await;

    let items = items(&mut client).await;
    assert_eq!(ops(&items), ["DELETE", "INSERT"], "{items:?}");
    assert_eq!(items[0]["oldRow"], json!({"id": 1, "name": "a"}));
    assert_eq!(items[1]["row"], json!({"id": 1, "name": "b"}));
}

#[tokio::test]
async fn tracking_a_table_without_a_primary_key_fails() {
    let server = TestServer::start().await;
    let db = server.db().await;
    db.batch_execute("CREATE TABLE loose (id int)")
        .await
        .unwrap();
    let error = tokio::time::timeout(WAIT, db.batch_execute("SELECT tidewire.track('loose')"))
        .await
        .expect("track() answers")
        .expect_err("track() on a table without a primary key");
    let message = error.as_db_error().expect("a database error").message();
    assert_eq!(
        message,
        "tidewire.track: table public.loose has no primary key; changes are paired by it"
    );
    let tracked: i64 = db
        .query_one(
            "SELECT count(*) FROM tidewire.tracked WHERE name = 'public.loose'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tracked, 0);
}

#[tokio::test]
async fn a_dropped_table_can_be_created_and_tracked_again() {
    let server = TestServer::start().await;
    server
        .sql(
            "CREATE TABLE gone (id int PRIMARY KEY);
             SELECT tidewire.track('gone', public => true);
             CREATE TABLE kept (id int PRIMARY KEY);
             SELECT tidewire.track('kept', public => true);
             DROP TABLE gone;",
        )
        .await;
    // Dropped: no longer offered.
    let tracked = server.post("{ trackedTables }", json!({})).await;
    let names = tracked["data"]["trackedTables"].as_array().unwrap();
    assert!(names.contains(&json!("public.kept")), "{names:?}");
    assert!(!names.contains(&json!("public.gone")), "{names:?}");
    // Re-created under the same name: tracked and streamed like any table.
    server
        .sql(
            "CREATE TABLE gone (id int PRIMARY KEY, note text);
             SELECT tidewire.track('gone', public => true);",
        )
        .await;
    let mut client = server.ws().await;
    client
        .subscribe("c", CHANGES, json!({"table": "gone"}))
        .await;
    wait_for_subscribers(&server, 1).await;
    server.sql("INSERT INTO gone VALUES (1, 'back')").await;
    let item = client.next_item("c", "changes").await;
    assert_eq!(item["row"], json!({"id": 1, "note": "back"}));
}
