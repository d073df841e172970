//! Renewals and expiry (issue 14): the work of a ready order's server when no action is
//! pending on it.
//!
//! - **Renewals** queue per order and are worked one at a time, oldest first, under the order's
//!   lease: never two renewvps in flight for one server. Each call is a ledger entry committed
//!   before it is sent, with the `ExpiryDate` read just before; its outcome is written after. A
//!   call with no definite outcome (timeout, reset, 5xx, a crash mid-call) is settled by reading
//!   `ExpiryDate`: past the expiry before the call, it renewed; unchanged
//!   `policy.renew.horizon` after the call, it did not, and it is sent again if attempts are
//!   left. It is never sent again before that.
//! - **The term**: each ready server's status is read again every `policy.renew.sweep` (spread
//!   per order over a tenth of it) and after every action or renewal; the customer is reminded
//!   `policy.renew.remind_before` its expiry (once per expiry date); at its expiry, read once
//!   more, an unrenewed server's order is `expired`, or `terminated` when its service was
//!   cancelled. All of it is durable: the next time is the order's `run_at`.

use std::net::Ipv4Addr;

use super::EngineError;
use super::actions::facts;
use super::life::Life;
use super::step::{Keep, Step, Then};
use crate::clock::Timestamp;
use crate::domain::{CallOutcome, NoticeKind, OrderState, Renewal, RenewalState, expiry_instant};
use crate::provider::{CallContext, Command, Outcome, ServerStatus};
use crate::store::Change;

impl Step<'_> {
    /// A ready order fell due with no action pending on its server: its next renewal, else
    /// its term (sweep, reminder, expiry).
    pub(super) async fn renewals(&mut self) -> Result<Then, EngineError> {
        let id = self.order.id.clone();
        let store = &self.engine.store;
        let renewals = store.renewals(&id).await?;
        let facts = store.server_facts(&id).await?;
        let term = store.server_term(&id).await?.unwrap_or_default();
        let last_end = store
            .actions(&id)
            .await?
            .iter()
            .filter_map(|a| a.finished_at)
            .chain(renewals.iter().filter_map(|r| r.finished_at))
            .max();
        let checked = facts.as_ref().and_then(|f| f.checked_at);
        let seen = renewals.iter().map(|r| r.id).max().unwrap_or(0);
        let mut open = renewals.into_iter().filter(Renewal::is_open);
        let next = open.next();
        self.life = Some(Life {
            facts,
            term,
            queued: open.count(),
            refresh: last_end.is_some_and(|end| checked.is_none_or(|c| c < end)),
            retry_at: None,
            seen,
        });
        let Some(ip) = self.order.server_ip else {
            return self.idle().await;
        };
        match next {
            Some(renewal) => self.renew(renewal, ip).await,
            None => self.watch_term(ip).await,
        }
    }

    /// When a ready order's server next needs the engine with no action pending: now while a
    /// renewal is queued or its status must be read again, else the soonest of its sweep, its
    /// reminder and its expiry. `None` when this step did not read its term (an action ended):
    /// it idles, and [`super::Engine::sweep_terms_once`] makes it due as its expiry nears.
    pub(super) fn next_server_wake(&self) -> Option<Timestamp> {
        let now = self.now();
        let life = self.life.as_ref()?;
        if life.queued > 0 || life.refresh {
            return Some(now);
        }
        let renew = &self.policy().server.renew;
        let mut wake = match life.checked_at() {
            Some(c) => c
                .plus(renew.sweep)
                .plus(jitter(self.order.id.as_str(), renew.sweep / 10)),
            None => now,
        };
        if let Some((text, at)) = life.expiry() {
            if life.term.cancelled_at.is_none() && life.term.reminded_for.as_deref() != Some(&text)
            {
                wake = wake.min(at.minus(renew.remind_before).max(now));
            }
            wake = wake.min(at.max(now));
        }
        Some(match life.retry_at {
            Some(retry) => wake.max(retry),
            None => wake,
        })
    }

    /// Saves `change` and sleeps until the server's next wake-up.
    async fn rest(&mut self, change: Change) -> Result<Then, EngineError> {
        let now = self.now();
        let wake = self.next_server_wake();
        if self.order.state == OrderState::Ready {
            self.order.schedule_server_work(wake, now)?;
        }
        self.write_seen(change, Keep::Nothing).await
    }

    /// [`Step::write`], saying which renewals this step saw.
    async fn write_seen(&mut self, change: Change, keep: Keep) -> Result<Then, EngineError> {
        let seen = self.life.as_ref().map(|l| l.seen);
        self.write(
            Change {
                renewals_seen: seen,
                ..change
            },
            keep,
        )
        .await
    }

    fn life(&mut self) -> &mut Life {
        self.life.get_or_insert_with(Life::default)
    }

    /// No renewal queued: refresh the expiry when due, remind, or let the server lapse.
    async fn watch_term(&mut self, ip: Ipv4Addr) -> Result<Then, EngineError> {
        let now = self.now();
        let renew = self.policy().server.renew.clone();
        let life = self.life().clone();
        let checked = life.checked_at();
        let expiry = life.expiry().map(|(_, at)| at);
        let sweep_due = life.refresh || checked.is_none_or(|c| now >= c.plus(renew.sweep));
        let lapse_due = expiry.is_some_and(|e| now >= e && checked.is_none_or(|c| c < e));
        let mut change = Change::default();
        if sweep_due || lapse_due {
            match self.read_status(ip, 1).await {
                Some(status) => {
                    let fresh = facts(&status, now);
                    if fresh.expiry != life.facts.as_ref().and_then(|f| f.expiry.clone()) {
                        self.progress.line(
                            now,
                            format!(
                                "📅 ExpiryDate of {ip} is {}",
                                fresh.expiry.as_deref().unwrap_or("not given")
                            ),
                        );
                    }
                    let life = self.life();
                    life.facts = Some(fresh.clone());
                    life.refresh = false;
                    change.facts = Some(fresh);
                }
                None => {
                    let retry = now.plus(renew.call.settle_after(1));
                    let life = self.life();
                    life.refresh = false;
                    life.retry_at = Some(retry);
                    return self.rest(change).await;
                }
            }
        }
        let life = self.life().clone();
        let Some((text, at)) = life.expiry() else {
            return self.rest(change).await;
        };
        let cancelled = life.term.cancelled_at.is_some();
        if now >= at {
            return self.lapse(cancelled, &text, change).await;
        }
        if !cancelled
            && now >= at.minus(renew.remind_before)
            && life.term.reminded_for.as_deref() != Some(&text)
        {
            self.progress.line(
                now,
                format!(
                    "📧 Customer reminded: the server expires on {text} and no renewal is queued"
                ),
            );
            let mut term = life.term.clone();
            term.reminded_for = Some(text);
            self.life().term = term.clone();
            change.term = Some(term);
            change.notices.push(NoticeKind::ExpiryReminder);
        }
        self.rest(change).await
    }

    /// The server reached its expiry unrenewed (status read at or after it says so).
    async fn lapse(
        &mut self,
        cancelled: bool,
        expiry: &str,
        change: Change,
    ) -> Result<Then, EngineError> {
        let now = self.now();
        self.order.lapse(cancelled, now)?;
        let (notice, line) = if cancelled {
            (
                NoticeKind::Terminated,
                format!("🛑 The cancelled service reached its expiry ({expiry}): terminated"),
            )
        } else {
            (
                NoticeKind::Expired,
                format!("⌛ The server reached its expiry ({expiry}) with no renewal: expired"),
            )
        };
        self.progress.line(now, line);
        metrics::counter!("provisioner_servers_lapsed_total", "state" => self.order.state.as_str())
            .increment(1);
        let change = Change {
            notices: [change.notices, vec![notice]].concat(),
            ..change
        };
        self.write_seen(change, Keep::Nothing).await
    }

    /// Works `renewal` one call further.
    async fn renew(&mut self, renewal: Renewal, ip: Ipv4Addr) -> Result<Then, EngineError> {
        if renewal.unsettled() {
            return self.settle_renewal(renewal, ip).await;
        }
        self.send_renewal(renewal, ip).await
    }

    /// Reads the expiry the call must move, commits the intent, sends renewvps.
    async fn send_renewal(
        &mut self,
        mut renewal: Renewal,
        ip: Ipv4Addr,
    ) -> Result<Then, EngineError> {
        let n = renewal.attempts + 1;
        let Some(status) = self.read_status(ip, n).await else {
            return self
                .renewal_wait_or_give_up(renewal, "status could not be read before renewvps")
                .await;
        };
        let now = self.now();
        let Some(before) = status
            .expiry
            .clone()
            .filter(|e| expiry_instant(e).is_some())
        else {
            // Without an expiry to compare, an unknown outcome could never be settled: no call.
            let reason =
                "status gives no ExpiryDate, so a renewal could not be confirmed; none was sent";
            let change = Change {
                facts: Some(facts(&status, now)),
                ..Change::default()
            };
            return self.give_up_renewal(renewal, reason.into(), change).await;
        };
        let policy = &self.policy().server.renew.call;
        let (total, timeout) = (policy.attempts, policy.timeout);
        renewal.attempts = n;
        renewal.sent_at = Some(now);
        renewal.outcome = None;
        renewal.expiry_before = Some(before.clone());
        self.progress.line(
            now,
            format!(
                "[SMARTVPS] ▶ Calling renewvps for {ip} (renewal {}, ExpiryDate {before}) - attempt {n}/{total}",
                renewal.renewal_ref
            ),
        );
        let fresh = facts(&status, now);
        self.life().facts = Some(fresh.clone());
        let intent = Change {
            renewal: Some(renewal.clone()),
            facts: Some(fresh),
            ..Change::default()
        };
        if self.write_seen(intent, Keep::Lease).await? == Then::Stop {
            return Ok(Then::Stop);
        }
        let ctx = CallContext::for_order(&self.order.id, n);
        let outcome = self
            .engine
            .provider
            .command(&ctx, ip, Command::Renew, timeout)
            .await;
        let now = self.now();
        metrics::counter!("provisioner_renewal_calls_total", "outcome" => outcome.kind())
            .increment(1);
        match outcome {
            Outcome::Succeeded(()) => {
                self.progress.line(
                    now,
                    format!("[SMARTVPS] ✅ renewvps succeeded on attempt {n}"),
                );
                renewal.outcome = Some(CallOutcome::Succeeded);
                self.renewed(renewal, None).await
            }
            Outcome::Rejected(reason) => {
                self.progress.line(
                    now,
                    format!("[SMARTVPS] ❌ renewvps attempt {n} refused: {reason}"),
                );
                renewal.outcome = Some(CallOutcome::Rejected(reason.clone()));
                self.renew_again_or_give_up(renewal, reason).await
            }
            Outcome::Unknown(reason) => {
                let wait = self.policy().server.renew.call.settle_after(n);
                self.progress.warn(
                    now,
                    format!(
                        "[SMARTVPS] ⚠️ renewvps attempt {n} has no definite outcome ({reason}): SmartVPS may have renewed, \
                         so ExpiryDate will tell in {}; it is not sent again blindly",
                        crate::policy::describe_wait(wait)
                    ),
                );
                renewal.outcome = Some(CallOutcome::Unknown(reason));
                self.renewal_at(renewal, now.plus(wait), Change::default())
                    .await
            }
        }
    }

    /// The last renewvps has no definite outcome: `ExpiryDate` tells.
    async fn settle_renewal(
        &mut self,
        mut renewal: Renewal,
        ip: Ipv4Addr,
    ) -> Result<Then, EngineError> {
        let sent_at = renewal.sent_at.unwrap_or(renewal.created_at);
        if renewal.outcome.is_none() {
            let now = self.now();
            self.progress.warn(
                now,
                format!(
                    "[SMARTVPS] ⚠️ The renewvps sent at {sent_at} was cut off (a restart): its outcome is unknown; reading \
                     ExpiryDate"
                ),
            );
            renewal.outcome = Some(CallOutcome::Unknown(
                "the worker stopped during the call".into(),
            ));
        }
        let Some(status) = self.read_status(ip, renewal.attempts).await else {
            return self
                .renewal_wait_or_give_up(renewal, "status could not be read")
                .await;
        };
        let now = self.now();
        let before = renewal.expiry_before.clone().unwrap_or_default();
        let after = status.expiry.clone().unwrap_or_default();
        let horizon = self.policy().server.renew.horizon;
        if moved_forward(&before, &after) {
            self.progress.line(
                now,
                format!(
                    "[SMARTVPS] ✅ ExpiryDate moved from {before} to {after}: the renewvps renewed"
                ),
            );
            renewal.outcome = Some(CallOutcome::Succeeded);
            return self.renewed(renewal, Some(status)).await;
        }
        let change = Change {
            facts: Some(facts(&status, now)),
            ..Change::default()
        };
        if now < sent_at.plus(horizon) {
            let wait = self
                .policy()
                .server
                .renew
                .call
                .settle_after(renewal.attempts);
            let at = sent_at.plus(horizon).min(now.plus(wait));
            self.progress.line(
                now,
                format!(
                    "[SMARTVPS] ⏳ ExpiryDate is still {after}; the renewvps may take effect until {}, looking again at {at}",
                    sent_at.plus(horizon)
                ),
            );
            return self.renewal_at(renewal, at, change).await;
        }
        let reason = format!(
            "ExpiryDate still {after} {} after the renewvps was sent",
            crate::policy::describe_wait(horizon)
        );
        self.progress
            .line(now, format!("[SMARTVPS] ❌ Not renewed: {reason}"));
        renewal.outcome = Some(CallOutcome::Rejected(reason.clone()));
        self.life().facts = change.facts.clone();
        self.renew_again_or_give_up(renewal, reason).await
    }

    /// The renewal is applied (by the reply, or by `status` showing the expiry moved).
    async fn renewed(
        &mut self,
        mut renewal: Renewal,
        status: Option<ServerStatus>,
    ) -> Result<Then, EngineError> {
        let now = self.now();
        renewal.expiry_after = status.as_ref().and_then(|s| s.expiry.clone());
        let message = match &renewal.expiry_after {
            Some(after) => format!("Renewed: ExpiryDate is now {after}"),
            None => "Renewed: SmartVPS confirmed the renewvps".to_string(),
        };
        self.progress.line(
            now,
            format!("🔄 {message} (renewal {})", renewal.renewal_ref),
        );
        renewal.finish(RenewalState::Done, message, now);
        metrics::counter!("provisioner_renewals_total", "result" => "done").increment(1);
        let fresh = status.as_ref().map(|s| facts(s, now));
        let life = self.life();
        match &fresh {
            Some(f) => life.facts = Some(f.clone()),
            // Read the new expiry in the next step: this one's lease covered one call.
            None => life.refresh = true,
        }
        let change = Change {
            renewal: Some(renewal),
            facts: fresh,
            notices: vec![NoticeKind::Renewed],
            ..Change::default()
        };
        self.rest(change).await
    }

    /// A definite "not renewed": send again after the wait, or give up when attempts are spent.
    async fn renew_again_or_give_up(
        &mut self,
        renewal: Renewal,
        reason: String,
    ) -> Result<Then, EngineError> {
        let now = self.now();
        match self
            .policy()
            .server
            .renew
            .call
            .delay_after(renewal.attempts)
        {
            Some(wait) => {
                self.progress.line(
                    now,
                    format!(
                        "⏳ Trying the renewal again in {}",
                        crate::policy::describe_wait(wait)
                    ),
                );
                self.renewal_at(renewal, now.plus(wait), Change::default())
                    .await
            }
            None => {
                let reason = format!(
                    "not renewed after {} attempt(s): {reason}",
                    renewal.attempts
                );
                self.give_up_renewal(renewal, reason, Change::default())
                    .await
            }
        }
    }

    /// Status could not be read: look again later. A call already sent is never given up this
    /// way (it may have renewed: only `ExpiryDate` can tell, and giving up would invite a
    /// second payment); a renewal not yet sent is given up once the server's known expiry has
    /// passed (or, with none known, `horizon` after it was taken), and the admins are told.
    async fn renewal_wait_or_give_up(
        &mut self,
        renewal: Renewal,
        why: &str,
    ) -> Result<Then, EngineError> {
        let now = self.now();
        let renew = self.policy().server.renew.clone();
        if !renewal.unsettled() {
            let deadline = self
                .life
                .as_ref()
                .and_then(Life::expiry)
                .map_or(renewal.created_at.plus(renew.horizon), |(_, at)| at);
            if now >= deadline {
                let reason = format!(
                    "{why} until {deadline}: the renewal could not be sent before the server's expiry"
                );
                return self
                    .give_up_renewal(renewal, reason, Change::default())
                    .await;
            }
        }
        let wait = renew.call.settle_after(renewal.attempts.max(1));
        self.progress.line(
            now,
            format!(
                "⏳ {why}; looking again in {}",
                crate::policy::describe_wait(wait)
            ),
        );
        self.renewal_at(renewal, now.plus(wait), Change::default())
            .await
    }

    /// Ends `renewal` as failed and alerts the admins; the server's term goes on as it is.
    async fn give_up_renewal(
        &mut self,
        mut renewal: Renewal,
        reason: String,
        change: Change,
    ) -> Result<Then, EngineError> {
        let now = self.now();
        self.progress.warn(
            now,
            format!("❌ Renewal {} given up: {reason}", renewal.renewal_ref),
        );
        metrics::counter!("provisioner_renewals_total", "result" => "failed").increment(1);
        renewal.finish(RenewalState::Failed, reason, now);
        self.rest(Change {
            renewal: Some(renewal),
            notices: vec![NoticeKind::AdminRenewalFailed],
            ..change
        })
        .await
    }

    /// Saves `renewal` and makes the order due again at `at`.
    async fn renewal_at(
        &mut self,
        renewal: Renewal,
        at: Timestamp,
        change: Change,
    ) -> Result<Then, EngineError> {
        let now = self.now();
        self.order.schedule_server_work(Some(at), now)?;
        self.write_seen(
            Change {
                renewal: Some(renewal),
                ..change
            },
            Keep::Nothing,
        )
        .await
    }
}

/// Whether `after` is a later expiry date than `before` (both `YYYY-MM-DD`); never when either
/// cannot be read, so an unreadable date proves nothing.
fn moved_forward(before: &str, after: &str) -> bool {
    match (expiry_instant(before), expiry_instant(after)) {
        (Some(b), Some(a)) => a > b,
        _ => false,
    }
}

/// A fixed spread in `0..spread` for one order, so a fleet's sweep reads do not fall together
/// (FNV-1a of the id: stable across restarts and processes).
fn jitter(id: &str, spread: std::time::Duration) -> std::time::Duration {
    let ms = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return std::time::Duration::ZERO;
    }
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    std::time::Duration::from_millis(hash % ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_later_readable_date_counts_as_moved() {
        assert!(moved_forward("2027-01-28", "2027-02-27"));
        assert!(!moved_forward("2027-01-28", "2027-01-28"));
        assert!(!moved_forward("2027-01-28", "2026-12-29"));
        assert!(!moved_forward("", "2027-02-27"));
        assert!(!moved_forward("2027-01-28", "soon"));
    }

    #[test]
    fn jitter_stays_within_its_spread_and_is_stable() {
        let spread = std::time::Duration::from_secs(8640);
        let a = jitter("order-a", spread);
        assert!(a < spread);
        assert_eq!(a, jitter("order-a", spread));
        assert_eq!(
            jitter("x", std::time::Duration::ZERO),
            std::time::Duration::ZERO
        );
    }
}
