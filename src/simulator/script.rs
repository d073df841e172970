//! What the simulated SmartVPS does on each call: scripted steps per package, consumed in order,
//! and, once a package's script is used up, either the package's defaults or a seeded random
//! [`FaultProfile`].

use std::ops::RangeInclusive;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What a buyvps call does upstream and what it replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BuyEffect {
    /// Buys a server in the package asked for (or, when that package is exhausted, in another
    /// one: SmartVPS's real quirk) and replies `success|... Your ip is: <ip>`.
    Succeed,
    /// The wrong-package quirk even though the package has stock: the address comes from another
    /// package, and the reply still says success.
    SucceedInOtherPackage,
    /// Nothing is bought and no reply comes. With a latency beyond the caller's timeout this is a
    /// hang; a caller still waiting when the latency ends sees the connection give up (HTTP 504).
    NoEffect,
    /// The bare `error`: a definite no, nothing bought.
    ErrorReply,
    /// HTTP 500; nothing bought.
    ServerError,
    /// HTTP 500, but the server IS bought: the reason a 5xx is an unknown outcome.
    ServerErrorAfterBuying,
    /// A 2xx reply that is not a success string; nothing bought.
    Garbled,
}

impl BuyEffect {
    /// Whether this effect buys a server upstream.
    pub fn buys(self) -> bool {
        matches!(
            self,
            Self::Succeed | Self::SucceedInOtherPackage | Self::ServerErrorAfterBuying
        )
    }
}

/// One scripted buyvps call: how long SmartVPS takes, and what it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuyStep {
    /// Time from the request's arrival to the reply; a buying effect completes upstream at the
    /// same moment, whether or not anyone is still waiting for the reply.
    pub latency: Duration,
    /// What happens.
    pub effect: BuyEffect,
}

impl BuyStep {
    /// A step with `latency` and `effect`.
    pub fn new(latency: Duration, effect: BuyEffect) -> Self {
        Self { latency, effect }
    }

    /// A purchase that succeeds after `latency`.
    pub fn succeed(latency: Duration) -> Self {
        Self::new(latency, BuyEffect::Succeed)
    }

    /// A call that buys nothing and does not answer for `latency` (pick one beyond the timeout).
    pub fn hang(latency: Duration) -> Self {
        Self::new(latency, BuyEffect::NoEffect)
    }
}

/// What a status call replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusEffect {
    /// The server's details as they stand when the reply is sent (credentials once it is built).
    Normal,
    /// The bare `error`.
    ErrorReply,
    /// HTTP 500.
    ServerError,
}

/// One scripted status call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusStep {
    /// Time from the request's arrival to the reply.
    pub latency: Duration,
    /// What it replies.
    pub effect: StatusEffect,
}

impl StatusStep {
    /// A step with `latency` and `effect`.
    pub fn new(latency: Duration, effect: StatusEffect) -> Self {
        Self { latency, effect }
    }

    /// A normal reply after `latency`.
    pub fn normal(latency: Duration) -> Self {
        Self::new(latency, StatusEffect::Normal)
    }

    /// A reply that takes `latency` (pick one beyond the timeout for a hang).
    pub fn hang(latency: Duration) -> Self {
        Self::normal(latency)
    }
}

/// How a package behaves when its script is used up and no fault profile is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageDefaults {
    /// buyvps latency (SmartVPS typically takes about 30 s).
    pub buy_latency: Duration,
    /// status latency (about 10 s).
    pub status_latency: Duration,
    /// Build time: how long after the purchase completes the credentials appear ("late
    /// credentials"). Until then status says `ActionStatus: pending` with an empty password.
    pub build_time: Duration,
    /// The OS image new servers get (buyvps has no OS field).
    pub os: String,
    /// How long `format` and `changeos` take to install an image: status says `ActionStatus:
    /// pending` with an empty password until then.
    pub install_time: Duration,
}

impl Default for PackageDefaults {
    /// The seed's typical latencies: buy 30 s, status 10 s; credentials at once; Ubuntu.
    fn default() -> Self {
        Self {
            buy_latency: Duration::from_secs(30),
            status_latency: Duration::from_secs(10),
            build_time: Duration::ZERO,
            os: "ubuntu".to_string(),
            install_time: Duration::from_secs(60),
        }
    }
}

/// A seeded random fault model, used for calls that have no scripted step left.
///
/// Probabilities are per call and checked in the order the fields are listed; whatever is left
/// over is a normal reply. [`FaultProfile::default`] has no faults at all (latencies then come
/// from the package defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct FaultProfile {
    /// buyvps latency for ordinary replies; `None` = the package default. A range reaching past
    /// [`buy_timeout`](Self::buy_timeout) makes some successes late completions.
    pub buy_latency: Option<RangeInclusive<Duration>>,
    /// status latency for ordinary replies; `None` = the package default.
    pub status_latency: Option<RangeInclusive<Duration>>,
    /// The buyvps timeout callers are assumed to use (the seed's 120 s). The HTTP server cannot
    /// know the client's timeout, so hangs and late completions are placed relative to this.
    pub buy_timeout: Duration,
    /// The status timeout callers are assumed to use (the seed's 90 s).
    pub status_timeout: Duration,
    /// Every buy that buys completes at most this long after `buy_timeout` (default 480 s, so
    /// that completions reach the default 10-minute purchase horizon). Why a bound: no evidence
    /// can tell a purchase completing after the horizon from another reseller's; the horizon is
    /// the contract, and the bound keeps the random world inside it.
    pub max_late_after_timeout: Duration,
    /// A buy that buys nothing and answers only well after `buy_timeout`.
    pub buy_hang: f64,
    /// A buy that succeeds after the timeout: within `(buy_timeout, buy_timeout + max_late]`.
    pub buy_late: f64,
    /// A buy that succeeds later than every bound: up to 10 minutes after
    /// `buy_timeout + max_late_after_timeout` (the default purchase horizon). No evidence tells
    /// such a purchase from another reseller's, so the engine may by then have bought again:
    /// the residual risk that `policy.buy.horizon` sets, which the simulation counts apart.
    pub buy_beyond_horizon: f64,
    /// HTTP 500, nothing bought.
    pub buy_server_error: f64,
    /// HTTP 500, server bought.
    pub buy_server_error_after_buying: f64,
    /// The bare `error`.
    pub buy_error: f64,
    /// A garbled 2xx reply, nothing bought.
    pub buy_garbled: f64,
    /// The wrong-package quirk: other resellers exhaust the package just as the purchase
    /// completes, so SmartVPS assigns an address from another package (and restocks later).
    pub buy_wrong_package: f64,
    /// A status reply that comes well after `status_timeout`.
    pub status_hang: f64,
    /// A status `error`.
    pub status_error: f64,
    /// A status HTTP 500.
    pub status_server_error: f64,
    /// A purchase whose credentials appear late: build time drawn from `build_time`.
    pub late_credentials: f64,
    /// The build-time range for late credentials.
    pub build_time: RangeInclusive<Duration>,
    /// A start, stop, format, changeos or renewvps that does what it was asked but answers only
    /// well after `status_timeout` (the caller's timeout: an unknown outcome that did happen).
    pub action_hang: f64,
    /// An action answered with the bare `error`, nothing done.
    pub action_error: f64,
    /// An action answered with HTTP 500, nothing done.
    pub action_server_error: f64,
    /// An action answered with HTTP 500 after doing it.
    pub action_server_error_after_acting: f64,
    /// Chance per ipstock or buyvps call that other resellers buy from the shared pool
    /// meanwhile (status calls do not count: scans make many, and other resellers do not buy
    /// more because we read).
    pub other_buyers: f64,
    /// How many addresses they take at most at once (at least 1 when they buy).
    pub other_buyers_max: u32,
}

impl Default for FaultProfile {
    /// No faults: package-default latencies, no errors, no late credentials, no other buyers.
    fn default() -> Self {
        Self {
            buy_latency: None,
            status_latency: None,
            buy_timeout: Duration::from_secs(120),
            status_timeout: Duration::from_secs(90),
            max_late_after_timeout: Duration::from_secs(480),
            buy_hang: 0.0,
            buy_late: 0.0,
            buy_server_error: 0.0,
            buy_server_error_after_buying: 0.0,
            buy_error: 0.0,
            buy_garbled: 0.0,
            buy_wrong_package: 0.0,
            buy_beyond_horizon: 0.0,
            status_hang: 0.0,
            status_error: 0.0,
            status_server_error: 0.0,
            late_credentials: 0.0,
            build_time: Duration::ZERO..=Duration::ZERO,
            action_hang: 0.0,
            action_error: 0.0,
            action_server_error: 0.0,
            action_server_error_after_acting: 0.0,
            other_buyers: 0.0,
            other_buyers_max: 1,
        }
    }
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

impl FaultProfile {
    /// A healthy SmartVPS: realistic spread of latencies, rare faults.
    pub fn calm() -> Self {
        Self {
            buy_latency: Some(secs(20)..=secs(45)),
            status_latency: Some(secs(5)..=secs(15)),
            buy_late: 0.02,
            buy_server_error: 0.01,
            status_error: 0.01,
            late_credentials: 0.1,
            build_time: secs(20)..=secs(90),
            action_server_error: 0.01,
            other_buyers: 0.05,
            ..Self::default()
        }
    }

    /// A bad day: slow replies, some around and past the timeouts, every fault now and then.
    pub fn flaky() -> Self {
        Self {
            buy_latency: Some(secs(20)..=secs(150)),
            status_latency: Some(secs(5)..=secs(100)),
            buy_hang: 0.08,
            buy_late: 0.08,
            buy_server_error: 0.04,
            buy_server_error_after_buying: 0.03,
            buy_error: 0.05,
            buy_garbled: 0.03,
            buy_wrong_package: 0.02,
            buy_beyond_horizon: 0.002,
            status_hang: 0.05,
            status_error: 0.05,
            status_server_error: 0.05,
            late_credentials: 0.3,
            build_time: secs(30)..=secs(240),
            action_hang: 0.05,
            action_error: 0.03,
            action_server_error: 0.03,
            action_server_error_after_acting: 0.03,
            other_buyers: 0.1,
            other_buyers_max: 2,
            ..Self::default()
        }
    }

    /// Everything that can go wrong, often.
    pub fn hostile() -> Self {
        Self {
            buy_latency: Some(secs(30)..=secs(200)),
            status_latency: Some(secs(10)..=secs(120)),
            buy_hang: 0.15,
            buy_late: 0.15,
            buy_server_error: 0.08,
            buy_server_error_after_buying: 0.08,
            buy_error: 0.08,
            buy_garbled: 0.06,
            buy_wrong_package: 0.06,
            buy_beyond_horizon: 0.005,
            status_hang: 0.15,
            status_error: 0.1,
            status_server_error: 0.1,
            late_credentials: 0.5,
            build_time: secs(60)..=secs(420),
            action_hang: 0.1,
            action_error: 0.08,
            action_server_error: 0.08,
            action_server_error_after_acting: 0.08,
            other_buyers: 0.25,
            other_buyers_max: 3,
            ..Self::default()
        }
    }

    /// A named preset: `none`, `calm`, `flaky` or `hostile`.
    pub fn named(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "none" | "default" => Some(Self::default()),
            "calm" => Some(Self::calm()),
            "flaky" => Some(Self::flaky()),
            "hostile" => Some(Self::hostile()),
            _ => None,
        }
    }

    /// The latest moment after the request at which a buy may complete.
    fn latest_completion(&self) -> Duration {
        self.buy_timeout + self.max_late_after_timeout
    }
}

/// What an action call (start, stop, format, changeos, renewvps) does and answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ActionEffect {
    /// Done; `success|...`.
    Done,
    /// Nothing done; the bare `error`.
    ErrorReply,
    /// Nothing done; HTTP 500.
    ServerError,
    /// Done; HTTP 500 anyway.
    ServerErrorAfterActing,
}

impl ActionEffect {
    /// Whether the server is changed.
    pub(crate) fn acts(self) -> bool {
        matches!(self, Self::Done | Self::ServerErrorAfterActing)
    }
}

/// The random source for unscripted calls: the fault profile and a `StdRng` seeded from the
/// simulator's seed, so the same seed and the same call sequence give the same world.
#[derive(Debug)]
pub(crate) struct Dice {
    rng: StdRng,
    profile: Option<FaultProfile>,
}

/// The draw for one unscripted buy.
pub(crate) struct BuyDraw {
    pub step: BuyStep,
    pub build_time: Duration,
}

impl Dice {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            profile: None,
        }
    }

    pub(crate) fn set_profile(&mut self, profile: Option<FaultProfile>) {
        self.profile = profile;
    }

    pub(crate) fn profile(&self) -> Option<&FaultProfile> {
        self.profile.as_ref()
    }

    fn duration_in(&mut self, range: &RangeInclusive<Duration>) -> Duration {
        let (a, b) = (
            range.start().as_millis() as u64,
            range.end().as_millis() as u64,
        );
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        Duration::from_millis(self.rng.random_range(lo..=hi))
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random::<f64>() < p
    }

    /// A buy step for a package whose script is used up. Without a profile: the defaults, and no
    /// randomness is consumed (so adding a package never shifts another's draws).
    pub(crate) fn draw_buy(&mut self, defaults: &PackageDefaults) -> BuyDraw {
        let Some(p) = self.profile.clone() else {
            return BuyDraw {
                step: BuyStep::succeed(defaults.buy_latency),
                build_time: defaults.build_time,
            };
        };
        let mut latency = match &p.buy_latency {
            Some(r) => self.duration_in(r),
            None => defaults.buy_latency,
        };
        // One roll walks the cumulative probabilities in field order.
        let roll: f64 = self.rng.random();
        let mut beyond = false;
        let mut edge = 0.0;
        let mut hit = |q: f64| {
            edge += q.max(0.0);
            roll < edge
        };
        let effect = if hit(p.buy_hang) {
            latency = p.buy_timeout + self.duration_in(&(secs(1)..=secs(600)));
            BuyEffect::NoEffect
        } else if hit(p.buy_late) {
            let after = self.duration_in(&(Duration::from_millis(1)..=p.max_late_after_timeout));
            latency = p.buy_timeout + after;
            BuyEffect::Succeed
        } else if hit(p.buy_server_error) {
            BuyEffect::ServerError
        } else if hit(p.buy_server_error_after_buying) {
            BuyEffect::ServerErrorAfterBuying
        } else if hit(p.buy_error) {
            BuyEffect::ErrorReply
        } else if hit(p.buy_garbled) {
            BuyEffect::Garbled
        } else if hit(p.buy_wrong_package) {
            BuyEffect::SucceedInOtherPackage
        } else if hit(p.buy_beyond_horizon) {
            beyond = true;
            latency = p.latest_completion() + self.duration_in(&(secs(1)..=secs(600)));
            BuyEffect::Succeed
        } else {
            BuyEffect::Succeed
        };
        // Only the beyond-horizon draw completes after the latest completion.
        if effect.buys() && !beyond {
            latency = latency.min(p.latest_completion());
        }
        let build_time = if self.chance(p.late_credentials) {
            self.duration_in(&p.build_time)
        } else {
            defaults.build_time
        };
        BuyDraw {
            step: BuyStep::new(latency, effect),
            build_time,
        }
    }

    /// A status step for a call with no scripted step left.
    pub(crate) fn draw_status(&mut self, defaults: &PackageDefaults) -> StatusStep {
        let Some(p) = self.profile.clone() else {
            return StatusStep::normal(defaults.status_latency);
        };
        let mut latency = match &p.status_latency {
            Some(r) => self.duration_in(r),
            None => defaults.status_latency,
        };
        let roll: f64 = self.rng.random();
        let hang = p.status_hang.max(0.0);
        let error = hang + p.status_error.max(0.0);
        let server_error = error + p.status_server_error.max(0.0);
        let effect = if roll < hang {
            latency = p.status_timeout + self.duration_in(&(secs(1)..=secs(300)));
            StatusEffect::Normal
        } else if roll < error {
            StatusEffect::ErrorReply
        } else if roll < server_error {
            StatusEffect::ServerError
        } else {
            StatusEffect::Normal
        };
        StatusStep::new(latency, effect)
    }

    /// How an action call goes: its latency and effect. Without a profile: done, replied in
    /// the package's status latency, and no randomness consumed.
    pub(crate) fn draw_action(&mut self, defaults: &PackageDefaults) -> (Duration, ActionEffect) {
        let Some(p) = self.profile.clone() else {
            return (defaults.status_latency, ActionEffect::Done);
        };
        let latency = match &p.status_latency {
            Some(r) => self.duration_in(r),
            None => defaults.status_latency,
        };
        let roll: f64 = self.rng.random();
        let mut edge = 0.0;
        let mut hit = |q: f64| {
            edge += q.max(0.0);
            roll < edge
        };
        if hit(p.action_hang) {
            let late = p.status_timeout + self.duration_in(&(secs(1)..=secs(300)));
            (late, ActionEffect::Done)
        } else if hit(p.action_error) {
            (latency, ActionEffect::ErrorReply)
        } else if hit(p.action_server_error) {
            (latency, ActionEffect::ServerError)
        } else if hit(p.action_server_error_after_acting) {
            (latency, ActionEffect::ServerErrorAfterActing)
        } else {
            (latency, ActionEffect::Done)
        }
    }

    /// How many addresses other resellers take during this call (0 mostly).
    pub(crate) fn draw_other_buyers(&mut self) -> u32 {
        let Some((p, max)) = self
            .profile
            .as_ref()
            .map(|p| (p.other_buyers, p.other_buyers_max))
        else {
            return 0;
        };
        if self.chance(p) {
            self.rng.random_range(1..=max.max(1))
        } else {
            0
        }
    }

    /// An index below `n` (n > 0), for choosing which package other buyers hit.
    pub(crate) fn index(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_profile_means_defaults_and_no_randomness() {
        let mut dice = Dice::new(1);
        let d = PackageDefaults::default();
        let draw = dice.draw_buy(&d);
        assert_eq!(draw.step, BuyStep::succeed(secs(30)));
        assert_eq!(dice.draw_status(&d), StatusStep::normal(secs(10)));
        assert_eq!(dice.draw_other_buyers(), 0);
    }

    #[test]
    fn late_completions_stay_within_the_bound() {
        let mut dice = Dice::new(7);
        let profile = FaultProfile {
            buy_late: 1.0,
            ..FaultProfile::default()
        };
        dice.set_profile(Some(profile.clone()));
        for _ in 0..500 {
            let draw = dice.draw_buy(&PackageDefaults::default());
            assert_eq!(draw.step.effect, BuyEffect::Succeed);
            assert!(draw.step.latency > profile.buy_timeout);
            assert!(draw.step.latency <= profile.buy_timeout + profile.max_late_after_timeout);
        }
    }

    #[test]
    fn every_buying_draw_completes_within_the_bound_but_the_beyond_horizon_ones() {
        let mut dice = Dice::new(11);
        let profile = FaultProfile::hostile();
        let bound = profile.buy_timeout + profile.max_late_after_timeout;
        dice.set_profile(Some(profile.clone()));
        let mut seen = std::collections::HashSet::new();
        let mut beyond = 0;
        for _ in 0..20_000 {
            let draw = dice.draw_buy(&PackageDefaults::default());
            seen.insert(draw.step.effect);
            if draw.step.effect.buys() && draw.step.latency > bound {
                assert_eq!(draw.step.effect, BuyEffect::Succeed);
                assert!(draw.step.latency <= bound + secs(600));
                beyond += 1;
            }
            if draw.step.effect == BuyEffect::NoEffect {
                assert!(draw.step.latency > profile.buy_timeout);
            }
        }
        assert_eq!(seen.len(), 7, "hostile draws every effect: {seen:?}");
        // 0.5 % of 20,000 draws, give or take.
        assert!((50..=150).contains(&beyond), "{beyond} beyond the horizon");
    }

    #[test]
    fn presets_by_name() {
        assert_eq!(FaultProfile::named("Flaky"), Some(FaultProfile::flaky()));
        assert_eq!(FaultProfile::named("none"), Some(FaultProfile::default()));
        assert!(FaultProfile::named("chaos").is_none());
    }
}
