//! Every table of a real database is compared: tables keyed by a unique index, columns of
//! types beyond the basic ones, options aimed at one table; a table that still cannot be
//! compared is reported with its reason while the others are compared.

use crate::engines::{compare, compare_output, Kind, TestDb};
use tandem_testkit::{divergences, table};

fn divergence(kind: &str, key: &str, columns: &[&str]) -> (String, String, Vec<String>) {
    (
        kind.to_owned(),
        key.to_owned(),
        columns.iter().map(|column| (*column).to_owned()).collect(),
    )
}

/// A table with a type tandem cannot compare is reported with its reason, the other tables
/// (one without any key among them) are compared, and the run exits 2 with the whole report on
/// stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_cannot_be_compared_does_not_stop_the_others() {
    let (old, new) = (
        TestDb::create(Kind::Postgres).await,
        TestDb::create(Kind::Postgres).await,
    );
    for db in [&old, &new] {
        db.exec(&[
            "CREATE TABLE good (id INT PRIMARY KEY, v TEXT)".to_owned(),
            "CREATE TABLE logbook (at INT, line TEXT)".to_owned(),
            "CREATE TABLE shapes (id INT PRIMARY KEY, p POINT)".to_owned(),
            "INSERT INTO good VALUES (1, 'a'), (2, 'b')".to_owned(),
        ])
        .await;
    }
    new.exec(&["UPDATE good SET v = 'B' WHERE id = 2".to_owned()])
        .await;
    let output = compare_output(&old, &new, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("1 of 3 tables could not be compared"),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["identical"], false);
    assert_eq!(
        divergences(table(&report, "good")),
        [divergence("changed", r#"{"id":2}"#, &["v"])]
    );
    assert!(table(&report, "logbook").get("error").is_none());
    let shapes = table(&report, "shapes")["error"].as_str().unwrap();
    assert!(shapes.contains("column p: type point"), "{shapes}");
    assert!(table(&report, "good").get("error").is_none());
}

/// A table without a primary key but with a unique index over non-null columns is keyed by
/// that index, on MariaDB and PostgreSQL alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_index_over_non_null_columns_keys_a_table() {
    let (old, new) = (
        TestDb::create(Kind::Maria).await,
        TestDb::create(Kind::Postgres).await,
    );
    old.exec(&[
        "CREATE TABLE events (note VARCHAR(20), code VARCHAR(20) COLLATE utf8mb4_bin NOT NULL, \
         seq INT NOT NULL, UNIQUE (code, seq)) CHARACTER SET utf8mb4"
            .to_owned(),
        "INSERT INTO events VALUES ('x', 'b', 1), ('y', 'a', 2), ('z', 'a', 1)".to_owned(),
    ])
    .await;
    new.exec(&[
        "CREATE TABLE events (note TEXT, code TEXT NOT NULL, seq INT NOT NULL, \
         UNIQUE (code, seq))"
            .to_owned(),
        "INSERT INTO events VALUES ('x', 'b', 1), ('Y', 'a', 2)".to_owned(),
    ])
    .await;
    let (code, report) = compare(&old, &new, &[]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        divergences(table(&report, "events")),
        [
            divergence("changed", r#"{"code":"a","seq":2}"#, &["note"]),
            divergence("missing_in_new", r#"{"code":"a","seq":1}"#, &[]),
        ]
    );
}

/// `--ignore-columns` may name a column one side lacks (a legacy column dropped in the new
/// schema, or one the new schema added) or no table has; `TABLE.COLUMN` and `--key TABLE=…`
/// aim at one table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_columns_may_be_one_sided_and_options_may_aim_at_one_table() {
    let (old, new) = (
        TestDb::create(Kind::Postgres).await,
        TestDb::create(Kind::Postgres).await,
    );
    old.exec(&[
        "CREATE TABLE orders (id INT PRIMARY KEY, total INT, legacy_flag BOOLEAN, updated_at INT)"
            .to_owned(),
        "CREATE TABLE notes (ref INT NOT NULL, body TEXT, updated_at INT)".to_owned(),
        "INSERT INTO orders VALUES (1, 10, true, 100), (2, 20, false, 200)".to_owned(),
        "INSERT INTO notes VALUES (1, 'a', 100), (2, 'b', 200)".to_owned(),
    ])
    .await;
    new.exec(&[
        "CREATE TABLE orders (id INT PRIMARY KEY, total INT, updated_at INT, added_by TEXT)"
            .to_owned(),
        "CREATE TABLE notes (ref INT NOT NULL, body TEXT, updated_at INT)".to_owned(),
        "INSERT INTO orders VALUES (1, 10, 101, 'app'), (2, 20, 201, 'app')".to_owned(),
        "INSERT INTO notes VALUES (1, 'a', 100), (2, 'b', 201)".to_owned(),
    ])
    .await;
    let args = [
        "--ignore-columns",
        "legacy_flag,no_such_column",
        "--ignore-columns",
        "orders.updated_at,orders.added_by",
        "--key",
        "notes=ref",
    ];
    let (code, report) = compare(&old, &new, &args);
    assert_eq!(code, 1, "{report}");
    let orders = table(&report, "orders");
    assert_eq!(
        orders["schema_differences"],
        serde_json::json!([]),
        "{orders}"
    );
    assert_eq!(divergences(orders), [], "{orders}");
    assert_eq!(
        divergences(table(&report, "notes")),
        [divergence("changed", r#"{"ref":2}"#, &["updated_at"])],
        "updated_at is ignored in orders only"
    );

    let output = compare_output(&old, &new, &["--ignore-columns", "orders.no_such_column"]);
    assert_eq!(output.status.code(), Some(2));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let error = table(&report, "orders")["error"].as_str().unwrap();
    assert!(error.contains("no column no_such_column"), "{error}");
}

/// PostgreSQL's interval, bit strings, arrays, network addresses, ranges, money and xml are
/// compared by value: equal values written differently are equal, and a change in each is
/// found in its own column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_types_beyond_the_basic_ones_are_compared_by_value() {
    let (old, new) = (
        TestDb::create(Kind::Postgres).await,
        TestDb::create(Kind::Postgres).await,
    );
    let ddl = "CREATE TABLE v (id INT PRIMARY KEY, span INTERVAL, flags BIT(4), vb VARBIT, \
               nums NUMERIC[], tags TEXT[], ip INET, net CIDR, r INT4RANGE, price MONEY, doc XML)";
    old.exec(&[
        ddl.to_owned(),
        "INSERT INTO v VALUES \
         (1, '1 year 2 days 00:00:01.5', B'0101', B'1', '{1.0,2}', '{a,\"b c\"}', '10.0.0.1', \
          '10.0.0.0/8', '[1,5)', 12.50, '<a>x</a>'), \
         (2, '1 day', B'0101', B'1', '{1,2}', '{a}', '10.0.0.1', '10.0.0.0/8', '[1,5)', 1, '<a/>'), \
         (3, '1 day', B'0101', B'1', '{1,2}', '{a}', '10.0.0.1', '10.0.0.0/8', '[1,5)', 1, '<a/>')"
            .to_owned(),
    ])
    .await;
    new.exec(&[
        ddl.to_owned(),
        "INSERT INTO v VALUES \
         (1, '12 months 2 days 1.5 seconds', B'0101', B'1', '{1,2.00}', '{a,\"b c\"}', \
          '10.0.0.1/32', '10.0.0.0/8', '[1,4]', 12.5, '<a>x</a>'), \
         (2, '24 hours', B'0101', B'1', '{1,2}', '{a}', '10.0.0.1', '10.0.0.0/8', '[1,5)', 1, '<a/>'), \
         (3, '1 day', B'0111', B'10', '{2,1}', '{A}', '10.0.0.2', '10.0.0.0/16', '[1,6)', 1.01, '<b/>')"
            .to_owned(),
    ])
    .await;
    let (code, report) = compare(&old, &new, &[]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        divergences(table(&report, "v")),
        [
            divergence("changed", r#"{"id":2}"#, &["span"]),
            divergence(
                "changed",
                r#"{"id":3}"#,
                &["flags", "vb", "nums", "tags", "ip", "net", "r", "price", "doc"]
            ),
        ],
        "{report}"
    );
}

/// MariaDB's `BIT(n)` compares with PostgreSQL's `bit(n)` (and `BIT(1)` with `boolean`) by
/// value, and its native `UUID` type with `uuid`, keys included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_bits_and_uuids_compare_with_postgres() {
    let (old, new) = (
        TestDb::create(Kind::Maria).await,
        TestDb::create(Kind::Postgres).await,
    );
    old.exec(&[
        "CREATE TABLE t (u UUID PRIMARY KEY, flags BIT(4), active BIT(1))".to_owned(),
        "INSERT INTO t VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', b'0101', b'1'), \
         ('00000000-0000-4000-8000-000000000002', b'0001', b'0'), \
         ('ffffffff-0000-4000-8000-000000000003', b'1000', b'1')"
            .to_owned(),
    ])
    .await;
    new.exec(&[
        "CREATE TABLE t (u UUID PRIMARY KEY, flags BIT(4), active BOOLEAN)".to_owned(),
        "INSERT INTO t VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', B'0101', true), \
         ('00000000-0000-4000-8000-000000000002', B'0011', false), \
         ('ffffffff-0000-4000-8000-000000000003', B'1000', false)"
            .to_owned(),
    ])
    .await;
    let (code, report) = compare(&old, &new, &["--window-rows", "1"]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        divergences(table(&report, "t")),
        [
            divergence(
                "changed",
                r#"{"u":"00000000-0000-4000-8000-000000000002"}"#,
                &["flags"]
            ),
            divergence(
                "changed",
                r#"{"u":"ffffffff-0000-4000-8000-000000000003"}"#,
                &["active"]
            ),
        ],
        "{report}"
    );
}

/// A `[[tables]]` section of the config file aims a key, ignored columns and a condition at
/// one table; plain table names still work beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_sections_aim_options_at_one_table() {
    let (old, new) = (
        TestDb::create(Kind::Sqlite).await,
        TestDb::create(Kind::Sqlite).await,
    );
    for db in [&old, &new] {
        db.exec(&[
            "CREATE TABLE audit_log (event_id INTEGER NOT NULL, ts INTEGER NOT NULL, \
             note TEXT, legacy_flag INTEGER)"
                .to_owned(),
            "CREATE TABLE plain (id INTEGER PRIMARY KEY, v TEXT)".to_owned(),
            "INSERT INTO plain VALUES (1, 'a')".to_owned(),
        ])
        .await;
    }
    old.exec(&[
        "INSERT INTO audit_log VALUES (1, 10, 'a', 1), (2, 20, 'b', 1), (3, 30, 'c', 1)".to_owned(),
    ])
    .await;
    new.exec(&[
        "INSERT INTO audit_log VALUES (1, 10, 'a', 0), (2, 20, 'B', 0), (3, 30, 'C', 0)".to_owned(),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("compare.toml");
    std::fs::write(
        &file,
        "recheck = 0\n\
         [[tables]]\n\
         name = \"audit_log\"\n\
         key = [\"event_id\", \"ts\"]\n\
         ignore_columns = [\"legacy_flag\"]\n\
         where = \"ts < 30\"\n\
         [[tables]]\n\
         name = \"plain\"\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "compare",
            "--format",
            "json",
            "--config",
            file.to_str().unwrap(),
        ])
        .args(["--old", &old.url(), "--new", &new.url()])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["tables"].as_array().unwrap().len(), 2, "{report}");
    assert_eq!(table(&report, "plain")["changed"], 0);
    assert_eq!(
        divergences(table(&report, "audit_log")),
        [divergence(
            "changed",
            r#"{"event_id":2,"ts":20}"#,
            &["note"]
        )],
        "the key and where are the section's, legacy_flag is left out: {report}"
    );
}

/// A table without any key is compared as a multiset of whole rows: each distinct row with
/// how many more copies one side holds, duplicates included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_any_key_is_compared_as_a_multiset_of_rows() {
    let (old, new) = (
        TestDb::create(Kind::Maria).await,
        TestDb::create(Kind::Postgres).await,
    );
    old.exec(&[
        "CREATE TABLE history (tid INT, delta INT, note VARCHAR(10))".to_owned(),
        "INSERT INTO history VALUES (1, 10, 'a'), (1, 10, 'a'), (1, 10, 'a'), (2, 20, 'b'), \
         (3, 30, NULL), (5, 50, 'e')"
            .to_owned(),
    ])
    .await;
    new.exec(&[
        "CREATE TABLE history (tid INT, delta INT, note TEXT)".to_owned(),
        "INSERT INTO history VALUES (1, 10, 'a'), (2, 20, 'b'), (2, 20, 'b'), (4, 40, 'd'), \
         (5, 50, 'e')"
            .to_owned(),
    ])
    .await;
    let (code, report) = compare(&old, &new, &[]);
    assert_eq!(code, 1, "{report}");
    let history = table(&report, "history");
    assert_eq!(history["multiset"], true, "{history}");
    assert_eq!(
        (&history["rows_old"], &history["rows_new"]),
        (&6.into(), &5.into())
    );
    assert_eq!(
        (&history["missing_in_new"], &history["extra_in_new"]),
        (&3.into(), &2.into()),
        "{history}"
    );
    let mut found: Vec<(String, String, u64)> = history["divergences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_owned(),
                d["key"].to_string(),
                d["count"].as_u64().unwrap(),
            )
        })
        .collect();
    found.sort();
    let row = |kind: &str, key: &str, count: u64| (kind.to_owned(), key.to_owned(), count);
    assert_eq!(
        found,
        [
            row("extra_in_new", r#"{"delta":20,"note":"b","tid":2}"#, 1),
            row("extra_in_new", r#"{"delta":40,"note":"d","tid":4}"#, 1),
            row("missing_in_new", r#"{"delta":10,"note":"a","tid":1}"#, 2),
            row("missing_in_new", r#"{"delta":30,"note":null,"tid":3}"#, 1),
        ]
    );
}

/// A pgbench database after dual-write: all four tables are compared, `pgbench_history`
/// (which has no key) as a multiset, and a history row only the new side has is found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pgbench_database_after_dual_write_covers_all_four_tables() {
    let (old, new) = (
        TestDb::create(Kind::Postgres).await,
        TestDb::create(Kind::Postgres).await,
    );
    for db in [&old, &new] {
        let TestDb::Postgres(pg) = db else {
            unreachable!("PostgreSQL databases")
        };
        let status = std::process::Command::new("pgbench")
            .args([
                "-i",
                "-q",
                "-s",
                "1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                &pg.name,
            ])
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
    }
    // The same transactions on both sides, as a dual-write proxy would run them.
    let mut writes = Vec::new();
    for i in 1..=40_i64 {
        let (aid, tid, bid, delta) = (i * 997 % 100_000 + 1, i % 10 + 1, 1, i * 13 % 5000 - 2500);
        writes.push(format!(
            "UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid}"
        ));
        writes.push(format!(
            "UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = {tid}"
        ));
        writes.push(format!(
            "UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = {bid}"
        ));
        writes.push(format!(
            "INSERT INTO pgbench_history VALUES ({tid}, {bid}, {aid}, {delta}, \
             '2026-12-02 10:00:00', NULL)"
        ));
    }
    old.exec(&writes).await;
    new.exec(&writes).await;
    new.exec(&[
        "INSERT INTO pgbench_history VALUES (1, 1, 1, 5, '2026-12-02 10:00:01', NULL)".to_owned(),
    ])
    .await;
    let (code, report) = compare(&old, &new, &[]);
    assert_eq!(code, 1, "{report}");
    let names: Vec<&str> = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|table| table["table"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "pgbench_accounts",
            "pgbench_branches",
            "pgbench_history",
            "pgbench_tellers"
        ]
    );
    for name in ["pgbench_accounts", "pgbench_branches", "pgbench_tellers"] {
        let compared = table(&report, name);
        assert!(compared.get("error").is_none(), "{compared}");
        assert_eq!(
            (
                &compared["missing_in_new"],
                &compared["extra_in_new"],
                &compared["changed"]
            ),
            (&0.into(), &0.into(), &0.into()),
            "{compared}"
        );
    }
    assert_eq!(table(&report, "pgbench_accounts")["rows_old"], 100_000);
    let history = table(&report, "pgbench_history");
    assert_eq!(
        (
            &history["rows_old"],
            &history["rows_new"],
            &history["extra_in_new"]
        ),
        (&40.into(), &41.into(), &1.into()),
        "{history}"
    );
    assert_eq!(
        history["divergences"][0]["key"]["mtime"],
        "2026-12-02T10:00:01.000000Z"
    );
}

/// MariaDB's `BIT(n)` against PostgreSQL's `bytea`: equal when the bytes MariaDB holds
/// (big-endian, whole bytes) are the bytea's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_bits_compare_with_bytea_by_value() {
    let (old, new) = (
        TestDb::create(Kind::Maria).await,
        TestDb::create(Kind::Postgres).await,
    );
    old.exec(&[
        "CREATE TABLE t (id INT PRIMARY KEY, mask BIT(12))".to_owned(),
        "INSERT INTO t VALUES (1, b'101010111100'), (2, b'000000000001'), (3, NULL)".to_owned(),
    ])
    .await;
    new.exec(&[
        "CREATE TABLE t (id INT PRIMARY KEY, mask BYTEA)".to_owned(),
        "INSERT INTO t VALUES (1, '\\x0abc'), (2, '\\x0002'), (3, NULL)".to_owned(),
    ])
    .await;
    let (code, report) = compare(&old, &new, &[]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        divergences(table(&report, "t")),
        [divergence("changed", r#"{"id":2}"#, &["mask"])],
        "{report}"
    );
}

/// A MariaDB JSON array against a PostgreSQL array is compared as a JSON array, the array's
/// elements as PostgreSQL's `to_jsonb` writes them (the pairing the backfill writes through):
/// equal elements are equal, a different element is found in its column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_array_against_a_postgres_array_is_compared_as_a_json_array() {
    let (old, new) = (
        TestDb::create(Kind::Maria).await,
        TestDb::create(Kind::Postgres).await,
    );
    old.exec(&[
        "CREATE TABLE t (id INT PRIMARY KEY, tags JSON, n INT)".to_owned(),
        "INSERT INTO t VALUES (1, '[\"a\", \"b\"]', 1), (2, '[\"x\", \"y\"]', 2), \
         (3, '[\"c\"]', 3)"
            .to_owned(),
    ])
    .await;
    new.exec(&[
        "CREATE TABLE t (id INT PRIMARY KEY, tags TEXT[], n INT)".to_owned(),
        "INSERT INTO t VALUES (1, '{a,b}', 1), (2, '{x,z}', 2), (3, '{c}', 4)".to_owned(),
    ])
    .await;
    let (code, report) = compare(&old, &new, &[]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        divergences(table(&report, "t")),
        [
            divergence("changed", r#"{"id":2}"#, &["tags"]),
            divergence("changed", r#"{"id":3}"#, &["n"])
        ]
    );
}

/// MariaDB's `INET4` and `INET6` compare with PostgreSQL's `inet` by value: an address written
/// differently is equal, another address (an IPv4-mapped IPv6 one against the IPv4 one, as
/// PostgreSQL itself holds them apart) is found in its column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_inet_types_compare_with_postgres_inet() {
    let (old, new) = (
        TestDb::create(Kind::Maria).await,
        TestDb::create(Kind::Postgres).await,
    );
    old.exec(&[
        "CREATE TABLE hosts (id INT PRIMARY KEY, v4 INET4, v6 INET6)".to_owned(),
        "INSERT INTO hosts VALUES (1, '10.0.0.1', '2001:0db8:0:0::1'), \
         (2, '10.0.0.2', '::ffff:10.0.0.2'), (3, '10.0.0.3', NULL), (4, NULL, 'fe80::1')"
            .to_owned(),
    ])
    .await;
    new.exec(&[
        "CREATE TABLE hosts (id INT PRIMARY KEY, v4 INET, v6 INET)".to_owned(),
        "INSERT INTO hosts VALUES (1, '10.0.0.1/32', '2001:db8::1'), \
         (2, '10.0.0.2', '10.0.0.2'), (3, '10.0.0.4', NULL), (4, NULL, 'fe80::1')"
            .to_owned(),
    ])
    .await;
    let (code, report) = compare(&old, &new, &[]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        divergences(table(&report, "hosts")),
        [
            divergence("changed", r#"{"id":2}"#, &["v6"]),
            divergence("changed", r#"{"id":3}"#, &["v4"]),
        ],
        "{report}"
    );
}
