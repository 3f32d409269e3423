//! The stack's two long-running data movers: a `tandem pg-proxy --capture wal` on the logical
//! clusters (`scripts/ensure-logical-pg`) applying a transaction written through it, and a throttled
//! `tandem backfill` serving its metrics for as long as the test scrapes it.

use std::path::Path;
use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};
use tandem_testkit::{unique_name, ChildProcess, PostgresDb};
use tokio::time::{sleep, Instant};

use crate::services::{tandem, TANDEM};

/// Longest wait for something that should show promptly.
const PATIENCE: Duration = Duration::from_secs(60);

/// Rows the backfill has to copy: at `BACKFILL_RATE` rows a second it outlasts the test.
const BACKFILL_ROWS: u32 = 60_000;
const BACKFILL_RATE: &str = "200";

/// The capture's slots and origins, dropped (`tandem pg-mirror drop`) once its proxy is gone:
/// a database with a slot cannot be dropped. Declare it after the processes, before the
/// databases.
pub struct CaptureSlots {
    old: String,
    new: String,
    stem: String,
}

impl Drop for CaptureSlots {
    fn drop(&mut self) {
        // The proxy was just stopped: its replication connection may take a moment to end.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let dropped = tandem(&[
                "pg-mirror",
                "drop",
                "--old",
                &self.old,
                "--new",
                &self.new,
                "--capture-slot",
                &self.stem,
            ]);
            if dropped.status.success() || std::time::Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A running `tandem pg-proxy --capture wal` that has applied a captured transaction.
pub struct WalCapture {
    pub admin: String,
    pub process: ChildProcess,
    pub slots: CaptureSlots,
    pub databases: [PostgresDb; 2],
}

async fn execute(url: &str, sql: &str) {
    let mut conn = PgConnection::connect(url).await.unwrap();
    conn.execute(sql).await.unwrap();
    conn.close().await.unwrap();
}

/// Starts the capture from old to new (the stage in `control` mirrors writes) and writes a
/// transaction on old for it to apply.
pub async fn wal_capture(control: &str) -> WalCapture {
    let old = PostgresDb::create_logical("tandem_oncall_wal", false).await;
    let new = PostgresDb::create_logical("tandem_oncall_wal", true).await;
    for db in [&old, &new] {
        execute(&db.url, "CREATE TABLE ticks (id INT PRIMARY KEY)").await;
    }
    let stem = unique_name("tandem_oncall_wal");
    let slots = CaptureSlots {
        old: old.url.clone(),
        new: new.url.clone(),
        stem: stem.clone(),
    };
    let (process, line) = ChildProcess::start(
        Path::new(TANDEM),
        &[
            "pg-proxy",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--old",
            &old.url,
            "--new",
            &new.url,
            "--control-db",
            control,
            "--capture",
            "wal",
            "--capture-slot",
            &stem,
            "--capture-publication",
            &stem,
        ],
        &[],
        "tandem pg-proxy listening on",
    );
    // "tandem pg-proxy listening on ADDR (admin http://ADDR)"
    let words: Vec<&str> = line.split_whitespace().collect();
    let (address, admin) = (words[4], words[6].trim_end_matches(')').to_owned());
    // Through the proxy: a session waits until the old side's slot exists, so the capture
    // sees the write.
    let database = old.url.rsplit('/').next().unwrap();
    execute(
        &format!("postgres://postgres@{address}/{database}"),
        "INSERT INTO ticks VALUES (1), (2)",
    )
    .await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut conn = PgConnection::connect(&new.url).await.unwrap();
        let arrived: i64 = sqlx::query_scalar("SELECT count(*) FROM ticks")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        if arrived == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the capture applied nothing:\n{}",
            process.log()
        );
        sleep(Duration::from_millis(100)).await;
    }
    WalCapture {
        admin,
        process,
        slots,
        databases: [old, new],
    }
}

/// A running `tandem backfill` with its metrics listener, throttled to outlast the test.
pub struct Backfill {
    pub metrics: String,
    pub process: ChildProcess,
    pub databases: [PostgresDb; 2],
}

/// Starts a backfill of a table of `BACKFILL_ROWS` rows into an empty one, checkpointed in
/// `control`, and waits until it has finished its first chunk.
pub async fn backfill(control: &str) -> Backfill {
    let old = PostgresDb::create("tandem_oncall_fill").await;
    let new = PostgresDb::create("tandem_oncall_fill").await;
    let table = "CREATE TABLE history (id INT PRIMARY KEY, note TEXT NOT NULL)";
    execute(&old.url, table).await;
    execute(&new.url, table).await;
    execute(
        &old.url,
        &format!(
            "INSERT INTO history SELECT g, 'note ' || g FROM generate_series(1, {BACKFILL_ROWS}) g"
        ),
    )
    .await;
    let process = ChildProcess::spawn(
        Path::new(TANDEM),
        &[
            "backfill",
            "--old",
            &old.url,
            "--new",
            &new.url,
            "--table",
            "history",
            "--control-db",
            control,
            "--chunk-rows",
            "100",
            "--threads",
            "1",
            "--max-rows-per-sec",
            BACKFILL_RATE,
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let deadline = Instant::now() + PATIENCE;
    let metrics = loop {
        let log = process.log();
        if let Some((_, after)) = log.split_once("metrics listening on ") {
            break after.split_whitespace().next().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no metrics listener:\n{log}");
        sleep(Duration::from_millis(50)).await;
    };
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = reqwest::get(format!("{metrics}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("tandem_backfill_rows_copied_total{") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no chunk done:\n{text}\n{}",
            process.log()
        );
        sleep(Duration::from_millis(100)).await;
    }
    Backfill {
        metrics,
        process,
        databases: [old, new],
    }
}
