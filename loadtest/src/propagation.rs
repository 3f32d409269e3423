//! `tandem-loadtest propagation`: how long a stage change takes to reach every proxy: the
//! stage is changed in the control store (as `tandem stage set` does) and each proxy's admin
//! endpoint is polled until it routes by the new stage.

use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use tandem_control::{ControlStore, Stage};
use tokio::time::Instant;

/// `tandem-loadtest propagation` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct PropagationArgs {
    /// The control store the proxies share.
    #[arg(long)]
    pub control_db: String,
    /// A proxy's admin URL (give it once per proxy).
    #[arg(long = "admin", required = true)]
    pub admins: Vec<String>,
    /// Stage changes to time.
    #[arg(long, default_value_t = 50)]
    pub changes: usize,
}

/// Propagation times, in milliseconds: from the change to the last proxy routing by it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Propagation {
    /// Changes timed.
    pub changes: usize,
    /// Proxies watched.
    pub proxies: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// The slowest.
    pub max_ms: f64,
}

/// Longest wait for one change to reach every proxy.
const PATIENCE: Duration = Duration::from_secs(10);

/// Times `args.changes` stage changes, alternating between dual-write and shadow.
///
/// # Errors
/// When the store or a proxy cannot be reached, or a change does not arrive in time.
pub async fn measure(args: &PropagationArgs) -> anyhow::Result<Propagation> {
    let store = ControlStore::open(&args.control_db).await?;
    let client = reqwest::Client::new();
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for change in 0..args.changes {
        let stage = if change % 2 == 0 {
            Stage::Shadow
        } else {
            Stage::DualWrite
        };
        let started = Instant::now();
        store
            .set_stage(stage, "tandem-loadtest", "propagation benchmark")
            .await?;
        for admin in &args.admins {
            let url = format!("{}/admin/stage", admin.trim_end_matches('/'));
            loop {
                let view: serde_json::Value = client
                    .get(&url)
                    .send()
                    .await
                    .with_context(|| format!("cannot reach {url}"))?
                    .json()
                    .await?;
                if view["applied"]["stage"] == stage.as_str() {
                    break;
                }
                anyhow::ensure!(started.elapsed() < PATIENCE, "{url} never applied {stage}");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        histogram.saturating_record(micros.max(1));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.close().await;
    let millis = |micros: u64| micros as f64 / 1000.0;
    Ok(Propagation {
        changes: args.changes,
        proxies: args.admins.len(),
        p50_ms: millis(histogram.value_at_quantile(0.5)),
        p99_ms: millis(histogram.value_at_quantile(0.99)),
        max_ms: millis(histogram.max()),
    })
}
