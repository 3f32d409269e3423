//! Counters each proxy flushes every few seconds, so that rates over a period (response
//! mismatches, mirror failures, new-side errors) can be judged across every proxy.

use std::time::Duration;

use serde::Serialize;

use super::ControlStore;
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
             mirror_failures, new_requests, new_errors) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(instance)
        .bind(now)
        .bind(counts.compared)
        .bind(counts.mismatches)
        .bind(counts.mirrored)
        .bind(counts.mirror_failures)
        .bind(counts.new_requests)
        .bind(counts.new_errors)
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

    /// Every proxy's counts flushed within the last `period`, summed.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn proxy_counts(&self, period: Duration) -> Result<ProxyCounts, ControlError> {
        let since = Timestamp::now()
            .millis()
            .saturating_sub(i64::try_from(period.as_millis()).unwrap_or(i64::MAX));
        // PostgreSQL sums BIGINTs as NUMERIC: the casts keep every count a BIGINT.
        let (compared, mismatches, mirrored, mirror_failures, new_requests, new_errors): (
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
        ) = sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(compared), 0) AS BIGINT), \
             CAST(COALESCE(SUM(mismatches), 0) AS BIGINT), \
             CAST(COALESCE(SUM(mirrored), 0) AS BIGINT), \
             CAST(COALESCE(SUM(mirror_failures), 0) AS BIGINT), \
             CAST(COALESCE(SUM(new_requests), 0) AS BIGINT), \
             CAST(COALESCE(SUM(new_errors), 0) AS BIGINT) FROM proxy_stats WHERE at_ms >= $1",
        )
        .bind(since)
        .fetch_one(&self.pool)
        .await
        .map_err(ControlError::database("read proxy counts"))?;
        Ok(ProxyCounts {
            compared,
            mismatches,
            mirrored,
            mirror_failures,
            new_requests,
            new_errors,
        })
    }
}
