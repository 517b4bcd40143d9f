//! One WebSocket connection: the reader loop (client messages, keep-alive,
//! shutdown), a task per subscription, and a writer task behind a byte
//! budget.
//!
//! Subscriptions whose shape can be shared join a [`Fanout`] group and only
//! splice their id into its pre-serialized results. The budget bounds what a
//! connection holds unsent: when a client reads slowly its subscription
//! tasks stop pulling, fall behind their buffers and later read the log from
//! their own cursors.

use std::{
    collections::HashMap,
    net::IpAddr,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
};

use axum::{
    extract::ws::{Message, WebSocket, WebSocketUpgrade},
    response::Response,
};
use futures_util::StreamExt;
use tokio::{
    sync::broadcast::{self, error::RecvError},
    task::JoinHandle,
    time::Sleep,
};

use super::{
    admission::UserTicket,
    connections::{WireLimitExceeded, WireMeter},
    outbox::Outbox,
    protocol::{close, quote, ClientMessage, Frames, Protocol},
    subscription::Subscription,
    AppState,
};
use crate::{
    auth::{self, AuthError, Viewer},
    services::{is_revoked, Revocation},
};

/// Slack over `--max-message-bytes` a message may take on the wire: frame
/// headers of a legitimately fragmented message.
const FRAMING_SLACK: usize = 16 * 1024;

pub(super) fn upgrade(
    upgrade: WebSocketUpgrade,
    state: AppState,
    address: IpAddr,
    meter: Arc<WireMeter>,
) -> Response {
    let upgrade = upgrade
        .protocols(Protocol::NAMES)
        .max_message_size(state.max_message_bytes)
        .max_frame_size(state.max_message_bytes)
        // Small buffers: memory per idle connection is what limits how many
        // one process holds.
        .read_buffer_size(512)
        .write_buffer_size(8 * 1024);
    // Clients that name no subprotocol get the current one.
    let protocol = upgrade
        .selected_protocol()
        .and_then(|p| p.to_str().ok())
        .and_then(Protocol::from_name)
        .unwrap_or(Protocol::TransportWs);
    meter.arm(state.max_message_bytes + FRAMING_SLACK);
    upgrade.on_upgrade(move |socket| serve(socket, protocol, Arc::new(state), address, meter))
}

async fn serve(
    socket: WebSocket,
    protocol: Protocol,
    state: Arc<AppState>,
    address: IpAddr,
    meter: Arc<WireMeter>,
) {
    let _done = state.sockets_done.clone();
    state.sockets.fetch_add(1, Ordering::Relaxed);
    let (sink, mut source) = socket.split();
    let (outbox, writer) = Outbox::open(sink, state.max_queued_bytes, state.queued_bytes.clone());
    let mut session = Session {
        frames: Arc::new(Frames { protocol }),
        outbox: outbox.clone(),
        state: state.clone(),
        subscriptions: HashMap::new(),
        initialized: false,
        viewer: None,
        address,
        user_ticket: None,
        revocations: None,
    };
    let mut keepalive = tokio::time::interval(state.keepalive);
    keepalive.reset();
    // Before `connection_init`: its timeout; after: the token's expiry, if
    // signed in. Boxed and optional so an anonymous idle socket holds no
    // timer.
    let mut deadline: Option<Pin<Box<Sleep>>> =
        Some(Box::pin(tokio::time::sleep(state.init_timeout)));
    // The expiry the deadline stands for; `Some(None)` = none after init.
    let mut deadline_for: Option<Option<i64>> = None;
    let mut shutdown = state.shutdown.clone();

    let ending: Option<(u16, String)> = loop {
        tokio::select! {
            message = source.next() => {
                meter.message_done();
                let text = match message {
                    Some(Ok(Message::Text(text))) => text.to_string(),
                    Some(Ok(Message::Binary(bytes))) => match String::from_utf8(bytes.to_vec()) {
                        Ok(text) => text,
                        Err(_) => break Some((close::INVALID_MESSAGE, "invalid message: not UTF-8".into())),
                    },
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Ok(_)) => continue,
                    Some(Err(error)) => break read_failure(&error),
                };
                if let Some(ending) = Box::pin(session.handle(&text)).await {
                    break Some(ending);
                }
                let expires = session.viewer.as_ref().map(|v| v.expires_at);
                if session.initialized && deadline_for != Some(expires) {
                    deadline_for = Some(expires);
                    deadline = expires.map(|at| Box::pin(tokio::time::sleep(auth::time_until(at))));
                }
            }
            revocation = next_revocation(&mut session.revocations) => {
                if Box::pin(session.hit_by(revocation)).await {
                    Box::pin(session.unauthenticate("the session was revoked")).await;
                    break Some((close::FORBIDDEN, "Forbidden: the session was revoked".into()));
                }
            }
            _ = until(&mut deadline) => {
                if !session.initialized {
                    break Some((close::INIT_TIMEOUT, "Connection initialisation timeout".into()));
                }
                Box::pin(session.unauthenticate("the token has expired")).await;
                break Some((close::FORBIDDEN, "Forbidden: the token has expired".into()));
            }
            _ = keepalive.tick() => {
                if meter.message_age().is_some_and(|age| age > state.ws_message_timeout) {
                    break Some((close::POLICY, "a message was not completed in time".into()));
                }
                let ping = match session.frames.keepalive() {
                    Some(ka) if session.initialized => Message::Text(ka.into()),
                    _ => Message::Ping(Default::default()),
                };
                if outbox.send(ping).await.is_err() {
                    break None;
                }
            }
            _ = shutdown.changed() => break Some((close::GOING_AWAY, "server shutting down".into())),
        }
    };
    for (_, task) in session.subscriptions.drain() {
        task.abort();
    }
    if let Some((code, reason)) = ending {
        outbox.close(code, &reason);
    }
    drop(session);
    drop(outbox);
    let _ = writer.await;
    state.sockets.fetch_sub(1, Ordering::Relaxed);
}

/// Waits for the deadline, or forever without one.
async fn until(deadline: &mut Option<Pin<Box<Sleep>>>) {
    match deadline {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The next revocation, or never for an anonymous connection.
async fn next_revocation(
    revocations: &mut Option<broadcast::Receiver<Revocation>>,
) -> Result<Revocation, RecvError> {
    match revocations {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// An oversized message closes with 1009, one that takes too many bytes on
/// the wire (endless fragments) with 1008; other read errors just end.
fn read_failure(error: &axum::Error) -> Option<(u16, String)> {
    use tokio_tungstenite::tungstenite::{error::CapacityError, Error};
    let cause = std::error::Error::source(error)?.downcast_ref::<Error>()?;
    match cause {
        Error::Capacity(CapacityError::MessageTooLong { .. }) => {
            Some((close::TOO_BIG, "message too big".to_owned()))
        }
        Error::Io(io) if io.get_ref().is_some_and(|e| e.is::<WireLimitExceeded>()) => {
            Some((close::POLICY, "message too big on the wire".to_owned()))
        }
        _ => None,
    }
}

/// The reader's state: what the client has set up on this connection.
struct Session {
    frames: Arc<Frames>,
    outbox: Outbox,
    state: Arc<AppState>,
    subscriptions: HashMap<String, JoinHandle<()>>,
    initialized: bool,
    /// From the token in `connection_init` (or a later refresh).
    viewer: Option<Viewer>,
    /// The client's address (rate limits of anonymous mutations).
    address: IpAddr,
    /// Counts this connection against its user while it lives.
    user_ticket: Option<UserTicket>,
    /// Revocations heard by this node, once a token was presented.
    revocations: Option<broadcast::Receiver<Revocation>>,
}

impl Session {
    /// Handles one client message; `Some` closes the connection.
    async fn handle(&mut self, text: &str) -> Option<(u16, String)> {
        self.state.traffic.count();
        let message = match ClientMessage::parse(text, self.frames.protocol) {
            Ok(message) => message,
            Err(error) => return Some((close::INVALID_MESSAGE, error.to_string())),
        };
        match message {
            ClientMessage::Init(_) if self.initialized => {
                return Some((
                    close::TOO_MANY_INITS,
                    "Too many initialisation requests".into(),
                ));
            }
            ClientMessage::Init(payload) => {
                if let Some(value) = authorization(payload.as_ref()) {
                    match self.authenticate(value).await {
                        Ok(viewer) => {
                            match self.state.admission.admit_user(&viewer.user_id) {
                                Some(ticket) => self.user_ticket = Some(ticket),
                                None => {
                                    return Some((
                                        close::TOO_MANY_INITS,
                                        "too many connections for this user".into(),
                                    ))
                                }
                            }
                            self.viewer = Some(viewer);
                        }
                        Err(error) => {
                            return Some((close::FORBIDDEN, format!("Forbidden: {error}")))
                        }
                    }
                }
                self.initialized = true;
                let _ = self.outbox.text(self.frames.ack()).await;
            }
            ClientMessage::Ping(payload) => {
                // A ping may carry a fresh token for the user the connection
                // signed in as in `connection_init` (and is counted against):
                // the connection and its subscriptions go on under it. Only
                // `connection_init` signs a connection in.
                if let Some(value) = authorization(payload.as_ref()) {
                    let Some(user) = self.viewer.as_ref().map(|v| v.user_id.clone()) else {
                        return Some((
                            close::FORBIDDEN,
                            "Forbidden: sign in with the token in connection_init".into(),
                        ));
                    };
                    match self.authenticate(value).await {
                        Ok(fresh) if fresh.user_id == user => {
                            self.viewer = Some(fresh);
                        }
                        Ok(_) => {
                            return Some((
                                close::FORBIDDEN,
                                "Forbidden: the token is for another user".into(),
                            ))
                        }
                        Err(error) => {
                            return Some((close::FORBIDDEN, format!("Forbidden: {error}")))
                        }
                    }
                }
                // Echo the payload, but never a token.
                let echo = payload
                    .as_ref()
                    .filter(|_| authorization(payload.as_ref()).is_none());
                let _ = self.outbox.text(self.frames.pong(echo)).await;
            }
            ClientMessage::Pong => {}
            ClientMessage::Terminate => return Some((1000, "terminated".into())),
            ClientMessage::Subscribe { .. } if !self.initialized => {
                return Some((close::UNAUTHORIZED, "Unauthorized".into()));
            }
            ClientMessage::Subscribe { id, request } => {
                self.subscriptions.retain(|_, task| !task.is_finished());
                if self.subscriptions.contains_key(&id) {
                    let reason = format!(
                        "Subscriber for {} already exists",
                        id.chars().take(64).collect::<String>()
                    );
                    return Some((close::DUPLICATE_ID, reason));
                }
                if self.subscriptions.len() >= self.state.max_subscriptions {
                    let errors = serde_json::json!([{
                        "message": format!(
                            "too many subscriptions on this connection (at most {})",
                            self.state.max_subscriptions
                        ),
                        "extensions": {"code": "RATE_LIMITED"},
                    }]);
                    let frame = self.frames.error(&quote(&id), &errors.to_string());
                    let _ = self.outbox.text(frame).await;
                    return None;
                }
                let run = Subscription {
                    quoted_id: quote(&id),
                    frames: self.frames.clone(),
                    outbox: self.outbox.clone(),
                    state: self.state.clone(),
                    viewer: self.viewer.clone(),
                    address: self.address,
                };
                self.subscriptions
                    .insert(id, tokio::spawn(run.run(*request)));
            }
            ClientMessage::Complete { id } => {
                if let Some(task) = self.subscriptions.remove(&id) {
                    task.abort();
                }
            }
        }
        None
    }
}

impl Session {
    /// A verified token whose session is not revoked.
    async fn authenticate(&mut self, bearer: &str) -> Result<Viewer, AuthError> {
        // Listen before checking, so a revocation in between is heard.
        if self.revocations.is_none() {
            self.revocations = Some(self.state.revocations.subscribe());
        }
        let viewer = self.state.verifier.verify_bearer(bearer)?;
        if self.revoked(&viewer).await {
            return Err(AuthError::Revoked);
        }
        Ok(viewer)
    }

    /// Whether the viewer's token must be refused: its session is revoked or
    /// gone, or cannot be checked (fail closed: `connection_init` is refused,
    /// a failed re-check ends the streams).
    async fn revoked(&self, viewer: &Viewer) -> bool {
        match &viewer.session_id {
            Some(sid) => is_revoked(&self.state.pool, sid)
                .await
                .unwrap_or_else(|error| {
                    tracing::error!(%error, "refusing a token whose session cannot be checked");
                    true
                }),
            None => false,
        }
    }

    /// Whether `revocation` ends this connection's session.
    async fn hit_by(&self, revocation: Result<Revocation, RecvError>) -> bool {
        let Some(viewer) = &self.viewer else {
            return false;
        };
        match revocation {
            Ok(Revocation::Session(sid)) => viewer.session_id.as_deref() == Some(sid.as_str()),
            Ok(Revocation::User(user)) => viewer.user_id == user,
            // Missed some: ask the database.
            Ok(Revocation::Recheck) | Err(RecvError::Lagged(_)) => self.revoked(viewer).await,
            Err(RecvError::Closed) => false,
        }
    }

    /// Ends every running subscription with an `UNAUTHENTICATED` error.
    async fn unauthenticate(&mut self, reason: &str) {
        let errors = serde_json::json!([{
            "message": reason,
            "extensions": {"code": "UNAUTHENTICATED"},
        }])
        .to_string();
        for (id, task) in self.subscriptions.drain() {
            task.abort();
            if !task.is_finished() {
                let _ = self
                    .outbox
                    .text(self.frames.error(&quote(&id), &errors))
                    .await;
            }
        }
    }
}

/// The `authorization` value of a `connection_init` or `ping` payload.
fn authorization(payload: Option<&serde_json::Value>) -> Option<&str> {
    let payload = payload?;
    payload
        .get("authorization")
        .or_else(|| payload.get("Authorization"))?
        .as_str()
}
