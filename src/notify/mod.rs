//! Customer and admin notices: the `Notifier` port, the channels (webhook, email, log) and the
//! outbox dispatcher.
//!
//! A notice is written to the outbox in the same transaction as the state change that causes
//! it. The [`Dispatcher`] fans each notice out into one delivery per channel that takes it, then
//! sends each delivery on its own schedule: a failing receiver is retried with exponential
//! backoff and full jitter ([`backoff`]), up to a persisted attempt limit, without holding up or
//! repeating the others. A delivery marked delivered is never sent again, and every send carries
//! the delivery's idempotency key so a receiver can drop the repeat a crash between sending and
//! recording can cause.
//!
//! Outbox rows hold no secrets: credentials are decrypted only while a "ready" notice is sent,
//! and only for channels that deliver them (the customer's email, trusted webhooks).
//!
//! - [`backoff`]: the retry delay, a pure function.
//! - [`templates`]: the customer and admin texts.
//! - [`webhook`]: signed JSON POSTs.
//! - [`email`]: SMTP email.
//! - [`LogNotifier`]: the log, when nothing else is configured.

mod backoff;
mod dispatcher;
pub mod email;
mod log;
pub mod templates;
pub mod webhook;

pub use backoff::backoff;
pub use dispatcher::{Dispatched, Dispatcher, DispatcherSettings};
pub use log::LogNotifier;

use std::sync::Arc;

use async_trait::async_trait;

use crate::clock::Timestamp;
use crate::domain::{Credentials, NoticeKind, Order};
use crate::store::{NewDelivery, Store, StoreError};

/// One delivery's content, assembled when it is sent.
#[derive(Debug)]
pub struct Event {
    /// The delivery's idempotency key: unique per event and channel, the same on every retry.
    pub key: String,
    /// The event's id, the same on every channel.
    pub event_id: String,
    /// What it says.
    pub kind: NoticeKind,
    /// The order it is about, as it is when sent (`None` for alerts such as low stock).
    pub order: Option<Order>,
    /// Credentials: only on a "ready" notice, and only for a channel that delivers them.
    /// `Debug` redacts the password.
    pub credentials: Option<Credentials>,
    /// What an alert without an order says.
    pub detail: Option<String>,
    /// When the event was queued.
    pub occurred_at: Timestamp,
    /// This delivery attempt's number, from 1.
    pub attempt: u32,
    /// Whether an admin channel other than the log exists: a customer is told "our team has
    /// been alerted" only when someone actually was.
    pub admins_alerted: bool,
    /// The configured texts (signature, support link, replacements, the dashboard's address).
    pub templates: Arc<templates::Templates>,
}

/// Why a delivery failed. The text is stored and logged, so it never holds a secret or a
/// receiver's reply body.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotifyError(pub String);

/// A delivery channel: a webhook endpoint, an email audience, the log.
#[async_trait]
pub trait Notifier: Send + Sync + 'static {
    /// The channel's stable name (`webhook:<name>`, `email:customer`, `email:admin`, `log`). It
    /// is part of every delivery's idempotency key, and pending deliveries find their channel
    /// by it.
    fn channel(&self) -> &str;
    /// Whether this channel takes notices of `kind`.
    fn accepts(&self, kind: NoticeKind) -> bool;
    /// Whether a "ready" notice sent here carries the credentials. Only then are they decrypted.
    fn wants_credentials(&self) -> bool {
        false
    }
    /// Sends one delivery. `Ok` means the receiver has it.
    async fn send(&self, event: &Event) -> Result<(), NotifyError>;
}

/// The configured channels, shared by the dispatcher and whoever queues alerts.
pub type Channels = Arc<[Arc<dyn Notifier>]>;

/// The idempotency key of `event_id`'s delivery to `channel`.
pub fn delivery_key(event_id: &str, channel: &str) -> String {
    format!("{event_id}/{channel}")
}

/// Queues an admin alert that is not about an order (low stock) for every channel that takes
/// `kind`, and returns its event id. Alerts about an order are queued by the engine as notices
/// (`NoticeKind::AdminFailed`, `AdminNeedsAttention`) with the state change instead.
///
/// # Errors
/// When the store fails.
pub async fn admin_alert(
    store: &dyn Store,
    channels: &[Arc<dyn Notifier>],
    kind: NoticeKind,
    detail: &str,
    now: Timestamp,
) -> Result<String, StoreError> {
    let event_id = format!("alert_{}", uuid::Uuid::now_v7().simple());
    let deliveries: Vec<NewDelivery> = channels
        .iter()
        .filter(|c| c.accepts(kind))
        .map(|c| NewDelivery {
            key: delivery_key(&event_id, c.channel()),
            event_id: event_id.clone(),
            notice_id: None,
            order_id: None,
            kind,
            channel: c.channel().to_string(),
            detail: Some(detail.to_string()),
        })
        .collect();
    store.add_deliveries(&deliveries, now).await?;
    tracing::info!(
        event_id,
        alert = kind.alert().unwrap_or(kind.as_str()),
        channels = deliveries.len(),
        "🚨 admin alert queued: {detail}"
    );
    Ok(event_id)
}
