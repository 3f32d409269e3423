//! Options aimed at one table of a whole-database run: `--columns TABLE.COLUMN` compares only
//! those columns of that table, `--table-where TABLE=CONDITION` restricts both sides of that
//! table; every other table is compared as usual.

use crate::engines::{compare, Kind, TestDb};
use tandem_testkit::{divergences, table};

fn divergence(kind: &str, key: &str, columns: &[&str]) -> (String, String, Vec<String>) {
    (
        kind.to_owned(),
        key.to_owned(),
        columns.iter().map(|column| (*column).to_owned()).collect(),
    )
}

/// `--columns orders.total` compares only `total` (and the key) of `orders`, MariaDB against
/// PostgreSQL: a different `note` there is not reported and is not in the rows shown, a
/// missing row still is; `items` keeps every column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_aimed_at_one_table_compare_only_those() {
    let (old, new) = (
        TestDb::create(Kind::Maria).await,
        TestDb::create(Kind::Postgres).await,
    );
    old.exec(&[
        "CREATE TABLE orders (id INT PRIMARY KEY, total DECIMAL(10,2), note VARCHAR(20))"
            .to_owned(),
        "CREATE TABLE items (id INT PRIMARY KEY, note VARCHAR(20))".to_owned(),
        "INSERT INTO orders VALUES (1, 10.00, 'a'), (2, 20.00, 'b'), (3, 30.00, 'c')".to_owned(),
        "INSERT INTO items VALUES (1, 'x'), (2, 'y')".to_owned(),
    ])
    .await;
    new.exec(&[
        "CREATE TABLE orders (id INT PRIMARY KEY, total NUMERIC(10,2), note TEXT)".to_owned(),
        "CREATE TABLE items (id INT PRIMARY KEY, note TEXT)".to_owned(),
        "INSERT INTO orders VALUES (1, 10, 'A'), (2, 21, 'b')".to_owned(),
        "INSERT INTO items VALUES (1, 'x'), (2, 'Y')".to_owned(),
    ])
    .await;
    let (code, report) = compare(&old, &new, &["--columns", "orders.total"]);
    assert_eq!(code, 1, "{report}");
    let orders = table(&report, "orders");
    assert_eq!(
        divergences(orders),
        [
            divergence("changed", r#"{"id":2}"#, &["total"]),
            divergence("missing_in_new", r#"{"id":3}"#, &[]),
        ],
        "only total is compared in orders: {orders}"
    );
    let changed = orders["divergences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "changed")
        .unwrap();
    assert_eq!(
        (&changed["old"], &changed["new"]),
        (
            &serde_json::json!({"id": 2, "total": 20}),
            &serde_json::json!({"id": 2, "total": 21})
        ),
        "{changed}"
    );
    assert_eq!(
        divergences(table(&report, "items")),
        [divergence("changed", r#"{"id":2}"#, &["note"])],
        "items keeps every column"
    );
}

/// `--table-where "orders=status = 'paid'"` restricts both sides of `orders` (rows outside it,
/// one side's only or different, are not reported, and are not counted), in place of
/// `--where`, which still restricts every other table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_condition_aimed_at_one_table_restricts_both_its_sides() {
    let (old, new) = (
        TestDb::create(Kind::Postgres).await,
        TestDb::create(Kind::Sqlite).await,
    );
    old.exec(&[
        "CREATE TABLE orders (id INT PRIMARY KEY, status TEXT NOT NULL, total INT)".to_owned(),
        "CREATE TABLE items (id INT PRIMARY KEY, v TEXT)".to_owned(),
        "INSERT INTO orders VALUES (1, 'draft', 10), (2, 'paid', 20), (3, 'paid', 30), \
         (4, 'draft', 40)"
            .to_owned(),
        "INSERT INTO items VALUES (1, 'a'), (2, 'b'), (3, 'c')".to_owned(),
    ])
    .await;
    new.exec(&[
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT NOT NULL, total INTEGER)"
            .to_owned(),
        "CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)".to_owned(),
        "INSERT INTO orders VALUES (1, 'draft', 11), (2, 'paid', 22), (3, 'paid', 30), \
         (5, 'draft', 50)"
            .to_owned(),
        "INSERT INTO items VALUES (1, 'a'), (2, 'B'), (3, 'C')".to_owned(),
    ])
    .await;
    let args = [
        "--table-where",
        "orders=status = 'paid'",
        "--where",
        "id <> 2",
    ];
    let (code, report) = compare(&old, &new, &args);
    assert_eq!(code, 1, "{report}");
    let orders = table(&report, "orders");
    assert_eq!(
        (&orders["rows_old"], &orders["rows_new"]),
        (&2.into(), &2.into()),
        "only the paid orders are read, on both sides: {orders}"
    );
    assert_eq!(
        divergences(orders),
        [divergence("changed", r#"{"id":2}"#, &["total"])],
        "{orders}"
    );
    let items = table(&report, "items");
    assert_eq!(
        divergences(items),
        [divergence("changed", r#"{"id":3}"#, &["v"])],
        "--where still restricts items: {items}"
    );
}
