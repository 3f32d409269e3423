//! Keys whose earlier mirror copies await replay: later copies must wait behind them, and
//! requests to them wait too once their copies' target is the authoritative side. Whether a
//! parked key's copies are still kept is asked of the control store in one place,
//! [`KeyParking::check`], by the workers and the cutover hold alike.

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
/// that found the store clear releases the key only if nobody parked it again meanwhile.
#[derive(Debug, Default)]
pub struct KeyParking {
    parked: Mutex<HashMap<(Side, String), u64>>,
}

impl KeyParking {
    /// Parking for the given pairs.
    pub fn new(parked: impl IntoIterator<Item = (Side, String)>) -> KeyParking {
        KeyParking {
            parked: Mutex::new(parked.into_iter().map(|pair| (pair, 0)).collect()),
        }
    }

    /// Marks a key as having a persisted copy.
    pub fn park(&self, side: Side, key: &str) {
        *self.map().entry((side, key.to_owned())).or_insert(0) += 1;
    }

    /// The key's generation when it is parked.
    pub fn generation(&self, side: Side, key: &str) -> Option<u64> {
        self.map().get(&(side, key.to_owned())).copied()
    }

    /// Forgets a key whose persisted copies have all been replayed, unless it was parked
    /// again since `generation` was read; returns whether it was released.
    pub fn release(&self, side: Side, key: &str, generation: u64) -> bool {
        let mut map = self.map();
        let pair = (side, key.to_owned());
        if map.get(&pair) == Some(&generation) {
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

    fn map(&self) -> MutexGuard<'_, HashMap<(Side, String), u64>> {
        self.parked.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_parked_again_is_not_released_by_a_stale_check() {
        let parking = KeyParking::default();
        parking.park(Side::New, "/orders/1");
        let seen = parking.generation(Side::New, "/orders/1").unwrap();
        parking.park(Side::New, "/orders/1");
        assert!(!parking.release(Side::New, "/orders/1", seen));
        let now = parking.generation(Side::New, "/orders/1").unwrap();
        assert!(parking.release(Side::New, "/orders/1", now));
        assert_eq!(parking.generation(Side::New, "/orders/1"), None);
    }

    #[tokio::test]
    async fn a_key_parked_again_while_the_store_answers_stays_kept() {
        let parking = KeyParking::default();
        parking.park(Side::New, "/orders/1");
        // The store finds nothing kept, but a newer copy is kept (and the key parked) before
        // its answer arrives.
        let found = parking
            .check(Side::New, "/orders/1", || async {
                parking.park(Side::New, "/orders/1");
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
        parking.park(Side::Old, "/orders/2");
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
