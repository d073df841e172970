//! Never buy twice: unknown outcomes are reconciled, crashes mid-purchase are read as unknown,
//! wrong-package addresses are held back, the credentials phase never buys, one purchase per
//! package is in flight at a time.

use std::time::Duration;

use provisioner::clock::Clock;
use provisioner::domain::{OrderState, PackageId, Phase, PurchaseOutcome, Resolution};
use provisioner::policy::{OnUnknown, RetryPolicy};
use provisioner::simulator::{BuyEffect, BuyStep, Scenario, StatusStep};
use provisioner::store::Store;

use crate::helpers::VirtualWorld;

const PKG: PackageId = PackageId(7);

fn world(policy: RetryPolicy) -> VirtualWorld {
    VirtualWorld::new(policy, &[(7, "103.82.72", 50), (8, "45.12.33", 50)])
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The seed's own premise ("2 minutes allows SmartVPS to fully process"): a horizon of the buy
/// timeout plus the first wait, under which the seed's timings hold for unknown outcomes too.
fn seed_premise() -> RetryPolicy {
    RetryPolicy {
        horizon: secs(240),
        ..RetryPolicy::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_purchase_completing_90s_after_our_timeout_ends_with_exactly_one_server() {
    let w = world(RetryPolicy::default());
    Scenario::LateCompletion.install(&w.sim, PKG).unwrap();
    let order = w.accept("late", 7).await;
    w.drive().await;
    let o = w.order(&order.id).await;
    assert_eq!(
        w.servers_for(&order.id),
        1,
        "exactly one server bought upstream"
    );
    // The connection stayed open: SmartVPS's reply at 210 s was heard, so the order continues
    // with that server, with no admin and no second purchase.
    assert_eq!(
        o.state,
        OrderState::Ready,
        "{:#?}",
        w.timeline(&order.id).await
    );
    let ledger = w.store.purchases(&order.id).await.unwrap();
    assert_eq!(ledger.len(), 1, "no second purchase was sent");
    assert!(matches!(
        ledger[0].outcome,
        Some(PurchaseOutcome::Unknown { .. })
    ));
    let ip = o.server_ip.expect("the order owns the late reply's server");
    assert_eq!(ledger[0].late_ip, Some(ip));
    assert_eq!(ledger[0].resolution, Some(Resolution::Adopted { ip }));
    assert_eq!(w.sim.purchases_for(&format!("{}/", order.id))[0].ip, ip);
    // Heard at 210 s and acted on at once, not at the 10-minute horizon: ready 10 s later.
    assert_eq!(w.offset(o.ready_at.unwrap()), 220);
    assert_eq!(
        w.times_of(&order.id, "had succeeded after all (late reply)")
            .await,
        vec![210]
    );
}

#[tokio::test(start_paused = true)]
async fn a_lost_reply_is_settled_by_scanning_for_the_server() {
    let w = world(RetryPolicy::default());
    Scenario::LostReply.install(&w.sim, PKG).unwrap();
    let order = w.accept("lost", 7).await;
    w.drive().await;
    let o = w.order(&order.id).await;
    assert_eq!(
        w.servers_for(&order.id),
        1,
        "exactly one server bought upstream"
    );
    // The HTTP 500 named no server and the stock fell; at the horizon the scan of the package
    // found exactly one new server of ours with the ordered RAM: it is adopted, no admin.
    assert_eq!(o.state, OrderState::Ready, "{:?}", o.failure);
    let bought = w.sim.purchases_for(&format!("{}/", order.id))[0].ip;
    assert_eq!(o.server_ip, Some(bought));
    let ledger = w.store.purchases(&order.id).await.unwrap();
    assert_eq!(ledger.len(), 1, "no second purchase was sent");
    assert_eq!(
        ledger[0].resolution,
        Some(Resolution::Adopted { ip: bought })
    );
    assert_eq!(w.times_of(&order.id, "Found by the scan").await.len(), 1);
    // Every server the scan found is in the inventory, first seen at the scan.
    let inventory = w.store.discovered(PKG).await.unwrap();
    assert_eq!(
        inventory.iter().map(|d| d.ip).collect::<Vec<_>>(),
        vec![bought]
    );
    assert!(
        w.offset(inventory[0].first_seen) >= 600,
        "not before the horizon"
    );
}

#[tokio::test(start_paused = true)]
async fn two_unowned_servers_in_the_package_go_to_an_admin_with_both_listed() {
    let w = world(RetryPolicy::default());
    // A server the reseller bought in the panel, outside provisioner, a moment before.
    let outside = w.buy_outside("103.82.72", 4).await;
    Scenario::LostReply.install(&w.sim, PKG).unwrap();
    let order = w.accept("lost-two", 7).await;
    w.drive().await;
    let o = w.order(&order.id).await;
    assert_eq!(o.state, OrderState::NeedsAttention);
    let ours = w.sim.purchases_for(&format!("{}/", order.id))[0].ip;
    let listed: Vec<_> = w
        .store
        .candidates(&order.id)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.ip)
        .collect();
    let mut both = vec![ours, outside];
    both.sort();
    assert_eq!(listed, both, "both servers are listed as candidates");
    let reason = o.failure.unwrap().reason;
    assert!(
        reason.contains(&ours.to_string()) && reason.contains(&outside.to_string()),
        "{reason}"
    );
    assert_eq!(w.store.purchases(&order.id).await.unwrap().len(), 1);
}

/// The reply is lost and the server's status never answers while the scans run: the scan
/// cannot see it, so an admin decides, and the reason names that address among those to check
/// in the panel (the server is not lost from view, nor bought again).
#[tokio::test(start_paused = true)]
async fn a_server_hiding_behind_unanswered_status_is_named_for_the_admin() {
    let w = world(RetryPolicy::default());
    Scenario::LostReply.install(&w.sim, PKG).unwrap();
    w.sim.clear_scripts(PKG).unwrap();
    w.sim
        .script_buy(
            PKG,
            [provisioner::simulator::BuyStep::new(
                secs(30),
                BuyEffect::ServerErrorAfterBuying,
            )],
        )
        .unwrap();
    // Every status call for the bought server outlasts the 90 s timeout.
    w.sim
        .script_status(PKG, (0..200).map(|_| StatusStep::hang(secs(300))))
        .unwrap();
    let order = w.accept("hiding", 7).await;
    w.drive().await;
    let o = w.order(&order.id).await;
    assert_eq!(o.state, OrderState::NeedsAttention, "{:?}", o.failure);
    assert_eq!(w.store.purchases(&order.id).await.unwrap().len(), 1);
    let bought = w.sim.purchases_for(&format!("{}/", order.id))[0].ip;
    assert!(
        w.store.candidates(&order.id).await.unwrap().is_empty(),
        "an address that never answered is no candidate (nothing shows it is ours)"
    );
    let reason = o.failure.unwrap().reason;
    assert!(reason.contains("scan is incomplete"), "{reason}");
    let named = reason
        .split("status gave no definite answer for them: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no addresses named: {reason}"));
    assert!(
        named
            .split(", ")
            .any(|a| a.trim_end_matches(|c: char| !c.is_ascii_digit()) == bought.to_string()),
        "{bought} is named: {reason}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_seed_taken_literally_buys_that_server_twice() {
    let w = world(RetryPolicy {
        on_unknown: OnUnknown::Retry,
        ..RetryPolicy::default()
    });
    Scenario::LateCompletion.install(&w.sim, PKG).unwrap();
    let order = w.accept("late-literal", 7).await;
    w.drive().await;
    assert_eq!(w.order(&order.id).await.state, OrderState::Ready);
    assert_eq!(
        w.servers_for(&order.id),
        2,
        "the blind retry bought a second server"
    );
    assert!(w.times_of(&order.id, "UNSAFE").await.len() == 1);
}

#[tokio::test(start_paused = true)]
async fn escalate_policy_hands_unknown_outcomes_to_an_admin_at_once() {
    let w = world(RetryPolicy {
        on_unknown: OnUnknown::Escalate,
        ..RetryPolicy::default()
    });
    Scenario::Moderate.install(&w.sim, PKG).unwrap();
    let order = w.accept("esc", 7).await;
    w.drive().await;
    let o = w.order(&order.id).await;
    assert_eq!(o.state, OrderState::NeedsAttention);
    assert_eq!(w.offset(o.updated_at), 120);
    assert_eq!(w.store.purchases(&order.id).await.unwrap().len(), 1);
}

/// Drops the worker's step `after` into it: the crash of a worker mid-call.
async fn crash_mid_step(w: &VirtualWorld, after: Duration) {
    let claimed = w.engine.claim(10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let step = w.engine.work_one(claimed.into_iter().next().unwrap());
    assert!(
        tokio::time::timeout(after, step).await.is_err(),
        "the step should still have been running"
    );
}

#[tokio::test(start_paused = true)]
async fn an_intent_without_outcome_after_a_crash_is_reconciled_not_rebought() {
    // The crashed call's purchase completes upstream 30 s after it was sent.
    let w = world(RetryPolicy::default());
    w.sim.script_buy(PKG, [BuyStep::succeed(secs(30))]).unwrap();
    let order = w.accept("crash-bought", 7).await;
    crash_mid_step(&w, secs(10)).await;
    let ledger = w.store.purchases(&order.id).await.unwrap();
    assert_eq!(ledger.len(), 1);
    assert!(
        ledger[0].outcome.is_none(),
        "the intent was committed before the call; no outcome yet"
    );

    // A new worker (same store) takes over after the lease lapses.
    let clock: std::sync::Arc<dyn provisioner::clock::Clock> = w.clock.clone();
    let store: std::sync::Arc<provisioner::store::memory::MemoryStore> = w.store.clone();
    let second = VirtualWorld::engine_on(&store, &w.sim, &clock, RetryPolicy::default());
    for _ in 0..100 {
        second.run_due_once().await.unwrap();
        match w.store.next_due().await.unwrap() {
            Some(at) if at > w.clock.now() => w.clock.sleep(at.since(w.clock.now())).await,
            Some(_) => {}
            None => break,
        }
    }
    let o = w.order(&order.id).await;
    assert_eq!(w.servers_for(&order.id), 1);
    // The stock fell while the outcome was unknown and no reply was heard (its worker died): the
    // scan of the package finds the one new server of ours and the order continues with it.
    assert_eq!(o.state, OrderState::Ready, "{:?}", o.failure);
    assert_eq!(
        o.server_ip,
        Some(w.sim.purchases_for(&format!("{}/", order.id))[0].ip)
    );
    assert_eq!(w.times_of(&order.id, "Found by the scan").await.len(), 1);
    assert_eq!(
        w.store.purchases(&order.id).await.unwrap().len(),
        1,
        "no second purchase without reconciliation"
    );
    assert!(!w.times_of(&order.id, "no recorded reply").await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_crash_whose_purchase_never_happened_is_bought_again_once() {
    let w = world(RetryPolicy::default());
    w.sim
        .script_buy(PKG, [BuyStep::hang(secs(600)), BuyStep::succeed(secs(30))])
        .unwrap();
    let order = w.accept("crash-nothing", 7).await;
    crash_mid_step(&w, secs(10)).await;
    w.drive().await;
    let o = w.order(&order.id).await;
    assert_eq!(o.state, OrderState::Ready);
    assert_eq!(w.servers_for(&order.id), 1);
    let ledger = w.store.purchases(&order.id).await.unwrap();
    assert_eq!(ledger.len(), 2);
    assert!(matches!(
        ledger[0].resolution,
        Some(Resolution::NotBought { .. })
    ));
    // The second purchase went out only after the lease lapsed and the settle wait passed.
    let lease = w.engine_lease();
    assert!(ledger[1].sent_at.since(ledger[0].sent_at) >= lease + secs(120));
}

#[tokio::test(start_paused = true)]
async fn a_wrong_package_address_is_owned_but_never_delivered_or_retried() {
    let w = world(RetryPolicy::default());
    w.sim
        .script_buy(
            PKG,
            [BuyStep::new(secs(30), BuyEffect::SucceedInOtherPackage)],
        )
        .unwrap();
    let order = w.accept("wrong", 7).await;
    w.drive().await;
    let o = w.order(&order.id).await;
    assert_eq!(o.state, OrderState::NeedsAttention);
    assert!(o.server_ip.is_none(), "not delivered");
    let ledger = w.store.purchases(&order.id).await.unwrap();
    assert_eq!(ledger.len(), 1, "never retried automatically");
    let Some(PurchaseOutcome::Succeeded { ip }) = ledger[0].outcome else {
        panic!("{:?}", ledger[0])
    };
    assert!(!ip.to_string().starts_with("103.82.72."));
    assert_eq!(
        w.store.owner_of(ip).await.unwrap(),
        Some(order.id.clone()),
        "recorded as ours"
    );
    assert!(w.store.credentials(&order.id).await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn the_credentials_phase_never_buys_and_a_retry_resumes_polling() {
    let w = world(RetryPolicy::default());
    w.sim.script_buy(PKG, [BuyStep::succeed(secs(30))]).unwrap();
    w.sim
        .script_status(
            PKG,
            [
                StatusStep::hang(secs(600)),
                StatusStep::hang(secs(600)),
                StatusStep::hang(secs(600)),
            ],
        )
        .unwrap();
    let order = w.accept("creds", 7).await;
    w.drive().await;
    let o = w.order(&order.id).await;
    assert_eq!(o.state, OrderState::Failed);
    assert_eq!(o.failure.as_ref().unwrap().phase, Phase::Credentials);
    let ip = o.server_ip.expect("the owned address is kept");

    let retried = w
        .engine
        .retry(
            &order.id,
            "test-admin",
            "SmartVPS support says the server is up",
        )
        .await
        .unwrap();
    assert_eq!(retried.state, OrderState::AwaitingCredentials);
    w.drive().await;
    let o = w.order(&order.id).await;
    assert_eq!(o.state, OrderState::Ready);
    assert_eq!(o.server_ip, Some(ip));
    assert_eq!(
        w.servers_for(&order.id),
        1,
        "nothing bought in the credentials phase or on retry"
    );
    assert_eq!(w.store.purchases(&order.id).await.unwrap().len(), 1);
    assert_eq!(w.times_of(&order.id, "Retry by test-admin").await.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn one_purchase_per_package_in_flight_while_an_outcome_is_unknown() {
    let w = world(seed_premise());
    // Order A's first purchase hangs (unknown); order B on the same package must not buy until
    // A's outcome is reconciled, or the stock evidence would be blurred by B's purchase.
    // (SmartVPS is taken to finish purchases within the seed's first wait here, so A is
    // reconciled at 240 s; the horizon's own test is in seed_cases.)
    w.sim
        .script_buy(
            PKG,
            [
                BuyStep::hang(secs(600)),
                BuyStep::succeed(secs(30)),
                BuyStep::succeed(secs(30)),
            ],
        )
        .unwrap();
    let a = w.accept("a", 7).await;
    w.engine.run_due_once().await.unwrap();
    let b = w.accept("b", 7).await;
    w.drive().await;
    assert_eq!(w.order(&a.id).await.state, OrderState::Ready);
    assert_eq!(w.order(&b.id).await.state, OrderState::Ready);
    let la = w.store.purchases(&a.id).await.unwrap();
    let lb = w.store.purchases(&b.id).await.unwrap();
    assert_eq!(lb.len(), 1);
    // A timed out at 120 s and was reconciled at 240 s; B's purchase went out after that.
    assert!(
        w.offset(lb[0].sent_at) >= 240,
        "B bought at {}s",
        w.offset(lb[0].sent_at)
    );
    assert!(w.offset(la[1].sent_at) == 240);
    assert_eq!(w.servers_for(&a.id) + w.servers_for(&b.id), 2);
}

/// Other resellers move the stock while a purchase is unknown, and nothing was bought: the scan
/// finds no server of ours in the package, every address answers `error` in four separate
/// reads, the stock fell without running dry, so nothing was bought and the order buys again,
/// once, with no admin.
#[tokio::test(start_paused = true)]
async fn stock_taken_by_other_buyers_while_unknown_is_settled_by_a_confirmed_negative_scan() {
    let w = world(RetryPolicy::default());
    w.sim.script_buy(PKG, [BuyStep::hang(secs(600))]).unwrap();
    let order = w.accept("others", 7).await;
    w.engine.run_due_once().await.unwrap();
    w.sim.take_stock(PKG, 2).unwrap();
    let calls_before = w.sim.calls().status;
    w.drive().await;
    let o = w.order(&order.id).await;
    assert_eq!(o.state, OrderState::Ready);
    assert_eq!(w.servers_for(&order.id), 1);
    let ledger = w.store.purchases(&order.id).await.unwrap();
    assert_eq!(ledger.len(), 2);
    let Some(Resolution::NotBought { evidence }) = &ledger[0].resolution else {
        panic!("{:?}", ledger[0].resolution);
    };
    assert!(
        evidence.contains("4 times in separate rounds"),
        "{evidence}"
    );
    assert!(
        evidence.contains("stock fell without running dry"),
        "{evidence}"
    );
    assert!(
        ledger[1].sent_at.since(ledger[0].sent_at) >= RetryPolicy::default().horizon,
        "no verdict before the horizon"
    );
    // Each of the package's 256 addresses was read four times (none is owned yet), plus the
    // new server's credential polls.
    assert!(w.sim.calls().status - calls_before >= 4 * 256);
}

/// The same, but the package ran dry: SmartVPS may have placed the purchase in another
/// package, which a scan of this one cannot see, so an admin decides.
#[tokio::test(start_paused = true)]
async fn an_unknown_purchase_whose_package_ran_dry_escalates_instead_of_guessing() {
    let w = world(RetryPolicy::default());
    w.sim.script_buy(PKG, [BuyStep::hang(secs(600))]).unwrap();
    let order = w.accept("others", 7).await;
    w.engine.run_due_once().await.unwrap();
    w.sim.take_stock(PKG, u32::MAX).unwrap();
    w.drive().await;
    let o = w.order(&order.id).await;
    assert_eq!(o.state, OrderState::NeedsAttention);
    let why = o.failure.map(|f| f.reason).unwrap_or_default();
    assert!(why.contains("ran dry"), "{why}");
    assert_eq!(w.servers_for(&order.id), 0);
    assert_eq!(w.store.purchases(&order.id).await.unwrap().len(), 1);
}

/// The narrowest crash window: the worker recorded the purchase's success in the ledger, then
/// died before the write that marks the order bought. The ledger says the server is ours, so the
/// next worker adopts it instead of buying again.
#[tokio::test(start_paused = true)]
async fn a_crash_after_a_recorded_success_adopts_the_server_instead_of_rebuying() {
    use provisioner::domain::PurchaseIntent;
    use provisioner::provider::{CallContext, Outcome, Provider};

    let w = world(RetryPolicy::default());
    w.sim.script_buy(PKG, [BuyStep::succeed(secs(30))]).unwrap();
    let order = w.accept("crash-after-success", 7).await;
    // The crashed worker's step, by hand, up to the moment it died.
    let claimed = w.engine.claim(1).await.unwrap().pop().unwrap();
    let (lease, mut o) = (claimed.lease, claimed.order);
    o.begin_buying(w.clock.now()).unwrap();
    let n = o.start_buy_attempt(w.clock.now()).unwrap();
    let name = provisioner::domain::PackageName::parse("103.82.72").unwrap();
    let intent = PurchaseIntent {
        order_id: o.id.clone(),
        attempt: n,
        package_id: PKG,
        package_name: name.clone(),
        stock_before: w.sim.free(PKG),
        pool_before: None,
        sent_at: w.clock.now(),
    };
    let seen = w.store.flight_state(PKG).await.unwrap();
    let provisioner::store::Begun::Purchase(pid) = w
        .store
        .begin_purchase_in_flight(&lease, &o, &intent, &[], &seen)
        .await
        .unwrap()
    else {
        panic!("the package's flight is free");
    };
    let Outcome::Succeeded(ip) = w
        .sim
        .provider()
        .buy(
            &CallContext::for_order(&o.id, n),
            &name,
            o.ram_gb,
            secs(120),
        )
        .await
    else {
        panic!("the scripted purchase succeeds");
    };
    w.store
        .record_outcome(pid, &PurchaseOutcome::Succeeded { ip }, w.clock.now())
        .await
        .unwrap();
    // ...and here it died. Another worker takes over once the lease lapses.
    w.drive().await;
    let o = w.order(&order.id).await;
    assert_eq!(w.servers_for(&order.id), 1, "no second server bought");
    assert_eq!(o.state, OrderState::Ready);
    assert_eq!(o.server_ip, Some(ip), "the recorded server was adopted");
    assert_eq!(w.store.purchases(&order.id).await.unwrap().len(), 1);
    assert_eq!(
        w.times_of(&order.id, "adopting it").await.len(),
        1,
        "the takeover says what it did"
    );
}

#[tokio::test(start_paused = true)]
async fn short_waits_and_a_stop_mid_purchase_still_end_with_one_server() {
    // The duplicate: buy waits of 10 s / 20 s, a buyvps that takes 30 s upstream, and
    // the worker stopped 10 s into the purchase. Before the horizon, the order was reconciled
    // at +0:26 against unchanged stock and bought again; now nothing is concluded before the
    // purchase's 10-minute horizon, and the server it bought is found and delivered.
    let policy = RetryPolicy {
        buy: provisioner::policy::PhasePolicy {
            attempts: 3,
            timeout: secs(20),
            delays: vec![secs(10), secs(20)],
        },
        ..RetryPolicy::default()
    };
    let w = world(policy.clone());
    w.sim.script_buy(PKG, [BuyStep::succeed(secs(30))]).unwrap();
    let order = w.accept("short-waits", 7).await;
    crash_mid_step(&w, secs(10)).await;
    let clock: std::sync::Arc<dyn provisioner::clock::Clock> = w.clock.clone();
    let store: std::sync::Arc<provisioner::store::memory::MemoryStore> = w.store.clone();
    let restarted = VirtualWorld::engine_on(&store, &w.sim, &clock, policy);
    for _ in 0..200 {
        restarted.run_due_once().await.unwrap();
        match w.store.next_due().await.unwrap() {
            Some(at) if at > w.clock.now() => w.clock.sleep(at.since(w.clock.now())).await,
            Some(_) => {}
            None => break,
        }
    }
    let o = w.order(&order.id).await;
    assert_eq!(
        w.servers_for(&order.id),
        1,
        "exactly one server bought upstream"
    );
    assert_eq!(
        w.store.purchases(&order.id).await.unwrap().len(),
        1,
        "no second purchase"
    );
    assert_eq!(o.state, OrderState::Ready, "{:?}", o.failure);
    let ledger = w.store.purchases(&order.id).await.unwrap();
    assert!(
        o.ready_at.unwrap().since(ledger[0].sent_at) >= secs(600),
        "no verdict before the horizon"
    );
    assert_eq!(w.times_of(&order.id, "Found by the scan").await.len(), 1);
}

/// A purchase whose package ran dry while it completed, with a reply that named no server:
/// SmartVPS placed the server in another package, where the order's own scan cannot see it.
/// When a later scan (another order's, of that package) finds it, it is listed on the order
/// waiting for an admin, one click to adopt, instead of being paid for and before nobody.
#[tokio::test(start_paused = true)]
async fn a_server_placed_in_another_package_is_listed_for_the_order_whose_package_ran_dry() {
    use provisioner::domain::NewOrder;
    use provisioner::engine::admin::Resolve;
    use provisioner::store::Intake;
    let w = world(RetryPolicy::default());
    let other = PackageId(8);
    // Order A: its buy is answered HTTP 500 after buying, and its package runs dry while the
    // purchase completes, so the server comes from package 8.
    w.sim
        .script_buy(
            PKG,
            [BuyStep::new(secs(30), BuyEffect::ServerErrorAfterBuying)],
        )
        .unwrap();
    let a = w.accept("dry-a", 7).await;
    let drain = async {
        w.clock.sleep(secs(10)).await;
        w.sim.take_stock(PKG, u32::MAX).unwrap();
    };
    let (ran, ()) = tokio::join!(w.engine.run_due_once(), drain);
    ran.unwrap();
    w.drive().await;
    let o = w.order(&a.id).await;
    assert_eq!(o.state, OrderState::NeedsAttention, "{:?}", o.failure);
    let ours = w.sim.purchases_for(&format!("{}/", a.id))[0].clone();
    assert!(ours.from_other_package && ours.address_package == other);
    assert!(w.store.candidates(&a.id).await.unwrap().is_empty());

    // Order B, 2 GB in package 8: its reply is lost too, and its scan finds both servers; its
    // own (the one 2 GB server) is adopted, A's is listed for A.
    Scenario::LostReply.install(&w.sim, other).unwrap();
    let mut request = crate::helpers::request("dry-b", 8);
    request.ram_gb = 2;
    let b = match w
        .engine
        .accept(NewOrder::parse(&request).unwrap())
        .await
        .unwrap()
    {
        Intake::Created(o) => o,
        other => panic!("expected a new order, got {other:?}"),
    };
    w.drive().await;
    let ob = w.order(&b.id).await;
    assert_eq!(ob.state, OrderState::Ready, "{:?}", ob.failure);
    assert_eq!(
        ob.server_ip,
        Some(w.sim.purchases_for(&format!("{}/", b.id))[0].ip)
    );
    let listed: Vec<_> = w
        .store
        .candidates(&a.id)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.ip)
        .collect();
    assert_eq!(listed, vec![ours.ip], "A's server is before A's admin");
    assert_eq!(w.times_of(&a.id, "A later scan").await.len(), 1);
    // One click: the dashboard's button overrides the package check for another package.
    let adopted = w
        .engine
        .resolve(
            &a.id,
            "alice",
            "adopted the candidate in package 8",
            Resolve::Adopt {
                ip: ours.ip,
                override_package_check: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(adopted.server_ip, Some(ours.ip));
    w.drive().await;
    assert_eq!(w.order(&a.id).await.state, OrderState::Ready);
    assert_eq!(w.servers_for(&a.id), 1);
    assert_eq!(w.servers_for(&b.id), 1);
}

/// Order A's purchase in package 7 got no answer and its package ran dry, so it waits for an
/// admin and could own a server of its RAM in any package. With `clear_scan`, order B's
/// purchase in package 8 (sent after A's) gets no answer either, and at B's horizon (after
/// A's) B's scan of package 8 is complete with every `error` confirmed. Then order C's reply in
/// package 8 is lost: its scan finds one new server. Returns the world and C.
async fn one_candidate_beside_an_escalated_rival(
    clear_scan: bool,
) -> (VirtualWorld, provisioner::domain::Order) {
    let w = world(RetryPolicy::default());
    let other = PackageId(8);
    w.sim.script_buy(PKG, [BuyStep::hang(secs(600))]).unwrap();
    let a = w.accept("rival-a", 7).await;
    w.engine.run_due_once().await.unwrap();
    w.sim.take_stock(PKG, u32::MAX).unwrap();
    if clear_scan {
        w.clock.sleep(secs(30)).await;
        w.sim.script_buy(other, [BuyStep::hang(secs(600))]).unwrap();
        let b = w.accept("rival-b", 8).await;
        w.engine.run_due_once().await.unwrap();
        w.sim.take_stock(other, 2).unwrap();
        w.drive().await;
        let ob = w.order(&b.id).await;
        assert_eq!(ob.state, OrderState::Ready, "{:?}", ob.failure);
        let ledger = w.store.purchases(&b.id).await.unwrap();
        assert!(
            matches!(ledger[0].resolution, Some(Resolution::NotBought { .. })),
            "{:?}",
            ledger[0].resolution
        );
        let scans = w
            .store
            .complete_scans(other, ledger[0].sent_at)
            .await
            .unwrap();
        assert_eq!(scans.len(), 1, "B's confirmed negative scan is on record");
        let sent_a = w.store.purchases(&a.id).await.unwrap()[0].sent_at;
        assert!(scans[0].started_at > sent_a.plus(RetryPolicy::default().horizon));
    } else {
        w.drive().await;
    }
    let oa = w.order(&a.id).await;
    assert_eq!(oa.state, OrderState::NeedsAttention, "{:?}", oa.failure);
    assert_eq!(w.servers_for(&a.id), 0);
    Scenario::LostReply.install(&w.sim, other).unwrap();
    let c = w.accept("rival-c", 8).await;
    w.drive().await;
    (w, c)
}

/// A purchase completes within its horizon if at all: once a complete scan of the package,
/// every `error` confirmed, started after A's horizon and did not see C's server, A cannot own
/// it, so C adopts it with no admin.
#[tokio::test(start_paused = true)]
async fn a_rival_whose_horizon_ended_before_a_clear_scan_does_not_block_adoption() {
    let (w, c) = one_candidate_beside_an_escalated_rival(true).await;
    let oc = w.order(&c.id).await;
    assert_eq!(oc.state, OrderState::Ready, "{:?}", oc.failure);
    let bought = w.sim.purchases_for(&format!("{}/", c.id))[0].ip;
    assert_eq!(oc.server_ip, Some(bought));
    assert_eq!(w.servers_for(&c.id), 1);
    assert_eq!(w.store.purchases(&c.id).await.unwrap().len(), 1);
}

/// Without such a scan the escalated purchase may own C's server: C waits for an admin.
#[tokio::test(start_paused = true)]
async fn a_rival_with_no_clear_scan_after_its_horizon_still_escalates() {
    let (w, c) = one_candidate_beside_an_escalated_rival(false).await;
    let oc = w.order(&c.id).await;
    assert_eq!(oc.state, OrderState::NeedsAttention);
    let why = oc.failure.map(|f| f.reason).unwrap_or_default();
    assert!(why.contains("could have bought it too"), "{why}");
    assert_eq!(w.servers_for(&c.id), 1);
    assert_eq!(w.store.purchases(&c.id).await.unwrap().len(), 1);
}
