//! `changes(table, where, after)`: row changes of any tracked table.

use std::sync::Arc;

use async_graphql::{Context, Json, Object, Result, Subscription};
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use crate::{
    auth::{Role, Viewer},
    db::{Change, ChangeLog, Cursor, Op, TrackedTable},
    error::{cursor_expired, internal, ErrorCode},
    fanout::{CursorProbe, ResumeFrom},
    hub::{Feed, Hub, RowFilter},
    Limits,
};

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

    async fn op(&self) -> Op {
        self.0.op
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
        ctx.data_unchecked::<ChangeLog>()
            .tracked_names()
            .await
            .map_err(internal)
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
        let after = match ctx.data_opt::<ResumeFrom>() {
            // A member that left its shared execution continues here.
            Some(ResumeFrom(cursor)) => Some(*cursor),
            None => after
                .map(|text| text.parse::<Cursor>())
                .transpose()
                .map_err(|e| ErrorCode::BadUserInput.error(e.to_string()))?,
        };
        let probe = ctx.data_opt::<CursorProbe>().cloned();
        let tracked = log
            .tracked_table(&table)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                ErrorCode::BadUserInput.error(format!(
                    "table `{}` is not tracked: run SELECT tidewire.track('{0}') first",
                    table.chars().take(64).collect::<String>()
                ))
            })?;
        let owner = access(&tracked, ctx.data_opt::<Viewer>())?;
        let filter = filter
            .map(|Json(value)| RowFilter::parse(&value, &tracked.name, &tracked.columns))
            .transpose()
            .map_err(|e| ErrorCode::BadUserInput.error(e.to_string()))?;

        let feed = Feed::new(log, hub.subscribe(&tracked.topic), after, limits.page);
        // A topic may carry several tables (track(..., topic)): keep this one.
        let table = tracked.name;
        let keep = move |change: &Change| {
            change.table == table
                && filter.as_ref().is_none_or(|f| f.matches(change))
                && owner
                    .as_ref()
                    .is_none_or(|(column, user)| owned_by(change, column, user))
        };
        Ok(feed.into_stream(keep).map(move |item| {
            let change = item.map_err(cursor_expired)?;
            if let Some(probe) = &probe {
                probe.set(change.cursor);
            }
            Ok(RowChange(change))
        }))
    }
}

/// Who may read `table`'s changes: everything, or only the viewer's own rows
/// (`Some((owner column, user id))`).
fn access(table: &TrackedTable, viewer: Option<&Viewer>) -> Result<Option<(String, String)>> {
    if table.public || viewer.is_some_and(|v| v.role == Role::Admin) {
        return Ok(None);
    }
    match (viewer, &table.owner_column) {
        (None, _) => Err(ErrorCode::Unauthenticated
            .error(format!("sign in to read the changes of `{}`", table.name))),
        (Some(viewer), Some(column)) => Ok(Some((column.clone(), viewer.user_id.clone()))),
        (Some(_), None) => {
            Err(ErrorCode::Forbidden
                .error(format!("the changes of `{}` are for admins", table.name)))
        }
    }
}

/// Whether the change's new or old row belongs to `user`.
pub(crate) fn owned_by(change: &Change, column: &str, user: &str) -> bool {
    [&change.row, &change.old_row]
        .into_iter()
        .flatten()
        .any(|row| match row.get(column) {
            Some(Value::String(owner)) => owner == user,
            Some(Value::Number(owner)) => owner.to_string() == user,
            _ => false,
        })
}
