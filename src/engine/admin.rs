//! Admin actions on orders: each records who did it and why in the timeline.

use super::Engine;
use crate::domain::{EntryKind, Order, OrderId, OrderState, Phase, TimelineEntry};
use crate::store::{Change, StoreError};

/// Why an admin action was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No such order.
    #[error("no order {0}")]
    NotFound(OrderId),
    /// The action does not apply to the order as it is.
    #[error("{0}")]
    Refused(String),
    /// A reason is required.
    #[error("a reason is required")]
    NoReason,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Engine {
    async fn load(&self, id: &OrderId) -> Result<Order, AdminError> {
        self.store
            .order(id)
            .await?
            .ok_or_else(|| AdminError::NotFound(id.clone()))
    }

    /// Retries a failed order: the buy phase when no server is owned, otherwise status polling
    /// of the owned address. Refused while a purchase's outcome is unsettled.
    ///
    /// # Errors
    /// [`AdminError`] naming why.
    pub async fn retry(
        &self,
        id: &OrderId,
        actor: &str,
        reason: &str,
    ) -> Result<Order, AdminError> {
        if reason.trim().is_empty() {
            return Err(AdminError::NoReason);
        }
        let mut order = self.load(id).await?;
        if order.state != OrderState::Failed {
            return Err(AdminError::Refused(format!(
                "only a failed order can be retried; this one is {}",
                order.state
            )));
        }
        let purchases = self.store.purchases(id).await?;
        if order.server_ip.is_none() && purchases.iter().any(|p| p.is_unsettled()) {
            return Err(AdminError::Refused(
                "a purchase for this order has an unsettled outcome; resolve it first".into(),
            ));
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
        let entry = TimelineEntry {
            at: now,
            kind: EntryKind::Admin,
            message: format!("🔁 Retry by {actor}: {reason} ({what})"),
        };
        tracing::info!(order_id = %id, actor, "{}", entry.message);
        self.store
            .admin_save(
                &order,
                expected,
                now,
                Change {
                    entries: vec![entry],
                    ..Change::default()
                },
            )
            .await?;
        self.wake();
        Ok(order)
    }
}
