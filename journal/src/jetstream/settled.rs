//! The record of settled copies: which seqs of the stream were delivered (or kept in the
//! control store) and must never be delivered again, kept as appends of their own.
//!
//! Settling deletes a copy from the stream (`settle.rs`), but a NATS 2.9 server that is killed
//! forgets deletions it acknowledged: it rebuilds a message block from its file, where a copy
//! deleted is still written, unless the block's index was written after the deletion (at most
//! every few seconds, and only when a later change comes). Measured: of 400 copies deleted out
//! of order, up to 400 were back after a `kill -9` and restart, even 3 s after the last
//! deletion; copies deleted in order at the head of a block came back too, the stream's first
//! sequence going back with them. Delivered again, such a copy lands after newer writes of its
//! key: an old value over a newer one on the other side, or, past a cutover, over a write the
//! side took as authoritative. Appends survive such a restart (the stream's last sequence was
//! kept in every run). So before a settled copy is deleted its seq is appended to the record
//! (`<stream>_settled`, one message per batch of seqs, as ranges), and the reader passes over
//! every copy whose seq the record holds, deleting it again.
//!
//! Every instance reads the record (what the fleet settled, in case it takes over a partition
//! or the server comes back with copies another instance settled) at each pass of its reader
//! from the beginning and every [`READ_EVERY`], and keeps every seq it holds: as ranges, which
//! merge as the gaps between settled copies fill, so the set is about as many ranges as copies
//! are in flight, whatever the stream's age. Nothing is forgotten below the stream's first
//! sequence, which a killed server may take back. The record is kept short by compaction: an
//! instance that read [`COMPACT_AFTER`] messages appends what it knows as one snapshot and
//! purges the messages it had read before (a snapshot holds all of them; a purge the server
//! forgets leaves only duplicates).
//!
//! Each message also says, in a header, where the copies it settles came from: the subject
//! (key) and the instance of each ([`Origin`]). Every instance keeps, per subject, the newest
//! origin it read, so that a partition's next holder finds a race with a copy its previous
//! holder delivered and deleted (`note_origin` in `mod.rs`): its own memory lacks that copy.
//! A message is purged only once it is [`ORIGINS_KEPT`] old, so an instance that has not read
//! it yet (it reads every [`READ_EVERY`]) still does; snapshots carry no origins.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::RangeInclusive;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use bytes::{BufMut, Bytes, BytesMut};
use rangemap::RangeInclusiveSet;
use tokio::time::Instant;

use super::{lock, Failure};

/// What opening the record's stream is called in errors.
const OPENING: &str = "open the settled-copies stream";

/// The header marking a message of a snapshot.
const SNAPSHOT_HEADER: &str = "Tandem-Snapshot";

/// The most ranges one message of the record holds (16 bytes each: 64 KiB).
const RANGES_PER_MESSAGE: usize = 4096;

/// The header saying where a message's settled copies came from.
const ORIGINS_HEADER: &str = "Tandem-Origins";

/// The most origins one message's header holds (at most 50 bytes each: about 100 KiB).
const ORIGINS_PER_MESSAGE: usize = 2048;

/// How long a message of the record is kept before compaction may purge it: every instance
/// reads the record at least every [`READ_EVERY`], so each reads its origins first.
const ORIGINS_KEPT: Duration = Duration::from_secs(30);

/// The most subjects whose newest origin is kept (past it, the older half is forgotten: a race
/// is between copies close in the stream).
const ORIGINS_REMEMBERED: usize = 100_000;

/// Where a settled copy came from: its seq, its subject and the instance that appended it
/// (hashed, FNV-1a).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Origin {
    /// The copy's seq in the journal stream.
    pub(crate) seq: u64,
    /// Its subject's hash.
    pub(crate) subject: u64,
    /// Its instance's hash.
    pub(crate) instance: u64,
}

/// How often [`Settled::tidy`] reads the record (a pass from the beginning always does).
const READ_EVERY: Duration = Duration::from_secs(10);

/// How many messages read since the last snapshot (snapshots not counted) make
/// [`Settled::tidy`] write one.
const COMPACT_AFTER: usize = 256;

/// The record of one shared journal's settled copies.
#[derive(Debug)]
pub(crate) struct Settled {
    jetstream: jetstream::Context,
    stream: stream::Stream,
    /// What the record's stream is made with.
    config: stream::Config,
    subject: String,
    state: Mutex<State>,
    /// Held while the record is read or compacted, one caller at a time, so messages are
    /// noted once and in order; when [`Settled::tidy`] last read it.
    reading: tokio::sync::Mutex<Option<Instant>>,
}

#[derive(Debug, Default)]
struct State {
    /// Seqs settled here or read from the record.
    seqs: RangeInclusiveSet<u64>,
    /// Those of `seqs` settled here and not yet recorded: until they are, this instance may
    /// still leave them to the next holder of their partitions ([`Settled::forget`]), so they
    /// count as settled for this instance's reader only, never for what the fleet relies on
    /// (the cutover hold and window, a snapshot).
    unrecorded: RangeInclusiveSet<u64>,
    /// The last message of the record read (its sequence there).
    read_through: u64,
    /// Per subject hash, the newest origin read from the record: its seq and instance hash.
    origins: HashMap<u64, (u64, u64)>,
    /// The record's messages read and not yet purged: their sequence there and when stored.
    stored: VecDeque<(u64, SystemTime)>,
    /// Messages read since this instance last wrote a snapshot.
    read_since_snapshot: usize,
}

impl State {
    /// Notes `range` read from the record (written by this instance or another): settled for
    /// good.
    fn read(&mut self, range: RangeInclusive<u64>) {
        self.unrecorded.remove(range.clone());
        self.seqs.insert(range);
    }

    /// Notes `origin` read from the record, unless a newer copy of its subject was.
    fn origin(&mut self, origin: Origin) {
        if self
            .origins
            .get(&origin.subject)
            .is_some_and(|(seq, _)| *seq >= origin.seq)
        {
            return;
        }
        if self.origins.len() >= ORIGINS_REMEMBERED {
            let mut seqs: Vec<u64> = self.origins.values().map(|(seq, _)| *seq).collect();
            let middle = seqs.len() / 2;
            let (_, keep_from, _) = seqs.select_nth_unstable(middle);
            let keep_from = *keep_from;
            self.origins.retain(|_, (seq, _)| *seq >= keep_from);
        }
        self.origins
            .insert(origin.subject, (origin.seq, origin.instance));
    }

    /// Forgets `seq`, settled here but left to another instance unrecorded; unless recorded
    /// meanwhile (by the partition's next holder, read since): then it is settled for good, and
    /// stays so.
    fn forget(&mut self, seq: u64) {
        if self.unrecorded.contains(&seq) {
            self.seqs.remove(seq..=seq);
            self.unrecorded.remove(seq..=seq);
        }
    }
}

impl Settled {
    /// Creates (or finds) the record `name` with subject `subject`.
    pub(crate) async fn open(
        jetstream: jetstream::Context,
        name: String,
        subject: String,
        replicas: usize,
    ) -> Result<Settled, Failure> {
        let config = stream::Config {
            name,
            subjects: vec![subject.clone()],
            num_replicas: replicas.max(1),
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let stream = super::side::open(&jetstream, config.clone(), OPENING).await?;
        Ok(Settled {
            jetstream,
            stream,
            config,
            subject,
            state: Mutex::new(State::default()),
            reading: tokio::sync::Mutex::new(None),
        })
    }

    /// Makes the record's stream again if it is gone (or checks it, when it is there).
    pub(crate) async fn reopen(&self) -> Result<(), Failure> {
        super::side::open(&self.jetstream, self.config.clone(), OPENING)
            .await
            .map(drop)
    }

    /// Notes `seq` settled here: this instance's reader passes over it from now on.
    pub(crate) fn note(&self, seq: u64) {
        let mut state = lock(&self.state);
        state.seqs.insert(seq..=seq);
        state.unrecorded.insert(seq..=seq);
    }

    /// Notes `ranges`, settled here, recorded: every use passes over them from now on.
    pub(crate) fn recorded(&self, ranges: &[RangeInclusive<u64>]) {
        let mut state = lock(&self.state);
        for range in ranges {
            state.unrecorded.remove(range.clone());
        }
    }

    /// Forgets `seq`, settled here but left to another instance unrecorded.
    pub(crate) fn forget(&self, seq: u64) {
        lock(&self.state).forget(seq);
    }

    /// Whether `seq` was settled (here, or by an instance whose record was read).
    pub(crate) fn contains(&self, seq: u64) -> bool {
        lock(&self.state).seqs.contains(&seq)
    }

    /// Whether `seq` was settled and recorded (here, or by an instance whose record was
    /// read): settled for good, whatever becomes of this instance's leases.
    pub(crate) fn contains_recorded(&self, seq: u64) -> bool {
        let state = lock(&self.state);
        state.seqs.contains(&seq) && !state.unrecorded.contains(&seq)
    }

    /// The first seq at or after `from` not settled for good (recorded, here or by an
    /// instance whose record was read).
    pub(crate) fn first_unrecorded(&self, from: u64) -> u64 {
        let state = lock(&self.state);
        first_unrecorded(&state.seqs, &state.unrecorded, from)
    }

    /// The newest origin read from the record of a copy on the subject hashed `subject`: its
    /// seq and its instance's hash.
    pub(crate) fn origin(&self, subject: u64) -> Option<(u64, u64)> {
        lock(&self.state).origins.get(&subject).copied()
    }

    /// Appends `ranges` to the record, with where those copies came from (`origins`); once
    /// this returns, the copies may be deleted.
    pub(crate) async fn append(
        &self,
        ranges: &[RangeInclusive<u64>],
        origins: &[Origin],
    ) -> Result<(), Failure> {
        self.publish(ranges, origins, false).await
    }

    /// Appends `ranges` and `origins`, marked as a snapshot when they are one (not counted
    /// towards the next).
    async fn publish(
        &self,
        ranges: &[RangeInclusive<u64>],
        origins: &[Origin],
        snapshot: bool,
    ) -> Result<(), Failure> {
        let messages = ranges
            .len()
            .div_ceil(RANGES_PER_MESSAGE)
            .max(origins.len().div_ceil(ORIGINS_PER_MESSAGE));
        let mut ranges = ranges.chunks(RANGES_PER_MESSAGE);
        let mut origins = origins.chunks(ORIGINS_PER_MESSAGE);
        for _ in 0..messages {
            let mut message =
                PublishMessage::build().payload(encode(ranges.next().unwrap_or_default()));
            if let Some(origins) = origins.next() {
                message = message.header(ORIGINS_HEADER, encode_origins(origins).as_str());
            }
            if snapshot {
                message = message.header(SNAPSHOT_HEADER, "snapshot");
            }
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

    /// Reads what the record holds that was not read yet.
    pub(crate) async fn catch_up(&self) -> Result<(), Failure> {
        // `tidy`'s own schedule is left as it is: asked every 100 ms while a cutover window is
        // open, this must not keep it from compacting or from finding a record made again.
        let _reading = self.reading.lock().await;
        self.read_on().await
    }

    /// Called every second: reads the record when it was last read [`READ_EVERY`] ago, and
    /// compacts it when this instance read [`COMPACT_AFTER`] messages since its last snapshot.
    pub(crate) async fn tidy(&self) -> Result<(), Failure> {
        let mut last_read = self.reading.lock().await;
        if last_read.is_some_and(|last_read| last_read.elapsed() < READ_EVERY) {
            return Ok(());
        }
        // A record made again (deleted by hand, `reopen`) starts at 1 again: read from there,
        // and write what this instance knows into it.
        let last = self
            .stream
            .get_info()
            .await
            .map_err(|err| ("read the settled copies", err.to_string()))?
            .state
            .last_sequence;
        {
            let mut state = lock(&self.state);
            if last < state.read_through {
                state.read_through = 0;
                state.stored.clear();
                state.read_since_snapshot = COMPACT_AFTER;
            }
        }
        self.read_on().await?;
        *last_read = Some(Instant::now());
        let (snapshot, read_through) = {
            let state = lock(&self.state);
            if state.read_since_snapshot < COMPACT_AFTER {
                return Ok(());
            }
            // Only what is recorded: a settlement not yet recorded may still be left to the
            // next holder.
            let mut recorded = state.seqs.clone();
            for range in state.unrecorded.iter() {
                recorded.remove(range.clone());
            }
            (
                recorded.iter().cloned().collect::<Vec<_>>(),
                state.read_through,
            )
        };
        self.publish(&snapshot, &[], true).await?;
        // What is purged: every message read, but those younger than ORIGINS_KEPT, whose
        // origins an instance may not have read yet.
        let keep_from = {
            let mut state = lock(&self.state);
            state.read_since_snapshot = 0;
            let young = SystemTime::now()
                .checked_sub(ORIGINS_KEPT)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            while state
                .stored
                .front()
                .is_some_and(|(seq, at)| *seq <= read_through && *at < young)
            {
                state.stored.pop_front();
            }
            state
                .stored
                .front()
                .map_or(u64::MAX, |(seq, _)| *seq)
                .min(read_through.saturating_add(1))
        };
        self.stream
            .purge()
            .sequence(keep_from)
            .await
            .map_err(|err| ("purge the settled copies", err.to_string()))?;
        Ok(())
    }

    /// Reads the record's messages after the last one read; the caller holds `reading`.
    async fn read_on(&self) -> Result<(), Failure> {
        let mut from = lock(&self.state).read_through.saturating_add(1);
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
                Err(err) if super::is_no_message(&err) => return Ok(()),
                Err(err) => return Err(("read the settled copies", err.to_string())),
            };
            from = message.sequence.saturating_add(1);
            let snapshot = message.headers.get(SNAPSHOT_HEADER).is_some();
            let origins = message
                .headers
                .get(ORIGINS_HEADER)
                .map(|origins| decode_origins(origins.as_str()))
                .unwrap_or_default();
            let mut state = lock(&self.state);
            for range in decode(&message.payload) {
                state.read(range);
            }
            for origin in origins {
                state.origin(origin);
            }
            state.read_through = message.sequence;
            state
                .stored
                .push_back((message.sequence, SystemTime::from(message.time)));
            // Snapshots (however many messages a large one takes) never call for another.
            if !snapshot {
                state.read_since_snapshot += 1;
            }
        }
    }
}

/// The first seq at or after `from` that `seqs` lacks or `unrecorded` holds (`u64::MAX` when
/// none: every seq from `from` on is recorded).
fn first_unrecorded(
    seqs: &RangeInclusiveSet<u64>,
    unrecorded: &RangeInclusiveSet<u64>,
    from: u64,
) -> u64 {
    let gap = seqs
        .gaps(&(from..=u64::MAX))
        .next()
        .map_or(u64::MAX, |gap| *gap.start());
    let unrecorded = unrecorded
        .overlapping(&(from..=u64::MAX))
        .next()
        .map_or(u64::MAX, |range| (*range.start()).max(from));
    gap.min(unrecorded)
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

/// Origins as a header value: `seq.subject.instance` in hex, comma-separated.
fn encode_origins(origins: &[Origin]) -> String {
    origins
        .iter()
        .map(|origin| {
            format!(
                "{:x}.{:x}.{:x}",
                origin.seq, origin.subject, origin.instance
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The origins of a header value; an entry that is not three hex numbers is none.
fn decode_origins(value: &str) -> Vec<Origin> {
    value
        .split(',')
        .filter_map(|entry| {
            let mut parts = entry.split('.').map(|part| u64::from_str_radix(part, 16));
            let (Some(Ok(seq)), Some(Ok(subject)), Some(Ok(instance)), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return None;
            };
            Some(Origin {
                seq,
                subject,
                instance,
            })
        })
        .collect()
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
    fn the_first_unrecorded_seq_is_the_first_gap_or_the_first_settled_here_unrecorded() {
        let mut seqs = RangeInclusiveSet::new();
        let mut unrecorded = RangeInclusiveSet::new();
        assert_eq!(
            first_unrecorded(&seqs, &unrecorded, 1),
            1,
            "nothing recorded"
        );
        seqs.insert(1..=10);
        seqs.insert(12..=20);
        assert_eq!(
            first_unrecorded(&seqs, &unrecorded, 1),
            11,
            "a copy lost: 11"
        );
        assert_eq!(first_unrecorded(&seqs, &unrecorded, 12), 21);
        unrecorded.insert(5..=6);
        assert_eq!(
            first_unrecorded(&seqs, &unrecorded, 1),
            5,
            "settled here, unrecorded"
        );
        assert_eq!(first_unrecorded(&seqs, &unrecorded, 6), 6);
        seqs.insert(11..=u64::MAX);
        unrecorded.clear();
        assert_eq!(
            first_unrecorded(&seqs, &unrecorded, 3),
            u64::MAX,
            "all recorded"
        );
    }

    #[test]
    fn a_settlement_left_unrecorded_is_forgotten_unless_the_record_holds_it_since() {
        let mut state = State::default();
        for seq in [3, 4] {
            state.seqs.insert(seq..=seq);
            state.unrecorded.insert(seq..=seq);
        }
        state.read(4..=4);
        state.forget(3);
        state.forget(4);
        assert!(!state.seqs.contains(&3), "left to the next holder");
        assert!(
            state.seqs.contains(&4),
            "recorded by the next holder meanwhile"
        );
        assert!(!state.unrecorded.contains(&4));
        state.read(9..=9);
        state.forget(9);
        assert!(
            state.seqs.contains(&9),
            "another instance's settlement is never forgotten"
        );
    }

    #[test]
    fn origins_read_back_and_the_newest_of_a_subject_is_kept() {
        let origins = [
            Origin {
                seq: 7,
                subject: u64::MAX,
                instance: 1,
            },
            Origin {
                seq: 3,
                subject: u64::MAX,
                instance: 2,
            },
        ];
        assert_eq!(decode_origins(&encode_origins(&origins)), origins);
        assert_eq!(decode_origins("1.2,x.1.2,1.2.3.4,"), vec![]);
        let mut state = State::default();
        for origin in origins {
            state.origin(origin);
        }
        assert_eq!(
            state.origins.get(&u64::MAX),
            Some(&(7, 1)),
            "an older copy read after"
        );
    }

    #[test]
    fn settled_seqs_become_ranges_in_order() {
        let settled: HashSet<u64> = [7, 3, 4, 5, 10].into_iter().collect();
        assert_eq!(ranges(&settled), vec![3..=5, 7..=7, 10..=10]);
    }
}
