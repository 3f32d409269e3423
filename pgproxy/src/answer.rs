//! What a transaction answered (column types and `DataRow`s, as on the wire), and how two
//! sides' answers differ, told precisely enough to act on: the first row each side has that
//! the other has not.

use bytes::Bytes;
use tandem_control::Side;

/// Column types and rows a transaction's statements returned (a read's `SELECT`s, a write's
/// `RETURNING`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Type OIDs of each result's columns.
    pub types: Vec<Vec<u32>>,
    /// Every `DataRow` body, in order (the bytes as read, not copied).
    pub rows: Vec<Bytes>,
    /// Whether row order matters (the query has an `ORDER BY`).
    pub ordered: bool,
}

/// Answers with more rows than this are not compared (they would have to be held in memory).
pub const MAX_COMPARED_ROWS: usize = 10_000;
/// Nor answers of more bytes than this.
pub const MAX_COMPARED_BYTES: usize = 8 << 20;

/// Rendered rows are cut to this many characters.
const MAX_RENDERED: usize = 200;

impl Answer {
    /// Adds a `RowDescription` body's column types.
    pub fn describe(&mut self, body: &[u8]) {
        let mut types = Vec::new();
        let mut rest = body.get(2..).unwrap_or_default();
        while !rest.is_empty() {
            let Some(end) = rest.iter().position(|byte| *byte == 0) else {
                break;
            };
            let Some(field) = rest.get(end + 1..end + 19) else {
                break;
            };
            types.push(u32::from_be_bytes([field[6], field[7], field[8], field[9]]));
            rest = &rest[end + 19..];
        }
        self.types.push(types);
    }

    /// Describes how `other` (the other side's answer) differs from this one (the
    /// authoritative side's), if it does. Type OIDs of user-defined types differ between
    /// clusters, so only built-in ones (below 16384) are compared.
    #[must_use]
    pub fn difference(&self, other: &Answer, authoritative: Side) -> Option<String> {
        let builtin = |types: &[Vec<u32>]| -> Vec<Vec<u32>> {
            types
                .iter()
                .map(|columns| {
                    columns
                        .iter()
                        .map(|oid| if *oid < 16_384 { *oid } else { 0 })
                        .collect()
                })
                .collect()
        };
        let (old, new) = match authoritative {
            Side::Old => (self, other),
            Side::New => (other, self),
        };
        if builtin(&self.types) != builtin(&other.types) {
            return Some(format!(
                "column types differ: old {:?}, new {:?}",
                old.types, new.types
            ));
        }
        let (mut old_rows, mut new_rows) = (old.rows.clone(), new.rows.clone());
        let order = if self.ordered {
            "in order"
        } else {
            old_rows.sort_unstable();
            new_rows.sort_unstable();
            "as sets"
        };
        if old_rows == new_rows {
            return None;
        }
        let (only_old, only_new) = if self.ordered {
            let at = old_rows
                .iter()
                .zip(&new_rows)
                .position(|(a, b)| a != b)
                .unwrap_or(old_rows.len().min(new_rows.len()));
            (old_rows.get(at), new_rows.get(at))
        } else {
            first_unmatched(&old_rows, &new_rows)
        };
        let shown =
            |row: Option<&Bytes>| row.map_or_else(|| "nothing".to_owned(), |row| render(row));
        Some(format!(
            "rows differ ({} old / {} new rows, {order}): old has {}, new has {}",
            old.rows.len(),
            new.rows.len(),
            shown(only_old),
            shown(only_new)
        ))
    }
}

/// The first row of each sorted list that the other lacks (as multisets).
fn first_unmatched<'a>(
    old: &'a [Bytes],
    new: &'a [Bytes],
) -> (Option<&'a Bytes>, Option<&'a Bytes>) {
    let (mut only_old, mut only_new) = (None, None);
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if a == b => (i, j) = (i + 1, j + 1),
            (Some(a), Some(b)) if a < b => {
                only_old.get_or_insert(a);
                i += 1;
            }
            (Some(a), None) => {
                only_old.get_or_insert(a);
                i += 1;
            }
            (_, Some(b)) => {
                only_new.get_or_insert(b);
                j += 1;
            }
            (None, None) => break,
        }
        if only_old.is_some() && only_new.is_some() {
            break;
        }
    }
    (only_old, only_new)
}

/// A `DataRow` body as `(value, value, NULL)`: text-format values as they are, binary ones
/// as `\x` and their bytes in hex, cut short.
fn render(row: &[u8]) -> String {
    let mut out = String::from("(");
    let mut rest = row.get(2..).unwrap_or_default();
    let mut first = true;
    while rest.len() >= 4 {
        let length = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        rest = &rest[4..];
        if !first {
            out.push_str(", ");
        }
        first = false;
        match usize::try_from(length) {
            Ok(length) => {
                let value = rest.get(..length).unwrap_or(rest);
                match std::str::from_utf8(value) {
                    Ok(text) if !text.chars().any(char::is_control) => out.push_str(text),
                    // A binary-format value (or text with control characters): its bytes.
                    _ => {
                        out.push_str("\\x");
                        value
                            .iter()
                            .for_each(|byte| out.push_str(&format!("{byte:02x}")));
                    }
                }
                rest = rest.get(length..).unwrap_or_default();
            }
            Err(_) => out.push_str("NULL"),
        }
        if out.len() > MAX_RENDERED {
            let cut = (0..=MAX_RENDERED)
                .rev()
                .find(|at| out.is_char_boundary(*at))
                .unwrap_or(0);
            out.truncate(cut);
            out.push('…');
            return out;
        }
    }
    out.push(')');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[Option<&str>]) -> Bytes {
        let mut body = u16::try_from(values.len()).unwrap().to_be_bytes().to_vec();
        for value in values {
            match value {
                Some(text) => {
                    body.extend_from_slice(&i32::try_from(text.len()).unwrap().to_be_bytes());
                    body.extend_from_slice(text.as_bytes());
                }
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        body.into()
    }

    #[test]
    fn differences_name_the_rows_each_side_alone_has() {
        let answer = |rows: Vec<Bytes>, ordered| Answer {
            types: vec![vec![23, 25]],
            rows,
            ordered,
        };
        let old = answer(
            vec![row(&[Some("1"), Some("a")]), row(&[Some("2"), None])],
            false,
        );
        let same = answer(
            vec![row(&[Some("2"), None]), row(&[Some("1"), Some("a")])],
            false,
        );
        assert_eq!(old.difference(&same, Side::Old), None);
        let swapped = answer(
            vec![row(&[Some("1"), None]), row(&[Some("2"), Some("a")])],
            false,
        );
        assert_eq!(
            old.difference(&swapped, Side::Old).unwrap(),
            "rows differ (2 old / 2 new rows, as sets): old has (1, a), new has (1, NULL)"
        );
        // The authoritative side's answer is the new side's in live.
        assert_eq!(
            swapped.difference(&old, Side::New).unwrap(),
            "rows differ (2 old / 2 new rows, as sets): old has (1, a), new has (1, NULL)"
        );
        let ordered = answer(
            vec![row(&[Some("1"), Some("a")]), row(&[Some("2"), None])],
            true,
        );
        let reordered = answer(
            vec![row(&[Some("2"), None]), row(&[Some("1"), Some("a")])],
            true,
        );
        assert!(ordered
            .difference(&reordered, Side::Old)
            .unwrap()
            .contains("in order): old has (1, a), new has (2, NULL)"));
        let fewer = answer(vec![row(&[Some("1"), Some("a")])], false);
        assert!(old
            .difference(&fewer, Side::Old)
            .unwrap()
            .ends_with("old has (2, NULL), new has nothing"));
        let retyped = Answer {
            types: vec![vec![20, 25]],
            ..old.clone()
        };
        assert!(old
            .difference(&retyped, Side::Old)
            .unwrap()
            .starts_with("column types differ"));
        assert_eq!(
            render(&row(&[Some("\u{0}\u{1}"), Some("ok")])),
            "(\\x0001, ok)"
        );
        let long = answer(vec![row(&[Some(&"é".repeat(300))])], false);
        assert!(render(&long.rows[0]).chars().count() <= MAX_RENDERED + 1);
    }
}
