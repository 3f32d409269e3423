//! A stage change made anywhere reaches every proxy sharing the store within a second.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tandem_testkit::PostgresDb;
use tokio::time::Instant;

use crate::harness::{tandem, Proxy, RecordingUpstream, SqliteControl};

/// The propagation the issue promises: every proxy routes by a new stage within 1 s.
const PROPAGATION_BUDGET: Duration = Duration::from_secs(1);

/// Waits for `proxy` to apply `stage`, failing once the propagation budget is spent.
async fn applied_within_budget(proxy: &Proxy, stage: &str, changed_at: Instant) {
    let deadline = changed_at + PROPAGATION_BUDGET;
    loop {
        if proxy.applied_stage().await == stage {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{stage} not applied within {PROPAGATION_BUDGET:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_proxy_reaches_another_over_postgres() {
    let db = PostgresDb::create("tandem_control").await;
    let old = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let new = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    // Polling is slowed to a minute so that only LISTEN/NOTIFY can meet the budget.
    let slow_poll = ["--stage-poll-interval", "60s"];
    let first = Proxy::start(&old.url, &new.url, &db.url, &slow_poll);
    let second = Proxy::start(&old.url, &new.url, &db.url, &slow_poll);
    let client = reqwest::Client::new();
    for stage in ["dual-write", "shadow", "live", "dual-write", "old-only"] {
        let changed_at = Instant::now();
        let response = client
            .put(format!("{}/admin/stage", first.admin))
            .json(&json!({"stage": stage, "reason": "rollout", "by": "tests", "force": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        applied_within_budget(&second, stage, changed_at).await;
        applied_within_budget(&first, stage, changed_at).await;
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
        let changed_at = Instant::now();
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
            applied_within_budget(proxy, stage, changed_at).await;
        }
    }
}
