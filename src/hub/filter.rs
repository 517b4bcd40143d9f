//! `RowFilter`: the `where:` argument of `changes`, checked in memory
//! against each change, so client input never reaches SQL.
//!
//! Shape: an object of column → condition, all of which must hold. A
//! condition is a plain JSON value (equality) or an object of operators:
//! `_eq`, `_neq`, `_gt`, `_gte`, `_lt`, `_lte`, `_in` (array), `_is_null`
//! (boolean). Example: `{"status": "open", "amount": {"_gte": 100}}`.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::db::Change;

#[derive(Debug, Clone, PartialEq)]
pub struct RowFilter {
    conditions: Vec<(String, Condition)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Condition {
    Eq(Value),
    Neq(Value),
    Cmp(Ordering, bool, Value),
    In(Vec<Value>),
    IsNull(bool),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("`where` must be an object of column → condition")]
    NotAnObject,
    #[error("`where` names column `{column}`, which `{table}` does not have")]
    UnknownColumn { column: String, table: String },
    #[error("`where` on `{column}`: unknown operator `{operator}` (use _eq, _neq, _gt, _gte, _lt, _lte, _in, _is_null)")]
    UnknownOperator { column: String, operator: String },
    #[error("`where` on `{column}`: {operator} needs {expected}")]
    BadOperand {
        column: String,
        operator: String,
        expected: &'static str,
    },
}

impl RowFilter {
    /// Parses a `where` argument, accepting only the table's `columns`.
    pub fn parse(value: &Value, table: &str, columns: &[String]) -> Result<Self, FilterError> {
        let object = value.as_object().ok_or(FilterError::NotAnObject)?;
        let mut conditions = Vec::new();
        for (column, spec) in object {
            if !columns.iter().any(|c| c == column) {
                return Err(FilterError::UnknownColumn {
                    column: truncate(column),
                    table: table.to_owned(),
                });
            }
            match spec {
                Value::Object(ops) if ops.keys().all(|k| k.starts_with('_')) && !ops.is_empty() => {
                    for (operator, operand) in ops {
                        conditions
                            .push((column.clone(), parse_operator(column, operator, operand)?));
                    }
                }
                other => conditions.push((column.clone(), Condition::Eq(other.clone()))),
            }
        }
        Ok(RowFilter { conditions })
    }

    /// True when the new row matches or, for updates and deletes, the old
    /// row did: a subscriber also learns that a row left its filter.
    pub fn matches(&self, change: &Change) -> bool {
        [&change.row, &change.old_row]
            .into_iter()
            .flatten()
            .any(|row| row.as_object().is_some_and(|row| self.matches_row(row)))
    }

    fn matches_row(&self, row: &Map<String, Value>) -> bool {
        self.conditions.iter().all(|(column, condition)| {
            let value = row.get(column).unwrap_or(&Value::Null);
            match condition {
                Condition::Eq(expected) => json_eq(value, expected),
                Condition::Neq(expected) => !value.is_null() && !json_eq(value, expected),
                Condition::Cmp(ordering, or_equal, bound) => match json_cmp(value, bound) {
                    Some(Ordering::Equal) => *or_equal,
                    Some(actual) => actual == *ordering,
                    None => false,
                },
                Condition::In(values) => values.iter().any(|v| json_eq(value, v)),
                Condition::IsNull(is_null) => value.is_null() == *is_null,
            }
        })
    }
}

fn parse_operator(column: &str, operator: &str, operand: &Value) -> Result<Condition, FilterError> {
    let bad = |expected| FilterError::BadOperand {
        column: truncate(column),
        operator: truncate(operator),
        expected,
    };
    Ok(match operator {
        "_eq" => Condition::Eq(operand.clone()),
        "_neq" => Condition::Neq(operand.clone()),
        "_gt" | "_gte" | "_lt" | "_lte" => {
            if !(operand.is_number() || operand.is_string()) {
                return Err(bad("a number or a string"));
            }
            let ordering = if operator.starts_with("_gt") {
                Ordering::Greater
            } else {
                Ordering::Less
            };
            Condition::Cmp(ordering, operator.ends_with('e'), operand.clone())
        }
        "_in" => Condition::In(operand.as_array().ok_or_else(|| bad("an array"))?.clone()),
        "_is_null" => Condition::IsNull(operand.as_bool().ok_or_else(|| bad("true or false"))?),
        _ => {
            return Err(FilterError::UnknownOperator {
                column: truncate(column),
                operator: truncate(operator),
            })
        }
    })
}

/// Equality where 1 and 1.0 are the same number.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn json_cmp(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Client-supplied names are echoed in errors; keep them short.
fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::db::{Cursor, Op};

    fn columns() -> Vec<String> {
        ["id", "status", "amount"].map(String::from).to_vec()
    }

    fn change(row: Option<Value>, old_row: Option<Value>) -> Change {
        Change {
            cursor: Cursor::default(),
            topic: Arc::from("t"),
            table: "public.t".into(),
            op: Op::Update,
            row,
            old_row,
            committed_at: chrono::Utc::now(),
        }
    }

    fn check(filter: Value, row: Value) -> bool {
        RowFilter::parse(&filter, "t", &columns())
            .unwrap()
            .matches(&change(Some(row), None))
    }

    #[test]
    fn equality_on_columns() {
        assert!(check(
            json!({"status": "open"}),
            json!({"status": "open", "id": 1})
        ));
        assert!(!check(json!({"status": "open"}), json!({"status": "done"})));
        assert!(check(json!({"id": 1.0}), json!({"id": 1})));
        assert!(check(json!({}), json!({"id": 1})));
    }

    #[test]
    fn operators() {
        let row = json!({"id": 5, "status": "open", "amount": null});
        assert!(check(json!({"id": {"_gt": 4, "_lte": 5}}), row.clone()));
        assert!(!check(json!({"id": {"_lt": 5}}), row.clone()));
        assert!(check(
            json!({"status": {"_in": ["open", "new"]}}),
            row.clone()
        ));
        assert!(check(json!({"status": {"_neq": "done"}}), row.clone()));
        assert!(check(json!({"amount": {"_is_null": true}}), row.clone()));
        assert!(!check(json!({"status": {"_gt": 3}}), row));
    }

    #[test]
    fn old_row_counts_so_leaving_the_filter_is_seen() {
        let filter = RowFilter::parse(&json!({"status": "open"}), "t", &columns()).unwrap();
        let left = change(
            Some(json!({"status": "done"})),
            Some(json!({"status": "open"})),
        );
        assert!(filter.matches(&left));
        let deleted = change(None, Some(json!({"status": "closed"})));
        assert!(!filter.matches(&deleted));
    }

    #[test]
    fn rejects_unknown_columns_and_operators() {
        let err = RowFilter::parse(&json!({"id; DROP TABLE t": 1}), "t", &columns()).unwrap_err();
        assert!(matches!(err, FilterError::UnknownColumn { .. }));
        let err = RowFilter::parse(&json!({"id": {"_like": "%"}}), "t", &columns()).unwrap_err();
        assert!(matches!(err, FilterError::UnknownOperator { .. }));
        let err = RowFilter::parse(&json!({"id": {"_in": 3}}), "t", &columns()).unwrap_err();
        assert!(matches!(err, FilterError::BadOperand { .. }));
        assert_eq!(
            RowFilter::parse(&json!([1]), "t", &columns()),
            Err(FilterError::NotAnObject)
        );
    }
}
