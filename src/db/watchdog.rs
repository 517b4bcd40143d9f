//! `Watchdog`: notices a listener that stops consuming before Postgres's
//! notification queue fills (a full queue makes every notifying commit
//! fail), and exports the queue's usage.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use deadpool_postgres::Pool;
use tokio::sync::watch;

use super::ListenerStatus;

/// Queue usage (0..1) above which every check logs a warning.
const WARN_USAGE: f64 = 0.05;

pub struct Watchdog {
    pub pool: Pool,
    pub status: Arc<ListenerStatus>,
    pub interval: Duration,
    /// No progress for this long while the log has newer commits = stuck.
    pub stuck_after: Duration,
}

impl Watchdog {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut detector = StuckDetector::default();
        let mut ticker = tokio::time::interval(self.interval);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            let Ok(client) = self.pool.get().await else {
                continue;
            };
            let Ok(row) = client
                .query_one(
                    "SELECT pg_notification_queue_usage(),
                            coalesce((SELECT max(position) FROM tidewire.commits), 0)",
                    &[],
                )
                .await
            else {
                continue;
            };
            let usage: f64 = row.get(0);
            let head: i64 = row.get(1);
            self.status
                .queue_usage
                .store(usage.to_bits(), Ordering::Relaxed);
            if usage > WARN_USAGE {
                tracing::warn!(
                    usage,
                    "Postgres's notification queue is filling: a listening session (this or another \
                     process) is not consuming; commits fail once it is full"
                );
            }
            let published = self.status.position.load(Ordering::Relaxed);
            let live = self.status.live.load(Ordering::SeqCst);
            let stuck = live && detector.observe(Instant::now(), head, published, self.stuck_after);
            let was_stuck = self.status.stuck.swap(stuck, Ordering::SeqCst);
            if stuck && !was_stuck {
                tracing::error!(
                    head,
                    published,
                    "listener is stuck: the log moves on but nothing is published"
                );
            } else if was_stuck && !stuck {
                tracing::info!("listener is consuming again");
            }
        }
    }
}

/// Pure stuck test: behind the log head with no progress for `stuck_after`.
#[derive(Debug, Default)]
pub struct StuckDetector {
    last_published: i64,
    behind_since: Option<Instant>,
}

impl StuckDetector {
    pub fn observe(
        &mut self,
        now: Instant,
        head: i64,
        published: i64,
        stuck_after: Duration,
    ) -> bool {
        let progressed = published != self.last_published;
        self.last_published = published;
        if head <= published || progressed {
            self.behind_since = None;
            return false;
        }
        let since = *self.behind_since.get_or_insert(now);
        now.duration_since(since) >= stuck_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuck_only_when_behind_without_progress_for_the_whole_window() {
        let limit = Duration::from_secs(10);
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut d = StuckDetector::default();
        assert!(!d.observe(at(0), 5, 5, limit), "caught up");
        assert!(!d.observe(at(1), 9, 5, limit), "behind, window starts");
        assert!(!d.observe(at(6), 9, 5, limit), "behind 5 s");
        assert!(
            d.observe(at(11), 9, 5, limit),
            "behind 10 s with no progress"
        );
        assert!(!d.observe(at(12), 12, 8, limit), "progress resets");
        assert!(!d.observe(at(30), 12, 12, limit), "caught up");
    }

    #[test]
    fn steady_progress_under_load_is_not_stuck() {
        let limit = Duration::from_secs(2);
        let t0 = Instant::now();
        let mut d = StuckDetector::default();
        for i in 0..100 {
            // Always behind the head at the moment of the check, but moving.
            assert!(!d.observe(
                t0 + Duration::from_secs(i),
                i as i64 * 10 + 5,
                i as i64 * 10,
                limit
            ));
        }
    }
}
