//! The credentials phase: status polling for the address we own, on the seed's schedule. It
//! never buys: exhaustion fails the order at this step and keeps the address for a retry.

use std::net::Ipv4Addr;

use super::EngineError;
use super::step::{Keep, Step, Then};
use crate::clock::Timestamp;
use crate::domain::{ActionState, Credentials, NoticeKind, Os, Phase, ServerFacts};
use crate::policy::next;
use crate::provider::{CallContext, Outcome, ServerStatus};
use crate::store::Change;

impl Step<'_> {
    /// The credentials phase, one step: one status call, then delivery, a wait or failure.
    pub(super) async fn credentials(&mut self) -> Result<Then, EngineError> {
        let Some(ip) = self.order.server_ip else {
            let reason = "awaiting credentials without a server address";
            return self
                .escalate(Phase::Credentials, reason, Change::default(), self.now())
                .await;
        };
        let n = self.order.start_status_attempt(self.now())?;
        let total = self.policy().status.attempts;
        self.progress.line(
            self.now(),
            format!("[SMARTVPS] Calling status - attempt {n}/{total}"),
        );
        let ctx = CallContext::for_order(&self.order.id, n);
        let timeout = self.policy().status.timeout;
        let outcome = self.engine.provider.status(&ctx, ip, timeout).await;
        let now = self.now();
        let reason = match outcome {
            Outcome::Succeeded(status) => match status.credentials(ip) {
                Some(creds) => {
                    if let Some(wanted) = self.os_to_install(&status).await? {
                        return self.install_ordered_os(wanted, &status, &creds).await;
                    }
                    let facts = super::actions::facts(&status, now);
                    return self.deliver(n, ip, &creds, facts, now).await;
                }
                None => status.not_ready_reason(),
            },
            Outcome::Rejected(reason) | Outcome::Unknown(reason) => reason,
        };
        self.progress.line(
            now,
            format!("[SMARTVPS] ❌ status attempt {n} failed: {reason}"),
        );
        let decision = next::after_status(&self.policy().status, n, ip, &reason, now);
        self.carry_out(decision, None).await
    }

    /// The OS to install before delivery: the order's, when status names another image (or
    /// none it can be told by) and provisioning has not installed it already.
    async fn os_to_install(&self, status: &ServerStatus) -> Result<Option<Os>, EngineError> {
        let Some(wanted) = self.order.os.as_deref().and_then(|o| Os::parse(o).ok()) else {
            return Ok(None);
        };
        if status.os.as_deref().and_then(Os::recognise) == Some(wanted) {
            return Ok(None);
        }
        // Once provisioning's install finished, its image is the one ordered whatever status
        // calls it: installing again would loop.
        let installed = self
            .engine
            .store
            .actions(&self.order.id)
            .await?
            .iter()
            .any(|a| {
                a.requested_by == super::actions::PROVISIONING && a.state == ActionState::Done
            });
        Ok((!installed).then_some(wanted))
    }

    /// Saves the credentials sealed, marks the order ready and tells the customer.
    async fn deliver(
        &mut self,
        n: u32,
        ip: Ipv4Addr,
        creds: &Credentials,
        facts: ServerFacts,
        now: Timestamp,
    ) -> Result<Then, EngineError> {
        self.progress.line(
            now,
            format!("[SMARTVPS] ✅ status succeeded on attempt {n}"),
        );
        self.order.ready(now)?;
        let since_intake = now.since(self.order.created_at);
        metrics::histogram!("provisioner_attempts_until_success", "phase" => "credentials")
            .record(f64::from(n));
        metrics::histogram!("provisioner_time_to_ready_seconds").record(since_intake.as_secs_f64());
        self.progress.line(
            now,
            format!(
                "🎉 Server {ip} is ready (user {}); credentials saved encrypted",
                creds.username
            ),
        );
        self.progress.line(
            now,
            format!("Total Time: {}", crate::clock::human_duration(since_intake)),
        );
        let change = Change {
            credentials: Some(self.engine.cipher.seal(creds)),
            facts: Some(facts),
            notices: vec![NoticeKind::Ready],
            ..Change::default()
        };
        self.write(change, Keep::Nothing).await
    }
}
