//! One chunk of a backfill: copied in bulk when its range is empty on the new side, else
//! compared and its differences written conditionally; then compared again (with rechecks)
//! and repaired until it holds what the old side holds or the attempts run out.
//!
//! Where the chunks before it found the new side holding rows (a rerun, a resumed copy), a
//! chunk is compared first and the new side probed for emptiness only when that comparison
//! read no row there: an equal chunk then costs its comparison alone, and its rows may have
//! been read while the chunk before it was compared (`table.rs`).

use tandem_control::BackfillCounts;

use crate::canonical::{encode_key, encoded_key_cmp, Canonical};
use crate::database::Database;
use crate::diff::DivergenceKind;
use crate::error::CompareError;
use crate::plan::TablePlan;
use crate::reader::TableReader;
use crate::repair::{write_conditionally, ConditionalWrites};
use crate::report::TableReport;
use crate::run::{compare_rows, compare_table, CompareOptions, KeyRange, TableRows};

use super::bulk::{copy_into_empty_range, BulkWrite};

/// Most values bound in one statement (PostgreSQL allows 65,535).
const MAX_BINDS: usize = 30_000;
/// Most rows written per transaction.
const MAX_BATCH_ROWS: usize = 1_000;

/// What copying one chunk did, over every try of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ChunkCopy {
    /// Its counts, as checkpointed: the writes of every try that committed.
    pub counts: BackfillCounts,
    /// Whether its range was found empty on the new side and written by the bulk path.
    pub bulk: bool,
    /// Whether the new side held rows of its range before the chunk wrote any (the probe
    /// found one, or the first comparison read one): the next chunk is then compared first.
    pub populated: bool,
}

/// How a chunk begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FirstStep {
    /// Probe the new side for a row of the range, and copy it in bulk when there is none.
    Probe,
    /// Compare the range; probe (and copy in bulk) only when the new side showed no row of it.
    Compare,
}

impl FirstStep {
    /// The first step of a chunk after one that found the new side `populated` or not, when
    /// the new side is `bulk_capable` (PostgreSQL; elsewhere the probe costs nothing).
    pub(crate) fn after(populated: bool, bulk_capable: bool) -> FirstStep {
        if populated && bulk_capable {
            FirstStep::Compare
        } else {
            FirstStep::Probe
        }
    }
}

/// Copies and verifies the keys of `range`: in bulk when the new side holds none of them
/// (`bulk.rs`; with `FirstStep::Compare`, looked for only when a first comparison read no
/// row of the range on new; that comparison compares `read`, the range's rows read ahead,
/// when given); then compare (the first time without rechecks, so an equal chunk costs no
/// wait), write what differs conditionally, then compare again with rechecks;
/// after `attempts` writing rounds what still differs is counted as unconverged. Adds what it
/// did to `copy` as each write commits, so that a try that fails part way leaves in `copy`
/// the writes it did make (the next try finds them made and does not count them again).
///
/// # Errors
/// When a query or a write transaction fails.
pub(crate) async fn backfill_chunk(
    (old, new): (&Database, &Database),
    plan: &TablePlan,
    (range, first, read): (&KeyRange, FirstStep, Option<TableRows>),
    options: &CompareOptions,
    attempts: u32,
    copy: &mut ChunkCopy,
) -> Result<(), CompareError> {
    let verify = |round: u32| CompareOptions {
        rechecks: if round == 0 { 0 } else { options.rechecks },
        max_divergences: 0,
        progress: None,
        ..options.clone()
    };
    // Finding rows on new only chooses the path (the writes below are conditional either
    // way): a range the comparison read rows of on new is not probed, and that comparison is
    // the first round. One it read none of (even of none on old) is probed as before, so a
    // chunk goes the bulk way exactly when the probe finds its range empty.
    let mut first_round = None;
    if first == FirstStep::Compare {
        let rows = read.unwrap_or_else(|| TableRows::read((old, new), plan, range, options));
        let comparison = compare_rows(rows, plan, &verify(0)).await?;
        if comparison.report.rows_new > 0 {
            copy.populated = true;
            first_round = Some(comparison);
        }
    }
    if first_round.is_none() {
        copy_in_bulk_if_empty((old, new), plan, range, options, copy).await?;
    }
    let counts = &mut copy.counts;
    let filter = options.filter_for(&plan.old_table);
    let reader = |db| TableReader::new(db, plan, filter, options.settings);
    let (source, target) = (reader(old), reader(new));
    let batch_rows = (MAX_BINDS / plan.columns().count().max(1)).clamp(1, MAX_BATCH_ROWS);
    for round in 0..=attempts {
        let comparison = match first_round.take() {
            Some(comparison) => comparison,
            None => compare_table(old, new, plan, range, &verify(round)).await?,
        };
        if round == 0 {
            let report = &comparison.report;
            counts.rows_old = to_i64(report.rows_old);
            // The rows found equal before the chunk wrote any (a try after one that wrote
            // finds that try's rows equal: the first try's count stands).
            if counts.copied == 0 && counts.repaired == 0 {
                counts.skipped = to_i64(skipped(report));
            }
        }
        // A row that kept changing on both sides through the rechecks is the mirror's to
        // carry; writing it would fight live traffic.
        let (moving, confirmed): (Vec<_>, Vec<_>) = comparison
            .divergences
            .into_iter()
            .partition(|divergence| divergence.kind == DivergenceKind::Unconverged);
        if confirmed.is_empty() || round == attempts {
            counts.unconverged = to_i64((moving.len() + confirmed.len()) as u64);
            return Ok(());
        }
        let keys: Vec<Vec<Canonical>> = confirmed.into_iter().map(|d| d.key).collect();
        let mut writes = ConditionalWrites::default();
        let written = write_conditionally(
            (&source, &target),
            new,
            &keys,
            batch_rows,
            (&options.settings, &options.throttle()),
            &mut writes,
        )
        .await;
        // The batches that committed before one failed count, so that the next try, finding
        // their rows equal, neither writes nor counts them again, nor takes them for skipped.
        counts.copied += to_i64(writes.inserted);
        counts.repaired += to_i64(writes.repaired);
        counts.conflicts += to_i64(writes.conflicts);
        written?;
    }
    Ok(())
}

/// How one chunk of a group compared as one range came out (`compare_group`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct GroupedChunk {
    /// Old-side rows of the chunk.
    pub rows_old: u64,
    /// New-side rows of the chunk.
    pub rows_new: u64,
    /// Whether no window of the chunk found a row differing: the chunk then holds on new what
    /// it holds on old, as the first comparison of `backfill_chunk` would find.
    pub equal: bool,
}

/// Compares a run of consecutive chunks as one range, `range`, read in windows as `compare`
/// reads a table (`rows`, read ahead with the same range, when given), each window ending
/// within one chunk (`cuts`: the last key of every chunk but the last): how each chunk came
/// out, in key order. A chunk found equal is verified as its own first comparison would
/// verify it (no rechecks the first time either); the others are left to `backfill_chunk`.
///
/// # Errors
/// When a query fails.
pub(crate) async fn compare_group(
    (old, new): (&Database, &Database),
    plan: &TablePlan,
    (range, cuts, rows): (&KeyRange, &[Vec<Canonical>], Option<TableRows>),
    options: &CompareOptions,
) -> Result<Vec<GroupedChunk>, CompareError> {
    let options = CompareOptions {
        rechecks: 0,
        max_divergences: 0,
        progress: None,
        ..options.clone()
    };
    let rows =
        rows.unwrap_or_else(|| TableRows::read((old, new), plan, range, &options).cut_at(cuts));
    let comparison = compare_rows(rows, plan, &options).await?;
    let cuts: Vec<Vec<u8>> = cuts.iter().map(|key| encode_key(key)).collect();
    let mut chunks = vec![
        GroupedChunk {
            equal: true,
            ..GroupedChunk::default()
        };
        cuts.len() + 1
    ];
    for window in &comparison.windows {
        // The chunk a window lies in: the first whose last key is not before the window's.
        let at = window.last_key.as_deref().map_or(cuts.len(), |last| {
            let last = encode_key(last);
            cuts.iter()
                .take_while(|cut| encoded_key_cmp(cut, &last).is_lt())
                .count()
        });
        let chunk = &mut chunks[at];
        chunk.rows_old += window.rows_old;
        chunk.rows_new += window.rows_new;
        chunk.equal &= window.differences == 0;
    }
    Ok(chunks)
}

/// The bulk path: probes the new side for a row of `range` and, when it holds none, copies
/// the old side's rows of it in (`bulk.rs`), adding what it did to `copy`.
///
/// # Errors
/// When a query fails, or the COPY fails otherwise than on a key taken or a value refused.
async fn copy_in_bulk_if_empty(
    (old, new): (&Database, &Database),
    plan: &TablePlan,
    range: &KeyRange,
    options: &CompareOptions,
    copy: &mut ChunkCopy,
) -> Result<(), CompareError> {
    let counts = &mut copy.counts;
    match copy_into_empty_range((old, new), plan, range, options).await? {
        BulkWrite::NotEmpty => copy.populated = true,
        BulkWrite::Inserted(rows) => {
            copy.bulk = true;
            counts.copied += to_i64(rows);
        }
        // Rolled back whole: the rounds below copy the chunk row by row, keeping what the
        // live write put there.
        BulkWrite::KeyTaken => counts.conflicts += 1,
        // Nothing written: the row path's writes and verification say whether the rows can
        // be carried, with their own errors.
        BulkWrite::Refused(reason) => tracing::warn!(
            table = %plan.new_table,
            %reason,
            "the new side refused the chunk's COPY; copying it row by row"
        ),
    }
    Ok(())
}

/// The old side's rows a comparison found equal on the new side: those neither missing there
/// nor different.
pub(crate) fn skipped(report: &TableReport) -> u64 {
    report
        .rows_old
        .saturating_sub(report.missing_in_new + report.changed + report.unconverged)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::FirstStep;

    #[test]
    fn a_chunk_is_compared_first_after_one_that_found_rows_on_a_bulk_capable_side() {
        assert_eq!(FirstStep::after(true, true), FirstStep::Compare);
        assert_eq!(FirstStep::after(false, true), FirstStep::Probe);
        // No bulk path (MySQL, SQLite): the probe is no query, so it stays first.
        assert_eq!(FirstStep::after(true, false), FirstStep::Probe);
        assert_eq!(FirstStep::after(false, false), FirstStep::Probe);
    }
}
