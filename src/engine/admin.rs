//! Admin actions on orders: retry, resolve and cancel. Each one records who did it (the admin
//! token's name) and why (a required reason) in the timeline, and is applied with
//! [`Store::admin_save`](crate::store::Store::admin_save), which refuses while a worker holds the
//! order and fences out any stale worker afterwards.
//!
//! None of them ever buys: they only decide what the engine does next. So they need the store
//! and the clock, never the provider or the cipher: [`AdminService`] is all the operator CLI
//! opens on the database, and the engine hands its own out with its worker to wake.
//!
//! The operator's inputs (the resolve action here, the list filter in
//! [`super::queries::ListRequest`]) are parsed once here, typed, for the web API, the dashboard
//! and the CLI alike.

use std::net::Ipv4Addr;
use std::sync::Arc;

use tokio::sync::Notify;

use super::Engine;
use super::queries::Queries;
use crate::clock::Clock;
use crate::domain::{
    EntryKind, FieldError, NoticeKind, Order, OrderId, OrderState, PackageName, Phase, Purchase,
    Reason, ReasonError, Resolution, TimelineEntry,
};
use crate::store::{Change, OrderFilter, Store, StoreError};

/// The words of the engine's timeline line for a status call that read credentials.
pub(crate) const STATUS_SUCCEEDED: &str = "status succeeded";

/// Why an admin action was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No such order.
    #[error("no order {0}")]
    NotFound(OrderId),
    /// The action does not apply to the order as it is (HTTP 409).
    #[error("{0}")]
    Refused(String),
    /// A reason is required.
    #[error("a reason is required")]
    NoReason,
    /// An input is invalid (HTTP 422, naming the field).
    #[error("{field}: {message}")]
    Invalid {
        /// The request field at fault.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The store failed, or the order changed meanwhile ([`StoreError::Conflict`]).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How an admin settles an order that needs attention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolve {
    /// The server at `ip` is ours (found in the SmartVPS panel): continue to credentials.
    Adopt {
        /// The server's address.
        ip: Ipv4Addr,
        /// Accept an address outside the order's package. Only for an admin who knows why (the
        /// reason says it); the override is written to the timeline as a warning.
        override_package_check: bool,
    },
    /// Nothing was bought (checked in the SmartVPS panel): buy again with fresh attempts.
    NotBought,
    /// Give up: the order is failed.
    Fail,
}

impl Resolve {
    /// Adopting the server at `ip` (as typed: trimmed, required, an IPv4 address).
    ///
    /// # Errors
    /// A missing or malformed `ip`, on the field `ip`.
    pub fn adopt(ip: Option<&str>, override_package_check: bool) -> Result<Self, FieldError> {
        let ip = ip.map(str::trim).filter(|s| !s.is_empty()).ok_or_else(|| {
            FieldError::new(
                "ip",
                "is required to adopt: the address of the server we own",
            )
        })?;
        let ip = ip
            .parse()
            .map_err(|_| FieldError::new("ip", format!("{ip:?} is not an IPv4 address")))?;
        Ok(Self::Adopt {
            ip,
            override_package_check,
        })
    }

    /// The action's name in the API and the timeline.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Adopt { .. } => "adopt",
            Self::NotBought => "not_bought",
            Self::Fail => "fail",
        }
    }
}

/// Turns the resolve form's or body's fields into a [`Resolve`].
///
/// # Errors
/// An unknown action, or a missing or malformed `ip` for `adopt`.
pub fn parse_resolve(
    action: &str,
    ip: Option<&str>,
    override_package_check: bool,
) -> Result<Resolve, FieldError> {
    match action.trim() {
        "adopt" => Resolve::adopt(ip, override_package_check),
        "not_bought" => Ok(Resolve::NotBought),
        "fail" => Ok(Resolve::Fail),
        other => Err(FieldError::new(
            "action",
            format!("must be one of adopt, not_bought, fail; got {other:?}"),
        )),
    }
}

/// What a bulk action over failed orders did: the orders it changed and, one by one, those it
/// refused with why (a buy-phase retry whose purchase may have bought a server, an order a
/// worker holds right now). One refusal never stops the others.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BulkSummary {
    /// Orders changed.
    pub done: Vec<BulkItem>,
    /// Orders left as they were, each with why.
    pub refused: Vec<BulkItem>,
}

/// One order of a [`BulkSummary`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BulkItem {
    /// The order.
    pub id: OrderId,
    /// Its storefront reference, the name operators know it by.
    pub order_ref: String,
    /// Why it was refused; `None` for a changed order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// What [`Engine::retry_failed`] did.
pub type RetrySummary = BulkSummary;

/// The most failed orders one bulk action takes: a bound on one request's work, far above a
/// real outage's queue.
pub const MAX_BULK: usize = 5_000;

/// Why cancelling an order could leave a server bought and forgotten: purchases of its ledger
/// that may have bought one (an unknown outcome, even escalated), or the server it owns. `None`
/// when nothing suggests a server exists. The words are the evidence the dashboard and the API
/// show next to the override.
pub fn server_evidence(order: &Order, purchases: &[Purchase]) -> Option<String> {
    let mut evidence: Vec<String> = Vec::new();
    if let Some(ip) = order.server_ip {
        evidence.push(format!("the order owns server {ip}"));
    }
    for p in purchases {
        if let Some(ip) = p.owned_ip().filter(|ip| Some(*ip) != order.server_ip) {
            evidence.push(format!(
                "purchase #{} (attempt {}) bought {ip}",
                p.id, p.attempt
            ));
        } else if p.is_open_unknown() {
            let why = match &p.outcome {
                Some(crate::domain::PurchaseOutcome::Unknown { reason }) => reason.as_str(),
                _ => "no reply recorded",
            };
            evidence.push(format!(
                "purchase #{} (attempt {}, sent {}) has an unknown outcome ({why}): SmartVPS may have bought a server",
                p.id, p.attempt, p.sent_at
            ));
        }
    }
    (!evidence.is_empty()).then(|| evidence.join("; "))
}

/// The admin use cases over the store and the clock: retry, resolve, cancel, and the reads an
/// operator needs around them.
#[derive(Clone)]
pub struct AdminService {
    /// Orders and their ledger, changed with [`Store::admin_save`].
    pub(super) store: Arc<dyn Store>,
    /// The time written on timeline lines and against which leases are judged.
    pub(super) clock: Arc<dyn Clock>,
    /// The worker to wake after an action made an order due; `None` when no worker runs in
    /// this process (the CLI on the database: a running `serve` finds the order at its next poll).
    wake: Option<Arc<Notify>>,
    /// `policy.action.per_hour`, for actions asked for through the CLI on the database.
    actions_per_hour: u32,
}

/// `reason` as a [`Reason`], refused the way every admin action refuses it.
pub(super) fn check_reason(reason: &str) -> Result<Reason, AdminError> {
    Reason::parse(reason).map_err(|e| match e {
        ReasonError::Empty => AdminError::NoReason,
        e => AdminError::Invalid {
            field: "reason",
            message: e.to_string(),
        },
    })
}

fn admin_line(now: crate::clock::Timestamp, message: String) -> TimelineEntry {
    TimelineEntry {
        at: now,
        kind: EntryKind::Admin,
        message,
    }
}

fn warning(now: crate::clock::Timestamp, message: String) -> TimelineEntry {
    TimelineEntry {
        at: now,
        kind: EntryKind::Warning,
        message,
    }
}

/// The purchase that bought a server for this order (the latest), if the ledger shows one.
fn owning_purchase(purchases: &[Purchase]) -> Option<(&Purchase, Ipv4Addr)> {
    purchases
        .iter()
        .rev()
        .find_map(|p| p.owned_ip().map(|ip| (p, ip)))
}

impl Engine {
    /// The admin use cases on this engine's store and clock, waking its worker.
    pub fn admin(&self) -> AdminService {
        AdminService {
            store: Arc::clone(&self.store),
            clock: Arc::clone(&self.clock),
            wake: Some(self.waker()),
            actions_per_hour: self.policy.server.per_hour,
        }
    }

    /// Retries a failed order (see [`AdminService::retry`]).
    ///
    /// # Errors
    /// [`AdminError`] naming why.
    pub async fn retry(
        &self,
        id: &OrderId,
        actor: &str,
        reason: &str,
    ) -> Result<Order, AdminError> {
        self.admin().retry(id, actor, reason).await
    }

    /// Resolves an order that needs attention (see [`AdminService::resolve`]).
    ///
    /// # Errors
    /// [`AdminError`] naming why.
    pub async fn resolve(
        &self,
        id: &OrderId,
        actor: &str,
        reason: &str,
        action: Resolve,
    ) -> Result<Order, AdminError> {
        self.admin().resolve(id, actor, reason, action).await
    }

    /// Cancels an order (see [`AdminService::cancel`]).
    ///
    /// # Errors
    /// [`AdminError`] naming why.
    pub async fn cancel(
        &self,
        id: &OrderId,
        actor: &str,
        reason: &str,
    ) -> Result<Order, AdminError> {
        self.admin().cancel(id, actor, reason).await
    }

    /// Cancels an order, overriding the check that a server may have been bought (see
    /// [`AdminService::cancel_with`]).
    ///
    /// # Errors
    /// [`AdminError`] naming why.
    pub async fn cancel_with(
        &self,
        id: &OrderId,
        actor: &str,
        reason: &str,
        override_server_check: bool,
    ) -> Result<Order, AdminError> {
        self.admin()
            .cancel_with(id, actor, reason, override_server_check)
            .await
    }

    /// Retries every failed order `filter` matches, with one reason (see
    /// [`AdminService::retry_failed_matching`]).
    ///
    /// # Errors
    /// A bad reason, or the store failing to list the orders.
    pub async fn retry_failed(
        &self,
        filter: &OrderFilter,
        actor: &str,
        reason: &str,
    ) -> Result<RetrySummary, AdminError> {
        self.admin()
            .retry_failed_matching(filter, actor, reason)
            .await
    }

    /// Marks every failed order `filter` matches resolved, with one reason (see
    /// [`AdminService::mark_resolved_matching`]).
    ///
    /// # Errors
    /// A bad reason, or the store failing to list the orders.
    pub async fn mark_resolved_failed(
        &self,
        filter: &OrderFilter,
        actor: &str,
        reason: &str,
    ) -> Result<BulkSummary, AdminError> {
        self.admin()
            .mark_resolved_matching(filter, actor, reason)
            .await
    }

    /// Marks one failed order resolved (see [`AdminService::mark_resolved`]).
    ///
    /// # Errors
    /// [`AdminError`] naming why.
    pub async fn mark_resolved(
        &self,
        id: &OrderId,
        actor: &str,
        reason: &str,
    ) -> Result<Order, AdminError> {
        self.admin().mark_resolved(id, actor, reason).await
    }

    /// Replaces an admin-adopted address (see [`AdminService::change_address`]).
    ///
    /// # Errors
    /// [`AdminError`] naming why.
    pub async fn change_address(
        &self,
        id: &OrderId,
        actor: &str,
        reason: &str,
        ip: Ipv4Addr,
        override_package_check: bool,
    ) -> Result<Order, AdminError> {
        self.admin()
            .change_address(id, actor, reason, ip, override_package_check)
            .await
    }
}

impl AdminService {
    /// The admin use cases on `store`, with no worker to wake.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            wake: None,
            actions_per_hour: crate::policy::ServerPolicy::default().per_hour,
        }
    }

    /// With `policy.action.per_hour` from the configuration.
    pub fn with_actions_per_hour(mut self, per_hour: u32) -> Self {
        self.actions_per_hour = per_hour;
        self
    }

    /// An action on the server of order `id`, asked for by admin `actor` with a reason: stored
    /// as the service stores it (one at a time per server, the hourly limit); a running `serve`
    /// works it.
    ///
    /// # Errors
    /// No reason, or the store fails.
    pub async fn request_action(
        &self,
        id: &OrderId,
        kind: crate::domain::ActionKind,
        actor: &str,
        reason: &str,
    ) -> Result<crate::store::ActionRequest, AdminError> {
        let reason = check_reason(reason)?.to_string();
        let (action, entry) = super::actions::request_parts(
            id,
            kind,
            &format!("admin:{actor}"),
            Some(reason),
            self.clock.now(),
        );
        let result = self
            .store
            .request_action(&action, &entry, self.actions_per_hour)
            .await?;
        if let Some(wake) = &self.wake {
            wake.notify_one();
        }
        Ok(result)
    }

    /// The reads an operator makes around an action (no credentials: this service has no key).
    pub fn queries(&self) -> Queries {
        Queries::new(Arc::clone(&self.store))
    }

    /// Renews order `id`'s server for a month, with a reason (issue 14; see
    /// [`super::renewals::admin_renewal`]). A running worker applies it.
    ///
    /// # Errors
    /// [`super::renewals::RenewalError`] naming why.
    pub async fn renew(
        &self,
        id: &OrderId,
        actor: &str,
        reason: &str,
    ) -> Result<super::renewals::Taken, super::renewals::RenewalError> {
        let taken =
            super::renewals::admin_renewal(&*self.store, self.clock.now(), id, actor, reason)
                .await?;
        if let Some(wake) = &self.wake {
            wake.notify_one();
        }
        Ok(taken)
    }

    /// Cancels order `id`'s service (issue 14; see [`super::renewals::cancel_service`]).
    ///
    /// # Errors
    /// [`super::renewals::RenewalError`] naming why.
    pub async fn cancel_service(
        &self,
        id: &OrderId,
        actor: &str,
        reason: &str,
    ) -> Result<(), super::renewals::RenewalError> {
        super::renewals::cancel_service(&*self.store, self.clock.now(), id, actor, reason).await
    }

    async fn load(&self, id: &OrderId) -> Result<Order, AdminError> {
        self.store
            .order(id)
            .await?
            .ok_or_else(|| AdminError::NotFound(id.clone()))
    }

    /// The order `id`, when it is in `state`; otherwise refused, saying `only` what it must be.
    async fn load_in(
        &self,
        id: &OrderId,
        state: OrderState,
        only: &str,
    ) -> Result<Order, AdminError> {
        let order = self.load(id).await?;
        if order.state != state {
            return Err(AdminError::Refused(format!(
                "only {only}; this one is {}",
                order.state
            )));
        }
        Ok(order)
    }

    /// Saves an admin's change to `order` (read at `expected`), logs its lines and wakes the
    /// worker; the order as saved.
    async fn apply_admin(
        &self,
        order: Order,
        expected: crate::clock::Timestamp,
        change: Change,
    ) -> Result<Order, AdminError> {
        for e in &change.entries {
            tracing::info!(order_id = %order.id, "{}", e.message);
        }
        self.store
            .admin_save(&order, expected, self.clock.now(), change)
            .await?;
        if let Some(wake) = &self.wake {
            wake.notify_one();
        }
        Ok(order)
    }

    /// Retries a failed order: the buy phase when no server is owned, otherwise status polling
    /// of the owned address. A buy-phase retry is refused while any purchase's outcome is
    /// unknown (even escalated) or the ledger shows a server bought for the order: buying again
    /// could buy twice.
    ///
    /// # Errors
    /// [`AdminError`] naming why.
    pub async fn retry(
        &self,
        id: &OrderId,
        actor: &str,
        reason: &str,
    ) -> Result<Order, AdminError> {
        let reason = check_reason(reason)?;
        let mut order = self
            .load_in(id, OrderState::Failed, "a failed order can be retried")
            .await?;
        if order.server_ip.is_none() {
            let purchases = self.store.purchases(id).await?;
            if let Some(p) = purchases.iter().find(|p| p.is_open_unknown()) {
                return Err(AdminError::Refused(format!(
                    "buyVps attempt {} (purchase #{}) has an unknown outcome: a server may exist, so buying again could buy \
                     twice. Check the SmartVPS panel first",
                    p.attempt, p.id
                )));
            }
            if let Some((p, ip)) = owning_purchase(&purchases) {
                return Err(AdminError::Refused(format!(
                    "purchase #{} bought {ip} for this order: a server is owned, so the buy phase is not retried",
                    p.id
                )));
            }
        }
        let expected = order.updated_at;
        let now = self.clock.now();
        let phase = order
            .retry(now)
            .map_err(|e| AdminError::Refused(e.to_string()))?;
        let what = match phase {
            Phase::Buy => "the buy phase restarts with fresh attempts".to_string(),
            Phase::Credentials => format!(
                "status polling of {} resumes; nothing will be bought",
                order.server_ip.map(|i| i.to_string()).unwrap_or_default()
            ),
        };
        let change = Change {
            entries: vec![admin_line(
                now,
                format!("🔁 Retry by {actor}: {reason} ({what})"),
            )],
            notices: vec![NoticeKind::Resumed],
            ..Change::default()
        };
        self.apply_admin(order, expected, change).await
    }

    /// Resolves an order that needs attention (see [`Resolve`]).
    ///
    /// Adopting checks the address is not another order's and is in the order's package (unless
    /// overridden), settles the open purchase as adopted and moves on to credentials. Confirming
    /// nothing was bought settles the open purchase as not bought, with the admin's reason as the
    /// evidence, and restarts the buy phase; it is refused when the ledger shows a server bought
    /// for the order. Failing marks the order failed.
    ///
    /// # Errors
    /// [`AdminError`] naming why.
    pub async fn resolve(
        &self,
        id: &OrderId,
        actor: &str,
        reason: &str,
        action: Resolve,
    ) -> Result<Order, AdminError> {
        let reason = check_reason(reason)?;
        let mut order = self
            .load_in(
                id,
                OrderState::NeedsAttention,
                "an order that needs attention can be resolved",
            )
            .await?;
        let purchases = self.store.purchases(id).await?;
        let expected = order.updated_at;
        let now = self.clock.now();
        let mut entries = Vec::new();
        let mut change = Change::default();
        match action {
            Resolve::Adopt {
                ip,
                override_package_check,
            } => {
                if let Some(owner) = self.store.owner_of(ip).await?.filter(|o| o != id) {
                    return Err(AdminError::Refused(format!(
                        "{ip} belongs to order {owner}: one server is never delivered twice"
                    )));
                }
                let name = self.package_name(&order, &purchases).await?;
                match (&name, override_package_check) {
                    (Some(name), _) if name.contains(ip) => {}
                    (_, true) => entries.push(warning(
                        now,
                        format!(
                            "⚠️ {actor} overrode the package check: {ip} is adopted although it is not in package {}",
                            name.as_ref()
                                .map_or_else(|| "(unknown name)".to_string(), ToString::to_string)
                        ),
                    )),
                    (Some(name), false) => {
                        return Err(AdminError::Invalid {
                            field: "ip",
                            message: format!(
                                "{ip} is not in package {name}; if you are sure, set override_package_check and say why in \
                                 the reason"
                            ),
                        });
                    }
                    (None, false) => {
                        return Err(AdminError::Invalid {
                            field: "ip",
                            message: format!(
                                "the name of package {} is not known (no purchase, not in the catalog), so {ip} cannot be \
                                 checked against it; set override_package_check and say why in the reason",
                                order.package_id
                            ),
                        });
                    }
                }
                if let Some((p, other)) = owning_purchase(&purchases).filter(|(_, o)| *o != ip) {
                    entries.push(warning(
                        now,
                        format!(
                            "⚠️ purchase #{} bought {other} for this order and it stays owned: release it in the SmartVPS panel",
                            p.id
                        ),
                    ));
                }
                let target = purchases
                    .iter()
                    .rev()
                    .find(|p| p.is_open_unknown() || p.owned_ip() == Some(ip));
                order
                    .resolve_adopt(ip, now)
                    .map_err(|e| AdminError::Refused(e.to_string()))?;
                change.resolve = target.map(|p| (p.id, Resolution::Adopted { ip }));
                entries.insert(
                    0,
                    admin_line(
                        now,
                        format!(
                            "🛠️ Resolved by {actor}: {reason} (server {ip} adopted; status polling starts, nothing is bought)"
                        ),
                    ),
                );
            }
            Resolve::NotBought => {
                if let Some((p, ip)) = owning_purchase(&purchases) {
                    return Err(AdminError::Refused(format!(
                        "purchase #{} bought {ip} for this order, so \"nothing was bought\" cannot be confirmed: adopt it, or fail \
                         the order",
                        p.id
                    )));
                }
                let target = purchases.iter().rev().find(|p| p.is_open_unknown());
                order
                    .resolve_not_bought(now)
                    .map_err(|e| AdminError::Refused(e.to_string()))?;
                change.resolve = target.map(|p| {
                    (
                        p.id,
                        Resolution::NotBought {
                            evidence: format!("confirmed by {actor}: {reason}"),
                        },
                    )
                });
                entries.push(admin_line(
                    now,
                    format!(
                        "🛠️ Resolved by {actor}: {reason} (nothing was bought; the buy phase restarts with fresh attempts)"
                    ),
                ));
            }
            Resolve::Fail => {
                order
                    .resolve_fail(format!("failed by {actor}: {reason}"), now)
                    .map_err(|e| AdminError::Refused(e.to_string()))?;
                change.notices = vec![NoticeKind::Failed];
                entries.push(admin_line(
                    now,
                    format!("🛠️ Resolved by {actor}: {reason} (the order is failed)"),
                ));
            }
        }
        if order.state != OrderState::Failed {
            // Back to work: the storefront hears of it (issue 15).
            change.notices.push(NoticeKind::Resumed);
        }
        change.entries = entries;
        self.apply_admin(order, expected, change).await
    }

    /// Cancels an order, refusing when a server may have been bought for it (see
    /// [`AdminService::cancel_with`]).
    ///
    /// # Errors
    /// [`AdminError`] naming why.
    pub async fn cancel(
        &self,
        id: &OrderId,
        actor: &str,
        reason: &str,
    ) -> Result<Order, AdminError> {
        self.cancel_with(id, actor, reason, false).await
    }

    /// Cancels an order. Refused while a purchase is in flight or its unknown outcome is not
    /// settled: cancelling then could leave a server bought and nobody looking for it. When the
    /// ledger or the order shows a server was or may have been bought ([`server_evidence`]),
    /// it is refused with that evidence unless `override_server_check` is set; the evidence is
    /// then written to the timeline as a warning, so the server is looked for in the panel.
    ///
    /// # Errors
    /// [`AdminError`] naming why.
    pub async fn cancel_with(
        &self,
        id: &OrderId,
        actor: &str,
        reason: &str,
        override_server_check: bool,
    ) -> Result<Order, AdminError> {
        let reason = check_reason(reason)?;
        let mut order = self.load(id).await?;
        let purchases = self.store.purchases(id).await?;
        if let Some(p) = purchases.iter().find(|p| p.is_unsettled()) {
            return Err(AdminError::Refused(format!(
                "buyVps attempt {} (purchase #{}) is in flight or its outcome is unsettled: wait for it to be reconciled",
                p.attempt, p.id
            )));
        }
        let expected = order.updated_at;
        let now = self.clock.now();
        // The state's own refusal (ready, cancelled) comes first: no override makes it apply.
        order
            .cancel(now)
            .map_err(|e| AdminError::Refused(e.to_string()))?;
        let evidence = server_evidence(&order, &purchases);
        if let (Some(evidence), false) = (&evidence, override_server_check) {
            return Err(AdminError::Invalid {
                field: "override_server_check",
                message: format!(
                    "a server may have been bought for this order ({evidence}); cancelling leaves it bought and unwatched. \
                     Check the SmartVPS panel, then cancel with the override and say what you found in the reason"
                ),
            });
        }
        let mut entries = vec![admin_line(
            now,
            format!("🚫 Cancelled by {actor}: {reason}"),
        )];
        if let Some(evidence) = evidence {
            entries.push(warning(
                now,
                format!(
                    "⚠️ {actor} cancelled although a server may exist ({evidence}): release it in the SmartVPS panel"
                ),
            ));
        }
        // An install of the ordered OS still pending ends with the order, so no panel shows it
        // in progress (a cancelled order is never worked again).
        let action = self.store.open_action(id).await?.map(|mut a| {
            a.finish(
                crate::domain::ActionState::Failed,
                format!("the order was cancelled by {actor}"),
                now,
            );
            a
        });
        let change = Change {
            entries,
            action,
            // The storefront refunds or closes it, and the customer is told.
            notices: vec![NoticeKind::Cancelled],
            ..Change::default()
        };
        self.apply_admin(order, expected, change).await
    }

    /// Marks a failed order resolved: the admin settled it outside the engine (a refund, a
    /// server handed over by hand), so it leaves the failed queue as cancelled, with the reason
    /// in the timeline. Nothing is bought or retried. A server the order owns stays owned, and
    /// the timeline says so.
    ///
    /// # Errors
    /// [`AdminError`] naming why: unless failed, or while a purchase is unsettled.
    pub async fn mark_resolved(
        &self,
        id: &OrderId,
        actor: &str,
        reason: &str,
    ) -> Result<Order, AdminError> {
        let reason = check_reason(reason)?;
        let mut order = self
            .load_in(
                id,
                OrderState::Failed,
                "a failed order can be marked resolved",
            )
            .await?;
        let purchases = self.store.purchases(id).await?;
        if let Some(p) = purchases.iter().find(|p| p.is_unsettled()) {
            return Err(AdminError::Refused(format!(
                "buyVps attempt {} (purchase #{}) is unsettled: wait for it to be reconciled",
                p.attempt, p.id
            )));
        }
        let expected = order.updated_at;
        let now = self.clock.now();
        order
            .cancel(now)
            .map_err(|e| AdminError::Refused(e.to_string()))?;
        let mut entries = vec![admin_line(
            now,
            format!(
                "✅ Marked resolved by {actor}: {reason} (closed as cancelled; nothing is bought or retried)"
            ),
        )];
        if let Some(evidence) = server_evidence(&order, &purchases) {
            entries.push(warning(
                now,
                format!("⚠️ a server may still be owned ({evidence}): release it in the SmartVPS panel if nobody uses it"),
            ));
        }
        let change = Change {
            entries,
            notices: vec![NoticeKind::Cancelled],
            ..Change::default()
        };
        self.apply_admin(order, expected, change).await
    }

    /// The failed orders `filter` matches (its state is forced to failed, its paging ignored),
    /// up to [`MAX_BULK`], listed before any is changed: acting on one moves it out of the
    /// failed state, which would shift a paged read under our feet.
    pub(super) async fn failed_matching(
        &self,
        filter: &OrderFilter,
    ) -> Result<Vec<Order>, StoreError> {
        let failed = OrderFilter {
            state: Some(OrderState::Failed),
            ..filter.clone()
        };
        crate::store::all_orders(self.store.as_ref(), &failed, MAX_BULK).await
    }

    /// Applies `action` to every failed order `filter` matches, collecting refusals.
    async fn bulk<'a, F, Fut>(
        &'a self,
        filter: &OrderFilter,
        reason: &str,
        action: F,
    ) -> Result<BulkSummary, AdminError>
    where
        F: Fn(OrderId) -> Fut,
        Fut: Future<Output = Result<Order, AdminError>> + 'a,
    {
        check_reason(reason)?;
        let mut summary = BulkSummary::default();
        for order in self.failed_matching(filter).await? {
            let item = |why: Option<String>| BulkItem {
                id: order.id.clone(),
                order_ref: order.order_ref.as_str().to_string(),
                why,
            };
            match action(order.id.clone()).await {
                Ok(_) => summary.done.push(item(None)),
                Err(AdminError::Store(StoreError::Conflict(_))) => summary.refused.push(item(
                    Some("changed or being worked on meanwhile; reload and try again".into()),
                )),
                Err(AdminError::Store(e)) => return Err(AdminError::Store(e)),
                Err(e) => summary.refused.push(item(Some(e.to_string()))),
            }
        }
        Ok(summary)
    }

    /// Retries every failed order `filter` matches (an outage's queue, or one phase of it) with
    /// one reason, each as [`AdminService::retry`] would: a buy-phase retry that could buy
    /// twice is refused for that order alone and listed with why.
    ///
    /// # Errors
    /// A bad reason, or the store failing to list the orders.
    pub async fn retry_failed_matching(
        &self,
        filter: &OrderFilter,
        actor: &str,
        reason: &str,
    ) -> Result<RetrySummary, AdminError> {
        let summary = self
            .bulk(filter, reason, |id| async move {
                self.retry(&id, actor, reason).await
            })
            .await?;
        tracing::info!(
            admin = %actor,
            retried = summary.done.len(),
            refused = summary.refused.len(),
            "retry of failed orders"
        );
        Ok(summary)
    }

    /// Marks every failed order `filter` matches resolved with one reason (see
    /// [`AdminService::mark_resolved`]).
    ///
    /// # Errors
    /// A bad reason, or the store failing to list the orders.
    pub async fn mark_resolved_matching(
        &self,
        filter: &OrderFilter,
        actor: &str,
        reason: &str,
    ) -> Result<BulkSummary, AdminError> {
        self.bulk(filter, reason, |id| async move {
            self.mark_resolved(&id, actor, reason).await
        })
        .await
    }

    /// Replaces the address an admin adopted (a mistyped one, the wrong server) while status has
    /// never succeeded for it: the order polls `ip` instead, with fresh status attempts, and
    /// nothing is bought. Refused for an address a purchase returned (that server is ours for
    /// sure), for an address another order owns, and, unless overridden, for one outside the
    /// order's package.
    ///
    /// # Errors
    /// [`AdminError`] naming why.
    pub async fn change_address(
        &self,
        id: &OrderId,
        actor: &str,
        reason: &str,
        ip: Ipv4Addr,
        override_package_check: bool,
    ) -> Result<Order, AdminError> {
        let reason = check_reason(reason)?;
        let mut order = self.load(id).await?;
        let Some(old) = order.server_ip else {
            return Err(AdminError::Refused(format!(
                "the order has no server address to change (it is {})",
                order.state
            )));
        };
        let credentials_phase = match order.state {
            OrderState::AwaitingCredentials => true,
            OrderState::Failed => order
                .failure
                .as_ref()
                .is_some_and(|f| f.phase == Phase::Credentials),
            _ => false,
        };
        if !credentials_phase {
            return Err(AdminError::Refused(format!(
                "the address can only be changed while status has never succeeded for it (awaiting credentials, or failed \
                 in the credentials phase); this order is {}",
                order.state
            )));
        }
        // Status succeeded for the address once credentials were read: delivered, or the
        // ordered OS installed first (a server action), whatever came after.
        let status_succeeded = self
            .store
            .timeline(id)
            .await?
            .iter()
            .any(|e| e.message.contains(STATUS_SUCCEEDED))
            || !self.store.actions(id).await?.is_empty();
        if status_succeeded {
            return Err(AdminError::Refused(format!(
                "status has already succeeded for {old}: it is the order's server, so its address is not replaced"
            )));
        }
        if old == ip {
            return Err(AdminError::Invalid {
                field: "ip",
                message: format!("{ip} is already the order's address"),
            });
        }
        let purchases = self.store.purchases(id).await?;
        if let Some(p) = purchases.iter().find(|p| p.owned_ip() == Some(old)) {
            return Err(AdminError::Refused(format!(
                "{old} was returned by purchase #{} (attempt {}): that server is ours, so its address is not replaced; retry \
                 polls it, or fail the order",
                p.id, p.attempt
            )));
        }
        if let Some(owner) = self.store.owner_of(ip).await?.filter(|o| o != id) {
            return Err(AdminError::Refused(format!(
                "{ip} belongs to order {owner}: one server is never delivered twice"
            )));
        }
        let now = self.clock.now();
        let mut entries = vec![admin_line(
            now,
            format!(
                "✏️ Address changed by {actor}: {reason} ({old} → {ip}; status polling starts again, nothing is bought)"
            ),
        )];
        let name = self.package_name(&order, &purchases).await?;
        match (&name, override_package_check) {
            (Some(name), _) if name.contains(ip) => {}
            (_, true) => entries.push(warning(
                now,
                format!(
                    "⚠️ {actor} overrode the package check: {ip} is not in package {}",
                    name.as_ref()
                        .map_or_else(|| "(unknown name)".to_string(), ToString::to_string)
                ),
            )),
            (Some(name), false) => {
                return Err(AdminError::Invalid {
                    field: "ip",
                    message: format!(
                        "{ip} is not in package {name}; if you are sure, set override_package_check and say why in the reason"
                    ),
                });
            }
            (None, false) => {
                return Err(AdminError::Invalid {
                    field: "ip",
                    message: format!(
                        "the name of package {} is not known, so {ip} cannot be checked against it; set \
                         override_package_check and say why in the reason",
                        order.package_id
                    ),
                });
            }
        }
        let expected = order.updated_at;
        order
            .change_address(ip, now)
            .map_err(|e| AdminError::Refused(e.to_string()))?;
        let change = Change {
            entries,
            ..Change::default()
        };
        self.apply_admin(order, expected, change).await
    }

    /// The order's package name: from its latest purchase, else from the catalog.
    async fn package_name(
        &self,
        order: &Order,
        purchases: &[Purchase],
    ) -> Result<Option<PackageName>, StoreError> {
        if let Some(p) = purchases.last() {
            return Ok(Some(p.package_name.clone()));
        }
        Ok(self
            .store
            .catalog()
            .await?
            .into_iter()
            .find(|p| p.id == order.package_id)
            .and_then(|p| PackageName::parse(&p.name).ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_actions_parse() {
        assert_eq!(
            parse_resolve("adopt", Some(" 1.2.3.4 "), true).unwrap(),
            Resolve::Adopt {
                ip: "1.2.3.4".parse().unwrap(),
                override_package_check: true
            }
        );
        assert_eq!(parse_resolve("adopt", None, false).unwrap_err().field, "ip");
        assert_eq!(
            parse_resolve("adopt", Some("1.2.3"), false)
                .unwrap_err()
                .field,
            "ip"
        );
        assert_eq!(
            parse_resolve("not_bought", None, false).unwrap(),
            Resolve::NotBought
        );
        assert_eq!(parse_resolve("fail", None, false).unwrap(), Resolve::Fail);
        assert_eq!(
            parse_resolve("nuke", None, false).unwrap_err().field,
            "action"
        );
    }
}
