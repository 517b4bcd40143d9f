//! `ProtocolState`: one connection's graphql-transport-ws (or legacy
//! graphql-ws) conversation as a pure state machine.
//!
//! The driver in [`crate::http`]'s `websocket` module feeds it [`Event`]s —
//! client messages, timers, what the socket reported — and carries out the
//! [`Output`]s it answers with, in order: frames to send and commands. It
//! holds no socket, no database and spawns nothing. What it cannot check
//! itself (a token's signature and session, the per-user connection cap)
//! it asks for with a command whose result comes back as an event, the way
//! async-graphql injects `on_connection_init`.

use std::sync::Arc;

use async_graphql::Request;
use serde_json::Value;

use super::{close, quote, ClientMessage, Frames, Protocol};
use crate::{
    auth::{AuthError, Viewer},
    error::ErrorCode,
};

/// What happened on a connection, as its driver saw it.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    /// A client message (a text frame, or a binary one that is UTF-8).
    Message(&'a str),
    /// A binary message that is not UTF-8.
    NotUtf8,
    /// A message over `--max-message-bytes`.
    TooBig,
    /// A message that took too many bytes on the wire (endless fragments).
    TooBigOnTheWire,
    /// A message was begun but not completed within `--ws-message-timeout`.
    MessageTimedOut,
    /// No `connection_init` within `--init-timeout`.
    InitTimeout,
    /// The viewer's token has expired (the deadline of [`Output::ExpiresAt`]).
    TokenExpired,
    /// The viewer's session was revoked.
    Revoked,
    /// Time for a keep-alive.
    KeepAlive,
    /// The answer to [`Output::Authenticate`].
    Authenticated(Result<Viewer, AuthError>),
    /// The answer to [`Output::Admit`]: whether the user may open one more
    /// connection.
    Admitted(bool),
    /// The server is shutting down.
    ShuttingDown,
}

/// What the driver must do, in the order given. `H` is the driver's
/// handle of a running operation (its task).
#[derive(Debug)]
pub(crate) enum Output<H> {
    /// A text frame for the client.
    Send(String),
    /// A WebSocket ping frame (the keep-alive of graphql-transport-ws, and
    /// of any connection before `connection_init`).
    Ping,
    /// Verify this `authorization` value and that its session is not
    /// revoked; answer with [`Event::Authenticated`].
    Authenticate(String),
    /// Count the connection against this user; answer with
    /// [`Event::Admitted`].
    Admit(String),
    /// Replace the connection's deadline (until then: the init timeout)
    /// with the viewer's expiry in seconds since the epoch, or with none.
    ExpiresAt(Option<i64>),
    /// Run an operation as the current viewer, then hand its handle back
    /// with [`ProtocolState::started`].
    Start { id: String, request: Box<Request> },
    /// Stop a running operation.
    Stop(H),
    /// Stop every operation; those still running get an `error` frame with
    /// these (serialized) errors.
    EndAllWithError {
        errors: String,
        running: Vec<(String, H)>,
    },
    /// Close the connection; no events follow.
    Close(u16, String),
}

/// What the client has set up on one connection.
///
/// The driver answers [`Output::Authenticate`] and [`Output::Admit`] (always
/// the last output of a step) before it feeds any other event.
pub(crate) struct ProtocolState<H> {
    frames: Frames,
    /// Operations one connection may run at once.
    max_subscriptions: usize,
    /// A `connection_init` was acknowledged.
    initialized: bool,
    /// The check the driver is making for us, if any.
    awaiting: Awaiting,
    /// Who signed in with `connection_init` (refreshed by a later `ping`);
    /// while awaiting admission, who is asking to.
    viewer: Option<Arc<Viewer>>,
    /// The operations running, by id (unique among them), with the
    /// driver's handles: one list for both, so a connection holds its ids
    /// once. A list sized exactly, not a map: most connections run one
    /// operation, and a map's smallest table is four slots (at most
    /// `--max-subscriptions` are scanned).
    running: Vec<(String, H)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    Nothing,
    /// The token of `connection_init`.
    InitToken,
    /// A fresh token in a `ping`.
    RefreshToken,
    /// The per-user cap, for the viewer of `connection_init`.
    Admission,
}

impl<H> ProtocolState<H> {
    pub(crate) fn new(protocol: Protocol, max_subscriptions: usize) -> Self {
        ProtocolState {
            frames: Frames { protocol },
            max_subscriptions,
            initialized: false,
            awaiting: Awaiting::Nothing,
            viewer: None,
            running: Vec::new(),
        }
    }

    pub(crate) fn initialized(&self) -> bool {
        self.initialized
    }

    /// Who the connection's operations run as.
    pub(crate) fn viewer(&self) -> Option<&Arc<Viewer>> {
        self.viewer.as_ref()
    }

    /// The driver started the operation of an [`Output::Start`].
    pub(crate) fn started(&mut self, id: String, handle: H) {
        self.running.reserve_exact(1);
        self.running.push((id, handle));
    }

    /// Forgets the operations that ended on their own.
    pub(crate) fn reap(&mut self, finished: impl Fn(&H) -> bool) {
        self.running.retain(|(_, handle)| !finished(handle));
    }

    /// Every running operation's handle (the connection is closing).
    pub(crate) fn take_all(&mut self) -> Vec<H> {
        self.running.drain(..).map(|(_, handle)| handle).collect()
    }

    /// Takes one event; the outputs are for the driver to carry out in
    /// order.
    pub(crate) fn on(&mut self, event: Event<'_>) -> Vec<Output<H>> {
        match event {
            Event::Message(text) => self.message(text),
            Event::NotUtf8 => closing(close::INVALID_MESSAGE, "invalid message: not UTF-8"),
            Event::TooBig => closing(close::TOO_BIG, "message too big"),
            Event::TooBigOnTheWire => closing(close::POLICY, "message too big on the wire"),
            Event::MessageTimedOut => closing(close::POLICY, "a message was not completed in time"),
            Event::InitTimeout if self.initialized => Vec::new(),
            Event::InitTimeout => closing(close::INIT_TIMEOUT, "Connection initialisation timeout"),
            Event::TokenExpired => self.unauthenticate("the token has expired"),
            Event::Revoked => self.unauthenticate("the session was revoked"),
            Event::KeepAlive => match self.frames.keepalive() {
                Some(ka) if self.initialized => vec![Output::Send(ka.to_owned())],
                _ => vec![Output::Ping],
            },
            Event::Authenticated(result) => self.authenticated(result),
            Event::Admitted(granted) => self.admitted(granted),
            Event::ShuttingDown => closing(close::GOING_AWAY, "server shutting down"),
        }
    }

    fn message(&mut self, text: &str) -> Vec<Output<H>> {
        let message = match ClientMessage::parse(text, self.frames.protocol) {
            Ok(message) => message,
            Err(error) => return closing(close::INVALID_MESSAGE, error.to_string()),
        };
        match message {
            ClientMessage::Init(_) if self.initialized => {
                closing(close::TOO_MANY_INITS, "Too many initialisation requests")
            }
            ClientMessage::Init(payload) => match authorization(payload.as_ref()) {
                Some(value) => {
                    self.awaiting = Awaiting::InitToken;
                    vec![Output::Authenticate(value.to_owned())]
                }
                None => self.acknowledge(),
            },
            // A ping may carry a fresh token for the user the connection
            // signed in as in `connection_init` (and is counted against):
            // the connection and its operations go on under it. Only
            // `connection_init` signs a connection in.
            ClientMessage::Ping(payload) => match authorization(payload.as_ref()) {
                Some(_) if self.viewer.is_none() => closing(
                    close::FORBIDDEN,
                    "Forbidden: sign in with the token in connection_init",
                ),
                Some(value) => {
                    self.awaiting = Awaiting::RefreshToken;
                    vec![Output::Authenticate(value.to_owned())]
                }
                None => vec![Output::Send(self.frames.pong(payload.as_ref()))],
            },
            ClientMessage::Pong => Vec::new(),
            ClientMessage::Terminate => closing(close::NORMAL, "terminated"),
            ClientMessage::Subscribe { .. } if !self.initialized => {
                closing(close::UNAUTHORIZED, "Unauthorized")
            }
            ClientMessage::Subscribe { id, request } => self.subscribe(id, request),
            ClientMessage::Complete { id } => match self.running.iter().position(|(i, _)| *i == id)
            {
                Some(at) => vec![Output::Stop(self.running.swap_remove(at).1)],
                None => Vec::new(),
            },
        }
    }

    fn subscribe(&mut self, id: String, request: Box<Request>) -> Vec<Output<H>> {
        if self.running.iter().any(|(running, _)| *running == id) {
            let reason = format!(
                "Subscriber for {} already exists",
                id.chars().take(64).collect::<String>()
            );
            return closing(close::DUPLICATE_ID, reason);
        }
        if self.running.len() >= self.max_subscriptions {
            let errors = serde_json::json!([{
                "message": format!(
                    "too many subscriptions on this connection (at most {})",
                    self.max_subscriptions
                ),
                "extensions": {"code": ErrorCode::RateLimited.as_str()},
            }]);
            return vec![Output::Send(
                self.frames.error(&quote(&id), &errors.to_string()),
            )];
        }
        vec![Output::Start { id, request }]
    }

    fn authenticated(&mut self, result: Result<Viewer, AuthError>) -> Vec<Output<H>> {
        let awaiting = std::mem::replace(&mut self.awaiting, Awaiting::Nothing);
        match (awaiting, result) {
            (Awaiting::InitToken | Awaiting::RefreshToken, Err(error)) => {
                closing(close::FORBIDDEN, format!("Forbidden: {error}"))
            }
            (Awaiting::InitToken, Ok(viewer)) => {
                self.awaiting = Awaiting::Admission;
                let user = viewer.user_id.clone();
                self.viewer = Some(Arc::new(viewer));
                vec![Output::Admit(user)]
            }
            (Awaiting::RefreshToken, Ok(fresh)) => {
                let Some(current) = &self.viewer else {
                    return Vec::new();
                };
                if fresh.user_id != current.user_id {
                    return closing(close::FORBIDDEN, "Forbidden: the token is for another user");
                }
                let expiry_moved = fresh.expires_at != current.expires_at;
                let expires_at = fresh.expires_at;
                self.viewer = Some(Arc::new(fresh));
                // Never echo a token.
                let mut outputs = vec![Output::Send(self.frames.pong(None))];
                if expiry_moved {
                    outputs.push(Output::ExpiresAt(Some(expires_at)));
                }
                outputs
            }
            // Nothing was asked: not the driver's answer.
            (awaiting, _) => {
                self.awaiting = awaiting;
                Vec::new()
            }
        }
    }

    fn admitted(&mut self, granted: bool) -> Vec<Output<H>> {
        if self.awaiting != Awaiting::Admission {
            return Vec::new();
        }
        self.awaiting = Awaiting::Nothing;
        if !granted {
            self.viewer = None;
            return closing(close::TOO_MANY_INITS, "too many connections for this user");
        }
        self.acknowledge()
    }

    /// Completes `connection_init`.
    fn acknowledge(&mut self) -> Vec<Output<H>> {
        self.initialized = true;
        vec![
            Output::Send(self.frames.ack()),
            Output::ExpiresAt(self.viewer.as_ref().map(|v| v.expires_at)),
        ]
    }

    /// Ends every running operation with an `UNAUTHENTICATED` error, then
    /// the connection with 4403.
    fn unauthenticate(&mut self, reason: &str) -> Vec<Output<H>> {
        let running = std::mem::take(&mut self.running);
        let errors = serde_json::json!([{
            "message": reason,
            "extensions": {"code": ErrorCode::Unauthenticated.as_str()},
        }]);
        vec![
            Output::EndAllWithError {
                errors: errors.to_string(),
                running,
            },
            Output::Close(close::FORBIDDEN, format!("Forbidden: {reason}")),
        ]
    }
}

fn closing<H>(code: u16, reason: impl Into<String>) -> Vec<Output<H>> {
    vec![Output::Close(code, reason.into())]
}

/// The `authorization` value of a `connection_init` or `ping` payload.
fn authorization(payload: Option<&Value>) -> Option<&str> {
    let payload = payload?;
    payload
        .get("authorization")
        .or_else(|| payload.get("Authorization"))?
        .as_str()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::auth::Role;

    /// The tests' handle of an operation is its id.
    type State = ProtocolState<String>;

    /// Outputs as short strings, so a test reads like the conversation.
    fn said(outputs: Vec<Output<String>>) -> Vec<String> {
        outputs
            .into_iter()
            .map(|output| match output {
                Output::Send(text) => format!("send {text}"),
                Output::Ping => "ping".to_owned(),
                Output::Authenticate(value) => format!("authenticate {value}"),
                Output::Admit(user) => format!("admit {user}"),
                Output::ExpiresAt(at) => format!("expires {at:?}"),
                Output::Start { id, request } => format!("start {id} {}", request.query),
                Output::Stop(id) => format!("stop {id}"),
                Output::EndAllWithError { errors, .. } => format!("end all {errors}"),
                Output::Close(code, reason) => format!("close {code} {reason}"),
            })
            .collect()
    }

    /// Sends `message`; a started operation's handle is its id.
    fn send(state: &mut State, message: Value) -> Vec<String> {
        let outputs = state.on(Event::Message(&message.to_string()));
        for output in &outputs {
            if let Output::Start { id, .. } = output {
                state.started(id.clone(), id.clone());
            }
        }
        said(outputs)
    }

    fn viewer(user: &str, expires_at: i64) -> Viewer {
        Viewer {
            user_id: user.to_owned(),
            role: Role::User,
            session_id: Some(format!("session of {user}")),
            expires_at,
        }
    }

    fn subscribe(id: &str) -> Value {
        json!({"type": "subscribe", "id": id, "payload": {"query": "subscription { a }"}})
    }

    fn anonymous(protocol: Protocol) -> State {
        let mut state = State::new(protocol, 2);
        assert_eq!(
            send(&mut state, json!({"type": "connection_init"})),
            [r#"send {"type":"connection_ack"}"#, "expires None"]
        );
        state
    }

    fn signed_in(user: &str) -> State {
        let mut state = State::new(Protocol::TransportWs, 2);
        let init = json!({"type": "connection_init", "payload": {"authorization": "Bearer t"}});
        assert_eq!(send(&mut state, init), ["authenticate Bearer t"]);
        let answer = state.on(Event::Authenticated(Ok(viewer(user, 100))));
        assert_eq!(said(answer), [format!("admit {user}")]);
        assert_eq!(
            said(state.on(Event::Admitted(true))),
            [r#"send {"type":"connection_ack"}"#, "expires Some(100)"]
        );
        assert_eq!(state.viewer().map(|v| v.user_id.as_str()), Some(user));
        state
    }

    #[test]
    fn subscribe_before_init_closes_with_4401() {
        let mut state = State::new(Protocol::TransportWs, 2);
        assert_eq!(
            send(&mut state, subscribe("1")),
            ["close 4401 Unauthorized"]
        );
    }

    #[test]
    fn a_second_init_closes_with_4429() {
        let mut state = anonymous(Protocol::TransportWs);
        assert_eq!(
            send(&mut state, json!({"type": "connection_init"})),
            ["close 4429 Too many initialisation requests"]
        );
    }

    #[test]
    fn a_duplicate_id_closes_with_4409_but_a_finished_one_may_be_reused() {
        let mut state = anonymous(Protocol::TransportWs);
        assert_eq!(
            send(&mut state, subscribe("same")),
            ["start same subscription { a }"]
        );
        assert_eq!(
            send(&mut state, subscribe("same")),
            ["close 4409 Subscriber for same already exists"]
        );
        let mut state = anonymous(Protocol::TransportWs);
        send(&mut state, subscribe("same"));
        state.reap(|id| id == "same");
        assert_eq!(
            send(&mut state, subscribe("same")),
            ["start same subscription { a }"]
        );
    }

    #[test]
    fn too_many_subscriptions_get_an_error_and_the_connection_stays() {
        let mut state = anonymous(Protocol::TransportWs);
        send(&mut state, subscribe("1"));
        send(&mut state, subscribe("2"));
        let refused = send(&mut state, subscribe("3"));
        assert_eq!(refused.len(), 1);
        let frame: Value = serde_json::from_str(refused[0].strip_prefix("send ").unwrap()).unwrap();
        assert_eq!(frame["id"], "3");
        assert_eq!(frame["type"], "error");
        assert_eq!(frame["payload"][0]["extensions"]["code"], "RATE_LIMITED");
        assert!(frame["payload"][0]["message"]
            .as_str()
            .unwrap()
            .contains("(at most 2)"));
        // Still open: a slot freed by `complete` is taken again.
        assert_eq!(
            send(&mut state, json!({"type": "complete", "id": "1"})),
            ["stop 1"]
        );
        assert_eq!(
            send(&mut state, subscribe("3")),
            ["start 3 subscription { a }"]
        );
    }

    #[test]
    fn init_with_a_token_is_authenticated_and_a_refusal_closes_with_4403() {
        let mut state = State::new(Protocol::TransportWs, 2);
        let init = json!({"type": "connection_init", "payload": {"Authorization": "Bearer x"}});
        assert_eq!(send(&mut state, init), ["authenticate Bearer x"]);
        assert_eq!(
            said(state.on(Event::Authenticated(Err(AuthError::Revoked)))),
            ["close 4403 Forbidden: the session was revoked"]
        );
        assert!(!state.initialized());
    }

    #[test]
    fn a_user_over_the_connection_cap_closes_with_4429() {
        let mut state = State::new(Protocol::TransportWs, 2);
        let init = json!({"type": "connection_init", "payload": {"authorization": "Bearer t"}});
        send(&mut state, init);
        state.on(Event::Authenticated(Ok(viewer("ann", 100))));
        assert_eq!(
            said(state.on(Event::Admitted(false))),
            ["close 4429 too many connections for this user"]
        );
        assert!(state.viewer().is_none());
    }

    #[test]
    fn a_token_in_a_ping_without_a_signed_in_user_closes_with_4403() {
        let ping = json!({"type": "ping", "payload": {"authorization": "Bearer t"}});
        let refused = ["close 4403 Forbidden: sign in with the token in connection_init"];
        let mut before_init = State::new(Protocol::TransportWs, 2);
        assert_eq!(send(&mut before_init, ping.clone()), refused);
        let mut state = anonymous(Protocol::TransportWs);
        assert_eq!(send(&mut state, ping), refused);
    }

    #[test]
    fn a_refresh_keeps_the_user_and_moves_the_expiry() {
        let mut state = signed_in("ann");
        let ping = json!({"type": "ping", "payload": {"authorization": "Bearer fresh"}});
        assert_eq!(
            send(&mut state, ping.clone()),
            ["authenticate Bearer fresh"]
        );
        assert_eq!(
            said(state.on(Event::Authenticated(Ok(viewer("ann", 200))))),
            [r#"send {"type":"pong"}"#, "expires Some(200)"]
        );
        // The same expiry again: the deadline stays as it is.
        send(&mut state, ping);
        assert_eq!(
            said(state.on(Event::Authenticated(Ok(viewer("ann", 200))))),
            [r#"send {"type":"pong"}"#]
        );
        // A ping without a token is echoed.
        assert_eq!(
            send(&mut state, json!({"type": "ping", "payload": {"n": 1}})),
            [r#"send {"type":"pong","payload":{"n":1}}"#]
        );
    }

    #[test]
    fn a_refresh_for_another_user_closes_with_4403() {
        let mut state = signed_in("ann");
        let ping = json!({"type": "ping", "payload": {"authorization": "Bearer bob"}});
        send(&mut state, ping);
        assert_eq!(
            said(state.on(Event::Authenticated(Ok(viewer("bob", 100))))),
            ["close 4403 Forbidden: the token is for another user"]
        );
    }

    #[test]
    fn expiry_and_revocation_end_every_operation_unauthenticated() {
        for (event, reason) in [
            (Event::TokenExpired, "the token has expired"),
            (Event::Revoked, "the session was revoked"),
        ] {
            let mut state = signed_in("ann");
            send(&mut state, subscribe("1"));
            let outputs = said(state.on(event));
            assert_eq!(outputs.len(), 2);
            let errors: Value =
                serde_json::from_str(outputs[0].strip_prefix("end all ").unwrap()).unwrap();
            assert_eq!(errors[0]["message"], reason);
            assert_eq!(errors[0]["extensions"]["code"], "UNAUTHENTICATED");
            assert_eq!(outputs[1], format!("close 4403 Forbidden: {reason}"));
        }
    }

    #[test]
    fn the_legacy_protocol_starts_stops_terminates_and_sends_ka() {
        let mut state = State::new(Protocol::Legacy, 2);
        assert_eq!(said(state.on(Event::KeepAlive)), ["ping"]);
        let mut state = anonymous(Protocol::Legacy);
        assert_eq!(said(state.on(Event::KeepAlive)), [r#"send {"type":"ka"}"#]);
        let start = json!({"type": "start", "id": "x", "payload": {"query": "subscription { a }"}});
        assert_eq!(send(&mut state, start), ["start x subscription { a }"]);
        // `subscribe` and `ping` are not legacy messages.
        let mut other = anonymous(Protocol::Legacy);
        assert_eq!(
            send(&mut other, subscribe("y")),
            ["close 4400 invalid message: unknown type `subscribe`"]
        );
        let mut other = anonymous(Protocol::Legacy);
        assert_eq!(
            send(&mut other, json!({"type": "ping"})),
            ["close 4400 invalid message: unknown type `ping`"]
        );
        assert_eq!(
            send(&mut state, json!({"type": "stop", "id": "x"})),
            ["stop x"]
        );
        assert_eq!(
            send(&mut state, json!({"type": "connection_terminate"})),
            ["close 1000 terminated"]
        );
    }

    #[test]
    fn the_legacy_protocol_reports_refusals_in_data_messages() {
        let mut state = anonymous(Protocol::Legacy);
        for id in ["1", "2"] {
            let start = json!({"type": "start", "id": id, "payload": {"query": "{ a }"}});
            send(&mut state, start);
        }
        let start = json!({"type": "start", "id": "3", "payload": {"query": "{ a }"}});
        let refused = send(&mut state, start);
        let frame: Value = serde_json::from_str(refused[0].strip_prefix("send ").unwrap()).unwrap();
        assert_eq!(frame["type"], "data");
        assert_eq!(
            frame["payload"]["errors"][0]["extensions"]["code"],
            "RATE_LIMITED"
        );
    }

    #[test]
    fn complete_for_an_unknown_id_is_ignored() {
        let mut state = anonymous(Protocol::TransportWs);
        send(&mut state, subscribe("1"));
        assert!(send(&mut state, json!({"type": "complete", "id": "nope"})).is_empty());
        send(&mut state, subscribe("2"));
        // Both still count: a third is refused.
        assert!(send(&mut state, subscribe("3"))[0].starts_with("send "));
    }

    #[test]
    fn timers_and_the_socket_close_with_their_codes() {
        let mut state = State::new(Protocol::TransportWs, 2);
        assert_eq!(said(state.on(Event::KeepAlive)), ["ping"]);
        let cases = [
            (
                Event::InitTimeout,
                "close 4408 Connection initialisation timeout",
            ),
            (Event::NotUtf8, "close 4400 invalid message: not UTF-8"),
            (Event::TooBig, "close 1009 message too big"),
            (
                Event::TooBigOnTheWire,
                "close 1008 message too big on the wire",
            ),
            (
                Event::MessageTimedOut,
                "close 1008 a message was not completed in time",
            ),
            (Event::ShuttingDown, "close 1001 server shutting down"),
        ];
        for (event, closed) in cases {
            let mut state = State::new(Protocol::TransportWs, 2);
            assert_eq!(said(state.on(event)), [closed]);
        }
        assert_eq!(
            send(&mut state, json!({"type": "subscribe", "id": "1"})),
            ["close 4400 invalid message: `subscribe` payload is not a GraphQL request"]
        );
        // Once initialized, a stale init timer means nothing.
        let mut state = anonymous(Protocol::TransportWs);
        assert!(state.on(Event::InitTimeout).is_empty());
    }

    #[test]
    fn an_answer_nobody_asked_for_is_ignored() {
        let mut state = anonymous(Protocol::TransportWs);
        assert!(state
            .on(Event::Authenticated(Ok(viewer("eve", 1))))
            .is_empty());
        assert!(state.on(Event::Admitted(true)).is_empty());
        assert!(state.viewer().is_none());
    }
}
