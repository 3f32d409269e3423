//! Fault switches of the sample service, for tests and benchmarks: an added latency, an error
//! rate, and stopping (the API listener closes: connections are refused) and starting again.
//! They are set through a separate admin listener: `GET`/`PUT /faults`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The switches as JSON (`PUT /faults` may set any subset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSettings {
    /// Added before every API response, in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// Share of API requests answered 503 at once (0 to 1).
    #[serde(default)]
    pub error_rate: f64,
    /// Whether the API listener is closed.
    #[serde(default)]
    pub stopped: bool,
}

/// The live switches, shared by the API middleware and the admin listener.
#[derive(Debug, Clone)]
pub struct Faults {
    latency_ms: Arc<AtomicU64>,
    /// The error rate's bits (an `f64`).
    error_rate: Arc<AtomicU64>,
    stopped: Arc<AtomicBool>,
    running: watch::Sender<bool>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            latency_ms: Arc::new(AtomicU64::new(0)),
            error_rate: Arc::new(AtomicU64::new(0f64.to_bits())),
            stopped: Arc::new(AtomicBool::new(false)),
            running: watch::channel(true).0,
        }
    }
}

impl Faults {
    /// The switches now.
    #[must_use]
    pub fn settings(&self) -> FaultSettings {
        FaultSettings {
            latency_ms: self.latency_ms.load(Ordering::Relaxed),
            error_rate: f64::from_bits(self.error_rate.load(Ordering::Relaxed)),
            stopped: self.stopped.load(Ordering::Relaxed),
        }
    }

    /// Sets every switch.
    pub fn set(&self, settings: FaultSettings) {
        self.latency_ms
            .store(settings.latency_ms, Ordering::Relaxed);
        self.error_rate.store(
            settings.error_rate.clamp(0.0, 1.0).to_bits(),
            Ordering::Relaxed,
        );
        self.stopped.store(settings.stopped, Ordering::Relaxed);
        self.running.send_replace(!settings.stopped);
    }

    /// Follows the stopped switch: `true` while the API should listen.
    #[must_use]
    pub fn running(&self) -> watch::Receiver<bool> {
        self.running.subscribe()
    }

    /// The admin listener's routes: `GET /faults` and `PUT /faults`.
    pub fn admin_router(&self) -> Router {
        Router::new()
            .route("/faults", get(show).put(update))
            .with_state(self.clone())
    }

    /// Middleware applying the latency and error-rate switches to API requests.
    pub async fn apply(State(faults): State<Faults>, request: Request, next: Next) -> Response {
        let settings = faults.settings();
        if settings.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(settings.latency_ms)).await;
        }
        if settings.error_rate > 0.0 && fastrand::f64() < settings.error_rate {
            return (StatusCode::SERVICE_UNAVAILABLE, "injected fault\n").into_response();
        }
        next.run(request).await
    }
}

async fn show(State(faults): State<Faults>) -> Json<FaultSettings> {
    Json(faults.settings())
}

async fn update(
    State(faults): State<Faults>,
    settings: Result<Json<FaultSettings>, axum::extract::rejection::JsonRejection>,
) -> Response {
    match settings {
        Ok(Json(settings)) if (0.0..=1.0).contains(&settings.error_rate) => {
            faults.set(settings);
            tracing::info!(?settings, "faults set");
            Json(faults.settings()).into_response()
        }
        Ok(_) => (
            StatusCode::BAD_REQUEST,
            "error_rate must be between 0 and 1\n",
        )
            .into_response(),
        Err(rejection) => (StatusCode::BAD_REQUEST, rejection.body_text()).into_response(),
    }
}
