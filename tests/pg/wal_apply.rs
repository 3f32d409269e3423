//! The capture applying what it reads (`tandem_pgproxy::wal::run_capture`), against real
//! PostgreSQL servers: the captured side is a `wal_level = logical` cluster
//! (`scripts/ensure-logical-pg`), the other side the machine's server. Workloads statement
//! mirroring cannot carry (concurrent read-modify-write with a trigger, random and time
//! defaults, `LIMIT` without `ORDER BY`) end identical; the capture killed at any moment,
//! the other side down, a table altered on one side only: nothing lost, nothing applied
//! twice.

use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};
use tandem_control::Side;
use tandem_pgproxy::wal::{
    run_capture, CaptureConfig, CaptureState, CaptureStatus, PublishedTables, Target,
};
use tandem_testkit::{unique_name, Forwarder, PostgresDb};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::tandem;
use super::wal_capture::{execute, settings, SlotGuard};

/// Both sides' schema: a counter whose trigger logs every value it takes, rows made of
/// random and time defaults, and a table without a key.
const SCHEMA: &str = "
    CREATE TABLE counter (id INT PRIMARY KEY, n BIGINT NOT NULL, last INT);
    CREATE TABLE counter_log (id BIGSERIAL PRIMARY KEY, n BIGINT NOT NULL, last INT,
                              at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp());
    CREATE FUNCTION log_counter() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN INSERT INTO counter_log (n, last) VALUES (NEW.n, NEW.last); RETURN NEW; END $$;
    CREATE TRIGGER counter_logged AFTER UPDATE ON counter
      FOR EACH ROW EXECUTE FUNCTION log_counter();
    CREATE TABLE things (id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
                         score FLOAT8 NOT NULL DEFAULT random(),
                         made TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
                         doc JSONB, note TEXT);
    CREATE TABLE events (at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(), what TEXT);
    ALTER TABLE events REPLICA IDENTITY FULL;
    CREATE TABLE done (id INT PRIMARY KEY);
    CREATE TABLE ids (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v INT NOT NULL);
    CREATE TABLE audited (id INT PRIMARY KEY, v TEXT);
    ALTER TABLE audited REPLICA IDENTITY FULL;
    INSERT INTO counter VALUES (1, 0, NULL);
";

const TABLES: [&str; 7] = [
    "counter",
    "counter_log",
    "things",
    "events",
    "done",
    "ids",
    "audited",
];

/// The captured side (on the logical cluster), the other side, and the slot between them
/// (first: fields drop in order, and a database with a slot cannot be dropped).
pub(crate) struct Pair {
    slot: SlotGuard,
    pub(crate) source: PostgresDb,
    pub(crate) target: PostgresDb,
    /// The tables captured (and compared), each with a key but for ones `REPLICA IDENTITY
    /// FULL`; among them `done` (`id INT PRIMARY KEY`), which [`Pair::wait_for_done`] writes.
    tables: &'static [&'static str],
}

impl Pair {
    async fn new(prefix: &str) -> Pair {
        Pair::with_schema(prefix, SCHEMA, &TABLES).await
    }

    /// Both sides created with `schema`, whose `tables` are captured.
    pub(crate) async fn with_schema(
        prefix: &str,
        schema: &str,
        tables: &'static [&'static str],
    ) -> Pair {
        let target = PostgresDb::create(prefix).await;
        Pair::onto(target, prefix, schema, tables).await
    }

    /// As [`Pair::with_schema`], the target on the second logical cluster: room for the
    /// replication origins of several apply sessions (the machine's server keeps 10 in use
    /// at once, shared by every test).
    pub(crate) async fn with_room_for_sessions(
        prefix: &str,
        schema: &str,
        tables: &'static [&'static str],
    ) -> Pair {
        let target = PostgresDb::create_logical(prefix, true).await;
        Pair::onto(target, prefix, schema, tables).await
    }

    async fn onto(
        target: PostgresDb,
        prefix: &str,
        schema: &str,
        tables: &'static [&'static str],
    ) -> Pair {
        let source = PostgresDb::create_logical(prefix, false).await;
        sweep_orphan_origins(&source.url, &target.url).await;
        for db in [&source, &target] {
            execute(&db.url, schema).await;
        }
        let slot = SlotGuard::new(&source, prefix).await;
        Pair {
            source,
            target,
            slot,
            tables,
        }
    }

    /// The capture's configuration applying to the target with `sessions` apply sessions.
    pub(crate) fn with_sessions(&self, sessions: usize) -> CaptureConfig {
        let mut config = self.config(&self.target.url);
        config.apply_sessions = sessions;
        config
    }

    /// The capture's configuration, applying to `target_url` (the target, or a forwarder in
    /// front of it).
    pub(crate) fn config(&self, target_url: &str) -> CaptureConfig {
        let mut source = settings(&self.source, &self.slot, self.tables);
        source.tables =
            PublishedTables::Only(self.tables.iter().map(|t| (*t).to_owned()).collect());
        CaptureConfig {
            source,
            target_side: Side::New,
            target_url: target_url.to_owned(),
            batch_transactions: 500,
            batch_changes: 5_000,
            apply_sessions: 1,
            retry: Duration::from_millis(200),
        }
    }

    /// The slot's name.
    pub(crate) fn slot_name(&self) -> &str {
        &self.slot.name
    }

    /// Waits until the row `done` = `id` written on the source reached the target.
    pub(crate) async fn wait_for_done(&self, id: i32, status: &watch::Receiver<CaptureStatus>) {
        execute(&self.source.url, &format!("INSERT INTO done VALUES ({id})")).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let arrived = scalar(
                &self.target.url,
                &format!("SELECT count(*)::text FROM done WHERE id = {id}"),
            )
            .await;
            if arrived == "1" {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the capture did not carry the done row within 120 s: {:?}",
                *status.borrow()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the source's writes so far reached the target, then checks every table
    /// is identical and that `sql` reads `expected` there.
    async fn assert_arrived(
        &self,
        status: &watch::Receiver<CaptureStatus>,
        sql: &str,
        expected: &str,
    ) {
        self.wait_for_done(1, status).await;
        self.assert_identical();
        assert_eq!(scalar(&self.target.url, sql).await, expected, "{sql}");
    }

    /// Every table identical by `tandem compare` (the keyless one as a multiset of whole
    /// rows: a row applied twice shows).
    pub(crate) fn assert_identical(&self) {
        if let Some(report) = compare_tables(&self.source.url, &self.target.url, self.tables) {
            panic!("the sides differ:\n{report}");
        }
    }
}

/// `tandem compare` of `tables` between `old` and `new`: `None` when identical, otherwise
/// what it reported.
pub(crate) fn compare_tables(old: &str, new: &str, tables: &[&str]) -> Option<String> {
    let mut args = vec![
        "compare",
        "--old",
        old,
        "--new",
        new,
        "--format",
        "json",
        "--recheck",
        "0",
    ];
    for table in tables {
        args.extend(["--table", table]);
    }
    let output = tandem(&args);
    (!output.status.success()).then(|| {
        format!(
            "tandem compare (exit {:?}): {}{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

impl Drop for Pair {
    fn drop(&mut self) {
        let (url, origin) = (
            self.target.url.clone(),
            format!("tandem_{}", self.slot.name),
        );
        tandem_testkit::run_apart(move || async move {
            tokio::time::timeout(
                Duration::from_secs(20),
                Target::drop_origin(Side::New, &url, &origin),
            )
            .await
            .ok()?
            .ok()
        });
    }
}

/// Drops the replication origins a test left on the server of `target` when it failed
/// with its capture running (the origin in use then, so its `Drop` could not): those whose
/// slot is gone from the server of `source`. A server keeps only `max_replication_slots`
/// origins, and the test clusters outlive every run.
async fn sweep_orphan_origins(source: &str, target: &str) {
    let mut conn = PgConnection::connect(source).await.unwrap();
    let slots: Vec<String> = sqlx::query_scalar("SELECT slot_name::text FROM pg_replication_slots")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let mut conn = PgConnection::connect(target).await.unwrap();
    let origins: Vec<String> = sqlx::query_scalar(
        "SELECT roname FROM pg_replication_origin WHERE roname LIKE 'tandem\\_tandem\\_%'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for origin in origins {
        let owned = slots.iter().any(|slot| {
            origin
                .strip_prefix("tandem_")
                .and_then(|rest| rest.strip_prefix(slot.as_str()))
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("_p"))
        });
        if !owned {
            // In use by a test still tearing down: the next sweep takes it.
            let _ = sqlx::query("SELECT pg_replication_origin_drop($1)")
                .bind(&origin)
                .execute(&mut conn)
                .await;
        }
    }
    conn.close().await.unwrap();
}

pub(crate) async fn scalar(url: &str, sql: &str) -> String {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let value: Option<String> = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    value.unwrap_or_default()
}

/// Starts the capture and waits until it streams (its slot exists: every later commit on
/// the source is carried); its status and the token that stops it.
pub(crate) async fn start_streaming(
    config: CaptureConfig,
) -> (
    tokio::task::JoinHandle<()>,
    watch::Receiver<CaptureStatus>,
    CancellationToken,
) {
    let (task, status, shutdown) = start(config);
    let mut watched = status.clone();
    tokio::time::timeout(
        Duration::from_secs(30),
        watched.wait_for(|now| now.state == CaptureState::Streaming),
    )
    .await
    .unwrap_or_else(|_| panic!("the capture did not stream: {:?}", *status.borrow()))
    .unwrap();
    (task, status, shutdown)
}

/// Starts the capture and kills it (the task aborted wherever it is: reading, applying,
/// between commit and confirm) once it streams (`None`: its slot then exists) or after
/// `pause`; its status then.
pub(crate) async fn abort_after(config: CaptureConfig, pause: Option<Duration>) -> CaptureStatus {
    let (task, status, _shutdown) = match pause {
        None => start_streaming(config).await,
        Some(pause) => {
            let started = start(config);
            tokio::time::sleep(pause).await;
            started
        }
    };
    task.abort();
    let _ = task.await;
    let killed = status.borrow().clone();
    killed
}

/// Starts the capture; its status and the token that stops it.
pub(crate) fn start(
    config: CaptureConfig,
) -> (
    tokio::task::JoinHandle<()>,
    watch::Receiver<CaptureStatus>,
    CancellationToken,
) {
    let (status, watched) = watch::channel(CaptureStatus::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_capture(config, status, shutdown.clone()));
    (task, watched, shutdown)
}

/// What statement mirroring cannot reproduce: `sessions` autocommit sessions each
/// incrementing the counter (its trigger logging every value) `rounds` times, with rows made
/// of random and time defaults, deleted by `LIMIT` without `ORDER BY`, and keyless events.
async fn workload(url: String, sessions: i32, rounds: i32) {
    let mut clients = Vec::new();
    for client in 0..sessions {
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let mut conn = PgConnection::connect(&url).await.unwrap();
            for round in 0..rounds {
                sqlx::query("UPDATE counter SET n = n + 1, last = $1 WHERE id = 1")
                    .bind(client)
                    .execute(&mut conn)
                    .await
                    .unwrap();
                match round % 10 {
                    0 => {
                        conn.execute(
                            "INSERT INTO things (doc, note) VALUES \
                             (jsonb_build_object('r', random()), repeat(md5(random()::text), 100)), \
                             (NULL, 'it''s ; a \"quote\" \\ and $$dollars$$')",
                        )
                        .await
                        .unwrap();
                    }
                    3 => {
                        conn.execute(
                            "UPDATE things SET score = random() WHERE id IN \
                             (SELECT id FROM things LIMIT 2)",
                        )
                        .await
                        .unwrap();
                    }
                    2 => {
                        conn.execute(
                            "INSERT INTO ids (v) VALUES (1), (2); \
                             UPDATE ids SET v = v + 1 WHERE id = (SELECT max(id) FROM ids)",
                        )
                        .await
                        .unwrap();
                    }
                    5 => {
                        conn.execute("DELETE FROM things WHERE id IN (SELECT id FROM things LIMIT 1)")
                            .await
                            .unwrap();
                    }
                    7 => {
                        let mut tx = conn.begin().await.unwrap();
                        tx.execute("INSERT INTO events (what) VALUES ('a'), ('a'), (md5(random()::text))")
                            .await
                            .unwrap();
                        tx.execute("DELETE FROM events WHERE ctid IN (SELECT ctid FROM events WHERE what = 'a' LIMIT 1)")
                            .await
                            .unwrap();
                        tx.commit().await.unwrap();
                    }
                    _ => {}
                }
            }
            conn.close().await.unwrap();
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_statements_cannot_carry_ends_identical() {
    let pair = Pair::new("tandem_apply_exact").await;
    let (task, status, shutdown) = start_streaming(pair.config(&pair.target.url)).await;
    workload(pair.source.url.clone(), 16, 60).await;
    pair.wait_for_done(1, &status).await;
    pair.assert_identical();
    let logged = scalar(&pair.target.url, "SELECT count(*)::text FROM counter_log").await;
    assert_eq!(
        logged,
        (16 * 60).to_string(),
        "the trigger fired once per update, on the source only"
    );
    let now = status.borrow().clone();
    assert_eq!(now.state, CaptureState::Streaming);
    assert_eq!(now.absent_rows, 0, "{now:?}");
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(status.borrow().state, CaptureState::Stopped);
}

/// The same workload through `tandem pg-proxy` in `dual-write` (the scenario as
/// clients meet it): 16 autocommit sessions on the counter with its trigger, random and time
/// defaults, `LIMIT` without `ORDER BY`; `tandem compare` finds every table identical, and the
/// trigger's log holds one row per update, as on old.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_statements_cannot_carry_ends_identical_through_the_proxy() {
    let pair = Pair::new("tandem_apply_proxied").await;
    let stem = unique_name("tandem_apply_px");
    let _slot = SlotGuard::named(&pair.source, &format!("{stem}_old"));
    let _origins = super::wal_proxy::CaptureOrigins::new(&pair.source.url, &pair.target.url, &stem);
    let args = super::wal_capture_args(&stem);
    let proxy = super::Proxy::start("dual-write", &pair.source.url, &pair.target.url, &args);
    super::stages::stage_applied(&proxy.admin, "dual-write").await;
    super::stages::ready(&proxy.admin).await;
    let database = pair.source.url.rsplit('/').next().unwrap();
    let through = format!("postgres://postgres@{}/{database}", proxy.address);
    workload(through.clone(), 16, 60).await;
    let mut conn = PgConnection::connect(&through).await.unwrap();
    conn.execute("INSERT INTO done VALUES (1)").await.unwrap();
    conn.close().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while scalar(&pair.target.url, "SELECT count(*)::text FROM done").await != "1" {
        assert!(
            std::time::Instant::now() < deadline,
            "the capture did not carry the done row within 120 s; proxy log:\n{}",
            proxy.process.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pair.assert_identical();
    assert_eq!(
        scalar(&pair.target.url, "SELECT count(*)::text FROM counter_log").await,
        (16 * 60).to_string(),
        "the trigger fired once per update, on old only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_three_times_under_load_nothing_lost_nothing_twice() {
    let pair = Pair::new("tandem_apply_killed").await;
    abort_after(pair.config(&pair.target.url), None).await;
    let load = tokio::spawn(workload(pair.source.url.clone(), 8, 150));
    let mut statuses = Vec::new();
    for pause in [700_u64, 400, 1_100] {
        statuses.push(
            abort_after(
                pair.config(&pair.target.url),
                Some(Duration::from_millis(pause)),
            )
            .await,
        );
    }
    load.await.unwrap();
    let (task, status, shutdown) = start(pair.config(&pair.target.url));
    pair.wait_for_done(1, &status).await;
    pair.assert_identical();
    assert!(
        statuses.iter().any(|killed| killed.transactions > 0),
        "the killed captures applied nothing before dying: {statuses:?}"
    );
    shutdown.cancel();
    task.await.unwrap();
}

/// One transaction of `rows` inserts into the keyless table (a row applied twice shows) and
/// the keyed one, then an update and a delete of part of them: several batches' worth of
/// changes.
async fn large_transaction(url: &str, rows: i64) {
    execute(
        url,
        &format!(
            "BEGIN;
             INSERT INTO events (what) SELECT 'large ' || g FROM generate_series(1, {rows}) g;
             INSERT INTO audited SELECT g, 'v' || g FROM generate_series(1, {rows}) g;
             UPDATE audited SET v = v || ' updated' WHERE id % 2 = 0;
             DELETE FROM audited WHERE id % 3 = 0;
             COMMIT;"
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_larger_than_a_batch_is_applied_in_parts_and_commits_whole() {
    let pair = Pair::new("tandem_apply_large").await;
    let mut config = pair.config(&pair.target.url);
    config.batch_changes = 500;
    let (task, status, shutdown) = start_streaming(config).await;
    // Small transactions around it, from other sessions, keep their place in commit order.
    let load = tokio::spawn(workload(pair.source.url.clone(), 4, 40));
    large_transaction(&pair.source.url, 3_000).await;
    load.await.unwrap();
    pair.wait_for_done(1, &status).await;
    pair.assert_identical();
    let now = status.borrow().clone();
    // 3,000 + 3,000 inserts, 1,500 updates, 1,000 deletes, in parts of 500.
    assert!(
        now.parts >= 16,
        "the large transaction was not applied in parts: {now:?}"
    );
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capture_killed_inside_a_large_transaction_applies_it_once_after_restart() {
    let pair = Pair::new("tandem_apply_large_killed").await;
    killed_inside_a_large_transaction(&pair, 1).await;
}

/// As above with two apply sessions beside the main one, which applies the parts: workers
/// finished transactions before it more than a second earlier, so the main session has
/// progress to record while the parts' transaction is open, and must not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capture_with_workers_killed_inside_a_large_transaction_applies_it_once() {
    let pair = Pair::with_room_for_sessions("tandem_apply_large_par", SCHEMA, &TABLES).await;
    killed_inside_a_large_transaction(&pair, 2).await;
}

/// The capture (with `sessions` apply sessions) killed while the parts of a large
/// transaction are applied: nothing of it is on the other side then, all of it once after
/// the restart.
async fn killed_inside_a_large_transaction(pair: &Pair, sessions: usize) {
    let mut config = pair.with_sessions(sessions);
    config.batch_changes = 200;
    let (task, status, _shutdown) = start_streaming(config.clone()).await;
    // Single-row transactions a worker applies, then time for the main session's record.
    for id in 100..109 {
        execute(&pair.source.url, &format!("INSERT INTO done VALUES ({id})")).await;
    }
    pair.wait_for_done(109, &status).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    large_transaction(&pair.source.url, 20_000).await;
    let mut watched = status.clone();
    tokio::time::timeout(
        Duration::from_secs(60),
        watched.wait_for(|now| now.parts >= 3),
    )
    .await
    .unwrap_or_else(|_| panic!("no part applied: {:?}", *status.borrow()))
    .unwrap();
    // Killed with the other side's transaction open: none of it is there.
    task.abort();
    let _ = task.await;
    let killed = status.borrow().clone();
    assert_eq!(
        killed.transactions, 10,
        "it committed the large transaction before the kill: {killed:?}"
    );
    assert_eq!(
        scalar(&pair.target.url, "SELECT count(*)::text FROM events").await,
        "0",
        "rows of an uncommitted transaction on the other side"
    );
    let (task, status, shutdown) = start(config);
    pair.wait_for_done(1, &status).await;
    pair.assert_identical();
    assert_eq!(
        scalar(&pair.target.url, "SELECT count(*)::text FROM events").await,
        "20000"
    );
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_other_side_down_catches_up() {
    let pair = Pair::new("tandem_apply_down").await;
    let mut forwarder = Forwarder::new("127.0.0.1:5432").await;
    let through = pair.target.url.replacen(
        "127.0.0.1:5432",
        &format!("127.0.0.1:{}", forwarder.port()),
        1,
    );
    let (task, status, shutdown) = start_streaming(pair.config(&through)).await;
    let load = tokio::spawn(workload(pair.source.url.clone(), 8, 100));
    tokio::time::sleep(Duration::from_millis(300)).await;
    forwarder.stop().await;
    // With the other side down the capture retries (however long noticing it takes).
    let mut watched = status.clone();
    tokio::time::timeout(
        Duration::from_secs(60),
        watched.wait_for(|now| matches!(now.state, CaptureState::Retrying { .. })),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "not retrying with the other side down: {:?}",
            *status.borrow()
        )
    })
    .unwrap();
    forwarder.start().await;
    load.await.unwrap();
    pair.wait_for_done(1, &status).await;
    pair.assert_identical();
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_altered_on_one_side_pauses_until_the_other_matches() {
    let pair = Pair::new("tandem_apply_ddl").await;
    let (task, status, shutdown) = start_streaming(pair.config(&pair.target.url)).await;
    pair.wait_for_done(1, &status).await;
    execute(
        &pair.source.url,
        "ALTER TABLE things ADD COLUMN extra INT; \
         INSERT INTO things (note, extra) VALUES ('after', 7)",
    )
    .await;
    let mut watched = status.clone();
    let paused = tokio::time::timeout(
        Duration::from_secs(30),
        watched.wait_for(|now| matches!(now.state, CaptureState::Paused { .. })),
    )
    .await
    .expect("the capture did not pause")
    .unwrap()
    .clone();
    let CaptureState::Paused { reason } = paused.state else {
        unreachable!()
    };
    assert!(
        reason.contains("public.things") && reason.contains("extra"),
        "the pause names the table and the column: {reason}"
    );
    // Writes on the source go on meanwhile; the slot keeps them.
    execute(&pair.source.url, "UPDATE counter SET n = n + 1").await;
    execute(&pair.target.url, "ALTER TABLE things ADD COLUMN extra INT").await;
    pair.wait_for_done(2, &status).await;
    pair.assert_identical();
    assert_eq!(
        scalar(
            &pair.target.url,
            "SELECT extra::text FROM things WHERE note = 'after'"
        )
        .await,
        "7"
    );
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn truncate_is_carried_and_a_second_capture_waits_as_standby() {
    let pair = Pair::new("tandem_apply_truncate").await;
    let (first, status, first_shutdown) = start_streaming(pair.config(&pair.target.url)).await;
    execute(
        &pair.source.url,
        "INSERT INTO events (what) VALUES ('x'), ('y'); INSERT INTO things (note) VALUES ('t')",
    )
    .await;
    pair.wait_for_done(1, &status).await;
    let (second, standby, second_shutdown) = start(pair.config(&pair.target.url));
    let mut watched = standby.clone();
    tokio::time::timeout(
        Duration::from_secs(30),
        watched.wait_for(|now| now.state == CaptureState::Standby),
    )
    .await
    .expect("the second capture did not wait as a standby")
    .unwrap();
    first_shutdown.cancel();
    first.await.unwrap();
    execute(&pair.source.url, "TRUNCATE events, things").await;
    pair.wait_for_done(2, &standby).await;
    pair.assert_identical();
    assert_eq!(
        scalar(&pair.target.url, "SELECT count(*)::text FROM events").await,
        "0"
    );
    second_shutdown.cancel();
    second.await.unwrap();
}

/// A table with a primary key under `REPLICA IDENTITY FULL` (kept for another consumer, say)
/// whose row the other side already holds (a backfill copied it): the captured insert
/// overwrites it by the key instead of failing on it forever, and later changes find it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_identity_table_with_a_key_is_applied_by_its_key() {
    let pair = Pair::new("tandem_apply_full_key").await;
    execute(
        &pair.target.url,
        "INSERT INTO audited VALUES (1, 'backfilled')",
    )
    .await;
    let (task, status, shutdown) = start_streaming(pair.config(&pair.target.url)).await;
    execute(
        &pair.source.url,
        "INSERT INTO audited VALUES (1, 'a'), (2, 'x'); \
         UPDATE audited SET v = 'b' WHERE id = 1; DELETE FROM audited WHERE id = 2; \
         INSERT INTO audited VALUES (3, 'c'); UPDATE audited SET id = 4 WHERE id = 3",
    )
    .await;
    pair.assert_arrived(
        &status,
        "SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM audited",
        "1=b,4=c",
    )
    .await;
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_capture_lets_the_server_free_log_it_does_not_need() {
    let pair = Pair::new("tandem_apply_idle").await;
    let (task, status, shutdown) = start_streaming(pair.config(&pair.target.url)).await;
    pair.wait_for_done(1, &status).await;
    // Writes elsewhere on the same server: nothing for this slot, yet log it would keep.
    let elsewhere = PostgresDb::create_logical("tandem_apply_idle_other", false).await;
    execute(
        &elsewhere.url,
        "CREATE TABLE filler AS SELECT g, md5(g::text) FROM generate_series(1, 20000) g",
    )
    .await;
    let written = scalar(&elsewhere.url, "SELECT pg_current_wal_lsn()::text").await;
    let confirmed = format!(
        "SELECT (confirmed_flush_lsn >= '{written}'::pg_lsn)::text FROM pg_replication_slots \
         WHERE slot_name = '{}'",
        pair.slot.name
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while scalar(&pair.source.url, &confirmed).await != "true" {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle capture never confirmed past {written}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing was skipped: what comes next still arrives.
    pair.wait_for_done(2, &status).await;
    pair.assert_identical();
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_of_100000_rows_is_applied_whole() {
    let pair = Pair::new("tandem_apply_large").await;
    let (task, status, shutdown) = start_streaming(pair.config(&pair.target.url)).await;
    // One transaction whose answers on the other side (one per row) far exceed the sockets'
    // buffers: they are read while the rows are still being sent.
    execute(
        &pair.source.url,
        "INSERT INTO ids (v) SELECT g FROM generate_series(1, 100000) g; \
         UPDATE ids SET v = v * 2",
    )
    .await;
    pair.assert_arrived(
        &status,
        "SELECT count(*)::text || ' ' || sum(v)::text FROM ids",
        "100000 10000100000",
    )
    .await;
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn values_arrive_exactly_whatever_the_servers_date_settings() {
    let pair = Pair::new("tandem_apply_styles").await;
    // The captured database reads and writes dates day first and intervals in SQL form; the
    // capture must not carry values in those forms to a server that reads them otherwise.
    execute(
        &pair.source.url,
        &format!(
            "ALTER DATABASE {} SET DateStyle = 'SQL, DMY'; \
             ALTER DATABASE {} SET IntervalStyle = 'sql_standard'",
            pair.source.name, pair.source.name
        ),
    )
    .await;
    for db in [&pair.source, &pair.target] {
        execute(
            &db.url,
            "CREATE TABLE styled (id INT PRIMARY KEY, day DATE, at TIMESTAMPTZ, \
             ratio FLOAT8, span INTERVAL)",
        )
        .await;
    }
    let mut config = pair.config(&pair.target.url);
    let mut tables: Vec<String> = TABLES.iter().map(|t| (*t).to_owned()).collect();
    tables.push("styled".to_owned());
    config.source.tables = PublishedTables::Only(tables);
    let (task, status, shutdown) = start_streaming(config).await;
    execute(
        &pair.source.url,
        "INSERT INTO styled VALUES (1, '2026-02-03', '2026-02-03 04:05:06.789+00', \
         0.1::float8 + 0.2::float8, '1 day 02:03:04.5')",
    )
    .await;
    pair.wait_for_done(1, &status).await;
    let row = "SELECT day::text || ' ' || at::text || ' ' || ratio::text || ' ' || span::text \
               FROM styled";
    let read = |url: String| async move {
        let mut conn = PgConnection::connect(&url).await.unwrap();
        conn.execute(
            "SET DateStyle = ISO; SET extra_float_digits = 3; SET TimeZone = 'UTC'; \
                      SET IntervalStyle = postgres",
        )
        .await
        .unwrap();
        let value: String = sqlx::query_scalar(row).fetch_one(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        value
    };
    assert_eq!(
        read(pair.target.url.clone()).await,
        read(pair.source.url.clone()).await
    );
    assert_eq!(
        read(pair.target.url.clone()).await,
        "2026-02-03 2026-02-03 04:05:06.789+00 0.30000000000000004 1 day 02:03:04.5"
    );
    shutdown.cancel();
    task.await.unwrap();
}

/// Sequences carried at a switch go past every value the side before handed out, whichever
/// way they count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_are_carried_past_every_value_in_either_direction() {
    let (source, target) = (
        PostgresDb::create("tandem_apply_sequences").await,
        PostgresDb::create("tandem_apply_sequences").await,
    );
    for db in [&source, &target] {
        execute(
            &db.url,
            "CREATE SEQUENCE up; CREATE SEQUENCE down INCREMENT BY -1 MAXVALUE -1 START WITH -1",
        )
        .await;
    }
    execute(
        &source.url,
        "SELECT nextval('up'), nextval('down') FROM generate_series(1, 5)",
    )
    .await;
    let carried =
        tandem_pgproxy::wal::carry_sequences((Side::Old, &source.url), (Side::New, &target.url))
            .await
            .unwrap();
    assert_eq!(carried, 2);
    assert_eq!(
        scalar(
            &target.url,
            "SELECT nextval('up')::text || ' ' || nextval('down')::text"
        )
        .await,
        "6 -6"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stream_is_read_ahead_of_a_waiting_batch_up_to_its_bound() {
    let pair = Pair::new("tandem_apply_ahead").await;
    let mut config = pair.config(&pair.target.url);
    // Read-ahead of at most two batches: 20 transactions beside the one being applied.
    config.batch_transactions = 10;
    let (task, status, shutdown) = start_streaming(config).await;
    // A session on the other side holds the apply of the next batch (the lock it waits for).
    let mut holder = hold_the_apply(&pair, 0, &status).await;
    let applied = status.borrow().transactions;
    // Written while the apply waits: the capture reads them meanwhile, but no more than its
    // bound (the rest stays in the slot).
    let mut source = PgConnection::connect(&pair.source.url).await.unwrap();
    for id in 1..=100 {
        sqlx::query("INSERT INTO done VALUES ($1)")
            .bind(id)
            .execute(&mut source)
            .await
            .unwrap();
    }
    source.close().await.unwrap();
    let mut watched = status.clone();
    tokio::time::timeout(
        Duration::from_secs(30),
        watched.wait_for(|now| now.read_ahead >= 21),
    )
    .await
    .unwrap_or_else(|_| panic!("the stream was not read ahead: {:?}", *status.borrow()))
    .unwrap();
    for _ in 0..20 {
        let now = status.borrow().clone();
        assert_eq!(
            now.read_ahead, 21,
            "the batch waiting and two more: {now:?}"
        );
        assert_eq!(now.transactions, applied, "the apply is held: {now:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Stopped while the reader waits for room and the apply for the lock: it stops once the
    // batch in hand is applied, and the next capture goes on from there.
    shutdown.cancel();
    holder.execute("ROLLBACK").await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the capture did not stop while its read-ahead was full")
        .unwrap();
    assert_eq!(status.borrow().state, CaptureState::Stopped);
    let (task, status, shutdown) = start(pair.config(&pair.target.url));
    pair.wait_for_done(1_000, &status).await;
    pair.assert_identical();
    assert_eq!(
        scalar(&pair.target.url, "SELECT count(*)::text FROM done").await,
        "102"
    );
    shutdown.cancel();
    task.await.unwrap();
}

/// Holds the capture's next batch on the other side (a lock on `done` its first change
/// waits for) until the returned session rolls back; the capture has read `done` = `id`.
async fn hold_the_apply(
    pair: &Pair,
    id: i32,
    status: &watch::Receiver<CaptureStatus>,
) -> PgConnection {
    let mut holder = PgConnection::connect(&pair.target.url).await.unwrap();
    holder
        .execute("BEGIN; LOCK TABLE done IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    execute(&pair.source.url, &format!("INSERT INTO done VALUES ({id})")).await;
    let waiting = "SELECT count(*)::text FROM pg_stat_activity WHERE datname = current_database() \
                   AND application_name = 'tandem capture' AND wait_event_type = 'Lock'";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while scalar(&pair.target.url, waiting).await != "1" {
        assert!(
            std::time::Instant::now() < deadline,
            "the apply never waited for the lock: {:?}",
            *status.borrow()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    holder
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_updated_many_times_in_one_batch_is_written_once() {
    let pair = Pair::new("tandem_apply_coalesce").await;
    let (task, status, shutdown) = start_streaming(pair.config(&pair.target.url)).await;
    let mut holder = hold_the_apply(&pair, 0, &status).await;
    // 100 transactions updating the same row, read while the apply waits: one batch.
    let mut source = PgConnection::connect(&pair.source.url).await.unwrap();
    for client in 0..100 {
        sqlx::query("UPDATE counter SET n = n + 1, last = $1 WHERE id = 1")
            .bind(client)
            .execute(&mut source)
            .await
            .unwrap();
    }
    source.close().await.unwrap();
    let mut watched = status.clone();
    tokio::time::timeout(
        Duration::from_secs(30),
        watched.wait_for(|now| now.read_ahead >= 101),
    )
    .await
    .unwrap_or_else(|_| panic!("the updates were not read: {:?}", *status.borrow()))
    .unwrap();
    holder.execute("ROLLBACK").await.unwrap();
    pair.wait_for_done(1, &status).await;
    pair.assert_identical();
    // The other side's own count of row updates (its statistics, flushed after the commit).
    let updated = "SELECT n_tup_upd::text FROM pg_stat_user_tables WHERE relname = 'counter'";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut count = scalar(&pair.target.url, updated).await;
    while count == "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "no update of counter was counted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        count = scalar(&pair.target.url, updated).await;
    }
    assert_eq!(count, "1", "the row's 100 updates were applied as one");
    assert_eq!(
        scalar(
            &pair.target.url,
            "SELECT n::text || ' ' || last::text FROM counter"
        )
        .await,
        "100 99"
    );
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_value_freed_and_taken_again_in_one_batch_is_applied_change_by_change() {
    let pair = Pair::new("tandem_apply_unique").await;
    for db in [&pair.source, &pair.target] {
        execute(
            &db.url,
            "CREATE TABLE handles (id INT PRIMARY KEY, handle TEXT NOT NULL UNIQUE); \
             INSERT INTO handles VALUES (1, 'a'), (2, 'b')",
        )
        .await;
    }
    let mut config = pair.config(&pair.target.url);
    let mut tables: Vec<String> = TABLES.iter().map(|t| (*t).to_owned()).collect();
    tables.push("handles".to_owned());
    config.source.tables = PublishedTables::Only(tables);
    let (task, status, shutdown) = start_streaming(config).await;
    let mut holder = hold_the_apply(&pair, 0, &status).await;
    // Row 1 gives 'a' up, row 2 takes it, row 1 changes again: without row 1's first
    // update, row 2's would meet 'a' still held.
    for sql in [
        "UPDATE handles SET handle = 'c' WHERE id = 1",
        "UPDATE handles SET handle = 'a' WHERE id = 2",
        "UPDATE handles SET handle = 'd' WHERE id = 1",
    ] {
        execute(&pair.source.url, sql).await;
    }
    let mut watched = status.clone();
    tokio::time::timeout(
        Duration::from_secs(30),
        watched.wait_for(|now| now.read_ahead >= 4),
    )
    .await
    .unwrap_or_else(|_| panic!("the updates were not read: {:?}", *status.borrow()))
    .unwrap();
    // The batch must go through as it is: a failure would start the capture over, and the
    // new session could read the three updates in other batches.
    let mut states = status.clone();
    let failures = tokio::spawn(async move {
        let mut seen = Vec::new();
        while states.changed().await.is_ok() {
            let state = states.borrow_and_update().state.clone();
            if !matches!(state, CaptureState::Streaming) {
                seen.push(state);
            }
        }
        seen
    });
    holder.execute("ROLLBACK").await.unwrap();
    pair.wait_for_done(1, &status).await;
    assert_eq!(
        scalar(
            &pair.target.url,
            "SELECT string_agg(id || '=' || handle, ',' ORDER BY id) FROM handles"
        )
        .await,
        "1=d,2=a"
    );
    shutdown.cancel();
    task.await.unwrap();
    let seen = failures.await.unwrap();
    assert_eq!(
        seen,
        vec![CaptureState::Stopped],
        "the capture failed and started over on the way"
    );
    pair.assert_identical();
}
