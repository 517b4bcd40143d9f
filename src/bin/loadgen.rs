//! Load generator for Tidewire: real WebSocket clients spread over several
//! loopback source addresses and processes, a paced writer, and a check of
//! every delivery. Prints one JSON object per run.
//!
//! Scenarios:
//! - `fanout`: N subscribers of one table, W writers committing R rows/s
//!   for S seconds. Reports deliveries/s, commit→client latency, losses,
//!   duplicates, order, and the server's memory per connection. With
//!   `--chat`, the N subscribers are members of one chat room (`chatRoom`)
//!   and the writers post messages to it; with `--live`, they hold the
//!   table as a live set (`liveRows`).
//! - `snapshot`: time from `liveRows` to `READY` over a table of N rows.
//! - `ingest`: rows/s through `POST /streams/metrics`.
//! - `upload`: MiB/s through `POST /streams/uploads`, and the server's
//!   memory while it runs.
//! - `churn`: connect + `connection_init` + `subscribe` as fast as possible.
//! - `writes`: W writers committing as fast as possible, one subscriber
//!   checking that nothing is lost.
//!
//! Before measuring, probe rows (`writer` -1) are written until every
//! subscription has received one, so none misses the first measured rows.
//!
//! Targets only 127.0.0.0/8; every loop is bounded in count and time.

use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::{
    client::IntoClientRequest, http::HeaderValue, protocol::WebSocketConfig, Message,
};

const TABLE: &str = "loadgen_events";
/// Histogram buckets of 100 µs up to 2 s; the last one holds the rest.
const BUCKET_US: u64 = 100;
const BUCKETS: usize = 20_000;
/// How long a subscriber keeps reading after its last expected row, so a
/// late duplicate is counted rather than left unread.
const QUIET: Duration = Duration::from_millis(250);
/// The `writer` of probe rows, which only show that a subscription is live.
const PROBE_WRITER: i32 = -1;

#[derive(Parser)]
#[command(about = "Tidewire load generator (loopback only)")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Subscribers × paced commits; every delivery checked.
    Fanout(FanoutArgs),
    /// Connection churn: connect + init + subscribe per second.
    Churn(ChurnArgs),
    /// Write throughput from concurrent writers, nothing lost.
    Writes(WritesArgs),
    /// Time to a complete `liveRows` snapshot.
    Snapshot(SnapshotArgs),
    /// Metrics rows/s through `POST /streams/metrics`.
    Ingest(IngestArgs),
    /// One large upload through `POST /streams/uploads`.
    Upload(UploadArgs),
    /// (internal) one client process of `fanout` or `churn`.
    Client(ClientArgs),
}

#[derive(Args, Clone)]
struct Target {
    /// Tidewire's address.
    #[arg(long, default_value = "127.0.0.1:4000")]
    server: SocketAddrV4,
    /// Postgres the server uses (to create the table and write).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Server process id, to read its memory (VmRSS) before and after.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Args)]
struct FanoutArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Commits per second over all writers.
    #[arg(long, default_value_t = 20)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 1)]
    writers: usize,
    /// Client processes (each holds subscribers / processes sockets).
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Loopback source addresses 127.0.0.2 … (spreads the port range).
    #[arg(long, default_value_t = 4)]
    sources: u8,
    /// Extra seconds to wait for the last deliveries.
    #[arg(long, default_value_t = 30)]
    drain: u64,
    /// Sign each client in as its own user, with a token signed HS256 with
    /// this secret (the server's --jwt-secret); without it clients are
    /// anonymous.
    #[arg(long)]
    sign_in_with: Option<String>,
    /// Subscribe every client to one chat room it is a member of
    /// (`chatRoom`), and post the writers' messages there, instead of a
    /// table's `changes`. Needs --sign-in-with: members are users.
    #[arg(long)]
    chat: bool,
    /// Subscribe with `liveRows` (snapshot, READY, then the set's changes)
    /// instead of `changes`.
    #[arg(long, conflicts_with = "chat")]
    live: bool,
}

#[derive(Args)]
struct IngestArgs {
    #[arg(long, default_value = "127.0.0.1:4000")]
    server: SocketAddrV4,
    #[arg(long)]
    server_pid: Option<u32>,
    /// The server's --jwt-secret, to sign the token.
    #[arg(long)]
    sign_in_with: String,
    /// Rows over all requests.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Requests at once.
    #[arg(long, default_value_t = 2)]
    requests: usize,
}

#[derive(Args)]
struct UploadArgs {
    #[arg(long, default_value = "127.0.0.1:4000")]
    server: SocketAddrV4,
    #[arg(long)]
    server_pid: Option<u32>,
    /// The server's --jwt-secret, to sign the token.
    #[arg(long)]
    sign_in_with: String,
    #[arg(long, default_value_t = 1024)]
    mebibytes: usize,
    #[arg(long, default_value_t = 256)]
    chunk_kib: usize,
}

#[derive(Args)]
struct SnapshotArgs {
    #[command(flatten)]
    target: Target,
    /// Rows in the table, all of which match.
    #[arg(long, default_value_t = 10_000)]
    rows: i64,
    /// Measurements, each after the server's kept snapshot expired.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

#[derive(Args)]
struct ChurnArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 10000)]
    connections: usize,
    #[arg(long, default_value_t = 2)]
    processes: usize,
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Connections each process opens at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

#[derive(Args)]
struct WritesArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 8)]
    writers: usize,
    #[arg(long, default_value_t = 5000)]
    commits_per_writer: u64,
    /// Wait for each commit's WAL flush (synchronous_commit = on); by
    /// default off, so the pipeline is measured rather than the disk.
    #[arg(long)]
    durable: bool,
}

#[derive(Args, Clone)]
struct ClientArgs {
    #[arg(long)]
    server: SocketAddrV4,
    #[arg(long)]
    subscribers: usize,
    /// First source address is 127.0.0.(2 + source_offset).
    #[arg(long, default_value_t = 0)]
    source_offset: u8,
    #[arg(long, default_value_t = 1)]
    sources: u8,
    /// Rows each subscriber must receive (0 for churn).
    #[arg(long, default_value_t = 0)]
    expect: u64,
    #[arg(long, default_value_t = 1)]
    writers: usize,
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Churn mode: measure connect + init + subscribe, then close.
    #[arg(long)]
    churn: bool,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Sign each socket in as its own user (see `fanout --sign-in-with`).
    #[arg(long)]
    sign_in_with: Option<String>,
    /// Subscribe to this chat room instead of the table (see `fanout
    /// --chat`).
    #[arg(long)]
    chat_room: Option<i64>,
    /// Subscribe with `liveRows` (see `fanout --live`).
    #[arg(long)]
    live: bool,
}

/// What one client process saw.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ClientReport {
    subscribers: usize,
    /// Sockets that got `connection_ack` and subscribed.
    opened: u64,
    /// Rows delivered, counted as they arrived (duplicates included).
    received: u64,
    /// Fewest and most rows one subscriber received.
    received_min: u64,
    received_max: u64,
    missing: u64,
    duplicates_or_out_of_order: u64,
    histogram: Vec<u64>,
    last_delivery_unix_us: u64,
    setup_seconds: f64,
    failed_connections: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.scenario {
        Scenario::Fanout(args) => runtime.block_on(fanout(args)),
        Scenario::Churn(args) => runtime.block_on(churn(args)),
        Scenario::Writes(args) => runtime.block_on(writes(args)),
        Scenario::Snapshot(args) => runtime.block_on(snapshot(args)),
        Scenario::Ingest(args) => runtime.block_on(ingest(args)),
        Scenario::Upload(args) => runtime.block_on(upload(args)),
        Scenario::Client(args) => runtime.block_on(client_process(args)),
    }
}

async fn fanout(args: FanoutArgs) -> anyhow::Result<()> {
    let db = prepare_table(&args.target.database_url).await?;
    let rss_idle = args.target.server_pid.and_then(rss_bytes);
    let expect = args.rate * args.seconds;
    let per_process = args.subscribers.div_ceil(args.processes);
    let sources_each = (args.sources / args.processes as u8).max(1);
    if args.live {
        // A small set to start from: every subscriber's snapshot is the
        // table, and what is measured is the changes after it.
        db.batch_execute(&format!("TRUNCATE {TABLE}")).await?;
    }
    let room = if args.chat {
        if args.sign_in_with.is_none() {
            bail!("--chat needs --sign-in-with: the room's members are users");
        }
        let room: i64 = db
            .query_one(
                "INSERT INTO tidewire.rooms (name, owner_id) VALUES ('loadgen', 'bench-writer')
                 RETURNING id",
                &[],
            )
            .await?
            .get(0);
        for i in 0..args.processes {
            let n = per_process.min(args.subscribers - i * per_process) as i64;
            // The users `client` signs in as: bench-<source offset>-<i>.
            db.execute(
                "INSERT INTO tidewire.room_members (room_id, user_id)
                 SELECT $1, 'bench-' || $2::text || '-' || g FROM generate_series(0, $3::bigint - 1) g",
                &[&room, &(i as u8 * sources_each).to_string(), &n],
            )
            .await?;
        }
        Some(room)
    } else {
        None
    };
    let mut children = Vec::new();
    for i in 0..args.processes {
        let n = per_process.min(args.subscribers - i * per_process);
        children.push(spawn_client(&ClientArgs {
            server: args.target.server,
            subscribers: n,
            source_offset: i as u8 * sources_each,
            sources: sources_each,
            expect,
            writers: args.writers,
            timeout: args.seconds + args.drain + 120,
            churn: false,
            concurrency: 64,
            sign_in_with: args.sign_in_with.clone(),
            chat_room: room,
            live: args.live,
        })?);
    }
    for child in &mut children {
        child.wait_for("ready")?;
    }
    wait_until_live(&args.target.database_url, room, &mut children).await?;
    let rss_held = args.target.server_pid.and_then(rss_bytes);

    let cpu_before = args.target.server_pid.and_then(cpu_seconds);
    let started = unix_us();
    let write_started = Instant::now();
    write_paced(
        &args.target.database_url,
        room,
        args.writers,
        args.rate,
        args.seconds,
    )
    .await?;
    let write_seconds = write_started.elapsed().as_secs_f64();
    let reports: Vec<ClientReport> = children
        .into_iter()
        .map(|c| c.finish())
        .collect::<Result<_, _>>()?;
    drop(db);

    let cpu_after = args.target.server_pid.and_then(cpu_seconds);
    let merged = merge(&reports);
    let deliveries = merged.received;
    let cpu_us_per_delivery = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) if deliveries > 0 => json!((b - a) * 1e6 / deliveries as f64),
        _ => json!(null),
    };
    let span = (merged.last_delivery_unix_us.saturating_sub(started)) as f64 / 1e6;
    let per_connection = match (rss_idle, rss_held) {
        (Some(a), Some(b)) => json!((b.saturating_sub(a)) as f64 / args.subscribers as f64),
        _ => json!(null),
    };
    let report = json!({
        "scenario": "fanout",
        "subscribers": args.subscribers,
        "commits": expect,
        "rate_target": args.rate,
        "writers": args.writers,
        "write_seconds": write_seconds,
        "commit_rate_achieved": expect as f64 / write_seconds,
        "deliveries": deliveries,
        "deliveries_expected": expect * args.subscribers as u64,
        "deliveries_per_subscriber": {"min": merged.received_min, "max": merged.received_max},
        "opened": merged.opened,
        "deliveries_per_second": deliveries as f64 / span.max(1e-9),
        "missing": merged.missing,
        "duplicates_or_out_of_order": merged.duplicates_or_out_of_order,
        "failed_connections": merged.failed_connections,
        "latency_ms": latency_summary(&merged.histogram),
        "server_rss_idle_bytes": rss_idle,
        "server_rss_held_bytes": rss_held,
        "server_bytes_per_connection": per_connection,
        "server_cpu_us_per_delivery": cpu_us_per_delivery,
        "signed_in": args.sign_in_with.is_some(),
        "stream": if args.chat { "chatRoom" } else if args.live { "liveRows" } else { "changes" },
        "processes": args.processes,
        "sources": args.sources,
    });
    println!("{report}");
    Ok(())
}

async fn churn(args: ChurnArgs) -> anyhow::Result<()> {
    let _db = prepare_table(&args.target.database_url).await?;
    let per_process = args.connections.div_ceil(args.processes);
    let sources_each = (args.sources / args.processes as u8).max(1);
    let started = Instant::now();
    let mut children = Vec::new();
    for i in 0..args.processes {
        let n = per_process.min(args.connections - i * per_process);
        children.push(spawn_client(&ClientArgs {
            server: args.target.server,
            subscribers: n,
            source_offset: i as u8 * sources_each,
            sources: sources_each,
            expect: 0,
            writers: 1,
            timeout: 120,
            churn: true,
            concurrency: args.concurrency,
            sign_in_with: None,
            chat_room: None,
            live: false,
        })?);
    }
    let reports: Vec<ClientReport> = children
        .into_iter()
        .map(|c| c.finish())
        .collect::<Result<_, _>>()?;
    let slowest = reports.iter().map(|r| r.setup_seconds).fold(0.0, f64::max);
    let failed: u64 = reports.iter().map(|r| r.failed_connections).sum();
    let opened: u64 = reports.iter().map(|r| r.opened).sum();
    let report = json!({
        "scenario": "churn",
        "connections": args.connections,
        "opened": opened,
        "failed_connections": failed,
        "seconds": slowest,
        "wall_seconds": started.elapsed().as_secs_f64(),
        "connect_init_subscribe_per_second": (args.connections as u64 - failed) as f64 / slowest,
        "processes": args.processes,
    });
    println!("{report}");
    Ok(())
}

async fn writes(args: WritesArgs) -> anyhow::Result<()> {
    let _db = prepare_table(&args.target.database_url).await?;
    let expect = args.commits_per_writer * args.writers as u64;
    let mut checker = spawn_client(&ClientArgs {
        server: args.target.server,
        subscribers: 1,
        source_offset: 0,
        sources: 1,
        expect,
        writers: args.writers,
        timeout: 300,
        churn: false,
        concurrency: 1,
        sign_in_with: None,
        chat_room: None,
        live: false,
    })?;
    checker.wait_for("ready")?;
    wait_until_live(
        &args.target.database_url,
        None,
        std::slice::from_mut(&mut checker),
    )
    .await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..args.writers {
        let url = args.target.database_url.clone();
        let n = args.commits_per_writer;
        let durable = args.durable;
        tasks.push(tokio::spawn(async move {
            let client = tidewire::db::connect_once(&url).await?;
            if !durable {
                client.batch_execute("SET synchronous_commit = off").await?;
            }
            for seq in 1..=n as i64 {
                client
                    .execute(&insert_sql(None), &[&(writer as i32), &seq])
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let report = checker.finish()?;
    println!(
        "{}",
        json!({
            "scenario": "writes",
            "writers": args.writers,
            "commits": expect,
            "seconds": seconds,
            "commits_per_second": expect as f64 / seconds,
            "synchronous_commit": if args.durable { "on" } else { "off" },
            "delivered": report.received,
            "opened": report.opened,
            "missing": report.missing,
            "duplicates_or_out_of_order": report.duplicates_or_out_of_order,
            "latency_ms": latency_summary(&report.histogram),
        })
    );
    Ok(())
}

/// Sends `body` as a chunked `POST path` with `token`, `piece` bytes at a
/// time as `make` produces them; the status and the answer's body.
async fn post_chunked(
    server: SocketAddrV4,
    path: &str,
    token: &str,
    mut make: impl FnMut() -> Option<Vec<u8>>,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {server}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    while let Some(piece) = make() {
        stream
            .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
            .await?;
        stream.write_all(&piece).await?;
        stream.write_all(b"\r\n").await?;
    }
    stream.write_all(b"0\r\n\r\n").await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// `requests` concurrent `POST /streams/metrics` of `rows` rows together.
async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let token = user_token(&args.sign_in_with, "bench-ingest")?;
    let per_request = args.rows / args.requests.max(1) as u64;
    let cpu_before = args.server_pid.and_then(cpu_seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for request in 0..args.requests.max(1) {
        let token = token.clone();
        let server = args.server;
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            post_chunked(server, "/streams/metrics", &token, move || {
                if sent >= per_request {
                    return None;
                }
                // About 64 KiB per piece.
                let mut piece = Vec::with_capacity(70_000);
                while sent < per_request && piece.len() < 64 * 1024 {
                    let name = ["cpu", "latency", "queue", "errors"][(sent % 4) as usize];
                    let value = ((sent * 7919 + request as u64) % 100_000) as f64 / 100.0;
                    let _ = writeln!(
                        piece,
                        "{{\"name\":\"{name}\",\"value\":{value},\"timestamp\":\"2026-11-28T10:00:00.000Z\"}}"
                    );
                    sent += 1;
                }
                Some(piece)
            })
            .await
        }));
    }
    let mut rows = 0u64;
    for task in tasks {
        let (status, body) = task.await??;
        if status != 200 {
            bail!("ingest answered {status}: {body}");
        }
        let answer: serde_json::Value = serde_json::from_str(&body)?;
        rows += answer["rows"].as_u64().unwrap_or(0);
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = match (cpu_before, args.server_pid.and_then(cpu_seconds)) {
        (Some(a), Some(b)) => json!((b - a) * 1e6 / rows.max(1) as f64),
        _ => json!(null),
    };
    println!(
        "{}",
        json!({
            "scenario": "ingest",
            "rows": rows,
            "requests": args.requests,
            "seconds": seconds,
            "rows_per_second": rows as f64 / seconds,
            "server_cpu_us_per_row": cpu,
        })
    );
    Ok(())
}

/// One `POST /streams/uploads` of `mebibytes`, sampling the server's
/// memory while it runs.
async fn upload(args: UploadArgs) -> anyhow::Result<()> {
    use base64::Engine;
    use sha2::Digest;
    let token = user_token(&args.sign_in_with, "bench-upload")?;
    let chunk = args.chunk_kib * 1024;
    let chunks = args.mebibytes * 1024 * 1024 / chunk;
    let rss_before = args.server_pid.and_then(rss_bytes);
    let peak = Arc::new(AtomicU64::new(rss_before.unwrap_or(0)));
    let sampler = args.server_pid.map(|pid| {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                if let Some(rss) = rss_bytes(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    let mut hash = sha2::Sha256::new();
    let mut sequence = 0usize;
    let mut data = vec![0u8; chunk];
    let started = Instant::now();
    let (status, body) = post_chunked(args.server, "/streams/uploads", &token, || {
        if sequence >= chunks {
            return None;
        }
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = ((i * 31 + sequence * 7) % 251) as u8;
        }
        hash.update(&data);
        let line = json!({
            "sequence": sequence,
            "data": base64::engine::general_purpose::STANDARD.encode(&data),
            "timestamp": "2026-11-28T10:00:00Z",
        });
        sequence += 1;
        let mut piece = line.to_string().into_bytes();
        piece.push(b'\n');
        Some(piece)
    })
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    if status != 200 {
        bail!("upload answered {status}: {body}");
    }
    let answer: serde_json::Value = serde_json::from_str(&body)?;
    let local: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if answer["sha256"] != local.as_str() {
        bail!(
            "the server's sha256 {} is not ours {local}",
            answer["sha256"]
        );
    }
    let bytes = (chunks * chunk) as f64;
    println!(
        "{}",
        json!({
            "scenario": "upload",
            "mebibytes": args.mebibytes,
            "chunk_kib": args.chunk_kib,
            "seconds": seconds,
            "mebibytes_per_second": bytes / (1 << 20) as f64 / seconds,
            "server_rss_before_bytes": rss_before,
            "server_rss_peak_bytes": peak.load(Ordering::Relaxed),
            "sha256_verified": true,
        })
    );
    Ok(())
}

/// Fills `loadgen_live` with `args.rows` rows, then times `liveRows` from
/// subscribe to `READY`, `repeat` times, each after the server's kept
/// snapshot (2 s) expired.
async fn snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    let db = tidewire::db::connect_once(&args.target.database_url)
        .await
        .context("connecting to the database")?;
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS loadgen_live;
         CREATE TABLE loadgen_live (id bigint PRIMARY KEY, n int NOT NULL, label text NOT NULL);
         INSERT INTO loadgen_live SELECT g, g % 100, 'row ' || g FROM generate_series(1, {}) g;
         SELECT tidewire.track('loadgen_live', public => true);",
        args.rows
    ))
    .await?;
    let mut seconds = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..args.repeat.max(1) {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let mut ws = open(
            args.target.server,
            Ipv4Addr::new(127, 0, 0, 2),
            None,
            Stream::Changes,
        )
        .await?;
        let cpu_before = args.target.server_pid.and_then(cpu_seconds);
        let started = Instant::now();
        let subscribe = json!({"id": "2", "type": "subscribe", "payload": {
            "query": "subscription { liveRows(table: \"loadgen_live\") { kind rows cursor } }"
        }});
        ws.send(Message::text(subscribe.to_string())).await?;
        let mut rows = 0;
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(120), ws.next())
                .await
                .context("no READY within 2 minutes")?;
            let Some(Ok(Message::Text(text))) = frame else {
                bail!("the socket closed before READY");
            };
            if !text.contains("\"id\":\"2\"") {
                continue;
            }
            if text.contains("\"errors\"") {
                bail!("liveRows failed: {text}");
            }
            if text.contains("\"kind\":\"READY\"") {
                break;
            }
            rows += text.matches("\"label\":").count();
        }
        seconds.push(started.elapsed().as_secs_f64());
        if let (Some(a), Some(b)) = (cpu_before, args.target.server_pid.and_then(cpu_seconds)) {
            cpu.push(b - a);
        }
        if rows as i64 != args.rows {
            bail!("the snapshot held {rows} rows, not {}", args.rows);
        }
        let _ = ws.close(None).await;
    }
    seconds.sort_by(f64::total_cmp);
    let median = seconds[seconds.len() / 2];
    println!(
        "{}",
        json!({
            "scenario": "snapshot",
            "rows": args.rows,
            "seconds_to_ready": {"min": seconds[0], "median": median, "max": seconds[seconds.len() - 1]},
            "rows_per_second": args.rows as f64 / median,
            "server_cpu_seconds": cpu,
        })
    );
    Ok(())
}

/// Creates (or empties) the benchmark table and tracks it.
async fn prepare_table(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let db = tidewire::db::connect_once(url)
        .await
        .context("connecting to the database")?;
    // `written_at`: when the row was written, for live-set latency (a
    // live set's rows carry no commit time).
    db.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, writer int NOT NULL, seq bigint NOT NULL);
         ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS written_at timestamptz NOT NULL DEFAULT clock_timestamp();
         SELECT tidewire.track('{TABLE}', public => true);"
    ))
    .await?;
    Ok(db)
}

/// The statement that writes row (or message) `seq` of `writer` ($1, $2):
/// into the table, or as a message to chat room `room`.
fn insert_sql(room: Option<i64>) -> String {
    match room {
        None => format!("INSERT INTO {TABLE} (writer, seq) VALUES ($1, $2)"),
        Some(room) => format!(
            "INSERT INTO tidewire.messages (room_id, author_id, body)
             VALUES ({room}, 'bench-writer', 'writer=' || $1::int || ' seq=' || $2::bigint)"
        ),
    }
}

/// `writers` connections together commit `rate` rows a second for
/// `seconds`; each writer numbers its rows 1, 2, 3 … in commit order.
async fn write_paced(
    url: &str,
    room: Option<i64>,
    writers: usize,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<()> {
    let total = rate * seconds;
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let url = url.to_owned();
        let share = total / writers as u64 + u64::from((writer as u64) < total % writers as u64);
        let per_second = rate as f64 / writers as f64;
        tasks.push(tokio::spawn(async move {
            let client = tidewire::db::connect_once(&url).await?;
            // Durability is not under test; the pipeline is.
            client.batch_execute("SET synchronous_commit = off").await?;
            let insert = client.prepare(&insert_sql(room)).await?;
            let start = Instant::now();
            for seq in 1..=share as i64 {
                let due = start + Duration::from_secs_f64((seq - 1) as f64 / per_second);
                tokio::time::sleep_until(due.into()).await;
                client.execute(&insert, &[&(writer as i32), &seq]).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Writes probe rows until every client process says each of its
/// subscriptions received one. A subscription the server has accepted may
/// join the hub a moment later, and a stream without `after` starts with
/// the next commit: a fixed pause would lose rows on a busy machine. Bounded
/// by the clients' own timeout, after which they print their report instead.
async fn wait_until_live(
    url: &str,
    room: Option<i64>,
    children: &mut [Child],
) -> anyhow::Result<()> {
    let db = tidewire::db::connect_once(url)
        .await
        .context("connecting to the database")?;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let prober = tokio::spawn(async move {
        loop {
            db.execute(&insert_sql(room), &[&PROBE_WRITER, &0i64])
                .await?;
            tokio::select! {
                _ = &mut stopped => return anyhow::Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    });
    let live =
        tokio::task::block_in_place(|| children.iter_mut().try_for_each(|c| c.wait_for("live")));
    let _ = stop.send(());
    prober.await??;
    live
}

/// User + system CPU seconds the process has used (`/proc/PID/stat`, in
/// the kernel's USER_HZ of 100 ticks a second).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesized command name; utime and stime are the
    // 14th and 15th fields overall.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

struct Child {
    process: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Child {
    /// Waits for the client process to print `word` (`ready`, `live`).
    fn wait_for(&mut self, word: &str) -> anyhow::Result<()> {
        match self.lines.next() {
            Some(Ok(line)) if line == word => Ok(()),
            other => bail!("client process never said {word}: {other:?}"),
        }
    }

    fn finish(mut self) -> anyhow::Result<ClientReport> {
        let line = self
            .lines
            .next()
            .context("client process printed no report")??;
        let _ = self.process.wait();
        Ok(serde_json::from_str(&line)?)
    }
}

fn spawn_client(args: &ClientArgs) -> anyhow::Result<Child> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("client")
        .arg("--server")
        .arg(args.server.to_string())
        .arg("--subscribers")
        .arg(args.subscribers.to_string())
        .arg("--source-offset")
        .arg(args.source_offset.to_string())
        .arg("--sources")
        .arg(args.sources.to_string())
        .arg("--expect")
        .arg(args.expect.to_string())
        .arg("--writers")
        .arg(args.writers.to_string())
        .arg("--timeout")
        .arg(args.timeout.to_string())
        .arg("--concurrency")
        .arg(args.concurrency.to_string());
    if args.churn {
        command.arg("--churn");
    }
    if let Some(secret) = &args.sign_in_with {
        command.arg("--sign-in-with").arg(secret);
    }
    if let Some(room) = args.chat_room {
        command.arg("--chat-room").arg(room.to_string());
    }
    if args.live {
        command.arg("--live");
    }
    let mut process = command.stdout(Stdio::piped()).spawn()?;
    let stdout = process.stdout.take().context("no stdout")?;
    Ok(Child {
        process,
        lines: BufReader::new(stdout).lines(),
    })
}

/// A client process: opens its sockets, says `ready`, checks deliveries,
/// prints its report.
async fn client_process(args: ClientArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let failed = Arc::new(AtomicU64::new(0));
    let setup_started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let mut sockets = Vec::with_capacity(args.subscribers);
    let mut connecting = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let source = Ipv4Addr::new(
            127,
            0,
            0,
            2 + args.source_offset + (i % args.sources as usize) as u8,
        );
        let server = args.server;
        let permit = semaphore.clone().acquire_owned().await?;
        let failed = failed.clone();
        let token = args
            .sign_in_with
            .as_deref()
            .map(|secret| user_token(secret, &format!("bench-{}-{i}", args.source_offset)))
            .transpose()?;
        let stream = Stream::of(args.chat_room, args.live);
        connecting.push(tokio::spawn(async move {
            let result = open(server, source, token, stream).await;
            drop(permit);
            match result {
                Ok(ws) => Some(ws),
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    None
                }
            }
        }));
    }
    for task in connecting {
        if let Some(ws) = task.await? {
            sockets.push(ws);
        }
    }
    let setup_seconds = setup_started.elapsed().as_secs_f64();
    if args.churn {
        let report = ClientReport {
            subscribers: args.subscribers,
            opened: sockets.len() as u64,
            setup_seconds,
            failed_connections: failed.load(Ordering::Relaxed),
            ..ClientReport::default()
        };
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!("ready");
    let opened = sockets.len() as u64;
    if opened == 0 {
        println!("live");
    }
    std::io::stdout().flush()?;

    let stats = Arc::new(Stats {
        unprobed: AtomicU64::new(opened),
        ..Stats::default()
    });
    let mut readers = Vec::new();
    for ws in sockets {
        let (writers, expect, stats) = (args.writers, args.expect, stats.clone());
        let keys = Keys::of(Stream::of(args.chat_room, args.live));
        readers.push(tokio::spawn(read_deliveries(
            ws, keys, writers, expect, deadline, stats,
        )));
    }
    for reader in readers {
        reader.await?;
    }
    let report = ClientReport {
        subscribers: args.subscribers,
        opened,
        received: stats.received.load(Ordering::Relaxed),
        received_min: if opened == 0 {
            0
        } else {
            stats.received_min.load(Ordering::Relaxed)
        },
        received_max: stats.received_max.load(Ordering::Relaxed),
        missing: stats.missing.load(Ordering::Relaxed),
        duplicates_or_out_of_order: stats.disorder.load(Ordering::Relaxed),
        histogram: stats
            .histogram
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect(),
        last_delivery_unix_us: stats.last_delivery.load(Ordering::Relaxed),
        setup_seconds,
        failed_connections: failed.load(Ordering::Relaxed),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Connect from `source`, `connection_init`, wait for the ack, subscribe.
/// A day-long token for `user`, signed HS256 with `secret`.
fn user_token(secret: &str, user: &str) -> anyhow::Result<String> {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 86_400;
    let claims = json!({"sub": user, "role": "user", "exp": exp});
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &key,
    )?)
}

async fn open(
    server: SocketAddrV4,
    source: Ipv4Addr,
    token: Option<String>,
    what: Stream,
) -> anyhow::Result<Socket> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))?;
    let stream = socket.connect(SocketAddr::V4(server)).await?;
    let mut request = format!("ws://{server}/graphql").into_client_request()?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
    let init = match token {
        Some(token) => json!({
            "type": "connection_init",
            "payload": {"authorization": format!("Bearer {token}")},
        }),
        None => json!({"type": "connection_init"}),
    };
    ws.send(Message::text(init.to_string())).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.contains("connection_ack") => break,
            Some(Ok(_)) => continue,
            _ => bail!("no connection_ack"),
        }
    }
    // Identical, with `cursor`: the server runs one shared execution for
    // all of them, as it does for real clients that can resume.
    let query = match what {
        Stream::Changes => {
            format!("subscription {{ changes(table: \"{TABLE}\") {{ cursor row committedAt }} }}")
        }
        Stream::Chat(room) => {
            format!("subscription {{ chatRoom(roomId: \"{room}\") {{ cursor text createdAt }} }}")
        }
        Stream::Live => {
            format!("subscription {{ liveRows(table: \"{TABLE}\") {{ kind rows cursor }} }}")
        }
    };
    let subscribe = json!({"id": "1", "type": "subscribe", "payload": {"query": query}});
    ws.send(Message::text(subscribe.to_string())).await?;
    Ok(ws)
}

/// What the clients subscribe to.
#[derive(Clone, Copy)]
enum Stream {
    Changes,
    Chat(i64),
    Live,
}

impl Stream {
    fn of(room: Option<i64>, live: bool) -> Stream {
        match (room, live) {
            (Some(room), _) => Stream::Chat(room),
            (None, true) => Stream::Live,
            (None, false) => Stream::Changes,
        }
    }
}

/// Where a delivery says which writer wrote it, its sequence number, and
/// when it was stored.
#[derive(Clone, Copy)]
struct Keys {
    writer: &'static str,
    seq: &'static str,
    at: &'static str,
    /// Items to pass over (a live set's snapshot and READY).
    skip: &'static [&'static str],
}

impl Keys {
    fn of(stream: Stream) -> Keys {
        match stream {
            // A row of the table: {"writer":1,"seq":2,…}, and its commit time.
            Stream::Changes => Keys {
                writer: "\"writer\":",
                seq: "\"seq\":",
                at: "\"committedAt\":\"",
                skip: &[],
            },
            // A message whose text is "writer=1 seq=2", and when it was stored.
            Stream::Chat(_) => Keys {
                writer: "writer=",
                seq: " seq=",
                at: "\"createdAt\":\"",
                skip: &[],
            },
            // A row of the live set, with the time it was written.
            Stream::Live => Keys {
                writer: "\"writer\":",
                seq: "\"seq\":",
                at: "\"written_at\":\"",
                skip: &["\"kind\":\"SNAPSHOT\"", "\"kind\":\"READY\""],
            },
        }
    }
}

/// Counters shared by one process's sockets.
struct Stats {
    /// Sockets that have not yet received a probe row; at zero the process
    /// says `live`.
    unprobed: AtomicU64,
    received: AtomicU64,
    /// Fewest and most rows one socket received.
    received_min: AtomicU64,
    received_max: AtomicU64,
    missing: AtomicU64,
    disorder: AtomicU64,
    last_delivery: AtomicU64,
    histogram: Vec<AtomicU64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            unprobed: AtomicU64::new(0),
            received: AtomicU64::new(0),
            received_min: AtomicU64::new(u64::MAX),
            received_max: AtomicU64::new(0),
            missing: AtomicU64::new(0),
            disorder: AtomicU64::new(0),
            last_delivery: AtomicU64::new(0),
            histogram: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// Reads until every writer's sequence has reached its end, `expect` rows
/// in all (or the deadline), then for [`QUIET`] more; checks that each
/// writer's sequence numbers arrive exactly once and in order. Every row
/// that arrives is counted, so a duplicate shows in `received` as well.
async fn read_deliveries(
    mut ws: Socket,
    keys: Keys,
    writers: usize,
    expect: u64,
    deadline: Instant,
    stats: Arc<Stats>,
) {
    let mut next_seq = vec![1i64; writers];
    let mut received = 0;
    // Rows of the sequences passed so far: received in order or skipped.
    let mut passed = 0;
    let mut missing = 0;
    let mut probed = false;
    let mut until = deadline;
    loop {
        if passed >= expect {
            until = until.min(Instant::now() + QUIET);
        }
        let frame = match tokio::time::timeout_at(until.into(), ws.next()).await {
            Ok(Some(Ok(frame))) => frame,
            _ => break,
        };
        let Message::Text(text) = frame else { continue };
        if keys.skip.iter().any(|skip| text.contains(skip)) {
            continue;
        }
        let now = unix_us();
        let (Some(writer), Some(seq), Some(committed)) = (
            field_i64(&text, keys.writer),
            field_i64(&text, keys.seq),
            field_str(&text, keys.at),
        ) else {
            continue;
        };
        if writer == i64::from(PROBE_WRITER) {
            if !probed && stats.unprobed.fetch_sub(1, Ordering::Relaxed) == 1 {
                println!("live");
                let _ = std::io::stdout().flush();
            }
            probed = true;
            continue;
        }
        received += 1;
        stats.received.fetch_add(1, Ordering::Relaxed);
        stats.last_delivery.fetch_max(now, Ordering::Relaxed);
        match next_seq.get_mut(writer as usize) {
            Some(expected) if seq == *expected => {
                *expected += 1;
                passed += 1;
            }
            Some(expected) if seq > *expected => {
                missing += (seq - *expected) as u64;
                passed += (seq - *expected) as u64 + 1;
                *expected = seq + 1;
            }
            _ => {
                stats.disorder.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Ok(at) = chrono::DateTime::parse_from_rfc3339(committed) {
            let committed_us = at.timestamp_micros().max(0) as u64;
            let bucket = (now.saturating_sub(committed_us) / BUCKET_US) as usize;
            stats.histogram[bucket.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        }
    }
    missing += expect.saturating_sub(passed);
    stats.missing.fetch_add(missing, Ordering::Relaxed);
    stats.received_min.fetch_min(received, Ordering::Relaxed);
    stats.received_max.fetch_max(received, Ordering::Relaxed);
    let _ = ws.close(None).await;
}

fn field_i64(text: &str, key: &str) -> Option<i64> {
    let rest = &text[text.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit() && c != '-')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn field_str<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let rest = &text[text.find(key)? + key.len()..];
    Some(&rest[..rest.find('"')?])
}

fn merge(reports: &[ClientReport]) -> ClientReport {
    let mut merged = ClientReport {
        histogram: vec![0; BUCKETS],
        ..ClientReport::default()
    };
    for r in reports {
        merged.subscribers += r.subscribers;
        merged.opened += r.opened;
        merged.received += r.received;
        merged.received_max = merged.received_max.max(r.received_max);
        merged.missing += r.missing;
        merged.duplicates_or_out_of_order += r.duplicates_or_out_of_order;
        merged.failed_connections += r.failed_connections;
        merged.last_delivery_unix_us = merged.last_delivery_unix_us.max(r.last_delivery_unix_us);
        for (a, b) in merged.histogram.iter_mut().zip(&r.histogram) {
            *a += b;
        }
    }
    merged.received_min = reports
        .iter()
        .filter(|r| r.opened > 0)
        .map(|r| r.received_min)
        .min()
        .unwrap_or(0);
    merged
}

/// Percentiles from the histogram (upper edge of the bucket), in ms.
fn latency_summary(histogram: &[u64]) -> serde_json::Value {
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return json!(null);
    }
    let at = |q: f64| {
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in histogram.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return (i as u64 + 1) as f64 * BUCKET_US as f64 / 1000.0;
            }
        }
        f64::INFINITY
    };
    json!({"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "p999": at(0.999), "max": at(1.0), "samples": total})
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
