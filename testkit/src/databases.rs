//! Per-test databases on the real servers; each is dropped when its guard goes out of scope.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::{Connection, Executor};

/// The machine's PostgreSQL server (trust auth).
pub const POSTGRES_SERVER: &str = "postgres://postgres@127.0.0.1:5432";
/// The machine's MariaDB server (root, empty password).
pub const MARIADB_SERVER: &str = "mysql://root@127.0.0.1:3306";

/// A name no other test (in this or another process) uses: `prefix_pid_counter_random`.
#[must_use]
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        &random[..8]
    )
}

/// A fresh PostgreSQL database, dropped (with its connections) on drop.
#[derive(Debug)]
pub struct PostgresDb {
    /// Its name.
    pub name: String,
    /// A URL to connect to it.
    pub url: String,
}

impl PostgresDb {
    /// Creates a uniquely named database.
    ///
    /// # Panics
    /// When the server is unreachable: tests need it.
    pub async fn create(prefix: &str) -> PostgresDb {
        let name = unique_name(prefix);
        let mut admin = sqlx::PgConnection::connect(&format!("{POSTGRES_SERVER}/postgres"))
            .await
            .expect("PostgreSQL must run on 127.0.0.1:5432 (see shared/README.md)");
        admin
            .execute(format!("CREATE DATABASE \"{name}\"").as_str())
            .await
            .expect("create test database");
        PostgresDb {
            url: format!("{POSTGRES_SERVER}/{name}"),
            name,
        }
    }
}

impl Drop for PostgresDb {
    fn drop(&mut self) {
        let statement = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        drop_in_thread(format!("{POSTGRES_SERVER}/postgres"), statement, true);
    }
}

/// A fresh MariaDB database, dropped on drop.
#[derive(Debug)]
pub struct MariaDb {
    /// Its name.
    pub name: String,
    /// A URL to connect to it.
    pub url: String,
}

impl MariaDb {
    /// Creates a uniquely named database.
    ///
    /// # Panics
    /// When the server is unreachable: tests need it.
    pub async fn create(prefix: &str) -> MariaDb {
        let name = unique_name(prefix);
        let mut admin = sqlx::MySqlConnection::connect(MARIADB_SERVER)
            .await
            .expect("MariaDB must run on 127.0.0.1:3306 (see shared/README.md)");
        admin
            .execute(format!("CREATE DATABASE `{name}`").as_str())
            .await
            .expect("create test database");
        MariaDb {
            url: format!("{MARIADB_SERVER}/{name}"),
            name,
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let statement = format!("DROP DATABASE IF EXISTS `{}`", self.name);
        drop_in_thread(MARIADB_SERVER.to_owned(), statement, false);
    }
}

/// Runs a DROP on a thread of its own, since drop cannot await inside a test's runtime.
fn drop_in_thread(server: String, statement: String, postgres: bool) {
    let dropped = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime.block_on(async {
            if postgres {
                let mut conn = sqlx::PgConnection::connect(&server).await.ok()?;
                conn.execute(statement.as_str()).await.ok().map(drop)
            } else {
                let mut conn = sqlx::MySqlConnection::connect(&server).await.ok()?;
                conn.execute(statement.as_str()).await.ok().map(drop)
            }
        })
    })
    .join();
    if !matches!(dropped, Ok(Some(_))) {
        eprintln!("warning: could not drop a test database");
    }
}
