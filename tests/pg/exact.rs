//! What the tests of real application patterns through `dual-write` share (savepoints,
//! session state, liveness): two databases with the same schema and rows, psql and the Python
//! clients (`scripts/ensure-python-pg`) run with a bound on their time, and the final check
//! that the new side ended exactly like the old one, with nothing kept aside.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor};
use tandem_testkit::PostgresDb;
use tokio::io::AsyncWriteExt;

use super::{count, mirror_failures, psql_command, tandem};

/// How long a client may take before it is taken to hang (only a hang is detected with it).
pub(crate) const HANG: Duration = Duration::from_secs(30);

/// Both sides' schema and rows: `items` in `public` (holding `existing`, id 1) and in
/// `tenant_a`, and `markers`, where the row that ends each test goes.
const SCHEMA: &str = "
    CREATE TABLE items (id serial PRIMARY KEY, name TEXT UNIQUE, at timestamptz, day date);
    CREATE TABLE markers (name TEXT PRIMARY KEY);
    CREATE SCHEMA tenant_a;
    CREATE TABLE tenant_a.items (id serial PRIMARY KEY, name TEXT UNIQUE, at timestamptz, day date);
    INSERT INTO items (name) VALUES ('existing');
";

/// Two databases (old, new) with the same schema and the same rows.
pub(crate) async fn identical_sides() -> (PostgresDb, PostgresDb) {
    with_schema(
        PostgresDb::create("tandem_exact_old").await,
        PostgresDb::create("tandem_exact_new").await,
    )
    .await
}

/// Two databases with the same schema and rows, the new one with other defaults for
/// TimeZone, DateStyle and IntervalStyle than the server's (UTC, `ISO, MDY`, `postgres`).
pub(crate) async fn sides_with_other_defaults_on_new() -> (PostgresDb, PostgresDb) {
    let (old, new) = identical_sides().await;
    let mut on_new = sqlx::PgConnection::connect(&new.url).await.unwrap();
    on_new
        .execute(
            format!(
                "ALTER DATABASE \"{db}\" SET timezone = 'Asia/Tokyo'; \
                 ALTER DATABASE \"{db}\" SET datestyle = 'SQL, DMY'; \
                 ALTER DATABASE \"{db}\" SET intervalstyle = 'sql_standard'",
                db = new.name
            )
            .as_str(),
        )
        .await
        .unwrap();
    on_new.close().await.unwrap();
    (old, new)
}

/// Like [`identical_sides`], on two separate servers that allow prepared transactions (the
/// project's extra clusters, `scripts/ensure-logical-pg`).
pub(crate) async fn identical_sides_on_two_servers() -> (PostgresDb, PostgresDb) {
    with_schema(
        PostgresDb::create_logical("tandem_exact_old", false).await,
        PostgresDb::create_logical("tandem_exact_new", true).await,
    )
    .await
}

/// `old` and `new` with [`SCHEMA`] and its rows.
async fn with_schema(old: PostgresDb, new: PostgresDb) -> (PostgresDb, PostgresDb) {
    for db in [&old, &new] {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        conn.execute(sqlx::raw_sql(SCHEMA)).await.unwrap();
        conn.close().await.unwrap();
    }
    (old, new)
}

/// The rows of an `items` table (`public.items`, `tenant_a.items`) on `url`, in id order, as
/// `id|name|at (UTC, to the minute)|day`, empty where NULL.
pub(crate) async fn rows(url: &str, table: &str) -> Vec<String> {
    let sql = format!(
        "SELECT concat_ws('|', id, coalesce(name, ''), \
         coalesce(to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'), ''), \
         coalesce(to_char(day, 'YYYY-MM-DD'), '')) FROM {table} ORDER BY id"
    );
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let rows: Vec<String> = sqlx::query_scalar(&sql).fetch_all(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    rows
}

/// Runs `command` with `input` on its standard input and waits for it, up to [`HANG`]: a
/// client still running then is killed and the test fails, naming `what` hung.
pub(crate) async fn bounded(command: Command, input: &str, what: &str) -> Output {
    let mut command = tokio::process::Command::from(command);
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap();
    if let Some(mut stdin) = child.stdin.take() {
        // A client that exits without reading all of it is judged by its output.
        let _ = stdin.write_all(input.as_bytes()).await;
    }
    match tokio::time::timeout(HANG, child.wait_with_output()).await {
        Ok(output) => output.unwrap(),
        Err(_) => panic!("hang: {what} got no answer for {HANG:?} (killed)"),
    }
}

/// psql through the proxy on `port`, one Query per statement of `script` (read from its
/// standard input), stopping at the first error when `stop_on_error`.
pub(crate) async fn psql_script(port: &str, script: &str, stop_on_error: bool) -> Output {
    let mut psql = psql_command(port, "postgres");
    if stop_on_error {
        psql.args(["-v", "ON_ERROR_STOP=1"]);
    }
    bounded(psql, script, "psql").await
}

/// psql through the proxy on `port` with `sql` as one `-c` string: a single Query, however
/// many statements it holds.
pub(crate) async fn psql_query(port: &str, sql: &str) -> Output {
    let mut psql = psql_command(port, "postgres");
    psql.args(["-v", "ON_ERROR_STOP=1", "-c", sql]);
    bounded(psql, "", "psql").await
}

/// Asserts that a client ran to the end without an error.
pub(crate) fn succeeded(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The Python of `tests/pg/python/.venv` running `client.py CASE` against the proxy on `port`.
pub(crate) fn python(case: &str, port: &str) -> Command {
    let venv = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/pg/python/.venv/bin/python"
    );
    assert!(
        std::path::Path::new(venv).exists(),
        "{venv} is missing: run scripts/ensure-python-pg"
    );
    let mut python = Command::new(venv);
    python
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/pg/python/client.py"
        ))
        .arg(case)
        .env(
            "TANDEM_PG_DSN",
            format!(
                "postgres://postgres@127.0.0.1:{port}/{}",
                super::served_database(port)
            ),
        )
        .env("PGCONNECT_TIMEOUT", "10");
    python
}

/// Runs the Python client's `case` through the proxy on `port` (bounded by [`HANG`]) and
/// returns the JSON it printed.
pub(crate) async fn run_python(case: &str, port: &str) -> serde_json::Value {
    let output = bounded(python(case, port), "", case).await;
    succeeded(&output, case);
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("{case}: {err}: {}", String::from_utf8_lossy(&output.stdout)))
}

/// `tandem compare` of every table of `schema` (the URLs' search path set to it), as JSON:
/// `None` when identical, otherwise what it reported.
fn compare(old: &str, new: &str, schema: &str) -> Option<String> {
    let in_schema = |url: &str| format!("{url}?options=-csearch_path%3D{schema}");
    let (old, new) = (in_schema(old), in_schema(new));
    let output = tandem(&[
        "compare",
        "--old",
        &old,
        "--new",
        &new,
        "--format",
        "json",
        "--recheck",
        "1",
        "--recheck-delay",
        "100ms",
    ]);
    let report: Option<serde_json::Value> = serde_json::from_slice(&output.stdout).ok();
    let identical = report
        .as_ref()
        .is_some_and(|report| report["identical"] == true);
    (!(output.status.success() && identical)).then(|| {
        format!(
            "tandem compare of schema {schema} (exit {:?}): {}{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// The end of every dual-write test: old holds `expected` (each table's rows as [`rows`]
/// gives them: the test's premise); then a marker row is written through the proxy, last,
/// and once it reached new (or a transaction was kept aside, which holds back all later
/// ones), new must hold exactly the same rows, `tandem compare` must find both schemas
/// identical, and `tandem mirror failures` must list nothing pending. Every way new differs
/// is reported together.
pub(crate) async fn assert_carried_over(
    old: &PostgresDb,
    new: &PostgresDb,
    port: &str,
    control: &str,
    expected: &[(&str, &[&str])],
) {
    for (table, want) in expected {
        assert_eq!(
            rows(&old.url, table).await,
            *want,
            "the premise: what old holds in {table}"
        );
    }
    let marker = psql_query(port, "INSERT INTO public.markers VALUES ('done')").await;
    succeeded(&marker, "the marker row");
    // The other side applies transactions in commit order, after the client's answer: once
    // the marker is there, everything before it was applied (or kept aside).
    let marked = "SELECT count(*) FROM public.markers WHERE name = 'done'";
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut arrived, mut pending) = (false, serde_json::json!([]));
    while Instant::now() < deadline {
        arrived = count(&new.url, marked).await == 1;
        pending = mirror_failures(control, false);
        if arrived || pending.as_array().is_some_and(|kept| !kept.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut problems = Vec::new();
    if !arrived {
        problems.push("the marker row written last did not reach new".to_owned());
    }
    if pending.as_array().is_none_or(|kept| !kept.is_empty()) {
        problems.push(format!("tandem mirror failures lists pending: {pending}"));
    }
    for (table, want) in expected {
        let found = rows(&new.url, table).await;
        if found != *want {
            problems.push(format!("{table} on new: {found:?}, old has {want:?}"));
        }
    }
    for schema in ["public", "tenant_a"] {
        problems.extend(compare(&old.url, &new.url, schema));
    }
    assert!(
        problems.is_empty(),
        "new did not end like old:\n- {}",
        problems.join("\n- ")
    );
}

/// Awaits `future` up to [`HANG`]: one still pending then fails the test, naming `what` hung
/// (only a hang is detected with it, never a duration).
pub(crate) async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(HANG, future).await {
        Ok(output) => output,
        Err(_) => panic!("hang: {what} got no answer for {HANG:?}"),
    }
}

/// A sqlx session with the proxy at `address` (`127.0.0.1:PORT`), as `postgres`, on the
/// database it serves.
pub(crate) async fn session(address: &str) -> sqlx::PgConnection {
    let url = super::through(address);
    within(
        "connecting through the proxy",
        sqlx::PgConnection::connect(&url),
    )
    .await
    .unwrap()
}

/// The SQLSTATE of a failed sqlx call (the test fails when it did not fail with one).
pub(crate) fn sqlstate<T: std::fmt::Debug>(result: Result<T, sqlx::Error>) -> String {
    match result {
        Err(sqlx::Error::Database(err)) => err.code().unwrap_or_default().into_owned(),
        other => panic!("expected a database error, got {other:?}"),
    }
}

/// `last_value` and `is_called` of the sequence `name` on `url`.
pub(crate) async fn sequence(url: &str, name: &str) -> (i64, bool) {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let state: (i64, bool) = sqlx::query_as(&format!("SELECT last_value, is_called FROM {name}"))
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    state
}

/// The response mismatches recorded in `control`, newest first, as `fingerprint: diff`.
pub(crate) async fn mismatches(control: &str) -> Vec<String> {
    let store = tandem_control::ControlStore::open(control).await.unwrap();
    let found = store.response_mismatches(100).await.unwrap();
    store.close().await;
    found
        .into_iter()
        .map(|mismatch| format!("{}: {}", mismatch.path, mismatch.diff))
        .collect()
}

/// A `tandem` command's exit code, its standard output as JSON (`Null` when it printed
/// none) and its standard error.
pub(crate) fn tandem_json(args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let output = tandem(args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = if stdout.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or_else(|err| panic!("{args:?}: {err}: {stdout}"))
    };
    (
        output.status.code(),
        json,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
