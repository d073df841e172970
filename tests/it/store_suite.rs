//! The `Store` contract, run against every backend: memory, SQLite (a temp file) and PostgreSQL
//! (a fresh schema per case, in a fresh database per run, on the server at 127.0.0.1:5432).
//!
//! Each case gets a fresh, empty store from the backend's factory, so cases cannot lean on each
//! other's leftovers (claims and `next_due` look at the whole table).
//!
//! PostgreSQL-only cases at the end check what one process cannot show: two pools (two
//! processes, as far as the server can tell) claiming and taking flights at the same moment.

use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use provisioner::clock::Timestamp;
use provisioner::domain::{CallOutcome, Renewal, RenewalState, ServerFacts, ServerTerm};
use provisioner::domain::{
    EntryKind, NewOrder, NoticeKind, Order, OrderState, PackageId, PackageName, Phase,
    PurchaseIntent, PurchaseOutcome, Resolution, TimelineEntry,
};
use provisioner::store::memory::MemoryStore;
use provisioner::store::postgres::PostgresStore;
use provisioner::store::sqlite::SqliteStore;
use provisioner::store::{
    AccessToken, Begun, Change, DeliveryResult, DeliveryState, FlightState, Intake, Lease,
    NewDelivery, OrderFilter, OutcomeRecord, Recorded, RenewalRequest, Store, StoreError,
};

use crate::helpers::request;
use crate::pg::PgServer;

type Fresh<'a> = &'a dyn Fn() -> Pin<Box<dyn Future<Output = Arc<dyn Store>> + 'a>>;

/// 2026-01-01T00:00:00Z: every case's time starts here.
const T0: Timestamp = Timestamp(1_767_225_600_000);
const LEASE: Duration = Duration::from_secs(60);

fn at(secs: i64) -> Timestamp {
    Timestamp(T0.0 + secs * 1000)
}

fn order(order_ref: &str, package: u32, now: Timestamp) -> Order {
    Order::accept(NewOrder::parse(&request(order_ref, package)).unwrap(), now)
}

fn line(now: Timestamp, message: &str) -> TimelineEntry {
    TimelineEntry {
        at: now,
        kind: EntryKind::Progress,
        message: message.into(),
    }
}

fn access(hash: &str, generation: u32) -> AccessToken {
    AccessToken {
        hash: hash.into(),
        generation: Some(generation),
    }
}

async fn create(store: &dyn Store, o: &Order) {
    match store
        .insert_order(
            o,
            &access("h0", 0),
            &[line(o.created_at, "received")],
            &[NoticeKind::Provisioning],
        )
        .await
        .unwrap()
    {
        Intake::Created(_) => {}
        other => panic!("expected a new order, got {other:?}"),
    }
}

/// Claims exactly one order and returns it with its lease.
async fn claim_one(store: &dyn Store, worker: &str, now: Timestamp) -> (Lease, Order) {
    let mut claimed = store.claim_due(worker, now, LEASE, 1).await.unwrap();
    assert_eq!(claimed.len(), 1, "expected one due order at {now}");
    let c = claimed.remove(0);
    (c.lease, c.order)
}

fn keep() -> Change {
    Change {
        keep_lease: true,
        ..Change::default()
    }
}

fn intent(o: &Order, attempt: u32, now: Timestamp) -> PurchaseIntent {
    PurchaseIntent {
        order_id: o.id.clone(),
        attempt,
        package_id: o.package_id,
        package_name: PackageName::parse("103.82.72").unwrap(),
        stock_before: Some(50),
        pool_before: Some(5000),
        sent_at: now,
    }
}

/// Begins a purchase the way the buy phase does: reads the package's flight, then takes it with
/// the intent. For cases about what follows a purchase, where the flight is free or the order's.
async fn begin(
    store: &dyn Store,
    lease: &Lease,
    o: &Order,
    intent: &PurchaseIntent,
    entries: &[TimelineEntry],
) -> Result<provisioner::domain::PurchaseId, StoreError> {
    let seen = store.flight_state(intent.package_id).await?;
    match store
        .begin_purchase_in_flight(lease, o, intent, entries, &seen)
        .await?
    {
        Begun::Purchase(id) => Ok(id),
        refused => panic!("the flight was refused: {refused:?}"),
    }
}

/// Asks for the package's flight with the order's next purchase, as the buy phase does (its
/// state read just before): the order counts the attempt only when the purchase is begun.
async fn fly(store: &dyn Store, lease: &Lease, o: &mut Order, now: Timestamp) -> Begun {
    let seen = store.flight_state(o.package_id).await.unwrap();
    let mut next = o.clone();
    let n = next.start_buy_attempt(now).unwrap();
    let begun = store
        .begin_purchase_in_flight(lease, &next, &intent(&next, n, now), &[], &seen)
        .await
        .unwrap();
    if matches!(begun, Begun::Purchase(_)) {
        *o = next;
    }
    begun
}

/// Runs every case, each on a fresh store from `fresh`.
pub async fn suite(fresh: Fresh<'_>) {
    intake_is_idempotent(fresh().await).await;
    claims_respect_run_at_and_leases(fresh().await).await;
    expired_leases_are_reclaimed_with_a_new_token(fresh().await).await;
    stale_tokens_cannot_write(fresh().await).await;
    release_lets_another_worker_claim_at_once(fresh().await).await;
    single_flight_is_granted_held_and_released(fresh().await).await;
    ledger_outcomes_are_first_writer_wins(fresh().await).await;
    admin_save_conflicts_while_leased_and_fences_out_the_worker(fresh().await).await;
    outbox_delivers_retries_and_gives_up(fresh().await).await;
    next_due_is_the_earliest_due_or_lapse(fresh().await).await;
    orders_are_filtered_paged_and_counted(fresh().await).await;
    orders_are_found_by_reference_email_address_or_id(fresh().await).await;
    saves_carry_timeline_credentials_and_resolutions(fresh().await).await;
    fan_out_queues_deliveries_and_hands_notices_over_together(fresh().await).await;
    storefront_and_access_token_are_kept_and_rotated(fresh().await).await;
    expedite_moves_only_a_waiting_unleased_order_earlier(fresh().await).await;
    deliveries_are_listed_per_order_and_lines_appended_without_a_lease(fresh().await).await;
    orders_are_searched_by_ref_email_ip_and_id_suffix(fresh().await).await;
    the_flight_is_taken_with_the_intent(fresh().await).await;
    a_save_records_the_outcome_first_and_keeps_it(fresh().await).await;
    a_dispatcher_round_is_two_commits(fresh().await).await;
    a_releasing_save_claims_the_next_due_orders(fresh().await).await;
    renewals_are_idempotent_queued_and_never_buried(fresh().await).await;
    the_inventory_keeps_first_sightings_and_candidates(fresh().await).await;
    complete_scans_are_kept_per_package_and_read_by_start(fresh().await).await;
    unsettled_purchases_are_read_since_a_moment(fresh().await).await;
}

/// `unsettled_purchases_since`: purchases in flight, or unknown and unsettled, escalated or
/// retried blindly, sent at or after the moment; not one that succeeded, nor one settled as
/// bought or not bought (from the moment the settlement is saved).
async fn unsettled_purchases_are_read_since_a_moment(store: Arc<dyn Store>) {
    let unknown = PurchaseOutcome::Unknown {
        reason: "timeout".into(),
    };
    // One order per package (single flight), each with one purchase sent at `sent`.
    let mut begun = Vec::new();
    for (i, sent) in [10, 20, 30, 40, 50, 60].into_iter().enumerate() {
        let o = order(&format!("unsettled-{i}"), 20 + i as u32, at(sent - 1));
        create(&*store, &o).await;
        let (lease, mut cur) = claim_one(&*store, "w1", at(sent)).await;
        cur.begin_buying(at(sent)).unwrap();
        let n = cur.start_buy_attempt(at(sent)).unwrap();
        let pid = begin(&*store, &lease, &cur, &intent(&cur, n, at(sent)), &[])
            .await
            .unwrap();
        begun.push((lease, cur, pid));
    }
    let ids = |ps: Vec<provisioner::domain::Purchase>| -> Vec<i64> {
        ps.into_iter().map(|p| p.id.0).collect()
    };
    let all: Vec<i64> = begun.iter().map(|b| b.2.0).collect();
    assert_eq!(
        ids(store.unsettled_purchases_since(at(0)).await.unwrap()),
        all,
        "every purchase in flight"
    );
    // 0 stays in flight; 1 unknown; 2 succeeds; 3 unknown then not bought; 4 unknown then
    // escalated; 5 unknown then retried blindly.
    for (k, (_, _, pid)) in begun.iter().enumerate().skip(1) {
        let outcome = if k == 2 {
            PurchaseOutcome::Succeeded {
                ip: Ipv4Addr::new(103, 82, 72, 9),
            }
        } else {
            unknown.clone()
        };
        store.record_outcome(*pid, &outcome, at(70)).await.unwrap();
    }
    let settle = |k: usize, r: Resolution| {
        let (lease, cur, pid) = &begun[k];
        let store = Arc::clone(&store);
        let (lease, cur, pid) = (lease.clone(), cur.clone(), *pid);
        async move {
            store
                .save(
                    &lease,
                    &cur,
                    Change {
                        resolve: Some((pid, r)),
                        ..keep()
                    },
                )
                .await
                .unwrap();
        }
    };
    assert_eq!(
        ids(store.unsettled_purchases_since(at(0)).await.unwrap()),
        [all[0], all[1], all[3], all[4], all[5]],
        "a success is settled"
    );
    settle(
        3,
        Resolution::NotBought {
            evidence: "stock unchanged".into(),
        },
    )
    .await;
    settle(
        4,
        Resolution::Escalated {
            evidence: "stock fell".into(),
        },
    )
    .await;
    settle(5, Resolution::RetriedBlindly).await;
    assert_eq!(
        ids(store.unsettled_purchases_since(at(0)).await.unwrap()),
        [all[0], all[1], all[4], all[5]],
        "not bought is settled; escalated and retried blindly may still own a server"
    );
    assert_eq!(
        ids(store.unsettled_purchases_since(at(20)).await.unwrap()),
        [all[1], all[4], all[5]],
        "sent at or after the moment"
    );
    settle(
        1,
        Resolution::Adopted {
            ip: Ipv4Addr::new(103, 82, 72, 10),
        },
    )
    .await;
    assert_eq!(
        ids(store.unsettled_purchases_since(at(20)).await.unwrap()),
        [all[4], all[5]],
        "an adopted late reply is settled"
    );
}

/// Complete confirmed discovery scans: every one recorded is kept (two with the same times
/// too), and read per package, those started after a moment only, by start.
async fn complete_scans_are_kept_per_package_and_read_by_start(store: Arc<dyn Store>) {
    use provisioner::domain::CompleteScan;
    let scan = |pkg: u32, started: i64, finished: i64| CompleteScan {
        package_id: PackageId(pkg),
        started_at: at(started),
        finished_at: at(finished),
    };
    assert!(
        store
            .complete_scans(PackageId(5), at(0))
            .await
            .unwrap()
            .is_empty()
    );
    for s in [
        scan(5, 300, 420),
        scan(5, 100, 200),
        scan(6, 150, 250),
        scan(5, 100, 200),
    ] {
        store.record_complete_scan(&s).await.unwrap();
    }
    assert_eq!(
        store.complete_scans(PackageId(5), at(0)).await.unwrap(),
        [scan(5, 100, 200), scan(5, 100, 200), scan(5, 300, 420)]
    );
    // Strictly after: a scan that started at the moment is left out.
    assert_eq!(
        store.complete_scans(PackageId(5), at(100)).await.unwrap(),
        [scan(5, 300, 420)]
    );
    assert_eq!(
        store.complete_scans(PackageId(6), at(0)).await.unwrap(),
        [scan(6, 150, 250)]
    );
    assert!(
        store
            .complete_scans(PackageId(5), at(300))
            .await
            .unwrap()
            .is_empty()
    );
    // A scan recorded more than the retention later forgets its package's older ones (not
    // another package's): the table stays bounded.
    let week =
        i64::try_from(provisioner::domain::inventory::COMPLETE_SCAN_RETENTION.as_secs()).unwrap();
    store
        .record_complete_scan(&scan(5, 200 + week, 300 + week))
        .await
        .unwrap();
    assert_eq!(
        store.complete_scans(PackageId(5), at(0)).await.unwrap(),
        [scan(5, 300, 420), scan(5, 200 + week, 300 + week)]
    );
    assert_eq!(
        store.complete_scans(PackageId(6), at(0)).await.unwrap(),
        [scan(6, 150, 250)]
    );
}

/// The discovery inventory: a server is recorded once with when it was first seen (a later
/// sighting changes neither that time nor its facts), listing it as a candidate sticks until
/// another listing replaces it, and it is read by package, by first sighting across packages,
/// and by the order it is listed for.
async fn the_inventory_keeps_first_sightings_and_candidates(store: Arc<dyn Store>) {
    use provisioner::domain::Discovered;
    let o = order("INV-1", 5, at(0));
    create(store.as_ref(), &o).await;
    let seen = |ip: [u8; 4], pkg: u32, secs: i64, candidate: Option<&Order>| Discovered {
        ip: Ipv4Addr::from(ip),
        package_id: PackageId(pkg),
        ram_gb: Some(2),
        expiry: Some("2026-02-01".into()),
        first_seen: at(secs),
        candidate_for: candidate.map(|o| o.id.clone()),
    };
    store
        .record_discovered(&[
            seen([10, 5, 0, 1], 5, 10, None),
            seen([10, 6, 0, 1], 6, 20, None),
        ])
        .await
        .unwrap();
    // Seen again later, now as the order's candidate: first_seen stays 10 s.
    store
        .record_discovered(&[seen([10, 5, 0, 1], 5, 99, Some(&o))])
        .await
        .unwrap();
    // A later sighting without a listing keeps the listing.
    store
        .record_discovered(&[seen([10, 5, 0, 1], 5, 120, None)])
        .await
        .unwrap();
    let in_5 = store.discovered(PackageId(5)).await.unwrap();
    assert_eq!(in_5.len(), 1);
    assert_eq!(in_5[0].first_seen, at(10));
    assert_eq!(in_5[0].candidate_for.as_ref(), Some(&o.id));
    let since = |secs| {
        let store = Arc::clone(&store);
        async move {
            let mut ips: Vec<Ipv4Addr> = store
                .discovered_since(at(secs))
                .await
                .unwrap()
                .iter()
                .map(|d| d.ip)
                .collect();
            ips.sort();
            ips
        }
    };
    assert_eq!(
        since(0).await,
        [Ipv4Addr::new(10, 5, 0, 1), Ipv4Addr::new(10, 6, 0, 1)]
    );
    assert_eq!(since(15).await, [Ipv4Addr::new(10, 6, 0, 1)]);
    assert!(since(21).await.is_empty());
    let listed = store.candidates(&o.id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].ip, Ipv4Addr::new(10, 5, 0, 1));
}

/// `begin_purchase_in_flight`: the flight and the intent in one transaction, refused (with
/// nothing written) when another order holds the flight or bought from the package after the
/// flight's state was read.
async fn the_flight_is_taken_with_the_intent(store: Arc<dyn Store>) {
    let pkg = PackageId(7);
    let (x, y) = (order("fi-x", 7, at(0)), order("fi-y", 7, at(0)));
    for o in [&x, &y] {
        create(&*store, o).await;
    }
    let claimed = store.claim_due("w", at(0), LEASE, 10).await.unwrap();
    let lease_of = |id| {
        claimed
            .iter()
            .find(|c| &c.order.id == id)
            .map(|c| (c.lease.clone(), c.order.clone()))
            .unwrap()
    };
    let ((lx, mut ox), (ly, mut oy)) = (lease_of(&x.id), lease_of(&y.id));
    ox.begin_buying(at(1)).unwrap();
    oy.begin_buying(at(1)).unwrap();
    let empty = store.flight_state(pkg).await.unwrap();
    assert_eq!(empty, FlightState::default(), "no holder, no purchase");
    // y reads the flight's state, then x buys first.
    let y_seen = store.flight_state(pkg).await.unwrap();
    let n = ox.start_buy_attempt(at(1)).unwrap();
    let Begun::Purchase(px) = store
        .begin_purchase_in_flight(
            &lx,
            &ox,
            &intent(&ox, n, at(1)),
            &[line(at(1), "x buys")],
            &empty,
        )
        .await
        .unwrap()
    else {
        panic!("x takes the free flight");
    };
    let state = store.flight_state(pkg).await.unwrap();
    assert_eq!(state.holder, Some(x.id.clone()));
    assert_eq!(state.last_purchase, Some(px));
    let stored = store.order(&x.id).await.unwrap().unwrap();
    assert_eq!(
        stored.buy_attempts, 1,
        "the attempt count commits with the intent"
    );
    assert!(
        store
            .timeline(&x.id)
            .await
            .unwrap()
            .iter()
            .any(|e| e.message == "x buys")
    );
    // Held: y is refused and nothing of it is written.
    let ny = oy.clone().start_buy_attempt(at(2)).unwrap();
    let mut oy1 = oy.clone();
    oy1.start_buy_attempt(at(2)).unwrap();
    assert_eq!(
        store
            .begin_purchase_in_flight(
                &ly,
                &oy1,
                &intent(&oy1, ny, at(2)),
                &[line(at(2), "y buys")],
                &y_seen
            )
            .await
            .unwrap(),
        Begun::HeldBy(x.id.clone())
    );
    assert!(store.purchases(&y.id).await.unwrap().is_empty());
    assert_eq!(store.order(&y.id).await.unwrap().unwrap().buy_attempts, 0);
    // x's purchase is settled and its flight released; y's reading predates x's purchase.
    ox.bought(Ipv4Addr::new(103, 82, 72, 9), at(3)).unwrap();
    store.save(&lx, &ox, keep()).await.unwrap();
    assert_eq!(store.flight_state(pkg).await.unwrap().holder, None);
    assert_eq!(
        store
            .begin_purchase_in_flight(&ly, &oy1, &intent(&oy1, ny, at(3)), &[], &y_seen)
            .await
            .unwrap(),
        Begun::Moved,
        "x's purchase went out after y read the stock"
    );
    assert!(store.purchases(&y.id).await.unwrap().is_empty());
    // Read again, y takes it; taking it again (the holder, its next attempt) is granted.
    let fresh = store.flight_state(pkg).await.unwrap();
    let Begun::Purchase(py) = store
        .begin_purchase_in_flight(&ly, &oy1, &intent(&oy1, ny, at(4)), &[], &fresh)
        .await
        .unwrap()
    else {
        panic!("y takes the flight after reading again");
    };
    assert!(py > px);
    let n2 = oy1.start_buy_attempt(at(5)).unwrap();
    let held = store.flight_state(pkg).await.unwrap();
    assert!(matches!(
        store
            .begin_purchase_in_flight(&ly, &oy1, &intent(&oy1, n2, at(5)), &[], &held)
            .await
            .unwrap(),
        Begun::Purchase(_)
    ));
    // A lost lease writes nothing.
    let stale = Lease {
        token: ly.token - 1,
        ..ly.clone()
    };
    assert!(matches!(
        store
            .begin_purchase_in_flight(&stale, &oy1, &intent(&oy1, 3, at(6)), &[], &held)
            .await,
        Err(StoreError::LeaseLost(_))
    ));
    assert_eq!(store.purchases(&y.id).await.unwrap().len(), 2);
}

/// A save carrying a buyvps reply records it first-writer-wins in the same transaction, and
/// keeps it even when the write itself is fenced out.
async fn a_save_records_the_outcome_first_and_keeps_it(store: Arc<dyn Store>) {
    let o = order("so", 7, at(0));
    create(&*store, &o).await;
    let (lease, mut cur) = claim_one(&*store, "w1", at(0)).await;
    cur.begin_buying(at(1)).unwrap();
    let n = cur.start_buy_attempt(at(1)).unwrap();
    let pid = begin(&*store, &lease, &cur, &intent(&cur, n, at(1)), &[])
        .await
        .unwrap();
    let ip = Ipv4Addr::new(103, 82, 72, 50);
    let mut bought = cur.clone();
    bought.bought(ip, at(2)).unwrap();
    store
        .save(
            &lease,
            &bought,
            Change {
                outcome: Some(OutcomeRecord {
                    purchase_id: pid,
                    outcome: PurchaseOutcome::Succeeded { ip },
                    at: at(2),
                }),
                ..keep()
            },
        )
        .await
        .unwrap();
    let p = &store.purchases(&o.id).await.unwrap()[0];
    assert_eq!(p.outcome, Some(PurchaseOutcome::Succeeded { ip }));
    assert_eq!(p.decided_at, Some(at(2)));
    assert_eq!(
        store.order(&o.id).await.unwrap().unwrap().server_ip,
        Some(ip)
    );
    assert_eq!(store.owner_of(ip).await.unwrap(), Some(o.id.clone()));

    // Fenced out: the outcome is kept, the order is not written.
    let o2 = order("so-2", 7, at(0));
    create(&*store, &o2).await;
    let (l2, mut c2) = claim_one(&*store, "w1", at(0)).await;
    c2.begin_buying(at(1)).unwrap();
    let n = c2.start_buy_attempt(at(1)).unwrap();
    let p2 = begin(&*store, &l2, &c2, &intent(&c2, n, at(1)), &[])
        .await
        .unwrap();
    let stale = Lease {
        token: l2.token + 1,
        ..l2.clone()
    };
    let rejected = PurchaseOutcome::Rejected {
        reason: "sold out".into(),
    };
    let record = |outcome: &PurchaseOutcome, t| OutcomeRecord {
        purchase_id: p2,
        outcome: outcome.clone(),
        at: at(t),
    };
    let mut failed = c2.clone();
    failed.fail(Phase::Buy, "x", at(3)).unwrap();
    assert!(matches!(
        store
            .save(
                &stale,
                &failed,
                Change {
                    outcome: Some(record(&rejected, 3)),
                    entries: vec![line(at(3), "must not appear")],
                    ..Change::default()
                },
            )
            .await,
        Err(StoreError::LeaseLost(_))
    ));
    assert_eq!(
        store.purchases(&o2.id).await.unwrap()[0].outcome,
        Some(rejected.clone())
    );
    assert_eq!(
        store.order(&o2.id).await.unwrap().unwrap().state,
        OrderState::Buying
    );
    assert!(
        !store
            .timeline(&o2.id)
            .await
            .unwrap()
            .iter()
            .any(|e| e.message == "must not appear")
    );
    // Already decided: a success is kept as the late address; the order is not written.
    let ip2 = Ipv4Addr::new(103, 82, 72, 51);
    let mut b2 = c2.clone();
    b2.bought(ip2, at(4)).unwrap();
    assert!(matches!(
        store
            .save(
                &l2,
                &b2,
                Change {
                    outcome: Some(record(&PurchaseOutcome::Succeeded { ip: ip2 }, 4)),
                    ..keep()
                },
            )
            .await,
        Err(StoreError::LeaseLost(_))
    ));
    let p = &store.purchases(&o2.id).await.unwrap()[0];
    assert_eq!(p.outcome, Some(rejected), "the first outcome stands");
    assert_eq!(p.late_ip, Some(ip2));
    assert_eq!(store.order(&o2.id).await.unwrap().unwrap().server_ip, None);
}

/// `fan_out_and_claim` then `finish_deliveries`: a dispatcher round's writes, two commits.
async fn a_dispatcher_round_is_two_commits(store: Arc<dyn Store>) {
    let orders: Vec<Order> = (0..3)
        .map(|i| order(&format!("dr-{i}"), 7, at(0)))
        .collect();
    for o in &orders {
        create(&*store, o).await;
    }
    let due = store.due_notices(at(5), 10).await.unwrap();
    assert_eq!(due.len(), 3);
    let deliveries: Vec<NewDelivery> = due
        .iter()
        .map(|n| NewDelivery {
            key: format!("ntc_{}/log", n.id),
            event_id: format!("ntc_{}", n.id),
            notice_id: Some(n.id),
            order_id: Some(n.order_id.clone()),
            kind: n.kind,
            channel: "log".into(),
            detail: None,
        })
        .collect();
    let ids: Vec<i64> = due.iter().map(|n| n.id).collect();
    let claimed = store
        .fan_out_and_claim(&deliveries, &ids, at(5), "d1", LEASE, 2)
        .await
        .unwrap();
    assert_eq!(
        claimed.len(),
        2,
        "the claim sees what was just queued, up to its limit"
    );
    assert!(
        store.due_notices(at(5), 10).await.unwrap().is_empty(),
        "handed over"
    );
    let more = store
        .fan_out_and_claim(&[], &[], at(5), "d1", LEASE, 10)
        .await
        .unwrap();
    assert_eq!(more.len(), 1);
    let results = vec![
        (claimed[0].clone(), DeliveryResult::Delivered { at: at(6) }),
        (
            claimed[1].clone(),
            DeliveryResult::Failed {
                error: "503".into(),
                retry_at: Some(at(60)),
            },
        ),
        (more[0].clone(), DeliveryResult::Delivered { at: at(7) }),
    ];
    assert_eq!(
        store.finish_deliveries(&results).await.unwrap(),
        [true, true, true]
    );
    assert_eq!(
        store.finish_deliveries(&results[..1]).await.unwrap(),
        [false],
        "delivered once"
    );
    assert_eq!(
        store.outbox_backlog().await.unwrap(),
        1,
        "the failure waits for its retry"
    );
    let retried = store
        .fan_out_and_claim(&[], &[], at(60), "d1", LEASE, 10)
        .await
        .unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].id, claimed[1].id);
    assert!(store.finish_deliveries(&[]).await.unwrap().is_empty());
}

/// `save_and_claim`: a worker's releasing save and its next claim in one transaction. The save
/// is `save` (fenced), the claim `claim_due` as it would run just after it.
async fn a_releasing_save_claims_the_next_due_orders(store: Arc<dyn Store>) {
    let first = order("chain-1", 7, at(0));
    let second = order("chain-2", 7, at(1));
    let mut later = order("chain-later", 7, at(1));
    later.run_at = Some(at(100));
    for o in [&first, &second, &later] {
        create(&*store, o).await;
    }
    let (lease, mut cur) = claim_one(&*store, "w1", at(2)).await;
    assert_eq!(cur.id, first.id, "the earliest due first");

    // The first order is saved waiting until 50 and its lease let go (even when the change
    // asks to keep it); the claim takes the next due order, not the one not yet due, nor the
    // one just saved.
    cur.begin_buying(at(3)).unwrap();
    cur.wait_until(at(50), at(3)).unwrap();
    let claimed = store
        .save_and_claim(
            &lease,
            &cur,
            Change {
                entries: vec![line(at(3), "saved with the claim")],
                notices: vec![NoticeKind::Failed],
                ..keep()
            },
            at(3),
            LEASE,
            10,
        )
        .await
        .unwrap();
    let ids: Vec<_> = claimed.iter().map(|c| c.order.id.clone()).collect();
    assert_eq!(ids, vec![second.id.clone()], "only the due order");
    let next = claimed[0].lease.clone();
    assert_eq!(next.worker, "w1", "claimed for the saving worker");
    assert_eq!(next.expires_at, at(3).plus(LEASE));
    assert_eq!(claimed[0].order.state, OrderState::Queued);

    let saved = store.order(&first.id).await.unwrap().unwrap();
    assert_eq!(saved.state, OrderState::Buying, "the save is applied");
    assert_eq!(saved.run_at, Some(at(50)));
    assert!(
        store
            .timeline(&first.id)
            .await
            .unwrap()
            .iter()
            .any(|e| e.message == "saved with the claim")
    );
    assert_eq!(store.due_notices(at(5), 10).await.unwrap().len(), 4);
    assert!(
        matches!(
            store.save(&lease, &cur, keep()).await,
            Err(StoreError::LeaseLost(_))
        ),
        "the lease is released"
    );
    assert!(
        store
            .claim_due("w2", at(4), LEASE, 10)
            .await
            .unwrap()
            .is_empty(),
        "the claimed order is leased, the others not due"
    );
    let (back, _) = claim_one(&*store, "w2", at(50)).await;
    assert_eq!(
        back.order_id, first.id,
        "released: due again at its run_at, before its old lease lapses"
    );

    // A stale lease claims nothing and writes nothing.
    let waiting = order("chain-3", 9, at(51));
    create(&*store, &waiting).await;
    let stale = Lease {
        token: next.token - 1,
        ..next.clone()
    };
    let mut second_cur = claimed[0].order.clone();
    second_cur.begin_buying(at(52)).unwrap();
    let refused = store
        .save_and_claim(
            &stale,
            &second_cur,
            Change {
                entries: vec![line(at(52), "must not appear")],
                notices: vec![NoticeKind::Failed],
                ..Change::default()
            },
            at(52),
            LEASE,
            10,
        )
        .await;
    assert!(matches!(refused, Err(StoreError::LeaseLost(id)) if id == second.id));
    let stored = store.order(&second.id).await.unwrap().unwrap();
    assert_eq!(stored.state, OrderState::Queued, "no refused write landed");
    assert_eq!(store.timeline(&second.id).await.unwrap().len(), 1);
    assert_eq!(store.due_notices(at(52), 10).await.unwrap().len(), 5);
    let (untouched, _) = claim_one(&*store, "w3", at(52)).await;
    assert_eq!(
        untouched.order_id, waiting.id,
        "the refused claim took nothing"
    );

    // The order just saved is claimed again by its own save when it is due again, under a
    // new token; the one not yet due still is not.
    second_cur.wait_until(at(53), at(53)).unwrap();
    let again = store
        .save_and_claim(&next, &second_cur, Change::default(), at(53), LEASE, 10)
        .await
        .unwrap();
    let ids: Vec<_> = again.iter().map(|c| c.order.id.clone()).collect();
    assert_eq!(ids, vec![second.id.clone()]);
    assert!(again[0].lease.token > next.token, "a fresh lease");
    assert_eq!(again[0].order.state, OrderState::Buying, "as just saved");
    store
        .save(&again[0].lease, &again[0].order, keep())
        .await
        .unwrap();
    assert!(
        matches!(
            store.save(&next, &second_cur, keep()).await,
            Err(StoreError::LeaseLost(_))
        ),
        "the old lease is fenced out"
    );
}

async fn intake_is_idempotent(store: Arc<dyn Store>) {
    let a = order("pay-1", 7, at(0));
    create(&*store, &a).await;
    let replay = order("pay-1", 7, at(5));
    match store
        .insert_order(&replay, &access("h1", 0), &[], &[])
        .await
        .unwrap()
    {
        Intake::Existing(o) => assert_eq!(o.id, a.id, "a replay finds the first order"),
        other => panic!("expected Existing, got {other:?}"),
    }
    let different = order("pay-1", 8, at(6));
    match store
        .insert_order(&different, &access("h2", 0), &[], &[])
        .await
        .unwrap()
    {
        Intake::Conflict(o) => assert_eq!(o.id, a.id),
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert!(store.order(&replay.id).await.unwrap().is_none());
    assert_eq!(store.order(&a.id).await.unwrap().unwrap(), a);
    let timeline = store.timeline(&a.id).await.unwrap();
    assert_eq!(timeline.len(), 1, "the replay added no lines: {timeline:?}");
    let notices = store.due_notices(at(10), 10).await.unwrap();
    assert_eq!(notices.len(), 1, "one provisioning notice: {notices:?}");
    assert_eq!(notices[0].kind, NoticeKind::Provisioning);
    assert_eq!(notices[0].order_id, a.id);
}

async fn storefront_and_access_token_are_kept_and_rotated(store: Arc<dyn Store>) {
    let mut new = NewOrder::parse(&request("shop-7", 7)).unwrap();
    new.storefront = Some("shop".into());
    let a = Order::accept(new, at(0));
    store
        .insert_order(&a, &access("first", 0), &[], &[])
        .await
        .unwrap();
    let stored = store.order(&a.id).await.unwrap().unwrap();
    assert_eq!(stored.storefront.as_deref(), Some("shop"));
    assert_eq!(stored, a);
    assert_eq!(
        store.access_token(&a.id).await.unwrap(),
        Some(access("first", 0)),
        "the token digest is written with the order"
    );
    // A replay keeps the first order's token.
    store
        .insert_order(&order("shop-7", 7, at(1)), &access("other", 0), &[], &[])
        .await
        .unwrap();
    assert_eq!(
        store.access_token(&a.id).await.unwrap(),
        Some(access("first", 0))
    );
    let entry = TimelineEntry {
        at: at(2),
        kind: EntryKind::Admin,
        message: "rotated by admin ann: leaked".into(),
    };
    store
        .rotate_access_token(&a.id, &access("second", 1), &entry)
        .await
        .unwrap();
    assert_eq!(
        store.access_token(&a.id).await.unwrap(),
        Some(access("second", 1))
    );
    assert!(
        store
            .timeline(&a.id)
            .await
            .unwrap()
            .iter()
            .any(|e| e.message == entry.message && e.kind == EntryKind::Admin)
    );
    let other = order("nobody", 7, at(3));
    assert!(
        store
            .rotate_access_token(&other.id, &access("x", 1), &entry)
            .await
            .is_err()
    );
    assert_eq!(store.access_token(&other.id).await.unwrap(), None);
}

async fn claims_respect_run_at_and_leases(store: Arc<dyn Store>) {
    let now_due = order("due", 7, at(0));
    let mut later = order("later", 7, at(0));
    later.run_at = Some(at(30));
    create(&*store, &now_due).await;
    create(&*store, &later).await;
    let claimed = store.claim_due("w1", at(1), LEASE, 10).await.unwrap();
    let ids: Vec<_> = claimed.iter().map(|c| c.order.id.clone()).collect();
    assert_eq!(ids, vec![now_due.id.clone()], "only the due order");
    let lease = &claimed[0].lease;
    assert_eq!(lease.worker, "w1");
    assert_eq!(lease.expires_at, at(1).plus(LEASE));
    assert!(
        store
            .claim_due("w2", at(2), LEASE, 10)
            .await
            .unwrap()
            .is_empty(),
        "a leased order is not claimed again while its lease runs"
    );
    let claimed = store.claim_due("w2", at(30), LEASE, 10).await.unwrap();
    let ids: Vec<_> = claimed.iter().map(|c| c.order.id.clone()).collect();
    assert_eq!(ids, vec![later.id.clone()], "the later order at its run_at");
    // The limit is honoured.
    for i in 0..3 {
        create(&*store, &order(&format!("batch-{i}"), 9, at(40))).await;
    }
    assert_eq!(
        store.claim_due("w3", at(41), LEASE, 2).await.unwrap().len(),
        2
    );
    assert_eq!(
        store.claim_due("w3", at(41), LEASE, 5).await.unwrap().len(),
        1
    );
}

async fn expired_leases_are_reclaimed_with_a_new_token(store: Arc<dyn Store>) {
    let o = order("expire", 7, at(0));
    create(&*store, &o).await;
    let (first, _) = claim_one(&*store, "w1", at(0)).await;
    let just_before = first.expires_at.0 - 1;
    assert!(
        store
            .claim_due("w2", Timestamp(just_before), LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let (second, _) = claim_one(&*store, "w2", first.expires_at).await;
    assert_eq!(second.order_id, o.id);
    assert_eq!(second.worker, "w2");
    assert!(second.token > first.token, "{second:?} after {first:?}");
    // The first worker wakes up and writes: refused, nothing changes.
    let mut stale = o.clone();
    stale.state = OrderState::Buying;
    assert!(matches!(
        store.save(&first, &stale, Change::default()).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert_eq!(
        store.order(&o.id).await.unwrap().unwrap().state,
        OrderState::Queued
    );
}

async fn stale_tokens_cannot_write(store: Arc<dyn Store>) {
    let o = order("fence", 7, at(0));
    create(&*store, &o).await;
    let (lease, mut current) = claim_one(&*store, "w1", at(0)).await;
    let stale = Lease {
        token: lease.token - 1,
        ..lease.clone()
    };
    let other_worker = Lease {
        worker: "intruder".into(),
        ..lease.clone()
    };
    current.begin_buying(at(1)).unwrap();
    for bad in [&stale, &other_worker] {
        let change = Change {
            entries: vec![line(at(1), "must not appear")],
            notices: vec![NoticeKind::Failed],
            ..keep()
        };
        assert!(matches!(
            store.save(bad, &current, change).await,
            Err(StoreError::LeaseLost(id)) if id == o.id
        ));
        let seen = store.flight_state(current.package_id).await.unwrap();
        assert!(matches!(
            store
                .begin_purchase_in_flight(bad, &current, &intent(&current, 1, at(1)), &[], &seen)
                .await,
            Err(StoreError::LeaseLost(_))
        ));
        assert_eq!(
            store.flight_state(current.package_id).await.unwrap().holder,
            None,
            "a refused purchase takes no flight"
        );
        assert!(matches!(
            store.release(bad).await,
            Err(StoreError::LeaseLost(_))
        ));
    }
    let stored = store.order(&o.id).await.unwrap().unwrap();
    assert_eq!(stored.state, OrderState::Queued, "no refused write landed");
    assert_eq!(store.timeline(&o.id).await.unwrap().len(), 1);
    assert!(store.purchases(&o.id).await.unwrap().is_empty());
    assert_eq!(store.due_notices(at(5), 10).await.unwrap().len(), 1);
    // The holder's own write lands, and keep_lease keeps the order out of other claims.
    store.save(&lease, &current, keep()).await.unwrap();
    assert_eq!(
        store.order(&o.id).await.unwrap().unwrap().state,
        OrderState::Buying
    );
    assert!(
        store
            .claim_due("w2", at(2), LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A write without keep_lease lets go: the order is claimable at once.
    store
        .save(&lease, &current, Change::default())
        .await
        .unwrap();
    let (next, _) = claim_one(&*store, "w2", at(3)).await;
    assert!(next.token > lease.token);
}

async fn expedite_moves_only_a_waiting_unleased_order_earlier(store: Arc<dyn Store>) {
    let o = order("expedite", 7, at(0));
    create(&*store, &o).await;
    let (lease, mut claimed) = claim_one(&*store, "w1", at(0)).await;
    assert!(
        !store.expedite(&o.id, at(1)).await.unwrap(),
        "a leased order is its worker's to schedule"
    );
    claimed.begin_buying(at(0)).unwrap();
    claimed.wait_until(at(600), at(0)).unwrap();
    store
        .save(&lease, &claimed, Change::default())
        .await
        .unwrap();
    assert_eq!(store.next_due().await.unwrap(), Some(at(600)));
    assert!(store.expedite(&o.id, at(210)).await.unwrap());
    assert_eq!(store.next_due().await.unwrap(), Some(at(210)));
    assert!(
        !store.expedite(&o.id, at(300)).await.unwrap(),
        "never later"
    );
    let (_, again) = claim_one(&*store, "w2", at(210)).await;
    assert_eq!(again.id, o.id, "due at once");
    assert!(
        !store
            .expedite(&order("nobody", 7, at(0)).id, at(1))
            .await
            .unwrap(),
        "no such order"
    );
}

async fn release_lets_another_worker_claim_at_once(store: Arc<dyn Store>) {
    let o = order("release", 7, at(0));
    create(&*store, &o).await;
    let (lease, _) = claim_one(&*store, "w1", at(0)).await;
    store.release(&lease).await.unwrap();
    assert!(
        matches!(store.release(&lease).await, Err(StoreError::LeaseLost(_))),
        "a released lease is gone"
    );
    let (next, claimed) = claim_one(&*store, "w2", at(1)).await;
    assert_eq!(claimed.id, o.id);
    assert_eq!(claimed.state, OrderState::Queued, "release changed nothing");
    assert!(next.token > lease.token);
}

async fn single_flight_is_granted_held_and_released(store: Arc<dyn Store>) {
    let (x, y, z) = (
        order("flight-x", 7, at(0)),
        order("flight-y", 7, at(0)),
        order("flight-z", 7, at(0)),
    );
    let other_pkg = order("flight-other", 8, at(0));
    for o in [&x, &y, &z, &other_pkg] {
        create(&*store, o).await;
    }
    let claimed = store.claim_due("w", at(0), LEASE, 10).await.unwrap();
    assert_eq!(claimed.len(), 4);
    let lease_of = |id| {
        claimed
            .iter()
            .find(|c| &c.order.id == id)
            .map(|c| c.lease.clone())
            .unwrap()
    };
    let (lx, ly, lz, lo) = (
        lease_of(&x.id),
        lease_of(&y.id),
        lease_of(&z.id),
        lease_of(&other_pkg.id),
    );
    let (mut xb, mut yb, mut zb, mut ob) = (x.clone(), y.clone(), z.clone(), other_pkg.clone());
    for o in [&mut xb, &mut yb, &mut zb, &mut ob] {
        o.begin_buying(at(1)).unwrap();
    }
    assert!(matches!(
        fly(&*store, &lx, &mut xb, at(1)).await,
        Begun::Purchase(_)
    ));
    assert!(
        matches!(fly(&*store, &lx, &mut xb, at(1)).await, Begun::Purchase(_)),
        "idempotent for the holder"
    );
    assert_eq!(
        fly(&*store, &ly, &mut yb, at(1)).await,
        Begun::HeldBy(x.id.clone())
    );
    assert!(
        matches!(fly(&*store, &lo, &mut ob, at(1)).await, Begun::Purchase(_)),
        "flights are per package"
    );
    // Settled purchase, still buying: release_flight gives it up.
    store
        .save(
            &lx,
            &xb,
            Change {
                release_flight: true,
                ..keep()
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        fly(&*store, &ly, &mut yb, at(2)).await,
        Begun::Purchase(_)
    ));
    assert_eq!(
        fly(&*store, &lz, &mut zb, at(2)).await,
        Begun::HeldBy(y.id.clone())
    );
    // A save that keeps the order buying keeps the flight.
    store.save(&ly, &yb, keep()).await.unwrap();
    assert_eq!(
        fly(&*store, &lz, &mut zb, at(2)).await,
        Begun::HeldBy(y.id.clone())
    );
    // Leaving the buying state releases it without being asked.
    yb.bought(Ipv4Addr::new(103, 82, 72, 9), at(3)).unwrap();
    store.save(&ly, &yb, keep()).await.unwrap();
    assert!(matches!(
        fly(&*store, &lz, &mut zb, at(3)).await,
        Begun::Purchase(_)
    ));
}

async fn ledger_outcomes_are_first_writer_wins(store: Arc<dyn Store>) {
    let o = order("ledger", 7, at(0));
    create(&*store, &o).await;
    let (lease, mut cur) = claim_one(&*store, "w1", at(0)).await;
    cur.begin_buying(at(1)).unwrap();
    let n = cur.start_buy_attempt(at(1)).unwrap();
    let pid = begin(
        &*store,
        &lease,
        &cur,
        &intent(&cur, n, at(1)),
        &[line(at(1), "Calling buyVps - attempt 1/3")],
    )
    .await
    .unwrap();
    let stored = store.order(&o.id).await.unwrap().unwrap();
    assert_eq!(
        stored.buy_attempts, 1,
        "the attempt count commits with the intent"
    );
    let ledger = store.purchases(&o.id).await.unwrap();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].id, pid);
    assert_eq!(ledger[0].attempt, 1);
    assert_eq!(ledger[0].stock_before, Some(50));
    assert_eq!(ledger[0].sent_at, at(1));
    assert!(ledger[0].outcome.is_none() && ledger[0].is_unsettled());
    // The lease survives beginning a purchase.
    assert!(
        store
            .claim_due("w2", at(2), LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A second worker took over and marked it unknown; then the first worker's reply arrives.
    let unknown = PurchaseOutcome::Unknown {
        reason: "no reply recorded".into(),
    };
    assert_eq!(
        store.record_outcome(pid, &unknown, at(70)).await.unwrap(),
        Recorded::Recorded
    );
    let ip = Ipv4Addr::new(103, 82, 72, 44);
    assert_eq!(
        store
            .record_outcome(pid, &PurchaseOutcome::Succeeded { ip }, at(75))
            .await
            .unwrap(),
        Recorded::AlreadyDecided
    );
    let p = &store.purchases(&o.id).await.unwrap()[0];
    assert_eq!(p.outcome, Some(unknown), "the first outcome stands");
    assert_eq!(p.decided_at, Some(at(70)));
    assert_eq!(p.late_ip, Some(ip), "the late success is kept as evidence");
    assert_eq!(store.owner_of(ip).await.unwrap(), Some(o.id.clone()));
    assert_eq!(
        store.owner_of(Ipv4Addr::new(10, 0, 0, 1)).await.unwrap(),
        None
    );
    // A late rejection adds nothing.
    assert_eq!(
        store
            .record_outcome(
                pid,
                &PurchaseOutcome::Rejected { reason: "x".into() },
                at(80)
            )
            .await
            .unwrap(),
        Recorded::AlreadyDecided
    );
    assert_eq!(store.purchases(&o.id).await.unwrap()[0].late_ip, Some(ip));
    // A plain success on a second purchase; owner_of also reads the order's own address.
    let n = cur.start_buy_attempt(at(90)).unwrap();
    let pid2 = begin(&*store, &lease, &cur, &intent(&cur, n, at(90)), &[])
        .await
        .unwrap();
    assert!(pid2 > pid);
    let ip2 = Ipv4Addr::new(103, 82, 72, 45);
    assert_eq!(
        store
            .record_outcome(pid2, &PurchaseOutcome::Succeeded { ip: ip2 }, at(91))
            .await
            .unwrap(),
        Recorded::Recorded
    );
    assert_eq!(store.owner_of(ip2).await.unwrap(), Some(o.id.clone()));
    let ledger = store.purchases(&o.id).await.unwrap();
    assert_eq!(
        ledger.iter().map(|p| p.attempt).collect::<Vec<_>>(),
        [1, 2],
        "oldest first"
    );
}

async fn admin_save_conflicts_while_leased_and_fences_out_the_worker(store: Arc<dyn Store>) {
    let o = order("admin", 7, at(0));
    create(&*store, &o).await;
    let (lease, cur) = claim_one(&*store, "w1", at(0)).await;
    let mut cancelled = cur.clone();
    cancelled.cancel(at(10)).unwrap();
    assert!(
        matches!(
            store
                .admin_save(&cancelled, cur.updated_at, at(10), Change::default())
                .await,
            Err(StoreError::Conflict(_))
        ),
        "a live lease blocks admin changes"
    );
    let after = lease.expires_at;
    assert!(
        matches!(
            store
                .admin_save(
                    &cancelled,
                    Timestamp(cur.updated_at.0 + 1),
                    after,
                    Change::default()
                )
                .await,
            Err(StoreError::Conflict(_))
        ),
        "a stale expected_updated_at is a conflict"
    );
    store
        .admin_save(
            &cancelled,
            cur.updated_at,
            after,
            Change {
                entries: vec![line(after, "cancelled by admin")],
                ..Change::default()
            },
        )
        .await
        .unwrap();
    let stored = store.order(&o.id).await.unwrap().unwrap();
    assert_eq!(stored.state, OrderState::Cancelled);
    // The worker whose lease lapsed (nobody else claimed it) is fenced out by the token bump.
    let mut stale = cur.clone();
    stale.begin_buying(after).unwrap();
    assert!(matches!(
        store.save(&lease, &stale, Change::default()).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert_eq!(
        store.order(&o.id).await.unwrap().unwrap().state,
        OrderState::Cancelled
    );
    // Cancelled is not active: nothing to claim.
    assert!(
        store
            .claim_due("w2", after.plus(LEASE * 2), LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn outbox_delivers_retries_and_gives_up(store: Arc<dyn Store>) {
    let a = order("outbox-a", 7, at(0));
    let b = order("outbox-b", 7, at(1));
    let c = order("outbox-c", 7, at(2));
    for o in [&a, &b, &c] {
        create(&*store, o).await;
    }
    assert!(
        store
            .due_notices(Timestamp(T0.0 - 1), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let due = store.due_notices(at(5), 10).await.unwrap();
    assert_eq!(due.len(), 3);
    assert!(due.iter().all(|n| n.attempts == 0));
    assert_eq!(store.due_notices(at(5), 2).await.unwrap().len(), 2, "limit");
    // As the dispatcher does: each notice becomes a delivery, and sends are retried on the
    // delivery (claim, then finish), never on the notice.
    let deliveries: Vec<NewDelivery> = due
        .iter()
        .map(|n| NewDelivery {
            key: format!("ntc_{}/webhook:shop", n.id),
            event_id: format!("ntc_{}", n.id),
            notice_id: Some(n.id),
            order_id: Some(n.order_id.clone()),
            kind: n.kind,
            channel: "webhook:shop".into(),
            detail: None,
        })
        .collect();
    let ids: Vec<i64> = due.iter().map(|n| n.id).collect();
    store.fan_out(&deliveries, &ids, at(5)).await.unwrap();
    let claimed = store
        .claim_deliveries("d1", at(6), LEASE, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    assert!(claimed.iter().all(|d| d.attempt == 1));
    let of = |o: &Order| {
        claimed
            .iter()
            .find(|d| d.order_id.as_ref() == Some(&o.id))
            .unwrap()
    };
    let finish = |o: &Order, result: DeliveryResult| {
        let (store, d) = (Arc::clone(&store), of(o).clone());
        async move { assert!(store.finish_delivery(&d, &result).await.unwrap()) }
    };
    finish(&a, DeliveryResult::Delivered { at: at(6) }).await;
    finish(
        &b,
        DeliveryResult::Failed {
            error: "receiver said 503".into(),
            retry_at: Some(at(60)),
        },
    )
    .await;
    finish(
        &c,
        DeliveryResult::Failed {
            error: "receiver gone".into(),
            retry_at: None,
        },
    )
    .await;
    assert!(
        store
            .claim_deliveries("d1", at(59), LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let retry = store
        .claim_deliveries("d1", at(60), LEASE, 10)
        .await
        .unwrap();
    assert_eq!(retry.len(), 1, "{retry:?}");
    assert_eq!(retry[0].order_id.as_ref(), Some(&b.id));
    assert_eq!(retry[0].attempt, 2, "one failed attempt before this one");
    // Long after, with the retry's claim lapsed: b is due again, c never.
    assert!(
        store
            .claim_deliveries("d1", at(10_000), LEASE, 10)
            .await
            .unwrap()
            .len()
            == 1
    );
}

async fn fan_out_queues_deliveries_and_hands_notices_over_together(store: Arc<dyn Store>) {
    // More notices than one multi-row statement holds, so the chunking is exercised too.
    let orders: Vec<Order> = (0..130)
        .map(|i| order(&format!("fan-{i}"), 7, at(i)))
        .collect();
    for o in &orders {
        create(&*store, o).await;
    }
    let due = store.due_notices(at(200), 500).await.unwrap();
    assert_eq!(due.len(), 130);
    let deliveries: Vec<NewDelivery> = due
        .iter()
        .flat_map(|n| {
            ["webhook:shop", "email:customer"].map(|channel| NewDelivery {
                key: format!("ntc_{}/{channel}", n.id),
                event_id: format!("ntc_{}", n.id),
                notice_id: Some(n.id),
                order_id: Some(n.order_id.clone()),
                kind: n.kind,
                channel: channel.into(),
                detail: None,
            })
        })
        .collect();
    let ids: Vec<i64> = due.iter().map(|n| n.id).collect();
    // The first 100 notices, then all of them: the repeat queues nothing twice.
    store
        .fan_out(&deliveries[..200], &ids[..100], at(200))
        .await
        .unwrap();
    let left = store.due_notices(at(200), 500).await.unwrap();
    assert_eq!(left.len(), 30, "handed-over notices are no longer due");
    store.fan_out(&deliveries, &ids, at(201)).await.unwrap();
    assert!(store.due_notices(at(300), 500).await.unwrap().is_empty());
    let claimed = store
        .claim_deliveries("d1", at(300), Duration::from_secs(60), 1000)
        .await
        .unwrap();
    assert_eq!(
        claimed.len(),
        260,
        "one delivery per notice and channel, none twice"
    );
    let mut keys: Vec<&str> = claimed.iter().map(|d| d.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), 260);
    let first = claimed.iter().find(|d| d.key == deliveries[0].key).unwrap();
    assert_eq!(first.order_id, deliveries[0].order_id);
    assert_eq!(first.channel, "webhook:shop");
    assert_eq!(
        first.created_at,
        at(200),
        "the repeat left the first row as it was"
    );
}

async fn deliveries_are_listed_per_order_and_lines_appended_without_a_lease(store: Arc<dyn Store>) {
    let a = order("notes-a", 7, at(0));
    let b = order("notes-b", 7, at(1));
    create(&*store, &a).await;
    create(&*store, &b).await;
    let new = |o: &Order, channel: &str, detail: Option<&str>| NewDelivery {
        key: format!("e-{}/{channel}", o.order_ref.as_str()),
        event_id: format!("e-{}", o.order_ref.as_str()),
        notice_id: None,
        order_id: Some(o.id.clone()),
        kind: NoticeKind::Failed,
        channel: channel.into(),
        detail: detail.map(str::to_string),
    };
    store
        .add_deliveries(
            &[
                new(&a, "email:customer", Some("phase buy")),
                new(&a, "webhook:shop", None),
                new(&b, "email:customer", None),
            ],
            at(2),
        )
        .await
        .unwrap();
    let list = store.deliveries(&a.id).await.unwrap();
    assert_eq!(list.len(), 2, "only a's: {list:?}");
    assert_eq!(list[0].channel, "email:customer");
    assert_eq!(list[0].detail.as_deref(), Some("phase buy"));
    assert!(
        list.iter()
            .all(|d| d.state == DeliveryState::Queued && d.attempts == 0)
    );
    // Claimed and failed: retrying with the error; failed for good: abandoned; sent: delivered.
    let claimed = store.claim_deliveries("d", at(3), LEASE, 10).await.unwrap();
    for d in &claimed {
        let result = match (d.order_id.as_ref() == Some(&a.id), d.channel.as_str()) {
            (true, "email:customer") => DeliveryResult::Failed {
                error: "SMTP: refused".into(),
                retry_at: Some(at(60)),
            },
            (true, _) => DeliveryResult::Failed {
                error: "POST answered HTTP 500".into(),
                retry_at: None,
            },
            _ => DeliveryResult::Delivered { at: at(4) },
        };
        assert!(store.finish_delivery(d, &result).await.unwrap());
    }
    let list = store.deliveries(&a.id).await.unwrap();
    assert_eq!(
        list.iter()
            .map(|d| (d.state, d.attempts))
            .collect::<Vec<_>>(),
        [(DeliveryState::Retrying, 1), (DeliveryState::Abandoned, 1)]
    );
    assert_eq!(list[0].last_error.as_deref(), Some("SMTP: refused"));
    assert_eq!(list[0].next_at, Some(at(60)));
    let list = store.deliveries(&b.id).await.unwrap();
    assert_eq!(list[0].state, DeliveryState::Delivered);
    assert_eq!(list[0].delivered_at, Some(at(4)));
    // Lines for two orders in one call, while a worker holds one of them; a missing order's
    // line is dropped.
    let (_lease, _) = claim_one(&*store, "w", at(5)).await;
    store
        .append_timeline(&[
            (a.id.clone(), line(at(6), "delivered to a")),
            (b.id.clone(), line(at(6), "delivered to b")),
            (provisioner::domain::OrderId::new(), line(at(6), "nobody")),
        ])
        .await
        .unwrap();
    store.append_timeline(&[]).await.unwrap();
    for (o, text) in [(&a, "delivered to a"), (&b, "delivered to b")] {
        let t = store.timeline(&o.id).await.unwrap();
        assert_eq!(t.last().map(|e| e.message.as_str()), Some(text));
    }
}

async fn orders_are_searched_by_ref_email_ip_and_id_suffix(store: Arc<dyn Store>) {
    let a = order("WHMCS-1003", 7, at(0));
    let b = order("shop_50%off", 7, at(1));
    create(&*store, &a).await;
    create(&*store, &b).await;
    let (lease, mut cur) = claim_one(&*store, "w", at(2)).await;
    let ip = Ipv4Addr::new(103, 82, 72, 44);
    cur.begin_buying(at(2)).unwrap();
    cur.start_buy_attempt(at(2)).unwrap();
    cur.bought(ip, at(3)).unwrap();
    store.save(&lease, &cur, Change::default()).await.unwrap();
    let find = |query: Option<&str>, suffix: Option<&str>| {
        let store = Arc::clone(&store);
        let filter = OrderFilter {
            // As the API and the CLI pass it: trimmed, and no filter when blank.
            search: query
                .map(str::trim)
                .filter(|q| !q.is_empty())
                .map(str::to_string),
            id_suffix: suffix.map(str::to_string),
            ..OrderFilter::default()
        };
        async move {
            let mut refs: Vec<String> = store
                .orders(&filter)
                .await
                .unwrap()
                .iter()
                .map(|o| o.order_ref.as_str().to_string())
                .collect();
            refs.sort();
            refs
        }
    };
    assert_eq!(
        find(Some("whmcs-10"), None).await,
        ["WHMCS-1003"],
        "any case"
    );
    assert_eq!(find(Some("ANN@EXAMPLE"), None).await.len(), 2, "email part");
    assert_eq!(find(Some("  "), None).await.len(), 2, "blank is no filter");
    assert_eq!(
        find(Some("50%"), None).await,
        ["shop_50%off"],
        "% is literal"
    );
    assert!(find(Some("p_5"), None).await.len() == 1, "_ is literal");
    assert!(find(Some("p%5"), None).await.is_empty());
    assert_eq!(
        find(Some("103.82.72.44"), None).await,
        [cur.order_ref.as_str().to_string()],
        "the server's IP"
    );
    assert!(
        find(Some("198.51.100"), None).await.is_empty(),
        "another address"
    );
    let tail = &a.id.as_str()[a.id.as_str().len() - 12..];
    assert_eq!(find(None, Some(tail)).await, ["WHMCS-1003"]);
    assert_eq!(find(None, Some(&tail.to_uppercase())).await, ["WHMCS-1003"]);
    assert!(
        find(None, Some("not-hex!")).await.is_empty(),
        "matches nothing, not everything"
    );
}

async fn next_due_is_the_earliest_due_or_lapse(store: Arc<dyn Store>) {
    assert_eq!(store.next_due().await.unwrap(), None, "empty store");
    let mut a = order("next-a", 7, at(0));
    a.run_at = Some(at(100));
    let mut b = order("next-b", 7, at(0));
    b.run_at = Some(at(50));
    create(&*store, &a).await;
    create(&*store, &b).await;
    assert_eq!(store.next_due().await.unwrap(), Some(at(50)));
    // Claimed: b is not due again before its lease lapses.
    let (lease, mut cur) = claim_one(&*store, "w1", at(50)).await;
    assert_eq!(cur.id, b.id);
    let lapse = lease.expires_at;
    let next = store.next_due().await.unwrap().unwrap();
    assert_eq!(next, at(100).min(lapse));
    // Finished orders are never due.
    cur.fail(Phase::Buy, "gave up", at(51)).unwrap();
    store.save(&lease, &cur, Change::default()).await.unwrap();
    assert_eq!(store.next_due().await.unwrap(), Some(at(100)));
}

async fn orders_are_filtered_paged_and_counted(store: Arc<dyn Store>) {
    let mut made = Vec::new();
    for i in 0..5 {
        let o = order(&format!("list-{i}"), if i % 2 == 0 { 7 } else { 8 }, at(i));
        create(&*store, &o).await;
        made.push(o);
    }
    // Make the newest one failed.
    let (lease, mut cur) = {
        let claimed = store.claim_due("w", at(10), LEASE, 10).await.unwrap();
        let c = claimed
            .into_iter()
            .find(|c| c.order.id == made[4].id)
            .unwrap();
        (c.lease, c.order)
    };
    cur.fail(Phase::Buy, "no stock", at(11)).unwrap();
    store.save(&lease, &cur, Change::default()).await.unwrap();

    let all = store.orders(&OrderFilter::default()).await.unwrap();
    let refs: Vec<_> = all
        .iter()
        .map(|o| o.order_ref.as_str().to_string())
        .collect();
    assert_eq!(
        refs,
        ["list-4", "list-3", "list-2", "list-1", "list-0"],
        "newest first"
    );
    let page = store
        .orders(&OrderFilter {
            limit: Some(2),
            offset: Some(1),
            ..OrderFilter::default()
        })
        .await
        .unwrap();
    let refs: Vec<_> = page.iter().map(|o| o.order_ref.as_str()).collect();
    assert_eq!(refs, ["list-3", "list-2"]);
    let failed = store
        .orders(&OrderFilter {
            state: Some(OrderState::Failed),
            ..OrderFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].id, made[4].id);
    assert_eq!(failed[0].failure.as_ref().unwrap().reason, "no stock");
    let pkg8 = store
        .orders(&OrderFilter {
            package: Some(PackageId(8)),
            ..OrderFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(pkg8.len(), 2);
    assert!(pkg8.iter().all(|o| o.package_id == PackageId(8)));
    let window = store
        .orders(&OrderFilter {
            created_from: Some(at(1)),
            created_to: Some(at(3)),
            ..OrderFilter::default()
        })
        .await
        .unwrap();
    let refs: Vec<_> = window.iter().map(|o| o.order_ref.as_str()).collect();
    assert_eq!(refs, ["list-2", "list-1"], "from inclusive, to exclusive");

    let counts = store.state_counts().await.unwrap();
    assert_eq!(counts.len(), OrderState::ALL.len(), "every state listed");
    let count = |s| counts.iter().find(|(st, _)| *st == s).unwrap().1;
    assert_eq!(count(OrderState::Queued), 4);
    assert_eq!(count(OrderState::Failed), 1);
    assert_eq!(count(OrderState::Ready), 0);
}

async fn orders_are_found_by_reference_email_address_or_id(store: Arc<dyn Store>) {
    // WHMCS-1003: failed in the credentials phase, owning 103.82.72.9.
    let a = order("WHMCS-1003", 7, at(0));
    // shop_50%: Bob's, failed in the buy phase; its `%` and `_` must match only themselves.
    let mut req = request("shop_50%", 7);
    req.customer.email = "Bob@Example.ORG".into();
    let b = Order::accept(NewOrder::parse(&req).unwrap(), at(1));
    // WHMCS-2001: queued.
    let c = order("WHMCS-2001", 8, at(2));
    for o in [&a, &b, &c] {
        create(&*store, o).await;
    }
    let claimed = store.claim_due("w", at(10), LEASE, 10).await.unwrap();
    for (id, bought) in [(&a.id, true), (&b.id, false)] {
        let mut c = claimed.iter().find(|c| &c.order.id == id).unwrap().clone();
        c.order.begin_buying(at(11)).unwrap();
        let phase = if bought {
            c.order
                .bought("103.82.72.9".parse().unwrap(), at(11))
                .unwrap();
            Phase::Credentials
        } else {
            Phase::Buy
        };
        c.order.fail(phase, "upstream down", at(12)).unwrap();
        store
            .save(&c.lease, &c.order, Change::default())
            .await
            .unwrap();
    }
    let find = |search: &str| {
        let store = Arc::clone(&store);
        let search = search.to_string();
        async move {
            let found = store
                .orders(&OrderFilter {
                    search: Some(search),
                    ..OrderFilter::default()
                })
                .await
                .unwrap();
            found
                .iter()
                .map(|o| o.order_ref.as_str().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        find("whmcs-1003").await,
        ["WHMCS-1003"],
        "reference, any case"
    );
    assert_eq!(find("WHMCS").await, ["WHMCS-2001", "WHMCS-1003"]);
    assert_eq!(
        find("bob@example.org").await,
        ["shop_50%"],
        "email, any case"
    );
    assert_eq!(find("ann@").await, ["WHMCS-2001", "WHMCS-1003"]);
    assert_eq!(find("103.82.72.9").await, ["WHMCS-1003"], "server address");
    assert_eq!(find("_50%").await, ["shop_50%"]);
    assert!(find("whmcs_1003").await.is_empty(), "`_` is not a wildcard");
    assert!(find("whmcs%1003").await.is_empty(), "`%` is not a wildcard");
    let tail: String =
        c.id.as_str()
            .chars()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
    assert_eq!(
        find(&tail).await,
        ["WHMCS-2001"],
        "the dashboard's short id"
    );
    assert!(find("nobody").await.is_empty());

    let phase = |phase| {
        let store = Arc::clone(&store);
        async move {
            let found = store
                .orders(&OrderFilter {
                    state: Some(OrderState::Failed),
                    phase: Some(phase),
                    ..OrderFilter::default()
                })
                .await
                .unwrap();
            found
                .iter()
                .map(|o| o.order_ref.as_str().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(phase(Phase::Buy).await, ["shop_50%"]);
    assert_eq!(phase(Phase::Credentials).await, ["WHMCS-1003"]);
}

async fn saves_carry_timeline_credentials_and_resolutions(store: Arc<dyn Store>) {
    let o = order("carry", 7, at(0));
    create(&*store, &o).await;
    let (lease, mut cur) = claim_one(&*store, "w1", at(0)).await;
    cur.begin_buying(at(1)).unwrap();
    let n = cur.start_buy_attempt(at(1)).unwrap();
    let pid = begin(
        &*store,
        &lease,
        &cur,
        &intent(&cur, n, at(1)),
        &[line(at(1), "second")],
    )
    .await
    .unwrap();
    store
        .record_outcome(
            pid,
            &PurchaseOutcome::Unknown {
                reason: "timeout".into(),
            },
            at(2),
        )
        .await
        .unwrap();
    let ip = Ipv4Addr::new(103, 82, 72, 7);
    cur.bought(ip, at(3)).unwrap();
    store
        .save(
            &lease,
            &cur,
            Change {
                entries: vec![line(at(3), "third"), line(at(3), "fourth")],
                resolve: Some((pid, Resolution::Adopted { ip })),
                ..keep()
            },
        )
        .await
        .unwrap();
    cur.start_status_attempt(at(4)).unwrap();
    cur.ready(at(4)).unwrap();
    let sealed = vec![1u8, 2, 3, 0, 255];
    store
        .save(
            &lease,
            &cur,
            Change {
                entries: vec![line(at(4), "fifth")],
                credentials: Some(sealed.clone()),
                notices: vec![NoticeKind::Ready],
                ..Change::default()
            },
        )
        .await
        .unwrap();
    let stored = store.order(&o.id).await.unwrap().unwrap();
    assert_eq!(stored, cur, "the order reads back exactly as saved");
    assert_eq!(stored.server_ip, Some(ip));
    assert_eq!(stored.ready_at, Some(at(4)));
    assert_eq!(store.credentials(&o.id).await.unwrap(), Some(sealed));
    let lines: Vec<_> = store
        .timeline(&o.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert_eq!(lines, ["received", "second", "third", "fourth", "fifth"]);
    let p = &store.purchases(&o.id).await.unwrap()[0];
    assert_eq!(p.resolution, Some(Resolution::Adopted { ip }));
    assert!(!p.is_unsettled());
    let kinds: Vec<_> = store
        .due_notices(at(5), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.kind)
        .collect();
    assert_eq!(kinds, [NoticeKind::Provisioning, NoticeKind::Ready]);
    assert_eq!(store.owner_of(ip).await.unwrap(), Some(o.id.clone()));
}

// ---------------------------------------------------------------------------------------------
// The backends.

#[tokio::test]
async fn memory_store_passes_the_suite() {
    suite(&|| Box::pin(async { Arc::new(MemoryStore::new()) as Arc<dyn Store> })).await;
}

#[tokio::test]
async fn sqlite_store_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    let (dir_ref, counter_ref) = (&dir, &counter);
    suite(&move || {
        Box::pin(async move {
            let n = counter_ref.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = dir_ref.path().join(format!("suite-{n}.db"));
            let store = SqliteStore::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
            Arc::new(store) as Arc<dyn Store>
        })
    })
    .await;
}

#[tokio::test]
async fn postgres_store_passes_the_suite() {
    let Some(server) = PgServer::get("postgres_store_passes_the_suite").await else {
        return;
    };
    let server = &server;
    suite(&move || {
        Box::pin(async move {
            let url = server.fresh_schema().await;
            Arc::new(PostgresStore::connect(&url).await.unwrap()) as Arc<dyn Store>
        })
    })
    .await;
}

/// A corrupt attempt count (negative, or past `u32`) reads back as [`StoreError::Corrupt`] on
/// every SQL backend, as any other undecodable column does: SQLite used to read it as 0, which
/// would hand the engine a fresh attempt budget. `set` writes a raw value into a column of
/// every order, behind the store's back.
async fn a_corrupt_attempt_count_is_refused<F, Fut>(store: Arc<dyn Store>, set: F)
where
    F: Fn(&'static str, i64) -> Fut,
    Fut: Future<Output = ()>,
{
    let o = order("corrupt", 7, at(0));
    create(&*store, &o).await;
    for (column, value) in [
        ("buy_attempts", -1),
        ("status_attempts", -1),
        ("buy_attempts", i64::from(u32::MAX) + 1),
    ] {
        set(column, value).await;
        let read = store.order(&o.id).await;
        assert!(
            matches!(read, Err(StoreError::Corrupt(ref e)) if e.contains(column)),
            "{column} = {value}: {read:?}"
        );
        set(column, 0).await;
    }
    assert!(
        store.order(&o.id).await.unwrap().is_some(),
        "readable again"
    );
}

#[tokio::test]
async fn sqlite_refuses_a_corrupt_attempt_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt.db");
    let store = Arc::new(
        SqliteStore::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap(),
    );
    let raw = Arc::clone(&store);
    a_corrupt_attempt_count_is_refused(store, move |column, value| {
        let raw = Arc::clone(&raw);
        async move {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE orders SET {column} = $1"
            )))
            .bind(value)
            .execute(raw.pool())
            .await
            .unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn postgres_refuses_a_corrupt_attempt_count() {
    let Some(server) = PgServer::get("postgres_refuses_a_corrupt_attempt_count").await else {
        return;
    };
    let url = server.fresh_schema().await;
    let store = Arc::new(PostgresStore::connect(&url).await.unwrap());
    let raw = Arc::clone(&store);
    a_corrupt_attempt_count_is_refused(store, move |column, value| {
        let raw = Arc::clone(&raw);
        async move {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE orders SET {column} = $1"
            )))
            .bind(value)
            .execute(raw.pool())
            .await
            .unwrap();
        }
    })
    .await;
}

/// Processes starting together on an empty database: the advisory lock serializes their
/// migrations, so all of them start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrations_survive_processes_starting_together() {
    let Some(server) =
        PgServer::get("postgres_migrations_survive_processes_starting_together").await
    else {
        return;
    };
    let url = server.fresh_database().await;
    let starts = (0..4).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { PostgresStore::connect_with(&url, 2).await })
    });
    for started in futures_util::future::join_all(starts).await {
        started.unwrap().expect("every process starts");
    }
    let store = PostgresStore::connect(&url).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schema_migrations")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
    assert_eq!(
        applied,
        i64::try_from(files).unwrap(),
        "each migration applied once"
    );
}

/// This machine's PostgreSQL runs with autovacuum off, as some do: `maintain` (called by serve
/// every 30 s) then vacuums the queue tables itself, so dead index entries do not pile up in
/// front of every claim. With autovacuum on it leaves them to the server.
#[tokio::test]
async fn postgres_housekeeping_vacuums_the_queue_tables_when_autovacuum_is_off() {
    let Some(server) =
        PgServer::get("postgres_housekeeping_vacuums_the_queue_tables_when_autovacuum_is_off")
            .await
    else {
        return;
    };
    let url = server.fresh_database().await;
    let store = PostgresStore::connect(&url).await.unwrap();
    for i in 0..50 {
        create(&store, &order(&format!("vac-{i}"), 7, at(0))).await;
    }
    // Only VACUUM sets pages all-visible, and pg_class shows it at once (statistics views lag).
    let all_visible = || async {
        sqlx::query_scalar::<_, i32>("SELECT relallvisible FROM pg_class WHERE relname = 'orders'")
            .fetch_one(store.pool())
            .await
            .unwrap()
    };
    assert_eq!(all_visible().await, 0, "not vacuumed yet");
    store.maintain().await.unwrap();
    let autovacuum: String = sqlx::query_scalar("SELECT current_setting('autovacuum')")
        .fetch_one(store.pool())
        .await
        .unwrap();
    if autovacuum == "on" {
        assert_eq!(all_visible().await, 0, "left to the server's autovacuum");
    } else {
        assert!(all_visible().await > 0, "maintain vacuumed orders");
    }
    let options: Vec<String> =
        sqlx::query_scalar("SELECT reloptions FROM pg_class WHERE relname = 'orders'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert!(
        options.contains(&"autovacuum_vacuum_scale_factor=0.01".to_string()),
        "{options:?}"
    );
}

/// Two pools (as the server sees it, two processes) claim from the same queue at once: every
/// order is claimed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_claims_never_share_an_order() {
    let Some(server) = PgServer::get("postgres_concurrent_claims_never_share_an_order").await
    else {
        return;
    };
    let url = server.fresh_database().await;
    let a = Arc::new(PostgresStore::connect_with(&url, 4).await.unwrap());
    let b = Arc::new(PostgresStore::connect_with(&url, 4).await.unwrap());
    const N: usize = 400;
    for i in 0..N {
        create(&*a, &order(&format!("race-{i}"), 7, at(0))).await;
    }
    let mut tasks = Vec::new();
    for (w, store) in [("pa-1", &a), ("pa-2", &a), ("pb-1", &b), ("pb-2", &b)] {
        let store = Arc::clone(store);
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = store.claim_due(w, at(1), LEASE, 7).await.unwrap();
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.into_iter().map(|c| c.order.id));
            }
        }));
    }
    let mut seen = std::collections::HashSet::new();
    let mut per_worker = Vec::new();
    for t in tasks {
        let got = t.await.unwrap();
        per_worker.push(got.len());
        for id in got {
            assert!(seen.insert(id.clone()), "order {id} claimed twice");
        }
    }
    assert_eq!(seen.len(), N, "every order claimed once: {per_worker:?}");
}

/// Many orders of one package ask for its flight at once from two pools: exactly one holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_single_flight_holds_across_pools() {
    let Some(server) = PgServer::get("postgres_single_flight_holds_across_pools").await else {
        return;
    };
    let url = server.fresh_database().await;
    let a: Arc<dyn Store> = Arc::new(PostgresStore::connect_with(&url, 4).await.unwrap());
    let b: Arc<dyn Store> = Arc::new(PostgresStore::connect_with(&url, 4).await.unwrap());
    for i in 0..24 {
        create(&*a, &order(&format!("sf-{i}"), 7, at(0))).await;
    }
    let claimed = a.claim_due("w", at(0), LEASE, 100).await.unwrap();
    assert_eq!(claimed.len(), 24);
    // Everyone read the flight free before anyone asked.
    let seen = a.flight_state(PackageId(7)).await.unwrap();
    let asks = claimed.iter().enumerate().map(|(i, c)| {
        let store = if i % 2 == 0 {
            Arc::clone(&a)
        } else {
            Arc::clone(&b)
        };
        let (lease, mut o, seen) = (c.lease.clone(), c.order.clone(), seen.clone());
        async move {
            o.begin_buying(at(1)).unwrap();
            let n = o.start_buy_attempt(at(1)).unwrap();
            let f = store
                .begin_purchase_in_flight(&lease, &o, &intent(&o, n, at(1)), &[], &seen)
                .await
                .unwrap();
            (lease.order_id, f)
        }
    });
    let answers = futures_util::future::join_all(asks).await;
    let granted: Vec<_> = answers
        .iter()
        .filter(|(_, f)| matches!(f, Begun::Purchase(_)))
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(granted.len(), 1, "{answers:?}");
    for (_, f) in &answers {
        match f {
            Begun::Purchase(_) => {}
            Begun::HeldBy(holder) => {
                assert_eq!(holder, &granted[0], "everyone else sees the one holder");
            }
            Begun::Moved => panic!("the flight was held throughout: {answers:?}"),
        }
    }
}

/// A ready order with a server (and `expiry` as its last known ExpiryDate), idle.
async fn ready_order(store: &dyn Store, order_ref: &str, expiry: &str) -> Order {
    let mut o = order(order_ref, 5, at(0));
    create(store, &o).await;
    // Other orders may be due at the same moment: take this one's lease, whichever comes first.
    let lease = store
        .claim_due("w1", at(0), LEASE, 100)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.order.id == o.id)
        .map(|c| c.lease)
        .expect("the new order is due");
    o.begin_buying(at(1)).unwrap();
    o.bought("10.9.9.9".parse().unwrap(), at(2)).unwrap();
    o.ready(at(3)).unwrap();
    let facts = ServerFacts {
        expiry: Some(expiry.into()),
        checked_at: Some(at(3)),
        ..ServerFacts::default()
    };
    store
        .save(
            &lease,
            &o,
            Change {
                facts: Some(facts),
                ..Change::default()
            },
        )
        .await
        .unwrap();
    store.order(&o.id).await.unwrap().unwrap()
}

async fn renewals_are_idempotent_queued_and_never_buried(store: Arc<dyn Store>) {
    let o = ready_order(&*store, "pay-r", "2026-01-30").await;
    assert_eq!(o.run_at, None, "a ready server idles");
    let r = Renewal::new(
        o.id.clone(),
        "ren-1".into(),
        "storefront:shop",
        None,
        at(10),
    );
    let first = match store
        .request_renewal(&r, &line(at(10), "paid"))
        .await
        .unwrap()
    {
        RenewalRequest::Created(stored) => stored,
        other => panic!("expected Created, got {other:?}"),
    };
    assert!(first.id > 0 && first.is_open());
    assert_eq!(
        store.order(&o.id).await.unwrap().unwrap().run_at,
        Some(at(10))
    );
    match store
        .request_renewal(&r, &line(at(11), "replay"))
        .await
        .unwrap()
    {
        RenewalRequest::Existing(again) => assert_eq!(again.id, first.id),
        other => panic!("expected Existing, got {other:?}"),
    }
    let other = order("pay-other", 5, at(0));
    create(&*store, &other).await;
    let foreign = Renewal::new(
        other.id.clone(),
        "ren-1".into(),
        "storefront:shop",
        None,
        at(12),
    );
    assert!(matches!(
        store
            .request_renewal(&foreign, &line(at(12), "x"))
            .await
            .unwrap(),
        RenewalRequest::Conflict(_)
    ));
    let fresh_ref = Renewal::new(
        other.id.clone(),
        "ren-2".into(),
        "storefront:shop",
        None,
        at(12),
    );
    assert!(matches!(
        store
            .request_renewal(&fresh_ref, &line(at(12), "x"))
            .await
            .unwrap(),
        RenewalRequest::NotRenewable(OrderState::Queued)
    ));
    assert_eq!(store.renewals(&o.id).await.unwrap(), vec![first.clone()]);

    // A worker that read the renewals, then saw another one arrive, cannot bury it.
    let (lease, mut worked) = store
        .claim_due("w2", at(20), LEASE, 10)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.order.id == o.id)
        .map(|c| (c.lease, c.order))
        .unwrap();
    let second = Renewal::new(
        o.id.clone(),
        "ren-3".into(),
        "storefront:shop",
        None,
        at(21),
    );
    assert!(matches!(
        store
            .request_renewal(&second, &line(at(21), "paid"))
            .await
            .unwrap(),
        RenewalRequest::Created(_)
    ));
    let mut done = first.clone();
    done.attempts = 1;
    done.sent_at = Some(at(20));
    done.outcome = Some(CallOutcome::Succeeded);
    done.expiry_before = Some("2026-01-30".into());
    done.finish(RenewalState::Done, "renewed", at(22));
    worked
        .schedule_server_work(Some(at(86_400)), at(22))
        .unwrap();
    let term = ServerTerm {
        reminded_for: Some("2026-01-30".into()),
        ..ServerTerm::default()
    };
    store
        .save(
            &lease,
            &worked,
            Change {
                renewal: Some(done.clone()),
                term: Some(term.clone()),
                renewals_seen: Some(first.id),
                ..Change::default()
            },
        )
        .await
        .unwrap();
    let saved = store.order(&o.id).await.unwrap().unwrap();
    assert_eq!(saved.run_at, Some(at(22)), "the new renewal keeps it due");
    let all = store.renewals(&o.id).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0], done);
    assert!(all[1].is_open());
    assert_eq!(store.server_term(&o.id).await.unwrap(), Some(term));

    // Expiring servers, soonest first; the sweep wakes only idle ones.
    let later = ready_order(&*store, "pay-later", "2026-03-01").await;
    let soon = store.expiring("2026-02-01", 10).await.unwrap();
    assert_eq!(soon.len(), 1);
    assert_eq!(
        (soon[0].order_id.clone(), soon[0].expiry.as_str()),
        (o.id.clone(), "2026-01-30")
    );
    assert_eq!(store.expiring("2026-12-31", 10).await.unwrap().len(), 2);
    assert_eq!(
        store.wake_expiring("2026-12-31", at(30), 10).await.unwrap(),
        1,
        "o is already due"
    );
    assert_eq!(
        store.order(&later.id).await.unwrap().unwrap().run_at,
        Some(at(30))
    );
    assert_eq!(
        store.wake_expiring("2026-12-31", at(31), 10).await.unwrap(),
        0
    );
}
