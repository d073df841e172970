//! A worker's finishing commit claims its next order (`Engine::work_then_claim`): the claim
//! shares the commit that ends the step, and a worker whose lease was lost claims nothing.

use std::time::Duration;

use provisioner::clock::Clock;
use provisioner::domain::{OrderId, OrderState};
use provisioner::engine::EngineError;
use provisioner::policy::RetryPolicy;
use provisioner::store::{Claimed, Store, StoreError};

use crate::helpers::VirtualWorld;

fn world() -> VirtualWorld {
    VirtualWorld::new(
        RetryPolicy::default(),
        &[(7, "103.82.72", 50), (8, "45.12.33", 50)],
    )
}

fn ids(claimed: &[Claimed]) -> Vec<OrderId> {
    claimed.iter().map(|c| c.order.id.clone()).collect()
}

#[tokio::test(start_paused = true)]
async fn a_finishing_step_claims_the_next_order_in_its_commit() {
    let w = world();
    let a = w.accept("chain-a", 7).await;
    w.clock.sleep(Duration::from_secs(1)).await;
    let b = w.accept("chain-b", 8).await;

    let first = w.engine.claim(1).await.unwrap();
    assert_eq!(ids(&first), vec![a.id.clone()], "the earliest due first");
    let mut next = w
        .engine
        .work_then_claim(first.into_iter().next().unwrap(), 1)
        .await
        .unwrap();
    assert_eq!(
        ids(&next),
        vec![b.id.clone()],
        "the step's last write claimed the next due order"
    );
    assert_eq!(next[0].lease.worker, w.engine.worker_id());
    let after_first = w.order(&a.id).await;
    assert_ne!(
        after_first.state,
        OrderState::Queued,
        "the first step is saved"
    );
    assert!(
        w.engine.claim(10).await.unwrap().is_empty(),
        "the second order is leased by the chained claim, the first waits for its server"
    );

    // Worked from the chained claim, as a worker loop does, then driven to the end.
    while let Some(c) = next.pop() {
        next = w.engine.work_then_claim(c, 1).await.unwrap();
    }
    w.drive().await;
    for o in [&a, &b] {
        assert_eq!(w.order(&o.id).await.state, OrderState::Ready);
        assert_eq!(w.servers_for(&o.id), 1, "one server for {:?}", o.order_ref);
    }
}

#[tokio::test(start_paused = true)]
async fn a_step_under_a_lost_lease_claims_nothing() {
    let w = world();
    let a = w.accept("lost-a", 7).await;
    let stale = w.engine.claim(1).await.unwrap().pop().unwrap();
    // The worker stalls past its lease; another takes the order over.
    w.clock
        .sleep(w.engine_lease() + Duration::from_secs(1))
        .await;
    let clock: std::sync::Arc<dyn provisioner::clock::Clock> = w.clock.clone();
    let other = VirtualWorld::engine_on(&w.store, &w.sim, &clock, RetryPolicy::default());
    assert_eq!(ids(&other.claim(1).await.unwrap()), vec![a.id.clone()]);
    let b = w.accept("lost-b", 8).await;

    let worked = w.engine.work_then_claim(stale, 1).await;
    assert!(
        matches!(worked, Err(EngineError::Store(StoreError::LeaseLost(ref id))) if *id == a.id),
        "{worked:?}"
    );
    assert!(
        w.store.purchases(&a.id).await.unwrap().is_empty(),
        "nothing bought"
    );
    assert_eq!(
        ids(&other.claim(1).await.unwrap()),
        vec![b.id.clone()],
        "the next order was not claimed by the fenced-out worker"
    );
}
