//! A backfill's progress as it happens: each chunk's outcome recorded as `tandem_backfill_*`
//! metrics and the per-table state behind the periodic progress line, together, so the two
//! never disagree.
//!
//! A table's chunks done are counted up by each chunk this process checkpoints and read back
//! from the control store (where other instances' chunks show) at most every
//! [`STORE_READ_EVERY`] and when the table's workers end, not after every chunk: the read
//! was a round trip to the store per chunk on a path a rerun over a migrated table pays
//! beside its comparison.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics::Unit;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use tandem_control::{BackfillCounts, BackfillProgress, ControlStore};

/// How often a table's workers read its progress back from the store (other instances'
/// chunks show in the gauges within this).
pub(crate) const STORE_READ_EVERY: Duration = Duration::from_secs(1);

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
        "tandem_backfill_rows_skipped_total",
        "Old-side rows this process found already equal on the new side and did not write"
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

/// Where one table of a running backfill stands, as the progress line and a progress bar show
/// it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackfillTableProgress {
    /// The old side's table.
    pub table: String,
    /// Chunks planned.
    pub chunks: u64,
    /// Chunks done, by any instance and earlier runs.
    pub chunks_done: u64,
    /// Old-side rows in the done chunks, by any instance and earlier runs.
    pub rows_done: u64,
    /// The rows of the table when every chunk is done: the done chunks' rows and
    /// `--chunk-rows` for each chunk left (the last chunk holds fewer); exact once every
    /// chunk is done.
    pub rows_estimated: u64,
    /// Old-side rows per second over this run's chunks.
    pub rows_per_sec: f64,
    /// The time left at the pace of this run's chunks so far; unknown before the first.
    pub eta: Option<Duration>,
    /// Whether this process's workers are done with the table.
    pub finished: bool,
}

/// One table's progress in this run.
#[derive(Debug)]
struct TableProgress {
    table: String,
    job: String,
    planned: i64,
    done: i64,
    /// Old-side rows of the done chunks (every instance's, earlier runs' too).
    rows_done: i64,
    done_by_this_run: i64,
    counts: BackfillCounts,
    started: Instant,
    /// When `planned` and `done` were last read from the store.
    read_at: Instant,
    finished: bool,
}

impl TableProgress {
    /// Takes the store's word for how far the table is.
    fn read(&mut self, progress: &BackfillProgress, now: Instant) {
        self.planned = progress.chunks;
        self.done = progress.done;
        self.rows_done = progress.counts.rows_old;
        self.read_at = now;
    }

    /// Whether the store is due to be read again at `now`; if so, the read is taken as begun
    /// (the table's other workers do not read it too).
    fn store_read_due(&mut self, now: Instant) -> bool {
        let due = now.saturating_duration_since(self.read_at) >= STORE_READ_EVERY;
        if due {
            self.read_at = now;
        }
        due
    }
}

/// Every table this run has started on, with its metrics.
#[derive(Debug)]
pub(crate) struct ProgressBoard {
    /// Old-side rows per planned chunk (`--chunk-rows`), for the rows left.
    chunk_rows: usize,
    tables: Mutex<Vec<TableProgress>>,
}

impl ProgressBoard {
    /// A board for chunks of `chunk_rows` rows.
    pub(crate) fn new(chunk_rows: usize) -> ProgressBoard {
        ProgressBoard {
            chunk_rows,
            tables: Mutex::default(),
        }
    }

    /// A table's chunks are planned (or found planned) and copying begins.
    pub(crate) fn table_started(&self, (table, job): (&str, &str), progress: &BackfillProgress) {
        publish_chunks(table, (progress.chunks, progress.done));
        mark_progress(table);
        let now = Instant::now();
        self.lock().push(TableProgress {
            table: table.to_owned(),
            job: job.to_owned(),
            planned: progress.chunks,
            done: progress.done,
            rows_done: progress.counts.rows_old,
            done_by_this_run: 0,
            counts: BackfillCounts::default(),
            started: now,
            read_at: now,
            finished: false,
        });
    }

    /// A chunk was finished in `took`: `recorded` when its checkpoint was taken (false when
    /// another instance had taken the chunk over). True when the table's progress is due to
    /// be read from the store again ([`ProgressBoard::progress_read`]).
    pub(crate) fn chunk_finished(
        &self,
        table: &str,
        (counts, recorded): (&BackfillCounts, bool),
        took: Duration,
    ) -> bool {
        let outcome = if recorded { "done" } else { "claim_lost" };
        counter!("tandem_backfill_chunks_total", "table" => table.to_owned(), "outcome" => outcome)
            .increment(1);
        histogram!("tandem_backfill_chunk_duration_seconds").record(took.as_secs_f64());
        let mut tables = self.lock();
        let Some(entry) = tables.iter_mut().rev().find(|entry| entry.table == table) else {
            return false;
        };
        if recorded {
            // The store's count of done chunks grew by this one.
            entry.done += 1;
            entry.rows_done += counts.rows_old;
            entry.done_by_this_run += 1;
            add(&mut entry.counts, counts);
        }
        publish_chunks(table, (entry.planned, entry.done));
        let due = entry.store_read_due(Instant::now());
        drop(tables);
        if !recorded {
            return due;
        }
        mark_progress(table);
        let rows = [
            ("tandem_backfill_rows_read_total", counts.rows_old),
            ("tandem_backfill_rows_copied_total", counts.copied),
            ("tandem_backfill_rows_skipped_total", counts.skipped),
            ("tandem_backfill_rows_repaired_total", counts.repaired),
            ("tandem_backfill_conflicts_total", counts.conflicts),
            ("tandem_backfill_unconverged_rows_total", counts.unconverged),
        ];
        for (name, value) in rows {
            counter!(name, "table" => table.to_owned())
                .increment(u64::try_from(value).unwrap_or(0));
        }
        due
    }

    /// The table's progress as just read from the store (every instance's chunks).
    pub(crate) fn progress_read(&self, table: &str, progress: &BackfillProgress) {
        let mut tables = self.lock();
        if let Some(entry) = tables.iter_mut().rev().find(|entry| entry.table == table) {
            entry.read(progress, Instant::now());
        }
        publish_chunks(table, (progress.chunks, progress.done));
    }

    /// The table's workers are done (every chunk, or stopped).
    pub(crate) fn table_finished(&self, table: &str) {
        if let Some(entry) = self
            .lock()
            .iter_mut()
            .rev()
            .find(|entry| entry.table == table)
        {
            entry.finished = true;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<TableProgress>> {
        self.tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads again how far the tables this process has left are (other instances may still
    /// be finishing their chunks), so its gauges never show a table as unfinished, and
    /// stalled, after the others finished it.
    pub(crate) async fn refresh_left_tables(&self, store: &ControlStore) {
        let left: Vec<(String, String)> = {
            let tables = self.lock();
            tables
                .iter()
                .filter(|entry| entry.finished && entry.done < entry.planned)
                .map(|entry| (entry.table.clone(), entry.job.clone()))
                .collect()
        };
        for (table, job) in left {
            match store.backfill_progress(&job).await {
                Ok(progress) => {
                    publish_chunks(&table, (progress.chunks, progress.done));
                    let mut tables = self.lock();
                    if let Some(entry) = tables.iter_mut().rev().find(|entry| entry.job == job) {
                        entry.read(&progress, Instant::now());
                    }
                }
                Err(err) => {
                    tracing::warn!(%table, error = %err, "cannot read the backfill's progress")
                }
            }
        }
    }

    /// Where every table this run has started on stands.
    pub(crate) fn snapshot(&self) -> Vec<BackfillTableProgress> {
        let tables = self.lock();
        tables
            .iter()
            .map(|entry| entry.snapshot(self.chunk_rows))
            .collect()
    }

    /// Logs one progress line per table being copied.
    pub(crate) fn log(&self) {
        let tables = self.lock();
        for entry in tables.iter().filter(|entry| !entry.finished) {
            let shown = entry.snapshot(self.chunk_rows);
            tracing::info!(
                table = %entry.table,
                chunks_done = entry.done,
                chunks = entry.planned,
                rows_read = entry.counts.rows_old,
                copied = entry.counts.copied,
                skipped = entry.counts.skipped,
                repaired = entry.counts.repaired,
                conflicts = entry.counts.conflicts,
                rows_per_sec = shown.rows_per_sec.round(),
                eta_seconds = shown.eta.map(|eta| eta.as_secs()),
                "backfill progress"
            );
        }
    }
}

impl TableProgress {
    /// How far the table is, its rows left estimated at `chunk_rows` a chunk.
    fn snapshot(&self, chunk_rows: usize) -> BackfillTableProgress {
        let count = |value: i64| u64::try_from(value).unwrap_or(0);
        let elapsed = self.started.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let rows_per_sec = if elapsed > 0.0 {
            self.counts.rows_old as f64 / elapsed
        } else {
            0.0
        };
        // The chunks left at the pace of this run's chunks so far; unknown before the first.
        let left = count(self.planned - self.done);
        #[allow(clippy::cast_precision_loss)]
        let eta = (self.done_by_this_run > 0)
            .then(|| Duration::from_secs_f64(elapsed / self.done_by_this_run as f64 * left as f64));
        let rows_done = count(self.rows_done);
        let chunk_rows = u64::try_from(chunk_rows).unwrap_or(u64::MAX);
        BackfillTableProgress {
            table: self.table.clone(),
            chunks: count(self.planned),
            chunks_done: count(self.done),
            rows_done,
            rows_estimated: rows_done.saturating_add(left.saturating_mul(chunk_rows)),
            rows_per_sec,
            eta,
            finished: self.finished,
        }
    }
}

/// Chunk `seq` of `table` failed with the transient `error` and is tried again after `wait`.
pub(crate) fn chunk_retried(table: &str, seq: i64, error: &dyn std::fmt::Display, wait: Duration) {
    counter!("tandem_backfill_chunk_retries_total", "table" => table.to_owned()).increment(1);
    tracing::warn!(%table, chunk = seq, %error, retry_in = ?wait, "backfill chunk failed, trying it again");
}

/// The table's chunk gauges: chunks planned and done.
fn publish_chunks(table: &str, (planned, done): (i64, i64)) {
    #[allow(clippy::cast_precision_loss)]
    {
        gauge!("tandem_backfill_chunks_planned", "table" => table.to_owned()).set(planned as f64);
        gauge!("tandem_backfill_chunks_done", "table" => table.to_owned()).set(done as f64);
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
    total.skipped += counts.skipped;
    total.repaired += counts.repaired;
    total.conflicts += counts.conflicts;
    total.unconverged += counts.unconverged;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tandem_control::{BackfillCounts, BackfillProgress};

    use super::{ProgressBoard, STORE_READ_EVERY};

    fn progress(chunks: i64, done: i64) -> BackfillProgress {
        BackfillProgress {
            chunks,
            done,
            counts: BackfillCounts::default(),
        }
    }

    fn done_of(board: &ProgressBoard, table: &str) -> (i64, i64) {
        let tables = board.lock();
        let entry = tables.iter().find(|entry| entry.table == table).unwrap();
        (entry.done, entry.done_by_this_run)
    }

    #[test]
    fn chunks_checkpointed_here_count_up_until_the_store_is_read_again() {
        let board = ProgressBoard::new(10);
        board.table_started(("items", "job"), &progress(10, 3));
        let counts = BackfillCounts {
            rows_old: 5,
            ..BackfillCounts::default()
        };
        board.chunk_finished("items", (&counts, true), Duration::ZERO);
        board.chunk_finished("items", (&counts, true), Duration::ZERO);
        // Lost to another instance: that one counts it when it checkpoints it.
        board.chunk_finished("items", (&counts, false), Duration::ZERO);
        assert_eq!(done_of(&board, "items"), (5, 2));
        // The store also shows other instances' chunks.
        board.progress_read("items", &progress(10, 8));
        assert_eq!(done_of(&board, "items"), (8, 2));
        assert_eq!(board.lock()[0].counts.rows_old, 10);
    }

    #[test]
    fn the_store_is_read_once_an_interval_by_one_worker() {
        let board = ProgressBoard::new(10);
        board.table_started(("items", "job"), &progress(10, 0));
        let mut tables = board.lock();
        let entry = &mut tables[0];
        let read_at = entry.read_at;
        assert!(!entry.store_read_due(read_at + STORE_READ_EVERY / 2));
        assert!(entry.store_read_due(read_at + STORE_READ_EVERY));
        // The read is taken as begun: another worker finishing a chunk then does not read.
        assert!(!entry.store_read_due(read_at + STORE_READ_EVERY));
        let later = read_at + STORE_READ_EVERY * 3;
        entry.read(&progress(10, 4), later);
        assert!(!entry.store_read_due(later + STORE_READ_EVERY / 2));
        assert!(entry.store_read_due(later + STORE_READ_EVERY));
    }

    #[test]
    fn the_rows_left_are_estimated_at_chunk_rows_a_chunk_until_every_chunk_is_done() {
        let board = ProgressBoard::new(100);
        let resumed = BackfillProgress {
            chunks: 4,
            done: 1,
            counts: BackfillCounts {
                rows_old: 100,
                ..BackfillCounts::default()
            },
        };
        board.table_started(("items", "job"), &resumed);
        let shown = &board.snapshot()[0];
        assert_eq!((shown.rows_done, shown.rows_estimated), (100, 400));
        assert_eq!(shown.eta, None, "no chunk of this run done yet");
        let full = BackfillCounts {
            rows_old: 100,
            ..BackfillCounts::default()
        };
        board.chunk_finished("items", (&full, true), Duration::ZERO);
        board.chunk_finished("items", (&full, true), Duration::ZERO);
        // The last chunk holds fewer: once it is done, the estimate is the count.
        let last = BackfillCounts {
            rows_old: 30,
            ..BackfillCounts::default()
        };
        board.chunk_finished("items", (&last, true), Duration::ZERO);
        board.table_finished("items");
        let shown = &board.snapshot()[0];
        assert_eq!(
            (shown.chunks_done, shown.rows_done, shown.rows_estimated),
            (4, 330, 330)
        );
        assert_eq!(shown.eta, Some(Duration::ZERO));
        assert!(shown.finished);
    }

    /// Every count of a checkpointed chunk reaches its counter, by table; a chunk lost to
    /// another instance counts only as such.
    #[test]
    fn each_count_of_a_checkpointed_chunk_is_its_own_counter() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let board = ProgressBoard::new(100);
            board.table_started(("items", "job"), &progress(4, 0));
            let counts = BackfillCounts {
                rows_old: 100,
                copied: 60,
                skipped: 30,
                repaired: 7,
                conflicts: 2,
                unconverged: 1,
            };
            board.chunk_finished("items", (&counts, true), Duration::ZERO);
            board.chunk_finished("items", (&counts, true), Duration::ZERO);
            board.chunk_finished("items", (&counts, false), Duration::ZERO);
        });
        let rendered = handle.render();
        for (series, value) in [
            ("tandem_backfill_rows_read_total", 200),
            ("tandem_backfill_rows_copied_total", 120),
            ("tandem_backfill_rows_skipped_total", 60),
            ("tandem_backfill_rows_repaired_total", 14),
            ("tandem_backfill_conflicts_total", 4),
            ("tandem_backfill_unconverged_rows_total", 2),
        ] {
            let line = format!("{series}{{table=\"items\"}} {value}");
            assert!(
                rendered.lines().any(|l| l == line),
                "{line} in:\n{rendered}"
            );
        }
        for (outcome, value) in [("done", 2), ("claim_lost", 1)] {
            let line = format!(
                "tandem_backfill_chunks_total{{table=\"items\",outcome=\"{outcome}\"}} {value}"
            );
            assert!(
                rendered.lines().any(|l| l == line),
                "{line} in:\n{rendered}"
            );
        }
    }
}
