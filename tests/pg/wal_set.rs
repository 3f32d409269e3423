//! The capture's set path (`pgproxy/src/wal/set.rs`) against real PostgreSQL servers: a
//! workload of inserts, updates, deletes and re-inserts of the same keys, updates that leave
//! TOASTed values unchanged, NULLs, jsonb, numeric, timestamptz and awkward text, applied in
//! large batches, ends identical; the tables the set path must not take (a foreign key, a
//! secondary unique index, array columns, updates and deletes of a `REPLICA IDENTITY FULL`
//! table) take the row path, and say so. A `REPLICA IDENTITY FULL` table without a key that
//! is only inserted into (pgbench's `pgbench_history`) takes the set path, identical rows and
//! all.

use sqlx::{Connection, Executor, PgConnection};
use tandem_pgproxy::wal::Fallback;

use super::wal_apply::{scalar, start_streaming, Pair};
use super::wal_capture::execute;

/// Both sides' schema and starting rows.
const SCHEMA: &str = "
    CREATE TABLE items (id BIGINT PRIMARY KEY, qty INT, price NUMERIC(14,4), doc JSONB,
                        at TIMESTAMPTZ, big TEXT, note VARCHAR(60), flag BOOLEAN);
    ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL;
    CREATE TABLE pairs (a INT, b TEXT, v INT, PRIMARY KEY (a, b));
    CREATE TABLE log (at TIMESTAMPTZ, what TEXT, n INT);
    CREATE TABLE arrays (id INT PRIMARY KEY, ints INT[], words TEXT[]);
    CREATE TABLE parent (id INT PRIMARY KEY, name TEXT);
    CREATE TABLE child (id INT PRIMARY KEY, parent INT REFERENCES parent (id), v INT);
    CREATE TABLE uniq (id INT PRIMARY KEY, code TEXT UNIQUE, v INT);
    CREATE TABLE done (id INT PRIMARY KEY);
    CREATE TABLE history (tid INT, delta INT, at TIMESTAMP, filler CHAR(22));
    ALTER TABLE history REPLICA IDENTITY FULL;
    CREATE TABLE audit (id INT, what TEXT);
    ALTER TABLE audit REPLICA IDENTITY FULL;
    INSERT INTO items (id, qty, price, doc, at, big, note, flag)
      SELECT i, i, i * 1.5, jsonb_build_object('i', i), '2026-01-01 00:00:00+00',
             repeat('x', 3000), 'seed', true FROM generate_series(0, 399) i;
    INSERT INTO parent SELECT i, 'p' || i FROM generate_series(0, 9) i;
    INSERT INTO uniq SELECT i, 'c' || i, 0 FROM generate_series(0, 19) i;
";

const TABLES: [&str; 10] = [
    "items", "pairs", "log", "arrays", "parent", "child", "uniq", "done", "history", "audit",
];

/// A small deterministic generator (each session its own sequence).
struct Dice(u64);

impl Dice {
    fn roll(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

/// One session's transactions: each picks a few keys of the session's own (no two
/// sessions wait on each other) and changes them in one of many ways.
async fn session(url: String, client: u64, transactions: u64) {
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let mut dice = Dice(client * 7_919 + 13);
    for round in 0..transactions {
        let mut sql = String::from("BEGIN;");
        for _ in 0..1 + dice.roll(4) {
            // Keys 0..399 of items exist from the start; each session owns every fourth.
            let id = dice.roll(100) * 4 + client;
            let (a, b) = (client, ["x", "y,z", "\"q\""][dice.roll(3) as usize]);
            let step = match dice.roll(16) {
                0 => format!(
                    r#"INSERT INTO items (id, qty, price, doc, at, big, note, flag) VALUES
                       ({id}, {round}, {round}.0625, '{{"k": [1, "a\"b {{x,y}}"], "n": null}}',
                       now(), repeat(md5('{round}'), 200), 'it''s {{a,b}} \ "q"', NULL)
                       ON CONFLICT (id) DO UPDATE SET qty = EXCLUDED.qty, big = EXCLUDED.big"#
                ),
                1..=3 => format!("UPDATE items SET qty = qty + 1, at = now() WHERE id = {id}"),
                4 => format!(
                    "UPDATE items SET price = NULL, doc = NULL, note = NULL, flag = false \
                     WHERE id = {id}"
                ),
                5 => format!("DELETE FROM items WHERE id = {id}"),
                6 => format!(
                    "DELETE FROM items WHERE id = {id}; \
                     INSERT INTO items (id, qty, big, note) VALUES ({id}, -1, 'short', '')"
                ),
                7 => format!(
                    "UPDATE items SET big = repeat('y', 2500 + {round}) WHERE id = {id}"
                ),
                8 => format!(
                    "INSERT INTO pairs VALUES ({a}, '{b}', {round}) \
                     ON CONFLICT (a, b) DO UPDATE SET v = pairs.v + 1"
                ),
                9 => format!("DELETE FROM pairs WHERE a = {a} AND b = '{b}'"),
                10 => format!(
                    "INSERT INTO log VALUES (now(), 'r{round}', NULL), (NULL, '', {round})"
                ),
                11 => format!(
                    "INSERT INTO arrays VALUES ({id}, ARRAY[{round}, NULL], '{{\"a b\",NULL,\"\"}}') \
                     ON CONFLICT (id) DO UPDATE SET ints = arrays.ints || {round}"
                ),
                12 => {
                    // Parents 0..7, each session its own.
                    let parent = dice.roll(2) * 4 + client;
                    format!(
                        "INSERT INTO child VALUES ({id}, {parent}, {round}) \
                         ON CONFLICT (id) DO UPDATE SET v = child.v + 1; \
                         UPDATE parent SET name = name || '.' WHERE id = {parent}"
                    )
                }
                13 => history_insert(client, round),
                14 => format!(
                    // Identical rows, one of them updated and one deleted (the row path finds
                    // each by all its columns).
                    "INSERT INTO audit VALUES ({client}, 'a'), ({client}, 'a'); \
                     UPDATE audit SET what = 'b{round}' WHERE ctid = \
                       (SELECT ctid FROM audit WHERE id = {client} AND what = 'a' LIMIT 1); \
                     DELETE FROM audit WHERE ctid = \
                       (SELECT ctid FROM audit WHERE id = {client} LIMIT 1)"
                ),
                _ => {
                    // Each session owns every fourth row of uniq; codes stay unique.
                    let row = dice.roll(5) * 4 + client;
                    format!("UPDATE uniq SET code = 'c{row}-{round}', v = v + 1 WHERE id = {row}")
                }
            };
            sql.push_str(&step);
            sql.push(';');
        }
        sql.push_str("COMMIT");
        conn.execute(sql.as_str()).await.unwrap();
    }
    conn.close().await.unwrap();
}

/// pgbench's history insert, twice the same row (and the same rows again every third round).
fn history_insert(client: u64, round: u64) -> String {
    let delta = round % 3;
    format!(
        "INSERT INTO history VALUES ({client}, {delta}, '2026-01-01 00:00:00', NULL), \
           ({client}, {delta}, '2026-01-01 00:00:00', NULL)"
    )
}

/// `history`'s rows with how many times each is there, in one text.
async fn history_counts(url: &str) -> String {
    scalar(
        url,
        "SELECT string_agg(format('%s/%s/%s/%s x%s', tid, delta, at, filler, n), ', ' \
           ORDER BY tid, delta, at, filler) \
         FROM (SELECT tid, delta, at, filler, count(*) AS n FROM history \
               GROUP BY tid, delta, at, filler) AS counted",
    )
    .await
}

/// Every row of `history` is there as many times on both sides, and some more than once.
async fn assert_same_history(pair: &Pair) {
    let source = history_counts(&pair.source.url).await;
    assert_eq!(source, history_counts(&pair.target.url).await);
    let most = scalar(
        &pair.target.url,
        "SELECT max(n)::text FROM (SELECT count(*) AS n FROM history \
         GROUP BY tid, delta, at, filler) AS counted",
    )
    .await;
    assert!(
        most.parse::<u64>().unwrap() > 1,
        "no identical rows: {source}"
    );
}

async fn workload(url: &str, transactions: u64) {
    let sessions: Vec<_> = (0..4)
        .map(|client| tokio::spawn(session(url.to_owned(), client, transactions)))
        .collect();
    for session in sessions {
        session.await.unwrap();
    }
}

/// The pair's capture streaming in large batches (up to 1,000 transactions, 10,000 changes),
/// with `table` locked on the target by the connection returned (its apply waits until that
/// connection rolls back, so the first batches are as large as they may be).
async fn streaming_held(
    pair: &Pair,
    table: &str,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::watch::Receiver<tandem_pgproxy::wal::CaptureStatus>,
    tokio_util::sync::CancellationToken,
    PgConnection,
) {
    let mut config = pair.config(&pair.target.url);
    config.batch_transactions = 1_000;
    config.batch_changes = 10_000;
    let (task, status, shutdown) = start_streaming(config).await;
    let mut holder = PgConnection::connect(&pair.target.url).await.unwrap();
    holder
        .execute(format!("BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE").as_str())
        .await
        .unwrap();
    (task, status, shutdown, holder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_applied_by_sets_end_identical_and_unsafe_tables_take_the_row_path() {
    let pair = Pair::with_schema("tandem_set_apply", SCHEMA, &TABLES).await;
    // Held first, so the first batches are large and change the same rows many times.
    let (task, status, shutdown, mut holder) = streaming_held(&pair, "done").await;
    execute(&pair.source.url, "INSERT INTO done VALUES (0)").await;
    workload(&pair.source.url, 150).await;
    holder.execute("ROLLBACK").await.unwrap();
    holder.close().await.unwrap();
    workload(&pair.source.url, 100).await;
    pair.wait_for_done(1, &status).await;
    pair.assert_identical();
    let now = status.borrow().clone();
    assert_eq!(now.absent_rows, 0, "{now:?}");
    assert!(now.set_statements > 0, "{now:?}");
    let why = |table: &str| now.row_path.get(&format!("public.{table}")).copied();
    assert_eq!(why("child"), Some(Fallback::ForeignKey), "{now:?}");
    assert_eq!(why("parent"), Some(Fallback::ForeignKey), "{now:?}");
    assert_eq!(why("uniq"), Some(Fallback::UniqueIndex), "{now:?}");
    assert_eq!(why("arrays"), Some(Fallback::ColumnType), "{now:?}");
    assert_eq!(why("audit"), Some(Fallback::IdentityFull), "{now:?}");
    for table in ["items", "pairs", "log", "done", "history"] {
        assert_eq!(why(table), None, "{table} took the row path: {now:?}");
    }
    // Some rows ended deleted, some re-inserted with the other side's own values.
    let count = scalar(&pair.target.url, "SELECT count(*)::text FROM items").await;
    assert_ne!(count, "400", "the workload deleted nothing");
    assert_same_history(&pair).await;
    shutdown.cancel();
    task.await.unwrap();
}

/// pgbench's `pgbench_history` (no key, `REPLICA IDENTITY FULL`, only inserted into) alone:
/// every batch is one insert of its rows (`tandem_capture_statements_total{path="set"}`,
/// nothing on the row path nor among `tandem_capture_set_fallbacks_total`), identical rows
/// each there as many times on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_insert_only_full_identity_table_is_applied_by_sets_identical_rows_and_all() {
    const SCHEMA: &str = "
        CREATE TABLE history (tid INT, delta INT, at TIMESTAMP, filler CHAR(22));
        ALTER TABLE history REPLICA IDENTITY FULL;
        CREATE TABLE done (id INT PRIMARY KEY);
    ";
    let pair = Pair::with_schema("tandem_set_full", SCHEMA, &["history", "done"]).await;
    // Held, so that batches hold many transactions, each inserting rows others insert too.
    let (task, status, shutdown, mut holder) = streaming_held(&pair, "history").await;
    let transactions = 4 * 100;
    let sessions: Vec<_> = (0..4)
        .map(|client| {
            let url = pair.source.url.clone();
            tokio::spawn(async move {
                let mut conn = PgConnection::connect(&url).await.unwrap();
                for round in 0..100 {
                    conn.execute(history_insert(client, round).as_str())
                        .await
                        .unwrap();
                }
                conn.close().await.unwrap();
            })
        })
        .collect();
    for session in sessions {
        session.await.unwrap();
    }
    holder.execute("ROLLBACK").await.unwrap();
    holder.close().await.unwrap();
    pair.wait_for_done(1, &status).await;
    pair.assert_identical();
    assert_same_history(&pair).await;
    let now = status.borrow().clone();
    assert!(now.transactions > transactions, "{now:?}");
    assert_eq!(now.row_statements, 0, "{now:?}");
    assert!(now.row_path.is_empty(), "{now:?}");
    // One statement per batch and table, far fewer than the transactions.
    assert!(
        now.set_statements > 0 && now.set_statements < transactions / 2,
        "{now:?}"
    );
    shutdown.cancel();
    task.await.unwrap();
}
