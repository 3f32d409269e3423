//! The plan of one table comparison: which columns are compared and how each side reads them.

use std::collections::BTreeMap;

use serde::Serialize;
use tandem_control::Side;

use crate::canonical::{ColumnReading, CompareKind};
use crate::database::{Database, Engine};
use crate::error::CompareError;
use crate::kinds::{projection, resolve_pair, ColumnKind, WireShape};
use crate::schema::TableSchema;

/// Which columns to compare, as the user asked: for every table, and per table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnSelection {
    /// The key columns (`None`: the primary key, else a unique index over non-null columns).
    pub key: Option<Vec<String>>,
    /// Only these columns (besides the key).
    pub only: Option<Vec<String>>,
    /// Everything but these columns (each may exist on one side only, or on neither).
    pub ignore: Vec<String>,
    /// Choices for one table (by its old side's name): its key and `only` replace the ones
    /// above, its ignored columns add to them.
    pub tables: BTreeMap<String, TableSelection>,
}

/// The choices aimed at one table (`--key orders=id`, `--columns orders.total`,
/// `--ignore-columns orders.legacy_flag`, `--table-where "orders=status <> 'draft'"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableSelection {
    /// The key columns.
    pub key: Option<Vec<String>>,
    /// Only these columns (besides the key).
    pub only: Option<Vec<String>>,
    /// Columns left out; each must exist on at least one side.
    pub ignore: Vec<String>,
    /// An SQL condition this table is restricted by, instead of the one for every table.
    pub filter: Option<String>,
    /// How the proxies' ordering keys name this table's rows (`/orders/{id}`: each `{column}`
    /// a key column), for the targeted recheck of keys written through two proxies at once.
    pub ordering_key: Option<String>,
}

impl TableSelection {
    /// Whether a copy of the table carries the column `name`: a key column, or a value these
    /// choices pick.
    #[must_use]
    pub fn copies(&self, key: &[String], name: &str) -> bool {
        let named = |names: &[String]| names.iter().any(|other| other == name);
        named(key) || (!named(&self.ignore) && self.only.as_deref().is_none_or(named))
    }
}

impl ColumnSelection {
    /// Reads the options as given on the command line: a `--key` value is `COLUMN,…` or
    /// `TABLE=COLUMN,…`; a `--columns` or `--ignore-columns` item is `COLUMN` or
    /// `TABLE.COLUMN`; a `--table-where` value is `TABLE=CONDITION` (its own flag, since a
    /// condition holds `=` itself).
    ///
    /// # Errors
    /// When a value names no column, or a condition no table or nothing to test.
    pub fn parse(
        keys: &[String],
        only: Option<&[String]>,
        ignore: &[String],
        filters: &[String],
    ) -> Result<ColumnSelection, CompareError> {
        let mut selection = ColumnSelection::default();
        let columns = |text: &str| -> Result<Vec<String>, CompareError> {
            let names: Vec<String> = text.split(',').map(|name| name.trim().to_owned()).collect();
            if names.iter().any(String::is_empty) {
                return Err(CompareError::InvalidOption(format!(
                    "--key {text:?} names an empty column"
                )));
            }
            Ok(names)
        };
        for key in keys {
            match key.split_once('=') {
                Some((table, names)) => {
                    selection.table(table).key = Some(columns(names)?);
                }
                None => selection.key = Some(columns(key)?),
            }
        }
        if let Some(only) = only {
            let mut global = Vec::new();
            for item in only {
                match item.split_once('.') {
                    Some((table, column)) => selection
                        .table(table)
                        .only
                        .get_or_insert_with(Vec::new)
                        .push(column.to_owned()),
                    None => global.push(item.clone()),
                }
            }
            selection.only = (!global.is_empty()).then_some(global);
        }
        for item in ignore {
            match item.split_once('.') {
                Some((table, column)) => selection.table(table).ignore.push(column.to_owned()),
                None => selection.ignore.push(item.clone()),
            }
        }
        for filter in filters {
            let aimed = filter
                .split_once('=')
                .map(|(table, condition)| (table.trim(), condition.trim()))
                .filter(|(table, condition)| !table.is_empty() && !condition.is_empty());
            let Some((table, condition)) = aimed else {
                return Err(CompareError::InvalidOption(format!(
                    "--table-where {filter:?}: expected TABLE=CONDITION"
                )));
            };
            selection.table(table).filter = Some(condition.to_owned());
        }
        Ok(selection)
    }

    fn table(&mut self, table: &str) -> &mut TableSelection {
        self.tables.entry(table.to_owned()).or_default()
    }

    /// The choices for `table`: its own, then those for every table.
    #[must_use]
    pub fn for_table(&self, table: &str) -> TableSelection {
        let scoped = self.tables.get(table);
        let mut ignore = self.ignore.clone();
        ignore.extend(
            scoped
                .iter()
                .flat_map(|scoped| scoped.ignore.iter().cloned()),
        );
        TableSelection {
            key: scoped
                .and_then(|scoped| scoped.key.clone())
                .or_else(|| self.key.clone()),
            only: scoped
                .and_then(|scoped| scoped.only.clone())
                .or_else(|| self.only.clone()),
            ignore,
            filter: scoped.and_then(|scoped| scoped.filter.clone()),
            ordering_key: scoped.and_then(|scoped| scoped.ordering_key.clone()),
        }
    }
}

/// How one side reads one column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideColumn {
    /// The SQL that reads it.
    pub projection: String,
    /// What that SQL returns.
    pub shape: WireShape,
    /// How the value becomes canonical.
    pub reading: ColumnReading,
    /// The expression to order and compare keys by (keys only).
    pub order_by: String,
    /// The declared type (PostgreSQL casts written values to it).
    pub declared: String,
    /// What the column physically holds on this side.
    pub storage: ColumnKind,
}

/// A column compared on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPair {
    /// Its name (the same on both sides).
    pub name: String,
    /// The old side's reading.
    pub old: SideColumn,
    /// The new side's reading.
    pub new: SideColumn,
}

impl ColumnPair {
    /// The reading on `side`.
    #[must_use]
    pub fn side(&self, side: Side) -> &SideColumn {
        match side {
            Side::Old => &self.old,
            Side::New => &self.new,
        }
    }
}

/// A column present on one side only (left out of the comparison).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchemaDifference {
    /// The column.
    pub column: String,
    /// The side that has it.
    pub only_in: Side,
}

/// Everything needed to compare one table pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePlan {
    /// The old side's table.
    pub old_table: String,
    /// The new side's table.
    pub new_table: String,
    /// Key columns, in key order.
    pub keys: Vec<ColumnPair>,
    /// Compared non-key columns.
    pub values: Vec<ColumnPair>,
    /// Columns left out because one side lacks them.
    pub schema_differences: Vec<SchemaDifference>,
}

impl TablePlan {
    /// Plans the comparison of `old` with `new`.
    ///
    /// # Errors
    /// When there is no key, a named column is missing, or a type cannot be compared.
    pub fn new(
        old_db: &Database,
        old: &TableSchema,
        new_db: &Database,
        new: &TableSchema,
        selection: &ColumnSelection,
    ) -> Result<TablePlan, CompareError> {
        TablePlan::build(old_db, old, new_db, new, selection, false)
    }

    /// Every column of `old` a copy to `new` would carry (the key and the values `selection`
    /// picks) that it cannot: missing on `new`, of a type either side does not support, or
    /// of types that cannot be compared (and so not written) one as the other. Empty when
    /// every column can be carried; unlike [`TablePlan::new`], it does not stop at the first.
    #[must_use]
    pub fn uncarried_columns(
        old_db: &Database,
        old: &TableSchema,
        new_db: &Database,
        new: &TableSchema,
        selection: &ColumnSelection,
    ) -> Vec<CompareError> {
        let selection = selection.for_table(&old.name);
        let key = selection
            .key
            .clone()
            .unwrap_or_else(|| old.identifying_key().to_vec());
        old.columns
            .iter()
            .filter(|column| selection.copies(&key, &column.name))
            .filter_map(|column| {
                if new.column(&column.name).is_none() {
                    return Some(CompareError::UnknownColumn {
                        table: new.name.clone(),
                        column: column.name.clone(),
                        side: Side::New,
                    });
                }
                pair_columns(old_db, old, new_db, new, &column.name).err()
            })
            .collect()
    }

    /// Plans the comparison of a table without any key as a multiset of whole rows: no key
    /// column, every selected column a value.
    ///
    /// # Errors
    /// When a named column is missing or a type cannot be compared.
    pub fn whole_rows(
        old_db: &Database,
        old: &TableSchema,
        new_db: &Database,
        new: &TableSchema,
        selection: &ColumnSelection,
    ) -> Result<TablePlan, CompareError> {
        TablePlan::build(old_db, old, new_db, new, selection, true)
    }

    fn build(
        old_db: &Database,
        old: &TableSchema,
        new_db: &Database,
        new: &TableSchema,
        selection: &ColumnSelection,
        whole_rows: bool,
    ) -> Result<TablePlan, CompareError> {
        // A column ignored for every table may be absent anywhere; one aimed at this table
        // must exist on at least one side (else it is a typo).
        let aimed = selection.tables.get(&old.name);
        if let Some(name) = aimed
            .iter()
            .flat_map(|aimed| &aimed.ignore)
            .find(|name| old.column(name).is_none() && new.column(name).is_none())
        {
            return Err(CompareError::UnknownColumn {
                table: old.name.clone(),
                column: name.clone(),
                side: Side::Old,
            });
        }
        let selection = &selection.for_table(&old.name);
        let identifying = |schema: &TableSchema| schema.identifying_key().to_vec();
        let key_names = match &selection.key {
            _ if whole_rows => Vec::new(),
            Some(key) => key.clone(),
            None if identifying(old).is_empty() => {
                return Err(CompareError::NoKey {
                    table: old.name.clone(),
                    side: Side::Old,
                })
            }
            None if identifying(new).is_empty() => {
                return Err(CompareError::NoKey {
                    table: new.name.clone(),
                    side: Side::New,
                })
            }
            None => identifying(old),
        };
        for (schema, side) in [(old, Side::Old), (new, Side::New)] {
            let named = key_names.iter().chain(selection.only.iter().flatten());
            for name in named {
                if schema.column(name).is_none() {
                    return Err(CompareError::UnknownColumn {
                        table: schema.name.clone(),
                        column: name.clone(),
                        side,
                    });
                }
            }
        }
        if key_names.is_empty() && !whole_rows {
            return Err(CompareError::InvalidOption(format!(
                "table {}: --key names no column",
                old.name
            )));
        }
        let mut keys = Vec::with_capacity(key_names.len());
        for name in &key_names {
            let pair = pair_columns(old_db, old, new_db, new, name)?;
            // SQLite UUIDs may be stored as text in any case or as blobs, which no single
            // ordering expression covers.
            let sqlite_uuid = pair.old.reading.kind == CompareKind::Uuid
                && (old_db.engine == Engine::Sqlite || new_db.engine == Engine::Sqlite);
            if sqlite_uuid
                || !matches!(
                    pair.old.reading.kind,
                    CompareKind::Number | CompareKind::Text | CompareKind::Uuid
                )
            {
                return Err(CompareError::UnsupportedKey {
                    table: old.name.clone(),
                    column: name.clone(),
                    declared: pair.old.declared,
                });
            }
            keys.push(pair);
        }
        let wanted = |name: &String| {
            !key_names.contains(name)
                && !selection.ignore.contains(name)
                && selection
                    .only
                    .as_ref()
                    .is_none_or(|only| only.contains(name))
        };
        let mut values = Vec::new();
        let mut schema_differences = Vec::new();
        for column in old.columns.iter().filter(|column| wanted(&column.name)) {
            if new.column(&column.name).is_some() {
                values.push(pair_columns(old_db, old, new_db, new, &column.name)?);
            } else {
                schema_differences.push(SchemaDifference {
                    column: column.name.clone(),
                    only_in: Side::Old,
                });
            }
        }
        for column in new.columns.iter().filter(|column| wanted(&column.name)) {
            if old.column(&column.name).is_none() {
                schema_differences.push(SchemaDifference {
                    column: column.name.clone(),
                    only_in: Side::New,
                });
            }
        }
        Ok(TablePlan {
            old_table: old.name.clone(),
            new_table: new.name.clone(),
            keys,
            values,
            schema_differences,
        })
    }

    /// Whether the table has no key and is compared as a multiset of whole rows
    /// ([`TablePlan::whole_rows`]).
    #[must_use]
    pub fn is_whole_rows(&self) -> bool {
        self.keys.is_empty()
    }

    /// The table name on `side`.
    #[must_use]
    pub fn table(&self, side: Side) -> &str {
        match side {
            Side::Old => &self.old_table,
            Side::New => &self.new_table,
        }
    }

    /// Every compared column, keys first.
    pub fn columns(&self) -> impl Iterator<Item = &ColumnPair> {
        self.keys.iter().chain(&self.values)
    }
}

fn pair_columns(
    old_db: &Database,
    old: &TableSchema,
    new_db: &Database,
    new: &TableSchema,
    name: &str,
) -> Result<ColumnPair, CompareError> {
    let unsupported = |schema: &TableSchema, side: Side| {
        let declared = schema
            .column(name)
            .map(|c| c.declared.clone())
            .unwrap_or_default();
        CompareError::UnsupportedType {
            table: schema.name.clone(),
            column: name.to_owned(),
            declared,
            side,
        }
    };
    let old_column = old
        .column(name)
        .ok_or_else(|| unsupported(old, Side::Old))?;
    let new_column = new
        .column(name)
        .ok_or_else(|| unsupported(new, Side::New))?;
    let old_kind = old_column.kind.ok_or_else(|| unsupported(old, Side::Old))?;
    let new_kind = new_column.kind.ok_or_else(|| unsupported(new, Side::New))?;
    let (old_reading, new_reading) =
        resolve_pair(old_kind, new_kind).ok_or_else(|| CompareError::IncompatibleTypes {
            table: old.name.clone(),
            column: name.to_owned(),
            old: old_column.declared.clone(),
            new: new_column.declared.clone(),
        })?;
    let side_column = |db: &Database,
                       column: &crate::schema::Column,
                       kind: ColumnKind,
                       reading: ColumnReading| {
        let quoted = db.quote(name);
        let (projection, shape) = projection(db.engine, kind, reading.kind, &quoted);
        let order_by = match (db.engine, reading.kind, kind, column.binary_order) {
            (Engine::Postgres, CompareKind::Text, _, false) => {
                format!("{quoted} COLLATE \"C\"")
            }
            (Engine::MySql, CompareKind::Text, _, false) => {
                format!("CAST(CONVERT({quoted} USING utf8mb4) AS BINARY)")
            }
            (Engine::Sqlite, CompareKind::Text, _, false) => format!("{quoted} COLLATE BINARY"),
            // UUIDs kept as text sort (and are bound) in lower case, like native ones.
            // MariaDB's UUID type sorts by its own byte order; its text sorts as the bytes do.
            (Engine::MySql, CompareKind::Uuid, ColumnKind::Uuid, _) => {
                format!("CAST(CONVERT({quoted} USING utf8mb4) AS BINARY)")
            }
            // In a case-insensitive MySQL collation, UUID text (hex digits and dashes) sorts as
            // its lower-case form does: the column's own order, which its index serves, so no
            // window re-sorts the table (reading is linear, not quadratic, in the row count).
            (Engine::MySql, CompareKind::Uuid, ColumnKind::Text | ColumnKind::Char, _)
                if column.case_insensitive =>
            {
                quoted
            }
            (_, CompareKind::Uuid, ColumnKind::Text | ColumnKind::Char, _) => {
                format!("LOWER({quoted})")
            }
            _ => quoted,
        };
        SideColumn {
            projection,
            shape,
            reading,
            order_by,
            declared: column.declared.clone(),
            storage: kind,
        }
    };
    Ok(ColumnPair {
        name: name.to_owned(),
        old: side_column(old_db, old_column, old_kind, old_reading),
        new: side_column(new_db, new_column, new_kind, new_reading),
    })
}

#[cfg(test)]
mod tests {
    use super::ColumnSelection;

    #[test]
    fn a_table_where_aims_its_condition_at_one_table() {
        let filters = ["orders= status <> 'draft' AND total >= 10".to_owned()];
        let selection = ColumnSelection::parse(&[], None, &[], &filters).expect("valid");
        assert_eq!(
            selection.for_table("orders").filter.as_deref(),
            Some("status <> 'draft' AND total >= 10")
        );
        assert_eq!(selection.for_table("items").filter, None);
        for bad in ["orders", "=id > 1", "orders=  "] {
            let error = ColumnSelection::parse(&[], None, &[], &[bad.to_owned()])
                .expect_err("refused")
                .to_string();
            assert!(error.contains("expected TABLE=CONDITION"), "{bad}: {error}");
        }
    }
}
