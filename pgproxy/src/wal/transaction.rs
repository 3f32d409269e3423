//! pgoutput messages grouped as the stream's reader needs them: whole transactions (Begin to
//! Commit) with the shape of every table they touch, even when the server described that table
//! in an earlier transaction; a transaction with more changes than the reader may hold comes
//! in parts instead, so memory stays bounded whatever one transaction changes. Pure: no I/O.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::pgoutput::{
    Begin, Commit, Delete, Insert, Message, Origin, PgOutput, Relation, Truncate, Type, Update,
};

/// A committed transaction's row changes, in the order it made them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Its Begin (transaction id, commit position and time).
    pub begin: Begin,
    /// Its Commit; [`Commit::end_lsn`] is the position to confirm once it is applied.
    pub commit: Commit,
    /// Where it came from, when it was itself replicated from another server.
    pub origin: Option<Origin>,
    /// The shape of every table its changes name, by OID, as it was when they were made.
    pub relations: BTreeMap<u32, Arc<Relation>>,
    /// The names of the types those tables use that are not built in, by OID.
    pub types: BTreeMap<u32, Arc<Type>>,
    /// Its changes.
    pub changes: Vec<Change>,
}

impl Transaction {
    /// The shape of the table with OID `oid`, when the transaction changed it.
    #[must_use]
    pub fn relation(&self, oid: u32) -> Option<&Relation> {
        self.relations.get(&oid).map(Arc::as_ref)
    }

    /// A transaction (xid 1, committed at 0/A, ending at 0/14) of `changes` to `relation`'s
    /// table alone, for the tests of what is made of transactions.
    #[cfg(test)]
    pub(crate) fn of_one_table(relation: Arc<Relation>, changes: Vec<Change>) -> Transaction {
        use super::lsn::Lsn;
        Transaction {
            begin: Begin {
                final_lsn: Lsn(10),
                timestamp: 0,
                xid: 1,
            },
            commit: Commit {
                flags: 0,
                commit_lsn: Lsn(10),
                end_lsn: Lsn(20),
                timestamp: 0,
            },
            origin: None,
            relations: BTreeMap::from([(relation.oid, relation)]),
            types: BTreeMap::new(),
            changes,
        }
    }
}

/// One change of a [`Transaction`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A row inserted.
    Insert(Insert),
    /// A row updated.
    Update(Update),
    /// A row deleted.
    Delete(Delete),
    /// Tables truncated.
    Truncate(Truncate),
    /// A message written inside the transaction with `pg_logical_emit_message(true, …)`.
    Message(Message),
    /// A table the transaction already changed has a new shape (DDL inside the
    /// transaction): the changes after this one use it; [`Transaction::relations`] has the
    /// shape its first change used.
    Relation(Arc<Relation>),
}

/// The memory a change is counted as holding, in units: one per change, or one per
/// [`UNIT_BYTES`] of its values when more. Parts of a large transaction and the read-ahead
/// are bounded in units, so that wide rows bound them by their size, not by their count.
pub const UNIT_BYTES: usize = 1024;

impl Change {
    /// The units this change is counted as (see [`UNIT_BYTES`]).
    #[must_use]
    pub fn units(&self) -> usize {
        let bytes = match self {
            Change::Insert(insert) => insert.new.bytes(),
            Change::Update(update) => {
                update.new.bytes() + update.old.as_ref().map_or(0, |old| old.tuple().bytes())
            }
            Change::Delete(delete) => delete.old.tuple().bytes(),
            Change::Message(message) => message.content.len(),
            Change::Truncate(_) | Change::Relation(_) => 0,
        };
        bytes.div_ceil(UNIT_BYTES).max(1)
    }
}

impl Transaction {
    /// The units its changes are counted as (see [`UNIT_BYTES`]).
    #[must_use]
    pub fn units(&self) -> usize {
        self.changes.iter().map(Change::units).sum()
    }
}

/// What the stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Captured {
    /// A committed transaction.
    Transaction(Transaction),
    /// The next changes of a transaction larger than the stream may hold whole (see
    /// [`Assembler::holding_at_most`]): more parts follow, then its [`Captured::LastPart`].
    /// Its [`Transaction::commit`] is not known yet (it holds the Begin's position).
    Part(Transaction),
    /// The last changes and the Commit of a transaction whose earlier changes came as
    /// [`Captured::Part`]s, right before it.
    LastPart(Transaction),
    /// A message written outside any transaction with `pg_logical_emit_message(false, …)`
    /// (only when the stream asked for messages).
    Message(Message),
}

/// Groups a stream's pgoutput messages into [`Captured`] items. It remembers every relation
/// and type the server described, since the server describes each only once per stream (and
/// again after it changed).
#[derive(Debug, Default)]
pub struct Assembler {
    relations: HashMap<u32, Arc<Relation>>,
    types: HashMap<u32, Arc<Type>>,
    open: Option<Transaction>,
    /// The most units ([`UNIT_BYTES`]) of one transaction's changes held before they are
    /// yielded as a part (`None`: transactions are yielded whole, however large).
    hold_at_most: Option<usize>,
    /// The units of the open transaction's changes held now.
    held_units: usize,
    /// Whether the open transaction already yielded a part.
    parted: bool,
}

impl Assembler {
    /// An assembler that knows no relation yet (as a new stream).
    #[must_use]
    pub fn new() -> Assembler {
        Assembler::default()
    }

    /// Yields a transaction's changes as [`Captured::Part`]s whenever they reach `units`
    /// (at least one): that many changes, or fewer whose values reach that many
    /// [`UNIT_BYTES`]; instead of holding the whole transaction until its Commit.
    #[must_use]
    pub fn holding_at_most(mut self, units: usize) -> Assembler {
        self.hold_at_most = Some(units.max(1));
        self
    }

    /// Whether no transaction is open (everything the stream sent so far was yielded).
    #[must_use]
    pub fn is_between_transactions(&self) -> bool {
        self.open.is_none()
    }

    /// Takes the stream's next message; returns a transaction once its Commit arrives (or a
    /// part of it once it holds as many changes as it may), or a non-transactional message at
    /// once.
    ///
    /// # Errors
    /// A description of what was out of place: a change outside a transaction, a Begin inside
    /// one, a Commit that is not the Begin's, a change to a relation never described.
    pub fn push(&mut self, message: PgOutput) -> Result<Option<Captured>, String> {
        match message {
            PgOutput::Begin(begin) => {
                if let Some(open) = &self.open {
                    return Err(format!(
                        "a Begin (xid {}) inside the transaction of xid {}",
                        begin.xid, open.begin.xid
                    ));
                }
                self.open = Some(Transaction {
                    begin,
                    commit: Commit {
                        flags: 0,
                        commit_lsn: begin.final_lsn,
                        end_lsn: begin.final_lsn,
                        timestamp: begin.timestamp,
                    },
                    origin: None,
                    relations: BTreeMap::new(),
                    types: BTreeMap::new(),
                    changes: Vec::new(),
                });
                self.parted = false;
                self.held_units = 0;
                Ok(None)
            }
            PgOutput::Commit(commit) => {
                let mut transaction = self
                    .open
                    .take()
                    .ok_or_else(|| "a Commit outside any transaction".to_owned())?;
                if commit.commit_lsn != transaction.begin.final_lsn {
                    return Err(format!(
                        "the Commit at {} ends the transaction whose Begin said {}",
                        commit.commit_lsn, transaction.begin.final_lsn
                    ));
                }
                transaction.commit = commit;
                Ok(Some(if std::mem::take(&mut self.parted) {
                    Captured::LastPart(transaction)
                } else {
                    Captured::Transaction(transaction)
                }))
            }
            PgOutput::Origin(origin) => {
                self.open_transaction("an Origin")?.origin = Some(origin);
                Ok(None)
            }
            PgOutput::Relation(relation) => {
                let relation = Arc::new(relation);
                // The open transaction's changes so far used the shape described last.
                let reshaped = self.open.as_ref().is_some_and(|open| {
                    open.relations.contains_key(&relation.oid)
                        && self
                            .relations
                            .get(&relation.oid)
                            .is_some_and(|last| **last != *relation)
                });
                let part = if reshaped {
                    self.change(&[], Change::Relation(Arc::clone(&relation)))?
                } else {
                    self.part_when_full()
                };
                self.relations.insert(relation.oid, relation);
                Ok(part)
            }
            PgOutput::Type(kind) => {
                self.types.insert(kind.oid, Arc::new(kind));
                Ok(None)
            }
            PgOutput::Insert(insert) => self.change(&[insert.relation], Change::Insert(insert)),
            PgOutput::Update(update) => self.change(&[update.relation], Change::Update(update)),
            PgOutput::Delete(delete) => self.change(&[delete.relation], Change::Delete(delete)),
            PgOutput::Truncate(truncate) => {
                let relations = truncate.relations.clone();
                self.change(&relations, Change::Truncate(truncate))
            }
            PgOutput::Message(message) if message.transactional => {
                self.open_transaction("a transactional Message")?;
                self.change(&[], Change::Message(message))
            }
            PgOutput::Message(message) => Ok(Some(Captured::Message(message))),
        }
    }

    /// The open transaction's changes so far as a part, when they reach the units it may
    /// hold (a single change larger than that is a part of its own).
    fn part_when_full(&mut self) -> Option<Captured> {
        let limit = self.hold_at_most?;
        if self.held_units < limit {
            return None;
        }
        self.take_part()
    }

    /// The open transaction's changes so far as a part, when adding `units` more would take
    /// them past what it may hold: no part holds more, unless one change alone does.
    fn make_room(&mut self, units: usize) -> Option<Captured> {
        let limit = self.hold_at_most?;
        if self.held_units == 0 || self.held_units.saturating_add(units) <= limit {
            return None;
        }
        self.take_part()
    }

    /// The open transaction's changes so far as a part. The part keeps the shapes its first
    /// changes used; the changes after it start from the shapes current at its end.
    fn take_part(&mut self) -> Option<Captured> {
        let open = self.open.as_mut()?;
        self.held_units = 0;
        let part = Transaction {
            begin: open.begin,
            commit: open.commit,
            origin: open.origin.clone(),
            relations: open.relations.clone(),
            types: open.types.clone(),
            changes: std::mem::take(&mut open.changes),
        };
        for change in &part.changes {
            if let Change::Relation(relation) = change {
                open.relations.insert(relation.oid, Arc::clone(relation));
            }
        }
        self.parted = true;
        Some(Captured::Part(part))
    }

    fn open_transaction(&mut self, what: &str) -> Result<&mut Transaction, String> {
        self.open
            .as_mut()
            .ok_or_else(|| format!("{what} outside any transaction"))
    }

    /// Adds a change to the open transaction, with the shapes of the relations it names;
    /// returns the part that had to go first to make room for it, or the part it filled.
    fn change(&mut self, oids: &[u32], change: Change) -> Result<Option<Captured>, String> {
        if self.open.is_none() {
            return Err("a change outside any transaction".to_owned());
        }
        for oid in oids {
            if !self.relations.contains_key(oid) {
                return Err(format!(
                    "a change to relation {oid}, which the stream never described"
                ));
            }
        }
        let units = change.units();
        let room = self.make_room(units);
        let Some(transaction) = self.open.as_mut() else {
            return Err("a change outside any transaction".to_owned());
        };
        for oid in oids {
            let Some(relation) = self.relations.get(oid) else {
                continue;
            };
            transaction
                .relations
                .entry(*oid)
                .or_insert_with(|| Arc::clone(relation));
            for column in &relation.columns {
                if let Some(kind) = self.types.get(&column.type_oid) {
                    transaction.types.insert(kind.oid, Arc::clone(kind));
                }
            }
        }
        transaction.changes.push(change);
        self.held_units += units;
        Ok(room.or_else(|| self.part_when_full()))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::lsn::Lsn;
    use super::super::pgoutput::{Column, OldRow, RelationColumn, ReplicaIdentity, Tuple, Update};
    use super::*;
    use proptest::prelude::*;

    fn begin(xid: u32, at: u64) -> PgOutput {
        PgOutput::Begin(Begin {
            final_lsn: Lsn(at),
            timestamp: 1,
            xid,
        })
    }

    fn commit(at: u64) -> PgOutput {
        PgOutput::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(at),
            end_lsn: Lsn(at + 48),
            timestamp: 1,
        })
    }

    fn relation(oid: u32, name: &str, type_oid: u32) -> Relation {
        Relation {
            oid,
            namespace: "public".into(),
            name: name.into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![RelationColumn {
                flags: 1,
                name: "id".into(),
                type_oid,
                type_modifier: -1,
            }],
        }
    }

    fn insert(oid: u32, value: &'static str) -> PgOutput {
        PgOutput::Insert(Insert {
            relation: oid,
            new: Tuple(vec![Column::Text(Bytes::from_static(value.as_bytes()))]),
        })
    }

    #[test]
    fn transactions_keep_the_relations_described_before_them() {
        let mut assembler = Assembler::new();
        let mood = Type {
            oid: 900,
            namespace: "public".into(),
            name: "mood".into(),
        };
        let first = [
            begin(7, 100),
            PgOutput::Type(mood.clone()),
            PgOutput::Relation(relation(1, "a", 900)),
            insert(1, "1"),
            commit(100),
        ];
        let mut out: Vec<Captured> = first
            .into_iter()
            .filter_map(|message| assembler.push(message).unwrap())
            .collect();
        let Some(Captured::Transaction(transaction)) = out.pop() else {
            panic!("no transaction");
        };
        assert_eq!(transaction.begin.xid, 7);
        assert_eq!(transaction.commit.end_lsn, Lsn(148));
        assert_eq!(transaction.relation(1).unwrap().name, "a");
        assert_eq!(
            transaction.types.get(&900).map(|t| t.name.as_str()),
            Some("mood")
        );
        // The second transaction names relation 1 without its description coming again.
        let second = [
            begin(8, 200),
            PgOutput::Origin(Origin {
                commit_lsn: Lsn(5),
                name: "elsewhere".into(),
            }),
            PgOutput::Relation(relation(2, "b", 23)),
            insert(1, "2"),
            PgOutput::Update(Update {
                relation: 2,
                old: Some(OldRow::Key(Tuple(vec![Column::Null]))),
                new: Tuple(vec![Column::Null]),
            }),
            PgOutput::Truncate(Truncate {
                cascade: false,
                restart_identity: false,
                relations: vec![1, 2],
            }),
            PgOutput::Message(Message {
                transactional: true,
                lsn: Lsn(210),
                prefix: "p".into(),
                content: Bytes::new(),
            }),
            commit(200),
        ];
        let mut out: Vec<Captured> = second
            .into_iter()
            .filter_map(|message| assembler.push(message).unwrap())
            .collect();
        let Some(Captured::Transaction(transaction)) = out.pop() else {
            panic!("no transaction");
        };
        assert_eq!(transaction.changes.len(), 4);
        assert_eq!(
            transaction.relations.keys().copied().collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(transaction.origin.unwrap().name, "elsewhere");
        assert!(transaction.types.contains_key(&900));
    }

    #[test]
    fn a_table_reshaped_inside_a_transaction_is_a_change_in_its_place() {
        let mut assembler = Assembler::new();
        let mut wider = relation(1, "a", 23);
        wider.columns.push(RelationColumn {
            flags: 0,
            name: "note".into(),
            type_oid: 25,
            type_modifier: -1,
        });
        let messages = [
            PgOutput::Relation(relation(1, "a", 23)),
            begin(3, 10),
            insert(1, "1"),
            // Described again unchanged (e.g. after an unrelated invalidation): no change.
            PgOutput::Relation(relation(1, "a", 23)),
            PgOutput::Relation(wider.clone()),
            insert(1, "2"),
            commit(10),
        ];
        let Some(Captured::Transaction(transaction)) = messages
            .into_iter()
            .filter_map(|message| assembler.push(message).unwrap())
            .next()
        else {
            panic!("no transaction");
        };
        assert_eq!(transaction.changes.len(), 3);
        assert!(matches!(&transaction.changes[1], Change::Relation(shape) if **shape == wider));
        assert_eq!(transaction.relation(1).unwrap().columns.len(), 1);
    }

    #[test]
    fn a_message_outside_a_transaction_comes_at_once() {
        let message = Message {
            transactional: false,
            lsn: Lsn(1),
            prefix: "p".into(),
            content: Bytes::from_static(b"x"),
        };
        assert_eq!(
            Assembler::new()
                .push(PgOutput::Message(message.clone()))
                .unwrap(),
            Some(Captured::Message(message))
        );
    }

    #[test]
    fn messages_out_of_place_are_errors() {
        let mut assembler = Assembler::new();
        assert!(assembler.push(insert(1, "1")).is_err());
        assert!(assembler.push(commit(1)).is_err());
        assembler.push(begin(1, 10)).unwrap();
        assert!(assembler.push(begin(2, 20)).is_err());
        assert!(assembler
            .push(insert(1, "1"))
            .unwrap_err()
            .contains("never described"));
        let mut assembler = Assembler::new();
        assembler.push(begin(1, 10)).unwrap();
        assert!(assembler.push(commit(11)).is_err());
        let transactional = Message {
            transactional: true,
            lsn: Lsn(1),
            prefix: String::new(),
            content: Bytes::new(),
        };
        assert!(Assembler::new()
            .push(PgOutput::Message(transactional))
            .is_err());
    }

    /// The shape each data change of a transaction (or of the parts of one, in order) is
    /// made with, as the apply reads it: the transaction's relations, then each reshape in
    /// place.
    fn shapes(items: &[Transaction]) -> Vec<Option<Relation>> {
        let mut shapes = Vec::new();
        for item in items {
            let mut current: HashMap<u32, Relation> = item
                .relations
                .iter()
                .map(|(oid, relation)| (*oid, (**relation).clone()))
                .collect();
            for change in &item.changes {
                match change {
                    Change::Relation(relation) => {
                        current.insert(relation.oid, (**relation).clone());
                    }
                    Change::Insert(insert) => shapes.push(current.get(&insert.relation).cloned()),
                    _ => shapes.push(None),
                }
            }
        }
        shapes
    }

    /// Table 1's shape with `extra` columns more than at first.
    fn table_a(extra: u8) -> Relation {
        let mut shape = relation(1, "a", 23);
        for column in 0..extra {
            shape.columns.push(RelationColumn {
                flags: 0,
                name: format!("extra{column}"),
                type_oid: 25,
                type_modifier: -1,
            });
        }
        shape
    }

    /// A stream of one transaction: inserts into two tables, table 1 described again before
    /// the inserts marked `reshape` > 0, with `reshape - 1` extra columns (1: as at first).
    fn one_transaction(plan: &[(u32, u8)]) -> Vec<PgOutput> {
        let mut messages = vec![
            PgOutput::Relation(relation(1, "a", 23)),
            PgOutput::Relation(relation(2, "b", 23)),
            begin(5, 100),
        ];
        for (table, reshape) in plan {
            if *reshape > 0 {
                messages.push(PgOutput::Relation(table_a(reshape - 1)));
            }
            messages.push(insert(*table, "1"));
        }
        messages.push(commit(100));
        messages
    }

    #[test]
    fn a_large_transaction_comes_in_parts_then_its_last_part() {
        let mut assembler = Assembler::new().holding_at_most(2);
        let out: Vec<Captured> = one_transaction(&[(1, 0), (2, 0), (1, 0), (2, 0), (1, 0)])
            .into_iter()
            .filter_map(|message| assembler.push(message).unwrap())
            .collect();
        assert!(matches!(
            out.as_slice(),
            [Captured::Part(first), Captured::Part(second), Captured::LastPart(last)]
                if first.changes.len() == 2 && second.changes.len() == 2
                    && last.changes.len() == 1 && last.commit.end_lsn == Lsn(148)
        ));
        assert!(assembler.is_between_transactions());
        // The next transaction is whole again.
        let next: Vec<Captured> = [begin(6, 200), insert(1, "2"), commit(200)]
            .into_iter()
            .filter_map(|message| assembler.push(message).unwrap())
            .collect();
        assert!(matches!(next.as_slice(), [Captured::Transaction(_)]));
    }

    /// An insert into relation `oid` of one value `bytes` long.
    fn wide_insert(oid: u32, bytes: usize) -> PgOutput {
        PgOutput::Insert(Insert {
            relation: oid,
            new: Tuple(vec![Column::Text(Bytes::from(vec![b'x'; bytes]))]),
        })
    }

    #[test]
    fn wide_rows_are_counted_by_their_size_and_part_a_transaction_sooner() {
        // Rows of 3 KiB are 3 units each: with 8 units held at most, a part holds 2 rows (a
        // third would take it past 8). A row of 11 KiB is a part of its own.
        let mut assembler = Assembler::new().holding_at_most(8);
        let mut messages = vec![begin(5, 100), PgOutput::Relation(relation(1, "a", 25))];
        messages.extend((0..5).map(|_| wide_insert(1, 3 * UNIT_BYTES)));
        messages.push(wide_insert(1, 11 * UNIT_BYTES));
        messages.push(wide_insert(1, 3 * UNIT_BYTES));
        messages.push(commit(100));
        let out: Vec<Captured> = messages
            .into_iter()
            .filter_map(|message| assembler.push(message).unwrap())
            .collect();
        let sizes: Vec<(usize, usize)> = out
            .iter()
            .map(|captured| match captured {
                Captured::Part(part) | Captured::LastPart(part) | Captured::Transaction(part) => {
                    (part.changes.len(), part.units())
                }
                Captured::Message(_) => (0, 0),
            })
            .collect();
        assert_eq!(sizes, [(2, 6), (2, 6), (1, 3), (1, 11), (1, 3)]);
        assert!(matches!(out.last(), Some(Captured::LastPart(_))));
        // A change counts one unit however small, and its old row too.
        let narrow = Change::Insert(Insert {
            relation: 1,
            new: Tuple(vec![Column::Null]),
        });
        assert_eq!(narrow.units(), 1);
        let wide_update = Change::Update(Update {
            relation: 1,
            old: Some(OldRow::Full(Tuple(vec![Column::Binary(Bytes::from(
                vec![0; UNIT_BYTES],
            ))]))),
            new: Tuple(vec![Column::Text(Bytes::from(vec![b'y'; UNIT_BYTES + 1]))]),
        });
        assert_eq!(wide_update.units(), 3);
    }

    proptest! {
        #[test]
        fn parts_carry_every_change_in_order_with_the_shape_it_was_made_with(
            plan in proptest::collection::vec((1u32..=2, prop_oneof![4 => Just(0u8), 1 => 1u8..4]), 0..40),
            limit in 1usize..8,
        ) {
            let mut plain = Assembler::new();
            let whole: Vec<Transaction> = one_transaction(&plan)
                .into_iter()
                .filter_map(|message| plain.push(message).unwrap())
                .map(|captured| match captured {
                    Captured::Transaction(transaction) => transaction,
                    other => panic!("{other:?}"),
                })
                .collect();
            let mut parted = Assembler::new().holding_at_most(limit);
            let items: Vec<Captured> = one_transaction(&plan)
                .into_iter()
                .filter_map(|message| parted.push(message).unwrap())
                .collect();
            let (last, parts) = items.split_last().expect("the Commit yields");
            let mut pieces = Vec::new();
            for part in parts {
                let Captured::Part(part) = part else { panic!("{part:?}") };
                prop_assert_eq!(part.changes.len(), limit);
                pieces.push(part.clone());
            }
            match last {
                Captured::LastPart(last) if !parts.is_empty() => pieces.push(last.clone()),
                Captured::Transaction(last) if parts.is_empty() => pieces.push(last.clone()),
                other => panic!("{other:?} after {} parts", parts.len()),
            }
            prop_assert!(pieces.last().is_some_and(|last| last.changes.len() < limit));
            // Every data change, in order (a part may leave out a reshape to the shape it
            // already has).
            let data = |changes: &mut dyn Iterator<Item = &Change>| -> Vec<Change> {
                changes.filter(|change| !matches!(change, Change::Relation(_))).cloned().collect()
            };
            prop_assert_eq!(
                data(&mut pieces.iter().flat_map(|piece| piece.changes.iter())),
                data(&mut whole[0].changes.iter())
            );
            // Each insert made with the shape its table was described with last.
            let mut extra = 0;
            let expected: Vec<Option<Relation>> = plan
                .iter()
                .map(|(table, reshape)| {
                    if *reshape > 0 {
                        extra = reshape - 1;
                    }
                    Some(if *table == 1 { table_a(extra) } else { relation(2, "b", 23) })
                })
                .collect();
            prop_assert_eq!(shapes(&whole), expected.clone());
            prop_assert_eq!(shapes(&pieces), expected);
        }
    }
}
