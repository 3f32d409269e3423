//! Running a comparison: table pairing, the window loop, rechecks and throttling.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tandem_control::Side;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use crate::canonical::{decode_key, encode_key, encoded_key_cmp, Canonical, CanonicalSettings};
use crate::database::{Database, Engine};
use crate::diff::{diff_pair, diff_windows, DivergenceKind, RowDivergence};
use crate::error::CompareError;
use crate::multiset::{compare_multiset, MultisetOptions, PASS_BYTES};
use crate::plan::{ColumnSelection, TablePlan};
use crate::reader::{Chunk, Row, TableReader};
use crate::report::{DivergenceReport, KeyValues, Report, TableReport};
use crate::schema::{check_not_hidden, describe, list_tables, TableSchema};
use crate::throttle::ReadThrottle;
use crate::window::EncodedRows;

/// Differences kept (with their keys) per table for rechecks and the report; beyond this many,
/// differences are counted without a recheck, so memory stays bounded on a mostly empty side.
const MAX_CANDIDATES: usize = 100_000;

/// Keys re-read per query during rechecks.
const RECHECK_BATCH: usize = 500;

/// A table on the old side and its counterpart on the new side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePair {
    /// The old side's table.
    pub old: String,
    /// The new side's table.
    pub new: String,
}

impl TablePair {
    /// Parses `NAME` or `OLD_NAME:NEW_NAME`.
    #[must_use]
    pub fn parse(text: &str) -> TablePair {
        match text.split_once(':') {
            Some((old, new)) => TablePair {
                old: old.to_owned(),
                new: new.to_owned(),
            },
            None => TablePair {
                old: text.to_owned(),
                new: text.to_owned(),
            },
        }
    }
}

/// Told how many rows of a table have been compared so far (e.g. to draw a progress bar).
#[derive(Clone)]
pub struct ProgressSink(pub Arc<ProgressFn>);

/// A progress callback: table name and rows compared so far.
pub type ProgressFn = dyn Fn(&str, u64) + Send + Sync;

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressSink")
    }
}

/// What to compare and how.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// The tables to compare; empty for every table present on both sides.
    pub tables: Vec<TablePair>,
    /// Key and column choice.
    pub selection: ColumnSelection,
    /// An SQL condition both sides are restricted by.
    pub filter: Option<String>,
    /// Most rows per read (reads are also kept near 8 MiB of encoded rows).
    pub window_rows: usize,
    /// Tables compared at once.
    pub threads: usize,
    /// Rechecks of differences before they count.
    pub rechecks: u32,
    /// Wait before each recheck.
    pub recheck_delay: Duration,
    /// Reading limit over both sides, in rows per second.
    pub max_rows_per_sec: Option<u64>,
    /// The budget every row read counts into when several comparisons share one (a
    /// backfill's chunks); `None`: each table's comparison keeps to `max_rows_per_sec` alone.
    pub reads: Option<ReadThrottle>,
    /// Most divergences listed per table (counts stay exact).
    pub max_divergences: usize,
    /// Canonical-form settings.
    pub settings: CanonicalSettings,
    /// Where progress goes, if anywhere.
    pub progress: Option<ProgressSink>,
    /// The width of the rows of the table compared, learned by the comparisons before this
    /// one of the same table (a backfill's chunks share one per table); `None`: each
    /// comparison learns it anew.
    pub row_width: Option<RowWidth>,
}

/// The encoded width of a table's rows, learned by a comparison's reads and shared with the
/// next comparisons of the same table, whose first read is then sized by it (about
/// [`CHUNK_BYTES`]) instead of being a probe of [`FIRST_CHUNK_ROWS`] rows: a backfill's
/// chunk of 10,000 rows is read in one query per side, not two.
#[derive(Debug, Clone, Default)]
pub struct RowWidth(Arc<AtomicUsize>);

impl RowWidth {
    /// Bytes per encoded row, once a read has returned rows.
    fn bytes(&self) -> Option<usize> {
        Some(self.0.load(Ordering::Relaxed)).filter(|bytes| *bytes > 0)
    }

    /// Rows one read of the table takes (about [`CHUNK_BYTES`] of them, at most `max_rows`):
    /// `max_rows` until a read has returned rows.
    pub(crate) fn rows_per_read(&self, max_rows: usize) -> usize {
        self.bytes()
            .map_or(max_rows, |bytes| chunk_rows(bytes, max_rows))
    }

    /// Learns the width of `rows`, when there are any.
    fn learn(&self, rows: &EncodedRows) {
        if !rows.is_empty() {
            self.0.store(row_bytes(rows).max(1), Ordering::Relaxed);
        }
    }
}

impl CompareOptions {
    /// The budget this comparison's reads count into: the shared one, else its own.
    #[must_use]
    pub fn throttle(&self) -> ReadThrottle {
        self.reads
            .clone()
            .unwrap_or_else(|| ReadThrottle::new(self.max_rows_per_sec))
    }

    /// The SQL condition `table` (the old side's name) is restricted by: its own, else the one
    /// for every table.
    #[must_use]
    pub fn filter_for(&self, table: &str) -> Option<&str> {
        self.selection
            .tables
            .get(table)
            .and_then(|aimed| aimed.filter.as_deref())
            .or(self.filter.as_deref())
    }
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            tables: Vec::new(),
            selection: ColumnSelection::default(),
            filter: None,
            window_rows: 100_000,
            threads: 4,
            rechecks: 3,
            recheck_delay: Duration::from_secs(2),
            max_rows_per_sec: None,
            reads: None,
            max_divergences: 1_000,
            settings: CanonicalSettings::default(),
            progress: None,
            row_width: None,
        }
    }
}

/// Compares the two databases as `options` say. A table that cannot be compared (missing, no
/// usable key, a type that cannot be compared, a query that fails) is reported with its
/// reason, and the other tables are compared all the same.
///
/// # Errors
/// When the options are unusable or a catalogue cannot be listed.
pub async fn compare(
    old: &Database,
    new: &Database,
    options: &CompareOptions,
) -> Result<Report, CompareError> {
    if options.window_rows == 0 {
        return Err(CompareError::InvalidOption(
            "--window-rows must be at least 1".to_owned(),
        ));
    }
    let (pairs, only_in_old, only_in_new) = table_pairs(old, new, options).await?;
    let tables: Vec<TableReport> = futures_util::stream::iter(pairs)
        .map(|pair| async move {
            compare_pair(old, new, &pair, options)
                .await
                .unwrap_or_else(|error| {
                    TableReport::failed(&pair.old, &pair.new, error.to_string())
                })
        })
        .buffered(options.threads.max(1))
        .collect()
        .await;
    Ok(Report {
        identical: tables.iter().all(TableReport::identical)
            && only_in_old.is_empty()
            && only_in_new.is_empty(),
        tables,
        only_in_old,
        only_in_new,
    })
}

/// The table pairs `options` name, or every table present on both sides; and the tables
/// present on the old side only and on the new side only (when pairing every table).
///
/// # Errors
/// When a catalogue cannot be read.
pub(crate) async fn table_pairs(
    old: &Database,
    new: &Database,
    options: &CompareOptions,
) -> Result<(Vec<TablePair>, Vec<String>, Vec<String>), CompareError> {
    if !options.tables.is_empty() {
        return Ok((options.tables.clone(), Vec::new(), Vec::new()));
    }
    let (old_tables, new_tables) = tokio::try_join!(list_tables(old), list_tables(new))?;
    let mut pairs: Vec<TablePair> = old_tables
        .iter()
        .filter(|table| new_tables.contains(table))
        .map(|table| TablePair::parse(table))
        .collect();
    // A table one side's catalogue hides from its user is a pair that cannot be compared
    // (planning it names the permission error), never a table of the other side alone.
    let mut only_in_old = Vec::new();
    for table in old_tables
        .iter()
        .filter(|table| !new_tables.contains(table))
    {
        match check_not_hidden(new, table).await {
            Ok(()) => only_in_old.push(table.clone()),
            Err(_) => pairs.push(TablePair::parse(table)),
        }
    }
    let mut only_in_new = Vec::new();
    for table in new_tables
        .iter()
        .filter(|table| !old_tables.contains(table))
    {
        match check_not_hidden(old, table).await {
            Ok(()) => only_in_new.push(table.clone()),
            Err(_) => pairs.push(TablePair::parse(table)),
        }
    }
    pairs.sort_by(|a, b| a.old.cmp(&b.old));
    Ok((pairs, only_in_old, only_in_new))
}

async fn compare_pair(
    old: &Database,
    new: &Database,
    pair: &TablePair,
    options: &CompareOptions,
) -> Result<TableReport, CompareError> {
    let plan = plan_pair(old, new, pair, options).await?;
    if plan.is_whole_rows() {
        return compare_whole_rows(old, new, &plan, options).await;
    }
    let span = tracing::info_span!("compare_table", table = %plan.old_table);
    let compared = compare_table(old, new, &plan, &KeyRange::default(), options)
        .instrument(span)
        .await?;
    Ok(compared.report)
}

/// Plans a table pair by its key, or, when it has none, as a multiset of whole rows
/// ([`TablePlan::is_whole_rows`]).
///
/// # Errors
/// When a table is missing or a column cannot be compared.
pub(crate) async fn plan_pair(
    old: &Database,
    new: &Database,
    pair: &TablePair,
    options: &CompareOptions,
) -> Result<TablePlan, CompareError> {
    match plan_table(old, new, pair, options).await {
        Err(CompareError::NoKey { .. }) => plan_whole_rows(old, new, pair, options).await,
        planned => planned,
    }
}

/// Compares a table pair planned without a key as a multiset of whole rows.
///
/// # Errors
/// When a query fails or an encoding does not decode.
pub(crate) async fn compare_whole_rows(
    old: &Database,
    new: &Database,
    plan: &TablePlan,
    options: &CompareOptions,
) -> Result<TableReport, CompareError> {
    let multiset = MultisetOptions {
        filter: options.filter_for(&plan.old_table),
        rechecks: options.rechecks,
        recheck_delay: options.recheck_delay,
        max_divergences: options.max_divergences,
        settings: options.settings,
        pass_bytes: PASS_BYTES,
    };
    compare_multiset(old, new, plan, &multiset).await
}

/// Keys that split the old side of `plan` into ranges of `every` rows (in key order): the
/// ranges after each boundary cover every key of both sides between them. Each boundary is
/// found by the server, stepping `every` rows past the last one ([`TableReader::key_after`]):
/// no other key crosses the wire, and only the boundaries are held. PostgreSQL takes every
/// step in one recursive query ([`TableReader::stepped_keys`]), without a round trip between
/// steps; other engines one query per step.
///
/// # Errors
/// When a query fails or the keys come back out of order.
pub async fn key_boundaries(
    old: &Database,
    plan: &TablePlan,
    options: &CompareOptions,
    every: usize,
) -> Result<Vec<Vec<Canonical>>, CompareError> {
    let keys_only = TablePlan {
        values: Vec::new(),
        ..plan.clone()
    };
    let filter = options.filter_for(&plan.old_table);
    let reader = TableReader::new(old, &keys_only, filter, options.settings);
    let skip = every.max(1) - 1;
    if old.engine == Engine::Postgres {
        return reader.stepped_keys(skip).await;
    }
    let mut boundaries: Vec<Vec<Canonical>> = Vec::new();
    while let Some(key) = reader
        .key_after(boundaries.last().map(Vec::as_slice), skip)
        .await?
    {
        boundaries.push(key);
    }
    Ok(boundaries)
}

/// Reads both catalogues and plans the comparison of a table pair without any key, as a
/// multiset of whole rows.
async fn plan_whole_rows(
    old: &Database,
    new: &Database,
    pair: &TablePair,
    options: &CompareOptions,
) -> Result<TablePlan, CompareError> {
    let (old_schema, new_schema) = describe_pair(old, new, pair).await?;
    TablePlan::whole_rows(old, &old_schema, new, &new_schema, &options.selection)
}

/// Both sides' catalogue entries of a table pair.
async fn describe_pair(
    old: &Database,
    new: &Database,
    pair: &TablePair,
) -> Result<(TableSchema, TableSchema), CompareError> {
    let (old_schema, new_schema) =
        tokio::try_join!(describe(old, &pair.old), describe(new, &pair.new))?;
    let old_schema = old_schema.ok_or_else(|| CompareError::UnknownTable {
        table: pair.old.clone(),
        side: Side::Old,
    })?;
    let new_schema = new_schema.ok_or_else(|| CompareError::UnknownTable {
        table: pair.new.clone(),
        side: Side::New,
    })?;
    Ok((old_schema, new_schema))
}

/// Reads both catalogues and plans the comparison of one table pair; a `--key` that is not
/// the primary key is checked to identify rows on both sides.
///
/// # Errors
/// When a table is missing, has no usable key, or a column cannot be compared.
pub async fn plan_table(
    old: &Database,
    new: &Database,
    pair: &TablePair,
    options: &CompareOptions,
) -> Result<TablePlan, CompareError> {
    let (old_schema, new_schema) = describe_pair(old, new, pair).await?;
    let plan = TablePlan::new(old, &old_schema, new, &new_schema, &options.selection)?;
    let key: Vec<&str> = plan.keys.iter().map(|pair| pair.name.as_str()).collect();
    for (db, schema) in [(old, &old_schema), (new, &new_schema)] {
        // A primary key or a unique index over non-null columns identifies rows already.
        if schema.primary_key != key && schema.unique_key != key {
            TableReader::new(
                db,
                &plan,
                options.filter_for(&plan.old_table),
                options.settings,
            )
            .check_key_identifies_rows()
            .await?;
        }
    }
    Ok(plan)
}

/// The keys a comparison covers: those after `after` (from the first key when `None`)
/// through `through` (to the last key when `None`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyRange {
    /// The key the range starts after.
    pub after: Option<Vec<Canonical>>,
    /// The range's last key.
    pub through: Option<Vec<Canonical>>,
}

/// One compared window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowResult {
    /// The window's last key (`None` when both sides were empty).
    pub last_key: Option<Vec<Canonical>>,
    /// Rows read on the old side.
    pub rows_old: u64,
    /// Rows read on the new side.
    pub rows_new: u64,
    /// The digest of the old side's rows.
    pub old_digest: blake3::Hash,
    /// The digest of the new side's rows.
    pub new_digest: blake3::Hash,
    /// Rows that differed, before rechecks.
    pub differences: u64,
}

/// A table comparison: its report, every confirmed divergence (the report lists at most
/// `max_divergences`) and every window's result.
#[derive(Debug, Clone)]
pub struct TableComparison {
    /// The report.
    pub report: TableReport,
    /// All confirmed divergences.
    pub divergences: Vec<RowDivergence>,
    /// Each window's result, in key order.
    pub windows: Vec<WindowResult>,
}

/// Compares the keys of `range` of one planned table pair.
///
/// # Errors
/// When a query fails or a side returns keys out of order.
pub async fn compare_table(
    old: &Database,
    new: &Database,
    plan: &TablePlan,
    range: &KeyRange,
    options: &CompareOptions,
) -> Result<TableComparison, CompareError> {
    let rows = TableRows::read((old, new), plan, range, options);
    compare_rows(rows, plan, options).await
}

/// Both sides' rows of a key range, read from the moment they are asked for, each side on a
/// task of its own ([`SideRows`]) and compared later by [`compare_rows`]: a backfill asks for
/// its next chunk's rows before it compares and checkpoints the chunk in hand, so that the
/// databases stream the next chunk meanwhile, as they stream a table's next window during
/// `compare`. Dropping it aborts the reads.
pub(crate) struct TableRows {
    readers: [Arc<TableReader>; 2],
    rows: [SideRows; 2],
    /// Encoded keys, ascending, that no window of the comparison reaches past: each window
    /// ends at one of them or before the next ([`TableRows::cut_at`]).
    cuts: Vec<Vec<u8>>,
}

impl TableRows {
    /// Starts reading the keys of `range` on both sides.
    pub(crate) fn read(
        (old, new): (&Database, &Database),
        plan: &TablePlan,
        range: &KeyRange,
        options: &CompareOptions,
    ) -> TableRows {
        let filter = options.filter_for(&plan.old_table);
        let width = options.row_width.clone().unwrap_or_default();
        let reader = |db| {
            let reader = TableReader::new(db, plan, filter, options.settings);
            Arc::new(reader.through(range.through.clone()))
        };
        let readers = [reader(old), reader(new)];
        let rows = readers.clone().map(|reader| {
            SideRows::spawn(
                reader,
                range.after.clone(),
                options.window_rows,
                width.clone(),
            )
        });
        TableRows {
            readers,
            rows,
            cuts: Vec::new(),
        }
    }

    /// Ends windows at each of `keys` (ascending, within the range read): a group of a
    /// backfill's chunks read as one range is compared so that every window lies within one
    /// chunk (its last key at most the chunk's last), and each chunk's result is its windows'.
    pub(crate) fn cut_at(mut self, keys: &[Vec<Canonical>]) -> TableRows {
        self.cuts = keys.iter().map(|key| encode_key(key)).collect();
        self
    }
}

/// Compares rows read by [`TableRows::read`] (with the same `plan` and `options`).
///
/// # Errors
/// When a query fails or a side returns keys out of order.
pub(crate) async fn compare_rows(
    rows: TableRows,
    plan: &TablePlan,
    options: &CompareOptions,
) -> Result<TableComparison, CompareError> {
    let TableRows {
        readers: [old_reader, new_reader],
        rows: [mut old_rows, mut new_rows],
        cuts,
    } = rows;
    let mut cuts = cuts.into_iter().peekable();
    let reads = options.throttle();
    // Its windows and its rechecks count into one budget.
    let options = &CompareOptions {
        reads: Some(reads.clone()),
        ..options.clone()
    };
    let mut report = TableReport {
        table: plan.old_table.clone(),
        new_table: (plan.new_table != plan.old_table).then(|| plan.new_table.clone()),
        rows_old: 0,
        rows_new: 0,
        missing_in_new: 0,
        extra_in_new: 0,
        changed: 0,
        converged: 0,
        unconverged: 0,
        unrechecked: 0,
        windows: 0,
        schema_differences: plan.schema_differences.clone(),
        divergences: Vec::new(),
        multiset: false,
        error: None,
    };
    let mut candidates: Vec<RowDivergence> = Vec::new();
    let mut windows = Vec::new();
    loop {
        tokio::try_join!(old_rows.fill(), new_rows.fill())?;
        // A window ends at the last key both sides are known up to: rows after it on one
        // side are kept for the next window, never read twice.
        let end = match (old_rows.horizon(), new_rows.horizon()) {
            (Some(a), Some(b)) => Some(if encoded_key_cmp(a, b).is_le() { a } else { b }),
            (Some(a), None) => Some(a),
            (None, Some(b)) => Some(b),
            (None, None) => None,
        }
        .map(<[u8]>::to_vec);
        // Nor past the next cut; a window ending at it is the last before it.
        let end = match (cuts.peek(), end) {
            (Some(cut), Some(end)) if encoded_key_cmp(cut, &end).is_gt() => Some(end),
            (Some(_), _) => cuts.next(),
            (None, end) => end,
        };
        let old_window = old_rows.take_through(end.as_deref());
        let new_window = new_rows.take_through(end.as_deref());
        report.windows += 1;
        report.rows_old += old_window.len() as u64;
        report.rows_new += new_window.len() as u64;
        let span = tracing::debug_span!("window", window = report.windows);
        let (window, found) = span
            .in_scope(|| {
                compare_window(&old_window, &new_window, end.as_deref(), &options.settings)
            })
            .ok_or_else(|| CompareError::Encoding(plan.old_table.clone()))?;
        windows.push(window);
        for divergence in found {
            if candidates.len() < MAX_CANDIDATES {
                candidates.push(divergence);
            } else {
                // Memory stays bounded: further differences are counted, not rechecked.
                count(&mut report, divergence.kind);
                report.unrechecked += 1;
            }
        }
        reads.read(old_window.len() + new_window.len()).await;
        if end.is_none() {
            break;
        }
    }
    let found = candidates.len();
    let (candidates, motion) = confirm(&old_reader, &new_reader, candidates, options).await?;
    report.converged += (found - candidates.len()) as u64;
    for divergence in &candidates {
        count(&mut report, divergence.kind);
    }
    let listed = &candidates[..candidates.len().min(options.max_divergences)];
    let (old_rows, new_rows) = tokio::try_join!(
        rows_by_key(&old_reader, listed),
        rows_by_key(&new_reader, listed)
    )?;
    reads.read(old_rows.len() + new_rows.len()).await;
    report.divergences = listed
        .iter()
        .map(|divergence| {
            let encoded = encode_key(&divergence.key);
            let row =
                |rows: &HashMap<Vec<u8>, Row>| rows.get(&encoded).map(|row| row_json(plan, row));
            DivergenceReport {
                old: row(&old_rows),
                new: row(&new_rows),
                rechecks_changed: (divergence.kind == DivergenceKind::Unconverged)
                    .then(|| motion.moves(&encoded)),
                ..describe_divergence(plan, divergence)
            }
        })
        .collect();
    Ok(TableComparison {
        report,
        divergences: candidates,
        windows,
    })
}

/// The rechecks of differences found: after `recheck_delay`, up to `rechecks` times, the
/// candidates' rows are read again on both sides, and those that now agree (a write in flight
/// arrived) are dropped. Returns the divergences still standing, a `changed` row that moved on
/// both sides through the rechecks marked `unconverged`, and how the rows moved.
///
/// # Errors
/// When a query fails.
pub(crate) async fn confirm(
    old: &TableReader,
    new: &TableReader,
    mut candidates: Vec<RowDivergence>,
    options: &CompareOptions,
) -> Result<(Vec<RowDivergence>, RecheckMotion), CompareError> {
    let mut motion = RecheckMotion::default();
    let reads = options.throttle();
    for _ in 0..options.rechecks {
        if candidates.is_empty() {
            break;
        }
        tokio::time::sleep(options.recheck_delay).await;
        let rechecked = recheck((old, new), candidates, &options.settings, &reads).await?;
        candidates = motion.observe(rechecked);
    }
    motion.mark_unconverged(&mut candidates);
    Ok((candidates, motion))
}

/// Bytes per row of `rows`.
fn row_bytes(rows: &EncodedRows) -> usize {
    rows.byte_len() / rows.len().max(1)
}

/// Rows of the next chunk: about [`CHUNK_BYTES`] at `row_bytes` a row, rounded down to a
/// power of two so that both sides of a table mostly read the same row counts (their windows
/// then align, and no rows are carried over).
fn chunk_rows(row_bytes: usize, max_rows: usize) -> usize {
    let rows = CHUNK_BYTES / row_bytes.max(1);
    let power_of_two = if rows.is_power_of_two() {
        rows
    } else {
        rows.next_power_of_two() / 2
    };
    power_of_two.clamp(1, max_rows)
}

/// Compares two windows covering the same keys (through `end`, or to the end): their result,
/// and no divergence when their digests are equal, the divergent rows otherwise (`None` when an
/// encoding does not decode).
fn compare_window(
    old: &EncodedRows,
    new: &EncodedRows,
    end: Option<&[u8]>,
    settings: &CanonicalSettings,
) -> Option<(WindowResult, Vec<RowDivergence>)> {
    let (old_digest, new_digest) = (old.digest(), new.digest());
    let found = if old_digest == new_digest {
        Vec::new()
    } else {
        diff_windows(old, new, settings)?
    };
    tracing::debug!(
        rows_old = old.len(),
        rows_new = new.len(),
        divergent = found.len(),
        "window compared"
    );
    let last_key = end.or_else(|| match (old.last_key(), new.last_key()) {
        (Some(a), Some(b)) => Some(if encoded_key_cmp(a, b).is_ge() { a } else { b }),
        (a, b) => a.or(b),
    });
    let window = WindowResult {
        last_key: last_key.and_then(decode_key),
        rows_old: old.len() as u64,
        rows_new: new.len() as u64,
        old_digest,
        new_digest,
        differences: found.len() as u64,
    };
    Some((window, found))
}

/// Chunks a side reader may read ahead of the comparison.
const READ_AHEAD: usize = 1;

/// Encoded bytes a read aims at: chunks hold about this much (and at most `window_rows`
/// rows), so that memory stays bounded however wide the rows are.
const CHUNK_BYTES: usize = 8 << 20;

/// Rows of a side's first chunk, read to learn how wide its rows are.
const FIRST_CHUNK_ROWS: usize = 1_000;

/// One side's rows in key order, read chunk after chunk (keyset pagination) on a task of its
/// own, so that each side's database streams without waiting for the other side or for the
/// comparison, at most [`READ_AHEAD`] chunks ahead. Dropping it (a comparison cancelled at
/// shutdown) aborts the reads.
struct SideRows {
    side: Side,
    chunks: tokio::sync::mpsc::Receiver<Chunk>,
    _reading: AbortOnDropHandle<()>,
    buffered: EncodedRows,
    /// Rows at the front of `buffered` already taken into windows: kept where they are (not
    /// moved out from before the rest) until every row of the buffer is taken.
    taken: usize,
    ended: bool,
}

impl SideRows {
    fn spawn(
        reader: Arc<TableReader>,
        mut after: Option<Vec<Canonical>>,
        max_rows: usize,
        width: RowWidth,
    ) -> SideRows {
        let side = reader.side();
        let (sender, chunks) = tokio::sync::mpsc::channel(READ_AHEAD);
        let reading = tokio::spawn(async move {
            if reader.needs_one_pass() {
                // One sort of the table instead of one per window.
                let chunk = (max_rows, CHUNK_BYTES);
                return reader
                    .read_in_one_pass(after.as_deref(), chunk, &sender)
                    .instrument(tracing::debug_span!("read_in_one_pass", %side))
                    .await;
            }
            let mut limit = width
                .bytes()
                .map_or(FIRST_CHUNK_ROWS.min(max_rows), |bytes| {
                    chunk_rows(bytes, max_rows)
                });
            loop {
                let span = tracing::debug_span!("read_chunk", %side, rows = limit);
                let chunk = reader
                    .window(after.as_deref(), limit)
                    .instrument(span)
                    .await;
                // A full chunk may be followed by more rows, read after its last key.
                if let Ok(rows) = &chunk {
                    width.learn(rows);
                }
                let next = match &chunk {
                    Ok(rows) if rows.len() == limit => {
                        let key = rows
                            .last_key()
                            .and_then(decode_key)
                            .ok_or_else(|| CompareError::Encoding(reader.table().to_owned()));
                        limit = chunk_rows(row_bytes(rows), max_rows);
                        Some(key)
                    }
                    _ => None,
                };
                let chunk = chunk.map(|rows| (rows, next.is_some()));
                if sender.send(chunk).await.is_err() {
                    return;
                }
                match next {
                    Some(Ok(key)) => after = Some(key),
                    Some(Err(error)) => {
                        let _ = sender.send(Err(error)).await;
                        return;
                    }
                    None => return,
                }
            }
        });
        SideRows {
            side,
            chunks,
            _reading: AbortOnDropHandle::new(reading),
            buffered: EncodedRows::default(),
            taken: 0,
            ended: false,
        }
    }

    /// Receives a chunk when no row is left to take and the side has not ended.
    async fn fill(&mut self) -> Result<(), CompareError> {
        while !self.ended && self.taken == self.buffered.len() {
            let (chunk, more) = self.chunks.recv().await.ok_or_else(|| {
                CompareError::Task(format!("the {} side's reader stopped", self.side))
            })??;
            self.ended = !more;
            self.buffered = chunk;
            self.taken = 0;
        }
        Ok(())
    }

    /// The last key this side is known up to; `None` when every remaining row is buffered.
    fn horizon(&self) -> Option<&[u8]> {
        if self.ended || self.taken == self.buffered.len() {
            None
        } else {
            self.buffered.last_key()
        }
    }

    /// Takes the buffered rows not yet taken with keys up to `end` (all of them for `None`):
    /// the whole buffer as it is when that is all of it (a window of `compare`, whose sides
    /// read the same rows), else a copy of just those rows (a window cut short of the buffer's
    /// end, at the other side's horizon or a backfill group's chunk boundary), so that a
    /// buffer cut into many windows is never copied more than once.
    fn take_through(&mut self, end: Option<&[u8]>) -> EncodedRows {
        let to = end.map_or(self.buffered.len(), |end| {
            self.buffered.end_through(self.taken, end)
        });
        let window = if self.taken == 0 && to == self.buffered.len() {
            std::mem::take(&mut self.buffered)
        } else {
            self.buffered.copy_rows(self.taken..to)
        };
        self.taken = to;
        if self.taken >= self.buffered.len() {
            self.buffered = EncodedRows::default();
            self.taken = 0;
        }
        window
    }
}

fn count(report: &mut TableReport, kind: DivergenceKind) {
    match kind {
        DivergenceKind::MissingInNew => report.missing_in_new += 1,
        DivergenceKind::ExtraInNew => report.extra_in_new += 1,
        DivergenceKind::Changed => report.changed += 1,
        DivergenceKind::Unconverged => report.unconverged += 1,
    }
}

/// A candidate that still differs on recheck, with digests of both sides' rows as read then.
pub(crate) struct Rechecked {
    /// The divergence as it stands now.
    pub divergence: RowDivergence,
    /// Each side's row's values (`None` where the row is absent).
    rows: [Option<blake3::Hash>; 2],
}

/// How the candidates' rows moved through the rechecks: a row that keeps changing on both
/// sides (updated faster than the mirror follows) is `unconverged`, not `changed`.
#[derive(Default)]
pub(crate) struct RecheckMotion {
    /// By encoded key: both sides' rows at the last recheck, and in how many rechecks both
    /// had changed since the one before.
    seen: HashMap<Vec<u8>, ([Option<blake3::Hash>; 2], u32)>,
}

impl RecheckMotion {
    /// Records a recheck's reads; returns the divergences still standing.
    fn observe(&mut self, rechecked: Vec<Rechecked>) -> Vec<RowDivergence> {
        let mut seen = HashMap::with_capacity(rechecked.len());
        let still = rechecked
            .into_iter()
            .map(|Rechecked { divergence, rows }| {
                let key = encode_key(&divergence.key);
                let moves = match self.seen.get(&key) {
                    Some((before, moves)) => {
                        let both_moved = rows[0].is_some()
                            && rows[1].is_some()
                            && before[0] != rows[0]
                            && before[1] != rows[1];
                        moves + u32::from(both_moved)
                    }
                    None => 0,
                };
                seen.insert(key, (rows, moves));
                divergence
            })
            .collect();
        self.seen = seen;
        still
    }

    /// In how many rechecks both sides of the row with this encoded key had changed.
    pub(crate) fn moves(&self, key: &[u8]) -> u32 {
        self.seen.get(key).map_or(0, |(_, moves)| *moves)
    }

    /// Turns the changed rows that moved on both sides into unconverged ones.
    fn mark_unconverged(&self, candidates: &mut [RowDivergence]) {
        for divergence in candidates {
            if divergence.kind == DivergenceKind::Changed
                && self.moves(&encode_key(&divergence.key)) > 0
            {
                divergence.kind = DivergenceKind::Unconverged;
            }
        }
    }
}

/// Re-reads the candidates' rows on both sides (counted into `reads`); returns those that
/// still differ.
pub(crate) async fn recheck(
    (old, new): (&TableReader, &TableReader),
    candidates: Vec<RowDivergence>,
    settings: &CanonicalSettings,
    reads: &ReadThrottle,
) -> Result<Vec<Rechecked>, CompareError> {
    let mut still = Vec::new();
    for batch in candidates.chunks(RECHECK_BATCH) {
        let keys: Vec<Vec<Canonical>> = batch.iter().map(|d| d.key.clone()).collect();
        let (old_rows, new_rows) =
            tokio::try_join!(old.rows_with_keys(&keys), new.rows_with_keys(&keys))?;
        reads.read(old_rows.len() + new_rows.len()).await;
        let by_key = |rows: Vec<Row>| -> HashMap<Vec<u8>, Row> {
            rows.into_iter()
                .map(|row| (encode_key(&row.key), row))
                .collect()
        };
        let (old_rows, new_rows) = (by_key(old_rows), by_key(new_rows));
        for key in keys {
            let encoded = encode_key(&key);
            let (old_row, new_row) = (old_rows.get(&encoded), new_rows.get(&encoded));
            let digest = |row: Option<&Row>| row.map(|row| blake3::hash(&encode_key(&row.values)));
            let rows = [digest(old_row), digest(new_row)];
            let divergence = match (old_row, new_row) {
                (None, None) => None,
                (Some(_), None) => Some(RowDivergence {
                    kind: DivergenceKind::MissingInNew,
                    key,
                    columns: Vec::new(),
                }),
                (None, Some(_)) => Some(RowDivergence {
                    kind: DivergenceKind::ExtraInNew,
                    key,
                    columns: Vec::new(),
                }),
                (Some(a), Some(b)) => diff_pair(a, b, settings),
            };
            still.extend(divergence.map(|divergence| Rechecked { divergence, rows }));
        }
    }
    Ok(still)
}

/// Key column names mapped to the key's values, in key-column order, as reports show keys.
pub(crate) fn key_json(plan: &TablePlan, key: &[Canonical]) -> KeyValues {
    KeyValues(
        plan.keys
            .iter()
            .zip(key)
            .map(|(pair, value)| (pair.name.clone(), value.to_json()))
            .collect(),
    )
}

fn describe_divergence(plan: &TablePlan, divergence: &RowDivergence) -> DivergenceReport {
    DivergenceReport {
        kind: divergence.kind,
        key: key_json(plan, &divergence.key),
        columns: divergence
            .columns
            .iter()
            .filter_map(|&index| plan.values.get(index).map(|pair| pair.name.clone()))
            .collect(),
        count: None,
        rechecks_changed: None,
        old: None,
        new: None,
    }
}

/// The current rows of `divergences` on one side, by encoded key.
async fn rows_by_key(
    reader: &TableReader,
    divergences: &[RowDivergence],
) -> Result<HashMap<Vec<u8>, Row>, CompareError> {
    let keys: Vec<Vec<Canonical>> = divergences.iter().map(|d| d.key.clone()).collect();
    let mut rows = HashMap::new();
    for batch in keys.chunks(RECHECK_BATCH) {
        for row in reader.rows_with_keys(batch).await? {
            rows.insert(encode_key(&row.key), row);
        }
    }
    Ok(rows)
}

/// A row as a report shows it: every compared column (key first) mapped to its value.
fn row_json(plan: &TablePlan, row: &Row) -> serde_json::Map<String, serde_json::Value> {
    plan.columns()
        .zip(row.key.iter().chain(&row.values))
        .map(|(pair, value)| (pair.name.clone(), value.to_json()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::RowWidth;

    #[test]
    fn a_read_takes_about_8_mib_of_rows_once_their_width_is_learned() {
        let width = RowWidth::default();
        assert_eq!(
            width.rows_per_read(100_000),
            100_000,
            "no width learned yet"
        );
        width.0.store(128, Ordering::Relaxed);
        assert_eq!(
            width.rows_per_read(100_000),
            65_536,
            "8 MiB of 128-byte rows"
        );
        assert_eq!(
            width.rows_per_read(10_000),
            10_000,
            "at most the rows asked for"
        );
        width.0.store(100, Ordering::Relaxed);
        assert_eq!(
            width.rows_per_read(100_000),
            65_536,
            "a power of two, so both sides read the same rows"
        );
    }
}
