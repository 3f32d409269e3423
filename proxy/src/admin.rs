//! The admin listener: health, readiness, Prometheus metrics, the stage API and replays.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tandem_control::{
    bearer_authorises, ControlError, ControlStore, Stage, StageOverview, StageRecord, StageWatch,
};

use crate::replay::replay_failures;
use crate::upstream::Upstreams;

/// Stage history entries shown by `GET /admin/stage`.
const HISTORY_SHOWN: i64 = 20;
/// Mismatches shown by `GET /admin/mismatches`.
const MISMATCHES_SHOWN: i64 = 100;

/// What the admin endpoints need.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The control store.
    pub store: ControlStore,
    /// The stage in force in this process.
    pub stage: StageWatch,
    /// Renders the Prometheus exposition.
    pub metrics: PrometheusHandle,
    /// Bearer token for mutating calls, if one is configured.
    pub token: Option<Arc<str>>,
    /// Both sides, for replays.
    pub upstreams: Upstreams,
}

/// The admin API.
pub fn admin_router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/admin/stage", get(show_stage).put(set_stage))
        .route("/admin/mirror/failures", get(mirror_failures))
        .route("/admin/mirror/journals", get(mirror_journals))
        .route("/admin/mirror/replay", post(replay))
        .route("/admin/mismatches", get(mismatches))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if state.stage.store_reachable() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "control store unreachable\n",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AdminState>) -> String {
    state.metrics.render()
}

async fn show_stage(State(state): State<AdminState>) -> Response {
    match within_deadline(state.store.stage_overview(HISTORY_SHOWN)).await {
        Ok(overview) => Json(StageView {
            applied: state.stage.current(),
            overview,
        })
        .into_response(),
        Err(err) => store_failed(&err),
    }
}

/// `GET /admin/stage`: the stored stage and history, and the stage this process routes by.
#[derive(Debug, Serialize)]
struct StageView {
    applied: StageRecord,
    #[serde(flatten)]
    overview: StageOverview,
}

/// The body of `PUT /admin/stage`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StageChange {
    stage: String,
    reason: String,
    by: String,
    /// Promote even when the promotion gate refuses (audited as forced).
    #[serde(default)]
    force: bool,
}

async fn set_stage(
    State(state): State<AdminState>,
    headers: HeaderMap,
    change: Result<Json<StageChange>, JsonRejection>,
) -> Response {
    if let Some(denied) = check_token(state.token.as_deref(), &headers) {
        return denied;
    }
    let Json(change) = match change {
        Ok(change) => change,
        Err(rejection) => return client_error(StatusCode::BAD_REQUEST, &rejection.body_text()),
    };
    let stage: Stage = match change.stage.parse() {
        Ok(stage) => stage,
        Err(err) => return client_error(StatusCode::BAD_REQUEST, &err.to_string()),
    };
    let changed = if change.force {
        within_deadline(state.store.force_stage(stage, &change.by, &change.reason)).await
    } else {
        within_deadline(state.store.set_stage(stage, &change.by, &change.reason)).await
    };
    match changed {
        Ok(record) => {
            tracing::info!(stage = %record.stage, by = record.by, reason = record.reason, "stage set through the admin API");
            Json(record).into_response()
        }
        Err(ControlError::InvalidInput(reason)) => client_error(StatusCode::BAD_REQUEST, &reason),
        Err(err @ ControlError::PromotionRefused { .. }) => {
            client_error(StatusCode::CONFLICT, &err.to_string())
        }
        Err(err) => store_failed(&err),
    }
}

async fn mirror_failures(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(denied) = check_token(state.token.as_deref(), &headers) {
        return denied;
    }
    match within_deadline(state.store.awaiting_replay()).await {
        Ok(failures) => Json(failures).into_response(),
        Err(err) => store_failed(&err),
    }
}

/// Every proxy's journal summary (copies pending there, the oldest one's age, sampled keys),
/// each marked stale when its proxy stopped writing it.
async fn mirror_journals(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(denied) = check_token(state.token.as_deref(), &headers) {
        return denied;
    }
    match within_deadline(state.store.journal_summaries()).await {
        Ok(summaries) => Json(summaries).into_response(),
        Err(err) => store_failed(&err),
    }
}

/// Query of `POST /admin/mirror/replay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayQuery {
    id: Option<i64>,
}

/// Replays pending copies from this process, so its metrics count them.
async fn replay(
    State(state): State<AdminState>,
    headers: HeaderMap,
    query: Result<Query<ReplayQuery>, QueryRejection>,
) -> Response {
    if let Some(denied) = check_token(state.token.as_deref(), &headers) {
        return denied;
    }
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return client_error(StatusCode::BAD_REQUEST, &rejection.body_text()),
    };
    match replay_failures(&state.store, &state.upstreams, query.id).await {
        Ok(report) => Json(report).into_response(),
        Err(ControlError::InvalidInput(reason)) => client_error(StatusCode::NOT_FOUND, &reason),
        Err(err) => store_failed(&err),
    }
}

async fn mismatches(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(denied) = check_token(state.token.as_deref(), &headers) {
        return denied;
    }
    match within_deadline(state.store.response_mismatches(MISMATCHES_SHOWN)).await {
        Ok(found) => Json(found).into_response(),
        Err(err) => store_failed(&err),
    }
}

/// `None` when the call may proceed, else the 401 to send.
fn check_token(expected: Option<&str>, headers: &HeaderMap) -> Option<Response> {
    let expected = expected?;
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    (!bearer_authorises(expected, presented)).then(|| {
        let mut response = client_error(
            StatusCode::UNAUTHORIZED,
            "this call needs `Authorization: Bearer <admin token>`",
        );
        response.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
        response
    })
}

fn client_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// How long an admin call waits for the control store before it answers 503.
const STORE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// `call`'s answer, or an error once the control store has not answered within
/// [`STORE_DEADLINE`] (a frozen store must not hang the on-call engineer's request).
async fn within_deadline<T>(
    call: impl std::future::Future<Output = Result<T, ControlError>>,
) -> Result<T, ControlError> {
    tokio::time::timeout(STORE_DEADLINE, call)
        .await
        .unwrap_or_else(|_| {
            Err(ControlError::Unavailable(format!(
                "the control store did not answer within {}s",
                STORE_DEADLINE.as_secs()
            )))
        })
}

fn store_failed(err: &ControlError) -> Response {
    tracing::error!(error = %err, "admin call failed on the control store");
    client_error(StatusCode::SERVICE_UNAVAILABLE, &err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_exactly() {
        let mut headers = HeaderMap::new();
        assert!(check_token(None, &headers).is_none(), "no token configured");
        assert!(
            check_token(Some("s3cret"), &headers).is_some(),
            "missing header"
        );
        headers.insert("authorization", "Bearer s3cre".parse().unwrap());
        assert!(
            check_token(Some("s3cret"), &headers).is_some(),
            "wrong token"
        );
        headers.insert("authorization", "s3cret".parse().unwrap());
        assert!(check_token(Some("s3cret"), &headers).is_some(), "no scheme");
        headers.insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(check_token(Some("s3cret"), &headers).is_none());
    }
}
