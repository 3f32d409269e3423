//! Fleet mode: several HTTP proxies on one control store and one shared journal on the
//! machine's NATS JetStream (127.0.0.1:4222). Copies appended through any instance are
//! delivered by the instance holding their key's partition, in the order they were appended:
//! a write acknowledged before another write to the same key was sent, through any instance,
//! reaches the new side first. Each test uses a stream of its own and removes it.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::{sleep, Instant};

use crate::faults::FaultyOrders;
use crate::harness::{mirror_failures, tandem, Engine, OrdersDb, Proxy, SqliteControl, PATIENCE};

const NATS: &str = "nats://127.0.0.1:4222";

/// A stream name no other test uses; the stream and its leases are removed on drop.
struct SharedStream(String);

impl SharedStream {
    fn new() -> SharedStream {
        SharedStream(format!("FLEET{}", uuid::Uuid::new_v4().simple()))
    }
}

impl Drop for SharedStream {
    fn drop(&mut self) {
        let name = self.0.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async move {
                let client = async_nats::connect(NATS).await.unwrap();
                let jetstream = async_nats::jetstream::new(client);
                let _ = jetstream.delete_stream(&name).await;
                let _ = jetstream.delete_stream(format!("{name}_leases")).await;
            });
        })
        .join()
        .unwrap();
    }
}

/// The amount an order holds, as a whole number (`None` when it is missing).
fn amount(order: &Value) -> Option<u64> {
    order["amount"]
        .as_str()
        .and_then(|amount| amount.split('.').next())
        .and_then(|whole| whole.parse().ok())
}

/// `tandem compare` of the orders tables finds both sides identical.
fn assert_compare_identical(dbs: &[OrdersDb; 2]) {
    let (old, new) = (dbs[0].url(), dbs[1].url());
    let output = tandem(&[
        "compare",
        "--old",
        &old,
        "--new",
        &new,
        "--table",
        "orders",
        "--format",
        "json",
        "--recheck",
        "0",
    ]);
    assert!(
        output.status.success(),
        "tandem compare (exit {:?}): {}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The old and new orders services (new answering in `new_latency_ms`), one control store,
/// and two proxies (and `more`) on one shared journal in `--mirror async`: the first, started
/// first, holds every partition until the others come, and delivers with one worker.
struct Fleet {
    dbs: [OrdersDb; 2],
    new: FaultyOrders,
    old: FaultyOrders,
    control: SqliteControl,
    first: Proxy,
    second: Proxy,
    /// More proxies like the second.
    others: Vec<Proxy>,
    _stream: SharedStream,
}

impl Fleet {
    async fn start(new_latency_ms: u64, more: usize) -> Fleet {
        let stream = SharedStream::new();
        let dbs = [
            OrdersDb::create(Engine::Sqlite).await,
            OrdersDb::create(Engine::Sqlite).await,
        ];
        let (old, new) = (FaultyOrders::start(&dbs[0]), FaultyOrders::start(&dbs[1]));
        new.faults(json!({"latency_ms": new_latency_ms})).await;
        let control = SqliteControl::new();
        let shared = [
            "--mirror",
            "async",
            "--journal",
            NATS,
            "--journal-stream",
            &stream.0,
        ];
        let backed_up = [&shared[..], &["--mirror-workers", "1"]].concat();
        let first = Proxy::start(&old.url, &new.url, &control.url, &backed_up);
        first.set_stage("dual-write").await;
        let second = Proxy::start(&old.url, &new.url, &control.url, &shared);
        second.wait_for_stage("dual-write").await;
        let mut others = Vec::new();
        for _ in 0..more {
            let other = Proxy::start(&old.url, &new.url, &control.url, &shared);
            other.wait_for_stage("dual-write").await;
            others.push(other);
        }
        Fleet {
            dbs,
            new,
            old,
            control,
            first,
            second,
            others,
            _stream: stream,
        }
    }

    /// Writes each of `keys` keys `rounds` times (round `r` sets its amount to `r`), one
    /// write at a time per key, going round the proxies and waiting for every answer.
    async fn write_alternating(&self, keys: u64, rounds: u64) {
        let proxies: Vec<String> = self.all().iter().map(|proxy| proxy.url.clone()).collect();
        let client = reqwest::Client::new();
        let mut writers = tokio::task::JoinSet::new();
        for group in 0..10 {
            let (client, proxies) = (client.clone(), proxies.clone());
            writers.spawn(async move {
                for round in 0..rounds {
                    for key in (1..=keys).filter(|key| key % 10 == group) {
                        let turn = usize::try_from(round).unwrap() % proxies.len();
                        let proxy = &proxies[turn];
                        let response = client
                            .put(format!("{proxy}/orders/{key}"))
                            .json(&json!({"customer": format!("c{key}"), "amount": format!("{round}.00"), "status": "open"}))
                            .send()
                            .await
                            .unwrap();
                        assert!(response.status().is_success(), "{}", response.status());
                    }
                }
            });
        }
        while let Some(done) = writers.join_next().await {
            done.unwrap();
        }
    }

    /// Every proxy of the fleet.
    fn all(&self) -> Vec<&Proxy> {
        [&self.first, &self.second]
            .into_iter()
            .chain(self.others.iter())
            .collect()
    }

    /// The keys (of `1..=keys`) whose order on the new side does not hold `amount`.
    async fn stale(&self, keys: u64, amount_wanted: u64) -> Vec<String> {
        let orders = reqwest::get(format!("{}/orders?limit=1000", self.new.url))
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        let listed = orders["orders"].as_array().cloned().unwrap_or_default();
        (1..=keys)
            .filter_map(|id| {
                let order = listed.iter().find(|order| order["id"] == id);
                let value = order.and_then(amount);
                (value != Some(amount_wanted)).then(|| format!("order {id}: {value:?}"))
            })
            .collect()
    }

    /// Waits until every key holds `amount_wanted` on the new side, exactly.
    async fn all_at(&self, keys: u64, amount_wanted: u64, what: &str) {
        let deadline = Instant::now() + PATIENCE * 8;
        loop {
            let stale = self.stale(keys, amount_wanted).await;
            if stale.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {} of {keys} keys not at their last value on new: {:?}",
                stale.len(),
                stale.iter().take(5).collect::<Vec<_>>()
            );
            sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Writes found concurrent with another instance's write to the same key.
const CONFLICTS: &str = "tandem_mirror_conflicts_total{side=\"new\"}";

/// Waits until `proxy` publishes `value` for `series` (gauges are published every second).
async fn metric_becomes(proxy: &Proxy, series: &str, value: f64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = proxy.metric(series).await;
        if (now - value).abs() < f64::EPSILON {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stays {now}, not {value}"
        );
        sleep(Duration::from_millis(100)).await;
    }
}

/// The scenario, with three proxies: one control store, `--mirror async`, the new side
/// answering in 20 ms, the first proxy's delivery backed up (one worker) and handing partitions
/// over to the others as they come; a client writes each of 100 keys ten times, round-robin
/// over the proxies and waiting for every answer. Every key must end on the new side at its
/// last value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_round_robin_over_three_proxies_reach_the_new_side_in_order() {
    let fleet = Fleet::start(20, 1).await;
    // The first held every partition until the others came: then each holds some, all held.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut held = Vec::new();
        for proxy in fleet.all() {
            held.push(proxy.metric("tandem_journal_partitions_held").await);
        }
        if held.iter().all(|count| *count >= 4.0) && held.iter().sum::<f64>() == 16.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "partitions not shared out: {held:?}"
        );
        sleep(Duration::from_millis(100)).await;
    }
    fleet.write_alternating(100, 10).await;
    fleet.all_at(100, 9, "after the drain").await;
    for proxy in fleet.all() {
        proxy.drained().await;
    }
    assert_compare_identical(&fleet.dbs);
    assert!(mirror_failures(&fleet.control.url, false).is_empty());
    for proxy in fleet.all() {
        assert_eq!(
            proxy.metric(CONFLICTS).await,
            0.0,
            "writes one after the other are never a conflict"
        );
    }
}

/// The first proxy is SIGKILLed with a backlog in its partitions (one worker against a new side
/// answering in 50 ms): the other takes them over once their leases expire and delivers what
/// it left, in per-key order, without a replay command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_killed_with_a_backlog_leaves_it_to_the_others() {
    let mut fleet = Fleet::start(50, 0).await;
    fleet.write_alternating(50, 6).await;
    assert!(
        !fleet.stale(50, 5).await.is_empty(),
        "the backlog is already delivered: nothing left for the kill to test"
    );
    // SIGKILL: nothing runs after it, no lease given back, no drain.
    let killed = std::process::Command::new("kill")
        .args(["-9", &fleet.first.process.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    fleet.first.process.wait(Duration::from_secs(10));
    fleet.all_at(50, 5, "after the kill").await;
    metric_becomes(&fleet.second, "tandem_journal_partitions_held", 16.0).await;
    fleet.second.drained().await;
    assert_compare_identical(&fleet.dbs);
    assert!(mirror_failures(&fleet.control.url, false).is_empty());
}

/// Two clients race on one key through two proxies (both writes at the old side together,
/// 300 ms each): nobody outside the old side knows their order, so the key is recorded for a
/// recheck instead of being silently ordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_racing_on_a_key_through_two_proxies_record_it_for_a_recheck() {
    let fleet = Fleet::start(0, 0).await;
    fleet.old.faults(json!({"latency_ms": 300})).await;
    let client = reqwest::Client::new();
    let write = |proxy: &str, amount: &str| {
        client
            .put(format!("{proxy}/orders/77"))
            .json(&json!({"customer": "racer", "amount": amount, "status": "open"}))
            .send()
    };
    let (one, other) = tokio::join!(
        write(&fleet.first.url, "1.00"),
        write(&fleet.second.url, "2.00")
    );
    assert!(one.unwrap().status().is_success());
    assert!(other.unwrap().status().is_success());
    // The partition's reader finds it as it reads the second copy.
    let deadline = Instant::now() + PATIENCE;
    while fleet.first.metric(CONFLICTS).await + fleet.second.metric(CONFLICTS).await < 1.0 {
        assert!(Instant::now() < deadline, "the race was not noticed");
        sleep(Duration::from_millis(50)).await;
    }

    let store = sqlx::SqlitePool::connect(&fleet.control.url).await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let keys: Vec<(String, String)> =
            sqlx::query_as("SELECT target_side, ordering_key FROM key_conflicts")
                .fetch_all(&store)
                .await
                .unwrap();
        if !keys.is_empty() {
            assert!(
                keys.iter()
                    .all(|(side, key)| side == "new" && key.contains("77")),
                "{keys:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the key was not recorded");
        sleep(Duration::from_millis(50)).await;
    }
    store.close().await;
}

/// A NATS server with JetStream of the test's own (file storage in a directory that outlives
/// restarts), on a fixed free loopback port; stopped on drop.
struct OwnNats {
    process: Option<tandem_testkit::ChildProcess>,
    store: tempfile::TempDir,
    port: u16,
}

impl OwnNats {
    async fn start() -> OwnNats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut nats = OwnNats {
            process: None,
            store: tempfile::tempdir().unwrap(),
            port,
        };
        nats.restart().await;
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) and waits until it takes connections.
    async fn restart(&mut self) {
        let store = self.store.path().display().to_string();
        let port = self.port.to_string();
        self.process = Some(tandem_testkit::ChildProcess::spawn(
            std::path::Path::new("nats-server"),
            &["-a", "127.0.0.1", "-p", &port, "-js", "-sd", &store],
            &[],
        ));
        let deadline = Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "nats-server did not start");
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs the server: nothing it held in memory only survives.
    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let killed = std::process::Command::new("kill")
                .args(["-9", &process.id().to_string()])
                .status()
                .unwrap();
            assert!(killed.success());
            process.wait(Duration::from_secs(10));
        }
    }
}

/// The NATS server is SIGKILLed and restarted under load (file storage): every write a
/// client saw acknowledged reaches the new side, exactly; none is lost silently. (While the
/// server is down, copies go on in the accepting proxy's memory and are counted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_server_restarted_under_load_loses_no_acknowledged_copy() {
    let mut nats = OwnNats::start().await;
    let dbs = [
        OrdersDb::create(Engine::Sqlite).await,
        OrdersDb::create(Engine::Sqlite).await,
    ];
    let (old, new) = (FaultyOrders::start(&dbs[0]), FaultyOrders::start(&dbs[1]));
    new.faults(json!({"latency_ms": 20})).await;
    let control = SqliteControl::new();
    let url = nats.url();
    let proxy = Proxy::start(
        &old.url,
        &new.url,
        &control.url,
        &[
            "--mirror",
            "async",
            "--journal",
            &url,
            "--new-timeout",
            "2s",
        ],
    );
    proxy.set_stage("dual-write").await;

    let stop = tokio_util::sync::CancellationToken::new();
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut writers = tokio::task::JoinSet::new();
    for writer in 1..=4u64 {
        let (client, url, stop, acknowledged) = (
            client.clone(),
            proxy.url.clone(),
            stop.clone(),
            std::sync::Arc::clone(&acknowledged),
        );
        writers.spawn(async move {
            let mut n = 1u64;
            while !stop.is_cancelled() {
                let id = writer * 1_000_000 + n;
                let sent = client
                    .put(format!("{url}/orders/{id}"))
                    .json(&json!({"customer": format!("c{writer}"), "amount": format!("{n}.00"), "status": "open"}))
                    .send()
                    .await;
                if sent.is_ok_and(|response| response.status().is_success()) {
                    acknowledged.lock().unwrap().push((id, n));
                } else {
                    sleep(Duration::from_millis(20)).await;
                }
                n += 1;
            }
        });
    }
    sleep(Duration::from_secs(1)).await;
    nats.kill();
    sleep(Duration::from_secs(1)).await;
    nats.restart().await;
    sleep(Duration::from_secs(2)).await;
    stop.cancel();
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 20,
        "{} writes acknowledged",
        acknowledged.len()
    );

    let deadline = Instant::now() + PATIENCE * 8;
    loop {
        let mut missing = Vec::new();
        for (id, n) in &acknowledged {
            let order = reqwest::get(format!("{}/orders/{id}", new.url))
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap_or(Value::Null);
            if amount(&order) != Some(*n) {
                missing.push(format!("order {id} (amount {n}): {order}"));
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} acknowledged writes missing on new after the NATS restart: {:?}",
            missing.len(),
            acknowledged.len(),
            missing.iter().take(5).collect::<Vec<_>>()
        );
        sleep(Duration::from_millis(200)).await;
    }
    assert!(mirror_failures(&control.url, false).is_empty());
    drop(proxy);
}
