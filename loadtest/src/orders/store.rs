//! Order storage on SQLite, PostgreSQL or MySQL/MariaDB, one SQL dialect per engine.

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use super::model::Order;

/// Errors of the order store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no supported engine.
    #[error("unsupported database URL (expected sqlite://, postgres:// or mysql://)")]
    UnsupportedUrl,
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

#[derive(Debug)]
struct Dialect {
    schema: &'static str,
    upsert: &'static str,
    select: &'static str,
    select_for_update: &'static str,
    update: &'static str,
    delete: &'static str,
    list: &'static str,
}

const POSTGRES: Dialect = Dialect {
    schema: "CREATE TABLE IF NOT EXISTS orders (id BIGINT PRIMARY KEY, customer TEXT NOT NULL, \
             amount NUMERIC(12,2) NOT NULL, status TEXT NOT NULL, note TEXT)",
    upsert: "INSERT INTO orders (id, customer, amount, status, note) \
             VALUES ($1, $2, CAST($3 AS NUMERIC), $4, $5) ON CONFLICT (id) DO UPDATE SET \
             customer = EXCLUDED.customer, amount = EXCLUDED.amount, status = EXCLUDED.status, \
             note = EXCLUDED.note",
    select: "SELECT id, customer, CAST(amount AS TEXT) AS amount, status, note FROM orders WHERE id = $1",
    select_for_update: "SELECT id, customer, CAST(amount AS TEXT) AS amount, status, note \
                        FROM orders WHERE id = $1 FOR UPDATE",
    update: "UPDATE orders SET customer = $1, amount = CAST($2 AS NUMERIC), status = $3, note = $4 \
             WHERE id = $5",
    delete: "DELETE FROM orders WHERE id = $1",
    list: "SELECT id, customer, CAST(amount AS TEXT) AS amount, status, note FROM orders \
           ORDER BY id LIMIT $1",
};

const MYSQL: Dialect = Dialect {
    schema:
        "CREATE TABLE IF NOT EXISTS orders (id BIGINT PRIMARY KEY, customer VARCHAR(255) NOT NULL, \
             amount DECIMAL(12,2) NOT NULL, status VARCHAR(32) NOT NULL, note VARCHAR(10000) NULL) \
             CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
    upsert: "INSERT INTO orders (id, customer, amount, status, note) VALUES (?, ?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE customer = VALUES(customer), amount = VALUES(amount), \
             status = VALUES(status), note = VALUES(note)",
    select:
        "SELECT id, customer, CAST(amount AS CHAR) AS amount, status, note FROM orders WHERE id = ?",
    select_for_update: "SELECT id, customer, CAST(amount AS CHAR) AS amount, status, note \
                        FROM orders WHERE id = ? FOR UPDATE",
    update: "UPDATE orders SET customer = ?, amount = ?, status = ?, note = ? WHERE id = ?",
    delete: "DELETE FROM orders WHERE id = ?",
    list: "SELECT id, customer, CAST(amount AS CHAR) AS amount, status, note FROM orders \
           ORDER BY id LIMIT ?",
};

const SQLITE: Dialect = Dialect {
    schema: "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, \
             amount TEXT NOT NULL, status TEXT NOT NULL, note TEXT)",
    upsert: "INSERT INTO orders (id, customer, amount, status, note) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET customer = excluded.customer, \
             amount = excluded.amount, status = excluded.status, note = excluded.note",
    select: "SELECT id, customer, amount, status, note FROM orders WHERE id = $1",
    select_for_update: "SELECT id, customer, amount, status, note FROM orders WHERE id = $1",
    update: "UPDATE orders SET customer = $1, amount = $2, status = $3, note = $4 WHERE id = $5",
    delete: "DELETE FROM orders WHERE id = $1",
    list: "SELECT id, customer, amount, status, note FROM orders ORDER BY id LIMIT $1",
};

/// The orders table on one database.
#[derive(Debug, Clone)]
pub struct OrderStore {
    pool: AnyPool,
    sql: &'static Dialect,
}

impl OrderStore {
    /// Connects to `url` and creates the `orders` table if it is absent.
    ///
    /// # Errors
    /// When the URL is unsupported or the database fails.
    pub async fn open(url: &str) -> Result<OrderStore, StoreError> {
        sqlx::any::install_default_drivers();
        let (sql, url) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (&POSTGRES, url.to_owned())
        } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            (&MYSQL, url.replacen("mariadb://", "mysql://", 1))
        } else if url.starts_with("sqlite:") {
            let separator = if url.contains('?') { '&' } else { '?' };
            let url = if url.contains("mode=") || url.contains(":memory:") {
                url.to_owned()
            } else {
                format!("{url}{separator}mode=rwc")
            };
            (&SQLITE, url)
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        let pool = AnyPoolOptions::new()
            // One SQLite writer at a time avoids SQLITE_BUSY under concurrent upserts.
            .max_connections(if std::ptr::eq(sql, &SQLITE) { 1 } else { 16 })
            .connect(&url)
            .await?;
        sqlx::query(sql.schema).execute(&pool).await?;
        Ok(OrderStore { pool, sql })
    }

    /// Inserts or replaces an order.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn upsert(&self, order: &Order) -> Result<(), StoreError> {
        sqlx::query(self.sql.upsert)
            .bind(order.id)
            .bind(&order.customer)
            .bind(&order.amount)
            .bind(&order.status)
            .bind(&order.note)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// One order.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn get(&self, id: i64) -> Result<Option<Order>, StoreError> {
        let row = sqlx::query(self.sql.select)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(order_of).transpose()?)
    }

    /// Applies `change` to an order inside a transaction; `None` when there is no such order.
    ///
    /// # Errors
    /// When the database fails; `change`'s own error is passed through as `Ok(Some(Err))`.
    pub async fn update<E>(
        &self,
        id: i64,
        change: impl FnOnce(Order) -> Result<Order, E>,
    ) -> Result<Option<Result<Order, E>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(self.sql.select_for_update)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let order = match change(order_of(&row)?) {
            Ok(order) => order,
            Err(err) => return Ok(Some(Err(err))),
        };
        sqlx::query(self.sql.update)
            .bind(&order.customer)
            .bind(&order.amount)
            .bind(&order.status)
            .bind(&order.note)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(Ok(order)))
    }

    /// Deletes an order; whether it existed.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn delete(&self, id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(self.sql.delete)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The first `limit` orders by id.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn list(&self, limit: i64) -> Result<Vec<Order>, StoreError> {
        let rows = sqlx::query(self.sql.list)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(order_of).collect::<Result<_, _>>()?)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn order_of(row: &AnyRow) -> Result<Order, sqlx::Error> {
    Ok(Order {
        id: row.try_get("id")?,
        customer: row.try_get("customer")?,
        amount: row.try_get("amount")?,
        status: row.try_get("status")?,
        note: row.try_get("note")?,
    })
}
