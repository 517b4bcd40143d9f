//! The TypeScript client helper (`clients/live-rows`) against the real
//! server across a restart: a node script runs the helper through
//! graphql-ws and reports what it shows; rows are written before, during
//! and after a server outage; the helper's final set must equal the table,
//! with no row shown twice, one snapshot only (it resumed with `after`),
//! and nothing replayed.
//!
//! Needs Node.js 20+ and npm. When `clients/live-rows/node_modules` is
//! missing this test runs `npm ci`, and `npm run build` when the compiled
//! JavaScript is missing or older than its sources.

mod common;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, SystemTime},
};

use common::*;
use serde_json::Value;
use tokio::sync::mpsc;

/// How long to wait for one expected line from the driver.
const DRIVER_WAIT: Duration = Duration::from_secs(20);
/// Rows in the table before the helper starts: three `SNAPSHOT` pages.
const INITIAL_ROWS: i64 = 1200;

fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/live-rows")
}

/// Runs `program args` in `dir`; panics with its name when it fails.
fn run(dir: &Path, program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap_or_else(|e| panic!("running {program} {}: {e}", args.join(" ")));
    assert!(
        status.success(),
        "`{program} {}` in {} failed: {status}",
        args.join(" "),
        dir.display()
    );
}

/// Panics with a clear message unless `program --version` runs.
fn require(program: &str) {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "this test runs the TypeScript client helper in clients/live-rows and needs \
         `{program}` (Node.js 20+ and npm) on PATH: install them, e.g. \
         `apt-get install -y nodejs npm`"
    );
}

fn modified(path: &Path) -> Option<SystemTime> {
    path.metadata().and_then(|m| m.modified()).ok()
}

/// The newest modification time of the helper's sources.
fn newest_source(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    for file in ["package.json", "package-lock.json", "tsconfig.json"] {
        newest = newest.max(modified(&dir.join(file)).unwrap_or(newest));
    }
    for folder in ["src", "test"] {
        for entry in std::fs::read_dir(dir.join(folder)).unwrap().flatten() {
            newest = newest.max(modified(&entry.path()).unwrap_or(newest));
        }
    }
    newest
}

/// Installs and builds the helper when needed; the driver script's path.
fn built_driver() -> PathBuf {
    let dir = client_dir();
    require("node");
    let compiled = [
        dir.join("dist/src/liveRows.js"),
        dir.join("dist/test/restart-driver.js"),
    ];
    let built_at = compiled.iter().map(|p| modified(p)).min().flatten();
    let installed = dir.join("node_modules/.package-lock.json").exists();
    if !installed || built_at.is_none_or(|at| at < newest_source(&dir)) {
        require("npm");
        if !installed {
            run(&dir, "npm", &["ci", "--no-audit", "--no-fund"]);
        }
        run(&dir, "npm", &["run", "build"]);
    }
    compiled[1].clone()
}

/// The node script running the helper, and the JSON lines it prints.
struct Driver {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<Value>,
    /// Every line read so far.
    seen: Vec<Value>,
}

impl Driver {
    fn spawn(script: &Path, url: &str) -> Driver {
        let mut child = Command::new("node")
            .arg(script)
            .arg(url)
            .arg("items")
            .current_dir(client_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting node");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("driver printed `{line}`: {e}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Driver {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").expect("writing to the driver");
        self.stdin.flush().unwrap();
    }

    /// Reads lines until one satisfies `wanted`; returns it.
    async fn until(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        loop {
            let line = tokio::time::timeout(DRIVER_WAIT, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("the driver never reported {what}"))
                .unwrap_or_else(|| panic!("the driver exited before reporting {what}"));
            self.seen.push(line.clone());
            if wanted(&line) {
                return line;
            }
        }
    }

    /// Waits until the helper shows row `id` (inserted after READY).
    async fn until_shown(&mut self, id: i64) {
        let key = format!("[{id}]");
        self.until(&format!("the insert of {key}"), |line| {
            line["event"] == "insert" && line["key"] == key.as_str()
        })
        .await;
    }

    fn events(&self, event: &str) -> Vec<&Value> {
        self.seen.iter().filter(|l| l["event"] == event).collect()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A mix of writes: single and multi-row inserts, updates, deletes, and a
/// transaction touching several rows, all around ids `base..base+100`.
async fn write_batch(db: &tokio_postgres::Client, base: i64) {
    db.batch_execute(&format!(
        "INSERT INTO items (id, name) SELECT g, 'new ' || g FROM generate_series({base}, {base} + 49) g;
         UPDATE items SET n = n + 1, name = name || '+' WHERE id % 7 = {m};
         DELETE FROM items WHERE id BETWEEN {base} + 40 AND {base} + 44;
         DELETE FROM items WHERE id % 97 = {m};
         BEGIN;
         INSERT INTO items (id, name) VALUES ({base} + 60, 'in a transaction');
         UPDATE items SET n = -1 WHERE id = {base} + 60;
         UPDATE items SET id = {base} + 61 WHERE id = {base} + 1;
         COMMIT;",
        m = base % 7,
    ))
    .await
    .unwrap();
    for id in base + 70..base + 80 {
        db.execute(
            "INSERT INTO items (id, name) VALUES ($1, 'one by one')",
            &[&id],
        )
        .await
        .unwrap();
    }
}

async fn table(db: &tokio_postgres::Client) -> HashMap<i64, Value> {
    db.query("SELECT id, to_jsonb(t) FROM items t", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[tokio::test]
async fn the_client_helper_shows_the_table_exactly_across_a_server_restart() {
    let script = built_driver();
    let server = TestServer::start().await;
    server
        .sql(&format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, n int NOT NULL DEFAULT 0);
             INSERT INTO items (id, name) SELECT g, 'row ' || g FROM generate_series(1, {INITIAL_ROWS}) g;
             SELECT tidewire.track('items', public => true);"
        ))
        .await;
    let mut driver = Driver::spawn(&script, &format!("ws://{}/graphql", server.addr));
    let reset = driver
        .until("the snapshot", |l| l["event"] == "reset")
        .await;
    assert_eq!(reset["size"], INITIAL_ROWS);

    // Live: writes while the helper is connected.
    let db = server.db().await;
    write_batch(&db, 10_000).await;
    db.execute(
        "INSERT INTO items (id, name) VALUES (900001, 'sentinel')",
        &[],
    )
    .await
    .unwrap();
    driver.until_shown(900_001).await;

    // Down: the server stops (sockets close with 1001); writes go on.
    let (addr, database_url) = (server.addr, server.database_url.clone());
    server.shutdown().await;
    let closed = driver
        .until("the closed connection", |l| l["event"] == "error")
        .await;
    assert_eq!(closed["willRetry"], true, "{closed}");
    write_batch(&db, 20_000).await;
    // Let the helper fail to reconnect a few times.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Up again at the same address: the helper resumes with `after`.
    let server = TestServer::start_at(database_url, addr, |_| {}).await;
    write_batch(&db, 30_000).await;
    db.execute(
        "INSERT INTO items (id, name) VALUES (900002, 'sentinel')",
        &[],
    )
    .await
    .unwrap();
    driver.until_shown(900_002).await;

    driver.send("dump");
    let state = driver.until("its state", |l| l["event"] == "state").await;
    let shown: HashMap<i64, Value> = state["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row["id"].as_i64().unwrap(), row.clone()))
        .collect();
    assert_eq!(
        shown.len(),
        state["rows"].as_array().unwrap().len(),
        "a row twice"
    );
    let expected = table(&db).await;
    assert_eq!(shown.len(), expected.len());
    assert!(shown == expected, "the helper's set differs from the table");
    assert_eq!(state["violations"], serde_json::json!([]), "{state:#}");
    let stats = &state["stats"];
    for counter in [
        "replaysSkipped",
        "duplicateInserts",
        "missingUpdates",
        "missingDeletes",
        "duplicateSnapshotRows",
        "unexpectedItems",
    ] {
        assert_eq!(stats[counter], 0, "{counter}: {stats}");
    }
    assert_eq!(stats["snapshots"], 1, "one snapshot: it resumed, {stats}");
    let subscribes = driver.events("subscribe");
    eprintln!(
        "{} subscriptions, {} errors, stats {stats}",
        subscribes.len(),
        driver.events("error").len()
    );
    assert!(subscribes.len() >= 2, "it subscribed again");
    assert!(subscribes[0]["after"].is_null());
    assert!(
        subscribes[1..].iter().all(|s| s["after"].is_string()),
        "every resubscription resumed with after: {subscribes:?}"
    );
    assert_eq!(state["status"], "live");

    driver.send("exit");
    server.shutdown().await;
}
