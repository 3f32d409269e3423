//! `tandem backfill --create-schema` creates the tables the new side lacks (MariaDB types
//! mapped to PostgreSQL's, SQLite columns by what they hold, PostgreSQL's and MariaDB's kept
//! with their collations within one engine), says what
//! it created, and then copies them to
//! an identical result; on a dry run it creates nothing and says what it would create.

use serde_json::Value;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::Row as _;

use crate::backfill::control_db;
use crate::engines::{compare, run_json, Kind, TestDb};

/// Rows of the mixed table beyond the three hand-written ones.
const ROWS: i64 = 2_000;

fn mariadb_mixed() -> Vec<String> {
    vec![
        "CREATE TABLE mixed (id INT UNSIGNED NOT NULL, part SMALLINT NOT NULL, \
         big BIGINT UNSIGNED, small TINYINT, signed_int INT, amount DECIMAL(14,4) NOT NULL, \
         name VARCHAR(40) NOT NULL, code CHAR(3), body TEXT, at DATETIME(6), \
         stamp TIMESTAMP(3) NULL, day DATE, doc JSON, raw BLOB, ok TINYINT(1), \
         mood ENUM('happy','it''s fine','back\\\\slash'), ratio DOUBLE, made YEAR, \
         PRIMARY KEY (id, part))"
            .to_owned(),
        "INSERT INTO mixed VALUES \
         (1, 1, 18446744073709551615, -128, -2147483648, -1234567890.1234, 'ünïcødé 🐘', 'abc', \
          CONCAT('tab\\there', CHAR(10), 'line'), '2024-02-29 23:59:59.123456', \
          '2024-03-01 12:00:00.125', '2000-02-29', '{\"b\": [1, 2.50, null], \"a\": \"x\"}', \
          X'00FF0A5C', 1, 'it''s fine', 0.1, 2024), \
         (2, 1, 0, 127, 2147483647, 0, '', '', '', '1970-01-01 00:00:00', \
          '1970-01-02 00:00:00', '1970-01-01', '[]', X'', 0, 'back\\\\slash', -1.5e300, 1901), \
         (3, 2, NULL, NULL, NULL, 9999999999.9999, 'nulls', NULL, NULL, NULL, NULL, NULL, \
          NULL, NULL, NULL, NULL, NULL, NULL)"
            .to_owned(),
        format!(
            "INSERT INTO mixed SELECT seq, seq % 3, seq * 1000003, seq % 100, -seq, seq / 7, \
             CONCAT('name ', seq), LEFT(MD5(seq), 3), REPEAT(MD5(seq), seq % 5), \
             TIMESTAMP '2024-01-01 00:00:00' + INTERVAL seq SECOND, \
             TIMESTAMP '2024-01-01 00:00:00' + INTERVAL seq MINUTE, \
             DATE '2024-01-01' + INTERVAL (seq % 400) DAY, CONCAT('{{\"n\": ', seq, '}}'), \
             UNHEX(MD5(seq)), seq % 2, ELT(1 + seq % 3, 'happy', 'it''s fine', 'back\\\\slash'), \
             seq / 3, 1901 + seq % 250 FROM seq_4_to_{ROWS}"
        ),
    ]
}

/// The rows `sql` reads on `db`.
async fn query(db: &TestDb, sql: &str) -> Vec<AnyRow> {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(&db.url())
        .await
        .unwrap();
    let rows = sqlx::query(sql).fetch_all(&pool).await.unwrap();
    pool.close().await;
    rows
}

/// The created table's columns on the new side, as PostgreSQL's catalogue describes them:
/// `name type [collate C] [not null]` (the collation when it is not the database's).
async fn new_columns(new: &TestDb) -> Vec<String> {
    let rows = query(
        new,
        "SELECT a.attname::text || ' ' || format_type(a.atttypid, a.atttypmod) \
         || COALESCE(' collate ' || NULLIF(co.collname::text, 'default'), '') \
         || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END AS d FROM pg_attribute a \
         LEFT JOIN pg_collation co ON co.oid = a.attcollation \
         WHERE a.attrelid = 'mixed'::regclass AND a.attnum > 0 ORDER BY a.attnum",
    )
    .await;
    rows.iter().map(|row| row.get::<String, _>("d")).collect()
}

async fn primary_key(new: &TestDb) -> String {
    let rows = query(
        new,
        "SELECT pg_get_constraintdef(oid) AS d FROM pg_constraint \
         WHERE conrelid = 'mixed'::regclass AND contype = 'p'",
    )
    .await;
    rows[0].get("d")
}

fn backfill(old: &TestDb, new: &TestDb, control: &str, args: &[&str]) -> (i32, Value) {
    let mut all = vec![
        "--control-db",
        control,
        "--create-schema",
        "--chunk-rows",
        "500",
    ];
    all.extend_from_slice(args);
    run_json("backfill", old, new, &all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_mapped_tables_from_mariadb() {
    let (old, new) = (
        TestDb::create(Kind::Maria).await,
        TestDb::create(Kind::Postgres).await,
    );
    old.exec(&mariadb_mixed()).await;
    let dir = tempfile::tempdir().unwrap();
    let control = control_db(&dir);

    let (code, dry) = backfill(&old, &new, &control, &["--dry-run"]);
    assert_eq!(code, 0, "{dry}");
    assert_eq!(dry["created"][0]["table"], "mixed", "{dry}");
    assert_eq!(
        dry["tables"][0]["copied"], ROWS,
        "would copy every row: {dry}"
    );
    assert!(
        no_table_on_new(&new).await,
        "a dry run creates nothing: {dry}"
    );

    let (code, report) = backfill(&old, &new, &control, &[]);
    assert_eq!(code, 0, "{report}");
    let statements = &report["created"][0]["statements"];
    assert_eq!(
        statements[0], "CREATE TYPE \"mixed_mood\" AS ENUM ('happy', 'it''s fine', 'back\\slash')",
        "{report}"
    );
    assert_eq!(report["tables"][0]["copied"], ROWS, "{report}");
    assert_eq!(
        new_columns(&new).await,
        [
            "id bigint not null",
            "part smallint not null",
            "big numeric(20,0)",
            "small smallint",
            "signed_int integer",
            "amount numeric(14,4) not null",
            "name character varying(40) not null",
            "code character(3)",
            "body text",
            "at timestamp(6) without time zone",
            "stamp timestamp(3) with time zone",
            "day date",
            "doc jsonb",
            "raw bytea",
            "ok boolean",
            "mood mixed_mood",
            "ratio double precision",
            "made integer",
        ]
    );
    assert_eq!(primary_key(&new).await, "PRIMARY KEY (id, part)");
    let (code, compared) = compare(&old, &new, &["--table", "mixed"]);
    assert_eq!(code, 0, "identical after the backfill: {compared}");

    let (code, again) = backfill(&old, &new, &control, &["--restart"]);
    assert_eq!(code, 0, "{again}");
    assert_eq!(
        again["created"],
        serde_json::json!([]),
        "a table that exists is not created again: {again}"
    );
}

/// Whether the new side has no `mixed` table.
async fn no_table_on_new(new: &TestDb) -> bool {
    let rows = query(new, "SELECT to_regclass('mixed') IS NULL AS m").await;
    rows[0].get("m")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_tables_from_postgres_with_their_declared_types() {
    let (old, new) = (
        TestDb::create(Kind::Postgres).await,
        TestDb::create(Kind::Postgres).await,
    );
    old.exec(&[
        "CREATE TABLE mixed (id UUID PRIMARY KEY, n INT NOT NULL, amount NUMERIC(9,3), \
         name VARCHAR(20) COLLATE \"C\", at TIMESTAMPTZ, span INTERVAL, doc JSON)"
            .to_owned(),
        format!(
            "INSERT INTO mixed SELECT md5(g::text)::uuid, g, g / 7.0, 'n' || g, \
             TIMESTAMPTZ '2024-01-01 00:00:00+02' + g * INTERVAL '1 minute', \
             g * INTERVAL '1 day 1 second', \
             json_build_object('g', g) FROM generate_series(1, {ROWS}) g"
        ),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (code, report) = backfill(&old, &new, &control_db(&dir), &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["created"][0]["table"], "mixed", "{report}");
    assert_eq!(report["tables"][0]["copied"], ROWS, "{report}");
    assert_eq!(
        new_columns(&new).await,
        [
            "id uuid not null",
            "n integer not null",
            "amount numeric(9,3)",
            "name character varying(20) collate C",
            "at timestamp with time zone",
            "span interval",
            "doc json",
        ]
    );
    let (code, compared) = compare(&old, &new, &["--table", "mixed"]);
    assert_eq!(code, 0, "identical after the backfill: {compared}");
}

/// Within MariaDB, each text column keeps its own collation (and so its character set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_tables_from_mariadb_on_mariadb_with_their_collations() {
    let (old, new) = (
        TestDb::create(Kind::Maria).await,
        TestDb::create(Kind::Maria).await,
    );
    old.exec(&[
        "CREATE TABLE mixed (id INT PRIMARY KEY, code VARCHAR(10) COLLATE utf8mb4_bin NOT NULL, \
         label VARCHAR(10) CHARACTER SET latin1 COLLATE latin1_swedish_ci, \
         name VARCHAR(10) COLLATE utf8mb4_unicode_ci) DEFAULT CHARSET utf8mb4"
            .to_owned(),
        "INSERT INTO mixed VALUES (1, 'Ab', 'x', 'é'), (2, 'aB', 'Å', NULL)".to_owned(),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (code, report) = backfill(&old, &new, &control_db(&dir), &[]);
    assert_eq!(code, 0, "{report}");
    let rows = query(
        &new,
        "SELECT CONCAT(column_name, ' ', column_type, ' ', COALESCE(collation_name, '-')) AS d \
         FROM information_schema.columns WHERE table_schema = DATABASE() \
         AND table_name = 'mixed' ORDER BY ordinal_position",
    )
    .await;
    // MariaDB's catalogue text reaches sqlx's Any driver as bytes.
    let columns: Vec<String> = rows
        .iter()
        .map(|row| String::from_utf8(row.get::<Vec<u8>, _>("d")).unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "id int(11) -",
            "code varchar(10) utf8mb4_bin",
            "label varchar(10) latin1_swedish_ci",
            "name varchar(10) utf8mb4_unicode_ci",
        ],
        "{report}"
    );
    let (code, compared) = compare(&old, &new, &["--table", "mixed"]);
    assert_eq!(code, 0, "identical after the backfill: {compared}");
}

/// A column whose type has no PostgreSQL counterpart is named, exit 2, nothing created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_column_it_cannot_map() {
    let (old, new) = (
        TestDb::create(Kind::Maria).await,
        TestDb::create(Kind::Postgres).await,
    );
    old.exec(&["CREATE TABLE mixed (id INT PRIMARY KEY, shape GEOMETRY)".to_owned()])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let control = control_db(&dir);
    let output = crate::engines::run_tandem(
        "backfill",
        &old,
        &new,
        &["--control-db", &control, "--create-schema"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr
            .contains("table mixed, column shape: type geometry on the old side is not supported"),
        "{stderr}"
    );
    assert!(no_table_on_new(&new).await, "nothing created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_tables_from_sqlite_by_what_each_column_holds() {
    let (old, new) = (
        TestDb::create(Kind::Sqlite).await,
        TestDb::create(Kind::Postgres).await,
    );
    old.exec(&[
        "CREATE TABLE mixed (id INTEGER PRIMARY KEY, name VARCHAR(20) NOT NULL, ratio REAL, \
         raw BLOB, amount DECIMAL(10,2), ok BOOLEAN, at DATETIME, day DATE)"
            .to_owned(),
        format!(
            "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {ROWS}) \
             INSERT INTO mixed SELECT g, 'n' || g, g / 3.0, CASE WHEN g % 5 = 0 THEN NULL \
             ELSE randomblob(g % 9) END, g * 1.25, g % 2 = 0, \
             datetime('2024-01-01', '+' || g || ' minutes'), date('2024-01-01', '+' || g || ' days') \
             FROM s"
        ),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (code, report) = backfill(&old, &new, &control_db(&dir), &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["tables"][0]["copied"], ROWS, "{report}");
    assert_eq!(
        new_columns(&new).await,
        [
            "id bigint not null",
            "name text not null",
            "ratio double precision",
            "raw bytea",
            "amount numeric",
            "ok boolean",
            "at timestamp without time zone",
            "day date",
        ]
    );
    let (code, compared) = compare(&old, &new, &["--table", "mixed"]);
    assert_eq!(code, 0, "identical after the backfill: {compared}");
}
