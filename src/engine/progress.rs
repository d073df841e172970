//! The admin's progress lines: each goes to the log (with the order id) and to the order's
//! timeline, so what the log said is what the dashboard shows.

use crate::clock::Timestamp;
use crate::domain::{EntryKind, OrderId, TimelineEntry};

/// Lines written during one step, waiting to be committed with the step's state change.
pub(crate) struct Progress {
    /// Tags each log line, so the log can be searched by order.
    order_id: OrderId,
    /// The lines not yet committed.
    entries: Vec<TimelineEntry>,
}

impl Progress {
    pub(crate) fn new(order_id: OrderId) -> Self {
        Self {
            order_id,
            entries: Vec::new(),
        }
    }

    /// A seed-style progress line.
    pub(crate) fn line(&mut self, at: Timestamp, message: impl Into<String>) {
        self.push(at, EntryKind::Progress, message.into());
    }

    /// A line an admin must not miss.
    pub(crate) fn warn(&mut self, at: Timestamp, message: impl Into<String>) {
        self.push(at, EntryKind::Warning, message.into());
    }

    /// A line of the given kind (as a decision words it).
    pub(crate) fn push(&mut self, at: Timestamp, kind: EntryKind, message: String) {
        match kind {
            EntryKind::Warning => tracing::warn!(order_id = %self.order_id, "{message}"),
            _ => tracing::info!(order_id = %self.order_id, "{message}"),
        }
        self.entries.push(TimelineEntry { at, kind, message });
    }

    /// The lines so far, handed to the store with the write that commits them.
    pub(crate) fn take(&mut self) -> Vec<TimelineEntry> {
        std::mem::take(&mut self.entries)
    }

    /// Gives back lines taken for a write that wrote nothing, ahead of any written since.
    pub(crate) fn put_back(&mut self, mut lines: Vec<TimelineEntry>) {
        lines.append(&mut self.entries);
        self.entries = lines;
    }
}
