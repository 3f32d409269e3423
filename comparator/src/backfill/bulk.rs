//! The bulk write of a chunk whose key range the new (PostgreSQL) side holds no row of: the
//! old side's rows streamed with `COPY … FROM STDIN` straight into the table, in one
//! transaction that a key taken meanwhile rolls back whole.

use tokio::sync::mpsc;

use crate::database::{BindValue, Database, Engine};
use crate::error::CompareError;
use crate::plan::TablePlan;
use crate::reader::{Chunk, Row, TableReader};
use crate::run::{CompareOptions, KeyRange};

/// Rows read from the old side (and sent on to the new side) at a time.
const PIECE_ROWS: usize = 2_000;
/// Encoded bytes read from the old side at a time.
const PIECE_BYTES: usize = 1 << 20;

/// Lower-case hexadecimal digits, as PostgreSQL writes `bytea`.
const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// What the bulk write of one chunk did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BulkWrite {
    /// The range held a row on the new side: nothing was tried.
    NotEmpty,
    /// Every row of the range was inserted.
    Inserted(u64),
    /// A key of the range was taken on the new side meanwhile (a live write): the insert
    /// failed and nothing was written.
    KeyTaken,
    /// The table refused the COPY otherwise (a value its column refuses on input where the row
    /// path's cast would take it, a view, …): nothing was written; the row path decides.
    Refused(String),
}

/// PostgreSQL's SQLSTATE for a unique violation.
const UNIQUE_VIOLATION: &str = "23505";

/// Copies the rows of `range` from old to new in bulk when the new side is PostgreSQL and
/// holds no row of the range: `COPY … FROM STDIN` into the table itself, so each row is
/// written once (no staging table) and each value goes through its column type's input
/// function, as the row path's cast of a bound text value does. A COPY has no conflict
/// clause: when a mirrored write put a row of the range there meanwhile, it fails on that key
/// and the transaction is rolled back (`KeyTaken`, nothing written), so that row is kept and
/// the chunk is left to the row path's conditional writes; the chunk is verified afterwards
/// as any other.
///
/// # Errors
/// When a read, the COPY or the insert fails otherwise (the transaction is rolled back).
pub(crate) async fn copy_into_empty_range(
    (old, new): (&Database, &Database),
    plan: &TablePlan,
    range: &KeyRange,
    options: &CompareOptions,
) -> Result<BulkWrite, CompareError> {
    if !copies_in_bulk(new) {
        return Ok(BulkWrite::NotEmpty);
    }
    let filter = options.filter_for(&plan.old_table);
    let reader = |db, filter| {
        TableReader::new(db, plan, filter, options.settings).through(range.through.clone())
    };
    // Any row of the range counts, `--where` or not: the range must be empty, not only the
    // rows compared.
    let (source, target) = (reader(old, filter), reader(new, None));
    let after = range.after.as_deref();
    let reads = options.throttle();
    let first = target.window(after, 1).await?;
    reads.read(first.len()).await;
    if !first.is_empty() {
        return Ok(BulkWrite::NotEmpty);
    }
    let (pieces, mut pieces_read) = mpsc::channel::<Chunk>(1);
    let (data, mut data_sent) = mpsc::channel::<Option<Vec<u8>>>(1);
    let read = async move {
        source
            .read_in_one_pass(after, (PIECE_ROWS, PIECE_BYTES), &pieces)
            .await;
        Ok::<_, CompareError>(())
    };
    let target = &target;
    let reads = &reads;
    let encode = async move {
        while let Some(piece) = pieces_read.recv().await {
            let (rows, more) = piece?;
            let rows = rows
                .decode_all()
                .ok_or_else(|| CompareError::Encoding(plan.old_table.clone()))?;
            let mut out = Vec::with_capacity(rows.len() * 64);
            for row in &rows {
                copy_row(target, row, &mut out);
            }
            // A closed channel means the COPY failed: its error is the one reported.
            if data.send(Some(out)).await.is_err() {
                return Ok(());
            }
            // `--max-rows-per-sec` holds for the bulk read as for a comparison's.
            reads.read(rows.len()).await;
            if !more {
                // Ends the COPY; the transaction commits only after this.
                let _ = data.send(None).await;
                return Ok(());
            }
        }
        Err(CompareError::Task(format!(
            "table {}: the read of the old side ended early",
            plan.old_table
        )))
    };
    let copy = target.copy_in_statement();
    let write = async {
        new.copy_in_transaction(&copy, &mut data_sent)
            .await
            .map_err(new.query_failed(&plan.new_table))
    };
    match tokio::try_join!(read, encode, write) {
        Ok(((), (), inserted)) => Ok(BulkWrite::Inserted(inserted)),
        Err(CompareError::Query {
            source: sqlx::Error::Database(error),
            ..
        }) => Ok(if error.code().as_deref() == Some(UNIQUE_VIOLATION) {
            BulkWrite::KeyTaken
        } else {
            BulkWrite::Refused(error.to_string())
        }),
        Err(error) => Err(error),
    }
}

/// Whether chunks are copied into `new` in bulk where it holds none of their rows: on
/// PostgreSQL (`COPY … FROM STDIN`); elsewhere every chunk goes the row way.
pub(crate) fn copies_in_bulk(new: &Database) -> bool {
    new.engine == Engine::Postgres
}

/// Appends `row` to `out` as a line of PostgreSQL's text COPY format: each value as the row
/// path binds it, written as the text PostgreSQL casts the bound value from (bytes as `\x`
/// and hexadecimal digits), escaped for COPY, so that the column's input function gives what
/// the row path's cast gives.
fn copy_row(target: &TableReader, row: &Row, out: &mut Vec<u8>) {
    for (index, value) in target.write_values(row).enumerate() {
        if index > 0 {
            out.push(b'\t');
        }
        match value {
            BindValue::Null => out.extend_from_slice(b"\\N"),
            BindValue::Text(text) => escape_into(text.as_bytes(), out),
            BindValue::Int(value) => out.extend_from_slice(value.to_string().as_bytes()),
            BindValue::Bytes(bytes) => {
                out.extend_from_slice(b"\\\\x");
                for byte in bytes {
                    out.push(HEX_DIGITS[usize::from(byte >> 4)]);
                    out.push(HEX_DIGITS[usize::from(byte & 0x0f)]);
                }
            }
        }
    }
    out.push(b'\n');
}

/// Appends `text` escaped for the text COPY format: the backslash and the characters that
/// end a value or a line are written as backslash sequences; everything else as it is.
fn escape_into(text: &[u8], out: &mut Vec<u8>) {
    for &byte in text {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(byte),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::escape_into;

    #[test]
    fn text_is_escaped_for_copy() {
        let mut out = Vec::new();
        escape_into(b"a\\b\tc\nd\re \\N", &mut out);
        assert_eq!(out, b"a\\\\b\\tc\\nd\\re \\\\N");
    }
}
