//! A simulated SmartVPS: a world with packages, stock and servers, scriptable per call, with a
//! seeded random fault model, reachable two ways:
//! - in-process through the [`Provider`](crate::provider::Provider) port ([`SimProvider`]),
//!   deterministic under tokio's paused time, so the seed's 15-minute cases run in milliseconds;
//! - over HTTP speaking the production wire ([`serve`], [`router`]), so the real client is tested
//!   against real bytes and the demo runs without credentials.
//!
//! The property everything else rests on: **a purchase completes upstream independently of its
//! caller.** A buyvps with latency `L` arriving at `t0` completes at `t0 + L` even when the caller
//! timed out, dropped its future or disconnected. The world applies due purchases lazily whenever
//! it is observed (any call or accessor), so no background task is needed and paused time stays
//! deterministic.
//!
//! Files: [`world`] (state and the purchase life cycle), [`script`] (scripted steps and the fault
//! profile), [`catalog`] (the default packages), [`provider`] (the in-process `Provider`),
//! [`http`] (the wire server), [`scenario`] (the seed's named timing cases).

pub mod catalog;
pub mod http;
pub mod provider;
pub mod scenario;
pub mod script;
pub mod world;

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::clock::Clock;
use crate::domain::PackageId;
use crate::provider::StockEntry;

pub use catalog::{PackageSpec, default_catalog};
pub use http::{BuyReplyFormat, Encoding, HttpConfig, StockEncoding, router, serve};
pub use provider::SimProvider;
pub use scenario::Scenario;
pub use script::{BuyEffect, BuyStep, FaultProfile, PackageDefaults, StatusEffect, StatusStep};
pub use world::{CallCounts, PurchaseRecord, ServerInfo, UnknownPackage};

use world::{BuyTicket, Completion, StatusFields, StatusTicket, World};

/// A handle on one simulated SmartVPS. Cheap to clone; clones share the world.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

struct Inner {
    clock: Arc<dyn Clock>,
    seed: u64,
    world: Mutex<World>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("seed", &self.inner.seed)
            .field("world", &*self.lock())
            .finish()
    }
}

impl Simulator {
    /// An empty world on `clock`, with every random draw seeded from `seed`.
    pub fn new(clock: Arc<dyn Clock>, seed: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                clock,
                seed,
                world: Mutex::new(World::new(seed)),
            }),
        }
    }

    /// A world selling `catalog`.
    pub fn with_catalog(
        clock: Arc<dyn Clock>,
        seed: u64,
        catalog: impl IntoIterator<Item = PackageSpec>,
    ) -> Self {
        let sim = Self::new(clock, seed);
        for spec in catalog {
            sim.add_package(spec);
        }
        sim
    }

    /// A world selling [`default_catalog`].
    pub fn with_default_catalog(clock: Arc<dyn Clock>, seed: u64) -> Self {
        Self::with_catalog(clock, seed, default_catalog())
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.inner.seed
    }

    /// The clock the world lives on.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The in-process `Provider` on this world.
    pub fn provider(&self) -> SimProvider {
        SimProvider::new(self.clone())
    }

    /// The lock. A panic elsewhere while holding it leaves the world usable: every mutation is
    /// a few field updates, so a poisoned world is still a consistent world.
    fn lock(&self) -> MutexGuard<'_, World> {
        self.inner
            .world
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The lock, with every purchase due by now completed.
    fn settled(&self) -> MutexGuard<'_, World> {
        let now = self.inner.clock.now();
        let mut w = self.lock();
        w.settle(now);
        w
    }

    // ----- configuration -------------------------------------------------------------------

    /// Adds (or replaces) a package, with the world's default latencies.
    pub fn add_package(&self, spec: PackageSpec) {
        self.settled().add_package(spec);
    }

    /// The id of the package called `name`.
    pub fn package_id(&self, name: &str) -> Option<PackageId> {
        self.lock().package_id(name)
    }

    /// A package's defaults.
    pub fn defaults(&self, pkg: PackageId) -> Option<PackageDefaults> {
        self.lock().defaults(pkg)
    }

    /// Sets a package's defaults (latencies, build time, OS).
    ///
    /// # Errors
    /// When the package does not exist.
    pub fn set_defaults(
        &self,
        pkg: PackageId,
        defaults: PackageDefaults,
    ) -> Result<(), UnknownPackage> {
        self.lock().set_defaults(pkg, defaults)
    }

    /// Sets a package's build time ("late credentials") for purchases from now on.
    ///
    /// # Errors
    /// When the package does not exist.
    pub fn set_build_time(
        &self,
        pkg: PackageId,
        build_time: Duration,
    ) -> Result<(), UnknownPackage> {
        self.lock()
            .update_defaults(pkg, |d| d.build_time = build_time)
    }

    /// Makes a package buyable or not.
    ///
    /// # Errors
    /// When the package does not exist.
    pub fn set_active(&self, pkg: PackageId, active: bool) -> Result<(), UnknownPackage> {
        self.settled().set_active(pkg, active)
    }

    /// Sets a package's free count (restock, or empty it).
    ///
    /// # Errors
    /// When the package does not exist.
    pub fn set_free(&self, pkg: PackageId, free: u32) -> Result<(), UnknownPackage> {
        self.settled().set_free(pkg, free)
    }

    /// Other resellers buy `n` addresses from the package now; returns how many they got.
    ///
    /// # Errors
    /// When the package does not exist.
    pub fn take_stock(&self, pkg: PackageId, n: u32) -> Result<u32, UnknownPackage> {
        self.settled().take_stock(pkg, n)
    }

    /// Appends steps to the package's buy script (consumed one per call, in order).
    ///
    /// # Errors
    /// When the package does not exist.
    pub fn script_buy(
        &self,
        pkg: PackageId,
        steps: impl IntoIterator<Item = BuyStep>,
    ) -> Result<(), UnknownPackage> {
        self.lock().script_buy(pkg, steps.into_iter().collect())
    }

    /// Appends steps to the package's status script: it drives status calls for servers bought
    /// by asking for this package.
    ///
    /// # Errors
    /// When the package does not exist.
    pub fn script_status(
        &self,
        pkg: PackageId,
        steps: impl IntoIterator<Item = StatusStep>,
    ) -> Result<(), UnknownPackage> {
        self.lock().script_status(pkg, steps.into_iter().collect())
    }

    /// Drops whatever is left of the package's scripts.
    ///
    /// # Errors
    /// When the package does not exist.
    pub fn clear_scripts(&self, pkg: PackageId) -> Result<(), UnknownPackage> {
        self.lock().clear_scripts(pkg)
    }

    /// Sets (or with `None` removes) the random fault profile for unscripted calls. The random
    /// stream is the one seeded at construction: the same seed and calls give the same draws.
    pub fn set_fault_profile(&self, profile: Option<FaultProfile>) {
        self.lock().set_fault_profile(profile);
    }

    /// The fault profile in force.
    pub fn fault_profile(&self) -> Option<FaultProfile> {
        self.lock().fault_profile()
    }

    /// Sets ipstock's latency (zero by default: the seed's timings do not count it).
    pub fn set_ipstock_latency(&self, latency: Duration) {
        self.lock().set_ipstock_latency(latency);
    }

    // ----- observation (each settles first) ------------------------------------------------

    /// Every completed purchase, in completion order.
    pub fn purchases(&self) -> Vec<PurchaseRecord> {
        self.settled().purchases().to_vec()
    }

    /// Completed purchases whose request id starts with `request_id_prefix`: `"<order id>/"`
    /// gives one order's purchases across its attempts.
    pub fn purchases_for(&self, request_id_prefix: &str) -> Vec<PurchaseRecord> {
        self.settled()
            .purchases()
            .iter()
            .filter(|p| {
                p.request_id
                    .as_deref()
                    .is_some_and(|r| r.starts_with(request_id_prefix))
            })
            .cloned()
            .collect()
    }

    /// A package's free count.
    pub fn free(&self, pkg: PackageId) -> Option<u32> {
        self.settled().free(pkg)
    }

    /// Calls answered so far.
    pub fn calls(&self) -> CallCounts {
        self.lock().calls()
    }

    /// A server we own.
    pub fn server(&self, ip: Ipv4Addr) -> Option<ServerInfo> {
        self.settled().server(ip)
    }

    /// Whether the server at `ip` is powered on (`None`: not ours).
    pub fn powered_on(&self, ip: Ipv4Addr) -> Option<bool> {
        self.settled().powered_on(ip)
    }

    /// Sets how long `format` and `changeos` take to install an image in a package.
    ///
    /// # Errors
    /// When the package does not exist.
    pub fn set_install_time(
        &self,
        pkg: PackageId,
        install_time: Duration,
    ) -> Result<(), UnknownPackage> {
        self.lock()
            .update_defaults(pkg, |d| d.install_time = install_time)
    }

    /// When a server of ours expires, and how many renewvps calls took effect on it (each
    /// adds a month, whatever it answered).
    pub fn term(&self, ip: Ipv4Addr) -> Option<(crate::clock::Timestamp, u32)> {
        self.settled().term(ip)
    }

    /// Moves a server's expiry, as if it had been bought or renewed at another time. Whether
    /// the address is a server of ours.
    pub fn set_expiry(&self, ip: Ipv4Addr, at: crate::clock::Timestamp) -> bool {
        self.lock().set_expiry(ip, at)
    }

    /// Every server we own, by address.
    pub fn servers(&self) -> Vec<ServerInfo> {
        self.settled().servers()
    }

    /// Purchases registered upstream that have not completed yet.
    pub fn pending_purchases(&self) -> usize {
        self.settled().pending_count()
    }

    /// The stock list, without counting an ipstock call.
    pub fn stock(&self) -> Vec<StockEntry> {
        self.settled().stock()
    }

    // ----- the calls, shared by the in-process provider and the HTTP server ----------------

    /// An ipstock call arrives; returns how long its reply takes.
    pub(crate) fn begin_ipstock(&self) -> Duration {
        let now = self.inner.clock.now();
        self.lock().begin_ipstock(now)
    }

    /// A buyvps call arrives. A buying effect is registered upstream at once.
    pub(crate) fn begin_buy(
        &self,
        package: &str,
        ram_gb: u32,
        request_id: Option<String>,
    ) -> PendingBuy {
        let now = self.inner.clock.now();
        let ticket = self.lock().begin_buy(now, package, ram_gb, request_id);
        PendingBuy {
            sim: self.clone(),
            ticket,
            finished: false,
        }
    }

    /// A status call arrives.
    pub(crate) fn begin_status(&self, ip: Option<Ipv4Addr>) -> PendingStatus {
        let now = self.inner.clock.now();
        let ticket = self.lock().begin_status(now, ip);
        PendingStatus {
            sim: self.clone(),
            ip,
            ticket,
        }
    }

    /// A start, stop, format, changeos or renewvps call arrives; what it does happens now.
    pub(crate) fn begin_action(
        &self,
        action: &str,
        ip: Option<Ipv4Addr>,
        os: Option<&str>,
    ) -> world::ActionTicket {
        let now = self.inner.clock.now();
        self.lock().begin_action(now, action, ip, os)
    }
}

/// What a buyvps call replies once its latency has passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BuyReply {
    /// `success|... Your ip is: <ip>`.
    Success(Ipv4Addr),
    /// The bare `error`.
    Error,
    /// HTTP 500.
    ServerError,
    /// A 2xx that is not a success; the number picks which garbage.
    Garbled(u64),
    /// The call never got an answer (a hang that ended while the caller still waited).
    NoReply,
}

/// A buyvps call in flight. Dropping it unfinished (timeout, dropped future, disconnect) tells
/// the world nobody waits for the reply; the purchase itself completes regardless.
pub(crate) struct PendingBuy {
    sim: Simulator,
    ticket: BuyTicket,
    finished: bool,
}

impl PendingBuy {
    /// How long SmartVPS takes to reply.
    pub(crate) fn latency(&self) -> Duration {
        self.ticket.latency
    }

    /// The reply, after the latency has passed.
    pub(crate) fn finish(mut self) -> BuyReply {
        self.finished = true;
        let now = self.sim.inner.clock.now();
        let completion = self.sim.lock().finish_buy(now, &self.ticket);
        match self.ticket.effect {
            BuyEffect::Succeed | BuyEffect::SucceedInOtherPackage => match completion {
                Some(Completion::Bought(ip)) => BuyReply::Success(ip),
                // Nothing anywhere to sell: SmartVPS says no.
                Some(Completion::NoStock) | None => BuyReply::Error,
            },
            BuyEffect::NoEffect => BuyReply::NoReply,
            BuyEffect::ErrorReply => BuyReply::Error,
            BuyEffect::ServerError | BuyEffect::ServerErrorAfterBuying => BuyReply::ServerError,
            BuyEffect::Garbled => BuyReply::Garbled(self.ticket.due.millis().unsigned_abs()),
        }
    }
}

impl Drop for PendingBuy {
    fn drop(&mut self) {
        if !self.finished
            && let Some(id) = self.ticket.id
        {
            self.sim.lock().abandon(id);
        }
    }
}

/// What a status call replies once its latency has passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StatusReply {
    /// The server's details.
    Fields(StatusFields),
    /// The bare `error` (unknown address, or a scripted error).
    Error,
    /// HTTP 500.
    ServerError,
}

/// A status call in flight.
pub(crate) struct PendingStatus {
    sim: Simulator,
    ip: Option<Ipv4Addr>,
    ticket: StatusTicket,
}

impl PendingStatus {
    /// How long SmartVPS takes to reply.
    pub(crate) fn latency(&self) -> Duration {
        self.ticket.latency
    }

    /// The reply, reflecting the server as it is when the reply is sent.
    pub(crate) fn finish(self) -> StatusReply {
        match self.ticket.effect {
            None | Some(StatusEffect::ErrorReply) => StatusReply::Error,
            Some(StatusEffect::ServerError) => StatusReply::ServerError,
            Some(StatusEffect::Normal) => {
                let now = self.sim.inner.clock.now();
                match self
                    .ip
                    .and_then(|ip| self.sim.lock().status_fields(now, ip))
                {
                    Some(fields) => StatusReply::Fields(fields),
                    None => StatusReply::Error,
                }
            }
        }
    }
}
