//! Intake: validates the storefront's request field by field, so every refusal names its field,
//! and stores the order idempotently on `order_ref`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::views::OrderView;
use super::{ApiError, AppState};
use crate::domain::order::CustomerRequest;
use crate::domain::{NewOrder, OrderRequest};
use crate::store::Intake;

const TOP_KEYS: [&str; 5] = ["order_ref", "package", "ram_gb", "customer", "os"];
const CUSTOMER_KEYS: [&str; 2] = ["email", "name"];

/// `POST /api/v1/orders`: 201 for a new order, 200 for a replay of the same request, 409 when
/// the reference belongs to a different order, 400 for malformed JSON, 422 naming a bad field.
pub(super) async fn create_order(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))?;
    let request = parse_request(&value)?;
    let new = NewOrder::parse(&request).map_err(|e| ApiError::field(&e.field, e.message))?;
    match state.engine.accept(new).await.map_err(ApiError::internal)? {
        Intake::Created(order) => Ok((
            StatusCode::CREATED,
            Json(OrderView::new(&order, None, None)),
        )
            .into_response()),
        Intake::Existing(order) => {
            Ok((StatusCode::OK, Json(OrderView::new(&order, None, None))).into_response())
        }
        Intake::Conflict(order) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "order_ref {:?} already names order {} with different contents",
                order.order_ref.as_str(),
                order.id
            ),
        )),
    }
}

fn object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, ApiError> {
    v.as_object()
        .ok_or_else(|| ApiError::field(field, "must be a JSON object"))
}

fn no_unknown_keys(
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

fn string(obj: &Map<String, Value>, key: &str, field: &str) -> Result<String, ApiError> {
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
