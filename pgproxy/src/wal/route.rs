//! Which apply session a captured transaction goes to when several apply at once
//! (`--apply-sessions`), and whether the other side already has a transaction, from the
//! progress every session recorded. Pure: no I/O.
//!
//! Every row a transaction changes is found by its table and key; the key's values hash
//! (blake3, so the same on every build and machine) to one of the workers. A transaction
//! whose rows all hash to one worker goes to it, when nothing on the other side could see
//! the order of rows of different keys ([`independent`]); any other transaction is
//! *serial*: it waits until every worker finished what it was given, is applied by the
//! main session, and nothing after it is handed out before it committed. Each worker
//! applies what it is given in commit order, so every row's changes reach the other side in
//! the order the source made them.
//!
//! Exactly once then follows from what each session's replication origin recorded
//! ([`Recorded::has`]): a transaction is applied when it ends at or before the main
//! session's progress (every serial transaction waited for everything before it), or at or
//! before the progress of the worker its keys hash to. The second holds whatever the other
//! side's catalog said when it was routed: a serial transaction not yet applied stopped
//! every worker before it, so no worker's progress passed it. Which worker is a function of
//! the stream alone (the keys and the number of workers), and each number of workers keeps
//! its own origins, so a restart with another number still reads the old ones.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::lsn::Lsn;
use super::pgoutput::{OldRow, Relation, ReplicaIdentity, Tuple};
use super::render::display_name;
use super::set::{key, key_columns, SetShape};
use super::transaction::{Change, Transaction};

/// Where a transaction is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// By the worker with this index (`0..workers`).
    Worker(usize),
    /// By the main session, after everything before it and before anything after it.
    Serial,
}

/// The most changes of a transaction a worker is given: a larger one is serial, under any
/// batch size at least this large, whether it is read whole or (past the batch size) in parts,
/// which only the main session applies.
const MOST_ROUTED_CHANGES: usize = 1_000;

/// The worker the keys of every row `transaction` changes hash to, when they all hash to
/// one of `workers`: `None` for a transaction that changes no row, truncates, reshapes a
/// table, writes a message, or changes a row not found by a key (a table without one, or
/// under `REPLICA IDENTITY FULL`), and for keys hashing to different workers. An update that
/// changes the key counts both keys.
#[must_use]
pub fn worker_of(transaction: &Transaction, workers: usize) -> Option<usize> {
    if workers == 0 || transaction.changes.len() > MOST_ROUTED_CHANGES {
        return None;
    }
    let mut worker = None;
    for change in &transaction.changes {
        let (oid, tuples): (u32, [Option<&Tuple>; 2]) = match change {
            Change::Insert(insert) => (insert.relation, [Some(&insert.new), None]),
            Change::Update(update) => match &update.old {
                None => (update.relation, [Some(&update.new), None]),
                Some(OldRow::Key(old)) => (update.relation, [Some(&update.new), Some(old)]),
                Some(OldRow::Full(_)) => return None,
            },
            Change::Delete(delete) => match &delete.old {
                OldRow::Key(old) => (delete.relation, [Some(old), None]),
                OldRow::Full(_) => return None,
            },
            Change::Truncate(_) | Change::Message(_) | Change::Relation(_) => return None,
        };
        let relation = transaction.relation(oid)?;
        for tuple in tuples.into_iter().flatten() {
            let this = hashed(relation, tuple, workers)?;
            if worker.is_some_and(|before| before != this) {
                return None;
            }
            worker = Some(this);
        }
    }
    worker
}

/// The built-in types whose text form no setting changes and which no two values share:
/// `bool`, `"char"`, `name`, `int8`, `int2`, `int4`, `text`, `oid`, `varchar`, `uuid`. A key
/// of any other type (a time zone in a `timestamptz`, `bytea_output`, a `numeric`'s scale,
/// `citext`) could hash otherwise after a restart, or two texts could be one value: its
/// transactions are serial.
const PLAIN_TYPES: [u32; 10] = [16, 18, 19, 20, 21, 23, 25, 26, 1043, 2950];

/// The worker one row's key hashes to.
fn hashed(relation: &Relation, tuple: &Tuple, workers: usize) -> Option<usize> {
    if relation.replica_identity == ReplicaIdentity::Full {
        return None;
    }
    let keys = key_columns(relation);
    if keys.is_empty()
        || keys
            .iter()
            .any(|index| !PLAIN_TYPES.contains(&relation.columns[*index].type_oid))
    {
        return None;
    }
    let values = key(relation, &keys, tuple).ok()?;
    let mut hasher = blake3::Hasher::new();
    for part in [relation.namespace.as_bytes(), relation.name.as_bytes()] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    for value in &values {
        hasher.update(&(value.len() as u64).to_le_bytes());
        hasher.update(value.as_bytes());
    }
    let mut first = [0_u8; 8];
    first.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    let workers = u64::try_from(workers).ok()?;
    usize::try_from(u64::from_le_bytes(first) % workers).ok()
}

/// Whether the other side could see the order in which rows of different keys of `relation`'s
/// table are written, by its catalog's `shape`: it could unless the table is a plain table
/// whose only unique index is the key's (a value one row frees and another takes must be
/// freed first), with no exclusion constraint, and no trigger or rule fires on the apply
/// session (it could read other rows), and its key's columns there are of the captured
/// side's types and compare as their text does (a `citext`, a nondeterministic collation, a
/// `text` key stored as `uuid` there make two texts one row). Foreign keys are not checked
/// by the apply session (`session_replication_role = replica`), so they do not count.
#[must_use]
pub fn independent(relation: &Relation, shape: &SetShape) -> bool {
    let columns = key_columns(relation);
    let same_types = columns.iter().all(|index| {
        let column = &relation.columns[*index];
        shape.exact.get(&column.name) == Some(&column.type_oid)
    });
    let keys: BTreeSet<String> = columns
        .into_iter()
        .map(|index| relation.columns[index].name.clone())
        .collect();
    shape.ordered.is_none()
        && !shape.fires
        && !keys.is_empty()
        && same_types
        && shape.unique == [keys]
}

/// Where `transaction` is applied with `workers` workers, the other side's shape of each
/// table given by `shapes` (by [`display_name`]; a table it does not know is serial).
#[must_use]
pub fn route(
    transaction: &Transaction,
    workers: usize,
    shapes: &dyn Fn(&str) -> Option<Arc<SetShape>>,
) -> Route {
    let Some(worker) = worker_of(transaction, workers) else {
        return Route::Serial;
    };
    let all_independent = transaction.relations.values().all(|relation| {
        shapes(&display_name(relation)).is_some_and(|shape| independent(relation, &shape))
    });
    if all_independent {
        Route::Worker(worker)
    } else {
        Route::Serial
    }
}

/// The key each table's transactions were routed by so far (its schema and name, its key's
/// columns and their types, by relation OID): all of it goes into the hash. A table whose
/// replica identity changed between transactions, or that was renamed, had a row's earlier
/// changes routed otherwise: the first transaction routed the new way is serial.
#[derive(Debug, Default)]
pub struct Keys(HashMap<u32, RoutedBy>);

/// What a table's rows were hashed by: its schema, its name, its key's columns and types.
type RoutedBy = (String, String, Vec<(String, u32)>);

impl Keys {
    /// Whether a table `transaction` changes has another key than before (remembering the
    /// new one).
    pub fn rekeyed(&mut self, transaction: &Transaction) -> bool {
        let mut rekeyed = false;
        for relation in transaction.relations.values() {
            let key: Vec<(String, u32)> = if relation.replica_identity == ReplicaIdentity::Full {
                Vec::new()
            } else {
                relation
                    .columns
                    .iter()
                    .filter(|column| column.is_key())
                    .map(|column| (column.name.clone(), column.type_oid))
                    .collect()
            };
            let routed = (relation.namespace.clone(), relation.name.clone(), key);
            if let Some(before) = self.0.insert(relation.oid, routed.clone()) {
                rekeyed |= before != routed;
            }
        }
        rekeyed
    }
}

/// The progress the apply sessions recorded on the other side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// The main session's: everything ending at or before it is applied.
    pub main: Lsn,
    /// The workers' of each number of workers the capture ran with.
    pub generations: Vec<Generation>,
}

/// The workers' progress of one number of workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// Each worker's progress, by index (`Lsn(0)` for one that never committed).
    pub progress: Vec<Lsn>,
}

impl Recorded {
    /// Whether the other side has `transaction` (ended at `end`).
    #[must_use]
    pub fn has(&self, transaction: &Transaction) -> bool {
        let end = transaction.commit.end_lsn;
        end <= self.main
            || self.generations.iter().any(|generation| {
                worker_of(transaction, generation.progress.len())
                    .and_then(|worker| generation.progress.get(worker))
                    .is_some_and(|progress| end <= *progress)
            })
    }

    /// The furthest any session got: nothing after it was applied.
    #[must_use]
    pub fn furthest(&self) -> Lsn {
        self.generations
            .iter()
            .flat_map(|generation| generation.progress.iter().copied())
            .fold(self.main, Lsn::max)
    }
}

/// The replication origin of worker `index` of `workers` beside the main session's `origin`.
#[must_use]
pub fn worker_origin(origin: &str, workers: usize, index: usize) -> String {
    format!("{origin}_p{workers}_{index}")
}

/// The number of workers and the index of a worker's origin `name` beside `origin`, or
/// `None` for any other name.
#[must_use]
pub fn parse_worker_origin(origin: &str, name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix(origin)?.strip_prefix("_p")?;
    let (workers, index) = rest.split_once('_')?;
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit());
    if !digits(workers) || !digits(index) {
        return None;
    }
    let (workers, index) = (workers.parse().ok()?, index.parse().ok()?);
    (index < workers).then_some((workers, index))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::wal::pgoutput::{Column, Delete, Insert, RelationColumn, Truncate, Update};

    fn table(name: &str, identity: ReplicaIdentity) -> Arc<Relation> {
        Arc::new(Relation {
            oid: u32::from(name.as_bytes()[0]),
            namespace: "public".into(),
            name: name.into(),
            replica_identity: identity,
            columns: vec![
                RelationColumn {
                    flags: 1,
                    name: "id".into(),
                    type_oid: 23,
                    type_modifier: -1,
                },
                RelationColumn {
                    flags: 0,
                    name: "n".into(),
                    type_oid: 23,
                    type_modifier: -1,
                },
            ],
        })
    }

    fn row(id: u32) -> Tuple {
        Tuple(vec![
            Column::Text(Bytes::from(id.to_string())),
            Column::Text(Bytes::from_static(b"1")),
        ])
    }

    fn insert(relation: &Relation, id: u32) -> Change {
        Change::Insert(Insert {
            relation: relation.oid,
            new: row(id),
        })
    }

    fn transaction(relations: &[&Arc<Relation>], changes: Vec<Change>, end: u64) -> Transaction {
        let mut transaction = Transaction::of_one_table(Arc::clone(relations[0]), changes);
        transaction.relations = relations
            .iter()
            .map(|relation| (relation.oid, Arc::clone(relation)))
            .collect::<BTreeMap<_, _>>();
        transaction.commit.end_lsn = Lsn(end);
        transaction
    }

    fn keyed_shape() -> SetShape {
        SetShape {
            unique: vec![BTreeSet::from(["id".to_owned()])],
            exact: BTreeMap::from([("id".to_owned(), 23), ("n".to_owned(), 23)]),
            ..SetShape::default()
        }
    }

    /// Two ids of `relation` hashing to different workers of `workers`.
    fn apart(relation: &Arc<Relation>, workers: usize) -> (u32, u32) {
        let of = |id| {
            worker_of(
                &transaction(&[relation], vec![insert(relation, id)], 1),
                workers,
            )
        };
        let first = of(1);
        let other = (2..1_000).find(|id| of(*id) != first).expect("keys spread");
        (1, other)
    }

    #[test]
    fn rows_of_one_key_go_to_one_worker_and_of_two_workers_are_serial() {
        let accounts = table("accounts", ReplicaIdentity::Default);
        let (a, b) = apart(&accounts, 4);
        let one = transaction(
            &[&accounts],
            vec![insert(&accounts, a), insert(&accounts, a)],
            1,
        );
        assert!(worker_of(&one, 4).is_some());
        let two = transaction(
            &[&accounts],
            vec![insert(&accounts, a), insert(&accounts, b)],
            1,
        );
        assert_eq!(worker_of(&two, 4), None);
        let shapes = |_: &str| Some(Arc::new(keyed_shape()));
        assert_eq!(route(&two, 4, &shapes), Route::Serial);
        assert!(matches!(route(&one, 4, &shapes), Route::Worker(_)));
    }

    #[test]
    fn a_key_change_counts_both_keys() {
        let accounts = table("accounts", ReplicaIdentity::Default);
        let (a, b) = apart(&accounts, 4);
        let moved = Change::Update(Update {
            relation: accounts.oid,
            old: Some(OldRow::Key(row(a))),
            new: row(b),
        });
        assert_eq!(
            worker_of(&transaction(&[&accounts], vec![moved], 1), 4),
            None
        );
    }

    #[test]
    fn what_is_not_found_by_a_key_is_serial() {
        let history = table("history", ReplicaIdentity::Full);
        let accounts = table("accounts", ReplicaIdentity::Default);
        let full = transaction(&[&history], vec![insert(&history, 1)], 1);
        assert_eq!(worker_of(&full, 4), None);
        let truncated = transaction(
            &[&accounts],
            vec![Change::Truncate(Truncate {
                cascade: false,
                restart_identity: false,
                relations: vec![accounts.oid],
            })],
            1,
        );
        assert_eq!(worker_of(&truncated, 4), None);
        let deleted_by_full_row = transaction(
            &[&accounts],
            vec![Change::Delete(Delete {
                relation: accounts.oid,
                old: OldRow::Full(row(1)),
            })],
            1,
        );
        assert_eq!(worker_of(&deleted_by_full_row, 4), None);
        assert_eq!(
            worker_of(&transaction(&[&accounts], Vec::new(), 1), 4),
            None
        );
        let mut stamped = (*table("readings", ReplicaIdentity::Default)).clone();
        stamped.columns[0].type_oid = 1184;
        let stamped = Arc::new(stamped);
        let reading = transaction(&[&stamped], vec![insert(&stamped, 1)], 1);
        assert_eq!(
            worker_of(&reading, 4),
            None,
            "a timestamptz key prints by the time zone"
        );
    }

    #[test]
    fn a_table_whose_row_order_could_show_is_serial() {
        let accounts = table("accounts", ReplicaIdentity::Default);
        let one = transaction(&[&accounts], vec![insert(&accounts, 1)], 1);
        let with = |shape: SetShape| route(&one, 4, &move |_: &str| Some(Arc::new(shape.clone())));
        assert!(matches!(with(keyed_shape()), Route::Worker(_)));
        let mut email = keyed_shape();
        email.unique.push(BTreeSet::from(["n".to_owned()]));
        assert_eq!(with(email), Route::Serial);
        let mut fires = keyed_shape();
        fires.fires = true;
        assert_eq!(with(fires), Route::Serial);
        let mut excluded = keyed_shape();
        excluded.ordered = Some(crate::wal::Fallback::UniqueIndex);
        assert_eq!(with(excluded), Route::Serial);
        let mut case_blind = keyed_shape();
        case_blind.exact.remove("id");
        assert_eq!(with(case_blind), Route::Serial);
        let mut retyped = keyed_shape();
        retyped.exact.insert("id".to_owned(), 25);
        assert_eq!(
            with(retyped),
            Route::Serial,
            "int4 on one side, text on the other"
        );
        assert_eq!(with(SetShape::default()), Route::Serial);
        assert_eq!(route(&one, 4, &|_: &str| None), Route::Serial);
    }

    #[test]
    fn a_table_keyed_otherwise_than_before_is_serial_once() {
        let accounts = table("accounts", ReplicaIdentity::Default);
        let mut keys = Keys::default();
        let by_id = transaction(&[&accounts], vec![insert(&accounts, 1)], 1);
        assert!(!keys.rekeyed(&by_id));
        assert!(!keys.rekeyed(&by_id));
        let mut by_n = (*accounts).clone();
        by_n.columns[0].flags = 0;
        by_n.columns[1].flags = 1;
        let by_n = Arc::new(by_n);
        let rekeyed = transaction(&[&by_n], vec![insert(&by_n, 1)], 2);
        assert!(keys.rekeyed(&rekeyed));
        assert!(!keys.rekeyed(&rekeyed));
        let full = transaction(&[&table("accounts", ReplicaIdentity::Full)], Vec::new(), 3);
        assert!(keys.rekeyed(&full));
        let mut renamed = (*table("accounts", ReplicaIdentity::Full)).clone();
        renamed.name = "ledger".into();
        let renamed = Arc::new(renamed);
        assert!(keys.rekeyed(&transaction(&[&renamed], Vec::new(), 4)));
    }

    #[test]
    fn a_transaction_of_many_changes_is_serial() {
        let accounts = table("accounts", ReplicaIdentity::Default);
        let many = transaction(
            &[&accounts],
            (0..=MOST_ROUTED_CHANGES)
                .map(|_| insert(&accounts, 7))
                .collect(),
            1,
        );
        assert_eq!(worker_of(&many, 4), None);
    }

    #[test]
    fn worker_origins_name_their_number_and_index() {
        let name = worker_origin("tandem_s_old", 4, 3);
        assert_eq!(parse_worker_origin("tandem_s_old", &name), Some((4, 3)));
        assert_eq!(parse_worker_origin("tandem_s_old", "tandem_s_old"), None);
        assert_eq!(
            parse_worker_origin("tandem_s_old", "tandem_s_old_p4_4"),
            None
        );
        assert_eq!(
            parse_worker_origin("tandem_s_old", "tandem_s_old_p_1"),
            None
        );
        assert_eq!(
            parse_worker_origin("tandem_s_old", "tandem_s_old_px_1"),
            None
        );
        assert_eq!(parse_worker_origin("tandem_s", "tandem_s_old_p4_1"), None);
    }

    #[test]
    fn a_transaction_is_had_by_the_main_progress_or_its_workers() {
        let accounts = table("accounts", ReplicaIdentity::Default);
        let one = transaction(&[&accounts], vec![insert(&accounts, 7)], 100);
        let worker = worker_of(&one, 2).expect("keyed");
        let mut progress = vec![Lsn(0); 2];
        progress[worker] = Lsn(100);
        let recorded = Recorded {
            main: Lsn(50),
            generations: vec![Generation { progress }],
        };
        assert!(recorded.has(&one));
        assert_eq!(recorded.furthest(), Lsn(100));
        let mut other = vec![Lsn(0); 2];
        other[1 - worker] = Lsn(200);
        let elsewhere = Recorded {
            main: Lsn(50),
            generations: vec![Generation { progress: other }],
        };
        assert!(!elsewhere.has(&one));
        assert!(Recorded {
            main: Lsn(100),
            generations: Vec::new()
        }
        .has(&one));
    }

    proptest! {
        /// Whichever transactions a worker was given, in order, and however far it got,
        /// exactly those it committed are had; no other worker's progress says otherwise.
        #[test]
        fn had_is_exactly_what_each_worker_committed(
            ids in proptest::collection::vec(0_u32..50, 1..60),
            workers in 1_usize..5,
            committed in proptest::collection::vec(0_usize..60, 5),
        ) {
            let accounts = table("accounts", ReplicaIdentity::Default);
            let transactions: Vec<Transaction> = ids
                .iter()
                .enumerate()
                .map(|(at, id)| transaction(&[&accounts], vec![insert(&accounts, *id)], (at as u64 + 1) * 10))
                .collect();
            let queues: Vec<Vec<&Transaction>> = (0..workers)
                .map(|worker| {
                    transactions
                        .iter()
                        .filter(|transaction| worker_of(transaction, workers) == Some(worker))
                        .collect()
                })
                .collect();
            let progress: Vec<Lsn> = queues
                .iter()
                .enumerate()
                .map(|(worker, queue)| {
                    let done = committed[worker].min(queue.len());
                    done.checked_sub(1).map_or(Lsn(0), |last| queue[last].commit.end_lsn)
                })
                .collect();
            let recorded = Recorded { main: Lsn(0), generations: vec![Generation { progress }] };
            for (worker, queue) in queues.iter().enumerate() {
                for (at, transaction) in queue.iter().enumerate() {
                    prop_assert_eq!(recorded.has(transaction), at < committed[worker].min(queue.len()));
                }
            }
        }
    }
}
