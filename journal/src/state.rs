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
    /// Acknowledged (or recovered) records not yet settled: seq → append time, Unix micros.
    pub(crate) unsettled: BTreeMap<u64, i64>,
    /// The highest seq acknowledged by this journal or found at recovery.
    pub(crate) last_seq: u64,
}

impl State {
    /// Marks `seq` settled; unknown or already settled seqs are ignored.
    pub(crate) fn settle(&mut self, seq: u64) {
        self.unsettled.remove(&seq);
    }

    /// Records that the writer wrote records up to `last_seq` into the segment named
    /// `first_seq`, which is now `len` bytes long.
    pub(crate) fn record_write(&mut self, first_seq: u64, len: u64, last_seq: u64) {
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
            }
        }
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
}
