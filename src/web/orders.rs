//! Reading one order: its detail (admin: everything; customer: the summary) and its credentials,
//! the only response that ever carries a password.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::auth::{bearer, unauthorized};
use super::views::OrderView;
use super::{ApiError, AppState};
use crate::crypto::token_matches_hash;
use crate::domain::{Order, OrderId, OrderState};

/// Who is reading an order.
enum Viewer {
    /// An admin, by name.
    Admin(String),
    /// The customer, by the order's access token.
    Customer,
}

/// Parses an id from a path; a malformed id names no order, so it is a 404.
pub(super) fn order_id(raw: &str) -> Result<OrderId, ApiError> {
    OrderId::parse(raw)
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, format!("no order {raw:?}")))
}

pub(super) async fn load(state: &AppState, id: &OrderId) -> Result<Order, ApiError> {
    state
        .engine
        .store()
        .order(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no order {id}")))
}

async fn viewer(state: &AppState, headers: &HeaderMap, id: &OrderId) -> Result<Viewer, ApiError> {
    if let Some(name) = state.auth.admin_of(headers) {
        return Ok(Viewer::Admin(name));
    }
    let token = bearer(headers).ok_or_else(unauthorized)?;
    let stored = state
        .engine
        .store()
        .access_token_hash(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(unauthorized)?;
    if token_matches_hash(token, &stored) {
        Ok(Viewer::Customer)
    } else {
        Err(unauthorized())
    }
}

/// `GET /api/v1/orders/{id}`: with the admin token, the order with its timeline and purchase
/// ledger; with the order's access token, the order alone, without the admin-facing failure
/// text. Never a password.
pub(super) async fn order(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<OrderView>, ApiError> {
    let id = order_id(&id)?;
    let order = load(&state, &id).await?;
    match viewer(&state, &headers, &id).await? {
        Viewer::Admin(_) => {
            let store = state.engine.store();
            let timeline = store.timeline(&id).await.map_err(ApiError::internal)?;
            let purchases = store.purchases(&id).await.map_err(ApiError::internal)?;
            Ok(Json(OrderView::new(
                &order,
                Some(timeline),
                Some(purchases),
            )))
        }
        Viewer::Customer => {
            // The failure text is written for admins (evidence, panel instructions); the state
            // says enough to the customer.
            let mut view = OrderView::new(&order, None, None);
            view.failure = None;
            Ok(Json(view))
        }
    }
}

/// `GET /api/v1/orders/{id}/credentials`: the server's login, decrypted, for the order's access
/// token or an admin token. 409 until the order is ready. `Cache-Control: no-store`.
pub(super) async fn credentials(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = order_id(&id)?;
    let order = load(&state, &id).await?;
    let who = viewer(&state, &headers, &id).await?;
    let (OrderState::Ready, Some(ip)) = (order.state, order.server_ip) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "no credentials yet: the order is {}; they are available once it is ready",
                order.state
            ),
        ));
    };
    let sealed = state
        .engine
        .store()
        .credentials(&id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::internal(format!("ready order {id} has no stored credentials")))?;
    let creds = state
        .engine
        .cipher()
        .open(ip, &sealed)
        .map_err(|e| ApiError::internal(format!("order {id}: {e}")))?;
    match who {
        Viewer::Admin(name) => {
            tracing::info!(order_id = %id, admin = %name, "credentials read by an admin");
        }
        Viewer::Customer => tracing::info!(order_id = %id, "credentials read by the customer"),
    }
    let body = json!({
        "order_id": id,
        "ip": creds.ip.to_string(),
        "username": creds.username,
        "password": creds.expose_password(),
        "os": creds.os,
    });
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
