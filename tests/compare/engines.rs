//! Per-test databases on each engine and the few SQL differences the tests need.

use std::process::Output;

use serde_json::Value;
use sqlx::any::AnyPoolOptions;
use sqlx::Executor;
use tandem_testkit::{MariaDb, PostgresDb};
use tempfile::TempDir;

use crate::collation::IcuDatabase;

/// A database of one engine, dropped after the test.
pub enum TestDb {
    Postgres(PostgresDb),
    Maria(MariaDb),
    Sqlite {
        _dir: TempDir,
        url: String,
    },
    /// PostgreSQL whose default collation is ICU's.
    PostgresIcu(IcuDatabase),
}

/// Which engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    Maria,
    Sqlite,
}

impl TestDb {
    pub async fn create(kind: Kind) -> TestDb {
        match kind {
            Kind::Postgres => TestDb::Postgres(PostgresDb::create("tandem_cmp").await),
            Kind::Maria => TestDb::Maria(MariaDb::create("tandem_cmp").await),
            Kind::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
                TestDb::Sqlite { _dir: dir, url }
            }
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            TestDb::Postgres(_) | TestDb::PostgresIcu(_) => Kind::Postgres,
            TestDb::Maria(_) => Kind::Maria,
            TestDb::Sqlite { .. } => Kind::Sqlite,
        }
    }

    pub fn url(&self) -> String {
        match self {
            TestDb::Postgres(db) => db.url.clone(),
            TestDb::PostgresIcu(db) => db.url.clone(),
            TestDb::Maria(db) => db.url.clone(),
            TestDb::Sqlite { url, .. } => url.clone(),
        }
    }

    /// Runs statements in order, on one connection.
    pub async fn exec(&self, statements: &[String]) {
        sqlx::any::install_default_drivers();
        let url = match self {
            TestDb::Sqlite { url, .. } => format!("{url}?mode=rwc"),
            other => other.url(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap();
        for statement in statements {
            pool.execute(statement.as_str())
                .await
                .unwrap_or_else(|err| panic!("{statement}: {err}"));
        }
        pool.close().await;
    }

    /// A boolean literal.
    pub fn boolean(&self, value: bool) -> &'static str {
        match (self.kind(), value) {
            (Kind::Postgres, true) => "true",
            (Kind::Postgres, false) => "false",
            (_, true) => "1",
            (_, false) => "0",
        }
    }
}

/// Runs `tandem compare --format json` with `args`; returns the exit code and the report.
pub fn compare(old: &TestDb, new: &TestDb, args: &[&str]) -> (i32, Value) {
    run_json("compare", old, new, args)
}

/// Runs a JSON-printing subcommand that exits 0 or 1; returns the exit code and the JSON.
pub fn run_json(subcommand: &str, old: &TestDb, new: &TestDb, args: &[&str]) -> (i32, Value) {
    let output = run_tandem(subcommand, old, new, args);
    let code = output.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 1,
        "exit {code}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (code, serde_json::from_slice(&output.stdout).unwrap())
}

/// Runs `tandem compare --format json` and returns the raw output.
pub fn compare_output(old: &TestDb, new: &TestDb, args: &[&str]) -> Output {
    run_tandem("compare", old, new, args)
}

/// Runs `tandem SUBCOMMAND --old … --new … --format json` with quick rechecks, plus `args`.
pub fn run_tandem(subcommand: &str, old: &TestDb, new: &TestDb, args: &[&str]) -> Output {
    let (old_url, new_url) = (old.url(), new.url());
    let mut all = vec![
        subcommand,
        "--old",
        &old_url,
        "--new",
        &new_url,
        "--format",
        "json",
        "--recheck",
        "1",
        "--recheck-delay",
        "10ms",
    ];
    all.extend_from_slice(args);
    std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(&all)
        .env("TANDEM_LOG", "warn")
        .output()
        .unwrap()
}
