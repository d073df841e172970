//! JSON views of orders. No view carries a password (only the credentials endpoint does).

use serde::Serialize;

use crate::clock::Timestamp;
use crate::domain::{Customer, Failure, Order, OrderState, Purchase, TimelineEntry};

/// An order as the API shows it.
#[derive(Debug, Serialize)]
pub struct OrderView {
    /// Our id.
    pub id: String,
    /// The storefront's reference.
    pub order_ref: String,
    /// Current state.
    pub state: OrderState,
    /// Package (PID).
    pub package: u32,
    /// RAM in GB.
    pub ram_gb: u32,
    /// OS, when chosen.
    pub os: Option<String>,
    /// Who for.
    pub customer: Customer,
    /// The storefront that sent it, when known.
    pub storefront: Option<String>,
    /// Attempts in the current run of each phase.
    pub attempts: Attempts,
    /// The owned server's address.
    pub server_ip: Option<String>,
    /// Why it failed or needs attention.
    pub failure: Option<Failure>,
    /// When the engine next works on it.
    pub run_at: Option<String>,
    /// Accepted at.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// Ready at.
    pub ready_at: Option<String>,
    /// The server's `ExpiryDate` as status last gave it (`YYYY-MM-DD`), once known.
    pub expiry: Option<String>,
    /// Progress lines, oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Vec<EntryView>>,
    /// The purchase ledger.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purchases: Option<Vec<Purchase>>,
    /// Admin view of an order needing attention: the servers a discovery scan listed as
    /// candidates, each adoptable with `resolve` `{"action": "adopt", "ip": ...}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidates: Option<Vec<crate::domain::Discovered>>,
    /// The ordered OS by name (`Windows Server 2022`), when one was chosen.
    pub os_name: Option<&'static str>,
    /// What status last said about the server (power, OS, expiry), once it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerView>,
    /// Actions on the server (start, stop, reboot, reinstall, change OS), oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<ActionView>>,
    /// Admin view: every delivery of the order's notices (channel, state, attempts, last
    /// error), each resendable with `POST .../notifications/{id}/resend`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notifications: Option<Vec<NotificationView>>,
}

/// What status last said about a server.
#[derive(Debug, Serialize)]
pub struct ServerView {
    /// `Online` or `Offline`.
    pub power: Option<String>,
    /// The OS as status names it.
    pub os: Option<String>,
    /// `ExpiryDate`.
    pub expiry: Option<String>,
    /// `ActionStatus` (`pending` while an image installs).
    pub action_status: Option<String>,
    /// When status said it (RFC 3339).
    pub checked_at: Option<String>,
}

impl From<crate::domain::ServerFacts> for ServerView {
    fn from(f: crate::domain::ServerFacts) -> Self {
        Self {
            power: f.power,
            os: f.os,
            expiry: f.expiry,
            action_status: f.action_status,
            checked_at: f.checked_at.map(ts),
        }
    }
}

/// One action on a server.
#[derive(Debug, Serialize)]
pub struct ActionView {
    /// Its id.
    pub id: i64,
    /// The order (the server).
    pub order_id: String,
    /// start, stop, reboot, reinstall or change_os.
    pub action: &'static str,
    /// The image, for change_os (its `changeos` code).
    pub os: Option<&'static str>,
    /// pending, done or failed.
    pub state: crate::domain::ActionState,
    /// `customer`, `admin:<name>` or `provisioning`.
    pub requested_by: String,
    /// The admin's reason, if any.
    pub reason: Option<String>,
    /// The call in progress: start, stop, format, changeos, or install (waiting for the image).
    pub stage: &'static str,
    /// Calls of the current stage so far.
    pub attempts: u32,
    /// Asked at (RFC 3339).
    pub created_at: String,
    /// Ended at.
    pub finished_at: Option<String>,
    /// How it ended, in words.
    pub result: Option<String>,
}

impl From<&crate::domain::ServerAction> for ActionView {
    fn from(a: &crate::domain::ServerAction) -> Self {
        Self {
            id: a.id,
            order_id: a.order_id.to_string(),
            action: a.kind.as_str(),
            os: a.kind.os().map(crate::domain::Os::code),
            state: a.state,
            requested_by: a.requested_by.clone(),
            reason: a.reason.clone(),
            stage: a.stage.as_str(),
            attempts: a.attempts,
            created_at: ts(a.created_at),
            finished_at: a.finished_at.map(ts),
            result: a.result.clone(),
        }
    }
}

/// One delivery of a notice to one channel, as the admin API shows it.
#[derive(Debug, Serialize)]
pub struct NotificationView {
    /// Delivery id (what Resend names).
    pub id: i64,
    /// `email:customer`, `email:admin`, `webhook:<name>` or `log`.
    pub channel: String,
    /// The notice (`provisioning`, `ready`, `failed`, ...).
    pub notice: &'static str,
    /// Its webhook event name.
    pub event: &'static str,
    /// queued, retrying, delivered or abandoned.
    pub state: crate::store::DeliveryState,
    /// Attempts started.
    pub attempts: u32,
    /// The last failure (no secrets, no receiver reply bodies).
    pub last_error: Option<String>,
    /// Queued at (RFC 3339).
    pub created_at: String,
    /// Delivered at.
    pub delivered_at: Option<String>,
    /// Next attempt at, while retrying.
    pub next_at: Option<String>,
}

impl NotificationView {
    /// Whether it ended (delivered or abandoned), so Resend applies.
    pub fn resendable(&self) -> bool {
        matches!(
            self.state,
            crate::store::DeliveryState::Delivered | crate::store::DeliveryState::Abandoned
        )
    }

    /// The view of a delivery.
    pub fn new(d: &crate::store::DeliveryStatus) -> Self {
        Self {
            id: d.id,
            channel: d.channel.clone(),
            notice: d.kind.as_str(),
            event: d.kind.event(),
            state: d.state,
            attempts: d.attempts,
            last_error: d.last_error.clone(),
            created_at: ts(d.created_at),
            delivered_at: d.delivered_at.map(ts),
            next_at: d.next_at.map(ts),
        }
    }
}

/// Attempt counters.
#[derive(Debug, Serialize)]
pub struct Attempts {
    /// buyVps attempts.
    pub buy: u32,
    /// status attempts.
    pub status: u32,
}

/// One timeline line.
#[derive(Debug, Serialize)]
pub struct EntryView {
    /// When (RFC 3339).
    pub at: String,
    /// progress, warning or admin.
    pub kind: crate::domain::EntryKind,
    /// The line.
    pub message: String,
}

fn ts(t: Timestamp) -> String {
    t.to_string()
}

impl OrderView {
    /// The view of an order, with its timeline and ledger when given.
    pub fn new(
        o: &Order,
        timeline: Option<Vec<TimelineEntry>>,
        purchases: Option<Vec<Purchase>>,
    ) -> Self {
        Self {
            id: o.id.to_string(),
            order_ref: o.order_ref.as_str().to_string(),
            state: o.state,
            package: o.package_id.0,
            ram_gb: o.ram_gb.get(),
            os: o.os.clone(),
            customer: o.customer.clone(),
            storefront: o.storefront.clone(),
            attempts: Attempts {
                buy: o.buy_attempts,
                status: o.status_attempts,
            },
            server_ip: o.server_ip.map(|i| i.to_string()),
            failure: o.failure.clone(),
            run_at: o.run_at.map(ts),
            created_at: ts(o.created_at),
            updated_at: ts(o.updated_at),
            ready_at: o.ready_at.map(ts),
            expiry: None,
            timeline: timeline.map(|t| {
                t.into_iter()
                    .map(|e| EntryView {
                        at: ts(e.at),
                        kind: e.kind,
                        message: e.message,
                    })
                    .collect()
            }),
            purchases,
            candidates: None,
            os_name: o
                .os
                .as_deref()
                .and_then(|os| crate::domain::Os::parse(os).ok())
                .map(crate::domain::Os::name),
            server: None,
            actions: None,
            notifications: None,
        }
    }
}

/// Intake's answer: the order plus its customer access token, the same token on every answer
/// for the order. Only an authenticated storefront ever receives it; the store keeps its hash.
#[derive(Serialize)]
pub struct IntakeView {
    /// The order.
    #[serde(flatten)]
    pub order: OrderView,
    /// Bearer token for `GET /api/v1/orders/{id}` and `GET /api/v1/orders/{id}/credentials`.
    /// `null` only for an order whose token was issued before tokens were derived (or under
    /// another secret key): see `access_token_note`.
    pub access_token: Option<String>,
    /// Why `access_token` is null, and what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token_note: Option<&'static str>,
}

impl IntakeView {
    /// The view of a just accepted (or replayed) order with its token.
    pub fn new(order: &Order, token: Option<&secrecy::SecretString>) -> Self {
        Self {
            order: OrderView::new(order, None, None),
            access_token: token.map(|t| secrecy::ExposeSecret::expose_secret(t).to_string()),
            access_token_note: token.is_none().then_some(
                "this order's token cannot be handed out again without revoking the customer's; rotate it with \
                 POST /api/v1/orders/{id}/access-token to issue a new one",
            ),
        }
    }
}

impl std::fmt::Debug for IntakeView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntakeView")
            .field("order", &self.order)
            .field("access_token", &"[redacted]")
            .finish()
    }
}
