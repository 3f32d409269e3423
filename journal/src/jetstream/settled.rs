//! The record of settled copies: which seqs of the stream were delivered (or kept in the
//! control store) and must never be delivered again, kept as appends of their own.
//!
//! Settling deletes a copy from the stream (`settle.rs`), but a NATS 2.9 server that is killed
//! forgets deletions it acknowledged: it rebuilds a message block from its file, where a copy
//! deleted out of order is still written, unless the block's index was written after the
//! deletion (measured: of 400 copies deleted out of order, up to 400 were back after a `kill
//! -9` and restart, even 3 s after the last deletion). Delivered again, such a copy lands
//! after newer writes of its key: an old value over a newer one on the other side, or, past a
//! cutover, over a write the side took as authoritative. Appends survive such a restart (the
//! stream's last sequence was kept in every run), and so does the stream's first sequence
//! moving up. So before a settled copy is deleted its seq is appended to the record
//! (`<stream>_settled`, one message per batch of seqs, as ranges), and the reader passes over
//! every copy whose seq the record holds, deleting it again.
//!
//! Every instance reads the whole record (what the fleet settled, in case it takes over a
//! partition or the server comes back with copies another instance settled) at each pass of
//! its reader from the beginning and every [`READ_EVERY`], keeps the seqs
//! at or above the stream's first sequence (below it nothing can come back), and purges the
//! record's messages all of whose seqs are below it: the record holds only what the stream
//! may still hold.

use std::collections::HashSet;
use std::ops::RangeInclusive;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use bytes::{BufMut, Bytes, BytesMut};
use rangemap::RangeInclusiveSet;
use tokio::time::Instant;

use super::Failure;

/// The most ranges one message of the record holds (16 bytes each: 64 KiB).
const RANGES_PER_MESSAGE: usize = 4096;

/// How often [`Settled::tidy`] reads the record (a pass from the beginning always does).
const READ_EVERY: Duration = Duration::from_secs(10);

/// The record of one shared journal's settled copies.
#[derive(Debug)]
pub(crate) struct Settled {
    jetstream: jetstream::Context,
    stream: stream::Stream,
    subject: String,
    state: Mutex<State>,
    /// Held while the record is read: one reader at a time, so messages are noted once and in
    /// order.
    reading: tokio::sync::Mutex<Option<Instant>>,
}

#[derive(Debug, Default)]
struct State {
    /// Seqs settled here or read from the record, at or above [`State::first`].
    seqs: RangeInclusiveSet<u64>,
    /// The journal stream's first sequence as last read: nothing below it can come back.
    first: u64,
    /// The record's messages already read: (their sequence in the record, their highest seq).
    read: Vec<(u64, u64)>,
    /// The sequence the record was last purged below.
    purged: u64,
}

impl Settled {
    /// Creates (or finds) the record `name` with subject `subject`.
    pub(crate) async fn open(
        jetstream: jetstream::Context,
        name: String,
        subject: String,
        replicas: usize,
    ) -> Result<Settled, Failure> {
        let stream = super::side::open(
            &jetstream,
            stream::Config {
                name,
                subjects: vec![subject.clone()],
                num_replicas: replicas.max(1),
                storage: stream::StorageType::File,
                ..Default::default()
            },
            "open the settled-copies stream",
        )
        .await?;
        Ok(Settled {
            jetstream,
            stream,
            subject,
            state: Mutex::new(State::default()),
            reading: tokio::sync::Mutex::new(None),
        })
    }

    /// Notes `seq` settled here: it is passed over from now on.
    pub(crate) fn note(&self, seq: u64) {
        lock(&self.state).note(seq);
    }

    /// Whether `seq` was settled (here, or by an instance whose record was read).
    pub(crate) fn contains(&self, seq: u64) -> bool {
        lock(&self.state).seqs.contains(&seq)
    }

    /// Appends `ranges` to the record; once this returns, the copies may be deleted.
    pub(crate) async fn append(&self, ranges: &[RangeInclusive<u64>]) -> Result<(), Failure> {
        for chunk in ranges.chunks(RANGES_PER_MESSAGE) {
            let message = PublishMessage::build().payload(encode(chunk));
            let ack = self
                .jetstream
                .send_publish(self.subject.clone(), message)
                .await
                .map_err(|err| ("record settled copies", err.to_string()))?;
            tokio::time::timeout(super::ACK_TIMEOUT, ack)
                .await
                .map_err(|_| {
                    (
                        "record settled copies",
                        "no acknowledgement in time".to_owned(),
                    )
                })?
                .map_err(|err| ("record settled copies", err.to_string()))?;
        }
        Ok(())
    }

    /// Reads what the record holds that was not read yet, forgets the seqs below the stream's
    /// `first` sequence (now read), and purges the record's messages holding only such seqs.
    pub(crate) async fn catch_up(&self, first: u64) -> Result<(), Failure> {
        let mut last_read = self.reading.lock().await;
        let mut from = lock(&self.state).read.last().map_or(1, |last| last.0 + 1);
        let mut found = Vec::new();
        loop {
            let message = self
                .stream
                .raw_message_builder()
                .sequence(from)
                .next_by_subject(self.subject.clone())
                .send()
                .await;
            let message = match message {
                Ok(message) => message,
                Err(err) if super::is_no_message(&err) => break,
                Err(err) => return Err(("read the settled copies", err.to_string())),
            };
            from = message.sequence.saturating_add(1);
            found.push((message.sequence, decode(&message.payload)));
        }
        let purge_below = {
            let mut state = lock(&self.state);
            for (sequence, ranges) in found {
                let high = ranges.iter().map(|range| *range.end()).max().unwrap_or(0);
                for range in ranges {
                    state.seqs.insert(range);
                }
                state.read.push((sequence, high));
            }
            state.forget_below(first)
        };
        *last_read = Some(Instant::now());
        drop(last_read);
        self.purge(purge_below).await
    }

    /// Forgets the seqs below the stream's `first` sequence, and reads the record as
    /// [`Settled::catch_up`] does when it was last read [`READ_EVERY`] ago: called every second,
    /// it keeps memory and the record bounded without reading every batch as it is written.
    pub(crate) async fn tidy(&self, first: u64) -> Result<(), Failure> {
        let due =
            (*self.reading.lock().await).is_none_or(|last_read| last_read.elapsed() >= READ_EVERY);
        if due {
            return self.catch_up(first).await;
        }
        let purge_below = lock(&self.state).forget_below(first);
        self.purge(purge_below).await
    }

    async fn purge(&self, below: Option<u64>) -> Result<(), Failure> {
        if let Some(below) = below {
            self.stream
                .purge()
                .sequence(below)
                .await
                .map_err(|err| ("purge the settled copies", err.to_string()))?;
        }
        Ok(())
    }
}

impl State {
    fn note(&mut self, seq: u64) {
        if seq >= self.first {
            self.seqs.insert(seq..=seq);
        }
    }

    /// Forgets the seqs below `first` and the messages read that hold only such seqs, up to the
    /// first that holds another: the sequence the record may be purged below, if any.
    fn forget_below(&mut self, first: u64) -> Option<u64> {
        self.first = self.first.max(first);
        if self.first > 0 {
            self.seqs.remove(0..=self.first - 1);
        }
        let first = self.first;
        let done = self
            .read
            .iter()
            .take_while(|(_, high)| *high < first)
            .count();
        if done == 0 {
            return None;
        }
        let below = match self.read.get(done) {
            Some((sequence, _)) => *sequence,
            None => self.read[done - 1].0 + 1,
        };
        // The last message read stays known, for where the next read begins.
        let keep_from = done.min(self.read.len() - 1);
        self.read.drain(..keep_from);
        (below > self.purged).then(|| {
            self.purged = below;
            below
        })
    }
}

/// The seqs of `settled` as ranges, in order.
pub(crate) fn ranges(settled: &HashSet<u64>) -> Vec<RangeInclusive<u64>> {
    let mut set = RangeInclusiveSet::new();
    for &seq in settled {
        set.insert(seq..=seq);
    }
    set.into_iter().collect()
}

/// A message of the record: each range as its first and last seq, 8 bytes big-endian each.
fn encode(ranges: &[RangeInclusive<u64>]) -> Bytes {
    let mut bytes = BytesMut::with_capacity(ranges.len() * 16);
    for range in ranges {
        bytes.put_u64(*range.start());
        bytes.put_u64(*range.end());
    }
    bytes.freeze()
}

/// The ranges of a message of the record; trailing bytes short of a range, and a range whose
/// end is below its start, are not ranges (nothing writes them).
fn decode(payload: &[u8]) -> Vec<RangeInclusive<u64>> {
    payload
        .chunks_exact(16)
        .filter_map(|pair| {
            let (start, end) = pair.split_at(8);
            let start = u64::from_be_bytes(start.try_into().ok()?);
            let end = u64::from_be_bytes(end.try_into().ok()?);
            (start <= end).then_some(start..=end)
        })
        .collect()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_of_the_record_reads_back_as_its_ranges() {
        let ranges = vec![1..=1, 3..=9, u64::MAX - 1..=u64::MAX];
        assert_eq!(decode(&encode(&ranges)), ranges);
        let mut cut = encode(&ranges).to_vec();
        cut.truncate(40);
        assert_eq!(decode(&cut), vec![1..=1, 3..=9], "a partial range is none");
    }

    #[test]
    fn settled_seqs_become_ranges_in_order() {
        let settled: HashSet<u64> = [7, 3, 4, 5, 10].into_iter().collect();
        assert_eq!(ranges(&settled), vec![3..=5, 7..=7, 10..=10]);
    }

    #[test]
    fn what_lies_below_the_first_sequence_is_forgotten_and_purged_up_to_the_first_message_still_needed(
    ) {
        let mut state = State::default();
        state.seqs.insert(1..=20);
        state.seqs.insert(30..=40);
        // Messages 5, 6, 8 of the record: their highest seqs 20, 40, 12.
        state.read = vec![(5, 20), (6, 40), (8, 12)];
        assert_eq!(state.forget_below(21), Some(6), "message 5 only");
        assert!(!state.seqs.contains(&20));
        assert!(state.seqs.contains(&30));
        assert_eq!(state.read, vec![(6, 40), (8, 12)]);
        assert_eq!(state.forget_below(21), None, "nothing new");
        state.read.push((11, 3));
        assert_eq!(
            state.forget_below(15),
            None,
            "an older first changes nothing"
        );
        assert_eq!(state.forget_below(41), Some(12), "all of them");
        assert!(state.seqs.is_empty());
        assert_eq!(state.read, vec![(11, 3)], "where the next read begins");
        assert_eq!(state.forget_below(50), None, "purged below 12 already");
    }

    #[test]
    fn a_seq_settled_below_the_first_sequence_is_not_kept() {
        let mut state = State {
            first: 10,
            ..State::default()
        };
        state.note(5);
        state.note(12);
        assert!(!state.seqs.contains(&5));
        assert!(state.seqs.contains(&12));
    }
}
