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
    let claims = json!({"sub": sub, "role": role, "sid": "s-1", "exp": now() + expires_in});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
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
        .sql("CREATE TABLE items (id int PRIMARY KEY); SELECT tidewire.track('items');")
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
    let good = format!("Bearer {}", token("bob", "user", 600, SECRET));
    let mut client = GqlClient::init_with(server.addr, json!({"authorization": good})).await;
    assert_eq!(client.next_message().await["type"], "connection_ack");
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
    let short = format!("Bearer {}", token("carol", "user", 2, SECRET));
    let mut client = GqlClient::init_with(server.addr, json!({"authorization": short})).await;
    assert_eq!(client.next_message().await["type"], "connection_ack");
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
    let short = format!("Bearer {}", token("dave", "user", 2, SECRET));
    let mut client = GqlClient::init_with(server.addr, json!({"authorization": short})).await;
    assert_eq!(client.next_message().await["type"], "connection_ack");
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
