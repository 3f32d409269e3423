//! The messages of PostgreSQL's `pgoutput` plugin (logical replication protocol version 1),
//! decoded into typed values. Pure: no I/O. Column values stay the server's bytes (`Bytes`
//! slices of the message, never re-encoded); names are UTF-8 (the stream asks for
//! `client_encoding` UTF8) and a name that is not is an error, never a lossy copy. Malformed
//! input is a [`DecodeError`], never a panic.

use bytes::{Buf, Bytes};

use super::error::DecodeError;
use super::lsn::Lsn;

#[cfg(test)]
pub(crate) mod encode;
#[cfg(test)]
mod tests;

/// One pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutput {
    /// `B`: a transaction begins.
    Begin(Begin),
    /// `C`: the transaction commits.
    Commit(Commit),
    /// `O`: the transaction came from another server (replication origin).
    Origin(Origin),
    /// `R`: the shape of a table, sent before its first change in the stream and after it
    /// changed.
    Relation(Relation),
    /// `Y`: the name of a type that is not built in, sent before a relation using it.
    Type(Type),
    /// `I`: a row inserted.
    Insert(Insert),
    /// `U`: a row updated.
    Update(Update),
    /// `D`: a row deleted.
    Delete(Delete),
    /// `T`: tables truncated.
    Truncate(Truncate),
    /// `M`: a message written with `pg_logical_emit_message()`.
    Message(Message),
}

/// `B`: a transaction begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// Where its commit record starts (the [`Commit::commit_lsn`]).
    pub final_lsn: Lsn,
    /// When it committed: microseconds since 2000-01-01 00:00 UTC.
    pub timestamp: i64,
    /// Its transaction id.
    pub xid: u32,
}

/// `C`: the transaction commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Flags (none are defined; kept as sent).
    pub flags: u8,
    /// Where its commit record starts.
    pub commit_lsn: Lsn,
    /// Where its commit record ends: the position to confirm once it is applied.
    pub end_lsn: Lsn,
    /// When it committed: microseconds since 2000-01-01 00:00 UTC.
    pub timestamp: i64,
}

/// `O`: the replication origin of the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The commit's position on the origin server.
    pub commit_lsn: Lsn,
    /// The origin's name.
    pub name: String,
}

/// How a table identifies the old row of an update or delete (`REPLICA IDENTITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `d`: by the primary key.
    Default,
    /// `n`: not at all.
    Nothing,
    /// `f`: by the whole old row.
    Full,
    /// `i`: by the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// Its byte on the wire.
    #[must_use]
    pub fn byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }

    fn from_byte(byte: u8) -> Result<ReplicaIdentity, DecodeError> {
        Ok(match byte {
            b'd' => ReplicaIdentity::Default,
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            value => {
                return Err(DecodeError::Unexpected {
                    field: "replica identity",
                    value,
                })
            }
        })
    }
}

/// `R`: a table's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Its OID, which the changes name it by.
    pub oid: u32,
    /// Its schema (empty for `pg_catalog`).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// How it identifies old rows.
    pub replica_identity: ReplicaIdentity,
    /// Its columns, in the order of every tuple of its changes.
    pub columns: Vec<RelationColumn>,
}

/// A column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Flags: `1` when the column is part of the replica identity (the key).
    pub flags: u8,
    /// Its name.
    pub name: String,
    /// Its type's OID.
    pub type_oid: u32,
    /// Its type modifier (`atttypmod`, e.g. a `varchar`'s length), `-1` for none.
    pub type_modifier: i32,
}

impl RelationColumn {
    /// Whether the column is part of the replica identity (the key old rows are found by).
    #[must_use]
    pub fn is_key(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// `Y`: a type that is not built in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Type {
    /// Its OID.
    pub oid: u32,
    /// Its schema (empty for `pg_catalog`).
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// One column's value in a [`Tuple`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column {
    /// `n`: SQL NULL.
    Null,
    /// `u`: a TOASTed value the update did not change, so it is not sent (the old value
    /// stands).
    UnchangedToast,
    /// `t`: the value in text form (in UTF-8 on a stream opened by tandem).
    Text(Bytes),
    /// `b`: the value in binary form.
    Binary(Bytes),
}

/// A row: one [`Column`] per column of its relation, in the relation's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple(pub Vec<Column>);

impl Tuple {
    /// The bytes of its values.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.0
            .iter()
            .map(|column| match column {
                Column::Text(value) | Column::Binary(value) => value.len(),
                Column::Null | Column::UnchangedToast => 0,
            })
            .sum()
    }
}

impl OldRow {
    /// The row, whichever part of it was sent.
    #[must_use]
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldRow::Key(tuple) | OldRow::Full(tuple) => tuple,
        }
    }
}

/// The old row of an update or delete, as the table's replica identity gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldRow {
    /// `K`: only the key columns have values (the others are `Null`).
    Key(Tuple),
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full(Tuple),
}

/// `I`: a row inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// The relation's OID.
    pub relation: u32,
    /// The new row.
    pub new: Tuple,
}

/// `U`: a row updated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The relation's OID.
    pub relation: u32,
    /// The old row: its key when the key changed, the whole row under `REPLICA IDENTITY
    /// FULL`, otherwise none (the key is the new row's).
    pub old: Option<OldRow>,
    /// The new row.
    pub new: Tuple,
}

/// `D`: a row deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// The relation's OID.
    pub relation: u32,
    /// The old row (its key, or the whole row under `REPLICA IDENTITY FULL`).
    pub old: OldRow,
}

/// `T`: tables truncated together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// `TRUNCATE … CASCADE`.
    pub cascade: bool,
    /// `TRUNCATE … RESTART IDENTITY`.
    pub restart_identity: bool,
    /// The relations' OIDs.
    pub relations: Vec<u32>,
}

/// `M`: a message written with `pg_logical_emit_message()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Written inside a transaction (delivered with it, at its commit) rather than at once.
    pub transactional: bool,
    /// Its position in the write-ahead log.
    pub lsn: Lsn,
    /// Its prefix (what it is for).
    pub prefix: String,
    /// Its content.
    pub content: Bytes,
}

/// `Truncate` option bits.
const TRUNCATE_CASCADE: u8 = 1;
const TRUNCATE_RESTART_IDENTITY: u8 = 2;
/// `Message` flag bit.
const MESSAGE_TRANSACTIONAL: u8 = 1;

impl PgOutput {
    /// Decodes one pgoutput message (the payload of an XLogData frame). The values share
    /// `body`'s buffer.
    ///
    /// # Errors
    /// A [`DecodeError`] for anything that is not exactly one well-formed version-1 message.
    pub fn decode(body: Bytes) -> Result<PgOutput, DecodeError> {
        let mut reader = Reader(body);
        let message = match reader.u8("message type").map_err(|_| DecodeError::Empty)? {
            b'B' => PgOutput::Begin(Begin {
                final_lsn: reader.lsn("final LSN")?,
                timestamp: reader.i64("commit timestamp")?,
                xid: reader.u32("transaction id")?,
            }),
            b'C' => PgOutput::Commit(Commit {
                flags: reader.u8("commit flags")?,
                commit_lsn: reader.lsn("commit LSN")?,
                end_lsn: reader.lsn("end LSN")?,
                timestamp: reader.i64("commit timestamp")?,
            }),
            b'O' => PgOutput::Origin(Origin {
                commit_lsn: reader.lsn("origin commit LSN")?,
                name: reader.string("origin name")?,
            }),
            b'R' => PgOutput::Relation(reader.relation()?),
            b'Y' => PgOutput::Type(Type {
                oid: reader.u32("type OID")?,
                namespace: reader.string("type namespace")?,
                name: reader.string("type name")?,
            }),
            b'I' => {
                let relation = reader.u32("relation OID")?;
                reader.expect(b'N', "new tuple marker")?;
                PgOutput::Insert(Insert {
                    relation,
                    new: reader.tuple()?,
                })
            }
            b'U' => {
                let relation = reader.u32("relation OID")?;
                let (old, marker) = match reader.u8("tuple marker")? {
                    b'K' => (
                        Some(OldRow::Key(reader.tuple()?)),
                        reader.u8("tuple marker")?,
                    ),
                    b'O' => (
                        Some(OldRow::Full(reader.tuple()?)),
                        reader.u8("tuple marker")?,
                    ),
                    marker => (None, marker),
                };
                if marker != b'N' {
                    return Err(DecodeError::Unexpected {
                        field: "tuple marker",
                        value: marker,
                    });
                }
                PgOutput::Update(Update {
                    relation,
                    old,
                    new: reader.tuple()?,
                })
            }
            b'D' => {
                let relation = reader.u32("relation OID")?;
                let old = match reader.u8("tuple marker")? {
                    b'K' => OldRow::Key(reader.tuple()?),
                    b'O' => OldRow::Full(reader.tuple()?),
                    value => {
                        return Err(DecodeError::Unexpected {
                            field: "tuple marker",
                            value,
                        })
                    }
                };
                PgOutput::Delete(Delete { relation, old })
            }
            b'T' => {
                let count = reader.count32("relation count")?;
                let options = reader.u8("truncate options")?;
                if options & !(TRUNCATE_CASCADE | TRUNCATE_RESTART_IDENTITY) != 0 {
                    return Err(DecodeError::Unexpected {
                        field: "truncate options",
                        value: options,
                    });
                }
                // Each OID takes 4 bytes: never reserve more than the message can hold.
                let mut relations = Vec::with_capacity(count.min(reader.0.len() / 4));
                for _ in 0..count {
                    relations.push(reader.u32("truncated relation OID")?);
                }
                PgOutput::Truncate(Truncate {
                    cascade: options & TRUNCATE_CASCADE != 0,
                    restart_identity: options & TRUNCATE_RESTART_IDENTITY != 0,
                    relations,
                })
            }
            b'M' => {
                let flags = reader.u8("message flags")?;
                if flags & !MESSAGE_TRANSACTIONAL != 0 {
                    return Err(DecodeError::Unexpected {
                        field: "message flags",
                        value: flags,
                    });
                }
                let lsn = reader.lsn("message LSN")?;
                let prefix = reader.string("message prefix")?;
                let length = reader.count32("message length")?;
                PgOutput::Message(Message {
                    transactional: flags & MESSAGE_TRANSACTIONAL != 0,
                    lsn,
                    prefix,
                    content: reader.bytes(length, "message content")?,
                })
            }
            other => return Err(DecodeError::UnknownMessage(other)),
        };
        match reader.0.len() {
            0 => Ok(message),
            left => Err(DecodeError::Trailing(left)),
        }
    }
}

/// A cursor over a message's body.
struct Reader(Bytes);

impl Reader {
    fn need(&self, size: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.0.len() < size {
            return Err(DecodeError::Truncated(field));
        }
        Ok(())
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.0.get_u8())
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        self.need(2, field)?;
        Ok(self.0.get_i16())
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        self.need(4, field)?;
        Ok(self.0.get_i32())
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(4, field)?;
        Ok(self.0.get_u32())
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.need(8, field)?;
        Ok(self.0.get_i64())
    }

    fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        self.need(8, field)?;
        Ok(Lsn(self.0.get_u64()))
    }

    /// An Int32 count or length, which must not be negative.
    fn count32(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let value = self.i32(field)?;
        usize::try_from(value).map_err(|_| DecodeError::Negative {
            field,
            value: i64::from(value),
        })
    }

    fn expect(&mut self, wanted: u8, field: &'static str) -> Result<(), DecodeError> {
        match self.u8(field)? {
            value if value == wanted => Ok(()),
            value => Err(DecodeError::Unexpected { field, value }),
        }
    }

    fn bytes(&mut self, length: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        self.need(length, field)?;
        Ok(self.0.split_to(length))
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let end = self
            .0
            .iter()
            .position(|byte| *byte == 0)
            .ok_or(DecodeError::Unterminated(field))?;
        let text = self.0.split_to(end);
        self.0.advance(1);
        String::from_utf8(text.to_vec()).map_err(|_| DecodeError::NotUtf8(field))
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let oid = self.u32("relation OID")?;
        let namespace = self.string("relation namespace")?;
        let name = self.string("relation name")?;
        let replica_identity = ReplicaIdentity::from_byte(self.u8("replica identity")?)?;
        let count = self.i16("column count")?;
        let count = usize::try_from(count).map_err(|_| DecodeError::Negative {
            field: "column count",
            value: i64::from(count),
        })?;
        let mut columns = Vec::with_capacity(count.min(self.0.len() / 10));
        for _ in 0..count {
            columns.push(RelationColumn {
                flags: self.u8("column flags")?,
                name: self.string("column name")?,
                type_oid: self.u32("column type OID")?,
                type_modifier: self.i32("column type modifier")?,
            });
        }
        Ok(Relation {
            oid,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let count = self.i16("tuple column count")?;
        let count = usize::try_from(count).map_err(|_| DecodeError::Negative {
            field: "tuple column count",
            value: i64::from(count),
        })?;
        let mut columns = Vec::with_capacity(count.min(self.0.len()));
        for _ in 0..count {
            columns.push(match self.u8("column kind")? {
                b'n' => Column::Null,
                b'u' => Column::UnchangedToast,
                b't' => {
                    let length = self.count32("column length")?;
                    Column::Text(self.bytes(length, "column value")?)
                }
                b'b' => {
                    let length = self.count32("column length")?;
                    Column::Binary(self.bytes(length, "column value")?)
                }
                value => {
                    return Err(DecodeError::Unexpected {
                        field: "column kind",
                        value,
                    })
                }
            });
        }
        Ok(Tuple(columns))
    }
}
