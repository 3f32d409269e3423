//! The mirror queue: copies of accepted writes, delivered to the other side in per-key order.
//!
//! Every copy is first written to the local journal (before the client is answered), then
//! handed to a worker: copies are sharded by ordering key over a fixed set of workers; each
//! worker delivers its copies one at a time, so copies of one key arrive in the order they
//! were submitted, and the caller submits under the key's lock, right after the authoritative
//! side accepted the write. A delivered copy is settled in the journal; after a crash the
//! journal's unsettled copies are delivered first when the proxy starts again. When a worker's
//! queue is full, copies wait in the journal and are read back in order (`feed.rs`): the
//! request path never waits for a queue or the control store. A copy that cannot be delivered
//! is persisted in the control store, and later copies of its key are persisted behind it
//! until `tandem mirror replay` sends them; when the store cannot take it either, it stays in
//! the journal, its key is held, and the refill tries it again until one of them answers.
//! When the authoritative side changes, copies still on their way to the side becoming
//! authoritative are delivered, and requests to their keys wait for them (`cutover.rs`).

mod conflicts;
mod cutover;
pub mod entry;
mod feed;
mod fleet_parking;
mod parking;
mod pending;
mod settlements;
mod summary;
mod window;
mod worker;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tandem_control::{
    AlertCondition, ControlError, ControlStore, FailureStatus, NewMirrorFailure, Side, StageWatch,
    Timestamp,
};
use tandem_journal::MirrorLog;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use pending::PendingCopies;
use settlements::Settlements;
use window::CutoverWindow;

use crate::compare::CapturedResponse;
use crate::headers::encode_block;
use crate::mismatch::MismatchRecorder;
use crate::routes::RouteClass;
use crate::telemetry::{
    FleetParkFailed, JournalAppendFailed, JournalCopyExpired, JournalWaited, KeyConflictFound,
    MirrorCircuit, MirrorLost, MirrorPersisted, MirrorQueueDepth, MirrorSpilled,
};
use crate::upstream::{OutboundRequest, Upstreams};
use feed::{Admit, Feed};

pub use cutover::CutoverRefusal;
pub use parking::KeyParking;

/// Whether the other side's answer means the copy was taken: anything but a server error,
/// 408 (request timeout) or 429 (too many requests), which are retried and then persisted.
#[must_use]
pub fn is_delivered(status: u16) -> bool {
    !(status >= 500 || status == 408 || status == 429)
}

/// How long a write whose copy a shared journal's server did not take keeps trying (the
/// client reconnects by itself after a server restart; a NATS cluster that lost the node
/// leading the stream elects another within its election timeout, 4-9 s, after noticing the
/// loss) before it is recorded as not mirrored.
const APPEND_RETRY_FOR: Duration = Duration::from_secs(15);

/// The pause between two tries of such an append.
const APPEND_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// A copy the journal could not take, and why.
#[derive(Debug)]
pub struct NotJournaled {
    /// The copy.
    pub job: MirrorJob,
    /// Why the journal did not take it.
    pub error: tandem_journal::JournalError,
}

/// A copy of an accepted write, on its way to the non-authoritative side.
#[derive(Debug)]
pub struct MirrorJob {
    /// The client request id.
    pub request_id: String,
    /// The side the copy goes to.
    pub target: Side,
    /// Method, path and headers of the copy.
    pub request: OutboundRequest,
    /// The request body.
    pub body: Bytes,
    /// The key that orders writes.
    pub ordering_key: String,
    /// The matching route.
    pub route: Arc<str>,
    /// Read or write, for comparison records.
    pub class: RouteClass,
    /// The authoritative answer to compare with, when it was captured.
    pub primary: Option<CapturedResponse>,
    /// When the authoritative side accepted the write.
    pub accepted_at: Timestamp,
    /// Order of acceptance within this process.
    pub accepted_seq: i64,
    /// Told whether the copy was delivered (`true`) or kept for later (`false`): sync mode
    /// waits on it.
    pub done: Option<oneshot::Sender<bool>>,
    /// Its record in the journal, settled once it is delivered or persisted elsewhere.
    pub journal_seq: Option<u64>,
    /// The partitions a shared journal's reader held ([`MirrorLog::ownership`]) when it read
    /// the copy: delivered only while they still are (a lease lost and taken again since,
    /// the partition's copies may have been delivered by another instance meanwhile).
    pub read_under: Option<u64>,
    /// A shared journal's reader found the copy older than `journal_retention`: its worker
    /// keeps it in the control store (its key parked, for replay) instead of delivering it.
    pub expired: bool,
}

impl MirrorJob {
    /// The key the journal files the copy under: its target side and ordering key (a shared
    /// journal's partition is derived from it).
    fn journal_key(&self) -> String {
        journal_key(self.target, &self.ordering_key)
    }

    /// Its record in the control store. `cutover_hold`: its key is refused by the side its
    /// copies go to, should that side become authoritative, while the copy is kept there (by
    /// this instance's parking; with the fleet's shared journal, by every instance's, through
    /// the marker published before), so a replay may send it into that side.
    fn failure(&self, reason: &str, error: &str, attempts: u32) -> NewMirrorFailure {
        NewMirrorFailure {
            request_id: self.request_id.clone(),
            target: self.target,
            method: self.request.method.to_string(),
            uri: self.request.path_and_query.clone(),
            headers: encode_block(&self.request.headers),
            body: Some(self.body.to_vec()),
            ordering_key: self.ordering_key.clone(),
            reason: reason.to_owned(),
            last_error: error.to_owned(),
            attempts: i64::from(attempts),
            status: FailureStatus::Pending,
            accepted_at: self.accepted_at,
            accepted_seq: self.accepted_seq,
            cutover_hold: true,
        }
    }
}

/// The key the journal files a copy toward `target` of a write to `ordering_key` under.
fn journal_key(target: Side, ordering_key: &str) -> String {
    format!("{target}:{ordering_key}")
}

/// The target side and ordering key of a [`journal_key`].
fn parse_journal_key(key: &str) -> Option<(Side, &str)> {
    let (side, ordering_key) = key.split_once(':')?;
    Some((side.parse().ok()?, ordering_key))
}

/// The reason (and alert kind) of a copy kept in the store after waiting in the shared
/// journal past its retention.
const EXPIRED: &str = "journal_expired";

/// The least time between two raises of the alert of copies past the retention (the store
/// counts each raise as an occurrence of the open alert).
const EXPIRED_ALERT_EVERY: Duration = Duration::from_secs(30);

/// How long raising that alert may take before it is given up (and logged).
const EXPIRED_ALERT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long sync requests stop waiting for their copies after a failed delivery attempt.
const CIRCUIT_OPEN_FOR: Duration = Duration::from_secs(30);

/// Settings of the mirror queue.
#[derive(Debug, Clone)]
pub struct MirrorSettings {
    /// Worker count; copies of one key always use the same worker.
    pub workers: usize,
    /// Copies that may wait in memory, over all workers.
    pub capacity: usize,
    /// Delivery attempts before a copy is persisted.
    pub attempts: u32,
    /// Backoff before the second attempt, doubled for each further one.
    pub retry_backoff: Duration,
    /// Where every copy is written before the client is answered: the local journal, or the
    /// fleet's shared one.
    pub journal: Arc<dyn MirrorLog>,
    /// With a shared journal, how long a change of authoritative side may take to reach every
    /// instance, plus the longest answer of a side to a write begun before it there (the
    /// journal's mark and append retries are added; `window.rs`).
    pub cutover_grace: Duration,
}

/// What workers, submitters and the refill share.
#[derive(Debug)]
struct Delivery {
    /// Each worker's queue; empty once the queue is closed.
    shards: RwLock<Vec<mpsc::Sender<MirrorJob>>>,
    /// Whether copies go straight to the workers or wait in the journal.
    feed: Feed,
    /// When a delivery attempt last failed, with none succeeding since (Unix ms; 0: none).
    failing_since_ms: AtomicI64,
    /// When the alert of copies past the shared journal's retention was last raised (Unix
    /// ms; 0: never).
    expired_alerted_ms: AtomicI64,
    upstreams: Upstreams,
    stage: StageWatch,
    store: ControlStore,
    recorder: MismatchRecorder,
    parking: KeyParking,
    settings: MirrorSettings,
    depth: AtomicUsize,
    journal: Arc<dyn MirrorLog>,
    /// The local journal's undelivered copies by key, for its summary in the store.
    pending: PendingCopies,
    /// How far settlements toward each side are persisted (`settlements.rs`).
    settlements: Settlements,
    /// With a shared journal, when requests must wait for their keys' copies in the stream.
    window: CutoverWindow,
    /// With a shared journal, where the reading of the fleet's parked keys is.
    fleet_parking: fleet_parking::FleetParking,
    /// Key conflicts on their way to the store.
    conflicts: conflicts::Conflicts,
}

impl Delivery {
    /// Marks `job`'s key parked in the journal (with a shared journal, the fleet's marker, whose
    /// revision is given back); a failure is said here.
    async fn mark_parked(&self, job: &MirrorJob) -> Result<Option<u64>, ()> {
        self.journal.park(&job.journal_key()).await.map_err(|err| {
            FleetParkFailed {
                op: "park",
                ordering_key: &job.ordering_key,
                error: &err.to_string(),
            }
            .emit();
        })
    }

    /// Persists `job` for replay, parks its key and tells the waiter. When the store cannot
    /// take it and the journal has it, it is set aside there (its key held behind it) for the
    /// refill to try again; so it is when the fleet's shared journal cannot mark its key
    /// parked (every instance must refuse the key once the copy leaves the stream).
    async fn persist(&self, job: MirrorJob, reason: &'static str, error: &str, attempts: u32) {
        let revision = match self.mark_parked(&job).await {
            Ok(revision) => revision.unwrap_or(0),
            Err(()) => {
                self.set_aside(&job);
                if let Some(done) = job.done {
                    let _ = done.send(false);
                }
                return;
            }
        };
        let failure = job.failure(reason, error, attempts);
        match self.store.insert_mirror_failure(&failure).await {
            Ok(_) => {
                // Another instance that read the marker may have found the store clear before
                // the insert and released it: the marker is published again now that the copy
                // is kept (a failure to is said; the key stays parked here).
                let revision = if self.journal.shared() {
                    self.mark_parked(&job)
                        .await
                        .ok()
                        .flatten()
                        .unwrap_or(revision)
                } else {
                    revision
                };
                // Kept in the store now: the journal need not deliver it again. Parked before
                // it is settled, so that a request the cutover hold releases on its settlement
                // finds the key parked (on another instance: finds its marker).
                self.parking
                    .park_at(job.target, &job.ordering_key, revision);
                self.settle(&job);
                if reason == EXPIRED {
                    self.expired(&job);
                }
                MirrorPersisted {
                    request_id: &job.request_id,
                    side: job.target,
                    reason,
                    error,
                }
                .emit();
            }
            Err(err) => {
                MirrorLost {
                    request_id: &job.request_id,
                    error: &err.to_string(),
                    journaled: job.journal_seq.is_some(),
                }
                .emit();
                self.set_aside(&job);
            }
        }
        if let Some(done) = job.done {
            let _ = done.send(false);
        }
    }

    /// Counts and alerts on `job`, kept in the store after waiting in the shared journal past
    /// its retention: the other side is stale for its key until it is replayed. The alert is
    /// raised in the background, at most every [`EXPIRED_ALERT_EVERY`].
    fn expired(&self, job: &MirrorJob) {
        JournalCopyExpired {
            request_id: &job.request_id,
            side: job.target,
            ordering_key: &job.ordering_key,
            seq: job.journal_seq.unwrap_or(0),
        }
        .emit();
        let now = Timestamp::now().millis();
        let every = i64::try_from(EXPIRED_ALERT_EVERY.as_millis()).unwrap_or(i64::MAX);
        let last = self.expired_alerted_ms.load(Ordering::SeqCst);
        let due = last == 0 || now.saturating_sub(last) >= every;
        // One raise per interval, however many workers find expired copies at once.
        if !due
            || self
                .expired_alerted_ms
                .compare_exchange(last, now, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
        {
            return;
        }
        let condition = AlertCondition {
            source: "proxy".to_owned(),
            subject: tandem_control::instance_name(),
            kind: EXPIRED.to_owned(),
            severity: "critical".to_owned(),
            summary: format!(
                "mirror copies waited in the shared journal longer than journal_retention and \
                 are kept in the control store instead of delivered (`tandem mirror failures`, \
                 reason {EXPIRED}): the {} side is stale for their keys until they are replayed",
                job.target
            ),
            measured: 1,
            examples: vec![job.ordering_key.clone()],
        };
        let store = self.store.clone();
        tokio::spawn(async move {
            let raised =
                tokio::time::timeout(EXPIRED_ALERT_TIMEOUT, store.raise_alert(&condition)).await;
            if !matches!(raised, Ok(Ok(_))) {
                tracing::error!(
                    "mirror copies expired in the shared journal, and the alert cannot be raised"
                );
            }
        });
    }

    /// Records `job`'s key for a recheck: another instance appended a copy of it while this
    /// copy's write was at the authoritative side. The store is written in the background,
    /// tried while it is out of reach, until the drain's deadline (`conflicts.rs`).
    fn record_conflict(&self, job: &MirrorJob) {
        KeyConflictFound {
            request_id: &job.request_id,
            side: job.target,
            ordering_key: &job.ordering_key,
        }
        .emit();
        self.conflicts
            .record(job.target, &job.ordering_key, &job.request_id);
    }

    /// [`KeyParking::check`] of `key` toward `side`, the store asked; a key released whose
    /// marker the fleet's shared journal holds has it released there too (in the background:
    /// until then the other instances ask the store themselves).
    async fn check_parked(&self, side: Side, key: &str) -> parking::ParkedKey {
        let revision = self.parking.revision(side, key);
        let found = self
            .parking
            .check(side, key, || self.store.has_pending_failure(side, key))
            .await;
        if let (parking::ParkedKey::Released, Some(revision)) = (&found, revision) {
            fleet_parking::release(Arc::clone(&self.journal), side, key, revision);
        }
        found
    }

    /// Marks the copy's journal record settled (delivered, or kept elsewhere).
    fn settle(&self, job: &MirrorJob) {
        if let Some(seq) = job.journal_seq {
            self.journal.settle(seq);
            // Counted before the cutover hold is woken, so that it persists this settlement.
            self.settlements.settled(job.target);
            self.pending.remove(seq, job.target, &job.ordering_key);
            self.feed.lock().finished(seq);
            self.feed.wake();
        }
    }

    /// Leaves a journaled copy in the journal, unsettled, for the refill's next pass; its
    /// key's later copies wait behind it.
    fn set_aside(&self, job: &MirrorJob) {
        if let Some(seq) = job.journal_seq {
            self.feed
                .lock()
                .set_aside(seq, job.target, &job.ordering_key);
            self.feed.wake();
        }
    }

    /// A delivery attempt failed: sync requests stop waiting for their copies (the circuit
    /// opens) until one succeeds, or for [`CIRCUIT_OPEN_FOR`] after the last failure.
    fn attempt_failed(&self) {
        let now = Timestamp::now().millis();
        if self.failing_since_ms.swap(now, Ordering::SeqCst) == 0 {
            MirrorCircuit { open: true }.emit();
        }
    }

    /// A copy was delivered: sync requests wait for their copies again.
    fn attempt_succeeded(&self) {
        if self.failing_since_ms.swap(0, Ordering::SeqCst) != 0 {
            MirrorCircuit { open: false }.emit();
        }
    }

    /// Whether `job`'s key waits behind a copy set aside.
    fn is_held(&self, job: &MirrorJob) -> bool {
        self.feed.lock().is_held(job.target, &job.ordering_key)
    }

    /// The queue of the worker for `job`'s key, unless the queue is closed.
    fn sender_for(&self, job: &MirrorJob) -> Option<mpsc::Sender<MirrorJob>> {
        let shards = self.shards.read().unwrap_or_else(PoisonError::into_inner);
        if shards.is_empty() {
            return None;
        }
        let mut hasher = DefaultHasher::new();
        (job.target, &job.ordering_key).hash(&mut hasher);
        let len = u64::try_from(shards.len()).unwrap_or(1);
        usize::try_from(hasher.finish() % len)
            .ok()
            .and_then(|index| shards.get(index).cloned())
    }

    fn queued(&self) {
        self.depth.fetch_add(1, Ordering::Relaxed);
        MirrorQueueDepth(true).emit();
    }

    fn dequeued(&self) {
        let before = self
            .depth
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |depth| {
                Some(depth.saturating_sub(1))
            })
            .unwrap_or(0);
        if before > 0 {
            MirrorQueueDepth(false).emit();
        }
    }
}

/// The queue of mirror copies and its workers.
#[derive(Debug)]
pub struct MirrorQueue {
    delivery: Arc<Delivery>,
    sequence: AtomicI64,
    last_accepted_ms: AtomicI64,
    /// Cancelled by [`MirrorQueue::close`]: the refill stops handing copies on.
    closed: CancellationToken,
}

impl MirrorQueue {
    /// Starts the workers on `tracker`; they drain the queue after [`MirrorQueue::close`] and
    /// persist what is left when `abort` fires.
    ///
    /// # Errors
    /// When the keys with pending copies cannot be read from the store.
    pub async fn start(
        upstreams: Upstreams,
        stage: StageWatch,
        store: ControlStore,
        recorder: MismatchRecorder,
        settings: MirrorSettings,
        tracker: &TaskTracker,
        abort: &CancellationToken,
    ) -> Result<MirrorQueue, ControlError> {
        let parking = KeyParking::new(store.pending_ordering_keys().await?);
        let workers = settings.workers.max(1);
        let per_worker = settings.capacity.div_ceil(workers).max(1);
        let journal = Arc::clone(&settings.journal);
        // A write begun before the change may still take its mark (2 s at most) and retry its
        // append after the side answered (its last try waiting up to 2 s for its
        // acknowledgement past the retries' end).
        let window =
            CutoverWindow::new(settings.cutover_grace + Duration::from_secs(4) + APPEND_RETRY_FOR);
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| mpsc::channel(per_worker)).unzip();
        let conflicts = conflicts::Conflicts::start(store.clone());
        let delivery = Arc::new(Delivery {
            shards: RwLock::new(senders),
            feed: Feed::new(journal.shared()),
            failing_since_ms: AtomicI64::new(0),
            expired_alerted_ms: AtomicI64::new(0),
            upstreams,
            stage,
            store,
            recorder,
            parking,
            settings,
            depth: AtomicUsize::new(0),
            journal,
            pending: PendingCopies::default(),
            settlements: Settlements::default(),
            window,
            fleet_parking: fleet_parking::FleetParking::default(),
            conflicts,
        });
        for receiver in receivers {
            tracker.spawn(worker::run(Arc::clone(&delivery), receiver, abort.clone()));
        }
        let closed = CancellationToken::new();
        tracker.spawn(feed::refill(Arc::clone(&delivery), closed.clone()));
        tracker.spawn(cutover::publish_keys_pending(
            Arc::clone(&delivery),
            closed.clone(),
        ));
        if delivery.journal.shared() {
            tracker.spawn(cutover::follow_window(
                Arc::clone(&delivery),
                closed.clone(),
            ));
            tracker.spawn(fleet_parking::follow(Arc::clone(&delivery), closed.clone()));
        }
        Ok(MirrorQueue {
            delivery,
            sequence: AtomicI64::new(0),
            last_accepted_ms: AtomicI64::new(0),
            closed,
        })
    }

    /// Stamps a write accepted now: a time that never goes backwards within this process
    /// (even if the clock does) and a sequence number for writes in the same millisecond.
    pub fn accept(&self) -> (Timestamp, i64) {
        let now = Timestamp::now().millis();
        let at = self
            .last_accepted_ms
            .fetch_max(now, Ordering::SeqCst)
            .max(now);
        (Timestamp(at), self.sequence.fetch_add(1, Ordering::SeqCst))
    }

    /// Where a shared journal ends, taken under the key's lock before the write goes to the
    /// authoritative side and carried by the copy, so that the partition's reader can tell
    /// whether another instance appended a copy of the key meanwhile (`feed.rs`). `None` with a local journal (or when the stream cannot be
    /// read: the write goes on unchecked).
    pub async fn mark(&self) -> Option<u64> {
        let started = tokio::time::Instant::now();
        let mark = self.delivery.journal.mark().await;
        if self.delivery.journal.shared() {
            JournalWaited {
                step: "mark",
                waited: started.elapsed(),
            }
            .emit();
        }
        mark.unwrap_or_else(|err| {
            metrics::counter!("tandem_mirror_unchecked_writes_total").increment(1);
            tracing::warn!(error = %err, "cannot read where the shared journal ends; this write is not checked for a concurrent one");
            None
        })
    }

    /// Writes the copy to the journal (it then survives a crash of this process) and hands it
    /// to its key's worker; call it under the key's lock, before the client is answered, with
    /// the [`MirrorQueue::mark`] taken before the write.
    ///
    /// # Errors
    /// When the journal cannot take the copy (a disk error, or a shared journal's server lost
    /// after the write's room was promised): counted and logged here; the copy comes back
    /// and the caller records the write as not mirrored, rather than keep a copy a crash
    /// would lose without a word.
    pub async fn journal(
        &self,
        mut job: MirrorJob,
        mark: Option<u64>,
    ) -> Result<(), Box<NotJournaled>> {
        let key = job.journal_key();
        let payload = entry::encode(&job);
        // A shared journal's server lost for a moment (a restart): the client reconnects on
        // its own, and the write (already on the authoritative side) waits for it, under its
        // key's lock, tried again until APPEND_RETRY_FOR is over (each try waits at most the
        // journal's acknowledgement timeout), rather than become a gap at once.
        let started = tokio::time::Instant::now();
        let retry_until = started + APPEND_RETRY_FOR;
        let mut appended = self
            .delivery
            .journal
            .append(&key, payload.clone(), mark)
            .await;
        while let Err(tandem_journal::JournalError::Nats { .. }) = &appended {
            if tokio::time::Instant::now() + APPEND_RETRY_PAUSE >= retry_until {
                break;
            }
            tokio::time::sleep(APPEND_RETRY_PAUSE).await;
            appended = self
                .delivery
                .journal
                .append(&key, payload.clone(), mark)
                .await;
        }
        JournalWaited {
            step: "append",
            waited: started.elapsed(),
        }
        .emit();
        match appended {
            Ok(seq) => {
                job.journal_seq = Some(seq);
                self.track(&job);
                self.submit(job, seq);
                Ok(())
            }
            Err(err) => {
                JournalAppendFailed {
                    request_id: &job.request_id,
                    error: &err,
                }
                .emit();
                Err(Box::new(NotJournaled { job, error: err }))
            }
        }
    }

    /// Promises journal room for a copy of `entry_bytes` ([`entry::size_of`]). Take it
    /// before the authoritative side sees the write and hold it until
    /// [`MirrorQueue::journal`]: writes in flight together cannot then outgrow the journal
    /// between the check and their appends.
    ///
    /// # Errors
    /// Why the journal cannot promise it now (full, or a shared journal out of reach).
    pub fn reserve_journal(
        &self,
        entry_bytes: u64,
    ) -> Result<tandem_journal::Reservation, tandem_journal::Refusal> {
        self.delivery.journal.reserve(entry_bytes)
    }

    /// Hands the journaled copy `seq` to its key's worker. Call it while holding the key's
    /// lock. A copy that finds its worker's queue full (or copies already waiting in the
    /// journal, or a shared journal, whose partitions' owners deliver) stays in the journal
    /// for the refill, and the queue closed leaves it there for the next start: the caller
    /// never waits.
    fn submit(&self, job: MirrorJob, seq: u64) {
        let Some(sender) = self.delivery.sender_for(&job) else {
            return;
        };
        let mut feed = self.delivery.feed.lock();
        if feed.admit(seq) == Admit::Leave {
            drop(feed);
            // A shared journal's reader may be waiting for copies: this is one.
            self.delivery.feed.wake();
            return;
        }
        // Counted before the worker can take it (and count it out).
        self.delivery.queued();
        match sender.try_send(job) {
            Ok(()) => feed.queued(seq),
            Err(mpsc::error::TrySendError::Full(_) | mpsc::error::TrySendError::Closed(_)) => {
                self.delivery.dequeued();
                feed.overflowed();
                drop(feed);
                MirrorSpilled.emit();
                self.delivery.feed.wake();
            }
        }
    }

    /// Hands the copies a previous run left undelivered in the journal to their workers, in
    /// the order they were accepted (before any new write is accepted). An unreadable record
    /// is logged and settled: it cannot be delivered by anyone.
    pub async fn resume(&self, records: Vec<tandem_journal::Record>) {
        if !records.is_empty() {
            tracing::info!(
                copies = records.len(),
                "delivering the copies the last run left in the journal"
            );
        }
        for record in records {
            match entry::decode(record.payload) {
                Ok(mut job) => {
                    job.journal_seq = Some(record.seq);
                    self.track(&job);
                    self.submit(job, record.seq);
                }
                Err(err) => {
                    tracing::error!(seq = record.seq, error = %err, "an unreadable journal record is dropped");
                    self.delivery.journal.settle(record.seq);
                }
            }
        }
    }

    /// Counts a journaled copy among the local journal's pending ones (a shared journal's
    /// are delivered, and counted, by their partitions' holders).
    fn track(&self, job: &MirrorJob) {
        if let (Some(seq), false) = (job.journal_seq, self.delivery.journal.shared()) {
            self.delivery
                .pending
                .add(seq, job.target, &job.ordering_key, job.accepted_at);
        }
    }

    /// Writes the journal's summary to the control store every `interval` until `stop` (and
    /// once more then), as `journal` (its name there): a task of its own, never a request's.
    pub fn publish_summaries(
        &self,
        journal: String,
        interval: Duration,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        summary::publish(Arc::clone(&self.delivery), journal, interval, stop)
    }

    /// The cutover hold: waits (at most `timeout`) until no copy of `ordering_key` toward
    /// `side`, the side the request is routed to, is undelivered, and makes sure none is kept
    /// in the control store (with the fleet's shared journal: until the stream holds none,
    /// while the cutover window is open). Call it under the key's lock for a write. Immediate
    /// for a key with nothing toward `side`, and on a shared journal outside the window.
    ///
    /// # Errors
    /// Why the request must not reach `side` now: answer it 503, applied nowhere.
    pub async fn clear_key(
        &self,
        side: Side,
        ordering_key: &str,
        timeout: Duration,
    ) -> Result<(), CutoverRefusal> {
        cutover::clear(&self.delivery, side, ordering_key, timeout).await
    }

    /// Copies waiting in memory.
    #[must_use]
    pub fn depth(&self) -> usize {
        self.delivery.depth.load(Ordering::Relaxed)
    }

    /// Whether a sync request should not wait for its copy: copies wait in the journal (a
    /// queue overflowed, or a copy was set aside), or the other side's last delivery attempt
    /// failed less than [`CIRCUIT_OPEN_FOR`] ago with none succeeding since (the circuit is
    /// open).
    #[must_use]
    pub fn not_waiting(&self) -> bool {
        let since = self.delivery.failing_since_ms.load(Ordering::SeqCst);
        let open_for = i64::try_from(CIRCUIT_OPEN_FOR.as_millis()).unwrap_or(i64::MAX);
        let open = since != 0 && Timestamp::now().millis().saturating_sub(since) < open_for;
        open || self.delivery.feed.lock().spilling()
    }

    /// Once the workers ended (nothing more is found): waits until the key conflicts queued
    /// are in the control store, or until `deadline`, when those left are dropped, each
    /// counted and said with its key; how many were dropped so.
    pub async fn finish_conflicts(&self, deadline: tokio::time::Instant) -> u64 {
        self.delivery.conflicts.finish(deadline).await
    }

    /// Stops accepting copies; the workers deliver what is queued and then end, and copies
    /// still waiting in the journal stay there for the next start.
    pub fn close(&self) {
        self.closed.cancel();
        self.delivery
            .shards
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}
