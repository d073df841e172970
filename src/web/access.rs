//! Who may read which order: an admin names any order by id, order_ref or short id; anyone else
//! shows the order's customer token. Shared by the order's reads ([`super::orders`]) and the
//! actions on its server ([`super::actions`]).
//!
//! To anyone but an admin, an unknown order, a malformed id and a wrong token get the same 401,
//! so order ids cannot be probed; every such failure counts against the client's address.

use std::net::IpAddr;

use axum::http::{HeaderMap, StatusCode};

use super::auth::{bearer, unauthorized};
use super::{ApiError, AppState};
use crate::domain::{Order, OrderId};

/// Who is reading an order.
pub(super) enum Viewer {
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

/// The order an admin names by id, order_ref or short id (404 when none or several match).
pub(super) async fn find(state: &AppState, raw: &str) -> Result<Order, ApiError> {
    use crate::engine::queries::Lookup;
    match state
        .engine
        .queries()
        .find_order(raw)
        .await
        .map_err(ApiError::internal)?
    {
        Lookup::Found(o) => Ok(*o),
        Lookup::NotFound => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no order {raw:?} (tried id, order_ref and short id)"),
        )),
        Lookup::Ambiguous(orders) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "{raw:?} is the end of several order ids ({}); give more of it",
                orders
                    .iter()
                    .map(|o| o.id.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Who is asking about order `raw`, and the order. Admins get 404 for an unknown order; anyone
/// else gets the one 401 whatever was wrong, counted against their address.
pub(super) async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    client: IpAddr,
    raw: &str,
) -> Result<(Viewer, Order), ApiError> {
    state.throttle.check(client)?;
    if let Some(name) = state.auth.admin_of(headers) {
        // Admins may name an order by id, order_ref or short id, as on the CLI.
        let order = find(state, raw).await?;
        return Ok((Viewer::Admin(name), order));
    }
    // Asking without a credential is not guessing one; a guess takes its try before it is
    // checked, so guesses checked concurrently cannot outrun the throttle.
    if bearer(headers).is_none() {
        return Err(unauthorized());
    }
    state.throttle.reserve(client)?;
    match customer_order(state, headers, raw).await? {
        Some(order) => {
            state.throttle.give_back(client);
            Ok((Viewer::Customer, order))
        }
        None => {
            metrics::counter!("provisioner_auth_failures_total").increment(1);
            Err(unauthorized())
        }
    }
}

/// The order, when the request's bearer token is its customer token.
async fn customer_order(
    state: &AppState,
    headers: &HeaderMap,
    raw: &str,
) -> Result<Option<Order>, ApiError> {
    let (Some(token), Ok(id)) = (bearer(headers), OrderId::parse(raw)) else {
        return Ok(None);
    };
    state
        .engine
        .queries()
        .customer_order(&id, token)
        .await
        .map_err(ApiError::internal)
}
