//! GraphQL over WebSocket: `graphql-transport-ws` and the legacy
//! `graphql-ws` (subscriptions-transport-ws) subprotocol.
//!
//! async-graphql's protocol `Stream` does the message handling; this task
//! adds keep-alive, the message size limit, and closing with 1001 when the
//! server shuts down.

use std::sync::atomic::Ordering;

use async_graphql::http::{WebSocket as GraphQLSocket, WebSocketProtocols, WsMessage};
use axum::{
    extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade},
    response::Response,
};
use futures_util::{future::ready, SinkExt, StreamExt};

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

async fn serve(socket: WebSocket, protocol: WebSocketProtocols, state: AppState) {
    let _done = state.sockets_done.clone();
    state.sockets.fetch_add(1, Ordering::Relaxed);
    let (mut sink, source) = socket.split();
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
    let mut keepalive = tokio::time::interval(state.keepalive);
    keepalive.reset();
    let mut shutdown = state.shutdown.clone();
    let mut acknowledged = false;

    let close = loop {
        tokio::select! {
            message = graphql.next() => match message {
                Some(WsMessage::Text(text)) => {
                    acknowledged |= text.contains(r#""type":"connection_ack""#);
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break None;
                    }
                }
                Some(WsMessage::Close(code, reason)) => break Some((code, reason)),
                None => break None,
            },
            _ = keepalive.tick() => {
                let ping = match protocol {
                    WebSocketProtocols::SubscriptionsTransportWS if acknowledged => {
                        Message::Text(r#"{"type":"ka"}"#.into())
                    }
                    _ => Message::Ping(Default::default()),
                };
                if sink.send(ping).await.is_err() {
                    break None;
                }
            }
            _ = shutdown.changed() => {
                break Some((GOING_AWAY, "server shutting down".to_owned()));
            }
        }
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = sink.send(Message::Close(Some(frame))).await;
    }
    let _ = sink.close().await;
    state.sockets.fetch_sub(1, Ordering::Relaxed);
}
