//! The operator CLI behind `provisioner orders` and `provisioner catalog`: the same actions on
//! the configured database (through the engine's admin use cases, as the service would) or, with `--api URL`,
//! through a running service's admin API. Both give the same JSON, printed the same way.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::{CatalogAction, OrdersAction, ResolveAction};
use crate::domain::{FieldError, OrderId, PackageId};
use crate::engine::admin::{AdminService, Resolve};
use crate::engine::catalog::Catalog;
use crate::engine::queries::ListRequest;
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
    let OrdersAction::List {
        state,
        package,
        from,
        to,
        limit,
        offset,
    } = action
    else {
        return Vec::new();
    };
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

fn order_id(id: &str) -> anyhow::Result<OrderId> {
    OrderId::parse(id.trim()).map_err(|e| anyhow::anyhow!("{e}"))
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
            }
            .filter()
            .map_err(flag)?;
            let orders = store.orders(&filter).await?;
            let counts: serde_json::Map<String, Value> = store
                .state_counts()
                .await?
                .into_iter()
                .map(|(s, n)| (s.as_str().to_string(), n.into()))
                .collect();
            let views: Vec<OrderView> = orders
                .iter()
                .map(|o| OrderView::new(o, None, None))
                .collect();
            json!({ "orders": views, "counts": counts })
        }
        OrdersAction::Show { id } => {
            let id = order_id(id)?;
            let d = store
                .order_detail(&id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no order {id}"))?;
            let mut shown = OrderView::new(&d.order, Some(d.timeline), Some(d.purchases));
            shown.expiry = store.expiry(&id).await?;
            let mut value = serde_json::to_value(shown)?;
            value["renewals"] = serde_json::to_value(store.renewals(&id).await?)?;
            value
        }
        OrdersAction::Retry {
            id,
            reason,
            actor: a,
        } => view(&admin.retry(&order_id(id)?, &actor(a), reason).await?)?,
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
                    .resolve(&order_id(id)?, &actor(a), reason, resolve)
                    .await?,
            )?
        }
        OrdersAction::Cancel {
            id,
            reason,
            actor: a,
        } => view(&admin.cancel(&order_id(id)?, &actor(a), reason).await?)?,
        OrdersAction::Renew {
            id,
            reason,
            actor: a,
        } => {
            let taken = admin
                .renew(&order_id(id)?, &actor(a), reason)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            serde_json::to_value(taken.renewal)?
        }
        OrdersAction::CancelService {
            id,
            reason,
            actor: a,
        } => {
            let id = order_id(id)?;
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
            | OrdersAction::Cancel { actor, .. }
            | OrdersAction::Renew { actor, .. }
            | OrdersAction::CancelService { actor, .. } => actor.is_some(),
            _ => false,
        };
        if given_actor {
            bail!(
                "--actor applies to the database only: through --api, the admin token's name is recorded"
            );
        }
        let seg = |id: &str| percent_encode(id.trim());
        match action {
            OrdersAction::List { .. } => {
                let query: Vec<String> = list_params(action)
                    .into_iter()
                    .map(|(k, v)| format!("{k}={}", percent_encode(&v)))
                    .collect();
                self.call(
                    reqwest::Method::GET,
                    &format!("/api/v1/orders?{}", query.join("&")),
                    None,
                )
                .await
            }
            OrdersAction::Show { id } => {
                self.call(
                    reqwest::Method::GET,
                    &format!("/api/v1/orders/{}", seg(id)),
                    None,
                )
                .await
            }
            OrdersAction::Retry { id, reason, .. } => {
                self.call(
                    reqwest::Method::POST,
                    &format!("/api/v1/orders/{}/retry", seg(id)),
                    Some(json!({ "reason": reason })),
                )
                .await
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
                self.call(
                    reqwest::Method::POST,
                    &format!("/api/v1/orders/{}/resolve", seg(id)),
                    Some(body),
                )
                .await
            }
            OrdersAction::Cancel { id, reason, .. } => {
                self.call(
                    reqwest::Method::POST,
                    &format!("/api/v1/orders/{}/cancel", seg(id)),
                    Some(json!({ "reason": reason })),
                )
                .await
            }
            OrdersAction::Renew { id, reason, .. } => {
                self.call(
                    reqwest::Method::POST,
                    &format!("/api/v1/orders/{}/renew", seg(id)),
                    Some(json!({ "reason": reason })),
                )
                .await
            }
            OrdersAction::CancelService { id, reason, .. } => {
                self.call(
                    reqwest::Method::POST,
                    &format!("/api/v1/orders/{}/cancel-service", seg(id)),
                    Some(json!({ "reason": reason })),
                )
                .await
            }
        }
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

/// How the CLI prints an action's JSON.
pub fn render(action: &OrdersAction, v: &Value) -> String {
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    match action {
        OrdersAction::List { .. } => {
            let mut out = format!(
                "{:<36}  {:<20}  {:<20}  {:>7}  {:>3}  {:>3}  {:<15}  CREATED\n",
                "ID", "REF", "STATE", "PACKAGE", "BUY", "STA", "SERVER"
            );
            for o in v["orders"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "{:<36}  {:<20}  {:<20}  {:>7}  {:>3}  {:>3}  {:<15}  {}\n",
                    text(&o["id"]),
                    text(&o["order_ref"]),
                    text(&o["state"]),
                    text(&o["package"]),
                    text(&o["attempts"]["buy"]),
                    text(&o["attempts"]["status"]),
                    o["server_ip"].as_str().unwrap_or("-"),
                    text(&o["created_at"]),
                ));
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
        OrdersAction::Show { .. } => {
            format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default())
        }
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
                "order {} is now {}{}\n",
                text(&v["id"]),
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

/// `provisioner orders ...`: runs the action and prints it.
///
/// # Errors
/// As [`Backend::execute`].
pub async fn run(backend: Backend, action: OrdersAction) -> anyhow::Result<ExitCode> {
    let v = backend.execute(&action).await?;
    print!("{}", render(&action, &v));
    Ok(ExitCode::SUCCESS)
}

/// `provisioner catalog sync|list`.
///
/// # Errors
/// When SmartVPS's stock list cannot be read (sync) or the store fails.
pub async fn catalog(catalog: &Catalog, action: CatalogAction) -> anyhow::Result<ExitCode> {
    let packages = match action {
        CatalogAction::Sync => catalog.sync().await?.packages,
        CatalogAction::List => catalog.packages().await?,
    };
    println!(
        "{:>5}  {:<16}  {:>5}  {:<8}  SYNCED",
        "PID", "NAME", "FREE", "STATUS"
    );
    for p in &packages {
        println!(
            "{:>5}  {:<16}  {:>5}  {:<8}  {}{}",
            p.id,
            p.name,
            p.free,
            p.status(),
            p.synced_at,
            if p.is_low(catalog.low_stock()) {
                "  LOW STOCK"
            } else {
                ""
            }
        );
    }
    if packages.is_empty() {
        println!("(empty: never synced; run `provisioner catalog sync`)");
    }
    Ok(ExitCode::SUCCESS)
}
