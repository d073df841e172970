//! Admin actions at the engine, in virtual time: resolving what the engine escalated without ever
//! buying twice, retry and cancel refusals, and who/why in the timeline.

use std::time::Duration;

use provisioner::domain::{EntryKind, OrderState, PackageId, Phase, Resolution};
use provisioner::engine::admin::{AdminError, Resolve};
use provisioner::policy::RetryPolicy;
use provisioner::simulator::{BuyEffect, BuyStep, Scenario, StatusEffect, StatusStep};
use provisioner::store::{OrderFilter, Store, StoreError};

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
    // The purchase hangs (unknown); other resellers take the package's last addresses
    // meanwhile, so SmartVPS could have placed it in another package: neither the stock nor a
    // scan can tell, and it escalates. Nothing was in fact bought for us.
    w.sim.script_buy(PKG, [BuyStep::hang(secs(600))]).unwrap();
    let order = w.accept("others", 7).await;
    w.engine.run_due_once().await.unwrap();
    w.sim.take_stock(PKG, u32::MAX).unwrap();
    w.drive().await;
    assert_eq!(w.order(&order.id).await.state, OrderState::NeedsAttention);
    assert_eq!(w.servers_for(&order.id), 0);
    // The package is restocked before the admin looks.
    w.sim.set_free(PKG, 40).unwrap();

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

/// Two orders failed in the buy phase (package 7 sold out) and one in the credentials phase
/// (package 8's status always `error`), for the failed-queue actions.
async fn failed_queue(w: &VirtualWorld) -> [provisioner::domain::Order; 3] {
    w.sim.set_free(PKG, 0).unwrap();
    w.sim
        .script_status(
            PackageId(8),
            [StatusStep::new(secs(5), StatusEffect::ErrorReply); 3],
        )
        .unwrap();
    let a = w.accept("sold-out-a", 7).await;
    let b = w.accept("sold-out-b", 7).await;
    let c = w.accept("no-creds", 8).await;
    w.drive().await;
    let mut out = Vec::new();
    for o in [a, b, c] {
        let o = w.order(&o.id).await;
        assert_eq!(o.state, OrderState::Failed, "{}", o.order_ref.as_str());
        out.push(o);
    }
    assert_eq!(out[2].failure.as_ref().unwrap().phase, Phase::Credentials);
    // Sold out is not a failed purchase: the timeline says nothing was sent, as the ledger does.
    let lines: Vec<String> = w
        .timeline(&out[0].id)
        .await
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert!(w.store.purchases(&out[0].id).await.unwrap().is_empty());
    assert_eq!(
        lines
            .iter()
            .filter(|l| l
                .contains("not sent: package 103.82.72 is sold out (0 free); nothing was bought"))
            .count(),
        3,
        "{lines:#?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("prevents race conditions") || l.contains("failed: package")),
        "{lines:#?}"
    );
    assert!(
        out[0]
            .failure
            .as_ref()
            .unwrap()
            .reason
            .starts_with("3 buy attempts failed; last: no purchase sent")
    );
    out.try_into().unwrap()
}

#[tokio::test(start_paused = true)]
async fn retry_failed_retries_one_phase_with_one_reason_and_lists_refusals() {
    let w = world();
    let [a, b, c] = failed_queue(&w).await;
    // Only the buy phase: the credentials-phase failure stays failed.
    let filter = OrderFilter {
        phase: Some(Phase::Buy),
        ..OrderFilter::default()
    };
    assert!(matches!(
        w.engine.retry_failed(&filter, "alice", " ").await,
        Err(AdminError::NoReason)
    ));
    w.sim.set_free(PKG, 5).unwrap();
    let summary = w
        .engine
        .retry_failed(&filter, "alice", "SmartVPS restocked")
        .await
        .unwrap();
    let mut done: Vec<_> = summary.done.iter().map(|d| d.order_ref.as_str()).collect();
    done.sort_unstable();
    assert_eq!(done, ["sold-out-a", "sold-out-b"]);
    assert!(summary.refused.is_empty());
    assert_eq!(w.order(&c.id).await.state, OrderState::Failed);
    for o in [&a, &b] {
        let lines = w.timeline(&o.id).await;
        assert!(
            lines.iter().any(|e| e.kind == EntryKind::Admin
                && e.message.contains("Retry by alice: SmartVPS restocked")),
            "{lines:?}"
        );
    }
    w.drive().await;
    assert_eq!(w.order(&a.id).await.state, OrderState::Ready);
    assert_eq!(w.order(&b.id).await.state, OrderState::Ready);
    // Nothing left in the buy phase's queue: an empty summary, not an error.
    let again = w
        .engine
        .retry_failed(&filter, "alice", "again")
        .await
        .unwrap();
    assert!(again.done.is_empty() && again.refused.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_bulk_retry_refuses_an_order_whose_purchase_may_have_bought_and_goes_on() {
    let w = world();
    let [a, _, _] = failed_queue(&w).await;
    // A failed order with an unknown purchase in its ledger: lost reply, escalated, failed.
    w.sim.set_free(PKG, 5).unwrap();
    let lost = late_completion(&w).await;
    w.drive().await;
    w.engine
        .resolve(&lost.id, "alice", "give up for now", Resolve::Fail)
        .await
        .unwrap();
    w.sim.clear_scripts(PKG).unwrap();
    let summary = w
        .engine
        .retry_failed(
            &OrderFilter {
                package: Some(PKG),
                ..OrderFilter::default()
            },
            "alice",
            "outage over",
        )
        .await
        .unwrap();
    assert!(summary.done.iter().any(|d| d.id == a.id));
    assert_eq!(summary.refused.len(), 1, "{summary:?}");
    let r = &summary.refused[0];
    assert_eq!((&r.id, r.order_ref.as_str()), (&lost.id, "late"));
    let why = r.why.as_deref().unwrap();
    assert!(why.contains("unknown outcome"), "{why}");
    assert_eq!(w.order(&lost.id).await.state, OrderState::Failed);
}

#[tokio::test(start_paused = true)]
async fn mark_resolved_closes_failed_orders_and_says_a_server_may_be_owned() {
    let w = world();
    let [a, _, c] = failed_queue(&w).await;
    let o = w
        .engine
        .mark_resolved(&a.id, "alice", "refunded")
        .await
        .unwrap();
    assert_eq!(o.state, OrderState::Cancelled);
    let lines = w.timeline(&a.id).await;
    assert!(
        lines
            .iter()
            .any(|e| e.message.contains("Marked resolved by alice: refunded"))
    );
    // The credentials-phase failure owns a server: resolved, with a warning naming it.
    let summary = w
        .engine
        .mark_resolved_failed(&OrderFilter::default(), "alice", "handed over by hand")
        .await
        .unwrap();
    assert_eq!(summary.done.len(), 2, "{summary:?}");
    let ip = c.server_ip.unwrap();
    let lines = w.timeline(&c.id).await;
    assert!(
        lines
            .iter()
            .any(|e| e.kind == EntryKind::Warning
                && e.message.contains(&format!("owns server {ip}"))),
        "{lines:?}"
    );
    // Not failed any more: refused.
    let why = refused(w.engine.mark_resolved(&a.id, "alice", "twice").await);
    assert!(why.contains("only a failed order"), "{why}");
}

#[tokio::test(start_paused = true)]
async fn cancelling_an_order_that_may_own_a_server_needs_the_override_and_states_the_evidence() {
    let w = world();
    let order = late_completion(&w).await;
    match w
        .engine
        .cancel(&order.id, "alice", "customer changed their mind")
        .await
    {
        Err(AdminError::Invalid { field, message }) => {
            assert_eq!(field, "override_server_check");
            assert!(message.contains("unknown outcome"), "{message}");
            assert!(message.contains("purchase #"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(w.order(&order.id).await.state, OrderState::NeedsAttention);
    let o = w
        .engine
        .cancel_with(&order.id, "alice", "nothing in the panel", true)
        .await
        .unwrap();
    assert_eq!(o.state, OrderState::Cancelled);
    let lines = w.timeline(&order.id).await;
    assert!(
        lines.iter().any(|e| e.kind == EntryKind::Warning
            && e.message.contains("cancelled although a server may exist")),
        "{lines:?}"
    );
    // An order with no sign of a server cancels without the override.
    w.sim.set_free(PackageId(8), 0).unwrap();
    let plain = w.accept("plain", 8).await;
    w.drive().await;
    w.engine
        .cancel(&plain.id, "alice", "duplicate")
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_mistyped_adopted_address_is_changed_until_status_succeeds() {
    let w = world();
    let order = late_completion(&w).await;
    let real = w.sim.purchases_for(&format!("{}/", order.id))[0].ip;
    // A typo: an address in the package that is not a server of ours; status polls it in vain.
    let typo: std::net::Ipv4Addr = "103.82.72.254".parse().unwrap();
    assert_ne!(typo, real);
    w.engine
        .resolve(
            &order.id,
            "alice",
            "found it in the panel",
            Resolve::Adopt {
                ip: typo,
                override_package_check: false,
            },
        )
        .await
        .unwrap();
    w.drive().await;
    let o = w.order(&order.id).await;
    assert_eq!((o.state, o.server_ip), (OrderState::Failed, Some(typo)));
    // Outside the package: refused on the field, unless overridden.
    match w
        .engine
        .change_address(
            &order.id,
            "alice",
            "typo",
            "45.12.33.9".parse().unwrap(),
            false,
        )
        .await
    {
        Err(AdminError::Invalid { field, .. }) => assert_eq!(field, "ip"),
        other => panic!("{other:?}"),
    }
    let o = w
        .engine
        .change_address(
            &order.id,
            "alice",
            "typo: .254 for the real one",
            real,
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        (o.state, o.server_ip),
        (OrderState::AwaitingCredentials, Some(real))
    );
    w.drive().await;
    let o = w.order(&order.id).await;
    assert_eq!((o.state, o.server_ip), (OrderState::Ready, Some(real)));
    assert_eq!(w.servers_for(&order.id), 1, "nothing was bought");
    // Ready: status succeeded for it, so the address is final.
    let why = refused(
        w.engine
            .change_address(&order.id, "alice", "again", typo, false)
            .await,
    );
    assert!(why.contains("never succeeded"), "{why}");
}

#[tokio::test(start_paused = true)]
async fn an_address_a_purchase_returned_is_never_changed() {
    let w = world();
    let [_, _, c] = failed_queue(&w).await;
    let why = refused(
        w.engine
            .change_address(
                &c.id,
                "alice",
                "typo?",
                "45.12.33.77".parse().unwrap(),
                false,
            )
            .await,
    );
    assert!(why.contains("returned by purchase"), "{why}");
}
