//! [`MirrorLog`]: what a mirror needs of a journal, implemented by the local [`Journal`] and
//! by the shared one on NATS JetStream ([`crate::SharedJournal`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::{Journal, JournalError, JournalStats, Record, Reservation};

/// What a shared journal says of the fleet, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetStats {
    /// The partitions the keys are spread over.
    pub partitions: u32,
    /// Those this instance delivers now.
    pub held: Vec<u32>,
    /// Those whose lease this instance holds but whose copies wait until their previous
    /// holder's last request can have ended (taken from a holder whose lease expired).
    pub waiting: Vec<u32>,
    /// Copies this instance read back more than once, or below where it had read (set aside
    /// earlier, or of a partition taken over, whose former holder may have delivered them):
    /// the copies that may reach the other side twice.
    pub rereads: u64,
    /// Partition leases this instance held and could not renew in time (paused, or cut off
    /// from the server): another instance may deliver those partitions now.
    pub leases_lost: u64,
    /// Copies the server lost: gone from the stream with no settlement recorded by anyone, so
    /// never delivered (their keys unknown).
    pub copies_lost: u64,
    /// The server is a NATS version known to lose acknowledged messages when it is killed and
    /// restarted (before 2.10): copies this journal acknowledged may vanish.
    pub server_loses_copies: bool,
}

/// One partition of a shared log: the copies it holds and who delivers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionBacklog {
    /// The partition.
    pub partition: u32,
    /// Copies in it not settled yet.
    pub copies: u64,
    /// The instance holding its lease, if any holds it.
    pub holder: Option<String>,
}

/// A change of a parked key's state in a shared log, as [`MirrorLog::park_changes`] reads
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkChange {
    /// Its position; the revision [`MirrorLog::unpark`] takes for a marker.
    pub seq: u64,
    /// The key (as given to [`MirrorLog::park`]).
    pub key: String,
    /// Parked (a marker), or released.
    pub parked: bool,
}

/// Why a log cannot promise room for a copy now; the write's policy (refuse or record as not
/// mirrored) applies to both, before the authoritative side sees the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The log holds its most bytes.
    #[error("the mirror journal is full (journal_max_bytes)")]
    Full,
    /// A shared log's server cannot be reached now: an append would wait for it and then fail.
    #[error("the shared mirror journal's server cannot be reached")]
    Unreachable,
    /// The copy is larger than a shared log's server takes in one message (NATS's
    /// `max_payload`, 1 MiB by default): it could never be appended, whatever the policy.
    #[error("the copy is larger than the shared mirror journal's server takes (its max_payload)")]
    TooLarge,
}

impl Refusal {
    /// The reason recorded for a write not mirrored because of it.
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Full => "journal_full",
            Refusal::Unreachable => "journal_unreachable",
            Refusal::TooLarge => "body_too_large",
        }
    }
}

/// The future of a journal operation.
pub type LogFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, JournalError>> + Send + 'a>>;

/// A durable log of mirror copies: appended before the client is answered, read back in
/// sequence order, settled once delivered.
pub trait MirrorLog: fmt::Debug + Send + Sync {
    /// Appends the copy of a write to `key` (the target side and ordering key) and returns its
    /// sequence number once it is durable as the log promises. `mark` is [`MirrorLog::mark`]
    /// taken before the write went to the authoritative side.
    fn append<'a>(&'a self, key: &'a str, payload: Bytes, mark: Option<u64>) -> LogFuture<'a, u64>;

    /// Marks `seq` delivered (or kept elsewhere); unknown or settled seqs are ignored.
    fn settle(&self, seq: u64);

    /// Up to `max` records not settled with a seq above `after`, in sequence order: of this
    /// instance's partitions only, for a shared log.
    fn unsettled_after(&self, after: u64, max: usize) -> LogFuture<'_, Vec<Record>>;

    /// The highest seq this instance appended or read (0 before the first).
    fn last_seq(&self) -> u64;

    /// The bytes appends may still take before they fail with [`JournalError::Full`].
    fn room(&self) -> u64;

    /// Promises room for one append of up to `payload_bytes`, or says why it cannot now.
    ///
    /// # Errors
    /// [`Refusal::Full`] when the room is not there; [`Refusal::Unreachable`] when a shared
    /// log's server cannot be reached.
    fn reserve(&self, payload_bytes: u64) -> Result<Reservation, Refusal>;

    /// The most bytes the log may hold.
    fn max_bytes(&self) -> u64;

    /// Numbers for metrics.
    fn stats(&self) -> JournalStats;

    /// How long a copy may wait in a shared log before its reader stops trying to deliver it
    /// and keeps it elsewhere (the control store), read against [`Record::appended_at`];
    /// `None`: until delivered. The log never drops a copy by age itself: a copy gone without
    /// its key leaves the other side stale with nothing to show for it.
    fn retention(&self) -> Option<std::time::Duration> {
        None
    }

    /// Persists what is settled; for the owner to call periodically and at shutdown.
    fn checkpoint(&self) -> LogFuture<'_, ()>;

    /// Stops the log once what was submitted is written.
    fn close(&self) -> LogFuture<'_, ()>;

    /// Whether the log is shared by a fleet: copies are then delivered by whichever instance
    /// holds their partition, never straight from the request path.
    fn shared(&self) -> bool {
        false
    }

    /// A number that changes whenever the partitions this instance delivers change, or the
    /// shared journal's server restarted: a reader must start reading from the beginning
    /// again, since a partition it took over (or a server that forgot deletions) has copies
    /// below where it was.
    fn ownership(&self) -> u64 {
        0
    }

    /// Where the log ends now, for [`MirrorLog::append`]; `None` when the log is written by
    /// this instance alone (a local journal).
    fn mark(&self) -> LogFuture<'_, Option<u64>> {
        Box::pin(async { Ok(None) })
    }

    /// Whether the copy `seq`, read back, was found written concurrently with a copy of its
    /// key appended through another instance (after the write began, before this copy); asked
    /// once per copy.
    fn take_conflict(&self, _seq: u64) -> bool {
        false
    }

    /// Each partition's backlog and holder, for a shared log (empty for a local journal).
    fn partitions_backlog(&self) -> LogFuture<'_, Vec<PartitionBacklog>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// The fleet's partitions as this instance sees them; `None` for a local journal.
    fn fleet(&self) -> Option<FleetStats> {
        None
    }

    /// Whether this instance may deliver a copy of `key` (as given to
    /// [`MirrorLog::append`]) now: always with a local journal; with a shared one, only while
    /// the lease of the key's partition is surely still this instance's.
    fn may_deliver(&self, _key: &str) -> bool {
        true
    }

    /// Whether a shared log still holds a copy of `key` (as given to [`MirrorLog::append`]):
    /// one not settled by whichever instance delivers it. Always `false` for a local journal,
    /// whose owner tracks its own copies.
    fn holds(&self, _key: &str) -> LogFuture<'_, bool> {
        Box::pin(async { Ok(false) })
    }

    /// Marks `key` (as given to [`MirrorLog::append`]) parked for the whole fleet: a copy of
    /// it is about to be kept in the control store rather than delivered. Call it before the
    /// copy is settled; the marker's revision, or `None` for a local journal (whose owner
    /// alone serves its keys). Waits for the server at most as long as an append.
    fn park<'a>(&'a self, _key: &'a str) -> LogFuture<'a, Option<u64>> {
        Box::pin(async { Ok(None) })
    }

    /// Releases `key`'s marker `revision` once the control store keeps none of its copies:
    /// `false` when a newer marker is there (it stays). Nothing for a local journal.
    fn unpark<'a>(&'a self, _key: &'a str, _revision: u64) -> LogFuture<'a, bool> {
        Box::pin(async { Ok(true) })
    }

    /// The revision of `key`'s marker when a shared log has it parked now (asked of the
    /// server); `None` for a local journal.
    fn parked<'a>(&'a self, _key: &'a str) -> LogFuture<'a, Option<u64>> {
        Box::pin(async { Ok(None) })
    }

    /// Up to `max` changes of the fleet's parked keys after position `after`, in order (from
    /// 0: every key's last state); empty for a local journal.
    fn park_changes(&self, _after: u64, _max: usize) -> LogFuture<'_, Vec<ParkChange>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// The lowest seq a shared log still holds (`None` when it holds nothing): every copy
    /// below it is settled, through any instance. `None` for a local journal.
    fn first_unsettled(&self) -> LogFuture<'_, Option<u64>> {
        Box::pin(async { Ok(None) })
    }
}

impl MirrorLog for Journal {
    fn append<'a>(
        &'a self,
        _key: &'a str,
        payload: Bytes,
        _mark: Option<u64>,
    ) -> LogFuture<'a, u64> {
        Box::pin(Journal::append(self, payload))
    }

    fn settle(&self, seq: u64) {
        Journal::settle(self, seq);
    }

    fn unsettled_after(&self, after: u64, max: usize) -> LogFuture<'_, Vec<Record>> {
        Box::pin(Journal::unsettled_after(self, after, max))
    }

    fn last_seq(&self) -> u64 {
        Journal::last_seq(self)
    }

    fn room(&self) -> u64 {
        Journal::room(self)
    }

    fn reserve(&self, payload_bytes: u64) -> Result<Reservation, Refusal> {
        Journal::reserve(self, payload_bytes).ok_or(Refusal::Full)
    }

    fn max_bytes(&self) -> u64 {
        Journal::max_bytes(self)
    }

    fn stats(&self) -> JournalStats {
        Journal::stats(self)
    }

    fn checkpoint(&self) -> LogFuture<'_, ()> {
        Box::pin(Journal::checkpoint(self))
    }

    fn close(&self) -> LogFuture<'_, ()> {
        Box::pin(Journal::close(self.clone()))
    }
}
