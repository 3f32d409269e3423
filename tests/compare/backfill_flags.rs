//! `tandem backfill` flags the other tests leave at their defaults: a table named differently
//! on the new side (`--table OLD:NEW`), a key that is a unique column other than the primary
//! key (`--key`), and the plain-text report (`--format table`).

use std::process::{Command, Output};

use crate::backfill::{control_db, rows_in};
use crate::engines::{compare, Kind, TestDb};

/// `tandem backfill` of `accounts` into `accounts_v2` with `args`, reporting as a table.
fn backfill(old: &TestDb, new: &TestDb, control: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["backfill", "--old", &old.url(), "--new", &new.url()])
        .args(["--control-db", control, "--table", "accounts:accounts_v2"])
        .args([
            "--format",
            "table",
            "--recheck",
            "1",
            "--recheck-delay",
            "10ms",
        ])
        .args(args)
        .env("TANDEM_LOG", "warn")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_into_a_renamed_table_by_a_unique_column_and_reports_a_table() {
    let (old, new) = (
        TestDb::create(Kind::Postgres).await,
        TestDb::create(Kind::Postgres).await,
    );
    // Emails run against the ids: chunks cut in email order hold scattered ids.
    old.exec(&[
        "CREATE TABLE accounts (id BIGINT PRIMARY KEY, email TEXT NOT NULL UNIQUE, \
         balance NUMERIC(12,2))"
            .to_owned(),
        "INSERT INTO accounts SELECT g, 'user' || lpad((1000 - g)::text, 4, '0') || '@example.com', \
         g * 2.5 FROM generate_series(1, 100) g"
            .to_owned(),
    ])
    .await;
    // Only the email is unique on the new side.
    new.exec(&[
        "CREATE TABLE accounts_v2 (id BIGINT NOT NULL, email TEXT NOT NULL UNIQUE, \
         balance NUMERIC(12,2))"
            .to_owned(),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let control = control_db(&dir);

    // By the primary key, which nothing makes unique on the new side: refused.
    let output = backfill(&old, &new, &control, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("table accounts_v2: no primary key or unique index on the new side is over the key (id)"), "{stderr}");
    assert_eq!(rows_in(&new, "accounts_v2").await, 0);

    let output = backfill(
        &old,
        &new,
        &control,
        &["--key", "email", "--chunk-rows", "40"],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with(
            "accounts -> accounts_v2: 3 of 3 chunks done (0 before this run, 3 in bulk, 0 found \
             equal in groups), 100 rows read; copied 100, skipped 0 already equal, repaired 0, \
             0 conflicts with live writes, 0 unconverged, 0 chunk retries; "
        ),
        "{stdout}"
    );
    assert_eq!(
        lines[1], "300 rows read on both sides (no limit)",
        "{stdout}"
    );
    assert_eq!(lines[2], "CONVERGED", "{stdout}");
    assert_eq!(rows_in(&new, "accounts_v2").await, 100);
    let (code, compared) = compare(
        &old,
        &new,
        &["--table", "accounts:accounts_v2", "--key", "email"],
    );
    assert_eq!(code, 0, "identical after the backfill: {compared}");
}
