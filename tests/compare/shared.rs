//! Comparator instances sharing a PostgreSQL control store split each sweep into key-range
//! chunks; the chunk of an instance that died is taken over once its lease expires.

use std::collections::BTreeSet;
use std::time::Duration;

use sqlx::Row;
use tandem_control::ControlStore;
use tandem_testkit::{ChildProcess, PostgresDb};
use tokio::time::Instant;

use crate::engines::{Kind, TestDb};
use crate::service::start_comparator;

const ROWS: i64 = 400;

fn comparator(
    old: &TestDb,
    new: &TestDb,
    control: &str,
    instance: &str,
    rate: &str,
) -> ChildProcess {
    let flags = [
        "--instance",
        instance,
        "--chunk-rows",
        "40",
        "--chunk-lease",
        "1s",
        "--max-rows-per-sec",
        rate,
        "--recheck",
        "1",
        "--recheck-delay",
        "100ms",
        "--interval",
        "1h",
        "--sweeps",
        "1",
    ];
    start_comparator(old, new, control, &flags).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_a_sweep_and_take_over_a_dead_ones_chunk() {
    let (old, new) = (
        TestDb::create(Kind::Postgres).await,
        TestDb::create(Kind::Postgres).await,
    );
    let control_db = PostgresDb::create("tandem_shared_control").await;
    let rows: Vec<String> = (1..=ROWS)
        .map(|id| format!("INSERT INTO items VALUES ({id}, {id}.25, 'note {id}')"))
        .collect();
    for db in [&old, &new] {
        db.exec(&[
            "CREATE TABLE items (id BIGINT PRIMARY KEY, amount NUMERIC(10,2), note TEXT)"
                .to_owned(),
        ])
        .await;
        db.exec(&rows).await;
    }
    // Drift in three different chunks.
    new.exec(&[
        "UPDATE items SET note = 'changed' WHERE id = 5".to_owned(),
        "DELETE FROM items WHERE id = 150".to_owned(),
        "INSERT INTO items VALUES (1000, 1, 'extra')".to_owned(),
    ])
    .await;
    let store = ControlStore::open(&control_db.url).await.unwrap();
    let control = &sqlx::PgPool::connect(&control_db.url).await.unwrap();

    // A slow instance plans the sweep, claims a chunk and dies holding it.
    let mut doomed = comparator(&old, &new, &control_db.url, "doomed", "20");
    let held = wait_for(Duration::from_secs(20), || async move {
        let row = sqlx::query(
            "SELECT id FROM sweep_chunks WHERE owner = 'doomed' AND status = 'claimed'",
        )
        .fetch_optional(control)
        .await
        .unwrap();
        row.map(|row| row.get::<i64, _>("id"))
    })
    .await;
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &doomed.id().to_string()])
        .status();
    doomed.wait(Duration::from_secs(10));

    // Two instances join the running sweep and finish it, the dead one's chunk included.
    let mut first = comparator(&old, &new, &control_db.url, "first", "400");
    let mut second = comparator(&old, &new, &control_db.url, "second", "400");
    for instance in [&mut first, &mut second] {
        let status = instance.wait(Duration::from_secs(60));
        assert!(status.success(), "{status}: {}", instance.log());
    }

    let runs = store.comparison_runs(10).await.unwrap();
    assert_eq!(runs.len(), 1, "one sweep shared by all instances: {runs:?}");
    assert_eq!(runs[0].status, "divergent");
    let tables = store.latest_table_results().await.unwrap();
    let items = &tables[0].result;
    assert_eq!(
        (
            items.rows_old,
            items.rows_new,
            items.missing_in_new,
            items.extra_in_new,
            items.changed
        ),
        (ROWS, ROWS, 1, 1, 1)
    );
    let mut keys: Vec<String> = store
        .divergences_of_run(runs[0].id, None)
        .await
        .unwrap()
        .iter()
        .map(|divergence| format!("{} {}", divergence.kind, divergence.key))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            r#"changed {"id":5}"#,
            r#"extra_in_new {"id":1000}"#,
            r#"missing_in_new {"id":150}"#
        ]
    );

    let chunks = sqlx::query("SELECT id, owner, attempts, status FROM sweep_chunks ORDER BY id")
        .fetch_all(control)
        .await
        .unwrap();
    assert_eq!(
        chunks.len(),
        11,
        "400 rows in chunks of 40, and the rest after the last"
    );
    let owners: BTreeSet<String> = chunks.iter().map(|row| row.get("owner")).collect();
    assert!(
        owners.contains("first") && owners.contains("second") && !owners.contains("doomed"),
        "{owners:?}"
    );
    let taken_over = chunks
        .iter()
        .find(|row| row.get::<i64, _>("id") == held)
        .unwrap();
    assert!(taken_over.get::<i64, _>("attempts") >= 2);
    assert!(chunks
        .iter()
        .all(|row| row.get::<String, _>("status") == "done"));
    let windows = store
        .window_results(runs[0].id, Some("items"))
        .await
        .unwrap();
    let read: i64 = windows.iter().map(|window| window.result.rows_old).sum();
    assert_eq!(read, ROWS, "the windows cover every row once");
}

async fn wait_for<T, F, Fut>(timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
