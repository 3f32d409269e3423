//! Waiting for what a running stack should show soon, bounded in time.

use std::future::Future;
use std::time::Duration;

use tokio::time::{sleep, Instant};

/// How long something that should happen promptly may take.
const PATIENCE: Duration = Duration::from_secs(30);

/// Waits until the comparator at `api` has finished a sweep that found the sides identical
/// (sweeps run one after another, so every later one sees at least as much).
pub async fn clean_sweep(api: &str) {
    eventually("a clean sweep", || async {
        let runs: serde_json::Value = reqwest::get(format!("{api}/api/runs"))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (runs[0]["status"] == "identical").then_some(())
    })
    .await;
}

/// Polls `probe` until it finds something, and returns it.
///
/// # Panics
/// When it finds nothing within [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "{what} did not happen in time");
        sleep(Duration::from_millis(100)).await;
    }
}
