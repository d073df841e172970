//! Work on a bought server: the actions customers and admins ask for (start, stop, reboot,
//! reinstall, change OS) and the install of the ordered OS before delivery.
//!
//! An action is worked under its order's lease, one stage at a time, as a purchase is: the call
//! is recorded before it is sent and its outcome after, in the order's transaction. A call that
//! timed out, reset, answered 5xx or was cut off by a crash is settled by reading status (power
//! state, OS, ActionStatus, password), never by sending it again blindly; only when status still
//! shows no change `policy.action.horizon` after it was sent is it taken as not done, and sent
//! again if attempts are left. An install (format, changeos) is done when status shows it
//! completed with a password other than the one before it.

use std::net::Ipv4Addr;

use secrecy::ExposeSecret;

use super::EngineError;
use super::step::{Keep, Step, Then};
use crate::clock::Timestamp;
use crate::domain::{
    ActionKind, ActionState, CallOutcome, Credentials, NoticeKind, OrderState, Os, Phase,
    ServerAction, ServerFacts, Stage,
};
use crate::provider::{CallContext, Command, Outcome, ServerStatus};
use crate::store::Change;

/// Who a provisioning install is requested by.
pub(crate) const PROVISIONING: &str = "provisioning";

/// What status says about a stage whose call has no definite outcome.
enum Evidence {
    /// The change is there.
    Done,
    /// No change yet.
    NoChange,
}

impl Step<'_> {
    /// A ready order, or one installing its OS, fell due: its pending action, else the work of
    /// a ready server with none (renewals).
    pub(super) async fn server_work(&mut self) -> Result<Then, EngineError> {
        let open = self.engine.store.open_action(&self.order.id).await?;
        match open {
            Some(action) => self.act(action).await,
            None if self.order.state == OrderState::InstallingOs => {
                // Provisioning's install action is written with the state; without it there is
                // nothing to wait for: back to the credentials phase, which decides again.
                let now = self.now();
                let reason = "installing the ordered OS without an install action";
                self.fail(Phase::Credentials, reason.into(), Change::default(), now)
                    .await
            }
            None => self.renewals().await,
        }
    }

    /// Nothing more to do now for a ready order's server: it sleeps until its next wake-up.
    pub(super) async fn idle(&mut self) -> Result<Then, EngineError> {
        self.idle_with(Change::default()).await
    }

    async fn idle_with(&mut self, change: Change) -> Result<Then, EngineError> {
        let now = self.now();
        let wake = self.next_server_wake();
        if self.order.state == OrderState::Ready {
            self.order.schedule_server_work(wake, now)?;
        }
        self.write(change, Keep::Nothing).await
    }

    /// The server came with another OS than the order's: install the ordered one with changeos
    /// before anything is delivered. `status` is what the credentials call just read.
    pub(super) async fn install_ordered_os(
        &mut self,
        wanted: Os,
        status: &ServerStatus,
        creds: &Credentials,
    ) -> Result<Then, EngineError> {
        let now = self.now();
        let got = status.os.as_deref().unwrap_or("an unnamed image");
        self.order.install_os(now)?;
        let mut action = ServerAction::new(
            self.order.id.clone(),
            ActionKind::ChangeOs(wanted),
            PROVISIONING,
            None,
            now,
        );
        action.old_password_digest = Some(self.digest(creds.expose_password()));
        self.progress.line(
            now,
            format!(
                "[SMARTVPS] 💿 The server reports {got}; the order is for {wanted}: installing {wanted} with changeos before \
                 the credentials are delivered"
            ),
        );
        let change = Change {
            action: Some(action),
            facts: Some(facts(status, now)),
            ..Change::default()
        };
        self.write(change, Keep::Nothing).await
    }

    /// Works `action` one stage further.
    async fn act(&mut self, mut action: ServerAction) -> Result<Then, EngineError> {
        let Some(ip) = self.order.server_ip else {
            let now = self.now();
            return self
                .give_up(action, "the order has no server address".into(), now)
                .await;
        };
        if action.unsettled() {
            return self.settle(action, ip).await;
        }
        if action.stage == Stage::Install {
            return self.poll_install(action, ip).await;
        }
        if action.kind.installs() && action.old_password_digest.is_none() {
            action.old_password_digest = self.current_password_digest(ip).await?;
        }
        self.send_call(action, ip).await
    }

    /// Sends the current stage's call: the intent is committed first.
    async fn send_call(
        &mut self,
        mut action: ServerAction,
        ip: Ipv4Addr,
    ) -> Result<Then, EngineError> {
        let Some(command) = command_of(action.stage) else {
            return Err(EngineError::Logic(format!(
                "action {} has no call to send in stage {}",
                action.id,
                action.stage.as_str()
            )));
        };
        let policy = &self.policy().server.action;
        let (total, timeout) = (policy.attempts, policy.timeout);
        let now = self.now();
        action.attempts += 1;
        action.sent_at = Some(now);
        action.outcome = None;
        let n = action.attempts;
        self.progress.line(
            now,
            format!(
                "[SMARTVPS] ▶ Calling {} for {ip} ({}) - attempt {n}/{total}",
                command.endpoint(),
                action.kind.describe()
            ),
        );
        let intent = Change {
            action: Some(action.clone()),
            ..Change::default()
        };
        if self.write(intent, Keep::Lease).await? == Then::Stop {
            return Ok(Then::Stop);
        }
        let ctx = CallContext::for_order(&self.order.id, n);
        let outcome = self
            .engine
            .provider
            .command(&ctx, ip, command, timeout)
            .await;
        let now = self.now();
        metrics::counter!("provisioner_server_action_calls_total", "operation" => command.endpoint(), "outcome" => outcome.kind())
            .increment(1);
        match outcome {
            Outcome::Succeeded(()) => {
                action.outcome = Some(CallOutcome::Succeeded);
                self.progress.line(
                    now,
                    format!(
                        "[SMARTVPS] ✅ {} succeeded on attempt {n}",
                        command.endpoint()
                    ),
                );
                self.stage_done(action, ip, None).await
            }
            Outcome::Rejected(reason) => {
                self.progress.line(
                    now,
                    format!(
                        "[SMARTVPS] ❌ {} attempt {n} refused: {reason}",
                        command.endpoint()
                    ),
                );
                action.outcome = Some(CallOutcome::Rejected(reason.clone()));
                self.again_or_give_up(action, reason, now).await
            }
            Outcome::Unknown(reason) => {
                let wait = self.policy().server.action.settle_after(n);
                self.progress.warn(
                    now,
                    format!(
                        "[SMARTVPS] ⚠️ {} attempt {n} has no definite outcome ({reason}): SmartVPS may have done it, so \
                         status will tell in {}; it is not sent again blindly",
                        command.endpoint(),
                        crate::policy::describe_wait(wait)
                    ),
                );
                action.outcome = Some(CallOutcome::Unknown(reason));
                self.schedule(action, now.plus(wait)).await
            }
        }
    }

    /// A call of the current stage has no definite outcome (or was cut off): read status.
    async fn settle(
        &mut self,
        mut action: ServerAction,
        ip: Ipv4Addr,
    ) -> Result<Then, EngineError> {
        let sent_at = action.sent_at.unwrap_or(action.created_at);
        if action.outcome.is_none() {
            let now = self.now();
            self.progress.warn(
                now,
                format!(
                    "[SMARTVPS] ⚠️ The {} call sent at {sent_at} was cut off (a restart): its outcome is unknown; reading \
                     status",
                    action.stage.as_str()
                ),
            );
            action.outcome = Some(CallOutcome::Unknown(
                "the worker stopped during the call".into(),
            ));
        }
        let Some(status) = self.read_status(ip, action.attempts).await else {
            return self
                .wait_or_give_up(action, "status could not be read")
                .await;
        };
        let now = self.now();
        let evidence = self.evidence(&action, &status);
        let horizon = self.policy().server.action_horizon;
        match evidence {
            Evidence::Done => {
                self.progress.line(
                    now,
                    format!(
                        "[SMARTVPS] ✅ status shows the {} took effect ({})",
                        action.stage.as_str(),
                        describe_status(&status)
                    ),
                );
                action.outcome = Some(CallOutcome::Succeeded);
                self.stage_done(action, ip, Some(status)).await
            }
            Evidence::NoChange if now < sent_at.plus(horizon) => {
                let at = sent_at
                    .plus(horizon)
                    .min(now.plus(self.policy().server.install_poll));
                self.progress.line(
                    now,
                    format!(
                        "[SMARTVPS] ⏳ status shows no change from the {} yet ({}); it may still take effect until {}, \
                         looking again then",
                        action.stage.as_str(),
                        describe_status(&status),
                        sent_at.plus(horizon)
                    ),
                );
                let change = Change {
                    facts: Some(facts(&status, now)),
                    ..Change::default()
                };
                self.schedule_with(action, at, change).await
            }
            Evidence::NoChange => {
                let reason = format!(
                    "status still shows no change {} after the {} was sent ({})",
                    crate::policy::describe_wait(horizon),
                    action.stage.as_str(),
                    describe_status(&status)
                );
                self.progress
                    .line(now, format!("[SMARTVPS] ❌ Not done: {reason}"));
                action.outcome = Some(CallOutcome::Rejected(reason.clone()));
                self.again_or_give_up(action, reason, now).await
            }
        }
    }

    /// Whether status shows the current stage's change.
    fn evidence(&self, action: &ServerAction, status: &ServerStatus) -> Evidence {
        let power = status.power.as_deref().map(str::to_ascii_lowercase);
        let done = match action.stage {
            Stage::Start => power.as_deref() == Some("online"),
            Stage::Stop => power.as_deref() == Some("offline"),
            Stage::Format | Stage::ChangeOs(_) | Stage::Install => {
                let pending = status
                    .action
                    .as_deref()
                    .is_some_and(|a| a.eq_ignore_ascii_case("pending"));
                pending || self.has_new_password(action, status)
            }
        };
        if done {
            Evidence::Done
        } else {
            Evidence::NoChange
        }
    }

    /// Whether status carries a password other than the one before the install.
    fn has_new_password(&self, action: &ServerAction, status: &ServerStatus) -> bool {
        let Some(password) = status
            .password
            .as_ref()
            .map(|p| p.expose_secret())
            .filter(|p| !p.trim().is_empty())
        else {
            return false;
        };
        action
            .old_password_digest
            .as_deref()
            .is_none_or(|old| old != self.digest(password))
    }

    /// The current stage's change is confirmed (by the reply, or by `status`).
    async fn stage_done(
        &mut self,
        mut action: ServerAction,
        ip: Ipv4Addr,
        status: Option<ServerStatus>,
    ) -> Result<Then, EngineError> {
        let now = self.now();
        match (action.kind, action.stage) {
            (ActionKind::Reboot, Stage::Stop) => {
                action.enter(Stage::Start);
                self.progress
                    .line(now, format!("🔁 Server {ip} stopped; starting it again"));
                self.schedule(action, now).await
            }
            (_, Stage::Format | Stage::ChangeOs(_)) => {
                action.enter(Stage::Install);
                action.install_started_at = Some(now);
                let limit = self.policy().server.install_limit;
                self.progress.line(
                    now,
                    format!(
                        "⏳ Installing {}: waiting for it to finish with a new password (status every {}, up to {})",
                        action.kind.os().map_or("the image afresh".to_string(), |os| os.to_string()),
                        crate::policy::describe_wait(self.policy().server.install_poll),
                        crate::policy::describe_wait(limit)
                    ),
                );
                match status {
                    Some(status) => self.install_progress(action, ip, status).await,
                    None => {
                        let at = now.plus(self.policy().server.install_poll);
                        self.schedule(action, at).await
                    }
                }
            }
            (kind, _) => {
                let done = match kind {
                    ActionKind::Start => "started",
                    ActionKind::Stop => "stopped",
                    _ => "rebooted",
                };
                let message = format!("Server {ip} {done}");
                self.progress.line(now, format!("✅ {message}"));
                action.finish(ActionState::Done, message, now);
                // SmartVPS confirmed the power state: the page shows it without another read.
                let known = match status {
                    Some(s) => facts(&s, now),
                    None => {
                        let mut f = self
                            .engine
                            .store
                            .server_facts(&self.order.id)
                            .await?
                            .unwrap_or_default();
                        f.power = Some(
                            if kind == ActionKind::Stop {
                                "Offline"
                            } else {
                                "Online"
                            }
                            .into(),
                        );
                        f.checked_at = Some(now);
                        f
                    }
                };
                let change = Change {
                    facts: Some(known),
                    notices: vec![NoticeKind::ActionCompleted],
                    ..Change::default()
                };
                self.finish_action(action, change).await
            }
        }
    }

    /// An install is under way: read status.
    async fn poll_install(
        &mut self,
        action: ServerAction,
        ip: Ipv4Addr,
    ) -> Result<Then, EngineError> {
        match self.read_status(ip, action.attempts).await {
            Some(status) => self.install_progress(action, ip, status).await,
            None => {
                self.wait_or_give_up(action, "status could not be read")
                    .await
            }
        }
    }

    /// What `status` says about an install under way: finished with a new password (save it,
    /// deliver it), still going, or over its limit.
    async fn install_progress(
        &mut self,
        mut action: ServerAction,
        ip: Ipv4Addr,
        status: ServerStatus,
    ) -> Result<Then, EngineError> {
        let now = self.now();
        let fresh = status
            .credentials(ip)
            .filter(|_| self.has_new_password(&action, &status));
        let Some(mut creds) = fresh else {
            let started = action.install_started_at.unwrap_or(now);
            let limit = self.policy().server.install_limit;
            if now >= started.plus(limit) {
                let reason = format!(
                    "the install did not finish with a new password within {} ({})",
                    crate::policy::describe_wait(limit),
                    describe_status(&status)
                );
                return self.give_up(action, reason, now).await;
            }
            self.progress.line(
                now,
                format!("⏳ Still installing ({})", describe_status(&status)),
            );
            let at = now.plus(self.policy().server.install_poll);
            let change = Change {
                facts: Some(facts(&status, now)),
                ..Change::default()
            };
            return self.schedule_with(action, at, change).await;
        };
        if status
            .username
            .as_deref()
            .is_none_or(|u| u.trim().is_empty())
            && let Some(os) = action.kind.os()
        {
            // SmartVPS omitted the login: the convention follows the image we installed.
            creds.username = os.username().to_string();
        }
        if creds.os.is_none() {
            creds.os = action.kind.os().map(|os| os.name().to_string());
        }
        let what = action
            .kind
            .os()
            .map_or("The reinstall".to_string(), |os| format!("{os}"));
        let message = format!(
            "{what} is installed on {ip} (user {}); the new password is saved encrypted and the old one is gone",
            creds.username
        );
        self.progress.line(now, format!("🎉 {message}"));
        action.finish(ActionState::Done, message, now);
        let sealed = self.engine.cipher.seal(&creds);
        if self.order.state == OrderState::InstallingOs {
            self.order.ready(now)?;
            let since_intake = now.since(self.order.created_at);
            metrics::histogram!("provisioner_time_to_ready_seconds")
                .record(since_intake.as_secs_f64());
            self.progress.line(
                now,
                format!("Total Time: {}", crate::clock::human_duration(since_intake)),
            );
            let change = Change {
                action: Some(action),
                credentials: Some(sealed),
                facts: Some(facts(&status, now)),
                notices: vec![NoticeKind::Ready],
                ..Change::default()
            };
            return self.write(change, Keep::Nothing).await;
        }
        let change = Change {
            credentials: Some(sealed),
            facts: Some(facts(&status, now)),
            notices: vec![NoticeKind::CredentialsChanged, NoticeKind::ActionCompleted],
            ..Change::default()
        };
        self.finish_action(action, change).await
    }

    /// A definite "not done": send again after the wait, or give up when attempts are spent.
    async fn again_or_give_up(
        &mut self,
        mut action: ServerAction,
        reason: String,
        now: Timestamp,
    ) -> Result<Then, EngineError> {
        let wait = self.policy().server.action.delay_after(action.attempts);
        match wait {
            Some(wait) => {
                // Settled: the next step sends a new call of this stage.
                action.sent_at = None;
                self.progress.line(
                    now,
                    format!(
                        "⏳ Trying the {} again in {}",
                        action.stage.as_str(),
                        crate::policy::describe_wait(wait)
                    ),
                );
                self.schedule(action, now.plus(wait)).await
            }
            None => {
                let reason = format!(
                    "{} not done after {} attempt(s): {reason}",
                    action.stage.as_str(),
                    action.attempts
                );
                self.give_up(action, reason, now).await
            }
        }
    }

    /// Status could not be read to settle or follow a stage: look again after the install
    /// poll, until the install limit has passed since the stage's call.
    async fn wait_or_give_up(
        &mut self,
        action: ServerAction,
        why: &str,
    ) -> Result<Then, EngineError> {
        let now = self.now();
        let since = action
            .install_started_at
            .or(action.sent_at)
            .unwrap_or(action.created_at);
        let server = &self.policy().server;
        let limit = server.install_limit.max(server.action_horizon);
        if now >= since.plus(limit) {
            let reason = format!(
                "{why} for {}: the outcome could not be confirmed",
                crate::policy::describe_wait(limit)
            );
            return self.give_up(action, reason, now).await;
        }
        self.progress.line(
            now,
            format!(
                "⏳ {why}; looking again in {}",
                crate::policy::describe_wait(server.install_poll)
            ),
        );
        let at = now.plus(server.install_poll);
        self.schedule(action, at).await
    }

    /// Ends `action` as failed. A provisioning install that fails fails the order's credentials
    /// phase (an admin retry installs again); a ready order stays ready.
    async fn give_up(
        &mut self,
        mut action: ServerAction,
        reason: String,
        now: Timestamp,
    ) -> Result<Then, EngineError> {
        self.progress.warn(
            now,
            format!(
                "❌ {} given up: {reason}",
                capitalise(&action.kind.describe())
            ),
        );
        metrics::counter!("provisioner_server_actions_total", "kind" => action.kind.as_str(), "result" => "failed")
            .increment(1);
        action.finish(ActionState::Failed, reason.clone(), now);
        let change = Change {
            action: Some(action),
            ..Change::default()
        };
        if self.order.state == OrderState::InstallingOs {
            return self
                .fail(
                    Phase::Credentials,
                    format!("installing the ordered OS failed: {reason}"),
                    change,
                    now,
                )
                .await;
        }
        let change = Change {
            notices: vec![NoticeKind::ActionFailed],
            ..change
        };
        self.idle_with(change).await
    }

    /// Ends `action` as done on a ready order.
    async fn finish_action(
        &mut self,
        action: ServerAction,
        change: Change,
    ) -> Result<Then, EngineError> {
        metrics::counter!("provisioner_server_actions_total", "kind" => action.kind.as_str(), "result" => "done")
            .increment(1);
        self.idle_with(Change {
            action: Some(action),
            ..change
        })
        .await
    }

    /// Saves `action` and makes the order due again at `at`.
    async fn schedule(&mut self, action: ServerAction, at: Timestamp) -> Result<Then, EngineError> {
        self.schedule_with(action, at, Change::default()).await
    }

    async fn schedule_with(
        &mut self,
        action: ServerAction,
        at: Timestamp,
        change: Change,
    ) -> Result<Then, EngineError> {
        let now = self.now();
        self.order.schedule_server_work(Some(at), now)?;
        self.write(
            Change {
                action: Some(action),
                ..change
            },
            Keep::Nothing,
        )
        .await
    }

    /// One status read for the server; `None` when it gave no details.
    pub(super) async fn read_status(&mut self, ip: Ipv4Addr, attempt: u32) -> Option<ServerStatus> {
        let ctx = CallContext::for_order(&self.order.id, attempt);
        let timeout = self.policy().status.timeout;
        match self.engine.provider.status(&ctx, ip, timeout).await {
            Outcome::Succeeded(status) => Some(status),
            Outcome::Rejected(reason) | Outcome::Unknown(reason) => {
                let now = self.now();
                self.progress.line(
                    now,
                    format!("[SMARTVPS] ❌ status for {ip} failed: {reason}"),
                );
                None
            }
        }
    }

    /// The digest of the password saved for the order now, if any.
    async fn current_password_digest(&self, ip: Ipv4Addr) -> Result<Option<String>, EngineError> {
        let Some(sealed) = self.engine.store.credentials(&self.order.id).await? else {
            return Ok(None);
        };
        let creds =
            self.engine.cipher.open(ip, &sealed).map_err(|e| {
                EngineError::Logic(format!("stored credentials cannot be opened: {e}"))
            })?;
        Ok(Some(self.digest(creds.expose_password())))
    }

    fn digest(&self, password: &str) -> String {
        self.engine.cipher.password_digest(&self.order.id, password)
    }
}

/// The call a stage sends.
fn command_of(stage: Stage) -> Option<Command> {
    match stage {
        Stage::Start => Some(Command::Start),
        Stage::Stop => Some(Command::Stop),
        Stage::Format => Some(Command::Format),
        Stage::ChangeOs(os) => Some(Command::ChangeOs(os)),
        Stage::Install => None,
    }
}

/// What status said, kept for the order page.
pub(super) fn facts(status: &ServerStatus, now: Timestamp) -> ServerFacts {
    ServerFacts {
        power: status.power.clone(),
        os: status.os.clone(),
        expiry: status.expiry.clone(),
        action_status: status.action.clone(),
        checked_at: Some(now),
    }
}

/// Status in a few words (never the password).
fn describe_status(status: &ServerStatus) -> String {
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    format!(
        "PowerStatus {}, OS {}, ActionStatus {}",
        or_dash(&status.power),
        or_dash(&status.os),
        or_dash(&status.action)
    )
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

impl super::Engine {
    /// Asks for `kind` on the server of order `id`, by `requested_by` (`customer` or
    /// `admin:<name>`) with an optional reason: stored with its timeline line and the order made
    /// due, in one transaction, unless another action is pending on the server, the order is not
    /// ready, or the server's hourly allowance (`policy.action.per_hour`) is used up.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn request_action(
        &self,
        id: &crate::domain::OrderId,
        kind: ActionKind,
        requested_by: &str,
        reason: Option<String>,
    ) -> Result<crate::store::ActionRequest, crate::store::StoreError> {
        let (action, entry) = request_parts(id, kind, requested_by, reason, self.clock.now());
        let result = self
            .store
            .request_action(&action, &entry, self.policy.server.per_hour)
            .await?;
        if matches!(result, crate::store::ActionRequest::Created(_)) {
            tracing::info!(order_id = %id, action = kind.as_str(), requested_by, "server action requested");
            self.wake.notify_one();
        }
        Ok(result)
    }
}

/// The action row and its timeline line for a request by `requested_by`.
pub(crate) fn request_parts(
    id: &crate::domain::OrderId,
    kind: ActionKind,
    requested_by: &str,
    reason: Option<String>,
    now: Timestamp,
) -> (ServerAction, crate::domain::TimelineEntry) {
    let who = requested_by
        .strip_prefix("admin:")
        .map_or_else(|| requested_by.to_string(), |name| format!("admin {name}"));
    let what = capitalise(&kind.describe());
    let message = match &reason {
        Some(reason) => format!("🛠️ {what} asked by {who}: {reason}"),
        None => format!("🛠️ {what} asked by {who}"),
    };
    let entry = crate::domain::TimelineEntry {
        at: now,
        kind: if requested_by.starts_with("admin:") {
            crate::domain::EntryKind::Admin
        } else {
            crate::domain::EntryKind::Progress
        },
        message,
    };
    (
        ServerAction::new(id.clone(), kind, requested_by, reason, now),
        entry,
    )
}
