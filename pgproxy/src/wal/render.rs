//! A captured transaction's row changes written as SQL for the other side: one parameterised
//! statement per change (a template the other side prepares once and plans once, and the
//! values as the text pgoutput sent, each type's own text form, which its input function reads
//! back exactly: values never enter the SQL). Pure: the caller gives the other side's shape of
//! every table ([`TargetTable`]), checked beforehand.
//!
//! - An insert is an upsert on the table's key (`ON CONFLICT (key) DO UPDATE`): a row the
//!   other side already holds (copied by a backfill, say) ends as the captured image.
//! - An update or delete finds its row by the key (`"id" = '7'`, which the key's index
//!   serves); under `REPLICA IDENTITY FULL` (which marks every column as key) by the other
//!   side's primary key when the table has one, else by every column of the old row, one row
//!   at a time (a table without a key may hold the same row twice). Columns are compared through their
//!   own type (`(c)::text IS NOT DISTINCT FROM ($1::type)::text`), so types without an
//!   equality operator (`json`, `point`) match too.
//! - An update leaves out the TOASTed columns it did not change (pgoutput does not send them).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use super::connection::quote_identifier;
use super::pgoutput::{Column, Delete, Insert, OldRow, Relation, ReplicaIdentity, Tuple, Update};
use super::transaction::{Change, Transaction};

/// The other side's shape of one table, as the capture found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetTable {
    /// The table's name as SQL (`"schema"."name"`).
    pub name: String,
    /// Its columns' types as SQL (`format_type`), by column name.
    pub columns: BTreeMap<String, String>,
    /// Its `GENERATED ALWAYS AS IDENTITY` columns: an insert gives them the captured value
    /// with `OVERRIDING SYSTEM VALUE`; an update leaves them alone (they cannot be set).
    pub always_identity: std::collections::BTreeSet<String>,
    /// Its primary key's columns, in key order (empty without one): what an insert's
    /// `ON CONFLICT` and a change's row look-up use when the captured relation's identity
    /// is `FULL` (every column), so a table with both is found by its key.
    pub primary_key: Vec<String>,
}

/// A rendered statement: its template and values, what it does and to which table (to read
/// its command tag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The SQL, with `$1`, `$2`, … for the values; the same for every change of the same
    /// shape (so it is prepared once).
    pub template: String,
    /// The values, as text (`None` for NULL).
    pub values: Vec<Option<String>>,
    /// What it does.
    pub kind: Expect,
    /// The table (`schema.name`), or the tables of a truncate.
    pub table: String,
    /// The key of the one row it changes, when it finds that row by a key that stays the
    /// same (what [`coalesce`](super::coalesce::coalesce) may merge on); `None` otherwise.
    pub row: Option<Vec<Option<String>>>,
    /// The row changes it carries (one, for a statement of one change).
    pub rows: usize,
    /// The rows an update or delete should find: fewer found are rows the other side
    /// lacked.
    pub must_find: usize,
}

/// What a statement does, which says what its command tag means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// An upsert: always one row.
    Insert,
    /// An update of one row; none found means the other side lacked it.
    Update,
    /// A delete of one row; none found means the other side lacked it.
    Delete,
    /// A truncate.
    Truncate,
}

/// Why a change cannot be written for the other side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A change names a table the transaction did not describe.
    #[error("a change names relation {0}, which the stream never described")]
    UnknownRelation(u32),
    /// The other side's shape of a table was not given (the caller checks every table first).
    #[error("the other side's shape of {0} is unknown")]
    UnknownTarget(String),
    /// The other side lacks a column the change has.
    #[error("{table} has no column {column:?} on the other side")]
    MissingColumn {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// A value arrived in binary form (tandem asks for text).
    #[error("{table}.{column} arrived in binary form")]
    Binary {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// A text value is not UTF-8 (tandem asks for UTF-8).
    #[error("{table}.{column} is not UTF-8")]
    NotUtf8 {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// An insert or a key lacks a value pgoutput left out as unchanged.
    #[error("{table}.{column} has no value where one is needed")]
    Unchanged {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// An update or delete with no way to find its row (no key, no old row).
    #[error("{0} has no replica identity: its row cannot be found")]
    NoIdentity(String),
    /// A tuple with another number of columns than its relation.
    #[error("a row of {table} has {found} columns, its relation {expected}")]
    Width {
        /// The table.
        table: String,
        /// The relation's column count.
        expected: usize,
        /// The row's.
        found: usize,
    },
}

/// The relation's qualified name as a person reads it (`schema.name`).
#[must_use]
pub fn display_name(relation: &Relation) -> String {
    if relation.namespace.is_empty() {
        relation.name.clone()
    } else {
        format!("{}.{}", relation.namespace, relation.name)
    }
}

/// Appends one statement per change of `transaction` to `statements`. `target` gives the
/// other side's shape of a table by its [`display_name`].
///
/// # Errors
/// A [`RenderError`]; nothing is appended then.
pub fn render(
    transaction: &Transaction,
    target: &dyn Fn(&str) -> Option<Arc<TargetTable>>,
    statements: &mut Vec<Statement>,
) -> Result<(), RenderError> {
    render_except(transaction, target, &BTreeSet::new(), statements).map(|_| ())
}

/// As [`render`], leaving out the inserts, updates and deletes of the relations `skip` names
/// by oid (the tables the set path applies: their changes would be rendered only to be
/// dropped); how many were left out.
///
/// # Errors
/// A [`RenderError`]; nothing is appended then.
pub fn render_except(
    transaction: &Transaction,
    target: &dyn Fn(&str) -> Option<Arc<TargetTable>>,
    skip: &BTreeSet<u32>,
    statements: &mut Vec<Statement>,
) -> Result<usize, RenderError> {
    let before = statements.len();
    let result = render_changes(transaction, target, skip, statements);
    if result.is_err() {
        statements.truncate(before);
    }
    result
}

fn render_changes(
    transaction: &Transaction,
    target: &dyn Fn(&str) -> Option<Arc<TargetTable>>,
    skip: &BTreeSet<u32>,
    statements: &mut Vec<Statement>,
) -> Result<usize, RenderError> {
    let mut shapes: BTreeMap<u32, Arc<Relation>> = transaction.relations.clone();
    let mut skipped = 0;
    for change in &transaction.changes {
        if let Change::Insert(Insert { relation, .. })
        | Change::Update(Update { relation, .. })
        | Change::Delete(Delete { relation, .. }) = change
        {
            // (A relation the transaction never described is reported below all the same.)
            if skip.contains(relation) && shapes.contains_key(relation) {
                skipped += 1;
                continue;
            }
        }
        let table = |oid: u32| -> Result<(Arc<Relation>, Arc<TargetTable>), RenderError> {
            let relation = shapes
                .get(&oid)
                .cloned()
                .ok_or(RenderError::UnknownRelation(oid))?;
            let name = display_name(&relation);
            let other = target(&name).ok_or(RenderError::UnknownTarget(name))?;
            Ok((relation, other))
        };
        let statement = match change {
            Change::Insert(insert) => {
                let (relation, other) = table(insert.relation)?;
                let (template, values) = insert_statement(&relation, &other, &insert.new)?;
                Statement {
                    template,
                    values,
                    kind: Expect::Insert,
                    table: display_name(&relation),
                    row: row_key(&relation, &insert.new),
                    rows: 1,
                    must_find: 0,
                }
            }
            Change::Update(update) => {
                let (relation, other) = table(update.relation)?;
                let (template, values) =
                    update_statement(&relation, &other, update.old.as_ref(), &update.new)?;
                Statement {
                    template,
                    values,
                    kind: Expect::Update,
                    table: display_name(&relation),
                    // A key that changed (an old key sent) or a whole old row: no row key.
                    row: update
                        .old
                        .is_none()
                        .then(|| row_key(&relation, &update.new))
                        .flatten(),
                    rows: 1,
                    must_find: 1,
                }
            }
            Change::Delete(delete) => {
                let (relation, other) = table(delete.relation)?;
                let (template, values) = delete_statement(&relation, &other, &delete.old)?;
                Statement {
                    template,
                    values,
                    kind: Expect::Delete,
                    table: display_name(&relation),
                    row: match &delete.old {
                        OldRow::Key(tuple) => row_key(&relation, tuple),
                        OldRow::Full(_) => None,
                    },
                    rows: 1,
                    must_find: 1,
                }
            }
            Change::Truncate(truncate) => {
                let tables = truncate
                    .relations
                    .iter()
                    .map(|oid| table(*oid))
                    .collect::<Result<Vec<_>, _>>()?;
                let names: Vec<&str> = tables
                    .iter()
                    .map(|(_, other)| other.name.as_str())
                    .collect();
                let mut template = format!("TRUNCATE {}", names.join(", "));
                if truncate.restart_identity {
                    template.push_str(" RESTART IDENTITY");
                }
                if truncate.cascade {
                    template.push_str(" CASCADE");
                }
                Statement {
                    template,
                    values: Vec::new(),
                    row: None,
                    rows: 1,
                    must_find: 0,
                    kind: Expect::Truncate,
                    table: tables
                        .iter()
                        .map(|(relation, _)| display_name(relation))
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            }
            Change::Relation(relation) => {
                shapes.insert(relation.oid, Arc::clone(relation));
                continue;
            }
            Change::Message(_) => continue,
        };
        statements.push(statement);
    }
    Ok(skipped)
}

/// A column's value: `None` for a TOASTed value left out as unchanged, `Some(None)` for NULL.
fn value(
    relation: &Relation,
    index: usize,
    column: &Column,
) -> Result<Option<Option<String>>, RenderError> {
    let name = || relation.columns[index].name.clone();
    match column {
        Column::Null => Ok(Some(None)),
        Column::UnchangedToast => Ok(None),
        Column::Text(bytes) => std::str::from_utf8(bytes)
            .map(|text| Some(Some(text.to_owned())))
            .map_err(|_| RenderError::NotUtf8 {
                table: display_name(relation),
                column: name(),
            }),
        Column::Binary(_) => Err(RenderError::Binary {
            table: display_name(relation),
            column: name(),
        }),
    }
}

/// The values of a statement, numbered as they are added.
#[derive(Default)]
struct Values(Vec<Option<String>>);

impl Values {
    /// Adds `value`; its placeholder (`$n`).
    fn add(&mut self, value: Option<String>) -> String {
        self.0.push(value);
        format!("${}", self.0.len())
    }
}

/// Checks that `tuple` has one value per column of `relation`.
fn check_width(relation: &Relation, tuple: &Tuple) -> Result<(), RenderError> {
    if tuple.0.len() == relation.columns.len() {
        Ok(())
    } else {
        Err(RenderError::Width {
            table: display_name(relation),
            expected: relation.columns.len(),
            found: tuple.0.len(),
        })
    }
}

/// The other side's type of a column, checking it has the column.
fn target_type<'a>(
    relation: &Relation,
    other: &'a TargetTable,
    index: usize,
) -> Result<&'a str, RenderError> {
    let column = &relation.columns[index].name;
    other
        .columns
        .get(column)
        .map(String::as_str)
        .ok_or_else(|| RenderError::MissingColumn {
            table: display_name(relation),
            column: column.clone(),
        })
}

type Rendered = (String, Vec<Option<String>>);

fn insert_statement(
    relation: &Relation,
    other: &TargetTable,
    new: &Tuple,
) -> Result<Rendered, RenderError> {
    check_width(relation, new)?;
    let (mut names, mut placeholders, mut values) = (Vec::new(), Vec::new(), Values::default());
    for (index, column) in new.0.iter().enumerate() {
        target_type(relation, other, index)?;
        let value = value(relation, index, column)?.ok_or_else(|| RenderError::Unchanged {
            table: display_name(relation),
            column: relation.columns[index].name.clone(),
        })?;
        names.push(quote_identifier(&relation.columns[index].name));
        placeholders.push(values.add(value));
    }
    let template = format!(
        "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({}){}",
        other.name,
        names.join(", "),
        placeholders.join(", "),
        conflict_clause(relation, other, &names)
    );
    Ok((template, values.0))
}

/// An insert's ` ON CONFLICT (key) DO UPDATE SET …` (every column but the key's and the
/// `GENERATED ALWAYS` identity's, from `EXCLUDED`), `DO NOTHING` when no column is left,
/// nothing when the table has no key. `names`: the relation's columns, quoted, in order.
pub(super) fn conflict_clause(
    relation: &Relation,
    other: &TargetTable,
    names: &[String],
) -> String {
    let keys = unique_columns(relation, other);
    if keys.is_empty() {
        return String::new();
    }
    let conflict: Vec<&str> = keys.iter().map(|index| names[*index].as_str()).collect();
    let updates: Vec<String> = names
        .iter()
        .enumerate()
        .filter(|(index, _)| {
            !keys.contains(index)
                && !other
                    .always_identity
                    .contains(&relation.columns[*index].name)
        })
        .map(|(_, name)| format!("{name} = EXCLUDED.{name}"))
        .collect();
    if updates.is_empty() {
        format!(" ON CONFLICT ({}) DO NOTHING", conflict.join(", "))
    } else {
        format!(
            " ON CONFLICT ({}) DO UPDATE SET {}",
            conflict.join(", "),
            updates.join(", ")
        )
    }
}

fn update_statement(
    relation: &Relation,
    other: &TargetTable,
    old: Option<&OldRow>,
    new: &Tuple,
) -> Result<Rendered, RenderError> {
    check_width(relation, new)?;
    let (mut sets, mut values) = (Vec::new(), Values::default());
    for (index, column) in new.0.iter().enumerate() {
        target_type(relation, other, index)?;
        if other
            .always_identity
            .contains(&relation.columns[index].name)
        {
            continue;
        }
        if let Some(value) = value(relation, index, column)? {
            let placeholder = values.add(value);
            sets.push(format!(
                "{} = {placeholder}",
                quote_identifier(&relation.columns[index].name)
            ));
        }
    }
    if sets.is_empty() {
        // Nothing but unchanged TOASTed values: still find the row, so an absent one shows.
        let first = quote_identifier(&relation.columns[0].name);
        sets.push(format!("{first} = {first}"));
    }
    let mut template = format!("UPDATE {} SET {}", other.name, sets.join(", "));
    let filter = row_filter(relation, other, old, new, &mut values)?;
    push_filter(other, &filter, &mut template);
    Ok((template, values.0))
}

fn delete_statement(
    relation: &Relation,
    other: &TargetTable,
    old: &OldRow,
) -> Result<Rendered, RenderError> {
    let mut values = Values::default();
    let tuple = match old {
        OldRow::Key(tuple) | OldRow::Full(tuple) => tuple,
    };
    let filter = row_filter(relation, other, Some(old), tuple, &mut values)?;
    let mut template = format!("DELETE FROM {}", other.name);
    push_filter(other, &filter, &mut template);
    Ok((template, values.0))
}

/// How a statement finds its row.
enum Filter {
    /// By the key: `WHERE "id" = $1`.
    Key(String),
    /// By every column of the old row, one row only.
    Full(String),
}

fn push_filter(other: &TargetTable, filter: &Filter, template: &mut String) {
    match filter {
        Filter::Key(condition) => {
            let _ = write!(template, " WHERE {condition}");
        }
        Filter::Full(condition) => {
            let _ = write!(
                template,
                " WHERE ctid = (SELECT ctid FROM {} WHERE {condition} LIMIT 1)",
                other.name
            );
        }
    }
}

/// The values of `tuple`'s replica identity key, when `relation` has one (not `REPLICA
/// IDENTITY FULL`) and every key value is there.
fn row_key(relation: &Relation, tuple: &Tuple) -> Option<Vec<Option<String>>> {
    if relation.replica_identity == ReplicaIdentity::Full || tuple.0.len() != relation.columns.len()
    {
        return None;
    }
    let keys: Vec<usize> = relation
        .columns
        .iter()
        .enumerate()
        .filter(|(_, column)| column.is_key())
        .map(|(index, _)| index)
        .collect();
    if keys.is_empty() {
        return None;
    }
    keys.into_iter()
        .map(|index| match &tuple.0[index] {
            Column::Null => Some(None),
            Column::Text(bytes) => std::str::from_utf8(bytes)
                .ok()
                .map(|text| Some(text.to_owned())),
            Column::UnchangedToast | Column::Binary(_) => None,
        })
        .collect()
}

/// The indexes of the columns that find one row: the relation's replica identity key, or,
/// under `REPLICA IDENTITY FULL` (which marks every column), the other side's primary key
/// when the relation has all its columns; empty when there is neither.
fn unique_columns(relation: &Relation, other: &TargetTable) -> Vec<usize> {
    if relation.replica_identity != ReplicaIdentity::Full {
        return relation
            .columns
            .iter()
            .enumerate()
            .filter(|(_, column)| column.is_key())
            .map(|(index, _)| index)
            .collect();
    }
    let found: Vec<usize> = other
        .primary_key
        .iter()
        .filter_map(|key| {
            relation
                .columns
                .iter()
                .position(|column| &column.name == key)
        })
        .collect();
    if found.len() == other.primary_key.len() {
        found
    } else {
        Vec::new()
    }
}

/// The condition that finds the row an update or delete changed: the old key when pgoutput
/// sent one, the new row's key when the key did not change; under `REPLICA IDENTITY FULL` the
/// old row's primary key, or the whole old row when the table has none.
fn row_filter(
    relation: &Relation,
    other: &TargetTable,
    old: Option<&OldRow>,
    new: &Tuple,
    values: &mut Values,
) -> Result<Filter, RenderError> {
    let keys = unique_columns(relation, other);
    if let Some(OldRow::Full(tuple)) = old.filter(|_| keys.is_empty()) {
        check_width(relation, tuple)?;
        let mut conditions = Vec::new();
        for (index, column) in tuple.0.iter().enumerate() {
            let kind = target_type(relation, other, index)?;
            let name = quote_identifier(&relation.columns[index].name);
            match value(relation, index, column)? {
                None => {}
                Some(None) => conditions.push(format!("{name} IS NULL")),
                Some(Some(text)) => {
                    let placeholder = values.add(Some(text));
                    conditions.push(format!(
                        "({name})::text IS NOT DISTINCT FROM ({placeholder}::{kind})::text"
                    ));
                }
            }
        }
        if conditions.is_empty() {
            return Err(RenderError::NoIdentity(display_name(relation)));
        }
        return Ok(Filter::Full(conditions.join(" AND ")));
    }
    let tuple = match old {
        Some(OldRow::Key(tuple) | OldRow::Full(tuple)) => tuple,
        None => new,
    };
    check_width(relation, tuple)?;
    if keys.is_empty() {
        return Err(RenderError::NoIdentity(display_name(relation)));
    }
    let mut conditions = Vec::new();
    for index in keys {
        target_type(relation, other, index)?;
        let name = quote_identifier(&relation.columns[index].name);
        match value(relation, index, &tuple.0[index])? {
            Some(None) => conditions.push(format!("{name} IS NULL")),
            Some(Some(text)) => {
                let placeholder = values.add(Some(text));
                conditions.push(format!("{name} = {placeholder}"));
            }
            None => {
                return Err(RenderError::Unchanged {
                    table: display_name(relation),
                    column: relation.columns[index].name.clone(),
                })
            }
        }
    }
    Ok(Filter::Key(conditions.join(" AND ")))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::wal::pgoutput::{Delete, Insert, RelationColumn, Truncate, Update};

    fn relation(identity: ReplicaIdentity, keys: &[bool]) -> Relation {
        Relation {
            oid: 7,
            namespace: "public".to_owned(),
            name: "it's".to_owned(),
            replica_identity: identity,
            columns: keys
                .iter()
                .enumerate()
                .map(|(index, key)| RelationColumn {
                    flags: u8::from(*key),
                    name: format!("c{index}"),
                    type_oid: 25,
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    fn text(value: &str) -> Column {
        Column::Text(Bytes::copy_from_slice(value.as_bytes()))
    }

    fn transaction(relation: Relation, changes: Vec<Change>) -> Transaction {
        Transaction::of_one_table(Arc::new(relation), changes)
    }

    fn target(columns: &[&str]) -> impl Fn(&str) -> Option<Arc<TargetTable>> {
        keyed_target(columns, &[])
    }

    fn keyed_target(
        columns: &[&str],
        primary_key: &[&str],
    ) -> impl Fn(&str) -> Option<Arc<TargetTable>> {
        let table = Arc::new(TargetTable {
            name: "\"public\".\"it's\"".to_owned(),
            columns: columns
                .iter()
                .map(|column| ((*column).to_owned(), "text".to_owned()))
                .collect(),
            always_identity: std::collections::BTreeSet::new(),
            primary_key: primary_key.iter().map(|key| (*key).to_owned()).collect(),
        });
        move |name: &str| (name == "public.it's").then(|| Arc::clone(&table))
    }

    fn rendered(
        transaction: &Transaction,
        columns: &[&str],
    ) -> Result<Vec<Statement>, RenderError> {
        let mut statements = Vec::new();
        render(transaction, &target(columns), &mut statements)?;
        Ok(statements)
    }

    fn some(values: &[Option<&str>]) -> Vec<Option<String>> {
        values
            .iter()
            .map(|value| value.map(str::to_owned))
            .collect()
    }

    #[test]
    fn inserts_are_upserts_on_the_key_with_their_values_apart() {
        let tx = transaction(
            relation(ReplicaIdentity::Default, &[true, false]),
            vec![Change::Insert(Insert {
                relation: 7,
                new: Tuple(vec![text("1"), text("o'clock")]),
            })],
        );
        let statements = rendered(&tx, &["c0", "c1"]).unwrap();
        assert_eq!(
            statements,
            vec![Statement {
                template:
                    "INSERT INTO \"public\".\"it's\" (\"c0\", \"c1\") OVERRIDING SYSTEM VALUE \
                           VALUES ($1, $2) \
                           ON CONFLICT (\"c0\") DO UPDATE SET \"c1\" = EXCLUDED.\"c1\""
                        .to_owned(),
                values: some(&[Some("1"), Some("o'clock")]),
                kind: Expect::Insert,
                table: "public.it's".to_owned(),
                row: Some(some(&[Some("1")])),
                rows: 1,
                must_find: 0,
            }]
        );
    }

    #[test]
    fn updates_find_the_old_key_and_skip_unchanged_toast() {
        let tx = transaction(
            relation(ReplicaIdentity::Default, &[true, false, false]),
            vec![
                Change::Update(Update {
                    relation: 7,
                    old: Some(OldRow::Key(Tuple(vec![
                        text("1"),
                        Column::Null,
                        Column::Null,
                    ]))),
                    new: Tuple(vec![text("2"), Column::UnchangedToast, Column::Null]),
                }),
                Change::Update(Update {
                    relation: 7,
                    old: None,
                    new: Tuple(vec![text("2"), text("x"), Column::Null]),
                }),
            ],
        );
        let statements = rendered(&tx, &["c0", "c1", "c2"]).unwrap();
        let shown: Vec<(&str, Vec<Option<String>>)> = statements
            .iter()
            .map(|statement| (statement.template.as_str(), statement.values.clone()))
            .collect();
        assert_eq!(
            shown,
            vec![
                (
                    "UPDATE \"public\".\"it's\" SET \"c0\" = $1, \"c2\" = $2 WHERE \"c0\" = $3",
                    some(&[Some("2"), None, Some("1")])
                ),
                (
                    "UPDATE \"public\".\"it's\" SET \"c0\" = $1, \"c1\" = $2, \"c2\" = $3 \
                     WHERE \"c0\" = $4",
                    some(&[Some("2"), Some("x"), None, Some("2")])
                ),
            ]
        );
        assert!(statements
            .iter()
            .all(|statement| statement.kind == Expect::Update));
    }

    #[test]
    fn full_identity_finds_one_row_by_every_column_through_its_type() {
        let tx = transaction(
            relation(ReplicaIdentity::Full, &[false, false]),
            vec![Change::Delete(Delete {
                relation: 7,
                old: OldRow::Full(Tuple(vec![text("{\"a\": 1}"), Column::Null])),
            })],
        );
        let statements = rendered(&tx, &["c0", "c1"]).unwrap();
        assert_eq!(
            statements[0].template,
            "DELETE FROM \"public\".\"it's\" WHERE ctid = (SELECT ctid FROM \
             \"public\".\"it's\" WHERE (\"c0\")::text IS NOT DISTINCT FROM \
             ($1::text)::text AND \"c1\" IS NULL LIMIT 1)"
        );
        assert_eq!(statements[0].values, some(&[Some("{\"a\": 1}")]));
    }

    #[test]
    fn full_identity_with_a_primary_key_upserts_and_finds_rows_by_it() {
        let tx = transaction(
            relation(ReplicaIdentity::Full, &[true, true]),
            vec![
                Change::Insert(Insert {
                    relation: 7,
                    new: Tuple(vec![text("1"), text("a")]),
                }),
                Change::Update(Update {
                    relation: 7,
                    old: Some(OldRow::Full(Tuple(vec![text("1"), text("a")]))),
                    new: Tuple(vec![text("2"), text("b")]),
                }),
                Change::Delete(Delete {
                    relation: 7,
                    old: OldRow::Full(Tuple(vec![text("2"), text("b")])),
                }),
            ],
        );
        let mut statements = Vec::new();
        render(&tx, &keyed_target(&["c0", "c1"], &["c0"]), &mut statements).unwrap();
        let shown: Vec<(&str, Vec<Option<String>>)> = statements
            .iter()
            .map(|statement| (statement.template.as_str(), statement.values.clone()))
            .collect();
        assert_eq!(
            shown,
            vec![
                (
                    "INSERT INTO \"public\".\"it's\" (\"c0\", \"c1\") OVERRIDING SYSTEM VALUE \
                     VALUES ($1, $2) ON CONFLICT (\"c0\") DO UPDATE SET \"c1\" = EXCLUDED.\"c1\"",
                    some(&[Some("1"), Some("a")])
                ),
                (
                    "UPDATE \"public\".\"it's\" SET \"c0\" = $1, \"c1\" = $2 WHERE \"c0\" = $3",
                    some(&[Some("2"), Some("b"), Some("1")])
                ),
                (
                    "DELETE FROM \"public\".\"it's\" WHERE \"c0\" = $1",
                    some(&[Some("2")])
                ),
            ]
        );
    }

    #[test]
    fn truncates_keep_their_options() {
        let tx = transaction(
            relation(ReplicaIdentity::Default, &[true]),
            vec![Change::Truncate(Truncate {
                cascade: true,
                restart_identity: true,
                relations: vec![7],
            })],
        );
        let statements = rendered(&tx, &["c0"]).unwrap();
        assert_eq!(
            statements[0].template,
            "TRUNCATE \"public\".\"it's\" RESTART IDENTITY CASCADE"
        );
        assert_eq!(statements[0].kind, Expect::Truncate);
    }

    #[test]
    fn a_column_the_other_side_lacks_writes_nothing() {
        let tx = transaction(
            relation(ReplicaIdentity::Default, &[true, false]),
            vec![Change::Insert(Insert {
                relation: 7,
                new: Tuple(vec![text("1"), text("2")]),
            })],
        );
        let before = Statement {
            template: "TRUNCATE t".to_owned(),
            values: Vec::new(),
            kind: Expect::Truncate,
            table: "t".to_owned(),
            row: None,
            rows: 1,
            must_find: 0,
        };
        let mut statements = vec![before.clone()];
        let err = render(&tx, &target(&["c0"]), &mut statements).unwrap_err();
        assert_eq!(
            err,
            RenderError::MissingColumn {
                table: "public.it's".to_owned(),
                column: "c1".to_owned()
            }
        );
        assert_eq!(statements, vec![before]);
    }

    proptest::proptest! {
        /// Whatever text the values hold (quotes, `;`, backslashes, dollar quotes, comment
        /// marks), it never enters the SQL: the template depends on the shape alone, and the
        /// values arrive as they were.
        #[test]
        fn values_never_enter_the_sql(
            values in proptest::collection::vec("[a-z'\";\\\\$ /*-]{0,12}", 1..6)
        ) {
            let changes = values
                .iter()
                .map(|value| Change::Insert(Insert {
                    relation: 7,
                    new: Tuple(vec![text(value), text(value)]),
                }))
                .collect::<Vec<_>>();
            let tx = transaction(relation(ReplicaIdentity::Default, &[true, false]), changes);
            let statements = rendered(&tx, &["c0", "c1"]).unwrap();
            proptest::prop_assert_eq!(statements.len(), values.len());
            for (statement, value) in statements.iter().zip(&values) {
                proptest::prop_assert_eq!(&statement.template, &statements[0].template);
                proptest::prop_assert_eq!(
                    &statement.values,
                    &vec![Some(value.clone()), Some(value.clone())]
                );
            }
        }
    }

    proptest::proptest! {
        /// Leaving out the relations the set path applies renders exactly the other
        /// statements, in their order, and counts what it left out.
        #[test]
        fn render_except_leaves_out_the_skipped_relations_alone(
            changes in proptest::collection::vec((proptest::bool::ANY, 0..3u8, "[a-c]"), 0..12)
        ) {
            let first = Arc::new(relation(ReplicaIdentity::Default, &[true, false]));
            let second = Arc::new(Relation { oid: 8, name: "other".to_owned(), ..(*first).clone() });
            let changes: Vec<Change> = changes
                .iter()
                .map(|(in_second, kind, key)| {
                    let oid = if *in_second { 8 } else { 7 };
                    let new = Tuple(vec![text(key), text("v")]);
                    match kind {
                        0 => Change::Insert(Insert { relation: oid, new }),
                        1 => Change::Update(Update { relation: oid, old: None, new }),
                        _ => Change::Delete(Delete { relation: oid, old: OldRow::Key(new) }),
                    }
                })
                .collect();
            let mut tx = transaction((*first).clone(), changes);
            tx.relations.insert(8, second);
            let table = Arc::new(TargetTable {
                name: "\"public\".\"t\"".to_owned(),
                columns: [("c0", "text"), ("c1", "text")]
                    .into_iter()
                    .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
                    .collect(),
                always_identity: std::collections::BTreeSet::new(),
                primary_key: Vec::new(),
            });
            let target = move |_: &str| Some(Arc::clone(&table));
            let mut all = Vec::new();
            render(&tx, &target, &mut all).unwrap();
            let mut kept = Vec::new();
            let skipped = render_except(&tx, &target, &BTreeSet::from([8]), &mut kept).unwrap();
            let (others, of_skipped): (Vec<Statement>, Vec<Statement>) =
                all.into_iter().partition(|statement| statement.table != "public.other");
            proptest::prop_assert_eq!(kept, others);
            proptest::prop_assert_eq!(skipped, of_skipped.len());
        }
    }

    #[test]
    fn rows_without_a_way_to_find_them_are_refused() {
        let tx = transaction(
            relation(ReplicaIdentity::Nothing, &[false]),
            vec![Change::Delete(Delete {
                relation: 7,
                old: OldRow::Key(Tuple(vec![text("1")])),
            })],
        );
        assert_eq!(
            rendered(&tx, &["c0"]).unwrap_err(),
            RenderError::NoIdentity("public.it's".to_owned())
        );
    }
}
