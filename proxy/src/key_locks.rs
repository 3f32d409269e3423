//! Per-key locks that serialise writes to one resource while writes to others run in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// A lock per ordering key, created on demand and dropped when nobody holds or waits for it.
#[derive(Debug, Default)]
pub struct KeyLocks {
    locks: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// Holds one key's lock; releasing it lets the next write to that key proceed.
#[derive(Debug)]
pub struct KeyGuard<'a> {
    guard: Option<OwnedMutexGuard<()>>,
    _entry: KeyEntry<'a>,
}

/// A reference to one key's lock; the last one dropped removes the key from the map, whether
/// its holder finished or gave up waiting.
#[derive(Debug)]
struct KeyEntry<'a> {
    locks: &'a KeyLocks,
    key: String,
    lock: Option<Arc<AsyncMutex<()>>>,
}

impl KeyLocks {
    /// Waits for the lock of `key`.
    pub async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(locks.entry(key.to_owned()).or_default())
        };
        let entry = KeyEntry {
            locks: self,
            key: key.to_owned(),
            lock: Some(Arc::clone(&lock)),
        };
        let guard = lock.lock_owned().await;
        KeyGuard {
            guard: Some(guard),
            _entry: entry,
        }
    }

    /// Keys with a live lock (held or awaited).
    #[must_use]
    pub fn len(&self) -> usize {
        self.locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no key is locked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        // Unlock before the entry checks whether anyone still needs the key.
        drop(self.guard.take());
    }
}

impl Drop for KeyEntry<'_> {
    fn drop(&mut self) {
        let mut locks = self
            .locks
            .locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        drop(self.lock.take());
        // Only the map's own reference left: nobody holds or awaits this key.
        if locks
            .get(&self.key)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            locks.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_key_is_serialised_and_forgotten_after_use() {
        let locks = Arc::new(KeyLocks::default());
        let first = locks.lock("/orders/1").await;
        let waiter = {
            let locks = Arc::clone(&locks);
            tokio::spawn(async move {
                let _second = locks.lock("/orders/1").await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "second lock must wait for the first");
        let other = locks.lock("/orders/2").await;
        drop(other);
        drop(first);
        waiter.await.unwrap();
        assert!(locks.is_empty());
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_nothing_behind() {
        let locks = KeyLocks::default();
        let held = locks.lock("/orders/1").await;
        let gave_up =
            tokio::time::timeout(Duration::from_millis(10), locks.lock("/orders/1")).await;
        assert!(gave_up.is_err());
        drop(held);
        assert!(locks.is_empty());
    }
}
