//! `tandem comparator` sweeps continuously, records runs and serves its API.

use std::time::Duration;

use serde_json::Value;
use tandem_control::{ControlStore, ProxyCounts, Stage};
use tandem_testkit::ChildProcess;
use tokio::time::Instant;

use crate::drift::identical_sqlite_pair;
use crate::engines::TestDb;

async fn get_json(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// Starts `tandem comparator` on two test databases and a control store, with `extra` flags;
/// returns the process and its API's URL.
pub(crate) fn start_comparator(
    old: &TestDb,
    new: &TestDb,
    control: &str,
    extra: &[&str],
) -> (ChildProcess, String) {
    ChildProcess::comparator(
        std::path::Path::new(env!("CARGO_BIN_EXE_tandem")),
        &old.url(),
        &new.url(),
        control,
        extra,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeps_are_recorded_and_served() {
    let (old, new, _dir, control) = identical_sqlite_pair().await;
    let (mut process, api) =
        start_comparator(&old, &new, &control, &["--interval", "2s", "--sweeps", "2"]);
    assert_eq!(
        reqwest::get(format!("{api}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );

    let deadline = Instant::now() + Duration::from_secs(15);
    let runs = loop {
        let runs = get_json(&format!("{api}/api/runs")).await;
        if runs
            .as_array()
            .unwrap()
            .first()
            .is_some_and(|run| run["status"] == "identical")
        {
            break runs;
        }
        assert!(Instant::now() < deadline, "no finished sweep: {runs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(runs[0]["new_source"], new.url().as_str());
    let tables = get_json(&format!("{api}/api/tables")).await;
    let names: Vec<&str> = tables
        .as_array()
        .unwrap()
        .iter()
        .map(|table| table["table"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["accounts", "items"]);
    assert!(tables
        .as_array()
        .unwrap()
        .iter()
        .all(|table| table["identical"] == true));
    assert_eq!(
        get_json(&format!("{api}/api/divergences")).await,
        serde_json::json!([])
    );
    let metrics = reqwest::get(format!("{api}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tandem_comparator_sweeps_total{outcome=\"identical\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("tandem_comparator_last_clean_sweep_timestamp_seconds"));

    let status = process.wait(Duration::from_secs(30));
    assert!(
        status.success(),
        "stops by itself after --sweeps: {}",
        process.log()
    );
    let store = ControlStore::open(&control).await.unwrap();
    let runs = store.comparison_runs(10).await.unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|run| run.status == "identical"));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_policies_roll_back_and_dry_runs_only_alert() {
    let (old, new, dir, control) = identical_sqlite_pair().await;
    let store = ControlStore::open(&control).await.unwrap();
    store.force_stage(Stage::Live, "ops", "test").await.unwrap();
    // What the proxies flushed: a quarter of the compared responses differ, and three
    // quarters of the new side's requests failed.
    let counts = ProxyCounts {
        compared: 40,
        mismatches: 10,
        new_requests: 40,
        new_errors: 30,
        ..ProxyCounts::default()
    };
    store.record_proxy_counts("proxy-a", &counts).await.unwrap();
    let config = dir.path().join("comparator.toml");
    std::fs::write(
        &config,
        "[alerts]\nevaluate_interval = \"100ms\"\nmin_samples = 10\nrate_period = \"1m\"\n\
         [[rollback]]\nname = \"errors-dry\"\nnew_error_rate_above = 0.5\ntarget = \"old-only\"\n\
         dry_run = true\n\
         [[rollback]]\nname = \"mismatches\"\nmismatch_rate_above = 0.1\ntarget = \"dual-write\"\n",
    )
    .unwrap();
    let (process, api) = start_comparator(
        &old,
        &new,
        &control,
        &["--config", config.to_str().unwrap(), "--interval", "1h"],
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let kinds = loop {
        let alerts = get_json(&format!("{api}/api/alerts")).await;
        let mut kinds: Vec<String> = alerts
            .as_array()
            .unwrap()
            .iter()
            .map(|alert| {
                format!(
                    "{} {}",
                    alert["kind"].as_str().unwrap(),
                    alert["subject"].as_str().unwrap()
                )
            })
            .collect();
        kinds.sort();
        if kinds.len() >= 4 {
            break kinds;
        }
        assert!(Instant::now() < deadline, "alerts so far: {alerts}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        kinds,
        [
            "new_side_errors new_side",
            "response_mismatches responses",
            "rollback mismatches",
            "rollback_dry_run errors-dry",
        ]
    );
    let stage = store.current_stage().await.unwrap();
    assert_eq!(
        stage.stage,
        Stage::DualWrite,
        "the dry run did not move the stage"
    );
    assert_eq!(stage.by, "tandem:auto-rollback");
    let audit: Vec<String> = store
        .audit_log(None)
        .await
        .unwrap()
        .iter()
        .map(|entry| format!("{} {}", entry.action, entry.subject))
        .collect();
    assert!(
        audit.contains(&"auto_rollback_dry_run errors-dry".to_owned()),
        "{audit:?}"
    );
    assert!(
        audit.contains(&"auto_rollback mismatches".to_owned()),
        "{audit:?}"
    );
    let metrics = reqwest::get(format!("{api}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tandem_alerts_open{severity=\"critical\"} 2"),
        "{metrics}"
    );
    process.terminate();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_policy_rolls_back_on_concentrated_drift() {
    let (old, new, dir, control) = identical_sqlite_pair().await;
    // Rows 1-10 all change: the first window of ten rows differs entirely.
    new.exec(&["UPDATE items SET note = 'changed' WHERE id <= 10".to_owned()])
        .await;
    let store = ControlStore::open(&control).await.unwrap();
    store.set_stage(Stage::Shadow, "ops", "test").await.unwrap();
    let config = dir.path().join("comparator.toml");
    std::fs::write(
        &config,
        "tables = [\"items\"]\nwindow_rows = 10\nrecheck = 0\n\
         [[rollback]]\nname = \"window-drift\"\nwindow_divergence_percent_above = 50.0\n\
         consecutive_windows = 1\ntable = \"items\"\ntarget = \"dual-write\"\n",
    )
    .unwrap();
    let (mut process, _api) = start_comparator(
        &old,
        &new,
        &control,
        &["--config", config.to_str().unwrap(), "--sweeps", "1"],
    );
    assert!(
        process.wait(Duration::from_secs(30)).success(),
        "{}",
        process.log()
    );
    let stage = store.current_stage().await.unwrap();
    assert_eq!(stage.stage, Stage::DualWrite);
    assert!(
        stage.reason.contains("window-drift") && stage.reason.contains("windows of table items"),
        "{}",
        stage.reason
    );
    store.close().await;
}

/// A table the sweep cannot compare (here one that does not exist) does not fail the sweep:
/// the run ends `incomplete` naming it, and a `not_compared` alert says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_the_sweep_cannot_compare_raises_an_alert() {
    let (old, new, _dir, control) = identical_sqlite_pair().await;
    let (mut process, _api) = start_comparator(
        &old,
        &new,
        &control,
        &["--table", "missing", "--table", "items", "--sweeps", "1"],
    );
    assert!(
        process.wait(Duration::from_secs(30)).success(),
        "{}",
        process.log()
    );
    let store = ControlStore::open(&control).await.unwrap();
    let alerts = store.alerts(Some("open")).await.unwrap();
    assert!(
        alerts.iter().any(|alert| alert.kind == "not_compared"
            && alert.subject == "missing"
            && alert.summary.contains("missing")),
        "{alerts:?}"
    );
    let runs = store.comparison_runs(5).await.unwrap();
    assert_eq!(runs[0].status, "incomplete");
    let tables = store.latest_table_results().await.unwrap();
    let items = tables
        .iter()
        .find(|table| table.result.table == "items")
        .unwrap();
    assert!(
        items.result.identical,
        "the other table is compared: {tables:?}"
    );
    store.close().await;
}
