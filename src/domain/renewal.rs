//! Renewals: the second place money is spent upstream, kept in a ledger like purchases.
//!
//! A renewal is paid for by a storefront (idempotent on its `renewal_ref`, unique across all
//! renewals, so a replayed webhook finds the first one) or asked for by an admin with a reason.
//! The engine works one renewal of an order at a time, oldest first, under the order's lease:
//! never two renewvps in flight for one server. Each renewvps is recorded before it is sent
//! (`sent_at`, with the `ExpiryDate` read just before, `outcome` empty) and its outcome after; a
//! call whose outcome is unknown is settled by reading `ExpiryDate` again: moved past
//! `expiry_before`, it renewed; unchanged `policy.renew.horizon` after it was sent, it did not.

use serde::Serialize;

use super::{CallOutcome, FieldError, OrderId};
use crate::clock::Timestamp;

/// Where a renewal is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RenewalState {
    /// Queued, or between calls, or waiting for its outcome to show.
    Pending,
    /// Applied: the expiry moved forward (or SmartVPS said success).
    Done,
    /// Given up: attempts spent, the expiry never moved. An admin is told.
    Failed,
}

impl RenewalState {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Done, Self::Failed]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// One paid (or admin-granted) month for an order's server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Renewal {
    /// Its id (0 until stored).
    pub id: i64,
    /// The order (the server).
    pub order_id: OrderId,
    /// The storefront's payment id, or `admin:<uuid>` for an admin's renewal: unique, so a
    /// replayed webhook never renews twice.
    pub renewal_ref: String,
    /// `storefront:<name>` or `admin:<name>`.
    pub requested_by: String,
    /// Why, for an admin's renewal (required there).
    pub reason: Option<String>,
    /// When it was taken.
    pub created_at: Timestamp,
    /// Where it is.
    pub state: RenewalState,
    /// renewvps calls sent so far.
    pub attempts: u32,
    /// When the last renewvps was sent (the intent, committed before sending).
    pub sent_at: Option<Timestamp>,
    /// Its outcome; `None` with `sent_at` set means the call was cut off (a crash): unknown.
    pub outcome: Option<CallOutcome>,
    /// `ExpiryDate` read just before the last call: the expiry that proves it renewed when
    /// status shows a later one.
    pub expiry_before: Option<String>,
    /// `ExpiryDate` once renewed, when status showed it.
    pub expiry_after: Option<String>,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// How it ended, in words.
    pub result: Option<String>,
}

impl Renewal {
    /// A new renewal, not yet stored.
    pub fn new(
        order_id: OrderId,
        renewal_ref: String,
        requested_by: impl Into<String>,
        reason: Option<String>,
        now: Timestamp,
    ) -> Self {
        Self {
            id: 0,
            order_id,
            renewal_ref,
            requested_by: requested_by.into(),
            reason,
            created_at: now,
            state: RenewalState::Pending,
            attempts: 0,
            sent_at: None,
            outcome: None,
            expiry_before: None,
            expiry_after: None,
            finished_at: None,
            result: None,
        }
    }

    /// Whether it is still to be worked.
    pub fn is_open(&self) -> bool {
        self.state == RenewalState::Pending
    }

    /// Whether the last renewvps has no definite outcome (cut off, timed out, reset, 5xx):
    /// `ExpiryDate` settles it, the call is not sent again before.
    pub fn unsettled(&self) -> bool {
        self.sent_at.is_some()
            && !matches!(
                self.outcome,
                Some(CallOutcome::Succeeded | CallOutcome::Rejected(_))
            )
    }

    /// Ends it.
    pub fn finish(&mut self, state: RenewalState, result: impl Into<String>, now: Timestamp) {
        self.state = state;
        self.finished_at = Some(now);
        self.result = Some(result.into());
    }

    /// Parses a storefront's renewal reference: 1 to 128 printable characters, not starting
    /// with `admin:` (the prefix of admins' renewals).
    ///
    /// # Errors
    /// A [`FieldError`] on `renewal_ref`.
    pub fn parse_ref(s: &str) -> Result<String, FieldError> {
        let parsed =
            super::OrderRef::parse(s).map_err(|e| FieldError::new("renewal_ref", e.message))?;
        if parsed.as_str().starts_with("admin:") {
            return Err(FieldError::new(
                "renewal_ref",
                "must not start with admin: (reserved for admins' renewals)",
            ));
        }
        Ok(parsed.as_str().to_string())
    }
}

/// What the engine keeps about a ready server's term besides what status said.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServerTerm {
    /// The `ExpiryDate` the expiry reminder was sent for: one reminder per term.
    pub reminded_for: Option<String>,
    /// When the service was cancelled (not to be renewed): it ends `terminated` at its expiry.
    pub cancelled_at: Option<Timestamp>,
    /// Who cancelled it and why.
    pub cancelled_by: Option<String>,
}

/// When a server whose status says `ExpiryDate` `text` stops being paid for: the start (00:00
/// UTC) of that date, so the engine never counts a day SmartVPS may not give. `None` when the
/// text is not a `YYYY-MM-DD` date.
pub fn expiry_instant(text: &str) -> Option<Timestamp> {
    let date = text.trim().get(..10)?;
    let t = humantime::parse_rfc3339(&format!("{date}T00:00:00Z")).ok()?;
    let ms = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    i64::try_from(ms).ok().map(Timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_dates_are_read_as_the_start_of_the_day() {
        assert_eq!(
            expiry_instant("1970-01-31"),
            Some(Timestamp(30 * 86_400_000))
        );
        assert_eq!(
            expiry_instant(" 2027-01-28 "),
            expiry_instant("2027-01-28T10:00:00")
        );
        assert_eq!(expiry_instant("28/01/2027"), None);
        assert_eq!(expiry_instant(""), None);
    }

    #[test]
    fn renewal_refs_are_checked_and_admin_refs_reserved() {
        assert_eq!(Renewal::parse_ref(" pay-7 ").unwrap(), "pay-7");
        assert_eq!(Renewal::parse_ref("").unwrap_err().field, "renewal_ref");
        assert!(Renewal::parse_ref("admin:x").is_err());
    }

    #[test]
    fn a_cut_off_renewal_is_unsettled() {
        let mut r = Renewal::new(OrderId::new(), "r".into(), "admin:a", None, Timestamp(0));
        assert!(!r.unsettled());
        r.sent_at = Some(Timestamp(1));
        assert!(r.unsettled());
        r.outcome = Some(CallOutcome::Rejected("error".into()));
        assert!(!r.unsettled());
    }
}
