//! The continuous comparator: sweeps the configured tables again and again, records every run
//! in the control store, and serves `/healthz`, `/metrics` and a JSON API about the results.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use tandem_control::{ControlError, ControlStore};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::database::Database;
use crate::error::CompareError;
use crate::record::record_outcome;
use crate::report::Report;
use crate::run::{compare, CompareOptions};

/// Runs listed by `GET /api/runs`.
const RUNS_SHOWN: i64 = 50;

/// How the service sweeps.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Address of the HTTP listener.
    pub listen: SocketAddr,
    /// Pause between the end of a sweep and the start of the next.
    pub interval: Duration,
    /// Stop after this many sweeps (`None`: until shutdown).
    pub sweeps: Option<u64>,
    /// The old database as shown in records (no credentials).
    pub old_source: String,
    /// The new database as shown in records (no credentials).
    pub new_source: String,
}

/// Everything the continuous comparator works with.
#[derive(Debug)]
pub struct ComparatorService {
    /// The old database.
    pub old: Database,
    /// The new database.
    pub new: Database,
    /// Where runs are recorded.
    pub store: ControlStore,
    /// What each sweep compares and how.
    pub options: CompareOptions,
    /// How the service sweeps and listens.
    pub settings: ServiceSettings,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
}

impl ComparatorService {
    /// Sweeps until `shutdown` (or `settings.sweeps` sweeps), serving the HTTP API meanwhile;
    /// `on_ready` gets the listener's address once it is bound.
    ///
    /// # Errors
    /// When the listener cannot be bound or the control store cannot record a run.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        on_ready: impl FnOnce(SocketAddr),
    ) -> Result<(), CompareError> {
        let ComparatorService {
            old,
            new,
            store,
            options,
            settings,
            metrics,
        } = self;
        let listener = TcpListener::bind(settings.listen).await.map_err(|err| {
            CompareError::Service(format!("cannot listen on {}: {err}", settings.listen))
        })?;
        let address = listener
            .local_addr()
            .map_err(|err| CompareError::Service(err.to_string()))?;
        let api_stop = CancellationToken::new();
        let api = axum::serve(listener, api_router(store.clone(), metrics))
            .with_graceful_shutdown(api_stop.clone().cancelled_owned());
        let api = tokio::spawn(async move { api.await });
        on_ready(address);

        let mut completed = 0u64;
        while settings.sweeps.is_none_or(|sweeps| completed < sweeps) && !shutdown.is_cancelled() {
            // A control store that is briefly unavailable costs one sweep, not the service.
            if let Err(err) = sweep(&old, &new, &store, &options, &settings, &shutdown).await {
                counter!("tandem_comparator_sweeps_total", "outcome" => "unrecorded").increment(1);
                tracing::warn!(error = %err, "comparator sweep could not be recorded");
            }
            completed += 1;
            if settings.sweeps.is_some_and(|sweeps| completed >= sweeps) {
                break;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(settings.interval) => {}
            }
        }
        api_stop.cancel();
        let _ = api.await;
        Ok(())
    }
}

/// One sweep: a recorded run over every configured table.
async fn sweep(
    old: &Database,
    new: &Database,
    store: &ControlStore,
    options: &CompareOptions,
    settings: &ServiceSettings,
    shutdown: &CancellationToken,
) -> Result<(), ControlError> {
    let started = Instant::now();
    let run = store
        .begin_comparison_run(&settings.old_source, &settings.new_source)
        .await?;
    let outcome = tokio::select! {
        outcome = compare(old, new, options) => outcome.map_err(|err| err.to_string()),
        () = shutdown.cancelled() => Err("interrupted by shutdown".to_owned()),
    };
    record_outcome(store, run, outcome.as_ref().map_err(String::as_str)).await?;
    SweepFinished {
        outcome: outcome.as_ref(),
        elapsed: started.elapsed(),
    }
    .emit();
    Ok(())
}

/// A sweep ended: records its metrics and its log line together.
struct SweepFinished<'a> {
    outcome: Result<&'a Report, &'a String>,
    elapsed: Duration,
}

impl SweepFinished<'_> {
    fn emit(self) {
        histogram!("tandem_comparator_sweep_duration_seconds").record(self.elapsed.as_secs_f64());
        let report = match self.outcome {
            Ok(report) => report,
            Err(reason) => {
                counter!("tandem_comparator_sweeps_total", "outcome" => "failed").increment(1);
                tracing::warn!(error = %reason, "comparator sweep failed");
                return;
            }
        };
        let outcome = if report.identical {
            "identical"
        } else {
            "divergent"
        };
        counter!("tandem_comparator_sweeps_total", "outcome" => outcome).increment(1);
        for table in &report.tables {
            counter!("tandem_comparator_rows_total", "side" => "old").increment(table.rows_old);
            counter!("tandem_comparator_rows_total", "side" => "new").increment(table.rows_new);
            counter!("tandem_comparator_windows_total").increment(table.windows);
            for (kind, rows) in [
                ("missing_in_new", table.missing_in_new),
                ("extra_in_new", table.extra_in_new),
                ("changed", table.changed),
            ] {
                #[allow(clippy::cast_precision_loss)]
                gauge!("tandem_divergent_rows", "table" => table.table.clone(), "kind" => kind)
                    .set(rows as f64);
            }
        }
        if report.identical {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |elapsed| elapsed.as_secs_f64());
            gauge!("tandem_comparator_last_clean_sweep_timestamp_seconds").set(now);
        }
        tracing::info!(
            outcome,
            tables = report.tables.len(),
            seconds = self.elapsed.as_secs_f64(),
            "comparator sweep finished"
        );
    }
}

#[derive(Clone)]
struct ApiState {
    store: ControlStore,
    metrics: PrometheusHandle,
}

/// `/healthz`, `/metrics`, `/api/runs`, `/api/tables` and `/api/divergences`.
fn api_router(store: ControlStore, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(|State(state): State<ApiState>| async move { state.metrics.render() }),
        )
        .route("/api/runs", get(runs))
        .route("/api/tables", get(tables))
        .route("/api/divergences", get(divergences))
        .with_state(ApiState { store, metrics })
}

async fn runs(State(state): State<ApiState>) -> Response {
    answer(state.store.comparison_runs(RUNS_SHOWN).await)
}

async fn tables(State(state): State<ApiState>) -> Response {
    answer(state.store.latest_table_results().await)
}

/// Query of `GET /api/divergences`: a run (default: the latest) and a table (default: all).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DivergenceQuery {
    run: Option<i64>,
    table: Option<String>,
}

async fn divergences(
    State(state): State<ApiState>,
    query: Result<Query<DivergenceQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => {
            let body = serde_json::json!({ "error": rejection.body_text() });
            return (StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
    };
    // By default the newest finished run: a running one has recorded nothing yet.
    let run = match query.run {
        Some(run) => Ok(Some(run)),
        None => state.store.comparison_runs(RUNS_SHOWN).await.map(|runs| {
            runs.iter()
                .find(|run| run.finished_at.is_some())
                .map(|run| run.id)
        }),
    };
    match run {
        Ok(Some(run)) => answer(
            state
                .store
                .divergences_of_run(run, query.table.as_deref())
                .await,
        ),
        Ok(None) => Json(Vec::<()>::new()).into_response(),
        Err(err) => answer::<()>(Err(err)),
    }
}

fn answer<T: serde::Serialize>(result: Result<T, ControlError>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(err) => {
            let body = serde_json::json!({ "error": err.to_string() });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}
