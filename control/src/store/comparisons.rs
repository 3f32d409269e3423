//! Comparator runs: each run, the result of every table it compared, and the divergences it
//! confirmed, so that dashboards, alerts and the promotion gate read them from one place.

use serde::Serialize;
use sqlx::any::AnyRow;

use super::{column, ControlStore};
use crate::error::ControlError;
use crate::key_values::KeyValues;
use crate::time::Timestamp;

/// The outcome of comparing one table pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewTableResult {
    /// The old side's table.
    pub table: String,
    /// The new side's table.
    pub new_table: String,
    /// Rows read on the old side.
    pub rows_old: i64,
    /// Rows read on the new side.
    pub rows_new: i64,
    /// Confirmed rows the new side lacks.
    pub missing_in_new: i64,
    /// Confirmed rows only the new side has.
    pub extra_in_new: i64,
    /// Confirmed rows whose values differ.
    pub changed: i64,
    /// Differences that went away on recheck.
    pub converged: i64,
    /// Rows that still differed after the rechecks but changed on both sides through them
    /// (never still long enough to be compared): not confirmed, so not in `changed`.
    pub unconverged: i64,
    /// Windows compared.
    pub windows: i64,
    /// Columns present on one side only.
    pub schema_differences: i64,
    /// Whether the pair is identical (compared, no divergence, no unconverged row, no schema
    /// difference).
    pub identical: bool,
    /// Why the pair could not be compared (its counts are then zero).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A confirmed divergent row, to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDivergence {
    /// `missing_in_new`, `extra_in_new` or `changed`.
    pub kind: String,
    /// The key (column → value, in key-column order).
    pub key: KeyValues,
    /// The differing columns (for `changed`).
    pub columns: Vec<String>,
    /// The old side's row (column → value) when it was confirmed; `None` when absent.
    pub old_row: Option<serde_json::Value>,
    /// The new side's row when it was confirmed; `None` when absent.
    pub new_row: Option<serde_json::Value>,
}

/// A recorded run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComparisonRun {
    /// Its id.
    pub id: i64,
    /// The old database, without credentials.
    pub old_source: String,
    /// The new database, without credentials.
    pub new_source: String,
    /// `running`, `identical`, `divergent`, `incomplete` (a sweep that compared every table
    /// it could; those it could not are named in `error`) or `failed`.
    pub status: String,
    /// Why it failed, or which tables an `incomplete` sweep could not compare.
    pub error: Option<String>,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
}

/// A recorded table result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableResult {
    /// The run.
    pub run_id: i64,
    /// The counts.
    #[serde(flatten)]
    pub result: NewTableResult,
    /// When the table was done.
    pub finished_at: Timestamp,
}

/// A recorded divergence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DivergenceRecord {
    /// The run that confirmed it.
    pub run_id: i64,
    /// The old side's table.
    pub table: String,
    /// `missing_in_new`, `extra_in_new` or `changed`.
    pub kind: String,
    /// The key (column → value, in key-column order).
    pub key: KeyValues,
    /// The differing columns.
    pub columns: Vec<String>,
    /// The old side's row when it was confirmed (`null` when absent).
    pub old_row: Option<serde_json::Value>,
    /// The new side's row when it was confirmed (`null` when absent).
    pub new_row: Option<serde_json::Value>,
    /// When it was recorded.
    pub found_at: Timestamp,
}

pub(super) const SELECT_RUN: &str =
    "SELECT id, old_source, new_source, status, error, started_at_ms, finished_at_ms \
     FROM comparison_runs";

impl ComparisonRun {
    pub(super) fn from_row(row: &AnyRow) -> Result<ComparisonRun, ControlError> {
        Ok(ComparisonRun {
            id: column(row, "id")?,
            old_source: column(row, "old_source")?,
            new_source: column(row, "new_source")?,
            status: column(row, "status")?,
            error: column(row, "error")?,
            started_at: Timestamp(column(row, "started_at_ms")?),
            finished_at: column::<Option<i64>>(row, "finished_at_ms")?.map(Timestamp),
        })
    }
}

impl TableResult {
    fn from_row(row: &AnyRow) -> Result<TableResult, ControlError> {
        Ok(TableResult {
            run_id: column(row, "run_id")?,
            result: NewTableResult {
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
                identical: column::<i64>(row, "identical")? != 0,
                error: column(row, "error")?,
            },
            finished_at: Timestamp(column(row, "finished_at_ms")?),
        })
    }
}

impl DivergenceRecord {
    fn from_row(row: &AnyRow) -> Result<DivergenceRecord, ControlError> {
        fn json<T: serde::de::DeserializeOwned>(
            field: &'static str,
            text: &str,
        ) -> Result<T, ControlError> {
            serde_json::from_str(text).map_err(|err| ControlError::Corrupt {
                field,
                reason: err.to_string(),
            })
        }
        Ok(DivergenceRecord {
            run_id: column(row, "run_id")?,
            table: column(row, "table_name")?,
            kind: column(row, "kind")?,
            key: json("row_key", &column::<String>(row, "row_key")?)?,
            columns: json("columns", &column::<String>(row, "columns")?)?,
            old_row: column::<Option<String>>(row, "old_row")?
                .map(|text| json("old_row", &text))
                .transpose()?,
            new_row: column::<Option<String>>(row, "new_row")?
                .map(|text| json("new_row", &text))
                .transpose()?,
            found_at: Timestamp(column(row, "found_at_ms")?),
        })
    }
}

impl ControlStore {
    /// Records the start of a run and returns its id.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn begin_comparison_run(
        &self,
        old_source: &str,
        new_source: &str,
    ) -> Result<i64, ControlError> {
        sqlx::query_scalar(
            "INSERT INTO comparison_runs (old_source, new_source, status, started_at_ms) \
             VALUES ($1, $2, 'running', $3) RETURNING id",
        )
        .bind(old_source)
        .bind(new_source)
        .bind(Timestamp::now().millis())
        .fetch_one(&self.pool)
        .await
        .map_err(ControlError::database("record comparison run"))
    }

    /// Records one table's result and its listed divergences, in one transaction.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn record_table_result(
        &self,
        run_id: i64,
        result: &NewTableResult,
        divergences: &[NewDivergence],
    ) -> Result<(), ControlError> {
        let now = Timestamp::now().millis();
        let failed = || ControlError::database("record table result");
        let mut tx = self.pool.begin().await.map_err(failed())?;
        self.insert_table_result(&mut tx, run_id, result, now)
            .await?;
        self.insert_divergences(&mut tx, run_id, &result.table, divergences, now)
            .await?;
        tx.commit().await.map_err(failed())
    }

    pub(super) async fn insert_table_result(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        run_id: i64,
        result: &NewTableResult,
        now: i64,
    ) -> Result<(), ControlError> {
        sqlx::query(
            "INSERT INTO comparison_tables (run_id, table_name, new_table_name, rows_old, rows_new, \
             missing_in_new, extra_in_new, changed, converged, unconverged, windows, \
             schema_differences, identical, error, finished_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(run_id)
        .bind(&result.table)
        .bind(&result.new_table)
        .bind(result.rows_old)
        .bind(result.rows_new)
        .bind(result.missing_in_new)
        .bind(result.extra_in_new)
        .bind(result.changed)
        .bind(result.converged)
        .bind(result.unconverged)
        .bind(result.windows)
        .bind(result.schema_differences)
        .bind(i64::from(result.identical))
        .bind(result.error.as_deref())
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(ControlError::database("record table result"))?;
        Ok(())
    }

    pub(super) async fn insert_divergences(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        run_id: i64,
        table: &str,
        divergences: &[NewDivergence],
        now: i64,
    ) -> Result<(), ControlError> {
        for divergence in divergences {
            sqlx::query(
                "INSERT INTO divergences (run_id, table_name, kind, row_key, columns, found_at_ms, \
                 old_row, new_row) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(run_id)
            .bind(table)
            .bind(&divergence.kind)
            .bind(divergence.key.to_string())
            .bind(serde_json::Value::from(divergence.columns.clone()).to_string())
            .bind(now)
            .bind(divergence.old_row.as_ref().map(ToString::to_string))
            .bind(divergence.new_row.as_ref().map(ToString::to_string))
            .execute(&mut **tx)
            .await
            .map_err(ControlError::database("record divergence"))?;
        }
        Ok(())
    }

    /// Records the end of a run still running: `identical`, `divergent` or `failed` (with
    /// `error`); a run already ended is left as it is.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn finish_comparison_run(
        &self,
        run_id: i64,
        status: &str,
        error: Option<&str>,
    ) -> Result<(), ControlError> {
        sqlx::query(
            "UPDATE comparison_runs SET status = $1, error = $2, finished_at_ms = $3 \
             WHERE id = $4 AND status = 'running'",
        )
        .bind(status)
        .bind(error)
        .bind(Timestamp::now().millis())
        .bind(run_id)
        .execute(&self.pool)
        .await
        .map_err(ControlError::database("finish comparison run"))?;
        Ok(())
    }

    /// The newest `limit` runs, newest first.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn comparison_runs(&self, limit: i64) -> Result<Vec<ComparisonRun>, ControlError> {
        let rows = sqlx::query(&format!("{SELECT_RUN} ORDER BY id DESC LIMIT $1"))
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(ControlError::database("list comparison runs"))?;
        rows.iter().map(ComparisonRun::from_row).collect()
    }

    /// The latest result of every table ever compared.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn latest_table_results(&self) -> Result<Vec<TableResult>, ControlError> {
        let rows = sqlx::query(
            "SELECT run_id, table_name, new_table_name, rows_old, rows_new, missing_in_new, \
             extra_in_new, changed, converged, unconverged, windows, schema_differences, \
             identical, error, finished_at_ms FROM comparison_tables t \
             WHERE id = (SELECT MAX(id) FROM comparison_tables l WHERE l.table_name = t.table_name) \
             ORDER BY table_name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(ControlError::database("list table results"))?;
        rows.iter().map(TableResult::from_row).collect()
    }

    /// The divergences one run recorded for one table (all tables when `table` is `None`).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn divergences_of_run(
        &self,
        run_id: i64,
        table: Option<&str>,
    ) -> Result<Vec<DivergenceRecord>, ControlError> {
        let rows = sqlx::query(
            "SELECT run_id, table_name, kind, row_key, columns, found_at_ms, old_row, new_row \
             FROM divergences \
             WHERE run_id = $1 AND ($2 = '' OR table_name = $2) ORDER BY id",
        )
        .bind(run_id)
        .bind(table.unwrap_or(""))
        .fetch_all(&self.pool)
        .await
        .map_err(ControlError::database("list divergences"))?;
        rows.iter().map(DivergenceRecord::from_row).collect()
    }

    /// The keys of `table` that run `run_id` lists as `unconverged` and that each of the
    /// `sweeps` newest finished shared runs up to it (`run_id` included) lists as
    /// `unconverged` or `changed`: rows that have not held still long enough to be compared
    /// for that many sweeps in a row. Empty while fewer sweeps have finished.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn persistently_unconverged(
        &self,
        run_id: i64,
        table: &str,
        sweeps: i64,
    ) -> Result<Vec<KeyValues>, ControlError> {
        let keys: Vec<(String,)> = sqlx::query_as(
            "SELECT d.row_key FROM divergences d \
             WHERE d.run_id = $1 AND d.table_name = $2 AND d.kind = 'unconverged' \
             AND (SELECT COUNT(DISTINCT p.run_id) FROM divergences p \
                  WHERE p.table_name = d.table_name AND p.row_key = d.row_key \
                  AND p.kind IN ('unconverged', 'changed') \
                  AND p.run_id IN (SELECT id FROM comparison_runs \
                      WHERE shared = 1 AND id <= $1 AND status NOT IN ('running', 'failed') \
                      ORDER BY id DESC LIMIT $3)) >= $3 \
             ORDER BY d.id",
        )
        .bind(run_id)
        .bind(table)
        .bind(sweeps)
        .fetch_all(&self.pool)
        .await
        .map_err(ControlError::database("read unconverged rows"))?;
        keys.into_iter()
            .map(|(text,)| {
                serde_json::from_str(&text).map_err(|err| ControlError::Corrupt {
                    field: "row_key",
                    reason: err.to_string(),
                })
            })
            .collect()
    }

    /// When each table was last seen identical.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn last_clean_times(&self) -> Result<Vec<(String, Timestamp)>, ControlError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT table_name, MAX(finished_at_ms) FROM comparison_tables WHERE identical = 1 \
             GROUP BY table_name ORDER BY table_name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(ControlError::database("read clean times"))?;
        Ok(rows
            .into_iter()
            .map(|(table, at)| (table, Timestamp(at)))
            .collect())
    }

    /// Confirmed divergent rows per finished run of the last `limit` runs: (finish time,
    /// rows), oldest first.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn divergence_series(
        &self,
        limit: i64,
    ) -> Result<Vec<(Timestamp, i64)>, ControlError> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT r.finished_at_ms, CAST(COALESCE(SUM(t.missing_in_new + t.extra_in_new + \
             t.changed), 0) AS BIGINT) FROM comparison_runs r \
             LEFT JOIN comparison_tables t ON t.run_id = r.id \
             WHERE r.finished_at_ms IS NOT NULL AND r.status <> 'failed' \
             GROUP BY r.id, r.finished_at_ms ORDER BY r.id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(ControlError::database("read divergence series"))?;
        Ok(rows
            .into_iter()
            .rev()
            .map(|(at, rows)| (Timestamp(at), rows))
            .collect())
    }
}
