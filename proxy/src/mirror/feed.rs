//! How copies reach the workers: straight from the request path while the workers keep up, or
//! read back from the journal in acceptance order once they did not (a worker's queue was
//! full, or a copy had to be set aside because neither the other side nor the control store
//! would take it). The request path then never waits for a queue or the control store: the
//! copy is in the journal already, and the refill hands it on when the workers are free.
//!
//! Per-key order holds because a refill pass starts only when no copy is in the workers'
//! hands and hands copies on in journal order, the order in which each key's copies were
//! accepted; a key whose copy was set aside is held (its later copies are set aside behind it)
//! until the next pass.
//!
//! With a shared journal (a fleet of proxies on one NATS JetStream stream) every copy goes
//! through the journal: the copies of a key are delivered by whichever instance holds its
//! partition, so the request path never hands one on, and the refill never catches up: it
//! reads on as copies are appended, through any instance, and starts a new pass from the
//! start whenever the partitions it holds change.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tandem_control::Side;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{entry, Delivery};
use crate::telemetry::{JournalRecordUnreadable, MirrorRefill};

/// Records read back from the journal at a time.
const BATCH: usize = 512;

/// How long a shared journal's reader waits for copies appended through other instances
/// before it reads again (its own appends wake it sooner, paced by [`SHARED_READ_GAP`]).
const SHARED_POLL: Duration = Duration::from_millis(20);

/// The least time between the starts of two reads of a shared journal after one that did not
/// fill a batch: copies appended one at a time (each waking the reader) are read a few at a
/// time, so the server answers a read of every partition held per gap rather than per copy.
const SHARED_READ_GAP: Duration = Duration::from_millis(10);

/// How long the refill waits before another pass when the last one had to set copies aside
/// (the other side or the store is still down): the pass is the probe.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Where journaled copies go and which are in the workers' hands.
#[derive(Debug, Default)]
pub(super) struct FeedState {
    /// The journal is shared: every copy is read back from it, by its partition's owner.
    shared: bool,
    /// Copies wait in the journal for the refill, rather than going straight to the workers.
    spilling: bool,
    /// The highest seq the refill's last pass read: a copy at or below it that the request
    /// path submits afterwards was handed on already.
    read_up_to: u64,
    /// Journal seqs in the workers' hands (queued or being delivered).
    in_flight: HashSet<u64>,
    /// Keys whose copy was set aside in this pass: their later copies wait behind it.
    held: HashSet<(Side, String)>,
    /// Whether this pass set a copy aside (another pass is needed).
    set_aside: bool,
    /// When the refill first found this pass's [`FeedState::set_aside`].
    set_aside_seen: Option<tokio::time::Instant>,
}

/// What the request path does with a journaled copy.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admit {
    /// Hand it to its worker now.
    Queue,
    /// Leave it to the refill (it is in the journal).
    Leave,
}

/// How a refill pass ends once it read everything there was.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PassEnd {
    /// Copies were appended since: read on.
    More,
    /// Copies were set aside: another pass after [`PROBE_INTERVAL`].
    Again,
    /// Everything is handed on: the request path feeds the workers again.
    CaughtUp,
    /// A shared journal has nothing more for now: read on once copies are appended.
    Idle,
    /// The partitions held changed: a new pass, from the start.
    Restart,
    /// Copies were set aside a [`PROBE_INTERVAL`] ago and copies kept coming: a new pass
    /// now, which tries them again.
    Probe,
}

impl FeedState {
    /// The state of a feed whose journal is `shared` (then always read back) or local.
    pub(super) fn new(shared: bool) -> Self {
        Self {
            shared,
            spilling: shared,
            ..Self::default()
        }
    }

    /// What the request path does with the copy journaled as `seq`.
    pub(super) fn admit(&self, seq: u64) -> Admit {
        if self.spilling || seq <= self.read_up_to {
            Admit::Leave
        } else {
            Admit::Queue
        }
    }

    /// The copy `seq` went to a worker.
    pub(super) fn queued(&mut self, seq: u64) {
        self.in_flight.insert(seq);
    }

    /// A worker's queue was full: copies wait in the journal from now on.
    pub(super) fn overflowed(&mut self) {
        self.spilling = true;
    }

    /// The copy `seq` left the workers' hands settled (delivered, or kept in the store).
    pub(super) fn finished(&mut self, seq: u64) {
        self.in_flight.remove(&seq);
    }

    /// The copy `seq` of `key` left the workers' hands unsettled: it stays in the journal,
    /// and the key's later copies wait behind it.
    pub(super) fn set_aside(&mut self, seq: u64, side: Side, key: &str) {
        self.in_flight.remove(&seq);
        self.held.insert((side, key.to_owned()));
        self.spilling = true;
        self.set_aside = true;
    }

    /// Whether `key`'s copies wait behind one set aside.
    pub(super) fn is_held(&self, side: Side, key: &str) -> bool {
        !self.held.is_empty() && self.held.contains(&(side, key.to_owned()))
    }

    /// Starts a pass over the journal, if one is due and no copy is in the workers' hands.
    pub(super) fn start_pass(&mut self) -> bool {
        if !self.spilling || !self.in_flight.is_empty() {
            return false;
        }
        self.held.clear();
        self.set_aside = false;
        self.set_aside_seen = None;
        true
    }

    /// The refill handed on the copy `seq`.
    pub(super) fn fed(&mut self, seq: u64) {
        self.in_flight.insert(seq);
    }

    /// The pass found nothing unsettled past `read` (the last seq it read); `appended` is the
    /// journal's last seq now.
    pub(super) fn end_pass(&mut self, read: u64, appended: u64) -> PassEnd {
        if self.shared {
            // Copies of other instances' partitions are appended too: no catching up.
            return if self.set_aside {
                PassEnd::Again
            } else {
                PassEnd::Idle
            };
        }
        if appended > read {
            PassEnd::More
        } else if self.set_aside {
            PassEnd::Again
        } else {
            self.spilling = false;
            self.read_up_to = read;
            PassEnd::CaughtUp
        }
    }

    /// Whether the pass, reading on at `now`, ends for a probe: it set copies aside at least
    /// [`PROBE_INTERVAL`] ago (as first seen here). A pass otherwise ends only on a read that
    /// finds nothing, which copies appended without pause never let happen: the key of a copy
    /// set aside would wait behind it for good.
    pub(super) fn probe_due(&mut self, now: tokio::time::Instant) -> bool {
        if !self.set_aside {
            return false;
        }
        let seen = *self.set_aside_seen.get_or_insert(now);
        now.duration_since(seen) >= PROBE_INTERVAL
    }

    /// Whether copies wait in the journal.
    pub(super) fn spilling(&self) -> bool {
        self.spilling
    }
}

/// The feed state with the signal that wakes the refill.
#[derive(Debug, Default)]
pub(super) struct Feed {
    state: Mutex<FeedState>,
    changed: Notify,
}

impl Feed {
    /// The feed of a `shared` or local journal.
    pub(super) fn new(shared: bool) -> Self {
        Self {
            state: Mutex::new(FeedState::new(shared)),
            changed: Notify::new(),
        }
    }

    /// The state, locked (a few set operations at a time).
    pub(super) fn lock(&self) -> MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the refill.
    pub(super) fn wake(&self) {
        self.changed.notify_one();
    }
}

/// Hands the journal's waiting copies to the workers, pass after pass, until `closed`.
pub(super) async fn refill(delivery: Arc<Delivery>, closed: CancellationToken) {
    loop {
        // Wait for a pass to be due (spilling, and the workers' hands empty).
        loop {
            if delivery.feed.lock().start_pass() {
                break;
            }
            tokio::select! {
                () = closed.cancelled() => return,
                () = delivery.feed.changed.notified() => {}
                // A missed wake-up costs at most this.
                () = tokio::time::sleep(PROBE_INTERVAL) => {}
            }
        }
        let mut cursor = 0;
        let partitions = delivery.journal.ownership();
        // The fleet's markers as they are now, after the partitions were taken (one gained
        // later restarts the pass): a copy the former holder kept in the store had its key's
        // marker published before it left the stream, and the worker's check must know of it
        // rather than wait for the next follow. Unknown: nothing is fed.
        if delivery.journal.shared() && !delivery.fleet_parking.catch_up(&delivery).await {
            tokio::select! {
                () = closed.cancelled() => return,
                () = tokio::time::sleep(PROBE_INTERVAL) => {}
            }
            continue;
        }
        // When the next read of a shared journal may start.
        let mut paced: Option<tokio::time::Instant> = None;
        let end = loop {
            if let Some(at) = paced {
                tokio::select! {
                    () = closed.cancelled() => return,
                    () = tokio::time::sleep_until(at) => {}
                }
            }
            if delivery.journal.ownership() != partitions {
                break PassEnd::Restart;
            }
            if delivery.feed.lock().probe_due(tokio::time::Instant::now()) {
                break PassEnd::Probe;
            }
            // Every record up to here is in the read's answer or settled already.
            let horizon = delivery.journal.last_seq();
            let started = tokio::time::Instant::now();
            let read = delivery.journal.unsettled_after(cursor, BATCH).await;
            // A partition gained during the read (its leases taken after the check above) may
            // be in the batch above the cursor, its older copies below: the batch is dropped and
            // the pass starts again from the beginning.
            if delivery.journal.ownership() != partitions {
                break PassEnd::Restart;
            }
            paced = match &read {
                Ok(records) if delivery.journal.shared() && records.len() < BATCH => {
                    Some(started + SHARED_READ_GAP)
                }
                _ => None,
            };
            let records = match read {
                Ok(records) => records,
                Err(err) => {
                    tracing::error!(error = %err, "cannot read waiting mirror copies back from the journal");
                    break PassEnd::Again;
                }
            };
            if records.is_empty() {
                cursor = cursor.max(horizon);
                let end = delivery
                    .feed
                    .lock()
                    .end_pass(cursor, delivery.journal.last_seq());
                match end {
                    PassEnd::More => {
                        // Appended after the read: read again.
                        tokio::task::yield_now().await;
                        continue;
                    }
                    PassEnd::Idle => {
                        tokio::select! {
                            () = closed.cancelled() => return,
                            () = delivery.feed.changed.notified() => {}
                            () = tokio::time::sleep(SHARED_POLL) => {}
                        }
                        continue;
                    }
                    end => break end,
                }
            }
            for record in records {
                cursor = record.seq;
                let mut job = match entry::decode(record.payload) {
                    Ok(job) => job,
                    Err(err) => {
                        JournalRecordUnreadable {
                            seq: record.seq,
                            error: &err.to_string(),
                        }
                        .emit();
                        delivery.journal.settle(record.seq);
                        continue;
                    }
                };
                job.journal_seq = Some(record.seq);
                job.read_under = delivery.journal.shared().then_some(partitions);
                job.expired = delivery.journal.retention().is_some_and(|retention| {
                    record
                        .appended_at
                        .elapsed()
                        .is_ok_and(|waited| waited > retention)
                });
                if delivery.journal.take_conflict(record.seq) {
                    delivery.record_conflict(&job);
                }
                let Some(sender) = delivery.sender_for(&job) else {
                    // Closed: what is left stays in the journal for the next start.
                    return;
                };
                delivery.feed.lock().fed(record.seq);
                delivery.queued();
                if sender.send(job).await.is_err() {
                    return;
                }
            }
        };
        if end != PassEnd::Restart {
            MirrorRefill {
                caught_up: end == PassEnd::CaughtUp,
            }
            .emit();
        }
        if end == PassEnd::Again {
            tokio::select! {
                () = closed.cancelled() => return,
                () = tokio::time::sleep(PROBE_INTERVAL) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_that_set_copies_aside_ends_a_probe_interval_later_while_copies_keep_coming() {
        let mut feed = FeedState::new(true);
        assert!(feed.start_pass());
        let start = tokio::time::Instant::now();
        assert!(!feed.probe_due(start), "nothing set aside");
        feed.fed(7);
        feed.set_aside(7, Side::New, "k");
        let seen = start + Duration::from_millis(10);
        assert!(!feed.probe_due(seen), "just set aside");
        assert!(!feed.probe_due(seen + PROBE_INTERVAL - Duration::from_millis(1)));
        assert!(feed.probe_due(seen + PROBE_INTERVAL));
        assert!(feed.start_pass(), "nothing in flight");
        assert!(
            !feed.probe_due(seen + PROBE_INTERVAL * 2),
            "a new pass has set nothing aside yet"
        );
    }

    #[test]
    fn copies_go_straight_to_workers_until_a_queue_overflows() {
        let mut feed = FeedState::default();
        assert_eq!(feed.admit(1), Admit::Queue);
        feed.queued(1);
        feed.overflowed();
        assert_eq!(
            feed.admit(2),
            Admit::Leave,
            "once spilling, the journal feeds"
        );
        assert!(
            !feed.start_pass(),
            "not while copy 1 is in a worker's hands"
        );
        feed.finished(1);
        assert!(feed.start_pass());
        feed.fed(2);
        feed.fed(3);
        assert_eq!(
            feed.end_pass(3, 4),
            PassEnd::More,
            "4 was appended meanwhile"
        );
        feed.fed(4);
        assert_eq!(feed.end_pass(4, 4), PassEnd::CaughtUp);
        assert_eq!(
            feed.admit(4),
            Admit::Leave,
            "submitted after the pass handed it on"
        );
        assert_eq!(feed.admit(5), Admit::Queue);
    }

    #[test]
    fn a_shared_journal_feeds_every_copy_and_never_catches_up() {
        let mut feed = FeedState::new(true);
        assert_eq!(
            feed.admit(1),
            Admit::Leave,
            "its partition's owner delivers it"
        );
        assert!(feed.start_pass());
        feed.fed(1);
        assert_eq!(
            feed.end_pass(1, 9),
            PassEnd::Idle,
            "others' appends are not ours"
        );
        feed.set_aside(1, Side::New, "/a");
        assert_eq!(feed.end_pass(1, 1), PassEnd::Again);
        assert!(feed.start_pass());
        assert_eq!(feed.end_pass(1, 1), PassEnd::Idle);
        assert!(feed.spilling());
    }

    #[test]
    fn a_copy_set_aside_holds_its_key_until_the_next_pass() {
        let mut feed = FeedState::default();
        feed.queued(1);
        feed.queued(2);
        feed.set_aside(1, Side::New, "/a");
        assert!(feed.is_held(Side::New, "/a"));
        assert!(!feed.is_held(Side::New, "/b"));
        assert_eq!(feed.admit(3), Admit::Leave);
        feed.set_aside(2, Side::New, "/a");
        assert!(feed.start_pass());
        assert!(
            !feed.is_held(Side::New, "/a"),
            "a new pass tries the key again"
        );
        feed.fed(1);
        feed.fed(2);
        feed.fed(3);
        feed.set_aside(1, Side::New, "/a");
        feed.set_aside(2, Side::New, "/a");
        feed.finished(3);
        assert_eq!(feed.end_pass(3, 3), PassEnd::Again);
        assert!(feed.start_pass());
        for seq in 1..=2 {
            feed.fed(seq);
            feed.finished(seq);
        }
        // 3 was delivered and settled: the pass read up to 2, and nothing is past it.
        assert_eq!(feed.end_pass(2, 3), PassEnd::More);
        assert_eq!(feed.end_pass(3, 3), PassEnd::CaughtUp);
        assert!(!feed.spilling());
    }
}
