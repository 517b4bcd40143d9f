//! Tokens: verified over HTTP and in `connection_init`, refused when
//! forged, expired or unsigned; expiry ends streams; a fresh token keeps
//! them going.

mod common;

use std::time::Duration;

use common::{wait_for_subscribers, GqlClient, TestServer, CHANGES};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "test-secret-test-secret-test-secret!";

fn now() -> i64 {
    tidewire::auth::now()
}

fn token(sub: &str, role: &str, expires_in: i64, secret: &str) -> String {
    common::token(secret, sub, role, expires_in)
}

/// `alg: none`: a token with no signature at all.
fn unsigned(sub: &str) -> String {
    let encode = |v: serde_json::Value| {
        use std::fmt::Write;
        // base64url without padding, by hand: tests avoid an extra crate.
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = v.to_string().into_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                let _ = out.write_char(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    };
    format!(
        "{}.{}.",
        encode(json!({"alg": "none", "typ": "JWT"})),
        encode(json!({"sub": sub, "role": "admin", "exp": now() + 600}))
    )
}

async fn server() -> TestServer {
    let server = TestServer::start_with(|config| config.jwt_secret = Some(SECRET.into())).await;
    server
        .sql("CREATE TABLE items (id int PRIMARY KEY); SELECT tidewire.track('items', public => true);")
        .await;
    server
}

#[tokio::test]
async fn http_verifies_bearer_tokens() {
    let server = server().await;
    let (status, body) = server
        .post_as(&token("alice", "admin", 600, SECRET), "{ me { id role } }")
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["me"], json!({"id": "alice", "role": "ADMIN"}));

    let anonymous = server.post("{ me { id } }", json!({})).await;
    assert_eq!(
        anonymous["errors"][0]["extensions"]["code"],
        "UNAUTHENTICATED"
    );

    for bad in [
        token("alice", "admin", 600, "some-other-secret-some-other-secret"),
        token("alice", "admin", -5, SECRET),
        unsigned("alice"),
        "not-a-token".to_owned(),
    ] {
        let (status, body) = server.post_as(&bad, "{ me { id } }").await;
        assert_eq!(status, 401, "{bad}: {body}");
        assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    }
}

#[tokio::test]
async fn connection_init_carries_the_token() {
    let server = server().await;
    let mut client =
        common::client_with_token(server.addr, &token("bob", "user", 600, SECRET)).await;
    client
        .subscribe("me", "{ me { id role } }", json!({}))
        .await;
    assert_eq!(
        client.next_item("me", "me").await,
        json!({"id": "bob", "role": "USER"})
    );

    for bad in [
        format!("Bearer {}", token("bob", "user", -1, SECRET)),
        format!("Bearer {}", unsigned("bob")),
        "Basic Ym9iOnB3".to_owned(),
    ] {
        let mut client = GqlClient::init_with(server.addr, json!({"authorization": bad})).await;
        let (code, reason) = client.closed().await;
        assert_eq!(code, 4403, "{reason}");
        assert!(reason.starts_with("Forbidden"), "{reason}");
    }
}

#[tokio::test]
async fn an_expiring_token_ends_its_streams_with_unauthenticated() {
    let server = server().await;
    let mut client =
        common::client_with_token(server.addr, &token("carol", "user", 2, SECRET)).await;
    client
        .subscribe("e", CHANGES, json!({"table": "items"}))
        .await;
    wait_for_subscribers(&server, 1).await;
    let payload = client.next_payload("e").await;
    assert_eq!(
        payload["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{payload}"
    );
    let (code, reason) = client.closed().await;
    assert_eq!(
        (code, reason.as_str()),
        (4403, "Forbidden: the token has expired")
    );
    wait_for_subscribers(&server, 0).await;
}

#[tokio::test]
async fn a_fresh_token_over_ping_keeps_the_subscriptions() {
    let server = server().await;
    let mut client =
        common::client_with_token(server.addr, &token("dave", "user", 2, SECRET)).await;
    client
        .subscribe("e", CHANGES, json!({"table": "items"}))
        .await;
    wait_for_subscribers(&server, 1).await;

    let fresh = format!("Bearer {}", token("dave", "user", 600, SECRET));
    client
        .send(json!({"type": "ping", "payload": {"authorization": fresh}}))
        .await;
    assert_eq!(client.next_message().await["type"], "pong");
    // Past the first token's expiry, the stream still delivers.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.sql("INSERT INTO items VALUES (1)").await;
    assert_eq!(client.next_item("e", "changes").await["row"]["id"], 1);

    // Someone else's token is not a refresh.
    let other = format!("Bearer {}", token("mallory", "admin", 600, SECRET));
    client
        .send(json!({"type": "ping", "payload": {"authorization": other}}))
        .await;
    assert_eq!(client.closed().await.0, 4403);
}

/// A connected client acting as `sub` with `role`.
async fn client_as(server: &TestServer, sub: &str, role: &str) -> GqlClient {
    common::client_with_token(server.addr, &token(sub, role, 600, SECRET)).await
}

#[tokio::test]
async fn changes_of_a_private_table_are_for_admins() {
    let server = server().await;
    server
        .sql("CREATE TABLE secrets (id int PRIMARY KEY); SELECT tidewire.track('secrets');")
        .await;
    let mut anonymous = server.ws().await;
    anonymous
        .subscribe("s", CHANGES, json!({"table": "secrets"}))
        .await;
    let payload = anonymous.next_payload("s").await;
    assert_eq!(
        payload["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{payload}"
    );

    let mut user = client_as(&server, "u1", "user").await;
    user.subscribe("s", CHANGES, json!({"table": "secrets"}))
        .await;
    let payload = user.next_payload("s").await;
    assert_eq!(
        payload["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{payload}"
    );

    let mut admin = client_as(&server, "root", "admin").await;
    admin
        .subscribe("s", CHANGES, json!({"table": "secrets"}))
        .await;
    wait_for_subscribers(&server, 1).await;
    server.sql("INSERT INTO secrets VALUES (1)").await;
    assert_eq!(admin.next_item("s", "changes").await["row"]["id"], 1);
}

#[tokio::test]
async fn users_read_only_their_own_rows_of_an_owned_table() {
    let server = server().await;
    server
        .sql(
            "CREATE TABLE orders (id int PRIMARY KEY, user_id text, amount int);
             SELECT tidewire.track('orders', owner_column => 'user_id');",
        )
        .await;
    let mut ann = client_as(&server, "ann", "user").await;
    let mut ben = client_as(&server, "ben", "user").await;
    let mut admin = client_as(&server, "root", "admin").await;
    for client in [&mut ann, &mut ben, &mut admin] {
        client
            .subscribe("o", CHANGES, json!({"table": "orders"}))
            .await;
    }
    // Three viewers: three executions, no sharing across identities.
    wait_for_subscribers(&server, 3).await;
    server
        .sql("INSERT INTO orders VALUES (1, 'ann', 10), (2, 'ben', 20), (3, 'ann', 30)")
        .await;
    let ids = |items: Vec<serde_json::Value>| -> Vec<i64> {
        items
            .iter()
            .map(|i| i["row"]["id"].as_i64().unwrap())
            .collect()
    };
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(ann.next_item("o", "changes").await);
    }
    assert_eq!(ids(got), [1, 3]);
    assert_eq!(ids(vec![ben.next_item("o", "changes").await]), [2]);
    let mut all = Vec::new();
    for _ in 0..3 {
        all.push(admin.next_item("o", "changes").await);
    }
    assert_eq!(ids(all), [1, 2, 3]);
    ann.assert_quiet(Duration::from_millis(200)).await;
    ben.assert_quiet(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn connections_per_user_are_capped() {
    let server = TestServer::start_with(|config| {
        config.jwt_secret = Some(SECRET.into());
        config.max_connections_per_user = 2;
    })
    .await;
    let _one = client_as(&server, "eve", "user").await;
    let _two = client_as(&server, "eve", "user").await;
    let bearer = format!("Bearer {}", token("eve", "user", 600, SECRET));
    let mut third = GqlClient::init_with(server.addr, json!({"authorization": bearer})).await;
    let (code, reason) = third.closed().await;
    assert_eq!(
        (code, reason.as_str()),
        (4429, "too many connections for this user")
    );
    // Other users are not affected.
    let _other = client_as(&server, "fay", "user").await;
}

#[tokio::test]
async fn the_server_refuses_to_start_without_a_key() {
    let mut config = tidewire::config::Config::for_database(common::fresh_database().await);
    config.jwt_secret = None;
    let error = tidewire::server::App::prepare(config)
        .await
        .err()
        .expect("must refuse")
        .to_string();
    assert!(error.contains("TIDEWIRE_JWT_SECRET"), "{error}");
}

#[tokio::test]
async fn injection_shaped_input_in_every_argument_is_just_data() {
    let server = server().await;
    let evil = "x'); DROP TABLE items; --";
    let mut client =
        common::client_with_token(server.addr, &token("root", "admin", 600, SECRET)).await;
    let cases = [
        ("t", CHANGES, json!({"table": evil})),
        ("w", CHANGES, json!({"table": "items", "where": {evil: 1}})),
        ("a", CHANGES, json!({"table": "items", "after": evil})),
        (
            "c",
            "subscription($s: Int!) { countdown(seconds: $s) }",
            json!({"s": evil}),
        ),
        (
            "u",
            "mutation($e: String!) { signUp(email: $e, password: \"password1\") { token } }",
            json!({"e": evil}),
        ),
        (
            "i",
            "mutation($e: String!) { signIn(email: $e, password: $e) { token } }",
            json!({"e": evil}),
        ),
    ];
    for (id, query, variables) in cases {
        client.subscribe(id, query, variables).await;
        let payload = client.next_payload(id).await;
        let errors = payload["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{id}: {payload}"));
        for error in errors {
            let code = error["extensions"]["code"].as_str().unwrap_or_default();
            assert!(
                ["BAD_USER_INPUT", "UNAUTHENTICATED"].contains(&code),
                "{id}: {payload}"
            );
            let message = error["message"].as_str().unwrap_or_default();
            assert!(
                !message.contains("SQL") && !message.contains("postgres"),
                "{id}: {payload}"
            );
        }
    }
    // As an id it is not one: refused as input before any SQL sees it.
    client
        .subscribe(
            "r",
            "mutation($u: ID!) { revokeSessions(userId: $u) }",
            json!({"u": evil}),
        )
        .await;
    let payload = client.next_payload("r").await;
    assert_eq!(
        payload["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{payload}"
    );
    // As a `where` value it is data compared in memory: it matches nothing.
    client
        .subscribe(
            "v",
            CHANGES,
            json!({"table": "items", "where": {"id": {"_eq": evil}}}),
        )
        .await;
    wait_for_subscribers(&server, 1).await;
    // Nothing was dropped; the table still works.
    server.sql("INSERT INTO items VALUES (5)").await;
    client.assert_quiet(Duration::from_millis(300)).await;
    let count: i64 = server
        .db()
        .await
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
}

#[tokio::test]
async fn tokens_of_another_issuer_verify_with_its_rs256_public_key() {
    let dir = std::env::temp_dir().join(format!("tidewire-rsa-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (private, public) = (dir.join("key.pem"), dir.join("pub.pem"));
    let openssl = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .status()
            .expect("openssl");
        assert!(status.success());
    };
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        private.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    let public_pem = std::fs::read(&public).unwrap();
    let server = TestServer::start_with(|config| {
        config.jwt_secret = None;
        config.jwt_public_key = Some(public.clone());
    })
    .await;

    let claims = json!({"sub": "ext-1", "role": "user", "exp": now() + 600});
    let rs256 = encode(
        &Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap(),
    )
    .unwrap();
    let (status, body) = server.post_as(&rs256, "{ me { id } }").await;
    assert_eq!(
        (status, body["data"]["me"]["id"].as_str()),
        (200, Some("ext-1")),
        "{body}"
    );

    // Algorithm confusion: HS256 "signed" with the public key as secret.
    let confused = encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(&public_pem),
    )
    .unwrap();
    let (status, _) = server.post_as(&confused, "{ me { id } }").await;
    assert_eq!(status, 401);
    // This server issues no tokens of its own.
    let response = server
        .post(
            "mutation { signIn(email: \"a@example.com\", password: \"password1\") { token } }",
            json!({}),
        )
        .await;
    assert_eq!(
        response["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{response}"
    );
    assert!(
        response["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("does not issue tokens")),
        "{response}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
