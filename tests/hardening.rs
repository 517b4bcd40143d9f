//! What an anonymous attacker can send: nested values, odd bodies, slow or
//! endless bytes, borrowed sockets and a catch-up storm. Each must leave the
//! server up and everyone else served (SECURITY.md lists them).

mod common;

use std::time::{Duration, Instant};

use common::{
    token, wait_for_metric, wait_for_shared_subscribers, GqlClient, TestServer, CHANGES, WAIT,
};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn first_error(body: &Value) -> (&str, &str) {
    let error = &body["errors"][0];
    (
        error["extensions"]["code"].as_str().unwrap_or_default(),
        error["message"].as_str().unwrap_or_default(),
    )
}

#[tokio::test]
async fn deeply_nested_values_are_refused_and_the_server_stays_up() {
    let server = TestServer::start().await;
    let lists = format!(
        "{{ stock(symbol: {}\"A\"{}) {{ value }} }}",
        "[".repeat(2000),
        "]".repeat(2000)
    );
    let objects = format!(
        "subscription {{ changes(table: \"x\", where: {}1{}) {{ op }} }}",
        "{a: ".repeat(2000),
        "}".repeat(2000)
    );
    for query in [&lists, &objects] {
        let body = server.post(query, json!({})).await;
        let (code, message) = first_error(&body);
        assert_eq!(code, "BAD_USER_INPUT", "{body}");
        assert!(message.contains("nests brackets deeper"), "{message}");
    }

    // Over a WebSocket: an error for that operation, the connection goes on.
    let mut client = TestServer::ws(&server).await;
    client.subscribe("deep", &objects, json!({})).await;
    let payload = client.next_payload("deep").await;
    assert_eq!(payload["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    client.send(json!({"type": "ping"})).await;
    assert_eq!(client.next_message().await["type"], "pong");

    let body = server.post("{ trackedTables }", json!({})).await;
    assert!(body["data"]["trackedTables"].is_array(), "{body}");
}

#[tokio::test]
async fn post_bodies_must_be_small_json() {
    let server = TestServer::start_with(|c| c.max_body_bytes = 64 * 1024).await;
    let http = reqwest::Client::new();
    let query = json!({"query": "{ trackedTables }"}).to_string();

    // A page on another site can send text/plain without a preflight.
    let response = http
        .post(server.url("/graphql"))
        .header("content-type", "text/plain")
        .body(query.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let body: Value = response.json().await.unwrap();
    assert_eq!(first_error(&body).0, "BAD_USER_INPUT");

    let big = json!({"query": "{ trackedTables }", "variables": {"x": "y".repeat(5 << 20)}});
    let response = http
        .post(server.url("/graphql"))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert!(
        first_error(&body).1.contains("larger than 65536 bytes"),
        "{body}"
    );

    let response = http
        .post(server.url("/graphql"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let text = response.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).expect("a JSON error body");
    assert_eq!(first_error(&body).0, "BAD_USER_INPUT");
    assert!(
        !text.contains("InvalidRequest"),
        "no Rust debug text: {text}"
    );

    // The ordinary request still works, with a charset parameter too.
    let response = http
        .post(server.url("/graphql"))
        .header("content-type", "application/json; charset=utf-8")
        .body(query)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_nul_character_in_text_is_bad_input() {
    let server = TestServer::start().await;
    let body = server
        .post(
            r#"mutation { signIn(email: "ann\u0000@example.com", password: "whatever1") { token } }"#,
            json!({}),
        )
        .await;
    assert_eq!(first_error(&body).0, "BAD_USER_INPUT", "{body}");
    let body = server
        .post(
            "mutation($e: String!) { signIn(email: $e, password: \"whatever1\") { token } }",
            json!({"e": "ann\u{0}@example.com"}),
        )
        .await;
    assert_eq!(first_error(&body).0, "BAD_USER_INPUT", "{body}");
}

/// True if the server closes `stream` within `wait` (EOF or reset).
async fn closed_by_server(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn slow_and_silent_http_clients_are_cut_off() {
    let server = TestServer::start_with(|c| c.http_read_timeout = Duration::from_millis(300)).await;
    let mut partial = TcpStream::connect(server.addr).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    assert!(
        closed_by_server(&mut partial, WAIT).await,
        "partial headers held open"
    );
    assert!(
        closed_by_server(&mut silent, WAIT).await,
        "silent connection held open"
    );
}

#[tokio::test]
async fn connections_per_address_count_plain_http_too() {
    let server = TestServer::start_with(|c| c.max_connections_per_address = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let mut extra = TcpStream::connect(server.addr).await.unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(WAIT, extra.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer:?}");
    drop(held);
    // Slots come back when the connections close.
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(response) = reqwest::get(server.url("/healthz")).await {
            if response.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "slots never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A WebSocket opened by hand, to send frames no client library sends.
async fn raw_websocket(server: &TestServer) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET /graphql HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n",
        server.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

/// A server whose WebSockets may carry messages of at most 1 KiB, and that
/// waits longer for `connection_init` than a test does: only the message
/// budget may close a raw socket.
async fn small_message_server() -> TestServer {
    TestServer::start_with(|c| {
        c.max_message_bytes = 1024;
        c.init_timeout = Duration::from_secs(60);
    })
    .await
}

/// Opens a text message (no FIN) and sends `round` `rounds` times; true if
/// the server cut the connection meanwhile or within `WAIT` after.
async fn cut_off_sending(server: &TestServer, round: &[u8], rounds: usize) -> bool {
    let mut stream = raw_websocket(server).await;
    stream.write_all(&empty_frame(0x01)).await.unwrap();
    for _ in 0..rounds {
        if stream.write_all(round).await.is_err() {
            return true;
        }
    }
    closed_by_server(&mut stream, WAIT).await
}

/// A masked client frame with an empty payload.
fn empty_frame(opcode_and_fin: u8) -> [u8; 6] {
    [opcode_and_fin, 0x80, 1, 2, 3, 4]
}

#[tokio::test]
async fn endless_empty_continuation_frames_are_cut_off() {
    let server = small_message_server().await;
    // Continuation frames that add nothing: 100,000 of them, far past the
    // 17 KiB a 1 KiB message may take on the wire.
    let continuation = empty_frame(0x00).repeat(1000);
    assert!(
        cut_off_sending(&server, &continuation, 100).await,
        "the server kept reading empty fragments"
    );
}

#[tokio::test]
async fn pings_between_fragments_do_not_reset_the_message_budget() {
    let server = small_message_server().await;
    // A ping (a control frame may come between fragments), then empty
    // continuations, again and again.
    let mut round = empty_frame(0x89).to_vec();
    round.extend(empty_frame(0x00).repeat(50));
    assert!(
        cut_off_sending(&server, &round, 400).await,
        "pings reset the message budget"
    );
}

#[tokio::test]
async fn a_message_sent_a_byte_at_a_time_is_cut_off() {
    let server = TestServer::start_with(|c| {
        c.ws_message_timeout = Duration::from_millis(300);
        c.keepalive = Duration::from_millis(100);
        // Longer than the test waits: only the message timeout may close.
        c.init_timeout = Duration::from_secs(60);
    })
    .await;
    let mut stream = raw_websocket(&server).await;
    // First fragment of a text message, one byte ("{"), and no more.
    stream
        .write_all(&[0x01, 0x81, 0, 0, 0, 0, b'{'])
        .await
        .unwrap();
    assert!(closed_by_server(&mut stream, WAIT).await);
}

#[tokio::test]
async fn only_connection_init_signs_a_socket_in() {
    let server = TestServer::start_with(|c| {
        c.max_connections_per_user = 1;
        c.jwt_secret = Some("a-test-secret-that-is-long-enough-123".into());
    })
    .await;
    let ann = token("a-test-secret-that-is-long-enough-123", "ann", "user", 600);
    let _counted = common::client_with_token(server.addr, &ann).await;
    // A second socket tries to slip past the per-user cap with a ping.
    let mut sneaky = GqlClient::open(server.addr, "graphql-transport-ws").await;
    sneaky
        .send(json!({"type": "ping", "payload": {"authorization": format!("Bearer {ann}")}}))
        .await;
    assert_eq!(sneaky.closed().await.0, 4403);
    // Anonymous after init, then a token in a ping: refused as well.
    let mut anonymous = server.ws().await;
    anonymous
        .send(json!({"type": "ping", "payload": {"authorization": format!("Bearer {ann}")}}))
        .await;
    assert_eq!(anonymous.closed().await.0, 4403);
}

#[tokio::test]
async fn metrics_can_require_a_token() {
    let server = TestServer::start_with(|c| c.metrics_token = Some("scrape-me".into())).await;
    let http = reqwest::Client::new();
    let refused = http.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let allowed = http
        .get(server.url("/metrics"))
        .bearer_auth("scrape-me")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    assert!(allowed
        .text()
        .await
        .unwrap()
        .contains("tidewire_listener_up"));
}

#[tokio::test]
async fn the_origin_check_compares_scheme_host_and_port_not_the_host_header() {
    let server = TestServer::start().await;
    let own = format!("http://{}", server.addr);
    let port = server.addr.port();
    assert!(GqlClient::try_open(server.addr, &[("origin", &own)])
        .await
        .is_ok());
    let localhost = format!("http://localhost:{port}");
    assert!(GqlClient::try_open(server.addr, &[("origin", &localhost)])
        .await
        .is_ok());
    let https = format!("https://{}", server.addr);
    let other_port = format!("http://127.0.0.1:{}", port.wrapping_add(1));
    for origin in [https.as_str(), other_port.as_str()] {
        assert_eq!(
            GqlClient::try_open(server.addr, &[("origin", origin)])
                .await
                .err(),
            Some(403),
            "{origin}"
        );
    }
    // A Host header naming the attacker's site does not make it "own".
    assert_eq!(
        GqlClient::try_open(
            server.addr,
            &[("origin", "http://evil.example"), ("host", "evil.example")]
        )
        .await
        .err(),
        Some(403)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_storm_does_not_delay_live_delivery() {
    let server = TestServer::start_with(|c| {
        c.pool_size = 2;
        c.max_subscriptions = 100;
    })
    .await;
    server
        .sql(
            "CREATE TABLE history (id bigint PRIMARY KEY, name text, filler text);
             SELECT tidewire.track('history', public => true);
             CREATE TABLE live (id bigint PRIMARY KEY);
             SELECT tidewire.track('live', public => true);
             INSERT INTO history SELECT i, 'row', repeat('x', 1000) FROM generate_series(1, 30000) i;",
        )
        .await;
    wait_for_metric(&server, "tidewire_changes_published_total", |v| {
        v >= 30000.0
    })
    .await;
    // 400 subscriptions replay the whole log, looking for a row that never
    // comes: minutes of reads between them.
    let mut storm = Vec::new();
    for socket in 0..4 {
        let mut client = server.ws().await;
        for i in 0..100 {
            let id = format!("s{socket}-{i}");
            client
                .subscribe(
                    &id,
                    CHANGES,
                    json!({"table": "history", "where": {"name": "never"}, "after": "tw1:0:0"}),
                )
                .await;
        }
        storm.push(client);
    }
    // Every storm subscription has started and is reading the log.
    wait_for_shared_subscribers(&server, 400, 400).await;
    let mut watcher = server.ws().await;
    watcher
        .subscribe("live", CHANGES, json!({"table": "live"}))
        .await;
    wait_for_shared_subscribers(&server, 401, 401).await;

    let db = server.db().await;
    for id in 1..=3 {
        let written = Instant::now();
        db.batch_execute(&format!("INSERT INTO live VALUES ({id})"))
            .await
            .unwrap();
        println!("insert took {:?}", written.elapsed());
        let item = watcher.next_item("live", "changes").await;
        let latency = written.elapsed();
        assert_eq!(item["row"]["id"], id);
        println!("live delivery during the storm: {latency:?}");
        assert!(
            latency < Duration::from_secs(2),
            "live delivery waited {latency:?} behind catch-up reads"
        );
    }
    assert!(
        server.ready().await,
        "/readyz must stay up during the storm"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_connection() {
    let server = TestServer::start_with(|c| {
        c.ws_message_timeout = Duration::from_secs(1);
        c.keepalive = Duration::from_millis(200);
    })
    .await;
    server
        .sql("CREATE TABLE blobs (id bigint PRIMARY KEY, body text); SELECT tidewire.track('blobs', public => true);")
        .await;
    let mut stalled = GqlClient::connect_small_buffer(server.addr).await;
    stalled
        .subscribe("s", CHANGES, json!({"table": "blobs"}))
        .await;
    wait_for_metric(&server, "tidewire_websocket_connections", |v| v == 1.0).await;
    wait_for_metric(&server, "tidewire_hub_subscribers", |v| v == 1.0).await;
    // Far more than the socket buffers hold: the server's writes block.
    let db = server.db().await;
    for id in 1..=24i64 {
        db.execute(
            "INSERT INTO blobs VALUES ($1, repeat('z', 1 << 20))",
            &[&id],
        )
        .await
        .unwrap();
    }
    // The client never reads: after --ws-message-timeout its connection
    // goes, with its subscription.
    wait_for_metric(&server, "tidewire_websocket_connections", |v| v == 0.0).await;
    wait_for_metric(&server, "tidewire_subscriptions", |v| v == 0.0).await;
    drop(stalled);
}
