//! Settling in the shared journal: a delivered copy is first written to the record of settled
//! copies (`settled.rs`), then deleted from the stream, one at a time in the order settled (so
//! a key's older copy is never left behind a newer one that is gone), retried until the server
//! answers. From the moment it is settled the reader passes over it: this instance at once,
//! every instance once the record is written, and a copy a restarted server brings back is
//! deleted again instead of delivered.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::stream::{DeleteMessageError, DeleteMessageErrorKind, Stream};
use async_nats::jetstream::ErrorCode;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::settled::{self, Settled};

/// How long a failed deletion or record waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// How long closing waits for the deletions queued.
const DRAIN_FOR: Duration = Duration::from_secs(5);

/// The least time between two writes of the record: copies settled meanwhile share one.
const GATHER: Duration = Duration::from_millis(10);

/// The most copies one batch records and deletes.
const BATCH: usize = 10_000;

/// What the task is asked to do with a seq.
#[derive(Debug, Clone, Copy)]
enum Work {
    /// Settled here: record it, then delete it.
    Settled(u64),
    /// Recorded already and found in the stream again: delete it.
    Again(u64),
}

/// The deletions queued and the task that makes them.
#[derive(Debug)]
pub(crate) struct Settler {
    queue: Mutex<Option<mpsc::UnboundedSender<Work>>>,
    settled: Arc<Settled>,
    /// Seqs queued and not confirmed deleted yet.
    settling: Arc<Mutex<BTreeSet<u64>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Settler {
    /// Starts the task recording settled copies in `settled` and deleting them from `stream`.
    pub(crate) fn start(stream: Stream, settled: Arc<Settled>) -> Self {
        let (queue, mut work) = mpsc::unbounded_channel::<Work>();
        let settling = Arc::new(Mutex::new(BTreeSet::new()));
        let task = tokio::spawn({
            let settling = Arc::clone(&settling);
            let settled = Arc::clone(&settled);
            async move {
                while let Some(first) = work.recv().await {
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match work.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    let gathered = tokio::time::Instant::now() + GATHER;
                    let new: HashSet<u64> = batch
                        .iter()
                        .filter_map(|work| match work {
                            Work::Settled(seq) => Some(*seq),
                            Work::Again(_) => None,
                        })
                        .collect();
                    if !new.is_empty() {
                        record(&settled, &settled::ranges(&new)).await;
                    }
                    for work in batch {
                        let (Work::Settled(seq) | Work::Again(seq)) = work;
                        delete(&stream, seq).await;
                        lock(&settling).remove(&seq);
                    }
                    tokio::time::sleep_until(gathered).await;
                }
            }
        });
        Self {
            queue: Mutex::new(Some(queue)),
            settled,
            settling,
            task: Mutex::new(Some(task)),
        }
    }

    /// Settles `seq`: passed over from now on, recorded, then deleted.
    pub(crate) fn settle(&self, seq: u64) {
        self.settled.note(seq);
        self.queue(Work::Settled(seq));
    }

    /// Whether `seq` was settled, here or by another instance whose record was read: then it
    /// is not delivered again, and is deleted again if its deletion is not under way (a
    /// restarted server brought it back).
    pub(crate) fn passes_over(&self, seq: u64) -> bool {
        if !self.settled.contains(seq) {
            return false;
        }
        self.queue(Work::Again(seq));
        true
    }

    fn queue(&self, work: Work) {
        let (Work::Settled(seq) | Work::Again(seq)) = work;
        if let Some(queue) = lock(&self.queue).as_ref() {
            if lock(&self.settling).insert(seq) && queue.send(work).is_err() {
                lock(&self.settling).remove(&seq);
            }
        }
    }

    /// Stops taking deletions and waits (a few seconds at most) for those queued.
    pub(crate) async fn drain(&self) {
        lock(&self.queue).take();
        let task = lock(&self.task).take();
        if let Some(mut task) = task {
            if tokio::time::timeout(DRAIN_FOR, &mut task).await.is_err() {
                task.abort();
                tracing::warn!(
                    "delivered copies left in the shared journal: they are delivered again"
                );
            }
        }
    }
}

/// Appends `ranges` to the record of settled copies, retried until the server takes them.
async fn record(settled: &Settled, ranges: &[std::ops::RangeInclusive<u64>]) {
    while let Err((what, reason)) = settled.append(ranges).await {
        tracing::warn!(
            what,
            reason,
            "cannot record delivered copies in the shared journal; retrying"
        );
        tokio::time::sleep(RETRY_AFTER).await;
    }
}

/// Deletes `seq` from `stream`, retried until the server answers that it is gone.
async fn delete(stream: &Stream, seq: u64) {
    loop {
        match stream.delete_message(seq).await {
            Ok(_) => break,
            // Gone already (or never there).
            Err(err) if is_gone(&err) => break,
            Err(err) => {
                tracing::warn!(seq, error = %err, "cannot delete a delivered copy from the shared journal; retrying");
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}

/// Whether the server answered a deletion with the copy not found. Any other answer (the
/// stream not found or without a leader during a restart, a store failure) leaves the copy
/// where it was, behind the reader's position: it is tried again, or a later pass would
/// deliver it again after newer copies of its key.
fn is_gone(err: &DeleteMessageError) -> bool {
    match err.kind() {
        DeleteMessageErrorKind::JetStream(err) => not_found(err.error_code().0, &err.to_string()),
        _ => false,
    }
}

/// Whether a JetStream error (`code`, `text`) says the message is not in the stream: sequence
/// not found (deleted), or a failed deletion (10057, also a store failure) because there is
/// no such message or it lies past the stream's end, as a 2.9 server words it.
fn not_found(code: u64, text: &str) -> bool {
    code == ErrorCode::SEQUENCE_NOT_FOUND.0
        || (code == STREAM_MSG_DELETE_FAILED
            && (text.contains("no message found") || text.contains("stream store EOF")))
}

/// JetStream's "stream message delete failed" error code.
const STREAM_MSG_DELETE_FAILED: u64 = 10057;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_copy_confirmed_gone_is_no_longer_deleted() {
        assert!(not_found(
            10043,
            "sequence 2 not found (code 400, error code 10043)"
        ));
        assert!(not_found(
            10057,
            "no message found (code 500, error code 10057)"
        ));
        assert!(not_found(
            10057,
            "stream store EOF (code 500, error code 10057)"
        ));
        assert!(!not_found(
            10059,
            "stream not found (code 404, error code 10059)"
        ));
        assert!(!not_found(10008, "JetStream cluster not available"));
        assert!(!not_found(10057, "malformed or corrupt message (code 500)"));
    }
}
