//! tandem's journal: a durable, local, append-only log of mirror copies.
//!
//! A copy of an accepted write is [`Journal::append`]ed before the proxy answers the client;
//! `append` resolves once the record is written to the operating system (it then survives the
//! process being killed) and, with [`JournalSettings::fsync`], once it is `fdatasync`ed (it
//! then survives a power loss too). Delivery later [`Journal::settle`]s the record;
//! [`Journal::checkpoint`] persists what is settled and deletes segments with nothing left
//! to deliver. After a crash, [`Journal::open`] hands back every record not settled.
//!
//! Guarantees, stated plainly:
//!
//! - **No loss of acknowledged records**: a record whose `append` returned `Ok` is returned by
//!   every later `open` until a checkpoint taken after its `settle` has been persisted (with
//!   `fsync` off, a power loss, unlike a process crash, can still take the newest records,
//!   and bring back records settled since the last clean close: checkpoints are then not
//!   synced either).
//! - **At least once**: a record settled after the last checkpoint is returned again by the
//!   next `open`, so a consumer must tolerate redelivery. An append whose future was dropped,
//!   or which failed after its bytes reached the file (a failed `fdatasync`), may also come
//!   back. Never is a record settled by a persisted checkpoint returned again.
//! - **Order and numbering**: records come back in sequence order; sequence numbers start at
//!   1 and strictly increase across restarts.
//! - **Damage is loud**: a torn tail of the last segment (an append cut short by a crash) is
//!   cut off with a warning; any other damaged record makes `open` fail with
//!   [`JournalError::Corrupt`] naming the file and offset.
//!
//! Both the local journal and the shared one on NATS JetStream ([`SharedJournal`], for a fleet
//! of proxies) are [`MirrorLog`]s: what a mirror needs of a journal.
//!
//! One process at a time may open a directory. The layout: segment files of records
//! (`record.rs`, `segment.rs`), written by one group-committing task (`writer.rs`), a
//! checkpoint file (`checkpoint.rs`), and the scan that puts it together at start-up
//! (`recovery.rs`). The gap log (`gaps.rs`, a journal of its own in the `gaps` directory)
//! keeps the records of writes answered without a copy until the control store has them.

mod checkpoint;
mod error;
mod gaps;
mod jetstream;
mod log;
mod read_back;
mod record;
mod recovery;
mod segment;
mod state;
mod writer;

#[cfg(test)]
mod model_tests;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

pub use error::JournalError;
pub use gaps::{Gap, GapError, GapLog, UnshippedGap};
pub use jetstream::{without_credentials, SharedJournal, SharedSettings};
pub use log::{FleetStats, LogFuture, MirrorLog, ParkChange, PartitionBacklog, Refusal};

use checkpoint::Checkpoint;
use state::State;
use writer::{Command, Writer};

/// Where the journal lives and how careful it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalSettings {
    /// The directory of segment files and the checkpoint; created if missing.
    pub dir: PathBuf,
    /// A segment is closed and a new one started once the next record would take it past
    /// this many bytes (a record larger than this gets a segment of its own).
    pub segment_bytes: u64,
    /// `fdatasync` before acknowledging an append (and the directory when a segment is
    /// created), so that acknowledged records survive a power loss, not only a crash.
    pub fsync: bool,
    /// The most bytes the segments may take; an append past it fails with
    /// [`JournalError::Full`] until checkpoints delete settled segments.
    pub max_bytes: u64,
}

impl JournalSettings {
    /// The default [`JournalSettings::segment_bytes`]: 64 MiB.
    pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
    /// The default [`JournalSettings::max_bytes`]: 1 GiB.
    pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

    /// Settings for a journal in `dir` with the defaults: 64 MiB segments, no `fsync`, 1 GiB.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: Self::DEFAULT_SEGMENT_BYTES,
            fsync: false,
            max_bytes: Self::DEFAULT_MAX_BYTES,
        }
    }
}

/// One record read back at [`Journal::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its sequence number, as returned by the `append` that wrote it.
    pub seq: u64,
    /// When it was appended (the writer's clock when it took the batch), to the microsecond.
    pub appended_at: SystemTime,
    /// The bytes appended.
    pub payload: Bytes,
}

/// Room promised to an append to come ([`MirrorLog::reserve`]); given back on drop.
pub struct Reservation {
    give_back: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Reservation {
    /// A promise that runs `give_back` when it is dropped.
    pub(crate) fn new(give_back: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self {
            give_back: Some(Box::new(give_back)),
        }
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation").finish_non_exhaustive()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(give_back) = self.give_back.take() {
            give_back();
        }
    }
}

/// Numbers for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalStats {
    /// Records appended (or recovered) and not settled.
    pub unsettled: u64,
    /// Bytes the segment files take.
    pub bytes: u64,
    /// When the oldest (lowest-seq) unsettled record was appended.
    pub oldest_unsettled: Option<SystemTime>,
    /// Segment files.
    pub segments: usize,
}

/// A handle on an open journal. Clones share it; every method takes `&self` except
/// [`Journal::close`], which stops it for all of them.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    /// [`JournalSettings::max_bytes`].
    max_bytes: u64,
    /// [`JournalSettings::fsync`]: checkpoints are synced too.
    fsync: bool,
    commands: mpsc::Sender<Command>,
    state: Arc<Mutex<State>>,
    /// Serialises checkpoints (one temp file, one set of deletions at a time) and holds the
    /// last one made durable by this handle, so that an unchanged one is not written again.
    checkpointing: tokio::sync::Mutex<Option<Checkpoint>>,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.inner.dir)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Journal {
    /// Opens the journal in `settings.dir` (creating it), recovers it (verifying every record,
    /// cutting off a torn tail, reading the checkpoint) and starts its writer. Returns the
    /// records not settled per the checkpoint, in sequence order: they are unsettled in the
    /// new journal too, to be delivered and settled again.
    pub async fn open(settings: JournalSettings) -> Result<(Journal, Vec<Record>), JournalError> {
        let dir = settings.dir.clone();
        let recovered = blocking(&settings.dir, move || recovery::recover(&dir)).await?;
        let state = Arc::new(Mutex::new(recovered.state));
        let (commands, receiver) = mpsc::channel(writer::CHANNEL_CAPACITY);
        let writer = Writer::new(
            receiver,
            Arc::clone(&state),
            recovered.active,
            recovered.next_seq,
            &settings,
        );
        tokio::spawn(writer.run());
        let journal = Journal {
            inner: Arc::new(Inner {
                max_bytes: settings.max_bytes,
                fsync: settings.fsync,
                dir: settings.dir,
                commands,
                state,
                checkpointing: tokio::sync::Mutex::new(None),
            }),
        };
        Ok((journal, recovered.records))
    }

    /// Appends one record and returns its sequence number once it is written to the
    /// operating system (and `fdatasync`ed if [`JournalSettings::fsync`]). Appends from many
    /// tasks are group-committed: one write (and one sync) for all those waiting.
    ///
    /// If this future is dropped after the append was submitted, the record may still be
    /// written: it then stays unsettled and comes back at the next `open`.
    pub async fn append(&self, payload: Bytes) -> Result<u64, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Append { payload, reply })
            .await
            .map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)?
    }

    /// Marks record `seq` delivered (or otherwise dealt with), in any order. Only memory is
    /// touched; the next [`Journal::checkpoint`] persists it. Until then a crash brings the
    /// record back (at least once). Unknown or already settled seqs are ignored.
    pub fn settle(&self, seq: u64) {
        state::lock(&self.inner.state).settle(seq);
    }

    /// Persists which records are settled (atomically: temp file, rename; with
    /// [`JournalSettings::fsync`] the file and the directory synced as well, as the records
    /// are), then deletes the segments whose every record is settled. For the owner to call
    /// periodically and at shutdown; [`Journal::close`] syncs the last one in any case.
    ///
    /// A checkpoint equal to the last one this handle stored is not written again: nothing
    /// settled or appended since, so the file already says it, and the `fsync`s (which on a
    /// shared disk delay every other process's syncs, a database's commits among them) are
    /// spared.
    pub async fn checkpoint(&self) -> Result<(), JournalError> {
        let mut last_stored = self.inner.checkpointing.lock().await;
        let snapshot = state::lock(&self.inner.state).checkpoint();
        let watermark = snapshot.watermark;
        if last_stored.as_ref() != Some(&snapshot) {
            let dir = self.inner.dir.clone();
            let durable = self.inner.fsync;
            let stored = blocking(&self.inner.dir, move || {
                checkpoint::store(&dir, &snapshot, durable).map(|()| snapshot)
            })
            .await?;
            *last_stored = Some(stored);
        }

        // Only now that the checkpoint is durable may the records it settles disappear.
        let doomed = state::lock(&self.inner.state).deletable(watermark);
        if doomed.is_empty() {
            return Ok(());
        }
        let dir = self.inner.dir.clone();
        let (deleted, failure) = blocking(&self.inner.dir, move || {
            let mut deleted = Vec::with_capacity(doomed.len());
            for segment in doomed {
                let path = segment::path(&dir, segment.first_seq);
                match std::fs::remove_file(&path) {
                    Ok(()) => deleted.push(segment.first_seq),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        deleted.push(segment.first_seq);
                    }
                    // Stop at the first failure so that the segments left stay contiguous.
                    Err(e) => return Ok((deleted, Some(JournalError::io(path, e)))),
                }
            }
            Ok((deleted, None))
        })
        .await?;
        {
            let mut state = state::lock(&self.inner.state);
            for first_seq in deleted {
                state.remove_segment(first_seq);
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Up to `max` records not settled, with a seq above `after`, in sequence order, read
    /// back from the segment files: for a consumer that let records wait on disk (its queue
    /// was full, or it put one aside) and now takes them again. Only records whose append
    /// returned are read.
    pub async fn unsettled_after(
        &self,
        after: u64,
        max: usize,
    ) -> Result<Vec<Record>, JournalError> {
        let wanted = {
            let state = state::lock(&self.inner.state);
            let seqs: Vec<u64> = state
                .unsettled
                .range(after.saturating_add(1)..)
                .map(|(seq, _)| *seq)
                .take(max)
                .collect();
            let (Some(&first), Some(&last)) = (seqs.first(), seqs.last()) else {
                return Ok(Vec::new());
            };
            let segments = state
                .segments
                .iter()
                .filter(|segment| segment.last_seq >= first && segment.first_seq <= last)
                .map(|segment| {
                    let wanted = first.max(segment.first_seq);
                    (*segment, state.start_for(segment.first_seq, wanted))
                })
                .collect();
            read_back::Wanted { seqs, segments }
        };
        let dir = self.inner.dir.clone();
        blocking(&self.inner.dir, move || read_back::read(&dir, &wanted)).await
    }

    /// The bytes the segments may still grow by before appends fail with
    /// [`JournalError::Full`], less what reservations hold (checkpoints give back what settled
    /// segments took).
    pub fn room(&self) -> u64 {
        let state = state::lock(&self.inner.state);
        self.inner
            .max_bytes
            .saturating_sub(state.bytes)
            .saturating_sub(state.reserved)
    }

    /// Promises room for one append of up to `payload_bytes`, if the journal has it beside
    /// every other promise: an append made while the [`Reservation`] lives (by its holder)
    /// cannot fail with [`JournalError::Full`] for want of room others took meanwhile. `None`
    /// when the room is not there. The room is given back when the reservation is dropped.
    pub fn reserve(&self, payload_bytes: u64) -> Option<Reservation> {
        let size = record::encoded_len(usize::try_from(payload_bytes).unwrap_or(usize::MAX));
        let mut state = state::lock(&self.inner.state);
        let promised = state
            .bytes
            .saturating_add(state.reserved)
            .saturating_add(size);
        if promised > self.inner.max_bytes {
            return None;
        }
        state.reserved += size;
        let shared = Arc::clone(&self.inner.state);
        Some(Reservation::new(move || {
            let mut state = state::lock(&shared);
            state.reserved = state.reserved.saturating_sub(size);
        }))
    }

    /// The most bytes the segments may take ([`JournalSettings::max_bytes`]).
    pub fn max_bytes(&self) -> u64 {
        self.inner.max_bytes
    }

    /// The highest sequence number appended so far (0 before the first).
    pub fn last_seq(&self) -> u64 {
        state::lock(&self.inner.state).last_seq
    }

    /// Records unsettled, bytes on disk, the oldest unsettled record's append time, segments.
    pub fn stats(&self) -> JournalStats {
        state::lock(&self.inner.state).stats()
    }

    /// Stops the writer once the appends submitted before this call are written, and syncs
    /// the active segment and the last checkpoint stored, so that a clean shutdown survives a
    /// power loss whatever [`JournalSettings::fsync`] says. Appends submitted later, through
    /// any clone, fail with [`JournalError::Closed`]. Does not checkpoint: call
    /// [`Journal::checkpoint`] first. Closing an already closed journal succeeds.
    pub async fn close(self) -> Result<(), JournalError> {
        let (reply, answer) = oneshot::channel();
        if self
            .inner
            .commands
            .send(Command::Close { reply })
            .await
            .is_err()
        {
            return Ok(());
        }
        answer.await.unwrap_or(Ok(()))?;
        if self.inner.fsync {
            return Ok(());
        }
        let _checkpointing = self.inner.checkpointing.lock().await;
        let dir = self.inner.dir.clone();
        blocking(&self.inner.dir, move || checkpoint::sync(&dir)).await
    }
}

/// Runs file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    dir: &Path,
    work: impl FnOnce() -> Result<T, JournalError> + Send + 'static,
) -> Result<T, JournalError> {
    tokio::task::spawn_blocking(work).await.map_err(|join| {
        JournalError::io(
            dir,
            io::Error::other(format!("journal task failed: {join}")),
        )
    })?
}
