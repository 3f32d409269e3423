//! The copies this process's journal holds undelivered, by key: what the journal summary
//! written to the control store samples (`summary.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tandem_control::{Side, Timestamp};

/// How many journal records a sample walks at most, oldest first (a key with a long backlog
/// cannot make the walk long: the summary is taken under the lock appends use).
const SAMPLE_WALK: usize = 10_000;

/// One copy waiting in the journal.
#[derive(Debug, Clone)]
struct Waiting {
    target: Side,
    ordering_key: String,
    accepted_at: Timestamp,
}

/// A key's waiting copies, as sampled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeySample {
    pub(crate) target: Side,
    pub(crate) ordering_key: String,
    pub(crate) copies: u64,
    pub(crate) oldest_seq: u64,
    pub(crate) oldest_accepted_at: Timestamp,
}

/// What the journal holds undelivered, as sampled.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct PendingSample {
    /// Copies waiting.
    pub(crate) copies: u64,
    /// When the oldest one was accepted.
    pub(crate) oldest_accepted_at: Option<Timestamp>,
    /// The keys whose first waiting copy is oldest, oldest first.
    pub(crate) keys: Vec<KeySample>,
}

#[derive(Debug, Default)]
struct Copies {
    /// Every waiting copy by journal seq.
    by_seq: BTreeMap<u64, Waiting>,
    /// Each key's waiting seqs.
    by_key: HashMap<(Side, String), BTreeSet<u64>>,
}

/// The journal's undelivered copies: added when appended (or found at start), removed when
/// settled. Only for a local journal: a shared journal's copies are delivered by whichever
/// instance holds their partition.
#[derive(Debug, Default)]
pub(crate) struct PendingCopies {
    copies: Mutex<Copies>,
}

impl PendingCopies {
    /// Copy `seq` of `ordering_key` (to `target`, accepted at `accepted_at`) is in the
    /// journal.
    pub(crate) fn add(&self, seq: u64, target: Side, ordering_key: &str, accepted_at: Timestamp) {
        let mut copies = self.lock();
        let waiting = Waiting {
            target,
            ordering_key: ordering_key.to_owned(),
            accepted_at,
        };
        if copies.by_seq.insert(seq, waiting).is_none() {
            copies
                .by_key
                .entry((target, ordering_key.to_owned()))
                .or_default()
                .insert(seq);
        }
    }

    /// Copy `seq` is settled (delivered, or kept in the store).
    pub(crate) fn remove(&self, seq: u64) {
        let mut copies = self.lock();
        let Some(waiting) = copies.by_seq.remove(&seq) else {
            return;
        };
        let pair = (waiting.target, waiting.ordering_key);
        if let Some(seqs) = copies.by_key.get_mut(&pair) {
            seqs.remove(&seq);
            if seqs.is_empty() {
                copies.by_key.remove(&pair);
            }
        }
    }

    /// The count, the oldest acceptance, and up to `keys` keys, those waiting longest first.
    pub(crate) fn sample(&self, keys: usize) -> PendingSample {
        let copies = self.lock();
        let mut seen = HashSet::new();
        let mut sampled = Vec::new();
        let mut oldest: Option<Timestamp> = None;
        for (seq, waiting) in copies.by_seq.iter().take(SAMPLE_WALK) {
            // Seq order is nearly acceptance order (a write is stamped before its copy is
            // appended): the oldest acceptance is among the first records.
            oldest = Some(oldest.map_or(waiting.accepted_at, |at| at.min(waiting.accepted_at)));
            if sampled.len() >= keys {
                continue;
            }
            let pair = (waiting.target, waiting.ordering_key.clone());
            if !seen.insert(pair.clone()) {
                continue;
            }
            let count = copies.by_key.get(&pair).map_or(1, BTreeSet::len);
            sampled.push(KeySample {
                target: waiting.target,
                ordering_key: waiting.ordering_key.clone(),
                copies: u64::try_from(count).unwrap_or(u64::MAX),
                oldest_seq: *seq,
                oldest_accepted_at: waiting.accepted_at,
            });
        }
        PendingSample {
            copies: u64::try_from(copies.by_seq.len()).unwrap_or(u64::MAX),
            oldest_accepted_at: oldest,
            keys: sampled,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Copies> {
        self.copies.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_lists_each_key_once_with_its_oldest_copy_and_its_count() {
        let pending = PendingCopies::default();
        pending.add(1, Side::New, "/a", Timestamp(10));
        pending.add(2, Side::New, "/b", Timestamp(11));
        pending.add(3, Side::New, "/a", Timestamp(12));
        pending.add(4, Side::New, "/c", Timestamp(13));
        pending.add(3, Side::New, "/a", Timestamp(12));
        let sample = pending.sample(2);
        assert_eq!(sample.copies, 4);
        assert_eq!(sample.oldest_accepted_at, Some(Timestamp(10)));
        let keys: Vec<(&str, u64, u64)> = sample
            .keys
            .iter()
            .map(|key| (key.ordering_key.as_str(), key.copies, key.oldest_seq))
            .collect();
        assert_eq!(keys, [("/a", 2, 1), ("/b", 1, 2)]);

        pending.remove(1);
        pending.remove(1);
        let sample = pending.sample(5);
        assert_eq!(sample.copies, 3);
        assert_eq!(sample.oldest_accepted_at, Some(Timestamp(11)));
        let keys: Vec<(&str, u64, u64)> = sample
            .keys
            .iter()
            .map(|key| (key.ordering_key.as_str(), key.copies, key.oldest_seq))
            .collect();
        assert_eq!(keys, [("/b", 1, 2), ("/a", 1, 3), ("/c", 1, 4)]);

        for seq in [2, 3, 4] {
            pending.remove(seq);
        }
        assert_eq!(pending.sample(5), PendingSample::default());
    }
}
