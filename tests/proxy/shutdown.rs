//! SIGTERM drains in-flight requests and the mirror queue, and loses no copy.

use std::time::Duration;

use reqwest::StatusCode;

use crate::harness::{mirror_failures, Proxy, RecordingUpstream, SqliteControl};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_and_persists_what_the_deadline_cuts_off() {
    let old = RecordingUpstream::start(Duration::from_millis(300), StatusCode::OK).await;
    let new = RecordingUpstream::start(Duration::from_millis(100), StatusCode::OK).await;
    let control = SqliteControl::new();
    let mut proxy = Proxy::start(
        &old.url,
        &new.url,
        &control.url,
        &["--mirror-workers", "1", "--shutdown-timeout", "500ms"],
    );
    proxy.set_stage("dual-write").await;

    let writes = 10;
    let mut tasks = Vec::new();
    for id in 0..writes {
        let url = format!("{}/items/{id}", proxy.url);
        tasks.push(tokio::spawn(async move {
            reqwest::Client::new().put(url).body("{}").send().await
        }));
    }
    // Every write is in flight at the old side (300 ms) when SIGTERM arrives.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while old.arrived() < writes {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {writes} writes reached the old side",
            old.arrived()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.process.terminate();
    for task in tasks {
        let response = task
            .await
            .unwrap()
            .expect("in-flight requests are answered");
        assert_eq!(response.status(), StatusCode::OK);
    }
    let status = proxy.process.wait(Duration::from_secs(20));
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        proxy.process.log()
    );

    let delivered = new.requests().len();
    let persisted = mirror_failures(&proxy.control_db, false);
    assert_eq!(delivered + persisted.len(), writes, "no copy is lost");
    assert!(
        persisted.iter().all(|f| f["reason"] == "shutdown"),
        "{persisted:?}"
    );
    assert!(!persisted.is_empty(), "a 1 s queue cannot drain in 500 ms");
}
