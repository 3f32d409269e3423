//! `--verify`: once the mirror queue has drained, the comparator compares the two databases.

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tandem_comparator::{compare, Access, CompareOptions, Database, TablePair};
use tandem_control::Side;
use tokio::time::Instant;

/// Longest wait for a proxy's mirror queue to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// What the comparison found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// Whether the databases hold the same orders.
    pub identical: bool,
    /// Rows read on the old side.
    pub rows_old: u64,
    /// Rows the new side lacks.
    pub missing_in_new: u64,
    /// Rows only the new side has.
    pub extra_in_new: u64,
    /// Rows that differ.
    pub changed: u64,
}

/// Waits until the proxy whose admin listener is `admin` reports an empty mirror queue.
///
/// # Errors
/// When the proxy does not answer, or its queue does not drain within two minutes.
pub async fn drained(admin: &str) -> anyhow::Result<()> {
    let url = format!("{}/metrics", admin.trim_end_matches('/'));
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let metrics = reqwest::get(&url)
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("cannot read {url}"))?
            .text()
            .await?;
        let depth = metrics
            .lines()
            .find_map(|line| line.strip_prefix("tandem_mirror_queue_depth "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if depth == 0.0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the mirror queue did not drain ({depth} copies left)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Compares the `orders` tables of the two databases, rechecking differences so that writes
/// still in flight do not count.
///
/// # Errors
/// When a database cannot be reached or read.
pub async fn compare_orders(old: &str, new: &str) -> anyhow::Result<Verified> {
    let old = Database::connect(Side::Old, old, 2, Access::ReadOnly).await?;
    let new = Database::connect(Side::New, new, 2, Access::ReadOnly).await?;
    let options = CompareOptions {
        tables: vec![TablePair::parse("orders")],
        recheck_delay: Duration::from_secs(1),
        ..CompareOptions::default()
    };
    let report = compare(&old, &new, &options).await?;
    old.close().await;
    new.close().await;
    let table = report
        .tables
        .first()
        .context("the comparison returned no table")?;
    Ok(Verified {
        identical: report.identical,
        rows_old: table.rows_old,
        missing_in_new: table.missing_in_new,
        extra_in_new: table.extra_in_new,
        changed: table.changed,
    })
}
