//! The JSON API: intake (`POST /api/v1/orders`, idempotent on `order_ref`), order status
//! (`GET /api/v1/orders/{id}`) and `GET /healthz`.

mod intake;

pub use views::OrderView;
pub mod views;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::domain::OrderId;
use crate::engine::Engine;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The engine (its store and clock serve reads too).
    pub engine: Arc<Engine>,
}

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/orders", post(intake::create_order))
        .route("/api/v1/orders/{id}", get(order))
        .with_state(state)
}

/// An API error: status plus a JSON body `{"error": ..., "field": ...}`. Internal causes are
/// logged, never sent.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
        }
    }

    pub(crate) fn field(field: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: message.into(),
            field: Some(field.to_string()),
        }
    }

    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!("request failed: {e}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; the request was not lost if it was accepted, see the server log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.field {
            Some(f) => json!({ "error": format!("{f}: {}", self.message), "field": f }),
            None => json!({ "error": self.message }),
        };
        (self.status, Json(body)).into_response()
    }
}

async fn healthz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let counts = state
        .engine
        .store()
        .state_counts()
        .await
        .map_err(ApiError::internal)?;
    let orders: serde_json::Map<String, serde_json::Value> = counts
        .into_iter()
        .map(|(s, n)| (s.as_str().to_string(), n.into()))
        .collect();
    // The worker id is the name this process writes into leases (`orders.lease_owner`): it is
    // how an operator of several processes on one database maps leases to processes.
    Ok(Json(
        json!({ "status": "ok", "worker": state.engine.worker_id(), "orders": orders }),
    ))
}

async fn order(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<views::OrderView>, ApiError> {
    let id = OrderId::parse(&id)
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, format!("no order {id:?}")))?;
    let store = state.engine.store();
    let order = store
        .order(&id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no order {id}")))?;
    let timeline = store.timeline(&id).await.map_err(ApiError::internal)?;
    let purchases = store.purchases(&id).await.map_err(ApiError::internal)?;
    Ok(Json(views::OrderView::new(
        &order,
        Some(timeline),
        Some(purchases),
    )))
}
