//! `CatchupQueue`: admission of change-log reads by subscribers that are
//! catching up (resuming with `after`, or fallen behind the hub).
//!
//! Catch-up reads compete for the log pool; unchecked, five hundred
//! subscriptions resuming from an old cursor take every connection for
//! minutes. Here each read waits for a turn: at most `slots` reads run at
//! once over the process, and each client (an address or a user) has at
//! most one read running or queued for a slot at a time. The semaphores are
//! first-come first-served, so a client with many subscriptions gets one
//! place in the line, not many, and everyone else's reads keep moving. Live
//! delivery never waits here: the listener reads on its own connection.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Request data: the client whose turns a subscription's log reads take,
/// when the request's own viewer is not that client (a shared member
/// catching up runs as its class).
#[derive(Debug, Clone)]
pub struct CatchupLane(pub String);

impl CatchupLane {
    /// A signed-in client's lane is its user; else its address.
    pub fn of(user: Option<&str>, address: Option<std::net::IpAddr>) -> CatchupLane {
        CatchupLane(match (user, address) {
            (Some(user), _) => format!("user:{user}"),
            (None, Some(address)) => format!("address:{address}"),
            (None, None) => "shared".to_owned(),
        })
    }
}

#[derive(Debug)]
pub struct CatchupQueue {
    /// Reads allowed at once over the process.
    slots: Arc<Semaphore>,
    /// Per client: its one-at-a-time lane and how many reads want it.
    clients: Mutex<Lanes>,
}

type Lanes = HashMap<Arc<str>, (Arc<Semaphore>, usize)>;

/// The right to run one catch-up read; gives its place back on drop.
#[derive(Debug)]
pub struct Turn {
    _slot: OwnedSemaphorePermit,
    _lane: OwnedSemaphorePermit,
    _waiting: Waiting,
}

/// Counts a read that wants `client`'s lane, so that an unused lane is
/// forgotten (even when the waiting read is cancelled).
#[derive(Debug)]
struct Waiting {
    queue: Arc<CatchupQueue>,
    client: Arc<str>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut clients = self.queue.lock();
        if let Some((_, wanted)) = clients.get_mut(&self.client) {
            *wanted -= 1;
            if *wanted == 0 {
                clients.remove(&self.client);
            }
        }
    }
}

impl CatchupQueue {
    pub fn new(slots: usize) -> Arc<Self> {
        Arc::new(CatchupQueue {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// Waits for `client`'s turn to read the log.
    pub async fn turn(self: &Arc<Self>, client: &str) -> Turn {
        let (lane, waiting) = {
            let mut clients = self.lock();
            let client: Arc<str> = Arc::from(client);
            let (lane, wanted) = clients
                .entry(client.clone())
                .or_insert_with(|| (Arc::new(Semaphore::new(1)), 0));
            *wanted += 1;
            let waiting = Waiting {
                queue: self.clone(),
                client,
            };
            (lane.clone(), waiting)
        };
        // Neither semaphore is ever closed, so acquiring cannot fail.
        let lane = acquire(lane).await;
        let slot = acquire(self.slots.clone()).await;
        Turn {
            _slot: slot,
            _lane: lane,
            _waiting: waiting,
        }
    }

    /// Clients with a read running or waiting (a metric).
    pub fn clients(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lanes> {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn acquire(semaphore: Arc<Semaphore>) -> OwnedSemaphorePermit {
    loop {
        if let Ok(permit) = semaphore.clone().acquire_owned().await {
            return permit;
        }
        // Closed: never happens; wait rather than spin or panic.
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_read_per_client_and_clients_take_turns() {
        let queue = CatchupQueue::new(2);
        let a1 = queue.turn("a").await;
        // a's second read waits for its first, even with a free slot.
        let mut a2 = Box::pin(queue.turn("a"));
        assert!(tokio::time::timeout(Duration::from_millis(20), &mut a2)
            .await
            .is_err());
        // b is not held up by a's backlog.
        let b1 = tokio::time::timeout(Duration::from_millis(20), queue.turn("b"))
            .await
            .expect("b gets the free slot");
        // No slot left: c waits, then gets one when b is done.
        let mut c1 = Box::pin(queue.turn("c"));
        assert!(tokio::time::timeout(Duration::from_millis(20), &mut c1)
            .await
            .is_err());
        drop(b1);
        let _c1 = tokio::time::timeout(Duration::from_millis(20), c1)
            .await
            .expect("c next");
        drop(a1);
        drop(a2);
        assert_eq!(queue.clients(), 1, "a's lane is forgotten once unused");
    }
}
