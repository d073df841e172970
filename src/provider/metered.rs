//! A `Provider` decorator that counts and times every upstream call, and runs each call made
//! for an order inside a span carrying its `order_id`, so the client's own log lines about the
//! call are attributable to the order without the client knowing about logging fields.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tracing::Instrument;

use super::{CallContext, Command, LateReply, Outcome, Provider, ServerStatus, StockEntry};
use crate::clock::Clock;
use crate::domain::{PackageName, RamGb};

/// Wraps a provider with metrics.
pub struct MeteredProvider {
    /// The real provider.
    inner: Arc<dyn Provider>,
    /// Call durations are measured in the engine's time, like its timeouts.
    clock: Arc<dyn Clock>,
}

impl MeteredProvider {
    /// Meters `inner`.
    pub fn new(inner: Arc<dyn Provider>, clock: Arc<dyn Clock>) -> Self {
        Self { inner, clock }
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        ctx: Option<&CallContext>,
        call: impl Future<Output = Outcome<T>>,
    ) -> Outcome<T> {
        self.measured(operation, ctx, async { (call.await, ()) })
            .await
            .0
    }

    async fn timed_pair<T, X>(
        &self,
        operation: &'static str,
        ctx: &CallContext,
        call: impl Future<Output = (Outcome<T>, X)>,
    ) -> (Outcome<T>, X) {
        self.measured(operation, Some(ctx), call).await
    }

    /// Runs `call` in the order's span and records its outcome and duration.
    async fn measured<T, X>(
        &self,
        operation: &'static str,
        ctx: Option<&CallContext>,
        call: impl Future<Output = (Outcome<T>, X)>,
    ) -> (Outcome<T>, X) {
        let started = self.clock.now();
        let span = match ctx.and_then(|c| c.order_id.as_ref()) {
            Some(order_id) => tracing::info_span!("upstream", %order_id, operation),
            None => tracing::Span::none(),
        };
        let (outcome, extra) = call.instrument(span).await;
        let elapsed = self.clock.now().since(started);
        metrics::counter!("provisioner_upstream_calls_total", "operation" => operation, "outcome" => outcome.kind()).increment(1);
        metrics::histogram!("provisioner_upstream_call_duration_seconds", "operation" => operation)
            .record(elapsed.as_secs_f64());
        (outcome, extra)
    }
}

#[async_trait]
impl Provider for MeteredProvider {
    async fn ipstock(&self, timeout: Duration) -> Outcome<Vec<StockEntry>> {
        self.timed("ipstock", None, self.inner.ipstock(timeout))
            .await
    }

    async fn buy(
        &self,
        ctx: &CallContext,
        package: &PackageName,
        ram: RamGb,
        timeout: Duration,
    ) -> Outcome<Ipv4Addr> {
        self.timed(
            "buyvps",
            Some(ctx),
            self.inner.buy(ctx, package, ram, timeout),
        )
        .await
    }

    async fn status(
        &self,
        ctx: &CallContext,
        ip: Ipv4Addr,
        timeout: Duration,
    ) -> Outcome<ServerStatus> {
        self.timed("status", Some(ctx), self.inner.status(ctx, ip, timeout))
            .await
    }

    async fn command(
        &self,
        ctx: &CallContext,
        ip: Ipv4Addr,
        command: Command,
        timeout: Duration,
    ) -> Outcome<()> {
        self.timed(
            command.endpoint(),
            Some(ctx),
            self.inner.command(ctx, ip, command, timeout),
        )
        .await
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
            .timed_pair(
                "buyvps",
                ctx,
                self.inner.buy_listening(ctx, package, ram, timeout, listen),
            )
            .await;
        // A late reply is counted when it arrives, under its own outcome label.
        let late = late.map(|late| {
            LateReply::new(async move {
                let outcome = late.wait().await;
                if let Some(o) = &outcome {
                    metrics::counter!("provisioner_late_replies_total", "outcome" => o.kind())
                        .increment(1);
                }
                outcome
            })
        });
        (outcome, late)
    }
}
