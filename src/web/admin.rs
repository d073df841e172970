//! The admin JSON API (bearer admin token): list orders with filters and paging, act on one
//! (retry, resolve, cancel: each needs a reason and records the admin's name), read and sync
//! the catalog.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::auth::Admin;
use super::intake::{body_object, no_unknown_keys, string};
use super::views::OrderView;
use super::{ApiError, AppState};
use crate::domain::{CatalogPackage, FieldError, PackageId};
use crate::engine::admin::BulkSummary;
pub use crate::engine::admin::parse_resolve;
use crate::engine::catalog::CatalogError;
use crate::engine::queries::{
    ListRequest, MAX_OFFSET, MAX_PAGE_SIZE, not_a_count, not_a_package, parse_phase, parse_search,
};
use crate::store::OrderFilter;

/// The list's query parameters. `q` searches order_ref, customer email, server address and
/// order id; `phase` keeps failed orders of one phase.
pub const FILTER_KEYS: [&str; 8] = [
    "state", "package", "from", "to", "limit", "offset", "q", "phase",
];

/// Parses the list's query parameters (see [`ListRequest`]): unknown keys are refused, empty
/// values count as absent, numbers are read from their text.
///
/// # Errors
/// The first bad parameter, named.
pub fn parse_filter(params: &HashMap<String, String>) -> Result<OrderFilter, FieldError> {
    if let Some(k) = params.keys().find(|k| !FILTER_KEYS.contains(&k.as_str())) {
        return Err(FieldError::new(
            k,
            format!(
                "unknown parameter; expected one of {}",
                FILTER_KEYS.join(", ")
            ),
        ));
    }
    let get = |k: &str| params.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let package = get("package")
        .map(|p| {
            p.parse::<u32>()
                .map(PackageId)
                .map_err(|_| not_a_package("package"))
        })
        .transpose()?;
    let count = |k: &'static str, max: usize| {
        get(k)
            .map(|v| v.parse::<usize>().map_err(|_| not_a_count(k, max)))
            .transpose()
    };
    let filter = ListRequest {
        state: get("state"),
        package,
        from: get("from"),
        to: get("to"),
        limit: count("limit", MAX_PAGE_SIZE)?,
        offset: count("offset", MAX_OFFSET)?,
        query: get("query"),
    }
    .filter()?;
    Ok(OrderFilter {
        search: parse_search("q", get("q"))?,
        phase: parse_phase("phase", get("phase"))?,
        ..filter
    })
}

/// `GET /api/v1/orders`: newest first, with filters, paging and the counts per state.
pub(super) async fn list_orders(
    _admin: Admin,
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let filter = parse_filter(&params).map_err(|e| ApiError::field(&e.field, e.message))?;
    let page = state
        .engine
        .queries()
        .order_page(&filter)
        .await
        .map_err(ApiError::internal)?;
    let counts: Map<String, Value> = page
        .counts
        .into_iter()
        .map(|(s, n)| (s.as_str().to_string(), n.into()))
        .collect();
    let views: Vec<OrderView> = page
        .orders
        .iter()
        .map(|o| OrderView::new(o, None, None))
        .collect();
    Ok(Json(json!({
        "orders": views,
        "counts": counts,
        "limit": page.limit,
        "offset": page.offset,
        "next_offset": page.next_offset,
    })))
}

fn reason_of(obj: &Map<String, Value>) -> Result<String, ApiError> {
    string(obj, "reason", "reason")
}

/// `POST /api/v1/orders/{id}/retry` with `{"reason"}`.
pub(super) async fn retry(
    Admin(admin): Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<OrderView>, ApiError> {
    // An admin may name the order by id, order_ref or short id.
    let id = super::access::find(&state, &id).await?.id;
    let obj = body_object(&body)?;
    no_unknown_keys(&obj, &["reason"], "")?;
    let order = state.engine.retry(&id, &admin, &reason_of(&obj)?).await?;
    Ok(Json(OrderView::new(&order, None, None)))
}

/// `POST /api/v1/orders/{id}/resolve` with `{"action": "adopt" | "not_bought" | "fail",
/// "reason", "ip"?, "override_package_check"?}`.
pub(super) async fn resolve(
    Admin(admin): Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<OrderView>, ApiError> {
    // An admin may name the order by id, order_ref or short id.
    let id = super::access::find(&state, &id).await?.id;
    let obj = body_object(&body)?;
    no_unknown_keys(&obj, &RESOLVE_KEYS, "")?;
    let reason = reason_of(&obj)?;
    let action = string(&obj, "action", "action")?;
    let ip = match obj.get("ip") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::field("ip", "must be a string")),
    };
    let override_package_check = match obj.get("override_package_check") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::field(
                "override_package_check",
                "must be true or false",
            ));
        }
    };
    let action = parse_resolve(&action, ip.as_deref(), override_package_check)
        .map_err(|e| ApiError::field(&e.field, e.message))?;
    let order = state.engine.resolve(&id, &admin, &reason, action).await?;
    Ok(Json(OrderView::new(&order, None, None)))
}

/// The resolve body's keys.
const RESOLVE_KEYS: [&str; 4] = ["action", "reason", "ip", "override_package_check"];

fn flag(obj: &Map<String, Value>, key: &str) -> Result<bool, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::field(key, "must be true or false")),
    }
}

/// `POST /api/v1/orders/{id}/cancel` with `{"reason", "override_server_check"?}`.
pub(super) async fn cancel(
    Admin(admin): Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<OrderView>, ApiError> {
    // An admin may name the order by id, order_ref or short id.
    let id = super::access::find(&state, &id).await?.id;
    let obj = body_object(&body)?;
    no_unknown_keys(&obj, &["reason", "override_server_check"], "")?;
    let override_server_check = flag(&obj, "override_server_check")?;
    let order = state
        .engine
        .cancel_with(&id, &admin, &reason_of(&obj)?, override_server_check)
        .await?;
    Ok(Json(OrderView::new(&order, None, None)))
}

/// `POST /api/v1/orders/{id}/mark-resolved` with `{"reason"}`.
pub(super) async fn mark_resolved(
    Admin(admin): Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<OrderView>, ApiError> {
    let id = super::access::find(&state, &id).await?.id;
    let obj = body_object(&body)?;
    no_unknown_keys(&obj, &["reason"], "")?;
    let order = state
        .engine
        .mark_resolved(&id, &admin, &reason_of(&obj)?)
        .await?;
    Ok(Json(OrderView::new(&order, None, None)))
}

/// `POST /api/v1/orders/{id}/address` with `{"reason", "ip", "override_package_check"?}`.
pub(super) async fn change_address(
    Admin(admin): Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<OrderView>, ApiError> {
    let id = super::access::find(&state, &id).await?.id;
    let obj = body_object(&body)?;
    no_unknown_keys(&obj, &["reason", "ip", "override_package_check"], "")?;
    let reason = reason_of(&obj)?;
    let ip = string(&obj, "ip", "ip")?;
    let ip = ip
        .trim()
        .parse()
        .map_err(|_| ApiError::field("ip", format!("{ip:?} is not an IPv4 address")))?;
    let order = state
        .engine
        .change_address(
            &id,
            &admin,
            &reason,
            ip,
            flag(&obj, "override_package_check")?,
        )
        .await?;
    Ok(Json(OrderView::new(&order, None, None)))
}

/// The bulk actions' body keys: the reason, and the filter of the failed orders they take.
const BULK_KEYS: [&str; 4] = ["reason", "phase", "package", "q"];

/// The failed orders a bulk action's body names: `phase`, `package` and `q` as in the list.
fn bulk_filter(obj: &Map<String, Value>) -> Result<OrderFilter, ApiError> {
    no_unknown_keys(obj, &BULK_KEYS, "")?;
    let text = |k: &str| match obj.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::field(k, "must be a string")),
    };
    let package = match obj.get("package") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(PackageId)
                .ok_or_else(|| ApiError::field("package", "must be a package id (PID)"))?,
        ),
        Some(_) => return Err(ApiError::field("package", "must be a package id (PID)")),
    };
    let field = |e: FieldError| ApiError::field(&e.field, e.message);
    Ok(OrderFilter {
        phase: parse_phase("phase", text("phase")?.as_deref()).map_err(field)?,
        search: parse_search("q", text("q")?.as_deref()).map_err(field)?,
        package,
        ..OrderFilter::default()
    })
}

/// `POST /api/v1/failed/retry` with `{"reason", "phase"?, "package"?, "q"?}`: retries every
/// failed order the filter matches.
pub(super) async fn retry_failed(
    Admin(admin): Admin,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<BulkSummary>, ApiError> {
    let (filter, reason) = bulk_request(&body)?;
    let summary = state.engine.retry_failed(&filter, &admin, &reason).await?;
    Ok(Json(summary))
}

/// `POST /api/v1/failed/mark-resolved` with `{"reason", "phase"?, "package"?, "q"?}`.
pub(super) async fn mark_resolved_failed(
    Admin(admin): Admin,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<BulkSummary>, ApiError> {
    let (filter, reason) = bulk_request(&body)?;
    let summary = state
        .engine
        .mark_resolved_failed(&filter, &admin, &reason)
        .await?;
    Ok(Json(summary))
}

/// A bulk action's body: which failed orders, and why.
fn bulk_request(body: &Bytes) -> Result<(OrderFilter, String), ApiError> {
    let obj = body_object(body)?;
    let filter = bulk_filter(&obj)?;
    Ok((filter, reason_of(&obj)?))
}

/// `POST /api/v1/orders/{id}/notifications/{delivery}/resend` with `{"reason"?}` (an empty body
/// too): queues the delivery again (issue 15).
pub(super) async fn resend(
    Admin(admin): Admin,
    State(state): State<AppState>,
    Path((id, delivery)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let order = super::access::find(&state, &id).await?;
    let delivery: i64 = delivery.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no notification {delivery:?}"),
        )
    })?;
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let obj = body_object(&body)?;
        no_unknown_keys(&obj, &["reason"], "")?;
        match obj.get("reason") {
            None | Some(Value::Null) => None,
            Some(Value::String(r)) => Some(r.clone()),
            Some(_) => return Err(ApiError::field("reason", "must be a string")),
        }
    };
    let key = state
        .engine
        .admin()
        .resend(&order.id, delivery, &admin, reason.as_deref())
        .await?;
    Ok(Json(
        json!({ "order_id": order.id, "delivery": delivery, "key": key }),
    ))
}

/// One catalog row as the API shows it.
#[derive(Serialize)]
pub(super) struct PackageView {
    /// PID.
    id: u32,
    /// Name.
    name: String,
    /// Free addresses at the last sync.
    free: u32,
    /// `active` or `inactive`.
    status: &'static str,
    /// At or below the low-stock threshold (and still sold).
    low_stock: bool,
    /// When it was read.
    synced_at: String,
}

pub(crate) fn catalog_json(packages: &[CatalogPackage], threshold: u32) -> Value {
    let rows: Vec<PackageView> = packages
        .iter()
        .map(|p| PackageView {
            id: p.id.0,
            name: p.name.clone(),
            free: p.free,
            status: p.status(),
            low_stock: p.is_low(threshold),
            synced_at: p.synced_at.to_string(),
        })
        .collect();
    json!({ "low_stock_threshold": threshold, "packages": rows })
}

/// `GET /api/v1/catalog`: the packages as last synced, low-stock ones flagged.
pub(super) async fn catalog(
    _admin: Admin,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    let packages = state.catalog.packages().await.map_err(ApiError::internal)?;
    Ok(Json(catalog_json(&packages, state.catalog.low_stock())))
}

/// `POST /api/v1/catalog/sync`: reads SmartVPS's stock list now; 502 when it cannot be read.
pub(super) async fn sync_catalog(
    Admin(admin): Admin,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    tracing::info!(admin = %admin, "catalog sync requested");
    match state.catalog.sync().await {
        Ok(report) => Ok(Json(catalog_json(
            &report.packages,
            state.catalog.low_stock(),
        ))),
        Err(CatalogError::Unavailable(why)) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!(
                "SmartVPS's stock list could not be read: {}; the stored catalog is unchanged",
                crate::provider::health::split_detail(&why).0
            ),
        )),
        Err(CatalogError::Store(e)) => Err(ApiError::internal(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use crate::domain::OrderState;
    use crate::engine::queries::parse_time;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn filters_parse_and_name_bad_fields() {
        let f = parse_filter(&params(&[
            ("state", "failed"),
            ("package", "5"),
            ("from", "2026-05-01"),
            ("to", "1000"),
            ("limit", "10"),
            ("offset", ""),
        ]))
        .unwrap();
        assert_eq!(f.state, Some(OrderState::Failed));
        assert_eq!(f.package, Some(PackageId(5)));
        assert_eq!(f.created_to, Some(Timestamp(1000)));
        assert_eq!(
            f.created_from,
            Some(parse_time("x", "2026-05-01T00:00:00Z").unwrap())
        );
        assert_eq!((f.limit, f.offset), (Some(10), None));
        for (k, v) in [
            ("state", "done"),
            ("package", "-1"),
            ("from", "yesterday"),
            ("limit", "0"),
            ("limit", "501"),
            ("sort", "x"),
        ] {
            assert_eq!(
                parse_filter(&params(&[(k, v)])).unwrap_err().field,
                k,
                "{k}={v}"
            );
        }
        assert_eq!(
            parse_time("t", "2026-05-01T10:00").unwrap(),
            parse_time("t", "2026-05-01T10:00:00Z").unwrap()
        );
    }
}
