//! The deterministic simulation: thousands of orders through the real engine, the in-memory
//! store and the simulator in-process, under seeded random faults and worker crashes, on
//! virtual time. Every order is then checked against the promises the service makes.
//!
//! Determinism: a current-thread runtime with paused time, every random draw from seeded
//! generators, `biased` selects. The same seed replays the same run, so a failure is reported
//! with its seed and can be reproduced with `bench strategies --seed`.

mod crash;
pub mod renewals;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::ExposeSecret;
use tokio::task::JoinSet;

use crate::clock::{Clock, ScaledClock, Timestamp};
use crate::crypto::Cipher;
use crate::domain::order::CustomerRequest;
use crate::domain::{
    NewOrder, Order, OrderId, OrderRequest, OrderState, Phase, PurchaseOutcome, Resolution,
};
use crate::engine::{Engine, WorkerSettings};
use crate::policy::RetryPolicy;
use crate::simulator::{FaultProfile, PackageSpec, PurchaseRecord, Simulator};
use crate::store::Store;
use crate::store::memory::MemoryStore;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimulationConfig {
    /// Seeds the simulator's faults, arrivals and crashes.
    pub seed: u64,
    /// Orders to run.
    pub orders: usize,
    /// Upstream faults.
    pub profile: FaultProfile,
    /// The policy under test (its `on_unknown` is the strategy).
    pub policy: RetryPolicy,
    /// Chance that the worker running a step is dropped mid-step (a crash) and restarted from the store.
    pub crash_rate: f64,
    /// Workers sharing the store.
    pub workers: usize,
    /// Packages in the catalog (single flight serialises purchases within a package).
    pub packages: usize,
    /// Arrivals spread uniformly over this window.
    pub arrival_window: Duration,
}

impl SimulationConfig {
    /// The defaults used by the test suite and the benchmark for `orders` orders.
    pub fn new(seed: u64, orders: usize, profile: FaultProfile, policy: RetryPolicy) -> Self {
        // Packages are /24s (three-octet names, 256 addresses), as SmartVPS's usually are and
        // as discovery scans need, so each takes at most 100 orders; load per package is held
        // at about 25 orders an hour by stretching the arrival window.
        let packages = orders.div_ceil(100).clamp(1, 2000);
        debug_assert!(
            packages <= 65_536,
            "package names are 10.<p / 256>.<p % 256>"
        );
        let hours = (orders as f64 / packages as f64 / 25.0).max(1.0);
        Self {
            seed,
            orders,
            profile,
            policy,
            crash_rate: 0.02,
            workers: 3,
            packages,
            arrival_window: Duration::from_secs_f64(hours * 3600.0),
        }
    }
}

/// What happened, and what broke.
#[derive(Clone, Debug, Default)]
pub struct SimulationReport {
    /// The seed, to replay.
    pub seed: u64,
    /// Orders run.
    pub orders: usize,
    /// Orders that ended ready.
    pub ready: usize,
    /// Orders that ended failed.
    pub failed: usize,
    /// Orders that ended needing attention.
    pub needs_attention: usize,
    /// Orders that went to an admin although SmartVPS sold nothing for them (other resellers
    /// moved the stock while an outcome was unknown): the price of never guessing.
    pub false_alarms: usize,
    /// Orders for which SmartVPS sold more than one server, every one within the purchase
    /// horizon: a broken promise under `reconcile`.
    pub duplicates: usize,
    /// Orders touched by a purchase that completed after the purchase horizon
    /// (`policy.buy.horizon`): their own purchase did, or the server they hold is such a
    /// purchase of another order's. Counted apart, with what went wrong for them in
    /// [`SimulationReport::residual`]: the residual risk that setting controls, which no
    /// evidence can remove (such a purchase looks like another reseller's, and a scan may
    /// deliver it to the wrong order).
    pub beyond_horizon: usize,
    /// What went wrong for the orders counted in `beyond_horizon` (at most 50 lines): the cost
    /// of a horizon set too short, not a broken promise.
    pub residual: Vec<String>,
    /// Unknown purchases settled by the late reply heard on the open connection.
    pub by_late_reply: usize,
    /// Unknown purchases settled by a discovery scan finding the server.
    pub by_scan: usize,
    /// Servers bought upstream that no order holds and no order needing attention lists (as a
    /// scan's candidate, or in its ledger as a reply's address): paid for, and invisible to the
    /// admin.
    pub orphans: usize,
    /// Servers bought in all.
    pub servers: usize,
    /// Upstream calls in all.
    pub upstream_calls: u64,
    /// Steps whose worker was dropped mid-step.
    pub crashes: u64,
    /// Intake to ready, for ready orders (simulated time).
    pub time_to_ready: Vec<Duration>,
    /// Longest intake-to-final-state time (simulated).
    pub longest: Duration,
    /// Orders needing attention by cause ([`attention_cause`]).
    pub attention_causes: std::collections::BTreeMap<&'static str, usize>,
    /// Broken promises, one line each (empty when all held).
    pub violations: Vec<String>,
}

impl SimulationReport {
    /// The `q` quantile (0..=1) of time to ready.
    pub fn time_to_ready_quantile(&self, q: f64) -> Option<Duration> {
        let mut v = self.time_to_ready.clone();
        if v.is_empty() {
            return None;
        }
        v.sort();
        let idx = ((v.len() - 1) as f64 * q).round() as usize;
        v.get(idx).copied()
    }

    /// Upstream calls per order.
    pub fn calls_per_order(&self) -> f64 {
        self.upstream_calls as f64 / self.orders.max(1) as f64
    }
}

/// Runs a simulation on a fresh current-thread runtime with paused (virtual) time. Paused time
/// needs tokio's test-util, hence the `bench` feature.
///
/// # Panics
/// Only if a tokio runtime cannot be built.
#[cfg(feature = "bench")]
pub fn run_virtual(cfg: &SimulationConfig) -> SimulationReport {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime with paused time");
    rt.block_on(run(cfg))
}

/// Runs a simulation. Must run on a current-thread runtime with paused time.
pub async fn run(cfg: &SimulationConfig) -> SimulationReport {
    let clock = Arc::new(ScaledClock::virtual_at_epoch());
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let sim = Simulator::new(Arc::clone(&dyn_clock), cfg.seed);
    let packages = cfg.packages.max(1);
    for p in 0..packages {
        // Three-group names (10.<p / 256>.<p % 256>): 256 addresses each, of which 250 are for
        // sale, enough for the at most 100 orders a package gets plus other resellers' buys.
        let name = format!("10.{}.{}", p / 256, p % 256);
        sim.add_package(
            PackageSpec::new(1000 + p as u32, &name, 250).expect("a valid package name"),
        );
    }
    sim.set_fault_profile(Some(cfg.profile.clone()));
    let store = Arc::new(MemoryStore::new());
    let dyn_store: Arc<dyn Store> = Arc::new(crash::CrashingStore(store.clone()));
    let cipher =
        Arc::new(Cipher::from_hex(&Cipher::generate_key()).expect("a generated key is valid"));
    let settings = WorkerSettings::for_policy(&cfg.policy);
    let engines: Vec<Arc<Engine>> = (0..cfg.workers.max(1))
        .map(|_| {
            Arc::new(Engine::new(
                Arc::clone(&dyn_store),
                Arc::new(sim.provider()),
                Arc::clone(&dyn_clock),
                cfg.policy.clone(),
                Arc::clone(&cipher),
                settings.clone(),
            ))
        })
        .collect();

    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x5eed_c0de);
    let start = clock.now();
    let mut arrivals: Vec<(Timestamp, usize)> = (0..cfg.orders)
        .map(|i| {
            (
                start.plus(cfg.arrival_window.mul_f64(rng.random::<f64>())),
                i,
            )
        })
        .collect();
    arrivals.sort();
    let last_arrival = arrivals.last().map_or(start, |a| a.0);
    // Generous: no order should need more than a few hours even behind a busy package.
    let horizon = last_arrival.plus(Duration::from_secs(12 * 3600));
    let mut arrivals = arrivals.into_iter().peekable();
    let mut ids: Vec<OrderId> = Vec::with_capacity(cfg.orders);
    let mut tasks: JoinSet<bool> = JoinSet::new();
    let mut report = SimulationReport {
        seed: cfg.seed,
        orders: cfg.orders,
        ..SimulationReport::default()
    };
    let step_bound = settings.lease;

    loop {
        let now = clock.now();
        while let Some((_, i)) = arrivals.next_if(|(at, _)| *at <= now) {
            let request = OrderRequest {
                order_ref: format!("sim-{}-{i}", cfg.seed),
                package: i64::from(1000 + (i % packages) as u32),
                ram_gb: 1 + (i % 8) as i64,
                customer: CustomerRequest {
                    email: format!("c{i}@example.com"),
                    name: format!("Customer {i}"),
                },
                os: None,
            };
            let new = NewOrder::parse(&request).expect("generated requests are valid");
            match engines[0].accept(new).await {
                Ok(crate::store::Intake::Created(o)) => ids.push(o.id),
                other => report
                    .violations
                    .push(format!("intake of order {i} failed: {other:?}")),
            }
        }
        for engine in &engines {
            let claimed = match engine.claim(256).await {
                Ok(c) => c,
                Err(e) => {
                    report.violations.push(format!("claim failed: {e}"));
                    Vec::new()
                }
            };
            for c in claimed {
                let engine = Arc::clone(engine);
                let crash = rng.random_bool(cfg.crash_rate.clamp(0.0, 1.0));
                let after = step_bound.mul_f64(rng.random::<f64>() * 0.9);
                // Half the crashes strike at a moment in time (mid-call), half between two
                // store operations (the process dies after its k-th write of the step).
                let at_op = crash && rng.random_bool(0.5);
                let ops = if at_op {
                    rng.random_range(0..8)
                } else {
                    u32::MAX
                };
                tasks.spawn(crash::with_crash_after(ops, async move {
                    if at_op {
                        let _ = engine.work_one(c).await;
                        true
                    } else if crash {
                        // The worker dies mid-step: its future is dropped wherever it is, its
                        // lease stays until expiry, and another worker takes over from the store.
                        tokio::time::timeout(after, engine.work_one(c))
                            .await
                            .is_err()
                    } else {
                        let _ = engine.work_one(c).await;
                        false
                    }
                }));
            }
        }
        let next_due = store.next_due().await.ok().flatten();
        let next = [next_due, arrivals.peek().map(|a| a.0)]
            .into_iter()
            .flatten()
            .min();
        if tasks.is_empty() && next.is_none() {
            break;
        }
        if clock.now() > horizon {
            report.violations.push(format!(
                "simulation passed its horizon with work left (seed {})",
                cfg.seed
            ));
            break;
        }
        let wait = next.map_or(Duration::from_secs(60), |t| t.since(clock.now()));
        tokio::select! {
            biased;
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if matches!(done, Ok(true)) { report.crashes += 1; }
            }
            () = clock.sleep(wait) => {}
            // A late buyvps reply made an order due sooner.
            _ = futures_util::future::select_all(engines.iter().map(|e| Box::pin(e.woken()))) => {}
        }
    }
    while let Some(done) = tasks.join_next().await {
        if matches!(done, Ok(true)) {
            report.crashes += 1;
        }
    }

    check(cfg, &sim, &*store, &cipher, &ids, &mut report).await;
    report
}

/// Checks every order against the service's promises.
async fn check(
    cfg: &SimulationConfig,
    sim: &Simulator,
    store: &dyn Store,
    cipher: &Cipher,
    ids: &[OrderId],
    report: &mut SimulationReport,
) {
    let mut bought: HashMap<String, Vec<PurchaseRecord>> = HashMap::new();
    let purchases = sim.purchases();
    report.servers = purchases.len();
    for p in purchases {
        let order = p
            .request_id
            .as_deref()
            .and_then(|r| r.split('/').next())
            .unwrap_or("")
            .to_string();
        bought.entry(order).or_default().push(p);
    }
    let calls = sim.calls();
    report.upstream_calls = calls.ipstock + calls.buy + calls.status + calls.other;
    let mut per_package: HashMap<u32, Vec<(Timestamp, Timestamp, String)>> = HashMap::new();
    let mut held: std::collections::HashSet<Ipv4Addr> = std::collections::HashSet::new();
    let seed = cfg.seed;
    // Purchases that completed after the horizon, and the orders that made them: what they
    // cause is the residual risk, counted apart from broken promises.
    let past_horizon =
        |s: &PurchaseRecord| s.completed_at > s.requested_at.plus(cfg.policy.horizon);
    let late_ips: std::collections::HashSet<Ipv4Addr> = bought
        .values()
        .flatten()
        .filter(|s| past_horizon(s))
        .map(|s| s.ip)
        .collect();
    let late_orders: std::collections::HashSet<String> = bought
        .iter()
        .filter(|(_, servers)| servers.iter().any(past_horizon))
        .map(|(order, _)| order.clone())
        .collect();
    let tainted_now = std::cell::Cell::new(false);
    let mut violate = |report: &mut SimulationReport, id: &OrderId, what: String| {
        if tainted_now.get() {
            if report.residual.len() < 50 {
                report
                    .residual
                    .push(format!("seed {seed}, order {id}: {what}"));
            }
            return;
        }
        if report.violations.len() < 50 {
            report
                .violations
                .push(format!("seed {seed}, order {id}: {what}"));
        }
    };

    for id in ids {
        tainted_now.set(false);
        let Ok(Some(order)) = store.order(id).await else {
            violate(report, id, "order lost".into());
            continue;
        };
        let ledger = store.purchases(id).await.unwrap_or_default();
        let timeline = store.timeline(id).await.unwrap_or_default();
        let servers = bought
            .get(id.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let end = order.ready_at.unwrap_or(order.updated_at);
        report.longest = report.longest.max(end.since(order.created_at));

        for p in &ledger {
            if let Some(Resolution::Adopted { ip }) = p.resolution {
                if p.late_ip == Some(ip) {
                    report.by_late_reply += 1;
                } else {
                    report.by_scan += 1;
                }
            }
        }
        if let Some(ip) = order.server_ip {
            held.insert(ip);
        }
        if order.state == OrderState::NeedsAttention {
            // The addresses its ledger records (a reply or a late reply that named a server we
            // must not deliver) are before the admin too, in the reason and the ledger panel.
            held.extend(ledger.iter().flat_map(|p| {
                let replied = match p.outcome {
                    Some(PurchaseOutcome::Succeeded { ip }) => Some(ip),
                    _ => None,
                };
                [replied, p.late_ip].into_iter().flatten()
            }));
            held.extend(
                store
                    .candidates(id)
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .map(|d| d.ip),
            );
            // So are the addresses its reason names for the admin to check in the panel
            // (status gave no definite answer for them: a server may hide there).
            if let Some(f) = &order.failure {
                held.extend(addresses_in(&f.reason));
            }
        }
        if std::env::var_os("SIM_RIVALS").is_some() {
            trace_rivals(store, &order, &ledger).await;
        }
        match order.state {
            OrderState::Ready => report.ready += 1,
            OrderState::Failed => report.failed += 1,
            OrderState::NeedsAttention => {
                report.needs_attention += 1;
                let reason = order.failure.as_ref().map_or("", |f| f.reason.as_str());
                *report
                    .attention_causes
                    .entry(attention_cause(reason))
                    .or_default() += 1;
                if servers.is_empty() {
                    report.false_alarms += 1;
                }
            }
            other => violate(report, id, format!("stuck in {other}")),
        }
        let tainted = late_orders.contains(id.as_str())
            || order.server_ip.is_some_and(|ip| late_ips.contains(&ip))
            || ledger.iter().any(|p| {
                matches!(p.resolution, Some(Resolution::Adopted { ip }) if late_ips.contains(&ip))
            });
        tainted_now.set(tainted);
        if tainted {
            report.beyond_horizon += 1;
        } else if servers.len() > 1 {
            report.duplicates += 1;
            let explained = cfg.policy.on_unknown == crate::policy::OnUnknown::Retry;
            if !explained {
                violate(
                    report,
                    id,
                    format!(
                        "{} servers bought: {:?}",
                        servers.len(),
                        servers.iter().map(|s| s.ip).collect::<Vec<_>>()
                    ),
                );
            }
        }
        let before = report.violations.len();
        check_order(
            &order,
            &ledger,
            servers,
            report,
            &mut violate,
            cipher,
            store,
            sim,
        )
        .await;
        if std::env::var_os("SIM_TRACE").is_some()
            && (report.violations.len() > before || servers.len() > 1)
        {
            eprintln!("--- order {id} ({}):", order.state);
            for e in &timeline {
                eprintln!(
                    "  {:>6}s {}",
                    e.at.since(order.created_at).as_secs(),
                    e.message
                );
            }
            for p in &ledger {
                eprintln!(
                    "  ledger #{} attempt {} sent +{}s outcome {:?} resolution {:?} late {:?}",
                    p.id,
                    p.attempt,
                    p.sent_at.since(order.created_at).as_secs(),
                    p.outcome,
                    p.resolution,
                    p.late_ip
                );
            }
            for s in servers {
                eprintln!(
                    "  upstream {} pkg {} requested +{}s completed +{}s req {:?} other_pkg {}",
                    s.ip,
                    s.package,
                    s.requested_at.since(order.created_at).as_secs(),
                    s.completed_at.since(order.created_at).as_secs(),
                    s.request_id,
                    s.from_other_package
                );
            }
        }

        let calls_logged = timeline
            .iter()
            .filter(|e| e.message.contains("Calling buyVps - attempt"))
            .count();
        if calls_logged != ledger.len() {
            violate(
                report,
                id,
                format!(
                    "timeline shows {calls_logged} buyVps calls, the ledger {}",
                    ledger.len()
                ),
            );
        }
        for p in &ledger {
            match (&p.outcome, &p.resolution) {
                (None, _) => violate(
                    report,
                    id,
                    format!("purchase {} has no outcome at the end", p.id),
                ),
                (Some(PurchaseOutcome::Unknown { .. }), None) => violate(
                    report,
                    id,
                    format!("unknown purchase {} never settled", p.id),
                ),
                _ => {}
            }
            if let Some(decided) = p.decided_at {
                per_package.entry(p.package_id.0).or_default().push((
                    p.sent_at,
                    decided,
                    id.to_string(),
                ));
            }
        }
    }
    // Orphans: servers sold for our orders that no order holds or lists as a candidate; those
    // completed after the horizon are the residual risk, counted apart.
    report.orphans = bought
        .iter()
        .filter(|(order, _)| !order.is_empty())
        .flat_map(|(_, servers)| servers.iter())
        .filter(|s| !held.contains(&s.ip))
        .filter(|s| !past_horizon(s))
        .count();
    if std::env::var_os("SIM_ORPHANS").is_some() {
        trace_orphans(store, &bought, &held).await;
    }
    // Single flight: no two purchases of one package were in flight at once.
    for (pkg, mut spans) in per_package {
        spans.sort();
        for pair in spans.windows(2) {
            if pair[1].0 < pair[0].1 && report.violations.len() < 50 {
                report.violations.push(format!(
                    "seed {seed}: package {pkg} had overlapping purchases for orders {} and {}",
                    pair[0].2, pair[1].2
                ));
            }
        }
    }
}

/// Prints, for each orphan (`SIM_ORPHANS=1`), the order it was sold for, with its state,
/// reason, ledger, the server's inventory entry and the end of its timeline: why no order holds
/// it or lists it.
async fn trace_orphans(
    store: &dyn Store,
    bought: &HashMap<String, Vec<PurchaseRecord>>,
    held: &std::collections::HashSet<Ipv4Addr>,
) {
    for (order, servers) in bought {
        let Ok(id) = OrderId::parse(order) else {
            continue;
        };
        for s in servers.iter().filter(|s| !held.contains(&s.ip)) {
            let o = store.order(&id).await.ok().flatten();
            eprintln!(
                "=== orphan {} (pkg {} from pkg {}, other_pkg {}, ram {}, requested {} completed {}) sold for order {id}",
                s.ip,
                s.package,
                s.address_package,
                s.from_other_package,
                s.ram_gb,
                s.requested_at,
                s.completed_at
            );
            if let Some(o) = &o {
                eprintln!(
                    "  state {} ip {:?} created {} reason {:?}",
                    o.state,
                    o.server_ip,
                    o.created_at,
                    o.failure.as_ref().map(|f| f.reason.clone())
                );
            }
            for p in store.purchases(&id).await.unwrap_or_default() {
                eprintln!(
                    "  ledger #{} attempt {} pkg {} sent {} decided {:?} outcome {:?} resolution {:?} late {:?} stock {:?}->{:?}",
                    p.id,
                    p.attempt,
                    p.package_id.0,
                    p.sent_at,
                    p.decided_at,
                    p.outcome,
                    p.resolution,
                    p.late_ip,
                    p.stock_before,
                    p.stock_after
                );
            }
            let inv = store
                .discovered(s.address_package)
                .await
                .unwrap_or_default()
                .into_iter()
                .find(|d| d.ip == s.ip);
            eprintln!("  inventory {inv:?}");
            if let Some(owner) = inv.as_ref().and_then(|d| d.candidate_for.clone()) {
                let other = store.order(&owner).await.ok().flatten();
                eprintln!(
                    "  listed for {owner}: {:?}",
                    other.map(|o| (o.state, o.server_ip))
                );
            }
            for e in store.timeline(&id).await.unwrap_or_default() {
                eprintln!("  {} {}", e.at, e.message);
            }
        }
    }
}

/// Prints (`SIM_RIVALS=1`), for an order sent to an admin because another order's purchase
/// could own its one candidate, each rival's purchases: package (same or other), resolution and
/// stock evidence, to see what the rival rule weighed.
async fn trace_rivals(store: &dyn Store, order: &Order, ledger: &[crate::domain::Purchase]) {
    let Some(reason) = order.failure.as_ref().map(|f| f.reason.as_str()) else {
        return;
    };
    let Some(at) = reason.find("unsettled purchases of order(s) ") else {
        return;
    };
    let ours = ledger.last();
    let rest = &reason[at + "unsettled purchases of order(s) ".len()..];
    let ids = rest.split(" could").next().unwrap_or("");
    eprintln!(
        "=== rival case {} pkg {} sent {:?} stock {:?}->{:?}",
        order.id,
        order.package_id.0,
        ours.map(|p| p.sent_at),
        ours.and_then(|p| p.stock_before),
        ours.and_then(|p| p.stock_after)
    );
    for id in ids
        .split(", ")
        .filter_map(|i| OrderId::parse(i.trim()).ok())
    {
        let other = store.order(&id).await.ok().flatten();
        for p in store.purchases(&id).await.unwrap_or_default() {
            if !p.is_open_unknown() {
                continue;
            }
            eprintln!(
                "  rival {id} ({:?}) pkg {} same {} sent {} resolution {:?} stock {:?}->{:?}",
                other.as_ref().map(|o| o.state),
                p.package_id.0,
                p.package_id == order.package_id,
                p.sent_at,
                p.resolution
                    .as_ref()
                    .map(|r| format!("{r:?}").chars().take(60).collect::<String>()),
                p.stock_before,
                p.stock_after
            );
        }
    }
}

/// Every IPv4 address written in `text` (runs of digits and dots that parse as one).
fn addresses_in(text: &str) -> impl Iterator<Item = Ipv4Addr> + '_ {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| w.trim_matches('.').parse().ok())
}

/// Why an order went to an admin, in a few words, read from its reason: what the bench's table
/// of causes counts.
pub fn attention_cause(reason: &str) -> &'static str {
    let scan = reason.find("Scan: ").map(|i| &reason[i..]);
    match scan {
        None if reason.contains("which is not in package") => {
            "reply named another package's address"
        }
        None if reason.contains("a late reply says") && reason.contains("already holds it") => {
            "late reply named an address another order holds"
        }
        None if reason.contains("a late reply says") => {
            "late reply named another package's address"
        }
        None if reason.contains("could not read stock") || reason.contains("stock list") => {
            "stock list unreadable"
        }
        None => "other",
        Some(s) if s.contains("too many to scan") => "package too wide to scan",
        Some(s) if s.contains("unsettled purchases of order") => {
            "scan: one candidate, another order's purchase could own it"
        }
        Some(s) if s.contains("scan is incomplete") => "scan: incomplete (status unanswered)",
        Some(s) if s.contains("answered `error` fewer than") => {
            "scan: `error` replies not confirmed"
        }
        Some(s) if s.contains("adopt the right one") => "scan: several candidates",
        Some(s) if s.contains("ran dry") => "scan: none, the package ran dry",
        Some(s) if s.contains("did not fall") => "scan: the package's stock did not fall",
        Some(_) => "scan: other",
    }
}

#[allow(clippy::too_many_arguments)]
async fn check_order(
    order: &Order,
    ledger: &[crate::domain::Purchase],
    servers: &[PurchaseRecord],
    report: &mut SimulationReport,
    violate: &mut impl FnMut(&mut SimulationReport, &OrderId, String),
    cipher: &Cipher,
    store: &dyn Store,
    sim: &Simulator,
) {
    let id = &order.id;
    let upstream: Vec<Ipv4Addr> = servers.iter().map(|s| s.ip).collect();
    match order.state {
        OrderState::Ready => {
            let Some(ip) = order.server_ip else {
                violate(report, id, "ready without an address".into());
                return;
            };
            if !upstream.contains(&ip) {
                violate(report, id, {
                    let sold = sim.purchases().into_iter().find(|p| p.ip == ip);
                    let owner = sold
                        .as_ref()
                        .and_then(|p| p.request_id.as_deref())
                        .and_then(|r| r.split('/').next())
                        .and_then(|o| OrderId::parse(o).ok());
                    let (owner_order, owner_ledger) = match &owner {
                        Some(o) => (
                            store.order(o).await.ok().flatten(),
                            store.purchases(o).await.unwrap_or_default(),
                        ),
                        None => (None, Vec::new()),
                    };
                    format!(
                        "ready with {ip}, which SmartVPS did not sell for it ({upstream:?}); sold as {sold:?}; \
                             its order {:?} ledger {owner_ledger:?}; this ledger {ledger:?}",
                        owner_order.map(|o| (o.state, o.created_at, o.ram_gb))
                    )
                });
            }
            let delivered_via_ledger = ledger.iter().any(|p| {
                matches!(p.outcome, Some(PurchaseOutcome::Succeeded { ip: got }) if got == ip)
                    || matches!(p.resolution, Some(Resolution::Adopted { ip: got }) if got == ip)
            });
            if !delivered_via_ledger {
                violate(report, id, format!("ledger does not record {ip}"));
            }
            match store.credentials(id).await {
                Ok(Some(sealed)) => match cipher.open(ip, &sealed) {
                    Ok(creds) => {
                        let upstream_pw = sim
                            .server(ip)
                            .map(|s| s.password.expose_secret().to_string());
                        if creds.expose_password().is_empty()
                            || upstream_pw.as_deref() != Some(creds.expose_password())
                        {
                            violate(
                                report,
                                id,
                                "stored credentials do not match the server's".into(),
                            );
                        }
                    }
                    Err(e) => violate(report, id, format!("credentials do not decrypt: {e}")),
                },
                _ => violate(report, id, "ready without stored credentials".into()),
            }
            if let Some(at) = order.ready_at {
                report.time_to_ready.push(at.since(order.created_at));
            }
        }
        OrderState::Failed => match order.failure.as_ref().map(|f| f.phase) {
            Some(Phase::Buy) if !upstream.is_empty() => {
                violate(
                    report,
                    id,
                    format!("failed in the buy phase, yet SmartVPS sold {upstream:?}"),
                );
            }
            Some(Phase::Credentials) if order.server_ip.is_none() => {
                violate(
                    report,
                    id,
                    "failed in the credentials phase without the owned address".into(),
                );
            }
            None => violate(report, id, "failed without a reason".into()),
            _ => {}
        },
        OrderState::NeedsAttention
            if order.failure.as_ref().is_none_or(|f| f.reason.is_empty()) =>
        {
            violate(report, id, "needs attention without evidence".into());
        }
        _ => {}
    }
    if order.state != OrderState::Ready
        && order.server_ip.is_none()
        && !upstream.is_empty()
        && order.state != OrderState::NeedsAttention
    {
        violate(
            report,
            id,
            format!("SmartVPS sold {upstream:?} but the order neither holds it nor asks an admin"),
        );
    }
}
