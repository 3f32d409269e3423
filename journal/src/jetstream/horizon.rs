//! Where the shared journal's stream ends, as writes and the reader need it: read from the
//! server after the caller began (a write's mark, the horizon of a read of copies back).
//! Callers that begin while a read is on its way share the next one, sent once the current one
//! is answered (one read in flight, however many wait), so the server answers one stream-info
//! request per batch of writes rather than one per write, and every answer a caller gets was
//! produced after it began.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::stream;
use tokio::sync::oneshot;

/// A read's answer: the stream's last sequence, or why the server gave none.
pub(crate) type Answer = Result<u64, String>;

/// Asks the server once.
pub(crate) type Ask = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync>;

/// Where the stream ends: the highest sequence known stored here, and shared server reads.
pub(crate) struct Horizon {
    /// The highest sequence known stored (every lower one is stored or deleted).
    last: Arc<AtomicU64>,
    reads: SharedReads,
    /// The longest a caller waits for a read (its own, or the one in flight before it).
    timeout: Duration,
}

impl std::fmt::Debug for Horizon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Horizon")
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl Horizon {
    /// Where `stream` ends, each server read given up after `timeout`.
    pub(crate) fn new(stream: stream::Stream, timeout: Duration) -> Self {
        let last = Arc::new(AtomicU64::new(0));
        let ask: Ask = {
            let last = Arc::clone(&last);
            Arc::new(move || {
                let stream = stream.clone();
                let last = Arc::clone(&last);
                Box::pin(async move {
                    let info = tokio::time::timeout(timeout, stream.get_info())
                        .await
                        .map_err(|_| format!("no answer within {}s", timeout.as_secs()))?
                        .map_err(|err| err.to_string().replace('\n', " "))?;
                    last.fetch_max(info.state.last_sequence, Ordering::SeqCst);
                    Ok(info.state.last_sequence)
                })
            })
        };
        Self {
            last,
            reads: SharedReads::new(ask),
            timeout,
        }
    }

    /// Where the stream ends, as a server read sent after this call began says.
    pub(crate) async fn now(&self) -> Answer {
        tokio::time::timeout(self.timeout, self.reads.read())
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {}s", self.timeout.as_secs())))
    }

    /// The highest sequence known stored.
    pub(crate) fn last(&self) -> u64 {
        self.last.load(Ordering::SeqCst)
    }

    /// `seq` is stored (an append's acknowledgement, the stream's last sequence read).
    pub(crate) fn stored(&self, seq: u64) {
        self.last.fetch_max(seq, Ordering::SeqCst);
    }
}

/// Reads shared by the callers that wait together: at most one in flight, each sent after
/// every caller it answers began waiting.
pub(crate) struct SharedReads {
    ask: Ask,
    state: Arc<Mutex<Waiting>>,
}

#[derive(Default)]
struct Waiting {
    /// A read is in flight (its task answers the callers waiting, batch after batch).
    reading: bool,
    /// The callers waiting for the next read.
    callers: Vec<oneshot::Sender<Answer>>,
}

impl SharedReads {
    pub(crate) fn new(ask: Ask) -> Self {
        Self {
            ask,
            state: Arc::new(Mutex::new(Waiting::default())),
        }
    }

    /// The answer of a read sent after this call began. The reads are made by a task of
    /// their own, so a caller that stops waiting (its request cancelled) never leaves the
    /// others without one.
    pub(crate) async fn read(&self) -> Answer {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut state = lock(&self.state);
            state.callers.push(answer);
            !std::mem::replace(&mut state.reading, true)
        };
        if start {
            tokio::spawn(answer_batches(
                Arc::clone(&self.state),
                Arc::clone(&self.ask),
            ));
        }
        answered
            .await
            .unwrap_or_else(|_| Err("the read of the stream was abandoned".to_owned()))
    }
}

/// Reads for the callers waiting, one batch after the other, until none waits.
async fn answer_batches(state: Arc<Mutex<Waiting>>, ask: Ask) {
    loop {
        let batch = {
            let mut state = lock(&state);
            if state.callers.is_empty() {
                state.reading = false;
                return;
            }
            std::mem::take(&mut state.callers)
        };
        // Sent now: after every caller of the batch began waiting.
        let answer = ask().await;
        for caller in batch {
            let _ = caller.send(answer.clone());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::Semaphore;

    /// A server whose reads wait for a permit and answer how many reads were sent so far.
    fn gated_server() -> (Ask, Arc<Semaphore>, Arc<AtomicUsize>) {
        let gate = Arc::new(Semaphore::new(0));
        let sent = Arc::new(AtomicUsize::new(0));
        let ask: Ask = {
            let gate = Arc::clone(&gate);
            let sent = Arc::clone(&sent);
            Arc::new(move || {
                let gate = Arc::clone(&gate);
                let number = sent.fetch_add(1, Ordering::SeqCst) + 1;
                Box::pin(async move {
                    gate.acquire()
                        .await
                        .map_err(|err| err.to_string())?
                        .forget();
                    Ok(u64::try_from(number).unwrap_or(u64::MAX))
                })
            })
        };
        (ask, gate, sent)
    }

    async fn settle_tasks() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn callers_waiting_together_share_the_next_read_sent_after_they_began() {
        let (ask, gate, sent) = gated_server();
        let reads = Arc::new(SharedReads::new(ask));
        let first = tokio::spawn({
            let reads = Arc::clone(&reads);
            async move { reads.read().await }
        });
        settle_tasks().await;
        assert_eq!(sent.load(Ordering::SeqCst), 1, "the first caller's read");
        // These began after read 1 was sent: read 1 cannot answer them.
        let later: Vec<_> = (0..5)
            .map(|_| {
                let reads = Arc::clone(&reads);
                tokio::spawn(async move { reads.read().await })
            })
            .collect();
        settle_tasks().await;
        assert_eq!(
            sent.load(Ordering::SeqCst),
            1,
            "one read in flight at a time"
        );
        gate.add_permits(1);
        assert_eq!(first.await.ok(), Some(Ok(1)));
        settle_tasks().await;
        assert_eq!(sent.load(Ordering::SeqCst), 2, "one read for the five");
        gate.add_permits(1);
        for caller in later {
            assert_eq!(caller.await.ok(), Some(Ok(2)));
        }
        settle_tasks().await;
        assert_eq!(sent.load(Ordering::SeqCst), 2, "no read without a caller");
    }

    #[tokio::test]
    async fn a_caller_that_stops_waiting_leaves_the_others_their_answer() {
        let (ask, gate, sent) = gated_server();
        let reads = Arc::new(SharedReads::new(ask));
        let abandoned = tokio::spawn({
            let reads = Arc::clone(&reads);
            async move { reads.read().await }
        });
        settle_tasks().await;
        abandoned.abort();
        let waiting = tokio::spawn({
            let reads = Arc::clone(&reads);
            async move { reads.read().await }
        });
        settle_tasks().await;
        gate.add_permits(2);
        assert_eq!(waiting.await.ok(), Some(Ok(2)));
        assert_eq!(sent.load(Ordering::SeqCst), 2);
        // Idle again: the next caller starts a read of its own.
        gate.add_permits(1);
        assert_eq!(reads.read().await, Ok(3));
    }
}
