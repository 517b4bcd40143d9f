//! Property-based fuzzing of what clients control directly: WebSocket
//! messages, `where:` filters and cursors. Nothing may panic, and the
//! answers must be the ones a small reference model of the documented
//! rules gives. Bounded (a few thousand cases) so CI runs it.

use std::cmp::Ordering;

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tidewire::{
    db::{Change, Cursor, Op},
    http::protocol::{ClientMessage, Protocol, ProtocolError},
    hub::RowFilter,
};

/// Arbitrary JSON values, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        prop::sample::select(vec![
            "id", "status", "_eq", "_gt", "_in", "_is_null", "_like"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "id",
                    "status",
                    "amount",
                    "type",
                    "payload",
                    "query",
                    "_eq",
                    "_neq",
                    "_gt",
                    "_gte",
                    "_lt",
                    "_lte",
                    "_in",
                    "_is_null",
                    "x; DROP TABLE t",
                ])
                .prop_map(String::from),
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const MESSAGE_TYPES: [&str; 10] = [
    "connection_init",
    "subscribe",
    "start",
    "complete",
    "stop",
    "ping",
    "pong",
    "connection_terminate",
    "next",
    "",
];

/// Client messages: mostly objects whose `type`, `id` and `payload` are
/// each absent, well-formed or anything; sometimes any other JSON (arrays
/// included: none is a message, however its items line up).
fn message() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        4 => prop::sample::select(MESSAGE_TYPES.to_vec()).prop_map(Value::from),
        1 => json_value(),
    ];
    let id = prop_oneof![3 => ".{0,8}".prop_map(Value::from), 1 => json_value()];
    let query = prop_oneof![3 => ".{0,12}".prop_map(Value::from), 1 => json_value()];
    let variables = prop::collection::btree_map(
        prop::sample::select(vec!["table", "where", "after"]).prop_map(String::from),
        json_value(),
        0..3,
    );
    let request = (query, prop::option::of(variables)).prop_map(|(query, variables)| {
        let mut request = json!({ "query": query });
        if let Some(variables) = variables {
            request["variables"] = Value::Object(variables.into_iter().collect());
        }
        request
    });
    let payload = prop_oneof![json_value(), request];
    let object = (
        prop::option::of(kind),
        prop::option::of(id),
        prop::option::of(payload),
    )
        .prop_map(|(kind, id, payload)| {
            let fields = [("type", kind), ("id", id), ("payload", payload)];
            let object: Map<String, Value> = fields
                .into_iter()
                .filter_map(|(name, value)| Some((name.to_owned(), value?)))
                .collect();
            Value::Object(object)
        });
    let other = json_value();
    prop_oneof![4 => object, 1 => other]
}

/// A parser's answer, reduced to what a client sees of it.
#[derive(Debug, PartialEq)]
enum Answer {
    Init(Option<Value>),
    Ping(Option<Value>),
    Pong,
    Subscribe {
        id: String,
        query: String,
        variables: Value,
    },
    Complete(String),
    Terminate,
    Refused(ProtocolError),
}

fn parsed(text: &str, protocol: Protocol) -> Answer {
    match ClientMessage::parse(text, protocol) {
        Ok(ClientMessage::Init(payload)) => Answer::Init(payload),
        Ok(ClientMessage::Ping(payload)) => Answer::Ping(payload),
        Ok(ClientMessage::Pong) => Answer::Pong,
        Ok(ClientMessage::Subscribe { id, request }) => Answer::Subscribe {
            id,
            query: request.query.clone(),
            variables: serde_json::to_value(&request.variables).unwrap(),
        },
        Ok(ClientMessage::Complete { id }) => Answer::Complete(id),
        Ok(ClientMessage::Terminate) => Answer::Terminate,
        Err(error) => Answer::Refused(error),
    }
}

/// The reference: a message is a JSON object with a string `type`, an `id`
/// that is a string when present (null counts as absent, as does a null
/// `payload`); each type is known on one protocol or both and needs the
/// fields listed here.
fn expected(message: &Value, protocol: Protocol) -> Answer {
    use Answer::Refused;
    let Some(object) = message.as_object() else {
        return Refused(ProtocolError::NotJson);
    };
    let Some(kind) = object.get("type").and_then(Value::as_str) else {
        return Refused(ProtocolError::NotJson);
    };
    let id = match object.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => return Refused(ProtocolError::NotJson),
    };
    let payload = object.get("payload").filter(|p| !p.is_null()).cloned();
    let transport = protocol == Protocol::TransportWs;
    let (subscribe, complete) = match protocol {
        Protocol::TransportWs => ("subscribe", "complete"),
        Protocol::Legacy => ("start", "stop"),
    };
    match kind {
        "connection_init" => Answer::Init(payload),
        "ping" if transport => Answer::Ping(payload),
        "pong" if transport => Answer::Pong,
        "connection_terminate" if !transport => Answer::Terminate,
        kind if kind == subscribe => {
            let Some(id) = id else {
                return Refused(ProtocolError::MissingId(subscribe));
            };
            let payload = payload.unwrap_or_default();
            match &payload["query"] {
                Value::String(query) => Answer::Subscribe {
                    id,
                    query: query.clone(),
                    variables: payload.get("variables").cloned().unwrap_or(json!({})),
                },
                _ => Refused(ProtocolError::BadPayload(subscribe)),
            }
        }
        kind if kind == complete => match id {
            Some(id) => Answer::Complete(id),
            None => Refused(ProtocolError::MissingId(complete)),
        },
        other => Refused(ProtocolError::UnknownType(other.chars().take(32).collect())),
    }
}

/// Scalars rows and filters share, so that filters often match.
fn scalar() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        json!(null),
        json!(true),
        json!(false),
        json!(0),
        json!(-0.0),
        json!(1),
        json!(1.0),
        json!(1.5),
        json!(-1),
        json!(5),
        json!(""),
        json!("1"),
        json!("done"),
        json!("open"),
    ])
}

/// `where` filters in the documented shape, over the table's columns and
/// one it lacks, with known operators and one unknown.
fn where_filter() -> impl Strategy<Value = Value> {
    let operand = prop_oneof![
        3 => scalar(),
        1 => prop::collection::vec(scalar(), 0..4).prop_map(Value::from),
    ];
    let operators = prop::collection::btree_map(
        prop::sample::select(vec![
            "_eq", "_neq", "_gt", "_gte", "_lt", "_lte", "_in", "_is_null", "_like",
        ])
        .prop_map(String::from),
        operand,
        1..3,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()));
    let condition = prop_oneof![scalar(), operators];
    prop::collection::btree_map(
        prop::sample::select(vec!["id", "status", "amount", "owner"]).prop_map(String::from),
        condition,
        0..3,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// Rows of the table: some columns set to shared scalars.
fn row() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        prop::sample::select(vec!["id", "status", "amount"]).prop_map(String::from),
        scalar(),
        0..4,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// A `where` filter as the reference reads it: its (column, operator,
/// operand) conditions, or `None` when it must be refused. (Generated
/// filters stay well under the default size limits.)
fn reference_conditions(filter: &Value, columns: &[&str]) -> Option<Vec<(String, String, Value)>> {
    let mut conditions = Vec::new();
    for (column, spec) in filter.as_object()? {
        if !columns.contains(&column.as_str()) {
            return None;
        }
        match spec {
            Value::Object(operators)
                if !operators.is_empty() && operators.keys().all(|k| k.starts_with('_')) =>
            {
                for (operator, operand) in operators {
                    let valid = match operator.as_str() {
                        "_eq" | "_neq" => true,
                        "_gt" | "_gte" | "_lt" | "_lte" => {
                            operand.is_number() || operand.is_string()
                        }
                        "_in" => operand.as_array().is_some_and(|values| {
                            values.iter().all(|v| !v.is_array() && !v.is_object())
                        }),
                        "_is_null" => operand.is_boolean(),
                        _ => false,
                    };
                    if !valid {
                        return None;
                    }
                    conditions.push((column.clone(), operator.clone(), operand.clone()));
                }
            }
            value => conditions.push((column.clone(), "_eq".to_owned(), value.clone())),
        }
    }
    Some(conditions)
}

/// Equal as JSON, except that numbers compare by value (1 = 1.0).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Numbers by value, strings by text; nothing else is ordered.
fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Whether `row` meets every condition; a missing column is null.
fn reference_matches(conditions: &[(String, String, Value)], row: &Value) -> bool {
    let Some(row) = row.as_object() else {
        return false;
    };
    conditions.iter().all(|(column, operator, operand)| {
        let value = row.get(column).unwrap_or(&Value::Null);
        match operator.as_str() {
            "_eq" => same(value, operand),
            "_neq" => !value.is_null() && !same(value, operand),
            "_gt" => order(value, operand) == Some(Ordering::Greater),
            "_gte" => matches!(
                order(value, operand),
                Some(Ordering::Greater | Ordering::Equal)
            ),
            "_lt" => order(value, operand) == Some(Ordering::Less),
            "_lte" => matches!(
                order(value, operand),
                Some(Ordering::Less | Ordering::Equal)
            ),
            "_in" => operand.as_array().unwrap().iter().any(|v| same(value, v)),
            "_is_null" => value.is_null() == operand.as_bool().unwrap(),
            other => unreachable!("the reference refused {other}"),
        }
    })
}

fn change(row: Option<Value>, old_row: Option<Value>) -> Change {
    Change {
        cursor: Cursor::default(),
        topic: "t".into(),
        table: "public.t".into(),
        op: Op::Update,
        row,
        old_row,
        committed_at: chrono::Utc::now(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_answered_as_its_json_says(text in ".{0,200}") {
        for protocol in [Protocol::TransportWs, Protocol::Legacy] {
            let expected = match serde_json::from_str::<Value>(&text) {
                Ok(message) => expected(&message, protocol),
                Err(_) => Answer::Refused(ProtocolError::NotJson),
            };
            prop_assert_eq!(parsed(&text, protocol), expected);
        }
    }

    #[test]
    fn a_message_is_accepted_exactly_when_its_type_has_what_it_needs(message in message()) {
        let text = message.to_string();
        // Compared with the text as read back: floats need not round-trip.
        let message: Value = serde_json::from_str(&text).unwrap();
        for protocol in [Protocol::TransportWs, Protocol::Legacy] {
            prop_assert_eq!(
                parsed(&text, protocol),
                expected(&message, protocol),
                "{} on {:?}",
                text,
                protocol
            );
        }
    }

    #[test]
    fn a_where_is_accepted_and_evaluated_as_the_reference_says(
        filter in prop_oneof![json_value(), where_filter()],
        row in prop::option::of(prop_oneof![1 => json_value(), 3 => row()]),
        old_row in prop::option::of(prop_oneof![1 => json_value(), 3 => row()]),
    ) {
        let columns: Vec<String> = ["id", "status", "amount"].map(String::from).to_vec();
        let reference = reference_conditions(&filter, &["id", "status", "amount"]);
        match RowFilter::parse(&filter, "t", &columns) {
            Ok(parsed) => {
                // Only the table's columns pass.
                for key in filter.as_object().unwrap().keys() {
                    prop_assert!(columns.contains(key));
                }
                let Some(conditions) = reference else {
                    return Err(TestCaseError::fail(format!("{filter} should be refused")));
                };
                // A change passes when its new row or its old row matches.
                let expected = [&row, &old_row]
                    .into_iter()
                    .flatten()
                    .any(|row| reference_matches(&conditions, row));
                prop_assert_eq!(
                    parsed.matches(&change(row.clone(), old_row.clone())),
                    expected,
                    "{} on row {:?}, old row {:?}",
                    filter,
                    row,
                    old_row
                );
            }
            Err(error) => prop_assert!(reference.is_none(), "{} refused: {}", filter, error),
        }
    }

    #[test]
    fn any_cursor_text_is_parsed_or_refused(
        text in prop_oneof![".{0,40}", "tw1:[-+0-9a-fA-F]{0,17}:[-+0-9a-fA-F]{0,17}"],
        position in 0i64..,
        change_id in 0i64..,
    ) {
        if let Ok(parsed) = text.parse::<Cursor>() {
            // What is accepted names a place in the log and reads back
            // as itself.
            prop_assert!(parsed.position >= 0 && parsed.change >= 0, "{}", text);
            prop_assert_eq!(parsed.to_string().parse::<Cursor>(), Ok(parsed));
        }
        let cursor = Cursor::new(position, change_id);
        prop_assert_eq!(cursor.to_string().parse::<Cursor>(), Ok(cursor));
    }
}
