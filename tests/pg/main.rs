//! `tandem pg-proxy` with real clients (psql, sqlx) and real PostgreSQL servers: sessions go
//! to the side that is authoritative when they start; bad clients get protocol errors.

// A test fails by panicking; unwrapping is how these helpers say "this must hold".
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use sqlx::Connection;
use tandem_testkit::{ChildProcess, PostgresDb, ReservedPort};

mod backlog;
mod compared_reads;
mod copy_and_cancel;
mod drivers;
mod exact;
mod failed_transactions;
mod front_door;
mod generated;
mod live;
mod liveness;
mod noise;
mod outage;
mod poison;
mod pool;
mod rollback;
mod savepoints;
mod session_state;
mod shutdown;
mod stages;
mod tls;
mod two_phase;
mod wal_apply;
mod wal_capture;
mod wal_parallel;
mod wal_proxy;
mod wal_set;

async fn sides() -> (PostgresDb, PostgresDb) {
    let (old, new) = (
        PostgresDb::create("tandem_pg_old").await,
        PostgresDb::create("tandem_pg_new").await,
    );
    for (db, side) in [(&old, "old"), (&new, "new")] {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query("CREATE TABLE items (id INT PRIMARY KEY, side TEXT NOT NULL)")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("INSERT INTO items VALUES (1, $1)")
            .bind(side)
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    (old, new)
}

fn tandem(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .env("TANDEM_LOG", "warn")
        .output()
        .unwrap()
}

/// The arguments of a pg-proxy capturing from the write-ahead log, its slots and publication
/// named after `stem`.
fn wal_capture_args(stem: &str) -> [&str; 6] {
    [
        "--capture",
        "wal",
        "--capture-slot",
        stem,
        "--capture-publication",
        stem,
    ]
}

/// Sets the stage of the control store at `control` (past the promotion gate).
fn set_stage(stage: &str, control: &str) {
    let set = tandem(&[
        "stage",
        "set",
        stage,
        "--force",
        "--reason",
        "test",
        "--by",
        "tests",
        "--control-db",
        control,
    ]);
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
}

fn psql(port: &str, user: &str, sql: &str) -> std::process::Output {
    psql_with_password(port, user, "", sql)
}

fn psql_with_password(port: &str, user: &str, password: &str, sql: &str) -> std::process::Output {
    psql_command(port, user)
        .args(["-c", sql])
        .env("PGPASSWORD", password)
        .output()
        .unwrap()
}

/// psql on the proxy's `port` as `user`, unaligned and without a psqlrc; the caller adds what
/// it runs.
fn psql_command(port: &str, user: &str) -> Command {
    let mut psql = Command::new("psql");
    psql.args([
        "-h",
        "127.0.0.1",
        "-p",
        port,
        "-U",
        user,
        "-d",
        &served_database(port),
        "-X",
        "-At",
    ])
    .env("PGCONNECT_TIMEOUT", "10");
    psql
}

/// `tandem mirror failures` of `control` as JSON (every recorded copy with `all`).
fn mirror_failures(control: &str, all: bool) -> serde_json::Value {
    let mut args = vec![
        "mirror",
        "failures",
        "--format",
        "json",
        "--control-db",
        control,
    ];
    if all {
        args.push("--all");
    }
    let listed = tandem(&args);
    let mut listing: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    listing["failures"].take()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_go_to_the_authoritative_side() {
    let (old, new) = sides().await;
    let dir = tempfile::tempdir().unwrap();
    let control = format!("sqlite://{}", dir.path().join("control.db").display());
    let (_proxy, address, admin) = pg_proxy_with(&old.url, &new.url, &control, &[]);
    let port = address.rsplit(':').next().unwrap().to_owned();

    // psql, simple protocol: old-only answers from old.
    let answer = psql(&port, "postgres", "SELECT side FROM items");
    assert!(
        answer.status.success(),
        "{}",
        String::from_utf8_lossy(&answer.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&answer.stdout).trim(), "old");

    // After a change to new-only, new sessions are served by new: sqlx, extended protocol
    // with a prepared statement and a bound parameter.
    set_stage("new-only", &control);
    stages::stage_applied(&admin, "new-only").await;
    let mut conn = sqlx::PgConnection::connect(&through(&address))
        .await
        .unwrap();
    for _ in 0..3 {
        let side: String = sqlx::query_scalar("SELECT side FROM items WHERE id = $1")
            .bind(1)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(side, "new");
    }
    let mut transaction = conn.begin().await.unwrap();
    sqlx::query("INSERT INTO items VALUES (2, 'through tandem')")
        .execute(&mut *transaction)
        .await
        .unwrap();
    transaction.rollback().await.unwrap();
    conn.close().await.unwrap();
    let direct: i64 = {
        let mut conn = sqlx::PgConnection::connect(&new.url).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM items")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    assert_eq!(direct, 1, "the rolled-back insert left nothing");

    // Only the old URL's user may log in.
    let refused = psql(&port, "mallory", "SELECT 1");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr)
        .contains("tandem accepts the user of the old side's URL"));

    // A malformed startup packet gets a protocol error, and the proxy keeps serving.
    let mut raw = std::net::TcpStream::connect(&address).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(&[0, 0, 0, 12, 0x12, 0x34, 0, 0, 1, 2, 3, 4])
        .unwrap();
    let mut reply = Vec::new();
    let _ = raw.read_to_end(&mut reply);
    assert_eq!(reply.first(), Some(&b'E'));
    assert!(
        String::from_utf8_lossy(&reply).contains("08P01"),
        "{reply:?}"
    );
    let again = psql(&port, "postgres", "SELECT side FROM items");
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), "new");
}

/// The database each proxy these tests started serves (its old URL's), by port: clients ask
/// for it by name, as tandem refuses databases it does not serve.
static SERVED: std::sync::Mutex<std::collections::BTreeMap<String, String>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Notes that the proxy at `address` serves the database of the `old` URL.
fn serves(address: &str, old: &str) {
    let port = address.rsplit(':').next().unwrap().to_owned();
    let database = old
        .split('?')
        .next()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    SERVED.lock().unwrap().insert(port, database);
}

/// The database the proxy on `port` serves.
fn served_database(port: &str) -> String {
    SERVED
        .lock()
        .unwrap()
        .get(port)
        .cloned()
        .unwrap_or_else(|| panic!("no proxy of these tests listens on port {port}"))
}

/// A `postgres://` URL of the proxy at `address` (`127.0.0.1:PORT`) for the database it serves.
fn through(address: &str) -> String {
    let port = address.rsplit(':').next().unwrap();
    format!("postgres://postgres@{address}/{}", served_database(port))
}

/// Starts `tandem pg-proxy` with the given sides and control store; returns it and its address.
fn pg_proxy(old: &str, new: &str, control: &str) -> (ChildProcess, String) {
    let (process, address, _) = pg_proxy_with(old, new, control, &[]);
    (process, address)
}

/// Starts `tandem pg-proxy` with an admin listener and `extra` arguments; returns it, its
/// address and the admin listener's URL.
fn pg_proxy_with(
    old: &str,
    new: &str,
    control: &str,
    extra: &[&str],
) -> (ChildProcess, String, String) {
    let mut args = vec![
        "pg-proxy",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--old",
        old,
        "--new",
        new,
        "--control-db",
        control,
    ];
    args.extend_from_slice(extra);
    // The machine's server has no logical decoding: statement mirroring unless a test asks
    // for the write-ahead-log capture (on the clusters of scripts/ensure-logical-pg).
    if !extra.contains(&"--capture") {
        args.extend_from_slice(&["--capture", "statements"]);
    }
    let (process, line) = ChildProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_tandem")),
        &args,
        &[],
        "tandem pg-proxy listening on",
    );
    // "tandem pg-proxy listening on ADDR (admin http://ADDR)"
    let mut words = line.split_whitespace().skip(4);
    let address = words.next().unwrap().to_owned();
    serves(&address, old);
    let admin = words.nth(1).unwrap().trim_end_matches(')').to_owned();
    (process, address, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_checked_and_given_with_scram() {
    let (old, _new) = sides().await;
    let dir = tempfile::tempdir().unwrap();
    let control = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
    // The inner proxy checks its clients' password with SCRAM (its old URL has one; the
    // server itself trusts loopback); the outer proxy logs in to it with SCRAM.
    let with_password = old.url.replacen("postgres@", "postgres:s3cret@", 1);
    let (_inner, inner) = pg_proxy(&with_password, &with_password, &control("inner.db"));
    let database = old.url.rsplit('/').next().unwrap();
    let through_inner = format!("postgres://postgres:s3cret@{inner}/{database}");
    let (_outer, outer) = pg_proxy(&through_inner, &through_inner, &control("outer.db"));
    let port = outer.rsplit(':').next().unwrap();
    let login =
        |password: &str| psql_with_password(port, "postgres", password, "SELECT side FROM items");
    let answer = login("s3cret");
    assert!(
        answer.status.success(),
        "{}",
        String::from_utf8_lossy(&answer.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&answer.stdout).trim(), "old");
    let refused = login("guess");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// A pg-proxy in `stage` (set with `--force` where a promotion needs it) on a fresh control
/// store: the process, its address, the store's URL, and the directory holding it.
fn proxy_in(
    stage: &str,
    old: &str,
    new: &str,
) -> (ChildProcess, String, String, tempfile::TempDir) {
    let proxy = Proxy::start(stage, old, new, &[]);
    (proxy.process, proxy.address, proxy.control, proxy.dir)
}

/// A pg-proxy in a stage on a fresh SQLite control store, with an admin listener.
struct Proxy {
    process: ChildProcess,
    /// Where clients connect, `127.0.0.1:PORT`.
    address: String,
    /// Its port alone, for psql.
    port: String,
    /// The admin listener's URL.
    admin: String,
    /// The control store's URL.
    control: String,
    dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts one in `stage` (set with `--force`) with `extra` arguments.
    fn start(stage: &str, old: &str, new: &str, extra: &[&str]) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let control = format!("sqlite://{}", dir.path().join("control.db").display());
        set_stage(stage, &control);
        Proxy::on_store(old, new, control, dir, extra)
    }

    /// Starts one on the store `control` as it is (restarted, or another machine sharing the
    /// store), its files in `dir`, with `extra` arguments.
    fn on_store(
        old: &str,
        new: &str,
        control: String,
        dir: tempfile::TempDir,
        extra: &[&str],
    ) -> Proxy {
        let (process, address, admin) = pg_proxy_with(old, new, &control, extra);
        let port = address.rsplit(':').next().unwrap().to_owned();
        Proxy {
            process,
            address,
            port,
            admin,
            control,
            dir,
        }
    }
}

/// Runs `check` every 100 ms until it gives a value, and returns it; fails with what it said
/// last when it has not within `within`.
async fn wait_until<T>(within: Duration, mut check: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(why) => assert!(std::time::Instant::now() < deadline, "{why}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sum of the `/metrics` series whose name (and labels) start with `series`.
async fn metric(admin: &str, series: &str) -> f64 {
    let metrics = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .filter(|line| line.starts_with(series))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `tandem pg-replay` of the transactions kept in `control`, with `extra` arguments.
fn pg_replay(old: &str, new: &str, control: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "pg-replay",
        "--old",
        old,
        "--new",
        new,
        "--control-db",
        control,
    ];
    args.extend_from_slice(extra);
    tandem(&args)
}

/// A session with the proxy at `address` spoken by hand (protocol 3.0, as `postgres`), read
/// up to its first ReadyForQuery.
fn raw_session(address: &str) -> std::net::TcpStream {
    let mut raw = std::net::TcpStream::connect(address).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut startup = Vec::new();
    startup.extend_from_slice(&196_608i32.to_be_bytes());
    startup.extend_from_slice(b"user\0postgres\0database\0");
    startup.extend_from_slice(served_database(address.rsplit(':').next().unwrap()).as_bytes());
    startup.extend_from_slice(b"\0\0");
    let length = i32::try_from(startup.len() + 4).unwrap();
    raw.write_all(&length.to_be_bytes()).unwrap();
    raw.write_all(&startup).unwrap();
    read_until_ready(&mut raw);
    raw
}

/// Reads until a ReadyForQuery ('Z', length 5) and returns all that came, that included.
fn read_until_ready(raw: &mut std::net::TcpStream) -> Vec<u8> {
    let mut read = Vec::new();
    let mut byte = [0u8; 1];
    while !(read.len() >= 6 && read[read.len() - 6..read.len() - 1] == [b'Z', 0, 0, 0, 5]) {
        raw.read_exact(&mut byte).unwrap();
        read.push(byte[0]);
    }
    read
}

/// A typed message: tag, length, body.
fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut frame = vec![tag];
    frame.extend_from_slice(&i32::try_from(body.len() + 4).unwrap().to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

async fn count(url: &str, sql: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let value: i64 = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    value
}

/// Waits until `sql` counts `expected` on `url` (the other side is applied after the client
/// got its answer).
async fn eventually(url: &str, sql: &str, expected: i64) {
    wait_until(Duration::from_secs(30), async || {
        let found = count(url, sql).await;
        if found == expected {
            Ok(())
        } else {
            Err(format!("{sql}: {found}, expected {expected}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_write_mirrors_committed_transactions_in_commit_order() {
    let (old, new) = sides().await;
    for db in [&old, &new] {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        for ddl in [
            "CREATE TABLE orders (id BIGINT PRIMARY KEY, note TEXT NOT NULL, amount INT NOT NULL)",
            "CREATE TABLE events (id BIGSERIAL PRIMARY KEY, what TEXT NOT NULL)",
        ] {
            sqlx::query(ddl).execute(&mut conn).await.unwrap();
        }
        conn.close().await.unwrap();
    }
    let (_proxy, address, _control, _dir) = proxy_in("dual-write", &old.url, &new.url);
    let port = address.rsplit(':').next().unwrap().to_owned();

    // psql: an autocommit insert, a committed and a rolled-back transaction, a failed one,
    // and serial ids from one session.
    for sql in [
        "INSERT INTO orders VALUES (1, 'first', 1)",
        "BEGIN; INSERT INTO orders VALUES (2, 'second', 2); UPDATE orders SET amount = 10 WHERE id = 1; COMMIT",
        "BEGIN; INSERT INTO orders VALUES (3, 'rolled back', 3); ROLLBACK",
        "SELECT count(*) FROM orders",
        "INSERT INTO events (what) VALUES ('a'), ('b')",
        "INSERT INTO events (what) VALUES ('c')",
        // Rolled back on the other side too, so its sequence advances alike.
        "BEGIN; INSERT INTO events (what) VALUES ('rolled back'); ROLLBACK",
        "INSERT INTO events (what) VALUES ('d')",
    ] {
        let answer = psql(&port, "postgres", sql);
        assert!(answer.status.success(), "{sql}: {}", String::from_utf8_lossy(&answer.stderr));
    }
    assert!(!psql(
        &port,
        "postgres",
        "INSERT INTO orders VALUES (1, 'duplicate', 0)"
    )
    .status
    .success());

    // sqlx: prepared statements reused across transactions, from several sessions at once.
    let url = through(&address);
    let mut clients = Vec::new();
    for client in 0..4i64 {
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            for n in 0..10i64 {
                let id = 100 * (client + 1) + n;
                let mut transaction = conn.begin().await.unwrap();
                sqlx::query("INSERT INTO orders VALUES ($1, $2, $3)")
                    .bind(id)
                    .bind(format!("client {client} order {n}"))
                    .bind(i32::try_from(n).unwrap())
                    .execute(&mut *transaction)
                    .await
                    .unwrap();
                sqlx::query("UPDATE orders SET amount = amount + 1 WHERE id = $1")
                    .bind(id)
                    .execute(&mut *transaction)
                    .await
                    .unwrap();
                transaction.commit().await.unwrap();
            }
            conn.close().await.unwrap();
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let total = "SELECT count(*) FROM orders";
    assert_eq!(count(&old.url, total).await, 42);
    eventually(&new.url, total, 42).await;
    eventually(&new.url, "SELECT count(*) FROM events", 4).await;
    assert_eq!(count(&new.url, "SELECT max(id) FROM events").await, 5);
    assert_eq!(
        count(&new.url, "SELECT count(*) FROM orders WHERE id = 3").await,
        0
    );
    let compare = tandem(&[
        "compare",
        "--old",
        &old.url,
        "--new",
        &new.url,
        "--table",
        "orders",
        "--table",
        "events",
        "--recheck",
        "3",
        "--recheck-delay",
        "200ms",
        "--format",
        "json",
    ]);
    assert!(
        compare.status.success(),
        "old and new are identical, serial ids included: {}",
        String::from_utf8_lossy(&compare.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_other_side_never_fails_the_client_and_replay_catches_it_up() {
    let (old, new) = sides().await;
    let closed = ReservedPort::new();
    let down = format!("postgres://postgres@{}/nowhere", closed.address());
    let (_proxy, address, control, _dir) = proxy_in("dual-write", &old.url, &down);
    let port = address.rsplit(':').next().unwrap();
    for n in 2..5 {
        let insert = format!("INSERT INTO items VALUES ({n}, 'while new was down')");
        let answer = psql(port, "postgres", &insert);
        assert!(
            answer.status.success(),
            "{}",
            String::from_utf8_lossy(&answer.stderr)
        );
    }
    assert_eq!(count(&old.url, "SELECT count(*) FROM items").await, 4);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let kept = loop {
        let failures = mirror_failures(&control, true);
        let kept = failures.as_array().map_or(0, Vec::len);
        if kept == 3 || std::time::Instant::now() > deadline {
            break failures;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        kept.as_array().unwrap().len(),
        3,
        "each write transaction is recorded: {kept}"
    );
    assert_eq!(kept[0]["method"], "SQL");

    // Back up: replay applies them in commit order, and the sides agree on those rows.
    let replay = pg_replay(&old.url, &new.url, &control, &["--format", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&replay.stdout).unwrap();
    assert!(
        replay.status.success(),
        "{report} {}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert_eq!(report["replayed"], 3, "{report}");
    let compare = tandem(&[
        "compare", "--old", &old.url, "--new", &new.url, "--table", "items", "--where", "id >= 2",
    ]);
    assert!(
        compare.status.success(),
        "{}",
        String::from_utf8_lossy(&compare.stdout)
    );
    let again = pg_replay(&old.url, &new.url, &control, &[]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("replayed 0, failed 0, held 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_reads_are_compared_with_the_other_side() {
    let (old, new) = sides().await;
    let (_proxy, address, control, _dir) = proxy_in("shadow", &old.url, &new.url);
    let store = tandem_control::ControlStore::open(&control).await.unwrap();
    // The sides hold different values for row 1 ("old" / "new"): a read of it differs, a
    // read of something equal does not.
    let url = through(&address);
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let same: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(same, 1);
    let side: String = sqlx::query_scalar("SELECT side FROM items ORDER BY id")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(side, "old", "the client gets the authoritative answer");
    conn.close().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mismatches = loop {
        let found = store.response_mismatches(10).await.unwrap();
        if !found.is_empty() || std::time::Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(mismatches.len(), 1, "{mismatches:?}");
    assert_eq!(mismatches[0].path, "SELECT side FROM items ORDER BY id");
    assert!(
        mismatches[0].diff.contains("rows differ"),
        "{}",
        mismatches[0].diff
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pgbench_run_in_dual_write_leaves_the_sides_identical() {
    let (old, new) = (
        PostgresDb::create("tandem_pgbench_old").await,
        PostgresDb::create("tandem_pgbench_new").await,
    );
    for db in [&old, &new] {
        let init = Command::new("pgbench")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-i",
                "-s",
                "1",
                "-q",
                &db.name,
            ])
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "{}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    let (_proxy, address, _control, _dir) = proxy_in("dual-write", &old.url, &new.url);
    let port = address.rsplit(':').next().unwrap();
    for mode in ["simple", "prepared"] {
        let run = Command::new("pgbench")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                port,
                "-U",
                "postgres",
                "-c",
                "4",
                "-t",
                "100",
                "-n",
                "-M",
                mode,
                &served_database(port),
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(
            stdout.contains("number of failed transactions: 0"),
            "{stdout}"
        );
    }
    let history = "SELECT count(*) FROM pgbench_history";
    assert_eq!(count(&old.url, history).await, 800);
    eventually(&new.url, history, 800).await;
    for table in ["pgbench_accounts", "pgbench_branches", "pgbench_tellers"] {
        let compare = tandem(&[
            "compare",
            "--old",
            &old.url,
            "--new",
            &new.url,
            "--table",
            table,
            "--recheck",
            "3",
            "--recheck-delay",
            "200ms",
        ]);
        assert!(
            compare.status.success(),
            "{table}: {}",
            String::from_utf8_lossy(&compare.stdout)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_message_mid_session_gets_a_protocol_error() {
    let (old, new) = sides().await;
    let (_proxy, address, _control, _dir) = proxy_in("dual-write", &old.url, &new.url);
    let mut raw = raw_session(&address);
    // A Query whose length is smaller than its own length field.
    raw.write_all(&[b'Q', 0, 0, 0, 2]).unwrap();
    let mut reply = Vec::new();
    let _ = raw.read_to_end(&mut reply);
    assert_eq!(reply.first(), Some(&b'E'), "{reply:?}");
    assert!(String::from_utf8_lossy(&reply).contains("08P01"));
    let again = psql(
        address.rsplit(':').next().unwrap(),
        "postgres",
        "SELECT side FROM items",
    );
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        "old",
        "the proxy keeps serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_health_and_metrics() {
    let (old, new) = sides().await;
    let Proxy { port, admin, .. } = &Proxy::start("dual-write", &old.url, &new.url, &[]);
    let answer = psql(
        port,
        "postgres",
        "INSERT INTO items VALUES (9, 'through tandem')",
    );
    assert!(
        answer.status.success(),
        "{}",
        String::from_utf8_lossy(&answer.stderr)
    );
    let health = reqwest::get(format!("{admin}/healthz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(health.trim(), "ok");
    eventually(&new.url, "SELECT count(*) FROM items WHERE id = 9", 1).await;
    // Counted as the copy settles, a moment after new has the row.
    stages::metric_reaches(admin, "tandem_pg_mirror_lag_seconds_count", 1.0).await;
    let metrics = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tandem_pg_sessions_total{side=\"old\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tandem_pg_mirrored_transactions_total{outcome=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tandem_pg_mirror_lag_seconds_count 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_users_log_in_with_their_own_passwords() {
    let (old, new) = sides().await;
    let dir = tempfile::tempdir().unwrap();
    let control = format!("sqlite://{}", dir.path().join("control.db").display());
    let users = dir.path().join("users");
    std::fs::write(&users, "# who may log in\nalice:wonder1and\n").unwrap();
    let (_proxy, line) = ChildProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_tandem")),
        &[
            "pg-proxy",
            "--listen",
            "127.0.0.1:0",
            "--old",
            &old.url,
            "--new",
            &new.url,
            "--control-db",
            &control,
            "--users-file",
            users.to_str().unwrap(),
            "--capture",
            "statements",
        ],
        &[("TANDEM_PG_USERS", "bob:b0b-secret")],
        "tandem pg-proxy listening on",
    );
    let port = line.rsplit(':').next().unwrap().to_owned();
    serves(&port, &old.url);
    let bob = psql_with_password(&port, "bob", "b0b-secret", "SELECT side FROM items");
    assert_eq!(
        String::from_utf8_lossy(&bob.stdout).trim(),
        "old",
        "{}",
        String::from_utf8_lossy(&bob.stderr)
    );
    // Passwords never on the command line, where `ps` shows them.
    let flag = tandem(&["pg-proxy", "--user", "alice:wonder1and"]);
    assert!(!flag.status.success());
    let alice = psql_with_password(&port, "alice", "wonder1and", "SELECT side FROM items");
    assert!(
        alice.status.success(),
        "{}",
        String::from_utf8_lossy(&alice.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&alice.stdout).trim(), "old");
    let wrong = psql_with_password(&port, "alice", "guess", "SELECT 1");
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"));
    let stranger = psql(&port, "postgres", "SELECT 1");
    assert!(String::from_utf8_lossy(&stranger.stderr).contains("no tandem user \"postgres\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_functions_and_patterns_decide_what_is_mirrored() {
    let (old, new) = sides().await;
    for db in [&old, &new] {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        for ddl in [
            "CREATE TABLE bumps (n INT PRIMARY KEY)",
            "CREATE FUNCTION bump(n INT) RETURNS INT LANGUAGE plpgsql AS \
             $$ BEGIN INSERT INTO bumps VALUES (n); RETURN n; END $$",
        ] {
            sqlx::query(ddl).execute(&mut conn).await.unwrap();
        }
        conn.close().await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pg.toml");
    std::fs::write(
        &config,
        "[[classify.statements]]\npattern = '^insert into bumps\\b'\nclass = \"read\"\n\
         [classify.functions]\nbump = \"write\"\n",
    )
    .unwrap();
    let control = format!("sqlite://{}", dir.path().join("control.db").display());
    set_stage("dual-write", &control);
    let (_configured, address, _) = pg_proxy_with(
        &old.url,
        &new.url,
        &control,
        &["--config", config.to_str().unwrap()],
    );
    let configured = address.rsplit(':').next().unwrap().to_owned();
    let (_plain, address, _control, _plain_dir) = proxy_in("dual-write", &old.url, &new.url);
    let plain = address.rsplit(':').next().unwrap().to_owned();
    let run = |port: &str, sql: &str| {
        let answer = psql(port, "postgres", sql);
        assert!(
            answer.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&answer.stderr)
        );
    };
    let on_new = |n: i64| format!("SELECT count(*) FROM bumps WHERE n = {n}");

    // With the config: the function call is a write, the INSERT forced to read is not. Each
    // proxy applies its transactions on the other side in commit order, so once a later one
    // arrived an earlier one would have too.
    run(&configured, "SELECT bump(1)");
    eventually(&new.url, &on_new(1), 1).await;
    run(&configured, "INSERT INTO bumps VALUES (2)");
    run(&configured, "SELECT bump(3)");
    eventually(&new.url, &on_new(3), 1).await;
    assert_eq!(count(&new.url, &on_new(2)).await, 0, "forced to read");

    // Without it, the same call is a read and the same INSERT a write.
    run(&plain, "SELECT bump(4)");
    run(&plain, "INSERT INTO bumps VALUES (5)");
    eventually(&new.url, &on_new(5), 1).await;
    assert_eq!(count(&new.url, &on_new(4)).await, 0, "a read by default");
    assert_eq!(count(&old.url, "SELECT count(*) FROM bumps").await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_file_is_refused_by_key_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let control_file = dir.path().join("control.db");
    let control = format!("sqlite://{}", control_file.display());
    let server = "postgres://postgres@127.0.0.1:5432/postgres";
    for (text, named) in [
        ("lisen = \"127.0.0.1:1\"\n", "lisen"),
        (
            "[[classify.statements]]\npattern = '(unclosed'\nclass = \"read\"\n",
            "classify.statements[0].pattern",
        ),
        (
            "[classify.functions]\nbump = \"sometimes\"\n",
            "classify.functions.bump",
        ),
    ] {
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, text).unwrap();
        let output = tandem(&[
            "pg-proxy",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--old",
            server,
            "--new",
            server,
            "--control-db",
            &control,
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{text}: {stderr}");
        assert!(
            stderr.contains(named) && stderr.trim().lines().count() == 1,
            "{text}: {stderr}"
        );
        assert!(output.stdout.is_empty(), "{text}: it did not start");
        assert!(!control_file.exists(), "{text}: it did not open the store");
    }

    // The example file is valid; flags override what it sets.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/pgproxy.example.toml");
    let (_proxy, address, _) = pg_proxy_with(server, server, &control, &["--config", example]);
    assert!(
        address.starts_with("127.0.0.1:") && !address.ends_with(":6432"),
        "{address}"
    );
}
