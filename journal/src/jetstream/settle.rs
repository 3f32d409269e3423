//! Settling in the shared journal: a delivered copy is deleted from the stream, one at a time
//! in the order settled (so a key's older copy is never left behind a newer one that is gone),
//! retried until the server answers. Until then it is remembered as settling, so that this
//! instance does not read it back and deliver it again.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::stream::{DeleteMessageError, DeleteMessageErrorKind, Stream};
use async_nats::jetstream::ErrorCode;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long a failed deletion waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// How long closing waits for the deletions queued.
const DRAIN_FOR: Duration = Duration::from_secs(5);

/// The deletions queued and the task that makes them.
#[derive(Debug)]
pub(crate) struct Settler {
    queue: Mutex<Option<mpsc::UnboundedSender<u64>>>,
    settling: Arc<Mutex<BTreeSet<u64>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Settler {
    /// Starts the task deleting settled copies from `stream`.
    pub(crate) fn start(stream: Stream) -> Self {
        let (queue, mut settled) = mpsc::unbounded_channel::<u64>();
        let settling = Arc::new(Mutex::new(BTreeSet::new()));
        let task = tokio::spawn({
            let settling = Arc::clone(&settling);
            async move {
                while let Some(seq) = settled.recv().await {
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
                    lock(&settling).remove(&seq);
                }
            }
        });
        Self {
            queue: Mutex::new(Some(queue)),
            settling,
            task: Mutex::new(Some(task)),
        }
    }

    /// Queues the deletion of `seq`.
    pub(crate) fn settle(&self, seq: u64) {
        if let Some(queue) = lock(&self.queue).as_ref() {
            if lock(&self.settling).insert(seq) && queue.send(seq).is_err() {
                lock(&self.settling).remove(&seq);
            }
        }
    }

    /// Whether `seq` was settled and its deletion is not confirmed yet.
    pub(crate) fn is_settling(&self, seq: u64) -> bool {
        lock(&self.settling).contains(&seq)
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
