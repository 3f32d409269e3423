//! `tandem pg-proxy --capture wal` with pgbench: writes reach the other side from the
//! authoritative side's write-ahead log. SIGKILL of tandem under load loses nothing and
//! needs no replay; `shadow → live → shadow` under load is a pause, never an error, and
//! serial ids go on without collision on whichever side serves. Both sides are
//! `wal_level = logical` clusters (`scripts/ensure-logical-pg`).

use std::process::Command;
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor, PgConnection};
use tandem_testkit::{unique_name, Forwarder, PostgresDb};

use super::stages::{ready, stage_applied};
use super::wal_apply::compare_tables;
use super::wal_capture::{execute, SlotGuard};
use super::{metric, set_stage, tandem, wait_until, wal_capture_args, Proxy};

/// Two logical databases with pgbench's tables (the same deterministic rows on both) and an
/// `orders` table with a serial id; the slots (and origins) the proxy will own, dropped at the
/// end (first: fields drop in order, and a database with a slot cannot be dropped).
struct WalSides {
    _slots: [SlotGuard; 2],
    old: PostgresDb,
    new: PostgresDb,
    stem: String,
}

impl WalSides {
    async fn new(prefix: &str) -> WalSides {
        let old = PostgresDb::create_logical(prefix, false).await;
        let new = PostgresDb::create_logical(prefix, true).await;
        for db in [&old, &new] {
            let init = Command::new("pgbench")
                .args(["-i", "-q", "-s", "1", "--foreign-keys"])
                .arg(&db.url)
                .output()
                .unwrap();
            assert!(init.status.success(), "{init:?}");
            // pgbench_history has no key: its rows are found by all their columns.
            execute(
                &db.url,
                "CREATE TABLE orders (id SERIAL PRIMARY KEY, note TEXT NOT NULL, \
                   at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()); \
                 CREATE TABLE done (id INT PRIMARY KEY); \
                 ALTER TABLE pgbench_history REPLICA IDENTITY FULL",
            )
            .await;
        }
        let stem = unique_name(prefix);
        let slots = [
            SlotGuard::named(&old, &format!("{stem}_old")),
            SlotGuard::named(&new, &format!("{stem}_new")),
        ];
        WalSides {
            old,
            new,
            stem,
            _slots: slots,
        }
    }

    fn args(&self) -> Vec<String> {
        wal_capture_args(&self.stem)
            .into_iter()
            .chain(["--stage-grace", "2s"])
            .map(str::to_owned)
            .collect()
    }

    fn proxy(&self, stage: &str) -> Proxy {
        self.proxy_to(stage, &self.new.url)
    }

    /// A proxy whose new side is reached at `new` (the new side's URL, or a forwarder's).
    fn proxy_to(&self, stage: &str, new: &str) -> Proxy {
        self.proxy_with(stage, new, &[])
    }

    /// [`WalSides::proxy_to`] with `extra` arguments.
    fn proxy_with(&self, stage: &str, new: &str, extra: &[&str]) -> Proxy {
        let args = self.args();
        let args: Vec<&str> = args
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
            .collect();
        Proxy::start(stage, &self.old.url, new, &args)
    }

    /// A proxy started again on the store `control` (as an orchestrator restarts one, or as
    /// another machine sharing the store), its files in `dir`.
    fn restarted(&self, control: String, dir: tempfile::TempDir) -> Proxy {
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proxy::on_store(&self.old.url, &self.new.url, control, dir, &args)
    }

    /// A transaction on new holding `orders` locked: the capture's apply waits for it (until
    /// the returned session rolls back).
    async fn hold_orders_on_new(&self) -> PgConnection {
        let mut holder = PgConnection::connect(&self.new.url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
        sqlx::query("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
            .execute(&mut holder)
            .await
            .unwrap();
        holder
    }

    /// Two proxies in `shadow`, ready, each on a control store of its own: one whose stage a
    /// test changes, and one that never hears of it and goes on serving old.
    async fn switching_and_lagging(&self) -> (Proxy, Proxy) {
        let (switching, lagging) = (self.proxy("shadow"), self.proxy("shadow"));
        for proxy in [&switching, &lagging] {
            stage_applied(&proxy.admin, "shadow").await;
            ready(&proxy.admin).await;
        }
        (switching, lagging)
    }

    /// A proxy in `dual-write` (with `extra` arguments), ready, whose new side is reached
    /// through a forwarder (stopped to take new down); with the new side's URL through it.
    async fn dual_write_behind_forwarder(&self, extra: &[&str]) -> (Proxy, Forwarder, String) {
        let forwarder = Forwarder::new("127.0.0.1:5434").await;
        let through = self.new.url.replacen(
            "127.0.0.1:5434",
            &format!("127.0.0.1:{}", forwarder.port()),
            1,
        );
        let proxy = self.proxy_with("dual-write", &through, extra);
        stage_applied(&proxy.admin, "dual-write").await;
        ready(&proxy.admin).await;
        (proxy, forwarder, through)
    }

    /// `tandem pg-mirror status --format json` of this pair's slots, with the alerts of the
    /// store at `control`.
    fn mirror_status(&self, control: &str) -> serde_json::Value {
        let (code, status) = self.mirror_status_via(&self.new.url, control);
        assert_eq!(code, Some(0), "{status}");
        status
    }

    /// `tandem pg-mirror status --format json` with the new side at `new`: its exit code and
    /// its report.
    fn mirror_status_via(&self, new: &str, control: &str) -> (Option<i32>, serde_json::Value) {
        let output = tandem(&[
            "pg-mirror",
            "status",
            "--old",
            &self.old.url,
            "--new",
            new,
            "--capture-slot",
            &self.stem,
            "--format",
            "json",
            "--control-db",
            control,
        ]);
        let report = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|err| panic!("{err}: {output:?}"));
        (output.status.code(), report)
    }

    /// A session with `proxy`, as a client of old's database.
    async fn connect_through(&self, proxy: &Proxy) -> PgConnection {
        let database = self.old.url.rsplit('/').next().unwrap();
        PgConnection::connect(&format!("postgres://postgres@{}/{database}", proxy.address))
            .await
            .unwrap()
    }

    /// Runs `sql` (one statement or several) through `proxy`.
    async fn run_through(&self, proxy: &Proxy, sql: &str) {
        let mut conn = self.connect_through(proxy).await;
        conn.execute(sql).await.unwrap();
        conn.close().await.unwrap();
    }

    /// Writes `done` = `id` through the proxy and waits until both sides hold it: every
    /// transaction committed before it has been applied on the other side.
    async fn wait_for_done(&self, proxy: &Proxy, id: i32) {
        let mut conn = self.connect_through(proxy).await;
        sqlx::query("INSERT INTO done VALUES ($1)")
            .bind(id)
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        for db in [&self.old, &self.new] {
            loop {
                let arrived = count(
                    &db.url,
                    &format!("SELECT count(*) FROM done WHERE id = {id}"),
                )
                .await;
                if arrived == 1 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "done {id} did not reach {} within 60 s; proxy log:\n{}",
                    db.name,
                    proxy.process.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Drops the replication origins the proxy's captures recorded their progress in (a
/// cluster-wide catalog: they outlive the databases).
impl Drop for WalSides {
    fn drop(&mut self) {
        drop_capture_origins(&self.old.url, &self.new.url, &self.stem);
    }
}

/// Drops, when it goes, the replication origins a proxy capturing under `stem` recorded its
/// progress in (declare it before the proxy, so that the proxy stops first).
pub(crate) struct CaptureOrigins {
    old: String,
    new: String,
    stem: String,
}

impl CaptureOrigins {
    pub(crate) fn new(old: &str, new: &str, stem: &str) -> CaptureOrigins {
        CaptureOrigins {
            old: old.to_owned(),
            new: new.to_owned(),
            stem: stem.to_owned(),
        }
    }
}

impl Drop for CaptureOrigins {
    fn drop(&mut self) {
        drop_capture_origins(&self.old, &self.new, &self.stem);
    }
}

/// Drops the replication origins of the captures between `old` and `new` whose slots are
/// named after `stem`.
pub(crate) fn drop_capture_origins(old: &str, new: &str, stem: &str) {
    let origins = [
        (new.to_owned(), format!("tandem_{stem}_old")),
        (old.to_owned(), format!("tandem_{stem}_new")),
    ];
    tandem_testkit::run_apart(move || async move {
        for (url, origin) in origins {
            let _ = tokio::time::timeout(
                Duration::from_secs(20),
                tandem_pgproxy::wal::Target::drop_origin(tandem_control::Side::Old, &url, &origin),
            )
            .await;
        }
        Some(())
    });
}

impl WalSides {
    /// Both sides identical by `tandem compare` (`pgbench_history`, without a key, as a
    /// multiset of whole rows).
    fn assert_identical(&self) {
        let tables = [
            "pgbench_accounts",
            "pgbench_branches",
            "pgbench_tellers",
            "pgbench_history",
            "orders",
            "done",
        ];
        if let Some(report) = compare_tables(&self.old.url, &self.new.url, &tables) {
            panic!("the sides differ:\n{report}");
        }
    }
}

async fn count(url: &str, sql: &str) -> i64 {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let value: i64 = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    value
}

async fn text(url: &str, sql: &str) -> String {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let value: Option<String> = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    value.unwrap_or_default()
}

/// pgbench through the proxy on `port`: `args` after the connection options.
fn pgbench(port: &str, database: &str, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("pgbench");
    command
        .args(["-h", "127.0.0.1", "-p", port, "-U", "postgres", "-n"])
        .args(args)
        .arg(database)
        .env("PGCONNECT_TIMEOUT", "40")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command
}

/// A transaction per connection (as a pool that reconnects does): TPC-B's updates and an
/// order with a serial id.
const SWITCH_SCRIPT: &str = "\\set aid random(1, 100000)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
INSERT INTO orders (note) VALUES ('pgbench');
END;
";

/// A single-row update in autocommit: its transaction's row hashes to one apply session.
const UPDATE_SCRIPT: &str = "\\set aid random(1, 100000)
\\set delta random(-5000, 5000)
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_pgbench_three_times_loses_nothing_without_replay() {
    let sides = WalSides::new("tandem_walpx_kill").await;
    let database = sides.old.url.rsplit('/').next().unwrap().to_owned();
    let mut proxy = sides.proxy("dual-write");
    stage_applied(&proxy.admin, "dual-write").await;
    ready(&proxy.admin).await;
    let mut committed = 0_u64;
    // Killed early, at once and late in each run of the load.
    for (round, after) in [1_500, 300, 4_000].into_iter().enumerate() {
        let round = i32::try_from(round).unwrap();
        let load = pgbench(&proxy.port, &database, &["-c", "8", "-j", "2", "-T", "6"])
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(after)).await;
        let killed = Command::new("kill")
            .args(["-KILL", &proxy.process.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let output = load.wait_with_output().await.unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        committed += stdout
            .lines()
            .find_map(|line| line.strip_prefix("number of transactions actually processed: "))
            .and_then(|n| n.split('/').next()?.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no count of transactions from pgbench: {stdout}"));
        // Restarted on the same store, as an orchestrator would: no replay command.
        let control = proxy.control.clone();
        let dir = std::mem::replace(&mut proxy.dir, tempfile::tempdir().unwrap());
        drop(proxy);
        proxy = sides.restarted(control, dir);
        ready(&proxy.admin).await;
        sides.wait_for_done(&proxy, round).await;
        // Identical after each restart, not only at the end.
        sides.assert_identical();
    }
    let after = pgbench(&proxy.port, &database, &["-c", "4", "-t", "100"])
        .output()
        .await
        .unwrap();
    assert!(after.status.success(), "{after:?}");
    sides.wait_for_done(&proxy, 10).await;
    sides.assert_identical();
    let history = count(&sides.new.url, "SELECT count(*) FROM pgbench_history").await;
    assert!(
        u64::try_from(history).unwrap() >= committed + 400,
        "new holds {history} history rows; clients saw {committed} + 400 committed"
    );
    // A TRUNCATE through the proxy is carried, between the rows before and after it.
    sides
        .run_through(
            &proxy,
            "INSERT INTO orders (note) SELECT 'before' FROM generate_series(1, 50); \
             TRUNCATE orders; INSERT INTO orders (note) VALUES ('after')",
        )
        .await;
    sides.wait_for_done(&proxy, 11).await;
    sides.assert_identical();
    assert_eq!(
        text(&sides.new.url, "SELECT string_agg(note, ',') FROM orders").await,
        "after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_live_shadow_under_pgbench_pauses_without_errors() {
    let sides = WalSides::new("tandem_walpx_switch").await;
    let database = sides.old.url.rsplit('/').next().unwrap().to_owned();
    // Sessions spread over three session threads: each stage change reaches every one. Three
    // apply sessions beside the main one: the single-row updates are applied by them, each
    // switch's marker waits for them.
    let proxy = sides.proxy_with(
        "shadow",
        &sides.new.url,
        &["--session-threads", "3", "--apply-sessions", "3"],
    );
    stage_applied(&proxy.admin, "shadow").await;
    ready(&proxy.admin).await;
    let work = tempfile::tempdir().unwrap();
    let script = work.path().join("switch.sql");
    std::fs::write(&script, SWITCH_SCRIPT).unwrap();
    let script = script.display().to_string();
    let updates = work.path().join("updates.sql");
    std::fs::write(&updates, UPDATE_SCRIPT).unwrap();
    let updates = updates.display().to_string();
    // A connection per transaction (as a pool that reconnects) and long-lived connections
    // with prepared statements (as a pool that keeps them): both go on across the switches.
    let reconnecting = pgbench(
        &proxy.port,
        &database,
        &["-C", "-c", "4", "-j", "2", "-T", "16", "-f", &script],
    )
    .spawn()
    .unwrap();
    let prepared = pgbench(
        &proxy.port,
        &database,
        &[
            "-M", "prepared", "-c", "4", "-j", "2", "-T", "16", "-f", &script, "-f", &updates,
        ],
    )
    .spawn()
    .unwrap();
    let now = || text(&sides.old.url, "SELECT clock_timestamp()::text");
    tokio::time::sleep(Duration::from_secs(3)).await;
    set_stage("live", &proxy.control);
    stage_applied(&proxy.admin, "live").await;
    let live_from = now().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    set_stage("shadow", &proxy.control);
    stage_applied(&proxy.admin, "shadow").await;
    let shadow_from = now().await;
    for (load, what) in [(reconnecting, "-C"), (prepared, "-M prepared")] {
        let output = load.wait_with_output().await.unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stdout.contains("number of failed transactions: 0"),
            "pgbench {what} across the switches: {stdout}\n{stderr}\nproxy log:\n{}",
            proxy.process.log()
        );
    }
    assert!(
        super::metric(&proxy.admin, "tandem_pg_sessions_moved_total").await > 0.0,
        "the long-lived sessions moved"
    );
    sides.wait_for_done(&proxy, 1).await;
    sides.assert_identical();
    // Orders were written on old, then on new during live, then on old again: each side's
    // sequence went on past every id the other side handed out, so ids grow with time across
    // both switches (an order written a second after another never has a smaller id; within
    // a second, concurrent sessions may take ids and timestamps in either order).
    let written = count(&sides.new.url, "SELECT count(*) FROM orders").await;
    assert!(written > 0);
    // Written in each period: on old before the switch, on new in live, on old again after.
    for (from, to, period) in [
        ("-infinity", live_from.as_str(), "before live"),
        (live_from.as_str(), shadow_from.as_str(), "in live"),
        (shadow_from.as_str(), "infinity", "back in shadow"),
    ] {
        let orders = count(
            &sides.new.url,
            &format!(
                "SELECT count(*) FROM orders WHERE at > '{from}'::timestamptz \
                 AND at < '{to}'::timestamptz"
            ),
        )
        .await;
        assert!(
            orders > 0,
            "no order written {period}: the check below would see none"
        );
    }
    let older_ids_later = count(
        &sides.new.url,
        "SELECT count(*) FROM orders a JOIN orders b \
         ON b.at > a.at + interval '1 second' AND b.id < a.id",
    )
    .await;
    assert_eq!(
        older_ids_later, 0,
        "orders written later were given smaller ids: a sequence was not carried at a switch"
    );
    // The side serving now hands out ids past every one the other side handed out (carried
    // at the switch); the other side's sequence follows on a timer.
    let last = "SELECT last_value FROM orders_id_seq";
    let highest = count(&sides.old.url, "SELECT max(id)::bigint FROM orders").await;
    assert!(count(&sides.old.url, last).await >= highest);
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&sides.new.url, last).await < highest {
        assert!(
            Instant::now() < deadline,
            "new's orders_id_seq did not follow old's within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = reqwest::get(format!("{}/metrics", proxy.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tandem_capture_transactions_total"),
        "{metrics}"
    );
    assert!(
        super::metric(
            &proxy.admin,
            "tandem_capture_routed_total{route=\"worker\"}"
        )
        .await
            > 0.0,
        "no transaction was applied by a worker: {metrics}"
    );
}

/// A statement still running on the side before when the stage grace ends is cancelled
/// and its answer awaited: left running, an autocommit insert would commit there after the
/// switch had finished, and the other side would never get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_running_past_the_grace_is_cancelled_not_left_to_commit() {
    let sides = WalSides::new("tandem_walpx_grace").await;
    let database = sides.old.url.rsplit('/').next().unwrap().to_owned();
    let proxy = sides.proxy("dual-write");
    stage_applied(&proxy.admin, "dual-write").await;
    ready(&proxy.admin).await;
    let through = format!("postgres://postgres@{}/{database}", proxy.address);
    let slow = tokio::spawn(async move {
        let mut conn = PgConnection::connect(&through).await.unwrap();
        sqlx::query("INSERT INTO orders (note) SELECT 'slow' FROM pg_sleep(120)")
            .execute(&mut conn)
            .await
    });
    let running = "SELECT count(*) FROM pg_stat_activity \
                   WHERE query LIKE 'INSERT INTO orders (note) SELECT%' AND state = 'active'";
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&sides.old.url, running).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the slow insert never ran on old"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    set_stage("live", &proxy.control);
    stage_applied(&proxy.admin, "live").await;
    let outcome = slow.await.unwrap();
    assert!(
        outcome.is_err(),
        "the slow insert was not ended by the stage change: {outcome:?}"
    );
    // Whatever the session started on old has ended there before the comparison.
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&sides.old.url, running).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the slow insert still runs on old"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sides.wait_for_done(&proxy, 1).await;
    sides.assert_identical();
    assert_eq!(
        count(
            &sides.old.url,
            "SELECT count(*) FROM orders WHERE note = 'slow'"
        )
        .await,
        0,
        "the cancelled insert committed on old"
    );
}

/// tandem restarted while the other side is down serves the authoritative side at once
/// (it cannot ask the other side whether a switch away from it was left unfinished; the
/// authoritative side's replication origins say none was), and the other side catches up
/// once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_with_the_other_side_down_it_serves_and_catches_up() {
    let sides = WalSides::new("tandem_walpx_restart").await;
    let database = sides.old.url.rsplit('/').next().unwrap().to_owned();
    let (proxy, mut forwarder, through) = sides.dual_write_behind_forwarder(&[]).await;
    sides.wait_for_done(&proxy, 1).await;
    let killed = Command::new("kill")
        .args(["-KILL", &proxy.process.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    forwarder.stop().await;
    let control = proxy.control.clone();
    let args = sides.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (process, address, _admin) =
        super::pg_proxy_with(&sides.old.url, &through, &control, &args);
    let mut conn = PgConnection::connect(&format!("postgres://postgres@{address}/{database}"))
        .await
        .unwrap_or_else(|err| {
            panic!(
                "no session while new is down: {err}; proxy log:\n{}",
                process.log()
            )
        });
    for note in ["while new is down 1", "while new is down 2"] {
        sqlx::query("INSERT INTO orders (note) VALUES ($1)")
            .bind(note)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    conn.close().await.unwrap();
    forwarder.start().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let arrived = "SELECT count(*) FROM orders WHERE note LIKE 'while new is down%'";
    while count(&sides.new.url, arrived).await < 2 {
        assert!(
            Instant::now() < deadline,
            "the writes made while new was down never reached it; proxy log:\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(process);
    sides.assert_identical();
}

/// Two instances, one of which never hears of the stage change (it reads a control store of
/// its own, as an instance cut off from the shared one would go on at its last stage): the
/// switch waits for it to let the side before go instead of dropping that side's slot under
/// its writes, and once it follows, every write it took reaches the side taking over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_waits_for_an_instance_still_serving_the_side_before() {
    let sides = WalSides::new("tandem_walpx_fence").await;
    let database = sides.old.url.rsplit('/').next().unwrap().to_owned();
    let (switching, lagging) = sides.switching_and_lagging().await;
    let through = |proxy: &Proxy| format!("postgres://postgres@{}/{database}", proxy.address);
    let mut session = PgConnection::connect(&through(&lagging)).await.unwrap();
    let insert = "INSERT INTO orders (note) VALUES ($1)";
    sqlx::query(insert)
        .bind("before the switch")
        .execute(&mut session)
        .await
        .unwrap();
    set_stage("live", &switching.control);
    // The switch either waits for the other instance or (unfenced) goes through.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = switching.process.log();
        if log.contains("waiting for every tandem serving the old side")
            || log.contains("sessions are served by the new side")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the switch neither waited nor ended; its log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The lagging instance still serves old, and old's slot still keeps its writes.
    sqlx::query(insert)
        .bind("while the switch waits")
        .execute(&mut session)
        .await
        .unwrap();
    session.close().await.unwrap();
    let slot = format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}_old'",
        sides.stem
    );
    assert_eq!(
        count(&sides.old.url, &slot).await,
        1,
        "old's slot was dropped"
    );
    // It follows: the switch completes, and everything it took reached new.
    set_stage("live", &lagging.control);
    for proxy in [&switching, &lagging] {
        stage_applied(&proxy.admin, "live").await;
    }
    sides.wait_for_done(&switching, 1).await;
    sides.assert_identical();
    assert_eq!(
        count(
            &sides.new.url,
            "SELECT count(*) FROM orders WHERE note = 'while the switch waits'"
        )
        .await,
        1
    );
}

/// A client that logs in while a switch to new waits, and whose stage goes back to `shadow`
/// before the switch ends, is served by old: its first request does not wait out the switch
/// timeout for a side no switch goes to any more (with `pgbench -C` through
/// shadow → live → shadow, such a client was refused with 57P03). A session idle on old
/// when the switch began, moving to new, goes back to old the same way (it was ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_waiting_for_a_switch_taken_back_are_served_by_the_side_the_stage_names() {
    let sides = WalSides::new("tandem_walpx_back").await;
    let database = sides.old.url.rsplit('/').next().unwrap().to_owned();
    let (switching, lagging) = sides.switching_and_lagging().await;
    // The lagging instance serves old: the switch to new waits for it.
    let through = |proxy: &Proxy| format!("postgres://postgres@{}/{database}", proxy.address);
    let mut holding = PgConnection::connect(&through(&lagging)).await.unwrap();
    sqlx::query("SELECT 1").execute(&mut holding).await.unwrap();
    let mut idle = PgConnection::connect(&through(&switching)).await.unwrap();
    sqlx::query("SELECT 1").execute(&mut idle).await.unwrap();
    set_stage("live", &switching.control);
    stage_applied(&switching.admin, "live").await;
    log_says(
        &switching,
        "waiting for every tandem serving the old side",
        "the switch did not wait for the lagging instance",
    )
    .await;
    // Logged in under `live`: the session starts on new once the switch is done.
    let mut late = PgConnection::connect(&through(&switching)).await.unwrap();
    let insert = tokio::spawn(async move {
        let inserted = sqlx::query("INSERT INTO orders (note) VALUES ('logged in under live')")
            .execute(&mut late)
            .await;
        (inserted, late)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    set_stage("shadow", &switching.control);
    let (inserted, late) = insert.await.unwrap();
    assert!(
        inserted.is_ok(),
        "the client was not served after the stage went back: {inserted:?}\nproxy log:\n{}",
        switching.process.log()
    );
    late.close().await.unwrap();
    let inserted = sqlx::query("INSERT INTO orders (note) VALUES ('idle through the switch')")
        .execute(&mut idle)
        .await;
    assert!(
        inserted.is_ok(),
        "the idle session did not go on after the stage went back: {inserted:?}\nproxy log:\n{}",
        switching.process.log()
    );
    idle.close().await.unwrap();
    holding.close().await.unwrap();
    for note in ["logged in under live", "idle through the switch"] {
        assert_eq!(
            count(
                &sides.old.url,
                &format!("SELECT count(*) FROM orders WHERE note = '{note}'")
            )
            .await,
            1,
            "{note}: the insert did not reach old, the side the stage names"
        );
    }
    sides.wait_for_done(&switching, 1).await;
    sides.assert_identical();
}

/// The slot of `side` in a `tandem pg-mirror status` report.
fn slot<'a>(status: &'a serde_json::Value, side: &str) -> &'a serde_json::Value {
    status["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|slot| slot["side"] == side)
        .unwrap()
}

/// A column whose type differs on the other side makes every apply fail: the capture does not
/// pause (the columns match by name), it starts over and fails again. Failing so for a minute
/// (three times in a row at least) raises the critical `capture_failing` alert with the
/// failure, and the gauge its Prometheus rule reads counts them; once the column matches the
/// capture goes on by itself, the sides end identical, and the alert and the gauge clear with
/// the first batch applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_failing_again_and_again_alerts_and_goes_on_once_the_cause_is_fixed() {
    let sides = WalSides::new("tandem_walpx_fail").await;
    execute(
        &sides.new.url,
        "ALTER TABLE orders ALTER COLUMN note TYPE INT USING 0",
    )
    .await;
    let proxy = sides.proxy("dual-write");
    stage_applied(&proxy.admin, "dual-write").await;
    ready(&proxy.admin).await;
    sides
        .run_through(&proxy, "INSERT INTO orders (note) VALUES ('not a number')")
        .await;
    let failing = |status: &serde_json::Value| {
        status["alerts"].as_array().and_then(|alerts| {
            alerts
                .iter()
                .filter_map(|alert| alert.as_str())
                .find(|alert| alert.contains("times in a row"))
                .map(str::to_owned)
        })
    };
    let alert = wait_until(Duration::from_secs(150), async || {
        let status = sides.mirror_status(&proxy.control);
        failing(&status).ok_or_else(|| {
            format!(
                "no capture_failing alert: {status}\n{}",
                proxy.process.log()
            )
        })
    })
    .await;
    assert!(
        alert.contains("the capture of the old side failed") && alert.contains("22P02"),
        "the alert names the side and the failure: {alert}"
    );
    assert!(metric(&proxy.admin, "tandem_capture_failures_in_a_row").await >= 3.0);
    execute(
        &sides.new.url,
        "ALTER TABLE orders ALTER COLUMN note TYPE TEXT",
    )
    .await;
    sides.wait_for_done(&proxy, 1).await;
    sides.assert_identical();
    wait_until(Duration::from_secs(30), async || {
        let status = sides.mirror_status(&proxy.control);
        let in_a_row = metric(&proxy.admin, "tandem_capture_failures_in_a_row").await;
        if failing(&status).is_none() && in_a_row == 0.0 {
            Ok(())
        } else {
            Err(format!(
                "the capture_failing alert stayed open ({in_a_row} in a row): {status}"
            ))
        }
    })
    .await;
}

/// Wide rows the other side cannot take yet (its table locked there): what the capture reads
/// ahead is bounded by its size, not by its count of rows, so one transaction of 1,000 rows
/// of 100 kB (100 MB as the stream sends them, a few kB compressed on disk) is read in parts
/// of about 10 MB, two held while the apply waits and the next assembled, and tandem's memory
/// grows by tens of MB, not by the transaction; once the lock goes, every row arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_rows_waiting_for_the_other_side_are_held_by_their_size() {
    let sides = WalSides::new("tandem_walpx_wide").await;
    let proxy = sides.proxy("dual-write");
    stage_applied(&proxy.admin, "dual-write").await;
    ready(&proxy.admin).await;
    let before = resident_bytes(proxy.process.id());
    let mut holder = sides.hold_orders_on_new().await;
    sides
        .run_through(
            &proxy,
            "INSERT INTO orders (note) SELECT repeat('x', 100000) || g \
             FROM generate_series(1, 1000) g",
        )
        .await;
    // Parts of up to 10,000 units (a change, or 1 KiB of its values) read ahead: the capture
    // reads as far as its budget of 20,000 lets it (counted by rows, the whole transaction
    // would be 1,000 and held at once).
    wait_until(Duration::from_secs(120), async || {
        let held = metric(&proxy.admin, "tandem_capture_read_ahead_units").await;
        if held >= 10_000.0 {
            Ok(())
        } else {
            Err(format!(
                "the capture read ahead only {held} units\n{}",
                proxy.process.log()
            ))
        }
    })
    .await;
    let mut most = 0;
    for _ in 0..10 {
        most = most.max(resident_bytes(proxy.process.id()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let grown = most.saturating_sub(before);
    assert!(
        grown < 90 << 20,
        "tandem grew by {} MB holding rows the other side could not take",
        grown >> 20
    );
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    holder.close().await.unwrap();
    sides.wait_for_done(&proxy, 1).await;
    sides.assert_identical();
    assert_eq!(
        count(&sides.new.url, "SELECT count(*) FROM orders").await,
        1000
    );
}

/// The resident memory of process `pid`, in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_a_key_stops_the_start_with_the_fix() {
    let old = PostgresDb::create_logical("tandem_walpx_keyless", false).await;
    let new = PostgresDb::create_logical("tandem_walpx_keyless", true).await;
    for db in [&old, &new] {
        execute(
            &db.url,
            "CREATE TABLE audit (at TIMESTAMPTZ, what TEXT); CREATE TABLE seen (who TEXT)",
        )
        .await;
    }
    let stderr = refused_start(&old.url, &new.url, &unique_name("tandem_walpx_keyless"));
    assert!(
        stderr.contains("\"public\".audit") || stderr.contains("public.audit"),
        "the table is named: {stderr}"
    );
    // The fix, one statement per table, to paste as it is.
    for table in ["audit", "seen"] {
        assert!(
            stderr.contains(&format!("{table} REPLICA IDENTITY FULL;"))
                && stderr.contains("ALTER TABLE "),
            "the fix for {table} is given: {stderr}"
        );
    }
}

/// What `tandem pg-proxy` printed when, started in `dual-write` with WAL capture (slot and
/// publication named `stem`), it refused to start.
fn refused_start(old: &str, new: &str, stem: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let control = format!("sqlite://{}", dir.path().join("control.db").display());
    set_stage("dual-write", &control);
    let mut args = vec![
        "pg-proxy",
        "--listen",
        "127.0.0.1:0",
        "--old",
        old,
        "--new",
        new,
        "--control-db",
        &control,
    ];
    args.extend(wal_capture_args(stem));
    let output = tandem(&args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{stderr}");
    stderr
}

/// A user who may not create the capture's missing publication (`FOR ALL TABLES` takes a
/// superuser) is refused at start, with the statement that makes it, rather than failing
/// once the stage first mirrors writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_may_not_create_the_publication_is_refused_at_start_with_the_fix() {
    let old = PostgresDb::create_logical("tandem_walpx_pubrights", false).await;
    let new = PostgresDb::create_logical("tandem_walpx_pubrights", true).await;
    for db in [&old, &new] {
        execute(&db.url, "CREATE TABLE t (id INT PRIMARY KEY)").await;
    }
    let role = unique_name("tandem_walpx_role");
    execute(&old.url, &format!("CREATE ROLE {role} LOGIN REPLICATION")).await;
    let as_role = old
        .url
        .replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    let stderr = refused_start(&as_role, &new.url, &unique_name("tandem_walpx_pubrights"));
    execute(&old.url, &format!("DROP ROLE {role}")).await;
    assert!(
        stderr.contains("may not create the publication")
            && stderr.contains("CREATE PUBLICATION \"tandem_walpx_pubrights_")
            && stderr.contains("FOR ALL TABLES;"),
        "the missing right and the fix are named: {stderr}"
    );
}

/// A side whose server has no replication slot left: a start whose stage captures it
/// (`dual-write`: old) is refused, saying so with the fix; a start in `live`, which captures
/// new, serves (old is only reported: a rollback to `shadow` would need a slot there). Its
/// capture of new asks for three apply sessions on old, whose server holds one replication
/// origin: the first session takes it, the others are refused, and the capture applies
/// everything in that one session, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_side_without_a_free_slot_is_refused_only_when_its_stage_captures_it() {
    let old = PostgresDb::create_on_one_slot_server("tandem_walpx_noslot").await;
    let new = PostgresDb::create_logical("tandem_walpx_noslot", true).await;
    for db in [&old, &new] {
        execute(&db.url, "CREATE TABLE t (id INT PRIMARY KEY)").await;
    }
    // The server's one slot, taken (by a name no capture uses).
    let filler = unique_name("tandem_walpx_filler");
    let _filler = SlotGuard::named(&old, &filler);
    execute(
        &old.url,
        &format!("SELECT pg_create_logical_replication_slot('{filler}', 'pgoutput')"),
    )
    .await;
    let stem = unique_name("tandem_walpx_noslot");
    let _slots = [
        SlotGuard::named(&old, &format!("{stem}_old")),
        SlotGuard::named(&new, &format!("{stem}_new")),
    ];
    let stderr = refused_start(&old.url, &new.url, &stem);
    assert!(
        stderr.contains("the old side has no free replication slot")
            && stderr.contains("max_replication_slots"),
        "the side and the fix are named: {stderr}"
    );
    let mut args = wal_capture_args(&stem).to_vec();
    args.extend(["--apply-sessions", "3"]);
    let proxy = Proxy::start("live", &old.url, &new.url, &args);
    super::stages::stage_applied(&proxy.admin, "live").await;
    super::stages::ready(&proxy.admin).await;
    let through = format!(
        "postgres://postgres@{}/{}",
        proxy.address,
        new.url.rsplit('/').next().unwrap()
    );
    let mut conn = PgConnection::connect(&through).await.unwrap();
    for id in 1..=20 {
        conn.execute(format!("INSERT INTO t VALUES ({id})").as_str())
            .await
            .unwrap();
    }
    conn.close().await.unwrap();
    log_says(
        &proxy,
        "the old side has no free replication slot",
        "the old side reported",
    )
    .await;
    log_says(
        &proxy,
        "applying in one session",
        "the apply sessions old has no room for are reported",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&old.url, "SELECT count(*) FROM t").await < 20 {
        assert!(
            Instant::now() < deadline,
            "old never received new's rows; log:\n{}",
            proxy.process.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin = &proxy.admin;
    assert!(
        metric(
            admin,
            "tandem_capture_failures_total{reason=\"origins_exhausted\"}"
        )
        .await
            >= 1.0,
        "the refused apply sessions are counted"
    );
    assert_eq!(
        metric(admin, "tandem_capture_routed_total{route=\"worker\"}").await,
        0.0,
        "nothing went to a worker that was never opened"
    );
    for reason in ["connection", "other", "refused"] {
        let series = format!("tandem_capture_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(
            metric(admin, &series).await,
            0.0,
            "the capture went on in one session, without starting over ({reason})"
        );
    }
    // The capture of new recorded its progress on old: that server keeps one origin.
    drop(proxy);
    tandem_pgproxy::wal::Target::drop_origin(
        tandem_control::Side::Old,
        &old.url,
        &format!("tandem_{stem}_new"),
    )
    .await
    .unwrap();
}

/// The capture is the default: a server without logical decoding is refused at start with
/// the fix and the explicit alternative, never mirrored by the weaker mode silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_logical_decoding_the_default_start_is_refused_with_the_fix() {
    let (old, new) = (
        PostgresDb::create("tandem_walpx_default").await,
        PostgresDb::create("tandem_walpx_default").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let control = format!("sqlite://{}", dir.path().join("control.db").display());
    let output = tandem(&[
        "pg-proxy",
        "--listen",
        "127.0.0.1:0",
        "--old",
        &old.url,
        "--new",
        &new.url,
        "--control-db",
        &control,
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("wal_level") && stderr.contains("ALTER SYSTEM SET wal_level = logical"),
        "the missing piece and its fix: {stderr}"
    );
    assert!(
        stderr.contains("--capture statements"),
        "the alternative is named: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_side_down_30s_and_a_table_altered_on_one_side_catch_up_identical() {
    let sides = WalSides::new("tandem_walpx_down").await;
    let database = sides.old.url.rsplit('/').next().unwrap().to_owned();
    // A limit on the log kept that the outage passes: the alert says so before a disk would.
    let (proxy, mut forwarder, through) = sides
        .dual_write_behind_forwarder(&["--max-retained-wal", "4000000"])
        .await;
    let load = pgbench(&proxy.port, &database, &["-c", "4", "-j", "2", "-T", "36"])
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    forwarder.stop().await;
    // Clients go on with old; the slot keeps what new has not applied.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let status = sides.mirror_status(&proxy.control);
    assert!(
        slot(&status, "old")["unconfirmed_bytes"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "old keeps its log for new while new is down: {status}"
    );
    assert!(
        status["alerts"]
            .to_string()
            .contains("past its limit 4000000"),
        "no critical capture_wal_retained alert while new is down: {status}"
    );
    // Seen the way the proxy reaches new: old's slot is shown all the same, what new applied
    // is unknown and says why, and the command fails for the side it could not read.
    let (code, down) = sides.mirror_status_via(&through, &proxy.control);
    assert_eq!(code, Some(1), "{down}");
    assert!(
        slot(&down, "old")["retained_bytes"].as_u64().unwrap_or(0) > 0
            && slot(&down, "old")["other_side_error"].is_string()
            && down["errors"]
                .to_string()
                .contains("the new side cannot be read"),
        "{down}"
    );
    forwarder.start().await;
    let output = load.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("number of failed transactions: 0"),
        "{stdout}"
    );
    sides.wait_for_done(&proxy, 1).await;
    sides.assert_identical();

    // DDL on old only: the capture pauses with an alert naming the table and the column.
    execute(&sides.old.url, "ALTER TABLE orders ADD COLUMN extra INT").await;
    execute(
        &sides.old.url,
        "INSERT INTO orders (note, extra) VALUES ('after', 7)",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = sides.mirror_status(&proxy.control);
        let alerts = status["alerts"].to_string();
        if alerts.contains("orders") && alerts.contains("extra") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no capture_paused alert: {status}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The gauge TandemCapturePaused alerts on says so too, and says when it is over.
    assert_eq!(
        super::metric(&proxy.admin, "tandem_capture_paused").await,
        1.0
    );
    let resume = |wait: &str| {
        tandem(&[
            "pg-mirror",
            "resume",
            "--wait",
            wait,
            "--control-db",
            &proxy.control,
        ])
    };
    // Not yet on new: resume says what still differs.
    let early = resume("2s");
    assert_eq!(early.status.code(), Some(1), "{early:?}");
    assert!(
        String::from_utf8_lossy(&early.stdout).contains("still paused")
            && String::from_utf8_lossy(&early.stdout).contains("extra"),
        "{early:?}"
    );
    execute(&sides.new.url, "ALTER TABLE orders ADD COLUMN extra INT").await;
    let resumed = resume("60s");
    assert!(
        resumed.status.success()
            && String::from_utf8_lossy(&resumed.stdout).contains("the capture goes on"),
        "{resumed:?}"
    );
    sides.wait_for_done(&proxy, 2).await;
    sides.assert_identical();
    // Resumed: set back once the capture has committed a batch since.
    super::stages::metric_reaches(&proxy.admin, "tandem_capture_paused", 0.0).await;
    assert_eq!(
        text(
            &sides.new.url,
            "SELECT extra::text FROM orders WHERE note = 'after'"
        )
        .await,
        "7"
    );
    // Once over: the slots go, and the publications tandem made; one it did not make stays.
    let status = sides.mirror_status(&proxy.control);
    assert_eq!(slot(&status, "old")["exists"], true, "{status}");
    // Where old's log ends: read before a look of our own, so no later than it, and past
    // what new applied of it (the marker tandem wrote lies in between).
    let lsn = |text: &str| {
        let (high, low) = text.split_once('/').unwrap_or(("", ""));
        u64::from_str_radix(high, 16).unwrap_or(0) << 32 | u64::from_str_radix(low, 16).unwrap_or(0)
    };
    let shown = lsn(slot(&status, "old")["current"].as_str().unwrap_or_default());
    let now = lsn(&text(&sides.old.url, "SELECT pg_current_wal_lsn()::text").await);
    let applied = lsn(slot(&status, "old")["applied_on_other_side"]
        .as_str()
        .unwrap_or_default());
    assert!(applied > 0 && applied <= shown && shown <= now, "{status}");
    drop(proxy);
    // Rolled back to old-only with no capture running: the slot keeps old's log all the same,
    // and a proxy in old-only measures it and alerts past the limit.
    let old_only = sides.proxy_with("old-only", &sides.new.url, &["--max-retained-wal", "1"]);
    stage_applied(&old_only.admin, "old-only").await;
    wait_until(Duration::from_secs(30), async || {
        let kept = super::metric(
            &old_only.admin,
            "tandem_capture_retained_wal_bytes{side=\"old\"}",
        )
        .await;
        let status = sides.mirror_status(&old_only.control);
        if kept > 1.0 && status["alerts"].to_string().contains("past its limit 1") {
            Ok(())
        } else {
            Err(format!(
                "old-only did not measure the slot kept ({kept} bytes): {status}"
            ))
        }
    })
    .await;
    drop(old_only);
    let publications = |url: String, name: String| async move {
        count(
            &url,
            &format!("SELECT count(*) FROM pg_publication WHERE pubname = '{name}'"),
        )
        .await
    };
    assert_eq!(
        publications(sides.old.url.clone(), sides.stem.clone()).await,
        1
    );
    let mirror_drop = |publication: &str| {
        tandem(&[
            "pg-mirror",
            "drop",
            "--old",
            &sides.old.url,
            "--new",
            &sides.new.url,
            "--capture-slot",
            &sides.stem,
            "--capture-publication",
            publication,
        ])
    };
    // With new down, old's slot and publication go all the same; what is on new is named as
    // left behind, and the command fails until it is dropped too.
    forwarder.stop().await;
    let half = tandem(&[
        "pg-mirror",
        "drop",
        "--old",
        &sides.old.url,
        "--new",
        &through,
        "--capture-slot",
        &sides.stem,
        "--capture-publication",
        &sides.stem,
    ]);
    let said = String::from_utf8_lossy(&half.stdout);
    assert_eq!(half.status.code(), Some(1), "{half:?}");
    assert!(
        said.contains(&format!("old: slot {}_old dropped", sides.stem))
            && said.contains("left behind: old: its progress on the new side")
            && said.contains("run tandem pg-mirror drop again"),
        "{half:?}"
    );
    assert_eq!(
        count(
            &sides.old.url,
            &format!(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}_old'",
                sides.stem
            )
        )
        .await,
        0
    );
    let dropped = mirror_drop(&sides.stem);
    assert!(dropped.status.success(), "{dropped:?}");
    assert!(
        String::from_utf8_lossy(&dropped.stdout).contains("its progress on the new side dropped"),
        "{dropped:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let control = format!("sqlite://{}", dir.path().join("none.db").display());
    let status = sides.mirror_status(&control);
    assert_eq!(slot(&status, "old")["exists"], false, "{status}");
    for url in [&sides.old.url, &sides.new.url] {
        assert_eq!(
            publications(url.clone(), sides.stem.clone()).await,
            0,
            "{dropped:?}"
        );
    }
    execute(
        &sides.old.url,
        "CREATE PUBLICATION users_own FOR TABLE done",
    )
    .await;
    let left = mirror_drop("users_own");
    assert!(left.status.success(), "{left:?}");
    assert!(
        String::from_utf8_lossy(&left.stdout)
            .contains("publication users_own was not created by tandem: left as it is"),
        "{left:?}"
    );
    assert_eq!(
        publications(sides.old.url.clone(), "users_own".to_owned()).await,
        1
    );
}

/// How many inserts each of the load's sessions has acknowledged after the stage change.
const START_INSERTS: usize = 150;

/// `old-only → dual-write` under 16 sessions inserting as fast as they can, with one
/// transaction open (having written) when the stage changes, which the new slot must wait
/// for: every insert acknowledged under `dual-write` reaches new (its transaction waited at
/// its start until the slot was consistent), the sides end identical without a backfill, and
/// the open transaction, which committed before the slot was consistent, is named as history
/// in an alert and a metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_only_to_dual_write_under_load_captures_every_acknowledged_write() {
    let sides = WalSides::new("tandem_walpx_start").await;
    let database = sides.old.url.rsplit('/').next().unwrap().to_owned();
    let proxy = sides.proxy("old-only");
    stage_applied(&proxy.admin, "old-only").await;
    ready(&proxy.admin).await;
    let through = format!("postgres://postgres@{}/{database}", proxy.address);
    // Open when the stage changes, having written: the slot cannot be consistent before it
    // ends.
    let mut open = PgConnection::connect(&through).await.unwrap();
    let open_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut open)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut open).await.unwrap();
    sqlx::query("INSERT INTO done VALUES (1)")
        .execute(&mut open)
        .await
        .unwrap();
    // The load's sessions, connected before the change; they start inserting once the proxy
    // routes by dual-write.
    let (go, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut sessions = Vec::new();
    for client in 0..16 {
        let mut conn = PgConnection::connect(&through).await.unwrap();
        let mut start = go.subscribe();
        sessions.push(tokio::spawn(async move {
            start.recv().await.unwrap();
            let mut acknowledged = Vec::with_capacity(START_INSERTS);
            for n in 0..START_INSERTS {
                let id: i32 =
                    sqlx::query_scalar("INSERT INTO orders (note) VALUES ($1) RETURNING id")
                        .bind(format!("client {client} insert {n}"))
                        .fetch_one(&mut conn)
                        .await
                        .unwrap_or_else(|err| panic!("client {client} insert {n}: {err}"));
                acknowledged.push(id);
            }
            conn.close().await.unwrap();
            acknowledged
        }));
    }
    set_stage("dual-write", &proxy.control);
    stage_applied(&proxy.admin, "dual-write").await;
    go.send(()).unwrap();
    // The slot is being made (it waits for the open transaction); then that one commits.
    let slot = format!("{}_old", sides.stem);
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(
        &sides.old.url,
        &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"),
    )
    .await
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "no slot being made on old; proxy log:\n{}",
            proxy.process.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::query("COMMIT").execute(&mut open).await.unwrap();
    open.close().await.unwrap();
    let mut acknowledged = Vec::new();
    for session in sessions {
        acknowledged.extend(session.await.unwrap());
    }
    assert_eq!(acknowledged.len(), 16 * START_INSERTS);
    sides.wait_for_done(&proxy, 2).await;
    let ids = acknowledged
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let arrived = count(
        &sides.new.url,
        &format!("SELECT count(*) FROM orders WHERE id IN ({ids})"),
    )
    .await;
    assert_eq!(
        usize::try_from(arrived).unwrap(),
        acknowledged.len(),
        "every insert acknowledged under dual-write is on new; proxy log:\n{}",
        proxy.process.log()
    );
    // Identical without a backfill (`done` holds the history row, below).
    let tables = [
        "pgbench_accounts",
        "pgbench_branches",
        "pgbench_tellers",
        "pgbench_history",
        "orders",
    ];
    if let Some(report) = compare_tables(&sides.old.url, &sides.new.url, &tables) {
        panic!("the sides differ:\n{report}");
    }
    // The transaction open at the change committed before the slot was consistent: history,
    // not on new, and named.
    assert_eq!(
        count(&sides.new.url, "SELECT count(*) FROM done WHERE id = 1").await,
        0
    );
    let status = sides.mirror_status(&proxy.control);
    let alerts = status["alerts"].to_string();
    assert!(
        alerts.contains("history") && alerts.contains(&format!("pid {open_pid} ")),
        "the open transaction is named as history: {status}"
    );
    assert_eq!(
        super::metric(&proxy.admin, "tandem_capture_history_transactions_total").await,
        1.0
    );
}

/// The slot still waiting for a transaction open since before `dual-write` past the switch
/// timeout: a transaction started meanwhile is refused (57P03, never run uncaptured), a
/// `capture_start` alert says why; once the open transaction ends the capture begins, the
/// alert is resolved and writes go on, captured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_not_consistent_within_the_switch_timeout_refuses_new_transactions_loudly() {
    let sides = WalSides::new("tandem_walpx_late").await;
    let database = sides.old.url.rsplit('/').next().unwrap().to_owned();
    let mut args = sides.args();
    args.extend(["--switch-timeout".to_owned(), "2s".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proxy = Proxy::start("old-only", &sides.old.url, &sides.new.url, &args);
    stage_applied(&proxy.admin, "old-only").await;
    ready(&proxy.admin).await;
    let through = format!("postgres://postgres@{}/{database}", proxy.address);
    let mut open = PgConnection::connect(&through).await.unwrap();
    sqlx::query("BEGIN").execute(&mut open).await.unwrap();
    sqlx::query("INSERT INTO done VALUES (1)")
        .execute(&mut open)
        .await
        .unwrap();
    let mut waiting = PgConnection::connect(&through).await.unwrap();
    set_stage("dual-write", &proxy.control);
    stage_applied(&proxy.admin, "dual-write").await;
    let refused = sqlx::query("INSERT INTO orders (note) VALUES ('refused')")
        .execute(&mut waiting)
        .await
        .unwrap_err();
    assert_eq!(
        refused
            .as_database_error()
            .and_then(|err| err.code())
            .as_deref(),
        Some("57P03"),
        "{refused}"
    );
    assert_eq!(
        count(
            &sides.old.url,
            "SELECT count(*) FROM orders WHERE note = 'refused'"
        )
        .await,
        0,
        "the refused transaction never ran"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = sides.mirror_status(&proxy.control);
        if status["alerts"]
            .to_string()
            .contains("is not consistent after")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no capture_start alert: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        super::metric(&proxy.admin, "tandem_capture_start_timeouts_total").await,
        1.0
    );
    sqlx::query("COMMIT").execute(&mut open).await.unwrap();
    open.close().await.unwrap();
    let mut after = PgConnection::connect(&through).await.unwrap();
    sqlx::query("INSERT INTO orders (note) VALUES ('after')")
        .execute(&mut after)
        .await
        .unwrap();
    after.close().await.unwrap();
    sides.wait_for_done(&proxy, 2).await;
    assert_eq!(
        count(
            &sides.new.url,
            "SELECT count(*) FROM orders WHERE note = 'after'"
        )
        .await,
        1
    );
    let status = sides.mirror_status(&proxy.control);
    assert!(
        !status["alerts"]
            .to_string()
            .contains("is not consistent after"),
        "the capture_start alert is resolved once the slot is consistent: {status}"
    );
}

/// `shadow → live` while new cannot apply what old committed (a lock on `orders` there holds
/// the capture's apply): the switch waits, and once it has outlasted `--switch-timeout` (less
/// its margin) the stage change is refused. The stage goes back to `shadow`, recorded as an
/// automatic rollback saying how far behind new was; a session that waited for the switch is
/// served by old, never refused; once new catches up the sides end identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_the_other_side_cannot_catch_up_within_its_bound_is_refused() {
    let sides = WalSides::new("tandem_walpx_refused").await;
    let database = sides.old.url.rsplit('/').next().unwrap().to_owned();
    let proxy = sides.proxy_with("shadow", &sides.new.url, &["--switch-timeout", "6s"]);
    stage_applied(&proxy.admin, "shadow").await;
    ready(&proxy.admin).await;
    let through = format!("postgres://postgres@{}/{database}", proxy.address);
    let mut holder = sides.hold_orders_on_new().await;
    let mut client = PgConnection::connect(&through).await.unwrap();
    sqlx::query("INSERT INTO orders (note) VALUES ('held on new')")
        .execute(&mut client)
        .await
        .unwrap();
    set_stage("live", &proxy.control);
    stage_applied(&proxy.admin, "live").await;
    log_says(
        &proxy,
        WAITS_FOR_NEW,
        "the switch never waited for new to catch up",
    )
    .await;
    // Sent while the switch waits: it waits too, and is served by old once the stage is back.
    let waited = tokio::spawn(async move {
        let inserted = sqlx::query("INSERT INTO orders (note) VALUES ('waited for the switch')")
            .execute(&mut client)
            .await;
        (inserted, client)
    });
    stage_applied(&proxy.admin, "shadow").await;
    let (inserted, client) = waited.await.unwrap();
    assert!(
        inserted.is_ok(),
        "a session waiting for the refused switch was not served: {inserted:?}\nproxy log:\n{}",
        proxy.process.log()
    );
    client.close().await.unwrap();
    assert_eq!(
        count(
            &sides.old.url,
            "SELECT count(*) FROM orders WHERE note = 'waited for the switch'"
        )
        .await,
        1
    );
    let shown = tandem(&["stage", "show", "--control-db", &proxy.control]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("tandem:pg-proxy") && shown.contains("bytes behind"),
        "the refusal is not in the stage history:\n{shown}"
    );
    assert_eq!(
        super::metric(&proxy.admin, "tandem_capture_switches_refused_total").await,
        1.0
    );
    // Old keeps its slot (its capture goes on), and new got none: the switch never finished.
    let status = sides.mirror_status(&proxy.control);
    assert_eq!(slot(&status, "old")["exists"], true, "{status}");
    assert_eq!(slot(&status, "new")["exists"], false, "{status}");
    // `tandem stage set` returned before the switch ran: the refusal is an alert (written
    // right after the stage went back).
    let refused = |status: &serde_json::Value| status["alerts"].to_string().contains("is refused");
    wait_until(Duration::from_secs(30), async || {
        let status = sides.mirror_status(&proxy.control);
        if refused(&status) {
            Ok(())
        } else {
            Err(format!("no capture_switch_refused alert: {status}"))
        }
    })
    .await;
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    holder.close().await.unwrap();
    sides.wait_for_done(&proxy, 3).await;
    sides.assert_identical();
    // Caught up, the switch goes through, and that resolves the alert.
    set_stage("live", &proxy.control);
    wait_until(Duration::from_secs(60), async || {
        let status = sides.mirror_status(&proxy.control);
        if !refused(&status) && slot(&status, "new")["exists"] == true {
            Ok(())
        } else {
            Err(format!(
                "the switch did not go through, or left its refusal open: {status}\n{}",
                proxy.process.log()
            ))
        }
    })
    .await;
}

/// `shadow → live` with new unable to apply (a lock on `orders` there), and tandem SIGKILLed
/// while its switch waits for new to catch up: a tandem started afterwards on the same control
/// store (as on another machine) finds the switch unfinished (old's slot still there),
/// finishes it once new can apply, and serves new; every write acknowledged on old before
/// the switch is on new, the sides end identical, and ids go on past old's. No manual step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tandem_killed_during_a_switch_is_finished_by_the_next_one() {
    let sides = WalSides::new("tandem_walpx_midswitch").await;
    let database = sides.old.url.rsplit('/').next().unwrap().to_owned();
    let proxy = sides.proxy("shadow");
    stage_applied(&proxy.admin, "shadow").await;
    ready(&proxy.admin).await;
    let through = |proxy: &Proxy| format!("postgres://postgres@{}/{database}", proxy.address);
    let mut holder = sides.hold_orders_on_new().await;
    let mut client = PgConnection::connect(&through(&proxy)).await.unwrap();
    for n in 0..20 {
        sqlx::query("INSERT INTO orders (note) VALUES ($1)")
            .bind(format!("before the switch {n}"))
            .execute(&mut client)
            .await
            .unwrap();
    }
    client.close().await.unwrap();
    set_stage("live", &proxy.control);
    stage_applied(&proxy.admin, "live").await;
    log_says(&proxy, WAITS_FOR_NEW, "the switch never waited for new").await;
    let killed = Command::new("kill")
        .args(["-KILL", &proxy.process.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let next = sides.restarted(proxy.control.clone(), tempfile::tempdir().unwrap());
    // New can apply again: the next tandem finishes the switch and serves new.
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    holder.close().await.unwrap();
    stage_applied(&next.admin, "live").await;
    ready(&next.admin).await;
    let mut after = PgConnection::connect(&through(&next)).await.unwrap();
    sqlx::query("INSERT INTO orders (note) VALUES ('after the switch')")
        .execute(&mut after)
        .await
        .unwrap();
    after.close().await.unwrap();
    let on = |url: String| async move {
        count(
            &url,
            "SELECT count(*) FROM orders WHERE note LIKE 'before the switch %'",
        )
        .await
    };
    assert_eq!(
        on(sides.new.url.clone()).await,
        20,
        "every write acknowledged on old is on new"
    );
    assert_eq!(
        count(
            &sides.new.url,
            "SELECT count(*) FROM orders WHERE note = 'after the switch' \
             AND id > (SELECT max(id) FROM orders WHERE note LIKE 'before the switch %')"
        )
        .await,
        1,
        "the write after the switch is served by new, with an id past old's"
    );
    sides.wait_for_done(&next, 4).await;
    sides.assert_identical();
    // Finished, not refused: the stage is still live and old's slot is gone.
    let shown = tandem(&["stage", "show", "--control-db", &next.control]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.starts_with("stage: live") && !shown.contains("tandem:pg-proxy"),
        "{shown}"
    );
    let status = sides.mirror_status(&next.control);
    assert_eq!(slot(&status, "old")["exists"], false, "{status}");
    drop(proxy);
}

/// The capture paused by DDL on old only, then tandem SIGKILLed and started again after the
/// same DDL on new: the alert the killed process raised is about the slot, not the process,
/// so the capture of the new one resolves it once it goes on, and `pg-mirror resume` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_alert_of_a_killed_tandem_is_resolved_by_the_next_one() {
    let sides = WalSides::new("tandem_walpx_pausekill").await;
    let proxy = sides.proxy("dual-write");
    stage_applied(&proxy.admin, "dual-write").await;
    ready(&proxy.admin).await;
    execute(&sides.old.url, "ALTER TABLE orders ADD COLUMN extra INT").await;
    execute(
        &sides.old.url,
        "INSERT INTO orders (note, extra) VALUES ('paused', 1)",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sides.mirror_status(&proxy.control)["alerts"]
        .to_string()
        .contains("is paused")
    {
        assert!(Instant::now() < deadline, "no capture_paused alert");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let killed = Command::new("kill")
        .args(["-KILL", &proxy.process.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    execute(&sides.new.url, "ALTER TABLE orders ADD COLUMN extra INT").await;
    let next = sides.restarted(proxy.control.clone(), tempfile::tempdir().unwrap());
    ready(&next.admin).await;
    let resumed = tandem(&[
        "pg-mirror",
        "resume",
        "--wait",
        "60s",
        "--control-db",
        &next.control,
    ]);
    assert!(
        resumed.status.success()
            && String::from_utf8_lossy(&resumed.stdout).contains("the capture goes on"),
        "{resumed:?}"
    );
    sides.wait_for_done(&next, 1).await;
    sides.assert_identical();
    drop(proxy);
}

/// Waits until `proxy`'s log says `text` (what it is doing now, `what` in the failure).
async fn log_says(proxy: &Proxy, text: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !proxy.process.log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "{what}; its log:\n{}",
            proxy.process.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a switch logs while it waits for new to apply what old committed.
const WAITS_FOR_NEW: &str = "waiting for the new side to apply the old side's changes";

/// A node-postgres session with a named prepared statement taking an enum (a user-defined
/// type, under another OID on each server) moves at `shadow → live` and runs that statement
/// by name on new: its parameter types were taken there by name, not by old's OIDs. A named
/// read taking the enum, prepared before the move, is compared on old after it with old's
/// types (the session's tracker keeps what it set up as old has it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_statement_taking_an_enum_moves_to_the_other_side() {
    let sides = WalSides::new("tandem_walpx_enum").await;
    // Other types first on new, so that the enum's OID differs there.
    execute(
        &sides.new.url,
        "CREATE TYPE pad_one AS ENUM ('x'); CREATE TYPE pad_two AS ENUM ('y')",
    )
    .await;
    for db in [&sides.old, &sides.new] {
        execute(
            &db.url,
            "CREATE TYPE mood AS ENUM ('happy', 'sad'); \
             CREATE TABLE tickets (id INT PRIMARY KEY, mood mood NOT NULL)",
        )
        .await;
    }
    let oid = "SELECT 'mood'::regtype::oid::text";
    assert_ne!(
        text(&sides.old.url, oid).await,
        text(&sides.new.url, oid).await
    );
    let proxy = sides.proxy("shadow");
    let answer = node_across_live(
        &sides.old.name,
        &proxy,
        "enum_move.js",
        "insert its first ticket",
    )
    .await;
    let port = |url: &str| -> u16 {
        let host = url.rsplit('@').next().unwrap().split('/').next().unwrap();
        host.rsplit(':').next().unwrap().parse().unwrap()
    };
    assert_eq!(
        answer,
        serde_json::json!({"first": port(&sides.old.url), "second": port(&sides.new.url)}),
        "served by old, then by new after the move; proxy log:\n{}",
        proxy.process.log()
    );
    assert!(super::metric(&proxy.admin, "tandem_pg_sessions_moved_total").await >= 1.0);
    // Compared in shadow (on new) and in live (on old), alike.
    let deadline = Instant::now() + Duration::from_secs(30);
    let compared = |outcome: &'static str| {
        super::metric(
            &proxy.admin,
            if outcome == "same" {
                "tandem_pg_compared_reads_total{outcome=\"same\"}"
            } else {
                "tandem_pg_compared_reads_total{outcome=\"different\"}"
            },
        )
    };
    while compared("same").await + compared("different").await < 2.0 {
        assert!(Instant::now() < deadline, "the reads were not compared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        compared("different").await,
        0.0,
        "proxy log:\n{}",
        proxy.process.log()
    );
    assert_eq!(
        text(
            &sides.new.url,
            "SELECT string_agg(id || ':' || mood, ',' ORDER BY id) FROM tickets"
        )
        .await,
        "1:happy,2:sad"
    );
}

/// A session whose prepared statement takes a user-defined type the other side lacks does not
/// move at `shadow → live`: it is ended with 57P01 (its pool reconnects to new), and the log
/// names the type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_statement_taking_a_type_the_other_side_lacks_keeps_the_session_from_moving() {
    let sides = WalSides::new("tandem_walpx_lacks").await;
    execute(&sides.old.url, "CREATE TYPE mood AS ENUM ('happy', 'sad')").await;
    let proxy = sides.proxy("shadow");
    let answer = node_across_live(
        &sides.old.name,
        &proxy,
        "enum_lacking.js",
        "run its statement",
    )
    .await;
    assert_eq!(answer["first"], "happy", "{answer}");
    assert_eq!(answer["error"]["code"], "57P01", "{answer}");
    let log = proxy.process.log();
    assert!(
        log.contains("public.mood, which that side lacks"),
        "the reason names the type:\n{log}"
    );
}

/// Runs the node-postgres client `script` (tests/pg/node) on `database` through `proxy` in
/// `shadow`: once it has done its first part (`first_part`, for the failure message) the stage
/// becomes `live`, then it goes on. Returns the JSON it printed; fails if it exited with an
/// error.
pub(crate) async fn node_across_live(
    database: &str,
    proxy: &Proxy,
    script: &str,
    first_part: &str,
) -> serde_json::Value {
    stage_applied(&proxy.admin, "shadow").await;
    ready(&proxy.admin).await;
    let files = tempfile::tempdir().unwrap();
    let (ready_file, go_file) = (files.path().join("ready"), files.path().join("go"));
    let client = format!("{}/tests/pg/node/{script}", env!("CARGO_MANIFEST_DIR"));
    let node = tokio::process::Command::new("node")
        .arg(client)
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", &proxy.port)
        .env("PGUSER", "postgres")
        .env("PGDATABASE", database)
        .env("READY_FILE", &ready_file)
        .env("GO_FILE", &go_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node (scripts/ensure-node-pg installs node-postgres)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready_file.exists() {
        assert!(Instant::now() < deadline, "node did not {first_part}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    set_stage("live", &proxy.control);
    stage_applied(&proxy.admin, "live").await;
    std::fs::write(&go_file, "").unwrap();
    let output = node.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}
