//! `countdown(seconds)`: a server-generated stream, no database.

use std::sync::Arc;

use async_graphql::{Context, Result, Subscription};
use futures_util::{stream, Stream};
use tokio::time::{interval_at, Duration, Instant, MissedTickBehavior};

use super::Limits;
use crate::{error::ErrorCode, services::Countdowns};

#[derive(Default)]
pub struct CountdownSubscription;

#[Subscription]
impl CountdownSubscription {
    /// Emits `seconds`, `seconds - 1`, … `0`, one per second, then completes.
    async fn countdown(&self, ctx: &Context<'_>, seconds: i32) -> Result<impl Stream<Item = i32>> {
        let max = ctx.data_unchecked::<Limits>().max_countdown;
        if !(0..=max).contains(&seconds) {
            return Err(
                ErrorCode::BadUserInput.error(format!("seconds must be between 0 and {max}"))
            );
        }
        let running = ctx.data_unchecked::<Arc<Countdowns>>().start();
        let mut ticks = interval_at(Instant::now(), Duration::from_secs(1));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(stream::unfold(
            (seconds, ticks, running),
            |(left, mut ticks, running)| async move {
                if left < 0 {
                    return None;
                }
                ticks.tick().await;
                Some((left, (left - 1, ticks, running)))
            },
        ))
    }
}
