//! A connection pool to one side's database, the SQL dialect details of its engine, and the
//! one way rows are read: a query with bound values, decoded column by column into wire values.

use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{ColumnIndex, Connection, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};
use tandem_control::{redact_url, Side};

use crate::canonical::{Wire, WireRef};
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

/// Receives the values of a query's rows as they are decoded, row by row.
pub trait RowSink: Send {
    /// The next value of the current row.
    fn value(&mut self, value: WireRef<'_>);
    /// The current row is complete.
    fn end_row(&mut self);
}

/// A row sink that hands on what it collected while the query still streams.
pub trait ChunkSink: RowSink {
    /// Called after rows arrived; hands on a chunk when one is ready. `false` ends the read.
    fn hand_on(&mut self) -> impl std::future::Future<Output = bool> + Send;
}

/// A sink that never hands anything on: the whole result goes to it.
struct Whole<'s, S>(&'s mut S);

impl<S: RowSink> RowSink for Whole<'_, S> {
    fn value(&mut self, value: WireRef<'_>) {
        self.0.value(value);
    }

    fn end_row(&mut self) {
        self.0.end_row();
    }
}

impl<S: RowSink> ChunkSink for Whole<'_, S> {
    async fn hand_on(&mut self) -> bool {
        true
    }
}

/// Rows collected as owned wire values.
#[derive(Debug, Default)]
struct WireRows {
    rows: Vec<Vec<Wire>>,
    current: Vec<Wire>,
}

impl RowSink for WireRows {
    fn value(&mut self, value: WireRef<'_>) {
        self.current.push(value.into_wire());
    }

    fn end_row(&mut self) {
        self.rows.push(std::mem::take(&mut self.current));
    }
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
            // Values read as text (array elements, ranges of timestamps) are written alike
            // whatever each server's defaults.
            let options = options.options([
                ("TimeZone", "UTC"),
                ("DateStyle", "ISO"),
                ("IntervalStyle", "postgres"),
                ("extra_float_digits", "1"),
            ]);
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
        let mut rows = WireRows::default();
        self.read(sql, binds, shapes, &mut rows).await?;
        Ok(rows.rows)
    }

    /// Runs `sql` with `binds` and hands each row's values, decoded as `shapes` say, to
    /// `sink` as they arrive.
    ///
    /// # Errors
    /// When the query fails or a column does not decode as its shape.
    pub async fn read(
        &self,
        sql: &str,
        binds: &[BindValue],
        shapes: &[WireShape],
        sink: &mut impl RowSink,
    ) -> Result<(), sqlx::Error> {
        self.read_chunked(sql, binds, shapes, &mut Whole(sink))
            .await
    }

    /// Runs `sql` like [`Database::read`], letting `sink` hand on what it collected as rows
    /// arrive (one query, one pass, with the sink's pace as back-pressure).
    ///
    /// # Errors
    /// When the query fails or a column does not decode as its shape.
    pub async fn read_chunked(
        &self,
        sql: &str,
        binds: &[BindValue],
        shapes: &[WireShape],
        sink: &mut impl ChunkSink,
    ) -> Result<(), sqlx::Error> {
        match &self.pools {
            Pools::Postgres(pool) => copy_postgres(pool, sql, binds, shapes, sink).await,
            Pools::MySql(pool) => fetch(pool, sql, binds, shapes, sink).await,
            Pools::Sqlite(pool) => fetch(pool, sql, binds, shapes, sink).await,
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
        self.execute_counted(statements).await.map(|_| ())
    }

    /// Runs statements in one transaction; returns how many rows each one changed.
    ///
    /// # Errors
    /// When a statement fails (the transaction is rolled back).
    pub async fn execute_counted(
        &self,
        statements: &[(String, Vec<BindValue>)],
    ) -> Result<Vec<u64>, sqlx::Error> {
        match &self.pools {
            Pools::Postgres(pool) => execute_all(pool, statements).await,
            Pools::MySql(pool) => execute_all(pool, statements).await,
            Pools::Sqlite(pool) => execute_all(pool, statements).await,
        }
    }

    /// In one PostgreSQL transaction: streams `copy` (a `COPY … FROM STDIN`) the data
    /// received from `data` until its `None`, then commits. Returns the rows copied. Nothing is
    /// committed unless the data ended with `None`: a closed channel (its producer failed)
    /// aborts the COPY and rolls the transaction back.
    ///
    /// # Errors
    /// When the COPY fails, the data ended early, or the engine is not PostgreSQL.
    pub(crate) async fn copy_in_transaction(
        &self,
        copy: &str,
        data: &mut tokio::sync::mpsc::Receiver<Option<Vec<u8>>>,
    ) -> Result<u64, sqlx::Error> {
        let Pools::Postgres(pool) = &self.pools else {
            return Err(sqlx::Error::Protocol(
                "COPY FROM STDIN is PostgreSQL's only".to_owned(),
            ));
        };
        let mut transaction = pool.begin().await?;
        let mut copy_in = transaction.copy_in_raw(copy).await?;
        loop {
            match data.recv().await {
                Some(Some(bytes)) => {
                    copy_in.send(bytes).await?;
                }
                Some(None) => break,
                None => {
                    // The producer's own error is what the caller reports; this one only
                    // says why the COPY stopped.
                    let _aborted = copy_in.abort("the rows to copy ended early").await;
                    return Err(sqlx::Error::Protocol(
                        "the rows to copy ended early".to_owned(),
                    ));
                }
            }
        }
        let copied = copy_in.finish().await?;
        transaction.commit().await?;
        Ok(copied)
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
/// binary forms the projections produce (`int8`, `float8`, `bool`, `text`, `bytea`) and go to
/// the sink straight from the received bytes, without a row object per row. Bound values are
/// written into the statement as literals, since COPY takes no parameters.
async fn copy_postgres(
    pool: &Pool<sqlx::Postgres>,
    sql: &str,
    binds: &[BindValue],
    shapes: &[WireShape],
    sink: &mut impl ChunkSink,
) -> Result<(), sqlx::Error> {
    let statement = format!(
        "COPY ({}) TO STDOUT (FORMAT binary)",
        inline_binds(sql, binds)
    );
    let mut connection = CopyConnection {
        connection: pool.acquire().await?,
        finished: false,
    };
    let mut stream = connection.connection.copy_out_raw(&statement).await?;
    let mut reader = CopyBinaryReader::new(shapes);
    while let Some(chunk) = stream.next().await {
        reader.feed(&chunk?, sink).map_err(copy_error)?;
        if !sink.hand_on().await {
            return Ok(());
        }
    }
    drop(stream);
    connection.finished = true;
    reader.finish().map_err(copy_error)
}

/// The connection a COPY runs on. Left before the COPY's end (the sink stopped, an error, the
/// reading future dropped when the other side's read failed), it is mid-protocol: it is then
/// closed, never handed back to the pool, where sqlx's release check would leave a stray
/// `ReadyForQuery` that the next COPY on it fails over, failing another table's read.
struct CopyConnection {
    connection: sqlx::pool::PoolConnection<sqlx::Postgres>,
    finished: bool,
}

impl Drop for CopyConnection {
    fn drop(&mut self) {
        if !self.finished {
            self.connection.close_on_drop();
        }
    }
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

/// An incremental reader of PostgreSQL's binary COPY format: decodes each field as its shape
/// says and hands the values to a sink, straight from the received chunks (only a row split
/// across chunks is copied).
#[derive(Debug)]
struct CopyBinaryReader<'s> {
    shapes: &'s [WireShape],
    /// The start of a row (or header) whose end has not arrived yet.
    pending: Vec<u8>,
    header_read: bool,
    finished: bool,
    /// Where a `numeric` is written as text.
    numeric: String,
}

/// The 11-byte signature that starts binary COPY data.
const COPY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

impl<'s> CopyBinaryReader<'s> {
    fn new(shapes: &'s [WireShape]) -> CopyBinaryReader<'s> {
        CopyBinaryReader {
            shapes,
            pending: Vec::new(),
            header_read: false,
            finished: false,
            numeric: String::new(),
        }
    }

    /// Reads the complete rows of `chunk` (after what is pending) into `sink`.
    fn feed(&mut self, chunk: &[u8], sink: &mut impl RowSink) -> Result<(), String> {
        if self.pending.is_empty() {
            let used = self.read_rows(chunk, sink)?;
            self.pending.extend_from_slice(&chunk[used..]);
        } else {
            let mut pending = std::mem::take(&mut self.pending);
            pending.extend_from_slice(chunk);
            let used = self.read_rows(&pending, sink)?;
            pending.drain(..used);
            self.pending = pending;
        }
        Ok(())
    }

    /// Checks that the data ended with its trailer.
    fn finish(&self) -> Result<(), String> {
        if self.finished && self.pending.is_empty() {
            Ok(())
        } else {
            Err("the stream ended before its trailer".to_owned())
        }
    }

    /// Reads the complete rows at the start of `data` into `sink`; returns the bytes used.
    fn read_rows(&mut self, data: &[u8], sink: &mut impl RowSink) -> Result<usize, String> {
        let mut used = 0;
        if !self.header_read {
            let Some(extension) = data.get(15..19) else {
                return Ok(0);
            };
            if &data[..11] != COPY_SIGNATURE {
                return Err("missing signature".to_owned());
            }
            let extension =
                u32::from_be_bytes([extension[0], extension[1], extension[2], extension[3]]);
            used = 19 + extension as usize;
            if data.len() < used {
                return Ok(0);
            }
            self.header_read = true;
        }
        while !self.finished {
            match self.read_row(&data[used..], sink)? {
                Some(length) => used += length,
                None => break,
            }
        }
        if self.finished && used < data.len() {
            return Err("data after the trailer".to_owned());
        }
        Ok(used)
    }

    /// Reads the row at the start of `data` into `sink` and returns its length, or `None`
    /// when it is incomplete. A row is passed on only once it is complete.
    fn read_row(&mut self, data: &[u8], sink: &mut impl RowSink) -> Result<Option<usize>, String> {
        let Some(count) = data.get(..2) else {
            return Ok(None);
        };
        let count = i16::from_be_bytes([count[0], count[1]]);
        if count == -1 {
            self.finished = true;
            return Ok(Some(2));
        }
        let expected = self.shapes.len();
        if usize::try_from(count).ok() != Some(expected) {
            return Err(format!("{count} columns where {expected} were expected"));
        }
        // The field at `at`: its value (`None` for NULL) and where the next one starts, or
        // `None` when the data ends first.
        let field_at = |at: usize| -> Option<(Option<&[u8]>, usize)> {
            let length = data.get(at..at + 4)?;
            let length = i32::from_be_bytes([length[0], length[1], length[2], length[3]]);
            match usize::try_from(length) {
                Err(_) => Some((None, at + 4)),
                Ok(length) => data
                    .get(at + 4..at + 4 + length)
                    .map(|value| (Some(value), at + 4 + length)),
            }
        };
        let mut end = 2;
        for _ in 0..expected {
            match field_at(end) {
                Some((_, next)) => end = next,
                None => return Ok(None),
            }
        }
        let mut at = 2;
        for &shape in self.shapes {
            let Some((field, next)) = field_at(at) else {
                break;
            };
            let value = match field {
                None => WireRef::Null,
                Some(bytes) => postgres_wire(bytes, shape, &mut self.numeric)
                    .ok_or_else(|| format!("unexpected {} bytes for {shape:?}", bytes.len()))?,
            };
            sink.value(value);
            at = next;
        }
        sink.end_row();
        Ok(Some(end))
    }
}

/// Microseconds from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days from 1970-01-01 to 2000-01-01.
const POSTGRES_EPOCH_DAYS: i64 = 10_957;

/// Decodes one binary-format PostgreSQL value; a `numeric` is written as text into
/// `numeric`, which the value then borrows.
#[inline]
fn postgres_wire<'a>(
    bytes: &'a [u8],
    shape: WireShape,
    numeric: &'a mut String,
) -> Option<WireRef<'a>> {
    Some(match shape {
        WireShape::PostgresTimestamp => match i64::from_be_bytes(bytes.try_into().ok()?) {
            i64::MAX => WireRef::Text("infinity"),
            i64::MIN => WireRef::Text("-infinity"),
            micros => WireRef::Int(micros.saturating_add(POSTGRES_EPOCH_MICROS)),
        },
        WireShape::PostgresDate => match i32::from_be_bytes(bytes.try_into().ok()?) {
            i32::MAX => WireRef::Text("infinity"),
            i32::MIN => WireRef::Text("-infinity"),
            days => WireRef::Int(i64::from(days) + POSTGRES_EPOCH_DAYS),
        },
        WireShape::PostgresNumeric => {
            write_numeric(bytes, numeric)?;
            WireRef::Text(numeric)
        }
        WireShape::Int => WireRef::Int(i64::from_be_bytes(bytes.try_into().ok()?)),
        WireShape::Float => {
            WireRef::Float(f64::from_bits(u64::from_be_bytes(bytes.try_into().ok()?)))
        }
        WireShape::Bool => WireRef::Bool(*bytes.first()? != 0),
        WireShape::Text | WireShape::SqliteQuoted => {
            WireRef::Text(std::str::from_utf8(bytes).ok()?)
        }
        WireShape::Bytes => WireRef::Bytes(bytes),
    })
}

async fn execute_all<DB>(
    pool: &Pool<DB>,
    statements: &[(String, Vec<BindValue>)],
) -> Result<Vec<u64>, sqlx::Error>
where
    DB: sqlx::Database,
    DB::QueryResult: RowsAffected,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Type<DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let mut transaction = pool.begin().await?;
    let mut changed = Vec::with_capacity(statements.len());
    for (sql, binds) in statements {
        let done = bind_all(sqlx::query::<DB>(sql), binds)
            .execute(&mut *transaction)
            .await?;
        changed.push(done.changed_rows());
    }
    transaction.commit().await?;
    Ok(changed)
}

/// How many rows a statement changed, whichever the engine.
trait RowsAffected {
    fn changed_rows(&self) -> u64;
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn changed_rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::mysql::MySqlQueryResult {
    fn changed_rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn changed_rows(&self) -> u64 {
        self.rows_affected()
    }
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

/// Writes PostgreSQL's binary `numeric` into `out` (cleared first) as decimal text in normal
/// form: no leading or trailing zeros, no `-0`. `None` when the bytes are not a numeric.
fn write_numeric(bytes: &[u8], out: &mut String) -> Option<()> {
    let word = |at: usize| -> Option<i32> {
        let pair = bytes.get(at..at + 2)?;
        Some(i32::from(i16::from_be_bytes([pair[0], pair[1]])))
    };
    let (count, weight, sign) = (word(0)?, word(2)?, word(4)? & 0xFFFF);
    out.clear();
    match sign {
        0xC000 => out.push_str("NaN"),
        0xD000 => out.push_str("Infinity"),
        0xF000 => out.push_str("-Infinity"),
        _ => {
            let digits = usize::try_from(count).ok()?;
            if bytes.len() < 8 + 2 * digits {
                return None;
            }
            // Base-10000 digit `index` counts 10000^(weight - index); absent ones are zero.
            let group = |index: i32| match usize::try_from(index) {
                Ok(index) if index < digits => word(8 + index * 2).unwrap_or(0),
                _ => 0,
            };
            let push_digits = |out: &mut String, group: i32, width: usize| {
                let text = [group / 1000, group / 100 % 10, group / 10 % 10, group % 10]
                    .map(|digit| b'0' + u8::try_from(digit).unwrap_or(0));
                // Four ASCII digits: always UTF-8.
                out.push_str(std::str::from_utf8(&text[4 - width..]).unwrap_or_default());
            };
            if sign == 0x4000 {
                out.push('-');
            }
            let integer_start = out.len();
            for index in 0..=weight {
                let value = group(index);
                if out.len() > integer_start {
                    push_digits(out, value, 4);
                } else if value != 0 {
                    let width = match value {
                        0..=9 => 1,
                        10..=99 => 2,
                        100..=999 => 3,
                        _ => 4,
                    };
                    push_digits(out, value, width);
                }
            }
            if out.len() == integer_start {
                out.push('0');
            }
            // The fraction runs to the last non-zero group, whose trailing zeros are dropped.
            let last = (weight + 1..count).rev().find(|&index| group(index) != 0);
            if let Some(last) = last {
                out.push('.');
                for index in weight + 1..last {
                    push_digits(out, group(index), 4);
                }
                let value = group(last);
                let width: u32 = match value {
                    _ if value % 1000 == 0 => 1,
                    _ if value % 100 == 0 => 2,
                    _ if value % 10 == 0 => 3,
                    _ => 4,
                };
                push_digits(out, value / 10_i32.pow(4 - width), width as usize);
            }
            if out == "-0" {
                out.remove(0);
            }
        }
    }
    Some(())
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
    sink: &mut impl ChunkSink,
) -> Result<(), sqlx::Error>
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
    // Streamed, so a whole-table read (multisets) holds one row at a time.
    let mut rows = query.fetch(pool);
    while let Some(row) = rows.try_next().await? {
        for (index, shape) in shapes.iter().enumerate() {
            sink.value(wire_at(&row, index, *shape)?.as_ref());
        }
        sink.end_row();
        if !sink.hand_on().await {
            break;
        }
    }
    Ok(())
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
        let shapes = [WireShape::Int, WireShape::Text, WireShape::Bytes];
        for chunk_size in [1, 3, 7, data.len()] {
            let mut reader = CopyBinaryReader::new(&shapes);
            let mut rows = WireRows::default();
            for chunk in data.chunks(chunk_size) {
                reader.feed(chunk, &mut rows).unwrap();
            }
            reader.finish().unwrap();
            assert_eq!(
                rows.rows,
                [
                    vec![Wire::Int(7), Wire::Text("café".to_owned()), Wire::Null],
                    vec![
                        Wire::Int(-1),
                        Wire::Text(String::new()),
                        Wire::Bytes(b"x".to_vec())
                    ],
                ],
                "chunks of {chunk_size}"
            );
        }
        let mut reader = CopyBinaryReader::new(&shapes[..2]);
        let error = reader.feed(&data, &mut WireRows::default()).unwrap_err();
        assert_eq!(error, "3 columns where 2 were expected");
        let mut reader = CopyBinaryReader::new(&shapes);
        reader
            .feed(&data[..data.len() - 2], &mut WireRows::default())
            .unwrap();
        assert!(reader.finish().is_err(), "a missing trailer is an error");
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
        let numeric_text = |bytes: &[u8]| {
            let mut text = String::new();
            write_numeric(bytes, &mut text).map(|()| text)
        };
        for (bytes, text) in cases {
            assert_eq!(numeric_text(&bytes).as_deref(), Some(text));
        }
        assert_eq!(numeric_text(&[0, 1]), None, "truncated input is refused");
        assert_eq!(
            numeric_text(&numeric(0, false, &[1, 2])[..10]),
            None,
            "missing digits are refused"
        );
    }

    /// `text` (`-?digits[.digits]`) in PostgreSQL's binary form, zero groups kept.
    fn binary_numeric(text: &str) -> Vec<u8> {
        let (negative, digits) = text
            .strip_prefix('-')
            .map_or((false, text), |rest| (true, rest));
        let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
        let int_width = int_part.len().div_ceil(4) * 4;
        let frac_width = frac_part.len().div_ceil(4) * 4;
        let padded = format!("{int_part:0>int_width$}{frac_part:0<frac_width$}");
        let groups: Vec<i16> = padded
            .as_bytes()
            .chunks(4)
            .map(|group| std::str::from_utf8(group).unwrap().parse().unwrap())
            .collect();
        numeric(i16::try_from(int_width / 4).unwrap() - 1, negative, &groups)
    }

    proptest::proptest! {
        #[test]
        fn binary_numerics_read_as_their_normal_text(
            negative in proptest::bool::ANY,
            int_part in "[0-9]{1,12}",
            frac_part in "[0-9]{0,9}",
        ) {
            let sign = if negative { "-" } else { "" };
            let text = if frac_part.is_empty() {
                format!("{sign}{int_part}")
            } else {
                format!("{sign}{int_part}.{frac_part}")
            };
            let mut written = String::new();
            write_numeric(&binary_numeric(&text), &mut written).unwrap();
            proptest::prop_assert_eq!(Some(written), crate::canonical::normalize_decimal(&text));
        }
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

    /// A sink that ends the read after its first chunk of rows.
    #[derive(Default)]
    struct FirstChunkOnly {
        rows: u64,
    }

    impl RowSink for FirstChunkOnly {
        fn value(&mut self, _value: WireRef<'_>) {}

        fn end_row(&mut self) {
            self.rows += 1;
        }
    }

    impl ChunkSink for FirstChunkOnly {
        async fn hand_on(&mut self) -> bool {
            false
        }
    }

    /// PostgreSQL reads left before the end of their COPY (the sink stopped) do not spoil the
    /// pool's connections for the reads after them.
    #[tokio::test]
    async fn reads_after_a_read_left_midway_still_work() {
        let db = tandem_testkit::PostgresDb::create("tandem_copy").await;
        let database = Database::connect(Side::Old, &db.url, 2, Access::ReadOnly)
            .await
            .unwrap();
        for _ in 0..4 {
            let mut sink = FirstChunkOnly::default();
            database
                .read_chunked(
                    "SELECT g::int8 FROM generate_series(1, 200000) g",
                    &[],
                    &[WireShape::Int],
                    &mut sink,
                )
                .await
                .unwrap();
            assert!(sink.rows > 0 && sink.rows < 200_000, "{} rows", sink.rows);
            let rows = database
                .rows("SELECT 7::int8", &[], &[WireShape::Int])
                .await
                .expect("a read after one left midway");
            assert_eq!(rows, [[Wire::Int(7)]]);
        }
    }
}
