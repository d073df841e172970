//! The inventory of servers a discovery scan found on our SmartVPS account: every one, with when
//! it was first seen, so a later scan can tell a server that appeared since (a candidate for an
//! unknown purchase) from one it has seen before (an older server, or one bought outside
//! provisioner).

use std::net::Ipv4Addr;

use serde::Serialize;

use super::order::OrderId;
use super::package::PackageId;
use crate::clock::Timestamp;

/// A server a scan found on our account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Discovered {
    /// Its address: status answered for it, so it is ours.
    pub ip: Ipv4Addr,
    /// The package whose range was scanned.
    pub package_id: PackageId,
    /// RAM status reported, when it did: a candidate must have the ordered RAM.
    pub ram_gb: Option<u32>,
    /// `ExpiryDate` status reported (`2027-01-28`), when it did: a server bought with the
    /// purchase in question expires about a month after it was sent.
    pub expiry: Option<String>,
    /// When a scan first found it.
    pub first_seen: Timestamp,
    /// The order it was listed for as a candidate (an order needing attention), if any.
    pub candidate_for: Option<OrderId>,
}

/// A discovery scan of one package that was complete and whose every `error` reply was
/// confirmed by re-reads (the standard of the "nothing was bought" verdict): every address of
/// the package no order owned and no earlier scan had seen was either found (and is in the
/// inventory, first seen by the time the scan finished) or was not a server of ours while it
/// ran. A purchase whose horizon ended before such a scan started can therefore own no server
/// of that package first seen after the scan finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CompleteScan {
    /// The package whose range was scanned.
    pub package_id: PackageId,
    /// When its first status call could start (no earlier).
    pub started_at: Timestamp,
    /// When it ended, no earlier than the first sighting it recorded in the inventory.
    pub finished_at: Timestamp,
}

/// How long a complete scan is kept once a newer one of its package is recorded. Rivals are
/// looked for among orders created at most a day before a candidate is weighed, so no rule
/// reads a scan that started more than a day before the newest one; the engine checks at
/// compile time that its look-back fits in this.
pub const COMPLETE_SCAN_RETENTION: std::time::Duration =
    std::time::Duration::from_secs(7 * 24 * 3600);

impl CompleteScan {
    /// The oldest start kept beside this scan: earlier scans of its package are forgotten when
    /// it is recorded, so the table stays bounded.
    pub fn retained_from(&self) -> Timestamp {
        Timestamp(
            self.started_at.millis().saturating_sub(
                i64::try_from(COMPLETE_SCAN_RETENTION.as_millis()).unwrap_or(i64::MAX),
            ),
        )
    }
}
