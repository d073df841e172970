//! Crashes between store operations. A worker process can die between any two writes (after a
//! purchase's outcome is recorded and before the order is saved, say). The in-memory store never
//! yields, so a dropped future alone cannot model that; this wrapper makes every store operation
//! of a doomed step fail from its k-th on, as if the process had died there. The lease is left
//! behind, and the order is taken over from the store when it lapses.

use crate::domain::CompleteScan;
use crate::domain::PurchaseId;
use std::cell::Cell;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::Timestamp;
use crate::domain::{CatalogPackage, Discovered, OrderRef};
use crate::domain::{
    NoticeKind, Order, OrderId, PackageId, Purchase, PurchaseIntent, PurchaseOutcome, TimelineEntry,
};
use crate::store::{
    AccessToken, Change, Claimed, Delivery, DeliveryResult, Intake, Lease, NewDelivery, Notice,
    OrderFilter, Recorded, StateCounts, Store, StoreError,
};

tokio::task_local! {
    /// Store operations the current step may still make; `u32::MAX` for a step that will not crash.
    static OPS_LEFT: Cell<u32>;
}

/// Runs `step` with at most `ops` store operations before the "process" dies.
pub(crate) async fn with_crash_after<F: std::future::Future>(ops: u32, step: F) -> F::Output {
    OPS_LEFT.scope(Cell::new(ops), step).await
}

/// Whether the current step may make another store operation.
fn tick() -> Result<(), StoreError> {
    let alive = OPS_LEFT
        .try_with(|left| {
            let n = left.get();
            if n == 0 {
                return false;
            }
            if n != u32::MAX {
                left.set(n - 1);
            }
            true
        })
        .unwrap_or(true);
    if alive {
        Ok(())
    } else {
        Err(StoreError::Database(
            "simulated crash: the worker process is gone".into(),
        ))
    }
}

/// A store whose operations fail once the current step has "crashed".
pub(crate) struct CrashingStore(pub(crate) Arc<dyn Store>);

#[async_trait]
impl Store for CrashingStore {
    async fn insert_order(
        &self,
        order: &Order,
        access: &AccessToken,
        entries: &[TimelineEntry],
        notices: &[NoticeKind],
    ) -> Result<Intake, StoreError> {
        tick()?;
        self.0.insert_order(order, access, entries, notices).await
    }
    async fn order(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        tick()?;
        self.0.order(id).await
    }
    async fn orders(&self, filter: &OrderFilter) -> Result<Vec<Order>, StoreError> {
        self.0.orders(filter).await
    }
    async fn state_counts(&self) -> Result<StateCounts, StoreError> {
        self.0.state_counts().await
    }
    async fn timeline(&self, id: &OrderId) -> Result<Vec<TimelineEntry>, StoreError> {
        tick()?;
        self.0.timeline(id).await
    }
    async fn purchases(&self, id: &OrderId) -> Result<Vec<Purchase>, StoreError> {
        tick()?;
        self.0.purchases(id).await
    }
    async fn credentials(&self, id: &OrderId) -> Result<Option<Vec<u8>>, StoreError> {
        tick()?;
        self.0.credentials(id).await
    }
    async fn claim_due(
        &self,
        worker: &str,
        now: Timestamp,
        lease_for: Duration,
        limit: usize,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.0.claim_due(worker, now, lease_for, limit).await
    }
    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        self.0.next_due().await
    }
    async fn save(&self, lease: &Lease, order: &Order, change: Change) -> Result<(), StoreError> {
        tick()?;
        self.0.save(lease, order, change).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        tick()?;
        self.0.release(lease).await
    }
    async fn save_and_claim(
        &self,
        lease: &Lease,
        order: &Order,
        change: Change,
        now: Timestamp,
        lease_for: Duration,
        limit: usize,
    ) -> Result<Vec<Claimed>, StoreError> {
        tick()?;
        self.0
            .save_and_claim(lease, order, change, now, lease_for, limit)
            .await
    }
    async fn flight_state(
        &self,
        package: PackageId,
    ) -> Result<crate::store::FlightState, StoreError> {
        tick()?;
        self.0.flight_state(package).await
    }
    async fn begin_purchase_in_flight(
        &self,
        lease: &Lease,
        order: &Order,
        intent: &PurchaseIntent,
        entries: &[TimelineEntry],
        seen: &crate::store::FlightState,
    ) -> Result<crate::store::Begun, StoreError> {
        tick()?;
        self.0
            .begin_purchase_in_flight(lease, order, intent, entries, seen)
            .await
    }
    async fn record_outcome(
        &self,
        purchase_id: PurchaseId,
        outcome: &PurchaseOutcome,
        at: Timestamp,
    ) -> Result<Recorded, StoreError> {
        tick()?;
        self.0.record_outcome(purchase_id, outcome, at).await
    }
    async fn expedite(&self, id: &OrderId, at: Timestamp) -> Result<bool, StoreError> {
        tick()?;
        self.0.expedite(id, at).await
    }

    async fn record_discovered(&self, found: &[Discovered]) -> Result<(), StoreError> {
        tick()?;
        self.0.record_discovered(found).await
    }

    async fn discovered(&self, package: PackageId) -> Result<Vec<Discovered>, StoreError> {
        self.0.discovered(package).await
    }

    async fn discovered_since(&self, since: Timestamp) -> Result<Vec<Discovered>, StoreError> {
        self.0.discovered_since(since).await
    }

    async fn unsettled_purchases_since(
        &self,
        since: Timestamp,
    ) -> Result<Vec<Purchase>, StoreError> {
        self.0.unsettled_purchases_since(since).await
    }

    async fn record_complete_scan(&self, scan: &CompleteScan) -> Result<(), StoreError> {
        tick()?;
        self.0.record_complete_scan(scan).await
    }

    async fn complete_scans(
        &self,
        package: PackageId,
        after: Timestamp,
    ) -> Result<Vec<CompleteScan>, StoreError> {
        self.0.complete_scans(package, after).await
    }

    async fn candidates(&self, order: &OrderId) -> Result<Vec<Discovered>, StoreError> {
        self.0.candidates(order).await
    }

    async fn owner_of(&self, ip: Ipv4Addr) -> Result<Option<OrderId>, StoreError> {
        tick()?;
        self.0.owner_of(ip).await
    }
    async fn request_action(
        &self,
        action: &crate::domain::ServerAction,
        entry: &crate::domain::TimelineEntry,
        per_hour: u32,
    ) -> Result<crate::store::ActionRequest, StoreError> {
        tick()?;
        self.0.request_action(action, entry, per_hour).await
    }
    async fn open_action(
        &self,
        id: &OrderId,
    ) -> Result<Option<crate::domain::ServerAction>, StoreError> {
        tick()?;
        self.0.open_action(id).await
    }
    async fn actions(&self, id: &OrderId) -> Result<Vec<crate::domain::ServerAction>, StoreError> {
        self.0.actions(id).await
    }
    async fn server_facts(
        &self,
        id: &OrderId,
    ) -> Result<Option<crate::domain::ServerFacts>, StoreError> {
        self.0.server_facts(id).await
    }
    async fn request_renewal(
        &self,
        renewal: &crate::domain::Renewal,
        entry: &crate::domain::TimelineEntry,
    ) -> Result<crate::store::RenewalRequest, StoreError> {
        tick()?;
        self.0.request_renewal(renewal, entry).await
    }
    async fn renewals(&self, id: &OrderId) -> Result<Vec<crate::domain::Renewal>, StoreError> {
        tick()?;
        self.0.renewals(id).await
    }
    async fn server_term(
        &self,
        id: &OrderId,
    ) -> Result<Option<crate::domain::ServerTerm>, StoreError> {
        tick()?;
        self.0.server_term(id).await
    }
    async fn expiring(
        &self,
        until: &str,
        limit: usize,
    ) -> Result<Vec<crate::store::Expiring>, StoreError> {
        self.0.expiring(until, limit).await
    }
    async fn wake_expiring(
        &self,
        until: &str,
        now: Timestamp,
        limit: usize,
    ) -> Result<usize, StoreError> {
        tick()?;
        self.0.wake_expiring(until, now, limit).await
    }
    async fn admin_save(
        &self,
        order: &Order,
        expected_updated_at: Timestamp,
        now: Timestamp,
        change: Change,
    ) -> Result<(), StoreError> {
        self.0
            .admin_save(order, expected_updated_at, now, change)
            .await
    }
    async fn due_notices(&self, now: Timestamp, limit: usize) -> Result<Vec<Notice>, StoreError> {
        self.0.due_notices(now, limit).await
    }
    async fn fan_out(
        &self,
        deliveries: &[NewDelivery],
        notices: &[i64],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.0.fan_out(deliveries, notices, now).await
    }
    async fn claim_deliveries(
        &self,
        worker: &str,
        now: Timestamp,
        claim_for: Duration,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.0.claim_deliveries(worker, now, claim_for, limit).await
    }
    async fn deliveries(
        &self,
        order: &OrderId,
    ) -> Result<Vec<crate::store::DeliveryStatus>, StoreError> {
        self.0.deliveries(order).await
    }
    async fn append_timeline(
        &self,
        entries: &[(OrderId, crate::domain::TimelineEntry)],
    ) -> Result<(), StoreError> {
        tick()?;
        self.0.append_timeline(entries).await
    }
    async fn fan_out_and_claim(
        &self,
        deliveries: &[NewDelivery],
        notices: &[i64],
        now: Timestamp,
        worker: &str,
        claim_for: Duration,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.0
            .fan_out_and_claim(deliveries, notices, now, worker, claim_for, limit)
            .await
    }
    async fn finish_deliveries(
        &self,
        results: &[(Delivery, DeliveryResult)],
    ) -> Result<Vec<bool>, StoreError> {
        self.0.finish_deliveries(results).await
    }
    async fn finish_delivery(
        &self,
        delivery: &Delivery,
        result: &DeliveryResult,
    ) -> Result<bool, StoreError> {
        self.0.finish_delivery(delivery, result).await
    }
    async fn outbox_backlog(&self) -> Result<u64, StoreError> {
        self.0.outbox_backlog().await
    }
    fn work_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.0.work_signal()
    }
    async fn maintain(&self) -> Result<(), StoreError> {
        self.0.maintain().await
    }
    async fn replace_catalog(&self, packages: &[CatalogPackage]) -> Result<(), StoreError> {
        self.0.replace_catalog(packages).await
    }
    async fn catalog(&self) -> Result<Vec<CatalogPackage>, StoreError> {
        self.0.catalog().await
    }
    async fn order_by_ref(&self, order_ref: &OrderRef) -> Result<Option<Order>, StoreError> {
        self.0.order_by_ref(order_ref).await
    }
    async fn rotate_access_token(
        &self,
        id: &OrderId,
        next: &AccessToken,
        entry: &TimelineEntry,
    ) -> Result<(), StoreError> {
        self.0.rotate_access_token(id, next, entry).await
    }

    async fn access_token(&self, id: &OrderId) -> Result<Option<AccessToken>, StoreError> {
        self.0.access_token(id).await
    }
}
