//! A backfill's progress as it happens: each chunk's outcome recorded as `tandem_backfill_*`
//! metrics and the per-table state behind the periodic progress line, together, so the two
//! never disagree.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics::Unit;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use tandem_control::{BackfillCounts, BackfillProgress, ControlStore};

/// Describes the backfill's metrics (help text on `/metrics`).
pub fn describe_backfill_metrics() {
    describe_gauge!(
        "tandem_backfill_chunks_planned",
        "Chunks the table's backfill is split into (every instance's, from the control store)"
    );
    describe_gauge!(
        "tandem_backfill_chunks_done",
        "Chunks of the table copied, verified and checkpointed, by any instance and earlier runs"
    );
    describe_counter!(
        "tandem_backfill_chunks_total",
        "Chunks this process finished, by outcome (done; claim_lost: another instance took the chunk over first)"
    );
    describe_counter!(
        "tandem_backfill_rows_read_total",
        "Old-side rows in the chunks this process finished"
    );
    describe_counter!(
        "tandem_backfill_rows_copied_total",
        "Rows this process inserted on the new side"
    );
    describe_counter!(
        "tandem_backfill_rows_repaired_total",
        "Rows this process updated or deleted on the new side after verifying a chunk"
    );
    describe_counter!(
        "tandem_backfill_conflicts_total",
        "Conditional writes that found the new side written meanwhile by live traffic (left to the mirror)"
    );
    describe_counter!(
        "tandem_backfill_unconverged_rows_total",
        "Rows still different after the last verification of their chunk"
    );
    describe_counter!(
        "tandem_backfill_chunk_retries_total",
        "Chunks this process tried again after a transient error (connection lost, session terminated, serialization failure)"
    );
    describe_histogram!(
        "tandem_backfill_chunk_duration_seconds",
        Unit::Seconds,
        "How long one chunk took: compared, written, verified and checkpointed"
    );
    describe_gauge!(
        "tandem_backfill_last_progress_timestamp_seconds",
        Unit::Seconds,
        "Unix time this process last finished a chunk of the table (or started on the table)"
    );
}

/// One table's progress in this run.
#[derive(Debug)]
struct TableProgress {
    table: String,
    job: String,
    planned: i64,
    done: i64,
    done_by_this_run: i64,
    counts: BackfillCounts,
    started: Instant,
    finished: bool,
}

/// Every table this run has started on, with its metrics.
#[derive(Debug, Default)]
pub(crate) struct ProgressBoard {
    tables: Mutex<Vec<TableProgress>>,
}

impl ProgressBoard {
    /// A table's chunks are planned (or found planned) and copying begins.
    pub(crate) fn table_started(&self, (table, job): (&str, &str), progress: &BackfillProgress) {
        publish_chunks(table, progress);
        mark_progress(table);
        let mut tables = self
            .tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        tables.push(TableProgress {
            table: table.to_owned(),
            job: job.to_owned(),
            planned: progress.chunks,
            done: progress.done,
            done_by_this_run: 0,
            counts: BackfillCounts::default(),
            started: Instant::now(),
            finished: false,
        });
    }

    /// A chunk was finished in `took`: `recorded` when its checkpoint was taken (false when
    /// another instance had taken the chunk over), `progress` the table's state after it.
    pub(crate) fn chunk_finished(
        &self,
        table: &str,
        (counts, recorded): (&BackfillCounts, bool),
        took: Duration,
        progress: &BackfillProgress,
    ) {
        let outcome = if recorded { "done" } else { "claim_lost" };
        counter!("tandem_backfill_chunks_total", "table" => table.to_owned(), "outcome" => outcome)
            .increment(1);
        histogram!("tandem_backfill_chunk_duration_seconds").record(took.as_secs_f64());
        publish_chunks(table, progress);
        if !recorded {
            return;
        }
        mark_progress(table);
        let rows = [
            ("tandem_backfill_rows_read_total", counts.rows_old),
            ("tandem_backfill_rows_copied_total", counts.copied),
            ("tandem_backfill_rows_repaired_total", counts.repaired),
            ("tandem_backfill_conflicts_total", counts.conflicts),
            ("tandem_backfill_unconverged_rows_total", counts.unconverged),
        ];
        for (name, value) in rows {
            counter!(name, "table" => table.to_owned())
                .increment(u64::try_from(value).unwrap_or(0));
        }
        let mut tables = self
            .tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = tables.iter_mut().rev().find(|entry| entry.table == table) {
            entry.planned = progress.chunks;
            entry.done = progress.done;
            entry.done_by_this_run += 1;
            add(&mut entry.counts, counts);
        }
    }

    /// The table's workers are done (every chunk, or stopped).
    pub(crate) fn table_finished(&self, table: &str) {
        let mut tables = self
            .tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = tables.iter_mut().rev().find(|entry| entry.table == table) {
            entry.finished = true;
        }
    }

    /// Reads again how far the tables this process has left are (other instances may still
    /// be finishing their chunks), so its gauges never show a table as unfinished, and
    /// stalled, after the others finished it.
    pub(crate) async fn refresh_left_tables(&self, store: &ControlStore) {
        let left: Vec<(String, String)> = {
            let tables = self
                .tables
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            tables
                .iter()
                .filter(|entry| entry.finished && entry.done < entry.planned)
                .map(|entry| (entry.table.clone(), entry.job.clone()))
                .collect()
        };
        for (table, job) in left {
            match store.backfill_progress(&job).await {
                Ok(progress) => {
                    publish_chunks(&table, &progress);
                    let mut tables = self
                        .tables
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    if let Some(entry) = tables.iter_mut().rev().find(|entry| entry.job == job) {
                        entry.planned = progress.chunks;
                        entry.done = progress.done;
                    }
                }
                Err(err) => {
                    tracing::warn!(%table, error = %err, "cannot read the backfill's progress")
                }
            }
        }
    }

    /// Logs one progress line per table being copied.
    pub(crate) fn log(&self) {
        let tables = self
            .tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for entry in tables.iter().filter(|entry| !entry.finished) {
            let elapsed = entry.started.elapsed().as_secs_f64();
            #[allow(clippy::cast_precision_loss)]
            let rows_per_sec = if elapsed > 0.0 {
                entry.counts.rows_old as f64 / elapsed
            } else {
                0.0
            };
            // The chunks left at the pace of this run's chunks so far; unknown before the first.
            let left = (entry.planned - entry.done).max(0);
            #[allow(clippy::cast_precision_loss)]
            let eta_seconds = (entry.done_by_this_run > 0)
                .then(|| (elapsed / entry.done_by_this_run as f64 * left as f64).round());
            tracing::info!(
                table = %entry.table,
                chunks_done = entry.done,
                chunks = entry.planned,
                rows_read = entry.counts.rows_old,
                copied = entry.counts.copied,
                repaired = entry.counts.repaired,
                conflicts = entry.counts.conflicts,
                rows_per_sec = rows_per_sec.round(),
                eta_seconds,
                "backfill progress"
            );
        }
    }
}

/// Chunk `seq` of `table` failed with the transient `error` and is tried again after `wait`.
pub(crate) fn chunk_retried(table: &str, seq: i64, error: &dyn std::fmt::Display, wait: Duration) {
    counter!("tandem_backfill_chunk_retries_total", "table" => table.to_owned()).increment(1);
    tracing::warn!(%table, chunk = seq, %error, retry_in = ?wait, "backfill chunk failed, trying it again");
}

/// The table's chunk gauges.
fn publish_chunks(table: &str, progress: &BackfillProgress) {
    #[allow(clippy::cast_precision_loss)]
    {
        gauge!("tandem_backfill_chunks_planned", "table" => table.to_owned())
            .set(progress.chunks as f64);
        gauge!("tandem_backfill_chunks_done", "table" => table.to_owned())
            .set(progress.done as f64);
    }
}

/// Now, as the table's last progress.
fn mark_progress(table: &str) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64());
    gauge!("tandem_backfill_last_progress_timestamp_seconds", "table" => table.to_owned()).set(now);
}

/// Adds one chunk's counts to a total.
pub(crate) fn add(total: &mut BackfillCounts, counts: &BackfillCounts) {
    total.rows_old += counts.rows_old;
    total.copied += counts.copied;
    total.repaired += counts.repaired;
    total.conflicts += counts.conflicts;
    total.unconverged += counts.unconverged;
}
