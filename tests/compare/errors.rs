//! Tables and columns that cannot be compared get a clear error or a schema report.

use crate::engines::{compare, compare_output, Kind, TestDb};
use tandem_testkit::table;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_differences_and_one_sided_tables_are_reported() {
    let (old, new) = (
        TestDb::create(Kind::Postgres).await,
        TestDb::create(Kind::Postgres).await,
    );
    old.exec(&[
        "CREATE TABLE t (id INT PRIMARY KEY, a TEXT, gone TEXT)".to_owned(),
        "CREATE TABLE only_old (id INT PRIMARY KEY)".to_owned(),
        "INSERT INTO t VALUES (1, 'x', 'y')".to_owned(),
    ])
    .await;
    new.exec(&[
        "CREATE TABLE t (id INT PRIMARY KEY, a TEXT, added TEXT)".to_owned(),
        "CREATE TABLE only_new (id INT PRIMARY KEY)".to_owned(),
        "INSERT INTO t VALUES (1, 'x', 'z')".to_owned(),
    ])
    .await;
    let (code, report) = compare(&old, &new, &[]);
    assert_eq!(code, 1);
    assert_eq!(report["only_in_old"], serde_json::json!(["only_old"]));
    assert_eq!(report["only_in_new"], serde_json::json!(["only_new"]));
    let t = table(&report, "t");
    assert_eq!(
        t["changed"], 0,
        "one-sided columns are left out of the rows"
    );
    assert_eq!(
        t["schema_differences"],
        serde_json::json!([{"column": "gone", "only_in": "old"}, {"column": "added", "only_in": "new"}])
    );
    let (code, report) = compare(&old, &new, &["--table", "t", "--columns", "a"]);
    assert_eq!(code, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_keys_must_identify_rows_and_unsupported_types_are_clear_errors() {
    let (old, new) = (
        TestDb::create(Kind::Postgres).await,
        TestDb::create(Kind::Postgres).await,
    );
    for db in [&old, &new] {
        db.exec(&[
            "CREATE TABLE nokey (a INT, b TEXT)".to_owned(),
            "CREATE TABLE spans (id INT PRIMARY KEY, span POINT)".to_owned(),
            "INSERT INTO nokey VALUES (1, 'x')".to_owned(),
        ])
        .await;
    }
    let (code, report) = compare(&old, &new, &["--table", "nokey"]);
    assert_eq!(code, 0, "no key: compared as a multiset of rows");
    assert_eq!(table(&report, "nokey")["multiset"], true);

    let (code, _) = compare(&old, &new, &["--table", "nokey", "--key", "a"]);
    assert_eq!(code, 0, "--key stands in for a primary key");
    new.exec(&["INSERT INTO nokey VALUES (1, 'twin')".to_owned()])
        .await;
    let output = compare_output(&old, &new, &["--table", "nokey", "--key", "a"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "a repeated key would hide rows"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("repeat a value on the new side"),
        "{stderr}"
    );
    old.exec(&["INSERT INTO nokey VALUES (NULL, 'x')".to_owned()])
        .await;
    let output = compare_output(&old, &new, &["--table", "nokey", "--key", "a"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("hold NULLs on the old side"));

    let output = compare_output(&old, &new, &["--table", "spans"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("spans, column span: type point"),
        "{stderr}"
    );
    let (code, _) = compare(
        &old,
        &new,
        &["--table", "spans", "--ignore-columns", "span"],
    );
    assert_eq!(code, 0);

    let output = compare_output(&old, &new, &["--table", "missing"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing does not exist"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_databases_never_show_their_password() {
    let old = TestDb::create(Kind::Sqlite).await;
    old.exec(&["CREATE TABLE t (id INTEGER PRIMARY KEY)".to_owned()])
        .await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "compare",
            "--old",
            &old.url(),
            "--new",
            "postgres://app:hunter2@127.0.0.1:1/db",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("new database"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_a_strict_file_and_flags_win() {
    let (old, new) = (
        TestDb::create(Kind::Sqlite).await,
        TestDb::create(Kind::Sqlite).await,
    );
    for db in [&old, &new] {
        db.exec(&[
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)".to_owned(),
            "CREATE TABLE u (id INTEGER PRIMARY KEY)".to_owned(),
            "INSERT INTO t VALUES (1, 'a')".to_owned(),
        ])
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("compare.toml");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args([
                "compare",
                "--format",
                "json",
                "--config",
                file.to_str().unwrap(),
            ])
            .args(args)
            .output()
            .unwrap()
    };
    std::fs::write(
        &file,
        format!(
            "old = \"sqlite:///nowhere/at/all.db\"\nnew = \"{}\"\ntables = [\"t\"]\nrecheck = 0\n",
            new.url()
        ),
    )
    .unwrap();
    let output = run(&["--old", &old.url()]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report["tables"].as_array().unwrap().len(),
        1,
        "tables came from the file"
    );

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/comparator.example.toml");
    let parsed = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "compare", "--config", example, "--old", "ftp://x", "--new", "ftp://y",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&parsed.stderr);
    assert!(
        stderr.contains("expected a postgres://, mysql:// or sqlite:// URL"),
        "the example file parses, the flags' URLs are what fails: {stderr}"
    );

    std::fs::write(&file, "windw_rows = 5\n").unwrap();
    let output = run(&[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("windw_rows"), "{stderr}");

    for sweeps in [0, 21] {
        std::fs::write(&file, format!("[alerts]\nunconverged_sweeps = {sweeps}\n")).unwrap();
        let output = run(&["--old", &old.url(), "--new", &new.url()]);
        assert_eq!(output.status.code(), Some(2), "{sweeps} sweeps");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!(
                "alerts.unconverged_sweeps = {sweeps} (from {}) must be between 1 and 20",
                file.display()
            )),
            "{stderr}"
        );
    }
}
