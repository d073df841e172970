//! Reading one order: its detail (admin: everything; customer: the summary) and its credentials,
//! the only response that ever carries a password; and the explicit rotation of its customer
//! token.
//!
//! Who may read which order is [`super::access`]'s to say.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::access::{Viewer, authorize};
use super::auth::unauthorized;
use super::storefront::Refusal;
use super::throttle::ClientAddr;
use super::views::OrderView;
use super::{ApiError, AppState};
use crate::domain::{OrderId, OrderState};
use crate::engine::intake::{RotateError, Rotator, rotate};
use crate::engine::queries::CredentialsError;

/// `GET /api/v1/orders/{id}`: with the admin token, the order with its timeline and purchase
/// ledger; with the order's access token, the order alone, without the admin-facing failure
/// text. Never a password.
pub(super) async fn order(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
) -> Result<Json<OrderView>, ApiError> {
    let (viewer, order) = authorize(&state, &headers, client, &id).await?;
    let id = order.id.clone();
    match viewer {
        Viewer::Admin(_) => {
            let queries = state.engine.queries();
            let timeline = queries.timeline(&id).await.map_err(ApiError::internal)?;
            let purchases = queries.purchases(&id).await.map_err(ApiError::internal)?;
            let mut view = OrderView::new(&order, Some(timeline), Some(purchases));
            view.expiry = queries.expiry(&id).await.map_err(ApiError::internal)?;
            if order.state == OrderState::NeedsAttention {
                view.candidates = Some(queries.candidates(&id).await.map_err(ApiError::internal)?);
            }
            super::actions::add_server(&state, &order, &mut view).await?;
            let deliveries = queries.deliveries(&id).await.map_err(ApiError::internal)?;
            view.notifications = Some(
                deliveries
                    .iter()
                    .map(super::views::NotificationView::new)
                    .collect(),
            );
            Ok(Json(view))
        }
        Viewer::Customer => {
            // The failure text is written for admins (evidence, panel instructions); the state
            // says enough to the customer.
            let mut view = OrderView::new(&order, None, None);
            view.failure = None;
            super::actions::add_server(&state, &order, &mut view).await?;
            view.expiry = state
                .engine
                .queries()
                .expiry(&id)
                .await
                .map_err(ApiError::internal)?;
            Ok(Json(view))
        }
    }
}

/// `GET /api/v1/orders/{id}/credentials`: the server's login, decrypted, for the order's access
/// token or an admin token. 409 until the order is ready. `Cache-Control: no-store`.
pub(super) async fn credentials(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (who, order) = authorize(&state, &headers, client, &id).await?;
    let id = order.id.clone();
    let creds = state
        .engine
        .queries()
        .credentials(&order)
        .await
        .map_err(|e| match e {
            CredentialsError::NotReady(now) => ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "no credentials yet: the order is {now}; they are available once it is ready"
                ),
            ),
            e => ApiError::internal(e),
        })?;
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

/// `POST /api/v1/orders/{id}/access-token` with `{"reason": "..."}`: replaces the order's
/// customer token; the previous one stops working at once, and the rotation is in the timeline.
/// A storefront (signed over the body, or its bearer secret) may rotate the orders it sent and
/// receives the new token in the answer; an admin may rotate any order but never sees a
/// customer token: the storefront receives the new one with its next intake replay of the order.
pub(super) async fn rotate_token(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let verdict = state.throttle.judge(
        client,
        || match state.auth.admin_of(&headers) {
            Some(name) => Ok(Rotator::Admin(name)),
            None => state
                .storefronts
                .verify(&headers, &body)
                .map(|name| Rotator::Storefront(name.to_string())),
        },
        |refusal| *refusal != Refusal::Missing,
    )?;
    let Ok(by) = verdict else {
        return Err(unauthorized());
    };
    let reason = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_string))
        .unwrap_or_default();
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, format!("no order {raw:?}"));
    let id = OrderId::parse(&raw).map_err(|_| not_found())?;
    let token = rotate(&state.engine, &id, &by, &reason)
        .await
        .map_err(|e| match e {
            RotateError::NotFound(_) => not_found(),
            RotateError::NoReason | RotateError::BadReason(_) => {
                ApiError::field("reason", e.to_string())
            }
            RotateError::Store(e) => ApiError::internal(e),
        })?;
    let body = match by {
        Rotator::Storefront(_) => json!({
            "order_id": id,
            "access_token": secrecy::ExposeSecret::expose_secret(&token),
        }),
        Rotator::Admin(_) => json!({
            "order_id": id,
            "rotated": true,
            "note": "the previous token no longer works; the storefront receives the new one with its next intake replay of this order",
        }),
    };
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
