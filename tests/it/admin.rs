//! Admin actions at the engine, in virtual time: resolving what the engine escalated without ever
//! buying twice, retry and cancel refusals, and who/why in the timeline.

use std::time::Duration;

use provisioner::domain::{EntryKind, OrderState, PackageId, Phase, Resolution};
use provisioner::engine::admin::{AdminError, Resolve};
use provisioner::policy::RetryPolicy;
use provisioner::simulator::{BuyEffect, BuyStep, Scenario};
use provisioner::store::{Store, StoreError};

use crate::helpers::VirtualWorld;

const PKG: PackageId = PackageId(7);

fn world() -> VirtualWorld {
    VirtualWorld::new(
        RetryPolicy::default(),
        &[(7, "103.82.72", 50), (8, "45.12.33", 50)],
    )
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// An order whose purchase bought a server but lost its reply (HTTP 500), in a package that
/// holds another unowned server of ours: needs attention, with one server bought for it at
/// SmartVPS that we have not recorded and two candidates listed.
async fn late_completion(w: &VirtualWorld) -> provisioner::domain::Order {
    // Another server of ours in the package (bought in the panel), so the scan cannot tell
    // which one the purchase bought.
    w.buy_outside("103.82.72", 4).await;
    Scenario::LostReply.install(&w.sim, PKG).unwrap();
    let order = w.accept("late", 7).await;
    w.drive().await;
    let o = w.order(&order.id).await;
    assert_eq!(o.state, OrderState::NeedsAttention);
    o
}

fn refused(r: Result<provisioner::domain::Order, AdminError>) -> String {
    match r {
        Err(AdminError::Refused(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn adopting_the_server_found_in_the_panel_delivers_it_without_buying() {
    let w = world();
    let order = late_completion(&w).await;
    let bought = w.sim.purchases_for(&format!("{}/", order.id));
    assert_eq!(bought.len(), 1);
    let ip = bought[0].ip;

    let o = w
        .engine
        .resolve(
            &order.id,
            "alice",
            "found it in the SmartVPS panel, bought 90 s after our timeout",
            Resolve::Adopt {
                ip,
                override_package_check: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(o.state, OrderState::AwaitingCredentials);
    w.drive().await;
    let o = w.order(&order.id).await;
    assert_eq!(o.state, OrderState::Ready);
    assert_eq!(o.server_ip, Some(ip));
    assert_eq!(w.servers_for(&order.id), 1, "nothing more was bought");
    let ledger = w.store.purchases(&order.id).await.unwrap();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].resolution, Some(Resolution::Adopted { ip }));
    assert!(w.store.credentials(&order.id).await.unwrap().is_some());
    let admin: Vec<_> = w
        .timeline(&order.id)
        .await
        .into_iter()
        .filter(|e| e.kind == EntryKind::Admin)
        .collect();
    assert_eq!(admin.len(), 1);
    assert!(
        admin[0]
            .message
            .contains("Resolved by alice: found it in the SmartVPS panel"),
        "{}",
        admin[0].message
    );
}

#[tokio::test(start_paused = true)]
async fn adopting_checks_the_address_package_and_owner() {
    let w = world();
    let order = late_completion(&w).await;
    let adopt = |ip: &str, override_package_check| Resolve::Adopt {
        ip: ip.parse().unwrap(),
        override_package_check,
    };
    // Outside package 7 (103.82.72): refused naming the field, unless overridden.
    match w
        .engine
        .resolve(&order.id, "alice", "panel", adopt("45.12.33.9", false))
        .await
    {
        Err(AdminError::Invalid { field, message }) => {
            assert_eq!(field, "ip");
            assert!(message.contains("not in package 103.82.72"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Another order's address: refused even with the override.
    let other = w.accept("other", 8).await;
    w.drive().await;
    let other_ip = w.order(&other.id).await.server_ip.unwrap();
    let why = refused(
        w.engine
            .resolve(
                &order.id,
                "alice",
                "panel",
                adopt(&other_ip.to_string(), true),
            )
            .await,
    );
    assert!(why.contains(other.id.as_str()), "{why}");
    assert_eq!(w.order(&order.id).await.state, OrderState::NeedsAttention);
    // A reason is required.
    assert!(matches!(
        w.engine
            .resolve(&order.id, "alice", "  ", adopt("103.82.72.200", false))
            .await,
        Err(AdminError::NoReason)
    ));
    // With the override, the address is adopted and the override is a warning in the timeline.
    let o = w
        .engine
        .resolve(
            &order.id,
            "alice",
            "SmartVPS support moved it",
            adopt("45.12.34.77", true),
        )
        .await
        .unwrap();
    assert_eq!(o.server_ip, Some("45.12.34.77".parse().unwrap()));
    let warned = w
        .times_of(&order.id, "alice overrode the package check")
        .await;
    assert_eq!(warned.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn confirming_nothing_was_bought_settles_the_purchase_and_buys_again_once() {
    let w = world();
    // The purchase hangs (unknown); other resellers take stock meanwhile, so reconciliation
    // cannot tell and escalates. Nothing was in fact bought for us.
    w.sim.script_buy(PKG, [BuyStep::hang(secs(600))]).unwrap();
    let order = w.accept("others", 7).await;
    w.engine.run_due_once().await.unwrap();
    w.sim.take_stock(PKG, 2).unwrap();
    w.drive().await;
    assert_eq!(w.order(&order.id).await.state, OrderState::NeedsAttention);
    assert_eq!(w.servers_for(&order.id), 0);

    let o = w
        .engine
        .resolve(
            &order.id,
            "bob",
            "no server for this order in the panel",
            Resolve::NotBought,
        )
        .await
        .unwrap();
    assert_eq!((o.state, o.buy_attempts), (OrderState::Buying, 0));
    w.drive().await;
    assert_eq!(w.order(&order.id).await.state, OrderState::Ready);
    assert_eq!(w.servers_for(&order.id), 1);
    let ledger = w.store.purchases(&order.id).await.unwrap();
    assert_eq!(ledger.len(), 2);
    match &ledger[0].resolution {
        Some(Resolution::NotBought { evidence }) => {
            assert_eq!(
                evidence,
                "confirmed by bob: no server for this order in the panel"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_wrong_package_server_blocks_not_bought_and_a_buy_phase_retry() {
    let w = world();
    w.sim
        .script_buy(
            PKG,
            [BuyStep::new(secs(30), BuyEffect::SucceedInOtherPackage)],
        )
        .unwrap();
    let order = w.accept("wrong", 7).await;
    w.drive().await;
    assert_eq!(w.order(&order.id).await.state, OrderState::NeedsAttention);
    let why = refused(
        w.engine
            .resolve(&order.id, "alice", "nothing there", Resolve::NotBought)
            .await,
    );
    assert!(why.contains("cannot be confirmed"), "{why}");
    let o = w
        .engine
        .resolve(&order.id, "alice", "refunding the customer", Resolve::Fail)
        .await
        .unwrap();
    assert_eq!(o.state, OrderState::Failed);
    assert_eq!(o.failure.as_ref().unwrap().phase, Phase::Buy);
    let why = refused(w.engine.retry(&order.id, "alice", "try again please").await);
    assert!(why.contains("a server is owned"), "{why}");
    w.drive().await;
    assert_eq!(w.store.purchases(&order.id).await.unwrap().len(), 1);
    assert_eq!(w.servers_for(&order.id), 1);
}

#[tokio::test(start_paused = true)]
async fn a_buy_phase_retry_is_refused_while_an_escalated_outcome_is_unknown() {
    let w = world();
    let order = late_completion(&w).await;
    w.engine
        .resolve(&order.id, "alice", "customer cancelled", Resolve::Fail)
        .await
        .unwrap();
    let why = refused(w.engine.retry(&order.id, "alice", "retry it").await);
    assert!(why.contains("unknown outcome"), "{why}");
    assert_eq!(w.order(&order.id).await.state, OrderState::Failed);
}

#[tokio::test(start_paused = true)]
async fn cancel_is_refused_while_a_purchase_is_in_flight_and_recorded_otherwise() {
    let w = world();
    w.sim.script_buy(PKG, [BuyStep::hang(secs(600))]).unwrap();
    let order = w.accept("inflight", 7).await;
    // A worker is mid-call (the step is dropped 10 s in, as a crash would leave it).
    let claimed = w.engine.claim(10).await.unwrap();
    let step = w.engine.work_one(claimed.into_iter().next().unwrap());
    assert!(tokio::time::timeout(secs(10), step).await.is_err());
    let why = refused(w.engine.cancel(&order.id, "alice", "customer asked").await);
    assert!(why.contains("in flight"), "{why}");

    // A queued order, nothing sent: cancelled, with who and why.
    let queued = w.accept("queued", 8).await;
    let o = w
        .engine
        .cancel(&queued.id, "bob", "duplicate payment")
        .await
        .unwrap();
    assert_eq!(o.state, OrderState::Cancelled);
    assert_eq!(
        w.times_of(&queued.id, "Cancelled by bob: duplicate payment")
            .await
            .len(),
        1
    );
    // Cancelled is final: not again, not retried.
    assert!(matches!(
        w.engine.cancel(&queued.id, "bob", "again").await,
        Err(AdminError::Refused(_))
    ));
    assert!(matches!(
        w.engine.retry(&queued.id, "bob", "again").await,
        Err(AdminError::Refused(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn an_admin_action_on_an_order_a_worker_holds_is_a_conflict() {
    let w = world();
    let order = w.accept("held", 7).await;
    // A worker claims the order (lease live) but has not done anything yet.
    let claimed = w.engine.claim(10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    match w.engine.cancel(&order.id, "alice", "stop").await {
        Err(AdminError::Store(StoreError::Conflict(id))) => assert_eq!(id, order.id),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.order(&order.id).await.state, OrderState::Queued);
}
