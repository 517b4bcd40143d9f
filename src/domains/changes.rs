//! `changes(table, where, after)`: row changes of any tracked table.

use std::sync::Arc;

use async_graphql::{Context, Json, Object, Result, Subscription};
use chrono::{DateTime, Utc};
use futures_util::{future, Stream, StreamExt};
use serde_json::{Map, Value};

use super::Limits;
use crate::{
    auth::{Role, Viewer},
    db::{Change, ChangeLog, Op, TrackedTable},
    error::{cursor_expired, database, ErrorCode},
    hub::{Feed, Hub, RowFilter},
    sharing::{ShareQuery, ShareRule, Visibility},
};

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, async_graphql::Enum)]
#[graphql(name = "Op")]
pub enum ChangeOp {
    Insert,
    Update,
    Delete,
}

/// One committed change of a tracked table.
pub struct RowChange(Arc<Change>);

#[Object]
impl RowChange {
    /// Opaque position of this change; pass it as `after` to resume.
    async fn cursor(&self) -> String {
        self.0.cursor.to_string()
    }

    /// Qualified table name, e.g. `public.items`.
    async fn table(&self) -> &str {
        &self.0.table
    }

    async fn op(&self) -> ChangeOp {
        match self.0.op {
            Op::Insert => ChangeOp::Insert,
            Op::Update => ChangeOp::Update,
            Op::Delete => ChangeOp::Delete,
        }
    }

    /// The row after the change; null for deletes.
    async fn row(&self) -> Option<Json<Value>> {
        self.0.row.clone().map(Json)
    }

    /// The row before the change; null for inserts.
    async fn old_row(&self) -> Option<Json<Value>> {
        self.0.old_row.clone().map(Json)
    }

    /// When the transaction committed.
    async fn committed_at(&self) -> DateTime<Utc> {
        self.0.committed_at
    }
}

#[derive(Default)]
pub struct ChangesQuery;

#[Object]
impl ChangesQuery {
    /// Names of the tracked tables, usable as `changes(table:)`.
    async fn tracked_tables(&self, ctx: &Context<'_>) -> Result<Vec<String>> {
        // Only those the caller may subscribe to: the names of admin-only
        // tables are not for everyone.
        let viewer = ctx.data_opt::<Viewer>();
        let tables = ctx
            .data_unchecked::<ChangeLog>()
            .tracked_tables()
            .await
            .map_err(database)?;
        Ok(tables
            .into_iter()
            .filter(|table| access(table, viewer).is_ok())
            .map(|table| table.name)
            .collect())
    }
}

#[derive(Default)]
pub struct ChangesSubscription;

#[Subscription]
impl ChangesSubscription {
    /// Inserts, updates and deletes of a tracked table, in commit order.
    /// `where` keeps changes whose new or old row matches (see README);
    /// `after` resumes after a received item's `cursor`, replaying what was
    /// missed.
    async fn changes(
        &self,
        ctx: &Context<'_>,
        table: String,
        #[graphql(name = "where")] filter: Option<Json<Value>>,
        after: Option<String>,
    ) -> Result<impl Stream<Item = Result<RowChange>>> {
        let log = ctx.data_unchecked::<ChangeLog>().clone();
        let hub = ctx.data_unchecked::<Arc<Hub>>();
        let limits = ctx.data_unchecked::<Limits>();
        let after = super::start_after(ctx, after)?;
        let Readable {
            tracked,
            owner,
            filter,
        } = readable(ctx, &table, filter).await?;

        let feed = Feed::new(log, hub.subscribe(&tracked.topic), after, limits.page)
            .queued_as(super::catchup_client(ctx));
        // A topic may carry several tables (track(..., topic)): keep this one.
        let table = tracked.name;
        let key = tracked.key_columns;
        // The filter lives in this stream and goes with it when the
        // subscription ends. Live and replayed changes pass the same view.
        let changes = feed
            .into_stream(move |change| change.table == table)
            .filter_map(move |item| {
                let item = match item {
                    Err(expired) => Some(Err(cursor_expired(expired))),
                    Ok(change) => view(change, owner.as_ref(), &key, filter.as_ref())
                        .map(|change| Ok(RowChange(change))),
                };
                future::ready(item)
            });
        Ok(changes)
    }
}

/// `changes` without `after` is shared by the class that may read the
/// table: anyone for a public table, admins for an admin-only one, the
/// owner for an owner-column table.
pub fn sharing(log: ChangeLog) -> ShareRule {
    Arc::new(move |query: ShareQuery| {
        let log = log.clone();
        Box::pin(async move { class(&log, &query).await.map(Into::into) })
    })
}

/// The class that may read the table a `changes` or `liveRows` query
/// names, if it can be shared: not resuming (`after`), a table the viewer
/// may read.
pub(super) async fn class(log: &ChangeLog, query: &ShareQuery) -> Option<Visibility> {
    if query.argument("after").is_some() {
        return None;
    }
    let Some(async_graphql::Value::String(name)) = query.argument("table") else {
        return None;
    };
    let candidates = log.tracked_table(name).await.ok()?;
    let tracked = resolve(name, candidates, query.viewer.as_ref()).ok()?;
    Some(match access(&tracked, query.viewer.as_ref()).ok()? {
        None if tracked.public => Visibility::Anyone,
        None => Visibility::Role(Role::Admin),
        Some(owner) => Visibility::Owner(owner.user),
    })
}

/// The tracked table `name` means among `candidates` (see
/// `ChangeLog::tracked_table`).
fn resolve(
    name: &str,
    mut candidates: Vec<TrackedTable>,
    viewer: Option<&Viewer>,
) -> Result<TrackedTable> {
    let name: String = name.chars().take(64).collect();
    match candidates.pop() {
        Some(table) if candidates.is_empty() => Ok(table),
        None => Err(ErrorCode::BadUserInput.error(format!(
            "table `{name}` is not tracked: run SELECT tidewire.track('{name}') first"
        ))),
        Some(last) => {
            candidates.push(last);
            // Name only the tables the caller could read, as trackedTables.
            let readable: Vec<&str> = candidates
                .iter()
                .filter(|table| access(table, viewer).is_ok())
                .map(|table| table.name.as_str())
                .collect();
            let hint = if readable.is_empty() {
                "name it as schema.table".to_owned()
            } else {
                format!("name one of {}", readable.join(", "))
            };
            Err(ErrorCode::BadUserInput.error(format!(
                "table `{name}` is ambiguous: several tracked tables have that name; {hint}"
            )))
        }
    }
}

/// A tracked table as the caller may read it: all of it, or their own rows
/// (`owner`), through an optional `where` filter.
pub(super) struct Readable {
    pub(super) tracked: TrackedTable,
    pub(super) owner: Option<Owner>,
    pub(super) filter: Option<RowFilter>,
}

/// Resolves `table` for the caller: `BAD_USER_INPUT` for an untracked or
/// ambiguous name or a bad filter, `UNAUTHENTICATED` / `FORBIDDEN` when
/// they may not read it.
pub(super) async fn readable(
    ctx: &Context<'_>,
    table: &str,
    filter: Option<Json<Value>>,
) -> Result<Readable> {
    let limits = ctx.data_unchecked::<Limits>();
    let viewer = ctx.data_opt::<Viewer>();
    let candidates = ctx
        .data_unchecked::<ChangeLog>()
        .tracked_table(table)
        .await
        .map_err(database)?;
    let tracked = resolve(table, candidates, viewer)?;
    let owner = access(&tracked, viewer)?;
    let mut bounds = RowFilter::DEFAULT_LIMITS;
    bounds.max_bytes = limits.max_where_bytes;
    bounds.max_conditions = limits.max_where_conditions;
    bounds.max_in_values = limits.max_where_in_values;
    let filter = filter
        .map(|Json(value)| {
            RowFilter::parse_within(&value, &tracked.name, &tracked.columns, &bounds)
        })
        .transpose()
        .map_err(|e| ErrorCode::BadUserInput.error(e.to_string()))?;
    Ok(Readable {
        tracked,
        owner,
        filter,
    })
}

/// An owner-scoped viewer: `user` reads the rows whose `column` holds
/// their id.
pub(super) struct Owner {
    column: String,
    user: String,
}

impl Owner {
    /// The user whose rows these are.
    pub(super) fn user(&self) -> &str {
        &self.user
    }

    pub(super) fn owns(&self, row: &Value) -> bool {
        match row.get(&self.column) {
            Some(Value::String(owner)) => *owner == self.user,
            Some(Value::Number(owner)) => owner.to_string() == self.user,
            _ => false,
        }
    }
}

/// What a viewer receives of `change`, if anything: the change as it is for
/// everyone but owner-scoped viewers. Those see only rows they own, so an
/// update that moves a row between owners reaches each side as what it is
/// to them: the new owner an INSERT of the new row; the old owner a DELETE
/// whose `oldRow` is the key alone (null without a key). `filter` is
/// checked on the rows the viewer may see, so it cannot probe the others.
fn view(
    change: Arc<Change>,
    owner: Option<&Owner>,
    key: &[String],
    filter: Option<&RowFilter>,
) -> Option<Arc<Change>> {
    let Some(owner) = owner else {
        return filter.is_none_or(|f| f.matches(&change)).then_some(change);
    };
    let owns = |row: &Option<Value>| row.as_ref().map(|row| owner.owns(row));
    let matches = |row: &Option<Value>| {
        filter.is_none_or(|f| row.as_ref().is_some_and(|row| f.matches_row(row)))
    };
    match (owns(&change.row), owns(&change.old_row)) {
        (Some(true), Some(true)) | (Some(true), None) | (None, Some(true)) => {
            filter.is_none_or(|f| f.matches(&change)).then_some(change)
        }
        // Ownership arrived: the old row was someone else's.
        (Some(true), Some(false)) => matches(&change.row).then(|| {
            Arc::new(Change {
                op: Op::Insert,
                row: change.row.clone(),
                old_row: None,
                cursor: change.cursor,
                topic: change.topic.clone(),
                table: change.table.clone(),
                committed_at: change.committed_at,
            })
        }),
        // Ownership left: the new row is someone else's. The old one was the
        // viewer's, so the filter may look at it; only its key is sent.
        (Some(false), Some(true)) => matches(&change.old_row).then(|| {
            Arc::new(Change {
                op: Op::Delete,
                row: None,
                old_row: change.old_row.as_ref().and_then(|row| key_of(row, key)),
                cursor: change.cursor,
                topic: change.topic.clone(),
                table: change.table.clone(),
                committed_at: change.committed_at,
            })
        }),
        _ => None,
    }
}

/// `row` cut down to its `key` columns; `None` without a key.
fn key_of(row: &Value, key: &[String]) -> Option<Value> {
    if key.is_empty() {
        return None;
    }
    let row = row.as_object()?;
    let key: Map<String, Value> = key
        .iter()
        .filter_map(|column| Some((column.clone(), row.get(column)?.clone())))
        .collect();
    Some(Value::Object(key))
}

/// Who may read `table`'s changes: everything (`None`), or only the
/// viewer's own rows.
fn access(table: &TrackedTable, viewer: Option<&Viewer>) -> Result<Option<Owner>> {
    if table.public || viewer.is_some_and(|v| v.role == Role::Admin) {
        return Ok(None);
    }
    match (viewer, &table.owner_column) {
        (None, _) => Err(ErrorCode::Unauthenticated
            .error(format!("sign in to read the changes of `{}`", table.name))),
        (Some(viewer), Some(column)) => Ok(Some(Owner {
            column: column.clone(),
            user: viewer.user_id.clone(),
        })),
        (Some(_), None) => {
            Err(ErrorCode::Forbidden
                .error(format!("the changes of `{}` are for admins", table.name)))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::db::Cursor;

    fn change(op: Op, row: Option<Value>, old_row: Option<Value>) -> Arc<Change> {
        Arc::new(Change {
            cursor: Cursor::new(7, 7),
            topic: Arc::from("public.notes"),
            table: "public.notes".into(),
            op,
            row,
            old_row,
            committed_at: Utc::now(),
        })
    }

    fn alice() -> Owner {
        Owner {
            column: "owner".into(),
            user: "alice".into(),
        }
    }

    fn key() -> Vec<String> {
        vec!["id".into()]
    }

    fn note(owner: &str, body: &str) -> Value {
        json!({"id": 1, "owner": owner, "body": body})
    }

    fn filter(value: Value) -> RowFilter {
        let columns = ["id", "owner", "body"].map(String::from);
        RowFilter::parse(&value, "public.notes", &columns).unwrap()
    }

    #[test]
    fn owned_rows_pass_as_they_are() {
        let owner = alice();
        for change in [
            change(
                Op::Update,
                Some(note("alice", "b")),
                Some(note("alice", "a")),
            ),
            change(Op::Insert, Some(note("alice", "a")), None),
            change(Op::Delete, None, Some(note("alice", "a"))),
        ] {
            let seen = view(change.clone(), Some(&owner), &key(), None).unwrap();
            assert!(Arc::ptr_eq(&seen, &change));
        }
        let others = change(Op::Update, Some(note("bob", "b")), Some(note("bob", "a")));
        assert!(view(others.clone(), Some(&owner), &key(), None).is_none());
        // Admins and public tables: no owner, everything.
        assert!(view(others, None, &key(), None).is_some());
    }

    #[test]
    fn a_row_changing_owner_shows_each_side_only_its_own() {
        let to_bob = change(
            Op::Update,
            Some(note("bob", "bob: salary")),
            Some(note("alice", "alice: diary")),
        );
        let seen = view(to_bob.clone(), Some(&alice()), &key(), None).unwrap();
        assert_eq!(
            (seen.op, &seen.row, &seen.old_row),
            (Op::Delete, &None, &Some(json!({"id": 1})))
        );
        assert_eq!(seen.cursor, to_bob.cursor);
        let seen = view(to_bob.clone(), Some(&alice()), &[], None).unwrap();
        assert_eq!((seen.op, &seen.old_row), (Op::Delete, &None));

        let bob = Owner {
            column: "owner".into(),
            user: "bob".into(),
        };
        let seen = view(to_bob.clone(), Some(&bob), &key(), None).unwrap();
        assert_eq!(
            (seen.op, &seen.row, &seen.old_row),
            (Op::Insert, &to_bob.row, &None)
        );
    }

    #[test]
    fn the_filter_sees_only_the_viewers_rows() {
        let to_bob = change(
            Op::Update,
            Some(note("bob", "bob: salary")),
            Some(note("alice", "alice: diary")),
        );
        let bob = Owner {
            column: "owner".into(),
            user: "bob".into(),
        };
        let probe = filter(json!({"body": "bob: salary"}));
        assert!(view(to_bob.clone(), Some(&alice()), &key(), Some(&probe)).is_none());
        let own = filter(json!({"body": "alice: diary"}));
        assert!(view(to_bob.clone(), Some(&alice()), &key(), Some(&own)).is_some());
        let probe = filter(json!({"body": "alice: diary"}));
        assert!(view(to_bob.clone(), Some(&bob), &key(), Some(&probe)).is_none());
        let own = filter(json!({"body": "bob: salary"}));
        assert!(view(to_bob, Some(&bob), &key(), Some(&own)).is_some());
    }
}
