//! Running a comparison: table pairing, the window loop, rechecks and throttling.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use tandem_control::Side;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use crate::canonical::{Canonical, CanonicalSettings};
use crate::database::Database;
use crate::diff::{diff_pair, diff_rows, window_digest, DivergenceKind, RowDivergence};
use crate::error::CompareError;
use crate::plan::{ColumnSelection, TablePlan};
use crate::reader::{compare_keys, Row, TableReader};
use crate::report::{DivergenceReport, Report, TableReport};
use crate::schema::{describe, list_tables};

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
    /// Rows per window.
    pub window_rows: usize,
    /// Tables compared at once.
    pub threads: usize,
    /// Rechecks of differences before they count.
    pub rechecks: u32,
    /// Wait before each recheck.
    pub recheck_delay: Duration,
    /// Reading limit over both sides, in rows per second.
    pub max_rows_per_sec: Option<u64>,
    /// Most divergences listed per table (counts stay exact).
    pub max_divergences: usize,
    /// Canonical-form settings.
    pub settings: CanonicalSettings,
    /// Where progress goes, if anywhere.
    pub progress: Option<ProgressSink>,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            tables: Vec::new(),
            selection: ColumnSelection::default(),
            filter: None,
            window_rows: 10_000,
            threads: 4,
            rechecks: 3,
            recheck_delay: Duration::from_secs(2),
            max_rows_per_sec: None,
            max_divergences: 1_000,
            settings: CanonicalSettings::default(),
            progress: None,
        }
    }
}

/// Compares the two databases as `options` say.
///
/// # Errors
/// When a table cannot be compared (missing, no key, unsupported type) or a query fails.
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
    let (pairs, only_in_old, only_in_new) = if options.tables.is_empty() {
        let (old_tables, new_tables) = tokio::try_join!(list_tables(old), list_tables(new))?;
        let pairs = old_tables
            .iter()
            .filter(|table| new_tables.contains(table))
            .map(|table| TablePair::parse(table))
            .collect();
        let only_old = old_tables
            .iter()
            .filter(|t| !new_tables.contains(t))
            .cloned()
            .collect();
        let only_new = new_tables
            .iter()
            .filter(|t| !old_tables.contains(t))
            .cloned()
            .collect();
        (pairs, only_old, only_new)
    } else {
        (options.tables.clone(), Vec::new(), Vec::new())
    };
    let tables: Vec<TableReport> = futures_util::stream::iter(pairs)
        .map(|pair| compare_pair(old, new, pair, options))
        .buffered(options.threads.max(1))
        .try_collect()
        .await?;
    Ok(Report {
        identical: tables.iter().all(TableReport::identical)
            && only_in_old.is_empty()
            && only_in_new.is_empty(),
        tables,
        only_in_old,
        only_in_new,
    })
}

async fn compare_pair(
    old: &Database,
    new: &Database,
    pair: TablePair,
    options: &CompareOptions,
) -> Result<TableReport, CompareError> {
    let plan = plan_table(old, new, &pair, options).await?;
    let span = tracing::info_span!("compare_table", table = %plan.old_table);
    let compared = compare_table(old, new, &plan, options)
        .instrument(span)
        .await?;
    Ok(compared.report)
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
    let plan = TablePlan::new(old, &old_schema, new, &new_schema, &options.selection)?;
    let key: Vec<&str> = plan.keys.iter().map(|pair| pair.name.as_str()).collect();
    for (db, schema) in [(old, &old_schema), (new, &new_schema)] {
        if schema.primary_key != key {
            TableReader::new(db, &plan, options.filter.as_deref(), options.settings)
                .check_key_identifies_rows()
                .await?;
        }
    }
    Ok(plan)
}

/// A table comparison: its report and every confirmed divergence (the report lists at most
/// `max_divergences`).
#[derive(Debug, Clone)]
pub struct TableComparison {
    /// The report.
    pub report: TableReport,
    /// All confirmed divergences.
    pub divergences: Vec<RowDivergence>,
}

/// Compares one planned table pair.
///
/// # Errors
/// When a query fails or a side returns keys out of order.
pub async fn compare_table(
    old: &Database,
    new: &Database,
    plan: &TablePlan,
    options: &CompareOptions,
) -> Result<TableComparison, CompareError> {
    let filter = options.filter.as_deref();
    let old_reader = Arc::new(TableReader::new(old, plan, filter, options.settings));
    let new_reader = Arc::new(TableReader::new(new, plan, filter, options.settings));
    let limit = options.window_rows;
    let started = Instant::now();
    let mut report = TableReport {
        table: plan.old_table.clone(),
        new_table: (plan.new_table != plan.old_table).then(|| plan.new_table.clone()),
        rows_old: 0,
        rows_new: 0,
        missing_in_new: 0,
        extra_in_new: 0,
        changed: 0,
        converged: 0,
        unrechecked: 0,
        windows: 0,
        schema_differences: plan.schema_differences.clone(),
        divergences: Vec::new(),
    };
    let mut candidates: Vec<RowDivergence> = Vec::new();
    let mut pending = read_window(&old_reader, &new_reader, None, limit);
    loop {
        let (mut old_rows, mut new_rows) = pending
            .await
            .map_err(|err| CompareError::Task(err.to_string()))??;
        let end = window_end(&old_rows, &new_rows, limit);
        // The next window is read while this one is hashed and compared.
        let next = end
            .clone()
            .map(|end| read_window(&old_reader, &new_reader, Some(end), limit));
        if let Some(end) = &end {
            old_rows.retain(|row| compare_keys(&row.key, end).is_le());
            new_rows.retain(|row| compare_keys(&row.key, end).is_le());
        }
        report.windows += 1;
        report.rows_old += old_rows.len() as u64;
        report.rows_new += new_rows.len() as u64;
        if window_digest(&old_rows) != window_digest(&new_rows) {
            for divergence in diff_rows(&old_rows, &new_rows, &options.settings) {
                if candidates.len() < MAX_CANDIDATES {
                    candidates.push(divergence);
                } else {
                    // Memory stays bounded: further differences are counted, not rechecked.
                    count(&mut report, divergence.kind);
                    report.unrechecked += 1;
                }
            }
        }
        tracing::debug!(
            window = report.windows,
            rows = old_rows.len(),
            "window compared"
        );
        throttle(
            started,
            report.rows_old + report.rows_new,
            options.max_rows_per_sec,
        )
        .await;
        match next {
            Some(next) => pending = next,
            None => break,
        }
    }
    for _ in 0..options.rechecks {
        if candidates.is_empty() {
            break;
        }
        tokio::time::sleep(options.recheck_delay).await;
        let before = candidates.len();
        candidates = recheck(&old_reader, &new_reader, candidates, &options.settings).await?;
        report.converged += (before - candidates.len()) as u64;
    }
    for divergence in &candidates {
        count(&mut report, divergence.kind);
    }
    report.divergences = candidates
        .iter()
        .take(options.max_divergences)
        .map(|divergence| describe_divergence(plan, divergence))
        .collect();
    Ok(TableComparison {
        report,
        divergences: candidates,
    })
}

/// The old and the new side's rows of one window.
type WindowPair = (Vec<Row>, Vec<Row>);

/// Both sides of one window, read concurrently on tasks of their own (so decoding uses every
/// core) and in a `window` span. Dropping the handle (a comparison cancelled at shutdown)
/// aborts the reads.
fn read_window(
    old: &Arc<TableReader>,
    new: &Arc<TableReader>,
    after: Option<Vec<Canonical>>,
    limit: usize,
) -> AbortOnDropHandle<Result<WindowPair, CompareError>> {
    let read = |reader: &Arc<TableReader>, after: Option<Vec<Canonical>>| {
        let reader = Arc::clone(reader);
        AbortOnDropHandle::new(tokio::spawn(async move {
            reader.window(after.as_deref(), limit).await
        }))
    };
    let (old_task, new_task) = (read(old, after.clone()), read(new, after));
    let span = tracing::debug_span!("window");
    AbortOnDropHandle::new(tokio::spawn(
        async move {
            let joined = |result: Result<_, tokio::task::JoinError>| {
                result.map_err(|err| CompareError::Task(err.to_string()))?
            };
            let (old_rows, new_rows) = tokio::join!(old_task, new_task);
            Ok((joined(old_rows)?, joined(new_rows)?))
        }
        .instrument(span),
    ))
}

fn count(report: &mut TableReport, kind: DivergenceKind) {
    match kind {
        DivergenceKind::MissingInNew => report.missing_in_new += 1,
        DivergenceKind::ExtraInNew => report.extra_in_new += 1,
        DivergenceKind::Changed => report.changed += 1,
    }
}

/// The last key both windows cover: the smaller of the two last keys when both are full,
/// the full one's when one side ran out, `None` (to the end) when both ran out.
fn window_end(old: &[Row], new: &[Row], limit: usize) -> Option<Vec<Canonical>> {
    let last = |rows: &[Row]| {
        (rows.len() == limit)
            .then(|| rows.last().map(|row| row.key.clone()))
            .flatten()
    };
    match (last(old), last(new)) {
        (Some(a), Some(b)) => Some(if compare_keys(&a, &b).is_le() { a } else { b }),
        (Some(a), None) => Some(a),
        (None, Some(b)) => Some(b),
        (None, None) => None,
    }
}

async fn throttle(started: Instant, rows: u64, max_rows_per_sec: Option<u64>) {
    let Some(rate) = max_rows_per_sec.filter(|rate| *rate > 0) else {
        return;
    };
    #[allow(clippy::cast_precision_loss)]
    let due = Duration::from_secs_f64(rows as f64 / rate as f64);
    if let Some(wait) = due.checked_sub(started.elapsed()) {
        tokio::time::sleep(wait).await;
    }
}

/// Re-reads the candidates' rows on both sides; returns those that still differ.
pub(crate) async fn recheck(
    old: &TableReader,
    new: &TableReader,
    candidates: Vec<RowDivergence>,
    settings: &CanonicalSettings,
) -> Result<Vec<RowDivergence>, CompareError> {
    let mut still = Vec::new();
    for batch in candidates.chunks(RECHECK_BATCH) {
        let keys: Vec<Vec<Canonical>> = batch.iter().map(|d| d.key.clone()).collect();
        let (old_rows, new_rows) =
            tokio::try_join!(old.rows_with_keys(&keys), new.rows_with_keys(&keys))?;
        let by_key = |rows: Vec<Row>| -> HashMap<Vec<u8>, Row> {
            rows.into_iter()
                .map(|row| (encode_key(&row.key), row))
                .collect()
        };
        let (old_rows, new_rows) = (by_key(old_rows), by_key(new_rows));
        for key in keys {
            let encoded = encode_key(&key);
            let divergence = match (old_rows.get(&encoded), new_rows.get(&encoded)) {
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
            still.extend(divergence);
        }
    }
    Ok(still)
}

pub(crate) fn encode_key(key: &[Canonical]) -> Vec<u8> {
    let mut out = Vec::new();
    for value in key {
        value.encode(&mut out);
    }
    out
}

/// Key column names mapped to the key's values, as reports show keys.
pub(crate) fn key_json(
    plan: &TablePlan,
    key: &[Canonical],
) -> serde_json::Map<String, serde_json::Value> {
    plan.keys
        .iter()
        .zip(key)
        .map(|(pair, value)| (pair.name.clone(), value.to_json()))
        .collect()
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
    }
}
