//! tandem's HTTP dual-write proxy: routes each request by the migration stage, mirrors
//! accepted writes to the other side in per-key order, compares answers, and never lets
//! the non-authoritative side hurt the client.

mod admin;
mod body;
mod compare;
mod config;
mod error;
mod front_door;
mod headers;
mod key_locks;
mod mirror;
mod mismatch;
mod not_mirrored;
mod replay;
mod routes;
mod server;
mod service;
mod status_set;
mod telemetry;
mod tls;
mod upstream;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use compare::{diff_responses, CapturedResponse, IgnorePaths};
pub use config::{resolve_control_db, MirrorMode, ProxyArgs, ProxyConfig, DEFAULT_CONTROL_DB};
pub use error::{ConfigError, ProxyError, UpstreamError};
pub use headers::{
    decode_block as decode_header_block, encode_block as encode_header_block, MIRROR, REQUEST_ID,
};
pub use replay::{replay_failures, replay_with_lease, ReplayReport, DEFAULT_CLAIM_LEASE};
pub use routes::{Classification, RouteClass, RouteRule, RouteTable};
pub use server::{proxy_router, run, run_on, BoundAddrs};
pub use upstream::{Upstream, Upstreams};

/// Latency histogram buckets in seconds: fine below a millisecond, where a proxy's cost shows.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets in seconds for what takes seconds to an hour: the WAL capture's delay (alerted on at
/// 30 s, past the latency buckets' last finite bound) and a backfill chunk's duration.
const SLOW_BUCKETS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Metrics measured with [`SLOW_BUCKETS`]: the capture's delay from commit to applied, and
/// the part of it before tandem received the transaction; a backfill chunk's duration; and
/// how long a request waited at the cutover (up to `cutover_timeout`, 5 s by default).
const SLOW_METRICS: [&str; 4] = [
    "tandem_capture_apply_delay_seconds",
    "tandem_capture_receive_delay_seconds",
    "tandem_backfill_chunk_duration_seconds",
    "tandem_cutover_hold_duration_seconds",
];

/// Buckets of histograms that count things (transactions per batch), not seconds.
const COUNT_BUCKETS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1_000.0, 2_000.0, 5_000.0,
];

/// Installs the process-wide Prometheus recorder (once per process) and returns its handle.
///
/// # Errors
/// When a recorder is already installed.
pub fn install_metrics_recorder() -> Result<PrometheusHandle, ProxyError> {
    let mut builder = PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS)
        .map_err(|err| ProxyError::Metrics(err.to_string()))?;
    for metric in SLOW_METRICS {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(metric.to_owned()), &SLOW_BUCKETS)
            .map_err(|err| ProxyError::Metrics(err.to_string()))?;
    }
    builder
        .set_buckets_for_metric(
            Matcher::Full("tandem_capture_batch_transactions".to_owned()),
            &COUNT_BUCKETS,
        )
        .map_err(|err| ProxyError::Metrics(err.to_string()))?
        .install_recorder()
        .map_err(|err| ProxyError::Metrics(err.to_string()))
}
