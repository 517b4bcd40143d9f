//! `liveRows(table, where, after)`: the rows of a tracked table that match
//! a filter now, then every change to that set.
//!
//! Without `after`, the stream joins the hub first, then opens a
//! repeatable-read transaction whose first statement fixes the snapshot:
//! the log position of that snapshot, then the table's rows read through a
//! server-side cursor a few at a time (memory stays bounded whatever the
//! table's size), kept when the caller may read them and they match
//! `where`, sent as `SNAPSHOT` items of up to [`ITEM_ROWS`] rows. `READY`
//! follows, then the changes committed after that position (invariant 3:
//! nothing missed, nothing doubled at the seam), as what they do to the
//! set: a row entering it is an `INSERT`, one leaving a `DELETE` of its old
//! row, one changing inside it an `UPDATE`. With `after` the changes resume
//! from there, without a second snapshot.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use async_graphql::{Context, Enum, Json, Result, SimpleObject, Subscription, Value as GqlValue};
use deadpool_postgres::{Object, Pool};
use futures_util::{future, stream, Stream, StreamExt};
use serde_json::Value;
use tokio::sync::OnceCell;

use super::{
    changes::{readable, Owner, Readable},
    Limits,
};
use crate::{
    db::{Change, ChangeLog, Cursor, TrackedTable},
    error::{cursor_expired, database, ErrorCode},
    hub::{Feed, Hub, RowFilter, Turn},
    sharing::{Share, ShareQuery, ShareRule, StartAlone},
};

/// Most rows in one `SNAPSHOT` item.
pub const ITEM_ROWS: usize = 500;
/// About the most bytes of rows one `SNAPSHOT` item holds (a few large
/// rows make a smaller item).
const ITEM_BYTES: usize = 1 << 20;
/// Rows fetched from the server-side cursor at a time.
const FETCH_ROWS: usize = 50;
/// A snapshot whose reader stops fetching for this long loses its
/// transaction (Postgres ends the session): a stalled client cannot hold
/// back vacuum.
const SNAPSHOT_IDLE: &str = "60s";

/// What a `liveRows` item says.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveKind {
    /// Rows of the set as of the snapshot.
    Snapshot,
    /// The snapshot is complete; changes follow.
    Ready,
    /// A row entered the set (inserted, or changed to match).
    Insert,
    /// A row of the set changed and still belongs to it.
    Update,
    /// A row left the set (deleted, or changed not to match): its old row.
    Delete,
}

/// One item of a live set.
#[derive(SimpleObject, Debug, Clone)]
pub struct LiveRows {
    pub kind: LiveKind,
    pub rows: Vec<Json<Value>>,
    /// Log position: of the snapshot for `SNAPSHOT` and `READY`, of the
    /// change otherwise. Resume with the cursor of `READY` or a later item.
    pub cursor: String,
}

#[derive(Default)]
pub struct LiveRowsSubscription;

#[Subscription]
impl LiveRowsSubscription {
    /// The rows of a tracked table matching `where` (the same filter and
    /// the same read rules as `changes`): `SNAPSHOT` items, then `READY`,
    /// then every `INSERT`, `UPDATE` and `DELETE` of the set. `after` (the
    /// cursor of `READY` or a later item) resumes the changes without a
    /// snapshot. A set of more than `--max-live-rows` rows is refused with
    /// `BAD_USER_INPUT`.
    async fn live_rows(
        &self,
        ctx: &Context<'_>,
        table: String,
        #[graphql(name = "where")] filter: Option<Json<Value>>,
        after: Option<String>,
    ) -> Result<impl Stream<Item = Result<LiveRows>>> {
        let after = super::start_after(ctx, after)?;
        // The set's identity for the snapshot cache: table, filter (as
        // canonical JSON: object keys sorted), whose rows.
        let filter_key = filter.as_ref().map(|Json(value)| value.to_string());
        let Readable {
            tracked,
            owner,
            filter,
        } = readable(ctx, &table, filter).await?;
        let key = format!(
            "{}\n{}\n{}",
            tracked.name,
            filter_key.unwrap_or_default(),
            owner.as_ref().map_or_else(
                || "all rows".to_owned(),
                |owner| format!("rows of user {}", owner.user())
            )
        );
        let limits = ctx.data_unchecked::<Limits>();
        let hub = ctx.data_unchecked::<Arc<Hub>>();
        let client = super::catchup_client(ctx);
        // Joined before the snapshot: nothing committed after it is missed.
        let subscription = hub.subscribe(&tracked.topic);
        let set = Arc::new(SetView { owner, filter });
        let (start, head) = match after {
            Some(cursor) => (cursor, Head::Resume),
            None => {
                let pool = ctx.data_unchecked::<Pool>();
                let cache = ctx.data_unchecked::<Arc<SnapshotCache>>();
                // A snapshot read takes a turn like a catch-up read: a
                // crowd starting at once cannot take every connection.
                let read = async {
                    let turn = hub.catchup_queue().turn(&client).await;
                    let snapshot = Snapshot::begin(pool, &tracked, turn).await?;
                    snapshot.read_whole(&set, limits.max_live_rows, cache).await
                };
                match cache.get_or_read(key, read).await? {
                    Some(cached) => (cached.cursor, Head::Cached(cached)),
                    None => {
                        // Too large to keep: this subscriber streams its own.
                        let turn = hub.catchup_queue().turn(&client).await;
                        let snapshot = Snapshot::begin(pool, &tracked, turn).await?;
                        (snapshot.cursor, Head::Stream(Box::new(snapshot)))
                    }
                }
            }
        };
        let feed = Feed::new(
            ctx.data_unchecked::<ChangeLog>().clone(),
            subscription,
            Some(start),
            limits.page,
        )
        .queued_as(client);
        let name = tracked.name.clone();
        let view = set.clone();
        let changes = feed
            .into_stream(move |change| change.table == name)
            .filter_map(move |item| {
                future::ready(match item {
                    Err(expired) => Some(Err(cursor_expired(expired))),
                    Ok(change) => view.item(&change).map(Ok),
                })
            });
        let ready = stream::once(future::ready(Ok(LiveRows {
            kind: LiveKind::Ready,
            rows: Vec::new(),
            cursor: start.to_string(),
        })));
        let head = match head {
            Head::Stream(snapshot) => snapshot
                .items(set, limits.max_live_rows)
                .chain(ready)
                .boxed(),
            Head::Cached(cached) => {
                let cursor = cached.cursor.to_string();
                let pages = (0..cached.pages.len())
                    .map(move |i| Ok(snapshot_item(cached.pages[i].clone(), &cursor)));
                stream::iter(pages).chain(ready).boxed()
            }
            Head::Resume => stream::empty().boxed(),
        };
        // An error (in the snapshot, or an expired cursor) ends the stream.
        Ok(head.chain(changes).scan(false, |ended, item| {
            if *ended {
                return future::ready(None);
            }
            *ended = item.is_err();
            future::ready(Some(item))
        }))
    }
}

/// `liveRows` without `after` is shared by the class that may read the
/// table, as `changes` is — the changes after the snapshot, that is: each
/// member reads its own snapshot, up to `READY`, then takes the group's
/// items after `READY`'s cursor.
pub fn sharing(log: ChangeLog) -> ShareRule {
    let ready: StartAlone = Arc::new(|item: &GqlValue| {
        let GqlValue::Object(item) = item else {
            return false;
        };
        matches!(item.get("kind"), Some(GqlValue::Enum(kind)) if kind.as_str() == "READY")
    });
    Arc::new(move |query: ShareQuery| {
        let (log, ready) = (log.clone(), ready.clone());
        Box::pin(async move {
            let visibility = super::changes::class(&log, &query).await?;
            Some(Share {
                visibility,
                lease: None,
                start_alone: Some(ready),
            })
        })
    })
}

/// How a stream starts.
enum Head {
    /// With `after`: no snapshot.
    Resume,
    /// A snapshot read for this set moments ago (maybe by another
    /// subscriber).
    Cached(Arc<Cached>),
    /// A snapshot of its own, streamed as it is read.
    Stream(Box<Snapshot>),
}

/// How long a snapshot serves subscribers of the same set: a crowd
/// arriving together reads the table once. Later ones read the log from
/// the snapshot's position to now, so an older snapshot costs them more.
pub const CACHE_FOR: Duration = Duration::from_secs(2);

/// A snapshot kept for a moment, in `SNAPSHOT` pages.
pub struct Cached {
    cursor: Cursor,
    pages: Vec<Vec<Json<Value>>>,
    bytes: usize,
}

/// Snapshots read in the last [`CACHE_FOR`], by set (table, filter, whose
/// rows). Subscribers asking for a set whose snapshot is being read wait
/// for that read instead of starting their own.
pub struct SnapshotCache {
    /// Most bytes of rows (as JSON) kept over all snapshots; a snapshot
    /// that does not fit is streamed to each subscriber from its own read.
    budget: usize,
    entries: Mutex<HashMap<String, Arc<CacheEntry>>>,
    /// Snapshot reads started for the cache (a metric).
    reads: AtomicU64,
}

struct CacheEntry {
    born: Instant,
    /// `None`: too large to keep.
    snapshot: OnceCell<Option<Arc<Cached>>>,
}

impl SnapshotCache {
    pub fn new(budget: usize) -> SnapshotCache {
        SnapshotCache {
            budget,
            entries: Mutex::default(),
            reads: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<CacheEntry>>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The snapshot of set `key` read in the last [`CACHE_FOR`], or the one
    /// being read now, or a new one from `read`.
    async fn get_or_read(
        &self,
        key: String,
        read: impl Future<Output = Result<Option<Cached>>>,
    ) -> Result<Option<Arc<Cached>>> {
        let entry = {
            let mut entries = self.lock();
            let now = Instant::now();
            entries.retain(|_, entry| now.duration_since(entry.born) < CACHE_FOR);
            entries
                .entry(key)
                .or_insert_with(|| {
                    Arc::new(CacheEntry {
                        born: now,
                        snapshot: OnceCell::new(),
                    })
                })
                .clone()
        };
        let snapshot = entry
            .snapshot
            .get_or_try_init(|| async {
                self.reads.fetch_add(1, Ordering::Relaxed);
                Ok::<_, async_graphql::Error>(read.await?.map(Arc::new))
            })
            .await?;
        Ok(snapshot.clone())
    }

    /// Snapshot reads started for the cache.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Bytes of snapshots kept now (a metric).
    pub fn bytes(&self) -> usize {
        self.lock()
            .values()
            .filter_map(|entry| entry.snapshot.get().cloned().flatten())
            .map(|cached| cached.bytes)
            .sum()
    }
}

/// Which rows belong to a subscriber's set.
struct SetView {
    owner: Option<Owner>,
    filter: Option<RowFilter>,
}

impl SetView {
    fn contains(&self, row: &Value) -> bool {
        self.owner.as_ref().is_none_or(|owner| owner.owns(row))
            && self.filter.as_ref().is_none_or(|f| f.matches_row(row))
    }

    /// What `change` does to the set, if anything.
    fn item(&self, change: &Change) -> Option<LiveRows> {
        let was = change.old_row.as_ref().filter(|row| self.contains(row));
        let is = change.row.as_ref().filter(|row| self.contains(row));
        let (kind, row) = match (was, is) {
            (None, None) => return None,
            (None, Some(row)) => (LiveKind::Insert, row),
            (Some(row), None) => (LiveKind::Delete, row),
            (Some(_), Some(row)) => (LiveKind::Update, row),
        };
        Some(LiveRows {
            kind,
            rows: vec![Json(row.clone())],
            cursor: change.cursor.to_string(),
        })
    }
}

/// A table read as of one snapshot, a page at a time.
struct Snapshot {
    /// `None` once the transaction is over (committed, or the connection
    /// discarded).
    client: Option<Object>,
    /// The log position of the snapshot.
    cursor: Cursor,
    _turn: Turn,
}

impl Snapshot {
    async fn begin(pool: &Pool, table: &TrackedTable, turn: Turn) -> Result<Snapshot> {
        let client = pool.get().await.map_err(database)?;
        let mut snapshot = Snapshot {
            client: Some(client),
            cursor: Cursor::default(),
            _turn: turn,
        };
        let client = snapshot.client.as_ref().expect("just set");
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;
                 SET LOCAL idle_in_transaction_session_timeout = '{SNAPSHOT_IDLE}'"
            ))
            .await
            .map_err(database)?;
        // The first query fixes the snapshot; the position and the rows
        // are read in it. `regclass` output is the name quoted as needed.
        let row = client
            .query_one(
                "SELECT (SELECT coalesce(max(position), 0) FROM tidewire.commits),
                        (SELECT rel::regclass::text FROM tidewire.tracked WHERE name = $1)",
                &[&table.name],
            )
            .await
            .map_err(database)?;
        let position: i64 = row.get(0);
        let relation: Option<String> = row.get(1);
        let relation = relation.ok_or_else(|| {
            ErrorCode::BadUserInput.error(format!("table `{}` is no longer tracked", table.name))
        })?;
        client
            .batch_execute(&format!(
                "DECLARE tidewire_live NO SCROLL CURSOR FOR SELECT to_jsonb(t) FROM {relation} t"
            ))
            .await
            .map_err(database)?;
        snapshot.cursor = Cursor::new(position, i64::MAX);
        Ok(snapshot)
    }

    /// The next rows of the table, or `None` at its end (the transaction
    /// is then committed and the connection back in the pool).
    async fn fetch(&mut self) -> Result<Option<Vec<Value>>> {
        let Some(client) = &self.client else {
            return Ok(None);
        };
        let rows = client
            .query(&format!("FETCH {FETCH_ROWS} FROM tidewire_live"), &[])
            .await
            .map_err(database)?;
        if rows.is_empty() {
            client.batch_execute("COMMIT").await.map_err(database)?;
            self.client = None;
            return Ok(None);
        }
        Ok(Some(rows.iter().map(|row| row.get(0)).collect()))
    }

    /// All of the snapshot's rows in `set`, in pages, if they fit in the
    /// cache's room; `None` otherwise. More than `max` rows is an error.
    async fn read_whole(
        mut self,
        set: &SetView,
        max: usize,
        cache: &SnapshotCache,
    ) -> Result<Option<Cached>> {
        let room = cache.budget.saturating_sub(cache.bytes());
        let (mut pages, mut page, mut page_bytes) = (Vec::new(), Vec::new(), 0);
        let (mut matched, mut bytes) = (0, 0);
        while let Some(rows) = self.fetch().await? {
            for row in rows {
                if !set.contains(&row) {
                    continue;
                }
                matched += 1;
                if matched > max {
                    return Err(too_many(max));
                }
                let size = row.to_string().len();
                bytes += size;
                if bytes > room {
                    return Ok(None);
                }
                if page.len() == ITEM_ROWS || (page_bytes + size > ITEM_BYTES && !page.is_empty()) {
                    pages.push(std::mem::take(&mut page));
                    page_bytes = 0;
                }
                page_bytes += size;
                page.push(Json(row));
            }
        }
        if !page.is_empty() {
            pages.push(page);
        }
        Ok(Some(Cached {
            cursor: self.cursor,
            pages,
            bytes,
        }))
    }

    /// The snapshot's rows in `set`, as `SNAPSHOT` items; more than `max`
    /// is an error.
    fn items(
        self,
        set: Arc<SetView>,
        max: usize,
    ) -> impl Stream<Item = Result<LiveRows>> + Send + 'static {
        let cursor = self.cursor.to_string();
        stream::unfold(
            (self, Vec::new(), 0usize, false),
            move |(mut snapshot, mut rows, mut matched, done)| {
                let (set, cursor) = (set.clone(), cursor.clone());
                async move {
                    if done {
                        return None;
                    }
                    let mut bytes = 0;
                    loop {
                        let page = match snapshot.fetch().await {
                            Ok(page) => page,
                            Err(error) => {
                                return Some((Err(error), (snapshot, rows, matched, true)))
                            }
                        };
                        let Some(page) = page else {
                            if rows.is_empty() {
                                return None;
                            }
                            let item = snapshot_item(json(std::mem::take(&mut rows)), &cursor);
                            return Some((Ok(item), (snapshot, rows, matched, true)));
                        };
                        for row in page {
                            if !set.contains(&row) {
                                continue;
                            }
                            matched += 1;
                            if matched > max {
                                return Some((Err(too_many(max)), (snapshot, rows, matched, true)));
                            }
                            bytes += row.to_string().len();
                            rows.push(row);
                        }
                        if rows.len() >= ITEM_ROWS || bytes >= ITEM_BYTES {
                            let rest = rows.split_off(rows.len().min(ITEM_ROWS));
                            let item =
                                snapshot_item(json(std::mem::replace(&mut rows, rest)), &cursor);
                            return Some((Ok(item), (snapshot, rows, matched, false)));
                        }
                    }
                }
            },
        )
    }
}

fn snapshot_item(rows: Vec<Json<Value>>, cursor: &str) -> LiveRows {
    LiveRows {
        kind: LiveKind::Snapshot,
        rows,
        cursor: cursor.to_owned(),
    }
}

fn too_many(max: usize) -> async_graphql::Error {
    ErrorCode::BadUserInput.error(format!(
        "more than {max} rows match: narrow `where` (the server's --max-live-rows)"
    ))
}

fn json(rows: Vec<Value>) -> Vec<Json<Value>> {
    rows.into_iter().map(Json).collect()
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        // Ended mid-snapshot (the subscriber left, or a read failed): the
        // connection still holds the transaction, so it is not given back
        // to the pool but closed, which ends the transaction.
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::db::Op;

    fn set(filter: Value) -> SetView {
        let columns = ["id", "status"].map(String::from);
        SetView {
            owner: None,
            filter: Some(RowFilter::parse(&filter, "public.orders", &columns).unwrap()),
        }
    }

    fn change(op: Op, old: Option<Value>, new: Option<Value>) -> Change {
        Change {
            cursor: Cursor::new(3, 1),
            topic: Arc::from("public.orders"),
            table: "public.orders".into(),
            op,
            row: new,
            old_row: old,
            committed_at: Utc::now(),
        }
    }

    fn kind(set: &SetView, change: Change) -> Option<(LiveKind, Value)> {
        set.item(&change)
            .map(|item| (item.kind, item.rows[0].0.clone()))
    }

    #[test]
    fn changes_become_what_they_do_to_the_set() {
        let open = set(json!({"status": "open"}));
        let (a, b) = (
            json!({"id": 1, "status": "open"}),
            json!({"id": 1, "status": "done"}),
        );
        assert_eq!(
            kind(&open, change(Op::Insert, None, Some(a.clone()))),
            Some((LiveKind::Insert, a.clone()))
        );
        assert_eq!(kind(&open, change(Op::Insert, None, Some(b.clone()))), None);
        // Leaving the filter: a DELETE of the old row.
        assert_eq!(
            kind(&open, change(Op::Update, Some(a.clone()), Some(b.clone()))),
            Some((LiveKind::Delete, a.clone()))
        );
        // Entering it: an INSERT of the new row.
        assert_eq!(
            kind(&open, change(Op::Update, Some(b.clone()), Some(a.clone()))),
            Some((LiveKind::Insert, a.clone()))
        );
        let a2 = json!({"id": 1, "status": "open", "note": "x"});
        assert_eq!(
            kind(&open, change(Op::Update, Some(a.clone()), Some(a2.clone()))),
            Some((LiveKind::Update, a2))
        );
        assert_eq!(
            kind(&open, change(Op::Update, Some(b.clone()), Some(b.clone()))),
            None
        );
        assert_eq!(
            kind(&open, change(Op::Delete, Some(a.clone()), None)),
            Some((LiveKind::Delete, a))
        );
        assert_eq!(kind(&open, change(Op::Delete, Some(b), None)), None);
    }
}
