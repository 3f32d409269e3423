//! `tandem comparator` sweeps continuously, records runs and serves its API.

use std::time::Duration;

use serde_json::Value;
use tandem_control::ControlStore;
use tandem_testkit::ChildProcess;
use tokio::time::Instant;

use crate::drift::identical_sqlite_pair;

async fn get_json(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeps_are_recorded_and_served() {
    let (old, new, _dir, control) = identical_sqlite_pair().await;
    let (old_url, new_url) = (old.url(), new.url());
    let (mut process, line) = ChildProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_tandem")),
        &[
            "comparator",
            "--old",
            &old_url,
            "--new",
            &new_url,
            "--control-db",
            &control,
            "--listen",
            "127.0.0.1:0",
            "--interval",
            "2s",
            "--sweeps",
            "2",
        ],
        &[],
        "listening on",
    );
    let api = line.rsplit(' ').next().unwrap().to_owned();
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
    assert_eq!(runs[0]["new_source"], new_url.as_str());
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
