//! Notifications: per-user messages on the change pipeline
//! (`tidewire.notifications`, tracked with `user_id` as its owner column).

use std::{sync::Arc, time::Duration};

use async_graphql::{Context, Object, Result, SimpleObject, Subscription, ID};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use crate::{
    auth::Role,
    db::{Change, Op},
    error::{cursor_expired, database, ErrorCode},
    services::MutationLimit,
    sharing::{ShareQuery, ShareRule, Visibility},
    streams::{batch, pace},
};

const TOPIC: &str = "notifications";
const TABLE: &str = "tidewire.notifications";

#[derive(SimpleObject, Clone, Debug, PartialEq)]
pub struct Notification {
    pub id: ID,
    pub user_id: String,
    pub title: String,
    pub message: String,
    pub read: bool,
    pub created_at: DateTime<Utc>,
    /// Position in the change log (subscriptions only); pass as `after`.
    pub cursor: Option<String>,
}

impl Notification {
    fn from_row(row: &tokio_postgres::Row) -> Notification {
        Notification {
            id: ID(row.get::<_, i64>(0).to_string()),
            user_id: row.get(1),
            title: row.get(2),
            message: row.get(3),
            read: row.get(4),
            created_at: row.get(5),
            cursor: None,
        }
    }

    /// From a captured row; `None` if the row does not have the expected
    /// shape.
    fn from_change(change: &Change) -> Option<Notification> {
        let row = change.row.as_ref()?;
        let text = |key: &str| row.get(key)?.as_str().map(str::to_owned);
        Some(Notification {
            id: ID(row.get("id")?.as_i64()?.to_string()),
            user_id: text("user_id")?,
            title: text("title")?,
            message: text("message")?,
            read: row.get("read")?.as_bool()?,
            created_at: DateTime::parse_from_rfc3339(row.get("created_at")?.as_str()?)
                .ok()?
                .with_timezone(&Utc),
            cursor: Some(change.cursor.to_string()),
        })
    }
}

use super::viewer;

/// The user whose notifications the caller may read: their own, or any
/// user's for an admin.
fn target(ctx: &Context<'_>, user_id: Option<ID>) -> Result<String> {
    let viewer = viewer(ctx, "read notifications")?;
    match user_id {
        Some(id) if *id != viewer.user_id && viewer.role != Role::Admin => {
            Err(ErrorCode::Forbidden.error("only admins read other users' notifications"))
        }
        Some(id) => Ok(id.0),
        None => Ok(viewer.user_id.clone()),
    }
}

#[derive(Default)]
pub struct NotificationsQuery;

#[Object]
impl NotificationsQuery {
    /// The caller's notifications, newest first; `before` (an id) pages on.
    async fn notifications(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 20)] first: i32,
        before: Option<ID>,
        user_id: Option<ID>,
    ) -> Result<Vec<Notification>> {
        let user = target(ctx, user_id)?;
        let before: i64 = match before {
            Some(id) => id
                .parse()
                .map_err(|_| ErrorCode::BadUserInput.error("`before` is a notification id"))?,
            None => i64::MAX,
        };
        let client = ctx.data_unchecked::<Pool>().get().await.map_err(database)?;
        let rows = client
            .query(
                "SELECT id, user_id, title, message, read, created_at FROM tidewire.notifications
                  WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
                &[&user, &before, &i64::from(first.clamp(1, 100))],
            )
            .await
            .map_err(database)?;
        Ok(rows.iter().map(Notification::from_row).collect())
    }
}

#[derive(Default)]
pub struct NotificationsMutation;

#[Object]
impl NotificationsMutation {
    /// Admin (or a trusted service with an admin token): notify a user, who
    /// must have an account here (`NOT_FOUND` otherwise).
    #[graphql(guard = "MutationLimit")]
    async fn send_notification(
        &self,
        ctx: &Context<'_>,
        user_id: ID,
        title: String,
        message: String,
    ) -> Result<Notification> {
        if viewer(ctx, "send notifications")?.role != Role::Admin {
            return Err(ErrorCode::Forbidden.error("sendNotification is for admins"));
        }
        if title.is_empty() || title.len() > 200 || message.len() > 10_000 {
            return Err(
                ErrorCode::BadUserInput.error("title: 1–200 bytes; message: at most 10,000")
            );
        }
        if !crate::services::sessions::is_uuid(&user_id) {
            return Err(ErrorCode::BadUserInput.error("`userId` is not a user id"));
        }
        let client = ctx.data_unchecked::<Pool>().get().await.map_err(database)?;
        // Only to an account of this server: a mistyped id would otherwise
        // notify nobody and report success.
        let row = client
            .query_opt(
                "INSERT INTO tidewire.notifications (user_id, title, message)
                 SELECT id::text, $2, $3 FROM tidewire.users WHERE id = $1::text::uuid
                 RETURNING id, user_id, title, message, read, created_at",
                &[&user_id.0, &title, &message],
            )
            .await
            .map_err(database)?
            .ok_or_else(|| ErrorCode::NotFound.error("no user has this id"))?;
        Ok(Notification::from_row(&row))
    }

    /// Marks one of the caller's notifications read.
    #[graphql(guard = "MutationLimit")]
    async fn mark_notification_read(&self, ctx: &Context<'_>, id: ID) -> Result<Notification> {
        let user = viewer(ctx, "mark notifications read")?.user_id.clone();
        let id: i64 = id
            .parse()
            .map_err(|_| ErrorCode::NotFound.error("no such notification"))?;
        let client = ctx.data_unchecked::<Pool>().get().await.map_err(database)?;
        let row = client
            .query_opt(
                "UPDATE tidewire.notifications SET read = true WHERE id = $1 AND user_id = $2
                 RETURNING id, user_id, title, message, read, created_at",
                &[&id, &user],
            )
            .await
            .map_err(database)?
            .ok_or_else(|| ErrorCode::NotFound.error("no such notification"))?;
        Ok(Notification::from_row(&row))
    }
}

#[derive(Default)]
pub struct NotificationsSubscription;

#[Subscription]
impl NotificationsSubscription {
    /// New notifications of the caller (an admin may name `userId`), from
    /// `after` if given. `throttleMs`: at most one per interval, the newest;
    /// `debounceMs`: only once no new one came for that long.
    async fn notifications(
        &self,
        ctx: &Context<'_>,
        after: Option<String>,
        throttle_ms: Option<i32>,
        debounce_ms: Option<i32>,
        user_id: Option<ID>,
    ) -> Result<impl Stream<Item = Result<Notification>>> {
        Ok(pace(
            stream_for(ctx, after, user_id)?,
            throttle_ms,
            debounce_ms,
        ))
    }

    /// The caller's new notifications in lists: one goes out when it holds
    /// `maxSize`, or `maxWaitMs` after its first item; the rest when the
    /// stream ends.
    async fn notification_batches(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 10)] max_size: i32,
        #[graphql(default = 5000)] max_wait_ms: i32,
    ) -> Result<impl Stream<Item = Vec<Notification>>> {
        // Bounded: a batch is held in memory until it goes out.
        if !(1..=1000).contains(&max_size) || !(0..=600_000).contains(&max_wait_ms) {
            return Err(ErrorCode::BadUserInput.error("maxSize: 1–1000; maxWaitMs: 0–600000"));
        }
        // Undecodable items were logged; batches carry the good ones.
        let items = stream_for(ctx, None, None)?.filter_map(|item| async move { item.ok() });
        Ok(batch(
            items,
            max_size as usize,
            Duration::from_millis(max_wait_ms as u64),
        ))
    }
}

/// `notifications` of one's own, without `after`, is shared by everyone
/// signed in as that user (throttled or debounced alike: the arguments are
/// part of the shape).
pub fn sharing() -> ShareRule {
    Arc::new(|query: ShareQuery| {
        let visibility = match (
            &query.viewer,
            query.argument("after"),
            query.argument("userId"),
        ) {
            (Some(viewer), None, None) => Some(Visibility::Owner(viewer.user_id.clone()).into()),
            _ => None,
        };
        Box::pin(std::future::ready(visibility))
    })
}

/// The target user's new notifications, decoded; an item that cannot be
/// decoded is an error on that item only.
fn stream_for(
    ctx: &Context<'_>,
    after: Option<String>,
    user_id: Option<ID>,
) -> Result<impl Stream<Item = Result<Notification>> + Send + 'static> {
    let user = target(ctx, user_id)?;
    let after = super::start_after(ctx, after)?;
    let feed = super::feed(ctx, super::hub(ctx).subscribe(TOPIC), after);
    let keep = move |change: &Change| {
        change.table == TABLE
            && change.op == Op::Insert
            && change
                .row
                .as_ref()
                .and_then(|r| r.get("user_id"))
                .and_then(Value::as_str)
                == Some(user.as_str())
    };
    Ok(feed.into_stream(keep).map(|item| {
        let change = item.map_err(cursor_expired)?;
        Notification::from_change(&change).ok_or_else(|| {
            tracing::warn!(cursor = %change.cursor, "a notification row could not be decoded");
            ErrorCode::Internal.error("this notification could not be read")
        })
    }))
}
