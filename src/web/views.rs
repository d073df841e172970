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
