//! The credentials phase: status polling for the address we own, on the seed's schedule. It
//! never buys: exhaustion fails the order at this step and keeps the address for a retry.

use super::progress::Progress;
use super::{Engine, EngineError};
use crate::domain::{NoticeKind, Order, Phase};
use crate::policy::describe_wait;
use crate::provider::{CallContext, Outcome};
use crate::store::{Change, Lease};

pub(super) async fn step(
    e: &Engine,
    lease: &Lease,
    order: &mut Order,
    p: &mut Progress,
) -> Result<(), EngineError> {
    let Some(ip) = order.server_ip else {
        let now = e.clock.now();
        order.escalate(
            Phase::Credentials,
            "awaiting credentials without a server address",
            now,
        )?;
        let change = Change {
            entries: p.take(),
            notices: vec![NoticeKind::NeedsAttention, NoticeKind::AdminNeedsAttention],
            ..Change::default()
        };
        e.store.save(lease, order, change).await?;
        return Ok(());
    };
    let n = order.start_status_attempt(e.clock.now())?;
    let total = e.policy.status.attempts;
    p.line(
        e.clock.now(),
        format!("[SMARTVPS] Calling status - attempt {n}/{total}"),
    );
    let ctx = CallContext::for_order(&order.id, n);
    let outcome = e.provider.status(&ctx, ip, e.policy.status.timeout).await;
    let now = e.clock.now();
    let reason = match outcome {
        Outcome::Succeeded(status) => match status.credentials(ip) {
            Some(creds) => {
                p.line(
                    now,
                    format!("[SMARTVPS] ✅ status succeeded on attempt {n}"),
                );
                order.ready(now)?;
                metrics::histogram!("provisioner_attempts_until_success", "phase" => "credentials")
                    .record(f64::from(n));
                metrics::histogram!("provisioner_time_to_ready_seconds")
                    .record(now.since(order.created_at).as_secs_f64());
                p.line(
                    now,
                    format!(
                        "🎉 Server {ip} is ready (user {}); credentials saved encrypted",
                        creds.username
                    ),
                );
                p.line(
                    now,
                    "📧 Customer notified: \"Your server is ready!\" with credentials",
                );
                p.line(
                    now,
                    format!("Total Time: {}ms", now.since(order.created_at).as_millis()),
                );
                let change = Change {
                    entries: p.take(),
                    credentials: Some(e.cipher.seal(&creds)),
                    notices: vec![NoticeKind::Ready],
                    ..Change::default()
                };
                e.store.save(lease, order, change).await?;
                return Ok(());
            }
            None => status.not_ready_reason(),
        },
        Outcome::Rejected(reason) | Outcome::Unknown(reason) => reason,
    };
    p.line(
        now,
        format!("[SMARTVPS] ❌ status attempt {n} failed: {reason}"),
    );
    let change = match e.policy.status.delay_after(n) {
        Some(wait) => {
            p.line(
                now,
                format!(
                    "[SMARTVPS] ⏳ Strategic delay: Waiting {} before retry...",
                    describe_wait(wait)
                ),
            );
            let _ = order.wait_until(now.plus(wait), now);
            Change::default()
        }
        None => {
            p.line(now, format!("💥 PROVISIONING FAILED after {n} status attempts: server {ip} is owned; an admin retry resumes status polling"));
            order
                .fail(Phase::Credentials, format!("status failed {n} times (last: {reason}); server {ip} is owned, retry resumes polling it"), now)?;
            p.line(
                now,
                "📧 Customer notified: provisioning is delayed; an admin will retry",
            );
            Change {
                notices: vec![NoticeKind::Failed, NoticeKind::AdminFailed],
                ..Change::default()
            }
        }
    };
    e.store
        .save(
            lease,
            order,
            Change {
                entries: p.take(),
                ..change
            },
        )
        .await?;
    Ok(())
}
