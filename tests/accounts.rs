//! Accounts and sessions: sign-up, sign-in, sign-out and revocation that
//! ends streams on every node, rate limits, and the first admin.

mod common;

use std::time::Instant;

use common::{fresh_database, wait_for_subscribers, GqlClient, TestServer, CHANGES};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "accounts-secret-accounts-secret-0001";

async fn start_on(url: String) -> TestServer {
    let server = TestServer::start_on(url, |config| {
        config.jwt_secret = Some(SECRET.into());
        config.mutations_per_second = 1000;
    })
    .await;
    server
}

async fn server() -> TestServer {
    let server = start_on(fresh_database().await).await;
    server
        .sql("CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY); SELECT tidewire.track('items', public => true);")
        .await;
    server
}

async fn mutate(server: &TestServer, token: Option<&str>, query: &str, variables: Value) -> Value {
    server.graphql(token, query, variables).await
}

const SIGN_UP: &str = "mutation($e: String!, $p: String!) { signUp(email: $e, password: $p) { token user { id email role } } }";
const SIGN_IN: &str = "mutation($e: String!, $p: String!) { signIn(email: $e, password: $p) { token user { id role } } }";

async fn sign_in(server: &TestServer, email: &str, password: &str) -> (String, String) {
    let response = mutate(server, None, SIGN_IN, json!({"e": email, "p": password})).await;
    let data = &response["data"]["signIn"];
    assert!(data["token"].is_string(), "{response}");
    (
        data["token"].as_str().unwrap().to_owned(),
        data["user"]["id"].as_str().unwrap().to_owned(),
    )
}

async fn subscribed(server: &TestServer, token: &str) -> GqlClient {
    let mut client = GqlClient::init_with(
        server.addr,
        json!({"authorization": format!("Bearer {token}")}),
    )
    .await;
    assert_eq!(client.next_message().await["type"], "connection_ack");
    client
        .subscribe("e", CHANGES, json!({"table": "items"}))
        .await;
    client
}

#[tokio::test]
async fn sign_up_and_sign_in_issue_working_tokens() {
    let server = server().await;
    let response = mutate(
        &server,
        None,
        SIGN_UP,
        json!({"e": "Ann@Example.com", "p": "correct horse"}),
    )
    .await;
    let data = &response["data"]["signUp"];
    assert_eq!(data["user"]["email"], "ann@example.com", "{response}");
    assert_eq!(data["user"]["role"], "USER");
    let token = data["token"].as_str().unwrap();
    let (status, me) = server.post_as(token, "{ me { id role } }").await;
    assert_eq!(status, 200);
    assert_eq!(me["data"]["me"]["id"], data["user"]["id"]);

    let again = mutate(
        &server,
        None,
        SIGN_UP,
        json!({"e": "ann@example.com", "p": "another one"}),
    )
    .await;
    assert_eq!(again["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    let short = mutate(
        &server,
        None,
        SIGN_UP,
        json!({"e": "bo@example.com", "p": "short"}),
    )
    .await;
    assert_eq!(short["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    let wrong = mutate(
        &server,
        None,
        SIGN_IN,
        json!({"e": "ann@example.com", "p": "wrong horse"}),
    )
    .await;
    assert_eq!(wrong["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    assert_eq!(wrong["errors"][0]["message"], "wrong email or password");
    let (token, _) = sign_in(&server, "ann@example.com", "correct horse").await;
    let (status, _) = server.post_as(&token, "{ me { id } }").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn sign_out_ends_that_sessions_streams_and_no_other() {
    let server = server().await;
    mutate(
        &server,
        None,
        SIGN_UP,
        json!({"e": "cy@example.com", "p": "password1"}),
    )
    .await;
    let (first, _) = sign_in(&server, "cy@example.com", "password1").await;
    let (second, _) = sign_in(&server, "cy@example.com", "password1").await;
    let mut a = subscribed(&server, &first).await;
    let mut b = subscribed(&server, &second).await;
    wait_for_subscribers(&server, 2).await;

    let started = Instant::now();
    let out = mutate(&server, Some(&first), "mutation { signOut }", json!({})).await;
    assert_eq!(out["data"]["signOut"], true, "{out}");
    let payload = a.next_payload("e").await;
    assert_eq!(
        payload["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{payload}"
    );
    assert_eq!(
        a.closed().await,
        (4403, "Forbidden: the session was revoked".to_owned())
    );
    eprintln!("sign-out reached the stream in {:?}", started.elapsed());

    // The other session goes on; the signed-out token is refused.
    server.sql("INSERT INTO items VALUES (1)").await;
    assert_eq!(b.next_item("e", "changes").await["row"]["id"], 1);
    let (status, body) = server.post_as(&first, "{ me { id } }").await;
    assert_eq!(
        (status, body["errors"][0]["message"].as_str()),
        (401, Some("the session was revoked"))
    );
    let mut again = GqlClient::init_with(
        server.addr,
        json!({"authorization": format!("Bearer {first}")}),
    )
    .await;
    assert_eq!(again.closed().await.0, 4403);
}

#[tokio::test]
async fn an_admin_revokes_a_users_sessions_on_every_node() {
    let one = server().await;
    let two = start_on(one.database_url.clone()).await;
    mutate(
        &one,
        None,
        SIGN_UP,
        json!({"e": "dee@example.com", "p": "password1"}),
    )
    .await;
    let (token, user_id) = sign_in(&one, "dee@example.com", "password1").await;
    // Connected to the other node.
    let mut client = subscribed(&two, &token).await;
    wait_for_subscribers(&two, 1).await;

    let revoke = "mutation($u: ID!) { revokeSessions(userId: $u) }";
    let denied = mutate(&one, Some(&token), revoke, json!({"u": user_id})).await;
    assert_eq!(denied["errors"][0]["extensions"]["code"], "FORBIDDEN");

    let admin = encode(
        &Header::default(),
        &json!({"sub": "root", "role": "admin", "exp": tidewire::auth::now() + 600}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let done = mutate(&one, Some(&admin), revoke, json!({"u": user_id})).await;
    // signUp and signIn each opened a session.
    assert_eq!(done["data"]["revokeSessions"], 2, "{done}");
    let payload = client.next_payload("e").await;
    assert_eq!(
        payload["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{payload}"
    );
    assert_eq!(client.closed().await.0, 4403);
}

#[tokio::test]
async fn mutations_are_rate_limited() {
    let server = TestServer::start_with(|config| {
        config.jwt_secret = Some(SECRET.into());
        config.mutations_per_second = 5;
    })
    .await;
    let mut limited = 0;
    for _ in 0..12 {
        let response = mutate(
            &server,
            None,
            SIGN_IN,
            json!({"e": "x@example.com", "p": "whatever1"}),
        )
        .await;
        if response["errors"][0]["extensions"]["code"] == "RATE_LIMITED" {
            limited += 1;
        }
    }
    assert!(limited >= 5, "only {limited} of 12 were limited");
}

#[tokio::test]
async fn create_admin_makes_the_first_admin() {
    let server = server().await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .args([
            "create-admin",
            "--email",
            "root@example.com",
            "--password",
            "admin-password",
        ])
        .env("DATABASE_URL", &server.database_url)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("admin root@example.com"));
    let (token, _) = sign_in(&server, "root@example.com", "admin-password").await;
    let (_, me) = server.post_as(&token, "{ me { role } }").await;
    assert_eq!(me["data"]["me"]["role"], "ADMIN");
}
