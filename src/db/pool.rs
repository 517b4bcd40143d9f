//! The connection pool used by resolvers and log readers, and one-off
//! connections for the listener and administration.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{Client, NoTls};

use super::DbError;

/// Parses a connection string and builds a pool of at most `size`
/// connections. Connections are opened lazily.
pub fn connect_pool(url: &str, size: usize, app_name: &str) -> Result<Pool, DbError> {
    let mut config = parse(url)?;
    config.application_name(app_name);
    build(config, size)
}

/// Planner settings of every session that reads the log (see
/// [`connect_log_pool`]).
pub(super) const LOG_READ_OPTIONS: &str = "-c enable_seqscan=off -c enable_hashjoin=off \
     -c enable_mergejoin=off -c jit=off -c plan_cache_mode=force_custom_plan";

/// A pool for change-log reads. Every read is a short range scan after a
/// cursor; on a log that grew fast the planner's statistics lag and it may
/// pick sequential scans and hash joins whose cost grows with the log. These
/// sessions steer it to the position and xid indexes, plan each read for its
/// actual cursor (a generic plan cannot see how short the range is), and
/// keep JIT, which the penalized costs would trigger, out of tiny queries.
pub fn connect_log_pool(url: &str, size: usize) -> Result<Pool, DbError> {
    let mut config = parse(url)?;
    config
        .application_name("tidewire-log")
        .options(LOG_READ_OPTIONS);
    build(config, size)
}

fn build(config: tokio_postgres::Config, size: usize) -> Result<Pool, DbError> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| DbError::Config(e.to_string()))
}

/// Parses a connection string, with keepalives on so a vanished server is
/// noticed even on an idle connection.
pub(super) fn parse(url: &str) -> Result<tokio_postgres::Config, DbError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| DbError::Config(super::failure::describe(&e)))?;
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5));
    Ok(config)
}

/// Opens one connection whose driver runs on its own task; for short
/// administrative work (creating databases, migrations).
pub async fn connect_once(url: &str) -> Result<Client, DbError> {
    let (client, connection) = parse(url)?.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "administrative connection ended");
        }
    });
    Ok(client)
}

/// Creates `database` on the server of `admin_url` unless it exists.
pub async fn ensure_database(admin_url: &str, database: &str) -> Result<(), DbError> {
    let client = connect_once(admin_url).await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await?
        .is_some();
    if !exists {
        let quoted = format!("\"{}\"", database.replace('"', "\"\""));
        client
            .batch_execute(&format!("CREATE DATABASE {quoted}"))
            .await?;
    }
    Ok(())
}
