//! The copies this process's journal holds undelivered, by key: what the journal summary
//! written to the control store samples (`summary.rs`), and what the cutover hold waits for
//! (`cutover.rs`).

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tandem_control::{Side, Timestamp};
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

/// A key's waiting copies as the tracker keeps them: journal seq → acceptance (Unix ms).
type KeyCopies = BTreeMap<u64, i64>;

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

/// The tracker's state: one entry per waiting copy in its key's map (16 bytes and the map's
/// overhead, the key's text shared), one index entry per key.
#[derive(Debug, Default)]
struct Copies {
    /// Each key's waiting copies.
    by_key: HashMap<(Side, Arc<str>), KeyCopies>,
    /// Each key by the seq of its oldest waiting copy: the keys waiting longest first.
    by_oldest: BTreeMap<u64, (Side, Arc<str>)>,
    /// Copies waiting, over every key.
    count: u64,
    /// Keys with copies waiting, toward old and toward new.
    keys_toward: [u64; 2],
    /// The keys requests wait on (the cutover hold), each woken when its last copy settles.
    watchers: HashMap<(Side, Arc<str>), Arc<Notify>>,
}

/// The index of `side` in per-side arrays.
fn slot(side: Side) -> usize {
    match side {
        Side::Old => 0,
        Side::New => 1,
    }
}

/// The journal's undelivered copies: added when appended (or found at start), removed when
/// settled. Only for a local journal: a shared journal's copies are delivered by whichever
/// instance holds their partition.
#[derive(Debug, Default)]
pub(crate) struct PendingCopies {
    copies: Mutex<Copies>,
    /// Copies waiting toward old and toward new, readable without the lock: a request to a
    /// side nothing is waiting for never takes it.
    toward: [AtomicU64; 2],
}

/// Resolves when the key it was taken for has no copy waiting any more.
pub(crate) type Settled = Pin<Box<OwnedNotified>>;

impl PendingCopies {
    /// Copy `seq` of `ordering_key` (to `target`, accepted at `accepted_at`) is in the
    /// journal.
    pub(crate) fn add(&self, seq: u64, target: Side, ordering_key: &str, accepted_at: Timestamp) {
        let mut guard = self.lock();
        let copies = &mut *guard;
        let pair = (target, Arc::<str>::from(ordering_key));
        // The key's text is shared with its entry when it has one.
        let pair = match copies.by_key.get_key_value(&pair) {
            Some((existing, _)) => existing.clone(),
            None => pair,
        };
        let seqs = copies.by_key.entry(pair.clone()).or_default();
        let oldest_before = seqs.keys().next().copied();
        if seqs.insert(seq, accepted_at.millis()).is_some() {
            return;
        }
        copies.count += 1;
        self.toward[slot(target)].fetch_add(1, Ordering::SeqCst);
        if oldest_before.is_none() {
            copies.keys_toward[slot(target)] += 1;
        }
        if oldest_before.is_none_or(|oldest| seq < oldest) {
            if let Some(oldest) = oldest_before {
                copies.by_oldest.remove(&oldest);
            }
            copies.by_oldest.insert(seq, pair);
        }
    }

    /// Copy `seq` of `ordering_key` (to `target`) is settled (delivered, or kept in the store).
    pub(crate) fn remove(&self, seq: u64, target: Side, ordering_key: &str) {
        let mut guard = self.lock();
        let copies = &mut *guard;
        let pair = (target, Arc::<str>::from(ordering_key));
        let Some(seqs) = copies.by_key.get_mut(&pair) else {
            return;
        };
        let oldest_before = seqs.keys().next().copied();
        if seqs.remove(&seq).is_none() {
            return;
        }
        copies.count = copies.count.saturating_sub(1);
        self.toward[slot(target)].fetch_sub(1, Ordering::SeqCst);
        let next = seqs.keys().next().copied();
        if next.is_none() {
            copies.by_key.remove(&pair);
            let keys = &mut copies.keys_toward[slot(target)];
            *keys = keys.saturating_sub(1);
            if let Some(watcher) = copies.watchers.remove(&pair) {
                watcher.notify_waiters();
            }
        }
        if oldest_before == Some(seq) {
            if let Some(key) = copies.by_oldest.remove(&seq) {
                if let Some(next) = next {
                    copies.by_oldest.insert(next, key);
                }
            }
        }
    }

    /// `None` when no copy of `ordering_key` toward `target` waits (none toward `target` at
    /// all is answered without the lock); else what resolves once its last one is settled
    /// (registered under the lock, so no settlement is missed).
    pub(crate) fn watch(&self, target: Side, ordering_key: &str) -> Option<Settled> {
        if self.toward[slot(target)].load(Ordering::SeqCst) == 0 {
            return None;
        }
        let mut guard = self.lock();
        let copies = &mut *guard;
        let pair = (target, Arc::<str>::from(ordering_key));
        let (pair, _) = copies.by_key.get_key_value(&pair)?;
        let watcher = copies.watchers.entry(pair.clone()).or_default();
        let mut settled = Box::pin(Arc::clone(watcher).notified_owned());
        settled.as_mut().enable();
        Some(settled)
    }

    /// How many keys have copies waiting toward `target`.
    pub(crate) fn keys_toward(&self, target: Side) -> u64 {
        self.lock().keys_toward[slot(target)]
    }

    /// The count, the oldest acceptance, and up to `keys` keys, those waiting longest first.
    pub(crate) fn sample(&self, keys: usize) -> PendingSample {
        let copies = self.lock();
        let sampled: Vec<KeySample> = copies
            .by_oldest
            .iter()
            .take(keys)
            .filter_map(|(seq, (target, key))| {
                let seqs = copies.by_key.get(&(*target, Arc::clone(key)))?;
                let accepted = seqs.get(seq)?;
                Some(KeySample {
                    target: *target,
                    ordering_key: key.to_string(),
                    copies: u64::try_from(seqs.len()).unwrap_or(u64::MAX),
                    oldest_seq: *seq,
                    oldest_accepted_at: Timestamp(*accepted),
                })
            })
            .collect();
        PendingSample {
            copies: copies.count,
            // The lowest seq is the oldest acceptance: a write is stamped under its key's
            // lock before its copy is appended, so seqs follow acceptance but for writes to
            // other keys within the same instant.
            oldest_accepted_at: sampled.first().map(|key| key.oldest_accepted_at),
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

        pending.remove(1, Side::New, "/a");
        pending.remove(1, Side::New, "/a");
        let sample = pending.sample(5);
        assert_eq!(sample.copies, 3);
        assert_eq!(sample.oldest_accepted_at, Some(Timestamp(11)));
        let keys: Vec<(&str, u64, u64)> = sample
            .keys
            .iter()
            .map(|key| (key.ordering_key.as_str(), key.copies, key.oldest_seq))
            .collect();
        assert_eq!(keys, [("/b", 1, 2), ("/a", 1, 3), ("/c", 1, 4)]);

        for (seq, key) in [(2, "/b"), (3, "/a"), (4, "/c")] {
            pending.remove(seq, Side::New, key);
        }
        assert_eq!(pending.sample(5), PendingSample::default());
        let copies = pending.lock();
        assert!(copies.by_key.is_empty() && copies.by_oldest.is_empty());
    }

    #[test]
    fn a_key_is_watched_toward_its_side_until_its_last_copy_is_settled() {
        let pending = PendingCopies::default();
        assert!(pending.watch(Side::New, "/a").is_none());
        pending.add(1, Side::New, "/a", Timestamp(10));
        pending.add(2, Side::New, "/a", Timestamp(11));
        pending.add(3, Side::Old, "/b", Timestamp(12));
        assert!(
            pending.watch(Side::Old, "/a").is_none(),
            "toward the other side only"
        );
        assert!(pending.watch(Side::New, "/b").is_none());
        assert_eq!(
            (
                pending.keys_toward(Side::New),
                pending.keys_toward(Side::Old)
            ),
            (1, 1)
        );
        let mut settled = pending.watch(Side::New, "/a").expect("copies wait");
        pending.remove(3, Side::Old, "/b");
        pending.remove(1, Side::New, "/a");
        assert!(
            futures_util::FutureExt::now_or_never(&mut settled).is_none(),
            "copy 2 still waits"
        );
        pending.remove(2, Side::New, "/a");
        assert!(futures_util::FutureExt::now_or_never(&mut settled).is_some());
        assert!(pending.watch(Side::New, "/a").is_none());
        assert_eq!(pending.keys_toward(Side::New), 0);
        assert!(pending.lock().watchers.is_empty());
    }

    proptest::proptest! {
        /// Against a model (every waiting copy in a list): appends in seq order, settles in
        /// any order, each key sampled once at its oldest copy, the keys waiting longest first.
        #[test]
        fn the_sample_matches_a_model(ops in proptest::collection::vec((0u8..6, proptest::bool::ANY, 0usize..40), 1..200)) {
            let pending = PendingCopies::default();
            let mut model: Vec<(u64, String)> = Vec::new();
            let mut next_seq = 1;
            for (key, append, pick) in ops {
                if append || model.is_empty() {
                    let key = format!("/k/{key}");
                    pending.add(next_seq, Side::New, &key, Timestamp(i64::try_from(next_seq).unwrap()));
                    model.push((next_seq, key));
                    next_seq += 1;
                } else {
                    let (seq, key) = model.remove(pick % model.len());
                    pending.remove(seq, Side::New, &key);
                }
                let sample = pending.sample(3);
                let mut expected: Vec<(String, u64, u64)> = Vec::new();
                for (seq, key) in &model {
                    if !expected.iter().any(|(seen, _, _)| seen == key) {
                        let copies = model.iter().filter(|(_, other)| other == key).count() as u64;
                        expected.push((key.clone(), copies, *seq));
                    }
                }
                expected.truncate(3);
                let got: Vec<(String, u64, u64)> = sample
                    .keys
                    .iter()
                    .map(|k| (k.ordering_key.clone(), k.copies, k.oldest_seq))
                    .collect();
                proptest::prop_assert_eq!(got, expected);
                proptest::prop_assert_eq!(sample.copies, model.len() as u64);
                proptest::prop_assert_eq!(
                    sample.oldest_accepted_at,
                    model.first().map(|(seq, _)| Timestamp(i64::try_from(*seq).unwrap()))
                );
            }
        }
    }
}
