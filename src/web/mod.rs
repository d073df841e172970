//! The axum router.
//!
//! - JSON API under `/api/v1` (every route in [`api_routes`], the one list the router and the
//!   OpenAPI document's test both read): intake, order detail, the customer credentials
//!   endpoint, the admin API (bearer token), the catalog, the OpenAPI document itself.
//! - The admin dashboard under `/admin`: server-rendered pages, cookie session, CSRF on forms.
//! - `GET /healthz` and `GET /metrics` (Prometheus text).
//!
//! Modules: [`auth`] (tokens, sessions, CSRF), [`storefront`] (signed intake), [`throttle`]
//! (failed authentication per client address), [`server`] (the HTTP server and its limits),
//! `intake`, `access` (who may read which order), `orders` (detail, credentials, token
//! rotation), `actions` (actions on an order's server), `renewals` (paid renewals, admin renew
//! and cancel-service), `admin` (admin JSON API), [`dashboard`] (pages), [`chart`] (the timing
//! chart), [`openapi`] (the document), [`views`] (JSON views).

pub mod auth;
pub mod chart;
pub mod dashboard;
pub mod openapi;
pub mod server;
pub mod storefront;
pub mod throttle;
pub mod views;

mod access;
mod actions;
pub use actions::action_answer;
pub(crate) mod admin;
mod intake;
mod orders;
mod renewals;

pub use views::OrderView;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde_json::json;

use crate::engine::Engine;
use crate::engine::catalog::Catalog;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The engine (its store and clock serve reads too).
    pub engine: Arc<Engine>,
    /// The package catalog intake checks orders against.
    pub catalog: Arc<Catalog>,
    /// SmartVPS's health as this process's calls found it.
    pub health: Arc<crate::provider::health::UpstreamHealth>,
    /// Admin tokens and dashboard sessions.
    pub auth: Arc<auth::AdminAuth>,
    /// The storefronts that may post orders.
    pub storefronts: Arc<storefront::StorefrontAuth>,
    /// Failed authentication per client address.
    pub throttle: Arc<throttle::Throttle>,
    /// The body timeout and size limit every request is read under.
    pub body_limits: server::BodyLimits,
}

/// Percent-encodes a query or form value: everything but RFC 3986's unreserved characters.
pub fn percent_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every JSON API route: method, path (axum syntax, which is also OpenAPI's) and handler.
/// The router is built from this list and the OpenAPI test compares the document with it, so a
/// route cannot be added to one and forgotten in the other.
pub fn api_routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![
        (Method::GET, "/healthz", get(healthz)),
        (Method::GET, "/api/v1/openapi.json", get(openapi::document)),
        (Method::POST, "/api/v1/orders", post(intake::create_order)),
        (Method::GET, "/api/v1/orders", get(admin::list_orders)),
        (Method::GET, "/api/v1/orders/{id}", get(orders::order)),
        (
            Method::GET,
            "/api/v1/orders/{id}/credentials",
            get(orders::credentials),
        ),
        (
            Method::POST,
            "/api/v1/orders/{id}/retry",
            post(admin::retry),
        ),
        (
            Method::POST,
            "/api/v1/orders/{id}/resolve",
            post(admin::resolve),
        ),
        (
            Method::POST,
            "/api/v1/orders/{id}/cancel",
            post(admin::cancel),
        ),
        (
            Method::POST,
            "/api/v1/orders/{id}/mark-resolved",
            post(admin::mark_resolved),
        ),
        (
            Method::POST,
            "/api/v1/orders/{id}/address",
            post(admin::change_address),
        ),
        (
            Method::POST,
            "/api/v1/failed/retry",
            post(admin::retry_failed),
        ),
        (
            Method::POST,
            "/api/v1/failed/mark-resolved",
            post(admin::mark_resolved_failed),
        ),
        (
            Method::POST,
            "/api/v1/orders/{id}/notifications/{delivery}/resend",
            post(admin::resend),
        ),
        (
            Method::POST,
            "/api/v1/orders/{id}/access-token",
            post(orders::rotate_token),
        ),
        (
            Method::POST,
            "/api/v1/orders/{id}/actions",
            post(actions::request),
        ),
        (
            Method::GET,
            "/api/v1/orders/{id}/actions",
            get(actions::list),
        ),
        (
            Method::POST,
            "/api/v1/orders/{id}/renewals",
            post(renewals::storefront_renewal),
        ),
        (
            Method::POST,
            "/api/v1/orders/{id}/renew",
            post(renewals::admin_renewal),
        ),
        (
            Method::POST,
            "/api/v1/orders/{id}/cancel-service",
            post(renewals::cancel_service),
        ),
        (Method::GET, "/api/v1/catalog", get(admin::catalog)),
        (
            Method::POST,
            "/api/v1/catalog/sync",
            post(admin::sync_catalog),
        ),
    ]
}

/// The router: the JSON API and the dashboard.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for (_, path, handler) in api_routes() {
        // Routes sharing a path (GET and POST /api/v1/orders) are merged by axum.
        router = router.route(path, handler);
    }
    let limits = state.body_limits;
    router
        .route("/metrics", get(metrics_text))
        .merge(dashboard::routes())
        .layer(axum::middleware::from_fn_with_state(
            limits,
            server::limit_body,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(limits.max_bytes))
        .with_state(state)
}

/// An API error: status plus a JSON body `{"error": ..., "field": ...}`. Internal causes are
/// logged, never sent. A 401 carries `WWW-Authenticate: Bearer`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
    /// Seconds for `Retry-After` (a 429).
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    pub(crate) fn field(field: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: message.into(),
            field: Some(field.to_string()),
            retry_after: None,
        }
    }

    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!("request failed: {e}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; the request was not lost if it was accepted, see the server log",
        )
    }

    /// 429 for a client address that failed authentication too often.
    pub(crate) fn throttled(retry_after_secs: u64) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "too many failed authentications from this address; retry in {retry_after_secs} s"
            ),
            field: None,
            retry_after: Some(retry_after_secs),
        }
    }

    /// 429 for a limit other than authentication, with its own message.
    pub(crate) fn too_many(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: message.into(),
            field: None,
            retry_after: Some(retry_after_secs),
        }
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message, without the field prefix.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<crate::engine::admin::AdminError> for ApiError {
    fn from(e: crate::engine::admin::AdminError) -> Self {
        use crate::engine::admin::AdminError;
        use crate::store::StoreError;
        match e {
            AdminError::NotFound(id) => Self::new(StatusCode::NOT_FOUND, format!("no order {id}")),
            AdminError::Refused(why) => Self::new(StatusCode::CONFLICT, why),
            AdminError::NoReason => {
                Self::field("reason", "is required: say why, it goes in the timeline")
            }
            AdminError::Invalid { field, message } => Self::field(field, message),
            AdminError::Store(StoreError::Conflict(id)) => Self::new(
                StatusCode::CONFLICT,
                format!(
                    "order {id} is being worked on or changed meanwhile; reload it and try again"
                ),
            ),
            AdminError::Store(e) => Self::internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.field {
            Some(f) => json!({ "error": format!("{f}: {}", self.message), "field": f }),
            None => json!({ "error": self.message }),
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

async fn healthz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let counts = state
        .engine
        .queries()
        .state_counts()
        .await
        .map_err(ApiError::internal)?;
    let orders: serde_json::Map<String, serde_json::Value> = counts
        .into_iter()
        .map(|(s, n)| (s.as_str().to_string(), n.into()))
        .collect();
    // The worker id is the name this process writes into leases (`orders.lease_owner`): it is
    // how an operator of several processes on one database maps leases to processes.
    // SmartVPS being down is not this process being down: still 200, with the outage said.
    let health = state.health.snapshot();
    let last_success: serde_json::Map<String, serde_json::Value> = health
        .operations
        .iter()
        .map(|(op, h)| (op.to_string(), json!(h.last_success.map(|t| t.to_string()))))
        .collect();
    Ok(Json(json!({
        "status": "ok",
        "worker": state.engine.worker_id(),
        "orders": orders,
        "upstream": health.summary(),
        "upstream_down_since": health.down_since.map(|t| t.to_string()),
        "upstream_last_success": last_success,
    })))
}

/// The upstream gauges, from this process's record of its calls.
fn upstream_gauges(health: &crate::provider::health::HealthSnapshot) {
    // Up until a call says otherwise: a process that has not called yet knows of no outage.
    let up = health.up.unwrap_or(true);
    metrics::gauge!("provisioner_upstream_up").set(if up { 1.0 } else { 0.0 });
    for (op, h) in &health.operations {
        if let Some(t) = h.last_success {
            metrics::gauge!("provisioner_upstream_last_success_timestamp_seconds", "operation" => *op)
                .set(t.0 as f64 / 1000.0);
        }
    }
}

/// Prometheus text: the process's counters and histograms, plus gauges read from the store now
/// (so every process behind a load balancer reports the shared database's truth).
async fn metrics_text(State(state): State<AppState>) -> Result<Response, ApiError> {
    let handle = crate::telemetry::metrics();
    let queries = state.engine.queries();
    for (s, n) in queries.state_counts().await.map_err(ApiError::internal)? {
        metrics::gauge!("provisioner_orders", "state" => s.as_str()).set(n as f64);
    }
    let backlog = queries.outbox_backlog().await.map_err(ApiError::internal)?;
    metrics::gauge!("provisioner_outbox_backlog").set(backlog as f64);
    upstream_gauges(&state.health.snapshot());
    // issue 15: stuck orders and stock, for docs/alerts.yml.
    let now = state.engine.clock().now();
    let overdue = queries
        .oldest_overdue(now)
        .await
        .map_err(ApiError::internal)?;
    metrics::gauge!("provisioner_oldest_overdue_seconds").set(overdue.as_secs_f64());
    // Packages still sold only: an inactive one at 0 is not running out.
    for p in state
        .catalog
        .packages()
        .await
        .map_err(ApiError::internal)?
        .into_iter()
        .filter(|p| p.active)
    {
        metrics::gauge!("provisioner_package_free", "package" => p.id.0.to_string(), "name" => p.name.clone())
            .set(f64::from(p.free));
    }
    metrics::gauge!("provisioner_package_low_stock_threshold")
        .set(f64::from(state.catalog.low_stock()));
    let content_type = [(
        axum::http::header::CONTENT_TYPE,
        "text/plain; version=0.0.4; charset=utf-8",
    )];
    Ok((content_type, handle.render()).into_response())
}
