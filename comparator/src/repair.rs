//! Repair: confirmed divergent rows of the non-authoritative side are made equal to the
//! authoritative side's, in batches inside transactions, and checked again afterwards.

use std::collections::HashMap;

use serde::Serialize;
use tandem_control::Side;

use crate::canonical::{encode_key, Canonical};
use crate::database::{BindValue, Database};
use crate::diff::{diff_pair, DivergenceKind, RowDivergence};
use crate::error::CompareError;
use crate::reader::{Row, TableReader};
use crate::report::KeyValues;
use crate::run::{
    compare_table, key_json, plan_table, recheck, CompareOptions, KeyRange, TablePair,
};
use crate::throttle::ReadThrottle;

/// How to repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairOptions {
    /// The authoritative side, copied from.
    pub from: Side,
    /// Only say what would change.
    pub dry_run: bool,
    /// Rows changed per transaction.
    pub batch_rows: usize,
}

/// One change made (or planned) to a row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RepairAction {
    /// `insert`, `update` or `delete`.
    pub action: &'static str,
    /// The side changed.
    pub side: Side,
    /// The row's key, in key-column order.
    pub key: KeyValues,
    /// For updates: the columns set.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
}

/// What a repair did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RepairReport {
    /// The (old side's) table.
    pub table: String,
    /// The side copied from.
    pub from: Side,
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// Rows inserted (or to insert).
    pub inserted: u64,
    /// Rows updated (or to update).
    pub updated: u64,
    /// Rows deleted (or to delete).
    pub deleted: u64,
    /// Repaired rows that are identical on both sides afterwards.
    pub identical_after: u64,
    /// Repaired rows that still differ (e.g. written again meanwhile).
    pub still_divergent: u64,
    /// The changes, at most `max_divergences` of them.
    pub actions: Vec<RepairAction>,
}

/// Compares one table pair and repairs its confirmed divergences from `options.from`.
///
/// # Errors
/// When the comparison fails or a repair transaction fails (that batch is rolled back).
pub async fn repair_table(
    old: &Database,
    new: &Database,
    pair: &TablePair,
    compare_options: &CompareOptions,
    options: &RepairOptions,
) -> Result<RepairReport, CompareError> {
    if compare_options.settings.timestamp_precision_micros != 1 {
        return Err(CompareError::InvalidOption(
            "tandem repair copies values exactly: leave --timestamp-precision at us".to_owned(),
        ));
    }
    let plan = plan_table(old, new, pair, compare_options).await?;
    let comparison = compare_table(old, new, &plan, &KeyRange::default(), compare_options).await?;
    let filter = compare_options.filter_for(&plan.old_table);
    let settings = compare_options.settings;
    let readers = [
        TableReader::new(old, &plan, filter, settings),
        TableReader::new(new, &plan, filter, settings),
    ];
    let (source, target) = match options.from {
        Side::Old => (&readers[0], &readers[1]),
        Side::New => (&readers[1], &readers[0]),
    };
    let target_db = match options.from {
        Side::Old => new,
        Side::New => old,
    };
    let mut report = RepairReport {
        table: plan.old_table.clone(),
        from: options.from,
        dry_run: options.dry_run,
        inserted: 0,
        updated: 0,
        deleted: 0,
        identical_after: 0,
        still_divergent: 0,
        actions: Vec::new(),
    };
    // A row that never held still through the rechecks is no confirmed divergence.
    let confirmed: Vec<RowDivergence> = comparison
        .divergences
        .into_iter()
        .filter(|divergence| divergence.kind != DivergenceKind::Unconverged)
        .collect();
    for batch in confirmed.chunks(options.batch_rows.max(1)) {
        // Act on both sides' current rows (confirmed keys only): a row that changed since the
        // comparison is repaired as it is now, or left alone when it already agrees.
        let keys: Vec<Vec<Canonical>> = batch.iter().map(|d| d.key.clone()).collect();
        let (source_rows, target_rows) =
            tokio::try_join!(source.rows_with_keys(&keys), target.rows_with_keys(&keys))?;
        let by_key = |rows: Vec<Row>| -> HashMap<Vec<u8>, Row> {
            rows.into_iter()
                .map(|row| (encode_key(&row.key), row))
                .collect()
        };
        let (source_rows, target_rows) = (by_key(source_rows), by_key(target_rows));
        let mut statements: Vec<(String, Vec<BindValue>)> = Vec::with_capacity(batch.len());
        for key in &keys {
            let encoded = encode_key(key);
            let (statement, name, columns) =
                match (source_rows.get(&encoded), target_rows.get(&encoded)) {
                    (Some(row), None) => (target.insert_statement(row), "insert", Vec::new()),
                    (None, Some(_)) => (target.delete_statement(key), "delete", Vec::new()),
                    (Some(row), Some(current)) => {
                        let Some(changed) = diff_pair(row, current, &settings) else {
                            continue;
                        };
                        let names = changed
                            .columns
                            .iter()
                            .filter_map(|&index| {
                                plan.values.get(index).map(|pair| pair.name.clone())
                            })
                            .collect();
                        (
                            target.update_statement(row, &changed.columns),
                            "update",
                            names,
                        )
                    }
                    (None, None) => continue,
                };
            match name {
                "insert" => report.inserted += 1,
                "update" => report.updated += 1,
                _ => report.deleted += 1,
            }
            if report.actions.len() < compare_options.max_divergences {
                report.actions.push(RepairAction {
                    action: name,
                    side: options.from.other(),
                    key: key_json(&plan, key),
                    columns,
                });
            }
            statements.push(statement);
        }
        if !options.dry_run && !statements.is_empty() {
            target_db
                .execute_in_transaction(&statements)
                .await
                .map_err(target_db.query_failed(plan.table(options.from.other())))?;
        }
    }
    if !options.dry_run {
        let total = confirmed.len() as u64;
        let reads = compare_options.throttle();
        let still = recheck((&readers[0], &readers[1]), confirmed, &settings, &reads).await?;
        report.still_divergent = still.len() as u64;
        report.identical_after = total - report.still_divergent;
    }
    Ok(report)
}

/// What conditional writes did to a set of keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ConditionalWrites {
    /// Rows inserted where the target had none.
    pub inserted: u64,
    /// Rows updated or deleted that still held what was read there.
    pub repaired: u64,
    /// Writes that changed nothing: the target's row was written meanwhile.
    pub conflicts: u64,
}

/// Makes the target's rows with `keys` equal to the source's, writing only where the target
/// still holds what was read there: inserts only where the key is absent, updates and deletes
/// only while the row holds the values read (compare and set). The target is read before the
/// source, so a source value read is never older than the target value it replaces (writes
/// reach the source first). A write that finds the row changed is counted as a conflict and
/// left to the writer that changed it.
///
/// Adds what each batch's committed transaction wrote to `writes` as it commits, so that a
/// batch failing after others committed leaves their writes counted.
///
/// # Errors
/// When a read or a write transaction fails (that batch is rolled back).
pub(crate) async fn write_conditionally(
    (source, target): (&TableReader, &TableReader),
    target_db: &Database,
    keys: &[Vec<Canonical>],
    batch_rows: usize,
    (settings, reads): (&crate::canonical::CanonicalSettings, &ReadThrottle),
    writes: &mut ConditionalWrites,
) -> Result<(), CompareError> {
    for batch in keys.chunks(batch_rows.max(1)) {
        let target_rows = target.rows_with_keys(batch).await?;
        let source_rows = source.rows_with_keys(batch).await?;
        reads.read(target_rows.len() + source_rows.len()).await;
        let mut current: HashMap<Vec<u8>, Row> = target_rows
            .into_iter()
            .map(|row| (encode_key(&row.key), row))
            .collect();
        let mut absent = Vec::new();
        let mut statements = Vec::new();
        for row in source_rows {
            match current.remove(&encode_key(&row.key)) {
                None => absent.push(row),
                Some(now) => {
                    if let Some(changed) = diff_pair(&row, &now, settings) {
                        statements.push(target.update_if_unchanged_statement(
                            &row,
                            &changed.columns,
                            &now,
                        ));
                    }
                }
            }
        }
        // Rows the target holds and the source does not.
        statements.extend(
            current
                .values()
                .map(|now| target.delete_if_unchanged_statement(now)),
        );
        let inserts = if absent.is_empty() {
            0
        } else {
            statements.push(target.insert_if_absent_statement(&absent));
            absent.len() as u64
        };
        if statements.is_empty() {
            continue;
        }
        let changed = target_db
            .execute_counted(&statements)
            .await
            .map_err(target_db.query_failed(target.table()))?;
        let (row_writes, insert) = if inserts > 0 {
            changed.split_at(changed.len() - 1)
        } else {
            (changed.as_slice(), &[][..])
        };
        let inserted: u64 = insert.iter().sum();
        let repaired = row_writes.iter().filter(|&&rows| rows > 0).count() as u64;
        writes.inserted += inserted;
        writes.repaired += repaired;
        writes.conflicts += (inserts - inserted) + (row_writes.len() as u64 - repaired);
    }
    Ok(())
}
