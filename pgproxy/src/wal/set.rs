//! Set-based apply: a batch's changes of one table as a few statements bound to arrays
//! instead of one statement per row change. Each row's changes in the batch, found by a key
//! that stays the same, fold into one net effect ([`Net`], `net.rs`); the table's rows are
//! then deleted with one statement (`"k" = ANY($1::…[])`), upserted with one
//! (`INSERT … SELECT * FROM unnest(…) ON CONFLICT (key) DO UPDATE …`) and updated with one per
//! set of columns sent (`UPDATE … FROM unnest(…) AS v(…) WHERE key = v.key`). A table
//! whose rows have no such key (none at all, or `REPLICA IDENTITY FULL`, whose rows are found
//! by every column: pgbench's `pgbench_history`) and whose batch only inserts gets one plain
//! `INSERT … SELECT * FROM unnest(…)` of every row inserted, identical ones included (such a
//! table may hold the same row twice; nothing folds them).
//! Values stay the text pgoutput sent, each column's array bound as its own type's array
//! (`pg_catalog._int4`), so each element is read by the column's own input function, as the
//! row path's parameters are. Pure: [`plan`] takes the other side's shape of every table.
//!
//! Applying rows by sets changes the order of the changes inside the batch (across rows of a
//! table, and across tables). Nobody can see that order: the batch commits as one
//! transaction, so only its end state is ever visible on the other side; what could see it
//! inside the transaction is what the conditions below rule out, table by table, per batch
//! (anything else takes the row path, `tandem_capture_set_fallbacks_total{reason}`):
//!
//! - constraints checked as each row is written against other rows (a foreign key to or from
//!   the table, a unique index or exclusion constraint other than the key's, any for a table
//!   whose rows have no key: a value freed by one row and taken by another must be freed
//!   first);
//! - triggers that fire on the apply session (`ENABLE ALWAYS` or `ENABLE REPLICA`) and rules,
//!   which could read other rows or tables: any in the batch sends the whole batch down the
//!   row path;
//! - rows not found by a key that stays the same: an update or delete of a table without a
//!   key or under `REPLICA IDENTITY FULL` (inserts alone only add rows to a multiset, which
//!   their order cannot change), an update that changes the key, a key with NULL; a
//!   truncate in the batch, a table reshaped within it;
//! - a column whose type is not bound as an array of its own (arrays, composites, domains
//!   over them, a type whose array delimiter is not a comma).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use super::connection::quote_identifier;
use super::net::{Image, Net, RowChange, Sent};
use super::pgoutput::{Column, OldRow, Relation, ReplicaIdentity, Tuple};
use super::render::{conflict_clause, display_name, Expect, Statement, TargetTable};
use super::transaction::{Change, Transaction};

/// What the other side's catalog says of a table for the set path (read once per shape of
/// the captured relation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetShape {
    /// Why the table's changes always take the row path (a foreign key, an exclusion
    /// constraint, a unique index with expressions, a predicate or deferred, not a plain
    /// table); `None` when the batch decides.
    pub refused: Option<Fallback>,
    /// Why the order in which rows of different keys are written could show on this side
    /// (as `refused`, but for foreign keys, which the apply session does not check): such a
    /// table's transactions are applied in order with every other (`route.rs`).
    pub ordered: Option<Fallback>,
    /// It has a trigger that fires on the apply session or a rule: every batch that changes
    /// it takes the row path whole.
    pub fires: bool,
    /// The columns of each of its unique indexes.
    pub unique: Vec<BTreeSet<String>>,
    /// Its columns whose values compare as their text does (a plain built-in type, a
    /// deterministic collation, in its unique indexes too), with their type's OID: rows whose
    /// keys differ in text are different rows when the captured side's type is the same.
    pub exact: BTreeMap<String, u32>,
    /// The array type each column's values are bound as (`pg_catalog._int4`), by column
    /// name; a column missing has a type that is not (see the module's conditions).
    pub arrays: BTreeMap<String, String>,
}

/// Why a table's changes in a batch take the row path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fallback {
    /// A foreign key to or from it.
    ForeignKey,
    /// A unique index or exclusion constraint other than its key's (or none on its key; any,
    /// for a table without a key or under `REPLICA IDENTITY FULL`).
    UniqueIndex,
    /// A trigger firing on the apply session (`ENABLE ALWAYS`/`REPLICA`) or a rule on it.
    Trigger,
    /// Another table of the batch has such a trigger or rule.
    OtherTrigger,
    /// Not a plain table (partitioned).
    NotATable,
    /// A column of a type not bound in an array.
    ColumnType,
    /// `REPLICA IDENTITY FULL`, and an update or delete (its inserts alone take the set path).
    IdentityFull,
    /// An update changed the key, or a key value is NULL or not sent.
    Key,
    /// No key, and an update or delete (a keyless table's inserts alone take the set path).
    NoKey,
    /// The batch truncates.
    Truncate,
    /// The table was described with another shape within the batch.
    Reshaped,
    /// A value that is not text (the row path says what is wrong with it).
    Value,
}

impl Fallback {
    /// The metric label.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Fallback::ForeignKey => "foreign_key",
            Fallback::UniqueIndex => "unique_index",
            Fallback::Trigger => "trigger",
            Fallback::OtherTrigger => "other_trigger",
            Fallback::NotATable => "not_a_table",
            Fallback::ColumnType => "column_type",
            Fallback::IdentityFull => "identity_full",
            Fallback::Key => "key",
            Fallback::NoKey => "no_key",
            Fallback::Truncate => "truncate",
            Fallback::Reshaped => "reshaped",
            Fallback::Value => "value",
        }
    }
}

/// The set path's part of a batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Its statements.
    pub statements: Vec<Statement>,
    /// The tables they apply (`schema.name`): the row path leaves their changes out.
    pub tables: BTreeSet<String>,
    /// Their relations' oids (one each: a table described with another shape within the
    /// batch takes the row path), by which the row path's rendering leaves them out.
    pub relations: BTreeSet<u32>,
    /// The tables the row path applies, and why.
    pub row_path: Vec<(String, Fallback)>,
}

/// One table's changes in a batch, as far as read.
struct TableChanges {
    /// The shape its changes were made with.
    relation: Arc<Relation>,
    /// Its key's columns ([`key_columns`]).
    keys: Vec<usize>,
    /// Why it takes the row path, once known.
    refused: Option<Fallback>,
    /// Each row's net effect, in the order the rows first changed.
    rows: Vec<(Vec<String>, Net)>,
    /// Where each key is in `rows`.
    index: HashMap<Vec<String>, usize>,
    /// The rows inserted into a table without a key (or under `REPLICA IDENTITY FULL`), in
    /// order, identical ones included.
    appended: Vec<Image>,
}

/// The other side's shape of a table, by its [`display_name`].
pub type Shapes<'a> = dyn Fn(&str) -> Option<(Arc<TargetTable>, Arc<SetShape>)> + 'a;

/// The set path's statements for `batch` (whole transactions, in commit order), and which
/// tables take the row path. `target` gives the other side's shape of a table by its
/// [`display_name`].
#[must_use]
pub fn plan(batch: &[Transaction], target: &Shapes<'_>) -> Plan {
    let mut tables: BTreeMap<String, TableChanges> = BTreeMap::new();
    // Each relation's name, made once per shape rather than once per change.
    let mut names: HashMap<u32, (Arc<Relation>, String)> = HashMap::new();
    let mut truncates = false;
    for transaction in batch {
        let mut shapes = transaction.relations.clone();
        for change in &transaction.changes {
            let (oid, row) = match change {
                Change::Insert(insert) => (insert.relation, Row::Insert(&insert.new)),
                Change::Update(update) => (
                    update.relation,
                    Row::Update(&update.new, update.old.is_some()),
                ),
                Change::Delete(delete) => (delete.relation, Row::Delete(&delete.old)),
                Change::Truncate(_) => {
                    truncates = true;
                    continue;
                }
                Change::Relation(relation) => {
                    shapes.insert(relation.oid, Arc::clone(relation));
                    if let Some(table) = tables.get_mut(&display_name(relation)) {
                        if *table.relation != **relation {
                            table.refused = Some(Fallback::Reshaped);
                        }
                    }
                    continue;
                }
                Change::Message(_) => continue,
            };
            // The row path reports a change of a table the stream never described.
            let Some(relation) = shapes.get(&oid) else {
                continue;
            };
            if !names
                .get(&oid)
                .is_some_and(|(named, _)| Arc::ptr_eq(named, relation))
            {
                names.insert(oid, (Arc::clone(relation), display_name(relation)));
            }
            let Some((_, name)) = names.get(&oid) else {
                continue;
            };
            if !tables.contains_key(name) {
                tables.insert(name.clone(), TableChanges::new(relation));
            }
            let Some(table) = tables.get_mut(name) else {
                continue;
            };
            if *table.relation != **relation {
                table.refused = Some(Fallback::Reshaped);
            }
            if table.refused.is_none() {
                if let Err(fallback) = table.take(row) {
                    table.refused = Some(fallback);
                }
            }
        }
    }
    let fires: BTreeSet<&String> = tables
        .keys()
        .filter(|name| target(name).is_some_and(|(_, shape)| shape.fires))
        .collect();
    let mut plan = Plan::default();
    for (name, table) in &tables {
        let refused = if truncates {
            Some(Fallback::Truncate)
        } else if fires.contains(name) {
            Some(Fallback::Trigger)
        } else if !fires.is_empty() {
            Some(Fallback::OtherTrigger)
        } else {
            table.refused
        };
        let rendered = match (refused, target(name)) {
            (Some(fallback), _) => Err(fallback),
            (None, None) => Err(Fallback::Value),
            (None, Some((other, shape))) => table.render(&other, &shape),
        };
        match rendered {
            Ok(statements) => {
                plan.statements.extend(statements);
                plan.tables.insert(name.clone());
                plan.relations.insert(table.relation.oid);
            }
            Err(fallback) => plan.row_path.push((name.clone(), fallback)),
        }
    }
    plan
}

/// A row change as pgoutput sent it.
enum Row<'a> {
    Insert(&'a Tuple),
    /// The new row, and whether an old one was sent (the key changed, or every column is key).
    Update(&'a Tuple, bool),
    Delete(&'a OldRow),
}

impl TableChanges {
    fn new(relation: &Arc<Relation>) -> TableChanges {
        TableChanges {
            relation: Arc::clone(relation),
            keys: key_columns(relation),
            refused: None,
            rows: Vec::new(),
            index: HashMap::new(),
            appended: Vec::new(),
        }
    }

    /// Folds `row` into the table's net effects.
    fn take(&mut self, row: Row<'_>) -> Result<(), Fallback> {
        let relation = Arc::clone(&self.relation);
        let full = relation.replica_identity == ReplicaIdentity::Full;
        let (tuple, change) = match row {
            Row::Insert(tuple) => (tuple, RowChange::Insert(image(&relation, tuple)?)),
            // Found by every column: which of identical rows goes is the row path's to pick.
            Row::Update(..) | Row::Delete(_) if full => return Err(Fallback::IdentityFull),
            Row::Update(_, true) => return Err(Fallback::Key),
            Row::Update(tuple, false) => (tuple, RowChange::Update(sent(&relation, tuple)?)),
            Row::Delete(OldRow::Full(_)) => return Err(Fallback::IdentityFull),
            Row::Delete(OldRow::Key(tuple)) => (tuple, RowChange::Delete),
        };
        if self.keys.is_empty() {
            return match change {
                RowChange::Insert(image) => {
                    self.appended.push(image);
                    Ok(())
                }
                RowChange::Update(_) | RowChange::Delete => Err(Fallback::NoKey),
            };
        }
        let key = key(&relation, &self.keys, tuple)?;
        match self.index.get(&key) {
            Some(at) => {
                let (_, net) = &mut self.rows[*at];
                let before = std::mem::replace(net, Net::Delete { expected: false });
                *net = before.then(change);
            }
            None => {
                self.index.insert(key.clone(), self.rows.len());
                self.rows.push((key, Net::first(change)));
            }
        }
        Ok(())
    }

    /// The table's statements, or why it takes the row path.
    fn render(&self, other: &TargetTable, shape: &SetShape) -> Result<Vec<Statement>, Fallback> {
        if let Some(fallback) = shape.refused {
            return Err(fallback);
        }
        let relation = &self.relation;
        let keys = self.keys.clone();
        let key_names: BTreeSet<String> = keys
            .iter()
            .map(|index| relation.columns[*index].name.clone())
            .collect();
        // The key's unique index and no other (none at all without a key: rows appended in
        // another order could not meet one in another state).
        let unique_ok = if keys.is_empty() {
            shape.unique.is_empty()
        } else {
            shape.unique == [key_names]
        };
        if !unique_ok {
            return Err(Fallback::UniqueIndex);
        }
        let arrays = relation
            .columns
            .iter()
            .map(|column| shape.arrays.get(&column.name).cloned())
            .collect::<Option<Vec<String>>>()
            .ok_or(Fallback::ColumnType)?;
        let table = Table {
            relation,
            other,
            names: relation
                .columns
                .iter()
                .map(|column| quote_identifier(&column.name))
                .collect(),
            arrays,
            keys,
        };
        let mut statements = Vec::new();
        if !self.appended.is_empty() {
            statements.push(table.insert(&self.appended.iter().collect::<Vec<_>>()));
        }
        for expected in [true, false] {
            let deleted: Vec<&Vec<String>> = self
                .rows
                .iter()
                .filter(|(_, net)| {
                    matches!(net, Net::Delete { expected: e } | Net::Replace { expected: e, .. } if *e == expected)
                })
                .map(|(key, _)| key)
                .collect();
            if !deleted.is_empty() {
                statements.push(table.delete(&deleted, expected));
            }
        }
        let inserted: Vec<&Image> = self
            .rows
            .iter()
            .filter_map(|(_, net)| match net {
                Net::Upsert(image) | Net::Replace { image, .. } => Some(image),
                Net::Update(_) | Net::Delete { .. } => None,
            })
            .collect();
        if !inserted.is_empty() {
            statements.push(table.insert(&inserted));
        }
        // Updates, one statement per set of columns they set.
        let mut updates: BTreeMap<Vec<usize>, Vec<(&Vec<String>, &Sent)>> = BTreeMap::new();
        for (key, net) in &self.rows {
            if let Net::Update(sent) = net {
                updates
                    .entry(table.settable(sent))
                    .or_default()
                    .push((key, sent));
            }
        }
        for (columns, rows) in updates {
            statements.push(table.update(&columns, &rows));
        }
        Ok(statements)
    }
}

/// A table being rendered.
struct Table<'a> {
    relation: &'a Relation,
    other: &'a TargetTable,
    /// Its columns, quoted.
    names: Vec<String>,
    /// Each column's array type.
    arrays: Vec<String>,
    /// Its key's columns.
    keys: Vec<usize>,
}

impl Table<'_> {
    /// The columns an update that sent `sent` sets: sent, not key, not `GENERATED ALWAYS`.
    fn settable(&self, sent: &Sent) -> Vec<usize> {
        (0..sent.len())
            .filter(|index| {
                sent[*index].is_some()
                    && !self.keys.contains(index)
                    && !self
                        .other
                        .always_identity
                        .contains(&self.relation.columns[*index].name)
            })
            .collect()
    }

    fn statement(&self, template: String, values: Vec<Option<String>>, kind: Expect) -> Statement {
        Statement {
            template,
            values,
            kind,
            table: display_name(self.relation),
            row: None,
            rows: 0,
            must_find: 0,
        }
    }

    /// `DELETE … WHERE key IN (the keys)`.
    fn delete(&self, keys: &[&Vec<String>], expected: bool) -> Statement {
        let mut values = Vec::new();
        let mut unnest = Vec::new();
        for (position, column) in self.keys.iter().enumerate() {
            values.push(Some(array_literal(
                keys.iter().map(|key| Some(key[position].as_str())),
            )));
            unnest.push(format!("${}::{}", values.len(), self.arrays[*column]));
        }
        let template = if let [column] = self.keys.as_slice() {
            format!(
                "DELETE FROM {} WHERE {} = ANY({})",
                self.other.name, self.names[*column], unnest[0]
            )
        } else {
            let columns: Vec<&str> = self
                .keys
                .iter()
                .map(|column| self.names[*column].as_str())
                .collect();
            format!(
                "DELETE FROM {} WHERE ({}) IN (SELECT * FROM unnest({}))",
                self.other.name,
                columns.join(", "),
                unnest.join(", ")
            )
        };
        let mut statement = self.statement(template, values, Expect::Delete);
        statement.rows = keys.len();
        statement.must_find = if expected { keys.len() } else { 0 };
        statement
    }

    /// `INSERT … SELECT * FROM unnest(…)`, an upsert on the key when there is one.
    fn insert(&self, images: &[&Image]) -> Statement {
        let mut values = Vec::new();
        let mut unnest = Vec::new();
        for (column, array) in self.arrays.iter().enumerate() {
            values.push(Some(array_literal(
                images.iter().map(|image| image[column].as_deref()),
            )));
            unnest.push(format!("${}::{array}", values.len()));
        }
        let template = format!(
            "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT * FROM unnest({}){}",
            self.other.name,
            self.names.join(", "),
            unnest.join(", "),
            conflict_clause(self.relation, self.other, &self.names)
        );
        let mut statement = self.statement(template, values, Expect::Insert);
        statement.rows = images.len();
        statement
    }

    /// `UPDATE … SET columns FROM unnest(keys, columns) WHERE key = v.key`.
    fn update(&self, columns: &[usize], rows: &[(&Vec<String>, &Sent)]) -> Statement {
        let mut values = Vec::new();
        let mut unnest = Vec::new();
        let mut aliases = Vec::new();
        for (position, column) in self.keys.iter().enumerate() {
            values.push(Some(array_literal(
                rows.iter().map(|(key, _)| Some(key[position].as_str())),
            )));
            unnest.push(format!("${}::{}", values.len(), self.arrays[*column]));
            aliases.push(self.names[*column].clone());
        }
        for column in columns {
            values.push(Some(array_literal(rows.iter().map(|(_, sent)| {
                sent[*column].as_ref().and_then(|value| value.as_deref())
            }))));
            unnest.push(format!("${}::{}", values.len(), self.arrays[*column]));
            aliases.push(self.names[*column].clone());
        }
        let mut sets: Vec<String> = columns
            .iter()
            .map(|column| format!("{name} = v.{name}", name = self.names[*column]))
            .collect();
        if sets.is_empty() {
            // Nothing to set: still find the rows, so an absent one shows.
            let first = &self.names[self.keys[0]];
            sets.push(format!("{first} = tandem_row.{first}"));
        }
        let mut template = format!(
            "UPDATE {} AS tandem_row SET {} FROM unnest({}) AS v({}) WHERE ",
            self.other.name,
            sets.join(", "),
            unnest.join(", "),
            aliases.join(", ")
        );
        for (position, column) in self.keys.iter().enumerate() {
            if position > 0 {
                template.push_str(" AND ");
            }
            let _ = write!(
                template,
                "tandem_row.{name} = v.{name}",
                name = self.names[*column]
            );
        }
        let mut statement = self.statement(template, values, Expect::Update);
        statement.rows = rows.len();
        statement.must_find = rows.len();
        statement
    }
}

/// The columns of `relation`'s key that stays the same: its replica identity's, none under
/// `REPLICA IDENTITY FULL` (which marks every column: rows are found by all of them).
pub(super) fn key_columns(relation: &Relation) -> Vec<usize> {
    if relation.replica_identity == ReplicaIdentity::Full {
        return Vec::new();
    }
    (0..relation.columns.len())
        .filter(|index| relation.columns[*index].is_key())
        .collect()
}

/// A column's text value (`None` for NULL): `Err(None)` for a value not sent (an unchanged
/// TOASTed one).
fn text(column: &Column) -> Result<Option<String>, Option<Fallback>> {
    match column {
        Column::Null => Ok(None),
        Column::Text(bytes) => std::str::from_utf8(bytes)
            .map(|text| Some(text.to_owned()))
            .map_err(|_| Some(Fallback::Value)),
        Column::UnchangedToast => Err(None),
        Column::Binary(_) => Err(Some(Fallback::Value)),
    }
}

fn checked<'a>(relation: &Relation, tuple: &'a Tuple) -> Result<&'a [Column], Fallback> {
    if tuple.0.len() == relation.columns.len() {
        Ok(&tuple.0)
    } else {
        Err(Fallback::Value)
    }
}

/// An inserted row's values (all of them sent).
fn image(relation: &Relation, tuple: &Tuple) -> Result<Image, Fallback> {
    checked(relation, tuple)?
        .iter()
        .map(|column| text(column).map_err(|why| why.unwrap_or(Fallback::Value)))
        .collect()
}

/// An updated row's values, `None` for those not sent.
fn sent(relation: &Relation, tuple: &Tuple) -> Result<Sent, Fallback> {
    checked(relation, tuple)?
        .iter()
        .map(|column| match text(column) {
            Ok(value) => Ok(Some(value)),
            Err(None) => Ok(None),
            Err(Some(fallback)) => Err(fallback),
        })
        .collect()
}

/// The key's values of `tuple`, every one sent and not NULL.
pub(super) fn key(
    relation: &Relation,
    keys: &[usize],
    tuple: &Tuple,
) -> Result<Vec<String>, Fallback> {
    let columns = checked(relation, tuple)?;
    keys.iter()
        .map(|index| match text(&columns[*index]) {
            Ok(Some(text)) => Ok(text),
            Ok(None) | Err(None) => Err(Fallback::Key),
            Err(Some(fallback)) => Err(fallback),
        })
        .collect()
}

/// An array's text form with every element quoted (`{"1","a \"b\"",NULL}`): read back by
/// `array_in`, each element reaches its type's input function exactly as sent.
fn array_literal<'a>(elements: impl Iterator<Item = Option<&'a str>>) -> String {
    let mut literal = String::from("{");
    for (index, element) in elements.enumerate() {
        if index > 0 {
            literal.push(',');
        }
        match element {
            None => literal.push_str("NULL"),
            Some(text) => {
                literal.push('"');
                let mut rest = text;
                while let Some(at) = rest.find(['"', '\\']) {
                    literal.push_str(&rest[..at]);
                    literal.push('\\');
                    literal.push_str(&rest[at..=at]);
                    rest = &rest[at + 1..];
                }
                literal.push_str(rest);
                literal.push('"');
            }
        }
    }
    literal.push('}');
    literal
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::wal::pgoutput::{Delete, Insert, RelationColumn, Update};

    /// `public.history (tid int, delta int)`, pgbench's `pgbench_history` in small: under
    /// `identity` (every column marked as key under `FULL`, as pgoutput marks them).
    fn history(identity: ReplicaIdentity) -> Arc<Relation> {
        let flags = u8::from(identity == ReplicaIdentity::Full);
        Arc::new(Relation {
            oid: 7,
            namespace: "public".to_owned(),
            name: "history".to_owned(),
            replica_identity: identity,
            columns: ["tid", "delta"]
                .into_iter()
                .map(|name| RelationColumn {
                    flags,
                    name: name.to_owned(),
                    type_oid: 23,
                    type_modifier: -1,
                })
                .collect(),
        })
    }

    fn row(tid: &str, delta: &str) -> Tuple {
        Tuple(vec![
            Column::Text(Bytes::copy_from_slice(tid.as_bytes())),
            Column::Text(Bytes::copy_from_slice(delta.as_bytes())),
        ])
    }

    fn insert(tid: &str, delta: &str) -> Change {
        Change::Insert(Insert {
            relation: 7,
            new: row(tid, delta),
        })
    }

    fn transaction(relation: &Arc<Relation>, changes: Vec<Change>) -> Transaction {
        Transaction::of_one_table(Arc::clone(relation), changes)
    }

    /// The other side's `history`, with `shape` (both columns bound as `_int4`).
    fn planned(batch: &[Transaction], shape: SetShape) -> Plan {
        let table = Arc::new(TargetTable {
            name: "\"public\".\"history\"".to_owned(),
            columns: [("tid", "integer"), ("delta", "integer")]
                .into_iter()
                .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
                .collect(),
            always_identity: BTreeSet::new(),
            primary_key: Vec::new(),
        });
        let shape = Arc::new(shape);
        plan(batch, &|name: &str| {
            (name == "public.history").then(|| (Arc::clone(&table), Arc::clone(&shape)))
        })
    }

    fn bindable() -> SetShape {
        SetShape {
            arrays: ["tid", "delta"]
                .into_iter()
                .map(|name| (name.to_owned(), "pg_catalog._int4".to_owned()))
                .collect(),
            ..SetShape::default()
        }
    }

    #[test]
    fn inserts_alone_of_a_full_identity_table_are_one_insert_of_every_row() {
        for identity in [ReplicaIdentity::Full, ReplicaIdentity::Default] {
            let relation = history(identity);
            // Identical rows, within a transaction and across two: each is inserted.
            let batch = [
                transaction(&relation, vec![insert("1", "5"), insert("1", "5")]),
                transaction(&relation, vec![insert("2", "-3"), insert("1", "5")]),
            ];
            let plan = planned(&batch, bindable());
            assert_eq!(plan.row_path, [], "{identity:?}");
            assert_eq!(
                plan.tables,
                BTreeSet::from(["public.history".to_owned()]),
                "{identity:?}"
            );
            // By oid, for the row path's rendering to leave the table's changes out.
            assert_eq!(plan.relations, BTreeSet::from([7]), "{identity:?}");
            let [statement] = plan.statements.as_slice() else {
                panic!("{identity:?}: {:?}", plan.statements);
            };
            assert_eq!(
                statement.template,
                "INSERT INTO \"public\".\"history\" (\"tid\", \"delta\") OVERRIDING SYSTEM VALUE \
                 SELECT * FROM unnest($1::pg_catalog._int4, $2::pg_catalog._int4)"
            );
            assert_eq!(
                statement.values,
                [
                    Some(r#"{"1","1","2","1"}"#.to_owned()),
                    Some(r#"{"5","5","-3","5"}"#.to_owned())
                ]
            );
            assert_eq!((statement.rows, statement.must_find), (4, 0));
        }
    }

    #[test]
    fn an_update_or_delete_of_a_full_identity_table_sends_its_batch_down_the_row_path() {
        let relation = history(ReplicaIdentity::Full);
        let update = Change::Update(Update {
            relation: 7,
            old: Some(OldRow::Full(row("1", "5"))),
            new: row("1", "6"),
        });
        let delete = Change::Delete(Delete {
            relation: 7,
            old: OldRow::Full(row("1", "5")),
        });
        for change in [update, delete] {
            // Inserts first, in another transaction of the batch: the whole batch of the
            // table goes by row all the same.
            let batch = [
                transaction(&relation, vec![insert("1", "5"), insert("1", "5")]),
                transaction(&relation, vec![change.clone(), insert("3", "1")]),
            ];
            let plan = planned(&batch, bindable());
            assert_eq!(
                plan.row_path,
                [("public.history".to_owned(), Fallback::IdentityFull)],
                "{change:?}"
            );
            assert!(plan.statements.is_empty(), "{change:?}");
            assert!(plan.tables.is_empty(), "{change:?}");
            assert!(plan.relations.is_empty(), "{change:?}");
        }
    }

    #[test]
    fn full_identity_inserts_keep_every_other_condition() {
        let relation = history(ReplicaIdentity::Full);
        let inserts = || transaction(&relation, vec![insert("1", "5"), insert("1", "5")]);
        let unique = SetShape {
            unique: vec![BTreeSet::from(["tid".to_owned(), "delta".to_owned()])],
            ..bindable()
        };
        let fires = SetShape {
            fires: true,
            ..bindable()
        };
        let foreign = SetShape {
            refused: Some(Fallback::ForeignKey),
            ..bindable()
        };
        let mut unbound = bindable();
        unbound.arrays.remove("delta");
        for (shape, fallback) in [
            (unique, Fallback::UniqueIndex),
            (fires, Fallback::Trigger),
            (foreign, Fallback::ForeignKey),
            (unbound, Fallback::ColumnType),
        ] {
            let plan = planned(&[inserts()], shape);
            assert_eq!(
                plan.row_path,
                [("public.history".to_owned(), fallback)],
                "{fallback:?}"
            );
            assert!(plan.statements.is_empty(), "{fallback:?}");
        }
        let mut truncated = inserts();
        truncated
            .changes
            .push(Change::Truncate(crate::wal::pgoutput::Truncate {
                cascade: false,
                restart_identity: false,
                relations: vec![7],
            }));
        let plan = planned(&[truncated], bindable());
        assert_eq!(
            plan.row_path,
            [("public.history".to_owned(), Fallback::Truncate)]
        );
        let mut reshaped = inserts();
        let mut wider = (*relation).clone();
        wider.columns.pop();
        reshaped.changes.push(Change::Relation(Arc::new(wider)));
        let plan = planned(&[reshaped], bindable());
        assert_eq!(
            plan.row_path,
            [("public.history".to_owned(), Fallback::Reshaped)]
        );
    }

    #[test]
    fn array_literals_quote_every_element() {
        assert_eq!(
            array_literal(
                [
                    Some("1"),
                    None,
                    Some("a \"b\" \\ {,}"),
                    Some("NULL"),
                    Some("")
                ]
                .into_iter()
            ),
            r#"{"1",NULL,"a \"b\" \\ {,}","NULL",""}"#
        );
        assert_eq!(array_literal(std::iter::empty()), "{}");
    }

    proptest::proptest! {
        /// Each element is quoted, with a backslash before each `"` and `\\` and nothing
        /// else changed, whatever text it holds.
        #[test]
        fn array_literals_escape_quotes_and_backslashes_alone(
            elements in proptest::collection::vec(proptest::option::of("[a\"\\\\{},é ]{0,8}"), 0..5)
        ) {
            let mut model = String::from("{");
            for (index, element) in elements.iter().enumerate() {
                if index > 0 {
                    model.push(',');
                }
                match element {
                    None => model.push_str("NULL"),
                    Some(text) => {
                        model.push('"');
                        for character in text.chars() {
                            if matches!(character, '"' | '\\') {
                                model.push('\\');
                            }
                            model.push(character);
                        }
                        model.push('"');
                    }
                }
            }
            model.push('}');
            proptest::prop_assert_eq!(array_literal(elements.iter().map(|e| e.as_deref())), model);
        }
    }
}
