//! The buy phase: one purchase per package in flight, an intent in the ledger before every
//! buyvps, three outcomes, and (in [`super::reconcile`]) reconciliation of unknown ones before
//! anything is bought again. What follows each outcome is decided by [`crate::policy::next`].

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

use super::EngineError;
use super::step::{Keep, PendingReply, Step, Then};
use crate::clock::Timestamp;
use crate::domain::{PackageName, Purchase, PurchaseId, PurchaseIntent, PurchaseOutcome};
use crate::policy::next::{self, BuySetback};
use crate::provider::{CallContext, LateReply, Outcome, StockEntry};
use crate::store::{Begun, Change, FlightState, OutcomeRecord};

/// One read of SmartVPS's stock list, as evidence: our package's entry and the free total of
/// the whole pool (SmartVPS sometimes assigns an address from another package).
pub(super) struct StockRead {
    /// Our package's entry, if SmartVPS lists it.
    pub(super) entry: Option<StockEntry>,
    /// Free addresses over every package, kept as evidence for an admin.
    pub(super) pool: u64,
}

impl StockRead {
    pub(super) fn new(list: Vec<StockEntry>, package: crate::domain::PackageId) -> Self {
        let pool = list.iter().map(|s| u64::from(s.free)).sum();
        Self {
            entry: list.into_iter().find(|s| s.id == package),
            pool,
        }
    }
}

/// A success SmartVPS reported: which attempt, which ledger row, which package, which address.
pub(super) struct Sale<'a> {
    /// The attempt that bought it.
    pub(super) attempt: u32,
    /// Its ledger row, settled as escalated when the address cannot be delivered.
    pub(super) purchase_id: PurchaseId,
    /// The package asked for: the address must be in it.
    pub(super) package: &'a PackageName,
    /// The address SmartVPS assigned.
    pub(super) ip: Ipv4Addr,
}

/// The unknown outcome of a purchase whose worker stopped mid-call: the chart draws its
/// attempt as cut off by a restart.
pub(crate) const NO_REPLY_RECORDED: &str = "no reply recorded: the worker stopped mid-call";

/// How a refusal for an unreadable stock list begins: the chart reads it as that kind.
pub(crate) const STOCK_UNREADABLE: &str = "could not read stock";

/// The package as the stock list shows it, ready for a purchase.
struct Buyable {
    /// The name sent as buyvps's `ip` field, checked against the address that comes back.
    name: PackageName,
    /// Its free count, the reconciliation evidence recorded with the intent.
    free: u32,
}

impl Step<'_> {
    /// The buy phase, one step: apply a recorded but unapplied success, settle an unknown
    /// purchase, or make a new attempt.
    pub(super) async fn buy(&mut self) -> Result<Then, EngineError> {
        let latest = self.engine.store.purchases(&self.order.id).await?.pop();
        if let Some(purchase) = &latest
            && let Some(PurchaseOutcome::Succeeded { ip }) = purchase.outcome
            && purchase.resolution.is_none()
            && self.order.server_ip.is_none()
        {
            return self.adopt_unapplied(purchase, ip).await;
        }
        if let Some(purchase) = latest.filter(Purchase::is_unsettled) {
            if purchase.outcome.is_none() {
                return self.unknown_after_crash(purchase).await;
            }
            return self.reconcile(&purchase).await;
        }
        self.attempt(None).await
    }

    /// Every path that applies a recorded success leaves the buying state (bought or escalated),
    /// so a success still unapplied means its worker died between recording it and saving the
    /// order. The server is ours: apply it, never buy again.
    async fn adopt_unapplied(
        &mut self,
        purchase: &Purchase,
        ip: Ipv4Addr,
    ) -> Result<Then, EngineError> {
        let n = purchase.attempt;
        self.progress.warn(
            self.now(),
            format!(
                "❓ buyVps attempt {n} succeeded ({ip}) but its worker stopped before saving the order: adopting it, not buying again"
            ),
        );
        let sale = Sale {
            attempt: n,
            purchase_id: purchase.id,
            package: &purchase.package_name,
            ip,
        };
        self.sold(sale).await
    }

    /// We hold the lease, so the worker that sent this purchase lost its own lease before
    /// recording a reply: it crashed or stalled mid-call. The server may exist.
    async fn unknown_after_crash(&mut self, purchase: Purchase) -> Result<Then, EngineError> {
        let now = self.now();
        let outcome = PurchaseOutcome::Unknown {
            reason: NO_REPLY_RECORDED.into(),
        };
        self.engine
            .store
            .record_outcome(purchase.id, &outcome, now)
            .await?;
        metrics::counter!("provisioner_unknown_outcomes_total").increment(1);
        self.progress.warn(
            now,
            format!(
                "❓ buyVps attempt {} has no recorded reply (worker stopped mid-call): outcome unknown",
                purchase.attempt
            ),
        );
        let purchase = self
            .engine
            .store
            .purchases(&self.order.id)
            .await?
            .pop()
            .unwrap_or(purchase);
        self.after_unknown(&purchase).await
    }

    /// One buy attempt: single flight, stock read (unless reconciliation just read it), intent,
    /// buyvps, outcome. The flight is taken in the intent's transaction; the flight's state is
    /// read before the stock, so a purchase of another order that went out in between (which
    /// the stock read may count) is noticed and the stock read again.
    pub(super) async fn attempt(
        &mut self,
        mut stock: Option<StockRead>,
    ) -> Result<Then, EngineError> {
        let package = self.order.package_id;
        for _ in 0..MOVED_REREADS {
            let started = self.now();
            let seen = self.engine.store.flight_state(package).await?;
            if let Some(other) = seen.holder.clone().filter(|h| h != &self.order.id) {
                return self.wait_for_flight(&other).await;
            }
            let read = match stock.take() {
                Some(read) => read,
                None => match self
                    .engine
                    .provider
                    .ipstock(self.policy().buy.timeout)
                    .await
                {
                    Outcome::Succeeded(list) => StockRead::new(list, package),
                    Outcome::Rejected(why) | Outcome::Unknown(why) => {
                        let reason = format!("{STOCK_UNREADABLE}: {why}");
                        return self.refused(BuySetback::NotSent { reason }, started).await;
                    }
                },
            };
            let pool = read.pool;
            let buyable = match self.buyable(read) {
                Ok(buyable) => buyable,
                Err(setback) => return self.refused(setback, started).await,
            };
            match self.send(buyable, pool, &seen).await? {
                Sent::Done(then) => return Ok(then),
                Sent::HeldBy(other) => return self.wait_for_flight(&other).await,
                Sent::Moved => {}
            }
        }
        // Other orders keep buying from this package between our reads: wait a flight's turn.
        let holder = self.order.id.clone();
        self.wait_for_flight(&holder).await
    }

    /// Another order has a purchase in flight for the package: wait and ask again.
    async fn wait_for_flight(
        &mut self,
        other: &crate::domain::OrderId,
    ) -> Result<Then, EngineError> {
        tracing::debug!(order_id = %self.order.id, holder = %other, "package has a purchase in flight; waiting");
        let now = self.now();
        self.wait(self.engine.settings.flight_wait, now);
        self.write(Change::default(), Keep::Flight).await
    }

    /// Whether the stock list lets us buy the order's package now, and if not, why.
    fn buyable(&self, read: StockRead) -> Result<Buyable, BuySetback> {
        let package = self.order.package_id;
        let Some(entry) = read.entry else {
            let reason = format!("package {package} is not in SmartVPS's stock list");
            return Err(BuySetback::Unbuyable { reason });
        };
        let name = match entry.name {
            Ok(name) => name,
            Err(bad) => {
                let reason = format!(
                    "package {package} has a name SmartVPS sent that cannot be checked against addresses: {bad}"
                );
                return Err(BuySetback::Unbuyable { reason });
            }
        };
        if !entry.active {
            let reason = format!("package {name} is not active");
            return Err(BuySetback::NotSent { reason });
        }
        if entry.free == 0 {
            let reason = format!("package {name} is sold out (0 free)");
            return Err(BuySetback::NotSent { reason });
        }
        Ok(Buyable {
            name,
            free: entry.free,
        })
    }

    /// A setback before anything was sent, on an attempt that began (its stock read) at
    /// `started`. A refusal counts as an attempt (a retry may help) and is written as one that
    /// was not sent, so the timeline agrees with the ledger, which has no row for it; an
    /// unbuyable package fails without spending one.
    async fn refused(
        &mut self,
        setback: BuySetback,
        started: Timestamp,
    ) -> Result<Then, EngineError> {
        let n = match &setback {
            BuySetback::NotSent { reason } => {
                let n = self.order.start_buy_attempt(self.now())?;
                self.progress.line(
                    started,
                    format!(
                        "[SMARTVPS] Checking stock for buyVps - attempt {n}/{}",
                        self.policy().buy.attempts
                    ),
                );
                self.progress.line(
                    self.now(),
                    format!(
                        "[SMARTVPS] ⛔ buyVps attempt {n} not sent: {reason}; nothing was bought"
                    ),
                );
                n
            }
            _ => self.order.buy_attempts,
        };
        let decision = next::after_buy(self.policy(), n, setback, self.now());
        self.carry_out(decision, None).await
    }

    /// Sends buyvps after committing its intent (and taking the flight), and goes on from its
    /// reply; nothing is sent when the flight is refused.
    async fn send(
        &mut self,
        buyable: Buyable,
        pool: u64,
        seen: &FlightState,
    ) -> Result<Sent, EngineError> {
        let Buyable { name, free } = buyable;
        let mut next = self.order.clone();
        let n = next.start_buy_attempt(self.now())?;
        let sent_at = self.now();
        let line = format!(
            "[SMARTVPS] Calling buyVps - attempt {n}/{}",
            self.policy().buy.attempts
        );
        let intent = PurchaseIntent {
            order_id: self.order.id.clone(),
            attempt: n,
            package_id: self.order.package_id,
            package_name: name.clone(),
            stock_before: Some(free),
            pool_before: Some(pool),
            sent_at,
        };
        let purchase_id = match self.begin_purchase(next, &intent, line, seen).await? {
            Begun::Purchase(id) => id,
            Begun::HeldBy(other) => return Ok(Sent::HeldBy(other)),
            Begun::Moved => return Ok(Sent::Moved),
        };
        let outcome = self.call_buyvps(n, purchase_id, &name).await;
        let sale = |ip| Sale {
            attempt: n,
            purchase_id,
            package: &name,
            ip,
        };
        let then = match outcome {
            Outcome::Succeeded(ip) => self.sold(sale(ip)).await?,
            Outcome::Rejected(reason) => {
                self.attempt_failed(n, &reason);
                let decision = next::after_buy(
                    self.policy(),
                    n,
                    BuySetback::Rejected { reason },
                    self.now(),
                );
                self.carry_out(decision, Some(purchase_id)).await?
            }
            Outcome::Unknown(reason) => self.unknown_reply(&intent, purchase_id, &reason).await?,
        };
        Ok(Sent::Done(then))
    }

    /// Sends buyvps for attempt `n`; its reply is held for the step's next write, which
    /// records it in the ledger (first writer wins) in the same transaction as what follows.
    async fn call_buyvps(
        &mut self,
        n: u32,
        purchase_id: PurchaseId,
        name: &PackageName,
    ) -> Outcome<Ipv4Addr> {
        let ctx = CallContext::for_order(&self.order.id, n);
        let timeout = self.policy().buy.timeout;
        let in_flight = BuyInFlight::enter(&self.engine.buys_in_flight);
        let (outcome, late) = self
            .engine
            .provider
            .buy_listening(
                &ctx,
                name,
                self.order.ram_gb,
                timeout,
                self.policy().horizon,
            )
            .await;
        drop(in_flight);
        let recorded = purchase_outcome(&outcome);
        metrics::counter!("provisioner_purchases_total", "outcome" => recorded.kind()).increment(1);
        self.hold_reply(PendingReply {
            record: OutcomeRecord {
                purchase_id,
                outcome: recorded,
                at: self.now(),
            },
            late: late.map(|late| (n, std::sync::Mutex::new(late))),
        });
        outcome
    }

    /// Hears the reply of a timed-out buyvps in the background, until the horizon: it is
    /// recorded in the ledger (a success as the purchase's late address, first writer wins) and
    /// the order is made due at once, so its reconciliation adopts the server instead of waiting
    /// out the horizon or asking an admin. A listener lost with its process costs nothing: the
    /// purchase is already recorded as unknown and reconciled from the other evidence.
    pub(super) fn listen_for_late_reply(&self, n: u32, purchase_id: PurchaseId, late: LateReply) {
        let (store, clock, wake) = (
            Arc::clone(&self.engine.store),
            Arc::clone(&self.engine.clock),
            self.engine.waker(),
        );
        let order_id = self.order.id.clone();
        self.engine.late_replies.spawn(async move {
            let Some(outcome) = late.wait().await else {
                return;
            };
            let recorded = purchase_outcome(&outcome);
            tracing::info!(order_id = %order_id, outcome = recorded.kind(), "late reply to buyVps attempt {n}");
            let now = clock.now();
            if let Err(e) = store.record_outcome(purchase_id, &recorded, now).await {
                tracing::warn!(order_id = %order_id, "could not record the late reply to buyVps attempt {n}: {e}");
                return;
            }
            if matches!(recorded, PurchaseOutcome::Succeeded { .. }) {
                match store.expedite(&order_id, now).await {
                    Ok(true) => wake.notify_one(),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(order_id = %order_id, "could not make the order due after a late reply: {e}"),
                }
            }
        });
    }

    /// The seed's line for a failed buy attempt.
    fn attempt_failed(&mut self, n: u32, reason: &str) {
        self.progress.line(
            self.now(),
            format!("[SMARTVPS] ❌ buyVps attempt {n} failed: {reason}"),
        );
    }

    /// buyvps got no definite answer: the server may exist, so the policy for unknown outcomes
    /// decides, never a blind retry by default. The purchase is as the step's next write will
    /// record it.
    async fn unknown_reply(
        &mut self,
        intent: &PurchaseIntent,
        purchase_id: PurchaseId,
        reason: &str,
    ) -> Result<Then, EngineError> {
        let n = intent.attempt;
        metrics::counter!("provisioner_unknown_outcomes_total").increment(1);
        self.attempt_failed(n, reason);
        self.progress.warn(
            self.now(),
            format!("❓ Outcome of buyVps attempt {n} is unknown: SmartVPS may still complete it"),
        );
        let purchase = Purchase {
            id: purchase_id,
            order_id: intent.order_id.clone(),
            attempt: n,
            package_id: intent.package_id,
            package_name: intent.package_name.clone(),
            stock_before: intent.stock_before,
            pool_before: intent.pool_before,
            sent_at: intent.sent_at,
            outcome: Some(PurchaseOutcome::Unknown {
                reason: reason.to_string(),
            }),
            decided_at: Some(self.now()),
            resolution: None,
            late_ip: None,
            stock_after: None,
        };
        self.after_unknown(&purchase).await
    }

    /// What `policy.buy.on_unknown` does with a purchase whose outcome is unknown.
    pub(super) async fn after_unknown(&mut self, purchase: &Purchase) -> Result<Then, EngineError> {
        let setback = BuySetback::Unknown {
            reason: unknown_reason(purchase),
            sent_at: purchase.sent_at,
        };
        let decision = next::after_buy(self.policy(), purchase.attempt, setback, self.now());
        self.carry_out(decision, Some(purchase.id)).await
    }

    /// A purchase that bought `sale.ip`: deliverable only if the address is in the package and
    /// not already another order's; then the order owns it and the credentials phase starts.
    async fn sold(&mut self, sale: Sale<'_>) -> Result<Then, EngineError> {
        let now = self.now();
        let Sale {
            attempt: n,
            purchase_id,
            ip,
            ..
        } = sale;
        if let Some(reason) = self.undeliverable(&sale).await? {
            self.progress.warn(now, format!("⚠️ {reason}"));
            // Settled as escalated in the ledger, so that after an admin sends the order back
            // to buying it is not taken for an unapplied success again.
            let setback = BuySetback::Ambiguous { evidence: reason };
            let decision = next::after_buy(self.policy(), n, setback, self.now());
            return self.carry_out(decision, Some(purchase_id)).await;
        }
        self.progress.line(
            now,
            format!("[SMARTVPS] ✅ buyVps succeeded on attempt {n}"),
        );
        metrics::histogram!("provisioner_attempts_until_success", "phase" => "buy")
            .record(f64::from(n));
        self.progress
            .line(now, format!("[SMARTVPS] Server bought: {ip}"));
        self.bought(ip, None, now).await
    }

    /// Why a sold address must not be delivered, if it must not.
    async fn undeliverable(&self, sale: &Sale<'_>) -> Result<Option<String>, EngineError> {
        let Sale { package, ip, .. } = sale;
        if !package.contains(*ip) {
            return Ok(Some(format!(
                "SmartVPS assigned {ip}, which is not in package {package}: the server is ours (recorded in the ledger) but must not be \
                 delivered. Resolve: release or move it in the SmartVPS panel, then retry or fail the order."
            )));
        }
        let owner = self.engine.store.owner_of(*ip).await?;
        Ok(owner.filter(|o| o != &self.order.id).map(|owner| {
            format!(
                "SmartVPS returned {ip}, which already belongs to order {owner}: not delivering it twice"
            )
        }))
    }
}

/// Why a purchase's outcome is not a success, in words.
pub(super) fn unknown_reason(p: &Purchase) -> String {
    match &p.outcome {
        Some(PurchaseOutcome::Unknown { reason }) | Some(PurchaseOutcome::Rejected { reason }) => {
            reason.clone()
        }
        _ => "unknown outcome".into(),
    }
}

/// The ledger's form of a buyvps outcome.
fn purchase_outcome(outcome: &Outcome<Ipv4Addr>) -> PurchaseOutcome {
    match outcome {
        Outcome::Succeeded(ip) => PurchaseOutcome::Succeeded { ip: *ip },
        Outcome::Rejected(reason) => PurchaseOutcome::Rejected {
            reason: reason.clone(),
        },
        Outcome::Unknown(reason) => PurchaseOutcome::Unknown {
            reason: reason.clone(),
        },
    }
}

/// How many times an attempt reads the stock again because another order's purchase of the
/// package went out while it read, before it waits a flight's turn instead.
const MOVED_REREADS: usize = 3;

/// What [`Step::send`] did.
enum Sent {
    /// The intent was committed and buyvps sent; the step went on from its reply.
    Done(Then),
    /// Another order holds the package's flight: nothing was written.
    HeldBy(crate::domain::OrderId),
    /// Another order's purchase went out while the stock was read: nothing was written.
    Moved,
}

/// Counts a buyvps call in flight until dropped, so shutdown can wait for it.
struct BuyInFlight(Arc<AtomicUsize>);

impl BuyInFlight {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, AtomicOrdering::SeqCst);
        Self(Arc::clone(count))
    }
}

impl Drop for BuyInFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, AtomicOrdering::SeqCst);
    }
}
