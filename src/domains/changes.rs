//! `changes(table, where, after)`: row changes of any tracked table.

use std::sync::Arc;

use async_graphql::{Context, Json, Object, Result, Subscription};
use chrono::{DateTime, Utc};
use futures_util::{stream, Stream};
use serde_json::Value;

use crate::{
    db::{Change, ChangeLog, Cursor, Op},
    error::{internal, ErrorCode},
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
        let filter = filter
            .map(|Json(value)| RowFilter::parse(&value, &tracked.name, &tracked.columns))
            .transpose()
            .map_err(|e| ErrorCode::BadUserInput.error(e.to_string()))?;

        let feed = Feed::new(log, hub.subscribe(&tracked.topic), after, limits.page);
        let state = ChangeStream {
            feed,
            filter,
            table: tracked.name,
            probe,
        };
        Ok(stream::unfold(state, ChangeStream::next))
    }
}

/// State of one `changes` stream.
struct ChangeStream {
    feed: Feed,
    filter: Option<RowFilter>,
    /// A topic may carry several tables (track(..., topic)): keep this one.
    table: String,
    probe: Option<CursorProbe>,
}

impl ChangeStream {
    async fn next(mut self) -> Option<(Result<RowChange>, Self)> {
        loop {
            let change = match self.feed.next().await? {
                Ok(change) => change,
                Err(expired) => {
                    let error = ErrorCode::CursorExpired.error(expired.to_string());
                    return Some((Err(error), self));
                }
            };
            if change.table == self.table && self.filter.as_ref().is_none_or(|f| f.matches(&change))
            {
                if let Some(probe) = &self.probe {
                    probe.set(change.cursor);
                }
                return Some((Ok(RowChange(change)), self));
            }
        }
    }
}
