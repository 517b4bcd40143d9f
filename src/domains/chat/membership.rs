//! Memberships: who may stream a room, and the end of a member's streams
//! the moment they leave or are removed — on whichever node that happened.
//!
//! Every open stream of a member registers a watch on its (room, user)
//! *before* its membership is checked. While any watch exists, one task
//! per node follows the deletions of `tidewire.room_members` through the
//! change log (topic `chat_members`; its hub subscription is taken as the
//! first watch registers) and wakes the watches of each deleted pair; a
//! woken watch checks the membership again (the user may have rejoined
//! since) and, if it is gone, ends the stream with `FORBIDDEN`. A check
//! made after registering can miss nothing: a deletion committed after it
//! reaches the follower after the watch exists.

use std::{
    collections::HashMap,
    pin::pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use deadpool_postgres::Pool;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::{sync::watch, task::AbortHandle};

use crate::{
    db::{Change, ChangeLog, DbError, Op, PageLimit},
    error::{database, ErrorCode},
    hub::{Feed, Hub},
    services::rooms::{Presence, RoomId, Rooms},
    sharing::Lease,
};

pub(super) const TOPIC: &str = "chat_members";
const TABLE: &str = "tidewire.room_members";

type Key = (RoomId, Arc<str>);

/// The watched (room, user) pairs of this node, and the follower of
/// membership deletions that runs while there are any.
pub struct Memberships {
    hub: Arc<Hub>,
    log: ChangeLog,
    page: PageLimit,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    watches: HashMap<Key, watch::Sender<u64>>,
    follower: Option<AbortHandle>,
}

/// One stream's watch on a membership; unregisters on drop.
pub struct MembershipWatch {
    registry: Arc<Memberships>,
    key: Key,
    /// Taken and dropped under the registry's lock on drop.
    receiver: Option<watch::Receiver<u64>>,
}

impl Drop for MembershipWatch {
    fn drop(&mut self) {
        let mut state = self.registry.lock();
        drop(self.receiver.take());
        // Nobody watches the pair any more.
        if state
            .watches
            .get(&self.key)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            state.watches.remove(&self.key);
        }
        if state.watches.is_empty() {
            if let Some(follower) = state.follower.take() {
                follower.abort();
            }
        }
    }
}

impl Memberships {
    pub fn new(hub: Arc<Hub>, log: ChangeLog, page: PageLimit) -> Arc<Memberships> {
        Arc::new(Memberships {
            hub,
            log,
            page,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn watch(self: &Arc<Self>, room: RoomId, user: &str) -> MembershipWatch {
        let key: Key = (room, Arc::from(user));
        let mut state = self.lock();
        if state.follower.is_none() {
            // Subscribed here, before the caller checks the membership.
            let feed = self.feed();
            let task = tokio::spawn(self.clone().follow(feed));
            state.follower = Some(task.abort_handle());
        }
        let receiver = state
            .watches
            .entry(key.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        drop(state);
        MembershipWatch {
            registry: self.clone(),
            key,
            receiver: Some(receiver),
        }
    }

    fn feed(&self) -> Feed {
        Feed::new(self.log.clone(), self.hub.subscribe(TOPIC), None, self.page)
            .queued_as("tidewire:memberships")
    }

    /// The membership of `user` in `room` was deleted.
    fn deleted(&self, room: RoomId, user: &str) {
        if let Some(sender) = self.lock().watches.get(&(room, Arc::from(user))) {
            sender.send_modify(|generation| *generation += 1);
        }
    }

    /// Deletions may have been missed: every watch checks again.
    fn recheck_all(&self) {
        for sender in self.lock().watches.values() {
            sender.send_modify(|generation| *generation += 1);
        }
    }

    /// Pairs watched (a metric).
    pub fn watched(&self) -> usize {
        self.lock().watches.len()
    }

    /// Follows membership deletions in the log until aborted (when the last
    /// watch goes).
    async fn follow(self: Arc<Self>, mut feed: Feed) {
        loop {
            let mut deletions =
                pin!(feed.into_stream(|change| change.table == TABLE && change.op == Op::Delete));
            while let Some(Ok(change)) = deletions.next().await {
                if let Some((room, user)) = deleted_pair(&change) {
                    self.deleted(room, &user);
                }
            }
            // Fell behind the log's retention: start again live, and let
            // every watch look for itself.
            tracing::warn!(
                "the membership follower restarts; every chat stream checks its membership"
            );
            feed = self.feed();
            self.recheck_all();
        }
    }
}

fn deleted_pair(change: &Change) -> Option<(RoomId, String)> {
    let row = change.old_row.as_ref()?;
    Some((
        row.get("room_id")?.as_i64()?,
        row.get("user_id").and_then(Value::as_str)?.to_owned(),
    ))
}

/// Whether `user` is a member of `room` now.
pub(super) async fn is_member(pool: &Pool, room: RoomId, user: &str) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM tidewire.room_members WHERE room_id = $1 AND user_id = $2)",
            &[&room, &user],
        )
        .await?;
    Ok(row.get(0))
}

/// What a member's stream of a room holds: the watch on its membership and,
/// for `chatRoom`, its presence.
struct Hold {
    _presence: Option<Presence>,
}

/// A stream of `room` for `user`, granted if they are a member now
/// (`FORBIDDEN` otherwise), and ended with `FORBIDDEN` once they are not.
/// `present`: the stream counts as the user's presence in the room.
pub(super) async fn lease(
    pool: &Pool,
    memberships: &Arc<Memberships>,
    rooms: &Arc<Rooms>,
    room: RoomId,
    user: &str,
    present: bool,
) -> async_graphql::Result<Lease> {
    // Registered before the check: a deletion after it wakes the watch.
    let mut watch = memberships.watch(room, user);
    if !is_member(pool, room, user).await.map_err(database)? {
        return Err(not_a_member());
    }
    let hold = Hold {
        _presence: present.then(|| rooms.enter(room, user)),
    };
    let pool = pool.clone();
    let user = user.to_owned();
    let ended = async move {
        loop {
            let changed = match watch.receiver.as_mut() {
                Some(receiver) => receiver.changed().await.is_ok(),
                None => false,
            };
            if !changed {
                // The registry is gone (shutting down): never ends here.
                std::future::pending::<()>().await;
            }
            match is_member(&pool, room, &user).await {
                Ok(true) => continue,
                Ok(false) => return left_room(),
                // Cannot tell: fail closed, the client may subscribe again.
                Err(error) => return database(error),
            }
        }
    };
    Ok(Lease {
        hold: Box::new(hold),
        ended: Box::pin(ended),
    })
}

pub(super) fn not_a_member() -> async_graphql::Error {
    ErrorCode::Forbidden.error("only members of this room may do this; join it first")
}

fn left_room() -> async_graphql::Error {
    ErrorCode::Forbidden.error("you are no longer a member of this room")
}
