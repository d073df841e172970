//! An in-memory `Store` for virtual-time tests and the deterministic simulation. Same semantics
//! as the SQLite store (fenced writes, first-writer-wins outcomes, single flight), indexed so a
//! hundred thousand orders stay cheap.

use crate::domain::CompleteScan;
use crate::domain::PurchaseId;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    AccessToken, ActionRequest, Change, Claimed, Delivery, DeliveryResult, DeliveryStatus,
    Expiring, Intake, Lease, NewDelivery, Notice, OrderFilter, Recorded, RenewalRequest,
    StateCounts, Store, StoreError,
};
use super::{Begun, FlightState};
use crate::clock::Timestamp;
use crate::domain::{
    CatalogPackage, Discovered, NoticeKind, Order, OrderId, OrderRef, OrderState, PackageId,
    Purchase, PurchaseIntent, PurchaseOutcome, Resolution, TimelineEntry,
};
use crate::domain::{Renewal, ServerAction, ServerFacts, ServerTerm};

struct Row {
    order: Order,
    lease_owner: Option<String>,
    lease_token: i64,
    lease_expires: Option<Timestamp>,
    credentials: Option<Vec<u8>>,
    timeline: Vec<TimelineEntry>,
    /// The customer's access token (digest and generation).
    access: Option<AccessToken>,
}

struct OutboxRow {
    notice: Notice,
    next_at: Option<Timestamp>,
}

struct DeliveryRow {
    new: NewDelivery,
    created_at: Timestamp,
    attempts: u32,
    next_at: Option<Timestamp>,
    claimed_by: Option<String>,
    claim_token: i64,
    claim_expires: Option<Timestamp>,
    delivered_at: Option<Timestamp>,
    last_error: Option<String>,
}

#[derive(Default)]
struct Inner {
    orders: HashMap<OrderId, Row>,
    by_ref: HashMap<String, OrderId>,
    /// Active, unleased orders by due time: what `claim_due` scans.
    due: BTreeSet<(Timestamp, OrderId)>,
    /// Leased orders by lease expiry: returned to `due` when their lease lapses.
    leased: BTreeSet<(Timestamp, OrderId)>,
    purchases: Vec<Purchase>,
    /// Purchase indexes per order, so an order's ledger is read without a scan.
    purchases_by_order: HashMap<OrderId, Vec<usize>>,
    /// Purchases with no outcome or an unknown one that is not settled as bought or not
    /// bought, by send time: what [`Store::unsettled_purchases_since`] reads.
    unsettled: BTreeSet<(Timestamp, usize)>,
    flights: HashMap<PackageId, OrderId>,
    /// The newest purchase of each package, for [`Store::flight_state`].
    last_purchase: HashMap<PackageId, PurchaseId>,
    outbox: Vec<OutboxRow>,
    /// Deliveries by id - 1; a linear scan to claim is fine at test sizes.
    deliveries: Vec<DeliveryRow>,
    /// Delivery keys already queued, so a repeated fan-out adds nothing.
    delivery_keys: HashMap<String, usize>,
    owners: HashMap<Ipv4Addr, OrderId>,
    /// The catalog, by PID (a BTreeMap so it lists in PID order).
    catalog: BTreeMap<PackageId, CatalogPackage>,
    /// The discovery inventory, by address (a BTreeMap so it lists in address order).
    discovered: BTreeMap<Ipv4Addr, Discovered>,
    /// Complete confirmed discovery scans, in the order recorded.
    complete_scans: Vec<CompleteScan>,
    /// Server actions by id - 1.
    actions: Vec<ServerAction>,
    /// What status last said, per order.
    facts: HashMap<OrderId, ServerFacts>,
    /// Renewals by id - 1.
    renewals: Vec<Renewal>,
    /// Renewal indexes by reference (the unique index).
    renewal_refs: HashMap<String, usize>,
    /// Renewal indexes per order, so an order's renewals are read without a scan.
    renewals_by_order: HashMap<OrderId, Vec<usize>>,
    /// Server terms, per order.
    terms: HashMap<OrderId, ServerTerm>,
}

/// The in-memory store.
#[derive(Default)]
pub struct MemoryStore {
    /// A std mutex: nothing is awaited while it is held.
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every write is applied whole),
        // so a poisoned lock is safe to keep using.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Inner {
    /// Claims up to `limit` due orders (see [`Store::claim_due`]).
    fn claim_due(
        &mut self,
        worker: &str,
        now: Timestamp,
        lease_for: Duration,
        limit: usize,
    ) -> Vec<Claimed> {
        // Leases that lapsed go back to the due set: their orders are claimable again.
        while let Some((exp, id)) = self.leased.first().cloned() {
            if exp > now {
                break;
            }
            self.leased.remove(&(exp, id.clone()));
            if let Some(row) = self.orders.get_mut(&id) {
                row.lease_owner = None;
                row.lease_expires = None;
                if row.order.state.is_workable()
                    && let Some(at) = row.order.run_at
                {
                    self.due.insert((at, id));
                }
            }
        }
        let picked: Vec<(Timestamp, OrderId)> = self
            .due
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit)
            .cloned()
            .collect();
        let expires_at = now.plus(lease_for);
        let mut out = Vec::with_capacity(picked.len());
        for key in picked {
            self.due.remove(&key);
            let id = key.1;
            let Some(row) = self.orders.get_mut(&id) else {
                continue;
            };
            row.lease_token += 1;
            row.lease_owner = Some(worker.to_string());
            row.lease_expires = Some(expires_at);
            let lease = Lease {
                order_id: id.clone(),
                worker: worker.to_string(),
                token: row.lease_token,
                expires_at,
            };
            out.push(Claimed {
                lease,
                order: row.order.clone(),
            });
            self.leased.insert((expires_at, id));
        }
        out
    }

    /// Writes a worker's step (see [`Store::save`]).
    fn save(&mut self, lease: &Lease, order: &Order, change: Change) -> Result<(), StoreError> {
        // The outcome first and unfenced: it is a fact about the world, kept even when the
        // lease is gone.
        if let Some(o) = &change.outcome
            && self.record_outcome(o.purchase_id, &o.outcome, o.at)? == Recorded::AlreadyDecided
        {
            return Err(StoreError::LeaseLost(lease.order_id.clone()));
        }
        self.fenced(lease)?;
        self.apply(&lease.order_id, order, change, order.updated_at);
        Ok(())
    }

    fn fenced(&mut self, lease: &Lease) -> Result<&mut Row, StoreError> {
        match self.orders.get_mut(&lease.order_id) {
            Some(row)
                if row.lease_token == lease.token
                    && row.lease_owner.as_deref() == Some(lease.worker.as_str()) =>
            {
                Ok(row)
            }
            _ => Err(StoreError::LeaseLost(lease.order_id.clone())),
        }
    }

    fn reindex(&mut self, id: &OrderId, old: &Order, old_lease: Option<Timestamp>) {
        if let Some(at) = old.run_at {
            self.due.remove(&(at, id.clone()));
        }
        if let Some(exp) = old_lease {
            self.leased.remove(&(exp, id.clone()));
        }
        let Some(row) = self.orders.get(id) else {
            return;
        };
        if let Some(exp) = row.lease_expires {
            self.leased.insert((exp, id.clone()));
        } else if row.order.state.is_workable()
            && let Some(at) = row.order.run_at
        {
            self.due.insert((at, id.clone()));
        }
    }

    /// Writes a purchase intent; its id.
    fn insert_purchase(&mut self, intent: &PurchaseIntent) -> PurchaseId {
        let id = PurchaseId(self.purchases.len() as i64 + 1);
        let index = self.purchases.len();
        self.purchases_by_order
            .entry(intent.order_id.clone())
            .or_default()
            .push(index);
        self.last_purchase.insert(intent.package_id, id);
        self.unsettled.insert((intent.sent_at, index));
        self.purchases.push(Purchase {
            id,
            order_id: intent.order_id.clone(),
            attempt: intent.attempt,
            package_id: intent.package_id,
            package_name: intent.package_name.clone(),
            stock_before: intent.stock_before,
            pool_before: intent.pool_before,
            sent_at: intent.sent_at,
            outcome: None,
            decided_at: None,
            resolution: None,
            late_ip: None,
            stock_after: None,
        });
        id
    }

    /// Records an outcome first-writer-wins (see [`Store::record_outcome`]).
    fn record_outcome(
        &mut self,
        purchase_id: PurchaseId,
        outcome: &PurchaseOutcome,
        at: Timestamp,
    ) -> Result<Recorded, StoreError> {
        let idx = usize::try_from(purchase_id.0 - 1)
            .map_err(|_| StoreError::Corrupt(format!("no purchase {purchase_id}")))?;
        let Some(p) = self.purchases.get_mut(idx) else {
            return Err(StoreError::Corrupt(format!("no purchase {purchase_id}")));
        };
        if p.outcome.is_none() {
            p.outcome = Some(outcome.clone());
            p.decided_at = Some(at);
            if !matches!(outcome, PurchaseOutcome::Unknown { .. }) {
                self.unsettled.remove(&(p.sent_at, idx));
            }
            let order = p.order_id.clone();
            if let PurchaseOutcome::Succeeded { ip } = outcome {
                self.owners.insert(*ip, order);
            }
            return Ok(Recorded::Recorded);
        }
        if let PurchaseOutcome::Succeeded { ip } = outcome {
            p.late_ip = Some(*ip);
            let order = p.order_id.clone();
            self.owners.insert(*ip, order);
        }
        Ok(Recorded::AlreadyDecided)
    }

    /// Records how a claimed delivery went (see [`Store::finish_delivery`]).
    fn finish_delivery(&mut self, d: &Delivery, result: &DeliveryResult) -> bool {
        let Some(r) = usize::try_from(d.id - 1)
            .ok()
            .and_then(|i| self.deliveries.get_mut(i))
        else {
            return false;
        };
        if r.delivered_at.is_some() {
            return false;
        }
        match result {
            DeliveryResult::Delivered { at } => {
                r.delivered_at = Some(*at);
                r.next_at = None;
                r.last_error = None;
            }
            DeliveryResult::Failed { error, retry_at } => {
                if r.claim_token != d.token || r.claimed_by.as_deref() != Some(d.worker.as_str()) {
                    return false;
                }
                r.next_at = *retry_at;
                r.last_error = Some(error.clone());
            }
        }
        r.claimed_by = None;
        r.claim_expires = None;
        true
    }

    fn apply(&mut self, id: &OrderId, order: &Order, change: Change, now: Timestamp) {
        let Some(row) = self.orders.get_mut(id) else {
            return;
        };
        let old = std::mem::replace(&mut row.order, order.clone());
        let old_lease = row.lease_expires;
        row.timeline.extend(change.entries);
        if let Some(c) = change.credentials {
            row.credentials = Some(c);
        }
        if !change.keep_lease {
            row.lease_owner = None;
            row.lease_expires = None;
        }
        if let Some(ip) = order.server_ip {
            self.owners.insert(ip, id.clone());
        }
        if order.state != OrderState::Buying || change.release_flight {
            self.flights.retain(|_, holder| holder != id);
        }
        if let Some(mut a) = change.action {
            if a.id == 0 {
                a.id = self.actions.len() as i64 + 1;
                self.actions.push(a);
            } else if let Some(slot) = self.actions.get_mut((a.id - 1) as usize) {
                *slot = a;
            }
        }
        if let Some(f) = change.facts {
            self.facts.insert(id.clone(), f);
        }
        if let Some(r) = change.renewal
            && let Some(slot) = self.renewals.get_mut((r.id - 1) as usize)
            && slot.order_id == *id
        {
            *slot = r;
        }
        if let Some(t) = change.term {
            self.terms.insert(id.clone(), t);
        }
        if let Some(row) = self.orders.get_mut(id)
            && row.order.state == OrderState::Ready
            && (change.renewals_seen.is_some() || order.run_at.is_none())
            && row.order.run_at.is_none_or(|at| at > order.updated_at)
        {
            let seen = change.renewals_seen.unwrap_or(0);
            let unseen = self.renewals_by_order.get(id).is_some_and(|ix| {
                ix.iter().any(|i| {
                    self.renewals
                        .get(*i)
                        .is_some_and(|r| r.is_open() && r.id > seen)
                })
            });
            if unseen {
                row.order.run_at = Some(order.updated_at);
            }
        }
        if let Some((pid, resolution)) = change.resolve
            && let Some(p) = self.purchases.get_mut((pid.0 - 1) as usize)
        {
            if matches!(
                resolution,
                Resolution::NotBought { .. } | Resolution::Adopted { .. }
            ) {
                self.unsettled.remove(&(p.sent_at, (pid.0 - 1) as usize));
            }
            p.resolution = Some(resolution);
            if change.stock_after.is_some() {
                p.stock_after = change.stock_after;
            }
        }
        for kind in change.notices {
            let nid = self.outbox.len() as i64 + 1;
            self.outbox.push(OutboxRow {
                notice: Notice {
                    id: nid,
                    order_id: id.clone(),
                    kind,
                    attempts: 0,
                },
                next_at: Some(now),
            });
        }
        self.reindex(id, &old, old_lease);
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn insert_order(
        &self,
        order: &Order,
        access: &AccessToken,
        entries: &[TimelineEntry],
        notices: &[NoticeKind],
    ) -> Result<Intake, StoreError> {
        let mut g = self.lock();
        if let Some(existing) = g
            .by_ref
            .get(order.order_ref.as_str())
            .and_then(|id| g.orders.get(id))
        {
            let o = existing.order.clone();
            return Ok(if o.fingerprint == order.fingerprint {
                Intake::Existing(o)
            } else {
                Intake::Conflict(o)
            });
        }
        g.by_ref
            .insert(order.order_ref.as_str().to_string(), order.id.clone());
        g.orders.insert(
            order.id.clone(),
            Row {
                order: order.clone(),
                lease_owner: None,
                lease_token: 0,
                lease_expires: None,
                credentials: None,
                timeline: entries.to_vec(),
                access: Some(access.clone()),
            },
        );
        if let Some(at) = order.run_at {
            g.due.insert((at, order.id.clone()));
        }
        for kind in notices {
            let nid = g.outbox.len() as i64 + 1;
            g.outbox.push(OutboxRow {
                notice: Notice {
                    id: nid,
                    order_id: order.id.clone(),
                    kind: *kind,
                    attempts: 0,
                },
                next_at: Some(order.created_at),
            });
        }
        Ok(Intake::Created(order.clone()))
    }

    async fn order(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        Ok(self.lock().orders.get(id).map(|r| r.order.clone()))
    }

    async fn orders(&self, filter: &OrderFilter) -> Result<Vec<Order>, StoreError> {
        let g = self.lock();
        let mut all: Vec<&Order> = g
            .orders
            .values()
            .map(|r| &r.order)
            .filter(|o| filter.matches(o))
            .collect();
        all.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| b.id.cmp(&a.id))
        });
        Ok(all
            .into_iter()
            .skip(filter.offset.unwrap_or(0))
            .take(filter.page_size())
            .cloned()
            .collect())
    }

    async fn state_counts(&self) -> Result<StateCounts, StoreError> {
        let g = self.lock();
        Ok(OrderState::ALL
            .iter()
            .map(|s| {
                (
                    *s,
                    g.orders.values().filter(|r| r.order.state == *s).count() as u64,
                )
            })
            .collect())
    }

    async fn timeline(&self, id: &OrderId) -> Result<Vec<TimelineEntry>, StoreError> {
        Ok(self
            .lock()
            .orders
            .get(id)
            .map(|r| r.timeline.clone())
            .unwrap_or_default())
    }

    async fn purchases(&self, id: &OrderId) -> Result<Vec<Purchase>, StoreError> {
        let g = self.lock();
        let idx = g
            .purchases_by_order
            .get(id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        Ok(idx
            .iter()
            .filter_map(|i| g.purchases.get(*i))
            .cloned()
            .collect())
    }

    async fn credentials(&self, id: &OrderId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .lock()
            .orders
            .get(id)
            .and_then(|r| r.credentials.clone()))
    }

    async fn claim_due(
        &self,
        worker: &str,
        now: Timestamp,
        lease_for: Duration,
        limit: usize,
    ) -> Result<Vec<Claimed>, StoreError> {
        Ok(self.lock().claim_due(worker, now, lease_for, limit))
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let g = self.lock();
        let due = g.due.first().map(|(t, _)| *t);
        let lapse = g.leased.first().map(|(t, _)| *t);
        Ok(match (due, lapse) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    async fn save(&self, lease: &Lease, order: &Order, change: Change) -> Result<(), StoreError> {
        self.lock().save(lease, order, change)
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
        let change = Change {
            keep_lease: false,
            ..change
        };
        // One lock for both, as one transaction: nothing comes between the save and the claim.
        let mut g = self.lock();
        g.save(lease, order, change)?;
        Ok(g.claim_due(&lease.worker, now, lease_for, limit))
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut g = self.lock();
        let row = g.fenced(lease)?;
        let old_lease = row.lease_expires;
        row.lease_owner = None;
        row.lease_expires = None;
        let order = row.order.clone();
        g.reindex(&lease.order_id, &order, old_lease);
        Ok(())
    }

    async fn flight_state(&self, package: PackageId) -> Result<FlightState, StoreError> {
        let g = self.lock();
        Ok(FlightState {
            holder: g.flights.get(&package).cloned(),
            last_purchase: g.last_purchase.get(&package).copied(),
        })
    }

    async fn begin_purchase_in_flight(
        &self,
        lease: &Lease,
        order: &Order,
        intent: &PurchaseIntent,
        entries: &[TimelineEntry],
        seen: &FlightState,
    ) -> Result<Begun, StoreError> {
        let mut g = self.lock();
        g.fenced(lease)?;
        let package = intent.package_id;
        match g.flights.get(&package) {
            Some(holder) if holder != &lease.order_id => return Ok(Begun::HeldBy(holder.clone())),
            Some(_) => {}
            None => {
                let newer = g.last_purchase.get(&package).copied() != seen.last_purchase
                    && g.last_purchase
                        .get(&package)
                        .and_then(|p| g.purchases.get((p.0 - 1) as usize))
                        .is_some_and(|p| p.order_id != lease.order_id);
                if newer {
                    return Ok(Begun::Moved);
                }
                g.flights.insert(package, lease.order_id.clone());
            }
        }
        let id = g.insert_purchase(intent);
        let change = Change {
            entries: entries.to_vec(),
            keep_lease: true,
            ..Change::default()
        };
        g.apply(&lease.order_id, order, change, intent.sent_at);
        Ok(Begun::Purchase(id))
    }

    async fn record_outcome(
        &self,
        purchase_id: PurchaseId,
        outcome: &PurchaseOutcome,
        at: Timestamp,
    ) -> Result<Recorded, StoreError> {
        self.lock().record_outcome(purchase_id, outcome, at)
    }

    async fn expedite(&self, id: &OrderId, at: Timestamp) -> Result<bool, StoreError> {
        let mut g = self.lock();
        let Some(row) = g.orders.get_mut(id) else {
            return Ok(false);
        };
        let unleased = row.lease_expires.is_none_or(|exp| exp <= at);
        let later = row.order.run_at.is_some_and(|r| r > at);
        if !(unleased && later && row.order.state.is_active()) {
            return Ok(false);
        }
        let old = row.order.clone();
        let old_lease = row.lease_expires;
        row.order.run_at = Some(at);
        g.reindex(id, &old, old_lease);
        Ok(true)
    }

    async fn record_discovered(&self, found: &[Discovered]) -> Result<(), StoreError> {
        let mut g = self.lock();
        for d in found {
            let entry = g.discovered.entry(d.ip).or_insert_with(|| d.clone());
            if d.candidate_for.is_some() {
                entry.candidate_for = d.candidate_for.clone();
            }
        }
        Ok(())
    }

    async fn discovered(&self, package: PackageId) -> Result<Vec<Discovered>, StoreError> {
        Ok(self
            .lock()
            .discovered
            .values()
            .filter(|d| d.package_id == package)
            .cloned()
            .collect())
    }

    async fn discovered_since(&self, since: Timestamp) -> Result<Vec<Discovered>, StoreError> {
        Ok(self
            .lock()
            .discovered
            .values()
            .filter(|d| d.first_seen >= since)
            .cloned()
            .collect())
    }

    async fn unsettled_purchases_since(
        &self,
        since: Timestamp,
    ) -> Result<Vec<Purchase>, StoreError> {
        let g = self.lock();
        let mut out: Vec<Purchase> = g
            .unsettled
            .range((since, 0)..)
            .filter_map(|(_, i)| g.purchases.get(*i))
            .filter(|p| {
                matches!(p.outcome, None | Some(PurchaseOutcome::Unknown { .. }))
                    && matches!(
                        p.resolution,
                        None | Some(Resolution::Escalated { .. } | Resolution::RetriedBlindly)
                    )
            })
            .cloned()
            .collect();
        out.sort_by_key(|p| p.id);
        Ok(out)
    }

    async fn record_complete_scan(&self, scan: &CompleteScan) -> Result<(), StoreError> {
        let mut g = self.lock();
        let from = scan.retained_from();
        g.complete_scans
            .retain(|s| s.package_id != scan.package_id || s.started_at >= from);
        g.complete_scans.push(*scan);
        Ok(())
    }

    async fn complete_scans(
        &self,
        package: PackageId,
        after: Timestamp,
    ) -> Result<Vec<CompleteScan>, StoreError> {
        let mut scans: Vec<CompleteScan> = self
            .lock()
            .complete_scans
            .iter()
            .filter(|s| s.package_id == package && s.started_at > after)
            .copied()
            .collect();
        scans.sort_by_key(|s| (s.started_at, s.finished_at));
        Ok(scans)
    }

    async fn candidates(&self, order: &OrderId) -> Result<Vec<Discovered>, StoreError> {
        Ok(self
            .lock()
            .discovered
            .values()
            .filter(|d| d.candidate_for.as_ref() == Some(order))
            .cloned()
            .collect())
    }

    async fn owner_of(&self, ip: Ipv4Addr) -> Result<Option<OrderId>, StoreError> {
        Ok(self.lock().owners.get(&ip).cloned())
    }

    async fn request_action(
        &self,
        action: &ServerAction,
        entry: &TimelineEntry,
        per_hour: u32,
    ) -> Result<ActionRequest, StoreError> {
        let mut g = self.lock();
        let id = &action.order_id;
        let since = action.created_at.minus(super::sql::ACTION_WINDOW);
        let state = g.orders.get(id).map(|r| r.order.state.as_str());
        let open = g
            .actions
            .iter()
            .find(|a| &a.order_id == id && a.is_open())
            .cloned();
        let recent: Vec<i64> = g
            .actions
            .iter()
            .filter(|a| {
                &a.order_id == id && a.created_at > since && a.requested_by != "provisioning"
            })
            .map(|a| a.created_at.millis())
            .collect();
        if let Some(refused) = super::sql::refuse_action(state, open, &recent, per_hour)? {
            return Ok(refused);
        }
        let mut stored = action.clone();
        stored.id = g.actions.len() as i64 + 1;
        g.actions.push(stored.clone());
        let now = action.created_at;
        let Some(row) = g.orders.get_mut(id) else {
            return Ok(ActionRequest::NoOrder);
        };
        row.timeline.push(entry.clone());
        let old = row.order.clone();
        let old_lease = row.lease_expires;
        if row.order.run_at.is_none_or(|at| at > now) {
            row.order.run_at = Some(now);
        }
        g.reindex(id, &old, old_lease);
        Ok(ActionRequest::Created(stored))
    }

    async fn open_action(&self, id: &OrderId) -> Result<Option<ServerAction>, StoreError> {
        Ok(self
            .lock()
            .actions
            .iter()
            .find(|a| &a.order_id == id && a.is_open())
            .cloned())
    }

    async fn actions(&self, id: &OrderId) -> Result<Vec<ServerAction>, StoreError> {
        Ok(self
            .lock()
            .actions
            .iter()
            .filter(|a| &a.order_id == id)
            .cloned()
            .collect())
    }

    async fn server_facts(&self, id: &OrderId) -> Result<Option<ServerFacts>, StoreError> {
        Ok(self.lock().facts.get(id).cloned())
    }

    async fn request_renewal(
        &self,
        renewal: &Renewal,
        entry: &TimelineEntry,
    ) -> Result<RenewalRequest, StoreError> {
        let mut g = self.lock();
        let id = &renewal.order_id;
        let state = g.orders.get(id).map(|r| r.order.state.as_str());
        let existing = g
            .renewal_refs
            .get(&renewal.renewal_ref)
            .and_then(|i| g.renewals.get(*i))
            .cloned();
        if let Some(refused) = super::sql::refuse_renewal(renewal, state, existing)? {
            return Ok(refused);
        }
        let mut stored = renewal.clone();
        stored.id = g.renewals.len() as i64 + 1;
        let index = g.renewals.len();
        g.renewals.push(stored.clone());
        g.renewal_refs.insert(stored.renewal_ref.clone(), index);
        g.renewals_by_order
            .entry(id.clone())
            .or_default()
            .push(index);
        let now = renewal.created_at;
        let Some(row) = g.orders.get_mut(id) else {
            return Ok(RenewalRequest::NoOrder);
        };
        row.timeline.push(entry.clone());
        let old = row.order.clone();
        let old_lease = row.lease_expires;
        if row.order.run_at.is_none_or(|at| at > now) {
            row.order.run_at = Some(now);
        }
        g.reindex(id, &old, old_lease);
        Ok(RenewalRequest::Created(stored))
    }

    async fn renewals(&self, id: &OrderId) -> Result<Vec<Renewal>, StoreError> {
        let g = self.lock();
        Ok(g.renewals_by_order
            .get(id)
            .map(|ix| {
                ix.iter()
                    .filter_map(|i| g.renewals.get(*i).cloned())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn server_term(&self, id: &OrderId) -> Result<Option<ServerTerm>, StoreError> {
        Ok(self.lock().terms.get(id).cloned())
    }

    async fn expiring(&self, until: &str, limit: usize) -> Result<Vec<Expiring>, StoreError> {
        let g = self.lock();
        let mut found: Vec<Expiring> = g
            .facts
            .iter()
            .filter(|(id, _)| {
                g.orders
                    .get(*id)
                    .is_some_and(|r| r.order.state == OrderState::Ready)
            })
            .filter_map(|(id, f)| {
                let expiry = f.expiry.clone().filter(|e| e.as_str() <= until)?;
                Some(Expiring {
                    order_id: id.clone(),
                    expiry,
                })
            })
            .collect();
        found.sort_by(|a, b| {
            (&a.expiry, a.order_id.as_str()).cmp(&(&b.expiry, b.order_id.as_str()))
        });
        found.truncate(limit);
        Ok(found)
    }

    async fn wake_expiring(
        &self,
        until: &str,
        now: Timestamp,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let mut g = self.lock();
        let mut idle: Vec<(String, OrderId)> = g
            .facts
            .iter()
            .filter_map(|(id, f)| {
                let expiry = f.expiry.clone().filter(|e| e.as_str() <= until)?;
                let row = g.orders.get(id)?;
                let free = row.lease_expires.is_none_or(|exp| exp <= now);
                (row.order.state == OrderState::Ready && row.order.run_at.is_none() && free)
                    .then(|| (expiry, id.clone()))
            })
            .collect();
        idle.sort();
        idle.truncate(limit);
        for (_, id) in &idle {
            let Some(row) = g.orders.get_mut(id) else {
                continue;
            };
            let old = row.order.clone();
            let old_lease = row.lease_expires;
            row.order.run_at = Some(now);
            g.reindex(id, &old, old_lease);
        }
        Ok(idle.len())
    }

    async fn admin_save(
        &self,
        order: &Order,
        expected_updated_at: Timestamp,
        now: Timestamp,
        change: Change,
    ) -> Result<(), StoreError> {
        let mut g = self.lock();
        let Some(row) = g.orders.get_mut(&order.id) else {
            return Err(StoreError::Conflict(order.id.clone()));
        };
        let leased = row.lease_expires.is_some_and(|exp| exp > now);
        if leased || row.order.updated_at != expected_updated_at {
            return Err(StoreError::Conflict(order.id.clone()));
        }
        row.lease_token += 1;
        let old_lease = row.lease_expires.take();
        row.lease_owner = None;
        if let Some(exp) = old_lease {
            g.leased.remove(&(exp, order.id.clone()));
        }
        g.apply(
            &order.id,
            order,
            Change {
                keep_lease: false,
                ..change
            },
            now,
        );
        Ok(())
    }

    async fn due_notices(&self, now: Timestamp, limit: usize) -> Result<Vec<Notice>, StoreError> {
        let g = self.lock();
        Ok(g.outbox
            .iter()
            .filter(|r| r.next_at.is_some_and(|t| t <= now))
            .take(limit)
            .map(|r| r.notice.clone())
            .collect())
    }

    async fn fan_out(
        &self,
        deliveries: &[NewDelivery],
        notices: &[i64],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        // One lock for both halves, as the SQL stores use one transaction.
        let mut g = self.lock();
        for d in deliveries {
            if g.delivery_keys.contains_key(&d.key) {
                continue;
            }
            let index = g.deliveries.len();
            g.delivery_keys.insert(d.key.clone(), index);
            g.deliveries.push(DeliveryRow {
                new: d.clone(),
                created_at: now,
                attempts: 0,
                next_at: Some(now),
                claimed_by: None,
                claim_token: 0,
                claim_expires: None,
                delivered_at: None,
                last_error: None,
            });
        }
        for id in notices {
            if let Some(r) = g.outbox.get_mut((id - 1) as usize) {
                r.notice.attempts += 1;
                r.next_at = None;
            }
        }
        Ok(())
    }

    async fn claim_deliveries(
        &self,
        worker: &str,
        now: Timestamp,
        claim_for: Duration,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut g = self.lock();
        let mut due: Vec<(Timestamp, usize)> = g
            .deliveries
            .iter()
            .enumerate()
            .filter(|(_, r)| r.next_at.is_some_and(|t| t <= now))
            .filter(|(_, r)| r.claim_expires.is_none_or(|t| t <= now))
            .filter_map(|(i, r)| r.next_at.map(|t| (t, i)))
            .collect();
        due.sort();
        let mut out = Vec::new();
        for (_, i) in due.into_iter().take(limit) {
            let r = &mut g.deliveries[i];
            r.attempts += 1;
            r.claim_token += 1;
            r.claimed_by = Some(worker.to_string());
            r.claim_expires = Some(now.plus(claim_for));
            out.push(Delivery {
                id: i as i64 + 1,
                key: r.new.key.clone(),
                event_id: r.new.event_id.clone(),
                order_id: r.new.order_id.clone(),
                kind: r.new.kind,
                channel: r.new.channel.clone(),
                detail: r.new.detail.clone(),
                created_at: r.created_at,
                attempt: r.attempts,
                worker: worker.to_string(),
                token: r.claim_token,
            });
        }
        Ok(out)
    }

    async fn finish_delivery(
        &self,
        d: &Delivery,
        result: &DeliveryResult,
    ) -> Result<bool, StoreError> {
        Ok(self.lock().finish_delivery(d, result))
    }

    async fn finish_deliveries(
        &self,
        results: &[(Delivery, DeliveryResult)],
    ) -> Result<Vec<bool>, StoreError> {
        let mut g = self.lock();
        Ok(results
            .iter()
            .map(|(d, r)| g.finish_delivery(d, r))
            .collect())
    }

    async fn outbox_backlog(&self) -> Result<u64, StoreError> {
        let g = self.lock();
        let notices = g.outbox.iter().filter(|r| r.next_at.is_some()).count();
        let deliveries = g.deliveries.iter().filter(|r| r.next_at.is_some()).count();
        Ok((notices + deliveries) as u64)
    }

    async fn deliveries(&self, order: &OrderId) -> Result<Vec<DeliveryStatus>, StoreError> {
        let g = self.lock();
        Ok(g.deliveries
            .iter()
            .enumerate()
            .filter(|(_, r)| r.new.order_id.as_ref() == Some(order))
            .map(|(i, r)| DeliveryStatus {
                id: i as i64 + 1,
                key: r.new.key.clone(),
                event_id: r.new.event_id.clone(),
                order_id: r.new.order_id.clone(),
                kind: r.new.kind,
                channel: r.new.channel.clone(),
                detail: r.new.detail.clone(),
                created_at: r.created_at,
                attempts: r.attempts,
                state: DeliveryStatus::state_of(r.delivered_at, r.next_at, r.attempts),
                last_error: r.last_error.clone(),
                delivered_at: r.delivered_at,
                next_at: r.next_at,
            })
            .collect())
    }

    async fn append_timeline(
        &self,
        entries: &[(OrderId, TimelineEntry)],
    ) -> Result<(), StoreError> {
        let mut g = self.lock();
        for (id, entry) in entries {
            if let Some(row) = g.orders.get_mut(id) {
                row.timeline.push(entry.clone());
            }
        }
        Ok(())
    }

    async fn replace_catalog(&self, packages: &[CatalogPackage]) -> Result<(), StoreError> {
        self.lock().catalog = packages.iter().map(|p| (p.id, p.clone())).collect();
        Ok(())
    }

    async fn catalog(&self) -> Result<Vec<CatalogPackage>, StoreError> {
        Ok(self.lock().catalog.values().cloned().collect())
    }

    async fn order_by_ref(&self, order_ref: &OrderRef) -> Result<Option<Order>, StoreError> {
        let g = self.lock();
        Ok(g.by_ref
            .get(order_ref.as_str())
            .and_then(|id| g.orders.get(id))
            .map(|r| r.order.clone()))
    }

    async fn rotate_access_token(
        &self,
        id: &OrderId,
        next: &AccessToken,
        entry: &TimelineEntry,
    ) -> Result<(), StoreError> {
        let mut g = self.lock();
        let row = g
            .orders
            .get_mut(id)
            .ok_or_else(|| StoreError::Corrupt(format!("no order {id} to hold an access token")))?;
        row.access = Some(next.clone());
        row.timeline.push(entry.clone());
        Ok(())
    }

    async fn access_token(&self, id: &OrderId) -> Result<Option<AccessToken>, StoreError> {
        Ok(self.lock().orders.get(id).and_then(|r| r.access.clone()))
    }
}
