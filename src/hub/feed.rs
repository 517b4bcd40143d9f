//! `Feed`: one subscriber's ordered stream of a topic — first the log from
//! its cursor (catch-up), then the hub (live), and back to the log whenever
//! it falls behind the hub's buffer.
//!
//! The seam needs no coordination: the hub subscription is taken before the
//! log is read, so every change is in the log read or in the live buffer (or
//! both), and changes at or before the last delivered cursor are skipped.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use tokio::sync::broadcast::error::RecvError;

use super::Subscription;
use crate::db::{Change, ChangeLog, Cursor};

/// Longest pause between retries of a failed log read.
const MAX_RETRY: Duration = Duration::from_secs(2);

pub struct Feed {
    log: ChangeLog,
    subscription: Subscription,
    /// Cursor of the last change handed out (or the start point).
    last: Cursor,
    /// Whether the next changes come from the log rather than the hub.
    catching_up: bool,
    /// Changes read from the log, not yet handed out; at most one page.
    backlog: VecDeque<Change>,
    page: i64,
}

impl Feed {
    /// Changes of the subscription's topic after `after`, or, without it,
    /// those published after the subscription was taken.
    pub fn new(
        log: ChangeLog,
        subscription: Subscription,
        after: Option<Cursor>,
        page: i64,
    ) -> Self {
        let catching_up = after.is_some();
        Feed {
            last: after.unwrap_or(subscription.start),
            log,
            subscription,
            catching_up,
            backlog: VecDeque::new(),
            page: page.max(1),
        }
    }

    /// The next change in commit order; `None` once the hub shuts down.
    pub async fn next(&mut self) -> Option<Arc<Change>> {
        let mut retry = Duration::from_millis(50);
        loop {
            if let Some(change) = self.backlog.pop_front() {
                self.last = change.cursor;
                return Some(Arc::new(change));
            }
            if self.catching_up {
                match self
                    .log
                    .read_topic_after(self.subscription.topic(), self.last, self.page)
                    .await
                {
                    Ok(page) => {
                        self.catching_up = page.len() as i64 >= self.page;
                        self.backlog.extend(page);
                        retry = Duration::from_millis(50);
                    }
                    Err(error) => {
                        // The database is away; the listener reports it. Keep
                        // the subscriber waiting rather than failing it.
                        tracing::warn!(%error, "catch-up read failed, retrying");
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(MAX_RETRY);
                    }
                }
                continue;
            }
            match self.subscription.recv().await {
                Ok(change) if change.cursor <= self.last => continue,
                Ok(change) => {
                    self.last = change.cursor;
                    return Some(change);
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "subscriber fell behind, reading the log");
                    self.catching_up = true;
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}
