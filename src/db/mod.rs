//! Everything that talks to Postgres: the pool, migrations, the embedded
//! cluster, the change log and the listener that tails it.

mod change_log;
mod cursor;
pub mod embedded;
mod failure;
mod listener;
mod migrate;
mod pool;
mod retention;
mod watchdog;

pub use change_log::{Change, ChangeLog, Op, Page, PageLimit, TrackedTable};
pub use cursor::{BadCursor, Cursor};
pub use listener::{
    ChangeSink, Listener, ListenerStatus, NoticeSink, BUS_CHANNEL, REVOKED_CHANNEL,
};
pub use migrate::migrate;
pub use pool::{connect_log_pool, connect_once, connect_pool, ensure_database};
pub use retention::Pruner;
pub use watchdog::{StuckDetector, Watchdog};

/// Errors of the database layer. Never shown to clients as they are: the
/// GraphQL layer turns them into a generic `INTERNAL` error, or
/// `UNAVAILABLE` when [`DbError::is_unreachable`].
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database configuration: {0}")]
    Config(String),
    #[error("database: {}", failure::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database pool: {}", failure::describe_pool(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("change log holds unexpected data: {0}")]
    Corrupt(String),
}
