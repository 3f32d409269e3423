//! Reading rows of one side: windows in key order (keyset pagination) and rows by key.

use std::cmp::Ordering;

use tandem_control::Side;

use crate::canonical::{Canonical, CanonicalSettings};
use crate::database::{BindValue, Database, Engine};
use crate::error::CompareError;
use crate::kinds::WireShape;
use crate::plan::{SideColumn, TablePlan};

/// One row in canonical form.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Key values, in key order.
    pub key: Vec<Canonical>,
    /// Compared values, in the plan's order.
    pub values: Vec<Canonical>,
}

impl Row {
    /// Appends the row's canonical encoding (key, then values).
    pub fn encode(&self, out: &mut Vec<u8>) {
        for value in self.key.iter().chain(&self.values) {
            value.encode(out);
        }
    }
}

/// Orders keys as windows are read: column by column.
#[must_use]
pub fn compare_keys(a: &[Canonical], b: &[Canonical]) -> Ordering {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.key_cmp(y))
        .find(|ordering| ordering.is_ne())
        .unwrap_or(Ordering::Equal)
}

/// Reads one side of a planned table.
#[derive(Debug)]
pub struct TableReader<'a> {
    db: &'a Database,
    side: Side,
    table: String,
    columns: Vec<&'a SideColumn>,
    key_count: usize,
    shapes: Vec<WireShape>,
    select: String,
    filter: String,
    settings: CanonicalSettings,
}

impl<'a> TableReader<'a> {
    /// A reader of `side` of `plan`, restricted by the `filter` SQL condition if any.
    #[must_use]
    pub fn new(
        db: &'a Database,
        plan: &'a TablePlan,
        filter: Option<&str>,
        settings: CanonicalSettings,
    ) -> TableReader<'a> {
        let side = db.side;
        let columns: Vec<&SideColumn> = plan.columns().map(|pair| pair.side(side)).collect();
        let list: Vec<&str> = columns
            .iter()
            .map(|column| column.projection.as_str())
            .collect();
        let table = plan.table(side).to_owned();
        let shapes = columns.iter().map(|column| column.shape).collect();
        TableReader {
            db,
            side,
            shapes,
            select: format!("SELECT {} FROM {}", list.join(", "), db.quote(&table)),
            table,
            columns,
            key_count: plan.keys.len(),
            filter: filter.map_or_else(|| "1 = 1".to_owned(), |sql| format!("({sql})")),
            settings,
        }
    }

    fn keys(&self) -> &[&'a SideColumn] {
        &self.columns[..self.key_count]
    }

    /// Up to `limit` rows with keys after `after` (from the start when `None`), in key order.
    ///
    /// # Errors
    /// When the query fails or the rows do not come back in tandem's key order.
    pub async fn window(
        &self,
        after: Option<&[Canonical]>,
        limit: usize,
    ) -> Result<Vec<Row>, CompareError> {
        let order: Vec<&str> = self
            .keys()
            .iter()
            .map(|key| key.order_by.as_str())
            .collect();
        let mut sql = format!("{} WHERE {}", self.select, self.filter);
        if after.is_some() {
            let binds: Vec<String> = (1..=self.key_count).map(|i| self.bind_expr(i)).collect();
            if self.key_count == 1 {
                sql.push_str(&format!(" AND {} > {}", order[0], binds[0]));
            } else {
                sql.push_str(&format!(
                    " AND ({}) > ({})",
                    order.join(", "),
                    binds.join(", ")
                ));
            }
        }
        sql.push_str(&format!(" ORDER BY {} LIMIT {limit}", order.join(", ")));
        let binds: Vec<BindValue> = after.into_iter().flatten().map(bind_value).collect();
        let rows = self.fetch(&sql, &binds).await?;
        let in_order = rows
            .windows(2)
            .all(|pair| compare_keys(&pair[0].key, &pair[1].key) == Ordering::Less);
        let after_cursor = match (after, rows.first()) {
            (Some(after), Some(first)) => compare_keys(after, &first.key) == Ordering::Less,
            _ => true,
        };
        if in_order && after_cursor {
            Ok(rows)
        } else {
            Err(CompareError::KeyOrder {
                table: self.table.clone(),
                side: self.side,
            })
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
        let order: Vec<&str> = self
            .keys()
            .iter()
            .map(|key| key.order_by.as_str())
            .collect();
        let mut next = 0;
        let mut placeholder = || {
            next += 1;
            self.bind_expr(next)
        };
        let condition = if self.key_count == 1 {
            let binds: Vec<String> = keys.iter().map(|_| placeholder()).collect();
            format!("{} IN ({})", order[0], binds.join(", "))
        } else {
            let matches: Vec<String> = keys
                .iter()
                .map(|_| {
                    let parts: Vec<String> = order
                        .iter()
                        .map(|column| format!("{column} = {}", placeholder()))
                        .collect();
                    format!("({})", parts.join(" AND "))
                })
                .collect();
            matches.join(" OR ")
        };
        let sql = format!("{} WHERE {} AND ({condition})", self.select, self.filter);
        let binds: Vec<BindValue> = keys.iter().flatten().map(bind_value).collect();
        self.fetch(&sql, &binds).await
    }

    /// The placeholder of the `index`-th key value (keys repeat in column order).
    fn bind_expr(&self, index: usize) -> String {
        let placeholder = self.db.placeholder(index);
        match self.db.engine {
            Engine::Postgres => {
                let key = self.keys()[(index - 1) % self.key_count];
                format!("CAST({placeholder} AS {})", key.declared)
            }
            Engine::MySql | Engine::Sqlite => placeholder,
        }
    }

    async fn fetch(&self, sql: &str, binds: &[BindValue]) -> Result<Vec<Row>, CompareError> {
        let rows = self
            .db
            .rows(sql, binds, &self.shapes)
            .await
            .map_err(self.db.query_failed(&self.table))?;
        Ok(rows
            .into_iter()
            .map(|wires| {
                let mut values: Vec<Canonical> = wires
                    .into_iter()
                    .zip(&self.columns)
                    .map(|(wire, column)| {
                        Canonical::from_wire(wire, column.reading, &self.settings)
                    })
                    .collect();
                let rest = values.split_off(self.key_count);
                Row {
                    key: values,
                    values: rest,
                }
            })
            .collect())
    }
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
