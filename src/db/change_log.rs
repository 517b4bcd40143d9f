//! `ChangeLog`: reads of `tidewire.changes` in commit order, and the tracked
//! tables they come from.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde_json::Value;
use tokio_postgres::Row;

use super::{Cursor, DbError};

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, async_graphql::Enum)]
#[graphql(name = "Op")]
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

/// A table whose changes are captured (see `tidewire.track`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedTable {
    pub name: String,
    pub table_name: String,
    pub topic: String,
    pub columns: Vec<String>,
}

const SELECT_CHANGES: &str = "
    SELECT c.position, ch.id, ch.topic, ch.table_name, ch.op, ch.new_row, ch.old_row, c.committed_at
      FROM tidewire.commits c
      JOIN tidewire.changes ch ON ch.xid = c.xid
     WHERE c.position >= $1 AND (c.position > $1 OR ch.id > $2)";

/// Read access to the change log.
#[derive(Clone)]
pub struct ChangeLog {
    pool: Pool,
}

impl ChangeLog {
    pub fn new(pool: Pool) -> Self {
        ChangeLog { pool }
    }

    /// Up to `limit` changes after `after`, in commit order, of every topic.
    pub async fn read_after(&self, after: Cursor, limit: i64) -> Result<Vec<Change>, DbError> {
        let client = self.pool.get().await?;
        let sql = format!("{SELECT_CHANGES} ORDER BY c.position, ch.id LIMIT $3");
        let stmt = client.prepare_cached(&sql).await?;
        let rows = client
            .query(&stmt, &[&after.position, &after.change, &limit])
            .await?;
        rows.iter().map(change_from_row).collect()
    }

    /// Up to `limit` changes of one topic after `after`, in commit order.
    pub async fn read_topic_after(
        &self,
        topic: &str,
        after: Cursor,
        limit: i64,
    ) -> Result<Vec<Change>, DbError> {
        let client = self.pool.get().await?;
        let sql = format!("{SELECT_CHANGES} AND ch.topic = $4 ORDER BY c.position, ch.id LIMIT $3");
        let stmt = client.prepare_cached(&sql).await?;
        let rows = client
            .query(&stmt, &[&after.position, &after.change, &limit, &topic])
            .await?;
        rows.iter().map(change_from_row).collect()
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

    /// The tracked table a client names, as `schema.table` or, when only
    /// one tracked table has that name, as `table`.
    pub async fn tracked_table(&self, name: &str) -> Result<Option<TrackedTable>, DbError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT t.name, t.table_name, t.topic,
                        array(SELECT attname::text FROM pg_attribute
                               WHERE attrelid = t.rel AND attnum > 0 AND NOT attisdropped
                               ORDER BY attnum)
                   FROM tidewire.tracked t
                  WHERE t.name = $1 OR t.table_name = $1
                  ORDER BY t.name = $1 DESC",
                &[&name],
            )
            .await?;
        // Exact matches sort first; a bare table name must be unambiguous.
        let row = match rows.first() {
            Some(first) if first.get::<_, &str>(0) == name || rows.len() == 1 => first,
            _ => return Ok(None),
        };
        Ok(Some(TrackedTable {
            name: row.get(0),
            table_name: row.get(1),
            topic: row.get(2),
            columns: row.get(3),
        }))
    }

    /// Every tracked table's client-facing name.
    pub async fn tracked_names(&self) -> Result<Vec<String>, DbError> {
        let client = self.pool.get().await?;
        let rows = client
            .query("SELECT name FROM tidewire.tracked ORDER BY name", &[])
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

fn change_from_row(row: &Row) -> Result<Change, DbError> {
    let op: &str = row.get(4);
    Ok(Change {
        cursor: Cursor::new(row.get(0), row.get(1)),
        topic: Arc::from(row.get::<_, &str>(2)),
        table: row.get(3),
        op: Op::parse(op).ok_or_else(|| DbError::Corrupt(format!("unknown op `{op}`")))?,
        row: row.get(5),
        old_row: row.get(6),
        committed_at: row.get(7),
    })
}
