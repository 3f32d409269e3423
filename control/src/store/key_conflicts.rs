//! Keys written concurrently through two proxies of a fleet, listed for a targeted recheck,
//! and what the comparator service's recheck found.

use std::time::Duration;

use serde::Serialize;
use sqlx::any::AnyRow;

use super::{column, stale_before, text_column, Backend, ControlStore};
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
    /// `pending`, `checking` (claimed by a comparator instance), `settled` (both sides hold
    /// the same row), `diverged` (they still differ after the rechecks) or `unmapped` (no
    /// table's ordering-key pattern names the key).
    pub status: String,
    /// Which claim this is (a settlement must name the claim it holds).
    #[serde(skip)]
    pub attempt: i64,
    /// The (old side's) table the key was found to name.
    pub table: Option<String>,
    /// What the recheck found: the divergence, or why the key could not be checked.
    pub outcome: Option<String>,
    /// When the recheck ended.
    pub checked_at: Option<Timestamp>,
}

/// How a key conflict's recheck ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictOutcome {
    /// Both sides hold the same row (or neither holds one).
    Settled,
    /// The sides still differ after the rechecks.
    Diverged,
    /// No table's ordering-key pattern names the key.
    Unmapped,
}

impl ConflictOutcome {
    /// The status it is recorded as.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictOutcome::Settled => "settled",
            ConflictOutcome::Diverged => "diverged",
            ConflictOutcome::Unmapped => "unmapped",
        }
    }
}

const SELECT_CONFLICT: &str = "SELECT id, target_side, ordering_key, request_id, \
     detected_at_ms, status, attempts, table_name, outcome, checked_at_ms FROM key_conflicts";

impl KeyConflict {
    fn from_row(row: &AnyRow) -> Result<KeyConflict, ControlError> {
        Ok(KeyConflict {
            id: column(row, "id")?,
            target: text_column("target_side", &column::<String>(row, "target_side")?)?,
            ordering_key: column(row, "ordering_key")?,
            request_id: column(row, "request_id")?,
            detected_at: Timestamp(column(row, "detected_at_ms")?),
            status: column(row, "status")?,
            attempt: column(row, "attempts")?,
            table: column(row, "table_name")?,
            outcome: column(row, "outcome")?,
            checked_at: column::<Option<i64>>(row, "checked_at_ms")?.map(Timestamp),
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
        let rows = sqlx::query(&format!("{SELECT_CONFLICT} ORDER BY id DESC LIMIT $1"))
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(ControlError::database("list key conflicts"))?;
        rows.iter().map(KeyConflict::from_row).collect()
    }

    /// Claims the oldest key conflict not rechecked yet for `owner`: a pending one, or one
    /// whose claim is older than `lease` (its instance died). `None` when there is none.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn claim_key_conflict(
        &self,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<KeyConflict>, ControlError> {
        // As for sweep chunks: PostgreSQL claimers skip each other's locked rows; SQLite
        // serialises writers.
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        // Most of the time there is nothing to claim: finding that out reads only, so the
        // pollers of every instance take no write lock (on SQLite, the whole database's).
        let claimable: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM key_conflicts \
             WHERE status = 'pending' OR (status = 'checking' AND claimed_at_ms < $1) LIMIT 1",
        )
        .bind(stale_before(lease))
        .fetch_optional(&self.pool)
        .await
        .map_err(ControlError::database("look for key conflicts"))?;
        if claimable.is_none() {
            return Ok(None);
        }
        let row = sqlx::query(&format!(
            "UPDATE key_conflicts SET status = 'checking', owner = $1, claimed_at_ms = $2, \
             attempts = attempts + 1 \
             WHERE id = (SELECT id FROM key_conflicts \
             WHERE status = 'pending' OR (status = 'checking' AND claimed_at_ms < $3) \
             ORDER BY id LIMIT 1{lock}) \
             RETURNING id, target_side, ordering_key, request_id, detected_at_ms, status, \
             attempts, table_name, outcome, checked_at_ms"
        ))
        .bind(owner)
        .bind(Timestamp::now().millis())
        .bind(stale_before(lease))
        .fetch_optional(&self.pool)
        .await
        .map_err(ControlError::database("claim key conflict"))?;
        row.as_ref().map(KeyConflict::from_row).transpose()
    }

    /// Records how the recheck of a claimed conflict ended; false (nothing recorded) when the
    /// claim was lost to another instance.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn settle_key_conflict(
        &self,
        conflict: &KeyConflict,
        outcome: ConflictOutcome,
        table: Option<&str>,
        detail: &str,
    ) -> Result<bool, ControlError> {
        let settled = sqlx::query(
            "UPDATE key_conflicts SET status = $1, table_name = $2, outcome = $3, \
             checked_at_ms = $4 WHERE id = $5 AND status = 'checking' AND attempts = $6",
        )
        .bind(outcome.as_str())
        .bind(table)
        .bind(detail)
        .bind(Timestamp::now().millis())
        .bind(conflict.id)
        .bind(conflict.attempt)
        .execute(&self.pool)
        .await
        .map_err(ControlError::database("settle key conflict"))?;
        Ok(settled.rows_affected() == 1)
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
        assert_eq!(listed[0].status, "pending");

        let lease = Duration::from_secs(60);
        let claimed = store.claim_key_conflict("a", lease).await.unwrap().unwrap();
        assert_eq!((claimed.status.as_str(), claimed.attempt), ("checking", 1));
        assert!(store
            .claim_key_conflict("b", lease)
            .await
            .unwrap()
            .is_none());
        // An expired claim is taken over; the first claimant's settlement then records nothing.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let taken = store
            .claim_key_conflict("b", Duration::from_millis(1))
            .await
            .unwrap()
            .unwrap();
        let lost = store
            .settle_key_conflict(&claimed, ConflictOutcome::Settled, Some("orders"), "same")
            .await
            .unwrap();
        assert!(!lost);
        let settled = store
            .settle_key_conflict(&taken, ConflictOutcome::Diverged, Some("orders"), "changed")
            .await
            .unwrap();
        assert!(settled);
        let listed = store.key_conflicts(10).await.unwrap();
        assert_eq!(listed[0].status, "diverged");
        assert_eq!(listed[0].table.as_deref(), Some("orders"));
        assert_eq!(listed[0].outcome.as_deref(), Some("changed"));
        assert!(listed[0].checked_at.is_some());
    }
}
