//! The JSON report's shape: keys in key-column order, one rule for large integers, `columns`
//! on every divergence, and a JSON error when no report can be made.

use crate::engines::{compare, compare_output, Kind, TestDb};
use tandem_testkit::table;

/// A composite key's members come out in key-column order, not sorted by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_objects_keep_key_column_order() {
    let (old, new) = (
        TestDb::create(Kind::Postgres).await,
        TestDb::create(Kind::Postgres).await,
    );
    for db in [&old, &new] {
        db.exec(&[
            "CREATE TABLE accounts (region TEXT, code TEXT, balance INT, PRIMARY KEY (region, code))"
                .to_owned(),
        ])
        .await;
    }
    old.exec(&["INSERT INTO accounts VALUES ('eu', 'x', 1)".to_owned()])
        .await;
    let output = compare_output(&old, &new, &[]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let key = &stdout[stdout.find("\"key\"").unwrap()..];
    let key = &key[..key.find('}').unwrap()];
    let (region, code) = (
        key.find("\"region\"").unwrap(),
        key.find("\"code\"").unwrap(),
    );
    assert!(region < code, "{key}");
}

/// Integers within ±2^53 are JSON numbers and larger ones strings, whatever the column type
/// (here MariaDB's `BIGINT UNSIGNED` against PostgreSQL's `numeric`); missing and extra rows
/// carry an empty `columns`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_integers_are_strings_and_every_divergence_lists_columns() {
    let (old, new) = (
        TestDb::create(Kind::Maria).await,
        TestDb::create(Kind::Postgres).await,
    );
    old.exec(&[
        "CREATE TABLE big (id BIGINT UNSIGNED PRIMARY KEY, n INT)".to_owned(),
        "INSERT INTO big VALUES (9007199254740992, 1), (9007199254740993, 1), \
         (18446744073709551615, 1)"
            .to_owned(),
    ])
    .await;
    new.exec(&["CREATE TABLE big (id NUMERIC(20) PRIMARY KEY, n INT)".to_owned()])
        .await;
    let (code, report) = compare(&old, &new, &[]);
    assert_eq!(code, 1, "{report}");
    let listed = table(&report, "big")["divergences"].as_array().unwrap();
    let keys: Vec<&serde_json::Value> = listed.iter().map(|d| &d["key"]["id"]).collect();
    assert_eq!(
        keys,
        [
            &serde_json::json!(9_007_199_254_740_992_i64),
            &serde_json::json!("9007199254740993"),
            &serde_json::json!("18446744073709551615"),
        ]
    );
    for divergence in listed {
        assert_eq!(divergence["columns"], serde_json::json!([]), "{divergence}");
    }
}

/// With `--format json`, an error that leaves no report is a JSON object on stdout too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_prints_json_on_stdout() {
    let old = TestDb::create(Kind::Sqlite).await;
    old.exec(&["CREATE TABLE t (id INTEGER PRIMARY KEY)".to_owned()])
        .await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "compare",
            "--format",
            "json",
            "--old",
            &old.url(),
            "--new",
            "postgres://postgres@127.0.0.1:1/db",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let error: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let message = error["error"].as_str().unwrap();
    assert!(
        message.contains("cannot connect to the new database"),
        "{message}"
    );
}

fn keys(value: &serde_json::Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

/// The report's members are the ones the README documents, no more and no fewer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_has_the_documented_shape() {
    let (old, new) = (
        TestDb::create(Kind::Sqlite).await,
        TestDb::create(Kind::Sqlite).await,
    );
    old.exec(&[
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)".to_owned(),
        "INSERT INTO t VALUES (1, 'a'), (2, 'b')".to_owned(),
    ])
    .await;
    new.exec(&[
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)".to_owned(),
        "INSERT INTO t VALUES (1, 'A')".to_owned(),
    ])
    .await;
    let (code, report) = compare(&old, &new, &[]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        keys(&report),
        ["identical", "only_in_new", "only_in_old", "tables"]
    );
    let t = table(&report, "t");
    assert_eq!(
        keys(t),
        [
            "changed",
            "converged",
            "divergences",
            "extra_in_new",
            "missing_in_new",
            "rows_new",
            "rows_old",
            "schema_differences",
            "table",
            "unconverged",
            "unrechecked",
            "windows"
        ]
    );
    for divergence in t["divergences"].as_array().unwrap() {
        let expected: &[&str] = if divergence["kind"] == "changed" {
            &["columns", "key", "kind", "new", "old"]
        } else {
            &["columns", "key", "kind", "old"]
        };
        assert_eq!(keys(divergence), expected, "{divergence}");
    }
}
