//! Where the shared journal's stream ends, as writes and the reader need it: known from the
//! server after the caller began (a write's mark, the horizon of a read of copies back).
//! Callers that begin while a read is on its way share the next one, sent once the current one
//! is answered (one read in flight, however many wait), so the server answers one stream-info
//! request per batch of writes rather than one per write, and every answer a caller gets was
//! produced after it began.
//!
//! An append's acknowledgement answers as well as a read: the seq the server gave a copy sent
//! after the caller began is where the stream ended at a moment after the caller began (seqs
//! are given in order, each above every one given before). So a caller is answered by the
//! first of the two, and a read none is left waiting for is not sent: under load, the appends
//! of the other writes answer the marks and the server is asked for its state less often.

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

    /// Takes the ticket of an append about to be sent: it answers the callers waiting now.
    pub(crate) fn sending(&self) -> Ticket {
        self.reads.sending()
    }

    /// The append of `ticket` was stored as `seq` (a new copy, not one acknowledged again as
    /// a duplicate, which was stored earlier).
    pub(crate) fn appended(&self, ticket: Ticket, seq: u64) {
        self.stored(seq);
        self.reads.appended(ticket, seq);
    }
}

/// The place of an append among the callers: it answers those that began waiting before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket(u64);

/// Reads shared by the callers that wait together: at most one in flight, each sent after
/// every caller it answers began waiting; appends sent after a caller began answer it too.
pub(crate) struct SharedReads {
    ask: Ask,
    state: Arc<Mutex<Waiting>>,
}

#[derive(Default)]
struct Waiting {
    /// A read is in flight (its task answers the callers waiting, batch after batch).
    reading: bool,
    /// The appends sent so far (the last ticket taken).
    sent: u64,
    /// The callers waiting for the next read.
    callers: Vec<Caller>,
    /// The callers the read in flight answers (unless an append answers them first).
    in_read: Vec<Caller>,
}

/// A caller waiting, with the appends sent before it began.
struct Caller {
    sent_before: u64,
    answer: oneshot::Sender<Answer>,
}

impl Waiting {
    /// Answers with `seq` the callers that began before append `ticket` was sent.
    fn answer_appended(&mut self, Ticket(ticket): Ticket, seq: u64) {
        for callers in [&mut self.callers, &mut self.in_read] {
            if callers.iter().all(|caller| caller.sent_before >= ticket) {
                continue;
            }
            let (answered, left): (Vec<_>, Vec<_>) = std::mem::take(callers)
                .into_iter()
                .partition(|caller| caller.sent_before < ticket);
            *callers = left;
            for caller in answered {
                let _ = caller.answer.send(Ok(seq));
            }
        }
    }
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
            let sent_before = state.sent;
            state.callers.push(Caller {
                sent_before,
                answer,
            });
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

    /// Takes the ticket of an append about to be sent.
    pub(crate) fn sending(&self) -> Ticket {
        let mut state = lock(&self.state);
        state.sent += 1;
        Ticket(state.sent)
    }

    /// The append of `ticket` was stored as `seq`: it answers the callers that began before
    /// it was sent.
    pub(crate) fn appended(&self, ticket: Ticket, seq: u64) {
        lock(&self.state).answer_appended(ticket, seq);
    }
}

/// Reads for the callers waiting, one batch after the other, until none waits (those an
/// append answered meanwhile wait no more).
async fn answer_batches(state: Arc<Mutex<Waiting>>, ask: Ask) {
    loop {
        {
            let mut state = lock(&state);
            if state.callers.is_empty() {
                state.reading = false;
                return;
            }
            state.in_read = std::mem::take(&mut state.callers);
        }
        // Sent now: after every caller of the batch began waiting.
        let answer = ask().await;
        let batch = std::mem::take(&mut lock(&state).in_read);
        for caller in batch {
            let _ = caller.answer.send(answer.clone());
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

    #[tokio::test]
    async fn an_append_sent_after_a_caller_began_answers_it_and_spares_the_read() {
        let (ask, gate, sent) = gated_server();
        let reads = Arc::new(SharedReads::new(ask));
        // Sent before the callers began: its seq may be below copies stored before them.
        let early = reads.sending();
        let first = tokio::spawn({
            let reads = Arc::clone(&reads);
            async move { reads.read().await }
        });
        settle_tasks().await;
        let later: Vec<_> = (0..3)
            .map(|_| {
                let reads = Arc::clone(&reads);
                tokio::spawn(async move { reads.read().await })
            })
            .collect();
        settle_tasks().await;
        reads.appended(early, 7);
        settle_tasks().await;
        assert!(
            !first.is_finished(),
            "an append sent before it began answers nothing"
        );
        let after = reads.sending();
        reads.appended(after, 42);
        assert_eq!(
            first.await.ok(),
            Some(Ok(42)),
            "the read in flight need not answer"
        );
        for caller in later {
            assert_eq!(caller.await.ok(), Some(Ok(42)));
        }
        gate.add_permits(1);
        settle_tasks().await;
        assert_eq!(
            sent.load(Ordering::SeqCst),
            1,
            "no read is sent for callers an append answered"
        );
        // The read in flight is answered and the reads stop: the next caller reads again.
        gate.add_permits(1);
        assert_eq!(reads.read().await, Ok(2));
    }

    #[tokio::test]
    async fn callers_begun_after_an_append_was_sent_wait_for_a_later_one() {
        let (ask, gate, sent) = gated_server();
        let reads = Arc::new(SharedReads::new(ask));
        let sent_first = reads.sending();
        let waiting = tokio::spawn({
            let reads = Arc::clone(&reads);
            async move { reads.read().await }
        });
        settle_tasks().await;
        reads.appended(sent_first, 5);
        settle_tasks().await;
        assert!(!waiting.is_finished());
        gate.add_permits(1);
        assert_eq!(waiting.await.ok(), Some(Ok(1)), "its own read answers it");
        assert_eq!(sent.load(Ordering::SeqCst), 1);
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// A caller begins waiting (for the next read, or for the read in flight's batch).
        Begin { in_read: bool },
        /// An append is sent.
        Send,
        /// The `nth` append sent (modulo those sent) is acknowledged.
        Acknowledge { nth: usize },
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            any::<bool>().prop_map(|in_read| Step::Begin { in_read }),
            Just(Step::Send),
            (0..64usize).prop_map(|nth| Step::Acknowledge { nth }),
        ]
    }

    proptest::proptest! {
        /// Whatever the order of callers, appends and acknowledgements: a caller is answered
        /// by an append exactly when one sent after it began was acknowledged, and then with
        /// the seq of such an append.
        #[test]
        fn appends_answer_exactly_the_callers_that_began_before_them(
            steps in proptest::collection::vec(step(), 0..80)
        ) {
            let mut state = Waiting::default();
            // Per caller: when it began (appends sent before it) and its answer.
            let mut callers: Vec<(u64, oneshot::Receiver<Answer>)> = Vec::new();
            let mut tickets = Vec::new();
            let mut acknowledged = Vec::new();
            for step in steps {
                match step {
                    Step::Begin { in_read } => {
                        let (answer, answered) = oneshot::channel();
                        let caller = Caller { sent_before: state.sent, answer };
                        if in_read { state.in_read.push(caller) } else { state.callers.push(caller) }
                        callers.push((state.sent, answered));
                    }
                    Step::Send => {
                        state.sent += 1;
                        tickets.push(state.sent);
                    }
                    Step::Acknowledge { nth } if !tickets.is_empty() => {
                        let ticket = tickets[nth % tickets.len()];
                        // Seqs in the order sent: append n stored as 100 + n.
                        state.answer_appended(Ticket(ticket), 100 + ticket);
                        acknowledged.push(ticket);
                    }
                    Step::Acknowledge { .. } => {}
                }
            }
            for (began, mut answered) in callers {
                let due = acknowledged.iter().any(|&ticket| ticket > began);
                match answered.try_recv() {
                    Ok(Ok(seq)) => {
                        proptest::prop_assert!(seq > 100 + began, "answered by an append sent before it began");
                        proptest::prop_assert!(acknowledged.contains(&(seq - 100)));
                    }
                    Ok(Err(err)) => proptest::prop_assert!(false, "{}", err),
                    Err(_) => proptest::prop_assert!(!due, "left waiting after an append sent later was acknowledged"),
                }
            }
            proptest::prop_assert!(state.callers.iter().chain(&state.in_read).all(
                |caller| acknowledged.iter().all(|&ticket| ticket <= caller.sent_before)
            ));
        }
    }
}
