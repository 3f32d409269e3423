//! Keys whose earlier mirror copies await replay: later copies must wait behind them.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tandem_control::Side;

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
}
