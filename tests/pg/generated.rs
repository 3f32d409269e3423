//! Values a server generates itself: serial ids advance alike when transactions reach the other
//! side in commit order; where concurrent sessions interleaved their `nextval`s, the proxy
//! records the ids each side returned and the comparator finds exactly the rows, which
//! `tandem repair` makes equal; `DEFAULT now()` compares equal within a timestamp tolerance;
//! random defaults are reported column by column.

use sqlx::{Connection, Executor, Row};
use tandem_testkit::{divergences, table};

use super::{count, eventually, proxy_in, sides, tandem};

/// `tandem compare` (or `repair`) of the listed tables as JSON: its exit code and report.
fn run(command: &str, old: &str, new: &str, args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec![
        command,
        "--old",
        old,
        "--new",
        new,
        "--format",
        "json",
        "--recheck",
        "1",
        "--recheck-delay",
        "100ms",
    ];
    all.extend_from_slice(args);
    let output = tandem(&all);
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "{err}: {} {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap(), report)
}

/// The id an `INSERT … RETURNING id` gave, sent with the simple protocol.
async fn insert(conn: &mut sqlx::PgConnection, what: &str) -> i64 {
    let sql = format!("INSERT INTO events (what) VALUES ('{what}') RETURNING id");
    let row = conn.fetch_one(sqlx::raw_sql(&sql)).await.unwrap();
    row.get::<i64, _>(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_values_end_equal_or_are_reported_exactly() {
    let (old, new) = sides().await;
    for db in [&old, &new] {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        conn.execute(sqlx::raw_sql(
            "CREATE TABLE events (id BIGSERIAL PRIMARY KEY, what TEXT NOT NULL);
             CREATE TABLE stamped (id INT PRIMARY KEY, at TIMESTAMPTZ NOT NULL DEFAULT now());
             CREATE TABLE tokens (id INT PRIMARY KEY, token UUID NOT NULL DEFAULT gen_random_uuid())",
        ))
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    let (_proxy, address, control, _dir) = proxy_in("dual-write", &old.url, &new.url);
    let through = super::through(&address);
    let mut first = sqlx::PgConnection::connect(&through).await.unwrap();
    let mut second = sqlx::PgConnection::connect(&through).await.unwrap();

    // Interleaved: the first session takes id 1 but commits after the second took id 2.
    first.execute(sqlx::raw_sql("BEGIN")).await.unwrap();
    assert_eq!(insert(&mut first, "first").await, 1);
    assert_eq!(insert(&mut second, "second").await, 2);
    first.execute(sqlx::raw_sql("COMMIT")).await.unwrap();
    // Not interleaved: the same id on both sides.
    assert_eq!(insert(&mut second, "third").await, 3);
    second
        .execute(sqlx::raw_sql(
            "INSERT INTO stamped (id) VALUES (1); INSERT INTO tokens (id) VALUES (1)",
        ))
        .await
        .unwrap();
    first.close().await.unwrap();
    second.close().await.unwrap();
    eventually(&new.url, "SELECT count(*) FROM events", 3).await;
    eventually(&new.url, "SELECT count(*) FROM tokens", 1).await;

    // The proxy recorded the two transactions whose ids came out differently, with both ids.
    let store = tandem_control::ControlStore::open(&control).await.unwrap();
    let mut diffs: Vec<String> = store
        .response_mismatches(10)
        .await
        .unwrap()
        .into_iter()
        .map(|mismatch| format!("{}: {}", mismatch.path, mismatch.diff))
        .collect();
    diffs.sort();
    store.close().await;
    assert_eq!(
        diffs,
        [
            "INSERT INTO events (what) VALUES (?) RETURNING id: returned rows differ \
             (1 old / 1 new rows, as sets): old has (1), new has (2)",
            "INSERT INTO events (what) VALUES (?) RETURNING id: returned rows differ \
             (1 old / 1 new rows, as sets): old has (2), new has (1)",
        ]
    );

    // The comparator finds exactly those rows; the third is equal.
    let (code, report) = run("compare", &old.url, &new.url, &["--table", "events"]);
    assert_eq!(code, 1, "{report}");
    let changed = |key: &str, column: &str| {
        (
            "changed".to_owned(),
            key.to_owned(),
            vec![column.to_owned()],
        )
    };
    assert_eq!(
        divergences(table(&report, "events")),
        [
            changed(r#"{"id":1}"#, "what"),
            changed(r#"{"id":2}"#, "what")
        ]
    );
    // Repair from old makes them equal; the sequences stand at the same value.
    let (code, report) = run("repair", &old.url, &new.url, &["--table", "events"]);
    assert_eq!(code, 0, "{report}");
    let (code, report) = run("compare", &old.url, &new.url, &["--table", "events"]);
    assert_eq!(code, 0, "{report}");
    let last = "SELECT last_value FROM events_id_seq";
    assert_eq!(count(&old.url, last).await, count(&new.url, last).await);

    // DEFAULT now(): each side's clock, apart by the mirroring lag; equal within a tolerance.
    let (code, report) = run("compare", &old.url, &new.url, &["--table", "stamped"]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        divergences(table(&report, "stamped")),
        [changed(r#"{"id":1}"#, "at")]
    );
    let (code, report) = run(
        "compare",
        &old.url,
        &new.url,
        &["--table", "stamped", "--timestamp-tolerance", "10s"],
    );
    assert_eq!(code, 0, "{report}");

    // DEFAULT gen_random_uuid(): reported by column.
    let (code, report) = run("compare", &old.url, &new.url, &["--table", "tokens"]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        divergences(table(&report, "tokens")),
        [changed(r#"{"id":1}"#, "token")]
    );
}
