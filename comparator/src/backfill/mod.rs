//! Online backfill: fills the new side's tables from the old side's while dual-write runs,
//! chunk by chunk in key order, writing only where the new side still holds what was read
//! there, verifying each chunk with the comparator and checkpointing it in the control store.

mod bulk;
mod chunk;
mod create;
mod narrowing;
mod preflight;
mod progress;
mod statistics;
mod table;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tandem_control::{ControlError, ControlStore, Timestamp};
use tokio_util::sync::CancellationToken;

use crate::canonical::Wire;
use crate::database::Database;
use crate::error::CompareError;
use crate::kinds::WireShape;
use crate::plan::TablePlan;
use crate::run::{compare_table, plan_table, table_pairs};
use crate::run::{CompareOptions, KeyRange, TablePair};
use crate::throttle::ReadThrottle;

pub use create::CreatedTable;
use progress::ProgressBoard;
pub use progress::{describe_backfill_metrics, BackfillTableProgress};
use table::{TableRun, Until};

/// Why a backfill failed.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// Reading, comparing or writing a table failed.
    #[error(transparent)]
    Compare(#[from] CompareError),
    /// The control store failed.
    #[error(transparent)]
    Store(#[from] ControlError),
    /// Tables or columns the new side cannot take, one per line; nothing was written.
    #[error("{}", uncarried_lines(.0))]
    Uncarried(Vec<CompareError>),
    /// A backfill that writes was given no control store for its checkpoints.
    #[error("a backfill needs a control store for its checkpoints")]
    NoStore,
    /// A chunk failed every try; it is not checkpointed, so a rerun copies it again.
    #[error(
        "backfill of table {table}: chunk {seq} (keys {keys}) failed {tries} time(s) and is not \
         checkpointed (run the same command again to copy it); the last time"
    )]
    Chunk {
        /// The old side's table.
        table: String,
        /// The chunk's place in key order.
        seq: i64,
        /// Its key range, as JSON bounds.
        keys: String,
        /// How many times it was tried.
        tries: u32,
        /// The last try's error.
        #[source]
        source: Box<CompareError>,
    },
    /// A checkpoint holds a key bound this version cannot read.
    #[error("backfill of table {table}: chunk {seq} holds an unreadable key bound")]
    Checkpoint {
        /// The old side's table.
        table: String,
        /// The chunk's place in key order.
        seq: i64,
    },
}

/// One line per problem.
fn uncarried_lines(problems: &[CompareError]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// How often a [`BackfillProgressSink`] is told where the tables stand.
const PROGRESS_SINK_EVERY: Duration = Duration::from_millis(200);

/// Told where every table a backfill has started on stands, every [`PROGRESS_SINK_EVERY`]
/// and once at the end (e.g. to draw a progress bar per table).
#[derive(Clone)]
pub struct BackfillProgressSink(pub Arc<BackfillProgressFn>);

/// A backfill's progress callback: every table started on, in the order started.
pub type BackfillProgressFn = dyn Fn(&[BackfillTableProgress]) + Send + Sync;

impl std::fmt::Debug for BackfillProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackfillProgressSink")
    }
}

/// How to backfill.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// Old-side rows per chunk, the unit of checkpointing.
    pub chunk_rows: usize,
    /// Chunks copied at once.
    pub threads: usize,
    /// Rounds of conditional writes per chunk before what still differs is left unconverged.
    pub attempts: u32,
    /// Only compare and say what would be copied (nothing written, nothing checkpointed).
    pub dry_run: bool,
    /// Plan every table again, forgetting the checkpoints of plans made before this run
    /// began (a plan another instance's restart made since is kept and shared).
    pub restart: bool,
    /// The owner this process writes on the chunks it claims: its instance name and its
    /// process (`tandem_control::claim_owner`).
    pub instance: String,
    /// How long a claim holds without being completed before another instance takes it.
    pub lease: Duration,
    /// Identifies the two databases in checkpoints (their URLs without passwords).
    pub sources: String,
    /// Once cancelled, no further chunk is claimed: the chunks in hand are finished and
    /// checkpointed, and the backfill returns with what is left.
    pub stop: CancellationToken,
    /// How often a progress line per table being copied is logged (and, with `progress`,
    /// how often the tables whose chunks other instances hold are read from the store).
    pub progress_every: Duration,
    /// Where progress goes instead of the progress lines, if anywhere.
    pub progress: Option<BackfillProgressSink>,
    /// How many times a chunk that failed with a transient error (connection lost, session
    /// terminated, serialization failure, deadlock) is tried again before the backfill stops
    /// with the chunk named.
    pub chunk_retries: u32,
    /// The wait before the first retry of a chunk, doubled before each next one.
    pub retry_delay: Duration,
    /// Create the tables the new side lacks from the old side's (`--create-schema`); on a
    /// dry run, only say what would be created.
    pub create_schema: bool,
}

/// What a backfill did to one table.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BackfillTableReport {
    /// The old side's table.
    pub table: String,
    /// The new side's table, when named differently.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_table: Option<String>,
    /// Chunks planned.
    pub chunks: u64,
    /// Chunks found done by an earlier run and not copied again.
    pub chunks_resumed: u64,
    /// Chunks done now (the rest are left for a rerun when the backfill was stopped).
    pub chunks_done: u64,
    /// Chunks this run found empty on the new side and wrote in bulk (`COPY` into the table;
    /// a chunk whose COPY found a key taken meanwhile went the row way and is not counted
    /// here).
    pub chunks_bulk: u64,
    /// Chunks this run found equal by comparing a group of consecutive chunks as one range
    /// (after chunks that found the new side populated), checkpointed together without a
    /// comparison of their own.
    pub chunks_grouped: u64,
    /// Old-side rows in the chunks done by this run.
    pub rows_old: u64,
    /// Rows this run inserted on the new side (on a dry run: rows it would copy).
    pub copied: u64,
    /// Old-side rows this run found already equal on the new side and did not write (on a
    /// dry run: rows it would not write).
    pub skipped: u64,
    /// Rows this run updated or deleted on the new side after verification (on a dry run:
    /// rows that differ or are extra on the new side).
    pub repaired: u64,
    /// Conditional writes that found the new side written meanwhile (left to the mirror).
    pub conflicts: u64,
    /// Tries of chunks this run made again after a transient error.
    pub chunk_retries: u64,
    /// Rows still different after the last verification of their chunk.
    pub unconverged: u64,
    /// Seconds spent.
    pub seconds: f64,
}

/// What a backfill did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackfillReport {
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Whether every chunk ended identical on both sides.
    pub converged: bool,
    /// Whether it was stopped (SIGTERM) before every chunk was done.
    pub stopped: bool,
    /// The tables `--create-schema` created on the new side (on a dry run: would create).
    pub created: Vec<CreatedTable>,
    /// Rows this run read on both sides (windows, bulk reads, rechecks and the reads before
    /// each conditional write): what `max_rows_per_sec` limits.
    pub rows_read: u64,
    /// The limit on `rows_read` per second, if any.
    pub max_rows_per_sec: Option<u64>,
    /// Per table.
    pub tables: Vec<BackfillTableReport>,
}

/// Backfills every table `compare_options` names (every table on both sides when none),
/// checkpointing in `store` (needed unless `options.dry_run`).
///
/// # Errors
/// When a table cannot be planned or read, a write transaction fails, or the store fails.
pub async fn backfill(
    (old, new): (&Database, &Database),
    store: Option<&ControlStore>,
    compare_options: &CompareOptions,
    options: &BackfillOptions,
) -> Result<BackfillReport, BackfillError> {
    let began = Timestamp::now();
    let (mut pairs, mut only_in_old, only_in_new) = table_pairs(old, new, compare_options).await?;
    let (created, mut problems) = if options.create_schema {
        // Every table of the old side is copied, the ones the new side lacks once created.
        pairs.extend(only_in_old.drain(..).map(|table| TablePair {
            old: table.clone(),
            new: table,
        }));
        if compare_options.tables.is_empty() {
            pairs.sort_by(|a, b| a.old.cmp(&b.old));
        }
        create::plan_creation((old, new), &pairs, &compare_options.selection).await?
    } else {
        (Vec::new(), Vec::new())
    };
    let to_create = |pair: &TablePair| created.iter().any(|table| table.table == pair.new);
    let existing: Vec<TablePair> = pairs.iter().filter(|p| !to_create(p)).cloned().collect();
    // Before anything is written: every problem at once, so one fix-up covers them all.
    let one_sided = (only_in_old.as_slice(), only_in_new.as_slice());
    problems.extend(preflight::uncarried((old, new), &existing, one_sided, compare_options).await?);
    if !problems.is_empty() {
        return Err(BackfillError::Uncarried(problems));
    }
    if !options.dry_run {
        create::create(new, &created).await?;
    }
    let mut plans = Vec::with_capacity(pairs.len());
    for pair in &pairs {
        plans.push(if options.dry_run && to_create(pair) {
            None
        } else {
            Some(plan_table(old, new, pair, compare_options).await?)
        });
    }
    // One budget for the whole run: every row read on either side, by any worker and for
    // any table, counts against `--max-rows-per-sec`.
    let reads = ReadThrottle::new(compare_options.max_rows_per_sec);
    let compare_options = &CompareOptions {
        reads: Some(reads.clone()),
        ..compare_options.clone()
    };
    let board = ProgressBoard::new(options.chunk_rows);
    let work = async {
        match store {
            _ if options.dry_run => {
                let tables = (pairs.as_slice(), plans.as_slice());
                dry_run((old, new), tables, compare_options, &options.stop).await
            }
            Some(store) => {
                let kept = (store, &board);
                let tables = (pairs.as_slice(), plans.as_slice());
                copy_tables((old, new), kept, tables, (compare_options, options), began).await
            }
            None => Err(BackfillError::NoStore),
        }
    };
    tokio::pin!(work);
    let every = options.progress_every.max(Duration::from_millis(10));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut draws = tokio::time::interval(PROGRESS_SINK_EVERY);
    let sink = options.progress.as_ref();
    let tables = loop {
        tokio::select! {
            done = &mut work => break done,
            _ = ticks.tick() => {
                if sink.is_none() {
                    board.log();
                }
                if let Some(store) = store {
                    board.refresh_left_tables(store).await;
                }
            }
            _ = draws.tick(), if sink.is_some() => {
                if let Some(sink) = sink {
                    (sink.0)(&board.snapshot());
                }
            }
        }
    };
    if let Some(sink) = sink {
        (sink.0)(&board.snapshot());
    }
    let tables = tables?;
    let stopped =
        tables.len() < pairs.len() || tables.iter().any(|table| table.chunks_done < table.chunks);
    Ok(BackfillReport {
        dry_run: options.dry_run,
        converged: !stopped && tables.iter().all(|table| table.unconverged == 0),
        stopped,
        created,
        rows_read: reads.rows_read(),
        max_rows_per_sec: compare_options.max_rows_per_sec,
        tables,
    })
}

/// Says what a backfill would write into each table, until `stop`.
async fn dry_run(
    (old, new): (&Database, &Database),
    (pairs, plans): (&[TablePair], &[Option<TablePlan>]),
    compare_options: &CompareOptions,
    stop: &CancellationToken,
) -> Result<Vec<BackfillTableReport>, BackfillError> {
    let mut tables = Vec::with_capacity(plans.len());
    for (pair, plan) in pairs.iter().zip(plans) {
        if stop.is_cancelled() {
            break;
        }
        tables.push(match plan {
            None => dry_run_created_table(old, pair, compare_options).await?,
            Some(plan) => dry_run_table((old, new), plan, compare_options).await?,
        });
    }
    Ok(tables)
}

/// Copies every table, one after the other, each while a chunk of it is left to claim; then
/// waits for the chunks other instances held when this one left their tables (taking each
/// over once its holder's lease runs out) until every chunk of every table is done, so that
/// the backfill returns unstopped only with every table whole. Stops at a chunk boundary
/// when `options.stop` is cancelled.
async fn copy_tables(
    (old, new): (&Database, &Database),
    (store, board): (&ControlStore, &ProgressBoard),
    (pairs, plans): (&[TablePair], &[Option<TablePlan>]),
    (compare_options, options): (&CompareOptions, &BackfillOptions),
    began: Timestamp,
) -> Result<Vec<BackfillTableReport>, BackfillError> {
    let kept = (store, board);
    let settings = (compare_options, options);
    let mut runs = Vec::with_capacity(plans.len());
    for (pair, plan) in pairs.iter().zip(plans) {
        if options.stop.is_cancelled() {
            break;
        }
        // Every table is planned unless a dry run creates it, and this is no dry run.
        let Some(plan) = plan else { continue };
        let run = TableRun::start((old, new), kept, (pair, plan), settings, began).await?;
        let copied = run
            .copy((old, new), kept, settings, Until::NoneToClaim)
            .await;
        board.table_finished(&pair.old);
        copied?;
        runs.push(run);
    }
    for run in &runs {
        if options.stop.is_cancelled() {
            break;
        }
        if !run.complete(store).await? {
            run.copy((old, new), kept, settings, Until::AllDone).await?;
        }
    }
    let mut tables = Vec::with_capacity(runs.len());
    for run in &runs {
        tables.push(run.report(store).await?);
    }
    Ok(tables)
}

/// Compares a whole table and says what a backfill would write.
async fn dry_run_table(
    (old, new): (&Database, &Database),
    plan: &TablePlan,
    compare_options: &CompareOptions,
) -> Result<BackfillTableReport, BackfillError> {
    let started = Instant::now();
    let quick = CompareOptions {
        rechecks: 0,
        max_divergences: 0,
        ..compare_options.clone()
    };
    let report = compare_table(old, new, plan, &KeyRange::default(), &quick)
        .await?
        .report;
    Ok(BackfillTableReport {
        table: plan.old_table.clone(),
        new_table: (plan.new_table != plan.old_table).then(|| plan.new_table.clone()),
        rows_old: report.rows_old,
        copied: report.missing_in_new,
        skipped: chunk::skipped(&report),
        repaired: report.changed + report.extra_in_new,
        seconds: started.elapsed().as_secs_f64(),
        ..BackfillTableReport::default()
    })
}

/// Says what a backfill would copy into a table `--create-schema` would create: every row
/// of the old side's (that the filter keeps).
async fn dry_run_created_table(
    old: &Database,
    pair: &TablePair,
    compare_options: &CompareOptions,
) -> Result<BackfillTableReport, BackfillError> {
    let started = Instant::now();
    let filter = compare_options.filter_for(&pair.old).unwrap_or("1 = 1");
    let sql = format!(
        "SELECT COUNT(*) FROM {} WHERE ({filter})",
        old.quote(&pair.old)
    );
    let rows = old
        .rows(&sql, &[], &[WireShape::Int])
        .await
        .map_err(old.query_failed(&pair.old))?;
    let rows_old = match rows.first().and_then(|row| row.first()) {
        Some(Wire::Int(count)) => u64::try_from(*count).unwrap_or(0),
        _ => 0,
    };
    Ok(BackfillTableReport {
        table: pair.old.clone(),
        new_table: (pair.new != pair.old).then(|| pair.new.clone()),
        rows_old,
        copied: rows_old,
        seconds: started.elapsed().as_secs_f64(),
        ..BackfillTableReport::default()
    })
}
