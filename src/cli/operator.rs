//! The operator CLI behind `provisioner orders` and `provisioner catalog`: the same actions on
//! the configured database (through the engine's admin use cases, as the service would) or, with `--api URL`,
//! through a running service's admin API. Both give the same JSON, printed the same way.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::{CatalogAction, OrdersAction, PhaseArg, ResolveAction};
use crate::domain::{FieldError, OrderId, PackageId, Reason, ReasonError};
use crate::engine::admin::{AdminService, Resolve};
use crate::engine::catalog::Catalog;
use crate::engine::failed_queue::QueueItem;
use crate::engine::queries::{ListRequest, Lookup};
use crate::web::views::NotificationView;
use crate::web::{OrderView, percent_encode};

/// Who acts when the database is used directly and no `--actor` is given.
pub const DEFAULT_ACTOR: &str = "cli";

/// Where the orders are.
pub enum Backend {
    /// The configured database, through the engine's admin use cases.
    Database(AdminService),
    /// A running service's admin API.
    Api(ApiClient),
}

/// A client of the admin API.
pub struct ApiClient {
    /// One TLS stack (rustls, ring), as the SmartVPS client.
    http: reqwest::Client,
    /// The service's base URL, without a trailing `/`.
    base: String,
    /// The admin token; never printed.
    token: SecretString,
}

impl Backend {
    /// The admin API at `url` with `token`.
    ///
    /// # Errors
    /// When the URL is not http(s) or the HTTP stack cannot be built.
    pub fn api(url: &str, token: SecretString) -> anyhow::Result<Self> {
        let base = url.trim().trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!(
                "--api must be an http:// or https:// URL such as http://127.0.0.1:8080; got {base:?}"
            );
        }
        crate::provider::smartvps::client::install_crypto_provider();
        let http = reqwest::Client::builder()
            .tls_backend_rustls()
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("provisioner-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Self::Api(ApiClient { http, base, token }))
    }

    /// Runs one orders action and returns the API's JSON for it (for the database, the same
    /// JSON built locally).
    ///
    /// # Errors
    /// A refused action, a bad argument, a store or HTTP failure, each with the reason.
    pub async fn execute(&self, action: &OrdersAction) -> anyhow::Result<Value> {
        match self {
            Self::Database(admin) => database(admin, action).await,
            Self::Api(client) => client.execute(action).await,
        }
    }
}

fn list_params(action: &OrdersAction) -> Vec<(&'static str, String)> {
    match action {
        OrdersAction::List {
            state,
            package,
            from,
            to,
            limit,
            offset,
        } => {
            let mut p = vec![("limit", limit.to_string()), ("offset", offset.to_string())];
            for (k, v) in [
                ("state", state.clone()),
                ("package", package.map(|p| p.to_string())),
                ("from", from.clone()),
                ("to", to.clone()),
            ] {
                if let Some(v) = v {
                    p.push((k, v));
                }
            }
            p
        }
        OrdersAction::Search { text, limit } => {
            vec![("limit", limit.to_string()), ("q", text.clone())]
        }
        _ => Vec::new(),
    }
}

/// The order an operator named: its id, order_ref or short id.
async fn find(admin: &AdminService, name: &str) -> anyhow::Result<crate::domain::Order> {
    match admin.queries().find_order(name).await? {
        Lookup::Found(o) => Ok(*o),
        Lookup::NotFound => bail!(
            "no order {:?}: give its id, its order_ref or the short id the dashboard shows",
            name.trim()
        ),
        Lookup::Ambiguous(orders) => bail!(
            "{:?} ends several order ids ({}); give more of it",
            name.trim(),
            orders
                .iter()
                .map(|o| o.id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

async fn order_id(admin: &AdminService, name: &str) -> anyhow::Result<OrderId> {
    Ok(find(admin, name).await?.id)
}

fn counts_json(counts: crate::store::StateCounts) -> Value {
    let map: serde_json::Map<String, Value> = counts
        .into_iter()
        .map(|(s, n)| (s.as_str().to_string(), n.into()))
        .collect();
    Value::Object(map)
}

fn queue_json(items: &[QueueItem]) -> anyhow::Result<Value> {
    let n = |o: &str| items.iter().filter(|i| i.outcome == o).count();
    Ok(json!({
        "results": serde_json::to_value(items)?,
        "done": n("retried") + n("resolved"),
        "refused": n("refused"),
    }))
}

async fn database(admin: &AdminService, action: &OrdersAction) -> anyhow::Result<Value> {
    let store = admin.queries();
    let actor = |a: &Option<String>| a.clone().unwrap_or_else(|| DEFAULT_ACTOR.to_string());
    let view = |o: &crate::domain::Order| serde_json::to_value(OrderView::new(o, None, None));
    let flag = |e: FieldError| anyhow::anyhow!("--{}: {}", e.field.replace('_', "-"), e.message);
    Ok(match action {
        OrdersAction::List {
            state,
            package,
            from,
            to,
            limit,
            offset,
        } => {
            let filter = ListRequest {
                state: state.as_deref(),
                package: package.map(PackageId),
                from: from.as_deref(),
                to: to.as_deref(),
                limit: Some(*limit),
                offset: Some(*offset),
                query: None,
            }
            .filter()
            .map_err(flag)?;
            let orders = store.orders(&filter).await?;
            let views: Vec<OrderView> = orders
                .iter()
                .map(|o| OrderView::new(o, None, None))
                .collect();
            json!({ "orders": views, "counts": counts_json(store.state_counts().await?) })
        }
        OrdersAction::Search { text, limit } => {
            if text.trim().is_empty() {
                bail!("search text is empty: give part of an order_ref or email, or an IP");
            }
            let filter = ListRequest {
                limit: Some(*limit),
                query: Some(text.as_str()),
                ..ListRequest::default()
            }
            .filter()
            .map_err(flag)?;
            let orders = store.orders(&filter).await?;
            let views: Vec<OrderView> = orders
                .iter()
                .map(|o| OrderView::new(o, None, None))
                .collect();
            json!({ "orders": views, "counts": counts_json(store.state_counts().await?) })
        }
        OrdersAction::Show { id } => {
            let id = order_id(admin, id).await?;
            let d = store
                .order_detail(&id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no order {id}"))?;
            let mut v = OrderView::new(&d.order, Some(d.timeline), Some(d.purchases));
            if d.order.state == crate::domain::OrderState::NeedsAttention {
                v.candidates = Some(store.candidates(&id).await?);
            }
            v.notifications = Some(
                store
                    .deliveries(&id)
                    .await?
                    .iter()
                    .map(NotificationView::new)
                    .collect(),
            );
            v.expiry = store.expiry(&id).await?;
            let mut value = serde_json::to_value(v)?;
            value["renewals"] = serde_json::to_value(store.renewals(&id).await?)?;
            value
        }
        OrdersAction::Retry {
            id,
            reason,
            actor: a,
        } => view(
            &admin
                .retry(&order_id(admin, id).await?, &actor(a), reason)
                .await?,
        )?,
        OrdersAction::Resolve {
            id,
            action,
            ip,
            override_package_check,
            reason,
            actor: a,
        } => {
            let resolve = match action {
                ResolveAction::Adopt => {
                    Resolve::adopt(ip.as_deref(), *override_package_check).map_err(flag)?
                }
                ResolveAction::NotBought => Resolve::NotBought,
                ResolveAction::Fail => Resolve::Fail,
            };
            view(
                &admin
                    .resolve(&order_id(admin, id).await?, &actor(a), reason, resolve)
                    .await?,
            )?
        }
        OrdersAction::Cancel {
            id,
            reason,
            actor: a,
        } => view(
            &admin
                .cancel(&order_id(admin, id).await?, &actor(a), reason)
                .await?,
        )?,
        OrdersAction::RetryFailed {
            phase,
            reason,
            actor: a,
        } => queue_json(
            &admin
                .retry_failed(phase.map(PhaseArg::phase), &actor(a), reason)
                .await?,
        )?,
        OrdersAction::ResolveFailed {
            phase,
            reason,
            actor: a,
        } => queue_json(
            &admin
                .resolve_failed(phase.map(PhaseArg::phase), &actor(a), reason)
                .await?,
        )?,
        OrdersAction::Action {
            id,
            action,
            os,
            reason,
            actor: a,
        } => {
            let kind = crate::domain::ActionKind::parse(action, os.as_deref())
                .map_err(|why| anyhow::anyhow!("{why}"))?;
            let result = admin
                .request_action(&order_id(admin, id).await?, kind, &actor(a), reason)
                .await?;
            match crate::web::action_answer(result) {
                Ok(v) => v,
                Err(why) => bail!("{why}"),
            }
        }
        OrdersAction::Renew {
            id,
            reason,
            actor: a,
        } => {
            let taken = admin
                .renew(&order_id(admin, id).await?, &actor(a), reason)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            serde_json::to_value(taken.renewal)?
        }
        OrdersAction::CancelService {
            id,
            reason,
            actor: a,
        } => {
            let id = order_id(admin, id).await?;
            admin
                .cancel_service(&id, &format!("admin:{}", actor(a)), reason)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            json!({ "order_id": id, "service": "cancelled" })
        }
    })
}

impl ApiClient {
    async fn execute(&self, action: &OrdersAction) -> anyhow::Result<Value> {
        let given_actor = match action {
            OrdersAction::Retry { actor, .. }
            | OrdersAction::Resolve { actor, .. }
            | OrdersAction::Action { actor, .. }
            | OrdersAction::Cancel { actor, .. }
            | OrdersAction::RetryFailed { actor, .. }
            | OrdersAction::ResolveFailed { actor, .. }
            | OrdersAction::Renew { actor, .. }
            | OrdersAction::CancelService { actor, .. } => actor.is_some(),
            _ => false,
        };
        if given_actor {
            bail!(
                "--actor applies to the database only: through --api, the admin token's name is recorded"
            );
        }
        match action {
            OrdersAction::List { .. } | OrdersAction::Search { .. } => {
                let query: Vec<String> = list_params(action)
                    .into_iter()
                    .map(|(k, v)| format!("{k}={}", percent_encode(&v)))
                    .collect();
                self.get(&format!("/api/v1/orders?{}", query.join("&")))
                    .await
            }
            OrdersAction::Show { id } => {
                self.get(&format!("/api/v1/orders/{}", percent_encode(id.trim())))
                    .await
            }
            OrdersAction::Retry { id, reason, .. } => {
                self.act(id, "retry", json!({ "reason": reason })).await
            }
            OrdersAction::Resolve {
                id,
                action,
                ip,
                override_package_check,
                reason,
                ..
            } => {
                let mut body = json!({ "action": action.as_str(), "reason": reason });
                if let Some(ip) = ip {
                    body["ip"] = json!(ip);
                }
                if *override_package_check {
                    body["override_package_check"] = json!(true);
                }
                self.act(id, "resolve", body).await
            }
            OrdersAction::Cancel { id, reason, .. } => {
                self.act(id, "cancel", json!({ "reason": reason })).await
            }
            OrdersAction::RetryFailed { phase, reason, .. } => {
                self.queue(*phase, "retry", "retried", reason).await
            }
            OrdersAction::ResolveFailed { phase, reason, .. } => {
                self.queue(*phase, "cancel", "resolved", reason).await
            }
            OrdersAction::Action {
                id,
                action,
                os,
                reason,
                ..
            } => {
                let mut body = json!({ "action": action.replace('-', "_"), "reason": reason });
                if let Some(os) = os {
                    body["os"] = json!(os);
                }
                self.act(id, "actions", body).await
            }
            OrdersAction::Renew { id, reason, .. } => {
                self.act(id, "renew", json!({ "reason": reason })).await
            }
            OrdersAction::CancelService { id, reason, .. } => {
                self.act(id, "cancel-service", json!({ "reason": reason }))
                    .await
            }
        }
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// An action on the order `name` (an id, order_ref or short id: the order view resolves it).
    async fn act(&self, name: &str, verb: &str, body: Value) -> anyhow::Result<Value> {
        let id = match OrderId::parse(name.trim()) {
            Ok(id) => id.to_string(),
            Err(_) => {
                let order = self
                    .get(&format!("/api/v1/orders/{}", percent_encode(name.trim())))
                    .await?;
                order["id"]
                    .as_str()
                    .ok_or_else(|| anyhow::anyhow!("the order view has no id"))?
                    .to_string()
            }
        };
        self.call(
            reqwest::Method::POST,
            &format!("/api/v1/orders/{}/{verb}", percent_encode(&id)),
            Some(body),
        )
        .await
    }

    /// The failed queue through the API: every failed order of the phase, one action each.
    async fn queue(
        &self,
        phase: Option<PhaseArg>,
        verb: &str,
        done: &'static str,
        reason: &str,
    ) -> anyhow::Result<Value> {
        let reason = Reason::parse(reason).map_err(|e| match e {
            ReasonError::Empty => {
                anyhow::anyhow!("--reason is empty: say why, it goes in each order's timeline")
            }
            e => anyhow::anyhow!("--reason {e}"),
        })?;
        let mut failed = Vec::new();
        let mut offset = 0;
        loop {
            let page = self
                .get(&format!(
                    "/api/v1/orders?state=failed&limit=500&offset={offset}"
                ))
                .await?;
            let orders = page["orders"].as_array().cloned().unwrap_or_default();
            offset += orders.len();
            let full = orders.len() == 500;
            failed.extend(
                orders
                    .into_iter()
                    .filter(|o| phase.is_none_or(|p| o["failure"]["phase"] == p.phase().as_str())),
            );
            if !full {
                break;
            }
        }
        let mut results = Vec::new();
        for o in failed {
            let id = o["id"].as_str().unwrap_or_default().to_string();
            let mut item = json!({
                "id": id,
                "order_ref": o["order_ref"],
                "phase": o["failure"]["phase"],
                "state": o["state"],
            });
            if verb == "cancel" && o["server_ip"].is_string() {
                item["outcome"] = json!("refused");
                item["error"] = json!(format!(
                    "server {} is owned for this order: retry it, or cancel it on its own and release the server",
                    text(&o["server_ip"])
                ));
                results.push(item);
                continue;
            }
            let why = if verb == "cancel" {
                format!("resolved from the failed queue: {reason}")
            } else {
                reason.to_string()
            };
            match self.act(&id, verb, json!({ "reason": why })).await {
                Ok(after) => {
                    item["outcome"] = json!(done);
                    item["state"] = after["state"].clone();
                }
                Err(e) => {
                    item["outcome"] = json!("refused");
                    item["error"] = json!(e.to_string());
                }
            }
            results.push(item);
        }
        let n = |o: &str| results.iter().filter(|i| i["outcome"] == o).count();
        let (ok, refused) = (n(done), n("refused"));
        Ok(json!({ "results": results, "done": ok, "refused": refused }))
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method, &url)
            .bearer_auth(self.token.expose_secret());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("calling {}", self.base))?;
        let status = response.status();
        let text = response.text().await.context("reading the reply")?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let message = value["error"]
                .as_str()
                .map_or_else(|| value.to_string(), str::to_string);
            bail!("HTTP {status}: {message}");
        }
        Ok(value)
    }
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// A time as the CLI prints every time: `2026-05-01 10:00:00 UTC`, from the API's RFC 3339 text
/// (or milliseconds); `-` when absent.
pub fn human_time(v: &Value) -> String {
    let at = match v {
        Value::String(s) => humantime::parse_rfc3339_weak(s).ok(),
        Value::Number(n) => n
            .as_u64()
            .map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms)),
        _ => None,
    };
    match at {
        Some(t) => humantime::format_rfc3339_seconds(t)
            .to_string()
            .replace('T', " ")
            .replace('Z', " UTC"),
        None if v.is_null() => "-".to_string(),
        None => text(v),
    }
}

/// The short id the dashboard shows: the id's last 12 characters.
pub fn short_id(id: &str) -> &str {
    &id[id.len().saturating_sub(12)..]
}

fn order_table(v: &Value) -> String {
    let mut out = format!(
        "{:<12}  {:<20}  {:<20}  {:>7}  {:>3}  {:>3}  {:<15}  CREATED\n",
        "SHORT ID", "REF", "STATE", "PACKAGE", "BUY", "STA", "SERVER"
    );
    let orders = v["orders"].as_array().cloned().unwrap_or_default();
    for o in &orders {
        out.push_str(&format!(
            "{:<12}  {:<20}  {:<20}  {:>7}  {:>3}  {:>3}  {:<15}  {}\n",
            short_id(&text(&o["id"])),
            text(&o["order_ref"]),
            text(&o["state"]),
            text(&o["package"]),
            text(&o["attempts"]["buy"]),
            text(&o["attempts"]["status"]),
            o["server_ip"].as_str().unwrap_or("-"),
            human_time(&o["created_at"]),
        ));
    }
    if orders.is_empty() {
        out.push_str("(no orders match)\n");
    }
    if let Some(counts) = v["counts"].as_object() {
        let counts: Vec<String> = counts
            .iter()
            .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        out.push_str(&format!("counts: {}\n", counts.join(", ")));
    }
    out
}

fn show(v: &Value) -> String {
    let mut out = format!(
        "Order {}  (id {}, short id {})\n",
        text(&v["order_ref"]),
        text(&v["id"]),
        short_id(&text(&v["id"]))
    );
    let or_dash = |v: &Value| {
        if v.is_null() {
            "-".to_string()
        } else {
            text(v)
        }
    };
    let mut field = |k: &str, val: String| out.push_str(&format!("  {k:<11} {val}\n"));
    let state = match v["failure"]["phase"].as_str() {
        Some(phase) => format!("{} ({phase} phase)", text(&v["state"])),
        None => text(&v["state"]),
    };
    field("State", state);
    if !v["failure"].is_null() {
        field("Reason", text(&v["failure"]["reason"]));
    }
    field(
        "Customer",
        format!(
            "{} <{}>",
            text(&v["customer"]["name"]),
            text(&v["customer"]["email"])
        ),
    );
    field(
        "Package",
        format!(
            "{}, {} GB RAM, OS {}",
            text(&v["package"]),
            text(&v["ram_gb"]),
            or_dash(&v["os"])
        ),
    );
    field("Storefront", or_dash(&v["storefront"]));
    field("Server", or_dash(&v["server_ip"]));
    field(
        "Attempts",
        format!(
            "buy {}, status {}",
            text(&v["attempts"]["buy"]),
            text(&v["attempts"]["status"])
        ),
    );
    field("Created", human_time(&v["created_at"]));
    field("Updated", human_time(&v["updated_at"]));
    field("Ready", human_time(&v["ready_at"]));
    field("Next step", human_time(&v["run_at"]));
    out.push_str("\nTimeline\n");
    for e in v["timeline"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {}  {}\n",
            human_time(&e["at"]),
            text(&e["message"])
        ));
    }
    let purchases = v["purchases"].as_array().cloned().unwrap_or_default();
    out.push_str("\nPurchases\n");
    if purchases.is_empty() {
        out.push_str("  (none: nothing was sent to buyVps)\n");
    }
    for p in &purchases {
        let outcome = match p["outcome"]["kind"].as_str() {
            Some("succeeded") => format!("succeeded: {}", text(&p["outcome"]["ip"])),
            Some(kind) => format!("{kind}: {}", text(&p["outcome"]["reason"])),
            None => "no outcome yet (in flight)".to_string(),
        };
        out.push_str(&format!(
            "  #{} attempt {}  sent {}  {}\n",
            text(&p["id"]),
            text(&p["attempt"]),
            human_time(&p["sent_at"]),
            outcome
        ));
    }
    if let Some(candidates) = v["candidates"].as_array() {
        out.push_str("\nCandidates (servers a scan found; adopt one with `orders resolve --action adopt --ip`)\n");
        for c in candidates {
            out.push_str(&format!("  {}\n", text(&c["ip"])));
        }
    }
    let notes = v["notifications"].as_array().cloned().unwrap_or_default();
    out.push_str("\nNotifications\n");
    if notes.is_empty() {
        out.push_str("  (none yet)\n");
    }
    for n in &notes {
        out.push_str(&format!(
            "  #{:<4} {:<16} {:<18} {:<10} {:>2} attempt(s)  {}\n",
            text(&n["id"]),
            text(&n["notice"]),
            text(&n["channel"]),
            text(&n["state"]),
            text(&n["attempts"]),
            n["last_error"].as_str().unwrap_or("")
        ));
    }
    out
}

fn queue_table(v: &Value) -> String {
    let mut out = String::new();
    for r in v["results"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<12}  {:<20}  {:<9}  {}\n",
            short_id(&text(&r["id"])),
            text(&r["order_ref"]),
            text(&r["outcome"]),
            r["error"]
                .as_str()
                .map_or_else(|| format!("now {}", text(&r["state"])), str::to_string)
        ));
    }
    out.push_str(&format!(
        "{} done, {} refused\n",
        text(&v["done"]),
        text(&v["refused"])
    ));
    out
}

/// How the CLI prints an action's JSON.
pub fn render(action: &OrdersAction, v: &Value) -> String {
    match action {
        OrdersAction::List { .. } | OrdersAction::Search { .. } => order_table(v),
        OrdersAction::Show { .. } => show(v),
        OrdersAction::RetryFailed { .. } | OrdersAction::ResolveFailed { .. } => queue_table(v),
        OrdersAction::Action { .. } => format!(
            "{} queued on order {} as action #{}; a running `provisioner serve` works it (follow it with `orders show`)\n",
            text(&v["action"]["action"]),
            text(&v["action"]["order_id"]),
            text(&v["action"]["id"]),
        ),
        OrdersAction::Renew { .. } => format!(
            "renewal {} of order {} is {}; a running `provisioner serve` sends renewvps\n",
            text(&v["renewal_ref"]),
            text(&v["order_id"]),
            text(&v["state"]),
        ),
        OrdersAction::CancelService { .. } => format!(
            "order {}: service cancelled; it is not renewed and ends terminated at its expiry\n",
            text(&v["order_id"]),
        ),
        OrdersAction::Retry { .. } | OrdersAction::Resolve { .. } | OrdersAction::Cancel { .. } => {
            format!(
                "order {} ({}) is now {}{}\n",
                text(&v["order_ref"]),
                short_id(&text(&v["id"])),
                text(&v["state"]),
                if v["state"] == "cancelled" || v["state"] == "failed" {
                    ""
                } else {
                    "; a running `provisioner serve` picks it up"
                }
            )
        }
    }
}

/// Prints `text`, or `v` as JSON when `json` is set; a closed pipe (`| head`) ends quietly.
pub fn print(json: bool, v: &Value, text: impl FnOnce() -> String) {
    use std::io::Write as _;
    let out = if json {
        format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default())
    } else {
        text()
    };
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush());
}

/// `provisioner orders ...`: runs the action and prints it.
///
/// # Errors
/// As [`Backend::execute`].
pub async fn run(backend: Backend, action: OrdersAction, json: bool) -> anyhow::Result<ExitCode> {
    let v = backend.execute(&action).await?;
    print(json, &v, || render(&action, &v));
    // A bulk action that refused some orders did not do all it was asked.
    let refused = v["refused"].as_u64().unwrap_or(0);
    Ok(if refused > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `provisioner catalog sync|list`.
///
/// # Errors
/// When SmartVPS's stock list cannot be read (sync) or the store fails.
pub async fn catalog(
    catalog: &Catalog,
    action: CatalogAction,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let packages = match action {
        CatalogAction::Sync => catalog.sync().await?.packages,
        CatalogAction::List => catalog.packages().await?,
    };
    let v = crate::web::admin::catalog_json(&packages, catalog.low_stock());
    print(json, &v, || {
        let mut out = format!(
            "{:>5}  {:<16}  {:>5}  {:<8}  SYNCED\n",
            "PID", "NAME", "FREE", "STATUS"
        );
        for p in &packages {
            out.push_str(&format!(
                "{:>5}  {:<16}  {:>5}  {:<8}  {}{}\n",
                p.id,
                p.name,
                p.free,
                p.status(),
                human_time(&Value::String(p.synced_at.to_string())),
                if p.is_low(catalog.low_stock()) {
                    "  LOW STOCK"
                } else {
                    ""
                }
            ));
        }
        if packages.is_empty() {
            out.push_str("(empty: never synced; run `provisioner catalog sync`)\n");
        }
        out
    });
    Ok(ExitCode::SUCCESS)
}
