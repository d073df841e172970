//! Domain types: orders and their state machine, packages, credentials, the purchase ledger,
//! and the timeline an admin reads.

pub mod credentials;
pub mod ledger;
pub mod order;
pub mod package;

use serde::Serialize;

pub use credentials::Credentials;
pub use ledger::{Purchase, PurchaseIntent, PurchaseOutcome, Resolution};
pub use order::{
    Customer, Failure, FieldError, NewOrder, Order, OrderId, OrderRef, OrderRequest, OrderState,
    Phase, RamGb, TransitionError,
};
pub use package::{CatalogPackage, PackageId, PackageName};

use crate::clock::Timestamp;

/// The kind of a timeline line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// The seed's progress lines: calls, failures, waits, successes.
    Progress,
    /// Something an admin must see: unsafe policy use, wrong-package address, escalation evidence.
    Warning,
    /// An admin's action, with who and why.
    Admin,
}

impl EntryKind {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Progress => "progress",
            Self::Warning => "warning",
            Self::Admin => "admin",
        }
    }

    /// Parses a stored name (unknown names read as progress, so old rows never fail to load).
    pub fn parse(s: &str) -> Self {
        match s {
            "warning" => Self::Warning,
            "admin" => Self::Admin,
            _ => Self::Progress,
        }
    }
}

/// One line of an order's timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TimelineEntry {
    /// When.
    pub at: Timestamp,
    /// What sort of line.
    pub kind: EntryKind,
    /// The line, as the log shows it.
    pub message: String,
}

/// A notice the customer (or an admin) should get; stored in the outbox in the same transaction
/// as the state change that causes it. Rows hold no secrets: credentials are read and decrypted
/// only when the notice is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// "Your server is being provisioned..."
    Provisioning,
    /// "Your server is ready!" with credentials.
    Ready,
    /// Provisioning failed; the team will look at it.
    Failed,
    /// The order needs an admin.
    NeedsAttention,
}

impl NoticeKind {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Ready => "ready",
            Self::Failed => "failed",
            Self::NeedsAttention => "needs_attention",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Provisioning,
            Self::Ready,
            Self::Failed,
            Self::NeedsAttention,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}
