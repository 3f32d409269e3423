//! Capture from the write-ahead log (`tandem_pgproxy::wal`) against a real PostgreSQL with
//! `wal_level = logical` (`scripts/ensure-logical-pg`): concurrent sessions' committed
//! transactions arrive whole, exactly once, in commit order, rolled-back ones never; a
//! confirmed position never comes again after a crash of the reader, everything after it
//! does; set-up problems are typed errors that say the fix. Every test drops its slots (a slot
//! keeps write-ahead log, and a database with one cannot be dropped).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};
use tandem_control::Side;
use tandem_pgproxy::wal::{
    drop_slot, CaptureSettings, Captured, Change, Column, Hurry, Lsn, OldRow, PublishedTables,
    ReplicationStream, Transaction, Tuple, WalError,
};
use tandem_testkit::{unique_name, PostgresDb, PostgresRole};

/// A replication slot dropped when the test ends (declared after its database, so it is
/// dropped first).
pub(crate) struct SlotGuard {
    url: String,
    pub(crate) name: String,
}

impl SlotGuard {
    /// A fresh slot name for `prefix`, after dropping slots a crashed earlier run left with
    /// that prefix.
    pub(crate) async fn new(db: &PostgresDb, prefix: &str) -> SlotGuard {
        let mut conn = PgConnection::connect(&cluster_url(&db.url)).await.unwrap();
        sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE starts_with(slot_name, $1) AND NOT active",
        )
        .bind(format!("{prefix}_"))
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        SlotGuard {
            url: db.url.clone(),
            name: unique_name(prefix),
        }
    }
}

impl SlotGuard {
    /// A guard for the slot `name` someone else creates (dropped at the end if it exists).
    pub(crate) fn named(db: &PostgresDb, name: &str) -> SlotGuard {
        SlotGuard {
            url: db.url.clone(),
            name: name.to_owned(),
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        let dropped = tandem_testkit::run_apart(move || async move {
            tokio::time::timeout(Duration::from_secs(20), drop_slot(Side::Old, &url, &name))
                .await
                .ok()?
                .ok()
        });
        if dropped.is_none() {
            eprintln!("warning: could not drop replication slot {}", self.name);
        }
    }
}

/// The URL of the `postgres` database of the cluster `url` is on.
fn cluster_url(url: &str) -> String {
    format!("{}/postgres", url.rsplit_once('/').unwrap().0)
}

pub(crate) fn settings(db: &PostgresDb, slot: &SlotGuard, tables: &[&str]) -> CaptureSettings {
    CaptureSettings {
        side: Side::Old,
        url: db.url.clone(),
        slot: slot.name.clone(),
        publication: format!("{}_pub", slot.name),
        tables: PublishedTables::Only(tables.iter().map(|table| (*table).to_owned()).collect()),
        start: Lsn(0),
        messages: false,
        hurry: Hurry::default(),
    }
}

pub(crate) async fn execute(url: &str, sql: &str) {
    let mut conn = PgConnection::connect(url).await.unwrap();
    conn.execute(sql).await.unwrap();
    conn.close().await.unwrap();
}

async fn next_captured(stream: &mut ReplicationStream) -> Captured {
    tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("no transaction within 30 s")
        .unwrap()
}

async fn next_transaction(stream: &mut ReplicationStream) -> Transaction {
    match next_captured(stream).await {
        Captured::Transaction(transaction) => transaction,
        other => panic!("not a whole transaction: {other:?}"),
    }
}

/// Opens a stream, waiting while the slot is still held by a reader that just went away.
async fn open_when_free(settings: &CaptureSettings) -> ReplicationStream {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match ReplicationStream::open(settings).await {
            Err(WalError::SlotActive { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other.unwrap(),
        }
    }
}

/// A column's value: `None` for an unchanged TOASTed value, `Some(None)` for NULL.
type Value = Option<Option<String>>;
/// A row as the model keeps it: text values, NULL as `None`.
type Row = Vec<Option<String>>;

fn values(tuple: &Tuple) -> Vec<Value> {
    tuple
        .0
        .iter()
        .map(|column| match column {
            Column::Null => Some(None),
            Column::UnchangedToast => None,
            Column::Text(text) => Some(Some(String::from_utf8(text.to_vec()).unwrap())),
            Column::Binary(_) => panic!("a binary value on a text stream"),
        })
        .collect()
}

fn full_row(tuple: &Tuple) -> Row {
    values(tuple)
        .into_iter()
        .map(|value| value.expect("an unchanged TOAST value where a whole row is due"))
        .collect()
}

/// The two tables as the captured changes leave them, applied in the order they came.
#[derive(Debug, Default)]
struct Model {
    /// `accounts` by id.
    accounts: BTreeMap<String, Row>,
    /// `events` (no key: a multiset).
    events: Vec<Row>,
    /// Counter values (`accounts` id 0) in the order their updates came.
    counter: Vec<i64>,
    unchanged_toast: usize,
    old_keys: usize,
    old_rows: usize,
    truncates: usize,
}

impl Model {
    fn apply(&mut self, transaction: &Transaction) {
        let table = |oid: u32| transaction.relation(oid).unwrap().name.clone();
        for change in &transaction.changes {
            match change {
                Change::Insert(insert) => match table(insert.relation).as_str() {
                    "accounts" => {
                        let row = full_row(&insert.new);
                        let key = row[0].clone().unwrap();
                        assert!(
                            self.accounts.insert(key, row).is_none(),
                            "insert of a taken id"
                        );
                    }
                    _ => self.events.push(full_row(&insert.new)),
                },
                Change::Update(update) => match table(update.relation).as_str() {
                    "accounts" => {
                        let new = values(&update.new);
                        let key = match &update.old {
                            Some(OldRow::Key(old)) => {
                                self.old_keys += 1;
                                full_row(old)[0].clone().unwrap()
                            }
                            Some(OldRow::Full(_)) => {
                                panic!("accounts has REPLICA IDENTITY DEFAULT")
                            }
                            None => new[0].clone().unwrap().unwrap(),
                        };
                        let old = self
                            .accounts
                            .remove(&key)
                            .unwrap_or_else(|| panic!("update of account {key}, not there"));
                        let row: Row = new
                            .into_iter()
                            .zip(old)
                            .map(|(new, old)| {
                                new.unwrap_or_else(|| {
                                    self.unchanged_toast += 1;
                                    old
                                })
                            })
                            .collect();
                        if row[0].as_deref() == Some("0") {
                            self.counter
                                .push(row[1].as_deref().unwrap().parse().unwrap());
                        }
                        self.accounts.insert(row[0].clone().unwrap(), row);
                    }
                    _ => {
                        let Some(OldRow::Full(old)) = &update.old else {
                            panic!("events has REPLICA IDENTITY FULL: {update:?}");
                        };
                        self.old_rows += 1;
                        let old = full_row(old);
                        let at = self.events.iter().position(|row| *row == old).unwrap();
                        self.events[at] = full_row(&update.new);
                    }
                },
                Change::Delete(delete) => match (table(delete.relation).as_str(), &delete.old) {
                    ("accounts", OldRow::Key(old)) => {
                        self.old_keys += 1;
                        let key = full_row(old)[0].clone().unwrap();
                        assert!(self.accounts.remove(&key).is_some(), "delete of {key}");
                    }
                    ("events", OldRow::Full(old)) => {
                        self.old_rows += 1;
                        let old = full_row(old);
                        let at = self.events.iter().position(|row| *row == old).unwrap();
                        self.events.remove(at);
                    }
                    other => panic!("unexpected delete {other:?}"),
                },
                Change::Truncate(truncate) => {
                    self.truncates += 1;
                    for oid in &truncate.relations {
                        match table(*oid).as_str() {
                            "accounts" => self.accounts.clear(),
                            _ => self.events.clear(),
                        }
                    }
                }
                Change::Message(message) => panic!("no messages were asked for: {message:?}"),
                Change::Relation(shape) => panic!("no table changed its shape: {shape:?}"),
            }
        }
    }
}

/// A small deterministic generator (xorshift), one per writer.
struct Dice(u64);

impl Dice {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// What a writer's transaction did, as the client saw it end.
#[derive(Debug)]
struct Outcome {
    xid: i64,
    committed: bool,
    /// Rows it changed, plus one per TRUNCATE.
    changes: u64,
}

/// A big note, stored out of line (`accounts.note` has `STORAGE EXTERNAL`), so updates that
/// leave it alone send it as an unchanged TOAST value.
fn big_note(id: i64) -> String {
    format!("{id}:{}", "x".repeat(12_000))
}

/// One writer: `transactions` transactions of random inserts, updates (key changes
/// included), deletes and truncates on both tables; some roll back, some fail.
async fn writer(url: String, writer: i64, transactions: usize) -> Vec<Outcome> {
    // Writer 1's fourth transaction is a TRUNCATE alone; it may lose a deadlock against the
    // others, so it is tried until it commits.
    let truncates = |number: usize| writer == 1 && number == 3;
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let mut dice = Dice(0x9E37_79B9_7F4A_7C15 ^ ((writer as u64 + 1) * 0x1000_0001));
    let mut ids: Vec<i64> = Vec::new();
    let mut next_id = writer * 100_000 + 1;
    let tag = format!("w{writer}");
    let mut outcomes = Vec::new();
    let mut number = 0;
    while number < transactions {
        conn.execute("BEGIN").await.unwrap();
        let xid: i64 = sqlx::query_scalar("SELECT (txid_current() % 4294967296)::bigint")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let mut pending = ids.clone();
        let mut changes = 0;
        let mut failed = false;
        // The first transactions do what the checks need at least once: a TOASTed note, an
        // update that leaves it alone, a key change, a TRUNCATE alone in its transaction.
        let steps: Vec<u64> = match number {
            0 => vec![0],
            1 => vec![1],
            2 => vec![2, 4],
            3 if truncates(number) => vec![7],
            _ => (0..=dice.below(3)).map(|_| dice.below(7)).collect(),
        };
        if number > 3 && dice.below(2) == 0 {
            let counter: Result<i32, _> =
                sqlx::query_scalar("UPDATE accounts SET n = n + 1 WHERE id = 0 RETURNING n")
                    .fetch_one(&mut conn)
                    .await;
            match counter {
                Ok(_) => changes += 1,
                Err(_) => failed = true,
            }
        }
        for step in steps {
            if failed {
                break;
            }
            let result = match step {
                0 => {
                    let id = next_id;
                    next_id += 1;
                    pending.push(id);
                    let note = match dice.below(3) {
                        0 => None,
                        1 => Some(format!("small {id}")),
                        _ => Some(big_note(id)),
                    };
                    let note = if number == 0 {
                        Some(big_note(id))
                    } else {
                        note
                    };
                    sqlx::query("INSERT INTO accounts VALUES ($1, $2, $3)")
                        .bind(i32::try_from(id).unwrap())
                        .bind(i32::try_from(dice.below(1000)).unwrap())
                        .bind(note)
                        .execute(&mut conn)
                        .await
                }
                1..=3 if pending.is_empty() => continue,
                1 => {
                    let id = pending[dice.below(pending.len() as u64) as usize];
                    sqlx::query("UPDATE accounts SET n = n + 7 WHERE id = $1")
                        .bind(i32::try_from(id).unwrap())
                        .execute(&mut conn)
                        .await
                }
                2 => {
                    let at = dice.below(pending.len() as u64) as usize;
                    let (old, new) = (pending[at], next_id);
                    next_id += 1;
                    pending[at] = new;
                    sqlx::query("UPDATE accounts SET id = $2, n = n - 1 WHERE id = $1")
                        .bind(i32::try_from(old).unwrap())
                        .bind(i32::try_from(new).unwrap())
                        .execute(&mut conn)
                        .await
                }
                3 => {
                    let id = pending.swap_remove(dice.below(pending.len() as u64) as usize);
                    sqlx::query("DELETE FROM accounts WHERE id = $1")
                        .bind(i32::try_from(id).unwrap())
                        .execute(&mut conn)
                        .await
                }
                4 => {
                    sqlx::query("INSERT INTO events VALUES ($1, $2, '\\x00ff'::bytea)")
                        .bind(&tag)
                        .bind(i32::try_from(dice.below(4)).unwrap())
                        .execute(&mut conn)
                        .await
                }
                5 => {
                    sqlx::query("UPDATE events SET n = n + 10 WHERE tag = $1 AND n = $2")
                        .bind(&tag)
                        .bind(i32::try_from(dice.below(4)).unwrap())
                        .execute(&mut conn)
                        .await
                }
                6 => {
                    sqlx::query("DELETE FROM events WHERE tag = $1 AND n >= $2")
                        .bind(&tag)
                        .bind(i32::try_from(dice.below(20)).unwrap())
                        .execute(&mut conn)
                        .await
                }
                _ => {
                    changes += 1;
                    sqlx::query("TRUNCATE events").execute(&mut conn).await
                }
            };
            match result {
                Ok(done) => changes += done.rows_affected(),
                // A deadlock with another writer (or the duplicate below): it rolls back.
                Err(_) => failed = true,
            }
        }
        if !failed && number > 3 && dice.below(12) == 0 {
            // Fails: id 0 is taken.
            failed = sqlx::query("INSERT INTO accounts VALUES (0, 0, NULL)")
                .execute(&mut conn)
                .await
                .is_err();
        }
        let commit = !failed && (number < 4 || dice.below(6) != 0);
        if commit {
            conn.execute("COMMIT").await.unwrap();
            ids = pending;
        } else {
            conn.execute("ROLLBACK").await.unwrap();
        }
        outcomes.push(Outcome {
            xid,
            committed: commit,
            changes,
        });
        if commit || !truncates(number) {
            number += 1;
        }
    }
    conn.close().await.unwrap();
    outcomes
}

async fn table_rows(url: &str, sql: &str) -> Vec<Row> {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let rows: Vec<(Option<String>, Option<String>, Option<String>)> =
        sqlx::query_as(sql).fetch_all(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    let mut rows: Vec<Row> = rows.into_iter().map(|(a, b, c)| vec![a, b, c]).collect();
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transactions_arrive_whole_once_each_in_commit_order() {
    let db = PostgresDb::create_logical("tandem_wal_order", false).await;
    let slot = SlotGuard::new(&db, "tandem_wal_order").await;
    execute(
        &db.url,
        "CREATE TABLE accounts (id int PRIMARY KEY, n int NOT NULL, note text);
         ALTER TABLE accounts ALTER note SET STORAGE EXTERNAL;
         CREATE TABLE events (tag text, n int, payload bytea);
         ALTER TABLE events REPLICA IDENTITY FULL;
         INSERT INTO accounts VALUES (0, 0, NULL);",
    )
    .await;
    let mut stream = ReplicationStream::open(&settings(&db, &slot, &["public.accounts", "events"]))
        .await
        .unwrap();

    const WRITERS: i64 = 8;
    const TRANSACTIONS: usize = 50;
    let url = db.url.clone();
    let writers = tokio::spawn(async move {
        let tasks: Vec<_> = (0..WRITERS)
            .map(|number| tokio::spawn(writer(url.clone(), number, TRANSACTIONS)))
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.extend(task.await.unwrap());
        }
        // The last transaction: everything committed before it comes before it.
        execute(&url, "INSERT INTO events VALUES ('end', 0, NULL)").await;
        outcomes
    });

    // Read while the writers write; the model starts from the rows that predate the slot.
    let mut model = Model::default();
    model
        .accounts
        .insert("0".into(), vec![Some("0".into()), Some("0".into()), None]);
    let mut captured: Vec<Transaction> = Vec::new();
    loop {
        let transaction = next_transaction(&mut stream).await;
        model.apply(&transaction);
        let end = model
            .events
            .iter()
            .any(|row| row[0].as_deref() == Some("end"));
        captured.push(transaction);
        if end {
            break;
        }
    }
    let outcomes = writers.await.unwrap();
    // Nothing comes after the last transaction.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), stream.next())
            .await
            .is_err(),
        "a transaction after the last one"
    );

    // Commit order: positions strictly increase.
    for pair in captured.windows(2) {
        assert!(
            pair[0].commit.end_lsn <= pair[1].commit.commit_lsn,
            "{pair:?}"
        );
    }
    for transaction in &captured {
        assert_eq!(transaction.begin.final_lsn, transaction.commit.commit_lsn);
        assert!(transaction.commit.end_lsn > transaction.commit.commit_lsn);
    }
    // Exactly the committed transactions, each once and whole; no rolled-back one.
    let captured = &captured[..captured.len() - 1];
    let mut by_xid: HashMap<i64, usize> = HashMap::new();
    for transaction in captured {
        let changes = transaction.changes.len();
        assert!(
            by_xid
                .insert(i64::from(transaction.begin.xid), changes)
                .is_none(),
            "xid {} came twice",
            transaction.begin.xid
        );
    }
    let committed: BTreeMap<i64, u64> = outcomes
        .iter()
        .filter(|outcome| outcome.committed && outcome.changes > 0)
        .map(|outcome| (outcome.xid, outcome.changes))
        .collect();
    let rolled_back: BTreeSet<i64> = outcomes
        .iter()
        .filter(|outcome| !outcome.committed)
        .map(|outcome| outcome.xid)
        .collect();
    assert!(!rolled_back.is_empty(), "the workload rolled nothing back");
    for xid in &rolled_back {
        assert!(
            !by_xid.contains_key(xid),
            "rolled-back xid {xid} was captured"
        );
    }
    assert_eq!(
        by_xid.keys().copied().collect::<BTreeSet<_>>(),
        committed.keys().copied().collect::<BTreeSet<_>>()
    );
    for (xid, changes) in &committed {
        assert_eq!(by_xid[xid] as u64, *changes, "changes of xid {xid}");
    }
    // The counter went up by one per captured update: the updates came in commit order.
    assert!(model.counter.len() > 10, "{:?}", model.counter);
    assert_eq!(
        model.counter,
        (1..=model.counter.len() as i64).collect::<Vec<_>>()
    );
    // Every kind of change was seen.
    assert!(model.unchanged_toast > 0 && model.old_keys > 0 && model.old_rows > 0);
    assert!(model.truncates > 0);
    // Applied in the order they came, the changes leave the tables as they are.
    let accounts = table_rows(&db.url, "SELECT id::text, n::text, note FROM accounts").await;
    let mut model_accounts: Vec<Row> = model.accounts.into_values().collect();
    model_accounts.sort();
    assert_eq!(model_accounts, accounts);
    let events = table_rows(&db.url, "SELECT tag, n::text, payload::text FROM events").await;
    model.events.sort();
    assert_eq!(model.events, events);
    drop(stream);
}

/// The ids the transactions inserted into `items`, with their commit's end.
fn inserted(transaction: &Transaction) -> (i64, Lsn) {
    let [Change::Insert(insert)] = transaction.changes.as_slice() else {
        panic!("not one insert: {transaction:?}");
    };
    let id = full_row(&insert.new)[0].clone().unwrap().parse().unwrap();
    (id, transaction.commit.end_lsn)
}

async fn slot_state(db: &PostgresDb, slot: &SlotGuard) -> (String, bool) {
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let state = sqlx::query_as(
        "SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(&slot.name)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    state
}

/// The slot's confirmed position once no reader holds it.
async fn confirmed_when_inactive(db: &PostgresDb, slot: &SlotGuard) -> String {
    for _ in 0..300 {
        let (confirmed, active) = slot_state(db, slot).await;
        if !active {
            return confirmed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the slot stayed active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_the_confirmed_never_comes_again_and_the_rest_does() {
    let db = PostgresDb::create_logical("tandem_wal_resume", false).await;
    let slot = SlotGuard::new(&db, "tandem_wal_resume").await;
    execute(&db.url, "CREATE TABLE items (id int PRIMARY KEY, v text)").await;
    let settings = settings(&db, &slot, &["items"]);
    let mut first = ReplicationStream::open(&settings).await.unwrap();
    for id in 1..=10 {
        execute(
            &db.url,
            &format!("INSERT INTO items VALUES ({id}, 'v{id}')"),
        )
        .await;
    }
    let mut ends = Vec::new();
    for id in 1..=10 {
        let (got, end) = inserted(&next_transaction(&mut first).await);
        assert_eq!(got, id);
        ends.push(end);
    }
    first.confirm(ends[3]).await.unwrap();
    // Confirmation never goes backwards.
    first.confirm(ends[1]).await.unwrap();
    assert_eq!(first.confirmed(), ends[3]);
    // A crash: the connection goes away without a word.
    drop(first);
    assert_eq!(
        confirmed_when_inactive(&db, &slot).await,
        ends[3].to_string()
    );

    // The slot resumes after the confirmed transaction: 5 to 10 again, then what is new.
    let mut second = open_when_free(&settings).await;
    for id in 5..=10 {
        assert_eq!(inserted(&next_transaction(&mut second).await).0, id);
    }
    execute(&db.url, "INSERT INTO items VALUES (11, 'v11')").await;
    let (eleven, _) = inserted(&next_transaction(&mut second).await);
    assert_eq!(eleven, 11);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), second.next())
            .await
            .is_err(),
        "more than was committed"
    );
    second.close().await.unwrap();
    // Reading is not confirming: the slot still stands where the caller confirmed.
    assert_eq!(
        confirmed_when_inactive(&db, &slot).await,
        ends[3].to_string()
    );

    // A start past the slot (what the target says it applied) skips up to there.
    let mut third = open_when_free(&CaptureSettings {
        start: ends[6],
        ..settings.clone()
    })
    .await;
    for id in 8..=11 {
        assert_eq!(inserted(&next_transaction(&mut third).await).0, id);
    }
    // Nobody may confirm what the server has not sent.
    let ahead = third.confirm(Lsn(u64::MAX)).await.unwrap_err();
    assert!(matches!(ahead, WalError::ConfirmAhead { .. }), "{ahead}");
    third.close().await.unwrap();
    assert_eq!(
        confirmed_when_inactive(&db, &slot).await,
        ends[3].to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_truncate_options_and_ddl_inside_a_transaction_arrive() {
    let db = PostgresDb::create_logical("tandem_wal_messages", false).await;
    let slot = SlotGuard::new(&db, "tandem_wal_messages").await;
    execute(
        &db.url,
        "CREATE TABLE parent (id serial PRIMARY KEY);
         CREATE TABLE child (id int REFERENCES parent);",
    )
    .await;
    let mut stream = ReplicationStream::open(&CaptureSettings {
        messages: true,
        hurry: Hurry::default(),
        tables: PublishedTables::All,
        ..settings(&db, &slot, &[])
    })
    .await
    .unwrap();
    execute(
        &db.url,
        "SELECT pg_logical_emit_message(false, 'tandem', 'at once')",
    )
    .await;
    execute(
        &db.url,
        "BEGIN;
         INSERT INTO parent DEFAULT VALUES;
         SELECT pg_logical_emit_message(true, 'tandem', '\\x00ff'::bytea);
         COMMIT;",
    )
    .await;
    execute(&db.url, "TRUNCATE parent RESTART IDENTITY CASCADE").await;
    execute(
        &db.url,
        "BEGIN;
         INSERT INTO parent DEFAULT VALUES;
         ALTER TABLE parent ADD COLUMN note text;
         INSERT INTO parent (note) VALUES ('wider');
         COMMIT;",
    )
    .await;
    let Captured::Message(message) = next_captured(&mut stream).await else {
        panic!("not the message outside a transaction");
    };
    assert!(!message.transactional);
    assert_eq!(
        (message.prefix.as_str(), message.content.as_ref()),
        ("tandem", &b"at once"[..])
    );
    let transaction = next_transaction(&mut stream).await;
    let [Change::Insert(_), Change::Message(message)] = transaction.changes.as_slice() else {
        panic!("{transaction:?}");
    };
    assert!(message.transactional);
    assert_eq!(message.content.as_ref(), [0x00, 0xff]);
    let truncated = next_transaction(&mut stream).await;
    let [Change::Truncate(truncate)] = truncated.changes.as_slice() else {
        panic!("{truncated:?}");
    };
    assert!(truncate.cascade && truncate.restart_identity);
    let mut names: Vec<&str> = truncate
        .relations
        .iter()
        .map(|oid| truncated.relation(*oid).unwrap().name.as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["child", "parent"]);
    // DDL inside a transaction: the changes after it come with the new shape.
    let reshaped = next_transaction(&mut stream).await;
    let [Change::Insert(before), Change::Relation(shape), Change::Insert(after)] =
        reshaped.changes.as_slice()
    else {
        panic!("{reshaped:?}");
    };
    assert_eq!(reshaped.relation(before.relation).unwrap().columns.len(), 1);
    assert_eq!(before.new.0.len(), 1);
    let columns: Vec<&str> = shape.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(columns, ["id", "note"]);
    assert_eq!(values(&after.new)[1], Some(Some("wider".to_owned())));
    stream.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_publication_stops_the_stream_with_the_fix() {
    let db = PostgresDb::create_logical("tandem_wal_nopub", false).await;
    let slot = SlotGuard::new(&db, "tandem_wal_nopub").await;
    execute(&db.url, "CREATE TABLE items (id int PRIMARY KEY)").await;
    let settings = settings(&db, &slot, &["items"]);
    let mut stream = ReplicationStream::open(&settings).await.unwrap();
    execute(&db.url, "INSERT INTO items VALUES (1)").await;
    next_transaction(&mut stream).await;
    execute(
        &db.url,
        &format!("DROP PUBLICATION \"{}\"", settings.publication),
    )
    .await;
    execute(&db.url, "INSERT INTO items VALUES (2)").await;
    let err = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, WalError::PublicationMissing { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&format!(
            "CREATE PUBLICATION \"{}\" FOR ALL TABLES",
            settings.publication
        )),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_another_reader_holds_is_refused() {
    let db = PostgresDb::create_logical("tandem_wal_busy", false).await;
    let slot = SlotGuard::new(&db, "tandem_wal_busy").await;
    execute(&db.url, "CREATE TABLE items (id int PRIMARY KEY)").await;
    let settings = settings(&db, &slot, &["items"]);
    let stream = ReplicationStream::open(&settings).await.unwrap();
    let err = ReplicationStream::open(&settings).await.unwrap_err();
    assert!(matches!(err, WalError::SlotActive { .. }), "{err:?}");
    assert!(err.to_string().contains("pg_terminate_backend"), "{err}");
    stream.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_logical_wal_level_is_refused_with_the_fix() {
    // The machine's main cluster keeps wal_level = replica.
    let db = PostgresDb::create("tandem_wal_level").await;
    let err = ReplicationStream::open(&CaptureSettings {
        side: Side::Old,
        url: db.url.clone(),
        slot: unique_name("tandem_wal_level"),
        publication: "tandem_capture".into(),
        tables: PublishedTables::All,
        start: Lsn(0),
        messages: false,
        hurry: Hurry::default(),
    })
    .await
    .unwrap_err();
    let WalError::WalLevel { actual, .. } = &err else {
        panic!("{err:?}");
    };
    assert_ne!(actual, "logical");
    assert!(
        err.to_string()
            .contains("ALTER SYSTEM SET wal_level = logical"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_replication_is_refused_with_the_fix() {
    let db = PostgresDb::create_logical("tandem_wal_role", false).await;
    // Dropped also when an assertion below fails.
    let guard = PostgresRole::create(&db, "tandem_wal_role").await;
    let role = guard.name.as_str();
    let (base, name) = db.url.rsplit_once('/').unwrap();
    let url = base.replacen("postgres@", &format!("{role}@"), 1) + "/" + name;
    let err = ReplicationStream::open(&CaptureSettings {
        side: Side::New,
        url,
        slot: unique_name("tandem_wal_role"),
        publication: "tandem_capture".into(),
        tables: PublishedTables::All,
        start: Lsn(0),
        messages: false,
        hurry: Hurry::default(),
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, WalError::NoReplicationPrivilege { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains(&format!("ALTER ROLE \"{role}\" REPLICATION")),
        "{err}"
    );
}
