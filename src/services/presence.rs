//! Presence: every second this node records which signed-in users it has
//! connected (for the dashboard's active users across nodes) and ticks its
//! request rate.

use std::{sync::Arc, time::Duration};

use deadpool_postgres::Pool;
use tokio::sync::watch;

use super::Traffic;

/// The signed-in users connected to this node now.
pub type ConnectedUsers = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

pub async fn run(
    pool: Pool,
    connected: ConnectedUsers,
    traffic: Arc<Traffic>,
    mut shutdown: watch::Receiver<bool>,
) {
    let node: Option<String> = match pool.get().await {
        Ok(client) => client
            .query_one("SELECT gen_random_uuid()::text", &[])
            .await
            .ok()
            .map(|row| row.get(0)),
        Err(_) => None,
    };
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => break,
        }
        traffic.tick(last.elapsed().as_secs_f64());
        last = tokio::time::Instant::now();
        let (Some(node), Ok(client)) = (&node, pool.get().await) else {
            continue;
        };
        let users = connected();
        if let Err(error) = client
            .execute(
                "INSERT INTO tidewire.presence (node, users, heartbeat) VALUES ($1::text::uuid, $2, now())
                 ON CONFLICT (node) DO UPDATE SET users = EXCLUDED.users, heartbeat = now()",
                &[node, &users],
            )
            .await
        {
            tracing::debug!(%error, "recording presence failed");
        }
    }
    if let (Some(node), Ok(client)) = (&node, pool.get().await) {
        let _ = client
            .execute(
                "DELETE FROM tidewire.presence WHERE node = $1::text::uuid",
                &[node],
            )
            .await;
    }
}
