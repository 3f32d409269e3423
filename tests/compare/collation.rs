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
