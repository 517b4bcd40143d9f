//! Numbered migrations from `sql/`, applied at start-up by refinery, each in
//! its own transaction and recorded in `refinery_schema_history`.

use super::{pool::connect_once, DbError};

mod embedded {
    refinery::embed_migrations!("sql");
}

/// Key of the session advisory lock that keeps two starting replicas from
/// migrating at once.
const MIGRATION_LOCK: i64 = 7_355_608_000;

/// Applies every pending migration. A failing one stops here, naming the file
/// and the database's error.
pub async fn migrate(url: &str) -> Result<(), DbError> {
    let mut client = connect_once(url).await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let report = embedded::migrations::runner()
        .set_abort_divergent(true)
        .run_async(&mut client)
        .await;
    // The lock also ends with the connection; unlocking is a courtesy.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let report = report.map_err(|e| DbError::Migration(describe(&e)))?;
    for migration in report.applied_migrations() {
        tracing::info!(migration = %migration, "applied migration");
    }
    Ok(())
}

fn describe(error: &refinery::Error) -> String {
    use std::error::Error as _;
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
