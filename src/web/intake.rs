//! Intake: authenticates the storefront, validates its request field by field (so every
//! refusal names its field), and hands the order to the engine's intake use case, which checks
//! the package, stores the order idempotently on `order_ref` and answers with the customer's
//! access token. The storefront check and the JSON-body readers here serve the storefront's
//! renewals and the admin API too.

use std::net::IpAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::storefront::Refusal;
use super::throttle::ClientAddr;
use super::views::IntakeView;
use super::{ApiError, AppState};
use crate::domain::order::CustomerRequest;
use crate::domain::{NewOrder, OrderRequest};
use crate::engine::intake::{IntakeError, take};

const TOP_KEYS: [&str; 5] = ["order_ref", "package", "ram_gb", "customer", "os"];
const CUSTOMER_KEYS: [&str; 2] = ["email", "name"];

/// `POST /api/v1/orders`, for a configured storefront only (signed, or its bearer secret): 201
/// for a new order, 200 for a replay of the same request (with the same working token), 409
/// when the reference belongs to a different order (or another storefront's), 400 for
/// malformed JSON, 415 unless the body is JSON, 401 for a missing, forged or stale signature
/// (429 after repeated failures), 422 naming a bad field (an unknown or inactive package is a
/// 422 on `package`), 503 when the catalog was never synced and SmartVPS cannot be read.
pub(super) async fn create_order(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let storefront = storefront_of(&state, client, &headers, &body, "intake")?;
    require_json(&headers)?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))?;
    let request = parse_request(&value)?;
    let new = NewOrder::parse(&request).map_err(|e| ApiError::field(&e.field, e.message))?;
    let taken = take(&state.engine, &state.catalog, new, &storefront)
        .await
        .map_err(|e| match e {
            IntakeError::Conflict { .. } | IntakeError::OtherStorefront { .. } => {
                ApiError::new(StatusCode::CONFLICT, e.to_string())
            }
            IntakeError::Package(why) => ApiError::field("package", why),
            IntakeError::CatalogUnavailable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            IntakeError::Store(e) => ApiError::internal(e),
        })?;
    let status = if taken.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(IntakeView::new(&taken.order, taken.token.as_ref())),
    )
        .into_response())
}

/// The storefront that signed a request (intake, or a renewal) from `client`, throttled:
/// 401 for a missing, forged or stale signature (429 after repeated failures), 503 when no
/// storefront is configured. `what` names the request in the log line of a refusal.
pub(super) fn storefront_of(
    state: &AppState,
    client: IpAddr,
    headers: &HeaderMap,
    body: &Bytes,
    what: &str,
) -> Result<String, ApiError> {
    // Asking without a credential is not guessing one.
    let verdict = state.throttle.judge(
        client,
        || state.storefronts.verify(headers, body).map(str::to_string),
        |refusal| *refusal != Refusal::Missing,
    )?;
    match verdict {
        Ok(name) => Ok(name),
        Err(refusal) => {
            tracing::warn!(client = %client, "{what} refused: {refusal}");
            let status = match refusal {
                Refusal::NoneConfigured => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::UNAUTHORIZED,
            };
            Err(ApiError::new(status, refusal.to_string()))
        }
    }
}

/// A request body that must be one JSON object: 400 when it is not JSON, 422 when it is
/// something else.
pub(super) fn body_object(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the body must be a JSON object",
        )),
    }
}

/// JSON only: `application/json`, or a `+json` type, with any parameters. A browser cannot send
/// these cross-site without a CORS preflight this server never grants, so no web page a person
/// opens can post orders with a plain form.
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let essence = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    match essence.as_deref() {
        Some(t)
            if t == "application/json"
                || (t.starts_with("application/") && t.ends_with("+json")) =>
        {
            Ok(())
        }
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON, sent with Content-Type: application/json",
        )),
    }
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
