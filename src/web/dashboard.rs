//! The admin dashboard: server-rendered pages (askama templates in `templates/`), no script.
//!
//! - `GET /admin`: orders with state counts, filters and paging; `failed` and
//!   `needs_attention` stand out; low-stock packages in a banner.
//! - `GET /admin/orders/{id}`: facts, the actions that apply (retry, resolve, cancel, change an
//!   adopted address, mark resolved, each with a required reason), the timing chart, the
//!   purchase ledger, the timeline. Upstream errors show in plain words, the raw text behind a
//!   disclosure.
//! - `GET /admin/failed`: the failed queue, by phase, with Retry All and Mark Resolved (one
//!   reason for all); its count is a badge in every page's header, beside the outage banner
//!   (SmartVPS unreachable since when, how many orders failed since).
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

use super::access::order_id;
use super::admin::{parse_filter, parse_resolve};
use super::auth::{
    DashboardUser, LOGIN_CSRF_COOKIE, SESSION_COOKIE, SESSION_TTL, cookie, csrf_ok, set_cookie,
};
use super::chart::{self, Chart};
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
        .route("/admin/orders/{id}/server-action", post(server_action))
        .route("/admin/orders/{id}/mark-resolved", post(mark_resolved))
        .route("/admin/orders/{id}/address", post(change_address))
        .route("/admin/failed", get(failed_page))
        .route("/admin/failed/retry", post(retry_failed))
        .route("/admin/failed/mark-resolved", post(mark_resolved_failed))
        .route(
            "/admin/orders/{id}/notifications/{delivery}/resend",
            post(resend),
        )
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

/// What every signed-in page shows around its content: the failed queue's size as a badge in
/// the header, and the outage banner while SmartVPS is down.
#[derive(Default)]
struct Chrome {
    /// Orders in the failed state.
    failed: u64,
    /// SmartVPS is down, as this process's calls found it.
    outage: Option<Outage>,
}

/// The outage banner: "SmartVPS unreachable since 09:01 UTC, 3 orders failed".
struct Outage {
    /// When the outage started, `HH:MM UTC` (with the date when it is not today's).
    since: String,
    /// Orders that failed since then.
    failed: usize,
    /// Why, in plain words.
    words: String,
}

/// The chrome of a page, read now.
async fn chrome(state: &AppState) -> Result<Chrome, crate::store::StoreError> {
    let store = state.engine.queries();
    let failed = store
        .state_counts()
        .await?
        .into_iter()
        .find(|(s, _)| *s == OrderState::Failed)
        .map_or(0, |(_, n)| n);
    let health = state.health.snapshot();
    let outage = match (health.up, health.down_since) {
        (Some(false), Some(since)) => {
            let recent = store
                .orders(&OrderFilter {
                    state: Some(OrderState::Failed),
                    limit: Some(crate::engine::queries::MAX_PAGE_SIZE),
                    ..OrderFilter::default()
                })
                .await?;
            let now = time(state.engine.clock().now());
            let at = time(since);
            let since_text = if now.get(..10) == at.get(..10) {
                format!("{} UTC", at.get(11..16).unwrap_or(&at))
            } else {
                format!("{} UTC", at.get(..16).unwrap_or(&at))
            };
            Some(Outage {
                since: since_text,
                failed: recent.iter().filter(|o| o.updated_at >= since).count(),
                words: health.last_error.unwrap_or_default(),
            })
        }
        _ => None,
    };
    Ok(Chrome { failed, outage })
}

/// An upstream failure text split for display: plain words, and the raw detail for a
/// disclosure (see [`crate::provider::health::explain`]).
fn plain(text: &str) -> (String, Option<String>) {
    crate::provider::health::split_detail(text)
}

/// An address in package `name` to show as the resolve form's example: the name's octets, a
/// wildcard's first match, `.10` for the rest; `None` when that is not in the package.
fn example_address(name: &str) -> Option<String> {
    let package = crate::domain::PackageName::parse(name).ok()?;
    let mut octets: Vec<String> = name
        .split('.')
        .map(|o| match o.strip_suffix(['x', 'X']) {
            Some(prefix) => format!("{prefix}0"),
            None => o.to_string(),
        })
        .collect();
    while octets.len() < 4 {
        octets.push("10".into());
    }
    let ip: std::net::Ipv4Addr = octets.join(".").parse().ok()?;
    package.contains(ip).then(|| ip.to_string())
}

// ---------------------------------------------------------------------------------------------
// Login and logout.

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    user: String,
    csrf: String,
    chrome: Chrome,
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
            chrome: Chrome::default(),
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
    let verdict = state.throttle.judge(
        client,
        || {
            state
                .auth
                .authenticate(token.trim())
                .map(str::to_string)
                .ok_or(())
        },
        |()| true,
    );
    let name = match verdict {
        Ok(Ok(name)) => name,
        Err(throttled) => return throttled.into_response(),
        Ok(Err(())) => {
            tracing::warn!(client = %client, "dashboard login refused: invalid admin token");
            return login_form(
                &state,
                StatusCode::UNAUTHORIZED,
                Some("That token is not valid.".into()),
            );
        }
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
    order_ref: String,
    email: String,
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
    q: String,
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
    chrome: Chrome,
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
        q: get("q"),
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
    let (orders, counts, catalog, chrome) = match (
        store.orders(&filter).await,
        store.state_counts().await,
        state.catalog.packages().await,
        chrome(&state).await,
    ) {
        (Ok(o), Ok(c), Ok(p), Ok(h)) => (o, c, p, h),
        (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => {
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
            ("q", &form.q),
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
        chrome,
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
                order_ref: o.order_ref.as_str().to_string(),
                email: o.customer.email.clone(),
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
                    .map(|f| plain(&f.reason).0)
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
    /// The line, its upstream errors in plain words.
    message: String,
    /// The raw upstream error the words explain, for a disclosure.
    detail: Option<String>,
}

/// What an admin typed into the form that was refused, shown again so nothing is typed twice.
#[derive(Default)]
struct Sticky {
    /// The form submitted: `retry`, `resolve`, `cancel`, `address` or `mark-resolved`.
    form: &'static str,
    /// Its reason.
    reason: String,
    /// The resolve action chosen.
    action: String,
    /// The address typed.
    ip: String,
    /// The package-check override.
    override_package_check: bool,
    /// The server-check override (cancel).
    override_server_check: bool,
}

impl Sticky {
    /// The reason typed into `form`, if that form was the one submitted.
    fn reason_for(&self, form: &str) -> &str {
        if self.form == form { &self.reason } else { "" }
    }

    /// The address typed into `form`.
    fn ip_for(&self, form: &str) -> &str {
        if self.form == form { &self.ip } else { "" }
    }

    /// Whether the resolve action `action` was chosen.
    fn chose(&self, action: &str) -> bool {
        self.form == "resolve" && self.action == action
    }

    /// Whether `form`'s package-check override was ticked.
    fn package_override(&self, form: &str) -> bool {
        self.form == form && self.override_package_check
    }
}

struct PurchaseRow {
    id: i64,
    attempt: u32,
    package: String,
    stock_before: String,
    sent: String,
    outcome: String,
    /// The raw reply the outcome's words explain.
    outcome_detail: Option<String>,
    decided: String,
    resolution: String,
    late_ip: String,
}

#[derive(Template)]
#[template(path = "order.html")]
struct OrderPage {
    user: String,
    csrf: String,
    chrome: Chrome,
    order: OrderView,
    /// The failure reason in plain words, and its raw detail.
    failure: Option<(String, Option<String>)>,
    /// What the forms held when one was refused.
    sticky: Sticky,
    /// The resolve and address forms' example address, in the order's own package.
    example_ip: String,
    /// Why cancelling may leave a server bought: cancel then needs the override.
    cancel_evidence: Option<String>,
    /// The address was adopted by an admin and status never succeeded: it can be changed.
    can_change_address: bool,
    /// The order is failed: it can be marked resolved.
    can_mark_resolved: bool,
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
    /// Every delivery of the order's notices, each resendable once it ended (issue 15).
    notifications: Vec<super::views::NotificationView>,
    /// The server's state and its actions, once the order owns one.
    server_panel: Option<ServerPanel>,
}

/// The server section of an order's page: what status last said, the action buttons, and the
/// actions so far.
struct ServerPanel {
    power: String,
    os: String,
    expiry: String,
    checked: String,
    /// The pending action, in words, when one is in progress (the buttons are then disabled).
    pending: Option<String>,
    /// Whether actions can be asked for (the order is ready).
    can_act: bool,
    /// `changeos` codes and names, for the Change OS select.
    os_choices: Vec<(&'static str, &'static str)>,
    actions: Vec<ActionRow>,
}

struct ActionRow {
    id: i64,
    what: String,
    by: String,
    state: &'static str,
    asked: String,
    result: String,
}

/// The server panel of `order`, when it owns a server.
async fn server_panel(
    state: &AppState,
    order: &crate::domain::Order,
) -> Result<Option<ServerPanel>, ApiError> {
    if order.server_ip.is_none() {
        return Ok(None);
    }
    let queries = state.engine.queries();
    let facts = queries
        .server_facts(&order.id)
        .await
        .map_err(ApiError::internal)?
        .unwrap_or_default();
    let actions = queries
        .actions(&order.id)
        .await
        .map_err(ApiError::internal)?;
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let pending = actions.iter().find(|a| a.is_open()).map(|a| {
        format!(
            "{} (asked by {} at {}; now: {})",
            a.kind.describe(),
            a.requested_by,
            time(a.created_at),
            a.stage.as_str()
        )
    });
    Ok(Some(ServerPanel {
        power: dash(facts.power),
        os: dash(facts.os),
        expiry: dash(facts.expiry),
        checked: facts.checked_at.map_or_else(|| "-".into(), time),
        pending,
        can_act: order.state == OrderState::Ready,
        os_choices: crate::domain::Os::ALL
            .iter()
            .map(|os| (os.code(), os.name()))
            .collect(),
        actions: actions
            .iter()
            .rev()
            .map(|a| ActionRow {
                id: a.id,
                what: a.kind.describe(),
                by: a.requested_by.clone(),
                state: a.state.as_str(),
                asked: time(a.created_at),
                result: a.result.clone().unwrap_or_default(),
            })
            .collect(),
    }))
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
    /// Whether it is in another package than the order's (SmartVPS places a purchase there when
    /// the package asked for ran dry): its Adopt button overrides the package check, which the
    /// reason it sends says.
    other_package: bool,
}

fn purchase_row(origin: Timestamp, p: &Purchase) -> PurchaseRow {
    let (outcome, outcome_detail) = match &p.outcome {
        None => ("in flight".to_string(), None),
        Some(PurchaseOutcome::Succeeded { ip }) => (format!("succeeded: {ip}"), None),
        Some(PurchaseOutcome::Rejected { reason }) => {
            let (words, detail) = plain(reason);
            (format!("rejected: {words}"), detail)
        }
        Some(PurchaseOutcome::Unknown { reason }) => {
            let (words, detail) = plain(reason);
            (format!("unknown: {words}"), detail)
        }
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
        outcome_detail,
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
    sticky: Sticky,
) -> Response {
    let store = state.engine.queries();
    let (order, timeline, purchases, catalog, chrome) = match (
        store.order(id).await,
        store.timeline(id).await,
        store.purchases(id).await,
        store.catalog().await,
        chrome(state).await,
    ) {
        (Ok(Some(o)), Ok(t), Ok(p), Ok(c), Ok(h)) => (o, t, p, c, h),
        (Ok(None), ..) => {
            return (StatusCode::NOT_FOUND, Html(format!("<!doctype html><title>Not found</title><p>No order {id}. <a href=\"/admin\">All orders</a></p>"))).into_response();
        }
        (Err(e), ..)
        | (_, Err(e), ..)
        | (_, _, Err(e), ..)
        | (_, _, _, Err(e), _)
        | (.., Err(e)) => {
            return ApiError::internal(e).into_response();
        }
    };
    let expiry = match store.expiry(id).await {
        Ok(e) => e,
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let origin = order.created_at;
    let chart = chart::build(&order, &timeline, &purchases, state.engine.clock().now());
    // The order's own package: the name a purchase was sent with, else the catalog's, never
    // another package's.
    let package_name = purchases
        .iter()
        .rev()
        .find(|p| p.package_id == order.package_id)
        .map(|p| p.package_name.to_string())
        .or_else(|| {
            catalog
                .iter()
                .find(|p| p.id == order.package_id)
                .map(|p| p.name.clone())
        });
    let example_ip = package_name
        .as_deref()
        .and_then(example_address)
        .unwrap_or_default();
    let cancel_evidence = crate::engine::admin::server_evidence(&order, &purchases);
    let credentials_phase = match order.state {
        OrderState::AwaitingCredentials => true,
        OrderState::Failed => order
            .failure
            .as_ref()
            .is_some_and(|f| f.phase == crate::domain::Phase::Credentials),
        _ => false,
    };
    let can_change_address = credentials_phase
        && !timeline
            .iter()
            .any(|e| e.message.contains(crate::engine::admin::STATUS_SUCCEEDED))
        && order
            .server_ip
            .is_some_and(|ip| purchases.iter().all(|p| p.owned_ip() != Some(ip)));
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
                    other_package: d.package_id != order.package_id,
                })
                .collect(),
            Err(e) => return ApiError::internal(e).into_response(),
        }
    } else {
        Vec::new()
    };
    let server_panel = match server_panel(state, &order).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let notifications = match store.deliveries(id).await {
        Ok(list) => list
            .iter()
            .map(super::views::NotificationView::new)
            .collect(),
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let html = OrderPage {
        server_panel,
        notifications,
        candidates,
        user: user.name.clone(),
        csrf: user.csrf.expose_secret().to_string(),
        chrome,
        failure: order.failure.as_ref().map(|f| plain(&f.reason)),
        sticky,
        example_ip,
        cancel_evidence,
        can_change_address,
        can_mark_resolved: order.state == OrderState::Failed,
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
        can_cancel: order.state.is_cancellable(),
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
                detail: plain(&e.message).1,
                message: plain(&e.message).0,
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
        "server-action" => {
            "Queued: the action runs now; its progress is in the timeline.".to_string()
        }
        "mark-resolved" => "Marked resolved: the order left the failed queue.".to_string(),
        "address" => "Address changed: status polling starts again.".to_string(),
        "resend" => "Queued again: the Notifications list shows how it goes.".to_string(),
        "renew" => "Renewal queued: the engine sends renewvps.".to_string(),
        "cancel-service" => "Service cancelled: it ends at its expiry.".to_string(),
        _ => "Done.".to_string(),
    });
    render_order(
        &state,
        &user,
        &id,
        StatusCode::OK,
        notice,
        None,
        Sticky::default(),
    )
    .await
}

/// After an action: back to the order page (303, so a reload does not post again), or the page
/// with the refusal and its status.
async fn after(
    state: &AppState,
    user: &DashboardUser,
    id: &OrderId,
    sticky: Sticky,
    result: Result<(), ApiError>,
) -> Response {
    match result {
        Ok(()) => Redirect::to(&format!("/admin/orders/{id}?done={}", sticky.form)).into_response(),
        Err(e) => {
            let status = e.status();
            let message = e.message().to_string();
            render_order(state, user, id, status, None, Some(message), sticky).await
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
    let (engine, name) = (&state.engine, &user.name);
    reason_form(&state, &user, &id, form, "retry", |id, reason| async move {
        engine.retry(&id, name, &reason).await.map(|_| ())
    })
    .await
}

async fn mark_resolved(
    State(state): State<AppState>,
    user: DashboardUser,
    Path(id): Path<String>,
    Form(form): Form<ReasonForm>,
) -> Response {
    let (engine, name) = (&state.engine, &user.name);
    reason_form(
        &state,
        &user,
        &id,
        form,
        "mark-resolved",
        |id, reason| async move { engine.mark_resolved(&id, name, &reason).await.map(|_| ()) },
    )
    .await
}

/// An order form that carries only a reason: the CSRF and id gate, `act`, and back to the
/// order page (or the page again with the refusal and the reason as typed).
async fn reason_form<F, Fut, E>(
    state: &AppState,
    user: &DashboardUser,
    id: &str,
    form: ReasonForm,
    name: &'static str,
    act: F,
) -> Response
where
    F: FnOnce(OrderId, String) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    ApiError: From<E>,
{
    let id = match checked_order(user, form.csrf.as_deref(), id) {
        Ok(id) => id,
        Err(refused) => return refused.into_response(),
    };
    let reason = form.reason.unwrap_or_default();
    let result = act(id.clone(), reason.clone())
        .await
        .map_err(ApiError::from);
    let sticky = Sticky {
        form: name,
        reason,
        ..Sticky::default()
    };
    after(state, user, &id, sticky, result).await
}

/// The change-address form.
#[derive(Deserialize)]
struct AddressForm {
    csrf: Option<String>,
    reason: Option<String>,
    ip: Option<String>,
    override_package_check: Option<String>,
}

async fn change_address(
    State(state): State<AppState>,
    user: DashboardUser,
    Path(id): Path<String>,
    Form(form): Form<AddressForm>,
) -> Response {
    let id = match checked_order(&user, form.csrf.as_deref(), &id) {
        Ok(id) => id,
        Err(refused) => return refused.into_response(),
    };
    let reason = form.reason.unwrap_or_default();
    let ip_text = form.ip.unwrap_or_default();
    let override_package_check = form.override_package_check.is_some();
    let result = match crate::engine::admin::Resolve::adopt(Some(&ip_text), false) {
        Ok(crate::engine::admin::Resolve::Adopt { ip, .. }) => state
            .engine
            .change_address(&id, &user.name, &reason, ip, override_package_check)
            .await
            .map(|_| ())
            .map_err(ApiError::from),
        Ok(_) => Err(ApiError::field("ip", "is required")),
        Err(e) => Err(ApiError::field(&e.field, e.message)),
    };
    let sticky = Sticky {
        form: "address",
        reason,
        ip: ip_text,
        override_package_check,
        ..Sticky::default()
    };
    after(&state, &user, &id, sticky, result).await
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
    let sticky = Sticky {
        form: "resolve",
        reason: form.reason.unwrap_or_default(),
        action: form.action.unwrap_or_default(),
        ip: form.ip.unwrap_or_default(),
        override_package_check: form.override_package_check.is_some(),
        ..Sticky::default()
    };
    let result = match parse_resolve(
        &sticky.action,
        Some(&sticky.ip),
        sticky.override_package_check,
    ) {
        Ok(action) => state
            .engine
            .resolve(&id, &user.name, &sticky.reason, action)
            .await
            .map(|_| ())
            .map_err(ApiError::from),
        Err(e) => Err(ApiError::field(&e.field, e.message)),
    };
    after(&state, &user, &id, sticky, result).await
}

/// The cancel form.
#[derive(Deserialize)]
struct CancelForm {
    csrf: Option<String>,
    reason: Option<String>,
    override_server_check: Option<String>,
}

async fn cancel(
    State(state): State<AppState>,
    user: DashboardUser,
    Path(id): Path<String>,
    Form(form): Form<CancelForm>,
) -> Response {
    let id = match checked_order(&user, form.csrf.as_deref(), &id) {
        Ok(id) => id,
        Err(refused) => return refused.into_response(),
    };
    let reason = form.reason.unwrap_or_default();
    let override_server_check = form.override_server_check.is_some();
    let result = state
        .engine
        .cancel_with(&id, &user.name, &reason, override_server_check)
        .await
        .map(|_| ())
        .map_err(ApiError::from);
    let sticky = Sticky {
        form: "cancel",
        reason,
        override_server_check,
        ..Sticky::default()
    };
    after(&state, &user, &id, sticky, result).await
}

// ---------------------------------------------------------------------------------------------
// The failed queue.

struct FailedRow {
    id: String,
    order_ref: String,
    phase: &'static str,
    package: u32,
    server: String,
    failed_at: String,
    /// Why, in plain words.
    why: String,
    /// The raw upstream error behind the words.
    detail: Option<String>,
}

/// What a bulk action did, shown above the queue.
struct BulkResult {
    /// "Retried" or "Marked resolved".
    what: &'static str,
    /// How many orders it changed.
    done: usize,
    /// The orders it left, with why.
    refused: Vec<crate::engine::admin::BulkItem>,
}

#[derive(Template)]
#[template(path = "failed.html")]
struct FailedPage {
    user: String,
    csrf: String,
    chrome: Chrome,
    error: Option<String>,
    /// The phase shown (`buy`, `credentials` or empty for both).
    phase: String,
    /// The search shown.
    q: String,
    rows: Vec<FailedRow>,
    /// The list is cut at one page; the bulk actions still take every match.
    more: bool,
    result: Option<BulkResult>,
    /// The reason typed into a refused bulk form.
    reason: String,
}

/// The failed queue's filter, from the query string or a bulk form.
fn failed_filter(phase: &str, q: &str) -> Result<OrderFilter, crate::domain::FieldError> {
    let some = |t: &str| Some(t.to_string()).filter(|t| !t.trim().is_empty());
    Ok(OrderFilter {
        state: Some(OrderState::Failed),
        phase: crate::engine::queries::parse_phase("phase", some(phase).as_deref())?,
        search: crate::engine::queries::parse_search("q", some(q).as_deref())?,
        limit: Some(crate::engine::queries::MAX_PAGE_SIZE),
        ..OrderFilter::default()
    })
}

/// What the failed queue shows besides the orders: its filter, and after a form the outcome.
#[derive(Default)]
struct FailedView {
    /// The phase filter as given.
    phase: String,
    /// The search as given.
    q: String,
    /// A refusal to show.
    error: Option<(StatusCode, String)>,
    /// What a bulk action did.
    result: Option<BulkResult>,
    /// The reason typed into a refused bulk form.
    reason: String,
}

async fn render_failed(state: &AppState, user: &DashboardUser, view: FailedView) -> Response {
    let FailedView {
        phase,
        q,
        error,
        result,
        reason,
    } = view;
    let (status, error) = match error {
        Some((status, e)) => (status, Some(e)),
        None => (StatusCode::OK, None),
    };
    let (filter, error, status) = match failed_filter(&phase, &q) {
        Ok(f) => (f, error, status),
        Err(e) => (
            OrderFilter {
                state: Some(OrderState::Failed),
                ..OrderFilter::default()
            },
            Some(format!("{}: {}", e.field, e.message)),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    };
    let store = state.engine.queries();
    let (orders, chrome) = match (store.orders(&filter).await, chrome(state).await) {
        (Ok(o), Ok(c)) => (o, c),
        (Err(e), _) | (_, Err(e)) => return ApiError::internal(e).into_response(),
    };
    let more = orders.len() == filter.page_size();
    let rows = orders
        .iter()
        .map(|o| {
            let (why, detail) = o
                .failure
                .as_ref()
                .map_or_else(|| (String::new(), None), |f| plain(&f.reason));
            FailedRow {
                id: o.id.to_string(),
                order_ref: o.order_ref.as_str().to_string(),
                phase: o.failure.as_ref().map_or("", |f| f.phase.as_str()),
                package: o.package_id.0,
                server: o.server_ip.map_or_else(|| "-".into(), |i| i.to_string()),
                failed_at: time(o.updated_at),
                why,
                detail,
            }
        })
        .collect();
    let html = FailedPage {
        user: user.name.clone(),
        csrf: user.csrf.expose_secret().to_string(),
        chrome,
        error,
        phase,
        q,
        rows,
        more,
        result,
        reason,
    }
    .render();
    page(status, html)
}

async fn failed_page(
    State(state): State<AppState>,
    user: DashboardUser,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| params.get(k).cloned().unwrap_or_default();
    let view = FailedView {
        phase: get("phase"),
        q: get("q"),
        ..FailedView::default()
    };
    render_failed(&state, &user, view).await
}

/// The bulk forms: a reason, and the queue's filter as shown.
#[derive(Deserialize)]
struct BulkForm {
    csrf: Option<String>,
    reason: Option<String>,
    phase: Option<String>,
    q: Option<String>,
}

/// Which bulk action a form asks for.
#[derive(Clone, Copy)]
enum Bulk {
    Retry,
    MarkResolved,
}

async fn bulk(state: &AppState, user: &DashboardUser, form: BulkForm, action: Bulk) -> Response {
    if !csrf_ok(
        user.csrf.expose_secret(),
        form.csrf.as_deref().unwrap_or(""),
    ) {
        return forged();
    }
    let (phase, q) = (form.phase.unwrap_or_default(), form.q.unwrap_or_default());
    let reason = form.reason.unwrap_or_default();
    let filter = match failed_filter(&phase, &q) {
        Ok(f) => f,
        Err(e) => {
            let view = FailedView {
                phase,
                q,
                error: Some((
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("{}: {}", e.field, e.message),
                )),
                result: None,
                reason,
            };
            return render_failed(state, user, view).await;
        }
    };
    let (what, outcome) = match action {
        Bulk::Retry => (
            "Retried",
            state
                .engine
                .retry_failed(&filter, &user.name, &reason)
                .await,
        ),
        Bulk::MarkResolved => (
            "Marked resolved",
            state
                .engine
                .mark_resolved_failed(&filter, &user.name, &reason)
                .await,
        ),
    };
    let view = match outcome {
        Ok(summary) => FailedView {
            phase,
            q,
            result: Some(BulkResult {
                what,
                done: summary.done.len(),
                refused: summary.refused,
            }),
            ..FailedView::default()
        },
        Err(e) => {
            let e = ApiError::from(e);
            FailedView {
                phase,
                q,
                error: Some((e.status(), e.message().to_string())),
                result: None,
                reason,
            }
        }
    };
    render_failed(state, user, view).await
}

async fn retry_failed(
    State(state): State<AppState>,
    user: DashboardUser,
    Form(form): Form<BulkForm>,
) -> Response {
    bulk(&state, &user, form, Bulk::Retry).await
}

async fn mark_resolved_failed(
    State(state): State<AppState>,
    user: DashboardUser,
    Form(form): Form<BulkForm>,
) -> Response {
    bulk(&state, &user, form, Bulk::MarkResolved).await
}

/// The server action form.
#[derive(Deserialize)]
struct ServerActionForm {
    csrf: Option<String>,
    action: Option<String>,
    os: Option<String>,
    reason: Option<String>,
}

async fn server_action(
    State(state): State<AppState>,
    user: DashboardUser,
    Path(id): Path<String>,
    Form(form): Form<ServerActionForm>,
) -> Response {
    let id = match checked_order(&user, form.csrf.as_deref(), &id) {
        Ok(id) => id,
        Err(refused) => return refused.into_response(),
    };
    let reason = form.reason.unwrap_or_default().trim().to_string();
    let sticky = Sticky {
        form: "server-action",
        reason: reason.clone(),
        ..Sticky::default()
    };
    let result = match crate::domain::ActionKind::parse(
        form.action.as_deref().unwrap_or(""),
        form.os.as_deref(),
    ) {
        Err(why) => Err(ApiError::field("action", why)),
        Ok(_) if reason.is_empty() => Err(ApiError::field(
            "reason",
            "is required: say why, it goes in the timeline",
        )),
        Ok(kind) => match state
            .engine
            .request_action(&id, kind, &format!("admin:{}", user.name), Some(reason))
            .await
        {
            Ok(r) => super::actions::answer(r, state.engine.clock().now()).map(|_| ()),
            Err(e) => Err(ApiError::internal(e)),
        },
    };
    after(&state, &user, &id, sticky, result).await
}

/// Resend of one of the order's notifications (issue 15): CSRF-checked, reason optional.
async fn resend(
    State(state): State<AppState>,
    user: DashboardUser,
    Path((id, delivery)): Path<(String, String)>,
    Form(form): Form<ReasonForm>,
) -> Response {
    let id = match checked_order(&user, form.csrf.as_deref(), &id) {
        Ok(id) => id,
        Err(refused) => return refused.into_response(),
    };
    let Ok(delivery) = delivery.parse::<i64>() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let result = state
        .engine
        .admin()
        .resend(&id, delivery, &user.name, form.reason.as_deref())
        .await
        .map(|_| ())
        .map_err(ApiError::from);
    let sticky = Sticky {
        form: "resend",
        ..Sticky::default()
    };
    after(&state, &user, &id, sticky, result).await
}

async fn renew(
    State(state): State<AppState>,
    user: DashboardUser,
    Path(id): Path<String>,
    Form(form): Form<ReasonForm>,
) -> Response {
    let (engine, name) = (&state.engine, &user.name);
    reason_form(&state, &user, &id, form, "renew", |id, reason| async move {
        engine.admin_renewal(&id, name, &reason).await.map(|_| ())
    })
    .await
}

async fn cancel_service(
    State(state): State<AppState>,
    user: DashboardUser,
    Path(id): Path<String>,
    Form(form): Form<ReasonForm>,
) -> Response {
    let (engine, actor) = (&state.engine, format!("admin:{}", user.name));
    reason_form(
        &state,
        &user,
        &id,
        form,
        "cancel-service",
        |id, reason| async move { engine.cancel_service(&id, &actor, &reason).await },
    )
    .await
}

#[derive(Template)]
#[template(path = "expiring.html")]
struct ExpiringPage {
    chrome: Chrome,
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
        chrome: chrome(&state).await.unwrap_or_default(),
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
