//! `sql/schema.sql` is the `tidewire` schema as the migrations leave it,
//! dumped by `pg_dump`; this fails when it is stale. Regenerate it with
//! `TIDEWIRE_BLESS=1 cargo test --test sql_schema`.

mod common;

use std::{fs, process::Command};

const SCHEMA_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/sql/schema.sql");
const BLESS: &str = "TIDEWIRE_BLESS=1 cargo test --test sql_schema";

/// Opens the file, before the dump. The line naming pg_dump's major version
/// comes right after it.
const HEADER: &str = "\
-- The tidewire schema as the migrations in sql/ leave it: tables, indexes,
-- functions and triggers, no rows. Generated: do not edit, add a migration.
-- A test fails when this file is stale; regenerate it with
--   TIDEWIRE_BLESS=1 cargo test --test sql_schema
-- The key of the commit-order advisory lock is tidewire.commit_lock_key().
-- refinery's own history table (refinery_schema_history) lives in the
-- public schema and is not part of this dump.
";
const VERSION_PREFIX: &str = "-- Dumped by pg_dump major version ";

#[tokio::test]
async fn committed_sql_schema_matches_the_migrations() {
    let url = common::fresh_database().await;
    tidewire::db::migrate(&url)
        .await
        .expect("applying the migrations");
    let dump = tokio::task::spawn_blocking(move || pg_dump(&url))
        .await
        .unwrap();
    let generated = normalize(&dump);

    if std::env::var_os("TIDEWIRE_BLESS").is_some_and(|v| v == "1") {
        fs::write(SCHEMA_FILE, &generated).expect("writing sql/schema.sql");
        return;
    }
    let committed = fs::read_to_string(SCHEMA_FILE)
        .unwrap_or_else(|_| panic!("sql/schema.sql is missing: run `{BLESS}`"));
    // Another major version of pg_dump prints the same schema differently:
    // that is not staleness. The check runs where the file was made (CI).
    let (ours, theirs) = (major_version(&generated), major_version(&committed));
    if ours != theirs {
        eprintln!(
            "sql/schema.sql was dumped by pg_dump {theirs:?}, this is pg_dump {ours:?}: \
             not compared"
        );
        return;
    }
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "sql/schema.sql is stale (first difference at line {}): run `{BLESS}`",
            line + 1
        );
    }
}

/// `pg_dump` of the `tidewire` schema: definitions only, no owners or
/// grants, so the text depends on the migrations alone.
fn pg_dump(url: &str) -> String {
    let program = tidewire::db::embedded::find_bin_dir()
        .expect("no PostgreSQL binaries found (initdb and pg_ctl, on PATH or under /usr/lib/postgresql)")
        .join("pg_dump");
    let output = Command::new(&program)
        .args([
            "--schema-only",
            "--schema=tidewire",
            "--no-owner",
            "--no-privileges",
            "--dbname",
            url,
        ])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    assert!(
        output.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("pg_dump printed UTF-8")
}

/// Our header, pg_dump's major version, then the dump from its first object
/// on. Dropped: the preamble (exact server and client versions, session
/// `SET`s that differ between versions) and the `\restrict` / `\unrestrict`
/// lines, whose key is random on every run.
fn normalize(dump: &str) -> String {
    let version = dump
        .lines()
        .find_map(|line| line.strip_prefix("-- Dumped by pg_dump version "))
        .and_then(|v| v.split(['.', ' ']).next())
        .expect("pg_dump names its version");
    let start = dump
        .find("--\n-- Name: ")
        .expect("pg_dump printed no objects");
    let body: Vec<&str> = dump[start..]
        .lines()
        .filter(|line| !line.starts_with("\\restrict ") && !line.starts_with("\\unrestrict "))
        .collect();
    format!(
        "{HEADER}{VERSION_PREFIX}{version}\n\n{}\n",
        body.join("\n").trim_end()
    )
}

fn major_version(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|line| line.strip_prefix(VERSION_PREFIX))
}

#[test]
fn normalizing_drops_what_changes_between_runs() {
    let dump = "--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\n\
                -- Dumped from database version 15.18 (Debian)\n\
                -- Dumped by pg_dump version 15.18 (Debian)\n\n\
                SET statement_timeout = 0;\n\n\
                --\n-- Name: tidewire; Type: SCHEMA; Schema: -; Owner: -\n--\n\n\
                CREATE SCHEMA tidewire;\n\n\\unrestrict abc\n\n";
    let text = normalize(dump);
    assert!(text.starts_with(HEADER), "{text}");
    assert_eq!(major_version(&text), Some("15"));
    assert!(text.ends_with("CREATE SCHEMA tidewire;\n"), "{text}");
    for gone in ["restrict", "Dumped from", "SET statement_timeout"] {
        assert!(!text.contains(gone), "{gone} left in {text}");
    }
}
