//! The sample "orders" REST service that tandem migrates in tests, the demo and load tests.

mod model;
mod store;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

pub use model::{Order, OrderInput, OrderPatch};
pub use store::{OrderStore, StoreError};

/// Orders returned by `GET /orders` when no limit is given.
const DEFAULT_LIST_LIMIT: i64 = 100;
/// Most orders one `GET /orders` returns.
const MAX_LIST_LIMIT: i64 = 1_000;

/// The service's routes.
pub fn orders_router(store: OrderStore) -> Router {
    Router::new()
        .route("/orders", get(list))
        .route(
            "/orders/{id}",
            get(show).put(upsert).patch(patch).delete(remove),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(store)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn database_failed(err: &StoreError) -> Response {
    tracing::error!(error = %err, "orders database failed");
    error(StatusCode::INTERNAL_SERVER_ERROR, "database error")
}

/// The `{id}` path segment, which must be an integer.
struct OrderId(i64);

impl<S: Send + Sync> FromRequestParts<S> for OrderId {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        raw.parse()
            .map(OrderId)
            .map_err(|_| error(StatusCode::BAD_REQUEST, "order id must be an integer"))
    }
}

fn not_found(id: i64) -> Response {
    error(StatusCode::NOT_FOUND, &format!("no order {id}"))
}

async fn show(State(store): State<OrderStore>, OrderId(id): OrderId) -> Response {
    match store.get(id).await {
        Ok(Some(order)) => Json(order).into_response(),
        Ok(None) => not_found(id),
        Err(err) => database_failed(&err),
    }
}

async fn upsert(
    State(store): State<OrderStore>,
    OrderId(id): OrderId,
    input: Result<Json<OrderInput>, JsonRejection>,
) -> Response {
    let order = match input {
        Ok(Json(input)) => match input.into_order(id) {
            Ok(order) => order,
            Err(reason) => return error(StatusCode::UNPROCESSABLE_ENTITY, &reason),
        },
        Err(rejection) => return error(StatusCode::BAD_REQUEST, &rejection.body_text()),
    };
    match store.upsert(&order).await {
        Ok(()) => Json(order).into_response(),
        Err(err) => database_failed(&err),
    }
}

async fn patch(
    State(store): State<OrderStore>,
    OrderId(id): OrderId,
    input: Result<Json<OrderPatch>, JsonRejection>,
) -> Response {
    let patch = match input {
        Ok(Json(patch)) => patch,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, &rejection.body_text()),
    };
    match store.update(id, |order| patch.apply(order)).await {
        Ok(Some(Ok(order))) => Json(order).into_response(),
        Ok(Some(Err(reason))) => error(StatusCode::UNPROCESSABLE_ENTITY, &reason),
        Ok(None) => not_found(id),
        Err(err) => database_failed(&err),
    }
}

async fn remove(State(store): State<OrderStore>, OrderId(id): OrderId) -> Response {
    match store.delete(id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => not_found(id),
        Err(err) => database_failed(&err),
    }
}

/// Query of `GET /orders`.
#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<i64>,
}

async fn list(
    State(store): State<OrderStore>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let limit = match query {
        Ok(Query(query)) => query.limit.unwrap_or(DEFAULT_LIST_LIMIT),
        Err(rejection) => return error(StatusCode::BAD_REQUEST, &rejection.body_text()),
    };
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("limit must be between 1 and {MAX_LIST_LIMIT}"),
        );
    }
    match store.list(limit).await {
        Ok(orders) => Json(json!({ "orders": orders })).into_response(),
        Err(err) => database_failed(&err),
    }
}
