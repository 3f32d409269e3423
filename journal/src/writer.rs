//! The writer task: the one owner of the active segment, which group-commits appends.
//!
//! Appends arrive on a channel. The task takes the first one waiting, then every other one
//! already queued (up to [`MAX_BATCH_BYTES`] of payload), encodes them into one buffer, writes
//! the buffer with one `write(2)` per segment touched (one, unless the batch crosses a segment
//! boundary), `fdatasync`s once per segment when `fsync` is on, records the result in the
//! shared state and only then answers every caller. The file work runs on the blocking pool
//! with the segment moved in and back out, so the task never blocks the runtime.

use std::io;
use std::mem;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::record::{self, MAX_PAYLOAD_LEN};
use crate::segment::ActiveSegment;
use crate::state::{self, State};
use crate::{JournalError, JournalSettings};

/// How many appends may wait for the writer before `append` itself waits.
pub(crate) const CHANNEL_CAPACITY: usize = 1024;
/// A batch stops taking more appends once it holds this much payload.
const MAX_BATCH_BYTES: usize = 4 << 20;
/// The encoding buffer is shrunk back to this after an unusually large batch.
const KEPT_BUFFER_BYTES: usize = 4 << 20;

/// What the journal handles ask of the writer.
#[derive(Debug)]
pub(crate) enum Command {
    /// Append `payload`; answer with its seq once it is written.
    Append {
        payload: Bytes,
        reply: oneshot::Sender<Result<u64, JournalError>>,
    },
    /// Finish what was submitted before, sync, and stop.
    Close {
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
}

/// The writer task's state.
pub(crate) struct Writer {
    commands: mpsc::Receiver<Command>,
    state: Arc<Mutex<State>>,
    /// The files; `None` only while a batch is on the blocking pool, or after it panicked.
    io: Option<SegmentWriter>,
    dir: PathBuf,
    next_seq: u64,
    max_bytes: u64,
    /// Set by a failure that leaves the segment untrustworthy: every later append fails.
    failed: Option<Failure>,
    payloads: Vec<Bytes>,
    replies: Vec<oneshot::Sender<Result<u64, JournalError>>>,
}

impl Writer {
    /// A writer appending to `active` (or to a new segment) from `next_seq` on.
    pub(crate) fn new(
        commands: mpsc::Receiver<Command>,
        state: Arc<Mutex<State>>,
        active: Option<ActiveSegment>,
        next_seq: u64,
        settings: &JournalSettings,
    ) -> Self {
        Self {
            commands,
            state,
            io: Some(SegmentWriter {
                dir: settings.dir.clone(),
                active,
                segment_bytes: settings.segment_bytes,
                fsync: settings.fsync,
                buf: Vec::new(),
                chunks: Vec::new(),
            }),
            dir: settings.dir.clone(),
            next_seq,
            max_bytes: settings.max_bytes,
            failed: None,
            payloads: Vec::new(),
            replies: Vec::new(),
        }
    }

    /// Runs until `close` or until every journal handle is gone.
    pub(crate) async fn run(mut self) {
        let mut close = None;
        while let Some(command) = self.commands.recv().await {
            let mut batch_bytes = match command {
                Command::Append { payload, reply } => {
                    let len = payload.len();
                    self.payloads.push(payload);
                    self.replies.push(reply);
                    len
                }
                Command::Close { reply } => {
                    close = Some(reply);
                    break;
                }
            };
            while batch_bytes < MAX_BATCH_BYTES {
                match self.commands.try_recv() {
                    Ok(Command::Append { payload, reply }) => {
                        batch_bytes += payload.len();
                        self.payloads.push(payload);
                        self.replies.push(reply);
                    }
                    Ok(Command::Close { reply }) => {
                        close = Some(reply);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.commit().await;
            if close.is_some() || self.io.is_none() {
                break;
            }
        }

        // Whatever was submitted after the close (or after a panic) is refused.
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Append { reply, .. } => drop(reply.send(Err(JournalError::Closed))),
                Command::Close { reply } => drop(reply.send(Ok(()))),
            }
        }
        if let Some(reply) = close {
            let result = self.finish().await;
            drop(reply.send(result));
        }
    }

    /// Writes the gathered batch and answers its callers.
    async fn commit(&mut self) {
        let mut payloads = mem::take(&mut self.payloads);
        let mut replies = mem::take(&mut self.replies);
        let io = match (&self.failed, self.io.take()) {
            (None, Some(io)) => io,
            (failed, io) => {
                self.io = io;
                for reply in replies.drain(..) {
                    let error = failed.as_ref().map_or(JournalError::Closed, Failure::error);
                    drop(reply.send(Err(error)));
                }
                payloads.clear();
                (self.payloads, self.replies) = (payloads, replies);
                return;
            }
        };

        let budget = self
            .max_bytes
            .saturating_sub(state::lock(&self.state).bytes);
        let first_seq = self.next_seq;
        let micros = record::unix_micros(SystemTime::now());
        let joined = tokio::task::spawn_blocking(move || {
            let mut io = io;
            let outcome = io.write_batch(&payloads, first_seq, micros, budget);
            (io, payloads, outcome)
        })
        .await;
        let (io, returned, outcome) = match joined {
            Ok(done) => done,
            Err(join) => {
                // Nothing can be known about the segment now: stop appending.
                let failure = Failure {
                    kind: io::ErrorKind::Other,
                    message: format!("journal writer panicked: {join}"),
                    path: self.dir.clone(),
                };
                for reply in replies.drain(..) {
                    drop(reply.send(Err(failure.error())));
                }
                self.failed = Some(failure);
                self.replies = replies;
                return;
            }
        };
        self.io = Some(io);
        payloads = returned;

        {
            let mut state = state::lock(&self.state);
            for write in &outcome.writes {
                state.record_write(write.segment_first_seq, write.segment_len, write.last_seq);
            }
            for result in &outcome.results {
                if let Outcome::Written(seq) = result {
                    state.unsettled.insert(*seq, micros);
                }
            }
        }
        self.next_seq = outcome.next_seq;
        for (reply, result) in replies.drain(..).zip(outcome.results) {
            let answer = match result {
                Outcome::Written(seq) => Ok(seq),
                Outcome::Full => Err(JournalError::Full {
                    limit: self.max_bytes,
                }),
                Outcome::Failed => Err(outcome
                    .failure
                    .as_ref()
                    .map_or(JournalError::Closed, Failure::error)),
            };
            drop(reply.send(answer));
        }
        match outcome.failure {
            Some(failure) if outcome.fatal => {
                tracing::error!(
                    path = %failure.path.display(),
                    error = %failure.message,
                    "journal writer failed and stops accepting appends"
                );
                self.failed = Some(failure);
            }
            Some(failure) => tracing::warn!(
                path = %failure.path.display(),
                error = %failure.message,
                "journal append failed; the partial write was cut off"
            ),
            None => {}
        }
        payloads.clear();
        (self.payloads, self.replies) = (payloads, replies);
    }

    /// On close: makes everything written durable (already so when `fsync` is on).
    async fn finish(&mut self) -> Result<(), JournalError> {
        if let Some(failure) = &self.failed {
            return Err(failure.error());
        }
        let Some(mut io) = self.io.take() else {
            return Ok(());
        };
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || io.sync_all())
            .await
            .map_err(|join| JournalError::io(dir, io::Error::other(join.to_string())))?
    }
}

/// The file side of the writer, moved onto the blocking pool for each batch.
struct SegmentWriter {
    dir: PathBuf,
    active: Option<ActiveSegment>,
    segment_bytes: u64,
    fsync: bool,
    /// The batch's records, encoded back to back; reused from batch to batch.
    buf: Vec<u8>,
    /// The batch's runs of records per segment; reused from batch to batch.
    chunks: Vec<Chunk>,
}

/// A run of records in one batch that go to the same segment.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    /// Whether the segment has to be created first.
    new_segment: bool,
    segment_first_seq: u64,
    start: usize,
    end: usize,
    first_seq: u64,
    last_seq: u64,
}

/// What became of one append in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Written(u64),
    Full,
    Failed,
}

/// A segment after a successful write.
#[derive(Debug)]
struct SegmentWrite {
    segment_first_seq: u64,
    segment_len: u64,
    last_seq: u64,
}

/// What a batch did.
#[derive(Debug)]
struct BatchOutcome {
    /// One per payload, in order.
    results: Vec<Outcome>,
    /// The segments written, in order.
    writes: Vec<SegmentWrite>,
    /// The seq the next batch starts at: after the last record written.
    next_seq: u64,
    /// Why the `Failed` appends failed.
    failure: Option<Failure>,
    /// Whether that failure leaves the segment untrustworthy.
    fatal: bool,
}

/// An I/O failure kept to answer every caller it concerns (`io::Error` is not `Clone`).
#[derive(Debug, Clone)]
struct Failure {
    kind: io::ErrorKind,
    message: String,
    path: PathBuf,
}

impl Failure {
    fn new(path: &Path, error: &io::Error) -> Self {
        Self {
            kind: error.kind(),
            message: error.to_string(),
            path: path.to_owned(),
        }
    }

    fn error(&self) -> JournalError {
        JournalError::io(&self.path, io::Error::new(self.kind, self.message.clone()))
    }
}

impl SegmentWriter {
    /// Encodes and writes `payloads` as records `first_seq..`, all stamped `micros`, taking
    /// at most `budget` more bytes on disk.
    fn write_batch(
        &mut self,
        payloads: &[Bytes],
        first_seq: u64,
        micros: i64,
        budget: u64,
    ) -> BatchOutcome {
        if self.buf.capacity() > 2 * KEPT_BUFFER_BYTES {
            self.buf = Vec::with_capacity(KEPT_BUFFER_BYTES);
        }
        self.buf.clear();
        self.chunks.clear();
        let mut results = Vec::with_capacity(payloads.len());
        let mut seq = first_seq;
        let mut used = 0;
        let mut segment_len = self.active.as_ref().map(ActiveSegment::len);
        for payload in payloads {
            let size = record::encoded_len(payload.len());
            if payload.len() as u64 > MAX_PAYLOAD_LEN || used + size > budget {
                results.push(Outcome::Full);
                continue;
            }
            let roll = match segment_len {
                None => true,
                Some(len) => len > 0 && len + size > self.segment_bytes,
            };
            if roll || self.chunks.is_empty() {
                let segment_first_seq = match (&self.active, roll) {
                    (Some(active), false) => active.first_seq(),
                    _ => seq,
                };
                self.chunks.push(Chunk {
                    new_segment: roll,
                    segment_first_seq,
                    start: self.buf.len(),
                    end: self.buf.len(),
                    first_seq: seq,
                    last_seq: seq,
                });
                if roll {
                    segment_len = Some(0);
                }
            }
            record::encode_into(&mut self.buf, seq, micros, payload);
            if let Some(chunk) = self.chunks.last_mut() {
                chunk.end = self.buf.len();
                chunk.last_seq = seq;
            }
            segment_len = segment_len.map(|len| len + size);
            used += size;
            results.push(Outcome::Written(seq));
            seq += 1;
        }

        let chunks = mem::take(&mut self.chunks);
        let mut writes = Vec::with_capacity(chunks.len());
        let mut failure = None;
        let mut fatal = false;
        for chunk in &chunks {
            match self.write_chunk(chunk) {
                Ok(segment_len) => writes.push(SegmentWrite {
                    segment_first_seq: chunk.segment_first_seq,
                    segment_len,
                    last_seq: chunk.last_seq,
                }),
                Err((error, is_fatal)) => {
                    for result in &mut results {
                        if matches!(result, Outcome::Written(s) if *s >= chunk.first_seq) {
                            *result = Outcome::Failed;
                        }
                    }
                    failure = Some(error);
                    fatal = is_fatal;
                    break;
                }
            }
        }
        self.chunks = chunks;
        BatchOutcome {
            results,
            next_seq: writes.last().map_or(first_seq, |write| write.last_seq + 1),
            writes,
            failure,
            fatal,
        }
    }

    /// Writes one chunk (creating its segment first if it starts one) and returns the
    /// segment's new length, or the failure and whether it is fatal.
    fn write_chunk(&mut self, chunk: &Chunk) -> Result<u64, (Failure, bool)> {
        if chunk.new_segment {
            // The previous segment needs no sync here: each write to it was synced already.
            let created = ActiveSegment::create(&self.dir, chunk.segment_first_seq);
            self.active = Some(created.map_err(|error| match error {
                JournalError::Io { path, source } => (Failure::new(&path, &source), false),
                other => (
                    Failure::new(&self.dir, &io::Error::other(other.to_string())),
                    false,
                ),
            })?);
        }
        let Some(segment) = self.active.as_mut() else {
            let missing = io::Error::other("no segment to append to");
            return Err((Failure::new(&self.dir, &missing), true));
        };
        if self.fsync {
            segment
                .sync_dir_entry(&self.dir)
                .map_err(|error| (Failure::new(&self.dir, &error), false))?;
        }
        let before = segment.len();
        if let Err(failed) = segment.append(&self.buf[chunk.start..chunk.end]) {
            return Err((Failure::new(segment.path(), &failed.error), failed.fatal));
        }
        if self.fsync {
            if let Err(error) = segment.sync_data() {
                // The kernel may have dropped the dirty pages: cut the records off, since
                // nobody is told they are written, and trust nothing after this.
                let failed = segment.roll_back(before, error);
                return Err((Failure::new(segment.path(), &failed.error), true));
            }
        }
        Ok(segment.len())
    }

    /// Makes the active segment durable (for a clean close without `fsync`).
    fn sync_all(&mut self) -> Result<(), JournalError> {
        let Some(segment) = self.active.as_mut() else {
            return Ok(());
        };
        segment
            .sync_dir_entry(&self.dir)
            .map_err(|e| JournalError::io(&self.dir, e))?;
        segment
            .sync_data()
            .map_err(|e| JournalError::io(segment.path(), e))
    }
}

#[cfg(test)]
mod tests {
    use std::fs::{self, File};

    use super::*;
    use crate::segment;

    fn writer(dir: &Path, segment_bytes: u64) -> SegmentWriter {
        SegmentWriter {
            dir: dir.to_owned(),
            active: None,
            segment_bytes,
            fsync: true,
            buf: Vec::new(),
            chunks: Vec::new(),
        }
    }

    fn payloads(count: usize, len: usize) -> Vec<Bytes> {
        (0..count)
            .map(|i| Bytes::from(vec![i as u8; len]))
            .collect()
    }

    const RECORD: u64 = record::HEADER_LEN as u64 + 10;

    #[test]
    fn a_batch_is_split_across_segments_at_the_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut io = writer(dir.path(), 2 * RECORD);
        let outcome = io.write_batch(&payloads(5, 10), 1, 0, u64::MAX);
        assert_eq!(
            outcome.results,
            (1..=5).map(Outcome::Written).collect::<Vec<_>>()
        );
        let writes: Vec<(u64, u64, u64)> = outcome
            .writes
            .iter()
            .map(|w| (w.segment_first_seq, w.segment_len, w.last_seq))
            .collect();
        assert_eq!(
            writes,
            [(1, 2 * RECORD, 2), (3, 2 * RECORD, 4), (5, RECORD, 5)]
        );
        assert_eq!(outcome.next_seq, 6);
        for first in [1, 3, 5] {
            assert!(segment::path(dir.path(), first).exists());
        }

        // The next batch continues in the last segment.
        let outcome = io.write_batch(&payloads(1, 10), 6, 0, u64::MAX);
        assert_eq!(outcome.writes[0].segment_first_seq, 5);
        assert_eq!(outcome.writes[0].segment_len, 2 * RECORD);
    }

    #[test]
    fn appends_over_the_budget_are_full_and_use_no_seq() {
        let dir = tempfile::tempdir().unwrap();
        let mut io = writer(dir.path(), u64::MAX);
        let batch = [
            Bytes::from(vec![1; 10]),
            Bytes::from(vec![2; 100]),
            Bytes::from(vec![3; 10]),
        ];
        let outcome = io.write_batch(&batch, 7, 0, 2 * RECORD);
        assert_eq!(
            outcome.results,
            [Outcome::Written(7), Outcome::Full, Outcome::Written(8)]
        );
        assert_eq!(outcome.next_seq, 9);
        assert_eq!(
            fs::metadata(segment::path(dir.path(), 7)).unwrap().len(),
            2 * RECORD
        );
    }

    #[test]
    fn a_failure_after_the_first_segment_fails_only_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        // The segment the batch would roll into cannot be created: the name is taken.
        fs::write(segment::path(dir.path(), 3), b"in the way").unwrap();
        let mut io = writer(dir.path(), 2 * RECORD);
        let outcome = io.write_batch(&payloads(4, 10), 1, 0, u64::MAX);
        assert_eq!(
            outcome.results,
            [
                Outcome::Written(1),
                Outcome::Written(2),
                Outcome::Failed,
                Outcome::Failed
            ]
        );
        assert_eq!(outcome.next_seq, 3);
        assert!(!outcome.fatal);
        assert!(outcome.failure.is_some());
        assert_eq!(outcome.writes.len(), 1);
    }

    #[test]
    fn a_write_that_cannot_be_cut_back_is_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment::path(dir.path(), 1);
        fs::write(&path, b"").unwrap();
        // A read-only handle: the write fails, and so does cutting the file back.
        let read_only = File::open(&path).unwrap();
        let mut io = writer(dir.path(), u64::MAX);
        io.active = Some(ActiveSegment::from_file(read_only, path, 1, 0));
        let outcome = io.write_batch(&payloads(2, 10), 1, 0, u64::MAX);
        assert_eq!(outcome.results, [Outcome::Failed, Outcome::Failed]);
        assert_eq!(outcome.next_seq, 1);
        assert!(outcome.fatal);
        assert!(outcome.writes.is_empty());
    }
}
