//! `countdown(seconds)`: a server-generated stream, no database.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use async_graphql::{Context, Result, Subscription};
use futures_util::{stream, Stream};
use tokio::time::{interval_at, Duration, Instant, MissedTickBehavior};

use crate::{error::ErrorCode, Limits};

/// Countdowns running now (a metric: a cancelled one stops its timer).
#[derive(Debug, Default)]
pub struct Countdowns(AtomicUsize);

impl Countdowns {
    pub fn running(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counts one running countdown; dropped with its stream.
struct Running(Arc<Countdowns>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

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
        let counter = ctx.data_unchecked::<Arc<Countdowns>>().clone();
        counter.0.fetch_add(1, Ordering::Relaxed);
        let running = Running(counter);
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
