//! What happens after an attempt: the pure half of the engine's step.
//!
//! Given what an attempt came to, which attempt it was, the [`RetryPolicy`] and the time,
//! [`after_buy`] and [`after_status`] say what the engine does next (attempt again after a wait,
//! reconcile after a wait, attempt again at once, fail, hand the order to an admin), how the
//! purchase in question is settled in the ledger, and the timeline lines that announce it.
//! Every wait, and the wording of every wait, is decided here and only here; the engine carries
//! decisions out. Nothing here does I/O, so every branch is tested on its own below.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::{OnUnknown, PhasePolicy, RetryPolicy, describe_wait};
use crate::clock::Timestamp;
use crate::domain::{EntryKind, Phase, Resolution};

/// What a buy attempt, or the reconciliation of one, came to when it did not end in a server
/// that can be delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuySetback {
    /// A definite no from buyVps: nothing was bought.
    Rejected {
        /// Why, as the timeline and the failure reason say it.
        reason: String,
    },
    /// No purchase was sent: before it, the stock list could not be read or showed the package
    /// sold out or inactive. It counts as an attempt (stock moves, a retry may help) and waits
    /// the seed's delay, but there was no purchase for SmartVPS to process.
    NotSent {
        /// Why, as the timeline and the failure reason say it.
        reason: String,
    },
    /// The package cannot be bought as it stands (not in SmartVPS's stock list, or a name that
    /// cannot be checked against addresses): no retry can help, so no attempt is spent.
    Unbuyable {
        /// Why, as the failure reason says it.
        reason: String,
    },
    /// buyVps got no definite answer: SmartVPS may still complete the purchase.
    Unknown {
        /// Why the outcome cannot be told.
        reason: String,
        /// When the purchase was sent: the evidence an admin needs to find it in the panel, and
        /// the start of the time SmartVPS may take to complete it.
        sent_at: Timestamp,
    },
    /// Reconciling an unknown purchase, SmartVPS's stock list could not be read.
    StockUnreadable {
        /// Why the read failed.
        reason: String,
        /// When the purchase's outcome was recorded as unknown: reading keeps being retried for
        /// a bounded time after it, then an admin decides.
        decided_at: Timestamp,
    },
    /// A discovery scan could not settle the purchase for now, for a reason that may pass (an
    /// address unanswered or not confirmed, a candidate another order's open purchase could
    /// own): scanned again after the strategic delay, until [`SCAN_RETRIES`] delays past the
    /// horizon, then an admin decides.
    ScanUnsettled {
        /// The evidence, in words, for the admin.
        evidence: String,
        /// What the scan found, in words, for the timeline.
        scan: String,
        /// When the purchase was sent.
        sent_at: Timestamp,
    },
    /// Reconciling an unknown purchase, the evidence shows nothing was bought.
    NotBought {
        /// The evidence, in words, kept in the ledger.
        evidence: String,
        /// Why the purchase's outcome was unknown, for the failure reason.
        last_reason: String,
    },
    /// Reconciliation was reached before the purchase's horizon (after a restart, or a stock
    /// read retried early): nothing may be concluded yet.
    BeforeHorizon {
        /// When the purchase was sent.
        sent_at: Timestamp,
    },
    /// A server that is or may be ours cannot be accounted for automatically: stock that moved
    /// while a purchase was unknown, or an address (from a reply or a late reply) that is outside
    /// the package or already another order's.
    Ambiguous {
        /// The evidence, in words: the admin's reason and the ledger's settlement.
        evidence: String,
    },
}

/// The words that mark the seed's "wait before the next attempt" line in the timeline; the
/// dashboard's chart finds the policy's waits by them.
pub const STRATEGIC_DELAY: &str = "Strategic delay";

/// Strategic delays past the horizon during which a scan that could not settle a purchase is
/// made again, before an admin decides.
pub const SCAN_RETRIES: u32 = 3;

/// What the engine does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Attempt again after `wait`. The attempt is settled, so a package's flight is given up.
    Retry {
        /// The policy's strategic delay after this attempt.
        wait: Duration,
    },
    /// Reconcile the unknown purchase after `wait`, keeping the package's flight so that our own
    /// purchases cannot blur the stock evidence meanwhile.
    Reconcile {
        /// How long the purchase is left to settle upstream first.
        wait: Duration,
    },
    /// Attempt again at once, keeping the flight: reconciliation just showed nothing was bought.
    AttemptNow,
    /// Fail the order.
    Fail {
        /// The phase it fails in: a credentials-phase failure keeps its server.
        phase: Phase,
        /// The readable reason stored with the order.
        reason: String,
    },
    /// Hand the order to an admin.
    Escalate {
        /// The phase it stopped in.
        phase: Phase,
        /// The readable reason stored with the order.
        reason: String,
    },
}

/// One timeline line announcing a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// Progress, or a warning an admin must not miss.
    pub kind: EntryKind,
    /// The words.
    pub text: String,
}

/// A decision: what happens next, what it settles, and how the timeline says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// What the engine does next.
    pub next: Next,
    /// How the purchase in question is settled in the ledger, when this decision settles it.
    pub settles: Option<Resolution>,
    /// The lines announcing it, in order.
    pub lines: Vec<Line>,
    /// When it was decided: its lines are stamped and its wait starts from here.
    pub at: Timestamp,
}

/// The next step after buy attempt `attempt` (1-based) came to `setback` at `now`.
pub fn after_buy(
    policy: &RetryPolicy,
    attempt: u32,
    setback: BuySetback,
    now: Timestamp,
) -> Decision {
    let mut d = Decided::new(now);
    let next = match setback {
        BuySetback::Rejected { reason } => d.retry_or_fail(&policy.buy, attempt, &reason, true),
        BuySetback::NotSent { reason } => d.retry_or_fail(&policy.buy, attempt, &reason, false),
        BuySetback::Unbuyable { reason } => {
            d.progress(format!("💥 PROVISIONING FAILED: {reason}"));
            d.fail(Phase::Buy, reason)
        }
        BuySetback::Unknown { reason, sent_at } => {
            d.after_unknown(policy, attempt, &reason, sent_at)
        }
        BuySetback::StockUnreadable { reason, decided_at } => {
            let settle = policy.buy.settle_after(attempt);
            if now.since(decided_at) >= settle * 4 {
                d.settles = Some(escalated(&reason));
                d.escalate(format!(
                    "buyVps attempt {attempt} has an unknown outcome and SmartVPS's stock could not be read to reconcile it ({reason})"
                ))
            } else {
                d.progress(format!(
                    "[SMARTVPS] 🔎 Could not read stock to reconcile attempt {attempt} ({reason}); trying again in {}",
                    describe_wait(settle)
                ));
                Next::Reconcile { wait: settle }
            }
        }
        BuySetback::ScanUnsettled {
            evidence,
            scan,
            sent_at,
        } => {
            let settle = policy.buy.settle_after(attempt);
            let last = sent_at.plus(policy.horizon + settle.saturating_mul(SCAN_RETRIES));
            if now >= last {
                d.settles = Some(escalated(&evidence));
                d.escalate(evidence)
            } else {
                d.progress(format!(
                    "[SMARTVPS] 🔎 Attempt {attempt} not settled by the scan yet ({scan}); scanning again in {}",
                    describe_wait(settle)
                ));
                Next::Reconcile { wait: settle }
            }
        }
        BuySetback::BeforeHorizon { sent_at } => {
            let wait = policy.horizon_left(now.since(sent_at));
            d.horizon_wait(policy, sent_at);
            d.progress(format!(
                "[SMARTVPS] 🔎 Attempt {attempt} is reconciled in {}, at its horizon",
                describe_wait(wait)
            ));
            Next::Reconcile { wait }
        }
        BuySetback::NotBought {
            evidence,
            last_reason,
        } => {
            d.settles = Some(Resolution::NotBought { evidence });
            if attempt >= policy.buy.attempts {
                d.progress(format!("💥 PROVISIONING FAILED after {attempt} attempts"));
                d.fail(
                    Phase::Buy,
                    format!(
                        "buyVps failed {attempt} times (last: {last_reason}); confirmed nothing was bought"
                    ),
                )
            } else {
                Next::AttemptNow
            }
        }
        BuySetback::Ambiguous { evidence } => {
            d.settles = Some(escalated(&evidence));
            d.escalate(evidence)
        }
    };
    d.decide(next)
}

/// The next step after status attempt `attempt` (1-based) for the server at `ip` failed for
/// `reason` at `now`. The credentials phase never buys: exhaustion fails the order keeping `ip`.
pub fn after_status(
    policy: &PhasePolicy,
    attempt: u32,
    ip: Ipv4Addr,
    reason: &str,
    now: Timestamp,
) -> Decision {
    let mut d = Decided::new(now);
    let next = match policy.delay_after(attempt) {
        Some(wait) => d.retry(wait),
        None => {
            d.progress(format!(
                "💥 PROVISIONING FAILED after {attempt} status attempts: server {ip} is owned; an admin retry resumes status polling"
            ));
            d.fail(
                Phase::Credentials,
                format!(
                    "status failed {attempt} times (last: {reason}); server {ip} is owned, retry resumes polling it"
                ),
            )
        }
    };
    d.decide(next)
}

/// A decision being put together: what it settles and its lines, until its `Next` is known.
struct Decided {
    /// The ledger settlement, when there is one.
    settles: Option<Resolution>,
    /// The announcing lines so far.
    lines: Vec<Line>,
    /// When it is decided.
    at: Timestamp,
}

impl Decided {
    fn new(at: Timestamp) -> Self {
        Self {
            settles: None,
            lines: Vec::new(),
            at,
        }
    }

    fn decide(self, next: Next) -> Decision {
        Decision {
            next,
            settles: self.settles,
            lines: self.lines,
            at: self.at,
        }
    }

    fn progress(&mut self, text: impl Into<String>) {
        self.lines.push(Line {
            kind: EntryKind::Progress,
            text: text.into(),
        });
    }

    fn warning(&mut self, text: impl Into<String>) {
        self.lines.push(Line {
            kind: EntryKind::Warning,
            text: text.into(),
        });
    }

    /// The seed's strategic delay before the next attempt: the one place its line is worded.
    fn strategic_delay(&mut self, wait: Duration) {
        self.progress(format!(
            "[SMARTVPS] ⏳ {STRATEGIC_DELAY}: Waiting {} before retry...",
            describe_wait(wait)
        ));
    }

    /// Why a wait after an unknown outcome is longer than the configured one.
    fn horizon_wait(&mut self, policy: &RetryPolicy, sent_at: Timestamp) {
        self.progress(format!(
            "[SMARTVPS] ⏳ SmartVPS may complete a purchase up to {} after it is sent (policy.buy.horizon): the connection \
             stays open for a late reply, and nothing is concluded before {}",
            describe_wait(policy.horizon),
            sent_at.plus(policy.horizon)
        ));
    }

    fn retry(&mut self, wait: Duration) -> Next {
        self.strategic_delay(wait);
        Next::Retry { wait }
    }

    /// After a failed buy attempt: the strategic wait, or failure when attempts are exhausted.
    /// The seed's "💡 ... prevents race conditions" line follows only a wait after a purchase
    /// that was `sent`: with nothing sent there is nothing for SmartVPS to process.
    fn retry_or_fail(
        &mut self,
        policy: &PhasePolicy,
        attempt: u32,
        reason: &str,
        sent: bool,
    ) -> Next {
        match policy.delay_after(attempt) {
            Some(wait) => {
                let next = self.retry(wait);
                if sent {
                    self.progress(
                        "[SMARTVPS] 💡 This allows SmartVPS API to fully process and prevents race conditions",
                    );
                }
                next
            }
            None => {
                self.progress(format!("💥 PROVISIONING FAILED after {attempt} attempts"));
                self.fail(
                    Phase::Buy,
                    if sent {
                        format!("buyVps failed {attempt} times; last: {reason}")
                    } else {
                        format!("{attempt} buy attempts failed; last: no purchase sent, {reason}")
                    },
                )
            }
        }
    }

    /// What `policy.buy.on_unknown` does right after an outcome turned out unknown. `sent_at`
    /// is the purchase's; with `self.at` it bounds how soon reconciliation may conclude.
    fn after_unknown(
        &mut self,
        policy: &RetryPolicy,
        attempt: u32,
        reason: &str,
        sent_at: Timestamp,
    ) -> Next {
        match policy.on_unknown {
            OnUnknown::Escalate => {
                let reason = format!(
                    "buyVps attempt {attempt} has an unknown outcome and policy.buy.on_unknown = escalate: check the SmartVPS panel \
                     for a server bought at {sent_at}"
                );
                self.settles = Some(escalated(&reason));
                self.escalate(reason)
            }
            OnUnknown::Retry => {
                self.warning(
                    "⚠️ UNSAFE: retrying without reconciliation (policy.buy.on_unknown = retry): this can buy a second server",
                );
                self.settles = Some(Resolution::RetriedBlindly);
                self.retry_or_fail(&policy.buy, attempt, reason, true)
            }
            OnUnknown::Reconcile => {
                // The same strategic wait the seed puts before a retry, so the purchase can
                // settle upstream before its evidence is read; or, when that ends sooner, until
                // the purchase horizon: no stock reading proves a purchase will not still
                // complete, only time does.
                let settle = policy.buy.settle_after(attempt);
                let wait = policy.unknown_wait(attempt, self.at.since(sent_at));
                self.strategic_delay(wait);
                if wait > settle {
                    self.horizon_wait(policy, sent_at);
                }
                self.progress(
                    "[SMARTVPS] 🔎 Before any new purchase, SmartVPS's stock will be checked to confirm nothing was bought",
                );
                Next::Reconcile { wait }
            }
        }
    }

    /// The customer's notice is queued with the failure; the dispatcher's timeline lines say
    /// whether it arrived, so nothing here claims the customer was told.
    fn fail(&mut self, phase: Phase, reason: String) -> Next {
        Next::Fail { phase, reason }
    }

    /// Only the buy phase escalates by decision; the line promises no purchase is made meanwhile.
    fn escalate(&mut self, reason: String) -> Next {
        self.warning(
            "🛑 Order needs attention: an admin must decide (no automatic purchase will be made)",
        );
        Next::Escalate {
            phase: Phase::Buy,
            reason,
        }
    }
}

fn escalated(evidence: &str) -> Resolution {
    Resolution::Escalated {
        evidence: evidence.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: Timestamp = Timestamp(1_000_000);

    fn texts(d: &Decision) -> Vec<&str> {
        d.lines.iter().map(|l| l.text.as_str()).collect()
    }

    fn rejected(reason: &str) -> BuySetback {
        BuySetback::Rejected {
            reason: reason.into(),
        }
    }

    fn unknown() -> BuySetback {
        BuySetback::Unknown {
            reason: "timeout".into(),
            sent_at: Timestamp(999_000),
        }
    }

    fn policy(on_unknown: OnUnknown) -> RetryPolicy {
        RetryPolicy {
            on_unknown,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn a_rejection_waits_the_seeds_delay_then_fails_when_attempts_run_out() {
        let p = RetryPolicy::default();
        let d = after_buy(&p, 1, rejected("error"), NOW);
        assert_eq!(
            d.next,
            Next::Retry {
                wait: Duration::from_secs(120)
            }
        );
        assert_eq!(
            texts(&d),
            [
                "[SMARTVPS] ⏳ Strategic delay: Waiting 2 minute(s) before retry...",
                "[SMARTVPS] 💡 This allows SmartVPS API to fully process and prevents race conditions",
            ]
        );
        assert_eq!((d.settles, d.at), (None, NOW));

        let d = after_buy(&p, 3, rejected("error"), NOW);
        assert_eq!(
            d.next,
            Next::Fail {
                phase: Phase::Buy,
                reason: "buyVps failed 3 times; last: error".into()
            }
        );
        assert_eq!(texts(&d), ["💥 PROVISIONING FAILED after 3 attempts"]);
    }

    #[test]
    fn an_attempt_not_sent_waits_without_the_race_condition_line_and_fails_saying_so() {
        let p = RetryPolicy::default();
        let not_sent = || BuySetback::NotSent {
            reason: "package 103.82.72 is sold out (0 free)".into(),
        };
        let d = after_buy(&p, 1, not_sent(), NOW);
        assert_eq!(
            d.next,
            Next::Retry {
                wait: Duration::from_secs(120)
            }
        );
        assert_eq!(
            texts(&d),
            ["[SMARTVPS] ⏳ Strategic delay: Waiting 2 minute(s) before retry..."]
        );
        let d = after_buy(&p, 3, not_sent(), NOW);
        assert_eq!(
            d.next,
            Next::Fail {
                phase: Phase::Buy,
                reason: "3 buy attempts failed; last: no purchase sent, package 103.82.72 is sold out (0 free)".into()
            }
        );
    }

    #[test]
    fn an_unbuyable_package_fails_at_once() {
        let reason = "package 9 is not in SmartVPS's stock list".to_string();
        let d = after_buy(
            &RetryPolicy::default(),
            0,
            BuySetback::Unbuyable {
                reason: reason.clone(),
            },
            NOW,
        );
        assert_eq!(
            d.next,
            Next::Fail {
                phase: Phase::Buy,
                reason
            }
        );
        assert_eq!(
            texts(&d)[0],
            "💥 PROVISIONING FAILED: package 9 is not in SmartVPS's stock list"
        );
    }

    #[test]
    fn an_unknown_outcome_is_reconciled_after_the_settle_wait_keeping_nothing_settled() {
        // A horizon no longer than the waits: the settle wait alone.
        let p = RetryPolicy {
            horizon: Duration::from_secs(120),
            ..policy(OnUnknown::Reconcile)
        };
        let d = after_buy(&p, 1, unknown(), NOW);
        assert_eq!(
            d.next,
            Next::Reconcile {
                wait: Duration::from_secs(120)
            }
        );
        assert_eq!(d.settles, None);
        assert_eq!(
            texts(&d),
            [
                "[SMARTVPS] ⏳ Strategic delay: Waiting 2 minute(s) before retry...",
                "[SMARTVPS] 🔎 Before any new purchase, SmartVPS's stock will be checked to confirm nothing was bought",
            ]
        );
        // After the last attempt: the longest configured wait.
        assert_eq!(
            after_buy(&p, 3, unknown(), NOW).next,
            Next::Reconcile {
                wait: Duration::from_secs(180)
            }
        );
    }

    #[test]
    fn an_unknown_outcome_is_not_judged_before_its_horizon() {
        // The seed's policy: a purchase sent a second ago is reconciled at its 10-minute horizon,
        // not after the 2-minute wait; the lines say why.
        let p = policy(OnUnknown::Reconcile);
        let d = after_buy(&p, 1, unknown(), NOW);
        assert_eq!(
            d.next,
            Next::Reconcile {
                wait: Duration::from_secs(599)
            }
        );
        let lines = texts(&d);
        assert_eq!(
            lines[0],
            "[SMARTVPS] ⏳ Strategic delay: Waiting 599 second(s) before retry..."
        );
        assert!(lines[1].contains("policy.buy.horizon"), "{lines:?}");
        // Reached early (a restart), reconciliation waits for what is left of the horizon.
        let early = after_buy(
            &p,
            2,
            BuySetback::BeforeHorizon {
                sent_at: Timestamp(999_000),
            },
            NOW.plus(Duration::from_secs(299)),
        );
        assert_eq!(
            early.next,
            Next::Reconcile {
                wait: Duration::from_secs(300)
            }
        );
        assert_eq!(early.settles, None);
    }

    #[test]
    fn an_unknown_outcome_under_escalate_names_when_it_was_sent() {
        let d = after_buy(&policy(OnUnknown::Escalate), 2, unknown(), NOW);
        let Next::Escalate { phase, reason } = &d.next else {
            panic!("{:?}", d.next)
        };
        assert_eq!(*phase, Phase::Buy);
        assert!(reason.contains(&Timestamp(999_000).to_string()), "{reason}");
        assert_eq!(d.settles, Some(escalated(reason)));
        assert_eq!(d.lines[0].kind, EntryKind::Warning);
    }

    #[test]
    fn an_unknown_outcome_under_retry_is_settled_blindly_and_warned_about() {
        let d = after_buy(&policy(OnUnknown::Retry), 1, unknown(), NOW);
        assert_eq!(d.settles, Some(Resolution::RetriedBlindly));
        assert_eq!(d.lines[0].kind, EntryKind::Warning);
        assert!(d.lines[0].text.starts_with("⚠️ UNSAFE"));
        assert_eq!(
            d.next,
            Next::Retry {
                wait: Duration::from_secs(120)
            }
        );
        let d = after_buy(&policy(OnUnknown::Retry), 3, unknown(), NOW);
        assert_eq!(d.settles, Some(Resolution::RetriedBlindly));
        assert!(matches!(d.next, Next::Fail { .. }));
    }

    #[test]
    fn unreadable_stock_is_read_again_until_four_settle_waits_have_passed() {
        let p = RetryPolicy::default();
        let settle = p.buy.settle_after(1);
        let unreadable = |decided_at| BuySetback::StockUnreadable {
            reason: "503".into(),
            decided_at,
        };
        let early = NOW.plus(settle * 4 - Duration::from_millis(1));
        let d = after_buy(&p, 1, unreadable(NOW), early);
        assert_eq!(d.next, Next::Reconcile { wait: settle });
        assert_eq!(d.settles, None);
        assert_eq!(
            texts(&d),
            [
                "[SMARTVPS] 🔎 Could not read stock to reconcile attempt 1 (503); trying again in 2 minute(s)"
            ]
        );
        let d = after_buy(&p, 1, unreadable(NOW), NOW.plus(settle * 4));
        assert!(matches!(d.next, Next::Escalate { .. }));
        assert_eq!(d.settles, Some(escalated("503")));
    }

    #[test]
    fn a_scan_that_could_not_settle_is_made_again_then_goes_to_an_admin() {
        let p = RetryPolicy::default();
        let sent_at = NOW;
        let unsettled = || BuySetback::ScanUnsettled {
            evidence: "stock fell. Scan: 3 addresses unanswered".into(),
            scan: "3 addresses unanswered".into(),
            sent_at,
        };
        let settle = p.buy.settle_after(1);
        // Just past the horizon: scanned again after the strategic delay, nothing settled.
        let at = sent_at.plus(p.horizon);
        let d = after_buy(&p, 1, unsettled(), at);
        assert_eq!(d.next, Next::Reconcile { wait: settle });
        assert_eq!(d.settles, None);
        assert!(d.lines[0].text.contains("scanning again"), "{:?}", d.lines);
        // SCAN_RETRIES delays past the horizon: an admin decides, with the whole evidence.
        let at = sent_at.plus(p.horizon + settle * SCAN_RETRIES);
        let d = after_buy(&p, 1, unsettled(), at);
        let Next::Escalate { reason, .. } = &d.next else {
            panic!("{:?}", d.next);
        };
        assert!(reason.starts_with("stock fell. Scan:"), "{reason}");
        assert!(matches!(d.settles, Some(Resolution::Escalated { .. })));
    }

    #[test]
    fn nothing_bought_attempts_again_at_once_unless_attempts_are_exhausted() {
        let p = RetryPolicy::default();
        let not_bought = || BuySetback::NotBought {
            evidence: "unchanged".into(),
            last_reason: "timeout".into(),
        };
        let d = after_buy(&p, 2, not_bought(), NOW);
        assert_eq!(d.next, Next::AttemptNow);
        assert!(d.lines.is_empty());
        let settled = Some(Resolution::NotBought {
            evidence: "unchanged".into(),
        });
        assert_eq!(d.settles, settled);
        let d = after_buy(&p, 3, not_bought(), NOW);
        assert_eq!(
            d.next,
            Next::Fail {
                phase: Phase::Buy,
                reason: "buyVps failed 3 times (last: timeout); confirmed nothing was bought"
                    .into()
            }
        );
        assert_eq!(d.settles, settled);
    }

    #[test]
    fn ambiguity_goes_to_an_admin_with_its_evidence() {
        let d = after_buy(
            &RetryPolicy::default(),
            1,
            BuySetback::Ambiguous {
                evidence: "stock moved".into(),
            },
            NOW,
        );
        assert_eq!(
            d.next,
            Next::Escalate {
                phase: Phase::Buy,
                reason: "stock moved".into()
            }
        );
        assert_eq!(d.settles, Some(escalated("stock moved")));
        assert_eq!(
            texts(&d),
            ["🛑 Order needs attention: an admin must decide (no automatic purchase will be made)"]
        );
    }

    #[test]
    fn a_status_failure_waits_then_fails_keeping_the_server() {
        let p = RetryPolicy::default().status;
        let ip: Ipv4Addr = "103.82.72.5".parse().unwrap();
        let d = after_status(&p, 1, ip, "no password yet", NOW);
        assert_eq!(
            d.next,
            Next::Retry {
                wait: Duration::from_secs(60)
            }
        );
        assert_eq!(
            texts(&d),
            ["[SMARTVPS] ⏳ Strategic delay: Waiting 1 minute(s) before retry..."]
        );
        let d = after_status(&p, 3, ip, "no password yet", NOW);
        assert_eq!(
            d.next,
            Next::Fail {
                phase: Phase::Credentials,
                reason: "status failed 3 times (last: no password yet); server 103.82.72.5 is owned, retry resumes polling it"
                    .into()
            }
        );
        assert_eq!(texts(&d).len(), 1, "no claim that the customer was told");
    }

    fn phase_policy() -> impl Strategy<Value = PhasePolicy> {
        (1u32..6).prop_flat_map(|attempts| {
            proptest::collection::vec(1u64..600_000, attempts as usize - 1).prop_map(move |ms| {
                PhasePolicy {
                    attempts,
                    timeout: Duration::from_secs(90),
                    delays: ms.into_iter().map(Duration::from_millis).collect(),
                }
            })
        })
    }

    fn setback() -> impl Strategy<Value = BuySetback> {
        prop_oneof![
            Just(rejected("error")),
            Just(BuySetback::NotSent {
                reason: "sold out".into()
            }),
            Just(unknown()),
            Just(BuySetback::StockUnreadable {
                reason: "503".into(),
                decided_at: Timestamp(0),
            }),
            Just(BuySetback::NotBought {
                evidence: "unchanged".into(),
                last_reason: "timeout".into(),
            }),
        ]
    }

    fn on_unknown() -> impl Strategy<Value = OnUnknown> {
        prop_oneof![
            Just(OnUnknown::Reconcile),
            Just(OnUnknown::Retry),
            Just(OnUnknown::Escalate)
        ]
    }

    proptest! {
        /// Whatever each attempt comes to, an order never gets more buy attempts than the policy
        /// allows, and every wait before a new attempt is exactly the policy's delay after it.
        #[test]
        fn never_more_attempts_than_the_policy_and_waits_are_its_delays(
            buy in phase_policy(),
            on_unknown in on_unknown(),
            setbacks in proptest::collection::vec(setback(), 1..30),
            elapsed_ms in 0u64..10_000_000,
        ) {
            let policy = RetryPolicy { buy: buy.clone(), status: buy.clone(), on_unknown, ..RetryPolicy::default() };
            let now = Timestamp(0).plus(Duration::from_millis(elapsed_ms));
            let mut attempt = 1;
            for setback in setbacks {
                let sent_at = match &setback {
                    BuySetback::Unknown { sent_at, .. } => Some(*sent_at),
                    _ => None,
                };
                let d = after_buy(&policy, attempt, setback, now);
                prop_assert_eq!(d.at, now);
                match d.next {
                    Next::Retry { wait } => {
                        prop_assert_eq!(Some(wait), buy.delay_after(attempt));
                        attempt += 1;
                    }
                    Next::AttemptNow => attempt += 1,
                    Next::Reconcile { wait } => {
                        prop_assert!(wait >= buy.settle_after(attempt));
                        match sent_at {
                            Some(sent_at) => {
                                // No verdict before the purchase's horizon.
                                prop_assert!(now.plus(wait) >= sent_at.plus(policy.horizon) || now < sent_at);
                                prop_assert_eq!(wait, policy.unknown_wait(attempt, now.since(sent_at)));
                            }
                            None => prop_assert_eq!(wait, buy.settle_after(attempt)),
                        }
                    }
                    Next::Fail { .. } | Next::Escalate { .. } => break,
                }
                prop_assert!(attempt <= buy.attempts, "attempt {} of {}", attempt, buy.attempts);
            }
        }

        /// The credentials phase waits exactly its delays, and fails (never more attempts) after
        /// its last one.
        #[test]
        fn status_waits_are_the_policys_delays(status in phase_policy(), attempt in 1u32..8) {
            let ip: Ipv4Addr = "10.0.0.1".parse().unwrap();
            let d = after_status(&status, attempt, ip, "x", Timestamp(0));
            match d.next {
                Next::Retry { wait } => {
                    prop_assert!(attempt < status.attempts);
                    prop_assert_eq!(Some(wait), status.delay_after(attempt));
                }
                Next::Fail { phase, .. } => {
                    prop_assert!(attempt >= status.attempts);
                    prop_assert_eq!(phase, Phase::Credentials);
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }
}
