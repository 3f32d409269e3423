//! `tandem backfill` fills the new side from the old one, exactly, beside writes made the way
//! dual-write makes them, resumes after SIGKILL, and writes nothing on a dry run.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use tandem_testkit::Backfill;

use crate::engines::{compare, Kind, TestDb};

pub(crate) const ROWS: i64 = 50_000;

fn schema(db: &TestDb) -> Vec<String> {
    let (decimal, timestamp, boolean) = match db.kind() {
        Kind::Maria => ("DECIMAL(12,2)", "DATETIME(6)", "BOOLEAN"),
        _ => ("NUMERIC(12,2)", "TIMESTAMP", "BOOLEAN"),
    };
    vec![format!(
        "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(50) NOT NULL, \
         amount {decimal}, created {timestamp}, flag {boolean}, note TEXT)"
    )]
}

fn history(db: &TestDb) -> Vec<String> {
    vec![match db.kind() {
        Kind::Maria => format!(
            "INSERT INTO items SELECT seq, CONCAT('name', seq), seq * 1.25, \
             TIMESTAMP '2024-01-01 00:00:00' + INTERVAL seq MINUTE, seq % 2 = 0, \
             IF(seq % 7 = 0, NULL, MD5(seq)) FROM seq_1_to_{ROWS}"
        ),
        Kind::Sqlite => format!(
            "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {ROWS}) \
             INSERT INTO items SELECT g, 'name' || g, g * 1.25, \
             datetime('2024-01-01', '+' || g || ' minutes'), g % 2 = 0, \
             CASE WHEN g % 7 = 0 THEN NULL ELSE hex(g * 2654435761) END FROM s"
        ),
        _ => format!(
            "INSERT INTO items SELECT g, 'name' || g, g * 1.25, \
             TIMESTAMP '2024-01-01' + g * INTERVAL '1 minute', g % 2 = 0, \
             CASE WHEN g % 7 = 0 THEN NULL ELSE md5(g::text) END \
             FROM generate_series(1, {ROWS}) g"
        ),
    }]
}

/// Two fresh databases, the old one holding the history, the new one (PostgreSQL) the empty
/// table.
pub(crate) async fn databases(old_kind: Kind) -> (TestDb, TestDb) {
    databases_of(old_kind, Kind::Postgres).await
}

/// Two fresh databases of these kinds, the old one holding the history, the new one the empty
/// table.
async fn databases_of(old_kind: Kind, new_kind: Kind) -> (TestDb, TestDb) {
    let (old, new) = (
        TestDb::create(old_kind).await,
        TestDb::create(new_kind).await,
    );
    old.exec(&schema(&old)).await;
    old.exec(&history(&old)).await;
    new.exec(&schema(&new)).await;
    (old, new)
}

/// `tandem backfill` of `items` from `old` into `new`, checkpointed in `control`.
pub(crate) fn items(old: &TestDb, new: &TestDb, control: &str) -> Backfill {
    Backfill::new(&old.url(), &new.url(), control).table("items")
}

/// Runs the backfill of `items` with quick rechecks and `args`; its exit code and report.
pub(crate) fn backfill(old: &TestDb, new: &TestDb, control: &str, args: &[&str]) -> (i32, Value) {
    let output = items(old, new, control)
        .args(&["--recheck", "1", "--recheck-delay", "10ms"])
        .args(args)
        .output();
    let code = output.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 1,
        "exit {code}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (code, serde_json::from_slice(&output.stdout).unwrap())
}

async fn pool(db: &TestDb) -> AnyPool {
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(2)
        .connect(&db.url())
        .await
        .unwrap()
}

pub(crate) async fn count(db: &TestDb) -> i64 {
    rows_in(db, "items").await
}

pub(crate) async fn rows_in(db: &TestDb, table: &str) -> i64 {
    let pool = pool(db).await;
    let count: i64 = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("n");
    pool.close().await;
    count
}

pub(crate) fn control_db(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("control.db").display())
}

async fn copies_history(old_kind: Kind) {
    copies_history_into(old_kind, Kind::Postgres).await;
}

/// Copies the history from `old_kind` into `new_kind`: exactly, in bulk into PostgreSQL and
/// the row way elsewhere (`INSERT IGNORE` on MariaDB, `INSERT … ON CONFLICT DO NOTHING` on
/// SQLite); a rerun over the migrated table writes nothing.
async fn copies_history_into(old_kind: Kind, new_kind: Kind) {
    let (old, new) = databases_of(old_kind, new_kind).await;
    let dir = tempfile::tempdir().unwrap();
    let (code, report) = backfill(
        &old,
        &new,
        &control_db(&dir),
        &["--threads", "2", "--chunk-rows", "10000"],
    );
    assert_eq!(code, 0, "{report}");
    let table = &report["tables"][0];
    assert_eq!(table["copied"], ROWS, "{report}");
    assert_eq!(table["skipped"], 0, "nothing was there to skip: {report}");
    assert_eq!(table["chunks"], 6, "{report}");
    let bulk = if new_kind == Kind::Postgres { 6 } else { 0 };
    assert_eq!(
        table["chunks_bulk"], bulk,
        "every range is empty on new at first, so copied in bulk where there is a bulk path: \
         {report}"
    );
    assert_eq!(table["unconverged"], 0, "{report}");
    let (code, compared) = compare(&old, &new, &["--table", "items"]);
    assert_eq!(code, 0, "identical after the backfill: {compared}");

    let (code, again) = backfill(&old, &new, &control_db(&dir), &["--restart"]);
    assert_eq!(code, 0, "{again}");
    assert_eq!(
        again["tables"][0]["copied"], 0,
        "a migrated table costs a comparison, not a write: {again}"
    );
    assert_eq!(
        again["tables"][0]["skipped"], ROWS,
        "every row found equal: {again}"
    );
    // The checkpoints keep the count: `backfill status` and the API say the same.
    let status = crate::backfill_progress::status_json(&control_db(&dir));
    assert_eq!(status["counts"]["skipped"], ROWS, "{status}");
    assert_eq!(status["counts"]["copied"], 0, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfills_postgres_from_postgres() {
    copies_history(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfills_mariadb_from_postgres() {
    copies_history_into(Kind::Postgres, Kind::Maria).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfills_sqlite_from_mariadb() {
    copies_history_into(Kind::Maria, Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfills_sqlite_from_postgres() {
    copies_history_into(Kind::Postgres, Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfills_mariadb_from_sqlite() {
    copies_history_into(Kind::Sqlite, Kind::Maria).await;
}

/// What PostgreSQL's planner knows of the table: its row count (`pg_class.reltuples`: below
/// zero until the table is first analyzed or vacuumed) and how many of its columns have
/// statistics (`pg_stats`, only from an analysis).
async fn planner_statistics(db: &TestDb) -> (f64, i64) {
    let pool = pool(db).await;
    let row = sqlx::query(
        "SELECT CAST(reltuples AS DOUBLE PRECISION) AS r, \
         (SELECT COUNT(*) FROM pg_stats WHERE tablename = 'items') AS s \
         FROM pg_class WHERE relname = 'items'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    (row.get("r"), row.get("s"))
}

/// A new side's table loaded without planner statistics (as a fill by `COPY` leaves it until
/// autovacuum gets to it), then `after_load`, is analyzed by the backfill that finds it so,
/// before its chunks are read (without statistics PostgreSQL reads a chunk's key range by a
/// bitmap scan and a sort); the rerun writes nothing all the same.
async fn a_rerun_analyzes_a_table_loaded(after_load: &[String]) {
    let (old, new) = databases(Kind::Postgres).await;
    // Autovacuum would analyze the table in its own time: here it is left to the backfill.
    new.exec(&["ALTER TABLE items SET (autovacuum_enabled = false)".to_owned()])
        .await;
    new.exec(&history(&new)).await;
    new.exec(after_load).await;
    let (_, columns) = planner_statistics(&new).await;
    assert_eq!(columns, 0, "no column statistics after the load");
    let dir = tempfile::tempdir().unwrap();
    let (code, report) = backfill(&old, &new, &control_db(&dir), &["--threads", "2"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["tables"][0]["copied"], 0, "{report}");
    assert_eq!(report["tables"][0]["repaired"], 0, "{report}");
    let (rows, columns) = planner_statistics(&new).await;
    assert!(
        rows > 0.0 && columns == 6,
        "the backfill analyzed the table ({rows} rows planned, {columns} columns with statistics)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_analyzes_a_new_table_never_analyzed() {
    a_rerun_analyzes_a_table_loaded(&[]).await;
}

/// A vacuum counts the table's rows and pages but gathers no column statistics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_analyzes_a_new_table_vacuumed_but_never_analyzed() {
    a_rerun_analyzes_a_table_loaded(&["VACUUM items".to_owned()]).await;
}

/// A rerun over a migrated table compares the chunks after the first as groups (here all ten
/// together: `--window-rows` 100,000 over chunks of 5,000 rows), on rows read while the chunks
/// before were compared; the chunks of a group that hold a differing row (changed, missing,
/// extra on new, in the last chunks as in the first) are compared again alone and repaired,
/// the six others are checkpointed as found equal, and the table ends identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_repairs_the_chunks_it_read_ahead() {
    let (old, new) = databases(Kind::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let (code, report) = backfill(&old, &new, &control_db(&dir), &[]);
    assert_eq!(code, 0, "{report}");
    new.exec(&[
        "UPDATE items SET name = 'stale' WHERE id IN (3, 25000, 49990)".to_owned(),
        "DELETE FROM items WHERE id IN (12000, 49999)".to_owned(),
        "INSERT INTO items (id, name) VALUES (60000, 'extra')".to_owned(),
    ])
    .await;
    let args = ["--restart", "--threads", "1", "--chunk-rows", "5000"];
    let (code, again) = backfill(&old, &new, &control_db(&dir), &args);
    assert_eq!(code, 0, "{again}");
    let table = &again["tables"][0];
    assert_eq!(table["chunks"], 11, "{again}");
    assert_eq!(table["copied"], 2, "the deleted rows: {again}");
    assert_eq!(
        table["skipped"],
        ROWS - 5,
        "all but the deleted and the stale rows: {again}"
    );
    assert_eq!(
        table["repaired"], 4,
        "the stale rows and the extra one: {again}"
    );
    assert_eq!(table["chunks_bulk"], 0, "{again}");
    assert_eq!(
        table["chunks_grouped"], 6,
        "chunks 1, 3, 5 to 8 equal in the group of chunks 1 to 10: {again}"
    );
    assert_eq!(
        table["rows_old"], ROWS,
        "every chunk's rows counted once: {again}"
    );
    let (code, compared) = compare(&old, &new, &["--table", "items"]);
    assert_eq!(code, 0, "identical after the rerun: {compared}");
}

/// A rerun whose control store refuses a chunk's checkpoint stops with exit 2. The chunk it
/// claimed ahead of that one (to read its rows while the chunk in hand was compared) was
/// never begun: it is given back, not left claimed for other instances to wait out its lease
/// (`backfill status` would name this exited instance as its holder meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_checkpoint_gives_back_the_chunk_claimed_ahead() {
    let (old, new) = databases(Kind::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let control = control_db(&dir);
    let (code, report) = backfill(&old, &new, &control, &[]);
    assert_eq!(code, 0, "{report}");
    // The store fails when the rerun marks its second chunk (seq 1) done: the first chunk
    // found the table populated, so seq 1 is compared first and seq 2 claimed ahead of it.
    let store = AnyPoolOptions::new()
        .max_connections(1)
        .connect(&control)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_checkpoint BEFORE UPDATE ON backfill_chunks \
         WHEN NEW.status = 'done' AND NEW.seq = 1 \
         BEGIN SELECT RAISE(ABORT, 'checkpoint refused'); END",
    )
    .execute(&store)
    .await
    .unwrap();
    store.close().await;
    let output = items(&old, &new, &control)
        .args(&["--restart", "--threads", "1", "--chunk-rows", "5000"])
        .output();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("checkpoint refused"), "{stderr}");
    let store = store_pool(&control).await.unwrap();
    let claimed: Vec<i64> =
        sqlx::query("SELECT seq FROM backfill_chunks WHERE status = 'claimed' ORDER BY seq")
            .fetch_all(&store)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get("seq"))
            .collect();
    store.close().await;
    assert!(
        claimed.iter().all(|&seq| seq <= 1),
        "only the chunk whose checkpoint failed may stay claimed, not one never begun: \
         {claimed:?}"
    );
}

/// A rerun on one instance whose chunks each take longer than `--chunk-lease` (a throttled
/// rerun of large chunks; no other instance claims anything) still compares each chunk and
/// ends: its own claims, even run out, are nobody else's to take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_whose_chunks_outlast_the_lease_ends() {
    let (old, new) = databases(Kind::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let control = control_db(&dir);
    let (code, report) = backfill(&old, &new, &control, &[]);
    assert_eq!(code, 0, "{report}");
    // 20,000 rows read per chunk (both sides) at 10,000 rows/s: about 2 s a chunk, past the
    // 1 s lease; six chunks, about 12 s.
    let args = [
        "--restart",
        "--threads",
        "1",
        "--chunk-rows",
        "10000",
        "--chunk-lease",
        "1s",
        "--max-rows-per-sec",
        "10000",
    ];
    let mut child = items(&old, &new, &control)
        .args(&args)
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ended = None;
    for _ in 0..900 {
        ended = child.try_wait().unwrap();
        if ended.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if ended.is_none() {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let store = store_pool(&control).await.unwrap();
    let claims: Vec<(i64, String, i64)> =
        sqlx::query("SELECT seq, status, attempts FROM backfill_chunks ORDER BY seq")
            .fetch_all(&store)
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get("seq"), row.get("status"), row.get("attempts")))
            .collect();
    store.close().await;
    assert!(
        ended.is_some_and(|status| status.success()),
        "the rerun had not ended after 90 s ({ended:?}); chunks (seq, status, claims): \
         {claims:?}"
    );
}

/// A rerun killed part way keeps the groups of chunks it checkpointed together, and only
/// those: with one worker they are the first chunks in key order, each group whole, and the
/// resumed run takes up exactly the others, repairing the rows that differ in them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_killed_part_way_resumes_after_its_groups() {
    let (old, new) = databases(Kind::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let control = control_db(&dir);
    let (code, report) = backfill(&old, &new, &control, &[]);
    assert_eq!(code, 0, "{report}");
    new.exec(&[
        "UPDATE items SET name = 'stale' WHERE id IN (1500, 48500)".to_owned(),
        "DELETE FROM items WHERE id = 49000".to_owned(),
    ])
    .await;
    // Groups of five chunks of 1,000 rows; slow enough to be killed part way.
    let grouped = ["--window-rows", "5000", "--threads", "1"];
    let mut child = items(&old, &new, &control)
        .chunk_rows(1000)
        .args(&grouped)
        .args(&["--restart", "--max-rows-per-sec", "20000"])
        .command()
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut done = 0_i64;
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(pool) = &store_pool(&control).await {
            done = sqlx::query("SELECT COUNT(*) AS n FROM backfill_chunks WHERE status = 'done'")
                .fetch_one(pool)
                .await
                .map_or(0, |row| row.get("n"));
            pool.close().await;
        }
        if done >= 11 {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let pool = store_pool(&control).await.unwrap();
    let row = sqlx::query(
        "SELECT COUNT(*) AS n, COALESCE(MAX(seq), -1) AS last,          COALESCE(SUM(rows_old), 0) AS rows_old FROM backfill_chunks WHERE status = 'done'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    let (done, last, rows_old): (i64, i64, i64) =
        (row.get("n"), row.get("last"), row.get("rows_old"));
    assert!(
        (11..51).contains(&done),
        "killed part way, after two groups: {done}"
    );
    assert_eq!(last + 1, done, "the first chunks in key order are done");
    // The first chunk goes alone (probed), then groups of five, each checkpointed whole.
    assert_eq!((done - 1) % 5, 0, "whole groups: {done}");
    assert_eq!(rows_old, done * 1000, "each done chunk counts its own rows");

    let (code, resumed) = backfill(&old, &new, &control, &["--chunk-rows", "1000"]);
    assert_eq!(code, 0, "{resumed}");
    let table = &resumed["tables"][0];
    assert_eq!(table["chunks_resumed"], done, "{resumed}");
    assert_eq!(table["chunks_done"], 51, "{resumed}");
    assert_eq!(table["rows_old"], ROWS - done * 1000, "{resumed}");
    let (code, compared) = compare(&old, &new, &["--table", "items"]);
    assert_eq!(code, 0, "identical after the resumed run: {compared}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfills_postgres_from_mariadb() {
    copies_history(Kind::Maria).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfills_postgres_from_sqlite() {
    copies_history(Kind::Sqlite).await;
}

/// Writes the way dual-write does, old side first, then the same write on the new side (an
/// update or delete of a row not copied yet changes nothing there; a re-insert is an upsert),
/// until `stop`; returns the keys it deleted and did not re-insert, and those it wrote.
async fn dual_writer(old: AnyPool, new: AnyPool, stop: Arc<AtomicBool>) -> (Vec<i64>, Vec<i64>) {
    let (mut deleted, mut written) = (Vec::new(), Vec::new());
    let mut step: i64 = 0;
    while !stop.load(Ordering::Relaxed) && step < 20_000 {
        step += 1;
        // Keys spread over the whole table, so some are written before, during and after
        // their chunk is copied.
        let key = (step * 7919) % ROWS + 1;
        let statements: Vec<String> = match step % 3 {
            0 => vec![format!(
                "UPDATE items SET name = 'live{step}', amount = {step}.50 WHERE id = {key}"
            )],
            1 => vec![format!("DELETE FROM items WHERE id = {key}")],
            _ => vec![
                format!("DELETE FROM items WHERE id = {key}"),
                format!(
                    "INSERT INTO items (id, name, amount, flag) VALUES ({key}, 'again{step}', 1.00, TRUE)"
                ),
            ],
        };
        for statement in &statements {
            sqlx::query(statement).execute(&old).await.unwrap();
            let mirrored = if statement.starts_with("INSERT") {
                format!(
                    "{statement} ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, \
                     amount = EXCLUDED.amount, created = NULL, flag = EXCLUDED.flag, note = NULL"
                )
            } else {
                statement.clone()
            };
            sqlx::query(&mirrored).execute(&new).await.unwrap();
        }
        match step % 3 {
            1 => deleted.push(key),
            _ => deleted.retain(|&gone| gone != key),
        }
        written.push(key);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (deleted, written)
}

async fn safe_beside_dual_write(old_kind: Kind) {
    let (old, new) = databases(old_kind).await;
    let dir = tempfile::tempdir().unwrap();
    let control = control_db(&dir);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(dual_writer(
        pool(&old).await,
        pool(&new).await,
        Arc::clone(&stop),
    ));
    let command = items(&old, &new, &control).chunk_rows(2000).args(&[
        "--recheck",
        "2",
        "--recheck-delay",
        "50ms",
    ]);
    let run = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let (deleted, written) = writer.await.unwrap();
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert!(
        run.status.code() == Some(0) || run.status.code() == Some(1),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(written.len() > 100, "the writer ran beside the backfill");

    // The live writes end where dual-write put them: exactly the old side's rows.
    let (code, compared) = compare(&old, &new, &["--table", "items"]);
    assert_eq!(code, 0, "identical: {compared}\nbackfill: {report}");
    let new_pool = pool(&new).await;
    for key in &deleted {
        let found = sqlx::query(&format!("SELECT id FROM items WHERE id = {key}"))
            .fetch_optional(&new_pool)
            .await
            .unwrap();
        assert!(found.is_none(), "deleted row {key} resurrected");
    }
    new_pool.close().await;
    assert_eq!(count(&new).await, ROWS - deleted.len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_beside_dual_write_postgres() {
    safe_beside_dual_write(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_beside_dual_write_mariadb() {
    safe_beside_dual_write(Kind::Maria).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_sigkill() {
    let (old, new) = databases(Kind::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let control = control_db(&dir);
    let mut child = items(&old, &new, &control)
        .chunk_rows(1000)
        .args(&["--threads", "1", "--max-rows-per-sec", "20000"])
        .command()
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once some chunks are checkpointed, long before the last.
    let mut done = 0_i64;
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(pool) = &store_pool(&control).await {
            done = sqlx::query("SELECT COUNT(*) AS n FROM backfill_chunks WHERE status = 'done'")
                .fetch_one(pool)
                .await
                .map_or(0, |row| row.get("n"));
            pool.close().await;
        }
        if done >= 3 {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(done >= 3, "chunks were checkpointed before the kill");
    let copied_before = count(&new).await;
    assert!(copied_before < ROWS, "killed part way");

    let (code, report) = backfill(&old, &new, &control, &["--chunk-rows", "1000"]);
    assert_eq!(code, 0, "{report}");
    let table = &report["tables"][0];
    assert!(
        table["chunks_resumed"].as_i64().unwrap() >= done,
        "{report}"
    );
    assert!(table["copied"].as_i64().unwrap() < ROWS, "{report}");
    assert_eq!(
        table["copied"].as_i64().unwrap(),
        ROWS - copied_before,
        "{report}"
    );
    let (code, compared) = compare(&old, &new, &["--table", "items"]);
    assert_eq!(code, 0, "identical after the resumed run: {compared}");
}

async fn store_pool(control: &str) -> Result<AnyPool, sqlx::Error> {
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{control}?mode=ro"))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_writes_nothing() {
    let (old, new) = databases(Kind::Maria).await;
    let dir = tempfile::tempdir().unwrap();
    let control = control_db(&dir);
    let (code, report) = backfill(&old, &new, &control, &["--dry-run"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["tables"][0]["copied"], ROWS, "{report}");
    assert_eq!(count(&new).await, 0, "nothing written");
    assert!(
        !dir.path().join("control.db").exists(),
        "no checkpoint written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_chunk_size_it_cannot_hold() {
    let (old, new) = databases(Kind::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let control = control_db(&dir);
    let output = items(&old, &new, &control).chunk_rows(0).output();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--chunk-rows"), "{stderr}");
    assert_eq!(count(&new).await, 0, "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_at_a_chunk_boundary() {
    let (old, new) = databases(Kind::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let control = control_db(&dir);
    let child = items(&old, &new, &control)
        .chunk_rows(1000)
        .args(&["--threads", "1", "--max-rows-per-sec", "20000"])
        .spawn();
    let mut copied = 0;
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        copied = count(&new).await;
        if copied >= 2_000 {
            break;
        }
    }
    assert!(copied >= 2_000, "the backfill copied some chunks");
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "SIGTERM ends it with exit 0");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["stopped"], true, "{report}");
    let table = &report["tables"][0];
    let done = table["chunks_done"].as_i64().unwrap();
    assert!(done < table["chunks"].as_i64().unwrap(), "{report}");
    // Every chunk it started was finished and checkpointed: the rows on the new side are
    // exactly those of the done chunks (1000 each).
    assert_eq!(count(&new).await, done * 1000, "{report}");

    let (code, resumed) = backfill(&old, &new, &control, &[]);
    assert_eq!(code, 0, "{resumed}");
    assert_eq!(resumed["tables"][0]["chunks_resumed"], done, "{resumed}");
    let (code, compared) = compare(&old, &new, &["--table", "items"]);
    assert_eq!(code, 0, "identical after the resumed run: {compared}");
}

/// `--max-rows-per-sec` limits every row the backfill reads on either side, by all its
/// workers together, and the report says how many that was: the bulk copy reads each old row
/// once, and the verification each row on both sides.
/// While it runs, the rows on the new side never run ahead of what the limit allowed since
/// the process started (a bound that a slower machine only makes easier to keep).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_throttle_counts_every_row_read_on_both_sides() {
    const RATE: i64 = 10_000;
    let (old, new) = databases(Kind::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let control = control_db(&dir);
    let started = std::time::Instant::now();
    let child = items(&old, &new, &control)
        .chunk_rows(5000)
        .args(&["--threads", "3", "--max-rows-per-sec", &RATE.to_string()])
        .spawn();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output());
    tokio::pin!(output);
    let mut samples = 0;
    let output = loop {
        tokio::select! {
            done = &mut output => break done.unwrap().unwrap(),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        // Counted after the elapsed time is taken: rows copied later only make it larger.
        #[allow(clippy::cast_possible_truncation)]
        let allowed = (started.elapsed().as_secs_f64() * RATE as f64) as i64;
        let copied = count(&new).await;
        // One bulk piece (2,000 rows) is read before the throttle waits for it.
        assert!(
            copied <= allowed + 2_000,
            "{copied} rows copied, {allowed} allowed"
        );
        samples += 1;
    };
    assert!(samples > 3, "the run was watched while it copied");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert_eq!(report["max_rows_per_sec"], RATE, "{report}");
    assert_eq!(
        report["rows_read"],
        3 * ROWS,
        "bulk once, verification on both sides: {report}"
    );
    assert_eq!(report["tables"][0]["copied"], ROWS, "{report}");
}
