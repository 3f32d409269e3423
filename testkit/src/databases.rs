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
    /// One of the project's two extra PostgreSQL clusters (`scripts/ensure-logical-pg`):
    /// wal_level = logical and prepared transactions, on 127.0.0.1:5433 (the second one:
    /// 5434) unless `TANDEM_LOGICAL_PG` (`TANDEM_LOGICAL_PG2`) says.
    LogicalPostgres {
        /// The second cluster.
        second: bool,
    },
    /// The project's small logical cluster with a single replication slot, on
    /// 127.0.0.1:5435 unless `TANDEM_ONE_SLOT_PG` says.
    OneSlotPostgres,
    /// MariaDB on 127.0.0.1:3306, root with an empty password.
    MariaDb,
}

impl Server {
    fn base_url(self) -> String {
        match self {
            Server::Postgres => "postgres://postgres@127.0.0.1:5432".to_owned(),
            Server::LogicalPostgres { second: false } => std::env::var("TANDEM_LOGICAL_PG")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433".to_owned()),
            Server::LogicalPostgres { second: true } => std::env::var("TANDEM_LOGICAL_PG2")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5434".to_owned()),
            Server::OneSlotPostgres => std::env::var("TANDEM_ONE_SLOT_PG")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5435".to_owned()),
            Server::MariaDb => "mysql://root@127.0.0.1:3306".to_owned(),
        }
    }

    fn quoted(self, name: &str) -> String {
        match self {
            Server::Postgres | Server::LogicalPostgres { .. } | Server::OneSlotPostgres => {
                format!("\"{name}\"")
            }
            Server::MariaDb => format!("`{name}`"),
        }
    }

    async fn execute(self, statement: &str) -> Result<(), sqlx::Error> {
        match self {
            Server::Postgres | Server::LogicalPostgres { .. } | Server::OneSlotPostgres => {
                let url = format!("{}/postgres", self.base_url());
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                conn.execute(statement).await.map(drop)
            }
            Server::MariaDb => {
                let mut conn = sqlx::MySqlConnection::connect(&self.base_url()).await?;
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
            Server::Postgres | Server::LogicalPostgres { .. } | Server::OneSlotPostgres => {
                format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.quoted(name))
            }
            Server::MariaDb => format!("DROP DATABASE IF EXISTS {}", self.quoted(name)),
        };
        let dropped = crate::run_apart(move || async move { self.execute(&statement).await.ok() });
        if dropped.is_none() {
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
    server: Server,
}

impl PostgresDb {
    /// Creates a uniquely named database on the machine's PostgreSQL.
    ///
    /// # Panics
    /// When the server is unreachable: tests need it.
    pub async fn create(prefix: &str) -> PostgresDb {
        PostgresDb::create_on(Server::Postgres, prefix).await
    }

    /// Creates a uniquely named database on one of the project's two extra clusters (the
    /// `second` one, or the first), which have `wal_level = logical` and prepared
    /// transactions (`scripts/ensure-logical-pg`).
    ///
    /// # Panics
    /// When that cluster is unreachable: run `scripts/ensure-logical-pg`.
    pub async fn create_logical(prefix: &str, second: bool) -> PostgresDb {
        PostgresDb::create_on(Server::LogicalPostgres { second }, prefix).await
    }

    /// Creates a uniquely named database on the project's logical cluster that keeps a
    /// single replication slot (`scripts/ensure-logical-pg`).
    ///
    /// # Panics
    /// When that cluster is unreachable: run `scripts/ensure-logical-pg`.
    pub async fn create_on_one_slot_server(prefix: &str) -> PostgresDb {
        PostgresDb::create_on(Server::OneSlotPostgres, prefix).await
    }

    async fn create_on(server: Server, prefix: &str) -> PostgresDb {
        let (name, url) = server.create(prefix).await;
        PostgresDb { name, url, server }
    }
}

impl Drop for PostgresDb {
    fn drop(&mut self) {
        self.server.drop_database(&self.name);
    }
}

/// A uniquely named login role, made in a [`PostgresDb`] and dropped on drop (with what it
/// owns and was granted in that database), also when the test panics: roles are the
/// cluster's, not the database's, so dropping the database would leave it behind. Declared
/// after its database, it is dropped before it.
#[derive(Debug)]
pub struct PostgresRole {
    /// Its name.
    pub name: String,
    /// The database it was made in.
    database_url: String,
    server: Server,
}

impl PostgresRole {
    /// Makes a role named after `prefix` that can log in, on `database`'s server.
    ///
    /// # Panics
    /// When the server is unreachable or refuses: tests need it.
    pub async fn create(database: &PostgresDb, prefix: &str) -> PostgresRole {
        let name = unique_name(prefix);
        let mut conn = sqlx::PgConnection::connect(&database.url)
            .await
            .unwrap_or_else(|err| panic!("cannot reach {}: {err}", database.name));
        conn.execute(format!("CREATE ROLE \"{name}\" LOGIN").as_str())
            .await
            .unwrap_or_else(|err| panic!("cannot create role {name}: {err}"));
        let _ = conn.close().await;
        PostgresRole {
            name,
            database_url: database.url.clone(),
            server: database.server,
        }
    }
}

impl Drop for PostgresRole {
    fn drop(&mut self) {
        let (name, url, server) = (self.name.clone(), self.database_url.clone(), self.server);
        let dropped = crate::run_apart(move || async move {
            // What it owns and was granted in its database (gone already: nothing there).
            if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
                let _ = conn
                    .execute(format!("DROP OWNED BY \"{name}\"").as_str())
                    .await;
                let _ = conn.close().await;
            }
            server
                .execute(&format!("DROP ROLE IF EXISTS \"{name}\""))
                .await
                .ok()
        });
        if dropped.is_none() {
            eprintln!("warning: could not drop test role {}", self.name);
        }
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
