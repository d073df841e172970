//! The outbox dispatcher: fans notices out into per-channel deliveries and sends due ones.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use super::{Channels, Event, Notifier, NotifyError, backoff, delivery_key};
use crate::clock::Clock;
use crate::crypto::Cipher;
use crate::domain::{Audience, NoticeKind};
use crate::store::{Delivery, DeliveryResult, NewDelivery, Store, StoreError};

/// How deliveries are retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatcherSettings {
    /// Attempts per delivery before it is abandoned (counted in the store, across restarts).
    pub max_attempts: u32,
    /// First retry ceiling; doubles with every failure (full jitter below it).
    pub backoff_base: Duration,
    /// Largest retry ceiling.
    pub backoff_cap: Duration,
    /// Real-time bound on one send, beyond the channel's own timeouts.
    pub send_timeout: Duration,
    /// Deliveries claimed per round.
    pub batch: usize,
}

impl Default for DispatcherSettings {
    fn default() -> Self {
        Self {
            max_attempts: 12,
            backoff_base: Duration::from_secs(5),
            backoff_cap: Duration::from_secs(3600),
            send_timeout: Duration::from_secs(30),
            batch: 64,
        }
    }
}

/// What one round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dispatched {
    /// Notices fanned out into deliveries.
    pub fanned_out: usize,
    /// Deliveries the receiver accepted.
    pub delivered: usize,
    /// Deliveries that failed and will be retried.
    pub retrying: usize,
    /// Deliveries abandoned (attempts exhausted, or no such channel here).
    pub abandoned: usize,
}

/// Sends due outbox notices through the configured channels.
pub struct Dispatcher {
    /// The outbox.
    store: Arc<dyn Store>,
    /// Where deliveries go, looked up by channel name.
    channels: Channels,
    /// Opens stored credentials for channels that deliver them.
    cipher: Arc<Cipher>,
    /// All timestamps, including retry times.
    clock: Arc<dyn Clock>,
    /// Retry policy.
    settings: DispatcherSettings,
    /// This dispatcher's name in claims.
    worker_id: String,
}

impl Dispatcher {
    /// A dispatcher over `channels`.
    pub fn new(
        store: Arc<dyn Store>,
        channels: Channels,
        cipher: Arc<Cipher>,
        clock: Arc<dyn Clock>,
        settings: DispatcherSettings,
    ) -> Self {
        Self {
            store,
            channels,
            cipher,
            clock,
            settings,
            worker_id: format!("dispatcher-{}", uuid::Uuid::now_v7().simple()),
        }
    }

    /// The channels, for queuing alerts with [`super::admin_alert`].
    pub fn channels(&self) -> &Channels {
        &self.channels
    }

    /// Fans out due notices, then sends every due delivery once. Tests drive the dispatcher
    /// with this instead of sleeping.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn run_due_once(&self) -> Result<Dispatched, StoreError> {
        // The fan-out and the claim are one commit, and the batch's results another: a round
        // costs two commits however many deliveries it sends.
        let (fanned_out, claimed) = self.fan_out_and_claim().await?;
        let mut done = Dispatched {
            fanned_out,
            ..Dispatched::default()
        };
        let sent = join_all(claimed.into_iter().map(|d| self.deliver(d))).await;
        let mut results = Vec::with_capacity(sent.len());
        for (d, result, sent) in sent {
            match sent {
                Sent::Delivered => done.delivered += 1,
                Sent::Retrying => done.retrying += 1,
                Sent::Abandoned => done.abandoned += 1,
            }
            results.push((d, result));
        }
        // A crash before this commit leaves the batch claimed, not delivered: it is sent again
        // once the claim lapses, under the same idempotency keys, as a crash mid-send would.
        self.store.finish_deliveries(&results).await?;
        Ok(done)
    }

    /// How long a claim lasts: past the send bound, so a live dispatcher never loses its claim
    /// mid-send, yet short enough that a crashed one's deliveries resume soon.
    fn claim_for(&self) -> Duration {
        // Claims are compared with the clock's time, sends run in real time.
        let real = self.settings.send_timeout * 2 + Duration::from_secs(30);
        real.mul_f64(self.clock_speed())
    }

    fn clock_speed(&self) -> f64 {
        let probe = Duration::from_secs(1000);
        let real = self.clock.real(probe).as_secs_f64();
        if real > 0.0 {
            probe.as_secs_f64() / real
        } else {
            1.0
        }
    }

    /// Turns due notices into deliveries for every channel that takes them and claims a batch
    /// of due deliveries: one store call (one commit on the SQL backends).
    async fn fan_out_and_claim(&self) -> Result<(usize, Vec<Delivery>), StoreError> {
        let now = self.clock.now();
        let notices = self.store.due_notices(now, 256).await?;
        let mut deliveries = Vec::new();
        for notice in &notices {
            let event_id = format!("ntc_{}_{}", notice.id, notice.order_id);
            let before = deliveries.len();
            deliveries.extend(
                self.channels
                    .iter()
                    .filter(|c| c.accepts(notice.kind))
                    .map(|c| NewDelivery {
                        key: delivery_key(&event_id, c.channel()),
                        event_id: event_id.clone(),
                        notice_id: Some(notice.id),
                        order_id: Some(notice.order_id.clone()),
                        kind: notice.kind,
                        channel: c.channel().to_string(),
                        detail: None,
                    }),
            );
            if deliveries.len() == before {
                tracing::debug!(order_id = %notice.order_id, notice = notice.kind.as_str(), "no channel takes this notice");
            }
        }
        let ids: Vec<i64> = notices.iter().map(|n| n.id).collect();
        // "Delivered" to its deliveries: they carry it from here.
        let claimed = self
            .store
            .fan_out_and_claim(
                &deliveries,
                &ids,
                now,
                &self.worker_id,
                self.claim_for(),
                self.settings.batch,
            )
            .await?;
        Ok((notices.len(), claimed))
    }

    fn channel(&self, name: &str) -> Option<&Arc<dyn Notifier>> {
        self.channels.iter().find(|c| c.channel() == name)
    }

    fn admins_alerted(&self) -> bool {
        self.channels
            .iter()
            .any(|c| c.channel() != "log" && c.accepts(NoticeKind::AdminFailed))
    }

    /// Sends one claimed delivery; how it went, for the batch's one commit.
    async fn deliver(&self, d: Delivery) -> (Delivery, DeliveryResult, Sent) {
        let order_id = d.order_id.as_ref().map(ToString::to_string);
        let Some(channel) = self.channel(&d.channel) else {
            // Configuration changed since the delivery was queued. Keeping it would hold the
            // backlog up forever; the row keeps the reason for an admin.
            let error = format!("channel {} is not configured", d.channel);
            tracing::warn!(order_id, key = %d.key, "delivery abandoned: {error}");
            let result = self.result(&d, Err(NotifyError(error)), true);
            return (d, result, Sent::Abandoned);
        };
        let sent = match self.event(&d, channel.as_ref()).await {
            Ok(event) => {
                match tokio::time::timeout(self.settings.send_timeout, channel.send(&event)).await {
                    Ok(r) => r,
                    Err(_) => Err(NotifyError(format!(
                        "no answer within {}",
                        humantime::format_duration(self.settings.send_timeout)
                    ))),
                }
            }
            Err(e) => Err(e),
        };
        let ok = sent.is_ok();
        let last = d.attempt >= self.settings.max_attempts;
        let outcome = match &sent {
            Ok(()) => "delivered",
            Err(_) if last => "abandoned",
            Err(_) => "failed",
        };
        metrics::counter!("provisioner_notifications_total", "channel" => d.channel.clone(), "event" => d.kind.event(), "outcome" => outcome).increment(1);
        match &sent {
            Ok(()) => {
                tracing::info!(order_id, key = %d.key, channel = %d.channel, event = d.kind.event(), attempt = d.attempt, "📨 notice delivered")
            }
            Err(e) if last => {
                tracing::error!(order_id, key = %d.key, channel = %d.channel, event = d.kind.event(), attempt = d.attempt, "notice delivery abandoned after {} attempts: {e}", d.attempt)
            }
            Err(e) => {
                tracing::warn!(order_id, key = %d.key, channel = %d.channel, event = d.kind.event(), attempt = d.attempt, "notice delivery failed, will retry: {e}")
            }
        }
        let result = self.result(&d, sent, last);
        let how = if ok {
            Sent::Delivered
        } else if last {
            Sent::Abandoned
        } else {
            Sent::Retrying
        };
        (d, result, how)
    }

    /// What to record for a send: delivered, or failed with its next attempt's time.
    fn result(&self, d: &Delivery, sent: Result<(), NotifyError>, last: bool) -> DeliveryResult {
        let now = self.clock.now();
        match sent {
            Ok(()) => DeliveryResult::Delivered { at: now },
            Err(e) => {
                let retry_at = (!last).then(|| {
                    let wait = backoff(
                        d.attempt.saturating_sub(1),
                        self.settings.backoff_base,
                        self.settings.backoff_cap,
                        &mut rand::rng(),
                    );
                    now.plus(wait)
                });
                DeliveryResult::Failed {
                    error: e.0,
                    retry_at,
                }
            }
        }
    }

    /// Assembles what a delivery says: the order as it is now, and the credentials for a
    /// channel that delivers them.
    async fn event(&self, d: &Delivery, channel: &dyn Notifier) -> Result<Event, NotifyError> {
        let order = match &d.order_id {
            Some(id) => Some(
                self.store
                    .order(id)
                    .await
                    .map_err(|e| NotifyError(e.to_string()))?
                    .ok_or_else(|| NotifyError(format!("order {id} is gone")))?,
            ),
            None => None,
        };
        let credentials = match (&order, d.kind) {
            (Some(order), NoticeKind::Ready) if channel.wants_credentials() => {
                let sealed = self
                    .store
                    .credentials(&order.id)
                    .await
                    .map_err(|e| NotifyError(e.to_string()))?;
                match (sealed, order.server_ip) {
                    (Some(sealed), Some(ip)) => Some(
                        self.cipher
                            .open(ip, &sealed)
                            .map_err(|e| NotifyError(format!("stored credentials: {e}")))?,
                    ),
                    _ => {
                        return Err(NotifyError(
                            "ready notice without stored credentials".into(),
                        ));
                    }
                }
            }
            _ => None,
        };
        Ok(Event {
            key: d.key.clone(),
            event_id: d.event_id.clone(),
            kind: d.kind,
            order,
            credentials,
            detail: d.detail.clone(),
            occurred_at: d.created_at,
            attempt: d.attempt,
            admins_alerted: d.kind.audience() == Audience::Customer && self.admins_alerted(),
        })
    }

    /// Runs until `shutdown`, a round every `interval`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, interval: Duration) {
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

enum Sent {
    Delivered,
    Retrying,
    Abandoned,
}
