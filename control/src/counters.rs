//! The counts a proxy (HTTP or PostgreSQL) keeps between flushes to the control store, and the
//! task that flushes them, so that rate alerts and rollback policies judge every proxy alike.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::instance::instance_name;
use crate::stage::Side;
use crate::store::{ControlStore, ProxyCounts};

/// Counts since the last flush; each proxy process keeps one, as a `static`.
#[derive(Debug)]
pub struct ProxyCounters {
    compared: AtomicI64,
    mismatches: AtomicI64,
    mirrored: AtomicI64,
    mirror_failures: AtomicI64,
    new_requests: AtomicI64,
    new_errors: AtomicI64,
    requests: AtomicI64,
    old_requests: AtomicI64,
    old_latency_ms: AtomicI64,
    new_latency_ms: AtomicI64,
    /// The current depth, not reset by a flush.
    queue_depth: AtomicI64,
}

impl Default for ProxyCounters {
    fn default() -> Self {
        ProxyCounters::new()
    }
}

impl ProxyCounters {
    /// All zero.
    #[must_use]
    pub const fn new() -> ProxyCounters {
        ProxyCounters {
            compared: AtomicI64::new(0),
            mismatches: AtomicI64::new(0),
            mirrored: AtomicI64::new(0),
            mirror_failures: AtomicI64::new(0),
            new_requests: AtomicI64::new(0),
            new_errors: AtomicI64::new(0),
            requests: AtomicI64::new(0),
            old_requests: AtomicI64::new(0),
            old_latency_ms: AtomicI64::new(0),
            new_latency_ms: AtomicI64::new(0),
            queue_depth: AtomicI64::new(0),
        }
    }

    /// A client request (or PostgreSQL transaction) was served.
    pub fn served(&self) {
        bump(&self.requests);
    }

    /// Two answers were compared (whether or not they differed).
    pub fn compared(&self) {
        bump(&self.compared);
    }

    /// Two compared answers differed.
    pub fn mismatched(&self) {
        bump(&self.mismatches);
    }

    /// A write was sent (or queued) for the other side.
    pub fn mirrored(&self) {
        bump(&self.mirrored);
    }

    /// A mirror copy was kept for replay instead of delivered.
    pub fn mirror_failed(&self) {
        bump(&self.mirror_failures);
    }

    /// A side answered a request after `elapsed`; `failed` when the answer was an error of that
    /// side (a 5xx, a timeout, no connection).
    pub fn side_answered(&self, side: Side, elapsed: Duration, failed: bool) {
        let millis = i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX);
        match side {
            Side::Old => {
                bump(&self.old_requests);
                self.old_latency_ms.fetch_add(millis, Ordering::Relaxed);
            }
            Side::New => {
                bump(&self.new_requests);
                self.new_latency_ms.fetch_add(millis, Ordering::Relaxed);
                if failed {
                    bump(&self.new_errors);
                }
            }
        }
    }

    /// How many mirror copies wait in memory now.
    pub fn set_queue_depth(&self, depth: usize) {
        self.queue_depth
            .store(i64::try_from(depth).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// The counts since the previous call.
    pub fn take(&self) -> ProxyCounts {
        let take = |count: &AtomicI64| count.swap(0, Ordering::Relaxed);
        ProxyCounts {
            compared: take(&self.compared),
            mismatches: take(&self.mismatches),
            mirrored: take(&self.mirrored),
            mirror_failures: take(&self.mirror_failures),
            new_requests: take(&self.new_requests),
            new_errors: take(&self.new_errors),
            requests: take(&self.requests),
            old_requests: take(&self.old_requests),
            old_latency_ms: take(&self.old_latency_ms),
            new_latency_ms: take(&self.new_latency_ms),
            queue_depth: self.queue_depth.load(Ordering::Relaxed),
        }
    }
}

fn bump(count: &AtomicI64) {
    count.fetch_add(1, Ordering::Relaxed);
}

/// Flushes `counters` to the store every `interval` (and once more at `shutdown`), under this
/// process's instance name.
pub async fn flush_proxy_counts(
    store: ControlStore,
    counters: &'static ProxyCounters,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let instance = instance_name();
    loop {
        let stopping = tokio::select! {
            () = shutdown.cancelled() => true,
            () = tokio::time::sleep(interval) => false,
        };
        let counts = counters.take();
        if !counts.is_empty() {
            if let Err(err) = store.record_proxy_counts(&instance, &counts).await {
                tracing::warn!(error = %err, "cannot flush proxy counts to the control store");
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_taken_once_and_the_depth_stays() {
        let counters = ProxyCounters::new();
        counters.served();
        counters.compared();
        counters.compared();
        counters.mismatched();
        counters.mirrored();
        counters.mirror_failed();
        counters.side_answered(Side::New, Duration::from_millis(7), true);
        counters.side_answered(Side::Old, Duration::from_millis(3), false);
        counters.set_queue_depth(4);
        let counts = counters.take();
        assert_eq!(
            (
                counts.requests,
                counts.compared,
                counts.mismatches,
                counts.mirrored
            ),
            (1, 2, 1, 1)
        );
        assert_eq!(
            (
                counts.mirror_failures,
                counts.new_requests,
                counts.new_errors,
                counts.new_latency_ms
            ),
            (1, 1, 1, 7)
        );
        assert_eq!((counts.old_requests, counts.old_latency_ms), (1, 3));
        let again = counters.take();
        assert_eq!(again.queue_depth, 4);
        assert!(ProxyCounts {
            queue_depth: 0,
            ..again
        }
        .is_empty());
    }
}
