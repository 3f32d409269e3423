//! Tables without any key (no primary key, no unique index over non-null columns: logs,
//! histories) compared as multisets of whole rows: each distinct row with how many times each
//! side holds it.
//!
//! Each side is read whole, in no order; every row's canonical encoding is hashed (blake3) and
//! counted. Memory stays bounded by partitioning on the hash: a pass keeps only the rows whose
//! hash falls in its partition, and when a pass would hold more than [`PASS_BYTES`] on a side,
//! the table is read again in four times as many partitions. Rechecks read both sides again,
//! counting only the rows that differed. Tolerances do not apply: rows are equal when their
//! encodings are.

use std::collections::HashMap;
use std::time::Duration;

use crate::canonical::{decode_key, encode_wire, CanonicalSettings, ColumnReading, WireRef};
use crate::database::{Database, RowSink};
use crate::diff::DivergenceKind;
use crate::error::CompareError;
use crate::plan::TablePlan;
use crate::reader::TableReader;
use crate::report::{DivergenceReport, KeyValues, TableReport};

/// Most bytes of distinct rows one side holds during a pass, by default.
pub(crate) const PASS_BYTES: usize = 64 << 20;

/// Most partitions a table is split into (a single row larger than a pass allows never fits).
const MAX_PARTITIONS: u64 = 1 << 16;

/// Distinct differing rows kept for rechecks and the report; past this many the rest are
/// counted without a recheck, as for keyed tables.
const MAX_CANDIDATES: usize = 100_000;

/// A distinct row and how many times each side holds it.
#[derive(Debug, Clone)]
struct Counted {
    encoding: Vec<u8>,
    old: u64,
    new: u64,
}

/// Which rows a scan counts: those in one partition of the hash space, or only the given
/// hashes (rechecks).
enum Wanted<'a> {
    Partition { index: u64, count: u64 },
    Only(&'a HashMap<blake3::Hash, Counted>),
}

/// Counts the rows of one side as they arrive.
struct RowCounter<'a> {
    budget: usize,
    readings: &'a [ColumnReading],
    settings: &'a CanonicalSettings,
    wanted: &'a Wanted<'a>,
    row: Vec<u8>,
    column: usize,
    rows: u64,
    counts: HashMap<blake3::Hash, (u64, Vec<u8>)>,
    bytes: usize,
}

impl<'a> RowCounter<'a> {
    fn new(
        reader: &'a TableReader,
        settings: &'a CanonicalSettings,
        wanted: &'a Wanted<'a>,
        budget: usize,
    ) -> Self {
        RowCounter {
            budget,
            readings: reader.readings(),
            settings,
            wanted,
            row: Vec::new(),
            column: 0,
            rows: 0,
            counts: HashMap::new(),
            bytes: 0,
        }
    }
}

impl RowSink for RowCounter<'_> {
    fn value(&mut self, value: WireRef<'_>) {
        if let Some(&reading) = self.readings.get(self.column) {
            encode_wire(value, reading, self.settings, &mut self.row);
        }
        self.column += 1;
    }

    fn end_row(&mut self) {
        self.rows += 1;
        let hash = blake3::hash(&self.row);
        let wanted = match self.wanted {
            Wanted::Partition { index, count } => {
                let mut head = [0; 8];
                head.copy_from_slice(&hash.as_bytes()[..8]);
                u64::from_le_bytes(head) % count == *index
            }
            Wanted::Only(hashes) => hashes.contains_key(&hash),
        };
        if wanted && self.bytes <= self.budget {
            let entry = self.counts.entry(hash).or_insert_with(|| (0, Vec::new()));
            if entry.0 == 0 {
                entry.1 = self.row.clone();
                self.bytes += self.row.len() + 64;
            }
            entry.0 += 1;
        }
        self.row.clear();
        self.column = 0;
    }
}

/// What one scan of both sides counted.
struct Scan {
    rows: (u64, u64),
    counts: HashMap<blake3::Hash, Counted>,
    /// A side held more than the pass allows: the partition must be split.
    overflowed: bool,
}

async fn scan(
    readers: (&TableReader, &TableReader),
    options: &MultisetOptions<'_>,
    wanted: &Wanted<'_>,
) -> Result<Scan, CompareError> {
    // A recheck counts rows already held (the candidates): it needs no more room than they do.
    let budget = match wanted {
        Wanted::Partition { .. } => options.pass_bytes,
        Wanted::Only(_) => usize::MAX,
    };
    let mut old = RowCounter::new(readers.0, &options.settings, wanted, budget);
    let mut new = RowCounter::new(readers.1, &options.settings, wanted, budget);
    tokio::try_join!(readers.0.scan(&mut old), readers.1.scan(&mut new))?;
    let overflowed = old.bytes > budget || new.bytes > budget;
    let mut counts: HashMap<blake3::Hash, Counted> = HashMap::new();
    for (hash, (count, encoding)) in old.counts {
        counts.insert(
            hash,
            Counted {
                encoding,
                old: count,
                new: 0,
            },
        );
    }
    for (hash, (count, encoding)) in new.counts {
        counts
            .entry(hash)
            .or_insert(Counted {
                encoding,
                old: 0,
                new: 0,
            })
            .new = count;
    }
    Ok(Scan {
        rows: (old.rows, new.rows),
        counts,
        overflowed,
    })
}

/// How a multiset comparison reads and rechecks.
pub(crate) struct MultisetOptions<'a> {
    /// The SQL condition both sides are restricted by.
    pub filter: Option<&'a str>,
    /// Rechecks of differences before they count.
    pub rechecks: u32,
    /// Wait before each recheck.
    pub recheck_delay: Duration,
    /// Most divergences listed (counts stay exact).
    pub max_divergences: usize,
    /// Canonical-form settings.
    pub settings: CanonicalSettings,
    /// Most bytes of distinct rows one side holds during a pass ([`PASS_BYTES`]).
    pub pass_bytes: usize,
}

/// Compares a keyless table pair as multisets of whole rows.
///
/// # Errors
/// When a query fails or an encoding does not decode.
pub(crate) async fn compare_multiset(
    old: &Database,
    new: &Database,
    plan: &TablePlan,
    options: &MultisetOptions<'_>,
) -> Result<TableReport, CompareError> {
    let settings = &options.settings;
    let readers = (
        TableReader::new(old, plan, options.filter, *settings),
        TableReader::new(new, plan, options.filter, *settings),
    );
    let mut report = TableReport::empty(&plan.old_table, &plan.new_table);
    report.multiset = true;
    report.schema_differences = plan.schema_differences.clone();
    let mut candidates: HashMap<blake3::Hash, Counted> = HashMap::new();
    let mut partitions = 1;
    let mut index = 0;
    while index < partitions {
        let wanted = Wanted::Partition {
            index,
            count: partitions,
        };
        let found = scan((&readers.0, &readers.1), options, &wanted).await?;
        report.windows += 1;
        if found.overflowed {
            // Start over with smaller partitions: nothing of this pass is kept.
            partitions *= 4;
            if partitions > MAX_PARTITIONS {
                return Err(CompareError::Task(format!(
                    "table {}: its rows are too large to compare as a multiset",
                    plan.old_table
                )));
            }
            index = 0;
            candidates.clear();
            report.unrechecked = 0;
            report.missing_in_new = 0;
            report.extra_in_new = 0;
            continue;
        }
        (report.rows_old, report.rows_new) = found.rows;
        for (hash, counted) in found.counts {
            if counted.old == counted.new {
                continue;
            }
            if candidates.len() < MAX_CANDIDATES {
                candidates.insert(hash, counted);
            } else {
                count_rows(&mut report, &counted);
                report.unrechecked += 1;
            }
        }
        index += 1;
    }
    for _ in 0..options.rechecks {
        if candidates.is_empty() {
            break;
        }
        tokio::time::sleep(options.recheck_delay).await;
        let found = scan(
            (&readers.0, &readers.1),
            options,
            &Wanted::Only(&candidates),
        )
        .await?;
        let before = candidates.len();
        candidates.retain(|hash, counted| {
            let (old, new) = found
                .counts
                .get(hash)
                .map_or((0, 0), |now| (now.old, now.new));
            (counted.old, counted.new) = (old, new);
            old != new
        });
        report.converged += (before - candidates.len()) as u64;
    }
    let mut listed: Vec<&Counted> = candidates.values().collect();
    listed.sort_by(|a, b| a.encoding.cmp(&b.encoding));
    for counted in &listed {
        count_rows(&mut report, counted);
    }
    report.divergences = listed
        .into_iter()
        .take(options.max_divergences)
        .map(|counted| describe(plan, counted))
        .collect::<Option<_>>()
        .ok_or_else(|| CompareError::Encoding(plan.old_table.clone()))?;
    Ok(report)
}

/// Adds a differing row's extra copies to the counts: on the old side they are missing in
/// the new one, on the new side extra.
fn count_rows(report: &mut TableReport, counted: &Counted) {
    report.missing_in_new += counted.old.saturating_sub(counted.new);
    report.extra_in_new += counted.new.saturating_sub(counted.old);
}

/// A differing row as the report lists it: the row's columns and values stand for its key,
/// `count` for how many more copies one side holds.
fn describe(plan: &TablePlan, counted: &Counted) -> Option<DivergenceReport> {
    let values = decode_key(&counted.encoding)?;
    let row = KeyValues(
        plan.values
            .iter()
            .zip(&values)
            .map(|(pair, value)| (pair.name.clone(), value.to_json()))
            .collect(),
    );
    let kind = if counted.old > counted.new {
        DivergenceKind::MissingInNew
    } else {
        DivergenceKind::ExtraInNew
    };
    Some(DivergenceReport {
        kind,
        key: row,
        columns: Vec::new(),
        count: Some(counted.old.abs_diff(counted.new)),
        rechecks_changed: None,
        old: None,
        new: None,
    })
}

#[cfg(test)]
mod tests {
    use tandem_control::Side;

    use super::*;
    use crate::database::Access;
    use crate::plan::ColumnSelection;
    use crate::schema::describe;

    async fn database(side: Side, dir: &tempfile::TempDir, rows: &[(i64, &str)]) -> Database {
        let path = dir.path().join(format!("{side}.db"));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let db = Database::connect(side, &url, 2, Access::ReadWrite)
            .await
            .unwrap();
        let mut statements = vec![("CREATE TABLE log (n INTEGER, s TEXT)".to_owned(), vec![])];
        statements.extend(
            rows.iter()
                .map(|(n, s)| (format!("INSERT INTO log VALUES ({n}, '{s}')"), Vec::new())),
        );
        db.execute_in_transaction(&statements).await.unwrap();
        db
    }

    /// A pass too small for the table splits it into partitions, and the result is the one a
    /// single pass gives.
    #[tokio::test]
    async fn partitions_give_the_result_of_one_pass() {
        let dir = tempfile::tempdir().unwrap();
        let old_rows: Vec<(i64, &str)> = (0..200).map(|n| (n, "row")).collect();
        let mut new_rows = old_rows.clone();
        new_rows.retain(|(n, _)| n % 50 != 7);
        new_rows.extend([(1, "row"), (1000, "new")]);
        let old = database(Side::Old, &dir, &old_rows).await;
        let new = database(Side::New, &dir, &new_rows).await;
        let (old_schema, new_schema) = (
            describe(&old, "log").await.unwrap().unwrap(),
            describe(&new, "log").await.unwrap().unwrap(),
        );
        let selection = ColumnSelection::default();
        let plan = TablePlan::whole_rows(&old, &old_schema, &new, &new_schema, &selection).unwrap();
        let mut reports = Vec::new();
        for pass_bytes in [PASS_BYTES, 1_000] {
            let options = MultisetOptions {
                filter: None,
                rechecks: 1,
                recheck_delay: Duration::ZERO,
                max_divergences: 100,
                settings: CanonicalSettings::default(),
                pass_bytes,
            };
            reports.push(compare_multiset(&old, &new, &plan, &options).await.unwrap());
        }
        let (whole, split) = (&reports[0], &reports[1]);
        assert_eq!(whole.windows, 1);
        assert!(split.windows > 4, "{} passes", split.windows);
        for report in [whole, split] {
            assert_eq!((report.rows_old, report.rows_new), (200, 198));
            assert_eq!((report.missing_in_new, report.extra_in_new), (4, 2));
        }
        assert_eq!(whole.divergences, split.divergences);
    }
}
