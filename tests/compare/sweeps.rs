//! What `tandem comparator`'s sweeps cover and record: every table the one-shot comparison
//! covers (keyless ones as multisets, the ones it cannot compare reported with their reason),
//! keys in key-column order, and unconverged rows counted per sweep, alerting only when they
//! persist.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::any::AnyPoolOptions;
use tandem_control::{ControlStore, TableResult};
use tokio::time::Instant;

use crate::drift::identical_sqlite_pair;
use crate::engines::{Kind, TestDb};
use crate::service::start_comparator;

/// Waits until the comparator at `api` has finished a sweep; returns `/api/runs`' newest run.
async fn finished_sweep(api: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs: Value = reqwest::get(format!("{api}/api/runs"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(run) = runs
            .as_array()
            .unwrap()
            .iter()
            .find(|run| run["status"] != "running")
        {
            return run.clone();
        }
        assert!(Instant::now() < deadline, "no finished sweep: {runs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get_text(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

fn result<'a>(tables: &'a [TableResult], name: &str) -> &'a TableResult {
    tables
        .iter()
        .find(|table| table.result.table == name)
        .unwrap_or_else(|| panic!("no result for {name}: {tables:?}"))
}

/// A sweep over a database with a keyless table and a table of a type tandem cannot compare
/// compares the keyless one as a multiset, reports the other with its reason (in the run, the
/// table results, the API and an alert), and compares the rest all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_covers_every_table_and_reports_the_ones_it_cannot_compare() {
    let (old, new) = (
        TestDb::create(Kind::Postgres).await,
        TestDb::create(Kind::Postgres).await,
    );
    for db in [&old, &new] {
        db.exec(&[
            "CREATE TABLE good (id INT PRIMARY KEY, v TEXT)".to_owned(),
            "CREATE TABLE logbook (at INT, line TEXT)".to_owned(),
            "CREATE TABLE shapes (id INT PRIMARY KEY, p POINT)".to_owned(),
            "INSERT INTO good VALUES (1, 'a'), (2, 'b')".to_owned(),
            "INSERT INTO logbook VALUES (1, 'x'), (2, 'y')".to_owned(),
        ])
        .await;
    }
    old.exec(&["INSERT INTO logbook VALUES (1, 'x')".to_owned()])
        .await;
    new.exec(&["UPDATE good SET v = 'B' WHERE id = 2".to_owned()])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let control = format!("sqlite://{}", dir.path().join("control.db").display());
    let (process, api) = start_comparator(
        &old,
        &new,
        &control,
        &["--recheck", "0", "--interval", "1h"],
    );
    let run = finished_sweep(&api).await;
    assert_eq!(run["status"], "incomplete", "{run}");
    let reason = run["error"].as_str().unwrap();
    assert!(
        reason.starts_with("tables not compared: shapes: ") && reason.contains("type point"),
        "{reason}"
    );
    let tables: Value = reqwest::get(format!("{api}/api/tables"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let shapes = tables
        .as_array()
        .unwrap()
        .iter()
        .find(|table| table["table"] == "shapes")
        .unwrap();
    assert_eq!(shapes["identical"], false, "{tables}");
    assert!(
        shapes["error"].as_str().unwrap().contains("type point"),
        "{tables}"
    );
    let logbook_divergences = get_text(&format!("{api}/api/divergences?table=logbook")).await;
    assert!(
        logbook_divergences.contains(r#""kind":"missing_in_new","key":{"at":1,"line":"x"}"#),
        "{logbook_divergences}"
    );
    process.terminate();

    let store = ControlStore::open(&control).await.unwrap();
    let results = store.latest_table_results().await.unwrap();
    assert_eq!(results.len(), 3, "{results:?}");
    let good = &result(&results, "good").result;
    assert_eq!((good.changed, good.error.as_deref()), (1, None), "{good:?}");
    let logbook = &result(&results, "logbook").result;
    assert_eq!(
        (logbook.rows_old, logbook.rows_new, logbook.missing_in_new),
        (3, 2, 1),
        "{logbook:?}"
    );
    let alerts = store.alerts(Some("open")).await.unwrap();
    assert!(
        alerts.iter().any(|alert| alert.kind == "not_compared"
            && alert.subject == "shapes"
            && alert.summary.contains("type point")),
        "{alerts:?}"
    );
    assert!(
        !alerts.iter().any(|alert| alert.kind == "sweep_failed"),
        "{alerts:?}"
    );
    store.close().await;
}

/// Keys are recorded, and served by the API, in key-column order (`region, code`), not sorted
/// by column name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_stored_and_served_in_key_column_order() {
    let (old, new, _dir, control) = identical_sqlite_pair().await;
    new.exec(&[
        "UPDATE accounts SET balance = 99.99 WHERE region = 'Bern' AND code = 'ab'".to_owned(),
    ])
    .await;
    let (process, api) = start_comparator(
        &old,
        &new,
        &control,
        &["--table", "accounts", "--recheck", "0", "--interval", "1h"],
    );
    let run = finished_sweep(&api).await;
    assert_eq!(run["status"], "divergent", "{run}");
    let served = get_text(&format!("{api}/api/divergences")).await;
    assert!(
        served.contains(r#""key":{"region":"Bern","code":"ab"}"#),
        "{served}"
    );
    let windows = get_text(&format!("{api}/api/windows")).await;
    assert!(windows.contains(r#""last_key":{"region":"#), "{windows}");
    process.terminate();

    let store = ControlStore::open(&control).await.unwrap();
    let run = store.comparison_runs(1).await.unwrap()[0].id;
    let stored = store.divergences_of_run(run, None).await.unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(
        stored[0].key.to_string(),
        r#"{"region":"Bern","code":"ab"}"#
    );
    store.close().await;
}

/// Writes `id = 1` of `hot` on the old side every 60 ms and on the new side 200 ms later, until
/// `stop`: the row never holds still, on either side. Returns how many writes it made so far.
fn keep_row_moving(old: &TestDb, new: &TestDb, stop: &Arc<AtomicBool>) -> Arc<AtomicU64> {
    let writes = Arc::new(AtomicU64::new(0));
    let (old_url, new_url) = (old.url(), new.url());
    let (stop, counted) = (Arc::clone(stop), Arc::clone(&writes));
    tokio::spawn(async move {
        let old = AnyPoolOptions::new().connect(&old_url).await.unwrap();
        let new = AnyPoolOptions::new().connect(&new_url).await.unwrap();
        let mut lagging = std::collections::VecDeque::new();
        let mut n = 0_u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let sql = format!("UPDATE hot SET n = {n} WHERE id = 1");
            sqlx::query(&sql).execute(&old).await.unwrap();
            lagging.push_back((Instant::now() + Duration::from_millis(200), sql));
            while lagging
                .front()
                .is_some_and(|(due, _)| *due <= Instant::now())
            {
                let (_, sql) = lagging.pop_front().unwrap();
                sqlx::query(&sql).execute(&new).await.unwrap();
            }
            counted.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    });
    writes
}

/// A row that never holds still is counted `unconverged` in each sweep's table result (not
/// `changed`), opens no drift alert the first time, and opens one once it has stayed so for
/// `unconverged_sweeps` (here 2) sweeps in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconverged_rows_are_counted_and_alert_only_when_they_persist() {
    let (old, new) = (
        TestDb::create(Kind::Postgres).await,
        TestDb::create(Kind::Postgres).await,
    );
    for db in [&old, &new] {
        db.exec(&[
            "CREATE TABLE hot (id INT PRIMARY KEY, n BIGINT NOT NULL)".to_owned(),
            "INSERT INTO hot VALUES (1, 0), (2, 0)".to_owned(),
        ])
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let control = format!("sqlite://{}", dir.path().join("control.db").display());
    let config = dir.path().join("comparator.toml");
    std::fs::write(&config, "[alerts]\nunconverged_sweeps = 2\n").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writes = keep_row_moving(&old, &new, &stop);
    while writes.load(Ordering::Relaxed) < 5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let store = ControlStore::open(&control).await.unwrap();
    let flags = [
        "--config",
        config.to_str().unwrap(),
        "--recheck",
        "3",
        "--recheck-delay",
        "200ms",
        "--sweeps",
        "1",
    ];
    let mut drift_alerts = Vec::new();
    for sweep in 1..=2 {
        let (mut process, _api) = start_comparator(&old, &new, &control, &flags);
        assert!(
            process.wait(Duration::from_secs(60)).success(),
            "{}",
            process.log()
        );
        let results = store.latest_table_results().await.unwrap();
        let hot = &result(&results, "hot").result;
        assert_eq!(
            (hot.unconverged, hot.changed, hot.identical),
            (1, 0, false),
            "sweep {sweep}: {hot:?}"
        );
        let alerts = store.alerts(Some("open")).await.unwrap();
        drift_alerts.push(
            alerts
                .into_iter()
                .filter(|alert| alert.kind == "drift")
                .collect::<Vec<_>>(),
        );
    }
    stop.store(true, Ordering::Relaxed);
    assert!(
        drift_alerts[0].is_empty(),
        "no alert after one sweep: {:?}",
        drift_alerts[0]
    );
    let alert = drift_alerts[1].first().expect("an alert after two sweeps");
    assert_eq!(alert.subject, "hot");
    assert!(
        alert
            .summary
            .contains("1 rows unconverged or changed in each of the last 2 sweeps"),
        "{}",
        alert.summary
    );
    assert_eq!(alert.examples, [r#"unconverged {"id":1}"#]);
    let runs = store.comparison_runs(2).await.unwrap();
    assert!(runs.iter().all(|run| run.status == "divergent"), "{runs:?}");
    store.close().await;
}
