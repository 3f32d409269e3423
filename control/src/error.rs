//! Errors of the control plane.

/// What went wrong while talking to the control store.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The control-store URL is not one tandem can use.
    #[error("invalid control store URL {url}: {reason}")]
    InvalidUrl {
        /// The URL with any password replaced.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The store could not be reached or a query failed.
    #[error("control store {operation} failed: {source}")]
    Database {
        /// What tandem was doing.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying the embedded schema migrations failed.
    #[error("control store migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A row in the store holds a value this version does not understand.
    #[error("control store holds an invalid {field}: {reason}")]
    Corrupt {
        /// Which field.
        field: &'static str,
        /// Why it could not be read.
        reason: String,
    },
    /// A caller passed a value the store refuses.
    #[error("{0}")]
    InvalidInput(String),
    /// A record the caller named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The store did not answer in time.
    #[error("{0}")]
    Unavailable(String),
    /// The promotion gate refused a stage change.
    #[error("promotion to {stage} refused: {}; `--force` overrides this (and is audited)", blockers.join("; "))]
    PromotionRefused {
        /// The stage asked for.
        stage: crate::stage::Stage,
        /// What is missing.
        blockers: Vec<String>,
    },
}

impl ControlError {
    /// Whether the same query may succeed later: the store out of reach or not answering in
    /// time, or [`sqlx_error_is_transient`]. A refusal of the query itself (the schema, a
    /// constraint, the data) is not.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            ControlError::Unavailable(_) => true,
            ControlError::Database { source, .. } => sqlx_error_is_transient(source),
            _ => false,
        }
    }

    pub(crate) fn database(operation: &'static str) -> impl FnOnce(sqlx::Error) -> ControlError {
        move |source| ControlError::Database { operation, source }
    }
}

/// Whether a query that failed with `error` may succeed if run again, on any engine: the
/// connection lost, the pool exhausted or closed, a PostgreSQL server shutting down,
/// overloaded, or the transaction losing a serialization, a deadlock or a lock wait (SQLSTATE
/// classes 08, 40 and 53, 57P01–57P03, 55P03), or SQLite busy or locked. Errors in the data,
/// the SQL or the schema are not.
#[must_use]
pub fn sqlx_error_is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(error) => error.code().is_some_and(|code| {
            ["08", "40", "53"]
                .iter()
                .any(|class| code.starts_with(class))
                || ["57P01", "57P02", "57P03", "55P03"].contains(&code.as_ref())
                // SQLite's codes are shorter than a SQLSTATE, its extended ones keeping the
                // primary one in their low byte.
                || (code.len() < 5
                    && code
                        .parse::<u32>()
                        .is_ok_and(|code| matches!(code & 0xff, SQLITE_BUSY | SQLITE_LOCKED)))
        }),
        _ => false,
    }
}

/// SQLite's primary result code of a database file in use by another connection.
const SQLITE_BUSY: u32 = 5;

/// SQLite's primary result code of a table locked within one connection.
const SQLITE_LOCKED: u32 = 6;

#[cfg(test)]
mod tests {
    use super::sqlx_error_is_transient;

    #[test]
    fn a_lost_connection_or_a_full_pool_is_transient_a_missing_row_is_not() {
        let lost = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(sqlx_error_is_transient(&lost));
        assert!(sqlx_error_is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!sqlx_error_is_transient(&sqlx::Error::RowNotFound));
        assert!(!sqlx_error_is_transient(&sqlx::Error::ColumnNotFound(
            "id".to_owned()
        )));
    }

    /// A locked SQLite store (another writer) is transient, a constraint refused is not.
    #[tokio::test]
    async fn sqlite_busy_is_transient_a_constraint_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let options: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
        let options = options.busy_timeout(std::time::Duration::ZERO);
        let first = sqlx::SqlitePool::connect_with(options.clone())
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY)")
            .execute(&first)
            .await
            .unwrap();
        sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&first)
            .await
            .unwrap();
        let duplicate = sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&first)
            .await
            .unwrap_err();
        assert!(!sqlx_error_is_transient(&duplicate), "{duplicate}");
        let mut holder = first.acquire().await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *holder)
            .await
            .unwrap();
        let second = sqlx::SqlitePool::connect_with(options).await.unwrap();
        let busy = sqlx::query("INSERT INTO t VALUES (2)")
            .execute(&second)
            .await
            .unwrap_err();
        assert!(sqlx_error_is_transient(&busy), "{busy}");
    }
}
