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

#[tokio::test]
async fn start_up_fails_at_once_when_retrying_cannot_help() {
    // The cluster must be up: only then is the refusal about the URL.
    let _outage = OUTAGE.lock().await;
    let pg = cluster();
    let wrong_password = format!("postgres://postgres:wrong@127.0.0.1:{}/postgres", pg.port());
    let cases = [
        (pg.url("no_such_database"), "does not exist"),
        (wrong_password, "password authentication failed"),
        (
            "postgres://postgres@127.0.0.1:notaport/x".to_owned(),
            "invalid connection string",
        ),
    ];
    for (url, expected) in cases {
        // The default --connect-timeout (60s) must not come into play.
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(WAIT, App::prepare(Config::for_database(url)))
            .await
            .unwrap_or_else(|_| panic!("start-up kept retrying ({expected})"));
        let error = result.err().expect("start-up must fail").to_string();
        assert!(error.contains(expected), "{error}");
        assert!(started.elapsed() < Duration::from_secs(3), "{error}");
    }
}

/// The `tidewire` binary serving with `DATABASE_URL` on a port where
/// nothing listens, its log lines on a pipe.
fn tidewire_without_database(extra_env: &[(&str, &str)]) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidewire"));
    command
        .env(
            "DATABASE_URL",
            "postgres://postgres:pw@127.0.0.1:1/tidewire",
        )
        .env(
            "TIDEWIRE_JWT_SECRET",
            "a-secret-of-at-least-32-characters-0001",
        )
        .env("TIDEWIRE_LISTEN", "127.0.0.1:0")
        .env("TIDEWIRE_LOG", "info")
        .env_remove("TIDEWIRE_LOG_FORMAT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    for (name, value) in extra_env {
        command.env(name, value);
    }
    command.spawn().expect("starting the tidewire binary")
}

/// The first line of `child`'s log that contains `text`.
async fn log_line(child: &mut tokio::process::Child, text: &str) -> String {
    use tokio::io::AsyncBufReadExt;
    let stdout = child.stdout.as_mut().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    tokio::time::timeout(WAIT, async {
        loop {
            let line = lines.next_line().await.unwrap().expect("tidewire exited");
            if line.contains(text) {
                return line;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no log line with {text:?}"))
}

#[tokio::test]
async fn ctrl_c_ends_the_wait_for_an_unreachable_database() {
    let mut child = tidewire_without_database(&[]);
    let line = log_line(&mut child, "retrying").await;
    // It names the cause, and a pipe gets no colour codes.
    assert!(line.contains("Connection refused"), "{line}");
    assert!(!line.contains('\u{1b}'), "escape codes in a pipe: {line:?}");

    let pid = child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(3), child.wait())
        .await
        .expect("Ctrl-C did not end the wait for the database")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let mut child = tidewire_without_database(&[("TIDEWIRE_LOG_FORMAT", "json")]);
    let line = log_line(&mut child, "retrying").await;
    let entry: serde_json::Value = serde_json::from_str(&line).expect(&line);
    assert_eq!(entry["level"], "WARN", "{line}");
    assert_eq!(
        entry["fields"]["message"], "database unreachable, retrying",
        "{line}"
    );
    assert!(
        entry["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("Connection refused")),
        "{line}"
    );
}

#[tokio::test]
async fn a_subscription_started_while_postgres_is_down_is_unavailable() {
    let _outage = OUTAGE.lock().await;
    let server = TestServer::start().await;
    server.track_events().await;
    let mut client = server.subscribe_events().await;
    server.sql("INSERT INTO events VALUES (1)").await;
    let cursor = client.next_item("e", "changes").await["cursor"].clone();

    stop_postgres().await;
    // Either answer is fine while Postgres is down: wait like a running
    // stream (the tracked table's description may be remembered), or a
    // retryable UNAVAILABLE. Never INTERNAL.
    let mut late = server.ws().await;
    // Resuming, and a new shape (joining `client`'s running execution
    // would need no database).
    let resume = serde_json::json!({"table": "events", "after": cursor});
    let fresh = serde_json::json!({"table": "events", "where": {"id": 2}});
    late.subscribe("a", common::CHANGES, resume).await;
    late.subscribe("n", common::CHANGES, fresh).await;
    let mut refused = Vec::new();
    while let Some(message) = late.try_next_message(Duration::from_secs(3)).await {
        assert_eq!(message["type"], "error", "{message}");
        assert_eq!(
            message["payload"][0]["extensions"]["code"], "UNAVAILABLE",
            "{message}"
        );
        refused.push(message["id"].as_str().unwrap_or_default().to_owned());
    }
    start_postgres().await;
    server.wait_ready().await;
    server.sql("INSERT INTO events VALUES (2)").await;
    // What waited is served once Postgres is back.
    for id in ["a", "n"] {
        if !refused.iter().any(|r| r == id) {
            assert_eq!(late.next_item(id, "changes").await["row"]["id"], 2, "{id}");
        }
    }
    server.wait_ready().await;
}
