//! `Ring`: a broadcast buffer bounded in items *and bytes*.
//!
//! Every receiver reads every item in order. An item stays buffered only
//! while some receiver has yet to read it; when the unread items exceed the
//! bounds, the oldest go and the receivers that had not read them get
//! [`Lagged`](RecvError::Lagged) (they then read the log from their own
//! cursors). So memory is bounded by the bytes of what the slowest receiver
//! has not read, never by how large rows happen to be — a paused client on
//! a table of 1 MiB rows pins at most `max_bytes`, not 4,096 rows.
//!
//! Per receive: one short lock, an `Arc` clone and a map update. The
//! receivers' positions are kept as a count per position, so the oldest
//! unread item is known without visiting the receivers.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use tokio::sync::Notify;

/// Why a receive returned no item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvError {
    /// This many items were dropped before this receiver read them.
    Lagged(u64),
    /// The ring was closed and everything in it was read.
    Closed,
}

#[derive(Debug)]
pub struct Ring<T> {
    state: Mutex<State<T>>,
    arrived: Notify,
    max_items: usize,
    max_bytes: usize,
}

#[derive(Debug)]
struct State<T> {
    /// Unread items with their sizes; `items[0]` has number `first`.
    items: VecDeque<(Arc<T>, usize)>,
    first: u64,
    bytes: usize,
    /// Receivers per position (the number of the next item each reads).
    positions: BTreeMap<u64, usize>,
    closed: bool,
}

impl<T> State<T> {
    fn end(&self) -> u64 {
        self.first + self.items.len() as u64
    }

    fn move_receiver(&mut self, from: u64, to: u64) {
        self.leave(from);
        *self.positions.entry(to).or_insert(0) += 1;
        self.trim_read();
    }

    fn leave(&mut self, at: u64) {
        if let Some(count) = self.positions.get_mut(&at) {
            *count -= 1;
            if *count == 0 {
                self.positions.remove(&at);
            }
        }
    }

    /// Drops the items every receiver has read.
    fn trim_read(&mut self) {
        let oldest = self.positions.keys().next().copied().unwrap_or(self.end());
        while self.first < oldest {
            match self.items.pop_front() {
                Some((_, size)) => {
                    self.bytes -= size;
                    self.first += 1;
                }
                None => break,
            }
        }
    }
}

impl<T> Ring<T> {
    /// At most `max_items` unread items of at most `max_bytes` together (an
    /// item larger than that is still delivered, alone).
    pub fn new(max_items: usize, max_bytes: usize) -> Arc<Self> {
        Arc::new(Ring {
            state: Mutex::new(State {
                items: VecDeque::new(),
                first: 0,
                bytes: 0,
                positions: BTreeMap::new(),
                closed: false,
            }),
            arrived: Notify::new(),
            max_items: max_items.max(1),
            max_bytes: max_bytes.max(1),
        })
    }

    /// Hands `item` (`bytes` large) to every receiver; never waits. Returns
    /// false when nobody receives.
    pub fn send(&self, item: Arc<T>, bytes: usize) -> bool {
        let mut state = self.lock();
        if state.positions.is_empty() {
            return false;
        }
        state.items.push_back((item, bytes));
        state.bytes += bytes;
        while state.items.len() > self.max_items
            || (state.bytes > self.max_bytes && state.items.len() > 1)
        {
            if let Some((_, size)) = state.items.pop_front() {
                state.bytes -= size;
                state.first += 1;
            }
        }
        drop(state);
        self.arrived.notify_waiters();
        true
    }

    /// Ends the ring: receivers read what is left, then get `Closed`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.arrived.notify_waiters();
    }

    /// A receiver of the items sent from now on.
    pub fn subscribe(self: &Arc<Self>) -> Receiver<T> {
        let mut state = self.lock();
        let next = state.end();
        *state.positions.entry(next).or_insert(0) += 1;
        Receiver {
            ring: self.clone(),
            next,
        }
    }

    /// Whether the ring was closed (its sender is done).
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Receivers right now.
    pub fn receiver_count(&self) -> usize {
        self.lock().positions.values().sum()
    }

    /// Bytes of the items some receiver has yet to read.
    pub fn buffered_bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One reader of a [`Ring`]; leaves it on drop.
#[derive(Debug)]
pub struct Receiver<T> {
    ring: Arc<Ring<T>>,
    /// Number of the next item to read.
    next: u64,
}

impl<T> Receiver<T> {
    /// The next item, waiting for one if need be.
    pub async fn recv(&mut self) -> Result<Arc<T>, RecvError> {
        loop {
            let arrived = self.ring.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            {
                let mut state = self.ring.lock();
                let at = self.next;
                if at < state.first {
                    let missed = state.first - at;
                    self.next = state.first;
                    state.move_receiver(at, self.next);
                    return Err(RecvError::Lagged(missed));
                }
                if at < state.end() {
                    let item = state.items[(at - state.first) as usize].0.clone();
                    self.next = at + 1;
                    state.move_receiver(at, self.next);
                    return Ok(item);
                }
                if state.closed {
                    return Err(RecvError::Closed);
                }
            }
            arrived.await;
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.ring.lock();
        state.leave(self.next);
        state.trim_read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_receiver_reads_every_item_in_order() {
        let ring = Ring::new(8, 1000);
        let mut a = ring.subscribe();
        let mut b = ring.subscribe();
        for i in 0..3 {
            assert!(ring.send(Arc::new(i), 10));
        }
        for i in 0..3 {
            assert_eq!(*a.recv().await.unwrap(), i);
        }
        assert_eq!(*b.recv().await.unwrap(), 0);
        assert_eq!(ring.buffered_bytes(), 20, "what b has not read stays");
        ring.close();
        assert_eq!(*b.recv().await.unwrap(), 1);
        assert_eq!(*b.recv().await.unwrap(), 2);
        assert_eq!(b.recv().await, Err(RecvError::Closed));
        assert_eq!(ring.buffered_bytes(), 0, "read by all: released");
    }

    #[tokio::test]
    async fn a_stalled_receiver_holds_at_most_max_bytes_then_lags() {
        let ring = Ring::new(1000, 3 << 20);
        let mut stalled = ring.subscribe();
        let mut live = ring.subscribe();
        for i in 0..10 {
            ring.send(Arc::new(i), 1 << 20);
            assert_eq!(*live.recv().await.unwrap(), i);
            assert!(ring.buffered_bytes() <= 3 << 20);
        }
        assert_eq!(stalled.recv().await, Err(RecvError::Lagged(7)));
        assert_eq!(*stalled.recv().await.unwrap(), 7);
    }

    #[tokio::test]
    async fn an_oversized_item_still_goes_through() {
        let ring = Ring::new(10, 100);
        let mut r = ring.subscribe();
        ring.send(Arc::new("big"), 1000);
        assert_eq!(*r.recv().await.unwrap(), "big");
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_and_leaving_releases() {
        let ring = Ring::new(10, 100);
        let mut r = ring.subscribe();
        let sender = ring.clone();
        let task = tokio::spawn(async move { *r.recv().await.unwrap() });
        tokio::task::yield_now().await;
        sender.send(Arc::new(5), 1);
        assert_eq!(task.await.unwrap(), 5);
        assert_eq!(ring.receiver_count(), 0);
        assert!(!ring.send(Arc::new(6), 1), "nobody listens");
        assert_eq!(ring.buffered_bytes(), 0);
    }
}
