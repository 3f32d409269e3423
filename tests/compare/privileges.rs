//! A table the comparator's user may not read is reported as not compared, with the server's
//! permission error, and the run goes on with the other tables (exit 2 at the end, the whole
//! report on stdout); on MariaDB, where a user does not even see a table it holds no privilege
//! on, such a table is never silently left out nor called one-sided.

use sqlx::{Connection, Executor};
use tandem_testkit::{divergences, table, unique_name};

use crate::engines::{Kind, TestDb};

/// A login on one of the servers, dropped (with what it was granted) on drop.
struct Login {
    kind: Kind,
    name: String,
    /// What dropping it takes: statements, each with the URL it runs on.
    cleanup: Vec<(String, String)>,
}

impl Login {
    async fn create(db: &TestDb) -> Login {
        let name = unique_name("tandem_reader");
        let (statements, cleanup) = match db.kind() {
            Kind::Postgres => (
                vec![
                    format!("CREATE ROLE {name} LOGIN"),
                    format!("GRANT USAGE ON SCHEMA public TO {name}"),
                ],
                // Its grants in the test database first: a role granted anything cannot go.
                vec![
                    (db.url(), format!("DROP OWNED BY {name}")),
                    (
                        "postgres://postgres@127.0.0.1:5432/postgres".to_owned(),
                        format!("DROP ROLE IF EXISTS {name}"),
                    ),
                ],
            ),
            Kind::Maria => (
                vec![format!("CREATE USER '{name}'@'%'")],
                vec![(
                    "mysql://root@127.0.0.1:3306".to_owned(),
                    format!("DROP USER IF EXISTS '{name}'@'%'"),
                )],
            ),
            Kind::Sqlite => unreachable!("SQLite has no users"),
        };
        db.exec(&statements).await;
        Login {
            kind: db.kind(),
            name,
            cleanup,
        }
    }

    /// `db`'s URL with this login instead of the administrator.
    fn url(&self, db: &TestDb) -> String {
        let url = db.url();
        let admin = match self.kind {
            Kind::Postgres => "postgres@",
            _ => "root@",
        };
        url.replacen(admin, &format!("{}@", self.name), 1)
    }
}

impl Drop for Login {
    fn drop(&mut self) {
        let (kind, cleanup) = (self.kind, std::mem::take(&mut self.cleanup));
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                for (url, statement) in cleanup {
                    let done = if kind == Kind::Postgres {
                        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
                        conn.execute(statement.as_str()).await.map(drop)
                    } else {
                        let mut conn = sqlx::MySqlConnection::connect(&url).await.unwrap();
                        conn.execute(statement.as_str()).await.map(drop)
                    };
                    if let Err(err) = done {
                        eprintln!("warning: {statement}: {err}");
                    }
                }
            });
        })
        .join();
    }
}

/// Runs `tandem compare` with the old side read as `old_url`; returns the exit code, the
/// report and stderr.
fn compare_as(old_url: &str, new: &TestDb) -> (Option<i32>, serde_json::Value, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["compare", "--format", "json", "--recheck", "0"])
        .args(["--old", old_url, "--new", &new.url()])
        .env("TANDEM_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|err| panic!("{err}: {stderr}"));
    (output.status.code(), report, stderr)
}

fn changed_v(id: i64) -> Vec<(String, String, Vec<String>)> {
    vec![(
        "changed".to_owned(),
        format!(r#"{{"id":{id}}}"#),
        vec!["v".to_owned()],
    )]
}

/// The three tables on both sides; `v` of row 2 of `good` differs.
async fn three_tables(old: &TestDb, new: &TestDb) {
    for db in [old, new] {
        db.exec(&[
            "CREATE TABLE good (id INT PRIMARY KEY, v INT)".to_owned(),
            "CREATE TABLE secret (id INT PRIMARY KEY, v INT)".to_owned(),
            "CREATE TABLE write_only (id INT PRIMARY KEY, v INT)".to_owned(),
            "INSERT INTO good VALUES (1, 1)".to_owned(),
            "INSERT INTO secret VALUES (1, 1)".to_owned(),
        ])
        .await;
    }
    old.exec(&["INSERT INTO good VALUES (2, 2)".to_owned()])
        .await;
    new.exec(&["INSERT INTO good VALUES (2, 3)".to_owned()])
        .await;
}

/// PostgreSQL: a table the old side's role has no SELECT on is not compared, with
/// PostgreSQL's "permission denied"; the table it may read is compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_postgres_denies_is_reported_and_the_others_compared() {
    let (old, new) = (
        TestDb::create(Kind::Postgres).await,
        TestDb::create(Kind::Postgres).await,
    );
    three_tables(&old, &new).await;
    let login = Login::create(&old).await;
    old.exec(&[
        format!("GRANT SELECT ON good TO {}", login.name),
        format!("GRANT INSERT ON write_only TO {}", login.name),
    ])
    .await;
    let (code, report, stderr) = compare_as(&login.url(&old), &new);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("2 of 3 tables could not be compared"),
        "{stderr}"
    );
    assert_eq!(
        divergences(table(&report, "good")),
        changed_v(2),
        "{report}"
    );
    for name in ["secret", "write_only"] {
        let error = table(&report, name)["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("old") && error.contains("permission denied"),
            "{name}: {report}"
        );
    }
}

/// MariaDB: a table the old side's user may write but not read, and one it holds no privilege
/// on at all (which MariaDB hides from it), are both reported as not compared with MariaDB's
/// "SELECT command denied"; neither is called a table the new side has alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_mariadb_denies_or_hides_is_reported_and_the_others_compared() {
    let (old, new) = (
        TestDb::create(Kind::Maria).await,
        TestDb::create(Kind::Postgres).await,
    );
    three_tables(&old, &new).await;
    let login = Login::create(&old).await;
    let TestDb::Maria(maria) = &old else {
        unreachable!("a MariaDB database")
    };
    old.exec(&[
        format!(
            "GRANT SELECT ON `{}`.good TO '{}'@'%'",
            maria.name, login.name
        ),
        format!(
            "GRANT INSERT ON `{}`.write_only TO '{}'@'%'",
            maria.name, login.name
        ),
    ])
    .await;
    let (code, report, stderr) = compare_as(&login.url(&old), &new);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        divergences(table(&report, "good")),
        changed_v(2),
        "{report}"
    );
    assert_eq!(report["only_in_new"], serde_json::json!([]), "{report}");
    for name in ["secret", "write_only"] {
        let error = table(&report, name)["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("old") && error.contains("SELECT command denied"),
            "{name}: {report}"
        );
    }
}
