//! `RowFilter`: the `where:` argument of `changes`, checked in memory
//! against each change, so client input never reaches SQL.
//!
//! Shape: an object of column → condition, all of which must hold. A
//! condition is a plain JSON value (equality) or an object of operators:
//! `_eq`, `_neq`, `_gt`, `_gte`, `_lt`, `_lte`, `_in` (array), `_is_null`
//! (boolean). Example: `{"status": "open", "amount": {"_gte": 100}}`.
//!
//! A filter runs once per change per subscriber and lives as long as its
//! subscription, so its size and cost are bounded ([`FilterLimits`]) and
//! `_in` is a hash set: a lookup per row, however long the list.

use std::{cmp::Ordering, collections::HashSet, io};

use serde_json::{Map, Number, Value};

use crate::db::Change;

/// How large a `where` may be. Every subscriber's filter is held in memory
/// and evaluated against every change of its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterLimits {
    /// Bytes of the `where` object as JSON.
    pub max_bytes: usize,
    /// Conditions in all: one per plain value, one per operator.
    pub max_conditions: usize,
    /// Values in one `_in` list.
    pub max_in_values: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RowFilter {
    conditions: Vec<(String, Condition)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Condition {
    Eq(Value),
    Neq(Value),
    Cmp(Ordering, bool, Value),
    In(ValueSet),
    IsNull(bool),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("`where` must be an object of column → condition")]
    NotAnObject,
    #[error("`where` is over the limit of {limit} bytes (as JSON)")]
    TooLarge { limit: usize },
    #[error("`where` has more than the limit of {limit} conditions (one per value or operator)")]
    TooManyConditions { limit: usize },
    #[error("`where` on `{column}`: _in has {count} values, over the limit of {limit}")]
    TooManyValues {
        column: String,
        count: usize,
        limit: usize,
    },
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
    /// The server's default limits (see `Config`); a copy with its fields
    /// set is how callers outside the hub spell other limits.
    pub const DEFAULT_LIMITS: FilterLimits = FilterLimits {
        max_bytes: 8 * 1024,
        max_conditions: 32,
        max_in_values: 100,
    };

    /// Parses a `where` argument within [`RowFilter::DEFAULT_LIMITS`]; the
    /// server passes its configured limits to [`RowFilter::parse_within`].
    pub fn parse(value: &Value, table: &str, columns: &[String]) -> Result<Self, FilterError> {
        Self::parse_within(value, table, columns, &Self::DEFAULT_LIMITS)
    }

    /// Parses a `where` argument, accepting only the table's `columns` and
    /// filters within `limits`.
    pub fn parse_within(
        value: &Value,
        table: &str,
        columns: &[String],
        limits: &FilterLimits,
    ) -> Result<Self, FilterError> {
        // Size first: nothing else is looked at, or copied, in a filter
        // that is too large.
        if !fits_in(value, limits.max_bytes) {
            return Err(FilterError::TooLarge {
                limit: limits.max_bytes,
            });
        }
        let object = value.as_object().ok_or(FilterError::NotAnObject)?;
        let too_many = FilterError::TooManyConditions {
            limit: limits.max_conditions,
        };
        if object.len() > limits.max_conditions {
            return Err(too_many);
        }
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
                    if conditions.len() + ops.len() > limits.max_conditions {
                        return Err(too_many);
                    }
                    for (operator, operand) in ops {
                        let condition = parse_operator(column, operator, operand, limits)?;
                        conditions.push((column.clone(), condition));
                    }
                }
                other => conditions.push((column.clone(), Condition::Eq(other.clone()))),
            }
            if conditions.len() > limits.max_conditions {
                return Err(too_many);
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
            .any(|row| self.matches_row(row))
    }

    /// True when `row` (a JSON object) meets every condition.
    pub fn matches_row(&self, row: &Value) -> bool {
        row.as_object().is_some_and(|row| self.matches_object(row))
    }

    fn matches_object(&self, row: &Map<String, Value>) -> bool {
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
                Condition::In(values) => values.contains(value),
                Condition::IsNull(is_null) => value.is_null() == *is_null,
            }
        })
    }
}

fn parse_operator(
    column: &str,
    operator: &str,
    operand: &Value,
    limits: &FilterLimits,
) -> Result<Condition, FilterError> {
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
        "_in" => {
            const SCALARS: &str = "an array of strings, numbers, booleans or nulls";
            let values = operand.as_array().ok_or_else(|| bad(SCALARS))?;
            if values.len() > limits.max_in_values {
                return Err(FilterError::TooManyValues {
                    column: truncate(column),
                    count: values.len(),
                    limit: limits.max_in_values,
                });
            }
            Condition::In(ValueSet::of(values).ok_or_else(|| bad(SCALARS))?)
        }
        "_is_null" => Condition::IsNull(operand.as_bool().ok_or_else(|| bad("true or false"))?),
        _ => {
            return Err(FilterError::UnknownOperator {
                column: truncate(column),
                operator: truncate(operator),
            })
        }
    })
}

/// The values of an `_in` list, by canonical key, so membership costs one
/// hash lookup. Only scalars: equality of arrays and objects has no cheap
/// canonical form (and no use in a row filter).
#[derive(Debug, Clone, Default, PartialEq)]
struct ValueSet {
    strings: HashSet<Box<str>>,
    /// [`number_key`]s: 1 and 1.0 are one value, as in [`json_eq`].
    numbers: HashSet<u64>,
    null: bool,
    true_: bool,
    false_: bool,
}

impl ValueSet {
    /// `None` if a value is not a scalar.
    fn of(values: &[Value]) -> Option<ValueSet> {
        let mut set = ValueSet::default();
        for value in values {
            match value {
                Value::String(text) => {
                    set.strings.insert(text.as_str().into());
                }
                Value::Number(number) => {
                    set.numbers.insert(number_key(number)?);
                }
                Value::Null => set.null = true,
                Value::Bool(true) => set.true_ = true,
                Value::Bool(false) => set.false_ = true,
                Value::Array(_) | Value::Object(_) => return None,
            }
        }
        Some(set)
    }

    fn contains(&self, value: &Value) -> bool {
        match value {
            Value::String(text) => self.strings.contains(text.as_str()),
            Value::Number(number) => number_key(number).is_some_and(|k| self.numbers.contains(&k)),
            Value::Null => self.null,
            Value::Bool(true) => self.true_,
            Value::Bool(false) => self.false_,
            Value::Array(_) | Value::Object(_) => false,
        }
    }
}

/// A number's identity under [`json_eq`]: the bits of its `f64`, with -0.0
/// folded into 0.0 (they compare equal). JSON has no NaN.
fn number_key(number: &Number) -> Option<u64> {
    let float = number.as_f64()?;
    Some(if float == 0.0 { 0 } else { float.to_bits() })
}

/// Whether `value` serializes to at most `limit` bytes; stops writing at the
/// limit rather than building the text.
fn fits_in(value: &Value, limit: usize) -> bool {
    struct Budget(usize);
    impl io::Write for Budget {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0 = self
                .0
                .checked_sub(bytes.len())
                .ok_or(io::ErrorKind::FileTooLarge)?;
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    serde_json::to_writer(Budget(limit), value).is_ok()
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

    fn within(filter: Value, limits: FilterLimits) -> Result<RowFilter, FilterError> {
        RowFilter::parse_within(&filter, "t", &columns(), &limits)
    }

    const SMALL: FilterLimits = FilterLimits {
        max_bytes: 100,
        max_conditions: 3,
        max_in_values: 4,
    };

    #[test]
    fn refuses_filters_over_the_limits() {
        let long = "x".repeat(100);
        assert_eq!(
            within(json!({ "status": long }), SMALL),
            Err(FilterError::TooLarge { limit: 100 })
        );
        // Counted before the columns are checked.
        let err = within(json!({"nope": long}), SMALL).unwrap_err();
        assert!(err.to_string().contains("limit of 100 bytes"), "{err}");

        let too_many = Err(FilterError::TooManyConditions { limit: 3 });
        let columns = json!({"id": 1, "status": "a", "amount": 2});
        assert!(within(columns, SMALL).is_ok());
        let operators = json!({"id": {"_gt": 1, "_lt": 9, "_neq": 5, "_is_null": false}});
        assert_eq!(within(operators, SMALL), too_many);
        let mixed = json!({"status": "a", "id": {"_gt": 1, "_lt": 9, "_neq": 5}});
        assert_eq!(within(mixed, SMALL), too_many);

        assert!(within(json!({"id": {"_in": [1, 2, 3, 4]}}), SMALL).is_ok());
        let err = within(json!({"id": {"_in": [1, 2, 3, 4, 5]}}), SMALL).unwrap_err();
        assert_eq!(
            err,
            FilterError::TooManyValues {
                column: "id".into(),
                count: 5,
                limit: 4
            }
        );
        assert!(err.to_string().contains("limit of 4"), "{err}");
    }

    #[test]
    fn default_limits_hold_a_hundred_uuids() {
        let uuids: Vec<String> = (0..100)
            .map(|i| format!("00000000-0000-4000-8000-{i:012}"))
            .collect();
        let filter = json!({"status": {"_in": uuids}});
        assert!(RowFilter::parse(&filter, "t", &columns()).is_ok());
        let mut more = uuids.clone();
        more.push("one too many".into());
        let filter = json!({"status": {"_in": more}});
        assert!(matches!(
            RowFilter::parse(&filter, "t", &columns()),
            Err(FilterError::TooManyValues { .. })
        ));
    }

    #[test]
    fn in_refuses_arrays_and_objects() {
        for value in [json!([1]), json!({"a": 1})] {
            let err =
                RowFilter::parse(&json!({"id": {"_in": [1, value]}}), "t", &columns()).unwrap_err();
            assert!(matches!(err, FilterError::BadOperand { .. }), "{err}");
        }
    }

    /// The hash set answers as the old list scan with `json_eq` did.
    #[test]
    fn in_is_the_old_list_membership() {
        let values = [
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(-0.0),
            json!(0.0),
            json!(1),
            json!(1.0),
            json!(-1),
            json!(1.5),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(9_007_199_254_740_993u64),
            json!(""),
            json!("1"),
            json!("open"),
            json!([1]),
            json!({"a": 1}),
        ];
        let scalars: Vec<&Value> = values
            .iter()
            .filter(|v| !v.is_array() && !v.is_object())
            .collect();
        // Every pair of a one-element list and a row value, and lists of
        // several values.
        let mut lists: Vec<Vec<Value>> = scalars.iter().map(|v| vec![(*v).clone()]).collect();
        lists.push(scalars.iter().map(|v| (*v).clone()).collect());
        lists.push(vec![json!("1"), json!(2.0), json!(null)]);
        for list in &lists {
            let set = ValueSet::of(list).unwrap();
            for value in &values {
                let old = list.iter().any(|v| json_eq(value, v));
                assert_eq!(set.contains(value), old, "{value} in {list:?}");
            }
        }
        let set = ValueSet::of(&[json!(1.0)]).unwrap();
        assert!(set.contains(&json!(1)));
        assert!(!set.contains(&json!("1")));
        assert!(check(json!({"id": {"_in": [1.0, 7]}}), json!({"id": 1})));
        assert!(!check(json!({"id": {"_in": ["1"]}}), json!({"id": 1})));
    }
}
