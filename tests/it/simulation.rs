//! The deterministic simulation in `cargo test`: a few thousand orders under random faults and
//! worker crashes, every promise checked per order. A failure names its seed; replay it with
//! `provisioner bench strategies --seed N` or by setting SIM_SEED.

use provisioner::policy::{OnUnknown, RetryPolicy};
use provisioner::simulator::FaultProfile;
use provisioner::tools::chaos::{SimulationConfig, SimulationReport, run};

fn seed() -> u64 {
    std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261128)
}

fn assert_clean(r: &SimulationReport) {
    assert!(
        r.violations.is_empty(),
        "seed {} broke promises:\n{}",
        r.seed,
        r.violations.join("\n")
    );
    assert_eq!(
        r.duplicates, 0,
        "seed {}: duplicate purchases under reconcile",
        r.seed
    );
    assert_eq!(
        r.ready + r.failed + r.needs_attention,
        r.orders,
        "seed {}: every order ends ready, failed or needs_attention",
        r.seed
    );
}

#[tokio::test(start_paused = true)]
async fn hostile_world_with_crashes_never_buys_twice() {
    let cfg = SimulationConfig {
        crash_rate: 0.05,
        ..SimulationConfig::new(
            seed(),
            1500,
            FaultProfile::hostile(),
            RetryPolicy::default(),
        )
    };
    let r = run(&cfg).await;
    assert_clean(&r);
    assert!(
        r.crashes > 20,
        "the run should include worker crashes, had {}",
        r.crashes
    );
    // A third of hostile attempts end without a definite answer and a quarter of those did buy:
    // many orders must go to an admin; none may be bought twice or lost.
    assert!(
        r.needs_attention > 0 && r.ready > 0 && r.failed > 0,
        "{r:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn flaky_world_never_buys_twice() {
    let r = run(&SimulationConfig::new(
        seed() + 1,
        1500,
        FaultProfile::flaky(),
        RetryPolicy::default(),
    ))
    .await;
    assert_clean(&r);
}

#[tokio::test(start_paused = true)]
async fn calm_world_gets_nearly_everyone_a_server() {
    let r = run(&SimulationConfig::new(
        seed() + 2,
        1000,
        FaultProfile::calm(),
        RetryPolicy::default(),
    ))
    .await;
    assert_clean(&r);
    assert!(
        r.ready * 100 >= r.orders * 90,
        "only {} of {} ready",
        r.ready,
        r.orders
    );
}

#[tokio::test(start_paused = true)]
async fn the_literal_strategy_does_buy_twice_in_the_same_world() {
    // The control: the same fault schedule under the seed's blind retries produces duplicates,
    // so the check above is able to see them.
    let policy = RetryPolicy {
        on_unknown: OnUnknown::Retry,
        ..RetryPolicy::default()
    };
    let r = run(&SimulationConfig::new(
        seed() + 1,
        1500,
        FaultProfile::flaky(),
        policy,
    ))
    .await;
    assert!(r.duplicates > 0, "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_replays_the_same_run() {
    let cfg = SimulationConfig {
        crash_rate: 0.05,
        ..SimulationConfig::new(7, 300, FaultProfile::hostile(), RetryPolicy::default())
    };
    let a = run(&cfg).await;
    let b = run(&cfg).await;
    assert_eq!(
        (
            a.ready,
            a.failed,
            a.needs_attention,
            a.servers,
            a.upstream_calls,
            a.crashes,
            a.time_to_ready.clone()
        ),
        (
            b.ready,
            b.failed,
            b.needs_attention,
            b.servers,
            b.upstream_calls,
            b.crashes,
            b.time_to_ready.clone()
        )
    );
}

/// Replays one run from the environment: `SIM_SEED`, `SIM_ORDERS`, `SIM_PROFILE`
/// (calm|flaky|hostile), `SIM_STRATEGY` (reconcile|retry); `SIM_TRACE=1` prints every order
/// that broke a promise. Run with `cargo test --release --test it replay -- --ignored`.
#[tokio::test(start_paused = true)]
#[ignore = "a replay tool: configure it with SIM_* variables"]
async fn replay() {
    let var = |k: &str| std::env::var(k).ok();
    let profile = FaultProfile::named(&var("SIM_PROFILE").unwrap_or_else(|| "hostile".into()))
        .expect("SIM_PROFILE");
    let strategy = OnUnknown::parse(&var("SIM_STRATEGY").unwrap_or_else(|| "reconcile".into()))
        .expect("SIM_STRATEGY");
    let orders = var("SIM_ORDERS")
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let policy = RetryPolicy {
        on_unknown: strategy,
        ..RetryPolicy::default()
    };
    let r = run(&SimulationConfig::new(seed(), orders, profile, policy)).await;
    assert_clean(&r);
}

#[tokio::test(start_paused = true)]
async fn an_operators_short_waits_never_buy_twice_within_the_horizon() {
    // 10 s and 20 s between buy attempts, against purchases that may complete up to the
    // 10-minute horizon: the horizon, not the waits, decides when "nothing was bought".
    let mut policy = RetryPolicy::default();
    policy.buy.delays = vec![
        std::time::Duration::from_secs(10),
        std::time::Duration::from_secs(20),
    ];
    let r = run(&SimulationConfig::new(
        seed() + 3,
        1000,
        FaultProfile::flaky(),
        policy,
    ))
    .await;
    assert_clean(&r);
}

#[tokio::test(start_paused = true)]
async fn purchases_completing_after_the_horizon_are_counted_apart() {
    // A world where one purchase in twenty completes after the horizon: the engine may by then
    // have bought again, and no evidence could have told it. Those orders are the residual risk
    // the horizon setting controls, counted apart; every other promise still holds.
    let profile = FaultProfile {
        buy_beyond_horizon: 0.05,
        ..FaultProfile::flaky()
    };
    let r = run(&SimulationConfig::new(
        seed() + 4,
        1000,
        profile,
        RetryPolicy::default(),
    ))
    .await;
    assert_clean(&r);
    assert!(r.beyond_horizon > 0, "{r:?}");
}
