//! Key conflicts on their way to the control store: a race found by the shared journal's
//! reader is queued here and written by a task of its own, tried again until the store takes
//! it, so a store out of reach for a while (or slow) delays the record rather than loses it.
//! A conflict is dropped, counted and said loudly with its key
//! (`tandem_mirror_conflicts_unrecorded_total`), never held in unbounded memory nor retried
//! forever, when the queue is full, when the store refuses it for good (an error other than a
//! lost connection, a timeout or a busy store), and when it is still queued at the drain's
//! deadline ([`Conflicts::finish`]). A retry after a try whose answer was lost may record the
//! key twice: a second recheck of it, harmless.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tandem_control::{ControlStore, Side};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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

impl Conflict {
    /// Counts and says this conflict dropped unrecorded, for `reason`.
    fn unrecorded(&self, reason: &str) {
        KeyConflictUnrecorded {
            side: self.target,
            ordering_key: &self.ordering_key,
            request_id: &self.request_id,
            reason,
        }
        .emit();
    }
}

/// The queue of conflicts to record, and its writer.
#[derive(Debug)]
pub(super) struct Conflicts {
    queue: mpsc::Sender<Conflict>,
    /// Fired once nothing more is queued: the writer ends when the queue is empty.
    finish: CancellationToken,
    /// Fired at the drain's deadline: what is still queued is dropped, counted.
    abort: CancellationToken,
    /// The writer, answering how many conflicts it dropped at the deadline.
    writer: Mutex<Option<JoinHandle<u64>>>,
}

impl Conflicts {
    /// Starts the task writing conflicts to `store`, ended by [`Conflicts::finish`].
    pub(super) fn start(store: ControlStore) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE);
        let finish = CancellationToken::new();
        let abort = CancellationToken::new();
        let writer = tokio::spawn(write_all(store, waiting, finish.clone(), abort.clone()));
        Self {
            queue,
            finish,
            abort,
            writer: Mutex::new(Some(writer)),
        }
    }

    /// Queues `ordering_key` (copies toward `target`, found by `request_id`'s copy) for the
    /// store; dropped, counted, when the queue is full (or already finished).
    pub(super) fn record(&self, target: Side, ordering_key: &str, request_id: &str) {
        let conflict = Conflict {
            target,
            ordering_key: ordering_key.to_owned(),
            request_id: request_id.to_owned(),
        };
        if let Err(refused) = self.queue.try_send(conflict) {
            let reason = match refused {
                mpsc::error::TrySendError::Full(_) => "too many wait for the control store",
                mpsc::error::TrySendError::Closed(_) => "the proxy is stopping",
            };
            refused.into_inner().unrecorded(reason);
        }
    }

    /// Nothing more is queued (the drain): waits until the conflicts queued are written, or
    /// until `deadline`, when those left are dropped, each counted and said with its key. How
    /// many were dropped so.
    pub(super) async fn finish(&self, deadline: Instant) -> u64 {
        self.finish.cancel();
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut writer) = writer else {
            return 0;
        };
        let ended = match tokio::time::timeout_at(deadline, &mut writer).await {
            Ok(ended) => ended,
            Err(_) => {
                self.abort.cancel();
                writer.await
            }
        };
        ended.unwrap_or_else(|err| {
            tracing::error!(error = %err, "the task recording key conflicts failed");
            0
        })
    }
}

/// Writes each conflict queued, in order, until the queue is empty once `finish` fired; at
/// `abort`, drops the rest. How many it dropped at `abort`.
async fn write_all(
    store: ControlStore,
    mut waiting: mpsc::Receiver<Conflict>,
    finish: CancellationToken,
    abort: CancellationToken,
) -> u64 {
    loop {
        let next = tokio::select! {
            biased;
            next = waiting.recv() => next,
            () = finish.cancelled() => waiting.try_recv().ok(),
        };
        let Some(conflict) = next else {
            return 0;
        };
        if !write(&store, &conflict, waiting.len(), &abort).await {
            waiting.close();
            let mut dropped = 1;
            conflict.unrecorded("the drain's deadline came first");
            while let Some(conflict) = waiting.recv().await {
                conflict.unrecorded("the drain's deadline came first");
                dropped += 1;
            }
            return dropped;
        }
    }
}

/// Writes `conflict`, tried again while the store is out of reach for now; dropped, counted,
/// when the store refuses it for good. False when `abort` fired first.
async fn write(
    store: &ControlStore,
    conflict: &Conflict,
    waiting: usize,
    abort: &CancellationToken,
) -> bool {
    loop {
        let recorded = tokio::select! {
            () = abort.cancelled() => return false,
            recorded = tokio::time::timeout(
                RECORD_TIMEOUT,
                store.record_key_conflict(
                    conflict.target,
                    &conflict.ordering_key,
                    &conflict.request_id,
                ),
            ) => recorded,
        };
        let error = match recorded {
            Ok(Ok(())) => return true,
            Ok(Err(err)) if !err.is_transient() => {
                conflict.unrecorded(&format!("the control store refuses it: {err}"));
                return true;
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => "the control store did not answer in time".to_owned(),
        };
        tracing::warn!(
            request_id = conflict.request_id,
            ordering_key = conflict.ordering_key,
            error,
            waiting,
            "cannot record a key written concurrently through two instances yet; retrying"
        );
        tokio::select! {
            () = abort.cancelled() => return false,
            () = tokio::time::sleep(RETRY_AFTER) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAR: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn conflicts_queued_are_written_before_the_drain_ends() {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}", dir.path().join("control.db").display());
        let store = ControlStore::open(&url).await.expect("store");
        let conflicts = Conflicts::start(store.clone());
        conflicts.record(Side::New, "orders:1", "req-1");
        conflicts.record(Side::New, "orders:2", "req-2");
        assert_eq!(conflicts.finish(Instant::now() + FAR).await, 0);
        let keys: Vec<String> = store
            .key_conflicts(10)
            .await
            .expect("conflicts")
            .into_iter()
            .map(|conflict| conflict.ordering_key)
            .collect();
        assert_eq!(keys, vec!["orders:2".to_owned(), "orders:1".to_owned()]);
    }

    #[tokio::test]
    async fn conflicts_left_at_the_deadline_are_counted() {
        let store = ControlStore::open("sqlite::memory:").await.expect("store");
        // A pool closed: every try fails as a store out of reach does, and is retried.
        store.close().await;
        let conflicts = Conflicts::start(store);
        conflicts.record(Side::New, "orders:1", "req-1");
        conflicts.record(Side::Old, "orders:2", "req-2");
        let dropped = conflicts
            .finish(Instant::now() + Duration::from_millis(300))
            .await;
        assert_eq!(dropped, 2);
        // Finished: a conflict found later is dropped at once, not queued for nobody.
        conflicts.record(Side::New, "orders:3", "req-3");
        assert_eq!(conflicts.finish(Instant::now()).await, 0);
    }

    #[tokio::test]
    async fn a_conflict_the_store_refuses_for_good_does_not_block_the_queue() {
        // No schema: the store answers, and refuses the record (no such table) every time.
        let store = ControlStore::connect("sqlite::memory:")
            .await
            .expect("store");
        let conflicts = Conflicts::start(store);
        conflicts.record(Side::New, "orders:1", "req-1");
        conflicts.record(Side::New, "orders:2", "req-2");
        // Both dropped as refused, none left at the (far) deadline.
        assert_eq!(conflicts.finish(Instant::now() + FAR).await, 0);
    }
}
