//! `tandem backfill --create-schema`: the tables a backfill copies that the new side lacks,
//! created there from the old side's before anything is copied: the copied columns with
//! mapped types (MySQL/MariaDB and SQLite to PostgreSQL, the declared types and collations
//! within one engine), their NOT NULL, and the key as primary key. A collation is not carried
//! across engines: no MySQL collation has a PostgreSQL twin that sorts and compares alike.

use serde::Serialize;
use tandem_control::Side;

use crate::canonical::Wire;
use crate::database::{BindValue, Database, Engine};
use crate::error::CompareError;
use crate::kinds::{ColumnKind, WireShape};
use crate::plan::ColumnSelection;
use crate::run::TablePair;
use crate::schema::{describe, Column, TableSchema};

/// A table `--create-schema` created on the new side (or, on a dry run, would create).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreatedTable {
    /// The old side's table it was made from.
    pub from: String,
    /// The new side's table.
    pub table: String,
    /// The statements that create it, in order: an enum type per MySQL `ENUM` column, then
    /// the table.
    pub statements: Vec<String>,
}

/// The tables of `pairs` that exist on the old side and not on the new one, each with the
/// statements that create it there; and every reason one of them cannot be created (a
/// column whose type has no counterpart, no key, engines it does not map between), one per
/// table or column.
///
/// # Errors
/// When a catalogue cannot be read.
pub(crate) async fn plan_creation(
    (old, new): (&Database, &Database),
    pairs: &[TablePair],
    selection: &ColumnSelection,
) -> Result<(Vec<CreatedTable>, Vec<CompareError>), CompareError> {
    let (mut tables, mut problems) = (Vec::new(), Vec::new());
    for pair in pairs {
        let (old_schema, new_schema) =
            tokio::try_join!(describe(old, &pair.old), describe(new, &pair.new))?;
        // A table missing on the old side is the preflight's to name.
        let (Some(schema), None) = (old_schema, new_schema) else {
            continue;
        };
        if !(old.engine == new.engine || new.engine == Engine::Postgres) {
            problems.push(CompareError::InvalidOption(format!(
                "table {}: --create-schema creates PostgreSQL tables from any engine and \
                 tables of the same engine; create {} on the new side first",
                pair.old, pair.new
            )));
            continue;
        }
        let json = mariadb_json_columns(old, &schema).await?;
        match create_statements((old.engine, new), &schema, &pair.new, selection, &json) {
            Ok(statements) => tables.push(CreatedTable {
                from: pair.old.clone(),
                table: pair.new.clone(),
                statements,
            }),
            Err(mut unmapped) => problems.append(&mut unmapped),
        }
    }
    Ok((tables, problems))
}

/// Creates `tables` on `new`, all in one transaction (PostgreSQL and SQLite take back every
/// table if one fails).
///
/// # Errors
/// When a statement fails.
pub(crate) async fn create(new: &Database, tables: &[CreatedTable]) -> Result<(), CompareError> {
    let statements: Vec<(String, Vec<BindValue>)> = tables
        .iter()
        .flat_map(|table| &table.statements)
        .map(|statement| (statement.clone(), Vec::new()))
        .collect();
    let names: Vec<&str> = tables.iter().map(|table| table.table.as_str()).collect();
    new.execute_in_transaction(&statements)
        .await
        .map_err(new.query_failed(&names.join(", ")))
}

/// The statements that create `schema`'s copy as `table` on `new`: the columns a copy
/// carries, in their order, each with its mapped type and NOT NULL, and the key as primary
/// key.
fn create_statements(
    (old, new): (Engine, &Database),
    schema: &TableSchema,
    table: &str,
    selection: &ColumnSelection,
    json: &[String],
) -> Result<Vec<String>, Vec<CompareError>> {
    let selection = selection.for_table(&schema.name);
    let key = selection
        .key
        .clone()
        .unwrap_or_else(|| schema.identifying_key().to_vec());
    if key.is_empty() {
        return Err(vec![CompareError::NoKey {
            table: schema.name.clone(),
            side: Side::Old,
        }]);
    }
    let (mut statements, mut definitions, mut problems) = (Vec::new(), Vec::new(), Vec::new());
    for name in &key {
        if schema.column(name).is_none() {
            problems.push(CompareError::UnknownColumn {
                table: schema.name.clone(),
                column: name.clone(),
                side: Side::Old,
            });
        }
    }
    let copied = schema
        .columns
        .iter()
        .filter(|column| selection.copies(&key, &column.name));
    for column in copied {
        let is_json = json.contains(&column.name);
        let Some(mapped) = new_type((old, new.engine), column, is_json) else {
            problems.push(CompareError::UnsupportedType {
                table: schema.name.clone(),
                column: column.name.clone(),
                declared: column.declared.clone(),
                side: Side::Old,
            });
            continue;
        };
        let declared = match mapped {
            NewType::Declared(declared) => declared,
            NewType::Enum(labels) => {
                let name = new.quote(&format!("{table}_{}", column.name));
                let labels: Vec<String> = labels.iter().map(|label| quote_text(label)).collect();
                statements.push(format!(
                    "CREATE TYPE {name} AS ENUM ({})",
                    labels.join(", ")
                ));
                name
            }
        };
        let collate = match (&column.collation, old == new.engine) {
            (Some(collation), true) => format!(" COLLATE {}", new.quote(collation)),
            _ => String::new(),
        };
        let not_null = if column.nullable { "" } else { " NOT NULL" };
        definitions.push(format!(
            "{} {declared}{collate}{not_null}",
            new.quote(&column.name)
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let key: Vec<String> = key.iter().map(|name| new.quote(name)).collect();
    definitions.push(format!("PRIMARY KEY ({})", key.join(", ")));
    statements.push(format!(
        "CREATE TABLE {} ({})",
        new.quote(table),
        definitions.join(", ")
    ));
    Ok(statements)
}

/// The type a created column is given on the new side.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NewType {
    /// A type written as is.
    Declared(String),
    /// A PostgreSQL enum type of these labels, created for the column.
    Enum(Vec<String>),
}

/// The new side's type for `column` of the old side: its declared type within one engine;
/// from MySQL/MariaDB to PostgreSQL the mapping of the common migration tools (pgloader's
/// defaults), except that `DATETIME` keeps its wall-clock value as `timestamp` (no time zone
/// is assumed) and a `SET` becomes text; from SQLite to PostgreSQL by what the column holds.
/// `None` when there is no counterpart.
fn new_type((old, new): (Engine, Engine), column: &Column, json: bool) -> Option<NewType> {
    if old == new {
        return Some(NewType::Declared(column.declared.clone()));
    }
    match (old, new) {
        (Engine::MySql, Engine::Postgres) => mysql_to_postgres(&column.declared, json),
        (_, Engine::Postgres) => column.kind.and_then(postgres_type).map(NewType::Declared),
        _ => None,
    }
}

/// A MySQL/MariaDB column type (`information_schema.columns.column_type`, e.g.
/// `int(10) unsigned`, `decimal(12,2)`, `enum('a','b')`) as a PostgreSQL type.
fn mysql_to_postgres(column_type: &str, json: bool) -> Option<NewType> {
    let lower = column_type.to_ascii_lowercase();
    let base_end = lower.find(['(', ' ']).unwrap_or(lower.len());
    let base = &lower[..base_end];
    let arguments = lower
        .get(base_end..)
        .and_then(|rest| rest.strip_prefix('('))
        .and_then(|rest| rest.rfind(')').map(|end| &rest[..end]));
    let unsigned = lower.contains(" unsigned");
    let precision = |default: &str| arguments.unwrap_or(default).to_owned();
    let declared = match base {
        "tinyint" if arguments == Some("1") => "boolean".to_owned(),
        "tinyint" => "smallint".to_owned(),
        "smallint" if unsigned => "integer".to_owned(),
        "smallint" => "smallint".to_owned(),
        "mediumint" | "year" => "integer".to_owned(),
        "int" | "integer" if unsigned => "bigint".to_owned(),
        "int" | "integer" => "integer".to_owned(),
        // Up to 18,446,744,073,709,551,615: twenty digits.
        "bigint" if unsigned => "numeric(20)".to_owned(),
        "bigint" => "bigint".to_owned(),
        "decimal" | "numeric" | "dec" | "fixed" => match arguments {
            Some(arguments) => format!("numeric({arguments})"),
            None => "numeric".to_owned(),
        },
        // MySQL's FLOAT is single precision (FLOAT(p) above 24 is reported as double).
        "float" => "real".to_owned(),
        "double" | "real" => "double precision".to_owned(),
        "char" => format!("char({})", precision("1")),
        "varchar" => format!("varchar({})", precision("255")),
        "tinytext" | "text" | "mediumtext" | "longtext" if json => "jsonb".to_owned(),
        "tinytext" | "text" | "mediumtext" | "longtext" | "set" => "text".to_owned(),
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
            "bytea".to_owned()
        }
        "datetime" => format!("timestamp({})", precision("0")),
        "timestamp" => format!("timestamp({}) with time zone", precision("0")),
        "time" => format!("time({})", precision("0")),
        "date" => "date".to_owned(),
        "json" => "jsonb".to_owned(),
        "uuid" => "uuid".to_owned(),
        "bit" => format!("bit({})", precision("1")),
        "enum" => {
            let start = column_type.find('(')?;
            let end = column_type.rfind(')')?;
            return enum_labels(column_type.get(start + 1..end)?).map(NewType::Enum);
        }
        _ => return None,
    };
    Some(NewType::Declared(declared))
}

/// The PostgreSQL type holding what a column of another engine holds.
fn postgres_type(kind: ColumnKind) -> Option<String> {
    Some(
        match kind {
            ColumnKind::Integer => "bigint",
            ColumnKind::BigUnsigned => "numeric(20)",
            ColumnKind::Decimal => "numeric",
            ColumnKind::Float => "double precision",
            ColumnKind::Bool | ColumnKind::TinyBool => "boolean",
            ColumnKind::Text | ColumnKind::Char => "text",
            ColumnKind::Bytes => "bytea",
            ColumnKind::Timestamp { naive: true } => "timestamp",
            ColumnKind::Timestamp { naive: false } => "timestamp with time zone",
            ColumnKind::Date => "date",
            ColumnKind::Time => "time",
            ColumnKind::Uuid => "uuid",
            ColumnKind::Json => "jsonb",
            ColumnKind::Bits { .. }
            | ColumnKind::Interval
            | ColumnKind::Network
            | ColumnKind::Range
            | ColumnKind::Array
            | ColumnKind::Money => return None,
        }
        .to_owned(),
    )
}

/// The labels of a MySQL enum's list as `column_type` writes it (`'a','it''s','b\\c'`);
/// `None` when it does not read as one.
fn enum_labels(list: &str) -> Option<Vec<String>> {
    let mut labels = Vec::new();
    let mut chars = list.chars().peekable();
    loop {
        if chars.next()? != '\'' {
            return None;
        }
        let mut label = String::new();
        loop {
            match chars.next()? {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    label.push('\'');
                }
                '\'' => break,
                '\\' => label.push(chars.next()?),
                other => label.push(other),
            }
        }
        labels.push(label);
        match chars.next() {
            None => return Some(labels),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

/// `text` as an SQL string literal (standard-conforming: only quotes are doubled).
fn quote_text(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The columns of `schema` that MariaDB declared `JSON`: it stores them as `LONGTEXT` with a
/// `json_valid` check, which is all its catalogue says of them (MySQL reports `json`).
async fn mariadb_json_columns(
    db: &Database,
    schema: &TableSchema,
) -> Result<Vec<String>, CompareError> {
    if db.engine != Engine::MySql || !schema.columns.iter().any(|c| c.declared == "longtext") {
        return Ok(Vec::new());
    }
    let version = db
        .rows("SELECT VERSION()", &[], &[WireShape::Text])
        .await
        .map_err(db.query_failed(&schema.name))?;
    let mariadb = matches!(version.first().and_then(|row| row.first()),
        Some(Wire::Text(version)) if version.contains("MariaDB"));
    if !mariadb {
        return Ok(Vec::new());
    }
    let clauses = db
        .rows(
            "SELECT check_clause FROM information_schema.check_constraints \
             WHERE constraint_schema = DATABASE() AND table_name = ?",
            &[BindValue::Text(schema.name.clone())],
            &[WireShape::Text],
        )
        .await
        .map_err(db.query_failed(&schema.name))?;
    let clauses: Vec<String> = clauses
        .into_iter()
        .flatten()
        .filter_map(|clause| match clause {
            Wire::Text(text) => Some(text.to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    Ok(schema
        .columns
        .iter()
        .filter(|column| column.declared == "longtext")
        .filter(|column| {
            let check = format!("json_valid({})", db.quote(&column.name)).to_ascii_lowercase();
            clauses.contains(&check)
        })
        .map(|column| column.name.clone())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(column_type: &str) -> Option<NewType> {
        mysql_to_postgres(column_type, false)
    }

    fn declared(text: &str) -> Option<NewType> {
        Some(NewType::Declared(text.to_owned()))
    }

    #[test]
    fn mysql_types_map_as_migration_tools_map_them() {
        assert_eq!(mapped("tinyint(1)"), declared("boolean"));
        assert_eq!(mapped("tinyint(4)"), declared("smallint"));
        assert_eq!(mapped("tinyint(3) unsigned"), declared("smallint"));
        assert_eq!(mapped("smallint(5) unsigned"), declared("integer"));
        assert_eq!(mapped("int(11)"), declared("integer"));
        assert_eq!(mapped("int(10) unsigned"), declared("bigint"));
        assert_eq!(mapped("bigint(20) unsigned"), declared("numeric(20)"));
        assert_eq!(mapped("bigint(20)"), declared("bigint"));
        assert_eq!(mapped("decimal(12,2)"), declared("numeric(12,2)"));
        assert_eq!(mapped("varchar(50)"), declared("varchar(50)"));
        assert_eq!(mapped("char(36)"), declared("char(36)"));
        assert_eq!(mapped("longtext"), declared("text"));
        assert_eq!(
            mysql_to_postgres("longtext", true),
            declared("jsonb"),
            "MariaDB's JSON"
        );
        assert_eq!(mapped("datetime(6)"), declared("timestamp(6)"));
        assert_eq!(mapped("datetime"), declared("timestamp(0)"));
        assert_eq!(
            mapped("timestamp(3)"),
            declared("timestamp(3) with time zone")
        );
        assert_eq!(mapped("mediumblob"), declared("bytea"));
        assert_eq!(mapped("year(4)"), declared("integer"));
        assert_eq!(mapped("geometry"), None);
    }

    #[test]
    fn enum_labels_read_as_mysql_writes_them() {
        assert_eq!(
            mapped("enum('a','it''s','b\\\\c','x,y')"),
            Some(NewType::Enum(vec![
                "a".to_owned(),
                "it's".to_owned(),
                "b\\c".to_owned(),
                "x,y".to_owned()
            ]))
        );
        assert_eq!(enum_labels("'a',b"), None);
        assert_eq!(quote_text("it's"), "'it''s'");
    }
}
