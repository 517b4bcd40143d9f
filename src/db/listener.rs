//! `Listener`: the one connection per process that LISTENs for commits and
//! moves new changes from the log into the hub, in commit order.
//!
//! Notifications only wake the listener; what it publishes always comes from
//! the log, read after the last published cursor. So a notification that is
//! lost (while disconnected) costs nothing: after every (re)connect the
//! listener first reads the gap back from the log.

use std::{
    future::poll_fn,
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::{watch, Notify};
use tokio_postgres::{AsyncMessage, NoTls};

use super::{
    change_log::OwnLogReader,
    pool::{parse, LOG_READ_OPTIONS},
    Change, Cursor, DbError, PageLimit,
};

/// Channel the commit trigger notifies (see sql/V1__change_log.sql).
pub(super) const CHANNEL: &str = "tidewire";
/// Channel of session revocations (`signOut`, `revokeSessions`); payload
/// `{"sid": …}` or `{"user": …}`.
pub const REVOKED_CHANNEL: &str = "tidewire_revoked";
/// Channel of the ephemeral bus between nodes (presence, typing); see
/// `services::bus`.
pub const BUS_CHANNEL: &str = "tidewire_bus";

/// Listener state shared with health checks and metrics.
#[derive(Debug, Default)]
pub struct ListenerStatus {
    /// True while the LISTEN connection is up and caught up with the log.
    pub live: AtomicBool,
    pub reconnects: AtomicU64,
    /// Changes published into the hub.
    pub published: AtomicU64,
    /// Commit position of the newest published change.
    pub position: AtomicI64,
    /// Set by the watchdog when the listener stops consuming (see
    /// `watchdog`).
    pub stuck: AtomicBool,
    /// `pg_notification_queue_usage()` as f64 bits, read by the watchdog.
    pub queue_usage: AtomicU64,
}

impl ListenerStatus {
    /// Live, caught up, and not stuck.
    pub fn healthy(&self) -> bool {
        self.live.load(Ordering::SeqCst) && !self.stuck.load(Ordering::SeqCst)
    }

    pub fn queue_usage(&self) -> f64 {
        f64::from_bits(self.queue_usage.load(Ordering::Relaxed))
    }
}

/// Where the listener publishes changes: the hub, which the listener does
/// not know.
pub trait ChangeSink: Send + Sync {
    /// A committed change, in commit order.
    fn publish(&self, change: Arc<Change>);
    /// The log was pruned past what was published: start again at `floor`.
    fn reset(&self, floor: Cursor);
    /// The newest change published so far.
    fn published(&self) -> Cursor;
}

/// Where the listener hands the notices of a side channel (revocations on
/// `tidewire_revoked`, the bus on `tidewire_bus`): messages that are not
/// in the log, so one sent while the listener was away is gone.
pub trait NoticeSink: Send + Sync {
    /// A notice's payload, as its sender wrote it.
    fn heard(&self, payload: &str);
    /// The listener (re)connected: notices sent meanwhile were not heard.
    fn may_have_missed(&self);
}

pub struct Listener {
    pub url: String,
    pub sink: Arc<dyn ChangeSink>,
    pub status: Arc<ListenerStatus>,
    pub limit: PageLimit,
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// Side channels to LISTEN on too, and where their notices go.
    pub notices: Vec<(&'static str, Arc<dyn NoticeSink>)>,
}

impl Listener {
    /// Runs until `shutdown` turns true, reconnecting as often as needed.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut last = self.sink.published();
        let mut delay = self.backoff;
        loop {
            if *shutdown.borrow() {
                return;
            }
            match self.session(&mut last, &mut shutdown).await {
                Ok(()) => return,
                Err(error) => {
                    let was_live = self.status.live.swap(false, Ordering::SeqCst);
                    if was_live {
                        delay = self.backoff;
                        self.status.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!(%error, retry_in = ?delay, "listener lost the database, reconnecting");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
            delay = (delay * 2).min(self.backoff_max);
        }
    }

    /// One connection's life: LISTEN, catch up, then publish on every wake.
    /// Returns `Ok` on shutdown and `Err` when the connection is lost.
    async fn session(
        &self,
        last: &mut Cursor,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), DbError> {
        let mut config = parse(&self.url)?;
        // The listener reads the log on this same connection, so catch-up
        // reads filling the log pool never delay live delivery.
        config
            .application_name("tidewire-listener")
            .options(LOG_READ_OPTIONS);
        let (client, mut connection) = config.connect(NoTls).await?;

        // Drive the connection with poll_message: a plainly spawned
        // connection future would drop the notifications.
        let wake = Arc::new(Notify::new());
        let waker = wake.clone();
        let notices = self.notices.clone();
        let mut driver = tokio::spawn(async move {
            loop {
                match poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) if n.channel() == CHANNEL => {
                        waker.notify_one()
                    }
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if let Some((_, sink)) = notices.iter().find(|(c, _)| *c == n.channel()) {
                            sink.heard(n.payload());
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return DbError::from(error),
                    None => return DbError::Config("listener connection closed".into()),
                }
            }
        });
        let result = async {
            let mut listen = format!("LISTEN {CHANNEL};");
            for (channel, _) in &self.notices {
                listen.push_str(&format!(" LISTEN {channel};"));
            }
            client.batch_execute(&listen).await?;
            // Notices sent while we were away were not heard.
            for (_, sink) in &self.notices {
                sink.may_have_missed();
            }
            let reader = OwnLogReader::prepare(&client).await?;
            loop {
                self.drain(&reader, last).await?;
                self.status.live.store(true, Ordering::SeqCst);
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = shutdown.changed() => return Ok(()),
                    lost = &mut driver => {
                        return Err(lost.unwrap_or_else(|e| DbError::Config(e.to_string())));
                    }
                }
            }
        }
        .await;
        driver.abort();
        result
    }

    /// Publishes everything in the log after `last`.
    async fn drain(&self, reader: &OwnLogReader<'_>, last: &mut Cursor) -> Result<(), DbError> {
        loop {
            let page = reader.read_after(*last, self.limit).await?;
            if page.expired(*last) {
                // Down for longer than retention: what it missed is gone.
                // Every subscriber re-reads from its own cursor and learns
                // whether it can go on.
                tracing::error!(
                    last = %last, floor = %page.floor,
                    "the listener fell behind the log's retention; subscribers resume from their cursors"
                );
                *last = page.floor;
                self.sink.reset(page.floor);
                continue;
            }
            for change in page.changes {
                *last = change.cursor;
                self.sink.publish(Arc::new(change));
                self.status.published.fetch_add(1, Ordering::Relaxed);
            }
            self.status.position.store(last.position, Ordering::Relaxed);
            if !page.more {
                return Ok(());
            }
        }
    }
}
