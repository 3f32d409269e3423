//! A pgoutput encoder for the tests: the inverse of [`PgOutput::decode`], writing what a
//! server would send for a message.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Column, OldRow, PgOutput, Tuple};

/// The wire form of `message` (names must not contain NUL).
pub(crate) fn encode(message: &PgOutput) -> Bytes {
    let mut out = BytesMut::new();
    match message {
        PgOutput::Begin(begin) => {
            out.put_u8(b'B');
            out.put_u64(begin.final_lsn.0);
            out.put_i64(begin.timestamp);
            out.put_u32(begin.xid);
        }
        PgOutput::Commit(commit) => {
            out.put_u8(b'C');
            out.put_u8(commit.flags);
            out.put_u64(commit.commit_lsn.0);
            out.put_u64(commit.end_lsn.0);
            out.put_i64(commit.timestamp);
        }
        PgOutput::Origin(origin) => {
            out.put_u8(b'O');
            out.put_u64(origin.commit_lsn.0);
            string(&mut out, &origin.name);
        }
        PgOutput::Relation(relation) => {
            out.put_u8(b'R');
            out.put_u32(relation.oid);
            string(&mut out, &relation.namespace);
            string(&mut out, &relation.name);
            out.put_u8(relation.replica_identity.byte());
            out.put_i16(count16(relation.columns.len()));
            for column in &relation.columns {
                out.put_u8(column.flags);
                string(&mut out, &column.name);
                out.put_u32(column.type_oid);
                out.put_i32(column.type_modifier);
            }
        }
        PgOutput::Type(kind) => {
            out.put_u8(b'Y');
            out.put_u32(kind.oid);
            string(&mut out, &kind.namespace);
            string(&mut out, &kind.name);
        }
        PgOutput::Insert(insert) => {
            out.put_u8(b'I');
            out.put_u32(insert.relation);
            out.put_u8(b'N');
            tuple(&mut out, &insert.new);
        }
        PgOutput::Update(update) => {
            out.put_u8(b'U');
            out.put_u32(update.relation);
            if let Some(old) = &update.old {
                old_row(&mut out, old);
            }
            out.put_u8(b'N');
            tuple(&mut out, &update.new);
        }
        PgOutput::Delete(delete) => {
            out.put_u8(b'D');
            out.put_u32(delete.relation);
            old_row(&mut out, &delete.old);
        }
        PgOutput::Truncate(truncate) => {
            out.put_u8(b'T');
            out.put_i32(count32(truncate.relations.len()));
            out.put_u8(u8::from(truncate.cascade) | u8::from(truncate.restart_identity) << 1);
            for oid in &truncate.relations {
                out.put_u32(*oid);
            }
        }
        PgOutput::Message(message) => {
            out.put_u8(b'M');
            out.put_u8(u8::from(message.transactional));
            out.put_u64(message.lsn.0);
            string(&mut out, &message.prefix);
            out.put_i32(count32(message.content.len()));
            out.put_slice(&message.content);
        }
    }
    out.freeze()
}

fn string(out: &mut BytesMut, text: &str) {
    out.put_slice(text.as_bytes());
    out.put_u8(0);
}

fn count16(count: usize) -> i16 {
    i16::try_from(count).unwrap_or(i16::MAX)
}

fn count32(count: usize) -> i32 {
    i32::try_from(count).unwrap_or(i32::MAX)
}

fn old_row(out: &mut BytesMut, old: &OldRow) {
    match old {
        OldRow::Key(key) => {
            out.put_u8(b'K');
            tuple(out, key);
        }
        OldRow::Full(row) => {
            out.put_u8(b'O');
            tuple(out, row);
        }
    }
}

fn tuple(out: &mut BytesMut, tuple: &Tuple) {
    out.put_i16(count16(tuple.0.len()));
    for column in &tuple.0 {
        match column {
            Column::Null => out.put_u8(b'n'),
            Column::UnchangedToast => out.put_u8(b'u'),
            Column::Text(value) => {
                out.put_u8(b't');
                out.put_i32(count32(value.len()));
                out.put_slice(value);
            }
            Column::Binary(value) => {
                out.put_u8(b'b');
                out.put_i32(count32(value.len()));
                out.put_slice(value);
            }
        }
    }
}
