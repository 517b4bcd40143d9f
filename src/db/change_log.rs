//! `ChangeLog`: reads of `tidewire.changes` in commit order, and the tracked
//! tables they come from.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde_json::Value;
use tokio_postgres::{Client, Row, Statement};

use super::{Cursor, DbError};

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    fn parse(text: &str) -> Option<Op> {
        match text {
            "INSERT" => Some(Op::Insert),
            "UPDATE" => Some(Op::Update),
            "DELETE" => Some(Op::Delete),
            _ => None,
        }
    }
}

/// One committed row change, as read from the log. Shared by every
/// subscriber of its topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub cursor: Cursor,
    pub topic: Arc<str>,
    pub table: String,
    pub op: Op,
    /// New row; `None` for deletes.
    pub row: Option<Value>,
    /// Previous row; `None` for inserts.
    pub old_row: Option<Value>,
    pub committed_at: DateTime<Utc>,
}

impl Change {
    /// About how much memory the change holds: what buffering it costs.
    pub fn approximate_bytes(&self) -> usize {
        let rows = [&self.row, &self.old_row].into_iter().flatten();
        std::mem::size_of::<Change>() + self.table.len() + rows.map(json_bytes).sum::<usize>()
    }
}

/// About how much memory a decoded JSON value holds (rows come from
/// Postgres's jsonb, at most 128 levels deep once decoded).
fn json_bytes(value: &Value) -> usize {
    const NODE: usize = std::mem::size_of::<Value>();
    NODE + match value {
        Value::String(text) => text.len(),
        Value::Array(items) => items.iter().map(json_bytes).sum(),
        Value::Object(fields) => fields
            .iter()
            .map(|(k, v)| k.len() + NODE + json_bytes(v))
            .sum(),
        _ => 0,
    }
}

/// A table whose changes are captured (see `tidewire.track`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedTable {
    pub name: String,
    pub table_name: String,
    pub topic: String,
    pub columns: Vec<String>,
    /// Anyone may read its changes.
    pub public: bool,
    /// Users read the rows whose value here is their id.
    pub owner_column: Option<String>,
    /// Primary-key columns in key order; empty without a primary key. A
    /// row that leaves a user's ownership is announced by its key alone.
    pub key_columns: Vec<String>,
}

/// A tracked table with its columns and key, from `tidewire.tracked`.
const TRACKED: &str = "
    SELECT t.name, t.table_name, t.topic,
           array(SELECT attname::text FROM pg_attribute
                  WHERE attrelid = t.rel AND attnum > 0 AND NOT attisdropped
                  ORDER BY attnum),
           t.public, t.owner_column,
           array(SELECT a.attname::text
                   FROM pg_index i
                   JOIN pg_attribute a ON a.attrelid = i.indrelid
                                      AND a.attnum = ANY (i.indkey::int2[])
                  WHERE i.indrelid = t.rel AND i.indisprimary
                  ORDER BY array_position(i.indkey::int2[], a.attnum))
      FROM tidewire.tracked t
     WHERE EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.rel)";

/// One read of the log: rows after a cursor, the retention floor from the
/// same snapshot, and at most `rows` rows or about `bytes` bytes.
const READ_PAGE: &str = "
    SELECT r.floor_position, r.floor_change, p.fetched,
           p.position, p.id, p.topic, p.table_name, p.op, p.new_row, p.old_row, p.committed_at
      FROM tidewire.retention r
      LEFT JOIN LATERAL (
        SELECT q.*, sum(q.size) OVER (ORDER BY q.position, q.id) AS running, count(*) OVER () AS fetched
          FROM (SELECT c.position, ch.id, ch.topic, ch.table_name, ch.op, ch.new_row, ch.old_row,
                       c.committed_at,
                       coalesce(pg_column_size(ch.new_row), 0) + coalesce(pg_column_size(ch.old_row), 0) AS size
                  FROM tidewire.commits c
                  JOIN tidewire.changes ch ON ch.xid = c.xid
                 WHERE c.position >= $1 AND (c.position > $1 OR ch.id > $2)
                   AND ($5::text IS NULL OR ch.topic = $5)
                 ORDER BY c.position, ch.id
                 LIMIT $3) q
      ) p ON p.running - p.size < $4
     ORDER BY p.position, p.id";

/// Rows of the log after a cursor, read in one snapshot.
#[derive(Debug)]
pub struct Page {
    pub changes: Vec<Change>,
    /// Cursors before this one were pruned: resuming there would skip
    /// changes.
    pub floor: Cursor,
    /// More changes may follow the page.
    pub more: bool,
}

impl Page {
    /// Whether the log no longer holds everything after `after`.
    pub fn expired(&self, after: Cursor) -> bool {
        after < self.floor
    }
}

/// How much one log read may return.
#[derive(Debug, Clone, Copy)]
pub struct PageLimit {
    pub rows: i64,
    /// Approximate bytes (stored row sizes); the first row always comes.
    pub bytes: i64,
}

/// Read access to the change log.
#[derive(Clone)]
pub struct ChangeLog {
    pool: Pool,
    /// Recent answers of [`ChangeLog::tracked_table`]: every subscription
    /// start asks, and tracking changes rarely.
    tracked: Arc<Mutex<Remembered>>,
}

/// Tracked-table answers by the name asked, with when they were read.
type Remembered = HashMap<String, (Instant, Vec<TrackedTable>)>;

/// How long a tracked table's description is reused: `tidewire.track`
/// and `untrack` take effect for new subscriptions within this time.
const TRACKED_FOR: Duration = Duration::from_secs(1);
/// Names remembered at most (client-chosen, so bounded).
const TRACKED_NAMES: usize = 1024;

impl ChangeLog {
    pub fn new(pool: Pool) -> Self {
        ChangeLog {
            pool,
            tracked: Arc::default(),
        }
    }

    /// Changes after `after` in commit order, of one topic or of all.
    pub async fn read_after(
        &self,
        topic: Option<&str>,
        after: Cursor,
        limit: PageLimit,
    ) -> Result<Page, DbError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(READ_PAGE).await?;
        read_page(&client, &statement, topic, after, limit).await
    }

    /// Deletes commits older than `keep` or beyond the newest
    /// `keep_commits`; returns how many commits went.
    pub async fn prune(
        &self,
        keep: std::time::Duration,
        keep_commits: i64,
    ) -> Result<u64, DbError> {
        const BATCH: i32 = 10_000;
        let client = self.pool.get().await?;
        let mut total = 0;
        loop {
            let row = client
                .query_one(
                    "SELECT tidewire.prune($1, $2, $3)",
                    &[&keep.as_secs_f64(), &keep_commits, &BATCH],
                )
                .await?;
            let deleted: i32 = row.get(0);
            total += deleted as u64;
            if deleted < BATCH {
                return Ok(total);
            }
        }
    }

    /// Cursor of the newest committed change (the start of the log if empty).
    pub async fn head(&self) -> Result<Cursor, DbError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT coalesce(max(c.position), 0), coalesce(max(ch.id), 0)
                   FROM tidewire.commits c JOIN tidewire.changes ch ON ch.xid = c.xid
                  WHERE c.position = (SELECT max(position) FROM tidewire.commits)",
                &[],
            )
            .await?;
        Ok(Cursor::new(row.get(0), row.get(1)))
    }

    /// The tracked tables a client's `name` may mean: the one named so
    /// (`schema.table`), or else every tracked table with that bare name.
    /// None: not tracked; more than one: ambiguous.
    pub async fn tracked_table(&self, name: &str) -> Result<Vec<TrackedTable>, DbError> {
        let remembered = self
            .tracked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .filter(|(at, _)| at.elapsed() < TRACKED_FOR)
            .map(|(_, tables)| tables.clone());
        if let Some(tables) = remembered {
            return Ok(tables);
        }
        let tables = self.look_up_tracked(name).await?;
        // Only what exists is remembered: a table tracked just now is
        // found at once.
        if !tables.is_empty() {
            let mut tracked = self.tracked.lock().unwrap_or_else(PoisonError::into_inner);
            if tracked.len() >= TRACKED_NAMES {
                tracked.clear();
            }
            tracked.insert(name.to_owned(), (Instant::now(), tables.clone()));
        }
        Ok(tables)
    }

    async fn look_up_tracked(&self, name: &str) -> Result<Vec<TrackedTable>, DbError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!("{TRACKED} AND (t.name = $1 OR t.table_name = $1) ORDER BY t.name"),
                &[&name],
            )
            .await?;
        let mut tables: Vec<TrackedTable> = rows.iter().map(tracked_from_row).collect();
        // An exact qualified name wins over bare names that equal it.
        if let Some(exact) = tables.iter().position(|t| t.name == name) {
            return Ok(vec![tables.swap_remove(exact)]);
        }
        Ok(tables)
    }

    /// Every tracked table, by name.
    pub async fn tracked_tables(&self) -> Result<Vec<TrackedTable>, DbError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(&format!("{TRACKED} ORDER BY t.name"), &[])
            .await?;
        Ok(rows.iter().map(tracked_from_row).collect())
    }
}

fn tracked_from_row(row: &Row) -> TrackedTable {
    TrackedTable {
        name: row.get(0),
        table_name: row.get(1),
        topic: row.get(2),
        columns: row.get(3),
        public: row.get(4),
        owner_column: row.get(5),
        key_columns: row.get(6),
    }
}

/// A reader of the log on a connection of its own (the listener's): no
/// client can make it wait for a pooled connection.
pub(super) struct OwnLogReader<'a> {
    client: &'a Client,
    statement: Statement,
}

impl<'a> OwnLogReader<'a> {
    pub(super) async fn prepare(client: &'a Client) -> Result<OwnLogReader<'a>, DbError> {
        let statement = client.prepare(READ_PAGE).await?;
        Ok(OwnLogReader { client, statement })
    }

    /// Changes of every topic after `after`, in commit order.
    pub(super) async fn read_after(
        &self,
        after: Cursor,
        limit: PageLimit,
    ) -> Result<Page, DbError> {
        read_page(self.client, &self.statement, None, after, limit).await
    }
}

/// One page of the log, read with the prepared [`READ_PAGE`].
async fn read_page(
    client: &Client,
    statement: &Statement,
    topic: Option<&str>,
    after: Cursor,
    limit: PageLimit,
) -> Result<Page, DbError> {
    let rows = client
        .query(
            statement,
            &[
                &after.position,
                &after.change,
                &limit.rows,
                &limit.bytes,
                &topic,
            ],
        )
        .await?;
    let first = rows
        .first()
        .ok_or_else(|| DbError::Corrupt("tidewire.retention is empty".into()))?;
    let floor = Cursor::new(first.get(0), first.get(1));
    let fetched: Option<i64> = first.get(2);
    let changes = if fetched.is_some() {
        rows.iter()
            .map(change_from_row)
            .collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    let fetched = fetched.unwrap_or(0);
    let more = fetched >= limit.rows || (changes.len() as i64) < fetched;
    Ok(Page {
        changes,
        floor,
        more,
    })
}

fn change_from_row(row: &Row) -> Result<Change, DbError> {
    let op: &str = row.get(7);
    Ok(Change {
        cursor: Cursor::new(row.get(3), row.get(4)),
        topic: Arc::from(row.get::<_, &str>(5)),
        table: row.get(6),
        op: Op::parse(op).ok_or_else(|| DbError::Corrupt(format!("unknown op `{op}`")))?,
        row: row.get(8),
        old_row: row.get(9),
        committed_at: row.get(10),
    })
}
