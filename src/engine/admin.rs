//! Admin actions on orders: retry, resolve and cancel. Each one records who did it (the admin
//! token's name) and why (a required reason) in the timeline, and is applied with
//! [`Store::admin_save`](crate::store::Store::admin_save), which refuses while a worker holds the
//! order and fences out any stale worker afterwards.
//!
//! None of them ever buys: they only decide what the engine does next.

use std::net::Ipv4Addr;

use super::Engine;
use crate::domain::{
    EntryKind, NoticeKind, Order, OrderId, OrderState, PackageName, Phase, Purchase, Resolution,
    TimelineEntry,
};
use crate::store::{Change, StoreError};

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
    /// The action's name in the API and the timeline.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Adopt { .. } => "adopt",
            Self::NotBought => "not_bought",
            Self::Fail => "fail",
        }
    }
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
        self.wake();
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
