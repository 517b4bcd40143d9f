//! The embedded cluster's data folder belongs to one Tidewire at a time: a
//! second start on it is refused instead of joining a cluster the first
//! would stop under it on exit.

use std::time::Duration;

use tidewire::db::{
    connect_once,
    embedded::{self, EmbeddedError, EmbeddedOptions, EmbeddedPostgres},
};

async fn start(options: &EmbeddedOptions) -> Result<EmbeddedPostgres, EmbeddedError> {
    let options = options.clone();
    tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&options))
        .await
        .unwrap()
}

async fn stop(pg: EmbeddedPostgres) {
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap()
        .expect("stopping the embedded Postgres");
}

#[tokio::test]
async fn a_second_tidewire_on_the_same_data_folder_is_refused() {
    let dir = std::env::temp_dir().join(format!("tidewire-embedded-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let options = EmbeddedOptions {
        data_dir: dir.clone(),
        ephemeral: false,
    };
    let first = start(&options).await.expect("starting the first");

    let error = start(&options)
        .await
        .expect_err("a second start on the same folder must be refused");
    let text = error.to_string();
    assert!(matches!(error, EmbeddedError::InUse { .. }), "{text}");
    assert!(
        text.contains(&format!("is in use by Tidewire PID {}", std::process::id())),
        "{text}"
    );
    assert!(text.contains("DATABASE_URL"), "{text}");

    // The first one's cluster still runs, and `tidewire psql` and
    // `create-admin` still find it without starting anything.
    assert_eq!(
        embedded::running_url(&dir).as_deref(),
        Some(first.url(embedded::DATABASE).as_str())
    );
    connect_once(&first.url("postgres"))
        .await
        .expect("the first cluster still answers")
        .simple_query("SELECT 1")
        .await
        .unwrap();

    // Once the first has stopped, the folder is free again. (A moment for
    // the first one's guardian, which checks the folder's owner, to finish.)
    stop(first).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = start(&options)
        .await
        .expect("starting again once the first has stopped");
    stop(again).await;
    let _ = std::fs::remove_dir_all(&dir);
}
