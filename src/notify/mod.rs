//! Customer and admin notices: the `Notifier` port and the outbox dispatcher.
//!
//! A notice is written to the outbox in the same transaction as the state change that causes
//! it; the dispatcher renders and sends it afterwards, so a crash between the two loses nothing.
//! Outbox rows hold no secrets: credentials are decrypted only while a "ready" notice is sent.

mod log;

pub use log::LogNotifier;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::Clock;
use crate::crypto::Cipher;
use crate::domain::{Credentials, NoticeKind, Order};
use crate::store::{Notice, Store, StoreError};

/// A notice ready to send.
#[derive(Debug)]
pub struct Rendered {
    /// Outbox id: the receivers' idempotency key.
    pub id: i64,
    /// What it says.
    pub kind: NoticeKind,
    /// The order it is about.
    pub order: Order,
    /// Subject line.
    pub subject: String,
    /// Body text, without credentials.
    pub body: String,
    /// Credentials, only on a "ready" notice. `Debug` redacts the password.
    pub credentials: Option<Credentials>,
}

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotifyError(pub String);

/// Delivers notices (log now; webhook and email are further implementations).
#[async_trait]
pub trait Notifier: Send + Sync + 'static {
    /// Sends one notice.
    async fn send(&self, notice: &Rendered) -> Result<(), NotifyError>;
}

/// Renders a notice for an order.
pub fn render(
    id: i64,
    kind: NoticeKind,
    order: Order,
    credentials: Option<Credentials>,
) -> Rendered {
    let name = order.customer.name.clone();
    let (subject, body) = match kind {
        NoticeKind::Provisioning => (
            "Your server is being provisioned...".to_string(),
            format!(
                "Hi {name}, your payment for order {} is confirmed. Your server is being provisioned...",
                order.order_ref.as_str()
            ),
        ),
        NoticeKind::Ready => (
            "Your server is ready!".to_string(),
            format!("Hi {name}, your server is ready! Your login details are below."),
        ),
        NoticeKind::Failed => (
            "Your server is delayed".to_string(),
            format!(
                "Hi {name}, provisioning of order {} did not complete. Our team has been notified and will retry it.",
                order.order_ref.as_str()
            ),
        ),
        NoticeKind::NeedsAttention => (
            "Your server needs a manual check".to_string(),
            format!(
                "Hi {name}, order {} needs a manual check by our team before your server can be delivered.",
                order.order_ref.as_str()
            ),
        ),
    };
    Rendered {
        id,
        kind,
        order,
        subject,
        body,
        credentials,
    }
}

/// Sends due outbox notices through a notifier.
pub struct Dispatcher {
    store: Arc<dyn Store>,
    notifier: Arc<dyn Notifier>,
    cipher: Arc<Cipher>,
    clock: Arc<dyn Clock>,
}

impl Dispatcher {
    /// A dispatcher.
    pub fn new(
        store: Arc<dyn Store>,
        notifier: Arc<dyn Notifier>,
        cipher: Arc<Cipher>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            notifier,
            cipher,
            clock,
        }
    }

    /// Sends every due notice once; returns how many were delivered.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn run_due_once(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let mut delivered = 0;
        for notice in self.store.due_notices(now, 100).await? {
            match self.deliver(&notice).await {
                Ok(()) => {
                    self.store
                        .notice_delivered(notice.id, self.clock.now())
                        .await?;
                    delivered += 1;
                }
                Err(e) => {
                    // Exponential backoff from 5 s, capped at an hour, for at most 12 attempts.
                    let attempts = notice.attempts + 1;
                    let retry = (attempts < 12).then(|| {
                        now.plus(
                            Duration::from_secs(5u64 << attempts.min(10))
                                .min(Duration::from_secs(3600)),
                        )
                    });
                    tracing::warn!(order_id = %notice.order_id, notice = notice.kind.as_str(), attempts, "notice delivery failed: {e}");
                    self.store.notice_failed(notice.id, &e.0, retry).await?;
                }
            }
        }
        Ok(delivered)
    }

    async fn deliver(&self, notice: &Notice) -> Result<(), NotifyError> {
        let order = self
            .store
            .order(&notice.order_id)
            .await
            .map_err(|e| NotifyError(e.to_string()))?
            .ok_or_else(|| NotifyError(format!("order {} is gone", notice.order_id)))?;
        let credentials = if notice.kind == NoticeKind::Ready {
            let sealed = self
                .store
                .credentials(&order.id)
                .await
                .map_err(|e| NotifyError(e.to_string()))?;
            match (sealed, order.server_ip) {
                (Some(sealed), Some(ip)) => Some(
                    self.cipher
                        .open(ip, &sealed)
                        .map_err(|e| NotifyError(e.to_string()))?,
                ),
                _ => {
                    return Err(NotifyError(
                        "ready notice without stored credentials".into(),
                    ));
                }
            }
        } else {
            None
        };
        self.notifier
            .send(&render(notice.id, notice.kind, order, credentials))
            .await
    }

    /// Runs until `shutdown`, polling every `interval`.
    pub async fn run(self, shutdown: tokio_util::sync::CancellationToken, interval: Duration) {
        loop {
            if let Err(e) = self.run_due_once().await {
                tracing::error!("notice dispatch failed: {e}");
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}
