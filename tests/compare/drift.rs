//! Every drift kind, injected into real databases, is found exactly; equal values in another
//! representation are not reported.

use crate::engines::{compare, Kind, TestDb};
use tandem_testkit::{divergences, table};

const ROWS: i64 = 40;

fn items_ddl(db: &TestDb, wide_amount: bool) -> String {
    let amount = if wide_amount {
        "NUMERIC(14,4)"
    } else {
        "NUMERIC(12,2)"
    };
    match db.kind() {
        Kind::Postgres => format!(
            "CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT, amount {amount}, note TEXT, \
             created_at TIMESTAMP(6), payload JSONB, ref UUID, active BOOLEAN, ratio DOUBLE PRECISION)"
        ),
        Kind::Maria => "CREATE TABLE items (id BIGINT PRIMARY KEY, \
             name VARCHAR(100) COLLATE utf8mb4_bin, amount DECIMAL(12,2), note VARCHAR(100), \
             created_at DATETIME(6), payload JSON, ref CHAR(36), active TINYINT(1), ratio DOUBLE) \
             CHARACTER SET utf8mb4"
            .to_owned(),
        Kind::Sqlite => "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, amount DECIMAL(12,2), \
             note TEXT, created_at TIMESTAMP, payload JSON, ref UUID, active BOOLEAN, ratio REAL)"
            .to_owned(),
    }
}

fn item(db: &TestDb, id: i64) -> String {
    format!(
        "INSERT INTO items VALUES ({id}, 'Name-{id}', {id}.50, NULL, '2026-01-02 03:04:05.123456', \
         '{{\"a\": {id}, \"b\": [1, 2.50]}}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd38{id:04}', {}, 0.5)",
        db.boolean(id % 2 == 0)
    )
}

fn accounts_ddl(db: &TestDb) -> String {
    match db.kind() {
        Kind::Postgres => "CREATE TABLE accounts (region TEXT COLLATE \"C\", code TEXT COLLATE \"C\", \
             balance NUMERIC(10,2), PRIMARY KEY (region, code))"
            .to_owned(),
        Kind::Maria => "CREATE TABLE accounts (region VARCHAR(50) COLLATE utf8mb4_bin, \
             code VARCHAR(50) COLLATE utf8mb4_bin, balance DECIMAL(10,2), PRIMARY KEY (region, code)) \
             CHARACTER SET utf8mb4"
            .to_owned(),
        Kind::Sqlite => "CREATE TABLE accounts (region TEXT, code TEXT, balance DECIMAL(10,2), \
             PRIMARY KEY (region, code))"
            .to_owned(),
    }
}

const REGIONS: [&str; 7] = ["Zürich", "zürich", "Ärger", "ärger", "Bern", "bern", "東京"];
const CODES: [&str; 3] = ["ab", "AB", "a-b"];

/// The two tables of the drift tests, with their baseline rows.
pub(crate) fn baseline(db: &TestDb, wide_amount: bool) -> Vec<String> {
    let mut statements = vec![items_ddl(db, wide_amount), accounts_ddl(db)];
    statements.extend((1..=ROWS).map(|id| item(db, id)));
    for (r, region) in REGIONS.iter().enumerate() {
        for (c, code) in CODES.iter().enumerate() {
            statements.push(format!(
                "INSERT INTO accounts VALUES ('{region}', '{code}', {}.25)",
                r * 10 + c
            ));
        }
    }
    statements
}

/// Two SQLite databases holding the same baseline, and a control store URL in a temporary
/// directory (kept alive by the returned guard).
pub(crate) async fn identical_sqlite_pair() -> (TestDb, TestDb, tempfile::TempDir, String) {
    let (old, new) = (
        TestDb::create(Kind::Sqlite).await,
        TestDb::create(Kind::Sqlite).await,
    );
    old.exec(&baseline(&old, false)).await;
    new.exec(&baseline(&new, false)).await;
    let dir = tempfile::tempdir().unwrap();
    let control = format!("sqlite://{}", dir.path().join("control.db").display());
    (old, new, dir, control)
}

/// Statements that inject every drift kind into one side.
pub(crate) fn drift(db: &TestDb) -> Vec<String> {
    [
        "DELETE FROM items WHERE id = 3".to_owned(),
        item(db, 100),
        "UPDATE items SET name = 'name-5' WHERE id = 5".to_owned(),
        "UPDATE items SET name = 'Name-6 ' WHERE id = 6".to_owned(),
        "UPDATE items SET note = '' WHERE id = 7".to_owned(),
        "UPDATE items SET created_at = '2026-01-02 03:04:05.123457' WHERE id = 9".to_owned(),
        "UPDATE items SET payload = '{\"b\":[1,2.5],\"a\":10}' WHERE id = 10".to_owned(),
        "UPDATE items SET payload = '{\"a\": 11, \"b\": [1, 3]}' WHERE id = 11".to_owned(),
        "UPDATE items SET ref = 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380012' WHERE id = 12".to_owned(),
        "UPDATE items SET amount = 13.51 WHERE id = 13".to_owned(),
        "UPDATE items SET ratio = 0.25 WHERE id = 15".to_owned(),
        "DELETE FROM accounts WHERE region = 'Ärger' AND code = 'AB'".to_owned(),
        "INSERT INTO accounts VALUES ('ärger', 'x', 1.00)".to_owned(),
        "UPDATE accounts SET balance = 99.99 WHERE region = 'Zürich' AND code = 'ab'".to_owned(),
    ]
    .to_vec()
}

fn changed(key: &str, column: &str) -> (String, String, Vec<String>) {
    (
        "changed".to_owned(),
        key.to_owned(),
        vec![column.to_owned()],
    )
}

async fn every_drift_is_found_exactly(old_kind: Kind, new_kind: Kind) {
    let (old, new) = (
        TestDb::create(old_kind).await,
        TestDb::create(new_kind).await,
    );
    old.exec(&baseline(&old, false)).await;
    new.exec(&baseline(&new, new_kind == Kind::Postgres)).await;

    let (code, report) = compare(&old, &new, &["--window-rows", "7"]);
    assert_eq!(code, 0, "identical before drift: {report}");
    assert_eq!(report["identical"], true);
    assert_eq!(table(&report, "items")["rows_old"], ROWS);

    new.exec(&drift(&new)).await;
    let (code, report) = compare(&old, &new, &["--window-rows", "7"]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["identical"], false);

    let items = table(&report, "items");
    assert_eq!(
        (
            &items["missing_in_new"],
            &items["extra_in_new"],
            &items["changed"]
        ),
        (&1.into(), &1.into(), &7.into()),
        "{items}"
    );
    let mut expected = vec![
        (
            "missing_in_new".to_owned(),
            r#"{"id":3}"#.to_owned(),
            vec![],
        ),
        (
            "extra_in_new".to_owned(),
            r#"{"id":100}"#.to_owned(),
            vec![],
        ),
        changed(r#"{"id":5}"#, "name"),
        changed(r#"{"id":6}"#, "name"),
        changed(r#"{"id":7}"#, "note"),
        changed(r#"{"id":9}"#, "created_at"),
        changed(r#"{"id":11}"#, "payload"),
        changed(r#"{"id":13}"#, "amount"),
        changed(r#"{"id":15}"#, "ratio"),
    ];
    expected.sort();
    assert_eq!(divergences(items), expected);

    let accounts = table(&report, "accounts");
    let mut expected = vec![
        (
            "missing_in_new".to_owned(),
            r#"{"code":"AB","region":"Ärger"}"#.to_owned(),
            vec![],
        ),
        (
            "extra_in_new".to_owned(),
            r#"{"code":"x","region":"ärger"}"#.to_owned(),
            vec![],
        ),
        changed(r#"{"code":"ab","region":"Zürich"}"#, "balance"),
    ];
    expected.sort();
    assert_eq!(divergences(accounts), expected);

    let (_, limited) = compare(&old, &new, &["--table", "items", "--max-divergences", "2"]);
    let items = table(&limited, "items");
    assert_eq!(
        items["divergences"].as_array().unwrap().len(),
        2,
        "the list is cut"
    );
    assert_eq!(items["changed"], 7, "counts stay exact");
    assert_eq!(limited["tables"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_postgres() {
    every_drift_is_found_exactly(Kind::Postgres, Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_to_postgres() {
    every_drift_is_found_exactly(Kind::Maria, Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_sqlite() {
    every_drift_is_found_exactly(Kind::Sqlite, Kind::Sqlite).await;
}

/// UUID keys kept as upper-case text on MariaDB and as `uuid` on PostgreSQL, and negative
/// decimal keys, page through small windows without skipping or inventing rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uuid_text_and_decimal_keys_page_exactly() {
    let (old, new) = (
        TestDb::create(Kind::Maria).await,
        TestDb::create(Kind::Postgres).await,
    );
    old.exec(&[
        "CREATE TABLE tokens (token CHAR(36) PRIMARY KEY, n INT) CHARACTER SET utf8mb4".to_owned(),
        "CREATE TABLE prices (price DECIMAL(10,2) PRIMARY KEY, label VARCHAR(20))".to_owned(),
    ])
    .await;
    new.exec(&[
        "CREATE TABLE tokens (token UUID PRIMARY KEY, n INT)".to_owned(),
        "CREATE TABLE prices (price NUMERIC(10,2) PRIMARY KEY, label TEXT)".to_owned(),
    ])
    .await;
    for i in 0..24 {
        let token = format!(
            "{:08x}-9c0b-4ef8-bb6d-6bb9bd380a{:02x}",
            i * 0x0abc_def1_u32,
            i
        );
        let price = format!("{}.{:02}", i as i64 - 12, i * 7 % 100);
        old.exec(&[
            format!(
                "INSERT INTO tokens VALUES ('{}', {i})",
                token.to_uppercase()
            ),
            format!("INSERT INTO prices VALUES ({price}, 'p{i}')"),
        ])
        .await;
        if i != 5 {
            new.exec(&[
                format!("INSERT INTO tokens VALUES ('{token}', {i})"),
                format!("INSERT INTO prices VALUES ({price}, 'p{i}')"),
            ])
            .await;
        }
    }
    let (code, report) = compare(&old, &new, &["--window-rows", "3"]);
    assert_eq!(code, 1, "{report}");
    for name in ["tokens", "prices"] {
        let found = table(&report, name);
        assert_eq!(found["rows_old"], 24, "{found}");
        assert_eq!(found["rows_new"], 23, "{found}");
        assert_eq!(found["missing_in_new"], 1, "{found}");
        assert_eq!(found["extra_in_new"], 0, "{found}");
        assert_eq!(
            found["changed"], 0,
            "case and scale are not changes: {found}"
        );
    }
    assert_eq!(
        divergences(table(&report, "tokens"))[0].1,
        r#"{"token":"35b05ab5-9c0b-4ef8-bb6d-6bb9bd380a05"}"#
    );
    assert_eq!(
        divergences(table(&report, "prices"))[0].1,
        r#"{"price":"-7.35"}"#
    );
}

/// A text column holding UUIDs on one PostgreSQL side and a native `uuid` on the other page
/// through small windows (the cursor is cast to each side's own type).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_native_uuid_keys_page_on_postgres() {
    let (old, new) = (
        TestDb::create(Kind::Postgres).await,
        TestDb::create(Kind::Postgres).await,
    );
    old.exec(&["CREATE TABLE t (token TEXT PRIMARY KEY, n INT)".to_owned()])
        .await;
    new.exec(&["CREATE TABLE t (token UUID PRIMARY KEY, n INT)".to_owned()])
        .await;
    for i in 0..10u32 {
        let token = format!("{:08x}-9c0b-4ef8-bb6d-6bb9bd380a{i:02x}", i * 0x1111_1111);
        old.exec(&[format!(
            "INSERT INTO t VALUES ('{}', {i})",
            token.to_uppercase()
        )])
        .await;
        new.exec(&[format!("INSERT INTO t VALUES ('{token}', {i})")])
            .await;
    }
    let (code, report) = compare(&old, &new, &["--window-rows", "3"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(table(&report, "t")["rows_new"], 10);
}

/// Past 100,000 differences in one table the rest are counted, not kept, so memory stays
/// bounded when one side is (nearly) empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differences_past_the_cap_are_counted_exactly() {
    let (old, new) = (
        TestDb::create(Kind::Sqlite).await,
        TestDb::create(Kind::Sqlite).await,
    );
    old.exec(&[
        "CREATE TABLE big (id INTEGER PRIMARY KEY)".to_owned(),
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100010) \
         INSERT INTO big SELECT x FROM c"
            .to_owned(),
    ])
    .await;
    new.exec(&["CREATE TABLE big (id INTEGER PRIMARY KEY)".to_owned()])
        .await;
    let (code, report) = compare(&old, &new, &["--max-divergences", "5"]);
    assert_eq!(code, 1);
    let big = table(&report, "big");
    assert_eq!(big["missing_in_new"], 100_010, "{big}");
    assert_eq!(big["unrechecked"], 10);
    assert_eq!(big["divergences"].as_array().unwrap().len(), 5);
}
