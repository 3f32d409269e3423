//! Fault injection under load (loopback, bounded in time): the new side stopped for 30 s, the
//! new side slow, and the proxy restarted; the load generator's report says what clients saw.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tandem_testkit::{workspace_binary, ChildProcess, Forwarder, PostgresDb, ReservedPort};
use tokio::time::sleep;

use crate::harness::{mirror_failures, Engine, OrdersDb, Proxy, RecordingUpstream, SqliteControl};

/// An orders service with its fault switches.
pub(crate) struct FaultyOrders {
    _process: ChildProcess,
    pub(crate) url: String,
    admin: String,
}

impl FaultyOrders {
    /// An old and a new orders service, each on a SQLite database of its own (the databases
    /// are given back: they must outlive the services).
    pub(crate) async fn pair() -> ([OrdersDb; 2], FaultyOrders, FaultyOrders) {
        let dbs = [
            OrdersDb::create(Engine::Sqlite).await,
            OrdersDb::create(Engine::Sqlite).await,
        ];
        let (old, new) = (FaultyOrders::start(&dbs[0]), FaultyOrders::start(&dbs[1]));
        (dbs, old, new)
    }

    pub(crate) fn start(db: &OrdersDb) -> FaultyOrders {
        let (mut process, line) = ChildProcess::start(
            &workspace_binary("tandem-loadtest"),
            &[
                "serve",
                "--db",
                &db.url(),
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ],
            &[],
            "orders service listening on",
        );
        let admin_line =
            process.wait_for_line("faults admin listening on", Duration::from_secs(10));
        let last_word = |line: &str| line.rsplit(' ').next().unwrap().to_owned();
        FaultyOrders {
            url: last_word(&line),
            admin: last_word(&admin_line),
            _process: process,
        }
    }

    pub(crate) async fn faults(&self, settings: Value) {
        let response = reqwest::Client::new()
            .put(format!("{}/faults", self.admin))
            .json(&settings)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{}",
            response.text().await.unwrap()
        );
    }
}

/// Starts `tandem-loadtest run … --format json`; `finish` waits for its report.
struct Load(std::process::Child);

impl Load {
    fn start(args: &[&str]) -> Load {
        let child = Command::new(workspace_binary("tandem-loadtest"))
            .arg("run")
            .args(args)
            .args(["--format", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Load(child)
    }

    fn finish(self) -> Value {
        let output = self.0.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }
}

fn run_load(args: &[&str]) -> Value {
    Load::start(args).finish()
}

/// A pair of orders services on SQLite with their fault switches, and a proxy in dual-write.
async fn setup(
    extra: &[&str],
) -> (
    FaultyOrders,
    FaultyOrders,
    [OrdersDb; 2],
    SqliteControl,
    Proxy,
) {
    let control = SqliteControl::new();
    let (old, new, dbs, proxy) = services_and_proxy(&control.url, extra).await;
    (old, new, dbs, control, proxy)
}

/// The orders services on SQLite and a proxy on `control`, in dual-write.
async fn services_and_proxy(
    control: &str,
    extra: &[&str],
) -> (FaultyOrders, FaultyOrders, [OrdersDb; 2], Proxy) {
    let (dbs, old, new) = FaultyOrders::pair().await;
    let proxy = Proxy::start(&old.url, &new.url, control, extra);
    proxy.set_stage("dual-write").await;
    (old, new, dbs, proxy)
}

/// A control store on PostgreSQL that the test can take away: reached through a forwarder.
struct ForwardedStore {
    _db: PostgresDb,
    forwarder: Forwarder,
    /// The store's URL through the forwarder.
    url: String,
}

/// Like [`setup`], with the control store on PostgreSQL behind a forwarder, in async mode.
async fn setup_on_a_forwarded_store() -> (
    FaultyOrders,
    FaultyOrders,
    [OrdersDb; 2],
    ForwardedStore,
    Proxy,
) {
    let db = PostgresDb::create("tandem_store_fault").await;
    let forwarder = Forwarder::new(POSTGRES).await;
    let url = db
        .url
        .replacen(POSTGRES, &format!("127.0.0.1:{}", forwarder.port()), 1);
    let (old, new, dbs, proxy) = services_and_proxy(&url, &["--mirror", "async"]).await;
    let store = ForwardedStore {
        _db: db,
        forwarder,
        url,
    };
    (old, new, dbs, store, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_side_stopped_for_30s_loses_nothing_and_catches_up_by_itself() {
    let (_old, new, dbs, control, proxy) = setup(&["--mirror", "async"]).await;
    let load = Load::start(&[
        "--target",
        &proxy.url,
        "--rate",
        "50",
        "--duration",
        "40s",
        "--keys",
        "300",
    ]);
    sleep(Duration::from_secs(5)).await;
    new.faults(json!({"stopped": true})).await;
    sleep(Duration::from_secs(30)).await;
    new.faults(json!({"stopped": false})).await;
    let report = load.finish();
    eprintln!("new side stopped 30 s, async: {report}");
    assert_eq!(report["errors"]["client_error"], 0, "{report}");
    assert_eq!(report["errors"]["server_error"], 0, "{report}");
    assert_eq!(report["errors"]["connect"], 0, "{report}");
    assert_eq!(report["errors"]["broken"], 0, "{report}");
    assert_eq!(report["errors"]["timeout"], 0, "{report}");
    assert!(report["ok"].as_u64().unwrap() > 1_500, "{report}");

    // What the new side missed was kept in the store, and the proxy replays it by itself
    // once the new side answers again: nobody runs `tandem mirror replay`.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let waiting = mirror_failures(&control.url, false).len();
        if waiting == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{waiting} kept copies never replayed"
        );
        sleep(Duration::from_millis(500)).await;
    }
    let replayed = proxy
        .metric("tandem_mirror_replays_total{outcome=\"delivered\"}")
        .await;
    eprintln!("the proxy replayed {replayed} kept copies by itself");
    assert!(
        replayed > 0.0,
        "copies failed while the new side was down were kept"
    );
    proxy.drained().await;

    assert_identical(&proxy, &dbs, "verify after the automatic replay");
}

/// Asserts, with the load generator's exact comparison of both databases, that they hold the
/// same orders (and some), printing its summary under `what`.
fn assert_identical(proxy: &Proxy, dbs: &[OrdersDb; 2], what: &str) {
    let verified = run_load(&[
        "--target",
        &proxy.url,
        "--rate",
        "5",
        "--duration",
        "1s",
        "--mix",
        "get=1",
        "--verify",
        &dbs[0].url(),
        &dbs[1].url(),
        "--admin",
        &proxy.admin,
    ]);
    eprintln!("{what}: {}", verified["verify"]);
    assert_eq!(verified["verify"]["identical"], true, "{verified}");
    assert!(verified["verify"]["rows_old"].as_u64().unwrap() > 0);
}

/// Waits until the proxy's journal holds no undelivered copy (its gauge is refreshed every
/// second, and absent before the first refresh), up to `patience`.
pub(crate) async fn journal_emptied(proxy: &Proxy, patience: Duration) {
    let deadline = std::time::Instant::now() + patience;
    loop {
        let waiting = proxy.published("tandem_journal_unsettled_records").await;
        if waiting == Some(0.0) && proxy.metric("tandem_mirror_queue_depth").await == 0.0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{waiting:?} copies still in the journal"
        );
        sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_and_new_side_down_together_slow_no_write_and_lose_nothing() {
    let (_old, new, dbs, mut store, proxy) = setup_on_a_forwarded_store().await;
    let control = store.url.clone();
    let load = Load::start(&[
        "--target",
        &proxy.url,
        "--rate",
        "50",
        "--duration",
        "40s",
        "--keys",
        "300",
        "--timeout",
        CLIENT_TIMEOUT,
    ]);
    sleep(Duration::from_secs(5)).await;
    store.forwarder.stop().await;
    new.faults(json!({"stopped": true})).await;
    sleep(Duration::from_secs(30)).await;
    // The new side first: what waited in the journal reaches it with the store still down.
    new.faults(json!({"stopped": false})).await;
    journal_emptied(&proxy, Duration::from_secs(60)).await;
    store.forwarder.start().await;
    let report = load.finish();
    eprintln!("store and new side down 30 s, async: {report}");
    // A write that waited for the store (its pool waits 10 s for a connection) would have
    // run past the client's 5 s patience.
    for error in [
        "client_error",
        "server_error",
        "connect",
        "broken",
        "timeout",
    ] {
        assert_eq!(report["errors"][error], 0, "{error}: {report}");
    }
    assert!(report["ok"].as_u64().unwrap() > 1_500, "{report}");

    journal_emptied(&proxy, Duration::from_secs(60)).await;
    assert!(
        mirror_failures(&control, false).is_empty(),
        "nothing was left for a person to replay"
    );
    assert_identical(&proxy, &dbs, "verify after the outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_store_makes_the_proxy_unready_and_its_admin_answer_while_writes_go_on() {
    let (_old, _new, dbs, store, proxy) = setup_on_a_forwarded_store().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let status = |path: &'static str| {
        let request = client.get(format!("{}{path}", proxy.admin)).send();
        async move { request.await.expect("answered").status().as_u16() }
    };
    assert_eq!(status("/readyz").await, 200);

    // The store hangs: nothing is refused, nothing answers.
    store.forwarder.freeze(true);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while status("/readyz").await != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz never said the store is gone"
        );
        sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status("/admin/stage").await, 503, "answered, not hung");
    let load = run_load(&[
        "--target",
        &proxy.url,
        "--rate",
        "20",
        "--duration",
        "2s",
        "--keys",
        "20",
        "--mix",
        "put=1",
        "--timeout",
        CLIENT_TIMEOUT,
    ]);
    for error in [
        "client_error",
        "server_error",
        "connect",
        "broken",
        "timeout",
    ] {
        assert_eq!(load["errors"][error], 0, "{error}: {load}");
    }
    // Meanwhile the journal's summary could not reach the store: it failed on its own task.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while proxy
        .metric("tandem_journal_summaries_total{outcome=\"failed\"}")
        .await
        == 0.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no journal summary was tried while the store was frozen"
        );
        sleep(Duration::from_millis(200)).await;
    }

    store.forwarder.freeze(false);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while status("/readyz").await != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz never recovered"
        );
        sleep(Duration::from_millis(100)).await;
    }
    journal_emptied(&proxy, Duration::from_secs(60)).await;
    assert_identical(&proxy, &dbs, "verify after the thaw");
}

/// The PostgreSQL server the control store of the outage test lives on.
const POSTGRES: &str = "127.0.0.1:5432";

/// Writes at `rate` per second for `duration` through `proxy`: every one is answered within
/// the client's patience ([`CLIENT_TIMEOUT`]), so none waited for a slow or failing side.
fn writes_answered_in_time(proxy: &Proxy, rate: &str, duration: &str, what: &str) {
    let report = run_load(&[
        "--target",
        &proxy.url,
        "--rate",
        rate,
        "--duration",
        duration,
        "--mix",
        "put=1",
        "--timeout",
        CLIENT_TIMEOUT,
    ]);
    eprintln!("{what}: {report}");
    assert_eq!(
        report["ok"], report["requests"],
        "{what}: a write was not answered within {CLIENT_TIMEOUT}: {report}"
    );
}

/// The client's patience in the slow-side runs: far below the new side's added minute, so any
/// write that waited for the new side would fail as a timeout.
const CLIENT_TIMEOUT: &str = "5s";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_new_side_costs_nothing_in_async_mode_and_at_most_the_timeout_in_sync_mode() {
    // Async: every request is a write; none waits for a new side that answers after a minute.
    let (_old, new, _dbs, _control, proxy) = setup(&["--mirror", "async"]).await;
    new.faults(json!({"latency_ms": 60_000})).await;
    writes_answered_in_time(&proxy, "40", "3s", "new side +60 s, async");

    // Sync: each write waits for the new side, but only until --new-timeout.
    let (_old, new, _dbs, control, proxy) = setup(&[
        "--mirror",
        "sync",
        "--new-timeout",
        "300ms",
        "--mirror-attempts",
        "1",
    ])
    .await;
    new.faults(json!({"latency_ms": 60_000})).await;
    writes_answered_in_time(
        &proxy,
        "10",
        "2s",
        "new side +60 s, sync, --new-timeout 300ms",
    );
    let kept = mirror_failures(&control.url, false);
    assert!(!kept.is_empty(), "timed-out copies are kept");
    assert!(
        kept.iter().all(|copy| copy["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("did not answer within 300ms")),
        "{kept:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_writes_stop_waiting_once_the_new_side_is_known_to_fail() {
    let (_old, new, _dbs, _control, proxy) =
        setup(&["--mirror", "sync", "--new-timeout", "10s"]).await;
    new.faults(json!({"latency_ms": 60_000})).await;
    // The first write finds out: it waits the whole --new-timeout.
    let patient = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let first = patient
        .put(format!("{}/orders/1", proxy.url))
        .json(&json!({"customer": "c1", "amount": "1.00", "status": "new"}))
        .send()
        .await
        .unwrap();
    assert!(first.status().is_success(), "{}", first.status());
    assert_eq!(first.headers()["x-tandem-mirror-status"], "pending");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while proxy.metric("tandem_mirror_circuit_open").await != 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the circuit never opened"
        );
        sleep(Duration::from_millis(100)).await;
    }
    // Then no write waits: each would otherwise take 10 s, twice the client's patience.
    writes_answered_in_time(&proxy, "10", "2s", "new side +60 s, sync, circuit open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_restarted_under_load_fails_only_the_refused_connections() {
    // Kept from other tests until the restarted proxy listens on it again.
    let port = ReservedPort::new();
    let listen = port.address().to_string();
    let (old, new, _dbs, control, first) = setup(&["--listen", &listen, "--mirror", "async"]).await;
    let load = Load::start(&[
        "--target",
        &first.url,
        "--rate",
        "50",
        "--duration",
        "8s",
        "--keys",
        "300",
    ]);
    sleep(Duration::from_secs(2)).await;
    first.process.terminate();
    let mut stopped = first.process;
    assert!(
        stopped.wait(Duration::from_secs(30)).success(),
        "SIGTERM drains and exits 0"
    );
    let second = Proxy::start(
        &old.url,
        &new.url,
        &control.url,
        &["--listen", &listen, "--mirror", "async"],
    );
    let report = load.finish();
    eprintln!("proxy restarted under load: {report}");
    let errors = &report["errors"];
    for kind in ["client_error", "server_error", "timeout", "overload"] {
        assert_eq!(errors[kind], 0, "{kind}: {report}");
    }
    // HTTP/1.1 keep-alive race: a request written on an idle connection at the instant the
    // draining process closes it is lost in flight (seen once in a few runs). Issue 17's drain
    // (keep serving open connections with `Connection: close` for a grace) removes it.
    assert!(errors["broken"].as_u64().unwrap() <= 1, "broken: {report}");
    // How many were refused depends on how long the restart took on this machine; the load
    // went on through the second proxy.
    assert!(
        second
            .metric("tandem_requests_total{class=\"write\",status=\"2xx\"}")
            .await
            > 0.0,
        "the restarted proxy served the load: {report}"
    );
}

/// Under `--journal-full record` every write is answered and recorded as not mirrored; the
/// record must not depend on the store taking it before a crash. With the store frozen, the
/// proxy SIGKILLed after the answers, and restarted with the store back: every answered
/// write is in `tandem mirror failures --all` as not mirrored, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_mirrored_records_survive_a_sigkill_while_the_store_is_frozen() {
    let db = PostgresDb::create("tandem_gap_crash").await;
    let forwarder = Forwarder::new(POSTGRES).await;
    let control = db
        .url
        .replacen(POSTGRES, &format!("127.0.0.1:{}", forwarder.port()), 1);
    let old = RecordingUpstream::start(Duration::ZERO, reqwest::StatusCode::OK).await;
    let new = RecordingUpstream::start(Duration::ZERO, reqwest::StatusCode::OK).await;
    let journal = tempfile::tempdir().unwrap();
    let journal_dir = journal.path().display().to_string();
    let args = [
        "--journal-dir",
        &journal_dir,
        // Room for no copy at all: every write meets a full journal.
        "--journal-max-bytes",
        "1",
        "--journal-full",
        "record",
    ];
    let mut proxy = Proxy::start(&old.url, &new.url, &control, &args);
    proxy.set_stage("dual-write").await;

    forwarder.freeze(true);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut expected = Vec::new();
    for n in 0..12 {
        let (key, request_id) = (format!("/orders/{n}"), format!("gap-{n}"));
        let answer = client
            .put(format!("{}{key}", proxy.url))
            .header("x-tandem-request-id", &request_id)
            .body("{}")
            .send()
            .await
            .expect("answered with the store frozen");
        assert_eq!(answer.status(), reqwest::StatusCode::OK);
        expected.push((request_id, key));
    }
    assert_eq!(old.requests().len(), 12, "every write applied on old");
    assert!(new.requests().is_empty(), "none mirrored");

    // SIGKILL: no drain, no retry; then the store comes back and the proxy starts again.
    let killed = Command::new("kill")
        .args(["-9", &proxy.process.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    proxy.process.wait(Duration::from_secs(10));
    forwarder.freeze(false);
    let _restarted = Proxy::start(&old.url, &new.url, &control, &args);

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut recorded: Vec<(String, String)> = mirror_failures(&control, true)
            .into_iter()
            .filter(|failure| failure["status"] == "not_mirrored")
            .map(|failure| {
                assert_eq!(failure["reason"], "journal_full", "{failure}");
                assert_eq!(failure["target"], "new", "{failure}");
                (
                    failure["request_id"].as_str().unwrap().to_owned(),
                    failure["ordering_key"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        recorded.sort();
        let mut wanted = expected.clone();
        wanted.sort();
        if recorded == wanted {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "answered writes not recorded as not mirrored after a SIGKILL: recorded {recorded:?}, \
             answered {wanted:?}"
        );
        sleep(Duration::from_millis(200)).await;
    }
    drop(db);
}
