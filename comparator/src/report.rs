//! The result of a comparison, in the JSON shape `tandem compare --format json` prints.

use serde::Serialize;
use serde_json::{Map, Value};

pub use tandem_control::KeyValues;

use crate::diff::DivergenceKind;
use crate::plan::SchemaDifference;

/// The whole comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// True when every compared table is identical and no table is on one side only.
    pub identical: bool,
    /// One entry per compared table pair.
    pub tables: Vec<TableReport>,
    /// Tables only the old side has (when comparing every table).
    pub only_in_old: Vec<String>,
    /// Tables only the new side has (when comparing every table).
    pub only_in_new: Vec<String>,
}

impl Report {
    /// The tables that could not be compared, as `table: reason`.
    #[must_use]
    pub fn failures(&self) -> Vec<String> {
        self.tables
            .iter()
            .filter_map(|table| {
                let reason = table.error.as_ref()?;
                Some(format!("{}: {reason}", table.table))
            })
            .collect()
    }
}

/// One table pair.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableReport {
    /// The (old side's) table name.
    pub table: String,
    /// The new side's name when it differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_table: Option<String>,
    /// Rows read on the old side.
    pub rows_old: u64,
    /// Rows read on the new side.
    pub rows_new: u64,
    /// Confirmed rows the new side lacks.
    pub missing_in_new: u64,
    /// Confirmed rows only the new side has.
    pub extra_in_new: u64,
    /// Confirmed rows whose values differ.
    pub changed: u64,
    /// Differences seen once that disappeared on recheck (writes in flight).
    pub converged: u64,
    /// Rows that still differed after the rechecks but changed on both sides through them:
    /// never still long enough to be compared, so not counted as `changed`.
    pub unconverged: u64,
    /// Differences counted without a recheck, past the first 100,000 of a table.
    pub unrechecked: u64,
    /// Windows compared.
    pub windows: u64,
    /// Columns present on one side only (left out of the comparison).
    pub schema_differences: Vec<SchemaDifference>,
    /// Confirmed divergences, at most `--max-divergences` of them.
    pub divergences: Vec<DivergenceReport>,
    /// The table has no key and was compared as a multiset of whole rows.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub multiset: bool,
    /// Why the table could not be compared (its counts are then zero); the other tables are
    /// compared all the same.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl TableReport {
    /// The report of a table that could not be compared, with the reason.
    #[must_use]
    pub fn failed(table: &str, new_table: &str, reason: String) -> TableReport {
        TableReport {
            error: Some(reason),
            ..TableReport::empty(table, new_table)
        }
    }

    /// The report of a table pair before anything was compared.
    #[must_use]
    pub fn empty(table: &str, new_table: &str) -> TableReport {
        TableReport {
            table: table.to_owned(),
            new_table: (new_table != table).then(|| new_table.to_owned()),
            rows_old: 0,
            rows_new: 0,
            missing_in_new: 0,
            extra_in_new: 0,
            changed: 0,
            converged: 0,
            unconverged: 0,
            unrechecked: 0,
            windows: 0,
            schema_differences: Vec::new(),
            divergences: Vec::new(),
            multiset: false,
            error: None,
        }
    }

    /// Whether the table pair is identical (compared, no divergence, no schema difference).
    #[must_use]
    pub fn identical(&self) -> bool {
        self.error.is_none()
            && self.missing_in_new == 0
            && self.extra_in_new == 0
            && self.changed == 0
            && self.unconverged == 0
            && self.schema_differences.is_empty()
    }
}

/// One confirmed divergent row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DivergenceReport {
    /// What differs.
    pub kind: DivergenceKind,
    /// Key column names mapped to their values, in key-column order.
    pub key: KeyValues,
    /// For `changed`: the differing columns (empty for missing and extra rows).
    pub columns: Vec<String>,
    /// For a row of a table compared as a multiset (whose `key` is the whole row): how many
    /// more copies of it one side holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// For `unconverged`: in how many rechecks both sides' rows had changed since the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rechecks_changed: Option<u32>,
    /// The old side's row as last read (column → value), absent when the row is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<Map<String, Value>>,
    /// The new side's row as last read, absent when the row is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<Map<String, Value>>,
}
