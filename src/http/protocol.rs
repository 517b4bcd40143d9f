//! The GraphQL-over-WebSocket wire formats, unaware of sockets: parsing
//! client messages and building server frames for `graphql-transport-ws`
//! and the legacy `graphql-ws` (subscriptions-transport-ws); `state`
//! holds one connection's conversation in them.

mod state;

use async_graphql::Request;
use serde::Deserialize;
use serde_json::Value;
pub(crate) use state::{Event, Output, ProtocolState};

/// Which subprotocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `graphql-transport-ws` (the graphql-ws library).
    TransportWs,
    /// Legacy `graphql-ws` (Apollo's subscriptions-transport-ws).
    Legacy,
}

impl Protocol {
    pub const NAMES: [&'static str; 2] = ["graphql-transport-ws", "graphql-ws"];

    pub fn from_name(name: &str) -> Option<Protocol> {
        match name {
            "graphql-transport-ws" => Some(Protocol::TransportWs),
            "graphql-ws" => Some(Protocol::Legacy),
            _ => None,
        }
    }
}

/// Close codes of graphql-transport-ws (also used on the legacy protocol).
pub mod close {
    /// The client said `connection_terminate` (legacy).
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INVALID_MESSAGE: u16 = 4400;
    pub const UNAUTHORIZED: u16 = 4401;
    pub const FORBIDDEN: u16 = 4403;
    pub const INIT_TIMEOUT: u16 = 4408;
    pub const DUPLICATE_ID: u16 = 4409;
    pub const TOO_MANY_INITS: u16 = 4429;
}

/// A message from the client.
#[derive(Debug)]
pub enum ClientMessage {
    Init(Option<Value>),
    Ping(Option<Value>),
    Pong,
    Subscribe {
        id: String,
        request: Box<Request>,
    },
    Complete {
        id: String,
    },
    /// Legacy `connection_terminate`: the client is leaving.
    Terminate,
}

#[derive(Deserialize)]
struct RawMessage {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
    payload: Option<Value>,
}

/// Why a client message was refused; the text becomes the close reason.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid message: not a JSON object with a `type`")]
    NotJson,
    #[error("invalid message: unknown type `{0}`")]
    UnknownType(String),
    #[error("invalid message: `{0}` needs an `id`")]
    MissingId(&'static str),
    #[error("invalid message: `{0}` payload is not a GraphQL request")]
    BadPayload(&'static str),
}

impl ClientMessage {
    pub fn parse(text: &str, protocol: Protocol) -> Result<ClientMessage, ProtocolError> {
        // A message is a JSON object; serde would also read a struct from
        // an array, positionally (`["subscribe", "1", {…}]`).
        if !text.trim_start().starts_with('{') {
            return Err(ProtocolError::NotJson);
        }
        let raw: RawMessage = serde_json::from_str(text).map_err(|_| ProtocolError::NotJson)?;
        let subscribe = match protocol {
            Protocol::TransportWs => "subscribe",
            Protocol::Legacy => "start",
        };
        let complete = match protocol {
            Protocol::TransportWs => "complete",
            Protocol::Legacy => "stop",
        };
        match raw.kind.as_str() {
            "connection_init" => Ok(ClientMessage::Init(raw.payload)),
            "ping" if protocol == Protocol::TransportWs => Ok(ClientMessage::Ping(raw.payload)),
            "pong" if protocol == Protocol::TransportWs => Ok(ClientMessage::Pong),
            "connection_terminate" if protocol == Protocol::Legacy => Ok(ClientMessage::Terminate),
            kind if kind == subscribe => {
                let id = raw.id.ok_or(ProtocolError::MissingId(subscribe))?;
                let payload = raw
                    .payload
                    .filter(|p| p.get("query").is_some_and(Value::is_string))
                    .ok_or(ProtocolError::BadPayload(subscribe))?;
                let request: Request = serde_json::from_value(payload)
                    .map_err(|_| ProtocolError::BadPayload(subscribe))?;
                Ok(ClientMessage::Subscribe {
                    id,
                    request: Box::new(request),
                })
            }
            kind if kind == complete => Ok(ClientMessage::Complete {
                id: raw.id.ok_or(ProtocolError::MissingId(complete))?,
            }),
            other => Err(ProtocolError::UnknownType(other.chars().take(32).collect())),
        }
    }
}

/// Server frames, as text.
pub struct Frames {
    pub protocol: Protocol,
}

impl Frames {
    pub fn ack(&self) -> String {
        r#"{"type":"connection_ack"}"#.to_owned()
    }

    pub fn pong(&self, payload: Option<&Value>) -> String {
        match payload {
            Some(p) => format!(r#"{{"type":"pong","payload":{p}}}"#),
            None => r#"{"type":"pong"}"#.to_owned(),
        }
    }

    pub fn keepalive(&self) -> Option<&'static str> {
        match self.protocol {
            Protocol::Legacy => Some(r#"{"type":"ka"}"#),
            Protocol::TransportWs => None,
        }
    }

    /// A result of subscription `id`. `quoted_id` is the id as a JSON
    /// string and `payload` an already serialized execution result: the
    /// same payload bytes serve every subscriber of a shared shape.
    pub fn next(&self, quoted_id: &str, payload: &str) -> String {
        let kind = match self.protocol {
            Protocol::TransportWs => "next",
            Protocol::Legacy => "data",
        };
        let mut frame = String::with_capacity(payload.len() + quoted_id.len() + 32);
        frame.push_str(r#"{"id":"#);
        frame.push_str(quoted_id);
        frame.push_str(r#","type":""#);
        frame.push_str(kind);
        frame.push_str(r#"","payload":"#);
        frame.push_str(payload);
        frame.push('}');
        frame
    }

    /// Errors that ended an operation before it produced anything.
    pub fn error(&self, quoted_id: &str, errors: &str) -> String {
        match self.protocol {
            Protocol::TransportWs => {
                format!(r#"{{"id":{quoted_id},"type":"error","payload":{errors}}}"#)
            }
            // Apollo's legacy clients read errors from a `data` message.
            Protocol::Legacy => {
                self.next(quoted_id, &format!(r#"{{"data":null,"errors":{errors}}}"#))
            }
        }
    }

    pub fn complete(&self, quoted_id: &str) -> String {
        format!(r#"{{"id":{quoted_id},"type":"complete"}}"#)
    }
}

/// `id` as a JSON string literal.
pub fn quote(id: &str) -> String {
    Value::String(id.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_protocols() {
        let transport = Protocol::TransportWs;
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"connection_init","payload":{"a":1}}"#, transport),
            Ok(ClientMessage::Init(Some(_)))
        ));
        let msg = ClientMessage::parse(
            r#"{"type":"subscribe","id":"1","payload":{"query":"{ a }"}}"#,
            transport,
        )
        .unwrap();
        assert!(matches!(msg, ClientMessage::Subscribe { id, .. } if id == "1"));
        let msg = ClientMessage::parse(
            r#"{"type":"start","id":"x","payload":{"query":"{ a }"}}"#,
            Protocol::Legacy,
        )
        .unwrap();
        assert!(matches!(msg, ClientMessage::Subscribe { id, .. } if id == "x"));
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"stop","id":"x"}"#, Protocol::Legacy),
            Ok(ClientMessage::Complete { .. })
        ));
    }

    #[test]
    fn refuses_garbage_with_a_reason() {
        let t = Protocol::TransportWs;
        assert_eq!(
            ClientMessage::parse("{", t).unwrap_err(),
            ProtocolError::NotJson
        );
        assert_eq!(
            ClientMessage::parse("[1]", t).unwrap_err(),
            ProtocolError::NotJson
        );
        assert_eq!(
            ClientMessage::parse(r#"["subscribe","1",{"query":"{ a }"}]"#, t).unwrap_err(),
            ProtocolError::NotJson,
            "an array is not a message, however its items line up"
        );
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"start","id":"1"}"#, t),
            Err(ProtocolError::UnknownType(_))
        ));
        assert_eq!(
            ClientMessage::parse(r#"{"type":"subscribe","payload":{"query":"{a}"}}"#, t)
                .unwrap_err(),
            ProtocolError::MissingId("subscribe")
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"subscribe","id":"1","payload":{"q":1}}"#, t)
                .unwrap_err(),
            ProtocolError::BadPayload("subscribe")
        );
    }

    #[test]
    fn frames_splice_ids_into_shared_payloads() {
        let frames = Frames {
            protocol: Protocol::TransportWs,
        };
        let frame = frames.next(&quote("a\"b"), r#"{"data":{"x":1}}"#);
        let value: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(value["id"], "a\"b");
        assert_eq!(value["type"], "next");
        assert_eq!(value["payload"]["data"]["x"], 1);
        let legacy = Frames {
            protocol: Protocol::Legacy,
        };
        let value: Value =
            serde_json::from_str(&legacy.error(&quote("7"), r#"[{"message":"m"}]"#)).unwrap();
        assert_eq!(value["type"], "data");
        assert_eq!(value["payload"]["errors"][0]["message"], "m");
    }
}
