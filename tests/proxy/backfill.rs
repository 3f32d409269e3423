//! `tandem backfill` beside a real dual-write proxy: clients PUT, PATCH, DELETE and re-insert
//! orders of the backfilled range through `tandem proxy` (async mirroring, two orders services:
//! the old one on MariaDB or PostgreSQL, the new one on PostgreSQL) while the backfill copies the
//! old side's history. A trigger on
//! each side logs every change of every order as it happens, with the session that made it; from
//! those logs the test finds any backfill write that took a row of the new side back to an older
//! state (a mirrored write overwritten, a row the mirror had deleted resurrected), and at the end
//! the new side holds exactly the old side's rows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use tandem_testkit::Backfill;

use crate::harness::{Engine, Orders, OrdersDb, Proxy, SqliteControl};

/// Orders of history on the old side.
const ROWS: i64 = 8_000;
/// Clients writing at once, each on its own keys (so each key's writes come one after another).
const LANES: i64 = 4;
/// The `application_name` of the new orders service's sessions: the mirror's writes.
const MIRROR: &str = "orders-new";
/// The `application_name` of the backfill's sessions on the new side.
const BACKFILL: &str = "tandem-backfill";

/// The orders table on PostgreSQL (the orders service's own).
const SCHEMA: &str = "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer TEXT NOT NULL, \
                      amount NUMERIC(12,2) NOT NULL, status TEXT NOT NULL, note TEXT)";

/// Every change of an order, in the order it committed for that order (a row's writers take
/// turns on its lock, and each takes its number while holding it), with the tag of the state it
/// left (the `note`; of a delete: the state deleted) and the session that made it.
const CHANGE_LOG: [&str; 3] = [
    "CREATE TABLE orders_log (seq BIGSERIAL PRIMARY KEY, id BIGINT NOT NULL, op TEXT NOT NULL, \
     tag TEXT, who TEXT NOT NULL DEFAULT current_setting('application_name'))",
    "CREATE FUNCTION log_order() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
       IF TG_OP = 'DELETE' THEN \
         INSERT INTO orders_log (id, op, tag) VALUES (OLD.id, 'delete', OLD.note); RETURN OLD; \
       END IF; \
       INSERT INTO orders_log (id, op, tag) VALUES (NEW.id, lower(TG_OP), NEW.note); RETURN NEW; \
     END $$",
    "CREATE TRIGGER orders_logged AFTER INSERT OR UPDATE OR DELETE ON orders \
     FOR EACH ROW EXECUTE FUNCTION log_order()",
];

/// The orders table on MariaDB (the orders service's own).
const MARIADB_SCHEMA: &str = "CREATE TABLE orders (id BIGINT PRIMARY KEY, \
     customer VARCHAR(255) NOT NULL, amount DECIMAL(12,2) NOT NULL, status VARCHAR(32) NOT NULL, \
     note VARCHAR(10000) NULL) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin";

/// [`CHANGE_LOG`] on MariaDB: a trigger per kind of change, the number taken (`AUTO_INCREMENT`)
/// while the row's lock is held. Only the new side's sessions are told apart.
const MARIADB_CHANGE_LOG: [&str; 4] = [
    "CREATE TABLE orders_log (seq BIGINT AUTO_INCREMENT PRIMARY KEY, id BIGINT NOT NULL, \
     op VARCHAR(8) NOT NULL, tag VARCHAR(10000), who VARCHAR(64) NOT NULL DEFAULT '')",
    "CREATE TRIGGER orders_inserted AFTER INSERT ON orders FOR EACH ROW \
     INSERT INTO orders_log (id, op, tag) VALUES (NEW.id, 'insert', NEW.note)",
    "CREATE TRIGGER orders_updated AFTER UPDATE ON orders FOR EACH ROW \
     INSERT INTO orders_log (id, op, tag) VALUES (NEW.id, 'update', NEW.note)",
    "CREATE TRIGGER orders_deleted AFTER DELETE ON orders FOR EACH ROW \
     INSERT INTO orders_log (id, op, tag) VALUES (OLD.id, 'delete', OLD.note)",
];

/// The orders table on `engine` holding `rows` orders of history (tagged `h<id>`), then its
/// change log.
fn history(engine: Engine, rows: i64) -> Vec<String> {
    let (schema, history, log): (&str, String, &[&str]) = match engine {
        Engine::Postgres => (
            SCHEMA,
            format!(
                "INSERT INTO orders SELECT g, 'customer' || g, (g % 997) + 0.5, 'open', \
                 'h' || g FROM generate_series(1, {rows}) g"
            ),
            &CHANGE_LOG,
        ),
        Engine::MariaDb => (
            MARIADB_SCHEMA,
            format!(
                "INSERT INTO orders SELECT seq, CONCAT('customer', seq), (seq % 997) + 0.5, \
                 'open', CONCAT('h', seq) FROM seq_1_to_{rows}"
            ),
            &MARIADB_CHANGE_LOG,
        ),
        Engine::Sqlite => unreachable!("the backfill's sides here are MariaDB and PostgreSQL"),
    };
    let mut statements = vec![schema.to_owned(), history];
    statements.extend(log.iter().map(|statement| (*statement).to_owned()));
    statements
}

/// Every order on `engine`, as text, by key.
async fn rows(
    engine: Engine,
    pool: &AnyPool,
) -> Vec<(i64, String, String, String, Option<String>)> {
    let amount = match engine {
        Engine::MariaDb => "CAST(amount AS CHAR)",
        _ => "CAST(amount AS TEXT)",
    };
    sqlx::query_as(&format!(
        "SELECT id, customer, {amount} AS amount, status, note FROM orders ORDER BY id"
    ))
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Holds each backfill write transaction on the new side for 400 ms at its first statement,
/// after the backfill read both sides and before its write takes effect: live writes landing
/// in that gap are what a write that is not conditional would overwrite. (Without it the gap is
/// a few milliseconds and the race is left to chance.)
const HOLD_BACKFILL_WRITES: [&str; 2] = [
    "CREATE FUNCTION hold_backfill() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
       IF current_setting('application_name') = 'tandem-backfill' \
          AND current_setting('test.held', true) IS DISTINCT FROM 'yes' THEN \
         PERFORM set_config('test.held', 'yes', true); PERFORM pg_sleep(0.4); \
       END IF; RETURN NULL; END $$",
    "CREATE TRIGGER backfill_held BEFORE INSERT OR UPDATE OR DELETE ON orders \
     FOR EACH STATEMENT EXECUTE FUNCTION hold_backfill()",
];

async fn pool(url: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap()
}

async fn exec<S: AsRef<str>>(pool: &AnyPool, statements: &[S]) {
    for statement in statements {
        sqlx::query(statement.as_ref()).execute(pool).await.unwrap();
    }
}

/// A URL whose sessions carry `application_name = name`.
fn named(url: &str, name: &str) -> String {
    format!("{url}?application_name={name}")
}

/// One client: writes its lane's keys through the proxy until `stop`, each write tagging the
/// state it leaves with a number no other write uses. Returns how many writes it made.
async fn client(proxy: String, lane: i64, tags: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> u64 {
    let http = reqwest::Client::new();
    let keys = ROWS / LANES;
    let mut present = vec![true; usize::try_from(keys).unwrap()];
    let (mut step, mut writes) = (0_i64, 0_u64);
    while !stop.load(Ordering::Relaxed) {
        step += 1;
        // Keys spread over the whole range, so some are written before, during and after
        // their chunk is copied.
        let index = (step * 7_919) % keys;
        let id = index * LANES + lane + 1;
        let url = format!("{proxy}/orders/{id}");
        let tag = || format!("w{}", tags.fetch_add(1, Ordering::Relaxed));
        let slot = &mut present[usize::try_from(index).unwrap()];
        let put = |tag: String| {
            http.put(&url).json(&json!({
                "customer": format!("c{tag}"), "amount": format!("{}.25", step % 1000),
                "status": "put", "note": tag,
            }))
        };
        let mut requests = Vec::new();
        match (*slot, step % 5) {
            // A row deleted earlier comes back.
            (false, _) => requests.push((put(tag()), StatusCode::OK)),
            (true, 0) => requests.push((put(tag()), StatusCode::OK)),
            (true, 1 | 4) => requests.push((
                http.patch(&url)
                    .json(&json!({"status": format!("s{step}"), "note": tag()})),
                StatusCode::OK,
            )),
            // Deleted and at once inserted again.
            (true, 2) => {
                requests.push((http.delete(&url), StatusCode::NO_CONTENT));
                requests.push((put(tag()), StatusCode::OK));
            }
            (true, _) => requests.push((http.delete(&url), StatusCode::NO_CONTENT)),
        }
        for (request, expected) in requests {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), expected, "{url}");
            *slot = expected == StatusCode::OK;
            writes += 1;
        }
    }
    writes
}

/// One logged change.
struct Change {
    id: i64,
    op: String,
    tag: Option<String>,
    who: String,
}

async fn changes(pool: &AnyPool) -> Vec<Change> {
    sqlx::query("SELECT id, op, tag, who FROM orders_log ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|row| Change {
            id: row.get("id"),
            op: row.get("op"),
            tag: row.get("tag"),
            who: row.get("who"),
        })
        .collect()
}

/// What the backfill's writes did to the new side, judged against the old side's history.
#[derive(Debug, Default)]
struct Verdict {
    /// Backfill writes that replaced a row with an older state than it held.
    overwritten: Vec<String>,
    /// Backfill inserts of a row the new side had seen deleted at a newer state.
    resurrected: Vec<String>,
    /// Backfill deletes of a row the old side still holds at that state or a newer one.
    deleted_live: Vec<String>,
    /// Rows the backfill wrote on the new side.
    backfill_writes: u64,
    /// Changes the mirror made on the new side.
    mirror_writes: u64,
}

/// Replays the new side's change log against the old side's: each state of an order is placed
/// by where its tag stands in the old side's history of that order (history rows first, then
/// each write as it committed on old; a deletion at the first delete on old after the state
/// deleted). Any backfill change that moves an order backwards is a finding. The mirror's own
/// changes may move backwards for a moment (async copies of older writes landing after a
/// backfill write copied a newer state) and are only counted.
fn judge(old: &[Change], new: &[Change]) -> Verdict {
    let mut position: HashMap<&str, i64> = HashMap::new();
    let mut deletes: HashMap<i64, Vec<i64>> = HashMap::new();
    for (at, change) in (1_i64..).zip(old) {
        match (change.op.as_str(), change.tag.as_deref()) {
            ("delete", _) => deletes.entry(change.id).or_default().push(at),
            (_, Some(tag)) => {
                position.insert(tag, at);
            }
            (_, None) => {}
        }
    }
    let place = |tag: Option<&str>| match tag {
        Some(tag) if tag.starts_with('h') => 0,
        Some(tag) => *position
            .get(tag)
            .unwrap_or_else(|| panic!("state {tag} on new never existed on old")),
        None => panic!("a state without a tag on new"),
    };
    let mut verdict = Verdict::default();
    let mut state: HashMap<i64, i64> = HashMap::new();
    for change in new {
        let before = state.get(&change.id).copied().unwrap_or(-1);
        let after = if change.op == "delete" {
            let deleted = place(change.tag.as_deref());
            let deletion = deletes
                .get(&change.id)
                .and_then(|at| at.iter().copied().find(|&at| at > deleted));
            if deletion.is_none() && change.who == BACKFILL {
                verdict.deleted_live.push(format!(
                    "order {}: the backfill deleted state {:?}, which old never deleted",
                    change.id, change.tag
                ));
            }
            deletion.unwrap_or(deleted + 1)
        } else {
            place(change.tag.as_deref())
        };
        match change.who.as_str() {
            BACKFILL => {
                verdict.backfill_writes += 1;
                if after < before {
                    let what = format!(
                        "order {}: the backfill's {} of state {:?} (at {after} in old's history) \
                         replaced one at {before}",
                        change.id, change.op, change.tag
                    );
                    if change.op == "insert" {
                        verdict.resurrected.push(what);
                    } else {
                        verdict.overwritten.push(what);
                    }
                }
            }
            MIRROR => verdict.mirror_writes += 1,
            other => panic!("order {} changed on new by {other:?}", change.id),
        }
        state.insert(change.id, after);
    }
    verdict
}

/// Clients write through a dual-write proxy over the old side (on `engine`) and a PostgreSQL
/// new side while the backfill runs: no backfill write takes a row of the new side back, and
/// the sides end identical row for row and by `tandem compare`.
async fn backfill_under_live_traffic(engine: Engine) {
    let (old_db, new_db) = (
        OrdersDb::create(engine).await,
        OrdersDb::create(Engine::Postgres).await,
    );
    let (old_url, new_url) = (old_db.url(), new_db.url());
    let (old, new) = (pool(&old_url).await, pool(&new_url).await);
    exec(&old, &history(engine, ROWS)).await;
    exec(&new, &[SCHEMA]).await;
    exec(&new, &CHANGE_LOG).await;
    exec(&new, &HOLD_BACKFILL_WRITES).await;

    let old_orders = Orders::start_with_url(&old_url, "127.0.0.1:0");
    let new_orders = Orders::start_with_url(&named(&new_url, MIRROR), "127.0.0.1:0");
    let control = SqliteControl::new();
    let proxy = Proxy::start(&old_orders.url, &new_orders.url, &control.url, &[]);
    proxy.set_stage("dual-write").await;

    let (tags, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let clients: Vec<_> = (0..LANES)
        .map(|lane| {
            let (tags, stop) = (Arc::clone(&tags), Arc::clone(&stop));
            tokio::spawn(client(proxy.url.clone(), lane, tags, stop))
        })
        .collect();
    while tags.load(Ordering::Relaxed) < 50 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let store = tempfile::tempdir().unwrap();
    let backfill_store = format!("sqlite://{}", store.path().join("backfill.db").display());
    let backfill = Backfill::new(&old_url, &named(&new_url, BACKFILL), &backfill_store)
        .table("orders")
        .chunk_rows(400)
        .args(&[
            "--threads",
            "2",
            "--recheck",
            "3",
            "--recheck-delay",
            "300ms",
        ]);
    let run = tokio::task::spawn_blocking(move || backfill.output())
        .await
        .unwrap();
    let written_during = tags.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut writes = 0;
    for client in clients {
        writes += client.await.unwrap();
    }
    let report: Value = serde_json::from_slice(&run.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&run.stderr)));
    assert_eq!(run.status.code(), Some(0), "{report}");
    assert!(
        written_during > 200,
        "clients wrote while the backfill ran ({written_during} writes)"
    );
    proxy.drained().await;

    let verdict = judge(&changes(&old).await, &changes(&new).await);
    eprintln!("{verdict:?}\nbackfill: {report}\nclient writes: {writes}");
    assert!(verdict.backfill_writes >= ROWS as u64 / 2, "{verdict:?}");
    assert!(verdict.mirror_writes > 100, "{verdict:?}");
    assert!(
        verdict.overwritten.is_empty()
            && verdict.resurrected.is_empty()
            && verdict.deleted_live.is_empty(),
        "the backfill moved rows of the new side backwards: {verdict:#?}"
    );
    // The race was run: live writes landed between the backfill's reads and its writes: its conditional writes
    // found rows changed meanwhile (or a bulk insert found a key taken) and gave way.
    assert!(
        report["tables"][0]["conflicts"].as_u64().unwrap() > 0,
        "the traffic raced the backfill's writes: {report}"
    );

    // Row by row, the new side holds what the old side holds, and compare agrees.
    let (old_rows, new_rows) = (rows(engine, &old).await, rows(Engine::Postgres, &new).await);
    assert_eq!(old_rows.len(), new_rows.len());
    for (old_row, new_row) in old_rows.iter().zip(&new_rows) {
        assert_eq!(old_row, new_row);
    }
    old.close().await;
    new.close().await;
    let compared = crate::harness::tandem(&[
        "compare",
        "--old",
        &old_url,
        "--new",
        &new_url,
        "--table",
        "orders",
        "--recheck",
        "0",
        "--format",
        "json",
    ]);
    assert_eq!(
        compared.status.code(),
        Some(0),
        "compare finds the sides identical: {}",
        String::from_utf8_lossy(&compared.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_under_live_traffic_through_the_proxy_ends_exact() {
    backfill_under_live_traffic(Engine::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_from_mariadb_under_live_traffic_through_the_proxy_ends_exact() {
    backfill_under_live_traffic(Engine::MariaDb).await;
}
