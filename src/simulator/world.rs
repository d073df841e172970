//! The simulated SmartVPS's state: packages and their stock, the servers we own, purchases still
//! in flight upstream, the purchase log and call counters.
//!
//! Everything here is synchronous and takes the current time as an argument; the
//! [`Simulator`](super::Simulator) handle owns the clock and the lock. Purchases complete
//! *lazily*: every entry point first settles the purchases due by `now`, so a
//! purchase completes upstream whether or not its caller is still waiting.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::{ExposeSecret, SecretString};

use super::catalog::PackageSpec;
use super::script::{
    ActionEffect, BuyEffect, BuyStep, Dice, FaultProfile, PackageDefaults, StatusEffect, StatusStep,
};
use crate::clock::Timestamp;
use crate::domain::{Credentials, PackageId, PackageName};
use crate::provider::StockEntry;

/// A package id the simulator does not sell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the simulator has no package {0}")]
pub struct UnknownPackage(pub PackageId);

/// One completed purchase, as the upstream saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PurchaseRecord {
    /// The address assigned.
    pub ip: Ipv4Addr,
    /// The package the buy asked for.
    pub package: PackageId,
    /// The package whose pool the address came from (differs under the wrong-package quirk).
    pub address_package: PackageId,
    /// Whether the address came from another package than the one asked for.
    pub from_other_package: bool,
    /// RAM bought, in GB.
    pub ram_gb: u32,
    /// When the buy request arrived.
    pub requested_at: Timestamp,
    /// When the purchase completed upstream (request arrival + latency).
    pub completed_at: Timestamp,
    /// The caller's request id (`<order id>/<attempt>`), when it sent one.
    pub request_id: Option<String>,
}

/// A server we own, as the simulator knows it.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    /// Its address.
    pub ip: Ipv4Addr,
    /// The package the buy asked for.
    pub package: PackageId,
    /// The package whose pool the address came from.
    pub address_package: PackageId,
    /// RAM in GB.
    pub ram_gb: u32,
    /// OS image.
    pub os: String,
    /// The password status will report once it is built.
    pub password: SecretString,
    /// When the purchase completed.
    pub bought_at: Timestamp,
    /// When its credentials appear (bought_at + build time).
    pub ready_at: Timestamp,
    /// The request id of the buy that created it.
    pub request_id: Option<String>,
}

/// How many calls of each operation the simulator has answered (counted on arrival).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// ipstock calls.
    pub ipstock: u64,
    /// buyvps calls.
    pub buy: u64,
    /// status calls.
    pub status: u64,
    /// start, stop, format, changeos and renewvps calls.
    pub other: u64,
}

/// The details status reports for a server at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StatusFields {
    pub ip: String,
    pub os: String,
    pub username: String,
    /// Empty until the server is built.
    pub password: String,
    pub expiry: String,
    pub power: &'static str,
    pub machine: &'static str,
    pub action: &'static str,
    pub ram: String,
}

impl StatusFields {
    /// The in-process form the engine reads.
    pub(crate) fn to_server_status(&self) -> crate::provider::ServerStatus {
        crate::provider::ServerStatus {
            ip: Some(self.ip.clone()),
            os: Some(self.os.clone()),
            username: Some(self.username.clone()),
            password: Some(SecretString::from(self.password.clone())),
            expiry: Some(self.expiry.clone()),
            power: Some(self.power.to_string()),
            machine: Some(self.machine.to_string()),
            action: Some(self.action.to_string()),
            ram: Some(self.ram.clone()),
        }
    }
}

/// How a buy's upstream purchase ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Completion {
    /// A server at this address is ours.
    Bought(Ipv4Addr),
    /// No package had a free address: nothing was bought.
    NoStock,
}

/// A buy as registered on arrival.
#[derive(Clone, Debug)]
pub(crate) struct BuyTicket {
    /// Set when the effect buys: the key to the purchase's completion.
    pub id: Option<u64>,
    /// When the reply (and the purchase) is due.
    pub due: Timestamp,
    /// How long the reply takes.
    pub latency: Duration,
    /// What the call does.
    pub effect: BuyEffect,
}

/// A status call as registered on arrival.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StatusTicket {
    pub latency: Duration,
    /// `None` when the address is not one of ours: SmartVPS then says `error`.
    pub effect: Option<StatusEffect>,
}

/// A purchase upstream that has not completed yet.
#[derive(Clone, Debug)]
struct Pending {
    ticket: u64,
    package: PackageId,
    ram_gb: u32,
    requested_at: Timestamp,
    request_id: Option<String>,
    other_package: bool,
    build_time: Duration,
}

#[derive(Debug)]
struct Package {
    name: PackageName,
    free: u32,
    active: bool,
    defaults: PackageDefaults,
    buy_script: VecDeque<BuyStep>,
    status_script: VecDeque<StatusStep>,
}

#[derive(Debug)]
struct Server {
    info: ServerInfo,
    powered_on: bool,
    expires_at: Timestamp,
    /// renewvps calls that took effect (whatever they answered).
    renewals: u32,
}

/// How long a purchase runs before it must be renewed.
const TERM: Duration = Duration::from_secs(30 * 24 * 3600);

/// Characters of generated passwords (no look-alikes).
const PASSWORD_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789";

/// The world: all state of one simulated SmartVPS.
pub(crate) struct World {
    packages: BTreeMap<PackageId, Package>,
    servers: BTreeMap<Ipv4Addr, Server>,
    purchases: Vec<PurchaseRecord>,
    /// Keyed by (due, ticket) so purchases complete in time order, ties in arrival order.
    pending: BTreeMap<(Timestamp, u64), Pending>,
    /// Packages drained by other resellers, restocked later: (when, ticket) -> (package, new free).
    restocks: BTreeMap<(Timestamp, u64), (PackageId, u32)>,
    /// Callers still waiting for a purchase's completion; `None` until it completes.
    waiting: HashMap<u64, Option<Completion>>,
    next_ticket: u64,
    calls: CallCounts,
    /// Fault draws.
    dice: Dice,
    /// Addresses, passwords and the other-package choice: a separate stream from the fault
    /// draws, so scripting faults does not change which addresses a run hands out.
    rng: StdRng,
    /// Defaults for packages added later and for calls about unknown addresses.
    defaults: PackageDefaults,
    ipstock_latency: Duration,
}

impl fmt::Debug for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("World")
            .field("packages", &self.packages.len())
            .field("servers", &self.servers.len())
            .field("pending", &self.pending.len())
            .field("calls", &self.calls)
            .finish_non_exhaustive()
    }
}

impl World {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            packages: BTreeMap::new(),
            servers: BTreeMap::new(),
            purchases: Vec::new(),
            pending: BTreeMap::new(),
            restocks: BTreeMap::new(),
            waiting: HashMap::new(),
            next_ticket: 1,
            calls: CallCounts::default(),
            dice: Dice::new(seed),
            // A fixed odd constant decorrelates the two streams drawn from one seed.
            rng: StdRng::seed_from_u64(seed ^ 0x9E37_79B9_7F4A_7C15),
            defaults: PackageDefaults::default(),
            ipstock_latency: Duration::ZERO,
        }
    }

    // ----- configuration -------------------------------------------------------------------

    pub(crate) fn add_package(&mut self, spec: PackageSpec) {
        let defaults = self.defaults.clone();
        self.packages.insert(
            spec.id,
            Package {
                name: spec.name,
                free: spec.free,
                active: spec.active,
                defaults,
                buy_script: VecDeque::new(),
                status_script: VecDeque::new(),
            },
        );
    }

    fn package_mut(&mut self, id: PackageId) -> Result<&mut Package, UnknownPackage> {
        self.packages.get_mut(&id).ok_or(UnknownPackage(id))
    }

    pub(crate) fn defaults(&self, id: PackageId) -> Option<PackageDefaults> {
        self.packages.get(&id).map(|p| p.defaults.clone())
    }

    pub(crate) fn set_defaults(
        &mut self,
        id: PackageId,
        defaults: PackageDefaults,
    ) -> Result<(), UnknownPackage> {
        self.package_mut(id)?.defaults = defaults;
        Ok(())
    }

    pub(crate) fn update_defaults(
        &mut self,
        id: PackageId,
        f: impl FnOnce(&mut PackageDefaults),
    ) -> Result<(), UnknownPackage> {
        f(&mut self.package_mut(id)?.defaults);
        Ok(())
    }

    pub(crate) fn set_active(&mut self, id: PackageId, active: bool) -> Result<(), UnknownPackage> {
        self.package_mut(id)?.active = active;
        Ok(())
    }

    pub(crate) fn set_free(&mut self, id: PackageId, free: u32) -> Result<(), UnknownPackage> {
        self.package_mut(id)?.free = free;
        Ok(())
    }

    pub(crate) fn take_stock(&mut self, id: PackageId, n: u32) -> Result<u32, UnknownPackage> {
        let p = self.package_mut(id)?;
        let taken = n.min(p.free);
        p.free -= taken;
        Ok(taken)
    }

    pub(crate) fn script_buy(
        &mut self,
        id: PackageId,
        steps: Vec<BuyStep>,
    ) -> Result<(), UnknownPackage> {
        self.package_mut(id)?.buy_script.extend(steps);
        Ok(())
    }

    pub(crate) fn script_status(
        &mut self,
        id: PackageId,
        steps: Vec<StatusStep>,
    ) -> Result<(), UnknownPackage> {
        self.package_mut(id)?.status_script.extend(steps);
        Ok(())
    }

    pub(crate) fn clear_scripts(&mut self, id: PackageId) -> Result<(), UnknownPackage> {
        let p = self.package_mut(id)?;
        p.buy_script.clear();
        p.status_script.clear();
        Ok(())
    }

    pub(crate) fn set_fault_profile(&mut self, profile: Option<FaultProfile>) {
        self.dice.set_profile(profile);
    }

    pub(crate) fn fault_profile(&self) -> Option<FaultProfile> {
        self.dice.profile().cloned()
    }

    pub(crate) fn set_ipstock_latency(&mut self, latency: Duration) {
        self.ipstock_latency = latency;
    }

    // ----- reading -------------------------------------------------------------------------

    pub(crate) fn purchases(&self) -> &[PurchaseRecord] {
        &self.purchases
    }

    pub(crate) fn free(&self, id: PackageId) -> Option<u32> {
        self.packages.get(&id).map(|p| p.free)
    }

    pub(crate) fn calls(&self) -> CallCounts {
        self.calls
    }

    pub(crate) fn powered_on(&self, ip: Ipv4Addr) -> Option<bool> {
        self.servers.get(&ip).map(|s| s.powered_on)
    }

    pub(crate) fn server(&self, ip: Ipv4Addr) -> Option<ServerInfo> {
        self.servers.get(&ip).map(|s| s.info.clone())
    }

    pub(crate) fn servers(&self) -> Vec<ServerInfo> {
        self.servers.values().map(|s| s.info.clone()).collect()
    }

    pub(crate) fn pending_count(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn package_id(&self, name: &str) -> Option<PackageId> {
        let name = name.trim();
        self.packages
            .iter()
            .find(|(_, p)| p.name.as_str() == name)
            .map(|(id, _)| *id)
    }

    /// The stock list as ipstock reports it, without counting a call.
    pub(crate) fn stock(&self) -> Vec<StockEntry> {
        self.packages
            .iter()
            .map(|(id, p)| StockEntry {
                id: *id,
                name: Ok(p.name.clone()),
                free: p.free,
                active: p.active,
            })
            .collect()
    }

    // ----- time ----------------------------------------------------------------------------

    /// Completes every pending purchase due by `now`, in time order.
    pub(crate) fn settle(&mut self, now: Timestamp) {
        loop {
            let purchase = self
                .pending
                .first_key_value()
                .map(|(k, _)| *k)
                .filter(|k| k.0 <= now);
            let restock = self
                .restocks
                .first_key_value()
                .map(|(k, _)| *k)
                .filter(|k| k.0 <= now);
            match (purchase, restock) {
                (Some(p), r) if r.is_none_or(|r| p <= r) => {
                    if let Some(pending) = self.pending.remove(&p) {
                        self.complete(pending, p.0);
                    }
                }
                (_, Some(r)) => {
                    if let Some((pkg, free)) = self.restocks.remove(&r)
                        && let Some(p) = self.packages.get_mut(&pkg)
                    {
                        p.free = free;
                    }
                }
                _ => break,
            }
        }
    }

    fn complete(&mut self, p: Pending, at: Timestamp) {
        if p.other_package {
            // The wrong-package quirk as SmartVPS shows it: the package asked for is exhausted
            // (other resellers took its last addresses just now), so the address comes from
            // another package. It is restocked later with more than it had, as a new allocation
            // of addresses: a restock never brings the count back to exactly where it was.
            if let Some(pk) = self.packages.get_mut(&p.package)
                && pk.free > 0
            {
                let refill = pk.free + 1000;
                pk.free = 0;
                let after = Duration::from_secs(self.rng.random_range(120..=300));
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                self.restocks
                    .insert((at.plus(after), ticket), (p.package, refill));
            }
        }
        let result = match self.allocate(p.package, p.other_package) {
            Some((address_package, ip)) => {
                let defaults = self
                    .packages
                    .get(&p.package)
                    .map(|pk| pk.defaults.clone())
                    .unwrap_or_default();
                let password = self.password();
                let info = ServerInfo {
                    ip,
                    package: p.package,
                    address_package,
                    ram_gb: p.ram_gb,
                    os: defaults.os,
                    password: SecretString::from(password),
                    bought_at: at,
                    ready_at: at.plus(p.build_time),
                    request_id: p.request_id.clone(),
                };
                self.servers.insert(
                    ip,
                    Server {
                        info,
                        powered_on: true,
                        expires_at: at.plus(TERM),
                        renewals: 0,
                    },
                );
                self.purchases.push(PurchaseRecord {
                    ip,
                    package: p.package,
                    address_package,
                    from_other_package: address_package != p.package,
                    ram_gb: p.ram_gb,
                    requested_at: p.requested_at,
                    completed_at: at,
                    request_id: p.request_id,
                });
                tracing::debug!(%ip, package = %p.package, %address_package, "simulator: purchase completed");
                Completion::Bought(ip)
            }
            None => {
                tracing::debug!(package = %p.package, "simulator: purchase found no stock anywhere");
                Completion::NoStock
            }
        };
        if let Some(slot) = self.waiting.get_mut(&p.ticket) {
            *slot = Some(result);
        }
    }

    /// Takes a free address: from `package` when it has stock (unless `other` asks for the
    /// wrong-package quirk), otherwise from another active package with stock, like SmartVPS.
    fn allocate(&mut self, package: PackageId, other: bool) -> Option<(PackageId, Ipv4Addr)> {
        let own_has_stock = self.packages.get(&package).is_some_and(|p| p.free > 0);
        let mut candidates: Vec<PackageId> = self
            .packages
            .iter()
            .filter(|(id, p)| **id != package && p.active && p.free > 0)
            .map(|(id, _)| *id)
            .collect();
        let mut order = Vec::new();
        if own_has_stock && !other {
            order.push(package);
        }
        while !candidates.is_empty() {
            let i = self.rng.random_range(0..candidates.len());
            order.push(candidates.swap_remove(i));
        }
        if own_has_stock && other {
            // The quirk with no other stock anywhere falls back to the package itself.
            order.push(package);
        }
        for id in order {
            let name = self.packages.get(&id)?.name.clone();
            if let Some(ip) = self.free_address(&name) {
                if let Some(p) = self.packages.get_mut(&id) {
                    p.free -= 1;
                }
                return Some((id, ip));
            }
        }
        None
    }

    /// An unused address inside `name`'s prefix: random first (addresses look like SmartVPS's),
    /// then a scan so a nearly full pool still finds its last addresses.
    fn free_address(&mut self, name: &PackageName) -> Option<Ipv4Addr> {
        let space = address_space(name);
        if space.iter().any(Vec::is_empty) {
            return None;
        }
        for _ in 0..64 {
            let mut o = [0u8; 4];
            for (slot, choices) in o.iter_mut().zip(&space) {
                *slot = choices[self.rng.random_range(0..choices.len())];
            }
            let ip = Ipv4Addr::from(o);
            if !self.servers.contains_key(&ip) {
                return Some(ip);
            }
        }
        for &a in &space[0] {
            for &b in &space[1] {
                for &c in &space[2] {
                    for &d in &space[3] {
                        let ip = Ipv4Addr::new(a, b, c, d);
                        if !self.servers.contains_key(&ip) {
                            return Some(ip);
                        }
                    }
                }
            }
        }
        None
    }

    fn password(&mut self) -> String {
        (0..16)
            .map(|_| {
                char::from(PASSWORD_ALPHABET[self.rng.random_range(0..PASSWORD_ALPHABET.len())])
            })
            .collect()
    }

    /// Other resellers buy from the shared pool: `package`'s when given, else a random one.
    fn other_buyers(&mut self, package: Option<PackageId>) {
        let n = self.dice.draw_other_buyers();
        if n == 0 {
            return;
        }
        let target = package.or_else(|| {
            let ids: Vec<PackageId> = self
                .packages
                .iter()
                .filter(|(_, p)| p.free > 0)
                .map(|(id, _)| *id)
                .collect();
            (!ids.is_empty()).then(|| ids[self.dice.index(ids.len())])
        });
        if let Some(p) = target.and_then(|id| self.packages.get_mut(&id)) {
            p.free = p.free.saturating_sub(n);
        }
    }

    // ----- calls ---------------------------------------------------------------------------

    /// An ipstock call arrives: returns its latency.
    pub(crate) fn begin_ipstock(&mut self, now: Timestamp) -> Duration {
        self.settle(now);
        self.calls.ipstock += 1;
        self.other_buyers(None);
        self.ipstock_latency
    }

    /// A buyvps call arrives for package `name`. A buying effect registers the purchase now, due
    /// at `now + latency`: it completes then whatever happens to the caller.
    pub(crate) fn begin_buy(
        &mut self,
        now: Timestamp,
        name: &str,
        ram_gb: u32,
        request_id: Option<String>,
    ) -> BuyTicket {
        self.settle(now);
        self.calls.buy += 1;
        let Some(id) = self
            .package_id(name)
            .filter(|id| self.packages.get(id).is_some_and(|p| p.active))
        else {
            // An unknown or inactive package: a plain `error`, at once.
            return BuyTicket {
                id: None,
                due: now,
                latency: Duration::ZERO,
                effect: BuyEffect::ErrorReply,
            };
        };
        self.other_buyers(Some(id));
        let Some(pkg) = self.packages.get_mut(&id) else {
            return BuyTicket {
                id: None,
                due: now,
                latency: Duration::ZERO,
                effect: BuyEffect::ErrorReply,
            };
        };
        let (step, build_time) = match pkg.buy_script.pop_front() {
            Some(step) => (step, pkg.defaults.build_time),
            None => {
                let defaults = pkg.defaults.clone();
                let draw = self.dice.draw_buy(&defaults);
                (draw.step, draw.build_time)
            }
        };
        let due = now.plus(step.latency);
        let ticket = step.effect.buys().then(|| {
            let ticket = self.next_ticket;
            self.next_ticket += 1;
            self.waiting.insert(ticket, None);
            self.pending.insert(
                (due, ticket),
                Pending {
                    ticket,
                    package: id,
                    ram_gb,
                    requested_at: now,
                    request_id,
                    other_package: step.effect == BuyEffect::SucceedInOtherPackage,
                    build_time,
                },
            );
            ticket
        });
        BuyTicket {
            id: ticket,
            due,
            latency: step.latency,
            effect: step.effect,
        }
    }

    /// The caller of `ticket` has waited its latency: the purchase's completion. Completes the
    /// purchase at its due time even if the clock reads a hair earlier (scaled clocks round).
    pub(crate) fn finish_buy(&mut self, now: Timestamp, ticket: &BuyTicket) -> Option<Completion> {
        self.settle(now);
        let id = ticket.id?;
        if let Some(key) = self.pending.keys().find(|(_, t)| *t == id).copied()
            && let Some(p) = self.pending.remove(&key)
        {
            self.complete(p, key.0);
        }
        self.waiting.remove(&id).flatten()
    }

    /// The caller of `ticket` gave up (timeout, dropped future, closed connection): nobody reads
    /// the completion, but the purchase itself still completes.
    pub(crate) fn abandon(&mut self, ticket: u64) {
        self.waiting.remove(&ticket);
    }

    /// A status call arrives for `ip` (`None`: not an address at all).
    pub(crate) fn begin_status(&mut self, now: Timestamp, ip: Option<Ipv4Addr>) -> StatusTicket {
        self.settle(now);
        self.calls.status += 1;
        // Other resellers buy as orders come, not as we read status: a discovery scan makes
        // hundreds of status calls, and tying their buying to those would drain the world.
        let Some(package) = ip
            .and_then(|ip| self.servers.get(&ip))
            .map(|s| s.info.package)
        else {
            return StatusTicket {
                latency: self.defaults.status_latency,
                effect: None,
            };
        };
        // Scripts and defaults follow the package the order asked for, so a scenario installed
        // on a package also drives the status calls for a server that came from another pool.
        let step = match self.packages.get_mut(&package) {
            Some(p) => match p.status_script.pop_front() {
                Some(step) => step,
                None => {
                    let defaults = p.defaults.clone();
                    self.dice.draw_status(&defaults)
                }
            },
            None => {
                let defaults = self.defaults.clone();
                self.dice.draw_status(&defaults)
            }
        };
        StatusTicket {
            latency: step.latency,
            effect: Some(step.effect),
        }
    }

    /// What status says about `ip` right now; `None` when it is not ours.
    pub(crate) fn status_fields(&mut self, now: Timestamp, ip: Ipv4Addr) -> Option<StatusFields> {
        self.settle(now);
        let s = self.servers.get(&ip)?;
        let built = now >= s.info.ready_at;
        Some(StatusFields {
            ip: ip.to_string(),
            os: s.info.os.clone(),
            username: Credentials::default_username(Some(&s.info.os)).to_string(),
            password: if built {
                s.info.password.expose_secret().to_string()
            } else {
                String::new()
            },
            expiry: date(s.expires_at),
            power: if built && s.powered_on {
                "Online"
            } else {
                "Offline"
            },
            machine: "active",
            action: if built { "completed" } else { "pending" },
            ram: format!("{}GB", s.info.ram_gb),
        })
    }

    /// When a server of ours expires, and how many renewvps calls took effect on it.
    pub(crate) fn term(&self, ip: Ipv4Addr) -> Option<(Timestamp, u32)> {
        self.servers.get(&ip).map(|s| (s.expires_at, s.renewals))
    }

    /// Moves a server's expiry (a test hook: servers bought long ago). Whether it is ours.
    pub(crate) fn set_expiry(&mut self, ip: Ipv4Addr, at: Timestamp) -> bool {
        match self.servers.get_mut(&ip) {
            Some(s) => {
                s.expires_at = at;
                true
            }
            None => false,
        }
    }

    /// A start, stop, format, changeos or renewvps call arrives for `ip` (`None`: not an
    /// address at all). What it does happens now (a fault may hide it behind a 5xx or a late
    /// reply); the reply says whether it was done. An address not ours, or an image SmartVPS
    /// does not offer, does nothing and answers `error`.
    pub(crate) fn begin_action(
        &mut self,
        now: Timestamp,
        action: &str,
        ip: Option<Ipv4Addr>,
        os: Option<&str>,
    ) -> ActionTicket {
        self.settle(now);
        self.calls.other += 1;
        let refused = ActionTicket {
            latency: self.defaults.status_latency,
            effect: ActionEffect::ErrorReply,
        };
        let Some(package) = ip
            .and_then(|ip| self.servers.get(&ip))
            .map(|s| s.info.package)
        else {
            return refused;
        };
        let defaults = self
            .packages
            .get(&package)
            .map_or_else(|| self.defaults.clone(), |p| p.defaults.clone());
        let os = os.map(str::trim);
        if action == "changeos"
            && os.is_none_or(|os| !crate::domain::order::OS_CHOICES.contains(&os))
        {
            return ActionTicket {
                latency: defaults.status_latency,
                effect: ActionEffect::ErrorReply,
            };
        }
        if !matches!(
            action,
            "start" | "stop" | "format" | "changeos" | "renewvps"
        ) {
            return refused;
        }
        let (latency, effect) = self.dice.draw_action(&defaults);
        if effect.acts() {
            let password = matches!(action, "format" | "changeos").then(|| self.password());
            if let Some(server) = ip.and_then(|ip| self.servers.get_mut(&ip)) {
                match action {
                    "start" => server.powered_on = true,
                    "stop" => server.powered_on = false,
                    "renewvps" => {
                        server.expires_at = server.expires_at.plus(TERM);
                        server.renewals += 1;
                    }
                    _ => {
                        if let Some(os) = os.filter(|_| action == "changeos") {
                            server.info.os = os.to_string();
                        }
                        if let Some(p) = password {
                            server.info.password = SecretString::from(p);
                        }
                        // Installing: pending, no password, until the image is in; it boots
                        // when done.
                        server.info.ready_at =
                            server.info.ready_at.max(now).plus(defaults.install_time);
                        server.powered_on = true;
                    }
                }
                tracing::debug!(ip = %server.info.ip, action, "simulator: action done");
            }
        }
        ActionTicket { latency, effect }
    }
}

/// An action call as registered on arrival.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ActionTicket {
    /// How long the reply takes.
    pub latency: Duration,
    /// What it did and answers.
    pub effect: ActionEffect,
}

/// The candidate octets for each position of an address in `name`: the name's groups (a
/// wildcard group is every octet whose decimal text extends its prefix), any octet for the
/// groups the name leaves open, and 2..=254 for the host octet (no network, gateway or broadcast).
fn address_space(name: &PackageName) -> [Vec<u8>; 4] {
    let groups: Vec<&str> = name.as_str().split('.').collect();
    let mut space: [Vec<u8>; 4] = Default::default();
    for (i, slot) in space.iter_mut().enumerate() {
        *slot = match groups.get(i) {
            Some(g) if i < 3 => match g.strip_suffix(['x', 'X']) {
                Some(prefix) => (0..=255u8)
                    .filter(|o| {
                        let t = o.to_string();
                        t.len() > prefix.len() && t.starts_with(prefix)
                    })
                    .collect(),
                None => g.parse::<u8>().map(|o| vec![o]).unwrap_or_default(),
            },
            _ if i == 3 => (2..=254).collect(),
            _ => (0..=255).collect(),
        };
    }
    space
}

/// `YYYY-MM-DD`, the form SmartVPS's ExpiryDate takes.
fn date(t: Timestamp) -> String {
    t.to_string().chars().take(10).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> PackageName {
        PackageName::parse(s).unwrap()
    }

    #[test]
    fn address_space_follows_the_name() {
        let s = address_space(&name("103.109.18x"));
        assert_eq!(s[2], (180..=189).collect::<Vec<u8>>());
        let s = address_space(&name("103.83.x"));
        assert_eq!(s[2].len(), 256);
        let s = address_space(&name("45.117"));
        assert_eq!(
            (s[0].clone(), s[1].clone(), s[2].len(), s[3].len()),
            (vec![45], vec![117], 256, 253)
        );
        let s = address_space(&name("103.1x"));
        assert!(
            s[1].contains(&10) && s[1].contains(&199) && !s[1].contains(&1) && !s[1].contains(&200)
        );
    }

    #[test]
    fn a_small_pool_is_filled_to_the_last_address() {
        let mut w = World::new(3);
        w.add_package(PackageSpec::new(1, "10.0.0", 300).unwrap());
        let t = Timestamp(0);
        let mut ips = std::collections::HashSet::new();
        for _ in 0..253 {
            let ticket = w.begin_buy(t, "10.0.0", 1, None);
            let Some(Completion::Bought(ip)) = w.finish_buy(t.plus(ticket.latency), &ticket) else {
                panic!("expected a purchase");
            };
            assert!(ips.insert(ip));
        }
        let ticket = w.begin_buy(t, "10.0.0", 1, None);
        assert_eq!(
            w.finish_buy(t.plus(ticket.latency), &ticket),
            Some(Completion::NoStock)
        );
    }

    #[test]
    fn expiry_is_a_date() {
        assert_eq!(date(Timestamp(1_767_225_600_000).plus(TERM)), "2026-01-31");
    }
}
