//! Stage changes reach open sessions: `tandem pg-proxy` re-reads the stage at each transaction
//! boundary. A session opened in `old-only` is mirrored from its next request once the stage
//! mirrors; one served by the side that stops being authoritative goes on with the other side
//! between transactions (at once when idle, at the end of its transaction), its settings and
//! prepared statements brought over, unless it holds what cannot move (LISTEN, temporary
//! tables, …) or `--stage-grace` passed inside its transaction: then it is ended with
//! SQLSTATE 57P01, so pools reconnect; `dual-write` → `old-only` keeps sessions open and
//! stops mirroring them. The last test runs the whole cycle under pooled load
//! (node-postgres and pgbench) and checks every row.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::{Connection, Executor, PgConnection};
use tandem_testkit::{PostgresDb, PostgresRole, ReservedPort};

use super::wal_proxy::node_across_live;
use super::{count, eventually, metric, mirror_failures, set_stage, Proxy};

/// Both sides' schema: the log every client writes to, `served` being the database that
/// answered the client's `SELECT current_database()`.
const SCHEMA: &str = "CREATE TABLE log (id BIGINT PRIMARY KEY, client TEXT NOT NULL, \
                      served TEXT NOT NULL, at timestamptz NOT NULL)";

/// Two databases (old, new) with the same (empty) `log` table.
async fn log_sides() -> (PostgresDb, PostgresDb) {
    let (old, new) = (
        PostgresDb::create("tandem_stages_old").await,
        PostgresDb::create("tandem_stages_new").await,
    );
    for db in [&old, &new] {
        let mut conn = PgConnection::connect(&db.url).await.unwrap();
        conn.execute(SCHEMA).await.unwrap();
        conn.close().await.unwrap();
    }
    (old, new)
}

/// The machine's clock (the servers' too), in seconds since the epoch.
fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Waits until the sum of the `/metrics` series starting with `series` is `expected`, up to
/// 30 s (a loaded machine's stage poll and background tasks run late).
pub(crate) async fn metric_reaches(admin: &str, series: &str, expected: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = metric(admin, series).await;
        if (found - expected).abs() < f64::EPSILON {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series}: {found}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the proxy with the admin listener `admin` routes by `stage`.
pub(crate) async fn stage_applied(admin: &str, stage: &str) {
    metric_reaches(admin, &format!("tandem_stage{{stage=\"{stage}\"}}"), 1.0).await;
}

/// A session with the proxy at `address` asking for `database` (the old side's name: one the
/// proxy serves) with sqlx: the extended protocol, prepared statements cached per connection.
async fn session(address: &str, database: &str) -> PgConnection {
    PgConnection::connect(&format!("postgres://postgres@{address}/{database}"))
        .await
        .unwrap()
}

/// The insert of a `log` row: id, client, the database that served the session.
const INSERT: &str =
    "INSERT INTO log (id, client, served, at) VALUES ($1, $2, $3, clock_timestamp())";

/// As the real clients do: asks which database serves the session, then logs row `id`
/// with that name. The insert is parsed anew each time (an unnamed statement, as
/// node-postgres does); [`statements_prepared_in_old_only_are_mirrored_after_dual_write`] is
/// about named ones. Returns the name.
async fn log(conn: &mut PgConnection, id: i64, client: &str) -> Result<String, sqlx::Error> {
    let served: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut *conn)
        .await?;
    sqlx::query(INSERT)
        .persistent(false)
        .bind(id)
        .bind(client)
        .bind(&served)
        .execute(&mut *conn)
        .await?;
    Ok(served)
}

/// The server process behind a session (through the proxy).
async fn backend_pid(conn: &mut PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// The SQLSTATE and message of a query that failed on the server.
fn sqlstate(result: Result<impl std::fmt::Debug, sqlx::Error>) -> (String, String) {
    let err = result.expect_err("the session was to be ended");
    let database = err
        .as_database_error()
        .unwrap_or_else(|| panic!("not an error from the server: {err}"));
    (
        database.code().unwrap_or_default().into_owned(),
        database.message().to_owned(),
    )
}

/// Asserts that the next query on `conn` fails with SQLSTATE 57P01, naming `stage`.
async fn ended_by_stage(conn: &mut PgConnection, stage: &str, what: &str) {
    let (code, message) = sqlstate(sqlx::query("SELECT 1").execute(conn).await);
    assert_eq!(code, "57P01", "{what}: {message}");
    assert!(
        message.contains(&format!("stage changed to {stage}")) && message.contains("reconnect"),
        "{what}: {message}"
    );
}

fn on(id: i64) -> String {
    format!("SELECT count(*) FROM log WHERE id = {id}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_opened_in_old_only_is_mirrored_after_dual_write() {
    let (old, new) = log_sides().await;
    let proxy = Proxy::start("old-only", &old.url, &new.url, &[]);
    stage_applied(&proxy.admin, "old-only").await;
    let mut conn = session(&proxy.address, &old.name).await;
    let pid = backend_pid(&mut conn).await;
    assert_eq!(log(&mut conn, 1, "A").await.unwrap(), old.name);
    assert_eq!(count(&old.url, &on(1)).await, 1);

    set_stage("dual-write", &proxy.control);
    stage_applied(&proxy.admin, "dual-write").await;
    // The same connection (its SELECT prepared while it was relayed byte for byte).
    assert_eq!(log(&mut conn, 2, "B").await.unwrap(), old.name);
    assert_eq!(backend_pid(&mut conn).await, pid, "the same server session");
    eventually(&new.url, &on(2), 1).await;
    // The other side applies in commit order: B arrived, so A would have.
    assert_eq!(
        count(&new.url, &on(1)).await,
        0,
        "A was written in old-only"
    );
    assert_eq!(count(&old.url, "SELECT count(*) FROM log").await, 2);
    conn.close().await.unwrap();
    assert_eq!(metric(&proxy.admin, "tandem_pg_sessions_total").await, 1.0);
    assert_eq!(
        metric(&proxy.admin, "tandem_pg_sessions_ended_by_stage_total").await,
        0.0
    );
    assert!(mirror_failures(&proxy.control, false)
        .as_array()
        .is_some_and(Vec::is_empty));
}

/// A pool's connection prepares its statements once (sqlx, JDBC, pgx, asyncpg and
/// node-postgres's named queries do): one opened in `old-only` goes on using them after the
/// change to `dual-write`, and its writes must reach new like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_prepared_in_old_only_are_mirrored_after_dual_write() {
    let (old, new) = log_sides().await;
    let proxy = Proxy::start("old-only", &old.url, &new.url, &[]);
    stage_applied(&proxy.admin, "old-only").await;
    let mut conn = session(&proxy.address, &old.name).await;
    let insert = |id: i64| sqlx::query(INSERT).bind(id).bind("prepared").bind("old");
    // sqlx prepares it as a named statement and keeps it for the connection.
    insert(1).execute(&mut conn).await.unwrap();

    set_stage("dual-write", &proxy.control);
    stage_applied(&proxy.admin, "dual-write").await;
    // Bind and Execute of the statement prepared before the change.
    insert(2).execute(&mut conn).await.unwrap();
    let mut transaction = conn.begin().await.unwrap();
    insert(3).execute(&mut *transaction).await.unwrap();
    transaction.commit().await.unwrap();
    conn.close().await.unwrap();
    let arrived = "SELECT count(*) FROM log WHERE id IN (2, 3)";
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&new.url, arrived).await < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let warnings: Vec<String> = proxy
        .process
        .log()
        .lines()
        .filter(|line| line.contains("WARN") || line.contains("ERROR"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        count(&new.url, arrived).await,
        2,
        "the writes made with statements prepared in old-only reached new; the proxy \
         logged {warnings:#?}; tandem mirror failures: {}",
        mirror_failures(&proxy.control, false)
    );
    assert_eq!(count(&new.url, &on(1)).await, 0, "written in old-only");
    assert!(mirror_failures(&proxy.control, false)
        .as_array()
        .is_some_and(Vec::is_empty));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_change_of_side_sessions_move_with_their_settings_or_end_with_57p01() {
    let (old, new) = log_sides().await;
    let proxy = Proxy::start("dual-write", &old.url, &new.url, &[]);
    stage_applied(&proxy.admin, "dual-write").await;
    let (ended, moved) = (
        "tandem_pg_sessions_ended_by_stage_total",
        "tandem_pg_sessions_moved_total",
    );
    // An idle session with settings and a prepared statement (sqlx prepares and caches the
    // insert), one holding what cannot move (LISTEN), one that switched to another role (which
    // no snapshot carries: moved, it would go on as the superuser it logged in as), one inside
    // a transaction.
    let mut idle = session(&proxy.address, &old.name).await;
    idle.execute("SET application_name = 'moving'; SET TIME ZONE 'Asia/Tokyo'")
        .await
        .unwrap();
    assert_eq!(log(&mut idle, 1, "idle").await.unwrap(), old.name);
    let mut listening = session(&proxy.address, &old.name).await;
    listening.execute("LISTEN events").await.unwrap();
    let mut switched = session(&proxy.address, &old.name).await;
    switched.execute("SET ROLE pg_monitor").await.unwrap();
    let mut busy = session(&proxy.address, &old.name).await;
    let mut transaction = busy.begin().await.unwrap();
    log(&mut transaction, 10, "busy").await.unwrap();

    set_stage("live", &proxy.control);
    stage_applied(&proxy.admin, "live").await;
    // The idle session goes on with new at once, settings and prepared statement brought
    // over; the listening one and the one with another role are ended.
    metric_reaches(&proxy.admin, moved, 1.0).await;
    metric_reaches(&proxy.admin, ended, 2.0).await;
    assert_eq!(log(&mut idle, 2, "idle").await.unwrap(), new.name);
    let settings: (String, String) =
        sqlx::query_as("SELECT current_setting('application_name'), current_setting('TimeZone')")
            .fetch_one(&mut idle)
            .await
            .unwrap();
    assert_eq!(settings, ("moving".to_owned(), "Asia/Tokyo".to_owned()));
    ended_by_stage(&mut listening, "live", "the listening session").await;
    ended_by_stage(&mut switched, "live", "the session with another role").await;

    // The open transaction goes on (within the default 5 s grace) and commits on old; the
    // session then moves too, and the transaction reaches new.
    assert_eq!(log(&mut transaction, 11, "busy").await.unwrap(), old.name);
    transaction.commit().await.unwrap();
    metric_reaches(&proxy.admin, moved, 2.0).await;
    assert_eq!(log(&mut busy, 13, "busy").await.unwrap(), new.name);
    let busy_rows = "SELECT count(*) FROM log WHERE id IN (10, 11)";
    assert_eq!(count(&old.url, busy_rows).await, 2);
    eventually(&new.url, busy_rows, 2).await;
    // What the moved sessions wrote on new reaches old.
    eventually(&old.url, "SELECT count(*) FROM log WHERE id IN (2, 13)", 2).await;

    // A new session is served by new, and its writes reach old.
    let mut fresh = session(&proxy.address, &old.name).await;
    assert_eq!(log(&mut fresh, 12, "fresh").await.unwrap(), new.name);
    fresh.close().await.unwrap();
    eventually(&old.url, &on(12), 1).await;
    assert_eq!(
        metric(&proxy.admin, "tandem_pg_sessions_total{side=\"new\"}").await,
        1.0
    );

    // With --stage-grace 1s, a session idle inside its transaction is ended once the grace
    // has passed: its server connection is closed, so the transaction rolls back.
    let graced = Proxy::start("dual-write", &old.url, &new.url, &["--stage-grace", "1s"]);
    stage_applied(&graced.admin, "dual-write").await;
    let mut stuck = session(&graced.address, &old.name).await;
    let mut transaction = stuck.begin().await.unwrap();
    assert_eq!(log(&mut transaction, 20, "stuck").await.unwrap(), old.name);
    set_stage("live", &graced.control);
    stage_applied(&graced.admin, "live").await;
    metric_reaches(&graced.admin, ended, 1.0).await;
    let (code, message) = sqlstate(log(&mut transaction, 21, "stuck").await);
    assert_eq!(code, "57P01", "{message}");
    drop(transaction);
    // The server session on old is gone, its transaction with it.
    eventually(
        &old.url,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' \
             AND state LIKE 'idle in transaction%'",
            old.name
        ),
        0,
    )
    .await;
    // A later write through the new authoritative side reaches old; the ended transaction's
    // rows are on neither side.
    let mut fresh = session(&graced.address, &old.name).await;
    assert_eq!(log(&mut fresh, 22, "fresh").await.unwrap(), new.name);
    fresh.close().await.unwrap();
    eventually(&old.url, &on(22), 1).await;
    let stuck_rows = "SELECT count(*) FROM log WHERE id IN (20, 21)";
    assert_eq!(count(&old.url, stuck_rows).await, 0);
    assert_eq!(count(&new.url, stuck_rows).await, 0);
    for control in [&proxy.control, &graced.control] {
        assert!(mirror_failures(control, false)
            .as_array()
            .is_some_and(Vec::is_empty));
    }
}

/// A session moved at `shadow → live` goes on with the parameters its client was told at
/// login. New's database has another TimeZone and DateStyle, and new is reached as another
/// user, no superuser: node-postgres (which sets neither TimeZone nor DateStyle itself) reads
/// old's TimeZone, DateStyle and its application_name after the move, a `now()` it inserts as
/// text on new is rendered as old renders it, and it is told (ParameterStatus) what cannot be
/// set back: `is_superuser` and `session_authorization`, each counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_session_keeps_the_parameters_its_client_was_told() {
    let (old, new) = log_sides().await;
    // Dropped with what it was granted, also when an assertion below fails.
    let role = PostgresRole::create(&new, "tandem_params").await;
    let role_name = role.name.as_str();
    let stamps =
        "CREATE TABLE stamps (id INT PRIMARY KEY, at_text TEXT NOT NULL, at timestamptz NOT NULL)";
    for db in [&old, &new] {
        let mut conn = PgConnection::connect(&db.url).await.unwrap();
        conn.execute(stamps).await.unwrap();
        conn.close().await.unwrap();
    }
    let mut on_new = PgConnection::connect(&new.url).await.unwrap();
    on_new
        .execute(
            format!(
                "GRANT ALL ON log, stamps TO \"{role_name}\"; \
                 ALTER DATABASE \"{db}\" SET timezone = 'Asia/Tokyo'; \
                 ALTER DATABASE \"{db}\" SET datestyle = 'SQL, DMY'; \
                 CREATE SCHEMA elsewhere; \
                 CREATE TABLE elsewhere.stamps (LIKE public.stamps); \
                 GRANT USAGE ON SCHEMA elsewhere TO \"{role_name}\"; \
                 GRANT ALL ON elsewhere.stamps TO \"{role_name}\"; \
                 ALTER DATABASE \"{db}\" SET search_path = elsewhere, public; \
                 ALTER DATABASE \"{db}\" SET extra_float_digits = -3; \
                 ALTER DATABASE \"{db}\" SET bytea_output = 'escape'",
                db = new.name
            )
            .as_str(),
        )
        .await
        .unwrap();
    let new_as_role = new.url.replacen("postgres@", &format!("{role_name}@"), 1);
    let proxy = Proxy::start("shadow", &old.url, &new_as_role, &[]);
    let answer =
        node_across_live(&old.name, &proxy, "parameters_move.js", "read its settings").await;
    let proxy_log = proxy.process.log();
    assert!(
        answer.get("error").is_none(),
        "{answer}\nproxy log:\n{proxy_log}"
    );
    let (before, after, told) = (&answer["before"], &answer["after"], &answer["told"]);
    assert_eq!(before["database"], old.name.as_str(), "{answer}");
    assert_eq!(
        after["database"],
        new.name.as_str(),
        "moved to new: {answer}"
    );
    assert_ne!(before["timezone"], "Asia/Tokyo", "{answer}");
    assert_ne!(before["datestyle"], "SQL, DMY", "{answer}");
    // What the client was told at login, and still holds, is what the session goes on with.
    for (parameter, setting) in [("TimeZone", "timezone"), ("DateStyle", "datestyle")] {
        assert_eq!(answer["toldBefore"][parameter], before[setting], "{answer}");
        assert_eq!(told[parameter], before[setting], "{answer}");
    }
    assert_eq!(
        (
            &after["timezone"],
            &after["datestyle"],
            &after["application_name"]
        ),
        (
            &before["timezone"],
            &before["datestyle"],
            &before["application_name"]
        ),
        "{answer}\nproxy log:\n{proxy_log}"
    );
    assert_eq!(after["application_name"], "tandem_params", "{answer}");
    // Settings no server reports, which new's database sets otherwise, are kept as the session
    // had them on old: its unqualified insert went to public.stamps, not elsewhere.stamps.
    for setting in ["search_path", "extra_float_digits", "bytea_output"] {
        assert_eq!(
            after[setting], before[setting],
            "{setting}: {answer}\nproxy log:\n{proxy_log}"
        );
    }
    assert_ne!(before["search_path"], "elsewhere, public", "{answer}");
    let elsewhere: i64 = sqlx::query_scalar("SELECT count(*) FROM elsewhere.stamps")
        .fetch_one(&mut on_new)
        .await
        .unwrap();
    assert_eq!(elsewhere, 0, "{answer}");
    // now() written on new as old renders it.
    let rendered: String = {
        on_new
            .execute(
                format!(
                    "SET TimeZone = '{}'; SET DateStyle = '{}'",
                    before["timezone"].as_str().unwrap(),
                    before["datestyle"].as_str().unwrap()
                )
                .as_str(),
            )
            .await
            .unwrap();
        sqlx::query_scalar("SELECT at::text FROM stamps WHERE id = 1")
            .fetch_one(&mut on_new)
            .await
            .unwrap()
    };
    assert_eq!(answer["stamp"], rendered.as_str(), "{answer}");
    // What cannot be set back was told, and counted.
    assert_eq!(answer["toldBefore"]["is_superuser"], "on", "{answer}");
    assert_eq!(told["is_superuser"], "off", "{answer}");
    assert_eq!(told["session_authorization"], role_name, "{answer}");
    assert_eq!(
        metric(
            &proxy.admin,
            "tandem_pg_session_parameters_changed_total{parameter=\"is_superuser\"}"
        )
        .await,
        1.0
    );
    assert!(
        proxy_log.contains("parameter=is_superuser"),
        "the warning names it:\n{proxy_log}"
    );
    drop(proxy);
    on_new.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_write_to_old_only_stops_mirroring_in_open_sessions() {
    let (old, new) = log_sides().await;
    let proxy = Proxy::start("dual-write", &old.url, &new.url, &[]);
    stage_applied(&proxy.admin, "dual-write").await;
    let mut conn = session(&proxy.address, &old.name).await;
    let pid = backend_pid(&mut conn).await;
    log(&mut conn, 1, "mirrored").await.unwrap();
    eventually(&new.url, &on(1), 1).await;

    set_stage("old-only", &proxy.control);
    stage_applied(&proxy.admin, "old-only").await;
    // The session goes on, on old; its write is not mirrored.
    assert_eq!(log(&mut conn, 2, "unmirrored").await.unwrap(), old.name);
    let mut transaction = conn.begin().await.unwrap();
    log(&mut transaction, 3, "unmirrored").await.unwrap();
    transaction.commit().await.unwrap();
    assert_eq!(count(&old.url, "SELECT count(*) FROM log").await, 3);

    // Back in dual-write the same session is mirrored again: its next write arrives, and
    // (commit order) nothing written in old-only came before it.
    set_stage("dual-write", &proxy.control);
    stage_applied(&proxy.admin, "dual-write").await;
    log(&mut conn, 4, "mirrored").await.unwrap();
    eventually(&new.url, &on(4), 1).await;
    assert_eq!(
        count(&new.url, "SELECT count(*) FROM log WHERE id IN (2, 3)").await,
        0,
        "written in old-only"
    );
    assert_eq!(backend_pid(&mut conn).await, pid, "the same server session");
    conn.close().await.unwrap();
    assert_eq!(
        metric(&proxy.admin, "tandem_pg_sessions_ended_by_stage_total").await,
        0.0
    );
    assert_eq!(metric(&proxy.admin, "tandem_pg_sessions_total").await, 1.0);
    assert!(mirror_failures(&proxy.control, false)
        .as_array()
        .is_some_and(Vec::is_empty));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_side_becoming_authoritative_serves_no_session_before_it_has_every_acknowledged_write() {
    let (old, new) = log_sides().await;
    let proxy = Proxy::start("dual-write", &old.url, &new.url, &["--stage-grace", "1s"]);
    // The other side cannot apply anything while this lock is held.
    let mut locker = PgConnection::connect(&new.url).await.unwrap();
    locker.execute("BEGIN").await.unwrap();
    locker
        .execute("LOCK TABLE log IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut writer = session(&proxy.address, &old.name).await;
    assert_eq!(log(&mut writer, 1, "acknowledged").await.unwrap(), old.name);
    set_stage("live", &proxy.control);
    stage_applied(&proxy.admin, "live").await;
    ended_by_stage(&mut writer, "live", "the writer").await;
    // New is authoritative now, but does not have row 1 yet: no session is served by it.
    let refused = PgConnection::connect(&format!(
        "postgres://postgres@{}/{}",
        proxy.address, old.name
    ))
    .await
    .unwrap_err();
    let refused = refused.as_database_error().expect("a server error");
    assert_eq!(refused.code().as_deref(), Some("57P03"), "{refused}");
    assert!(refused.message().contains("still applying 1 acknowledged"));
    // Once row 1 is there, sessions are served by new and see it.
    locker.execute("COMMIT").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut reader = loop {
        match PgConnection::connect(&format!(
            "postgres://postgres@{}/{}",
            proxy.address, old.name
        ))
        .await
        {
            Ok(conn) => break conn,
            Err(err) => assert!(Instant::now() < deadline, "still refused: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (database, rows): (String, i64) =
        sqlx::query_as("SELECT current_database(), (SELECT count(*) FROM log WHERE id = 1)")
            .fetch_one(&mut reader)
            .await
            .unwrap();
    assert_eq!((database, rows), (new.name.clone(), 1));
    reader.close().await.unwrap();
}

/// Waits until the proxy with the admin listener `admin` answers `/readyz` with 200 (it has
/// reached both servers), up to 30 s.
pub(crate) async fn ready(admin: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = reqwest::get(format!("{admin}/readyz")).await.unwrap();
        if ready.status() == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "{:?}", ready.text().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_once_both_servers_were_reached() {
    let (old, new) = log_sides().await;
    let closed = ReservedPort::new();
    let down = format!("postgres://postgres@{}/nowhere", closed.address());
    let unreachable = Proxy::start("dual-write", &old.url, &down, &[]);
    let proxy = Proxy::start("dual-write", &old.url, &new.url, &[]);
    ready(&proxy.admin).await;
    let unready = reqwest::get(format!("{}/readyz", unreachable.admin))
        .await
        .unwrap();
    assert_eq!(unready.status(), 503);
    assert!(unready.text().await.unwrap().contains("new server"));
}

/// One period of the cycle: its stage, when `tandem stage set` was started and when the proxy
/// routed by it (the machine's clock).
#[derive(Debug)]
struct Period {
    stage: &'static str,
    requested: f64,
    changed: f64,
}

/// Which side's database serves sessions in `stage`.
fn authoritative<'a>(stage: &str, old: &'a str, new: &'a str) -> &'a str {
    if matches!(stage, "live" | "new-only") {
        new
    } else {
        old
    }
}

fn mirrors(stage: &str) -> bool {
    matches!(stage, "dual-write" | "shadow" | "live")
}

/// A logged row: which database served it and when it was inserted there.
#[derive(Debug, Clone, PartialEq)]
struct Logged {
    served: String,
    at: f64,
}

/// The `log` rows of `url` by (client, id).
async fn logged(url: &str) -> HashMap<(String, i64), Logged> {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let rows: Vec<(String, i64, String, f64)> =
        sqlx::query_as("SELECT client, id, served, extract(epoch FROM at)::float8 FROM log")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    conn.close().await.unwrap();
    rows.into_iter()
        .map(|(client, id, served, at)| ((client, id), Logged { served, at }))
        .collect()
}

/// pgbench's script: one transaction logging a random id with the database that served it.
const PGBENCH_SCRIPT: &str = "\\set id random(1000000000000, 9000000000000000000)
BEGIN;
SELECT current_database() AS served \\gset
INSERT INTO log (id, client, served, at) VALUES (:id, 'pgbench', :served, clock_timestamp());
COMMIT;
";

/// How long each node-postgres worker pauses after a commit, and pgbench's rate (transactions
/// per second, all its clients together): the load stays below what the other side is
/// applied at in a debug build on a small machine, so mirroring keeps up.
const NODE_PAUSE_MS: &str = "100";
const PGBENCH_RATE: &str = "40";

/// How long each stage is held.
const HOLD: f64 = 4.0;
/// How long after a change a row must be to be judged by the stage's rules.
const SETTLED: f64 = 1.0;

async fn sleep_until(at: f64) {
    let left = at - epoch();
    if left > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(left)).await;
    }
}

/// Runs pgbench (8 long-lived connections, prepared statements, 2 s) through the proxy on
/// `port`, asking for `database`; returns how many transactions it processed.
async fn pgbench(port: &str, database: &str, script: &std::path::Path, stage: &str) -> u64 {
    let mut command = Command::new("pgbench");
    command
        .args(["-h", "127.0.0.1", "-p", port, "-U", "postgres", "-n"])
        .args([
            "-c",
            "8",
            "-j",
            "2",
            "-T",
            "2",
            "-R",
            PGBENCH_RATE,
            "-M",
            "prepared",
            "-f",
        ])
        .arg(script)
        .arg(database)
        .env("PGCONNECT_TIMEOUT", "10");
    let what = format!("pgbench in {stage}");
    let output = super::exact::bounded(command, "", &what).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{what}: {stdout}\n{stderr}");
    assert!(
        stdout.contains("number of failed transactions: 0"),
        "{what}: {stdout}\n{stderr}"
    );
    let processed = stdout
        .lines()
        .find_map(|line| line.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{what}: {stdout}"));
    assert!(processed > 0, "{what}: {stdout}");
    processed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_sessions_follow_the_whole_stage_cycle_under_load() {
    let (old, new) = log_sides().await;
    let proxy = Proxy::start("old-only", &old.url, &new.url, &[]);
    stage_applied(&proxy.admin, "old-only").await;
    ready(&proxy.admin).await;
    let work = tempfile::tempdir().unwrap();
    let script = work.path().join("log.sql");
    std::fs::write(&script, PGBENCH_SCRIPT).unwrap();
    let stop = work.path().join("stop");

    let start = epoch();
    let node = tokio::process::Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/pg/node/stages.js"
        ))
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", &proxy.port)
        .env("PGUSER", "postgres")
        .env("PGDATABASE", &old.name)
        .env("STOP_FILE", &stop)
        .env("MAX_SECONDS", "180")
        .env("CLIENT", "node")
        .env("PAUSE_MS", NODE_PAUSE_MS)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node (scripts/ensure-node-pg installs node-postgres)");

    let cycle = [
        "old-only",
        "dual-write",
        "shadow",
        "live",
        "shadow",
        "dual-write",
        "old-only",
    ];
    let mut periods: Vec<Period> = Vec::new();
    let mut pgbench_transactions = 0;
    for stage in cycle {
        let (requested, changed) = if periods.is_empty() {
            (start, start)
        } else {
            let requested = epoch();
            set_stage(stage, &proxy.control);
            // Judged from when the proxy routes by it: its stage poll runs late under load.
            stage_applied(&proxy.admin, stage).await;
            (requested, epoch())
        };
        periods.push(Period {
            stage,
            requested,
            changed,
        });
        stage_applied(&proxy.admin, stage).await;
        sleep_until(changed + SETTLED).await;
        pgbench_transactions += pgbench(&proxy.port, &old.name, &script, stage).await;
        sleep_until(changed + HOLD).await;
    }
    let end = epoch();
    std::fs::write(&stop, b"").unwrap();
    let node = tokio::time::timeout(Duration::from_secs(30), node.wait_with_output())
        .await
        .expect("the node script stops once the stop file exists")
        .unwrap();
    assert!(
        node.status.success(),
        "the node script: {}\n{}",
        String::from_utf8_lossy(&node.stdout),
        String::from_utf8_lossy(&node.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&node.stdout).unwrap();
    let committed = report["committed"].as_array().unwrap();
    let errors = report["errors"].as_array().unwrap();
    let connections = report["connections"].as_u64().unwrap();
    eprintln!(
        "node: {} transactions committed, {connections} connections, errors {}; pgbench: {pgbench_transactions} transactions; periods {periods:?}",
        committed.len(),
        serde_json::Value::Array(errors.clone()),
    );

    // The period a row inserted at `at` belongs to: at least SETTLED after its change, and
    // before the next change was asked for.
    let period_of = |at: f64| {
        periods.iter().enumerate().find_map(|(n, period)| {
            let until = periods.get(n + 1).map_or(end, |next| next.requested);
            (at >= period.changed + SETTLED && at < until).then_some(n)
        })
    };

    // Mirrored rows reach the other side after the client's answer: the checks are repeated
    // until they hold, for a while.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (on_old, on_new, problems) = loop {
        let (on_old, on_new) = (logged(&old.url).await, logged(&new.url).await);
        let mut problems = Vec::new();
        for (key, row) in on_old.iter().chain(&on_new) {
            // Judged by the time it was inserted on the side that served it.
            let served_at = if row.served == old.name {
                on_old.get(key)
            } else if row.served == new.name {
                on_new.get(key)
            } else {
                problems.push(format!("{key:?} served by {}", row.served));
                continue;
            };
            let Some(served_at) = served_at else {
                problems.push(format!("{key:?}: not on {}, which served it", row.served));
                continue;
            };
            let Some(n) = period_of(served_at.at) else {
                continue;
            };
            let stage = periods[n].stage;
            let want = authoritative(stage, &old.name, &new.name);
            if row.served != want {
                problems.push(format!(
                    "(i) {key:?} at {} in {stage} (period {n}) served by {}, not {want}",
                    served_at.at, row.served
                ));
            }
            let (old_row, new_row) = (on_old.get(key), on_new.get(key));
            if mirrors(stage) {
                match (old_row, new_row) {
                    (Some(a), Some(b)) if a.served == b.served => {}
                    _ => problems.push(format!(
                        "(ii) {key:?} in {stage} (period {n}): old {old_row:?}, new {new_row:?}"
                    )),
                }
            } else if new_row.is_some() {
                problems.push(format!(
                    "(ii) {key:?} in {stage} (period {n}) reached new: {new_row:?}"
                ));
            }
        }
        // Nothing is only on new: what new served was applied on old.
        for key in on_new.keys().filter(|key| !on_old.contains_key(*key)) {
            problems.push(format!("{key:?} is on new only: {:?}", on_new[key]));
        }
        problems.sort();
        problems.dedup();
        if problems.is_empty() || Instant::now() > deadline {
            break (on_old, on_new, problems);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        problems.is_empty(),
        "{} problems, the first ones:\n- {}",
        problems.len(),
        problems
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n- ")
    );

    // Every period saw both clients' transactions, served by its authoritative side.
    for (n, period) in periods.iter().enumerate() {
        for client in ["node", "pgbench"] {
            let judged = on_old
                .iter()
                .filter(|((by, _), _)| by == client)
                .filter(|(key, row)| {
                    let served = if row.served == new.name {
                        on_new.get(*key)
                    } else {
                        Some(*row)
                    };
                    served.and_then(|served| period_of(served.at)) == Some(n)
                })
                .count();
            assert!(
                judged > 0,
                "{client} committed nothing in period {n} ({period:?})"
            );
        }
    }

    // (iii) Nothing kept aside.
    let pending = mirror_failures(&proxy.control, false);
    assert!(
        pending.as_array().is_some_and(Vec::is_empty),
        "tandem mirror failures: {pending}"
    );

    // (iv) node-postgres saw no error: its pooled sessions went on with the side each
    // change of side named (moved between transactions, settings and statements with them).
    let side_changes: Vec<&Period> = periods
        .windows(2)
        .filter(|pair| {
            authoritative(pair[0].stage, "old", "new") != authoritative(pair[1].stage, "old", "new")
        })
        .map(|pair| &pair[1])
        .collect();
    assert_eq!(side_changes.len(), 2);
    assert!(errors.is_empty(), "node-postgres got errors: {errors:?}");
    assert!(
        metric(&proxy.admin, "tandem_pg_sessions_moved_total").await > 0.0,
        "no session moved at the changes of side"
    );
    for change in &side_changes {
        let want = authoritative(change.stage, &old.name, &new.name);
        assert!(
            committed.iter().any(|done| done["served"] == want
                && done["at"].as_f64().unwrap() > change.changed + SETTLED),
            "node-postgres recovered after the change to {}",
            change.stage
        );
    }

    // (v) Pooled connections were reused.
    let transactions = u64::try_from(committed.len()).unwrap() + pgbench_transactions;
    assert!(
        connections <= 8 * 3 + 8,
        "node-postgres opened {connections}"
    );
    assert!(
        u64::try_from(committed.len()).unwrap() >= 10 * connections,
        "{} node transactions on {connections} connections",
        committed.len()
    );
    let sessions = metric(&proxy.admin, "tandem_pg_sessions_total").await;
    #[allow(clippy::cast_precision_loss)]
    let per_session = transactions as f64 / sessions;
    assert!(
        per_session >= 10.0,
        "{sessions} sessions for {transactions} transactions"
    );
}

/// A COMMIT still running when the grace ends (a deferred trigger makes it slow) is
/// cancelled and its answer read, so both sides end alike: without the cancel, old would
/// commit it after tandem had carried it to new as rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_running_when_the_grace_ends_is_cancelled_and_both_sides_end_alike() {
    let (old, new) = log_sides().await;
    let mut direct = PgConnection::connect(&old.url).await.unwrap();
    direct
        .execute(
            "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep(120); RETURN NULL; END $$; \
             CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON log DEFERRABLE INITIALLY DEFERRED \
             FOR EACH ROW EXECUTE FUNCTION slow_commit()",
        )
        .await
        .unwrap();
    direct.close().await.unwrap();
    let proxy = Proxy::start("dual-write", &old.url, &new.url, &["--stage-grace", "1s"]);
    let mut conn = session(&proxy.address, &old.name).await;
    conn.execute("BEGIN").await.unwrap();
    log(&mut conn, 1, "committing slowly").await.unwrap();
    let committing = tokio::spawn(async move {
        let committed = conn.execute("COMMIT").await;
        (committed.map(drop), conn)
    });
    sleep_until(epoch() + 0.3).await;
    set_stage("live", &proxy.control);
    let (committed, _conn) = committing.await.unwrap();
    let (code, message) = sqlstate(committed);
    assert_eq!(code, "57014", "the COMMIT is cancelled: {message}");
    // Idle once its COMMIT was answered, the session goes on with new.
    metric_reaches(&proxy.admin, "tandem_pg_sessions_moved_total", 1.0).await;
    assert_eq!(
        metric(&proxy.admin, "tandem_pg_transactions_in_doubt_total").await,
        0.0
    );
    // A COMMIT that was not cancelled would still be running on old (for two minutes).
    let running = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND state = 'active' \
         AND query ILIKE 'COMMIT%'",
        old.name
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&old.url, &running).await > 0 {
        assert!(Instant::now() < deadline, "the COMMIT still runs on old");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count(&old.url, &on(1)).await, 0, "rolled back on old");
    assert_eq!(count(&new.url, &on(1)).await, 0, "and nothing on new");
    assert!(mirror_failures(&proxy.control, false)
        .as_array()
        .is_some_and(Vec::is_empty));
}
