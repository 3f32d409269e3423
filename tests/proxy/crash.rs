//! SIGKILL of the proxy under load loses no acknowledged write: every copy is journaled before
//! the client is answered, and a restarted proxy delivers what the killed one left, without a
//! replay command. Checked exactly: every write creates an order of its own (writers go one
//! write at a time), and every order a client saw acknowledged must be on the new side, equal
//! to the old side's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tandem_testkit::ReservedPort;
use tokio::time::{sleep, Instant};

use crate::faults::FaultyOrders;
use crate::harness::{mirror_failures, Proxy, SqliteControl, PATIENCE};

/// Each writer creates orders through `proxy` until `stop` (writer `w`'s n-th order has id
/// `w * 1_000_000 + n`), riding out the proxy being killed and restarted; returns the ids
/// acknowledged, with their amounts.
fn write_keys(
    proxy: String,
    writers: i64,
    stop: tokio_util::sync::CancellationToken,
) -> (tokio::task::JoinSet<()>, Arc<Mutex<BTreeMap<i64, u64>>>) {
    let acknowledged = Arc::new(Mutex::new(BTreeMap::new()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 1..=writers {
        let (client, proxy, stop, acknowledged) = (
            client.clone(),
            proxy.clone(),
            stop.clone(),
            Arc::clone(&acknowledged),
        );
        tasks.spawn(async move {
            let mut amount = 1u64;
            while !stop.is_cancelled() {
                let key = writer * 1_000_000 + i64::try_from(amount).unwrap();
                let sent = client
                    .put(format!("{proxy}/orders/{key}"))
                    .json(&json!({"customer": format!("c{writer}"), "amount": format!("{amount}.00"), "status": "open"}))
                    .send()
                    .await;
                if sent.is_ok_and(|response| response.status().is_success()) {
                    acknowledged.lock().unwrap().insert(key, amount);
                } else {
                    sleep(Duration::from_millis(20)).await;
                }
                // A failed write may still have been applied: the next one is a new order anyway.
                amount += 1;
            }
        });
    }
    (tasks, acknowledged)
}

/// The amount an order holds, as a whole number.
fn amount(order: &Value) -> u64 {
    order["amount"]
        .as_str()
        .and_then(|amount| amount.split('.').next())
        .and_then(|whole| whole.parse().ok())
        .unwrap_or(0)
}

/// `writers` clients create orders (one at a time each) through a proxy in `mode`, with the new
/// side `new_latency_ms` slow and `workers` mirror workers; the proxy is SIGKILLed and
/// restarted five times, `between` apart.
async fn sigkill_loses_nothing(
    mode: &str,
    new_latency_ms: u64,
    workers: &str,
    writers: i64,
    between: Duration,
) {
    let (_dbs, old, new) = FaultyOrders::pair().await;
    new.faults(json!({"latency_ms": new_latency_ms})).await;
    let control = SqliteControl::new();
    let journal = tempfile::tempdir().unwrap();
    let journal_dir = journal.path().display().to_string();
    // Kept from other tests until the restarted proxy listens on it again.
    let port = ReservedPort::new();
    let listen = port.address().to_string();
    let args = [
        "--listen",
        &listen,
        "--mirror",
        mode,
        "--new-timeout",
        "1s",
        "--journal-dir",
        &journal_dir,
        "--mirror-workers",
        workers,
    ];
    let mut proxy = Proxy::start(&old.url, &new.url, &control.url, &args);
    proxy.set_stage("dual-write").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let (mut tasks, acknowledged) = write_keys(proxy.url.clone(), writers, stop.clone());
    for _ in 0..5 {
        sleep(between).await;
        proxy.sigkill();
        proxy = Proxy::start(&old.url, &new.url, &control.url, &args);
    }
    // Writes go on through the last one, however slowly they go on a busy machine.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let count = acknowledged.lock().unwrap().len();
        if count > 20 {
            break;
        }
        assert!(Instant::now() < deadline, "{count} writes acknowledged");
        sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    let acknowledged = acknowledged.lock().unwrap().clone();

    // Every acknowledged order: on old with its amount, and on new equal to old (the slow new
    // side drains its backlog at a few copies a second: up to a minute).
    let deadline = Instant::now() + PATIENCE * 4;
    loop {
        let mut behind = Vec::new();
        for (key, written) in &acknowledged {
            let on_old = order(&old.url, *key).await;
            assert_eq!(amount(&on_old), *written, "order {key} on old: {on_old}");
            let on_new = order(&new.url, *key).await;
            if on_old != on_new {
                behind.push(format!("order {key}: old {on_old}, new {on_new}"));
            }
        }
        if behind.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} acknowledged writes missing on new after 5 SIGKILLs ({mode}): {:?}",
            behind.len(),
            acknowledged.len(),
            behind.iter().take(5).collect::<Vec<_>>()
        );
        sleep(Duration::from_millis(200)).await;
    }
    assert!(
        mirror_failures(&control.url, false).is_empty(),
        "nothing left for a person to replay"
    );
    drop(journal);
}

async fn order(url: &str, key: i64) -> Value {
    let response = reqwest::get(format!("{url}/orders/{key}")).await.unwrap();
    response.json().await.unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_sigkills_in_async_mode_lose_no_acknowledged_write() {
    sigkill_loses_nothing("async", 50, "32", 24, Duration::from_millis(700)).await;
}

/// Two workers at 300 ms a copy cannot keep up: sync answers time out (after `--new-timeout`,
/// 1 s, shorter than the time between kills) with their copies still queued, and are answered
/// anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_sigkills_in_sync_mode_with_a_slow_new_side_lose_no_acknowledged_write() {
    sigkill_loses_nothing("sync", 300, "2", 8, Duration::from_millis(1500)).await;
}
