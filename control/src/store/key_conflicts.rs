//! Keys written concurrently through two proxies of a fleet, listed for a targeted recheck.

use serde::Serialize;
use sqlx::any::AnyRow;

use super::{column, text_column, ControlStore};
use crate::error::ControlError;
use crate::stage::Side;
use crate::time::Timestamp;

/// A key two instances wrote at once: which side's copies it is about, and the write that
/// found the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyConflict {
    /// Position in the store.
    pub id: i64,
    /// The side the key's copies go to.
    pub target: Side,
    /// The ordering key.
    pub ordering_key: String,
    /// The `X-Tandem-Request-Id` of the write that found the other instance's copy.
    pub request_id: String,
    /// When it was found.
    pub detected_at: Timestamp,
}

impl KeyConflict {
    fn from_row(row: &AnyRow) -> Result<KeyConflict, ControlError> {
        Ok(KeyConflict {
            id: column(row, "id")?,
            target: text_column("target_side", &column::<String>(row, "target_side")?)?,
            ordering_key: column(row, "ordering_key")?,
            request_id: column(row, "request_id")?,
            detected_at: Timestamp(column(row, "detected_at_ms")?),
        })
    }
}

impl ControlStore {
    /// Lists `key` (copies to `target`) as written concurrently through two instances.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn record_key_conflict(
        &self,
        target: Side,
        key: &str,
        request_id: &str,
    ) -> Result<(), ControlError> {
        sqlx::query(
            "INSERT INTO key_conflicts (target_side, ordering_key, request_id, detected_at_ms) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(target.as_str())
        .bind(key)
        .bind(request_id)
        .bind(Timestamp::now().millis())
        .execute(&self.pool)
        .await
        .map_err(ControlError::database("record key conflict"))?;
        Ok(())
    }

    /// The newest `limit` key conflicts, newest first.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn key_conflicts(&self, limit: i64) -> Result<Vec<KeyConflict>, ControlError> {
        let rows = sqlx::query(
            "SELECT id, target_side, ordering_key, request_id, detected_at_ms \
             FROM key_conflicts ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(ControlError::database("list key conflicts"))?;
        rows.iter().map(KeyConflict::from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_conflict_reads_back_as_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("control.db").display());
        let store = ControlStore::open(&url).await.unwrap();
        store
            .record_key_conflict(Side::New, "/orders/7", "r-1")
            .await
            .unwrap();
        let listed = store.key_conflicts(10).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].target, Side::New);
        assert_eq!(listed[0].ordering_key, "/orders/7");
        assert_eq!(listed[0].request_id, "r-1");
    }
}
