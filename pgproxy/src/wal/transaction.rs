//! pgoutput messages grouped as the stream's reader needs them: whole transactions (Begin to
//! Commit) with the shape of every table they touch, even when the server described that table
//! in an earlier transaction. Pure: no I/O.

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

/// What the stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Captured {
    /// A committed transaction.
    Transaction(Transaction),
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
}

impl Assembler {
    /// An assembler that knows no relation yet (as a new stream).
    #[must_use]
    pub fn new() -> Assembler {
        Assembler::default()
    }

    /// Whether no transaction is open (everything the stream sent so far was yielded).
    #[must_use]
    pub fn is_between_transactions(&self) -> bool {
        self.open.is_none()
    }

    /// Takes the stream's next message; returns a transaction once its Commit arrives, or a
    /// non-transactional message at once.
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
                Ok(Some(Captured::Transaction(transaction)))
            }
            PgOutput::Origin(origin) => {
                self.open_transaction("an Origin")?.origin = Some(origin);
                Ok(None)
            }
            PgOutput::Relation(relation) => {
                let relation = Arc::new(relation);
                if let Some(open) = self.open.as_mut() {
                    let reshaped = open
                        .relations
                        .get(&relation.oid)
                        .is_some_and(|used| **used != *relation);
                    if reshaped {
                        open.changes.push(Change::Relation(Arc::clone(&relation)));
                    }
                }
                self.relations.insert(relation.oid, relation);
                Ok(None)
            }
            PgOutput::Type(kind) => {
                self.types.insert(kind.oid, Arc::new(kind));
                Ok(None)
            }
            PgOutput::Insert(insert) => {
                self.change(&[insert.relation], Change::Insert(insert))?;
                Ok(None)
            }
            PgOutput::Update(update) => {
                self.change(&[update.relation], Change::Update(update))?;
                Ok(None)
            }
            PgOutput::Delete(delete) => {
                self.change(&[delete.relation], Change::Delete(delete))?;
                Ok(None)
            }
            PgOutput::Truncate(truncate) => {
                let relations = truncate.relations.clone();
                self.change(&relations, Change::Truncate(truncate))?;
                Ok(None)
            }
            PgOutput::Message(message) if message.transactional => {
                self.open_transaction("a transactional Message")?
                    .changes
                    .push(Change::Message(message));
                Ok(None)
            }
            PgOutput::Message(message) => Ok(Some(Captured::Message(message))),
        }
    }

    fn open_transaction(&mut self, what: &str) -> Result<&mut Transaction, String> {
        self.open
            .as_mut()
            .ok_or_else(|| format!("{what} outside any transaction"))
    }

    /// Adds a change to the open transaction, with the shapes of the relations it names.
    fn change(&mut self, oids: &[u32], change: Change) -> Result<(), String> {
        let Some(transaction) = self.open.as_mut() else {
            return Err("a change outside any transaction".to_owned());
        };
        for oid in oids {
            let relation = self.relations.get(oid).ok_or_else(|| {
                format!("a change to relation {oid}, which the stream never described")
            })?;
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::lsn::Lsn;
    use super::super::pgoutput::{Column, OldRow, RelationColumn, ReplicaIdentity, Tuple, Update};
    use super::*;

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
}
