//! Resending a notice: an admin action on one delivery of an order's notice. The original
//! delivery keeps its record; the resend is a new delivery under a new idempotency key (a
//! receiver that already had the notice gets it again, which is what Resend is for), and the
//! timeline says who asked and why.

use super::admin::{AdminError, AdminService, check_reason};
use crate::domain::{EntryKind, OrderId, TimelineEntry};
use crate::store::{DeliveryState, NewDelivery};

impl AdminService {
    /// Queues delivery `delivery` of order `id` again, on the same channel. The reason is
    /// optional. Refused while the delivery is still queued or retrying (it is being sent).
    /// Returns the new delivery's idempotency key.
    ///
    /// # Errors
    /// [`AdminError::NotFound`] for an unknown order, [`AdminError::Refused`] for a delivery
    /// that is not the order's or still on its way, [`AdminError::Invalid`] for a bad reason.
    pub async fn resend(
        &self,
        id: &OrderId,
        delivery: i64,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<String, AdminError> {
        let reason = match reason.map(str::trim).filter(|r| !r.is_empty()) {
            Some(r) => Some(check_reason(r)?.to_string()),
            None => None,
        };
        if self.store.order(id).await?.is_none() {
            return Err(AdminError::NotFound(id.clone()));
        }
        let deliveries = self.store.deliveries(id).await?;
        let Some(d) = deliveries.iter().find(|d| d.id == delivery) else {
            return Err(AdminError::Refused(format!(
                "order {id} has no notification #{delivery}"
            )));
        };
        if matches!(d.state, DeliveryState::Queued | DeliveryState::Retrying) {
            return Err(AdminError::Refused(format!(
                "notification #{delivery} to {} is still being sent ({} attempt(s) so far); wait for it to be delivered or abandoned",
                d.channel, d.attempts
            )));
        }
        let key = format!(
            "{}/resend-{}",
            d.key,
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        let now = self.clock.now();
        self.store
            .add_deliveries(
                &[NewDelivery {
                    key: key.clone(),
                    event_id: d.event_id.clone(),
                    notice_id: None,
                    order_id: Some(id.clone()),
                    kind: d.kind,
                    channel: d.channel.clone(),
                    detail: d.detail.clone(),
                }],
                now,
            )
            .await?;
        let message = format!(
            "🔁 Resend by {actor}: {} ({}) queued again for {}{}",
            d.kind.as_str(),
            d.kind.label(),
            d.channel,
            reason.map(|r| format!(": {r}")).unwrap_or_default()
        );
        tracing::info!(order_id = %id, delivery, channel = %d.channel, "{message}");
        self.store
            .append_timeline(&[(
                id.clone(),
                TimelineEntry {
                    at: now,
                    kind: EntryKind::Admin,
                    message,
                },
            )])
            .await?;
        Ok(key)
    }
}
