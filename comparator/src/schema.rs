//! Catalogue reading: the tables of a database, and each table's columns and primary key.

use sqlx::Row;

use crate::database::{Database, Engine};
use crate::error::CompareError;
use crate::kinds::{column_kind, ColumnKind};

/// Collations whose order is the order of the bytes (code points, for UTF-8).
const BINARY_COLLATIONS: [&str; 6] = ["c", "posix", "c.utf-8", "c.utf8", "ucs_basic", "binary"];

/// A column as the catalogue describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// The declared type, for messages.
    pub declared: String,
    /// What it holds, when the comparator supports it.
    pub kind: Option<ColumnKind>,
    /// Whether text in it sorts in byte order (so no collation override is needed).
    pub binary_order: bool,
}

/// A table's columns in declaration order, and its primary key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    /// The table's name.
    pub name: String,
    /// Its columns.
    pub columns: Vec<Column>,
    /// Primary-key column names, in key order (empty without a primary key).
    pub primary_key: Vec<String>,
}

impl TableSchema {
    /// The column called `name`.
    #[must_use]
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|column| column.name == name)
    }
}

/// The base tables of the database (the current schema on PostgreSQL).
///
/// # Errors
/// When the catalogue cannot be read.
pub async fn list_tables(db: &Database) -> Result<Vec<String>, CompareError> {
    let sql = match db.engine {
        Engine::Postgres => {
            "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1"
        }
        Engine::MySql => {
            "SELECT CAST(table_name AS BINARY) FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE' ORDER BY 1"
        }
        Engine::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY 1"
        }
    };
    let rows = sqlx::query(sql)
        .fetch_all(&db.pool)
        .await
        .map_err(db.query_failed(""))?;
    rows.iter().map(|row| text_at(db, row, 0)).collect()
}

/// Describes `table`, or `None` when it does not exist.
///
/// # Errors
/// When the catalogue cannot be read.
pub async fn describe(db: &Database, table: &str) -> Result<Option<TableSchema>, CompareError> {
    let (columns_sql, key_sql) = match db.engine {
        Engine::Postgres => (
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typname::text, \
             t.typtype::text, COALESCE(co.collname::text, ''), \
             (SELECT datcollate::text FROM pg_database WHERE datname = current_database()) \
             FROM pg_attribute a \
             JOIN pg_class cl ON cl.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = cl.relnamespace \
             JOIN pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_collation co ON co.oid = a.attcollation \
             WHERE n.nspname = current_schema() AND cl.relname = $1 AND a.attnum > 0 \
             AND NOT a.attisdropped ORDER BY a.attnum",
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_class cl ON cl.oid = i.indrelid \
             JOIN pg_namespace n ON n.oid = cl.relnamespace \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE n.nspname = current_schema() AND cl.relname = $1 AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
        ),
        Engine::MySql => (
            "SELECT CAST(column_name AS BINARY), CAST(column_type AS BINARY), \
             CAST(data_type AS BINARY), CAST(column_type AS BINARY), \
             CAST(COALESCE(collation_name, '') AS BINARY), CAST('' AS BINARY) \
             FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = ? \
             ORDER BY ordinal_position",
            "SELECT CAST(column_name AS BINARY) FROM information_schema.key_column_usage \
             WHERE table_schema = DATABASE() AND table_name = ? AND constraint_name = 'PRIMARY' \
             ORDER BY ordinal_position",
        ),
        Engine::Sqlite => (
            "SELECT name, type, type, '', '', '' FROM pragma_table_info($1) ORDER BY cid",
            "SELECT name FROM pragma_table_info($1) WHERE pk > 0 ORDER BY pk",
        ),
    };
    let rows = sqlx::query(columns_sql)
        .bind(table)
        .fetch_all(&db.pool)
        .await
        .map_err(db.query_failed(table))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut columns = Vec::with_capacity(rows.len());
    for row in &rows {
        let name = text_at(db, row, 0)?;
        let declared = text_at(db, row, 1)?;
        let type_name = text_at(db, row, 2)?;
        let detail = text_at(db, row, 3)?;
        let collation = text_at(db, row, 4)?.to_ascii_lowercase();
        let database_collation = text_at(db, row, 5)?.to_ascii_lowercase();
        let effective = if collation == "default" {
            database_collation
        } else {
            collation
        };
        let binary_order = match db.engine {
            Engine::Sqlite => true,
            Engine::MySql => {
                effective.is_empty() || effective.ends_with("_bin") || effective == "binary"
            }
            Engine::Postgres => {
                effective.is_empty() || BINARY_COLLATIONS.contains(&effective.as_str())
            }
        };
        columns.push(Column {
            kind: column_kind(db.engine, &type_name, &detail),
            name,
            declared,
            binary_order,
        });
    }
    let keys = sqlx::query(key_sql)
        .bind(table)
        .fetch_all(&db.pool)
        .await
        .map_err(db.query_failed(table))?;
    let primary_key = keys
        .iter()
        .map(|row| text_at(db, row, 0))
        .collect::<Result<_, _>>()?;
    Ok(Some(TableSchema {
        name: table.to_owned(),
        columns,
        primary_key,
    }))
}

/// Reads a catalogue text column (MySQL's are read as bytes to avoid its BLOB-typed text).
fn text_at(db: &Database, row: &sqlx::any::AnyRow, index: usize) -> Result<String, CompareError> {
    let failed = db.query_failed("");
    match db.engine {
        Engine::MySql => {
            let bytes: Vec<u8> = row.try_get(index).map_err(failed)?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
        Engine::Postgres | Engine::Sqlite => row.try_get(index).map_err(failed),
    }
}
