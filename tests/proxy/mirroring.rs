//! Writes reach the new side, in per-key order, under concurrency, in both modes.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{order, Engine, Proxy, RecordingUpstream, Sides, SqliteControl};

/// Concurrent clients in the ordering tests.
const CLIENTS: i64 = 8;
/// Writes per client.
const WRITES: i64 = 30;
/// Keys the clients contend on.
const KEYS: i64 = 4;

async fn contend(proxy_url: &str) {
    let mut tasks = Vec::new();
    for client_no in 0..CLIENTS {
        let url = proxy_url.to_owned();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0..WRITES {
                let id = (client_no + i) % KEYS;
                let amount = format!("{}.{:02}", client_no * 1000 + i, i % 100);
                let request = if i % 3 == 2 {
                    client
                        .patch(format!("{url}/orders/{id}"))
                        .json(&json!({"amount": amount, "status": format!("c{client_no}")}))
                } else {
                    client.put(format!("{url}/orders/{id}")).json(&order(
                        &format!("client-{client_no}"),
                        &amount,
                        "open",
                    ))
                };
                let status = request.send().await.unwrap().status();
                assert!(
                    status == StatusCode::OK || status == StatusCode::NOT_FOUND,
                    "{status}"
                );
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

async fn same_key_writes_converge(mode: &str) {
    let sides = Sides::start(Engine::Postgres).await;
    let control = SqliteControl::new();
    let proxy = Proxy::start(
        &sides.old.url,
        &sides.new.url,
        &control.url,
        &["--mirror", mode, "--mirror-workers", "3"],
    );
    proxy.set_stage("dual-write").await;
    contend(&proxy.url).await;
    proxy.drained().await;
    let orders = sides.converged().await;
    assert_eq!(orders.as_array().unwrap().len(), KEYS as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_writes_converge_in_async_mode() {
    same_key_writes_converge("async").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_writes_converge_in_sync_mode() {
    same_key_writes_converge("sync").await;
}

/// The exact check: per key, the new side receives the writes in the very order the old side
/// applied them, even when the new side is slower than the old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_one_key_arrive_in_the_order_old_applied_them() {
    let old = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let new = RecordingUpstream::start(Duration::from_millis(2), StatusCode::OK).await;
    let control = SqliteControl::new();
    let proxy = Proxy::start(&old.url, &new.url, &control.url, &["--mirror-workers", "2"]);
    proxy.set_stage("dual-write").await;
    contend(&proxy.url).await;
    proxy.drained().await;

    let per_key = |seen: Vec<crate::harness::Recorded>| {
        let mut keys: HashMap<String, Vec<axum::body::Bytes>> = HashMap::new();
        for request in seen {
            keys.entry(request.uri).or_default().push(request.body);
        }
        keys
    };
    let (old_order, new_order) = (per_key(old.requests()), per_key(new.requests()));
    assert_eq!(old_order.len(), KEYS as usize);
    assert_eq!(
        old_order.values().map(Vec::len).sum::<usize>(),
        (CLIENTS * WRITES) as usize
    );
    assert_eq!(
        old_order, new_order,
        "per-key order differs between old and new"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_in_live_reach_old_after_new() {
    let sides = Sides::start(Engine::Sqlite).await;
    let control = SqliteControl::new();
    let proxy = Proxy::start(&sides.old.url, &sides.new.url, &control.url, &[]);
    proxy.set_stage("live").await;
    let client = reqwest::Client::new();
    for id in 0..20 {
        let response = client
            .put(format!("{}/orders/{id}", proxy.url))
            .json(&order("ada", "1.50", "open"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let deleted = client
        .delete(format!("{}/orders/3", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    proxy.drained().await;
    assert_eq!(sides.converged().await.as_array().unwrap().len(), 19);
}
