//! GraphQL over WebSocket: `graphql-transport-ws` and the legacy
//! `graphql-ws` (subscriptions-transport-ws) subprotocol.
//!
//! async-graphql's protocol `Stream` does the message handling. Around it:
//! a writer task with a byte budget (a client that reads slowly stops its
//! subscriptions from pulling, so they fall back to the log instead of
//! queueing here), keep-alive, and closing with 1001 at shutdown.

use std::sync::{atomic::Ordering, Arc};

use async_graphql::http::{WebSocket as GraphQLSocket, WebSocketProtocols, WsMessage};
use axum::{
    extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade},
    response::Response,
};
use futures_util::{future::ready, stream::SplitSink, SinkExt, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::AppState;

/// Close code for "going away", sent to every socket at shutdown.
const GOING_AWAY: u16 = 1001;

pub(super) fn upgrade(upgrade: WebSocketUpgrade, state: AppState) -> Response {
    let upgrade = upgrade
        .protocols(["graphql-transport-ws", "graphql-ws"])
        .max_message_size(state.max_message_bytes)
        .max_frame_size(state.max_message_bytes);
    // Clients that name no subprotocol get the current one.
    let protocol = upgrade
        .selected_protocol()
        .and_then(|p| p.to_str().ok())
        .and_then(|p| p.parse().ok())
        .unwrap_or(WebSocketProtocols::GraphQLWS);
    upgrade.on_upgrade(move |socket| serve(socket, protocol, state))
}

/// A frame on its way out, holding its share of the connection's budget.
struct Outgoing {
    message: Message,
    _permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

async fn serve(socket: WebSocket, protocol: WebSocketProtocols, state: AppState) {
    let _done = state.sockets_done.clone();
    state.sockets.fetch_add(1, Ordering::Relaxed);
    let (sink, source) = socket.split();
    let input = source
        .take_while(|message| ready(matches!(message, Ok(m) if !matches!(m, Message::Close(_)))))
        .filter_map(|message| {
            ready(match message {
                Ok(Message::Text(text)) => Some(text.into()),
                Ok(Message::Binary(bytes)) => Some(bytes),
                _ => None,
            })
        });
    let mut graphql = GraphQLSocket::new(state.schema.clone(), input, protocol);
    let budget = Arc::new(Semaphore::new(state.max_queued_bytes.max(1)));
    // The byte budget bounds the queue; the count is a backstop for tiny
    // frames.
    let (queue, frames) = mpsc::channel::<Outgoing>(1024);
    let writer = tokio::spawn(write_frames(sink, frames, state.clone()));
    let mut keepalive = tokio::time::interval(state.keepalive);
    keepalive.reset();
    let mut shutdown = state.shutdown.clone();
    let mut acknowledged = false;

    let close = loop {
        let message = tokio::select! {
            message = graphql.next() => match message {
                Some(WsMessage::Text(text)) => {
                    acknowledged |= text.contains(r#""type":"connection_ack""#);
                    Message::Text(text.into())
                }
                Some(WsMessage::Close(code, reason)) => break Some((code, reason)),
                None => break None,
            },
            _ = keepalive.tick() => match protocol {
                WebSocketProtocols::SubscriptionsTransportWS if acknowledged => {
                    Message::Text(r#"{"type":"ka"}"#.into())
                }
                _ => Message::Ping(Default::default()),
            },
            _ = shutdown.changed() => break Some((GOING_AWAY, "server shutting down".to_owned())),
        };
        let bytes = message_len(&message);
        // Wait for room: meanwhile nothing pulls from the subscriptions.
        let wanted = bytes.clamp(1, state.max_queued_bytes.max(1)) as u32;
        let permit = tokio::select! {
            permit = budget.clone().acquire_many_owned(wanted) => permit.ok(),
            _ = shutdown.changed() => break Some((GOING_AWAY, "server shutting down".to_owned())),
        };
        state.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        let frame = Outgoing {
            message,
            _permit: permit,
            bytes,
        };
        if queue.send(frame).await.is_err() {
            break None; // the writer failed: the client is gone
        }
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        // Behind what is queued; if the queue is full the client is stuck
        // and gets no goodbye.
        let close = Outgoing {
            message: Message::Close(Some(frame)),
            _permit: None,
            bytes: 0,
        };
        let _ = queue.try_send(close);
    }
    drop(queue);
    let _ = writer.await;
    state.sockets.fetch_sub(1, Ordering::Relaxed);
}

async fn write_frames(
    mut sink: SplitSink<WebSocket, Message>,
    mut frames: mpsc::Receiver<Outgoing>,
    state: AppState,
) {
    let mut failed = false;
    while let Some(frame) = frames.recv().await {
        if !failed && sink.send(frame.message).await.is_err() {
            failed = true;
            // Keep draining so queued bytes are accounted and senders end.
            frames.close();
        }
        state.queued_bytes.fetch_sub(frame.bytes, Ordering::Relaxed);
    }
    let _ = sink.close().await;
}

fn message_len(message: &Message) -> usize {
    match message {
        Message::Text(text) => text.len(),
        Message::Binary(bytes) => bytes.len(),
        _ => 0,
    }
}
