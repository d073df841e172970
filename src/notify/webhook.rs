//! Webhooks: each event as a JSON POST, signed with HMAC-SHA256 over the timestamp and the body.
//!
//! Headers on every request:
//! - `Idempotency-Key` and `X-Provisioner-Delivery`: the delivery's key, the same on every retry;
//!   a receiver that has seen it already should answer 2xx and do nothing.
//! - `X-Provisioner-Event`: the event name (`order.ready`, `admin.alert`, ...).
//! - `X-Provisioner-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//!   Signing the timestamp with the body lets a receiver refuse replays of old requests.
//!
//! A 2xx answer is success; anything else (or no answer) is retried with backoff. Redirects are
//! not followed. The receiver's reply body is never stored or logged.

use std::fmt;
use std::sync::{Arc, Once};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use ring::hmac;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::{Event, Notifier, NotifyError};
use crate::clock::Clock;
use crate::domain::{NoticeKind, Order};
use crate::redact;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-provisioner-signature";
/// The delivery header (same value as `Idempotency-Key`).
pub const DELIVERY_HEADER: &str = "x-provisioner-delivery";
/// The event-name header.
pub const EVENT_HEADER: &str = "x-provisioner-event";
/// The standard idempotency header.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// One configured endpoint.
#[derive(Clone)]
pub struct WebhookEndpoint {
    /// Stable name; the channel is `webhook:<name>`.
    pub name: String,
    /// Where events are POSTed.
    pub url: Url,
    /// HMAC key; never logged.
    pub secret: SecretString,
    /// Whether `order.ready` events carry the server's credentials.
    pub trusted: bool,
    /// Events it takes (`order.ready`, `admin.alert`, ...); empty means every `order.*` event:
    /// `admin.alert` goes only to an endpoint that lists it.
    pub events: Vec<String>,
}

impl fmt::Debug for WebhookEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookEndpoint")
            .field("name", &self.name)
            .field("url", &redact::url_without_query(self.url.as_str()))
            .field("secret", &"[redacted]")
            .field("trusted", &self.trusted)
            .field("events", &self.events)
            .finish()
    }
}

/// Every event name a webhook can take.
pub const EVENTS: [&str; 14] = [
    "order.provisioning",
    "order.ready",
    "order.failed",
    "order.needs_attention",
    "order.credentials_changed",
    "server.action_completed",
    "server.action_failed",
    "order.cancelled",
    "order.resumed",
    "server.expiring",
    "server.renewed",
    "server.expired",
    "server.terminated",
    "admin.alert",
];

/// The event an endpoint takes only when it lists it: admin alerts name customers and
/// internal reasons, which a storefront's webhook should not receive by default.
pub const OPT_IN_EVENT: &str = "admin.alert";

/// Posts events to one endpoint.
pub struct WebhookNotifier {
    /// `webhook:<name>`.
    channel: String,
    /// The endpoint.
    endpoint: WebhookEndpoint,
    /// Connection machinery; per-request timeout.
    http: reqwest::Client,
    /// Request timeout (real time).
    timeout: Duration,
    /// Signature timestamps.
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookNotifier")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl WebhookNotifier {
    /// A notifier for `endpoint`, each request bounded by `timeout`.
    ///
    /// # Errors
    /// When the HTTP stack cannot be built.
    pub fn new(
        endpoint: WebhookEndpoint,
        timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, NotifyError> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .tls_backend_rustls()
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("provisioner/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                NotifyError(format!("building the webhook client: {}", e.without_url()))
            })?;
        Ok(Self {
            channel: format!("webhook:{}", endpoint.name),
            endpoint,
            http,
            timeout,
            clock,
        })
    }

    /// The JSON body of `event` for this endpoint.
    pub fn payload(&self, event: &Event) -> Value {
        let mut body = json!({
            "id": event.key,
            "event_id": event.event_id,
            "event": event.kind.event(),
            "created_at": event.occurred_at.to_string(),
        });
        if let Some(order) = &event.order {
            body["order"] = order_json(order);
        }
        if let Some(alert) = event.kind.alert() {
            let text = super::templates::render(event);
            body["alert"] = json!({ "kind": alert, "subject": text.subject, "message": text.body });
        }
        // Only a trusted endpoint gets the login, and only on the ready and new-login events.
        if self.endpoint.trusted
            && matches!(
                event.kind,
                NoticeKind::Ready | NoticeKind::CredentialsChanged
            )
            && let Some(c) = &event.credentials
        {
            body["credentials"] = json!({
                "ip": c.ip.to_string(),
                "username": c.username,
                "password": c.expose_password(),
                "os": c.os,
            });
        }
        body
    }
}

fn order_json(o: &Order) -> Value {
    json!({
        "id": o.id.as_str(),
        "order_ref": o.order_ref.as_str(),
        "state": o.state.as_str(),
        "package_id": o.package_id.0,
        "ram_gb": o.ram_gb.get(),
        "os": o.os,
        "customer": { "email": o.customer.email, "name": o.customer.name },
        "server_ip": o.server_ip.map(|ip| ip.to_string()),
        "failure": o.failure.as_ref().map(|f| json!({ "phase": f.phase.as_str(), "reason": f.reason })),
        "created_at": o.created_at.to_string(),
        "ready_at": o.ready_at.map(|t| t.to_string()),
    })
}

#[async_trait]
impl Notifier for WebhookNotifier {
    fn channel(&self) -> &str {
        &self.channel
    }

    fn accepts(&self, kind: NoticeKind) -> bool {
        if self.endpoint.events.is_empty() {
            kind.event() != OPT_IN_EVENT
        } else {
            self.endpoint.events.iter().any(|e| e == kind.event())
        }
    }

    fn wants_credentials(&self) -> bool {
        self.endpoint.trusted
    }

    async fn send(&self, event: &Event) -> Result<(), NotifyError> {
        let body = serde_json::to_vec(&self.payload(event))
            .map_err(|e| NotifyError(format!("encoding the payload: {e}")))?;
        let t = self.clock.now().millis().div_euclid(1000);
        let signature = sign(self.endpoint.secret.expose_secret().as_bytes(), t, &body);
        let key = HeaderValue::from_str(&event.key)
            .map_err(|_| NotifyError("delivery key is not a valid header value".into()))?;
        let response = self
            .http
            .post(self.endpoint.url.clone())
            .timeout(self.timeout)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(IDEMPOTENCY_HEADER, key.clone())
            .header(DELIVERY_HEADER, key)
            .header(EVENT_HEADER, event.kind.event())
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await
            // Without the URL: it can carry a token.
            .map_err(|e| {
                NotifyError(format!(
                    "POST {}: {}",
                    redact::url_without_query(self.endpoint.url.as_str()),
                    crate::telemetry::error_chain(&e.without_url())
                ))
            })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(NotifyError(format!(
                "POST {} answered HTTP {}",
                redact::url_without_query(self.endpoint.url.as_str()),
                status.as_u16()
            )))
        }
    }
}

/// The signature header value for `body` sent at unix time `t`:
/// `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("t={t},v1={}", hex(ctx.sign().as_ref()))
}

/// Why a signature was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The header is not `t=...,v1=...`.
    #[error("malformed signature header")]
    Malformed,
    /// The timestamp is further from now than the tolerance (a replay, or a skewed clock).
    #[error("timestamp outside the tolerance")]
    Stale,
    /// No `v1` value matches the body.
    #[error("signature does not match")]
    Mismatch,
}

/// Checks a signature header the way a receiver should: the HMAC over `"<t>.<body>"` in constant
/// time, and `t` within `tolerance` of `now` (unix seconds). The README shows the same in Python.
///
/// # Errors
/// [`VerifyError`] naming what is wrong.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let mut t = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<i64>().map_err(|_| VerifyError::Malformed)?),
            Some(("v1", v)) => candidates.push(unhex(v).ok_or(VerifyError::Malformed)?),
            _ => {}
        }
    }
    let t = t.ok_or(VerifyError::Malformed)?;
    if candidates.is_empty() {
        return Err(VerifyError::Malformed);
    }
    if now.abs_diff(t) > tolerance.as_secs() {
        return Err(VerifyError::Stale);
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let signed = [t.to_string().as_bytes(), b".", body].concat();
    candidates
        .iter()
        .any(|tag| hmac::verify(&key, &signed, tag).is_ok())
        .then_some(())
        .ok_or(VerifyError::Mismatch)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Installs rustls's ring provider as the process default, once, as the SmartVPS client does:
/// reqwest is built without a provider of its own.
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means a provider is already installed, which is all we need.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_an_independent_hmac() {
        // Checked against an independent implementation:
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
        let header = sign(b"whsec_test", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            header,
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }

    #[test]
    fn verify_accepts_the_signed_body_and_refuses_everything_else() {
        let body = br#"{"event":"order.ready"}"#;
        let header = sign(b"s3cret", 1_000, body);
        let tol = Duration::from_secs(300);
        assert_eq!(verify(b"s3cret", &header, body, 1_100, tol), Ok(()));
        assert_eq!(
            verify(
                b"s3cret",
                &header,
                br#"{"event":"order.failed"}"#,
                1_100,
                tol
            ),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(b"other", &header, body, 1_100, tol),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(b"s3cret", &header, body, 2_000, tol),
            Err(VerifyError::Stale)
        );
        // The timestamp is signed: moving it breaks the signature.
        let moved = header.replace("t=1000", "t=1050");
        assert_eq!(
            verify(b"s3cret", &moved, body, 1_100, tol),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(b"s3cret", "v1=abcd", body, 1_100, tol),
            Err(VerifyError::Malformed)
        );
        assert_eq!(
            verify(b"s3cret", "t=1000,v1=zz", body, 1_100, tol),
            Err(VerifyError::Malformed)
        );
    }

    #[test]
    fn debug_hides_the_secret_and_the_query() {
        let e = WebhookEndpoint {
            name: "shop".into(),
            url: Url::parse("https://user:pw@shop.example/hook?token=abc").unwrap(),
            secret: SecretString::from("whsec-very-secret"),
            trusted: true,
            events: vec![],
        };
        let debug = format!("{e:?}");
        assert!(
            !debug.contains("whsec-very-secret")
                && !debug.contains("token=abc")
                && !debug.contains("pw@"),
            "{debug}"
        );
        assert!(
            debug.contains("https://[redacted]@shop.example/hook"),
            "{debug}"
        );
    }

    #[test]
    fn admin_alerts_go_only_to_an_endpoint_that_lists_them() {
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::SystemClock);
        let endpoint = |events: &[&str]| WebhookEndpoint {
            name: "shop".into(),
            url: Url::parse("https://shop.example/hook").unwrap(),
            secret: SecretString::from("whsec-0123456789abcdef"),
            trusted: false,
            events: events.iter().map(|e| e.to_string()).collect(),
        };
        let every = WebhookNotifier::new(endpoint(&[]), Duration::from_secs(1), Arc::clone(&clock))
            .unwrap();
        assert!(every.accepts(NoticeKind::Cancelled) && every.accepts(NoticeKind::Resumed));
        assert!(!every.accepts(NoticeKind::AdminFailed), "opt-in");
        let opted = WebhookNotifier::new(
            endpoint(&["admin.alert", "order.ready"]),
            Duration::from_secs(1),
            clock,
        )
        .unwrap();
        assert!(opted.accepts(NoticeKind::AdminLowStock) && opted.accepts(NoticeKind::Ready));
        assert!(!opted.accepts(NoticeKind::Failed));
    }
}
