//! Renewals over HTTP: a storefront's paid renewal (signed like intake, idempotent on
//! `renewal_ref`), and an admin's renewal or cancellation of service (each with a reason).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::auth::Admin;
use super::intake::{body_object, no_unknown_keys, storefront_of, string};
use super::storefront::Refusal;
use super::throttle::ClientAddr;
use super::{ApiError, AppState};
use crate::domain::{OrderId, OrderRef, Renewal};
use crate::engine::renewals::RenewalError;
use crate::store::StoreError;

impl From<RenewalError> for ApiError {
    fn from(e: RenewalError) -> Self {
        match e {
            RenewalError::NotFound => Self::new(StatusCode::NOT_FOUND, e.to_string()),
            RenewalError::Conflict(_) | RenewalError::NotRenewable(_) => {
                Self::new(StatusCode::CONFLICT, e.to_string())
            }
            RenewalError::Invalid { field, message } => Self::field(&field, message),
            RenewalError::Store(StoreError::Conflict(_)) => Self::new(
                StatusCode::CONFLICT,
                "the order is being worked on right now; try again in a moment",
            ),
            RenewalError::Store(e) => Self::internal(e),
        }
    }
}

/// `POST /api/v1/orders/{id}/renewals` with `{"renewal_ref"}`, for the storefront that sent the
/// order (signed as intake is): `{id}` is the order id or the storefront's `order_ref`. 201 for
/// a new renewal (queued; the engine applies it), 200 for a replay (nothing renewed again), 409
/// when the reference names another order's renewal or the order is not ready, 404 for an
/// order that is not the storefront's, 401 unsigned, 422 naming a bad field.
pub(super) async fn storefront_renewal(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let storefront = storefront_of(&state, client, &headers, &body, "renewal")?;
    let obj = body_object(&body)?;
    no_unknown_keys(&obj, &["renewal_ref"], "")?;
    let renewal_ref = string(&obj, "renewal_ref", "renewal_ref")?;
    let id = resolve(&state, &id).await?;
    let taken = state
        .engine
        .storefront_renewal(&id, &renewal_ref, &storefront)
        .await?;
    let status = if taken.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view(&taken.renewal))).into_response())
}

/// `POST /api/v1/orders/{id}/renew` with `{"reason"}`, for an admin: queues a month's renewal
/// (202), on the timeline with who and why.
pub(super) async fn admin_renewal(
    Admin(admin): Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = super::access::order_id(&id)?;
    let obj = body_object(&body)?;
    no_unknown_keys(&obj, &["reason"], "")?;
    let reason = string(&obj, "reason", "reason")?;
    let taken = state.engine.admin_renewal(&id, &admin, &reason).await?;
    Ok((StatusCode::ACCEPTED, Json(view(&taken.renewal))).into_response())
}

/// `POST /api/v1/orders/{id}/cancel-service` with `{"reason"}`, for an admin (bearer token) or
/// the storefront that sent the order (signed): the server is not renewed any more and the
/// order ends `terminated` at its expiry. For a storefront `{id}` may be its `order_ref`.
pub(super) async fn cancel_service(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let verdict = state.throttle.judge(
        client,
        || match state.auth.admin_of(&headers) {
            Some(name) => Ok((format!("admin:{name}"), None)),
            None => state
                .storefronts
                .verify(&headers, &body)
                .map(|name| (format!("storefront:{name}"), Some(name.to_string()))),
        },
        |refusal| *refusal != Refusal::Missing,
    )?;
    let Ok((actor, storefront)) = verdict else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "an admin token or a storefront signature is required",
        ));
    };
    let obj = body_object(&body)?;
    no_unknown_keys(&obj, &["reason"], "")?;
    let reason = string(&obj, "reason", "reason")?;
    let id = resolve(&state, &id).await?;
    if let Some(storefront) = &storefront {
        let order = super::access::find(&state, &id.to_string()).await?;
        if order.storefront.as_deref().is_some_and(|s| s != storefront) {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "no such order"));
        }
    }
    state.engine.cancel_service(&id, &actor, &reason).await?;
    Ok(Json(json!({ "order_id": id, "service": "cancelled" })))
}

/// The order `raw` names: its id, else the storefront's reference.
async fn resolve(state: &AppState, raw: &str) -> Result<OrderId, ApiError> {
    if let Ok(id) = OrderId::parse(raw) {
        return Ok(id);
    }
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "no such order");
    let order_ref = OrderRef::parse(raw).map_err(|_| not_found())?;
    state
        .engine
        .queries()
        .order_by_ref(&order_ref)
        .await
        .map_err(ApiError::internal)?
        .map(|o| o.id)
        .ok_or_else(not_found)
}

/// A renewal as the API shows it.
pub(super) fn view(r: &Renewal) -> Value {
    json!({
        "id": r.id,
        "order_id": r.order_id,
        "renewal_ref": r.renewal_ref,
        "requested_by": r.requested_by,
        "state": r.state,
        "attempts": r.attempts,
        "expiry_before": r.expiry_before,
        "expiry_after": r.expiry_after,
        "created_at": r.created_at.to_string(),
        "finished_at": r.finished_at.map(|t| t.to_string()),
        "result": r.result,
    })
}
