//! The bus: ephemeral messages between the nodes that share one database
//! (room presence, typing). Nothing on it is written to a table or to the
//! change log; it travels by `NOTIFY tidewire_bus` and every node's
//! listener hears it (see `db::NoticeSink`). A message sent while a node's
//! listener was away is lost for that node: what travels here is state its
//! owner re-announces when asked (`services::rooms`), never history.

use std::{
    hash::{BuildHasher, Hasher},
    sync::Arc,
};

use deadpool_postgres::Pool;

use crate::db::{DbError, BUS_CHANNEL};

/// Largest payload one message may carry: Postgres refuses a NOTIFY
/// payload of 8000 bytes or more.
pub const MAX_PAYLOAD: usize = 7_900;

/// This node's end of the bus.
#[derive(Clone)]
pub struct Bus {
    pool: Pool,
    node: Arc<str>,
}

impl Bus {
    pub fn new(pool: Pool) -> Bus {
        Bus {
            pool,
            node: Arc::from(node_id()),
        }
    }

    /// This process's id on the bus; messages carry it, so a node knows its
    /// own when they come back.
    pub fn node(&self) -> &Arc<str> {
        &self.node
    }

    /// Sends `payload` (at most [`MAX_PAYLOAD`] bytes) to every node, this
    /// one included.
    pub async fn publish(&self, payload: &str) -> Result<(), DbError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(DbError::Config(format!(
                "a bus message of {} bytes is over the {MAX_PAYLOAD}-byte limit",
                payload.len()
            )));
        }
        let client = self.pool.get().await?;
        client
            .execute("SELECT pg_notify($1, $2)", &[&BUS_CHANNEL, &payload])
            .await?;
        Ok(())
    }
}

/// A random id for this process (the standard library's per-process random
/// hash keys, with the process id and the start time).
fn node_id() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("{:016x}", hasher.finish())
}
