//! Errors of the comparator; each names the side, table or column it is about.

use tandem_control::Side;

/// Why a comparison could not be made (as opposed to finding divergences).
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// A database could not be reached.
    #[error("cannot connect to the {side} database {url}: {reason}")]
    Connect {
        /// Which side.
        side: Side,
        /// The URL without credentials.
        url: String,
        /// The driver's reason.
        reason: String,
    },
    /// A query failed.
    #[error("{side} database, table {table}: {source}")]
    Query {
        /// Which side.
        side: Side,
        /// The table being read ("" for catalogue queries).
        table: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A table has no primary key, no unique index over non-null columns, and no `--key`.
    #[error("table {table} has no primary key or unique index over non-null columns on the {side} side; name a key with --key {table}=COLUMN,…")]
    NoKey {
        /// The table.
        table: String,
        /// Which side lacks it.
        side: Side,
    },
    /// A table named with `--table` is absent.
    #[error("table {table} does not exist on the {side} side")]
    UnknownTable {
        /// The table.
        table: String,
        /// Which side lacks it.
        side: Side,
    },
    /// A column named in an option is absent.
    #[error("table {table} has no column {column} on the {side} side")]
    UnknownColumn {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// Which side lacks it.
        side: Side,
    },
    /// A column type the comparator cannot compare (ignore the column to go on).
    #[error("table {table}, column {column}: type {declared} on the {side} side is not supported (leave it out with --ignore-columns)")]
    UnsupportedType {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// The declared type.
        declared: String,
        /// Which side.
        side: Side,
    },
    /// The two sides' types of a column cannot be compared with each other.
    #[error(
        "table {table}, column {column}: old type {old} and new type {new} cannot be compared \
         (leave it out with --ignore-columns {table}.{column})"
    )]
    IncompatibleTypes {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// The old side's declared type.
        old: String,
        /// The new side's declared type.
        new: String,
    },
    /// The `--key` columns do not identify rows.
    #[error(
        "table {table}: the key columns {reason} on the {side} side, so they cannot identify rows"
    )]
    KeyNotUnique {
        /// The table.
        table: String,
        /// Which side.
        side: Side,
        /// "hold NULLs" or "repeat a value".
        reason: &'static str,
    },
    /// A new-side column every insert needs a value for that a copy has none to give.
    #[error(
        "table {table}, column {column}: NOT NULL without a default on the new side and not \
         copied from the old side, so no row can be inserted (give it a default or allow NULL)"
    )]
    Unfilled {
        /// The new side's table.
        table: String,
        /// The column.
        column: String,
    },
    /// The new side would take a second row with the same key: no primary key or unique
    /// index covers the backfill's key there, so nothing stops a mirrored insert racing the
    /// backfill's copy of the same row.
    #[error(
        "table {table}: no primary key or unique index on the new side is over the key ({key}) \
         or some of its columns, so a row inserted through dual-write while the backfill copies \
         it could end up there twice; add one: {fix}"
    )]
    KeyNotEnforced {
        /// The new side's table.
        table: String,
        /// The key columns, comma-separated.
        key: String,
        /// The statement that adds a unique index over the key on the new side.
        fix: String,
    },
    /// A key column's type cannot order rows identically on both engines.
    #[error("table {table}: key column {column} of type {declared} cannot be used as a key (integer, decimal, text or uuid keys only)")]
    UnsupportedKey {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// Its declared type.
        declared: String,
    },
    /// A side returned rows out of the key order tandem compares in.
    #[error("table {table}: the {side} side returns keys out of binary order (use a binary collation for text keys: COLLATE \"C\" on PostgreSQL, utf8mb4_bin on MySQL, BINARY on SQLite)")]
    KeyOrder {
        /// The table.
        table: String,
        /// Which side.
        side: Side,
    },
    /// The continuous service could not run.
    #[error("comparator service: {0}")]
    Service(String),
    /// A reading task ended abnormally.
    #[error("a comparison task failed: {0}")]
    Task(String),
    /// A window's canonical encoding did not decode (a defect in tandem, never in the data).
    #[error("table {0}: a window's canonical encoding did not decode")]
    Encoding(String),
    /// An option value is unusable.
    #[error("{0}")]
    InvalidOption(String),
}

impl CompareError {
    /// Whether running the same work again may succeed: the connection was lost or refused
    /// for now, the server shut the session down, or the transaction lost a serialization
    /// failure, deadlock or lock wait (`tandem_control::sqlx_error_is_transient`). Errors in
    /// the data, the SQL or tandem itself are not.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        let CompareError::Query { source, .. } = self else {
            return false;
        };
        tandem_control::sqlx_error_is_transient(source)
    }
}
