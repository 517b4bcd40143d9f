//! The live dashboard: active users (signed-in users connected now, on every
//! node), today's revenue, and this node's requests per second.

use std::{sync::Arc, time::Duration};

use async_graphql::{Context, Object, Result, SimpleObject, Subscription};
use deadpool_postgres::Pool;
use futures_util::{stream, Stream};

use crate::{
    auth::Viewer,
    db::ChangeLog,
    error::{database, ErrorCode},
    hub::{Feed, Hub},
    services::MutationLimit,
    services::Traffic,
};

#[derive(SimpleObject, Clone, Debug, PartialEq)]
pub struct Dashboard {
    /// Signed-in users with a WebSocket open on any node.
    pub active_users: i64,
    /// Sum of today's orders (UTC day).
    pub revenue_today: f64,
    /// Requests this node served in the last second.
    pub requests_per_second: f64,
    /// Metrics ingested (`POST /streams/metrics`) over the last minute, by
    /// every user.
    pub metric_rows_last_minute: i64,
}

/// Topic of `tidewire.metric_batches` (sql/V11__client_streams.sql).
const METRICS_TOPIC: &str = "metrics";

/// Shortest `intervalMs`: each subscription re-reads the figures this often.
const MIN_INTERVAL_MS: i32 = 200;

/// Presence older than this belongs to a node that is gone.
const PRESENCE_STALE: &str = "5 seconds";

async fn figures(pool: &Pool) -> Result<(i64, f64, i64)> {
    let client = pool.get().await.map_err(database)?;
    let row = client
        .query_one(
            &format!(
                "SELECT (SELECT count(DISTINCT u) FROM tidewire.presence, unnest(users) u
                          WHERE heartbeat > now() - interval '{PRESENCE_STALE}'),
                        (SELECT coalesce(sum(amount), 0) FROM tidewire.orders
                          WHERE created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'),
                        (SELECT coalesce(sum(rows), 0)::bigint FROM tidewire.metric_batches
                          WHERE received_at > now() - interval '1 minute')"
            ),
            &[],
        )
        .await
        .map_err(database)?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

fn signed_in(ctx: &Context<'_>) -> Result<()> {
    ctx.data_opt::<Viewer>()
        .map(|_| ())
        .ok_or_else(|| ErrorCode::Unauthenticated.error("sign in to see the dashboard"))
}

#[derive(Default)]
pub struct DashboardMutation;

#[Object]
impl DashboardMutation {
    /// Records an order of the caller.
    #[graphql(guard = "MutationLimit")]
    async fn record_order(&self, ctx: &Context<'_>, amount: f64) -> Result<bool> {
        let viewer = ctx
            .data_opt::<Viewer>()
            .ok_or_else(|| ErrorCode::Unauthenticated.error("sign in to order"))?;
        if !amount.is_finite() || amount <= 0.0 || amount > 1e12 {
            return Err(ErrorCode::BadUserInput.error("an amount is a positive number"));
        }
        let client = ctx.data_unchecked::<Pool>().get().await.map_err(database)?;
        client
            .execute(
                "INSERT INTO tidewire.orders (user_id, amount) VALUES ($1, $2)",
                &[&viewer.user_id, &amount],
            )
            .await
            .map_err(database)?;
        Ok(true)
    }
}

#[derive(Default)]
pub struct DashboardSubscription;

#[Subscription]
impl DashboardSubscription {
    /// The figures at once, then whenever one changes, at most once per
    /// `intervalMs` (at least 200).
    async fn dashboard(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 1000)] interval_ms: i32,
    ) -> Result<impl Stream<Item = Result<Dashboard>>> {
        signed_in(ctx)?;
        if interval_ms < MIN_INTERVAL_MS {
            return Err(ErrorCode::BadUserInput
                .error(format!("intervalMs must be at least {MIN_INTERVAL_MS}")));
        }
        let interval = Duration::from_millis(interval_ms as u64);
        let pool = ctx.data_unchecked::<Pool>().clone();
        let traffic = ctx.data_unchecked::<Arc<Traffic>>().clone();
        // Ingested metrics arrive through the change log, one change per
        // request: one wakes the dashboard at once instead of at its next
        // interval.
        let batches = Feed::new(
            ctx.data_unchecked::<ChangeLog>().clone(),
            ctx.data_unchecked::<Arc<Hub>>().subscribe(METRICS_TOPIC),
            None,
            ctx.data_unchecked::<super::Limits>().page,
        );
        // `read`: whether the figures were read before (then wait first,
        // after a failed read too, so an outage does not spin).
        let state = (pool, traffic, batches, None::<Dashboard>, false);
        Ok(stream::unfold(
            state,
            move |(pool, traffic, mut batches, last, read)| async move {
                if read {
                    tokio::time::sleep(interval).await;
                }
                loop {
                    let now = match current(&pool, &traffic).await {
                        Ok(now) => now,
                        Err(error) => {
                            return Some((Err(error), (pool, traffic, batches, last, true)))
                        }
                    };
                    if last.as_ref() != Some(&now) {
                        return Some((Ok(now.clone()), (pool, traffic, batches, Some(now), true)));
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        batch = batches.next() => {
                            if batch.is_none() {
                                // No feed any more: the interval alone.
                                tokio::time::sleep(interval).await;
                            }
                        }
                    }
                }
            },
        ))
    }
}

#[derive(Default)]
pub struct DashboardQuery;

#[Object]
impl DashboardQuery {
    /// The dashboard's figures now.
    async fn dashboard(&self, ctx: &Context<'_>) -> Result<Dashboard> {
        signed_in(ctx)?;
        current(
            ctx.data_unchecked::<Pool>(),
            ctx.data_unchecked::<Arc<Traffic>>(),
        )
        .await
    }
}

async fn current(pool: &Pool, traffic: &Traffic) -> Result<Dashboard> {
    let (active_users, revenue_today, metric_rows_last_minute) = figures(pool).await?;
    Ok(Dashboard {
        active_users,
        revenue_today,
        requests_per_second: traffic.rate(),
        metric_rows_last_minute,
    })
}
