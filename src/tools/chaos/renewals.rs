//! The deterministic renewal simulation: ready servers over simulated months, renewvps and
//! status faults, steps cut off mid-flight (a crash: the lease lapses and another step takes
//! over), paid renewals (some webhooks replayed) arriving before the expiry they extend.
//!
//! What it checks: every paid renewal applied upstream exactly as often as the ledger says it
//! was done (once), none unpaid; one given up only after `policy.renew.attempts` definite
//! refusals, with the admins alerted; every server expired at the end, never before its
//! paid-up expiry.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::clock::{Clock, ScaledClock, Timestamp};
use crate::crypto::Cipher;
use crate::domain::order::CustomerRequest;
use crate::domain::{NewOrder, NoticeKind, OrderId, OrderRequest, OrderState, RenewalState};
use crate::engine::{Engine, WorkerSettings};
use crate::policy::RetryPolicy;
use crate::simulator::{FaultProfile, PackageSpec, Simulator};
use crate::store::memory::MemoryStore;
use crate::store::{Intake, Store};

const DAY: Duration = Duration::from_secs(86_400);
const TERM: Duration = Duration::from_secs(30 * 86_400);

/// One run's settings.
#[derive(Clone, Debug)]
pub struct RenewalConfig {
    /// Seeds the simulator and the payments.
    pub seed: u64,
    /// Servers bought and watched.
    pub servers: usize,
    /// Faults of renewvps and status calls (buying runs with none).
    pub profile: FaultProfile,
    /// The engine's policy.
    pub policy: RetryPolicy,
    /// One step in this many is cut off mid-flight.
    pub crash_one_in: u32,
}

impl RenewalConfig {
    /// `servers` servers, seeded, with renewvps and status faults and one crash in thirty.
    pub fn new(seed: u64, servers: usize) -> Self {
        Self {
            seed,
            servers,
            profile: FaultProfile {
                action_hang: 0.08,
                action_error: 0.05,
                action_server_error: 0.05,
                action_server_error_after_acting: 0.05,
                status_error: 0.03,
                ..FaultProfile::default()
            },
            policy: RetryPolicy::default(),
            crash_one_in: 30,
        }
    }
}

/// What a run saw.
#[derive(Clone, Debug, Default)]
pub struct RenewalReport {
    /// Servers watched.
    pub servers: usize,
    /// Renewals paid for (distinct references).
    pub paid: u32,
    /// Webhook replays sent.
    pub replays: u32,
    /// renewvps calls that took effect upstream.
    pub applied: u32,
    /// Renewals given up after definite refusals (admins alerted).
    pub given_up: u32,
    /// Payments refused because an earlier renewal was given up and the server expired.
    pub refused_after_lapse: u32,
    /// renewvps calls sent.
    pub calls: u64,
    /// Steps worked, and of them cut off.
    pub steps: usize,
    /// Steps cut off mid-flight.
    pub crashes: usize,
    /// Broken promises, one line each.
    pub violations: Vec<String>,
}

/// Runs on its own current-thread runtime with paused time (tokio's test-util, hence the
/// `bench` feature).
///
/// # Panics
/// Only if a tokio runtime cannot be built.
#[cfg(feature = "bench")]
pub fn run_virtual(cfg: &RenewalConfig) -> RenewalReport {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime with paused time");
    rt.block_on(run(cfg))
}

/// Runs a simulation. Must run on a current-thread runtime with paused time.
///
/// # Panics
/// When the in-memory store fails (it does not).
pub async fn run(cfg: &RenewalConfig) -> RenewalReport {
    let n = cfg.servers;
    let clock = Arc::new(ScaledClock::virtual_at_epoch());
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let sim = Simulator::new(Arc::clone(&dyn_clock), cfg.seed);
    let free = u32::try_from(n + 10).unwrap_or(u32::MAX);
    sim.add_package(PackageSpec::new(5, "103.82", free).expect("a valid package"));
    let store = Arc::new(MemoryStore::new());
    let cipher =
        Arc::new(Cipher::from_hex(&Cipher::generate_key()).expect("a generated key is valid"));
    let engine = Engine::new(
        store.clone(),
        Arc::new(sim.provider()),
        Arc::clone(&dyn_clock),
        cfg.policy.clone(),
        cipher,
        WorkerSettings::for_policy(&cfg.policy),
    );
    let mut report = RenewalReport {
        servers: n,
        ..RenewalReport::default()
    };
    let mut orders: Vec<OrderId> = Vec::with_capacity(n);
    for i in 0..n {
        let req = OrderRequest {
            order_ref: format!("pay-{i}"),
            package: 5,
            ram_gb: 4,
            customer: CustomerRequest {
                email: "ann@example.com".into(),
                name: "Ann".into(),
            },
            os: None,
        };
        let new = NewOrder::parse(&req).expect("a valid order");
        match engine.accept(new).await.expect("intake") {
            Intake::Created(o) => orders.push(o.id),
            other => report.violations.push(format!("intake: {other:?}")),
        }
    }
    // Buy and deliver every server (no faults yet): ready servers idle until the sweep.
    for _ in 0..100_000 {
        engine.run_due_once().await.expect("a step");
        match store.next_due().await.expect("next due") {
            Some(at) => clock.sleep(at.since(clock.now())).await,
            None => break,
        }
    }
    let mut servers: Vec<Ipv4Addr> = Vec::with_capacity(n);
    for id in &orders {
        match store
            .order(id)
            .await
            .expect("read")
            .and_then(|o| o.server_ip)
        {
            Some(ip) => servers.push(ip),
            None => {
                report.violations.push(format!("{id}: never delivered"));
                return report;
            }
        }
    }
    sim.set_fault_profile(Some(cfg.profile.clone()));

    // Payments: (when, server index, renewal_ref), each before the expiry it extends.
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x0e_e14);
    let mut paid = vec![0u32; n];
    let mut arrivals: Vec<(Timestamp, usize, String)> = Vec::new();
    for (i, ip) in servers.iter().enumerate() {
        let Some((first_expiry, _)) = sim.term(*ip) else {
            continue;
        };
        paid[i] = u32::try_from(i % 3).unwrap_or(0);
        for k in 0..paid[i] {
            let due = first_expiry.plus(TERM * k);
            let at = due.minus(Duration::from_secs(rng.random_range(86_400..10 * 86_400)));
            let reference = format!("renew-{i}-{k}");
            arrivals.push((at, i, reference.clone()));
            if rng.random_bool(0.3) {
                report.replays += 1;
                let replay = at.plus(Duration::from_secs(rng.random_range(1..2 * 86_400)));
                arrivals.push((replay, i, reference));
            }
        }
    }
    report.paid = paid.iter().sum();
    arrivals.sort();
    let mut arrivals = arrivals.into_iter().peekable();
    let end = clock.now().plus(100 * DAY);
    let mut next_sweep = clock.now();
    let calls_before = sim.calls().other;
    // Payments refused, per server: a violation unless an earlier renewal was given up.
    let mut refused: Vec<Vec<String>> = vec![Vec::new(); n];
    while clock.now() < end {
        let now = clock.now();
        while let Some((at, i, reference)) = arrivals.peek().cloned()
            && at <= now
        {
            arrivals.next();
            if let Err(e) = engine
                .storefront_renewal(&orders[i], &reference, "shop")
                .await
            {
                refused[i].push(format!("{}: {reference} at {at} refused: {e}", orders[i]));
            }
        }
        if now >= next_sweep {
            engine.sweep_terms_once().await.expect("sweep");
            next_sweep = now.plus(Duration::from_secs(3600));
        }
        let claimed = engine.claim(64).await.expect("claim");
        let mut work = Vec::new();
        for c in claimed {
            report.steps += 1;
            let cut = rng
                .random_bool(1.0 / f64::from(cfg.crash_one_in.max(1)))
                .then(|| Duration::from_millis(rng.random_range(1..120_000)));
            if cut.is_some() {
                report.crashes += 1;
            }
            let engine = &engine;
            work.push(async move {
                match cut {
                    Some(after) => {
                        let _ = tokio::time::timeout(after, engine.work_one(c)).await;
                    }
                    None => {
                        let _ = engine.work_one(c).await;
                    }
                }
            });
        }
        let worked = !work.is_empty();
        join_all(work).await;
        if worked {
            continue;
        }
        let next = [
            store.next_due().await.expect("next due"),
            arrivals.peek().map(|a| a.0),
            Some(next_sweep),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(end);
        let now = clock.now();
        // Due but not claimable yet (a cut-off step's lease): let virtual time run on.
        clock
            .sleep(next.since(now).max(Duration::from_secs(1)))
            .await;
    }
    report.calls = sim.calls().other - calls_before;
    check(
        &sim,
        &*store,
        &orders,
        &servers,
        &paid,
        &refused,
        &mut report,
    )
    .await;
    report
}

async fn check(
    sim: &Simulator,
    store: &dyn Store,
    orders: &[OrderId],
    servers: &[Ipv4Addr],
    paid: &[u32],
    refused: &[Vec<String>],
    report: &mut RenewalReport,
) {
    let alerts: HashSet<OrderId> = store
        .due_notices(Timestamp(i64::MAX), usize::MAX)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.kind == NoticeKind::AdminRenewalFailed)
        .map(|n| n.order_id)
        .collect();
    for (i, id) in orders.iter().enumerate() {
        let Some((expires_at, renewed)) = sim.term(servers[i]) else {
            continue;
        };
        report.applied += renewed;
        let renewals = store.renewals(id).await.unwrap_or_default();
        let done = renewals
            .iter()
            .filter(|r| r.state == RenewalState::Done)
            .count();
        let taken = renewals.len();
        let gave_up = renewals.iter().any(|r| r.state == RenewalState::Failed);
        // Each refused payment is a distinct reference (replays of one count once).
        let mut refused_refs: Vec<&str> = refused[i]
            .iter()
            .filter_map(|line| line.split(' ').nth(1))
            .collect();
        refused_refs.sort_unstable();
        refused_refs.dedup();
        if gave_up {
            report.refused_after_lapse += u32::try_from(refused_refs.len()).unwrap_or(0);
        } else {
            report.violations.extend(refused[i].iter().cloned());
        }
        if renewed as usize != done || taken + refused_refs.len() != paid[i] as usize {
            report.violations.push(format!(
                "{id}: {renewed} renewals upstream, {done} done in the ledger, {taken} taken, {} paid",
                paid[i]
            ));
        }
        for r in renewals.iter().filter(|r| r.state != RenewalState::Done) {
            report.given_up += 1;
            let definite = r.state == RenewalState::Failed
                && r.result
                    .as_deref()
                    .is_some_and(|t| t.contains("not renewed after"));
            if !definite || !alerts.contains(id) {
                report.violations.push(format!(
                    "{id}: renewal {} ended {:?}: {:?}",
                    r.renewal_ref, r.state, r.result
                ));
            }
        }
        let Some(order) = store.order(id).await.ok().flatten() else {
            continue;
        };
        if order.state != OrderState::Expired {
            report
                .violations
                .push(format!("{id}: {} at the end, not expired", order.state));
            continue;
        }
        let day = i64::try_from(DAY.as_millis()).unwrap_or(i64::MAX);
        let paid_up = Timestamp(expires_at.millis() - expires_at.millis() % day);
        let lapsed = store
            .timeline(id)
            .await
            .unwrap_or_default()
            .into_iter()
            .find(|e| e.message.contains("with no renewal: expired"))
            .map(|e| e.at);
        if lapsed.is_none_or(|at| at < paid_up) {
            report
                .violations
                .push(format!("{id}: expired at {lapsed:?}, paid up to {paid_up}"));
        }
    }
}
