//! Stock prices: `publishStockPrice` records history
//! (`tidewire.stock_prices`); `stock(symbol)` streams the current price first,
//! then every update, optionally throttled.

use std::sync::Arc;

use async_graphql::{Context, Object, Result, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use futures_util::{stream, Stream, StreamExt};

use crate::{
    auth::{Role, Viewer},
    db::{Change, Cursor, Op},
    error::{cursor_expired, database, ErrorCode},
    hub::Hub,
    services::MutationLimit,
    streams::pace,
};

const TOPIC: &str = "stocks";
const TABLE: &str = "tidewire.stock_prices";

#[derive(SimpleObject, Clone, Debug, PartialEq)]
pub struct StockPrice {
    pub symbol: String,
    pub value: f64,
    /// Difference from the price recorded before this one; null for the first.
    pub change: Option<f64>,
    pub recorded_at: DateTime<Utc>,
    /// Position in the change log, for resuming (`null` for the snapshot of
    /// a symbol with no price yet).
    pub cursor: Option<String>,
}

fn check_symbol(symbol: &str) -> Result<String> {
    let symbol = symbol.trim().to_uppercase();
    if (1..=12).contains(&symbol.len())
        && symbol
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.')
    {
        Ok(symbol)
    } else {
        Err(ErrorCode::BadUserInput.error("a symbol is 1–12 letters, digits or dots"))
    }
}

/// The latest two prices of `symbol` and the log position, in one snapshot.
const SNAPSHOT: &str = "
    SELECT (SELECT coalesce(max(position), 0) FROM tidewire.commits),
           p.value, p.recorded_at, p.previous
      FROM (SELECT 1) one
      LEFT JOIN LATERAL (
        SELECT value, recorded_at, lead(value) OVER (ORDER BY id DESC) AS previous
          FROM tidewire.stock_prices WHERE symbol = $1 ORDER BY id DESC LIMIT 2
      ) p ON true
     LIMIT 1";

#[derive(Default)]
pub struct StocksQuery;

#[Object]
impl StocksQuery {
    /// The current price of `symbol`, if it has one.
    async fn stock(&self, ctx: &Context<'_>, symbol: String) -> Result<Option<StockPrice>> {
        let symbol = check_symbol(&symbol)?;
        let client = ctx.data_unchecked::<Pool>().get().await.map_err(database)?;
        let row = client
            .query_one(SNAPSHOT, &[&symbol])
            .await
            .map_err(database)?;
        Ok(row.get::<_, Option<f64>>(1).map(|value| StockPrice {
            symbol,
            value,
            change: row
                .get::<_, Option<f64>>(3)
                .map(|previous| value - previous),
            recorded_at: row.get(2),
            cursor: None,
        }))
    }
}

#[derive(Default)]
pub struct StocksMutation;

#[Object]
impl StocksMutation {
    /// Admin (or a trusted service with an admin token): record a price.
    #[graphql(guard = "MutationLimit")]
    async fn publish_stock_price(
        &self,
        ctx: &Context<'_>,
        symbol: String,
        value: f64,
    ) -> Result<bool> {
        match ctx.data_opt::<Viewer>() {
            Some(viewer) if viewer.role == Role::Admin => {}
            Some(_) => return Err(ErrorCode::Forbidden.error("publishStockPrice is for admins")),
            None => return Err(ErrorCode::Unauthenticated.error("sign in to publish prices")),
        }
        let symbol = check_symbol(&symbol)?;
        if !value.is_finite() || value < 0.0 {
            return Err(ErrorCode::BadUserInput.error("a price is a finite number ≥ 0"));
        }
        let client = ctx.data_unchecked::<Pool>().get().await.map_err(database)?;
        client
            .execute(
                "INSERT INTO tidewire.stock_prices (symbol, value) VALUES ($1, $2)",
                &[&symbol, &value],
            )
            .await
            .map_err(database)?;
        Ok(true)
    }
}

#[derive(Default)]
pub struct StocksSubscription;

#[Subscription]
impl StocksSubscription {
    /// The current price at once, then every new one. `throttleMs`: at most
    /// one per interval, always the newest at the end of it; `debounceMs`:
    /// only once prices stopped moving for that long.
    async fn stock(
        &self,
        ctx: &Context<'_>,
        symbol: String,
        throttle_ms: Option<i32>,
        debounce_ms: Option<i32>,
    ) -> Result<impl Stream<Item = Result<StockPrice>>> {
        let symbol = check_symbol(&symbol)?;
        let hub = ctx.data_unchecked::<Arc<Hub>>();
        // Join the hub before the snapshot: nothing after it is missed.
        let subscription = hub.subscribe(TOPIC);
        let client = ctx.data_unchecked::<Pool>().get().await.map_err(database)?;
        let row = client
            .query_one(SNAPSHOT, &[&symbol])
            .await
            .map_err(database)?;
        drop(client);
        let position: i64 = row.get(0);
        let current: Option<f64> = row.get(1);
        let first = current.map(|value| StockPrice {
            symbol: symbol.clone(),
            value,
            change: row
                .get::<_, Option<f64>>(3)
                .map(|previous| value - previous),
            recorded_at: row.get(2),
            cursor: None,
        });
        // Everything committed after the snapshot's position.
        let after = Cursor::new(position, i64::MAX);
        let feed = super::feed(ctx, subscription, Some(after));
        let wanted = symbol.clone();
        let keep = move |change: &Change| {
            change.table == TABLE
                && change.op == Op::Insert
                && change
                    .row
                    .as_ref()
                    .and_then(|r| r.get("symbol"))
                    .and_then(|s| s.as_str())
                    == Some(wanted.as_str())
        };
        let mut previous = current;
        let updates = feed.into_stream(keep).map(move |item| {
            let change = item.map_err(cursor_expired)?;
            let price = decode(&change, previous).ok_or_else(|| {
                tracing::warn!(cursor = %change.cursor, "a stock price row could not be decoded");
                ErrorCode::Internal.error("this price could not be read")
            })?;
            previous = Some(price.value);
            Ok(price)
        });
        let items = stream::iter(first.map(Ok)).chain(updates);
        Ok(pace(items, throttle_ms, debounce_ms))
    }
}

fn decode(change: &Change, previous: Option<f64>) -> Option<StockPrice> {
    let row = change.row.as_ref()?;
    let value = row.get("value")?.as_f64()?;
    Some(StockPrice {
        symbol: row.get("symbol")?.as_str()?.to_owned(),
        value,
        change: previous.map(|p| value - p),
        recorded_at: DateTime::parse_from_rfc3339(row.get("recorded_at")?.as_str()?)
            .ok()?
            .with_timezone(&Utc),
        cursor: Some(change.cursor.to_string()),
    })
}
