//! Key conflicts on their way to the control store: a race found by the shared journal's
//! reader is queued here and written by a task of its own, tried again until the store takes
//! it, so a store out of reach for a while (or slow) delays the record rather than loses it.
//! The queue is bounded: a conflict that finds it full is dropped, counted and said loudly
//! (`tandem_mirror_conflicts_unrecorded_total`), never held in unbounded memory. A retry after
//! a try whose answer was lost may record the key twice: a second recheck of it, harmless.

use std::time::Duration;

use tandem_control::{ControlStore, Side};
use tokio::sync::mpsc;

use crate::telemetry::KeyConflictUnrecorded;

/// The most conflicts waiting for the store.
const QUEUE: usize = 10_000;

/// How long one write of a conflict may take before it is tried again.
const RECORD_TIMEOUT: Duration = Duration::from_secs(5);

/// The pause between two tries.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A key found written concurrently through two instances.
#[derive(Debug)]
struct Conflict {
    target: Side,
    ordering_key: String,
    request_id: String,
}

/// The queue of conflicts to record, and its writer.
#[derive(Debug)]
pub(super) struct Conflicts {
    queue: mpsc::Sender<Conflict>,
}

impl Conflicts {
    /// Starts the task writing conflicts to `store` (it ends once the queue is dropped and
    /// emptied).
    pub(super) fn start(store: ControlStore) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(write_all(store, waiting));
        Self { queue }
    }

    /// Queues `ordering_key` (copies toward `target`, found by `request_id`'s copy) for the
    /// store; dropped, counted, when the queue is full.
    pub(super) fn record(&self, target: Side, ordering_key: &str, request_id: &str) {
        let conflict = Conflict {
            target,
            ordering_key: ordering_key.to_owned(),
            request_id: request_id.to_owned(),
        };
        if self.queue.try_send(conflict).is_err() {
            KeyConflictUnrecorded {
                side: target,
                ordering_key,
                request_id,
            }
            .emit();
        }
    }
}

/// Writes each conflict queued, in order, each tried until the store takes it.
async fn write_all(store: ControlStore, mut waiting: mpsc::Receiver<Conflict>) {
    while let Some(conflict) = waiting.recv().await {
        loop {
            let recorded = tokio::time::timeout(
                RECORD_TIMEOUT,
                store.record_key_conflict(
                    conflict.target,
                    &conflict.ordering_key,
                    &conflict.request_id,
                ),
            )
            .await;
            let error = match recorded {
                Ok(Ok(())) => break,
                Ok(Err(err)) => err.to_string(),
                Err(_) => "the control store did not answer in time".to_owned(),
            };
            tracing::warn!(
                request_id = conflict.request_id,
                ordering_key = conflict.ordering_key,
                error,
                waiting = waiting.len(),
                "cannot record a key written concurrently through two instances yet; retrying"
            );
            tokio::time::sleep(RETRY_AFTER).await;
        }
    }
}
