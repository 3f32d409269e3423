//! Response mismatches: requests whose two sides answered differently.

use serde::Serialize;
use sqlx::any::AnyRow;

use super::{column, text_column, ControlStore};
use crate::error::ControlError;
use crate::stage::Side;
use crate::time::Timestamp;

/// A mismatch to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewResponseMismatch {
    /// The `X-Tandem-Request-Id` of the client request.
    pub request_id: String,
    /// HTTP method.
    pub method: String,
    /// Request path (without the query).
    pub path: String,
    /// The configured route that matched, or the method class when none did.
    pub route: String,
    /// The side whose answer the client got.
    pub authoritative: Side,
    /// Status code from the old side.
    pub status_old: u16,
    /// Status code from the new side.
    pub status_new: u16,
    /// A short human-readable description of the differences.
    pub diff: String,
}

/// A recorded mismatch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResponseMismatch {
    /// Position in the store.
    pub id: i64,
    /// The `X-Tandem-Request-Id` of the client request.
    pub request_id: String,
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Route that matched.
    pub route: String,
    /// The side whose answer the client got.
    pub authoritative: Side,
    /// Status code from the old side.
    pub status_old: i64,
    /// Status code from the new side.
    pub status_new: i64,
    /// Short description of the differences.
    pub diff: String,
    /// When it was recorded.
    pub created_at: Timestamp,
}

impl ResponseMismatch {
    fn from_row(row: &AnyRow) -> Result<ResponseMismatch, ControlError> {
        Ok(ResponseMismatch {
            id: column(row, "id")?,
            request_id: column(row, "request_id")?,
            method: column(row, "method")?,
            path: column(row, "path")?,
            route: column(row, "route")?,
            authoritative: text_column(
                "authoritative_side",
                &column::<String>(row, "authoritative_side")?,
            )?,
            status_old: column(row, "status_old")?,
            status_new: column(row, "status_new")?,
            diff: column(row, "diff")?,
            created_at: Timestamp(column(row, "created_at_ms")?),
        })
    }
}

impl ControlStore {
    /// Records a response mismatch.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn insert_response_mismatch(
        &self,
        mismatch: &NewResponseMismatch,
    ) -> Result<(), ControlError> {
        sqlx::query(
            "INSERT INTO response_mismatches (request_id, method, path, route, \
             authoritative_side, status_old, status_new, diff, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&mismatch.request_id)
        .bind(&mismatch.method)
        .bind(&mismatch.path)
        .bind(&mismatch.route)
        .bind(mismatch.authoritative.as_str())
        .bind(i64::from(mismatch.status_old))
        .bind(i64::from(mismatch.status_new))
        .bind(&mismatch.diff)
        .bind(Timestamp::now().millis())
        .execute(&self.pool)
        .await
        .map_err(ControlError::database("record response mismatch"))?;
        Ok(())
    }

    /// The newest `limit` mismatches, newest first.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn response_mismatches(
        &self,
        limit: i64,
    ) -> Result<Vec<ResponseMismatch>, ControlError> {
        let rows = sqlx::query(
            "SELECT id, request_id, method, path, route, authoritative_side, status_old, \
             status_new, diff, created_at_ms FROM response_mismatches ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(ControlError::database("list response mismatches"))?;
        rows.iter().map(ResponseMismatch::from_row).collect()
    }

    /// How many mismatches were recorded since `since`.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn count_response_mismatches(&self, since: Timestamp) -> Result<i64, ControlError> {
        sqlx::query_scalar("SELECT COUNT(*) FROM response_mismatches WHERE created_at_ms >= $1")
            .bind(since.millis())
            .fetch_one(&self.pool)
            .await
            .map_err(ControlError::database("count response mismatches"))
    }
}
