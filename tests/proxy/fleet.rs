//! Fleet mode: several HTTP proxies on one control store and one shared journal on the
//! machine's NATS JetStream (127.0.0.1:4222). Copies appended through any instance are
//! delivered by the instance holding their key's partition, in the order they were appended:
//! a write acknowledged before another write to the same key was sent, through any instance,
//! reaches the new side first. Each test uses a stream of its own and removes it.

use std::time::Duration;

use serde_json::{json, Value};
use tandem_testkit::{NatsCluster, OwnNats, ReservedPort, ScratchStream, NATS};
use tokio::time::{sleep, Instant};

use crate::faults::FaultyOrders;
use crate::harness::{
    journal_summaries, mirror_failures, mirror_failures_reach, tandem, OrdersDb, Proxy,
    SqliteControl, PATIENCE,
};

/// The amount an order holds, as a whole number (`None` when it is missing).
fn amount(order: &Value) -> Option<u64> {
    order["amount"]
        .as_str()
        .and_then(|amount| amount.split('.').next())
        .and_then(|whole| whole.parse().ok())
}

/// `tandem compare` of the orders tables finds both sides identical.
pub(crate) fn assert_compare_identical(dbs: &[OrdersDb; 2]) {
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
    stream: ScratchStream,
}

impl Fleet {
    async fn start(new_latency_ms: u64, more: usize) -> Fleet {
        Fleet::start_with(new_latency_ms, more, &[]).await
    }

    /// [`Fleet::start`] with `extra` flags for every proxy.
    async fn start_with(new_latency_ms: u64, more: usize, extra: &[&str]) -> Fleet {
        let stream = ScratchStream::new("FLEET");
        let (dbs, old, new) = FaultyOrders::pair().await;
        new.faults(json!({"latency_ms": new_latency_ms})).await;
        let control = SqliteControl::new();
        let shared = [
            "--mirror",
            "async",
            "--journal",
            NATS,
            "--journal-stream",
            stream.name(),
            "--stats-interval",
            "1s",
        ];
        let shared = [&shared[..], extra].concat();
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
            stream,
        }
    }

    /// Waits until the journal summary in the store lists all 16 partitions, each held, and
    /// `wanted` holds of the copies they wait with and the distinct proxies holding them.
    async fn partitions_in_store(
        &self,
        what: &str,
        wanted: impl Fn(u64, &std::collections::BTreeSet<String>) -> bool,
    ) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let summaries = journal_summaries(&self.control.url);
            let partitions: Vec<&Value> = summaries
                .iter()
                .filter_map(|summary| summary["partitions"].as_array())
                .flatten()
                .collect();
            let waiting: u64 = partitions
                .iter()
                .filter_map(|partition| partition["copies"].as_u64())
                .sum();
            let holders: std::collections::BTreeSet<String> = partitions
                .iter()
                .filter_map(|partition| partition["holder"].as_str().map(str::to_owned))
                .collect();
            let all_held = partitions.len() == 16
                && partitions
                    .iter()
                    .all(|partition| partition["holder"].is_string());
            if all_held && wanted(waiting, &holders) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "partitions in the store never showed {what}: {summaries:?}"
            );
            sleep(Duration::from_millis(200)).await;
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

    /// Starts another proxy like the second on the fleet's journal, not waited for.
    fn join(&self) -> Proxy {
        let args = [
            "--mirror",
            "async",
            "--journal",
            NATS,
            "--journal-stream",
            self.stream.name(),
            "--stats-interval",
            "1s",
        ];
        Proxy::start(&self.old.url, &self.new.url, &self.control.url, &args)
    }

    /// Two clients write order `key` at once, one through each of the first two proxies
    /// (with the old side slowed, both writes are there together); waits until the
    /// partition's reader noticed the race as it read the second copy.
    async fn race_on(&self, key: u64) {
        let client = reqwest::Client::new();
        let write = |proxy: &str, amount: &str| {
            client
                .put(format!("{proxy}/orders/{key}"))
                .json(&json!({"customer": "racer", "amount": amount, "status": "open"}))
                .send()
        };
        let (one, other) = tokio::join!(
            write(&self.first.url, "1.00"),
            write(&self.second.url, "2.00")
        );
        assert!(one.unwrap().status().is_success());
        assert!(other.unwrap().status().is_success());
        let deadline = Instant::now() + PATIENCE;
        while self.first.metric(CONFLICTS).await + self.second.metric(CONFLICTS).await < 1.0 {
            assert!(Instant::now() < deadline, "the race was not noticed");
            sleep(Duration::from_millis(50)).await;
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

/// The machine's name, as proxies name themselves (`HOST:PID`).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

/// Writes found concurrent with another instance's write to the same key.
const CONFLICTS: &str = "tandem_mirror_conflicts_total{side=\"new\"}";

/// Waits until `proxy` publishes `value` for `series` (gauges are published every second).
async fn metric_becomes(proxy: &Proxy, series: &str, value: f64) {
    // Long enough for a cutover window (grace, mark, 15 s of append retries) to close.
    let deadline = Instant::now() + PATIENCE * 2;
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
    // Each partition is delivered by exactly one of them, as each publishes.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut holders = Vec::new();
        for partition in 0..16 {
            let series = format!("tandem_journal_partition_held{{partition=\"{partition}\"}}");
            let mut held = 0.0;
            for proxy in fleet.all() {
                held += proxy.metric(&series).await;
            }
            holders.push(held);
        }
        if holders.iter().all(|held| *held == 1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "proxies publishing each partition held: {holders:?}"
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

/// A third proxy joins while clients write through the other two (the first backed up): it
/// takes its share of the partitions from the others, which hand each over only once the
/// copies they have in flight of it are delivered; every key ends at its last value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_joining_under_load_takes_partitions_without_reordering_a_key() {
    let fleet = Fleet::start(20, 0).await;
    let old_orders = || async {
        reqwest::get(format!("{}/orders?limit=1000", fleet.old.url))
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()["orders"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let joined = async {
        // Writes are under way (waited for, not timed).
        let deadline = Instant::now() + PATIENCE;
        while old_orders().await < 50 {
            assert!(Instant::now() < deadline, "no writes under way");
            sleep(Duration::from_millis(20)).await;
        }
        let third = fleet.join();
        let deadline = Instant::now() + PATIENCE;
        while third.metric("tandem_journal_partitions_held").await < 1.0 {
            assert!(
                Instant::now() < deadline,
                "the third proxy took no partition"
            );
            sleep(Duration::from_millis(100)).await;
        }
        third
    };
    let ((), third) = tokio::join!(fleet.write_alternating(100, 15), joined);
    fleet.all_at(100, 14, "after the drain").await;
    for proxy in fleet.all().into_iter().chain([&third]) {
        proxy.drained().await;
        assert_eq!(
            proxy.metric(CONFLICTS).await,
            0.0,
            "writes one after the other are never a conflict"
        );
    }
    assert_compare_identical(&fleet.dbs);
    assert!(mirror_failures(&fleet.control.url, false).is_empty());
}

/// Three proxies; the first is SIGKILLed with a backlog in its partitions (one worker against a
/// new side answering in 50 ms): the two others take them over once their leases expire and
/// deliver what it left, in per-key order, without a replay command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_killed_with_a_backlog_leaves_it_to_the_others() {
    let mut fleet = Fleet::start(50, 1).await;
    fleet.write_alternating(50, 6).await;
    // New slowed down until the kill: the backlog is still there however slow the checks are.
    fleet.new.faults(json!({"latency_ms": 1000})).await;
    assert!(
        !fleet.stale(50, 5).await.is_empty(),
        "the backlog is already delivered: nothing left for the kill to test"
    );
    // The store shows the backlog per partition, each with the proxy delivering it, some of
    // it in the partitions of the proxy about to be killed.
    fleet
        .partitions_in_store("a backlog", |waiting, _| waiting > 0)
        .await;
    let first = format!(":{}", fleet.first.process.id());
    let deadline = Instant::now() + PATIENCE;
    loop {
        let summaries = journal_summaries(&fleet.control.url);
        let left: u64 = summaries
            .iter()
            .filter_map(|summary| summary["partitions"].as_array())
            .flatten()
            .filter(|partition| {
                partition["holder"]
                    .as_str()
                    .is_some_and(|holder| holder.ends_with(&first))
            })
            .filter_map(|partition| partition["copies"].as_u64())
            .sum();
        if left > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no backlog in the partitions of the proxy to kill: {summaries:?}"
        );
        sleep(Duration::from_millis(200)).await;
    }
    // The stream's lag is the fleet's: a survivor-to-be publishes the backlog too.
    let deadline = Instant::now() + PATIENCE;
    while fleet
        .second
        .metric("tandem_journal_unsettled_records")
        .await
        == 0.0
    {
        assert!(
            Instant::now() < deadline,
            "the stream's backlog is not published by the other proxy"
        );
        sleep(Duration::from_millis(100)).await;
    }
    // And how old its oldest copy is: the stream's lag in time.
    let deadline = Instant::now() + PATIENCE;
    while fleet
        .second
        .metric("tandem_journal_oldest_unsettled_age_seconds")
        .await
        <= 0.0
    {
        assert!(
            Instant::now() < deadline,
            "the age of the stream's oldest copy is not published"
        );
        sleep(Duration::from_millis(100)).await;
    }
    // And so does `tandem mirror failures`, a line per partition with copies.
    let listed = tandem(&["mirror", "failures", "--control-db", &fleet.control.url]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.lines().any(|line| {
            line.trim_start().starts_with("-> partition ")
                && line.contains(" copies=")
                && line.ends_with(&format!("delivered by {}{first}", hostname()))
        }),
        "{listed}"
    );
    // SIGKILL: nothing runs after it, no lease given back, no drain.
    let killed = std::process::Command::new("kill")
        .args(["-9", &fleet.first.process.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    fleet.first.process.wait(Duration::from_secs(10));
    fleet.new.faults(json!({"latency_ms": 50})).await;
    fleet.all_at(50, 5, "after the kill").await;
    let survivors = [&fleet.second, &fleet.others[0]];
    // The killed proxy's partitions are shared out: the two survivors hold all 16 between
    // them (gauges published every second).
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        let mut held = 0.0;
        for survivor in survivors {
            held += survivor.metric("tandem_journal_partitions_held").await;
        }
        if (held - 16.0).abs() < f64::EPSILON {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the survivors hold {held} partitions, not 16"
        );
        sleep(Duration::from_millis(100)).await;
    }
    for survivor in survivors {
        survivor.drained().await;
        metric_becomes(survivor, "tandem_journal_unsettled_records", 0.0).await;
    }
    // What they took over lies below copies they had read already: read again, and counted
    // so (published every second).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut rereads = 0.0;
        for survivor in survivors {
            rereads += survivor.metric("tandem_journal_rereads_total").await;
        }
        if rereads > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the copies taken over were not counted as read again"
        );
        sleep(Duration::from_millis(100)).await;
    }
    assert_compare_identical(&fleet.dbs);
    assert!(mirror_failures(&fleet.control.url, false).is_empty());
    let killed = format!("{}{first}", hostname());
    fleet
        .partitions_in_store("all delivered by the survivors", |waiting, holders| {
            waiting == 0 && holders.len() == 2 && !holders.contains(&killed)
        })
        .await;
}

/// The first proxy is stopped (SIGSTOP) with a backlog in its worker's hands, past its
/// partitions' lease: the second takes them over, delivers the backlog, and delivers newer
/// writes of every key. When the first wakes it must deliver nothing more of those partitions:
/// its queued copies are older than what the new side holds now. Its lease may have expired,
/// and it learns that from its own clock before any renewal tells it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_paused_past_its_lease_delivers_nothing_more_of_its_partitions() {
    let fleet = Fleet::start(50, 0).await;
    fleet.write_alternating(50, 6).await;
    // New slowed down until the pause: the backlog is still there however slow the checks are.
    fleet.new.faults(json!({"latency_ms": 1000})).await;
    // Stopped with copies in its worker's queue (between two passes over the journal the
    // queue is empty for a moment).
    let deadline = Instant::now() + PATIENCE;
    while fleet.first.metric("tandem_mirror_queue_depth").await < 10.0 {
        assert!(
            !fleet.stale(50, 5).await.is_empty() && Instant::now() < deadline,
            "the first proxy's backlog is already delivered: nothing left for the pause to test"
        );
        sleep(Duration::from_millis(20)).await;
    }
    let signal = |name: &str| {
        let sent = std::process::Command::new("kill")
            .args([name, &fleet.first.process.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    signal("-STOP");
    fleet.new.faults(json!({"latency_ms": 50})).await;
    metric_becomes(&fleet.second, "tandem_journal_partitions_held", 16.0).await;
    fleet.all_at(50, 5, "delivered by the second").await;
    // Newer writes of every key, through the second only, delivered before the first wakes.
    let client = reqwest::Client::new();
    for key in 1..=50 {
        let response = client
            .put(format!("{}/orders/{key}", fleet.second.url))
            .json(&json!({"customer": format!("c{key}"), "amount": "6.00", "status": "open"}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
    }
    fleet.all_at(50, 6, "newer writes through the second").await;
    signal("-CONT");
    // The first's worker goes through what it held when it stopped: fenced, not delivered.
    fleet.first.drained().await;
    let fenced = fleet
        .first
        .metric("tandem_journal_fenced_copies_total")
        .await;
    assert!(
        fenced > 0.0,
        "the first proxy had copies queued when it stopped"
    );
    // Its renewals then find the leases gone.
    let deadline = Instant::now() + PATIENCE;
    while fleet.first.metric("tandem_journal_leases_lost_total").await < 1.0 {
        assert!(Instant::now() < deadline, "no lease counted lost");
        sleep(Duration::from_millis(100)).await;
    }
    let stale = fleet.stale(50, 6).await;
    assert!(
        stale.is_empty(),
        "the woken proxy delivered copies older than the new side's: {stale:?}"
    );
    fleet.second.drained().await;
    assert_compare_identical(&fleet.dbs);
    assert!(mirror_failures(&fleet.control.url, false).is_empty());
}

/// Two clients race on one key through two proxies (both writes at the old side together,
/// 300 ms each): nobody outside the old side knows their order, so the key is recorded for a
/// recheck instead of being silently ordered, and the comparator rechecks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_racing_on_a_key_through_two_proxies_record_it_for_a_recheck() {
    let fleet = Fleet::start(0, 0).await;
    fleet.old.faults(json!({"latency_ms": 300})).await;
    fleet.race_on(77).await;

    let store = sqlx::SqlitePool::connect(&fleet.control.url).await.unwrap();
    key_recorded(&store, "/orders/77", "the key was not recorded").await;

    // The comparator rechecks the key once the copies are delivered: settled when the new
    // side ended with the old side's value, raised as diverged when the copies arrived in
    // the other order. Which one happened is what `tandem compare` of the table says.
    for proxy in fleet.all() {
        proxy.drained().await;
    }
    let identical = tandem(&[
        "compare",
        "--old",
        &fleet.dbs[0].url(),
        "--new",
        &fleet.dbs[1].url(),
        "--table",
        "orders",
        "--recheck",
        "0",
    ])
    .status
    .success();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("comparator.toml");
    std::fs::write(
        &config,
        "tables = [{ name = \"orders\", ordering_key = \"/orders/{id}\" }]\n\
         recheck = 1\nrecheck_delay = \"100ms\"\n",
    )
    .unwrap();
    let (comparator, _api) = tandem_testkit::ChildProcess::comparator(
        std::path::Path::new(env!("CARGO_BIN_EXE_tandem")),
        &fleet.dbs[0].url(),
        &fleet.dbs[1].url(),
        &fleet.control.url,
        &["--config", config.to_str().unwrap(), "--interval", "1h"],
    );
    let expected = if identical { "settled" } else { "diverged" };
    let deadline = Instant::now() + PATIENCE;
    loop {
        let statuses: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT status, table_name FROM key_conflicts")
                .fetch_all(&store)
                .await
                .unwrap();
        if statuses
            .iter()
            .all(|(status, _)| status != "pending" && status != "checking")
        {
            assert!(
                statuses
                    .iter()
                    .all(|(status, table)| status == expected && table.as_deref() == Some("orders")),
                "{statuses:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "not rechecked: {statuses:?}");
        sleep(Duration::from_millis(50)).await;
    }
    comparator.terminate();
    store.close().await;
}

/// Starts a fleet with `extra` flags for its proxies, locks its SQLite control store (a
/// transaction `BEGIN IMMEDIATE` on a connection of its own, returned) and races two writes of
/// order `key` through the two proxies: the race is found while the store cannot be written.
async fn race_with_the_store_locked(
    key: u64,
    extra: &[&str],
) -> (
    Fleet,
    sqlx::SqlitePool,
    sqlx::pool::PoolConnection<sqlx::Sqlite>,
) {
    let fleet = Fleet::start_with(0, 0, extra).await;
    fleet.old.faults(json!({"latency_ms": 300})).await;
    let store = sqlx::SqlitePool::connect(&fleet.control.url).await.unwrap();
    let mut locked = store.acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *locked)
        .await
        .unwrap();
    fleet.race_on(key).await;
    (fleet, store, locked)
}

/// Ends the transaction [`race_with_the_store_locked`] holds: the store takes writes again.
async fn unlock(mut locked: sqlx::pool::PoolConnection<sqlx::Sqlite>) {
    sqlx::query("COMMIT").execute(&mut *locked).await.unwrap();
}

/// A race found while the control store cannot be written (here: its SQLite file locked by
/// another writer for longer than a write of the conflict may take) is recorded once the store
/// takes writes again, never given up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_race_found_while_the_store_is_unwritable_is_recorded_once_it_is_back() {
    let (_fleet, store, locked) = race_with_the_store_locked(78, &[]).await;
    // Longer than a write of the conflict may take (5 s), twice.
    sleep(Duration::from_secs(12)).await;
    unlock(locked).await;
    key_recorded(
        &store,
        "/orders/78",
        "the race found while the store was locked was never recorded",
    )
    .await;
    store.close().await;
}

/// A race found while the control store cannot be written, then SIGTERM to both proxies: the
/// drain waits for the conflict queue, and the key is recorded once the store takes writes
/// again (before the drain's deadline); both proxies exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_race_queued_at_sigterm_is_recorded_by_the_drain_once_the_store_is_back() {
    let (mut fleet, store, locked) =
        race_with_the_store_locked(79, &["--shutdown-timeout", "30s"]).await;
    fleet.first.process.terminate();
    fleet.second.process.terminate();
    // The drain is under way, the conflict still queued behind the locked store.
    sleep(Duration::from_secs(3)).await;
    unlock(locked).await;
    for proxy in [&mut fleet.first, &mut fleet.second] {
        let status = proxy.process.wait(Duration::from_secs(60));
        assert!(status.success(), "{status}: {}", proxy.process.log());
    }
    key_recorded(
        &store,
        "/orders/79",
        "the race queued at SIGTERM was not recorded by the drain",
    )
    .await;
    store.close().await;
}

/// A race found while the control store cannot be written, and the store still locked when
/// the drain's deadline comes: the proxy ends at its deadline rather than waiting for the store,
/// and says the conflict it could not record, with its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_race_still_unrecorded_at_the_drains_deadline_is_said_with_its_key() {
    let (mut fleet, store, mut locked) =
        race_with_the_store_locked(80, &["--shutdown-timeout", "2s"]).await;
    fleet.first.process.terminate();
    fleet.second.process.terminate();
    let mut said = Vec::new();
    for proxy in [&mut fleet.first, &mut fleet.second] {
        proxy.process.wait(Duration::from_secs(60));
        said.push(proxy.process.log());
    }
    sqlx::query("ROLLBACK").execute(&mut *locked).await.unwrap();
    drop(locked);
    let dropped: Vec<&String> = said
        .iter()
        .filter(|log| {
            log.contains("cannot be recorded for a recheck") && log.contains("/orders/80")
        })
        .collect();
    assert_eq!(
        dropped.len(),
        1,
        "the unrecorded conflict is said once: {said:?}"
    );
    assert!(
        dropped[0].contains("key conflicts still waiting for the control store are not recorded"),
        "{}",
        dropped[0]
    );
    store.close().await;
}

/// Waits until the store's `key_conflicts` lists a key, and checks it is exactly `key`, for
/// the new side (`missing`: the failure's message when none comes).
async fn key_recorded(store: &sqlx::SqlitePool, key: &str, missing: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let keys: Vec<(String, String)> =
            sqlx::query_as("SELECT target_side, ordering_key FROM key_conflicts")
                .fetch_all(store)
                .await
                .unwrap();
        if !keys.is_empty() {
            assert!(
                keys.iter()
                    .all(|(side, found)| side == "new" && found == key),
                "{keys:?}"
            );
            return;
        }
        assert!(Instant::now() < deadline, "{missing}");
        sleep(Duration::from_millis(50)).await;
    }
}

/// For a failure's message: where the copies of orders `ids` are in the journal stream
/// (`TANDEM` on the server at `url`), read message by message by sequence, without the
/// subject filters the proxy reads with.
async fn in_stream(url: &str, ids: &[u64]) -> Vec<String> {
    let Ok(client) = async_nats::connect(url).await else {
        return vec!["cannot connect".to_owned()];
    };
    let Ok(stream) = async_nats::jetstream::new(client)
        .get_stream("TANDEM")
        .await
    else {
        return vec!["no stream".to_owned()];
    };
    let Ok(info) = stream.get_info().await else {
        return vec!["no stream info".to_owned()];
    };
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut found = vec![format!(
        "{} messages, seq {first}..={last}",
        info.state.messages
    )];
    for seq in first..=last {
        if let Ok(message) = stream.get_raw_message(seq).await {
            let payload = String::from_utf8_lossy(&message.payload);
            if ids
                .iter()
                .any(|id| payload.contains(&format!("/orders/{id}")))
            {
                found.push(format!("seq {seq} on {}", message.subject));
            }
        }
    }
    found
}

/// Four clients creating orders through a proxy, one at a time each (writer `w`'s n-th order
/// has id `w * 1_000_000 + n` and amount `n`), until stopped.
struct Writers {
    tasks: tokio::task::JoinSet<()>,
    acknowledged: std::sync::Arc<std::sync::Mutex<Vec<(u64, u64)>>>,
    refused: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    /// Writes answered with `X-Tandem-Mirror-Status: not-mirrored` (taken by old, recorded
    /// as not mirrored): not among those acknowledged.
    not_mirrored: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
}

impl Writers {
    fn start(proxy: &str, stop: &tokio_util::sync::CancellationToken) -> Writers {
        // Longer than a write can be held (its mark, 15 s of append retries): a write whose
        // client gave up would be in no list.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut writers = Writers {
            tasks: tokio::task::JoinSet::new(),
            acknowledged: std::sync::Arc::default(),
            refused: std::sync::Arc::default(),
            not_mirrored: std::sync::Arc::default(),
        };
        for writer in 1..=4u64 {
            let (client, url, stop) = (client.clone(), proxy.to_owned(), stop.clone());
            let (acknowledged, refused, not_mirrored) = (
                std::sync::Arc::clone(&writers.acknowledged),
                std::sync::Arc::clone(&writers.refused),
                std::sync::Arc::clone(&writers.not_mirrored),
            );
            writers.tasks.spawn(async move {
                let mut n = 1u64;
                while !stop.is_cancelled() {
                    let id = writer * 1_000_000 + n;
                    let sent = client
                        .put(format!("{url}/orders/{id}"))
                        .json(&json!({"customer": format!("c{writer}"), "amount": format!("{n}.00"), "status": "open"}))
                        .send()
                        .await
                        .map(|response| {
                            let recorded = response
                                .headers()
                                .get("x-tandem-mirror-status")
                                .is_some_and(|value| value == "not-mirrored");
                            (response.status(), recorded)
                        });
                    if let Ok((status, true)) = sent {
                        assert!(status.is_success(), "{status} said not mirrored");
                        not_mirrored.lock().unwrap().push(id);
                    } else if sent.as_ref().is_ok_and(|(status, _)| status.is_success()) {
                        acknowledged.lock().unwrap().push((id, n));
                    } else {
                        let sent = sent.map(|(status, _)| status);
                        if sent.is_ok_and(|status| status == reqwest::StatusCode::SERVICE_UNAVAILABLE) {
                            refused.lock().unwrap().push(id);
                        }
                        sleep(Duration::from_millis(50)).await;
                    }
                    n += 1;
                }
            });
        }
        writers
    }

    /// Waits until `more` writes were acknowledged after this call.
    async fn acknowledge_more(&self, more: usize) {
        let count = || self.acknowledged.lock().unwrap().len();
        wait_for_more(count, more, "acknowledged").await;
    }

    /// Waits until `more` writes were refused with 503 after this call.
    async fn refuse_more(&self, more: usize) {
        let count = || self.refused.lock().unwrap().len();
        wait_for_more(count, more, "refused").await;
    }

    /// Waits for the writers: the orders acknowledged (with their amounts), the ids refused
    /// with 503, and those answered as not mirrored.
    async fn finish(mut self) -> (Vec<(u64, u64)>, Vec<u64>, Vec<u64>) {
        while let Some(done) = self.tasks.join_next().await {
            done.unwrap();
        }
        let acknowledged = self.acknowledged.lock().unwrap().clone();
        let refused = self.refused.lock().unwrap().clone();
        let not_mirrored = self.not_mirrored.lock().unwrap().clone();
        (acknowledged, refused, not_mirrored)
    }
}

/// Waits until `count` grew by `more`.
async fn wait_for_more(count: impl Fn() -> usize, more: usize, what: &str) {
    let (before, deadline) = (count(), Instant::now() + PATIENCE);
    while count() < before + more {
        assert!(
            Instant::now() < deadline,
            "{} writes {what} after {before}",
            count() - before
        );
        sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts that no order refused with 503 is on the old side: the journal refused the write
/// before either side saw it.
async fn assert_refused_before_old(old: &str, refused: &[u64]) {
    assert!(
        !refused.is_empty(),
        "no write refused while the journal was out of reach"
    );
    assert_not_on_old(old, refused).await;
}

/// Asserts that none of the orders `refused` (with 503) is on the old side.
async fn assert_not_on_old(old: &str, refused: &[u64]) {
    for id in refused {
        let on_old = reqwest::get(format!("{old}/orders/{id}"))
            .await
            .unwrap()
            .status();
        assert_eq!(
            on_old,
            reqwest::StatusCode::NOT_FOUND,
            "refused order {id} is on old"
        );
    }
}

/// The NATS server is SIGKILLed and restarted under load (file storage), with copies waiting
/// in the stream (the new side slowed until then): every write a client saw acknowledged
/// reaches the new side, exactly; none is lost silently. (While the server is down, writes
/// are refused with 503 before old sees them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_server_restarted_under_load_loses_no_acknowledged_copy() {
    let mut nats = OwnNats::start().await;
    let Journaled {
        proxy,
        control,
        old,
        new,
        _dbs,
    } = Journaled::start(&nats.url(), &[]).await;

    let stop = tokio_util::sync::CancellationToken::new();
    let writers = Writers::start(&proxy.url, &stop);
    back_up(&proxy, &new, &writers).await;
    nats.kill();
    // While the server is down, writes are refused (waited for, not timed).
    writers.refuse_more(3).await;
    nats.restart().await;
    new.faults(json!({"latency_ms": 20})).await;
    // Writes are acknowledged again after the restart.
    writers.acknowledge_more(20).await;
    stop.cancel();
    let (acknowledged, refused, not_mirrored) = writers.finish().await;
    assert_refused_before_old(&old.url, &refused).await;
    assert_acknowledged_on_new(&new.url, &acknowledged, "after the NATS restart").await;
    assert_recorded_exactly(&control.url, &not_mirrored).await;
    drop(proxy);
}

/// A proxy in dual-write with the async mirror journaled on the NATS server at `journal`
/// (`extra` flags added), between two orders services, the new one answering 20 ms later.
struct Journaled {
    proxy: Proxy,
    control: SqliteControl,
    old: FaultyOrders,
    new: FaultyOrders,
    /// Kept until the test ends (bound, not dropped, where it is taken apart).
    _dbs: [OrdersDb; 2],
}

impl Journaled {
    async fn start(journal: &str, extra: &[&str]) -> Journaled {
        let (dbs, old, new) = FaultyOrders::pair().await;
        new.faults(json!({"latency_ms": 20})).await;
        let control = SqliteControl::new();
        let mut args = vec![
            "--mirror",
            "async",
            "--journal",
            journal,
            "--new-timeout",
            "2s",
        ];
        args.extend_from_slice(extra);
        let proxy = Proxy::start(&old.url, &new.url, &control.url, &args);
        proxy.set_stage("dual-write").await;
        Journaled {
            proxy,
            control,
            old,
            new,
            _dbs: dbs,
        }
    }
}

/// Slows `new` until copies wait in the stream when a server is killed: at least
/// [`BACKLOG`] acknowledged and not yet delivered, as `proxy` publishes its backlog (every
/// checkpoint).
async fn back_up(proxy: &Proxy, new: &FaultyOrders, writers: &Writers) {
    new.faults(json!({"latency_ms": 1000})).await;
    writers.acknowledge_more(BACKLOG).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let waiting = proxy.metric("tandem_journal_unsettled_records").await;
        #[allow(clippy::cast_precision_loss)]
        if waiting >= BACKLOG as f64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {waiting} copies wait in the stream"
        );
        sleep(Duration::from_millis(100)).await;
    }
}

/// How many copies [`back_up`] leaves waiting.
const BACKLOG: usize = 10;

/// Waits until every acknowledged write (order id, amount) is on `new` with its amount.
async fn assert_acknowledged_on_new(new: &str, acknowledged: &[(u64, u64)], after: &str) {
    let deadline = Instant::now() + PATIENCE * 8;
    loop {
        let mut missing = Vec::new();
        for (id, n) in acknowledged {
            let order = reqwest::get(format!("{new}/orders/{id}"))
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
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} acknowledged writes missing on new {after}: {:?}",
            missing.len(),
            acknowledged.len(),
            missing.iter().take(5).collect::<Vec<_>>()
        );
        sleep(Duration::from_millis(200)).await;
    }
}

/// The shared journal on a three-node NATS cluster with `--journal-replicas 3`, the setting
/// the README gives for a migration: its streams are created with three replicas, and when
/// the node leading the copies' stream is SIGKILLed under load (the proxy's own node, or
/// another), the proxy goes on through the others (it learnt them from the server) and every
/// write a client saw acknowledged reaches the new side, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_lost_under_load_loses_no_acknowledged_copy() {
    let mut cluster = NatsCluster::start(3).await;
    let extra = ["--journal-stream", "CLUSTERED", "--journal-replicas", "3"];
    let Journaled {
        proxy,
        control,
        old,
        new,
        _dbs,
    } = Journaled::start(&cluster.url(0), &extra).await;
    for stream in ["CLUSTERED", "CLUSTERED_settled", "CLUSTERED_leases"] {
        assert_eq!(cluster.replicas(1, stream).await, 3, "{stream}");
    }

    let stop = tokio_util::sync::CancellationToken::new();
    let writers = Writers::start(&proxy.url, &stop);
    writers.acknowledge_more(50).await;
    back_up(&proxy, &new, &writers).await;
    // The node leading the copies' stream: the others elect a new leader, and appends wait
    // for it (the proxy's own node may be another one).
    let leader = cluster.leader(1, "CLUSTERED").await;
    cluster.kill(leader);
    new.faults(json!({"latency_ms": 20})).await;
    // Writes are acknowledged again through the two nodes left (some may be refused while
    // the cluster elects new leaders).
    writers.acknowledge_more(50).await;
    cluster.restart(leader).await;
    writers.acknowledge_more(20).await;
    stop.cancel();
    let (acknowledged, refused, not_mirrored) = writers.finish().await;
    assert_not_on_old(&old.url, &refused).await;
    assert_acknowledged_on_new(&new.url, &acknowledged, "after a cluster node was lost").await;
    assert_recorded_exactly(&control.url, &not_mirrored).await;
    drop(proxy);
}

/// A write whose append outlasted its retries (a server back or a leader elected only after
/// them) is answered as not mirrored: said, never lost silently. The store's records of
/// writes not mirrored are exactly those writes.
async fn assert_recorded_exactly(control: &str, not_mirrored: &[u64]) {
    assert!(
        mirror_failures(control, false).is_empty(),
        "no copy kept for replay"
    );
    // Records of writes not mirrored carry no copy: listed with every record (`--all`).
    let mut recorded: Vec<u64> = mirror_failures_reach(control, true, not_mirrored.len())
        .await
        .iter()
        .filter(|failure| failure["status"] == "not_mirrored")
        .filter_map(|failure| failure["uri"].as_str()?.rsplit('/').next()?.parse().ok())
        .collect();
    recorded.sort_unstable();
    let mut said = not_mirrored.to_vec();
    said.sort_unstable();
    assert_eq!(
        recorded, said,
        "the writes answered as not mirrored are those recorded"
    );
}

/// Writes an order through `proxy` and returns whether the answer said its copy is not
/// mirrored (`X-Tandem-Mirror-Status: not-mirrored`); any answer but a success fails.
async fn put_order(client: &reqwest::Client, proxy: &str, id: u64, n: u64) -> bool {
    let response = client
        .put(format!("{proxy}/orders/{id}"))
        .json(&json!({"customer": "c", "amount": format!("{n}.00"), "status": "open"}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let not_mirrored = response
        .headers()
        .get("x-tandem-mirror-status")
        .is_some_and(|status| status == "not-mirrored");
    assert!(
        status.is_success(),
        "order {id}: {status} {}",
        response.text().await.unwrap_or_default()
    );
    not_mirrored
}

/// The NATS server dies under the `record` policy: each write meanwhile goes to old, is
/// answered as not mirrored and recorded as such, exactly those writes (reason
/// `journal_unreachable`, or `journal_append_failed` for one whose append was on its way);
/// after the restart writes are mirrored again, and every write not recorded is on new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_while_the_nats_server_is_down_under_the_record_policy_are_each_recorded() {
    let mut nats = OwnNats::start().await;
    let (_dbs, old, new) = FaultyOrders::pair().await;
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
            "--journal-full",
            "record",
            "--new-timeout",
            "2s",
        ],
    );
    proxy.set_stage("dual-write").await;
    // In its cutover window a proxy refuses what it cannot check against the stream
    // (`journal_failed`, tested in cutover.rs); the policy is for the time after it.
    metric_becomes(&proxy, "tandem_cutover_window_open", 0.0).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let (mut mirrored, mut not_mirrored) = (Vec::new(), Vec::new());
    let mut id = 0u64;
    let mut write = |answer: bool, id: u64| {
        if answer {
            not_mirrored.push(id);
        } else {
            mirrored.push(id);
        }
    };
    for _ in 0..5 {
        id += 1;
        write(put_order(&client, &proxy.url, id, id).await, id);
    }

    nats.kill();
    // Written one after another until ten were answered as not mirrored (waited for, not
    // timed: the proxy learns at once that its connection is gone).
    let deadline = Instant::now() + PATIENCE;
    let mut down = 0;
    while down < 10 {
        assert!(Instant::now() < deadline, "only {down} writes not mirrored");
        id += 1;
        let answer = put_order(&client, &proxy.url, id, id).await;
        down += usize::from(answer);
        write(answer, id);
    }
    nats.restart().await;
    // Written until five in a row were mirrored again.
    let deadline = Instant::now() + PATIENCE;
    let mut in_a_row = 0;
    while in_a_row < 5 {
        assert!(Instant::now() < deadline, "writes not mirrored again");
        id += 1;
        let answer = put_order(&client, &proxy.url, id, id).await;
        in_a_row = if answer { 0 } else { in_a_row + 1 };
        write(answer, id);
    }

    let failures =
        crate::harness::mirror_failures_reach(&control.url, true, not_mirrored.len()).await;
    let mut recorded: Vec<String> = failures
        .iter()
        .map(|failure| failure["uri"].as_str().unwrap_or_default().to_owned())
        .collect();
    recorded.sort();
    let mut expected: Vec<String> = not_mirrored
        .iter()
        .map(|id| format!("/orders/{id}"))
        .collect();
    expected.sort();
    assert_eq!(recorded, expected, "recorded: {failures:?}");
    for failure in &failures {
        let reason = failure["reason"].as_str().unwrap_or_default();
        assert!(
            reason == "journal_unreachable" || reason == "journal_append_failed",
            "{failure}"
        );
    }
    assert!(
        failures
            .iter()
            .any(|failure| failure["reason"] == "journal_unreachable"),
        "no write recorded as refused by the journal out of reach: {failures:?}"
    );
    for id in not_mirrored.iter().chain(&mirrored) {
        let order = reqwest::get(format!("{}/orders/{id}", old.url))
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap_or(Value::Null);
        assert_eq!(amount(&order), Some(*id), "order {id} on old: {order}");
    }
    let deadline = Instant::now() + PATIENCE * 4;
    loop {
        let mut missing = Vec::new();
        for id in &mirrored {
            let order = reqwest::get(format!("{}/orders/{id}", new.url))
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap_or(Value::Null);
            if amount(&order) != Some(*id) {
                missing.push(*id);
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mirrored writes missing on new: {missing:?}"
        );
        sleep(Duration::from_millis(200)).await;
    }
    drop(proxy);
}

/// The NATS server dies while clients write, and the proxy is SIGKILLed before the server is
/// back: every write a client saw acknowledged reaches the new side once both are restarted,
/// or is recorded as not mirrored; none is lost silently. (While the journal cannot take
/// copies, the default `refuse` policy answers 503 before old sees the write.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_while_the_nats_server_is_down_survive_a_sigkill_of_the_proxy() {
    let mut nats = OwnNats::start().await;
    let (_dbs, old, new) = FaultyOrders::pair().await;
    // Copies wait in the proxy while the server is down: the new side takes a long time.
    new.faults(json!({"latency_ms": 60_000})).await;
    let control = SqliteControl::new();
    let url = nats.url();
    // Kept from other tests until the restarted proxy listens on it again.
    let port = ReservedPort::new();
    let listen = port.address().to_string();
    // The restarted proxy finds what the killed one left on its disk (the records of writes
    // it answered as not mirrored, not yet shipped to the store), as on a real restart.
    let local = tempfile::tempdir().unwrap();
    let local_dir = local.path().display().to_string();
    let args = [
        "--listen",
        &listen,
        "--mirror",
        "async",
        "--journal",
        &url,
        "--journal-dir",
        &local_dir,
        // Longer than the test runs before the kill (the writes in flight when the server dies
        // retry their appends for 15 s); the restarted proxy waits as long for the killed
        // one's requests before it delivers the partitions it takes over.
        "--new-timeout",
        "40s",
    ];
    let mut proxy = Proxy::start(&old.url, &new.url, &control.url, &args);
    proxy.set_stage("dual-write").await;

    let stop = tokio_util::sync::CancellationToken::new();
    let writers = Writers::start(&proxy.url, &stop);
    sleep(Duration::from_millis(500)).await;
    nats.kill();
    // Writes are refused once an append has failed (the writes in flight when the server
    // died retry theirs first): waited for, not timed (a run under load took longer than 8 s).
    writers.refuse_more(1).await;
    stop.cancel();
    // Answered as not mirrored (its append outlasted the retries): recorded, checked below
    // like those acknowledged.
    let (acknowledged, refused, not_mirrored) = writers.finish().await;
    let killed = std::process::Command::new("kill")
        .args(["-9", &proxy.process.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    proxy.process.wait(Duration::from_secs(10));
    let acknowledged: Vec<u64> = acknowledged.iter().map(|(id, _)| *id).collect();
    assert!(!acknowledged.is_empty(), "no write acknowledged");
    let acknowledged = [acknowledged, not_mirrored].concat();
    // While the server was down, writes were refused before old saw them.
    assert_refused_before_old(&old.url, &refused).await;

    nats.restart().await;
    new.faults(json!({"latency_ms": 0})).await;
    proxy = Proxy::start(&old.url, &new.url, &control.url, &args);
    let deadline = Instant::now() + PATIENCE * 4;
    loop {
        let recorded: Vec<String> = mirror_failures(&control.url, true)
            .iter()
            .filter_map(|failure| failure["uri"].as_str().map(str::to_owned))
            .collect();
        let mut lost = Vec::new();
        let mut lost_ids = Vec::new();
        for id in &acknowledged {
            let on_old = reqwest::get(format!("{}/orders/{id}", old.url))
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap_or(Value::Null);
            let on_new = reqwest::get(format!("{}/orders/{id}", new.url))
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap_or(Value::Null);
            if on_old != on_new && !recorded.contains(&format!("/orders/{id}")) {
                lost.push(format!("order {id}: old {on_old}, new {on_new}"));
                lost_ids.push(*id);
            }
        }
        if lost.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let found = in_stream(&url, &lost_ids).await;
            panic!(
                "{} of {} acknowledged writes neither on new nor recorded: {:?}; in the stream, \
                 read by sequence: {found:?}; proxy log:\n{}",
                lost.len(),
                acknowledged.len(),
                lost.iter().take(5).collect::<Vec<_>>(),
                proxy.process.log()
            );
        }
        sleep(Duration::from_millis(200)).await;
    }
    drop(proxy);
}

/// The lease fences when a copy is sent, not when the new side applies it: a proxy stopped
/// (SIGSTOP) while the new side holds its copy of a key for longer than the lease still has
/// that request on its way when the next holder takes the partition over. The next holder
/// delivers only once that request can have ended, so the newer copy, written through it,
/// lands last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_the_new_side_holds_past_the_lease_never_lands_over_a_newer_one() {
    let stream = ScratchStream::new("FLEET");
    let (_dbs, old, new) = FaultyOrders::pair().await;
    let control = SqliteControl::new();
    // The new side holds a request 11 s, past the 6 s lease, within the 12 s timeout.
    let held_for = Duration::from_secs(11);
    let args = [
        "--mirror",
        "async",
        "--journal",
        NATS,
        "--journal-stream",
        stream.name(),
        "--new-timeout",
        "12s",
    ];
    let first = Proxy::start(&old.url, &new.url, &control.url, &args);
    first.set_stage("dual-write").await;
    metric_becomes(&first, "tandem_journal_partitions_held", 16.0).await;
    new.faults(json!({"latency_ms": held_for.as_millis()}))
        .await;
    let client = reqwest::Client::new();
    let put = |proxy: &str, amount: &str| {
        client
            .put(format!("{proxy}/orders/1"))
            .json(&json!({"customer": "c1", "amount": amount, "status": "open"}))
            .send()
    };
    let response = put(&first.url, "1.00").await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    // Its copy is on its way to the new side.
    let deadline = Instant::now() + PATIENCE;
    while first.metric("tandem_mirror_queue_depth").await < 1.0 {
        assert!(Instant::now() < deadline, "the copy never reached a worker");
        sleep(Duration::from_millis(20)).await;
    }
    let lands_by = Instant::now() + held_for;
    let second = Proxy::start(&old.url, &new.url, &control.url, &args);
    second.wait_for_stage("dual-write").await;
    let signal = |name: &str| {
        let sent = std::process::Command::new("kill")
            .args([name, &first.process.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    signal("-STOP");
    new.faults(json!({"latency_ms": 0})).await;
    let response = put(&second.url, "2.00").await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let on_new = || async {
        reqwest::get(format!("{}/orders/1", new.url))
            .await
            .unwrap()
            .json::<Value>()
            .await
            .ok()
            .as_ref()
            .and_then(amount)
    };
    let deadline = Instant::now() + PATIENCE;
    while on_new().await != Some(2) {
        assert!(
            Instant::now() < deadline,
            "the newer copy never reached the new side; second proxy log:\n{}",
            second.process.log()
        );
        sleep(Duration::from_millis(100)).await;
    }
    // Past the moment the held request lands.
    tokio::time::sleep_until(lands_by + Duration::from_secs(1)).await;
    assert_eq!(
        on_new().await,
        Some(2),
        "the stopped proxy's request landed over the newer copy"
    );
    signal("-CONT");
}

/// A copy left in the shared journal past `--journal-retention` (its proxy killed while the
/// new side hung on it) is never dropped by the server without a trace: the partition's next
/// holder keeps it in the control store for replay (reason `journal_expired`, its key parked),
/// counts it and raises an alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_past_the_journal_retention_is_kept_in_the_store_and_alerted() {
    let stream = ScratchStream::new("FLEET");
    let (_dbs, old, new) = FaultyOrders::pair().await;
    new.faults(json!({"latency_ms": 60_000})).await;
    let control = SqliteControl::new();
    let args = [
        "--mirror",
        "async",
        "--journal",
        NATS,
        "--journal-stream",
        stream.name(),
        "--journal-retention",
        "2s",
        // The restarted proxy waits this long (at least the old side's 10 s) for the killed
        // one's requests before it delivers the partitions it takes over.
        "--new-timeout",
        "3s",
    ];
    let mut proxy = Proxy::start(&old.url, &new.url, &control.url, &args);
    proxy.set_stage("dual-write").await;
    let response = reqwest::Client::new()
        .put(format!("{}/orders/1", proxy.url))
        .json(&json!({"customer": "c1", "amount": "1.00", "status": "open"}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    // Acknowledged: the copy is in the stream; its delivery hangs at the new side.
    let killed = std::process::Command::new("kill")
        .args(["-9", &proxy.process.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    proxy.process.wait(Duration::from_secs(10));
    // Past the retention, and past a server's sweep of messages older than it.
    sleep(Duration::from_secs(5)).await;
    new.faults(json!({"latency_ms": 0})).await;
    proxy = Proxy::start(&old.url, &new.url, &control.url, &args);
    let deadline = Instant::now() + PATIENCE;
    let expired = loop {
        let expired: Vec<Value> = mirror_failures(&control.url, true)
            .into_iter()
            .filter(|failure| failure["reason"] == "journal_expired")
            .collect();
        if !expired.is_empty() {
            break expired;
        }
        assert!(
            Instant::now() < deadline,
            "the copy past the retention is neither delivered nor recorded; proxy log:\n{}",
            proxy.process.log()
        );
        sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0]["uri"], "/orders/1", "{}", expired[0]);
    assert_eq!(
        proxy.metric("tandem_journal_expired_total").await,
        1.0,
        "counted"
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        let alerts = crate::harness::tandem_json(&[
            "alerts",
            "list",
            "--format",
            "json",
            "--control-db",
            &control.url,
        ]);
        let raised = alerts.as_array().and_then(|alerts| {
            alerts
                .iter()
                .find(|alert| alert["kind"] == "journal_expired")
        });
        if let Some(alert) = raised {
            assert_eq!(alert["severity"], "critical", "{alert}");
            break;
        }
        assert!(Instant::now() < deadline, "no alert raised: {alerts}");
        sleep(Duration::from_millis(200)).await;
    }
    drop(proxy);
}

/// `tandem proxy --journal` naming a NATS server started without JetStream stops at start
/// with one line saying so (and how to start it), said once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_without_jetstream_stops_the_proxy_with_one_line() {
    let port = ReservedPort::new();
    let server = tandem_testkit::ChildProcess::spawn(
        &tandem_testkit::nats_server(),
        &["-a", "127.0.0.1", "-p", &port.port().to_string()],
        &[],
    );
    let deadline = Instant::now() + PATIENCE;
    while !OwnNats::greets(port.port()).await {
        assert!(Instant::now() < deadline, "nats-server did not start");
        sleep(Duration::from_millis(50)).await;
    }
    let control = SqliteControl::new();
    let url = format!("nats://{}", port.address());
    let output = tandem(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--old",
        "http://127.0.0.1:9",
        "--new",
        "http://127.0.0.1:9",
        "--control-db",
        &control.url,
        "--mirror",
        "async",
        "--journal",
        &url,
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("error"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert_eq!(
        errors[0],
        format!(
            "error: mirror journal: the NATS server at {url} has no JetStream (start it with \
             -js): jetstream unavailable"
        ),
        "{stderr}"
    );
    server.terminate();
}

/// The NATS server's password, in the journal URL given through `TANDEM_JOURNAL` (never a
/// flag, which `ps` would show), never shows: not in the proxy's log, its metrics, the journal
/// summaries in the control store, nor `tandem mirror failures`. A proxy given a wrong
/// password stops with one line that does not show it either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_servers_password_never_shows() {
    const PASSWORD: &str = "s3cret-journal-pw";
    let nats = OwnNats::start_with_user("tandem", PASSWORD).await;
    let with_password = |password: &str| {
        nats.url()
            .replacen("nats://", &format!("nats://tandem:{password}@"), 1)
    };
    let (_dbs, old, new) = FaultyOrders::pair().await;
    let control = SqliteControl::new();
    let journal = with_password(PASSWORD);
    let proxy = Proxy::start_with_env(
        &old.url,
        &new.url,
        &control.url,
        &["--mirror", "async", "--stats-interval", "1s"],
        &[("TANDEM_JOURNAL", &journal)],
    );
    proxy.set_stage("dual-write").await;
    let client = reqwest::Client::new();
    for id in 1..=5 {
        assert!(!put_order(&client, &proxy.url, id, 1).await);
    }
    assert_acknowledged_on_new(&new.url, &[(1, 1), (5, 1)], "through the shared journal").await;
    let deadline = Instant::now() + PATIENCE;
    while journal_summaries(&control.url).is_empty() {
        assert!(Instant::now() < deadline, "no journal summary written");
        sleep(Duration::from_millis(200)).await;
    }
    let metrics = reqwest::get(format!("{}/metrics", proxy.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let listed = tandem(&["mirror", "failures", "--control-db", &control.url]);
    for (place, text) in [
        ("the proxy's log", proxy.process.log()),
        ("its metrics", metrics),
        (
            "the journal summaries",
            format!("{:?}", journal_summaries(&control.url)),
        ),
        (
            "tandem mirror failures",
            String::from_utf8_lossy(&listed.stdout).into_owned(),
        ),
    ] {
        assert!(
            !text.contains(PASSWORD),
            "the password shows in {place}:\n{text}"
        );
    }
    drop(proxy);

    let wrong = with_password("not-the-password");
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--old",
            &old.url,
            "--new",
            &new.url,
            "--control-db",
            &control.url,
            "--mirror",
            "async",
        ])
        .env("TANDEM_JOURNAL", &wrong)
        .kill_on_drop(true)
        .output();
    let refused = tokio::time::timeout(PATIENCE, refused)
        .await
        .expect("a proxy given a wrong password did not stop")
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        !stderr.contains("not-the-password") && stderr.contains("error: mirror journal"),
        "{stderr}"
    );
}
