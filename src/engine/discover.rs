//! Server discovery: when the evidence says a purchase of ours may have bought a server (the
//! stock moved, no reply named it), look for it. SmartVPS's status is scoped to our account: it
//! answers for a server of ours and says the bare `error` for any other address. So a scan calls
//! status over the package's addresses (names that cover at most [`MAX_SCAN`] of them), skipping
//! addresses an order owns, a bounded number of calls at a time and paced, and keeps every server
//! it finds in the inventory with when it was first seen.
//!
//! A candidate is a server on our account, in the package, owned by no order, not known from an
//! earlier scan, with the ordered RAM and (when status reports it) an expiry about one term after
//! the purchase was sent. Exactly one candidate, with stock that fell: it is adopted, with the
//! evidence in the timeline. Anything else (several, none, an incomplete scan, a package too wide)
//! goes to an admin with the candidates listed. A scan proves presence, never absence: `error`
//! also means a failure, and a status call can time out, so a negative scan concludes nothing.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use super::EngineError;
use super::buy::StockRead;
use super::step::Step;
use crate::clock::Timestamp;
use crate::domain::{
    CompleteScan, Discovered, EntryKind, Order, OrderId, OrderState, Purchase, Resolution,
    TimelineEntry,
};
use crate::provider::{CallContext, Outcome};
use crate::store::{OrderFilter, all_orders};

/// The widest package scanned: a name of three exact octets covers 256 addresses.
pub const MAX_SCAN: usize = 1024;
/// Status calls in flight at once during a scan.
pub const SCAN_CONCURRENCY: usize = 64;
/// Status calls started per second at most, so a scan never floods SmartVPS.
pub const SCAN_RATE_PER_SEC: u32 = 32;
/// How far back rival purchases are looked for, by their order's creation.
const RIVAL_LOOKBACK: Duration = Duration::from_secs(24 * 3600);
// The complete scans that clear a rival must outlive the look-back that finds rivals.
const _: () = assert!(
    RIVAL_LOOKBACK.as_secs() <= crate::domain::inventory::COMPLETE_SCAN_RETENTION.as_secs()
);
/// Definite `error` replies an address must give, in separate reads, before a scan with no
/// candidate may conclude that nothing was bought: `error` also means a failure, so one server
/// of ours hides behind all of them only if status failed for it this many times running.
pub const NEGATIVE_READS: u32 = 4;
/// Status calls a scan makes at most for one address: its `error` reads and a few re-reads
/// after calls with no definite answer.
const MAX_READS: u32 = NEGATIVE_READS + 3;
/// The least time between two reads of one address, so a re-read is a later read.
const REREAD_GAP: Duration = Duration::from_secs(5);
/// The longest wait for the stock list read again after a scan (the scan leaves at least the
/// status timeout of the lease free).
const STOCK_REREAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Time kept free at the end of the lease for the step's write after a scan.
const SCAN_WRITE_MARGIN: Duration = Duration::from_secs(5);
/// A server bought by a purchase expires one term after it; a month is 28 to 31 days, and the
/// date is a calendar day in SmartVPS's zone: the window a candidate's expiry must fall in.
const EXPIRY_WINDOW_DAYS: (u64, u64) = (26, 33);

/// What a scan says about an unknown purchase.
pub(super) enum Discovery {
    /// Exactly one server can be this purchase's: adopt it.
    Adopt {
        /// Its address.
        ip: Ipv4Addr,
        /// The evidence, in words, for the timeline.
        evidence: String,
    },
    /// A complete scan found no candidate, each address answered `error` in
    /// [`NEGATIVE_READS`] separate reads, and the package's stock fell but did not run dry (so
    /// SmartVPS had no reason to place the purchase in another package): nothing was bought.
    NotBought {
        /// The evidence, in words, for the ledger.
        evidence: String,
    },
    /// An admin must decide; the evidence lists the candidates, if any.
    Ask {
        /// The evidence, in words.
        evidence: String,
        /// Whether what stood in the way may pass (an address unanswered or not confirmed, a
        /// candidate an unsettled purchase of another order could own), so a later scan may
        /// settle it.
        transient: bool,
    },
}

impl Step<'_> {
    /// Scans the package of `purchase` for the server it may have bought.
    pub(super) async fn discover(
        &mut self,
        purchase: &Purchase,
        read: &StockRead,
    ) -> Result<Discovery, EngineError> {
        let package = &purchase.package_name;
        let Some(addresses) = package.addresses(MAX_SCAN) else {
            metrics::counter!("provisioner_discovery_scans_total", "result" => "too_wide")
                .increment(1);
            return Ok(Discovery::Ask {
                evidence: format!(
                    "package {package} covers more than {MAX_SCAN} addresses, too many to scan for the server; look for it in the \
                     SmartVPS panel"
                ),
                transient: false,
            });
        };
        let store = &self.engine.store;
        // The inventory, by address: when an earlier scan first saw each server. One seen before
        // this purchase was sent cannot be its; one first seen since (by another order's scan)
        // still can, so it is read again.
        let inventory: HashMap<Ipv4Addr, Discovered> = store
            .discovered(self.order.package_id)
            .await?
            .into_iter()
            .map(|d| (d.ip, d))
            .collect();
        let first_seen: HashMap<Ipv4Addr, Timestamp> =
            inventory.values().map(|d| (d.ip, d.first_seen)).collect();
        let mut to_scan = Vec::with_capacity(addresses.len());
        for ip in addresses {
            let older = first_seen.get(&ip).is_some_and(|t| *t < purchase.sent_at);
            if !older && store.owner_of(ip).await?.is_none() {
                to_scan.push(ip);
            }
        }
        let started = self.now();
        self.progress.line(
            started,
            format!(
                "[SMARTVPS] 🔍 Scanning package {package} for the server attempt {} may have bought: status for {} address(es) no \
                 order owns",
                purchase.attempt,
                to_scan.len()
            ),
        );
        let ordered_ram = self.order.ram_gb.get();
        let sent_at = purchase.sent_at;
        let wanted =
            |ram: Option<u32>, expiry: Option<&str>| fits(ram, expiry, ordered_ram, sent_at);
        let scan = self.scan(purchase.attempt, &to_scan, wanted).await;
        metrics::counter!("provisioner_discovery_calls_total").increment(scan.calls as u64);
        let now = self.now();
        let mut found: Vec<Discovered> = scan
            .found
            .iter()
            .map(|(ip, ram, expiry)| Discovered {
                ip: *ip,
                package_id: self.order.package_id,
                ram_gb: *ram,
                expiry: expiry.clone(),
                first_seen: now,
                candidate_for: None,
            })
            .collect();
        let candidate = |d: &Discovered| wanted(d.ram_gb, d.expiry.as_deref());
        let candidates: Vec<Ipv4Addr> = found
            .iter()
            .filter(|d| candidate(d))
            .map(|d| d.ip)
            .collect();
        let after = read.entry.as_ref().map(|e| e.free);
        let fell = matches!(
            (purchase.stock_before, after),
            (Some(before), Some(after)) if after < before
        );
        let complete = scan.unread.is_empty();
        // Complete, and every address not found answered `error` in NEGATIVE_READS separate
        // reads (the standard of the "nothing was bought" verdict): on record once what it found
        // is, so a later scan knows which purchases it rules out (see `rival_purchases`).
        let confirmed = (complete && scan.unconfirmed.is_empty()).then_some(CompleteScan {
            package_id: self.order.package_id,
            started_at: started,
            finished_at: now,
        });
        let summary = format!(
            "scanned {} of {} address(es) with {} status call(s) in {}: {} server(s) of ours found, {} candidate(s){}",
            to_scan.len() - scan.unread.len(),
            to_scan.len(),
            scan.calls,
            humantime::format_duration(Duration::from_secs(now.since(started).as_secs())),
            found.len(),
            candidates.len(),
            if complete {
                String::new()
            } else {
                format!(
                    ", {} address(es) unread (timeouts or the lease's budget)",
                    scan.unread.len()
                )
            }
        );
        // A candidate could also be the server of another order's purchase that is still
        // unsettled (SmartVPS puts a purchase in another package when the one asked for runs
        // dry, so any package's): then the scan cannot tell whose it is.
        let rivals = if candidates.len() == 1 {
            let ram = found
                .iter()
                .find(|d| d.ip == candidates[0])
                .and_then(|d| d.ram_gb);
            // A server seen (by an earlier scan, or by this one) existed then: a purchase sent
            // later cannot be its.
            let earlier = first_seen.get(&candidates[0]).copied();
            let seen_since = [earlier, scan.found_at.get(&candidates[0]).copied()]
                .into_iter()
                .flatten()
                .min();
            // The stock list read again now, after every purchase that could have completed
            // before the candidate was seen: whether their packages ran dry.
            let fresh = match self
                .engine
                .provider
                .ipstock(self.policy().buy.timeout.min(STOCK_REREAD_TIMEOUT))
                .await
            {
                Outcome::Succeeded(list) => Some(
                    list.into_iter()
                        .map(|e| (e.id, e.free))
                        .collect::<HashMap<_, _>>(),
                ),
                Outcome::Rejected(_) | Outcome::Unknown(_) => None,
            };
            self.rival_purchases(purchase, candidates[0], ram, seen_since, fresh.as_ref())
                .await?
        } else {
            Vec::new()
        };
        // The scan took a while: another order's reply may have named the candidate meanwhile
        // (its purchase had a definite answer, so it is no rival, it is the owner).
        let owned_since = match candidates.first() {
            Some(ip) if candidates.len() == 1 => {
                store.owner_of(*ip).await?.filter(|o| o != &self.order.id)
            }
            _ => None,
        };
        // Whether the purchase may have been placed in another package: unless its package's
        // free count stayed above zero and did not rise (a restock follows a dry-out), SmartVPS
        // may have sold it from another package's pool.
        let elsewhere = !matches!(
            (purchase.stock_before, after),
            (Some(before), Some(after)) if after > 0 && after <= before
        );
        if let Some(owner) = owned_since {
            self.record_found(&found, &inventory, &[candidates[0]], confirmed)
                .await?;
            let earlier = self
                .listed_from_inventory(purchase, elsewhere, &candidates)
                .await?;
            metrics::counter!("provisioner_discovery_scans_total", "result" => "ambiguous")
                .increment(1);
            return Ok(Discovery::Ask {
                evidence: format!(
                    "{summary}; the one candidate, {}, was claimed by order {owner}'s reply during the scan{}",
                    candidates[0],
                    earlier_text(&earlier)
                ),
                transient: true,
            });
        }
        if candidates.len() == 1 && complete && fell && rivals.is_empty() {
            self.record_found(&found, &inventory, &candidates, confirmed)
                .await?;
            metrics::counter!("provisioner_discovery_scans_total", "result" => "adopted")
                .increment(1);
            let ip = candidates[0];
            return Ok(Discovery::Adopt {
                ip,
                evidence: format!(
                    "{summary}; {ip} is on our account, in the package, with the ordered {ordered_ram} GB, owned by no order and not \
                     seen by any earlier scan, and the package's stock fell: it is the server attempt {} bought",
                    purchase.attempt
                ),
            });
        }
        // Absence, from a scan that is complete and whose every `error` was read again: the
        // server would have to hide behind NEGATIVE_READS failed reads in a row. With the stock
        // evidence beside it (it fell, so it was not restocked, and it is still above zero, so
        // SmartVPS had no cause to place the purchase in another package), nothing was bought.
        if candidates.is_empty()
            && complete
            && scan.unconfirmed.is_empty()
            && fell
            && after.is_some_and(|a| a > 0)
        {
            self.record_found(&found, &inventory, &[], confirmed)
                .await?;
            metrics::counter!("provisioner_discovery_scans_total", "result" => "not_bought")
                .increment(1);
            return Ok(Discovery::NotBought {
                evidence: format!(
                    "{summary}; every other address answered `error` (not a server of ours) {NEGATIVE_READS} times in separate \
                     rounds, more than {} after attempt {} was sent, and the package's stock fell without running dry: nothing was \
                     bought",
                    humantime::format_duration(self.policy().horizon),
                    purchase.attempt
                ),
            });
        }
        for d in &mut found {
            // A server another order needing attention lists stays on that list (an inventory
            // entry names one order): this order's reason still names it.
            let listed_elsewhere = match inventory.get(&d.ip).and_then(|e| e.candidate_for.clone())
            {
                Some(other) if other != self.order.id => self.waits_for_admin(&other).await?,
                _ => false,
            };
            if candidates.contains(&d.ip) && !listed_elsewhere {
                d.candidate_for = Some(self.order.id.clone());
            }
        }
        self.record_found(&found, &inventory, &candidates, confirmed)
            .await?;
        // Servers earlier scans found that this purchase may have bought and that this scan did
        // not (status failed for them this time, or they are in another package the purchase may
        // have been placed in): listed too, so an admin sees every server that may be this
        // order's.
        let earlier = self
            .listed_from_inventory(purchase, elsewhere, &candidates)
            .await?;
        let result = if candidates.is_empty() {
            "none"
        } else {
            "ambiguous"
        };
        metrics::counter!("provisioner_discovery_scans_total", "result" => result).increment(1);
        let listed: Vec<String> = candidates.iter().map(ToString::to_string).collect();
        let why = match (candidates.len(), complete, fell) {
            (0, true, true) if !scan.unconfirmed.is_empty() => format!(
                "no candidate, but {} address(es) answered `error` fewer than {NEGATIVE_READS} times, so the server may hide behind \
                 a failed status read",
                scan.unconfirmed.len()
            ),
            (0, true, true) => "no candidate, but the package's stock ran dry, so SmartVPS may have placed the purchase in another package".to_string(),
            (0, true, false) => "no candidate, and the package's stock did not fall (a restock, or no reading): the purchase may have been placed in another package".to_string(),
            (0, false, _) => "no candidate, but the scan is incomplete: the server may be among the unread addresses".to_string(),
            (1, true, true) => format!(
                "one candidate, but the unsettled purchases of order(s) {} could have bought it too",
                rivals.iter().map(|r| r.0.to_string()).collect::<Vec<_>>().join(", ")
            ),
            (1, false, _) => "one candidate, but the scan is incomplete: another may be among the unread addresses".to_string(),
            (1, true, false) => "one candidate, but the package's stock did not fall".to_string(),
            _ => format!("candidates {}: adopt the right one", listed.join(", ")),
        };
        let transient = match (candidates.len(), complete, fell) {
            (0, true, true) => !scan.unconfirmed.is_empty(),
            (0 | 1, false, _) => true,
            (1, true, true) => rivals.iter().any(|r| r.1),
            _ => false,
        };
        Ok(Discovery::Ask {
            transient,
            evidence: format!(
                "{summary}; {why}{}{}{}",
                if listed.is_empty() {
                    String::new()
                } else {
                    format!(" (candidates: {})", listed.join(", "))
                },
                earlier_text(&earlier),
                hiding_text(&scan)
            ),
        })
    }

    /// Whether an order is waiting for an admin (so the candidates listed for it are before one).
    async fn waits_for_admin(&self, id: &OrderId) -> Result<bool, EngineError> {
        Ok(self
            .engine
            .store
            .order(id)
            .await?
            .is_some_and(|o| o.state == OrderState::NeedsAttention))
    }

    /// Servers of the inventory (found by earlier scans, this order's or others') that this
    /// purchase may have bought and that this scan did not name: first seen since it was sent,
    /// the ordered RAM, an expiry one term after it, owned by no order and listed for no other
    /// order waiting for an admin; in its package, or in any when the purchase may have been
    /// placed in another (`elsewhere`). Listed as candidates for this order, never adopted.
    async fn listed_from_inventory(
        &self,
        purchase: &Purchase,
        elsewhere: bool,
        named: &[Ipv4Addr],
    ) -> Result<Vec<Discovered>, EngineError> {
        let store = &self.engine.store;
        let ordered_ram = self.order.ram_gb.get();
        let mut listed = Vec::new();
        for mut d in store.discovered_since(purchase.sent_at).await? {
            if named.contains(&d.ip)
                || !(elsewhere || d.package_id == self.order.package_id)
                || !fits(d.ram_gb, d.expiry.as_deref(), ordered_ram, purchase.sent_at)
                || store.owner_of(d.ip).await?.is_some()
            {
                continue;
            }
            match d.candidate_for.clone() {
                Some(other) if other != self.order.id && self.waits_for_admin(&other).await? => {
                    continue;
                }
                _ => {}
            }
            d.candidate_for = Some(self.order.id.clone());
            listed.push(d);
        }
        if !listed.is_empty() {
            store.record_discovered(&listed).await?;
        }
        Ok(listed)
    }

    /// Records what a scan found in the inventory, then offers each server it found that is
    /// neither this order's (`taken`: adopted or listed) nor owned nor listed for an order
    /// waiting for an admin to such an order whose escalated purchase may have bought it. An
    /// order waits for an admin with the candidates its own scans found; a server that hid
    /// from them (status failed for it each time) or that SmartVPS placed in another package
    /// is found later by another order's scan, and without this it would be paid for and
    /// before nobody. A scan that was `complete` with every `error` confirmed is recorded too,
    /// after the servers it found.
    async fn record_found(
        &self,
        found: &[Discovered],
        inventory: &HashMap<Ipv4Addr, Discovered>,
        taken: &[Ipv4Addr],
        complete: Option<CompleteScan>,
    ) -> Result<(), EngineError> {
        let store = &self.engine.store;
        store.record_discovered(found).await?;
        // Only once what it found is in the inventory: a scan on record has every server it
        // found first seen by its end.
        if let Some(scan) = complete {
            store.record_complete_scan(&scan).await?;
        }
        let mut waiting: Option<Vec<(Order, Vec<Purchase>)>> = None;
        let mut offered = Vec::new();
        let mut lines = Vec::new();
        for d in found {
            if taken.contains(&d.ip) || d.candidate_for.is_some() {
                continue;
            }
            let known = inventory.get(&d.ip);
            if let Some(other) = known.and_then(|k| k.candidate_for.as_ref())
                && (*other == self.order.id || self.waits_for_admin(other).await?)
            {
                continue;
            }
            if store.owner_of(d.ip).await?.is_some() {
                continue;
            }
            if waiting.is_none() {
                waiting = Some(self.orders_waiting_for_admin().await?);
            }
            let seen = known.map_or(d.first_seen, |k| k.first_seen);
            let owner = waiting.iter().flatten().filter_map(|(o, ledger)| {
                if o.id == self.order.id || d.ram_gb.is_some_and(|r| r != o.ram_gb.get()) {
                    return None;
                }
                ledger
                    .iter()
                    .filter(|p| {
                        p.is_open_unknown()
                            && p.sent_at <= seen
                            && d.expiry
                                .as_deref()
                                .is_none_or(|e| expiry_fits(e, p.sent_at))
                            && (p.package_id == d.package_id || may_have_run_dry(p))
                    })
                    .map(|p| (p.package_id != d.package_id, p.sent_at, o.id.clone()))
                    .min()
            });
            // One entry names one order: the likeliest, a purchase of the server's package first.
            if let Some((_, sent_at, owner)) = owner.min() {
                let mut listed = d.clone();
                listed.first_seen = seen;
                listed.candidate_for = Some(owner.clone());
                lines.push((
                    owner,
                    TimelineEntry {
                        at: self.now(),
                        kind: EntryKind::Warning,
                        message: format!(
                            "🔍 A later scan (for order {}) found {}, on our account, owned by no order and first seen after the \
                             purchase sent at {sent_at}: listed as a candidate for this order",
                            self.order.id, d.ip
                        ),
                    },
                ));
                offered.push(listed);
            }
        }
        if !offered.is_empty() {
            store.record_discovered(&offered).await?;
            store.append_timeline(&lines).await?;
        }
        Ok(())
    }

    /// Orders waiting for an admin, with their ledgers.
    async fn orders_waiting_for_admin(&self) -> Result<Vec<(Order, Vec<Purchase>)>, EngineError> {
        let filter = OrderFilter {
            state: Some(OrderState::NeedsAttention),
            ..OrderFilter::default()
        };
        let orders = all_orders(self.engine.store.as_ref(), &filter, usize::MAX).await?;
        let mut out = Vec::with_capacity(orders.len());
        for o in orders {
            let ledger = self.engine.store.purchases(&o.id).await?;
            out.push((o, ledger));
        }
        Ok(out)
    }

    /// Other orders, with the candidate's RAM when status reported it, with a purchase that may
    /// have bought a server nobody accounted for: still open (in flight, or unknown and with an
    /// admin), or retried blindly within a horizon of this one. Each could own the server this
    /// scan found (SmartVPS puts a purchase in another package when the one asked for runs dry,
    /// so a purchase of any package). A purchase settled as not bought is none: the evidence
    /// that settled it (the stock, or a confirmed negative scan) says it bought nothing
    /// anywhere. Neither is one sent after the candidate was first seen (`seen_since`), nor
    /// one of another package that the stock list (`read`) shows never ran dry, nor one whose
    /// horizon ended before a complete scan of the candidate's package, every `error` of it
    /// confirmed, started and that scan finished before the candidate was first seen. Orders
    /// created more than a day before this purchase are not looked at.
    async fn rival_purchases(
        &self,
        purchase: &Purchase,
        candidate: Ipv4Addr,
        ram: Option<u32>,
        seen_since: Option<Timestamp>,
        fresh: Option<&HashMap<crate::domain::PackageId, u32>>,
    ) -> Result<Vec<(OrderId, bool)>, EngineError> {
        let horizon = self.policy().horizon;
        let (from, to) = (
            purchase.sent_at.minus(horizon),
            purchase.sent_at.plus(horizon),
        );
        // Only an order with an open unknown or blindly retried purchase can be a rival, so
        // those purchases are read (a few, indexed) rather than every order of the day. They
        // are all of such an order's purchases that `owning` below can count (it was created
        // after `since`, so they were all sent after it): its ledger need not be read.
        let since = purchase.sent_at.minus(RIVAL_LOOKBACK);
        let mut by_order: Vec<(OrderId, Vec<Purchase>)> = Vec::new();
        let mut index: HashMap<OrderId, usize> = HashMap::new();
        for p in self.engine.store.unsettled_purchases_since(since).await? {
            if p.order_id == self.order.id {
                continue;
            }
            let at = *index.entry(p.order_id.clone()).or_insert_with(|| {
                by_order.push((p.order_id.clone(), Vec::new()));
                by_order.len() - 1
            });
            by_order[at].1.push(p);
        }
        // The latest start of a complete scan of the candidate's package, every `error` of it
        // confirmed, that finished before the candidate was first seen: the candidate was not
        // a server of ours while that scan ran (else it would have been found then, or hidden
        // behind NEGATIVE_READS failed reads). A purchase completes within its horizon if at
        // all, so one whose horizon ended before that scan started cannot own the candidate.
        let cleared_from = match seen_since {
            Some(seen) => self
                .engine
                .store
                .complete_scans(self.order.package_id, since)
                .await?
                .into_iter()
                .filter(|s| s.finished_at < seen)
                .map(|s| s.started_at)
                .max(),
            None => None,
        };
        let mut rivals = Vec::new();
        for (id, ledger) in by_order {
            let Some(other) = self.engine.store.order(&id).await? else {
                continue;
            };
            if other.created_at < since
                || other.created_at >= to
                || ram.is_some_and(|r| other.ram_gb.get() != r)
            {
                continue;
            }
            let mut owning = ledger.iter().filter(|p| {
                let may_own = p.is_open_unknown()
                    || (matches!(p.resolution, Some(Resolution::RetriedBlindly))
                        && p.sent_at >= from
                        && p.sent_at <= to);
                // A purchase of another package lands in this one only if its own package ran
                // dry while it could complete. Free above zero when it was sent and when
                // read after its horizon (by its reconciliation) or now (still open, so
                // anything it bought exists now), and no higher (a restock, which follows a
                // dry-out, brings the count above where it was): it never did.
                let after = p
                    .stock_after
                    .or_else(|| fresh.and_then(|f| f.get(&p.package_id).copied()));
                let never_dry = p.package_id != self.order.package_id
                    && matches!(
                        (p.stock_before, after),
                        (Some(before), Some(after)) if after > 0 && after <= before
                    );
                // A late reply named the server it bought: that one, no other.
                let named_other = p.late_ip.is_some_and(|ip| ip != candidate);
                // Its horizon ended before a complete confirmed scan that did not see the
                // candidate began: it completed, if at all, before the candidate appeared.
                let before_clear_scan =
                    cleared_from.is_some_and(|start| p.sent_at.plus(horizon) < start);
                may_own
                    && !never_dry
                    && !named_other
                    && !before_clear_scan
                    && seen_since.is_none_or(|seen| p.sent_at <= seen)
            });
            if let Some(first) = owning.next() {
                // An escalated purchase waits for an admin; any other may settle on its own.
                let settles = std::iter::once(first)
                    .chain(owning)
                    .any(|p| !matches!(p.resolution, Some(Resolution::Escalated { .. })));
                rivals.push((id, settles));
            }
        }
        Ok(rivals)
    }

    /// Reads every address until it gives a definite answer: found (a server of ours), or
    /// `error` [`NEGATIVE_READS`] times with [`REREAD_GAP`] between reads, while no server
    /// passing `wanted` was found (once one is, a single `error` is enough: presence is proven).
    /// An address with no definite answer (a timeout, a 5xx) is read again, at most
    /// [`MAX_READS`] reads each. Each address goes at its own pace; all of them share
    /// [`SCAN_CONCURRENCY`] calls in flight and [`SCAN_RATE_PER_SEC`] starts a second, and no
    /// call starts that could end after the lease's budget.
    async fn scan(
        &self,
        attempt: u32,
        addresses: &[Ipv4Addr],
        wanted: impl Fn(Option<u32>, Option<&str>) -> bool,
    ) -> Scan {
        let clock = &self.engine.clock;
        let provider = &self.engine.provider;
        let timeout = self.policy().status.timeout;
        // Every call must end, timeout included, before the lease lapses, leaving a few seconds
        // for the step's own write: a call that could not is not started.
        let budget_end = self.lease_expires_at().minus(timeout + SCAN_WRITE_MARGIN);
        let ctx = CallContext::for_order(&self.order.id, attempt);
        let pace = Duration::from_secs(1) / SCAN_RATE_PER_SEC;
        let next_start = std::sync::Mutex::new(clock.now());
        let in_flight = tokio::sync::Semaphore::new(SCAN_CONCURRENCY);
        let hunting = std::sync::atomic::AtomicBool::new(true);
        let chains = addresses.iter().copied().map(|ip| {
            let (ctx, next_start, in_flight, hunting, wanted) =
                (&ctx, &next_start, &in_flight, &hunting, &wanted);
            async move {
                let mut read = AddressRead::default();
                while read.calls < MAX_READS {
                    let at = {
                        let mut next = next_start
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        let at = (*next).max(clock.now());
                        *next = at.plus(pace);
                        at
                    };
                    if at >= budget_end {
                        break;
                    }
                    clock.sleep(at.since(clock.now())).await;
                    let outcome = {
                        let Ok(_permit) = in_flight.acquire().await else {
                            break;
                        };
                        if clock.now() >= budget_end {
                            break;
                        }
                        provider.status(ctx, ip, timeout).await
                    };
                    read.calls += 1;
                    match outcome {
                        Outcome::Succeeded(status) => {
                            let ram = status.ram.as_deref().and_then(|r| {
                                r.trim_end_matches(|c: char| !c.is_ascii_digit())
                                    .parse()
                                    .ok()
                            });
                            if wanted(ram, status.expiry.as_deref()) {
                                hunting.store(false, std::sync::atomic::Ordering::Relaxed);
                            }
                            read.found = Some((ram, status.expiry.clone(), clock.now()));
                            break;
                        }
                        Outcome::Rejected(_) => {
                            read.errors += 1;
                            if read.errors >= NEGATIVE_READS
                                || !hunting.load(std::sync::atomic::Ordering::Relaxed)
                            {
                                break;
                            }
                            clock.sleep(REREAD_GAP).await;
                        }
                        Outcome::Unknown(_) => {}
                    }
                }
                (ip, read)
            }
        });
        let reads: Vec<(Ipv4Addr, AddressRead)> = futures_util::future::join_all(chains).await;
        let mut scan = Scan::default();
        for (ip, read) in reads {
            scan.calls += read.calls as usize;
            match read.found {
                Some((ram, expiry, at)) => {
                    scan.found.push((ip, ram, expiry));
                    scan.found_at.insert(ip, at);
                }
                None if read.errors == 0 => scan.unread.push(ip),
                None if read.errors < NEGATIVE_READS => scan.unconfirmed.push(ip),
                None => {}
            }
        }
        scan.found.sort_by_key(|f| f.0);
        scan
    }
}

/// What a scan learnt of one address.
#[derive(Default)]
struct AddressRead {
    /// Status calls made for it.
    calls: u32,
    /// `error` replies.
    errors: u32,
    /// RAM (GB), expiry and when status answered, for a server of ours.
    found: Option<(Option<u32>, Option<String>, Timestamp)>,
}

/// What a scan read.
#[derive(Default)]
struct Scan {
    /// Servers on our account: address, RAM (GB) and expiry as status reported them.
    found: Vec<(Ipv4Addr, Option<u32>, Option<String>)>,
    /// Addresses with no definite answer (a timeout, a 5xx, the budget ran out).
    unread: Vec<Ipv4Addr>,
    /// Addresses that answered `error` fewer than [`NEGATIVE_READS`] times.
    unconfirmed: Vec<Ipv4Addr>,
    /// When status first answered for each server found.
    found_at: HashMap<Ipv4Addr, Timestamp>,
    /// Status calls made.
    calls: usize,
}

/// Whether a server status reported can be the one a purchase sent at `sent_at` bought: the
/// ordered RAM and an expiry about one term after it (either unreported proves nothing).
fn fits(ram: Option<u32>, expiry: Option<&str>, ordered_ram: u32, sent_at: Timestamp) -> bool {
    ram.is_none_or(|r| r == ordered_ram) && expiry.is_none_or(|e| expiry_fits(e, sent_at))
}

/// Whether a purchase's package may have run dry while it could complete (so SmartVPS may have
/// placed it in another package): not free above zero at its send and at its reconciliation
/// with no rise between.
fn may_have_run_dry(p: &Purchase) -> bool {
    !matches!(
        (p.stock_before, p.stock_after),
        (Some(before), Some(after)) if after > 0 && after <= before
    )
}

/// The servers listed from the inventory, in words for the evidence.
/// The addresses a server of ours may hide behind, named for the admin who must look: those
/// with no definite answer and those whose `error` was not confirmed (at most
/// [`MAX_NAMED_HIDING`], then a count). Empty when the scan read every address to the standard.
fn hiding_text(scan: &Scan) -> String {
    let mut hiding: Vec<Ipv4Addr> = scan
        .unread
        .iter()
        .chain(&scan.unconfirmed)
        .copied()
        .collect();
    if hiding.is_empty() {
        return String::new();
    }
    hiding.sort_unstable();
    let named: Vec<String> = hiding
        .iter()
        .take(MAX_NAMED_HIDING)
        .map(ToString::to_string)
        .collect();
    let more = hiding.len().saturating_sub(MAX_NAMED_HIDING);
    format!(
        "; check these in the SmartVPS panel, status gave no definite answer for them: {}{}",
        named.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
}

/// How many addresses without a definite answer a reason names (the rest are counted).
const MAX_NAMED_HIDING: usize = 32;

fn earlier_text(listed: &[Discovered]) -> String {
    if listed.is_empty() {
        return String::new();
    }
    let names: Vec<String> = listed
        .iter()
        .map(|d| {
            format!(
                "{} (package {}, first seen {})",
                d.ip, d.package_id, d.first_seen
            )
        })
        .collect();
    format!(
        "; found by earlier scans and possibly this purchase's, also listed: {}",
        names.join(", ")
    )
}

/// Whether an `ExpiryDate` (`2027-01-28`) is about one term after `sent_at`.
fn expiry_fits(expiry: &str, sent_at: Timestamp) -> bool {
    let Ok(at) = humantime::parse_rfc3339_weak(&format!("{}T00:00:00Z", expiry.trim())) else {
        // A date we cannot read proves nothing either way.
        return true;
    };
    let expiry_ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let days = (expiry_ms - sent_at.millis()) / 86_400_000;
    let (lo, hi) = EXPIRY_WINDOW_DAYS;
    u64::try_from(days).is_ok_and(|d| d >= lo && d <= hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_candidate_expires_about_one_term_after_its_purchase() {
        let sent = Timestamp(
            humantime::parse_rfc3339("2026-12-01T10:00:00Z")
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64,
        );
        assert!(expiry_fits("2026-12-31", sent));
        assert!(expiry_fits("2027-01-01", sent));
        assert!(!expiry_fits("2026-12-15", sent), "bought earlier");
        assert!(!expiry_fits("2027-02-28", sent), "renewed: an older server");
        assert!(expiry_fits("not a date", sent));
    }
}
