//! Starting real processes for proxy tests: two orders services, proxies, the CLI, and an
//! in-test upstream that records what reaches it.

use std::net::SocketAddr;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use serde_json::Value;
use tandem_testkit::{workspace_binary, ChildProcess, MariaDb, PostgresDb, ReservedPort};
use tempfile::TempDir;
use tokio::time::{sleep, Instant};

/// Longest wait for something that should happen promptly (convergence, propagation).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Which engine backs the orders services.
#[derive(Debug, Clone, Copy)]
pub enum Engine {
    Sqlite,
    Postgres,
    MariaDb,
}

/// A database for one orders service.
pub enum OrdersDb {
    Sqlite(TempDir),
    Postgres(PostgresDb),
    MariaDb(MariaDb),
}

impl OrdersDb {
    pub async fn create(engine: Engine) -> OrdersDb {
        match engine {
            Engine::Sqlite => OrdersDb::Sqlite(tempfile::tempdir().unwrap()),
            Engine::Postgres => OrdersDb::Postgres(PostgresDb::create("tandem_orders").await),
            Engine::MariaDb => OrdersDb::MariaDb(MariaDb::create("tandem_orders").await),
        }
    }

    pub fn url(&self) -> String {
        match self {
            OrdersDb::Sqlite(dir) => format!("sqlite://{}", dir.path().join("orders.db").display()),
            OrdersDb::Postgres(db) => db.url.clone(),
            OrdersDb::MariaDb(db) => db.url.clone(),
        }
    }
}

/// A running sample orders service.
pub struct Orders {
    _process: ChildProcess,
    pub url: String,
}

impl Orders {
    pub fn start(db: &OrdersDb) -> Orders {
        Orders::start_on(db, "127.0.0.1:0")
    }

    pub fn start_on(db: &OrdersDb, listen: &str) -> Orders {
        Orders::start_with_url(&db.url(), listen)
    }

    /// Starts the service on a database URL of the test's own making (e.g. with connection
    /// parameters that tell its sessions apart).
    pub fn start_with_url(db_url: &str, listen: &str) -> Orders {
        let (process, line) = ChildProcess::start(
            &workspace_binary("tandem-loadtest"),
            &["serve", "--db", db_url, "--listen", listen],
            &[],
            "listening on",
        );
        let url = line.rsplit(' ').next().unwrap().to_owned();
        Orders {
            _process: process,
            url,
        }
    }

    /// Every order, read directly (not through tandem).
    pub async fn all(&self) -> Value {
        reqwest::get(format!("{}/orders?limit=1000", self.url))
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()["orders"]
            .clone()
    }

    /// One order read directly, or `None` when absent.
    pub async fn get(&self, id: i64) -> Option<Value> {
        let response = reqwest::get(format!("{}/orders/{id}", self.url))
            .await
            .unwrap();
        (response.status() == StatusCode::OK).then_some(())?;
        Some(response.json().await.unwrap())
    }

    /// Writes an order directly to this side only (to make the sides differ on purpose).
    pub async fn put_direct(&self, id: i64, body: &Value) {
        let response = reqwest::Client::new()
            .put(format!("{}/orders/{id}", self.url))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}

/// An old and a new orders service, each on its own database.
pub struct Sides {
    pub old: Orders,
    pub new: Orders,
    _old_db: OrdersDb,
    _new_db: OrdersDb,
}

impl Sides {
    pub async fn start(engine: Engine) -> Sides {
        let old_db = OrdersDb::create(engine).await;
        let new_db = OrdersDb::create(engine).await;
        Sides {
            old: Orders::start(&old_db),
            new: Orders::start(&new_db),
            _old_db: old_db,
            _new_db: new_db,
        }
    }

    /// Waits until both databases hold the same orders; returns them.
    pub async fn converged(&self) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (old, new) = (self.old.all().await, self.new.all().await);
            if old == new {
                return old;
            }
            assert!(
                Instant::now() < deadline,
                "sides did not converge:\nold: {old}\nnew: {new}"
            );
            sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A control store in a temporary SQLite file.
pub struct SqliteControl {
    _dir: TempDir,
    pub url: String,
}

impl SqliteControl {
    pub fn new() -> SqliteControl {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("control.db").display());
        SqliteControl { _dir: dir, url }
    }
}

/// A running `tandem proxy`.
pub struct Proxy {
    pub process: ChildProcess,
    pub url: String,
    pub admin: String,
    pub control_db: String,
    /// Its journal's directory, unless the test chose one.
    _journal: Option<TempDir>,
}

impl Proxy {
    pub fn start(old: &str, new: &str, control_db: &str, extra: &[&str]) -> Proxy {
        Proxy::start_with_env(old, new, control_db, extra, &[])
    }

    pub fn start_with_env(
        old: &str,
        new: &str,
        control_db: &str,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Proxy {
        let mut args = vec!["proxy"];
        // A test may pin the proxy's port (to restart it in place); otherwise any free one.
        if !extra.contains(&"--listen") {
            args.extend(["--listen", "127.0.0.1:0"]);
        }
        args.extend([
            "--admin-listen",
            "127.0.0.1:0",
            "--old",
            old,
            "--new",
            new,
            "--control-db",
            control_db,
        ]);
        args.extend_from_slice(extra);
        // Each proxy its own journal, unless the test keeps one across restarts.
        let journal = (!extra.contains(&"--journal-dir")).then(|| tempfile::tempdir().unwrap());
        let journal_dir = journal.as_ref().map(|dir| dir.path().display().to_string());
        if let Some(dir) = &journal_dir {
            args.extend(["--journal-dir", dir]);
        }
        let (process, line) = ChildProcess::start(
            std::path::Path::new(env!("CARGO_BIN_EXE_tandem")),
            &args,
            envs,
            "tandem proxy listening on",
        );
        // "tandem proxy listening on http://A (admin http://B)"
        let mut urls = line
            .split_whitespace()
            .filter_map(|word| {
                word.trim_matches(|c| c == '(' || c == ')')
                    .strip_prefix("http://")
            })
            .map(|addr| format!("http://{addr}"));
        let url = urls.next().expect("proxy address");
        let admin = urls.next().expect("admin address");
        Proxy {
            process,
            url,
            admin,
            control_db: control_db.to_owned(),
            _journal: journal,
        }
    }

    /// Sets the stage with the CLI (past the promotion gate: no comparator runs in these
    /// tests) and waits until this proxy routes by it.
    pub async fn set_stage(&self, stage: &str) {
        let output = tandem(&[
            "stage",
            "set",
            stage,
            "--force",
            "--reason",
            "test",
            "--by",
            "tests",
            "--control-db",
            &self.control_db,
        ]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        self.wait_for_stage(stage).await;
    }

    /// The stage this proxy routes by.
    pub async fn applied_stage(&self) -> String {
        let view: Value = reqwest::get(format!("{}/admin/stage", self.admin))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        view["applied"]["stage"].as_str().unwrap().to_owned()
    }

    pub async fn wait_for_stage(&self, stage: &str) {
        let deadline = Instant::now() + PATIENCE;
        while self.applied_stage().await != stage {
            assert!(Instant::now() < deadline, "proxy never applied {stage}");
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value of one metric series on /metrics (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        self.published(series).await.unwrap_or(0.0)
    }

    /// The value of one metric series on /metrics, `None` before it is first published (a
    /// gauge set by a periodic task).
    pub async fn published(&self, series: &str) -> Option<f64> {
        let text = reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    /// SIGKILL: nothing runs after it, no drain, no shutdown path.
    pub fn sigkill(&mut self) {
        let killed = std::process::Command::new("kill")
            .args(["-9", &self.process.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        self.process.wait(Duration::from_secs(10));
    }

    /// Waits until the mirror queue is empty.
    pub async fn drained(&self) {
        let deadline = Instant::now() + PATIENCE;
        while self.metric("tandem_mirror_queue_depth").await > 0.0 {
            assert!(Instant::now() < deadline, "mirror queue never drained");
            sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs the `tandem` CLI to completion.
pub fn tandem(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .env("TANDEM_LOG", "warn")
        .output()
        .expect("run tandem")
}

/// Runs the CLI and parses its JSON output.
pub fn tandem_json(args: &[&str]) -> Value {
    let output = tandem(args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON output")
}

/// `tandem mirror failures --format json` on a store: the copies awaiting replay, or every
/// recorded copy with `all`.
pub fn mirror_failures(control_db: &str, all: bool) -> Vec<Value> {
    let mut args = vec![
        "mirror",
        "failures",
        "--format",
        "json",
        "--control-db",
        control_db,
    ];
    if all {
        args.push("--all");
    }
    match tandem_json(&args)["failures"].take() {
        Value::Array(failures) => failures,
        other => panic!("expected a JSON array of failures, got {other}"),
    }
}

/// Waits until the store lists at least `count` copies (`all` as for [`mirror_failures`]): a
/// proxy ships its records to the store in the background, after the client's answer.
pub async fn mirror_failures_reach(control_db: &str, all: bool, count: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let failures = mirror_failures(control_db, all);
        if failures.len() >= count {
            return failures;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {count} copies recorded: {failures:?}",
            failures.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every proxy's journal summary, from `tandem mirror failures --format json`.
pub fn journal_summaries(control_db: &str) -> Vec<Value> {
    let args = [
        "mirror",
        "failures",
        "--format",
        "json",
        "--control-db",
        control_db,
    ];
    match tandem_json(&args)["journals"].take() {
        Value::Array(journals) => journals,
        other => panic!("expected a JSON array of journals, got {other}"),
    }
}

/// Sends `request` and asserts the client got 200: the secondary never hurts the client.
pub async fn expect_ok(request: reqwest::RequestBuilder) -> reqwest::Response {
    let response = request.send().await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the client gets the authoritative 200"
    );
    response
}

/// One request as an upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// An HTTP upstream living in the test that records every request and answers
/// `{"ok":true}` with a configurable status after a configurable delay.
#[derive(Clone)]
pub struct RecordingUpstream {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Recorded>>>,
    /// Requests whose body has been read (recorded in `seen` only after the delay).
    arrived: Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Clone)]
struct RecorderState {
    seen: Arc<Mutex<Vec<Recorded>>>,
    arrived: Arc<std::sync::atomic::AtomicUsize>,
    delay: Duration,
    status: StatusCode,
}

impl RecordingUpstream {
    pub async fn start(delay: Duration, status: StatusCode) -> RecordingUpstream {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let state = RecorderState {
            seen: Arc::clone(&seen),
            arrived: Arc::clone(&arrived),
            delay,
            status,
        };
        let app = Router::new().fallback(record).with_state(state);
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        RecordingUpstream { url, seen, arrived }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests have arrived (answered or still inside the delay).
    pub fn arrived(&self) -> usize {
        self.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn record(State(state): State<RecorderState>, request: Request) -> impl IntoResponse {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    state
        .arrived
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    sleep(state.delay).await;
    state.seen.lock().unwrap().push(Recorded {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body,
    });
    (
        state.status,
        [("content-type", "application/json")],
        r#"{"ok":true}"#,
    )
}

/// A URL of `port`, which nothing listens on (and no other test takes while it is held).
pub fn refusing_url(port: &ReservedPort) -> String {
    format!("http://{}", port.address())
}

/// An order body for PUT.
pub fn order(customer: &str, amount: &str, status: &str) -> Value {
    serde_json::json!({"customer": customer, "amount": amount, "status": status})
}
