//! Each message kind against bytes written by hand from the protocol's description, a
//! round trip through the test encoder for arbitrary messages, and arbitrary or cut bytes,
//! which must give errors and never panic.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use super::encode::encode;
use super::*;

/// Builds a message body field by field.
struct Wire(BytesMut);

impl Wire {
    fn new(tag: u8) -> Wire {
        let mut out = BytesMut::new();
        out.put_u8(tag);
        Wire(out)
    }
    fn u8(mut self, value: u8) -> Wire {
        self.0.put_u8(value);
        self
    }
    fn i16(mut self, value: i16) -> Wire {
        self.0.put_i16(value);
        self
    }
    fn i32(mut self, value: i32) -> Wire {
        self.0.put_i32(value);
        self
    }
    fn i64(mut self, value: i64) -> Wire {
        self.0.put_i64(value);
        self
    }
    fn raw(mut self, bytes: &[u8]) -> Wire {
        self.0.put_slice(bytes);
        self
    }
    fn text(self, text: &str) -> Wire {
        self.raw(text.as_bytes()).u8(0)
    }
    fn done(self) -> Bytes {
        self.0.freeze()
    }
}

fn text(value: &str) -> Column {
    Column::Text(Bytes::copy_from_slice(value.as_bytes()))
}

fn decode(body: Bytes) -> PgOutput {
    PgOutput::decode(body).unwrap()
}

#[test]
fn begin_and_commit_carry_positions_times_and_the_xid() {
    let begin = Wire::new(b'B').i64(0x16_B374_D848).i64(-5).i32(-2).done();
    assert_eq!(
        decode(begin),
        PgOutput::Begin(Begin {
            final_lsn: Lsn(0x16_B374_D848),
            timestamp: -5,
            xid: u32::MAX - 1,
        })
    );
    let commit = Wire::new(b'C').u8(0).i64(100).i64(148).i64(7).done();
    assert_eq!(
        decode(commit),
        PgOutput::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(100),
            end_lsn: Lsn(148),
            timestamp: 7,
        })
    );
}

#[test]
fn origin_and_type_carry_their_names() {
    assert_eq!(
        decode(Wire::new(b'O').i64(9).text("pg_16390").done()),
        PgOutput::Origin(Origin {
            commit_lsn: Lsn(9),
            name: "pg_16390".into()
        })
    );
    assert_eq!(
        decode(
            Wire::new(b'Y')
                .i32(16_500)
                .text("public")
                .text("mood")
                .done()
        ),
        PgOutput::Type(Type {
            oid: 16_500,
            namespace: "public".into(),
            name: "mood".into()
        })
    );
}

#[test]
fn relations_carry_columns_keys_and_replica_identity() {
    let body = Wire::new(b'R')
        .i32(16_384)
        .text("public")
        .text("accounts")
        .u8(b'f')
        .i16(2)
        .u8(1)
        .text("id")
        .i32(23)
        .i32(-1)
        .u8(0)
        .text("nöte")
        .i32(1043)
        .i32(54)
        .done();
    let PgOutput::Relation(relation) = decode(body) else {
        panic!("not a relation");
    };
    assert_eq!(
        (
            relation.oid,
            relation.namespace.as_str(),
            relation.name.as_str()
        ),
        (16_384, "public", "accounts")
    );
    assert_eq!(relation.replica_identity, ReplicaIdentity::Full);
    assert!(relation.columns[0].is_key() && !relation.columns[1].is_key());
    assert_eq!(relation.columns[1].name, "nöte");
    assert_eq!(
        (
            relation.columns[1].type_oid,
            relation.columns[1].type_modifier
        ),
        (1043, 54)
    );
    for (byte, identity) in [
        (b'd', ReplicaIdentity::Default),
        (b'n', ReplicaIdentity::Nothing),
        (b'i', ReplicaIdentity::Index),
    ] {
        let body = Wire::new(b'R')
            .i32(1)
            .text("")
            .text("t")
            .u8(byte)
            .i16(0)
            .done();
        let PgOutput::Relation(relation) = decode(body) else {
            panic!("not a relation");
        };
        assert_eq!(relation.replica_identity, identity);
        assert_eq!(identity.byte(), byte);
    }
}

#[test]
fn inserts_carry_every_kind_of_column_value() {
    let body = Wire::new(b'I')
        .i32(16_384)
        .u8(b'N')
        .i16(4)
        .u8(b't')
        .i32(2)
        .raw(b"42")
        .u8(b'n')
        .u8(b'u')
        .u8(b'b')
        .i32(3)
        .raw(&[0xff, 0, 0xfe])
        .done();
    assert_eq!(
        decode(body),
        PgOutput::Insert(Insert {
            relation: 16_384,
            new: Tuple(vec![
                text("42"),
                Column::Null,
                Column::UnchangedToast,
                Column::Binary(Bytes::from_static(&[0xff, 0, 0xfe])),
            ]),
        })
    );
    // A text value is kept as the server's bytes, even when they are not UTF-8.
    let body = Wire::new(b'I')
        .i32(1)
        .u8(b'N')
        .i16(1)
        .u8(b't')
        .i32(1)
        .raw(&[0xe9])
        .done();
    assert_eq!(
        decode(body),
        PgOutput::Insert(Insert {
            relation: 1,
            new: Tuple(vec![Column::Text(Bytes::from_static(&[0xe9]))]),
        })
    );
}

#[test]
fn updates_have_no_old_row_a_key_or_the_whole_old_row() {
    let new = |w: Wire| w.u8(b'N').i16(1).u8(b't').i32(1).raw(b"2");
    assert_eq!(
        decode(new(Wire::new(b'U').i32(5)).done()),
        PgOutput::Update(Update {
            relation: 5,
            old: None,
            new: Tuple(vec![text("2")])
        })
    );
    let key = Wire::new(b'U')
        .i32(5)
        .u8(b'K')
        .i16(1)
        .u8(b't')
        .i32(1)
        .raw(b"1");
    assert_eq!(
        decode(new(key).done()),
        PgOutput::Update(Update {
            relation: 5,
            old: Some(OldRow::Key(Tuple(vec![text("1")]))),
            new: Tuple(vec![text("2")])
        })
    );
    let full = Wire::new(b'U').i32(5).u8(b'O').i16(1).u8(b'n');
    assert_eq!(
        decode(new(full).done()),
        PgOutput::Update(Update {
            relation: 5,
            old: Some(OldRow::Full(Tuple(vec![Column::Null]))),
            new: Tuple(vec![text("2")])
        })
    );
    // An old row must be followed by the new one.
    let twice = Wire::new(b'U')
        .i32(5)
        .u8(b'K')
        .i16(0)
        .u8(b'K')
        .i16(0)
        .done();
    assert_eq!(
        PgOutput::decode(twice),
        Err(DecodeError::Unexpected {
            field: "tuple marker",
            value: b'K'
        })
    );
}

#[test]
fn deletes_carry_a_key_or_the_whole_old_row() {
    assert_eq!(
        decode(
            Wire::new(b'D')
                .i32(5)
                .u8(b'K')
                .i16(1)
                .u8(b't')
                .i32(1)
                .raw(b"1")
                .done()
        ),
        PgOutput::Delete(Delete {
            relation: 5,
            old: OldRow::Key(Tuple(vec![text("1")]))
        })
    );
    assert_eq!(
        decode(Wire::new(b'D').i32(5).u8(b'O').i16(0).done()),
        PgOutput::Delete(Delete {
            relation: 5,
            old: OldRow::Full(Tuple(vec![]))
        })
    );
    assert_eq!(
        PgOutput::decode(Wire::new(b'D').i32(5).u8(b'N').i16(0).done()),
        Err(DecodeError::Unexpected {
            field: "tuple marker",
            value: b'N'
        })
    );
}

#[test]
fn truncates_carry_their_options_and_relations() {
    assert_eq!(
        decode(Wire::new(b'T').i32(2).u8(3).i32(7).i32(8).done()),
        PgOutput::Truncate(Truncate {
            cascade: true,
            restart_identity: true,
            relations: vec![7, 8]
        })
    );
    assert_eq!(
        decode(Wire::new(b'T').i32(1).u8(0).i32(7).done()),
        PgOutput::Truncate(Truncate {
            cascade: false,
            restart_identity: false,
            relations: vec![7]
        })
    );
    assert_eq!(
        PgOutput::decode(Wire::new(b'T').i32(0).u8(4).done()),
        Err(DecodeError::Unexpected {
            field: "truncate options",
            value: 4
        })
    );
    // A huge count with nothing behind it is an error, not an allocation.
    assert_eq!(
        PgOutput::decode(Wire::new(b'T').i32(i32::MAX).u8(0).done()),
        Err(DecodeError::Truncated("truncated relation OID"))
    );
}

#[test]
fn logical_messages_carry_prefix_and_content() {
    let body = Wire::new(b'M')
        .u8(1)
        .i64(77)
        .text("tandem")
        .i32(3)
        .raw(&[0, 1, 2])
        .done();
    assert_eq!(
        decode(body),
        PgOutput::Message(Message {
            transactional: true,
            lsn: Lsn(77),
            prefix: "tandem".into(),
            content: Bytes::from_static(&[0, 1, 2])
        })
    );
}

#[test]
fn malformed_messages_are_typed_errors() {
    let cases: Vec<(Bytes, DecodeError)> = vec![
        (Bytes::new(), DecodeError::Empty),
        (Wire::new(b'Z').done(), DecodeError::UnknownMessage(b'Z')),
        (
            Wire::new(b'B').i64(1).done(),
            DecodeError::Truncated("commit timestamp"),
        ),
        (
            Wire::new(b'C').u8(0).i64(1).i64(2).i64(3).u8(9).done(),
            DecodeError::Trailing(1),
        ),
        (
            Wire::new(b'O').i64(1).raw(b"name").done(),
            DecodeError::Unterminated("origin name"),
        ),
        (
            Wire::new(b'Y').i32(1).raw(&[0xff, 0]).text("t").done(),
            DecodeError::NotUtf8("type namespace"),
        ),
        (
            Wire::new(b'R')
                .i32(1)
                .text("")
                .text("t")
                .u8(b'x')
                .i16(0)
                .done(),
            DecodeError::Unexpected {
                field: "replica identity",
                value: b'x',
            },
        ),
        (
            Wire::new(b'R')
                .i32(1)
                .text("")
                .text("t")
                .u8(b'd')
                .i16(-1)
                .done(),
            DecodeError::Negative {
                field: "column count",
                value: -1,
            },
        ),
        (
            Wire::new(b'I')
                .i32(1)
                .u8(b'N')
                .i16(1)
                .u8(b't')
                .i32(-1)
                .done(),
            DecodeError::Negative {
                field: "column length",
                value: -1,
            },
        ),
        (
            Wire::new(b'I')
                .i32(1)
                .u8(b'N')
                .i16(1)
                .u8(b't')
                .i32(5)
                .raw(b"ab")
                .done(),
            DecodeError::Truncated("column value"),
        ),
        (
            Wire::new(b'I').i32(1).u8(b'N').i16(1).u8(b'x').done(),
            DecodeError::Unexpected {
                field: "column kind",
                value: b'x',
            },
        ),
        (
            Wire::new(b'I').i32(1).u8(b'K').i16(0).done(),
            DecodeError::Unexpected {
                field: "new tuple marker",
                value: b'K',
            },
        ),
        (
            Wire::new(b'M').u8(2).i64(1).text("p").i32(0).done(),
            DecodeError::Unexpected {
                field: "message flags",
                value: 2,
            },
        ),
        (
            Wire::new(b'M').u8(0).i64(1).text("p").i32(-3).done(),
            DecodeError::Negative {
                field: "message length",
                value: -3,
            },
        ),
    ];
    for (body, error) in cases {
        assert_eq!(PgOutput::decode(body.clone()), Err(error), "{body:?}");
    }
}

fn name() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,12}"
}

fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

fn bytes() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from)
}

fn column() -> impl Strategy<Value = Column> {
    prop_oneof![
        Just(Column::Null),
        Just(Column::UnchangedToast),
        bytes().prop_map(Column::Text),
        bytes().prop_map(Column::Binary),
    ]
}

fn tuple() -> impl Strategy<Value = Tuple> {
    prop::collection::vec(column(), 0..6).prop_map(Tuple)
}

fn old_row() -> impl Strategy<Value = OldRow> {
    prop_oneof![
        tuple().prop_map(OldRow::Key),
        tuple().prop_map(OldRow::Full)
    ]
}

fn relation() -> impl Strategy<Value = Relation> {
    let column = (any::<u8>(), name(), any::<u32>(), any::<i32>()).prop_map(
        |(flags, name, type_oid, type_modifier)| RelationColumn {
            flags,
            name,
            type_oid,
            type_modifier,
        },
    );
    let identity = prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ];
    (
        any::<u32>(),
        name(),
        name(),
        identity,
        prop::collection::vec(column, 0..6),
    )
        .prop_map(
            |(oid, namespace, name, replica_identity, columns)| Relation {
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            },
        )
}

fn message() -> impl Strategy<Value = PgOutput> {
    prop_oneof![
        (lsn(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, timestamp, xid)| {
            PgOutput::Begin(Begin {
                final_lsn,
                timestamp,
                xid,
            })
        }),
        (any::<u8>(), lsn(), lsn(), any::<i64>()).prop_map(
            |(flags, commit_lsn, end_lsn, timestamp)| PgOutput::Commit(Commit {
                flags,
                commit_lsn,
                end_lsn,
                timestamp,
            })
        ),
        (lsn(), name())
            .prop_map(|(commit_lsn, name)| PgOutput::Origin(Origin { commit_lsn, name })),
        relation().prop_map(PgOutput::Relation),
        (any::<u32>(), name(), name()).prop_map(|(oid, namespace, name)| PgOutput::Type(Type {
            oid,
            namespace,
            name
        })),
        (any::<u32>(), tuple())
            .prop_map(|(relation, new)| PgOutput::Insert(Insert { relation, new })),
        (any::<u32>(), prop::option::of(old_row()), tuple())
            .prop_map(|(relation, old, new)| PgOutput::Update(Update { relation, old, new })),
        (any::<u32>(), old_row())
            .prop_map(|(relation, old)| PgOutput::Delete(Delete { relation, old })),
        (
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(any::<u32>(), 0..6)
        )
            .prop_map(|(cascade, restart_identity, relations)| PgOutput::Truncate(
                Truncate {
                    cascade,
                    restart_identity,
                    relations
                }
            )),
        (any::<bool>(), lsn(), name(), bytes()).prop_map(
            |(transactional, lsn, prefix, content)| PgOutput::Message(Message {
                transactional,
                lsn,
                prefix,
                content
            })
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn every_message_round_trips(message in message()) {
        prop_assert_eq!(PgOutput::decode(encode(&message)), Ok(message));
    }

    #[test]
    fn a_message_cut_short_or_extended_is_an_error(
        message in message(),
        cut in any::<prop::sample::Index>(),
        extra in prop::collection::vec(any::<u8>(), 1..4),
    ) {
        let wire = encode(&message);
        let short = wire.slice(..cut.index(wire.len()));
        prop_assert!(PgOutput::decode(short).is_err());
        let mut long = BytesMut::from(&wire[..]);
        long.put_slice(&extra);
        prop_assert!(PgOutput::decode(long.freeze()).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        tag in prop::sample::select(b"BCORYIUDTMZ\0".to_vec()),
        rest in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut wire = vec![tag];
        wire.extend_from_slice(&rest);
        let _ = PgOutput::decode(Bytes::from(wire));
    }
}
