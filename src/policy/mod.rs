//! The retry policy: how many attempts each phase gets, each call's timeout, and the strategic
//! waits between attempts. Defaults are the seed's. [`next`] decides what follows each attempt's
//! outcome; [`plan`] computes the seed's timing analysis from a policy.

pub mod next;
pub mod plan;

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// What the engine does with a purchase whose outcome is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnUnknown {
    /// Wait the strategic delay, then look at the evidence before buying again (default).
    #[default]
    Reconcile,
    /// Buy again after the delay without looking: the seed taken literally. Can buy twice.
    Retry,
    /// Hand the order to an admin at once.
    Escalate,
}

impl OnUnknown {
    /// Config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reconcile => "reconcile",
            Self::Retry => "retry",
            Self::Escalate => "escalate",
        }
    }

    /// Parses the config spelling.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Reconcile, Self::Retry, Self::Escalate]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

impl fmt::Display for OnUnknown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One phase's schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PhasePolicy {
    /// Calls before giving up (at least 1).
    pub attempts: u32,
    /// Each call's timeout, applied as the real timeout of that call.
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// Waits between attempts: `delays[i]` follows attempt `i + 1`; exactly `attempts - 1` of them.
    #[serde(with = "humantime_serde_compat::vec")]
    pub delays: Vec<Duration>,
}

impl PhasePolicy {
    /// The wait after attempt `attempt` (1-based) failed, or `None` when it was the last.
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        if attempt >= self.attempts {
            return None;
        }
        self.delays.get(attempt.checked_sub(1)? as usize).copied()
    }

    /// How long to let an unknown purchase settle upstream before reconciling it: the same
    /// strategic wait that would precede the next attempt, or after the last attempt the longest
    /// configured wait (at least the call timeout when there are no waits).
    pub fn settle_after(&self, attempt: u32) -> Duration {
        self.delay_after(attempt)
            .or_else(|| self.delays.iter().copied().max())
            .unwrap_or(self.timeout)
    }

    /// Checks the schedule is coherent.
    ///
    /// # Errors
    /// A message naming the offending key, relative to the phase (`attempts`, `delays`, `timeout`).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.attempts == 0 {
            return Err(("attempts", "must be at least 1".into()));
        }
        if self.attempts > 100 {
            return Err(("attempts", "must be at most 100".into()));
        }
        if self.delays.len() != self.attempts as usize - 1 {
            return Err((
                "delays",
                format!(
                    "needs exactly attempts - 1 = {} wait(s), one between each pair of attempts; got {}",
                    self.attempts - 1,
                    self.delays.len()
                ),
            ));
        }
        if self.timeout.is_zero() {
            return Err(("timeout", "must be greater than zero".into()));
        }
        Ok(())
    }
}

/// The whole policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    /// The buy phase (buyvps).
    pub buy: PhasePolicy,
    /// The credentials phase (status).
    pub status: PhasePolicy,
    /// What to do with an unknown purchase outcome.
    pub on_unknown: OnUnknown,
    /// The longest time SmartVPS may take to complete a purchase after it was sent
    /// (`policy.buy.horizon`). No "nothing was bought" verdict is reached before a purchase's
    /// `sent_at + horizon`, whatever the waits: a timed-out call can still complete upstream, and
    /// only time bounds that. Also how long a timed-out call's connection is kept open for a late
    /// reply. At least the buy timeout.
    #[serde(with = "humantime_serde_compat")]
    pub horizon: Duration,
    /// Server actions and OS installs (`[policy.action]`, `[policy.install]`).
    pub server: ServerPolicy,
}

/// The schedule of work on a bought server: each start, stop, format or changeos call, the
/// wait for an install, and how many actions a server may be asked for per hour.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServerPolicy {
    /// Calls per stage of an action (`policy.action`: attempts, timeout, delays).
    pub action: PhasePolicy,
    /// How long after it was sent an action call whose outcome is unknown may still take
    /// effect (`policy.action.horizon`): before then, status showing no change proves nothing
    /// and the call is not sent again. At least the action timeout.
    #[serde(with = "humantime_serde_compat")]
    pub action_horizon: Duration,
    /// Actions a server may be asked for per hour (`policy.action.per_hour`), not counting the
    /// OS install of provisioning.
    pub per_hour: u32,
    /// Status read interval while an image installs (`policy.install.poll`).
    #[serde(with = "humantime_serde_compat")]
    pub install_poll: Duration,
    /// Longest wait for an install to finish with a new password (`policy.install.limit`).
    #[serde(with = "humantime_serde_compat")]
    pub install_limit: Duration,
    /// Renewals, reminders and the expiry sweep (`[policy.renew]`).
    pub renew: RenewPolicy,
}

/// The schedule of renewals (`[policy.renew]`): each renewvps call, how long an unknown outcome
/// may still show in `ExpiryDate`, when customers are reminded and how often expiry is re-read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RenewPolicy {
    /// renewvps calls per renewal (`attempts`, `timeout`, `delays`).
    pub call: PhasePolicy,
    /// How long after it was sent a renewvps whose outcome is unknown may still move
    /// `ExpiryDate` (`horizon`): before then an unchanged expiry proves nothing and the call is
    /// not sent again. At least the timeout.
    #[serde(with = "humantime_serde_compat")]
    pub horizon: Duration,
    /// How long before expiry the customer is reminded (`remind_before`).
    #[serde(with = "humantime_serde_compat")]
    pub remind_before: Duration,
    /// How often each ready server's status is read again to refresh its expiry (`sweep`); each
    /// server's read is spread over a tenth of it, so a fleet's reads do not all fall together.
    #[serde(with = "humantime_serde_compat")]
    pub sweep: Duration,
}

impl Default for RenewPolicy {
    /// 3 calls of 60 s, waits of 5 and 15 minutes, a 30-minute horizon; reminders 3 days ahead;
    /// expiry re-read daily.
    fn default() -> Self {
        Self {
            call: PhasePolicy {
                attempts: 3,
                timeout: Duration::from_secs(60),
                delays: vec![Duration::from_secs(300), Duration::from_secs(900)],
            },
            horizon: Duration::from_secs(1800),
            remind_before: Duration::from_secs(3 * 86_400),
            sweep: Duration::from_secs(86_400),
        }
    }
}

impl RenewPolicy {
    /// Checks the schedule.
    ///
    /// # Errors
    /// The offending key (under `policy.`) and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        self.call.validate().map_err(|(key, why)| {
            (
                match key {
                    "attempts" => "renew.attempts",
                    "delays" => "renew.delays",
                    _ => "renew.timeout",
                },
                why,
            )
        })?;
        if self.horizon < self.call.timeout {
            return Err((
                "renew.horizon",
                format!(
                    "must be at least policy.renew.timeout ({}): a renewal cannot be judged before it has been waited for",
                    humantime::format_duration(self.call.timeout)
                ),
            ));
        }
        if self.sweep.is_zero() {
            return Err(("renew.sweep", "must be greater than zero".into()));
        }
        Ok(())
    }

    fn scaled_down(&self, f: u32) -> Self {
        Self {
            call: PhasePolicy {
                attempts: self.call.attempts,
                timeout: self.call.timeout / f,
                delays: self.call.delays.iter().map(|d| *d / f).collect(),
            },
            horizon: self.horizon / f,
            remind_before: self.remind_before / f,
            sweep: self.sweep / f,
        }
    }
}

impl Default for ServerPolicy {
    /// 3 calls of 60 s with waits of 30 s and 1 min; a 5-minute horizon; 10 actions an hour;
    /// installs polled every minute for up to 45 minutes.
    fn default() -> Self {
        Self {
            action: PhasePolicy {
                attempts: 3,
                timeout: Duration::from_secs(60),
                delays: vec![Duration::from_secs(30), Duration::from_secs(60)],
            },
            action_horizon: Duration::from_secs(300),
            per_hour: 10,
            install_poll: Duration::from_secs(60),
            install_limit: Duration::from_secs(45 * 60),
            renew: RenewPolicy::default(),
        }
    }
}

impl ServerPolicy {
    /// Checks the schedule.
    ///
    /// # Errors
    /// The offending key (under `policy.`) and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        self.action.validate().map_err(|(key, why)| {
            (
                match key {
                    "attempts" => "action.attempts",
                    "delays" => "action.delays",
                    _ => "action.timeout",
                },
                why,
            )
        })?;
        if self.action_horizon < self.action.timeout {
            return Err((
                "action.horizon",
                format!(
                    "must be at least policy.action.timeout ({}): a call cannot be judged before it has been waited for",
                    humantime::format_duration(self.action.timeout)
                ),
            ));
        }
        if !(1..=1000).contains(&self.per_hour) {
            return Err(("action.per_hour", "must be between 1 and 1000".into()));
        }
        if self.install_poll.is_zero() {
            return Err(("install.poll", "must be greater than zero".into()));
        }
        if self.install_limit < self.install_poll {
            return Err((
                "install.limit",
                format!(
                    "must be at least policy.install.poll ({})",
                    humantime::format_duration(self.install_poll)
                ),
            ));
        }
        self.renew.validate()
    }

    /// The schedule with every duration divided by `f`.
    fn scaled_down(&self, f: u32) -> Self {
        Self {
            action: PhasePolicy {
                attempts: self.action.attempts,
                timeout: self.action.timeout / f,
                delays: self.action.delays.iter().map(|d| *d / f).collect(),
            },
            action_horizon: self.action_horizon / f,
            per_hour: self.per_hour,
            install_poll: self.install_poll / f,
            install_limit: self.install_limit / f,
            renew: self.renew.scaled_down(f),
        }
    }
}

/// Default `policy.buy.horizon`: well past the longest buyvps seen in production ("sometimes well
/// over 2 min").
pub const DEFAULT_HORIZON: Duration = Duration::from_secs(600);

impl Default for RetryPolicy {
    /// The seed's timing: buy 3 × 120 s with waits of 2 and 3 minutes; status 3 × 90 s with
    /// waits of 1 and 2 minutes.
    fn default() -> Self {
        Self {
            buy: PhasePolicy {
                attempts: 3,
                timeout: Duration::from_secs(120),
                delays: vec![Duration::from_secs(120), Duration::from_secs(180)],
            },
            status: PhasePolicy {
                attempts: 3,
                timeout: Duration::from_secs(90),
                delays: vec![Duration::from_secs(60), Duration::from_secs(120)],
            },
            on_unknown: OnUnknown::Reconcile,
            horizon: DEFAULT_HORIZON,
            server: ServerPolicy::default(),
        }
    }
}

/// One readable line for logs: `buy 3 x 2m (waits 2m, 3m; horizon 10m); status 3 x 1m 30s
/// (waits 1m, 2m); on_unknown reconcile`.
impl fmt::Display for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = |p: &PhasePolicy| {
            let waits: Vec<String> = p
                .delays
                .iter()
                .map(|d| humantime::format_duration(*d).to_string())
                .collect();
            format!(
                "{} x {} (waits {}",
                p.attempts,
                humantime::format_duration(p.timeout),
                if waits.is_empty() {
                    "none".to_string()
                } else {
                    waits.join(", ")
                }
            )
        };
        write!(
            f,
            "buy {}; horizon {}); status {}); on_unknown {}",
            phase(&self.buy),
            humantime::format_duration(self.horizon),
            phase(&self.status),
            self.on_unknown
        )
    }
}

impl RetryPolicy {
    /// A policy with every duration divided by `factor` (for fast real-time tests).
    pub fn scaled_down(&self, factor: u32) -> Self {
        let f = factor.max(1);
        let phase = |p: &PhasePolicy| PhasePolicy {
            attempts: p.attempts,
            timeout: p.timeout / f,
            delays: p.delays.iter().map(|d| *d / f).collect(),
        };
        Self {
            buy: phase(&self.buy),
            status: phase(&self.status),
            on_unknown: self.on_unknown,
            horizon: self.horizon / f,
            server: self.server.scaled_down(f),
        }
    }

    /// How long after an unknown outcome of buy attempt `attempt` (sent `elapsed` ago) the
    /// engine waits before reconciling: the strategic delay, or what is left of the horizon when
    /// that is longer. Definite failures keep the plain schedule ([`PhasePolicy::delay_after`]).
    pub fn unknown_wait(&self, attempt: u32, elapsed: Duration) -> Duration {
        self.buy
            .settle_after(attempt)
            .max(self.horizon_left(elapsed))
    }

    /// What is left of the horizon for a purchase sent `elapsed` ago (zero once it has passed).
    pub fn horizon_left(&self, elapsed: Duration) -> Duration {
        self.horizon.saturating_sub(elapsed)
    }

    /// Checks what spans the phases: the horizon is at least the buy timeout (a call cannot be
    /// given up on before it has been waited for).
    ///
    /// # Errors
    /// A message for `policy.buy.horizon`.
    pub fn validate_horizon(&self) -> Result<(), String> {
        if self.horizon < self.buy.timeout {
            return Err(format!(
                "must be at least policy.buy.timeout ({}): a purchase cannot be judged before its call has been waited \
                 for; got {}",
                humantime::format_duration(self.buy.timeout),
                humantime::format_duration(self.horizon)
            ));
        }
        Ok(())
    }

    /// The buy waits shorter than the horizon, which an unknown outcome stretches to it: what
    /// start-up and `plan` explain, so a short wait is not mistaken for a fast verdict.
    pub fn waits_under_horizon(&self) -> Vec<Duration> {
        self.buy
            .delays
            .iter()
            .copied()
            .filter(|d| self.buy.timeout + *d < self.horizon)
            .collect()
    }
}

/// Formats a duration the way the seed speaks of waits: whole minutes when it is whole minutes.
pub fn describe_wait(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 && secs.is_multiple_of(60) && d.subsec_millis() == 0 {
        format!("{} minute(s)", secs / 60)
    } else if d.subsec_millis() == 0 {
        format!("{secs} second(s)")
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Serialises durations as humantime strings (`"2m"`), as the config spells them.
mod humantime_serde_compat {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub mod vec {
        use super::Duration;
        use serde::ser::SerializeSeq;

        pub fn serialize<S: serde::Serializer>(ds: &[Duration], s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(ds.len()))?;
            for d in ds {
                seq.serialize_element(&humantime::format_duration(*d).to_string())?;
            }
            seq.end()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_is_logged_as_one_readable_line() {
        assert_eq!(
            RetryPolicy::default().to_string(),
            "buy 3 x 2m (waits 2m, 3m; horizon 10m); status 3 x 1m 30s (waits 1m, 2m); on_unknown reconcile"
        );
    }

    #[test]
    fn an_unknown_outcome_waits_for_the_horizon_and_a_definite_failure_does_not() {
        let p = RetryPolicy::default();
        // Attempt 1 timed out after 2 minutes: the seed's 2-minute wait would reconcile at 4
        // minutes; the horizon holds the verdict to 10 minutes after sending.
        let sent_ago = Duration::from_secs(120);
        assert_eq!(p.unknown_wait(1, sent_ago), Duration::from_secs(480));
        assert_eq!(p.buy.delay_after(1), Some(Duration::from_secs(120)));
        // Long after the horizon (a restart days later), the strategic delay still applies.
        assert_eq!(
            p.unknown_wait(2, Duration::from_secs(3600)),
            Duration::from_secs(180)
        );
        let short = RetryPolicy {
            buy: PhasePolicy {
                attempts: 3,
                timeout: Duration::from_secs(10),
                delays: vec![Duration::from_secs(10), Duration::from_secs(20)],
            },
            ..RetryPolicy::default()
        };
        assert_eq!(short.waits_under_horizon().len(), 2);
        assert_eq!(
            short.unknown_wait(1, Duration::from_secs(10)),
            Duration::from_secs(590)
        );
        assert!(
            p.waits_under_horizon().len() == 2,
            "the seed's waits are shorter too"
        );
        let bad = RetryPolicy {
            horizon: Duration::from_secs(60),
            ..RetryPolicy::default()
        };
        assert!(
            bad.validate_horizon()
                .unwrap_err()
                .contains("policy.buy.timeout")
        );
        assert!(p.validate_horizon().is_ok());
        assert_eq!(p.scaled_down(10).horizon, Duration::from_secs(60));
    }

    #[test]
    fn seed_defaults() {
        let p = RetryPolicy::default();
        assert_eq!(p.buy.delay_after(1), Some(Duration::from_secs(120)));
        assert_eq!(p.buy.delay_after(2), Some(Duration::from_secs(180)));
        assert_eq!(p.buy.delay_after(3), None);
        assert_eq!(p.buy.settle_after(3), Duration::from_secs(180));
        assert_eq!(p.status.delay_after(1), Some(Duration::from_secs(60)));
        assert!(p.buy.validate().is_ok() && p.status.validate().is_ok());
    }

    #[test]
    fn validation_names_the_key() {
        let mut p = RetryPolicy::default().buy;
        p.delays.pop();
        assert_eq!(p.validate().unwrap_err().0, "delays");
        p.attempts = 0;
        assert_eq!(p.validate().unwrap_err().0, "attempts");
    }

    #[test]
    fn waits_read_like_the_seed() {
        assert_eq!(describe_wait(Duration::from_secs(120)), "2 minute(s)");
        assert_eq!(describe_wait(Duration::from_secs(90)), "90 second(s)");
        assert_eq!(describe_wait(Duration::from_millis(40)), "40 ms");
    }
}
