//! Catalogue reading: the tables of a database, and each table's columns and primary key.

use crate::canonical::Wire;
use crate::database::{BindValue, Database, Engine};
use crate::error::CompareError;
use crate::kinds::{column_kind, ColumnKind, WireShape};

/// Collations whose order is the order of the bytes (code points, for UTF-8). A PostgreSQL
/// database whose default collation comes from ICU (or another provider than libc, PG15+) has
/// none of these, whatever its `datcollate` says, so its text keys are ordered `COLLATE "C"`
/// (its locale provider is read through `to_jsonb`, which also works before PG15).
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
    /// Whether its collation ignores case (MySQL `_ci`): hexadecimal text such as a UUID then
    /// sorts as its lower-case form does, in the column's own (indexed) order.
    pub case_insensitive: bool,
    /// Whether it accepts NULL.
    pub nullable: bool,
    /// Whether an insert that leaves it out still gives it a value: it has a default, is an
    /// identity or auto-increment column, or is generated.
    pub defaulted: bool,
    /// The collation declared for it, as its engine names it, when it is not the database's
    /// default (PostgreSQL), for every text column (MySQL/MariaDB: each reports its own), or
    /// the one its index carries (SQLite); `--create-schema` carries it within one engine.
    pub collation: Option<String>,
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
    /// The columns of a unique index over non-null columns (the narrowest), which identify
    /// rows as well as a primary key does; empty when there is none.
    pub unique_key: Vec<String>,
    /// The columns of the primary key and of every unique index over plain columns (no
    /// expression, no predicate, no prefix), nullable or not, narrowest first: what makes
    /// the database refuse a second row with the same values.
    pub unique_indexes: Vec<Vec<String>>,
}

impl TableSchema {
    /// The column called `name`.
    #[must_use]
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|column| column.name == name)
    }

    /// The columns that identify its rows: the primary key, else a unique index over non-null
    /// columns (which identifies rows as well); empty when there is neither.
    #[must_use]
    pub fn identifying_key(&self) -> &[String] {
        if self.primary_key.is_empty() {
            &self.unique_key
        } else {
            &self.primary_key
        }
    }

    /// Whether the database refuses a second row with the same values of `key`: its primary
    /// key or a unique index is over those columns or some of them.
    #[must_use]
    pub fn enforces_unique(&self, key: &[String]) -> bool {
        self.unique_indexes
            .iter()
            .any(|index| !index.is_empty() && index.iter().all(|column| key.contains(column)))
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
            "SELECT table_name FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE' ORDER BY 1"
        }
        Engine::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY 1"
        }
    };
    let rows = db
        .rows(sql, &[], &[WireShape::Text])
        .await
        .map_err(db.query_failed(""))?;
    Ok(rows.into_iter().flatten().map(text_of).collect())
}

/// Describes `table`, or `None` when it does not exist.
///
/// # Errors
/// When the catalogue cannot be read.
pub async fn describe(db: &Database, table: &str) -> Result<Option<TableSchema>, CompareError> {
    let (columns_sql, key_sql, unique_sql) = match db.engine {
        Engine::Postgres => (
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typname::text, \
             t.typtype::text, COALESCE(co.collname::text, ''), \
             (SELECT CASE COALESCE(to_jsonb(d) ->> 'datlocprovider', 'c') \
              WHEN 'c' THEN datcollate::text ELSE 'provider ' || (to_jsonb(d) ->> 'datlocprovider') END \
              FROM pg_database d WHERE datname = current_database()), \
             CASE WHEN a.attnotnull THEN 'NO' ELSE 'YES' END, \
             CASE WHEN a.atthasdef OR a.attidentity <> '' THEN 'YES' ELSE 'NO' END \
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
             JOIN pg_attribute a ON a.attrelid = i.indrelid \
             AND a.attnum = ANY((i.indkey::int2[])[0:i.indnkeyatts - 1]) \
             WHERE n.nspname = current_schema() AND cl.relname = $1 AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            "SELECT string_agg(a.attname::text, ',' ORDER BY array_position(i.indkey::int2[], a.attnum)), \
             CASE WHEN bool_and(a.attnotnull) THEN 'YES' ELSE 'NO' END \
             FROM pg_index i \
             JOIN pg_class cl ON cl.oid = i.indrelid \
             JOIN pg_namespace n ON n.oid = cl.relnamespace \
             JOIN pg_attribute a ON a.attrelid = i.indrelid \
             AND a.attnum = ANY((i.indkey::int2[])[0:i.indnkeyatts - 1]) \
             WHERE n.nspname = current_schema() AND cl.relname = $1 AND i.indisunique \
             AND i.indisvalid AND i.indimmediate AND i.indpred IS NULL AND i.indexprs IS NULL \
             GROUP BY i.indexrelid ORDER BY count(*), i.indexrelid",
        ),
        Engine::MySql => (
            "SELECT column_name, column_type, data_type, column_type, \
             COALESCE(collation_name, ''), '', is_nullable, \
             CASE WHEN column_default IS NOT NULL OR extra LIKE '%auto_increment%' \
             OR extra LIKE '%generated%' THEN 'YES' ELSE 'NO' END \
             FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = ? \
             ORDER BY ordinal_position",
            "SELECT column_name FROM information_schema.key_column_usage \
             WHERE table_schema = DATABASE() AND table_name = ? AND constraint_name = 'PRIMARY' \
             ORDER BY ordinal_position",
            "SELECT GROUP_CONCAT(column_name ORDER BY seq_in_index SEPARATOR ','), \
             CASE WHEN SUM(nullable = 'YES') = 0 THEN 'YES' ELSE 'NO' END \
             FROM information_schema.statistics \
             WHERE table_schema = DATABASE() AND table_name = ? AND non_unique = 0 \
             GROUP BY index_name \
             HAVING SUM(sub_part IS NOT NULL) = 0 AND SUM(column_name IS NULL) = 0 \
             ORDER BY COUNT(*), index_name",
        ),
        // SQLite has no catalogue of column collations; an index over a column carries the
        // column's (NOCASE, RTRIM), which is what the key columns (indexed) need.
        Engine::Sqlite => (
            "SELECT ti.name, ti.type, ti.type, '', \
             COALESCE((SELECT x.coll FROM pragma_index_list($1) il \
             JOIN pragma_index_xinfo(il.name) x \
             WHERE x.name = ti.name AND x.key = 1 AND x.coll <> 'BINARY' LIMIT 1), ''), '', \
             CASE WHEN ti.\"notnull\" = 0 AND ti.pk = 0 THEN 'YES' ELSE 'NO' END, \
             CASE WHEN ti.dflt_value IS NOT NULL \
             OR (ti.pk = 1 AND upper(ti.type) = 'INTEGER') THEN 'YES' ELSE 'NO' END \
             FROM pragma_table_info($1) ti ORDER BY ti.cid",
            "SELECT name FROM pragma_table_info($1) WHERE pk > 0 ORDER BY pk",
            "SELECT group_concat(name, ','), CASE WHEN min(not_null) = 1 THEN 'YES' ELSE 'NO' END \
             FROM (SELECT il.name AS idx, ii.name AS name, \
             ti.\"notnull\" AS not_null, ti.name AS known FROM pragma_index_list($1) il \
             JOIN pragma_index_info(il.name) ii \
             LEFT JOIN pragma_table_info($1) ti ON ti.name = ii.name \
             WHERE il.\"unique\" = 1 AND il.partial = 0 ORDER BY il.name, ii.seqno) \
             GROUP BY idx HAVING count(known) = count(*) ORDER BY count(*), idx",
        ),
    };
    let table_name = [BindValue::Text(table.to_owned())];
    let rows = db
        .rows(columns_sql, &table_name, &[WireShape::Text; 8])
        .await
        .map_err(db.query_failed(table))?;
    if rows.is_empty() {
        check_not_hidden(db, table).await?;
        return Ok(None);
    }
    let mut columns = Vec::with_capacity(rows.len());
    for row in rows {
        let mut texts = row.into_iter().map(text_of);
        let mut next = || texts.next().unwrap_or_default();
        let (name, declared, type_name, detail) = (next(), next(), next(), next());
        let declared_collation = next();
        let collation = declared_collation.to_ascii_lowercase();
        let database_collation = next().to_ascii_lowercase();
        let nullable = next().eq_ignore_ascii_case("yes");
        let defaulted = next().eq_ignore_ascii_case("yes");
        let effective = if collation == "default" {
            database_collation
        } else {
            collation.clone()
        };
        let binary_order = match db.engine {
            Engine::Sqlite => effective.is_empty() || effective == "binary",
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
            case_insensitive: db.engine == Engine::MySql && effective.ends_with("_ci"),
            nullable,
            defaulted,
            collation: (!collation.is_empty() && collation != "default")
                .then_some(declared_collation),
        });
    }
    let keys = db
        .rows(key_sql, &table_name, &[WireShape::Text])
        .await
        .map_err(db.query_failed(table))?;
    let primary_key: Vec<String> = keys.into_iter().flatten().map(text_of).collect();
    let unique = db
        .rows(unique_sql, &table_name, &[WireShape::Text; 2])
        .await
        .map_err(db.query_failed(table))?;
    // Each unique index's columns, and whether they are all non-null.
    let indexes: Vec<(Vec<String>, bool)> = unique
        .into_iter()
        .map(|row| {
            let mut texts = row.into_iter().map(text_of);
            let columns = texts.next().unwrap_or_default();
            let not_null = texts.next().is_some_and(|flag| flag == "YES");
            (columns.split(',').map(str::to_owned).collect(), not_null)
        })
        .collect();
    let unique_key = indexes
        .iter()
        .find(|(_, not_null)| *not_null)
        .map(|(columns, _)| columns.clone())
        .unwrap_or_default();
    // SQLite keeps a rowid table's INTEGER PRIMARY KEY in no index.
    let unique_indexes = (!primary_key.is_empty())
        .then(|| primary_key.clone())
        .into_iter()
        .chain(indexes.into_iter().map(|(columns, _)| columns))
        .collect();
    Ok(Some(TableSchema {
        name: table.to_owned(),
        columns,
        primary_key,
        unique_key,
        unique_indexes,
    }))
}

/// Fails with the server's permission error when `db` hides `table` from its user: MariaDB and
/// MySQL list only the tables a user holds some privilege on, and deny reading a table that
/// does not exist just as one it may not read, so a table their catalogue does not show is
/// unreadable, never known to be missing, when reading it is denied. (PostgreSQL's catalogue
/// lists every table, SQLite has no privileges.)
///
/// # Errors
/// When reading `table` on `db` is denied for lack of privilege.
pub async fn check_not_hidden(db: &Database, table: &str) -> Result<(), CompareError> {
    if db.engine != Engine::MySql {
        return Ok(());
    }
    let sql = format!("SELECT 1 FROM {} WHERE 1 = 0", db.quote(table));
    match db.rows(&sql, &[], &[WireShape::Int]).await {
        Err(error) if access_denied(&error) => Err(db.query_failed(table)(error)),
        _ => Ok(()),
    }
}

/// Whether MySQL refused a statement for lack of privilege on a table, a column or the
/// database (errors 1142, 1143 and 1044).
fn access_denied(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(error) = error else {
        return false;
    };
    error
        .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .is_some_and(|error| [1142, 1143, 1044].contains(&error.number()))
}

/// A catalogue value as text ("" for NULL).
fn text_of(value: Wire) -> String {
    match value {
        Wire::Text(text) => text,
        _ => String::new(),
    }
}
