//! A down secondary never fails the client; its copies are persisted and replayed in order.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::{
    closed_port, order, tandem, tandem_json, Engine, Orders, OrdersDb, Proxy, RecordingUpstream,
    SqliteControl,
};

async fn secondary_down_then_replayed(engine: Engine, mode: &str) {
    let old_db = OrdersDb::create(engine).await;
    let new_db = OrdersDb::create(engine).await;
    let old = Orders::start(&old_db);
    let new_url = closed_port();
    let control = SqliteControl::new();
    let proxy = Proxy::start(
        &old.url,
        &new_url,
        &control.url,
        &[
            "--mirror",
            mode,
            "--mirror-attempts",
            "2",
            "--mirror-retry-backoff",
            "10ms",
        ],
    );
    proxy.set_stage("dual-write").await;
    let client = reqwest::Client::new();
    for id in 1..=10 {
        let response = client
            .put(format!("{}/orders/{id}", proxy.url))
            .json(&order("ada", &format!("{id}.00"), "open"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "the client never sees the down side"
        );
    }
    let patched = client
        .patch(format!("{}/orders/1", proxy.url))
        .json(&json!({"status": "paid"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    proxy.drained().await;

    let listed = |control: &str| {
        tandem_json(&[
            "mirror",
            "failures",
            "--format",
            "json",
            "--control-db",
            control,
        ])
    };
    let pending = listed(&control.url);
    assert_eq!(pending.as_array().unwrap().len(), 11, "{pending}");
    assert!(pending
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["target"] == "new"));

    // The new side comes back on the address the proxy was given.
    let new = Orders::start_on(&new_db, new_url.trim_start_matches("http://"));
    let fresh = client
        .put(format!("{}/orders/11", proxy.url))
        .json(&order("bo", "11.00", "open"))
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), StatusCode::OK);
    let parked = client
        .patch(format!("{}/orders/2", proxy.url))
        .json(&json!({"status": "shipped"}))
        .send()
        .await
        .unwrap();
    assert_eq!(parked.status(), StatusCode::OK);
    proxy.drained().await;
    assert!(
        new.get(11).await.is_some(),
        "a key with nothing pending is mirrored at once"
    );
    assert!(
        new.get(2).await.is_none(),
        "a parked key waits for its earlier copies"
    );

    let output = tandem(&[
        "mirror",
        "replay",
        "--format",
        "json",
        "--old",
        &old.url,
        "--new",
        &new.url,
        "--control-db",
        &control.url,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["delivered"], 12, "{report}");
    assert_eq!(listed(&control.url).as_array().unwrap().len(), 0);

    let (old_orders, new_orders) = (old.all().await, new.all().await);
    assert_eq!(old_orders, new_orders);
    assert_eq!(new_orders.as_array().unwrap().len(), 11);
    assert_eq!(
        new.get(1).await.unwrap()["status"],
        "paid",
        "replayed in order"
    );
    assert_eq!(
        new.get(2).await.unwrap()["status"],
        "shipped",
        "replayed in order"
    );
}

#[tokio::test]
async fn secondary_down_on_sqlite_in_sync_mode() {
    secondary_down_then_replayed(Engine::Sqlite, "sync").await;
}

#[tokio::test]
async fn secondary_down_on_postgres_in_async_mode() {
    secondary_down_then_replayed(Engine::Postgres, "async").await;
}

#[tokio::test]
async fn replay_of_an_unknown_id_is_a_clear_error() {
    let control = SqliteControl::new();
    let output = tandem(&[
        "mirror",
        "replay",
        "--id",
        "42",
        "--old",
        "http://127.0.0.1:1",
        "--new",
        "http://127.0.0.1:2",
        "--control-db",
        &control.url,
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no mirror failure with id 42"), "{stderr}");
}

#[tokio::test]
async fn a_full_queue_persists_copies_and_the_admin_api_replays_them() {
    let old = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let new = RecordingUpstream::start(Duration::from_millis(200), StatusCode::OK).await;
    let control = SqliteControl::new();
    let proxy = Proxy::start(
        &old.url,
        &new.url,
        &control.url,
        &["--mirror-workers", "1", "--mirror-queue-capacity", "1"],
    );
    proxy.set_stage("dual-write").await;
    let client = reqwest::Client::new();
    let writes = 10;
    for id in 0..writes {
        let response = client
            .put(format!("{}/items/{id}", proxy.url))
            .body(format!("{{\"n\":{id}}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    proxy.drained().await;
    let pending = tandem_json(&[
        "mirror",
        "failures",
        "--format",
        "json",
        "--control-db",
        &control.url,
    ]);
    let pending = pending.as_array().unwrap().len();
    assert!(
        pending > 0,
        "a one-slot queue in front of a slow side must overflow"
    );
    assert_eq!(new.requests().len() + pending, writes, "nothing dropped");
    let overflowed = proxy
        .metric("tandem_mirror_failures_total{side=\"new\",reason=\"queue_full\"}")
        .await;
    assert!(overflowed > 0.0);

    let report: Value = client
        .post(format!("{}/admin/mirror/replay", proxy.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["delivered"], pending, "{report}");
    let mut delivered: Vec<String> = new.requests().into_iter().map(|r| r.uri).collect();
    delivered.sort();
    let mut expected: Vec<String> = (0..writes).map(|id| format!("/items/{id}")).collect();
    expected.sort();
    assert_eq!(delivered, expected, "every copy delivered exactly once");
    let replays = proxy
        .metric("tandem_mirror_replays_total{outcome=\"delivered\"}")
        .await;
    assert_eq!(replays, pending as f64);
}
