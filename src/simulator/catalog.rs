//! The packages a simulated SmartVPS sells: the default catalog for `provisioner simulator` and
//! the demo.

use crate::domain::{PackageId, PackageName};

/// One package as the simulator starts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageSpec {
    /// The PID.
    pub id: PackageId,
    /// The name (address prefix, maybe with a trailing `x` wildcard).
    pub name: PackageName,
    /// Free addresses at the start.
    pub free: u32,
    /// Whether it can be bought.
    pub active: bool,
}

impl PackageSpec {
    /// An active package.
    ///
    /// # Errors
    /// When `name` is not a valid package name.
    pub fn new(
        id: u32,
        name: &str,
        free: u32,
    ) -> Result<Self, crate::domain::package::PackageNameError> {
        Ok(Self {
            id: PackageId(id),
            name: PackageName::parse(name)?,
            free,
            active: true,
        })
    }
}

/// A handful of realistic packages: three-octet names, both wildcard forms, a two-group name,
/// an exhausted package (to show the wrong-package quirk) and an inactive one.
pub fn default_catalog() -> Vec<PackageSpec> {
    let rows: [(u32, &str, u32, bool); 7] = [
        (5, "103.82.72", 71, true),
        (7, "103.109.18x", 40, true),
        (9, "103.83.x", 120, true),
        (12, "103.195.26", 25, true),
        (14, "45.117", 60, true),
        (17, "103.56.161", 0, true),
        (21, "103.121.18", 30, false),
    ];
    rows.into_iter()
        .filter_map(|(id, name, free, active)| {
            // Every name above parses; filter_map keeps this panic-free all the same.
            let name = PackageName::parse(name).ok()?;
            Some(PackageSpec {
                id: PackageId(id),
                name,
                free,
                active,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_catalog_is_complete() {
        let c = default_catalog();
        assert_eq!(c.len(), 7);
        assert!(c.iter().any(|p| p.name.as_str().ends_with('x')));
        assert!(c.iter().any(|p| p.free == 0));
        assert!(c.iter().any(|p| !p.active));
    }
}
