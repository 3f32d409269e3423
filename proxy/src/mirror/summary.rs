//! The journal's summary in the control store: how many copies it holds undelivered, the
//! oldest one's age and a sample of keys, written every stats interval by a task of its own
//! (never by a request), so that one listing shows every instance's pending copies.

use std::sync::Arc;
use std::time::Duration;

use tandem_control::{JournalSummary, PartitionPending, PendingKey, Timestamp};
use tokio_util::sync::CancellationToken;

use super::pending::PendingSample;
use super::Delivery;
use crate::telemetry::JournalSummaryWritten;

/// Keys sampled per summary.
pub const SAMPLED_KEYS: usize = 20;

/// The longest a summary write may take before it is given up (the next one comes anyway).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

impl Delivery {
    /// What the journal holds undelivered now, as `journal` (its name in the store), with a
    /// shared journal's `partitions`.
    fn journal_summary(
        &self,
        journal: &str,
        interval: Duration,
        partitions: Vec<PartitionPending>,
    ) -> JournalSummary {
        let sample = if self.journal.shared() {
            // A shared journal's copies are delivered by their partitions' holders: the
            // stream's backlog, without keys.
            let stats = self.journal.stats();
            PendingSample {
                copies: stats.unsettled,
                oldest_accepted_at: stats.oldest_unsettled.map(|at| {
                    Timestamp(
                        at.duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |since| i64::try_from(since.as_millis()).unwrap_or(0)),
                    )
                }),
                keys: Vec::new(),
            }
        } else {
            self.pending.sample(SAMPLED_KEYS)
        };
        let keys = sample
            .keys
            .into_iter()
            .map(|key| PendingKey {
                held: self.feed.lock().is_held(key.target, &key.ordering_key)
                    || self
                        .parking
                        .generation(key.target, &key.ordering_key)
                        .is_some(),
                target: key.target,
                ordering_key: key.ordering_key,
                copies: key.copies,
                oldest_seq: key.oldest_seq,
                oldest_accepted_at: key.oldest_accepted_at,
                oldest_age_ms: 0,
            })
            .collect();
        JournalSummary {
            journal: journal.to_owned(),
            instance: tandem_control::instance_name(),
            written_at: Timestamp::now(),
            interval_ms: i64::try_from(interval.as_millis()).unwrap_or(i64::MAX),
            pending: sample.copies,
            oldest_accepted_at: sample.oldest_accepted_at,
            oldest_age_ms: None,
            keys,
            partitions,
            stale: false,
        }
    }
}

/// Writes the journal's summary every `interval` until `stop`, and once more then. A store
/// that fails or hangs costs this task a missed summary, nothing else.
pub(super) async fn publish(
    delivery: Arc<Delivery>,
    journal: String,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        let stopping = tokio::select! {
            () = stop.cancelled() => true,
            () = tokio::time::sleep(interval) => false,
        };
        let within = WRITE_TIMEOUT.min(interval.max(Duration::from_secs(1)));
        let partitions = partitions_backlog(&delivery, within).await;
        let summary = delivery.journal_summary(&journal, interval, partitions);
        let written =
            tokio::time::timeout(within, delivery.store.record_journal_summary(&summary)).await;
        match written {
            Ok(Ok(())) => JournalSummaryWritten { error: None }.emit(),
            Ok(Err(err)) => JournalSummaryWritten {
                error: Some(&err.to_string()),
            }
            .emit(),
            Err(_) => JournalSummaryWritten {
                error: Some("the control store did not answer in time"),
            }
            .emit(),
        }
        if stopping {
            return;
        }
    }
}

/// A shared journal's backlog per partition and who delivers each (empty for a local journal,
/// or when the stream does not answer `within`: the summary goes on without it).
async fn partitions_backlog(delivery: &Delivery, within: Duration) -> Vec<PartitionPending> {
    if !delivery.journal.shared() {
        return Vec::new();
    }
    match tokio::time::timeout(within, delivery.journal.partitions_backlog()).await {
        Ok(Ok(backlog)) => backlog
            .into_iter()
            .map(|partition| PartitionPending {
                partition: partition.partition,
                copies: partition.copies,
                holder: partition.holder,
            })
            .collect(),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "cannot read the shared journal's partitions for the summary");
            Vec::new()
        }
        Err(_) => {
            tracing::warn!("the shared journal's partitions were not read in time for the summary");
            Vec::new()
        }
    }
}
