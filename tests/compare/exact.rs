//! Values are compared exactly as what they are: JSON numbers by exact decimal value, MariaDB
//! zero and partial dates as their own values, SQLite REAL with every bit.

use crate::engines::{compare, Kind, TestDb};
use tandem_testkit::{divergences, table};

fn changed(id: i64, column: &str) -> (String, String, Vec<String>) {
    (
        "changed".to_owned(),
        format!(r#"{{"id":{id}}}"#),
        vec![column.to_owned()],
    )
}

/// Numbers in JSON documents are decimals, not doubles: digits past a double's precision
/// count, `1e400` equals itself, and `1.0` equals `1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_numbers_are_compared_by_exact_value() {
    let (old, new) = (
        TestDb::create(Kind::Maria).await,
        TestDb::create(Kind::Postgres).await,
    );
    old.exec(&["CREATE TABLE docs (id INT PRIMARY KEY, doc JSON)".to_owned()])
        .await;
    new.exec(&["CREATE TABLE docs (id INT PRIMARY KEY, doc JSONB)".to_owned()])
        .await;
    let pairs = [
        (1, "12345678901234567890123", "12345678901234567890124"),
        (2, "1234567890.123456789", "1234567890.123456788"),
        (3, "19.99", "19.990000000000002"),
        (4, "1e400", "1e400"),
        (5, "1.0", "1"),
        (6, "2.50", "25e-1"),
    ];
    for (id, a, b) in pairs {
        old.exec(&[format!(
            "INSERT INTO docs VALUES ({id}, '{{\"n\": {a}, \"k\": [{a}]}}')"
        )])
        .await;
        new.exec(&[format!(
            "INSERT INTO docs VALUES ({id}, '{{\"k\": [{b}], \"n\": {b}}}')"
        )])
        .await;
    }
    let (code, report) = compare(&old, &new, &[]);
    assert_eq!(code, 1, "{report}");
    let docs = table(&report, "docs");
    assert_eq!(
        divergences(docs),
        [changed(1, "doc"), changed(2, "doc"), changed(3, "doc")],
        "{docs}"
    );
}

/// MariaDB keeps zero and partial dates under a permissive `sql_mode`; each is a value of its
/// own (equal only to the same literal), never NULL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_and_partial_dates_are_values_not_null() {
    let (old, postgres, maria) = (
        TestDb::create(Kind::Maria).await,
        TestDb::create(Kind::Postgres).await,
        TestDb::create(Kind::Maria).await,
    );
    let rows = [
        "(1, '0000-00-00', '0000-00-00 00:00:00')",
        "(2, '2020-00-15', '2020-02-00 10:00:00')",
        "(3, NULL, NULL)",
        "(4, '2020-02-15', '2020-02-15 10:00:00')",
    ];
    let mut statements = vec![
        "SET SESSION sql_mode = ''".to_owned(),
        "CREATE TABLE d (id INT PRIMARY KEY, day DATE, at DATETIME)".to_owned(),
    ];
    statements.extend(rows.iter().map(|row| format!("INSERT INTO d VALUES {row}")));
    old.exec(&statements).await;
    postgres
        .exec(&[
            "CREATE TABLE d (id INT PRIMARY KEY, day DATE, at TIMESTAMP)".to_owned(),
            "INSERT INTO d VALUES (1, NULL, NULL), (2, NULL, NULL), (3, NULL, NULL), \
             (4, '2020-02-15', '2020-02-15 10:00:00')"
                .to_owned(),
        ])
        .await;
    let (code, report) = compare(&old, &postgres, &[]);
    assert_eq!(code, 1, "{report}");
    let d = table(&report, "d");
    let both = vec!["day".to_owned(), "at".to_owned()];
    assert_eq!(
        divergences(d),
        [
            ("changed".to_owned(), r#"{"id":1}"#.to_owned(), both.clone()),
            ("changed".to_owned(), r#"{"id":2}"#.to_owned(), both),
        ],
        "{d}"
    );
    let first = &d["divergences"][0];
    assert_eq!(first["old"]["day"], "0000-00-00", "{first}");
    assert_eq!(first["old"]["at"], "0000-00-00 00:00:00.000000", "{first}");

    // MariaDB to MariaDB: the same literal is equal, whatever the column's precision.
    let mut statements = vec![
        "SET SESSION sql_mode = ''".to_owned(),
        "CREATE TABLE d (id INT PRIMARY KEY, day DATE, at DATETIME(6))".to_owned(),
    ];
    statements.extend(rows.iter().map(|row| format!("INSERT INTO d VALUES {row}")));
    statements.push("UPDATE d SET day = NULL WHERE id = 2".to_owned());
    maria.exec(&statements).await;
    let (code, report) = compare(&old, &maria, &[]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        divergences(table(&report, "d")),
        [changed(2, "day")],
        "{report}"
    );
}

/// SQLite REAL is read with every bit, so it equals the same PostgreSQL `float8`, and a
/// value one bit away is a change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reals_equal_the_same_postgres_doubles() {
    let (old, new) = (
        TestDb::create(Kind::Sqlite).await,
        TestDb::create(Kind::Postgres).await,
    );
    old.exec(&[
        "CREATE TABLE m (id INTEGER PRIMARY KEY, ratio REAL)".to_owned(),
        "INSERT INTO m VALUES (1, 0.1 + 0.2), (2, 1.0 / 3), (3, 2.0 / 3), \
         (4, 123456789.12345678), (5, 0.3), (6, 1e-300 / 3)"
            .to_owned(),
    ])
    .await;
    new.exec(&[
        "CREATE TABLE m (id INT PRIMARY KEY, ratio DOUBLE PRECISION)".to_owned(),
        "INSERT INTO m VALUES (1, 0.1::float8 + 0.2::float8), (2, 1.0::float8 / 3), \
         (3, 2.0::float8 / 3), (4, 123456789.12345678::float8), (5, 0.1::float8 + 0.2::float8), \
         (6, 1e-300::float8 / 3)"
            .to_owned(),
    ])
    .await;
    let (code, report) = compare(&old, &new, &[]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        divergences(table(&report, "m")),
        [changed(5, "ratio")],
        "{report}"
    );
}
