//! The bulk write of a chunk whose key range the new (PostgreSQL) side holds no row of: the
//! old side's rows streamed with `COPY … FROM STDIN` into a staging table, then one plain
//! insert, in one transaction that a key taken meanwhile rolls back whole.

use tokio::sync::mpsc;

use crate::database::{BindValue, Database, Engine};
use crate::error::CompareError;
use crate::plan::TablePlan;
use crate::reader::{Chunk, Row, TableReader};
use crate::run::{CompareOptions, KeyRange};

/// The staging table: temporary (never logged, seen by its session only) and dropped when the
/// chunk's transaction ends.
const STAGING: &str = "tandem_backfill_staging";
/// Rows read from the old side (and sent on to the new side) at a time.
const PIECE_ROWS: usize = 2_000;
/// Encoded bytes read from the old side at a time.
const PIECE_BYTES: usize = 1 << 20;
/// The binary COPY format's header: signature, flags, header extension length.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The binary COPY format's trailer.
const COPY_TRAILER: &[u8] = &(-1_i16).to_be_bytes();

/// Lower-case hexadecimal digits, as PostgreSQL writes `bytea`.
const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// What the bulk write of one chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BulkWrite {
    /// The range held a row on the new side: nothing was tried.
    NotEmpty,
    /// Every row of the range was inserted.
    Inserted(u64),
    /// A key of the range was taken on the new side meanwhile (a live write): the insert
    /// failed and nothing was written.
    KeyTaken,
}

/// PostgreSQL's SQLSTATE for a unique violation.
const UNIQUE_VIOLATION: &str = "23505";

/// Copies the rows of `range` from old to new in bulk when the new side is PostgreSQL and
/// holds no row of the range. The insert has no conflict clause: when a mirrored write put a
/// row of the range there meanwhile, it fails on that key and the transaction is rolled
/// back (`KeyTaken`, nothing written), so that row is kept and the chunk is left to the row
/// path's conditional writes; the chunk is verified afterwards as any other.
///
/// # Errors
/// When a read, the COPY or the insert fails otherwise (the transaction is rolled back).
pub(crate) async fn copy_into_empty_range(
    (old, new): (&Database, &Database),
    plan: &TablePlan,
    range: &KeyRange,
    options: &CompareOptions,
) -> Result<BulkWrite, CompareError> {
    if new.engine != Engine::Postgres {
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
        if data.send(Some(COPY_HEADER.to_vec())).await.is_err() {
            return Ok(());
        }
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
                let _ = data.send(Some(COPY_TRAILER.to_vec())).await;
                let _ = data.send(None).await;
                return Ok(());
            }
        }
        Err(CompareError::Task(format!(
            "table {}: the read of the old side ended early",
            plan.old_table
        )))
    };
    let columns: Vec<String> = (0..plan.columns().count())
        .map(|index| format!("c{index} text"))
        .collect();
    let prepare = format!(
        "CREATE TEMPORARY TABLE {STAGING} ({}) ON COMMIT DROP",
        columns.join(", ")
    );
    let copy = format!("COPY {STAGING} FROM STDIN (FORMAT binary)");
    let apply = target.insert_from_staging_statement(STAGING);
    let write = async {
        new.copy_in_transaction((&prepare, &copy, &apply), &mut data_sent)
            .await
            .map_err(new.query_failed(&plan.new_table))
    };
    match tokio::try_join!(read, encode, write) {
        Ok(((), (), (_staged, inserted))) => Ok(BulkWrite::Inserted(inserted)),
        Err(CompareError::Query {
            source: sqlx::Error::Database(error),
            ..
        }) if error.code().as_deref() == Some(UNIQUE_VIOLATION) => Ok(BulkWrite::KeyTaken),
        Err(error) => Err(error),
    }
}

/// Appends `row` to `out` as a row of PostgreSQL's binary COPY format into the staging
/// table: each value as the row path binds it, written as the text PostgreSQL casts the
/// bound value to (bytes as `\x` and hexadecimal digits), so that casting it to the column's
/// type gives what the row path's cast gives.
fn copy_row(target: &TableReader, row: &Row, out: &mut Vec<u8>) {
    let fields = row.key.len() + row.values.len();
    out.extend_from_slice(&i16::try_from(fields).unwrap_or(i16::MAX).to_be_bytes());
    for value in target.write_values(row) {
        let text = match value {
            BindValue::Null => {
                out.extend_from_slice(&(-1_i32).to_be_bytes());
                continue;
            }
            BindValue::Text(text) => text.into_bytes(),
            BindValue::Int(value) => value.to_string().into_bytes(),
            BindValue::Bytes(bytes) => {
                let mut text = Vec::with_capacity(2 + bytes.len() * 2);
                text.extend_from_slice(b"\\x");
                for byte in bytes {
                    text.push(HEX_DIGITS[usize::from(byte >> 4)]);
                    text.push(HEX_DIGITS[usize::from(byte & 0x0f)]);
                }
                text
            }
        };
        out.extend_from_slice(&i32::try_from(text.len()).unwrap_or(i32::MAX).to_be_bytes());
        out.extend_from_slice(&text);
    }
}
