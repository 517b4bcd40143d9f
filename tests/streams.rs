//! Server-generated streams over the real WebSocket.

mod common;

use std::time::{Duration, Instant};

use common::{wait_for_metric, TestServer};
use serde_json::json;

const COUNTDOWN: &str = "subscription($s: Int!) { countdown(seconds: $s) }";

#[tokio::test]
async fn countdown_counts_down_once_a_second_then_completes() {
    let server = TestServer::start().await;
    let mut client = server.ws().await;
    client.subscribe("c", COUNTDOWN, json!({"s": 2})).await;
    let started = Instant::now();
    let mut values = Vec::new();
    for _ in 0..3 {
        values.push(client.next_item("c", "countdown").await);
    }
    let elapsed = started.elapsed();
    assert_eq!(values, [json!(2), json!(1), json!(0)]);
    // Two one-second steps between the first and the last value.
    assert!(elapsed >= Duration::from_millis(1800), "{elapsed:?}");
    let done = client.next_message().await;
    assert_eq!(done, json!({"id": "c", "type": "complete"}));
    wait_for_metric(&server, "tidewire_countdowns_running", |v| v == 0.0).await;
}

#[tokio::test]
async fn a_cancelled_countdown_stops_its_timer() {
    let server = TestServer::start().await;
    let mut client = server.ws().await;
    client.subscribe("c", COUNTDOWN, json!({"s": 60})).await;
    assert_eq!(client.next_item("c", "countdown").await, 60);
    assert_eq!(server.metric("tidewire_countdowns_running").await, 1.0);
    client.complete("c").await;
    wait_for_metric(&server, "tidewire_countdowns_running", |v| v == 0.0).await;
    client.assert_quiet(Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn countdown_bounds_are_checked() {
    let server = TestServer::start_with(|config| config.max_countdown = 10).await;
    let mut client = server.ws().await;
    for (id, seconds) in [("neg", -1), ("big", 11)] {
        client.subscribe(id, COUNTDOWN, json!({"s": seconds})).await;
        let payload = client.next_payload(id).await;
        assert_eq!(
            payload["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{payload}"
        );
    }
    assert_eq!(server.metric("tidewire_countdowns_running").await, 0.0);
}
