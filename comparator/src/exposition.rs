//! `/healthz` and `/metrics`: the routes every long-running comparator-side command serves, on
//! the comparator service's listener and on `tandem backfill --metrics-listen`.

use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

/// `/healthz` (200 while the process runs) and `/metrics` (Prometheus text from `metrics`).
pub fn health_and_metrics<S>(metrics: PrometheusHandle) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics.render() }
            }),
        )
}
