//! A connection pool to one side's database, the SQL dialect details of its engine, and the
//! one way rows are read: a query with bound values, decoded column by column into wire values.

use std::time::Duration;

use futures_util::StreamExt;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::postgres::PgPoolCopyExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{ColumnIndex, Connection, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};
use tandem_control::{redact_url, Side};

use crate::canonical::Wire;
use crate::error::CompareError;
use crate::kinds::{parse_sqlite_quoted, WireShape};

/// The database engines the comparator reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    MySql,
    /// SQLite.
    Sqlite,
}

/// Whether a database is only read (comparisons) or also written (repairs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Only read; SQLite files are opened read-only.
    ReadOnly,
    /// Read and written.
    ReadWrite,
}

/// A value bound to a query parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindValue {
    /// An integer.
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// SQL NULL.
    Null,
}

/// The native pool of one engine (each driver decodes its own types best).
#[derive(Debug, Clone)]
enum Pools {
    Postgres(Pool<sqlx::Postgres>),
    MySql(Pool<sqlx::MySql>),
    Sqlite(Pool<sqlx::Sqlite>),
}

/// One side's database.
#[derive(Debug, Clone)]
pub struct Database {
    /// Which side it is.
    pub side: Side,
    /// Its engine.
    pub engine: Engine,
    pools: Pools,
}

/// Longest wait for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

impl Database {
    /// Connects to `url` (`postgres://`, `mysql://` or `sqlite://`); a read-only SQLite file is
    /// opened read-only.
    ///
    /// # Errors
    /// When the URL names no supported engine or the database is unreachable.
    pub async fn connect(
        side: Side,
        url: &str,
        connections: u32,
        access: Access,
    ) -> Result<Database, CompareError> {
        let failed = |reason: String| CompareError::Connect {
            side,
            url: redact_url(url),
            reason,
        };
        let connections = connections.max(2);
        let (engine, pools) = if url.starts_with("postgres://") || url.starts_with("postgresql://")
        {
            let options: PgConnectOptions = url
                .parse()
                .map_err(|e: sqlx::Error| failed(e.to_string()))?;
            probe::<sqlx::PgConnection>(&options)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let pool = PgPoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await
                .map_err(|e| failed(e.to_string()))?;
            (Engine::Postgres, Pools::Postgres(pool))
        } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            let url = url.replacen("mariadb://", "mysql://", 1);
            let options: MySqlConnectOptions = url
                .parse()
                .map_err(|e: sqlx::Error| failed(e.to_string()))?;
            probe::<sqlx::MySqlConnection>(&options)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let pool = MySqlPoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        // Timestamps are read as UTC microseconds whatever the server's zone.
                        conn.execute("SET time_zone = '+00:00'").await.map(drop)
                    })
                })
                .connect_with(options)
                .await
                .map_err(|e| failed(e.to_string()))?;
            (Engine::MySql, Pools::MySql(pool))
        } else if url.starts_with("sqlite:") {
            let options = url
                .parse::<SqliteConnectOptions>()
                .map_err(|e: sqlx::Error| failed(e.to_string()))?
                .read_only(access == Access::ReadOnly);
            probe::<sqlx::SqliteConnection>(&options)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let pool = SqlitePoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await
                .map_err(|e| failed(e.to_string()))?;
            (Engine::Sqlite, Pools::Sqlite(pool))
        } else {
            return Err(failed(
                "expected a postgres://, mysql:// or sqlite:// URL".to_owned(),
            ));
        };
        Ok(Database {
            side,
            engine,
            pools,
        })
    }

    /// Runs `sql` with `binds` and decodes each row's columns as `shapes` say.
    ///
    /// # Errors
    /// When the query fails or a column does not decode as its shape.
    pub async fn rows(
        &self,
        sql: &str,
        binds: &[BindValue],
        shapes: &[WireShape],
    ) -> Result<Vec<Vec<Wire>>, sqlx::Error> {
        match &self.pools {
            Pools::Postgres(pool) => fetch_postgres(pool, sql, binds, shapes).await,
            Pools::MySql(pool) => fetch(pool, sql, binds, shapes).await,
            Pools::Sqlite(pool) => fetch(pool, sql, binds, shapes).await,
        }
    }

    /// Runs `statements` in one transaction.
    ///
    /// # Errors
    /// When a statement fails (the transaction is rolled back).
    pub async fn execute_in_transaction(
        &self,
        statements: &[(String, Vec<BindValue>)],
    ) -> Result<(), sqlx::Error> {
        match &self.pools {
            Pools::Postgres(pool) => execute_all(pool, statements).await,
            Pools::MySql(pool) => execute_all(pool, statements).await,
            Pools::Sqlite(pool) => execute_all(pool, statements).await,
        }
    }

    /// Quotes an identifier for this engine.
    #[must_use]
    pub fn quote(&self, identifier: &str) -> String {
        match self.engine {
            Engine::MySql => format!("`{}`", identifier.replace('`', "``")),
            Engine::Postgres | Engine::Sqlite => format!("\"{}\"", identifier.replace('"', "\"\"")),
        }
    }

    /// The placeholder of the `index`-th (1-based) bound parameter.
    #[must_use]
    pub fn placeholder(&self, index: usize) -> String {
        match self.engine {
            Engine::MySql => "?".to_owned(),
            Engine::Postgres | Engine::Sqlite => format!("${index}"),
        }
    }

    /// Wraps a query error with this side and the table.
    pub(crate) fn query_failed(&self, table: &str) -> impl FnOnce(sqlx::Error) -> CompareError {
        let (side, table) = (self.side, table.to_owned());
        move |source| CompareError::Query {
            side,
            table,
            source,
        }
    }

    /// Closes the pool.
    pub async fn close(&self) {
        match &self.pools {
            Pools::Postgres(pool) => pool.close().await,
            Pools::MySql(pool) => pool.close().await,
            Pools::Sqlite(pool) => pool.close().await,
        }
    }
}

/// PostgreSQL rows, read with `COPY (…) TO STDOUT (FORMAT binary)`: the values arrive in the
/// binary forms the projections produce (`int8`, `float8`, `bool`, `text`, `bytea`) without
/// the driver building a row object per row. Bound values are written into the statement as
/// literals, since COPY takes no parameters.
async fn fetch_postgres(
    pool: &Pool<sqlx::Postgres>,
    sql: &str,
    binds: &[BindValue],
    shapes: &[WireShape],
) -> Result<Vec<Vec<Wire>>, sqlx::Error> {
    let statement = format!(
        "COPY ({}) TO STDOUT (FORMAT binary)",
        inline_binds(sql, binds)
    );
    let mut stream = pool.copy_out_raw(&statement).await?;
    let mut parser = CopyBinaryParser::default();
    let mut rows = Vec::new();
    while let Some(chunk) = stream.next().await {
        parser.feed(&chunk?);
        let decode = |index: usize, field: Option<&[u8]>| {
            let shape = shapes
                .get(index)
                .copied()
                .ok_or_else(|| format!("more than the {} expected columns", shapes.len()))?;
            match field {
                None => Ok(Wire::Null),
                Some(bytes) => postgres_wire(bytes, shape)
                    .ok_or_else(|| format!("unexpected {} bytes for {shape:?}", bytes.len())),
            }
        };
        while let Some(row) = parser.next_row(decode).map_err(copy_error)? {
            if row.len() != shapes.len() {
                return Err(copy_error(format!(
                    "{} columns where {} were expected",
                    row.len(),
                    shapes.len()
                )));
            }
            rows.push(row);
        }
    }
    if !parser.finished || !parser.buffer.is_empty() {
        return Err(copy_error("the stream ended before its trailer".to_owned()));
    }
    Ok(rows)
}

fn copy_error(reason: String) -> sqlx::Error {
    sqlx::Error::Protocol(format!("COPY binary data: {reason}"))
}

/// Replaces each `$n` placeholder with its value as an SQL literal, in one pass over the
/// statement: text inside quotes (from `--where`) and the literals written are never scanned.
fn inline_binds(sql: &str, binds: &[BindValue]) -> String {
    let literal = |bind: &BindValue| match bind {
        BindValue::Int(value) => value.to_string(),
        BindValue::Text(text) => {
            format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
        }
        BindValue::Bytes(bytes) => {
            let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
            format!("decode('{hex}', 'hex')")
        }
        BindValue::Null => "NULL".to_owned(),
    };
    let mut out = String::with_capacity(sql.len() + binds.len() * 16);
    let mut chars = sql.char_indices().peekable();
    let mut quote: Option<char> = None;
    while let Some((at, c)) = chars.next() {
        match quote {
            Some(open) => {
                out.push(c);
                if c == open {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => {
                out.push(c);
                quote = Some(c);
            }
            None if c == '$' => {
                let digits: String = sql[at + 1..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                let bound = digits
                    .parse::<usize>()
                    .ok()
                    .and_then(|index| index.checked_sub(1))
                    .and_then(|index| binds.get(index));
                match bound {
                    Some(bind) => {
                        out.push_str(&literal(bind));
                        for _ in 0..digits.len() {
                            chars.next();
                        }
                    }
                    None => out.push(c),
                }
            }
            None => out.push(c),
        }
    }
    out
}

/// An incremental parser of PostgreSQL's binary COPY format.
#[derive(Debug, Default)]
struct CopyBinaryParser {
    buffer: bytes::BytesMut,
    header_read: bool,
    finished: bool,
}

/// The 11-byte signature that starts binary COPY data.
const COPY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

impl CopyBinaryParser {
    fn feed(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next complete row, each field (`None` for NULL) passed through `decode` with its
    /// index; `None` when more data is needed or the data ended.
    fn next_row<T>(
        &mut self,
        mut decode: impl FnMut(usize, Option<&[u8]>) -> Result<T, String>,
    ) -> Result<Option<Vec<T>>, String> {
        use bytes::Buf;
        if self.finished {
            return Ok(None);
        }
        if !self.header_read {
            if self.buffer.len() < 19 {
                return Ok(None);
            }
            if &self.buffer[..11] != COPY_SIGNATURE {
                return Err("missing signature".to_owned());
            }
            let extension = u32::from_be_bytes([
                self.buffer[15],
                self.buffer[16],
                self.buffer[17],
                self.buffer[18],
            ]) as usize;
            if self.buffer.len() < 19 + extension {
                return Ok(None);
            }
            self.buffer.advance(19 + extension);
            self.header_read = true;
        }
        if self.buffer.len() < 2 {
            return Ok(None);
        }
        let count = i16::from_be_bytes([self.buffer[0], self.buffer[1]]);
        if count == -1 {
            self.buffer.advance(2);
            self.finished = true;
            return Ok(None);
        }
        let count = usize::try_from(count).map_err(|_| format!("field count {count}"))?;
        let mut at = 2;
        let mut spans = Vec::with_capacity(count);
        for _ in 0..count {
            let Some(length) = self.buffer.get(at..at + 4) else {
                return Ok(None);
            };
            let length = i32::from_be_bytes([length[0], length[1], length[2], length[3]]);
            at += 4;
            if length < 0 {
                spans.push(None);
            } else {
                let length = usize::try_from(length).map_err(|_| "field length".to_owned())?;
                if self.buffer.len() < at + length {
                    return Ok(None);
                }
                spans.push(Some((at, length)));
                at += length;
            }
        }
        let fields = spans
            .into_iter()
            .enumerate()
            .map(|(index, span)| {
                decode(
                    index,
                    span.map(|(start, length)| &self.buffer[start..start + length]),
                )
            })
            .collect::<Result<Vec<T>, String>>()?;
        self.buffer.advance(at);
        Ok(Some(fields))
    }
}

/// Microseconds from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days from 1970-01-01 to 2000-01-01.
const POSTGRES_EPOCH_DAYS: i64 = 10_957;

/// Decodes one binary-format PostgreSQL value.
fn postgres_wire(bytes: &[u8], shape: WireShape) -> Option<Wire> {
    Some(match shape {
        WireShape::PostgresTimestamp => match i64::from_be_bytes(bytes.try_into().ok()?) {
            i64::MAX => Wire::Text("infinity".to_owned()),
            i64::MIN => Wire::Text("-infinity".to_owned()),
            micros => Wire::Int(micros.saturating_add(POSTGRES_EPOCH_MICROS)),
        },
        WireShape::PostgresDate => match i32::from_be_bytes(bytes.try_into().ok()?) {
            i32::MAX => Wire::Text("infinity".to_owned()),
            i32::MIN => Wire::Text("-infinity".to_owned()),
            days => Wire::Int(i64::from(days) + POSTGRES_EPOCH_DAYS),
        },
        WireShape::PostgresNumeric => Wire::Text(numeric_text(bytes)?),
        WireShape::Int => Wire::Int(i64::from_be_bytes(bytes.try_into().ok()?)),
        WireShape::Float => Wire::Float(f64::from_bits(u64::from_be_bytes(bytes.try_into().ok()?))),
        WireShape::Bool => Wire::Bool(*bytes.first()? != 0),
        WireShape::Text | WireShape::SqliteQuoted => {
            Wire::Text(std::str::from_utf8(bytes).ok()?.to_owned())
        }
        WireShape::Bytes => Wire::Bytes(bytes.to_vec()),
    })
}

async fn execute_all<DB>(
    pool: &Pool<DB>,
    statements: &[(String, Vec<BindValue>)],
) -> Result<(), sqlx::Error>
where
    DB: sqlx::Database,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Type<DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let mut transaction = pool.begin().await?;
    for (sql, binds) in statements {
        bind_all(sqlx::query::<DB>(sql), binds)
            .execute(&mut *transaction)
            .await?;
    }
    transaction.commit().await
}

fn bind_all<'q, DB>(
    mut query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    binds: &[BindValue],
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    i64: Encode<'q, DB> + Type<DB>,
    String: Encode<'q, DB> + Type<DB>,
    Option<String>: Encode<'q, DB>,
    Vec<u8>: Encode<'q, DB> + Type<DB>,
{
    for bind in binds {
        query = match bind {
            BindValue::Int(value) => query.bind(*value),
            BindValue::Text(value) => query.bind(value.clone()),
            BindValue::Bytes(value) => query.bind(value.clone()),
            BindValue::Null => query.bind(None::<String>),
        };
    }
    query
}

/// PostgreSQL's binary `numeric` as decimal text in normal form (no leading or trailing zeros).
fn numeric_text(bytes: &[u8]) -> Option<String> {
    let word = |at: usize| -> Option<i32> {
        let pair = bytes.get(at..at + 2)?;
        Some(i32::from(i16::from_be_bytes([pair[0], pair[1]])))
    };
    let (count, weight, sign) = (word(0)?, word(2)?, word(4)? & 0xFFFF);
    match sign {
        0xC000 => return Some("NaN".to_owned()),
        0xD000 => return Some("Infinity".to_owned()),
        0xF000 => return Some("-Infinity".to_owned()),
        _ => {}
    }
    let digits: Vec<i32> = (0..usize::try_from(count).ok()?)
        .map(|index| word(8 + index * 2))
        .collect::<Option<_>>()?;
    let digit = |index: i32| {
        usize::try_from(index)
            .ok()
            .and_then(|i| digits.get(i))
            .copied()
    };
    let mut integer = String::new();
    for position in (0..=weight).rev() {
        let group = digit(weight - position).unwrap_or(0);
        if integer.is_empty() {
            if group != 0 {
                integer.push_str(&group.to_string());
            }
        } else {
            integer.push_str(&format!("{group:04}"));
        }
    }
    let mut fraction = String::new();
    for (index, group) in digits.iter().enumerate() {
        let position = weight - i32::try_from(index).ok()?;
        if position < 0 {
            let before = usize::try_from(-position - 1).ok()? * 4;
            while fraction.len() < before {
                fraction.push_str("0000");
            }
            fraction.push_str(&format!("{group:04}"));
        }
    }
    let fraction = fraction.trim_end_matches('0');
    let integer = if integer.is_empty() { "0" } else { &integer };
    let negative = sign == 0x4000 && (integer != "0" || !fraction.is_empty());
    Some(format!(
        "{}{integer}{}{fraction}",
        if negative { "-" } else { "" },
        if fraction.is_empty() { "" } else { "." }
    ))
}

/// One direct connection attempt, so that an unreachable database fails at once rather than
/// after the pool's acquire timeout.
async fn probe<C: Connection>(options: &C::Options) -> Result<(), sqlx::Error> {
    C::connect_with(options).await?.close().await
}

async fn fetch<DB>(
    pool: &Pool<DB>,
    sql: &str,
    binds: &[BindValue],
    shapes: &[WireShape],
) -> Result<Vec<Vec<Wire>>, sqlx::Error>
where
    DB: sqlx::Database,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> f64: Decode<'q, DB> + Type<DB>,
    for<'q> bool: Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    usize: ColumnIndex<DB::Row>,
{
    let query = bind_all(sqlx::query::<DB>(sql), binds);
    let rows = query.fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            shapes
                .iter()
                .enumerate()
                .map(|(index, shape)| wire_at(row, index, *shape))
                .collect()
        })
        .collect()
}

fn wire_at<R>(row: &R, index: usize, shape: WireShape) -> Result<Wire, sqlx::Error>
where
    R: Row,
    for<'q> i64: Decode<'q, R::Database> + Type<R::Database>,
    for<'q> f64: Decode<'q, R::Database> + Type<R::Database>,
    for<'q> bool: Decode<'q, R::Database> + Type<R::Database>,
    for<'q> String: Decode<'q, R::Database> + Type<R::Database>,
    for<'q> Vec<u8>: Decode<'q, R::Database> + Type<R::Database>,
    usize: ColumnIndex<R>,
{
    Ok(match shape {
        WireShape::Int => row
            .try_get::<Option<i64>, _>(index)?
            .map_or(Wire::Null, Wire::Int),
        WireShape::Float => row
            .try_get::<Option<f64>, _>(index)?
            .map_or(Wire::Null, Wire::Float),
        WireShape::Bool => row
            .try_get::<Option<bool>, _>(index)?
            .map_or(Wire::Null, Wire::Bool),
        WireShape::Text => row
            .try_get::<Option<String>, _>(index)?
            .map_or(Wire::Null, Wire::Text),
        WireShape::Bytes => row
            .try_get::<Option<Vec<u8>>, _>(index)?
            .map_or(Wire::Null, Wire::Bytes),
        WireShape::SqliteQuoted => parse_sqlite_quoted(&row.try_get::<String, _>(index)?),
        WireShape::PostgresTimestamp | WireShape::PostgresDate | WireShape::PostgresNumeric => {
            return Err(sqlx::Error::Decode(
                format!("{shape:?} is read through PostgreSQL's COPY only").into(),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_data(rows: &[&[Option<&[u8]>]]) -> Vec<u8> {
        let mut data = COPY_SIGNATURE.to_vec();
        data.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        for row in rows {
            data.extend_from_slice(&i16::try_from(row.len()).unwrap().to_be_bytes());
            for field in *row {
                match field {
                    None => data.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(bytes) => {
                        data.extend_from_slice(&i32::try_from(bytes.len()).unwrap().to_be_bytes());
                        data.extend_from_slice(bytes);
                    }
                }
            }
        }
        data.extend_from_slice(&(-1i16).to_be_bytes());
        data
    }

    #[test]
    fn copy_rows_parse_across_arbitrary_chunk_boundaries() {
        let data = copy_data(&[
            &[Some(&7i64.to_be_bytes()), Some(b"caf\xc3\xa9"), None],
            &[Some(&(-1i64).to_be_bytes()), Some(b""), Some(b"x")],
        ]);
        for chunk_size in [1, 3, 7, data.len()] {
            let mut parser = CopyBinaryParser::default();
            let mut rows = Vec::new();
            for chunk in data.chunks(chunk_size) {
                parser.feed(chunk);
                while let Some(row) = parser
                    .next_row(|_, field| Ok(field.map(<[u8]>::to_vec)))
                    .unwrap()
                {
                    rows.push(row);
                }
            }
            assert_eq!(rows.len(), 2, "chunks of {chunk_size}");
            assert!(
                parser.finished && parser.buffer.is_empty(),
                "trailer consumed"
            );
            assert_eq!(rows[0][1].as_deref(), Some("café".as_bytes()));
            assert_eq!(rows[0][2], None);
            assert_eq!(rows[1][1].as_deref(), Some(&b""[..]));
        }
    }

    fn numeric(weight: i16, negative: bool, groups: &[i16]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&i16::try_from(groups.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(&weight.to_be_bytes());
        bytes.extend_from_slice(&(if negative { 0x4000u16 } else { 0 }).to_be_bytes());
        bytes.extend_from_slice(&0u16.to_be_bytes());
        for group in groups {
            bytes.extend_from_slice(&group.to_be_bytes());
        }
        bytes
    }

    #[test]
    fn binary_numerics_become_normal_decimals() {
        let cases = [
            (numeric(0, false, &[12, 5000]), "12.5"),
            (numeric(1, true, &[1, 2]), "-10002"),
            (numeric(-1, false, &[50]), "0.005"),
            (numeric(-2, false, &[7]), "0.00000007"),
            (numeric(2, false, &[3]), "300000000"),
            (numeric(0, false, &[]), "0"),
            (numeric(0, true, &[0, 10]), "-0.001"),
        ];
        for (bytes, text) in cases {
            assert_eq!(numeric_text(&bytes).as_deref(), Some(text));
        }
        assert_eq!(numeric_text(&[0, 1]), None, "truncated input is refused");
    }

    #[test]
    fn bound_values_become_safe_literals() {
        let sql = inline_binds(
            "SELECT $1, $2, $10, $3",
            &[
                BindValue::Text("it's \\ fine".to_owned()),
                BindValue::Int(-5),
                BindValue::Bytes(vec![0, 255]),
                BindValue::Null,
                BindValue::Null,
                BindValue::Null,
                BindValue::Null,
                BindValue::Null,
                BindValue::Null,
                BindValue::Int(10),
            ],
        );
        assert_eq!(
            sql,
            r"SELECT E'it\'s \\ fine', -5, 10, decode('00ff', 'hex')"
        );
    }
}
