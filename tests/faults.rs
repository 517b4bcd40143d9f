//! Database outages: the whole Postgres stops and starts under a steady
//! write load, and start-up waits for an unreachable database. These stop
//! the test binary's shared cluster, so they run one at a time.

mod common;

use std::time::Duration;

use common::{cluster, fresh_database, TestServer, WAIT};
use tidewire::{config::Config, server::App};
use tokio::sync::Mutex;

static OUTAGE: Mutex<()> = Mutex::const_new(());

async fn stop_postgres() {
    tokio::task::spawn_blocking(|| cluster().stop_server().expect("stopping Postgres"))
        .await
        .unwrap();
}

async fn start_postgres() {
    tokio::task::spawn_blocking(|| cluster().start_server().expect("starting Postgres"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_under_write_load_loses_nothing() {
    let _outage = OUTAGE.lock().await;
    let server = TestServer::start_with(|config| {
        config.listener_backoff = Duration::from_millis(100);
        config.listener_backoff_max = Duration::from_millis(500);
    })
    .await;
    server.track_events().await;
    let mut client = server.subscribe_events().await;

    // A writer that keeps going: reconnects and retries through the outage.
    let url = server.database_url.clone();
    let (stop_writing, mut stopped) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(async move {
        let mut next = 1i64;
        let mut db = None;
        while !*stopped.borrow() {
            if db.is_none() {
                db = tidewire::db::connect_once(&url).await.ok();
            }
            let Some(client) = &db else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            match client
                .execute(
                    "INSERT INTO events VALUES ($1) ON CONFLICT DO NOTHING",
                    &[&next],
                )
                .await
            {
                Ok(_) => next += 1,
                Err(_) => db = None,
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(3)) => {}
                _ = stopped.changed() => {}
            }
        }
    });

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_postgres().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.ready().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz stayed true with Postgres down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    start_postgres().await;
    server.wait_ready().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_writing.send(true).unwrap();
    writer.await.unwrap();

    // The truth is what the database holds (a commit cut by the stop is
    // either there or not).
    let rows = server
        .db()
        .await
        .query("SELECT id FROM events ORDER BY id", &[])
        .await
        .unwrap();
    let expected: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert!(
        expected.len() > 50,
        "the writer wrote {} rows",
        expected.len()
    );
    let mut received = Vec::new();
    for _ in 0..expected.len() {
        received.push(
            client.next_item("e", "changes").await["row"]["id"]
                .as_i64()
                .unwrap(),
        );
    }
    assert_eq!(received, expected);
    client.assert_quiet(Duration::from_millis(300)).await;
    assert!(server.metric("tidewire_listener_reconnects_total").await >= 1.0);
}

#[tokio::test]
async fn start_up_waits_for_an_unreachable_database() {
    let _outage = OUTAGE.lock().await;
    let url = fresh_database().await;
    stop_postgres().await;
    let mut config = Config::for_database(url);
    config.connect_timeout = Duration::from_secs(30);
    let preparing = tokio::spawn(App::prepare(config));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !preparing.is_finished(),
        "start-up gave up instead of retrying"
    );
    start_postgres().await;
    let app = tokio::time::timeout(WAIT, preparing)
        .await
        .expect("start-up did not finish once Postgres was back")
        .unwrap();
    assert!(app.is_ok());

    // With a short patience it reports the outage instead of hanging.
    let url = fresh_database().await;
    stop_postgres().await;
    let mut config = Config::for_database(url);
    config.connect_timeout = Duration::from_millis(500);
    let result = App::prepare(config).await;
    start_postgres().await;
    let error = result
        .err()
        .expect("start-up must fail without a database")
        .to_string();
    assert!(error.contains("database unreachable"), "{error}");
}
