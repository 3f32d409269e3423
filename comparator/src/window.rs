//! Windows of rows in canonical encoding, back to back in one buffer as they were read:
//! hashed whole, compared row by row as bytes, and decoded into [`Row`]s only where they
//! differ.

use std::cmp::Ordering;
use std::ops::Range;

use crate::canonical::{decode_key, encode_wire, encoded_key_cmp, Canonical, CanonicalSettings};
use crate::canonical::{ColumnReading, WireRef};
use crate::database::RowSink;
use crate::reader::Row;

/// Rows in canonical encoding, in the order they were read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedRows {
    bytes: Vec<u8>,
    /// Where each row starts and where its key ends.
    bounds: Vec<(usize, usize)>,
}

impl EncodedRows {
    /// The encoding of `rows`.
    #[must_use]
    pub fn from_rows(rows: &[Row]) -> EncodedRows {
        let mut encoded = EncodedRows::default();
        for row in rows {
            let start = encoded.bytes.len();
            for value in &row.key {
                value.encode(&mut encoded.bytes);
            }
            encoded.bounds.push((start, encoded.bytes.len()));
            for value in &row.values {
                value.encode(&mut encoded.bytes);
            }
        }
        encoded
    }

    /// How many rows there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.bounds.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.bounds.is_empty()
    }

    /// The size of the encoding.
    #[must_use]
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// The blake3 digest of all rows: equal digests mean equal rows.
    #[must_use]
    pub fn digest(&self) -> blake3::Hash {
        // One call over the whole window lets blake3 hash many chunks at once (SIMD).
        blake3::hash(&self.bytes)
    }

    /// The encoded key of row `index`.
    #[must_use]
    pub fn key(&self, index: usize) -> &[u8] {
        self.span(index)
            .map_or(&[], |(start, key_end, _)| &self.bytes[start..key_end])
    }

    /// The encoding of row `index`, key and values.
    #[must_use]
    pub fn row(&self, index: usize) -> &[u8] {
        self.span(index)
            .map_or(&[], |(start, _, end)| &self.bytes[start..end])
    }

    /// Where row `index` starts, where its key ends and where it ends.
    fn span(&self, index: usize) -> Option<(usize, usize, usize)> {
        let &(start, key_end) = self.bounds.get(index)?;
        let end = self
            .bounds
            .get(index + 1)
            .map_or(self.bytes.len(), |&(next, _)| next);
        Some((start, key_end, end))
    }

    /// The encoded key of the last row.
    #[must_use]
    pub fn last_key(&self) -> Option<&[u8]> {
        self.len().checked_sub(1).map(|last| self.key(last))
    }

    /// Whether the keys strictly ascend, all after `after`.
    #[must_use]
    pub fn in_key_order_after(&self, after: Option<&[u8]>) -> bool {
        let first_after = match (after, self.is_empty()) {
            (Some(after), false) => encoded_key_cmp(after, self.key(0)) == Ordering::Less,
            _ => true,
        };
        first_after
            && (1..self.len())
                .all(|index| encoded_key_cmp(self.key(index - 1), self.key(index)).is_lt())
    }

    /// The index after the last row, from row `from` on, whose key is at most `end` (the
    /// rows are in key order): rows `from..` it are those of a window ending at `end`.
    #[must_use]
    pub fn end_through(&self, from: usize, end: &[u8]) -> usize {
        let from = from.min(self.len());
        from + self.bounds[from..].partition_point(|&(start, key_end)| {
            encoded_key_cmp(&self.bytes[start..key_end], end).is_le()
        })
    }

    /// A copy of the rows `range` (clamped to the rows there are): only their bytes are
    /// copied, so taking a buffer's rows window after window copies each row once.
    #[must_use]
    pub fn copy_rows(&self, range: Range<usize>) -> EncodedRows {
        let end = range.end.min(self.len());
        let start = range.start.min(end);
        let offset = |index: usize| self.bounds.get(index).map_or(self.bytes.len(), |b| b.0);
        let (from, to) = (offset(start), offset(end));
        EncodedRows {
            bytes: self.bytes[from..to].to_vec(),
            bounds: self.bounds[start..end]
                .iter()
                .map(|&(row, key_end)| (row - from, key_end - from))
                .collect(),
        }
    }

    /// The key of row `index`, decoded; `None` when there is no such row.
    #[must_use]
    pub fn decode_key(&self, index: usize) -> Option<Vec<Canonical>> {
        let (start, key_end, _) = self.span(index)?;
        decode_key(&self.bytes[start..key_end])
    }

    /// Row `index`, decoded; `None` when there is no such row.
    #[must_use]
    pub fn decode_row(&self, index: usize) -> Option<Row> {
        let (start, key_end, end) = self.span(index)?;
        Some(Row {
            key: decode_key(&self.bytes[start..key_end])?,
            values: decode_key(&self.bytes[key_end..end])?,
        })
    }

    /// Every row, decoded; `None` when the encoding is damaged.
    #[must_use]
    pub fn decode_all(&self) -> Option<Vec<Row>> {
        (0..self.len())
            .map(|index| self.decode_row(index))
            .collect()
    }
}

/// Encodes rows as a query's values arrive, column by column.
#[derive(Debug)]
pub struct RowEncoder<'r> {
    readings: &'r [ColumnReading],
    key_count: usize,
    settings: &'r CanonicalSettings,
    rows: EncodedRows,
    column: usize,
    row_start: usize,
    key_end: usize,
}

impl<'r> RowEncoder<'r> {
    /// An encoder of rows whose first `key_count` columns are the key.
    #[must_use]
    pub fn new(
        readings: &'r [ColumnReading],
        key_count: usize,
        settings: &'r CanonicalSettings,
    ) -> RowEncoder<'r> {
        RowEncoder {
            readings,
            key_count,
            settings,
            rows: EncodedRows::default(),
            column: 0,
            row_start: 0,
            key_end: 0,
        }
    }

    /// Makes room for `rows` rows of `bytes` bytes in all, so that the buffer is not grown
    /// (and copied) while rows arrive.
    #[must_use]
    pub fn with_room(mut self, rows: usize, bytes: usize) -> RowEncoder<'r> {
        self.rows.bytes.reserve(bytes);
        self.rows.bounds.reserve(rows);
        self
    }

    /// How many rows were encoded.
    #[must_use]
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// The size of the rows' encoding.
    #[must_use]
    pub fn byte_len(&self) -> usize {
        self.rows.byte_len()
    }

    /// The rows encoded.
    #[must_use]
    pub fn finish(self) -> EncodedRows {
        self.rows
    }
}

impl RowSink for RowEncoder<'_> {
    #[inline]
    fn value(&mut self, value: WireRef<'_>) {
        let bytes = &mut self.rows.bytes;
        if self.column == self.key_count {
            self.key_end = bytes.len();
        }
        if let Some(&reading) = self.readings.get(self.column) {
            encode_wire(value, reading, self.settings, bytes);
        }
        self.column += 1;
    }

    fn end_row(&mut self) {
        let end = self.rows.bytes.len();
        if self.column <= self.key_count {
            self.key_end = end;
        }
        self.rows.bounds.push((self.row_start, self.key_end));
        self.row_start = end;
        self.column = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{encode_key, CompareKind};

    fn rows(ids: &[i64]) -> EncodedRows {
        let rows: Vec<Row> = ids
            .iter()
            .map(|id| Row {
                key: vec![Canonical::Number(id.to_string())],
                values: vec![Canonical::Text(format!("row {id}")), Canonical::Null],
            })
            .collect();
        EncodedRows::from_rows(&rows)
    }

    fn key(id: i64) -> Vec<u8> {
        encode_key(&[Canonical::Number(id.to_string())])
    }

    #[test]
    fn rows_are_taken_through_a_key_and_copied_whole() {
        let all = rows(&[1, 2, 9, 10]);
        assert_eq!(all.end_through(0, &key(5)), 2);
        assert_eq!(all.end_through(2, &key(5)), 2, "nothing from row 2 up to 5");
        assert_eq!(all.end_through(2, &key(9)), 3);
        assert_eq!(
            all.end_through(0, &key(99)),
            4,
            "every row up to the last key"
        );
        assert_eq!(all.end_through(9, &key(99)), 4, "from past the end");
        assert_eq!(all.copy_rows(0..2), rows(&[1, 2]));
        assert_eq!(all.copy_rows(2..4), rows(&[9, 10]));
        assert_eq!(all.copy_rows(1..3), rows(&[2, 9]));
        assert!(all.copy_rows(3..3).is_empty());
        assert_eq!(
            all.copy_rows(3..9),
            rows(&[10]),
            "clamped to the rows there are"
        );
        let tail = all.copy_rows(2..4);
        assert_eq!(tail.decode_row(0), rows(&[9]).decode_row(0));
        assert_eq!(tail.last_key(), Some(&key(10)[..]));
        assert_eq!(tail.digest(), rows(&[9, 10]).digest());
    }

    #[test]
    fn key_order_is_checked_numerically_and_after_the_cursor() {
        assert!(rows(&[2, 10, 100]).in_key_order_after(Some(&key(1))));
        assert!(!rows(&[2, 10, 100]).in_key_order_after(Some(&key(2))));
        assert!(!rows(&[10, 9]).in_key_order_after(None));
        assert!(!rows(&[3, 3]).in_key_order_after(None), "keys are unique");
    }

    #[test]
    fn the_encoder_bounds_rows_and_keys() {
        let readings = [CompareKind::Number, CompareKind::Text].map(|kind| ColumnReading {
            kind,
            padded: false,
            naive_time: false,
        });
        let settings = CanonicalSettings::default();
        let mut encoder = RowEncoder::new(&readings, 1, &settings);
        for id in [1, 2] {
            encoder.value(WireRef::Int(id));
            encoder.value(WireRef::Text("x"));
            encoder.end_row();
        }
        let encoded = encoder.finish();
        assert_eq!(encoded.key(1), &key(2)[..]);
        assert_eq!(
            encoded.decode_all(),
            Some(vec![
                Row {
                    key: vec![Canonical::Number("1".to_owned())],
                    values: vec![Canonical::Text("x".to_owned())]
                },
                Row {
                    key: vec![Canonical::Number("2".to_owned())],
                    values: vec![Canonical::Text("x".to_owned())]
                },
            ])
        );
    }
}
