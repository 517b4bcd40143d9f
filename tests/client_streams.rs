//! `POST /streams/uploads` and `POST /streams/metrics` against a real
//! server and Postgres: integrity (SHA-256), atomicity (a bad line or a
//! client gone mid-body keeps nothing), statistics against a reference,
//! progress in order, and who may see an upload.

mod common;

use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const SECRET: &str = "a-client-streams-test-secret-0123456789";

async fn server() -> TestServer {
    TestServer::start_with(|config| config.jwt_secret = Some(SECRET.into())).await
}

fn bearer(user: &str) -> String {
    format!("Bearer {}", token(SECRET, user, "user", 600))
}

/// `chunks` upload lines of `size` pseudo-random bytes each, and the
/// SHA-256 of all their bytes.
fn upload_body(chunks: usize, size: usize) -> (Vec<u8>, String) {
    let mut rng = Rng::seeded();
    let mut hash = Sha256::new();
    let mut body = Vec::new();
    for sequence in 0..chunks {
        let data: Vec<u8> = (0..size).map(|_| rng.below(256) as u8).collect();
        hash.update(&data);
        let line = json!({
            "sequence": sequence,
            "data": base64::engine::general_purpose::STANDARD.encode(&data),
            "timestamp": "2026-11-28T10:00:00Z",
        });
        body.extend_from_slice(line.to_string().as_bytes());
        body.push(b'\n');
    }
    let hex = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    (body, hex)
}

async fn post(server: &TestServer, path: &str, user: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(server.url(path))
        .header("content-type", "application/x-ndjson")
        .body(body);
    if let Some(user) = user {
        request = request.header("authorization", bearer(user));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn chunks_stored(server: &TestServer, id: &str) -> i64 {
    server
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM tidewire.upload_chunks WHERE upload_id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}

async fn status_of(server: &TestServer, id: &str) -> String {
    server
        .db()
        .await
        .query_one(
            "SELECT status FROM tidewire.uploads WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn ten_thousand_chunks_arrive_whole_and_verified_by_sha256() {
    let server = server().await;
    let (body, sha256) = upload_body(10_000, 100);
    let (status, result) = post(&server, "/streams/uploads", Some("ann"), body).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["chunksReceived"], 10_000);
    assert_eq!(result["bytesReceived"], 1_000_000);
    assert_eq!(result["sha256"], sha256);
    let id = result["uploadId"].as_str().unwrap();
    assert_eq!(chunks_stored(&server, id).await, 10_000);
    let state = server
        .graphql(
            Some(&token(SECRET, "ann", "user", 600)),
            "query($id: ID!) { upload(id: $id) { status chunks bytes sha256 } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(
        state["data"]["upload"],
        json!({"status": "complete", "chunks": 10_000, "bytes": 1_000_000, "sha256": sha256})
    );
}

#[tokio::test]
async fn a_malformed_line_is_named_and_nothing_is_kept() {
    let server = server().await;
    let (mut body, _) = upload_body(10_000, 16);
    // Line 5,001 (sequence 5,000) loses its closing brace.
    let lines: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
    let mut broken = Vec::new();
    for (i, line) in lines.iter().enumerate().filter(|(_, l)| !l.is_empty()) {
        let line = if i == 5_000 {
            &line[..line.len() - 1]
        } else {
            line
        };
        broken.extend_from_slice(line);
        broken.push(b'\n');
    }
    body = broken;
    let id = "0b6f2a2e-9a41-4a7e-8f5e-1d2c3b4a5f60";
    let path = format!("/streams/uploads?uploadId={id}");
    let (status, refusal) = post(&server, &path, Some("ann"), body).await;
    assert_eq!(status, 400, "{refusal}");
    assert_eq!(refusal["line"], 5_001);
    assert!(
        refusal["error"].as_str().unwrap().starts_with("line 5001:"),
        "{refusal}"
    );
    assert_eq!(refusal["uploadId"], id);
    assert_eq!(status_of(&server, id).await, "failed");
    assert_eq!(chunks_stored(&server, id).await, 0);

    // Out of order and duplicate sequences are named too.
    let (body, _) = upload_body(3, 4);
    let text = String::from_utf8(body).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.swap(1, 2);
    let (status, refusal) = post(
        &server,
        "/streams/uploads",
        Some("ann"),
        lines.join("\n").into_bytes(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(refusal["line"], 2);
    assert!(
        refusal["error"].as_str().unwrap().contains("expected 1"),
        "{refusal}"
    );
    let empty = "{\"sequence\":0,\"data\":\"\",\"timestamp\":\"2026-11-28T10:00:00Z\"}\n";
    let (status, refusal) = post(&server, "/streams/uploads", Some("ann"), empty.into()).await;
    assert_eq!((status, &refusal["line"]), (400, &json!(1)), "{refusal}");
    let duplicate = format!("{}\n{}\n", lines[0], lines[0]);
    let (status, refusal) = post(
        &server,
        "/streams/uploads",
        Some("ann"),
        duplicate.into_bytes(),
    )
    .await;
    assert_eq!((status, &refusal["line"]), (400, &json!(2)), "{refusal}");
}

#[tokio::test]
async fn a_client_gone_mid_upload_leaves_no_completed_upload_and_no_chunks() {
    let server = server().await;
    let (body, _) = upload_body(2_000, 512);
    let id = "5d1a4b43-7d3e-4c36-9b1e-0a2f6f0e9c11";
    // The body's first half, then the connection drops.
    let half = body[..body.len() / 2].to_vec();
    let parts: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(half), Err(std::io::Error::other("the client went away"))];
    let sent = reqwest::Client::new()
        .post(server.url(&format!("/streams/uploads?uploadId={id}")))
        .header("authorization", bearer("ann"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            parts,
        )))
        .send()
        .await;
    assert!(sent.is_err() || !sent.unwrap().status().is_success());
    let deadline = tokio::time::Instant::now() + WAIT;
    while status_of(&server, id).await == "receiving" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upload never failed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status_of(&server, id).await, "failed");
    assert_eq!(chunks_stored(&server, id).await, 0);
}

#[tokio::test]
async fn progress_reaches_the_owner_in_order_and_nobody_else() {
    let server = server().await;
    let id = "8e3f1c2a-4b5d-4e6f-8a9b-0c1d2e3f4a5b";
    let query =
        "subscription($id: ID!) { uploadProgress(uploadId: $id) { chunks bytes status cursor } }";
    let mut ann = client_with_token(server.addr, &token(SECRET, "ann", "user", 600)).await;
    ann.subscribe("p", query, json!({"id": id})).await;
    // Subscribed before the upload exists (its id chosen by the client).
    wait_for_subscribers(&server, 1).await;
    let (body, sha256) = upload_body(350, 10);
    let (status, result) = post(
        &server,
        &format!("/streams/uploads?uploadId={id}"),
        Some("ann"),
        body,
    )
    .await;
    assert_eq!(
        (status, &result["sha256"]),
        (200, &json!(sha256)),
        "{result}"
    );
    let mut events = Vec::new();
    for _ in 0..4 {
        let item = ann.next_item("p", "uploadProgress").await;
        events.push((
            item["chunks"].as_i64().unwrap(),
            item["status"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(
        events,
        [
            (100, "receiving".to_owned()),
            (200, "receiving".to_owned()),
            (300, "receiving".to_owned()),
            (350, "complete".to_owned()),
        ]
    );

    // Bob can neither read it nor follow it.
    let bob = token(SECRET, "bob", "user", 600);
    let read = server
        .graphql(
            Some(&bob),
            "query($id: ID!) { upload(id: $id) { status } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(
        read["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{read}"
    );
    let mut bob = client_with_token(server.addr, &bob).await;
    bob.subscribe("p", query, json!({"id": id})).await;
    let refused = bob.next_payload("p").await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{refused}"
    );
    // Nor may anyone without a token upload.
    let (status, refusal) = post(&server, "/streams/uploads", None, b"{}".to_vec()).await;
    assert_eq!(
        (status, &refusal["errors"][0]["extensions"]["code"]),
        (401, &json!("UNAUTHENTICATED"))
    );
}

/// Linear-interpolation percentile of sorted `values`, as Postgres's
/// `percentile_cont`.
fn percentile(values: &[f64], p: f64) -> f64 {
    let position = p * (values.len() - 1) as f64;
    let (low, high) = (position.floor() as usize, position.ceil() as usize);
    values[low] + (values[high] - values[low]) * (position - low as f64)
}

#[tokio::test]
async fn metrics_are_kept_whole_with_statistics_equal_to_a_reference() {
    let server = server().await;
    let mut rng = Rng::seeded();
    let mut body = String::new();
    let mut by_name: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for i in 0..30_000 {
        let name = ["cpu", "latency", "queue"][i % 3];
        let value = rng.below(1_000_000) as f64 / 1000.0 - 200.0;
        by_name.entry(name).or_default().push(value);
        body.push_str(
            &json!({"name": name, "value": value, "timestamp": "2026-11-28T10:00:00.5Z"})
                .to_string(),
        );
        body.push('\n');
    }
    let (status, answer) = post(&server, "/streams/metrics", Some("ann"), body.into_bytes()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["rows"], 30_000);
    let statistics = answer["statistics"].as_array().unwrap();
    assert_eq!(statistics.len(), 3);
    for (stat, (name, values)) in statistics.iter().zip(by_name.iter_mut()) {
        values.sort_by(f64::total_cmp);
        assert_eq!(stat["name"], *name);
        assert_eq!(stat["count"], values.len());
        let close = |key: &str, expected: f64| {
            let got = stat[key].as_f64().unwrap();
            assert!(
                (got - expected).abs() < 1e-6,
                "{name} {key}: {got} vs {expected}"
            );
        };
        close("min", values[0]);
        close("max", values[values.len() - 1]);
        close("mean", values.iter().sum::<f64>() / values.len() as f64);
        close("p50", percentile(values, 0.5));
        close("p95", percentile(values, 0.95));
        close("p99", percentile(values, 0.99));
    }
    let db = server.db().await;
    let count = |sql: &'static str| {
        let db = &db;
        async move { db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM tidewire.metrics").await, 30_000);
    // One change in the log for the whole request.
    assert_eq!(
        count("SELECT count(*) FROM tidewire.changes WHERE table_name = 'tidewire.metric_batches'")
            .await,
        1
    );

    // A bad line anywhere: the request is refused whole, naming the line.
    let bad = "{\"name\":\"cpu\",\"value\":1,\"timestamp\":\"2026-11-28T10:00:00Z\"}\n\
               {\"name\":\"cpu\",\"value\":\"high\",\"timestamp\":\"2026-11-28T10:00:00Z\"}\n";
    let (status, refusal) = post(
        &server,
        "/streams/metrics",
        Some("ann"),
        bad.as_bytes().to_vec(),
    )
    .await;
    assert_eq!((status, &refusal["line"]), (400, &json!(2)), "{refusal}");
    assert_eq!(count("SELECT count(*) FROM tidewire.metrics").await, 30_000);
}

#[tokio::test]
async fn stream_limits_refuse_with_clear_errors() {
    let server = TestServer::start_with(|config| {
        config.jwt_secret = Some(SECRET.into());
        config.stream_max_line_bytes = 1024;
        config.stream_max_body_bytes = 64 * 1024;
        config.upload_max_chunk_bytes = 100;
        config.stream_requests_per_minute = 5;
    })
    .await;
    let long_line = format!("{}\n", "x".repeat(2000));
    let (status, refusal) = post(
        &server,
        "/streams/metrics",
        Some("ann"),
        long_line.into_bytes(),
    )
    .await;
    assert_eq!(status, 413, "{refusal}");
    assert!(
        refusal["error"]
            .as_str()
            .unwrap()
            .contains("longer than 1024 bytes"),
        "{refusal}"
    );
    let (body, _) = upload_body(1, 200);
    let (status, refusal) = post(&server, "/streams/uploads", Some("ann"), body).await;
    assert_eq!(status, 413, "{refusal}");
    assert!(
        refusal["error"]
            .as_str()
            .unwrap()
            .contains("at most 100 bytes"),
        "{refusal}"
    );
    let (body, _) = upload_body(2000, 50);
    let (status, refusal) = post(&server, "/streams/uploads", Some("ann"), body).await;
    assert_eq!(status, 413, "{refusal}");
    // Five requests a minute: the sixth is refused.
    let (status, _) = post(&server, "/streams/metrics", Some("ann"), Vec::new()).await;
    assert_eq!(status, 200);
    let (status, _) = post(&server, "/streams/metrics", Some("ann"), Vec::new()).await;
    assert_eq!(status, 200);
    let (status, refusal) = post(&server, "/streams/metrics", Some("ann"), Vec::new()).await;
    assert_eq!(status, 429, "{refusal}");
    // Another user has their own allowance.
    let (status, _) = post(&server, "/streams/metrics", Some("bob"), Vec::new()).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn ingested_metrics_reach_the_dashboard() {
    let server = server().await;
    let mut ann = client_with_token(server.addr, &token(SECRET, "ann", "user", 600)).await;
    ann.subscribe(
        "d",
        "subscription { dashboard(intervalMs: 200) { metricRowsLastMinute } }",
        json!({}),
    )
    .await;
    assert_eq!(
        ann.next_item("d", "dashboard").await["metricRowsLastMinute"],
        0
    );
    let mut body = String::new();
    for i in 0..250 {
        body.push_str(&format!(
            "{{\"name\":\"m\",\"value\":{i},\"timestamp\":\"2026-11-28T10:00:00Z\"}}\n"
        ));
    }
    let (status, _) = post(&server, "/streams/metrics", Some("bob"), body.into_bytes()).await;
    assert_eq!(status, 200);
    // Other figures (requests per second) may change first.
    while ann.next_item("d", "dashboard").await["metricRowsLastMinute"] != 250 {}
}

#[tokio::test]
async fn a_user_runs_at_most_two_stream_requests_at_once() {
    let server = server().await;
    // Two uploads whose bodies stay open.
    let mut open = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
        let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async {
            rx.recv().await.map(|item| (item, rx))
        }));
        let request = reqwest::Client::new()
            .post(server.url("/streams/uploads"))
            .header("authorization", bearer("ann"))
            .body(body)
            .send();
        open.push((tx, tokio::spawn(request)));
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let running = || async {
        server
            .db()
            .await
            .query_one(
                "SELECT count(*) FROM tidewire.uploads WHERE status = 'receiving'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    while running().await < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the uploads never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, refusal) = post(&server, "/streams/metrics", Some("ann"), Vec::new()).await;
    assert_eq!(status, 429, "{refusal}");
    // Someone else is not held back by ann's.
    let (status, _) = post(&server, "/streams/metrics", Some("bob"), Vec::new()).await;
    assert_eq!(status, 200);
    // Once one ends, ann may start another.
    let (tx, request) = open.pop().unwrap();
    drop(tx);
    let _ = request.await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, _) = post(&server, "/streams/metrics", Some("ann"), Vec::new()).await;
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_last_line_without_a_newline_counts() {
    let server = server().await;
    let body = "{\"name\":\"a\",\"value\":1,\"timestamp\":\"2026-11-28T10:00:00Z\"}\n\
                {\"name\":\"a\",\"value\":3,\"timestamp\":\"2026-11-28T10:00:00Z\"}";
    let (status, answer) = post(
        &server,
        "/streams/metrics",
        Some("ann"),
        body.as_bytes().to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["statistics"][0]["count"], 2);
    assert_eq!(answer["statistics"][0]["mean"], 2.0);
}
