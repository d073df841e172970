//! The buy phase: one purchase per package in flight, an intent in the ledger before every
//! buyvps, three outcomes, and reconciliation of unknown ones before anything is bought again.

use std::net::Ipv4Addr;

use super::progress::Progress;
use super::{Engine, EngineError};
use crate::domain::{
    NoticeKind, Order, PackageName, Phase, Purchase, PurchaseIntent, PurchaseOutcome, Resolution,
};
use crate::policy::{OnUnknown, describe_wait};
use crate::provider::{CallContext, Outcome, StockEntry};
use crate::store::{Change, Flight, Lease, Recorded};

/// Whether the step goes on into the credentials phase.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// The order was saved and the lease released.
    Done,
    /// A server is owned; the lease is kept and the credentials phase starts now.
    Credentials,
}

pub(super) async fn step(
    e: &Engine,
    lease: &Lease,
    order: &mut Order,
    p: &mut Progress,
) -> Result<Next, EngineError> {
    let latest = e.store.purchases(&order.id).await?.pop();
    if let Some(purchase) = &latest
        && let Some(PurchaseOutcome::Succeeded { ip }) = purchase.outcome
        && purchase.resolution.is_none()
        && order.server_ip.is_none()
    {
        // Every path that applies a recorded success leaves the buying state (bought or
        // escalated), so a success still unapplied means its worker died between recording it
        // and saving the order. The server is ours: apply it, never buy again.
        let (n, ip) = (purchase.attempt, ip);
        p.warn(
            e.clock.now(),
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
        return succeeded(e, lease, order, p, sale).await;
    }
    if let Some(mut purchase) = latest.filter(Purchase::is_unsettled) {
        if purchase.outcome.is_none() {
            // We hold the lease, so the worker that sent this purchase lost its own lease before
            // recording a reply: it crashed or stalled mid-call. The server may exist.
            let now = e.clock.now();
            let outcome = PurchaseOutcome::Unknown {
                reason: "no reply recorded: the worker stopped mid-call".into(),
            };
            e.store.record_outcome(purchase.id, &outcome, now).await?;
            metrics::counter!("provisioner_unknown_outcomes_total").increment(1);
            p.warn(now, format!("❓ buyVps attempt {} has no recorded reply (worker stopped mid-call): outcome unknown", purchase.attempt));
            purchase = e
                .store
                .purchases(&order.id)
                .await?
                .pop()
                .unwrap_or(purchase);
            return after_unknown(e, lease, order, p, &purchase).await;
        }
        return reconcile(e, lease, order, p, &purchase).await;
    }
    attempt(e, lease, order, p, None).await
}

/// One read of SmartVPS's stock list, as evidence: our package's entry and the free total of
/// the whole pool (SmartVPS sometimes assigns an address from another package).
struct StockRead {
    entry: Option<StockEntry>,
    pool: u64,
}

impl StockRead {
    fn new(list: Vec<StockEntry>, package: crate::domain::PackageId) -> Self {
        let pool = list.iter().map(|s| u64::from(s.free)).sum();
        Self {
            entry: list.into_iter().find(|s| s.id == package),
            pool,
        }
    }
}

/// One buy attempt: single flight, stock read, intent, buyvps, outcome.
async fn attempt(
    e: &Engine,
    lease: &Lease,
    order: &mut Order,
    p: &mut Progress,
    stock: Option<StockRead>,
) -> Result<Next, EngineError> {
    let now = e.clock.now();
    if let Flight::HeldBy(other) = e.store.acquire_flight(lease, order.package_id).await? {
        tracing::debug!(order_id = %order.id, holder = %other, "package has a purchase in flight; waiting");
        let _ = order.wait_until(now.plus(e.settings.flight_wait), now);
        return finish(e, lease, order, p, Change::default()).await;
    }
    let read = match stock {
        Some(read) => read,
        None => match e.provider.ipstock(e.policy.buy.timeout).await {
            Outcome::Succeeded(list) => StockRead::new(list, order.package_id),
            Outcome::Rejected(why) | Outcome::Unknown(why) => {
                let n = count_attempt(e, order)?;
                return rejected(
                    e,
                    lease,
                    order,
                    p,
                    n,
                    &format!("could not read stock: {why}"),
                )
                .await;
            }
        },
    };
    let pool = read.pool;
    let entry = match read.entry {
        Some(entry) => entry,
        None => {
            let reason = format!(
                "package {} is not in SmartVPS's stock list",
                order.package_id
            );
            return fail_now(e, lease, order, p, reason).await;
        }
    };
    let name = match &entry.name {
        Ok(name) => name.clone(),
        Err(bad) => {
            let reason = format!(
                "package {} has a name SmartVPS sent that cannot be checked against addresses: {bad}",
                order.package_id
            );
            return fail_now(e, lease, order, p, reason).await;
        }
    };
    if !entry.active || entry.free == 0 {
        let n = count_attempt(e, order)?;
        let why = if entry.active {
            format!("package {name} is sold out (0 free)")
        } else {
            format!("package {name} is not active")
        };
        return rejected(e, lease, order, p, n, &why).await;
    }

    let n = order.start_buy_attempt(e.clock.now())?;
    let sent_at = e.clock.now();
    p.line(
        sent_at,
        format!(
            "[SMARTVPS] Calling buyVps - attempt {n}/{}",
            e.policy.buy.attempts
        ),
    );
    let intent = PurchaseIntent {
        order_id: order.id.clone(),
        attempt: n,
        package_id: order.package_id,
        package_name: name.clone(),
        stock_before: Some(entry.free),
        pool_before: Some(pool),
        sent_at,
    };
    let purchase_id = e
        .store
        .begin_purchase(lease, order, &intent, &p.take())
        .await?;

    let ctx = CallContext::for_order(&order.id, n);
    let outcome = e
        .provider
        .buy(&ctx, &name, order.ram_gb, e.policy.buy.timeout)
        .await;
    let now = e.clock.now();
    let recorded = match &outcome {
        Outcome::Succeeded(ip) => PurchaseOutcome::Succeeded { ip: *ip },
        Outcome::Rejected(reason) => PurchaseOutcome::Rejected {
            reason: reason.clone(),
        },
        Outcome::Unknown(reason) => PurchaseOutcome::Unknown {
            reason: reason.clone(),
        },
    };
    metrics::counter!("provisioner_purchases_total", "outcome" => recorded.kind()).increment(1);
    if e.store.record_outcome(purchase_id, &recorded, now).await? == Recorded::AlreadyDecided {
        // Another worker took this order over and marked the purchase unknown; the reply is kept
        // in the ledger as evidence for its reconciliation. Our lease is gone.
        tracing::warn!(order_id = %order.id, "reply for buyVps attempt {n} arrived after the order was taken over; kept as evidence");
        return Ok(Next::Done);
    }
    match outcome {
        Outcome::Succeeded(ip) => {
            let sale = Sale {
                attempt: n,
                purchase_id,
                package: &name,
                ip,
            };
            succeeded(e, lease, order, p, sale).await
        }
        Outcome::Rejected(reason) => {
            p.line(
                now,
                format!("[SMARTVPS] ❌ buyVps attempt {n} failed: {reason}"),
            );
            schedule_or_fail(
                e,
                lease,
                order,
                p,
                n,
                &reason,
                Change {
                    release_flight: true,
                    ..Change::default()
                },
            )
            .await
        }
        Outcome::Unknown(reason) => {
            metrics::counter!("provisioner_unknown_outcomes_total").increment(1);
            p.line(
                now,
                format!("[SMARTVPS] ❌ buyVps attempt {n} failed: {reason}"),
            );
            p.warn(
                now,
                format!(
                    "❓ Outcome of buyVps attempt {n} is unknown: SmartVPS may still complete it"
                ),
            );
            let purchase = e
                .store
                .purchases(&order.id)
                .await?
                .into_iter()
                .find(|x| x.id == purchase_id);
            match purchase {
                Some(purchase) => after_unknown(e, lease, order, p, &purchase).await,
                None => Err(corrupt(format!("purchase {purchase_id} vanished"))),
            }
        }
    }
}

/// A purchase that bought `ip` for attempt `n`: deliverable only if the address is in the package
/// and not already another order's; then the order owns it and the credentials phase starts.
/// A success SmartVPS reported: which attempt, which ledger row, which package, which address.
struct Sale<'a> {
    attempt: u32,
    purchase_id: i64,
    package: &'a PackageName,
    ip: Ipv4Addr,
}

async fn succeeded(
    e: &Engine,
    lease: &Lease,
    order: &mut Order,
    p: &mut Progress,
    sale: Sale<'_>,
) -> Result<Next, EngineError> {
    let Sale {
        attempt: n,
        purchase_id,
        package: name,
        ip,
    } = sale;
    let now = e.clock.now();
    // An undeliverable success is settled as escalated in the ledger, so that after an admin
    // sends the order back to buying it is not taken for an unapplied success again.
    let held_back = |reason: &str| Change {
        resolve: Some((purchase_id, escalated(reason))),
        ..Change::default()
    };
    if !name.contains(ip) {
        let reason = format!(
            "SmartVPS assigned {ip}, which is not in package {name}: the server is ours (recorded in the ledger) but must not be \
             delivered. Resolve: release or move it in the SmartVPS panel, then retry or fail the order."
        );
        p.warn(now, format!("⚠️ {reason}"));
        let change = held_back(&reason);
        return escalate(e, lease, order, p, reason, change).await;
    }
    if let Some(owner) = e.store.owner_of(ip).await?.filter(|o| o != &order.id) {
        let reason = format!(
            "SmartVPS returned {ip}, which already belongs to order {owner}: not delivering it twice"
        );
        p.warn(now, format!("⚠️ {reason}"));
        let change = held_back(&reason);
        return escalate(e, lease, order, p, reason, change).await;
    }
    p.line(
        now,
        format!("[SMARTVPS] ✅ buyVps succeeded on attempt {n}"),
    );
    metrics::histogram!("provisioner_attempts_until_success", "phase" => "buy")
        .record(f64::from(n));
    p.line(now, format!("[SMARTVPS] Server bought: {ip}"));
    order.bought(ip, now)?;
    let change = Change {
        entries: p.take(),
        keep_lease: true,
        release_flight: true,
        ..Change::default()
    };
    e.store.save(lease, order, change).await?;
    Ok(Next::Credentials)
}

/// What the policy does right after an outcome turned out unknown.
async fn after_unknown(
    e: &Engine,
    lease: &Lease,
    order: &mut Order,
    p: &mut Progress,
    purchase: &Purchase,
) -> Result<Next, EngineError> {
    let now = e.clock.now();
    let n = purchase.attempt;
    match e.policy.on_unknown {
        OnUnknown::Escalate => {
            let reason = format!(
                "buyVps attempt {n} has an unknown outcome and policy.buy.on_unknown = escalate: check the SmartVPS panel for a server \
                 bought at {}",
                purchase.sent_at
            );
            let change = Change {
                resolve: Some((purchase.id, escalated(&reason))),
                ..Change::default()
            };
            escalate(e, lease, order, p, reason, change).await
        }
        OnUnknown::Retry => {
            p.warn(now, "⚠️ UNSAFE: retrying without reconciliation (policy.buy.on_unknown = retry): this can buy a second server");
            let reason = unknown_reason(purchase);
            let change = Change {
                resolve: Some((purchase.id, Resolution::RetriedBlindly)),
                release_flight: true,
                ..Change::default()
            };
            schedule_or_fail(e, lease, order, p, n, &reason, change).await
        }
        OnUnknown::Reconcile => {
            // The same strategic wait the seed puts before a retry, so the purchase can settle
            // upstream; the package's single flight stays held so our own purchases cannot blur
            // the stock evidence meanwhile.
            let wait = e.policy.buy.settle_after(n);
            p.line(
                now,
                format!(
                    "[SMARTVPS] ⏳ Strategic delay: Waiting {} before retry...",
                    describe_wait(wait)
                ),
            );
            p.line(now, "[SMARTVPS] 🔎 Before any new purchase, SmartVPS's stock will be checked to confirm nothing was bought");
            let _ = order.wait_until(now.plus(wait), now);
            finish(e, lease, order, p, Change::default()).await
        }
    }
}

/// Settles an unknown purchase from the evidence: a late reply, or the package's stock.
async fn reconcile(
    e: &Engine,
    lease: &Lease,
    order: &mut Order,
    p: &mut Progress,
    purchase: &Purchase,
) -> Result<Next, EngineError> {
    let now = e.clock.now();
    let n = purchase.attempt;
    if let Some(ip) = purchase.late_ip {
        if purchase.package_name.contains(ip)
            && e.store.owner_of(ip).await?.is_none_or(|o| o == order.id)
        {
            p.line(now, format!("[SMARTVPS] ✅ buyVps attempt {n} had succeeded after all (late reply): server {ip}"));
            metrics::counter!("provisioner_reconciliations_total", "result" => "adopted")
                .increment(1);
            order.bought(ip, now)?;
            let change = Change {
                entries: p.take(),
                keep_lease: true,
                release_flight: true,
                resolve: Some((purchase.id, Resolution::Adopted { ip })),
                ..Change::default()
            };
            e.store.save(lease, order, change).await?;
            return Ok(Next::Credentials);
        }
        let reason = format!(
            "a late reply says buyVps attempt {n} bought {ip}, which cannot be delivered (wrong package or already owned)"
        );
        metrics::counter!("provisioner_reconciliations_total", "result" => "escalated")
            .increment(1);
        let change = Change {
            resolve: Some((purchase.id, escalated(&reason))),
            ..Change::default()
        };
        return escalate(e, lease, order, p, reason, change).await;
    }
    match e.policy.on_unknown {
        OnUnknown::Reconcile => {}
        // A purchase left unknown by a lost worker under another policy: apply that policy now.
        _ => return after_unknown(e, lease, order, p, purchase).await,
    }
    let read = match e.provider.ipstock(e.policy.buy.timeout).await {
        Outcome::Succeeded(list) => StockRead::new(list, order.package_id),
        Outcome::Rejected(why) | Outcome::Unknown(why) => {
            let decided = purchase.decided_at.unwrap_or(purchase.sent_at);
            let settle = e.policy.buy.settle_after(n);
            if now.since(decided) >= settle * 4 {
                metrics::counter!("provisioner_reconciliations_total", "result" => "escalated")
                    .increment(1);
                let reason = format!(
                    "buyVps attempt {n} has an unknown outcome and SmartVPS's stock could not be read to reconcile it ({why})"
                );
                return escalate(
                    e,
                    lease,
                    order,
                    p,
                    reason,
                    Change {
                        resolve: Some((purchase.id, escalated(&why))),
                        ..Change::default()
                    },
                )
                .await;
            }
            p.line(now, format!("[SMARTVPS] 🔎 Could not read stock to reconcile attempt {n} ({why}); trying again in {}", describe_wait(settle)));
            let _ = order.wait_until(now.plus(settle), now);
            return finish(e, lease, order, p, Change::default()).await;
        }
    };
    let before = purchase.stock_before;
    let after = read.entry.as_ref().map(|s| s.free);
    // Nothing was bought only if our package's free count has not moved and never ran dry: a
    // purchase of ours takes an address from it, and SmartVPS hands out another package's address
    // only when it is exhausted. Any movement (ours or another reseller's) is ambiguous and goes
    // to an admin. The pool total is kept as evidence for the admin, not as a test: our own
    // purchases in other packages move it all the time.
    match (before, after) {
        (Some(b), Some(a)) if a == b && a > 0 => {
            let evidence = format!(
                "free stock of package {} unchanged at {a} (and {} free over all packages) since attempt {n} was sent, and no \
                 late reply: nothing was bought",
                purchase.package_name, read.pool
            );
            p.line(
                now,
                format!("[SMARTVPS] 🔎 Reconciled attempt {n}: {evidence}"),
            );
            metrics::counter!("provisioner_reconciliations_total", "result" => "not_bought")
                .increment(1);
            let change = Change {
                resolve: Some((purchase.id, Resolution::NotBought { evidence })),
                ..Change::default()
            };
            if n >= e.policy.buy.attempts {
                let reason = format!(
                    "buyVps failed {n} times (last: {}); confirmed nothing was bought",
                    unknown_reason(purchase)
                );
                p.line(now, format!("💥 PROVISIONING FAILED after {n} attempts"));
                return fail(
                    e,
                    lease,
                    order,
                    p,
                    Phase::Buy,
                    reason,
                    Change {
                        release_flight: true,
                        ..change
                    },
                )
                .await;
            }
            // Save the settlement first so a crash during the next attempt cannot re-reconcile it.
            e.store
                .save(
                    lease,
                    order,
                    Change {
                        entries: p.take(),
                        keep_lease: true,
                        ..change
                    },
                )
                .await?;
            attempt(e, lease, order, p, Some(read)).await
        }
        _ => {
            let seen = |v: Option<u32>| v.map_or_else(|| "unknown".to_string(), |v| v.to_string());
            let pool_before = purchase
                .pool_before
                .map_or_else(|| "unknown".to_string(), |v| v.to_string());
            let evidence = format!(
                "free stock of package {} went from {} to {} (all packages: {pool_before} to {}) since buyVps attempt {n} got no \
                 definite answer: a server may have been bought for this order. Look for it in the SmartVPS panel (bought around \
                 {}), then resolve with its address, or confirm nothing was bought",
                purchase.package_name,
                seen(before),
                seen(after),
                read.pool,
                purchase.sent_at
            );
            p.warn(now, format!("🔎 Reconciled attempt {n}: {evidence}"));
            metrics::counter!("provisioner_reconciliations_total", "result" => "escalated")
                .increment(1);
            let change = Change {
                resolve: Some((
                    purchase.id,
                    Resolution::Escalated {
                        evidence: evidence.clone(),
                    },
                )),
                ..Change::default()
            };
            escalate(e, lease, order, p, evidence, change).await
        }
    }
}

fn escalated(evidence: &str) -> Resolution {
    Resolution::Escalated {
        evidence: evidence.to_string(),
    }
}

fn unknown_reason(p: &Purchase) -> String {
    match &p.outcome {
        Some(PurchaseOutcome::Unknown { reason }) | Some(PurchaseOutcome::Rejected { reason }) => {
            reason.clone()
        }
        _ => "unknown outcome".into(),
    }
}

fn count_attempt(e: &Engine, order: &mut Order) -> Result<u32, EngineError> {
    Ok(order.start_buy_attempt(e.clock.now())?)
}

async fn rejected(
    e: &Engine,
    lease: &Lease,
    order: &mut Order,
    p: &mut Progress,
    n: u32,
    reason: &str,
) -> Result<Next, EngineError> {
    let now = e.clock.now();
    p.line(
        now,
        format!("[SMARTVPS] ❌ buyVps attempt {n} failed: {reason}"),
    );
    schedule_or_fail(
        e,
        lease,
        order,
        p,
        n,
        reason,
        Change {
            release_flight: true,
            ..Change::default()
        },
    )
    .await
}

/// After a failed attempt: the strategic wait, or failure when attempts are exhausted.
async fn schedule_or_fail(
    e: &Engine,
    lease: &Lease,
    order: &mut Order,
    p: &mut Progress,
    n: u32,
    reason: &str,
    change: Change,
) -> Result<Next, EngineError> {
    let now = e.clock.now();
    match e.policy.buy.delay_after(n) {
        Some(wait) => {
            p.line(
                now,
                format!(
                    "[SMARTVPS] ⏳ Strategic delay: Waiting {} before retry...",
                    describe_wait(wait)
                ),
            );
            p.line(now, "[SMARTVPS] 💡 This allows SmartVPS API to fully process and prevents race conditions");
            let _ = order.wait_until(now.plus(wait), now);
            finish(e, lease, order, p, change).await
        }
        None => {
            p.line(now, format!("💥 PROVISIONING FAILED after {n} attempts"));
            fail(
                e,
                lease,
                order,
                p,
                Phase::Buy,
                format!("buyVps failed {n} times; last: {reason}"),
                change,
            )
            .await
        }
    }
}

/// A failure no retry can fix (unknown package): fail without spending attempts.
async fn fail_now(
    e: &Engine,
    lease: &Lease,
    order: &mut Order,
    p: &mut Progress,
    reason: String,
) -> Result<Next, EngineError> {
    p.line(e.clock.now(), format!("💥 PROVISIONING FAILED: {reason}"));
    fail(
        e,
        lease,
        order,
        p,
        Phase::Buy,
        reason,
        Change {
            release_flight: true,
            ..Change::default()
        },
    )
    .await
}

async fn fail(
    e: &Engine,
    lease: &Lease,
    order: &mut Order,
    p: &mut Progress,
    phase: Phase,
    reason: String,
    change: Change,
) -> Result<Next, EngineError> {
    let now = e.clock.now();
    order.fail(phase, reason, now)?;
    p.line(
        now,
        "📧 Customer notified: provisioning failed; an admin can retry",
    );
    let change = Change {
        notices: vec![NoticeKind::Failed, NoticeKind::AdminFailed],
        ..change
    };
    finish(e, lease, order, p, change).await
}

pub(super) async fn escalate(
    e: &Engine,
    lease: &Lease,
    order: &mut Order,
    p: &mut Progress,
    reason: String,
    change: Change,
) -> Result<Next, EngineError> {
    let now = e.clock.now();
    order.escalate(Phase::Buy, reason, now)?;
    p.warn(
        now,
        "🛑 Order needs attention: an admin must decide (no automatic purchase will be made)",
    );
    let change = Change {
        notices: vec![NoticeKind::NeedsAttention, NoticeKind::AdminNeedsAttention],
        release_flight: true,
        ..change
    };
    finish(e, lease, order, p, change).await
}

async fn finish(
    e: &Engine,
    lease: &Lease,
    order: &Order,
    p: &mut Progress,
    change: Change,
) -> Result<Next, EngineError> {
    let change = Change {
        entries: p.take(),
        keep_lease: false,
        ..change
    };
    e.store.save(lease, order, change).await?;
    Ok(Next::Done)
}

/// The store handed back something inconsistent with what it was given.
fn corrupt(e: impl std::fmt::Display) -> EngineError {
    EngineError::Store(crate::store::StoreError::Corrupt(e.to_string()))
}
