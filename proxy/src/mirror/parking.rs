//! Keys whose earlier mirror copies await replay: later copies must wait behind them, and
//! requests to them wait too once their copies' target is the authoritative side. Whether a
//! parked key's copies are still kept is asked of the control store in one place,
//! [`KeyParking::check`], by the workers and the cutover hold alike.
//!
//! With the fleet's shared journal a key is also parked by any instance's worker: each key
//! parked through the journal carries the revision of its marker there (`feed.rs` follows the
//! fleet's markers and releases), so that a release seen for an older marker does not un-park
//! a key parked again since, and the instance that finds the store clear releases the marker
//! it knows.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tandem_control::{ControlError, Side};

/// How long the control store may take to say whether a parked key's copies are still kept.
const STORE_ANSWER: Duration = Duration::from_secs(2);

/// What [`KeyParking::check`] found of a key.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ParkedKey {
    /// It was not parked.
    Free,
    /// It was parked, and the store keeps none of its copies any more: released now.
    Released,
    /// Copies of it are kept: still kept, or one was kept again while the store was asked.
    Kept,
    /// The store did not say (an error, or no answer within [`STORE_ANSWER`]); the key stays
    /// parked.
    Unknown(String),
}

/// The (side, ordering key) pairs with persisted copies; a cache of the control store.
///
/// Each pair carries a generation, bumped by every [`KeyParking::park`], so that a worker
/// that found the store clear releases the key only if nobody parked it again meanwhile; and
/// the revision of the shared journal's newest marker of it (0: none known).
#[derive(Debug, Default)]
pub struct KeyParking {
    parked: Mutex<HashMap<(Side, String), Parked>>,
}

/// A parked key's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Parked {
    generation: u64,
    revision: u64,
}

impl KeyParking {
    /// Parking for the given pairs.
    pub fn new(parked: impl IntoIterator<Item = (Side, String)>) -> KeyParking {
        KeyParking {
            parked: Mutex::new(
                parked
                    .into_iter()
                    .map(|pair| (pair, Parked::default()))
                    .collect(),
            ),
        }
    }

    /// Marks a key as having a persisted copy, with the revision of its marker in the shared
    /// journal (0: none, a local journal); a marker known already changes nothing.
    pub(super) fn park_at(&self, side: Side, key: &str, revision: u64) {
        let mut map = self.map();
        let parked = map.entry((side, key.to_owned())).or_default();
        if revision == 0 || revision > parked.revision {
            parked.generation += 1;
            parked.revision = parked.revision.max(revision);
        }
    }

    /// Forgets a key the fleet released at `released` (a release of the marker below it),
    /// unless a newer marker of it is known, or it was parked here without one (then the
    /// store says when it is free).
    pub(super) fn unparked_at(&self, side: Side, key: &str, released: u64) {
        let mut map = self.map();
        let pair = (side, key.to_owned());
        if map
            .get(&pair)
            .is_some_and(|parked| parked.revision != 0 && parked.revision < released)
        {
            map.remove(&pair);
        }
    }

    /// The key's generation when it is parked.
    pub fn generation(&self, side: Side, key: &str) -> Option<u64> {
        self.map()
            .get(&(side, key.to_owned()))
            .map(|parked| parked.generation)
    }

    /// The revision of the key's newest marker in the shared journal, when it is parked with
    /// one.
    pub(super) fn revision(&self, side: Side, key: &str) -> Option<u64> {
        self.map()
            .get(&(side, key.to_owned()))
            .map(|parked| parked.revision)
            .filter(|revision| *revision != 0)
    }

    /// How many keys are parked.
    pub(super) fn len(&self) -> usize {
        self.map().len()
    }

    /// Forgets a key whose persisted copies have all been replayed, unless it was parked
    /// again since `generation` was read; returns whether it was released.
    pub fn release(&self, side: Side, key: &str, generation: u64) -> bool {
        let mut map = self.map();
        let pair = (side, key.to_owned());
        if map.get(&pair).map(|parked| parked.generation) == Some(generation) {
            map.remove(&pair);
            true
        } else {
            false
        }
    }

    /// Whether `key` may go to `side`: free unless parked; a parked key is released when
    /// `still_kept` (the control store's answer, within [`STORE_ANSWER`]) says none of its
    /// copies is kept any more and nobody parked it again meanwhile (a newer copy kept while
    /// the store answered keeps it parked: [`ParkedKey::Kept`]).
    pub(super) async fn check<F>(
        &self,
        side: Side,
        key: &str,
        still_kept: impl FnOnce() -> F,
    ) -> ParkedKey
    where
        F: Future<Output = Result<bool, ControlError>>,
    {
        let Some(generation) = self.generation(side, key) else {
            return ParkedKey::Free;
        };
        match tokio::time::timeout(STORE_ANSWER, still_kept()).await {
            Ok(Ok(false)) if self.release(side, key, generation) => ParkedKey::Released,
            Ok(Ok(_)) => ParkedKey::Kept,
            Ok(Err(err)) => ParkedKey::Unknown(err.to_string()),
            Err(_) => ParkedKey::Unknown(format!(
                "the control store did not answer within {}s",
                STORE_ANSWER.as_secs()
            )),
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<(Side, String), Parked>> {
        self.parked.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_parked_again_is_not_released_by_a_stale_check() {
        let parking = KeyParking::default();
        parking.park_at(Side::New, "/orders/1", 0);
        let seen = parking.generation(Side::New, "/orders/1").unwrap();
        parking.park_at(Side::New, "/orders/1", 0);
        assert!(!parking.release(Side::New, "/orders/1", seen));
        let now = parking.generation(Side::New, "/orders/1").unwrap();
        assert!(parking.release(Side::New, "/orders/1", now));
        assert_eq!(parking.generation(Side::New, "/orders/1"), None);
    }

    #[test]
    fn a_release_of_an_older_marker_leaves_a_key_parked_again() {
        let parking = KeyParking::default();
        parking.park_at(Side::New, "/orders/1", 5);
        parking.park_at(Side::New, "/orders/1", 9);
        // The release of marker 5 (at 7), read after marker 9 was known: still parked.
        parking.unparked_at(Side::New, "/orders/1", 7);
        assert_eq!(parking.revision(Side::New, "/orders/1"), Some(9));
        parking.unparked_at(Side::New, "/orders/1", 10);
        assert_eq!(parking.generation(Side::New, "/orders/1"), None);
        // Parked from the store at start, with no marker: only the store frees it.
        parking.park_at(Side::New, "/orders/2", 0);
        parking.unparked_at(Side::New, "/orders/2", 11);
        assert!(parking.generation(Side::New, "/orders/2").is_some());
    }

    #[test]
    fn a_marker_seen_twice_does_not_bump_the_generation() {
        let parking = KeyParking::default();
        parking.park_at(Side::Old, "/orders/3", 4);
        let seen = parking.generation(Side::Old, "/orders/3").unwrap();
        parking.park_at(Side::Old, "/orders/3", 4);
        assert!(parking.release(Side::Old, "/orders/3", seen));
    }

    #[tokio::test]
    async fn a_key_parked_again_while_the_store_answers_stays_kept() {
        let parking = KeyParking::default();
        parking.park_at(Side::New, "/orders/1", 0);
        // The store finds nothing kept, but a newer copy is kept (and the key parked) before
        // its answer arrives.
        let found = parking
            .check(Side::New, "/orders/1", || async {
                parking.park_at(Side::New, "/orders/1", 0);
                Ok(false)
            })
            .await;
        assert_eq!(found, ParkedKey::Kept);
        assert!(parking.generation(Side::New, "/orders/1").is_some());

        let found = parking
            .check(Side::New, "/orders/1", || async { Ok(false) })
            .await;
        assert_eq!(found, ParkedKey::Released);
        let found = parking
            .check(Side::New, "/orders/1", || async { Ok(true) })
            .await;
        assert_eq!(found, ParkedKey::Free, "released: the store is not asked");
    }

    #[tokio::test]
    async fn a_parked_key_the_store_cannot_tell_stays_parked() {
        let parking = KeyParking::default();
        parking.park_at(Side::Old, "/orders/2", 0);
        let found = parking
            .check(Side::Old, "/orders/2", || async {
                Err(ControlError::InvalidInput("unreachable".to_owned()))
            })
            .await;
        assert!(matches!(found, ParkedKey::Unknown(_)), "{found:?}");
        let found = parking
            .check(Side::Old, "/orders/2", || async { Ok(true) })
            .await;
        assert_eq!(found, ParkedKey::Kept);
    }
}
