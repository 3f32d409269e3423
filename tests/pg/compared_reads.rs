//! Compared reads in `shadow` under `--capture wal`, with real drivers (psycopg 3 and asyncpg,
//! `scripts/ensure-python-pg`; node-postgres, `scripts/ensure-node-pg`): concurrent sessions change their settings between reads
//! (search path, time zone, date style, float digits, `SET LOCAL` inside transactions, a
//! `SET` in a transaction that also writes, which the capture carries and the session's
//! mirror does not, a statement prepared before a `SET` and re-used after it, `RESET ALL` /
//! `DISCARD ALL`).
//! Every answer a client gets is the authoritative side's; the other side's copy of each read
//! runs under the same settings, so no mismatch is recorded while the sides agree; and a
//! difference planted behind tandem's back on the other side is reported for exactly the
//! reads that see it.

use std::process::Command;
use std::time::{Duration, Instant};

use sqlx::Connection;
use tandem_testkit::{unique_name, PostgresDb};

use super::exact::{bounded, mismatches, python, succeeded};
use super::stages::{ready, stage_applied};
use super::wal_capture::{execute, SlotGuard};
use super::wal_proxy::drop_capture_origins;
use super::{metric, Proxy};

/// Both sides' tables: `items` in `public` and in `tenant_a`, rows 1 and 2 in each with other
/// names, instants, days and floats, so that the search path decides which row a read sees
/// and the session's settings how the rest reads as text; `notes`, which the sessions write.
const SCHEMA: &str = "
    CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, at timestamptz NOT NULL,
                        day date NOT NULL, f float8 NOT NULL);
    CREATE SCHEMA tenant_a;
    CREATE TABLE tenant_a.items (LIKE items INCLUDING ALL);
    CREATE TABLE notes (id serial PRIMARY KEY, what text NOT NULL);
    INSERT INTO items VALUES
        (1, 'public one', '2024-01-01 00:00+00', '2024-04-03', 1.0 / 3),
        (2, 'public two', '2024-07-01 12:30+00', '2024-12-25', 0.1);
    INSERT INTO tenant_a.items VALUES
        (1, 'tenant one', '2024-03-10 06:59:59.5+00', '2023-02-28', 2.0 / 3),
        (2, 'tenant two', '2024-11-03 05:30+00', '2025-01-05', 1e-7);
";

/// Two `wal_level = logical` databases with [`SCHEMA`], and the slots (and origins) a proxy
/// capturing between them owns, dropped at the end.
struct ShadowSides {
    _slots: [SlotGuard; 2],
    old: PostgresDb,
    new: PostgresDb,
    stem: String,
}

impl ShadowSides {
    /// The sides, with `extra` SQL run on each after the schema (`(old, new)`).
    async fn new(prefix: &str, extra: (&str, &str)) -> ShadowSides {
        let old = PostgresDb::create_logical(prefix, false).await;
        let new = PostgresDb::create_logical(prefix, true).await;
        execute(&old.url, &format!("{SCHEMA}{}", extra.0)).await;
        execute(&new.url, &format!("{SCHEMA}{}", extra.1)).await;
        let stem = unique_name(prefix);
        let slots = [
            SlotGuard::named(&old, &format!("{stem}_old")),
            SlotGuard::named(&new, &format!("{stem}_new")),
        ];
        ShadowSides {
            _slots: slots,
            old,
            new,
            stem,
        }
    }

    /// A proxy in `shadow` with `--capture wal` and `extra` arguments, routing and ready.
    async fn shadow(&self, extra: &[&str]) -> Proxy {
        let mut args = super::wal_capture_args(&self.stem).to_vec();
        args.extend_from_slice(extra);
        let proxy = Proxy::start("shadow", &self.old.url, &self.new.url, &args);
        stage_applied(&proxy.admin, "shadow").await;
        ready(&proxy.admin).await;
        proxy
    }
}

impl Drop for ShadowSides {
    fn drop(&mut self) {
        drop_capture_origins(&self.old.url, &self.new.url, &self.stem);
    }
}

/// Waits until the proxy has compared `reads` read-only transactions in all and settled
/// everything it carried to the other side (mismatches recorded), up to 30 s.
async fn await_compared(admin: &str, reads: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = metric(admin, "tandem_pg_compared_reads_total").await;
        if done >= reads && metric(admin, "tandem_mirror_queue_depth").await == 0.0 {
            assert!(
                (done - reads).abs() < f64::EPSILON,
                "{done} reads compared, expected {reads}"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {reads} reads compared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The case run by node-postgres (`scripts/ensure-node-pg`) rather than Python.
const NODE_POSTGRES: &str = "node-postgres";

/// Runs the Python client's `case` (or node-postgres's) through `proxy` (4 sessions, 6 rounds each, then the same
/// directly on old) and returns what it printed, having checked that every answer through
/// tandem is old's.
async fn run(case: &str, proxy: &Proxy, old: &str) -> serde_json::Value {
    let mut command = if case == NODE_POSTGRES {
        let mut node = Command::new("node");
        node.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/pg/node/compared_reads.js"
        ))
        .env("TANDEM_PG_DSN", super::through(&proxy.address));
        node
    } else {
        python(case, &proxy.port)
    };
    command
        .env("TANDEM_PG_OLD_DSN", old)
        .env("SESSIONS", "4")
        .env("ROUNDS", "6");
    let output = bounded(command, "", case).await;
    succeeded(&output, case);
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        printed["through"], printed["direct"],
        "{case}: the answers through tandem are the authoritative side's"
    );
    printed
}

/// The count a case printed under `key`.
fn counted(printed: &serde_json::Value, key: &str) -> f64 {
    printed[key].as_f64().unwrap()
}

async fn compared_reads_follow_the_session_settings(case: &str) {
    let sides = ShadowSides::new("tandem_compared", ("", "")).await;
    let proxy = sides.shadow(&[]).await;

    let first = run(case, &proxy, &sides.old.url).await;
    let reads = counted(&first, "compared");
    await_compared(&proxy.admin, reads).await;
    assert_eq!(
        mismatches(&proxy.control).await,
        Vec::<String>::new(),
        "{case}: no read differs while the sides agree"
    );

    // A difference behind tandem's back, in a row only tenant_a's search path sees.
    execute(
        &sides.new.url,
        "UPDATE tenant_a.items SET name = 'planted' WHERE id = 2",
    )
    .await;
    let second = run(case, &proxy, &sides.old.url).await;
    await_compared(&proxy.admin, reads + counted(&second, "compared")).await;
    let found = mismatches(&proxy.control).await;
    let planted = counted(&second, "planted");
    assert!(planted > 0.0);
    assert_eq!(
        found.len() as f64,
        planted,
        "{case}: one mismatch for each read that sees the planted row:\n{}",
        found.join("\n")
    );
    assert!(
        found.iter().all(|mismatch| mismatch.contains("planted")),
        "{}",
        found.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_reads_are_compared_under_the_session_settings() {
    compared_reads_follow_the_session_settings("psycopg_compared_reads").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_reads_are_compared_under_the_session_settings() {
    compared_reads_follow_the_session_settings("asyncpg_compared_reads").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_reads_are_compared_under_the_session_settings() {
    compared_reads_follow_the_session_settings(NODE_POSTGRES).await;
}

/// `probe()` answers 1 on both sides; on new each run also takes a value of `probe_runs`,
/// which no rollback gives back: how many reads ran there.
const PROBE_OLD: &str = "CREATE FUNCTION probe() RETURNS int LANGUAGE sql AS 'SELECT 1';";
const PROBE_NEW: &str = "CREATE SEQUENCE probe_runs;
    CREATE FUNCTION probe() RETURNS int LANGUAGE plpgsql AS
        $$ BEGIN PERFORM nextval('probe_runs'); RETURN 1; END $$;";

/// Reads each of the sessions runs.
const READS_PER_SESSION: i32 = 50;
const SESSIONS: i32 = 4;

/// A proxy in `shadow` comparing `fraction` of the reads, after 4 sqlx sessions ran 50 reads
/// each through it (every one of them settled).
struct Sampled {
    /// Dropped (stopped) before the sides: its capture's slot holds old's database, which
    /// could not be dropped while it reads it.
    proxy: Proxy,
    sides: ShadowSides,
    /// Reads that ran on new.
    ran_there: i64,
    /// `tandem_pg_shadow_reads_total` by decision.
    compared: f64,
    skipped: f64,
}

async fn sampled(fraction: &str) -> Sampled {
    let sides = ShadowSides::new("tandem_sampled", (PROBE_OLD, PROBE_NEW)).await;
    let proxy = sides.shadow(&["--compare-reads", fraction]).await;
    let url = super::through(&proxy.address);
    let sessions: Vec<_> = (0..SESSIONS)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
                for read in 0..READS_PER_SESSION {
                    let (probe, name): (i32, String) =
                        sqlx::query_as("SELECT probe(), name FROM items WHERE id = $1")
                            .bind(1 + read % 2)
                            .fetch_one(&mut conn)
                            .await
                            .unwrap();
                    assert_eq!(probe, 1);
                    assert!(name.starts_with("public"), "{name}");
                }
                conn.close().await.unwrap();
            })
        })
        .collect();
    for session in sessions {
        session.await.unwrap();
    }
    let decided =
        |decision: &str| format!("tandem_pg_shadow_reads_total{{decision=\"{decision}\"}}");
    let compared = metric(&proxy.admin, &decided("compared")).await;
    let skipped = metric(&proxy.admin, &decided("skipped")).await;
    assert_eq!(compared + skipped, f64::from(SESSIONS * READS_PER_SESSION));
    await_compared(&proxy.admin, compared).await;
    let ran_there = super::count(
        &sides.new.url,
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM probe_runs",
    )
    .await;
    Sampled {
        proxy,
        sides,
        ran_there,
        compared,
        skipped,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_compare_reads_0_no_read_reaches_the_other_side() {
    let sampled = sampled("0").await;
    assert_eq!(sampled.ran_there, 0);
    assert_eq!(
        (sampled.compared, sampled.skipped),
        (0.0, f64::from(SESSIONS * READS_PER_SESSION))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_compare_reads_half_about_half_the_reads_reach_the_other_side() {
    let sampled = sampled("0.5").await;
    // 100 of 200 expected; the bounds are 7 standard deviations away.
    assert!(
        (50..=150).contains(&sampled.ran_there),
        "{} of 200 reads ran on new",
        sampled.ran_there
    );
    assert_eq!(sampled.ran_there as f64, sampled.compared);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_compare_reads_1_every_read_reaches_the_other_side_and_differences_are_found() {
    let Sampled {
        sides,
        proxy,
        ran_there,
        compared: taken,
        ..
    } = sampled("1").await;
    assert_eq!(ran_there, i64::from(SESSIONS * READS_PER_SESSION));
    assert_eq!(taken, f64::from(SESSIONS * READS_PER_SESSION));
    assert_eq!(mismatches(&proxy.control).await, Vec::<String>::new());

    execute(
        &sides.new.url,
        "UPDATE items SET name = 'planted' WHERE id = 2",
    )
    .await;
    let mut conn = sqlx::PgConnection::connect(&super::through(&proxy.address))
        .await
        .unwrap();
    for id in [1, 2] {
        sqlx::query("SELECT probe(), name FROM items WHERE id = $1")
            .bind(id)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    }
    conn.close().await.unwrap();
    await_compared(&proxy.admin, taken + 2.0).await;
    let found = mismatches(&proxy.control).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("planted"), "{found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_the_sessions_own_write_is_compared_once_the_capture_applied_it() {
    let sides = ShadowSides::new("tandem_own_write", ("", "")).await;
    let proxy = sides.shadow(&[]).await;
    // The capture's insert into `notes` on new waits behind this lock; reads go through.
    let mut holder = sqlx::PgConnection::connect(&sides.new.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("LOCK TABLE notes IN EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();

    let mut conn = sqlx::PgConnection::connect(&super::through(&proxy.address))
        .await
        .unwrap();
    let id: i32 = sqlx::query_scalar("INSERT INTO notes (what) VALUES ('mine') RETURNING id")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let applying = "SELECT count(*) FROM pg_stat_activity \
                    WHERE datname = current_database() AND wait_event_type = 'Lock'";
    super::eventually(&sides.new.url, applying, 1).await;
    let what: String = sqlx::query_scalar("SELECT what FROM notes WHERE id = $1")
        .bind(id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(what, "mine");

    // The insert is still not applied on new: the read's copy must wait for it, not run now
    // and find no row. Given 2 s to run meanwhile (a copy that does not wait runs within
    // milliseconds), it must not have.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline
        && metric(&proxy.admin, "tandem_pg_compared_reads_total").await == 0.0
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    await_compared(&proxy.admin, 1.0).await;
    assert_eq!(
        metric(
            &proxy.admin,
            "tandem_pg_compared_reads_total{outcome=\"same\"}"
        )
        .await,
        1.0
    );
    assert_eq!(mismatches(&proxy.control).await, Vec::<String>::new());
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_changing_its_settings_waits_for_no_other_sessions_compared_reads() {
    let sides = ShadowSides::new("tandem_unordered", ("", "")).await;
    let proxy = sides.shadow(&[]).await;
    let url = super::through(&proxy.address);
    // Reads of `items` on new wait behind this lock.
    let mut holder = sqlx::PgConnection::connect(&sides.new.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();

    let mut blocked = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("SELECT name FROM items WHERE id = 1")
        .fetch_one(&mut blocked)
        .await
        .unwrap();
    let waiting = "SELECT count(*) FROM pg_stat_activity \
                   WHERE datname = current_database() AND wait_event_type = 'Lock'";
    super::eventually(&sides.new.url, waiting, 1).await;

    // Another session sets its time zone, then reads `notes`: its copy needs nothing the
    // blocked one holds.
    let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("SET TIME ZONE 'Asia/Kolkata'")
        .execute(&mut other)
        .await
        .unwrap();
    sqlx::query("SELECT count(*) FROM notes")
        .fetch_one(&mut other)
        .await
        .unwrap();
    // Its read is compared while the first session's still waits there.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&proxy.admin, "tandem_pg_compared_reads_total").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the read was not compared while another session's compared read waited"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    await_compared(&proxy.admin, 2.0).await;
    assert_eq!(mismatches(&proxy.control).await, Vec::<String>::new());
    for conn in [blocked, other, holder] {
        conn.close().await.unwrap();
    }
}
