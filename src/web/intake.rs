//! Intake: validates the storefront's request field by field, so every refusal names its field,
//! checks the package against the catalog, stores the order idempotently on `order_ref`, and
//! hands back the order's customer access token.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use secrecy::{ExposeSecret, SecretString};

use super::views::IntakeView;
use super::{ApiError, AppState};
use crate::crypto::{random_token, token_hash_hex};
use crate::domain::order::CustomerRequest;
use crate::domain::{NewOrder, Order, OrderRequest};
use crate::engine::catalog::{CatalogError, PackageCheck};
use crate::store::Intake;

const TOP_KEYS: [&str; 5] = ["order_ref", "package", "ram_gb", "customer", "os"];
const CUSTOMER_KEYS: [&str; 2] = ["email", "name"];

/// `POST /api/v1/orders`: 201 for a new order, 200 for a replay of the same request, 409 when
/// the reference belongs to a different order, 400 for malformed JSON, 422 naming a bad field
/// (an unknown or inactive package is a 422 on `package`), 503 when the catalog was never
/// synced and SmartVPS cannot be read. 201 and 200 carry the order's `access_token`.
///
/// A replay is answered before the catalog is consulted: the order was accepted when it was
/// posted first, and a webhook retried after its package sold out must still get its order back.
pub(super) async fn create_order(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))?;
    let request = parse_request(&value)?;
    let new = NewOrder::parse(&request).map_err(|e| ApiError::field(&e.field, e.message))?;
    let store = state.engine.store();
    if let Some(existing) = store
        .order_by_ref(&new.order_ref)
        .await
        .map_err(ApiError::internal)?
    {
        return replayed(&state, existing, &new).await;
    }
    match state.catalog.check(new.package_id).await {
        Ok(PackageCheck::Sellable(_)) => {}
        Ok(PackageCheck::Inactive(p)) => {
            return Err(ApiError::field(
                "package",
                format!(
                    "package {} ({}) is not active at SmartVPS: it cannot be bought now",
                    p.id, p.name
                ),
            ));
        }
        Ok(PackageCheck::Unknown { sold }) => {
            let sold: Vec<String> = sold.iter().map(ToString::to_string).collect();
            return Err(ApiError::field(
                "package",
                format!(
                    "unknown package {}; packages sold now: {}",
                    new.package_id,
                    if sold.is_empty() {
                        "none".to_string()
                    } else {
                        sold.join(", ")
                    }
                ),
            ));
        }
        Err(CatalogError::Unavailable(why)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the package catalog was never synced and SmartVPS's stock list cannot be read now ({why}); retry later"
                ),
            ));
        }
        Err(CatalogError::Store(e)) => return Err(ApiError::internal(e)),
    }
    match state
        .engine
        .accept(new.clone())
        .await
        .map_err(ApiError::internal)?
    {
        Intake::Created(order) => {
            let token = issue_token(&state, &order).await?;
            Ok((StatusCode::CREATED, Json(IntakeView::new(&order, &token))).into_response())
        }
        // Another request with this reference won the race since the lookup above.
        Intake::Existing(order) | Intake::Conflict(order) => replayed(&state, order, &new).await,
    }
}

/// The answer to a reference seen before: the same order (with a fresh access token, which
/// replaces the earlier one: a storefront replays because it lost the first answer) or 409.
async fn replayed(state: &AppState, existing: Order, new: &NewOrder) -> Result<Response, ApiError> {
    if existing.fingerprint != new.fingerprint() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "order_ref {:?} already names order {} with different contents",
                existing.order_ref.as_str(),
                existing.id
            ),
        ));
    }
    let token = issue_token(state, &existing).await?;
    Ok((StatusCode::OK, Json(IntakeView::new(&existing, &token))).into_response())
}

/// A fresh customer access token for the order; only its SHA-256 is stored.
async fn issue_token(state: &AppState, order: &Order) -> Result<SecretString, ApiError> {
    let token = random_token();
    state
        .engine
        .store()
        .set_access_token_hash(&order.id, &token_hash_hex(token.expose_secret()))
        .await
        .map_err(ApiError::internal)?;
    Ok(token)
}

fn object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, ApiError> {
    v.as_object()
        .ok_or_else(|| ApiError::field(field, "must be a JSON object"))
}

pub(super) fn no_unknown_keys(
    obj: &Map<String, Value>,
    allowed: &[&str],
    prefix: &str,
) -> Result<(), ApiError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::field(
            &format!("{prefix}{k}"),
            format!("unknown field; expected one of {}", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

pub(super) fn string(obj: &Map<String, Value>, key: &str, field: &str) -> Result<String, ApiError> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ApiError::field(field, "must be a string")),
        None => Err(ApiError::field(field, "is required")),
    }
}

fn integer(obj: &Map<String, Value>, key: &str) -> Result<i64, ApiError> {
    match obj.get(key) {
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| ApiError::field(key, "must be a whole number")),
        Some(_) => Err(ApiError::field(key, "must be a whole number")),
        None => Err(ApiError::field(key, "is required")),
    }
}

fn parse_request(v: &Value) -> Result<OrderRequest, ApiError> {
    let top = v.as_object().ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the body must be a JSON object",
        )
    })?;
    no_unknown_keys(top, &TOP_KEYS, "")?;
    let customer = object(
        top.get("customer")
            .ok_or_else(|| ApiError::field("customer", "is required"))?,
        "customer",
    )?;
    no_unknown_keys(customer, &CUSTOMER_KEYS, "customer.")?;
    let os = match top.get("os") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::field("os", "must be a string")),
    };
    Ok(OrderRequest {
        order_ref: string(top, "order_ref", "order_ref")?,
        package: integer(top, "package")?,
        ram_gb: integer(top, "ram_gb")?,
        customer: CustomerRequest {
            email: string(customer, "email", "customer.email")?,
            name: string(customer, "name", "customer.name")?,
        },
        os,
    })
}
