//! Column types: what each engine's declared type is, how it is read (the SQL projection and
//! the shape it returns), and how the two sides of a column pair are compared.

use crate::canonical::{ColumnReading, CompareKind, Wire};
use crate::database::Engine;

/// What a declared column type holds, independent of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// A signed integer of any width.
    Integer,
    /// An unsigned integer that may exceed `i64` (MySQL `BIGINT UNSIGNED`).
    BigUnsigned,
    /// An exact decimal.
    Decimal,
    /// A binary floating-point number.
    Float,
    /// A boolean.
    Bool,
    /// MySQL `TINYINT(1)`: an integer used as a boolean.
    TinyBool,
    /// Text without padding.
    Text,
    /// `CHAR(n)`: text padded with spaces.
    Char,
    /// Bytes.
    Bytes,
    /// A timestamp; `naive` when it has no time zone.
    Timestamp {
        /// No time zone: read in the assumed zone.
        naive: bool,
    },
    /// A date.
    Date,
    /// A time of day.
    Time,
    /// A UUID.
    Uuid,
    /// JSON.
    Json,
    /// A bit string (`BIT(n)` on MySQL with its width, `bit`/`varbit` on PostgreSQL with 0).
    Bits {
        /// MySQL's declared width, to which the value's leading zeros are restored.
        width: u16,
    },
    /// PostgreSQL `interval`: months, days and microseconds, kept apart.
    Interval,
    /// PostgreSQL `inet` or `cidr`, MariaDB `INET4` or `INET6`.
    Network,
    /// A PostgreSQL range.
    Range,
    /// A PostgreSQL array, compared element by element, in order.
    Array,
    /// PostgreSQL `money`, compared as the decimal it holds.
    Money,
}

/// The shape a projection returns, i.e. how to decode the column from a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireShape {
    /// A 64-bit integer.
    Int,
    /// A double.
    Float,
    /// A boolean.
    Bool,
    /// Text.
    Text,
    /// Bytes.
    Bytes,
    /// SQLite's `quote()` form (with full-precision reals), which keeps the storage class.
    SqliteQuoted,
    /// PostgreSQL's binary `timestamp`/`timestamptz` (microseconds since 2000-01-01).
    PostgresTimestamp,
    /// PostgreSQL's binary `date` (days since 2000-01-01).
    PostgresDate,
    /// PostgreSQL's binary `numeric` (base-10000 digits).
    PostgresNumeric,
}

/// Maps a declared type to its kind; `None` when the comparator cannot compare it.
///
/// `name` is PostgreSQL's `typname` (or MySQL's `data_type`, SQLite's declared type), and
/// `detail` PostgreSQL's `typtype` or MySQL's `column_type`.
#[must_use]
pub fn column_kind(engine: Engine, name: &str, detail: &str) -> Option<ColumnKind> {
    let name = name.to_ascii_lowercase();
    let detail = detail.to_ascii_lowercase();
    match engine {
        Engine::Postgres => postgres_kind(&name, &detail),
        Engine::MySql => mysql_kind(&name, &detail),
        Engine::Sqlite => Some(sqlite_kind(&name)),
    }
}

fn postgres_kind(typname: &str, typtype: &str) -> Option<ColumnKind> {
    Some(match typname {
        "int2" | "int4" | "int8" | "oid" => ColumnKind::Integer,
        "numeric" => ColumnKind::Decimal,
        "float4" | "float8" => ColumnKind::Float,
        "bool" => ColumnKind::Bool,
        "text" | "varchar" | "name" | "citext" => ColumnKind::Text,
        "bpchar" => ColumnKind::Char,
        "bytea" => ColumnKind::Bytes,
        "timestamptz" => ColumnKind::Timestamp { naive: false },
        "timestamp" => ColumnKind::Timestamp { naive: true },
        "date" => ColumnKind::Date,
        "time" => ColumnKind::Time,
        "uuid" => ColumnKind::Uuid,
        "json" | "jsonb" => ColumnKind::Json,
        "xml" => ColumnKind::Text,
        "bit" | "varbit" => ColumnKind::Bits { width: 0 },
        "interval" => ColumnKind::Interval,
        "inet" | "cidr" => ColumnKind::Network,
        "money" => ColumnKind::Money,
        _ if typtype == "e" => ColumnKind::Text,
        _ if typtype == "r" => ColumnKind::Range,
        // Array types are named after their element type with a leading underscore.
        _ if typname.starts_with('_') && typtype == "b" => ColumnKind::Array,
        _ => return None,
    })
}

fn mysql_kind(data_type: &str, column_type: &str) -> Option<ColumnKind> {
    Some(match data_type {
        "tinyint" if column_type.starts_with("tinyint(1)") => ColumnKind::TinyBool,
        "bigint" if column_type.contains("unsigned") => ColumnKind::BigUnsigned,
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "year" => {
            ColumnKind::Integer
        }
        "decimal" | "numeric" => ColumnKind::Decimal,
        "float" | "double" | "real" => ColumnKind::Float,
        "char" => ColumnKind::Char,
        "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set" => {
            ColumnKind::Text
        }
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
            ColumnKind::Bytes
        }
        "datetime" => ColumnKind::Timestamp { naive: true },
        "timestamp" => ColumnKind::Timestamp { naive: false },
        "date" => ColumnKind::Date,
        "time" => ColumnKind::Time,
        "json" => ColumnKind::Json,
        "uuid" => ColumnKind::Uuid,
        "inet4" | "inet6" => ColumnKind::Network,
        "bit" => ColumnKind::Bits {
            width: column_type
                .trim_start_matches("bit(")
                .trim_end_matches(')')
                .parse()
                .unwrap_or(1),
        },
        _ => return None,
    })
}

/// SQLite types follow its affinity rules, refined by the common type names.
fn sqlite_kind(declared: &str) -> ColumnKind {
    let has = |part: &str| declared.contains(part);
    if has("bool") {
        ColumnKind::Bool
    } else if has("int") {
        ColumnKind::Integer
    } else if has("uuid") {
        ColumnKind::Uuid
    } else if has("json") {
        ColumnKind::Json
    } else if has("char") || has("clob") || has("text") {
        ColumnKind::Text
    } else if has("blob") || declared.is_empty() {
        ColumnKind::Bytes
    } else if has("real") || has("floa") || has("doub") {
        ColumnKind::Float
    } else if has("datetime") || has("timestamp") {
        ColumnKind::Timestamp { naive: true }
    } else if has("date") {
        ColumnKind::Date
    } else if has("time") {
        ColumnKind::Time
    } else {
        ColumnKind::Decimal
    }
}

/// The SQL expression that reads `column` (already quoted), held as `kind` and compared as
/// `compared`, and the shape it returns.
#[must_use]
pub fn projection(
    engine: Engine,
    kind: ColumnKind,
    compared: CompareKind,
    column: &str,
) -> (String, WireShape) {
    match engine {
        // `%!.17g`: SQLite's printf rounds to 16 significant digits without the `!` flag,
        // one short of what a double needs to read back as itself.
        Engine::Sqlite => (
            format!(
                "CASE typeof({column}) WHEN 'real' THEN 'R' || printf('%!.17g', {column}) \
                 ELSE quote({column}) END"
            ),
            WireShape::SqliteQuoted,
        ),
        Engine::Postgres => match kind {
            ColumnKind::Integer | ColumnKind::BigUnsigned | ColumnKind::TinyBool => {
                (format!("{column}::int8"), WireShape::Int)
            }
            ColumnKind::Float => (format!("{column}::float8"), WireShape::Float),
            ColumnKind::Bool => (column.to_owned(), WireShape::Bool),
            ColumnKind::Bytes => (column.to_owned(), WireShape::Bytes),
            // Raw binary values, decoded by the client (COPY BINARY): no work for the server.
            ColumnKind::Timestamp { .. } => (column.to_owned(), WireShape::PostgresTimestamp),
            ColumnKind::Time => (column.to_owned(), WireShape::Int),
            ColumnKind::Date => (column.to_owned(), WireShape::PostgresDate),
            ColumnKind::Decimal => (column.to_owned(), WireShape::PostgresNumeric),
            ColumnKind::Text
            | ColumnKind::Char
            | ColumnKind::Uuid
            | ColumnKind::Json
            | ColumnKind::Bits { .. }
            | ColumnKind::Network
            | ColumnKind::Range => (format!("{column}::text"), WireShape::Text),
            ColumnKind::Money => (format!("{column}::numeric"), WireShape::PostgresNumeric),
            // Elements as JSON, so that numbers compare by value and text exactly.
            ColumnKind::Array => (format!("to_jsonb({column})::text"), WireShape::Text),
            // Months, days and microseconds as PostgreSQL reads them back (for repairs); never
            // folded into each other, as `interval` equality would ('1 day' = '24 hours').
            ColumnKind::Interval => (
                format!(
                    "CASE WHEN {column} IS NOT NULL THEN format('%s mons %s days %s microseconds', \
                     extract(year FROM {column})::int8 * 12 + extract(month FROM {column})::int8, \
                     extract(day FROM {column})::int8, \
                     (extract(hour FROM {column}) * 3600000000 + extract(minute FROM {column}) * 60000000 \
                     + extract(microseconds FROM {column}))::int8) END"
                ),
                WireShape::Text,
            ),
        },
        Engine::MySql => match kind {
            ColumnKind::Integer | ColumnKind::TinyBool | ColumnKind::Bool => {
                (format!("CAST({column} AS SIGNED)"), WireShape::Int)
            }
            ColumnKind::Float => (format!("CAST({column} AS DOUBLE)"), WireShape::Float),
            ColumnKind::Bytes => (column.to_owned(), WireShape::Bytes),
            // As text: a zero or partial date (`0000-00-00`, `2020-02-00 10:00`, kept under a
            // permissive sql_mode) is no instant, and arithmetic on it would give NULL.
            ColumnKind::Timestamp { .. } | ColumnKind::Date => {
                (format!("CAST({column} AS CHAR)"), WireShape::Text)
            }
            // TIME_TO_SEC keeps MariaDB's fraction, so the parts are added up by hand.
            ColumnKind::Time => (
                format!(
                    "CAST(IF({column} < 0, -1, 1) * ((HOUR({column}) * 3600 + MINUTE({column}) * 60 \
                     + SECOND({column})) * 1000000 + MICROSECOND({column})) AS SIGNED)"
                ),
                WireShape::Int,
            ),
            ColumnKind::BigUnsigned | ColumnKind::Decimal => {
                (format!("CAST({column} AS CHAR)"), WireShape::Text)
            }
            // CONVERT drops a binary collation, which the driver would report as VARBINARY.
            ColumnKind::Text | ColumnKind::Char | ColumnKind::Uuid | ColumnKind::Json => {
                (format!("CONVERT({column} USING utf8mb4)"), WireShape::Text)
            }
            // Compared with bytes: the value big-endian in whole bytes, as MySQL stores it.
            ColumnKind::Bits { width } if compared == CompareKind::Bytes => (
                format!(
                    "UNHEX(LPAD(HEX(CAST({column} AS UNSIGNED)), {}, '0'))",
                    usize::from(width).div_ceil(8) * 2
                ),
                WireShape::Bytes,
            ),
            // The bits as PostgreSQL writes them, leading zeros included.
            ColumnKind::Bits { width } => (
                format!("LPAD(BIN(CAST({column} AS UNSIGNED)), {width}, '0')"),
                WireShape::Text,
            ),
            // MariaDB's INET4 and INET6 as PostgreSQL writes an `inet` host: with the whole
            // mask (`10.0.0.1/32`, `::ffff:10.0.0.1/128`, an IPv6 address, not the IPv4 one).
            ColumnKind::Network => (
                format!(
                    "CONCAT(CAST({column} AS CHAR), \
                     IF(IS_IPV4(CAST({column} AS CHAR)), '/32', '/128'))"
                ),
                WireShape::Text,
            ),
            // PostgreSQL-only types: a MySQL column is never read as one.
            ColumnKind::Interval
            | ColumnKind::Range
            | ColumnKind::Array
            | ColumnKind::Money => (format!("CAST({column} AS CHAR)"), WireShape::Text),
        },
    }
}

/// How a pair of columns is compared, or `None` when their kinds cannot be compared.
#[must_use]
pub fn resolve_pair(old: ColumnKind, new: ColumnKind) -> Option<(ColumnReading, ColumnReading)> {
    use ColumnKind as K;
    let family = |kind: ColumnKind| match kind {
        K::Integer | K::BigUnsigned | K::Decimal | K::Money => CompareKind::Number,
        K::Bits { .. } => CompareKind::Bits,
        K::Interval => CompareKind::Interval,
        K::Network => CompareKind::Network,
        K::Range => CompareKind::Range,
        K::Array => CompareKind::Array,
        K::Float => CompareKind::Float,
        K::Bool | K::TinyBool => CompareKind::Bool,
        K::Text | K::Char => CompareKind::Text,
        K::Bytes => CompareKind::Bytes,
        K::Timestamp { .. } => CompareKind::Timestamp,
        K::Date => CompareKind::Date,
        K::Time => CompareKind::Time,
        K::Uuid => CompareKind::Uuid,
        K::Json => CompareKind::Json,
    };
    let (a, b) = (family(old), family(new));
    let kind = if a == b {
        a
    } else {
        match (a, b) {
            (CompareKind::Float, CompareKind::Number)
            | (CompareKind::Number, CompareKind::Float) => CompareKind::Float,
            (CompareKind::Bool, CompareKind::Number | CompareKind::Bits)
            | (CompareKind::Number | CompareKind::Bits, CompareKind::Bool) => CompareKind::Bool,
            (CompareKind::Uuid, CompareKind::Text | CompareKind::Bytes)
            | (CompareKind::Text | CompareKind::Bytes, CompareKind::Uuid) => CompareKind::Uuid,
            (CompareKind::Json, CompareKind::Text) | (CompareKind::Text, CompareKind::Json) => {
                CompareKind::Json
            }
            // A MySQL JSON array (MariaDB's JSON is text) against a PostgreSQL array:
            // both read as JSON, as text against json is.
            (CompareKind::Json | CompareKind::Text, CompareKind::Array)
            | (CompareKind::Array, CompareKind::Json | CompareKind::Text) => CompareKind::Array,
            (CompareKind::Text, CompareKind::Bytes) | (CompareKind::Bytes, CompareKind::Text) => {
                CompareKind::Text
            }
            // MySQL's `BIT(n)` (never PostgreSQL's bit strings) against bytes, by value.
            (CompareKind::Bits, CompareKind::Bytes) if mysql_bits(old) => CompareKind::Bytes,
            (CompareKind::Bytes, CompareKind::Bits) if mysql_bits(new) => CompareKind::Bytes,
            _ => return None,
        }
    };
    let reading = |side: ColumnKind| ColumnReading {
        kind,
        padded: side == K::Char,
        naive_time: side == K::Timestamp { naive: true },
    };
    Some((reading(old), reading(new)))
}

/// Whether `kind` is MySQL's `BIT(n)` (PostgreSQL's bit strings have no declared width here).
fn mysql_bits(kind: ColumnKind) -> bool {
    matches!(kind, ColumnKind::Bits { width } if width > 0)
}

/// Decodes SQLite's `quote()` text back into a wire value of its storage class.
#[must_use]
pub fn parse_sqlite_quoted(text: &str) -> Wire {
    if text == "NULL" {
        Wire::Null
    } else if let Some(body) = text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')) {
        Wire::Text(body.replace("''", "'"))
    } else if let Some(hex) = text.strip_prefix("X'").and_then(|t| t.strip_suffix('\'')) {
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|at| {
                hex.get(at..at + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
            })
            .collect();
        bytes.map_or_else(|| Wire::Text(text.to_owned()), Wire::Bytes)
    } else if let Some(real) = text.strip_prefix('R') {
        real.parse()
            .map_or_else(|_| Wire::Text(text.to_owned()), Wire::Float)
    } else {
        text.parse()
            .map_or_else(|_| Wire::Text(text.to_owned()), Wire::Int)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_quoted_values_keep_their_storage_class() {
        assert_eq!(parse_sqlite_quoted("NULL"), Wire::Null);
        assert_eq!(parse_sqlite_quoted("'it''s'"), Wire::Text("it's".into()));
        assert_eq!(parse_sqlite_quoted("''"), Wire::Text(String::new()));
        assert_eq!(parse_sqlite_quoted("X'00FF'"), Wire::Bytes(vec![0, 255]));
        assert_eq!(
            parse_sqlite_quoted("R0.30000000000000004"),
            Wire::Float(0.1 + 0.2)
        );
        assert_eq!(parse_sqlite_quoted("-42"), Wire::Int(-42));
    }

    #[test]
    fn pairs_resolve_across_engines() {
        let (old, new) = resolve_pair(ColumnKind::TinyBool, ColumnKind::Bool).unwrap();
        assert_eq!((old.kind, new.kind), (CompareKind::Bool, CompareKind::Bool));
        let (old, new) = resolve_pair(ColumnKind::Char, ColumnKind::Uuid).unwrap();
        assert_eq!(old.kind, CompareKind::Uuid);
        assert!(old.padded && !new.padded);
        let (old, _) = resolve_pair(
            ColumnKind::Timestamp { naive: true },
            ColumnKind::Timestamp { naive: false },
        )
        .unwrap();
        assert!(old.naive_time);
        assert!(resolve_pair(ColumnKind::Date, ColumnKind::Integer).is_none());
        for json in [ColumnKind::Json, ColumnKind::Text] {
            let (old, new) = resolve_pair(json, ColumnKind::Array).unwrap();
            assert_eq!(
                (old.kind, new.kind),
                (CompareKind::Array, CompareKind::Array)
            );
        }
        assert!(resolve_pair(ColumnKind::Integer, ColumnKind::Array).is_none());
        let (old, _) = resolve_pair(ColumnKind::Bits { width: 12 }, ColumnKind::Bytes).unwrap();
        assert_eq!(old.kind, CompareKind::Bytes);
        assert!(
            resolve_pair(ColumnKind::Bits { width: 0 }, ColumnKind::Bytes).is_none(),
            "PostgreSQL bit strings against bytes are not guessed"
        );
    }

    #[test]
    fn declared_types_map_per_engine() {
        assert_eq!(
            column_kind(Engine::MySql, "tinyint", "tinyint(1)"),
            Some(ColumnKind::TinyBool)
        );
        assert_eq!(
            column_kind(Engine::MySql, "tinyint", "tinyint(4)"),
            Some(ColumnKind::Integer)
        );
        assert_eq!(
            column_kind(Engine::MySql, "bigint", "bigint(20) unsigned"),
            Some(ColumnKind::BigUnsigned)
        );
        assert_eq!(
            column_kind(Engine::Postgres, "mood", "e"),
            Some(ColumnKind::Text)
        );
        assert_eq!(
            column_kind(Engine::Postgres, "interval", "b"),
            Some(ColumnKind::Interval)
        );
        assert_eq!(
            column_kind(Engine::Postgres, "_int4", "b"),
            Some(ColumnKind::Array)
        );
        assert_eq!(
            column_kind(Engine::MySql, "bit", "bit(12)"),
            Some(ColumnKind::Bits { width: 12 })
        );
        assert_eq!(column_kind(Engine::Postgres, "point", "b"), None);
        assert_eq!(
            column_kind(Engine::Sqlite, "DECIMAL(12,2)", ""),
            Some(ColumnKind::Decimal)
        );
        assert_eq!(
            column_kind(Engine::Sqlite, "VARCHAR(10)", ""),
            Some(ColumnKind::Text)
        );
        assert_eq!(
            column_kind(Engine::Sqlite, "BOOLEAN", ""),
            Some(ColumnKind::Bool)
        );
    }
}
