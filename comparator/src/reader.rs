//! Reading rows of one side: windows in key order (keyset pagination) and rows by key.

use std::sync::atomic::{AtomicUsize, Ordering};

use tandem_control::Side;

use crate::array_literal::array_literal;
use crate::calendar::{format_date, format_time, timestamp_text};
use crate::canonical::{
    decode_key, encode_key, Canonical, CanonicalSettings, ColumnReading, CompareKind, Wire,
};
use crate::database::{BindValue, ChunkSink, Database, Engine, RowSink};
use crate::error::CompareError;
use crate::kinds::{ColumnKind, WireShape};
use crate::plan::{SideColumn, TablePlan};
use crate::window::{EncodedRows, RowEncoder};

/// One row in canonical form.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Key values, in key order.
    pub key: Vec<Canonical>,
    /// Compared values, in the plan's order.
    pub values: Vec<Canonical>,
}

/// Reads one side of a planned table.
#[derive(Debug)]
pub struct TableReader {
    db: Database,
    side: Side,
    table: String,
    names: Vec<String>,
    columns: Vec<SideColumn>,
    key_count: usize,
    shapes: Vec<WireShape>,
    readings: Vec<ColumnReading>,
    select: String,
    filter: String,
    through: Option<Vec<Canonical>>,
    settings: CanonicalSettings,
    /// The width of the rows of the last window, in encoded bytes (0 before the first).
    row_bytes: AtomicUsize,
}

/// Most bytes reserved ahead for a window's encoding.
const MAX_ROOM_BYTES: usize = 64 << 20;

impl TableReader {
    /// A reader of `side` of `plan`, restricted by the `filter` SQL condition if any.
    #[must_use]
    pub fn new(
        db: &Database,
        plan: &TablePlan,
        filter: Option<&str>,
        settings: CanonicalSettings,
    ) -> TableReader {
        let side = db.side;
        let columns: Vec<SideColumn> = plan.columns().map(|pair| pair.side(side).clone()).collect();
        // Aliases keep ORDER BY on the columns themselves: PostgreSQL names `"k"::text` after
        // `k`, and a bare `ORDER BY "k"` would then sort by the text.
        let list: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(index, column)| format!("{} AS tandem_c{index}", column.projection))
            .collect();
        let table = plan.table(side).to_owned();
        let shapes = columns.iter().map(|column| column.shape).collect();
        let readings = columns.iter().map(|column| column.reading).collect();
        TableReader {
            db: db.clone(),
            side,
            names: plan.columns().map(|pair| pair.name.clone()).collect(),
            shapes,
            readings,
            select: format!("SELECT {} FROM {}", list.join(", "), db.quote(&table)),
            table,
            columns,
            key_count: plan.keys.len(),
            filter: filter.map_or_else(|| "1 = 1".to_owned(), |sql| format!("({sql})")),
            through: None,
            settings,
            row_bytes: AtomicUsize::new(0),
        }
    }

    /// The same reader, reading no row with a key after `through` (when `Some`).
    #[must_use]
    pub fn through(mut self, through: Option<Vec<Canonical>>) -> TableReader {
        self.through = through;
        self
    }

    /// The side it reads.
    #[must_use]
    pub fn side(&self) -> Side {
        self.side
    }

    /// The table it reads.
    #[must_use]
    pub fn table(&self) -> &str {
        &self.table
    }

    fn keys(&self) -> &[SideColumn] {
        &self.columns[..self.key_count]
    }

    /// The key columns as `ORDER BY` takes them (in tandem's key order), first to last.
    fn key_order(&self) -> Vec<&str> {
        self.keys()
            .iter()
            .map(|key| key.order_by.as_str())
            .collect()
    }

    /// Up to `limit` rows with keys after `after` (from the start when `None`), in key order.
    ///
    /// # Errors
    /// When the query fails or the rows do not come back in tandem's key order.
    pub async fn window(
        &self,
        after: Option<&[Canonical]>,
        limit: usize,
    ) -> Result<EncodedRows, CompareError> {
        let (mut sql, binds) = self.ordered_select(after);
        sql.push_str(&format!(" LIMIT {limit}"));
        // Room for `limit` rows as wide as the last window's (once known), within reason.
        let room = match self.row_bytes.load(Ordering::Relaxed) {
            0 => (0, 0),
            width => (limit, limit.saturating_mul(width).min(MAX_ROOM_BYTES)),
        };
        let rows = self.fetch(&sql, &binds, room).await?;
        if let Some(width) = rows.byte_len().checked_div(rows.len()) {
            self.row_bytes.store(width, Ordering::Relaxed);
        }
        let after = after.map(encode_key);
        if rows.in_key_order_after(after.as_deref()) {
            Ok(rows)
        } else {
            Err(CompareError::KeyOrder {
                table: self.table.clone(),
                side: self.side,
            })
        }
    }

    /// The key of the row `skip` rows after the first one with a key after `after` (from the
    /// start when `None`), in key order: the server steps over the `skip` rows (`OFFSET`, on an
    /// index of the key an index-only scan) and only the one key crosses the wire. `None`
    /// when fewer rows follow.
    ///
    /// # Errors
    /// When the query fails or the key does not follow `after` in tandem's key order.
    pub async fn key_after(
        &self,
        after: Option<&[Canonical]>,
        skip: usize,
    ) -> Result<Option<Vec<Canonical>>, CompareError> {
        let (mut sql, binds) = self.ordered_select(after);
        sql.push_str(&format!(" LIMIT 1 OFFSET {skip}"));
        let rows = self.fetch(&sql, &binds, (1, 0)).await?;
        let after = after.map(encode_key);
        if !rows.in_key_order_after(after.as_deref()) {
            return Err(CompareError::KeyOrder {
                table: self.table.clone(),
                side: self.side,
            });
        }
        rows.last_key()
            .map(|key| decode_key(key).ok_or_else(|| CompareError::Encoding(self.table.clone())))
            .transpose()
    }

    /// The keys [`TableReader::key_after`] steps to one after the other from the start
    /// (the key `skip` rows after the first, then the key `skip` rows after the one after it,
    /// …), in key order, found by PostgreSQL in one recursive query: each step the same
    /// `LIMIT 1 OFFSET skip` scan from the last key found, with no round trip between steps.
    ///
    /// # Errors
    /// When the query fails (or the side is not PostgreSQL) or the keys do not come back in
    /// tandem's key order.
    pub async fn stepped_keys(&self, skip: usize) -> Result<Vec<Vec<Canonical>>, CompareError> {
        let projections: Vec<&str> = self
            .keys()
            .iter()
            .map(|key| key.projection.as_str())
            .collect();
        let order = self.key_order();
        let table = self.db.quote(&self.table);
        let sql = stepped_keys_sql((&projections, &order), (&table, &self.filter), skip);
        let rows = self.fetch(&sql, &[], (0, 0)).await?;
        if !rows.in_key_order_after(None) {
            return Err(CompareError::KeyOrder {
                table: self.table.clone(),
                side: self.side,
            });
        }
        (0..rows.len())
            .map(|index| {
                decode_key(rows.key(index))
                    .ok_or_else(|| CompareError::Encoding(self.table.clone()))
            })
            .collect()
    }

    /// The rows with keys after `after` (and through the reader's last key), in key order.
    fn ordered_select(&self, after: Option<&[Canonical]>) -> (String, Vec<BindValue>) {
        let order = self.key_order();
        let mut sql = format!("{} WHERE {}", self.select, self.filter);
        let mut binds = Vec::new();
        for (operator, key) in [(">", after), ("<=", self.through.as_deref())] {
            if let Some(key) = key {
                let condition = self.key_comparison(operator, key, &mut binds);
                sql.push_str(&format!(" AND {condition}"));
            }
        }
        sql.push_str(&format!(" ORDER BY {}", order.join(", ")));
        (sql, binds)
    }

    /// Whether a key column is ordered by an expression (a collation, a cast, `LOWER`) that
    /// no index serves: each window query would then sort the whole table again, so such a
    /// side is read in one ordered pass instead ([`TableReader::read_in_one_pass`]).
    #[must_use]
    pub fn needs_one_pass(&self) -> bool {
        self.keys()
            .iter()
            .zip(&self.names)
            .any(|(key, name)| key.order_by != self.db.quote(name))
    }

    /// Reads the rows with keys after `after` in one ordered query, handing them to `chunks`
    /// about `max_rows` rows or `max_bytes` bytes at a time, each with whether more follow; an
    /// error ends the chunks. Returns when every row was handed on, the first error was, or
    /// `chunks` was closed.
    pub async fn read_in_one_pass(
        &self,
        after: Option<&[Canonical]>,
        (max_rows, max_bytes): (usize, usize),
        chunks: &tokio::sync::mpsc::Sender<Chunk>,
    ) {
        let (sql, binds) = self.ordered_select(after);
        let mut pass = OrderedPass {
            encoder: RowEncoder::new(&self.readings, self.key_count, &self.settings),
            reader: self,
            max_rows,
            max_bytes,
            last_key: after.map(encode_key),
            chunks,
            ended: false,
        };
        let read = self
            .db
            .read_chunked(&sql, &binds, &self.shapes, &mut pass)
            .await
            .map_err(self.db.query_failed(&self.table));
        if pass.ended {
            return;
        }
        let last = read.and_then(|()| pass.take_in_order());
        let _ = chunks.send(last.map(|rows| (rows, false))).await;
    }

    /// Reads every row (restricted by the filter), in no particular order, into `sink`.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn scan(&self, sink: &mut impl RowSink) -> Result<(), CompareError> {
        let sql = format!("{} WHERE {}", self.select, self.filter);
        self.db
            .read(&sql, &[], &self.shapes, sink)
            .await
            .map_err(self.db.query_failed(&self.table))
    }

    /// How each column read becomes canonical, in the plan's order.
    #[must_use]
    pub fn readings(&self) -> &[ColumnReading] {
        &self.readings
    }

    /// `key_columns OPERATOR key`, comparing whole keys in key order, with `key`'s values
    /// appended to `binds`.
    fn key_comparison(
        &self,
        operator: &str,
        key: &[Canonical],
        binds: &mut Vec<BindValue>,
    ) -> String {
        let order = self.key_order();
        let placeholders: Vec<String> = self
            .key_binds(key)
            .enumerate()
            .map(|(index, value)| {
                let placeholder = self.key_placeholder(binds.len(), index, &value);
                binds.push(value);
                placeholder
            })
            .collect();
        if self.key_count == 1 {
            format!("{} {operator} {}", order[0], placeholders[0])
        } else {
            format!(
                "({}) {operator} ({})",
                order.join(", "),
                placeholders.join(", ")
            )
        }
    }

    /// The rows with the given keys that exist (in no particular order).
    ///
    /// # Errors
    /// When the query fails.
    pub async fn rows_with_keys(&self, keys: &[Vec<Canonical>]) -> Result<Vec<Row>, CompareError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let order = self.key_order();
        let binds: Vec<BindValue> = keys.iter().flat_map(|key| self.key_binds(key)).collect();
        let placeholders: Vec<String> = binds
            .iter()
            .enumerate()
            .map(|(index, value)| self.key_placeholder(index, index % self.key_count, value))
            .collect();
        let condition = if self.key_count == 1 {
            format!("{} IN ({})", order[0], placeholders.join(", "))
        } else {
            let matches: Vec<String> = placeholders
                .chunks(self.key_count)
                .map(|row| {
                    let parts: Vec<String> = order
                        .iter()
                        .zip(row)
                        .map(|(column, placeholder)| format!("{column} = {placeholder}"))
                        .collect();
                    format!("({})", parts.join(" AND "))
                })
                .collect();
            matches.join(" OR ")
        };
        let sql = format!("{} WHERE {} AND ({condition})", self.select, self.filter);
        self.fetch(&sql, &binds, (0, 0))
            .await?
            .decode_all()
            .ok_or_else(|| CompareError::Encoding(self.table.clone()))
    }

    /// Checks that the key columns identify rows: no NULL, no repeated value (needed when the
    /// key is not the primary key; costs a scan of the table).
    ///
    /// # Errors
    /// [`CompareError::KeyNotUnique`] when they do not, or when the query fails.
    pub async fn check_key_identifies_rows(&self) -> Result<(), CompareError> {
        let order = self.key_order();
        let table = self.db.quote(&self.table);
        let nulls: Vec<String> = order
            .iter()
            .map(|column| format!("{column} IS NULL"))
            .collect();
        let probes = [
            (
                format!(
                    "SELECT COUNT(*) FROM (SELECT 1 AS found FROM {table} WHERE {} AND ({}) LIMIT 1) probe",
                    self.filter,
                    nulls.join(" OR ")
                ),
                "hold NULLs",
            ),
            (
                format!(
                    "SELECT COUNT(*) FROM (SELECT 1 AS found FROM {table} WHERE {} GROUP BY {} \
                     HAVING COUNT(*) > 1 LIMIT 1) probe",
                    self.filter,
                    order.join(", ")
                ),
                "repeat a value",
            ),
        ];
        for (sql, reason) in probes {
            let found = self
                .db
                .rows(&sql, &[], &[WireShape::Int])
                .await
                .map_err(self.db.query_failed(&self.table))?;
            if found.first().and_then(|row| row.first()) != Some(&Wire::Int(0)) {
                return Err(CompareError::KeyNotUnique {
                    table: self.table.clone(),
                    side: self.side,
                    reason,
                });
            }
        }
        Ok(())
    }

    /// An INSERT of `row` (as read from the other side) into this side.
    #[must_use]
    pub fn insert_statement(&self, row: &Row) -> (String, Vec<BindValue>) {
        let values: Vec<&Canonical> = row.key.iter().chain(&row.values).collect();
        let binds: Vec<BindValue> = values
            .iter()
            .zip(&self.columns)
            .map(|(value, column)| self.write_value(value, column))
            .collect();
        let columns: Vec<String> = self.names.iter().map(|name| self.db.quote(name)).collect();
        let placeholders: Vec<String> = (0..binds.len())
            .map(|index| self.write_placeholder(index, &self.columns[index]))
            .collect();
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            self.db.quote(&self.table),
            columns.join(", "),
            placeholders.join(", ")
        );
        (sql, binds)
    }

    /// One INSERT of `rows` (as read from the other side) that skips every row whose key
    /// this side already holds: each row it changes is one inserted.
    #[must_use]
    pub fn insert_if_absent_statement(&self, rows: &[Row]) -> (String, Vec<BindValue>) {
        let mut binds = Vec::with_capacity(rows.len() * self.columns.len());
        let mut tuples = Vec::with_capacity(rows.len());
        for row in rows {
            let placeholders: Vec<String> = row
                .key
                .iter()
                .chain(&row.values)
                .zip(&self.columns)
                .map(|(value, column)| {
                    let placeholder = self.write_placeholder(binds.len(), column);
                    binds.push(self.write_value(value, column));
                    placeholder
                })
                .collect();
            tuples.push(format!("({})", placeholders.join(", ")));
        }
        let columns: Vec<String> = self.names.iter().map(|name| self.db.quote(name)).collect();
        let (verb, tail) = match self.db.engine {
            Engine::MySql => ("INSERT IGNORE", ""),
            Engine::Postgres | Engine::Sqlite => ("INSERT", " ON CONFLICT DO NOTHING"),
        };
        let sql = format!(
            "{verb} INTO {} ({}) VALUES {}{tail}",
            self.db.quote(&self.table),
            columns.join(", "),
            tuples.join(", ")
        );
        (sql, binds)
    }

    /// A `COPY … FROM STDIN` (text format) of rows into this side's columns, key first, in the
    /// order of [`TableReader::write_values`] (PostgreSQL only). Each value goes through its
    /// column type's input function, as the row path's `CAST` of a bound text value does; a
    /// key this side holds already fails it (unique violation).
    #[must_use]
    pub fn copy_in_statement(&self) -> String {
        let columns: Vec<String> = self.names.iter().map(|name| self.db.quote(name)).collect();
        format!(
            "COPY {} ({}) FROM STDIN",
            self.db.quote(&self.table),
            columns.join(", ")
        )
    }

    /// `row`'s values (as read from the other side) in the form this side's columns accept,
    /// key first: what every write of the row binds.
    pub fn write_values<'r>(&'r self, row: &'r Row) -> impl Iterator<Item = BindValue> + 'r {
        row.key
            .iter()
            .chain(&row.values)
            .zip(&self.columns)
            .map(|(value, column)| self.write_value(value, column))
    }

    /// An UPDATE that sets the value columns at `changed` to `row`'s only where this side's
    /// row still holds `current`'s compared values (compare and set): it changes no row when
    /// the row was written meanwhile.
    #[must_use]
    pub fn update_if_unchanged_statement(
        &self,
        row: &Row,
        changed: &[usize],
        current: &Row,
    ) -> (String, Vec<BindValue>) {
        let (mut sql, mut binds) = self.update_statement(row, changed);
        sql.push_str(&self.unchanged_condition(current, &mut binds));
        (sql, binds)
    }

    /// A DELETE of this side's row with `current`'s key only where it still holds `current`'s
    /// compared values.
    #[must_use]
    pub fn delete_if_unchanged_statement(&self, current: &Row) -> (String, Vec<BindValue>) {
        let (mut sql, mut binds) = self.delete_statement(&current.key);
        sql.push_str(&self.unchanged_condition(current, &mut binds));
        (sql, binds)
    }

    /// ` AND v1 IS NOT DISTINCT FROM ? AND …` over every compared value column of `current`,
    /// its values appended to `binds`.
    fn unchanged_condition(&self, current: &Row, binds: &mut Vec<BindValue>) -> String {
        let mut condition = String::new();
        for (index, value) in current.values.iter().enumerate() {
            let position = self.key_count + index;
            let (Some(column), Some(name)) = (self.columns.get(position), self.names.get(position))
            else {
                continue;
            };
            let stored = self.db.quote(name);
            let placeholder = self.db.placeholder(binds.len() + 1);
            let declared = column.declared.to_ascii_lowercase();
            let test = match self.db.engine {
                // Arrays of `json` and `xml` have no equality operator either: compared as
                // arrays of jsonb (by value) and of text.
                Engine::Postgres if column.storage == ColumnKind::Array => {
                    let compared = if declared.starts_with("json") {
                        "jsonb[]"
                    } else if declared.starts_with("xml") {
                        "text[]"
                    } else {
                        declared.as_str()
                    };
                    format!(
                        "CAST({stored} AS {compared}) IS NOT DISTINCT FROM \
                         CAST(CAST({placeholder} AS {}) AS {compared})",
                        column.declared
                    )
                }
                // `json` and `xml` have no equality operator; jsonb's is by value.
                Engine::Postgres if declared.starts_with("json") => format!(
                    "CAST({stored} AS jsonb) IS NOT DISTINCT FROM CAST({placeholder} AS jsonb)"
                ),
                Engine::Postgres if declared == "xml" => format!(
                    "CAST({stored} AS text) IS NOT DISTINCT FROM CAST({placeholder} AS text)"
                ),
                Engine::Postgres => format!(
                    "{stored} IS NOT DISTINCT FROM {}",
                    self.write_placeholder(binds.len(), column)
                ),
                Engine::MySql if declared == "json" => {
                    format!("{stored} <=> CAST({placeholder} AS JSON)")
                }
                Engine::MySql => format!("{stored} <=> {placeholder}"),
                Engine::Sqlite => format!("{stored} IS {placeholder}"),
            };
            binds.push(self.write_value(value, column));
            condition.push_str(" AND ");
            condition.push_str(&test);
        }
        condition
    }

    /// An UPDATE of this side's row with `row`'s key, setting the value columns at `changed`.
    #[must_use]
    pub fn update_statement(&self, row: &Row, changed: &[usize]) -> (String, Vec<BindValue>) {
        let mut binds = Vec::new();
        let mut assignments = Vec::new();
        for &index in changed {
            let position = self.key_count + index;
            let (Some(value), Some(column)) = (row.values.get(index), self.columns.get(position))
            else {
                continue;
            };
            assignments.push(format!(
                "{} = {}",
                self.db.quote(&self.names[position]),
                self.write_placeholder(binds.len(), column)
            ));
            binds.push(self.write_value(value, column));
        }
        let (condition, key_binds) = self.key_condition(&row.key, binds.len());
        binds.extend(key_binds);
        let sql = format!(
            "UPDATE {} SET {} WHERE {condition}",
            self.db.quote(&self.table),
            assignments.join(", ")
        );
        (sql, binds)
    }

    /// A DELETE of this side's row with `key`.
    #[must_use]
    pub fn delete_statement(&self, key: &[Canonical]) -> (String, Vec<BindValue>) {
        let (condition, binds) = self.key_condition(key, 0);
        let sql = format!(
            "DELETE FROM {} WHERE {condition}",
            self.db.quote(&self.table)
        );
        (sql, binds)
    }

    /// `k1 = ? AND k2 = ?` for `key`, with placeholders numbered after `bound` earlier ones.
    fn key_condition(&self, key: &[Canonical], bound: usize) -> (String, Vec<BindValue>) {
        let binds: Vec<BindValue> = self.key_binds(key).collect();
        let parts: Vec<String> = self
            .keys()
            .iter()
            .zip(&binds)
            .enumerate()
            .map(|(index, (column, value))| {
                let placeholder = self.key_placeholder(bound + index, index, value);
                format!("{} = {placeholder}", column.order_by)
            })
            .collect();
        (parts.join(" AND "), binds)
    }

    /// The placeholder of a written value: cast to the column's type on PostgreSQL.
    fn write_placeholder(&self, index: usize, column: &SideColumn) -> String {
        let placeholder = self.db.placeholder(index + 1);
        match self.db.engine {
            Engine::Postgres => format!("CAST({placeholder} AS {})", column.declared),
            Engine::MySql | Engine::Sqlite => placeholder,
        }
    }

    /// A canonical value in the form this side's column accepts.
    fn write_value(&self, value: &Canonical, column: &SideColumn) -> BindValue {
        let postgres = self.db.engine == Engine::Postgres;
        match value {
            Canonical::Null => BindValue::Null,
            Canonical::Bool(value) if postgres && column.storage == ColumnKind::Bool => {
                BindValue::Text(value.to_string())
            }
            Canonical::Text(text) if column.storage == ColumnKind::Bytes => {
                BindValue::Bytes(text.clone().into_bytes())
            }
            Canonical::Bool(value) => BindValue::Int(i64::from(*value)),
            // An array (or a JSON array from MySQL) into a PostgreSQL array column: as the
            // array literal its cast reads; what is no array is bound as it is, and the cast
            // refuses it.
            Canonical::Json(text) if postgres && column.storage == ColumnKind::Array => {
                let json_elements = column.declared.to_ascii_lowercase().starts_with("json");
                BindValue::Text(array_literal(text, json_elements).unwrap_or_else(|| text.clone()))
            }
            Canonical::Number(text) | Canonical::Text(text) | Canonical::Json(text) => {
                BindValue::Text(text.clone())
            }
            Canonical::Float(value) => BindValue::Text(value.to_string()),
            Canonical::Bytes(bytes) => BindValue::Bytes(bytes.clone()),
            Canonical::Uuid(bytes) if column.shape == WireShape::Bytes => {
                BindValue::Bytes(bytes.to_vec())
            }
            Canonical::Timestamp(micros) if column.reading.naive_time => BindValue::Text(
                timestamp_text(micros.saturating_add(self.settings.assume_tz_offset_micros)),
            ),
            Canonical::Timestamp(micros) if postgres => {
                BindValue::Text(timestamp_text(*micros) + "+00:00")
            }
            Canonical::Timestamp(micros) => BindValue::Text(timestamp_text(*micros)),
            Canonical::Date(days) => BindValue::Text(format_date(*days)),
            Canonical::Time(micros) => BindValue::Text(format_time(*micros)),
            Canonical::Uuid(_) => match value.to_json() {
                serde_json::Value::String(text) => BindValue::Text(text),
                other => BindValue::Text(other.to_string()),
            },
        }
    }

    /// A key's values as this side stores them: UUIDs as bytes where the column holds
    /// bytes, as lower-case text otherwise (the order expression lower-cases text UUIDs).
    fn key_binds<'k>(&'k self, key: &'k [Canonical]) -> impl Iterator<Item = BindValue> + 'k {
        key.iter()
            .zip(self.keys())
            .map(|(value, column)| match value {
                Canonical::Uuid(bytes) if column.shape == WireShape::Bytes => {
                    BindValue::Bytes(bytes.to_vec())
                }
                other => bind_value(other),
            })
    }

    /// The placeholder of the value bound at `position` (0-based) for key column `key_index`,
    /// typed so the engine compares it with the key exactly (never through a double).
    fn key_placeholder(&self, position: usize, key_index: usize, value: &BindValue) -> String {
        let placeholder = self.db.placeholder(position + 1);
        let kind = self.keys()[key_index].reading.kind;
        match (self.db.engine, value, kind) {
            (Engine::Postgres, BindValue::Int(_), _) => format!("CAST({placeholder} AS int8)"),
            (Engine::Postgres, BindValue::Bytes(_), _) => format!("CAST({placeholder} AS bytea)"),
            (Engine::Postgres, BindValue::Text(_), CompareKind::Number) => {
                format!("CAST({placeholder} AS numeric)")
            }
            (Engine::Postgres, BindValue::Text(_), CompareKind::Uuid)
                if self.keys()[key_index].storage == ColumnKind::Uuid =>
            {
                format!("CAST({placeholder} AS uuid)")
            }
            (Engine::Postgres, BindValue::Text(_), _) => format!("CAST({placeholder} AS text)"),
            (Engine::MySql, BindValue::Text(_), CompareKind::Number) => {
                format!("CAST({placeholder} AS DECIMAL(65,30))")
            }
            _ => placeholder,
        }
    }

    /// Runs a query and encodes its rows, with room made for `(rows, bytes)`.
    async fn fetch(
        &self,
        sql: &str,
        binds: &[BindValue],
        (rows, bytes): (usize, usize),
    ) -> Result<EncodedRows, CompareError> {
        let mut encoder =
            RowEncoder::new(&self.readings, self.key_count, &self.settings).with_room(rows, bytes);
        self.db
            .read(sql, binds, &self.shapes, &mut encoder)
            .await
            .map_err(self.db.query_failed(&self.table))?;
        Ok(encoder.finish())
    }
}

/// A chunk of rows in key order and whether the side may have more after it.
pub type Chunk = Result<(EncodedRows, bool), CompareError>;

/// One ordered pass over a side, handed on chunk by chunk while the query streams.
struct OrderedPass<'r> {
    encoder: RowEncoder<'r>,
    reader: &'r TableReader,
    max_rows: usize,
    max_bytes: usize,
    /// The last key handed on (or the key the pass starts after).
    last_key: Option<Vec<u8>>,
    chunks: &'r tokio::sync::mpsc::Sender<Chunk>,
    /// An error was handed on, or the receiver is gone: nothing more is sent.
    ended: bool,
}

impl OrderedPass<'_> {
    /// The rows collected so far, checked to follow the last key handed on in key order.
    fn take_in_order(&mut self) -> Result<EncodedRows, CompareError> {
        let reader = self.reader;
        let fresh = RowEncoder::new(&reader.readings, reader.key_count, &reader.settings);
        let rows = std::mem::replace(&mut self.encoder, fresh).finish();
        if !rows.in_key_order_after(self.last_key.as_deref()) {
            return Err(CompareError::KeyOrder {
                table: reader.table.clone(),
                side: reader.side,
            });
        }
        if let Some(last) = rows.last_key() {
            self.last_key = Some(last.to_vec());
        }
        Ok(rows)
    }
}

impl RowSink for OrderedPass<'_> {
    fn value(&mut self, value: crate::canonical::WireRef<'_>) {
        self.encoder.value(value);
    }

    fn end_row(&mut self) {
        self.encoder.end_row();
    }
}

impl ChunkSink for OrderedPass<'_> {
    async fn hand_on(&mut self) -> bool {
        if self.encoder.len() < self.max_rows && self.encoder.byte_len() < self.max_bytes {
            return true;
        }
        let chunk = self.take_in_order();
        let failed = chunk.is_err();
        let sent = self.chunks.send(chunk.map(|rows| (rows, true))).await;
        self.ended = failed || sent.is_err();
        !self.ended
    }
}

/// PostgreSQL's recursive query behind [`TableReader::stepped_keys`]: each step selects the
/// key's columns as read (`tandem_c…`), its order expressions (`tandem_o…`, which the next
/// step's key condition compares whole, as a row) and the step's number (`tandem_n`, which
/// orders the result), from `table` where `filter` holds.
fn stepped_keys_sql(
    (projections, order): (&[&str], &[&str]),
    (table, filter): (&str, &str),
    skip: usize,
) -> String {
    let read: Vec<String> = projections
        .iter()
        .enumerate()
        .map(|(index, projection)| format!("{projection} AS tandem_c{index}"))
        .collect();
    let ordered: Vec<String> = order
        .iter()
        .enumerate()
        .map(|(index, expression)| format!("{expression} AS tandem_o{index}"))
        .collect();
    let last: Vec<String> = (0..order.len())
        .map(|index| format!("tandem_bounds.tandem_o{index}"))
        .collect();
    let keys: Vec<String> = (0..projections.len())
        .map(|index| format!("tandem_c{index}"))
        .collect();
    let (read, ordered, order) = (read.join(", "), ordered.join(", "), order.join(", "));
    let step = |condition: &str| {
        format!(
            "SELECT {read}, {ordered} FROM {table} WHERE {filter}{condition} \
             ORDER BY {order} LIMIT 1 OFFSET {skip}"
        )
    };
    format!(
        "WITH RECURSIVE tandem_bounds AS (\
         SELECT tandem_first.*, 1::int8 AS tandem_n FROM ({first}) AS tandem_first \
         UNION ALL \
         SELECT tandem_next.*, tandem_bounds.tandem_n + 1 FROM tandem_bounds \
         CROSS JOIN LATERAL ({next}) AS tandem_next) \
         SELECT {keys} FROM tandem_bounds ORDER BY tandem_n",
        first = step(""),
        next = step(&format!(" AND ({order}) > ({})", last.join(", "))),
        keys = keys.join(", "),
    )
}

/// The value a key is bound as when reading by key or after a key.
fn bind_value(value: &Canonical) -> BindValue {
    match value {
        Canonical::Number(text) => text
            .parse::<i64>()
            .map_or_else(|_| BindValue::Text(text.clone()), BindValue::Int),
        Canonical::Bytes(bytes) => BindValue::Bytes(bytes.clone()),
        other => match other.to_json() {
            serde_json::Value::String(text) => BindValue::Text(text),
            json => BindValue::Text(json.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::stepped_keys_sql;

    #[test]
    fn each_step_starts_after_the_last_key_found_compared_as_a_row() {
        let sql = stepped_keys_sql(
            (
                &["\"r\"::text", "\"n\"::int8"],
                &["\"r\" COLLATE \"C\"", "\"n\""],
            ),
            ("\"pairs\"", "(n > 2)"),
            999,
        );
        assert!(
            sql.starts_with("WITH RECURSIVE tandem_bounds AS ("),
            "{sql}"
        );
        // The first step from the start, each next one after the key the last one found.
        assert!(
            sql.contains(
                "FROM \"pairs\" WHERE (n > 2) ORDER BY \"r\" COLLATE \"C\", \"n\" LIMIT 1 OFFSET 999"
            ),
            "{sql}"
        );
        assert!(
            sql.contains(
                "WHERE (n > 2) AND (\"r\" COLLATE \"C\", \"n\") > \
                 (tandem_bounds.tandem_o0, tandem_bounds.tandem_o1) ORDER BY"
            ),
            "{sql}"
        );
        assert_eq!(sql.matches("OFFSET 999").count(), 2, "{sql}");
        // The keys as read, in the order the steps found them.
        assert!(
            sql.ends_with("SELECT tandem_c0, tandem_c1 FROM tandem_bounds ORDER BY tandem_n"),
            "{sql}"
        );
    }
}
