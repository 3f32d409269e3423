//! Counters each proxy flushes every few seconds, so that rates over a period (response
//! mismatches, mirror failures, new-side errors) can be judged across every proxy.

use std::time::Duration;

use serde::Serialize;

use super::{column, ControlStore};
use crate::error::ControlError;
use crate::time::Timestamp;

/// Counts over a period (one proxy's flush, or a sum over proxies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ProxyCounts {
    /// Responses compared between the sides.
    pub compared: i64,
    /// Of those, the ones that differed.
    pub mismatches: i64,
    /// Writes mirrored to the other side (delivered or not).
    pub mirrored: i64,
    /// Of those, the copies that failed and were persisted for replay.
    pub mirror_failures: i64,
    /// Requests sent to the new side.
    pub new_requests: i64,
    /// Of those, the ones that failed (5xx, timeout, unreachable).
    pub new_errors: i64,
    /// Client requests served.
    pub requests: i64,
    /// Requests sent to the old side.
    pub old_requests: i64,
    /// Their summed latency, in milliseconds.
    pub old_latency_ms: i64,
    /// The summed latency of the requests sent to the new side, in milliseconds.
    pub new_latency_ms: i64,
    /// Mirror copies waiting in memory at the flush (the largest of a bucket in series).
    pub queue_depth: i64,
}

/// Counts of one time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProxyBucket {
    /// The bucket's start.
    pub at: Timestamp,
    /// What was counted in it.
    #[serde(flatten)]
    pub counts: ProxyCounts,
}

impl ProxyCounts {
    /// Whether nothing was counted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == ProxyCounts::default()
    }
}

/// How long flushed counters are kept.
const KEPT: Duration = Duration::from_secs(24 * 3600);

impl ControlStore {
    /// Stores one proxy's counts since its previous flush, and drops counts older than a day.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn record_proxy_counts(
        &self,
        instance: &str,
        counts: &ProxyCounts,
    ) -> Result<(), ControlError> {
        let now = Timestamp::now().millis();
        sqlx::query(
            "INSERT INTO proxy_stats (instance, at_ms, compared, mismatches, mirrored, \
             mirror_failures, new_requests, new_errors, requests, old_requests, old_latency_ms, \
             new_latency_ms, queue_depth) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(instance)
        .bind(now)
        .bind(counts.compared)
        .bind(counts.mismatches)
        .bind(counts.mirrored)
        .bind(counts.mirror_failures)
        .bind(counts.new_requests)
        .bind(counts.new_errors)
        .bind(counts.requests)
        .bind(counts.old_requests)
        .bind(counts.old_latency_ms)
        .bind(counts.new_latency_ms)
        .bind(counts.queue_depth)
        .execute(&self.pool)
        .await
        .map_err(ControlError::database("record proxy counts"))?;
        sqlx::query("DELETE FROM proxy_stats WHERE at_ms < $1")
            .bind(now.saturating_sub(i64::try_from(KEPT.as_millis()).unwrap_or(0)))
            .execute(&self.pool)
            .await
            .map_err(ControlError::database("prune proxy counts"))?;
        Ok(())
    }

    /// Every proxy's counts flushed within the last `period`, summed (the queue depth is
    /// the largest flushed).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn proxy_counts(&self, period: Duration) -> Result<ProxyCounts, ControlError> {
        let buckets = self.proxy_series(period, period).await?;
        Ok(buckets.iter().fold(ProxyCounts::default(), |sum, bucket| {
            sum.plus(&bucket.counts)
        }))
    }

    /// Every proxy's counts of the last `period` in buckets of `bucket`, oldest first (empty
    /// buckets left out).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn proxy_series(
        &self,
        period: Duration,
        bucket: Duration,
    ) -> Result<Vec<ProxyBucket>, ControlError> {
        let millis = |duration: Duration| i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        let since = Timestamp::now().millis().saturating_sub(millis(period));
        let width = millis(bucket).max(1);
        // PostgreSQL sums BIGINTs as NUMERIC: the casts keep every count a BIGINT.
        let rows = sqlx::query(
            "SELECT CAST(at_ms / $2 AS BIGINT) AS bucket, \
             CAST(SUM(compared) AS BIGINT) AS compared, \
             CAST(SUM(mismatches) AS BIGINT) AS mismatches, \
             CAST(SUM(mirrored) AS BIGINT) AS mirrored, \
             CAST(SUM(mirror_failures) AS BIGINT) AS mirror_failures, \
             CAST(SUM(new_requests) AS BIGINT) AS new_requests, \
             CAST(SUM(new_errors) AS BIGINT) AS new_errors, \
             CAST(SUM(requests) AS BIGINT) AS requests, \
             CAST(SUM(old_requests) AS BIGINT) AS old_requests, \
             CAST(SUM(old_latency_ms) AS BIGINT) AS old_latency_ms, \
             CAST(SUM(new_latency_ms) AS BIGINT) AS new_latency_ms, \
             MAX(queue_depth) AS queue_depth \
             FROM proxy_stats WHERE at_ms >= $1 GROUP BY CAST(at_ms / $2 AS BIGINT) ORDER BY 1",
        )
        .bind(since)
        .bind(width)
        .fetch_all(&self.pool)
        .await
        .map_err(ControlError::database("read proxy counts"))?;
        rows.iter()
            .map(|row| {
                let bucket: i64 = column(row, "bucket")?;
                Ok(ProxyBucket {
                    at: Timestamp(bucket.saturating_mul(width)),
                    counts: ProxyCounts {
                        compared: column(row, "compared")?,
                        mismatches: column(row, "mismatches")?,
                        mirrored: column(row, "mirrored")?,
                        mirror_failures: column(row, "mirror_failures")?,
                        new_requests: column(row, "new_requests")?,
                        new_errors: column(row, "new_errors")?,
                        requests: column(row, "requests")?,
                        old_requests: column(row, "old_requests")?,
                        old_latency_ms: column(row, "old_latency_ms")?,
                        new_latency_ms: column(row, "new_latency_ms")?,
                        queue_depth: column(row, "queue_depth")?,
                    },
                })
            })
            .collect()
    }
}

impl ProxyCounts {
    /// The counts of both (the larger queue depth).
    #[must_use]
    pub fn plus(&self, other: &ProxyCounts) -> ProxyCounts {
        ProxyCounts {
            compared: self.compared + other.compared,
            mismatches: self.mismatches + other.mismatches,
            mirrored: self.mirrored + other.mirrored,
            mirror_failures: self.mirror_failures + other.mirror_failures,
            new_requests: self.new_requests + other.new_requests,
            new_errors: self.new_errors + other.new_errors,
            requests: self.requests + other.requests,
            old_requests: self.old_requests + other.old_requests,
            old_latency_ms: self.old_latency_ms + other.old_latency_ms,
            new_latency_ms: self.new_latency_ms + other.new_latency_ms,
            queue_depth: self.queue_depth.max(other.queue_depth),
        }
    }
}
