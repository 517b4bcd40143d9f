//! A bounded smoke run of the load generator against a test server, so the
//! benchmark tool cannot rot. The real figures are in BENCHMARKS.md.

mod common;

use common::TestServer;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_churn_and_writes_check_every_delivery() {
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
                "40",
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
    assert_eq!(fanout["deliveries"], 40 * 200, "{fanout}");
    assert_eq!(fanout["deliveries_expected"], 40 * 200);
    assert_eq!(fanout["missing"], 0);
    assert_eq!(fanout["duplicates_or_out_of_order"], 0);
    assert!(fanout["latency_ms"]["p99"].as_f64().unwrap() > 0.0);

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
                "200",
                "--processes",
                "2",
                "--sources",
                "2",
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(churn["failed_connections"], 0, "{churn}");
    assert!(churn["connect_init_subscribe_per_second"].as_f64().unwrap() > 0.0);

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
    assert_eq!(writes["delivered"], 400, "{writes}");
    assert_eq!(writes["missing"], 0);
    assert_eq!(writes["duplicates_or_out_of_order"], 0);
}
