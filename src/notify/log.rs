//! The log channel: writes each notice to the log, used when no webhook or email is configured
//! (the demo, a first run). It is never given credentials, so a "ready" notice here says where
//! the login details go instead of what they are.

use async_trait::async_trait;

use super::{Event, Notifier, NotifyError, templates};
use crate::domain::{Audience, NoticeKind};

/// Logs notices.
#[derive(Debug, Default)]
pub struct LogNotifier;

#[async_trait]
impl Notifier for LogNotifier {
    fn channel(&self) -> &str {
        "log"
    }

    fn accepts(&self, _kind: NoticeKind) -> bool {
        true
    }

    async fn send(&self, e: &Event) -> Result<(), NotifyError> {
        let text = templates::render(e);
        let order_id = e.order.as_ref().map(|o| o.id.to_string());
        match e.kind.audience() {
            Audience::Customer => {
                // The order id identifies the customer in the log; the address itself only at
                // debug level, so customer emails stay out of production logs.
                let to = e.order.as_ref().map(|o| o.customer.email.as_str());
                tracing::info!(order_id, notice = e.kind.as_str(), "📧 {}", text.subject);
                tracing::debug!(
                    order_id,
                    to,
                    notice = e.kind.as_str(),
                    "customer notice addressee"
                );
            }
            Audience::Admin => {
                tracing::warn!(order_id, notice = e.kind.as_str(), "🚨 {}", text.subject);
            }
        }
        Ok(())
    }
}
