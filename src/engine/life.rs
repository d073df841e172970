//! A ready server's term as one step reads it: kept apart from the renewals that work on it
//! ([`super::renew`]) so that the step that carries it ([`super::step::Step`]) does not depend on
//! them.

use crate::clock::Timestamp;
use crate::domain::{ServerFacts, ServerTerm, expiry_instant};

/// What the engine knows about a ready server's term during one step, read at its start.
#[derive(Clone, Debug, Default)]
pub(super) struct Life {
    /// What status last said.
    pub(super) facts: Option<ServerFacts>,
    /// The reminder sent and the cancellation.
    pub(super) term: ServerTerm,
    /// Open renewals still queued after the one being worked.
    pub(super) queued: usize,
    /// Status must be read again now (an action or renewal ended since the last read).
    pub(super) refresh: bool,
    /// A read failed: nothing that needs status is tried again before this.
    pub(super) retry_at: Option<Timestamp>,
    /// The newest renewal id read: one taken since keeps the order due (see
    /// [`crate::store::Change::renewals_seen`]).
    pub(super) seen: i64,
}

impl Life {
    /// The expiry status last gave, as text and as the instant it is taken to mean.
    pub(super) fn expiry(&self) -> Option<(String, Timestamp)> {
        let text = self.facts.as_ref()?.expiry.clone()?;
        let at = expiry_instant(&text)?;
        Some((text, at))
    }

    /// When status was last read.
    pub(super) fn checked_at(&self) -> Option<Timestamp> {
        self.facts.as_ref().and_then(|f| f.checked_at)
    }
}
