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

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use futures_util::StreamExt;

use super::EngineError;
use super::buy::StockRead;
use super::step::Step;
use crate::clock::Timestamp;
use crate::domain::{Discovered, OrderId, Purchase, PurchaseOutcome, Resolution};
use crate::provider::{CallContext, Outcome};
use crate::store::OrderFilter;

/// The widest package scanned: a name of three exact octets covers 256 addresses.
pub const MAX_SCAN: usize = 1024;
/// Status calls in flight at once during a scan.
pub const SCAN_CONCURRENCY: usize = 64;
/// Status calls started per second at most, so a scan never floods SmartVPS.
pub const SCAN_RATE_PER_SEC: u32 = 32;
/// How far back rival purchases are looked for, by their order's creation.
const RIVAL_LOOKBACK: Duration = Duration::from_secs(24 * 3600);
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
    /// An admin must decide; the evidence lists the candidates, if any.
    Ask {
        /// The evidence, in words.
        evidence: String,
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
            });
        };
        let store = &self.engine.store;
        let known: HashSet<Ipv4Addr> = store
            .discovered(self.order.package_id)
            .await?
            .into_iter()
            .map(|d| d.ip)
            .collect();
        let mut to_scan = Vec::with_capacity(addresses.len());
        for ip in addresses {
            if !known.contains(&ip) && store.owner_of(ip).await?.is_none() {
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
        let scan = self.scan(purchase.attempt, &to_scan).await;
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
        let ordered_ram = self.order.ram_gb.get();
        let candidate = |d: &Discovered| {
            d.ram_gb.is_none_or(|r| r == ordered_ram)
                && d.expiry
                    .as_deref()
                    .is_none_or(|e| expiry_fits(e, purchase.sent_at))
        };
        let candidates: Vec<Ipv4Addr> = found
            .iter()
            .filter(|d| candidate(d))
            .map(|d| d.ip)
            .collect();
        let fell = matches!(
            (purchase.stock_before, read.entry.as_ref().map(|e| e.free)),
            (Some(before), Some(after)) if after < before
        );
        let complete = scan.unread.is_empty();
        let summary = format!(
            "scanned {} of {} address(es) in {}: {} server(s) of ours found, {} candidate(s){}",
            to_scan.len() - scan.unread.len(),
            to_scan.len(),
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
            self.rival_purchases(purchase, ram).await?
        } else {
            Vec::new()
        };
        if candidates.len() == 1 && complete && fell && rivals.is_empty() {
            store.record_discovered(&found).await?;
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
        for d in &mut found {
            if candidates.contains(&d.ip) {
                d.candidate_for = Some(self.order.id.clone());
            }
        }
        store.record_discovered(&found).await?;
        let result = if candidates.is_empty() {
            "none"
        } else {
            "ambiguous"
        };
        metrics::counter!("provisioner_discovery_scans_total", "result" => result).increment(1);
        let listed: Vec<String> = candidates.iter().map(ToString::to_string).collect();
        let why = match (candidates.len(), complete, fell) {
            (0, _, _) => "no candidate: the server may hide behind a failed status read, or the stock moved for another reseller".to_string(),
            (1, true, true) => format!(
                "one candidate, but the unsettled purchases of order(s) {} could have bought it too",
                rivals.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ),
            (1, false, _) => "one candidate, but the scan is incomplete: another may be among the unread addresses".to_string(),
            (1, true, false) => "one candidate, but the package's stock did not fall".to_string(),
            _ => format!("candidates {}: adopt the right one", listed.join(", ")),
        };
        Ok(Discovery::Ask {
            evidence: format!(
                "{summary}; {why}{}",
                if listed.is_empty() {
                    String::new()
                } else {
                    format!(" (candidates: {})", listed.join(", "))
                }
            ),
        })
    }

    /// Other orders, with the candidate's RAM when status reported it, with a purchase whose
    /// outcome was never a definite answer and that is still open (in flight, or with an admin),
    /// or was judged "not bought" within a horizon of this one (SmartVPS can put a purchase in
    /// another package, leaving the asked package's stock unchanged): each could own the server
    /// this scan found. Orders created more than a day before this purchase are not looked at.
    async fn rival_purchases(
        &self,
        purchase: &Purchase,
        ram: Option<u32>,
    ) -> Result<Vec<OrderId>, EngineError> {
        let horizon = self.policy().horizon;
        let (from, to) = (
            purchase.sent_at.minus(horizon),
            purchase.sent_at.plus(horizon),
        );
        let mut orders = Vec::new();
        // The store pages order lists; read every page.
        loop {
            let filter = OrderFilter {
                created_from: Some(purchase.sent_at.minus(RIVAL_LOOKBACK)),
                created_to: Some(to),
                limit: Some(500),
                offset: Some(orders.len()),
                ..OrderFilter::default()
            };
            let page = self.engine.store.orders(&filter).await?;
            let full = page.len() == filter.page_size();
            orders.extend(page);
            if !full {
                break;
            }
        }
        let mut rivals = Vec::new();
        for other in orders {
            if other.id == self.order.id || ram.is_some_and(|r| other.ram_gb.get() != r) {
                continue;
            }
            let unanswered = self
                .engine
                .store
                .purchases(&other.id)
                .await?
                .iter()
                .any(|p| {
                    let unanswered =
                        matches!(p.outcome, None | Some(PurchaseOutcome::Unknown { .. }))
                            && !matches!(p.resolution, Some(Resolution::Adopted { .. }));
                    // Still open (in flight or with an admin): its server may be any unowned one
                    // found since, however long ago it was sent. Settled as not bought: only a
                    // server that appeared within its horizon can be its.
                    unanswered && (p.is_open_unknown() || (p.sent_at >= from && p.sent_at <= to))
                });
            if unanswered {
                rivals.push(other.id);
            }
        }
        Ok(rivals)
    }

    /// Calls status for each address, [`SCAN_CONCURRENCY`] at a time and at most
    /// [`SCAN_RATE_PER_SEC`] started a second, until the step's lease budget runs out.
    async fn scan(&self, attempt: u32, addresses: &[Ipv4Addr]) -> Scan {
        let clock = &self.engine.clock;
        let provider = &self.engine.provider;
        let timeout = self.policy().status.timeout.min(Duration::from_secs(30));
        // Every call must end, timeout included, before the lease lapses, leaving a few seconds
        // for the step's own write: a call that could not is not started.
        let budget_end = self.lease_expires_at().minus(timeout + SCAN_WRITE_MARGIN);
        let ctx = CallContext::for_order(&self.order.id, attempt);
        let pace = Duration::from_secs(1) / SCAN_RATE_PER_SEC;
        let began = clock.now();
        let results: Vec<(Ipv4Addr, Option<Outcome<crate::provider::ServerStatus>>)> =
            futures_util::stream::iter(addresses.iter().copied().enumerate())
                .map(|(i, ip)| {
                    let ctx = ctx.clone();
                    let delay = pace * u32::try_from(i).unwrap_or(u32::MAX);
                    async move {
                        if began.plus(delay) >= budget_end {
                            return (ip, None);
                        }
                        clock
                            .sleep(delay.saturating_sub(clock.now().since(began)))
                            .await;
                        if clock.now() >= budget_end {
                            return (ip, None);
                        }
                        (ip, Some(provider.status(&ctx, ip, timeout).await))
                    }
                })
                .buffer_unordered(SCAN_CONCURRENCY)
                .collect()
                .await;
        let mut scan = Scan::default();
        for (ip, outcome) in results {
            match outcome {
                None => scan.unread.push(ip),
                Some(Outcome::Succeeded(status)) => {
                    scan.calls += 1;
                    let ram = status.ram.as_deref().and_then(|r| {
                        r.trim_end_matches(|c: char| !c.is_ascii_digit())
                            .parse()
                            .ok()
                    });
                    scan.found.push((ip, ram, status.expiry.clone()));
                }
                Some(Outcome::Rejected(_)) => scan.calls += 1,
                Some(Outcome::Unknown(_)) => {
                    scan.calls += 1;
                    scan.unread.push(ip);
                }
            }
        }
        scan.found.sort_by_key(|f| f.0);
        scan
    }
}

/// What a scan read.
#[derive(Default)]
struct Scan {
    /// Servers on our account: address, RAM (GB) and expiry as status reported them.
    found: Vec<(Ipv4Addr, Option<u32>, Option<String>)>,
    /// Addresses with no definite answer (a timeout, a 5xx, the budget ran out).
    unread: Vec<Ipv4Addr>,
    /// Status calls made.
    calls: usize,
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
