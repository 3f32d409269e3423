//! A connection pool to one side's database, and the SQL dialect details of its engine.

use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};
use tandem_control::{redact_url, Side};

use crate::error::CompareError;

/// The database engines the comparator reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    MySql,
    /// SQLite.
    Sqlite,
}

/// One side's database.
#[derive(Debug, Clone)]
pub struct Database {
    /// Which side it is.
    pub side: Side,
    /// Its engine.
    pub engine: Engine,
    /// The pool.
    pub pool: AnyPool,
}

impl Database {
    /// Connects to `url` (`postgres://`, `mysql://` or `sqlite://`); SQLite files open read-only.
    ///
    /// # Errors
    /// When the URL names no supported engine or the database is unreachable.
    pub async fn connect(
        side: Side,
        url: &str,
        connections: u32,
    ) -> Result<Database, CompareError> {
        sqlx::any::install_default_drivers();
        let failed = |reason: String| CompareError::Connect {
            side,
            url: redact_url(url),
            reason,
        };
        let (engine, url) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Engine::Postgres, url.to_owned())
        } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            (Engine::MySql, url.replacen("mariadb://", "mysql://", 1))
        } else if url.starts_with("sqlite:") {
            let separator = if url.contains('?') { '&' } else { '?' };
            let url = if url.contains("mode=") {
                url.to_owned()
            } else {
                format!("{url}{separator}mode=ro")
            };
            (Engine::Sqlite, url)
        } else {
            return Err(failed(
                "expected a postgres://, mysql:// or sqlite:// URL".to_owned(),
            ));
        };
        let options: AnyConnectOptions = url
            .parse()
            .map_err(|err: sqlx::Error| failed(err.to_string()))?;
        let pool = AnyPoolOptions::new()
            .max_connections(connections.max(2))
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if engine == Engine::MySql {
                        // Timestamps are read as UTC microseconds whatever the server's zone.
                        conn.execute("SET time_zone = '+00:00'").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|err| failed(err.to_string()))?;
        Ok(Database { side, engine, pool })
    }

    /// Quotes an identifier for this engine.
    #[must_use]
    pub fn quote(&self, identifier: &str) -> String {
        match self.engine {
            Engine::MySql => format!("`{}`", identifier.replace('`', "``")),
            Engine::Postgres | Engine::Sqlite => format!("\"{}\"", identifier.replace('"', "\"\"")),
        }
    }

    /// The placeholder of the `index`-th (1-based) bound parameter.
    #[must_use]
    pub fn placeholder(&self, index: usize) -> String {
        match self.engine {
            Engine::MySql => "?".to_owned(),
            Engine::Postgres | Engine::Sqlite => format!("${index}"),
        }
    }

    /// Wraps a query error with this side and the table.
    pub(crate) fn query_failed(&self, table: &str) -> impl FnOnce(sqlx::Error) -> CompareError {
        let (side, table) = (self.side, table.to_owned());
        move |source| CompareError::Query {
            side,
            table,
            source,
        }
    }
}
