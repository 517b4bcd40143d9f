//! What a `changes` subscriber may ask and see: bounded `where` filters,
//! rows that change owner, the tracked tables a caller is told about, and
//! table names that more than one schema uses.

mod common;

use std::time::Duration;

use common::{wait_for_metric, wait_for_subscribers, GqlClient, TestServer, CHANGES};
use serde_json::{json, Value};

const SECRET: &str = "hardening-filters-secret-000000000001";

fn token(sub: &str, role: &str) -> String {
    common::token(SECRET, sub, role, 600)
}

async fn client_as(server: &TestServer, sub: &str, role: &str) -> GqlClient {
    common::client_with_token(server.addr, &token(sub, role)).await
}

#[tokio::test]
async fn a_where_over_a_limit_is_refused_and_the_connection_goes_on() {
    // Below the defaults, so the test also shows the settings are used.
    let server = TestServer::start_with(|config| {
        config.max_where_bytes = 1024;
        config.max_where_conditions = 3;
        config.max_where_in_values = 10;
    })
    .await;
    server
        .sql(
            "CREATE TABLE items (id int PRIMARY KEY, name text, status text);
             SELECT tidewire.track('items', public => true);",
        )
        .await;
    let mut client = server.ws().await;
    client
        .subscribe(
            "ok",
            CHANGES,
            json!({"table": "items", "where": {"status": {"_in": ["open", "new"]}}}),
        )
        .await;
    wait_for_subscribers(&server, 1).await;

    let eleven: Vec<i64> = (0..11).collect();
    let refused = [
        (
            json!({"name": "x".repeat(2000)}),
            "over the limit of 1024 bytes",
        ),
        (json!({"id": {"_in": eleven}}), "over the limit of 10"),
        (
            json!({"id": {"_gt": 1, "_lt": 9}, "status": "open", "name": "a"}),
            "more than the limit of 3 conditions",
        ),
    ];
    for (n, (filter, message)) in refused.iter().enumerate() {
        let id = format!("bad{n}");
        client
            .subscribe(&id, CHANGES, json!({"table": "items", "where": filter}))
            .await;
        let frame = client.next_message().await;
        assert_eq!(frame["type"], "error", "{frame}");
        assert_eq!(frame["id"], id.as_str(), "{frame}");
        let error = &frame["payload"][0];
        assert_eq!(error["extensions"]["code"], "BAD_USER_INPUT", "{frame}");
        assert!(
            error["message"].as_str().unwrap().contains(message),
            "{frame}"
        );
    }

    // The connection, its running subscription and a new one all work.
    client
        .subscribe(
            "ok2",
            CHANGES,
            json!({"table": "items", "where": {"id": {"_in": [1.0, 2]}}}),
        )
        .await;
    wait_for_subscribers(&server, 2).await;
    server
        .sql("INSERT INTO items VALUES (1, 'one', 'open')")
        .await;
    assert_eq!(client.next_item("ok", "changes").await["row"]["id"], 1);
    assert_eq!(client.next_item("ok2", "changes").await["row"]["id"], 1);

    // Completed subscriptions leave nothing behind in the hub (their
    // filters live in their streams).
    client.complete("ok").await;
    client.complete("ok2").await;
    wait_for_metric(&server, "tidewire_hub_subscribers", |v| v == 0.0).await;
}

/// The items of `id` until one has `row.id` (or `oldRow.id`) equal to
/// `last`.
async fn items_until(client: &mut GqlClient, id: &str, last: i64) -> Vec<Value> {
    let mut items = Vec::new();
    loop {
        let item = client.next_item(id, "changes").await;
        let done = item["row"]["id"] == last;
        items.push(item);
        if done {
            return items;
        }
    }
}

fn assert_never_shows(items: &[Value], secret: &str) {
    for item in items {
        assert!(!item.to_string().contains(secret), "{secret} in {item}");
    }
}

#[tokio::test]
async fn a_row_changing_owner_is_a_delete_for_the_old_owner_and_an_insert_for_the_new() {
    let server = TestServer::start_with(|config| config.jwt_secret = Some(SECRET.into())).await;
    server
        .sql(
            "CREATE TABLE notes (id int PRIMARY KEY, owner_id text, body text, tag text);
             SELECT tidewire.track('notes', owner_column => 'owner_id');",
        )
        .await;
    let mut alice = client_as(&server, "alice", "user").await;
    let mut bob = client_as(&server, "bob", "user").await;
    let mut admin = client_as(&server, "root", "admin").await;
    alice
        .subscribe("a", CHANGES, json!({"table": "notes"}))
        .await;
    // A filter that only the new owner's values would satisfy, and one
    // that only the old owner's would.
    alice
        .subscribe(
            "aw",
            CHANGES,
            json!({"table": "notes", "where": {"tag": "bob-tag"}}),
        )
        .await;
    bob.subscribe("b", CHANGES, json!({"table": "notes"})).await;
    bob.subscribe(
        "bw",
        CHANGES,
        json!({"table": "notes", "where": {"tag": "alice-tag"}}),
    )
    .await;
    admin
        .subscribe("all", CHANGES, json!({"table": "notes"}))
        .await;
    wait_for_subscribers(&server, 5).await;

    server
        .sql("INSERT INTO notes VALUES (1, 'alice', 'alice: diary', 'alice-tag')")
        .await;
    let inserted = alice.next_item("a", "changes").await;
    assert_eq!(inserted["row"]["body"], "alice: diary");
    let before_update = inserted["cursor"].as_str().unwrap().to_owned();
    server
        .sql(
            "UPDATE notes SET owner_id = 'bob', body = 'bob: salary', tag = 'bob-tag' WHERE id = 1",
        )
        .await;
    server
        .sql("INSERT INTO notes VALUES (2, 'alice', 'alice: marker', 'bob-tag')")
        .await;
    server
        .sql("INSERT INTO notes VALUES (3, 'bob', 'bob: marker', 'alice-tag')")
        .await;

    let check_alice = |items: &[Value]| {
        assert_eq!(items.len(), 2, "{items:?}");
        assert_eq!(items[0]["op"], "DELETE");
        assert_eq!(items[0]["row"], Value::Null);
        assert_eq!(items[0]["oldRow"], json!({"id": 1}));
        assert_eq!(items[1]["row"]["id"], 2);
        assert_never_shows(items, "bob: salary");
    };
    let check_bob = |items: &[Value]| {
        assert_eq!(items.len(), 2, "{items:?}");
        assert_eq!(items[0]["op"], "INSERT");
        assert_eq!(
            items[0]["row"],
            json!({"id": 1, "owner_id": "bob", "body": "bob: salary", "tag": "bob-tag"})
        );
        assert_eq!(items[0]["oldRow"], Value::Null);
        assert_eq!(items[1]["row"]["id"], 3);
        assert_never_shows(items, "alice: diary");
    };

    check_alice(&items_until(&mut alice, "a", 2).await);
    check_bob(&items_until(&mut bob, "b", 3).await);
    // The filters saw only the viewer's own rows: the first thing each
    // receives is the marker row written after the update.
    let first = alice.next_item("aw", "changes").await;
    assert_eq!(first["row"]["id"], 2, "{first}");
    let first = bob.next_item("bw", "changes").await;
    assert_eq!(first["row"]["id"], 3, "{first}");

    // Admins see the update as it is.
    let all = items_until(&mut admin, "all", 3).await;
    assert_eq!(all[1]["op"], "UPDATE");
    assert_eq!(all[1]["oldRow"]["body"], "alice: diary");
    assert_eq!(all[1]["row"]["body"], "bob: salary");

    // Replay from before the update gives each the same view.
    let replay = json!({"table": "notes", "after": before_update});
    let mut alice = client_as(&server, "alice", "user").await;
    alice.subscribe("r", CHANGES, replay.clone()).await;
    check_alice(&items_until(&mut alice, "r", 2).await);
    let mut bob = client_as(&server, "bob", "user").await;
    bob.subscribe("r", CHANGES, replay).await;
    check_bob(&items_until(&mut bob, "r", 3).await);
}

#[tokio::test]
async fn tracked_tables_lists_what_the_caller_may_subscribe_to() {
    let server = TestServer::start_with(|config| config.jwt_secret = Some(SECRET.into())).await;
    server
        .sql(
            "CREATE TABLE open_t (id int PRIMARY KEY);
             SELECT tidewire.track('open_t', public => true);
             CREATE TABLE admin_t (id int PRIMARY KEY);
             SELECT tidewire.track('admin_t');
             CREATE TABLE owned_t (id int PRIMARY KEY, user_id text);
             SELECT tidewire.track('owned_t', owner_column => 'user_id');",
        )
        .await;
    let names = |response: Value| -> Vec<String> {
        response["data"]["trackedTables"]
            .as_array()
            .unwrap_or_else(|| panic!("{response}"))
            .iter()
            .map(|name| name.as_str().unwrap().to_owned())
            .filter(|name| name.starts_with("public."))
            .collect()
    };
    let query = "{ trackedTables }";
    assert_eq!(
        names(server.graphql(None, query, json!({})).await),
        ["public.open_t"]
    );
    assert_eq!(
        names(
            server
                .graphql(Some(&token("u1", "user")), query, json!({}))
                .await
        ),
        ["public.open_t", "public.owned_t"]
    );
    assert_eq!(
        names(
            server
                .graphql(Some(&token("root", "admin")), query, json!({}))
                .await
        ),
        ["public.admin_t", "public.open_t", "public.owned_t"]
    );
}

#[tokio::test]
async fn a_table_name_in_two_schemas_is_ambiguous_not_untracked() {
    let server = TestServer::start().await;
    server
        .sql(
            "CREATE SCHEMA other;
             CREATE TABLE public.items (id int PRIMARY KEY);
             CREATE TABLE other.items (id int PRIMARY KEY);
             SELECT tidewire.track('public.items', public => true);
             SELECT tidewire.track('other.items', public => true);",
        )
        .await;
    let mut client = server.ws().await;
    client
        .subscribe("bare", CHANGES, json!({"table": "items"}))
        .await;
    let payload = client.next_payload("bare").await;
    let error = &payload["errors"][0];
    assert_eq!(error["extensions"]["code"], "BAD_USER_INPUT", "{payload}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("ambiguous"), "{message}");
    assert!(message.contains("other.items"), "{message}");
    assert!(message.contains("public.items"), "{message}");
    assert!(!message.contains("not tracked"), "{message}");

    client
        .subscribe("missing", CHANGES, json!({"table": "nothing"}))
        .await;
    let payload = client.next_payload("missing").await;
    assert_eq!(
        payload["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{payload}"
    );
    assert!(payload["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("not tracked"));

    // A qualified name still picks one.
    client
        .subscribe("q", CHANGES, json!({"table": "other.items"}))
        .await;
    wait_for_subscribers(&server, 1).await;
    server
        .sql("INSERT INTO public.items VALUES (1); INSERT INTO other.items VALUES (2);")
        .await;
    let item = client.next_item("q", "changes").await;
    assert_eq!(
        (item["table"].as_str(), item["row"]["id"].as_i64()),
        (Some("other.items"), Some(2))
    );
    client.assert_quiet(Duration::from_millis(200)).await;
}
