//! The cutover protocol under live traffic: when the authoritative side changes, copies on
//! their way to it land before the next request to their key, and nothing is lost or kept.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tandem_testkit::{Forwarder, OwnNats, PostgresDb, ReservedPort, ScratchStream, NATS};
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

use crate::failures::replay;
use crate::faults::{journal_emptied, FaultyOrders};
use crate::fleet::assert_compare_identical;
use crate::harness::{
    expect_ok, mirror_failures, mirror_failures_reach, tandem, OrdersDb, Proxy, RecordingUpstream,
    SqliteControl, PATIENCE,
};

/// Keys written concurrently, one writer each (one write per key in flight).
const KEYS: i64 = 16;

/// How long the writers run on each side of the stage change.
const PHASE: Duration = Duration::from_millis(1500);

/// What one writer saw of its key: the newest version the proxy acknowledged, the newest it
/// sent (acknowledged or not: a later one is in flight or failed), and its failures.
#[derive(Debug, Default)]
struct KeyWrites {
    acknowledged: Option<u64>,
    sent: u64,
    failures: Vec<String>,
}

/// Writers of `KEYS` orders through the proxy, one write per key in flight; write `v` of key
/// `id` carries the note `k{id}-v{v}`.
struct Writers {
    tasks: Vec<tokio::task::JoinHandle<(i64, KeyWrites)>>,
    /// Writes acknowledged after at least [`HELD_WRITE`].
    slow_acknowledged: Arc<AtomicUsize>,
}

/// A write this slow was held at a cutover (the sides answer within a few hundred ms).
const HELD_WRITE: Duration = Duration::from_millis(800);

impl Writers {
    /// Each key written every 50 ms.
    fn start(proxy: &str, stop: &CancellationToken) -> Writers {
        Writers::paced(proxy, stop, |_| Duration::from_millis(50))
    }

    /// Key `id` written with `pause(id)` between an answer and the next write.
    fn paced(proxy: &str, stop: &CancellationToken, pause: fn(i64) -> Duration) -> Writers {
        Writers::round_robin(&[proxy], stop, pause)
    }

    /// Key `id` written with `pause(id)` between an answer and the next write, each write
    /// through the next of `proxies`.
    fn round_robin(
        proxies: &[&str],
        stop: &CancellationToken,
        pause: fn(i64) -> Duration,
    ) -> Writers {
        let client = reqwest::Client::new();
        let slow_acknowledged = Arc::new(AtomicUsize::new(0));
        let tasks = (1..=KEYS)
            .map(|id| {
                let (client, stop) = (client.clone(), stop.clone());
                let slow_acknowledged = Arc::clone(&slow_acknowledged);
                let urls: Vec<String> = proxies
                    .iter()
                    .map(|proxy| format!("{proxy}/orders/{id}"))
                    .collect();
                tokio::spawn(async move {
                    let mut writes = KeyWrites::default();
                    while !stop.is_cancelled() {
                        let version = writes.sent + 1;
                        writes.sent = version;
                        let url = &urls[usize::try_from(version).unwrap() % urls.len()];
                        let note = format!("k{id}-v{version}");
                        let body = json!({
                            "customer": format!("c{id}"),
                            "amount": "1.00",
                            "status": "open",
                            "note": note,
                        });
                        let sent_at = Instant::now();
                        match client.put(url).json(&body).send().await {
                            Ok(response) if response.status() == StatusCode::OK => {
                                writes.acknowledged = Some(version);
                                if sent_at.elapsed() >= HELD_WRITE {
                                    slow_acknowledged.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            Ok(response) => writes.failures.push(format!(
                                "{note}: {} {}",
                                response.status(),
                                response.text().await.unwrap_or_default()
                            )),
                            Err(err) => writes.failures.push(format!("{note}: {err}")),
                        }
                        sleep(pause(id)).await;
                    }
                    (id, writes)
                })
            })
            .collect();
        Writers {
            tasks,
            slow_acknowledged,
        }
    }

    /// Waits until `writes` writes were acknowledged after being held. A held key waits for
    /// every copy of it queued before the change, each taking the slow side's latency: on a
    /// loaded machine that is well over the usual patience.
    async fn released(&self, writes: usize) {
        let deadline = Instant::now() + PATIENCE * 4;
        while self.slow_acknowledged.load(Ordering::SeqCst) < writes {
            assert!(Instant::now() < deadline, "no held write was released");
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// What each key's writer saw, once the writers stopped.
    async fn outcomes(self) -> HashMap<i64, KeyWrites> {
        let mut outcomes = HashMap::new();
        for task in self.tasks {
            let (id, writes) = task.await.unwrap();
            outcomes.insert(id, writes);
        }
        outcomes
    }

    /// The last acknowledged note of each key, once the writers stopped; every write was
    /// acknowledged.
    async fn finish(self) -> HashMap<i64, String> {
        self.outcomes()
            .await
            .into_iter()
            .map(|(id, writes)| {
                assert!(writes.failures.is_empty(), "{:?}", writes.failures);
                let version = writes
                    .acknowledged
                    .expect("every writer had a write acknowledged");
                (id, format!("k{id}-v{version}"))
            })
            .collect()
    }
}

/// Every order of a side, read directly.
async fn orders(service: &FaultyOrders) -> Value {
    reqwest::get(format!("{}/orders?limit=1000", service.url))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["orders"]
        .clone()
}

/// Each key's note on a side.
fn notes(orders: &Value) -> HashMap<i64, String> {
    orders
        .as_array()
        .unwrap()
        .iter()
        .map(|order| {
            (
                order["id"].as_i64().unwrap(),
                order["note"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Waits until `authoritative` holds exactly the acknowledged write of every key and the other
/// side holds the same orders.
async fn converged_on(
    authoritative: &FaultyOrders,
    other: &FaultyOrders,
    acknowledged: &HashMap<i64, String>,
) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (on_authoritative, on_other) = (orders(authoritative).await, orders(other).await);
        let exact = notes(&on_authoritative) == *acknowledged;
        if exact && on_authoritative == on_other {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not every acknowledged write is where it belongs:\nacknowledged: \
             {acknowledged:?}\nauthoritative: {on_authoritative}\nother: {on_other}"
        );
        sleep(Duration::from_millis(100)).await;
    }
}

/// Orders services on SQLite with their fault switches, and a proxy in dual-write.
async fn services(
    extra: &[&str],
) -> (
    FaultyOrders,
    FaultyOrders,
    [OrdersDb; 2],
    SqliteControl,
    Proxy,
) {
    let (dbs, old, new) = FaultyOrders::pair().await;
    let control = SqliteControl::new();
    let proxy = Proxy::start(&old.url, &new.url, &control.url, extra);
    proxy.set_stage("dual-write").await;
    (old, new, dbs, control, proxy)
}

/// Proxy settings for the tests under traffic: a hold as long as the backlog may need.
const UNDER_TRAFFIC: [&str; 4] = ["--cutover-timeout", "30s", "--mirror-workers", "64"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promotion_under_writes_puts_every_acknowledged_write_on_new() {
    let (old, new, _dbs, control, proxy) = services(&UNDER_TRAFFIC).await;
    // New is slower than the writes: copies are on their way to it at the promotion.
    let acknowledged = switch_under_writes(&proxy, &new, "shadow", "live").await;
    converged_on(&new, &old, &acknowledged).await;
    nothing_kept(&control);
    assert!(
        proxy
            .metric("tandem_cutover_held_requests_total{outcome=\"released\"}")
            .await
            > 0.0,
        "requests waited for their keys' copies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollback_under_writes_puts_every_acknowledged_write_on_old() {
    let (old, new, _dbs, control, proxy) = services(&UNDER_TRAFFIC).await;
    // Old is slower than the writes: copies are on their way to it at the rollback.
    let acknowledged = switch_under_writes(&proxy, &old, "live", "shadow").await;
    converged_on(&old, &new, &acknowledged).await;
    nothing_kept(&control);
}

/// Sets `from`, makes `slow` (the side that will take over) 100 ms slow, writes for a phase,
/// sets `to` and writes for another; returns the acknowledged writes.
async fn switch_under_writes(
    proxy: &Proxy,
    slow: &FaultyOrders,
    from: &str,
    to: &str,
) -> HashMap<i64, String> {
    proxy.set_stage(from).await;
    slow.faults(json!({"latency_ms": 100})).await;
    let stop = CancellationToken::new();
    let writers = Writers::start(&proxy.url, &stop);
    sleep(PHASE).await;
    proxy.set_stage(to).await;
    sleep(PHASE).await;
    stop.cancel();
    writers.finish().await
}

/// No copy was kept for an operator.
fn nothing_kept(control: &SqliteControl) {
    assert!(
        mirror_failures(&control.url, true).is_empty(),
        "nothing kept for an operator"
    );
}

/// The version of each key's write a side holds (from its note `k{id}-v{version}`).
fn versions(orders: &Value) -> HashMap<i64, u64> {
    notes(orders)
        .into_iter()
        .filter_map(|(id, note)| Some((id, note.rsplit_once("-v")?.1.parse().ok()?)))
        .collect()
}

/// Keys written as fast as they are answered (the others every 100 ms).
const LONG_HELD: i64 = 3;

/// Keys 1 to [`LONG_HELD`] written as fast as they are answered, the others every 100 ms: with
/// new 300 ms a copy, the first have several seconds of copies on their way to new at the
/// promotion, the others a second or so, and those are released about together, long before
/// the first ones.
fn two_paces(id: i64) -> Duration {
    if id <= LONG_HELD {
        Duration::ZERO
    } else {
        Duration::from_millis(100)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigkill_during_a_hold_loses_and_reorders_no_acknowledged_write() {
    let journal = tempfile::tempdir().unwrap();
    let journal_dir = journal.path().display().to_string();
    // Kept from other tests until the restarted proxy listens on it again.
    let port = ReservedPort::new();
    let listen = port.address().to_string();
    let args = [
        UNDER_TRAFFIC.as_slice(),
        &[
            "--mirror",
            "async",
            "--journal-dir",
            &journal_dir,
            "--listen",
            &listen,
        ],
    ]
    .concat();
    let (old, new, _dbs, control, mut proxy) = services(&args).await;
    new.faults(json!({"latency_ms": 300})).await;
    proxy.set_stage("shadow").await;
    let stop = CancellationToken::new();
    let writers = Writers::paced(&proxy.url, &stop, two_paces);
    sleep(Duration::from_secs(2)).await;
    proxy.set_stage("live").await;
    // Killed while requests to some keys are held, and others were just released and written
    // on new (their last copies' settlements perhaps not checkpointed yet).
    writers.released(3).await;
    // Requests are held at the kill (the gauge is published every second).
    let deadline = Instant::now() + PATIENCE;
    while proxy.metric("tandem_cutover_keys_pending").await == 0.0 {
        assert!(Instant::now() < deadline, "no request held at the kill");
        sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    proxy.sigkill();
    let writes = writers.outcomes().await;
    let proxy = Proxy::start(&old.url, &new.url, &control.url, &args);
    journal_emptied(&proxy, PATIENCE * 4).await;

    // Exactly: each side holds, per key, the newest acknowledged version or a newer one whose
    // answer the kill cut off (applied, never acknowledged): never an older one.
    let (on_new, on_old) = (versions(&orders(&new).await), versions(&orders(&old).await));
    for (id, written) in &writes {
        let acknowledged = written
            .acknowledged
            .expect("a write of every key acknowledged");
        for (side, held) in [("new", &on_new), ("old", &on_old)] {
            let version = held.get(id).copied().unwrap_or(0);
            assert!(
                (acknowledged..=written.sent).contains(&version),
                "key {id} on {side}: v{version}, acknowledged v{acknowledged}, sent up to \
                 v{} ({:?})",
                written.sent,
                written.failures
            );
        }
        if on_new.get(id) != on_old.get(id) {
            assert!(
                written.sent > acknowledged,
                "key {id} differs with no write unanswered"
            );
        }
    }
    nothing_kept(&control);

    // Written once more through the restarted proxy, both sides end identical.
    let client = reqwest::Client::new();
    let mut last = HashMap::new();
    for id in 1..=KEYS {
        let note = format!("k{id}-final");
        let body =
            json!({"customer": format!("c{id}"), "amount": "1.00", "status": "open", "note": note});
        expect_ok(client.put(format!("{}/orders/{id}", proxy.url)).json(&body)).await;
        last.insert(id, note);
    }
    converged_on(&new, &old, &last).await;
    drop(journal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_the_promotion_sees_the_write_acknowledged_before_it() {
    let (_old, new, _dbs, _control, proxy) =
        services(&["--mirror-workers", "1", "--cutover-timeout", "30s"]).await;
    new.faults(json!({"latency_ms": 200})).await;
    proxy.set_stage("shadow").await;
    let client = reqwest::Client::new();
    let order =
        |note: &str| json!({"customer": "c", "amount": "1.00", "status": "open", "note": note});
    // Ten copies (2 s) queue for new ahead of order 1's: still on its way when new starts
    // answering reads, which reach new in 200 ms.
    for id in 2..12 {
        expect_ok(
            client
                .put(format!("{}/orders/{id}", proxy.url))
                .json(&order("ahead")),
        )
        .await;
    }
    expect_ok(
        client
            .put(format!("{}/orders/1", proxy.url))
            .json(&order("before")),
    )
    .await;
    proxy.set_stage("live").await;
    let read: Value = expect_ok(client.get(format!("{}/orders/1", proxy.url)))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["note"], "before", "{read}");
}

/// How long new takes to answer in [`a_held_key`]: far longer than the cutover timeout (1 s)
/// plus what a loaded machine takes to set the stage and send the held request.
const HELD_COPY: Duration = Duration::from_secs(12);

/// A proxy in live whose key `/items/1` has a copy on its way to new ([`HELD_COPY`] slow) for
/// much longer than the cutover timeout (1 s).
async fn a_held_key() -> (RecordingUpstream, RecordingUpstream, SqliteControl, Proxy) {
    let old = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let new = RecordingUpstream::start(HELD_COPY, StatusCode::OK).await;
    let control = SqliteControl::new();
    let proxy = Proxy::start(
        &old.url,
        &new.url,
        &control.url,
        &["--cutover-timeout", "1s", "--new-timeout", "30s"],
    );
    proxy.set_stage("dual-write").await;
    let client = reqwest::Client::new();
    expect_ok(client.put(format!("{}/items/1", proxy.url)).body("a")).await;
    proxy.set_stage("live").await;
    assert_eq!(
        new.requests().len(),
        0,
        "the copy is still on its way at the promotion"
    );
    (old, new, control, proxy)
}

/// The bodies a side received.
fn bodies(upstream: &RecordingUpstream) -> Vec<String> {
    upstream
        .requests()
        .iter()
        .map(|request| String::from_utf8_lossy(&request.body).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_past_the_cutover_timeout_is_refused_and_applied_nowhere() {
    let (old, new, _control, proxy) = a_held_key().await;
    let response = reqwest::Client::new()
        .put(format!("{}/items/1", proxy.url))
        .body("b")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["cutover"], "timed_out", "{body}");
    assert_eq!(
        proxy
            .metric("tandem_cutover_held_requests_total{outcome=\"timed_out\"}")
            .await,
        1.0
    );

    // The copy lands; the refused write is on neither side.
    let deadline = Instant::now() + HELD_COPY + PATIENCE;
    while new.requests().is_empty() {
        assert!(Instant::now() < deadline, "the copy never arrived");
        sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(bodies(&new), ["a"]);
    assert_eq!(new.arrived(), 1, "nothing else on its way to new");
    assert_eq!(bodies(&old), ["a"]);
    assert_eq!(old.arrived(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_nothing_pending_is_not_held_while_another_is() {
    let (old, new, _control, proxy) = a_held_key().await;
    let client = reqwest::Client::new();
    let held = client
        .put(format!("{}/items/1", proxy.url))
        .body("b")
        .send();
    let free = client
        .put(format!("{}/items/2", proxy.url))
        .body("c")
        .send();
    let (held, free) = tokio::join!(held, free);
    // Held like /items/1, /items/2 would have waited for its copy past the 1 s timeout.
    assert_eq!(held.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(free.unwrap().status(), StatusCode::OK);
    let deadline = Instant::now() + HELD_COPY + PATIENCE;
    while bodies(&new).len() < 2 || bodies(&old).len() < 2 {
        assert!(Instant::now() < deadline, "the copies never arrived");
        sleep(Duration::from_millis(50)).await;
    }
    let mut on_new = bodies(&new);
    on_new.sort();
    assert_eq!(on_new, ["a", "c"]);
    assert_eq!(bodies(&old), ["a", "c"], "c's copy went to old");
}

/// A proxy in dual-write whose copy of `/items/1` to new failed and is kept in the store (new
/// answers 500; one attempt, no automatic replay).
async fn a_kept_copy() -> (RecordingUpstream, RecordingUpstream, SqliteControl, Proxy) {
    let control = SqliteControl::new();
    let (old, new, proxy) = a_kept_copy_on(&control.url).await;
    (old, new, control, proxy)
}

/// [`a_kept_copy`] on the control store at `control_db`.
async fn a_kept_copy_on(control_db: &str) -> (RecordingUpstream, RecordingUpstream, Proxy) {
    let old = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let new = RecordingUpstream::start(Duration::ZERO, StatusCode::INTERNAL_SERVER_ERROR).await;
    let proxy = Proxy::start(
        &old.url,
        &new.url,
        control_db,
        &["--mirror-attempts", "1", "--auto-replay-interval", "0s"],
    );
    proxy.set_stage("dual-write").await;
    expect_ok(
        reqwest::Client::new()
            .put(format!("{}/items/1", proxy.url))
            .body("a"),
    )
    .await;
    mirror_failures_reach(control_db, false, 1).await;
    (old, new, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_kept_copies_is_refused_by_the_new_authoritative_side() {
    let (old, new, _control, proxy) = a_kept_copy().await;
    // Past the gate with --force.
    proxy.set_stage("live").await;
    let client = reqwest::Client::new();
    for request in [
        client.put(format!("{}/items/1", proxy.url)).body("b"),
        client.get(format!("{}/items/1", proxy.url)),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key("retry-after"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["cutover"], "kept", "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("kept in the control store"),
            "{body}"
        );
    }
    assert_eq!(bodies(&new), ["a"], "only the failed copy reached new");
    assert_eq!(bodies(&old), ["a"]);
    assert_eq!(
        proxy
            .metric("tandem_cutover_held_requests_total{outcome=\"kept\"}")
            .await,
        2.0
    );
}

/// A PUT of order 1 with `note`.
fn put_order(client: &reqwest::Client, proxy: &Proxy, note: &str) -> reqwest::RequestBuilder {
    client
        .put(format!("{}/orders/1", proxy.url))
        .json(&json!({"customer": "c", "amount": "1.00", "status": "open", "note": note}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_copies_are_replayed_into_the_side_that_became_authoritative() {
    let (old, new, _dbs, control, proxy) =
        services(&["--mirror-attempts", "1", "--auto-replay-interval", "0s"]).await;
    let client = reqwest::Client::new();
    // New refuses every copy: v1's is kept, and v2's behind it.
    new.faults(json!({"error_rate": 1.0})).await;
    for note in ["v1", "v2"] {
        expect_ok(put_order(&client, &proxy, note)).await;
    }
    mirror_failures_reach(&control.url, false, 2).await;
    // Past the gate with --force; new answers again.
    proxy.set_stage("live").await;
    new.faults(json!({"error_rate": 0.0})).await;
    let refused = put_order(&client, &proxy, "v3").send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["cutover"], "kept", "{body}");

    both_kept_copies_replayed(&old, &new, &control).await;

    // The key is served by new again, and its copy reaches old.
    expect_ok(put_order(&client, &proxy, "v4")).await;
    converged_on(&new, &old, &HashMap::from([(1, "v4".to_owned())])).await;
    assert!(mirror_failures(&control.url, false).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_refuses_live_while_copies_to_new_are_kept() {
    let (_old, _new, control, proxy) = a_kept_copy().await;
    let output = tandem(&[
        "stage",
        "set",
        "live",
        "--reason",
        "test",
        "--by",
        "tests",
        "--control-db",
        &control.url,
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("1 mirror copy of accepted writes to new is kept"),
        "{stderr}"
    );
    assert!(stderr.contains("tandem mirror replay"), "{stderr}");
    assert_eq!(proxy.applied_stage().await, "dual-write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_kept_copies_the_store_cannot_confirm_is_refused() {
    // The control store on PostgreSQL behind a forwarder the test freezes.
    let db = PostgresDb::create("tandem_cutover_store").await;
    let forwarder = Forwarder::new(POSTGRES).await;
    let control_db = db
        .url
        .replacen(POSTGRES, &format!("127.0.0.1:{}", forwarder.port()), 1);
    let (old, new, proxy) = a_kept_copy_on(&control_db).await;
    proxy.set_stage("live").await;
    forwarder.freeze(true);
    let response = reqwest::Client::new()
        .put(format!("{}/items/1", proxy.url))
        .body("b")
        .send()
        .await
        .unwrap();
    forwarder.freeze(false);
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["cutover"], "store_unreachable", "{body}");
    assert_eq!(bodies(&new), ["a"], "only the failed copy reached new");
    assert_eq!(bodies(&old), ["a"]);
}

/// Waits until `proxy` says its fleet cutover window is closed (requests go straight through).
async fn window_closed(proxy: &Proxy) {
    let deadline = Instant::now() + PATIENCE * 2;
    while proxy.published("tandem_cutover_window_open").await != Some(0.0) {
        assert!(Instant::now() < deadline, "the cutover window never closed");
        sleep(Duration::from_millis(100)).await;
    }
}

/// Fleet mode: two proxies on one shared journal, each delivering its partitions with one
/// worker to a side slower than the writes; every key is written through the two proxies in
/// turn, one write after the other, across a change of stage from `before` to `after` that
/// makes that slow side authoritative. The copies on their way to it at the change are
/// delivered by their partitions' holders, and requests to their keys, through either proxy,
/// wait for them: every acknowledged write ends on that side, none under an older one, and
/// nothing is kept for an operator. The change comes once both proxies closed their cutover
/// window (opened at start), so it must open it again.
/// `tandem mirror replay` delivers the two kept copies of order 1 (v1, v2) into new, in order.
async fn both_kept_copies_replayed(
    old: &FaultyOrders,
    new: &FaultyOrders,
    control: &SqliteControl,
) {
    let output = replay(&old.url, &new.url, &control.url);
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(output.status.success(), "{report}");
    assert_eq!(report["delivered"], 2, "{report}");
    assert_eq!(
        notes(&orders(new).await)[&1],
        "v2",
        "both kept copies, in order"
    );
}

/// The settings a fleet test's proxies share: async mirroring on the shared journal `journal`
/// (a NATS URL) in `stream` (the default stream when `None`), each side given 5 s (the cutover
/// window's grace follows from it: long enough for a loaded machine's sides to answer, short
/// enough that the windows opened at start close soon), a quick stage poll; then `extra`.
fn fleet_args<'a>(journal: &'a str, stream: Option<&'a str>, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--mirror",
        "async",
        "--journal",
        journal,
        "--old-timeout",
        "5s",
        "--new-timeout",
        "5s",
        "--stage-poll-interval",
        "100ms",
    ];
    if let Some(stream) = stream {
        args.extend(["--journal-stream", stream]);
    }
    args.extend_from_slice(extra);
    args
}

async fn fleet_cutover_under_writes(before: &str, after: &str) {
    let stream = ScratchStream::new("CUTOVER");
    let shared = fleet_args(
        NATS,
        Some(stream.name()),
        &[UNDER_TRAFFIC[0], UNDER_TRAFFIC[1], "--mirror-workers", "1"],
    );
    let (old, new, _dbs, control, first) = services(&shared).await;
    let second = Proxy::start(&old.url, &new.url, &control.url, &shared);
    first.set_stage(before).await;
    second.wait_for_stage(before).await;
    // The side becoming authoritative answers slower than the writes come.
    let (becoming, other) = if after == "live" {
        (&new, &old)
    } else {
        (&old, &new)
    };
    becoming.faults(json!({"latency_ms": 50})).await;
    for proxy in [&first, &second] {
        window_closed(proxy).await;
    }
    let stop = CancellationToken::new();
    let writers = Writers::round_robin(&[&first.url, &second.url], &stop, |_| {
        Duration::from_millis(100)
    });
    sleep(PHASE).await;
    first.set_stage(after).await;
    sleep(PHASE).await;
    stop.cancel();
    let acknowledged = writers.finish().await;

    converged_on(becoming, other, &acknowledged).await;
    nothing_kept(&control);
    let mut released = 0.0;
    for proxy in [&first, &second] {
        released += proxy
            .metric("tandem_cutover_held_requests_total{outcome=\"released\"}")
            .await;
    }
    assert!(released > 0.0, "requests waited for their keys' copies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_promotion_under_writes_through_two_proxies_puts_every_acknowledged_write_on_new() {
    fleet_cutover_under_writes("shadow", "live").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_rollback_under_writes_through_two_proxies_puts_every_acknowledged_write_on_old() {
    fleet_cutover_under_writes("live", "shadow").await;
}

/// Waits until `proxy` says its fleet cutover window is open.
async fn window_open(proxy: &Proxy) {
    let deadline = Instant::now() + PATIENCE;
    while proxy.published("tandem_cutover_window_open").await != Some(1.0) {
        assert!(Instant::now() < deadline, "the cutover window never opened");
        sleep(Duration::from_millis(50)).await;
    }
}

/// Fleet mode: the NATS server (the test's own) is SIGKILLed while the cutover window of a
/// promotion is open, with writes going on through two proxies, and restarted. Requests the
/// proxies cannot check or journal meanwhile are refused with 503 and a reason (applied
/// nowhere); every acknowledged write ends on new, the authoritative side, in per-key order
/// (each key at its last acknowledged write, none under an older one), old the same (but for a
/// write recorded as not mirrored, when the server came back after the append's retries), and
/// `tandem compare` finds the sides identical (when none was).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_nats_server_lost_during_a_fleet_cutover_window_loses_and_reorders_nothing() {
    let mut nats = OwnNats::start().await;
    let url = nats.url();
    let shared = fleet_args(
        &url,
        None,
        &[UNDER_TRAFFIC[0], UNDER_TRAFFIC[1], "--mirror-workers", "1"],
    );
    let (old, new, dbs, control, first) = services(&shared).await;
    let second = Proxy::start(&old.url, &new.url, &control.url, &shared);
    first.set_stage("shadow").await;
    second.wait_for_stage("shadow").await;
    // New answers slower than the writes come: copies toward it are in the stream at the change.
    new.faults(json!({"latency_ms": 50})).await;
    let stop = CancellationToken::new();
    let writers = Writers::round_robin(&[&first.url, &second.url], &stop, |_| {
        Duration::from_millis(100)
    });
    sleep(PHASE).await;
    first.set_stage("live").await;
    for proxy in [&first, &second] {
        proxy.wait_for_stage("live").await;
        window_open(proxy).await;
    }
    sleep(Duration::from_millis(300)).await;
    nats.kill();
    sleep(Duration::from_millis(1500)).await;
    // Still open: it cannot close while the stream cannot be read.
    for proxy in [&first, &second] {
        assert_eq!(
            proxy.published("tandem_cutover_window_open").await,
            Some(1.0)
        );
    }
    nats.restart().await;
    sleep(PHASE * 2).await;
    stop.cancel();
    let outcomes = writers.outcomes().await;

    let mut acknowledged = HashMap::new();
    let mut refused = 0;
    for (id, writes) in outcomes {
        for failure in &writes.failures {
            assert!(
                failure.contains(" 503 ") && failure.contains("\"error\""),
                "a refusal without 503 and a reason: {failure}"
            );
            refused += 1;
        }
        let version = writes
            .acknowledged
            .expect("a write of every key acknowledged");
        acknowledged.insert(id, format!("k{id}-v{version}"));
    }
    assert!(refused > 0, "no request refused while the server was down");
    // A write whose copy the server did not take within the append's retries (the client
    // reconnects with a backoff) is answered `not-mirrored` and recorded: said, not lost. Such
    // a key is exact on new; old may miss that write.
    let recorded: Vec<i64> = mirror_failures(&control.url, true)
        .iter()
        .map(|failure| {
            assert_eq!(failure["status"], "not_mirrored", "nothing kept: {failure}");
            let uri = failure["uri"].as_str().unwrap_or_default();
            uri.trim_start_matches("/orders/").parse().unwrap()
        })
        .collect();
    let deadline = Instant::now() + PATIENCE * 4;
    loop {
        let (on_new, on_old) = (notes(&orders(&new).await), notes(&orders(&old).await));
        let stale: Vec<String> = acknowledged
            .iter()
            .filter(|(id, note)| {
                on_new.get(id) != Some(note)
                    || (!recorded.contains(id) && on_old.get(id) != Some(note))
            })
            .map(|(id, note)| {
                format!(
                    "{id}: acknowledged {note}, new {:?}, old {:?}",
                    on_new.get(id),
                    on_old.get(id)
                )
            })
            .collect();
        if stale.is_empty() && on_new.len() == acknowledged.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acknowledged writes not where they belong: {stale:?} (not mirrored: {recorded:?})"
        );
        sleep(Duration::from_millis(100)).await;
    }
    if recorded.is_empty() {
        assert_compare_identical(&dbs);
    }
}

/// Sends PUTs of order 1 with `note` through `proxy` until one is answered other than by a
/// 503 the proxy says may clear by itself (`timed_out`, `store_unreachable`,
/// `journal_failed`, `journal_unreachable`: a loaded machine) and returns that answer's
/// status and body. Every 503 carries `Retry-After`.
async fn put_until_settled(
    client: &reqwest::Client,
    proxy: &Proxy,
    note: &str,
) -> (StatusCode, Value) {
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        let response = put_order(client, proxy, note).send().await.unwrap();
        let status = response.status();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(response.headers().contains_key("retry-after"));
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let transient = status == StatusCode::SERVICE_UNAVAILABLE && body["cutover"] != "kept";
        if !transient {
            return (status, body);
        }
        assert!(Instant::now() < deadline, "{note}: still refused: {body}");
        sleep(Duration::from_millis(200)).await;
    }
}

/// A PUT of order 1 with `note` through `proxy` is refused `503 kept`.
async fn refused_kept(client: &reqwest::Client, proxy: &Proxy, note: &str) {
    let (status, body) = put_until_settled(client, proxy, note).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{note}: {body}");
    assert_eq!(body["cutover"], "kept", "{note}: {body}");
}

/// Fleet mode: a copy to new fails and is kept in the control store by whichever proxy holds
/// its key's partition; after the promotion, a write to that key through either proxy of the
/// fleet (one of them never kept anything) is refused with 503 `kept`, in the cutover window
/// and after it, and reaches neither side. Once the kept copies are replayed into new, the key
/// is served again through both, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_kept_by_one_proxy_is_refused_by_every_proxy_of_the_fleet() {
    let stream = ScratchStream::new("PARKED");
    let shared = fleet_args(
        NATS,
        Some(stream.name()),
        &["--mirror-attempts", "1", "--auto-replay-interval", "0s"],
    );
    let (old, new, _dbs, control, first) = services(&shared).await;
    let second = Proxy::start(&old.url, &new.url, &control.url, &shared);
    second.wait_for_stage("dual-write").await;
    let client = reqwest::Client::new();
    // New refuses every copy: v1's is kept, and v2's behind it.
    new.faults(json!({"error_rate": 1.0})).await;
    for (proxy, note) in [(&first, "v1"), (&second, "v2")] {
        let (status, body) = put_until_settled(&client, proxy, note).await;
        assert_eq!(status, StatusCode::OK, "{note}: {body}");
    }
    mirror_failures_reach(&control.url, false, 2).await;
    // Past the gate with --force; new answers again.
    first.set_stage("live").await;
    second.wait_for_stage("live").await;
    new.faults(json!({"error_rate": 0.0})).await;
    refused_kept(&client, &first, "in-window-1").await;
    refused_kept(&client, &second, "in-window-2").await;
    for proxy in [&first, &second] {
        window_closed(proxy).await;
    }
    refused_kept(&client, &first, "after-window-1").await;
    refused_kept(&client, &second, "after-window-2").await;
    for proxy in [&first, &second] {
        assert!(
            proxy
                .metric("tandem_cutover_held_requests_total{outcome=\"kept\"}")
                .await
                >= 2.0
        );
    }
    assert_eq!(
        notes(&orders(&old).await)[&1],
        "v2",
        "refused: applied nowhere"
    );
    assert!(orders(&new).await.as_array().unwrap().is_empty());

    both_kept_copies_replayed(&old, &new, &control).await;
    // Served again through either proxy, and its copies reach old.
    for (proxy, note) in [(&second, "v3"), (&first, "v4")] {
        let (status, body) = put_until_settled(&client, proxy, note).await;
        assert_eq!(status, StatusCode::OK, "{note}: {body}");
    }
    converged_on(&new, &old, &HashMap::from([(1, "v4".to_owned())])).await;
    assert!(mirror_failures(&control.url, false).is_empty());
}

/// The PostgreSQL server the forwarded control store lives on.
const POSTGRES: &str = "127.0.0.1:5432";
