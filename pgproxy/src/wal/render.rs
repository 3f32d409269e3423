//! A captured transaction's row changes written as SQL for the other side: one statement per
//! change, with the values as the literals pgoutput sent (each type's own text form, which its
//! input function reads back exactly). Pure: the caller gives the other side's shape of every
//! table ([`TargetTable`]), checked beforehand.
//!
//! - An insert is an upsert on the table's key (`ON CONFLICT (key) DO UPDATE`): a row the
//!   other side already holds (copied by a backfill, say) ends as the captured image.
//! - An update or delete finds its row by the key (`"id" = '7'`, which the key's index
//!   serves); under `REPLICA IDENTITY FULL` by every column of the old row, one row at a time
//!   (a table without a key may hold the same row twice). Columns are compared through their
//!   own type (`(c)::text IS NOT DISTINCT FROM ('…'::type)::text`), so types without an
//!   equality operator (`json`, `point`) match too.
//! - An update leaves out the TOASTed columns it did not change (pgoutput does not send them).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use super::connection::{quote_identifier, quote_literal};
use super::pgoutput::{Column, OldRow, Relation, ReplicaIdentity, Tuple};
use super::transaction::{Change, Transaction};

/// The other side's shape of one table, as the capture found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetTable {
    /// The table's name as SQL (`"schema"."name"`).
    pub name: String,
    /// Its columns' types as SQL (`format_type`), by column name.
    pub columns: BTreeMap<String, String>,
}

/// A rendered statement: what it does and to which table (to read its command tag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// What it does.
    pub kind: Expect,
    /// The table (`schema.name`), or the tables of a truncate.
    pub table: String,
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

/// Appends one statement per change of `transaction` to `sql` (each ending in `;`) and what
/// each one's command tag means to `expect`. `target` gives the other side's shape of a table
/// by its [`display_name`].
///
/// # Errors
/// A [`RenderError`]; nothing is appended then.
pub fn render(
    transaction: &Transaction,
    target: &dyn Fn(&str) -> Option<Arc<TargetTable>>,
    sql: &mut String,
    expect: &mut Vec<Statement>,
) -> Result<(), RenderError> {
    let (sql_len, expect_len) = (sql.len(), expect.len());
    let result = render_changes(transaction, target, sql, expect);
    if result.is_err() {
        sql.truncate(sql_len);
        expect.truncate(expect_len);
    }
    result
}

fn render_changes(
    transaction: &Transaction,
    target: &dyn Fn(&str) -> Option<Arc<TargetTable>>,
    sql: &mut String,
    expect: &mut Vec<Statement>,
) -> Result<(), RenderError> {
    let mut shapes: BTreeMap<u32, Arc<Relation>> = transaction.relations.clone();
    for change in &transaction.changes {
        let table = |oid: u32| -> Result<(Arc<Relation>, Arc<TargetTable>), RenderError> {
            let relation = shapes
                .get(&oid)
                .cloned()
                .ok_or(RenderError::UnknownRelation(oid))?;
            let name = display_name(&relation);
            let other = target(&name).ok_or(RenderError::UnknownTarget(name))?;
            Ok((relation, other))
        };
        match change {
            Change::Insert(insert) => {
                let (relation, other) = table(insert.relation)?;
                insert_statement(&relation, &other, &insert.new, sql)?;
                expect.push(Statement {
                    kind: Expect::Insert,
                    table: display_name(&relation),
                });
            }
            Change::Update(update) => {
                let (relation, other) = table(update.relation)?;
                update_statement(&relation, &other, update.old.as_ref(), &update.new, sql)?;
                expect.push(Statement {
                    kind: Expect::Update,
                    table: display_name(&relation),
                });
            }
            Change::Delete(delete) => {
                let (relation, other) = table(delete.relation)?;
                delete_statement(&relation, &other, &delete.old, sql)?;
                expect.push(Statement {
                    kind: Expect::Delete,
                    table: display_name(&relation),
                });
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
                let _ = write!(sql, "TRUNCATE {}", names.join(", "));
                if truncate.restart_identity {
                    sql.push_str(" RESTART IDENTITY");
                }
                if truncate.cascade {
                    sql.push_str(" CASCADE");
                }
                sql.push(';');
                expect.push(Statement {
                    kind: Expect::Truncate,
                    table: tables
                        .iter()
                        .map(|(relation, _)| display_name(relation))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            Change::Relation(relation) => {
                shapes.insert(relation.oid, Arc::clone(relation));
            }
            Change::Message(_) => {}
        }
    }
    Ok(())
}

/// A column's value as an SQL literal (`NULL`, or the text in quotes); `None` for a TOASTed
/// value left out as unchanged.
fn literal(
    relation: &Relation,
    index: usize,
    column: &Column,
) -> Result<Option<String>, RenderError> {
    let name = || relation.columns[index].name.clone();
    match column {
        Column::Null => Ok(Some("NULL".to_owned())),
        Column::UnchangedToast => Ok(None),
        Column::Text(bytes) => std::str::from_utf8(bytes)
            .map(|text| Some(quote_literal(text)))
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

fn insert_statement(
    relation: &Relation,
    other: &TargetTable,
    new: &Tuple,
    sql: &mut String,
) -> Result<(), RenderError> {
    check_width(relation, new)?;
    let (mut names, mut values) = (Vec::new(), Vec::new());
    for (index, column) in new.0.iter().enumerate() {
        target_type(relation, other, index)?;
        let value = literal(relation, index, column)?.ok_or_else(|| RenderError::Unchanged {
            table: display_name(relation),
            column: relation.columns[index].name.clone(),
        })?;
        names.push(quote_identifier(&relation.columns[index].name));
        values.push(value);
    }
    let _ = write!(
        sql,
        "INSERT INTO {} ({}) VALUES ({})",
        other.name,
        names.join(", "),
        values.join(", ")
    );
    let keys: Vec<usize> = key_columns(relation);
    if relation.replica_identity != ReplicaIdentity::Full && !keys.is_empty() {
        let conflict: Vec<&str> = keys.iter().map(|index| names[*index].as_str()).collect();
        let updates: Vec<String> = names
            .iter()
            .enumerate()
            .filter(|(index, _)| !keys.contains(index))
            .map(|(_, name)| format!("{name} = EXCLUDED.{name}"))
            .collect();
        if updates.is_empty() {
            let _ = write!(sql, " ON CONFLICT ({}) DO NOTHING", conflict.join(", "));
        } else {
            let _ = write!(
                sql,
                " ON CONFLICT ({}) DO UPDATE SET {}",
                conflict.join(", "),
                updates.join(", ")
            );
        }
    }
    sql.push(';');
    Ok(())
}

fn update_statement(
    relation: &Relation,
    other: &TargetTable,
    old: Option<&OldRow>,
    new: &Tuple,
    sql: &mut String,
) -> Result<(), RenderError> {
    check_width(relation, new)?;
    let mut sets = Vec::new();
    for (index, column) in new.0.iter().enumerate() {
        target_type(relation, other, index)?;
        if let Some(value) = literal(relation, index, column)? {
            sets.push(format!(
                "{} = {value}",
                quote_identifier(&relation.columns[index].name)
            ));
        }
    }
    if sets.is_empty() {
        // Nothing but unchanged TOASTed values: still find the row, so an absent one shows.
        let first = quote_identifier(&relation.columns[0].name);
        sets.push(format!("{first} = {first}"));
    }
    let filter = row_filter(relation, other, old, new)?;
    let _ = write!(sql, "UPDATE {} SET {}", other.name, sets.join(", "));
    push_filter(other, &filter, sql);
    Ok(())
}

fn delete_statement(
    relation: &Relation,
    other: &TargetTable,
    old: &OldRow,
    sql: &mut String,
) -> Result<(), RenderError> {
    let filter = match old {
        OldRow::Key(tuple) => row_filter(relation, other, Some(old), tuple)?,
        OldRow::Full(tuple) => row_filter(relation, other, Some(old), tuple)?,
    };
    let _ = write!(sql, "DELETE FROM {}", other.name);
    push_filter(other, &filter, sql);
    Ok(())
}

/// How a statement finds its row.
enum Filter {
    /// By the key: `WHERE "id" = '7'`.
    Key(String),
    /// By every column of the old row, one row only.
    Full(String),
}

fn push_filter(other: &TargetTable, filter: &Filter, sql: &mut String) {
    match filter {
        Filter::Key(condition) => {
            let _ = write!(sql, " WHERE {condition};");
        }
        Filter::Full(condition) => {
            let _ = write!(
                sql,
                " WHERE ctid = (SELECT ctid FROM {} WHERE {condition} LIMIT 1);",
                other.name
            );
        }
    }
}

/// The indexes of the relation's replica identity columns.
fn key_columns(relation: &Relation) -> Vec<usize> {
    relation
        .columns
        .iter()
        .enumerate()
        .filter(|(_, column)| column.is_key())
        .map(|(index, _)| index)
        .collect()
}

/// The condition that finds the row an update or delete changed: the old key when pgoutput
/// sent one, the new row's key when the key did not change, the whole old row under
/// `REPLICA IDENTITY FULL`.
fn row_filter(
    relation: &Relation,
    other: &TargetTable,
    old: Option<&OldRow>,
    new: &Tuple,
) -> Result<Filter, RenderError> {
    if let Some(OldRow::Full(tuple)) = old {
        check_width(relation, tuple)?;
        let mut conditions = Vec::new();
        for (index, column) in tuple.0.iter().enumerate() {
            let kind = target_type(relation, other, index)?;
            let name = quote_identifier(&relation.columns[index].name);
            match literal(relation, index, column)? {
                None => {}
                Some(value) if value == "NULL" => conditions.push(format!("{name} IS NULL")),
                Some(value) => conditions.push(format!(
                    "({name})::text IS NOT DISTINCT FROM ({value}::{kind})::text"
                )),
            }
        }
        if conditions.is_empty() {
            return Err(RenderError::NoIdentity(display_name(relation)));
        }
        return Ok(Filter::Full(conditions.join(" AND ")));
    }
    let tuple = match old {
        Some(OldRow::Key(tuple)) => tuple,
        _ => new,
    };
    check_width(relation, tuple)?;
    let keys = key_columns(relation);
    if keys.is_empty() {
        return Err(RenderError::NoIdentity(display_name(relation)));
    }
    let mut conditions = Vec::new();
    for index in keys {
        target_type(relation, other, index)?;
        let name = quote_identifier(&relation.columns[index].name);
        match literal(relation, index, &tuple.0[index])? {
            Some(value) if value == "NULL" => conditions.push(format!("{name} IS NULL")),
            Some(value) => conditions.push(format!("{name} = {value}")),
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
    use crate::wal::lsn::Lsn;
    use crate::wal::pgoutput::{Begin, Commit, Delete, Insert, RelationColumn, Truncate, Update};

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
        let begin = Begin {
            final_lsn: Lsn(10),
            timestamp: 0,
            xid: 1,
        };
        Transaction {
            begin,
            commit: Commit {
                flags: 0,
                commit_lsn: Lsn(10),
                end_lsn: Lsn(20),
                timestamp: 0,
            },
            origin: None,
            relations: BTreeMap::from([(relation.oid, Arc::new(relation))]),
            types: BTreeMap::new(),
            changes,
        }
    }

    fn target(columns: &[&str]) -> impl Fn(&str) -> Option<Arc<TargetTable>> {
        let table = Arc::new(TargetTable {
            name: "\"public\".\"it's\"".to_owned(),
            columns: columns
                .iter()
                .map(|column| ((*column).to_owned(), "text".to_owned()))
                .collect(),
        });
        move |name: &str| (name == "public.it's").then(|| Arc::clone(&table))
    }

    fn rendered(
        transaction: &Transaction,
        columns: &[&str],
    ) -> Result<(String, Vec<Expect>), RenderError> {
        let (mut sql, mut expect) = (String::new(), Vec::new());
        render(transaction, &target(columns), &mut sql, &mut expect)?;
        Ok((
            sql,
            expect.into_iter().map(|statement| statement.kind).collect(),
        ))
    }

    #[test]
    fn inserts_are_upserts_on_the_key_with_quoted_values() {
        let tx = transaction(
            relation(ReplicaIdentity::Default, &[true, false]),
            vec![Change::Insert(Insert {
                relation: 7,
                new: Tuple(vec![text("1"), text("o'clock")]),
            })],
        );
        let (sql, expect) = rendered(&tx, &["c0", "c1"]).unwrap();
        assert_eq!(
            sql,
            "INSERT INTO \"public\".\"it's\" (\"c0\", \"c1\") VALUES ('1', 'o''clock') \
             ON CONFLICT (\"c0\") DO UPDATE SET \"c1\" = EXCLUDED.\"c1\";"
        );
        assert_eq!(expect, vec![Expect::Insert]);
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
        let (sql, expect) = rendered(&tx, &["c0", "c1", "c2"]).unwrap();
        assert_eq!(
            sql,
            "UPDATE \"public\".\"it's\" SET \"c0\" = '2', \"c2\" = NULL WHERE \"c0\" = '1';\
             UPDATE \"public\".\"it's\" SET \"c0\" = '2', \"c1\" = 'x', \"c2\" = NULL \
             WHERE \"c0\" = '2';"
        );
        assert_eq!(expect, vec![Expect::Update, Expect::Update]);
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
        let (sql, _) = rendered(&tx, &["c0", "c1"]).unwrap();
        assert_eq!(
            sql,
            "DELETE FROM \"public\".\"it's\" WHERE ctid = (SELECT ctid FROM \
             \"public\".\"it's\" WHERE (\"c0\")::text IS NOT DISTINCT FROM \
             ('{\"a\": 1}'::text)::text AND \"c1\" IS NULL LIMIT 1);"
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
        let (sql, expect) = rendered(&tx, &["c0"]).unwrap();
        assert_eq!(
            sql,
            "TRUNCATE \"public\".\"it's\" RESTART IDENTITY CASCADE;"
        );
        assert_eq!(expect, vec![Expect::Truncate]);
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
        let mut sql = "BEGIN;".to_owned();
        let before = Statement {
            kind: Expect::Truncate,
            table: "t".to_owned(),
        };
        let mut expect = vec![before.clone()];
        let err = render(&tx, &target(&["c0"]), &mut sql, &mut expect).unwrap_err();
        assert_eq!(
            err,
            RenderError::MissingColumn {
                table: "public.it's".to_owned(),
                column: "c1".to_owned()
            }
        );
        assert_eq!(sql, "BEGIN;");
        assert_eq!(expect, vec![before]);
    }

    proptest::proptest! {
        /// Whatever text the values hold (quotes, `;`, backslashes, dollar quotes, comment
        /// marks), every change is exactly one statement and its values stay inside their
        /// literals: the SQL splits where the changes end, and only there.
        #[test]
        fn any_values_stay_inside_their_literals(
            values in proptest::collection::vec("[a-z'\";\\$ /*-]{0,12}", 1..6)
        ) {
            let changes = values
                .iter()
                .map(|value| Change::Insert(Insert {
                    relation: 7,
                    new: Tuple(vec![text(value), text(value)]),
                }))
                .collect::<Vec<_>>();
            let tx = transaction(relation(ReplicaIdentity::Default, &[true, false]), changes);
            let (sql, expect) = rendered(&tx, &["c0", "c1"]).unwrap();
            let statements = crate::statement::split_statements(&sql);
            proptest::prop_assert_eq!(statements.len(), values.len());
            proptest::prop_assert_eq!(expect.len(), values.len());
            for (statement, value) in statements.iter().zip(&values) {
                let literal = quote_literal(value);
                proptest::prop_assert!(
                    statement.ends_with("EXCLUDED.\"c1\""),
                    "{}", statement
                );
                proptest::prop_assert!(
                    statement.contains(&format!("VALUES ({literal}, {literal})")),
                    "{}", statement
                );
            }
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
