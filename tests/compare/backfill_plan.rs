//! A backfill's plan splits the old side into chunks of exactly `--chunk-rows` rows in
//! tandem's key order, whatever the key: here PostgreSQL's one recursive query for every
//! boundary, over a two-column key whose text column is ordered by its bytes, with and
//! without `--where`.

use sqlx::any::AnyPoolOptions;
use sqlx::Row;
use tandem_testkit::Backfill;

use crate::backfill::control_db;
use crate::engines::{compare, Kind, TestDb};

const SCHEMA: &str = "CREATE TABLE pairs (region TEXT, n INT, v TEXT, PRIMARY KEY (region, n))";

/// Old-side rows each chunk of `pairs` held, in chunk order, as checkpointed.
async fn rows_per_chunk(control: &str) -> Vec<i64> {
    sqlx::any::install_default_drivers();
    let store = AnyPoolOptions::new()
        .max_connections(1)
        .connect(control)
        .await
        .unwrap();
    let rows =
        sqlx::query("SELECT rows_old FROM backfill_chunks WHERE table_name = 'pairs' ORDER BY seq")
            .fetch_all(&store)
            .await
            .unwrap();
    store.close().await;
    rows.iter()
        .map(|row| row.get::<i64, _>("rows_old"))
        .collect()
}

async fn chunks_of(args: &[&str], expected: &[i64]) {
    let (old, new) = (
        TestDb::create(Kind::Postgres).await,
        TestDb::create(Kind::Postgres).await,
    );
    // 2,500 rows; upper- and lower-case regions, which byte order and a linguistic
    // collation sort differently.
    old.exec(&[
        SCHEMA.to_owned(),
        "INSERT INTO pairs SELECT (ARRAY['a', 'B', 'c', 'D', 'e'])[1 + g % 5], g, md5(g::text) \
         FROM generate_series(1, 2500) g"
            .to_owned(),
    ])
    .await;
    new.exec(&[SCHEMA.to_owned()]).await;
    let dir = tempfile::tempdir().unwrap();
    let control = control_db(&dir);
    let output = Backfill::new(&old.url(), &new.url(), &control)
        .table("pairs")
        .chunk_rows(1000)
        .args(args)
        .command()
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(rows_per_chunk(&control).await, expected, "{report}");
    let mut compared = vec!["--table", "pairs"];
    compared.extend_from_slice(args);
    let (code, compared) = compare(&old, &new, &compared);
    assert_eq!(code, 0, "identical after the backfill: {compared}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_hold_chunk_rows_rows_each_under_a_two_column_key() {
    // 2,500 rows: boundaries after the 1,000th and the 2,000th.
    chunks_of(&[], &[1000, 1000, 500]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_count_only_the_rows_the_filter_keeps() {
    chunks_of(&["--where", "n % 2 = 0"], &[1000, 250]).await;
}
