//! A stage change made anywhere reaches every proxy sharing the store, pushed by LISTEN/NOTIFY
//! on PostgreSQL and polled on SQLite. How fast is measured by `tandem-loadtest propagation`
//! (docs/benchmarks.md), not asserted here.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tandem_testkit::PostgresDb;

use crate::harness::{tandem, Proxy, RecordingUpstream, SqliteControl};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_proxy_reaches_another_over_postgres() {
    let db = PostgresDb::create("tandem_control").await;
    let old = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let new = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    // Polling is slowed to an hour: only LISTEN/NOTIFY can bring the change.
    let slow_poll = ["--stage-poll-interval", "1h"];
    let first = Proxy::start(&old.url, &new.url, &db.url, &slow_poll);
    let second = Proxy::start(&old.url, &new.url, &db.url, &slow_poll);
    let client = reqwest::Client::new();
    for stage in ["dual-write", "shadow", "live", "dual-write", "old-only"] {
        let response = client
            .put(format!("{}/admin/stage", first.admin))
            .json(&json!({"stage": stage, "reason": "rollout", "by": "tests", "force": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        second.wait_for_stage(stage).await;
        first.wait_for_stage(stage).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_from_the_cli_reaches_proxies_polling_sqlite() {
    let control = SqliteControl::new();
    let old = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let new = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let proxies = [
        Proxy::start(&old.url, &new.url, &control.url, &[]),
        Proxy::start(&old.url, &new.url, &control.url, &[]),
    ];
    for stage in ["dual-write", "old-only"] {
        let output = tandem(&[
            "stage",
            "set",
            stage,
            "--reason",
            "drill",
            "--by",
            "tests",
            "--control-db",
            &control.url,
        ]);
        assert!(output.status.success());
        for proxy in &proxies {
            proxy.wait_for_stage(stage).await;
        }
    }
}
