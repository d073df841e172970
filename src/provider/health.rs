//! Upstream health: whether SmartVPS answers, since when it does not, and the last success of
//! each operation, kept in-process by a `Provider` decorator ([`Watched`]) that records every
//! call the engine and the catalog make. `/healthz`, `/metrics` and the dashboard's outage banner
//! read it.
//!
//! It also puts upstream failures in words an operator can act on ([`explain`]): "SmartVPS could
//! not be reached" rather than a transport error chain, with the raw text kept between
//! [`DETAIL_OPEN`] and [`DETAIL_CLOSE`] so the dashboard can show it behind a disclosure, even
//! where the reason sits in the middle of a timeline line.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::{CallContext, Command, LateReply, Outcome, Provider, ServerStatus, StockEntry};
use crate::clock::{Clock, Timestamp};
use crate::domain::{PackageName, RamGb};

/// The operations recorded, in the order they are shown.
pub const OPERATIONS: [&str; 3] = ["ipstock", "buyvps", "status"];

/// Opens the raw text an explained failure's plain words stand for.
pub const DETAIL_OPEN: &str = " ⟨raw: ";
/// Closes it.
pub const DETAIL_CLOSE: &str = "⟩";

/// An upstream failure put in plain words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explained {
    /// What happened, for an operator.
    pub words: String,
    /// The raw text, when the words replace it.
    pub detail: Option<String>,
    /// Whether SmartVPS is down as far as this failure tells: unreachable, not answering, failing
    /// with server errors or refusing our login. A definite answer (`error`, a 4xx about the
    /// request) means it is up.
    pub down: bool,
}

impl Explained {
    /// The words, with the raw detail between [`DETAIL_OPEN`] and [`DETAIL_CLOSE`] when there
    /// is one: the form kept in the timeline and failure reasons.
    pub fn text(&self) -> String {
        match &self.detail {
            Some(d) => format!("{}{DETAIL_OPEN}{d}{DETAIL_CLOSE}", self.words),
            None => self.words.clone(),
        }
    }
}

/// Splits a text holding an [`Explained::text`] (a reason, or a line a reason was written into)
/// into the text without the raw detail, and the detail.
pub fn split_detail(text: &str) -> (String, Option<String>) {
    let Some((before, rest)) = text.split_once(DETAIL_OPEN) else {
        return (text.to_string(), None);
    };
    match rest.rsplit_once(DETAIL_CLOSE) {
        Some((detail, after)) => (format!("{before}{after}"), Some(detail.to_string())),
        None => (before.to_string(), Some(rest.to_string())),
    }
}

/// Puts a failure reason of the SmartVPS client or the simulator in plain words. Reasons already
/// explained (holding [`DETAIL_OPEN`]) are classified by their words and kept as they are.
pub fn explain(raw: &str) -> Explained {
    let (words, detail) = split_detail(raw);
    let words = words.as_str();
    let plain = |words: &str, down| Explained {
        words: words.to_string(),
        detail: Some(raw.to_string()),
        down,
    };
    let kept = |down| Explained {
        words: words.to_string(),
        detail: detail.clone(),
        down,
    };
    if detail.is_some() {
        let down = words.starts_with("SmartVPS could not be reached")
            || words.starts_with("the connection to SmartVPS broke")
            || words.starts_with("SmartVPS had a server error")
            || words.starts_with("SmartVPS refused our login");
        return kept(down);
    }
    if raw.starts_with("connection failed") {
        return plain(
            "SmartVPS could not be reached (no connection: refused, DNS or TLS failure)",
            true,
        );
    }
    if raw.starts_with("transport error after the request was sent") {
        return plain(
            "the connection to SmartVPS broke after the request was sent",
            true,
        );
    }
    if let Some(code) = server_error_code(raw) {
        return plain(&format!("SmartVPS had a server error (HTTP {code})"), true);
    }
    if raw.starts_with("authentication failed") {
        return plain(
            "SmartVPS refused our login: check smartvps.username and smartvps.password",
            true,
        );
    }
    // `timeout after 2m`: already plain, and SmartVPS is not answering.
    if raw.starts_with("timeout after") {
        return kept(true);
    }
    kept(false)
}

/// The HTTP status of a 5xx reason (`SmartVPS server error HTTP 503: ...`, `HTTP 500 ...`).
fn server_error_code(raw: &str) -> Option<u16> {
    let rest = raw
        .strip_prefix("SmartVPS server error HTTP ")
        .or_else(|| raw.strip_prefix("HTTP "))?;
    let code: u16 = rest.get(..3)?.parse().ok()?;
    (500..600).contains(&code).then_some(code)
}

/// One operation's record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OperationHealth {
    /// The last call that succeeded.
    pub last_success: Option<Timestamp>,
    /// The last call that failed, with its reason in plain words.
    pub last_failure: Option<(Timestamp, String)>,
}

/// What [`UpstreamHealth`] knows now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthSnapshot {
    /// `None` before the first call; then whether the last call found SmartVPS up.
    pub up: Option<bool>,
    /// Since when SmartVPS has been down (the first failure of the current outage).
    pub down_since: Option<Timestamp>,
    /// The last failure that found it down, in plain words.
    pub last_error: Option<String>,
    /// Per operation, in [`OPERATIONS`] order.
    pub operations: Vec<(&'static str, OperationHealth)>,
}

impl HealthSnapshot {
    /// The one-line state: `reachable`, `unreachable since <time>: <why>`, or `unknown (no call
    /// yet)`.
    pub fn summary(&self) -> String {
        match (self.up, self.down_since) {
            (None, _) => "unknown (no call to SmartVPS yet)".to_string(),
            (Some(false), Some(since)) => format!(
                "unreachable since {since}: {}",
                self.last_error.as_deref().unwrap_or("calls fail")
            ),
            _ => "reachable".to_string(),
        }
    }
}

/// The shared record of SmartVPS calls. A std mutex: nothing is awaited while it is held.
#[derive(Debug, Default)]
pub struct UpstreamHealth {
    /// The state, updated after every call.
    state: Mutex<HealthSnapshot>,
}

impl UpstreamHealth {
    /// Nothing recorded yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HealthSnapshot> {
        // A panic elsewhere cannot leave the record half-written: every update is one assignment
        // per field, so the poisoned state is still coherent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a call of `operation` at `now` that succeeded, or failed for `failure`.
    pub fn record(&self, operation: &'static str, now: Timestamp, failure: Option<&Explained>) {
        let mut s = self.lock();
        if s.operations.is_empty() {
            s.operations = OPERATIONS
                .iter()
                .map(|o| (*o, OperationHealth::default()))
                .collect();
        }
        if let Some((_, op)) = s.operations.iter_mut().find(|(o, _)| *o == operation) {
            match failure {
                None => op.last_success = Some(now),
                Some(f) => op.last_failure = Some((now, f.words.clone())),
            }
        }
        match failure {
            Some(f) if f.down => {
                s.up = Some(false);
                s.down_since.get_or_insert(now);
                s.last_error = Some(f.words.clone());
            }
            _ => {
                s.up = Some(true);
                s.down_since = None;
            }
        }
    }

    /// What is known now.
    pub fn snapshot(&self) -> HealthSnapshot {
        let mut s = self.lock().clone();
        if s.operations.is_empty() {
            s.operations = OPERATIONS
                .iter()
                .map(|o| (*o, OperationHealth::default()))
                .collect();
        }
        s
    }
}

/// A `Provider` decorator recording every call in an [`UpstreamHealth`] and explaining its
/// failure reasons ([`explain`]) before the engine writes them anywhere.
pub struct Watched {
    /// The provider called.
    inner: Arc<dyn Provider>,
    /// Stamps the records, in the engine's time.
    clock: Arc<dyn Clock>,
    /// Where calls are recorded.
    health: Arc<UpstreamHealth>,
}

impl Watched {
    /// Watches `inner`, recording into `health`.
    pub fn new(
        inner: Arc<dyn Provider>,
        clock: Arc<dyn Clock>,
        health: Arc<UpstreamHealth>,
    ) -> Self {
        Self {
            inner,
            clock,
            health,
        }
    }

    fn seen<T>(&self, operation: &'static str, outcome: Outcome<T>) -> Outcome<T> {
        let now = self.clock.now();
        match outcome {
            Outcome::Succeeded(v) => {
                self.health.record(operation, now, None);
                Outcome::Succeeded(v)
            }
            Outcome::Rejected(raw) => {
                let e = explain(&raw);
                self.health.record(operation, now, Some(&e));
                Outcome::Rejected(e.text())
            }
            Outcome::Unknown(raw) => {
                let e = explain(&raw);
                self.health.record(operation, now, Some(&e));
                Outcome::Unknown(e.text())
            }
        }
    }
}

#[async_trait]
impl Provider for Watched {
    async fn ipstock(&self, timeout: Duration) -> Outcome<Vec<StockEntry>> {
        let outcome = self.inner.ipstock(timeout).await;
        self.seen("ipstock", outcome)
    }

    async fn buy(
        &self,
        ctx: &CallContext,
        package: &PackageName,
        ram: RamGb,
        timeout: Duration,
    ) -> Outcome<Ipv4Addr> {
        let outcome = self.inner.buy(ctx, package, ram, timeout).await;
        self.seen("buyvps", outcome)
    }

    async fn status(
        &self,
        ctx: &CallContext,
        ip: Ipv4Addr,
        timeout: Duration,
    ) -> Outcome<ServerStatus> {
        let outcome = self.inner.status(ctx, ip, timeout).await;
        self.seen("status", outcome)
    }

    /// Server actions (start, stop, format, changeos, renewvps) count for reachability; their
    /// last successes are not listed, only the three operations provisioning needs.
    async fn command(
        &self,
        ctx: &CallContext,
        ip: Ipv4Addr,
        command: Command,
        timeout: Duration,
    ) -> Outcome<()> {
        let outcome = self.inner.command(ctx, ip, command, timeout).await;
        self.seen(command.endpoint(), outcome)
    }

    async fn buy_listening(
        &self,
        ctx: &CallContext,
        package: &PackageName,
        ram: RamGb,
        timeout: Duration,
        listen: Duration,
    ) -> (Outcome<Ipv4Addr>, Option<LateReply>) {
        let (outcome, late) = self
            .inner
            .buy_listening(ctx, package, ram, timeout, listen)
            .await;
        (self.seen("buyvps", outcome), late)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_failures_are_explained_and_mark_smartvps_down() {
        let raw = "connection failed: error sending request: client error (Connect): tcp connect error: Connection refused (os error 111)";
        let e = explain(raw);
        assert!(e.down);
        assert!(
            e.words.starts_with("SmartVPS could not be reached"),
            "{}",
            e.words
        );
        assert!(!e.words.contains("os error"));
        assert_eq!(e.detail.as_deref(), Some(raw));
        let text = e.text();
        assert_eq!(
            split_detail(&text),
            (e.words.clone(), Some(raw.to_string()))
        );
        // Explaining again keeps the text and the verdict.
        assert_eq!(explain(&text), e);
        // Written into the middle of a timeline line, the detail comes out and the rest stays.
        let line = format!("attempt 1 not sent: {text}; nothing was bought");
        assert_eq!(
            split_detail(&line),
            (
                format!("attempt 1 not sent: {}; nothing was bought", e.words),
                Some(raw.to_string())
            )
        );
        assert_eq!(split_detail("no detail"), ("no detail".to_string(), None));

        let e = explain("SmartVPS server error HTTP 503: maintenance");
        assert_eq!(
            (e.words.as_str(), e.down),
            ("SmartVPS had a server error (HTTP 503)", true)
        );
        assert!(explain("HTTP 500 Internal Server Error").down);
        assert!(explain("timeout after 2m").down);
        assert_eq!(explain("timeout after 2m").detail, None);
        assert!(explain("authentication failed: check smartvps.username/password (HTTP 401)").down);
        // A definite answer: SmartVPS is up.
        for up in [
            "error",
            "SmartVPS answered error: unknown address or failure",
            "HTTP 422: bad ram",
        ] {
            let e = explain(up);
            assert!(!e.down, "{up}");
            assert_eq!((e.words.as_str(), e.detail), (up, None));
        }
    }

    #[test]
    fn an_outage_starts_at_its_first_failure_and_ends_at_the_next_answer() {
        let h = UpstreamHealth::new();
        assert_eq!(h.snapshot().up, None);
        assert!(h.snapshot().summary().starts_with("unknown"));
        h.record("ipstock", Timestamp(1_000), None);
        let down = explain("connection failed: refused");
        h.record("buyvps", Timestamp(2_000), Some(&down));
        h.record("status", Timestamp(3_000), Some(&down));
        let s = h.snapshot();
        assert_eq!((s.up, s.down_since), (Some(false), Some(Timestamp(2_000))));
        assert!(
            s.summary()
                .starts_with(&format!("unreachable since {}", Timestamp(2_000)))
        );
        assert_eq!(
            s.operations[0],
            (
                "ipstock",
                OperationHealth {
                    last_success: Some(Timestamp(1_000)),
                    last_failure: None
                }
            )
        );
        assert_eq!(
            s.operations[1].1.last_failure.as_ref().unwrap().0,
            Timestamp(2_000)
        );
        // A definite "no" is an answer: the outage is over.
        h.record("status", Timestamp(4_000), Some(&explain("error")));
        let s = h.snapshot();
        assert_eq!((s.up, s.down_since), (Some(true), None));
        assert_eq!(s.summary(), "reachable");
    }
}
