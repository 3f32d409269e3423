//! Window digests and the localisation of differences to rows and columns.

use std::cmp::Ordering;

use serde::Serialize;

use crate::canonical::{encoded_key_cmp, values_equal, Canonical, CanonicalSettings};
use crate::reader::Row;
use crate::window::EncodedRows;

/// What kind of divergence a row shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DivergenceKind {
    /// The old side has the row, the new side does not.
    MissingInNew,
    /// The new side has a row the old side does not.
    ExtraInNew,
    /// Both have the row with different values.
    Changed,
    /// Both have the row with different values, but both sides' rows kept changing through
    /// the rechecks (a row updated faster than the mirror follows): not a confirmed change.
    Unconverged,
}

impl DivergenceKind {
    /// The name used in reports: `missing_in_new`, `extra_in_new`, `changed` or
    /// `unconverged`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            DivergenceKind::MissingInNew => "missing_in_new",
            DivergenceKind::ExtraInNew => "extra_in_new",
            DivergenceKind::Changed => "changed",
            DivergenceKind::Unconverged => "unconverged",
        }
    }
}

/// One divergent row.
#[derive(Debug, Clone, PartialEq)]
pub struct RowDivergence {
    /// What differs.
    pub kind: DivergenceKind,
    /// The row's key.
    pub key: Vec<Canonical>,
    /// For `Changed`: indices (into the plan's value columns) of the differing columns.
    pub columns: Vec<usize>,
}

/// Merges two key-ordered windows and lists every row that differs. Rows whose encodings
/// are equal are equal and skipped; only the others are decoded. `None` when an encoding does
/// not decode.
#[must_use]
pub fn diff_windows(
    old: &EncodedRows,
    new: &EncodedRows,
    settings: &CanonicalSettings,
) -> Option<Vec<RowDivergence>> {
    let mut found = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        let ordering = match (i < old.len(), j < new.len()) {
            (true, true) => encoded_key_cmp(old.key(i), new.key(j)),
            (true, false) => Ordering::Less,
            (false, _) => Ordering::Greater,
        };
        match ordering {
            Ordering::Less => {
                found.push(RowDivergence {
                    kind: DivergenceKind::MissingInNew,
                    key: old.decode_key(i)?,
                    columns: Vec::new(),
                });
                i += 1;
            }
            Ordering::Greater => {
                found.push(RowDivergence {
                    kind: DivergenceKind::ExtraInNew,
                    key: new.decode_key(j)?,
                    columns: Vec::new(),
                });
                j += 1;
            }
            Ordering::Equal => {
                if old.row(i) != new.row(j) {
                    let (a, b) = (old.decode_row(i)?, new.decode_row(j)?);
                    found.extend(diff_pair(&a, &b, settings));
                }
                i += 1;
                j += 1;
            }
        }
    }
    Some(found)
}

/// Compares two rows with the same key; `None` when equal.
#[must_use]
pub fn diff_pair(old: &Row, new: &Row, settings: &CanonicalSettings) -> Option<RowDivergence> {
    let columns: Vec<usize> = old
        .values
        .iter()
        .zip(&new.values)
        .enumerate()
        .filter(|(_, (a, b))| !values_equal(a, b, settings))
        .map(|(index, _)| index)
        .collect();
    (!columns.is_empty()).then(|| RowDivergence {
        kind: DivergenceKind::Changed,
        key: old.key.clone(),
        columns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, value: &str) -> Row {
        Row {
            key: vec![Canonical::Number(id.to_string())],
            values: vec![Canonical::Text(value.to_owned()), Canonical::Null],
        }
    }

    #[test]
    fn finds_missing_extra_and_changed_rows() {
        let old = EncodedRows::from_rows(&[row(1, "a"), row(2, "b"), row(4, "d")]);
        let new = EncodedRows::from_rows(&[row(2, "B"), row(3, "c"), row(4, "d")]);
        let settings = CanonicalSettings::default();
        let found = diff_windows(&old, &new, &settings).unwrap();
        let kinds: Vec<(DivergenceKind, String)> = found
            .iter()
            .map(|d| (d.kind, d.key[0].to_json().to_string()))
            .collect();
        assert_eq!(
            kinds,
            [
                (DivergenceKind::MissingInNew, "1".to_owned()),
                (DivergenceKind::Changed, "2".to_owned()),
                (DivergenceKind::ExtraInNew, "3".to_owned()),
            ]
        );
        assert_eq!(found[1].columns, [0]);
        assert_ne!(old.digest(), new.digest());
        assert_eq!(old.digest(), old.clone().digest());
    }
}
