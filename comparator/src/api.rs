//! The comparator service's HTTP API: health, metrics, comparison results, backfills'
//! progress, alerts (with acknowledge and resolve behind the admin token), the audit log, the
//! stage and the runbook.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use std::time::Duration;

use serde_json::json;
use tandem_control::{bearer_authorises, ControlError, ControlStore, Timestamp};

/// Runs listed by `GET /api/runs`.
const RUNS_SHOWN: i64 = 50;

/// Key conflicts listed by `GET /api/key_conflicts`.
const KEY_CONFLICTS_SHOWN: i64 = 200;

/// Key conflicts the dashboard shows (the newest).
const DASHBOARD_KEY_CONFLICTS: i64 = 10;

/// What to do when an alert looks wrong: served at `/runbook`, linked from notifications.
const RUNBOOK: &str = include_str!("../../docs/runbook.md");

/// The dashboard: one page, no external fetches, refreshed from `/api/dashboard`.
const DASHBOARD: &str = include_str!("dashboard/index.html");

/// The period of the dashboard's charts, and their bucket width.
const CHART_PERIOD: Duration = Duration::from_secs(600);
const CHART_BUCKET: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct ApiState {
    store: ControlStore,
    admin_token: Option<String>,
}

/// The router of every endpoint.
pub(crate) fn router(
    store: ControlStore,
    metrics: PrometheusHandle,
    admin_token: Option<String>,
) -> Router {
    crate::exposition::health_and_metrics(metrics)
        .route("/api/runs", get(runs))
        .route("/api/tables", get(tables))
        .route("/api/divergences", get(divergences))
        .route("/api/windows", get(windows))
        .route("/api/alerts", get(alerts))
        .route("/api/alerts/{id}", get(alert))
        .route("/api/alerts/{id}/ack", post(acknowledge))
        .route("/api/alerts/{id}/resolve", post(resolve))
        .route("/api/backfills", get(backfills))
        .route("/api/key_conflicts", get(key_conflicts))
        .route("/api/audit", get(audit))
        .route("/api/stage", get(stage))
        .route("/runbook", get(|| async { RUNBOOK }))
        .route("/", get(|| async { Html(DASHBOARD) }))
        .route("/api/dashboard", get(dashboard))
        .with_state(ApiState { store, admin_token })
}

async fn runs(State(state): State<ApiState>) -> Response {
    answer(state.store.comparison_runs(RUNS_SHOWN).await)
}

async fn tables(State(state): State<ApiState>) -> Response {
    answer(state.store.latest_table_results().await)
}

/// Keys written through two proxies at once, newest first, with what their recheck found.
async fn key_conflicts(State(state): State<ApiState>) -> Response {
    answer(state.store.key_conflicts(KEY_CONFLICTS_SHOWN).await)
}

/// Every backfill recorded in the store, as `tandem backfill status --format json` shows it.
async fn backfills(State(state): State<ApiState>) -> Response {
    answer(
        state
            .store
            .backfill_status()
            .await
            .map(|tables| serde_json::json!({ "tables": tables })),
    )
}

/// Query of `GET /api/divergences` and `GET /api/windows`: a run (default: the latest
/// finished one) and a table (default: all).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunQuery {
    run: Option<i64>,
    table: Option<String>,
}

async fn divergences(State(state): State<ApiState>, query: ApiQuery<RunQuery>) -> Response {
    of_run(&state.store, query, |store, run, table| async move {
        store.divergences_of_run(run, table.as_deref()).await
    })
    .await
}

async fn windows(State(state): State<ApiState>, query: ApiQuery<RunQuery>) -> Response {
    of_run(&state.store, query, |store, run, table| async move {
        store.window_results(run, table.as_deref()).await
    })
    .await
}

/// Answers with what `list` reads of the queried run, by default the newest finished one (a
/// running one has not recorded everything yet).
async fn of_run<T, F, Fut>(
    store: &ControlStore,
    ApiQuery(query): ApiQuery<RunQuery>,
    list: F,
) -> Response
where
    T: serde::Serialize,
    F: FnOnce(ControlStore, i64, Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, ControlError>>,
{
    let run = match query.run {
        Some(run) => Ok(Some(run)),
        None => store.comparison_runs(RUNS_SHOWN).await.map(|runs| {
            runs.iter()
                .find(|run| run.finished_at.is_some())
                .map(|run| run.id)
        }),
    };
    match run {
        Ok(Some(run)) => answer(list(store.clone(), run, query.table).await),
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

/// Query of `GET /api/alerts`: `open`, `acknowledged`, `resolved` or `all` (the default).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertQuery {
    status: Option<String>,
}

async fn alerts(
    State(state): State<ApiState>,
    ApiQuery(AlertQuery { status }): ApiQuery<AlertQuery>,
) -> Response {
    let status = match status.as_deref() {
        None | Some("all") => None,
        Some(wanted @ ("open" | "acknowledged" | "resolved")) => Some(wanted),
        Some(other) => {
            return client_error(
                StatusCode::BAD_REQUEST,
                &format!("unknown status {other:?}: expected open, acknowledged, resolved or all"),
            )
        }
    };
    answer(state.store.alerts(status).await)
}

async fn alert(State(state): State<ApiState>, Path(id): Path<i64>) -> Response {
    match state.store.alert(id).await {
        Ok(Some(alert)) => Json(alert).into_response(),
        Ok(None) => client_error(StatusCode::NOT_FOUND, &format!("no alert {id}")),
        Err(err) => answer::<()>(Err(err)),
    }
}

/// Body of `POST /api/alerts/{id}/ack` and `…/resolve`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertAction {
    by: String,
    comment: Option<String>,
}

type ActionBody = Result<Json<AlertAction>, axum::extract::rejection::JsonRejection>;

async fn acknowledge(
    State(state): State<ApiState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    body: ActionBody,
) -> Response {
    let action = match authorised_action(&state, &headers, body) {
        Ok(action) => action,
        Err(response) => return *response,
    };
    let acknowledged = state
        .store
        .acknowledge_alert(id, &action.by, action.comment.as_deref())
        .await;
    changed(acknowledged)
}

async fn resolve(
    State(state): State<ApiState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    body: ActionBody,
) -> Response {
    let action = match authorised_action(&state, &headers, body) {
        Ok(action) => action,
        Err(response) => return *response,
    };
    let Some(comment) = action.comment.filter(|comment| !comment.trim().is_empty()) else {
        return client_error(
            StatusCode::BAD_REQUEST,
            "resolving an alert needs a `comment`",
        );
    };
    changed(state.store.resolve_alert(id, &action.by, &comment).await)
}

/// The action of a mutating call, once its token and body are checked.
fn authorised_action(
    state: &ApiState,
    headers: &HeaderMap,
    body: ActionBody,
) -> Result<AlertAction, Box<Response>> {
    if let Some(expected) = &state.admin_token {
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        if !bearer_authorises(expected, presented) {
            return Err(Box::new(client_error(
                StatusCode::UNAUTHORIZED,
                "this call needs `Authorization: Bearer <admin token>`",
            )));
        }
    }
    let Json(action) = body.map_err(|rejection| {
        Box::new(client_error(
            StatusCode::BAD_REQUEST,
            &rejection.body_text(),
        ))
    })?;
    if action.by.trim().is_empty() {
        return Err(Box::new(client_error(
            StatusCode::BAD_REQUEST,
            "`by` (who acts) must not be empty",
        )));
    }
    Ok(action)
}

/// The alert after a change, or why the change was refused (nothing changed then).
fn changed(result: Result<tandem_control::Alert, ControlError>) -> Response {
    match result {
        Ok(alert) => Json(alert).into_response(),
        Err(ControlError::NotFound(reason)) => client_error(StatusCode::NOT_FOUND, &reason),
        Err(ControlError::InvalidInput(reason)) => client_error(StatusCode::CONFLICT, &reason),
        Err(err) => answer::<()>(Err(err)),
    }
}

/// Query of `GET /api/audit`: entries of the last `since` (e.g. `24h`), default all.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    since: Option<String>,
}

async fn audit(
    State(state): State<ApiState>,
    ApiQuery(AuditQuery { since }): ApiQuery<AuditQuery>,
) -> Response {
    let since = match since
        .map(|text| humantime::parse_duration(&text))
        .transpose()
    {
        Ok(since) => since.map(|since| {
            let millis = i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
            Timestamp(Timestamp::now().millis().saturating_sub(millis))
        }),
        Err(err) => {
            return client_error(StatusCode::BAD_REQUEST, &format!("invalid `since`: {err}"))
        }
    };
    answer(state.store.audit_log(since).await)
}

/// Everything the dashboard shows but drill-downs, in one answer.
async fn dashboard(State(state): State<ApiState>) -> Response {
    answer(dashboard_view(&state.store).await)
}

async fn dashboard_view(store: &ControlStore) -> Result<serde_json::Value, ControlError> {
    let stage = store.stage_overview(10).await?;
    let tables = store.latest_table_results().await?;
    let last_clean: serde_json::Map<String, serde_json::Value> = store
        .last_clean_times()
        .await?
        .into_iter()
        .map(|(table, at)| (table, json!(at)))
        .collect();
    let mut alerts = store.active_alerts().await?;
    alerts.reverse();
    alerts.extend(store.alerts(Some("resolved")).await?.into_iter().take(10));
    let hour_ago = Timestamp(Timestamp::now().millis().saturating_sub(3_600_000));
    let divergences: Vec<serde_json::Value> = store
        .divergence_series(60)
        .await?
        .into_iter()
        .map(|(at, rows)| json!({"at": at, "rows": rows}))
        .collect();
    Ok(json!({
        "stage": stage,
        "tables": tables,
        "last_clean": last_clean,
        "alerts": alerts,
        "key_conflicts": store.key_conflicts(DASHBOARD_KEY_CONFLICTS).await?,
        // Every backfill recorded in the store, running or finished, as /api/backfills.
        "backfills": store.backfill_status().await?,
        "proxies": {
            "last_5_minutes": store.proxy_counts(Duration::from_secs(300)).await?,
            "queue_depth": store.proxy_counts(Duration::from_secs(30)).await?.queue_depth,
            "awaiting_replay": store.count_awaiting_replay().await?,
            "mismatches_last_hour": store.count_response_mismatches(hour_ago).await?,
            // What each proxy's journal holds undelivered, as it last said.
            "journals": store.journal_summaries().await?,
        },
        "series": {
            "bucket_seconds": CHART_BUCKET.as_secs(),
            "proxy": store.proxy_series(CHART_PERIOD, CHART_BUCKET).await?,
            "divergences": divergences,
        },
    }))
}

async fn stage(State(state): State<ApiState>) -> Response {
    answer(state.store.stage_overview(20).await)
}

/// A query string's fields, or a JSON 400 saying what is wrong with it.
struct ApiQuery<T>(T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(query)| ApiQuery(query))
            .map_err(|rejection| client_error(StatusCode::BAD_REQUEST, &rejection.body_text()))
    }
}

fn client_error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use tandem_control::{JournalSummary, PendingKey, Side};

    use super::*;

    #[tokio::test]
    async fn the_dashboard_lists_every_proxys_journal_summary() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("control.db").display());
        let store = ControlStore::open(&url).await.unwrap();
        store
            .record_journal_summary(&JournalSummary {
                journal: "host:/srv/journal".to_owned(),
                instance: "host:7".to_owned(),
                written_at: Timestamp::now(),
                interval_ms: 5_000,
                pending: 3,
                oldest_accepted_at: Some(Timestamp(1_000)),
                oldest_age_ms: None,
                keys: vec![PendingKey {
                    target: Side::New,
                    ordering_key: "/orders/1".to_owned(),
                    copies: 3,
                    oldest_seq: 4,
                    oldest_accepted_at: Timestamp(1_000),
                    held: true,
                    oldest_age_ms: 0,
                }],
                partitions: vec![tandem_control::PartitionPending {
                    partition: 3,
                    copies: 3,
                    holder: Some("p2".to_owned()),
                }],
                stale: false,
            })
            .await
            .unwrap();
        let view = dashboard_view(&store).await.unwrap();
        let journals = &view["proxies"]["journals"];
        assert_eq!(journals[0]["journal"], "host:/srv/journal", "{view}");
        assert_eq!(journals[0]["pending"], 3);
        assert_eq!(journals[0]["stale"], false);
        assert_eq!(journals[0]["keys"][0]["ordering_key"], "/orders/1");
        assert_eq!(journals[0]["keys"][0]["held"], true);
        assert_eq!(journals[0]["partitions"][0]["holder"], "p2");
    }

    #[tokio::test]
    async fn the_dashboard_lists_key_conflicts_with_their_recheck() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("control.db").display());
        let store = ControlStore::open(&url).await.unwrap();
        store
            .record_key_conflict(Side::New, "/orders/7", "r-7")
            .await
            .unwrap();
        let claimed = store
            .claim_key_conflict("cmp", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        let detail = r#"changed {"id":7} (amount)"#;
        store
            .settle_key_conflict(
                &claimed,
                tandem_control::ConflictOutcome::Diverged,
                Some("orders"),
                detail,
            )
            .await
            .unwrap();
        let view = dashboard_view(&store).await.unwrap();
        let conflict = &view["key_conflicts"][0];
        assert_eq!(conflict["ordering_key"], "/orders/7", "{view}");
        assert_eq!(conflict["status"], "diverged");
        assert_eq!(conflict["table"], "orders");
        assert_eq!(conflict["outcome"], detail);
    }
}
