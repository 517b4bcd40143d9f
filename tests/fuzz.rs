//! Property-based fuzzing of what clients control directly: WebSocket
//! messages, `where:` filters and cursors. Nothing may panic, and what is
//! accepted must behave. Bounded (a few thousand cases) so CI runs it.

use proptest::prelude::*;
use serde_json::{json, Value};
use tidewire::{
    db::{Change, Cursor, Op},
    http::protocol::{ClientMessage, Protocol},
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

fn change(row: Value) -> Change {
    Change {
        cursor: Cursor::default(),
        topic: "t".into(),
        table: "public.t".into(),
        op: Op::Update,
        row: Some(row.clone()),
        old_row: Some(row),
        committed_at: chrono::Utc::now(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_parsed_or_refused_without_panic(text in ".{0,200}") {
        for protocol in [Protocol::TransportWs, Protocol::Legacy] {
            let _ = ClientMessage::parse(&text, protocol);
        }
    }

    #[test]
    fn any_json_message_is_parsed_or_refused_without_panic(
        kind in prop::sample::select(vec![
            "connection_init", "subscribe", "start", "complete", "stop", "ping", "pong",
            "connection_terminate", "next", "",
        ]),
        id in prop::option::of(".{0,8}"),
        payload in json_value(),
    ) {
        let message = json!({"type": kind, "id": id, "payload": payload});
        for protocol in [Protocol::TransportWs, Protocol::Legacy] {
            if let Ok(ClientMessage::Subscribe { id: parsed, request }) =
                ClientMessage::parse(&message.to_string(), protocol)
            {
                // Accepted subscribes carry the id and a query string.
                prop_assert_eq!(Some(parsed), id.clone());
                prop_assert_eq!(Some(request.query.as_str()), payload["query"].as_str());
            }
        }
    }

    #[test]
    fn any_where_is_parsed_or_refused_and_evaluated_without_panic(
        filter in json_value(),
        row in json_value(),
    ) {
        let columns: Vec<String> = ["id", "status", "amount"].map(String::from).to_vec();
        if let Ok(parsed) = RowFilter::parse(&filter, "t", &columns) {
            // Only the table's columns pass.
            for key in filter.as_object().unwrap().keys() {
                prop_assert!(columns.contains(key));
            }
            let _ = parsed.matches(&change(row));
        }
    }

    #[test]
    fn any_cursor_text_is_parsed_or_refused(text in ".{0,40}", position in 0i64.., change_id in 0i64..) {
        let _ = text.parse::<Cursor>();
        let cursor = Cursor::new(position, change_id);
        prop_assert_eq!(cursor.to_string().parse::<Cursor>(), Ok(cursor));
    }
}
