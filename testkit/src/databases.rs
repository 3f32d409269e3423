//! Per-test databases on the real servers; each is dropped when its guard goes out of scope.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::{Connection, Executor};

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

/// One of the machine's database servers.
#[derive(Debug, Clone, Copy)]
enum Server {
    /// PostgreSQL on 127.0.0.1:5432, trust auth.
    Postgres,
    /// MariaDB on 127.0.0.1:3306, root with an empty password.
    MariaDb,
}

impl Server {
    fn base_url(self) -> &'static str {
        match self {
            Server::Postgres => "postgres://postgres@127.0.0.1:5432",
            Server::MariaDb => "mysql://root@127.0.0.1:3306",
        }
    }

    fn quoted(self, name: &str) -> String {
        match self {
            Server::Postgres => format!("\"{name}\""),
            Server::MariaDb => format!("`{name}`"),
        }
    }

    async fn execute(self, statement: &str) -> Result<(), sqlx::Error> {
        match self {
            Server::Postgres => {
                let url = format!("{}/postgres", self.base_url());
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                conn.execute(statement).await.map(drop)
            }
            Server::MariaDb => {
                let mut conn = sqlx::MySqlConnection::connect(self.base_url()).await?;
                conn.execute(statement).await.map(drop)
            }
        }
    }

    /// Creates a uniquely named database; returns its name and URL.
    async fn create(self, prefix: &str) -> (String, String) {
        let name = unique_name(prefix);
        self.execute(&format!("CREATE DATABASE {}", self.quoted(&name)))
            .await
            .unwrap_or_else(|err| {
                panic!("cannot create a test database on {self:?} (see shared/README.md): {err}")
            });
        let url = format!("{}/{name}", self.base_url());
        (name, url)
    }

    /// Drops a database on a thread of its own, since `Drop` cannot await in a test's runtime.
    fn drop_database(self, name: &str) {
        let statement = match self {
            Server::Postgres => {
                format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.quoted(name))
            }
            Server::MariaDb => format!("DROP DATABASE IF EXISTS {}", self.quoted(name)),
        };
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(self.execute(&statement)).ok()
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("warning: could not drop test database {name}");
        }
    }
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
        let (name, url) = Server::Postgres.create(prefix).await;
        PostgresDb { name, url }
    }
}

impl Drop for PostgresDb {
    fn drop(&mut self) {
        Server::Postgres.drop_database(&self.name);
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
        let (name, url) = Server::MariaDb.create(prefix).await;
        MariaDb { name, url }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        Server::MariaDb.drop_database(&self.name);
    }
}
