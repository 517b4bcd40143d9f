//! One WebSocket connection's driver: the reader loop (client messages,
//! keep-alive, deadlines, revocations, shutdown) feeds the connection's
//! [`ProtocolState`] and carries out what it answers — a task per
//! subscription, checks of tokens and sessions, frames into a writer task
//! behind a byte budget.
//!
//! Subscriptions whose shape can be shared join a [`Fanout`] group and only
//! splice their id into its pre-serialized results. The budget bounds what a
//! connection holds unsent: when a client reads slowly its subscription
//! tasks stop pulling, fall behind their buffers and later read the log from
//! their own cursors.

use std::{
    net::IpAddr,
    ops::ControlFlow,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
};

use async_graphql::Request;
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
    protocol::{quote, Event, Frames, Output, Protocol, ProtocolState},
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
    let (outbox, writer) = Outbox::open(
        sink,
        state.max_queued_bytes,
        state.queued_bytes.clone(),
        state.ws_message_timeout,
    );
    let mut driver = Driver {
        protocol: ProtocolState::new(protocol, state.max_subscriptions),
        frames: Arc::new(Frames { protocol }),
        outbox: outbox.clone(),
        state: state.clone(),
        address,
        user_ticket: None,
        revocations: None,
        deadline: Some(Box::pin(tokio::time::sleep(state.init_timeout))),
    };
    let mut keepalive = tokio::time::interval(state.keepalive);
    keepalive.reset();
    let mut shutdown = state.shutdown.clone();

    // Each step is boxed: the future every idle connection holds keeps only
    // a pointer across it, not the step's state (a session check, a send).
    let ending: Option<(u16, String)> = loop {
        let step = tokio::select! {
            message = source.next() => {
                match &message {
                    // Control frames may come between a message's
                    // fragments: they end no message, they only leave the
                    // count.
                    Some(Ok(Message::Ping(payload) | Message::Pong(payload))) => {
                        meter.control_frame(payload.len());
                    }
                    _ => meter.message_done(),
                }
                Box::pin(driver.read(message)).await
            }
            revocation = next_revocation(&mut driver.revocations) => {
                Box::pin(driver.heard(revocation)).await
            }
            _ = until(&mut driver.deadline) => {
                driver.deadline = None;
                let event = match driver.protocol.initialized() {
                    true => Event::TokenExpired,
                    false => Event::InitTimeout,
                };
                Box::pin(driver.on(event)).await
            }
            _ = keepalive.tick() => {
                let overdue = meter.message_age().is_some_and(|age| age > state.ws_message_timeout);
                let event = match overdue {
                    true => Event::MessageTimedOut,
                    false => Event::KeepAlive,
                };
                Box::pin(driver.on(event)).await
            }
            _ = shutdown.changed() => Box::pin(driver.on(Event::ShuttingDown)).await,
        };
        if let ControlFlow::Break(ending) = step {
            break ending;
        }
    };
    for task in driver.protocol.take_all() {
        task.abort();
    }
    if let Some((code, reason)) = ending {
        outbox.close(code, &reason);
    }
    drop(driver);
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

/// An oversized message, or one that takes too many bytes on the wire
/// (endless fragments); other read errors just end the connection.
fn read_failure(error: &axum::Error) -> Option<Event<'static>> {
    use tokio_tungstenite::tungstenite::{error::CapacityError, Error};
    let cause = std::error::Error::source(error)?.downcast_ref::<Error>()?;
    match cause {
        Error::Capacity(CapacityError::MessageTooLong { .. }) => Some(Event::TooBig),
        Error::Io(io) if io.get_ref().is_some_and(|e| e.is::<WireLimitExceeded>()) => {
            Some(Event::TooBigOnTheWire)
        }
        _ => None,
    }
}

/// How a step ended: go on, or end the connection (with a close frame, or
/// without when the client is gone).
type Step = ControlFlow<Option<(u16, String)>>;

/// The socket side of a connection: carries out what its protocol state
/// asks, and holds what that takes.
struct Driver {
    /// What the client has set up: the protocol's state machine, which
    /// also holds the running subscriptions' tasks by id.
    protocol: ProtocolState<JoinHandle<()>>,
    /// Shared with the subscription tasks.
    frames: Arc<Frames>,
    outbox: Outbox,
    state: Arc<AppState>,
    /// The client's address (rate limits of anonymous mutations).
    address: IpAddr,
    /// Counts this connection against its user while it lives.
    user_ticket: Option<UserTicket>,
    /// Revocations heard by this node, once a token was presented.
    revocations: Option<broadcast::Receiver<Revocation>>,
    /// Before `connection_init`: its timeout; after: the token's expiry, if
    /// signed in. Boxed and optional so an anonymous idle socket holds no
    /// timer.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Driver {
    /// What the socket read.
    async fn read(&mut self, message: Option<Result<Message, axum::Error>>) -> Step {
        match message {
            Some(Ok(Message::Text(text))) => self.receive(&text).await,
            Some(Ok(Message::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                Ok(text) => self.receive(text).await,
                Err(_) => self.on(Event::NotUtf8).await,
            },
            // The client has gone.
            Some(Ok(Message::Close(_))) | None => ControlFlow::Break(None),
            // WebSocket pings and pongs.
            Some(Ok(_)) => ControlFlow::Continue(()),
            Some(Err(error)) => match read_failure(&error) {
                Some(event) => self.on(event).await,
                None => ControlFlow::Break(None),
            },
        }
    }

    /// A revocation heard on this node.
    async fn heard(&mut self, revocation: Result<Revocation, RecvError>) -> Step {
        match self.hit_by(revocation).await {
            true => self.on(Event::Revoked).await,
            false => ControlFlow::Continue(()),
        }
    }

    /// One client message.
    async fn receive(&mut self, text: &str) -> Step {
        self.state.traffic.count();
        // The protocol state counts running subscriptions and refuses
        // duplicate ids: first tell it which have ended.
        self.protocol.reap(JoinHandle::is_finished);
        self.on(Event::Message(text)).await
    }

    /// Feeds `event` to the protocol state and carries out its outputs,
    /// answering the checks it asks for.
    async fn on(&mut self, event: Event<'_>) -> Step {
        let mut outputs = self.protocol.on(event);
        loop {
            let mut answer = None;
            for output in outputs {
                match output {
                    Output::Send(text) => {
                        if self.outbox.text(text).await.is_err() {
                            return ControlFlow::Break(None);
                        }
                    }
                    Output::Ping => {
                        if self
                            .outbox
                            .send(Message::Ping(Default::default()))
                            .await
                            .is_err()
                        {
                            return ControlFlow::Break(None);
                        }
                    }
                    Output::Authenticate(bearer) => {
                        answer = Some(Event::Authenticated(self.authenticate(&bearer).await));
                    }
                    Output::Admit(user) => {
                        self.user_ticket = self.state.admission.admit_user(&user);
                        answer = Some(Event::Admitted(self.user_ticket.is_some()));
                    }
                    Output::ExpiresAt(at) => {
                        self.deadline =
                            at.map(|at| Box::pin(tokio::time::sleep(auth::time_until(at))));
                    }
                    Output::Start { id, request } => self.start(id, *request),
                    Output::Stop(task) => task.abort(),
                    Output::EndAllWithError { errors, running } => {
                        self.end_all(&errors, running).await
                    }
                    Output::Close(code, reason) => return ControlFlow::Break(Some((code, reason))),
                }
            }
            match answer {
                Some(event) => outputs = self.protocol.on(event),
                None => return ControlFlow::Continue(()),
            }
        }
    }

    fn start(&mut self, id: String, request: Request) {
        let run = Subscription {
            quoted_id: quote(&id),
            frames: self.frames.clone(),
            outbox: self.outbox.clone(),
            operations: self.state.operations.clone(),
            viewer: self.protocol.viewer().cloned(),
            address: self.address,
        };
        let task = tokio::spawn(run.run(request));
        self.protocol.started(id, task);
    }

    /// Ends every subscription; those still running get an `error` frame.
    async fn end_all(&mut self, errors: &str, running: Vec<(String, JoinHandle<()>)>) {
        for (id, task) in running {
            task.abort();
            if !task.is_finished() {
                let _ = self
                    .outbox
                    .text(self.frames.error(&quote(&id), errors))
                    .await;
            }
        }
    }

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
        let Some(viewer) = self.protocol.viewer() else {
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
}
