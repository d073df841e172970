//! Counting commits: a store decorator that counts write transactions.

use super::*;
use crate::domain::CompleteScan;
use crate::domain::{Discovered, PurchaseId};

/// Counts the store's write transactions (each call below that writes is one commit), so
/// "commits per order" is measured. Reads pass through uncounted.
pub(super) struct Counting {
    pub(super) inner: Arc<dyn Store>,
    pub(super) commits: AtomicU64,
    /// Claims that found nothing: an UPDATE matching no row writes nothing.
    pub(super) idle_claims: AtomicU64,
}

impl Counting {
    pub(super) fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            commits: AtomicU64::new(0),
            idle_claims: AtomicU64::new(0),
        }
    }

    pub(super) fn commit(&self) {
        self.commits.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Store for Counting {
    async fn insert_order(
        &self,
        order: &Order,
        access: &AccessToken,
        entries: &[TimelineEntry],
        notices: &[NoticeKind],
    ) -> Result<Intake, StoreError> {
        self.commit();
        self.inner
            .insert_order(order, access, entries, notices)
            .await
    }
    async fn order(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        self.inner.order(id).await
    }
    async fn orders(&self, filter: &OrderFilter) -> Result<Vec<Order>, StoreError> {
        self.inner.orders(filter).await
    }
    async fn state_counts(&self) -> Result<StateCounts, StoreError> {
        self.inner.state_counts().await
    }
    async fn timeline(&self, id: &OrderId) -> Result<Vec<TimelineEntry>, StoreError> {
        self.inner.timeline(id).await
    }
    async fn purchases(&self, id: &OrderId) -> Result<Vec<Purchase>, StoreError> {
        self.inner.purchases(id).await
    }
    async fn credentials(&self, id: &OrderId) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.credentials(id).await
    }
    async fn claim_due(
        &self,
        worker: &str,
        now: Timestamp,
        lease_for: Duration,
        limit: usize,
    ) -> Result<Vec<Claimed>, StoreError> {
        let claimed = self.inner.claim_due(worker, now, lease_for, limit).await?;
        if claimed.is_empty() {
            self.idle_claims.fetch_add(1, Ordering::Relaxed);
        } else {
            self.commit();
        }
        Ok(claimed)
    }
    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        self.inner.next_due().await
    }
    async fn save(&self, lease: &Lease, order: &Order, change: Change) -> Result<(), StoreError> {
        self.commit();
        self.inner.save(lease, order, change).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.commit();
        self.inner.release(lease).await
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
        // One transaction: the save's commit carries the claim.
        self.commit();
        self.inner
            .save_and_claim(lease, order, change, now, lease_for, limit)
            .await
    }
    async fn flight_state(
        &self,
        package: PackageId,
    ) -> Result<crate::store::FlightState, StoreError> {
        self.inner.flight_state(package).await
    }
    async fn begin_purchase_in_flight(
        &self,
        lease: &Lease,
        order: &Order,
        intent: &PurchaseIntent,
        entries: &[TimelineEntry],
        seen: &crate::store::FlightState,
    ) -> Result<crate::store::Begun, StoreError> {
        self.commit();
        self.inner
            .begin_purchase_in_flight(lease, order, intent, entries, seen)
            .await
    }
    async fn record_outcome(
        &self,
        purchase_id: PurchaseId,
        outcome: &PurchaseOutcome,
        at: Timestamp,
    ) -> Result<Recorded, StoreError> {
        self.commit();
        self.inner.record_outcome(purchase_id, outcome, at).await
    }
    async fn expedite(&self, id: &OrderId, at: Timestamp) -> Result<bool, StoreError> {
        self.commit();
        self.inner.expedite(id, at).await
    }

    async fn record_discovered(&self, found: &[Discovered]) -> Result<(), StoreError> {
        self.commit();
        self.inner.record_discovered(found).await
    }

    async fn discovered(&self, package: PackageId) -> Result<Vec<Discovered>, StoreError> {
        self.inner.discovered(package).await
    }

    async fn discovered_since(&self, since: Timestamp) -> Result<Vec<Discovered>, StoreError> {
        self.inner.discovered_since(since).await
    }

    async fn unsettled_purchases_since(
        &self,
        since: Timestamp,
    ) -> Result<Vec<Purchase>, StoreError> {
        self.inner.unsettled_purchases_since(since).await
    }

    async fn record_complete_scan(&self, scan: &CompleteScan) -> Result<(), StoreError> {
        self.commit();
        self.inner.record_complete_scan(scan).await
    }

    async fn complete_scans(
        &self,
        package: PackageId,
        after: Timestamp,
    ) -> Result<Vec<CompleteScan>, StoreError> {
        self.inner.complete_scans(package, after).await
    }

    async fn candidates(&self, order: &OrderId) -> Result<Vec<Discovered>, StoreError> {
        self.inner.candidates(order).await
    }

    async fn owner_of(&self, ip: Ipv4Addr) -> Result<Option<OrderId>, StoreError> {
        self.inner.owner_of(ip).await
    }
    async fn request_action(
        &self,
        action: &crate::domain::ServerAction,
        entry: &crate::domain::TimelineEntry,
        per_hour: u32,
    ) -> Result<crate::store::ActionRequest, StoreError> {
        self.inner.request_action(action, entry, per_hour).await
    }
    async fn open_action(
        &self,
        id: &OrderId,
    ) -> Result<Option<crate::domain::ServerAction>, StoreError> {
        self.inner.open_action(id).await
    }
    async fn actions(&self, id: &OrderId) -> Result<Vec<crate::domain::ServerAction>, StoreError> {
        self.inner.actions(id).await
    }
    async fn server_facts(
        &self,
        id: &OrderId,
    ) -> Result<Option<crate::domain::ServerFacts>, StoreError> {
        self.inner.server_facts(id).await
    }
    async fn request_renewal(
        &self,
        renewal: &crate::domain::Renewal,
        entry: &crate::domain::TimelineEntry,
    ) -> Result<crate::store::RenewalRequest, StoreError> {
        self.commit();
        self.inner.request_renewal(renewal, entry).await
    }
    async fn renewals(&self, id: &OrderId) -> Result<Vec<crate::domain::Renewal>, StoreError> {
        self.inner.renewals(id).await
    }
    async fn server_term(
        &self,
        id: &OrderId,
    ) -> Result<Option<crate::domain::ServerTerm>, StoreError> {
        self.inner.server_term(id).await
    }
    async fn expiring(
        &self,
        until: &str,
        limit: usize,
    ) -> Result<Vec<crate::store::Expiring>, StoreError> {
        self.inner.expiring(until, limit).await
    }
    async fn wake_expiring(
        &self,
        until: &str,
        now: Timestamp,
        limit: usize,
    ) -> Result<usize, StoreError> {
        self.inner.wake_expiring(until, now, limit).await
    }
    async fn admin_save(
        &self,
        order: &Order,
        expected_updated_at: Timestamp,
        now: Timestamp,
        change: Change,
    ) -> Result<(), StoreError> {
        self.commit();
        self.inner
            .admin_save(order, expected_updated_at, now, change)
            .await
    }
    async fn due_notices(&self, now: Timestamp, limit: usize) -> Result<Vec<Notice>, StoreError> {
        self.inner.due_notices(now, limit).await
    }
    async fn fan_out(
        &self,
        deliveries: &[crate::store::NewDelivery],
        notices: &[i64],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.commit();
        self.inner.fan_out(deliveries, notices, now).await
    }
    async fn claim_deliveries(
        &self,
        worker: &str,
        now: Timestamp,
        claim_for: Duration,
        limit: usize,
    ) -> Result<Vec<crate::store::Delivery>, StoreError> {
        self.commit();
        self.inner
            .claim_deliveries(worker, now, claim_for, limit)
            .await
    }
    async fn deliveries(
        &self,
        order: &crate::domain::OrderId,
    ) -> Result<Vec<crate::store::DeliveryStatus>, StoreError> {
        self.inner.deliveries(order).await
    }
    async fn append_timeline(
        &self,
        entries: &[(crate::domain::OrderId, crate::domain::TimelineEntry)],
    ) -> Result<(), StoreError> {
        self.commit();
        self.inner.append_timeline(entries).await
    }
    async fn fan_out_and_claim(
        &self,
        deliveries: &[crate::store::NewDelivery],
        notices: &[i64],
        now: Timestamp,
        worker: &str,
        claim_for: Duration,
        limit: usize,
    ) -> Result<Vec<crate::store::Delivery>, StoreError> {
        let claimed = self
            .inner
            .fan_out_and_claim(deliveries, notices, now, worker, claim_for, limit)
            .await?;
        if claimed.is_empty() && deliveries.is_empty() && notices.is_empty() {
            self.idle_claims.fetch_add(1, Ordering::Relaxed);
        } else {
            self.commit();
        }
        Ok(claimed)
    }
    async fn finish_deliveries(
        &self,
        results: &[(crate::store::Delivery, crate::store::DeliveryResult)],
    ) -> Result<Vec<bool>, StoreError> {
        if !results.is_empty() {
            self.commit();
        }
        self.inner.finish_deliveries(results).await
    }
    async fn finish_delivery(
        &self,
        delivery: &crate::store::Delivery,
        result: &crate::store::DeliveryResult,
    ) -> Result<bool, StoreError> {
        self.commit();
        self.inner.finish_delivery(delivery, result).await
    }
    async fn outbox_backlog(&self) -> Result<u64, StoreError> {
        self.inner.outbox_backlog().await
    }
    fn work_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.inner.work_signal()
    }
    async fn maintain(&self) -> Result<(), StoreError> {
        self.inner.maintain().await
    }
    async fn replace_catalog(
        &self,
        packages: &[crate::domain::CatalogPackage],
    ) -> Result<(), StoreError> {
        self.commit();
        self.inner.replace_catalog(packages).await
    }
    async fn catalog(&self) -> Result<Vec<crate::domain::CatalogPackage>, StoreError> {
        self.inner.catalog().await
    }
    async fn order_by_ref(
        &self,
        order_ref: &crate::domain::OrderRef,
    ) -> Result<Option<Order>, StoreError> {
        self.inner.order_by_ref(order_ref).await
    }
    async fn rotate_access_token(
        &self,
        id: &OrderId,
        next: &AccessToken,
        entry: &TimelineEntry,
    ) -> Result<(), StoreError> {
        self.commit();
        self.inner.rotate_access_token(id, next, entry).await
    }

    async fn access_token(&self, id: &OrderId) -> Result<Option<AccessToken>, StoreError> {
        self.inner.access_token(id).await
    }
}
