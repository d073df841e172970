//! Package identity: the PID that keys a product, and the package *name* (an address prefix,
//! possibly with a trailing `x` wildcard) that buyvps takes and that a bought address must match.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::clock::Timestamp;

/// SmartVPS's package id (PID): the only stable key for a product.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct PackageId(pub u32);

impl fmt::Display for PackageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One dotted group of a package name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Group {
    /// An exact octet, e.g. `72`.
    Exact(u8),
    /// `18x`: an octet whose decimal text starts with `18` and is longer than it (180..=189).
    /// A bare `x` has an empty prefix and matches any octet.
    Wildcard(String),
}

/// A package name such as `103.82.72`, `103.83.x` or `103.109.18x`: one to three leading octets
/// of the addresses in the package, the last of which may end in an `x` wildcard.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PackageName {
    /// The name as SmartVPS spells it, sent back verbatim in buyvps.
    raw: String,
    groups: Vec<Group>,
}

/// Why a package name could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid package name {name:?}: {why}")]
pub struct PackageNameError {
    name: String,
    why: &'static str,
}

impl PackageName {
    /// Parses a package name.
    ///
    /// # Errors
    /// When the name is empty, has more than three groups, a group that is not an octet, or an
    /// `x` anywhere but at the end of the last group.
    pub fn parse(raw: &str) -> Result<Self, PackageNameError> {
        let err = |why| PackageNameError {
            name: raw.chars().take(64).collect(),
            why,
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(err("empty"));
        }
        let parts: Vec<&str> = trimmed.split('.').collect();
        if parts.len() > 3 {
            return Err(err(
                "more than three groups (a package name is an address prefix)",
            ));
        }
        let mut groups = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let group = if let Some(prefix) = part.strip_suffix(['x', 'X']) {
                if !last {
                    return Err(err("a wildcard may only end the last group"));
                }
                if prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err("a wildcard group is up to two digits then x"));
                }
                Group::Wildcard(prefix.to_string())
            } else {
                if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err("each group must be an octet (0-255)"));
                }
                Group::Exact(
                    part.parse::<u8>()
                        .map_err(|_| err("each group must be an octet (0-255)"))?,
                )
            };
            groups.push(group);
        }
        Ok(Self {
            raw: trimmed.to_string(),
            groups,
        })
    }

    /// The name as sent to SmartVPS.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether `ip` belongs to this package: its leading octets match, honouring the wildcard.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let octets = ip.octets();
        self.groups
            .iter()
            .zip(octets)
            .all(|(group, octet)| match group {
                Group::Exact(want) => *want == octet,
                Group::Wildcard(prefix) => {
                    let text = octet.to_string();
                    text.starts_with(prefix.as_str()) && text.len() > prefix.len()
                }
            })
    }
}

impl PackageName {
    /// Every address the package can hand out, when there are at most `max` of them (a name of
    /// three exact octets covers 256); `None` for wider names, which are too costly to scan.
    pub fn addresses(&self, max: usize) -> Option<Vec<Ipv4Addr>> {
        let mut choices: Vec<Vec<u8>> = Vec::with_capacity(4);
        for group in &self.groups {
            choices.push(match group {
                Group::Exact(o) => vec![*o],
                Group::Wildcard(prefix) => (0..=255u8)
                    .filter(|o| {
                        let t = o.to_string();
                        t.starts_with(prefix.as_str()) && t.len() > prefix.len()
                    })
                    .collect(),
            });
        }
        while choices.len() < 4 {
            choices.push((0..=255).collect());
        }
        let count = choices
            .iter()
            .map(Vec::len)
            .try_fold(1usize, usize::checked_mul)?;
        if count > max {
            return None;
        }
        let mut out = Vec::with_capacity(count);
        for a in &choices[0] {
            for b in &choices[1] {
                for c in &choices[2] {
                    for d in &choices[3] {
                        out.push(Ipv4Addr::new(*a, *b, *c, *d));
                    }
                }
            }
        }
        Some(out)
    }
}

impl FromStr for PackageName {
    type Err = PackageNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for PackageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl fmt::Debug for PackageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackageName({:?})", self.raw)
    }
}

/// One package as the last catalog sync read it from SmartVPS's stock list.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CatalogPackage {
    /// The PID: the key.
    pub id: PackageId,
    /// The package name as SmartVPS spells it (kept as text: a name that does not parse is still
    /// worth showing to an admin).
    pub name: String,
    /// Free addresses at the sync.
    pub free: u32,
    /// Whether SmartVPS said `active`: only active packages are sold.
    pub active: bool,
    /// When the sync read it.
    pub synced_at: Timestamp,
}

impl CatalogPackage {
    /// Whether the package is still sold but running out: `free` at or below `threshold`.
    pub fn is_low(&self, threshold: u32) -> bool {
        self.active && self.free <= threshold
    }

    /// The stored status word.
    pub fn status(&self) -> &'static str {
        if self.active { "active" } else { "inactive" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_names_list_their_addresses_and_wide_ones_do_not() {
        let p = PackageName::parse("103.82.72").unwrap();
        let all = p.addresses(1024).unwrap();
        assert_eq!(all.len(), 256);
        assert!(all.iter().all(|ip| p.contains(*ip)));
        assert_eq!(all[9], Ipv4Addr::new(103, 82, 72, 9));
        assert!(
            PackageName::parse("103.109.18x")
                .unwrap()
                .addresses(1024)
                .is_none(),
            "2,560"
        );
        assert_eq!(
            PackageName::parse("103.109.18x")
                .unwrap()
                .addresses(4096)
                .unwrap()
                .len(),
            2560
        );
        assert!(
            PackageName::parse("103.83.x")
                .unwrap()
                .addresses(1024)
                .is_none()
        );
        assert!(
            PackageName::parse("10.5")
                .unwrap()
                .addresses(1024)
                .is_none()
        );
        assert!(p.addresses(100).is_none());
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn exact_three_octets() {
        let p = PackageName::parse("103.82.72").unwrap();
        assert!(p.contains(ip("103.82.72.9")));
        assert!(!p.contains(ip("103.82.73.9")));
    }

    #[test]
    fn wildcards() {
        let p = PackageName::parse("103.109.18x").unwrap();
        assert!(p.contains(ip("103.109.180.1")));
        assert!(p.contains(ip("103.109.189.1")));
        assert!(!p.contains(ip("103.109.18.1")));
        assert!(!p.contains(ip("103.109.190.1")));
        let any = PackageName::parse("103.83.x").unwrap();
        assert!(any.contains(ip("103.83.0.1")));
        assert!(any.contains(ip("103.83.255.1")));
        assert!(!any.contains(ip("103.84.1.1")));
        let two = PackageName::parse("103.83").unwrap();
        assert!(two.contains(ip("103.83.7.7")));
    }

    #[test]
    fn low_stock_is_only_for_active_packages() {
        let p = CatalogPackage {
            id: PackageId(5),
            name: "103.82.72".into(),
            free: 5,
            active: true,
            synced_at: Timestamp(0),
        };
        assert!(p.is_low(5) && !p.is_low(4));
        let inactive = CatalogPackage { active: false, ..p };
        assert!(!inactive.is_low(5));
        assert_eq!(inactive.status(), "inactive");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "103.x.5",
            "1.2.3.4",
            "300.1",
            "abc",
            "103.82.7y",
            "103..1",
            "103.123x",
        ] {
            assert!(PackageName::parse(bad).is_err(), "{bad} should not parse");
        }
    }
}
