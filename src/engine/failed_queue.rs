//! The failed queue: every failed order (of a phase, or all) retried with one reason, or marked
//! resolved, as an operator does after an outage. Each order goes through the same admin action
//! as one at a time ([`AdminService::retry`], [`AdminService::cancel`]), so every refusal that
//! protects one order (an unknown purchase, a server owned) protects it here too; a refused order
//! is reported and the others go on.

use serde::Serialize;

use super::admin::{AdminError, AdminService, check_reason};
use crate::domain::{Order, OrderState, Phase};
use crate::store::{OrderFilter, StoreError};

/// What happened to one order of the queue.
#[derive(Clone, Debug, Serialize)]
pub struct QueueItem {
    /// The order's id.
    pub id: String,
    /// Its storefront reference.
    pub order_ref: String,
    /// The phase it failed in.
    pub phase: Option<Phase>,
    /// `retried`, `resolved` or `refused`.
    pub outcome: &'static str,
    /// Its state afterwards.
    pub state: OrderState,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The failed orders of `phase` (all when `None`), as the dashboard's bulk actions list them.
async fn failed_orders(
    admin: &AdminService,
    phase: Option<Phase>,
) -> Result<Vec<Order>, AdminError> {
    let filter = OrderFilter {
        phase,
        ..OrderFilter::default()
    };
    Ok(admin.failed_matching(&filter).await?)
}

/// Order `o`'s line after its action: `done` when it took, refused (saying why) when it did
/// not. A store failure other than a conflict stops the whole queue.
fn outcome(
    o: &Order,
    done: &'static str,
    result: Result<Order, AdminError>,
) -> Result<QueueItem, AdminError> {
    match result {
        Ok(after) => Ok(item(&after, done, None)),
        Err(AdminError::Store(e)) if !matches!(e, StoreError::Conflict(_)) => {
            Err(AdminError::Store(e))
        }
        Err(e) => Ok(item(o, "refused", Some(e.to_string()))),
    }
}

fn item(o: &Order, outcome: &'static str, error: Option<String>) -> QueueItem {
    QueueItem {
        id: o.id.to_string(),
        order_ref: o.order_ref.as_str().to_string(),
        phase: o.failure.as_ref().map(|f| f.phase),
        outcome,
        state: o.state,
        error,
    }
}

impl AdminService {
    /// Retries every failed order of `phase` (all phases when `None`) with one reason.
    ///
    /// # Errors
    /// A missing or bad reason (before anything is done), or a store failure.
    pub async fn retry_failed(
        &self,
        phase: Option<Phase>,
        actor: &str,
        reason: &str,
    ) -> Result<Vec<QueueItem>, AdminError> {
        let reason = check_reason(reason)?;
        let mut out = Vec::new();
        for o in failed_orders(self, phase).await? {
            let result = self.retry(&o.id, actor, reason.as_str()).await;
            out.push(outcome(&o, "retried", result)?);
        }
        Ok(out)
    }

    /// Marks every failed order of `phase` (all when `None`) resolved: handled outside the
    /// service (refunded, delivered by hand), so it leaves the failed queue as cancelled, with
    /// the reason on its record. An order that owns a server is left alone and reported:
    /// resolving it would leave a paid server nobody looks after; retry it or cancel it on its
    /// own.
    ///
    /// # Errors
    /// A missing or bad reason, or a store failure.
    pub async fn resolve_failed(
        &self,
        phase: Option<Phase>,
        actor: &str,
        reason: &str,
    ) -> Result<Vec<QueueItem>, AdminError> {
        let reason = check_reason(reason)?;
        let mut out = Vec::new();
        for o in failed_orders(self, phase).await? {
            if let Some(ip) = o.server_ip {
                out.push(item(
                    &o,
                    "refused",
                    Some(format!(
                        "server {ip} is owned for this order: retry it, or cancel it on its own and release the server"
                    )),
                ));
                continue;
            }
            let why = format!("resolved from the failed queue: {reason}");
            let result = self.cancel(&o.id, actor, &why).await;
            out.push(outcome(&o, "resolved", result)?);
        }
        Ok(out)
    }
}
