//! The read throttle behind `--max-rows-per-sec`: rows read on both sides counted into one
//! budget, which every reader sharing it (a backfill's workers, over all its tables) keeps to.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// A budget of rows read per second since it began; clones share it.
#[derive(Debug, Clone)]
pub struct ReadThrottle(Arc<Budget>);

#[derive(Debug)]
struct Budget {
    /// Rows per second, `None` for no limit (rows are still counted).
    rate: Option<u64>,
    /// When the budget began.
    started: Instant,
    /// Rows counted so far, on both sides.
    read: AtomicU64,
}

impl ReadThrottle {
    /// A budget of `max_rows_per_sec` (none when `None` or 0), beginning now.
    #[must_use]
    pub fn new(max_rows_per_sec: Option<u64>) -> ReadThrottle {
        ReadThrottle(Arc::new(Budget {
            rate: max_rows_per_sec.filter(|rate| *rate > 0),
            started: Instant::now(),
            read: AtomicU64::new(0),
        }))
    }

    /// Counts `rows` just read, then waits until every row counted since the budget began
    /// keeps to the rate (at once when it does already, or without a limit).
    pub async fn read(&self, rows: usize) {
        let rows = rows as u64;
        let total = self.0.read.fetch_add(rows, Ordering::Relaxed) + rows;
        let Some(rate) = self.0.rate else {
            return;
        };
        #[allow(clippy::cast_precision_loss)]
        let due = Duration::from_secs_f64(total as f64 / rate as f64);
        tokio::time::sleep_until(self.0.started + due).await;
    }

    /// Rows counted so far, on both sides.
    #[must_use]
    pub fn rows_read(&self) -> u64 {
        self.0.read.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::ReadThrottle;

    /// On tokio's paused clock (it moves only while every task sleeps), so no wall-clock time
    /// is measured: the rows read never run ahead of the rate, whichever reader read them.
    #[tokio::test(start_paused = true)]
    async fn readers_sharing_a_budget_keep_to_its_rate_together() {
        let throttle = ReadThrottle::new(Some(1_000));
        let began = Instant::now();
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let throttle = throttle.clone();
                tokio::spawn(async move {
                    for _ in 0..4 {
                        throttle.read(250).await;
                        let allowed = began.elapsed().as_secs_f64() * 1_000.0;
                        assert!(throttle.rows_read() as f64 <= allowed + 250.0 * 3.0);
                    }
                })
            })
            .collect();
        for reader in readers {
            reader.await.unwrap();
        }
        assert_eq!(throttle.rows_read(), 3_000);
        assert_eq!(
            began.elapsed(),
            Duration::from_secs(3),
            "3,000 rows at 1,000/s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_rate_it_counts_and_never_waits() {
        let throttle = ReadThrottle::new(None);
        let began = Instant::now();
        throttle.read(1_000_000).await;
        assert_eq!(throttle.rows_read(), 1_000_000);
        assert_eq!(began.elapsed(), Duration::ZERO);
    }
}
