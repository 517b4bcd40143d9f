//! The pruning job: keeps the change log within its retention.

use std::time::Duration;

use tokio::sync::watch;

use super::ChangeLog;

pub struct Pruner {
    pub log: ChangeLog,
    /// Commits older than this go.
    pub keep: Duration,
    /// Commits beyond the newest this many go.
    pub keep_commits: i64,
    pub interval: Duration,
}

impl Pruner {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(self.interval);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            match self.log.prune(self.keep, self.keep_commits).await {
                Ok(0) => {}
                Ok(commits) => tracing::info!(commits, "pruned the change log"),
                Err(error) => tracing::warn!(%error, "pruning the change log failed"),
            }
        }
    }
}
