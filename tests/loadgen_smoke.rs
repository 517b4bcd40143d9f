//! A bounded smoke run of the load generator against a test server, so the
//! benchmark tool cannot rot. The real figures are in BENCHMARKS.md.
//!
//! Each scenario is checked against what its clients observed (rows counted
//! as they arrived, each writer's sequence checked) and what the database
//! holds, never against figures the load generator derives from its own
//! arguments, and never against speed.

mod common;

use common::{wait_for_metric, TestServer};
use serde_json::Value;

fn loadgen(args: &[&str]) -> Value {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .expect("running loadgen");
    assert!(
        output.status.success(),
        "loadgen failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().expect("a JSON line")).unwrap()
}

/// Rows the load generator's writers committed so far, as the database
/// holds them (writer -1 marks its probes, written before measuring).
async fn rows_written(server: &TestServer) -> u64 {
    let count: i64 = server
        .db()
        .await
        .query_one("SELECT count(*) FROM loadgen_events WHERE writer >= 0", &[])
        .await
        .unwrap()
        .get(0);
    count as u64
}

/// The commit→client latency summary covers every delivery (each carried a
/// readable `committedAt`), and its percentiles are in order.
fn assert_latency_plausible(report: &Value, deliveries: u64) {
    let latency = &report["latency_ms"];
    assert_eq!(latency["samples"], deliveries, "{report}");
    let figure = |name: &str| {
        latency[name]
            .as_f64()
            .unwrap_or_else(|| panic!("latency {name} missing: {report}"))
    };
    let figures = ["p50", "p90", "p99", "p999", "max"].map(figure);
    assert!(figures[0] > 0.0, "{report}");
    assert!(figures[4].is_finite(), "{report}");
    assert!(
        figures.windows(2).all(|pair| pair[0] <= pair[1]),
        "p50 ≤ p90 ≤ p99 ≤ p999 ≤ max: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_churn_and_writes_check_every_delivery() {
    const SUBSCRIBERS: u64 = 40;
    const CONNECTIONS: u64 = 200;
    let server = TestServer::start().await;
    let addr = server.addr.to_string();
    let url = server.database_url.clone();

    let fanout = tokio::task::spawn_blocking({
        let (addr, url) = (addr.clone(), url.clone());
        move || {
            loadgen(&[
                "fanout",
                "--server",
                &addr,
                "--database-url",
                &url,
                "--subscribers",
                &SUBSCRIBERS.to_string(),
                "--rate",
                "100",
                "--seconds",
                "2",
                "--writers",
                "2",
                "--processes",
                "2",
                "--sources",
                "2",
            ])
        }
    })
    .await
    .unwrap();
    let rows = rows_written(&server).await;
    assert_eq!(rows, 100 * 2, "the writers committed 100/s for 2 s");
    assert_eq!(fanout["opened"], SUBSCRIBERS, "{fanout}");
    assert_eq!(fanout["failed_connections"], 0, "{fanout}");
    // Every subscriber received every committed row once: counted as they
    // arrived, duplicates included.
    assert_eq!(fanout["deliveries"], rows * SUBSCRIBERS, "{fanout}");
    assert_eq!(fanout["deliveries_per_subscriber"]["min"], rows, "{fanout}");
    assert_eq!(fanout["deliveries_per_subscriber"]["max"], rows, "{fanout}");
    assert_eq!(fanout["missing"], 0, "{fanout}");
    assert_eq!(fanout["duplicates_or_out_of_order"], 0, "{fanout}");
    assert_latency_plausible(&fanout, rows * SUBSCRIBERS);
    // Identical subscriptions shared their execution (what the benchmark
    // measures); one falling behind may run alone for a while.
    let executions = server
        .metric("tidewire_subscription_executions_total")
        .await;
    assert!(
        executions < SUBSCRIBERS as f64,
        "{executions} executions for {SUBSCRIBERS} identical subscriptions"
    );

    let churn = tokio::task::spawn_blocking({
        let (addr, url) = (addr.clone(), url.clone());
        move || {
            loadgen(&[
                "churn",
                "--server",
                &addr,
                "--database-url",
                &url,
                "--connections",
                &CONNECTIONS.to_string(),
                "--processes",
                "2",
                "--sources",
                "2",
            ])
        }
    })
    .await
    .unwrap();
    // Each connection was acknowledged by the server, and once the clients
    // left the server holds none of them.
    assert_eq!(churn["opened"], CONNECTIONS, "{churn}");
    assert_eq!(churn["failed_connections"], 0, "{churn}");
    wait_for_metric(&server, "tidewire_websocket_connections", |v| v == 0.0).await;
    wait_for_metric(&server, "tidewire_subscriptions", |v| v == 0.0).await;

    let writes = tokio::task::spawn_blocking(move || {
        loadgen(&[
            "writes",
            "--server",
            &addr,
            "--database-url",
            &url,
            "--writers",
            "4",
            "--commits-per-writer",
            "100",
        ])
    })
    .await
    .unwrap();
    let new_rows = rows_written(&server).await - rows;
    assert_eq!(new_rows, 4 * 100, "the writers committed 4 × 100 rows");
    assert_eq!(writes["opened"], 1, "{writes}");
    assert_eq!(writes["delivered"], new_rows, "{writes}");
    assert_eq!(writes["missing"], 0, "{writes}");
    assert_eq!(writes["duplicates_or_out_of_order"], 0, "{writes}");
    assert_latency_plausible(&writes, new_rows);
}
