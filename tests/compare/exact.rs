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
