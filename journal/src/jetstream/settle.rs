//! Settling in the shared journal: a delivered copy is first written to the record of settled
//! copies (`settled.rs`), then deleted from the stream, several at once, each retried until
//! the server answers (the order no longer matters: a key's older copy left behind a newer one
//! that is gone is recorded, and passed over). From the moment it is settled the reader passes
//! over it: this instance at once, every instance once the record is written, and a copy a
//! restarted server brings back is deleted again instead of delivered.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::stream::{DeleteMessageError, DeleteMessageErrorKind, Stream};
use async_nats::jetstream::ErrorCode;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::lease::Leases;
use super::lock;
use super::settled::{self, Origin, Settled};

/// How long a failed deletion or record waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// How long closing waits for the deletions queued.
const DRAIN_FOR: Duration = Duration::from_secs(5);

/// The least time between two writes of the record: copies settled meanwhile share one.
const GATHER: Duration = Duration::from_millis(10);

/// How long a pass from the beginning waits for the settlements before it to be recorded.
const RECORDED_WITHIN: Duration = Duration::from_secs(5);

/// How many deletions are sent without waiting for the answers before them.
const DELETING_AT_ONCE: usize = 16;

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

/// The settlements queued, the task recording them and the task deleting them.
#[derive(Debug)]
pub(crate) struct Settler {
    queue: Mutex<Option<mpsc::UnboundedSender<Work>>>,
    settled: Arc<Settled>,
    /// The partition and origin of each copy handed on by the reader, until it is settled.
    partitions: Arc<Mutex<HashMap<u64, (u32, Origin)>>>,
    /// Seqs queued and not confirmed deleted yet.
    settling: Arc<Mutex<BTreeSet<u64>>>,
    /// How many settlements were queued.
    queued: AtomicU64,
    /// Settlements left to the next holder unrecorded ([`keep_leased`]), so far.
    forgotten: Arc<AtomicU64>,
    /// How many of them are recorded (or needed no record).
    recorded: watch::Receiver<u64>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Settler {
    /// Starts the tasks recording settled copies in `settled` and deleting them from `stream`.
    /// A batch is deleted while the next is recorded: a settlement is recorded within about
    /// one record's round trip, however long the deletions take.
    pub(crate) fn start(stream: Stream, settled: Arc<Settled>, leases: Arc<Leases>) -> Self {
        let (queue, mut work) = mpsc::unbounded_channel::<Work>();
        let partitions = Arc::new(Mutex::new(HashMap::new()));
        let (to_delete, mut deletions) = mpsc::unbounded_channel::<Vec<u64>>();
        let (count, recorded) = watch::channel(0u64);
        let settling = Arc::new(Mutex::new(BTreeSet::new()));
        let forgotten = Arc::new(AtomicU64::new(0));
        let recorder = tokio::spawn({
            let settled = Arc::clone(&settled);
            let partitions = Arc::clone(&partitions);
            let settling = Arc::clone(&settling);
            let forgotten = Arc::clone(&forgotten);
            async move {
                let mut done = 0u64;
                while let Some(first) = work.recv().await {
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match work.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    let gathered = tokio::time::Instant::now() + GATHER;
                    let batch_len = u64::try_from(batch.len()).unwrap_or(u64::MAX);
                    // A copy whose partition's lease may have lapsed since it was delivered is
                    // left to the next holder, unrecorded: that one may have read the record
                    // already and would deliver the copy again, then pass over the key's newer
                    // copies recorded here. It delivers them all again, in order.
                    let (batch, origins) =
                        keep_leased(batch, &partitions, &leases, &settled, &settling);
                    let left = batch_len - u64::try_from(batch.len()).unwrap_or(u64::MAX);
                    if left > 0 {
                        forgotten.fetch_add(left, Ordering::SeqCst);
                    }
                    let new: HashSet<u64> = batch
                        .iter()
                        .filter_map(|work| match work {
                            Work::Settled(seq) => Some(*seq),
                            Work::Again(_) => None,
                        })
                        .collect();
                    if !new.is_empty() {
                        let ranges = settled::ranges(&new);
                        record(&settled, &ranges, &origins).await;
                        settled.recorded(&ranges);
                    }
                    done += batch_len;
                    count.send_replace(done);
                    let seqs = batch
                        .into_iter()
                        .map(|(Work::Settled(seq) | Work::Again(seq))| seq)
                        .collect();
                    if to_delete.send(seqs).is_err() {
                        return;
                    }
                    tokio::time::sleep_until(gathered).await;
                }
            }
        });
        let deleter = tokio::spawn({
            let settling = Arc::clone(&settling);
            async move {
                while let Some(seqs) = deletions.recv().await {
                    futures_util::stream::iter(seqs)
                        .for_each_concurrent(DELETING_AT_ONCE, |seq| {
                            let (stream, settling) = (&stream, &settling);
                            async move {
                                delete(stream, seq).await;
                                lock(settling).remove(&seq);
                            }
                        })
                        .await;
                }
            }
        });
        Self {
            queue: Mutex::new(Some(queue)),
            settled,
            partitions,
            settling,
            queued: AtomicU64::new(0),
            forgotten,
            recorded,
            tasks: Mutex::new(vec![recorder, deleter]),
        }
    }

    /// Notes that the reader handed on copy `seq` of `partition` (`None`: of none held, which
    /// the reader does not hand on), so that its settlement is made only while that
    /// partition's lease holds, and recorded with its `origin`.
    pub(crate) fn read_from(&self, seq: u64, partition: Option<u32>, origin: Origin) {
        if let Some(partition) = partition {
            lock(&self.partitions).insert(seq, (partition, origin));
        }
    }

    /// Forgets the partitions of copies handed on: a pass from the beginning starts with none
    /// in flight.
    pub(crate) fn new_pass(&self) {
        lock(&self.partitions).clear();
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

    /// Whether `seq` was settled for good: recorded, here or by another instance. A
    /// settlement of this instance not yet recorded does not count: it is left to the next
    /// holder, still in the stream, if this instance's lease lapses before it is recorded,
    /// so the cutover hold and window must not take its key for delivered yet.
    pub(crate) fn passes_over_recorded(&self, seq: u64) -> bool {
        self.settled.contains_recorded(seq) && self.passes_over(seq)
    }

    /// How many settlements this instance left to the next holder unrecorded: when it
    /// changes, its reader's pass starts again from the beginning, to deliver them again at
    /// once if it holds their partitions again.
    pub(crate) fn left_unrecorded(&self) -> u64 {
        self.forgotten.load(Ordering::SeqCst)
    }

    fn queue(&self, work: Work) {
        let (Work::Settled(seq) | Work::Again(seq)) = work;
        if let Some(queue) = lock(&self.queue).as_ref() {
            let first = lock(&self.settling).insert(seq);
            // A settlement goes to the recorder even when a deletion of its copy is on its way
            // already (a reader passed over the copy between its noting and this): it must be
            // recorded, or a restarted server could bring the copy back with no record of it.
            if first || matches!(work, Work::Settled(_)) {
                if queue.send(work).is_ok() {
                    self.queued.fetch_add(1, Ordering::SeqCst);
                } else if first {
                    lock(&self.settling).remove(&seq);
                }
            }
        }
    }

    /// Waits until every settlement queued so far is recorded.
    ///
    /// # Errors
    /// When they are not within [`RECORDED_WITHIN`] (the server is out of reach).
    pub(crate) async fn recorded(&self) -> Result<(), String> {
        let queued = self.queued.load(Ordering::SeqCst);
        let mut recorded = self.recorded.clone();
        tokio::time::timeout(RECORDED_WITHIN, recorded.wait_for(|done| *done >= queued))
            .await
            .map_err(|_| "settled copies not recorded in time".to_owned())?
            .map_err(|_| "the settler stopped".to_owned())?;
        Ok(())
    }

    /// Stops taking settlements and waits (a few seconds at most) for those queued to be
    /// recorded and deleted.
    pub(crate) async fn drain(&self) {
        lock(&self.queue).take();
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        if tokio::time::timeout(DRAIN_FOR, futures_util::future::join_all(tasks))
            .await
            .is_err()
        {
            for abort in aborts {
                abort.abort();
            }
            tracing::warn!(
                "delivered copies left in the shared journal: those recorded are deleted by the \
                 partitions' next holder, the others delivered again"
            );
        }
    }
}

/// The work of `batch` to do: settlements of copies whose partition's lease surely holds (or
/// whose partition is not known), and every deletion again; the others are forgotten here.
/// With the origins of the settlements kept (where known).
fn keep_leased(
    batch: Vec<Work>,
    partitions: &Mutex<HashMap<u64, (u32, Origin)>>,
    leases: &Leases,
    settled: &Settled,
    settling: &Mutex<BTreeSet<u64>>,
) -> (Vec<Work>, Vec<Origin>) {
    let mut kept = Vec::with_capacity(batch.len());
    let mut origins = Vec::new();
    let mut lapsed = 0usize;
    for work in batch {
        if let Work::Settled(seq) = work {
            let handed_on = lock(partitions).remove(&seq);
            if let Some((partition, origin)) = handed_on {
                if !leases.may_deliver(partition) {
                    settled.forget(seq);
                    lock(settling).remove(&seq);
                    lapsed += 1;
                    continue;
                }
                origins.push(origin);
            }
        }
        kept.push(work);
    }
    if lapsed > 0 {
        tracing::warn!(
            copies = lapsed,
            "delivered copies left unsettled for the next holder of their partitions: this \
             instance's lease may have lapsed; they are delivered again"
        );
    }
    (kept, origins)
}

/// Appends `ranges` (and their copies' `origins`) to the record of settled copies, retried
/// until the server takes them.
async fn record(settled: &Settled, ranges: &[std::ops::RangeInclusive<u64>], origins: &[Origin]) {
    while let Err((what, reason)) = settled.append(ranges, origins).await {
        tracing::warn!(
            what,
            reason,
            "cannot record delivered copies in the shared journal; retrying"
        );
        // A record stream deleted by hand is made again (nothing it held is lost for the
        // copies still in the journal stream: their settlements are in this instance's
        // memory and in the appends to come).
        if let Err((what, reason)) = settled.reopen().await {
            tracing::debug!(what, reason, "cannot make the settled-copies stream again");
        }
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
