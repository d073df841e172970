//! The admin dashboard: server-rendered pages (askama templates in `templates/`), no script.
//!
//! - `GET /admin`: orders with state counts, filters and paging; `failed` and
//!   `needs_attention` stand out; low-stock packages in a banner.
//! - `GET /admin/orders/{id}`: facts, the actions that apply (retry, resolve, cancel, each with a
//!   required reason), the timing chart, the purchase ledger, the timeline.
//! - `GET|POST /admin/login`, `POST /admin/logout`.
//!
//! Sessions are cookies (HttpOnly, SameSite=Strict, path `/admin`); every form carries the
//! session's CSRF token (the login form, which has no session yet, a double-submit cookie).
//! Pages are sent with a strict Content-Security-Policy and `Cache-Control: no-store`.

use super::throttle::ClientAddr;
use std::collections::HashMap;

use askama::Template;
use axum::Form;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::admin::{parse_filter, parse_resolve};
use super::auth::{
    DashboardUser, LOGIN_CSRF_COOKIE, SESSION_COOKIE, SESSION_TTL, cookie, csrf_ok, set_cookie,
};
use super::chart::{self, Chart};
use super::orders::order_id;
use super::views::OrderView;
use super::{ApiError, AppState, percent_encode};
use crate::clock::Timestamp;
use crate::crypto::random_token;
use crate::domain::{
    CatalogPackage, EntryKind, OrderId, OrderState, Purchase, PurchaseOutcome, Resolution,
};
use crate::store::OrderFilter;

/// The dashboard's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin", get(orders_page))
        .route("/admin/login", get(login_page).post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/orders/{id}", get(order_page))
        .route("/admin/orders/{id}/retry", post(retry))
        .route("/admin/orders/{id}/resolve", post(resolve))
        .route("/admin/orders/{id}/cancel", post(cancel))
        .route("/admin/orders/{id}/renew", post(renew))
        .route("/admin/orders/{id}/cancel-service", post(cancel_service))
        .route("/admin/expiring", get(expiring_page))
}

/// A rendered page with the dashboard's security headers.
fn page(status: StatusCode, html: Result<String, askama::Error>) -> Response {
    let html = match html {
        Ok(h) => h,
        Err(e) => return ApiError::internal(format!("rendering a page: {e}")).into_response(),
    };
    let mut r = (status, Html(html)).into_response();
    let h = r.headers_mut();
    // No script at all; inline styles only; forms post to this origin only; never framed.
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn time(t: Timestamp) -> String {
    // `2026-05-01T10:00:00.000Z` reads better as `2026-05-01 10:00:00`.
    let s = t.to_string();
    s.get(..19).map_or(s.clone(), |d| d.replace('T', " "))
}

// ---------------------------------------------------------------------------------------------
// Login and logout.

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    user: String,
    csrf: String,
    enabled: bool,
    error: Option<String>,
}

fn login_form(state: &AppState, status: StatusCode, error: Option<String>) -> Response {
    let csrf = random_token();
    let mut r = page(
        status,
        LoginPage {
            user: String::new(),
            csrf: csrf.expose_secret().to_string(),
            enabled: state.auth.enabled(),
            error,
        }
        .render(),
    );
    if let Ok(v) = HeaderValue::from_str(&set_cookie(
        LOGIN_CSRF_COOKIE,
        csrf.expose_secret(),
        std::time::Duration::from_secs(3600),
    )) {
        r.headers_mut().append(SET_COOKIE, v);
    }
    r
}

async fn login_page(State(state): State<AppState>) -> Response {
    login_form(&state, StatusCode::OK, None)
}

/// The login form.
#[derive(Deserialize)]
struct LoginForm {
    csrf: Option<String>,
    token: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if let Err(throttled) = state.throttle.check(client) {
        return throttled.into_response();
    }
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or("");
    let submitted = form.csrf.as_deref().unwrap_or("");
    if expected.is_empty() || !csrf_ok(expected, submitted) {
        return login_form(
            &state,
            StatusCode::FORBIDDEN,
            Some("The form expired or did not come from this site; try again.".into()),
        );
    }
    let token = form.token.unwrap_or_default();
    let Some(name) = state.auth.authenticate(token.trim()).map(str::to_string) else {
        tracing::warn!(client = %client, "dashboard login refused: invalid admin token");
        state.throttle.fail(client);
        return login_form(
            &state,
            StatusCode::UNAUTHORIZED,
            Some("That token is not valid.".into()),
        );
    };
    tracing::info!(admin = %name, "dashboard login");
    let session = state.auth.start_session(&name);
    let mut r = Redirect::to("/admin").into_response();
    for c in [
        set_cookie(SESSION_COOKIE, session.expose_secret(), SESSION_TTL),
        set_cookie(LOGIN_CSRF_COOKIE, "", std::time::Duration::ZERO),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            r.headers_mut().append(SET_COOKIE, v);
        }
    }
    r
}

/// A form that carries only the CSRF token and maybe a reason.
#[derive(Deserialize)]
struct ReasonForm {
    csrf: Option<String>,
    reason: Option<String>,
}

fn forged() -> Response {
    (
        StatusCode::FORBIDDEN,
        Html("<!doctype html><title>Forbidden</title><p>The form expired or did not come from this site. <a href=\"/admin\">Reload the dashboard</a> and try again.</p>"),
    )
        .into_response()
}

async fn logout(
    State(state): State<AppState>,
    user: DashboardUser,
    Form(form): Form<ReasonForm>,
) -> Response {
    if !csrf_ok(
        user.csrf.expose_secret(),
        form.csrf.as_deref().unwrap_or(""),
    ) {
        return forged();
    }
    state.auth.end_session(user.session_id.expose_secret());
    tracing::info!(admin = %user.name, "dashboard logout");
    let mut r = Redirect::to("/admin/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(SESSION_COOKIE, "", std::time::Duration::ZERO))
    {
        r.headers_mut().append(SET_COOKIE, v);
    }
    r
}

// ---------------------------------------------------------------------------------------------
// The orders table.

struct CountCell {
    state: &'static str,
    n: u64,
    class: String,
    href: String,
}

struct Row {
    id: String,
    short_id: String,
    order_ref: String,
    state: &'static str,
    row_class: &'static str,
    package: u32,
    buy: u32,
    status: u32,
    server: String,
    created: String,
    failure: String,
}

struct StateOption {
    value: &'static str,
    selected: bool,
}

/// The filter form's values, echoed back into the form and the paging links.
#[derive(Default)]
struct FilterForm {
    state: String,
    package: String,
    from: String,
    to: String,
    limit: String,
}

#[derive(Template)]
#[template(path = "orders.html")]
struct OrdersPage {
    user: String,
    csrf: String,
    error: Option<String>,
    low: Vec<CatalogPackage>,
    threshold: u32,
    total: u64,
    counts: Vec<CountCell>,
    states: Vec<StateOption>,
    filter: FilterForm,
    rows: Vec<Row>,
    prev_href: Option<String>,
    next_href: Option<String>,
}

fn href(params: &[(&str, &str)]) -> String {
    let q: Vec<String> = params
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect();
    if q.is_empty() {
        "/admin".into()
    } else {
        format!("/admin?{}", q.join("&"))
    }
}

async fn orders_page(
    State(state): State<AppState>,
    user: DashboardUser,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| params.get(k).cloned().unwrap_or_default();
    let form = FilterForm {
        state: get("state"),
        package: get("package"),
        from: get("from"),
        to: get("to"),
        limit: get("limit"),
    };
    let (filter, error, status) = match parse_filter(&params) {
        Ok(f) => (f, None, StatusCode::OK),
        Err(e) => (
            OrderFilter::default(),
            Some(format!("{}: {}", e.field, e.message)),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    };
    let store = state.engine.queries();
    let (orders, counts, catalog) = match (
        store.orders(&filter).await,
        store.state_counts().await,
        state.catalog.packages().await,
    ) {
        (Ok(o), Ok(c), Ok(p)) => (o, c, p),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return ApiError::internal(e).into_response();
        }
    };
    let threshold = state.catalog.low_stock();
    let offset = filter.offset.unwrap_or(0);
    let limit = filter.page_size();
    let limit_text = limit.to_string();
    let base = |off: usize| {
        let off = off.to_string();
        href(&[
            ("state", &form.state),
            ("package", &form.package),
            ("from", &form.from),
            ("to", &form.to),
            (
                "limit",
                if form.limit.is_empty() {
                    ""
                } else {
                    &limit_text
                },
            ),
            ("offset", if off == "0" { "" } else { &off }),
        ])
    };
    let prev_href = (offset > 0).then(|| base(offset.saturating_sub(limit)));
    let next_href = (orders.len() == limit).then(|| base(offset + limit));
    let page_html = OrdersPage {
        user: user.name.clone(),
        csrf: user.csrf.expose_secret().to_string(),
        error,
        low: catalog
            .into_iter()
            .filter(|p| p.is_low(threshold))
            .collect(),
        threshold,
        total: counts.iter().map(|(_, n)| n).sum(),
        counts: counts
            .iter()
            .map(|(s, n)| {
                let alarm = matches!(s, OrderState::Failed | OrderState::NeedsAttention) && *n > 0;
                let mut class = s.as_str().to_string();
                if alarm {
                    class.push_str(" alarm");
                }
                if form.state == s.as_str() {
                    class.push_str(" on");
                }
                CountCell {
                    state: s.as_str(),
                    n: *n,
                    class,
                    href: href(&[("state", s.as_str())]),
                }
            })
            .collect(),
        states: OrderState::ALL
            .iter()
            .map(|s| StateOption {
                value: s.as_str(),
                selected: form.state == s.as_str(),
            })
            .collect(),
        rows: orders
            .iter()
            .map(|o| Row {
                id: o.id.to_string(),
                short_id: o
                    .id
                    .as_str()
                    .chars()
                    .rev()
                    .take(12)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect(),
                order_ref: o.order_ref.as_str().to_string(),
                state: o.state.as_str(),
                row_class: match o.state {
                    OrderState::Failed => "attention failed",
                    OrderState::NeedsAttention => "attention needs_attention",
                    _ => "",
                },
                package: o.package_id.0,
                buy: o.buy_attempts,
                status: o.status_attempts,
                server: o.server_ip.map_or_else(|| "-".into(), |i| i.to_string()),
                created: time(o.created_at),
                failure: o
                    .failure
                    .as_ref()
                    .map(|f| f.reason.clone())
                    .unwrap_or_default(),
            })
            .collect(),
        filter: form,
        prev_href,
        next_href,
    }
    .render();
    page(status, page_html)
}

// ---------------------------------------------------------------------------------------------
// One order.

struct EntryRow {
    offset: String,
    at: String,
    kind: &'static str,
    message: String,
}

struct PurchaseRow {
    id: i64,
    attempt: u32,
    package: String,
    stock_before: String,
    sent: String,
    outcome: String,
    decided: String,
    resolution: String,
    late_ip: String,
}

#[derive(Template)]
#[template(path = "order.html")]
struct OrderPage {
    user: String,
    csrf: String,
    order: OrderView,
    state: &'static str,
    server: String,
    package_name: Option<String>,
    notice: Option<String>,
    error: Option<String>,
    can_retry: bool,
    retry_hint: String,
    can_resolve: bool,
    can_cancel: bool,
    /// A ready server: renew it or cancel its service (issue 14).
    can_renew: bool,
    chart: Chart,
    purchases: Vec<PurchaseRow>,
    timeline: Vec<EntryRow>,
    /// Servers a scan found that may be this order's, each with its own Adopt button.
    candidates: Vec<CandidateRow>,
}

/// A server a discovery scan listed for an order needing attention.
struct CandidateRow {
    /// Its address.
    ip: String,
    /// RAM as status reported it.
    ram: String,
    /// ExpiryDate as status reported it.
    expiry: String,
    /// When a scan first found it.
    first_seen: String,
}

fn purchase_row(origin: Timestamp, p: &Purchase) -> PurchaseRow {
    let outcome = match &p.outcome {
        None => "in flight".to_string(),
        Some(PurchaseOutcome::Succeeded { ip }) => format!("succeeded: {ip}"),
        Some(PurchaseOutcome::Rejected { reason }) => format!("rejected: {reason}"),
        Some(PurchaseOutcome::Unknown { reason }) => format!("unknown: {reason}"),
    };
    let resolution = match &p.resolution {
        None => String::new(),
        Some(Resolution::NotBought { evidence }) => format!("not bought: {evidence}"),
        Some(Resolution::Escalated { evidence }) => format!("escalated: {evidence}"),
        Some(Resolution::Adopted { ip }) => format!("adopted {ip}"),
        Some(Resolution::RetriedBlindly) => "retried blindly (unsafe policy)".into(),
    };
    PurchaseRow {
        id: p.id.0,
        attempt: p.attempt,
        package: format!("{} ({})", p.package_id, p.package_name),
        stock_before: p.stock_before.map_or_else(|| "-".into(), |n| n.to_string()),
        sent: format!("+{}", chart::offset_label(origin, p.sent_at)),
        outcome,
        decided: p.decided_at.map_or_else(String::new, |t| {
            format!("+{}", chart::offset_label(origin, t))
        }),
        resolution,
        late_ip: p.late_ip.map(|i| i.to_string()).unwrap_or_default(),
    }
}

/// Renders an order's page, with a notice (after a successful action) or an error.
async fn render_order(
    state: &AppState,
    user: &DashboardUser,
    id: &OrderId,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    let store = state.engine.queries();
    let (order, timeline, purchases, catalog) = match (
        store.order(id).await,
        store.timeline(id).await,
        store.purchases(id).await,
        store.catalog().await,
    ) {
        (Ok(Some(o)), Ok(t), Ok(p), Ok(c)) => (o, t, p, c),
        (Ok(None), ..) => {
            return (StatusCode::NOT_FOUND, Html(format!("<!doctype html><title>Not found</title><p>No order {id}. <a href=\"/admin\">All orders</a></p>"))).into_response();
        }
        (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => {
            return ApiError::internal(e).into_response();
        }
    };
    let expiry = match store.expiry(id).await {
        Ok(e) => e,
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let origin = order.created_at;
    let chart = chart::build(&order, &timeline, &purchases, state.engine.clock().now());
    let package_name = purchases
        .last()
        .map(|p| p.package_name.to_string())
        .or_else(|| {
            catalog
                .iter()
                .find(|p| p.id == order.package_id)
                .map(|p| p.name.clone())
        });
    let retry_hint = match order.server_ip {
        Some(ip) => format!("Resumes status polling of {ip}; nothing is bought."),
        None => "Restarts the buy phase with fresh attempts.".into(),
    };
    let candidates = if order.state == OrderState::NeedsAttention {
        match state.engine.queries().candidates(&order.id).await {
            Ok(list) => list
                .into_iter()
                .map(|d| CandidateRow {
                    ip: d.ip.to_string(),
                    ram: d.ram_gb.map_or_else(|| "?".into(), |r| format!("{r} GB")),
                    expiry: d.expiry.unwrap_or_else(|| "?".into()),
                    first_seen: time(d.first_seen),
                })
                .collect(),
            Err(e) => return ApiError::internal(e).into_response(),
        }
    } else {
        Vec::new()
    };
    let html = OrderPage {
        candidates,
        user: user.name.clone(),
        csrf: user.csrf.expose_secret().to_string(),
        state: order.state.as_str(),
        server: order
            .server_ip
            .map_or_else(|| "none owned".into(), |i| i.to_string()),
        package_name,
        notice,
        error,
        can_retry: order.state == OrderState::Failed,
        retry_hint,
        can_resolve: order.state == OrderState::NeedsAttention,
        can_cancel: !matches!(
            order.state,
            OrderState::Ready
                | OrderState::Cancelled
                | OrderState::Expired
                | OrderState::Terminated
        ),
        can_renew: order.state == OrderState::Ready,
        chart,
        purchases: purchases.iter().map(|p| purchase_row(origin, p)).collect(),
        timeline: timeline
            .into_iter()
            .map(|e| EntryRow {
                offset: format!("+{}", chart::offset_label(origin, e.at)),
                at: time(e.at),
                kind: match e.kind {
                    EntryKind::Progress => "progress",
                    EntryKind::Warning => "warning",
                    EntryKind::Admin => "admin",
                },
                message: e.message,
            })
            .collect(),
        order: OrderView {
            expiry,
            ..OrderView::new(&order, None, None)
        },
    }
    .render();
    page(status, html)
}

async fn order_page(
    State(state): State<AppState>,
    user: DashboardUser,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Ok(id) = order_id(&id) else {
        return (StatusCode::NOT_FOUND, Html("<!doctype html><title>Not found</title><p>No such order. <a href=\"/admin\">All orders</a></p>")).into_response();
    };
    let notice = q.get("done").map(|d| match d.as_str() {
        "retry" => "Retried: the order is back with the engine.".to_string(),
        "resolve" => "Resolved.".to_string(),
        "cancel" => "Cancelled.".to_string(),
        "renew" => "Renewal queued: the engine sends renewvps.".to_string(),
        "cancel-service" => "Service cancelled: it ends at its expiry.".to_string(),
        _ => "Done.".to_string(),
    });
    render_order(&state, &user, &id, StatusCode::OK, notice, None).await
}

/// After an action: back to the order page (303, so a reload does not post again), or the page
/// with the refusal and its status.
async fn after(
    state: &AppState,
    user: &DashboardUser,
    id: &OrderId,
    done: &str,
    result: Result<(), ApiError>,
) -> Response {
    match result {
        Ok(()) => Redirect::to(&format!("/admin/orders/{id}?done={done}")).into_response(),
        Err(e) => {
            let status = e.status();
            let message = e.message().to_string();
            render_order(state, user, id, status, None, Some(message)).await
        }
    }
}

/// Why an order action's form was refused before doing anything.
enum Refused {
    /// The form's CSRF token does not match the session's.
    Forged,
    /// The path does not name an order.
    NoSuchOrder,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Self::Forged => forged(),
            Self::NoSuchOrder => StatusCode::NOT_FOUND.into_response(),
        }
    }
}

/// An order action's common gate: the form's CSRF token must match the session's, and the path
/// must name an order id.
fn checked_order(user: &DashboardUser, csrf: Option<&str>, id: &str) -> Result<OrderId, Refused> {
    if !csrf_ok(user.csrf.expose_secret(), csrf.unwrap_or("")) {
        return Err(Refused::Forged);
    }
    order_id(id).map_err(|_| Refused::NoSuchOrder)
}

async fn retry(
    State(state): State<AppState>,
    user: DashboardUser,
    Path(id): Path<String>,
    Form(form): Form<ReasonForm>,
) -> Response {
    let id = match checked_order(&user, form.csrf.as_deref(), &id) {
        Ok(id) => id,
        Err(refused) => return refused.into_response(),
    };
    let reason = form.reason.unwrap_or_default();
    let result = state
        .engine
        .retry(&id, &user.name, &reason)
        .await
        .map(|_| ())
        .map_err(ApiError::from);
    after(&state, &user, &id, "retry", result).await
}

/// The resolve form.
#[derive(Deserialize)]
struct ResolveForm {
    csrf: Option<String>,
    reason: Option<String>,
    action: Option<String>,
    ip: Option<String>,
    override_package_check: Option<String>,
}

async fn resolve(
    State(state): State<AppState>,
    user: DashboardUser,
    Path(id): Path<String>,
    Form(form): Form<ResolveForm>,
) -> Response {
    let id = match checked_order(&user, form.csrf.as_deref(), &id) {
        Ok(id) => id,
        Err(refused) => return refused.into_response(),
    };
    let result = match parse_resolve(
        form.action.as_deref().unwrap_or(""),
        form.ip.as_deref(),
        form.override_package_check.is_some(),
    ) {
        Ok(action) => state
            .engine
            .resolve(
                &id,
                &user.name,
                form.reason.as_deref().unwrap_or(""),
                action,
            )
            .await
            .map(|_| ())
            .map_err(ApiError::from),
        Err(e) => Err(ApiError::field(&e.field, e.message)),
    };
    after(&state, &user, &id, "resolve", result).await
}

async fn cancel(
    State(state): State<AppState>,
    user: DashboardUser,
    Path(id): Path<String>,
    Form(form): Form<ReasonForm>,
) -> Response {
    let id = match checked_order(&user, form.csrf.as_deref(), &id) {
        Ok(id) => id,
        Err(refused) => return refused.into_response(),
    };
    let reason = form.reason.unwrap_or_default();
    let result = state
        .engine
        .cancel(&id, &user.name, &reason)
        .await
        .map(|_| ())
        .map_err(ApiError::from);
    after(&state, &user, &id, "cancel", result).await
}

async fn renew(
    State(state): State<AppState>,
    user: DashboardUser,
    Path(id): Path<String>,
    Form(form): Form<ReasonForm>,
) -> Response {
    let id = match checked_order(&user, form.csrf.as_deref(), &id) {
        Ok(id) => id,
        Err(refused) => return refused.into_response(),
    };
    let reason = form.reason.unwrap_or_default();
    let result = state
        .engine
        .admin_renewal(&id, &user.name, &reason)
        .await
        .map(|_| ())
        .map_err(ApiError::from);
    after(&state, &user, &id, "renew", result).await
}

async fn cancel_service(
    State(state): State<AppState>,
    user: DashboardUser,
    Path(id): Path<String>,
    Form(form): Form<ReasonForm>,
) -> Response {
    let id = match checked_order(&user, form.csrf.as_deref(), &id) {
        Ok(id) => id,
        Err(refused) => return refused.into_response(),
    };
    let reason = form.reason.unwrap_or_default();
    let actor = format!("admin:{}", user.name);
    let result = state
        .engine
        .cancel_service(&id, &actor, &reason)
        .await
        .map_err(ApiError::from);
    after(&state, &user, &id, "cancel-service", result).await
}

#[derive(Template)]
#[template(path = "expiring.html")]
struct ExpiringPage {
    user: String,
    csrf: String,
    until: String,
    within: String,
    rows: Vec<crate::store::Expiring>,
}

/// `GET /admin/expiring`: ready servers expiring within `policy.renew.remind_before`.
async fn expiring_page(State(state): State<AppState>, user: DashboardUser) -> Response {
    let within = state.engine.policy().server.renew.remind_before;
    let until = crate::engine::renewals::date(state.engine.clock().now().plus(within));
    let rows = match state.engine.queries().expiring(&until, 500).await {
        Ok(rows) => rows,
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let html = ExpiringPage {
        user: user.name.clone(),
        csrf: user.csrf.expose_secret().to_string(),
        until,
        within: crate::policy::describe_wait(within),
        rows,
    }
    .render();
    page(StatusCode::OK, html)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(percent_encode("2026-05-01T10:00"), "2026-05-01T10%3A00");
        assert_eq!(percent_encode("a b&c"), "a%20b%26c");
        assert_eq!(
            href(&[("state", "failed"), ("package", "")]),
            "/admin?state=failed"
        );
        assert_eq!(href(&[("state", "")]), "/admin");
    }
}
