//! Text keys are compared in byte order whatever collation a database sorts text in.

use sqlx::{Connection, Executor};
use tandem_testkit::{divergences, table, unique_name};

use crate::engines::{compare, Kind, TestDb};

const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// A database whose default collation is ICU's (`datlocprovider = 'i'`) while its
/// `datcollate` names a byte-order locale, dropped on drop.
pub struct IcuDatabase {
    name: String,
    pub url: String,
}

impl IcuDatabase {
    async fn create() -> IcuDatabase {
        let name = unique_name("tandem_cmp_icu");
        let mut conn = sqlx::PgConnection::connect(&format!("{SERVER}/postgres"))
            .await
            .unwrap();
        conn.execute(
            format!(
                "CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu \
                 ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
            )
            .as_str(),
        )
        .await
        .unwrap();
        let url = format!("{SERVER}/{name}");
        IcuDatabase { name, url }
    }
}

impl Drop for IcuDatabase {
    fn drop(&mut self) {
        let statement = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&format!("{SERVER}/postgres"))
                    .await
                    .unwrap();
                conn.execute(statement.as_str()).await.unwrap();
            });
        })
        .join();
    }
}

/// An ICU database sorts `a B c` where bytes sort `B a c`: its text keys are still read in
/// byte order, so every row is paired with its counterpart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn icu_default_collation_text_keys_compare() {
    let (old, new) = (
        TestDb::PostgresIcu(IcuDatabase::create().await),
        TestDb::create(Kind::Postgres).await,
    );
    let codes = ["a", "B", "c", "D", "é", "Z", "b", "A"];
    for db in [&old, &new] {
        db.exec(&["CREATE TABLE t (code TEXT PRIMARY KEY, n INT)".to_owned()])
            .await;
        for (n, code) in codes.iter().enumerate() {
            // The new side lacks "c".
            if !(matches!(db, TestDb::Postgres(_)) && *code == "c") {
                db.exec(&[format!("INSERT INTO t VALUES ('{code}', {n})")])
                    .await;
            }
        }
    }
    let (code, report) = compare(&old, &new, &["--window-rows", "3"]);
    assert_eq!(code, 1, "{report}");
    let t = table(&report, "t");
    assert_eq!(t["rows_old"], 8, "{t}");
    assert_eq!(
        divergences(t),
        [(
            "missing_in_new".to_owned(),
            r#"{"code":"c"}"#.to_owned(),
            vec![]
        )],
        "{t}"
    );
}

/// Text keys ordered by a collation no index serves are read in one ordered pass per side,
/// handed on in chunks: across many chunks every drift is still found exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_read_in_one_ordered_pass_find_every_drift() {
    let (old, new) = (
        TestDb::PostgresIcu(IcuDatabase::create().await),
        TestDb::create(Kind::Maria).await,
    );
    old.exec(&[
        "CREATE TABLE t (code TEXT PRIMARY KEY, n INT)".to_owned(),
        "INSERT INTO t SELECT CASE WHEN g % 2 = 0 THEN 'k' ELSE 'K' END || g, g \
         FROM generate_series(1, 3000) g"
            .to_owned(),
    ])
    .await;
    new.exec(&[
        "CREATE TABLE t (code VARCHAR(20) PRIMARY KEY, n INT) CHARACTER SET utf8mb4 \
         COLLATE utf8mb4_unicode_ci"
            .to_owned(),
        "INSERT INTO t SELECT CONCAT(IF(seq % 2 = 0, 'k', 'K'), seq), seq FROM seq_1_to_3000"
            .to_owned(),
        "DELETE FROM t WHERE code = 'K1001'".to_owned(),
        "UPDATE t SET n = 0 WHERE code = 'k2000'".to_owned(),
        "INSERT INTO t VALUES ('k3001x', 1)".to_owned(),
    ])
    .await;
    let (code, report) = compare(&old, &new, &["--window-rows", "64"]);
    assert_eq!(code, 1, "{report}");
    let t = table(&report, "t");
    assert_eq!(
        (&t["rows_old"], &t["rows_new"]),
        (&3000.into(), &3000.into())
    );
    assert_eq!(
        divergences(t),
        [
            (
                "changed".to_owned(),
                r#"{"code":"k2000"}"#.to_owned(),
                vec!["n".to_owned()]
            ),
            (
                "extra_in_new".to_owned(),
                r#"{"code":"k3001x"}"#.to_owned(),
                vec![]
            ),
            (
                "missing_in_new".to_owned(),
                r#"{"code":"K1001"}"#.to_owned(),
                vec![]
            ),
        ],
        "{t}"
    );
    assert!(t["windows"].as_u64().unwrap() > 40, "{t}");
}

/// Key columns declared with a non-default ICU collation on PostgreSQL (a different one on
/// each side, in a database whose default is byte order) sort `a A å B …` and `… z å ö`, where
/// bytes sort `A B … a b … Å é ö`: every key is still paired with its counterpart across
/// windows, so only the real differences are reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn icu_collated_key_columns_compare_in_byte_order() {
    let (old, new) = (
        TestDb::create(Kind::Postgres).await,
        TestDb::create(Kind::Postgres).await,
    );
    let codes = [
        "a", "B", "c", "D", "é", "Z", "b", "A", "ö", "z", "Å", "aa", "Ab",
    ];
    for (db, collation) in [(&old, "en-US-x-icu"), (&new, "sv-SE-x-icu")] {
        db.exec(&[format!(
            "CREATE TABLE t (code TEXT COLLATE \"{collation}\" PRIMARY KEY, n INT)"
        )])
        .await;
        let rows: Vec<String> = codes
            .iter()
            .enumerate()
            // The new side lacks "c" and has "Z" changed.
            .filter(|(_, code)| !(db.url() == new.url() && **code == "c"))
            .map(|(n, code)| {
                let n = if db.url() == new.url() && *code == "Z" {
                    100
                } else {
                    n
                };
                format!("('{code}', {n})")
            })
            .collect();
        db.exec(&[format!("INSERT INTO t VALUES {}", rows.join(", "))])
            .await;
    }
    let (code, report) = compare(&old, &new, &["--window-rows", "2"]);
    assert_eq!(code, 1, "{report}");
    let t = table(&report, "t");
    assert_eq!(
        (&t["rows_old"], &t["rows_new"]),
        (&13.into(), &12.into()),
        "{t}"
    );
    assert_eq!(
        divergences(t),
        [
            (
                "changed".to_owned(),
                r#"{"code":"Z"}"#.to_owned(),
                vec!["n".to_owned()]
            ),
            (
                "missing_in_new".to_owned(),
                r#"{"code":"c"}"#.to_owned(),
                vec![]
            ),
        ],
        "{t}"
    );
}

/// A SQLite key column declared `COLLATE NOCASE` sorts `a A1 B b2`, where bytes sort
/// `A1 B a b2`: its keys are read in byte order too, so every key is paired with its
/// counterpart in PostgreSQL across windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_nocase_key_columns_compare_in_byte_order() {
    let (old, new) = (
        TestDb::create(Kind::Sqlite).await,
        TestDb::create(Kind::Postgres).await,
    );
    old.exec(&[
        "CREATE TABLE t (code TEXT COLLATE NOCASE PRIMARY KEY, n INTEGER)".to_owned(),
        "INSERT INTO t VALUES ('a', 1), ('B', 2), ('c', 3), ('D', 4), ('b2', 5), ('A1', 6), \
         ('e', 7)"
            .to_owned(),
    ])
    .await;
    new.exec(&[
        "CREATE TABLE t (code TEXT PRIMARY KEY, n INT)".to_owned(),
        "INSERT INTO t VALUES ('a', 1), ('B', 2), ('c', 3), ('D', 4), ('b2', 50), ('A1', 6)"
            .to_owned(),
    ])
    .await;
    let (code, report) = compare(&old, &new, &["--window-rows", "2"]);
    assert_eq!(code, 1, "{report}");
    let t = table(&report, "t");
    assert_eq!(
        divergences(t),
        [
            (
                "changed".to_owned(),
                r#"{"code":"b2"}"#.to_owned(),
                vec!["n".to_owned()]
            ),
            (
                "missing_in_new".to_owned(),
                r#"{"code":"e"}"#.to_owned(),
                vec![]
            ),
        ],
        "{t}"
    );
}
