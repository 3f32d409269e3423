//! A backfill shows its progress while it runs (`/metrics` on `--metrics-listen`, a periodic
//! log line) and afterwards (`tandem backfill status` and the comparator's `/api/backfills`,
//! from the checkpoints): what is done, what
//! is left after SIGTERM, and who holds a chunk; its gauges follow a table that another
//! instance finishes.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sqlx::any::AnyPoolOptions;
use tandem_testkit::ChildProcess;
use tokio::time::{sleep, Instant};

use crate::backfill::{backfill, control_db, count, databases, ROWS};
use crate::engines::{Kind, TestDb};

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

/// Longest wait for something a running backfill should show soon.
const PATIENCE: Duration = Duration::from_secs(60);

/// Chunks of `ROWS` rows at `--chunk-rows 1000`: one per boundary, and the last after the
/// last boundary (empty until rows are added past it).
const CHUNKS: i64 = ROWS / 1000 + 1;

/// A key of the third chunk (keys 2001 to 3000 at `--chunk-rows 1000`): inserted on the new
/// side by a transaction the test keeps open, it holds that chunk's COPY on the key's unique
/// index, so the backfill is certain to be running, its third chunk in hand, until the test
/// rolls it back.
const BLOCKED_KEY: i64 = 2500;

/// Opens a transaction on `new` that runs `insert` and keeps it open: a COPY of the key it
/// inserts waits on it until it is rolled back (or the test ends).
async fn hold_key(new: &TestDb, insert: &str) -> sqlx::Transaction<'static, sqlx::Any> {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(&new.url())
        .await
        .unwrap();
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query(insert).execute(&mut *blocker).await.unwrap();
    blocker
}

/// Polls `probe` until it finds something.
async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "{what} did not happen in time");
        sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the sample `series` (name and labels exactly as rendered) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// `tandem backfill status` on `control`, in `format`.
fn status(control: &str, format: &str) -> std::process::Output {
    let output = std::process::Command::new(TANDEM)
        .args([
            "backfill",
            "status",
            "--control-db",
            control,
            "--format",
            format,
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "backfill status: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub(crate) fn status_json(control: &str) -> Value {
    let output = status(control, "json");
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["tables"].as_array().unwrap().len(), 1, "{status}");
    status["tables"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_progress_shows_on_metrics_in_the_log_and_in_status() {
    let (old, new) = databases(Kind::Postgres).await;
    let blocker = hold_key(
        &new,
        &format!("INSERT INTO items (id, name) VALUES ({BLOCKED_KEY}, 'blocker')"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let control = control_db(&dir);
    let (old_url, new_url) = (old.url(), new.url());
    let mut running = ChildProcess::spawn(
        Path::new(TANDEM),
        &[
            "backfill",
            "--old",
            &old_url,
            "--new",
            &new_url,
            "--table",
            "items",
            "--control-db",
            &control,
            "--chunk-rows",
            "1000",
            "--threads",
            "1",
            "--instance",
            "backfill-a",
            "--metrics-listen",
            "127.0.0.1:0",
            "--progress-interval",
            "100ms",
            "--format",
            "json",
        ],
        &[],
    );
    let metrics_url = eventually("the metrics listener", || {
        let log = running.log();
        let (_, after) = log.split_once("metrics listening on ")?;
        let url = after.split_whitespace().next()?;
        Some(format!("{url}/metrics"))
    })
    .await;

    // Scraped while it runs: chunks planned and done, rows, the last progress.
    let deadline = Instant::now() + PATIENCE;
    let text = loop {
        let text = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if sample(&text, "tandem_backfill_chunks_done{table=\"items\"}").is_some_and(|n| n >= 2.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "no chunk done:\n{text}");
        sleep(Duration::from_millis(50)).await;
    };
    #[allow(clippy::cast_precision_loss)]
    let planned = CHUNKS as f64;
    assert_eq!(
        sample(&text, "tandem_backfill_chunks_planned{table=\"items\"}"),
        Some(planned),
        "{text}"
    );
    let done = sample(
        &text,
        "tandem_backfill_chunks_total{table=\"items\",outcome=\"done\"}",
    )
    .unwrap_or_else(|| panic!("no chunks_total:\n{text}"));
    assert!(done >= 2.0, "{text}");
    let copied = sample(&text, "tandem_backfill_rows_copied_total{table=\"items\"}").unwrap();
    assert!(copied >= 1000.0 * done, "{text}");
    let read = sample(&text, "tandem_backfill_rows_read_total{table=\"items\"}").unwrap();
    assert!(read >= 1000.0 * done, "{text}");
    let last = sample(
        &text,
        "tandem_backfill_last_progress_timestamp_seconds{table=\"items\"}",
    )
    .unwrap();
    assert!(last > 1.7e9, "a Unix time: {text}");
    assert!(
        text.contains("# HELP tandem_backfill_chunks_done"),
        "described: {text}"
    );
    assert!(
        text.contains("tandem_backfill_chunk_duration_seconds_count"),
        "{text}"
    );

    // The progress line, logged every --progress-interval.
    eventually("a progress line", || {
        let log = running.log();
        log.lines()
            .find(|line| line.contains("backfill progress") && line.contains("table=items"))
            .filter(|line| {
                line.contains(&format!("chunks={CHUNKS}")) && line.contains("rows_per_sec=")
            })
            .map(str::to_owned)
    })
    .await;

    // While it runs, status names the instance holding the chunk being copied.
    let holding = eventually("status showing a held chunk", || {
        let table = status_json(&control);
        (table["claims"].as_array()?.first()?.get("instance")? == "backfill-a").then_some(table)
    })
    .await;
    assert_eq!(holding["table"], "items", "{holding}");
    assert_eq!(holding["chunks"], CHUNKS, "{holding}");

    // SIGTERM: the chunk in hand (the third, held by the blocker until it is rolled back) is
    // finished; status says what is left, nothing held.
    running.terminate();
    blocker.rollback().await.unwrap();
    let exit = tokio::task::spawn_blocking(move || running.wait(PATIENCE))
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0), "SIGTERM ends it with exit 0");
    let stopped = status_json(&control);
    let done = stopped["done"].as_i64().unwrap();
    assert_eq!(done, 3, "the two before the blocked one and it: {stopped}");
    assert_eq!(stopped["left"], CHUNKS - done, "{stopped}");
    assert_eq!(stopped["claims"], serde_json::json!([]), "{stopped}");
    assert_eq!(stopped["counts"]["copied"], count(&new).await, "{stopped}");
    assert_eq!(stopped["counts"]["rows_old"], done * 1000, "{stopped}");
    assert!(stopped["started"].is_string(), "{stopped}");
    assert!(stopped["last_progress"].is_string(), "{stopped}");
    let text = String::from_utf8(status(&control, "table").stdout).unwrap();
    assert!(
        text.contains(&format!(
            "items: {done} of {CHUNKS} chunks done, {} left",
            CHUNKS - done
        )),
        "{text}"
    );

    // Resumed to the end: every chunk done, the rows all copied once.
    let (code, report) = backfill(&old, &new, &control, &["--chunk-rows", "1000"]);
    assert_eq!(code, 0, "{report}");
    let finished = status_json(&control);
    assert_eq!(finished["done"], CHUNKS, "{finished}");
    assert_eq!(finished["left"], 0, "{finished}");
    assert_eq!(finished["counts"]["copied"], ROWS, "{finished}");
    assert_eq!(finished["counts"]["skipped"], 0, "{finished}");
    assert_eq!(finished["counts"]["rows_old"], ROWS, "{finished}");
    let text = String::from_utf8(status(&control, "table").stdout).unwrap();
    assert!(
        text.contains(&format!("items: {CHUNKS} of {CHUNKS} chunks done, 0 left")),
        "{text}"
    );

    // The comparator's API serves the same, for dashboards.
    let (_comparator, api) = ChildProcess::comparator(
        Path::new(TANDEM),
        &old_url,
        &new_url,
        &control,
        &["--table", "items", "--interval", "1h"],
    );
    let served: Value = reqwest::get(format!("{api}/api/backfills"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served["tables"][0], finished, "{served}");
}

/// `items`' chunks as the gauge shows them: all, and all but the one another instance holds.
#[allow(clippy::cast_precision_loss)]
const CHUNKS_ALL: f64 = CHUNKS as f64;
#[allow(clippy::cast_precision_loss)]
const CHUNKS_DONE_BEFORE: f64 = (CHUNKS - 1) as f64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_follow_a_table_another_instance_finishes() {
    let (old, new) = databases(Kind::Postgres).await;
    // A second table keeps this instance running after it left `items`: a key of its second
    // chunk, held on the new side until the test ends, stops it there.
    let second = "CREATE TABLE items_more (id BIGINT PRIMARY KEY, note TEXT)".to_owned();
    old.exec(&[
        second.clone(),
        "INSERT INTO items_more SELECT g, md5(g::text) FROM generate_series(1, 20000) g".to_owned(),
    ])
    .await;
    new.exec(&[second]).await;
    let dir = tempfile::tempdir().unwrap();
    let control = control_db(&dir);
    let (code, report) = backfill(&old, &new, &control, &["--chunk-rows", "1000"]);
    assert_eq!(code, 0, "{report}");
    // Another instance holds the last chunk of `items` (its lease is fresh).
    sqlx::any::install_default_drivers();
    let store = AnyPoolOptions::new()
        .max_connections(1)
        .connect(&control)
        .await
        .unwrap();
    let last = "(SELECT MAX(seq) FROM backfill_chunks WHERE table_name = 'items')";
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    sqlx::query(&format!(
        "UPDATE backfill_chunks SET status = 'claimed', owner = 'backfill-b', \
         claimed_at_ms = {now_ms} WHERE table_name = 'items' AND seq = {last}"
    ))
    .execute(&store)
    .await
    .unwrap();

    let _blocker = hold_key(&new, "INSERT INTO items_more (id) VALUES (1500)").await;
    let (old_url, new_url) = (old.url(), new.url());
    let running = ChildProcess::spawn(
        Path::new(TANDEM),
        &[
            "backfill",
            "--old",
            &old_url,
            "--new",
            &new_url,
            "--table",
            "items",
            "--table",
            "items_more",
            "--control-db",
            &control,
            "--chunk-rows",
            "1000",
            "--threads",
            "1",
            "--instance",
            "backfill-a",
            "--metrics-listen",
            "127.0.0.1:0",
            "--progress-interval",
            "100ms",
        ],
        &[],
    );
    let metrics_url = eventually("the metrics listener", || {
        let log = running.log();
        let (_, after) = log.split_once("metrics listening on ")?;
        Some(format!("{}/metrics", after.split_whitespace().next()?))
    })
    .await;
    let scrape = || async {
        reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    // It left `items` one chunk short (held by the other instance) and went on.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = scrape().await;
        if text.contains("tandem_backfill_chunks_planned{table=\"items_more\"}") {
            assert_eq!(
                sample(&text, "tandem_backfill_chunks_done{table=\"items\"}"),
                Some(CHUNKS_DONE_BEFORE),
                "{text}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never went on:\n{text}");
        sleep(Duration::from_millis(50)).await;
    }
    // The other instance finishes it: this one's gauges follow, so no stall is seen.
    sqlx::query(&format!(
        "UPDATE backfill_chunks SET status = 'done' WHERE table_name = 'items' AND seq = {last}"
    ))
    .execute(&store)
    .await
    .unwrap();
    store.close().await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = scrape().await;
        if sample(&text, "tandem_backfill_chunks_done{table=\"items\"}") == Some(CHUNKS_ALL) {
            break;
        }
        assert!(
            text.contains("tandem_backfill_chunks_planned{table=\"items_more\"}")
                && Instant::now() < deadline,
            "the gauge did not follow while the backfill ran:\n{text}"
        );
        sleep(Duration::from_millis(50)).await;
    }
}

/// On a terminal (a pseudo-terminal from util-linux's `script`), the progress is a bar per
/// table on stderr, rows done of the estimated total with rows/s and what is left, instead of
/// the progress lines; the JSON report on stdout stays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_shows_a_bar_per_table_instead_of_progress_lines() {
    let (old, new) = databases(Kind::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let control = control_db(&dir);
    let report_path = dir.path().join("report.json");
    // stdout to the file, stderr (logs and bars) to the terminal, wide enough for the whole
    // line (a pseudo-terminal without a size is taken as 79 columns).
    let command = format!(
        "stty cols 200 rows 50; {TANDEM} backfill --old '{}' --new '{}' --table items --control-db '{control}' \
         --progress-interval 10ms --format json > '{}'",
        old.url(),
        new.url(),
        report_path.display()
    );
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("script")
            .args(["--quiet", "--return", "--command", &command, "/dev/null"])
            .env_remove("TANDEM_LOG")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let terminal = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{terminal}");
    let report: Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    assert_eq!(report["tables"][0]["copied"], ROWS, "{report}");
    let chunks = report["tables"][0]["chunks"].as_u64().unwrap();
    assert!(
        terminal.contains(&format!("{ROWS}/{ROWS} rows"))
            && terminal.contains(&format!("done ({chunks}/{chunks} chunks)"))
            && terminal.contains("rows/s"),
        "no finished bar on the terminal:\n{terminal}"
    );
    assert!(
        !terminal.contains("backfill progress"),
        "progress lines beside the bar:\n{terminal}"
    );
}
