//! The outbox dispatcher: fans notices out into per-channel deliveries and sends due ones.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use super::templates::Templates;
use super::{Channels, Event, Notifier, NotifyError, backoff, delivery_key};
use crate::clock::{Clock, Timestamp};
use crate::crypto::Cipher;
use crate::domain::{Audience, EntryKind, NoticeKind, OrderId, TimelineEntry};
use crate::store::{
    Delivery, DeliveryResult, DeliveryState, NewDelivery, Notice, Store, StoreError,
};

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
    /// What notices say, as configured.
    templates: Arc<Templates>,
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
            templates: Arc::new(Templates::default()),
        }
    }

    /// The same dispatcher with the configured texts.
    #[must_use]
    pub fn with_templates(mut self, templates: Templates) -> Self {
        self.templates = Arc::new(templates);
        self
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
        // The fan-out and the claim are one commit, the batch's results another, and the
        // timeline lines saying what happened a third: a round costs three commits however
        // many deliveries it sends.
        let (fanned_out, claimed, mut lines) = self.fan_out_and_claim().await?;
        let mut done = Dispatched {
            fanned_out,
            ..Dispatched::default()
        };
        let sent = join_all(claimed.into_iter().map(|d| self.deliver(d))).await;
        let mut results = Vec::with_capacity(sent.len());
        let mut outcome_lines = Vec::with_capacity(sent.len());
        for (d, result, sent, line) in sent {
            match sent {
                Sent::Delivered => done.delivered += 1,
                Sent::Retrying => done.retrying += 1,
                Sent::Abandoned => done.abandoned += 1,
            }
            results.push((d, result));
            outcome_lines.push(line);
        }
        // A crash before this commit leaves the batch claimed, not delivered: it is sent again
        // once the claim lapses, under the same idempotency keys, as a crash mid-send would.
        let taken = self.store.finish_deliveries(&results).await?;
        // A result the store did not take (a stale claim) is not what happened.
        lines.extend(
            outcome_lines
                .into_iter()
                .zip(taken)
                .filter_map(|(line, taken)| line.filter(|_| taken)),
        );
        // The timeline says what happened to each notice once it is known: one write per round.
        if !lines.is_empty() {
            self.store.append_timeline(&lines).await?;
        }
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

    /// Turns due notices into deliveries for every channel that takes them: the whole batch in
    /// one store call (one commit on the SQL backends). Each notice gets a timeline line saying
    /// where it was queued: "queued", never "notified", until a channel confirms it.
    #[allow(clippy::type_complexity)]
    async fn fan_out_and_claim(
        &self,
    ) -> Result<(usize, Vec<Delivery>, Vec<(OrderId, TimelineEntry)>), StoreError> {
        let now = self.clock.now();
        let notices = self.store.due_notices(now, 256).await?;
        let mut deliveries = Vec::new();
        let mut lines = Vec::new();
        for notice in &notices {
            let event_id = format!("ntc_{}_{}", notice.id, notice.order_id);
            let detail = self.episode_detail(notice).await?;
            let (repeat, fresh): (Vec<_>, Vec<_>) = self
                .channels
                .iter()
                .filter(|c| c.accepts(notice.kind))
                .map(|c| c.channel())
                .partition(|c| {
                    detail
                        .as_ref()
                        .is_some_and(|d| d.1.contains(&c.to_string()))
                });
            deliveries.extend(fresh.iter().map(|c| NewDelivery {
                key: delivery_key(&event_id, c),
                event_id: event_id.clone(),
                notice_id: Some(notice.id),
                order_id: Some(notice.order_id.clone()),
                kind: notice.kind,
                channel: (*c).to_string(),
                detail: detail.as_ref().map(|d| d.0.clone()),
            }));
            if fresh.is_empty() && repeat.is_empty() {
                tracing::debug!(order_id = %notice.order_id, notice = notice.kind.as_str(), "no channel takes this notice");
            }
            lines.push((
                notice.order_id.clone(),
                queued_line(notice.kind, &fresh, &repeat, now),
            ));
        }
        let ids: Vec<i64> = notices.iter().map(|n| n.id).collect();
        // "Delivered" to its deliveries: they carry it from here. The claim of the batch to
        // send shares the commit.
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
        Ok((notices.len(), claimed, lines))
    }

    /// For a failure notice (failed, needs attention), what makes it the same notice as an
    /// earlier one (the failure's phase) and the channels that already have that notice,
    /// delivered or on its way, in this failure episode: a retry that fails again tells the
    /// customer nothing new, so they are not told twice. An abandoned one does not count: it
    /// never arrived.
    async fn episode_detail(
        &self,
        notice: &Notice,
    ) -> Result<Option<(String, Vec<String>)>, StoreError> {
        if !matches!(notice.kind, NoticeKind::Failed | NoticeKind::NeedsAttention) {
            return Ok(None);
        }
        let Some(order) = self.store.order(&notice.order_id).await? else {
            return Ok(None);
        };
        let phase = order
            .failure
            .as_ref()
            .map_or("unknown", |f| f.phase.as_str());
        let detail = format!("phase {phase}");
        let earlier = self.store.deliveries(&notice.order_id).await?;
        // An episode ends when the order is done (ready or cancelled); a retry does not end
        // it, which is the point.
        let since = earlier
            .iter()
            .rposition(|d| matches!(d.kind, NoticeKind::Ready | NoticeKind::Cancelled))
            .map_or(0, |i| i + 1);
        let had: Vec<String> = earlier[since..]
            .iter()
            .filter(|d| d.kind == notice.kind && d.detail.as_deref() == Some(detail.as_str()))
            .filter(|d| d.state != DeliveryState::Abandoned)
            .map(|d| d.channel.clone())
            .collect();
        Ok(Some((detail, had)))
    }

    fn channel(&self, name: &str) -> Option<&Arc<dyn Notifier>> {
        self.channels.iter().find(|c| c.channel() == name)
    }

    fn admins_alerted(&self) -> bool {
        self.channels
            .iter()
            .any(|c| c.channel() != "log" && c.accepts(NoticeKind::AdminFailed))
    }

    /// Sends one claimed delivery; how it went and its timeline line, for the batch's commit.
    async fn deliver(
        &self,
        d: Delivery,
    ) -> (
        Delivery,
        DeliveryResult,
        Sent,
        Option<(OrderId, TimelineEntry)>,
    ) {
        let order_id = d.order_id.as_ref().map(ToString::to_string);
        let Some(channel) = self.channel(&d.channel) else {
            // Configuration changed since the delivery was queued. Keeping it would hold the
            // backlog up forever; the row keeps the reason for an admin.
            let error = format!("channel {} is not configured", d.channel);
            tracing::warn!(order_id, key = %d.key, "delivery abandoned: {error}");
            let line = self.outcome_line(&d, Err(&error));
            let result = self.result(&d, Err(NotifyError(error)), true);
            return (d, result, Sent::Abandoned, line);
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
        let line = match &sent {
            Ok(()) => self.outcome_line(&d, Ok(())),
            Err(e) if last => self.outcome_line(&d, Err(&e.0)),
            Err(_) => None,
        };
        let result = self.result(&d, sent, last);
        let how = if ok {
            Sent::Delivered
        } else if last {
            Sent::Abandoned
        } else {
            Sent::Retrying
        };
        (d, result, how, line)
    }

    /// The timeline line of a delivery that ended: delivered, or abandoned with why in plain
    /// words. None for the log channel (it tells nobody) and for alerts without an order.
    fn outcome_line(
        &self,
        d: &Delivery,
        result: Result<(), &str>,
    ) -> Option<(OrderId, TimelineEntry)> {
        let order = d.order_id.clone()?;
        if d.channel == "log" {
            return None;
        }
        let what = notice_noun(d.kind);
        let (kind, message) = match result {
            Ok(()) => (
                EntryKind::Progress,
                format!(
                    "✅ {what} delivered by {} ({})",
                    channel_name(&d.channel),
                    d.kind.label()
                ),
            ),
            Err(e) => (
                EntryKind::Warning,
                format!(
                    "⚠️ {what} abandoned after {} attempt{} by {} ({}): {}",
                    d.attempt,
                    if d.attempt == 1 { "" } else { "s" },
                    channel_name(&d.channel),
                    d.kind.label(),
                    plain_reason(e)
                ),
            ),
        };
        Some((
            order,
            TimelineEntry {
                at: self.clock.now(),
                kind,
                message,
            },
        ))
    }

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
            (Some(order), NoticeKind::Ready | NoticeKind::CredentialsChanged)
                if channel.wants_credentials() =>
            {
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
            templates: Arc::clone(&self.templates),
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

/// "Customer notice" or "Admin alert".
fn notice_noun(kind: NoticeKind) -> &'static str {
    match kind.audience() {
        Audience::Customer => "Customer notice",
        Audience::Admin => "Admin alert",
    }
}

/// A channel as the timeline names it: `email`, `email to admins`, `webhook shop`, `log`.
pub fn channel_name(channel: &str) -> String {
    match channel {
        "email:customer" => "email".to_string(),
        "email:admin" => "email to admins".to_string(),
        other => match other.strip_prefix("webhook:") {
            Some(name) => format!("webhook {name}"),
            None => other.to_string(),
        },
    }
}

/// The fan-out's timeline line: where a notice was queued, and never "notified" when only the
/// log took it.
fn queued_line(kind: NoticeKind, fresh: &[&str], repeat: &[&str], now: Timestamp) -> TimelineEntry {
    let what = notice_noun(kind);
    let label = kind.label();
    let told: Vec<String> = fresh
        .iter()
        .filter(|c| **c != "log")
        .map(|c| channel_name(c))
        .collect();
    let icon = if kind.audience() == Audience::Customer {
        "📧"
    } else {
        "🚨"
    };
    let message = if !told.is_empty() {
        let mut m = format!("{icon} {what} queued ({}): {label}", told.join(", "));
        if !repeat.is_empty() {
            let again: Vec<String> = repeat.iter().map(|c| channel_name(c)).collect();
            m.push_str(&format!(
                "; not sent again by {} (already sent in this failure episode)",
                again.join(", ")
            ));
        }
        m
    } else if !repeat.is_empty() {
        let again: Vec<String> = repeat.iter().map(|c| channel_name(c)).collect();
        format!(
            "{icon} {what} not sent again ({label}): {} already had it in this failure episode",
            again.join(", ")
        )
    } else if fresh.contains(&"log") {
        match kind.audience() {
            Audience::Customer => format!(
                "📝 {what} written to the log only ({label}): no email or webhook is configured, so the customer was not told"
            ),
            Audience::Admin => format!(
                "📝 {what} written to the log only ({label}): no admin email or webhook is configured"
            ),
        }
    } else {
        format!(
            "📝 No channel takes this {} ({label}): nobody was told",
            what.to_lowercase()
        )
    };
    TimelineEntry {
        at: now,
        kind: EntryKind::Progress,
        message,
    }
}

/// Why a delivery failed, in plain words for the timeline; the raw error stays on the delivery
/// (the Notifications list) for whoever needs the detail.
pub fn plain_reason(error: &str) -> String {
    let e = error.to_ascii_lowercase();
    let timed_out = e.contains("timed out") || e.contains("timeout") || e.contains("no answer");
    let unreachable = e.contains("connection refused")
        || e.contains("connect")
        || e.contains("dns")
        || e.contains("resolve");
    if e.starts_with("smtp") || e.contains("mail") {
        if e.contains("permanent") {
            "the mail server refused the message".into()
        } else if e.contains("transient") {
            "the mail server asked to try later, every time".into()
        } else if timed_out {
            "the mail server did not answer in time".into()
        } else if e.contains("tls") || e.contains("certificate") {
            "a secure connection to the mail server could not be made".into()
        } else if unreachable {
            "the mail server could not be reached".into()
        } else if e.contains("address") {
            "the customer's email address is not valid".into()
        } else {
            "the mail server did not accept the message".into()
        }
    } else if let Some(i) = e.find("answered http ") {
        let code = e[i + "answered http ".len()..].trim();
        format!("the receiver answered with HTTP status {code} instead of accepting it")
    } else if e.starts_with("post ") {
        if timed_out {
            "the receiver did not answer in time".into()
        } else {
            "the receiver could not be reached".into()
        }
    } else if e.contains("not configured") {
        "that channel is no longer configured".into()
    } else if timed_out {
        "no answer in time".into()
    } else {
        error.to_string()
    }
}

enum Sent {
    Delivered,
    Retrying,
    Abandoned,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_read_in_plain_words() {
        for (raw, plain) in [
            (
                "SMTP: permanent error (550): 5.1.1 Mailbox unavailable",
                "the mail server refused the message",
            ),
            (
                "SMTP: Connection error: Connection refused (os error 111)",
                "the mail server could not be reached",
            ),
            (
                "POST https://shop.example/hook answered HTTP 503",
                "the receiver answered with HTTP status 503 instead of accepting it",
            ),
            (
                "POST https://shop.example/hook: error sending request: connection refused",
                "the receiver could not be reached",
            ),
            (
                "channel webhook:old is not configured",
                "that channel is no longer configured",
            ),
            ("no answer within 30s", "no answer in time"),
        ] {
            assert_eq!(plain_reason(raw), plain, "{raw}");
        }
    }

    #[test]
    fn a_notice_only_the_log_took_never_claims_the_customer_was_told() {
        let t = Timestamp(0);
        let line = queued_line(NoticeKind::Ready, &["log"], &[], t).message;
        assert!(
            line.contains("log only") && line.contains("was not told"),
            "{line}"
        );
        let line = queued_line(
            NoticeKind::Ready,
            &["email:customer", "webhook:shop", "log"],
            &[],
            t,
        )
        .message;
        assert!(
            line.starts_with("📧 Customer notice queued (email, webhook shop)"),
            "{line}"
        );
        let line = queued_line(NoticeKind::Failed, &[], &["email:customer"], t).message;
        assert!(line.contains("not sent again"), "{line}");
        assert_eq!(channel_name("email:admin"), "email to admins");
    }
}
