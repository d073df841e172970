//! One step of one order: the engine, the lease the order is worked under, the order and the
//! timeline lines written so far, carried together so that the phases need nothing else.
//!
//! Every write of a step goes through [`Step::write`], the one place that decides what the step
//! still holds afterwards (its lease, its package's single flight); decisions taken by
//! [`crate::policy::next`] are carried out by [`Step::carry_out`].

use std::net::Ipv4Addr;
use std::time::Duration;

use super::progress::Progress;
use super::{Engine, EngineError};
use crate::clock::Timestamp;
use crate::domain::{NoticeKind, Order, OrderState, Phase, PurchaseId, PurchaseIntent, Resolution};
use crate::policy::RetryPolicy;
use crate::policy::next::{Decision, Next};
use crate::provider::LateReply;
use crate::store::{Begun, Change, Claimed, FlightState, Lease, OutcomeRecord, StoreError};

/// One order being taken one step further.
pub(super) struct Step<'e> {
    /// The ports and the policy.
    pub(super) engine: &'e Engine,
    /// The claim that fences every write of this step.
    lease: Lease,
    /// The order as this step has changed it so far; each write persists it.
    pub(super) order: Order,
    /// Lines written since the last write, committed with the next one.
    pub(super) progress: Progress,
    /// A buyvps reply not yet in the ledger: recorded by the step's next write, in the same
    /// transaction as what follows from it, so the reply and (say) "bought, flight released"
    /// cost one commit. A step that ends before writing records it on its own
    /// ([`Step::flush_pending`]).
    pending: Option<PendingReply>,
    /// A ready server's term as read by this step (`None` until read): renewals and expiry.
    pub(super) life: Option<super::life::Life>,
    /// The package's free count a reconciliation read, saved with the settlement it leads to.
    pub(super) settling_stock: Option<u32>,
    /// Next orders to claim with the write that releases the lease, in its commit (`None`: the
    /// step's writes are plain saves). Taken by that write, so at most one write claims.
    chain: Option<Chain>,
    /// What the releasing write claimed: the caller works them next.
    chained: Vec<super::Claimed>,
}

/// A step's releasing write claiming the worker's next orders in its own commit.
pub(super) struct Chain {
    /// How many orders, at most.
    pub(super) limit: usize,
    /// Where the new leases are registered as soon as they are committed, before anything else
    /// can cut the step short (the worker loop releases them at shutdown).
    pub(super) held: Option<super::Held>,
}

/// A buyvps reply waiting for the step's next write.
pub(super) struct PendingReply {
    /// The ledger row and outcome to record.
    pub(super) record: OutcomeRecord,
    /// The attempt number and the open connection of a timed-out call, listened to once the
    /// outcome is recorded, so a late reply always comes second. In a mutex only so that the
    /// step stays `Sync` (the reply's future is `Send`, not `Sync`); never contended.
    pub(super) late: Option<(u32, std::sync::Mutex<LateReply>)>,
}

/// Whether a write ended the step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Then {
    /// The order is saved and the lease released (or lost): nothing more is written.
    Stop,
    /// The lease is kept and the order goes on at once: into the credentials phase once a server
    /// is owned, or into a new purchase once the last one was settled as not bought.
    GoOn,
}

/// What a write leaves the step holding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Keep {
    /// Nothing: the lease is released and the package's flight given up (the purchase is
    /// settled, or the order left the buying state, which gives the flight up anyway).
    Nothing,
    /// Whatever flight the order has, but not the lease: an unknown purchase waits to be
    /// reconciled under it, or the order holds none while it waits for another order's.
    Flight,
    /// The lease, not the flight: a server is owned and the credentials phase starts now.
    Lease,
    /// The lease and the flight: the last purchase was settled as not bought and the next
    /// one goes out now, with no other order's purchase in between.
    LeaseAndFlight,
}

impl<'e> Step<'e> {
    /// A step over a claimed order.
    pub(super) fn new(engine: &'e Engine, claimed: Claimed) -> Self {
        let Claimed { lease, order } = claimed;
        Self {
            engine,
            progress: Progress::new(order.id.clone()),
            lease,
            order,
            pending: None,
            life: None,
            settling_stock: None,
            chain: None,
            chained: Vec::new(),
        }
    }

    /// Has the step's releasing write also claim the worker's next orders (see [`Chain`]).
    pub(super) fn chaining(mut self, chain: Chain) -> Self {
        if chain.limit > 0 {
            self.chain = Some(chain);
        }
        self
    }

    /// The orders the releasing write claimed (none when no write released the lease, or it
    /// was not chained).
    pub(super) fn take_chained(&mut self) -> Vec<super::Claimed> {
        std::mem::take(&mut self.chained)
    }

    /// The engine's clock, now.
    /// When this step's lease lapses: a long piece of work (a scan) must end before it.
    pub(super) fn lease_expires_at(&self) -> Timestamp {
        self.lease.expires_at
    }

    pub(super) fn now(&self) -> Timestamp {
        self.engine.clock.now()
    }

    /// The retry policy.
    pub(super) fn policy(&self) -> &'e RetryPolicy {
        &self.engine.policy
    }

    /// Queued -> buying, the first time a worker picks the order up.
    pub(super) fn begin(&mut self) {
        if self.order.state != OrderState::Queued {
            return;
        }
        let now = self.now();
        if self.order.begin_buying(now).is_ok() {
            self.progress.line(
                now,
                format!(
                    "[SMARTVPS] 🚀 Provisioning started for order {}",
                    self.order.order_ref.as_str()
                ),
            );
        }
    }

    /// Writes the order, the lines so far and `change` under the lease; `keep` says what the
    /// step still holds afterwards. The only place the lease and flight flags are set.
    pub(super) async fn write(&mut self, change: Change, keep: Keep) -> Result<Then, EngineError> {
        let (keep_lease, release_flight) = match keep {
            Keep::Nothing => (false, true),
            Keep::Flight => (false, false),
            Keep::Lease => (true, true),
            Keep::LeaseAndFlight => (true, false),
        };
        let pending = self.pending.take();
        let change = Change {
            entries: self.progress.take(),
            keep_lease,
            release_flight,
            outcome: pending.as_ref().map(|p| p.record.clone()),
            ..change
        };
        // Only a write that lets the lease go may claim: it is the step's last.
        let saved = match self.chain.take_if(|_| !keep_lease) {
            None => {
                self.engine
                    .store
                    .save(&self.lease, &self.order, change)
                    .await
            }
            Some(chain) => self.save_and_claim(change, chain).await,
        };
        if let Some(p) = pending {
            match &saved {
                Ok(()) => self.listen(p.record.purchase_id, p.late),
                Err(StoreError::LeaseLost(_)) => {
                    // The reply is in the ledger (first writer wins), kept as evidence for the
                    // worker that took the order over.
                    tracing::warn!(order_id = %self.order.id, "reply for buyVps arrived after the order was taken over; kept as evidence");
                    self.listen(p.record.purchase_id, p.late);
                    return Ok(Then::Stop);
                }
                Err(_) => {
                    // Nothing of the write was kept; the reply still must be.
                    self.pending = Some(p);
                    self.flush_pending().await;
                }
            }
        }
        saved?;
        Ok(if keep_lease { Then::GoOn } else { Then::Stop })
    }

    /// The releasing write with the worker's next claim in its commit; the claimed orders are
    /// registered in `chain.held` at once and kept for the caller.
    async fn save_and_claim(&mut self, change: Change, chain: Chain) -> Result<(), StoreError> {
        let engine = self.engine;
        let claimed = engine
            .store
            .save_and_claim(
                &self.lease,
                &self.order,
                change,
                engine.clock.now(),
                engine.settings.lease,
                chain.limit,
            )
            .await?;
        if let Some(held) = &chain.held {
            for c in &claimed {
                held.add(c.lease.clone());
            }
        }
        self.chained = claimed;
        Ok(())
    }

    /// Holds a buyvps reply for the step's next write (see [`Step::pending`]).
    pub(super) fn hold_reply(&mut self, reply: PendingReply) {
        self.pending = Some(reply);
    }

    /// Records a reply the step did not get to write (it failed first), on its own, and
    /// listens for its late reply. Best effort: a failure here is what a crash would leave, an
    /// intent without an outcome, which the next claim reads as unknown.
    pub(super) async fn flush_pending(&mut self) {
        let Some(p) = self.pending.take() else {
            return;
        };
        let r = &p.record;
        if let Err(e) = self
            .engine
            .store
            .record_outcome(r.purchase_id, &r.outcome, r.at)
            .await
        {
            tracing::warn!(order_id = %self.order.id, "could not record the buyVps reply: {e}");
        }
        self.listen(p.record.purchase_id, p.late);
    }

    fn listen(&self, purchase_id: PurchaseId, late: Option<(u32, std::sync::Mutex<LateReply>)>) {
        if let Some((n, late)) = late {
            let late = late
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.listen_for_late_reply(n, purchase_id, late);
        }
    }

    /// Takes the package's flight and commits the purchase intent with `next` (the order with
    /// its new attempt count), the lines so far and `line` (the call about to be made), in one
    /// transaction, before buyvps is sent; the lease is kept. When the flight is refused,
    /// nothing is written and the step is left as it was.
    pub(super) async fn begin_purchase(
        &mut self,
        next: Order,
        intent: &PurchaseIntent,
        line: String,
        seen: &FlightState,
    ) -> Result<Begun, EngineError> {
        let mut entries = self.progress.take();
        let before = entries.len();
        entries.push(crate::domain::TimelineEntry {
            at: intent.sent_at,
            kind: crate::domain::EntryKind::Progress,
            message: line,
        });
        let begun = self
            .engine
            .store
            .begin_purchase_in_flight(&self.lease, &next, intent, &entries, seen)
            .await;
        match &begun {
            Ok(Begun::Purchase(_)) => {
                if let Some(line) = entries.last() {
                    tracing::info!(order_id = %self.order.id, "{}", line.message);
                }
                self.order = next;
            }
            _ => {
                entries.truncate(before);
                self.progress.put_back(entries);
            }
        }
        Ok(begun?)
    }

    /// Puts the order to sleep until `wait` after `now` (a persisted wait, never an in-memory one).
    pub(super) fn wait(&mut self, wait: Duration, now: Timestamp) {
        // Only an order no longer worked refuses a wake-up time, and then it needs none.
        let _ = self.order.wait_until(now.plus(wait), now);
    }

    /// Carries out a decision about the purchase `purchase` (the ledger row it settles, if any).
    ///
    /// # Errors
    /// When the store fails, or the decision settles a purchase the caller did not name (a bug).
    pub(super) async fn carry_out(
        &mut self,
        decision: Decision,
        purchase: Option<PurchaseId>,
    ) -> Result<Then, EngineError> {
        let Decision {
            next,
            settles,
            lines,
            at,
        } = decision;
        for line in lines {
            self.progress.push(at, line.kind, line.text);
        }
        let resolve = match (settles, purchase) {
            (None, _) => None,
            (Some(resolution), Some(id)) => Some((id, resolution)),
            (Some(resolution), None) => {
                return Err(EngineError::Logic(format!(
                    "a decision settles a purchase ({resolution:?}) but the step named none"
                )));
            }
        };
        let stock_after = resolve.as_ref().and(self.settling_stock.take());
        let change = Change {
            resolve,
            stock_after,
            ..Change::default()
        };
        match next {
            Next::Retry { wait } => {
                self.wait(wait, at);
                self.write(change, Keep::Nothing).await
            }
            Next::Reconcile { wait } => {
                self.wait(wait, at);
                self.write(change, Keep::Flight).await
            }
            Next::AttemptNow => self.write(change, Keep::LeaseAndFlight).await,
            Next::Fail { phase, reason } => self.fail(phase, reason, change, at).await,
            Next::Escalate { phase, reason } => self.escalate(phase, reason, change, at).await,
        }
    }

    /// Fails the order in `phase` and queues the customer's and the admin's notices.
    pub(super) async fn fail(
        &mut self,
        phase: Phase,
        reason: String,
        change: Change,
        at: Timestamp,
    ) -> Result<Then, EngineError> {
        self.order.fail(phase, reason, at)?;
        let change = Change {
            notices: vec![NoticeKind::Failed, NoticeKind::AdminFailed],
            ..change
        };
        self.write(change, Keep::Nothing).await
    }

    /// Hands the order to an admin and queues the notices saying so.
    pub(super) async fn escalate(
        &mut self,
        phase: Phase,
        reason: impl Into<String>,
        change: Change,
        at: Timestamp,
    ) -> Result<Then, EngineError> {
        self.order.escalate(phase, reason, at)?;
        let change = Change {
            notices: vec![NoticeKind::NeedsAttention, NoticeKind::AdminNeedsAttention],
            ..change
        };
        self.write(change, Keep::Nothing).await
    }

    /// The server at `ip` is this order's (settling the purchase with `resolve`, if given):
    /// the flight is given up and the step goes on into the credentials phase.
    pub(super) async fn bought(
        &mut self,
        ip: Ipv4Addr,
        resolve: Option<(PurchaseId, Resolution)>,
        at: Timestamp,
    ) -> Result<Then, EngineError> {
        self.order.bought(ip, at)?;
        let change = Change {
            resolve,
            ..Change::default()
        };
        self.write(change, Keep::Lease).await
    }

    /// Nothing to do for the order's state (an admin changed it meanwhile): writes the lines so
    /// far and lets go.
    pub(super) async fn let_go(&mut self) -> Result<Then, EngineError> {
        self.write(Change::default(), Keep::Nothing).await
    }
}
