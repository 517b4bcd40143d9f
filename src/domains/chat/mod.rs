//! Chat: rooms (public or private), members, messages — durable, in
//! `tidewire.rooms`, `room_members`, `room_invites` and `messages` — and
//! each room's presence and typing, which are ephemeral
//! (`services::rooms`).
//!
//! A bidirectional stream is a `chatRoom` subscription and `sendMessage`
//! mutations on the same WebSocket. Messages travel through the change log
//! (topic `chat`), so a member resumes with `after` and loses nothing. Every
//! member of a room who sends the same `chatRoom` operation without `after`
//! shares one execution (`Visibility::Room`): a message is read and
//! serialized once per room, whatever the number of members. Each member
//! holds a lease (see `membership`): its presence, and the end of its
//! stream with `FORBIDDEN` as soon as it leaves or is removed.

mod membership;

use std::sync::Arc;

use async_graphql::{Context, Object, Result, SimpleObject, Subscription, ID};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use futures_util::{stream, Stream, StreamExt};
use serde_json::Value;
use tokio_postgres::Row;

pub use membership::Memberships;

use super::Limits;
use crate::{
    auth::{Viewer, MAX_USER_ID_BYTES},
    db::{Change, Op},
    error::{cursor_expired, database, ErrorCode},
    services::{
        rooms::{RoomId, Users},
        MutationLimit, Rooms,
    },
    sharing::{Share, ShareQuery, ShareRule, Visibility},
    streams::until_ended,
};

const TOPIC: &str = "chat";
const TABLE: &str = "tidewire.messages";
/// Rooms one user may own.
pub const MAX_ROOMS_PER_OWNER: i64 = 100;
/// Longest room name, in characters.
const MAX_ROOM_NAME_CHARS: usize = 100;

#[derive(SimpleObject, Clone, Debug)]
pub struct Room {
    pub id: ID,
    pub name: String,
    /// Private rooms are joined by invitation of their owner only.
    pub private: bool,
    pub owner_id: ID,
    pub created_at: DateTime<Utc>,
    pub member_count: i64,
    /// Whether the caller is a member.
    pub joined: bool,
}

impl Room {
    fn from_row(row: &Row) -> Room {
        Room {
            id: ID(row.get::<_, i64>(0).to_string()),
            name: row.get(1),
            private: row.get(2),
            owner_id: ID(row.get(3)),
            created_at: row.get(4),
            member_count: row.get(5),
            joined: row.get(6),
        }
    }
}

/// One room by id, as `user` sees it (columns of [`Room::from_row`]).
const ROOM: &str = "
    SELECT r.id, r.name, r.private, r.owner_id, r.created_at,
           (SELECT count(*) FROM tidewire.room_members m WHERE m.room_id = r.id),
           EXISTS (SELECT 1 FROM tidewire.room_members m WHERE m.room_id = r.id AND m.user_id = $2)
      FROM tidewire.rooms r WHERE r.id = $1";

#[derive(SimpleObject, Clone, Debug, PartialEq)]
pub struct Message {
    pub id: ID,
    pub room_id: ID,
    /// Set by the server from the sender's token.
    pub author_id: ID,
    pub text: String,
    /// Set by the server when the message was stored.
    pub created_at: DateTime<Utc>,
    /// Position in the change log (`chatRoom` items only); pass as `after`
    /// to resume.
    pub cursor: Option<String>,
}

impl Message {
    fn from_row(row: &Row) -> Message {
        Message {
            id: ID(row.get::<_, i64>(0).to_string()),
            room_id: ID(row.get::<_, i64>(1).to_string()),
            author_id: ID(row.get(2)),
            text: row.get(3),
            created_at: row.get(4),
            cursor: None,
        }
    }

    fn from_change(change: &Change) -> Option<Message> {
        let row = change.row.as_ref()?;
        let text = |key: &str| row.get(key)?.as_str().map(str::to_owned);
        Some(Message {
            id: ID(row.get("id")?.as_i64()?.to_string()),
            room_id: ID(row.get("room_id")?.as_i64()?.to_string()),
            author_id: ID(text("author_id")?),
            text: text("body")?,
            created_at: DateTime::parse_from_rfc3339(row.get("created_at")?.as_str()?)
                .ok()?
                .with_timezone(&Utc),
            cursor: Some(change.cursor.to_string()),
        })
    }
}

/// Who is in a room, or typing in it: ephemeral, so never in the log.
#[derive(SimpleObject, Clone, Debug)]
pub struct RoomUsers {
    pub room_id: ID,
    /// User ids, sorted.
    pub users: Vec<ID>,
    /// Always null: presence and typing are not in the change log.
    pub cursor: Option<String>,
}

use super::viewer;

fn room_id(id: &ID) -> Result<RoomId> {
    id.parse()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(no_such_room)
}

fn no_such_room() -> async_graphql::Error {
    ErrorCode::NotFound.error("no such room")
}

fn user_id(id: &ID) -> Result<&str> {
    if id.is_empty() || id.len() > MAX_USER_ID_BYTES {
        return Err(
            ErrorCode::BadUserInput.error(format!("a user id is 1–{MAX_USER_ID_BYTES} bytes"))
        );
    }
    Ok(id.as_str())
}

fn pool<'a>(ctx: &Context<'a>) -> &'a Pool {
    ctx.data_unchecked::<Pool>()
}

/// The room, or `NOT_FOUND`.
async fn room(pool: &Pool, room: RoomId, user: &str) -> Result<Room> {
    let client = pool.get().await.map_err(database)?;
    let row = client
        .query_opt(ROOM, &[&room, &user])
        .await
        .map_err(database)?;
    row.as_ref().map(Room::from_row).ok_or_else(no_such_room)
}

/// `FORBIDDEN` unless `user` is a member (`NOT_FOUND` if no such room).
async fn require_member(pool: &Pool, id: RoomId, user: &str) -> Result<()> {
    if membership::is_member(pool, id, user)
        .await
        .map_err(database)?
    {
        return Ok(());
    }
    room(pool, id, user).await?;
    Err(membership::not_a_member())
}

/// `FORBIDDEN` unless `user` owns the room (`NOT_FOUND` if no such room).
async fn require_owner(pool: &Pool, id: RoomId, user: &str) -> Result<Room> {
    let room = room(pool, id, user).await?;
    if *room.owner_id != *user {
        return Err(ErrorCode::Forbidden.error("only the room's owner may do this"));
    }
    Ok(room)
}

#[derive(Default)]
pub struct ChatQuery;

#[Object]
impl ChatQuery {
    /// The rooms the caller can see — public ones, and private ones they
    /// own, joined or were invited to — by id; `after` (a room id) pages on.
    async fn rooms(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 50)] first: i32,
        after: Option<ID>,
    ) -> Result<Vec<Room>> {
        let user = ctx
            .data_opt::<Viewer>()
            .map(|v| v.user_id.as_str())
            .unwrap_or("");
        let after: i64 = match after {
            Some(id) => id
                .parse()
                .map_err(|_| ErrorCode::BadUserInput.error("`after` is a room id"))?,
            None => 0,
        };
        let client = pool(ctx).get().await.map_err(database)?;
        let rows = client
            .query(
                "SELECT r.id, r.name, r.private, r.owner_id, r.created_at,
                        (SELECT count(*) FROM tidewire.room_members m WHERE m.room_id = r.id),
                        EXISTS (SELECT 1 FROM tidewire.room_members m
                                 WHERE m.room_id = r.id AND m.user_id = $1)
                   FROM tidewire.rooms r
                  WHERE r.id > $2
                    AND (NOT r.private OR r.owner_id = $1
                         OR EXISTS (SELECT 1 FROM tidewire.room_members m
                                     WHERE m.room_id = r.id AND m.user_id = $1)
                         OR EXISTS (SELECT 1 FROM tidewire.room_invites i
                                     WHERE i.room_id = r.id AND i.user_id = $1))
                  ORDER BY r.id LIMIT $3",
                &[&user, &after, &i64::from(first.clamp(1, 100))],
            )
            .await
            .map_err(database)?;
        Ok(rows.iter().map(Room::from_row).collect())
    }

    /// A room's history for its members: the `last` messages (at most 100)
    /// before the message `before` (default: the newest), oldest first.
    async fn messages(
        &self,
        ctx: &Context<'_>,
        room_id: ID,
        before: Option<ID>,
        #[graphql(default = 50)] last: i32,
    ) -> Result<Vec<Message>> {
        let user = &viewer(ctx, "read messages")?.user_id;
        let room = self::room_id(&room_id)?;
        let before: i64 = match before {
            Some(id) => id
                .parse()
                .map_err(|_| ErrorCode::BadUserInput.error("`before` is a message id"))?,
            None => i64::MAX,
        };
        require_member(pool(ctx), room, user).await?;
        let client = pool(ctx).get().await.map_err(database)?;
        let rows = client
            .query(
                "SELECT id, room_id, author_id, body, created_at FROM tidewire.messages
                  WHERE room_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
                &[&room, &before, &i64::from(last.clamp(1, 100))],
            )
            .await
            .map_err(database)?;
        Ok(rows.iter().rev().map(Message::from_row).collect())
    }
}

#[derive(Default)]
pub struct ChatMutation;

#[Object]
impl ChatMutation {
    /// A new room owned (and joined) by the caller; at most
    /// `MAX_ROOMS_PER_OWNER` (100) per user.
    #[graphql(guard = "MutationLimit")]
    async fn create_room(
        &self,
        ctx: &Context<'_>,
        name: String,
        #[graphql(default = false)] private: bool,
    ) -> Result<Room> {
        let user = &viewer(ctx, "create rooms")?.user_id;
        let name = name.trim();
        if name.is_empty() || name.chars().count() > MAX_ROOM_NAME_CHARS {
            return Err(ErrorCode::BadUserInput
                .error(format!("a room name is 1–{MAX_ROOM_NAME_CHARS} characters")));
        }
        let mut client = pool(ctx).get().await.map_err(database)?;
        let transaction = client.transaction().await.map_err(database)?;
        // One owner's rooms are counted and created one request at a time.
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock(hashtext('tidewire.rooms'), hashtext($1))",
                &[user],
            )
            .await
            .map_err(database)?;
        let row = transaction
            .query_opt(
                "WITH room AS (
                     INSERT INTO tidewire.rooms (name, private, owner_id)
                     SELECT $1, $2, $3
                      WHERE (SELECT count(*) FROM tidewire.rooms WHERE owner_id = $3) < $4
                     RETURNING id, name, private, owner_id, created_at),
                 member AS (
                     INSERT INTO tidewire.room_members (room_id, user_id)
                     SELECT id, owner_id FROM room)
                 SELECT id, name, private, owner_id, created_at, 1::bigint, true FROM room",
                &[&name, &private, user, &MAX_ROOMS_PER_OWNER],
            )
            .await
            .map_err(database)?;
        transaction.commit().await.map_err(database)?;
        row.as_ref().map(Room::from_row).ok_or_else(|| {
            ErrorCode::BadUserInput.error(format!(
                "you own {MAX_ROOMS_PER_OWNER} rooms already, the most one user may"
            ))
        })
    }

    /// Joins a public room, or a private one the caller was invited to (or
    /// owns). Joining a room one is in already changes nothing.
    #[graphql(guard = "MutationLimit")]
    async fn join_room(&self, ctx: &Context<'_>, room_id: ID) -> Result<Room> {
        let user = &viewer(ctx, "join rooms")?.user_id;
        let id = self::room_id(&room_id)?;
        let client = pool(ctx).get().await.map_err(database)?;
        let joined = client
            .execute(
                "INSERT INTO tidewire.room_members (room_id, user_id)
                 SELECT r.id, $2 FROM tidewire.rooms r
                  WHERE r.id = $1
                    AND (NOT r.private OR r.owner_id = $2
                         OR EXISTS (SELECT 1 FROM tidewire.room_invites i
                                     WHERE i.room_id = r.id AND i.user_id = $2))
                 ON CONFLICT DO NOTHING",
                &[&id, user],
            )
            .await
            .map_err(database)?;
        drop(client);
        let room = room(pool(ctx), id, user).await?;
        if joined == 0 && !room.joined {
            return Err(
                ErrorCode::Forbidden.error("this room is private: its owner must invite you first")
            );
        }
        Ok(room)
    }

    /// Leaves a room; the caller's streams of it end with `FORBIDDEN`.
    /// Whether the caller was a member.
    #[graphql(guard = "MutationLimit")]
    async fn leave_room(&self, ctx: &Context<'_>, room_id: ID) -> Result<bool> {
        let user = &viewer(ctx, "leave rooms")?.user_id;
        let id = self::room_id(&room_id)?;
        let client = pool(ctx).get().await.map_err(database)?;
        let left = client
            .execute(
                "DELETE FROM tidewire.room_members WHERE room_id = $1 AND user_id = $2",
                &[&id, user],
            )
            .await
            .map_err(database)?;
        drop(client);
        if left == 0 {
            room(pool(ctx), id, user).await?;
        }
        Ok(left > 0)
    }

    /// The owner invites `userId` to their room (private rooms are joined
    /// by invitation only). Whether this is a new invitation.
    #[graphql(guard = "MutationLimit")]
    async fn invite_to_room(&self, ctx: &Context<'_>, room_id: ID, user_id: ID) -> Result<bool> {
        let owner = &viewer(ctx, "invite to rooms")?.user_id;
        let id = self::room_id(&room_id)?;
        let invitee = self::user_id(&user_id)?;
        require_owner(pool(ctx), id, owner).await?;
        let client = pool(ctx).get().await.map_err(database)?;
        let invited = client
            .execute(
                "INSERT INTO tidewire.room_invites (room_id, user_id) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING",
                &[&id, &invitee],
            )
            .await
            .map_err(database)?;
        Ok(invited > 0)
    }

    /// The owner removes `userId` from their room, invitation included: the
    /// removed member's streams of the room end with `FORBIDDEN` at once.
    /// Whether they were a member.
    #[graphql(guard = "MutationLimit")]
    async fn remove_from_room(&self, ctx: &Context<'_>, room_id: ID, user_id: ID) -> Result<bool> {
        let owner = &viewer(ctx, "remove members")?.user_id;
        let id = self::room_id(&room_id)?;
        let member = self::user_id(&user_id)?;
        if member == owner {
            return Err(ErrorCode::BadUserInput.error("to leave your own room, use leaveRoom"));
        }
        require_owner(pool(ctx), id, owner).await?;
        let client = pool(ctx).get().await.map_err(database)?;
        let row = client
            .query_one(
                "WITH invite AS (
                     DELETE FROM tidewire.room_invites WHERE room_id = $1 AND user_id = $2),
                 member AS (
                     DELETE FROM tidewire.room_members WHERE room_id = $1 AND user_id = $2
                     RETURNING 1)
                 SELECT count(*) FROM member",
                &[&id, &member],
            )
            .await
            .map_err(database)?;
        Ok(row.get::<_, i64>(0) > 0)
    }

    /// Posts to a room the caller is a member of. Author and time are the
    /// server's; `text` is 1 to `--max-chat-message-chars` characters.
    #[graphql(guard = "MutationLimit")]
    async fn send_message(&self, ctx: &Context<'_>, room_id: ID, text: String) -> Result<Message> {
        let user = &viewer(ctx, "send messages")?.user_id;
        let id = self::room_id(&room_id)?;
        let max = ctx.data_unchecked::<Limits>().max_chat_message_chars;
        // Counting stops past the limit: a huge text costs no full scan.
        if text.trim().is_empty() || text.chars().nth(max).is_some() {
            return Err(ErrorCode::BadUserInput.error(format!("a message is 1–{max} characters")));
        }
        let client = pool(ctx).get().await.map_err(database)?;
        let row = client
            .query_opt(
                "INSERT INTO tidewire.messages (room_id, author_id, body)
                 SELECT $1, $2, $3
                  WHERE EXISTS (SELECT 1 FROM tidewire.room_members
                                 WHERE room_id = $1 AND user_id = $2)
                 RETURNING id, room_id, author_id, body, created_at",
                &[&id, user, &text],
            )
            .await
            .map_err(database)?;
        drop(client);
        match row {
            Some(row) => Ok(Message::from_row(&row)),
            None => {
                room(pool(ctx), id, user).await?;
                Err(membership::not_a_member())
            }
        }
    }

    /// Says the caller is typing in a room (or stopped). Ephemeral: never
    /// stored, it clears itself after a few seconds unless sent again, and
    /// when the caller's last `chatRoom` stream of the room ends.
    #[graphql(guard = "MutationLimit")]
    async fn set_typing(&self, ctx: &Context<'_>, room_id: ID, typing: bool) -> Result<bool> {
        let user = &viewer(ctx, "type in rooms")?.user_id;
        let id = self::room_id(&room_id)?;
        require_member(pool(ctx), id, user).await?;
        ctx.data_unchecked::<Arc<Rooms>>()
            .set_typing(id, user, typing);
        Ok(typing)
    }
}

#[derive(Default)]
pub struct ChatSubscription;

#[Subscription]
impl ChatSubscription {
    /// New messages of a room, for its members, from `after` if given. Ends
    /// with `FORBIDDEN` as soon as the caller leaves or is removed. While it
    /// runs, the caller is present in the room (`roomPresence`).
    async fn chat_room(
        &self,
        ctx: &Context<'_>,
        room_id: ID,
        after: Option<String>,
    ) -> Result<impl Stream<Item = Result<Message>>> {
        let room = self::room_id(&room_id)?;
        let after = super::start_after(ctx, after)?;
        // A shared execution runs as the room, whose members were checked
        // one by one; anyone else needs a membership and a lease of their own.
        let lease = match ctx.data_opt::<Visibility>() {
            Some(Visibility::Room(shared)) if *shared == room => None,
            _ => {
                let user = &viewer(ctx, "read rooms")?.user_id;
                Some(lease(ctx, room, user, true).await?)
            }
        };
        let feed = super::feed(ctx, super::hub(ctx).subscribe(TOPIC), after);
        let keep = move |change: &Change| {
            change.table == TABLE
                && change.op == Op::Insert
                && change
                    .row
                    .as_ref()
                    .and_then(|row| row.get("room_id"))
                    .and_then(Value::as_i64)
                    == Some(room)
        };
        let messages = feed.into_stream(keep).map(|item| {
            let change = item.map_err(cursor_expired)?;
            Message::from_change(&change).ok_or_else(|| {
                tracing::warn!(cursor = %change.cursor, "a chat message could not be decoded");
                ErrorCode::Internal.error("this message could not be read")
            })
        });
        Ok(match lease {
            Some(lease) => until_ended(messages, lease.ended, lease.hold),
            None => messages.boxed(),
        })
    }

    /// Who is in a room — users with a socket streaming it (`chatRoom`), on
    /// any node — at once, then within a second of every change. Members
    /// only.
    async fn room_presence(
        &self,
        ctx: &Context<'_>,
        room_id: ID,
    ) -> Result<impl Stream<Item = Result<RoomUsers>>> {
        let room = self::room_id(&room_id)?;
        let user = &viewer(ctx, "see who is in rooms")?.user_id;
        let lease = lease(ctx, room, user, false).await?;
        let watch = ctx.data_unchecked::<Arc<Rooms>>().watch_presence(room);
        Ok(until_ended(users(room, watch), lease.ended, lease.hold))
    }

    /// Who is typing in a room: at once, then on every change. Members only.
    async fn room_typing(
        &self,
        ctx: &Context<'_>,
        room_id: ID,
    ) -> Result<impl Stream<Item = Result<RoomUsers>>> {
        let room = self::room_id(&room_id)?;
        let user = &viewer(ctx, "see who is typing")?.user_id;
        let lease = lease(ctx, room, user, false).await?;
        let watch = ctx.data_unchecked::<Arc<Rooms>>().watch_typing(room);
        Ok(until_ended(users(room, watch), lease.ended, lease.hold))
    }
}

async fn lease(
    ctx: &Context<'_>,
    room: RoomId,
    user: &str,
    present: bool,
) -> Result<crate::sharing::Lease> {
    membership::lease(
        pool(ctx),
        ctx.data_unchecked::<Arc<Memberships>>(),
        ctx.data_unchecked::<Arc<Rooms>>(),
        room,
        user,
        present,
    )
    .await
}

/// The current view, then each new one (a slow reader skips to the newest).
fn users(
    room: RoomId,
    watch: tokio::sync::watch::Receiver<Users>,
) -> impl Stream<Item = Result<RoomUsers>> + Send + 'static {
    stream::unfold((watch, true), move |(mut watch, first)| async move {
        if !first {
            watch.changed().await.ok()?;
        }
        let users = watch.borrow_and_update().clone();
        let item = RoomUsers {
            room_id: ID(room.to_string()),
            users: users.iter().map(|u| ID(u.to_string())).collect(),
            cursor: None,
        };
        Some((Ok(item), (watch, false)))
    })
}

/// `chatRoom` without `after` is shared by the room's members: each is
/// checked as it joins and holds a lease (presence, and the end of its
/// stream when its membership ends). Anyone else runs alone, and is
/// refused there.
pub fn sharing(pool: Pool, memberships: Arc<Memberships>, rooms: Arc<Rooms>) -> ShareRule {
    Arc::new(move |query: ShareQuery| {
        let (pool, memberships, rooms) = (pool.clone(), memberships.clone(), rooms.clone());
        Box::pin(async move {
            if query.argument("after").is_some() {
                return None;
            }
            let room = match query.argument("roomId")? {
                async_graphql::Value::String(id) => id.parse::<RoomId>().ok()?,
                async_graphql::Value::Number(id) => id.as_i64()?,
                _ => return None,
            };
            let user = &query.viewer.as_ref()?.user_id;
            let lease = membership::lease(&pool, &memberships, &rooms, room, user, true)
                .await
                .ok()?;
            Some(Share {
                visibility: Visibility::Room(room),
                lease: Some(lease),
                start_alone: None,
            })
        })
    })
}
