//! Two `tandem backfill` instances on one PostgreSQL control store: one is killed holding a
//! chunk, the other copies every other chunk, and once the dead one's lease has run out a
//! rerun takes its chunk over: the table ends identical.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sqlx::Row;
use tandem_testkit::PostgresDb;

use crate::backfill::{backfill, databases, ROWS};
use crate::engines::{compare, Kind, TestDb};

fn instance(old: &TestDb, new: &TestDb, control: &str, name: &str, lease: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["backfill", "--old", &old.url(), "--new", &new.url()])
        .args([
            "--table",
            "items",
            "--control-db",
            control,
            "--instance",
            name,
        ])
        .args([
            "--chunk-rows",
            "2000",
            "--threads",
            "1",
            "--chunk-lease",
            lease,
        ])
        .args(["--max-rows-per-sec", "30000", "--format", "json"])
        .env("TANDEM_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Chunks of `status` held by `owner`.
async fn chunks(control: &sqlx::PgPool, owner: &str, status: &str) -> i64 {
    sqlx::query("SELECT COUNT(*) AS n FROM backfill_chunks WHERE owner = $1 AND status = $2")
        .bind(owner)
        .bind(status)
        .fetch_one(control)
        .await
        .map_or(0, |row| row.get("n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_a_table_and_a_dead_ones_chunk_is_taken_over() {
    let (old, new) = databases(Kind::Postgres).await;
    let control_db = PostgresDb::create("tandem_backfill_control").await;
    let control = &control_db.url;
    // Neither takes the other's chunk over (a lease of an hour). The survivor starts once the
    // doomed one is killed: an instance started while another plans the table's chunks may
    // find none to claim and stop at once (a race this test does not cover; see the issue's
    // closing note).
    let mut doomed = instance(&old, &new, control, "doomed", "1h");
    let pool = loop {
        // The store's tables exist once an instance has opened it.
        if let Ok(pool) = sqlx::PgPool::connect(control).await {
            break pool;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Killed holding a chunk, after it finished one of its own.
    let mut held = false;
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if chunks(&pool, "doomed", "done").await >= 1
            && chunks(&pool, "doomed", "claimed").await == 1
        {
            doomed.kill().unwrap();
            held = true;
            break;
        }
    }
    doomed.wait().unwrap();
    assert!(held, "the doomed instance held a chunk when it was killed");
    let survivor = instance(&old, &new, control, "survivor", "1h");
    let output = tokio::task::spawn_blocking(move || survivor.wait_with_output().unwrap())
        .await
        .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(0), "{report}");
    let table = &report["tables"][0];
    assert_eq!(
        table["chunks_done"].as_i64().unwrap() + 1,
        table["chunks"].as_i64().unwrap(),
        "every chunk but the dead instance's is done: {report}"
    );
    assert!(
        chunks(&pool, "doomed", "done").await >= 1,
        "both instances copied chunks"
    );
    assert!(
        chunks(&pool, "survivor", "done").await >= 1,
        "both instances copied chunks"
    );
    assert_eq!(chunks(&pool, "doomed", "claimed").await, 1);

    // Another instance whose lease the dead one's claim has outlived takes the chunk over.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (code, report) = backfill(
        &old,
        &new,
        control,
        &[
            "--instance",
            "survivor",
            "--chunk-rows",
            "2000",
            "--chunk-lease",
            "1s",
        ],
    );
    assert_eq!(code, 0, "{report}");
    let table = &report["tables"][0];
    assert_eq!(table["chunks_done"], table["chunks"], "{report}");
    assert_eq!(
        table["chunks_resumed"].as_i64().unwrap() + 1,
        table["chunks"].as_i64().unwrap(),
        "only the dead instance's chunk is copied again: {report}"
    );
    assert_eq!(chunks(&pool, "doomed", "claimed").await, 0);
    pool.close().await;
    let (code, compared) = compare(&old, &new, &["--table", "items"]);
    assert_eq!(code, 0, "identical: {compared}");
    assert_eq!(crate::backfill::count(&new).await, ROWS);
}
