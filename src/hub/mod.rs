//! The in-memory fan-out hub: topic → subscribers.
//!
//! Each topic is a bounded `broadcast` channel of shared `Arc<Change>`s, so a
//! publish never blocks on a subscriber and memory per topic is capped. A
//! subscriber that falls behind the buffer gets `Lagged` and its [`Feed`]
//! reads the missed changes back from the log. A topic is removed when its
//! last subscriber leaves.

mod catchup;
mod feed;
mod filter;
mod ring;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
};

pub use catchup::{CatchupLane, CatchupQueue, Turn};
pub use feed::{CursorExpired, Feed, ResumeAfter};
pub use filter::{FilterError, RowFilter};
pub use ring::{Receiver as RingReceiver, RecvError as RingRecvError, Ring};

use crate::db::{Change, Cursor};

/// Topic registry shared by the listener (publisher) and every subscription.
#[derive(Debug)]
pub struct Hub {
    state: Mutex<HubState>,
    /// Bounds of each topic's buffer: changes, and their bytes.
    capacity: usize,
    capacity_bytes: usize,
    /// Times a feed fell behind and switched to the log (a metric).
    catchups: AtomicU64,
    /// Turns for feeds' log reads.
    catchup_queue: Arc<CatchupQueue>,
}

#[derive(Debug, Default)]
struct HubState {
    topics: HashMap<Arc<str>, Arc<Ring<Change>>>,
    /// Cursor of the newest published change. A new subscription starts
    /// after it, under the same lock, so it neither misses nor repeats one.
    published: Cursor,
}

impl Hub {
    /// Each topic buffers at most `capacity` changes of at most
    /// `capacity_bytes` together for its slowest subscriber;
    /// `catchup_slots`: log reads catching-up feeds may run at once.
    pub fn new(
        capacity: usize,
        capacity_bytes: usize,
        published: Cursor,
        catchup_slots: usize,
    ) -> Arc<Self> {
        Arc::new(Hub {
            catchup_queue: CatchupQueue::new(catchup_slots),
            state: Mutex::new(HubState {
                published,
                ..HubState::default()
            }),
            capacity: capacity.max(1),
            capacity_bytes: capacity_bytes.max(1),
            catchups: AtomicU64::new(0),
        })
    }

    /// Hands a change to every current subscriber of its topic.
    pub fn publish(&self, change: Arc<Change>) {
        let mut state = self.lock();
        state.published = state.published.max(change.cursor);
        if let Some(ring) = state.topics.get(&change.topic) {
            let bytes = change.approximate_bytes();
            if !ring.send(change.clone(), bytes) {
                // No receiver left (a subscription dropped without cleanup
                // racing us): forget the topic.
                state.topics.remove(&change.topic);
            }
        }
    }

    /// Registers a subscriber of `topic`; it receives every change published
    /// after the returned subscription's `start` cursor.
    pub fn subscribe(self: &Arc<Self>, topic: &str) -> Subscription {
        let mut state = self.lock();
        let start = state.published;
        let receiver = match state.topics.get(topic) {
            Some(ring) => ring.subscribe(),
            None => {
                let ring = Ring::new(self.capacity, self.capacity_bytes);
                let receiver = ring.subscribe();
                state.topics.insert(Arc::from(topic), ring);
                receiver
            }
        };
        Subscription {
            hub: self.clone(),
            topic: Arc::from(topic),
            receiver: Some(receiver),
            start,
        }
    }

    /// Drops every topic: each subscriber sees its channel close, joins
    /// again and reads the log from its own cursor. Used when the listener
    /// finds the log pruned past what it had published.
    pub fn reset(&self, published: Cursor) {
        let mut state = self.lock();
        for ring in state.topics.values() {
            ring.close();
        }
        state.topics.clear();
        state.published = published;
    }

    /// Newest published cursor.
    pub fn published(&self) -> Cursor {
        self.lock().published
    }

    /// Where catching-up feeds wait for their turn to read the log.
    pub fn catchup_queue(&self) -> &Arc<CatchupQueue> {
        &self.catchup_queue
    }

    pub fn catchups(&self) -> u64 {
        self.catchups.load(Ordering::Relaxed)
    }

    pub(crate) fn count_catchup(&self) {
        self.catchups.fetch_add(1, Ordering::Relaxed);
    }

    /// Number of topics with at least one subscriber.
    pub fn topic_count(&self) -> usize {
        self.lock().topics.len()
    }

    /// Number of live subscriptions over all topics.
    pub fn subscriber_count(&self) -> usize {
        self.lock()
            .topics
            .values()
            .map(|ring| ring.receiver_count())
            .sum()
    }

    /// Bytes of changes buffered for subscribers that have not read them.
    pub fn buffered_bytes(&self) -> usize {
        self.lock()
            .topics
            .values()
            .map(|ring| ring.buffered_bytes())
            .sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        // The state stays consistent even if a holder panicked mid-way.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl crate::db::ChangeSink for Hub {
    fn publish(&self, change: Arc<Change>) {
        Hub::publish(self, change);
    }

    fn reset(&self, floor: Cursor) {
        Hub::reset(self, floor);
    }

    fn published(&self) -> Cursor {
        Hub::published(self)
    }
}

/// One subscriber's registration; unregisters on drop.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<Hub>,
    topic: Arc<str>,
    receiver: Option<RingReceiver<Change>>,
    /// Changes at or before this cursor were published before we joined.
    pub start: Cursor,
}

impl Subscription {
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Replaces this registration with a fresh one on the same topic.
    pub fn renew(&mut self) {
        let fresh = self.hub.subscribe(&self.topic);
        drop(std::mem::replace(self, fresh));
    }

    pub async fn recv(&mut self) -> Result<Arc<Change>, RingRecvError> {
        match self.receiver.as_mut() {
            Some(receiver) => receiver.recv().await,
            None => Err(RingRecvError::Closed),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.receiver.take());
        let mut state = self.hub.lock();
        if state
            .topics
            .get(&self.topic)
            .is_some_and(|ring| ring.receiver_count() == 0)
        {
            state.topics.remove(&self.topic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Op;

    fn change(topic: &str, position: i64) -> Arc<Change> {
        Arc::new(Change {
            cursor: Cursor::new(position, position),
            topic: Arc::from(topic),
            table: topic.to_owned(),
            op: Op::Insert,
            row: None,
            old_row: None,
            committed_at: chrono::Utc::now(),
        })
    }

    #[tokio::test]
    async fn delivers_only_the_subscribed_topic() {
        let hub = Hub::new(8, usize::MAX, Cursor::default(), 1);
        let mut a = hub.subscribe("a");
        hub.publish(change("b", 1));
        hub.publish(change("a", 2));
        assert_eq!(a.recv().await.unwrap().cursor.position, 2);
    }

    #[tokio::test]
    async fn removes_a_topic_when_its_last_subscriber_leaves() {
        let hub = Hub::new(8, usize::MAX, Cursor::default(), 1);
        let a1 = hub.subscribe("a");
        let a2 = hub.subscribe("a");
        assert_eq!((hub.topic_count(), hub.subscriber_count()), (1, 2));
        drop(a1);
        assert_eq!((hub.topic_count(), hub.subscriber_count()), (1, 1));
        drop(a2);
        assert_eq!((hub.topic_count(), hub.subscriber_count()), (0, 0));
    }

    #[tokio::test]
    async fn a_new_subscription_starts_after_the_last_published_change() {
        let hub = Hub::new(8, usize::MAX, Cursor::default(), 1);
        hub.publish(change("a", 5));
        let sub = hub.subscribe("a");
        assert_eq!(sub.start, Cursor::new(5, 5));
    }

    #[tokio::test]
    async fn a_full_buffer_lags_the_subscriber_instead_of_blocking() {
        let hub = Hub::new(2, usize::MAX, Cursor::default(), 1);
        let mut sub = hub.subscribe("a");
        for position in 1..=5 {
            hub.publish(change("a", position));
        }
        assert!(matches!(sub.recv().await, Err(RingRecvError::Lagged(3))));
        assert_eq!(sub.recv().await.unwrap().cursor.position, 4);
    }
}
