//! The control store: tandem's shared state, in SQLite (one host) or PostgreSQL (a fleet).

mod alerts;
mod audit;
mod backfills;
mod comparisons;
mod journal_summaries;
mod key_conflicts;
mod mirror_failures;
mod mismatches;
mod promotion;
mod proxy_stats;
mod stages;
mod sweeps;

use std::sync::Arc;
use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyConnection, AnyPool, Connection, Executor, Row};

use crate::error::ControlError;
use crate::redact::redact_url;

pub use alerts::{fingerprint, Alert, AlertCondition, ResolveRule};
pub use audit::{AuditAction, AuditEntry};
pub use backfills::{
    BackfillChunk, BackfillClaim, BackfillCounts, BackfillProgress, BackfillTableStatus,
    NewBackfillChunk,
};
pub use comparisons::{
    ComparisonRun, DivergenceRecord, NewDivergence, NewTableResult, TableResult,
};
pub use journal_summaries::{JournalSummary, PartitionPending, PendingKey, STALE_AFTER_INTERVALS};
pub use key_conflicts::{ConflictOutcome, KeyConflict};
pub use mirror_failures::{
    CopyKind, FailureStatus, MirrorFailure, NewMirrorFailure, SQL_ORDERING_KEY,
};
pub use mismatches::{NewResponseMismatch, ResponseMismatch};
pub use promotion::PromotionPolicy;
pub use proxy_stats::{ProxyBucket, ProxyCounts};
pub use stages::{StageOverview, StageRecord};
pub use sweeps::{NewSweepChunk, NewWindowResult, SweepChunk, SweepProgress, WindowRecord};

/// Longest wait for a pooled connection before a store operation fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries of a SQLite store's migrations (see `ControlStore::migrate`).
const MIGRATION_TRIES: u32 = 5;
/// The wait before the first retry of a SQLite store's migrations, growing with each.
const MIGRATION_RETRY_DELAY: Duration = Duration::from_millis(100);

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");

/// The database engine behind a control store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A local SQLite file: one host, polled for stage changes.
    Sqlite,
    /// A PostgreSQL server shared by many instances, with LISTEN/NOTIFY for stage changes.
    Postgres,
}

impl Backend {
    fn of_url(url: &str) -> Result<Backend, ControlError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(ControlError::InvalidUrl {
                url: redact_url(url),
                reason: "expected sqlite://PATH or postgres://…".to_owned(),
            })
        }
    }
}

/// A handle on the control store; cheap to clone, shared by every task of a process.
#[derive(Debug, Clone)]
pub struct ControlStore {
    pool: AnyPool,
    /// Connections for records that are redone when lost (a backfill's chunk checkpoints),
    /// whose commits do not wait for the disk: see [`ControlStore::begin_redoable`].
    redoable: AnyPool,
    backend: Backend,
    url: Arc<str>,
}

impl ControlStore {
    /// Connects to the store at `url` and applies the embedded schema migrations.
    ///
    /// A `sqlite://` file is created on first use.
    ///
    /// # Errors
    /// When the URL is not supported, the store is unreachable, or a migration fails.
    pub async fn open(url: &str) -> Result<ControlStore, ControlError> {
        let store = ControlStore::connect(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects to the store at `url` without touching its schema.
    ///
    /// # Errors
    /// When the URL is not supported or the store is unreachable.
    pub async fn connect(url: &str) -> Result<ControlStore, ControlError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url)?;
        let connect_url = match backend {
            Backend::Sqlite => sqlite_url_creating_file(url),
            Backend::Postgres => url.to_owned(),
        };
        let options: AnyConnectOptions =
            connect_url
                .parse()
                .map_err(|source: sqlx::Error| ControlError::InvalidUrl {
                    url: redact_url(url),
                    reason: source.to_string(),
                })?;
        // One direct attempt first: an unreachable store fails at once instead of after the
        // pool's acquire timeout.
        AnyConnection::connect_with(&options)
            .await
            .map_err(ControlError::database("connect"))?
            .close()
            .await
            .map_err(ControlError::database("connect"))?;
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets proxies read the stage while the CLI writes it.
                        conn.execute("PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL;")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await
            .map_err(ControlError::database("connect"))?;
        // SQLite's synchronous setting belongs to a connection: those connections are a pool
        // of their own, opened when first used (an in-memory store has one database per
        // pool, so it keeps one pool).
        let redoable = if backend == Backend::Sqlite && !in_memory(url) {
            AnyPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute(
                            "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; \
                             PRAGMA synchronous = NORMAL;",
                        )
                        .await?;
                        Ok(())
                    })
                })
                .connect_lazy_with(options)
        } else {
            pool.clone()
        };
        Ok(ControlStore {
            pool,
            redoable,
            backend,
            url: Arc::from(url),
        })
    }

    /// Applies the embedded schema migrations that have not been applied yet.
    ///
    /// # Errors
    /// When a migration fails or the store's history does not match this binary's.
    pub async fn migrate(&self) -> Result<(), ControlError> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        // Processes opening one new SQLite store at once race to apply each migration (sqlx
        // takes no lock across processes there, as it does on PostgreSQL): the loser's
        // migration fails on what the winner just created and is rolled back; run again, it
        // finds that migration applied. A real failure fails every try.
        let tries = match self.backend {
            Backend::Sqlite => MIGRATION_TRIES,
            Backend::Postgres => 1,
        };
        let mut tried = 1;
        loop {
            match migrator.run(&self.pool).await {
                Ok(()) => return Ok(()),
                Err(err) if tried >= tries => return Err(err.into()),
                Err(err) => {
                    tracing::debug!(error = %err, "migrating the control store again");
                    tokio::time::sleep(MIGRATION_RETRY_DELAY * tried).await;
                    tried += 1;
                }
            }
        }
    }

    /// Which engine holds this store.
    #[must_use]
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The store's URL as given; use [`ControlStore::redacted_url`] for anything shown.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The store's URL with credentials removed, fit for logs.
    #[must_use]
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// Begins a transaction whose commit does not wait for the disk, for records that are
    /// redone when lost: a crash of the process loses none of its commits, a crash of the
    /// machine (power loss) may roll back the last ones. SQLite: a connection with
    /// `synchronous = NORMAL` (in WAL mode: the log is flushed at checkpoints, not at each
    /// commit); PostgreSQL: `synchronous_commit = off` for the transaction. A backfill's chunk
    /// checkpoints are such records (a chunk whose checkpoint is lost is compared again and
    /// found copied): one commit per chunk waited for a flush of the log (4 ms on SQLite here),
    /// a third of what a rerun over a migrated table paid beyond a comparison.
    async fn begin_redoable(
        &self,
        operation: &'static str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, ControlError> {
        let mut tx = self
            .redoable
            .begin()
            .await
            .map_err(ControlError::database(operation))?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await
                .map_err(ControlError::database(operation))?;
        }
        Ok(tx)
    }

    /// Checks that the store answers.
    ///
    /// # Errors
    /// When the store is unreachable.
    pub async fn ping(&self) -> Result<(), ControlError> {
        self.pool
            .execute("SELECT 1")
            .await
            .map_err(ControlError::database("ping"))?;
        Ok(())
    }

    /// Closes every pooled connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Whether a SQLite URL names an in-memory database.
fn in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// SQLite opens files read-write but does not create them unless asked to.
fn sqlite_url_creating_file(url: &str) -> String {
    if url.contains("mode=") || url.contains(":memory:") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// The time before which a claim taken with `lease` has expired.
fn stale_before(lease: Duration) -> i64 {
    crate::time::Timestamp::now().millis()
        - i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2)
}

fn column<'r, T>(row: &'r AnyRow, name: &'static str) -> Result<T, ControlError>
where
    T: sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    row.try_get(name).map_err(|source| ControlError::Database {
        operation: "read column",
        source,
    })
}

fn text_column<T: std::str::FromStr>(field: &'static str, value: &str) -> Result<T, ControlError>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|err: T::Err| ControlError::Corrupt {
        field,
        reason: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unsupported_urls_without_echoing_secrets() {
        let err = Backend::of_url("mysql://root:hunter2@localhost/tandem").unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("postgres://"), "{text}");
    }

    async fn synchronous(executor: impl sqlx::Executor<'_, Database = sqlx::Any>) -> i64 {
        let row = sqlx::query("PRAGMA synchronous")
            .fetch_one(executor)
            .await
            .unwrap();
        row.try_get::<i64, _>(0).unwrap()
    }

    /// Redoable records (a backfill's checkpoints) commit without a flush of SQLite's log;
    /// every other record of the same store still waits for one.
    #[tokio::test]
    async fn only_redoable_records_commit_without_waiting_for_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("control.db").display());
        let store = ControlStore::open(&url).await.unwrap();
        let mut redoable = store.begin_redoable("test").await.unwrap();
        assert_eq!(synchronous(&mut *redoable).await, 1, "NORMAL");
        redoable.commit().await.unwrap();
        assert_eq!(synchronous(&store.pool).await, 2, "FULL");
    }

    #[test]
    fn sqlite_files_are_created_on_first_use() {
        assert_eq!(
            sqlite_url_creating_file("sqlite://tandem.db"),
            "sqlite://tandem.db?mode=rwc"
        );
        assert_eq!(
            sqlite_url_creating_file("sqlite://t.db?mode=ro"),
            "sqlite://t.db?mode=ro"
        );
    }
}
