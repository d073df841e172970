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
    Resolution, TimelineEntry,
};
use crate::store::{Change, Store, StoreError};

/// The longest reason accepted; a reason is a sentence for the timeline, not a document.
pub const MAX_REASON_CHARS: usize = 1000;

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

/// The admin use cases over the store and the clock: retry, resolve, cancel, and the reads an
/// operator needs around them.
#[derive(Clone)]
pub struct AdminService {
    /// Orders and their ledger, changed with [`Store::admin_save`].
    store: Arc<dyn Store>,
    /// The time written on timeline lines and against which leases are judged.
    clock: Arc<dyn Clock>,
    /// The worker to wake after an action made an order due; `None` when no worker runs in
    /// this process (the CLI on the database: a running `serve` finds the order at its next poll).
    wake: Option<Arc<Notify>>,
}

fn check_reason(reason: &str) -> Result<&str, AdminError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(AdminError::NoReason);
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(AdminError::Invalid {
            field: "reason",
            message: format!("must be at most {MAX_REASON_CHARS} characters"),
        });
    }
    if reason.chars().any(|c| c.is_control() && c != '\n') {
        return Err(AdminError::Invalid {
            field: "reason",
            message: "must not contain control characters".into(),
        });
    }
    Ok(reason)
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
}

impl AdminService {
    /// The admin use cases on `store`, with no worker to wake.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            wake: None,
        }
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

    async fn apply_admin(
        &self,
        order: &Order,
        expected: crate::clock::Timestamp,
        change: Change,
    ) -> Result<(), AdminError> {
        for e in &change.entries {
            tracing::info!(order_id = %order.id, "{}", e.message);
        }
        self.store
            .admin_save(order, expected, self.clock.now(), change)
            .await?;
        if let Some(wake) = &self.wake {
            wake.notify_one();
        }
        Ok(())
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
        let mut order = self.load(id).await?;
        if order.state != OrderState::Failed {
            return Err(AdminError::Refused(format!(
                "only a failed order can be retried; this one is {}",
                order.state
            )));
        }
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
            ..Change::default()
        };
        self.apply_admin(&order, expected, change).await?;
        Ok(order)
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
        let mut order = self.load(id).await?;
        if order.state != OrderState::NeedsAttention {
            return Err(AdminError::Refused(format!(
                "only an order that needs attention can be resolved; this one is {}",
                order.state
            )));
        }
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
        change.entries = entries;
        self.apply_admin(&order, expected, change).await?;
        Ok(order)
    }

    /// Cancels an order. Refused while a purchase is in flight or its unknown outcome is not
    /// settled: cancelling then could leave a server bought and nobody looking for it.
    ///
    /// # Errors
    /// [`AdminError`] naming why.
    pub async fn cancel(
        &self,
        id: &OrderId,
        actor: &str,
        reason: &str,
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
        order
            .cancel(now)
            .map_err(|e| AdminError::Refused(e.to_string()))?;
        let mut entries = vec![admin_line(
            now,
            format!("🚫 Cancelled by {actor}: {reason}"),
        )];
        let owned = order
            .server_ip
            .or_else(|| owning_purchase(&purchases).map(|(_, ip)| ip));
        if let Some(ip) = owned {
            entries.push(warning(
                now,
                format!("⚠️ server {ip} was bought for this order and is still owned: release it in the SmartVPS panel"),
            ));
        }
        let change = Change {
            entries,
            ..Change::default()
        };
        self.apply_admin(&order, expected, change).await?;
        Ok(order)
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
