//! The log notifier: writes each notice to the log. It never writes the password: the log is
//! not a place for secrets, so a "ready" notice says the credentials were withheld from the log.

use async_trait::async_trait;

use super::{Notifier, NotifyError, Rendered};

/// Logs notices.
#[derive(Debug, Default)]
pub struct LogNotifier;

#[async_trait]
impl Notifier for LogNotifier {
    async fn send(&self, n: &Rendered) -> Result<(), NotifyError> {
        let login = n
            .credentials
            .as_ref()
            .map(|c| {
                format!(
                    " Login: {}@{} (password withheld from the log)",
                    c.username, c.ip
                )
            })
            .unwrap_or_default();
        tracing::info!(order_id = %n.order.id, to = %n.order.customer.email, notice = n.kind.as_str(), "📧 {}: {}{login}", n.subject, n.body);
        Ok(())
    }
}
