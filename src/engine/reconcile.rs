//! Reconciliation: settling a purchase whose outcome is unknown from the evidence SmartVPS
//! offers (a late reply, then the package's stock) before anything is bought again.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::EngineError;
use super::buy::{StockRead, unknown_reason};
use super::discover::Discovery;
use super::step::{Keep, Step, Then};
use crate::clock::Timestamp;
use crate::domain::{Purchase, Resolution};
use crate::policy::OnUnknown;
use crate::policy::next::{self, BuySetback, Next};
use crate::provider::Outcome;
use crate::store::Change;

/// Lease kept free beyond the calls of an attempt, for its writes.
const LEASE_SLACK: Duration = Duration::from_secs(10);

/// What a stock read says about an unknown purchase.
enum Verdict {
    /// Nothing was bought; the evidence in words.
    NotBought(String),
    /// Something may have been bought; the evidence in words, for an admin.
    Moved(String),
}

impl Step<'_> {
    /// Settles an unknown purchase from the evidence: a late reply, or the package's stock.
    pub(super) async fn reconcile(&mut self, purchase: &Purchase) -> Result<Then, EngineError> {
        let now = self.now();
        if let Some(ip) = purchase.late_ip {
            return self.late_reply(purchase, ip, now).await;
        }
        if self.policy().on_unknown != OnUnknown::Reconcile {
            // A purchase left unknown by a lost worker under another policy: apply that policy now.
            return self.after_unknown(purchase).await;
        }
        // Whatever brought reconciliation here early (a restart, a lost worker's takeover, an
        // unreadable stock list read again), no verdict before the horizon.
        if !self
            .policy()
            .horizon_left(now.since(purchase.sent_at))
            .is_zero()
        {
            let setback = BuySetback::BeforeHorizon {
                sent_at: purchase.sent_at,
            };
            let decision = next::after_buy(self.policy(), purchase.attempt, setback, now);
            return self.carry_out(decision, Some(purchase.id)).await;
        }
        let read = match self
            .engine
            .provider
            .ipstock(self.policy().buy.timeout)
            .await
        {
            Outcome::Succeeded(list) => StockRead::new(list, self.order.package_id),
            Outcome::Rejected(why) | Outcome::Unknown(why) => {
                return self.stock_unreadable(purchase, why, now).await;
            }
        };
        self.weigh_stock(purchase, read, now).await
    }

    /// A stale worker's reply arrived after the purchase was marked unknown: adopt its address
    /// if it can be delivered, otherwise an admin decides.
    async fn late_reply(
        &mut self,
        purchase: &Purchase,
        ip: Ipv4Addr,
        now: Timestamp,
    ) -> Result<Then, EngineError> {
        let n = purchase.attempt;
        let in_package = purchase.package_name.contains(ip);
        let owner = self
            .engine
            .store
            .owner_of(ip)
            .await?
            .filter(|o| o != &self.order.id);
        if in_package && owner.is_none() {
            self.progress.line(
                now,
                format!(
                    "[SMARTVPS] ✅ buyVps attempt {n} had succeeded after all (late reply): server {ip}"
                ),
            );
            metrics::counter!("provisioner_reconciliations_total", "result" => "adopted")
                .increment(1);
            let adopted = (purchase.id, Resolution::Adopted { ip });
            return self.bought(ip, Some(adopted), now).await;
        }
        let why = match owner {
            Some(other) => format!("order {other} already holds it"),
            None => format!(
                "it is not in package {}: the server is ours but must not be delivered",
                purchase.package_name
            ),
        };
        let evidence = format!(
            "a late reply says buyVps attempt {n} bought {ip}, which cannot be delivered: {why}"
        );
        metrics::counter!("provisioner_reconciliations_total", "result" => "escalated")
            .increment(1);
        let decision = next::after_buy(
            self.policy(),
            n,
            BuySetback::Ambiguous { evidence },
            self.now(),
        );
        self.carry_out(decision, Some(purchase.id)).await
    }

    /// The stock list could not be read: read again later, or after long enough an admin decides.
    /// `now` is when reconciliation began, before the failed read.
    async fn stock_unreadable(
        &mut self,
        purchase: &Purchase,
        why: String,
        now: Timestamp,
    ) -> Result<Then, EngineError> {
        let setback = BuySetback::StockUnreadable {
            reason: why,
            decided_at: purchase.decided_at.unwrap_or(purchase.sent_at),
        };
        let decision = next::after_buy(self.policy(), purchase.attempt, setback, now);
        if matches!(decision.next, Next::Escalate { .. }) {
            metrics::counter!("provisioner_reconciliations_total", "result" => "escalated")
                .increment(1);
        }
        self.carry_out(decision, Some(purchase.id)).await
    }

    /// Settles the purchase from the stock read: nothing bought (then attempt again at once, with
    /// the same read, or fail when attempts are exhausted), or moved stock for an admin.
    async fn weigh_stock(
        &mut self,
        purchase: &Purchase,
        read: StockRead,
        now: Timestamp,
    ) -> Result<Then, EngineError> {
        let n = purchase.attempt;
        let mut scanned = false;
        self.settling_stock = read.entry.as_ref().map(|e| e.free);
        let setback = match verdict(purchase, &read) {
            Verdict::NotBought(evidence) => {
                self.progress.line(
                    now,
                    format!("[SMARTVPS] 🔎 Reconciled attempt {n}: {evidence}"),
                );
                metrics::counter!("provisioner_reconciliations_total", "result" => "not_bought")
                    .increment(1);
                let last_reason = unknown_reason(purchase);
                BuySetback::NotBought {
                    evidence,
                    last_reason,
                }
            }
            Verdict::Moved(evidence) => {
                self.progress
                    .warn(now, format!("🔎 Reconciled attempt {n}: {evidence}"));
                scanned = true;
                match self.discover(purchase, &read).await? {
                    Discovery::Adopt { ip, evidence } => {
                        let at = self.now();
                        self.progress
                            .line(at, format!("[SMARTVPS] ✅ Found by the scan: {evidence}"));
                        metrics::counter!("provisioner_reconciliations_total", "result" => "discovered")
                            .increment(1);
                        let adopted = (purchase.id, Resolution::Adopted { ip });
                        return self.bought(ip, Some(adopted), at).await;
                    }
                    Discovery::NotBought { evidence: scanned } => {
                        let at = self.now();
                        self.progress.line(
                            at,
                            format!("[SMARTVPS] 🔎 Reconciled attempt {n} by the scan: {scanned}"),
                        );
                        metrics::counter!("provisioner_reconciliations_total", "result" => "not_bought")
                            .increment(1);
                        BuySetback::NotBought {
                            evidence: format!("{evidence}. Scan: {scanned}"),
                            last_reason: unknown_reason(purchase),
                        }
                    }
                    Discovery::Ask {
                        evidence: scanned,
                        transient: true,
                    } => BuySetback::ScanUnsettled {
                        evidence: format!("{evidence}. Scan: {scanned}"),
                        scan: scanned,
                        sent_at: purchase.sent_at,
                    },
                    Discovery::Ask {
                        evidence: scanned,
                        transient: false,
                    } => {
                        metrics::counter!("provisioner_reconciliations_total", "result" => "escalated")
                            .increment(1);
                        BuySetback::Ambiguous {
                            evidence: format!("{evidence}. Scan: {scanned}"),
                        }
                    }
                }
            }
        };
        let unsettled = matches!(setback, BuySetback::ScanUnsettled { .. });
        let decision = next::after_buy(self.policy(), n, setback, now);
        if unsettled && matches!(decision.next, Next::Escalate { .. }) {
            // A scan still unsettled after its retries: an admin decides.
            metrics::counter!("provisioner_reconciliations_total", "result" => "escalated")
                .increment(1);
        }
        // Attempting at once, the settlement is saved first so a crash during the next attempt
        // cannot re-reconcile it.
        match self.carry_out(decision, Some(purchase.id)).await? {
            Then::GoOn if !scanned => self.attempt(Some(read)).await,
            Then::GoOn => {
                // A scan took part of the lease, and its stock read is old now. The next attempt
                // reads the stock afresh and may take a buy timeout; when the lease could lapse
                // before both end, it is left to the next claim (due now, the flight kept), so no
                // buyvps ever outlives its lease.
                let need = self.policy().buy.timeout.saturating_mul(2) + LEASE_SLACK;
                if self.now().plus(need) >= self.lease_expires_at() {
                    let now = self.now();
                    self.wait(Duration::ZERO, now);
                    return self.write(Change::default(), Keep::Flight).await;
                }
                self.attempt(None).await
            }
            Then::Stop => Ok(Then::Stop),
        }
    }
}

/// Nothing was bought only if our package's free count has not moved and never ran dry: a
/// purchase of ours takes an address from it, and SmartVPS hands out another package's address
/// only when it is exhausted. Any movement (ours or another reseller's) is ambiguous and goes to
/// an admin. The pool total is kept as evidence for the admin, not as a test: our own purchases
/// in other packages move it all the time.
fn verdict(purchase: &Purchase, read: &StockRead) -> Verdict {
    let n = purchase.attempt;
    let before = purchase.stock_before;
    let after = read.entry.as_ref().map(|s| s.free);
    match (before, after) {
        (Some(b), Some(a)) if a == b && a > 0 => Verdict::NotBought(format!(
            "free stock of package {} unchanged at {a} (and {} free over all packages) since attempt {n} was sent, and no \
             late reply: nothing was bought",
            purchase.package_name, read.pool
        )),
        _ => {
            let seen = |v: Option<u32>| v.map_or_else(|| "unknown".to_string(), |v| v.to_string());
            let pool_before = purchase
                .pool_before
                .map_or_else(|| "unknown".to_string(), |v| v.to_string());
            Verdict::Moved(format!(
                "free stock of package {} went from {} to {} (all packages: {pool_before} to {}) since buyVps attempt {n} got no \
                 definite answer: a server may have been bought for this order. Look for it in the SmartVPS panel (bought around \
                 {}), then resolve with its address, or confirm nothing was bought",
                purchase.package_name,
                seen(before),
                seen(after),
                read.pool,
                purchase.sent_at
            ))
        }
    }
}
