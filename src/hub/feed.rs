//! `Feed`: one subscriber's ordered stream of a topic — first the log from
//! its cursor (catch-up), then the hub (live), and back to the log whenever
//! it falls behind the hub's buffer.
//!
//! The seam needs no coordination: the hub subscription is taken before the
//! log is read, so every change is in the log read or in the live buffer (or
//! both), and changes at or before the last delivered cursor are skipped.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use futures_util::{stream, Stream};

use super::{RingRecvError, Subscription};
use crate::db::{Change, ChangeLog, Cursor, PageLimit};

/// Longest pause between retries of a failed log read.
const MAX_RETRY: Duration = Duration::from_secs(2);

/// Request data: start a stream after this cursor instead of its `after`
/// argument — a shared-execution member that fell behind continues alone
/// from its own last cursor.
#[derive(Debug, Clone, Copy)]
pub struct ResumeAfter(pub Cursor);

/// The feed's cursor is older than the log's retention: changes after it
/// were pruned, so the subscriber must refetch its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the cursor is older than the change log's retention: changes after it are gone; \
     refetch the current state, then subscribe without `after`"
)]
pub struct CursorExpired;

pub struct Feed {
    log: ChangeLog,
    subscription: Subscription,
    /// Cursor of the last change handed out (or the start point).
    last: Cursor,
    /// Whether the next changes come from the log rather than the hub.
    catching_up: bool,
    /// Changes read from the log, not yet handed out; at most one page.
    backlog: VecDeque<Change>,
    limit: PageLimit,
    expired: bool,
    /// Whose turn a log read takes in the hub's [`CatchupQueue`](super::CatchupQueue):
    /// the client's address or user.
    client: Arc<str>,
}

impl Feed {
    /// Changes of the subscription's topic after `after`, or, without it,
    /// those published after the subscription was taken.
    pub fn new(
        log: ChangeLog,
        subscription: Subscription,
        after: Option<Cursor>,
        limit: PageLimit,
    ) -> Self {
        Feed {
            last: after.unwrap_or(subscription.start),
            catching_up: after.is_some(),
            log,
            subscription,
            backlog: VecDeque::new(),
            limit,
            expired: false,
            client: Arc::from("shared"),
        }
    }

    /// Names the client whose turns this feed's log reads take (its address
    /// or user); feeds of shared executions keep the default lane.
    pub fn queued_as(mut self, client: impl Into<Arc<str>>) -> Self {
        self.client = client.into();
        self
    }

    /// The feed as a stream of the changes `keep` accepts; after a
    /// `CursorExpired` item it ends.
    pub fn into_stream(
        self,
        keep: impl Fn(&Change) -> bool + Send + 'static,
    ) -> impl Stream<Item = Result<Arc<Change>, CursorExpired>> + Send {
        stream::unfold((self, keep), |(mut feed, keep)| async move {
            loop {
                match feed.next().await? {
                    Ok(change) if !keep(&change) => continue,
                    item => return Some((item, (feed, keep))),
                }
            }
        })
    }

    /// The next change in commit order. After `CursorExpired` the feed ends.
    pub async fn next(&mut self) -> Option<Result<Arc<Change>, CursorExpired>> {
        let mut retry = Duration::from_millis(50);
        loop {
            if self.expired {
                return None;
            }
            if let Some(change) = self.backlog.pop_front() {
                self.last = change.cursor;
                return Some(Ok(Arc::new(change)));
            }
            if self.catching_up {
                let topic = Some(self.subscription.topic());
                let queue = self.subscription.hub().catchup_queue().clone();
                let turn = queue.turn(&self.client).await;
                let read = self.log.read_after(topic, self.last, self.limit).await;
                drop(turn);
                match read {
                    Ok(page) if page.expired(self.last) => {
                        self.expired = true;
                        return Some(Err(CursorExpired));
                    }
                    Ok(page) => {
                        self.catching_up = page.more;
                        self.backlog.extend(page.changes);
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
                    return Some(Ok(change));
                }
                Err(RingRecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "subscriber fell behind, reading the log");
                    self.subscription.hub().count_catchup();
                    self.catching_up = true;
                }
                Err(RingRecvError::Closed) => {
                    // The hub was reset (its listener fell past retention):
                    // join again and let the log say what is still there.
                    self.subscription.renew();
                    self.catching_up = true;
                }
            }
        }
    }
}
