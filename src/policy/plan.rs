//! The seed's "Total Time Analysis", computed from any policy rather than copied from prose: the
//! best, moderate, worst and complete-failure timelines, step by step, and their totals. It is what
//! `provisioner plan` prints, so an operator sees what a policy change costs before deploying it.
//!
//! The model is the seed's: a successful call takes a fixed time ([`Timings`]), a failing call
//! uses its whole timeout, and the phases run back to back.

use std::fmt::Write as _;
use std::time::Duration;

use super::{OnUnknown, PhasePolicy, RetryPolicy, describe_wait};

/// How long successful calls take; a failing call is assumed to use its whole timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    /// A buyVps call that succeeds (the seed: ~30 s).
    pub buy_success: Duration,
    /// A status call that succeeds (the seed: ~10 s).
    pub status_success: Duration,
}

impl Default for Timings {
    /// The seed's figures: buyVps 30 s, status 10 s.
    fn default() -> Self {
        Self {
            buy_success: Duration::from_secs(30),
            status_success: Duration::from_secs(10),
        }
    }
}

/// The four scenarios of the seed's analysis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// Both phases succeed on their first attempt.
    Best,
    /// Each phase fails once and succeeds on its second attempt (first, if it has only one).
    Moderate,
    /// Each phase succeeds only on its last attempt.
    Worst,
    /// Every buy attempt fails; the order is marked failed and no status call is made.
    CompleteFailure,
}

impl Case {
    /// All cases, in the order they are printed.
    pub const ALL: [Case; 4] = [
        Case::Best,
        Case::Moderate,
        Case::Worst,
        Case::CompleteFailure,
    ];

    /// Short name for the summary table.
    pub fn name(self) -> &'static str {
        match self {
            Case::Best => "Best case",
            Case::Moderate => "Moderate case",
            Case::Worst => "Worst case",
            Case::CompleteFailure => "Complete failure",
        }
    }

    /// Heading of the case's timeline, saying what the case assumes.
    pub fn title(self) -> &'static str {
        match self {
            Case::Best => "Best case (all succeed on first try)",
            Case::Moderate => "Moderate case (one retry each)",
            Case::Worst => "Worst case (all retries used; success on the last attempt)",
            Case::CompleteFailure => "Complete failure (every buyVps attempt fails)",
        }
    }
}

/// One line of a timeline: a call or a wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// When the step starts, from the start of provisioning.
    pub at: Duration,
    /// What happens, e.g. `buyVps attempt 1/3 fails (timeout, 2m)` or `wait 2 minute(s)`.
    pub label: String,
    /// How long the step takes.
    pub took: Duration,
}

/// One case worked through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseTimeline {
    /// Which scenario this is.
    pub case: Case,
    /// Calls and waits in order; each starts when the previous one ends.
    pub steps: Vec<Step>,
    /// When the outcome is reached: the end of the last step.
    pub total: Duration,
    /// How the order ends.
    pub outcome: &'static str,
}

/// Outcome of the cases where the server is delivered.
pub const OUTCOME_READY: &str = "server ready; credentials delivered";
/// Outcome of the complete failure, as the seed words it.
pub const OUTCOME_FAILED: &str = "order marked FAILED; admin can retry";

/// Works out the four cases for `policy`, in [`Case::ALL`] order.
pub fn analyse(policy: &RetryPolicy, timings: &Timings) -> Vec<CaseTimeline> {
    Case::ALL
        .into_iter()
        .map(|case| timeline(case, policy, timings))
        .collect()
}

/// Each case's total when every failing buyVps timed out (its outcome unknown) under
/// `on_unknown = reconcile`: the next attempt, or the failure, waits for the purchase's horizon
/// when that is longer than the configured wait. In [`Case::ALL`] order.
pub fn analyse_unknown(policy: &RetryPolicy, timings: &Timings) -> Vec<(Case, Duration)> {
    Case::ALL
        .into_iter()
        .map(|case| (case, unknown_total(case, policy, timings)))
        .collect()
}

fn unknown_total(case: Case, policy: &RetryPolicy, timings: &Timings) -> Duration {
    let buy = &policy.buy;
    let succeeds_on = match case {
        Case::Best => Some(1),
        Case::Moderate => Some(buy.attempts.min(2)),
        Case::Worst => Some(buy.attempts),
        Case::CompleteFailure => None,
    };
    let mut now = Duration::ZERO;
    let last = succeeds_on.unwrap_or(buy.attempts);
    for attempt in 1..=last {
        if Some(attempt) == succeeds_on {
            now = now.saturating_add(timings.buy_success);
            break;
        }
        // Sent at `now`, timed out after the timeout; the verdict comes after the unknown wait.
        now = now
            .saturating_add(buy.timeout)
            .saturating_add(policy.unknown_wait(attempt, buy.timeout));
    }
    if succeeds_on.is_some() {
        let status = timeline(case, policy, timings);
        let buy_part: Duration = status
            .steps
            .iter()
            .take_while(|s| !s.label.starts_with("status"))
            .map(|s| s.took)
            .sum();
        now = now.saturating_add(status.total.saturating_sub(buy_part));
    }
    now
}

fn timeline(case: Case, policy: &RetryPolicy, timings: &Timings) -> CaseTimeline {
    let mut line = Timeline::default();
    let buy = Phase {
        name: "buyVps",
        policy: &policy.buy,
        success: timings.buy_success,
    };
    let status = Phase {
        name: "status",
        policy: &policy.status,
        success: timings.status_success,
    };
    // The attempt that succeeds in each phase; `None` means every attempt fails.
    let succeeds_on = |phase: &PhasePolicy| match case {
        Case::Best => Some(1),
        Case::Moderate => Some(phase.attempts.min(2)),
        Case::Worst => Some(phase.attempts),
        Case::CompleteFailure => None,
    };
    let outcome = match succeeds_on(buy.policy) {
        Some(attempt) => {
            line.phase(&buy, Some(attempt));
            line.phase(&status, succeeds_on(status.policy));
            OUTCOME_READY
        }
        None => {
            line.phase(&buy, None);
            OUTCOME_FAILED
        }
    };
    CaseTimeline {
        case,
        total: line.now,
        steps: line.steps,
        outcome,
    }
}

struct Phase<'a> {
    name: &'static str,
    policy: &'a PhasePolicy,
    success: Duration,
}

#[derive(Default)]
struct Timeline {
    now: Duration,
    steps: Vec<Step>,
}

impl Timeline {
    fn push(&mut self, label: String, took: Duration) {
        self.steps.push(Step {
            at: self.now,
            label,
            took,
        });
        // Saturating: a policy with absurd durations should print absurd totals, not panic.
        self.now = self.now.saturating_add(took);
    }

    /// Attempts up to `succeeds_on` (all of them, failing, when `None`), with the waits between.
    fn phase(&mut self, phase: &Phase<'_>, succeeds_on: Option<u32>) {
        let attempts = phase.policy.attempts;
        let last = succeeds_on.unwrap_or(attempts);
        for attempt in 1..=last {
            let of = format!("{} attempt {attempt}/{attempts}", phase.name);
            if Some(attempt) == succeeds_on {
                self.push(
                    format!("{of} succeeds ({})", short(phase.success)),
                    phase.success,
                );
                return;
            }
            let timeout = phase.policy.timeout;
            self.push(format!("{of} fails (timeout, {})", short(timeout)), timeout);
            if let Some(wait) = phase.policy.delay_after(attempt) {
                self.push(format!("wait {}", describe_wait(wait)), wait);
            }
        }
    }
}

/// The extra time a complete failure takes under `on_unknown = reconcile`: after the last buyVps
/// timed out, the engine lets it settle for the longest buy wait and confirms nothing was bought
/// before declaring failure.
pub fn reconcile_settle(policy: &RetryPolicy) -> Duration {
    policy.buy.settle_after(policy.buy.attempts)
}

/// The text `provisioner plan` prints: the policy, each case's timeline, notes, and a summary.
pub fn render(policy: &RetryPolicy, timings: &Timings, analysis: &[CaseTimeline]) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail, hence the ignored results.
    let _ = writeln!(out, "Retry policy");
    let _ = writeln!(out, "  buy:        {}", describe_phase(&policy.buy));
    let _ = writeln!(out, "  status:     {}", describe_phase(&policy.status));
    let _ = writeln!(out, "  on_unknown: {}", policy.on_unknown);
    let _ = writeln!(
        out,
        "Assumed: buyVps succeeds in {}, status in {}; a failing call uses its whole timeout.",
        short(timings.buy_success),
        short(timings.status_success)
    );

    for case in analysis {
        let _ = writeln!(out);
        let _ = writeln!(out, "{}", case.case.title());
        for step in &case.steps {
            let _ = writeln!(out, "  {:>5}  {}", clock(step.at), step.label);
        }
        let _ = writeln!(out, "  {:>5}  {}", clock(case.total), case.outcome);
        let _ = writeln!(out, "  Total: {}", format_total(case.total));
    }

    let _ = writeln!(out);
    let _ = writeln!(out, "Notes");
    let seed_moderate =
        timeline(Case::Moderate, &RetryPolicy::default(), &Timings::default()).total;
    let seed_note = format!(
        "The seed's own prose says \"~8.5 minutes\" for the moderate case, but its figures \
         (2 min + 2 min + 30 s + 90 s + 1 min + 10 s) add to {}; totals here are the sum of the steps.",
        unbroken(&format_total(seed_moderate))
    );
    bullet(&mut out, &seed_note);
    bullet(&mut out, &on_unknown_note(policy, timings));

    if policy.on_unknown == OnUnknown::Reconcile {
        bullet(&mut out, &horizon_note(policy));
    }

    let _ = writeln!(out);
    let _ = writeln!(out, "Summary");
    for case in analysis {
        let _ = writeln!(
            out,
            "  {:<18}{}",
            case.case.name(),
            format_total(case.total)
        );
    }
    if policy.on_unknown == OnUnknown::Reconcile {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Summary when every failing buyVps timed out (outcome unknown, horizon {})",
            short(policy.horizon)
        );
        for (case, total) in analyse_unknown(policy, timings) {
            let _ = writeln!(out, "  {:<18}{}", case.name(), format_total(total));
        }
    }
    out
}

/// What the purchase horizon does to the waits.
fn horizon_note(policy: &RetryPolicy) -> String {
    let under = policy.waits_under_horizon();
    let horizon = unbroken(&describe_wait(policy.horizon));
    if under.is_empty() {
        format!(
            "Purchase horizon {horizon}: every buy wait already reaches past it, so an unknown outcome is judged on \
             the configured schedule."
        )
    } else {
        let waits: Vec<String> = under.iter().map(|d| unbroken(&describe_wait(*d))).collect();
        format!(
            "Purchase horizon {horizon}: SmartVPS may complete a timed-out purchase up to {horizon} after it was \
             sent, so no \"nothing was bought\" verdict comes sooner. The buy wait(s) of {} end before that: after a \
             definite failure (an `error` reply, sold out) they apply as configured; after an unknown outcome (a \
             timeout, a reset, a 5xx) the engine listens for the late reply and waits until the horizon. The second \
             summary below shows those totals.",
            waits.join(", ")
        )
    }
}

/// Appends `text` as a `- ` bullet wrapped at [`WIDTH`] columns, continuation lines indented.
/// Only ASCII spaces break lines, so a figure glued by [`unbroken`] stays on one line.
fn bullet(out: &mut String, text: &str) {
    let mut line = String::from("-");
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        if line.chars().count() + 1 + word.chars().count() > WIDTH && line.len() > 2 {
            let _ = writeln!(out, "{}", line.replace(NO_BREAK, " "));
            line = String::from(" ");
        }
        line.push(' ');
        line.push_str(word);
    }
    let _ = writeln!(out, "{}", line.replace(NO_BREAK, " "));
}

/// Joins a multi-word figure (`14 min 0 s`) so [`bullet`] never splits it across lines.
fn unbroken(figure: &str) -> String {
    figure.replace(' ', NO_BREAK)
}

const NO_BREAK: &str = "\u{a0}";

/// Notes wrap here so the plan reads in a terminal without relying on soft wrapping.
const WIDTH: usize = 100;

/// What `on_unknown` changes in the timelines, which model every failure as a timeout.
fn on_unknown_note(policy: &RetryPolicy, timings: &Timings) -> String {
    match policy.on_unknown {
        OnUnknown::Reconcile => {
            let failure = timeline(Case::CompleteFailure, policy, timings).total;
            let settle = reconcile_settle(policy);
            let which = if policy.buy.delays.is_empty() {
                "the buy timeout, as there is no buy wait"
            } else {
                "the longest buy wait"
            };
            format!(
                "on_unknown = reconcile: a buyVps attempt that timed out may still have bought a \
                 server, so it is reconciled before anything is bought again, at the end of the \
                 following wait or at the purchase horizon, whichever is later; after the final \
                 timed-out attempt the engine waits {} ({which}) once more, or until the horizon, and \
                 confirms nothing was bought before declaring failure: with a horizon no longer than \
                 the waits, under reconcile a complete failure is declared at {}.",
                unbroken(&describe_wait(settle)),
                unbroken(&format_total(failure.saturating_add(settle)))
            )
        }
        OnUnknown::Retry => "on_unknown = retry: a buyVps attempt that timed out is sent again \
                             after the wait without checking whether it bought a server (the seed \
                             taken literally); the timings are as above, but a server can be bought \
                             twice."
            .to_owned(),
        OnUnknown::Escalate => "on_unknown = escalate: a buyVps attempt that timed out hands the \
                                order to an admin at once (needs_attention), so the buy retries above \
                                happen only when SmartVPS answers with a definite rejection, which \
                                usually comes sooner than the timeout shown."
            .to_owned(),
    }
}

fn describe_phase(phase: &PhasePolicy) -> String {
    let waits = if phase.delays.is_empty() {
        "no waits".to_owned()
    } else {
        let waits: Vec<String> = phase.delays.iter().map(|d| describe_wait(*d)).collect();
        format!("waits {}", waits.join(", then "))
    };
    format!(
        "{} attempt(s), timeout {} each, {waits}",
        phase.attempts,
        short(phase.timeout)
    )
}

/// Compact duration for labels: `2m`, `1m 30s`, `30s`, `250ms`.
fn short(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Offset from the start as `m:ss` (minutes unbounded), with milliseconds only when present.
fn clock(d: Duration) -> String {
    let secs = d.as_secs();
    let millis = d.subsec_millis();
    if millis == 0 {
        format!("{}:{:02}", secs / 60, secs % 60)
    } else {
        format!("{}:{:02}.{millis:03}", secs / 60, secs % 60)
    }
}

/// A total the way the seed's analysis reads: `40s` under a minute, else `7 min 10 s`; fractions
/// of a second, which only millisecond test policies have, are shown as milliseconds.
pub fn format_total(d: Duration) -> String {
    let secs = d.as_secs();
    let millis = d.subsec_millis();
    match (secs, millis) {
        (0, ms) if ms > 0 => format!("{ms} ms"),
        (s, 0) if s < 60 => format!("{s}s"),
        (s, ms) if s < 60 => format!("{s}.{ms:03}s"),
        (s, 0) => format!("{} min {} s", s / 60, s % 60),
        (s, ms) => format!("{} min {}.{ms:03} s", s / 60, s % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(policy: &RetryPolicy, timings: &Timings) -> Vec<String> {
        analyse(policy, timings)
            .iter()
            .map(|c| format_total(c.total))
            .collect()
    }

    #[test]
    fn seed_totals() {
        assert_eq!(
            totals(&RetryPolicy::default(), &Timings::default()),
            ["40s", "7 min 10 s", "15 min 40 s", "11 min 0 s"]
        );
    }

    #[test]
    fn totals_are_the_sum_of_the_steps() {
        for case in analyse(&RetryPolicy::default(), &Timings::default()) {
            let sum: Duration = case.steps.iter().map(|s| s.took).sum();
            assert_eq!(sum, case.total, "{:?}", case.case);
            for pair in case.steps.windows(2) {
                assert_eq!(pair[0].at + pair[0].took, pair[1].at);
            }
        }
    }

    #[test]
    fn moderate_case_reads_like_the_seed() {
        let analysis = analyse(&RetryPolicy::default(), &Timings::default());
        let moderate = &analysis[1];
        assert_eq!(moderate.case, Case::Moderate);
        let lines: Vec<String> = moderate
            .steps
            .iter()
            .map(|s| format!("{} {}", clock(s.at), s.label))
            .collect();
        assert_eq!(
            lines,
            [
                "0:00 buyVps attempt 1/3 fails (timeout, 2m)",
                "2:00 wait 2 minute(s)",
                "4:00 buyVps attempt 2/3 succeeds (30s)",
                "4:30 status attempt 1/3 fails (timeout, 1m 30s)",
                "6:00 wait 1 minute(s)",
                "7:00 status attempt 2/3 succeeds (10s)",
            ]
        );
        assert_eq!(moderate.outcome, OUTCOME_READY);
    }

    #[test]
    fn complete_failure_has_no_status_phase() {
        let failure = &analyse(&RetryPolicy::default(), &Timings::default())[3];
        assert_eq!(failure.outcome, "order marked FAILED; admin can retry");
        assert!(
            failure
                .steps
                .iter()
                .all(|s| s.label.starts_with("buyVps") || s.label.starts_with("wait"))
        );
        assert_eq!(
            failure.steps.last().unwrap().label,
            "buyVps attempt 3/3 fails (timeout, 2m)"
        );
    }

    #[test]
    fn the_horizon_stretches_timed_out_purchases_only() {
        let p = RetryPolicy::default();
        let t = Timings::default();
        let unknown = analyse_unknown(&p, &t);
        let definite: Vec<Duration> = analyse(&p, &t).iter().map(|c| c.total).collect();
        assert_eq!(unknown[0].1, definite[0], "the best case has no failure");
        // Moderate: buy 1 sent at 0, times out at 2m, horizon at 10m, buy 2 succeeds at 10m30s,
        // then the status phase as before (90 s + 1 min + 10 s).
        assert_eq!(format_total(unknown[1].1), "13 min 10 s");
        assert!(unknown[2].1 > definite[2] && unknown[3].1 > definite[3]);
        // A horizon no longer than timeout + wait changes nothing.
        let short = RetryPolicy {
            horizon: Duration::from_secs(240),
            ..RetryPolicy::default()
        };
        assert_eq!(analyse_unknown(&short, &t)[1].1, definite[1]);
        let text = render(&p, &t, &analyse(&p, &t));
        assert!(text.contains("Purchase horizon 10 minute(s)"), "{text}");
        assert!(
            text.contains("Summary when every failing buyVps timed out"),
            "{text}"
        );
    }

    #[test]
    fn custom_policy_totals() {
        let mut policy = RetryPolicy {
            buy: PhasePolicy {
                attempts: 2,
                timeout: Duration::from_secs(60),
                delays: vec![Duration::from_secs(30)],
            },
            status: PhasePolicy {
                attempts: 1,
                timeout: Duration::from_secs(20),
                delays: vec![],
            },
            on_unknown: OnUnknown::Reconcile,
            horizon: Duration::from_secs(600),
            server: crate::policy::ServerPolicy::default(),
        };
        let timings = Timings {
            buy_success: Duration::from_secs(15),
            status_success: Duration::from_secs(5),
        };
        // Best: 15 + 5. Moderate and worst: 60 + 30 + 15, then status first time (5).
        // Complete failure: 60 + 30 + 60.
        assert_eq!(
            totals(&policy, &timings),
            ["20s", "1 min 50 s", "1 min 50 s", "2 min 30 s"]
        );
        // Four attempts: worst uses all three waits, moderate only the first.
        policy.buy.attempts = 4;
        policy.buy.delays = vec![
            Duration::from_secs(10),
            Duration::from_secs(20),
            Duration::from_secs(30),
        ];
        // Moderate: 60 + 10 + 15 + 5 = 90. Worst: 3 x 60 + 60 + 15 + 5 = 260. Failure: 4 x 60 + 60.
        assert_eq!(
            totals(&policy, &timings),
            ["20s", "1 min 30 s", "4 min 20 s", "5 min 0 s"]
        );
    }

    #[test]
    fn reconcile_adds_the_longest_wait_to_a_complete_failure() {
        let policy = RetryPolicy::default();
        assert_eq!(reconcile_settle(&policy), Duration::from_secs(180));
        let text = render_default(&policy);
        // The figure is never split across lines by the wrapping.
        assert!(text.contains("14 min 0 s"), "{text}");
        let text = flat(&text);
        assert!(
            text.contains("under reconcile a complete failure is declared at 14 min 0 s"),
            "{text}"
        );
        // With a single buy attempt there is no wait to reuse: the call timeout is the settle time.
        let mut single = RetryPolicy::default();
        single.buy.attempts = 1;
        single.buy.delays.clear();
        assert_eq!(reconcile_settle(&single), Duration::from_secs(120));
        let text = flat(&render_default(&single));
        assert!(text.contains("declared at 4 min 0 s"), "{text}");
    }

    fn render_default(policy: &RetryPolicy) -> String {
        render(
            policy,
            &Timings::default(),
            &analyse(policy, &Timings::default()),
        )
    }

    /// The text with line breaks and runs of spaces collapsed, as notes are wrapped.
    fn flat(text: &str) -> String {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn render_shows_policy_timelines_notes_and_summary() {
        let policy = RetryPolicy::default();
        let timings = Timings::default();
        let text = render(&policy, &timings, &analyse(&policy, &timings));
        assert!(text.contains(
            "buy:        3 attempt(s), timeout 2m each, waits 2 minute(s), then 3 minute(s)"
        ));
        assert!(text.contains("on_unknown: reconcile"));
        assert!(text.contains(
            "Moderate case (one retry each)\n   0:00  buyVps attempt 1/3 fails (timeout, 2m)\n"
        ));
        assert!(text.contains("   2:00  wait 2 minute(s)\n"));
        assert!(text.contains("  Total: 7 min 10 s\n"));
        assert!(
            text.contains("  11:00  order marked FAILED; admin can retry\n"),
            "{text}"
        );
        let notes = flat(&text);
        assert!(notes.contains("\"~8.5 minutes\"") && notes.contains("add to 7 min 10 s"));
        assert!(text.lines().all(|line| line.len() <= WIDTH), "{text}");
        assert!(
            text.contains("Summary\n  Best case         40s\n  Moderate case     7 min 10 s\n"),
            "{text}"
        );
        assert!(text.contains("  Complete failure  11 min 0 s\n"));
        let escalate = RetryPolicy {
            on_unknown: OnUnknown::Escalate,
            ..policy
        };
        assert!(render_default(&escalate).contains("on_unknown = escalate"));
    }

    #[test]
    fn totals_format_like_the_seed() {
        assert_eq!(format_total(Duration::from_secs(40)), "40s");
        assert_eq!(format_total(Duration::from_secs(430)), "7 min 10 s");
        assert_eq!(format_total(Duration::from_secs(940)), "15 min 40 s");
        assert_eq!(format_total(Duration::from_secs(660)), "11 min 0 s");
        assert_eq!(format_total(Duration::ZERO), "0s");
        assert_eq!(format_total(Duration::from_millis(250)), "250 ms");
        assert_eq!(format_total(Duration::from_millis(1500)), "1.500s");
        assert_eq!(format_total(Duration::from_millis(61_250)), "1 min 1.250 s");
        assert_eq!(clock(Duration::from_secs(3 * 3600)), "180:00");
    }
}
