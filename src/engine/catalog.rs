//! The package catalog: SmartVPS's stock list (ipstock) kept in the store, keyed by PID, so
//! intake can refuse an order for a package that does not exist or is not sold *before* the
//! payment turns into a doomed order, and admins see which packages are running out.
//!
//! It is synced periodically by `serve`, at once by `provisioner catalog sync`, and on demand
//! when intake finds it empty (never synced).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::domain::{CatalogPackage, PackageId};
use crate::provider::{Outcome, Provider};
use crate::store::{Store, StoreError};

/// Why the catalog could not be read or synced.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// SmartVPS's stock list could not be read: why, in plain words with the raw detail after
    /// [`crate::provider::health::DETAIL_OPEN`] (shown only in words).
    #[error("SmartVPS's stock list could not be read: {}", crate::provider::health::split_detail(.0).0)]
    Unavailable(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What intake may do with a package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PackageCheck {
    /// Listed and active: orders for it are accepted (even sold out: stock moves, and the buy
    /// phase retries a sold-out package on the seed's schedule).
    Sellable(CatalogPackage),
    /// Listed but not active.
    Inactive(CatalogPackage),
    /// Not listed; the PIDs that are sold, for the error message.
    Unknown {
        /// Active PIDs.
        sold: Vec<PackageId>,
    },
}

/// What one sync found.
#[derive(Clone, Debug)]
pub struct SyncReport {
    /// Every package listed, by PID.
    pub packages: Vec<CatalogPackage>,
    /// The active packages at or below the low-stock threshold.
    pub low: Vec<CatalogPackage>,
}

/// The catalog service.
pub struct Catalog {
    /// Where the catalog is kept.
    store: Arc<dyn Store>,
    /// Where the stock list comes from.
    provider: Arc<dyn Provider>,
    /// Stamps each sync.
    clock: Arc<dyn Clock>,
    /// The bound on one ipstock call (clock time), the engine's buy timeout.
    timeout: Duration,
    /// Free addresses at or below which a sold package is flagged.
    low_stock: u32,
}

impl Catalog {
    /// A catalog over the given ports.
    pub fn new(
        store: Arc<dyn Store>,
        provider: Arc<dyn Provider>,
        clock: Arc<dyn Clock>,
        timeout: Duration,
        low_stock: u32,
    ) -> Self {
        Self {
            store,
            provider,
            clock,
            timeout,
            low_stock,
        }
    }

    /// The low-stock threshold.
    pub fn low_stock(&self) -> u32 {
        self.low_stock
    }

    /// The catalog as last synced.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn packages(&self) -> Result<Vec<CatalogPackage>, StoreError> {
        self.store.catalog().await
    }

    /// Reads the stock list into the store and logs a warning for every package low on stock.
    ///
    /// # Errors
    /// [`CatalogError::Unavailable`] when ipstock fails (the stored catalog is left as it was).
    pub async fn sync(&self) -> Result<SyncReport, CatalogError> {
        let list = match self.provider.ipstock(self.timeout).await {
            Outcome::Succeeded(list) => list,
            Outcome::Rejected(why) | Outcome::Unknown(why) => {
                let why = crate::provider::health::explain(&why);
                tracing::warn!(
                    detail = why.detail.as_deref().unwrap_or(""),
                    "SmartVPS's stock list could not be read: {}",
                    why.words
                );
                return Err(CatalogError::Unavailable(why.text()));
            }
        };
        let now = self.clock.now();
        let mut packages: Vec<CatalogPackage> = list
            .into_iter()
            .map(|entry| {
                let (name, active) = match entry.name {
                    Ok(name) => (name.to_string(), entry.active),
                    // A name that cannot be checked against bought addresses cannot be sold
                    // safely (the engine would fail the order), so it is listed as inactive.
                    Err(why) => (format!("(unreadable name: {why})"), false),
                };
                CatalogPackage {
                    id: entry.id,
                    name,
                    free: entry.free,
                    active,
                    synced_at: now,
                }
            })
            .collect();
        packages.sort_by_key(|p| p.id);
        packages.dedup_by_key(|p| p.id);
        self.store.replace_catalog(&packages).await?;
        let low: Vec<CatalogPackage> = packages
            .iter()
            .filter(|p| p.is_low(self.low_stock))
            .cloned()
            .collect();
        for p in &low {
            tracing::warn!(
                package = p.id.0,
                free = p.free,
                threshold = self.low_stock,
                "⚠️ Low stock: package {} ({}) has {} free address(es), at or below catalog.low_stock = {}",
                p.id,
                p.name,
                p.free,
                self.low_stock
            );
        }
        tracing::info!(
            packages = packages.len(),
            low = low.len(),
            "catalog synced from SmartVPS's stock list"
        );
        Ok(SyncReport { packages, low })
    }

    /// Whether intake may accept an order for `id`. A catalog that was never synced is synced
    /// once first, so a fresh install does not refuse its first orders.
    ///
    /// # Errors
    /// When the catalog is empty and SmartVPS cannot be read, or the store fails.
    pub async fn check(&self, id: PackageId) -> Result<PackageCheck, CatalogError> {
        let mut packages = self.store.catalog().await?;
        if packages.is_empty() {
            packages = self.sync().await?.packages;
        }
        Ok(match packages.iter().find(|p| p.id == id) {
            Some(p) if p.active => PackageCheck::Sellable(p.clone()),
            Some(p) => PackageCheck::Inactive(p.clone()),
            None => PackageCheck::Unknown {
                sold: packages.iter().filter(|p| p.active).map(|p| p.id).collect(),
            },
        })
    }

    /// Syncs now and then every `interval` (real time: the upstream's stock moves in real time)
    /// until `shutdown`. A failed sync is logged and the last catalog kept.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, interval: Duration) {
        loop {
            if let Err(e) = self.sync().await {
                tracing::warn!("catalog sync failed, keeping the last catalog: {e}");
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ScaledClock;
    use crate::simulator::{PackageSpec, Simulator};
    use crate::store::memory::MemoryStore;

    fn catalog(sim: &Simulator, store: &Arc<MemoryStore>, low: u32) -> Catalog {
        let clock: Arc<dyn Clock> = sim.clock().clone();
        Catalog::new(
            store.clone(),
            Arc::new(sim.provider()),
            clock,
            Duration::from_secs(30),
            low,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn sync_stores_the_stock_list_and_flags_low_packages() {
        let clock: Arc<dyn Clock> = Arc::new(ScaledClock::virtual_at_epoch());
        let sim = Simulator::with_default_catalog(clock, 1);
        sim.set_free(PackageId(12), 5).unwrap();
        let store = Arc::new(MemoryStore::new());
        let report = catalog(&sim, &store, 5).sync().await.unwrap();
        assert_eq!(report.packages.len(), 7);
        // Package 12 is at the threshold; 17 is sold out (0 free) and active; 21 is inactive
        // with 30 free, so it is never "low".
        let low: Vec<u32> = report.low.iter().map(|p| p.id.0).collect();
        assert_eq!(low, [12, 17]);
        let stored = store.catalog().await.unwrap();
        assert_eq!(stored, report.packages);
        let five = stored.iter().find(|p| p.id == PackageId(5)).unwrap();
        assert_eq!(
            (five.name.as_str(), five.free, five.active),
            ("103.82.72", 71, true)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn check_syncs_an_empty_catalog_once_then_refuses_unknown_and_inactive_packages() {
        let clock: Arc<dyn Clock> = Arc::new(ScaledClock::virtual_at_epoch());
        let sim = Simulator::with_default_catalog(clock, 1);
        let store = Arc::new(MemoryStore::new());
        let c = catalog(&sim, &store, 5);
        assert!(matches!(
            c.check(PackageId(5)).await.unwrap(),
            PackageCheck::Sellable(p) if p.name == "103.82.72"
        ));
        assert_eq!(store.catalog().await.unwrap().len(), 7, "synced on demand");
        assert!(matches!(
            c.check(PackageId(21)).await.unwrap(),
            PackageCheck::Inactive(p) if p.name == "103.121.18"
        ));
        let PackageCheck::Unknown { sold } = c.check(PackageId(99)).await.unwrap() else {
            panic!("99 is not sold")
        };
        assert!(sold.contains(&PackageId(5)) && !sold.contains(&PackageId(21)));
        // A package added upstream after the sync is unknown until the next sync.
        sim.add_package(PackageSpec::new(99, "45.1.2", 10).unwrap());
        assert!(matches!(
            c.check(PackageId(99)).await.unwrap(),
            PackageCheck::Unknown { .. }
        ));
        c.sync().await.unwrap();
        assert!(matches!(
            c.check(PackageId(99)).await.unwrap(),
            PackageCheck::Sellable(_)
        ));
    }
}
