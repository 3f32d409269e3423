//! A down secondary never fails the client; its copies are persisted and replayed in order.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::{
    closed_port, expect_ok, mirror_failures, order, tandem, Engine, Orders, OrdersDb, Proxy,
    RecordingUpstream, SqliteControl,
};

/// `tandem mirror replay --format json` against the given sides and store.
fn replay(old: &str, new: &str, control_db: &str) -> std::process::Output {
    tandem(&[
        "mirror",
        "replay",
        "--format",
        "json",
        "--old",
        old,
        "--new",
        new,
        "--control-db",
        control_db,
    ])
}

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
        expect_ok(
            client
                .put(format!("{}/orders/{id}", proxy.url))
                .json(&order("ada", &format!("{id}.00"), "open")),
        )
        .await;
    }
    expect_ok(
        client
            .patch(format!("{}/orders/1", proxy.url))
            .json(&json!({"status": "paid"})),
    )
    .await;
    proxy.drained().await;

    let pending = mirror_failures(&control.url, false);
    assert_eq!(pending.len(), 11, "{pending:?}");
    assert!(pending.iter().all(|f| f["target"] == "new"));

    // The new side comes back on the address the proxy was given.
    let new = Orders::start_on(&new_db, new_url.trim_start_matches("http://"));
    expect_ok(
        client
            .put(format!("{}/orders/11", proxy.url))
            .json(&order("bo", "11.00", "open")),
    )
    .await;
    expect_ok(
        client
            .patch(format!("{}/orders/2", proxy.url))
            .json(&json!({"status": "shipped"})),
    )
    .await;
    proxy.drained().await;
    assert!(
        new.get(11).await.is_some(),
        "a key with nothing pending is mirrored at once"
    );
    assert!(
        new.get(2).await.is_none(),
        "a parked key waits for its earlier copies"
    );

    let output = replay(&old.url, &new.url, &control.url);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["delivered"], 12, "{report}");
    assert!(mirror_failures(&control.url, false).is_empty());

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_down_on_sqlite_in_sync_mode() {
    secondary_down_then_replayed(Engine::Sqlite, "sync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_down_on_postgres_in_async_mode() {
    secondary_down_then_replayed(Engine::Postgres, "async").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
        expect_ok(
            client
                .put(format!("{}/items/{id}", proxy.url))
                .body(format!("{{\"n\":{id}}}")),
        )
        .await;
    }
    proxy.drained().await;
    let pending = mirror_failures(&control.url, false);
    let pending = pending.len();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_overtaken_by_a_promotion_are_kept_not_applied() {
    let old = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let new = RecordingUpstream::start(Duration::from_millis(300), StatusCode::OK).await;
    let control = SqliteControl::new();
    let proxy = Proxy::start(&old.url, &new.url, &control.url, &["--mirror-workers", "1"]);
    proxy.set_stage("dual-write").await;
    let client = reqwest::Client::new();
    let writes = 5;
    for id in 0..writes {
        expect_ok(client.put(format!("{}/items/{id}", proxy.url)).body("{}")).await;
    }
    // New becomes authoritative while old's copies still queue for it.
    proxy.set_stage("live").await;
    proxy.drained().await;
    let kept = mirror_failures(&control.url, false);
    assert!(
        !kept.is_empty(),
        "a 1.5 s queue cannot drain before the promotion"
    );
    assert!(
        kept.iter().all(|f| f["reason"] == "stage_changed"),
        "{kept:?}"
    );
    assert_eq!(new.requests().len() + kept.len(), writes);

    let replay = |expect_success: bool| {
        let output = replay(&old.url, &new.url, &control.url);
        assert_eq!(
            output.status.success(),
            expect_success,
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    };
    let refused = replay(false);
    assert_eq!(
        refused["held"],
        kept.len(),
        "never replayed into the authoritative side"
    );
    proxy.set_stage("dual-write").await;
    let done = replay(true);
    assert_eq!(done["delivered"], kept.len());
    assert_eq!(new.requests().len(), writes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_copies_are_retried_then_kept() {
    let old = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let new = RecordingUpstream::start(Duration::ZERO, StatusCode::TOO_MANY_REQUESTS).await;
    let control = SqliteControl::new();
    let proxy = Proxy::start(
        &old.url,
        &new.url,
        &control.url,
        &["--mirror-attempts", "2", "--mirror-retry-backoff", "5ms"],
    );
    proxy.set_stage("dual-write").await;
    expect_ok(
        reqwest::Client::new()
            .put(format!("{}/items/1", proxy.url))
            .body("{}"),
    )
    .await;
    proxy.drained().await;
    assert_eq!(new.requests().len(), 2, "429 is retried");
    let kept = mirror_failures(&control.url, false);
    assert_eq!(kept[0]["last_error"], "status 429", "{kept:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_does_not_cancel_the_copy() {
    let old = RecordingUpstream::start(Duration::from_millis(400), StatusCode::OK).await;
    let new = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let control = SqliteControl::new();
    let proxy = Proxy::start(&old.url, &new.url, &control.url, &[]);
    proxy.set_stage("dual-write").await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let gave_up = impatient
        .put(format!("{}/items/1", proxy.url))
        .body("{}")
        .send()
        .await;
    assert!(gave_up.is_err(), "the client times out before old answers");
    let deadline = tokio::time::Instant::now() + crate::harness::PATIENCE;
    while new.requests().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the copy never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(old.requests().len(), 1);
    assert_eq!(new.requests()[0].uri, "/items/1");
}
