//! Keys whose earlier mirror copies await replay: later copies must wait behind them.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use tandem_control::Side;

/// The (side, ordering key) pairs with persisted copies; a cache of the control store.
#[derive(Debug, Default)]
pub struct KeyParking {
    parked: Mutex<HashSet<(Side, String)>>,
}

impl KeyParking {
    /// Parking for the given pairs.
    pub fn new(parked: impl IntoIterator<Item = (Side, String)>) -> KeyParking {
        KeyParking {
            parked: Mutex::new(parked.into_iter().collect()),
        }
    }

    /// Marks a key as having a persisted copy.
    pub fn park(&self, side: Side, key: &str) {
        self.set().insert((side, key.to_owned()));
    }

    /// Forgets a key whose persisted copies have all been replayed.
    pub fn release(&self, side: Side, key: &str) {
        self.set().remove(&(side, key.to_owned()));
    }

    /// Whether a key may have persisted copies.
    pub fn is_parked(&self, side: Side, key: &str) -> bool {
        self.set().contains(&(side, key.to_owned()))
    }

    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<(Side, String)>> {
        self.parked.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
