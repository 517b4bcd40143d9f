//! Room presence and typing: the ephemeral state of chat rooms. Nothing
//! here is written to a table; every node keeps it in memory and tells the
//! others over the [`Bus`].
//!
//! *Presence* is who has a socket streaming a room (`chatRoom`) on any
//! node. A node counts its own streams per (room, user) and announces a
//! user when their first stream of a room starts and when their last one
//! ends, batched every [`TICK`]. It says `hello` when its listener
//! (re)connects — every node then re-announces all it holds, so a new or
//! reconnected node learns the whole picture — and `beat` every second;
//! a node silent for [`NODE_SILENCE`] (crashed, cut off) stops counting.
//! On a clean stop it says `bye`.
//!
//! *Typing* is a (room, user) flag that expires by itself after
//! [`TYPING_TTL`] unless set again, and is cleared when the user's
//! presence in the room ends.
//!
//! Subscribers watch a room's view (a sorted list of user ids) through a
//! `watch` channel: a slow one skips to the newest view, so memory per
//! subscriber is one shared list whatever happens.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    sync::watch,
    time::{Instant, MissedTickBehavior},
};

use super::bus::{Bus, MAX_PAYLOAD};
use crate::db::NoticeSink;

pub type RoomId = i64;
type User = Arc<str>;
/// The users present (or typing) in a room, sorted.
pub type Users = Arc<[User]>;

/// How often changes go out and views are recomputed.
pub const TICK: Duration = Duration::from_millis(100);
/// Ticks between two `beat`s (one second).
const BEAT_TICKS: u32 = 10;
/// A node not heard from for this long no longer counts.
pub const NODE_SILENCE: Duration = Duration::from_secs(3);
/// A typing flag not set again within this long clears itself.
pub const TYPING_TTL: Duration = Duration::from_secs(5);

/// One message on the bus.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    /// The sending node.
    n: String,
    #[serde(flatten)]
    body: Body,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "k", rename_all = "snake_case")]
enum Body {
    /// A node (re)joined: everyone re-announces.
    Hello,
    Beat,
    Bye,
    /// Users whose presence through the sender started (`on`) or ended
    /// (`off`); `reset`: forget what the sender said before.
    Presence {
        reset: bool,
        on: Vec<(RoomId, String)>,
        off: Vec<(RoomId, String)>,
    },
    Typing {
        on: Vec<(RoomId, String)>,
        off: Vec<(RoomId, String)>,
    },
}

#[derive(Default)]
struct Node {
    seen: Option<Instant>,
    rooms: HashMap<RoomId, HashSet<User>>,
}

#[derive(Default)]
struct State {
    /// This node's streams per room and user.
    here: HashMap<RoomId, HashMap<User, usize>>,
    /// What the other nodes announced.
    nodes: HashMap<Arc<str>, Node>,
    /// Who is typing where (every node), with when it expires.
    typing: HashMap<RoomId, HashMap<User, Instant>>,
    presence_watch: HashMap<RoomId, watch::Sender<Users>>,
    typing_watch: HashMap<RoomId, watch::Sender<Users>>,
    /// This node's presence changes not yet announced (newest wins).
    presence_out: HashMap<(RoomId, User), bool>,
    typing_out: HashMap<(RoomId, User), bool>,
    /// Announce everything held here (asked to, or a send failed).
    announce_all: bool,
    say_hello: bool,
    dirty_presence: HashSet<RoomId>,
    dirty_typing: HashSet<RoomId>,
}

impl State {
    fn presence_view(&self, room: RoomId) -> Users {
        let mut users: BTreeSet<&User> = BTreeSet::new();
        if let Some(here) = self.here.get(&room) {
            users.extend(here.keys());
        }
        for node in self.nodes.values() {
            if let Some(there) = node.rooms.get(&room) {
                users.extend(there);
            }
        }
        users.into_iter().cloned().collect()
    }

    fn typing_view(&self, room: RoomId) -> Users {
        let mut users: Vec<User> = self
            .typing
            .get(&room)
            .map(|typing| typing.keys().cloned().collect())
            .unwrap_or_default();
        users.sort();
        users.into()
    }

    fn set_typing(&mut self, room: RoomId, user: &User, on: bool, now: Instant) -> bool {
        let changed = if on {
            self.typing
                .entry(room)
                .or_default()
                .insert(user.clone(), now + TYPING_TTL)
                .is_none()
        } else {
            let removed = self
                .typing
                .get_mut(&room)
                .and_then(|typing| typing.remove(user))
                .is_some();
            if self.typing.get(&room).is_some_and(HashMap::is_empty) {
                self.typing.remove(&room);
            }
            removed
        };
        if changed {
            self.dirty_typing.insert(room);
        }
        changed
    }

    fn forget_node(&mut self, node: &str) {
        if let Some(node) = self.nodes.remove(node) {
            self.dirty_presence.extend(node.rooms.keys());
        }
    }
}

/// Every room's presence and typing, on this node.
pub struct Rooms {
    node: Arc<str>,
    state: Mutex<State>,
}

/// One `chatRoom` stream's presence; ends it on drop.
pub struct Presence {
    rooms: Arc<Rooms>,
    room: RoomId,
    user: User,
}

impl Drop for Presence {
    fn drop(&mut self) {
        let mut state = self.rooms.lock();
        let Some(here) = state.here.get_mut(&self.room) else {
            return;
        };
        let gone = match here.get_mut(&self.user) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            Some(_) => {
                here.remove(&self.user);
                true
            }
            None => false,
        };
        if here.is_empty() {
            state.here.remove(&self.room);
        }
        if gone {
            state
                .presence_out
                .insert((self.room, self.user.clone()), false);
            state.dirty_presence.insert(self.room);
            if state.set_typing(self.room, &self.user, false, Instant::now()) {
                state
                    .typing_out
                    .insert((self.room, self.user.clone()), false);
            }
        }
    }
}

impl Rooms {
    /// `node`: this node's id on the bus.
    pub fn new(node: Arc<str>) -> Arc<Rooms> {
        Arc::new(Rooms {
            node,
            state: Mutex::new(State {
                say_hello: true,
                ..State::default()
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `user` streams `room` from here until the returned guard drops.
    pub fn enter(self: &Arc<Self>, room: RoomId, user: &str) -> Presence {
        let user: User = Arc::from(user);
        let mut state = self.lock();
        let count = state
            .here
            .entry(room)
            .or_default()
            .entry(user.clone())
            .or_default();
        *count += 1;
        if *count == 1 {
            state.presence_out.insert((room, user.clone()), true);
            state.dirty_presence.insert(room);
        }
        drop(state);
        Presence {
            rooms: self.clone(),
            room,
            user,
        }
    }

    /// Sets or clears `user`'s typing flag in `room`, on every node.
    pub fn set_typing(&self, room: RoomId, user: &str, on: bool) {
        let user: User = Arc::from(user);
        let mut state = self.lock();
        // Sent again even when unchanged: it renews the flag elsewhere.
        state.set_typing(room, &user, on, Instant::now());
        state.typing_out.insert((room, user), on);
    }

    /// Who is in `room`: now, then every change (within a [`TICK`]).
    pub fn watch_presence(&self, room: RoomId) -> watch::Receiver<Users> {
        let mut state = self.lock();
        if let Some(sender) = state.presence_watch.get(&room) {
            return sender.subscribe();
        }
        let (sender, receiver) = watch::channel(state.presence_view(room));
        state.presence_watch.insert(room, sender);
        receiver
    }

    /// Who is typing in `room`: now, then every change.
    pub fn watch_typing(&self, room: RoomId) -> watch::Receiver<Users> {
        let mut state = self.lock();
        if let Some(sender) = state.typing_watch.get(&room) {
            return sender.subscribe();
        }
        let (sender, receiver) = watch::channel(state.typing_view(room));
        state.typing_watch.insert(room, sender);
        receiver
    }

    /// (room, user) pairs streaming from this node (a metric).
    pub fn presence_entries(&self) -> usize {
        self.lock().here.values().map(HashMap::len).sum()
    }

    /// Typing flags held, from every node (a metric).
    pub fn typing_entries(&self) -> usize {
        self.lock().typing.values().map(HashMap::len).sum()
    }

    /// Rooms whose presence or typing someone here watches (a metric).
    pub fn watched_rooms(&self) -> usize {
        let state = self.lock();
        state.presence_watch.len() + state.typing_watch.len()
    }

    /// Sends changes, beats and re-announcements until `shutdown`, then says
    /// `bye`.
    pub async fn run(self: Arc<Self>, bus: Bus, mut shutdown: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut ticks: u32 = 0;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => break,
            }
            ticks = ticks.wrapping_add(1);
            let outgoing = self.tick(Instant::now(), ticks.is_multiple_of(BEAT_TICKS));
            for payload in outgoing {
                if let Err(error) = bus.publish(&payload).await {
                    tracing::debug!(%error, "room presence could not be sent; re-announcing");
                    self.lock().announce_all = true;
                    break;
                }
            }
        }
        if let Some(bye) = self.envelope(Body::Bye) {
            let _ = bus.publish(&bye).await;
        }
    }

    /// One tick: expire what timed out, refresh watched views, and return
    /// the bus messages to send.
    fn tick(&self, now: Instant, beat: bool) -> Vec<String> {
        let mut state = self.lock();
        // Typing flags that ran out.
        let mut expired = Vec::new();
        for (room, typing) in &mut state.typing {
            typing.retain(|_, until| *until > now);
            if typing.is_empty() {
                expired.push(*room);
            }
        }
        for room in expired {
            state.typing.remove(&room);
            state.dirty_typing.insert(room);
        }
        // Nodes gone silent.
        let silent: Vec<Arc<str>> = state
            .nodes
            .iter()
            .filter(|(_, node)| {
                node.seen
                    .is_none_or(|seen| now.saturating_duration_since(seen) > NODE_SILENCE)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for node in silent {
            tracing::info!(%node, "a node went silent; its room presence no longer counts");
            state.forget_node(&node);
        }
        self.refresh_views(&mut state);

        let mut bodies = Vec::new();
        if std::mem::take(&mut state.say_hello) {
            bodies.push(Body::Hello);
        }
        if std::mem::take(&mut state.announce_all) {
            state.presence_out.clear();
            let all: Vec<(RoomId, String)> = state
                .here
                .iter()
                .flat_map(|(room, users)| users.keys().map(|u| (*room, u.to_string())))
                .collect();
            bodies.extend(presence_batches(all, Vec::new(), true));
        } else if !state.presence_out.is_empty() {
            let (on, off) = split(std::mem::take(&mut state.presence_out));
            bodies.extend(presence_batches(on, off, false));
        }
        if !state.typing_out.is_empty() {
            let (on, off) = split(std::mem::take(&mut state.typing_out));
            bodies.extend(
                batches(on, off)
                    .into_iter()
                    .map(|(on, off)| Body::Typing { on, off }),
            );
        }
        if beat && bodies.is_empty() {
            bodies.push(Body::Beat);
        }
        drop(state);
        bodies
            .into_iter()
            .filter_map(|body| self.envelope(body))
            .collect()
    }

    /// Hands changed views to their watchers; forgets rooms nobody here
    /// watches any more.
    fn refresh_views(&self, state: &mut State) {
        state
            .presence_watch
            .retain(|_, sender| sender.receiver_count() > 0);
        state
            .typing_watch
            .retain(|_, sender| sender.receiver_count() > 0);
        for room in std::mem::take(&mut state.dirty_presence) {
            if let Some(sender) = state.presence_watch.get(&room) {
                let view = state.presence_view(room);
                sender.send_if_modified(|old| replace_if_changed(old, view));
            }
        }
        for room in std::mem::take(&mut state.dirty_typing) {
            if let Some(sender) = state.typing_watch.get(&room) {
                let view = state.typing_view(room);
                sender.send_if_modified(|old| replace_if_changed(old, view));
            }
        }
    }

    fn envelope(&self, body: Body) -> Option<String> {
        let text = serde_json::to_string(&Envelope {
            n: self.node.to_string(),
            body,
        })
        .ok()?;
        (text.len() <= MAX_PAYLOAD).then_some(text)
    }

    /// Applies one message from another node.
    fn apply(&self, envelope: Envelope, now: Instant) {
        let mut state = self.lock();
        let node: Arc<str> = Arc::from(envelope.n.as_str());
        if envelope.body == Body::Bye {
            state.forget_node(&node);
            return;
        }
        if !state.nodes.contains_key(&node) && envelope.body == Body::Beat {
            // A node we know nothing of: we missed what it announced.
            state.say_hello = true;
        }
        let state = &mut *state;
        let known = state.nodes.entry(node).or_default();
        known.seen = Some(now);
        match envelope.body {
            Body::Hello => state.announce_all = true,
            Body::Beat | Body::Bye => {}
            Body::Presence { reset, on, off } => {
                if reset {
                    state.dirty_presence.extend(known.rooms.keys());
                    known.rooms.clear();
                }
                for (room, user) in on {
                    known.rooms.entry(room).or_default().insert(Arc::from(user));
                    state.dirty_presence.insert(room);
                }
                for (room, user) in off {
                    if let Some(users) = known.rooms.get_mut(&room) {
                        users.remove(user.as_str());
                        if users.is_empty() {
                            known.rooms.remove(&room);
                        }
                    }
                    state.dirty_presence.insert(room);
                }
            }
            Body::Typing { on, off } => {
                for (room, user) in on {
                    state.set_typing(room, &Arc::from(user), true, now);
                }
                for (room, user) in off {
                    state.set_typing(room, &Arc::from(user), false, now);
                }
            }
        }
    }
}

impl NoticeSink for Rooms {
    fn heard(&self, payload: &str) {
        let Ok(envelope) = serde_json::from_str::<Envelope>(payload) else {
            tracing::debug!("an unreadable bus message was ignored");
            return;
        };
        if *envelope.n != *self.node {
            self.apply(envelope, Instant::now());
        }
    }

    fn may_have_missed(&self) {
        // Ask everyone for their state, and tell ours again.
        let mut state = self.lock();
        state.say_hello = true;
        state.announce_all = true;
    }
}

fn replace_if_changed(old: &mut Users, new: Users) -> bool {
    if *old == new {
        return false;
    }
    *old = new;
    true
}

type Pairs = Vec<(RoomId, String)>;

fn split(changes: HashMap<(RoomId, User), bool>) -> (Pairs, Pairs) {
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for ((room, user), present) in changes {
        if present { &mut on } else { &mut off }.push((room, user.to_string()));
    }
    (on, off)
}

/// `on` and `off` in slices whose message stays under [`MAX_PAYLOAD`].
fn batches(on: Pairs, off: Pairs) -> Vec<(Pairs, Pairs)> {
    // The user id as JSON (escapes included), with the room id, brackets
    // and commas around it.
    let size = |(_, user): &(RoomId, String)| {
        serde_json::to_string(user).map_or(user.len() * 6, |text| text.len()) + 26
    };
    let budget = MAX_PAYLOAD - 200;
    let mut out = vec![(Vec::new(), Vec::new())];
    let mut used = 0;
    for (pair, is_on) in on
        .into_iter()
        .map(|p| (p, true))
        .chain(off.into_iter().map(|p| (p, false)))
    {
        if used + size(&pair) > budget {
            out.push((Vec::new(), Vec::new()));
            used = 0;
        }
        used += size(&pair);
        let last = out.last_mut().expect("never empty");
        if is_on { &mut last.0 } else { &mut last.1 }.push(pair);
    }
    out
}

fn presence_batches(on: Pairs, off: Pairs, reset: bool) -> Vec<Body> {
    batches(on, off)
        .into_iter()
        .enumerate()
        .map(|(i, (on, off))| Body::Presence {
            reset: reset && i == 0,
            on,
            off,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(list: &[&str]) -> Users {
        list.iter().map(|u| Arc::from(*u)).collect()
    }

    fn from(node: &str, body: Body) -> String {
        serde_json::to_string(&Envelope {
            n: node.to_owned(),
            body,
        })
        .unwrap()
    }

    fn decode(messages: &[String]) -> Vec<Body> {
        messages
            .iter()
            .map(|m| serde_json::from_str::<Envelope>(m).unwrap().body)
            .collect()
    }

    #[test]
    fn presence_is_announced_once_per_user_and_room() {
        let rooms = Rooms::new(Arc::from("a"));
        let now = Instant::now();
        // Start-up hello, then nothing.
        assert_eq!(decode(&rooms.tick(now, false)), vec![Body::Hello]);
        let first = rooms.enter(1, "ann");
        let second = rooms.enter(1, "ann");
        assert_eq!(
            decode(&rooms.tick(now, false)),
            vec![Body::Presence {
                reset: false,
                on: vec![(1, "ann".into())],
                off: vec![]
            }]
        );
        drop(first);
        assert!(
            rooms.tick(now, false).is_empty(),
            "ann still streams room 1"
        );
        drop(second);
        assert_eq!(
            decode(&rooms.tick(now, false)),
            vec![Body::Presence {
                reset: false,
                on: vec![],
                off: vec![(1, "ann".into())]
            }]
        );
        assert_eq!(rooms.presence_entries(), 0);
    }

    #[test]
    fn the_view_joins_every_node_and_forgets_silent_ones() {
        let rooms = Rooms::new(Arc::from("a"));
        let start = Instant::now();
        let watch = rooms.watch_presence(7);
        let _here = rooms.enter(7, "bob");
        rooms.heard(&from(
            "b",
            Body::Presence {
                reset: false,
                on: vec![(7, "ann".into()), (8, "cat".into())],
                off: vec![],
            },
        ));
        rooms.tick(start, false);
        assert_eq!(*watch.borrow(), users(&["ann", "bob"]));
        // Node b falls silent.
        rooms.tick(start + NODE_SILENCE + TICK, false);
        assert_eq!(*watch.borrow(), users(&["bob"]));
    }

    #[test]
    fn a_hello_makes_every_node_announce_all_it_holds_with_a_reset() {
        let rooms = Rooms::new(Arc::from("a"));
        let now = Instant::now();
        rooms.tick(now, false);
        let _p = rooms.enter(3, "ann");
        rooms.tick(now, false);
        rooms.heard(&from("b", Body::Hello));
        assert_eq!(
            decode(&rooms.tick(now, false)),
            vec![Body::Presence {
                reset: true,
                on: vec![(3, "ann".into())],
                off: vec![]
            }]
        );
        // Its own messages coming back are ignored.
        rooms.heard(&from("a", Body::Hello));
        assert!(rooms.tick(now, false).is_empty());
    }

    #[test]
    fn a_reset_replaces_what_a_node_said_before() {
        let rooms = Rooms::new(Arc::from("a"));
        let now = Instant::now();
        let watch = rooms.watch_presence(1);
        let on = |users: &[&str], reset| Body::Presence {
            reset,
            on: users.iter().map(|u| (1, u.to_string())).collect(),
            off: vec![],
        };
        rooms.heard(&from("b", on(&["ann", "bob"], false)));
        rooms.heard(&from("b", on(&["cat"], true)));
        rooms.tick(now, false);
        assert_eq!(*watch.borrow(), users(&["cat"]));
    }

    #[test]
    fn typing_expires_by_itself_and_ends_with_presence() {
        let rooms = Rooms::new(Arc::from("a"));
        let start = Instant::now();
        let watch = rooms.watch_typing(2);
        let presence = rooms.enter(2, "ann");
        rooms.set_typing(2, "ann", true);
        rooms.heard(&from(
            "b",
            Body::Typing {
                on: vec![(2, "bob".into())],
                off: vec![],
            },
        ));
        rooms.tick(start, false);
        assert_eq!(*watch.borrow(), users(&["ann", "bob"]));
        drop(presence);
        rooms.tick(start, false);
        assert_eq!(*watch.borrow(), users(&["bob"]));
        rooms.tick(Instant::now() + TYPING_TTL + TICK, false);
        assert_eq!(*watch.borrow(), users(&[]));
        assert_eq!(rooms.typing_entries(), 0);
    }

    #[test]
    fn unwatched_rooms_are_forgotten() {
        let rooms = Rooms::new(Arc::from("a"));
        let watch = rooms.watch_presence(1);
        let typing = rooms.watch_typing(1);
        assert_eq!(rooms.watched_rooms(), 2);
        drop((watch, typing));
        rooms.tick(Instant::now(), false);
        assert_eq!(rooms.watched_rooms(), 0);
    }

    #[test]
    fn large_announcements_are_split_under_the_payload_limit() {
        let rooms = Rooms::new(Arc::from("a"));
        let now = Instant::now();
        rooms.tick(now, false);
        let user = "u".repeat(200);
        let held: Vec<Presence> = (0..500)
            .map(|i| rooms.enter(i, &format!("{user}{i}")))
            .collect();
        let messages = rooms.tick(now, false);
        assert!(messages.len() > 1, "500 × 200-byte ids need several");
        assert!(messages.iter().all(|m| m.len() <= MAX_PAYLOAD));
        let announced: usize = decode(&messages)
            .iter()
            .map(|body| match body {
                Body::Presence { on, .. } => on.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(announced, held.len());
    }

    #[test]
    fn beats_go_out_when_nothing_else_does() {
        let rooms = Rooms::new(Arc::from("a"));
        let now = Instant::now();
        rooms.tick(now, false);
        assert_eq!(decode(&rooms.tick(now, true)), vec![Body::Beat]);
        assert!(rooms.tick(now, false).is_empty());
        // Garbage on the bus changes nothing.
        rooms.heard("{not json");
        rooms.heard(r#"{"n":"b","k":"nonsense"}"#);
        assert!(rooms.tick(now, false).is_empty());
    }
}
