//! Shared sweeps: comparator instances on one control store split each sweep into key-range
//! chunks, claim them with leases that expire when an instance dies (`FOR UPDATE SKIP LOCKED`
//! on PostgreSQL), record each chunk's counts, windows and divergences, and the instance that
//! sees the last chunk done sums them into the run's table results.

use std::time::Duration;

use serde::Serialize;
use sqlx::any::AnyRow;

use super::{column, stale_before, Backend, ControlStore};
use crate::error::ControlError;
use crate::key_values::KeyValues;
use crate::store::comparisons::{ComparisonRun, NewDivergence, NewTableResult, SELECT_RUN};
use crate::time::Timestamp;

/// Window results kept: those of this many newest shared runs (older ones are pruned).
const WINDOW_RUNS_KEPT: i64 = 20;

/// A key range of a table, planned when a shared sweep starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSweepChunk {
    /// The old side's table.
    pub table: String,
    /// The new side's table.
    pub new_table: String,
    /// The key the range starts after (opaque to the store); `None` from the first key.
    pub after: Option<String>,
    /// The range's last key (opaque to the store); `None` to the last key.
    pub through: Option<String>,
    /// Columns (or a whole table) present on one side only.
    pub schema_differences: i64,
    /// Whether there is nothing to read (a table present on one side only, or one that cannot
    /// be compared): recorded as done.
    pub done: bool,
    /// Why the table cannot be compared (a done chunk): its result carries the reason.
    pub error: Option<String>,
}

/// A chunk an instance claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepChunk {
    /// Its id.
    pub id: i64,
    /// The run it belongs to.
    pub run_id: i64,
    /// The old side's table.
    pub table: String,
    /// The new side's table.
    pub new_table: String,
    /// The key the range starts after; `None` from the first key.
    pub after: Option<String>,
    /// The range's last key; `None` to the last key.
    pub through: Option<String>,
    /// Which claim this is (1 for the first); a completion must name the claim it holds.
    pub attempt: i64,
}

/// How far a shared run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SweepProgress {
    /// Chunks nobody claimed yet.
    pub pending: i64,
    /// Chunks claimed and not done (their lease may have expired).
    pub claimed: i64,
    /// Chunks done.
    pub done: i64,
}

impl SweepProgress {
    /// Whether every chunk is done.
    #[must_use]
    pub fn finished(&self) -> bool {
        self.pending == 0 && self.claimed == 0
    }
}

/// One compared window, to record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewWindowResult {
    /// The window's last key (column → value, in key-column order); `None` for an empty
    /// window.
    pub last_key: Option<KeyValues>,
    /// Rows read on the old side.
    pub rows_old: i64,
    /// Rows read on the new side.
    pub rows_new: i64,
    /// The blake3 digest of the old side's rows, in hex.
    pub old_digest: String,
    /// The blake3 digest of the new side's rows, in hex.
    pub new_digest: String,
    /// Rows that differed before rechecks.
    pub differences: i64,
}

/// A recorded window result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WindowRecord {
    /// The run.
    pub run_id: i64,
    /// The chunk it was compared in.
    pub chunk_id: i64,
    /// The old side's table.
    pub table: String,
    /// The result.
    #[serde(flatten)]
    pub result: NewWindowResult,
}

impl SweepChunk {
    fn from_row(row: &AnyRow) -> Result<SweepChunk, ControlError> {
        Ok(SweepChunk {
            id: column(row, "id")?,
            run_id: column(row, "run_id")?,
            table: column(row, "table_name")?,
            new_table: column(row, "new_table_name")?,
            after: column(row, "range_after")?,
            through: column(row, "range_through")?,
            attempt: column(row, "attempts")?,
        })
    }
}

impl WindowRecord {
    fn from_row(row: &AnyRow) -> Result<WindowRecord, ControlError> {
        let last_key = column::<Option<String>>(row, "last_key")?
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|err| ControlError::Corrupt {
                field: "last_key",
                reason: err.to_string(),
            })?;
        Ok(WindowRecord {
            run_id: column(row, "run_id")?,
            chunk_id: column(row, "chunk_id")?,
            table: column(row, "table_name")?,
            result: NewWindowResult {
                last_key,
                rows_old: column(row, "rows_old")?,
                rows_new: column(row, "rows_new")?,
                old_digest: column(row, "old_digest")?,
                new_digest: column(row, "new_digest")?,
                differences: column(row, "differences")?,
            },
        })
    }
}

impl ControlStore {
    /// The shared run in progress, if any.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn running_shared_run(&self) -> Result<Option<ComparisonRun>, ControlError> {
        let row = sqlx::query(&format!(
            "{SELECT_RUN} WHERE shared = 1 AND status = 'running'"
        ))
        .fetch_optional(&self.pool)
        .await
        .map_err(ControlError::database("read shared run"))?;
        row.as_ref().map(ComparisonRun::from_row).transpose()
    }

    /// Starts a shared run with its planned chunks, in one transaction; `None` when another
    /// instance started one first (join that one instead).
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn begin_shared_run(
        &self,
        old_source: &str,
        new_source: &str,
        chunks: &[NewSweepChunk],
    ) -> Result<Option<i64>, ControlError> {
        let failed = ControlError::database("start shared run");
        let now = Timestamp::now().millis();
        let mut tx = self.pool.begin().await.map_err(failed)?;
        let inserted = sqlx::query_scalar::<_, i64>(
            "INSERT INTO comparison_runs (old_source, new_source, status, started_at_ms, shared) \
             VALUES ($1, $2, 'running', $3, 1) RETURNING id",
        )
        .bind(old_source)
        .bind(new_source)
        .bind(now)
        .fetch_one(&mut *tx)
        .await;
        let run_id = match inserted {
            Ok(id) => id,
            Err(sqlx::Error::Database(err)) if err.is_unique_violation() => return Ok(None),
            Err(err) => return Err(ControlError::database("start shared run")(err)),
        };
        for chunk in chunks {
            sqlx::query(
                "INSERT INTO sweep_chunks (run_id, table_name, new_table_name, range_after, \
                 range_through, status, schema_differences, error, finished_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(run_id)
            .bind(&chunk.table)
            .bind(&chunk.new_table)
            .bind(chunk.after.as_deref())
            .bind(chunk.through.as_deref())
            .bind(if chunk.done { "done" } else { "pending" })
            .bind(chunk.schema_differences)
            .bind(chunk.error.as_deref())
            .bind(chunk.done.then_some(now))
            .execute(&mut *tx)
            .await
            .map_err(ControlError::database("plan shared run"))?;
        }
        tx.commit()
            .await
            .map_err(ControlError::database("start shared run"))?;
        Ok(Some(run_id))
    }

    /// Claims the next chunk of `run` for `owner`: one nobody holds, or one whose claim is
    /// older than `lease` (its instance died). `None` when no chunk is claimable.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn claim_sweep_chunk(
        &self,
        run_id: i64,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<SweepChunk>, ControlError> {
        // PostgreSQL: concurrent claimers skip each other's locked rows instead of waiting.
        // SQLite serialises writers, so the statement is atomic as it is.
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let row = sqlx::query(&format!(
            "UPDATE sweep_chunks SET status = 'claimed', owner = $1, claimed_at_ms = $2, \
             attempts = attempts + 1 \
             WHERE id = (SELECT id FROM sweep_chunks WHERE run_id = $3 \
             AND (status = 'pending' OR (status = 'claimed' AND claimed_at_ms < $4)) \
             ORDER BY id LIMIT 1{lock}) \
             RETURNING id, run_id, table_name, new_table_name, range_after, range_through, attempts"
        ))
        .bind(owner)
        .bind(Timestamp::now().millis())
        .bind(run_id)
        .bind(stale_before(lease))
        .fetch_optional(&self.pool)
        .await
        .map_err(ControlError::database("claim sweep chunk"))?;
        row.as_ref().map(SweepChunk::from_row).transpose()
    }

    /// Renews a claim's lease; false when the claim was lost.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn renew_sweep_chunk(&self, chunk: &SweepChunk) -> Result<bool, ControlError> {
        let renewed = sqlx::query(
            "UPDATE sweep_chunks SET claimed_at_ms = $1 \
             WHERE id = $2 AND status = 'claimed' AND attempts = $3",
        )
        .bind(Timestamp::now().millis())
        .bind(chunk.id)
        .bind(chunk.attempt)
        .execute(&self.pool)
        .await
        .map_err(ControlError::database("renew sweep chunk"))?;
        Ok(renewed.rows_affected() == 1)
    }

    /// Gives a claimed chunk back (an instance shutting down), for another instance to claim
    /// at once.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn release_sweep_chunk(&self, chunk: &SweepChunk) -> Result<(), ControlError> {
        sqlx::query(
            "UPDATE sweep_chunks SET status = 'pending', owner = NULL, claimed_at_ms = NULL \
             WHERE id = $1 AND status = 'claimed' AND attempts = $2",
        )
        .bind(chunk.id)
        .bind(chunk.attempt)
        .execute(&self.pool)
        .await
        .map_err(ControlError::database("release sweep chunk"))?;
        Ok(())
    }

    /// Records a claimed chunk's counts, window results and listed divergences in one
    /// transaction; false (nothing recorded) when the claim was lost, because its lease
    /// expired and another instance claimed the chunk.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn complete_sweep_chunk(
        &self,
        chunk: &SweepChunk,
        result: &NewTableResult,
        windows: &[NewWindowResult],
        divergences: &[NewDivergence],
    ) -> Result<bool, ControlError> {
        let failed = || ControlError::database("record sweep chunk");
        let now = Timestamp::now().millis();
        let mut tx = self.pool.begin().await.map_err(failed())?;
        let updated = sqlx::query(
            "UPDATE sweep_chunks SET status = 'done', rows_old = $1, rows_new = $2, \
             missing_in_new = $3, extra_in_new = $4, changed = $5, converged = $6, windows = $7, \
             unconverged = $8, finished_at_ms = $9 \
             WHERE id = $10 AND status = 'claimed' AND attempts = $11",
        )
        .bind(result.rows_old)
        .bind(result.rows_new)
        .bind(result.missing_in_new)
        .bind(result.extra_in_new)
        .bind(result.changed)
        .bind(result.converged)
        .bind(result.windows)
        .bind(result.unconverged)
        .bind(now)
        .bind(chunk.id)
        .bind(chunk.attempt)
        .execute(&mut *tx)
        .await
        .map_err(failed())?;
        if updated.rows_affected() != 1 {
            return Ok(false);
        }
        for window in windows {
            sqlx::query(
                "INSERT INTO comparison_windows (run_id, chunk_id, table_name, last_key, rows_old, \
                 rows_new, old_digest, new_digest, differences) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(chunk.run_id)
            .bind(chunk.id)
            .bind(&chunk.table)
            .bind(window.last_key.as_ref().map(ToString::to_string))
            .bind(window.rows_old)
            .bind(window.rows_new)
            .bind(&window.old_digest)
            .bind(&window.new_digest)
            .bind(window.differences)
            .execute(&mut *tx)
            .await
            .map_err(failed())?;
        }
        self.insert_divergences(&mut tx, chunk.run_id, &chunk.table, divergences, now)
            .await?;
        tx.commit().await.map_err(failed())?;
        Ok(true)
    }

    /// How many chunks of `run` are pending, claimed and done.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn sweep_progress(&self, run_id: i64) -> Result<SweepProgress, ControlError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, COUNT(*) FROM sweep_chunks WHERE run_id = $1 GROUP BY status",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(ControlError::database("read sweep progress"))?;
        let mut progress = SweepProgress::default();
        for (status, count) in rows {
            match status.as_str() {
                "pending" => progress.pending = count,
                "claimed" => progress.claimed = count,
                _ => progress.done = count,
            }
        }
        Ok(progress)
    }

    /// Ends a shared run whose chunks are all done: sums the chunks into one result per table,
    /// records them and the run's status (`incomplete`, with the tables and their reasons in
    /// `error`, when a table could not be compared), and prunes old window results, in one
    /// transaction.
    /// `None` when the run was already ended (by another instance).
    ///
    /// # Errors
    /// When the store cannot be read or written.
    pub async fn finish_shared_run(
        &self,
        run_id: i64,
    ) -> Result<Option<Vec<NewTableResult>>, ControlError> {
        let failed = || ControlError::database("finish shared run");
        let now = Timestamp::now().millis();
        // Every chunk is done, so the sums are final: they are read before the transaction,
        // whose first statement then writes (a read first can fail on SQLite with
        // SQLITE_BUSY_SNAPSHOT when another writer commits in between).
        // PostgreSQL sums BIGINTs as NUMERIC: the casts keep every count a BIGINT.
        let rows = sqlx::query(
            "SELECT table_name, new_table_name, CAST(SUM(rows_old) AS BIGINT) AS rows_old, \
             CAST(SUM(rows_new) AS BIGINT) AS rows_new, \
             CAST(SUM(missing_in_new) AS BIGINT) AS missing_in_new, \
             CAST(SUM(extra_in_new) AS BIGINT) AS extra_in_new, \
             CAST(SUM(changed) AS BIGINT) AS changed, \
             CAST(SUM(converged) AS BIGINT) AS converged, \
             CAST(SUM(unconverged) AS BIGINT) AS unconverged, \
             CAST(SUM(windows) AS BIGINT) AS windows, \
             MAX(schema_differences) AS schema_differences, MAX(error) AS error \
             FROM sweep_chunks WHERE run_id = $1 GROUP BY table_name, new_table_name \
             ORDER BY table_name",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(failed())?;
        let mut tables = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut result = NewTableResult {
                table: column(row, "table_name")?,
                new_table: column(row, "new_table_name")?,
                rows_old: column(row, "rows_old")?,
                rows_new: column(row, "rows_new")?,
                missing_in_new: column(row, "missing_in_new")?,
                extra_in_new: column(row, "extra_in_new")?,
                changed: column(row, "changed")?,
                converged: column(row, "converged")?,
                unconverged: column(row, "unconverged")?,
                windows: column(row, "windows")?,
                schema_differences: column(row, "schema_differences")?,
                identical: false,
                error: column(row, "error")?,
            };
            result.identical = result.missing_in_new == 0
                && result.extra_in_new == 0
                && result.changed == 0
                && result.unconverged == 0
                && result.schema_differences == 0
                && result.error.is_none();
            tables.push(result);
        }
        let not_compared: Vec<String> = tables
            .iter()
            .filter_map(|table| Some(format!("{}: {}", table.table, table.error.as_ref()?)))
            .collect();
        let (status, error) = if !not_compared.is_empty() {
            let reason = format!("tables not compared: {}", not_compared.join("; "));
            ("incomplete", Some(reason))
        } else if tables.iter().all(|table| table.identical) {
            ("identical", None)
        } else {
            ("divergent", None)
        };
        let mut tx = self.pool.begin().await.map_err(failed())?;
        let ended = sqlx::query(
            "UPDATE comparison_runs SET status = $1, error = $2, finished_at_ms = $3 \
             WHERE id = $4 AND status = 'running'",
        )
        .bind(status)
        .bind(error)
        .bind(now)
        .bind(run_id)
        .execute(&mut *tx)
        .await
        .map_err(failed())?;
        if ended.rows_affected() != 1 {
            return Ok(None);
        }
        for table in &tables {
            self.insert_table_result(&mut tx, run_id, table, now)
                .await?;
        }
        sqlx::query(
            "DELETE FROM comparison_windows WHERE run_id NOT IN \
             (SELECT id FROM comparison_runs WHERE shared = 1 ORDER BY id DESC LIMIT $1)",
        )
        .bind(WINDOW_RUNS_KEPT)
        .execute(&mut *tx)
        .await
        .map_err(failed())?;
        tx.commit().await.map_err(failed())?;
        Ok(Some(tables))
    }

    /// The window results `run` recorded for one table (all tables when `table` is `None`),
    /// in key order per table.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn window_results(
        &self,
        run_id: i64,
        table: Option<&str>,
    ) -> Result<Vec<WindowRecord>, ControlError> {
        let rows = sqlx::query(
            "SELECT run_id, chunk_id, table_name, last_key, rows_old, rows_new, old_digest, \
             new_digest, differences FROM comparison_windows \
             WHERE run_id = $1 AND ($2 = '' OR table_name = $2) ORDER BY table_name, chunk_id, id",
        )
        .bind(run_id)
        .bind(table.unwrap_or(""))
        .fetch_all(&self.pool)
        .await
        .map_err(ControlError::database("list window results"))?;
        rows.iter().map(WindowRecord::from_row).collect()
    }
}
