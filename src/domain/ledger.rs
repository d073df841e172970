//! The purchase ledger: one row per buyvps we sent, committed *before* it is sent.
//!
//! An intent without an outcome is a call in flight, or one whose worker died mid-call; the
//! engine treats the latter as an unknown outcome and reconciles it before buying again.

use std::net::Ipv4Addr;

use serde::Serialize;

use super::order::OrderId;
use super::package::{PackageId, PackageName};
use crate::clock::Timestamp;

/// A purchase's id in the ledger, assigned by the store when the intent is committed. A type of
/// its own so it cannot be mixed up with the outbox's and deliveries' row ids, which are also
/// integers; shown as the bare number (`purchase #12`), serialized as one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct PurchaseId(pub i64);

impl std::fmt::Display for PurchaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What one buyvps call came to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PurchaseOutcome {
    /// SmartVPS said `success|` with this address.
    Succeeded {
        /// The address it assigned.
        ip: Ipv4Addr,
    },
    /// A definite no before anything was bought.
    Rejected {
        /// Why.
        reason: String,
    },
    /// The server may or may not exist (timeout after sending, reset, 5xx, garbled 2xx, lost worker).
    Unknown {
        /// Why we cannot tell.
        reason: String,
    },
}

impl PurchaseOutcome {
    /// Rebuilds an outcome from its stored kind, address and reason.
    ///
    /// # Errors
    /// An unknown kind, or a success without an address.
    pub fn from_parts(
        kind: &str,
        ip: Option<Ipv4Addr>,
        reason: Option<String>,
    ) -> Result<Self, String> {
        match kind {
            "succeeded" => ip
                .map(|ip| Self::Succeeded { ip })
                .ok_or_else(|| "a succeeded purchase without an address".into()),
            "rejected" => Ok(Self::Rejected {
                reason: reason.unwrap_or_default(),
            }),
            "unknown" => Ok(Self::Unknown {
                reason: reason.unwrap_or_default(),
            }),
            other => Err(format!("unknown outcome kind {other:?}")),
        }
    }

    /// Stored kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Succeeded { .. } => "succeeded",
            Self::Rejected { .. } => "rejected",
            Self::Unknown { .. } => "unknown",
        }
    }
}

/// How an unknown outcome was settled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Resolution {
    /// The evidence says nothing was bought: buying again is safe.
    NotBought {
        /// The evidence, in words.
        evidence: String,
    },
    /// Something may have been bought: the order went to an admin.
    Escalated {
        /// The evidence, in words.
        evidence: String,
    },
    /// A late reply showed what was bought; the order continues with that address.
    Adopted {
        /// The address.
        ip: Ipv4Addr,
    },
    /// Retried without reconciling (`on_unknown = "retry"`, the seed taken literally).
    RetriedBlindly,
}

impl Resolution {
    /// The stored detail: the evidence, or the adopted address.
    pub fn detail(&self) -> Option<String> {
        match self {
            Self::NotBought { evidence } | Self::Escalated { evidence } => Some(evidence.clone()),
            Self::Adopted { ip } => Some(ip.to_string()),
            Self::RetriedBlindly => None,
        }
    }

    /// Rebuilds a resolution from its stored kind and detail.
    ///
    /// # Errors
    /// An unknown kind, or an adoption whose detail is not an address.
    pub fn from_parts(kind: &str, detail: Option<String>) -> Result<Self, String> {
        let detail = detail.unwrap_or_default();
        match kind {
            "not_bought" => Ok(Self::NotBought { evidence: detail }),
            "escalated" => Ok(Self::Escalated { evidence: detail }),
            "adopted" => detail
                .parse()
                .map(|ip| Self::Adopted { ip })
                .map_err(|e| format!("adopted address {detail:?}: {e}")),
            "retried_blindly" => Ok(Self::RetriedBlindly),
            other => Err(format!("unknown resolution kind {other:?}")),
        }
    }

    /// Stored kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotBought { .. } => "not_bought",
            Self::Escalated { .. } => "escalated",
            Self::Adopted { .. } => "adopted",
            Self::RetriedBlindly => "retried_blindly",
        }
    }
}

/// One row of the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Purchase {
    /// Store-assigned id.
    pub id: PurchaseId,
    /// The order it was for.
    pub order_id: OrderId,
    /// Buy attempt number within the order.
    pub attempt: u32,
    /// What was bought.
    pub package_id: PackageId,
    /// The package name sent as buyvps's `ip` field.
    #[serde(serialize_with = "ser_display")]
    pub package_name: PackageName,
    /// The package's free count read just before sending: reconciliation evidence.
    pub stock_before: Option<u32>,
    /// Free addresses over every package, read with `stock_before`. SmartVPS sometimes takes the
    /// address from another package's pool, which only this total shows.
    pub pool_before: Option<u64>,
    /// When the intent was committed (just before sending).
    pub sent_at: Timestamp,
    /// The outcome; `None` while in flight.
    pub outcome: Option<PurchaseOutcome>,
    /// When the outcome was recorded.
    pub decided_at: Option<Timestamp>,
    /// How an unknown outcome was settled; `None` while unsettled.
    pub resolution: Option<Resolution>,
    /// A success that arrived after the intent was already marked unknown (a stale worker's
    /// reply): evidence for reconciliation, never lost.
    pub late_ip: Option<Ipv4Addr>,
    /// The package's free count read by the reconciliation that settled this purchase (after
    /// its horizon), when one did: with `stock_before`, whether the package can have run dry
    /// while the purchase could complete.
    pub stock_after: Option<u32>,
}

fn ser_display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl Purchase {
    /// Whether this purchase blocks a new one: in flight, or unknown and not yet settled.
    pub fn is_unsettled(&self) -> bool {
        match &self.outcome {
            None => true,
            Some(PurchaseOutcome::Unknown { .. }) => self.resolution.is_none(),
            Some(_) => false,
        }
    }

    /// The address this purchase shows we own, if any: its success, or a late reply's.
    pub fn owned_ip(&self) -> Option<Ipv4Addr> {
        match &self.outcome {
            Some(PurchaseOutcome::Succeeded { ip }) => Some(*ip),
            _ => self.late_ip,
        }
    }

    /// Whether this purchase may have bought a server that nobody has accounted for: in flight,
    /// or unknown and not settled as not bought, adopted or blindly retried. Unlike
    /// [`Purchase::is_unsettled`], an *escalated* unknown still counts: escalation hands the
    /// question to an admin, it does not answer it.
    pub fn is_open_unknown(&self) -> bool {
        match &self.outcome {
            None => true,
            Some(PurchaseOutcome::Unknown { .. }) => {
                matches!(self.resolution, None | Some(Resolution::Escalated { .. }))
            }
            Some(_) => false,
        }
    }
}

/// A purchase about to be sent.
#[derive(Clone, Debug)]
pub struct PurchaseIntent {
    /// The order.
    pub order_id: OrderId,
    /// Attempt number.
    pub attempt: u32,
    /// Package.
    pub package_id: PackageId,
    /// Package name.
    pub package_name: PackageName,
    /// Free count just read.
    pub stock_before: Option<u32>,
    /// Free addresses over every package, just read.
    pub pool_before: Option<u64>,
    /// Now.
    pub sent_at: Timestamp,
}

#[cfg(test)]
mod tests {
    #[test]
    fn stored_parts_round_trip() {
        let ip: Ipv4Addr = "103.82.72.9".parse().unwrap();
        for o in [
            PurchaseOutcome::Succeeded { ip },
            PurchaseOutcome::Rejected {
                reason: "error".into(),
            },
            PurchaseOutcome::Unknown {
                reason: "timeout after 2m".into(),
            },
        ] {
            let (ip_part, reason) = match &o {
                PurchaseOutcome::Succeeded { ip } => (Some(*ip), None),
                PurchaseOutcome::Rejected { reason } | PurchaseOutcome::Unknown { reason } => {
                    (None, Some(reason.clone()))
                }
            };
            assert_eq!(
                PurchaseOutcome::from_parts(o.kind(), ip_part, reason).unwrap(),
                o
            );
        }
        for r in [
            Resolution::NotBought {
                evidence: "unchanged at 50".into(),
            },
            Resolution::Escalated {
                evidence: "went from 50 to 49".into(),
            },
            Resolution::Adopted { ip },
            Resolution::RetriedBlindly,
        ] {
            assert_eq!(Resolution::from_parts(r.kind(), r.detail()).unwrap(), r);
        }
        assert!(PurchaseOutcome::from_parts("succeeded", None, None).is_err());
        assert!(Resolution::from_parts("adopted", Some("not an ip".into())).is_err());
        assert!(Resolution::from_parts("shrug", None).is_err());
    }

    use super::*;

    fn purchase(outcome: Option<PurchaseOutcome>, resolution: Option<Resolution>) -> Purchase {
        Purchase {
            id: PurchaseId(1),
            order_id: OrderId::new(),
            attempt: 1,
            package_id: PackageId(7),
            package_name: PackageName::parse("103.82.72").unwrap(),
            stock_before: Some(5),
            pool_before: Some(500),
            sent_at: Timestamp(0),
            outcome,
            decided_at: None,
            resolution,
            late_ip: None,
            stock_after: None,
        }
    }

    #[test]
    fn an_escalated_unknown_is_still_open_but_settled_for_the_engine() {
        let unknown = || {
            Some(PurchaseOutcome::Unknown {
                reason: "t/o".into(),
            })
        };
        let esc = purchase(
            unknown(),
            Some(Resolution::Escalated {
                evidence: "stock fell".into(),
            }),
        );
        assert!(esc.is_open_unknown() && !esc.is_unsettled());
        assert!(purchase(None, None).is_open_unknown());
        assert!(purchase(unknown(), None).is_open_unknown());
        let settled = purchase(
            unknown(),
            Some(Resolution::NotBought {
                evidence: "checked".into(),
            }),
        );
        assert!(!settled.is_open_unknown());
        let rejected = purchase(
            Some(PurchaseOutcome::Rejected {
                reason: "no".into(),
            }),
            None,
        );
        assert!(!rejected.is_open_unknown());
    }

    #[test]
    fn owned_ip_comes_from_a_success_or_a_late_reply() {
        let ip: Ipv4Addr = "103.82.72.4".parse().unwrap();
        assert_eq!(
            purchase(Some(PurchaseOutcome::Succeeded { ip }), None).owned_ip(),
            Some(ip)
        );
        let mut late = purchase(
            Some(PurchaseOutcome::Unknown {
                reason: "t/o".into(),
            }),
            None,
        );
        assert_eq!(late.owned_ip(), None);
        late.late_ip = Some(ip);
        assert_eq!(late.owned_ip(), Some(ip));
    }
}
