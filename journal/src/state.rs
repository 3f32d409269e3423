//! The in-memory picture shared by the writer, `settle`, `checkpoint` and `stats`: the
//! segments on disk and the acknowledged records not yet settled.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::checkpoint::Checkpoint;
use crate::record::system_time;
use crate::JournalStats;

/// One segment file as the journal knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentMeta {
    /// The seq the file is named after.
    pub(crate) first_seq: u64,
    /// The seq of its last record (`first_seq - 1` while it is empty).
    pub(crate) last_seq: u64,
    /// Its length in bytes.
    pub(crate) bytes: u64,
}

/// The journal's shared state. Every critical section is a few map or deque operations.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// The segments, oldest first; the last one is the one the writer appends to.
    pub(crate) segments: VecDeque<SegmentMeta>,
    /// The sum of the segments' lengths.
    pub(crate) bytes: u64,
    /// Room promised to appends to come ([`crate::Reservation`]s not dropped yet).
    pub(crate) reserved: u64,
    /// Acknowledged (or recovered) records not yet settled: seq → append time, Unix micros.
    pub(crate) unsettled: BTreeMap<u64, i64>,
    /// The highest seq acknowledged by this journal or found at recovery.
    pub(crate) last_seq: u64,
    /// A sparse index, one entry at least [`MARK_EVERY`] seqs apart: seq → (the segment it is
    /// in, its byte offset there), so reading back starts near a record instead of at its
    /// segment's start.
    pub(crate) marks: BTreeMap<u64, (u64, u64)>,
}

/// How many seqs apart the entries of [`State::marks`] are at least.
const MARK_EVERY: u64 = 256;

impl State {
    /// Marks `seq` settled; unknown or already settled seqs are ignored.
    pub(crate) fn settle(&mut self, seq: u64) {
        self.unsettled.remove(&seq);
    }

    /// Records that the writer wrote records up to `last_seq` into the segment named
    /// `first_seq`, which is now `len` bytes long.
    pub(crate) fn record_write(&mut self, first_seq: u64, len: u64, last_seq: u64) {
        // Where this write's first record starts: after what the segment held before it.
        let (start_seq, start_offset) = match self.segments.back() {
            Some(segment) if segment.first_seq == first_seq => {
                (segment.last_seq + 1, segment.bytes)
            }
            _ => (first_seq, 0),
        };
        if start_seq <= last_seq
            && self
                .marks
                .range(start_seq.saturating_sub(MARK_EVERY - 1)..)
                .next()
                .is_none()
        {
            self.marks.insert(start_seq, (first_seq, start_offset));
        }
        match self.segments.back_mut() {
            Some(segment) if segment.first_seq == first_seq => {
                self.bytes = self.bytes - segment.bytes + len;
                segment.bytes = len;
                segment.last_seq = last_seq;
            }
            _ => {
                self.bytes += len;
                self.segments.push_back(SegmentMeta {
                    first_seq,
                    last_seq,
                    bytes: len,
                });
            }
        }
        self.last_seq = self.last_seq.max(last_seq);
    }

    /// The checkpoint describing what is settled now.
    pub(crate) fn checkpoint(&self) -> Checkpoint {
        Checkpoint::from_unsettled(self.last_seq, self.unsettled.keys().copied())
    }

    /// The segments that may be deleted under a checkpoint with low watermark `watermark`:
    /// every record in them is settled, and they are not the last (the writer's) segment.
    pub(crate) fn deletable(&self, watermark: u64) -> Vec<SegmentMeta> {
        let older = self.segments.len().saturating_sub(1);
        self.segments
            .iter()
            .take(older)
            .take_while(|segment| segment.last_seq <= watermark)
            .copied()
            .collect()
    }

    /// Forgets a segment whose file was deleted.
    pub(crate) fn remove_segment(&mut self, first_seq: u64) {
        if let Some(index) = self
            .segments
            .iter()
            .position(|segment| segment.first_seq == first_seq)
        {
            if let Some(segment) = self.segments.remove(index) {
                self.bytes -= segment.bytes;
                self.marks
                    .retain(|seq, _| *seq < segment.first_seq || *seq > segment.last_seq);
            }
        }
    }

    /// Where reading for `seq` in the segment named `first_seq` may start: the offset of the
    /// nearest marked record at or before it in that segment (else the segment's start).
    pub(crate) fn start_for(&self, first_seq: u64, seq: u64) -> (u64, u64) {
        self.marks
            .range(first_seq..=seq)
            .next_back()
            .map_or((first_seq, 0), |(marked, (_, offset))| (*marked, *offset))
    }

    /// The numbers [`crate::Journal::stats`] reports.
    pub(crate) fn stats(&self) -> JournalStats {
        JournalStats {
            unsettled: self.unsettled.len() as u64,
            bytes: self.bytes,
            oldest_unsettled: self
                .unsettled
                .first_key_value()
                .map(|(_, &micros)| system_time(micros)),
            segments: self.segments.len(),
        }
    }
}

/// Locks the state. A panic while it was held cannot leave it half-updated in a way that
/// matters more than losing the journal, so a poisoned lock is used as is.
pub(crate) fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_grow_the_last_segment_or_start_a_new_one() {
        let mut state = State::default();
        state.record_write(1, 100, 3);
        state.record_write(1, 150, 5);
        state.record_write(6, 40, 6);
        assert_eq!(
            Vec::from(state.segments.clone()),
            [
                SegmentMeta {
                    first_seq: 1,
                    last_seq: 5,
                    bytes: 150
                },
                SegmentMeta {
                    first_seq: 6,
                    last_seq: 6,
                    bytes: 40
                },
            ]
        );
        assert_eq!((state.bytes, state.last_seq), (190, 6));
    }

    #[test]
    fn only_fully_settled_older_segments_are_deletable() {
        let mut state = State::default();
        state.record_write(1, 100, 5);
        state.record_write(6, 100, 10);
        state.record_write(11, 100, 12);
        let firsts = |segments: Vec<SegmentMeta>| -> Vec<u64> {
            segments.into_iter().map(|s| s.first_seq).collect()
        };
        assert!(state.deletable(4).is_empty());
        assert_eq!(firsts(state.deletable(5)), [1]);
        assert_eq!(firsts(state.deletable(11)), [1, 6]);
        // The writer's segment stays even when everything in it is settled.
        assert_eq!(firsts(state.deletable(12)), [1, 6]);
        state.remove_segment(1);
        assert_eq!((state.segments.len(), state.bytes), (2, 200));
    }

    #[test]
    fn marks_are_sparse_point_at_write_starts_and_leave_with_their_segment() {
        let mut state = State::default();
        // One record per write: seq n starts where the segment held n - 1 records of 10 bytes.
        for seq in 1..=600u64 {
            state.record_write(1, seq * 10, seq);
        }
        // A new segment needs no mark of its own: reading it starts at its start.
        state.record_write(601, 10, 601);
        assert_eq!(
            state.marks.keys().copied().collect::<Vec<u64>>(),
            [1, 257, 513]
        );
        assert_eq!(state.start_for(1, 300), (257, 2560));
        assert_eq!(state.start_for(1, 256), (1, 0));
        assert_eq!(state.start_for(601, 601), (601, 0));
        state.remove_segment(1);
        assert!(state.marks.is_empty());
    }
}
