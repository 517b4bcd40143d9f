//! `/healthz`, `/readyz` and `/metrics`.

use std::{fmt::Write, sync::atomic::Ordering, time::Duration};

use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};

use super::AppState;

/// The process is up.
pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the database answers and the listener is live.
pub(super) async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let database = database_answers(&state).await;
    let listener = state.listener.healthy();
    let stuck = if state.listener.stuck.load(Ordering::SeqCst) {
        " (stuck)"
    } else {
        ""
    };
    let body = format!(
        "database: {}\nlistener: {}{stuck}\n",
        up(database),
        up(listener)
    );
    let status = if database && listener {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

/// Prometheus text format; behind `--metrics-token` when one is set.
pub(super) async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(token) = &state.metrics_token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        if presented != Some(token.as_str()) {
            return (
                StatusCode::UNAUTHORIZED,
                "metrics need `Authorization: Bearer <--metrics-token>`\n",
            )
                .into_response();
        }
    }
    let listener = &state.listener;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, value: u64| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    };
    gauge(
        "tidewire_listener_up",
        "1 while the LISTEN connection is live.",
        "gauge",
        listener.live.load(Ordering::SeqCst).into(),
    );
    gauge(
        "tidewire_listener_reconnects_total",
        "Times the listener lost its connection and reconnected.",
        "counter",
        listener.reconnects.load(Ordering::Relaxed),
    );
    gauge(
        "tidewire_changes_published_total",
        "Changes moved from the log into the hub.",
        "counter",
        listener.published.load(Ordering::Relaxed),
    );
    gauge(
        "tidewire_listener_stuck",
        "1 while the listener publishes nothing although the log has newer commits.",
        "gauge",
        listener.stuck.load(Ordering::SeqCst).into(),
    );
    gauge(
        "tidewire_feed_catchups_total",
        "Times a subscriber fell behind its topic buffer and read the log instead.",
        "counter",
        state.hub.catchups(),
    );
    gauge(
        "tidewire_websocket_queued_bytes",
        "Outgoing WebSocket bytes queued and not yet written, over all connections.",
        "gauge",
        state.queued_bytes.load(Ordering::Relaxed) as u64,
    );
    gauge(
        "tidewire_subscriptions",
        "Subscriptions running over all WebSocket connections.",
        "gauge",
        state.operations.running.load(Ordering::Relaxed) as u64,
    );
    gauge(
        "tidewire_subscription_executions_total",
        "Subscription executions started; identical subscriptions share one.",
        "counter",
        state.operations.fanout.executions(),
    );
    gauge(
        "tidewire_shared_executions",
        "Shared executions running now (distinct subscription shapes).",
        "gauge",
        state.operations.fanout.group_count() as u64,
    );
    gauge(
        "tidewire_hub_buffered_bytes",
        "Bytes of changes buffered in hub topics for subscribers that have not read them.",
        "gauge",
        state.hub.buffered_bytes() as u64,
    );
    gauge(
        "tidewire_shared_buffered_bytes",
        "Bytes of shared results buffered for members that have not read them.",
        "gauge",
        state.operations.fanout.buffered_bytes() as u64,
    );
    gauge(
        "tidewire_countdowns_running",
        "countdown subscriptions whose timer runs now.",
        "gauge",
        state.countdowns.running() as u64,
    );
    gauge(
        "tidewire_room_presence_entries",
        "(room, user) pairs with a chatRoom stream on this node.",
        "gauge",
        state.rooms.presence_entries() as u64,
    );
    gauge(
        "tidewire_room_typing_entries",
        "Typing flags held (from every node) until they expire.",
        "gauge",
        state.rooms.typing_entries() as u64,
    );
    gauge(
        "tidewire_room_watches",
        "Rooms whose presence or typing a subscriber on this node watches (one per room and kind).",
        "gauge",
        state.rooms.watched_rooms() as u64,
    );
    gauge(
        "tidewire_membership_watches",
        "(room, user) memberships whose end would end a stream on this node.",
        "gauge",
        state.memberships.watched() as u64,
    );
    gauge(
        "tidewire_live_snapshot_reads_total",
        "liveRows snapshots read from the database (subscribers of one set arriving together share one).",
        "counter",
        state.live_snapshots.reads(),
    );
    gauge(
        "tidewire_live_snapshot_cache_bytes",
        "Bytes of liveRows snapshots kept for subscribers of the same set arriving together.",
        "gauge",
        state.live_snapshots.bytes() as u64,
    );
    gauge(
        "tidewire_hub_topics",
        "Topics with at least one subscriber.",
        "gauge",
        state.hub.topic_count() as u64,
    );
    gauge(
        "tidewire_hub_subscribers",
        "Live subscriptions over all topics.",
        "gauge",
        state.hub.subscriber_count() as u64,
    );
    gauge(
        "tidewire_websocket_connections",
        "Open WebSocket connections.",
        "gauge",
        state.open_sockets() as u64,
    );
    let _ = write!(
        out,
        "# HELP tidewire_notify_queue_usage Fraction of Postgres's notification queue in use; \
         notifying commits fail at 1.\n# TYPE tidewire_notify_queue_usage gauge\n\
         tidewire_notify_queue_usage {}\n",
        listener.queue_usage()
    );
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}

async fn database_answers(state: &AppState) -> bool {
    let check = async {
        let client = state.pool.get().await.ok()?;
        client.simple_query("SELECT 1").await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), check).await,
        Ok(Some(_))
    )
}

fn up(ok: bool) -> &'static str {
    if ok {
        "up"
    } else {
        "down"
    }
}
