//! What each proxy's journal holds undelivered, summarised by the proxy off the request path:
//! pending copies, the oldest one's age, and a sample of pending keys.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;

use super::{column, text_column, ControlStore};
use crate::error::ControlError;
use crate::stage::Side;
use crate::time::Timestamp;

/// A summary older than this many of its writer's intervals is stale: its process may be
/// dead (its journal is still on its disk, delivered when it starts again).
pub const STALE_AFTER_INTERVALS: i64 = 3;

/// How long a summary with nothing pending is kept once stale.
const EMPTY_KEPT: Duration = Duration::from_secs(24 * 3600);

/// One key with copies waiting in a journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingKey {
    /// The side its copies go to.
    pub target: Side,
    /// The ordering key.
    pub ordering_key: String,
    /// Its copies waiting in the journal.
    pub copies: u64,
    /// The journal seq of its oldest waiting copy.
    pub oldest_seq: u64,
    /// When the authoritative side accepted that copy's write.
    pub oldest_accepted_at: Timestamp,
    /// Whether the key waits behind a copy that failed after its retries (parked in the
    /// store, or set aside in the journal while the store could not take it).
    pub held: bool,
    /// Set when read: how long ago that copy was accepted, in milliseconds.
    pub oldest_age_ms: i64,
}

/// The sampled keys as the `keys` column keeps them.
#[derive(Debug, Serialize, Deserialize)]
struct StoredKey {
    target: String,
    ordering_key: String,
    copies: u64,
    oldest_seq: u64,
    oldest_accepted_at_ms: i64,
    held: bool,
}

/// One partition of a shared journal: the copies it holds and the proxy delivering them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionPending {
    /// The partition.
    pub partition: u32,
    /// Copies in it not delivered yet.
    pub copies: u64,
    /// The instance holding its lease (`None`: nobody delivers it now).
    pub holder: Option<String>,
}

/// What one journal holds undelivered, as its proxy last said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JournalSummary {
    /// Which journal: `HOST:DIRECTORY` for a local one.
    pub journal: String,
    /// The process that wrote the summary (`HOST:PID`).
    pub instance: String,
    /// When it was written.
    pub written_at: Timestamp,
    /// How often its proxy writes it, in milliseconds.
    pub interval_ms: i64,
    /// Copies in the journal not delivered yet (nor kept in the store).
    pub pending: u64,
    /// When the oldest of them was accepted.
    pub oldest_accepted_at: Option<Timestamp>,
    /// Set when read: how long ago that was, in milliseconds.
    pub oldest_age_ms: Option<i64>,
    /// Up to a few dozen keys with waiting copies, those waiting longest first.
    pub keys: Vec<PendingKey>,
    /// A shared journal's partitions (empty for a local journal).
    pub partitions: Vec<PartitionPending>,
    /// Set when read: the summary is older than [`STALE_AFTER_INTERVALS`] intervals, so its
    /// process may be dead.
    pub stale: bool,
}

impl JournalSummary {
    fn from_row(row: &AnyRow, now: Timestamp) -> Result<JournalSummary, ControlError> {
        let keys: String = column(row, "keys")?;
        let stored: Vec<StoredKey> =
            serde_json::from_str(&keys).map_err(|err| ControlError::Corrupt {
                field: "journal_summaries.keys",
                reason: err.to_string(),
            })?;
        let keys = stored
            .into_iter()
            .map(|key| {
                Ok(PendingKey {
                    target: text_column("journal_summaries.keys.target", &key.target)?,
                    ordering_key: key.ordering_key,
                    copies: key.copies,
                    oldest_seq: key.oldest_seq,
                    oldest_accepted_at: Timestamp(key.oldest_accepted_at_ms),
                    held: key.held,
                    oldest_age_ms: age_ms(now, key.oldest_accepted_at_ms),
                })
            })
            .collect::<Result<_, ControlError>>()?;
        let partitions: String = column(row, "partitions")?;
        let partitions: Vec<PartitionPending> =
            serde_json::from_str(&partitions).map_err(|err| ControlError::Corrupt {
                field: "journal_summaries.partitions",
                reason: err.to_string(),
            })?;
        let written_at = Timestamp(column(row, "written_at_ms")?);
        let interval_ms: i64 = column(row, "interval_ms")?;
        let pending: i64 = column(row, "pending")?;
        let oldest: Option<i64> = column(row, "oldest_accepted_at_ms")?;
        Ok(JournalSummary {
            journal: column(row, "journal")?,
            instance: column(row, "instance")?,
            stale: now.millis().saturating_sub(written_at.millis())
                > interval_ms.saturating_mul(STALE_AFTER_INTERVALS),
            written_at,
            interval_ms,
            pending: u64::try_from(pending).unwrap_or(0),
            oldest_accepted_at: oldest.map(Timestamp),
            oldest_age_ms: oldest.map(|at| age_ms(now, at)),
            keys,
            partitions,
        })
    }
}

/// Milliseconds from `at_ms` to `now` (0 for a time ahead of this clock).
fn age_ms(now: Timestamp, at_ms: i64) -> i64 {
    now.millis().saturating_sub(at_ms).max(0)
}

impl ControlStore {
    /// Stores `summary` in place of its journal's previous one.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn record_journal_summary(
        &self,
        summary: &JournalSummary,
    ) -> Result<(), ControlError> {
        let keys: Vec<StoredKey> = summary
            .keys
            .iter()
            .map(|key| StoredKey {
                target: key.target.as_str().to_owned(),
                ordering_key: key.ordering_key.clone(),
                copies: key.copies,
                oldest_seq: key.oldest_seq,
                oldest_accepted_at_ms: key.oldest_accepted_at.millis(),
                held: key.held,
            })
            .collect();
        let keys = serde_json::to_string(&keys)
            .map_err(|err| ControlError::InvalidInput(format!("journal summary keys: {err}")))?;
        let partitions = serde_json::to_string(&summary.partitions).map_err(|err| {
            ControlError::InvalidInput(format!("journal summary partitions: {err}"))
        })?;
        sqlx::query(
            "INSERT INTO journal_summaries (journal, instance, written_at_ms, interval_ms, \
             pending, oldest_accepted_at_ms, keys, partitions) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (journal) DO UPDATE SET instance = excluded.instance, \
             written_at_ms = excluded.written_at_ms, interval_ms = excluded.interval_ms, \
             pending = excluded.pending, oldest_accepted_at_ms = excluded.oldest_accepted_at_ms, \
             keys = excluded.keys, partitions = excluded.partitions",
        )
        .bind(&summary.journal)
        .bind(&summary.instance)
        .bind(summary.written_at.millis())
        .bind(summary.interval_ms)
        .bind(i64::try_from(summary.pending).unwrap_or(i64::MAX))
        .bind(summary.oldest_accepted_at.map(Timestamp::millis))
        .bind(keys)
        .bind(partitions)
        .execute(&self.pool)
        .await
        .map_err(ControlError::database("record journal summary"))?;
        Ok(())
    }

    /// Every journal's latest summary, those holding copies first (oldest pending first),
    /// each marked stale or not. Summaries with nothing pending that went stale a day ago are
    /// dropped on the way (their proxies are gone).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn journal_summaries(&self) -> Result<Vec<JournalSummary>, ControlError> {
        let now = Timestamp::now();
        let forgotten = now
            .millis()
            .saturating_sub(i64::try_from(EMPTY_KEPT.as_millis()).unwrap_or(i64::MAX));
        sqlx::query("DELETE FROM journal_summaries WHERE pending = 0 AND written_at_ms < $1")
            .bind(forgotten)
            .execute(&self.pool)
            .await
            .map_err(ControlError::database("prune journal summaries"))?;
        let rows = sqlx::query(
            "SELECT journal, instance, written_at_ms, interval_ms, pending, \
             oldest_accepted_at_ms, keys, partitions FROM journal_summaries \
             ORDER BY CASE WHEN pending > 0 THEN 0 ELSE 1 END, oldest_accepted_at_ms, journal",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(ControlError::database("list journal summaries"))?;
        rows.iter()
            .map(|row| JournalSummary::from_row(row, now))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(journal: &str, pending: u64, written_at: Timestamp) -> JournalSummary {
        JournalSummary {
            journal: journal.to_owned(),
            instance: "host:1".to_owned(),
            written_at,
            interval_ms: 1_000,
            pending,
            oldest_accepted_at: (pending > 0).then_some(Timestamp(1_000)),
            oldest_age_ms: None,
            keys: (0..pending)
                .map(|n| PendingKey {
                    target: Side::New,
                    ordering_key: format!("/orders/{n}"),
                    copies: 2,
                    oldest_seq: n + 1,
                    oldest_accepted_at: Timestamp(1_000),
                    held: n == 0,
                    oldest_age_ms: 0,
                })
                .collect(),
            partitions: Vec::new(),
            stale: false,
        }
    }

    #[tokio::test]
    async fn a_journal_keeps_one_summary_and_an_old_one_reads_as_stale() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("control.db").display());
        let store = ControlStore::open(&url).await.unwrap();
        let now = Timestamp::now();
        store
            .record_journal_summary(&summary("h:/a", 3, Timestamp(now.millis() - 10_000)))
            .await
            .unwrap();
        store
            .record_journal_summary(&summary("h:/b", 0, now))
            .await
            .unwrap();
        // The same journal again: the row is replaced.
        let fresh = summary("h:/a", 2, now);
        store.record_journal_summary(&fresh).await.unwrap();
        let listed = store.journal_summaries().await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].keys.len(), 2, "pending first");
        assert_eq!(listed[0].keys[0].ordering_key, "/orders/0");
        assert!(listed[0].keys[0].held);
        assert_eq!(listed[0].keys[1].copies, 2);
        assert!(listed[0].oldest_age_ms.unwrap() >= now.millis() - 1_000);
        assert_eq!(listed[0].instance, fresh.instance);
        assert_eq!(listed[1].journal, "h:/b");

        store
            .record_journal_summary(&summary("h:/a", 1, Timestamp(now.millis() - 10_000)))
            .await
            .unwrap();
        let listed = store.journal_summaries().await.unwrap();
        assert!(listed[0].stale, "{listed:?}");
        assert!(!listed[1].stale);

        // Empty and long stale: forgotten.
        store
            .record_journal_summary(&summary("h:/b", 0, Timestamp(1)))
            .await
            .unwrap();
        let listed = store.journal_summaries().await.unwrap();
        assert_eq!(listed.len(), 1);
    }
}
